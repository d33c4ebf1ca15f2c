//! The shipped Prometheus alert rules (deploy/prometheus/tracer-rules.yml) are valid and
//! do what their unit tests (tracer-rules.test.yml) say: each alert fires on the series
//! of its incident after its `for:`, with its summary, and not on a healthy host's.
//! promtool comes from Debian's `prometheus` package, which `cargo xtask setup` installs.
use std::{path::PathBuf, process::Command};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// Runs promtool in deploy/prometheus and asserts it succeeds, showing what it said.
fn promtool_passes(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is not installed ({e}); `cargo xtask setup` installs it")
        });
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_alert_rules_are_valid() {
    promtool_passes(&["check", "rules", "tracer-rules.yml"]);
}

#[test]
fn shipped_alert_rules_fire_on_their_incidents_and_not_on_healthy_hosts() {
    promtool_passes(&["test", "rules", "tracer-rules.test.yml"]);
}

/// Every metric an alert uses is one the tracer describes (the registry's metric
/// descriptions, which docs/metrics.md lists), so a renamed metric cannot leave an
/// alert that never fires.
#[test]
fn every_metric_an_alert_uses_is_described() {
    let rules = std::fs::read_to_string(deploy().join("tracer-rules.yml")).unwrap();
    let described: Vec<String> = (tracer::detectors::all_metrics().iter())
        .flat_map(|m| {
            let n = m.exposed_name();
            match m.kind {
                tracer::prom::Kind::Histogram => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{n}{s}"))
                    .collect(),
                _ => vec![n],
            }
        })
        .collect();
    let mut used = 0;
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("tracer_") {
                used += 1;
                assert!(
                    described.iter().any(|d| d == word),
                    "alert metric {word} is not a metric the tracer describes"
                );
            }
        }
    }
    assert!(used >= 8, "{rules}");
}
