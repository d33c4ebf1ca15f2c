//! Forks refused with EAGAIN (issue 22): clone, clone3, fork and vfork returning
//! -EAGAIN, counted per syscall in the kernel and per process here, each process
//! attributed to its pids cgroup with the reason: that cgroup (or an ancestor) at its
//! pids.max, the global pid space (pid_max / threads-max) nearly full, or unknown
//! (RLIMIT_NPROC, or a limit gone by the time the record was read).
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tracer_common::{
    comm_str,
    zombies::refusals::{ForkCall, ForkRefusal},
};

use super::budgets::{Counters, PidsHierarchy};
use crate::{
    container::{self, InCgroup},
    output::{Row, Table},
    procinfo,
    run::{self, BadRecord},
};

/// Processes whose refusals are kept one by one; more are counted in `untracked`.
pub const PROCESSES_CAPACITY: usize = 1_024;
/// Processes in the report (and with series), the most refused first.
pub const ROWS: usize = 20;
/// The global pid space counts as the reason at this share of min(pid_max, threads-max).
const GLOBAL_FULL: f64 = 0.95;

/// The hooks, as the report and doctor name them.
pub const HOOKS: &str = "syscalls:sys_exit_{clone,clone3,fork,vfork}";

/// Why a fork was refused, as far as the tracer can tell when it reads the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The process's pids cgroup, or an ancestor (`limit_cgroup`), was at its pids.max.
    PidsMax,
    /// The host's tasks were at 95 % of min(pid_max, threads-max).
    Global,
    /// Neither: RLIMIT_NPROC, or the limit was gone when the record was read.
    Unknown,
}

/// Refused forks per syscall.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BySyscall {
    pub clone: u64,
    pub clone3: u64,
    pub fork: u64,
    pub vfork: u64,
}

impl BySyscall {
    fn add(&mut self, call: ForkCall, n: u64) {
        match call {
            ForkCall::Clone => self.clone += n,
            ForkCall::Clone3 => self.clone3 += n,
            ForkCall::Fork => self.fork += n,
            ForkCall::Vfork => self.vfork += n,
        }
    }

    pub fn total(&self) -> u64 {
        self.clone + self.clone3 + self.fork + self.vfork
    }
}

/// A process refused a fork: an element of `fork_refusals.processes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefusalRow {
    /// The refused process (tgid) and the comm it had then.
    pub pid: u32,
    pub comm: String,
    /// Its cgroup in the pids hierarchy ("-" when it was gone or there is no pids
    /// hierarchy), and its container or pod.
    #[serde(flatten)]
    pub cgroup: InCgroup,
    pub refused: u64,
    pub by_syscall: BySyscall,
    /// At its last refusal.
    pub reason: Reason,
    /// The cgroup at its pids.max, for reason pids_max.
    pub limit_cgroup: Option<String>,
}

impl Row for RefusalRow {
    const HEADER: &'static [&'static str] = &[
        "PID", "COMM", "REFUSED", "CLONE", "CLONE3", "FORK", "VFORK", "REASON", "CGROUP",
    ];

    fn cells(&self) -> Vec<String> {
        let s = &self.by_syscall;
        let reason = match (self.reason, &self.limit_cgroup) {
            (Reason::PidsMax, Some(c)) => format!("pids.max of {c}"),
            (Reason::PidsMax, None) => "pids.max".into(),
            (Reason::Global, _) => "global pid space".into(),
            (Reason::Unknown, _) => "unknown".into(),
        };
        vec![
            self.pid.to_string(),
            self.comm.clone(),
            self.refused.to_string(),
            s.clone.to_string(),
            s.clone3.to_string(),
            s.fork.to_string(),
            s.vfork.to_string(),
            reason,
            self.cgroup.text(),
        ]
    }
}

/// What `fork_refusals` reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ForkRefusals {
    /// The hooks attached, or which are missing.
    pub hook: String,
    /// Refused forks seen by the hook (the kernel's exact count, also when records were
    /// lost); None when no refusal hook is attached.
    pub total: Option<u64>,
    pub by_syscall: BySyscall,
    /// The processes refused, the most refused first (at most 20).
    pub processes: Vec<RefusalRow>,
    /// Refusals of processes beyond the 1,024 tracked one by one.
    pub processes_untracked: u64,
}

/// The refusals seen so far.
pub struct Refusals {
    pub attached: bool,
    pub hook: String,
    rows: HashMap<u32, RefusalRow>,
    untracked: u64,
}

impl Refusals {
    /// `missing`: refusal hooks that did not attach.
    pub fn new(missing: &[String]) -> Refusals {
        let hook = if missing.is_empty() {
            format!("{HOOKS} (every syscall takes the tracing slow path: docs/zombies.md)")
        } else if missing.len() == ForkCall::ALL.len() {
            format!(
                "none: {HOOKS} did not attach; pids.events `max` still counts refusals at a pids.max"
            )
        } else {
            format!("{HOOKS} without {}", missing.join(", "))
        };
        Refusals {
            attached: missing.len() < ForkCall::ALL.len(),
            hook,
            rows: HashMap::new(),
            untracked: 0,
        }
    }

