//! `tracer triage`: the first-60-seconds USE check in one command (Netflix's checklist
//! of uptime, dmesg, vmstat, mpstat, pidstat, iostat, free, sar -n DEV, sar -n TCP,ETCP
//! and top). Each resource gets rows for utilization, saturation and errors, judged
//! against a stated threshold, in the checklist's order, and every non-ok row says what
//! to run next.
//!
//! Everything /proc and /sys can tell is read twice, at the start and the end of the
//! window (rates are deltas over it); the run-queue length is sampled every 100 ms in
//! between. As root, sched_wakeup/sched_switch programs measure run-queue latency into
//! an in-kernel log2 histogram; without root that part is skipped and says why.
mod cpu;
mod disk;
mod kernel;
mod leaks;
mod mem;
pub mod metrics;
mod net;
mod report;
mod rows;
mod runq;

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{
    bpf::{self, Session},
    run::{self, Detector, ReportCtx, RunOpts},
    snapshot::Level,
};

pub use report::{
    CpuSection, DiskRow, DiskSection, FsRow, HierarchyRow, InterfaceRow, KernelLogRow,
    LeaksSection, Load, Memory, MemorySection, NetworkSection, Pids, Runnable, Skipped, Tcp,
    TcpMemRow, TriageReport, Utilization, View, ZombieParentRow,
};
pub use rows::{CpuProcRow, Finding};
pub use runq::{Quantiles, SPEC};

/// How often the run-queue length is sampled during the window.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What `tracer triage --help` shows after the options (the subcommand's one-line
/// description comes from main.rs).
const AFTER_HELP: &str = "\
Prints one table, a row per resource and check with the measured value, the threshold
it was judged by and a verdict (ok / warn / crit), in the order of Netflix's checklist
(uptime, dmesg, vmstat, mpstat, pidstat, iostat, free, sar), then the command to run
next for every row that is not ok. Rates are measured over the window (-d, default 5s).
As root it also measures run-queue latency with eBPF; without root that part is skipped
(and says why) and the rest still runs.

Exit status:
  0  every row is ok
  3  the worst row is warn
  4  at least one row is crit
  1  the check could not run;  2  usage error
  --fail-on crit exits 0 on warn rows; --fail-on never always exits 0 after the report.

Examples:
  tracer triage                    # 5-second check, table and next steps
  tracer triage -d 1s --json       # one JSON object, exit 0/3/4
  tracer triage --since 1h         # look back an hour in the kernel log";

/// The first-60-seconds check of a slow host: USE (utilization, saturation, errors)
/// for CPU, memory, disk, network, the kernel log and the leaks the other commands
/// chase.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Measure rates over this window (e.g. 5s, 1s, 30s).
    #[arg(short = 'd', long, value_parser = run::parse_duration, value_name = "DURATION", default_value = "5s")]
    pub duration: Duration,
    /// Kernel log lines older than this are not counted (e.g. 10m, 1h, 30s).
    #[arg(long, value_parser = run::parse_duration, value_name = "AGE", default_value = "10m")]
    pub since: Duration,
    /// Which verdicts make the exit status non-zero: warn (3 or 4), crit (4 only), never.
    #[arg(long, value_enum, default_value = "warn", value_name = "LEVEL")]
    pub fail_on: FailOn,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write the report to FILE as Prometheus metrics (node_exporter textfile).
    #[arg(long, value_name = "FILE")]
    pub prom_file: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    Warn,
    Crit,
    Never,
}

/// Rising thresholds: warn at `warn`, crit at `crit`.
pub fn judge(v: f64, warn: f64, crit: f64) -> Level {
    Level::of_pct(v, warn, crit)
}

/// PSI "some": the share of the window in which at least one task stalled on the
/// resource, from the kernel's cumulative stall time (`total`, usecs) read at both
/// ends of the window. (avg10 would still carry the 10 s before the run.) The share
/// in percent with one decimal, for the report; None when PSI is not readable.
pub fn psi(
    part: &mut Part,
    resource: &'static str,
    file: &str,
    before: Option<u64>,
    after: procfs::ProcResult<procfs::PressureRecord>,
    w: Window,
    next: &str,
) -> Option<f64> {
    psi_judged(part, resource, file, before, after, w, next, |pct| {
        (judge(pct, 10.0, 40.0), "some >= 10% warn, 40% crit".into())
    })
}

