//! What the zombies detector calls a finding, as pure functions of what it measured:
//! when a zombie is "stuck" rather than in flight, when growth is sustained enough to
//! project PID exhaustion, and the hint for a non-reaping parent.
//!
//! Every process is a zombie for a moment: from its exit until its parent's wait()
//! returns (microseconds for a shell, about 1.6 s for some batch-reaping inits). Only a
//! zombie older than the normal reap delay is evidence that its parent does not reap.
use std::time::Duration;

use super::rows::ParentRow;

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
pub fn hints(parents: &[ParentRow]) -> Vec<String> {
    parents.iter().map(hint).collect()
}

/// The line for one parent (its stuck zombies, wait calls, SIGCHLDs, disposition).
pub fn hint(p: &ParentRow) -> String {
    let (pid, comm, stuck) = (p.pid, &p.comm, p.zombies);
    let why = if p.wait_calls == 0 && p.reaped == 0 {
        format!(
            "got {} SIGCHLD and never called wait(): it does not reap",
            p.sigchld_received
        )
    } else {
        format!(
            "called wait() {} times and reaped {}, but not fast enough or not all children",
            p.wait_calls, p.reaped
        )
    };
    let disp_hint = match p.sigchld.as_ref() {
        "default" => {
            "install a SIGCHLD handler that loops on waitpid(-1, WNOHANG), or set SIGCHLD to SIG_IGN if exit codes are not needed"
        }
        "handler" => {
            "its SIGCHLD handler must loop on waitpid(-1, WNOHANG) until it returns 0 (signals coalesce)"
        }
        _ => "reap children with waitpid()",
    };
    // What ending the parent does, from who inherits its zombies (init.rs).
    let killing = match (&p.namespace_init, &p.reaper_after_exit) {
        (Some(_), _) => format!(
            "Killing {pid} ends its container (it is the container's PID 1) and the kernel frees its zombies with it"
        ),
        (None, Some(r)) if !r.reaps => format!(
            "Killing {pid} hands its zombies to {} ({}), which does not reap either",
            r.pid, r.comm
        ),
        (None, Some(r)) => format!(
            "Killing {pid} hands its zombies to {} ({}), which reaps them",
            r.pid, r.comm
        ),
        (None, None) => format!("Killing {pid} hands its zombies to init, which reaps them"),
    };
    format!(
        "{pid} ({comm}) holds {stuck} stuck zombie(s); it {why}. Fix: {disp_hint}. {killing}; in containers run a \
         real init (tini, dumb-init, --init) as PID 1, and cap the damage with the pids cgroup (pids.max)."
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

    fn parent(zombies: usize, wait_calls: u64, sigchld_received: u64, reaped: u64) -> ParentRow {
        ParentRow {
            pid: 42,
            comm: "app".into(),
            cmdline: "app --serve".into(),
            cgroup: "/".into(),
            zombies,
            in_flight: 0,
            stuck_after_s: 5.0,
            oldest_zombie_age_s: 30.0,
            oldest_zombie_age_exact: true,
            oldest_zombie_age_source: super::super::ages::AgeSource::ExitEvent,
            reaped,
            wait_calls,
            sigchld_received,
            sigchld: "default".into(),
            pids_cgroup: None,
            namespace_init: None,
            reaper_after_exit: None,
        }
    }

    #[test]
    fn hint_says_whether_the_parent_waits() {
        let h = hint(&parent(7, 0, 7, 0));
        assert!(
            h.contains("got 7 SIGCHLD and never called wait()") && h.contains("7 stuck zombie(s)")
        );
        assert!(h.contains("install a SIGCHLD handler"));
        let mut waits = parent(1, 3, 3, 3);
        waits.sigchld = "handler".into();
        let h = hint(&waits);
        assert!(h.contains("called wait() 3 times and reaped 3, but not fast enough"));
        assert!(h.contains("must loop on waitpid(-1, WNOHANG)"));
    }

    #[test]
    fn hints_one_per_non_reaping_parent_none_without() {
        assert!(hints(&[]).is_empty());
        let h = hints(&[parent(2, 0, 2, 0), parent(1, 1, 1, 1)]);
        assert_eq!(h.len(), 2);
        assert!(h[0].starts_with("42 (app) holds 2 stuck zombie(s)"));
    }

    #[test]
    fn killing_a_container_init_ends_the_container_not_hands_over() {
        let mut p = parent(3, 0, 3, 0);
        assert!(hint(&p).contains("Killing 42 hands its zombies to init, which reaps them"));
        p.namespace_init = Some(super::super::init::NamespaceInit {
            comm: "sleep".into(),
            known_init: false,
            ns_pids: vec![42, 1],
        });
        let h = hint(&p);
        assert!(h.contains("Killing 42 ends its container"), "{h}");
        assert!(!h.contains("hands its zombies to init"), "{h}");
    }
}
