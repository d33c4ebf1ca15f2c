//! tcp-pressure: refused socket-memory allocations (ring-buffer records), and the
//! in-kernel counters and send-latency histogram (per-CPU maps read per report).
use crate::{COMM_LEN, EventHeader, log2, plain, record};

/// sock:sock_exceed_buf_limit `kind` values (the kernel's SK_MEM_SEND / SK_MEM_RECV).
pub const SK_MEM_SEND: u32 = 0;
pub const SK_MEM_RECV: u32 = 1;

/// A TCP socket-memory allocation the kernel refused (sock:sock_exceed_buf_limit for
/// protocol "TCP" or "TCPv6"). `header.tgid` is the current process: the sender for
/// send refusals; for receive refusals it may be whoever ran the softirq.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufLimitEvent {
    pub header: EventHeader,
    /// [`SK_MEM_SEND`] or [`SK_MEM_RECV`].
    pub kind: u32,
    /// 1 for TCPv6 sockets.
    pub ipv6: u32,
    /// Pages all TCP sockets held when the allocation was refused.
    pub allocated: u64,
    /// net.ipv4.tcp_mem as the kernel used it (pages: low, pressure, high).
    pub sysctl_mem: [u64; 3],
    /// The socket's receive buffer limit and what it holds (bytes).
    pub sysctl_rmem: i32,
    pub rmem_alloc: i32,
    /// The socket's send buffer limit, bytes in flight and bytes queued.
    pub sysctl_wmem: i32,
    pub wmem_alloc: i32,
    pub wmem_queued: i32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    /// Socket cookie of the refused socket (the cookie sock_diag shows), from the
    /// BTF tracepoint; 0 from the classic tracepoint, which has no socket.
    pub cookie: u64,
}
const _: () = assert!(core::mem::size_of::<BufLimitEvent>() == 104);

plain!(BufLimitEvent);
record!(BufLimitEvent: TcpBufLimit);

/// Send-start timestamps per thread (LRU: a thread that never reached a TCP send
/// leaves an entry that the next syscall entry overwrites or the LRU evicts).
pub const SEND_START_CAPACITY: u32 = 16_384;
/// Threads seen sending on a TCP socket (LRU). write()/writev() entries are timed only
/// for them, so writes to files and pipes cost a lookup, not a map update.
pub const TCP_SENDERS_CAPACITY: u32 = 16_384;

/// Drop reasons that can be counted: reason numbers at or above this are ignored.
pub const DROP_REASON_CAPACITY: u32 = 512;
/// Memory-related drop reasons counted, at most (one counter slot each).
pub const DROP_SLOTS: u32 = 16;

/// Slots of the `TCP_COUNTS` per-CPU array.
pub const COUNT_RETRANS_NORMAL: u32 = 0;
pub const COUNT_RETRANS_PRESSURE: u32 = 1;
/// sock:sock_rcvqueue_full (any protocol: the tracepoint carries no socket identity).
pub const COUNT_RCVQ_FULL: u32 = 2;
/// TCP refusals seen in the kernel (also sent as records; this count is exact even
/// when records are lost).
pub const COUNT_REFUSALS: u32 = 3;
/// Receive-queue prunes seen by the prune programs (all sockets; exact even when a
/// socket's entry in `TCP_PRUNED` was evicted or could not be inserted).
pub const COUNT_PRUNES: u32 = 4;
/// Of the prune programs' calls, those where pruning had to discard data.
pub const COUNT_PRUNE_DISCARDS: u32 = 5;
/// First slot of the drop counters: slot `COUNT_DROP_BASE + i` counts reason i of the
/// table userspace wrote into `TCP_DROP_SLOT`.
pub const COUNT_DROP_BASE: u32 = 8;
pub const COUNT_SLOTS: u32 = COUNT_DROP_BASE + DROP_SLOTS;

/// Index of `TCP_FLAGS` (array) slot that says TCP memory pressure is on (1) or off (0).
/// The kernel sets it on a TCP refusal (which only happens under pressure or above
/// the hard limit); userspace sets and clears it at episode edges.
pub const FLAG_PRESSURE: u32 = 0;
/// Slot set to 1 by userspace once the BTF tracepoint program (with socket cookies)
/// is attached: the classic tracepoint program then leaves refusals to it.
pub const FLAG_BTF: u32 = 1;
/// Slot the kernel's pressure-edge programs (fentry/kprobe on tcp_enter/leave_
/// memory_pressure) keep at 1 between an entry they reported and the next leave, so
/// only the first of the many tcp_enter_memory_pressure() calls is reported.
pub const FLAG_EDGE: u32 = 2;
pub const FLAG_SLOTS: u32 = 3;

/// [`PressureEdgeEvent::edge`] values.
pub const EDGE_LEAVE: u32 = 0;
pub const EDGE_ENTER: u32 = 1;
/// [`PressureEdgeEvent::via`] values: the hook kind that saw the edge.
pub const VIA_FENTRY: u32 = 1;
pub const VIA_KPROBE: u32 = 2;

/// TCP memory pressure began or ended, at the kernel's own moment (fentry or kprobe
/// on tcp_enter_memory_pressure / tcp_leave_memory_pressure).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PressureEdgeEvent {
    /// `header.tgid`/`comm`: the current task (a bystander when the kernel ran the
    /// allocation in softirq context).
    pub header: EventHeader,
    /// [`EDGE_ENTER`] or [`EDGE_LEAVE`].
    pub edge: u32,
    /// [`VIA_FENTRY`] or [`VIA_KPROBE`].
    pub via: u32,
    /// Cookie of the socket whose allocation crossed the limit (fentry only; 0 when
    /// unknown).
    pub cookie: u64,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<PressureEdgeEvent>() == 48);

