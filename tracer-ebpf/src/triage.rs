//! triage: run-queue latency (time from becoming runnable to running on a CPU), what
//! vmstat's `r` column only hints at. Aggregated in the kernel into log2 buckets of
//! microseconds: sched_switch fires at every context switch, so nothing is copied out
//! per event; userspace reads the histogram once, for the report.
use aya_ebpf::{
    Global,
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use tracer_common::triage::{RUNQ_ENQUEUED_CAPACITY, RUNQ_SLOTS, SLEEP_STATE_MASK, log2_slot};

use crate::common::{add, field, inserted, now_ns};

/// Field offsets from tracefs `format` files, set by the loader.
#[unsafe(no_mangle)]
static TRIAGE_WAKEUP_PID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TRIAGE_WAKEUP_NEW_PID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TRIAGE_SWITCH_PREV_PID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TRIAGE_SWITCH_PREV_STATE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TRIAGE_SWITCH_NEXT_PID: Global<u32> = Global::new(0);

/// task id -> when it was put on a run queue (CLOCK_MONOTONIC ns).
#[map]
static TRIAGE_ENQUEUED: LruHashMap<u32, u64> =
    LruHashMap::with_max_entries(RUNQ_ENQUEUED_CAPACITY, 0);

/// Run-queue latency histogram: log2 slots of microseconds, per CPU.
#[map]
static TRIAGE_RUNQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(RUNQ_SLOTS, 0);

/// Largest run-queue latency seen, in microseconds, per CPU (slot 0).
#[map]
static TRIAGE_RUNQ_MAX: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sum of the run-queue latencies, in nanoseconds, per CPU (slot 0): the Prometheus
/// histogram's `_sum`, which the log2 slots cannot give.
#[map]
static TRIAGE_RUNQ_SUM: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn enqueue(pid: i32) {
    // pid 0 is the idle task of each CPU: it never waits on a run queue.
    if pid > 0 {
        inserted(TRIAGE_ENQUEUED.insert(&(pid as u32), &now_ns(), 0));
    }
}

/// sched:sched_wakeup: task `pid` became runnable (woken up).
#[tracepoint]
pub fn triage_wakeup(ctx: TracePointContext) -> u32 {
    if let Some(pid) = field::<i32>(&ctx, &TRIAGE_WAKEUP_PID) {
        enqueue(pid);
    }
    0
}

/// sched:sched_wakeup_new: a newly forked task `pid` became runnable for the first time.
#[tracepoint]
pub fn triage_wakeup_new(ctx: TracePointContext) -> u32 {
    if let Some(pid) = field::<i32>(&ctx, &TRIAGE_WAKEUP_NEW_PID) {
        enqueue(pid);
    }
    0
}

/// sched:sched_switch: `prev_pid` leaves the CPU (still runnable when `prev_state`
/// has no sleep bit: it was preempted and waits again), `next_pid` starts running:
/// its wait on the run queue ends now.
#[tracepoint]
pub fn triage_switch(ctx: TracePointContext) -> u32 {
    try_switch(&ctx).unwrap_or(0)
}

fn try_switch(ctx: &TracePointContext) -> Option<u32> {
    let prev_state: i64 = field(ctx, &TRIAGE_SWITCH_PREV_STATE)?;
    if prev_state & SLEEP_STATE_MASK == 0 {
        let prev: i32 = field(ctx, &TRIAGE_SWITCH_PREV_PID)?;
        enqueue(prev);
    }
    let next: i32 = field(ctx, &TRIAGE_SWITCH_NEXT_PID)?;
    if next <= 0 {
        return Some(0);
    }
    let next = next as u32;
    // SAFETY: plain map lookup of a Copy value.
    let start = unsafe { TRIAGE_ENQUEUED.get(&next) }.copied()?;
    let _ = TRIAGE_ENQUEUED.remove(&next);
    let ns = now_ns().saturating_sub(start);
    let us = ns / 1000;
    add(&TRIAGE_RUNQ, log2_slot(us), 1);
    add(&TRIAGE_RUNQ_SUM, 0, ns);
    if let Some(m) = TRIAGE_RUNQ_MAX.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, preemption is disabled while a tracing program runs.
        unsafe {
            if us > *m {
                *m = us;
            }
        }
    }
    Some(0)
}
