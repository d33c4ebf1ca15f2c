//! Builds the [`CgroupsReport`] section by section: a walk of the mounted hierarchies
//! (counts, empty leftovers, id -> path), the kernel's counters and task moves, and
//! what the tracker kept of dying and released cgroups and of churn.
use std::collections::HashMap;

use anyhow::Result;
use tracer_common::{
    cgroups::{
        ATTACH_CAPACITY, AttachCount, AttachKey, COUNT_ATTACH, COUNT_MKDIR, COUNT_RELEASE,
        COUNT_RMDIR,
    },
    comm_str,
};

use super::{
    Cgroups, JSON_ROWS, SLOW_STAT, STAT_READS, age_of, hints,
    judge::{self, Finding, HierarchyDying},
    report::{CgroupsReport, Churn, Evicted, StatReads, View},
    rows::{
        ChurnParentRow, ChurnProcessRow, DyingLevel, DyingParentRow, DyingRow, EmptyRow,
        HierarchyRow, LeftBehind, MoveRow, ReleasedRow,
    },
    state::{self, Dying},
};
use crate::{
    container::{self, Container},
    output::{Log2, Summary},
    procinfo,
    run::ReportCtx,
    snapshot::cgroups::{self as snap, Hierarchy, StatRead, Survey},
    trend,
};

/// Rows the JSON lists at most of dying parents, cgroup2 levels, churn and moves.
const JSON_SHORT: usize = 100;

/// cgroup paths by (hierarchy id, cgroup id), from the walk.
type Paths = HashMap<(i32, u64), String>;

/// The report's time.
struct Clock {
    now_ns: u64,
    elapsed_s: f64,
    /// Elapsed minutes, never 0 (rates are per minute).
    minutes: f64,
}

/// The hierarchies' rows and what is judged from them.
struct Judged {
    rows: Vec<HierarchyRow>,
    findings: Vec<Finding>,
    in_memory: bool,
}

/// The dying section's lists: what the JSON lists, and beyond it what the text shows
/// with a `--top` over [`JSON_SHORT`].
struct DyingLists {
    /// How many are dying (`rows` lists at most JSON_ROWS).
    tracked: usize,
    rows: Vec<DyingRow>,
    by_parent: Vec<DyingParentRow>,
    more_by_parent: Vec<DyingParentRow>,
    levels: Vec<DyingLevel>,
    more_levels: Vec<DyingLevel>,
}

/// The first `json` of `v`, and after them up to `text` in all.
fn split<T>(mut v: Vec<T>, json: usize, text: usize) -> (Vec<T>, Vec<T>) {
    v.truncate(json.max(text));
    let more = v.split_off(json.min(v.len()));
    (v, more)
}

