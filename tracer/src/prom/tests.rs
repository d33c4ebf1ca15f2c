//! The metrics of every detector, rendered from each one's fixture read strictly into
//! its typed report: promtool's rules, the naming rules, docs/metrics.md against the
//! descriptions, histograms, and each detector's series from its typed fields.
//!
//! Over 600 lines because the common checks run over every detector's fixture and
//! each detector's series checks edit that same fixture (`<detector>_with`); split by
//! detector, the shared fixture helpers would be repeated in each file.
use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
};

use serde_json::{Value, json};

use super::*;
use crate::{
    cgroups::{CgroupsReport, Finding, rows::DyingRow},
    detectors::all_metrics,
    report::{Emitted, Envelope},
    triage::TriageReport,
    zombies::{ZombiesReport, rows::ParentRow},
};

/// Each registered detector's fixture, `fixtures/<detector>.json`: a report the
/// detector wrote on a test machine (`tracer <command> --json`); the tcp-pressure
/// culprit and holder and the inodes ENOSPC row are shaped as the reports build them,
/// since the capture had none; tcp-pressure's `tcpext` and `rcv_queue` come from a run
/// in the 6.12 guest (`incident_tcp collapse 1000`, fentry path). The latencies' `sum_s` and `buckets` were computed as
/// the detectors do from samples consistent with each latency's count and quantiles.
/// A new detector's tests fail until it has one.
fn fixture_text(command: &str) -> String {
    let p = format!(
        "{}/src/prom/fixtures/{command}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{command} has no fixture {p}: {e}"))
}

/// Every registered detector's name.
fn commands() -> Vec<&'static str> {
    crate::detectors::ALL
        .iter()
        .map(|e| e.spec.detector)
        .collect()
}

/// A JSON report read back as its detector's typed report (the registry's `read`).
fn emitted(command: &str, r: &Value) -> Emitted {
    let read = crate::detectors::find(command).unwrap().read;
    read(&r.to_string()).unwrap_or_else(|err| panic!("{command}: {err}\n{r}"))
}

fn render_all(reports: &[(&str, &Value)]) -> String {
    let e: Vec<_> = reports.iter().map(|(c, r)| emitted(c, r)).collect();
    let all: Vec<&dyn Collect> = e.iter().map(|e| e as _).collect();
    super::render(&all)
}

fn render(command: &str, report: &Value) -> String {
    render_all(&[(command, report)])
}

fn fixture(command: &str) -> Value {
    serde_json::from_str(&fixture_text(command)).unwrap()
}

/// `promtool check metrics` on `text`: its output (empty when it finds no problem).
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool cannot run ({e}): `cargo xtask setup` installs it (Debian's prometheus)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool failed: {said}\n{text}");
    said
}

/// The value of the series `name{labels}` (labels as printed, "" for none).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn promtool_finds_no_problem_in_any_detectors_metrics() {
    for command in commands() {
        let text = render(command, &fixture(command));
        assert!(text.lines().count() > 20, "{command}:\n{text}");
        assert_eq!(promtool(&text), "", "{command}:\n{text}");
    }
}

