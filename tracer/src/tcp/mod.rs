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
mod episodes;
mod sockets;
mod warn;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tracer_common::{
    comm_str,
    tcp::{
        BufLimitEvent, COUNT_DROP_BASE, COUNT_RCVQ_FULL, COUNT_REFUSALS, COUNT_RETRANS_NORMAL,
        COUNT_RETRANS_PRESSURE, DROP_REASON_CAPACITY, DROP_SLOTS, EDGE_ENTER, FLAG_BTF,
        FLAG_PRESSURE, LAT_BUCKETS, PressureEdgeEvent, lat_bucket, lat_range,
    },
};

use crate::{
    bpf::{self, Hook, Offset, Session, Spec},
    output::{self, Table, human_duration, round3},
    procinfo,
    run::{self, BadRecord, Detector, Report, ReportCtx, RunOpts},
    snapshot::tcpmem::{self, TcpMem},
};
use episodes::{Culprits, Episodes, Refusal, Sample};
use sockets::{Sock, Source};

pub const SPEC: Spec = Spec {
    detector: "tcp-pressure",
    prefix: "tcp",
    hooks: &[
        Hook {
            program: "tcp_buf_limit",
            category: "sock",
            name: "sock_exceed_buf_limit",
            required: true,
            purpose: "see refused TCP socket-memory allocations and who made them",
        },
        Hook {
            program: "tcp_drop",
            category: "skb",
            name: "kfree_skb",
            required: false,
            purpose: "count packets dropped for memory reasons (PROTO_MEM, prunes)",
        },
        Hook {
            program: "tcp_rcvq_full",
            category: "sock",
            name: "sock_rcvqueue_full",
            required: false,
            purpose: "count packets refused by full receive queues",
        },
        Hook {
            program: "tcp_retransmit",
            category: "tcp",
            name: "tcp_retransmit_skb",
            required: false,
            purpose: "count retransmits during and outside pressure",
        },
    ],
    offsets: &[
        off("TCP_LIMIT_NAME", "sock", "sock_exceed_buf_limit", "name"),
        off(
            "TCP_LIMIT_SYSCTL_MEM",
            "sock",
            "sock_exceed_buf_limit",
            "sysctl_mem",
        ),
        off(
            "TCP_LIMIT_ALLOCATED",
            "sock",
            "sock_exceed_buf_limit",
            "allocated",
        ),
        off(
            "TCP_LIMIT_SYSCTL_RMEM",
            "sock",
            "sock_exceed_buf_limit",
            "sysctl_rmem",
        ),
        off(
            "TCP_LIMIT_RMEM_ALLOC",
            "sock",
            "sock_exceed_buf_limit",
            "rmem_alloc",
        ),
        off(
            "TCP_LIMIT_SYSCTL_WMEM",
            "sock",
            "sock_exceed_buf_limit",
            "sysctl_wmem",
        ),
        off(
            "TCP_LIMIT_WMEM_ALLOC",
            "sock",
            "sock_exceed_buf_limit",
            "wmem_alloc",
        ),
        off(
            "TCP_LIMIT_WMEM_QUEUED",
            "sock",
            "sock_exceed_buf_limit",
            "wmem_queued",
        ),
        off("TCP_LIMIT_KIND", "sock", "sock_exceed_buf_limit", "kind"),
        off("TCP_DROP_REASON", "skb", "kfree_skb", "reason"),
        off("TCP_SEND_FAMILY", "sock", "sock_send_length", "family"),
        off("TCP_SEND_PROTOCOL", "sock", "sock_send_length", "protocol"),
    ],
    ring_bytes: 1 << 20,
};

/// Syscall entries + sock:sock_send_length: the tracepoint path of send latency.
const SEND_TRACEPOINTS: &[Hook] = &[
    Hook::tracepoint(
        "tcp_enter_sendto",
        "syscalls",
        "sys_enter_sendto",
        "time sendto() on TCP sockets",
    ),
    Hook::tracepoint(
        "tcp_enter_sendmsg",
        "syscalls",
        "sys_enter_sendmsg",
        "time sendmsg() on TCP sockets",
    ),
    Hook::tracepoint(
        "tcp_enter_sendmmsg",
        "syscalls",
        "sys_enter_sendmmsg",
        "time sendmmsg() on TCP sockets (first message of each call)",
    ),
    Hook::tracepoint(
        "tcp_enter_write",
        "syscalls",
        "sys_enter_write",
        "time write() on TCP sockets",
    ),
    Hook::tracepoint(
        "tcp_enter_writev",
        "syscalls",
        "sys_enter_writev",
        "time writev() on TCP sockets",
    ),
    Hook::tracepoint(
        "tcp_send_length",
        "sock",
        "sock_send_length",
        "end the timing of sends on TCP sockets (send latency)",
    ),
];

