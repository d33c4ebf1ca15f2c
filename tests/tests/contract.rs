//! What every tracing detector must do, whatever it traces, written once and run over
//! each of them: a `--duration` run ends by itself with interval reports, one final
//! report last and nothing left loaded; bad input is one sentence and a non-zero exit;
//! a kernel without a required hook gets the hook named (or, where the detector has a
//! fallback, a run on it). The incident tests live in the per-detector files.
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracer::{detectors, report::Emitted, run, sink::Sink, zombies::ZombiesReport};
use tracer_tests::{
    Finished, Header, assert_none_loaded, http::promtool_problems, require_root, run_tracer,
    run_tracer_unprivileged, run_tracer_without_tracepoints, serial, typed,
};

struct Detector {
    command: &'static str,
    /// Its programs' names start with this (tracer-ebpf: `<detector>_<hook>`).
    programs: &'static str,
    /// Interval reports plus the final one that a 1 s run with `-i 300ms` prints at
    /// least (a TCG guest fits fewer 300 ms ticks into the second for some).
    min_reports: usize,
    /// Sections the text report always has.
    sections: &'static [&'static str],
    /// Takes `--top N`.
    top: bool,
    /// Without any tracepoint: the sentence naming the missing required hook, or None
    /// for a detector that runs on its fallback.
    missing: Option<&'static str>,
}

const DETECTORS: &[Detector] = &[
    Detector {
        command: "zombies",
        programs: "zombies_",
        min_reports: 3,
        sections: &["NON-REAPING PARENTS"],
        top: false,
        missing: Some("tracepoint sched:sched_process_fork is missing"),
    },
    Detector {
        command: "tcp-pressure",
        programs: "tcp_",
        min_reports: 2,
        sections: &[
            "EPISODES",
            "CULPRITS",
            "SEND LATENCY during pressure",
            "ADVICE",
        ],
        top: true,
        missing: Some("tracepoint sock:sock_exceed_buf_limit is missing"),
    },
    Detector {
        command: "cgroups",
        programs: "cgroups_",
        min_reports: 2,
        sections: &["EMPTY LEFTOVERS"],
        top: true,
        missing: Some("tracepoint cgroup:cgroup_mkdir is missing"),
    },
    Detector {
        command: "inodes",
        programs: "inodes_",
        min_reports: 2,
        sections: &[],
        top: true,
        // statvfs alone: usage and ETA without per-process attribution.
        missing: None,
    },
];

/// Registered detectors that are not under this contract, and why.
const EXEMPT: &[(&str, &str)] = &[
    (
        "triage",
        "a one-window check: no -i, exit status 0/3/4, and it runs without eBPF (tests/triage.rs)",
    ),
    (
        "serve",
        "not a detector: it runs the detectors above in one process (tests/privileges.rs runs it)",
    ),
];

/// A new detector gets a row above (or a stated exemption) before it lands: every
/// subcommand `tracer --help` lists besides doctor and help is checked here.
#[test]
fn every_registered_detector_is_under_contract() {
    let help = run_tracer(&["--help"]);
    assert!(help.status.success(), "{}", help.stderr);
    let commands: Vec<&str> = help
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| !["doctor", "help"].contains(c))
        .collect();
    assert!(commands.len() >= 5, "{}", help.stdout);
    for c in commands {
        assert!(
            DETECTORS.iter().any(|d| d.command == c) || EXEMPT.iter().any(|(e, _)| *e == c),
            "`tracer {c}` has no row in DETECTORS (tests/tests/contract.rs)"
        );
    }
}

/// A file the test made, removed on drop.
struct RmFile(std::path::PathBuf);

impl Drop for RmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(d: &Detector, args: &[&str]) -> Finished {
    let mut all = vec![d.command];
    all.extend_from_slice(args);
    run_tracer(&all)
}

