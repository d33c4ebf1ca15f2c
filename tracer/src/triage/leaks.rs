//! The leak checks of the other commands, as instant snapshots: zombies per parent
//! and PID usage (tracer zombies), dying cgroups per hierarchy (tracer cgroups), inode
//! usage per filesystem (tracer inodes), TCP memory vs tcp_mem (tracer tcp-pressure).
use std::collections::{BTreeMap, HashSet};

use super::{
    Finding, FsRow, HierarchyRow, LeaksSection, Part, Pids, TcpMemRow, Window, ZombieParentRow,
    judge, rows::round1,
};
use crate::{
    procinfo,
    snapshot::{Level, cgroups, inodes, pct, tcpmem},
};

/// A parent holding this many stuck zombies is not reaping (warn), this many is eating
/// the PID space (crit). A zombie is stuck when the kernel dates it older than
/// STUCK_WINDOW_S (/proc/PID/sched, zombies/ages.rs), or, where it cannot, when it was
/// already one at the start of a window of at least STUCK_WINDOW_S and still is at its
/// end: every child is a zombie for a moment, so a snapshot alone proves nothing (the
/// rule of `tracer zombies`).
pub const ZOMBIES_WARN: f64 = 5.0;
pub const STUCK_WINDOW_S: f64 = crate::zombies::STUCK_FLOOR_S;
pub const ZOMBIES_CRIT: f64 = 500.0;
/// Dying cgroups in one hierarchy.
pub const DYING_WARN: f64 = 100.0;
pub const DYING_CRIT: f64 = 10_000.0;
/// Rows for at most this many parents / filesystems (the worst first).
const MAX_ROWS: usize = 5;

pub struct Before {
    tcp: Option<tcpmem::Snapshot>,
    /// Zombies at the start of the window (pid, start time).
    zombies: HashSet<(u32, u64)>,
}

impl Before {
    pub fn read() -> Before {
        Before {
            tcp: tcpmem::Snapshot::read().ok(),
            zombies: zombie_ids(&procinfo::all_stats()),
        }
    }
}

fn zombie_ids(stats: &[procinfo::ProcStat]) -> HashSet<(u32, u64)> {
    stats
        .iter()
        .filter(|s| s.state == 'Z')
        .map(|s| (s.pid, s.start_ticks))
        .collect()
}

/// One parent's zombies now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct ParentZombies {
    /// Dated older than STUCK_WINDOW_S, or present through a long enough window.
    stuck: usize,
    young: usize,
    /// The oldest the kernel could date, seconds.
    oldest_s: Option<f64>,
    /// Zombies the kernel could not date.
    undated: usize,
}

/// Per parent: stuck zombies and the others. `age_of` dates a zombie (seconds, None
/// when the kernel cannot); `window_s` is how long `before` was taken before `now`.
fn zombies_by_parent(
    before: &HashSet<(u32, u64)>,
    now: &[procinfo::ProcStat],
    window_s: f64,
    mut age_of: impl FnMut(&procinfo::ProcStat) -> Option<f64>,
) -> BTreeMap<u32, ParentZombies> {
    let long_window = window_s + 1e-3 >= STUCK_WINDOW_S;
    let mut by_parent: BTreeMap<u32, ParentZombies> = BTreeMap::new();
    for s in now.iter().filter(|s| s.state == 'Z') {
        let age = age_of(s);
        let e = by_parent.entry(s.ppid).or_default();
        let through = long_window && before.contains(&(s.pid, s.start_ticks));
        if through || age.is_some_and(|a| a > STUCK_WINDOW_S) {
            e.stuck += 1;
        } else {
            e.young += 1;
        }
        e.undated += usize::from(age.is_none());
        if let Some(a) = age {
            e.oldest_s = Some(e.oldest_s.map_or(a, |o| o.max(a)));
        }
    }
    by_parent
}

/// The level of a parent's zombies row, from its stuck zombies.
fn zombies_level(stuck: usize) -> Level {
    judge(stuck as f64, ZOMBIES_WARN, ZOMBIES_CRIT)
}

