//! The inodes tables, each row defined once: serialized for JSON, `cells()` for the
//! text table.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use super::dirs::Source;
use crate::{
    output::{Row, serialize_round3, serialize_round3_opt},
    snapshot::Level,
    trend::TrendReport,
};

/// A filesystem: an element of `filesystems`, a row of FILESYSTEMS. Percentages and
/// rates are exact here (the text shows one decimal) and rounded to 3 in JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilesystemRow {
    pub mount: PathBuf,
    pub device: String,
    pub fstype: String,
    /// MAJOR:MINOR.
    pub dev: String,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub inodes_used_pct: f64,
    #[serde(serialize_with = "serialize_round3")]
    pub blocks_used_pct: f64,
    /// Inodes the ext4 hooks counted (None where they do not count: not ext4, or no
    /// hooks).
    pub allocated: Option<u64>,
    pub freed: Option<u64>,
    /// Allocated - freed per second since the start (or since it was mounted).
    #[serde(serialize_with = "serialize_round3")]
    pub net_inodes_per_s: f64,
    pub rate_source: RateSource,
    /// As `net_inodes_per_s`, since the previous report (None in the first).
    #[serde(serialize_with = "serialize_round3_opt")]
    pub net_inodes_per_s_last_interval: Option<f64>,
    /// Time until no inode is free: 0 when full, else only from sustained growth.
    #[serde(serialize_with = "serialize_round3_opt")]
    pub exhaustion_eta_s: Option<f64>,
    pub level: Level,
    /// Inodes (nearly) full while most blocks are free: the Sentry signature.
    pub inodes_full_blocks_free: bool,
    /// The evidence behind the level and the ETA, its keys after the others.
    #[serde(flatten)]
    pub evidence: Evidence,
    /// `--trend-span`, seconds: the EXHAUSTED IN column says what a trend lacks
    /// against it (text only).
    #[serde(skip)]
    pub trend_span_s: f64,
    /// How creations on this filesystem are counted per process and directory.
    pub creations_hook: super::CreationHook,
}

/// Where a filesystem's net rate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateSource {
    /// Counted by the ext4 hooks.
    Ebpf,
    /// The change of statvfs's inodes used.
    Statvfs,
}

/// What a filesystem's level and ETA rest on (see judge.rs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Lowest inodes used over the hold window, the reading now included.
    pub level_floor_inodes_used: u64,
    /// Samples the floor was taken over, and the time they cover.
    pub level_floor_samples: usize,
    #[serde(serialize_with = "serialize_round3")]
    pub level_floor_span_s: f64,
    /// `--level-hold`, seconds.
    pub level_hold_s: f64,
    /// The growth judged over the samples, with its rule.
    pub trend: TrendReport,
}

impl FilesystemRow {
    /// The signature line of inode exhaustion with blocks free (`df -h` shows space,
    /// creates fail), when the row has it.
    pub fn flag(&self) -> Option<String> {
        self.inodes_full_blocks_free.then(|| {
            format!(
                "!!! {}: {:.0}% of inodes used while only {:.0}% of blocks are: `df -h` shows \
                 space but creates fail with \"No space left on device\"\n",
                self.mount.display(),
                self.inodes_used_pct,
                self.blocks_used_pct
            )
        })
    }
}

impl Row for FilesystemRow {
    const HEADER: &'static [&'static str] = &[
        "MOUNT",
        "DEVICE",
        "FSTYPE",
        "INODES",
        "IUSE%",
        "BLOCKS%",
        "NET/S",
        "NOW/S",
        "EXHAUSTED IN",
        "LEVEL",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.mount.display().to_string(),
            self.device.clone(),
            self.fstype.clone(),
            format!("{}/{}", self.inodes_used, self.inodes_total),
            format!("{:.1}%", self.inodes_used_pct),
            format!("{:.1}%", self.blocks_used_pct),
            format!("{:+.1}", self.net_inodes_per_s),
            self.net_inodes_per_s_last_interval
                .map(|v| format!("{v:+.1}"))
                .unwrap_or_else(|| "-".into()),
            eta_text(
                self.exhaustion_eta_s,
                &self.evidence.trend,
                self.trend_span_s,
            ),
            self.level.as_str().to_uppercase(),
        ]
    }
}

