//! Builds the `tracer inodes` report from the kernel's maps, statvfs and the directory
//! resolver, one section at a time: each returns its typed rows (report.rs renders
//! them), and the caveats about what it could not see.
use std::collections::{HashMap, HashSet};

use anyhow::Result;
use tracer_common::{
    comm_str,
    inodes::{DEV_CAPACITY, DIR_CAPACITY, DevCounts, ENOSPC_CAPACITY, PROC_CAPACITY, ProcCounts},
};

use super::{
    CreationHook, EXT4_FALLBACK, Inodes,
    census::{Census, Trigger},
    cgroup, entries,
    judge::{self, Judged, Rules},
    made,
    report::{Evicted, Ext4Attribution, InodesReport, View},
    rows::{DirectoryRow, EnospcRow, FilesystemRow, ProcessRow, RateSource, Source},
};
use crate::{
    procinfo,
    run::ReportCtx,
    snapshot::{
        Level,
        inodes::{self as snap, FsUsage, Mount},
    },
};

/// A filesystem in the report; `net` is inodes per second (allocated - freed).
pub(super) struct FsRow {
    pub u: FsUsage,
    pub net: f64,
    /// Inodes per second since the previous report (interval reports only).
    pub recent: Option<f64>,
    pub source: RateSource,
    pub allocated: Option<u64>,
    pub freed: Option<u64>,
    /// Level, flag and ETA, judged from the samples.
    pub judged: Judged,
}

/// What to do, for the fullest filesystem in trouble and its top directory.
pub(super) fn hints(
    fs_rows: &[FsRow],
    top_dirs: &[(String, String)],
    failing: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let hot: Vec<&FsRow> = fs_rows
        .iter()
        .filter(|r| r.judged.level != Level::Ok || (failing && r.u.inodes_used >= r.u.inodes_total))
        .collect();
    if hot.is_empty() && !failing {
        return out;
    }
    // The top directory on the fullest filesystem in trouble (rows are fullest first).
    let dir = hot
        .iter()
        .find_map(|r| {
            let m = r.u.mount.display().to_string();
            top_dirs
                .iter()
                .find(|(dm, _)| *dm == m)
                .map(|(_, d)| d.clone())
        })
        .or_else(|| top_dirs.first().map(|(_, d)| d.clone()))
        .unwrap_or_else(|| "DIR".into());
    out.push(format!(
        "free inodes now: delete old files in the top directory at idle I/O priority, 1000 per \
         rm: `ionice -c3 find {dir} -xdev -type f -mmin +60 -print0 | xargs -0 -n 1000 rm -f` \
         (look at `find {dir} -xdev -type f -mmin +60 | head` first)"
    ));
    out.push(format!(
        "keep it from coming back: have the writer clean up, or add a logrotate rule or a \
         systemd-tmpfiles `e {dir} - - - 1d` line for that directory"
    ));
    if hot.iter().any(|r| r.u.fstype.starts_with("ext")) {
        out.push(
            "for good: recreate the ext4 filesystem with more inodes (`mkfs.ext4 -i 4096` or \
             `-N COUNT`; the count is fixed at mkfs time) or use XFS, which allocates inodes \
             dynamically"
                .into(),
        );
    }
    out.push(
        "on Kubernetes nodes the kubelet evicts pods on `nodefs.inodesFree` \
         (e.g. --eviction-hard=nodefs.inodesFree<5%): alert before that"
            .into(),
    );
    out
}

/// The filesystems' rows, judged; `hook` says how each counts creations.
pub(super) fn filesystems(
    rows: &[FsRow],
    rules: Rules,
    hook: impl Fn(&str) -> CreationHook,
) -> Vec<FilesystemRow> {
    (rows.iter())
        .map(|r| {
            let (u, j) = (&r.u, &r.judged);
            FilesystemRow {
                mount: u.mount.clone(),
                device: u.device.clone(),
                fstype: u.fstype.clone(),
                dev: format!("{}:{}", u.major, u.minor),
                inodes_total: u.inodes_total,
                inodes_used: u.inodes_used,
                inodes_free: u.inodes_total.saturating_sub(u.inodes_used),
                inodes_used_pct: u.inodes_used_pct(),
                blocks_used_pct: u.blocks_used_pct(),
                allocated: r.allocated,
                freed: r.freed,
                net_inodes_per_s: r.net,
                rate_source: r.source,
                net_inodes_per_s_last_interval: r.recent,
                exhaustion_eta_s: j.eta_s,
                level: j.level,
                inodes_full_blocks_free: j.full_blocks_free,
                evidence: j.evidence(rules),
                trend_span_s: rules.span_s,
                creations_hook: hook(&u.fstype),
            }
        })
        .collect()
}

