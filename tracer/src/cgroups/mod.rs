//! `tracer cgroups`: leaked and dying ("zombie") cgroups and who creates them (the
//! LinkedIn incident).
//!
//! The kernel sends one record per cgroup mkdir, rmdir and release (with the path and
//! the calling process) and counts them per hierarchy; task moves are only counted
//! per (destination, mover). Userspace keeps the dying ones (rmdir seen, release not
//! yet) with their rmdir time, and walks the mounted hierarchies at every report for
//! cgroup and dying counts (which include dying cgroups from before the start) and
//! empty leftovers.
mod autopsy;
mod autopsy_report;
mod build;
mod hints;
mod judge;
pub mod metrics;
mod pagecache;
pub mod pinned;
mod report;
pub mod rows;
mod state;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use tracer_common::{
    EventKind,
    cgroups::{AttachCount, AttachKey, CgroupEvent, count_slot},
};

use crate::{
    bpf::{self, Hook, Offset, Spec},
    procinfo,
    report::Body,
    run::{self, BadRecord, Detector, ReportCtx, RunOpts},
    snapshot::cgroups::{self as snap, Hierarchy, StatRead},
    tracefs::Tracefs,
    trend::Series,
};
pub use judge::Finding;
pub use report::{CgroupsReport, Churn, Evicted, StatReads, View};
use state::Tracker;

pub const SPEC: Spec = Spec {
    detector: "cgroups",
    prefix: "cgroups",
    hooks: &[
        Hook {
            program: "cgroups_mkdir",
            category: "cgroup",
            name: "cgroup_mkdir",
            required: true,
            purpose: "see cgroups created and by whom",
        },
        Hook {
            program: "cgroups_rmdir",
            category: "cgroup",
            name: "cgroup_rmdir",
            required: true,
            purpose: "see cgroups removed (dying from then on) and by whom",
        },
        Hook {
            program: "cgroups_release",
            category: "cgroup",
            name: "cgroup_release",
            required: true,
            purpose: "see removed cgroups freed, and time removal-to-free",
        },
        Hook {
            program: "cgroups_attach",
            category: "cgroup",
            name: "cgroup_attach_task",
            required: false,
            purpose: "count who moves tasks into which cgroup",
        },
        Hook {
            program: "cgroups_filemap_add",
            category: "filemap",
            name: "mm_filemap_add_to_page_cache",
            required: false,
            purpose: "name the files whose page cache pins dying memory cgroups",
        },
    ],
    offsets: &[
        Offset {
            global: "CGROUPS_ROOT",
            category: "cgroup",
            event: "cgroup_mkdir",
            field: "root",
        },
        Offset {
            global: "CGROUPS_LEVEL",
            category: "cgroup",
            event: "cgroup_mkdir",
            field: "level",
        },
        Offset {
            global: "CGROUPS_ID",
            category: "cgroup",
            event: "cgroup_mkdir",
            field: "id",
        },
        Offset {
            global: "CGROUPS_PATH",
            category: "cgroup",
            event: "cgroup_mkdir",
            field: "path",
        },
        Offset {
            global: "CGROUPS_ATTACH_ROOT",
            category: "cgroup",
            event: "cgroup_attach_task",
            field: "dst_root",
        },
        Offset {
            global: "CGROUPS_ATTACH_ID",
            category: "cgroup",
            event: "cgroup_attach_task",
            field: "dst_id",
        },
        Offset {
            global: "CGROUPS_FILEMAP_INO",
            category: "filemap",
            event: "mm_filemap_add_to_page_cache",
            field: "i_ino",
        },
        Offset {
            global: "CGROUPS_FILEMAP_DEV",
            category: "filemap",
            event: "mm_filemap_add_to_page_cache",
            field: "s_dev",
        },
    ],
    ring_bytes: 1 << 20,
    kinds: <tracer_common::cgroups::CgroupEvent as tracer_common::Record>::KINDS,
};

