//! Receive-queue prunes per socket: the kernel programs in tracer-ebpf/src/tcp_prune.rs
//! count, per socket, the prunes that collapsed its receive queue and the times pruning
//! went on to discard data; here each socket gets its owner (by cookie, or by ports on
//! the kprobe path, from one sock_diag dump), cgroup and pod, and the report shows the
//! sockets pruned most.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use serde::{Deserialize, Serialize};
use tracer_common::{comm_str, tcp::PrunedSock};

use super::sockets::{self, Sock};
use crate::{bpf, container, procinfo};

/// Owners are looked up at most this often (one sock_diag dump and /proc fd scan for
/// every socket pruned since the last).
const RESOLVE_EVERY_NS: u64 = 500_000_000;
/// Owners remembered; cleared when full (then looked up again).
const OWNER_CACHE_CAPACITY: usize = 10_000;

/// How prunes are attributed to sockets on this kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrunePath {
    /// fentry on tcp_collapse and tcp_prune_ofo_queue, sockets by cookie.
    Fentry,
    /// kprobes on the same functions, sockets by their ports.
    Kprobe,
    /// Neither hook can be used here: prunes are counted system-wide only.
    #[default]
    Unavailable,
}

impl PrunePath {
    fn of(path: Option<&str>) -> PrunePath {
        match path {
            Some("fentry") => PrunePath::Fentry,
            Some("kprobe") => PrunePath::Kprobe,
            _ => PrunePath::Unavailable,
        }
    }
}

/// The sockets whose receive queues were pruned.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrunedSockets {
    pub path: PrunePath,
    /// Why there is no per-socket count here (`path` unavailable).
    pub why_unavailable: Option<String>,
    /// Prunes the kernel programs saw (all sockets): prunes that collapsed a receive
    /// queue, and times pruning went on to discard data.
    pub prunes_seen: u64,
    pub discards_seen: u64,
    /// Of `prunes_seen`, those whose socket is no longer in the kernel's table (evicted
    /// for newer sockets, or not inserted: kernel_map_full): counted, not attributed.
    pub prunes_not_attributed: u64,
    /// The sockets pruned most, most first (--top).
    pub sockets: Vec<PrunedSocketRow>,
    pub sockets_not_shown: u64,
}

/// One socket whose receive queue the kernel pruned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrunedSocketRow {
    /// Socket cookie (fentry path; None on the kprobe path).
    pub cookie: Option<u64>,
    pub local_port: u16,
    pub remote_port: u16,
    /// Addresses and owner from sock_diag; None when the socket was gone (or held by
    /// no process) when it was looked up.
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    /// `namespace/name` (or the UID) of the owner's pod, when it runs in one.
    pub pod: Option<String>,
    /// The task current at the last prune (in softirq, a bystander, not the owner).
    pub last_pid: u32,
    pub last_comm: String,
    /// Prunes that collapsed the socket's receive queue.
    pub prunes: u64,
    /// Times pruning was not enough and the kernel discarded data of this socket.
    pub discards: u64,
    /// Of `prunes`, those while TCP memory pressure was on.
    pub during_pressure: u64,
}

/// Who holds a pruned socket, as one sock_diag dump saw it.
#[derive(Clone, Debug, Default)]
struct Owner {
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    pid: Option<u32>,
    comm: Option<String>,
    cgroup: Option<String>,
    pod: Option<String>,
    /// `last_ns` of the entry when looked up: a socket not found is looked up again
    /// only when it is pruned again (so it is still open).
    seen_ns: u64,
}

/// The kernel table of pruned sockets and their owners.
pub struct PruneWatch {
    path: PrunePath,
    why: Option<String>,
    map: Option<BpfHashMap<MapData, u64, PrunedSock>>,
    owners: HashMap<u64, Owner>,
    last_resolve_ns: u64,
    top: usize,
}

impl PruneWatch {
    /// Takes the kernel table when a path was attached (`chosen`: the choice's outcome).
    pub fn new(session: &mut bpf::Session, chosen: Option<&bpf::Chosen>, top: usize) -> Self {
        let path = PrunePath::of(chosen.and_then(|c| c.path));
        let taken = match path {
            PrunePath::Unavailable => Err(unavailable(chosen)),
            _ => (session.take_map("TCP_PRUNED"))
                .and_then(|m| Ok(BpfHashMap::<MapData, u64, PrunedSock>::try_from(m)?))
                .map_err(|e| format!("the kernel's table of pruned sockets cannot be read ({e:#}); counted system-wide from TcpExt")),
        };
        let (map, why) = match taken {
            Ok(m) => (Some(m), None),
            Err(why) => (None, Some(why)),
        };
        PruneWatch {
            path: if map.is_some() {
                path
            } else {
                PrunePath::Unavailable
            },
            why,
            map,
            owners: HashMap::new(),
            last_resolve_ns: 0,
            top,
        }
    }

    fn entries(&self) -> Vec<(u64, PrunedSock)> {
        let Some(m) = &self.map else {
            return Vec::new();
        };
        m.iter().filter_map(|r| r.ok()).collect()
    }

