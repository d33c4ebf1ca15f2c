//! Metrics of the PID budgets and fork refusals (issue 22): per pids cgroup (top-N,
//! with its container's labels) and per refused syscall.
use super::{
    budgets::PidBudgetRow,
    refusals::{BySyscall, ForkRefusals},
};
use crate::prom::{Families, Metric, container_label, counter, gauge, top_by};

/// Pids cgroups with series of their own: the fullest first.
pub const TOP_CGROUPS: usize = 10;

/// Labels of a per-cgroup series: the cgroup's path in the pids hierarchy (bounded by
/// the top-N), then its container (empty ones are left out).
pub const CGROUP: &[&str] = &[
    "path",
    "container_id",
    "pod_uid",
    "qos",
    "container",
    "pod",
    "namespace",
];

pub const CGROUP_PIDS: Metric = gauge(
    "zombies_cgroup_pids",
    None,
    "pids.current of a pids cgroup (tasks and zombies charged to it), for the 10 fullest.",
    CGROUP,
);
pub const CGROUP_PIDS_MAX: Metric = gauge(
    "zombies_cgroup_pids_max",
    None,
    "pids.max of a pids cgroup, for the 10 fullest (absent when unlimited).",
    CGROUP,
);
pub const CGROUP_PIDS_USED: Metric = gauge(
    "zombies_cgroup_pids_used_ratio",
    None,
    "pids.current / pids.max of a pids cgroup (0 to 1), for the 10 fullest: 0.8 is a warning, 0.95 critical.",
    CGROUP,
);
pub const CGROUP_LEVEL: Metric = gauge(
    "zombies_cgroup_pids_level",
    None,
    "The PID budget finding of a pids cgroup (0 ok, 1 warn, 2 crit), for the 10 fullest.",
    CGROUP,
);
pub const CGROUP_REFUSALS: Metric = counter(
    "zombies_cgroup_fork_refusals",
    "Forks refused at a pids cgroup's pids.max since it was made (pids.events max), for the 10 fullest.",
    CGROUP,
);
pub const FORK_REFUSALS: Metric = counter(
    "zombies_fork_refusals",
    "Forks refused with EAGAIN while tracing, by syscall (the refusal hook; absent without it).",
    &["syscall"],
);

/// The series of the budget rows and the refusals.
pub fn collect(rows: &[PidBudgetRow], refusals: &ForkRefusals, out: &mut Families) {
    for r in top_by(rows, |r| r.used_pct.unwrap_or(0.0), TOP_CGROUPS) {
        let c = r.cgroup.container.as_ref();
        let values: Vec<String> = CGROUP
            .iter()
            .map(|&n| match n {
                "path" => r.cgroup.cgroup.clone(),
                n => container_label(c, n),
            })
            .collect();
        let labels: Vec<(&str, &str)> = CGROUP
            .iter()
            .zip(&values)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        out.sample(&CGROUP_PIDS, &labels, r.pids_current);
        out.opt(&CGROUP_PIDS_MAX, &labels, r.pids_max);
        out.opt(&CGROUP_PIDS_USED, &labels, r.used_pct.map(|p| p / 100.0));
        out.sample(&CGROUP_LEVEL, &labels, r.level.severity());
        out.opt(&CGROUP_REFUSALS, &labels, r.refused_events_max_total);
    }
    if refusals.total.is_some() {
        let BySyscall {
            clone,
            clone3,
            fork,
            vfork,
        } = refusals.by_syscall;
        for (call, n) in [
            ("clone", clone),
            ("clone3", clone3),
            ("fork", fork),
            ("vfork", vfork),
        ] {
            out.sample(&FORK_REFUSALS, &[("syscall", call)], n);
        }
    }
}
