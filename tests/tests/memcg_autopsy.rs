//! The autopsy of dying memory cgroups (`tracer cgroups`, `autopsy`): memcgs kept
//! dying for real by the page cache of files of known size, charged while the tracer
//! runs and before it started, on whichever hierarchy has the memory controller (the
//! v1 memory hierarchy on the hybrid host, cgroup2 in the VMs). The report must give
//! each one's bytes by kind, name the files (or say why not), and its remedy must free
//! it: the next reports show the memcg released.
//!
//! Each dying memcg gets a parent of its own, so the group the report makes per closest
//! live ancestor is that memcg alone. File cache lives on a loop-mounted ext4 (noatime:
//! a read dirties nothing), shmem on a tmpfs of the test's. Guards remove files,
//! cgroups, mounts, also on failure.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tracer::cgroups::{
    CgroupsReport,
    pinned::{FilesUnknown, PinnedGroup, RemedyKind},
};
use tracer_tests::{
    Cgroup, CgroupLayout, Envelope, LoopExt4, MemoryHierarchy, SubtreeControl, Tmpfs, Tracer,
    matrix_kernel, require_root, serial,
};

const MIB: u64 = 1 << 20;
/// The file each memcg reads: its page cache is what pins the memcg.
const FILE_BYTES: u64 = 8 * MIB;
const SHMEM_BYTES: u64 = 4 * MIB;

/// A parent memcg of the test's with one child made dying; drop frees what pins the
/// child and removes the parent (the kernel releases the child once nothing pins it).
struct DyingMemcg {
    mem: MemoryHierarchy,
    /// The child as the tracer names it (relative to the mount).
    rel: String,
    rel_parent: String,
    child: Cgroup,
    parent: Cgroup,
    _parent_ctl: Option<SubtreeControl>,
}

impl DyingMemcg {
    /// `/tracer-autopsy-PID-TAG/c`, in which `sh -c SCRIPT` runs and exits; then the
    /// child is removed (rmdir) by this process.
    fn make(mem: &MemoryHierarchy, tag: &str, script: &str) -> DyingMemcg {
        let rel_parent = format!("/tracer-autopsy-{}-{tag}", std::process::id());
        let parent = Cgroup::create(mem.mount.join(&rel_parent[1..]));
        let parent_ctl = mem
            .v2
            .then(|| SubtreeControl::enable(&parent.path, "memory"));
        let mut child = Cgroup::create(parent.path.join("c"));
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && {script}",
                child.path.display()
            ))
            .status()
            .expect("running sh");
        assert!(
            st.success(),
            "{}: `{script}` failed in {}",
            mem.describe(),
            child.path.display()
        );
        child.remove();
        DyingMemcg {
            mem: mem.clone(),
            rel: format!("{rel_parent}/c"),
            rel_parent,
            child,
            parent,
            _parent_ctl: parent_ctl,
        }
    }

    /// Empties the per-CPU caches that can still reference the dying child after its
    /// pages are gone (see tests/src/memcg.rs `drain_per_cpu_caches`), for this test's
    /// parent only.
    fn drain(&self) {
        let (file, value) = if self.mem.v2 {
            ("memory.reclaim", "64M")
        } else {
            ("memory.force_empty", "0")
        };
        let _ = fs::write(self.parent.path.join(file), value);
    }
}

impl Drop for DyingMemcg {
    fn drop(&mut self) {
        if self.parent.path.exists() {
            self.drain();
        }
        let _ = &self.child;
    }
}

/// The ext4 file of FILE_BYTES, written and synced from this process, its cache
/// dropped so that the first read from a test memcg charges it there.
struct CachedFile {
    fs: LoopExt4,
    path: PathBuf,
}

impl CachedFile {
    fn new(name: &str) -> CachedFile {
        let fs = LoopExt4::new(64, 256);
        let st = Command::new("mount")
            .args(["-o", "remount,noatime", fs.mnt()])
            .status()
            .unwrap();
        assert!(st.success(), "remounting {} noatime", fs.mnt());
        let path = fs.mnt.join(name);
        let st = Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", path.display()),
                "bs=1M",
                &format!("count={}", FILE_BYTES / MIB),
                "conv=fsync",
                "status=none",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        drop_cache(&path);
        CachedFile { fs, path }
    }
}

