//! What `tracer inodes` exposes with `--prom-file`, from its report's fields.
use serde_json::Value;

use crate::prom::{
    BaseUnit::{Ratio, Seconds},
    Families, Metric, Num, PCT, counter, gauge, rows, severity, top,
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

/// Every metric above, for the README check (`prom::all_metrics`).
#[cfg_attr(not(test), allow(dead_code))]
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
    &DIRECTORY,
    &ENOSPC,
];

pub fn collect(r: &Value, out: &mut Families) {
    for f in rows(r, "filesystems", usize::MAX) {
        out.row(&INODES, f, "inodes_total", 1.0);
        out.row(&USED, f, "inodes_used", 1.0);
        out.row(&FREE, f, "inodes_free", 1.0);
        out.row(&BLOCKS_USED, f, "blocks_used_pct", PCT);
        out.row(&ALLOCATED, f, "allocated", 1.0);
        out.row(&FREED, f, "freed", 1.0);
        out.row(&GROWTH, f, "net_inodes_per_s", 1.0);
        out.row(&ETA, f, "exhaustion_eta_s", 1.0);
        if let Some(v) = severity(&f["level"]) {
            out.row_value(&LEVEL, f, Num::Int(v));
        }
        out.row(&FULL_BLOCKS_FREE, f, "inodes_full_blocks_free", 1.0);
    }
    for (m, list, by) in [
        (&PROCESS_NET, "top_processes", "net"),
        (&ENOSPC, "enospc", "count"),
        (&DIRECTORY, "top_directories", "allocated"),
    ] {
        for row in top(r, list, by, TOP) {
            out.row(m, row, by, 1.0);
        }
    }
}
