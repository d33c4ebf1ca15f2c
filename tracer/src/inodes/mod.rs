//! `tracer inodes`: which filesystems run out of inodes and how fast, which processes
//! (and containers) create the inodes, in which directories, and which creates already
//! fail with ENOSPC (the Sentry incident: `df -h` shows space, every create fails).
//!
//! The kernel side counts ext4 inode allocations and frees per (filesystem, process)
//! and per (filesystem, parent directory), and failed creates per (filesystem,
//! process), in maps read once per report: no per-file copy to userspace. Usage and
//! levels come from statvfs of every inode-limited filesystem. Without the ext4
//! tracepoints (ext4 not loaded) usage, rates, ETA and ENOSPC still work, and the
//! per-process and per-directory counts are marked unavailable with the reason.
mod build;
pub mod census;
mod counts;
pub mod creates;
mod dirs;
mod judge;
mod made;
pub mod metrics;
mod report;
pub mod rows;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use aya::maps::{MapData, PerCpuHashMap};
use tracer_common::{
    EventKind, comm_str,
    inodes::{DEV_CAPACITY, DevCounts, DevTgid, DirKey, ENOSPC_CAPACITY, PathEvent, ProcCounts},
};

use crate::{
    bounded::Lru,
    bpf::{self, Hook, Offset, Spec},
    procinfo,
    report::Body,
    run::{self, BadRecord, Detector, ReportCtx, RunOpts},
    snapshot::inodes::{self as snap, FsUsage, Mount},
    tracefs::Tracefs,
    trend::Series,
};
use counts::entries;
pub use creates::{CHOICES, CreationHook, Creations};
use dirs::Resolver;
pub use report::{Evicted, Ext4Attribution, InodesReport, View};

/// The ext4 hooks, then one enter and one exit hook per create-type syscall; all
/// optional. The ext4:* tracepoints exist only while the ext4 code is in the kernel
/// (a module on most distributions: loaded by the first ext4 mount); without them the
/// detector still reports usage, rate and ETA from statvfs and ENOSPC from the syscall
/// hooks, for every filesystem, and marks ext4 attribution unavailable with the reason.
macro_rules! syscall_hooks {
    ($($name:literal),* $(,)?) => {
        &[
            Hook {
                program: "inodes_alloc",
                category: "ext4",
                name: "ext4_allocate_inode",
                required: false,
                purpose: "count inodes allocated per process and directory",
            },
            Hook {
                program: "inodes_free",
                category: "ext4",
                name: "ext4_free_inode",
                required: false,
                purpose: "count inodes freed per process",
            },
            Hook {
                program: "inodes_request",
                category: "ext4",
                name: "ext4_request_inode",
                required: false,
                purpose: "tell which ext4 filesystem a failed create was on",
            },
            $(
                Hook {
                    program: concat!("inodes_enter_", $name),
                    category: "syscalls",
                    name: concat!("sys_enter_", $name),
                    required: false,
                    purpose: concat!("name directories by the path given to ", $name, "()"),
                },
                Hook {
                    program: concat!("inodes_exit_", $name),
                    category: "syscalls",
                    name: concat!("sys_exit_", $name),
                    required: false,
                    purpose: concat!("count ", $name, "() calls that fail with ENOSPC"),
                },
            )*
        ]
    };
}