    /// A ForkRefused record: count it for its process, naming the cgroup and reason
    /// while the process still exists.
    pub fn on_event(&mut self, data: &[u8], hier: Option<&PidsHierarchy>) -> Result<(), BadRecord> {
        let (_, ev) = run::decode::<ForkRefusal>(data)?;
        let call = ForkCall::from_u32(ev.call).ok_or(BadRecord)?;
        let pid = ev.header.tgid;
        if !self.rows.contains_key(&pid) && self.rows.len() >= PROCESSES_CAPACITY {
            self.untracked += 1;
            return Ok(());
        }
        let row = self.rows.entry(pid).or_insert_with(|| {
            let cg = hier
                .and_then(|h| h.cgroup_of(pid))
                .unwrap_or_else(|| "-".into());
            RefusalRow {
                pid,
                comm: comm_str(&ev.comm).to_string(),
                cgroup: InCgroup {
                    container: container::of_cgroup(&cg).map(container::Container::named),
                    cgroup: cg,
                },
                refused: 0,
                by_syscall: BySyscall::default(),
                reason: Reason::Unknown,
                limit_cgroup: None,
            }
        });
        row.refused += 1;
        row.by_syscall.add(call, 1);
        // Judged again until a limit is found (a few small reads per refusal).
        if row.reason != Reason::PidsMax {
            let (reason, limit) = reason_of(hier, &row.cgroup.cgroup);
            row.reason = reason;
            row.limit_cgroup = limit;
        }
        Ok(())
    }

    /// Refusals of processes in the subtree at `path` (None: no hook).
    pub fn in_subtree(&self, path: &str) -> Option<u64> {
        self.attached.then(|| {
            (self.rows.values())
                .filter(|r| under(&r.cgroup.cgroup, path))
                .map(|r| r.refused)
                .sum()
        })
    }

    /// The report's section; `counts` are the kernel's per-syscall counters.
    pub fn report(&self, counts: BySyscall) -> ForkRefusals {
        let mut processes: Vec<RefusalRow> = self.rows.values().cloned().collect();
        processes.sort_by(|a, b| b.refused.cmp(&a.refused).then(a.pid.cmp(&b.pid)));
        processes.truncate(ROWS);
        ForkRefusals {
            hook: self.hook.clone(),
            total: self.attached.then(|| counts.total()),
            by_syscall: counts,
            processes,
            processes_untracked: self.untracked,
        }
    }
}

/// Whether cgroup `path` is `root` or below it.
fn under(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Why the process in cgroup `rel` was refused: the nearest cgroup from it to the root
/// at its pids.max, else the global pid space when nearly full, else unknown.
fn reason_of(hier: Option<&PidsHierarchy>, rel: &str) -> (Reason, Option<String>) {
    if let Some(h) = hier
        && rel.starts_with('/')
    {
        let mut path = rel.to_string();
        loop {
            if let Some(c) = Counters::read(&h.dir(&path))
                && c.max.is_some_and(|m| c.current >= m)
            {
                return (Reason::PidsMax, Some(path));
            }
            match path.rfind('/') {
                Some(0) if path.len() > 1 => path = "/".into(),
                Some(i) if i > 0 => path.truncate(i),
                _ => break,
            }
        }
    }
    let global = (procinfo::tasks_in_use(), procinfo::pid_limit());
    if let (Some(used), Some(limit)) = global
        && used as f64 >= limit as f64 * GLOBAL_FULL
    {
        return (Reason::Global, None);
    }
    (Reason::Unknown, None)
}

/// The FORK REFUSALS section of the text.
pub fn text(r: &ForkRefusals) -> String {
    let mut t = String::from("\nFORK REFUSALS (fork/clone returned EAGAIN)\n");
    t += &format!("  seen by: {}\n", r.hook);
    let Some(total) = r.total else {
        return t;
    };
    let s = &r.by_syscall;
    t += &format!(
        "  {total} refused: clone {}, clone3 {}, fork {}, vfork {}\n",
        s.clone, s.clone3, s.fork, s.vfork
    );
    if r.processes_untracked > 0 {
        t += &format!(
            "  note: {} refusals of processes beyond the {PROCESSES_CAPACITY} tracked are in the total only\n",
            r.processes_untracked
        );
    }
    if !r.processes.is_empty() {
        t += &Table::of(&r.processes).render();
    }
    t
}

#[cfg(test)]
mod tests {
    use tracer_common::{COMM_LEN, EventHeader, EventKind, as_bytes};

    use super::*;

    fn record(pid: u32, call: ForkCall) -> ForkRefusal {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"bomb");
        ForkRefusal {
            header: EventHeader {
                kind: EventKind::ForkRefused as u32,
                tgid: pid,
                ts_ns: 1,
            },
            tid: pid,
            call: call as u32,
            comm,
        }
    }

    #[test]
    fn refusals_are_counted_per_process_and_syscall_and_subtree() {
        let mut r = Refusals::new(&[]);
        // A pid that does not exist: no cgroup, the reason is not a pids.max.
        for call in [ForkCall::Clone, ForkCall::Clone, ForkCall::Vfork] {
            r.on_event(as_bytes(&record(u32::MAX - 1, call)), None)
                .unwrap();
        }
        let rep = r.report(BySyscall {
            clone: 2,
            vfork: 1,
            ..Default::default()
        });
        assert_eq!(rep.total, Some(3));
        let p = &rep.processes[0];
        assert_eq!(
            (p.refused, p.by_syscall.clone, p.by_syscall.vfork),
            (3, 2, 1)
        );
        assert_eq!(p.comm, "bomb");
        assert_eq!(p.cgroup.cgroup, "-");
        assert_ne!(p.reason, Reason::PidsMax);
        assert_eq!(r.in_subtree("/"), Some(3));
        assert_eq!(r.in_subtree("/a"), Some(0));
        let mut bad = record(1, ForkCall::Clone);
        bad.call = 9;
        assert!(r.on_event(as_bytes(&bad), None).is_err());
        assert_eq!(
            Refusals::new(&vec!["a".to_string(); 4]).in_subtree("/"),
            None
        );
    }

    #[test]
    fn a_subtree_holds_its_descendants_only() {
        assert!(under("/a/b", "/a"));
        assert!(under("/a", "/a"));
        assert!(!under("/ab", "/a"));
        assert!(under("/x", "/"));
    }
}