/// Find leaked (empty) and dying cgroups, who creates and removes them, and how long
/// removal-to-free takes.
///
/// Dying cgroups were removed (rmdir) but the kernel cannot free them yet, typically
/// because page cache is still charged to a memory cgroup; thousands of them slow down
/// cgroup creation, memory.stat reads and OOM handling. Counts per hierarchy include
/// dying cgroups from before the start (their individual age is unknown).
///
/// Examples:
///   tracer cgroups -d 30s                 # counts, churn, dying cgroups after 30 s
///   tracer cgroups --hierarchy memory -i 10s
///   tracer cgroups -d 1s --min-age 0s --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only this hierarchy: a v1 controller list as in /proc/self/cgroup ("memory",
    /// "name=systemd") or "cgroup2" (which holds every controller not bound to v1: on
    /// a pure cgroup2 host, memory is there).
    #[arg(long, value_name = "NAME")]
    pub hierarchy: Option<String>,
    /// Empty cgroups (no tasks, no children) older than this are listed as leftovers
    /// (systemd slices excepted: the manager keeps them empty by design).
    #[arg(long, value_parser = run::parse_age, default_value = "10m", value_name = "AGE")]
    pub min_age: Duration,
    /// A removed cgroup still dying after this long is stuck (the kernel frees most
    /// within seconds); so are cgroups dying since before the start once the tracer has
    /// run this long.
    #[arg(long, value_parser = run::parse_age, default_value = "30s", value_name = "AGE")]
    pub dying_age: Duration,
    /// Stuck cgroups are a finding from this many in one hierarchy (removed while
    /// tracing, or dying since before the start). A few stuck memcgs are normal on a busy
    /// host: a short-lived scope that first read a few pages of a binary keeps them
    /// charged until reclaim; hundreds piling up are the incident.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub dying_min: u64,
    /// A growing dying count is a finding only when sustained over at least this long
    /// (>= 10 samples, 1/s, rising in each third of the window).
    #[arg(long, value_parser = run::parse_age, default_value = "30s", value_name = "AGE")]
    pub trend_span: Duration,
    /// The autopsy's census of /proc/kpagecgroup (what dying memcgs still hold, about
    /// a few seconds per 24 GiB, at idle priority, on a thread of its own) starts again
    /// at a report when the last one is older than this (0s: whenever none runs);
    /// reports show the latest finished one and its age.
    #[arg(long, value_parser = run::parse_age, default_value = "10s", value_name = "AGE")]
    pub census_every: Duration,
    /// Rows per table in the text report (JSON lists more).
    #[arg(long, default_value = "10", value_parser = run::parse_top, value_name = "N")]
    pub top: usize,
    #[command(flatten)]
    pub run: RunOpts,
}

/// memory.stat reads this slow, every one of [`STAT_READS`] in a row, get a hint
/// (healthy hosts take well under 1 ms).
const SLOW_STAT: Duration = Duration::from_millis(10);
const STAT_READS: usize = 3;

/// How often the dying counts are sampled for their trend.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Rows of the JSON lists at most (dying, empty, released).
const JSON_ROWS: usize = 1_000;

