//! `tracer inodes`' census: where the inodes of a filesystem are when the writer that
//! filled it is long gone (nothing creates files while the tracer runs), whose they
//! are (a kubelet-shaped tree names its pod), and what it could not read (a directory
//! removed during the walk, a corrupt one) as skipped lines while the rest is counted.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde::Serialize;
use tracer::{
    inodes::{
        InodesReport,
        census::{Census, CensusDirRow, Owner, SkipReason, SkippedRow, Trigger},
    },
    snapshot::Level,
};
use tracer_tests::{LoopExt4, Tmpfs, Tracer, require_root, run_tracer, serial, sh};

fn js(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap()
}

/// The census of `mount` in the report.
fn census_of<'a>(r: &'a InodesReport, mount: &Path) -> &'a Census {
    (r.census.iter().flatten())
        .find(|c| c.mount == mount)
        .unwrap_or_else(|| panic!("no census of {}: {}", mount.display(), js(r)))
}

/// The census's one skipped line, which must be `path` for `reason`.
fn only_skipped<'a>(c: &'a Census, path: &Path, reason: SkipReason) -> &'a SkippedRow {
    assert_eq!(c.skipped_count, 1, "{}", js(c));
    let s = &c.skipped[0];
    assert_eq!((s.path.as_path(), s.reason), (path, reason), "{}", js(c));
    s
}

fn row<'a>(c: &'a Census, path: &Path) -> &'a CensusDirRow {
    (c.top_directories.iter())
        .find(|d| d.path == path)
        .unwrap_or_else(|| {
            panic!(
                "{} not among the census' directories: {}",
                path.display(),
                js(c)
            )
        })
}

/// Runs `sh -c SCRIPT` in a child process and waits for it to exit.
fn writer(script: &str) {
    let st = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(st.success(), "the writer failed: {script}");
}

#[test]
fn a_full_ext4_filled_before_the_start_is_attributed_by_the_census() {
    require_root();
    let _s = serial();
    let fs = LoopExt4::new(16, 256);
    let (hot, other) = (
        fs.mnt.join("data/cache/sessions"),
        fs.mnt.join("data/other"),
    );
    std::fs::create_dir_all(&hot).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    // The writer fills every inode (9 files of 10 in sessions), dates its files 10 days
    // back, and exits before the tracer starts.
    writer(&format!(
        "i=0; while :; do d={h}; [ $((i % 10)) -eq 9 ] && d={o}; touch $d/f$i 2>/dev/null || break; \
         i=$((i+1)); done; touch -d '10 days ago' {h}/* {o}/*",
        h = hot.display(),
        o = other.display()
    ));
    let n_hot = std::fs::read_dir(&hot).unwrap().count() as u64;
    let n_other = std::fs::read_dir(&other).unwrap().count() as u64;
    assert!(n_hot > 8 * n_other, "{n_hot} vs {n_other}");
    assert_eq!(fs.inodes_used(), 256, "the writer filled the filesystem");

    let out = run_tracer(&["inodes", "--fs", fs.mnt(), "--json", "-d", "2s"]);
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<InodesReport>();
    assert!(
        r.top_directories.is_empty(),
        "nothing was created while tracing: {}",
        js(&*r)
    );
    let c = census_of(&r, &fs.mnt);
    assert_eq!(
        (c.trigger, c.level),
        (Trigger::Level, Level::Crit),
        "{}",
        js(c)
    );
    assert!(!c.partial && c.skipped.is_empty(), "{}", js(c));
    assert_eq!(c.fs_inodes_used, 256);
    // Every inode but the reserved ones (1-10) and lost+found's is under the mount.
    assert_eq!(c.top_directories[0].path, fs.mnt);
    assert_eq!(c.inodes_counted, 1 + 1 + 4 + n_hot + n_other, "{}", js(c));
    let h = c.hot().unwrap();
    assert_eq!(h.path, hot, "the hot directory: {}", js(c));
    assert_eq!((h.own_entries, h.subtree_inodes), (n_hot, n_hot + 1));
    assert_eq!(h.ages.older, n_hot, "all older than a week: {}", js(h));
    assert_eq!(h.uid, Some(0));
    assert_eq!(h.user.as_deref(), Some("root"));
    assert_eq!(h.user_pct, 100.0);
    let o = row(c, &other);
    assert_eq!((o.own_entries, o.ages.older), (n_other, n_other));
    // The hint names the directory, its share and its age.
    let hint = &r.hints[0];
    let share = (100.0 * (n_hot + 1) as f64 / 256.0).round();
    assert!(
        hint.starts_with(&format!(
            "{} holds {share}% of the inodes of {}, 100% older than a week: `ionice -c3 find {} -xdev -type f -mtime +7 -delete`",
            hot.display(),
            fs.mnt(),
            hot.display()
        )),
        "{hint}"
    );
}

