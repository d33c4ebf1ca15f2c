//! inodes: who allocates and frees inodes on which filesystem, in which directories,
//! and which creates fail with ENOSPC.
//!
//! Everything is counted in kernel maps that userspace reads once per report: a burst
//! of millions of files costs a few map updates per file and no copy to userspace. The
//! path of a create is read from user memory and sent on the ring buffer only the first
//! time a directory (or a failing process) is seen.
use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::TracePointContext,
};
use tracer_common::{
    EventHeader, EventKind,
    inodes::{
        AT_FDCWD, DEV_CAPACITY, DIR_CAPACITY, DevCounts, DevTgid, DirKey, ENOSPC_CAPACITY,
        PENDING_CAPACITY, PROC_CAPACITY, PathArg, PathEvent, Pending, ProcCounts,
    },
};

use crate::common::{counted, current_tgid, emit, field, inserted, now_ns};

mod creates;

/// Field offsets from tracefs `format` files, set by the loader.
#[unsafe(no_mangle)]
static INODES_ALLOC_DEV: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_ALLOC_DIR: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_FREE_DEV: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static INODES_REQUEST_DEV: Global<u32> = Global::new(0);
/// Offset of the first argument of a syscalls:sys_enter_* record (from
/// sys_enter_openat's format). Every sys_enter_* record is the same struct
/// (`syscall_trace_enter`: header, nr, then the arguments as 8-byte slots), so
/// argument i is at this offset + 8 * i for each of them.
#[unsafe(no_mangle)]
static INODES_SYSCALL_ARG0: Global<u32> = Global::new(0);
/// Offset of `ret` in syscalls:sys_exit_* records (one struct for all of them).
#[unsafe(no_mangle)]
static INODES_SYSCALL_RET: Global<u32> = Global::new(0);

/// `--fs`: only this kernel dev_t (0: every filesystem).
#[unsafe(no_mangle)]
static INODES_TARGET_DEV: Global<u32> = Global::new(0);

const ENOSPC: i64 = 28;
const EDQUOT: i64 = 122;
const O_CREAT: u64 = 0o100;
/// __O_TMPFILE: an unnamed inode, allocated all the same.
const O_TMPFILE: u64 = 0o20_000_000;
const BPF_NOEXIST: u64 = 1;

// Counters are per-CPU maps: an increment needs no atomic (the BPF target has no
// atomic fetch-add in Rust's core) and never races; userspace sums the CPUs.

/// (dev, tgid) -> inodes allocated and freed, comm when first seen (on the CPU that
/// inserted the key; the other CPUs' values have an empty comm).
#[map]
static INODES_PROCS: LruPerCpuHashMap<DevTgid, ProcCounts> =
    LruPerCpuHashMap::with_max_entries(PROC_CAPACITY, 0);

/// (dev, parent dir ino) -> inodes allocated there.
#[map]
static INODES_DIRS: LruPerCpuHashMap<DirKey, u64> =
    LruPerCpuHashMap::with_max_entries(DIR_CAPACITY, 0);

/// dev -> totals. Not derivable by summing INODES_PROCS in userspace: that map keeps one
/// entry per (fs, process) and never deletes one when its process exits, so a long run
/// (a build, a cron job forking a process per file) fills it and LRU eviction drops the
/// least recently active processes with their counts; the sum would then undercount and
/// the NET/S rate and exhaustion ETA would be wrong. This map has one entry per ext4
/// filesystem and is not evicted in practice; it costs one lookup per alloc and free.
#[map]
static INODES_DEVS: LruPerCpuHashMap<u32, DevCounts> =
    LruPerCpuHashMap::with_max_entries(DEV_CAPACITY, 0);

/// (dev, tgid) -> creates that failed with ENOSPC (dev 0: no ext4 inode request).
#[map]
static INODES_ENOSPC: LruPerCpuHashMap<DevTgid, u64> =
    LruPerCpuHashMap::with_max_entries(ENOSPC_CAPACITY, 0);

