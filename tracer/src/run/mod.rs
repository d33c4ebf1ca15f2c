//! Run control shared by every detector: Ctrl-C/SIGTERM, `--duration`, `--interval`,
//! one load of the eBPF object for any number of detectors, the ring-buffer reader that
//! hands each record to the detector owning its kind, accounting of lost events, bad
//! records and kernel read errors, and handing each report to the run's sinks
//! (src/sink.rs: text, JSON lines, prom file).
mod task;

use task::{Msg, detector_task, every, tick};

use std::{
    collections::HashMap,
    future::pending,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracer_common::EventKind;

pub use crate::opts::{RunOpts, parse_age, parse_duration, parse_top};
use crate::{
    bpf::{CpuSum, Plan, Session, caps},
    hooks::{self, Hooks},
    report::{Body, ProgramCost},
    ring::{Ring, register},
    sink::{self, Sink},
};

/// How often the reader collects records that did not wake it.
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct ReportCtx {
    pub final_: bool,
    /// Time since the hooks were attached.
    pub elapsed: Duration,
    pub lost_events: u64,
    /// Records the detector could not decode (too short, or a kind it does not know).
    pub bad_records: u64,
    /// Kernel reads that failed in the programs (READ_ERRORS).
    pub kernel_read_errors: u64,
    /// The detector's hooks and paths (set by its task).
    pub hooks: Arc<Hooks>,
    /// Entries the programs could not add to a full kernel map (MAP_FULL).
    pub kernel_map_full: u64,
    /// The kernel's run count and time of each of the detector's programs, when it
    /// times them ([`Started::time_programs`]).
    pub programs: Option<Vec<ProgramCost>>,
}

/// A ring-buffer record the detector could not decode: the driver counts it and every
/// report shows the count.
#[derive(Debug)]
pub struct BadRecord;

/// Decodes a record of type `T` (length and kind checked), or says it is bad.
pub fn decode<T: tracer_common::Record>(
    data: &[u8],
) -> Result<(tracer_common::EventKind, T), BadRecord> {
    tracer_common::decode_record(data).ok_or(BadRecord)
}

/// What a running detector implements; the run loop ([`Started::run`]) does the rest.
/// `Send`: each detector runs in a task of its own, and builds its reports (which read
/// /proc, /sys and netlink) on a blocking thread, off the path that drains the ring.
pub trait Detector: Send {
    /// Name in reports (`"command"` in JSON).
    fn command(&self) -> &'static str;
    /// One ring-buffer record of a kind its spec lists; decode it with [`decode`] and
    /// return its error for a record it cannot decode.
    fn on_event(&mut self, data: &[u8]) -> Result<(), BadRecord>;
    /// Periodic sampling of /proc or /sys state, if the detector wants it.
    fn sample_every(&self) -> Option<Duration> {
        None
    }
    fn sample(&mut self) -> Result<()> {
        Ok(())
    }
    /// Whether a sample is cheap enough to take on the run loop's own thread instead of
    /// a blocking thread (triage's run-queue length: read from another thread, the
    /// loop's thread waking to hand it over was counted as the host's load).
    fn sample_inline(&self) -> bool {
        false
    }
    /// The detector's typed report (text, JSON and metrics all come from it).
    fn report(&mut self, ctx: &ReportCtx) -> Result<Box<dyn Body>>;
    /// Whether a report can be asked for at any moment (a scrape of `tracer serve`),
    /// besides the --interval ones. Not for a detector that judges rates over the
    /// window since its previous report (triage): a scrape would cut a window of any
    /// length, down to milliseconds, and judge its noise.
    fn reports_on_demand(&self) -> bool {
        true
    }
    /// The process's exit status after the final report (triage: 0, 3 or 4).
    fn exit_code(&self) -> u8 {
        0
    }
}

/// A detector attached and set up, and what it traces (for the "Tracing ..." line).
pub struct Attached {
    pub detector: Box<dyn Detector>,
    pub what: String,
}

/// Sets a detector up in the loaded object: takes its maps, reads the state its
/// events are compared with. Gets the load's error instead when the load failed and
/// the detector can run without eBPF.
pub type Attach = Box<dyn FnOnce(Result<&mut Session, &anyhow::Error>) -> Result<Attached>>;

/// A detector whose options are checked, not yet loaded: what each registry entry's
/// `prepare` returns. [`start`] loads the object once for any number of them.
pub struct Prepared {
    pub plan: Plan,
    /// The detector runs without its programs when they cannot be loaded (triage).
    pub ebpf_optional: bool,
    pub opts: RunOpts,
    pub attach: Attach,
}

/// The loaded object, for a detector that cannot run without it (the load's error
/// otherwise, which [`start`] only passes on for optional detectors).
pub fn loaded<'a>(s: Result<&'a mut Session, &anyhow::Error>) -> Result<&'a mut Session> {
    s.map_err(|e| anyhow::anyhow!("{e:#}"))
}

