//! The zombies detector's bookkeeping, free of I/O so that it can be tested: exits and
//! reaps from the kernel, zombies seeded from /proc at start, and the confirmation of
//! candidates against /proc (passed in as a lookup function).
use std::{collections::HashMap, time::Duration};

use hdrhistogram::Histogram;
use tracer_common::{
    EventKind, comm_str,
    zombies::{EXITED_CAPACITY, ProcEvent, ReapVia},
};

use super::{judge::StuckRule, metrics};
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

/// A process whose exit we saw and whose reap we have not seen.
struct Exited {
    ppid: u32,
    comm: String,
    exit_ns: u64,
    /// Learned from /proc the first time we look; pid + start time is the identity.
    start_ticks: Option<u64>,
}

/// A zombie found in /proc at start: its exit time is unknown.
struct Seeded {
    start_ticks: u64,
    first_seen_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ZombieRow {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub age_s: f64,
    /// false: a zombie from before the start, whose age is at least `age_s`.
    pub exact: bool,
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
                    },
                );
            }
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
            let Some(st) = lookup(pid) else { return false };
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
                    stuck: false,
                });
            }
            true
        });
        self.seeded.retain(|&pid, s| match lookup(pid) {
            Some(st) if st.state == 'Z' && st.start_ticks == s.start_ticks => {
                rows.push(ZombieRow {
                    pid,
                    ppid: st.ppid,
                    comm: st.comm,
                    age_s: now_ns.saturating_sub(s.first_seen_ns) as f64 / 1e9,
                    exact: false,
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
mod tests {
    use super::*;
    use tracer_common::{COMM_LEN, EventHeader, as_bytes};

    const HZ: u64 = 100;
    const AUTO: StuckRule = StuckRule::Auto;
    const S: u64 = 1_000_000_000;

    fn exit(pid: u32, ppid: u32, at: u64) -> Vec<u8> {
        let mut comm = [0u8; COMM_LEN];
        comm[..5].copy_from_slice(b"child");
        as_bytes(&ProcEvent {
            header: EventHeader {
                kind: EventKind::ProcessExit as u32,
                tgid: pid,
                ts_ns: at,
            },
            pid,
            ppid,
            reaper: 0,
            via: 0,
            exit_ns: at,
            comm,
        })
        .to_vec()
    }

    fn reap(pid: u32, ppid: u32, exit_at: u64, at: u64, via: ReapVia) -> Vec<u8> {
        as_bytes(&ProcEvent {
            header: EventHeader {
                kind: EventKind::ProcessReap as u32,
                tgid: ppid,
                ts_ns: at,
            },
            pid,
            ppid,
            reaper: if via == ReapVia::Wait4 { ppid } else { 0 },
            via: via as u32,
            exit_ns: exit_at,
            comm: [0; COMM_LEN],
        })
        .to_vec()
    }

    fn zombie(pid: u32, ppid: u32, start_s: u64) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            comm: "child".into(),
            state: 'Z',
            start_ticks: start_s * HZ,
            cpu_ticks: 0,
        }
    }

    #[test]
    fn reaped_child_is_not_a_zombie_and_its_latency_is_recorded() {
        let mut t = Tracker::new(None, HZ, 0);
        t.on_event(&exit(100, 10, 5 * S)).unwrap();
        t.on_event(&reap(100, 10, 5 * S, 5 * S + 2_000_000, ReapVia::Wait4))
            .unwrap();
        let snap = t.census(6 * S, Duration::ZERO, AUTO, |_| None);
        assert!(snap.zombies.is_empty());
        assert_eq!(t.reap_hist().len(), 1);
        assert_eq!(t.reap_hist().max(), t.reap_hist().highest_equivalent(2_000));
        assert_eq!(t.reaped_by(10), 1);
    }

    #[test]
    fn unreaped_child_is_a_zombie_with_exact_age() {
        let mut t = Tracker::new(None, HZ, 0);
        t.on_event(&exit(100, 10, 5 * S)).unwrap();
        let snap = t.census(11 * S, Duration::ZERO, AUTO, |pid| Some(zombie(pid, 10, 4)));
        assert_eq!(
            snap.zombies,
            vec![ZombieRow {
                pid: 100,
                ppid: 10,
                comm: "child".into(),
                age_s: 6.0,
                exact: true,
                stuck: true,
            }]
        );
        assert_eq!(
            snap.parents,
            vec![ParentRow {
                pid: 10,
                zombies: 1,
                in_flight: 0,
                oldest_age_s: 6.0,
                oldest_exact: true,
                stuck_after_s: 5.0,
            }]
        );
        // --min-age hides younger ones.
        assert!(
            t.census(11 * S, Duration::from_secs(7), AUTO, |pid| Some(zombie(
                pid, 10, 4
            )))
            .zombies
            .is_empty()
        );
    }

    #[test]
    fn pid_reuse_never_merges_two_processes() {
        let mut t = Tracker::new(None, HZ, 0);
        // pid 100 exits at 5 s; its reap record was lost. Later the pid belongs to a
        // process that started at 7 s and is itself a zombie now.
        t.on_event(&exit(100, 10, 5 * S)).unwrap();
        let reused = |pid| Some(zombie(pid, 20, 7));
        let snap = t.census(9 * S, Duration::ZERO, AUTO, reused);
        assert!(
            snap.zombies.is_empty(),
            "the new process must not inherit the old exit"
        );

        // Seeded zombie pid 200 (start 1 s); later pid 200 is a different zombie (start 3 s).
        let mut t = Tracker::new(None, HZ, 0);
        t.seed(vec![zombie(200, 30, 1)], 2 * S);
        assert_eq!(
            t.census(3 * S, Duration::ZERO, AUTO, |pid| Some(zombie(pid, 30, 1)))
                .zombies
                .len(),
            1
        );
        assert!(
            t.census(4 * S, Duration::ZERO, AUTO, |pid| Some(zombie(pid, 31, 3)))
                .zombies
                .is_empty()
        );
        // And the same pid + start time stays one process across looks.
        let mut t = Tracker::new(None, HZ, 0);
        t.on_event(&exit(300, 10, 5 * S)).unwrap();
        for now in [6, 7, 8] {
            assert_eq!(
                t.census(now * S, Duration::ZERO, AUTO, |pid| Some(zombie(
                    pid, 10, 4
                )))
                .zombies
                .len(),
                1
            );
        }
    }

    #[test]
    fn seeded_zombies_have_lower_bound_ages() {
        let mut t = Tracker::new(None, HZ, 0);
        t.seed(
            vec![
                zombie(50, 1, 1),
                ProcStat {
                    state: 'S',
                    ..zombie(51, 1, 1)
                },
            ],
            10 * S,
        );
        assert_eq!(t.seeded.len(), 1);
        let snap = t.census(12 * S, Duration::ZERO, AUTO, |pid| Some(zombie(pid, 1, 1)));
        assert_eq!(snap.zombies.len(), 1);
        assert!(!snap.zombies[0].exact);
        assert_eq!(snap.zombies[0].age_s, 2.0);
    }

    #[test]
    fn target_filters_other_parents() {
        let mut t = Tracker::new(Some(10), HZ, 0);
        t.on_event(&exit(100, 10, 5 * S)).unwrap();
        t.on_event(&exit(101, 11, 5 * S)).unwrap();
        t.on_event(&reap(102, 11, 5 * S, 6 * S, ReapVia::Wait4))
            .unwrap();
        let snap = t.census(8 * S, Duration::ZERO, AUTO, |pid| {
            Some(zombie(pid, if pid == 100 { 10 } else { 11 }, 4))
        });
        assert_eq!(
            snap.zombies.iter().map(|z| z.pid).collect::<Vec<_>>(),
            vec![100]
        );
        assert_eq!(t.reap_hist().len(), 0);
    }

    #[test]
    fn pruning_is_amortized() {
        let mut t = Tracker::new(None, HZ, 0);
        let n = EXITED_CAPACITY + 10;
        for pid in 1..=n {
            t.on_event(&exit(pid, 10, S)).unwrap();
        }
        let calls = std::cell::Cell::new(0u32);
        // Every candidate is still a zombie: nothing can be dropped.
        let lookup = |pid| {
            calls.set(calls.get() + 1);
            Some(zombie(pid, 10, 0))
        };
        t.prune_if_large(lookup);
        assert_eq!(calls.get(), n, "one scan when the threshold is crossed");
        t.on_event(&exit(n + 1, 10, S)).unwrap();
        t.prune_if_large(lookup);
        assert_eq!(calls.get(), n, "no rescan on the next event");
    }

    #[test]
    fn vanished_candidates_are_dropped() {
        let mut t = Tracker::new(None, HZ, 0);
        t.on_event(&exit(100, 10, 5 * S)).unwrap();
        assert!(
            t.census(6 * S, Duration::ZERO, AUTO, |_| None)
                .zombies
                .is_empty()
        );
        assert!(
            t.census(7 * S, Duration::ZERO, AUTO, |pid| Some(zombie(pid, 10, 4)))
                .zombies
                .is_empty()
        );
    }

    #[test]
    fn young_zombies_are_in_flight_and_a_batch_reaper_is_judged_by_its_pace() {
        let mut t = Tracker::new(None, HZ, 0);
        // Parent 10 once took 3.5 s to reap: its threshold is 7 s.
        t.on_event(&exit(90, 10, S)).unwrap();
        t.on_event(&reap(90, 10, S, S + 7 * S / 2, ReapVia::Free))
            .unwrap();
        t.on_event(&exit(100, 10, 5 * S)).unwrap();
        // Parent 20 never reaped: its threshold is the 5 s floor.
        t.on_event(&exit(200, 20, 5 * S)).unwrap();
        t.on_event(&exit(201, 20, 10 * S)).unwrap();
        let lookup = |pid| Some(zombie(pid, if pid < 200 { 10 } else { 20 }, 4));
        let snap = t.census(11 * S, Duration::ZERO, AUTO, lookup);
        assert_eq!(snap.zombies.len(), 3);
        assert_eq!((snap.stuck, snap.in_flight), (1, 2));
        assert_eq!(snap.parents.len(), 1, "only parent 20 has a stuck zombie");
        let p = &snap.parents[0];
        assert_eq!((p.pid, p.zombies, p.in_flight), (20, 1, 1));
        assert_eq!(p.stuck_after_s, 5.0);
        // Past parent 10's own pace its zombie is stuck too.
        let snap = t.census(15 * S + S / 10, Duration::ZERO, AUTO, lookup);
        assert_eq!((snap.stuck, snap.in_flight), (3, 0));
        assert_eq!(snap.parents[1].stuck_after_s, 7.0);
        // A fixed rule judges every parent alike.
        let fixed = StuckRule::Fixed(Duration::from_millis(50));
        let snap = t.census(11 * S, Duration::ZERO, fixed, lookup);
        assert_eq!((snap.stuck, snap.in_flight), (3, 0));
    }

    #[test]
    fn reapers_are_capped_and_the_reap_total_stays_exact() {
        let mut t = Tracker::new(None, HZ, 0);
        let n = REAPERS_CAPACITY as u32 + 500;
        for parent in 1..=n {
            let child = 100_000 + parent;
            t.on_event(&exit(child, parent, S)).unwrap();
            t.on_event(&reap(child, parent, S, 2 * S, ReapVia::Wait4))
                .unwrap();
        }
        assert_eq!(t.reaped.len(), REAPERS_CAPACITY);
        assert_eq!(t.reapers_evicted(), 500);
        assert_eq!(t.reaped_total(), n as u64);
        assert_eq!(t.reap_hist().len(), n as u64);
        // The least recently reaping parents went first; the latest keep their pace.
        assert_eq!(t.reaped_by(1), 0);
        assert_eq!(t.reaped_by(n), 1);
        assert_eq!(t.slowest_reap_s(n), Some(1.0));
    }

    #[test]
    fn pending_exits_are_capped_and_the_rest_counted() {
        let mut t = Tracker::new(None, HZ, 0);
        let n = PENDING_CAPACITY as u32 + 300;
        for pid in 1..=n {
            t.on_event(&exit(pid, 10, S)).unwrap();
        }
        assert_eq!(t.pending.len(), PENDING_CAPACITY);
        assert_eq!(t.exits_untracked(), 300);
        // A reap frees room for the next exit.
        t.on_event(&reap(1, 10, S, 2 * S, ReapVia::Wait4)).unwrap();
        t.on_event(&exit(n + 1, 10, S)).unwrap();
        assert_eq!(t.pending.len(), PENDING_CAPACITY);
        assert_eq!(t.exits_untracked(), 300);
    }
}
