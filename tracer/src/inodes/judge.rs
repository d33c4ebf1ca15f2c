//! What `tracer inodes` concludes about a filesystem, from its samples: the level, the
//! "inodes full, blocks free" flag and the exhaustion ETA. Pure functions of the
//! report's data, so text, JSON and the Prometheus file say the same.
//!
//! A busy healthy host creates and deletes temp files by the thousand: usage swings and
//! comes back. So
//! - WARN/CRIT and the flag go by the lowest usage sampled in the last `hold` seconds
//!   (the floor the filesystem stayed above), not by one reading; a full filesystem
//!   (no free inode: creates fail now) is CRIT at once;
//! - the ETA is projected only from sustained growth (see [`crate::trend`]); without
//!   it the report says why ("no sustained growth", or too few samples yet). A full
//!   filesystem's ETA is 0: observed, not projected.
use super::rows::Evidence;
use crate::{
    snapshot::{
        Level,
        inodes::{CRIT_PCT, FsUsage, WARN_PCT},
        pct,
    },
    trend::{self, Series, Trend},
};

/// Inodes used at or above this share with blocks below [`FLAG_BLOCKS_PCT`]: the Sentry
/// signature (`df -h` shows space, creates fail).
pub const FLAG_INODES_PCT: f64 = 95.0;
pub const FLAG_BLOCKS_PCT: f64 = 50.0;

/// The thresholds a run uses (flags `--level-hold`, `--trend-span`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rules {
    pub hold_s: f64,
    pub span_s: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub level: Level,
    /// Lowest inodes used over the hold window (the current reading included).
    pub floor_used: u64,
    /// Samples the floor was taken over, and the time they cover.
    pub floor_samples: usize,
    pub floor_span_s: f64,
    pub full_blocks_free: bool,
    pub eta_s: Option<f64>,
    pub trend: Trend,
}

/// Judges `u` (the reading now) with `used`, the series of inodes-used samples of this
/// filesystem (the reading now last).
pub fn judge(u: &FsUsage, used: &Series, rules: Rules) -> Judged {
    let free = u.inodes_total.saturating_sub(u.inodes_used);
    let held = used.last(rules.hold_s);
    let floor_used = held
        .iter()
        .map(|s| s.1 as u64)
        .chain(std::iter::once(u.inodes_used))
        .min()
        .unwrap_or(u.inodes_used);
    let floor_pct = pct(floor_used, u.inodes_total);
    let full = free == 0 && u.inodes_total > 0;
    let level = if full {
        Level::Crit
    } else {
        Level::of_pct(floor_pct, WARN_PCT, CRIT_PCT)
    };
    let full_blocks_free =
        (full || floor_pct >= FLAG_INODES_PCT) && u.blocks_used_pct() < FLAG_BLOCKS_PCT;
    let trend = trend::judge(used, rules.span_s);
    let eta_s = if full {
        Some(0.0)
    } else {
        trend.rate().filter(|r| *r > 0.0).map(|r| free as f64 / r)
    };
    let span = match (held.first(), held.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0.0,
    };
    Judged {
        level,
        floor_used,
        floor_samples: held.len().max(1),
        floor_span_s: span,
        full_blocks_free,
        eta_s,
        trend,
    }
}

impl Judged {
    /// The evidence behind the level and the ETA, for the filesystem's row.
    pub fn evidence(&self, rules: Rules) -> Evidence {
        Evidence {
            level_floor_inodes_used: self.floor_used,
            level_floor_samples: self.floor_samples,
            level_floor_span_s: self.floor_span_s,
            level_hold_s: rules.hold_s,
            trend: self.trend.report(rules.span_s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        hold_s: 10.0,
        span_s: 30.0,
    };

    fn fs(total: u64, used: u64) -> FsUsage {
        FsUsage {
            mount: "/x".into(),
            device: "/dev/loop0".into(),
            fstype: "ext4".into(),
            dev: 1,
            major: 7,
            minor: 0,
            inodes_total: total,
            inodes_used: used,
            blocks_total: 1000,
            blocks_used: 100,
            block_size: 4096,
        }
    }

    /// The EXHAUSTED IN column of `j`.
    fn eta_column(j: &Judged) -> String {
        super::super::rows::eta_text(j.eta_s, &j.evidence(RULES).trend, RULES.span_s)
    }

    fn series(points: &[(f64, u64)]) -> Series {
        let mut s = Series::default();
        for (t, v) in points {
            s.push(*t, *v as f64, 600.0);
        }
        s
    }

    #[test]
    fn a_burst_over_the_threshold_is_not_a_level() {
        // 70% for 10 s, then a burst of temp files to 85% now.
        let mut pts: Vec<(f64, u64)> = (0..10).map(|t| (t as f64, 700)).collect();
        pts.push((10.0, 850));
        let j = judge(&fs(1000, 850), &series(&pts), RULES);
        assert_eq!(j.level, Level::Ok, "{j:?}");
        assert_eq!(j.floor_used, 700);
        // Held over the whole 10 s: WARN.
        let pts: Vec<(f64, u64)> = (0..=10).map(|t| (t as f64, 850)).collect();
        let j = judge(&fs(1000, 850), &series(&pts), RULES);
        assert_eq!(j.level, Level::Warn);
        assert_eq!((j.floor_samples, j.floor_span_s), (11, 10.0));
    }

    #[test]
    fn full_is_crit_and_flagged_at_once_with_eta_zero() {
        let j = judge(&fs(128, 128), &series(&[(0.0, 10), (0.3, 128)]), RULES);
        assert_eq!(j.level, Level::Crit);
        assert!(j.full_blocks_free);
        assert_eq!(j.eta_s, Some(0.0));
        assert_eq!(eta_column(&j), "now (full)");
        // 96% for one reading only: not flagged; held: flagged and CRIT.
        let j = judge(&fs(1000, 960), &series(&[(0.0, 500), (1.0, 960)]), RULES);
        assert!(!j.full_blocks_free);
        let j = judge(&fs(1000, 960), &series(&[(0.0, 960), (1.0, 960)]), RULES);
        assert!(j.full_blocks_free);
        assert_eq!(j.level, Level::Crit);
    }

    #[test]
    fn eta_only_from_sustained_growth() {
        // 35 s of growth at 20/s: ETA = free / rate.
        let pts: Vec<(f64, u64)> = (0..=35).map(|t| (t as f64, 1000 + 20 * t)).collect();
        let j = judge(&fs(100_000, 1700), &series(&pts), RULES);
        let eta = j.eta_s.unwrap_or_else(|| panic!("{j:?}"));
        assert!((eta - (100_000.0 - 1700.0) / 20.0).abs() < 1e-6, "{eta}");
        // Temp files created and deleted again: no ETA, and the report says why.
        let pts: Vec<(f64, u64)> = (0..=35)
            .map(|t| (t as f64, if t % 2 == 0 { 1000 } else { 4000 }))
            .collect();
        let j = judge(&fs(100_000, 4000), &series(&pts), RULES);
        assert_eq!(j.eta_s, None);
        assert_eq!(eta_column(&j), "no sustained growth");
        assert_eq!(j.evidence(RULES).trend.state, "no_sustained_growth");
        // Fewer than 30 s: no ETA yet, and the text says what is missing.
        let pts: Vec<(f64, u64)> = (0..=5).map(|t| (t as f64, 1000 + 20 * t)).collect();
        let j = judge(&fs(100_000, 1100), &series(&pts), RULES);
        assert_eq!(j.eta_s, None);
        assert!(
            eta_column(&j).starts_with("too few samples (6 over 5.0s"),
            "{}",
            eta_column(&j)
        );
    }
}
