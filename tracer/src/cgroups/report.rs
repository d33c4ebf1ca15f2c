//! The `tracer cgroups` report: one typed struct (built in build.rs) that renders the
//! text for people and gives the metrics; its JSON is its serialization. Per hierarchy
//! counts and dying cgroups, churn by process and parent, task moves, releases and
//! their latency, empty leftovers, findings and hints.
use std::{collections::HashSet, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    judge::Finding,
    metrics,
    rows::{
        ChurnParentRow, ChurnProcessRow, DyingLevel, DyingParentRow, DyingRow, EmptyRow,
        HierarchyRow, LeftBehind, MoveRow, ReleasedRow,
    },
};
use crate::{
    output::{Log2, Row, Summary, Table, human_duration, round3, serialize_round3_opt},
    prom::{Families, MS, Metric, US},
    report::Body,
    trend,
};

/// What `tracer cgroups` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CgroupsReport {
    /// `--hierarchy`: only this one.
    pub hierarchy_filter: Option<String>,
    /// Each hierarchy traced (all mounted ones, or the filter's).
    pub hierarchies: Vec<HierarchyRow>,
    /// Totals over the hierarchies, while tracing.
    pub created: u64,
    pub removed: u64,
    pub released: u64,
    pub tasks_moved: u64,
    /// Releases of cgroups whose rmdir was before the start.
    pub released_unseen_rmdir: u64,
    /// Removed while tracing and not released yet, oldest first (at most 1,000).
    pub dying: Vec<DyingRow>,
    /// How many of those there are (`dying` may list fewer).
    pub dying_tracked: usize,
    /// Dying now by the hierarchies' own counts (from before the start too).
    pub dying_total: u64,
    /// Dying at the start, over the hierarchies whose kernel count is known.
    pub dying_at_start: u64,
    /// Parents of the dying cgroups, the most first (at most 100).
    pub dying_by_parent: Vec<DyingParentRow>,
    /// cgroup2 levels whose cgroup.stat counts dying descendants (at most 100).
    pub dying_levels: Vec<DyingLevel>,
    /// rmdir to release over every hierarchy, microseconds, with the exact buckets in
    /// seconds.
    pub release_latency_us: Summary,
    /// The latest releases, the latest last.
    pub released_recent: Vec<ReleasedRow>,
    pub churn: Churn,
    /// Who moved tasks into which cgroup, the most tasks first (at most 100).
    pub moves: Vec<MoveRow>,
    pub state_evicted: Evicted,
    /// Empty leftovers, oldest first (at most 1,000).
    pub empty: Vec<EmptyRow>,
    pub empty_total: usize,
    /// `--min-age`, `--dying-age` and `--trend-span`, seconds.
    pub min_age_s: f64,
    pub dying_age_s: f64,
    /// `--dying-min`: stuck cgroups of one hierarchy are a finding from this many.
    pub dying_min: u64,
    pub trend_span_s: f64,
    pub findings: Vec<Finding>,
    /// Creators of empty leftovers, the most leftovers first.
    pub leaves_behind: Vec<LeftBehind>,
    pub memory_stat_read_ms: StatReads,
    /// What the report could not see.
    pub caveats: Vec<String>,
    /// What to do, one line per problem.
    pub hints: Vec<String>,
    /// What the dying memcgs still hold and what frees it (None: `autopsy_missing`
    /// says why).
    pub autopsy: Option<super::pinned::Autopsy>,
    pub autopsy_missing: Option<String>,
    /// For the text only.
    #[serde(skip)]
    pub view: View,
}

/// Who creates cgroups, and where (at most 100 rows each).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    pub processes: Vec<ChurnProcessRow>,
    pub parents: Vec<ChurnParentRow>,
}

/// State dropped to keep memory bounded (README "Bounded state").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evicted {
    /// Dying cgroups dropped from tracking (still in the counts).
    pub dying: u64,
    /// Live cgroups whose creator was forgotten.
    pub live: u64,
    /// Processes and parent paths dropped from the churn lists.
    pub churn: u64,
}

/// Timed reads of the memory.stat that covers the most cgroups, milliseconds: exact
/// here, rounded to 3 decimals in JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatReads {
    /// The file read (None without a memory controller).
    pub path: Option<PathBuf>,
    /// The read when the tracer started.
    #[serde(serialize_with = "serialize_round3_opt")]
    pub start: Option<f64>,
    /// The fastest of the reads for this report.
    #[serde(serialize_with = "serialize_round3_opt")]
    pub now: Option<f64>,
    #[serde(serialize_with = "serialize_round3_each")]
    pub reads_now: Vec<f64>,
    /// Every read for this report was slow.
    pub slow: bool,
}

