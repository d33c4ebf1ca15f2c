//! The `tracer triage` report: one typed struct, built from the checks of one window,
//! that renders the text for people and gives the metrics; its JSON is its
//! serialization. Each check module (cpu.rs, kernel.rs, mem.rs, disk.rs, net.rs,
//! leaks.rs) fills its section; the rows of the USE table come from all of them.
use std::{borrow::Cow, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    metrics,
    rows::{self, CpuProcRow, Finding},
    runq::Quantiles,
};
use crate::{
    output::{Table, round3, serialize_round3},
    prom::{Families, PCT},
    report::Body,
    snapshot::Level,
};

/// What `tracer triage` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriageReport {
    /// `-d`: the window asked for, seconds.
    #[serde(serialize_with = "serialize_round3")]
    pub window_s: f64,
    /// The window measured (shorter when interrupted), seconds.
    #[serde(serialize_with = "serialize_round3")]
    pub measured_s: f64,
    pub cpus: usize,
    /// The worst row's level.
    pub worst: Level,
    /// The exit status: 0 ok, 3 warn, 4 crit, after `--fail-on`.
    pub exit_code: u8,
    /// `--since`: kernel log lines younger than this are counted.
    pub kernel_log_since_s: f64,
    /// The USE table, in the checklist's order.
    pub findings: Vec<Finding>,
    /// Run-queue latency over the window; null when the eBPF part is skipped.
    pub runqueue_latency_us: Option<Quantiles>,
    /// Parts of the check that could not run, and why.
    pub skipped: Vec<Skipped>,
    #[serde(flatten)]
    pub cpu: CpuSection,
    /// Kernel log lines of each kind worth a row; null when /dev/kmsg is not readable.
    pub kernel_log: Option<Vec<KernelLogRow>>,
    #[serde(flatten)]
    pub memory: MemorySection,
    #[serde(flatten)]
    pub disk: DiskSection,
    #[serde(flatten)]
    pub network: NetworkSection,
    #[serde(flatten)]
    pub leaks: LeaksSection,
    /// For the text only.
    #[serde(skip)]
    pub view: View,
}

/// What only the text shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// The run-queue latency's log2 slots (usecs), as the kernel counted them.
    pub runq_slots: Vec<u64>,
}

/// A part of the check that could not run, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub part: Cow<'static, str>,
    pub reason: String,
}

/// What the CPU checks measured (cpu.rs); each is absent when its /proc file was
/// not readable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// Shares of all CPUs' time over the window.
    #[serde(rename = "cpu", default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<Utilization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runnable: Option<Runnable>,
    /// PSI cpu "some" over the window, percent (one decimal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_psi_some_pct: Option<f64>,
    /// The 5 processes that used the most CPU over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_processes: Option<Vec<CpuProcRow>>,
}

/// Load averages (/proc/loadavg).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
    /// rising, falling or steady (1-min vs 15-min).
    pub trend: Cow<'static, str>,
}

/// Percent of all CPUs' time over the window, one decimal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Utilization {
    pub busy_pct: f64,
    pub user_pct: f64,
    pub system_pct: f64,
    pub iowait_pct: f64,
    pub steal_pct: f64,
    pub idle_pct: f64,
    pub per_cpu_busy_pct: Vec<f64>,
}

/// Runnable tasks sampled over the window (vmstat's `r`), one decimal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Runnable {
    pub mean: f64,
    pub per_cpu: f64,
    pub max: u64,
    pub samples: u64,
}

/// One kind of kernel log line found: an element of `kernel_log`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelLogRow {
    pub check: Cow<'static, str>,
    pub count: usize,
    /// The latest such line.
    pub latest: String,
    #[serde(serialize_with = "serialize_round3")]
    pub latest_age_s: f64,
}

/// What the memory checks measured (mem.rs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySection {
    /// Absent when /proc/meminfo was not readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_psi_some_pct: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// One decimal.
    pub available_pct: f64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
}

