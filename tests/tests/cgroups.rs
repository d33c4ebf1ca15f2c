//! `tracer cgroups` against cgroups the tests create and remove for real: memory
//! cgroups kept dying by page cache (v1), cgroup2 cgroups that are freed at once, and
//! empty leftovers. Every cgroup and file is removed by guards, also on failure.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{
    Tracer, assert_none_loaded, require_root, run_tracer, run_tracer_unprivileged,
    run_tracer_without_tracepoints, serial,
};

const MEMORY: &str = "/sys/fs/cgroup/memory";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// A cgroup directory the test made; removed (children first) on drop.
struct Cgroup {
    path: PathBuf,
    removed: bool,
}

impl Cgroup {
    fn create(path: impl Into<PathBuf>) -> Cgroup {
        let path = path.into();
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup {
            path,
            removed: false,
        }
    }

    /// rmdir from this (the test) process.
    fn remove(&mut self) {
        fs::remove_dir(&self.path).unwrap_or_else(|e| panic!("rmdir {}: {e}", self.path.display()));
        self.removed = true;
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.removed || !self.path.exists() {
            return;
        }
        // Children first (a failed test may leave some), then this one; retry briefly
        // while a just-exited task is still leaving it.
        if let Ok(rd) = fs::read_dir(&self.path) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    drop(Cgroup {
                        path: e.path(),
                        removed: false,
                    });
                }
            }
        }
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove test cgroup {}", self.path.display());
    }
}

/// A directory of test files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        TempDir::under(&std::env::temp_dir(), tag)
    }

    fn under(base: &Path, tag: &str) -> TempDir {
        let p = base.join(format!("tracer-test-{tag}-{}", std::process::id()));
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

fn rows_under<'a>(report: &'a Value, list: &str, prefix: &str) -> Vec<&'a Value> {
    report[list]
        .as_array()
        .unwrap_or_else(|| panic!("{list} missing: {report}"))
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .collect()
}

fn hierarchy<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["hierarchies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("hierarchy {name} missing: {report}"))
}

/// Starts `tracer cgroups` on one hierarchy with JSON reports every 200 ms and a
/// --prom-file in `files` that the test polls while the tracer runs.
fn start_live(hierarchy: &str, files: &TempDir) -> (Tracer, PathBuf) {
    let prom = files.0.join("report.prom");
    let tracer = Tracer::start(&[
        "cgroups",
        "--hierarchy",
        hierarchy,
        "--json",
        "-i",
        "200ms",
        "--prom-file",
        prom.to_str().unwrap(),
    ]);
    (tracer, prom)
}

/// Churn: this process made the parent and its K children and removed the K (the
/// parent goes after the tracer stopped); K mkdirs under the parent.
fn assert_churn(r: &Value, hierarchy: &str, rel_parent: &str, k: usize) {
    let me = std::process::id();
    let p = r["churn"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == me)
        .unwrap_or_else(|| panic!("test process not in churn: {r}"));
    assert_eq!(p["mkdirs"], k + 1, "{p}");
    assert_eq!(p["rmdirs"], k, "{p}");
    let pp = r["churn"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == rel_parent)
        .unwrap_or_else(|| panic!("parent path not in churn: {r}"));
    assert_eq!(pp["mkdirs"], k, "{pp}");
    assert_eq!(pp["hierarchy"], hierarchy);
}

