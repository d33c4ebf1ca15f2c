//! `tracer inodes` attributes inode creations on every filesystem with a bounded inode
//! count, not only ext4: a tmpfs with a small `nr_inodes` and a small xfs on a loop
//! device, each filled by a child until creates fail with ENOSPC. The report names the
//! writer, its directory and the exact count, and says which kernel path counted them:
//! the VFS hook (fentry on inode_init_owner) in the 6.1 and 6.12 VMs, the successful
//! create syscalls on the tracepoint-only host.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use serde::Serialize;
use tracer::{
    doctor::Doctor,
    inodes::{CreationHook, InodesReport},
};
use tracer_tests::{
    Incident, Tmpfs, Tracer, assert_none_loaded, matrix_kernel, require_root, run_tracer, serial,
    sh, strict,
};

fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_incident_inodes"))
}

fn js(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap()
}

/// The path this kernel must take: the VMs allow fentry, the host only tracepoints.
fn expected_hook() -> CreationHook {
    match matrix_kernel() {
        "host" => CreationHook::Syscalls,
        _ => CreationHook::Fentry,
    }
}

/// An xfs image of `size_mib` MiB (sparse) whose inodes may take at most `maxpct`
/// percent of the space, with 2 KiB inodes: it runs out of inodes after ~1,600 files.
/// Loop-mounted in a temp dir; Drop unmounts, detaches and deletes, also on failure.
struct LoopXfs {
    dir: PathBuf,
    mnt: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
}

