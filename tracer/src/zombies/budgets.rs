//! PID budgets (issue 22): every pids cgroup (container, pod, systemd service) with its
//! pids.current, pids.max, the forks its pids.events `max` counter refused, what holds
//! its pids (processes with their threads and zombie children) and its growth.
//!
//! A cgroup at 80 % of its pids.max (95 %: crit), or one that refused a fork since the
//! start, is a finding at once, whatever its zombies' age: the stuck rule's 5 s does not
//! apply, as a container whose pids run out cannot fork at all.
//!
//! The pids hierarchy is found from /proc/self/mountinfo: the cgroup v1 mount whose
//! super options include `pids` (hybrid and v1-only hosts), else the cgroup2 mount
//! whose root offers the pids controller.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use serde::{Deserialize, Serialize};

use crate::{
    container::{self, InCgroup},
    output::{self, Row, Table, serialize_round3_opt},
    procinfo::ProcStat,
    snapshot::{Level, cgroups::child_dirs},
};

/// Used share of pids.max that is a warning / critical finding, in percent.
pub const WARN_PCT: f64 = 80.0;
pub const CRIT_PCT: f64 = 95.0;
/// Rows in the report: the fullest cgroups first, findings always among them.
pub const ROWS: usize = 20;
/// Processes named per row as what holds its pids.
pub const HOLDERS: usize = 5;
/// Cgroup directories read per scan at most (a host has far fewer).
pub const SCAN_CAPACITY: usize = 20_000;
/// Processes of one row's subtree looked at for holders at most.
const PROCS_CAPACITY: usize = 4_096;
/// Cgroups whose first sighting (for growth and refusals since the start) is kept.
const BASELINE_CAPACITY: usize = 8_192;

/// Where the pids controller is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidsHierarchy {
    pub mount: PathBuf,
    /// cgroup2 (pids enabled through cgroup.subtree_control) rather than a v1 hierarchy.
    pub v2: bool,
}

impl PidsHierarchy {
    /// The hierarchy with the pids controller on this host, or why there is none.
    pub fn find() -> Result<PidsHierarchy, String> {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        Self::from_mountinfo(&info, |m| {
            fs::read_to_string(m.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
        })
    }

    /// From mountinfo's text; `offers_pids` tells whether a cgroup2 mount's root offers
    /// the controller (a v1 pids mount takes precedence: then cgroup2 cannot have it).
    pub fn from_mountinfo(
        info: &str,
        offers_pids: impl Fn(&Path) -> bool,
    ) -> Result<PidsHierarchy, String> {
        let mut v2 = Vec::new();
        for line in info.lines() {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split(' ').nth(4) else {
                continue;
            };
            let point = PathBuf::from(point.replace("\\040", " "));
            let mut r = right.split(' ');
            match (r.next(), r.nth(1)) {
                (Some("cgroup"), Some(opts)) if opts.split(',').any(|o| o == "pids") => {
                    return Ok(PidsHierarchy {
                        mount: point,
                        v2: false,
                    });
                }
                (Some("cgroup2"), _) => v2.push(point),
                _ => {}
            }
        }
        (v2.into_iter().find(|m| offers_pids(m)))
            .map(|mount| PidsHierarchy { mount, v2: true })
            .ok_or_else(|| {
                "no pids controller: no cgroup v1 hierarchy has it and no cgroup2 mount offers it \
                 (/proc/self/mountinfo)"
                    .into()
            })
    }

    pub fn describe(&self) -> String {
        let kind = if self.v2 {
            "cgroup2"
        } else {
            "cgroup v1 pids hierarchy"
        };
        format!("{kind} at {}", self.mount.display())
    }

    /// The directory of the cgroup at `rel` (as /proc/PID/cgroup names it).
    pub fn dir(&self, rel: &str) -> PathBuf {
        self.mount.join(rel.trim_start_matches('/'))
    }

    /// `pid`'s cgroup in this hierarchy, relative to its root, from /proc/PID/cgroup.
    pub fn cgroup_of(&self, pid: u32) -> Option<String> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        cgroup_in(&text, self.v2)
    }
}

/// The path of the pids hierarchy's line in a /proc/PID/cgroup text.
pub fn cgroup_in(text: &str, v2: bool) -> Option<String> {
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let ours = if v2 {
            id == "0" && ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == "pids")
        };
        ours.then(|| path.to_string())
    })
}

