//! Real ages for zombies that were zombies before the tracer started: the kernel keeps,
//! in `/proc/PID/sched` (CONFIG_SCHED_DEBUG, which Debian's kernels and this machine's
//! have), `se.exec_start`: the run-queue task clock of the CPU the task last ran on, at
//! its last run. A zombie last ran when it exited, so that clock now minus its
//! `se.exec_start` is how long it has been a zombie.
//!
//! The clock is per CPU (`rq->clock_task`), NOT /proc/uptime: on this machine the two
//! differed by 36 s after 3.7 h of uptime, and by 0.4 s between the two CPUs (measured:
//! `taskset -c N` + `/proc/uptime` + `/proc/self/sched`). `uptime - se.exec_start` would
//! make every fresh zombie 36 s old here, a false alarm. So the tracer reads that CPU's
//! clock now from itself: a thread pinned to the CPU reads its own
//! `/proc/thread-self/sched`, whose `se.exec_start` is that CPU's clock at the thread's
//! latest run (a tick at most ago). The zombie is read first and the CPU's clock after,
//! so the difference never counts time the zombie was not dead; the task clock leaves
//! out time spent in interrupts (IRQ_TIME_ACCOUNTING) and stolen by the hypervisor, so
//! the age is at most that much short, never long. It is clamped to the process's
//! lifetime (now minus starttime in /proc/PID/stat), which no zombie outlives.
//!
//! Where the kernel has no /proc/PID/sched, or the tracer may not run on the zombie's CPU
//! (a cpuset), the age stays what it was: time since the tracer first saw the zombie, a
//! lower bound, and the report says so (`AgeSource::LowerBound`).
use std::{collections::HashMap, fs, time::Duration};

use serde::{Deserialize, Serialize};

/// Where a zombie's age comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgeSource {
    /// The exit was seen (sched_process_exit): exact.
    ExitEvent,
    /// From before the start, dated by the kernel's `se.exec_start` (its last run, its
    /// exit): exact to a scheduler tick, short by interrupt/steal time at most.
    ExitedAt,
    /// From before the start, not datable here: time since the tracer first saw it, so
    /// the real age is at least this.
    LowerBound,
}

impl AgeSource {
    /// Whether the age is the zombie's real age (not a lower bound).
    pub fn exact(self) -> bool {
        self != Self::LowerBound
    }
}

/// `se.exec_start` of a `/proc/PID/sched` text, in ns: printed as milliseconds with six
/// decimals (`se.exec_start    :   13327747.765421`); parsed as integers, not floats,
/// so no nanosecond is lost after days of uptime.
pub fn parse_exec_start_ns(sched: &str) -> Option<u64> {
    let line = sched
        .lines()
        .find(|l| l.split_whitespace().next() == Some("se.exec_start"))?;
    let value = line.split(':').nth(1)?.trim();
    let (ms, frac) = value.split_once('.').unwrap_or((value, "0"));
    let ms: u64 = ms.parse().ok()?;
    if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_ns: u64 = format!("{frac:0<6}").parse().ok()?;
    ms.checked_mul(1_000_000)?.checked_add(frac_ns)
}

/// How long a zombie has been one: its CPU's clock now minus its `se.exec_start`, at
/// most its lifetime (`lifetime_ns`: now minus its start time).
pub fn age_ns(exec_start_ns: u64, cpu_clock_now_ns: u64, lifetime_ns: u64) -> u64 {
    cpu_clock_now_ns
        .saturating_sub(exec_start_ns)
        .min(lifetime_ns)
}

/// The CPU's task clock now, as a thread pinned to it sees it; None when the tracer may
/// not run there (cpuset) or the kernel has no /proc/PID/sched.
pub fn cpu_clock_now_ns(cpu: usize) -> Option<u64> {
    std::thread::spawn(move || {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).ok()?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).ok()?;
        // Run once more on that CPU, so exec_start is that CPU's clock.
        nix::sched::sched_yield().ok()?;
        let sched = fs::read_to_string("/proc/thread-self/sched").ok()?;
        let on = fs::read_to_string("/proc/thread-self/stat").ok()?;
        (processor(&on)? == cpu).then_some(())?;
        parse_exec_start_ns(&sched)
    })
    .join()
    .ok()
    .flatten()
}

/// Field 39 of a /proc/PID/stat line (after the `(comm)`): the CPU it last ran on.
pub fn processor(stat: &str) -> Option<usize> {
    let rest = &stat[stat.rfind(')')? + 2..];
    // Fields after comm start at field 3 (state); processor is field 39.
    rest.split(' ').nth(39 - 3)?.parse().ok()
}

/// Dates zombies with their kernel's `se.exec_start`, reading each CPU's clock once.
pub struct Dater {
    hz: u64,
    clocks: HashMap<usize, Option<u64>>,
}

impl Dater {
    pub fn new(hz: u64) -> Self {
        Self {
            hz: hz.max(1),
            clocks: HashMap::new(),
        }
    }

