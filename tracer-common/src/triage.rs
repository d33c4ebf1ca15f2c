//! triage: the run-queue latency histogram kept in the kernel (no ring-buffer records).
//!
//! Slots follow bcc's log2 layout, which `tracer::output` renders: slot 0 holds the
//! value 0, slot k >= 1 holds [2^(k-1), 2^k - 1] microseconds.

/// Log2 slots of the run-queue latency histogram (a per-CPU array, usecs).
pub const RUNQ_SLOTS: u32 = 64;

/// Capacity of the task -> enqueue-time map (LRU: tasks that never ran again go first).
pub const RUNQ_ENQUEUED_CAPACITY: u32 = 16_384;

/// Index of the log2 slot for `v`: its bit length (`tcp::log2`, which the kernel side
/// can run, plus one), clamped to the last slot.
#[inline(always)]
pub fn log2_slot(v: u64) -> u32 {
    if v == 0 {
        return 0;
    }
    (crate::log2(v) + 1).min(RUNQ_SLOTS - 1)
}

/// Bit 0..6 of sched_switch's `prev_state` are the sleep states (S, D, T, t, X, Z,
/// P in the format file's __print_flags); none set means the task was still runnable
/// when it was switched out ("R", or "R+" for a preemption, TASK_REPORT_MAX), so it
/// goes back on the run queue at once.
pub const SLEEP_STATE_MASK: i64 = 0x7f;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_bcc_layout() {
        assert_eq!(log2_slot(0), 0);
        assert_eq!(log2_slot(1), 1);
        assert_eq!(log2_slot(2), 2);
        assert_eq!(log2_slot(3), 2);
        assert_eq!(log2_slot(4), 3);
        assert_eq!(log2_slot(1023), 10);
        assert_eq!(log2_slot(1024), 11);
        assert_eq!(log2_slot(u64::MAX), RUNQ_SLOTS - 1);
    }
}
