//! `tracer zombies`: which parents leave children unreaped, how many, for how long,
//! and how close the host is to PID exhaustion (the Uber incident).
//!
//! The kernel side sends one record per whole-process exit and one per reap; forks,
//! wait calls and SIGCHLDs are counted in kernel maps read once per report. Zombies are
//! confirmed against /proc (state Z, same start time) when a report is built, so a
//! lost reap record or a reused pid can never invent a zombie.
pub mod ages;
pub mod init;
mod judge;
pub mod metrics;
mod report;
pub mod rows;
mod state;
// PID budgets per pids cgroup and forks refused with EAGAIN (issue 22).
pub mod budget_metrics;
pub mod budgets;
mod pid_section;
pub mod refusals;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use aya::maps::{HashMap as BpfHashMap, PerCpuArray};
use tracer_common::zombies::{
    COUNT_EXIT_READ_FAILED, COUNT_EXITS, COUNT_FORKS, EXIT_BY_FIELD, EXIT_BY_SIGNAL_LIVE,
    ParentCounters,
};

use crate::{
    bpf::{self, Hook, Offset, Spec},
    kbtf::KernelBtf,
    output::{self, round3},
    procinfo,
    report::Body,
    run::{self, BadRecord, Detector, ReportCtx, RunOpts},
    tracefs::Tracefs,
    trend::{self, Series},
};
use judge::StuckRule;
pub use report::{Evicted, Pids, ReaperRow, View, ZombiesReport};
use rows::{ParentRow, PidsCgroup, ZombieRow};
use state::{Census, Tracker};

/// The age below which no zombie is a finding (see judge::STUCK_FLOOR); triage uses it.
pub const STUCK_FLOOR_S: f64 = judge::STUCK_FLOOR.as_secs_f64();

pub const SPEC: Spec = Spec {
    detector: "zombies",
    prefix: "zombies",
    hooks: &[
        Hook {
            program: "zombies_fork",
            category: "sched",
            name: "sched_process_fork",
            required: true,
            purpose: "learn each child's parent and the fork rate",
        },
        Hook {
            program: "zombies_exit",
            category: "sched",
            name: "sched_process_exit",
            required: true,
            purpose: "see processes exit (become zombies)",
        },
        Hook {
            program: "zombies_free",
            category: "sched",
            name: "sched_process_free",
            required: true,
            purpose: "see exited processes released",
        },
        Hook {
            program: "zombies_wait4_exit",
            category: "syscalls",
            name: "sys_exit_wait4",
            required: false,
            purpose: "time reaps exactly and name the reaper (else release time is used)",
        },
        Hook {
            program: "zombies_wait",
            category: "sched",
            name: "sched_process_wait",
            required: false,
            purpose: "count wait calls per parent",
        },
        Hook {
            program: "zombies_signal",
            category: "signal",
            name: "signal_generate",
            required: false,
            purpose: "count SIGCHLDs sent to parents",
        },
        // Forks refused with EAGAIN (issue 22): optional, one per syscall.
        pid_section::HOOKS[0],
        pid_section::HOOKS[1],
        pid_section::HOOKS[2],
        pid_section::HOOKS[3],
    ],
    offsets: &[
        Offset {
            global: "ZOMBIES_FORK_CHILD_PID",
            category: "sched",
            event: "sched_process_fork",
            field: "child_pid",
        },
        Offset {
            global: "ZOMBIES_FREE_PID",
            category: "sched",
            event: "sched_process_free",
            field: "pid",
        },
        Offset {
            global: "ZOMBIES_WAIT4_RET",
            category: "syscalls",
            event: "sys_exit_wait4",
            field: "ret",
        },
        Offset {
            global: "ZOMBIES_SIGNAL_SIG",
            category: "signal",
            event: "signal_generate",
            field: "sig",
        },
        Offset {
            global: "ZOMBIES_SIGNAL_PID",
            category: "signal",
            event: "signal_generate",
            field: "pid",
        },
        refusal_ret("ZOMBIES_CLONE_RET", "sys_exit_clone"),
        refusal_ret("ZOMBIES_CLONE3_RET", "sys_exit_clone3"),
        refusal_ret("ZOMBIES_FORK_RET", "sys_exit_fork"),
        refusal_ret("ZOMBIES_VFORK_RET", "sys_exit_vfork"),
    ],
    ring_bytes: 1 << 20,
    kinds: &[
        tracer_common::EventKind::ProcessExit,
        tracer_common::EventKind::ProcessReap,
        tracer_common::EventKind::ForkRefused,
    ],
};

