//! What tcp-pressure asks of the kernel: its hooks, the paths tried for pressure
//! edges, send latency and refusal sockets (fast path first), and the tracepoint
//! fields its programs read.
use super::*;

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
    kinds: &[
        tracer_common::EventKind::TcpBufLimit,
        tracer_common::EventKind::TcpPressureEdge,
    ],
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
pub(super) const EDGES: &str = "pressure edges";
pub(super) const SEND: &str = "send latency";
pub(super) const SOCKETS: &str = "refusal sockets";
pub(super) const PRUNE: &str = "pruned sockets";

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
    bpf::Choice {
        name: PRUNE,
        purpose: "receive-queue prunes attributed to their socket (tcp_prune_queue is inlined; its callees take the socket)",
        paths: &[
            bpf::Path {
                name: "fentry",
                hooks: &[
                    Hook::fentry(
                        "tcp_prune_collapse_fentry",
                        "tcp_collapse",
                        "prunes that collapse a receive queue, with the socket's cookie",
                    ),
                    Hook::fentry(
                        "tcp_prune_ofo_fentry",
                        "tcp_prune_ofo_queue",
                        "prunes that go on to discard data",
                    ),
                ],
            },
            bpf::Path {
                name: "kprobe",
                hooks: &[
                    Hook::kprobe(
                        "tcp_prune_collapse_kprobe",
                        "tcp_collapse",
                        "prunes that collapse a receive queue, with the socket's ports",
                    ),
                    Hook::kprobe(
                        "tcp_prune_ofo_kprobe",
                        "tcp_prune_ofo_queue",
                        "prunes that go on to discard data",
                    ),
                ],
            },
        ],
        otherwise: "prunes counted system-wide from TcpExt only",
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
pub(super) const MEMORY_DROP_REASONS: &[(&str, &str)] = &[
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

/// Writes reason number -> slot into TCP_DROP_SLOT from kfree_skb's `__print_symbolic`
/// table; returns the counted names by slot.
pub(super) fn fill_drop_reasons(session: &mut Session) -> Result<Vec<&'static str>> {
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
