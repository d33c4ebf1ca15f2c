//! The leak checks of the other commands, as instant snapshots: zombies per parent
//! and PID usage (tracer zombies), dying cgroups per hierarchy (tracer cgroups), inode
//! usage per filesystem (tracer inodes), TCP memory vs tcp_mem (tracer tcp-pressure).
use std::collections::BTreeMap;

use serde_json::json;

use super::{Finding, Part, Skipped, Window, cpu::round1, judge};
use crate::{
    procinfo,
    snapshot::{Level, cgroups, inodes, pct, tcpmem},
};

/// A parent holding this many zombies at once is not reaping (warn), this many is
/// eating the PID space (crit).
pub const ZOMBIES_WARN: f64 = 5.0;
pub const ZOMBIES_CRIT: f64 = 500.0;
/// Dying cgroups in one hierarchy.
pub const DYING_WARN: f64 = 100.0;
pub const DYING_CRIT: f64 = 10_000.0;
/// Rows for at most this many parents / filesystems (the worst first).
const MAX_ROWS: usize = 5;

pub struct Before {
    tcp: Option<tcpmem::Snapshot>,
}

impl Before {
    pub fn read() -> Before {
        Before {
            tcp: tcpmem::Snapshot::read().ok(),
        }
    }
}

pub fn findings(before: Before, w: Window) -> Part {
    let mut part = Part::default();
    pids(&mut part);
    dying_cgroups(&mut part);
    inode_usage(&mut part);
    tcp_mem(&mut part, before, w);
    part
}

fn pids(part: &mut Part) {
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

    // Zombies grouped by parent, from /proc (state Z).
    let mut by_parent: BTreeMap<u32, usize> = BTreeMap::new();
    for s in procinfo::all_stats().into_iter().filter(|s| s.state == 'Z') {
        *by_parent.entry(s.ppid).or_default() += 1;
    }
    let total: usize = by_parent.values().sum();
    let mut parents: Vec<(u32, usize)> = by_parent.into_iter().collect();
    parents.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut rows = Vec::new();
    for &(ppid, n) in parents.iter().take(MAX_ROWS) {
        let comm = procinfo::comm_of(ppid).unwrap_or_else(|| "?".into());
        part.findings.push(
            Finding::new(
                "pids",
                "zombies",
                format!("{n} zombie(s) under {ppid} ({comm})"),
                format!("per parent >= {ZOMBIES_WARN} warn, {ZOMBIES_CRIT} crit"),
                judge(n as f64, ZOMBIES_WARN, ZOMBIES_CRIT),
            )
            .subject(ppid.to_string())
            .next(format!("tracer zombies --parent -p {ppid}")),
        );
        rows.push(json!({"ppid": ppid, "comm": comm, "zombies": n}));
    }
    if parents.is_empty() {
        part.findings.push(Finding::new(
            "pids",
            "zombies",
            "none",
            format!("per parent >= {ZOMBIES_WARN} warn, {ZOMBIES_CRIT} crit"),
            Level::Ok,
        ));
    }
    part.json.insert(
        "pids".into(),
        json!({"in_use": in_use, "limit": limit, "zombies_total": total, "zombie_parents": rows}),
    );
}

fn dying_cgroups(part: &mut Part) {
    let hs = match cgroups::hierarchies() {
        Ok(h) => h,
        Err(e) => {
            part.skipped.push(Skipped {
                part: "dying cgroups",
                reason: format!("{e:#}"),
            });
            return;
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
    part.json.insert(
        "cgroup_hierarchies".into(),
        json!(
            hs.iter()
                .map(
                    |h| json!({"name": h.name, "version": h.version, "mount": h.mount,
            "live": h.cgroups, "dying": h.dying})
                )
                .collect::<Vec<_>>()
        ),
    );
}

fn inode_usage(part: &mut Part) {
    let mut fss = match inodes::filesystems() {
        Ok(f) => f,
        Err(e) => {
            part.skipped.push(Skipped {
                part: "inode usage",
                reason: format!("{e:#}"),
            });
            return;
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
    part.json.insert(
        "filesystems".into(),
        json!(fss.iter().map(|f| json!({"mount": f.mount, "fstype": f.fstype, "device": f.device,
            "inodes_used_pct": round1(f.inodes_used_pct()), "blocks_used_pct": round1(f.blocks_used_pct()),
            "inodes_full_blocks_free": f.inodes_full_blocks_free()})).collect::<Vec<_>>()),
    );
}

fn tcp_mem(part: &mut Part, before: Before, w: Window) {
    let now = match tcpmem::Snapshot::read() {
        Ok(s) => s,
        Err(e) => {
            part.skipped.push(Skipped {
                part: "tcp memory",
                reason: format!("{e:#}"),
            });
            return;
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
                "{} pages, {:.0}% of pressure (tcp_mem {} {} {}); window: {} pressure entries, {} aborts on memory",
                now.mem_pages,
                now.pressure_pct(),
                t.low,
                t.pressure,
                t.high,
                pressures.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                aborts.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            ),
            ">= pressure or an entry warn; >= high or an abort crit",
            level.max(events_level),
        )
        .next("tracer tcp-pressure (who holds TCP memory, since when, what to set)"),
    );
    part.json.insert(
        "tcp_mem".into(),
        json!({"pages": now.mem_pages, "low": t.low, "pressure": t.pressure, "high": t.high,
               "pressure_entries_in_window": pressures, "aborts_on_memory_in_window": aborts,
               "window_s": round1(w.secs)}),
    );
}
