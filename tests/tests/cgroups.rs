//! `tracer cgroups` against cgroups the tests create and remove for real: memory
//! cgroups kept dying by page cache (on cgroup2 where the memory controller is there,
//! on the v1 memory hierarchy where the host binds it to v1), cgroup2 cgroups that are
//! freed at once, and empty leftovers. The hierarchies come from /proc/self/mountinfo
//! (`CgroupLayout`), never from assumed paths. Every cgroup, mount and file is removed
//! by guards, also on failure.
//!
//! Over 600 lines because each test checks the whole report (text, JSON, --prom-file)
//! for what it caused, on v1 and v2 alike. Keeping memcgs dying for real (page cache
//! charged in a test tmpfs, per-CPU caches drained) is the harness' `PinnedMemcgs`,
//! shared with the Prometheus test.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde::Serialize;
use tracer::cgroups::{
    CgroupsReport, Finding,
    rows::{ChurnProcessRow, DyingRow, EmptyRow, HierarchyRow, ReleasedRow},
};
use tracer_tests::{
    Cgroup, CgroupLayout, PinnedMemcgs, SubtreeControl, Tmpfs, Tracer, assert_none_loaded,
    matrix_kernel, require_root, run_tracer, serial, wait_reports,
};

/// A directory of test files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tracer-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// comm of the calling thread: what the kernel records as creator and remover.
fn my_comm() -> String {
    fs::read_to_string("/proc/thread-self/comm")
        .unwrap()
        .trim()
        .to_string()
}

/// Polls the tracer's --prom-file until `pred` holds; panics with the file on timeout.
fn wait_prom(prom: &Path, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(prom).unwrap_or_default();
        if pred(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last --prom-file:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Series lines of `metric` whose labels include path="PATH".
fn series_with_path(text: &str, metric: &str, path: &str) -> usize {
    let label = format!("path=\"{path}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))
        .count()
}

/// A report (or a part of one) as its JSON, for failure messages.
fn show(r: &impl Serialize) -> String {
    serde_json::to_string(r).unwrap()
}

/// A row of a list of cgroups (`dying`, `released_recent`, `empty`).
trait CgroupPath {
    fn path(&self) -> &str;
}

impl CgroupPath for DyingRow {
    fn path(&self) -> &str {
        &self.path
    }
}

impl CgroupPath for ReleasedRow {
    fn path(&self) -> &str {
        &self.path
    }
}

impl CgroupPath for EmptyRow {
    fn path(&self) -> &str {
        &self.path
    }
}

/// The rows of `list` whose path starts with `prefix`.
fn rows_under<'a, R: CgroupPath>(list: &'a [R], prefix: &str) -> Vec<&'a R> {
    list.iter()
        .filter(|r| r.path().starts_with(prefix))
        .collect()
}

/// The path of a finding about one cgroup (past the threshold); None for the others.
fn finding_path(f: &Finding) -> Option<&str> {
    match f {
        Finding::Stuck { path, .. } => Some(path),
        _ => None,
    }
}

fn hierarchy<'a>(report: &'a CgroupsReport, name: &str) -> &'a HierarchyRow {
    (report.hierarchies.iter())
        .find(|h| h.name == name)
        .unwrap_or_else(|| panic!("hierarchy {name} missing: {}", show(report)))
}

/// Starts `tracer cgroups` on one hierarchy with JSON reports every 200 ms and a
/// --prom-file in `files` that the test polls while the tracer runs.
fn start_live(hierarchy: &str, files: &TempDir) -> (Tracer, PathBuf) {
    start_live_with(hierarchy, files, &[])
}

