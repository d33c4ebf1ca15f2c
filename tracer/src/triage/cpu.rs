//! CPU: load averages (uptime), utilization split and per-CPU imbalance (vmstat,
//! mpstat), run-queue length vs cores and run-queue latency (saturation), PSI cpu, and
//! the top processes by CPU over the window (pidstat, top).
use std::collections::HashMap;

use anyhow::{Context as _, Result};
use procfs::{CpuPressure, CpuTime, Current as _, CurrentSI as _, KernelStats, LoadAverage};

use super::{
    CpuSection, Finding, Load, Part, Runnable, Utilization, Window, judge,
    rows::{CpuProcRow, round1},
    runq,
};
use crate::{procinfo, snapshot::Level};

/// Per-process CPU ticks at the start of the window, keyed by pid and start time (a
/// reused pid is a different process).
pub struct Before {
    stat: KernelStats,
    procs: HashMap<(u32, u64), u64>,
    psi: Option<u64>,
}

impl Before {
    pub fn read() -> Result<Before> {
        Ok(Before {
            stat: KernelStats::current().context("reading /proc/stat")?,
            procs: procinfo::all_stats()
                .into_iter()
                .map(|p| ((p.pid, p.start_ticks), p.cpu_ticks))
                .collect(),
            psi: CpuPressure::current().ok().map(|p| p.some.total),
        })
    }

    pub fn cpus(&self) -> usize {
        self.stat.cpu_time.len().max(1)
    }
}

/// Runnable tasks (procs_running in /proc/stat, ourselves excluded) sampled during
/// the window: vmstat's `r`.
#[derive(Default)]
pub struct RunnableSampler {
    sum: u64,
    n: u64,
    max: u64,
}

impl RunnableSampler {
    pub fn sample(&mut self) {
        if let Some(r) = KernelStats::current().ok().and_then(|s| s.procs_running) {
            // The tracer's own threads are not the host's load: the sampling thread
            // runs while it reads, and the ring reader may be handling records.
            let r = u64::from(r).saturating_sub(own_running().max(1));
            self.sum += r;
            self.n += 1;
            self.max = self.max.max(r);
        }
    }

    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum as f64 / self.n as f64)
    }
}

/// How many of this process's threads are running or runnable (state R).
fn own_running() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 1;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
                // The state follows the parenthesised comm, which may hold spaces.
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('R'))
            })
        })
        .count() as u64
}

/// Busy and per-state shares of one CPU (or all) between two readings, in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Split {
    pub user: f64,
    pub system: f64,
    pub iowait: f64,
    pub steal: f64,
    pub idle: f64,
}

impl Split {
    pub fn busy(&self) -> f64 {
        (100.0 - self.idle - self.iowait).max(0.0)
    }
}

/// The /proc/stat columns a split needs, in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ticks {
    pub user: u64,
    pub system: u64,
    pub iowait: u64,
    pub steal: u64,
    pub idle: u64,
}

impl From<&CpuTime> for Ticks {
    fn from(c: &CpuTime) -> Self {
        let o = |v: Option<u64>| v.unwrap_or(0);
        Ticks {
            // user includes guest time; nice is user time at a lower priority.
            user: c.user + c.nice,
            system: c.system + o(c.irq) + o(c.softirq),
            iowait: o(c.iowait),
            steal: o(c.steal),
            idle: c.idle,
        }
    }
}

pub fn split(a: Ticks, b: Ticks) -> Split {
    let d = |x: u64, y: u64| y.saturating_sub(x) as f64;
    let user = d(a.user, b.user);
    let system = d(a.system, b.system);
    let iowait = d(a.iowait, b.iowait);
    let steal = d(a.steal, b.steal);
    let idle = d(a.idle, b.idle);
    let total = user + system + iowait + steal + idle;
    if total <= 0.0 {
        return Split {
            idle: 100.0,
            ..Split::default()
        };
    }
    let p = |v: f64| v * 100.0 / total;
    Split {
        user: p(user),
        system: p(system),
        iowait: p(iowait),
        steal: p(steal),
        idle: p(idle),
    }
}

