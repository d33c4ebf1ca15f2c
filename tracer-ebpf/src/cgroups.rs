//! cgroups: who creates and removes cgroups, which removed ones stay dying, and how
//! long removal-to-free takes.
//!
//! mkdir, rmdir and release are copied to userspace one record each (their rate is
//! bounded by the cost of creating a cgroup, and userspace needs the path and the
//! caller); they are also counted per hierarchy in a per-CPU array, so the totals stay
//! exact when the ring buffer overflows. Task moves (attach) are only counted, per
//! (destination cgroup, mover) in an LRU map.
use aya_ebpf::{
    EbpfContext as _, Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task,
        bpf_probe_read_kernel, generated::bpf_probe_read_kernel_str,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use tracer_common::{
    EventHeader, EventKind,
    cgroups::{
        ATTACH_CAPACITY, AttachCount, AttachKey, COUNT_ATTACH, COUNT_MKDIR, COUNT_RELEASE,
        COUNT_RMDIR, COUNT_SLOTS, CgroupEvent, PAGECACHE_CAPACITY, PATH_LEN, PC_ADDS, PC_NEW_KEYS,
        PC_NO_MEMCG, PC_ROOT, PC_SLOTS, PageCacheCount, PageCacheKey, count_slot,
    },
};

use crate::common::{
    READ_ERRORS, add, counted, current_tgid, field, get_or_insert, now_ns, reserve, submit,
};

/// Field offsets from tracefs `format` files, set by the loader. cgroup_mkdir,
/// cgroup_rmdir and cgroup_release share one event class (same layout); the loader
/// checks that and passes cgroup_mkdir's offsets for all three.
#[unsafe(no_mangle)]
static CGROUPS_ROOT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_LEVEL: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_ID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_PATH: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_ATTACH_ROOT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_ATTACH_ID: Global<u32> = Global::new(0);

/// `--hierarchy`: only this hierarchy id plus one (0: all hierarchies).
#[unsafe(no_mangle)]
static CGROUPS_ROOT_FILTER: Global<u32> = Global::new(0);

#[inline(always)]
fn wanted(root: i32) -> bool {
    let f = CGROUPS_ROOT_FILTER.load();
    f == 0 || root >= 0 && f == root as u32 + 1
}

/// Per hierarchy: mkdir, rmdir, release and attach counts, per CPU.
#[map]
static CGROUPS_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT_SLOTS, 0);

/// (destination cgroup, mover tgid) -> tasks moved there, mover's comm.
#[map]
static CGROUPS_ATTACH: LruHashMap<AttachKey, AttachCount> =
    LruHashMap::with_max_entries(ATTACH_CAPACITY, 0);

/// cgroup:cgroup_mkdir: the current task created cgroup `id` (`path`, at depth
/// `level`) in hierarchy `root`.
#[tracepoint]
pub fn cgroups_mkdir(ctx: TracePointContext) -> u32 {
    record(&ctx, EventKind::CgroupMkdir, COUNT_MKDIR).unwrap_or(0)
}

/// cgroup:cgroup_rmdir: the current task removed cgroup `id`; from now on it is dying
/// until cgroup_release fires for it.
#[tracepoint]
pub fn cgroups_rmdir(ctx: TracePointContext) -> u32 {
    record(&ctx, EventKind::CgroupRmdir, COUNT_RMDIR).unwrap_or(0)
}

/// cgroup:cgroup_release: the last reference to removed cgroup `id` was dropped and
/// it is being freed (runs in a kernel worker, not in the remover).
#[tracepoint]
pub fn cgroups_release(ctx: TracePointContext) -> u32 {
    record(&ctx, EventKind::CgroupRelease, COUNT_RELEASE).unwrap_or(0)
}