/// [`start_live`] with more options.
fn start_live_with(hierarchy: &str, files: &TempDir, more: &[&str]) -> (Tracer, PathBuf) {
    let prom = files.0.join("report.prom");
    let mut args = vec![
        "cgroups",
        "--hierarchy",
        hierarchy,
        "--json",
        "-i",
        "200ms",
        "--prom-file",
        prom.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    let tracer = Tracer::start(&args);
    (tracer, prom)
}

/// This test process's row in the churn table.
fn my_churn(r: &CgroupsReport) -> &ChurnProcessRow {
    let me = std::process::id();
    (r.churn.processes.iter())
        .find(|p| p.pid == me)
        .unwrap_or_else(|| panic!("test process not in churn: {}", show(r)))
}

/// Churn: this process made the parent and its K children and removed the K (the
/// parent goes after the tracer stopped); K mkdirs under the parent.
fn assert_churn(r: &CgroupsReport, hierarchy: &str, rel_parent: &str, k: usize) {
    let p = my_churn(r);
    assert_eq!(p.mkdirs, k as u64 + 1, "{p:?}");
    assert_eq!(p.rmdirs, k as u64, "{p:?}");
    let pp = (r.churn.parents.iter())
        .find(|p| p.path == rel_parent)
        .unwrap_or_else(|| panic!("parent path not in churn: {}", show(r)));
    assert_eq!(pp.mkdirs, k as u64, "{pp:?}");
    assert_eq!(pp.hierarchy, hierarchy);
}

#[test]
fn memcgs_pinned_by_page_cache_stay_dying_until_the_cache_is_freed() {
    require_root();
    let _s = serial();
    const K: usize = 3;
    let me = std::process::id();
    let comm = my_comm();
    // The hierarchy that has the memory controller on this host: cgroup2 (the VM
    // kernels, every current distribution) or v1 (this project's hybrid CI machine).
    let mem = CgroupLayout::read().memory();
    let how = mem.describe();
    // The test process's cgroup2 cgroup, as the report names a process's own cgroup.
    let own_cgroup = fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup2 entry in /proc/self/cgroup");
    let files = TempDir::new("cgroups-cache");
    // Dying past 3 s is a finding here (30 s by default), so the test need not wait long.
    let (tracer, prom) = start_live_with(
        &mem.name,
        &files,
        &["--dying-age", "3s", "--dying-min", &K.to_string()],
    );
    // K memcgs with 8 MiB of page cache each, removed: made dying by this process
    // (parent and children), the cache and the rest undone by the guard.
    let mut pinned = PinnedMemcgs::new("pinned", 8 << 20);
    let rel_parent = pinned.rel_parent.clone();
    let paths = pinned.make_dying(K);
    // The cache keeps them dying: the report lists exactly those K, made and removed
    // by this process.
    wait_prom(
        &prom,
        &format!("the K cgroups listed as dying ({how})"),
        Duration::from_secs(10),
        |t| {
            paths
                .iter()
                .all(|p| series_with_path(t, "tracer_cgroups_dying_age_seconds", p) == 1)
        },
    );
    // Per-CPU caches emptied: the page cache alone still pins them (two reports later),
    // and past the threshold each is a finding.
    let drained = pinned.drain_per_cpu_caches();
    wait_reports(&prom, 2);
    wait_prom(
        &prom,
        &format!("the K cgroups as findings past 3 s ({how})"),
        Duration::from_secs(15),
        |t| {
            paths
                .iter()
                .all(|p| series_with_path(t, "tracer_cgroups_finding_age_seconds", p) == 1)
        },
    );
    let t = fs::read_to_string(&prom).unwrap();
    for p in &paths {
        assert_eq!(
            series_with_path(&t, "tracer_cgroups_dying_age_seconds", p),
            1,
            "{how}: {p} was released while its page cache existed ({drained}); {}\n{t}",
            pinned.charged()
        );
    }
    // Freeing the cache (deleting the files) lets the kernel release them, once no
    // per-CPU cache holds a reference any more (the guard drains those while waiting).
    pinned.free_and_wait_released(Duration::from_secs(20), || {
        let t = fs::read_to_string(&prom).unwrap_or_default();
        let released = paths.iter().all(|p| {
            series_with_path(&t, "tracer_cgroups_released_latency_seconds", p) == 1
                && series_with_path(&t, "tracer_cgroups_dying_age_seconds", p) == 0
        });
        if released {
            Ok(())
        } else {
            Err(format!("--prom-file:\n{t}"))
        }
    });
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let reports = out.reports_as::<CgroupsReport>();

    // An interval report from while they were dying.
    let dying_report = reports
        .iter()
        .find(|r| rows_under(&r.dying, &rel_parent).len() == K)
        .unwrap_or_else(|| {
            panic!(
                "{how}: no report listed the {K} dying cgroups:\n{}",
                out.stdout
            )
        });
    let mut dying: Vec<&DyingRow> = rows_under(&dying_report.dying, &format!("{rel_parent}/"));
    dying.sort_by_key(|d| d.path.clone());
    assert_eq!(
        dying.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(),
        paths,
        "{how}: exactly the test's cgroups are dying"
    );
    for d in &dying {
        assert_eq!(d.hierarchy, mem.name, "{how}: {d:?}");
        assert_eq!(d.creator_pid, Some(me), "{how}: {d:?}");
        assert_eq!(d.remover_pid, me, "{how}: {d:?}");
        assert_eq!(
            d.creator_comm.as_deref(),
            Some(comm.as_str()),
            "{how}: {d:?}"
        );
        assert_eq!(d.remover_comm, comm, "{how}: {d:?}");
        assert_eq!(
            d.creator_cgroup.as_deref(),
            Some(own_cgroup.as_str()),
            "{how}: {d:?}"
        );
        assert_eq!(d.remover_cgroup, own_cgroup, "{how}: {d:?}");
        assert!(d.id > 0);
        assert!(d.age_s >= 0.0);
    }
    // A report past the threshold names exactly these K as findings, with the hint.
    let past = reports
        .iter()
        .find(|r| {
            (r.findings.iter())
                .filter_map(finding_path)
                .filter(|p| p.starts_with(&format!("{rel_parent}/")))
                .count()
                == K
        })
        .unwrap_or_else(|| panic!("{how}: no report with the {K} findings:\n{}", out.stdout));
    assert_eq!(past.dying_age_s, 3.0);
    assert!(
        (past.hints.iter())
            .any(|h| h.contains("in the memory hierarchy: removed, but still pinned")),
        "{how}: {}",
        show(past)
    );
    let by_parent = (dying_report.dying_by_parent.iter())
        .find(|p| p.parent == rel_parent)
        .unwrap_or_else(|| panic!("{how}: parent not grouped: {}", show(dying_report)));
    assert_eq!(by_parent.dying, K, "{how}");
    // The walk counts them too (v1: /proc/cgroups minus visible directories; cgroup2:
    // nr_dying_descendants), and the hierarchy is the one with the memory controller.
    let h = hierarchy(dying_report, &mem.name);
    assert!(h.dying.is_some_and(|d| d >= K as u64), "{how}: {}", show(h));
    assert!(h.dying_tracked >= K as u64, "{how}: {}", show(h));
    assert!(h.dying_growth_per_min.is_some(), "{how}: {}", show(h));
    assert!(
        h.controllers.iter().any(|c| c == "memory"),
        "{how}: {}",
        show(h)
    );
    if mem.v2 {
        // cgroup.stat of the parent level holds them.
        assert!(
            (dying_report.dying_levels.iter()).any(|l| l.path == rel_parent && l.dying == K as u64),
            "{how}: {}",
            show(dying_report)
        );
    }

    let r = out.final_as::<CgroupsReport>();
    assert_eq!(r.header.command, "cgroups");
    assert_eq!(r.header.lost_events, 0);
    assert!(
        rows_under(&r.dying, &rel_parent).is_empty(),
        "{how}: {}",
        show(&r)
    );
    let released = rows_under(&r.released_recent, &format!("{rel_parent}/"));
    assert_eq!(released.len(), K, "{how}: {}", show(&r));
    for rel in &released {
        assert!(rel.latency_us.is_some_and(|l| l > 0), "{rel:?}");
        assert_eq!(rel.creator_pid, Some(me));
        assert_eq!(rel.remover_pid, Some(me));
    }
    assert!(r.release_latency_us.count >= K as u64);
    let h = hierarchy(&r, &mem.name);
    assert!(h.release_latency_us.count >= K as u64);
    assert!(h.created > K as u64);
    assert!(h.removed >= K as u64);
    assert!(r.created > K as u64);
    assert!(r.removed >= K as u64);
    assert!(r.released >= K as u64);
    assert_churn(&r, &mem.name, &rel_parent, K);
    // Each cache writer was moved into its cgroup once (cgroup_attach_task).
    for (i, p) in paths.iter().enumerate() {
        let m = (r.moves.iter())
            .find(|m| m.path.starts_with(p.as_str()))
            .unwrap_or_else(|| panic!("{how}: move into c{i} not counted: {}", show(&r)));
        assert_eq!(m.tasks, 1, "{m:?}");
        assert_eq!(m.comm, "sh", "the writer moved itself: {m:?}");
    }
    assert!(r.memory_stat_read_ms.start.is_some(), "{how}: {}", show(&r));
    assert!(r.memory_stat_read_ms.now.is_some(), "{how}: {}", show(&r));
    pinned.remove_parent();
    assert_none_loaded("cgroups_");
}

#[test]
fn cgroup2_cgroups_are_released_at_once_and_never_dying() {
    require_root();
    let _s = serial();
    const K: usize = 5;
    let me = std::process::id();
    let files = TempDir::new("cgroups-v2");
    let (tracer, prom) = start_live("cgroup2", &files);
    let rel_parent = format!("/tracer-test-{me}-v2");
    let layout = CgroupLayout::read();
    let mut parent = Cgroup::create(layout.unified().join(&rel_parent[1..]));
    let paths: Vec<String> = (0..K).map(|i| format!("{rel_parent}/c{i}")).collect();
    for i in 0..K {
        let mut cg = Cgroup::create(parent.path.join(format!("c{i}")));
        cg.remove();
    }
    wait_prom(
        &prom,
        "release of the cgroup2 cgroups",
        Duration::from_secs(10),
        |t| {
            paths
                .iter()
                .all(|p| series_with_path(t, "tracer_cgroups_released_latency_seconds", p) == 1)
        },
    );
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<CgroupsReport>();
    assert_eq!(r.header.lost_events, 0);
    assert_eq!(r.hierarchy_filter.as_deref(), Some("cgroup2"));
    assert!(
        r.hierarchies.len() == 1,
        "--hierarchy keeps one: {}",
        show(&r)
    );
    assert!(
        rows_under(&r.dying, &rel_parent).is_empty(),
        "none dying: {}",
        show(&r)
    );
    let mut released: Vec<&str> = rows_under(&r.released_recent, &format!("{rel_parent}/"))
        .iter()
        .map(|x| {
            assert!(x.latency_us.is_some_and(|l| l > 0), "{x:?}");
            assert_eq!(x.hierarchy, "cgroup2");
            x.path.as_str()
        })
        .collect();
    released.sort();
    assert_eq!(released, paths);
    let h = hierarchy(&r, "cgroup2");
    assert!(h.created > K as u64, "{}", show(h));
    assert!(h.removed >= K as u64, "{}", show(h));
    assert!(h.released >= K as u64, "{}", show(h));
    assert!(h.release_latency_us.count >= K as u64);
    assert_churn(&r, "cgroup2", &rel_parent, K);
    parent.remove();
}

#[test]
fn short_lived_creator_is_named_with_its_own_cgroup() {
    require_root();
    let _s = serial();
    let me = std::process::id();
    let files = TempDir::new("cgroups-creator");
    let rel_home = format!("/tracer-test-{me}-home");
    let home = Cgroup::create(CgroupLayout::read().unified().join(&rel_home[1..]));
    let (tracer, prom) = start_live("cgroup2", &files);
    // A shell moves itself into `home`, and mkdir(1)/rmdir(1), its children, make and
    // remove a cgroup there; all of them have exited before any report is built.
    let made = format!("{rel_home}/made");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {0}/cgroup.procs && mkdir {0}/made && rmdir {0}/made",
            home.path.display()
        ))
        .status()
        .expect("running sh");
    assert!(st.success());
    wait_prom(
        &prom,
        "release of the child-made cgroup",
        Duration::from_secs(10),
        |t| series_with_path(t, "tracer_cgroups_released_latency_seconds", &made) == 1,
    );
    let r = tracer.interrupt().final_as::<CgroupsReport>();
    let rel = rows_under(&r.released_recent, &made);
    assert_eq!(rel.len(), 1, "{}", show(&r));
    let creator = rel[0].creator_pid.expect("the creator's pid");
    let remover = rel[0].remover_pid.expect("the remover's pid");
    assert!(creator != me && remover != creator, "{}", show(&r));
    let row = |pid: u32| {
        (r.churn.processes.iter())
            .find(|p| p.pid == pid)
            .unwrap_or_else(|| panic!("pid {pid} not in churn: {}", show(&r)))
    };
    let (c, d) = (row(creator), row(remover));
    assert_eq!((c.comm.as_str(), c.mkdirs), ("mkdir", 1));
    assert_eq!((d.comm.as_str(), d.rmdirs), ("rmdir", 1));
    // Gone before their records were read: their cgroup comes from the kernel's
    // cgroup2 id of the caller, named through the walk.
    assert_eq!(c.cgroup.cgroup, rel_home, "{c:?}");
    assert_eq!(d.cgroup.cgroup, rel_home, "{d:?}");
}

