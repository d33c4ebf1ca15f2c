//! `--prom-file PATH`: each report also written as Prometheus text exposition, for
//! node_exporter's textfile collector (`--collector.textfile.directory`), so a fleet's
//! existing Prometheus scrapes what the tracer found; no collector of our own.
//!
//! What is exposed is described explicitly, per detector, in `<detector>/metrics.rs`:
//! each [`Metric`] has a name, a type, a base unit, a HELP text and bounded labels, and
//! the detector's typed report fills them ([`Collect`]), so a renamed report field is a
//! compile error here, never a missing series. The registry and the text format are
//! prometheus-client's. The file is replaced atomically (written beside it, then
//! renamed).
use std::{borrow::Cow, fs, path::Path};

use anyhow::{Context as _, Result, bail};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet, prometheus_text},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use crate::{container::Container, output::Summary};

/// Prefix of every metric name.
pub const PREFIX: &str = "tracer";

/// Fails in one sentence when `--prom-file`'s directory does not exist: checked when a
/// run starts, since a write would otherwise fail only at the first report.
pub fn check_dir(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "the directory of --prom-file {} does not exist; create it or pass another path",
            path.display()
        );
    }
    Ok(())
}

/// The Content-Type of the text [`render_all`] makes (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What can put series into an exposition: a report, or its parts.
pub trait Collect {
    fn collect(&self, out: &mut Families);
}

/// Writes the series of `items` (each detector's latest report) to one file, replaced
/// atomically.
pub fn write_all(path: &Path, items: &[&dyn Collect]) -> Result<()> {
    let text = render(items);
    let tmp = path.with_extension("prom.tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The series of `items` in one registry and one exposition, after the build info.
pub fn render(items: &[&dyn Collect]) -> String {
    let mut out = Families::default();
    out.sample(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1u64);
    for i in items {
        i.collect(&mut out);
    }
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(out));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Events since the detector started; the name ends in `_total`.
    Counter,
    /// A state at the time of the report.
    Gauge,
    /// Samples since the detector started, counted into cumulative buckets at fixed
    /// upper bounds (`_bucket{le}`, `_sum`, `_count`).
    Histogram,
}

/// Base units; a metric without one counts things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseUnit {
    Seconds,
    Bytes,
    Ratio,
}

/// One metric, described: its series carry exactly `labels`.
#[derive(Debug, PartialEq)]
pub struct Metric {
    /// Without the `tracer_` prefix, the unit and `_total`, which are added.
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<BaseUnit>,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    /// A histogram's bucket upper bounds in the base unit, ascending (+Inf is added);
    /// the same in every report so the series stay the same. Empty for the others.
    pub buckets: &'static [f64],
}

#[cfg_attr(not(test), allow(dead_code))]
impl Metric {
    /// The name as exposed: prefix, name, unit, then `_total` for counters.
    pub fn exposed_name(&self) -> String {
        let mut n = format!("{PREFIX}_{}", self.name);
        if let Some(u) = self.unit {
            n += "_";
            n += unit(u).as_str();
        }
        if self.kind == Kind::Counter {
            n += "_total";
        }
        n
    }

    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    pub fn unit_name(&self) -> &'static str {
        match self.unit {
            Some(BaseUnit::Seconds) => "seconds",
            Some(BaseUnit::Bytes) => "bytes",
            Some(BaseUnit::Ratio) => "ratio",
            None => "",
        }
    }
}

fn unit(u: BaseUnit) -> Unit {
    match u {
        BaseUnit::Seconds => Unit::Seconds,
        BaseUnit::Bytes => Unit::Bytes,
        // prometheus-client's Ratios is plural; the convention is `_ratio`.
        BaseUnit::Ratio => Unit::Other("ratio".into()),
    }
}

