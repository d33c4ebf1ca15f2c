//! `tracer zombies`' PID budgets and fork refusals (issue 22: Uber inside containers),
//! caused for real in a pids cgroup each test makes: on this project's hybrid host the
//! pids controller is the v1 hierarchy at /sys/fs/cgroup/pids; in the 6.1 and 6.12 VMs
//! it is cgroup2's, enabled in the root's cgroup.subtree_control by the test.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

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
    _v1_mount: Option<V1Mount>,
}

impl PidsCgroup {
    fn new(tag: &str, max: u64) -> PidsCgroup {
        let layout = CgroupLayout::read();
        let mut v1_mount = None;
        let (mount, v2) = match layout
            .v1
            .iter()
            .find(|(c, _)| c.iter().any(|c| c == "pids"))
        {
            Some((_, m)) => (m.clone(), false),
            None if wait_pids_on_cgroup2(&layout) => (layout.unified().to_path_buf(), true),
            // The v1-only test's hierarchy still holds the controller (the kernel frees
            // an unmounted v1 hierarchy in its own time): mount it and use it.
            None => {
                let m = V1Mount::new();
                let p = m.0.clone();
                v1_mount = Some(m);
                (p, false)
            }
        };
        if v2 {
            assert!(wait_pids_on_cgroup2(&layout));
        }
        let root_ctl = v2.then(|| SubtreeControl::enable(&mount, "pids"));
        let rel = format!("/tracer-test-{}-{tag}", std::process::id());
        let cg = Cgroup::create(mount.join(&rel[1..]));
        std::fs::write(cg.path.join("pids.max"), max.to_string()).expect("setting pids.max");
        PidsCgroup {
            rel,
            v2,
            cg,
            _root_ctl: root_ctl,
            _v1_mount: v1_mount,
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
    // The kernel dates the zombies (se.exec_start): a start slower than 5 s (a loaded
    // VM) would make them stuck by the default rule; the point here is a finding
    // whatever their age, so the rule is set far beyond the test's length.
    let out = run_tracer(&["zombies", "-d", "2s", "--json", "--stuck-after", "10m"]);
    assert!(out.status.success(), "{}", out.stderr);
    let reports = out.reports_as::<ZombiesReport>();
    assert_eq!(reports.len(), 1, "one report: {}", out.stdout);
    let r = &reports[0];
    // The zombies are not stuck by the rule...
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
        line.contains(&format!(
            "pid {} (incident_pids) 1 thread(s), 50 zombie child(ren)",
            inc.pid
        )),
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
            r.fork_refusals
                .hook
                .starts_with("syscalls:sys_exit_{clone,clone3,fork,vfork}"),
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

/// On cgroup2, waits (10 s at most) until the root offers pids: right after the v1-only
/// test's hierarchy went away, the kernel may still be handing the controller back.
fn wait_pids_on_cgroup2(layout: &CgroupLayout) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !layout.unified_controllers().iter().any(|c| c == "pids") {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The v1 pids hierarchy mounted by a test at a directory of its own (where cgroup2
/// does not offer pids because a v1 hierarchy still holds it); unmounted on drop.
struct V1Mount(PathBuf);

impl V1Mount {
    fn new() -> V1Mount {
        let dir = std::env::temp_dir().join(format!("tracer-test-pids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "cgroup",
                "-o",
                "pids",
                "cgroup",
                dir.to_str().unwrap(),
            ])
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "no pids controller: no v1 hierarchy has it, cgroup2 does not offer it, and a v1 mount failed"
        );
        V1Mount(dir)
    }
}

impl Drop for V1Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A mount namespace of the test's own (held by a `sleep` made with `unshare -m`),
/// where commands run through `nsenter`: the host's cgroup mounts are unmounted there
/// and a cgroup v1 pids hierarchy is mounted at a path of the test's, as on a v1-only
/// host. Drop removes the cgroups made in it, then ends the namespace.
struct V1OnlyNs {
    holder: Child,
    /// The v1 pids hierarchy's mount point (also a directory outside the namespace).
    mount: PathBuf,
    cgroups: Vec<PathBuf>,
}

impl V1OnlyNs {
    fn new() -> V1OnlyNs {
        let holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "1000"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)");
        let mount = std::env::temp_dir().join(format!("tracer-test-v1-{}", std::process::id()));
        std::fs::create_dir_all(&mount).unwrap();
        let ns = V1OnlyNs {
            holder,
            mount,
            cgroups: Vec::new(),
        };
        // unshare has made the namespace when its child runs sleep in it.
        let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{}/ns/mnt", ns.holder.id())).ok()
            == Some(ours.clone())
            || std::fs::read_to_string(format!("/proc/{}/comm", ns.holder.id()))
                .is_ok_and(|c| c.trim() != "sleep")
        {
            assert!(
                Instant::now() < deadline,
                "unshare -m did not make a namespace"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ns.run("umount", &["-R", "/sys/fs/cgroup"]);
        // The pids controller may still be on its way back from cgroup2 (another test
        // enabled it there): the mount fails with EBUSY until then.
        let m = ns.mount.to_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns.try_run("mount", &["-t", "cgroup", "-o", "pids", "cgroup", &m]) {
            assert!(
                Instant::now() < deadline,
                "mounting a v1 pids hierarchy at {m} failed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ns
    }

    fn command(&self, cmd: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-m", "--", cmd])
            .args(args);
        c
    }

    fn try_run(&self, cmd: &str, args: &[&str]) -> bool {
        self.command(cmd, args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn run(&self, cmd: &str, args: &[&str]) {
        assert!(
            self.try_run(cmd, args),
            "{cmd} {args:?} in the namespace failed"
        );
    }

    /// A child cgroup of the v1 hierarchy with its pids.max.
    fn cgroup(&mut self, name: &str, max: u64) -> String {
        let dir = self.mount.join(name);
        let d = dir.to_str().unwrap().to_string();
        self.run("mkdir", &[&d]);
        self.cgroups.push(dir);
        self.run("sh", &["-c", &format!("echo {max} > {d}/pids.max")]);
        d
    }
}

impl Drop for V1OnlyNs {
    fn drop(&mut self) {
        let cgroups = std::mem::take(&mut self.cgroups);
        for d in cgroups.into_iter().rev() {
            let d = d.to_str().unwrap().to_string();
            for _ in 0..50 {
                if self.try_run("rmdir", &[&d]) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let m = self.mount.to_str().unwrap().to_string();
        let _ = self.try_run("umount", &[&m]);
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

#[test]
fn on_a_v1_only_host_the_pids_hierarchy_is_found_from_mountinfo() {
    require_root();
    let _s = serial();
    let mut ns = V1OnlyNs::new();
    let rel = format!("/tracer-test-{}-v1", std::process::id());
    let dir = ns.cgroup(&rel[1..], 60);
    let bin = incident_pids();
    let inc = Incident::start_bin(
        std::path::Path::new("/usr/bin/nsenter"),
        &[
            "-t",
            &ns.holder.id().to_string(),
            "-m",
            "--",
            bin.to_str().unwrap(),
            "zombies",
            &dir,
            "50",
        ],
    );
    let tracer = tracer_tests::tracer_bin();
    let out = ns
        .command(tracer.to_str().unwrap(), &["zombies", "-d", "2s", "--json"])
        .output()
        .expect("running the tracer in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a report");
    let r: Report = tracer_tests::typed(&serde_json::from_str(line).unwrap());
    assert_eq!(
        r.pid_budget_scan.hierarchy.as_deref(),
        Some(format!("cgroup v1 pids hierarchy at {}", ns.mount.display()).as_str()),
        "{r:?}"
    );
    let b = budget(&r, &rel).unwrap_or_else(|| panic!("no row for {rel}: {r:?}"));
    assert_eq!(
        (b.pids_current, b.pids_max, b.level),
        (51, Some(60), Level::Warn),
        "{b:?}"
    );
    assert_eq!(b.holders[0].pid, inc.pid, "{b:?}");
    assert_eq!(b.holders[0].zombie_children, 50, "{b:?}");
    drop(inc);
}
