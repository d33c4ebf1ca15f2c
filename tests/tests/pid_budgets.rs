//! `tracer zombies`' PID budgets and fork refusals (issue 22: Uber inside containers),
//! caused for real in a pids cgroup each test makes: on this project's hybrid host the
//! pids controller is the v1 hierarchy at /sys/fs/cgroup/pids; in the 6.1 and 6.12 VMs
//! it is cgroup2's, enabled in the root's cgroup.subtree_control by the test.
use std::{path::PathBuf, time::Duration};

use tracer::{
    snapshot::Level,
    zombies::{
        ZombiesReport,
        budgets::PidBudgetRow,
        refusals::{Reason, RefusalRow},
    },
};
use tracer_tests::{
    Cgroup, CgroupLayout, Envelope, Incident, SubtreeControl, Tracer, helper_bin, require_root,
    run_tracer, serial,
};

type Report = Envelope<ZombiesReport>;

/// A pids cgroup of the test's own, with its pids.max; removed on drop (after the
/// processes in it, which the test's guards end first).
struct PidsCgroup {
    /// As the tracer names it: relative to the hierarchy's root.
    rel: String,
    v2: bool,
    // Dropped in this order: the cgroup, then the controller the test enabled.
    cg: Cgroup,
    _root_ctl: Option<SubtreeControl>,
}

impl PidsCgroup {
    fn new(tag: &str, max: u64) -> PidsCgroup {
        let layout = CgroupLayout::read();
        let (mount, v2) = match layout.v1.iter().find(|(c, _)| c.iter().any(|c| c == "pids")) {
            Some((_, m)) => (m.clone(), false),
            None => {
                assert!(
                    layout.unified_controllers().iter().any(|c| c == "pids"),
                    "no pids controller: no v1 hierarchy has it and cgroup2 does not offer it"
                );
                (layout.unified().to_path_buf(), true)
            }
        };
        let root_ctl = v2.then(|| SubtreeControl::enable(&mount, "pids"));
        let rel = format!("/tracer-test-{}-{tag}", std::process::id());
        let cg = Cgroup::create(mount.join(&rel[1..]));
        std::fs::write(cg.path.join("pids.max"), max.to_string()).expect("setting pids.max");
        PidsCgroup {
            rel,
            v2,
            cg,
            _root_ctl: root_ctl,
        }
    }

    fn dir(&self) -> &str {
        self.cg.path.to_str().unwrap()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.cg.path.join(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"))
    }

    fn current(&self) -> u64 {
        self.read("pids.current").trim().parse().unwrap()
    }

    fn describe(&self) -> String {
        format!(
            "{} pids cgroup {}",
            if self.v2 { "cgroup2" } else { "cgroup v1" },
            self.cg.path.display()
        )
    }
}

fn budget<'a>(r: &'a Report, rel: &str) -> Option<&'a PidBudgetRow> {
    r.pid_budgets.iter().find(|b| b.cgroup.cgroup == rel)
}

fn refused<'a>(r: &'a Report, pid: u32) -> Option<&'a RefusalRow> {
    r.fork_refusals.processes.iter().find(|p| p.pid == pid)
}

fn incident_pids() -> PathBuf {
    helper_bin("incident_pids")
}

#[test]
fn a_pids_cgroup_near_its_max_with_young_zombies_is_a_finding_in_the_first_report() {
    require_root();
    let _s = serial();
    let cg = PidsCgroup::new("near", 60);
    // The parent and its 50 zombies: 51 of 60 pids (85 %), the zombies just made.
    let inc = Incident::start_bin(&incident_pids(), &["zombies", cg.dir(), "50"]);
    assert_eq!(cg.current(), 51, "{}", cg.describe());
    let out = run_tracer(&["zombies", "-d", "2s", "--json"]);
    assert!(out.status.success(), "{}", out.stderr);
    let reports = out.reports_as::<ZombiesReport>();
    assert_eq!(reports.len(), 1, "one report: {}", out.stdout);
    let r = &reports[0];
    // The zombies are young: not stuck by the 5 s rule...
    assert!(
        r.parents.iter().all(|p| p.pid != inc.pid || p.zombies == 0),
        "{r:?}"
    );
    // ...but the cgroup is nearly full: a finding at once, naming what holds its pids.
    let b = budget(r, &cg.rel).unwrap_or_else(|| panic!("{}: no row: {r:?}", cg.describe()));
    assert_eq!(b.level, Level::Warn, "{b:?}");
    assert_eq!((b.pids_current, b.pids_max), (51, Some(60)), "{b:?}");
    assert_eq!(b.used_pct, Some(85.0), "{b:?}");
    assert_eq!(b.zombies, 50, "{b:?}");
    assert_eq!(b.threads, 1, "{b:?}");
    assert_eq!(b.refused_events_max, Some(0), "{b:?}");
    assert_eq!(b.refused_hook, Some(0), "{b:?}");
    let h = &b.holders[0];
    assert_eq!(
        (h.pid, h.comm.as_str(), h.threads, h.zombie_children),
        (inc.pid, "incident_pids", 1, 50),
        "{b:?}"
    );
    assert!(r.pid_budget_scan.hierarchy.is_some(), "{r:?}");
    // The text says it too, with the cgroup and the parent.
    let out = run_tracer(&["zombies", "-d", "1s"]);
    assert!(out.status.success(), "{}", out.stderr);
    let line = (out.stdout.lines())
        .find(|l| l.starts_with("finding: warn: pids cgroup ") && l.contains(&cg.rel))
        .unwrap_or_else(|| panic!("no finding line:\n{}", out.stdout));
    assert!(line.contains("at 51/60 pids (85% of pids.max)"), "{line}");
    assert!(
        line.contains(&format!("pid {} (incident_pids) 1 thread(s), 50 zombie child(ren)", inc.pid)),
        "{line}"
    );
    drop(inc);
}

