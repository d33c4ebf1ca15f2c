//! The tracer's own series: what `tracer serve` costs (its programs' kernel time, its
//! CPU and memory) and how it treats its HTTP clients.
use super::{BaseUnit, Kind, Metric, counter, gauge};

pub const SERVE_IDLE_CLOSED: Metric = counter(
    "serve_idle_connections_closed",
    "Idle HTTP connections `tracer serve` closed to make room for a new one at its cap of open connections (not in --prom-file).",
    &[],
);
pub const BPF_RUNS: Metric = counter(
    "bpf_program_runs",
    "Times the kernel ran the detector's BPF program, since `tracer serve` had the kernel time programs (BPF_ENABLE_STATS).",
    &["detector", "program"],
);
pub const BPF_RUN_TIME: Metric = Metric {
    name: "bpf_program_run",
    kind: Kind::Counter,
    unit: Some(BaseUnit::Seconds),
    help: "CPU time the kernel spent running the detector's BPF program (its own cost), since `tracer serve` had the kernel time programs.",
    labels: &["detector", "program"],
    buckets: &[],
};
pub const PROCESS_CPU: Metric = Metric {
    name: "process_cpu",
    kind: Kind::Counter,
    unit: Some(BaseUnit::Seconds),
    help: "CPU time of `tracer serve` itself in user and system mode (getrusage), since it started (not in --prom-file).",
    labels: &[],
    buckets: &[],
};
pub const PROCESS_RSS: Metric = gauge(
    "process_resident_memory",
    Some(BaseUnit::Bytes),
    "Resident memory of `tracer serve` itself (not in --prom-file).",
    &[],
);