plain!(PressureEdgeEvent);
record!(PressureEdgeEvent: TcpPressureEdge);

/// Sockets whose receive queue was pruned, kept in `TCP_PRUNED` (LRU: the sockets
/// pruned longest ago make room; their counts stay in [`COUNT_PRUNES`]).
pub const PRUNED_CAPACITY: u32 = 4096;

/// One socket's receive-queue prunes (value of `TCP_PRUNED`, keyed by socket cookie on
/// the fentry path and by the struct sock address on the kprobe path, which has no
/// cookie helper). A socket's receive path runs under its lock, so its entry is
/// updated by one CPU at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrunedSock {
    /// Socket cookie (fentry path), 0 on the kprobe path.
    pub cookie: u64,
    /// Prunes that collapsed the receive queue (tcp_collapse of sk_receive_queue).
    pub prunes: u64,
    /// Times pruning was not enough and the kernel went on to discard data
    /// (tcp_prune_ofo_queue: out-of-order packets first, then what arrived).
    pub discards: u64,
    /// Of `prunes`, those while TCP memory pressure was on ([`FLAG_PRESSURE`]).
    pub during_pressure: u64,
    /// The task current at the last prune (in softirq, a bystander).
    pub tgid: u32,
    /// Local and remote port, host order (from struct sock_common).
    pub lport: u16,
    pub rport: u16,
    pub comm: [u8; COMM_LEN],
    /// CLOCK_MONOTONIC ns of the last prune.
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PrunedSock>() == 64);

plain!(PrunedSock);

/// Send latency histogram: log-linear buckets over nanoseconds, 16 per power of two
/// (each bucket at most 1/16 = 6.25% wide), values below 16 ns exact, capped at
/// 2^41 ns (~37 min). Two halves: normal, then pressure.
pub const LAT_SUB_BITS: u32 = 4;
pub const LAT_SUB: u64 = 1 << LAT_SUB_BITS;
pub const LAT_MAX_EXP: u32 = 40;
pub const LAT_BUCKETS: u32 = (LAT_MAX_EXP - LAT_SUB_BITS + 2) * LAT_SUB as u32;
/// Slots of `TCP_SEND_HIST`: normal buckets, then pressure buckets.
pub const LAT_SLOTS: u32 = 2 * LAT_BUCKETS;

/// Bucket of a latency in ns (always < LAT_BUCKETS).
#[inline(always)]
pub fn lat_bucket(ns: u64) -> u32 {
    if ns < LAT_SUB {
        return ns as u32;
    }
    let e = log2(ns);
    if e > LAT_MAX_EXP {
        return LAT_BUCKETS - 1;
    }
    let m = ((ns >> (e - LAT_SUB_BITS)) & (LAT_SUB - 1)) as u32;
    (e - LAT_SUB_BITS + 1) * LAT_SUB as u32 + m
}

/// The ns range [lo, hi] that bucket `b` covers.
pub fn lat_range(b: u32) -> (u64, u64) {
    if u64::from(b) < LAT_SUB {
        return (u64::from(b), u64::from(b));
    }
    let e = b / LAT_SUB as u32 + LAT_SUB_BITS - 1;
    let m = u64::from(b) % LAT_SUB;
    let shift = e - LAT_SUB_BITS;
    ((LAT_SUB + m) << shift, ((LAT_SUB + m + 1) << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, as_bytes, decode};

    #[test]
    fn buf_limit_round_trip() {
        let mut ev = BufLimitEvent {
            header: EventHeader {
                kind: EventKind::TcpBufLimit as u32,
                tgid: 7,
                ts_ns: 11,
            },
            kind: SK_MEM_SEND,
            allocated: 300,
            sysctl_mem: [64, 128, 256],
            wmem_queued: 4096,
            cookie: 1 << 40,
            ..Default::default()
        };
        ev.comm[..4].copy_from_slice(b"push");
        assert_eq!(decode::<BufLimitEvent>(as_bytes(&ev)), Some(ev));
        assert_eq!(decode::<BufLimitEvent>(&as_bytes(&ev)[..103]), None);
    }

    #[test]
    fn pressure_edge_round_trip() {
        let ev = PressureEdgeEvent {
            header: EventHeader {
                kind: EventKind::TcpPressureEdge as u32,
                tgid: 9,
                ts_ns: 12,
            },
            edge: EDGE_ENTER,
            via: VIA_FENTRY,
            cookie: 77,
            comm: *b"incident_tcp\0\0\0\0",
        };
        assert_eq!(decode::<PressureEdgeEvent>(as_bytes(&ev)), Some(ev));
        assert_eq!(decode::<PressureEdgeEvent>(&as_bytes(&ev)[..47]), None);
    }

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        let mut prev_hi = None;
        for b in 0..LAT_BUCKETS {
            let (lo, hi) = lat_range(b);
            assert!(lo <= hi);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {b}");
            }
            prev_hi = Some(hi);
            assert_eq!(lat_bucket(lo), b);
            assert_eq!(lat_bucket(hi), b);
            // At most 1/16 wide relative to the lower bound.
            assert!((hi - lo) * LAT_SUB <= lo.max(1), "bucket {b}: {lo}..{hi}");
        }
        assert_eq!(lat_bucket(u64::MAX), LAT_BUCKETS - 1);
        assert_eq!(lat_bucket(1_000_000), lat_bucket(1_000_001));
    }
}