// 23 hooks make inodes the slowest detector to exit, and that stays. `tracer inodes
// -d 2s` (2026-12-01, host 6.18, medians of 5): report at 2.15 s, exit at 3.12 s while
// the 2 cores were busy with other builds, 2.13-2.20 s when they were quiet. The
// time is the kernel's, not ours: releasing a tracepoint's perf event waits for RCU
// grace periods (tracepoint_synchronize_unregister) under trace's event_mutex, so the
// 23 detaches (in parallel threads, see bpf::Session's Drop) still run one after the
// other: ~2 ms each when quiet, ~40 ms each (0.93 s in all) when busy. The other way,
// raw_syscalls:sys_enter/sys_exit (2 hooks for the 20 syscall ones), runs a program
// on every syscall of the machine: empty bpftrace probes there made `dd bs=1
// count=1M` (2M syscalls) take 1.61 s against 0.49 s alone (3.3x), while empty probes
// on sys_enter/sys_exit_openat cost nothing measurable (0.45 s; medians of 3).
pub const SPEC: Spec = Spec {
    detector: "inodes",
    prefix: "inodes",
    hooks: syscall_hooks!(
        "openat",
        "open",
        "creat",
        "openat2",
        "mkdirat",
        "mkdir",
        "mknodat",
        "mknod",
        "symlinkat",
        "symlink",
    ),
    offsets: &[
        Offset {
            global: "INODES_ALLOC_DEV",
            category: "ext4",
            event: "ext4_allocate_inode",
            field: "dev",
        },
        Offset {
            global: "INODES_ALLOC_DIR",
            category: "ext4",
            event: "ext4_allocate_inode",
            field: "dir",
        },
        Offset {
            global: "INODES_FREE_DEV",
            category: "ext4",
            event: "ext4_free_inode",
            field: "dev",
        },
        Offset {
            global: "INODES_REQUEST_DEV",
            category: "ext4",
            event: "ext4_request_inode",
            field: "dev",
        },
        Offset {
            global: "INODES_SYSCALL_ARG0",
            category: "syscalls",
            event: "sys_enter_openat",
            field: "dfd",
        },
        Offset {
            global: "INODES_SYSCALL_RET",
            category: "syscalls",
            event: "sys_exit_openat",
            field: "ret",
        },
    ],
    // Only the first inode of each directory and the first ENOSPC of each process
    // send a record (312 bytes): room for ~3,000 new directories between drains.
    ring_bytes: 1 << 20,
    kinds: <tracer_common::inodes::PathEvent as tracer_common::Record>::KINDS,
};

/// Find which filesystem runs out of inodes, who creates the files, and where.
///
/// Counts ext4 inode allocations and frees per process and per directory in the
/// kernel, creates that fail with ENOSPC, and inode/block usage of every mounted
/// inode-limited filesystem (ext2/3/4, xfs, tmpfs, ...) with a time-to-exhaustion.
///
/// Examples:
///   tracer inodes                      # until Ctrl-C
///   tracer inodes -d 30s --fs /var     # one filesystem
///   tracer inodes -i 10s --json        # a JSON report every 10 seconds
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only this filesystem (its mount point).
    #[arg(long = "fs", value_name = "MOUNTPOINT")]
    pub fs: Option<PathBuf>,
    /// Rows per table (processes, directories, failures).
    #[arg(long, default_value = "10", value_parser = run::parse_top, value_name = "N")]
    pub top: usize,
    /// WARN/CRIT (and the inodes-full-blocks-free flag) need usage over the threshold in
    /// every sample (1/s) of this long; a full filesystem is CRIT at once.
    #[arg(long, value_parser = run::parse_age, default_value = "10s", value_name = "AGE")]
    pub level_hold: Duration,
    /// The exhaustion ETA needs sustained growth over at least this long (>= 10
    /// samples, rising in each third of the window); else "no sustained growth".
    #[arg(long, value_parser = run::parse_age, default_value = "30s", value_name = "AGE")]
    pub trend_span: Duration,
    /// Where the inodes are now: `warn` walks each filesystem that reaches WARN (once
    /// per run), `off` never, a directory: walk it at the start whatever its level.
    #[arg(long, default_value = "warn", value_name = "warn|off|PATH")]
    pub census: String,
    /// The longest a census walks (at idle I/O priority); past it the census is partial.
    #[arg(long, value_parser = run::parse_age, default_value = "10s", value_name = "AGE")]
    pub census_budget: Duration,
    #[command(flatten)]
    pub run: RunOpts,
}

/// Checks the options and says what to load; [`attach`] sets up the state once the
/// object is loaded.
pub fn prepare(args: Args) -> Result<run::Prepared> {
    let target = match &args.fs {
        Some(p) => Some(snap::filesystem_at(p).map_err(|e| {
            anyhow!(
                "{e:#}; --fs takes the directory a filesystem is mounted on (`findmnt` lists them)"
            )
        })?),
        None => None,
    };
    let census = census::settings_of(&args)?;
    let mut globals = vec![("INODES_TARGET_DEV", target.as_ref().map_or(0, |t| t.dev))];
    // Without the offsets the creation programs stay off: ext4 only, as before.
    let offsets_missing = match creates::globals() {
        Ok(g) => {
            globals.extend(g);
            None
        }
        Err(e) => Some(format!("{e:#}")),
    };
    Ok(run::Prepared {
        plan: bpf::Plan {
            globals,
            choices: CHOICES.to_vec(),
            ..bpf::Plan::new(&SPEC)
        },
        ebpf_optional: false,
        opts: args.run.clone(),
        attach: Box::new(move |s| attach(args, target, census, offsets_missing, run::loaded(s)?)),
    })
}