#[inline(always)]
fn record(ctx: &TracePointContext, kind: EventKind, count: u32) -> Option<u32> {
    // Every fallible read happens before the reserve: a reserved record must be
    // submitted or discarded on every path, or the verifier rejects the program.
    let root: i32 = field(ctx, &CGROUPS_ROOT)?;
    if !wanted(root) {
        return Some(0);
    }
    add(&CGROUPS_COUNTS, count_slot(root, count), 1);
    let level: i32 = field(ctx, &CGROUPS_LEVEL)?;
    let id: u64 = field(ctx, &CGROUPS_ID)?;
    // __data_loc: the low 16 bits are the string's offset in the record, the high 16
    // its length (NUL included).
    let loc: u32 = field(ctx, &CGROUPS_PATH)?;
    // Release runs in a kernel worker: its caller means nothing.
    let (comm, caller_cgroup2) = if kind == EventKind::CgroupRelease {
        ([0u8; 16], 0)
    } else {
        // SAFETY: helper without arguments.
        (bpf_get_current_comm().unwrap_or([0; 16]), unsafe {
            bpf_get_current_cgroup_id()
        })
    };
    let mut entry = reserve::<CgroupEvent>()?;
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved record of the right size; every field is
    // written before submit. The string read is bounded by PATH_LEN and checked by
    // bpf_probe_read_kernel_str.
    unsafe {
        (*ev).header = EventHeader {
            kind: kind as u32,
            tgid: current_tgid(),
            ts_ns: now_ns(),
        };
        (*ev).id = id;
        (*ev).caller_cgroup2 = caller_cgroup2;
        (*ev).root = root;
        (*ev).level = level;
        (*ev)._pad = 0;
        (*ev).comm = comm;
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        let n =
            bpf_probe_read_kernel_str((*ev).path.as_mut_ptr().cast(), PATH_LEN as u32, src.cast());
        // n counts the NUL; a failed read (n < 0) leaves an empty path, counted.
        (*ev).path_len = if n > 0 { (n - 1) as u32 } else { 0 };
        if n < 0 {
            add(&READ_ERRORS, 0, 1);
        }
    }
    submit(entry);
    Some(0)
}

/// cgroup:cgroup_attach_task: a task was moved into cgroup `dst_id` of hierarchy
/// `dst_root` by the current process (a write to cgroup.procs, or a clone into it):
/// counted per (destination, mover), nothing is copied out.
#[tracepoint]
pub fn cgroups_attach(ctx: TracePointContext) -> u32 {
    try_attach(&ctx).unwrap_or(0)
}

fn try_attach(ctx: &TracePointContext) -> Option<u32> {
    let root: i32 = field(ctx, &CGROUPS_ATTACH_ROOT)?;
    if !wanted(root) {
        return Some(0);
    }
    add(&CGROUPS_COUNTS, count_slot(root, COUNT_ATTACH), 1);
    let id: u64 = field(ctx, &CGROUPS_ATTACH_ID)?;
    let key = AttachKey {
        id,
        root,
        tgid: current_tgid(),
    };
    // The initial value is built on the stack from runtime values. (A `&0` here, a
    // promoted constant in .rodata, was read back as 262144, i.e. WAKEUP_BYTES at the
    // start of .rodata, after loading.)
    let init = AttachCount {
        tasks: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let c = get_or_insert(&CGROUPS_ATTACH, &key, &init)?;
    // SAFETY: pointer from a map lookup; a rare race between CPUs undercounts by one.
    unsafe { (*c).tasks += 1 };
    Some(0)
}

/// filemap:mm_filemap_add_to_page_cache field offsets (`order` is 0 where the kernel
/// lacks the field: one page per event then).
#[unsafe(no_mangle)]
static CGROUPS_FILEMAP_INO: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_FILEMAP_DEV: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_FILEMAP_ORDER: Global<u32> = Global::new(0);

/// The current task's memory cgroup id, by kernel struct offsets from BTF (no
/// tracepoint field has it, and bpf_get_current_cgroup_id is the cgroup2 id only, not
/// the v1 memory hierarchy's): task_struct.cgroups -> css_set.subsys[memory_cgrp_id]
/// -> cgroup_subsys_state.cgroup -> cgroup.kn -> kernfs_node.id. 0: unknown (no BTF).
#[unsafe(no_mangle)]
static CGROUPS_TASK_CGROUPS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_CSS_SET_SUBSYS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_MEMORY_SUBSYS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_CSS_CGROUP: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_CGROUP_KN: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUPS_KN_ID: Global<u32> = Global::new(0);

/// Page-cache adds, new keys, adds without a memcg, adds in the root memcg, per CPU.
#[map]
static CGROUPS_PC_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PC_SLOTS, 0);