#[test]
fn every_detector_ends_its_duration_with_one_final_report_and_detaches() {
    require_root();
    let _s = serial();
    for d in DETECTORS {
        let prom = std::env::temp_dir().join(format!(
            "tracer-contract-{}-{}.prom",
            std::process::id(),
            d.command
        ));
        let _rm = RmFile(prom.clone());
        let out = run(
            d,
            &[
                "-d",
                "1s",
                "-i",
                "300ms",
                "--json",
                "--prom-file",
                prom.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}: {}", d.command, out.stderr);
        // Its metrics, from the final report, are clean by promtool's rules.
        let text = std::fs::read_to_string(&prom).unwrap();
        assert!(
            text.contains("tracer_report_final{"),
            "{}: {text}",
            d.command
        );
        assert_eq!(promtool_problems(&text), "", "{}: {text}", d.command);
        let reports = out.reports();
        assert!(
            reports.len() >= d.min_reports,
            "{}: interval reports and the final one: {}",
            d.command,
            out.stdout
        );
        let (last, interval) = reports.split_last().unwrap();
        assert_eq!(last["final"], true, "{}", d.command);
        assert_eq!(last["command"], d.command);
        assert!(
            interval.iter().all(|r| r["final"] == false),
            "{}",
            out.stdout
        );
        let done = last["elapsed_s"].as_f64().unwrap();
        assert!(
            done >= 1.0,
            "{}: final report before the duration: {done}",
            d.command
        );
        assert!(
            interval
                .iter()
                .all(|r| r["elapsed_s"].as_f64().unwrap() < done),
            "{}",
            out.stdout
        );
        // What every report counts besides its findings.
        for key in [
            "lost_events",
            "bad_records",
            "kernel_read_errors",
            "kernel_map_full",
        ] {
            assert_eq!(last[key], 0, "{}: {key}: {last}", d.command);
        }
        // Its hooks, each attached or not: a run that started has every required one.
        let hooks = last["hooks"]["attached"].as_array().unwrap();
        assert!(!hooks.is_empty(), "{}: {}", d.command, last["hooks"]);
        for h in hooks {
            assert!(h["hook"].as_str().is_some_and(|n| !n.is_empty()), "{h}");
            if h["required"] == true {
                assert_eq!(h["attached"], true, "{}: {h}", d.command);
            }
        }
        assert_none_loaded(d.programs);

        let out = run(d, &["-d", "500ms"]);
        assert!(out.status.success(), "{}: {}", d.command, out.stderr);
        assert!(
            out.stdout
                .contains(&format!("=== tracer {}: final report", d.command)),
            "{}",
            out.stdout
        );
        for section in d.sections.iter().chain(&["lost events: 0"]) {
            assert!(
                out.stdout.contains(section),
                "{}: {section} missing:\n{}",
                d.command,
                out.stdout
            );
        }
        assert_none_loaded(d.programs);
    }
}

#[test]
fn every_detector_answers_bad_input_in_one_sentence() {
    require_root();
    let _s = serial();
    for d in DETECTORS {
        let out = run(d, &["-d", "ten"]);
        assert_eq!(out.status.code(), Some(2), "{}: {}", d.command, out.stderr);
        assert!(out.stderr.contains("not a duration"), "{}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

        let out = run(d, &["--no-such-flag"]);
        assert_eq!(out.status.code(), Some(2), "{}: {}", d.command, out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

        if d.top {
            for bad in ["0", "many"] {
                let out = run(d, &["--top", bad]);
                assert_eq!(out.status.code(), Some(2), "{}: {}", d.command, out.stderr);
                assert!(out.stderr.contains("row count"), "{}", out.stderr);
            }
        }

        let out = run_tracer_unprivileged(&[d.command, "-d", "1s"]);
        out.assert_one_sentence(
            1,
            &[&format!("`tracer {}` needs root", d.command), "CAP_BPF"],
        );
    }
}

#[test]
fn every_detector_names_a_missing_required_hook_or_runs_on_its_fallback() {
    require_root();
    let _s = serial();
    for d in DETECTORS {
        // An empty tracefs, as on a kernel that lacks every tracepoint.
        let out = run_tracer_without_tracepoints(&[d.command, "-d", "1s", "--json"]);
        match d.missing {
            Some(sentence) => out.assert_one_sentence(1, &[sentence, "tracer doctor"]),
            None => {
                assert!(out.status.success(), "{}: {}", d.command, out.stderr);
                // The fallback run says that none of its hooks is attached.
                let reports = out.reports();
                let last = reports.last().unwrap();
                let hooks = last["hooks"]["attached"].as_array().unwrap();
                assert!(!hooks.is_empty(), "{last}");
                assert!(hooks.iter().all(|h| h["attached"] == false), "{last}");
            }
        }
        assert_none_loaded(d.programs);
    }
}

/// Keeps every report's JSON.
struct Keep(Arc<Mutex<Vec<Value>>>);

impl Sink for Keep {
    fn write(&mut self, r: &Emitted) -> anyhow::Result<()> {
        let line = r.json()?;
        self.0.lock().unwrap().push(serde_json::from_str(&line)?);
        Ok(())
    }
}

/// Two detectors in one load of the object (the library's run loop, as `tracer serve`
/// uses it), each seeing its own incident: a child that exits and is reaped
/// (zombies), a cgroup made and removed (cgroups).
#[test]
fn one_load_drives_several_detectors() {
    require_root();
    let _s = serial();
    let prepare = |name: &str| {
        let e = detectors::find(name).unwrap();
        let m = e
            .command()
            .try_get_matches_from([name, "-d", "1s"])
            .unwrap();
        (e.prepare)(&m).unwrap()
    };
    let opts = run::RunOpts {
        duration: Some(std::time::Duration::from_secs(1)),
        ..Default::default()
    };
    let started = run::start(vec![prepare("zombies"), prepare("cgroups")], opts).unwrap();
    // After the attach: the records wait in the ring until the run reads them.
    let status = std::process::Command::new("true").status().unwrap();
    assert!(status.success());
    let root = tracer::snapshot::cgroups::hierarchies().unwrap()[0]
        .mount
        .clone();
    let dir = root.join(format!("tracer-contract-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    std::fs::remove_dir(&dir).unwrap();

    let kept = Arc::new(Mutex::new(Vec::new()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = rt
        .block_on(started.run_with(vec![Box::new(Keep(kept.clone()))]))
        .unwrap();
    assert_eq!(code, 0);
    let reports = kept.lock().unwrap().clone();
    assert_eq!(reports.len(), 2, "{reports:?}");
    let of = |c: &str| {
        (reports.iter())
            .find(|r| r["command"] == c)
            .unwrap_or_else(|| panic!("no {c} report: {reports:?}"))
    };
    let z = typed::<ZombiesReport>(of("zombies"));
    let c = of("cgroups");
    assert!(z.exits >= 1, "{z:?}");
    assert!(c["created"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["removed"].as_u64().unwrap() >= 1, "{c}");
    let cheader: Header = serde_json::from_value(c.clone()).unwrap();
    for h in [&z.header, &cheader] {
        assert!(h.final_);
        assert_eq!(h.bad_records, 0, "{h:?}");
        assert_eq!(h.lost_events, 0, "{h:?}");
    }
}