#[test]
fn twenty_forks_refused_at_pids_max_are_counted_by_the_hook_and_pids_events() {
    require_root();
    let _s = serial();
    // pids.max 1: the helper alone fills it, so each of its forks is refused.
    let cg = PidsCgroup::new("refuse", 1);
    let mut inc = Incident::start_bin(&incident_pids(), &["refuse", cg.dir(), "20"]);
    assert_eq!(cg.current(), 1, "{}", cg.describe());
    let mut tracer = Tracer::start(&["zombies", "--json", "-i", "500ms"]);
    inc.send("go");
    let done = inc.expect_line("done");
    assert_eq!(done.trim(), "done 20 0", "every fork refused with EAGAIN");
    let r = tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        refused(r, inc.pid).is_some_and(|p| p.refused >= 20)
    });
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let f = out.final_as::<ZombiesReport>();
    for r in [&r, &f] {
        // From the hook: the process, its cgroup, the syscalls and the reason.
        let p = refused(r, inc.pid).unwrap();
        assert_eq!(p.refused, 20, "{p:?}");
        assert_eq!(p.comm, "incident_pids");
        let s = &p.by_syscall;
        assert_eq!((s.clone, s.clone3, s.fork, s.vfork), (5, 5, 5, 5), "{p:?}");
        assert_eq!(p.cgroup.cgroup, cg.rel, "{p:?}");
        assert_eq!(p.reason, Reason::PidsMax, "{p:?}");
        assert_eq!(p.limit_cgroup.as_deref(), Some(cg.rel.as_str()), "{p:?}");
        assert!(r.fork_refusals.total.unwrap() >= 20, "{r:?}");
        assert!(
            r.fork_refusals.hook.starts_with("syscalls:sys_exit_{clone,clone3,fork,vfork}"),
            "{r:?}"
        );
        // From pids.events `max` (every kernel of the matrix has it), and the level.
        let b = budget(r, &cg.rel).unwrap_or_else(|| panic!("{}: no row: {r:?}", cg.describe()));
        assert_eq!(b.refused_events_max, Some(20), "{b:?}");
        assert_eq!(b.refused_events_max_total, Some(20), "{b:?}");
        assert_eq!(b.refused_hook, Some(20), "{b:?}");
        assert_eq!((b.pids_current, b.pids_max), (1, Some(1)), "{b:?}");
        assert_eq!(b.level, Level::Crit, "{b:?}");
    }
    assert_eq!(r.header.lost_events, 0);
    drop(inc);
}

#[test]
fn healthy_busy_pids_cgroup_far_from_its_max_is_no_finding() {
    require_root();
    let _s = serial();
    let cg = PidsCgroup::new("healthy", 200);
    let mut tracer = Tracer::start(&["zombies", "--json", "-i", "500ms"]);
    // A shell in the cgroup running 300 short commands, one at a time (a few pids of 200).
    let script = format!(
        "echo $$ > {}/cgroup.procs && i=0; while [ $i -lt 300 ]; do ( : ); i=$((i+1)); done",
        cg.dir()
    );
    let st = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("sh");
    assert!(st.success());
    let end = tracer
        .report_as_where::<ZombiesReport>(Duration::from_secs(60), |_| true)
        .header
        .elapsed_s;
    tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        r.header.elapsed_s >= end + 1.0
    });
    let out = tracer.interrupt();
    let events: u64 = cg
        .read("pids.events")
        .lines()
        .find_map(|l| l.strip_prefix("max ").and_then(|v| v.trim().parse().ok()))
        .unwrap();
    assert_eq!(events, 0, "no fork was refused in {}", cg.describe());
    for r in out.reports_as::<ZombiesReport>() {
        let b = budget(&r, &cg.rel).unwrap_or_else(|| panic!("no row: {r:?}"));
        assert_eq!(b.level, Level::Ok, "{b:?}");
        assert_eq!(b.pids_max, Some(200));
        assert_eq!(b.refused_events_max, Some(0), "{b:?}");
        assert_eq!(b.refused_hook, Some(0), "{b:?}");
        assert!(
            (r.fork_refusals.processes.iter()).all(|p| p.cgroup.cgroup != cg.rel),
            "{r:?}"
        );
    }
}
