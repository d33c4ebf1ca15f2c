//! What `tracer inodes` exposes with `--prom-file`, from its report's fields.
use serde_json::Value;

use crate::prom::{
    BaseUnit::{Ratio, Seconds},
    Families, Metric, PCT, counter, gauge, rows, s, severity, top,
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
    &["pid", "comm", "mount"],
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
    &["pid", "comm", "mount"],
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
        let l = [
            ("mount", s(f, "mount")),
            ("device", s(f, "device")),
            ("fstype", s(f, "fstype")),
        ];
        out.field(&INODES, &l, f, "inodes_total");
        out.field(&USED, &l, f, "inodes_used");
        out.field(&FREE, &l, f, "inodes_free");
        out.field_per(&BLOCKS_USED, &l, f, "blocks_used_pct", PCT);
        out.field(&ALLOCATED, &l, f, "allocated");
        out.field(&FREED, &l, f, "freed");
        out.field(&GROWTH, &l, f, "net_inodes_per_s");
        out.field(&ETA, &l, f, "exhaustion_eta_s");
        if let Some(v) = severity(&f["level"]) {
            out.sample(&LEVEL, &l, v);
        }
        out.field(&FULL_BLOCKS_FREE, &l, f, "inodes_full_blocks_free");
    }
    for (m, list, by) in [
        (&PROCESS_NET, "top_processes", "net"),
        (&ENOSPC, "enospc", "count"),
    ] {
        for p in top(r, list, by, TOP) {
            let pid = p["pid"].to_string();
            let l = [
                ("pid", pid.as_str()),
                ("comm", s(p, "comm")),
                ("mount", s(p, "mount")),
            ];
            out.field(m, &l, p, by);
        }
    }
    for d in top(r, "top_directories", "allocated", TOP) {
        let l = [("mount", s(d, "mount")), ("path", s(d, "path"))];
        out.field(&DIRECTORY, &l, d, "allocated");
    }
}