/// The CPU rows, in the checklist's order, and what they measured.
pub fn check(
    before: &Before,
    runnable: &RunnableSampler,
    runq: Option<&runq::Summary>,
    w: Window,
    part: &mut Part,
) -> CpuSection {
    let cpus = w.cpus as f64;
    let mut section = CpuSection {
        load: load(part, cpus),
        ..CpuSection::default()
    };
    let after = match KernelStats::current() {
        Ok(s) => s,
        Err(e) => {
            part.skip("cpu utilization", format!("reading /proc/stat: {e}"));
            return section;
        }
    };
    let all = utilization(part, before, &after);
    let per = imbalance(part, before, &after, all.busy());
    section.utilization = Some(Utilization {
        busy_pct: round1(all.busy()),
        user_pct: round1(all.user),
        system_pct: round1(all.system),
        iowait_pct: round1(all.iowait),
        steal_pct: round1(all.steal),
        idle_pct: round1(all.idle),
        per_cpu_busy_pct: per.iter().map(|s| round1(s.busy())).collect(),
    });
    section.runnable = saturation(part, runnable, cpus);
    // Were the CPUs short over the window? Waits with CPUs idle are wakeup latency
    // (or throttling and pinning, which show as long waits).
    let short = cpus_short(all.busy(), runnable.mean().map(|m| m / cpus));
    runq_latency(part, runq, short);
    // PSI: share of the window in which some task waited for a CPU.
    section.cpu_psi_some_pct = super::psi_judged(
        part,
        "cpu",
        "/proc/pressure/cpu",
        before.psi,
        CpuPressure::current().map(|p| p.some),
        w,
        "cat /proc/pressure/cpu; per cgroup: cpu.pressure (which cgroup waits)",
        |pct| (cpu_psi_level(pct, short), CPU_PSI_THRESHOLD.into()),
    );
    section.top_processes = Some(top_processes(before, w));
    section
}

/// Load averages (uptime): include tasks in uninterruptible sleep, so a high load
/// with idle CPUs points at I/O.
fn load(part: &mut Part, cpus: f64) -> Option<Load> {
    let l = match LoadAverage::current() {
        Ok(l) => l,
        Err(e) => {
            part.skip("load average", format!("reading /proc/loadavg: {e}"));
            return None;
        }
    };
    let trend = if l.one > l.fifteen * 1.2 {
        "rising"
    } else if l.one < l.fifteen * 0.8 {
        "falling"
    } else {
        "steady"
    };
    part.findings.push(
        Finding::new(
            "cpu",
            "load average",
            format!(
                "{:.2} {:.2} {:.2} (1/5/15 min), {:.2}/CPU, {trend}",
                l.one,
                l.five,
                l.fifteen,
                l.one as f64 / cpus
            ),
            LOAD_THRESHOLD,
            load_level(l.one.into(), l.five.into(), l.fifteen.into(), cpus),
        )
        .next("vmstat 1 (r: runnable, b: blocked on I/O); high load with idle CPUs means tasks blocked in D state"),
    );
    Some(Load {
        one: l.one.into(),
        five: l.five.into(),
        fifteen: l.fifteen.into(),
        trend: trend.into(),
    })
}

/// The utilization split (vmstat us/sy/wa/st/id) of all CPUs over the window, with
/// rows for iowait and steal when there is any to speak of.
fn utilization(part: &mut Part, before: &Before, after: &KernelStats) -> Split {
    let f = &mut part.findings;
    let all = split((&before.stat.total).into(), (&after.total).into());
    f.push(
        Finding::new(
            "cpu",
            "utilization",
            format!(
                "busy {:.0}% (usr {:.0} sys {:.0} iowait {:.0} steal {:.0} idle {:.0})",
                all.busy(),
                all.user,
                all.system,
                all.iowait,
                all.steal,
                all.idle
            ),
            "busy >= 80% warn, 95% crit",
            judge(all.busy(), 80.0, 95.0),
        )
        .next("mpstat -P ALL 1; pidstat 1 (who burns it); perf top"),
    );
    if all.iowait >= 10.0 {
        f.push(
            Finding::new(
                "cpu",
                "iowait",
                format!("{:.0}% of CPU time idle waiting for I/O", all.iowait),
                ">= 10% warn, 30% crit",
                judge(all.iowait, 10.0, 30.0),
            )
            .next("iostat -xz 1 (which device, how slow)"),
        );
    }
    if all.steal > 0.0 {
        f.push(
            Finding::new(
                "cpu",
                "steal",
                format!("{:.1}% taken by the hypervisor", all.steal),
                ">= 10% warn, 30% crit",
                judge(all.steal, 10.0, 30.0),
            )
            .next("the host is oversubscribed: ask the cloud/hypervisor side; mpstat -P ALL 1"),
        );
    }
    all
}