/// Takes the maps and the usage at the start, after the hooks are attached.
fn attach(
    args: Args,
    target: Option<FsUsage>,
    census: census::Settings,
    offsets_missing: Option<String>,
    session: &mut bpf::Session,
) -> Result<run::Attached> {
    let ext4_attached = session
        .hooks
        .iter()
        .any(|h| h.program == "inodes_alloc" && h.state == bpf::HookState::Attached);
    let ext4_missing = (!ext4_attached).then(|| ext4_missing_reason(&session.tracefs));
    let creations = creates::start(session, ext4_attached, offsets_missing.as_deref())?;
    let mut caveats: Vec<String> = session
        .missing(&SPEC)
        .filter(|h| !h.hook.starts_with("ext4:"))
        .map(|h| format!("{} is missing: cannot {}", h.hook, h.purpose))
        .collect();
    let untraced = creations.hook == CreationHook::None;
    if let Some(t) = (target.as_ref()).filter(|t| untraced && !t.fstype.starts_with("ext")) {
        caveats.push(format!(
            "{} is {}, not ext4: usage and ENOSPC failures are shown, but allocations are \
             only traced per process and directory on ext4 here ({})",
            t.mount.display(),
            t.fstype,
            creations.detail
        ));
    }
    let mut det = Inodes {
        procs: PerCpuHashMap::try_from(session.take_map("INODES_PROCS")?)?,
        dirs: PerCpuHashMap::try_from(session.take_map("INODES_DIRS")?)?,
        devs: PerCpuHashMap::try_from(session.take_map("INODES_DEVS")?)?,
        enospc: PerCpuHashMap::try_from(session.take_map("INODES_ENOSPC")?)?,
        enospc_first: Lru::new(ENOSPC_CAPACITY as usize),
        dev_base: HashMap::new(),
        start_usage: HashMap::new(),
        previous: HashMap::new(),
        resolver: Resolver::default(),
        made: made::Made::default(),
        own_root: std::fs::metadata("/").ok().map(|md| made::Placed {
            dev: snap::kernel_dev_of(&md),
            ino: std::os::unix::fs::MetadataExt::ino(&md),
        }),
        place_on: HashSet::new(),
        ext4_missing,
        creations,
        tracefs: session.tracefs.clone(),
        caveats,
        target,
        top: args.top,
        rules: judge::Rules {
            hold_s: args.level_hold.as_secs_f64(),
            span_s: args.trend_span.as_secs_f64().max(1.0),
        },
        used: HashMap::new(),
        clock: Instant::now(),
        census: census::Censuses::new(census, Instant::now()),
    };
    // The kernel counts from the first attach, and attaching the other hooks takes a
    // while (seconds on a slow or emulated machine): the rates count from here, where
    // the report's clock starts, so they are per second of the same window.
    let mut none = Vec::new();
    det.dev_base = entries(&det.devs, "per-filesystem", DEV_CAPACITY, &mut none)
        .into_iter()
        .collect();
    // Usage at the start, for the rate of filesystems whose allocations are not traced.
    for f in det.filesystems(&snap::mounts()?) {
        det.start_usage.insert(f.dev, (0.0, f.inodes_used));
    }
    det.clock = Instant::now();
    det.sample()?;
    det.census_asked(&snap::mounts()?)?;
    let what = match &det.target {
        Some(t) => format!(
            "inode allocations, frees and ENOSPC on {}",
            t.mount.display()
        ),
        None => "inode allocations, frees and ENOSPC".into(),
    };
    Ok(run::Attached {
        detector: Box::new(det),
        what,
    })
}

