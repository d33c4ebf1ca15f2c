//! What `tracer triage` exposes (`--prom-file`, serve's /metrics); the report fills
//! them (report.rs, `collect`). Triage measures one window, so its values are gauges
//! of that window.
use crate::prom::{
    BaseUnit::{Bytes, Ratio, Seconds},
    Metric, gauge, histogram,
};

pub const FINDING: Metric = gauge(
    "triage_finding_severity",
    None,
    "One check of the USE checklist judged: 0 ok, 1 warn, 2 crit. subject is the device, interface, hierarchy, mount or parent pid the check is about (at most 5 per check), empty when machine-wide.",
    &["resource", "check", "subject"],
);
pub const WORST: Metric = gauge(
    "triage_worst_severity",
    None,
    "The worst severity of all checks: 0 ok, 1 warn, 2 crit.",
    &[],
);
pub const WINDOW: Metric = gauge(
    "triage_window",
    Some(Seconds),
    "Length of the window the checks measured.",
    &[],
);
pub const RUNQ_LATENCY: Metric = histogram(
    "triage_runqueue_latency",
    Some(Seconds),
    "Time woken tasks waited for a CPU since the run started, a one-shot run's window (bounds are powers of 2 microseconds, edges of the kernel's log2 buckets).",
    &[],
    RUNQ_BOUNDS,
);
/// 1 us to 2^24 us (about 17 s) by factors of 4: edges of the kernel's log2 slots of
/// whole microseconds, so each count is exact (a latency of exactly a bound, to the
/// nanosecond, counts under the next one). A task on an idle CPU waits microseconds; a
/// saturated or throttled one, milliseconds to seconds.
pub const RUNQ_BOUNDS: &[f64] = &[
    0.000_001, 0.000_004, 0.000_016, 0.000_064, 0.000_256, 0.001_024, 0.004_096, 0.016_384,
    0.065_536, 0.262_144, 1.048_576, 4.194_304, 16.777_216,
];
pub const LOAD1: Metric = gauge("triage_load1", None, "1-minute load average.", &[]);
pub const LOAD5: Metric = gauge("triage_load5", None, "5-minute load average.", &[]);
pub const LOAD15: Metric = gauge("triage_load15", None, "15-minute load average.", &[]);
pub const CPU: Metric = gauge(
    "triage_cpu_time",
    Some(Ratio),
    "Fraction of all CPUs' time in the window, by mode (busy is all but idle and iowait).",
    &["mode"],
);
pub const RUNNABLE: Metric = gauge(
    "triage_runnable_tasks",
    None,
    "Runnable tasks (running or waiting for a CPU) on average over the window.",
    &[],
);
pub const PSI: Metric = gauge(
    "triage_pressure_some",
    Some(Ratio),
    "Fraction of the window in which some task stalled on the resource (PSI some; absent without PSI).",
    &["resource"],
);
pub const MEM_TOTAL: Metric = gauge(
    "triage_memory_total",
    Some(Bytes),
    "Memory in all (MemTotal).",
    &[],
);
pub const MEM_AVAILABLE: Metric = gauge(
    "triage_memory_available",
    Some(Bytes),
    "Memory available for new work without swapping (MemAvailable).",
    &[],
);
pub const SWAP_USED: Metric = gauge("triage_swap_used", Some(Bytes), "Swap in use.", &[]);
pub const DISK_AWAIT: Metric = gauge(
    "triage_disk_await",
    Some(Seconds),
    "Average time an I/O of the disk took in the window, queueing included.",
    &["device"],
);
pub const DISK_UTIL: Metric = gauge(
    "triage_disk_utilization",
    Some(Ratio),
    "Fraction of the window the disk was busy.",
    &["device"],
);
pub const DISK_IOPS: Metric = gauge(
    "triage_disk_iops",
    None,
    "I/Os per second on the disk in the window.",
    &["device"],
);
pub const TCP_ESTABLISHED: Metric = gauge(
    "triage_tcp_established",
    None,
    "TCP connections established now.",
    &[],
);
pub const TCP_RETRANS: Metric = gauge(
    "triage_tcp_retransmitted",
    Some(Ratio),
    "Fraction of the TCP segments sent in the window that were retransmissions.",
    &[],
);
pub const TASKS: Metric = gauge(
    "triage_tasks",
    None,
    "Tasks (threads) in use: each holds a pid.",
    &[],
);
pub const TASKS_LIMIT: Metric = gauge(
    "triage_tasks_limit",
    None,
    "The most tasks the kernel allows: min(pid_max, threads-max).",
    &[],
);
pub const ZOMBIES: Metric = gauge("triage_zombies", None, "Zombie processes now.", &[]);
pub const CGROUPS_DYING: Metric = gauge(
    "triage_cgroups_dying",
    None,
    "Dying cgroups (removed, not yet released) in the hierarchy (absent when the kernel does not say).",
    &["hierarchy"],
);
pub const FS_INODES_USED: Metric = gauge(
    "triage_filesystem_inodes_used",
    Some(Ratio),
    "Fraction of the filesystem's inodes in use.",
    &["mount", "device", "fstype"],
);
pub const TCP_MEM: Metric = gauge(
    "triage_tcp_memory_of_pressure",
    Some(Ratio),
    "Memory TCP sockets hold as a fraction of the tcp_mem pressure threshold (1 = pressure).",
    &[],
);

/// Every metric above, for the README check (`prom::all_metrics`).
#[cfg_attr(not(test), allow(dead_code))]
pub const METRICS: &[&Metric] = &[
    &FINDING,
    &WORST,
    &WINDOW,
    &RUNQ_LATENCY,
    &LOAD1,
    &LOAD5,
    &LOAD15,
    &CPU,
    &RUNNABLE,
    &PSI,
    &MEM_TOTAL,
    &MEM_AVAILABLE,
    &SWAP_USED,
    &DISK_AWAIT,
    &DISK_UTIL,
    &DISK_IOPS,
    &TCP_ESTABLISHED,
    &TCP_RETRANS,
    &TASKS,
    &TASKS_LIMIT,
    &ZOMBIES,
    &CGROUPS_DYING,
    &FS_INODES_USED,
    &TCP_MEM,
];