    /// Names the owners of sockets pruned since the last lookup (at most every
    /// RESOLVE_EVERY_NS unless `force`).
    pub fn resolve(&mut self, now_ns: u64, force: bool) {
        if !force && now_ns.saturating_sub(self.last_resolve_ns) < RESOLVE_EVERY_NS {
            return;
        }
        let new: Vec<(u64, PrunedSock)> = (self.entries().into_iter())
            .filter(|(k, v)| {
                self.owners
                    .get(k)
                    .is_none_or(|o| o.pid.is_none() && o.seen_ns != v.last_ns)
            })
            .collect();
        if new.is_empty() {
            return;
        }
        self.last_resolve_ns = now_ns;
        let cookies: HashSet<u64> = new
            .iter()
            .map(|(_, v)| v.cookie)
            .filter(|&c| c != 0)
            .collect();
        let (socks, _) = sockets::list(&cookies);
        if self.owners.len() + new.len() > OWNER_CACHE_CAPACITY {
            self.owners.clear();
        }
        for (k, v) in new {
            let found = socks.iter().find(|s| matches(s, &v));
            self.owners.insert(k, owner(found, v.last_ns));
        }
    }

    /// The report's part, with the kernel's global counts (`seen`: prunes, discards).
    pub fn report(&self, seen: (u64, u64)) -> PrunedSockets {
        let mut all = self.entries();
        all.sort_by(|a, b| {
            b.1.prunes
                .cmp(&a.1.prunes)
                .then(b.1.discards.cmp(&a.1.discards))
        });
        let in_table: u64 = all.iter().map(|(_, v)| v.prunes).sum();
        let shown = all.len().min(self.top);
        let sockets = (all.iter().take(self.top))
            .map(|(k, v)| row(v, self.owners.get(k)))
            .collect();
        PrunedSockets {
            path: self.path,
            why_unavailable: self.why.clone(),
            prunes_seen: seen.0,
            discards_seen: seen.1,
            prunes_not_attributed: seen.0.saturating_sub(in_table),
            sockets,
            sockets_not_shown: (all.len() - shown) as u64,
        }
    }
}

