//! cgroups: mkdir/rmdir/release records and the in-kernel counters' keys.
use crate::{COMM_LEN, EventHeader, plain, record};

/// Bytes of a cgroup path copied from the tracepoint, NUL included. Longer paths are
/// cut (`path_len` is then PATH_LEN - 1); kubepods paths with a pod UID and a 64-hex
/// container id fit.
pub const PATH_LEN: usize = 256;

/// CgroupMkdir, CgroupRmdir and CgroupRelease records (header.kind tells which).
/// The header's tgid is the process that made or removed the cgroup (release runs in
/// a kernel worker, so it means nothing there).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEvent {
    pub header: EventHeader,
    /// Cgroup id (the kernfs node id: the inode number of the cgroup's directory).
    pub id: u64,
    /// cgroup2 id of the calling process (mkdir, rmdir), so a short-lived creator's
    /// own cgroup can still be named; 0 for release.
    pub caller_cgroup2: u64,
    /// Hierarchy id: 0 for cgroup2, the `hierarchy` column of /proc/cgroups for v1.
    pub root: i32,
    /// Depth below the hierarchy root (root = 0).
    pub level: i32,
    /// Bytes of `path` that hold the path (no NUL); 0 when it could not be read.
    pub path_len: u32,
    pub _pad: u32,
    /// comm of the calling process (mkdir, rmdir); zero for release.
    pub comm: [u8; COMM_LEN],
    /// Path relative to the hierarchy's mount point, e.g. `/kubepods/pod1/abc`. Only
    /// the first `path_len` bytes are meaningful: the kernel does not clear the rest
    /// (it holds bytes of earlier records); read it through [`CgroupEvent::path_bytes`].
    pub path: [u8; PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<CgroupEvent>() == 320);

impl CgroupEvent {
    /// The path bytes, bounded by both `path_len` and the buffer.
    pub fn path_bytes(&self) -> &[u8] {
        &self.path[..(self.path_len as usize).min(PATH_LEN)]
    }
}

/// Key of the attach counters: who (tgid) moved tasks into which cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AttachKey {
    /// Destination cgroup id.
    pub id: u64,
    /// Destination hierarchy id.
    pub root: i32,
    /// tgid of the process that wrote cgroup.procs (or forked/cloned into it).
    pub tgid: u32,
}
const _: () = assert!(core::mem::size_of::<AttachKey>() == 16);

/// Value of the attach counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachCount {
    /// Tasks moved.
    pub tasks: u64,
    /// comm of the mover when first seen (movers such as runc are often gone by the
    /// time a report is built).
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<AttachCount>() == 24);

plain!(CgroupEvent, AttachKey, AttachCount);
record!(CgroupEvent: CgroupMkdir, CgroupRmdir, CgroupRelease);

/// Capacity of the attach counters (LRU: the least recently moved-into go first).
pub const ATTACH_CAPACITY: u32 = 16_384;

/// Hierarchy ids counted separately in `CGROUPS_COUNTS`; larger ids share the last slot.
pub const MAX_ROOTS: u32 = 32;
/// Per-hierarchy counters: slot `root * COUNT_KINDS + kind`.
pub const COUNT_MKDIR: u32 = 0;
pub const COUNT_RMDIR: u32 = 1;
pub const COUNT_RELEASE: u32 = 2;
pub const COUNT_ATTACH: u32 = 3;
pub const COUNT_KINDS: u32 = 4;
pub const COUNT_SLOTS: u32 = MAX_ROOTS * COUNT_KINDS;

/// Slot of counter `kind` for hierarchy `root` (clamped, never out of range).
pub const fn count_slot(root: i32, kind: u32) -> u32 {
    let r = if root < 0 || root as u32 >= MAX_ROOTS {
        MAX_ROOTS - 1
    } else {
        root as u32
    };
    r * COUNT_KINDS + kind
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, as_bytes, decode};

    #[test]
    fn cgroup_event_round_trip() {
        let mut ev = CgroupEvent {
            header: EventHeader {
                kind: EventKind::CgroupRmdir as u32,
                tgid: 9,
                ts_ns: 100,
            },
            id: 4242,
            caller_cgroup2: 1,
            root: 4,
            level: 2,
            path_len: 6,
            _pad: 0,
            comm: [0; COMM_LEN],
            path: [0; PATH_LEN],
        };
        ev.path[..6].copy_from_slice(b"/a/b/c");
        assert_eq!(decode::<CgroupEvent>(as_bytes(&ev)), Some(ev));
        assert_eq!(decode::<CgroupEvent>(&as_bytes(&ev)[..319]), None);
        assert_eq!(ev.path_bytes(), b"/a/b/c");
        ev.path_len = 9999;
        assert_eq!(ev.path_bytes().len(), PATH_LEN);
    }

    #[test]
    fn count_slots_are_clamped() {
        assert_eq!(count_slot(0, COUNT_RMDIR), 1);
        assert_eq!(count_slot(4, COUNT_MKDIR), 16);
        assert!(count_slot(1000, COUNT_ATTACH) < COUNT_SLOTS);
        assert!(count_slot(-1, COUNT_ATTACH) < COUNT_SLOTS);
    }
}

/// Key of the page-cache counters: pages of file (`dev`, `ino`) added to the page cache
/// by tasks of memory cgroup `memcg` (its cgroup id: the inode number of its directory,
/// which a dying memcg keeps).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageCacheKey {
    pub memcg: u64,
    pub ino: u64,
    /// The kernel's dev_t: major << 20 | minor.
    pub dev: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PageCacheKey>() == 24);

/// Value of the page-cache counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCacheCount {
    /// Pages added (a folio of order n counts 2^n).
    pub pages: u64,
    /// The first task that added a page of it: tgid and comm.
    pub tgid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<PageCacheCount>() == 32);

plain!(PageCacheKey, PageCacheCount);

/// Capacity of the page-cache counters (LRU: the files least recently added to go
/// first; evictions are counted as keys inserted minus keys present).
pub const PAGECACHE_CAPACITY: u32 = 32_768;
/// Slots of the page-cache per-CPU counters.
pub const PC_ADDS: u32 = 0;
/// Keys inserted into the counters (new (memcg, file) pairs).
pub const PC_NEW_KEYS: u32 = 1;
/// Adds whose memcg could not be read (struct offsets unknown or a failed read).
pub const PC_NO_MEMCG: u32 = 2;
/// Adds by tasks in the root memcg (never dying: not counted per file).
pub const PC_ROOT: u32 = 3;
pub const PC_SLOTS: u32 = 4;
