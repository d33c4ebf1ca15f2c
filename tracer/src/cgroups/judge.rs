//! What `tracer cgroups` concludes, as pure functions of the report's data: which
//! dying cgroups are a finding, and which hints follow. Text, JSON and the Prometheus
//! file all print these results.
//!
//! Every systemd scope and container start/stop removes a cgroup, and the kernel frees
//! it a moment later (after an RCU grace period, or once the last page charged to a
//! memory cgroup is gone). A cgroup seen dying once is therefore not a finding. The
//! evidence that is:
//! - at least `dying_min` (10 by default) cgroups of one hierarchy removed while tracing
//!   and still dying after `dying_age` (30 s by default): a few are normal on a busy
//!   host (a short-lived scope that first read a few pages of a binary keeps its memcg
//!   charged until reclaim; measured: /usr/bin/cat's 4 KiB kept a test's systemd-like
//!   scope dying past 30 s while builds churned the page cache);
//! - at least `dying_min` cgroups already dying at the start that are still not
//!   released after the tracer has run for `dying_age` (their age is at least that, the
//!   individuals are unknown);
//! - the hierarchy's dying count growing in a sustained way ([`crate::trend`]).
use serde::{Deserialize, Serialize};

use super::rows::LeftBehind;
use crate::{
    output::{human_duration, serialize_round3},
    trend::Trend,
};

/// One hierarchy's dying cgroups as the report sees them.
pub struct HierarchyDying<'a> {
    pub name: &'a str,
    pub memory: bool,
    /// Removed while tracing, still dying: (path, seconds since rmdir).
    pub tracked: Vec<(&'a str, f64)>,
    /// Dying at the start (None: the kernel gives no count for this hierarchy).
    pub at_start: Option<u64>,
    /// Of those, released since (release seen without its rmdir).
    pub released_unseen: u64,
    /// The dying count's trend over the samples.
    pub trend: Trend,
}

/// A finding: an element of the report's `findings`, its `kind` first. Ages and rates
/// are exact here (the text rounds them its way) and rounded to 3 decimals in JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Finding {
    /// Removed while tracing and still dying past the threshold.
    #[serde(rename = "dying_past_threshold")]
    Stuck {
        hierarchy: String,
        path: String,
        #[serde(serialize_with = "serialize_round3")]
        age_s: f64,
    },
    /// Dying since before the start and not released for the whole threshold.
    #[serde(rename = "dying_since_before_start")]
    StuckBeforeStart {
        hierarchy: String,
        count: u64,
        /// How long the tracer has watched them: their age is at least this.
        #[serde(serialize_with = "serialize_round3")]
        min_age_s: f64,
    },
    /// The dying count grows in a sustained way.
    #[serde(rename = "dying_count_growing")]
    Growing {
        hierarchy: String,
        #[serde(serialize_with = "serialize_round3")]
        rate_per_min: f64,
    },
}

/// Per hierarchy: (stuck, in flight, unreleased from before the start once judged).
pub fn counts(h: &HierarchyDying, dying_age_s: f64, elapsed_s: f64) -> (usize, usize, Option<u64>) {
    let stuck = h.tracked.iter().filter(|(_, a)| *a >= dying_age_s).count();
    let before = (elapsed_s >= dying_age_s)
        .then(|| h.at_start.map(|n| n.saturating_sub(h.released_unseen)))
        .flatten();
    (stuck, h.tracked.len() - stuck, before)
}

/// The findings of every hierarchy, oldest stuck cgroups first within one: stuck ones
/// from `dying_min` of them.
pub fn findings(
    hs: &[HierarchyDying],
    dying_age_s: f64,
    dying_min: u64,
    elapsed_s: f64,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for h in hs {
        let mut stuck: Vec<&(&str, f64)> = h
            .tracked
            .iter()
            .filter(|(_, a)| *a >= dying_age_s)
            .collect();
        if (stuck.len() as u64) < dying_min {
            stuck.clear();
        }
        stuck.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        for (path, age) in stuck {
            out.push(Finding::Stuck {
                hierarchy: h.name.into(),
                path: path.to_string(),
                age_s: *age,
            });
        }
        if let (_, _, Some(n)) = counts(h, dying_age_s, elapsed_s)
            && n > 0
            && n >= dying_min
        {
            out.push(Finding::StuckBeforeStart {
                hierarchy: h.name.into(),
                count: n,
                min_age_s: elapsed_s,
            });
        }
        if let Some(r) = h.trend.rate() {
            out.push(Finding::Growing {
                hierarchy: h.name.into(),
                rate_per_min: r * 60.0,
            });
        }
    }
    out
}