impl Prepared {
    /// Loads and attaches this one detector.
    pub fn start(self) -> Result<Started> {
        let opts = self.opts.clone();
        start(vec![self], opts)
    }
}

/// Loads the eBPF object once for every prepared detector and attaches each; nothing
/// is traced until [`Started::run`]. Detectors whose eBPF part is optional get the
/// load's error when it fails (and no privileges is such an error) and run without.
pub fn start(prepared: Vec<Prepared>, opts: RunOpts) -> Result<Started> {
    if let Some(p) = &opts.prom_file {
        crate::prom::check_dir(p)?;
    }
    let plans: Vec<Plan> = prepared.iter().map(|p| p.plan.clone()).collect();
    let optional = prepared.iter().all(|p| p.ebpf_optional);
    let names: Vec<&str> = plans.iter().map(|p| p.spec.detector).collect();
    // Several detectors in one load is `tracer serve`.
    let command = match names[..] {
        [one] => one,
        _ => "serve",
    };
    let loaded = if optional {
        // Such a detector runs without its eBPF part, which needs only what a load needs.
        let missing = caps::missing(&[]);
        if missing.is_empty() {
            crate::bpf::start_many(&plans)
        } else {
            Err(anyhow::anyhow!(
                "loading eBPF programs {}",
                caps::shortfall(&caps::needed(&[]), &missing)
            ))
        }
    } else {
        crate::bpf::require_privileges(command, &names)?;
        crate::bpf::start_many(&plans)
    };
    let mut session = match loaded {
        Ok(s) => Some(s),
        Err(e) if optional => {
            log::warn!("the eBPF part is skipped: {e:#}");
            let mut detectors = Vec::new();
            let mut what = Vec::new();
            for p in prepared {
                let hooks = Arc::new(Hooks::of(None, &p.plan));
                let a = (p.attach)(Err(&e))?;
                detectors.push(Driven {
                    detector: a.detector,
                    kinds: p.plan.spec.kinds,
                    hooks,
                    programs: Vec::new(),
                });
                what.push(a.what);
            }
            return Ok(Started {
                detectors,
                session: None,
                what: what.join("; "),
                opts,
                timing: None,
            });
        }
        Err(e) => return Err(e),
    };
    let mut detectors = Vec::new();
    let mut what = Vec::new();
    for p in prepared {
        let s = session.as_mut().expect("loaded above");
        let hooks = Arc::new(Hooks::of(Some(s), &p.plan));
        let programs = hooks::programs(s, &p.plan);
        let a = (p.attach)(Ok(s))?;
        detectors.push(Driven {
            detector: a.detector,
            kinds: p.plan.spec.kinds,
            hooks,
            programs,
        });
        what.push(a.what);
    }
    Ok(Started {
        detectors,
        session,
        what: what.join("; "),
        opts,
        timing: None,
    })
}

/// Detectors whose hooks are attached and whose state is set up, not yet driven.
/// [`Started::run`] drives them until a signal or the duration ends.
pub struct Started {
    /// Each detector, the record kinds it owns and its hooks. Declared before the
    /// session: the detectors (and their maps) go before the programs are detached.
    pub detectors: Vec<Driven>,
    /// None when no detector could load its programs and all run without.
    pub session: Option<Session>,
    /// What they trace, for the "Tracing ... for 10s" line.
    pub what: String,
    pub opts: RunOpts,
    /// Held while the kernel times every BPF program ([`Started::time_programs`]).
    timing: Option<std::os::fd::OwnedFd>,
}

/// One detector of a run, as [`Started::run`] drives it.
pub struct Driven {
    pub detector: Box<dyn Detector>,
    /// The ring-buffer record kinds it owns.
    pub kinds: &'static [EventKind],
    /// Its hooks as attached, for every report.
    pub hooks: Arc<Hooks>,
    /// Its programs that attached (their kernel run time and count go in reports).
    pub programs: Vec<&'static str>,
}

/// Asks a serving run for a report from every detector now (a scrape); the sender is
/// told once every sink has them.
pub type Refresh = mpsc::Receiver<oneshot::Sender<()>>;

/// Records a detector's task may hold before the reader waits for it (the kernel ring
/// then fills, and what it cannot take is counted as lost).
const QUEUE: usize = 4096;

/// The process-wide counters every report carries.
struct Shared {
    ring: Option<Ring>,
    lost: Option<CpuSum>,
    read_errors: Option<CpuSum>,
    map_full: Option<CpuSum>,
}

