//! Run control shared by every detector: Ctrl-C/SIGTERM, `--duration`, `--interval`,
//! the ring-buffer reader, accounting of lost events, bad records and kernel read errors,
//! and handing each report to the run's sinks (src/sink.rs: text, JSON lines, prom file).
use std::{
    future::pending,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Interval, MissedTickBehavior, interval_at},
};

use crate::{
    bpf::CpuSum,
    sink::{self, Emitted, Sink},
};

/// How often the reader collects records that did not wake it.
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Options every tracing command takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RunOpts {
    /// Stop after this long and print the final report (e.g. 10s, 2m). Default: run
    /// until Ctrl-C or SIGTERM.
    #[arg(short = 'd', long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Also print a report every INTERVAL (e.g. 5s) while running.
    #[arg(short = 'i', long, value_parser = parse_duration, value_name = "INTERVAL")]
    pub interval: Option<Duration>,
    /// Print each report as one JSON object on its own line; the last has "final": true.
    #[arg(long)]
    pub json: bool,
    /// Also write each report to FILE as Prometheus metrics, for node_exporter's
    /// textfile collector (e.g. /var/lib/node_exporter/textfile/tracer.prom).
    #[arg(long, value_name = "FILE")]
    pub prom_file: Option<std::path::PathBuf>,
}

/// humantime durations ("500ms", "10s", "1m30s"); a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("`{s}` is not a duration")),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("`{s}` is not a duration like 500ms, 10s or 2m ({e})"))?,
    };
    if d.is_zero() {
        return Err("the duration must be greater than zero".into());
    }
    Ok(d)
}

/// `--top N`: rows per table, 1 to 1000 (every detector takes it the same way).
pub fn parse_top(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a row count between 1 and 1000")),
    }
}

/// A duration that may be zero (`--min-age 0s`).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    if s.trim_start_matches('0')
        .trim_end_matches(['s', 'm', 'h'])
        .is_empty()
        && !s.is_empty()
    {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// One report: the JSON object (the driver adds command, final, elapsed_s and
/// lost_events) and the text for people (the driver adds the lost-events footer).
pub struct Report {
    pub json: serde_json::Value,
    pub text: String,
}

pub struct ReportCtx {
    pub final_: bool,
    /// Time since the hooks were attached.
    pub elapsed: Duration,
    pub lost_events: u64,
    /// Records the detector could not decode (too short, or a kind it does not know).
    pub bad_records: u64,
    /// Kernel reads that failed in the programs (READ_ERRORS).
    pub kernel_read_errors: u64,
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

/// What a tracing command implements; `drive` does the rest.
pub trait Detector {
    /// Name in reports (`"command"` in JSON).
    fn command(&self) -> &'static str;
    /// One ring-buffer record (already copied out of the ring); decode it with
    /// [`decode`] and return its error for a record that is not one of the detector's.
    fn on_event(&mut self, data: &[u8]) -> Result<(), BadRecord>;
    /// Periodic sampling of /proc or /sys state, if the detector wants it.
    fn sample_every(&self) -> Option<Duration> {
        None
    }
    fn sample(&mut self) -> Result<()> {
        Ok(())
    }
    fn report(&mut self, ctx: &ReportCtx) -> Result<Report>;
}

/// A detector whose hooks are attached and whose state is set up, not yet driven:
/// what each detector's `start` returns. [`Started::run`] drives it until a signal or
/// its duration ends.
pub struct Started {
    /// Declared before the session: dropped first, as its maps go before the programs
    /// are detached.
    pub detector: Box<dyn Detector>,
    pub session: crate::bpf::Session,
    /// What it traces, for the "Tracing ... for 10s" line.
    pub what: String,
    pub opts: RunOpts,
}

impl Started {
    pub async fn run(mut self) -> Result<()> {
        drive(
            &self.opts,
            &mut self.session.ebpf,
            &self.what,
            self.detector.as_mut(),
        )
        .await
    }
}

/// The run's ring buffer, readable through tokio.
pub struct Ring {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl Ring {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map("EVENTS")
            .context("map EVENTS is missing from the eBPF object")?;
        let rb = RingBuf::try_from(map)?;
        Ok(Self {
            fd: register(rb).context("registering the ring buffer with tokio")?,
        })
    }

    /// Hands every record available now to `det`, counting the bad ones.
    fn drain(&mut self, det: &mut dyn Detector, bad_records: &mut u64) {
        let rb = self.fd.get_mut();
        while let Some(item) = rb.next() {
            if det.on_event(&item).is_err() {
                *bad_records += 1;
            }
        }
    }
}

/// Registers an fd-owning map or logger with tokio.
fn register<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd and moves into the AsyncFd, which deregisters it on
    // drop before `inner` closes it, so the fd stays valid while registered.
    unsafe { AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)
}

async fn tick(i: &mut Option<Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => pending().await,
    }
}

