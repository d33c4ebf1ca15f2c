//! The zombies detector's bookkeeping, free of I/O so that it can be tested: exits and
//! reaps from the kernel, zombies seeded from /proc at start, and the confirmation of
//! candidates against /proc (passed in as a lookup function).
use std::{collections::HashMap, time::Duration};

use hdrhistogram::Histogram;
use tracer_common::{
    EventKind, comm_str,
    zombies::{EXITED_CAPACITY, ProcEvent, ReapVia},
};

use super::{ages::AgeSource, judge::StuckRule, metrics};
use crate::{
    bounded::Lru,
    output::{self, Buckets},
    procinfo::ProcStat,
    run::{self, BadRecord},
};

/// Parents whose reaps are remembered one by one (count and slowest reap: the pace the
/// stuck rule judges them by, and the top reapers). Every parent that ever reaped a
/// child would otherwise stay for weeks (each short-lived shell is one); a host has far
/// fewer than 4,096 parents reaping at a time, and a parent evicted (least recently
/// reaping first) is judged by the 5 s floor until it reaps again. Under 1 MiB.
pub const REAPERS_CAPACITY: usize = 4_096;

/// Exits awaiting their reap (zombie candidates, confirmed against /proc at each
/// look). Keyed by pid, so bounded by pid_max already; this cap is for a host whose
/// pid_max is raised to millions with that many zombies alive: at ~100 bytes each,
/// 262,144 is ~25 MiB, and eight times the default pid_max of 32,768. When it is full a
/// new exit is not tracked, and counted (the zombies already tracked are the oldest,
/// the ones the report is about).
pub const PENDING_CAPACITY: usize = 1 << 18;

/// How long an exited process missing from /proc is kept for its reap record: a
/// process released at exit (its parent ignores SIGCHLD) leaves /proc at once, and its
/// free record comes an RCU grace period later (milliseconds; more under emulation). A
/// census in between dropped it, and the reap went to no parent (seen in a 6.1 guest:
/// 5 of 6 autoreaped children counted).
const RELEASE_GRACE_NS: u64 = 5_000_000_000;

/// A process whose exit we saw and whose reap we have not seen.
struct Exited {
    ppid: u32,
    comm: String,
    exit_ns: u64,
    /// Learned from /proc the first time we look; pid + start time is the identity.
    start_ticks: Option<u64>,
    /// A census found it gone from /proc: kept only for its reap record, never a
    /// zombie again (a process with its pid now is another one).
    vanished: bool,
}

/// A zombie found in /proc at start: its exit was not seen.
struct Seeded {
    start_ticks: u64,
    first_seen_ns: u64,
    /// When it exited (CLOCK_MONOTONIC ns), when the kernel could tell (ages.rs).
    exit_ns: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ZombieRow {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub age_s: f64,
    /// false: a zombie from before the start, whose age is at least `age_s`.
    pub exact: bool,
    pub source: AgeSource,
    /// Older than its parent's reap threshold; else still in flight.
    pub stuck: bool,
}

/// A parent with at least one stuck zombie: a non-reaping parent.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentRow {
    pub pid: u32,
    /// Stuck zombies.
    pub zombies: usize,
    /// Zombies younger than the threshold.
    pub in_flight: usize,
    pub oldest_age_s: f64,
    pub oldest_exact: bool,
    pub oldest_source: AgeSource,
    /// The age above which this parent's zombies are stuck.
    pub stuck_after_s: f64,
}

pub struct Census {
    /// Every zombie, stuck or in flight, oldest first.
    pub zombies: Vec<ZombieRow>,
    /// Parents with stuck zombies, most first.
    pub parents: Vec<ParentRow>,
    pub stuck: usize,
    pub in_flight: usize,
}

/// Reaps made by one parent.
#[derive(Clone, Copy, Default)]
struct Reaps {
    count: u64,
    /// The slowest exit-to-reap latency seen.
    slowest_ns: u64,
}

pub struct Tracker {
    target: Option<u32>,
    hz: u64,
    boot_offset_ns: i64,
    pending: HashMap<u32, Exited>,
    seeded: HashMap<u32, Seeded>,
    /// pending size above which prune_if_large looks in /proc.
    prune_at: usize,
    reaped: Lru<u32, Reaps>,
    /// Every reap counted, whatever `reaped` evicted.
    reaped_total: u64,
    /// Exits not tracked because `pending` was at PENDING_CAPACITY.
    untracked: u64,
    hist: Histogram<u64>,
    /// The same reap latencies, exactly, in the buckets of the Prometheus histogram.
    buckets: Buckets,
}