/// The leak rows, and what they saw.
pub fn check(before: Before, w: Window, part: &mut Part) -> LeaksSection {
    LeaksSection {
        pids: pids(part, &before.zombies, w),
        cgroup_hierarchies: dying_cgroups(part),
        filesystems: inode_usage(part),
        tcp_mem: tcp_mem(part, before, w),
    }
}

/// PID usage, and zombies per parent.
fn pids(part: &mut Part, before: &HashSet<(u32, u64)>, w: Window) -> Pids {
    // PID usage: every task (thread) takes a PID; fork fails at min(pid_max, threads-max).
    let in_use = procinfo::tasks_in_use();
    let limit = procinfo::pid_limit();
    if let (Some(u), Some(l)) = (in_use, limit) {
        part.findings.push(
            Finding::new(
                "pids",
                "pid usage",
                format!(
                    "{u} tasks of {l} = min(pid_max, threads-max) ({:.1}%)",
                    pct(u, l)
                ),
                ">= 50% warn, 80% crit of the limit",
                judge(pct(u, l), 50.0, 80.0),
            )
            .next("tracer zombies --parent (who leaks them); ps -eLf | wc -l"),
        );
    }

    // Zombies grouped by parent, from /proc (state Z), split by whether they were
    // already zombies when the window began.
    let mut dater = crate::zombies::ages::Dater::new(procinfo::ticks_per_second());
    let by_parent = zombies_by_parent(before, &procinfo::all_stats(), w.secs, |s| {
        dater.age(s.pid, s.start_ticks).map(|d| d.as_secs_f64())
    });
    let total: usize = by_parent.values().map(|z| z.stuck + z.young).sum();
    let mut parents: Vec<(u32, ParentZombies)> = by_parent.into_iter().collect();
    parents.sort_by(|a, b| {
        (b.1.stuck, b.1.young)
            .cmp(&(a.1.stuck, a.1.young))
            .then(a.0.cmp(&b.0))
    });
    let threshold = format!(
        "per parent >= {ZOMBIES_WARN} warn, {ZOMBIES_CRIT} crit, counting zombies older than {STUCK_WINDOW_S}s \
         (dated by the kernel's /proc/PID/sched) or present through a window of >= {STUCK_WINDOW_S}s"
    );
    let mut rows = Vec::new();
    for &(ppid, z) in parents.iter().take(MAX_ROWS) {
        let comm = procinfo::comm_of(ppid).unwrap_or_else(|| "?".into());
        let (stuck, young) = (z.stuck, z.young);
        let mut value = format!(
            "{stuck} zombie(s) under {ppid} ({comm}) through the {:.1}s window or older than {STUCK_WINDOW_S}s, {young} younger",
            w.secs
        );
        if let Some(o) = z.oldest_s {
            value += &format!(" (oldest {o:.1}s, dated by the kernel)");
        }
        if z.undated > 0 && w.secs + 1e-3 < STUCK_WINDOW_S {
            value += &format!(
                " ({} not judged: the kernel cannot date them and the window is under {STUCK_WINDOW_S}s)",
                z.undated
            );
        }
        part.findings.push(
            Finding::new(
                "pids",
                "zombies",
                value,
                threshold.clone(),
                zombies_level(stuck),
            )
            .subject(ppid.to_string())
            .next(format!("tracer zombies --parent -p {ppid}")),
        );
        rows.push(ZombieParentRow {
            ppid,
            comm,
            zombies: stuck + young,
            stuck,
            in_flight: young,
            oldest_age_s: z.oldest_s.map(round1),
        });
    }
    if parents.is_empty() {
        part.findings.push(Finding::new(
            "pids",
            "zombies",
            "none",
            threshold,
            Level::Ok,
        ));
    }
    Pids {
        in_use,
        limit,
        zombies_total: total,
        zombie_parents: rows,
    }
}

