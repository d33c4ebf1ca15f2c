//! What `tracer cgroups` exposes (`--prom-file`, serve's /metrics); the report fills
//! them (report.rs, `collect`).
use crate::prom::{
    BaseUnit::{Bytes, Seconds},
    Metric, counter, gauge, histogram,
};

/// Cgroups (by hierarchy and path) with series of their own in each list.
pub const TOP_PATHS: usize = 20;

const H: &[&str] = &["hierarchy"];
const HP: &[&str] = &["hierarchy", "path"];

pub const LIVE: Metric = gauge(
    "cgroups_live",
    None,
    "Live cgroups (directories) in the hierarchy.",
    H,
);
pub const DYING: Metric = gauge(
    "cgroups_dying",
    None,
    "Dying cgroups in the hierarchy: removed but not yet released by the kernel (absent when the kernel does not say).",
    H,
);
pub const DYING_PAST: Metric = gauge(
    "cgroups_dying_past_threshold",
    None,
    "Dying cgroups, removed while tracing, older than --dying-age.",
    H,
);
pub const DYING_GROWING: Metric = gauge(
    "cgroups_dying_growing",
    None,
    "1 when the hierarchy's dying count rises steadily over the trend span, else 0.",
    H,
);
pub const CREATED: Metric = counter(
    "cgroups_created",
    "Cgroups created (mkdir) while tracing.",
    H,
);
pub const REMOVED: Metric = counter(
    "cgroups_removed",
    "Cgroups removed (rmdir) while tracing.",
    H,
);
pub const RELEASED: Metric = counter(
    "cgroups_released",
    "Cgroups the kernel released (freed) while tracing.",
    H,
);
pub const MOVED: Metric = counter(
    "cgroups_tasks_moved",
    "Tasks moved into a cgroup of the hierarchy while tracing.",
    H,
);
pub const RELEASE_LATENCY: Metric = histogram(
    "cgroups_release_latency",
    Some(Seconds),
    "Time from a cgroup's rmdir to its release, since the start.",
    &["hierarchy"],
    RELEASE_BOUNDS,
);
/// An empty cgroup is released within milliseconds of its rmdir; a memory cgroup
/// whose pages are still charged lingers for minutes, hours or days.
pub const RELEASE_BOUNDS: &[f64] = &[
    1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 21600.0, 86400.0,
];
pub const EMPTY: Metric = gauge(
    "cgroups_empty",
    None,
    "Live cgroups with no task and no child for longer than --min-age.",
    &[],
);
pub const STAT_READ: Metric = gauge(
    "cgroups_memory_stat_read",
    Some(Seconds),
    "Time one read of the root memory.stat took (the fastest of a few): slow when many cgroups are dying.",
    &[],
);
pub const DYING_AGE: Metric = gauge(
    "cgroups_dying_age",
    Some(Seconds),
    "Time since a dying cgroup (removed while tracing) was removed, for the 20 oldest.",
    HP,
);
pub const FINDING_AGE: Metric = gauge(
    "cgroups_finding_age",
    Some(Seconds),
    "Age of a dying cgroup past --dying-age (a finding), for the 20 oldest.",
    HP,
);
pub const RELEASED_LATENCY: Metric = gauge(
    "cgroups_released_latency",
    Some(Seconds),
    "Time from rmdir to release of a recently released cgroup, for the 20 latest releases.",
    HP,
);

pub const PINNED: Metric = gauge(
    "cgroups_dying_pinned",
    Some(Bytes),
    "Memory still charged to dying memcgs, by closest live ancestor (path) and kind (file, shmem, anon), for the 20 ancestors with the most.",
    &["hierarchy", "path", "kind"],
);
pub const PINNED_BY_CREATOR: Metric = gauge(
    "cgroups_dying_pinned_by_creator",
    Some(Bytes),
    "Memory still charged to dying memcgs, by their creator's comm (\"before start\" when unseen) and kind, for the 20 creators with the most.",
    &["creator", "kind"],
);
pub const CENSUS_DURATION: Metric = gauge(
    "cgroups_memcg_census_duration",
    Some(Seconds),
    "Time the last census of /proc/kpagecgroup and /proc/kpageflags took.",
    &[],
);
pub const PAGECACHE_EVICTED: Metric = counter(
    "cgroups_pagecache_evicted",
    "(memcg, file) page-cache counters dropped from the kernel's LRU map because it was full.",
    &[],
);

/// Every metric above (the registry lists them; docs/metrics.md is checked against it).
pub const METRICS: &[&Metric] = &[
    &LIVE,
    &DYING,
    &DYING_PAST,
    &DYING_GROWING,
    &CREATED,
    &REMOVED,
    &RELEASED,
    &MOVED,
    &RELEASE_LATENCY,
    &EMPTY,
    &STAT_READ,
    &DYING_AGE,
    &FINDING_AGE,
    &RELEASED_LATENCY,
    &PINNED,
    &PINNED_BY_CREATOR,
    &CENSUS_DURATION,
    &PAGECACHE_EVICTED,
];
