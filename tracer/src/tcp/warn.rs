//! The early warning: TCP memory near the pressure threshold for long enough to be
//! demand, not a burst. A healthy bulk transfer fills and drains socket queues in
//! bursts; one 100 ms sample touching the warning level is not evidence. The warning
//! needs every sample for `hold` (at 10 Hz, `hold` / 100 ms samples in a row) at or
//! above `pct` of tcp_mem's "pressure". Pure: fed with samples, asked at report time.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::output::human_duration;

/// When TCP memory near the threshold becomes a warning (`--warn-at`, `--warn-after`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    /// Share of tcp_mem's pressure threshold, percent.
    pub pct: f64,
    /// How long every sample must stay at or above it.
    pub hold: Duration,
}

impl Rule {
    /// --warn-at's default; --warn-after's is "3s".
    pub const DEFAULT_PCT: f64 = 80.0;

    /// "80% of the pressure threshold held for 3.0s", as the report states it.
    pub fn describe(&self) -> String {
        describe(self.pct, self.hold.as_secs_f64())
    }
}

/// The rule of `pct` percent held for `hold_s` seconds, in words.
fn describe(pct: f64, hold_s: f64) -> String {
    format!(
        "{pct:.0}% of the pressure threshold held for {}",
        human_duration(hold_s)
    )
}

/// Tracks how long TCP memory has stayed at or above the rule's level.
#[derive(Clone, Debug, Default)]
pub struct Near {
    /// First sample of the current run at or above the level.
    since_ns: Option<u64>,
    /// The last sample's time.
    last_ns: u64,
    /// Longest run so far (ns), the current one included.
    longest_ns: u64,
    /// Samples in the current run.
    run_samples: u64,
}

/// What the report says about the early warning (JSON `early_warning`, text line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The warning is on: the level has held for at least `hold_s` up to the last sample.
    pub active: bool,
    pub threshold_pct: f64,
    pub hold_s: f64,
    /// How long the current run at or above the level has lasted (0: below now).
    pub held_s: f64,
    /// Samples in that run.
    pub held_samples: u64,
    /// Longest run during the trace.
    pub longest_held_s: f64,
    /// The rule held at some point of the trace (the advice may rest on it).
    pub sustained: bool,
}

impl Near {
    pub fn on_sample(&mut self, rule: &Rule, t_ns: u64, pages: u64, pressure: u64) {
        let pct = crate::snapshot::pct(pages, pressure);
        if pressure > 0 && pct >= rule.pct {
            let since = *self.since_ns.get_or_insert(t_ns);
            self.run_samples += 1;
            self.longest_ns = self.longest_ns.max(t_ns.saturating_sub(since));
        } else {
            self.since_ns = None;
            self.run_samples = 0;
        }
        self.last_ns = t_ns;
    }

