//! The zombies tables, each row defined once: serialized for JSON, `cells()` for the
//! text table.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{
    ages::AgeSource,
    init::{NamespaceInit, ReaperAfterExit},
};
use crate::output::{self, Row, human_duration, serialize_round3};

/// One parent with stuck or in-flight zombies: a JSON element of `parents` and a row
/// of the NON-REAPING PARENTS table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentRow {
    pub pid: u32,
    pub comm: String,
    pub cmdline: String,
    #[serde(flatten)]
    pub cgroup: crate::container::InCgroup,
    pub zombies: usize,
    pub in_flight: usize,
    pub stuck_after_s: f64,
    pub oldest_zombie_age_s: f64,
    pub oldest_zombie_age_exact: bool,
    /// Where the oldest zombie's age comes from (exit_event, exited_at, lower_bound).
    pub oldest_zombie_age_source: AgeSource,
    pub reaped: u64,
    pub wait_calls: u64,
    pub sigchld_received: u64,
    /// SIGCHLD disposition: default, ignore or handler.
    pub sigchld: Cow<'static, str>,
    pub pids_cgroup: Option<PidsCgroup>,
    /// This parent is PID 1 of a pid namespace (a container's init): what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_init: Option<NamespaceInit>,
    /// Who reaps this parent's zombies once it exits (init.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaper_after_exit: Option<ReaperAfterExit>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PidsCgroup {
    pub current: u64,
    pub max: String,
}

impl Row for ParentRow {
    const HEADER: &'static [&'static str] = &[
        "PID",
        "COMM",
        "STUCK",
        "IN FLIGHT",
        "OLDEST",
        "REAPED",
        "WAITS",
        "SIGCHLD",
        "DISPOSITION",
        "PIDS",
        "CGROUP",
        "CMDLINE",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.pid.to_string(),
            self.comm.clone(),
            self.zombies.to_string(),
            self.in_flight.to_string(),
            fmt_age(self.oldest_zombie_age_s, self.oldest_zombie_age_exact),
            self.reaped.to_string(),
            self.wait_calls.to_string(),
            self.sigchld_received.to_string(),
            self.sigchld.to_string(),
            self.pids_cgroup
                .as_ref()
                .map(|p| format!("{}/{}", p.current, p.max))
                .unwrap_or_else(|| "-".into()),
            self.cgroup.text(),
            output::truncate(&self.cmdline, 60),
        ]
    }
}

pub fn fmt_age(age_s: f64, exact: bool) -> String {
    if exact {
        human_duration(age_s)
    } else {
        format!(">={}", human_duration(age_s))
    }
}

/// One zombie: an element of `zombies`, a row of the ZOMBIES table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZombieRow {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub cgroup: crate::container::InCgroup,
    #[serde(serialize_with = "serialize_round3")]
    pub age_s: f64,
    pub age_exact: bool,
    /// exit_event (seen exiting), exited_at (kernel's se.exec_start), lower_bound.
    pub age_source: AgeSource,
    pub stuck: bool,
}

impl Row for ZombieRow {
    const HEADER: &'static [&'static str] = &["PID", "PPID", "COMM", "AGE", "STATE"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.pid.to_string(),
            self.ppid.to_string(),
            self.comm.clone(),
            fmt_age(self.age_s, self.age_exact),
            if self.stuck { "stuck" } else { "in flight" }.into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn zombie_json_rounds_the_age_and_the_text_shows_a_lower_bound() {
        let z = ZombieRow {
            pid: 10,
            ppid: 1,
            comm: "sh".into(),
            cgroup: "/".into(),
            age_s: 12.34567,
            age_exact: false,
            age_source: AgeSource::LowerBound,
            stuck: true,
        };
        assert_eq!(
            serde_json::to_string(&z).unwrap(),
            json!({"pid": 10, "ppid": 1, "comm": "sh", "cgroup": "/", "age_s": 12.346,
                   "age_exact": false, "age_source": "lower_bound", "stuck": true})
            .to_string()
        );
        assert_eq!(z.cells(), ["10", "1", "sh", ">=12.3s", "stuck"]);
    }
}
