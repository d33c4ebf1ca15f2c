//! Containers' inits and the reaper chain: whether a non-reaping parent is PID 1 of a pid
//! namespace (a container's init: then nothing else in the container will ever reap its
//! zombies), and who reaps a parent's zombies once it exits.
//!
//! The kernel's rule (kernel/exit.c, forget_original_parent): when a process exits, its
//! children go to another live thread of it; else to the nearest ancestor in the same
//! pid namespace that is a child subreaper (prctl PR_SET_CHILD_SUBREAPER); else to PID 1
//! of that namespace. When PID 1 of a namespace exits, the kernel kills every process in
//! it and PID 1 reaps its own zombies on the way out (zap_pid_ns_processes).
//!
//! /proc shows the pid namespace levels (NSpid in /proc/PID/status) but not the
//! subreaper flag, so subreapers are known by name: the runtimes' shims and user
//! managers that set it (containerd-shim, conmon, systemd --user, tini -s). An ancestor
//! that set the flag under another name would take the zombies first; `how` says so.
use procfs::process::Process;
use serde::{Deserialize, Serialize};

use super::rows::ParentRow;

/// Programs that reap what they inherit when they run as a container's PID 1.
const INITS: &[&str] = &[
    "tini",
    "docker-init",
    "dumb-init",
    "catatonit",
    "pause",
    "systemd",
    "init",
    "s6-svscan",
    "runsvdir",
    "supervisord",
    "my_init",
];

/// Programs that make themselves child subreapers (comm, 15 characters at most).
const SUBREAPERS: &[&str] = &[
    "containerd-shim",
    "conmon",
    "systemd",
    "tini",
    "docker-init",
];

/// How many ancestors the walk looks at, at most (pid namespaces nest a few deep, and
/// process trees a few dozen).
const MAX_ANCESTORS: usize = 64;

/// A parent that is PID 1 of its own pid namespace: a container's init.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamespaceInit {
    /// What runs as PID 1 there (e.g. `sleep`).
    pub comm: String,
    /// Whether that is a known init that reaps (tini, dumb-init, docker-init, ...).
    pub known_init: bool,
    /// Its pid in each pid namespace, the host's first (NSpid), ending in 1.
    pub ns_pids: Vec<u32>,
}

/// Who reaps a parent's zombies once the parent exits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReaperAfterExit {
    /// The reaper's pid on the host.
    pub pid: u32,
    pub comm: String,
    pub rule: ReaperRule,
    /// Whether it is known to reap what it inherits: a known init or subreaper, or the
    /// parent itself on exit. A namespace's PID 1 that is not an init (`sleep`) is not.
    pub reaps: bool,
    /// How it was found, and what /proc cannot show.
    pub how: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReaperRule {
    /// The nearest ancestor in the same pid namespace known to be a child subreaper.
    Subreaper,
    /// PID 1 of the parent's pid namespace (no subreaper between them).
    NamespaceInit,
    /// The parent is PID 1 of its namespace: it reaps its zombies as it exits.
    ItselfOnExit,
}

/// What /proc/PID/status and /proc/PID/stat tell of a process.
struct Proc {
    comm: String,
    ppid: u32,
    ns_pids: Vec<u32>,
}

fn read(pid: u32) -> Option<Proc> {
    let p = Process::new(pid as i32).ok()?;
    let st = p.status().ok()?;
    let ns_pids = (st.nspid?.into_iter())
        .map(|n| n as u32)
        .collect::<Vec<_>>();
    Some(Proc {
        comm: st.name,
        ppid: st.ppid as u32,
        ns_pids,
    })
}

/// Whether a process with this NSpid is PID 1 of its namespace.
fn is_namespace_init(ns_pids: &[u32]) -> bool {
    ns_pids.last() == Some(&1)
}

fn known(list: &[&str], comm: &str) -> bool {
    list.iter()
        .any(|n| comm == *n || comm.starts_with(&format!("{n}-")))
}