/// The `ret` field of a fork syscall's exit tracepoint (issue 22's refusal hooks).
const fn refusal_ret(global: &'static str, event: &'static str) -> Offset {
    Offset {
        global,
        category: "syscalls",
        event,
        field: "ret",
    }
}

/// Find parents that never reap their children, and how close PID exhaustion is.
///
/// Watches process exits and reaps in the kernel, counts wait() calls and SIGCHLDs per
/// parent, and confirms zombies in /proc. Zombies that existed before the start are
/// included, dated by the kernel (/proc/PID/sched's se.exec_start: when they last ran,
/// i.e. exited); where the kernel cannot tell, their age is a lower bound (">=").
///
/// Every child is a zombie until its parent reaps it, usually for microseconds. A
/// zombie is "stuck" (evidence of a non-reaping parent) only when older than 5 s and
/// than twice the slowest reap that parent was seen to make (at most 60 s); younger
/// ones are "in flight". PID exhaustion is forecast only from stuck zombies growing
/// steadily over --trend-span (default 30 s: >= 10 samples, rising in each third of
/// the window); otherwise the report says "no sustained growth".
///
/// Examples:
///   tracer zombies --parent            # who leaves zombies behind (until Ctrl-C)
///   tracer zombies -d 10s --json       # one JSON report after 10 seconds
///   tracer zombies -p 1234 --min-age 1s
///   tracer zombies --stuck-after 10s   # a fixed age instead of the measured pace
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Group the report by parent process (the non-reaping parents and what to do).
    #[arg(long)]
    pub parent: bool,
    /// Only children of this parent pid.
    #[arg(short = 'p', long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Hide zombies younger than this (e.g. 1s, 500ms).
    #[arg(long, value_parser = run::parse_age, default_value = "0s", value_name = "AGE")]
    pub min_age: Duration,
    /// Call a zombie stuck (its parent not reaping) once older than AGE, for every
    /// parent. Default: older than 5 s and than twice the parent's slowest observed
    /// reap, at most 60 s.
    #[arg(long, value_parser = run::parse_duration, value_name = "AGE")]
    pub stuck_after: Option<Duration>,
    /// Forecast PID exhaustion only when stuck zombies grew steadily over at least this
    /// long (>= 10 samples, rising in each third of the window).
    #[arg(long, value_parser = run::parse_duration, default_value = "30s", value_name = "DURATION")]
    pub trend_span: Duration,
    #[command(flatten)]
    pub run: RunOpts,
}

/// Checks the options and says what to load; [`attach`] sets up the state once the
/// object is loaded.
pub fn prepare(args: Args) -> Result<run::Prepared> {
    if let Some(pid) = args.pid
        && (pid == 0 || !procinfo::exists(pid))
    {
        bail!("no process with pid {pid} exists; pass the pid of a running parent to -p/--pid");
    }
    bpf::require_privileges(SPEC.detector, &[SPEC.detector])?;
    let exit = ExitPath::probe(&Tracefs::open()?)?;
    let mut globals = exit.globals();
    globals.push(("ZOMBIES_TARGET_PPID", args.pid.unwrap_or(0)));
    Ok(run::Prepared {
        plan: bpf::Plan {
            globals,
            ..bpf::Plan::new(&SPEC)
        },
        ebpf_optional: false,
        opts: args.run.clone(),
        attach: Box::new(move |s| attach(args, exit, run::loaded(s)?)),
    })
}

