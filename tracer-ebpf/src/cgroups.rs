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
        bpf_get_current_cgroup_id, bpf_get_current_comm, generated::bpf_probe_read_kernel_str,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use tracer_common::{
    EventHeader, EventKind,
    cgroups::{
        ATTACH_CAPACITY, AttachCount, AttachKey, COUNT_ATTACH, COUNT_MKDIR, COUNT_RELEASE,
        COUNT_RMDIR, COUNT_SLOTS, CgroupEvent, PATH_LEN, count_slot,
    },
};

use crate::common::{
    READ_ERRORS, add, current_tgid, field, get_or_insert, now_ns, reserve, submit,
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