impl Shared {
    fn take(session: Option<&mut Session>) -> Result<Self> {
        let Some(s) = session else {
            return Ok(Self {
                ring: None,
                lost: None,
                read_errors: None,
                map_full: None,
            });
        };
        Ok(Self {
            ring: Some(Ring::take(&mut s.ebpf)?),
            lost: Some(CpuSum::take(&mut s.ebpf, CpuSum::LOST)?),
            read_errors: Some(CpuSum::take(&mut s.ebpf, CpuSum::READ_ERRORS)?),
            map_full: Some(CpuSum::take(&mut s.ebpf, CpuSum::MAP_FULL)?),
        })
    }

    fn ctx(&self, final_: bool, elapsed: Duration, unrouted: u64) -> ReportCtx {
        ReportCtx {
            final_,
            elapsed,
            lost_events: self.lost.as_ref().map_or(0, CpuSum::get),
            bad_records: unrouted,
            kernel_read_errors: self.read_errors.as_ref().map_or(0, CpuSum::get),
            hooks: Arc::default(),
            kernel_map_full: self.map_full.as_ref().map_or(0, CpuSum::get),
            programs: None,
        }
    }
}

/// What the kernel counted for `programs` of `session` (None when it is not timing them).
fn costs(session: Option<&Session>, timing: bool, programs: &[&str]) -> Option<Vec<ProgramCost>> {
    let s = session.filter(|_| timing)?;
    Some(
        (programs.iter())
            .filter_map(|name| {
                let info = s.ebpf.program(name)?.info().ok()?;
                Some(ProgramCost {
                    program: (*name).to_string(),
                    runs: info.run_count(),
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                })
            })
            .collect(),
    )
}