#[test]
fn empty_cgroups_are_listed_as_leftovers_past_min_age() {
    require_root();
    let _s = serial();
    let me = std::process::id();
    let rel_parent = format!("/tracer-test-{me}-empty");
    let parent = Cgroup::create(CgroupLayout::read().unified().join(&rel_parent[1..]));
    let _e0 = Cgroup::create(parent.path.join("e0"));
    let _e1 = Cgroup::create(parent.path.join("e1"));

    let out = run_tracer(&["cgroups", "-d", "500ms", "--json", "--min-age", "0s"]);
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<CgroupsReport>();
    let mut empty: Vec<&str> = rows_under(&r.empty, &rel_parent)
        .iter()
        .map(|e| {
            assert_eq!(e.hierarchy, "cgroup2", "{e:?}");
            assert!(e.age_s >= 0.0);
            e.path.as_str()
        })
        .collect();
    empty.sort();
    // The parent has children, so it is not a leftover; its two empty leaves are.
    assert_eq!(
        empty,
        vec![format!("{rel_parent}/e0"), format!("{rel_parent}/e1")],
        "{}",
        show(&r)
    );
    assert!(r.empty_total >= 2);

    // Younger than the default --min-age (10m): not listed.
    let out = run_tracer(&["cgroups", "-d", "500ms", "--json"]);
    let r = out.final_as::<CgroupsReport>();
    assert!(rows_under(&r.empty, &rel_parent).is_empty(), "{}", show(&r));
    assert_eq!(r.min_age_s, 600.0);

    // The text report names them and says what to do.
    let out = run_tracer(&["cgroups", "-d", "500ms", "--min-age", "0s", "--top", "1000"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("EMPTY LEFTOVERS")
            && out.stdout.contains(&format!("{rel_parent}/e0"))
            && out.stdout.contains("leak candidates")
            && out.stdout.contains("HIERARCHIES")
            && out.stdout.contains("lost events: 0"),
        "{}",
        out.stdout
    );
    assert_none_loaded("cgroups_");
}

#[test]
fn bad_input_gets_one_clear_sentence_and_nonzero_exit() {
    require_root();
    let _s = serial();
    let mem = CgroupLayout::read().memory();
    let out = run_tracer(&["cgroups", "--hierarchy", "nosuch", "-d", "1s"]);
    out.assert_one_sentence(
        1,
        &[
            "no mounted cgroup hierarchy is named `nosuch`; mounted: ",
            &mem.name,
            "cgroup2",
        ],
    );
    if mem.v2 {
        // A v1 name on a cgroup2 host: the sentence says where memory is.
        let out = run_tracer(&["cgroups", "--hierarchy", "memory", "-d", "1s"]);
        out.assert_one_sentence(
            1,
            &[
                "no mounted cgroup hierarchy is named `memory`: the memory controller is on cgroup2 here",
                "use `--hierarchy cgroup2`",
            ],
        );
    }

    let out = run_tracer(&["cgroups", "--min-age", "ten"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("not a duration"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));

    // Privileges and a kernel without the cgroup tracepoints: tests/contract.rs.
}

/// A healthy busy host: scopes created, used and removed the way systemd and container
/// runtimes do, one after another on the memory hierarchy. In each, a process moves
/// itself in, writes and reads back 1 MiB of page cache (a tmpfs file, the container's
/// writable layer), and exits; the file goes with the scope, and the scope is removed.
/// The kernel frees each one within moments. The scopes keep coming while the tracer
/// runs past the default thresholds (dying 30 s, growth over >= 30 s), so a cgroup
/// that stayed dying or a growing pile would be found.
#[test]
fn healthy_busy_scopes_created_used_and_removed_are_no_finding() {
    require_root();
    let _s = serial();
    let me = std::process::id();
    let mem = CgroupLayout::read().memory();
    let how = mem.describe();
    let cache = Tmpfs::new("cgroups-healthy", "size=64m");
    let mut tracer = Tracer::start(&["cgroups", "--hierarchy", &mem.name, "--json", "-i", "1s"]);
    let rel_parent = format!("/tracer-test-{me}-healthy");
    let _root_ctl = mem.v2.then(|| SubtreeControl::enable(&mem.mount, "memory"));
    let parent = Cgroup::create(mem.mount.join(&rel_parent[1..]));
    let _parent_ctl = mem
        .v2
        .then(|| SubtreeControl::enable(&parent.path, "memory"));
    // sh, head and cat paged in from here, not charged to the first scope.
    let st = Command::new("sh")
        .arg("-c")
        .arg("head -c 4096 /dev/zero | cat > /dev/null")
        .status()
        .expect("running sh");
    assert!(st.success());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        let parent = parent.path.clone();
        let file = cache.dir.join("layer");
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut cg = Cgroup::create(parent.join(format!("run-u{n}.scope")));
                let st = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "echo $$ > {}/cgroup.procs && head -c 1048576 /dev/zero > {f} && cat {f} > /dev/null",
                        cg.path.display(),
                        f = file.display()
                    ))
                    .status()
                    .expect("running sh");
                assert!(st.success(), "the scope's process failed");
                fs::remove_file(&file).unwrap();
                cg.remove();
                n += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            n
        })
    };
    // Past both thresholds: the dying count's trend is judged.
    tracer.report_as_where::<CgroupsReport>(Duration::from_secs(150), |r| {
        r.header.elapsed_s >= 40.0 && hierarchy(r, &mem.name).dying_trend.state != "too_few_samples"
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = worker.join().expect("the scope worker");
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let reports = out.reports_as::<CgroupsReport>();
    let mine = |p: Option<&str>| p.is_some_and(|p| p.starts_with(&rel_parent));
    for r in &reports {
        let findings = &r.findings;
        // Nothing about the test's scopes, ever.
        assert!(
            findings.iter().all(|f| !mine(finding_path(f))),
            "{how}: a scope of the healthy workload is a finding: {}",
            show(r)
        );
        assert!(
            !hierarchy(r, &mem.name).dying_trend.growing,
            "{how}: {}",
            show(r)
        );
        if matrix_kernel() == "host" {
            // This machine's command runner leaves memcgs of its own dying under
            // /process_api (v1: /proc/cgroups counts 5 more memory cgroups than there are
            // directories, before any test): those are the host's, and may be findings.
            assert!(
                (findings.iter().filter_map(finding_path)).all(|p| !p.starts_with("/tracer-test-")),
                "{how}: {}",
                show(r)
            );
        } else {
            // The VM runs nothing else: no finding and no hint at all.
            assert!(findings.is_empty(), "{how}: {}", show(r));
            assert!(r.hints.is_empty(), "{how}: {}", show(r));
        }
        assert!(rows_under(&r.empty, &rel_parent).is_empty(), "{}", show(r));
        assert!(!r.memory_stat_read_ms.slow, "{how}: {}", show(r));
    }
    let judged = reports
        .iter()
        .filter(|r| hierarchy(r, &mem.name).dying_trend.state == "no_sustained_growth")
        .count();
    assert!(
        judged >= 1,
        "{how}: the trend was never judged:\n{}",
        out.stdout
    );
    // The workload happened and was seen: every scope made and removed by this process,
    // each released by the kernel or still in flight (younger than the threshold).
    assert!(n >= 20, "{how}: only {n} scopes in 40 s");
    // The report keeps the latest 256 releases: room for all of them.
    assert!(
        n <= 200,
        "{how}: {n} scopes, more than the release list holds"
    );
    let r = out.final_as::<CgroupsReport>();
    let p = my_churn(&r);
    assert_eq!(p.mkdirs, n as u64 + 1, "{how}: {p:?}");
    assert_eq!(p.rmdirs, n as u64, "{how}: {p:?}");
    let released = rows_under(&r.released_recent, &format!("{rel_parent}/")).len();
    let dying = rows_under(&r.dying, &format!("{rel_parent}/"));
    // A scope that is first to fault in a page evicted meanwhile (a binary's, a
    // library's: this host's DAMON reclaim evicts cold page cache) keeps it charged
    // until reclaim and stays dying: a few such are normal and no finding (fewer than
    // --dying-min, 10), which the reports above checked.
    let stuck: Vec<&&DyingRow> = dying.iter().filter(|d| d.age_s >= 30.0).collect();
    assert!(stuck.len() < 10, "{how}: {stuck:?}");
    assert_eq!(
        released + dying.len(),
        n,
        "{how}: every scope released or in flight: {}",
        show(&r)
    );
    assert!(
        released >= n / 2,
        "{how}: {released} of {n} released: {}",
        show(&r)
    );
    drop(parent);
}
