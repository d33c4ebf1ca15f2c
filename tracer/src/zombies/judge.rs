//! What the zombies detector calls a finding, as pure functions of what it measured:
//! when a zombie is "stuck" rather than in flight, when growth is sustained enough to
//! project PID exhaustion, and the hint for a non-reaping parent.
//!
//! Every process is a zombie for a moment: from its exit until its parent's wait()
//! returns (microseconds for a shell, about 1.6 s for some batch-reaping inits). Only a
//! zombie older than the normal reap delay is evidence that its parent does not reap.
use std::time::Duration;

use tracer_common::zombies::ParentCounters;

/// No zombie younger than this is stuck, whatever the measured reap latency. Healthy
/// parents reap in microseconds to milliseconds, but some inits reap orphans by
/// polling: this machine's PID 1 left 12 orphans zombies for 1.05-1.80 s (measured,
/// see PLATFORM.md), and a parent is judged by its own pace only after
/// its first observed reap. 5 s stays clear of such pollers and is still seconds, not
/// the hours a leaking parent holds its zombies.
pub const STUCK_FLOOR: Duration = Duration::from_secs(5);
/// The measured reap latency never raises the threshold above this: a parent that
/// once took minutes to reap must not hide its zombies for longer.
pub const STUCK_CAP: Duration = Duration::from_secs(60);
/// A trend must grow by at least this many stuck zombies over its window.
pub const MIN_GROWTH: u64 = 5;
/// ... seen in at least this many samples.
pub const MIN_SAMPLES: usize = 10;

/// When a zombie counts as stuck.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StuckRule {
    /// `--stuck-after`: one fixed age for every parent.
    Fixed(Duration),
    /// Default: older than STUCK_FLOOR and than twice the slowest reap this parent was
    /// seen to make (so a parent that reaps in batches is judged by its own pace),
    /// at most STUCK_CAP.
    Auto,
}

impl StuckRule {
    /// The age in seconds above which a zombie of a parent whose slowest observed reap
    /// took `slowest_reap_s` (None: no reap seen) is stuck.
    pub fn threshold_s(self, slowest_reap_s: Option<f64>) -> f64 {
        match self {
            Self::Fixed(d) => d.as_secs_f64(),
            Self::Auto => {
                let own = slowest_reap_s.map_or(0.0, |s| 2.0 * s);
                own.min(STUCK_CAP.as_secs_f64())
                    .max(STUCK_FLOOR.as_secs_f64())
            }
        }
    }

    /// The rule in words, as reports state it.
    pub fn describe(self) -> String {
        match self {
            Self::Fixed(d) => format!(
                "older than {} (--stuck-after)",
                humantime::format_duration(d)
            ),
            Self::Auto => format!(
                "older than {} and than twice the parent's slowest observed reap (at most {}; \
                 --stuck-after sets a fixed age)",
                humantime::format_duration(STUCK_FLOOR),
                humantime::format_duration(STUCK_CAP)
            ),
        }
    }
}

/// The stuck-zombie count over time, sampled by the detector.
#[derive(Debug, Default)]
pub struct Samples {
    /// (seconds since start, stuck zombies), oldest first.
    points: Vec<(f64, u64)>,
}

/// What the samples of the last window say.
#[derive(Clone, Debug, PartialEq)]
pub struct Trend {
    /// The window the rule asks for, in seconds.
    pub window_s: f64,
    /// What the window holds.
    pub span_s: f64,
    pub samples: usize,
    /// Last minus first stuck count in the window.
    pub net_growth: i64,
    /// Least-squares slope, stuck zombies per second; only when sustained.
    pub growth_per_s: Option<f64>,
    /// Why there is no sustained growth (None when there is).
    pub not_sustained: Option<String>,
}

impl Samples {
    /// Adds a sample and forgets those older than `keep_s` before it.
    pub fn push(&mut self, t_s: f64, stuck: u64, keep_s: f64) {
        self.points.push((t_s, stuck));
        let cut = t_s - keep_s;
        // Keep one sample at or before the cut, so a full window stays measurable.
        let first_kept = self
            .points
            .iter()
            .rposition(|(t, _)| *t <= cut)
            .unwrap_or(0);
        self.points.drain(..first_kept);
    }

