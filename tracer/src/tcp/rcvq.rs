//! Receive-queue pruning and collapsing: when a socket's receive queue outgrows its
//! buffer (a reader that does not keep up, a small rcvbuf) or its memory cannot be
//! charged, the kernel prunes it (tcp_prune_queue: TcpExt PruneCalled), merging
//! packets into fewer buffers (TCPRcvCollapsed) and, when that is not enough,
//! dropping what arrived (RcvPruned). No tracepoint marks these, so they are counted
//! from /proc/net/netstat, system-wide: since the start and during pressure (samples
//! taken while a global episode was open or a memcg refused socket memory at its
//! limit).
use serde::{Deserialize, Serialize};

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
    /// Which sockets were pruned cannot be told: no tracepoint marks tcp_prune_queue.
    pub per_socket: String,
}

/// Accumulates the growth seen during pressure.
#[derive(Default)]
pub struct RcvWatch {
    during: RcvCounts,
}

impl RcvWatch {
    /// Between two consecutive samples; `pressure` when the interval saw pressure.
    pub fn on_sample(&mut self, prev: &Snapshot, now: &Snapshot, pressure: bool) {
        if pressure {
            self.during.add(RcvCounts::between(prev, now));
        }
    }

    pub fn report(&self, first: &Snapshot, latest: &Snapshot) -> RcvQueue {
        RcvQueue {
            since_start: RcvCounts::between(first, latest),
            during_pressure: self.during,
            per_socket: "not attributed: no tracepoint marks tcp_prune_queue; counted system-wide from TcpExt".into(),
        }
    }
}

/// The text line.
pub fn text(r: &RcvQueue) -> String {
    let (a, b) = (&r.since_start, &r.during_pressure);
    format!(
        "  receive queues pruned {} times ({} packets dropped, {} collapsed) since start; during pressure {} ({} dropped, {} collapsed); {}\n",
        a.prune_called,
        a.rcv_pruned,
        a.collapsed,
        b.prune_called,
        b.rcv_pruned,
        b.collapsed,
        r.per_socket
    )
}