    /// How long ago process `pid` (started at `start_ticks`) exited, if it is still that
    /// zombie and the kernel can tell.
    pub fn age(&mut self, pid: u32, start_ticks: u64) -> Option<Duration> {
        let sched = fs::read_to_string(format!("/proc/{pid}/sched")).ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (cpu, state, start) = stat_fields(&stat)?;
        if state != 'Z' || start != start_ticks {
            return None;
        }
        let exec_start = parse_exec_start_ns(&sched)?;
        // Read after the zombie: the clock now is later than its exec_start. One clock
        // reading per CPU per report keeps the cost at a thread per CPU used.
        let clock = *self
            .clocks
            .entry(cpu)
            .or_insert_with(|| cpu_clock_now_ns(cpu));
        let clock = clock?;
        let started_ns = (start_ticks as u128 * 1_000_000_000 / self.hz as u128) as u64;
        let lifetime = crate::procinfo::boottime_ns().saturating_sub(started_ns);
        Some(Duration::from_nanos(age_ns(exec_start, clock, lifetime)))
    }
}

/// (processor, state, starttime) of a /proc/PID/stat line.
fn stat_fields(stat: &str) -> Option<(usize, char, u64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let state = f.first()?.chars().next()?;
    let start = f.get(22 - 3)?.parse().ok()?;
    Some((processor(stat)?, state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zombie's /proc/PID/sched, read on this machine's 6.18 (2026-12-07; the first
    /// lines of 28).
    const ZOMBIE_6_18: &str = "python3 (29853, #threads: 1)
-------------------------------------------------------------------
se.exec_start                                :      13390504.266456
se.vruntime                                  :      11010575.673953
se.sum_exec_runtime                          :             1.587166
se.nr_migrations                             :                    0
nr_switches                                  :                    1
se.avg.last_update_time                      :       13390504265728
clock-delta                                  :                  180
";
    /// Its /proc/PID/stat: state Z, processor (field 39) 0.
    const ZOMBIE_STAT: &str = "29853 (python3) Z 29807 29805 25440 0 -1 4227148 223 0 0 0 0 0 0 0 20 0 1 0 1342778 0 0 18446744073709551615 0 0 0 0 0 0 0 16781312 2 1 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0";

    #[test]
    fn exec_start_parses_to_the_nanosecond() {
        assert_eq!(parse_exec_start_ns(ZOMBIE_6_18), Some(13_390_504_266_456));
        assert_eq!(
            parse_exec_start_ns(&ZOMBIE_6_18.replace("13390504.266456", "52113.409877")),
            Some(52_113_409_877)
        );
        assert_eq!(
            parse_exec_start_ns("se.exec_start : 12\n"),
            Some(12_000_000)
        );
        assert_eq!(
            parse_exec_start_ns("se.exec_start : 1.5\n"),
            Some(1_500_000)
        );
        assert_eq!(parse_exec_start_ns("se.vruntime : 1.0\n"), None);
        assert_eq!(parse_exec_start_ns("se.exec_start : x.1\n"), None);
        assert_eq!(parse_exec_start_ns(""), None);
    }

    #[test]
    fn age_is_the_clock_difference_clamped_to_the_lifetime() {
        let s = 1_000_000_000;
        assert_eq!(age_ns(100 * s, 130 * s, 3600 * s), 30 * s);
        assert_eq!(
            age_ns(100 * s, 130 * s, 20 * s),
            20 * s,
            "never older than the process"
        );
        assert_eq!(age_ns(130 * s, 100 * s, 3600 * s), 0, "never negative");
    }

    #[test]
    fn zombie_stat_gives_cpu_state_and_start() {
        assert_eq!(stat_fields(ZOMBIE_STAT), Some((0, 'Z', 1_342_778)));
        let odd = ZOMBIE_STAT.replace("(python3)", "(a) b (c)");
        assert_eq!(
            stat_fields(&odd),
            Some((0, 'Z', 1_342_778)),
            "comm with ') '"
        );
    }

    #[test]
    fn a_cpu_clock_is_read_only_where_the_tracer_may_run() {
        if fs::metadata("/proc/self/sched").is_ok() {
            let a = cpu_clock_now_ns(0).expect("CPU 0's clock");
            let b = cpu_clock_now_ns(0).expect("CPU 0's clock");
            assert!(b >= a, "one CPU's task clock never goes back: {a} then {b}");
        }
        assert_eq!(cpu_clock_now_ns(1 << 20), None, "no such CPU");
    }

    #[test]
    fn own_stat_and_sched_read_back() {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        let (cpu, state, start) = stat_fields(&stat).unwrap();
        // The process's main thread: alive in any state (running, waiting for the test
        // threads, in uninterruptible sleep on a 9p read in a VM guest), never a zombie.
        assert!(cpu < 4096 && "RSDIW".contains(state) && start > 0, "{stat}");
        let own = crate::procinfo::stat_of(std::process::id()).unwrap();
        assert_eq!(start, own.start_ticks);
        if let Ok(sched) = fs::read_to_string("/proc/self/sched") {
            assert!(parse_exec_start_ns(&sched).is_some(), "{sched}");
        }
    }
}