#[test]
fn render_all_puts_every_detector_in_one_exposition() {
    let reports: Vec<(&str, Value)> = commands().into_iter().map(|c| (c, fixture(c))).collect();
    let refs: Vec<(&str, &Value)> = reports.iter().map(|(c, r)| (*c, r)).collect();
    let text = render_all(&refs);
    assert_eq!(promtool(&text), "", "{text}");
    // The common series once per metric, one sample per detector.
    assert_eq!(
        text.matches("# TYPE tracer_lost_events_total counter\n")
            .count(),
        1
    );
    for command in commands() {
        let series = format!("tracer_lost_events_total{{detector=\"{command}\"}}");
        assert_eq!(value(&text, &series), Some(0.0), "{series}\n{text}");
    }
    assert_eq!(
        value(
            &text,
            &format!(
                "tracer_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    // One detector alone is the same text as its own render, after the common part.
    let zombies = fixture("zombies");
    assert_eq!(
        render("zombies", &zombies),
        render_all(&[("zombies", &zombies)])
    );
}

/// Asserts each `(series, value)` in `text`.
fn assert_values(text: &str, expected: &[(&str, f64)]) {
    for (series, v) in expected {
        assert_eq!(value(text, series), Some(*v), "{series} in\n{text}");
    }
}

/// The zombies fixture as its typed report, changed by `edit`, as Prometheus text.
fn zombies_with(edit: impl FnOnce(&mut Envelope<ZombiesReport>)) -> String {
    let text = &fixture_text("zombies");
    let mut r: Envelope<ZombiesReport> = serde_json::from_str(text).unwrap();
    edit(&mut r);
    let e = Emitted {
        header: r.header,
        body: std::sync::Arc::new(r.body),
    };
    super::render(&[&e])
}

/// The cgroups fixture as its typed report, changed by `edit`, as Prometheus text.
fn cgroups_with(edit: impl FnOnce(&mut Envelope<CgroupsReport>)) -> String {
    let text = &fixture_text("cgroups");
    let mut r: Envelope<CgroupsReport> = serde_json::from_str(text).unwrap();
    edit(&mut r);
    let e = Emitted {
        header: r.header,
        body: std::sync::Arc::new(r.body),
    };
    super::render(&[&e])
}

#[test]
fn the_cgroups_fixture_is_its_typed_report_exactly() {
    let r: Envelope<CgroupsReport> = serde_json::from_value(fixture("cgroups")).unwrap();
    assert_eq!(serde_json::to_value(&r).unwrap(), fixture("cgroups"));
}

#[test]
fn cgroups_series_come_from_the_typed_fields() {
    let text = cgroups_with(|r| {
        r.body.state_evicted.dying = 5;
        r.body.memory_stat_read_ms.now = Some(0.0131);
        // A release whose rmdir was not seen has no latency: no series.
        r.body.released_recent[1].latency_us = None;
        r.body.findings.push(Finding::Stuck {
            hierarchy: "memory".into(),
            path: "/old".into(),
            age_s: 100.0004,
        });
    });
    assert_values(
        &text,
        &[
            (
                "tracer_state_evicted_total{detector=\"cgroups\",state=\"dying\"}",
                5.0,
            ),
            ("tracer_cgroups_memory_stat_read_seconds", 0.013 / 1e3),
            (
                "tracer_cgroups_finding_age_seconds{hierarchy=\"memory\",path=\"/old\"}",
                100.0,
            ),
            (
                "tracer_cgroups_released_latency_seconds{hierarchy=\"cgroup2\",path=\"/mtest1\"}",
                0.042302,
            ),
            ("tracer_cgroups_dying_growing{hierarchy=\"memory\"}", 0.0),
            ("tracer_cgroups_created_total{hierarchy=\"cgroup2\"}", 3.0),
            ("tracer_cgroups_empty", 0.0),
        ],
    );
    assert_eq!(
        value(
            &text,
            "tracer_cgroups_released_latency_seconds{hierarchy=\"cgroup2\",path=\"/mtest2\"}"
        ),
        None,
        "{text}"
    );
    // Findings other than a cgroup past the threshold have no age series.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("tracer_cgroups_finding_age_seconds{"))
            .count(),
        3,
        "{text}"
    );
    assert_eq!(promtool(&text), "", "{text}");
}

#[test]
fn common_fields_become_series_labelled_by_detector() {
    let text = zombies_with(|r| {
        (r.header.final_, r.header.elapsed_s) = (true, 2.5);
        r.header.lost_events = 3;
        r.header.bad_records = 1;
        r.header.kernel_read_errors = 7;
        r.header.kernel_map_full = 2;
        r.body.state_evicted.reapers = 4;
    });
    assert_values(
        &text,
        &[
            ("tracer_lost_events_total{detector=\"zombies\"}", 3.0),
            ("tracer_bad_records_total{detector=\"zombies\"}", 1.0),
            ("tracer_kernel_read_errors_total{detector=\"zombies\"}", 7.0),
            ("tracer_kernel_map_full_total{detector=\"zombies\"}", 2.0),
            (
                "tracer_state_evicted_total{detector=\"zombies\",state=\"reapers\"}",
                4.0,
            ),
            (
                "tracer_state_evicted_total{detector=\"zombies\",state=\"exits_untracked\"}",
                0.0,
            ),
            ("tracer_report_elapsed_seconds{detector=\"zombies\"}", 2.5),
            ("tracer_report_final{detector=\"zombies\"}", 1.0),
        ],
    );
    assert!(text.contains("# HELP tracer_lost_events_total Kernel events dropped"));
}

#[test]
fn values_come_from_the_reports_fields_in_base_units() {
    let z = render("zombies", &fixture("zombies"));
    assert_values(
        &z,
        &[
            (
                "tracer_zombies_parent_zombies{pid=\"18726\",comm=\"python3\"}",
                3.0,
            ),
            (
                "tracer_zombies_parent_oldest_zombie_age_seconds{pid=\"18726\",comm=\"python3\"}",
                7.001,
            ),
            ("tracer_zombies_stuck", 3.0),
            ("tracer_zombies_forks_total", 294.0),
            // reap_latency_us: 72 reaps, half at 1727 us, the rest 15.2 ms to 32 ms.
            ("tracer_zombies_reap_latency_seconds_count", 72.0),
            ("tracer_zombies_reap_latency_seconds_sum", 0.728208),
            (
                "tracer_zombies_reap_latency_seconds_bucket{le=\"0.001\"}",
                0.0,
            ),
            (
                "tracer_zombies_reap_latency_seconds_bucket{le=\"0.01\"}",
                36.0,
            ),
            (
                "tracer_zombies_reap_latency_seconds_bucket{le=\"+Inf\"}",
                72.0,
            ),
        ],
    );
    // A null field (no ETA) is no series at all.
    assert!(
        !z.contains("tracer_zombies_pid_exhaustion_eta_seconds "),
        "{z}"
    );

    let c = render("cgroups", &fixture("cgroups"));
    assert_values(
        &c,
        &[
            (
                "tracer_cgroups_dying_age_seconds{hierarchy=\"memory\",path=\"/mtest1\"}",
                4.505,
            ),
            (
                "tracer_cgroups_finding_age_seconds{hierarchy=\"memory\",path=\"/mtest1\"}",
                4.505,
            ),
            (
                "tracer_cgroups_released_latency_seconds{hierarchy=\"cgroup2\",path=\"/mtest2\"}",
                0.040396,
            ),
            ("tracer_cgroups_dying{hierarchy=\"memory\"}", 35.0),
        ],
    );
    assert!(
        !c.contains("tracer_cgroups_dying{hierarchy=\"name=systemd\"}"),
        "unknown: no series"
    );

    assert_values(
        &tcp_with(|_| ()),
        &[
            (
                "tracer_tcp_memory_limit_bytes{threshold=\"pressure\"}",
                383858.0 * 4096.0,
            ),
            ("tracer_tcp_refusals_total", 37.0),
            ("tracer_tcp_skb_drops_total{reason=\"PROTO_MEM\"}", 0.0),
            (
                "tracer_tcp_process_socket_memory_bytes{pid=\"5152\",comm=\"receiver\"}",
                1048576.0,
            ),
        ],
    );

    let root = "{mount=\"/\",device=\"/dev/vda\",fstype=\"ext4\"}";
    assert_values(
        &inodes_with(|_| {}),
        &[
            (
                &format!("tracer_inodes_filesystem_inodes_used{root}"),
                419386.0,
            ),
            (
                &format!("tracer_inodes_filesystem_blocks_used_ratio{root}"),
                5.49 / 100.0,
            ),
            (&format!("tracer_inodes_allocated_total{root}"), 273.0),
            (
                "tracer_inodes_enospc_failures{pid=\"4242\",comm=\"touch\",mount=\"/tmp/ifull\"}",
                12.0,
            ),
        ],
    );

    let t = triage_with(|_| {});
    assert_values(
        &t,
        &[
            (
                "tracer_triage_finding_severity{resource=\"cpu\",check=\"utilization\"}",
                2.0,
            ),
            (
                "tracer_triage_finding_severity{resource=\"disk\",check=\"io\",subject=\"vda\"}",
                0.0,
            ),
            (
                "tracer_triage_disk_await_seconds{device=\"vda\"}",
                0.4 / 1e3,
            ),
            ("tracer_triage_worst_severity", 2.0),
            ("tracer_triage_window_seconds", 3.001),
            ("tracer_triage_load1", 6.670000076293945),
            ("tracer_triage_cpu_time_ratio{mode=\"busy\"}", 99.8 / 100.0),
            ("tracer_triage_runnable_tasks", 6.6),
            (
                "tracer_triage_pressure_some_ratio{resource=\"cpu\"}",
                98.0 / 100.0,
            ),
            (
                "tracer_triage_pressure_some_ratio{resource=\"io\"}",
                0.2 / 100.0,
            ),
            ("tracer_triage_memory_total_bytes", 25275990016.0),
            ("tracer_triage_tcp_established", 0.0),
            ("tracer_triage_tasks", 171.0),
            ("tracer_triage_tasks_limit", 32768.0),
            ("tracer_triage_zombies", 0.0),
            ("tracer_triage_cgroups_dying{hierarchy=\"memory\"}", 33.0),
            (
                "tracer_triage_filesystem_inodes_used_ratio{mount=\"/\",device=\"/dev/vda\",fstype=\"ext4\"}",
                2.5 / 100.0,
            ),
            ("tracer_triage_tcp_memory_of_pressure_ratio", 0.0),
            ("tracer_triage_runqueue_latency_seconds_count", 4198.0),
            (
                "tracer_triage_runqueue_latency_seconds_bucket{le=\"0.016384\"}",
                3779.0,
            ),
        ],
    );
    assert!(
        !t.contains("tracer_triage_cgroups_dying{hierarchy=\"name=systemd\"}"),
        "unknown: no series"
    );
    // Without the eBPF part, PSI or /proc/meminfo: no series for them, never a 0.
    let t = triage_with(|r| {
        r.body.runqueue_latency_us = None;
        r.body.cpu.cpu_psi_some_pct = None;
        r.body.memory.memory = None;
    });
    assert!(!t.contains("runqueue_latency"), "{t}");
    assert!(
        !t.contains("tracer_triage_pressure_some_ratio{resource=\"cpu\"}"),
        "{t}"
    );
    assert!(!t.contains("tracer_triage_memory_total_bytes"), "{t}");
    assert_eq!(promtool(&t), "");
}

/// The triage fixture as its typed report, changed by `edit`, as Prometheus text.
fn triage_with(edit: impl FnOnce(&mut Envelope<TriageReport>)) -> String {
    let mut r: Envelope<TriageReport> = serde_json::from_value(fixture("triage")).unwrap();
    edit(&mut r);
    let e = Emitted {
        header: r.header,
        body: std::sync::Arc::new(r.body),
    };
    super::render(&[&e])
}

#[test]
fn the_triage_fixture_reads_strictly_as_its_typed_report() {
    let v = fixture("triage");
    let r: Envelope<TriageReport> = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&r).unwrap(), v, "every key, once");
}