/// [`psi`] with the row's level and stated threshold from `level` (of the percentage).
#[allow(clippy::too_many_arguments)]
pub fn psi_judged(
    part: &mut Part,
    resource: &'static str,
    file: &str,
    before: Option<u64>,
    after: procfs::ProcResult<procfs::PressureRecord>,
    w: Window,
    next: &str,
    level: impl Fn(f64) -> (Level, String),
) -> Option<f64> {
    const PSI: &str = "pressure stall information (PSI)";
    match (before, after) {
        (Some(b), Ok(a)) => {
            let pct = (a.total.saturating_sub(b) as f64 / (w.secs * 1e6) * 100.0).min(100.0);
            let (lvl, threshold) = level(pct);
            part.findings.push(
                Finding::new(
                    resource,
                    "pressure (PSI)",
                    format!("some {pct:.1}% of the window (avg10 {:.1}%)", a.avg10),
                    threshold,
                    lvl,
                )
                .next(next),
            );
            return Some(rows::round1(pct));
        }
        (_, Err(e)) => part.skip(PSI, format!("{file}: {e}")),
        (None, Ok(_)) => part.skip(
            PSI,
            format!("{file} was not readable at the start of the window"),
        ),
    }
    None
}

/// What the checks add to the report besides their sections: rows of the USE table,
/// and parts they had to skip.
#[derive(Default)]
pub struct Part {
    pub findings: Vec<Finding>,
    pub skipped: Vec<Skipped>,
}

impl Part {
    /// A part of the check that could not run, and why.
    pub fn skip(&mut self, part: &'static str, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            part: part.into(),
            reason: reason.into(),
        });
    }
}

/// Length of the window actually measured and the CPU count.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub secs: f64,
    pub cpus: usize,
}

/// Checks the options and says what to load: the run-queue programs, which are
/// optional (without privileges or hooks, the /proc and /sys checks run alone).
pub fn prepare(args: Args) -> Result<run::Prepared> {
    let opts = RunOpts {
        duration: Some(args.duration),
        interval: None,
        json: args.json,
        prom_file: args.prom_file.clone(),
    };
    Ok(run::Prepared {
        plan: bpf::Plan::new(&SPEC),
        ebpf_optional: true,
        opts,
        attach: Box::new(move |s| attach(args, s)),
    })
}

/// Takes the run-queue maps (or the reason there are none), then reads the start of
/// the window: after attaching, so the histogram covers the whole window.
fn attach(args: Args, session: Result<&mut Session, &anyhow::Error>) -> Result<run::Attached> {
    let runq = match session {
        Ok(s) => runq::Runq::take(s).map_err(|e| {
            log::warn!("run-queue latency is skipped: {e:#}");
            format!("{e:#}")
        }),
        Err(e) => Err(format!("{e:#}")),
    };
    let what = format!(
        "the USE checklist (run-queue latency: {})",
        match &runq {
            Ok(_) => "eBPF on sched_wakeup/sched_switch".to_string(),
            Err(why) => format!("skipped, {why}"),
        }
    );
    let det = Triage {
        befores: Befores::read()?,
        args,
        runq,
        code: 0,
    };
    Ok(run::Attached {
        detector: Box::new(det),
        what,
    })
}

/// What /proc and /sys said at the start of the window; rates are deltas from here.
struct Befores {
    cpu: cpu::Before,
    mem: mem::Before,
    disk: disk::Before,
    net: net::Before,
    leaks: leaks::Before,
    runnable: cpu::RunnableSampler,
    at: Instant,
}

impl Befores {
    fn read() -> Result<Self> {
        let mut b = Befores {
            cpu: cpu::Before::read()?,
            mem: mem::Before::read(),
            disk: disk::Before::read(),
            net: net::Before::read(),
            leaks: leaks::Before::read(),
            runnable: cpu::RunnableSampler::default(),
            at: Instant::now(),
        };
        b.runnable.sample();
        Ok(b)
    }
}

/// The check as a detector: samples the run queue every 100 ms, and each report
/// judges the window since the previous one (a one-shot run has one window, -d).
struct Triage {
    args: Args,
    runq: Result<runq::Runq, String>,
    befores: Befores,
    /// The exit status of the latest report.
    code: u8,
}