/// What the disk checks measured (disk.rs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskSection {
    /// Whole disks with I/O in the window.
    pub disks: Vec<DiskRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_psi_some_pct: Option<f64>,
}

/// One disk over the window (iostat -xz), one decimal: an element of `disks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskRow {
    pub device: String,
    pub iops: f64,
    pub reads_per_s: f64,
    pub writes_per_s: f64,
    pub mb_per_s: f64,
    pub await_ms: f64,
    pub r_await_ms: f64,
    pub w_await_ms: f64,
    pub write_kib_avg: f64,
    pub util_pct: f64,
    pub rotational: bool,
}

/// What the network checks measured (net.rs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkSection {
    /// Interfaces but lo with traffic in the window.
    pub interfaces: Vec<InterfaceRow>,
    /// Absent when /proc/net/snmp was not readable at both ends of the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Tcp>,
}

/// One interface over the window (sar -n DEV,EDEV), one decimal: an element of
/// `interfaces`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterfaceRow {
    pub interface: String,
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
    pub errors_per_s: f64,
    pub drops_per_s: f64,
    /// The link speed, when the driver reports one.
    pub speed_mbit: Option<u64>,
    /// Of the link speed, when known.
    pub util_pct: Option<f64>,
}

/// TCP over the window (sar -n TCP,ETCP), rates with one decimal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tcp {
    pub active_opens_per_s: f64,
    pub passive_opens_per_s: f64,
    pub established: u64,
    pub retrans_per_s: f64,
    /// Retransmitted of the segments sent, two decimals.
    pub retrans_pct: f64,
    pub out_segs: u64,
    pub estab_resets_per_s: f64,
}

/// What the leak checks saw (leaks.rs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaksSection {
    pub pids: Pids,
    /// Absent when the cgroup hierarchies could not be listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_hierarchies: Option<Vec<HierarchyRow>>,
    /// Filesystems with a fixed inode count, the fullest first; absent when the
    /// mounts could not be listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystems: Option<Vec<FsRow>>,
    /// Absent when /proc/sys/net/ipv4/tcp_mem or the counters were not readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_mem: Option<TcpMemRow>,
}

/// PID usage and zombies now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pids {
    /// Tasks (threads) in use: each holds a pid.
    pub in_use: Option<u64>,
    /// min(pid_max, threads-max).
    pub limit: Option<u64>,
    pub zombies_total: usize,
    /// The parents with the most zombies (at most 5).
    pub zombie_parents: Vec<ZombieParentRow>,
}

/// A parent with zombies: an element of `zombie_parents`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZombieParentRow {
    pub ppid: u32,
    pub comm: String,
    pub zombies: usize,
    /// Older than 5 s (dated by the kernel) or present through a window of >= 5 s.
    pub stuck: usize,
    pub in_flight: usize,
    /// The oldest zombie's age as the kernel dates it (/proc/PID/sched); None where it
    /// cannot (no CONFIG_SCHED_DEBUG, or a CPU the tracer may not run on).
    #[serde(default)]
    pub oldest_age_s: Option<f64>,
}

/// A cgroup hierarchy: an element of `cgroup_hierarchies`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HierarchyRow {
    pub name: String,
    pub version: u8,
    pub mount: PathBuf,
    pub live: u64,
    /// None when the kernel does not say.
    pub dying: Option<u64>,
}

/// A filesystem's usage, one decimal: an element of `filesystems`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FsRow {
    pub mount: PathBuf,
    pub fstype: String,
    pub device: String,
    pub inodes_used_pct: f64,
    pub blocks_used_pct: f64,
    pub inodes_full_blocks_free: bool,
}

/// TCP memory (pages) vs tcp_mem, and the pressure counters over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcpMemRow {
    pub pages: u64,
    pub low: u64,
    pub pressure: u64,
    pub high: u64,
    /// TCPMemoryPressures over the window, when the counter was readable at both ends.
    pub pressure_entries_in_window: Option<u64>,
    /// TCPAbortOnMemory over the window, likewise.
    pub aborts_on_memory_in_window: Option<u64>,
    /// One decimal.
    pub window_s: f64,
    /// The pods whose containers' TCP sockets hold the most memory now (tcp-pressure's
    /// SOCKET MEMORY BY POD), most first; absent when no pod's sockets hold any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_pods: Vec<crate::tcp::PodRow>,
}

