//! Running censuses: when, on which thread and at which priority, and the typed
//! census made of a walk's outcome.
use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{
    Census, CensusDirRow, Censuses, Settings, SkippedRow, Trigger, owners,
    walk::{DirCount, Outcome, Progress, Walk},
};
use crate::snapshot::{
    Level,
    inodes::{self as snap, FsUsage, Mount},
};

/// How often a long census says how far it got (stderr).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A census that outlives the final report by this much past its budget is left
/// behind (the report says it was running).
const FINAL_GRACE: Duration = Duration::from_secs(5);

impl Censuses {
    pub fn new(settings: Settings, clock: Instant) -> Self {
        Self {
            settings,
            clock,
            running: None,
            started: Default::default(),
            done: Vec::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Starts a census of each filesystem at WARN or CRIT not censused yet in this run
    /// (one at a time: the others wait for the next sample).
    pub fn at_levels(&mut self, fss: &[(FsUsage, Level)]) {
        self.collect(false);
        if !self.settings.at_warn || self.running.is_some() {
            return;
        }
        let next = fss
            .iter()
            .find(|(u, l)| *l != Level::Ok && !self.started.contains(&u.dev));
        if let Some((u, l)) = next {
            self.start(u.mount.clone(), u, *l, Trigger::Level);
        }
    }

    /// Starts a census of `root` on `u`'s filesystem on its own thread.
    pub fn start(&mut self, root: PathBuf, u: &FsUsage, level: Level, trigger: Trigger) {
        self.started.insert(u.dev);
        let (tx, rx) = mpsc::channel();
        let (s, mount, used) = (self.settings.clone(), u.mount.clone(), u.inodes_used);
        let started_at_s = self.clock.elapsed().as_secs_f64();
        self.running = Some((root.clone(), rx));
        let spawned = std::thread::Builder::new()
            .name("inode-census".into())
            .spawn(move || {
                lower_priority();
                let outcome = walk(&root, &mount, &s);
                let census = census_of(outcome, root, mount, used, &s, (trigger, level));
                let _ = tx.send(Census {
                    started_at_s,
                    ..census
                });
            });
        if let Err(e) = spawned {
            log::warn!("starting the inode census: {e}");
            self.running = None;
        }
    }

    /// Takes the finished census; with `wait` (the final report) waits for a running
    /// one up to its budget and a grace.
    pub fn collect(&mut self, wait: bool) {
        let Some((_, rx)) = &self.running else { return };
        let got = match wait {
            true => rx.recv_timeout(self.settings.budget + FINAL_GRACE).ok(),
            false => rx.try_recv().ok(),
        };
        if let Some(c) = got {
            self.done.retain(|d| d.mount != c.mount);
            self.done.push(c);
            self.running = None;
        }
    }

    /// Why the report has no census, or None when it has one.
    pub fn why_none(&self) -> Option<String> {
        if !self.done.is_empty() {
            return None;
        }
        Some(match (&self.running, self.settings.at_warn) {
            (Some((root, _)), _) => format!("a census of {} is running", root.display()),
            (None, true) => {
                "no filesystem reached WARN and none was asked for (--census PATH)".into()
            }
            (None, false) => "--census off".into(),
        })
    }
}

/// The census thread's I/O at idle priority (it gets the disk only when nobody else
/// wants it) and its CPU at nice 19.
fn lower_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: plain syscalls on the calling thread (who 0 = this thread).
    unsafe {
        let tid = libc::gettid();
        if libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        ) != 0
        {
            log::warn!(
                "census: ioprio_set(IDLE): {}",
                std::io::Error::last_os_error()
            );
        }
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) != 0 {
            log::warn!(
                "census: setpriority(19): {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The walk, with a progress line on stderr every PROGRESS_EVERY.
fn walk(root: &Path, mount: &Path, s: &Settings) -> Outcome {
    let mut progress = |p: &Progress| {
        eprintln!(
            "inode census of {}: {} inodes in {:.0}s (budget {:.0}s), at {}",
            mount.display(),
            p.inodes,
            p.elapsed.as_secs_f64(),
            s.budget.as_secs_f64(),
            p.at.display()
        );
    };
    Walk {
        budget: s.budget,
        top: s.top,
        progress_every: PROGRESS_EVERY,
        on_progress: &mut progress,
        on_open: &mut |_| {},
    }
    .run(root)
}

/// The typed census of a walk: the top directories with their share, user and owner.
pub(super) fn census_of(
    o: Outcome,
    root: PathBuf,
    mount: PathBuf,
    fs_used: u64,
    s: &Settings,
    (trigger, level): (Trigger, Level),
) -> Census {
    let overlays = owners::overlays();
    let of_fs = fs_used.max(o.root.subtree_inodes).max(1) as f64;
    let row = |d: &DirCount| {
        let first = d.users.first();
        let files = d.ages.files().max(1) as f64;
        CensusDirRow {
            path: d.path.clone(),
            own_entries: d.own_entries,
            subtree_inodes: d.subtree_inodes,
            share_pct: 100.0 * d.subtree_inodes as f64 / of_fs,
            ages: d.ages,
            uid: first.map(|f| f.0),
            user: first.and_then(|f| {
                nix::unistd::User::from_uid(f.0.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            }),
            user_pct: first.map_or(0.0, |f| 100.0 * f.1 as f64 / files),
            owner: owners::of(&d.path, &overlays),
        }
    };
    // No root row when the root could not be opened (its skipped row says why).
    let mut top_directories: Vec<CensusDirRow> = match o.root.subtree_inodes {
        0 => vec![],
        _ => vec![row(&o.root)],
    };
    top_directories.extend(o.top.iter().filter(|d| d.path != o.root.path).map(row));
    top_directories.truncate(s.top.max(1));
    Census {
        mount,
        root,
        trigger,
        level,
        started_at_s: 0.0,
        elapsed_s: o.elapsed.as_secs_f64(),
        budget_s: s.budget.as_secs_f64(),
        partial: o.partial,
        inodes_counted: o.root.subtree_inodes,
        fs_inodes_used: fs_used,
        directories: o.directories,
        ages: o.root.ages,
        top_directories,
        skipped: (o.skips.into_iter())
            .map(|k| SkippedRow {
                path: k.path,
                reason: k.reason,
                detail: k.detail,
            })
            .collect(),
        skipped_count: o.skipped,
        vanished: o.vanished,
        mounts_not_crossed: o.mounts_not_crossed,
    }
}

/// `--census` and `--census-budget` checked: a PATH must be a directory.
pub fn settings_of(args: &super::super::Args) -> anyhow::Result<Settings> {
    let (path, at_warn) = match args.census.as_str() {
        "warn" => (None, true),
        "off" => (None, false),
        p => {
            let path = std::fs::canonicalize(p)
                .ok()
                .filter(|p| p.is_dir())
                .ok_or_else(|| {
                    anyhow::anyhow!("--census {p}: not a directory; --census takes warn, off or a directory to walk")
                })?;
            (Some(path), true)
        }
    };
    if args.census_budget.is_zero() {
        anyhow::bail!("--census-budget must be more than 0s");
    }
    Ok(Settings {
        path,
        at_warn,
        budget: args.census_budget,
        top: args.top,
    })
}

impl super::super::Inodes {
    /// `--census PATH`: its census starts with the tracing.
    pub(in crate::inodes) fn census_asked(&mut self, mounts: &[Mount]) -> anyhow::Result<()> {
        let Some(path) = self.census.settings().path.clone() else {
            return Ok(());
        };
        let u = snap::mount_of_path(&path, mounts)
            .and_then(snap::usage)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--census {}: no inode-limited filesystem holds it",
                    path.display()
                )
            })?;
        let level = self.judged_level(&u);
        self.census.start(path, &u, level, Trigger::Requested);
        Ok(())
    }

    /// Each sample: a census of a filesystem that reached WARN.
    pub(in crate::inodes) fn census_at_levels(&mut self, fss: Vec<FsUsage>) {
        let judged: Vec<(FsUsage, Level)> = (fss.into_iter())
            .map(|u| {
                let l = self.judged_level(&u);
                (u, l)
            })
            .collect();
        self.census.at_levels(&judged);
    }

    fn judged_level(&self, u: &FsUsage) -> Level {
        let none = Default::default();
        let series = self.used.get(&u.dev).unwrap_or(&none);
        crate::inodes::judge::judge(u, series, self.rules).level
    }

    /// The censuses for the report (waiting for a running one in the final report),
    /// and why there is none.
    pub(in crate::inodes) fn census_section(
        &mut self,
        final_: bool,
    ) -> (Option<Vec<Census>>, Option<String>) {
        self.census.collect(final_);
        let mut done = self.census.done.clone();
        if let Some(t) = &self.target {
            done.retain(|c| c.mount == t.mount);
        }
        let why = self.census.why_none();
        ((!done.is_empty()).then_some(done), why)
    }
}