pub const BUILD_INFO: Metric = gauge(
    "build_info",
    None,
    "Always 1; the tracer's version is the label.",
    &["version"],
);
pub const LOST_EVENTS: Metric = counter(
    "lost_events",
    "Kernel events dropped because the ring buffer was full; the detector's counts are low by at least this much.",
    &["detector"],
);
pub const BAD_RECORDS: Metric = counter(
    "bad_records",
    "Ring-buffer records too short or of an unknown kind, ignored.",
    &["detector"],
);
pub const KERNEL_READ_ERRORS: Metric = counter(
    "kernel_read_errors",
    "Times the eBPF programs could not read a kernel field, so an event is missing or lacks a detail.",
    &["detector"],
);
pub const KERNEL_MAP_FULL: Metric = counter(
    "kernel_map_full",
    "Times an eBPF program could not add an entry to a full kernel map, so an event lacks its state or count.",
    &["detector"],
);
pub const STATE_EVICTED: Metric = counter(
    "state_evicted",
    "Per-key entries the detector dropped to keep its memory bounded (docs/bounded-state.md); totals still count them.",
    &["detector", "state"],
);
pub const REPORT_ELAPSED: Metric = gauge(
    "report_elapsed",
    Some(BaseUnit::Seconds),
    "Time the detector had been tracing when it wrote this report.",
    &["detector"],
);
pub const REPORT_AGE: Metric = gauge(
    "report_age",
    Some(BaseUnit::Seconds),
    "At the scrape of `tracer serve`, how long ago the detector built the report these metrics come from (not in --prom-file).",
    &["detector"],
);
pub const REPORT_FINAL: Metric = gauge(
    "report_final",
    None,
    "1 when this is the detector's last report (the tracer has stopped), else 0.",
    &["detector"],
);
pub const HOOK_ATTACHED: Metric = gauge(
    "hook_attached",
    None,
    "1 when the detector's hook is attached, 0 when this kernel or these privileges do not allow it (the detector sees less; `tracer doctor` says why).",
    &["detector", "hook"],
);
pub const HOOK_PATH: Metric = gauge(
    "hook_path",
    None,
    "Always 1; `via` is the hook the detector's choice took (`none`: none worked and the detector uses its fallback).",
    &["detector", "choice", "via"],
);
/// The series every report has (report.rs fills them from its header).
pub const COMMON: &[&Metric] = &[
    &BUILD_INFO,
    &LOST_EVENTS,
    &BAD_RECORDS,
    &KERNEL_READ_ERRORS,
    &KERNEL_MAP_FULL,
    &STATE_EVICTED,
    &REPORT_ELAPSED,
    &REPORT_AGE,
    &own::SERVE_IDLE_CLOSED,
    &own::BPF_RUNS,
    &own::BPF_RUN_TIME,
    &own::PROCESS_CPU,
    &own::PROCESS_RSS,
    &REPORT_FINAL,
    &HOOK_ATTACHED,
    &HOOK_PATH,
];

/// A sample's value: integers stay integers in the text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    /// The value divided by `per`, e.g. microseconds to seconds with `per` = 1e6.
    pub fn per(self, per: f64) -> Num {
        match self {
            Num::Int(i) if per == 1.0 => Num::Int(i),
            Num::Int(i) => Num::Float(i as f64 / per),
            Num::Float(f) => Num::Float(f / per),
        }
    }
}

impl From<u64> for Num {
    fn from(v: u64) -> Self {
        i64::try_from(v)
            .map(Num::Int)
            .unwrap_or(Num::Float(v as f64))
    }
}

impl From<i64> for Num {
    fn from(v: i64) -> Self {
        Num::Int(v)
    }
}

impl From<f64> for Num {
    fn from(v: f64) -> Self {
        Num::Float(v)
    }
}

