//! The capabilities the tracer needs: the smallest set with which every detector (and
//! `tracer serve`) gives the same report as root, found by running each one as an
//! unprivileged user holding the set minus one capability at a time. The error
//! messages, `tracer doctor`, the deployment files (deploy/) and the README list this
//! set; tests/tests/privileges.rs checks that they agree.
use std::fs;

/// One capability and what the tracer does with it.
#[derive(Debug)]
pub struct Cap {
    /// As capabilities(7) spells it.
    pub name: &'static str,
    bit: u32,
    /// Other capabilities that grant the same (CAP_SYS_ADMIN lets a process load
    /// eBPF programs, CAP_DAC_OVERRIDE lets it read any file).
    or: &'static [u32],
    /// What fails without it.
    pub why: &'static str,
    /// The detectors that need it; empty: every load of the eBPF object does.
    pub detectors: &'static [&'static str],
    /// What those detectors do without it, when they still run (None: they cannot).
    pub without: Option<&'static str>,
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_SYS_ADMIN: u32 = 21;

/// The set, in the order the messages list it.
pub const NEEDED: &[Cap] = &[
    Cap {
        name: "CAP_BPF",
        bit: 39,
        or: &[CAP_SYS_ADMIN],
        why: "load eBPF programs and create their maps",
        detectors: &[],
        without: None,
    },
    Cap {
        name: "CAP_PERFMON",
        bit: 38,
        or: &[CAP_SYS_ADMIN],
        why: "attach programs to tracepoints",
        detectors: &[],
        without: None,
    },
    Cap {
        name: "CAP_DAC_READ_SEARCH",
        bit: 2,
        or: &[CAP_DAC_OVERRIDE],
        why: "read the tracepoint format files in tracefs, which is root's with mode 0700, \
              and list other users' /proc/PID/fd",
        detectors: &[],
        without: None,
    },
    Cap {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        or: &[],
        why: "resolve other users' /proc/PID/fd links and cwd: owners of sockets, \
              directories of new inodes",
        detectors: &["tcp-pressure", "inodes"],
        without: None,
    },
    Cap {
        name: "CAP_SYSLOG",
        bit: 34,
        or: &[],
        why: "read the kernel log, /dev/kmsg, for triage's kernel findings",
        detectors: &["triage"],
        without: Some("triage skips the kernel log"),
    },
];

/// The one that reads tracefs, which is root's with mode 0700.
pub const READ_TRACEFS: &Cap = &NEEDED[2];

/// The names of [`NEEDED`], e.g. for "CAP_BPF, CAP_PERFMON and ...".
pub fn names() -> Vec<&'static str> {
    NEEDED.iter().map(|c| c.name).collect()
}

/// `a, b and c`.
pub fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The capabilities a run of `detectors` needs: what every load of the eBPF object
/// needs (all that an empty list gets), and what those detectors need besides.
pub fn needed(detectors: &[&str]) -> Vec<&'static Cap> {
    NEEDED
        .iter()
        .filter(|c| c.detectors.is_empty() || detectors.iter().any(|d| c.detectors.contains(d)))
        .collect()
}

/// The capabilities a run of `detectors` needs that this process lacks.
pub fn missing(detectors: &[&str]) -> Vec<&'static Cap> {
    lacking(needed(detectors))
}

/// Those of the whole set ([`NEEDED`]: every detector) that this process lacks.
pub fn missing_any() -> Vec<&'static Cap> {
    lacking(NEEDED.iter().collect())
}

/// Those of `caps` this process lacks in its effective set (a capability that grants
/// the same counts as held).
fn lacking(caps: Vec<&'static Cap>) -> Vec<&'static Cap> {
    let eff = effective();
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    caps.into_iter()
        .filter(|c| !has(c.bit) && !c.or.iter().any(|&b| has(b)))
        .collect()
}

/// "needs root (or CAP_A and CAP_B), and this process lacks CAP_B (to ...)": the
/// shortfall of `missing` among `needed`, for the one-sentence errors.
pub fn shortfall(needed: &[&Cap], missing: &[&Cap]) -> String {
    let needed: Vec<&str> = needed.iter().map(|c| c.name).collect();
    let lacks: Vec<String> = missing
        .iter()
        .map(|c| format!("{} (to {})", c.name, c.why))
        .collect();
    let lacks: Vec<&str> = lacks.iter().map(String::as_str).collect();
    format!(
        "needs root (or {}), and this process lacks {}",
        and_list(&needed),
        and_list(&lacks)
    )
}

/// Why perf events (the way tracepoint programs attach) may be refused although the set
/// is held: Debian's and Ubuntu's kernels add a kernel.perf_event_paranoid level 3 (their
/// default) that lets only CAP_SYS_ADMIN open them; upstream kernels treat 3 as 2. None
/// when that is not the case here (level 2 or less, or CAP_SYS_ADMIN held).
pub fn paranoid_perf_events() -> Option<String> {
    const CAP_SYS_ADMIN: u32 = 21;
    let level: i32 = fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (level > 2 && effective() & (1u64 << CAP_SYS_ADMIN) == 0).then(|| {
        format!(
            "kernel.perf_event_paranoid is {level} here, and kernels with Debian's or Ubuntu's \
             patch then let only CAP_SYS_ADMIN open perf events, which attach tracepoint \
             programs: set `sysctl kernel.perf_event_paranoid=2` (the capability set then \
             suffices) or run as root"
        )
    })
}

fn effective() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_as_sentences() {
        assert_eq!(and_list(&["A"]), "A");
        assert_eq!(and_list(&["A", "B", "C"]), "A, B and C");
        assert_eq!(names()[..2], ["CAP_BPF", "CAP_PERFMON"]);
        let zombies: Vec<_> = needed(&["zombies"]).iter().map(|c| c.name).collect();
        assert_eq!(zombies, ["CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH"]);
        assert_eq!(needed(&[]).len(), 3);
        assert_eq!(needed(&["triage", "inodes"]).len(), NEEDED.len());
    }
}