impl Detector for Triage {
    fn command(&self) -> &'static str {
        "triage"
    }

    /// triage reads maps, not records: every record is a bad one.
    fn on_event(&mut self, _data: &[u8]) -> Result<(), run::BadRecord> {
        Err(run::BadRecord)
    }

    fn sample_every(&self) -> Option<Duration> {
        Some(SAMPLE_EVERY)
    }

    fn sample(&mut self) -> Result<()> {
        self.befores.runnable.sample();
        Ok(())
    }

    /// One read of /proc/stat, on the thread that would otherwise wake a helper for it.
    fn sample_inline(&self) -> bool {
        true
    }

    fn report(&mut self, _ctx: &ReportCtx) -> Result<Box<dyn crate::report::Body>> {
        // The next window starts where this one ends.
        let b = std::mem::replace(&mut self.befores, Befores::read()?);
        let w = Window {
            secs: b.at.elapsed().as_secs_f64().max(1e-3),
            cpus: b.cpu.cpus(),
        };
        let runq = self.runq.as_mut().ok().map(|r| r.read());
        let mut part = Part::default();
        let cpu = cpu::check(&b.cpu, &b.runnable, runq.as_ref(), w, &mut part);
        let kernel_log = kernel::check(self.args.since, &mut part);
        let memory = mem::check(b.mem, w, &mut part);
        let disk = disk::check(b.disk, w, &mut part);
        let network = net::check(b.net, w, &mut part);
        let leaks = leaks::check(b.leaks, w, &mut part);
        if let Err(why) = &self.runq {
            part.skip("run-queue latency (eBPF)", why.clone());
        }
        // Checklist order: load and kernel log first, then cpu, memory, disk, network and
        // the leak checks (a stable sort keeps each module's own order).
        part.findings.sort_by_key(order);
        let worst = (part.findings.iter())
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok);
        self.code = exit_code(worst, self.args.fail_on);
        Ok(Box::new(TriageReport {
            window_s: self.args.duration.as_secs_f64(),
            measured_s: w.secs,
            cpus: w.cpus,
            worst,
            exit_code: self.code,
            kernel_log_since_s: self.args.since.as_secs_f64(),
            findings: part.findings,
            runqueue_latency_us: runq.as_ref().map(runq::Summary::quantiles),
            skipped: part.skipped,
            cpu,
            kernel_log,
            memory,
            disk,
            network,
            leaks,
            view: View {
                runq_slots: runq.map(|s| s.buckets).unwrap_or_default(),
            },
        }))
    }

    fn exit_code(&self) -> u8 {
        self.code
    }

    /// Each report judges rates over the window since the previous one: only the
    /// --interval decides the windows.
    fn reports_on_demand(&self) -> bool {
        false
    }
}

/// Where a row goes in the checklist's order.
fn order(f: &Finding) -> u8 {
    match (&*f.resource, f.check.as_str()) {
        ("cpu", "load average") => 0,
        ("kernel", _) => 1,
        ("cpu", _) => 2,
        ("memory", _) => 3,
        ("disk", _) => 4,
        ("network", _) => 5,
        ("pids", _) => 6,
        ("cgroups", _) => 7,
        ("inodes", _) => 8,
        ("tcp_mem", _) => 9,
        _ => 10,
    }
}

pub fn exit_code(worst: Level, fail_on: FailOn) -> u8 {
    match (fail_on, worst) {
        (FailOn::Never, _) | (_, Level::Ok) => 0,
        (FailOn::Crit, Level::Warn) => 0,
        (_, Level::Warn) => 3,
        (_, Level::Crit) => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_worst_row() {
        assert_eq!(exit_code(Level::Ok, FailOn::Warn), 0);
        assert_eq!(exit_code(Level::Warn, FailOn::Warn), 3);
        assert_eq!(exit_code(Level::Crit, FailOn::Warn), 4);
        assert_eq!(exit_code(Level::Warn, FailOn::Crit), 0);
        assert_eq!(exit_code(Level::Crit, FailOn::Crit), 4);
        assert_eq!(exit_code(Level::Crit, FailOn::Never), 0);
    }

    #[test]
    fn next_is_only_kept_for_rows_that_are_not_ok() {
        let ok = Finding::new("cpu", "utilization", "1%", ">= 80%", Level::Ok).next("mpstat");
        assert!(ok.next.is_none());
        let warn = Finding::new("cpu", "utilization", "90%", ">= 80%", Level::Warn).next("mpstat");
        assert_eq!(warn.next.as_deref(), Some("mpstat"));
    }
}