struct Inodes {
    procs: PerCpuHashMap<MapData, DevTgid, ProcCounts>,
    dirs: PerCpuHashMap<MapData, DirKey, u64>,
    devs: PerCpuHashMap<MapData, u32, DevCounts>,
    enospc: PerCpuHashMap<MapData, DevTgid, u64>,
    /// (dev, tgid) -> comm and path (absolute when it could be made so) of the first
    /// failed create, from the kernel's record; as many as the kernel's INODES_ENOSPC
    /// map holds counts for, the least recently failing evicted first (as there).
    enospc_first: Lru<DevTgid, (String, String)>,
    /// dev -> the kernel's per-filesystem counts when the report clock started.
    dev_base: HashMap<u32, DevCounts>,
    /// dev -> (seconds since the start when first seen, inodes used then): the start,
    /// or the first report after it was mounted.
    start_usage: HashMap<u32, (f64, u64)>,
    /// Why the ext4 hooks are not attached (None: they are).
    ext4_missing: Option<String>,
    /// How creations on the other filesystems are counted (creates.rs).
    creations: creates::Counting,
    tracefs: Tracefs,
    /// dev -> (report time, net inodes since the start) of the previous report.
    previous: HashMap<u32, (f64, f64)>,
    resolver: Resolver,
    /// mkdir/mknod/symlink placed in userspace (made.rs), on the syscall path.
    made: made::Made,
    /// (dev, ino) of the tracer's "/".
    own_root: Option<made::Placed>,
    /// The filesystems those are counted on (as the kernel counts the opens: those with
    /// an inode count, not ext4 while its tracepoints count it), from the last sample.
    place_on: HashSet<u32>,
    caveats: Vec<String>,
    target: Option<FsUsage>,
    top: usize,
    rules: judge::Rules,
    /// dev -> inodes used, sampled every SAMPLE_EVERY and at each report: the evidence
    /// for levels and the ETA.
    used: HashMap<u32, Series>,
    /// The samples' clock.
    clock: Instant,
    /// Where the inodes are (census.rs).
    census: census::Censuses,
}

/// How often usage is sampled for the trend and the level floor.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Why the ext4 tracepoints are missing, in one sentence: the module is not loaded (no
/// ext4 in /proc/filesystems), or this tracefs has no ext4 events.
fn ext4_missing_reason(tracefs: &Tracefs) -> String {
    let loaded = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some("ext4"))
    });
    if loaded {
        format!(
            "ext4 tracepoints missing: ext4 is in the kernel (/proc/filesystems) but {} has no \
             events/ext4",
            tracefs.root().display()
        )
    } else {
        "ext4 tracepoints missing: the ext4 module is not loaded (no ext4 in /proc/filesystems; \
         an ext4 mount or `modprobe ext4` loads it, then restart `tracer inodes`)"
            .into()
    }
}

/// What the report says about per-process and per-directory ext4 attribution.
pub(crate) const EXT4_FALLBACK: &str = "usage, NET/S and ETA from statvfs, ENOSPC from the \
     create syscalls' return values, for every filesystem";

impl Inodes {
    /// Records the usage of `fss` now in their series (kept for twice the longest
    /// window the judgements look at).
    fn record(&mut self, fss: &[FsUsage]) {
        let t = self.clock.elapsed().as_secs_f64();
        let keep = 2.0 * self.rules.span_s.max(self.rules.hold_s) + 1.0;
        for f in fss {
            self.used
                .entry(f.dev)
                .or_default()
                .push(t, f.inodes_used as f64, keep);
        }
        self.used.retain(|dev, _| fss.iter().any(|f| f.dev == *dev));
    }

    fn filesystems(&self, mounts: &[Mount]) -> Vec<FsUsage> {
        let mut all = snap::filesystems_of(mounts);
        if let Some(t) = &self.target {
            all.retain(|f| f.dev == t.dev);
        }
        all
    }

    fn mount_name(dev: u32, mounts: &[Mount]) -> String {
        match mounts.iter().find(|m| m.dev == dev) {
            Some(m) => m.mount.display().to_string(),
            None => format!("dev {}:{}", dev >> 20, dev & 0xfffff),
        }
    }
}

fn cgroup(pid: u32) -> String {
    if procinfo::exists(pid) {
        procinfo::cgroup_of(pid)
    } else {
        "exited".into()
    }
}

/// Keeps the comm and path of a process's first failed create on a filesystem; a later
/// failure only makes the entry the most recently used.
fn remember_enospc(first: &mut Lru<DevTgid, (String, String)>, ev: &PathEvent) {
    let key = DevTgid {
        dev: ev.dev,
        tgid: ev.header.tgid,
    };
    first.entry(key, || {
        let path = dirs::absolute(&ev.first)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| comm_str(&ev.first.path).to_string());
        (comm_str(&ev.comm).to_string(), path)
    });
}

impl Inodes {
    /// A mkdir/mknod/symlink that worked (the syscall path): placed and counted, or
    /// counted as not placed.
    fn made_at(&mut self, ev: &PathEvent) {
        let Some(at) = made::place(ev, self.own_root.as_ref()) else {
            self.made.unplaced += 1;
            return;
        };
        if !self.place_on.contains(&at.dev) {
            return;
        }
        self.made.add(ev, &at);
        match made::known_path(ev, &at, self.own_root.as_ref()) {
            Some(p) => self.resolver.known(at.dev, at.ino, p),
            None => self.resolver.try_syscall(at.dev, at.ino, &ev.first),
        }
    }
}