    /// Growth is sustained when, over the last `window_s` seconds, at least
    /// MIN_SAMPLES samples span the whole window, the stuck count grew by at least
    /// MIN_GROWTH overall and grew in each half of the window (a single jump is a
    /// step, not a trend), and the fitted slope is positive.
    pub fn trend(&self, window_s: f64) -> Trend {
        let Some(&(t_end, _)) = self.points.last() else {
            return Trend {
                window_s,
                span_s: 0.0,
                samples: 0,
                net_growth: 0,
                growth_per_s: None,
                not_sustained: Some("no samples yet".into()),
            };
        };
        let start = self
            .points
            .iter()
            .rposition(|(t, _)| *t <= t_end - window_s)
            .unwrap_or(0);
        let w = &self.points[start..];
        let (t0, n0) = w[0];
        let n_end = w[w.len() - 1].1;
        let span_s = t_end - t0;
        let net_growth = n_end as i64 - n0 as i64;
        let mid_t = t0 + span_s / 2.0;
        let n_mid = w
            .iter()
            .rev()
            .find(|(t, _)| *t <= mid_t)
            .map_or(n0, |p| p.1);
        let slope = slope(w);
        let why = if span_s + 1e-9 < window_s {
            Some(format!(
                "samples span {} of the {} needed",
                crate::output::human_duration(span_s),
                crate::output::human_duration(window_s)
            ))
        } else if w.len() < MIN_SAMPLES {
            Some(format!("{} samples, {MIN_SAMPLES} needed", w.len()))
        } else if net_growth < MIN_GROWTH as i64 {
            Some(format!(
                "stuck zombies changed by {net_growth:+} over {}, growth of {MIN_GROWTH} needed",
                crate::output::human_duration(span_s)
            ))
        } else if n_mid <= n0 || n_end <= n_mid || slope <= 0.0 {
            Some("the count grew in a step, not in both halves of the window".into())
        } else {
            None
        };
        Trend {
            window_s,
            span_s,
            samples: w.len(),
            net_growth,
            growth_per_s: why.is_none().then_some(slope),
            not_sustained: why,
        }
    }
}

/// Least-squares slope of count over time (0 for fewer than two distinct times).
fn slope(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mc = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for &(t, c) in points {
        num += (t - mt) * (c as f64 - mc);
        den += (t - mt) * (t - mt);
    }
    if den > 0.0 { num / den } else { 0.0 }
}

/// Seconds until the PID space is used up, only from a sustained trend.
pub fn exhaustion_eta_s(trend: &Trend, in_use: Option<u64>, limit: Option<u64>) -> Option<f64> {
    match (trend.growth_per_s, in_use, limit) {
        (Some(g), Some(u), Some(l)) if g > 0.0 && l > u => Some((l - u) as f64 / g),
        _ => None,
    }
}

