//! The cgroups tables, each row defined once: serialized for JSON, `cells()` for the
//! text table. Rates and ages are exact here (the text rounds them its way) and
//! rounded to 3 decimals in JSON.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::output::{Row, Summary, human_duration, serialize_round3, serialize_round3_opt};

/// One hierarchy: an element of `hierarchies`, a row of HIERARCHIES.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HierarchyRow {
    pub name: String,
    pub id: u32,
    pub mount: PathBuf,
    pub version: u8,
    pub controllers: Vec<String>,
    pub cgroups: u64,
    pub cgroups_how: String,
    pub dying: Option<u64>,
    pub dying_how: String,
    pub dying_at_start: Option<u64>,
    pub dying_tracked: u64,
    pub created: u64,
    pub removed: u64,
    pub released: u64,
    pub tasks_moved: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub net_growth_per_min: f64,
    #[serde(serialize_with = "serialize_round3_opt")]
    pub dying_growth_per_min: Option<f64>,
    pub dying_past_threshold: usize,
    pub dying_in_flight: usize,
    pub dying_since_before_start_unreleased: Option<u64>,
    pub dying_trend: crate::trend::TrendReport,
    pub release_latency_us: Summary,
}

impl Row for HierarchyRow {
    const HEADER: &'static [&'static str] = &[
        "HIERARCHY",
        "CGROUPS",
        "DYING",
        "CREATED",
        "REMOVED",
        "RELEASED",
        "NET/MIN",
        "DYING FROM",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.cgroups.to_string(),
            self.dying
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            self.created.to_string(),
            self.removed.to_string(),
            self.released.to_string(),
            format!("{:+.1}", self.net_growth_per_min),
            self.dying_how.clone(),
        ]
    }
}

/// A cgroup removed while tracing and not released yet: an element of `dying`, a row
/// of DYING CGROUPS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DyingRow {
    pub id: u64,
    pub path: String,
    /// The container the cgroup was (ids from its path), when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::container::Container>,
    pub hierarchy: String,
    #[serde(serialize_with = "serialize_round3")]
    pub age_s: f64,
    pub creator_pid: Option<u32>,
    pub creator_comm: Option<String>,
    pub creator_cgroup: Option<String>,
    pub remover_pid: u32,
    pub remover_comm: String,
    pub remover_cgroup: String,
}

impl Row for DyingRow {
    const HEADER: &'static [&'static str] =
        &["HIERARCHY", "ID", "AGE", "PATH", "CREATOR", "REMOVER"];

    fn cells(&self) -> Vec<String> {
        let creator = match (self.creator_pid, &self.creator_comm) {
            (Some(pid), Some(comm)) => format!("{pid} ({comm})"),
            _ => "before start".into(),
        };
        vec![
            self.hierarchy.clone(),
            self.id.to_string(),
            human_duration(self.age_s),
            crate::container::label(&self.path, self.container.as_ref()),
            creator,
            format!("{} ({})", self.remover_pid, self.remover_comm),
        ]
    }
}

/// A parent holding dying cgroups: an element of `dying_by_parent`, a row of the
/// "by parent" table (indented under DYING CGROUPS).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DyingParentRow {
    pub hierarchy: String,
    pub parent: String,
    pub dying: usize,
    #[serde(serialize_with = "serialize_round3")]
    pub oldest_age_s: f64,
}

impl Row for DyingParentRow {
    const HEADER: &'static [&'static str] = &["  HIERARCHY", "PARENT", "DYING", "OLDEST"];

    fn cells(&self) -> Vec<String> {
        vec![
            format!("  {}", self.hierarchy),
            self.parent.clone(),
            self.dying.to_string(),
            human_duration(self.oldest_age_s),
        ]
    }
}

/// A cgroup2 level holding dying cgroups (cgroup.stat): an element of
/// `dying_levels`, a line under DYING CGROUPS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DyingLevel {
    pub hierarchy: String,
    pub path: String,
    pub dying: u64,
}

impl DyingLevel {
    pub fn line(&self) -> String {
        format!("    {} {}: {}\n", self.hierarchy, self.path, self.dying)
    }
}

/// A process creating or removing cgroups: an element of `churn.processes`, a row of
/// CHURN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChurnProcessRow {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub cgroup: crate::container::InCgroup,
    pub mkdirs: u64,
    pub rmdirs: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub mkdirs_per_min: f64,
}

impl Row for ChurnProcessRow {
    const HEADER: &'static [&'static str] =
        &["PID", "COMM", "MKDIRS", "RMDIRS", "MKDIR/MIN", "CGROUP"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.pid.to_string(),
            self.comm.clone(),
            self.mkdirs.to_string(),
            self.rmdirs.to_string(),
            format!("{:.1}", self.mkdirs_per_min),
            self.cgroup.text(),
        ]
    }
}