/// (memcg, dev, inode) -> pages added to the page cache by that memcg's tasks.
#[map]
static CGROUPS_PAGECACHE: LruHashMap<PageCacheKey, PageCacheCount> =
    LruHashMap::with_max_entries(PAGECACHE_CAPACITY, 0);

/// filemap:mm_filemap_add_to_page_cache: a folio (`pfn`, 2^`order` pages) of file
/// `i_ino` on device `s_dev` entered the page cache, charged to the current task's
/// memcg: counted per (memcg, file), nothing is copied out.
#[tracepoint]
pub fn cgroups_filemap_add(ctx: TracePointContext) -> u32 {
    try_filemap_add(&ctx).unwrap_or(0)
}

fn try_filemap_add(ctx: &TracePointContext) -> Option<u32> {
    add(&CGROUPS_PC_COUNTS, PC_ADDS, 1);
    let Some(memcg) = current_memcg() else {
        add(&CGROUPS_PC_COUNTS, PC_NO_MEMCG, 1);
        return Some(0);
    };
    // The root memcg (kernfs id 1) is never removed: its pages pin nothing.
    if memcg <= 1 {
        add(&CGROUPS_PC_COUNTS, PC_ROOT, 1);
        return Some(0);
    }
    let ino: u64 = field(ctx, &CGROUPS_FILEMAP_INO)?;
    let dev: u32 = field(ctx, &CGROUPS_FILEMAP_DEV)?;
    let order: u8 = match CGROUPS_FILEMAP_ORDER.load() {
        0 => 0,
        _ => field(ctx, &CGROUPS_FILEMAP_ORDER)?,
    };
    let key = PageCacheKey {
        memcg,
        ino,
        dev,
        _pad: 0,
    };
    let pages = 1u64 << (order & 15);
    if let Some(c) = CGROUPS_PAGECACHE.get_ptr_mut(&key) {
        // SAFETY: pointer from a map lookup; a rare race between CPUs undercounts.
        unsafe { (*c).pages += pages };
        return Some(0);
    }
    let init = PageCacheCount {
        pages,
        tgid: current_tgid(),
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if CGROUPS_PAGECACHE.insert(&key, &init, 0).is_ok() {
        add(&CGROUPS_PC_COUNTS, PC_NEW_KEYS, 1);
    }
    Some(0)
}

/// The current task's memcg id (see CGROUPS_TASK_CGROUPS); None when the offsets are
/// unknown or a read fails.
#[inline(always)]
fn current_memcg() -> Option<u64> {
    let kn_id = CGROUPS_KN_ID.load();
    if kn_id == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks every address; a bad one is an error.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let cset: u64 = counted(bpf_probe_read_kernel(
            task.add(CGROUPS_TASK_CGROUPS.load() as usize).cast(),
        ))?;
        let slot = CGROUPS_CSS_SET_SUBSYS.load() as usize
            + 8 * (CGROUPS_MEMORY_SUBSYS.load() & 63) as usize;
        let css: u64 = counted(bpf_probe_read_kernel((cset as *const u8).add(slot).cast()))?;
        let cgrp: u64 = counted(bpf_probe_read_kernel(
            (css as *const u8)
                .add(CGROUPS_CSS_CGROUP.load() as usize)
                .cast(),
        ))?;
        let kn: u64 = counted(bpf_probe_read_kernel(
            (cgrp as *const u8)
                .add(CGROUPS_CGROUP_KN.load() as usize)
                .cast(),
        ))?;
        counted(bpf_probe_read_kernel(
            (kn as *const u8).add(kn_id as usize).cast(),
        ))
    }
}