type Labels = Vec<(Cow<'static, str>, String)>;

/// One series' value: a number, or a histogram's buckets.
#[derive(Debug)]
enum Sample {
    Num(Num),
    Histogram {
        sum: f64,
        count: u64,
        /// Samples at most each of the metric's bounds (cumulative, monotone, at most
        /// `count`).
        cumulative: Vec<u64>,
    },
}

/// The samples of one report (or several), grouped by metric in the order first seen:
/// what a detector's `collect` fills and the registry's collector encodes.
#[derive(Debug, Default)]
pub struct Families(Vec<(&'static Metric, Vec<(Labels, Sample)>)>);

impl Families {
    /// One sample of `m`; `labels` name exactly `m.labels`, in that order.
    pub fn sample(&mut self, m: &'static Metric, labels: &[(&str, &str)], v: impl Into<Num>) {
        debug_assert!(m.kind != Kind::Histogram, "{}: a histogram", m.name);
        if m.kind != Kind::Histogram {
            self.push(m, labels, Sample::Num(v.into()));
        }
    }

    fn push(&mut self, m: &'static Metric, labels: &[(&str, &str)], v: Sample) {
        debug_assert!(
            labels.iter().map(|l| l.0).eq(m.labels.iter().copied()),
            "{}: labels {labels:?} are not the described {:?}",
            m.name,
            m.labels
        );
        // An empty value is no label at all in Prometheus: left out.
        let labels: Labels = m
            .labels
            .iter()
            .zip(labels)
            .filter(|(_, (_, v))| !v.is_empty())
            .map(|(k, (_, v))| (Cow::Borrowed(*k), (*v).to_string()))
            .collect();
        match self.0.iter_mut().find(|(d, _)| std::ptr::eq(*d, m)) {
            Some((_, s)) => s.push((labels, v)),
            None => self.0.push((m, vec![(labels, v)])),
        }
    }

    /// A sample of `m` when the value is known; nothing when it is None (a series
    /// that is absent, never a made-up 0).
    pub fn opt(&mut self, m: &'static Metric, labels: &[(&str, &str)], v: Option<impl Into<Num>>) {
        if let Some(v) = v {
            self.sample(m, labels, v);
        }
    }

    /// The histogram `m` from a latency summary with its exact buckets (see
    /// `output::Exact`): a histogram with no samples has its zero buckets, as a counter
    /// that counted nothing is 0. Nothing when the summary has no buckets (not
    /// measured), or buckets other than the described ones.
    pub fn latency(&mut self, m: &'static Metric, labels: &[(&str, &str)], s: &Summary) {
        debug_assert!(m.kind == Kind::Histogram, "{}: not a histogram", m.name);
        let (Kind::Histogram, Some(exact)) = (m.kind, &s.buckets) else {
            return;
        };
        // A bound read back from JSON may differ from the described one in its last bit.
        let same_bounds = exact.buckets.len() == m.buckets.len()
            && (exact.buckets.iter().zip(m.buckets))
                .all(|(b, &le)| (b.le_s - le).abs() <= le * 1e-9);
        let cumulative: Vec<u64> = exact.buckets.iter().map(|b| b.count).collect();
        let consistent = cumulative.windows(2).all(|w| w[0] <= w[1])
            && cumulative.last().is_none_or(|&c| c <= s.count);
        debug_assert!(
            same_bounds && consistent,
            "{}: the report's buckets {:?} (count {}) are not the described {:?}",
            m.name,
            exact.buckets,
            s.count,
            m.buckets
        );
        if same_bounds && consistent {
            self.push(
                m,
                labels,
                Sample::Histogram {
                    sum: exact.sum_s,
                    count: s.count,
                    cumulative,
                },
            );
        }
    }

    /// A sample of a per-process metric (labels [`PROCESS`] or [`PROCESS_ON_FS`]): the
    /// process, then its container's labels (empty ones are left out).
    pub fn process(&mut self, m: &'static Metric, p: &Process, v: impl Into<Num>) {
        let values: Vec<String> = m.labels.iter().map(|l| p.label(l)).collect();
        let labels: Vec<(&str, &str)> = m
            .labels
            .iter()
            .zip(&values)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.sample(m, &labels, v);
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (m, samples) in &self.0 {
            let u = m.unit.map(unit);
            let t = match m.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut me = encoder.encode_descriptor(m.name, m.help, u.as_ref(), t)?;
            for (labels, v) in samples {
                let mut s = me.encode_family(labels)?;
                match (m.kind, v) {
                    (Kind::Counter, Sample::Num(Num::Int(i))) => {
                        s.encode_counter::<NoLabelSet, _, u64>(&((*i).max(0) as u64), None)?
                    }
                    (Kind::Counter, Sample::Num(Num::Float(f))) => {
                        s.encode_counter::<NoLabelSet, _, f64>(f, None)?
                    }
                    (Kind::Gauge, Sample::Num(Num::Int(i))) => s.encode_gauge(i)?,
                    (Kind::Gauge, Sample::Num(Num::Float(f))) => s.encode_gauge(f)?,
                    (
                        Kind::Histogram,
                        Sample::Histogram {
                            sum,
                            count,
                            cumulative,
                        },
                    ) => {
                        // The encoder takes each bucket's own count and sums them up.
                        let mut below = 0;
                        let mut buckets: Vec<(f64, u64)> = (m.buckets.iter().zip(cumulative))
                            .map(|(&le, &c)| (le, c - std::mem::replace(&mut below, c)))
                            .collect();
                        buckets.push((f64::INFINITY, count - below));
                        s.encode_histogram::<NoLabelSet>(*sum, *count, &buckets, None)?
                    }
                    // Families::sample and Families::histogram never store a sample
                    // of another kind than the metric's.
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Labels of a per-process series: the process, then its container (see
/// [`Families::row_value`]; empty ones are left out).
pub const PROCESS: &[&str] = &[
    "pid",
    "comm",
    "container_id",
    "pod_uid",
    "qos",
    "container",
    "pod",
    "namespace",
];
/// As [`PROCESS`], on one filesystem.
pub const PROCESS_ON_FS: &[&str] = &[
    "pid",
    "comm",
    "mount",
    "container_id",
    "pod_uid",
    "qos",
    "container",
    "pod",
    "namespace",
];

/// A process as its per-process series name it.
pub struct Process<'a> {
    pub pid: u32,
    pub comm: &'a str,
    /// The filesystem, for [`PROCESS_ON_FS`].
    pub mount: Option<&'a str>,
    pub container: Option<&'a Container>,
}

impl Process<'_> {
    /// The value of label `name` ("" for none: left out).
    fn label(&self, name: &str) -> String {
        match name {
            "pid" => self.pid.to_string(),
            "comm" => self.comm.to_string(),
            "mount" => self.mount.unwrap_or_default().to_string(),
            other => container_label(self.container, other),
        }
    }
}

/// The value of a container label (`container_id`, `pod_uid`, `qos`, `container`,
/// `pod`, `namespace`) of series about something in container `c` ("" for none: left
/// out).
pub fn container_label(c: Option<&Container>, name: &str) -> String {
    let name_of = |f: fn(&Container) -> Option<&String>| c.and_then(f).cloned().unwrap_or_default();
    match name {
        "container_id" => c
            .map(|c| format!("{}://{}", c.runtime, c.id))
            .unwrap_or_default(),
        "pod_uid" => name_of(|c| c.pod_uid.as_ref()),
        "qos" => c
            .and_then(|c| c.qos.as_deref())
            .unwrap_or_default()
            .to_string(),
        "container" => name_of(|c| c.names.name.as_ref()),
        "pod" => name_of(|c| c.names.pod.as_ref()),
        "namespace" => name_of(|c| c.names.namespace.as_ref()),
        other => {
            debug_assert!(false, "{other} is not a container label");
            String::new()
        }
    }
}

/// The `n` items with the largest `by`: the bounded top-N that per-process or
/// per-path series are limited to (ties keep the given order).
pub fn top_by<T>(items: &[T], by: impl Fn(&T) -> f64, n: usize) -> Vec<&T> {
    let mut v: Vec<&T> = items.iter().collect();
    v.sort_by(|a, b| by(b).total_cmp(&by(a)));
    v.truncate(n);
    v
}

pub mod own;
#[cfg(test)]
mod tests;

/// Microseconds and milliseconds per second.
pub const US: f64 = 1e6;
pub const MS: f64 = 1e3;

pub const fn gauge(
    name: &'static str,
    unit: Option<BaseUnit>,
    help: &'static str,
    labels: &'static [&'static str],
) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        unit,
        help,
        labels,
        buckets: &[],
    }
}

/// A histogram of `unit` with these bucket upper bounds (in `unit`, ascending).
pub const fn histogram(
    name: &'static str,
    unit: Option<BaseUnit>,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        unit,
        help,
        labels,
        buckets,
    }
}

pub const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        unit: None,
        help,
        labels,
        buckets: &[],
    }
}

impl Metric {
    /// The same metric measured in `u` (a counter of seconds, say).
    pub const fn in_unit(self, u: BaseUnit) -> Metric {
        Metric {
            unit: Some(u),
            ..self
        }
    }
}

/// Percent per unit ratio.
pub const PCT: f64 = 100.0;