/// One pids cgroup as read now.
#[derive(Clone, Debug, PartialEq)]
pub struct Counters {
    pub current: u64,
    /// None: "max" (no limit of its own).
    pub max: Option<u64>,
    /// pids.events `max`: forks refused because this cgroup was at its pids.max (None:
    /// this kernel has no pids.events).
    pub events_max: Option<u64>,
}

impl Counters {
    pub fn read(dir: &Path) -> Option<Counters> {
        let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
        let current = read("pids.current")?.trim().parse().ok()?;
        let max = read("pids.max")?.trim().parse().ok();
        let events_max = read("pids.events").and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("max ").and_then(|v| v.trim().parse().ok()))
        });
        Some(Counters {
            current,
            max,
            events_max,
        })
    }

    pub fn used_pct(&self) -> Option<f64> {
        self.max
            .map(|m| 100.0 * self.current as f64 / (m.max(1)) as f64)
    }
}

/// What holds a cgroup's pids: one process of its subtree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PidHolder {
    pub pid: u32,
    pub comm: String,
    /// Its threads: each takes a pid.
    pub threads: u64,
    /// Its unreaped children: each still holds a pid (and its pids charge).
    pub zombie_children: u64,
}

/// One pids cgroup: an element of `pid_budgets` and a row of the PID BUDGETS table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PidBudgetRow {
    /// Path in the pids hierarchy, and its container or pod.
    #[serde(flatten)]
    pub cgroup: InCgroup,
    pub pids_current: u64,
    /// None: "max" (no limit of its own; a parent's may apply).
    pub pids_max: Option<u64>,
    #[serde(serialize_with = "serialize_round3_opt")]
    pub used_pct: Option<f64>,
    /// ok, warn (>= 80 % of pids.max, or a fork refused since the start), crit (>= 95 %).
    pub level: Level,
    /// pids.current's change per second since the tracer first saw the cgroup (None
    /// before 1 s).
    #[serde(serialize_with = "serialize_round3_opt")]
    pub growth_per_s: Option<f64>,
    /// Forks the kernel refused at this cgroup's pids.max since the tracer first saw it
    /// (pids.events `max`; None where the kernel has no pids.events).
    pub refused_events_max: Option<u64>,
    /// The same counter since the cgroup was made.
    pub refused_events_max_total: Option<u64>,
    /// Forks refused with EAGAIN to processes of this cgroup's subtree, seen by the
    /// refusal hook (None when the hook is not attached).
    pub refused_hook: Option<u64>,
    /// Threads of the processes of its subtree.
    pub threads: u64,
    /// Zombie children of those processes.
    pub zombies: u64,
    /// The processes holding the most pids, the most first.
    pub holders: Vec<PidHolder>,
}

impl Row for PidBudgetRow {
    const HEADER: &'static [&'static str] = &[
        "LEVEL", "PIDS", "MAX", "USED", "GROWTH", "REFUSED", "THREADS", "ZOMBIES", "CGROUP",
    ];

    fn cells(&self) -> Vec<String> {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
        vec![
            format!("{:?}", self.level).to_lowercase(),
            self.pids_current.to_string(),
            self.pids_max
                .map_or_else(|| "max".into(), |m| m.to_string()),
            self.used_pct
                .map_or_else(|| "-".into(), |p| format!("{p:.0}%")),
            self.growth_per_s
                .map_or_else(|| "-".into(), |g| format!("{g:+.1}/s")),
            format!(
                "{} (hook {})",
                opt(self.refused_events_max),
                opt(self.refused_hook)
            ),
            self.threads.to_string(),
            self.zombies.to_string(),
            self.cgroup.text(),
        ]
    }
}

impl PidBudgetRow {
    /// The finding in one line, for the text (None at level ok).
    pub fn finding(&self) -> Option<String> {
        if self.level == Level::Ok {
            return None;
        }
        let mut t = format!(
            "{}: pids cgroup {} at {}/{} pids",
            format!("{:?}", self.level).to_lowercase(),
            self.cgroup.text(),
            self.pids_current,
            self.pids_max
                .map_or_else(|| "max".into(), |m| m.to_string()),
        );
        if let Some(p) = self.used_pct {
            t += &format!(" ({p:.0}% of pids.max)");
        }
        let refused = self
            .refused_events_max
            .unwrap_or(0)
            .max(self.refused_hook.unwrap_or(0));
        if refused > 0 {
            t += &format!(", {refused} fork(s) refused since the start");
        }
        let held: Vec<String> = (self.holders.iter())
            .map(|h| {
                format!(
                    "pid {} ({}) {} thread(s), {} zombie child(ren)",
                    h.pid, h.comm, h.threads, h.zombie_children
                )
            })
            .collect();
        if !held.is_empty() {
            t += &format!("; held by {}", held.join("; "));
        }
        Some(t)
    }
}