impl Detector for Inodes {
    fn command(&self) -> &'static str {
        "inodes"
    }

    fn sample_every(&self) -> Option<Duration> {
        Some(SAMPLE_EVERY)
    }

    fn sample(&mut self) -> Result<()> {
        let fss = self.filesystems(&snap::mounts()?);
        let ext4_traced = self.ext4_missing.is_none();
        self.place_on = (fss.iter())
            .filter(|f| !(ext4_traced && f.fstype.starts_with("ext")))
            .map(|f| f.dev)
            .collect();
        self.record(&fss);
        self.census_at_levels(fss);
        Ok(())
    }

    fn on_event(&mut self, data: &[u8]) -> Result<(), BadRecord> {
        let (kind, ev) = run::decode::<PathEvent>(data)?;
        match kind {
            // Resolve now: a relative path needs the process's cwd, which goes with it.
            EventKind::InodesNewDir => self.resolver.try_syscall(ev.dev, ev.ino, &ev.first),
            EventKind::InodesEnospc => {
                remember_enospc(&mut self.enospc_first, &ev);
            }
            EventKind::InodesMadeAt => self.made_at(&ev),
            _ => {}
        }
        Ok(())
    }

    fn report(&mut self, ctx: &ReportCtx) -> Result<Box<dyn Body>> {
        Ok(Box::new(self.build(ctx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use build::{FsRow, hints};

    fn row(mount: &str, used: u64) -> FsRow {
        let u = FsUsage {
            mount: mount.into(),
            device: "/dev/x".into(),
            fstype: "ext4".into(),
            dev: 1,
            major: 0,
            minor: 1,
            inodes_total: 100,
            inodes_used: used,
            blocks_total: 100,
            blocks_used: 1,
            block_size: 4096,
        };
        let mut s = crate::trend::Series::default();
        s.push(0.0, used as f64, 60.0);
        let rules = judge::Rules {
            hold_s: 10.0,
            span_s: 30.0,
        };
        FsRow {
            judged: judge::judge(&u, &s, rules),
            u,
            net: 0.0,
            recent: None,
            source: rows::RateSource::Ebpf,
            allocated: None,
            freed: None,
        }
    }

    #[test]
    fn hints_name_the_top_directory_of_the_full_filesystem() {
        let rows = [row("/data", 100), row("/", 10)];
        let dirs = [
            ("/".to_string(), "/var/busy".to_string()),
            ("/data".to_string(), "/data/cache".to_string()),
        ];
        let h = hints(&rows, &dirs, true);
        assert!(h[0].contains("find /data/cache -xdev"), "{h:?}");
        assert!(h.iter().any(|l| l.contains("mkfs.ext4 -i")));
        // Nothing in trouble and no failures: no advice.
        assert!(hints(&[row("/", 10)], &dirs, false).is_empty());
    }

    #[test]
    fn first_enospc_paths_are_capped_like_the_kernel_map() {
        use tracer_common::{EventHeader, inodes::PathArg};
        let ev = |tgid: u32, path: &str| {
            let mut first = PathArg {
                tgid,
                ..Default::default()
            };
            first.path[..path.len()].copy_from_slice(path.as_bytes());
            PathEvent {
                header: EventHeader {
                    kind: EventKind::InodesEnospc as u32,
                    tgid,
                    ts_ns: 1,
                },
                dev: 7 << 20,
                _pad: 0,
                ino: 0,
                comm: [b'x'; tracer_common::COMM_LEN],
                first,
            }
        };
        let cap = ENOSPC_CAPACITY as usize;
        let mut first = Lru::new(cap);
        for tgid in 1..=cap as u32 + 40 {
            remember_enospc(&mut first, &ev(tgid, "/full/a"));
        }
        assert_eq!(first.len(), cap);
        assert_eq!(first.evicted(), 40);
        let key = |tgid| DevTgid { dev: 7 << 20, tgid };
        assert!(first.get(&key(40)).is_none(), "the least recent went first");
        // A later failure keeps the first path and makes its key recent again.
        remember_enospc(&mut first, &ev(41, "/full/b"));
        remember_enospc(&mut first, &ev(1_000_000, "/full/c"));
        assert_eq!(first.get(&key(41)).map(|v| v.1.as_str()), Some("/full/a"));
        assert!(first.get(&key(42)).is_none());
    }
}