#[test]
fn memcgs_pinned_by_page_cache_stay_dying_until_the_cache_is_freed() {
    require_root();
    let _s = serial();
    const K: usize = 3;
    let me = std::process::id();
    let comm = my_comm();
    // The test process's cgroup2 cgroup, as the report names a process's own cgroup.
    let own_cgroup = fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup2 entry in /proc/self/cgroup");
    // The cache files live on tmpfs: their pages are charged to the cgroup that wrote
    // them and freed with the files, and no filesystem metadata block (a directory or
    // bitmap block first touched from inside a test cgroup) can pin one afterwards.
    let files = TempDir::under(Path::new("/dev/shm"), "cgroups-cache");
    let (tracer, prom) = start_live("memory", &files);
    let rel_parent = format!("/tracer-test-{me}");
    let mut parent = Cgroup::create(format!("{MEMORY}{rel_parent}"));
    let mut children: Vec<Cgroup> = (0..K)
        .map(|i| Cgroup::create(parent.path.join(format!("c{i}"))))
        .collect();
    let paths: Vec<String> = (0..K).map(|i| format!("{rel_parent}/c{i}")).collect();
    // Page in sh and head (and their libraries) from here first: pages are charged to
    // the cgroup that reads them first, and a binary first read from inside c0 would
    // pin c0 after the test deletes its files.
    let st = Command::new("sh")
        .arg("-c")
        .arg("head -c 4096 /dev/zero > /dev/null")
        .status()
        .expect("running sh");
    assert!(st.success());
    // In each cgroup a child process writes 8 MiB of page cache to a file of ours,
    // charged to that memory cgroup, and exits (so the cgroup has no task left).
    for (i, cg) in children.iter().enumerate() {
        let file = files.0.join(format!("cache{i}"));
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && head -c 8388608 /dev/zero > {}",
                cg.path.display(),
                file.display()
            ))
            .status()
            .expect("running sh");
        assert!(
            st.success(),
            "the cache writer failed in {}",
            cg.path.display()
        );
    }
    for cg in &mut children {
        cg.remove();
    }
    // The cache keeps them dying: the report lists exactly those K, made and removed
    // by this process.
    wait_prom(
        &prom,
        "the K cgroups listed as dying",
        Duration::from_secs(10),
        |t| {
            paths
                .iter()
                .all(|p| series_with_path(t, "tracer_cgroups_dying_age_s", p) == 1)
        },
    );
    // Freeing the cache (deleting the files) lets the kernel release them.
    for i in 0..K {
        fs::remove_file(files.0.join(format!("cache{i}"))).unwrap();
    }
    wait_prom(
        &prom,
        "release of the K cgroups",
        Duration::from_secs(20),
        |t| {
            paths.iter().all(|p| {
                series_with_path(t, "tracer_cgroups_released_recent_latency_us", p) == 1
                    && series_with_path(t, "tracer_cgroups_dying_age_s", p) == 0
            })
        },
    );
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let reports = out.reports();

    // An interval report from while they were dying.
    let dying_report = reports
        .iter()
        .find(|r| rows_under(r, "dying", &rel_parent).len() == K)
        .unwrap_or_else(|| panic!("no report listed the {K} dying cgroups:\n{}", out.stdout));
    let mut dying: Vec<&Value> = rows_under(dying_report, "dying", &format!("{rel_parent}/"));
    dying.sort_by_key(|d| d["path"].as_str().unwrap().to_string());
    assert_eq!(
        dying
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect::<Vec<_>>(),
        paths,
        "exactly the test's cgroups are dying"
    );
    for d in &dying {
        assert_eq!(d["hierarchy"], "memory", "{d}");
        assert_eq!(d["creator_pid"], me, "{d}");
        assert_eq!(d["remover_pid"], me, "{d}");
        assert_eq!(d["creator_comm"], comm.as_str(), "{d}");
        assert_eq!(d["remover_comm"], comm.as_str(), "{d}");
        assert_eq!(d["creator_cgroup"], own_cgroup.as_str(), "{d}");
        assert!(d["id"].as_u64().unwrap() > 0);
        assert!(d["age_s"].as_f64().unwrap() >= 0.0);
    }
    let by_parent = dying_report["dying_by_parent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["parent"] == rel_parent.as_str())
        .unwrap_or_else(|| panic!("parent not grouped: {dying_report}"));
    assert_eq!(by_parent["dying"], K);
    // The walk counts them too (memory: /proc/cgroups minus visible directories).
    let mem = hierarchy(dying_report, "memory");
    assert!(mem["dying"].as_u64().unwrap() >= K as u64, "{mem}");
    assert!(mem["dying_tracked"].as_u64().unwrap() >= K as u64, "{mem}");
    assert!(mem["dying_growth_per_min"].is_number(), "{mem}");

    let r = out.final_report();
    assert_eq!(r["command"], "cgroups");
    assert_eq!(r["lost_events"], 0);
    assert!(rows_under(&r, "dying", &rel_parent).is_empty(), "{r}");
    let released = rows_under(&r, "released_recent", &format!("{rel_parent}/"));
    assert_eq!(released.len(), K, "{r}");
    for rel in &released {
        assert!(rel["latency_us"].as_u64().unwrap() > 0, "{rel}");
        assert_eq!(rel["creator_pid"], me);
        assert_eq!(rel["remover_pid"], me);
    }
    assert!(r["release_latency_us"]["count"].as_u64().unwrap() >= K as u64);
    let mem = hierarchy(&r, "memory");
    assert!(mem["release_latency_us"]["count"].as_u64().unwrap() >= K as u64);
    assert!(mem["created"].as_u64().unwrap() > K as u64);
    assert!(mem["removed"].as_u64().unwrap() >= K as u64);
    assert!(r["created"].as_u64().unwrap() > K as u64);
    assert!(r["removed"].as_u64().unwrap() >= K as u64);
    assert!(r["released"].as_u64().unwrap() >= K as u64);
    assert_churn(&r, "memory", &rel_parent, K);
    // Each cache writer was moved into its cgroup once (cgroup_attach_task).
    for (i, p) in paths.iter().enumerate() {
        let m = r["moves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                m["path"]
                    .as_str()
                    .is_some_and(|x| x.starts_with(p.as_str()))
            })
            .unwrap_or_else(|| panic!("move into c{i} not counted: {r}"));
        assert_eq!(m["tasks"], 1, "{m}");
        assert_eq!(m["comm"], "sh", "the writer moved itself: {m}");
    }
    assert!(r["memory_stat_read_ms"]["start"].as_f64().is_some());
    assert!(r["memory_stat_read_ms"]["now"].as_f64().is_some());
    parent.remove();
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
    let mut parent = Cgroup::create(format!("{UNIFIED}{rel_parent}"));
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
                .all(|p| series_with_path(t, "tracer_cgroups_released_recent_latency_us", p) == 1)
        },
    );
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_report();
    assert_eq!(r["lost_events"], 0);
    assert_eq!(r["hierarchy_filter"], "cgroup2");
    assert!(
        r["hierarchies"].as_array().unwrap().len() == 1,
        "--hierarchy keeps one: {r}"
    );
    assert!(
        rows_under(&r, "dying", &rel_parent).is_empty(),
        "none dying: {r}"
    );
    let mut released: Vec<&str> = rows_under(&r, "released_recent", &format!("{rel_parent}/"))
        .iter()
        .map(|x| {
            assert!(x["latency_us"].as_u64().unwrap() > 0, "{x}");
            assert_eq!(x["hierarchy"], "cgroup2");
            x["path"].as_str().unwrap()
        })
        .collect();
    released.sort();
    assert_eq!(released, paths);
    let h = hierarchy(&r, "cgroup2");
    assert!(h["created"].as_u64().unwrap() > K as u64, "{h}");
    assert!(h["removed"].as_u64().unwrap() >= K as u64, "{h}");
    assert!(h["released"].as_u64().unwrap() >= K as u64, "{h}");
    assert!(h["release_latency_us"]["count"].as_u64().unwrap() >= K as u64);
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
    let home = Cgroup::create(format!("{UNIFIED}{rel_home}"));
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
        |t| series_with_path(t, "tracer_cgroups_released_recent_latency_us", &made) == 1,
    );
    let r = tracer.interrupt().final_report();
    let rel = rows_under(&r, "released_recent", &made);
    assert_eq!(rel.len(), 1, "{r}");
    let creator = rel[0]["creator_pid"].as_u64().unwrap();
    let remover = rel[0]["remover_pid"].as_u64().unwrap();
    assert!(creator != u64::from(me) && remover != creator, "{r}");
    let procs = r["churn"]["processes"].as_array().unwrap();
    let row = |pid: u64| {
        procs
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not in churn: {r}"))
    };
    let (c, d) = (row(creator), row(remover));
    assert_eq!(
        (c["comm"].as_str(), c["mkdirs"].as_u64()),
        (Some("mkdir"), Some(1))
    );
    assert_eq!(
        (d["comm"].as_str(), d["rmdirs"].as_u64()),
        (Some("rmdir"), Some(1))
    );
    // Gone before their records were read: their cgroup comes from the kernel's
    // cgroup2 id of the caller, named through the walk.
    assert_eq!(c["cgroup"], rel_home.as_str(), "{c}");
    assert_eq!(d["cgroup"], rel_home.as_str(), "{d}");
}