impl Cgroups {
    /// The report [`crate::run::Detector::report`] hands out.
    pub(super) fn build(&mut self, ctx: &ReportCtx) -> Result<CgroupsReport> {
        let c = Clock {
            now_ns: procinfo::monotonic_ns(),
            elapsed_s: ctx.elapsed.as_secs_f64(),
            minutes: ctx.elapsed.as_secs_f64().max(1e-3) / 60.0,
        };
        let survey = snap::survey()?;
        // id -> path in every hierarchy: cgroup2 names the cgroup of callers that are
        // gone even when --hierarchy picks another one.
        let paths: Paths = (survey.iter())
            .flat_map(|s| (s.dirs.iter()).map(|d| ((s.hierarchy.id as i32, d.id), d.path.clone())))
            .collect();
        let wanted: Vec<&Survey> = (survey.iter())
            .filter(|s| self.hierarchies.iter().any(|h| h.id == s.hierarchy.id))
            .collect();
        for s in &wanted {
            self.record_dying(s.hierarchy.id, s.hierarchy.dying);
        }
        let judged = self.hierarchies_section(&wanted, &c);
        let (empty, behind) = self.leftovers_section(&wanted);
        let dying = self.dying_section(&wanted, &paths, &c);
        let (moves, attach_held) = self.moves_section(&paths);
        let (autopsy, autopsy_missing) = self.autopsy_section(&survey, ctx.final_);
        let mounted: Vec<Hierarchy> = survey.into_iter().map(|s| s.hierarchy).collect();
        let (stat, stat_slow) = self.stat_section(&mounted);
        let rows = &judged.rows;
        let dying_at_start = rows.iter().filter_map(|h| h.dying_at_start).sum();
        let hints = hints::hints(&hints::Inputs {
            stat_slow: stat_slow.zip(stat.path.as_deref()),
            findings: &judged.findings,
            findings_in_memory: judged.in_memory,
            behind: &behind,
            empty: empty.len(),
            min_age_s: self.args.min_age.as_secs_f64(),
        });
        let (release_latency_us, release_log2) = self.release_latency();
        let t = &self.tracker;
        Ok(CgroupsReport {
            hierarchy_filter: self.args.hierarchy.clone(),
            created: rows.iter().map(|h| h.created).sum(),
            removed: rows.iter().map(|h| h.removed).sum(),
            released: rows.iter().map(|h| h.released).sum(),
            tasks_moved: rows.iter().map(|h| h.tasks_moved).sum(),
            released_unseen_rmdir: t.released_unseen.values().sum(),
            dying_tracked: dying.tracked,
            dying_total: (rows.iter().map(|h| h.dying.unwrap_or(h.dying_tracked))).sum(),
            dying_at_start,
            dying: dying.rows,
            dying_by_parent: dying.by_parent,
            dying_levels: dying.levels,
            release_latency_us,
            released_recent: self.released_rows(),
            churn: self.churn_section(&paths, &c),
            moves,
            state_evicted: Evicted {
                dying: t.dying_evicted,
                live: t.live_evicted,
                churn: t.churn_evicted,
            },
            empty_total: empty.len(),
            empty: empty.into_iter().take(JSON_ROWS).collect(),
            min_age_s: self.args.min_age.as_secs_f64(),
            dying_age_s: self.args.dying_age.as_secs_f64(),
            dying_min: self.args.dying_min,
            trend_span_s: self.trend_span_s(),
            findings: judged.findings,
            leaves_behind: behind,
            memory_stat_read_ms: stat,
            caveats: self.caveats_now(attach_held, dying_at_start),
            hints,
            autopsy,
            autopsy_missing,
            hierarchies: judged.rows,
            view: View {
                elapsed_s: c.elapsed_s,
                top: self.args.top,
                more_by_parent: dying.more_by_parent,
                more_levels: dying.more_levels,
                release_log2,
            },
        })
    }

    /// The span the dying counts' trend is judged over, seconds.
    fn trend_span_s(&self) -> f64 {
        self.args.trend_span.as_secs_f64().max(1.0)
    }

    /// A row per hierarchy traced, and the findings about their dying cgroups.
    fn hierarchies_section(&self, wanted: &[&Survey], c: &Clock) -> Judged {
        let all_dying = self.tracker.dying();
        let (rows, judged): (Vec<HierarchyRow>, Vec<HierarchyDying>) = (wanted.iter())
            .map(|s| self.hierarchy_row(&s.hierarchy, &all_dying, c))
            .unzip();
        let findings = judge::findings(
            &judged,
            self.args.dying_age.as_secs_f64(),
            self.args.dying_min,
            c.elapsed_s,
        );
        Judged {
            in_memory: judge::in_memory(&judged, &findings),
            rows,
            findings,
        }
    }