#[test]
fn a_census_below_warn_runs_only_when_asked_and_a_kubelet_tree_names_its_pod() {
    require_root();
    let _s = serial();
    let t = Tmpfs::new("census-kubelet", "size=64m,nr_inodes=100000");
    let uid = "0f3c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6";
    let vol = t.dir.join(format!(
        "var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/cache"
    ));
    let logs = t.dir.join(format!("var/log/pods/shop_cart-7d9f_{uid}/app"));
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    writer(&format!(
        "for i in $(seq 300); do : > {v}/s$i; done; for i in $(seq 40); do : > {l}/$i.log; done",
        v = vol.display(),
        l = logs.display()
    ));
    // Below WARN and not asked for: no census, and it says why.
    let out = run_tracer(&[
        "inodes",
        "--fs",
        t.dir.to_str().unwrap(),
        "--json",
        "-d",
        "1s",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<InodesReport>();
    assert_eq!(r.filesystems[0].level, Level::Ok);
    assert_eq!(r.census, None);
    assert_eq!(
        r.census_why_none.as_deref(),
        Some("no filesystem reached WARN and none was asked for (--census PATH)")
    );
    assert!(r.hints.is_empty(), "{:?}", r.hints);

    let out = run_tracer(&[
        "inodes",
        "--census",
        t.dir.to_str().unwrap(),
        "--json",
        "-d",
        "1s",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<InodesReport>();
    let c = census_of(&r, &t.dir);
    assert_eq!(c.trigger, Trigger::Requested);
    let v = row(c, &vol);
    assert_eq!((v.own_entries, v.ages.under_hour), (300, 300), "{}", js(v));
    assert_eq!(
        v.owner,
        Some(Owner::PodVolume {
            pod_uid: uid.into(),
            namespace: Some("shop".into()),
            pod: Some("cart-7d9f".into()),
            plugin: Some("kubernetes.io~empty-dir".into()),
            volume: Some("cache".into()),
        }),
        "{}",
        js(v)
    );
    let l = row(c, &logs);
    assert_eq!(l.own_entries, 40);
    assert_eq!(
        l.owner,
        Some(Owner::PodLogs {
            namespace: "shop".into(),
            pod: "cart-7d9f".into(),
            pod_uid: uid.into(),
        })
    );
    assert!(
        r.hints[0].contains(&format!("{} holds", vol.display()))
            && r.hints[0].contains("(pod shop/cart-7d9f volume cache)"),
        "{:?}",
        r.hints
    );
    assert!(r.hints[0].contains("the writer is active"), "{:?}", r.hints);
}

/// The pid of the test's child `tracer`.
fn tracer_child() -> Option<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        let ppid = rest.split(' ').nth(1)?;
        (comm.ends_with("(tracer") && ppid == me).then(|| stat.split(' ').next()?.parse().ok())?
    })
}

/// Whether process `pid` has `path` open.
fn has_open(pid: i32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| l == path)
}

