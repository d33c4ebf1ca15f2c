//! The registry of detectors: the one place a detector is named. main builds the
//! command line from it, `tracer doctor` lists what each asks of the kernel, and the
//! run loop starts any number of them in one load of the eBPF object.
use clap::{ArgMatches, Args as _};

use crate::{
    bpf::{Choice, Spec},
    cgroups, inodes,
    report::{Body, Emitted, Envelope},
    run::Prepared,
    tcp,
    tracefs::Tracefs,
    triage, zombies,
};

/// One registered detector: its command line, how it starts, what it asks of the
/// kernel and how it copes without it (the run-time side is [`crate::run::Detector`]).
pub struct Entry {
    /// The subcommand's one-line description (`tracer --help`).
    pub about: &'static str,
    /// Adds the detector's options to its subcommand (its `Args::augment_args`).
    pub cli: fn(clap::Command) -> clap::Command,
    /// Checks the parsed options and says what to load.
    pub prepare: fn(&ArgMatches) -> anyhow::Result<Prepared>,
    /// Its metrics, described (docs/metrics.md lists them).
    pub metrics: &'static [&'static crate::prom::Metric],
    /// Its report type: reads one of its JSON reports back (tests, fixtures).
    pub read: fn(&str) -> serde_json::Result<Emitted>,
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

impl Entry {
    /// The subcommand: its name is the spec's detector name.
    pub fn command(&self) -> clap::Command {
        (self.cli)(clap::Command::new(self.spec.detector)).about(self.about)
    }
}

/// The entry whose subcommand is `name`.
pub fn find(name: &str) -> Option<&'static Entry> {
    ALL.iter().find(|e| e.spec.detector == name)
}

/// Parses a detector's options from its subcommand's matches.
fn parse<A: clap::FromArgMatches>(m: &ArgMatches) -> anyhow::Result<A> {
    A::from_arg_matches(m).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A JSON report of type `B` read back, as the sinks get it.
fn read<B: Body + serde::de::DeserializeOwned>(json: &str) -> serde_json::Result<Emitted> {
    let r: Envelope<B> = serde_json::from_str(json)?;
    Ok(Emitted {
        header: r.header,
        body: std::sync::Arc::new(r.body),
    })
}

/// Every described metric: the common ones, then each detector's (docs/metrics.md
/// lists them, checked by a unit test).
pub fn all_metrics() -> Vec<&'static crate::prom::Metric> {
    (crate::prom::COMMON.iter().copied())
        .chain(ALL.iter().flat_map(|e| e.metrics.iter().copied()))
        .collect()
}

pub const ALL: &[Entry] = &[
    Entry {
        about: "Where to look first: the first-60-seconds USE check of CPU, memory, disk, network, kernel log and leaks (Netflix). Exit 0 ok, 3 warn, 4 crit",
        cli: triage::Args::augment_args,
        prepare: |m| triage::prepare(parse(m)?),
        metrics: triage::metrics::METRICS,
        read: read::<triage::TriageReport>,
        spec: &triage::SPEC,
        choices: &[],
        fallback: "the /proc and /sys checks run without it; run-queue latency is marked skipped",
        path: "tracepoints",
        probe_path: None,
    },
    Entry {
        about: "TCP memory pressure episodes, who causes them, what to set (Cloudflare incident)",
        cli: tcp::Args::augment_args,
        prepare: |m| tcp::prepare(parse(m)?),
        metrics: tcp::metrics::METRICS,
        read: read::<tcp::TcpPressureReport>,
        spec: &tcp::SPEC,
        choices: tcp::CHOICES,
        fallback: "episodes and TcpExt counters from /proc sampling still work",
        path: "tracepoints + /proc sampling",
        probe_path: None,
    },
    Entry {
        about: "Leaked and dying cgroups and who creates them (LinkedIn incident)",
        cli: cgroups::Args::augment_args,
        prepare: |m| cgroups::prepare(parse(m)?),
        metrics: cgroups::metrics::METRICS,
        read: read::<cgroups::CgroupsReport>,
        spec: &cgroups::SPEC,
        choices: &[],
        fallback: "no per-mover task counts",
        path: "tracepoints",
        probe_path: None,
    },
    Entry {
        about: "Which filesystem runs out of inodes, who creates the files, where (Sentry incident)",
        cli: inodes::Args::augment_args,
        prepare: |m| inodes::prepare(parse(m)?),
        metrics: inodes::metrics::METRICS,
        read: read::<inodes::InodesReport>,
        spec: &inodes::SPEC,
        choices: inodes::CHOICES,
        fallback: "without ext4 hooks (ext4 module not loaded): usage, ETA from statvfs and \
                   ENOSPC from syscalls, creations per process/directory from the inode \
                   creations path; without syscall hooks: no ENOSPC counts",
        path: "tracepoints",
        probe_path: None,
    },
    Entry {
        about: "Parents that leave zombie children unreaped, and PID headroom (Uber incident)",
        cli: zombies::Args::augment_args,
        prepare: |m| zombies::prepare(parse(m)?),
        metrics: zombies::metrics::METRICS,
        read: read::<zombies::ZombiesReport>,
        spec: &zombies::SPEC,
        choices: &[],
        fallback: "release time from sched_process_free, /proc for parents",
        path: "tracepoints",
        probe_path: Some(|t| zombies::ExitPath::probe(t).map(zombies::ExitPath::describe)),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_kind_belongs_to_one_detector() {
        for v in 0..=u8::MAX {
            let Some(kind) = tracer_common::EventKind::from_u32(v.into()) else {
                continue;
            };
            let owners: Vec<&str> = ALL
                .iter()
                .filter(|e| e.spec.kinds.contains(&kind))
                .map(|e| e.spec.detector)
                .collect();
            assert_eq!(owners.len(), 1, "{kind:?} is owned by {owners:?}");
        }
    }

    #[test]
    fn every_detector_has_a_subcommand_that_parses() {
        for e in ALL {
            let m = e
                .command()
                .try_get_matches_from([e.spec.detector, "-d", "1s"])
                .unwrap_or_else(|err| panic!("{}: {err}", e.spec.detector));
            assert_eq!(
                m.get_one::<std::time::Duration>("duration")
                    .map(|d| d.as_secs()),
                Some(1)
            );
        }
    }
}