/// Takes the maps and seeds the state from /proc, after the hooks are attached.
fn attach(args: Args, exit: ExitPath, session: &mut bpf::Session) -> Result<run::Attached> {
    let counters = BpfHashMap::try_from(session.take_map("ZOMBIES_COUNTERS")?)?;
    let counts = PerCpuArray::try_from(session.take_map("ZOMBIES_COUNTS")?)?;
    let caveats = session
        .missing(&SPEC)
        .map(|h| format!("{} is missing: cannot {}", h.hook, h.purpose))
        .collect();
    // Scan /proc only after the hooks are attached: a zombie made in between is then
    // seen twice (event and scan), never zero times.
    let mut tracker = Tracker::new(args.pid, procinfo::ticks_per_second(), boot_offset_ns());
    tracker.seed(procinfo::all_stats(), procinfo::monotonic_ns());
    let mut dater = ages::Dater::new(procinfo::ticks_per_second());
    tracker.date_seeded(procinfo::monotonic_ns(), |pid, start| dater.age(pid, start));
    let rule = args.stuck_after.map_or(StuckRule::Auto, StuckRule::Fixed);
    let det = Zombies {
        args,
        rule,
        tracker,
        counters,
        counts,
        caveats,
        exit,
        started: Instant::now(),
        samples: Series::default(),
        pid_section: pid_section::PidSection::attach(session)?,
    };
    let what = match det.args.pid {
        Some(p) => format!("exits and reaps of children of pid {p}"),
        None => "process exits and reaps".into(),
    };
    Ok(run::Attached {
        detector: Box::new(det),
        what,
    })
}

/// How this kernel shows that a process (its last thread) exited.
#[derive(Clone, Copy, Debug)]
pub enum ExitPath {
    /// sched_process_exit's `group_dead` field, at this offset.
    GroupDeadField(u32),
    /// `current->signal->live == 0` at sched_process_exit, at these BTF offsets of
    /// `task_struct.signal` and `signal_struct.live` (kernels without `group_dead`).
    SignalLive { signal: u32, live: u32 },
}

impl ExitPath {
    /// The exact way this kernel allows: the tracepoint field, else the task's signal
    /// struct read at offsets from kernel BTF; without either, one sentence.
    pub fn probe(tracefs: &Tracefs) -> Result<Self> {
        if let Ok(off) = tracefs
            .format("sched", "sched_process_exit")
            .and_then(|f| f.offset("group_dead"))
        {
            return Ok(Self::GroupDeadField(off));
        }
        let btf = KernelBtf::from_sys_fs().and_then(|b| {
            Ok(Self::SignalLive {
                signal: b.member_offset("task_struct", "signal")?,
                live: b.member_offset("signal_struct", "live")?,
            })
        });
        btf.map_err(|e| {
            anyhow::anyhow!(
                "sched:sched_process_exit has no group_dead field on this kernel and the \
                 fallback (task->signal->live from kernel BTF) is unavailable: {e:#}"
            )
        })
    }

    fn globals(self) -> Vec<(&'static str, u32)> {
        match self {
            Self::GroupDeadField(off) => vec![
                ("ZOMBIES_EXIT_MODE", EXIT_BY_FIELD),
                ("ZOMBIES_EXIT_GROUP_DEAD", off),
            ],
            Self::SignalLive { signal, live } => vec![
                ("ZOMBIES_EXIT_MODE", EXIT_BY_SIGNAL_LIVE),
                ("ZOMBIES_TASK_SIGNAL", signal),
                ("ZOMBIES_SIGNAL_LIVE", live),
            ],
        }
    }

    /// What reports and doctor say about the path taken.
    pub fn describe(self) -> &'static str {
        match self {
            Self::GroupDeadField(_) => "sched_process_exit group_dead field",
            Self::SignalLive { .. } => {
                "sched_process_exit + task->signal->live (kernel BTF; no group_dead field here)"
            }
        }
    }
}

/// CLOCK_BOOTTIME - CLOCK_MONOTONIC: converts kernel timestamps to /proc start times.
fn boot_offset_ns() -> i64 {
    procinfo::boottime_ns() as i64 - procinfo::monotonic_ns() as i64
}