/// The scan's outcome beside the rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PidBudgetScan {
    /// Where the pids controller is (None: no pids controller; `note` says why).
    pub hierarchy: Option<String>,
    /// Pids cgroups read.
    pub cgroups: usize,
    /// Of those, with a pids.max of their own.
    pub limited: usize,
    /// The scan stopped at SCAN_CAPACITY directories.
    pub truncated: bool,
    pub note: Option<String>,
}

/// First sighting of a cgroup.
#[derive(Clone, Copy, Debug)]
struct Baseline {
    at: Instant,
    current: u64,
    events_max: u64,
}

/// Reads the pids hierarchy at each report, remembering when it first saw each cgroup.
pub struct Budgets {
    pub hierarchy: Result<PidsHierarchy, String>,
    seen: HashMap<String, Baseline>,
    /// Cgroups present at the start: a cgroup made later counts its refusals from 0.
    started: bool,
}

impl Budgets {
    /// Finds the hierarchy and takes the baselines (call once the hooks are attached).
    pub fn start() -> Budgets {
        let mut b = Budgets {
            hierarchy: PidsHierarchy::find(),
            seen: HashMap::new(),
            started: false,
        };
        b.walk();
        b.started = true;
        b
    }

    /// Every pids cgroup now, with the baselines filled in for new ones.
    fn walk(&mut self) -> (Vec<(String, Counters, Baseline)>, bool) {
        let Ok(h) = &self.hierarchy else {
            return (Vec::new(), false);
        };
        let (found, truncated) = walk(&h.mount);
        let now = Instant::now();
        let mut out = Vec::with_capacity(found.len());
        for (rel, c) in found {
            let base = match self.seen.get(&rel) {
                Some(b) => *b,
                None => {
                    let b = Baseline {
                        at: now,
                        current: c.current,
                        // Made after the start: every refusal it counted is ours to show.
                        events_max: if self.started {
                            0
                        } else {
                            c.events_max.unwrap_or(0)
                        },
                    };
                    if self.seen.len() < BASELINE_CAPACITY {
                        self.seen.insert(rel.clone(), b);
                    }
                    b
                }
            };
            out.push((rel, c, base));
        }
        (out, truncated)
    }

    /// The rows (fullest first, findings first) and the scan's summary.
    /// `refused_hook(path)` counts the hook's refusals in the subtree at `path` (None:
    /// no hook); `stats` is /proc now.
    pub fn report(
        &mut self,
        stats: &[ProcStat],
        refused_hook: impl Fn(&str) -> Option<u64>,
    ) -> (Vec<PidBudgetRow>, PidBudgetScan) {
        let (all, truncated) = self.walk();
        let mut scan = PidBudgetScan {
            hierarchy: self.hierarchy.as_ref().ok().map(PidsHierarchy::describe),
            cgroups: all.len(),
            limited: all.iter().filter(|(_, c, _)| c.max.is_some()).count(),
            truncated,
            note: self.hierarchy.as_ref().err().cloned(),
        };
        if truncated {
            scan.note = Some(format!(
                "the scan stopped after {SCAN_CAPACITY} cgroups; the others are not shown"
            ));
        }
        let Ok(h) = self.hierarchy.clone() else {
            return (Vec::new(), scan);
        };
        let mut rows: Vec<(PidBudgetRow, PathBuf)> = (all.into_iter())
            .filter_map(|(rel, c, base)| {
                let hook = refused_hook(&rel);
                let since = c.events_max.map(|e| e.saturating_sub(base.events_max));
                let interesting =
                    c.max.is_some() || since.unwrap_or(0) > 0 || hook.unwrap_or(0) > 0;
                interesting.then(|| (row(&rel, &c, &base, since, hook), h.dir(&rel)))
            })
            .collect();
        rows.sort_by(|(a, _), (b, _)| {
            (b.level.cmp(&a.level)).then(
                b.used_pct
                    .unwrap_or(0.0)
                    .total_cmp(&a.used_pct.unwrap_or(0.0)),
            )
        });
        rows.truncate(ROWS);
        let by_ppid = zombie_children(stats);
        let rows = (rows.into_iter())
            .map(|(mut r, dir)| {
                holders(&mut r, &dir, &by_ppid);
                r
            })
            .collect();
        (rows, scan)
    }
}

