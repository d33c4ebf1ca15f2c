//! The census walk: one depth-first pass over a directory tree with `openat` +
//! `fdopendir` + `readdir` (getdents underneath) and one `fstatat` per entry, never
//! leaving the filesystem it started on (st_dev). Memory does not grow with the tree:
//! it holds the stack of open directories (one frame per level of the current path)
//! and a bounded heap of the directories with the most inodes, nothing per entry.
use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    ffi::{CStr, CString, OsStr, OsString},
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{Ages, SkipReason};

/// Users counted per directory before the rest go to "other": the top user of a
/// directory is exact when it owns more than any 4 others together.
const USERS_KEPT: usize = 4;

/// Inodes counted between two looks at the clock (the budget and the progress).
const CLOCK_EVERY: u64 = 256;

/// Files per owner (uid), the few with the most files.
#[derive(Clone, Debug, Default)]
pub struct Users {
    pub top: Vec<(u32, u64)>,
    pub other: u64,
}

impl Users {
    fn add(&mut self, uid: u32, n: u64) {
        if let Some(e) = self.top.iter_mut().find(|e| e.0 == uid) {
            e.1 += n;
        } else if self.top.len() < USERS_KEPT {
            self.top.push((uid, n));
        } else {
            self.other += n;
        }
    }

    fn merge(&mut self, o: &Users) {
        for &(uid, n) in &o.top {
            self.add(uid, n);
        }
        self.other += o.other;
    }

    /// The user owning the most files, and how many.
    pub fn first(&self) -> Option<(u32, u64)> {
        self.top.iter().copied().max_by_key(|e| (e.1, Reverse(e.0)))
    }
}

/// One directory's counts: its own entries, its subtree's inodes (itself included),
/// and the age and owner of the files (non-directories) in its subtree.
#[derive(Clone, Debug, Default)]
pub struct DirCount {
    pub path: PathBuf,
    pub own_entries: u64,
    pub subtree_inodes: u64,
    pub ages: Ages,
    pub users: Users,
}

/// A directory the walk could not read, or read only in part.
#[derive(Clone, Debug, PartialEq)]
pub struct Skip {
    pub path: PathBuf,
    pub reason: SkipReason,
    pub detail: String,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The root's counts (the whole walk).
    pub root: DirCount,
    /// At most `top` directories, most inodes in their subtree first (see [`Walk::run`]
    /// for the directories left out).
    pub top: Vec<DirCount>,
    pub directories: u64,
    /// Every directory skipped, counted; `skips` keeps the first `top`.
    pub skipped: u64,
    pub skips: Vec<Skip>,
    /// Entries gone between the directory read and their stat (deleted meanwhile).
    pub vanished: u64,
    /// Mount points met and not entered.
    pub mounts_not_crossed: u64,
    /// The budget ran out before the walk ended: the counts are a lower bound.
    pub partial: bool,
    pub elapsed: Duration,
}

/// An open directory of the current path.
struct Frame {
    dir: *mut libc::DIR,
    name: OsString,
    count: DirCount,
    /// The largest subtree of a child directory.
    largest_child: u64,
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: `dir` came from fdopendir and is closed only here.
        unsafe { libc::closedir(self.dir) };
    }
}

/// Progress for `on_progress`: inodes counted so far, the time spent, the path now.
pub struct Progress<'a> {
    pub inodes: u64,
    pub elapsed: Duration,
    pub at: &'a Path,
}

/// A census walk's settings and hooks.
pub struct Walk<'a> {
    pub budget: Duration,
    pub top: usize,
    /// Called every `progress_every` while the walk runs.
    pub progress_every: Duration,
    pub on_progress: &'a mut dyn FnMut(&Progress),
    /// Called with each directory's path right after it was opened (tests use it to
    /// change the tree under the walk).
    pub on_open: &'a mut dyn FnMut(&Path),
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn reason_of(e: i32) -> SkipReason {
    match e {
        libc::EACCES | libc::EPERM => SkipReason::PermissionDenied,
        libc::ENOENT | libc::ENOTDIR => SkipReason::Removed,
        _ => SkipReason::Unreadable,
    }
}

