//! Inode creations on every filesystem, not only ext4 (whose own tracepoints count it):
//! - the VFS path, where the kernel allows fentry or kprobes: `inode_init_owner()`,
//!   which every filesystem that keeps inodes calls while it sets up a new one (ext4,
//!   xfs, btrfs, tmpfs, overlayfs, ...), with the new inode and its parent directory;
//! - the syscall path, on tracepoint-only kernels: the exit of a create syscall that
//!   worked. An open(O_CREAT) that returns a file descriptor created the file exactly
//!   when the kernel marked the open file FMODE_CREATED (an O_CREAT open of an existing
//!   file does not); the file gives the filesystem and the parent directory.
//!   mkdir/mknod/symlink return 0 and no file: their path argument goes to userspace
//!   with the directory it is relative to (the process's root for an absolute path,
//!   its cwd or the dirfd's directory otherwise), where it is placed.
//!
//! Struct members are read at offsets userspace took from the kernel's BTF (passed in
//! as globals, like tracepoint fields); which path runs is set by userspace in
//! INODES_FLAGS once it knows which hooks attached (zero until then: nothing counted).
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{fentry, kprobe, map},
    maps::Array,
    programs::{FEntryContext, ProbeContext},
};
use tracer_common::{
    EventKind,
    inodes::{
        AT_FDCWD, CREATIONS_SYSCALLS, CREATIONS_VFS, DevTgid, DirKey, FLAG_COUNT, FLAG_CREATIONS,
        FLAG_EXT4_TRACED, Pending,
    },
};

use super::{
    INODES_DIRS, INODES_PENDING, INODES_PROCS, count_created, current_tid, send_path, wanted,
};
use crate::common::{counted, current_tgid};

/// Member offsets from the kernel's BTF, set by the loader.
#[unsafe(no_mangle)]
static INODES_INODE_SB: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_INODE_INO: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_SB_DEV: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_SB_MAGIC: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_TASK_FILES: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_FILES_FDT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_FDT_MAX: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_FDT_FD: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_FILE_MODE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_FILE_INODE: Global<u32> = Global::new(0);
/// file.f_path.dentry (the two offsets added).
#[unsafe(no_mangle)]
static INODES_FILE_DENTRY: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_DENTRY_PARENT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_DENTRY_INODE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_TASK_FS: Global<u32> = Global::new(0);
/// fs_struct.root.dentry and fs_struct.pwd.dentry (the two offsets added).
#[unsafe(no_mangle)]
static INODES_FS_ROOT_DENTRY: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_FS_PWD_DENTRY: Global<u32> = Global::new(0);

/// EXT4_SUPER_MAGIC (ext2, ext3 and ext4 share it).
const EXT4_MAGIC: u64 = 0xef53;
/// FMODE_CREATED: this open created the file (include/linux/fs.h, 4.19+).
const FMODE_CREATED: u32 = 0x100000;

/// [FLAG_CREATIONS]: which path counts creations (CREATIONS_*); [FLAG_EXT4_TRACED]: 1
/// when the ext4 tracepoints count ext4's (then the paths here leave ext4 alone).
#[map]
static INODES_FLAGS: Array<u32> = Array::with_max_entries(FLAG_COUNT, 0);

#[inline(always)]
fn flag(i: u32) -> u32 {
    INODES_FLAGS.get(i).copied().unwrap_or(0)
}

/// Reads a `T` at `base + off` in kernel memory; a failure is counted.
#[inline(always)]
fn read<T>(base: u64, off: &Global<u32>) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error.
    counted(unsafe { bpf_probe_read_kernel((base + off.load() as u64) as *const T) })
}

/// Counts an inode created on the filesystem of super_block `sb` in directory `dir`;
/// returns its dev when it was counted.
#[inline(always)]
fn created(sb: u64, dir: u64) -> Option<u32> {
    let dev: u32 = read(sb, &INODES_SB_DEV)?;
    if !wanted(dev) {
        return None;
    }
    let magic: u64 = read(sb, &INODES_SB_MAGIC)?;
    if magic == EXT4_MAGIC && flag(FLAG_EXT4_TRACED) == 1 {
        return None;
    }
    count_created(dev, dir)?;
    Some(dev)
}

/// A create syscall failed with ENOSPC or EDQUOT after the VFS path counted `p.made`
/// inodes for it: the filesystem set them up, then dropped them. ext4 does so before
/// it looks for a free inode and retries ENOSPC up to three times, so one failed
/// create had counted four. Per-CPU counters wrap: a decrement on another CPU than the
/// increment sums back right in userspace. A key evicted meanwhile is left alone.
#[inline(always)]
pub fn take_back(p: &Pending) {
    let n = p.made as u64;
    let key = DevTgid {
        dev: p.made_dev,
        tgid: current_tgid(),
    };
    if let Some(c) = INODES_PROCS.get_ptr_mut(&key) {
        // SAFETY: pointer into this CPU's map value.
        unsafe { (*c).allocated = (*c).allocated.wrapping_sub(n) };
    }
    let key = DirKey {
        dev: p.made_dev,
        _pad: 0,
        ino: p.made_dir,
    };
    if let Some(c) = INODES_DIRS.get_ptr_mut(&key) {
        // SAFETY: as above.
        unsafe { *c = (*c).wrapping_sub(n) };
    }
}