/// Choice names (keys of `Session::took`).
const EDGES: &str = "pressure edges";
const SEND: &str = "send latency";
const SOCKETS: &str = "refusal sockets";

/// Kernel paths tried in order; `tracer doctor` probes the same list.
pub const CHOICES: &[bpf::Choice] = &[
    bpf::Choice {
        name: EDGES,
        purpose: "exact start and end of pressure episodes, and the socket that started one",
        paths: &[
            bpf::Path {
                name: "fentry",
                hooks: &[
                    Hook::fentry(
                        "tcp_enter_pressure_fentry",
                        "tcp_enter_memory_pressure",
                        "the moment TCP enters memory pressure, with the socket",
                    ),
                    Hook::fentry(
                        "tcp_leave_pressure_fentry",
                        "tcp_leave_memory_pressure",
                        "the moment TCP leaves memory pressure",
                    ),
                ],
            },
            bpf::Path {
                name: "kprobe",
                hooks: &[
                    Hook::kprobe(
                        "tcp_enter_pressure_kprobe",
                        "tcp_enter_memory_pressure",
                        "the moment TCP enters memory pressure (task only)",
                    ),
                    Hook::kprobe(
                        "tcp_leave_pressure_kprobe",
                        "tcp_leave_memory_pressure",
                        "the moment TCP leaves memory pressure",
                    ),
                ],
            },
        ],
        otherwise: "episode edges from 10 Hz sampling of /proc",
    },
    bpf::Choice {
        name: SEND,
        purpose: "latency of sends on TCP sockets, during and outside pressure",
        paths: &[
            bpf::Path {
                name: "fentry",
                hooks: &[
                    Hook::fentry(
                        "tcp_sendmsg_fentry",
                        "tcp_sendmsg",
                        "start of every TCP send",
                    ),
                    Hook::fexit("tcp_sendmsg_fexit", "tcp_sendmsg", "end of every TCP send"),
                ],
            },
            bpf::Path {
                name: "kprobe",
                hooks: &[
                    Hook::kprobe(
                        "tcp_sendmsg_kprobe",
                        "tcp_sendmsg",
                        "start of every TCP send",
                    ),
                    Hook::kretprobe(
                        "tcp_sendmsg_kretprobe",
                        "tcp_sendmsg",
                        "end of every TCP send",
                    ),
                ],
            },
            bpf::Path {
                name: "tracepoints",
                hooks: SEND_TRACEPOINTS,
            },
        ],
        otherwise: "send latency is not measured",
    },
    bpf::Choice {
        name: SOCKETS,
        purpose: "refusals attributed to the refused socket's owner (by socket cookie)",
        paths: &[bpf::Path {
            name: "tp_btf",
            hooks: &[Hook::btf_tracepoint(
                "tcp_buf_limit_sk",
                "sock_exceed_buf_limit",
                "refused allocations with their socket",
            )],
        }],
        otherwise: "refusals go to the task that was current (sock:sock_exceed_buf_limit)",
    },
];

const fn off(
    global: &'static str,
    category: &'static str,
    event: &'static str,
    field: &'static str,
) -> Offset {
    Offset {
        global,
        category,
        event,
        field,
    }
}

/// skb:kfree_skb reasons counted as memory-related (names from the kernel's enum
/// skb_drop_reason; numbers are looked up in the format file on each kernel).
const MEMORY_DROP_REASONS: &[(&str, &str)] = &[
    ("PROTO_MEM", "protocol memory limit (tcp_mem) reached"),
    ("SOCKET_RCVBUFF", "socket receive buffer full"),
    ("SOCKET_BACKLOG", "socket backlog full"),
    ("TCP_OFO_QUEUE_PRUNE", "pruned from the out-of-order queue"),
    (
        "TCP_ZEROWINDOW",
        "receive window zero (receiver not reading)",
    ),
    ("NOMEM", "allocation failed"),
    ("PFMEMALLOC", "emergency memory reserve"),
];