fn every(d: Option<Duration>) -> Option<Interval> {
    d.map(|d| {
        let mut i = interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    })
}

/// Runs `det` until a signal or the duration ends, printing interval reports and the
/// final report. `ebpf` must still hold the EVENTS and LOST maps; the detector keeps
/// its own handle to everything else it reads.
pub async fn drive(
    opts: &RunOpts,
    ebpf: &mut Ebpf,
    what: &str,
    det: &mut dyn Detector,
) -> Result<()> {
    if let Some(p) = &opts.prom_file {
        crate::prom::check_dir(p)?;
    }
    let mut sinks = sink::from_opts(opts);
    let mut ring = Ring::take(ebpf)?;
    let mut counters = Counters {
        lost: CpuSum::take(ebpf, CpuSum::LOST)?,
        read_errors: CpuSum::take(ebpf, CpuSum::READ_ERRORS)?,
        bad_records: 0,
    };
    let mut logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => register(l).ok(),
        Err(e) => {
            log::debug!("kernel-side logging unavailable: {e}");
            None
        }
    };
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let start = Instant::now();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut report_every = every(opts.interval);
    let mut sample_every = every(det.sample_every());
    // Records below the kernel's wakeup threshold are submitted without a wakeup
    // (see WAKEUP_BYTES in tracer-ebpf/src/common.rs): collect them on this timer.
    let mut drain_every = every(Some(DRAIN_EVERY));

    let until = match opts.duration {
        Some(d) => format!("for {}", humantime::format_duration(d)),
        None => "until Ctrl-C".into(),
    };
    eprintln!("Tracing {what} {until}...");

    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(t) => tokio::time::sleep_until(t).await, None => pending().await } } => break,
            _ = tick(&mut report_every) => {
                ring.drain(det, &mut counters.bad_records);
                print_report(&mut sinks, det, start, &counters, false)?;
            }
            _ = tick(&mut drain_every) => {
                ring.drain(det, &mut counters.bad_records);
            }
            _ = tick(&mut sample_every) => {
                if let Err(e) = det.sample() {
                    log::warn!("sampling failed: {e:#}");
                }
            }
            guard = ring.fd.readable_mut() => {
                let mut guard = guard.context("waiting for the ring buffer")?;
                // Clear readiness before draining so a record that lands after the
                // drain wakes us again.
                guard.clear_ready();
                drop(guard);
                ring.drain(det, &mut counters.bad_records);
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
    ring.drain(det, &mut counters.bad_records);
    print_report(&mut sinks, det, start, &counters, true)
}

/// What every report counts besides the detector's own findings.
struct Counters {
    lost: CpuSum,
    read_errors: CpuSum,
    bad_records: u64,
}

fn print_report(
    sinks: &mut [Box<dyn Sink>],
    det: &mut dyn Detector,
    start: Instant,
    counters: &Counters,
    final_: bool,
) -> Result<()> {
    let ctx = ReportCtx {
        final_,
        elapsed: start.elapsed(),
        lost_events: counters.lost.get(),
        bad_records: counters.bad_records,
        kernel_read_errors: counters.read_errors.get(),
    };
    let report = det.report(&ctx)?;
    let r = Emitted::new(det.command(), report, &ctx);
    for s in sinks {
        s.write(&r)?;
    }
    Ok(())
}

/// Completes `report` and hands it to the sinks `opts` asks for (one-shot callers:
/// triage).
pub fn emit(opts: &RunOpts, command: &str, report: Report, ctx: &ReportCtx) -> Result<()> {
    let r = Emitted::new(command, report, ctx);
    for s in &mut sink::from_opts(opts) {
        s.write(&r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(
            parse_duration("ten")
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(parse_age("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_age("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_age("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_top("10"), Ok(10));
        assert!(parse_top("0").is_err() && parse_top("1001").is_err() && parse_top("x").is_err());
    }
}
