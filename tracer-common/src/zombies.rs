//! zombies: process exit/reap records and the in-kernel counters' key/value types.
use crate::{COMM_LEN, EventHeader, plain, record};

/// Forks refused with EAGAIN (the pid budgets of issue 22).
pub mod refusals;

/// How a process left the zombie state.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReapVia {
    /// wait4() returned its pid: `reaper` is the tgid that called wait4.
    Wait4 = 1,
    /// sched_process_free fired for it (waitid(), autoreap with SIGCHLD ignored, or a
    /// reap we did not see as a wait4 return). Includes an RCU grace period.
    Free = 2,
}

/// ProcessExit and ProcessReap records (header.kind tells which).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub header: EventHeader,
    /// tgid of the process that exited / was reaped.
    pub pid: u32,
    /// Parent tgid recorded at fork time (0: forked before the tracer started).
    pub ppid: u32,
    /// Reap: tgid that reaped it (ReapVia::Wait4) or 0. Exit: unused (0).
    pub reaper: u32,
    /// Reap: a [`ReapVia`]. Exit: unused (0).
    pub via: u32,
    /// Reap: when the process exited (0 if the exit was not seen). Exit: same as ts.
    pub exit_ns: u64,
    /// comm of the exiting process.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 56);

plain!(ProcEvent);
record!(ProcEvent: ProcessExit, ProcessReap);

/// Capacity of the fork-time child -> parent map (LRU: oldest entries go first).
pub const PARENT_CAPACITY: u32 = 65_536;
/// Capacity of the exited-but-not-reaped map (LRU), i.e. zombies tracked with exit times.
pub const EXITED_CAPACITY: u32 = 65_536;
/// Capacity of the per-tgid wait-call and SIGCHLD counters (LRU).
pub const COUNTER_CAPACITY: u32 = 16_384;

/// Per-process counters kept in the kernel (key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParentCounters {
    /// do_wait() entries (sched_process_wait).
    pub wait_calls: u64,
    /// SIGCHLD generated for this process (signal_generate).
    pub sigchld: u64,
}
const _: () = assert!(core::mem::size_of::<ParentCounters>() == 16);

plain!(ParentCounters);

/// Index of global counters in the `ZOMBIES_COUNTS` per-CPU array.
pub const COUNT_FORKS: u32 = 0;
pub const COUNT_EXITS: u32 = 1;
/// sched_process_exit records whose `current->signal->live` could not be read: those
/// exits are not seen, and the report says how many.
pub const COUNT_EXIT_READ_FAILED: u32 = 2;
pub const COUNT_SLOTS: u32 = 3;

/// `ZOMBIES_EXIT_MODE`: the tracepoint's `group_dead` field marks the last thread.
pub const EXIT_BY_FIELD: u32 = 1;
/// `ZOMBIES_EXIT_MODE`: `current->signal->live == 0` (offsets from kernel BTF) marks it,
/// on kernels whose sched_process_exit has no `group_dead` (6.1 and 6.12 among them).
pub const EXIT_BY_SIGNAL_LIVE: u32 = 2;

/// Exit time stored in the exited map for a process that `-p` filters out: its reap
/// sends no record.
pub const FILTERED: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, as_bytes, decode};

    #[test]
    fn proc_event_round_trip() {
        let mut ev = ProcEvent {
            header: EventHeader {
                kind: EventKind::ProcessReap as u32,
                tgid: 9,
                ts_ns: 100,
            },
            pid: 10,
            ppid: 9,
            reaper: 9,
            via: ReapVia::Wait4 as u32,
            exit_ns: 50,
            comm: [0; COMM_LEN],
        };
        ev.comm[..3].copy_from_slice(b"abc");
        assert_eq!(decode::<ProcEvent>(as_bytes(&ev)), Some(ev));
        assert_eq!(decode::<ProcEvent>(&as_bytes(&ev)[..55]), None);
    }
}