/// SIGCONT to the tracer on drop (also when the test fails).
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Waits (inotify, IN_OPEN) until `dir` is opened, stops the tracer that opened it,
/// removes `dir` while the tracer holds it open, and lets the tracer go on. Returns
/// the tracer's pid.
fn remove_when_opened(dir: &Path) -> std::thread::JoinHandle<i32> {
    // SAFETY: inotify calls on an fd owned here; read into a local buffer.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(fd >= 0, "inotify_init1");
    let c = CString::new(dir.to_str().unwrap()).unwrap();
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) };
    assert!(wd >= 0, "inotify_add_watch");
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let pid = tracer_child().expect("the tracer's pid");
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let stopped = Stopped(pid);
        unsafe { libc::close(fd) };
        assert!(n > 0, "reading inotify");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !has_open(pid, &dir) {
            assert!(
                Instant::now() < deadline,
                "the stopped tracer does not hold {} open",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_dir_all(&dir).unwrap();
        drop(stopped);
        pid
    })
}

#[test]
fn a_directory_removed_during_the_walk_is_a_skipped_line_and_the_rest_is_counted() {
    require_root();
    let _s = serial();
    let t = Tmpfs::new("census-removed", "size=64m,nr_inodes=200000");
    let (gone, keep) = (t.dir.join("gone"), t.dir.join("keep"));
    std::fs::create_dir_all(&gone).unwrap();
    std::fs::create_dir_all(&keep).unwrap();
    // Many entries: the census is still reading `gone` when the test stops it.
    writer(&format!(
        "cd {g} && seq 20000 | xargs touch && cd {k} && seq 100 | xargs touch",
        g = gone.display(),
        k = keep.display()
    ));
    let remover = remove_when_opened(&gone);
    let tracer = Tracer::start(&[
        "inodes",
        "--census",
        t.dir.to_str().unwrap(),
        "--json",
        "-d",
        "2s",
    ]);
    let pid = remover
        .join()
        .expect("removing the directory under the walk");
    assert_eq!(pid, tracer.pid());
    let out = tracer.wait();
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<InodesReport>();
    let c = census_of(&r, &t.dir);
    let s = only_skipped(c, &gone, SkipReason::Removed);
    assert!(s.detail.starts_with("removed during the walk"), "{}", js(s));
    let k = row(c, &keep);
    assert_eq!((k.own_entries, k.subtree_inodes), (100, 101));
    assert!(!c.partial);
}

#[test]
fn an_unreadable_directory_is_a_skipped_line_and_the_rest_is_counted() {
    require_root();
    let _s = serial();
    let fs = LoopExt4::new(16, 512);
    let (bad, good) = (fs.mnt.join("bad"), fs.mnt.join("good"));
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::create_dir_all(&good).unwrap();
    writer(&format!(
        "cd {} && seq 50 | xargs touch && touch {}/x",
        good.display(),
        bad.display()
    ));
    // Clear bad's inode on the unmounted image: its entry then names a deleted inode,
    // which the kernel refuses to look up (a corrupt filesystem, for root too).
    let dev = sh("findmnt", &["-n", "-o", "SOURCE", fs.mnt()]);
    sh("umount", &[fs.mnt()]);
    sh("debugfs", &["-w", "-R", "clri /bad", &dev]);
    sh("mount", &[&dev, fs.mnt()]);

    let out = run_tracer(&["inodes", "--census", fs.mnt(), "--json", "-d", "1s"]);
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<InodesReport>();
    let c = census_of(&r, &fs.mnt);
    let s = only_skipped(c, &bad, SkipReason::Unreadable);
    assert!(s.detail.starts_with("stat: "), "{}", js(s));
    let g = row(c, &good);
    assert_eq!((g.own_entries, g.subtree_inodes), (50, 51));
    // The text has one line for it.
    let text = run_tracer(&["inodes", "--census", fs.mnt(), "-d", "1s"]);
    assert_eq!(
        text.stdout.matches(&*bad.to_string_lossy()).count(),
        1,
        "{}",
        text.stdout
    );
    let _: PathBuf = bad;
}