/// A parent cgroup new cgroups are created under: an element of `churn.parents`, a
/// row of CHURN's second table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChurnParentRow {
    pub hierarchy: String,
    pub path: String,
    pub mkdirs: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub mkdirs_per_min: f64,
}

impl Row for ChurnParentRow {
    const HEADER: &'static [&'static str] = &["HIERARCHY", "PARENT", "MKDIRS", "MKDIR/MIN"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.hierarchy.clone(),
            self.path.clone(),
            self.mkdirs.to_string(),
            format!("{:.1}", self.mkdirs_per_min),
        ]
    }
}

/// Who moved tasks into which cgroup: an element of `moves`, a row of TASK MOVES.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoveRow {
    pub hierarchy: String,
    pub id: u64,
    pub path: String,
    /// The container the cgroup was (ids from its path), when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::container::Container>,
    pub pid: u32,
    pub comm: String,
    pub tasks: u64,
}

impl Row for MoveRow {
    const HEADER: &'static [&'static str] = &["HIERARCHY", "CGROUP", "PID", "COMM", "TASKS"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.hierarchy.clone(),
            crate::container::label(&self.path, self.container.as_ref()),
            self.pid.to_string(),
            self.comm.clone(),
            self.tasks.to_string(),
        ]
    }
}

/// An empty leftover cgroup: an element of `empty`, a row of EMPTY LEFTOVERS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmptyRow {
    pub path: String,
    /// The container the cgroup was (ids from its path), when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::container::Container>,
    pub hierarchy: String,
    pub id: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub age_s: f64,
}

impl Row for EmptyRow {
    const HEADER: &'static [&'static str] = &["HIERARCHY", "AGE", "PATH"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.hierarchy.clone(),
            human_duration(self.age_s),
            crate::container::label(&self.path, self.container.as_ref()),
        ]
    }
}

/// A cgroup the kernel released lately (the latest last): an element of
/// `released_recent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleasedRow {
    pub id: u64,
    pub path: String,
    pub hierarchy: String,
    /// rmdir-to-release time; None when the rmdir was not seen (dying from before).
    pub latency_us: Option<u64>,
    pub creator_pid: Option<u32>,
    pub remover_pid: Option<u32>,
}

/// A process whose own cgroups are now empty leftovers: an element of
/// `leaves_behind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftBehind {
    pub pid: u32,
    pub comm: String,
    pub empty_leftovers: usize,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dying_rows_name_an_unknown_creator_and_round_the_age() {
        let d = DyingRow {
            container: None,
            id: 5,
            path: "/a".into(),
            hierarchy: "cgroup2".into(),
            age_s: 90.0004,
            creator_pid: None,
            creator_comm: None,
            creator_cgroup: None,
            remover_pid: 3,
            remover_comm: "systemd".into(),
            remover_cgroup: "/".into(),
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            json!({"id": 5, "path": "/a", "hierarchy": "cgroup2", "age_s": 90.0,
                   "creator_pid": null, "creator_comm": null, "creator_cgroup": null,
                   "remover_pid": 3, "remover_comm": "systemd", "remover_cgroup": "/"})
            .to_string()
        );
        assert_eq!(
            d.cells(),
            ["cgroup2", "5", "1m30s", "/a", "before start", "3 (systemd)"]
        );
        let p = DyingParentRow {
            hierarchy: "cgroup2".into(),
            parent: "/".into(),
            dying: 2,
            oldest_age_s: 1.5,
        };
        assert_eq!(p.cells()[0], "  cgroup2");
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            json!({"hierarchy": "cgroup2", "parent": "/", "dying": 2, "oldest_age_s": 1.5})
                .to_string()
        );
    }

    #[test]
    fn churn_rates_are_one_decimal_in_text_three_in_json() {
        let c = ChurnProcessRow {
            pid: 1,
            comm: "runc".into(),
            cgroup: "/".into(),
            mkdirs: 2,
            rmdirs: 1,
            mkdirs_per_min: 2.0 / 3.0,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            json!({"pid": 1, "comm": "runc", "cgroup": "/", "mkdirs": 2, "rmdirs": 1,
                   "mkdirs_per_min": 0.667})
            .to_string()
        );
        assert_eq!(c.cells(), ["1", "runc", "2", "1", "0.7", "/"]);
        let e = EmptyRow {
            container: None,
            path: "/x".into(),
            hierarchy: "cgroup2".into(),
            id: 9,
            age_s: 120.0,
        };
        assert_eq!(e.cells(), ["cgroup2", "2m00s", "/x"]);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            json!({"path": "/x", "hierarchy": "cgroup2", "id": 9, "age_s": 120.0}).to_string()
        );
    }
}
