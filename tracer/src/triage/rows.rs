//! The triage tables, each row defined once: serialized for JSON, `cells()` for the
//! text table; and the NEXT STEPS lines, from the findings alone.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::{output::Row, snapshot::Level};

/// One row of the USE table: an element of `findings`, a row of the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// cpu, memory, disk, network, kernel, pids, cgroups, inodes, tcp_mem.
    pub resource: Cow<'static, str>,
    pub check: String,
    /// What the row is about when a resource has several (device, interface, mount
    /// point, parent pid, hierarchy).
    pub subject: Option<String>,
    pub value: String,
    pub threshold: String,
    pub level: Level,
    /// The command to run next (only for rows that are not ok).
    pub next: Option<String>,
    /// 0 ok, 1 warn, 2 crit: the level as a number, for --prom-file gauges.
    pub severity: u8,
}

impl Finding {
    pub fn new(
        resource: &'static str,
        check: &str,
        value: impl Into<String>,
        threshold: impl Into<String>,
        level: Level,
    ) -> Self {
        Self {
            resource: resource.into(),
            check: check.into(),
            subject: None,
            value: value.into(),
            threshold: threshold.into(),
            level,
            next: None,
            severity: level as u8,
        }
    }

    pub fn subject(mut self, s: impl Into<String>) -> Self {
        self.subject = Some(s.into());
        self
    }

    pub fn next(mut self, cmd: impl Into<String>) -> Self {
        if self.level != Level::Ok {
            self.next = Some(cmd.into());
        }
        self
    }
}

impl Row for Finding {
    const HEADER: &'static [&'static str] = &[
        "LEVEL",
        "RESOURCE",
        "CHECK",
        "SUBJECT",
        "VALUE",
        "THRESHOLD",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.level.as_str().into(),
            self.resource.to_string(),
            self.check.clone(),
            self.subject.clone().unwrap_or_else(|| "-".into()),
            self.value.clone(),
            self.threshold.clone(),
        ]
    }
}

/// One NEXT STEPS line per finding that has a next command (the rows that are not
/// ok): "resource check (subject): command".
pub fn next_steps(findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .filter_map(|f| {
            let next = f.next.as_deref()?;
            let subject = f
                .subject
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            Some(format!("{} {}{subject}: {next}", f.resource, f.check))
        })
        .collect()
}

/// A process that used CPU over the window: an element of `top_processes`, a row of
/// TOP PROCESSES BY CPU. The share is exact here (one decimal in text and JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuProcRow {
    pub pid: u32,
    pub comm: String,
    #[serde(serialize_with = "serialize_round1")]
    pub cpu_pct: f64,
}

/// `serialize_with` for a share kept exact but written with one decimal.
/// Rounds to 1 decimal (percentages and loads in triage's JSON).
pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn serialize_round1<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round1(*v))
}

impl Row for CpuProcRow {
    const HEADER: &'static [&'static str] = &["PID", "COMM", "CPU%"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.pid.to_string(),
            self.comm.clone(),
            format!("{:.1}", self.cpu_pct),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Table;

    #[test]
    fn next_steps_only_for_rows_that_are_not_ok() {
        let ok = Finding::new("cpu", "utilization", "1%", ">= 80%", Level::Ok).next("mpstat 1");
        assert!(next_steps(&[ok]).is_empty());
        let warn = Finding::new("disk", "io", "90%", ">= 60", Level::Warn)
            .subject("sda")
            .next("iostat -xz 1 sda");
        let crit = Finding::new("memory", "available", "2%", "< 5%", Level::Crit).next("free -m");
        assert_eq!(
            next_steps(&[warn, crit]),
            [
                "disk io (sda): iostat -xz 1 sda",
                "memory available: free -m"
            ]
        );
    }

    #[test]
    fn finding_rows_show_a_dash_without_subject() {
        let f = Finding::new("cpu", "utilization", "12%", ">= 80%", Level::Ok);
        let t = Table::of(&[f]).render();
        assert_eq!(
            t.lines().nth(1).unwrap().split_whitespace().nth(3),
            Some("-")
        );
    }

    #[test]
    fn a_finding_serializes_every_field_and_reads_back() {
        let f = Finding::new("disk", "io", "90%", ">= 60", Level::Warn)
            .subject("sda")
            .next("iostat -xz 1 sda");
        let line = serde_json::to_string(&f).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"resource": "disk", "check": "io", "subject": "sda",
                "value": "90%", "threshold": ">= 60", "level": "warn",
                "next": "iostat -xz 1 sda", "severity": 1})
            .to_string()
        );
        assert_eq!(serde_json::from_str::<Finding>(&line).unwrap(), f);
    }

    #[test]
    fn cpu_rows_round_the_share_to_one_decimal() {
        let j = serde_json::to_value(&CpuProcRow {
            pid: 7,
            comm: "x".into(),
            cpu_pct: 12.349,
        })
        .unwrap();
        assert_eq!(
            j,
            serde_json::json!({"pid": 7, "comm": "x", "cpu_pct": 12.3})
        );
    }
}
