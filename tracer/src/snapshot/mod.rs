//! Instant snapshots of kernel state from /proc and /sys, shared by the detectors
//! (which show them beside what their eBPF programs saw) and by `tracer triage`
//! (which judges them). Each reader is cheap, needs no privileges unless noted, and
//! says in its error which file it could not read.
pub mod cgroups;
pub mod inodes;
pub mod tcpmem;

/// A USE-style verdict on a measured value.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Crit,
}

impl Level {
    /// node_exporter-style thresholds on a percentage: warn at `warn`, crit at `crit`.
    pub fn of_pct(pct: f64, warn: f64, crit: f64) -> Level {
        if pct >= crit {
            Level::Crit
        } else if pct >= warn {
            Level::Warn
        } else {
            Level::Ok
        }
    }

    /// The level as a number (ok 0, warn 1, crit 2), for metrics.
    pub fn severity(self) -> i64 {
        match self {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::Crit => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Crit => "crit",
        }
    }
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}
