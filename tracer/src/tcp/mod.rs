//! `tracer tcp-pressure`: is this latency TCP memory pressure, since when, who causes
//! it, and what to set (the Cloudflare incident).
//!
//! Kernel side (tracer-ebpf/src/tcp.rs): refused TCP allocations come one record each;
//! memory-related drops, retransmits and receive-queue overflows are counted per CPU;
//! the latency of send-type syscalls on TCP sockets goes into an in-kernel histogram
//! split by a pressure flag. User side: /proc is sampled at 10 Hz (sockstat pages vs
//! tcp_mem, TcpExt counters) to find episodes; sock_diag names the sockets and
//! processes holding the memory during an episode (at its start and when refused
//! sockets are looked up; the fullest look is kept).
mod advice;
mod build;
mod counters;
mod culprits;
mod episodes;
mod memcg;
pub mod metrics;
mod pod_advice;
pub mod pods;
mod prune;
mod rcvq;
mod report;
pub mod rows;
mod send;
mod sockets;
mod spec;
mod warn;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray};
use tracer_common::{
    comm_str,
    tcp::{
        BufLimitEvent, COUNT_DROP_BASE, COUNT_PRUNE_DISCARDS, COUNT_PRUNES, COUNT_RCVQ_FULL,
        COUNT_REFUSALS, COUNT_RETRANS_NORMAL, COUNT_RETRANS_PRESSURE, DROP_REASON_CAPACITY,
        DROP_SLOTS, EDGE_ENTER, FLAG_BTF, FLAG_PRESSURE, PressureEdgeEvent,
    },
};

use crate::{
    bpf::{self, Hook, Offset, Session, Spec},
    procinfo,
    report::Body,
    run::{self, BadRecord, Detector, ReportCtx, RunOpts},
    snapshot::tcpmem::{self, TcpMem},
};
use culprits::{Culprits, Refusal};
use episodes::{Episodes, Sample};
use sockets::SocketLook;

pub use counters::{Drops, TcpExt};
pub use memcg::{Accounting, MemcgPressure, MemcgRow};
pub use pod_advice::PodAdvice;
pub use pods::{CgroupRow, CgroupSource, PodRow, PodSockets};
pub use prune::{PrunePath, PrunedSocketRow, PrunedSockets};
pub use rcvq::{RcvCounts, RcvQueue};
pub use report::{
    EdgesPath, Evicted, Look, MemBytes, MemPages, Paths, Retransmits, SendPath, SocketsPath,
    TcpPressureReport, TopSockets, View,
};
pub use send::{Is, LatencyUs, SendLatency, SendLog2};
pub use sockets::{Sock, Source};
pub use spec::{CHOICES, SPEC};
use spec::{EDGES, PRUNE, SEND, SOCKETS, fill_drop_reasons};

/// How often /proc is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// At most one look at the sockets per this long (episodes can flap).
const SOCKET_LOOK_GAP_NS: u64 = 1_000_000_000;
/// Owners of refused sockets are looked up at most this often (one sock_diag dump
/// and /proc fd scan for all refusals since the last).
const RESOLVE_EVERY_NS: u64 = 200_000_000;
/// Owners remembered by socket cookie: a cache of sock_diag lookups, cleared when full
/// (a cleared owner is looked up again, for one dump). 100,000 covers the sockets of a
/// busy proxy refused in one episode, at ~100 bytes each (~10 MiB at most).
const OWNER_CACHE_CAPACITY: usize = 100_000;

/// Find TCP socket-memory pressure episodes, who causes them, and what to set.
///
/// Samples TCP memory (pages vs net.ipv4.tcp_mem) 10 times a second, records every
/// refused TCP socket-memory allocation with its process, counts memory-related
/// drops and retransmits, and times send()/write() on TCP sockets during and outside
/// pressure. Advice lines are computed from the measured peak and printed, never
/// applied.
///
/// Examples:
///   tracer tcp-pressure                 # until Ctrl-C, then the report
///   tracer tcp-pressure -d 30s -i 5s    # a report every 5 s for 30 s
///   tracer tcp-pressure -d 10s --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Rows in the culprit, holder and socket tables.
    #[arg(long, default_value = "10", value_parser = run::parse_top, value_name = "N")]
    pub top: usize,
    /// Take refusals from the classic sock:sock_exceed_buf_limit tracepoint only: no
    /// socket cookies, so refusals go to the task that was current (in softirq, a
    /// bystander). Chosen by itself where BTF tracepoints do not load.
    #[arg(long)]
    pub no_socket_cookies: bool,
    /// Early warning when TCP memory stays at or above this percentage of tcp_mem's
    /// pressure threshold for --warn-after.
    #[arg(long, default_value_t = warn::Rule::DEFAULT_PCT, value_parser = parse_pct, value_name = "PCT")]
    pub warn_at: f64,
    /// How long every 100 ms sample must stay at or above --warn-at before it is a
    /// warning (one sample touching it is a burst, not evidence).
    #[arg(long, default_value = "3s", value_parser = run::parse_duration, value_name = "DURATION")]
    pub warn_after: Duration,
    #[command(flatten)]
    pub run: RunOpts,
}