fn serialize_round3_each<S: serde::Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|v| round3(*v)))
}

/// What only the text shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Time traced, seconds.
    pub elapsed_s: f64,
    /// `--top`: rows per table.
    pub top: usize,
    /// Dying parents and cgroup2 levels past the 100 the JSON lists, up to `top`.
    pub more_by_parent: Vec<DyingParentRow>,
    pub more_levels: Vec<DyingLevel>,
    /// rmdir to release per hierarchy with releases (its name), microseconds, as log2
    /// histograms.
    pub release_log2: Vec<(String, Log2)>,
}

impl Body for CgroupsReport {
    fn text(&self) -> String {
        let mut t = self.summary_text();
        t += &self.findings_text();
        t += "\nHIERARCHIES\n";
        t += &Table::of(&self.hierarchies).render();
        t += &self.dying_text();
        t += &self.churn_text();
        t += &self.releases_text();
        t += &self.empty_text();
        t += &super::autopsy_report::text(
            self.autopsy.as_ref(),
            self.autopsy_missing.as_deref(),
            self.view.top,
        );
        if !self.hints.is_empty() {
            t += "\n";
            for h in &self.hints {
                t += &format!("hint: {h}\n");
            }
        }
        t
    }

    fn collect(&self, out: &mut Families) {
        use metrics::*;
        for h in &self.hierarchies {
            let l = [("hierarchy", h.name.as_str())];
            out.sample(&LIVE, &l, h.cgroups);
            out.opt(&DYING, &l, h.dying);
            out.sample(&DYING_PAST, &l, h.dying_past_threshold as u64);
            out.sample(&DYING_GROWING, &l, u64::from(h.dying_trend.growing));
            out.sample(&CREATED, &l, h.created);
            out.sample(&REMOVED, &l, h.removed);
            out.sample(&RELEASED, &l, h.released);
            out.sample(&MOVED, &l, h.tasks_moved);
            out.latency(&RELEASE_LATENCY, &l, &h.release_latency_us);
        }
        out.sample(&EMPTY, &[], self.empty_total as u64);
        // The JSON's milliseconds, in seconds.
        let now = self.memory_stat_read_ms.now;
        out.opt(&STAT_READ, &[], now.map(|ms| round3(ms) / MS));
        // Ages as the JSON has them (3 decimals), the oldest first.
        let dying = (self.dying.iter()).map(|d| (&*d.hierarchy, &*d.path, round3(d.age_s)));
        per_path(out, &DYING_AGE, oldest(dying));
        let stuck = self.findings.iter().filter_map(|f| match f {
            Finding::Stuck {
                hierarchy,
                path,
                age_s,
            } => Some((&**hierarchy, &**path, round3(*age_s))),
            _ => None,
        });
        per_path(out, &FINDING_AGE, oldest(stuck));
        // The report lists releases oldest first.
        let latest = (self.released_recent.iter().rev())
            .map(|r| (&*r.hierarchy, &*r.path, r.latency_us.map(|l| l as f64 / US)));
        per_path(out, &RELEASED_LATENCY, latest);
        if let Some(a) = &self.autopsy {
            super::autopsy_report::collect(a, out);
        }
    }

    fn state_evicted(&self) -> Vec<(&'static str, u64)> {
        let e = &self.state_evicted;
        vec![("dying", e.dying), ("live", e.live), ("churn", e.churn)]
    }
}

/// (hierarchy, path, value) rows, the largest value first (ties keep their order).
fn oldest<'a>(
    rows: impl Iterator<Item = (&'a str, &'a str, f64)>,
) -> impl Iterator<Item = (&'a str, &'a str, Option<f64>)> {
    let mut v: Vec<_> = rows.collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v.into_iter().map(|(h, p, x)| (h, p, Some(x)))
}

/// The first [`metrics::TOP_PATHS`] (hierarchy, path) pairs of `rows`, one series each:
/// the first row of a path that appears twice (a cgroup made and removed again); a row
/// without a value takes its place but has no series.
fn per_path<'a>(
    out: &mut Families,
    m: &'static Metric,
    rows: impl Iterator<Item = (&'a str, &'a str, Option<f64>)>,
) {
    let mut seen = HashSet::new();
    for (h, p, v) in rows {
        if seen.len() == metrics::TOP_PATHS {
            break;
        }
        if seen.insert((h, p)) {
            out.opt(m, &[("hierarchy", h), ("path", p)], v);
        }
    }
}