/// A process creating inodes: an element of `top_processes`, a row of TOP PROCESSES.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub cgroup: crate::container::InCgroup,
    pub mount: String,
    pub allocated: u64,
    /// Freed and net are counted by the ext4 tracepoints only; None on the other
    /// paths (`creations_hook`), which see creations alone.
    pub freed: Option<u64>,
    pub net: Option<i64>,
    /// How this process's creations on `mount` were counted.
    pub creations_hook: super::CreationHook,
}

impl ProcessRow {
    /// Whether frees are counted for this row (ext4 tracepoints).
    pub fn frees_counted(&self) -> bool {
        self.freed.is_some()
    }
}

impl Row for ProcessRow {
    const HEADER: &'static [&'static str] = &[
        "PID",
        "COMM",
        "MOUNT",
        "ALLOCATED",
        "FREED",
        "NET",
        "CGROUP",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.pid.to_string(),
            self.comm.clone(),
            self.mount.clone(),
            self.allocated.to_string(),
            // Not counted off ext4: a dash, not a zero that would read as a leak.
            self.freed.map_or("-".into(), |f| f.to_string()),
            self.net.map_or("-".into(), |n| format!("{n:+}")),
            self.cgroup.text(),
        ]
    }
}

/// A directory where inodes were created: an element of `top_directories`, a row of
/// TOP DIRECTORIES.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectoryRow {
    pub mount: String,
    pub path: Option<PathBuf>,
    pub path_source: Source,
    pub ino: u64,
    pub allocated: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub share_pct: f64,
}

impl DirectoryRow {
    /// The path, or the inode number when it was not resolved.
    pub fn shown(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => format!("inode {}", self.ino),
        }
    }
}

impl Row for DirectoryRow {
    const HEADER: &'static [&'static str] = &["MOUNT", "DIRECTORY", "FROM", "ALLOCATED", "SHARE"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.mount.clone(),
            self.shown(),
            self.path_source.as_str().into(),
            self.allocated.to_string(),
            format!("{:.1}%", self.share_pct),
        ]
    }
}

/// A process whose creates failed with ENOSPC on a filesystem: an element of
/// `enospc`, a row of CREATES FAILED WITH ENOSPC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnospcRow {
    pub pid: u32,
    pub comm: String,
    pub mount: String,
    pub count: u64,
    /// Empty when unknown.
    pub first_path: String,
    #[serde(flatten)]
    pub cgroup: crate::container::InCgroup,
}

impl Row for EnospcRow {
    const HEADER: &'static [&'static str] =
        &["PID", "COMM", "MOUNT", "ENOSPC", "FIRST FAILED PATH"];

    fn cells(&self) -> Vec<String> {
        let shown = if self.first_path.is_empty() {
            "-"
        } else {
            &self.first_path
        };
        vec![
            self.pid.to_string(),
            self.comm.clone(),
            self.mount.clone(),
            self.count.to_string(),
            shown.into(),
        ]
    }
}