    /// One hierarchy: the kernel's counters, its dying cgroups counted and judged, and
    /// its release latency.
    fn hierarchy_row<'a>(
        &'a self,
        h: &'a Hierarchy,
        all_dying: &[&'a Dying],
        c: &Clock,
    ) -> (HierarchyRow, HierarchyDying<'a>) {
        let root = h.id as i32;
        let (mk, rm, rel, at) = (
            self.count(root, COUNT_MKDIR),
            self.count(root, COUNT_RMDIR),
            self.count(root, COUNT_RELEASE),
            self.count(root, COUNT_ATTACH),
        );
        let tracked = self.tracker.dying_in(root) as u64;
        // The walk counts every dying cgroup; tracking can only add ones the walk
        // missed (a race between the two), so the larger is the better count.
        let dying = h.dying.map(|d| d.max(tracked));
        let at_start = self.dying_at_start.get(&h.id).copied().flatten();
        let span = self.trend_span_s();
        let hd = HierarchyDying {
            name: &h.name,
            memory: h.has_memory(),
            tracked: (all_dying.iter())
                .filter(|d| d.root == root)
                .map(|d| (d.path.as_str(), age_of(c.now_ns, d.rmdir_ns)))
                .collect(),
            at_start,
            released_unseen: (self.tracker.released_unseen.get(&root).copied()).unwrap_or(0),
            trend: (self.dying_series.get(&h.id))
                .map(|s| trend::judge(s, span))
                .unwrap_or(trend::Trend::TooFewSamples {
                    samples: 0,
                    span_s: 0.0,
                }),
        };
        let dying_age_s = self.args.dying_age.as_secs_f64();
        let (stuck, in_flight, before) = judge::counts(&hd, dying_age_s, c.elapsed_s);
        let row = HierarchyRow {
            name: h.name.clone(),
            id: h.id,
            mount: h.mount.clone(),
            version: h.version,
            controllers: h.controllers.clone(),
            cgroups: h.cgroups,
            cgroups_how: format!("directories under {}", h.mount.display()),
            dying,
            dying_how: h.dying_source.clone(),
            dying_at_start: at_start,
            dying_tracked: tracked,
            created: mk,
            removed: rm,
            released: rel,
            tasks_moved: at,
            net_growth_per_min: (mk as f64 - rel as f64) / c.minutes,
            // Dying count now against the first look (a measurement; the judgement is
            // the sustained trend).
            dying_growth_per_min: match (dying, at_start) {
                (Some(now), Some(then)) => Some((now as f64 - then as f64) / c.minutes),
                _ => None,
            },
            dying_past_threshold: stuck,
            dying_in_flight: in_flight,
            dying_since_before_start_unreleased: before,
            dying_trend: hd.trend.report(span),
            release_latency_us: (self.tracker.hist(root).map(Summary::of))
                .unwrap_or_default()
                .with(&self.tracker.buckets(root)),
        };
        (row, hd)
    }

    /// Empty leftovers (systemd's slices excepted), oldest first, and who left them.
    fn leftovers_section(&self, wanted: &[&Survey]) -> (Vec<EmptyRow>, Vec<LeftBehind>) {
        let mut empty = Vec::new();
        let mut creators = Vec::new();
        for s in wanted {
            let h = &s.hierarchy;
            let leftovers = snap::empty(&s.dirs, self.args.min_age);
            for d in leftovers.filter(|d| !judge::managed_empty(&d.path)) {
                empty.push(EmptyRow {
                    container: container::of_cgroup(&d.path).map(Container::named),
                    path: d.path.clone(),
                    hierarchy: h.name.clone(),
                    id: d.id,
                    age_s: d.age.map(|a| a.as_secs_f64()).unwrap_or(0.0),
                });
                let creator = self.tracker.creator_of(h.id as i32, d.id);
                creators.push(creator.map(|a| (a.pid, a.comm().to_string())));
            }
        }
        empty.sort_by(|a, b| b.age_s.total_cmp(&a.age_s).then(a.path.cmp(&b.path)));
        (empty, judge::leaves_behind(&creators))
    }