impl Tracker {
    /// `target`: only children of this parent. `boot_offset_ns`: CLOCK_BOOTTIME minus
    /// CLOCK_MONOTONIC, to compare kernel timestamps with /proc start times.
    pub fn new(target: Option<u32>, hz: u64, boot_offset_ns: i64) -> Self {
        Self {
            target,
            hz: hz.max(1),
            boot_offset_ns,
            pending: HashMap::new(),
            seeded: HashMap::new(),
            prune_at: EXITED_CAPACITY as usize,
            reaped: Lru::new(REAPERS_CAPACITY),
            reaped_total: 0,
            untracked: 0,
            hist: output::new_histogram(),
            buckets: Buckets::new(metrics::REAP_BOUNDS),
        }
    }

    fn wanted(&self, ppid: u32) -> bool {
        self.target.is_none_or(|t| ppid == t)
    }

    /// Zombies that exist at start (from a /proc scan taken after attaching).
    pub fn seed(&mut self, stats: Vec<ProcStat>, now_ns: u64) {
        for st in stats {
            if st.state == 'Z' && self.wanted(st.ppid) && !self.pending.contains_key(&st.pid) {
                self.seeded.insert(
                    st.pid,
                    Seeded {
                        start_ticks: st.start_ticks,
                        first_seen_ns: now_ns,
                        exit_ns: None,
                    },
                );
            }
        }
    }

    /// Dates the zombies seeded at start: `age_of(pid, start_ticks)` is how long ago
    /// it exited, when the kernel can tell (else its age stays a lower bound).
    pub fn date_seeded(
        &mut self,
        now_ns: u64,
        mut age_of: impl FnMut(u32, u64) -> Option<Duration>,
    ) {
        for (&pid, s) in &mut self.seeded {
            s.exit_ns =
                age_of(pid, s.start_ticks).map(|age| now_ns.saturating_sub(age.as_nanos() as u64));
        }
    }

    /// One ring-buffer record; an undecodable one is handed back for counting.
    pub fn on_event(&mut self, data: &[u8]) -> Result<(), BadRecord> {
        let (kind, ev) = run::decode::<ProcEvent>(data)?;
        let h = ev.header;
        match kind {
            EventKind::ProcessExit => {
                if ev.ppid != 0 && !self.wanted(ev.ppid) {
                    return Ok(());
                }
                // A zombie cannot exit again: a seeded entry with this pid is gone and
                // the pid belongs to a new process now.
                self.seeded.remove(&ev.pid);
                if self.pending.len() >= PENDING_CAPACITY && !self.pending.contains_key(&ev.pid) {
                    self.untracked += 1;
                    return Ok(());
                }
                self.pending.insert(
                    ev.pid,
                    Exited {
                        ppid: ev.ppid,
                        comm: comm_str(&ev.comm).to_string(),
                        exit_ns: ev.exit_ns,
                        start_ticks: None,
                        vanished: false,
                    },
                );
            }
            EventKind::ProcessReap => {
                let known = self.pending.remove(&ev.pid);
                let parent = if ev.via == ReapVia::Wait4 as u32 && ev.reaper != 0 {
                    ev.reaper
                } else if ev.ppid != 0 {
                    ev.ppid
                } else {
                    known.as_ref().map(|e| e.ppid).unwrap_or(0)
                };
                if parent != 0 && !self.wanted(parent) || parent == 0 && self.target.is_some() {
                    return Ok(());
                }
                let r = self.reaped.entry(parent, Reaps::default);
                if ev.exit_ns > 0 && h.ts_ns >= ev.exit_ns {
                    let took = h.ts_ns - ev.exit_ns;
                    output::record(&mut self.hist, took / 1_000);
                    self.buckets.record_ns(took);
                    r.slowest_ns = r.slowest_ns.max(took);
                }
                r.count = r.count.saturating_add(1);
                self.reaped_total = self.reaped_total.saturating_add(1);
            }
            _ => {}
        }
        Ok(())
    }

    /// Keeps memory bounded when reports are rare and reap records get lost: drop the
    /// candidates that /proc no longer has. The threshold doubles with what survives,
    /// so a host with millions of real zombies is scanned O(log n) times, not per event.
    pub fn prune_if_large(&mut self, lookup: impl Fn(u32) -> Option<ProcStat>) {
        if self.pending.len() > self.prune_at {
            self.pending.retain(|pid, _| lookup(*pid).is_some());
            self.prune_at = (2 * self.pending.len()).max(EXITED_CAPACITY as usize);
        }
    }