/// Dying cgroups per hierarchy, and every hierarchy.
fn dying_cgroups(part: &mut Part) -> Option<Vec<HierarchyRow>> {
    let hs = match cgroups::hierarchies() {
        Ok(h) => h,
        Err(e) => {
            part.skip("dying cgroups", format!("{e:#}"));
            return None;
        }
    };
    let threshold = format!("per hierarchy >= {DYING_WARN} warn, {DYING_CRIT} crit");
    let mut shown = 0;
    for h in hs.iter().filter(|h| h.dying.unwrap_or(0) > 0) {
        let dying = h.dying.unwrap_or(0);
        part.findings.push(
            Finding::new(
                "cgroups",
                "dying cgroups",
                format!("{dying} dying, {} live", h.cgroups),
                threshold.clone(),
                judge(dying as f64, DYING_WARN, DYING_CRIT),
            )
            .subject(&h.name)
            .next("tracer cgroups (who creates them, what pins them: usually page cache charged to removed memory cgroups)"),
        );
        shown += 1;
    }
    if shown == 0 {
        part.findings.push(Finding::new(
            "cgroups",
            "dying cgroups",
            format!(
                "none in {} hierarchies ({} cgroups live)",
                hs.len(),
                hs.iter().map(|h| h.cgroups).sum::<u64>()
            ),
            threshold,
            Level::Ok,
        ));
    }
    Some(
        (hs.into_iter())
            .map(|h| HierarchyRow {
                name: h.name,
                version: h.version,
                mount: h.mount,
                live: h.cgroups,
                dying: h.dying,
            })
            .collect(),
    )
}

/// Inode usage per filesystem, and every filesystem with a fixed inode count.
fn inode_usage(part: &mut Part) -> Option<Vec<FsRow>> {
    let mut fss = match inodes::filesystems() {
        Ok(f) => f,
        Err(e) => {
            part.skip("inode usage", format!("{e:#}"));
            return None;
        }
    };
    fss.sort_by(|a, b| b.inodes_used_pct().total_cmp(&a.inodes_used_pct()));
    let threshold = format!(
        "inodes used >= {}% warn, >= {}% crit",
        inodes::WARN_PCT,
        inodes::CRIT_PCT
    );
    let mut shown = 0;
    for fs in fss.iter().filter(|f| f.level() != Level::Ok).take(MAX_ROWS) {
        let mount = fs.mount.display().to_string();
        part.findings.push(
            Finding::new(
                "inodes",
                "inode usage",
                format!(
                    "{:.0}% of inodes used ({}/{}), {:.0}% of blocks{}",
                    fs.inodes_used_pct(),
                    fs.inodes_used,
                    fs.inodes_total,
                    fs.blocks_used_pct(),
                    if fs.inodes_full_blocks_free() {
                        ": inodes full, blocks free"
                    } else {
                        ""
                    }
                ),
                threshold.clone(),
                fs.level(),
            )
            .subject(&mount)
            .next(format!(
                "tracer inodes --fs {mount} (who creates the files, where); df -i {mount}{}",
                if fs.inodes_full_blocks_free() {
                    " (many small files: creates fail with ENOSPC while df -h looks fine)"
                } else {
                    ""
                }
            )),
        );
        shown += 1;
    }
    if shown == 0 {
        let top = fss.first();
        part.findings.push(Finding::new(
            "inodes",
            "inode usage",
            match top {
                Some(f) => format!(
                    "highest {:.0}% on {} ({} filesystems)",
                    f.inodes_used_pct(),
                    f.mount.display(),
                    fss.len()
                ),
                None => "no filesystem with a fixed inode count".into(),
            },
            threshold,
            Level::Ok,
        ));
    }
    Some(
        (fss.iter())
            .map(|f| FsRow {
                mount: f.mount.clone(),
                fstype: f.fstype.clone(),
                device: f.device.clone(),
                inodes_used_pct: round1(f.inodes_used_pct()),
                blocks_used_pct: round1(f.blocks_used_pct()),
                inodes_full_blocks_free: f.inodes_full_blocks_free(),
            })
            .collect(),
    )
}

/// Pods named in the tcp memory check, by the memory their sockets hold.
const TOP_PODS: usize = 3;

