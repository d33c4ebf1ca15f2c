//! Receive-queue pruning and collapsing: when a socket's receive queue outgrows its
//! buffer (a reader that does not keep up, a small rcvbuf) or its memory cannot be
//! charged, the kernel prunes it (tcp_prune_queue: TcpExt PruneCalled), merging
//! packets into fewer buffers (TCPRcvCollapsed) and, when that is not enough,
//! dropping what arrived (RcvPruned). No tracepoint marks these, so they are counted
//! from /proc/net/netstat, system-wide: since the start and during pressure (samples
//! taken while a global episode was open or a memcg refused socket memory at its
//! limit); where fentry or kprobes are allowed, prune.rs attributes them to sockets.
use serde::{Deserialize, Serialize};

use super::prune::{self, PruneWatch, PrunedSockets};
use crate::snapshot::tcpmem::Snapshot;

/// The three counters, as growth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcvCounts {
    /// TcpExt PruneCalled.
    pub prune_called: u64,
    /// TcpExt RcvPruned.
    pub rcv_pruned: u64,
    /// TcpExt TCPRcvCollapsed.
    pub collapsed: u64,
}

impl RcvCounts {
    fn between(a: &Snapshot, b: &Snapshot) -> RcvCounts {
        let d = |n: &str| {
            let (x, y) = (a.counters.get(n).copied(), b.counters.get(n).copied());
            y.unwrap_or(0).saturating_sub(x.unwrap_or(0))
        };
        RcvCounts {
            prune_called: d("PruneCalled"),
            rcv_pruned: d("RcvPruned"),
            collapsed: d("TCPRcvCollapsed"),
        }
    }

    fn add(&mut self, o: RcvCounts) {
        self.prune_called += o.prune_called;
        self.rcv_pruned += o.rcv_pruned;
        self.collapsed += o.collapsed;
    }
}

/// What the report says about receive-queue pruning and collapsing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RcvQueue {
    pub since_start: RcvCounts,
    /// In the sample intervals that ended during pressure (global or a memcg's).
    pub during_pressure: RcvCounts,
    /// The sockets pruned, where the kernel lets a program see them.
    pub per_socket: PrunedSockets,
}

/// Accumulates the growth seen during pressure, and the pruned sockets.
pub struct RcvWatch {
    during: RcvCounts,
    prune: PruneWatch,
}

impl RcvWatch {
    pub fn new(prune: PruneWatch) -> Self {
        RcvWatch {
            during: RcvCounts::default(),
            prune,
        }
    }

    /// Between two consecutive samples; `pressure` when the interval saw pressure.
    pub fn on_sample(&mut self, prev: &Snapshot, now: &Snapshot, pressure: bool) {
        if pressure {
            self.during.add(RcvCounts::between(prev, now));
        }
        self.prune.resolve(crate::procinfo::monotonic_ns(), false);
    }

    /// `seen`: the kernel's global (prunes, discards) counts.
    pub fn report(&mut self, first: &Snapshot, latest: &Snapshot, seen: (u64, u64)) -> RcvQueue {
        self.prune.resolve(crate::procinfo::monotonic_ns(), true);
        RcvQueue {
            since_start: RcvCounts::between(first, latest),
            during_pressure: self.during,
            per_socket: self.prune.report(seen),
        }
    }
}

/// The text line.
pub fn text(r: &RcvQueue) -> String {
    let (a, b) = (&r.since_start, &r.during_pressure);
    format!(
        "  receive queues pruned {} times ({} packets dropped, {} collapsed) since start; during pressure {} ({} dropped, {} collapsed)\n",
        a.prune_called, a.rcv_pruned, a.collapsed, b.prune_called, b.rcv_pruned, b.collapsed
    ) + &prune::text(&r.per_socket)
}
