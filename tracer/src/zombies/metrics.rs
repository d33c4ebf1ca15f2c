//! What `tracer zombies` exposes (`--prom-file`, serve's /metrics); the report fills
//! them (report.rs, `collect`).
use crate::prom::{BaseUnit::Seconds, Metric, counter, gauge, histogram};

/// Parents with series of their own, the most zombies first.
pub const TOP_PARENTS: usize = 10;

pub const PRESENT: Metric = gauge(
    "zombies_present",
    None,
    "Zombie processes at the report (under --pid's parent when given).",
    &[],
);
pub const STUCK: Metric = gauge(
    "zombies_stuck",
    None,
    "Zombies past the stuck rule: unreaped longer than their parent's usual reaping.",
    &[],
);
pub const IN_FLIGHT: Metric = gauge(
    "zombies_in_flight",
    None,
    "Zombies not (yet) past the stuck rule: likely to be reaped soon.",
    &[],
);
pub const GROWING: Metric = gauge(
    "zombies_growing",
    None,
    "1 when the zombie count rises steadily over the trend span, else 0.",
    &[],
);
pub const GROWTH: Metric = gauge(
    "zombies_growth_per_second",
    None,
    "Recent rate of change of the zombie count, zombies per second (absent until the trend has enough samples).",
    &[],
);
pub const TASKS: Metric = gauge(
    "zombies_tasks",
    None,
    "Tasks (threads) in use on the machine: each holds a pid.",
    &[],
);
pub const PID_MAX: Metric = gauge(
    "zombies_pid_max",
    None,
    "kernel.pid_max: the largest pid the kernel hands out.",
    &[],
);
pub const THREADS_MAX: Metric = gauge(
    "zombies_threads_max",
    None,
    "kernel.threads-max: the most tasks the kernel allows.",
    &[],
);
pub const EXHAUSTION: Metric = gauge(
    "zombies_pid_exhaustion_eta",
    Some(Seconds),
    "Time until pids run out at the current zombie growth (absent when not growing).",
    &[],
);
pub const FORKS: Metric = counter("zombies_forks", "Processes forked while tracing.", &[]);
pub const EXITS: Metric = counter("zombies_exits", "Processes exited while tracing.", &[]);
pub const REAPS: Metric = counter(
    "zombies_reaps",
    "Zombies reaped while tracing (each has a reap latency).",
    &[],
);
pub const REAP_LATENCY: Metric = histogram(
    "zombies_reap_latency",
    Some(Seconds),
    "Time from a process's exit to its parent reaping it, since the start.",
    &[],
    REAP_BOUNDS,
);
/// Healthy parents reap within microseconds to milliseconds; decades up to 1 s, then
/// the stuck rule's 5 s floor and 60 s cap, and minutes to hours for parents that
/// reap late or by a poller.
pub const REAP_BOUNDS: &[f64] = &[
    1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0, 14400.0,
];
pub const PARENT_ZOMBIES: Metric = gauge(
    "zombies_parent_zombies",
    None,
    "Zombies of one parent, for the 10 parents with the most zombies.",
    crate::prom::PROCESS,
);
pub const PARENT_OLDEST: Metric = gauge(
    "zombies_parent_oldest_zombie_age",
    Some(Seconds),
    "Age of the oldest zombie of one parent, for the 10 parents with the most zombies.",
    crate::prom::PROCESS,
);

/// Every metric above (the registry lists them; docs/metrics.md is checked against it).
pub const METRICS: &[&Metric] = &[
    &PRESENT,
    &STUCK,
    &IN_FLIGHT,
    &GROWING,
    &GROWTH,
    &TASKS,
    &PID_MAX,
    &THREADS_MAX,
    &EXHAUSTION,
    &FORKS,
    &EXITS,
    &REAPS,
    &REAP_LATENCY,
    &PARENT_ZOMBIES,
    &PARENT_OLDEST,
    // PID budgets and fork refusals (issue 22).
    &super::budget_metrics::CGROUP_PIDS,
    &super::budget_metrics::CGROUP_PIDS_MAX,
    &super::budget_metrics::CGROUP_PIDS_USED,
    &super::budget_metrics::CGROUP_LEVEL,
    &super::budget_metrics::CGROUP_REFUSALS,
    &super::budget_metrics::FORK_REFUSALS,
];