/// `pid` as a container's init, when it is PID 1 of a pid namespace other than the
/// host's.
pub fn namespace_init(pid: u32) -> Option<NamespaceInit> {
    let p = read(pid)?;
    (p.ns_pids.len() > 1 && is_namespace_init(&p.ns_pids)).then(|| NamespaceInit {
        known_init: known(INITS, &p.comm),
        comm: p.comm,
        ns_pids: p.ns_pids,
    })
}

/// Who reaps `pid`'s children once it exits, by the kernel's rule (module comment).
pub fn reaper_after_exit(pid: u32) -> Option<ReaperAfterExit> {
    let me = read(pid)?;
    if is_namespace_init(&me.ns_pids) {
        return Some(ReaperAfterExit {
            pid,
            comm: me.comm,
            rule: ReaperRule::ItselfOnExit,
            reaps: true,
            how: "NSpid ends in 1: it is PID 1 of its pid namespace".into(),
        });
    }
    let mut at = me.ppid;
    for _ in 0..MAX_ANCESTORS {
        let a = read(at)?;
        if a.ns_pids.len() != me.ns_pids.len() {
            return None;
        }
        let found = |rule, how: String| ReaperAfterExit {
            pid: at,
            comm: a.comm.clone(),
            rule,
            reaps: rule == ReaperRule::Subreaper || known(INITS, &a.comm) || a.ns_pids.len() == 1,
            how,
        };
        if is_namespace_init(&a.ns_pids) {
            return Some(found(
                ReaperRule::NamespaceInit,
                "PID 1 of its pid namespace (NSpid), with no known child subreaper between; \
                 /proc does not show the subreaper flag, so one set under another name would reap first"
                    .into(),
            ));
        }
        if known(SUBREAPERS, &a.comm) {
            return Some(found(
                ReaperRule::Subreaper,
                format!(
                    "nearest ancestor in its pid namespace known to set PR_SET_CHILD_SUBREAPER (by name: {})",
                    a.comm
                ),
            ));
        }
        at = a.ppid;
    }
    None
}

/// The words for a parent that is a container's PID 1, and for where any parent's
/// zombies go when it exits.
pub fn hints(parents: &[ParentRow]) -> Vec<String> {
    parents.iter().filter_map(hint).collect()
}

fn hint(p: &ParentRow) -> Option<String> {
    if let Some(ni) = &p.namespace_init {
        let where_ = match &p.cgroup.container {
            Some(c) => format!("container {}", c.short()),
            None => format!("the container in cgroup {}", p.cgroup.cgroup),
        };
        let n = p.zombies;
        return Some(if ni.known_init {
            format!(
                "PID 1 of {where_} is `{}`, an init, yet holds {n} stuck zombie(s): check that it reaps (tini: -s when it is not PID 1)",
                ni.comm
            )
        } else {
            format!(
                "PID 1 of {where_} is `{}`, not an init: it never reaps its {n} stuck zombie(s) and nothing else in the container will. \
                 Run it with --init, tini or dumb-init, or shareProcessNamespace: true in Kubernetes (the pause container reaps)",
                ni.comm
            )
        });
    }
    let r = p.reaper_after_exit.as_ref()?;
    Some(if r.reaps {
        format!(
            "if {} ({}) exits, {} ({}) reaps its zombies: {}",
            p.pid, p.comm, r.pid, r.comm, r.how
        )
    } else {
        format!(
            "if {} ({}) exits, its zombies go to {} ({}), which is not an init and will not reap them either: {}",
            p.pid, p.comm, r.pid, r.comm, r.how
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inits_and_subreapers_by_name() {
        assert!(known(INITS, "tini") && known(INITS, "dumb-init"));
        assert!(!known(INITS, "sleep") && !known(INITS, "initx"));
        assert!(known(SUBREAPERS, "containerd-shim"));
        assert!(is_namespace_init(&[4242, 1]) && !is_namespace_init(&[4242, 7]));
    }

    #[test]
    fn own_process_is_not_a_namespace_init_and_has_a_reaper() {
        let me = std::process::id();
        assert_eq!(namespace_init(me), None);
        let r = reaper_after_exit(me).expect("a reaper");
        assert_ne!(r.rule, ReaperRule::ItselfOnExit);
    }
}
