//! inodes: keys and values of the in-kernel counters of inode allocations, frees and
//! failed creates. A burst of millions of files only bumps counters in per-CPU maps (no
//! atomics; userspace sums the CPUs) that userspace reads once per report; only the
//! first inode of a directory and the first failure of a process send a record.
use crate::{COMM_LEN, EventHeader, plain, record};

/// Bytes of a create's path kept per directory / per failing process (the kernel's
/// PATH_MAX is 4096; a longer path is cut and then resolved by the inode walk).
pub const PATH_LEN: usize = 256;

/// Capacity of the per (device, process) allocation/free counters (LRU).
pub const PROC_CAPACITY: u32 = 16_384;
/// Capacity of the per (device, parent directory inode) counters (LRU).
pub const DIR_CAPACITY: u32 = 8_192;
/// Capacity of the per-device totals (LRU; one entry per ext4 filesystem).
pub const DEV_CAPACITY: u32 = 256;
/// Capacity of the per (device, process) ENOSPC counters (LRU).
pub const ENOSPC_CAPACITY: u32 = 4_096;
/// Capacity of the per-thread in-flight create syscalls (LRU).
pub const PENDING_CAPACITY: u32 = 16_384;

/// Slots of the INODES_FLAGS array userspace sets once the hooks are attached: which
/// path counts inode creations on filesystems other than ext4 (CREATIONS_*), and
/// whether the ext4 tracepoints count ext4's (1: the other paths leave ext4 alone).
pub const FLAG_CREATIONS: u32 = 0;
pub const FLAG_EXT4_TRACED: u32 = 1;
pub const FLAG_COUNT: u32 = 2;
/// FLAG_CREATIONS values: nothing counted, the VFS hook (fentry or kprobe on
/// inode_init_owner), the successful create syscalls.
pub const CREATIONS_OFF: u32 = 0;
pub const CREATIONS_VFS: u32 = 1;
pub const CREATIONS_SYSCALLS: u32 = 2;

/// `dfd` value of a path relative to the current directory.
pub const AT_FDCWD: i32 = -100;

/// Key of the per-process counters: kernel dev_t (major << 20 | minor) and tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DevTgid {
    pub dev: u32,
    pub tgid: u32,
}
const _: () = assert!(core::mem::size_of::<DevTgid>() == 8);

/// Inodes one process allocated and freed on one filesystem.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCounts {
    pub allocated: u64,
    pub freed: u64,
    /// comm of the process when it was first seen.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ProcCounts>() == 32);

/// Key of the per-directory counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DirKey {
    pub dev: u32,
    pub _pad: u32,
    /// Inode number of the parent directory of the new inodes.
    pub ino: u64,
}
const _: () = assert!(core::mem::size_of::<DirKey>() == 16);

/// The path argument of a create syscall, as the process passed it (maybe relative to
/// `dfd`, which belongs to `tgid`). Empty when no create syscall was in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathArg {
    pub tgid: u32,
    pub dfd: i32,
    /// NUL-terminated (cut at PATH_LEN - 1 bytes).
    pub path: [u8; PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<PathArg>() == 8 + PATH_LEN);

impl Default for PathArg {
    fn default() -> Self {
        Self {
            tgid: 0,
            dfd: 0,
            path: [0; PATH_LEN],
        }
    }
}

/// Ring-buffer record, rare by construction: the first inode allocated in a directory
/// (kind InodesNewDir; `ino` is the directory) or the first create of a process on a
/// filesystem that failed with ENOSPC (kind InodesEnospc; `ino` is 0, `dev` 0 when the
/// filesystem did not say, e.g. not ext4), or, on kernels without the VFS creation
/// hook, every mkdir/mknod/symlink that worked (kind InodesMadeAt; `dev` and `ino` are
/// the directory its path starts from: the process's root for an absolute path, else
/// its cwd or the dirfd's directory). Userspace resolves the path at once, while the
/// process still runs and its cwd can be read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathEvent {
    pub header: EventHeader,
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
    pub comm: [u8; COMM_LEN],
    pub first: PathArg,
}
const _: () = assert!(core::mem::size_of::<PathEvent>() == 16 + 16 + COMM_LEN + 8 + PATH_LEN);

/// Totals per filesystem (key: kernel dev_t).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevCounts {
    pub allocated: u64,
    pub freed: u64,
}
const _: () = assert!(core::mem::size_of::<DevCounts>() == 16);

/// A create-type syscall in flight on one thread (key: thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// User address of the path argument.
    pub path_ptr: u64,
    pub dfd: i32,
    /// dev of the ext4 filesystem that was asked for an inode (0: none yet).
    pub dev: u32,
    /// Inodes the VFS creation path counted during this syscall, on `made_dev` in
    /// directory `made_dir`: taken back if the syscall fails with ENOSPC or EDQUOT
    /// (ext4 sets an inode up before it looks for a free one, and retries).
    pub made: u32,
    pub made_dev: u32,
    pub made_dir: u64,
}
const _: () = assert!(core::mem::size_of::<Pending>() == 32);

plain!(
    DevTgid, ProcCounts, DirKey, PathArg, PathEvent, DevCounts, Pending
);
record!(PathEvent: InodesNewDir, InodesEnospc, InodesMadeAt);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{as_bytes, decode};

    #[test]
    fn path_event_round_trip() {
        let mut d = PathEvent {
            header: EventHeader {
                kind: crate::EventKind::InodesNewDir as u32,
                tgid: 42,
                ts_ns: 1,
            },
            dev: 7 << 20,
            ino: 12,
            first: PathArg {
                tgid: 42,
                dfd: AT_FDCWD,
                ..Default::default()
            },
            ..Default::default()
        };
        d.first.path[..6].copy_from_slice(b"/a/b/c");
        assert_eq!(decode::<PathEvent>(as_bytes(&d)), Some(d));
        assert_eq!(decode::<PathEvent>(&as_bytes(&d)[..311]), None);
    }
}