/// How often /proc is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// At most one socket snapshot per this long (episodes can flap).
const SOCKET_SNAPSHOT_GAP_NS: u64 = 1_000_000_000;
/// Owners of refused sockets are looked up at most this often (one sock_diag dump
/// and /proc fd scan for all refusals since the last).
const RESOLVE_EVERY_NS: u64 = 200_000_000;
/// Owners remembered by socket cookie (cleared when full).
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

pub async fn run(args: Args) -> Result<()> {
    // Readable /proc first: without it there is nothing to compare refusals with.
    let first = tcpmem::Snapshot::read()?;
    // --no-socket-cookies leaves the BTF tracepoint out of the choices.
    let choices: Vec<bpf::Choice> = CHOICES
        .iter()
        .filter(|c| !(args.no_socket_cookies && c.name == SOCKETS))
        .copied()
        .collect();
    let mut session = bpf::start_with(&SPEC, &choices, &[])?;
    let drop_names = fill_drop_reasons(&mut session)?;
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
    let paths = json!({
        "pressure_edges": {
            "path": edges.as_ref().and_then(|c| c.path).unwrap_or("sampling"),
            "detail": edges.as_ref().map(|c| c.describe()),
        },
        "send_latency": {
            "path": send.as_ref().and_then(|c| c.path),
            "detail": send.as_ref().map(|c| c.describe()),
        },
        "refusal_sockets": {
            "path": session.took(SOCKETS).unwrap_or("tracepoint"),
        },
    });
    let counts = PerCpuArray::try_from(session.take_map("TCP_COUNTS")?)?;
    let hist = PerCpuArray::try_from(session.take_map("TCP_SEND_HIST")?)?;
    let max = PerCpuArray::try_from(session.take_map("TCP_SEND_MAX")?)?;
    caveats.extend(
        session
            .missing()
            .map(|h| format!("{} is missing: cannot {}", h.hook, h.purpose)),
    );
    let drops_counted =
        !drop_names.is_empty() && session.missing().all(|h| h.program != "tcp_drop");
    if drop_names.is_empty() && session.missing().all(|h| h.program != "tcp_drop") {
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
        last_sock_snapshot_ns: 0,
        refusal_records: 0,
    };
    det.sample()?;
    run::drive(
        &args.run,
        &mut session.ebpf,
        "TCP memory, refused allocations and send latency",
        &mut det,
    )
    .await
}

/// Writes reason number -> slot into TCP_DROP_SLOT from kfree_skb's `__print_symbolic`
/// table; returns the counted names by slot.
fn fill_drop_reasons(session: &mut Session) -> Result<Vec<&'static str>> {
    if !session.tracefs.has_tracepoint("skb", "kfree_skb") {
        return Ok(Vec::new());
    }
    let table = session
        .tracefs
        .format("skb", "kfree_skb")?
        .symbolic("reason");
    let mut slots: Array<&mut MapData, u32> = Array::try_from(
        session
            .ebpf
            .map_mut("TCP_DROP_SLOT")
            .context("map TCP_DROP_SLOT is missing from the eBPF object")?,
    )?;
    let mut names = Vec::new();
    for (name, _) in MEMORY_DROP_REASONS {
        let Some((num, _)) = table.iter().find(|(_, n)| n == name) else {
            continue;
        };
        if *num >= u64::from(DROP_REASON_CAPACITY) || names.len() >= DROP_SLOTS as usize {
            continue;
        }
        names.push(*name);
        slots
            .set(*num as u32, names.len() as u32, 0)
            .with_context(|| format!("writing drop reason {name}"))?;
    }
    Ok(names)
}

/// One look at the TCP sockets (during an episode, or now): the largest holders
/// and per-process totals, bounded whatever the number of sockets.
struct SockSnap {
    t_ns: u64,
    source: Source,
    /// Memory charged to all sockets, bytes.
    total: u64,
    /// The KEEP_SOCKETS sockets holding the most.
    socks: Vec<Sock>,
    /// Per owner: (pid, sockets, receive queue, send queue, charged), most first.
    holders: Vec<(u32, usize, u64, u64, u64)>,
    /// comm and cgroup of each owner, read when the snapshot was taken (an owner
    /// may be gone by the time the report is printed).
    owners: HashMap<u32, (String, String)>,
}

