//! The registry of detectors, for `tracer doctor` (and anything else that lists them).
use crate::{bpf::Spec, cgroups, inodes, tcp, tracefs::Tracefs, triage, zombies};

pub struct Detector {
    pub spec: &'static Spec,
    /// How the detector copes when an optional hook is missing.
    pub fallback: &'static str,
    /// Which kernel path it uses here (tracepoints; fentry where it has a fast path).
    pub path: &'static str,
    /// For a detector whose path depends on the kernel: which one it would take here,
    /// or why it cannot run (then `path` is not used).
    pub probe_path: Option<fn(&Tracefs) -> anyhow::Result<&'static str>>,
}

pub const ALL: &[Detector] = &[
    Detector {
        spec: &zombies::SPEC,
        fallback: "release time from sched_process_free, /proc for parents",
        path: "tracepoints",
        probe_path: Some(|t| zombies::ExitPath::probe(t).map(zombies::ExitPath::describe)),
    },
    Detector {
        spec: &tcp::SPEC,
        fallback: "episodes and TcpExt counters from /proc sampling still work",
        path: "tracepoints + 10 Hz sampling",
        probe_path: None,
    },
    Detector {
        spec: &cgroups::SPEC,
        fallback: "no per-mover task counts",
        path: "tracepoints",
        probe_path: None,
    },
    Detector {
        spec: &inodes::SPEC,
        fallback: "without ext4 hooks (ext4 module not loaded): usage, ETA from statvfs and \
                   ENOSPC from syscalls, no per-process/directory counts; without syscall hooks: \
                   no ENOSPC counts",
        path: "tracepoints",
        probe_path: None,
    },
    Detector {
        spec: &triage::SPEC,
        fallback: "the /proc and /sys checks run without it; run-queue latency is marked skipped",
        path: "tracepoints",
        probe_path: None,
    },
];
