//! The inodes tables, each row defined once: serialized for JSON, `cells()` for the
//! text table.
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::dirs::Source;
use crate::output::{Row, serialize_round3, serialize_round3_opt};

/// A filesystem: an element of `filesystems`, a row of FILESYSTEMS. Percentages and
/// rates are exact here (the text shows one decimal) and rounded to 3 in JSON.
#[derive(Serialize)]
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
    pub allocated: Option<u64>,
    pub freed: Option<u64>,
    #[serde(serialize_with = "serialize_round3")]
    pub net_inodes_per_s: f64,
    pub rate_source: &'static str,
    #[serde(serialize_with = "serialize_round3_opt")]
    pub net_inodes_per_s_last_interval: Option<f64>,
    #[serde(serialize_with = "serialize_round3_opt")]
    pub exhaustion_eta_s: Option<f64>,
    pub level: &'static str,
    pub inodes_full_blocks_free: bool,
    /// The EXHAUSTED IN column (text only).
    #[serde(skip)]
    pub eta_text: String,
    /// The evidence behind the level and the ETA (judge::Judged::json), its keys
    /// after the others.
    #[serde(flatten)]
    pub evidence: Value,
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
            self.eta_text.clone(),
            self.level.to_uppercase(),
        ]
    }
}

/// A process creating inodes: an element of `top_processes`, a row of TOP PROCESSES.
#[derive(Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub cgroup: crate::container::InCgroup,
    pub mount: String,
    pub allocated: u64,
    pub freed: u64,
    pub net: i64,
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
            self.freed.to_string(),
            format!("{:+}", self.net),
            self.cgroup.text(),
        ]
    }
}

/// A directory where inodes were created: an element of `top_directories`, a row of
/// TOP DIRECTORIES.
#[derive(Serialize)]
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
#[derive(Serialize)]
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn filesystem_json_appends_the_evidence_and_rounds() {
        let r = FilesystemRow {
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
            rate_source: "ebpf",
            net_inodes_per_s_last_interval: None,
            exhaustion_eta_s: Some(10.0004),
            level: "warn",
            inodes_full_blocks_free: false,
            eta_text: "10.0s".into(),
            evidence: json!({"level_floor_inodes_used": 2, "trend": null}),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            json!({"mount": "/data", "device": "/dev/loop0", "fstype": "ext4", "dev": "7:0",
                   "inodes_total": 3, "inodes_used": 2, "inodes_free": 1,
                   "inodes_used_pct": 66.667, "blocks_used_pct": 1.0,
                   "allocated": 5, "freed": null, "net_inodes_per_s": 0.3, "rate_source": "ebpf",
                   "net_inodes_per_s_last_interval": null, "exhaustion_eta_s": 10.0,
                   "level": "warn", "inodes_full_blocks_free": false,
                   "level_floor_inodes_used": 2, "trend": null})
            .to_string()
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
    }

    #[test]
    fn the_full_with_blocks_free_flag_only_on_such_rows() {
        let mut r = FilesystemRow {
            mount: "/data".into(),
            device: "/dev/loop0".into(),
            fstype: "ext4".into(),
            dev: "7:0".into(),
            inodes_total: 100,
            inodes_used: 100,
            inodes_free: 0,
            inodes_used_pct: 100.0,
            blocks_used_pct: 3.4,
            allocated: None,
            freed: None,
            net_inodes_per_s: 0.0,
            rate_source: "statvfs",
            net_inodes_per_s_last_interval: None,
            exhaustion_eta_s: Some(0.0),
            level: "crit",
            inodes_full_blocks_free: true,
            eta_text: "now (full)".into(),
            evidence: json!({}),
        };
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