impl Finding {
    pub fn hierarchy(&self) -> &str {
        match self {
            Finding::Stuck { hierarchy, .. }
            | Finding::StuckBeforeStart { hierarchy, .. }
            | Finding::Growing { hierarchy, .. } => hierarchy,
        }
    }

    pub fn text(&self, dying_age_s: f64) -> String {
        match self {
            Finding::Stuck {
                hierarchy,
                path,
                age_s,
                ..
            } => format!(
                "{hierarchy} {path}: removed {} ago and still dying (threshold {})",
                human_duration(*age_s),
                human_duration(dying_age_s)
            ),
            Finding::StuckBeforeStart {
                hierarchy,
                count,
                min_age_s,
                ..
            } => format!(
                "{hierarchy}: {count} cgroup(s) dying since before the start, not released in {} (threshold {})",
                human_duration(*min_age_s),
                human_duration(dying_age_s)
            ),
            Finding::Growing {
                hierarchy,
                rate_per_min,
                ..
            } => format!("{hierarchy}: dying count growing {rate_per_min:+.1}/min (sustained)"),
        }
    }
}

/// Whether any of `findings` is in a hierarchy with the memory controller (where page
/// cache is what usually keeps cgroups dying).
pub fn in_memory(hs: &[HierarchyDying], findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| hs.iter().any(|h| h.memory && h.name == f.hierarchy()))
}

/// The dying-cgroup hint, from the findings only (`in_memory`: one of them is in the
/// memory hierarchy): nothing to say when none.
pub fn dying_hint(findings: &[Finding], in_memory: bool) -> Option<String> {
    if findings.is_empty() {
        return None;
    }
    let count: u64 = findings
        .iter()
        .map(|f| match f {
            Finding::Stuck { .. } => 1,
            Finding::StuckBeforeStart { count, .. } => *count,
            Finding::Growing { .. } => 0,
        })
        .sum();
    let what = if count > 0 {
        format!("{count} cgroup(s) stay dying past the threshold")
    } else {
        "the dying count keeps growing".into()
    };
    Some(if in_memory {
        format!(
            "{what} in the memory hierarchy: removed, but still pinned, typically by page cache \
             charged to them. Before rmdir, write 0 to memory.force_empty (v1) or reclaim with \
             memory.reclaim (v2); moving to cgroup v2 frees them sooner; alert on nr_dying_descendants \
             (cgroup.stat) or on /proc/cgroups num_cgroups growing."
        )
    } else {
        format!(
            "{what} (removed, not freed); watch whether the count grows and alert on \
             nr_dying_descendants (cgroup.stat)."
        )
    })
}

/// systemd keeps slices (grouping units: user.slice with nobody logged in,
/// machine.slice without VMs, system-getty.slice) as cgroups even when nothing runs in
/// them: an empty slice is the manager's design, not a leak.
pub fn managed_empty(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|leaf| leaf.ends_with(".slice"))
}

/// Creators whose own cgroups are now empty leftovers, with how many, most first.
/// `leftovers` holds each leftover's creator (pid, comm) when the tracer saw its mkdir.
pub fn leaves_behind(leftovers: &[Option<(u32, String)>]) -> Vec<LeftBehind> {
    let mut by: Vec<LeftBehind> = Vec::new();
    for (pid, comm) in leftovers.iter().flatten() {
        match by.iter_mut().find(|b| b.pid == *pid) {
            Some(e) => e.empty_leftovers += 1,
            None => by.push(LeftBehind {
                pid: *pid,
                comm: comm.clone(),
                empty_leftovers: 1,
            }),
        }
    }
    by.sort_by(|a, b| (b.empty_leftovers.cmp(&a.empty_leftovers)).then(a.pid.cmp(&b.pid)));
    by
}

