//! zombies, fork refusals: every fork/clone that returned -EAGAIN, counted per syscall
//! and copied out (pid, tid, comm) so userspace can name the process and its cgroup.
//!
//! The syscall exit tracepoints are the hook every kernel has. Cost: attaching any
//! syscall tracepoint puts every task's syscalls on the tracing slow path (docs/zombies.md
//! gives the measured figures), so these four are optional hooks of their own.
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use tracer_common::{
    EventHeader, EventKind,
    zombies::refusals::{EAGAIN, ForkCall, ForkRefusal, REFUSAL_SLOTS},
};

use crate::common::{add, emit, field, now_ns};

/// Offsets of the `ret` field of each syscall exit tracepoint, from tracefs.
#[unsafe(no_mangle)]
static ZOMBIES_CLONE_RET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ZOMBIES_CLONE3_RET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ZOMBIES_FORK_RET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ZOMBIES_VFORK_RET: Global<u32> = Global::new(0);

/// Refused forks per [`ForkCall`], per CPU: exact even when records are lost.
#[map]
static ZOMBIES_REFUSALS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REFUSAL_SLOTS, 0);

/// syscalls:sys_exit_clone: `ret` is the child's pid, or -errno.
#[tracepoint]
pub fn zombies_clone_exit(ctx: TracePointContext) -> u32 {
    try_refused(&ctx, &ZOMBIES_CLONE_RET, ForkCall::Clone).unwrap_or(0)
}

/// syscalls:sys_exit_clone3: `ret` is the child's pid, or -errno.
#[tracepoint]
pub fn zombies_clone3_exit(ctx: TracePointContext) -> u32 {
    try_refused(&ctx, &ZOMBIES_CLONE3_RET, ForkCall::Clone3).unwrap_or(0)
}

/// syscalls:sys_exit_fork: `ret` is the child's pid, or -errno.
#[tracepoint]
pub fn zombies_fork_exit(ctx: TracePointContext) -> u32 {
    try_refused(&ctx, &ZOMBIES_FORK_RET, ForkCall::Fork).unwrap_or(0)
}

/// syscalls:sys_exit_vfork: `ret` is the child's pid, or -errno.
#[tracepoint]
pub fn zombies_vfork_exit(ctx: TracePointContext) -> u32 {
    try_refused(&ctx, &ZOMBIES_VFORK_RET, ForkCall::Vfork).unwrap_or(0)
}

#[inline(always)]
fn try_refused(ctx: &TracePointContext, ret: &Global<u32>, call: ForkCall) -> Option<u32> {
    let ret: i64 = field(ctx, ret)?;
    // Successes (a pid, or 0 in the child) and other errors stop here: nothing is copied.
    if ret != -EAGAIN {
        return Some(0);
    }
    add(&ZOMBIES_REFUSALS, call as u32, 1);
    let id = bpf_get_current_pid_tgid();
    emit(&ForkRefusal {
        header: EventHeader {
            kind: EventKind::ForkRefused as u32,
            tgid: (id >> 32) as u32,
            ts_ns: now_ns(),
        },
        tid: id as u32,
        call: call as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    Some(0)
}