fn drop_cache(p: &Path) {
    let st = Command::new("dd")
        .args([
            &format!("if={}", p.display()),
            "iflag=nocache",
            "count=0",
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "dropping the cache of {}", p.display());
}

/// Binaries the test memcgs run, paged in from this process first: a binary page
/// first read from inside a test memcg would pin it too.
fn warm_up() {
    let st = Command::new("sh")
        .arg("-c")
        .arg("cat /dev/null; head -c 1 /dev/zero > /dev/null; echo > /dev/null")
        .status()
        .unwrap();
    assert!(st.success());
}

fn start(mem: &MemoryHierarchy) -> Tracer {
    Tracer::start(&[
        "cgroups",
        "--hierarchy",
        &mem.name,
        "--json",
        "-i",
        "300ms",
        "--census-every",
        "0s",
    ])
}

fn group<'a>(r: &'a CgroupsReport, ancestor: &str) -> Option<&'a PinnedGroup> {
    r.autopsy
        .as_ref()?
        .groups
        .iter()
        .find(|g| g.ancestor == ancestor)
}

/// The memory hierarchy the test's memcgs go in, with the kernel and hierarchy for
/// messages, and (cgroup2) the memory controller enabled for the root's children until
/// the guard drops.
fn memory_hierarchy() -> (MemoryHierarchy, String, Option<SubtreeControl>) {
    let mem = CgroupLayout::read().memory();
    let how = format!("{}, {}", matrix_kernel(), mem.describe());
    let ctl = mem.v2.then(|| SubtreeControl::enable(&mem.mount, "memory"));
    (mem, how, ctl)
}

fn show(r: &CgroupsReport) -> String {
    serde_json::to_string_pretty(&r.autopsy).unwrap()
        + &format!("\nmissing: {:?}", r.autopsy_missing)
}

/// Bytes within [90% of `want`, `want` + 2 MiB]: readahead and metadata pages may add a
/// little; nothing else charges these memcgs.
fn close_to(got: u64, want: u64) -> bool {
    got * 10 >= want * 9 && got <= want + 2 * MIB
}

#[test]
fn memcgs_pinned_while_tracing_name_their_files_and_the_remedy_releases_them() {
    require_root();
    let _s = serial();
    let (mem, how, _root_ctl) = memory_hierarchy();
    let file = CachedFile::new("pinned.dat");
    let shm = Tmpfs::new("autopsy", "size=64m");
    warm_up();
    let mut tracer = start(&mem);
    // One memcg reads the ext4 file (file page cache), one writes a tmpfs file (shmem).
    let a = DyingMemcg::make(
        &mem,
        "file",
        &format!("cat {} > /dev/null", file.path.display()),
    );
    let shm_file = shm.dir.join("pinned.shm");
    let b = DyingMemcg::make(
        &mem,
        "shmem",
        &format!("head -c {SHMEM_BYTES} /dev/zero > {}", shm_file.display()),
    );
    let path = file.path.display().to_string();
    let r: Envelope<CgroupsReport> =
        tracer.report_as_where(Duration::from_secs(60), |r: &Envelope<CgroupsReport>| {
            let ga = group(r, &a.rel_parent);
            let gb = group(r, &b.rel_parent);
            // Each rmdir's record processed (the walk may count a memcg dying first).
            ga.is_some_and(|g| {
                g.dying.len() == 1
                    && (g.files.iter()).any(|f| f.path.as_deref() == Some(path.as_str()))
            }) && gb.is_some_and(|g| g.dying.len() == 1 && g.pinned.shmem >= SHMEM_BYTES * 9 / 10)
        });
    let ga = group(&r, &a.rel_parent).unwrap();
    assert_eq!(ga.dying.len(), 1, "{how}: {}", show(&r));
    assert_eq!(ga.dying[0].path, a.rel, "{how}: {}", show(&r));
    assert!(
        close_to(ga.pinned.file, FILE_BYTES),
        "{how}: file bytes {} for an {FILE_BYTES}-byte file: {}",
        ga.pinned.file,
        show(&r)
    );
    let f = ga
        .files
        .iter()
        .find(|f| f.path.as_deref() == Some(path.as_str()))
        .unwrap();
    assert_eq!(f.size, Some(FILE_BYTES), "{how}: {}", show(&r));
    assert_eq!(f.memcg, a.rel, "{how}: {}", show(&r));
    assert!(close_to(f.charged, FILE_BYTES), "{how}: {}", show(&r));
    assert!(
        close_to(f.resident.unwrap_or(0), FILE_BYTES),
        "{how}: {}",
        show(&r)
    );
    assert_eq!(ga.files_unknown, None, "{how}: {}", show(&r));
    let gb = group(&r, &b.rel_parent).unwrap();
    assert!(
        close_to(gb.pinned.shmem, SHMEM_BYTES),
        "{how}: shmem bytes {}: {}",
        gb.pinned.shmem,
        show(&r)
    );
    assert!(gb.pinned.file < MIB, "{how}: {}", show(&r));
    assert_eq!(
        gb.files_unknown,
        Some(FilesUnknown::NoneSeen),
        "{how}: {}",
        show(&r)
    );
    assert!(
        gb.remedies
            .iter()
            .any(|m| m.kind == RemedyKind::DeleteShmemFiles),
        "{how}: {}",
        show(&r)
    );
    let kind = if mem.v2 {
        RemedyKind::ReclaimAncestor
    } else {
        RemedyKind::ForceEmptyBeforeRmdir
    };
    assert!(
        ga.remedies.iter().any(|m| m.kind == kind),
        "{how}: {}",
        show(&r)
    );
    let a_pages = r
        .autopsy
        .as_ref()
        .unwrap()
        .pagecache
        .clone()
        .expect("page cache tracked");
    assert!(a_pages.adds >= FILE_BYTES / 4096 / 16, "{how}: {a_pages:?}");
    // The remedy the report gives for the file, run as given; then the per-CPU caches of
    // the test's parent are drained (pages a CPU has not put on the LRU yet keep the
    // memcg referenced): the next reports show the memcg released.
    let cmd = (ga.remedies.iter())
        .find(|m| m.kind == RemedyKind::DropFileCache)
        .and_then(|m| m.command.clone())
        .unwrap_or_else(|| panic!("{how}: no drop-cache remedy: {}", show(&r)));
    assert!(cmd.contains(&path), "{how}: {cmd}");
    let st = Command::new("sh").arg("-c").arg(&cmd).status().unwrap();
    assert!(st.success(), "{how}: `{cmd}` failed");
    a.drain();
    let rel = a.rel.clone();
    let parent = a.rel_parent.clone();
    let after: Envelope<CgroupsReport> =
        tracer.report_as_where(Duration::from_secs(60), |r: &Envelope<CgroupsReport>| {
            r.released_recent.iter().any(|x| x.path == rel)
                && group(r, &parent).is_none_or(|g| g.dying.is_empty())
        });
    assert!(!after.dying.iter().any(|d| d.path == a.rel), "{how}");
    drop(tracer);
    let _ = fs::remove_file(&shm_file);
    drop((a, b));
    drop(file.fs);
}