/// A percentage in (0, 100].
fn parse_pct(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err(format!("`{s}` is not a percentage between 0 and 100")),
    }
}

/// Checks the options and says what to load; [`attach`] sets up the state once the
/// object is loaded.
pub fn prepare(args: Args) -> Result<run::Prepared> {
    // Readable /proc first: without it there is nothing to compare refusals with.
    let first = tcpmem::Snapshot::read()?;
    // --no-socket-cookies leaves the BTF tracepoint out of the choices.
    let choices: Vec<bpf::Choice> = CHOICES
        .iter()
        .filter(|c| !(args.no_socket_cookies && c.name == SOCKETS))
        .copied()
        .collect();
    Ok(run::Prepared {
        plan: bpf::Plan {
            choices,
            ..bpf::Plan::new(&SPEC)
        },
        ebpf_optional: false,
        opts: args.run.clone(),
        attach: Box::new(move |s| attach(args, first, run::loaded(s)?)),
    })
}

/// Fills the drop-reason table, names the path each choice took, and takes the maps,
/// after the hooks are attached.
fn attach(args: Args, first: tcpmem::Snapshot, session: &mut Session) -> Result<run::Attached> {
    let drop_names = fill_drop_reasons(session)?;
    let mut flags = Array::try_from(session.take_map("TCP_FLAGS")?)?;
    let mut caveats: Vec<String> = Vec::new();
    let refusal_hook = match session.chosen(SOCKETS) {
        Some(c) if c.path.is_some() => {
            flags
                .set(FLAG_BTF, 1, 0)
                .context("enabling the socket-cookie refusal program")?;
            "tp_btf/sock_exceed_buf_limit (with socket cookies: refusals go to the socket's owner)"
                .to_string()
        }
        Some(c) => format!(
            "sock:sock_exceed_buf_limit (no socket: refusals go to the current task; {})",
            c.describe()
        ),
        None => "sock:sock_exceed_buf_limit (no socket: refusals go to the current task; tp_btf not used: --no-socket-cookies)".to_string(),
    };
    let edges = session.chosen(EDGES).cloned();
    let edge_path = match edges.as_ref().and_then(|c| c.path) {
        Some(k) => format!(
            "{k} on tcp_enter/leave_memory_pressure (exact episode edges{}) + 10 Hz sampling",
            if k == "fentry" {
                ", with the entering socket"
            } else {
                ", with the entering task"
            }
        ),
        None => format!(
            "tracepoints + 10 Hz sampling ({})",
            edges
                .as_ref()
                .map(|c| c
                    .refused
                    .iter()
                    .map(|(p, e)| format!("{p}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        ),
    };
    let send = session.chosen(SEND).cloned();
    let send_path = match send.as_ref().and_then(|c| c.path) {
        Some("fentry") => Some("fentry/fexit tcp_sendmsg"),
        Some("kprobe") => Some("kprobe/kretprobe tcp_sendmsg"),
        Some(_) => Some("syscall entry -> sock:sock_send_length"),
        None => None,
    };
    if send_path.is_none() {
        caveats.push(format!(
            "send latency cannot be measured on this kernel: {}",
            send.as_ref().map(|c| c.describe()).unwrap_or_default()
        ));
    }
    let paths = Paths {
        pressure_edges: EdgesPath {
            path: (edges.as_ref().and_then(|c| c.path))
                .unwrap_or("sampling")
                .into(),
            detail: edges.as_ref().map(|c| c.describe()),
        },
        send_latency: SendPath {
            path: send.as_ref().and_then(|c| c.path).map(Into::into),
            detail: send.as_ref().map(|c| c.describe()),
        },
        refusal_sockets: SocketsPath {
            path: session.took(SOCKETS).unwrap_or("tracepoint").into(),
        },
    };
    let prune = prune::PruneWatch::new(session, session.chosen(PRUNE).cloned().as_ref(), args.top);
    let counts = PerCpuArray::try_from(session.take_map("TCP_COUNTS")?)?;
    let hist = PerCpuArray::try_from(session.take_map("TCP_SEND_HIST")?)?;
    let max = PerCpuArray::try_from(session.take_map("TCP_SEND_MAX")?)?;
    let sum = PerCpuArray::try_from(session.take_map("TCP_SEND_SUM")?)?;
    caveats.extend(
        session
            .missing(&SPEC)
            .map(|h| format!("{} is missing: cannot {}", h.hook, h.purpose)),
    );
    let drops_counted =
        !drop_names.is_empty() && session.missing(&SPEC).all(|h| h.program != "tcp_drop");
    if drop_names.is_empty() && session.missing(&SPEC).all(|h| h.program != "tcp_drop") {
        caveats.push(
            "skb:kfree_skb names none of the memory-related drop reasons on this kernel: drops are not counted"
                .into(),
        );
    }
    let mut det = TcpPressure {
        top: args.top,
        rule: warn::Rule {
            pct: args.warn_at,
            hold: args.warn_after,
        },
        near: warn::Near::default(),
        t0: procinfo::monotonic_ns(),
        latest: first.clone(),
        first,
        episodes: Episodes::with_kernel_edges(edges.as_ref().is_some_and(|c| c.path.is_some())),
        culprits: Culprits::default(),
        flags,
        counts,
        hist,
        max,
        sum,
        drop_names,
        drops_counted,
        caveats,
        path: format!(
            "{edge_path}; send latency from {}; refusals from {refusal_hook}",
            send_path.unwrap_or("nothing (not measured)")
        ),
        paths,
        send_path,
        pending: Vec::new(),
        last_resolve_ns: 0,
        owner_of: HashMap::new(),
        unresolved: 0,
        unattributed: 0,
        episode_socks: None,
        last_socket_look_ns: 0,
        refusal_records: 0,
        memcg: memcg::MemcgWatch::new(),
        memcg_batch: Vec::new(),
        rcvq: rcvq::RcvWatch::new(prune),
    };
    det.sample()?;
    Ok(run::Attached {
        detector: Box::new(det),
        what: "TCP memory, refused allocations and send latency".into(),
    })
}

/// (owner pid, comm, cgroup, receive and send queue bytes) of a refused socket.
type Owner = Option<(u32, String, String, u64, u64)>;

struct TcpPressure {
    top: usize,
    /// The early warning's rule and how long memory has stayed near the threshold.
    rule: warn::Rule,
    near: warn::Near,
    t0: u64,
    first: tcpmem::Snapshot,
    /// The last sample (the first one until the first sample).
    latest: tcpmem::Snapshot,
    episodes: Episodes,
    culprits: Culprits,
    flags: Array<MapData, u32>,
    counts: PerCpuArray<MapData, u64>,
    hist: PerCpuArray<MapData, u64>,
    max: PerCpuArray<MapData, u64>,
    sum: PerCpuArray<MapData, u64>,
    drop_names: Vec<&'static str>,
    /// kfree_skb is attached and names memory reasons: else drops are not known, and
    /// the report says so rather than "none".
    drops_counted: bool,
    caveats: Vec<String>,
    path: String,
    /// Per choice: the path taken.
    paths: Paths,
    /// How sends are timed (None: they cannot be on this kernel).
    send_path: Option<&'static str>,
    /// Refusals with a socket cookie, waiting for their owner to be looked up.
    pending: Vec<Refusal>,
    last_resolve_ns: u64,
    /// Socket cookie -> its owner, or None when no process held it at the lookup.
    owner_of: HashMap<u64, Owner>,
    /// Refusals whose socket was gone before its owner was looked up.
    unresolved: u64,
    /// Of those, refused while a kernel thread was current: counted for nobody.
    unattributed: u64,
    episode_socks: Option<SocketLook>,
    last_socket_look_ns: u64,
    refusal_records: u64,
    /// Refusals under the global threshold are followed to their memcgs (memcg.rs),
    /// in batches at each sample.
    memcg: memcg::MemcgWatch,
    memcg_batch: Vec<memcg::Pending>,
    rcvq: rcvq::RcvWatch,
}

impl TcpPressure {
    fn count(&self, slot: u32) -> u64 {
        self.counts
            .get(&slot, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    fn set_flag(&mut self, on: bool) {
        if let Err(e) = self.flags.set(FLAG_PRESSURE, u32::from(on), 0) {
            log::warn!("setting the pressure flag: {e}");
        }
    }

    /// Opening edge: flag on, and the sockets holding memory right now.
    fn on_open(&mut self, t_ns: u64) {
        self.set_flag(true);
        if self.last_socket_look_ns != 0
            && t_ns.saturating_sub(self.last_socket_look_ns) < SOCKET_LOOK_GAP_NS
        {
            return;
        }
        self.last_socket_look_ns = t_ns.max(1);
        let (snap, _) = SocketLook::take(t_ns, &HashSet::new());
        self.keep_if_larger(snap);
    }

    /// Keeps the look at the sockets during an episode where the sockets held the most.
    /// "Larger" is memory held by sockets a process owns, then memory in all: a look
    /// taken while the culprit exits (its sockets closing, owned by nobody) can hold
    /// more in all and name no holder.
    fn keep_if_larger(&mut self, snap: SocketLook) {
        let key = |s: &SocketLook| (s.holders.iter().map(|h| h.4).sum::<u64>(), s.total);
        if self
            .episode_socks
            .as_ref()
            .is_none_or(|old| key(&snap) > key(old))
        {
            self.episode_socks = Some(snap);
        }
    }

    /// Names the owners of refused sockets (by cookie, from one sock_diag dump) and
    /// counts the refusals for them; at most every RESOLVE_EVERY_NS unless `force`.
    fn resolve(&mut self, force: bool) {
        if self.pending.is_empty() {
            return;
        }
        let now = procinfo::monotonic_ns();
        let unknown: HashSet<u64> = self
            .pending
            .iter()
            .map(|r| r.cookie)
            .filter(|c| !self.owner_of.contains_key(c))
            .collect();
        if !unknown.is_empty()
            && (force || now.saturating_sub(self.last_resolve_ns) >= RESOLVE_EVERY_NS)
        {
            self.last_resolve_ns = now;
            let (snap, found) = SocketLook::take(now, &unknown);
            if self.owner_of.len() > OWNER_CACHE_CAPACITY {
                self.owner_of.clear();
            }
            let mut owners: HashMap<u64, Owner> = found
                .iter()
                .map(|(cookie, &(pid, rmem, wmem))| {
                    let (comm, cgroup) = snap.owner(pid);
                    (*cookie, Some((pid, comm, cgroup, rmem, wmem)))
                })
                .collect();
            // Sockets gone or held by no process (closed, orphaned): looked up once.
            for c in &unknown {
                owners.entry(*c).or_insert(None);
            }
            self.owner_of.extend(owners);
            log::debug!(
                "resolve: {} unknown cookies, {} found, {} owners known",
                unknown.len(),
                found.len(),
                self.owner_of.len()
            );
            if self.episodes.open().is_some() {
                self.keep_if_larger(snap);
            }
        } else if !force {
            return;
        }
        let mut keep = Vec::new();
        for mut r in std::mem::take(&mut self.pending) {
            let cgroup = match self.owner_of.get(&r.cookie) {
                Some(Some((pid, comm, cgroup, rmem, wmem))) => {
                    r.pid = *pid;
                    r.comm = comm.clone();
                    r.rmem = r.rmem.max(*rmem);
                    r.wmem = r.wmem.max(*wmem);
                    r.by_owner = true;
                    Some(cgroup.clone())
                }
                None if !force => {
                    // Not looked up yet (rate limit): try again next time.
                    keep.push(r);
                    continue;
                }
                _ => {
                    self.unresolved += 1;
                    // In softirq the current task is a bystander: a kernel thread
                    // (ksoftirqd) or whoever was interrupted. A kernel thread is never
                    // a culprit; leave the refusal unattributed (it stays in the total).
                    if procinfo::is_kernel_thread(r.pid) {
                        self.unattributed += 1;
                        continue;
                    }
                    None
                }
            };
            let pid = r.pid;
            self.memcg_batch.push((pid, r.kind, r.allocated));
            self.culprits
                .add(&r, || cgroup.unwrap_or_else(|| procinfo::cgroup_of(pid)));
        }
        self.pending = keep;
    }

    /// A kernel edge: an entry opens an episode at the kernel's moment, with the
    /// socket that crossed the limit looked up at once (it may close soon); a leave
    /// ends it exactly.
    fn on_edge(&mut self, ev: &PressureEdgeEvent) {
        let enter = ev.edge == EDGE_ENTER;
        let mut who = episodes::Entry {
            pid: ev.header.tgid,
            comm: comm_str(&ev.comm).to_string(),
            cookie: ev.cookie,
            ..Default::default()
        };
        let edges = if enter && ev.cookie != 0 && self.episodes.open().is_none() {
            let now = procinfo::monotonic_ns();
            let (snap, found) = SocketLook::take(now, &HashSet::from([ev.cookie]));
            if let Some(&(pid, _, _)) = found.get(&ev.cookie) {
                who.socket_owner_pid = Some(pid);
                who.socket_owner_comm = Some(snap.owner(pid).0);
            }
            let edges = self.episodes.on_edge(ev.header.ts_ns, true, who);
            if edges.opened {
                self.last_socket_look_ns = now.max(1);
                self.keep_if_larger(snap);
            }
            edges
        } else {
            self.episodes.on_edge(ev.header.ts_ns, enter, who)
        };
        if edges.opened {
            self.on_open(ev.header.ts_ns);
        }
    }

    fn rel_s(&self, t_ns: u64) -> f64 {
        t_ns.saturating_sub(self.t0) as f64 / 1e9
    }
}

impl Detector for TcpPressure {
    fn command(&self) -> &'static str {
        "tcp-pressure"
    }

    fn sample_every(&self) -> Option<Duration> {
        Some(SAMPLE_EVERY)
    }

    fn sample(&mut self) -> Result<()> {
        let snap = tcpmem::Snapshot::read()?;
        let t_ns = procinfo::monotonic_ns();
        self.near
            .on_sample(&self.rule, t_ns, snap.mem_pages, snap.tcp_mem.pressure);
        let edges = self.episodes.on_sample(Sample {
            t_ns,
            pages: snap.mem_pages,
            tcp_mem: snap.tcp_mem,
            pressures: snap.counters.get("TCPMemoryPressures").copied(),
            chrono_ms: snap.counters.get("TCPMemoryPressuresChrono").copied(),
        });
        if edges.opened {
            self.on_open(t_ns);
        } else if edges.closed {
            self.set_flag(false);
        } else if !self.episodes.kernel_edges
            && self.episodes.open().is_none()
            && snap.mem_pages < snap.tcp_mem.low
        {
            // A refusal set the kernel-side flag while no episode was open here (its
            // record not read yet, or lost): the kernel is out of pressure now.
            if self.flags.get(&FLAG_PRESSURE, 0).unwrap_or(0) != 0
                && self.count(COUNT_REFUSALS) <= self.refusal_records
            {
                self.set_flag(false);
            }
        }
        let prev = std::mem::replace(&mut self.latest, snap);
        self.resolve(false);
        let memcg_refused = self.flush_memcg();
        let pressure = self.episodes.open().is_some() || edges.closed || memcg_refused;
        self.rcvq.on_sample(&prev, &self.latest, pressure);
        Ok(())
    }

    fn on_event(&mut self, data: &[u8]) -> Result<(), BadRecord> {
        // Pressure edges and refusal records share the ring; the header says which.
        if let Ok((_, ev)) = run::decode::<PressureEdgeEvent>(data) {
            self.on_edge(&ev);
            return Ok(());
        }
        let (_, ev) = run::decode::<BufLimitEvent>(data)?;
        self.refusal_records += 1;
        let r = Refusal {
            pid: ev.header.tgid,
            comm: comm_str(&ev.comm).to_string(),
            kind: ev.kind,
            cookie: ev.cookie,
            rmem: ev.rmem_alloc.max(0) as u64,
            wmem: ev.wmem_queued.max(0) as u64,
            by_owner: false,
            allocated: ev.allocated,
        };
        if r.cookie != 0 {
            self.pending.push(r);
        } else {
            let pid = r.pid;
            self.memcg_batch.push((pid, r.kind, r.allocated));
            self.culprits.add(&r, || procinfo::cgroup_of(pid));
        }
        // The classic tracepoint carries the limits the kernel applied.
        let limits = (ev.sysctl_mem[1] != 0).then(|| TcpMem {
            low: ev.sysctl_mem[0],
            pressure: ev.sysctl_mem[1],
            high: ev.sysctl_mem[2],
        });
        let edges = self
            .episodes
            .on_refusal(ev.header.ts_ns, ev.allocated, limits);
        if edges.opened {
            self.on_open(ev.header.ts_ns);
        }
        Ok(())
    }

    fn report(&mut self, ctx: &ReportCtx) -> Result<Box<dyn Body>> {
        Ok(Box::new(self.build_report(ctx)))
    }
}