/// The first `n` rows of `a` then `b` as a text table.
fn table_of<R: Row>(a: &[R], b: &[R], n: usize) -> String {
    let mut t = Table::new(R::HEADER);
    for r in a.iter().chain(b).take(n) {
        t.row(r.cells());
    }
    t.render()
}

impl CgroupsReport {
    /// The lines above the sections: totals, the memory.stat read, caveats.
    fn summary_text(&self) -> String {
        let mut t = format!(
            "cgroups: created {}, removed {}, released {} in {}; dying now {} \
             ({} removed while tracing, {} already dying at the start)\n",
            self.created,
            self.removed,
            self.released,
            human_duration(self.view.elapsed_s),
            self.dying_total,
            self.dying_tracked,
            self.dying_at_start
        );
        let s = &self.memory_stat_read_ms;
        match (s.start, s.now, &s.path) {
            (Some(start), Some(now), Some(path)) => {
                t += &format!(
                    "memory.stat read ({}): {start:.2}ms at start, {now:.2}ms now\n",
                    path.display()
                )
            }
            _ => t += "memory.stat read: no memory controller mounted\n",
        }
        for c in &self.caveats {
            t += &format!("note: {c}\n");
        }
        t
    }

    fn findings_text(&self) -> String {
        let mut t = format!(
            "\nFINDINGS ({} or more removed cgroups of one hierarchy still dying after {}, or as many \
             dying since before the start not released within it, or a dying count growing: {})\n",
            self.dying_min,
            human_duration(self.dying_age_s),
            trend::rule(self.trend_span_s)
        );
        if self.findings.is_empty() {
            t += &format!(
                "  none: fewer than {} cgroups of a hierarchy stayed dying past {}, no sustained growth of the dying count\n",
                self.dying_min,
                human_duration(self.dying_age_s)
            );
        }
        for f in &self.findings {
            t += &format!("  {}\n", f.text(self.dying_age_s));
        }
        t
    }

    fn dying_text(&self) -> String {
        let top = self.view.top;
        let mut t = "\nDYING CGROUPS (rmdir seen, not released yet; oldest first)\n".to_string();
        if self.dying_tracked == 0 {
            t += "  none removed while tracing is still dying\n";
        } else {
            t += &table_of(&self.dying, &[], top);
            if self.dying_tracked > top {
                t += &format!(
                    "  ... and {} more (--json lists them)\n",
                    self.dying_tracked - top
                );
            }
            t += "  by parent:\n";
            t += &table_of(&self.dying_by_parent, &self.view.more_by_parent, top);
        }
        if !self.dying_levels.is_empty() {
            t += "  cgroup2 levels holding dying cgroups (cgroup.stat, includes ones from before the start):\n";
            for l in (self.dying_levels.iter().chain(&self.view.more_levels)).take(top) {
                t += &l.line();
            }
        }
        t
    }

    /// CHURN, then TASK MOVES when there are any.
    fn churn_text(&self) -> String {
        let top = self.view.top;
        let mut t = "\nCHURN (who creates cgroups, where)\n".to_string();
        if self.churn.processes.is_empty() {
            t += "  no cgroup was created or removed\n";
        } else {
            t += &table_of(&self.churn.processes, &[], top);
            t += &table_of(&self.churn.parents, &[], top);
        }
        if !self.moves.is_empty() {
            t += "\nTASK MOVES (cgroup_attach_task: who moves tasks where)\n";
            t += &table_of(&self.moves, &[], top);
        }
        t
    }

    fn releases_text(&self) -> String {
        let mut t = "\nRMDIR -> RELEASE LATENCY\n".to_string();
        if self.view.release_log2.is_empty() {
            t += "     (no cgroup removed while tracing was released yet)\n";
        }
        for (name, h) in &self.view.release_log2 {
            t += &format!("  {name}:\n");
            t += &h.render("usecs");
        }
        t
    }

    fn empty_text(&self) -> String {
        let top = self.view.top;
        let mut t = format!(
            "\nEMPTY LEFTOVERS (no tasks, no children, older than {})\n",
            human_duration(self.min_age_s)
        );
        if self.empty_total == 0 {
            t += "  none\n";
            return t;
        }
        t += &table_of(&self.empty, &[], top);
        if self.empty_total > top {
            t += &format!(
                "  ... and {} more (--json lists them)\n",
                self.empty_total - top
            );
        }
        t
    }
}