/// Sockets kept per snapshot (the report shows at most --top of them).
const KEEP_SOCKETS: usize = 1000;

impl SockSnap {
    /// Takes a snapshot; also returns (owner pid, receive and send queue bytes) of
    /// the sockets whose cookie is in `cookies` and that a process holds.
    fn take(t_ns: u64, cookies: &HashSet<u64>) -> (SockSnap, HashMap<u64, (u32, u64, u64)>) {
        let (mut socks, source) = sockets::snapshot(cookies);
        let found: HashMap<u64, (u32, u64, u64)> = socks
            .iter()
            .filter(|s| cookies.contains(&s.cookie))
            .filter_map(|s| Some((s.cookie, (s.pid?, s.rmem, s.wmem))))
            .collect();
        let total = socks.iter().map(Sock::total).sum();
        let mut per_pid: HashMap<u32, (usize, u64, u64, u64)> = HashMap::new();
        for s in &socks {
            if let Some(pid) = s.pid {
                let h = per_pid.entry(pid).or_default();
                h.0 += 1;
                h.1 += s.rmem;
                h.2 += s.wmem;
                h.3 += s.total();
            }
        }
        let mut holders: Vec<_> = per_pid
            .into_iter()
            .filter(|(_, h)| h.3 > 0)
            .map(|(p, (n, r, w, t))| (p, n, r, w, t))
            .collect();
        holders.sort_by(|a, b| b.4.cmp(&a.4).then(a.0.cmp(&b.0)));
        holders.truncate(KEEP_SOCKETS);
        // sockets::snapshot sorted them, largest first.
        socks.retain(|s| s.total() > 0);
        socks.truncate(KEEP_SOCKETS);
        let owners = socks
            .iter()
            .filter_map(|s| s.pid)
            .chain(holders.iter().map(|h| h.0))
            .chain(found.values().map(|v| v.0))
            .collect::<HashSet<u32>>()
            .into_iter()
            .map(|p| {
                let comm = procinfo::comm_of(p).unwrap_or_else(|| "?".into());
                (p, (comm, procinfo::cgroup_of(p)))
            })
            .collect();
        let snap = SockSnap {
            t_ns,
            source,
            total,
            socks,
            holders,
            owners,
        };
        (snap, found)
    }

