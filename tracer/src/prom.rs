//! `--prom-file PATH`: each report also written as Prometheus text exposition, for
//! node_exporter's textfile collector (`--collector.textfile.directory`), so a fleet's
//! existing Prometheus scrapes what the tracer found; no collector of our own.
//!
//! The report's JSON is flattened: numbers (and booleans) become gauges named
//! `tracer_<command>_<path>`; arrays of objects become one labelled series per element
//! and numeric field, with the element's strings (and pid-like integers) as labels. The
//! file is replaced atomically (written beside it, then renamed).
use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Integer fields that identify an element rather than measure it: labels, not values.
const ID_FIELDS: &[&str] = &["pid", "ppid", "id", "ino", "tgid", "dev"];

/// Fails in one sentence when `--prom-file`'s directory does not exist: checked when a
/// run starts, since a write would otherwise fail only at the first report.
pub fn check_dir(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "the directory of --prom-file {} does not exist; create it or pass another path",
            path.display()
        );
    }
    Ok(())
}

pub fn write(path: &Path, command: &str, report: &Value) -> Result<()> {
    write_all(path, &[(command, report)])
}

/// The Content-Type of [`render_all`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Several detectors' latest reports in one exposition.
pub fn render_all(reports: &[(&str, &Value)]) -> String {
    reports.iter().map(|(c, r)| render(c, r)).collect()
}

/// Writes several detectors' latest reports to one file, replaced atomically.
pub fn write_all(path: &Path, reports: &[(&str, &Value)]) -> Result<()> {
    let text = render_all(reports);
    let tmp = path.with_extension("prom.tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

pub fn render(command: &str, report: &Value) -> String {
    let mut out = String::new();
    let prefix = format!("tracer_{}", sanitize(command));
    if let Value::Object(m) = report {
        for (k, v) in m {
            if k == "command" {
                continue;
            }
            walk(&mut out, &format!("{prefix}_{}", sanitize(k)), v, &[]);
        }
    }
    out
}

fn walk(out: &mut String, name: &str, v: &Value, labels: &[(String, String)]) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                sample(out, name, labels, f);
            }
        }
        Value::Bool(b) => sample(out, name, labels, if *b { 1.0 } else { 0.0 }),
        Value::Object(m) => {
            for (k, v) in m {
                walk(out, &format!("{name}_{}", sanitize(k)), v, labels);
            }
        }
        Value::Array(items) => {
            for item in items {
                let Value::Object(m) = item else { continue };
                let mut l = labels.to_vec();
                for (k, v) in m {
                    match v {
                        Value::String(s) => l.push((sanitize(k), s.clone())),
                        Value::Number(n) if ID_FIELDS.contains(&k.as_str()) => {
                            l.push((sanitize(k), n.to_string()))
                        }
                        _ => {}
                    }
                }
                for (k, v) in m {
                    if matches!(v, Value::Number(_)) && ID_FIELDS.contains(&k.as_str()) {
                        continue;
                    }
                    if matches!(v, Value::Number(_) | Value::Bool(_) | Value::Object(_)) {
                        walk(out, &format!("{name}_{}", sanitize(k)), v, &l);
                    }
                }
            }
        }
        Value::String(_) | Value::Null => {}
    }
}

fn sample(out: &mut String, name: &str, labels: &[(String, String)], v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        // Sorted by name, as Prometheus prints them, whatever the report's key order.
        let mut sorted: Vec<&(String, String)> = labels.iter().collect();
        sorted.sort();
        out.push('{');
        for (i, (k, val)) in sorted.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {v}");
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_scalars_objects_and_labelled_arrays() {
        let r = json!({
            "command": "zombies", "final": true, "lost_events": 0,
            "pids": {"in_use": 116, "pid_max": 32768, "exhaustion_eta_s": null},
            "parents": [{"pid": 7, "comm": "a\"b", "zombies": 5, "oldest_zombie_age_s": 1.5}],
        });
        let text = render("zombies", &r);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"tracer_zombies_final 1"));
        assert!(lines.contains(&"tracer_zombies_lost_events 0"));
        assert!(lines.contains(&"tracer_zombies_pids_in_use 116"));
        assert!(
            lines.contains(&"tracer_zombies_parents_zombies{comm=\"a\\\"b\",pid=\"7\"} 5"),
            "{text}"
        );
        assert!(lines.contains(
            &"tracer_zombies_parents_oldest_zombie_age_s{comm=\"a\\\"b\",pid=\"7\"} 1.5"
        ));
        assert!(
            !text.contains("exhaustion_eta_s"),
            "null values are left out"
        );
        assert!(!text.contains("parents_pid"), "ids are labels, not values");
    }
}