#[test]
fn empty_cgroups_are_listed_as_leftovers_past_min_age() {
    require_root();
    let _s = serial();
    let me = std::process::id();
    let rel_parent = format!("/tracer-test-{me}-empty");
    let parent = Cgroup::create(format!("{UNIFIED}{rel_parent}"));
    let _e0 = Cgroup::create(parent.path.join("e0"));
    let _e1 = Cgroup::create(parent.path.join("e1"));

    let out = run_tracer(&["cgroups", "-d", "500ms", "--json", "--min-age", "0s"]);
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_report();
    let mut empty: Vec<&str> = rows_under(&r, "empty", &rel_parent)
        .iter()
        .map(|e| {
            assert_eq!(e["hierarchy"], "cgroup2", "{e}");
            assert!(e["age_s"].as_f64().unwrap() >= 0.0);
            e["path"].as_str().unwrap()
        })
        .collect();
    empty.sort();
    // The parent has children, so it is not a leftover; its two empty leaves are.
    assert_eq!(
        empty,
        vec![format!("{rel_parent}/e0"), format!("{rel_parent}/e1")],
        "{r}"
    );
    assert!(r["empty_total"].as_u64().unwrap() >= 2);

    // Younger than the default --min-age (10m): not listed.
    let out = run_tracer(&["cgroups", "-d", "500ms", "--json"]);
    let r = out.final_report();
    assert!(rows_under(&r, "empty", &rel_parent).is_empty(), "{r}");
    assert_eq!(r["min_age_s"], 600.0);

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
    let out = run_tracer(&["cgroups", "--hierarchy", "nosuch", "-d", "1s"]);
    out.assert_one_sentence(
        1,
        &[
            "no mounted cgroup hierarchy is named `nosuch`; mounted: ",
            "memory",
            "cgroup2",
        ],
    );

    let out = run_tracer(&["cgroups", "--min-age", "ten"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("not a duration"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));

    let out = run_tracer_unprivileged(&["cgroups", "-d", "1s"]);
    out.assert_one_sentence(1, &["`tracer cgroups` needs root", "CAP_BPF"]);

    // A tracefs without the cgroup tracepoints, as on a kernel that lacks them.
    let out = run_tracer_without_tracepoints(&["cgroups", "-d", "1s"]);
    out.assert_one_sentence(
        1,
        &["tracepoint cgroup:cgroup_mkdir is missing", "tracer doctor"],
    );
    assert_none_loaded("cgroups_");
}
