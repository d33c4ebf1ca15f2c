//! Refused socket-memory charges, attributed to processes: who the kernel refused, on
//! how many sockets, send or receive, and whether the refusal reached the socket's owner.
use std::collections::HashSet;

use tracer_common::tcp::{SK_MEM_RECV, SK_MEM_SEND};

use crate::bounded::Lru;

/// Processes whose refusals are counted one by one. Every pid ever refused would
/// otherwise stay for weeks; the report shows the top few, and 1,024 processes
/// refused in the same stretch is beyond any incident seen (about 1 MiB with their
/// sockets). The least recently refused goes first; its refusals stay in the kernel's
/// total (`refusals`), and a report says how many were evicted.
pub const CULPRITS_CAPACITY: usize = 1_024;

/// Distinct refused sockets remembered per process: enough to tell one hot socket
/// from many (the count is then "at least" this), at 8 bytes each.
pub const SOCKETS_PER_CULPRIT: usize = 256;

/// One refused allocation, attributed to a process.
#[derive(Clone, Debug, Default)]
pub struct Refusal {
    pub pid: u32,
    pub comm: String,
    /// SK_MEM_SEND or SK_MEM_RECV.
    pub kind: u32,
    /// The refused socket's cookie (0: unknown).
    pub cookie: u64,
    /// The socket's queued bytes (receive, send) when it was seen.
    pub rmem: u64,
    pub wmem: u64,
    /// Attributed to the socket's owner (true) or to the task that was current when
    /// the kernel refused (false: the socket was already gone, or no socket cookie).
    pub by_owner: bool,
    /// Pages all TCP sockets held when it was refused.
    pub allocated: u64,
}

/// Refused allocations of one process.
#[derive(Clone, Debug, Default)]
pub struct Culprit {
    pub comm: String,
    pub cgroup: String,
    pub send: u64,
    pub recv: u64,
    /// Distinct refused sockets (by cookie), up to SOCKETS_PER_CULPRIT.
    pub sockets: HashSet<u64>,
    /// Refusals attributed to the current task rather than the socket owner.
    pub by_context: u64,
    /// Largest queues seen on its refused sockets (bytes).
    pub max_rmem: u64,
    pub max_wmem: u64,
}

impl Culprit {
    pub fn refusals(&self) -> u64 {
        self.send.saturating_add(self.recv)
    }

    pub fn kind(&self) -> &'static str {
        match (self.send > 0, self.recv > 0) {
            (true, true) => "send+recv",
            (false, true) => "recv",
            _ => "send",
        }
    }
}

pub struct Culprits {
    by_pid: Lru<u32, Culprit>,
}

impl Default for Culprits {
    fn default() -> Self {
        Self {
            by_pid: Lru::new(CULPRITS_CAPACITY),
        }
    }
}

impl Culprits {
    /// Counts one refusal; `cgroup` is read for a pid seen for the first time.
    pub fn add(&mut self, r: &Refusal, cgroup: impl FnOnce() -> String) {
        let c = self.by_pid.entry(r.pid, || Culprit {
            comm: r.comm.clone(),
            cgroup: cgroup(),
            ..Default::default()
        });
        match r.kind {
            SK_MEM_SEND => c.send = c.send.saturating_add(1),
            SK_MEM_RECV => c.recv = c.recv.saturating_add(1),
            _ => {}
        }
        if r.cookie != 0 && c.sockets.len() < SOCKETS_PER_CULPRIT {
            c.sockets.insert(r.cookie);
        }
        if !r.by_owner {
            c.by_context = c.by_context.saturating_add(1);
        }
        c.max_rmem = c.max_rmem.max(r.rmem);
        c.max_wmem = c.max_wmem.max(r.wmem);
    }

    /// Most refusals first (ties: lower pid).
    pub fn ranked(&self) -> Vec<(u32, &Culprit)> {
        let mut v: Vec<_> = self.by_pid.iter().map(|(p, c)| (*p, c)).collect();
        v.sort_by(|a, b| b.1.refusals().cmp(&a.1.refusals()).then(a.0.cmp(&b.0)));
        v
    }

    /// Processes whose counts were evicted (CULPRITS_CAPACITY).
    pub fn evicted(&self) -> u64 {
        self.by_pid.evicted()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_pid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn culprits_rank_by_refusals() {
        let mut c = Culprits::default();
        let r = |pid, kind, cookie, by_owner| Refusal {
            pid,
            comm: format!("p{pid}"),
            kind,
            cookie,
            rmem: 10,
            wmem: 20,
            by_owner,
            allocated: 0,
        };
        for _ in 0..3 {
            c.add(&r(10, SK_MEM_SEND, 5, true), || "/a".into());
        }
        c.add(&r(11, SK_MEM_RECV, 0, false), || "/b".into());
        c.add(&r(10, SK_MEM_RECV, 6, true), || unreachable!());
        let ranked = c.ranked();
        assert_eq!(ranked[0].0, 10);
        let top = ranked[0].1;
        assert_eq!(top.refusals(), 4);
        assert_eq!(top.kind(), "send+recv");
        assert_eq!(top.cgroup, "/a");
        assert_eq!(top.sockets.len(), 2);
        assert_eq!(top.by_context, 0);
        assert_eq!(ranked[1].1.kind(), "recv");
        assert_eq!(ranked[1].1.by_context, 1);
    }

    #[test]
    fn culprits_and_their_sockets_are_capped() {
        let mut c = Culprits::default();
        let n = CULPRITS_CAPACITY as u32 + 100;
        for pid in 1..=n {
            let r = Refusal {
                pid,
                kind: SK_MEM_SEND,
                cookie: u64::from(pid),
                by_owner: true,
                ..Default::default()
            };
            c.add(&r, String::new);
        }
        assert_eq!(c.len(), CULPRITS_CAPACITY);
        assert_eq!(c.evicted(), 100);
        let kept: u64 = c.ranked().iter().map(|(_, c)| c.refusals()).sum();
        assert_eq!(kept + c.evicted(), u64::from(n), "one refusal each");
        // One process refusing on more sockets than it remembers.
        for cookie in 1..=SOCKETS_PER_CULPRIT as u64 + 50 {
            let r = Refusal {
                pid: n,
                kind: SK_MEM_RECV,
                cookie,
                by_owner: true,
                ..Default::default()
            };
            c.add(&r, String::new);
        }
        let (_, top) = c.ranked()[0];
        assert_eq!(top.sockets.len(), SOCKETS_PER_CULPRIT);
        assert_eq!(top.refusals(), SOCKETS_PER_CULPRIT as u64 + 51);
    }
}