/// thread id -> the last create syscall it entered (path argument, and the ext4 device
/// that was asked for an inode). Overwritten by the thread's next create, not deleted
/// at syscall exit (see try_exit).
#[map]
static INODES_PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(PENDING_CAPACITY, 0);

/// Scratch space to build the path records (the BPF stack is 512 bytes).
#[map]
static INODES_PATH_SCRATCH: PerCpuArray<PathEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn wanted(dev: u32) -> bool {
    let target = INODES_TARGET_DEV.load();
    target == 0 || dev == target
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// This CPU's value for `key`, inserted (as `init` on this CPU, zero on the others)
/// when absent. Returns whether it was absent.
#[inline(always)]
fn per_cpu<K, V>(
    map: &LruPerCpuHashMap<K, V>,
    key: &K,
    init: impl Fn() -> V,
) -> Option<(*mut V, bool)> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some((p, false));
    }
    // BPF_NOEXIST: another CPU may have inserted it meanwhile; look it up again.
    inserted(map.insert(key, &init(), BPF_NOEXIST));
    Some((map.get_ptr_mut(key)?, true))
}

#[inline(always)]
fn dev_counts(dev: u32) -> Option<*mut DevCounts> {
    Some(per_cpu(&INODES_DEVS, &dev, DevCounts::default)?.0)
}

