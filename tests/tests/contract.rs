//! What every tracing detector must do, whatever it traces, written once and run over
//! each of them: a `--duration` run ends by itself with interval reports, one final
//! report last and nothing left loaded; bad input is one sentence and a non-zero exit;
//! a kernel without a required hook gets the hook named (or, where the detector has a
//! fallback, a run on it). The incident tests live in the per-detector files.
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracer::{
    cgroups::CgroupsReport, detectors, report::Emitted, run, sink::Sink, zombies::ZombiesReport,
};
use tracer_tests::{
    Finished, Header, assert_none_loaded, http::promtool_problems, require_root, run_tracer,
    run_tracer_unprivileged, run_tracer_without_tracepoints, serial, typed,
};

/// A detector under the contract, as the registry (tracer/src/detectors.rs) defines it.
struct Detector {
    command: &'static str,
    /// Its programs' names start with this (tracer-ebpf: `<prefix>_<hook>`).
    programs: String,
    /// Takes `--top N`.
    top: bool,
    /// Without any tracepoint: the sentence naming its first required hook, or None
    /// for a detector without required hooks, which runs on its fallback.
    missing: Option<String>,
}

/// Every registered detector that takes `--interval`: the one-window check (triage:
/// no -i, exit status 0/3/4, runs without eBPF) is tested in tests/triage.rs.
fn detectors() -> Vec<Detector> {
    (detectors::ALL.iter())
        .filter(|e| has_option(e, "interval"))
        .map(|e| Detector {
            command: e.spec.detector,
            programs: format!("{}_", e.spec.prefix),
            top: has_option(e, "top"),
            missing: (e.spec.hooks.iter())
                .find(|h| h.required)
                .map(|h| format!("tracepoint {} is missing", h.label())),
        })
        .collect()
}

fn has_option(e: &detectors::Entry, long: &str) -> bool {
    e.command()
        .get_arguments()
        .any(|a| a.get_long() == Some(long))
}

/// Sections the text report of a detector always has, besides its header and footer.
fn sections(command: &str) -> &'static [&'static str] {
    match command {
        "zombies" => &["NON-REAPING PARENTS"],
        "tcp-pressure" => &[
            "EPISODES",
            "CULPRITS",
            "SEND LATENCY during pressure",
            "ADVICE",
        ],
        "cgroups" => &["EMPTY LEFTOVERS"],
        _ => &[],
    }
}

#[test]
fn the_contract_covers_every_detector_but_the_one_window_check() {
    let names: Vec<&str> = detectors().iter().map(|d| d.command).collect();
    assert_eq!(names.len() + 1, detectors::ALL.len(), "{names:?}");
    assert!(!names.contains(&"triage"), "{names:?}");
    // The binary lists the same detectors as the library's registry.
    let out = run_tracer(&["--list"]);
    assert!(out.status.success(), "{}", out.stderr);
    let listed: Vec<&str> = out.stdout.lines().collect();
    let registered: Vec<&str> = detectors::ALL.iter().map(|e| e.spec.detector).collect();
    assert_eq!(listed, registered);
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
    for d in &detectors() {
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
            reports.len() >= 2,
            "{}: interval reports and the final one: {}",
            d.command,
            out.stdout
        );
        // Every report reads as its detector's typed report (the registry's `read`)
        // and writes back the same: every key is a field of the type, and back.
        let read = detectors::find(d.command).unwrap().read;
        for line in out.stdout.lines().filter(|l| l.starts_with('{')) {
            let typed = read(line).unwrap_or_else(|e| panic!("{}: {e}\n{line}", d.command));
            let back: Value = serde_json::from_str(&typed.json().unwrap()).unwrap();
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(back, line, "{}", d.command);
        }
        let headers: Vec<Header> = (reports.iter())
            .map(|r| serde_json::from_value(r.clone()).unwrap())
            .collect();
        let (last, interval) = headers.split_last().unwrap();
        assert!(last.final_, "{}", d.command);
        assert_eq!(last.command, d.command);
        assert!(interval.iter().all(|r| !r.final_), "{}", out.stdout);
        let done = last.elapsed_s;
        assert!(
            done >= 1.0,
            "{}: final report before the duration: {done}",
            d.command
        );
        assert!(
            interval.iter().all(|r| r.elapsed_s < done),
            "{}",
            out.stdout
        );
        // What every report counts besides its findings.
        let counts = [
            last.lost_events,
            last.bad_records,
            last.kernel_read_errors,
            last.kernel_map_full,
        ];
        assert_eq!(counts, [0; 4], "{}: {last:?}", d.command);
        // Only serve has the kernel time programs: no run counts are made up here.
        assert_eq!(last.programs, None, "{}", d.command);
        // Its hooks, each attached or not: a run that started has every required one.
        let hooks = &last.hooks.attached;
        assert!(!hooks.is_empty(), "{}: {last:?}", d.command);
        for h in hooks {
            assert!(!h.hook.is_empty(), "{h:?}");
            if h.required {
                assert!(h.attached, "{}: {h:?}", d.command);
            }
        }
        assert_none_loaded(&d.programs);

        let out = run(d, &["-d", "500ms"]);
        assert!(out.status.success(), "{}: {}", d.command, out.stderr);
        assert!(
            out.stdout
                .contains(&format!("=== tracer {}: final report", d.command)),
            "{}",
            out.stdout
        );
        for section in sections(d.command).iter().chain(&["lost events: 0"]) {
            assert!(
                out.stdout.contains(section),
                "{}: {section} missing:\n{}",
                d.command,
                out.stdout
            );
        }
        assert_none_loaded(&d.programs);
    }
}

#[test]
fn every_detector_answers_bad_input_in_one_sentence() {
    require_root();
    let _s = serial();
    for d in &detectors() {
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
    for d in &detectors() {
        // An empty tracefs, as on a kernel that lacks every tracepoint.
        let out = run_tracer_without_tracepoints(&[d.command, "-d", "1s", "--json"]);
        match &d.missing {
            Some(sentence) => out.assert_one_sentence(1, &[sentence, "tracer doctor"]),
            None => {
                assert!(out.status.success(), "{}: {}", d.command, out.stderr);
                // The fallback run says that none of its hooks is attached.
                let reports = out.reports();
                let last: Header = serde_json::from_value(reports.last().unwrap().clone()).unwrap();
                let hooks = &last.hooks.attached;
                assert!(!hooks.is_empty(), "{last:?}");
                assert!(hooks.iter().all(|h| !h.attached), "{last:?}");
            }
        }
        assert_none_loaded(&d.programs);
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
    let c = typed::<CgroupsReport>(of("cgroups"));
    assert!(z.exits >= 1, "{z:?}");
    assert!(c.created >= 1, "{c:?}");
    assert!(c.removed >= 1, "{c:?}");
    for h in [&z.header, &c.header] {
        assert!(h.final_);
        assert_eq!(h.bad_records, 0, "{h:?}");
        assert_eq!(h.lost_events, 0, "{h:?}");
    }
}