/// Per-CPU imbalance (mpstat -P ALL): one hot CPU hides in the average. Each CPU's
/// split over the window.
fn imbalance(part: &mut Part, before: &Before, after: &KernelStats, busy: f64) -> Vec<Split> {
    let per: Vec<Split> = (before.stat.cpu_time.iter())
        .zip(&after.cpu_time)
        .map(|(a, b)| split(a.into(), b.into()))
        .collect();
    if per.len() > 1 {
        let (hot, hot_busy) = (per.iter().enumerate())
            .map(|(i, s)| (i, s.busy()))
            .fold((0, 0.0), |acc, x| if x.1 > acc.1 { x } else { acc });
        let level = if hot_busy >= 90.0 && busy < 50.0 {
            Level::Warn
        } else {
            Level::Ok
        };
        part.findings.push(
            Finding::new(
                "cpu",
                "imbalance",
                format!("hottest cpu{hot} {hot_busy:.0}% busy, average {busy:.0}%"),
                "one CPU >= 90% with average < 50% warn",
                level,
            )
            .next("a single-threaded hot spot or IRQ affinity: mpstat -P ALL 1; pidstat -t 1"),
        );
    }
    per
}

/// Saturation: runnable tasks per CPU (vmstat r > CPU count: tasks wait for a turn).
fn saturation(part: &mut Part, runnable: &RunnableSampler, cpus: f64) -> Option<Runnable> {
    let mean = runnable.mean()?;
    part.findings.push(
        Finding::new(
            "cpu",
            "saturation",
            format!(
                "{mean:.1} runnable tasks on average ({:.2}/CPU), max {}",
                mean / cpus,
                runnable.max
            ),
            "runnable/CPU >= 1 warn, 2 crit",
            judge(mean / cpus, 1.0, 2.0),
        )
        .next("pidstat 1 / top (who is runnable); the run-queue latency row and histogram (as root) say how long tasks wait"),
    );
    Some(Runnable {
        mean: round1(mean),
        per_cpu: round1(mean / cpus),
        max: runnable.max,
        samples: runnable.n,
    })
}

/// Run-queue latency (eBPF), judged by how short the CPUs were.
fn runq_latency(part: &mut Part, runq: Option<&runq::Summary>, short: bool) {
    let Some(s) = runq.filter(|s| s.count() > 0) else {
        return;
    };
    let p99 = s.quantile(0.99);
    part.findings.push(
        Finding::new(
            "cpu",
            "run-queue latency",
            format!(
                "p99 <= {} us, max {} us ({} wakeups); CPUs {}",
                p99,
                s.max,
                s.count(),
                if short { "short" } else { "not short" }
            ),
            RUNQ_THRESHOLD,
            runq_level(p99, short),
        )
        .next("tasks wait for a CPU: runqlat / perf sched; check cpu cgroup throttling (cpu.stat nr_throttled)"),
    );
}

/// Top processes by CPU over the window (pidstat 1, top): at most 5, the busiest first.
fn top_processes(before: &Before, w: Window) -> Vec<CpuProcRow> {
    let tps = procfs::ticks_per_second().max(1) as f64;
    let mut top: Vec<(procinfo::ProcStat, f64)> = procinfo::all_stats()
        .into_iter()
        .map(|p| {
            let was = before
                .procs
                .get(&(p.pid, p.start_ticks))
                .copied()
                .unwrap_or(0);
            let pct = p.cpu_ticks.saturating_sub(was) as f64 / tps / w.secs * 100.0;
            (p, pct)
        })
        .filter(|(_, pct)| *pct > 0.0)
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(5);
    (top.into_iter())
        .map(|(p, cpu_pct)| CpuProcRow {
            pid: p.pid,
            comm: p.comm,
            cpu_pct,
        })
        .collect()
}

/// The CPUs were short over the window: busy >= 80% or at least one runnable task per
/// CPU on average (vmstat r >= CPUs).
pub fn cpus_short(busy_pct: f64, runnable_per_cpu: Option<f64>) -> bool {
    busy_pct >= 80.0 || runnable_per_cpu.is_some_and(|r| r >= 1.0)
}

pub const RUNQ_THRESHOLD: &str = "CPUs short (busy >= 80% or runnable/CPU >= 1): p99 >= 10 ms warn, 100 ms crit; CPUs not short: p99 >= 100 ms warn (throttling, pinning)";

