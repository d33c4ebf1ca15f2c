//! The cgroups report: per hierarchy counts and dying cgroups, churn by process and
//! parent, releases and their latency, empty leftovers, findings and hints, in text
//! and JSON.
use super::{
    rows::{
        ChurnParentRow, ChurnProcessRow, DyingLevel, DyingParentRow, DyingRow, EmptyRow,
        HierarchyRow, MoveRow,
    },
    *,
};

impl Cgroups {
    /// The report [`Detector::report`] hands out.
    pub(super) fn build_report(&mut self, ctx: &ReportCtx) -> Result<Report> {
        let now = procinfo::monotonic_ns();
        let minutes = ctx.elapsed.as_secs_f64().max(1e-3) / 60.0;
        let top = self.args.top;

        // Per hierarchy: a walk for counts, empty leftovers and id -> path.
        let mut hierarchies: Vec<HierarchyRow> = Vec::new();
        let mut empty: Vec<EmptyRow> = Vec::new();
        let mut paths: HashMap<(i32, u64), String> = HashMap::new();
        let mut levels: Vec<DyingLevel> = Vec::new();
        let (mut created, mut removed, mut released, mut moved) = (0, 0, 0, 0);
        let mut dying_total = 0u64;
        let mut dying_before = 0u64;
        let dying_age = self.args.dying_age.as_secs_f64();
        let span = self.args.trend_span.as_secs_f64().max(1.0);
        let elapsed = ctx.elapsed.as_secs_f64();
        let mut judged: Vec<HierarchyDying> = Vec::new();
        let mut leftover_creators: Vec<Option<(u32, String)>> = Vec::new();
        let wanted: Vec<u32> = self.hierarchies.iter().map(|h| h.id).collect();
        let survey = snap::survey()?;
        // id -> path in every hierarchy: cgroup2 names the cgroup of callers that are
        // gone even when --hierarchy picks another one.
        for s in &survey {
            for d in &s.dirs {
                paths.insert((s.hierarchy.id as i32, d.id), d.path.clone());
            }
        }
        for s in survey.iter().filter(|s| wanted.contains(&s.hierarchy.id)) {
            self.record_dying(s.hierarchy.id, s.hierarchy.dying);
        }
        let all_dying = self.tracker.dying();
        for s in survey.iter().filter(|s| wanted.contains(&s.hierarchy.id)) {
            let h = &s.hierarchy;
            let root = h.id as i32;
            let (mk, rm, rel, at) = (
                self.count(root, COUNT_MKDIR),
                self.count(root, COUNT_RMDIR),
                self.count(root, COUNT_RELEASE),
                self.count(root, COUNT_ATTACH),
            );
            created += mk;
            removed += rm;
            released += rel;
            moved += at;
            let tracked = self.tracker.dying_in(root) as u64;
            // The walk counts every dying cgroup; tracking can only add ones the walk
            // missed (a race between the two), so the larger is the better count.
            let dying = h.dying.map(|d| d.max(tracked));
            dying_total += dying.unwrap_or(tracked);
            let at_start = self.dying_at_start.get(&h.id).copied().flatten();
            dying_before += at_start.unwrap_or(0);
            let hd = HierarchyDying {
                name: &h.name,
                memory: h.has_memory(),
                tracked: all_dying
                    .iter()
                    .filter(|d| d.root == root)
                    .map(|d| (d.path.as_str(), age_of(now, d.rmdir_ns)))
                    .collect(),
                at_start,
                released_unseen: self
                    .tracker
                    .released_unseen
                    .get(&root)
                    .copied()
                    .unwrap_or(0),
                trend: self
                    .dying_series
                    .get(&h.id)
                    .map(|s| trend::judge(s, span))
                    .unwrap_or(trend::Trend::TooFewSamples {
                        samples: 0,
                        span_s: 0.0,
                    }),
            };
            let (stuck, in_flight, before) = judge::counts(&hd, dying_age, elapsed);
            let net = (mk as f64 - rel as f64) / minutes;
            // Dying count now against the first look (a measurement; the judgement is
            // the sustained trend below).
            let dying_growth = match (dying, at_start) {
                (Some(now), Some(then)) => Some((now as f64 - then as f64) / minutes),
                _ => None,
            };
            let lat = self
                .tracker
                .hist(root)
                .map(output::Summary::of)
                .unwrap_or_default()
                .with(&self.tracker.buckets(root));
            hierarchies.push(HierarchyRow {
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
                net_growth_per_min: net,
                dying_growth_per_min: dying_growth,
                dying_past_threshold: stuck,
                dying_in_flight: in_flight,
                dying_since_before_start_unreleased: before,
                dying_trend: hd.trend.report(span),
                release_latency_us: lat,
            });
            judged.push(hd);
            for d in
                snap::empty(&s.dirs, self.args.min_age).filter(|d| !judge::managed_empty(&d.path))
            {
                let age = d.age.map(|a| a.as_secs_f64()).unwrap_or(0.0);
                empty.push(EmptyRow {
                    container: crate::container::of_cgroup(&d.path)
                        .map(crate::container::Container::named),
                    path: d.path.clone(),
                    hierarchy: h.name.clone(),
                    id: d.id,
                    age_s: age,
                });
                leftover_creators.push(
                    self.tracker
                        .creator_of(root, d.id)
                        .map(|a| (a.pid, a.comm().to_string())),
                );
            }
            for (path, dying) in snap::dying_levels(&s.dirs) {
                levels.push(DyingLevel {
                    hierarchy: h.name.clone(),
                    path,
                    dying,
                });
            }
        }
        empty.sort_by(|a, b| b.age_s.total_cmp(&a.age_s).then(a.path.cmp(&b.path)));
        let findings = judge::findings(&judged, dying_age, elapsed);
        drop(judged);
        let behind = judge::leaves_behind(&leftover_creators);

        let dying = self.tracker.dying();
        // JSON lists JSON_ROWS, the text `top`.
        let dying_rows: Vec<DyingRow> = (dying.iter().take(JSON_ROWS.max(top)))
            .map(|d| DyingRow {
                id: d.id,
                container: crate::container::of_cgroup(&d.path)
                    .map(crate::container::Container::named),
                path: d.path.clone(),
                hierarchy: self.name(d.root),
                age_s: age_of(now, d.rmdir_ns),
                creator_pid: d.creator.as_ref().map(|a| a.pid),
                creator_comm: d.creator.as_ref().map(|a| a.comm().to_string()),
                creator_cgroup: (d.creator.as_ref()).map(|a| self.actor_cgroup(a.pid, &paths)),
                remover_pid: d.remover.pid,
                remover_comm: d.remover.comm().to_string(),
                remover_cgroup: self.actor_cgroup(d.remover.pid, &paths),
            })
            .collect();
        let by_parent: Vec<DyingParentRow> = (self.tracker.dying_by_parent().into_iter())
            .map(|((root, parent), dying, t)| DyingParentRow {
                hierarchy: self.name(root),
                parent,
                dying,
                oldest_age_s: age_of(now, t),
            })
            .collect();
        let released_json: Vec<Value> = self
            .tracker
            .recent()
            .map(|r| {
                json!({
                    "id": r.id, "path": r.path, "hierarchy": self.name(r.root),
                    "latency_us": r.latency_us,
                    "creator_pid": r.creator.as_ref().map(|a| a.pid),
                    "remover_pid": r.remover.as_ref().map(|a| a.pid),
                })
            })
            .collect();
        let procs: Vec<ChurnProcessRow> = (self.tracker.top_processes(JSON_ROWS.min(100)))
            .into_iter()
            .map(|(pid, c)| ChurnProcessRow {
                pid,
                comm: c.comm().to_string(),
                cgroup: self.actor_cgroup(pid, &paths).into(),
                mkdirs: c.mkdirs,
                rmdirs: c.rmdirs,
                mkdirs_per_min: c.mkdirs as f64 / minutes,
            })
            .collect();
        let parents: Vec<ChurnParentRow> = (self.tracker.top_parents(JSON_ROWS.min(100)))
            .into_iter()
            .map(|((root, path), mkdirs)| ChurnParentRow {
                hierarchy: self.name(root),
                path,
                mkdirs,
                mkdirs_per_min: mkdirs as f64 / minutes,
            })
            .collect();
        let mut moves: Vec<(AttachKey, AttachCount)> =
            self.attach.iter().filter_map(|r| r.ok()).collect();
        // An LRU map evicts silently once full (a little before, per-CPU free lists).
        let attach_held = moves.len();
        moves.sort_by(|a, b| b.1.tasks.cmp(&a.1.tasks).then(a.0.id.cmp(&b.0.id)));
        moves.truncate(100);
        let path_of = |root: i32, id: u64| {
            paths
                .get(&(root, id))
                .cloned()
                .or_else(|| {
                    self.tracker
                        .path_of(root, id)
                        .map(|p| format!("{p} (removed)"))
                })
                .unwrap_or_else(|| format!("(id {id}, removed)"))
        };
        let moves: Vec<MoveRow> = (moves.iter())
            .map(|(k, n)| {
                let path = path_of(k.root, k.id);
                MoveRow {
                    hierarchy: self.name(k.root),
                    id: k.id,
                    container: crate::container::of_cgroup(&path)
                        .map(crate::container::Container::named),
                    path,
                    pid: k.tgid,
                    comm: comm_str(&n.comm).to_string(),
                    tasks: n.tasks,
                }
            })
            .collect();
        let all = self.tracker.hist_all();
        let mounted: Vec<Hierarchy> = survey.into_iter().map(|s| s.hierarchy).collect();
        // Several reads: one slow read is a hiccup, all slow is the kernel's walk.
        let stat_reads: Vec<StatRead> = (0..STAT_READS)
            .filter_map(|_| snap::time_memory_stat(&mounted))
            .collect();
        let stat_ms: Vec<f64> = stat_reads
            .iter()
            .map(|r| r.took.as_secs_f64() * 1e3)
            .collect();
        let stat_now = stat_reads.into_iter().min_by_key(|r| r.took);
        let stat_slow = judge::stat_slow(&stat_ms, SLOW_STAT.as_secs_f64() * 1e3);
        let ms = |p: &Option<StatRead>| p.as_ref().map(|p| round3(p.took.as_secs_f64() * 1e3));
        let mut caveats = self.caveats.clone();
        if self.tracker.dying_evicted > 0 {
            caveats.push(format!(
                "{} dying cgroups were dropped from tracking (more than {} at once); they are still in the counts",
                self.tracker.dying_evicted,
                state::DYING_CAPACITY
            ));
        }
        let (live_evicted, churn_evicted) = (self.tracker.live_evicted, self.tracker.churn_evicted);
        if live_evicted > 0 {
            caveats.push(format!(
                "{live_evicted} live cgroups' creators were forgotten (more than {} created and not removed): those show no creator",
                state::LIVE_CAPACITY
            ));
        }
        if churn_evicted > 0 {
            caveats.push(format!(
                "{churn_evicted} processes and parent paths with the least churn were dropped from the churn lists (over {} each); the created and removed totals count them",
                state::CHURN_CAPACITY
            ));
        }
        if attach_held as u64 * 10 >= u64::from(ATTACH_CAPACITY) * 9 {
            caveats.push(format!(
                "the task-move map holds {attach_held} of its {ATTACH_CAPACITY} entries: LRU eviction may have dropped the least recently active, whose moves are then missing here"
            ));
        }
        if dying_before > 0 {
            caveats.push(format!(
                "{dying_before} cgroups were already dying at the start: they are in the DYING counts, but their \
                 age, creator and remover are unknown"
            ));
        }

        let mut json = json!({
            "hierarchy_filter": self.args.hierarchy,
            "hierarchies": hierarchies,
            "created": created, "removed": removed, "released": released, "tasks_moved": moved,
            "released_unseen_rmdir": self.tracker.released_unseen.values().sum::<u64>(),
            "dying": &dying_rows[..dying_rows.len().min(JSON_ROWS)],
            "dying_tracked": dying.len(),
            "dying_total": dying_total,
            "dying_at_start": dying_before,
            "dying_by_parent": &by_parent[..by_parent.len().min(100)],
            "dying_levels": &levels[..levels.len().min(100)],
            "release_latency_us": output::Summary::of(&all).with(&self.tracker.buckets_all()),
            "released_recent": released_json,
            "churn": {
                "processes": procs,
                "parents": parents,
            },
            "moves": moves,
            "state_evicted": {
                "dying": self.tracker.dying_evicted, "live": live_evicted, "churn": churn_evicted,
            },
            "empty": &empty[..empty.len().min(JSON_ROWS)],
            "empty_total": empty.len(),
            "min_age_s": self.args.min_age.as_secs_f64(),
            "dying_age_s": dying_age,
            "trend_span_s": span,
            "findings": findings.iter().map(Finding::json).collect::<Vec<_>>(),
            "leaves_behind": behind.iter().map(|(pid, comm, n)| json!({
                "pid": pid, "comm": comm, "empty_leftovers": n,
            })).collect::<Vec<_>>(),
            "memory_stat_read_ms": {
                "path": stat_now.as_ref().or(self.stat_start.as_ref()).map(|p| p.path.clone()),
                "start": ms(&self.stat_start), "now": ms(&stat_now),
                "reads_now": stat_ms.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
                "slow": stat_slow.is_some(),
            },
            "caveats": caveats,
        });

        // Text for people.
        let mut text = String::new();
        text += &format!(
            "cgroups: created {created}, removed {removed}, released {released} in {}; dying now {dying_total} \
             ({} removed while tracing, {dying_before} already dying at the start)\n",
            human_duration(ctx.elapsed.as_secs_f64()),
            dying.len()
        );
        match (&self.stat_start, &stat_now) {
            (Some(a), Some(b)) => {
                text += &format!(
                    "memory.stat read ({}): {:.2}ms at start, {:.2}ms now\n",
                    b.path.display(),
                    a.took.as_secs_f64() * 1e3,
                    b.took.as_secs_f64() * 1e3
                )
            }
            _ => text += "memory.stat read: no memory controller mounted\n",
        }
        for c in &caveats {
            text += &format!("note: {c}\n");
        }
        text += &format!(
            "\nFINDINGS (a removed cgroup still dying after {}, cgroups dying since before the start \
             not released within it, or a dying count growing: {})\n",
            human_duration(dying_age),
            trend::rule(span)
        );
        if findings.is_empty() {
            text += &format!(
                "  none: no cgroup stayed dying past {}, no sustained growth of the dying count\n",
                human_duration(dying_age)
            );
        }
        for f in &findings {
            text += &format!("  {}\n", f.text(dying_age));
        }
        text += "\nHIERARCHIES\n";
        text += &Table::of(&hierarchies).render();

        text += "\nDYING CGROUPS (rmdir seen, not released yet; oldest first)\n";
        if dying.is_empty() {
            text += "  none removed while tracing is still dying\n";
        } else {
            let t = Table::of(&dying_rows[..dying_rows.len().min(top)]);
            text += &t.render();
            if dying.len() > top {
                text += &format!("  ... and {} more (--json lists them)\n", dying.len() - top);
            }
            text += "  by parent:\n";
            let t = Table::of(&by_parent[..by_parent.len().min(top)]);
            text += &t.render();
        }
        if !levels.is_empty() {
            text += "  cgroup2 levels holding dying cgroups (cgroup.stat, includes ones from before the start):\n";
            for l in levels.iter().take(top) {
                text += &l.line();
            }
        }

        text += "\nCHURN (who creates cgroups, where)\n";
        if procs.is_empty() {
            text += "  no cgroup was created or removed\n";
        } else {
            text += &Table::of(&procs[..procs.len().min(top)]).render();
            text += &Table::of(&parents[..parents.len().min(top)]).render();
        }
        if !moves.is_empty() {
            text += "\nTASK MOVES (cgroup_attach_task: who moves tasks where)\n";
            text += &Table::of(&moves[..moves.len().min(top)]).render();
        }

        text += "\nRMDIR -> RELEASE LATENCY\n";
        let roots: Vec<i32> = self.tracker.roots_with_releases().collect();
        if roots.is_empty() {
            text += "     (no cgroup removed while tracing was released yet)\n";
        }
        for root in roots {
            if let Some(h) = self.tracker.hist(root) {
                text += &format!("  {}:\n", self.name(root));
                text += &output::log2_histogram(h, "usecs");
            }
        }

        text += &format!(
            "\nEMPTY LEFTOVERS (no tasks, no children, older than {})\n",
            human_duration(self.args.min_age.as_secs_f64())
        );
        if empty.is_empty() {
            text += "  none\n";
        } else {
            text += &Table::of(&empty[..empty.len().min(top)]).render();
            if empty.len() > top {
                text += &format!("  ... and {} more (--json lists them)\n", empty.len() - top);
            }
        }

        let hints = hints::hints(&hints::Inputs {
            stat_slow: stat_slow.zip(stat_now.as_ref().map(|r| r.path.as_path())),
            findings: &findings,
            behind: &behind,
            empty: empty.len(),
            min_age_s: self.args.min_age.as_secs_f64(),
        });
        if !hints.is_empty() {
            text += "\n";
            for h in &hints {
                text += &format!("hint: {h}\n");
            }
        }
        json["hints"] = json!(hints);
        Ok(Report { json, text })
    }
}
