//! The registry of detectors, for `tracer doctor` (and anything else that lists them).
use crate::{
    bpf::{Choice, Spec},
    cgroups, inodes, tcp,
    tracefs::Tracefs,
    triage, zombies,
};

/// One registered detector: what it asks of the kernel and how it copes without it
/// (the run-time side is [`crate::run::Detector`]).
pub struct Entry {
    pub spec: &'static Spec,
    /// Hooks with alternatives (fast path first, fallbacks after): doctor probes
    /// them in order and names the path each would take.
    pub choices: &'static [Choice],
    /// How the detector copes when an optional hook is missing.
    pub fallback: &'static str,
    /// Its kernel path apart from `choices` (doctor adds what each choice takes).
    pub path: &'static str,
    /// For a detector whose path depends on the kernel: which one it would take here,
    /// or why it cannot run (then `path` is not used).
    pub probe_path: Option<fn(&Tracefs) -> anyhow::Result<&'static str>>,
}

pub const ALL: &[Entry] = &[
    Entry {
        spec: &zombies::SPEC,
        choices: &[],
        fallback: "release time from sched_process_free, /proc for parents",
        path: "tracepoints",
        probe_path: Some(|t| zombies::ExitPath::probe(t).map(zombies::ExitPath::describe)),
    },
    Entry {
        spec: &tcp::SPEC,
        choices: tcp::CHOICES,
        fallback: "episodes and TcpExt counters from /proc sampling still work",
        path: "tracepoints + /proc sampling",
        probe_path: None,
    },
    Entry {
        spec: &cgroups::SPEC,
        choices: &[],
        fallback: "no per-mover task counts",
        path: "tracepoints",
        probe_path: None,
    },
    Entry {
        spec: &inodes::SPEC,
        choices: &[],
        fallback: "without ext4 hooks (ext4 module not loaded): usage, ETA from statvfs and \
                   ENOSPC from syscalls, no per-process/directory counts; without syscall hooks: \
                   no ENOSPC counts",
        path: "tracepoints",
        probe_path: None,
    },
    Entry {
        spec: &triage::SPEC,
        choices: &[],
        fallback: "the /proc and /sys checks run without it; run-queue latency is marked skipped",
        path: "tracepoints",
        probe_path: None,
    },
];