    fn owner(&self, pid: u32) -> (String, String) {
        self.owners
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| ("?".into(), "-".into()))
    }
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
    drop_names: Vec<&'static str>,
    /// kfree_skb is attached and names memory reasons: else drops are not known, and
    /// the report says so rather than "none".
    drops_counted: bool,
    caveats: Vec<String>,
    path: String,
    /// Per choice: the path taken (JSON `paths`).
    paths: Value,
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
    episode_socks: Option<SockSnap>,
    last_sock_snapshot_ns: u64,
    refusal_records: u64,
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
        if self.last_sock_snapshot_ns != 0
            && t_ns.saturating_sub(self.last_sock_snapshot_ns) < SOCKET_SNAPSHOT_GAP_NS
        {
            return;
        }
        self.last_sock_snapshot_ns = t_ns.max(1);
        let (snap, _) = SockSnap::take(t_ns, &HashSet::new());
        self.keep_if_larger(snap);
    }

    /// Keeps the socket snapshot of an episode where the sockets held the most.
    /// "Larger" is memory held by sockets a process owns, then memory in all: a look
    /// taken while the culprit exits (its sockets closing, owned by nobody) can hold
    /// more in all and name no holder.
    fn keep_if_larger(&mut self, snap: SockSnap) {
        let key = |s: &SockSnap| (s.holders.iter().map(|h| h.4).sum::<u64>(), s.total);
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
            let (snap, found) = SockSnap::take(now, &unknown);
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
            let (snap, found) = SockSnap::take(now, &HashSet::from([ev.cookie]));
            if let Some(&(pid, _, _)) = found.get(&ev.cookie) {
                who.socket_owner_pid = Some(pid);
                who.socket_owner_comm = Some(snap.owner(pid).0);
            }
            let edges = self.episodes.on_edge(ev.header.ts_ns, true, who);
            if edges.opened {
                self.last_sock_snapshot_ns = now.max(1);
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

    /// The exact largest send latency (ns) of half 0 (normal) or 1 (pressure).
    fn send_max(&self, half: u32) -> u64 {
        self.max
            .get(&half, 0)
            .map(|v| v.iter().copied().max().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Send latency histograms (ns) from the kernel's buckets: (normal, pressure).
    fn latency(&self) -> [Histogram<u64>; 2] {
        let mut out = [output::new_histogram(), output::new_histogram()];
        for (half, h) in out.iter_mut().enumerate() {
            let max = self.send_max(half as u32);
            let base = half as u32 * LAT_BUCKETS;
            let max_bucket = lat_bucket(max);
            for b in 0..LAT_BUCKETS {
                let n: u64 = self
                    .hist
                    .get(&(base + b), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let (lo, hi) = lat_range(b);
                let mid = (lo + (hi - lo) / 2).clamp(h.low(), h.high());
                if b == max_bucket {
                    // One sample of the top bucket is the exact maximum.
                    let _ = h.record_n(mid.min(max), n - 1);
                    let _ = h.record(max.clamp(h.low(), h.high()));
                } else {
                    let _ = h.record_n(mid, n);
                }
            }
        }
        out
    }
}

fn latency_json(h: &Histogram<u64>, exact_max: u64) -> Value {
    // Quantiles at the bottom of hdrhistogram's equivalence range (its own rounding
    // is far finer than the kernel's 1/16 buckets), never above the exact maximum.
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            let v = h.lowest_equivalent(h.value_at_quantile(q)).min(exact_max);
            round3(v as f64 / 1e3)
        }
    };
    json!({
        "count": h.len(),
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": round3(exact_max as f64 / 1e3),
    })
}

fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else {
        format!("{:.2} GiB", b / 1073741824.0)
    }
}

fn read_triple(path: &str) -> Option<[u64; 3]> {
    tcpmem::triple(&std::fs::read_to_string(path).ok()?)
}

fn mem_total_bytes() -> Option<u64> {
    use procfs::Current as _;
    procfs::Meminfo::current().ok().map(|m| m.mem_total)
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
        self.latest = snap;
        self.resolve(false);
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
        };
        if r.cookie != 0 {
            self.pending.push(r);
        } else {
            let pid = r.pid;
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

    fn report(&mut self, ctx: &ReportCtx) -> Result<Report> {
        self.resolve(true);
        let snap = &self.latest;
        let tm: TcpMem = snap.tcp_mem;
        let ps = snap.page_size;
        let pages = snap.mem_pages;
        let peak = self.episodes.peak_pages.max(pages);
        let pct = snap.pressure_pct();
        let open = self.episodes.open().is_some();
        let near = self.near.state(&self.rule);
        let warning = warn::warning(open, pages, tm.pressure, &near);

        // Episodes.
        let mut ep_json = Vec::new();
        let mut ep_table = Table::new(&[
            "#",
            "START",
            "DURATION",
            "PEAK PAGES",
            "PEAK",
            "REFUSALS",
            "KERNEL MS",
            "STARTED BY",
        ]);
        let mut dur_hist = output::new_histogram();
        for (i, e) in self.episodes.list.iter().enumerate() {
            let d = e.duration_ms();
            if let Some(d) = d {
                output::record(&mut dur_hist, d);
            }
            ep_table.row(vec![
                (i + 1).to_string(),
                format!("+{:.1}s", self.rel_s(e.start_ns)),
                d.map(|d| human_duration(d as f64 / 1e3))
                    .unwrap_or_else(|| "open".into()),
                e.peak_pages.to_string(),
                human_bytes(e.peak_pages * ps),
                e.refusals.to_string(),
                e.kernel_ms
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                match &e.entered_by {
                    // Whose socket crossed the limit (fentry), else the task that ran.
                    Some(w) => match (w.socket_owner_pid, &w.socket_owner_comm) {
                        (Some(p), Some(c)) => {
                            format!("{} (socket of {p} {c})", e.started_by.as_str())
                        }
                        _ => format!("{} (task {} {})", e.started_by.as_str(), w.pid, w.comm),
                    },
                    None => e.started_by.as_str().into(),
                },
            ]);
            ep_json.push(json!({
                "start_s": round3(self.rel_s(e.start_ns)),
                "duration_ms": d,
                "peak_pages": e.peak_pages,
                "refusals": e.refusals,
                "started_by": e.started_by.as_str(),
                "tcp_mem": e.tcp_mem,
                "kernel_ms": e.kernel_ms,
                "kernel_entries": e.kernel_entries,
                "end_exact": e.end_exact,
                "entered_by": e.entered_by,
            }));
        }

        // Culprits by refused allocations.
        let ranked = self.culprits.ranked();
        let mut cul_json = Vec::new();
        let mut cul_table = Table::new(&[
            "PID",
            "COMM",
            "REFUSALS",
            "SEND",
            "RECV",
            "KIND",
            "SOCKETS",
            "MAX RECV Q",
            "MAX SEND Q",
            "CGROUP",
        ]);
        for (pid, c) in ranked.iter().take(self.top) {
            cul_table.row(vec![
                pid.to_string(),
                c.comm.clone(),
                c.refusals().to_string(),
                c.send.to_string(),
                c.recv.to_string(),
                c.kind().into(),
                c.sockets.len().to_string(),
                human_bytes(c.max_rmem),
                human_bytes(c.max_wmem),
                c.cgroup.clone(),
            ]);
            cul_json.push(json!({
                "pid": pid, "comm": c.comm, "cgroup": c.cgroup, "refusals": c.refusals(),
                "send": c.send, "recv": c.recv, "kind": c.kind(), "sockets": c.sockets.len(),
                "by_current_task": c.by_context,
                "max_rmem_bytes": c.max_rmem, "max_wmem_bytes": c.max_wmem,
            }));
        }

        // Sockets: at the episode start where they held most, else now.
        let now_snap;
        let (sock_snap, when) = match &self.episode_socks {
            Some(s) => (s, "episode"),
            None => {
                now_snap = SockSnap::take(procinfo::monotonic_ns(), &HashSet::new()).0;
                (&now_snap, "now")
            }
        };
        let all_bytes = sock_snap.total;
        let mut hold_json = Vec::new();
        let mut hold_table = Table::new(&[
            "PID", "COMM", "SOCKETS", "RECV Q", "SEND Q", "HELD", "CGROUP",
        ]);
        for (pid, n, r, w, t) in sock_snap.holders.iter().take(self.top) {
            let (comm, cgroup) = sock_snap.owner(*pid);
            hold_table.row(vec![
                pid.to_string(),
                comm.clone(),
                n.to_string(),
                human_bytes(*r),
                human_bytes(*w),
                human_bytes(*t),
                cgroup.clone(),
            ]);
            hold_json.push(
                json!({"pid": pid, "comm": comm, "cgroup": cgroup, "sockets": n,
                                  "rmem_bytes": r, "wmem_bytes": w, "held_bytes": t}),
            );
        }
        let top_socks: Vec<&Sock> = sock_snap.socks.iter().take(self.top).collect();
        let mut sock_table = Table::new(&[
            "LOCAL", "PEER", "STATE", "RECV Q", "RCVBUF", "SEND Q", "SNDBUF", "HELD", "PID", "COMM",
        ]);
        let mut sock_json = Vec::new();
        for s in &top_socks {
            let comm = s.pid.map(|p| sock_snap.owner(p).0);
            let opt = |v: Option<u64>| v.map(human_bytes).unwrap_or_else(|| "-".into());
            sock_table.row(vec![
                s.local.to_string(),
                s.peer.to_string(),
                s.state.into(),
                human_bytes(s.rmem),
                opt(s.rcvbuf),
                human_bytes(s.wmem),
                opt(s.sndbuf),
                human_bytes(s.total()),
                s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                comm.clone().unwrap_or_else(|| "-".into()),
            ]);
            let mut v = serde_json::to_value(s)?;
            v["comm"] = json!(comm);
            v["held_bytes"] = json!(s.total());
            sock_json.push(v);
        }
        let top_bytes: u64 = top_socks.iter().map(|s| s.total()).sum();
        let top_recv: u64 = top_socks.iter().map(|s| s.rmem).sum();
        let top_share = (all_bytes > 0 && !top_socks.is_empty()).then(|| {
            (
                top_bytes as f64 / all_bytes as f64,
                top_socks.len(),
                top_recv * 2 >= top_bytes,
            )
        });

        // Effects.
        let mut drops = serde_json::Map::new();
        let mut drop_text = Vec::new();
        for (i, name) in self.drop_names.iter().enumerate() {
            let n = self.count(COUNT_DROP_BASE + i as u32);
            drops.insert((*name).into(), n.into());
            if n > 0 {
                drop_text.push(format!("{name} {n}"));
            }
        }
        let retrans_p = self.count(COUNT_RETRANS_PRESSURE);
        let retrans_n = self.count(COUNT_RETRANS_NORMAL);
        let rcvq_full = self.count(COUNT_RCVQ_FULL);
        let refusals = self.count(COUNT_REFUSALS);
        let mut ext = serde_json::Map::new();
        let mut ext_text = Vec::new();
        for name in tcpmem::PRESSURE_COUNTERS {
            let (Some(a), Some(b)) = (self.first.counters.get(*name), snap.counters.get(*name))
            else {
                continue;
            };
            let d = b.saturating_sub(*a);
            ext.insert((*name).into(), d.into());
            ext_text.push(format!("{name} +{d}"));
        }
        let lat = self.latency();

        // Advice is about the limits in force when it hurt most.
        let adv_mem = self.episodes.worst().and_then(|e| e.tcp_mem).unwrap_or(tm);
        let mut adv = advice::compute(&advice::Inputs {
            tcp_mem: adv_mem,
            page_size: ps,
            peak_pages: peak,
            episodes: self.episodes.list.len(),
            sustained_near: near.sustained,
            near_rule: self.rule.describe(),
            mem_total_bytes: mem_total_bytes(),
            top_share,
            rmem: read_triple("/proc/sys/net/ipv4/tcp_rmem"),
            wmem: read_triple("/proc/sys/net/ipv4/tcp_wmem"),
        });

        if adv_mem != tm {
            adv.notes.insert(
                1,
                format!(
                    "tcp_mem was {} {} {} during the worst episode and is {} {} {} now; the advice is about the former",
                    adv_mem.low, adv_mem.pressure, adv_mem.high, tm.low, tm.pressure, tm.high
                ),
            );
        }
        let mut caveats = self.caveats.clone();
        if ctx.lost_events > 0 {
            caveats.push(format!(
                "{} refusal records were lost (ring buffer full): culprit counts are low; the kernel counted {refusals} refusals in all",
                ctx.lost_events
            ));
        }
        if self.unresolved > 0 {
            caveats.push(format!(
                "{} refusals hit sockets that no process held when looked up (closed or orphaned): {} counted for the task that was current, {} for nobody (a kernel thread was current: softirq work, not a culprit)",
                self.unresolved,
                self.unresolved - self.unattributed,
                self.unattributed
            ));
        }

        let json = json!({
            "tcp_mem": tm,
            "page_size": ps,
            "mem_pages": {"current": pages, "peak": peak, "pct_of_pressure": round3(pct)},
            "mem_bytes": {"current": pages * ps, "peak": peak * ps},
            "pressure_now": open,
            "warning": warning,
            "early_warning": near,
            "episodes": ep_json,
            "episode_duration_ms": output::Summary::of(&dur_hist),
            "refusals": refusals,
            "culprits": cul_json,
            "holders": hold_json,
            "top_sockets": {
                "when": when,
                "at_s": round3(self.rel_s(sock_snap.t_ns)),
                "source": sock_snap.source,
                "total_bytes": all_bytes,
                "sockets": sock_json,
            },
            "drops": self.drops_counted.then_some(drops),
            "rcvqueue_full": rcvq_full,
            "retransmits": {"pressure": retrans_p, "normal": retrans_n},
            "tcpext": ext,
            "send_latency_us": match self.send_path {
                Some(via) => json!({
                    "measured": true,
                    "via": via,
                    "pressure": latency_json(&lat[1], self.send_max(1)),
                    "normal": latency_json(&lat[0], self.send_max(0)),
                }),
                None => json!({
                    "measured": false,
                    "why": caveats.iter().find(|c| c.starts_with("send latency")),
                }),
            },
            "advice": adv,
            "path": self.path,
            "paths": self.paths,
            "caveats": caveats,
        });

        // Text.
        let mut t = String::new();
        t += &format!(
            "TCP memory now: {pages} pages ({}) = {pct:.0}% of pressure; peak {peak} pages ({})\n",
            human_bytes(pages * ps),
            human_bytes(peak * ps)
        );
        t += &format!(
            "tcp_mem: low {} ({}), pressure {} ({}), high {} ({}) pages\n",
            tm.low,
            human_bytes(tm.low * ps),
            tm.pressure,
            human_bytes(tm.pressure * ps),
            tm.high,
            human_bytes(tm.high * ps)
        );
        match &warning {
            Some(w) => t += &format!("WARNING: {w}\n"),
            None => t += &format!("{}\n", warn::no_warning_line(&near, &self.rule)),
        }
        t += &format!("path: {}\n", self.path);
        for c in &caveats {
            t += &format!("note: {c}\n");
        }
        t += "\nEPISODES (TCP memory pressure)\n";
        if ep_table.is_empty() {
            t += "  none: TCP memory stayed out of pressure\n";
        } else {
            t += &ep_table.render();
            if !dur_hist.is_empty() {
                t += "episode durations\n";
                t += &output::log2_histogram(&dur_hist, "msecs");
            }
        }
        t += &format!("\nCULPRITS (refused TCP allocations: {refusals} in all)\n");
        if cul_table.is_empty() {
            t += "  none: no TCP allocation was refused\n";
        } else {
            t += &cul_table.render();
        }
        let at = if when == "now" {
            "now".to_string()
        } else {
            format!(
                "at +{:.1}s, the fullest look during an episode",
                self.rel_s(sock_snap.t_ns)
            )
        };
        t += &format!(
            "\nHOLDERS (socket memory {at}: {} in all; {})\n",
            human_bytes(all_bytes),
            sock_snap.source.as_str()
        );
        if hold_table.is_empty() {
            t += "  none\n";
        } else {
            t += &hold_table.render();
            t += "\nTOP SOCKETS\n";
            t += &sock_table.render();
        }
        t += "\nEFFECTS\n";
        t += &format!(
            "  memory-related drops: {}\n",
            if !self.drops_counted {
                "not counted (see the note above)".into()
            } else if drop_text.is_empty() {
                "none".into()
            } else {
                drop_text.join(", ")
            }
        );
        t += &format!(
            "  retransmits: {retrans_p} during pressure, {retrans_n} outside; receive queue full: {rcvq_full}\n"
        );
        t += &format!("  TcpExt since start: {}\n", ext_text.join(", "));
        match self.send_path {
            Some(via) => {
                t += &format!("\nSEND LATENCY during pressure ({via}, TCP only)\n");
                t += &latency_text(&lat[1]);
                t += "\nSEND LATENCY outside pressure\n";
                t += &latency_text(&lat[0]);
            }
            None => {
                t += "\nSEND LATENCY during pressure: NOT MEASURED (no hook can time sends on this kernel; see the note above)\n";
            }
        }
        t += "\nADVICE (computed from the measured numbers above; printed, never applied)\n";
        for n in &adv.notes {
            t += &format!("  {n}\n");
        }
        for l in &adv.sysctl {
            t += &format!("  {l}\n");
        }
        if !adv.sysctl.is_empty() {
            t += "  to persist, put the same settings (`net.ipv4.tcp_mem = ...`) in /etc/sysctl.d/90-tcp-memory.conf and run `sysctl --system`\n";
        }
        Ok(Report { json, text: t })
    }
}

/// bcc-style histogram in usecs of a ns histogram.
fn latency_text(ns: &Histogram<u64>) -> String {
    let mut us = output::new_histogram();
    for v in ns.iter_recorded() {
        let _ = us.record_n(
            (v.value_iterated_to() / 1000).clamp(us.low(), us.high()),
            v.count_at_value(),
        );
    }
    output::log2_histogram(&us, "usecs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_json_is_in_usecs_and_max_is_exact() {
        let mut h = output::new_histogram();
        h.record_n(10_000, 99).unwrap();
        h.record(250_000_000).unwrap();
        let j = latency_json(&h, 250_000_123);
        assert_eq!(j["count"], 100);
        assert_eq!(j["p50"], 10.0);
        assert_eq!(j["max"], 250_000.123);
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