    /// Current zombies, confirmed in /proc: state Z and the same process (pid + start
    /// time) as the one we saw exit or seeded; each judged stuck or in flight by `rule`.
    pub fn census(
        &mut self,
        now_ns: u64,
        min_age: Duration,
        rule: StuckRule,
        lookup: impl Fn(u32) -> Option<ProcStat>,
    ) -> Census {
        let mut rows = Vec::new();
        let (hz, offset) = (self.hz, self.boot_offset_ns);
        self.pending.retain(|&pid, e| {
            let found = if e.vanished { None } else { lookup(pid) };
            let Some(st) = found else {
                // Gone from /proc: reaped, or released at once (SIGCHLD ignored, or
                // self-reaping) with its free record still to come after an RCU grace
                // period; that record needs the parent kept here, so keep it a while.
                e.vanished = true;
                return now_ns.saturating_sub(e.exit_ns) < RELEASE_GRACE_NS;
            };
            // A process that started after this exit is another one that got the pid.
            let start_boot_ns = (st.start_ticks as u128 * 1_000_000_000 / hz as u128) as i128;
            let exit_boot_ns = e.exit_ns as i128 + offset as i128;
            let tick_ns = (1_000_000_000 / hz) as i128;
            if start_boot_ns > exit_boot_ns + tick_ns {
                return false;
            }
            if *e.start_ticks.get_or_insert(st.start_ticks) != st.start_ticks {
                return false;
            }
            if e.ppid == 0 {
                e.ppid = st.ppid;
            }
            if st.state == 'Z' {
                let comm = if e.comm.is_empty() {
                    st.comm.clone()
                } else {
                    e.comm.clone()
                };
                rows.push(ZombieRow {
                    pid,
                    ppid: st.ppid,
                    comm,
                    age_s: now_ns.saturating_sub(e.exit_ns) as f64 / 1e9,
                    exact: true,
                    source: AgeSource::ExitEvent,
                    stuck: false,
                });
            }
            true
        });
        self.seeded.retain(|&pid, s| match lookup(pid) {
            Some(st) if st.state == 'Z' && st.start_ticks == s.start_ticks => {
                let (since, source) = match s.exit_ns {
                    Some(at) => (at, AgeSource::ExitedAt),
                    None => (s.first_seen_ns, AgeSource::LowerBound),
                };
                rows.push(ZombieRow {
                    pid,
                    ppid: st.ppid,
                    comm: st.comm,
                    age_s: now_ns.saturating_sub(since) as f64 / 1e9,
                    exact: source.exact(),
                    source,
                    stuck: false,
                });
                true
            }
            _ => false,
        });
        rows.retain(|z| {
            self.target.is_none_or(|t| z.ppid == t) && z.age_s >= min_age.as_secs_f64()
        });
        rows.sort_by(|a, b| b.age_s.total_cmp(&a.age_s).then(a.pid.cmp(&b.pid)));

        let mut parents: Vec<ParentRow> = Vec::new();
        let (mut stuck, mut in_flight) = (0, 0);
        for z in &mut rows {
            let threshold = rule.threshold_s(self.slowest_reap_s(z.ppid));
            z.stuck = z.age_s > threshold;
            let p = match parents.iter_mut().position(|p| p.pid == z.ppid) {
                Some(i) => &mut parents[i],
                None => {
                    parents.push(ParentRow {
                        pid: z.ppid,
                        zombies: 0,
                        in_flight: 0,
                        // Rows are oldest first, so the first one per parent is its oldest.
                        oldest_age_s: z.age_s,
                        oldest_exact: z.exact,
                        oldest_source: z.source,
                        stuck_after_s: threshold,
                    });
                    parents.last_mut().expect("just pushed")
                }
            };
            if z.stuck {
                p.zombies += 1;
                stuck += 1;
            } else {
                p.in_flight += 1;
                in_flight += 1;
            }
        }
        parents.retain(|p| p.zombies > 0);
        parents.sort_by(|a, b| {
            b.zombies
                .cmp(&a.zombies)
                .then(b.oldest_age_s.total_cmp(&a.oldest_age_s))
        });
        Census {
            zombies: rows,
            parents,
            stuck,
            in_flight,
        }
    }

    /// The slowest reap this parent was seen to make, in seconds.
    pub fn slowest_reap_s(&self, parent: u32) -> Option<f64> {
        self.reaped
            .get(&parent)
            .filter(|r| r.slowest_ns > 0)
            .map(|r| r.slowest_ns as f64 / 1e9)
    }

    pub fn reap_hist(&self) -> &Histogram<u64> {
        &self.hist
    }

    pub fn reap_buckets(&self) -> &Buckets {
        &self.buckets
    }

    pub fn reaped_by(&self, pid: u32) -> u64 {
        self.reaped.get(&pid).map_or(0, |r| r.count)
    }

    pub fn reaped_total(&self) -> u64 {
        self.reaped_total
    }

    /// Parents whose reap counts were evicted (REAPERS_CAPACITY): their reaps stay in
    /// the total, but not in their own count.
    pub fn reapers_evicted(&self) -> u64 {
        self.reaped.evicted()
    }

    /// Exits not tracked because PENDING_CAPACITY candidates were tracked already.
    pub fn exits_untracked(&self) -> u64 {
        self.untracked
    }

    pub fn top_reapers(&self, n: usize) -> Vec<(u32, u64)> {
        let mut v: Vec<_> = self
            .reaped
            .iter()
            .filter(|(p, _)| **p != 0)
            .map(|(p, r)| (*p, r.count))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