    pub fn state(&self, rule: &Rule) -> State {
        let hold_ns = rule.hold.as_nanos() as u64;
        let held_ns = self.since_ns.map_or(0, |s| self.last_ns.saturating_sub(s));
        State {
            active: self.since_ns.is_some() && held_ns >= hold_ns,
            threshold_pct: rule.pct,
            hold_s: rule.hold.as_secs_f64(),
            held_s: round3(held_ns as f64 / 1e9),
            held_samples: self.run_samples,
            longest_held_s: round3(self.longest_ns as f64 / 1e9),
            sustained: self.longest_ns >= hold_ns && self.longest_ns > 0,
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The line that tops the report: pressure now (the kernel's own state), or the early
/// warning when its rule holds, else nothing.
pub fn warning(open: bool, pages: u64, pressure: u64, near: &State) -> Option<String> {
    let pct = crate::snapshot::pct(pages, pressure);
    if open {
        Some(format!(
            "TCP memory pressure NOW: {pages} pages, {pct:.0}% of the pressure threshold"
        ))
    } else if near.active {
        Some(format!(
            "TCP memory at {pct:.0}% of the pressure threshold ({pages} of {pressure} pages), at or above {:.0}% for {} ({} samples; the warning needs {}): an episode is near",
            near.threshold_pct,
            human_duration(near.held_s),
            near.held_samples,
            human_duration(near.hold_s)
        ))
    } else {
        None
    }
}

/// The text line when there is no warning: what was seen against the rule (the
/// state states the rule too).
pub fn no_warning_line(near: &State) -> String {
    let rule = describe(near.threshold_pct, near.hold_s);
    if near.held_s > 0.0 || near.held_samples > 0 {
        format!(
            "early warning: none yet: at or above {:.0}% for {} so far; it needs {rule}",
            near.threshold_pct,
            human_duration(near.held_s),
        )
    } else {
        format!(
            "early warning: none: TCP memory is below {:.0}% of the pressure threshold (longest stretch at or above it: {}; the warning needs {rule})",
            near.threshold_pct,
            human_duration(near.longest_held_s),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        pct: 80.0,
        hold: Duration::from_secs(3),
    };

    fn feed(n: &mut Near, from_ms: u64, to_ms: u64, pages: u64) {
        let mut t = from_ms;
        while t < to_ms {
            n.on_sample(&RULE, t * 1_000_000, pages, 100);
            t += 100;
        }
    }

    #[test]
    fn one_sample_touching_the_level_is_not_a_warning() {
        let mut n = Near::default();
        feed(&mut n, 0, 1000, 10);
        n.on_sample(&RULE, 1_000_000_000, 95, 100);
        let s = n.state(&RULE);
        assert!(!s.active && !s.sustained, "{s:?}");
        assert_eq!(s.held_samples, 1);
        assert_eq!(warning(false, 95, 100, &s), None);
        feed(&mut n, 1100, 2000, 10);
        let s = n.state(&RULE);
        assert_eq!((s.held_s, s.held_samples, s.active), (0.0, 0, false));
        assert!(no_warning_line(&s).starts_with("early warning: none: "));
    }

    #[test]
    fn bursts_that_drain_between_samples_never_add_up() {
        // 2.9 s at 90%, one sample at 50%, 2.9 s at 90% again: never 3 s in a row.
        let mut n = Near::default();
        feed(&mut n, 0, 3000, 90);
        n.on_sample(&RULE, 3_000_000_000, 50, 100);
        feed(&mut n, 3100, 6100, 90);
        let s = n.state(&RULE);
        assert!(!s.active && !s.sustained, "{s:?}");
        assert_eq!(s.longest_held_s, 2.9);
        assert!(no_warning_line(&s).starts_with("early warning: none yet"));
    }

    #[test]
    fn the_level_held_for_the_hold_time_warns_and_says_how_long() {
        let mut n = Near::default();
        feed(&mut n, 0, 3100, 88);
        let s = n.state(&RULE);
        assert!(s.active && s.sustained, "{s:?}");
        assert_eq!(s.held_s, 3.0);
        assert_eq!(s.held_samples, 31);
        let w = warning(false, 88, 100, &s).unwrap();
        assert!(w.contains("88% of the pressure threshold"), "{w}");
        assert!(
            w.contains("for 3.0s (31 samples; the warning needs 3.0s)"),
            "{w}"
        );
        assert!(w.ends_with("an episode is near"), "{w}");
        // Falling below ends it; the run is remembered as sustained for the advice.
        n.on_sample(&RULE, 3_100_000_000, 10, 100);
        let s = n.state(&RULE);
        assert!(!s.active && s.sustained);
        assert_eq!(warning(false, 10, 100, &s), None);
    }

    #[test]
    fn pressure_now_is_the_kernels_state_and_needs_no_hold() {
        let s = Near::default().state(&RULE);
        assert!(
            warning(true, 10, 100, &s)
                .unwrap()
                .starts_with("TCP memory pressure NOW")
        );
        // No pressure threshold (unreadable tcp_mem) never warns.
        let mut n = Near::default();
        for t in 0..40 {
            n.on_sample(&RULE, t * 100_000_000, 5, 0);
        }
        assert!(!n.state(&RULE).sustained);
    }
}
