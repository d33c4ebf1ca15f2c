//! What `tracer inodes` exposes (`--prom-file`, serve's /metrics); the report fills
//! them (report.rs, `collect`).
use crate::prom::{
    BaseUnit::{Ratio, Seconds},
    Metric, counter, gauge,
};

/// Processes and directories with series of their own, the most inodes first.
pub const TOP: usize = 10;

const FS: &[&str] = &["mount", "device", "fstype"];

pub const INODES: Metric = gauge(
    "inodes_filesystem_inodes",
    None,
    "Inodes the filesystem has in all.",
    FS,
);
pub const USED: Metric = gauge(
    "inodes_filesystem_inodes_used",
    None,
    "Inodes in use on the filesystem.",
    FS,
);
pub const FREE: Metric = gauge(
    "inodes_filesystem_inodes_free",
    None,
    "Inodes still free on the filesystem.",
    FS,
);
pub const BLOCKS_USED: Metric = gauge(
    "inodes_filesystem_blocks_used",
    Some(Ratio),
    "Fraction of the filesystem's blocks in use (inodes can run out with blocks free).",
    FS,
);
pub const ALLOCATED: Metric = counter(
    "inodes_allocated",
    "Inodes allocated on the filesystem while tracing (ext4, from eBPF; absent elsewhere).",
    FS,
);
pub const FREED: Metric = counter(
    "inodes_freed",
    "Inodes freed on the filesystem while tracing (ext4, from eBPF; absent elsewhere).",
    FS,
);
pub const GROWTH: Metric = gauge(
    "inodes_growth_per_second",
    None,
    "Net inodes allocated per second on the filesystem while tracing (negative when freeing).",
    FS,
);
pub const ETA: Metric = gauge(
    "inodes_exhaustion_eta",
    Some(Seconds),
    "Time until the filesystem runs out of inodes at the recent growth (absent when not growing).",
    FS,
);
pub const LEVEL: Metric = gauge(
    "inodes_filesystem_severity",
    None,
    "The filesystem's inode usage judged: 0 ok, 1 warn, 2 crit.",
    FS,
);
pub const FULL_BLOCKS_FREE: Metric = gauge(
    "inodes_full_blocks_free",
    None,
    "1 when the filesystem is out of inodes while blocks are still free, else 0.",
    FS,
);
pub const PROCESS_NET: Metric = gauge(
    "inodes_process_net_inodes",
    None,
    "Inodes a process allocated minus those it freed on a filesystem while tracing, for the 10 processes with the most.",
    crate::prom::PROCESS_ON_FS,
);
pub const PROCESS_CREATED: Metric = gauge(
    "inodes_process_created_inodes",
    None,
    "Inodes a process created on a filesystem while tracing (every filesystem whose creations a kernel path counts), for the 10 processes with the most.",
    crate::prom::PROCESS_ON_FS,
);
pub const DIRECTORY: Metric = gauge(
    "inodes_directory_allocated_inodes",
    None,
    "Inodes allocated in a directory while tracing, for the 10 directories with the most.",
    &["mount", "path"],
);
pub const ENOSPC: Metric = gauge(
    "inodes_enospc_failures",
    None,
    "Creates that failed with ENOSPC (no space left) while tracing, for the 10 processes with the most.",
    crate::prom::PROCESS_ON_FS,
);

/// Every metric above (the registry lists them; docs/metrics.md is checked against it).
pub const METRICS: &[&Metric] = &[
    &INODES,
    &USED,
    &FREE,
    &BLOCKS_USED,
    &ALLOCATED,
    &FREED,
    &GROWTH,
    &ETA,
    &LEVEL,
    &FULL_BLOCKS_FREE,
    &PROCESS_NET,
    &PROCESS_CREATED,
    &DIRECTORY,
    &ENOSPC,
];