    /// The cgroups removed while tracing and still dying, their parents, and the
    /// cgroup2 levels whose cgroup.stat counts dying descendants.
    fn dying_section(&self, wanted: &[&Survey], paths: &Paths, c: &Clock) -> DyingLists {
        let top = self.args.top;
        let dying = self.tracker.dying();
        // --top is at most JSON_ROWS: the JSON's rows hold the text's.
        let rows = (dying.iter().take(JSON_ROWS))
            .map(|d| DyingRow {
                id: d.id,
                container: container::of_cgroup(&d.path).map(Container::named),
                path: d.path.clone(),
                hierarchy: self.name(d.root),
                age_s: age_of(c.now_ns, d.rmdir_ns),
                creator_pid: d.creator.as_ref().map(|a| a.pid),
                creator_comm: d.creator.as_ref().map(|a| a.comm().to_string()),
                creator_cgroup: (d.creator.as_ref()).map(|a| self.actor_cgroup(a.pid, paths)),
                remover_pid: d.remover.pid,
                remover_comm: d.remover.comm().to_string(),
                remover_cgroup: self.actor_cgroup(d.remover.pid, paths),
            })
            .collect();
        let by_parent = (self.tracker.dying_by_parent().into_iter())
            .map(|((root, parent), dying, t)| DyingParentRow {
                hierarchy: self.name(root),
                parent,
                dying,
                oldest_age_s: age_of(c.now_ns, t),
            })
            .collect();
        let levels = (wanted.iter())
            .flat_map(|s| {
                (snap::dying_levels(&s.dirs).into_iter()).map(|(path, dying)| DyingLevel {
                    hierarchy: s.hierarchy.name.clone(),
                    path,
                    dying,
                })
            })
            .collect();
        let (by_parent, more_by_parent) = split(by_parent, JSON_SHORT, top);
        let (levels, more_levels) = split(levels, JSON_SHORT, top);
        DyingLists {
            tracked: dying.len(),
            rows,
            by_parent,
            more_by_parent,
            levels,
            more_levels,
        }
    }

    /// The latest releases, oldest first.
    fn released_rows(&self) -> Vec<ReleasedRow> {
        (self.tracker.recent())
            .map(|r| ReleasedRow {
                id: r.id,
                path: r.path.clone(),
                hierarchy: self.name(r.root),
                latency_us: r.latency_us,
                creator_pid: r.creator.as_ref().map(|a| a.pid),
                remover_pid: r.remover.as_ref().map(|a| a.pid),
            })
            .collect()
    }

    /// rmdir to release over every hierarchy, and per hierarchy with releases as log2
    /// histograms for the text.
    fn release_latency(&self) -> (Summary, Vec<(String, Log2)>) {
        let all = Summary::of(&self.tracker.hist_all()).with(&self.tracker.buckets_all());
        let per = (self.tracker.roots_with_releases())
            .filter_map(|root| Some((self.name(root), Log2::of(self.tracker.hist(root)?))))
            .collect();
        (all, per)
    }

    /// The processes that create and remove the most cgroups, and the parents they
    /// create them under.
    fn churn_section(&self, paths: &Paths, c: &Clock) -> Churn {
        let processes = (self.tracker.top_processes(JSON_SHORT).into_iter())
            .map(|(pid, ch)| ChurnProcessRow {
                pid,
                comm: ch.comm().to_string(),
                cgroup: self.actor_cgroup(pid, paths).into(),
                mkdirs: ch.mkdirs,
                rmdirs: ch.rmdirs,
                mkdirs_per_min: ch.mkdirs as f64 / c.minutes,
            })
            .collect();
        let parents = (self.tracker.top_parents(JSON_SHORT).into_iter())
            .map(|((root, path), mkdirs)| ChurnParentRow {
                hierarchy: self.name(root),
                path,
                mkdirs,
                mkdirs_per_min: mkdirs as f64 / c.minutes,
            })
            .collect();
        Churn { processes, parents }
    }

