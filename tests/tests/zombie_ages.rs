//! Zombies that were zombies long before the tracer started: the kernel dates them
//! (/proc/PID/sched's se.exec_start, tracer/src/zombies/ages.rs), so the first report of
//! `tracer zombies` and a 1 s `tracer triage` flag them already.
use std::time::{Duration, Instant};

use tracer::{
    triage::TriageReport,
    zombies::{ZombiesReport, ages::AgeSource},
};
use tracer_tests::{Incident, require_root, run_tracer, serial, zombie_children};

/// How old the zombies are when the tracer starts.
const AGE: Duration = Duration::from_secs(20);

#[test]
fn zombies_from_20s_before_the_start_are_dated_by_the_kernel_in_the_first_report() {
    require_root();
    let _s = serial();
    let started = Instant::now();
    let inc = Incident::start(&["zombies", "6"]);
    // "ready" comes once all six are zombies in /proc: they are at least this old.
    let zombie_since = Instant::now();
    assert_eq!(zombie_children(inc.pid).len(), 6, "the helper made 6 zombies");
    // The incident is zombies 20 s old: let them age (nothing to wait for but time).
    while zombie_since.elapsed() < AGE {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(zombie_children(inc.pid).len(), 6, "the helper reaped early");
    }

    let out = run_tracer(&["zombies", "--json", "-d", "1s"]);
    assert!(out.status.success(), "{}", out.stderr);
    let first = (out.reports_as::<ZombiesReport>().into_iter().next())
        .unwrap_or_else(|| panic!("no report: {}", out.stderr));
    // The zombies cannot be older than the helper that made them.
    let at_most = started.elapsed().as_secs_f64() + 0.5;
    let p = (first.parents.iter().find(|p| p.pid == inc.pid))
        .unwrap_or_else(|| panic!("parent {} not flagged in the first report: {first:?}", inc.pid));
    assert_eq!(p.zombies, 6, "all six stuck at the first look: {p:?}");
    assert_eq!(p.oldest_zombie_age_source, AgeSource::ExitedAt, "{p:?}");
    assert!(p.oldest_zombie_age_exact, "{p:?}");
    let mine: Vec<_> = first.zombies.iter().filter(|z| z.ppid == inc.pid).collect();
    assert_eq!(mine.len(), 6, "{first:?}");
    for z in mine {
        assert_eq!(z.age_source, AgeSource::ExitedAt, "{z:?}");
        assert!(z.stuck, "{z:?}");
        assert!(
            z.age_s >= AGE.as_secs_f64() - 1.0 && z.age_s <= at_most,
            "age {} s, expected {}..{at_most} s: {z:?}",
            z.age_s,
            AGE.as_secs_f64() - 1.0
        );
    }
    assert!(
        first.hints.iter().any(|h| h.starts_with(&format!("{} (incident) holds 6 stuck", inc.pid))),
        "{:?}",
        first.hints
    );

    // triage judges them in a 1 s window: the kernel's ages, not the window, prove them.
    let out = run_tracer(&["triage", "-d", "1s", "--json", "--fail-on", "never"]);
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<TriageReport>();
    let row = (r.leaks.pids.zombie_parents.iter().find(|z| z.ppid == inc.pid))
        .unwrap_or_else(|| panic!("parent {} missing from zombie_parents: {r:?}", inc.pid));
    assert_eq!((row.zombies, row.stuck, row.in_flight), (6, 6, 0), "{row:?}");
    let oldest = row.oldest_age_s.unwrap_or_else(|| panic!("not dated: {row:?}"));
    assert!(oldest >= AGE.as_secs_f64() - 1.0, "{row:?}");
    let subject = inc.pid.to_string();
    let f = (r.findings.iter())
        .find(|f| f.check == "zombies" && f.subject.as_deref() == Some(subject.as_str()))
        .unwrap_or_else(|| panic!("no zombies finding for {}: {r:?}", inc.pid));
    assert_eq!(f.severity, 1, "warn (6 >= 5): {f:?}");
    assert!(f.value.contains("dated by the kernel"), "{f:?}");
}