struct Zombies {
    args: Args,
    tracker: Tracker,
    counters: BpfHashMap<aya::maps::MapData, u32, ParentCounters>,
    counts: PerCpuArray<aya::maps::MapData, u64>,
    caveats: Vec<String>,
    exit: ExitPath,
    rule: StuckRule,
    started: Instant,
    /// Stuck zombies over time, for the growth trend.
    samples: Series,
    /// PID budgets and fork refusals (issue 22).
    pid_section: pid_section::PidSection,
}

impl Zombies {
    fn count(&self, slot: u32) -> u64 {
        self.counts
            .get(&slot, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    fn parent_counters(&self, pid: u32) -> ParentCounters {
        self.counters.get(&pid, 0).unwrap_or_default()
    }

    fn trend_span_s(&self) -> f64 {
        self.args.trend_span.as_secs_f64()
    }
}

impl Detector for Zombies {
    fn command(&self) -> &'static str {
        "zombies"
    }

    fn on_event(&mut self, data: &[u8]) -> Result<(), BadRecord> {
        if tracer_common::record_kind(data) == Some(tracer_common::EventKind::ForkRefused) {
            return self.pid_section.on_event(data);
        }
        self.tracker.on_event(data)?;
        self.tracker.prune_if_large(procinfo::stat_of);
        Ok(())
    }

    /// Fifteen looks per trend window (every 2 s for the default 30 s): each confirms
    /// the candidates in /proc, so the rate is bounded.
    fn sample_every(&self) -> Option<Duration> {
        Some((self.args.trend_span / 15).clamp(Duration::from_millis(100), Duration::from_secs(2)))
    }

    fn sample(&mut self) -> Result<()> {
        let snap = self.tracker.census(
            procinfo::monotonic_ns(),
            Duration::ZERO,
            self.rule,
            procinfo::stat_of,
        );
        let keep = self.trend_span_s() * 2.0 + 1.0;
        self.samples.push(
            self.started.elapsed().as_secs_f64(),
            snap.stuck as f64,
            keep,
        );
        Ok(())
    }

    fn report(&mut self, ctx: &ReportCtx) -> Result<Box<dyn Body>> {
        Ok(Box::new(self.build(ctx)))
    }
}

impl Zombies {
    /// The report: the census of zombies now, judged, with the kernel's counters.
    fn build(&mut self, ctx: &ReportCtx) -> ZombiesReport {
        let snap: Census = self.tracker.census(
            procinfo::monotonic_ns(),
            self.args.min_age,
            self.rule,
            procinfo::stat_of,
        );
        let elapsed = ctx.elapsed.as_secs_f64().max(1e-3);
        let (forks, exits) = (self.count(COUNT_FORKS), self.count(COUNT_EXITS));
        let span = self.trend_span_s();
        let trend = trend::judge(&self.samples, span);
        let parents = self.parent_rows(&snap);
        let (pid_budgets, pid_budget_scan, fork_refusals) = self.pid_section.build();
        ZombiesReport {
            filter_ppid: self.args.pid,
            stuck_rule: self.rule.describe(),
            hints: [judge::hints(&parents), init::hints(&parents)].concat(),
            parents,
            zombies: zombie_rows(&snap),
            zombies_total: snap.zombies.len(),
            zombies_stuck: snap.stuck,
            zombies_in_flight: snap.in_flight,
            zombie_growth_per_s: trend.rate(),
            pids: pids(&trend),
            trend: trend.report(span),
            reap_latency_us: output::Summary::of(self.tracker.reap_hist())
                .with(self.tracker.reap_buckets()),
            reapers: self.reaper_rows(),
            state_evicted: Evicted {
                reapers: self.tracker.reapers_evicted(),
                exits_untracked: self.tracker.exits_untracked(),
            },
            forks,
            forks_per_s: forks as f64 / elapsed,
            exits,
            exits_per_s: exits as f64 / elapsed,
            path: self.exit.describe().into(),
            caveats: self.caveats_now(),
            view: View {
                by_parent: self.args.parent,
                trend_span_s: span,
                reaped: self.tracker.reaped_total(),
                reap_log2: output::Log2::of(self.tracker.reap_hist()),
            },
            pid_budgets,
            pid_budget_scan,
            fork_refusals,
        }
    }

