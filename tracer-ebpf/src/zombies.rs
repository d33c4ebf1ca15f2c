//! zombies: who exits, who reaps (and how late), who waits, who is told (SIGCHLD).
//!
//! Per-event copies to userspace happen only for whole-process exits and their reaps;
//! forks, wait calls and SIGCHLDs are counted in maps that userspace reads per report.
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use tracer_common::{
    EventHeader, EventKind,
    zombies::{
        COUNT_EXIT_READ_FAILED, COUNT_EXITS, COUNT_FORKS, COUNT_SLOTS, COUNTER_CAPACITY,
        EXIT_BY_FIELD, EXITED_CAPACITY, FILTERED, PARENT_CAPACITY, ParentCounters, ProcEvent,
        ReapVia,
    },
};

use aya_log_ebpf::debug;

/// Forks refused with EAGAIN (the pid budgets of issue 22).
mod refusals;

use crate::common::{
    EEXIST, MAP_FULL, add, counted, current_tgid, emit, field, get_or_insert, inserted, now_ns,
};

/// Field offsets from tracefs `format` files, set by the loader.
#[unsafe(no_mangle)]
static ZOMBIES_FORK_CHILD_PID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ZOMBIES_EXIT_GROUP_DEAD: Global<u32> = Global::new(0);
/// How a whole-process exit is recognised ([`EXIT_BY_FIELD`] or
/// [`EXIT_BY_SIGNAL_LIVE`]), chosen by the loader from what this kernel offers.
#[unsafe(no_mangle)]
static ZOMBIES_EXIT_MODE: Global<u32> = Global::new(0);
/// Byte offsets of `task_struct.signal` and `signal_struct.live` from the kernel's BTF,
/// for [`EXIT_BY_SIGNAL_LIVE`] (kernels whose sched_process_exit has no `group_dead`).
#[unsafe(no_mangle)]
static ZOMBIES_TASK_SIGNAL: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ZOMBIES_SIGNAL_LIVE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ZOMBIES_FREE_PID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ZOMBIES_WAIT4_RET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ZOMBIES_SIGNAL_SIG: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ZOMBIES_SIGNAL_PID: Global<u32> = Global::new(0);

/// `-p PID`: only children of this parent (0: all). Children forked before the tracer
/// started have no fork record (ppid 0) and pass; userspace checks them in /proc.
#[unsafe(no_mangle)]
static ZOMBIES_TARGET_PPID: Global<u32> = Global::new(0);

const SIGCHLD: i32 = 17;

#[inline(always)]
fn wanted(ppid: u32) -> bool {
    let target = ZOMBIES_TARGET_PPID.load();
    target == 0 || ppid == 0 || ppid == target
}

/// child pid -> parent tgid, recorded at fork (threads included: they are cheap and
/// never looked up as an exiting process).
#[map]
static ZOMBIES_PARENT: LruHashMap<u32, u32> = LruHashMap::with_max_entries(PARENT_CAPACITY, 0);

/// tgid -> exit time, for processes that exited and have not been reaped yet.
#[map]
static ZOMBIES_EXITED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(EXITED_CAPACITY, 0);

/// tgid -> wait calls and SIGCHLDs received.
#[map]
static ZOMBIES_COUNTERS: LruHashMap<u32, ParentCounters> =
    LruHashMap::with_max_entries(COUNTER_CAPACITY, 0);

/// Global counters (forks, exits), per CPU.
#[map]
static ZOMBIES_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT_SLOTS, 0);

/// sched:sched_process_fork: `child_pid` is the new task (process or thread); the
/// current task is the parent.
#[tracepoint]
pub fn zombies_fork(ctx: TracePointContext) -> u32 {
    try_fork(&ctx).unwrap_or(0)
}

fn try_fork(ctx: &TracePointContext) -> Option<u32> {
    add(&ZOMBIES_COUNTS, COUNT_FORKS, 1);
    let child: i32 = field(ctx, &ZOMBIES_FORK_CHILD_PID)?;
    inserted(ZOMBIES_PARENT.insert(&(child as u32), &current_tgid(), 0));
    Some(0)
}

/// sched:sched_process_exit: fires for every exiting thread, with the exiting task as
/// current. The process becomes a zombie (or is autoreaped) when its last thread
/// exits: the `group_dead` field says so where the tracepoint has it (6.18 here; not
/// Debian's 6.1 or 6.12);
/// elsewhere `current->signal->live` has dropped to 0, read at BTF offsets.
#[tracepoint]
pub fn zombies_exit(ctx: TracePointContext) -> u32 {
    try_exit(&ctx).unwrap_or(0)
}

/// Whether the exiting thread leaves its process dead, or None when the kernel read
/// failed (counted: the report shows it).
#[inline(always)]
fn group_dead(ctx: &TracePointContext) -> Option<bool> {
    if ZOMBIES_EXIT_MODE.load() == EXIT_BY_FIELD {
        let v: u8 = field(ctx, &ZOMBIES_EXIT_GROUP_DEAD)?;
        return Some(v != 0);
    }
    // The exiting thread decremented signal->live before the tracepoint (do_exit), so
    // 0 means every thread of the process has passed that point.
    // SAFETY: bpf_probe_read_kernel checks both addresses; a bad one is an error.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let signal: u64 = counted(bpf_probe_read_kernel(
            task.add(ZOMBIES_TASK_SIGNAL.load() as usize).cast(),
        ))?;
        let live: i32 = counted(bpf_probe_read_kernel(
            (signal as *const u8)
                .add(ZOMBIES_SIGNAL_LIVE.load() as usize)
                .cast(),
        ))?;
        Some(live == 0)
    }
}