impl Started {
    /// Has the kernel time every BPF program from now until the run ends
    /// (BPF_ENABLE_STATS: the kernel's switch is host-wide, about two clock reads per
    /// program run), so each report carries its programs' run count and time. Err is
    /// the reason, in a sentence, when the kernel refuses (before 5.8).
    pub fn time_programs(&mut self) -> std::result::Result<(), String> {
        if self.session.is_none() {
            return Err("no BPF program is loaded".into());
        }
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => {
                self.timing = Some(fd);
                Ok(())
            }
            Err(e) => Err(format!(
                "the kernel does not time BPF programs here (BPF_ENABLE_STATS: {e})"
            )),
        }
    }

    /// Runs with the sinks the options ask for; returns the exit status.
    pub async fn run(self) -> Result<u8> {
        let sinks = sink::from_opts(&self.opts);
        self.run_with(sinks).await
    }

    /// Runs until a signal or the duration ends, handing interval reports and each
    /// detector's final report to `sinks`; returns the highest exit status of the
    /// detectors.
    pub async fn run_with(self, sinks: Vec<Box<dyn Sink>>) -> Result<u8> {
        self.run_serving(sinks, None).await
    }

    /// As [`Started::run_with`], and each request that arrives on `refresh` gets a
    /// report from every detector, with what the ring holds up to then, before it is
    /// answered (`tracer serve` builds /metrics at scrape time this way).
    pub async fn run_serving(
        mut self,
        sinks: Vec<Box<dyn Sink>>,
        mut refresh: Option<Refresh>,
    ) -> Result<u8> {
        let mut shared = Shared::take(self.session.as_mut())?;
        let mut logger =
            self.session
                .as_mut()
                .and_then(|s| match aya_log::EbpfLogger::init(&mut s.ebpf) {
                    Ok(l) => register(l).ok(),
                    Err(e) => {
                        log::debug!("kernel-side logging unavailable: {e}");
                        None
                    }
                });
        let sinks = Arc::new(Mutex::new(sinks));
        let mut senders = Vec::new();
        let mut routes: HashMap<u32, usize> = HashMap::new();
        let mut tasks = Vec::new();
        let mut programs = Vec::new();
        for (i, d) in std::mem::take(&mut self.detectors).into_iter().enumerate() {
            programs.push(d.programs);
            for k in d.kinds {
                routes.insert(*k as u32, i);
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            senders.push(tx);
            tasks.push(tokio::spawn(detector_task(
                d.detector,
                d.hooks,
                rx,
                sinks.clone(),
            )));
        }
        // With one detector, a record of a kind it does not own is its bad record;
        // with several, an unowned kind is counted for all.
        let only = (senders.len() == 1).then_some(0);
        let mut unrouted = 0u64;
        let opts = &self.opts;

        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let start = Instant::now();
        let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
        let mut report_every = every(opts.interval);
        // Records below the kernel's wakeup threshold are submitted without a wakeup
        // (see WAKEUP_BYTES in tracer-ebpf/src/common.rs): collect them on this timer.
        let mut drain_every = every(shared.ring.as_ref().map(|_| DRAIN_EVERY));

        let until = match opts.duration {
            Some(d) => format!("for {}", humantime::format_duration(d)),
            None => "until Ctrl-C".into(),
        };
        eprintln!("Tracing {} {until}...", self.what);

        macro_rules! drain {
            () => {
                if let Some(ring) = shared.ring.as_mut() {
                    for rec in ring.drain() {
                        match owner(&rec, &routes, only) {
                            Some(i) => {
                                // A closed channel: the task ended with an error, which
                                // the join below reports.
                                let _ = senders[i].send(Msg::Record(rec)).await;
                            }
                            None => unrouted += 1,
                        }
                    }
                }
            };
        }
        let timing = self.timing.is_some();
        macro_rules! ctx {
            ($i:expr, $final:expr) => {
                ReportCtx {
                    programs: costs(self.session.as_ref(), timing, &programs[$i]),
                    ..shared.ctx($final, start.elapsed(), unrouted)
                }
            };
        }
        macro_rules! report {
            ($final:expr) => {
                for (i, tx) in senders.iter().enumerate() {
                    let _ = tx.send(Msg::Report(ctx!(i, $final), None)).await;
                }
            };
        }

        loop {
            tokio::select! {
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = async { match deadline { Some(t) => tokio::time::sleep_until(t).await, None => pending().await } } => break,
                _ = tick(&mut report_every) => {
                    drain!();
                    report!(false);
                }
                _ = tick(&mut drain_every) => drain!(),
                asked = async { match refresh.as_mut() { Some(r) => r.recv().await, None => pending().await } } => {
                    let Some(done) = asked else {
                        refresh = None; // nobody asks any more
                        continue;
                    };
                    drain!();
                    let mut built = Vec::new();
                    for (i, tx) in senders.iter().enumerate() {
                        let (one, rx) = oneshot::channel();
                        if tx.send(Msg::Report(ctx!(i, false), Some(one))).await.is_ok() {
                            built.push(rx);
                        }
                    }
                    // Answered off this loop: the ring keeps being read meanwhile.
                    tokio::spawn(async move {
                        for rx in built {
                            let _ = rx.await;
                        }
                        let _ = done.send(());
                    });
                }
                guard = async { match shared.ring.as_mut() { Some(r) => r.fd.readable_mut().await, None => pending().await } } => {
                    let mut guard = guard.context("waiting for the ring buffer")?;
                    // Clear readiness before draining so a record that lands after the
                    // drain wakes us again.
                    guard.clear_ready();
                    drop(guard);
                    drain!();
                }
                guard = async { match logger.as_mut() { Some(l) => l.readable_mut().await, None => pending().await } } => {
                    if let Ok(mut g) = guard {
                        g.get_inner_mut().flush();
                        g.clear_ready();
                    }
                }
            }
        }
        // What arrived between the last wakeup and the stop belongs to the final report.
        drain!();
        report!(true);
        drop(senders);
        let mut code = 0;
        let mut failed = None;
        for t in tasks {
            match t.await {
                Ok(Ok(c)) => code = code.max(c),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(e) => failed = failed.or(Some(anyhow::anyhow!("a detector task failed: {e}"))),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(code),
        }
    }
}

/// The index of the detector that gets `rec`: the owner of its kind, else `only` (a
/// lone detector counts every record it cannot decode as its bad record).
fn owner(rec: &[u8], routes: &HashMap<u32, usize>, only: Option<usize>) -> Option<usize> {
    tracer_common::record_kind(rec)
        .and_then(|k| routes.get(&(k as u32)).copied())
        .or(only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_go_to_the_owner_of_their_kind() {
        let header = |kind: u32| {
            let mut b = kind.to_ne_bytes().to_vec();
            b.resize(std::mem::size_of::<tracer_common::EventHeader>(), 0);
            b
        };
        let routes = HashMap::from([
            (EventKind::ProcessExit as u32, 0),
            (EventKind::CgroupMkdir as u32, 1),
        ]);
        assert_eq!(
            owner(&header(EventKind::ProcessExit as u32), &routes, None),
            Some(0)
        );
        assert_eq!(
            owner(&header(EventKind::CgroupMkdir as u32), &routes, None),
            Some(1)
        );
        // Unowned, unknown or too short: nobody's with several detectors, the lone
        // detector's bad record with one.
        assert_eq!(
            owner(&header(EventKind::TcpBufLimit as u32), &routes, None),
            None
        );
        assert_eq!(owner(&header(999), &routes, None), None);
        assert_eq!(owner(&[1, 0], &routes, None), None);
        assert_eq!(owner(&[1, 0], &routes, Some(0)), Some(0));
    }
}