/// Opens `name` in `at` (or the path itself with AT_FDCWD) as a directory stream.
fn open_dir(at: libc::c_int, name: &CStr) -> Result<*mut libc::DIR, i32> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: plain syscalls on a NUL-terminated name; the fd is owned by the DIR.
    unsafe {
        let fd = libc::openat(at, name.as_ptr(), flags);
        if fd < 0 {
            return Err(errno());
        }
        let dir = libc::fdopendir(fd);
        if dir.is_null() {
            let e = errno();
            libc::close(fd);
            return Err(e);
        }
        Ok(dir)
    }
}

impl Walk<'_> {
    /// Walks `root`. The `top` directories are those with the most inodes in their
    /// subtree, except a directory whose one child holds >= 90% of its subtree (the
    /// child, further down, says more: `/data` above `/data/cache/sessions`); the root
    /// is always in `Outcome::root`.
    pub fn run(&mut self, root: &Path) -> Outcome {
        let mut st = match self.open_root(root) {
            Ok(st) => st,
            Err(out) => return out,
        };
        while !st.stack.is_empty() {
            if !self.tick(&mut st) {
                break;
            }
            self.step(&mut st);
        }
        let mut out = st.out;
        out.top = (st.heap.into_sorted_vec().into_iter())
            .map(|Reverse((_, path, c))| c.into_count(path))
            .collect();
        out.elapsed = st.start.elapsed();
        out
    }

    /// The walk's state with the root open, or the outcome saying it cannot be.
    fn open_root(&mut self, root: &Path) -> Result<State, Outcome> {
        let start = Instant::now();
        let fail = |e: i32| Outcome {
            skipped: 1,
            skips: vec![skip(root.into(), e, "opening")],
            elapsed: start.elapsed(),
            ..Default::default()
        };
        let c_root = CString::new(root.as_os_str().as_bytes()).map_err(|_| fail(libc::EINVAL))?;
        let dir = open_dir(libc::AT_FDCWD, &c_root).map_err(fail)?;
        let frame = Frame {
            dir,
            name: root.as_os_str().to_owned(),
            count: DirCount {
                subtree_inodes: 1,
                ..Default::default()
            },
            largest_child: 0,
        };
        let dev = fstat(dir).map_err(fail)?.st_dev;
        (self.on_open)(root);
        Ok(State {
            stack: vec![frame],
            heap: BinaryHeap::new(),
            out: Outcome {
                directories: 1,
                ..Default::default()
            },
            dev,
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            start,
            last_progress: start,
            seen: 0,
        })
    }

    /// Every CLOCK_EVERY entries: false when the budget ran out (then every open
    /// directory is closed with what it counted and the outcome is partial), and the
    /// progress callback when it is due.
    fn tick(&mut self, st: &mut State) -> bool {
        st.seen += 1;
        if st.seen % CLOCK_EVERY != 0 {
            return true;
        }
        let t = st.start.elapsed();
        if t >= self.budget {
            st.out.partial = true;
            while !st.stack.is_empty() {
                self.close(st);
            }
            return false;
        }
        if st.last_progress.elapsed() >= self.progress_every {
            st.last_progress = Instant::now();
            let at = path_of(&st.stack);
            (self.on_progress)(&Progress {
                inodes: st.out.root.subtree_inodes + sum_open(&st.stack),
                elapsed: t,
                at: &at,
            });
        }
        true
    }

    /// Reads the next entry of the innermost directory (closing it at its end),
    /// counts it, and opens it when it is a directory on the same filesystem.
    fn step(&mut self, st: &mut State) {
        let Some(top) = st.stack.last_mut() else {
            return;
        };
        // SAFETY: `top.dir` is an open stream; readdir's entry is copied before the
        // next call on the same stream.
        let (name, fd) = unsafe {
            *libc::__errno_location() = 0;
            let ent = libc::readdir(top.dir);
            if ent.is_null() {
                let e = errno();
                if e != 0 {
                    let p = path_of(&st.stack);
                    push_skip(&mut st.out, skip(p, e, "reading"), self.top);
                }
                self.close(st);
                return;
            }
            let name = CStr::from_ptr((*ent).d_name.as_ptr()).to_owned();
            (name, libc::dirfd(top.dir))
        };
        if name.as_bytes() == b"." || name.as_bytes() == b".." {
            return;
        }
        let child = |st: &State| path_of(&st.stack).join(OsStr::from_bytes(name.as_bytes()));
        let stat = match fstatat(fd, &name) {
            Ok(stat) => stat,
            Err(libc::ENOENT) => {
                st.out.vanished += 1;
                return;
            }
            Err(e) => {
                let p = child(st);
                push_skip(&mut st.out, skip(p, e, "stat"), self.top);
                return;
            }
        };
        let Some(top) = st.stack.last_mut() else {
            return;
        };
        top.count.own_entries += 1;
        top.count.subtree_inodes += 1;
        if stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
            top.count.ages.add(st.now - stat.st_mtime);
            top.count.users.add(stat.st_uid, 1);
            return;
        }
        if stat.st_dev != st.dev {
            st.out.mounts_not_crossed += 1;
            return;
        }
        match open_dir(fd, &name) {
            Ok(dir) => {
                st.out.directories += 1;
                st.stack.push(Frame {
                    dir,
                    name: OsString::from_vec(name.into_bytes()),
                    count: DirCount::default(),
                    largest_child: 0,
                });
                (self.on_open)(&path_of(&st.stack));
            }
            Err(e) => {
                let p = child(st);
                push_skip(&mut st.out, skip(p, e, "opening"), self.top);
            }
        }
    }

    /// Closes the innermost directory: checks it still exists (a directory removed
    /// while read has no links left), adds its counts to its parent's, and keeps it
    /// among the top directories if it is one.
    fn close(&mut self, st: &mut State) {
        let path = path_of(&st.stack);
        let Some(mut f) = st.stack.pop() else { return };
        if fstat(f.dir).is_ok_and(|s| s.st_nlink == 0) {
            let detail = format!(
                "removed during the walk; {} entries counted before",
                f.count.own_entries
            );
            let s = Skip {
                path: path.clone(),
                reason: SkipReason::Removed,
                detail,
            };
            push_skip(&mut st.out, s, self.top);
        }
        let c = std::mem::take(&mut f.count);
        let subtree = c.subtree_inodes;
        let Some(parent) = st.stack.last_mut() else {
            st.out.root = DirCount { path, ..c };
            return;
        };
        // The entry itself was counted in the parent when it was listed.
        parent.count.subtree_inodes += subtree;
        parent.count.ages.merge(&c.ages);
        parent.count.users.merge(&c.users);
        parent.largest_child = parent.largest_child.max(subtree + 1);
        let own_subtree = subtree + 1;
        if f.largest_child * 10 >= own_subtree * 9 || self.top == 0 {
            return;
        }
        let heap = &mut st.heap;
        if heap.len() >= self.top && heap.peek().is_some_and(|Reverse(m)| m.0 >= own_subtree) {
            return;
        }
        heap.push(Reverse((own_subtree, path, HeapCount::of(&c, own_subtree))));
        if heap.len() > self.top {
            heap.pop();
        }
    }
}