    /// Who moved the most tasks into which cgroup (the kernel's counts), and how many
    /// entries the kernel's map holds.
    fn moves_section(&self, paths: &Paths) -> (Vec<MoveRow>, usize) {
        let mut moves: Vec<(AttachKey, AttachCount)> =
            self.attach.iter().filter_map(|r| r.ok()).collect();
        // An LRU map evicts silently once full (a little before, per-CPU free lists).
        let held = moves.len();
        moves.sort_by(|a, b| b.1.tasks.cmp(&a.1.tasks).then(a.0.id.cmp(&b.0.id)));
        moves.truncate(JSON_SHORT);
        let path_of = |root: i32, id: u64| {
            (paths.get(&(root, id)).cloned())
                .or_else(|| (self.tracker.path_of(root, id)).map(|p| format!("{p} (removed)")))
                .unwrap_or_else(|| format!("(id {id}, removed)"))
        };
        let rows = (moves.iter())
            .map(|(k, n)| {
                let path = path_of(k.root, k.id);
                MoveRow {
                    hierarchy: self.name(k.root),
                    id: k.id,
                    container: container::of_cgroup(&path).map(Container::named),
                    path,
                    pid: k.tgid,
                    comm: comm_str(&n.comm).to_string(),
                    tasks: n.tasks,
                }
            })
            .collect();
        (rows, held)
    }

    /// Times memory.stat now, against the read at the start; with the fastest read
    /// when every one was slow.
    fn stat_section(&self, mounted: &[Hierarchy]) -> (StatReads, Option<f64>) {
        // Several reads: one slow read is a hiccup, all slow is the kernel's walk.
        let reads: Vec<StatRead> = (0..STAT_READS)
            .filter_map(|_| snap::time_memory_stat(mounted))
            .collect();
        let ms = |r: &StatRead| r.took.as_secs_f64() * 1e3;
        let reads_now: Vec<f64> = reads.iter().map(ms).collect();
        let slow = judge::stat_slow(&reads_now, SLOW_STAT.as_secs_f64() * 1e3);
        let now = reads.into_iter().min_by_key(|r| r.took);
        let stat = StatReads {
            path: (now.as_ref().or(self.stat_start.as_ref())).map(|r| r.path.clone()),
            start: self.stat_start.as_ref().map(ms),
            now: now.as_ref().map(ms),
            reads_now,
            slow: slow.is_some(),
        };
        (stat, slow)
    }

    /// The attach-time caveats and what this report could not see.
    fn caveats_now(&self, attach_held: usize, dying_at_start: u64) -> Vec<String> {
        let t = &self.tracker;
        let mut caveats = self.caveats.clone();
        if t.dying_evicted > 0 {
            caveats.push(format!(
                "{} dying cgroups were dropped from tracking (more than {} at once); they are still in the counts",
                t.dying_evicted,
                state::DYING_CAPACITY
            ));
        }
        if t.live_evicted > 0 {
            caveats.push(format!(
                "{} live cgroups' creators were forgotten (more than {} created and not removed): those show no creator",
                t.live_evicted,
                state::LIVE_CAPACITY
            ));
        }
        if t.churn_evicted > 0 {
            caveats.push(format!(
                "{} processes and parent paths with the least churn were dropped from the churn lists (over {} each); the created and removed totals count them",
                t.churn_evicted,
                state::CHURN_CAPACITY
            ));
        }
        if attach_held as u64 * 10 >= u64::from(ATTACH_CAPACITY) * 9 {
            caveats.push(format!(
                "the task-move map holds {attach_held} of its {ATTACH_CAPACITY} entries: LRU eviction may have dropped the least recently active, whose moves are then missing here"
            ));
        }
        if dying_at_start > 0 {
            caveats.push(format!(
                "{dying_at_start} cgroups were already dying at the start: they are in the DYING counts, but their \
                 age, creator and remover are unknown"
            ));
        }
        caveats
    }
}
