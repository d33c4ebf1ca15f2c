//! What the zombies detector calls a finding, as pure functions of what it measured:
//! when a zombie is "stuck" rather than in flight, when growth is sustained enough to
//! project PID exhaustion, and the hint for a non-reaping parent.
//!
//! Every process is a zombie for a moment: from its exit until its parent's wait()
//! returns (microseconds for a shell, about 1.6 s for some batch-reaping inits). Only a
//! zombie older than the normal reap delay is evidence that its parent does not reap.
use std::time::Duration;

use tracer_common::zombies::ParentCounters;

use crate::trend::Trend;

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

/// Seconds until the PID space is used up, only from sustained growth of stuck zombies
/// (the rule of [`crate::trend`]).
pub fn exhaustion_eta_s(trend: &Trend, in_use: Option<u64>, limit: Option<u64>) -> Option<f64> {
    match (trend.rate(), in_use, limit) {
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

    #[test]
    fn eta_only_from_sustained_growth() {
        let growing = Trend::Growing {
            samples: 31,
            span_s: 30.0,
            rate_per_s: 1.0,
        };
        assert_eq!(
            exhaustion_eta_s(&growing, Some(1000), Some(4000)),
            Some(3000.0)
        );
        let flat = Trend::NoSustainedGrowth {
            samples: 31,
            span_s: 30.0,
        };
        assert_eq!(exhaustion_eta_s(&flat, Some(1000), Some(4000)), None);
        let short = Trend::TooFewSamples {
            samples: 3,
            span_s: 2.0,
        };
        assert_eq!(exhaustion_eta_s(&short, Some(1000), Some(4000)), None);
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