/// The bounded heap of the directories with the most inodes (the least on top).
type Heap = BinaryHeap<Reverse<(u64, PathBuf, HeapCount)>>;

/// A walk under way.
struct State {
    /// The open directories of the current path, the root first.
    stack: Vec<Frame>,
    heap: Heap,
    out: Outcome,
    /// The root's filesystem.
    dev: libc::dev_t,
    /// Seconds since the epoch at the start (file ages count from here).
    now: i64,
    start: Instant,
    last_progress: Instant,
    /// Entries read, for CLOCK_EVERY.
    seen: u64,
}

/// A directory's counts in the heap (ordered only by their subtree, before them).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HeapCount {
    own_entries: u64,
    subtree_inodes: u64,
    ages: [u64; 4],
    users: Vec<(u32, u64)>,
    other: u64,
}

impl HeapCount {
    fn of(c: &DirCount, subtree: u64) -> Self {
        let a = &c.ages;
        Self {
            own_entries: c.own_entries,
            subtree_inodes: subtree,
            ages: [a.under_hour, a.under_day, a.under_week, a.older],
            users: c.users.top.clone(),
            other: c.users.other,
        }
    }

    fn into_count(self, path: PathBuf) -> DirCount {
        let [under_hour, under_day, under_week, older] = self.ages;
        DirCount {
            path,
            own_entries: self.own_entries,
            subtree_inodes: self.subtree_inodes,
            ages: Ages {
                under_hour,
                under_day,
                under_week,
                older,
            },
            users: Users {
                top: self.users,
                other: self.other,
            },
        }
    }
}