/// Why no path attributes prunes here: each path tried and why it was refused.
fn unavailable(chosen: Option<&bpf::Chosen>) -> String {
    let tried = chosen.map(|c| {
        (c.refused.iter())
            .map(|(p, e)| format!("{p}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    format!(
        "no hook on tcp_collapse/tcp_prune_ofo_queue here ({}); counted system-wide from TcpExt",
        tried.unwrap_or_else(|| "not tried".into())
    )
}

/// The socket of a table entry: by cookie, else (kprobe path) by its ports.
fn matches(s: &Sock, v: &PrunedSock) -> bool {
    if v.cookie != 0 {
        return s.cookie == v.cookie;
    }
    s.local.port() == v.lport && s.peer.port() == v.rport
}

fn owner(s: Option<&Sock>, seen_ns: u64) -> Owner {
    let Some(s) = s else {
        return Owner {
            seen_ns,
            ..Owner::default()
        };
    };
    let cgroup = s.pid.map(procinfo::cgroup_of).filter(|c| c != "-");
    Owner {
        local: Some(s.local),
        remote: Some(s.peer),
        pid: s.pid,
        comm: s.pid.and_then(procinfo::comm_of),
        pod: cgroup.as_deref().and_then(pod_of),
        cgroup,
        seen_ns,
    }
}

/// `namespace/name` of the pod whose container runs in `cgroup` (the UID when the
/// runtime does not name it), as the pod table names pods.
fn pod_of(cgroup: &str) -> Option<String> {
    let c = container::of_cgroup(cgroup)?;
    let uid = c.pod_uid.clone()?;
    let n = c.named().names;
    Some(match (n.namespace, n.pod) {
        (Some(ns), Some(p)) => format!("{ns}/{p}"),
        (None, Some(p)) => p,
        _ => uid,
    })
}

fn row(v: &PrunedSock, o: Option<&Owner>) -> PrunedSocketRow {
    let o = o.cloned().unwrap_or_default();
    PrunedSocketRow {
        cookie: (v.cookie != 0).then_some(v.cookie),
        local_port: v.lport,
        remote_port: v.rport,
        local: o.local,
        remote: o.remote,
        pid: o.pid,
        comm: o.comm,
        cgroup: o.cgroup,
        pod: o.pod,
        last_pid: v.tgid,
        last_comm: comm_str(&v.comm).to_string(),
        prunes: v.prunes,
        discards: v.discards,
        during_pressure: v.during_pressure,
    }
}

/// Lines under the receive-queue line: how prunes are attributed, then one per socket.
pub fn text(p: &PrunedSockets) -> String {
    if p.path == PrunePath::Unavailable {
        let why = p.why_unavailable.as_deref().unwrap_or("no hook");
        return format!("    pruned sockets: not attributed: {why}\n");
    }
    let untracked = match p.prunes_not_attributed {
        0 => String::new(),
        n => format!("; {n} prunes of sockets no longer tracked"),
    };
    let mut out = format!(
        "    pruned sockets ({}): {} prunes collapsed a receive queue, {} went on to discard data{untracked}\n",
        path_name(p.path),
        p.prunes_seen,
        p.discards_seen,
    );
    for s in &p.sockets {
        let who = match (s.pid, &s.comm) {
            (Some(pid), c) => format!("{} ({pid})", c.as_deref().unwrap_or("?")),
            (None, _) => format!(
                "owner gone; last current task {} ({})",
                s.last_comm, s.last_pid
            ),
        };
        let place = s
            .pod
            .as_ref()
            .map(|p| format!(" pod {p}"))
            .or_else(|| s.cgroup.as_ref().map(|c| format!(" cgroup {c}")));
        let addrs = match (s.local, s.remote) {
            (Some(l), Some(r)) => format!("{l} -> {r}"),
            _ => format!(":{} -> :{}", s.local_port, s.remote_port),
        };
        out += &format!(
            "      {addrs} {who}{}: {} prunes ({} during pressure), {} discards\n",
            place.unwrap_or_default(),
            s.prunes,
            s.during_pressure,
            s.discards
        );
    }
    if p.sockets_not_shown > 0 {
        out += &format!("      ... {} more sockets\n", p.sockets_not_shown);
    }
    out
}

/// Prunes of the `top` sockets pruned most, summed by (pod, comm) of their owners
/// ("-" when unknown), most first: bounded label sets for the metric.
pub fn by_owner(p: &PrunedSockets, top: usize) -> Vec<((String, String), u64)> {
    let mut sums: HashMap<(String, String), u64> = HashMap::new();
    for s in p.sockets.iter().take(top) {
        let key = (
            s.pod.clone().unwrap_or_else(|| "-".into()),
            s.comm.clone().unwrap_or_else(|| "-".into()),
        );
        *sums.entry(key).or_default() += s.prunes;
    }
    let mut v: Vec<_> = sums.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn path_name(p: PrunePath) -> &'static str {
    match p {
        PrunePath::Fentry => "fentry tcp_collapse + tcp_prune_ofo_queue, by cookie",
        PrunePath::Kprobe => "kprobe tcp_collapse + tcp_prune_ofo_queue, by ports",
        PrunePath::Unavailable => "unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cookie: u64, lport: u16, rport: u16) -> PrunedSock {
        PrunedSock {
            cookie,
            prunes: 5,
            discards: 1,
            during_pressure: 2,
            tgid: 9,
            lport,
            rport,
            comm: *b"swapper/1\0\0\0\0\0\0\0",
            last_ns: 1,
        }
    }

    fn sock(cookie: u64, local: &str, peer: &str) -> Sock {
        Sock {
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            state: "ESTAB".into(),
            inode: 1,
            cookie,
            rmem: 0,
            rcvbuf: None,
            wmem: 0,
            sndbuf: None,
            fwd_alloc: 0,
            drops: None,
            pid: Some(42),
            cgroup_id: None,
        }
    }

    #[test]
    fn sockets_are_found_by_cookie_else_by_ports() {
        let s = sock(77, "127.0.0.1:5000", "127.0.0.1:6000");
        assert!(matches(&s, &entry(77, 0, 0)));
        assert!(!matches(&s, &entry(78, 5000, 6000)));
        assert!(matches(&s, &entry(0, 5000, 6000)));
        assert!(!matches(&s, &entry(0, 6000, 5000)));
    }

    #[test]
    fn a_row_without_owner_names_the_last_current_task() {
        let r = row(&entry(0, 5000, 6000), None);
        assert_eq!((r.cookie, r.pid, r.last_pid), (None, None, 9));
        assert_eq!(r.last_comm, "swapper/1");
        let p = PrunedSockets {
            path: PrunePath::Kprobe,
            prunes_seen: 7,
            prunes_not_attributed: 2,
            sockets: vec![r],
            sockets_not_shown: 3,
            ..PrunedSockets::default()
        };
        let t = text(&p);
        assert!(t.contains("by ports): 7 prunes collapsed a receive queue, 0 went on to discard data; 2 prunes of sockets no longer tracked\n"), "{t}");
        assert!(t.contains("      :5000 -> :6000 owner gone; last current task swapper/1 (9): 5 prunes (2 during pressure), 1 discards\n"), "{t}");
        assert!(t.contains("... 3 more sockets"), "{t}");
    }

    #[test]
    fn without_a_hook_the_line_says_why() {
        let p = PrunedSockets {
            why_unavailable: Some("no hook here".into()),
            ..PrunedSockets::default()
        };
        assert_eq!(
            text(&p),
            "    pruned sockets: not attributed: no hook here\n"
        );
        assert_eq!(PrunePath::of(Some("kprobe")), PrunePath::Kprobe);
        assert_eq!(PrunePath::of(None), PrunePath::Unavailable);
    }
}