#[test]
fn per_process_and_per_path_series_are_a_bounded_top_n() {
    let text = zombies_with(|r| {
        let one = r.body.parents[0].clone();
        r.body.parents = (0..30)
            .map(|i| ParentRow {
                pid: 100 + i,
                comm: "p".into(),
                zombies: i as usize,
                ..one.clone()
            })
            .collect();
    });
    let listed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tracer_zombies_parent_zombies{"))
        .collect();
    assert_eq!(listed.len(), crate::zombies::metrics::TOP_PARENTS, "{text}");
    assert!(
        listed
            .iter()
            .any(|l| l.contains("pid=\"129\"") && l.ends_with(" 29"))
    );
    assert!(
        !listed.iter().any(|l| l.contains("pid=\"119\"")),
        "the 11th is out"
    );

    // The same path twice (made and removed again) is one series.
    let text = cgroups_with(|r| {
        let one = r.body.dying[0].clone();
        r.body.dying = (0..50)
            .map(|i| DyingRow {
                hierarchy: "memory".into(),
                path: format!("/c{}", i / 2),
                age_s: f64::from(i),
                ..one.clone()
            })
            .collect();
    });
    let n = text
        .lines()
        .filter(|l| l.starts_with("tracer_cgroups_dying_age_seconds{"))
        .count();
    assert_eq!(n, crate::cgroups::metrics::TOP_PATHS, "{text}");
    assert_eq!(promtool(&text), "");

    // Each bound is the one HELP states.
    for (m, n) in [
        (
            &crate::zombies::metrics::PARENT_ZOMBIES,
            crate::zombies::metrics::TOP_PARENTS,
        ),
        (
            &crate::cgroups::metrics::DYING_AGE,
            crate::cgroups::metrics::TOP_PATHS,
        ),
        (
            &crate::inodes::metrics::DIRECTORY,
            crate::inodes::metrics::TOP,
        ),
        (&crate::tcp::metrics::HOLDER_BYTES, crate::tcp::metrics::TOP),
    ] {
        assert!(m.help.contains(&format!(" {n} ")), "{}: {}", m.name, m.help);
    }
}

/// The inodes fixture as its typed report, changed by `edit`, as Prometheus text.
fn inodes_with(edit: impl FnOnce(&mut Envelope<crate::inodes::InodesReport>)) -> String {
    let text = &fixture_text("inodes");
    let mut r: Envelope<crate::inodes::InodesReport> = serde_json::from_str(text).unwrap();
    edit(&mut r);
    let e = Emitted {
        header: r.header,
        body: std::sync::Arc::new(r.body),
    };
    super::render(&[&e])
}

#[test]
fn inodes_series_name_each_filesystem_process_and_directory() {
    let text = inodes_with(|r| {
        let f = &mut r.body.filesystems[0];
        f.level = crate::snapshot::Level::Crit;
        (f.inodes_full_blocks_free, f.exhaustion_eta_s) = (true, Some(0.0));
        r.body.top_directories[1].path = None;
        r.body.state_evicted.enospc_paths = 3;
    });
    assert_eq!(promtool(&text), "", "{text}");
    let root = "{mount=\"/\",device=\"/dev/vda\",fstype=\"ext4\"}";
    let cgroupfs = "{mount=\"/sys/fs/cgroup\",device=\"tmpfs\",fstype=\"tmpfs\"}";
    assert_values(
        &text,
        &[
            (&format!("tracer_inodes_filesystem_severity{root}"), 2.0),
            (&format!("tracer_inodes_full_blocks_free{root}"), 1.0),
            (&format!("tracer_inodes_exhaustion_eta_seconds{root}"), 0.0),
            (&format!("tracer_inodes_growth_per_second{root}"), 67.31),
            (&format!("tracer_inodes_freed_total{root}"), 67.0),
            (&format!("tracer_inodes_filesystem_severity{cgroupfs}"), 0.0),
            (
                &format!("tracer_inodes_filesystem_inodes{cgroupfs}"),
                3085448.0,
            ),
            (
                "tracer_inodes_process_net_inodes{pid=\"18101\",comm=\"cargo\",mount=\"/\"}",
                181.0,
            ),
            (
                "tracer_inodes_directory_allocated_inodes{mount=\"/\",path=\"/work/wt-rss/target/release/deps\"}",
                16.0,
            ),
            // An unresolved directory: no path label.
            (
                "tracer_inodes_directory_allocated_inodes{mount=\"/\"}",
                31.0,
            ),
            (
                "tracer_state_evicted_total{detector=\"inodes\",state=\"enospc_paths\"}",
                3.0,
            ),
        ],
    );
    // Not counted on tmpfs (statvfs): no series, never a made-up 0; no ETA: none.
    for absent in [
        format!("tracer_inodes_allocated_total{cgroupfs}"),
        format!("tracer_inodes_exhaustion_eta_seconds{cgroupfs}"),
    ] {
        assert!(!text.contains(&absent), "{absent}\n{text}");
    }
}

#[test]
fn descriptions_follow_the_naming_rules() {
    let all = all_metrics();
    let names: BTreeSet<String> = all.iter().map(|m| m.exposed_name()).collect();
    assert_eq!(names.len(), all.len(), "each name once");
    for m in &all {
        let name = m.exposed_name();
        assert!(
            !m.help.is_empty() && m.help.ends_with('.'),
            "{name}: {}",
            m.help
        );
        assert_eq!(name.ends_with("_total"), m.kind == Kind::Counter, "{name}");
        for abbreviation in ["_us", "_ms", "_s_", "_pct", "_per_s"] {
            assert!(
                !format!("{name}_").contains(&format!("{abbreviation}_")),
                "{name}"
            );
        }
        assert!(!name.chars().any(|c| c.is_ascii_uppercase()), "{name}");
        for unbounded in ["cmdline", "cgroup", "ino", "id"] {
            assert!(!m.labels.contains(&unbounded), "{name}: {unbounded}");
        }
        // Per-process and per-path series state their bound.
        if m.labels.contains(&"pid") || m.labels.contains(&"path") {
            assert!(m.help.contains("for the "), "{name}: {}", m.help);
        }
    }
}

/// The rows of docs/metrics.md's tables, as the descriptions give them: each
/// metric, then each histogram's bucket bounds.
fn readme_rows() -> BTreeSet<String> {
    all_metrics()
        .iter()
        .map(|m| {
            let labels: Vec<String> = m.labels.iter().map(|l| format!("`{l}`")).collect();
            let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
            format!(
                "| `{}` | {} | {} | {} | {} |",
                m.exposed_name(),
                m.type_name(),
                or_dash(m.unit_name().to_string()),
                or_dash(labels.join(", ")),
                m.help
            )
        })
        .chain(
            (all_metrics().into_iter())
                .filter(|m| m.kind == Kind::Histogram)
                .map(|m| {
                    let le: Vec<String> = m.buckets.iter().map(|b| b.to_string()).collect();
                    format!("| `{}` | {} |", m.exposed_name(), le.join(", "))
                }),
        )
        .collect()
}

#[test]
fn readme_lists_every_described_metric_and_no_other() {
    let section = include_str!("../../../docs/metrics.md");
    let listed: BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `tracer_"))
        .map(str::to_string)
        .collect();
    let described = readme_rows();
    let missing: Vec<&String> = described.difference(&listed).collect();
    let extra: Vec<&String> = listed.difference(&described).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/metrics.md is out of date.\nnot in docs/metrics.md: {missing:#?}\nnot described: {extra:#?}\nthe rows, in the order of the code:\n{}",
        all_metrics()
            .iter()
            .map(|m| readme_rows()
                .into_iter()
                .find(|r| r.starts_with(&format!("| `{}` ", m.exposed_name())))
                .unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn hooks_are_exposed_attached_or_not_and_each_choice_by_the_path_it_took() {
    let text = zombies_with(|r| {
        r.header.hooks = serde_json::from_value(json!({
            "attached": [
                {"hook": "sched:sched_process_exit", "required": true, "attached": true},
                {"hook": "fentry/do_wait", "required": false, "attached": false},
            ],
            "paths": [{"choice": "pressure edges", "path": "none"}],
        }))
        .unwrap();
    });
    for line in [
        r#"tracer_hook_attached{detector="zombies",hook="sched:sched_process_exit"} 1"#,
        r#"tracer_hook_attached{detector="zombies",hook="fentry/do_wait"} 0"#,
        r#"tracer_hook_path{detector="zombies",choice="pressure edges",via="none"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    assert_eq!(promtool(&text), "");
}

/// Every histogram of `text`: (series name and labels without `le`, [(le, count)],
/// `_count`, `_sum`).
type Hist = (String, Vec<(f64, f64)>, f64, f64);

fn histograms(text: &str) -> Vec<Hist> {
    let mut out: Vec<Hist> = Vec::new();
    for name in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
    {
        let prefix = format!("{name}_bucket{{");
        for l in text.lines().filter_map(|l| l.strip_prefix(&prefix)) {
            let (labels, v) = l.rsplit_once(' ').unwrap();
            let (rest, le) = labels
                .trim_end_matches('}')
                .rsplit_once("le=\"")
                .map_or(("", labels.trim_start_matches("le=\"")), |(r, le)| (r, le));
            let le = le.trim_end_matches(['"', '}']);
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let others = rest.trim_end_matches(',');
            let series = if others.is_empty() {
                name.to_string()
            } else {
                format!("{name}{{{others}}}")
            };
            let v: f64 = v.parse().unwrap();
            match out.iter_mut().find(|h| h.0 == series) {
                Some(h) => h.1.push((le, v)),
                None => {
                    let of = |suffix: &str| {
                        let s = match others.is_empty() {
                            true => format!("{name}_{suffix}"),
                            false => format!("{name}_{suffix}{{{others}}}"),
                        };
                        value(text, &s).unwrap_or_else(|| panic!("{s} in\n{text}"))
                    };
                    let (count, sum) = (of("count"), of("sum"));
                    out.push((series, vec![(le, v)], count, sum));
                }
            }
        }
    }
    out
}

#[test]
fn latencies_are_histograms_with_cumulative_buckets_ending_at_the_count() {
    let mut seen = BTreeSet::new();
    for command in commands() {
        let text = render(command, &fixture(command));
        assert!(!text.contains("stat="), "{text}");
        for (series, buckets, count, sum) in histograms(&text) {
            // Each described bound once, ascending, then +Inf.
            let name = series.split('{').next().unwrap();
            let m = all_metrics()
                .into_iter()
                .find(|m| m.exposed_name() == name)
                .unwrap();
            let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
            let mut expected = m.buckets.to_vec();
            expected.push(f64::INFINITY);
            assert_eq!(les, expected, "{series}");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{series}: {buckets:?}"
            );
            assert_eq!(
                buckets.last().unwrap().1,
                count,
                "{series}: +Inf is the count"
            );
            assert!(sum >= 0.0 && (count > 0.0 || sum == 0.0), "{series}");
            seen.insert(name.to_string());
        }
    }
    for m in all_metrics().iter().filter(|m| m.kind == Kind::Histogram) {
        assert!(m.unit == Some(BaseUnit::Seconds), "{}", m.name);
        assert!(
            (10..=16).contains(&m.buckets.len()) && m.buckets.windows(2).all(|w| w[0] < w[1]),
            "{}: {:?}",
            m.name,
            m.buckets
        );
        assert!(seen.contains(&m.exposed_name()), "{} in no fixture", m.name);
    }
}

/// The tcp-pressure fixture as its typed report, changed by `edit`, as Prometheus text.
fn tcp_with(edit: impl FnOnce(&mut Envelope<crate::tcp::TcpPressureReport>)) -> String {
    let text = &fixture_text("tcp-pressure");
    let mut r: Envelope<crate::tcp::TcpPressureReport> = serde_json::from_str(text).unwrap();
    edit(&mut r);
    let e = Emitted {
        header: r.header,
        body: std::sync::Arc::new(r.body),
    };
    super::render(&[&e])
}

#[test]
fn the_tcp_fixture_is_its_typed_report_key_for_key() {
    let v = fixture("tcp-pressure");
    let r: Envelope<crate::tcp::TcpPressureReport> = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&r).unwrap(), v);
}

#[test]
fn tcp_series_come_from_the_typed_report_in_base_units() {
    let text = tcp_with(|r| {
        r.body.tcpext.memory_pressures_chrono = Some(1500);
        r.body.tcpext.abort_on_memory = None;
        r.body.mem_pages.pct_of_pressure = 87.5;
        r.body.early_warning.active = true;
        r.body.state_evicted.culprits = 2;
        r.body.drops = None;
    });
    assert_eq!(promtool(&text), "", "{text}");
    assert_values(
        &text,
        &[
            ("tracer_tcp_memory_pressure_time_seconds_total", 1.5),
            ("tracer_tcp_memory_pressures_total", 0.0),
            ("tracer_tcp_memory_of_pressure_ratio", 0.875),
            ("tracer_tcp_memory_early_warning", 1.0),
            (
                "tracer_tcp_process_refusals{pid=\"5151\",comm=\"sender\"}",
                37.0,
            ),
            (
                "tracer_state_evicted_total{detector=\"tcp-pressure\",state=\"culprits\"}",
                2.0,
            ),
            (
                "tracer_tcp_send_latency_seconds_count{during=\"pressure\"}",
                0.0,
            ),
        ],
    );
    // A counter this kernel lacks, and drops not counted: no series.
    assert!(!text.contains("tracer_tcp_aborts_on_memory"), "{text}");
    assert!(!text.contains("tracer_tcp_skb_drops_total{"), "{text}");
}

/// A zombies report whose reap latency is these samples (ns), as the detector writes it.
fn reaps(ns: &[u64]) -> String {
    let mut h = crate::output::new_histogram();
    let mut b = crate::output::Buckets::new(crate::zombies::metrics::REAP_BOUNDS);
    for &n in ns {
        crate::output::record(&mut h, n / 1000);
        b.record_ns(n);
    }
    zombies_with(|r| r.body.reap_latency_us = crate::output::Summary::of(&h).with(&b))
}

#[test]
fn a_latency_on_a_bound_counts_in_that_bucket_and_the_sum_is_exact() {
    // 1 ms exactly, 1 ms + 1 ns, 5 s exactly, 2 h.
    let text = reaps(&[1_000_000, 1_000_001, 5_000_000_000, 7_200_000_000_000]);
    assert_eq!(promtool(&text), "", "{text}");
    let b = |le: &str| {
        value(
            &text,
            &format!("tracer_zombies_reap_latency_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(b("0.0001"), Some(0.0));
    assert_eq!(b("0.001"), Some(1.0));
    assert_eq!(b("0.01"), Some(2.0));
    assert_eq!(b("5"), Some(3.0), "{text}");
    assert_eq!(b("3600"), Some(3.0));
    assert_eq!(b("14400"), Some(4.0));
    assert_eq!(b("+Inf"), Some(4.0));
    assert_eq!(
        value(&text, "tracer_zombies_reap_latency_seconds_sum"),
        Some(7205.002000001)
    );
    assert_eq!(
        value(&text, "tracer_zombies_reap_latency_seconds_count"),
        Some(4.0)
    );
}

#[test]
fn a_histogram_without_samples_has_zero_buckets_and_one_not_measured_has_none() {
    // Like a counter that counted nothing: every bucket, the sum and the count are 0.
    let text = reaps(&[]);
    assert_eq!(promtool(&text), "", "{text}");
    let h = histograms(&text);
    assert_eq!(h.len(), 1, "{text}");
    assert!(h[0].1.iter().all(|b| b.1 == 0.0) && h[0].2 == 0.0 && h[0].3 == 0.0);
    assert_eq!(h[0].1.len(), crate::zombies::metrics::REAP_BOUNDS.len() + 1);
    // Send latency not measured on this kernel: no series.
    let text = tcp_with(|r| {
        r.body.send_latency_us = crate::tcp::SendLatency::NotMeasured {
            measured: crate::tcp::Is,
            why: Some("no hook".into()),
        }
    });
    assert!(!text.contains("tcp_send_latency"), "{text}");
    // A latency with quantiles only: no series (not guessed from them).
    let text = zombies_with(|r| r.body.reap_latency_us.buckets = None);
    assert!(!text.contains("reap_latency"), "{text}");
}
