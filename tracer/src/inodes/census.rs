//! The inode census: where a filesystem's inodes are now, whoever created them and
//! whenever (the ext4 hooks only see creates while the tracer runs). It walks the
//! filesystem from its mount point (or a directory asked for) on its own thread, at
//! idle I/O priority and the lowest CPU priority, within a time budget, and reports the
//! directories holding the most inodes with the age and owner of their files and the
//! container or pod they belong to. It runs when a filesystem reaches WARN, or when
//! asked (`--census PATH`), never otherwise: below WARN nothing is walked or hinted.
pub mod owners;
mod walk;

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    output::{Row, serialize_round3},
    snapshot::Level,
};
pub use owners::Owner;

/// Files by age of their last modification (mtime).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ages {
    pub under_hour: u64,
    pub under_day: u64,
    pub under_week: u64,
    pub older: u64,
}

impl Ages {
    fn add(&mut self, age_s: i64) {
        match age_s {
            ..3600 => self.under_hour += 1,
            ..86_400 => self.under_day += 1,
            ..604_800 => self.under_week += 1,
            _ => self.older += 1,
        }
    }

    fn merge(&mut self, o: &Ages) {
        self.under_hour += o.under_hour;
        self.under_day += o.under_day;
        self.under_week += o.under_week;
        self.older += o.older;
    }

    pub fn files(&self) -> u64 {
        self.under_hour + self.under_day + self.under_week + self.older
    }

    /// The largest age bucket whose files, with all older ones, are at least half:
    /// (bucket, percent of the files, `find` test selecting them).
    pub fn old_majority(&self) -> Option<(AgeBucket, f64, &'static str)> {
        let n = self.files().max(1) as f64;
        let week = self.older as f64;
        let day = week + self.under_week as f64;
        let hour = day + self.under_day as f64;
        [
            (AgeBucket::Older, week, "-mtime +7"),
            (AgeBucket::UnderWeek, day, "-mmin +1440"),
            (AgeBucket::UnderDay, hour, "-mmin +60"),
        ]
        .into_iter()
        .find(|(_, k, _)| *k * 2.0 >= n && self.files() > 0)
        .map(|(b, k, t)| (b, 100.0 * k / n, t))
    }
}

/// An age bucket: which files `Ages::old_majority` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgeBucket {
    /// Older than an hour.
    UnderDay,
    /// Older than a day.
    UnderWeek,
    /// Older than a week.
    Older,
}

impl AgeBucket {
    pub fn text(self) -> &'static str {
        match self {
            AgeBucket::UnderDay => "older than an hour",
            AgeBucket::UnderWeek => "older than a day",
            AgeBucket::Older => "older than a week",
        }
    }
}

/// Why a directory was not (fully) counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    PermissionDenied,
    /// Removed between its listing and its opening, or while it was read.
    Removed,
    /// Any other error (EIO, EMFILE, ...): the detail says which.
    Unreadable,
}

/// Why a census ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `--census PATH`.
    Requested,
    /// The filesystem reached WARN.
    Level,
}

/// One census of a filesystem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Census {
    pub mount: PathBuf,
    /// Where the walk started: the mount point, or `--census PATH`.
    pub root: PathBuf,
    pub trigger: Trigger,
    /// The filesystem's level when the census started.
    pub level: Level,
    /// Seconds since the tracer's start when the census started.
    #[serde(serialize_with = "serialize_round3")]
    pub started_at_s: f64,
    #[serde(serialize_with = "serialize_round3")]
    pub elapsed_s: f64,
    /// `--census-budget`, seconds.
    #[serde(serialize_with = "serialize_round3")]
    pub budget_s: f64,
    /// The budget ran out: every count is a lower bound.
    pub partial: bool,
    /// Inodes found under `root` (each name once: a file with 2 hard links counts 2).
    pub inodes_counted: u64,
    /// The filesystem's inodes in use (statvfs) when the census started.
    pub fs_inodes_used: u64,
    pub directories: u64,
    /// Every file under `root` by age.
    pub ages: Ages,
    /// Most inodes in their subtree first.
    pub top_directories: Vec<CensusDirRow>,
    /// Directories not (fully) read, at most `--top` (`skipped_count` counts them all).
    pub skipped: Vec<SkippedRow>,
    pub skipped_count: u64,
    /// Entries deleted between the directory read and their stat.
    pub vanished: u64,
    /// Mount points met and not entered (their filesystems are not this one).
    pub mounts_not_crossed: u64,
}

/// A directory of the census: an element of `census[].top_directories`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CensusDirRow {
    pub path: PathBuf,
    /// Its own entries (files and directories directly in it).
    pub own_entries: u64,
    /// Inodes in its subtree, itself included.
    pub subtree_inodes: u64,
    /// `subtree_inodes` over the filesystem's inodes in use.
    #[serde(serialize_with = "serialize_round3")]
    pub share_pct: f64,
    /// Its subtree's files by age.
    pub ages: Ages,
    /// The user owning the most of its files, and that share.
    pub uid: Option<u32>,
    pub user: Option<String>,
    #[serde(serialize_with = "serialize_round3")]
    pub user_pct: f64,
    /// The container or pod it belongs to, when its path says.
    pub owner: Option<Owner>,
}

