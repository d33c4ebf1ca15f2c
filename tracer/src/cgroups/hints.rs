//! The cgroups hints: what to do, as a pure function of the report's numbers.
use std::path::Path;

use super::{
    STAT_READS,
    judge::{self, Finding},
    rows::LeftBehind,
};
use crate::output::human_duration;

/// What the hints are computed from.
pub struct Inputs<'a> {
    /// The fastest of the memory.stat reads, when every one was slow (ms), and the
    /// file read.
    pub stat_slow: Option<(f64, &'a Path)>,
    pub findings: &'a [Finding],
    /// One of the findings is in the hierarchy with the memory controller.
    pub findings_in_memory: bool,
    /// Creators of empty leftovers, most leftovers first.
    pub behind: &'a [LeftBehind],
    /// Empty leftover cgroups older than `min_age_s`.
    pub empty: usize,
    pub min_age_s: f64,
}

/// One line per problem the numbers show; none on a healthy host.
pub fn hints(i: &Inputs) -> Vec<String> {
    let mut hints = Vec::new();
    if let Some((min, path)) = i.stat_slow {
        hints.push(format!(
            "reading {} took at least {min:.1}ms in each of {STAT_READS} reads: it (like reclaim and \
             OOM handling) covers every memory cgroup below it, dying ones included; fewer dying \
             cgroups make it fast again.",
            path.display(),
        ));
    }
    hints.extend(judge::dying_hint(i.findings, i.findings_in_memory));
    if let Some(b) = i.behind.first() {
        hints.push(format!(
            "{} ({}) created {} of the empty leftovers: it leaves cgroups behind.",
            b.pid, b.comm, b.empty_leftovers
        ));
    }
    if i.empty > 0 {
        hints.push(format!(
            "{} empty cgroup(s) older than {} are leak candidates: remove them with rmdir, and fix the \
             manager that creates them without cleaning up.",
            i.empty,
            human_duration(i.min_age_s)
        ));
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Inputs<'static> {
        Inputs {
            stat_slow: None,
            findings: &[],
            findings_in_memory: false,
            behind: &[],
            empty: 0,
            min_age_s: 60.0,
        }
    }

    #[test]
    fn a_healthy_host_gets_no_hint() {
        assert!(hints(&healthy()).is_empty());
    }

    #[test]
    fn slow_memory_stat_names_the_file_and_the_time() {
        let path = Path::new("/sys/fs/cgroup/memory.stat");
        let h = hints(&Inputs {
            stat_slow: Some((12.34, path)),
            ..healthy()
        });
        assert_eq!(h.len(), 1);
        assert!(h[0].starts_with(
            "reading /sys/fs/cgroup/memory.stat took at least 12.3ms in each of 3 reads"
        ));
    }

    #[test]
    fn dying_findings_get_the_dying_hint() {
        let f = [Finding::Stuck {
            hierarchy: "cgroup2".into(),
            path: "/a".into(),
            age_s: 40.0,
        }];
        let h = hints(&Inputs {
            findings: &f,
            findings_in_memory: true,
            ..healthy()
        });
        assert_eq!(h.len(), 1);
        assert!(
            h[0].starts_with("1 cgroup(s) stay dying past the threshold in the memory hierarchy")
        );
    }

    #[test]
    fn leftovers_name_their_creator_and_their_count() {
        let behind = [(7, "mgr", 2), (9, "x", 1)].map(|(pid, comm, n)| LeftBehind {
            pid,
            comm: comm.into(),
            empty_leftovers: n,
        });
        let h = hints(&Inputs {
            behind: &behind,
            empty: 3,
            ..healthy()
        });
        assert_eq!(h.len(), 2);
        assert_eq!(
            h[0],
            "7 (mgr) created 2 of the empty leftovers: it leaves cgroups behind."
        );
        assert!(h[1].starts_with("3 empty cgroup(s) older than 1m00s are leak candidates"));
        // Leftovers whose creator was not seen: only the count.
        let h = hints(&Inputs {
            empty: 1,
            ..healthy()
        });
        assert_eq!(h.len(), 1);
        assert!(h[0].starts_with("1 empty cgroup(s)"));
    }
}