/// Whether a census may give a hint: asked for, or its filesystem is at WARN or CRIT
/// now (no census advice on a filesystem below WARN that nobody asked about).
fn may_hint(c: &Census, rows: &[FsRow]) -> bool {
    c.trigger == Trigger::Requested
        || rows
            .iter()
            .any(|r| r.u.mount == c.mount && r.judged.level != Level::Ok)
}

/// The censuses' cleanup hints, first.
fn census_hints(censuses: &Option<Vec<Census>>, rows: &[FsRow]) -> Vec<String> {
    (censuses.iter().flatten())
        .filter(|c| may_hint(c, rows))
        .filter_map(Census::hint)
        .collect()
}

/// The censuses' top directories as (mount, path), for the other hints.
fn census_dirs(censuses: &Option<Vec<Census>>, rows: &[FsRow]) -> Vec<(String, String)> {
    (censuses.iter().flatten())
        .filter(|c| may_hint(c, rows))
        .filter_map(|c| {
            Some((
                c.mount.display().to_string(),
                c.hot()?.path.display().to_string(),
            ))
        })
        .collect()
}

/// The resolved directories of `rows` as (mount, path), most inodes first: where the
/// hints point.
fn resolved(rows: &[DirectoryRow]) -> Vec<(String, String)> {
    (rows.iter())
        .filter(|r| r.path_source != Source::Unresolved)
        .map(|r| (r.mount.clone(), r.shown()))
        .collect()
}

impl Inodes {
    /// The report: every section, then what the sections could not see.
    pub(super) fn build(&mut self, ctx: &ReportCtx) -> Result<InodesReport> {
        let elapsed = ctx.elapsed.as_secs_f64().max(1e-3);
        let mounts = snap::mounts()?;
        let mut caveats = self.caveats.clone();
        let ext4_attribution = self.ext4_attribution();
        let rows = self.fs_rows(&mounts, elapsed, &mut caveats);
        let top_processes = self.processes(&mounts, &mut caveats);
        let top_directories = self.directories(&mounts, &mut caveats);
        let enospc = self.failures(&mounts, &mut caveats);
        let (census, census_why_none) = self.census_section(ctx.final_);
        let mut hints = hints(
            &rows,
            &[census_dirs(&census, &rows), resolved(&top_directories)].concat(),
            !enospc.is_empty(),
        );
        hints.splice(0..0, census_hints(&census, &rows));
        let creations = self.creations.report(self.made.unplaced);
        if let Some(n) = creations.unplaced.filter(|n| *n > 0) {
            caveats.push(format!(
                "{n} mkdir/mknod/symlink calls worked but are not in the per-process and \
                 per-directory counts: without fentry or kprobes they are placed from their \
                 path argument, and these had a path with a slash, relative to a cwd or \
                 dirfd or another root, from a process that exited before it was read (or \
                 their directory was gone)"
            ));
        }
        if self.made.dropped > 0 {
            caveats.push(format!(
                "{} mkdir/mknod/symlink calls were placed but not counted: the tables of \
                 {PROC_CAPACITY} processes and {DIR_CAPACITY} directories were full",
                self.made.dropped
            ));
        }
        let ext4_traced = self.ext4_missing.is_none();
        let counting = &self.creations;
        let paths_evicted = self.enospc_first.evicted();
        if paths_evicted > 0 {
            caveats.push(format!(
                "{paths_evicted} first ENOSPC paths were forgotten to keep {ENOSPC_CAPACITY} (least recently failing first), as the kernel's ENOSPC map forgets their counts"
            ));
        }
        Ok(InodesReport {
            filter_fs: self.target.as_ref().map(|t| t.mount.clone()),
            ext4_attribution,
            filesystems: filesystems(&rows, self.rules, |t| counting.hook_for(t, ext4_traced)),
            creations,
            top_processes,
            top_directories,
            enospc,
            hints,
            state_evicted: Evicted {
                enospc_paths: paths_evicted,
            },
            census,
            census_why_none,
            caveats,
            view: View {
                level_hold_s: self.rules.hold_s,
                trend_span_s: self.rules.span_s,
            },
        })
    }