impl Row for CensusDirRow {
    const HEADER: &'static [&'static str] = &[
        "INODES",
        "SHARE",
        "OWN",
        "<1H",
        "<1D",
        "<1W",
        "OLDER",
        "USER",
        "DIRECTORY",
        "OWNER",
    ];
    fn cells(&self) -> Vec<String> {
        let a = &self.ages;
        let user = match (&self.user, self.uid) {
            (Some(u), _) => u.clone(),
            (None, Some(uid)) => uid.to_string(),
            _ => "-".into(),
        };
        vec![
            self.subtree_inodes.to_string(),
            format!("{:.1}%", self.share_pct),
            self.own_entries.to_string(),
            a.under_hour.to_string(),
            a.under_day.to_string(),
            a.under_week.to_string(),
            a.older.to_string(),
            user,
            self.path.display().to_string(),
            self.owner.as_ref().map_or("-".into(), Owner::text),
        ]
    }
}

/// A directory the census could not (fully) read: an element of `census[].skipped`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedRow {
    pub path: PathBuf,
    pub reason: SkipReason,
    pub detail: String,
}

impl Row for SkippedRow {
    const HEADER: &'static [&'static str] = &["SKIPPED", "REASON"];
    fn cells(&self) -> Vec<String> {
        vec![self.path.display().to_string(), self.detail.clone()]
    }
}

impl Census {
    /// The directory where the inodes are: the deepest directory below the root
    /// holding at least half of the census' inodes (`/data/cache/sessions` rather than
    /// `/data`), else the largest below the root, else the root.
    pub fn hot(&self) -> Option<&CensusDirRow> {
        let below = || self.top_directories.iter().filter(|d| d.path != self.root);
        (below())
            .filter(|d| d.subtree_inodes * 2 >= self.inodes_counted)
            .max_by_key(|d| d.path.components().count())
            .or_else(|| below().next())
            .or(self.top_directories.first())
    }

    /// The cleanup hint: the directory, its share, the age of its files, the command.
    pub fn hint(&self) -> Option<String> {
        let d = self.hot()?;
        let dir = d.path.display();
        let head = format!(
            "{dir} holds {:.0}% of the inodes of {}",
            d.share_pct,
            self.mount.display()
        );
        let who = d
            .owner
            .as_ref()
            .map_or(String::new(), |o| format!(" ({})", o.text()));
        Some(match d.ages.old_majority() {
            Some((b, pct, test)) => format!(
                "{head}{who}, {pct:.0}% {}: `ionice -c3 find {dir} -xdev -type f {test} -delete`",
                b.text()
            ),
            None => format!(
                "{head}{who}, most files younger than an hour: the writer is active; find it in \
                 TOP PROCESSES or with `fuser -vm {}`",
                self.mount.display()
            ),
        })
    }

    /// The census section of the text.
    pub fn text(&self) -> String {
        let mut t = format!(
            "\nINODE CENSUS of {} from {} ({}; {} inodes in {} directories in {:.1}s{}; \
             <1H/<1D/<1W/OLDER = files by mtime)\n",
            self.mount.display(),
            self.root.display(),
            match self.trigger {
                Trigger::Requested => "asked for".to_string(),
                Trigger::Level => format!(
                    "the filesystem reached {}",
                    format!("{:?}", self.level).to_uppercase()
                ),
            },
            self.inodes_counted,
            self.directories,
            self.elapsed_s,
            if self.partial {
                format!(", PARTIAL: the {:.0}s budget ran out", self.budget_s)
            } else {
                String::new()
            },
        );
        t += &crate::output::Table::of(&self.top_directories).render();
        if !self.skipped.is_empty() {
            t += &crate::output::Table::of(&self.skipped).render();
        }
        if self.skipped_count > self.skipped.len() as u64 || self.vanished > 0 {
            t += &format!(
                "  {} directories skipped, {} entries vanished during the walk\n",
                self.skipped_count, self.vanished
            );
        }
        t
    }
}

/// How the census runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--census PATH`: a census of PATH at the start.
    pub path: Option<PathBuf>,
    /// Census every filesystem reaching WARN (`--census off` turns it off).
    pub at_warn: bool,
    pub budget: Duration,
    pub top: usize,
}

/// The censuses of a run: one at a time on its own thread, each filesystem once.
pub struct Censuses {
    settings: Settings,
    clock: Instant,
    running: Option<(PathBuf, mpsc::Receiver<Census>)>,
    /// Devices censused (or being censused).
    started: HashSet<u32>,
    pub done: Vec<Census>,
}

mod run;
pub use run::settings_of;
