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
    assert_eq!(
        zombie_children(inc.pid).len(),
        6,
        "the helper made 6 zombies"
    );
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
    let p = (first.parents.iter().find(|p| p.pid == inc.pid)).unwrap_or_else(|| {
        panic!(
            "parent {} not flagged in the first report: {first:?}",
            inc.pid
        )
    });
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
        first
            .hints
            .iter()
            .any(|h| h.starts_with(&format!("{} (incident) holds 6 stuck", inc.pid))),
        "{:?}",
        first.hints
    );

    // triage judges them in a 1 s window: the kernel's ages, not the window, prove them.
    let out = run_tracer(&["triage", "-d", "1s", "--json", "--fail-on", "never"]);
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<TriageReport>();
    let row = (r
        .leaks
        .pids
        .zombie_parents
        .iter()
        .find(|z| z.ppid == inc.pid))
    .unwrap_or_else(|| panic!("parent {} missing from zombie_parents: {r:?}", inc.pid));
    assert_eq!(
        (row.zombies, row.stuck, row.in_flight),
        (6, 6, 0),
        "{row:?}"
    );
    let oldest = row
        .oldest_age_s
        .unwrap_or_else(|| panic!("not dated: {row:?}"));
    assert!(oldest >= AGE.as_secs_f64() - 1.0, "{row:?}");
    let subject = inc.pid.to_string();
    let f = (r.findings.iter())
        .find(|f| f.check == "zombies" && f.subject.as_deref() == Some(subject.as_str()))
        .unwrap_or_else(|| panic!("no zombies finding for {}: {r:?}", inc.pid));
    assert_eq!(f.severity, 1, "warn (6 >= 5): {f:?}");
    assert!(f.value.contains("dated by the kernel"), "{f:?}");
}

/// A cpuset cgroup holding only CPU 0 (v1 cpuset hierarchy, else cgroup2 with cpuset
/// enabled at the root), removed on drop.
struct CpusetOfCpu0 {
    dir: std::path::PathBuf,
    _enabled: Option<tracer_tests::SubtreeControl>,
}

impl CpusetOfCpu0 {
    fn new() -> CpusetOfCpu0 {
        let layout = tracer_tests::CgroupLayout::read();
        let name = format!("tracer-ages-{}", std::process::id());
        let v1 = layout
            .v1
            .iter()
            .find(|(c, _)| c.iter().any(|c| c == "cpuset"));
        let (dir, enabled) = match v1 {
            Some((_, mount)) => (mount.join(&name), None),
            None => {
                let root = layout.unified();
                let on = tracer_tests::SubtreeControl::enable(root, "cpuset");
                (root.join(&name), Some(on))
            }
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let c = CpusetOfCpu0 {
            dir,
            _enabled: enabled,
        };
        for (file, value) in [("cpuset.cpus", "0"), ("cpuset.mems", "0")] {
            let f = c.dir.join(file);
            std::fs::write(&f, value).unwrap_or_else(|e| panic!("writing {}: {e}", f.display()));
        }
        c
    }
}

impl Drop for CpusetOfCpu0 {
    fn drop(&mut self) {
        // The tracer in it has exited (waited for); its pid leaves the cgroup at once.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Sets the calling thread's CPU affinity; returns the previous one.
fn pin_to(cpu: usize) -> nix::sched::CpuSet {
    use nix::{sched, unistd::Pid};
    let before = sched::sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
    let mut set = sched::CpuSet::new();
    set.set(cpu).expect("cpu index");
    sched::sched_setaffinity(Pid::from_raw(0), &set).expect("pinning the test to a CPU");
    before
}

#[test]
fn zombies_the_kernel_cannot_date_for_the_tracer_are_lower_bounds() {
    require_root();
    let _s = serial();
    // The zombies last run on CPU 1 and the tracer may run only on CPU 0 (a cpuset, as
    // in a container): it cannot read CPU 1's clock, so it cannot date them.
    let before = pin_to(1);
    let inc = Incident::start(&["zombies", "3"]);
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &before).expect("unpinning");
    let cpuset = CpusetOfCpu0::new();
    let procs = cpuset.dir.join("cgroup.procs");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1" && exec "$2" zombies --json -d 1s"#)
        .args([
            "sh",
            procs.to_str().unwrap(),
            tracer_tests::tracer_bin().to_str().unwrap(),
        ])
        .output()
        .expect("running the tracer in the cpuset");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: tracer_tests::Envelope<ZombiesReport> =
        serde_json::from_str(stdout.lines().next().expect("a report")).expect("a zombies report");
    let mine: Vec<_> = first.zombies.iter().filter(|z| z.ppid == inc.pid).collect();
    assert_eq!(mine.len(), 3, "{first:?}");
    for z in mine {
        assert_eq!(z.age_source, AgeSource::LowerBound, "{z:?}");
        assert!(!z.age_exact && !z.stuck, "seen for ~1 s only: {z:?}");
        assert!(z.age_s < 5.0, "{z:?}");
    }
    drop(cpuset);
}
