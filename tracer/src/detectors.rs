//! The registry of detectors, for `tracer doctor` (and anything else that lists them).
use crate::{
    bpf::{Choice, Spec},
    cgroups, inodes, tcp, triage, zombies,
};

pub struct Detector {
    pub spec: &'static Spec,
    /// Hooks with alternatives (fast path first, fallbacks after): doctor probes
    /// them in order and names the path each would take.
    pub choices: &'static [Choice],
    /// How the detector copes when an optional hook is missing.
    pub fallback: &'static str,
    /// Its kernel path apart from `choices` (doctor adds what each choice takes).
    pub path: &'static str,
}

pub const ALL: &[Detector] = &[
    Detector {
        spec: &zombies::SPEC,
        choices: &[],
        fallback: "release time from sched_process_free, /proc for parents",
        path: "tracepoints",
    },
    Detector {
        spec: &tcp::SPEC,
        choices: tcp::CHOICES,
        fallback: "episodes and TcpExt counters from /proc sampling still work",
        path: "tracepoints + /proc sampling",
    },
    Detector {
        spec: &cgroups::SPEC,
        choices: &[],
        fallback: "no per-mover task counts",
        path: "tracepoints",
    },
    Detector {
        spec: &inodes::SPEC,
        choices: &[],
        fallback: "without syscall hooks: directories by inode walk, no ENOSPC counts",
        path: "tracepoints",
    },
    Detector {
        spec: &triage::SPEC,
        choices: &[],
        fallback: "the /proc and /sys checks run without it; run-queue latency is marked skipped",
        path: "tracepoints",
    },
];
