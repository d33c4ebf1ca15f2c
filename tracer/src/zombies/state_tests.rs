//! The zombie tracker's unit tests: records and /proc views made up, states checked.
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
            source: AgeSource::ExitEvent,
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
            oldest_source: AgeSource::ExitEvent,
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
    assert_eq!(snap.zombies[0].source, AgeSource::LowerBound);
    assert_eq!(snap.zombies[0].age_s, 2.0);
}

#[test]
fn seeded_zombies_dated_by_the_kernel_are_stuck_at_the_first_look() {
    let mut t = Tracker::new(None, HZ, 0);
    t.seed(vec![zombie(50, 1, 1), zombie(60, 2, 1)], 100 * S);
    // The kernel dates 50 (exited 20 s ago); 60 it cannot.
    t.date_seeded(100 * S, |pid, start| {
        assert_eq!(start, HZ, "start time 1 s, in ticks");
        (pid == 50).then(|| Duration::from_secs(20))
    });
    let snap = t.census(101 * S, Duration::ZERO, AUTO, |pid| {
        Some(zombie(pid, if pid == 50 { 1 } else { 2 }, 1))
    });
    let z50 = snap.zombies.iter().find(|z| z.pid == 50).unwrap();
    assert_eq!(
        (z50.age_s, z50.exact, z50.source),
        (21.0, true, AgeSource::ExitedAt)
    );
    assert!(z50.stuck, "21 s is past the 5 s floor at the first look");
    let z60 = snap.zombies.iter().find(|z| z.pid == 60).unwrap();
    assert_eq!(
        (z60.age_s, z60.source, z60.stuck),
        (1.0, AgeSource::LowerBound, false)
    );
    assert_eq!(snap.parents.len(), 1);
    assert_eq!(snap.parents[0].oldest_source, AgeSource::ExitedAt);
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

#[test]
fn a_child_released_at_exit_is_counted_for_its_parent_when_its_free_comes_after_a_census() {
    let mut t = Tracker::new(None, HZ, 0);
    t.on_event(&exit(100, 10, 5 * S)).unwrap();
    // SIGCHLD ignored: gone from /proc at once; a census runs before the free record.
    let snap = t.census(5 * S + 1_000_000, Duration::ZERO, AUTO, |_| None);
    assert!(snap.zombies.is_empty());
    // The free record of an autoreaped child names no parent: the exit's is used.
    t.on_event(&reap(100, 0, 5 * S, 5 * S + 3_000_000, ReapVia::Free))
        .unwrap();
    assert_eq!(t.reaped_by(10), 1);
}