#[inline(always)]
fn proc_counts(dev: u32) -> Option<*mut ProcCounts> {
    let key = DevTgid {
        dev,
        tgid: current_tgid(),
    };
    let init = || ProcCounts {
        allocated: 0,
        freed: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    Some(per_cpu(&INODES_PROCS, &key, init)?.0)
}

/// Sends the path of this thread's create (a rare record: see PathEvent).
#[inline(always)]
fn send_path(kind: EventKind, dev: u32, ino: u64) -> Option<()> {
    let s = INODES_PATH_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch slot; preemption is off while the program runs.
    let s = unsafe { &mut *s };
    let tgid = current_tgid();
    s.header = EventHeader {
        kind: kind as u32,
        tgid,
        ts_ns: now_ns(),
    };
    s.dev = dev;
    s._pad = 0;
    s.ino = ino;
    s.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    fill_path(&mut s.first);
    emit(s);
    Some(())
}

/// Copies the path argument of this thread's create syscall into `out`.
#[inline(always)]
fn fill_path(out: &mut PathArg) {
    out.tgid = current_tgid();
    out.dfd = 0;
    out.path[0] = 0;
    // SAFETY: plain map lookup of a Copy value.
    let Some(p) = (unsafe { INODES_PENDING.get(&current_tid()) }).copied() else {
        return;
    };
    out.dfd = p.dfd;
    // SAFETY: the helper checks the user address; a fault leaves an error.
    if unsafe { bpf_probe_read_user_str_bytes(p.path_ptr as *const u8, &mut out.path) }.is_err() {
        out.path[0] = 0;
    }
}

/// ext4:ext4_allocate_inode: inode `ino` was allocated on `dev` in directory `dir`,
/// for the current task.
#[tracepoint]
pub fn inodes_alloc(ctx: TracePointContext) -> u32 {
    try_alloc(&ctx).unwrap_or(0)
}

fn try_alloc(ctx: &TracePointContext) -> Option<u32> {
    let dev: u32 = field(ctx, &INODES_ALLOC_DEV)?;
    if !wanted(dev) {
        return Some(0);
    }
    let dir: u64 = field(ctx, &INODES_ALLOC_DIR)?;
    // SAFETY: pointer into this CPU's map value.
    if let Some(d) = dev_counts(dev) {
        unsafe { (*d).allocated += 1 };
    }
    count_created(dev, dir)
}

/// Counts one inode created on `dev` in directory `dir` by the current process (per
/// process and per directory; the per-filesystem totals are the ext4 hooks' alone).
#[inline(always)]
fn count_created(dev: u32, dir: u64) -> Option<u32> {
    // SAFETY (all derefs below): pointers into this CPU's map values.
    if let Some(p) = proc_counts(dev) {
        unsafe { (*p).allocated += 1 };
    }
    let key = DirKey {
        dev,
        _pad: 0,
        ino: dir,
    };
    let (c, new) = per_cpu(&INODES_DIRS, &key, || 0)?;
    unsafe { *c += 1 };
    if new {
        // First inode in this directory: tell userspace the path the process used.
        send_path(EventKind::InodesNewDir, dev, dir)?;
    }
    Some(0)
}

/// ext4:ext4_free_inode: inode `ino` on `dev` is freed (last link and last reference
/// gone), in the context of the task that dropped it.
#[tracepoint]
pub fn inodes_free(ctx: TracePointContext) -> u32 {
    try_free(&ctx).unwrap_or(0)
}

fn try_free(ctx: &TracePointContext) -> Option<u32> {
    let dev: u32 = field(ctx, &INODES_FREE_DEV)?;
    if !wanted(dev) {
        return Some(0);
    }
    // SAFETY (both): pointers into this CPU's map values.
    if let Some(d) = dev_counts(dev) {
        unsafe { (*d).freed += 1 };
    }
    let p = proc_counts(dev)?;
    unsafe { (*p).freed += 1 };
    Some(0)
}

/// ext4:ext4_request_inode: a create on `dev` asks for an inode (fires before the
/// allocator looks for a free one, so also for creates that then fail with ENOSPC).
#[tracepoint]
pub fn inodes_request(ctx: TracePointContext) -> u32 {
    try_request(&ctx).unwrap_or(0)
}

fn try_request(ctx: &TracePointContext) -> Option<u32> {
    let dev: u32 = field(ctx, &INODES_REQUEST_DEV)?;
    let p = INODES_PENDING.get_ptr_mut(&current_tid())?;
    // SAFETY: pointer into a map value.
    unsafe { (*p).dev = dev };
    Some(0)
}

#[inline(always)]
fn arg(ctx: &TracePointContext, i: u32) -> Option<u64> {
    // SAFETY: read_at goes through bpf_probe_read_kernel, which checks the address.
    counted(unsafe { ctx.read_at::<u64>((INODES_SYSCALL_ARG0.load() + 8 * i) as usize) })
}

/// Which calls of a syscall create an inode.
#[derive(Clone, Copy)]
enum Creates {
    Always,
    /// When the flags argument at this index has O_CREAT or O_TMPFILE.
    Flags(u32),
    /// openat2: the flags are the first field of the `struct open_how` at this index.
    OpenHow(u32),
}

/// syscalls:sys_enter_<create syscall>: remember the path argument of the create.
#[inline(always)]
fn try_enter(ctx: &TracePointContext, dfd: Option<u32>, path: u32, c: Creates) -> Option<u32> {
    let flags = match c {
        Creates::Always => O_CREAT,
        Creates::Flags(i) => arg(ctx, i)?,
        // SAFETY: the helper checks the user address.
        Creates::OpenHow(i) => unsafe { bpf_probe_read_user(arg(ctx, i)? as *const u64) }.ok()?,
    };
    if flags & (O_CREAT | O_TMPFILE) == 0 {
        return Some(0);
    }
    let dfd = match dfd {
        Some(i) => arg(ctx, i)? as i32,
        None => AT_FDCWD,
    };
    let p = Pending {
        path_ptr: arg(ctx, path)?,
        dfd,
        ..Pending::default()
    };
    let tid = current_tid();
    // Overwrite the thread's entry in place when it has one: cheaper than an LRU
    // insert, which allocates a new element.
    match INODES_PENDING.get_ptr_mut(&tid) {
        // SAFETY: pointer into a map value.
        Some(e) => unsafe { *e = p },
        None => {
            inserted(INODES_PENDING.insert(&tid, &p, 0));
        }
    }
    Some(0)
}

/// syscalls:sys_exit_<create syscall>: `ret` -28 is a create that failed with ENOSPC.
#[inline(always)]
fn try_exit(ctx: &TracePointContext, returns: creates::Returns) -> Option<u32> {
    // The common case costs one field read: the thread's pending entry is left in
    // place (the next create overwrites it), so no map operation runs per syscall.
    // A stale entry can only lend a wrong path to an inode allocated outside a create
    // syscall, and userspace accepts a path only when stat() gives that directory.
    let ret: i64 = field(ctx, &INODES_SYSCALL_RET)?;
    if ret >= 0 {
        // A create that worked: counted here only on kernels without the VFS hook.
        return creates::succeeded(ret, returns);
    }
    if ret != -ENOSPC && ret != -EDQUOT {
        return Some(0);
    }
    let tid = current_tid();
    let e = INODES_PENDING.get_ptr_mut(&tid)?;
    // SAFETY: pointer into a map value; copied out, then its VFS count is taken back
    // once (the create set up inodes that the filesystem dropped).
    let p = unsafe { *e };
    if p.made > 0 {
        creates::take_back(&p);
        unsafe { (*e).made = 0 };
    }
    if ret != -ENOSPC {
        return Some(0);
    }
    if !(p.dev == 0 || wanted(p.dev)) {
        return Some(0);
    }
    let key = DevTgid {
        dev: p.dev,
        tgid: current_tgid(),
    };
    let (c, new) = per_cpu(&INODES_ENOSPC, &key, || 0)?;
    // SAFETY: pointer into this CPU's map value.
    unsafe { *c += 1 };
    if new {
        let _ = send_path(EventKind::InodesEnospc, p.dev, 0);
    }
    // Used: a later failure without a create enter is not put on this path.
    let _ = INODES_PENDING.remove(&tid);
    Some(0)
}

/// One enter and one exit program per create-type syscall. Arguments are given by
/// index: the dirfd (None: relative to the cwd), the path, when it creates, and what
/// it returns on success (a file descriptor or zero).
macro_rules! create_syscall {
    ($enter:ident, $exit:ident, dfd: $dfd:expr, path: $path:expr, creates: $c:expr, returns: $r:ident) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            try_enter(&ctx, $dfd, $path, $c).unwrap_or(0)
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            try_exit(&ctx, creates::Returns::$r).unwrap_or(0)
        }
    };
}