/// inode_init_owner(idmap or user namespace, struct inode *inode, const struct inode
/// *dir, umode_t mode): a filesystem sets up new inode `inode` in directory `dir`
/// (NULL for a filesystem's root and for internal inodes such as memfd's: skipped).
/// The first argument's type changed in 6.3; the positions did not.
#[inline(always)]
fn try_init_owner(inode: u64, dir: u64) -> Option<u32> {
    if dir == 0 || inode == 0 || flag(FLAG_CREATIONS) != CREATIONS_VFS {
        return Some(0);
    }
    let sb: u64 = read(inode, &INODES_INODE_SB)?;
    let dir_ino: u64 = read(dir, &INODES_INODE_INO)?;
    let dev = created(sb, dir_ino)?;
    // Inside a create syscall: remember it, in case the create fails (see take_back).
    // A thread's entry is that of its last create; an inode set up outside one (an
    // overlayfs copy-up in a plain open) is added to it but only taken back by an
    // ENOSPC or EDQUOT exit, which only a create returns.
    if let Some(e) = INODES_PENDING.get_ptr_mut(&current_tid()) {
        // SAFETY: pointer into a map value.
        unsafe {
            (*e).made += 1;
            (*e).made_dev = dev;
            (*e).made_dir = dir_ino;
        }
    }
    Some(0)
}

#[fentry(function = "inode_init_owner")]
pub fn inodes_init_owner_fentry(ctx: FEntryContext) -> u32 {
    try_init_owner(ctx.arg(1), ctx.arg(2)).unwrap_or(0)
}

/// kprobe/inode_init_owner: as the fentry program where BPF trampolines are refused.
#[kprobe]
pub fn inodes_init_owner_kprobe(ctx: ProbeContext) -> u32 {
    try_init_owner(ctx.arg(1).unwrap_or(0), ctx.arg(2).unwrap_or(0)).unwrap_or(0)
}

/// What a create syscall returns when it works.
#[derive(Clone, Copy)]
pub enum Returns {
    /// The new file's descriptor (open, openat, openat2, creat).
    Fd,
    /// Zero (mkdir, mknod, symlink and their *at forms).
    Zero,
}

/// A create syscall returned `ret` >= 0: on the syscall path, count what it created.
#[inline(always)]
pub fn succeeded(ret: i64, returns: Returns) -> Option<u32> {
    if flag(FLAG_CREATIONS) != CREATIONS_SYSCALLS {
        return Some(0);
    }
    match returns {
        Returns::Fd => opened(ret as u64),
        Returns::Zero => made_at(),
    }
}

/// A mkdir/mknod/symlink worked: sends its path argument with the (dev, ino) of the
/// directory that path starts from, for userspace to place. A path without a slash is
/// placed from that alone, exactly, even once the process has exited (`mkdir x`).
#[inline(always)]
fn made_at() -> Option<u32> {
    // SAFETY: plain map lookup of a Copy value.
    let p = unsafe { INODES_PENDING.get(&current_tid()) }.copied()?;
    // SAFETY: the helper checks the user address.
    let first: u8 = counted(unsafe { bpf_probe_read_user(p.path_ptr as *const u8) })?;
    // SAFETY: the helper returns the current task; it is only read through the helper.
    let task = unsafe { bpf_get_current_task() };
    let dentry: u64 = if first == b'/' || p.dfd == AT_FDCWD {
        let fs: u64 = read(task, &INODES_TASK_FS)?;
        let at = if first == b'/' {
            &INODES_FS_ROOT_DENTRY
        } else {
            &INODES_FS_PWD_DENTRY
        };
        read(fs, at)?
    } else {
        read(file_of(task, p.dfd as u32 as u64)?, &INODES_FILE_DENTRY)?
    };
    let dir: u64 = read(dentry, &INODES_DENTRY_INODE)?;
    let sb: u64 = read(dir, &INODES_INODE_SB)?;
    let dev: u32 = read(sb, &INODES_SB_DEV)?;
    let ino: u64 = read(dir, &INODES_INODE_INO)?;
    send_path(EventKind::InodesMadeAt, dev, ino)?;
    Some(0)
}

/// The `struct file` of descriptor `fd` of `task` (0 when it is not open).
#[inline(always)]
fn file_of(task: u64, fd: u64) -> Option<u64> {
    let files: u64 = read(task, &INODES_TASK_FILES)?;
    let fdt: u64 = read(files, &INODES_FILES_FDT)?;
    let max: u32 = read(fdt, &INODES_FDT_MAX)?;
    if fd >= max as u64 {
        return None;
    }
    let array: u64 = read(fdt, &INODES_FDT_FD)?;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let file: u64 = counted(unsafe { bpf_probe_read_kernel((array + 8 * fd) as *const u64) })?;
    (file != 0).then_some(file)
}

/// File descriptor `fd` of the current process was just opened by an O_CREAT-capable
/// open: counts it when the open created the file. Costs six kernel reads per
/// successful open of the machine (the flags are not in the exit record), only on
/// kernels without the VFS hook.
#[inline(always)]
fn opened(fd: u64) -> Option<u32> {
    // SAFETY: the helper returns the current task; it is only read through the helper.
    let task = unsafe { bpf_get_current_task() };
    let file = file_of(task, fd)?;
    let mode: u32 = read(file, &INODES_FILE_MODE)?;
    if mode & FMODE_CREATED == 0 {
        return Some(0);
    }
    let inode: u64 = read(file, &INODES_FILE_INODE)?;
    let sb: u64 = read(inode, &INODES_INODE_SB)?;
    let dentry: u64 = read(file, &INODES_FILE_DENTRY)?;
    let parent: u64 = read(dentry, &INODES_DENTRY_PARENT)?;
    let dir: u64 = read(parent, &INODES_DENTRY_INODE)?;
    let dir_ino: u64 = read(dir, &INODES_INODE_INO)?;
    created(sb, dir_ino).map(|_| 0)
}
