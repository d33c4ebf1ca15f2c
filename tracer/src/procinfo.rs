//! /proc and /sys helpers shared by the detectors (through the procfs crate).
use std::{fs, path::PathBuf};

use procfs::process::Process;

/// The process's cgroup path: the cgroup2 entry ("0::/...") when present, else the
/// name=systemd entry, else the first. "-" when the process is gone.
pub fn cgroup_of(pid: u32) -> String {
    let Ok(groups) = Process::new(pid as i32).and_then(|p| p.cgroups()) else {
        return "-".into();
    };
    let groups: Vec<_> = groups.into_iter().collect();
    groups
        .iter()
        .find(|g| g.hierarchy == 0)
        .or_else(|| {
            groups
                .iter()
                .find(|g| g.controllers.iter().any(|c| c == "name=systemd"))
        })
        .or_else(|| groups.first())
        .map(|g| g.pathname.clone())
        .unwrap_or_else(|| "-".into())
}

/// The cgroup directory of `pid` in the hierarchy that has `controller` (v1 mount or
/// cgroup2 with the controller enabled), e.g. for pids.current / pids.max.
pub fn controller_dir(pid: u32, controller: &str) -> Option<PathBuf> {
    let groups = Process::new(pid as i32).ok()?.cgroups().ok()?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    for g in groups {
        let v2 = g.hierarchy == 0;
        for line in mounts.lines() {
            // mountinfo: ... mount_point ... - fstype source super_options
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mut post = post.split(' ');
            let fstype = post.next().unwrap_or("");
            let opts = post.nth(1).unwrap_or("");
            let Some(mount_point) = pre.split(' ').nth(4) else {
                continue;
            };
            let matches = if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup"
                    && opts.split(',').any(|o| o == controller)
                    && g.controllers.iter().any(|c| c == controller)
            };
            if !matches {
                continue;
            }
            let dir = PathBuf::from(mount_point).join(g.pathname.trim_start_matches('/'));
            if dir.join(format!("{controller}.current")).exists()
                || dir.join(format!("{controller}.max")).exists()
            {
                return Some(dir);
            }
        }
    }
    None
}

pub fn comm_of(pid: u32) -> Option<String> {
    Process::new(pid as i32).ok()?.stat().ok().map(|s| s.comm)
}

/// Command line joined by spaces ("[comm]" for kernel threads, "-" when gone).
pub fn cmdline_of(pid: u32) -> String {
    match Process::new(pid as i32).and_then(|p| p.cmdline()) {
        Ok(c) if !c.is_empty() => c.join(" "),
        Ok(_) => comm_of(pid)
            .map(|c| format!("[{c}]"))
            .unwrap_or_else(|| "-".into()),
        Err(_) => "-".into(),
    }
}

pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A process as /proc/PID/stat shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub state: char,
    /// Start time in clock ticks since boot: with the pid, the process's identity.
    pub start_ticks: u64,
    /// CPU time used so far (user + system), in clock ticks.
    pub cpu_ticks: u64,
}

pub fn stat_of(pid: u32) -> Option<ProcStat> {
    let s = Process::new(pid as i32).ok()?.stat().ok()?;
    Some(ProcStat {
        pid,
        ppid: s.ppid as u32,
        comm: s.comm,
        state: s.state,
        start_ticks: s.starttime,
        cpu_ticks: s.utime + s.stime,
    })
}

/// Whether `pid` is a kernel thread (PF_KTHREAD): ksoftirqd, kworkers and the like,
/// which run softirq work on behalf of whatever socket needs it.
pub fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u32 = 0x0020_0000;
    Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| s.flags & PF_KTHREAD != 0)
}

/// Every process in /proc (threads excluded).
pub fn all_stats() -> Vec<ProcStat> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| p.ok())
        .filter_map(|p| {
            let s = p.stat().ok()?;
            Some(ProcStat {
                pid: s.pid as u32,
                ppid: s.ppid as u32,
                comm: s.comm,
                state: s.state,
                start_ticks: s.starttime,
                cpu_ticks: s.utime + s.stime,
            })
        })
        .collect()
}

/// What the process does with SIGCHLD, from SigIgn/SigCgt in /proc/PID/status.
/// The PID limit fork() hits first: min(kernel.pid_max, kernel.threads-max), since
/// every task (thread) takes a PID.
pub fn pid_limit() -> Option<u64> {
    match (
        read_u64("/proc/sys/kernel/pid_max"),
        read_u64("/proc/sys/kernel/threads-max"),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub fn sigchld_disposition(pid: u32) -> &'static str {
    const SIGCHLD_BIT: u64 = 1 << (17 - 1);
    match Process::new(pid as i32).and_then(|p| p.status()) {
        Ok(st) if st.sigign & SIGCHLD_BIT != 0 => "ignore",
        Ok(st) if st.sigcgt & SIGCHLD_BIT != 0 => "handler",
        Ok(_) => "default",
        Err(_) => "unknown",
    }
}

pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second().max(1)
}

/// Clock readings in ns.
pub fn monotonic_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_MONOTONIC)
}

pub fn boottime_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_BOOTTIME)
}

fn clock_ns(id: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(id)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A number from a /proc/sys or /sys file.
pub fn read_u64(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Tasks (threads included) in the system, the 4th field of /proc/loadavg's "r/n".
pub fn tasks_in_use() -> Option<u64> {
    let s = fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id();
        let st = stat_of(me).unwrap();
        assert_eq!(st.pid, me);
        assert!(st.start_ticks > 0);
        assert!(cgroup_of(me).starts_with('/'));
        assert!(["default", "handler", "ignore"].contains(&sigchld_disposition(me)));
        assert!(tasks_in_use().unwrap() >= 1);
        assert!(!is_kernel_thread(me));
        assert!(is_kernel_thread(2), "kthreadd");
        // Read monotonic first: BOOTTIME = MONOTONIC + time suspended, read later.
        let mono = monotonic_ns();
        assert!(boottime_ns() >= mono);
    }
}