// openat(dfd, filename, flags, mode)
create_syscall!(inodes_enter_openat, inodes_exit_openat, dfd: Some(0), path: 1, creates: Creates::Flags(2), returns: Fd);
// open(filename, flags, mode)
create_syscall!(inodes_enter_open, inodes_exit_open, dfd: None, path: 0, creates: Creates::Flags(1), returns: Fd);
// creat(pathname, mode)
create_syscall!(inodes_enter_creat, inodes_exit_creat, dfd: None, path: 0, creates: Creates::Always, returns: Fd);
// openat2(dfd, filename, how, usize)
create_syscall!(inodes_enter_openat2, inodes_exit_openat2, dfd: Some(0), path: 1, creates: Creates::OpenHow(2), returns: Fd);
// mkdirat(dfd, pathname, mode)
create_syscall!(inodes_enter_mkdirat, inodes_exit_mkdirat, dfd: Some(0), path: 1, creates: Creates::Always, returns: Zero);
// mkdir(pathname, mode)
create_syscall!(inodes_enter_mkdir, inodes_exit_mkdir, dfd: None, path: 0, creates: Creates::Always, returns: Zero);
// mknodat(dfd, filename, mode, dev)
create_syscall!(inodes_enter_mknodat, inodes_exit_mknodat, dfd: Some(0), path: 1, creates: Creates::Always, returns: Zero);
// mknod(filename, mode, dev)
create_syscall!(inodes_enter_mknod, inodes_exit_mknod, dfd: None, path: 0, creates: Creates::Always, returns: Zero);
// symlinkat(oldname, newdfd, newname)
create_syscall!(inodes_enter_symlinkat, inodes_exit_symlinkat, dfd: Some(1), path: 2, creates: Creates::Always, returns: Zero);
// symlink(oldname, newname)
create_syscall!(inodes_enter_symlink, inodes_exit_symlink, dfd: None, path: 1, creates: Creates::Always, returns: Zero);