/// Checks the options and says what to load; [`attach`] sets up the state once the
/// object is loaded.
pub fn prepare(args: Args) -> Result<run::Prepared> {
    let all = snap::hierarchies()?;
    let mut hierarchies = all.clone();
    if hierarchies.is_empty() {
        bail!(
            "no cgroup filesystem is mounted (none in /proc/self/mountinfo); mount one, e.g. \
             `mount -t cgroup2 none /sys/fs/cgroup`"
        );
    }
    let mut filter = 0;
    if let Some(name) = &args.hierarchy {
        let Some(h) = hierarchies.iter().find(|h| &h.name == name) else {
            // A v1 controller name on a host where that controller is on cgroup2.
            if let Some(v2) = hierarchies
                .iter()
                .find(|h| h.version == 2 && h.controllers.contains(name))
            {
                bail!(
                    "no mounted cgroup hierarchy is named `{name}`: the {name} controller is on \
                     cgroup2 here ({}); use `--hierarchy cgroup2`",
                    v2.mount.display()
                );
            }
            bail!(
                "no mounted cgroup hierarchy is named `{name}`; mounted: {}",
                hierarchies
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        filter = h.id + 1;
        let id = h.id;
        hierarchies.retain(|h| h.id == id);
    }
    // The page-cache program's globals (an optional field, BTF struct offsets).
    let (mut globals, pc_why) = match Tracefs::open() {
        Ok(t) => pagecache::globals(&t),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    globals.push(("CGROUPS_ROOT_FILTER", filter));
    Ok(run::Prepared {
        plan: bpf::Plan {
            globals,
            ..bpf::Plan::new(&SPEC)
        },
        ebpf_optional: false,
        opts: args.run.clone(),
        attach: Box::new(move |s| attach(args, all, hierarchies, pc_why, run::loaded(s)?)),
    })
}

/// Takes the maps and takes the first look at every hierarchy, after the hooks are
/// attached.
fn attach(
    args: Args,
    all: Vec<snap::Hierarchy>,
    hierarchies: Vec<snap::Hierarchy>,
    pc_why: Option<String>,
    session: &mut bpf::Session,
) -> Result<run::Attached> {
    same_layout(&session.tracefs)?;
    let counts = PerCpuArray::try_from(session.take_map("CGROUPS_COUNTS")?)?;
    let attach = BpfHashMap::try_from(session.take_map("CGROUPS_ATTACH")?)?;
    let pagecache = pagecache_maps(session, pc_why);
    let caveats = session
        .missing(&SPEC)
        .map(|h| format!("{} is missing: cannot {}", h.hook, h.purpose))
        .collect();
    // The first look after attaching: a cgroup removed in between is then counted as
    // dying by both the walk and the events, never by neither.
    let stat_start = snap::time_memory_stat(&all);
    let start: HashMap<u32, Option<u64>> = snap::hierarchies()?
        .into_iter()
        .map(|h| (h.id, h.dying))
        .collect();
    let mut det = Cgroups {
        args,
        hierarchies,
        tracker: Tracker::new(),
        counts,
        attach,
        caveats,
        dying_at_start: start,
        stat_start,
        actor_cgroups: HashMap::new(),
        dying_series: HashMap::new(),
        clock: Instant::now(),
        pagecache,
        namer: pagecache::Namer::default(),
        census: autopsy::Worker::default(),
    };
    det.sample()?;
    // The first census starts now: interval reports show it once it is done.
    if let Err(e) = det.census.start() {
        log::warn!("memcg census: {e:#}");
    }
    let what = match &det.args.hierarchy {
        Some(h) => format!("cgroup mkdir/rmdir/release in hierarchy {h}"),
        None => "cgroup mkdir/rmdir/release in every hierarchy".into(),
    };
    Ok(run::Attached {
        detector: Box::new(det),
        what,
    })
}

/// The kernel programs read cgroup_rmdir and cgroup_release at cgroup_mkdir's offsets
/// (one event class in the kernel); refuse to run if a kernel ever splits them.
fn same_layout(t: &Tracefs) -> Result<()> {
    let mkdir = t.format("cgroup", "cgroup_mkdir")?;
    for ev in ["cgroup_rmdir", "cgroup_release"] {
        let f = t.format("cgroup", ev)?;
        for field in ["root", "level", "id", "path"] {
            if f.offset(field)? != mkdir.offset(field)? {
                bail!(
                    "tracepoint cgroup:{ev} has field `{field}` at another offset than cgroup:cgroup_mkdir; \
                     this kernel's cgroup tracepoints are not supported"
                );
            }
        }
    }
    Ok(())
}

/// Actor cgroups cached at most (one /proc read per new creating process); cleared
/// when full, as the creators that churn are few and are read again.
const ACTOR_CACHE: usize = 4_096;

enum ActorCgroup {
    Path(String),
    /// The process was gone when its record arrived: its cgroup2 id from the kernel.
    Cgroup2(u64),
}

struct Cgroups {
    args: Args,
    hierarchies: Vec<Hierarchy>,
    tracker: Tracker,
    counts: PerCpuArray<MapData, u64>,
    attach: BpfHashMap<MapData, AttachKey, AttachCount>,
    caveats: Vec<String>,
    dying_at_start: HashMap<u32, Option<u64>>,
    stat_start: Option<StatRead>,
    /// pid -> its own cgroup, looked up when it first makes or removes a cgroup.
    actor_cgroups: HashMap<u32, ActorCgroup>,
    /// hierarchy id -> the kernel's dying count, sampled: the trend's evidence.
    dying_series: HashMap<u32, Series>,
    clock: Instant,
    /// The page-cache counters (Err: why files cannot be named).
    pagecache: Result<pagecache::Maps, String>,
    namer: pagecache::Namer,
    /// The census of dying memcgs' pages, taken in the background (`--census-every`).
    census: autopsy::Worker,
}

/// The page-cache map and counters when their hook is attached, else why not.
fn pagecache_maps(
    session: &mut bpf::Session,
    why: Option<String>,
) -> Result<pagecache::Maps, String> {
    if let Some(h) = session
        .missing(&SPEC)
        .find(|h| h.program == "cgroups_filemap_add")
    {
        return Err(format!("{} is missing", h.hook));
    }
    if let Some(why) = why {
        return Err(why);
    }
    let mut map = |n: &str| session.take_map(n).map_err(|e| format!("{e:#}"));
    let files = BpfHashMap::try_from(map("CGROUPS_PAGECACHE")?).map_err(|e| e.to_string())?;
    let counts = PerCpuArray::try_from(map("CGROUPS_PC_COUNTS")?).map_err(|e| e.to_string())?;
    Ok(pagecache::Maps { files, counts })
}

impl Cgroups {
    fn record_dying(&mut self, id: u32, dying: Option<u64>) {
        if let Some(d) = dying {
            let t = self.clock.elapsed().as_secs_f64();
            let keep = 2.0 * self.args.trend_span.as_secs_f64() + 1.0;
            self.dying_series
                .entry(id)
                .or_default()
                .push(t, d as f64, keep);
        }
    }

    fn count(&self, root: i32, kind: u32) -> u64 {
        self.counts
            .get(&count_slot(root, kind), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    fn name(&self, root: i32) -> String {
        self.hierarchies
            .iter()
            .find(|h| h.id as i32 == root)
            .map(|h| h.name.clone())
            .unwrap_or_else(|| format!("hierarchy {root}"))
    }

    /// The cgroup of a process that made or removed cgroups: from /proc when its first
    /// record arrived, else (it was gone already) its cgroup2 id from the kernel,
    /// named through `paths` (the last walk).
    fn actor_cgroup(&self, pid: u32, paths: &HashMap<(i32, u64), String>) -> String {
        match self.actor_cgroups.get(&pid) {
            Some(ActorCgroup::Path(p)) => p.clone(),
            Some(ActorCgroup::Cgroup2(id)) => {
                paths.get(&(0, *id)).cloned().unwrap_or_else(|| "-".into())
            }
            None => procinfo::cgroup_of(pid),
        }
    }
}

fn age_of(now_ns: u64, ts_ns: u64) -> f64 {
    now_ns.saturating_sub(ts_ns) as f64 / 1e9
}

impl Detector for Cgroups {
    fn command(&self) -> &'static str {
        "cgroups"
    }

    fn sample_every(&self) -> Option<Duration> {
        Some(SAMPLE_EVERY)
    }

    fn sample(&mut self) -> Result<()> {
        let wanted: Vec<u32> = self.hierarchies.iter().map(|h| h.id).collect();
        for h in snap::hierarchies()? {
            if wanted.contains(&h.id) {
                self.record_dying(h.id, h.dying);
            }
        }
        Ok(())
    }

    fn on_event(&mut self, data: &[u8]) -> Result<(), BadRecord> {
        let (kind, ev) = run::decode::<CgroupEvent>(data)?;
        let pid = ev.header.tgid;
        let actor = matches!(kind, EventKind::CgroupMkdir | EventKind::CgroupRmdir);
        if actor && !self.actor_cgroups.contains_key(&pid) {
            if self.actor_cgroups.len() >= ACTOR_CACHE {
                self.actor_cgroups.clear();
            }
            let c = match procinfo::cgroup_of(pid) {
                p if p != "-" => ActorCgroup::Path(p),
                _ => ActorCgroup::Cgroup2(ev.caller_cgroup2),
            };
            self.actor_cgroups.insert(pid, c);
        }
        self.tracker.on_record(kind, &ev);
        Ok(())
    }

    fn report(&mut self, ctx: &ReportCtx) -> Result<Box<dyn Body>> {
        Ok(Box::new(self.build(ctx)?))
    }
}