#[test]
fn memcgs_dying_from_before_the_start_get_bytes_by_kind_and_a_reason_for_their_files() {
    require_root();
    let _s = serial();
    let (mem, how, _root_ctl) = memory_hierarchy();
    let file = CachedFile::new("before.dat");
    warm_up();
    let c = DyingMemcg::make(
        &mem,
        "before",
        &format!("cat {} > /dev/null", file.path.display()),
    );
    let mut tracer = start(&mem);
    let r: Envelope<CgroupsReport> =
        tracer.report_as_where(Duration::from_secs(60), |r: &Envelope<CgroupsReport>| {
            group(r, &c.rel_parent).is_some_and(|g| g.pinned.file >= FILE_BYTES * 9 / 10)
        });
    let g = group(&r, &c.rel_parent).unwrap();
    assert!(g.dying.is_empty(), "{how}: {}", show(&r));
    // cgroup2 counts dying cgroups per ancestor; v1 does not.
    let want = if mem.v2 { Some(1) } else { None };
    assert_eq!(g.dying_before_start, want, "{how}: {}", show(&r));
    assert!(close_to(g.pinned.file, FILE_BYTES), "{how}: {}", show(&r));
    assert!(
        g.pinned.shmem < MIB && g.pinned.anon < MIB,
        "{how}: {}",
        show(&r)
    );
    assert!(g.files.is_empty(), "{how}: {}", show(&r));
    assert_eq!(
        g.files_unknown,
        Some(FilesUnknown::ChargedBeforeStart),
        "{how}: {}",
        show(&r)
    );
    assert_eq!(g.own.is_some(), !mem.v2, "{how}: {}", show(&r));
    let a = r.autopsy.as_ref().unwrap();
    assert!(
        a.census.complete && a.census.frames > 0 && a.census.took_ms > 0.0,
        "{how}: {:?}",
        a.census
    );
    assert!(
        a.by_creator
            .iter()
            .any(|b| b.who == "before start" && b.pinned.file >= g.pinned.file),
        "{how}: {}",
        show(&r)
    );
    // The file dropped from the cache (the test knows it), the memcg is released.
    drop_cache(&file.path);
    c.drain();
    let parent = c.rel_parent.clone();
    tracer.report_as_where(Duration::from_secs(60), |r: &Envelope<CgroupsReport>| {
        group(r, &parent).is_none()
    });
    drop(tracer);
    drop(c);
    drop(file.fs);
}
