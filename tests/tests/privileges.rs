//! Least privilege that works: as uid 65534 holding exactly the capability set the
//! tracer names (`tracer doctor --json`: privileges.needed, from tracer/src/bpf/caps.rs)
//! every detector runs completely, with no caveat or skipped part that only a lack of
//! privileges gives; without any one capability of the set the error names it; and the
//! deployment files grant that set, no more and no less.
use std::path::PathBuf;

use serde_json::Value;
use tracer::{doctor::Doctor, triage::TriageReport, zombies::ZombiesReport};
use tracer_tests::{
    Finished, Header, matrix_kernel, require_root, run_tracer, run_tracer_with_caps, serial,
    strict, typed,
};

const PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

/// Sets kernel.perf_event_paranoid and puts the saved value back when dropped (a
/// failed assertion unwinds through it too).
struct ParanoidGuard(String);

impl ParanoidGuard {
    fn set(level: &str) -> ParanoidGuard {
        let saved = std::fs::read_to_string(PARANOID)
            .unwrap()
            .trim()
            .to_string();
        std::fs::write(PARANOID, level).unwrap();
        ParanoidGuard(saved)
    }
}

impl Drop for ParanoidGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(PARANOID, &self.0) {
            eprintln!("restoring {PARANOID} to {} failed: {e}", self.0);
        }
    }
}

/// Debian's kernels (the matrix VMs) add a level 3 to kernel.perf_event_paranoid, their
/// default, which lets only CAP_SYS_ADMIN open perf events: there the set is refused in
/// one sentence that names the sysctl, and suffices once it is 2 (the guard restores
/// it). This machine's kernel is at 2 already.
fn paranoid_path(set: &[String]) -> Option<ParanoidGuard> {
    let level: i32 = std::fs::read_to_string(PARANOID)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    match matrix_kernel() {
        "host" => {
            assert!(level <= 2, "{PARANOID} is {level} on the host");
            None
        }
        _ => {
            assert_eq!(level, 3, "Debian's default {PARANOID}");
            let out = run_tracer_with_caps(&strs(set), &["zombies", "-d", "1s"]);
            out.assert_one_sentence(
                1,
                &[
                    "kernel.perf_event_paranoid is 3",
                    "sysctl kernel.perf_event_paranoid=2",
                ],
            );
            Some(ParanoidGuard::set("2"))
        }
    }
}

/// The set, as the tracer itself states it.
fn needed() -> Vec<String> {
    let out = run_tracer(&["doctor", "--json"]);
    let doc: Doctor = strict(
        &serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("doctor --json: {e}\n{}\n{}", out.stdout, out.stderr)),
    );
    let needed: Vec<String> = (doc.privileges.needed.iter())
        .map(|c| c.to_string())
        .collect();
    assert!(needed.iter().any(|c| c == "CAP_BPF"), "{needed:?}");
    needed
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Anything in a report that says privileges were short.
fn assert_no_privilege_caveat(what: &str, out: &Finished, report: &Value) {
    let text = report.to_string();
    // ("not permitted" is no such sign: fentry's EPERM under lockdown, root's too.)
    for sign in ["CAP_", "needs root", "permission denied"] {
        assert!(
            !text.to_lowercase().contains(&sign.to_lowercase()),
            "{what}: the report mentions {sign:?}: {text}"
        );
    }
    assert!(
        !out.stderr.contains("skipped"),
        "{what}: a part was skipped: {}",
        out.stderr
    );
}

#[test]
fn every_detector_runs_completely_as_nobody_with_exactly_the_set() {
    require_root();
    let _s = serial();
    let set = needed();
    let _paranoid = paranoid_path(&set);
    for det in tracer::detectors::ALL.iter().map(|e| e.spec.detector) {
        let mut args = vec![det, "-d", "1s", "--json"];
        if det == "triage" {
            args.extend(["--fail-on", "never"]);
        }
        let out = run_tracer_with_caps(&strs(&set), &args);
        assert!(out.status.success(), "{det}: {}", out.stderr);
        let report = out.final_report();
        assert_no_privilege_caveat(det, &out, &report);
        // The same kernel paths as root takes (a path refused for want of a
        // privilege would fall back to a coarser one).
        let root = run_tracer(&args);
        assert!(root.status.success(), "{det} as root: {}", root.stderr);
        let root = root.final_report();
        let hooks = |r: &Value| serde_json::from_value::<Header>(r.clone()).unwrap().hooks;
        assert_eq!(
            hooks(&report),
            hooks(&root),
            "{det}: hooks differ from root's"
        );
        if det == "zombies" {
            let path = |r: &Value| typed::<ZombiesReport>(r).body.path;
            assert_eq!(
                path(&report),
                path(&root),
                "{det}: exit path differs from root's"
            );
        }
        if det == "triage" {
            let t = typed::<TriageReport>(&report);
            assert!(t.skipped.is_empty(), "{t:?}");
            assert!(
                t.runqueue_latency_us.is_some(),
                "no run-queue latency from eBPF: {t:?}"
            );
        }
    }
    let out = run_tracer_with_caps(
        &strs(&set),
        &["serve", "--listen", "127.0.0.1:0", "-d", "2s"],
    );
    // 3 and 4: triage's verdict (warn, crit) on this machine, not a failure to run.
    assert!(
        matches!(out.status.code(), Some(0 | 3 | 4)),
        "serve: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Tracing "),
        "serve did not attach: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("skipped"), "serve: {}", out.stderr);
}