/// Run-queue latency's p99 (usecs). With CPUs idle much of the window, a tail of
/// waits of some milliseconds is wakeup latency of a busy but healthy host (16 ms at
/// 46% busy, 0.7 runnable/CPU, seen in a 2-CPU guest); a CPU shortage is when tasks wait
/// and the CPUs are busy. Waits of 100 ms with CPUs idle are throttling or pinning.
pub fn runq_level(p99_us: u64, short: bool) -> Level {
    let p = p99_us as f64;
    if short {
        judge(p, 10_000.0, 100_000.0)
    } else {
        judge(p, 100_000.0, f64::INFINITY)
    }
}

pub const CPU_PSI_THRESHOLD: &str = "CPUs short (busy >= 80% or runnable/CPU >= 1): some >= 10% warn, 40% crit; CPUs not short: some >= 40% warn";

/// PSI cpu "some" (share of the window with a task waiting): 15% was seen at 46% busy
/// in a 2-CPU guest, from short overlaps of a healthy workload's tasks.
pub fn cpu_psi_level(pct: f64, short: bool) -> Level {
    if short {
        judge(pct, 10.0, 40.0)
    } else {
        judge(pct, 40.0, f64::INFINITY)
    }
}

/// The load average row's threshold, as the report states it.
pub const LOAD_THRESHOLD: &str =
    "lowest of the 1/5/15-min load per CPU >= 2 warn (sustained 15 min and still on; never crit)";

/// Load averages carry the minutes before the run (a build that just ended leaves the
/// 1-minute average high for a minute): only a load that has stayed at twice the CPU
/// count over all three averages is evidence; the window's own rows (saturation,
/// run-queue latency, PSI) judge the present.
pub fn load_level(one: f64, five: f64, fifteen: f64, cpus: f64) -> Level {
    if one.min(five).min(fifteen) / cpus.max(1.0) >= 2.0 {
        Level::Warn
    } else {
        Level::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(user: u64, system: u64, idle: u64, iowait: u64, steal: u64) -> Ticks {
        Ticks {
            user,
            system,
            idle,
            iowait,
            steal,
        }
    }

    #[test]
    fn load_after_a_burst_is_not_a_finding_a_sustained_one_is() {
        // A minute of 6 runnable tasks on 2 CPUs just ended: 1-min 4.7/CPU 2.35.
        assert_eq!(load_level(4.69, 2.45, 0.98, 2.0), Level::Ok);
        // Busy and healthy: about one runnable task per CPU for 15 minutes.
        assert_eq!(load_level(2.1, 2.0, 1.9, 2.0), Level::Ok);
        // Twice the CPUs for 15 minutes and still: tasks wait.
        assert_eq!(load_level(4.5, 4.2, 4.0, 2.0), Level::Warn);
        // It was, and has stopped (1-min fell): not now.
        assert_eq!(load_level(1.0, 4.2, 4.5, 2.0), Level::Ok);
    }

    #[test]
    fn waits_are_judged_against_how_short_the_cpus_were() {
        // The healthy busy guest: 46% busy, 0.7 runnable/CPU, p99 16 ms, PSI 15.5%.
        let short = cpus_short(46.3, Some(0.69));
        assert!(!short);
        assert_eq!(runq_level(16_383, short), Level::Ok);
        assert_eq!(cpu_psi_level(15.5, short), Level::Ok);
        // Idle CPUs yet 100 ms waits: throttled or pinned.
        assert_eq!(runq_level(131_071, short), Level::Warn);
        assert_eq!(cpu_psi_level(45.0, short), Level::Warn);
        // A burner per core: busy and queued.
        let short = cpus_short(99.0, Some(1.4));
        assert!(short && cpus_short(50.0, Some(1.0)));
        assert_eq!(runq_level(16_383, short), Level::Warn);
        assert_eq!(runq_level(131_071, short), Level::Crit);
        assert_eq!(cpu_psi_level(50.0, short), Level::Crit);
        assert!(!cpus_short(30.0, None));
    }

    #[test]
    fn split_of_two_readings() {
        let s = split(t(100, 50, 800, 10, 0), t(160, 70, 810, 10, 10));
        assert_eq!(s.user, 60.0);
        assert_eq!(s.system, 20.0);
        assert_eq!(s.idle, 10.0);
        assert_eq!(s.steal, 10.0);
        assert_eq!(s.busy(), 90.0);
        assert_eq!(split(t(1, 1, 1, 1, 1), t(1, 1, 1, 1, 1)).busy(), 0.0);
    }
}