/// A row without its holders.
fn row(
    rel: &str,
    c: &Counters,
    base: &Baseline,
    since: Option<u64>,
    hook: Option<u64>,
) -> PidBudgetRow {
    let pct = c.used_pct();
    let mut level = pct.map_or(Level::Ok, |p| Level::of_pct(p, WARN_PCT, CRIT_PCT));
    if level == Level::Ok && (since.unwrap_or(0) > 0 || hook.unwrap_or(0) > 0) {
        level = Level::Warn;
    }
    let secs = base.at.elapsed().as_secs_f64();
    PidBudgetRow {
        cgroup: InCgroup {
            cgroup: rel.to_string(),
            container: container::of_cgroup(rel).map(container::Container::named),
        },
        pids_current: c.current,
        pids_max: c.max,
        used_pct: pct.map(output::round3),
        level,
        growth_per_s: (secs >= 1.0)
            .then(|| output::round3((c.current as f64 - base.current as f64) / secs)),
        refused_events_max: since,
        refused_events_max_total: c.events_max,
        refused_hook: hook,
        threads: 0,
        zombies: 0,
        holders: Vec::new(),
    }
}

/// Every cgroup under `mount` that has pids files, as (path relative to the root,
/// counters), and whether the scan stopped at its capacity. A directory without
/// pids.current (cgroup2 without the controller enabled there) ends its subtree.
pub fn walk(mount: &Path) -> (Vec<(String, Counters)>, bool) {
    let mut out = Vec::new();
    let mut stack = vec![(mount.to_path_buf(), "/".to_string())];
    let mut read = 0;
    while let Some((dir, rel)) = stack.pop() {
        read += 1;
        if read > SCAN_CAPACITY {
            return (out, true);
        }
        match Counters::read(&dir) {
            Some(c) => out.push((rel.clone(), c)),
            // The root has no pids files of its own; elsewhere the subtree has none.
            None if rel != "/" => continue,
            None => {}
        }
        stack.extend(child_dirs(&dir, &rel));
    }
    (out, false)
}

/// Zombie children per parent pid, from /proc now.
fn zombie_children(stats: &[ProcStat]) -> HashMap<u32, u64> {
    let mut m = HashMap::new();
    for s in stats.iter().filter(|s| s.state == 'Z') {
        *m.entry(s.ppid).or_default() += 1;
    }
    m
}

/// Fills a row's threads, zombies and holders from the processes of its subtree.
fn holders(r: &mut PidBudgetRow, dir: &Path, by_ppid: &HashMap<u32, u64>) {
    let mut all: Vec<PidHolder> = (subtree_procs(dir).into_iter())
        .filter_map(|pid| {
            let s = procfs::process::Process::new(pid as i32)
                .ok()?
                .stat()
                .ok()?;
            Some(PidHolder {
                pid,
                comm: s.comm,
                threads: s.num_threads.max(0) as u64,
                zombie_children: by_ppid.get(&pid).copied().unwrap_or(0),
            })
        })
        .collect();
    r.threads = all.iter().map(|h| h.threads).sum();
    r.zombies = all.iter().map(|h| h.zombie_children).sum();
    all.sort_by_key(|h| std::cmp::Reverse(h.threads + h.zombie_children));
    all.truncate(HOLDERS);
    r.holders = all;
}

/// The processes (cgroup.procs) of `dir` and its descendants, at most PROCS_CAPACITY.
fn subtree_procs(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(t) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if out.len() >= PROCS_CAPACITY {
            out.truncate(PROCS_CAPACITY);
            break;
        }
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// The PID BUDGETS section of the text: findings, then the table.
pub fn text(rows: &[PidBudgetRow], scan: &PidBudgetScan) -> String {
    let mut t = String::from("\nPID BUDGETS (pids cgroups: pids.current of pids.max)\n");
    match &scan.hierarchy {
        Some(h) => {
            t += &format!(
                "  {} pids cgroups in {h}, {} with a pids.max; findings at {WARN_PCT:.0}% (warn) and {CRIT_PCT:.0}% (crit), whatever the zombies' age\n",
                scan.cgroups, scan.limited
            )
        }
        None => t += "  no pids hierarchy\n",
    }
    if let Some(n) = &scan.note {
        t += &format!("  note: {n}\n");
    }
    for f in rows.iter().filter_map(PidBudgetRow::finding) {
        t += &format!("finding: {f}\n");
    }
    if rows.is_empty() {
        t += "  none with a pids.max or a refused fork\n";
        return t;
    }
    t + &Table::of(rows).render()
}

#[cfg(test)]
#[path = "budgets_tests.rs"]
mod tests;