impl Body for TriageReport {
    fn text(&self) -> String {
        let mut t = self.table_text();
        t += &self.top_text();
        t += "\nRUN-QUEUE LATENCY (runnable -> running, all CPUs)\n";
        match &self.runqueue_latency_us {
            Some(q) => t += &q.text(&self.view.runq_slots),
            None => t += "     skipped (see below)\n",
        }
        for s in &self.skipped {
            t += &format!("skipped: {}: {}\n", s.part, s.reason);
        }
        t
    }

    fn collect(&self, out: &mut Families) {
        use metrics::*;
        for f in &self.findings {
            let subject = f.subject.as_deref().unwrap_or("");
            let l = [
                ("resource", &*f.resource),
                ("check", f.check.as_str()),
                ("subject", subject),
            ];
            out.sample(&FINDING, &l, u64::from(f.severity));
        }
        out.sample(&WORST, &[], self.worst.severity());
        out.sample(&WINDOW, &[], round3(self.measured_s));
        if let Some(q) = &self.runqueue_latency_us {
            out.latency(&RUNQ_LATENCY, &[], &q.summary());
        }
        self.cpu_series(out);
        self.resource_series(out);
    }
}

impl TriageReport {
    /// The verdict line, the USE table and the next steps.
    fn table_text(&self) -> String {
        let counts = |l: Level| self.findings.iter().filter(|f| f.level == l).count();
        let mut t = format!(
            "verdict: {} ({} crit, {} warn, {} ok) over {:.1}s on {} CPUs\n\n",
            self.worst.as_str().to_uppercase(),
            counts(Level::Crit),
            counts(Level::Warn),
            counts(Level::Ok),
            self.measured_s,
            self.cpus
        );
        t += &Table::of(&self.findings).render();
        t += "\nNEXT STEPS\n";
        let next = rows::next_steps(&self.findings);
        if next.is_empty() {
            t += "  none: every row is ok\n";
        }
        for n in &next {
            t += &format!("  {n}\n");
        }
        t
    }

    /// TOP PROCESSES BY CPU, when /proc/stat was readable.
    fn top_text(&self) -> String {
        let Some(top) = &self.cpu.top_processes else {
            return String::new();
        };
        let mut t = "\nTOP PROCESSES BY CPU (over the window; 100% = one CPU)\n".to_string();
        if top.is_empty() {
            t += "  none used CPU\n";
        } else {
            t += &Table::of(top).render();
        }
        t
    }

    /// Load, CPU time by mode, runnable tasks and pressure.
    fn cpu_series(&self, out: &mut Families) {
        use metrics::*;
        if let Some(l) = &self.cpu.load {
            out.sample(&LOAD1, &[], l.one);
            out.sample(&LOAD5, &[], l.five);
            out.sample(&LOAD15, &[], l.fifteen);
        }
        if let Some(u) = &self.cpu.utilization {
            for (mode, pct) in [
                ("busy", u.busy_pct),
                ("user", u.user_pct),
                ("system", u.system_pct),
                ("iowait", u.iowait_pct),
                ("steal", u.steal_pct),
                ("idle", u.idle_pct),
            ] {
                out.sample(&CPU, &[("mode", mode)], pct / PCT);
            }
        }
        out.opt(&RUNNABLE, &[], self.cpu.runnable.as_ref().map(|r| r.mean));
        for (resource, pct) in [
            ("cpu", self.cpu.cpu_psi_some_pct),
            ("memory", self.memory.memory_psi_some_pct),
            ("io", self.disk.disk_psi_some_pct),
        ] {
            out.opt(&PSI, &[("resource", resource)], pct.map(|p| p / PCT));
        }
    }

