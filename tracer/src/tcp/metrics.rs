//! What `tracer tcp-pressure` exposes (`--prom-file`, serve's /metrics); the report
//! fills them (report.rs and counters.rs, `collect`).
use crate::prom::{
    BaseUnit::{Bytes, Ratio, Seconds},
    Metric, counter, gauge, histogram,
};

/// Processes with series of their own, the most first.
pub const TOP: usize = 10;

pub const MEMORY: Metric = gauge(
    "tcp_memory",
    Some(Bytes),
    "Memory TCP sockets hold now (the kernel's tcp_mem accounting, in bytes).",
    &[],
);
pub const MEMORY_PEAK: Metric = gauge(
    "tcp_memory_peak",
    Some(Bytes),
    "Most memory TCP sockets held at once while tracing.",
    &[],
);
pub const MEMORY_LIMIT: Metric = gauge(
    "tcp_memory_limit",
    Some(Bytes),
    "net.ipv4.tcp_mem in bytes: threshold low, pressure (the kernel starts refusing) and high.",
    &["threshold"],
);
pub const MEMORY_OF_PRESSURE: Metric = gauge(
    "tcp_memory_of_pressure",
    Some(Ratio),
    "Memory TCP sockets hold now as a fraction of the pressure threshold (1 = pressure).",
    &[],
);
pub const PRESSURE: Metric = gauge(
    "tcp_memory_pressure",
    None,
    "1 while TCP is in memory pressure, else 0.",
    &[],
);
pub const EARLY_WARNING: Metric = gauge(
    "tcp_memory_early_warning",
    None,
    "1 while TCP memory stays near the pressure threshold (the early-warning rule holds), else 0.",
    &[],
);
pub const EPISODES: Metric = counter(
    "tcp_pressure_episodes",
    "Memory pressure episodes that ended while tracing.",
    &[],
);
pub const EPISODE_DURATION: Metric = histogram(
    "tcp_pressure_episode_duration",
    Some(Seconds),
    "Duration of the memory pressure episodes that ended while tracing.",
    &[],
    EPISODE_BOUNDS,
);
/// From an episode that a sample barely saw (the sampling is 10 Hz) to one that lasts
/// until tcp_mem is raised or the load goes: milliseconds to an hour.
pub const EPISODE_BOUNDS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 3600.0,
];
pub const REFUSALS: Metric = counter(
    "tcp_refusals",
    "Socket memory charges the kernel refused (sock_exceed_buf_limit) while tracing.",
    &[],
);
pub const DROPS: Metric = counter(
    "tcp_skb_drops",
    "Packets dropped for a memory reason (skb:kfree_skb) while tracing, by drop reason.",
    &["reason"],
);
pub const RCVQ_FULL: Metric = counter(
    "tcp_receive_queue_full",
    "Packets dropped because a socket's receive queue was full (sock:sock_rcvqueue_full) while tracing.",
    &[],
);
pub const RETRANSMITS: Metric = counter(
    "tcp_retransmits",
    "TCP retransmissions while tracing, in and out of memory pressure.",
    &["during"],
);
pub const PRESSURES: Metric = counter(
    "tcp_memory_pressures",
    "Times TCP entered memory pressure while tracing (TcpExt TCPMemoryPressures).",
    &[],
);
pub const PRESSURE_TIME: Metric = counter(
    "tcp_memory_pressure_time",
    "Time TCP spent in memory pressure while tracing (TcpExt TCPMemoryPressuresChrono).",
    &[],
)
.in_unit(Seconds);
pub const PRUNES: Metric = counter(
    "tcp_receive_queue_prunes",
    "Receive queue prunes to free memory while tracing (TcpExt PruneCalled).",
    &[],
);
pub const RCV_PRUNED: Metric = counter(
    "tcp_receive_queue_pruned_packets",
    "Packets dropped from receive queues because pruning did not free enough while tracing (TcpExt RcvPruned).",
    &[],
);
pub const OFO_PRUNED: Metric = counter(
    "tcp_out_of_order_queue_prunes",
    "Out-of-order queues dropped to free memory while tracing (TcpExt OfoPruned).",
    &[],
);
pub const RCVQ_DROP: Metric = counter(
    "tcp_receive_queue_drops",
    "Packets dropped because the receive queue could not be charged while tracing (TcpExt TCPRcvQDrop).",
    &[],
);
pub const ABORTS: Metric = counter(
    "tcp_aborts_on_memory",
    "Connections reset because of memory pressure while tracing (TcpExt TCPAbortOnMemory).",
    &[],
);
pub const SEND_LATENCY: Metric = histogram(
    "tcp_send_latency",
    Some(Seconds),
    "Time a send spent in the kernel, in and out of memory pressure, while tracing (bounds are powers of 2 nanoseconds, edges of the kernel's buckets).",
    &["during"],
    SEND_BOUNDS,
);
/// 2^10 ns (about 1 us) to 2^34 ns (about 17 s) by factors of 4: edges of the kernel's
/// log-linear buckets (tracer_common::tcp::lat_bucket), so each count is exact (a
/// latency of exactly a bound, to the nanosecond, counts under the next one). A send
/// takes microseconds; under pressure it waits for memory, up to the socket's timeout.
pub const SEND_BOUNDS: &[f64] = &[
    0.000_001_024,
    0.000_004_096,
    0.000_016_384,
    0.000_065_536,
    0.000_262_144,
    0.001_048_576,
    0.004_194_304,
    0.016_777_216,
    0.067_108_864,
    0.268_435_456,
    1.073_741_824,
    4.294_967_296,
    17.179_869_184,
];
pub const CULPRIT_REFUSALS: Metric = gauge(
    "tcp_process_refusals",
    None,
    "Refused socket memory charges of a process while tracing, for the 10 processes with the most.",
    crate::prom::PROCESS,
);
pub const HOLDER_BYTES: Metric = gauge(
    "tcp_process_socket_memory",
    Some(Bytes),
    "Memory queued in a process's sockets (receive plus send), for the 10 processes holding the most.",
    crate::prom::PROCESS,
);
pub const RCV_COLLAPSED: Metric = counter(
    "tcp_receive_queue_collapsed",
    "Packets merged into fewer buffers while receive queues were pruned, while tracing (TcpExt TCPRcvCollapsed).",
    &[],
);
pub const RCVQ_DURING_PRESSURE: Metric = counter(
    "tcp_receive_queue_pruning_during_pressure",
    "Receive-queue pruning while TCP memory was under pressure (global or a memcg's), by TcpExt counter: PruneCalled, RcvPruned, TCPRcvCollapsed.",
    &["counter"],
);
pub const SOCKET_PRUNES: Metric = gauge(
    "tcp_receive_queue_socket_prunes",
    None,
    "Receive-queue prunes that collapsed a socket's queue, summed by the owner's pod and command over the 10 sockets pruned most (kernels with fentry or kprobes).",
    &["pod", "comm"],
);
pub const POD_SOCKET_MEMORY: Metric = gauge(
    "tcp_pod_socket_memory",
    Some(Bytes),
    "Memory held by the TCP sockets of a pod's containers, for the 10 pods holding the most.",
    &["pod_uid", "namespace", "pod", "qos"],
);
pub const MEMCG_REFUSALS: Metric = gauge(
    "tcp_memcg_socket_pressure_refusals",
    None,
    "Socket memory charges a memory cgroup refused at its own limit while global TCP memory was under the pressure threshold, for the 10 memcgs with the most.",
    &["memcg"],
);
pub const MEMCG_LIMIT: Metric = gauge(
    "tcp_memcg_socket_pressure_limit",
    Some(Bytes),
    "The limit of a memory cgroup that refused socket memory (memory.max, or memory.kmem.tcp.limit_in_bytes on cgroup v1).",
    &["memcg"],
);
pub const REFUSALS_UNDER_GLOBAL: Metric = counter(
    "tcp_refusals_under_global_threshold",
    "Refused socket memory charges while global TCP memory was under tcp_mem's pressure threshold and no episode was open (a memcg refused them).",
    &[],
);

/// Every metric above (the registry lists them; docs/metrics.md is checked against it).
pub const METRICS: &[&Metric] = &[
    &MEMORY,
    &MEMORY_PEAK,
    &MEMORY_LIMIT,
    &MEMORY_OF_PRESSURE,
    &PRESSURE,
    &EARLY_WARNING,
    &EPISODES,
    &EPISODE_DURATION,
    &REFUSALS,
    &DROPS,
    &RCVQ_FULL,
    &RETRANSMITS,
    &PRESSURES,
    &PRESSURE_TIME,
    &PRUNES,
    &RCV_PRUNED,
    &OFO_PRUNED,
    &RCVQ_DROP,
    &ABORTS,
    &SEND_LATENCY,
    &CULPRIT_REFUSALS,
    &HOLDER_BYTES,
    &RCV_COLLAPSED,
    &RCVQ_DURING_PRESSURE,
    &SOCKET_PRUNES,
    &POD_SOCKET_MEMORY,
    &MEMCG_REFUSALS,
    &MEMCG_LIMIT,
    &REFUSALS_UNDER_GLOBAL,
];