impl LoopXfs {
    fn new(size_mib: u64, maxpct: u32) -> LoopXfs {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracer-test-xfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut fs = LoopXfs {
            mnt: dir.join("mnt"),
            dir,
            loop_dev: None,
            mounted: false,
        };
        std::fs::create_dir_all(&fs.mnt).expect("creating the temp dir");
        let img = fs.dir.join("xfs.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size_mib << 20))
            .expect("creating the image (truncate)");
        let img = img.to_str().unwrap();
        // xfs is a module on Debian's kernels: load it (a no-op where it is built in).
        let _ = Command::new("modprobe").arg("xfs").status();
        let inodes = format!("size=2048,maxpct={maxpct}");
        sh("mkfs.xfs", &["-q", "-f", "-i", &inodes, img]);
        fs.loop_dev = Some(sh("losetup", &["--find", "--show", img]));
        sh(
            "mount",
            &[
                "-t",
                "xfs",
                fs.loop_dev.as_deref().unwrap(),
                fs.mnt.to_str().unwrap(),
            ],
        );
        fs.mounted = true;
        fs
    }
}

impl Drop for LoopXfs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fills `dir` (on the filesystem mounted at `mnt`, of type `fstype`) with a child
/// until ENOSPC while `tracer inodes --fs mnt` runs, and checks the report: the child
/// named with its exact count, the directory named with the same count, the path.
fn fill_and_check(mnt: &Path, dir: &Path, fstype: &str) {
    let mnt_s = mnt.to_str().unwrap();
    let tracer = Tracer::start(&["inodes", "--fs", mnt_s, "--json"]);
    let mut inc = Incident::start_bin(helper(), &["fill", dir.to_str().unwrap(), "1"]);
    inc.send("go");
    let full = inc.expect_line("full");
    let created: u64 = full.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(created > 100, "{full}");
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<InodesReport>();
    let want = expected_hook();
    assert_eq!(r.creations.hook, want, "{}", js(&r.creations));
    let f = (r.filesystems.iter())
        .find(|f| f.mount == mnt)
        .unwrap_or_else(|| panic!("{mnt_s} not among the filesystems: {}", js(&r)));
    assert_eq!(f.fstype, fstype);
    assert_eq!(f.creations_hook, want, "{}", js(f));
    // The writer: pid, comm, exact count.
    let p = (r.top_processes.iter())
        .find(|p| p.pid == inc.pid)
        .unwrap_or_else(|| panic!("the child is not among the processes: {}", js(&r)));
    assert_eq!(p.comm, "incident_inodes", "{}", js(p));
    assert_eq!(p.mount, mnt_s, "{}", js(p));
    assert_eq!(p.allocated, created, "exact count: {}", js(p));
    assert!(p.cgroup.cgroup.starts_with('/'), "{}", js(p));
    // The directory, named by the path the child gave, with the same count.
    let d = (r.top_directories.iter())
        .find(|d| d.path.as_deref() == Some(dir))
        .unwrap_or_else(|| panic!("{} is not among the directories: {}", dir.display(), js(&r)));
    assert_eq!(d.allocated, created, "{}", js(d));
    assert_eq!(d.mount, mnt_s, "{}", js(d));
    // Nothing else was created on this filesystem during the run.
    assert_eq!(r.top_processes.len(), 1, "{}", js(&r.top_processes));
    // ENOSPC: the failed create and one retry.
    let e = (r.enospc.iter())
        .find(|e| e.pid == inc.pid)
        .unwrap_or_else(|| panic!("no ENOSPC row for the child: {}", js(&r)));
    assert_eq!(e.count, 2, "{}", js(e));
    // The count of mkdir/mknod/symlink that could not be placed exists on the syscall
    // path only (the VFS path places every creation).
    assert_eq!(
        r.creations.unplaced.is_some(),
        want == CreationHook::Syscalls,
        "{}",
        js(&r.creations)
    );
    drop(inc);
    assert_none_loaded("inodes_");
}

#[test]
fn tmpfs_with_few_inodes_names_the_writer_its_directory_and_the_exact_count() {
    require_root();
    let _s = serial();
    let fs = Tmpfs::new("creations", "size=64m,nr_inodes=2000");
    let dir = fs.dir.join("spool");
    std::fs::create_dir(&dir).unwrap();
    fill_and_check(&fs.dir, &dir, "tmpfs");
}

#[test]
fn xfs_filled_to_its_inode_limit_names_the_writer_its_directory_and_the_exact_count() {
    require_root();
    let _s = serial();
    let fs = LoopXfs::new(300, 1);
    let dir = fs.mnt.join("cache/objects");
    std::fs::create_dir_all(&dir).unwrap();
    fill_and_check(&fs.mnt, &dir, "xfs");
}

#[test]
fn an_existing_file_opened_with_o_creat_is_not_a_creation() {
    require_root();
    let _s = serial();
    let fs = Tmpfs::new("reopen", "size=16m,nr_inodes=500");
    let dir = fs.dir.join("d");
    std::fs::create_dir(&dir).unwrap();
    let mnt = fs.dir.to_str().unwrap();
    // 20 files exist before the tracer starts; the child fills the rest: only its new
    // files count, though `fill` opens every file with O_CREAT.
    for i in 0..20 {
        std::fs::write(dir.join(format!("pre{i}")), b"x").unwrap();
    }
    let tracer = Tracer::start(&["inodes", "--fs", mnt, "--json"]);
    // The shell truncates the 20 existing files (O_CREAT|O_TRUNC, no new inode), then
    // makes 3 directories.
    let script = format!(
        "for i in $(seq 0 19); do : > {d}/pre$i; done; mkdir {d}/a {d}/b {d}/c",
        d = dir.display()
    );
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(st.success());
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<InodesReport>();
    let created: u64 = r.top_processes.iter().map(|p| p.allocated).sum();
    assert_eq!(created, 3, "the 3 directories only: {}", js(&r));
    let d = (r.top_directories.iter())
        .find(|d| d.path.as_deref() == Some(dir.as_path()))
        .unwrap_or_else(|| panic!("{} not named: {}", dir.display(), js(&r)));
    assert_eq!(d.allocated, 3, "{}", js(d));
}

#[test]
fn mkdir_mknod_and_symlink_are_placed_in_their_directory_after_their_process_exits() {
    require_root();
    let _s = serial();
    let fs = Tmpfs::new("made", "size=16m,nr_inodes=500");
    let a = fs.dir.join("a");
    let b = a.join("b");
    std::fs::create_dir_all(&b).unwrap();
    let mnt = fs.dir.to_str().unwrap();
    let tracer = Tracer::start(&["inodes", "--fs", mnt, "--json"]);
    // Short-lived processes, gone before the tracer reads their records: names without
    // a slash (placed from the cwd the kernel read at the syscall's exit) and absolute
    // paths (looked up in the tracer's tree, the processes having the same root).
    let script = format!(
        "cd {a} && mkdir d1 d2 && ln -s d1 l1 && mknod p1 p && mkdir {b}/d3 {b}/d4/",
        a = a.display(),
        b = b.display()
    );
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(st.success());
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let r = out.final_as::<InodesReport>();
    let created: u64 = r.top_processes.iter().map(|p| p.allocated).sum();
    assert_eq!(created, 6, "4 in a, 2 in a/b: {}", js(&r));
    let comms: Vec<&str> = r.top_processes.iter().map(|p| p.comm.as_str()).collect();
    for c in ["mkdir", "ln", "mknod"] {
        assert!(comms.contains(&c), "{c} not among {comms:?}");
    }
    for (dir, n) in [(&a, 4), (&b, 2)] {
        let d = (r.top_directories.iter())
            .find(|d| d.path.as_deref() == Some(dir.as_path()))
            .unwrap_or_else(|| panic!("{} not named: {}", dir.display(), js(&r)));
        assert_eq!(d.allocated, n, "{}", js(d));
    }
    assert_eq!(r.creations.hook, expected_hook(), "{}", js(&r.creations));
}

#[test]
fn doctor_names_the_creation_path_of_this_kernel() {
    require_root();
    let out = run_tracer(&["doctor", "--json"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let d: Doctor = strict(&serde_json::from_str(out.stdout.trim()).expect("doctor JSON"));
    let inodes = (d.detectors.iter())
        .find(|v| v.detector == "inodes")
        .unwrap_or_else(|| panic!("no inodes detector: {d:?}"));
    let c = (inodes.choices.iter())
        .find(|c| c.choice == "inode creations")
        .unwrap_or_else(|| panic!("no inode creations choice: {inodes:?}"));
    match expected_hook() {
        CreationHook::Syscalls => {
            assert_eq!(c.path, None, "{c:?}");
            assert!(c.otherwise.contains("create syscalls"), "{c:?}");
        }
        _ => assert_eq!(c.path.as_deref(), Some("fentry"), "{c:?}"),
    }
    let text = run_tracer(&["doctor"]).stdout;
    assert!(text.contains("inode creations"), "{text}");
}