fn try_exit(ctx: &TracePointContext) -> Option<u32> {
    let Some(dead) = group_dead(ctx) else {
        add(&ZOMBIES_COUNTS, COUNT_EXIT_READ_FAILED, 1);
        return Some(0);
    };
    if !dead {
        return Some(0);
    }
    let tgid = current_tgid();
    let ts = now_ns();
    // SAFETY: plain map lookup of a u32 value.
    let ppid = unsafe { ZOMBIES_PARENT.get(&tgid) }.copied().unwrap_or(0);
    let keep = wanted(ppid);
    // One record per process: with signal->live, threads exiting at the same time (an
    // exit_group) can all read 0. The first to insert the tgid wins (BPF_NOEXIST); the
    // entry stays until the process is reaped, and its tgid cannot be reused before.
    // Processes filtered out by -p are kept as FILTERED so their reap sends nothing.
    let exit_ns = if keep { ts } else { FILTERED };
    // Without the entry (no room: counted) the reap finds no exit time; the record
    // still goes out, as the exit is real.
    match ZOMBIES_EXITED.insert(&tgid, &exit_ns, 1) {
        Ok(()) => {}
        Err(e) if i64::from(e) == -EEXIST => return Some(0),
        Err(_) => {
            add(&MAP_FULL, 0, 1);
        }
    }
    add(&ZOMBIES_COUNTS, COUNT_EXITS, 1);
    if !keep {
        return Some(0);
    }
    emit(&ProcEvent {
        header: EventHeader {
            kind: EventKind::ProcessExit as u32,
            tgid,
            ts_ns: ts,
        },
        pid: tgid,
        ppid,
        reaper: 0,
        via: 0,
        exit_ns: ts,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    Some(0)
}

/// syscalls:sys_exit_wait4: `ret` is the pid of the reaped child (> 0), in the
/// caller's pid namespace. A reap counts only when our fork record says the caller is
/// the child's parent, so a namespaced pid can never match a stranger.
#[tracepoint]
pub fn zombies_wait4_exit(ctx: TracePointContext) -> u32 {
    try_wait4_exit(&ctx).unwrap_or(0)
}

fn try_wait4_exit(ctx: &TracePointContext) -> Option<u32> {
    let ret: i64 = field(ctx, &ZOMBIES_WAIT4_RET)?;
    if ret <= 0 {
        return Some(0);
    }
    let pid = ret as u32;
    let reaper = current_tgid();
    // SAFETY: plain map lookups of Copy values.
    let ppid = unsafe { ZOMBIES_PARENT.get(&pid) }.copied()?;
    if ppid != reaper {
        debug!(
            ctx,
            "wait4 by {} returned pid {} whose parent is {}", reaper, pid, ppid
        );
        return Some(0);
    }
    let exit_ns = unsafe { ZOMBIES_EXITED.get(&pid) }.copied()?;
    reap(pid, ppid, reaper, ReapVia::Wait4, exit_ns);
    Some(0)
}

/// sched:sched_process_free: `pid` was released and its task struct is being freed
/// (an RCU grace period after release_task). Catches reaps that wait4 did not show.
#[tracepoint]
pub fn zombies_free(ctx: TracePointContext) -> u32 {
    try_free(&ctx).unwrap_or(0)
}

fn try_free(ctx: &TracePointContext) -> Option<u32> {
    let pid: i32 = field(ctx, &ZOMBIES_FREE_PID)?;
    let pid = pid as u32;
    // Threads and processes whose exit we did not see stop here: nothing is copied.
    // SAFETY: plain map lookups of Copy values.
    let exit_ns = unsafe { ZOMBIES_EXITED.get(&pid) }.copied()?;
    let ppid = unsafe { ZOMBIES_PARENT.get(&pid) }.copied().unwrap_or(0);
    reap(pid, ppid, 0, ReapVia::Free, exit_ns);
    Some(0)
}

#[inline(always)]
fn reap(pid: u32, ppid: u32, reaper: u32, via: ReapVia, exit_ns: u64) {
    let _ = ZOMBIES_EXITED.remove(&pid);
    let _ = ZOMBIES_PARENT.remove(&pid);
    if exit_ns == FILTERED {
        return;
    }
    emit(&ProcEvent {
        header: EventHeader {
            kind: EventKind::ProcessReap as u32,
            tgid: current_tgid(),
            ts_ns: now_ns(),
        },
        pid,
        ppid,
        reaper,
        via: via as u32,
        exit_ns,
        comm: [0; 16],
    });
}

/// sched:sched_process_wait: a task entered do_wait() (`pid` is the awaited pid, not
/// the reaped one): count wait calls per calling process.
#[tracepoint]
pub fn zombies_wait(_ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if let Some(c) = get_or_insert(&ZOMBIES_COUNTERS, &tgid, &ParentCounters::default()) {
        // SAFETY: pointer from a map lookup; concurrent increments may rarely race,
        // which can only undercount by one.
        unsafe { (*c).wait_calls += 1 };
    }
    0
}

/// signal:signal_generate: `sig` was generated for task `pid`; count SIGCHLDs per
/// receiving task (the parent's thread that the kernel notified).
#[tracepoint]
pub fn zombies_signal(ctx: TracePointContext) -> u32 {
    try_signal(&ctx).unwrap_or(0)
}

fn try_signal(ctx: &TracePointContext) -> Option<u32> {
    let sig: i32 = field(ctx, &ZOMBIES_SIGNAL_SIG)?;
    if sig != SIGCHLD {
        return Some(0);
    }
    let pid: i32 = field(ctx, &ZOMBIES_SIGNAL_PID)?;
    let c = get_or_insert(&ZOMBIES_COUNTERS, &(pid as u32), &ParentCounters::default())?;
    // SAFETY: pointer from a map lookup.
    unsafe { (*c).sigchld += 1 };
    Some(0)
}
