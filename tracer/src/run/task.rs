//! One detector's task in a run: its records in order, its samples on its own timer,
//! and its reports built on a blocking thread and handed to every sink.
use std::{
    future::pending,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use tokio::{
    sync::{mpsc, oneshot},
    time::{Interval, MissedTickBehavior, interval_at},
};

use super::{Detector, ReportCtx};
use crate::{
    hooks::Hooks,
    report::{Emitted, Header},
    sink::Sink,
};

/// What the ring reader sends a detector's task.
pub(super) enum Msg {
    Record(Bytes),
    /// Build a report; tell `done` once the sinks have it.
    Report(ReportCtx, Option<oneshot::Sender<()>>),
}

/// One detector's task: handles its records in order, samples on its own timer, and
/// builds each report on a blocking thread (reports read /proc, /sys and netlink), so
/// neither stalls the ring reader or the other detectors.
pub(super) async fn detector_task(
    mut det: Box<dyn Detector>,
    hooks: Arc<Hooks>,
    mut rx: mpsc::Receiver<Msg>,
    sinks: Arc<Mutex<Vec<Box<dyn Sink>>>>,
) -> Result<u8> {
    let mut bad_records = 0u64;
    let mut sample_every = every(det.sample_every());
    let mut late = LateSamples::new(det.sample_every());
    loop {
        let first = tokio::select! {
            msg = rx.recv() => msg,
            _ = tick(&mut sample_every) => {
                let started = std::time::Instant::now();
                let r = if det.sample_inline() {
                    det.sample()
                } else {
                    let (d, r) = tokio::task::spawn_blocking(move || {
                        let r = det.sample();
                        (det, r)
                    })
                    .await
                    .context("sampling")?;
                    det = d;
                    r
                };
                if let Err(e) = r {
                    log::warn!("sampling failed: {e:#}");
                }
                late.sampled(det.command(), started);
                continue;
            }
        };
        // Everything queued now, in order, until a sample is due: one message per
        // wakeup fell behind a busy ring, and a burst handled whole starved the
        // sampler for seconds while records and interval reports kept coming.
        let mut next = first;
        let mut handled = 0;
        loop {
            match next {
                None => return Ok(det.exit_code()),
                Some(Msg::Record(rec)) => {
                    if det.on_event(&rec).is_err() {
                        bad_records += 1;
                    }
                }
                Some(Msg::Report(_, Some(done))) if !det.reports_on_demand() => {
                    let _ = done.send(()); // its latest interval report stands
                }
                Some(Msg::Report(mut ctx, done)) => {
                    ctx.bad_records += bad_records;
                    ctx.hooks = hooks.clone();
                    let final_ = ctx.final_;
                    let sinks = sinks.clone();
                    let (d, r) = tokio::task::spawn_blocking(move || {
                        let r = report_to(det.as_mut(), &ctx, &sinks);
                        (det, r)
                    })
                    .await
                    .context("building a report")?;
                    det = d;
                    r?;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    if final_ {
                        return Ok(det.exit_code());
                    }
                }
            }
            handled += 1;
            if handled == BURST || late.due() {
                break;
            }
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
    }
}

/// Says on stderr when a detector's samples fall far behind their period (a loaded
/// host, a slow /proc): what the samples measure has gaps then. At most one line per
/// WARN_EVERY, with the number of late samples since the previous line.
struct LateSamples {
    period: Option<Duration>,
    last_start: Option<std::time::Instant>,
    last_warn: Option<std::time::Instant>,
    unsaid: u64,
}

const WARN_EVERY: Duration = Duration::from_secs(10);

impl LateSamples {
    fn new(period: Option<Duration>) -> LateSamples {
        LateSamples {
            period,
            last_start: None,
            last_warn: None,
            unsaid: 0,
        }
    }

    /// A sample is due: its period has passed since the previous one started.
    fn due(&self) -> bool {
        match (self.period, self.last_start) {
            (Some(p), Some(t)) => t.elapsed() >= p,
            _ => false,
        }
    }

    /// A sample that started at `started` has ended.
    fn sampled(&mut self, command: &str, started: std::time::Instant) {
        let Some(period) = self.period else { return };
        let gap = self.last_start.map(|t| started.duration_since(t));
        self.last_start = Some(started);
        let took = started.elapsed();
        let limit = (period * 5).max(Duration::from_secs(1));
        if gap.is_none_or(|g| g < limit) && took < limit {
            return;
        }
        self.unsaid += 1;
        if self.last_warn.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        self.last_warn = Some(std::time::Instant::now());
        log::warn!(
            "{command}: sampling fell behind its {period:?} period: {} since the previous sample, this one took {took:.1?} ({} late samples)",
            gap.map_or("-".into(), |g| format!("{g:.1?}")),
            std::mem::take(&mut self.unsaid)
        );
    }
}

/// Messages a detector's task handles in a row before it looks at its sample timer.
const BURST: usize = 4096;

fn report_to(
    det: &mut dyn Detector,
    ctx: &ReportCtx,
    sinks: &Mutex<Vec<Box<dyn Sink>>>,
) -> Result<()> {
    let r = Emitted {
        header: Header {
            command: det.command().into(),
            final_: ctx.final_,
            elapsed_s: ctx.elapsed.as_secs_f64(),
            lost_events: ctx.lost_events,
            bad_records: ctx.bad_records,
            kernel_read_errors: ctx.kernel_read_errors,
            kernel_map_full: ctx.kernel_map_full,
            hooks: (*ctx.hooks).clone(),
            programs: ctx.programs.clone(),
        },
        body: det.report(ctx)?.into(),
    };
    let mut sinks = sinks.lock().unwrap_or_else(|e| e.into_inner());
    for s in sinks.iter_mut() {
        s.write(&r)?;
    }
    Ok(())
}

pub(super) async fn tick(i: &mut Option<Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => pending().await,
    }
}

pub(super) fn every(d: Option<Duration>) -> Option<Interval> {
    d.map(|d| {
        let mut i = interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_sample_is_due_once_its_period_has_passed_since_the_last() {
        let mut l = LateSamples::new(Some(Duration::from_millis(100)));
        assert!(
            !l.due(),
            "nothing sampled yet: the timer's first tick decides"
        );
        l.last_start = Instant::now().checked_sub(Duration::from_millis(150));
        assert!(l.due());
        l.last_start = Some(Instant::now());
        assert!(!l.due());
        assert!(!LateSamples::new(None).due(), "a detector without samples");
    }
}