#[test]
fn each_missing_capability_is_named() {
    require_root();
    let _s = serial();
    let set = needed();
    for cap in &set {
        let fewer: Vec<&str> = strs(&set).into_iter().filter(|c| c != cap).collect();
        // serve runs every detector, so it needs the whole set.
        let out = run_tracer_with_caps(&fewer, &["serve", "--listen", "127.0.0.1:0", "-d", "1s"]);
        out.assert_one_sentence(
            1,
            &[
                "`tracer serve` needs root",
                &format!("this process lacks {cap} (to "),
            ],
        );
        for other in set.iter().filter(|c| *c != cap) {
            assert!(
                !out.stderr.contains(&format!("lacks {other}"))
                    && !out.stderr.contains(&format!("and {other} (to")),
                "{other} is held but named missing: {}",
                out.stderr
            );
        }
    }
    // triage runs without CAP_SYSLOG, only not reading the kernel log: doctor says so.
    let fewer: Vec<&str> = strs(&set)
        .into_iter()
        .filter(|c| *c != "CAP_SYSLOG")
        .collect();
    let out = run_tracer_with_caps(&fewer, &["doctor"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("triage        can run")
                && l.ends_with("without CAP_SYSLOG (triage skips the kernel log)")),
        "{}",
        out.stdout
    );
    // Without CAP_DAC_READ_SEARCH tracefs (root's, mode 0700) cannot be read: the
    // detector that needs least says so, rather than that tracefs is not mounted.
    let fewer: Vec<&str> = strs(&set)
        .into_iter()
        .filter(|c| *c != "CAP_DAC_READ_SEARCH")
        .collect();
    let out = run_tracer_with_caps(&fewer, &["zombies", "-d", "1s"]);
    out.assert_one_sentence(
        1,
        &["`tracer zombies` needs root", "lacks CAP_DAC_READ_SEARCH"],
    );
    assert!(!out.stderr.contains("not mounted"), "{}", out.stderr);
}

fn repo_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The capabilities of the systemd unit and of the DaemonSet, and the README's list,
/// are the set in code: neither drifts.
#[test]
fn deployment_files_grant_exactly_the_set() {
    let set = needed();
    let unit = repo_file("deploy/systemd/tracer.service");
    for key in ["AmbientCapabilities=", "CapabilityBoundingSet="] {
        let lines: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix(key)).collect();
        assert_eq!(lines.len(), 1, "one {key} line in the unit");
        let caps: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(caps, strs(&set), "{key} in deploy/systemd/tracer.service");
    }
    assert!(unit.contains("\nNoNewPrivileges=yes"), "{unit}");

    let ds = repo_file("deploy/kubernetes/tracer-daemonset.yaml");
    let add: Vec<&str> = ds
        .lines()
        .filter_map(|l| l.trim().strip_prefix("add: ["))
        .collect();
    assert_eq!(add.len(), 1, "one capabilities add list in the DaemonSet");
    let caps: Vec<String> = add[0]
        .trim_end_matches(']')
        .split(',')
        .map(|c| format!("CAP_{}", c.trim().trim_matches('"')))
        .collect();
    assert_eq!(
        caps, set,
        "capabilities.add in deploy/kubernetes/tracer-daemonset.yaml"
    );
    assert!(
        ds.contains("drop: [\"ALL\"]"),
        "the DaemonSet drops ALL first"
    );

    let readme = repo_file("README.md");
    for cap in &set {
        assert!(
            readme.contains(cap.as_str()),
            "README's Privileges lacks {cap}"
        );
    }
}