/// The EXHAUSTED IN column of a filesystem with this ETA and trend: "now (full)", a
/// duration, or why there is none (against a trend span of `span_s`).
pub fn eta_text(eta_s: Option<f64>, trend: &TrendReport, span_s: f64) -> String {
    match eta_s {
        Some(e) if e <= 0.0 => "now (full)".into(),
        Some(e) => crate::output::human_duration(e),
        None => trend.text(span_s),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::trend::Trend;

    /// A filesystem row on /data, its trend too short to judge.
    fn row() -> FilesystemRow {
        FilesystemRow {
            mount: "/data".into(),
            device: "/dev/loop0".into(),
            fstype: "ext4".into(),
            dev: "7:0".into(),
            inodes_total: 3,
            inodes_used: 2,
            inodes_free: 1,
            inodes_used_pct: 200.0 / 3.0,
            blocks_used_pct: 1.0,
            allocated: Some(5),
            freed: None,
            net_inodes_per_s: 0.1 + 0.2,
            rate_source: RateSource::Ebpf,
            net_inodes_per_s_last_interval: None,
            exhaustion_eta_s: Some(10.0004),
            level: Level::Warn,
            inodes_full_blocks_free: false,
            evidence: Evidence {
                level_floor_inodes_used: 2,
                level_floor_samples: 4,
                level_floor_span_s: 3.00049,
                level_hold_s: 10.0,
                trend: Trend::TooFewSamples {
                    samples: 4,
                    span_s: 3.00049,
                }
                .report(30.0),
            },
            trend_span_s: 30.0,
            creations_hook: super::super::CreationHook::Ext4Tracepoints,
        }
    }

    #[test]
    fn filesystem_json_appends_the_evidence_and_rounds() {
        let r = row();
        let rule = crate::trend::rule(30.0);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            json!({"mount": "/data", "device": "/dev/loop0", "fstype": "ext4", "dev": "7:0",
                   "inodes_total": 3, "inodes_used": 2, "inodes_free": 1,
                   "inodes_used_pct": 66.667, "blocks_used_pct": 1.0,
                   "allocated": 5, "freed": null, "net_inodes_per_s": 0.3, "rate_source": "ebpf",
                   "net_inodes_per_s_last_interval": null, "exhaustion_eta_s": 10.0,
                   "level": "warn", "inodes_full_blocks_free": false,
                   "level_floor_inodes_used": 2, "level_floor_samples": 4,
                   "level_floor_span_s": 3.0, "level_hold_s": 10.0,
                   "trend": {"state": "too_few_samples", "growing": false, "samples": 4,
                             "span_s": 3.0, "rate_per_s": null, "rule": rule},
                   "creations_hook": "ext4_tracepoints"})
            .to_string()
        );
        // It reads back as written (the text-only span excepted).
        let back: FilesystemRow =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(
            (
                back.evidence.level_floor_span_s,
                back.level,
                back.trend_span_s
            ),
            (3.0, Level::Warn, 0.0)
        );
        assert_eq!(
            r.cells(),
            [
                "/data",
                "/dev/loop0",
                "ext4",
                "2/3",
                "66.7%",
                "1.0%",
                "+0.3",
                "-",
                "10.0s",
                "WARN"
            ]
        );
        // Without an ETA, the column says what the trend lacks for the --trend-span.
        let r = FilesystemRow {
            exhaustion_eta_s: None,
            ..row()
        };
        assert_eq!(
            r.cells()[8],
            "too few samples (4 over 3.0s; needs 10 over 30.0s)"
        );
    }

    #[test]
    fn the_full_with_blocks_free_flag_only_on_such_rows() {
        let mut r = FilesystemRow {
            inodes_total: 100,
            inodes_used: 100,
            inodes_free: 0,
            inodes_used_pct: 100.0,
            blocks_used_pct: 3.4,
            level: Level::Crit,
            inodes_full_blocks_free: true,
            exhaustion_eta_s: Some(0.0),
            ..row()
        };
        assert_eq!(r.cells()[8], "now (full)");
        assert_eq!(
            r.flag().as_deref(),
            Some(
                "!!! /data: 100% of inodes used while only 3% of blocks are: `df -h` shows space but \
                 creates fail with \"No space left on device\"\n"
            )
        );
        r.inodes_full_blocks_free = false;
        assert_eq!(r.flag(), None);
    }

    #[test]
    fn unresolved_directories_show_their_inode_and_no_path_shows_a_dash() {
        let d = DirectoryRow {
            mount: "/".into(),
            path: None,
            path_source: Source::Unresolved,
            ino: 42,
            allocated: 9,
            share_pct: 100.0 / 3.0,
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            json!({"mount": "/", "path": null, "path_source": "unresolved", "ino": 42,
                   "allocated": 9, "share_pct": 33.333})
            .to_string()
        );
        assert_eq!(d.cells(), ["/", "inode 42", "unresolved", "9", "33.3%"]);
        let f = EnospcRow {
            pid: 1,
            comm: "a".into(),
            mount: "?".into(),
            count: 2,
            first_path: String::new(),
            cgroup: "/".into(),
        };
        assert_eq!(f.cells()[4], "-");
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            json!({"pid": 1, "comm": "a", "mount": "?", "count": 2, "first_path": "", "cgroup": "/"})
                .to_string()
        );
    }
}