/// Memory TCP holds vs tcp_mem, and pressure entries and aborts over the window.
fn tcp_mem(part: &mut Part, before: Before, w: Window) -> Option<TcpMemRow> {
    let now = match tcpmem::Snapshot::read() {
        Ok(s) => s,
        Err(e) => {
            part.skip("tcp memory", format!("{e:#}"));
            return None;
        }
    };
    let t = now.tcp_mem;
    // Pages TCP holds vs tcp_mem: above `pressure` the kernel trims buffers, at `high`
    // allocations fail.
    let level = if now.mem_pages >= t.high {
        Level::Crit
    } else if now.mem_pages >= t.pressure {
        Level::Warn
    } else {
        Level::Ok
    };
    let counter = |name: &str| -> Option<u64> {
        let b = before.tcp.as_ref()?.counters.get(name)?;
        Some(now.counters.get(name)?.saturating_sub(*b))
    };
    let pressures = counter("TCPMemoryPressures");
    let aborts = counter("TCPAbortOnMemory");
    let top_pods = crate::tcp::pods::top_now(TOP_PODS);
    let events_level = match (pressures, aborts) {
        (_, Some(a)) if a > 0 => Level::Crit,
        (Some(p), _) if p > 0 => Level::Warn,
        _ => Level::Ok,
    };
    part.findings.push(
        Finding::new(
            "tcp_mem",
            "tcp memory",
            format!(
                "{} pages, {:.0}% of pressure (tcp_mem {} {} {}); window: {} pressure entries, {} aborts on memory{}",
                now.mem_pages,
                now.pressure_pct(),
                t.low,
                t.pressure,
                t.high,
                pressures.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                aborts.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                crate::tcp::pods::top_text(&top_pods),
            ),
            ">= pressure or an entry warn; >= high or an abort crit",
            level.max(events_level),
        )
        .next("tracer tcp-pressure (who holds TCP memory, since when, what to set)"),
    );
    Some(TcpMemRow {
        pages: now.mem_pages,
        low: t.low,
        pressure: t.pressure,
        high: t.high,
        pressure_entries_in_window: pressures,
        aborts_on_memory_in_window: aborts,
        window_s: round1(w.secs),
        top_pods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(pid: u32, ppid: u32, start: u64) -> procinfo::ProcStat {
        procinfo::ProcStat {
            pid,
            ppid,
            comm: "c".into(),
            state: 'Z',
            start_ticks: start,
            cpu_ticks: 0,
        }
    }

    fn counts(z: &ParentZombies) -> (usize, usize) {
        (z.stuck, z.young)
    }

    #[test]
    fn undated_zombies_are_judged_only_through_a_long_enough_window() {
        let before = zombie_ids(&[z(10, 1, 5), z(11, 1, 5), z(12, 2, 7)]);
        // 10 stays, 11 was reaped, 12's pid now belongs to a newer zombie, 13 is new.
        let now = [z(10, 1, 5), z(12, 2, 9), z(13, 2, 9)];
        let by = zombies_by_parent(&before, &now, 5.0, |_| None);
        assert_eq!(counts(&by[&1]), (1, 0));
        assert_eq!(counts(&by[&2]), (0, 2), "a reused pid is another process");
        assert_eq!(by[&2].undated, 2);
        let short = zombies_by_parent(&before, &now, 1.0, |_| None);
        assert_eq!(counts(&short[&1]), (0, 1), "a 1 s window proves nothing");
        assert_eq!(zombies_level(5), Level::Warn);
        assert_eq!(zombies_level(4), Level::Ok);
        assert_eq!(zombies_level(500), Level::Crit);
    }

    #[test]
    fn dated_zombies_are_judged_in_any_window() {
        let now = [z(10, 1, 5), z(11, 1, 5), z(12, 1, 9)];
        let age = |s: &procinfo::ProcStat| Some(if s.pid == 12 { 0.5 } else { 20.0 });
        let by = zombies_by_parent(&HashSet::new(), &now, 0.5, age);
        assert_eq!(counts(&by[&1]), (2, 1));
        assert_eq!((by[&1].oldest_s, by[&1].undated), (Some(20.0), 0));
    }
}