/// The fastest of several memory.stat reads is slow: one slow read is a scheduling
/// hiccup on a busy host, every read slow is the kernel walking many memcgs.
pub fn stat_slow(reads_ms: &[f64], slow_ms: f64) -> Option<f64> {
    let min = reads_ms.iter().copied().fold(f64::INFINITY, f64::min);
    (reads_ms.len() >= 3 && min >= slow_ms).then_some(min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(
        tracked: Vec<(&'a str, f64)>,
        at_start: Option<u64>,
        unseen: u64,
        trend: Trend,
    ) -> HierarchyDying<'a> {
        HierarchyDying {
            name: "memory",
            memory: true,
            tracked,
            at_start,
            released_unseen: unseen,
            trend,
        }
    }

    fn flat() -> Trend {
        Trend::NoSustainedGrowth {
            samples: 40,
            span_s: 40.0,
        }
    }

    #[test]
    fn dying_for_a_moment_is_not_a_finding() {
        let hs = [h(
            vec![("/system.slice/run-u1.scope", 0.2), ("/a", 29.9)],
            Some(0),
            0,
            flat(),
        )];
        assert!(findings(&hs, 30.0, 1, 60.0).is_empty());
        assert_eq!(counts(&hs[0], 30.0, 60.0), (0, 2, Some(0)));
        assert_eq!(dying_hint(&[], false), None);
    }

    #[test]
    fn fewer_stuck_than_the_minimum_are_no_finding() {
        // One scope kept by a few pages of a binary, and 2 dying from before the start.
        let hs = [h(vec![("/run-u5.scope", 31.0)], Some(2), 0, flat())];
        assert!(findings(&hs, 30.0, 10, 45.0).is_empty());
        assert_eq!(counts(&hs[0], 30.0, 45.0), (1, 0, Some(2)));
        let many: Vec<(&str, f64)> = (0..10).map(|_| ("/s", 31.0)).collect();
        let hs = [h(many, Some(10), 0, flat())];
        assert_eq!(findings(&hs, 30.0, 10, 45.0).len(), 11);
    }

    #[test]
    fn past_the_threshold_before_the_start_or_growing_is() {
        let hs = [h(vec![("/a", 31.0), ("/b", 1.0)], Some(5), 2, flat())];
        let f = findings(&hs, 30.0, 1, 45.0);
        assert_eq!(
            f,
            [
                Finding::Stuck {
                    hierarchy: "memory".into(),
                    path: "/a".into(),
                    age_s: 31.0
                },
                // 5 at the start, 2 released since.
                Finding::StuckBeforeStart {
                    hierarchy: "memory".into(),
                    count: 3,
                    min_age_s: 45.0
                },
            ]
        );
        assert!(in_memory(&hs, &f));
        assert!(
            dying_hint(&f, true)
                .unwrap()
                .starts_with("4 cgroup(s) stay dying past the threshold in the memory hierarchy")
        );
        assert!(
            dying_hint(&f, false)
                .unwrap()
                .starts_with("4 cgroup(s) stay dying past the threshold (removed, not freed)")
        );
        // Before the tracer ran for the threshold, the old ones are not judged yet.
        assert_eq!(findings(&hs, 30.0, 1, 10.0).len(), 1);
        let g = Trend::Growing {
            samples: 30,
            span_s: 30.0,
            rate_per_s: 0.5,
        };
        let f = findings(&[h(vec![], Some(0), 0, g)], 30.0, 1, 31.0);
        assert_eq!(
            f,
            [Finding::Growing {
                hierarchy: "memory".into(),
                rate_per_min: 30.0
            }]
        );
        assert!(f[0].text(30.0).contains("growing +30.0/min"));
        assert!(dying_hint(&f, true).unwrap().contains("keeps growing"));
    }

    #[test]
    fn findings_serialize_with_their_kind_first_and_rounded() {
        let f = [
            Finding::Stuck {
                hierarchy: "memory".into(),
                path: "/a".into(),
                age_s: 4.50512,
            },
            Finding::StuckBeforeStart {
                hierarchy: "memory".into(),
                count: 33,
                min_age_s: 6.0009,
            },
            Finding::Growing {
                hierarchy: "cgroup2".into(),
                rate_per_min: 2.0 / 3.0,
            },
        ];
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(
            json,
            r#"[{"kind":"dying_past_threshold","hierarchy":"memory","path":"/a","age_s":4.505},{"kind":"dying_since_before_start","hierarchy":"memory","count":33,"min_age_s":6.001},{"kind":"dying_count_growing","hierarchy":"cgroup2","rate_per_min":0.667}]"#
        );
        let back: Vec<Finding> = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert!(f[0].text(30.0).starts_with("memory /a: removed 4.5s ago"));
    }

    #[test]
    fn slices_are_managed_and_leftovers_name_their_creator() {
        assert!(managed_empty("/user.slice"));
        assert!(managed_empty("/system.slice/system-getty.slice"));
        assert!(!managed_empty("/system.slice/foo.service"));
        assert!(!managed_empty("/kubepods/pod1"));
        let l = leaves_behind(&[
            Some((7, "mgr".into())),
            None,
            Some((7, "mgr".into())),
            Some((9, "x".into())),
        ]);
        let b = |pid, comm: &str, n| LeftBehind {
            pid,
            comm: comm.into(),
            empty_leftovers: n,
        };
        assert_eq!(l, vec![b(7, "mgr", 2), b(9, "x", 1)]);
    }

    #[test]
    fn one_slow_memory_stat_read_is_not_slow() {
        assert_eq!(stat_slow(&[25.0, 0.4, 0.5], 10.0), None);
        assert_eq!(stat_slow(&[25.0], 10.0), None);
        assert_eq!(stat_slow(&[25.0, 12.0, 30.0], 10.0), Some(12.0));
    }
}