    /// Memory, disks, TCP, pids, cgroups, inodes and TCP memory.
    fn resource_series(&self, out: &mut Families) {
        use metrics::*;
        if let Some(m) = &self.memory.memory {
            out.sample(&MEM_TOTAL, &[], m.total_bytes);
            out.sample(&MEM_AVAILABLE, &[], m.available_bytes);
            out.sample(&SWAP_USED, &[], m.swap_used_bytes);
        }
        for d in &self.disk.disks {
            let l = [("device", d.device.as_str())];
            out.sample(&DISK_AWAIT, &l, d.await_ms / crate::prom::MS);
            out.sample(&DISK_UTIL, &l, d.util_pct / PCT);
            out.sample(&DISK_IOPS, &l, d.iops);
        }
        if let Some(t) = &self.network.tcp {
            out.sample(&TCP_ESTABLISHED, &[], t.established);
            out.sample(&TCP_RETRANS, &[], t.retrans_pct / PCT);
        }
        let pids = &self.leaks.pids;
        out.opt(&TASKS, &[], pids.in_use);
        out.opt(&TASKS_LIMIT, &[], pids.limit);
        out.sample(&ZOMBIES, &[], pids.zombies_total as u64);
        for h in self.leaks.cgroup_hierarchies.iter().flatten() {
            out.opt(&CGROUPS_DYING, &[("hierarchy", h.name.as_str())], h.dying);
        }
        for f in self.leaks.filesystems.iter().flatten() {
            let mount = f.mount.display().to_string();
            let l = [
                ("mount", mount.as_str()),
                ("device", f.device.as_str()),
                ("fstype", f.fstype.as_str()),
            ];
            out.sample(&FS_INODES_USED, &l, f.inodes_used_pct / PCT);
        }
        if let Some(t) = self.leaks.tcp_mem.as_ref().filter(|t| t.pressure > 0) {
            out.sample(&TCP_MEM, &[], t.pages as f64 / t.pressure as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Envelope;

    fn fixture() -> TriageReport {
        let r: Envelope<TriageReport> =
            serde_json::from_str(include_str!("../prom/fixtures/triage.json")).unwrap();
        r.body
    }

    #[test]
    fn the_text_is_rendered_from_the_reports_fields() {
        let mut r = fixture();
        r.view.runq_slots = vec![0; 64];
        r.view.runq_slots[6] = 2099; // 32..63 us
        r.view.runq_slots[14] = 1680; // 8192..16383 us
        r.view.runq_slots[15] = 419;
        let t = r.text();
        assert!(
            t.starts_with("verdict: CRIT (3 crit, 1 warn, 19 ok) over 3.0s on 2 CPUs\n\nLEVEL"),
            "{t}"
        );
        assert!(
            t.contains("\nNEXT STEPS\n  cpu utilization: mpstat -P ALL 1; pidstat 1 (who burns it); perf top\n"),
            "{t}"
        );
        assert!(
            t.contains("\nTOP PROCESSES BY CPU (over the window; 100% = one CPU)\n  PID  COMM    CPU%\n17118  rustc   63.6\n"),
            "{t}"
        );
        assert!(t.contains("        32 -> 63         : 2099     |"), "{t}");
        assert!(
            t.ends_with("     count 4198  p50 <=63  p90 <=16383  p99 <=32767  max 52009 (usecs)\n"),
            "{t}"
        );
    }

    #[test]
    fn a_skipped_part_is_said_and_absent_sections_are_not_rendered() {
        let mut r = fixture();
        r.runqueue_latency_us = None;
        r.cpu.top_processes = None;
        r.skipped.push(Skipped {
            part: "run-queue latency (eBPF)".into(),
            reason: "no CAP_BPF".into(),
        });
        let t = r.text();
        assert!(!t.contains("TOP PROCESSES"), "{t}");
        assert!(
            t.ends_with(
                "RUN-QUEUE LATENCY (runnable -> running, all CPUs)\n     skipped (see below)\nskipped: run-queue latency (eBPF): no CAP_BPF\n"
            ),
            "{t}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["runqueue_latency_us"].is_null());
        assert!(json.get("top_processes").is_none());
    }
}