    /// The attach-time caveats and what this report could not see.
    fn caveats_now(&self) -> Vec<String> {
        let mut caveats = self.caveats.clone();
        let unread = self.count(COUNT_EXIT_READ_FAILED);
        if unread > 0 {
            caveats.push(format!(
                "{unread} thread exits could not be classified (reading task->signal failed): those exits are not counted"
            ));
        }
        let untracked = self.tracker.exits_untracked();
        if untracked > 0 {
            caveats.push(format!(
                "{untracked} exits were not tracked: {} zombie candidates were tracked already (the cap); zombies among them are missing from the lists",
                state::PENDING_CAPACITY
            ));
        }
        let evicted = self.tracker.reapers_evicted();
        if evicted > 0 {
            caveats.push(format!(
                "{evicted} parents' reap counts were forgotten to keep {} (least recently reaping first): their reaps stay in the total, and their pace is the 5 s floor until they reap again",
                state::REAPERS_CAPACITY
            ));
        }
        caveats
    }

    /// A row per parent of the census, with its counters and what /proc says of it.
    fn parent_rows(&self, snap: &Census) -> Vec<ParentRow> {
        (snap.parents.iter())
            .map(|p| {
                let c = self.parent_counters(p.pid);
                ParentRow {
                    pid: p.pid,
                    comm: procinfo::comm_of(p.pid).unwrap_or_else(|| "?".into()),
                    cmdline: procinfo::cmdline_of(p.pid),
                    cgroup: procinfo::cgroup_of(p.pid).into(),
                    zombies: p.zombies,
                    in_flight: p.in_flight,
                    stuck_after_s: round3(p.stuck_after_s),
                    oldest_zombie_age_s: round3(p.oldest_age_s),
                    oldest_zombie_age_exact: p.oldest_exact,
                    oldest_zombie_age_source: p.oldest_source,
                    reaped: self.tracker.reaped_by(p.pid),
                    wait_calls: c.wait_calls,
                    sigchld_received: c.sigchld,
                    sigchld: procinfo::sigchld_disposition(p.pid).into(),
                    pids_cgroup: pids_cgroup(p.pid)
                        .map(|(current, max)| PidsCgroup { current, max }),
                    namespace_init: init::namespace_init(p.pid),
                    reaper_after_exit: init::reaper_after_exit(p.pid),
                }
            })
            .collect()
    }

    /// The five parents that reaped the most.
    fn reaper_rows(&self) -> Vec<ReaperRow> {
        (self.tracker.top_reapers(5).into_iter())
            .map(|(pid, n)| ReaperRow {
                pid,
                comm: procinfo::comm_of(pid),
                cgroup: procinfo::cgroup_of(pid).into(),
                reaped: n,
                sigchld: procinfo::sigchld_disposition(pid).into(),
            })
            .collect()
    }
}

fn zombie_rows(snap: &Census) -> Vec<ZombieRow> {
    (snap.zombies.iter())
        .map(|z| ZombieRow {
            pid: z.pid,
            ppid: z.ppid,
            comm: z.comm.clone(),
            cgroup: procinfo::cgroup_of(z.pid).into(),
            age_s: z.age_s,
            age_exact: z.exact,
            age_source: z.source,
            stuck: z.stuck,
        })
        .collect()
}

/// PID headroom now, and when it runs out at the trend's growth.
fn pids(trend: &trend::Trend) -> Pids {
    let in_use = procinfo::tasks_in_use();
    Pids {
        in_use,
        pid_max: procinfo::read_u64("/proc/sys/kernel/pid_max"),
        threads_max: procinfo::read_u64("/proc/sys/kernel/threads-max"),
        exhaustion_eta_s: judge::exhaustion_eta_s(trend, in_use, procinfo::pid_limit()),
    }
}

/// pids.current / pids.max of the process's pids cgroup ("max" means unlimited).
fn pids_cgroup(pid: u32) -> Option<(u64, String)> {
    let dir = procinfo::controller_dir(pid, "pids")?;
    let cur = std::fs::read_to_string(dir.join("pids.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let max = std::fs::read_to_string(dir.join("pids.max"))
        .ok()?
        .trim()
        .to_string();
    Some((cur, max))
}