fn push_skip(out: &mut Outcome, s: Skip, keep: usize) {
    out.skipped += 1;
    if out.skips.len() < keep.max(1) {
        out.skips.push(s);
    }
}

fn skip(path: PathBuf, e: i32, doing: &str) -> Skip {
    Skip {
        path,
        reason: reason_of(e),
        detail: format!("{doing}: {}", std::io::Error::from_raw_os_error(e)),
    }
}

/// The current path: the root, then the name of every open directory below it.
fn path_of(stack: &[Frame]) -> PathBuf {
    let mut p = PathBuf::new();
    for f in stack {
        p.push(&f.name);
    }
    p
}

/// Inodes counted in directories still open (for the progress line).
fn sum_open(stack: &[Frame]) -> u64 {
    stack.iter().map(|f| f.count.subtree_inodes).sum()
}

fn fstat(dir: *mut libc::DIR) -> Result<libc::stat, i32> {
    // SAFETY: `dir` is an open stream; `st` is written by the kernel.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(libc::dirfd(dir), &mut st) != 0 {
            return Err(errno());
        }
        Ok(st)
    }
}

fn fstatat(fd: libc::c_int, name: &CStr) -> Result<libc::stat, i32> {
    // SAFETY: a NUL-terminated name relative to an open directory fd.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(fd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) != 0 {
            return Err(errno());
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp tree: a/b with 50 files (2 days old), c with 5, gone with 3.
    fn tree(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("census-walk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, n) in [("a/b", 50), ("c", 5), ("gone", 3)] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            for i in 0..n {
                let f = std::fs::File::create(root.join(dir).join(format!("f{i}"))).unwrap();
                if dir == "a/b" {
                    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
                    f.set_modified(old).unwrap();
                }
            }
        }
        root
    }

    fn walk(root: &Path, budget: Duration, on_open: &mut dyn FnMut(&Path)) -> Outcome {
        Walk {
            budget,
            top: 10,
            progress_every: Duration::from_secs(3600),
            on_progress: &mut |_| {},
            on_open,
        }
        .run(root)
    }

    #[test]
    fn counts_own_entries_subtrees_ages_and_skips_pass_through_directories() {
        let root = tree("counts");
        let o = walk(&root, Duration::from_secs(60), &mut |_| {});
        std::fs::remove_dir_all(&root).unwrap();
        // root + a + b + 50 + c + 5 + gone + 3
        assert_eq!(o.root.subtree_inodes, 1 + 1 + 1 + 50 + 1 + 5 + 1 + 3);
        assert_eq!(o.root.own_entries, 3);
        assert_eq!(o.directories, 5);
        assert_eq!(o.root.ages.files(), 58);
        assert_eq!(o.root.ages.under_week, 50);
        let paths: Vec<_> = o
            .top
            .iter()
            .map(|d| d.path.strip_prefix(&root).unwrap().to_owned())
            .collect();
        // `a` holds nothing but b (>= 90%): left out for b.
        assert_eq!(paths, [Path::new("a/b"), Path::new("c"), Path::new("gone")]);
        let b = &o.top[0];
        assert_eq!(
            (b.own_entries, b.subtree_inodes, b.ages.under_week),
            (50, 51, 50)
        );
        assert_eq!(b.users.first().map(|u| u.1), Some(50));
        assert!(!o.partial && o.skipped == 0);
    }

    #[test]
    fn a_directory_removed_while_read_is_skipped_and_the_rest_counted() {
        let root = tree("removed");
        let gone = root.join("gone");
        let o = walk(&root, Duration::from_secs(60), &mut |p| {
            if p == gone {
                std::fs::remove_dir_all(p).unwrap();
            }
        });
        let unreadable = root.join("locked");
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(o.skipped, 1, "{:?}", o.skips);
        assert_eq!(o.skips[0].path, gone);
        assert_eq!(o.skips[0].reason, SkipReason::Removed);
        assert_eq!(o.root.subtree_inodes, 1 + 1 + 1 + 50 + 1 + 5 + 1);
        // A root that cannot be opened: one skipped line, nothing counted.
        let o = walk(&unreadable, Duration::from_secs(60), &mut |_| {});
        assert_eq!((o.skipped, o.root.subtree_inodes), (1, 0));
        assert_eq!(o.skips[0].reason, SkipReason::Removed);
    }

    /// Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this thread's effective set
    /// (root reads a mode-000 directory with them; the tracer as deployed may not have
    /// them all).
    fn drop_dac_caps() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut h = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut d = [Data::default(); 2];
        // SAFETY: capget/capset on this thread with version-3 structures.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
            // CAP_DAC_OVERRIDE is 1, CAP_DAC_READ_SEARCH 2 (capability.h).
            d[0].effective &= !((1 << 1) | (1 << 2));
            assert_eq!(libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()), 0);
        }
    }

    #[test]
    fn a_directory_it_may_not_read_is_skipped_as_permission_denied() {
        let root = tree("denied");
        let locked = root.join("c");
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        let r = root.clone();
        let o = std::thread::spawn(move || {
            drop_dac_caps();
            walk(&r, Duration::from_secs(60), &mut |_| {})
        })
        .join()
        .unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(o.skipped, 1, "{:?}", o.skips);
        assert_eq!(o.skips[0].path, locked);
        assert_eq!(o.skips[0].reason, SkipReason::PermissionDenied);
        assert_eq!(
            o.skips[0].detail,
            "opening: Permission denied (os error 13)"
        );
        // c itself is counted (listed in the root), its 5 files are not.
        assert_eq!(o.root.subtree_inodes, 1 + 1 + 1 + 50 + 1 + 1 + 3);
    }

    #[test]
    fn the_budget_ends_the_walk_as_partial() {
        let root = tree("budget");
        let o = walk(&root, Duration::ZERO, &mut |_| {});
        std::fs::remove_dir_all(&root).unwrap();
        // The clock is read every CLOCK_EVERY entries: a tree smaller than that ends
        // before its first look; a larger one stops there.
        assert!(!o.partial, "61 entries < {CLOCK_EVERY}");
        let big = std::env::temp_dir().join(format!("census-walk-big-{}", std::process::id()));
        std::fs::create_dir_all(&big).unwrap();
        for i in 0..(2 * CLOCK_EVERY) {
            std::fs::File::create(big.join(format!("f{i}"))).unwrap();
        }
        let o = walk(&big, Duration::ZERO, &mut |_| {});
        std::fs::remove_dir_all(&big).unwrap();
        assert!(o.partial);
        // Stopped at its first look: 255 entries read (with . and ..), and the root.
        assert_eq!(o.root.subtree_inodes, CLOCK_EVERY - 2);
    }
}