/// One line per non-reaping parent: what the numbers say and what to do about it.
pub fn hint(
    pid: u32,
    comm: &str,
    stuck: usize,
    c: ParentCounters,
    disp: &str,
    reaped: u64,
) -> String {
    let why = if c.wait_calls == 0 && reaped == 0 {
        format!(
            "got {} SIGCHLD and never called wait(): it does not reap",
            c.sigchld
        )
    } else {
        format!(
            "called wait() {} times and reaped {}, but not fast enough or not all children",
            c.wait_calls, reaped
        )
    };
    let disp_hint = match disp {
        "default" => {
            "install a SIGCHLD handler that loops on waitpid(-1, WNOHANG), or set SIGCHLD to SIG_IGN if exit codes are not needed"
        }
        "handler" => {
            "its SIGCHLD handler must loop on waitpid(-1, WNOHANG) until it returns 0 (signals coalesce)"
        }
        _ => "reap children with waitpid()",
    };
    format!(
        "{pid} ({comm}) holds {stuck} stuck zombie(s); it {why}. Fix: {disp_hint}. Killing {pid} hands its zombies to \
         init, which reaps them; in containers run a real init (tini, dumb-init, --init) as PID 1, and cap the \
         damage with the pids cgroup (pids.max)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_has_a_floor_a_cap_and_follows_the_parents_own_pace() {
        let auto = StuckRule::Auto;
        assert_eq!(auto.threshold_s(None), 5.0);
        assert_eq!(auto.threshold_s(Some(0.002)), 5.0, "a shell reaps in ms");
        assert_eq!(auto.threshold_s(Some(4.0)), 8.0, "a slow batch reaper");
        assert_eq!(auto.threshold_s(Some(3600.0)), 60.0);
        let fixed = StuckRule::Fixed(Duration::from_millis(250));
        assert_eq!(fixed.threshold_s(Some(10.0)), 0.25);
        assert!(auto.describe().contains("twice the parent's slowest"));
        assert!(fixed.describe().contains("--stuck-after"));
    }

    fn series(points: &[(f64, u64)]) -> Samples {
        let mut s = Samples::default();
        for &(t, n) in points {
            s.push(t, n, 60.0);
        }
        s
    }

    #[test]
    fn steady_growth_over_the_window_is_sustained_and_gives_an_eta() {
        // One more stuck zombie every second for 40 s.
        let s = series(&(0..=40).map(|i| (i as f64, i as u64)).collect::<Vec<_>>());
        let t = s.trend(30.0);
        assert_eq!(t.not_sustained, None, "{t:?}");
        assert!((t.growth_per_s.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(t.net_growth, 30);
        assert_eq!(t.samples, 31);
        assert_eq!(exhaustion_eta_s(&t, Some(1000), Some(4000)), Some(3000.0));
    }

    #[test]
    fn transient_zombies_and_short_runs_give_no_eta() {
        // A busy healthy host: 0-2 stuck zombies now and then.
        let noisy: Vec<_> = (0..=60)
            .map(|i| (i as f64, [0, 0, 1, 0, 2][i % 5]))
            .collect();
        let t = series(&noisy).trend(30.0);
        assert!(t.growth_per_s.is_none(), "{t:?}");
        assert!(t.not_sustained.unwrap().contains("growth of 5 needed"));
        assert_eq!(
            exhaustion_eta_s(&series(&noisy).trend(30.0), Some(1), Some(9)),
            None
        );
        // Growing, but for 6 s only.
        let short: Vec<_> = (0..=6).map(|i| (i as f64, 3 * i as u64)).collect();
        let t = series(&short).trend(30.0);
        assert!(t.not_sustained.unwrap().starts_with("samples span 6"));
        // Too few samples.
        let sparse = series(&[(0.0, 0), (15.0, 10), (30.0, 20)]).trend(30.0);
        assert!(sparse.not_sustained.unwrap().contains("3 samples"));
        assert!(Samples::default().trend(30.0).growth_per_s.is_none());
    }

    #[test]
    fn a_single_jump_is_a_step_not_a_trend() {
        // 10 zombies appear at once at 2 s, then nothing more for 40 s.
        let step: Vec<_> = (0..=42)
            .map(|i| (i as f64, if i >= 2 { 10 } else { 0 }))
            .collect();
        let t = series(&step).trend(30.0);
        assert!(t.growth_per_s.is_none(), "{t:?}");
        // Inside the last 30 s nothing grew at all.
        assert_eq!(t.net_growth, 0);
        // A jump in the middle of the window grows in one half only.
        let mid: Vec<_> = (0..=30)
            .map(|i| (i as f64, if i >= 20 { 10 } else { 0 }))
            .collect();
        let t = series(&mid).trend(30.0);
        assert!(
            t.not_sustained.as_deref().unwrap().contains("step"),
            "{t:?}"
        );
    }

    #[test]
    fn old_samples_are_forgotten_but_a_full_window_is_kept() {
        let mut s = Samples::default();
        for i in 0..=100 {
            s.push(i as f64, 0, 30.0);
        }
        assert_eq!(s.points.first().unwrap().0, 70.0);
        assert_eq!(s.trend(30.0).span_s, 30.0);
    }

    #[test]
    fn hint_says_whether_the_parent_waits() {
        let none = ParentCounters {
            sigchld: 7,
            ..Default::default()
        };
        let h = hint(42, "app", 7, none, "default", 0);
        assert!(h.contains("never called wait()") && h.contains("7 stuck zombie(s)"));
        let some = ParentCounters {
            wait_calls: 3,
            ..Default::default()
        };
        assert!(hint(42, "app", 1, some, "handler", 3).contains("not fast enough"));
    }
}