    /// Whether ext4 allocations are attributed, and if not, why and what is shown
    /// instead.
    fn ext4_attribution(&mut self) -> Ext4Attribution {
        // ext4 loaded after the start (an ext4 mount during the run): its tracepoints
        // exist now, but the programs were not attached; the counts of this run stay
        // from statvfs, and the report says so instead of showing zeros.
        if self.ext4_missing.is_some() && self.tracefs.has_tracepoint("ext4", "ext4_allocate_inode")
        {
            self.ext4_missing = Some(
                "ext4 tracepoints missing at the start: the ext4 module was loaded during the run \
                 (an ext4 mount), after the hooks were attached; restart `tracer inodes` to \
                 attribute ext4 allocations"
                    .into(),
            );
        }
        Ext4Attribution {
            available: self.ext4_missing.is_none(),
            reason: self.ext4_missing.clone(),
            fallback: self
                .ext4_missing
                .as_ref()
                .map(|_| match self.creations.hook {
                    CreationHook::None => EXT4_FALLBACK.into(),
                    h => format!(
                        "{EXT4_FALLBACK}; ext4 creations per process and directory from the {} \
                     path (frees not counted)",
                        h.as_str()
                    ),
                }),
        }
    }

    /// Usage of each filesystem with its net rate: from the kernel's counts on ext4,
    /// else from the change of statvfs's inodes used since the start. Fullest first.
    pub(super) fn fs_rows(
        &mut self,
        mounts: &[Mount],
        elapsed: f64,
        caveats: &mut Vec<String>,
    ) -> Vec<FsRow> {
        let devs: HashMap<u32, DevCounts> =
            entries(&self.devs, "per-filesystem", DEV_CAPACITY, caveats)
                .into_iter()
                .collect();
        let mut rows = Vec::new();
        let fss = self.filesystems(mounts);
        self.record(&fss);
        // Per-filesystem state lives as long as the mount: a host that mounts and
        // unmounts (containers, loop devices) for weeks keeps only the ones mounted
        // now, and a filesystem mounted again starts afresh.
        let mounted: HashSet<u32> = fss.iter().map(|f| f.dev).collect();
        self.start_usage.retain(|dev, _| mounted.contains(dev));
        self.previous.retain(|dev, _| mounted.contains(dev));
        for u in fss {
            // Net inodes since the start, and where they come from.
            // Counted by the ext4 hooks only when they are attached: without them an
            // ext4 filesystem's rate comes from statvfs like any other (never zeros
            // that would look like nothing was allocated).
            let traced = self.ext4_missing.is_none();
            let (count, source, allocated, freed, since) = match devs.get(&u.dev) {
                Some(d) if traced => (
                    {
                        // Net since the report clock started (see dev_base).
                        let b = self.dev_base.get(&u.dev).copied().unwrap_or_default();
                        d.allocated.saturating_sub(b.allocated) as f64
                            - d.freed.saturating_sub(b.freed) as f64
                    },
                    RateSource::Ebpf,
                    Some(d.allocated),
                    Some(d.freed),
                    0.0,
                ),
                None if traced && u.fstype.starts_with("ext") => {
                    (0.0, RateSource::Ebpf, Some(0), Some(0), 0.0)
                }
                _ => {
                    // First seen now when mounted after the start.
                    let (since, start) = *self
                        .start_usage
                        .entry(u.dev)
                        .or_insert((elapsed, u.inodes_used));
                    let used = u.inodes_used as f64 - start as f64;
                    (used, RateSource::Statvfs, None, None, since)
                }
            };
            let recent = self
                .previous
                .insert(u.dev, (elapsed, count))
                .filter(|(t, _)| elapsed - t > 0.1)
                .map(|(t, c)| (count - c) / (elapsed - t));
            let judged = match self.used.get(&u.dev) {
                Some(series) => judge::judge(&u, series, self.rules),
                None => judge::judge(&u, &Default::default(), self.rules),
            };
            rows.push(FsRow {
                judged,
                net: count / (elapsed - since).max(1e-3),
                recent,
                source,
                allocated,
                freed,
                u,
            });
        }
        rows.sort_by(|a, b| {
            b.u.inodes_used_pct()
                .total_cmp(&a.u.inodes_used_pct())
                .then(b.net.total_cmp(&a.net))
        });
        rows
    }

    /// Processes with the most net inodes created.
    pub(super) fn processes(&self, mounts: &[Mount], caveats: &mut Vec<String>) -> Vec<ProcessRow> {
        let procs = entries(&self.procs, "per-process", PROC_CAPACITY, caveats);
        let mut procs = made::merged(procs, &self.made.procs, |a, b| {
            a.allocated += b.allocated;
            if a.comm[0] == 0 {
                a.comm = b.comm;
            }
        });
        // A process whose only creates failed (taken back: see the kernel's take_back)
        // has nothing to show.
        procs.retain(|(k, v)| {
            self.target.as_ref().is_none_or(|t| t.dev == k.dev) && (v.allocated, v.freed) != (0, 0)
        });
        let net = |v: &ProcCounts| v.allocated as i64 - v.freed as i64;
        procs.sort_by(|a, b| {
            net(&b.1)
                .cmp(&net(&a.1))
                .then(b.1.allocated.cmp(&a.1.allocated))
                .then(a.0.tgid.cmp(&b.0.tgid))
        });
        procs.truncate(self.top);
        let ext4_traced = self.ext4_missing.is_none();
        (procs.iter())
            .map(|(k, v)| {
                let fstype = (mounts.iter().find(|m| m.dev == k.dev)).map(|m| m.fstype.as_str());
                let hook = (self.creations).hook_for(fstype.unwrap_or_default(), ext4_traced);
                let frees = hook == CreationHook::Ext4Tracepoints;
                ProcessRow {
                    pid: k.tgid,
                    comm: comm_str(&v.comm).to_string(),
                    cgroup: cgroup(k.tgid).into(),
                    mount: Self::mount_name(k.dev, mounts),
                    allocated: v.allocated,
                    freed: frees.then_some(v.freed),
                    net: frees.then(|| net(v)),
                    creations_hook: hook,
                }
            })
            .collect()
    }

    /// Directories with the most inodes created, resolved to paths.
    pub(super) fn directories(
        &mut self,
        mounts: &[Mount],
        caveats: &mut Vec<String>,
    ) -> Vec<DirectoryRow> {
        let dirs = entries(&self.dirs, "per-directory", DIR_CAPACITY, caveats);
        let mut dirs = made::merged(dirs, &self.made.dirs, |a, b| *a += b);
        dirs.retain(|(k, n)| self.target.as_ref().is_none_or(|t| t.dev == k.dev) && *n > 0);
        let total: u64 = dirs.iter().map(|(_, v)| v).sum();
        dirs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.ino.cmp(&b.0.ino)));
        dirs.truncate(self.top);
        let wanted: Vec<_> = dirs
            .iter()
            .map(|(k, _)| {
                let mount = mounts
                    .iter()
                    .find(|m| m.dev == k.dev)
                    .map(|m| m.mount.clone());
                (k.dev, k.ino, mount)
            })
            .collect();
        let resolved = self.resolver.resolve_all(&wanted);
        (dirs.iter().zip(resolved))
            .map(|((k, n), r)| DirectoryRow {
                mount: Self::mount_name(k.dev, mounts),
                path: r.path,
                path_source: r.source,
                ino: k.ino,
                allocated: *n,
                share_pct: 100.0 * *n as f64 / total.max(1) as f64,
            })
            .collect()
    }

    /// Creates that failed with ENOSPC, per process and filesystem.
    pub(super) fn failures(&self, mounts: &[Mount], caveats: &mut Vec<String>) -> Vec<EnospcRow> {
        let mut rows: Vec<_> = entries(&self.enospc, "ENOSPC", ENOSPC_CAPACITY, caveats)
            .into_iter()
            .map(|(k, n)| {
                let (comm, path) = self.enospc_first.get(&k).cloned().unwrap_or_else(|| {
                    let comm = procinfo::comm_of(k.tgid).unwrap_or_else(|| "?".into());
                    (comm, String::new())
                });
                let mount = if k.dev != 0 {
                    Self::mount_name(k.dev, mounts)
                } else {
                    // Not an ext4 inode request: the mount that holds the path.
                    snap::mount_of_path(std::path::Path::new(&path), mounts)
                        .filter(|_| path.starts_with('/'))
                        .map(|m| m.mount.display().to_string())
                        .unwrap_or_else(|| "?".into())
                };
                (k, n, comm, path, mount)
            })
            .collect();
        if let Some(t) = &self.target {
            let tm = t.mount.display().to_string();
            rows.retain(|(k, _, _, _, mount)| k.dev == t.dev || *mount == tm);
        }
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.tgid.cmp(&b.0.tgid)));
        rows.truncate(self.top);
        (rows.into_iter())
            .map(|(k, count, comm, first_path, mount)| EnospcRow {
                pid: k.tgid,
                comm,
                mount,
                count,
                first_path,
                cgroup: cgroup(k.tgid).into(),
            })
            .collect()
    }
}
