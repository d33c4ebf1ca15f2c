//! Episodes opened and closed by scripted samples, refusal records and kernel edges.
use super::*;

const MEM: TcpMem = TcpMem {
    low: 64,
    pressure: 128,
    high: 256,
};

fn s(t_ms: u64, pages: u64, pressures: u64, chrono: u64) -> Sample {
    Sample {
        t_ns: t_ms * 1_000_000,
        pages,
        tcp_mem: MEM,
        pressures: Some(pressures),
        chrono_ms: Some(chrono),
    }
}

#[test]
fn refusal_opens_and_chrono_closes_with_kernel_time() {
    let mut e = Episodes::default();
    assert_eq!(e.on_sample(s(0, 10, 5, 1000)), Edges::default());
    let edges = e.on_refusal(150_000_000, 300, None);
    assert!(edges.opened);
    e.on_refusal(160_000_000, 310, None);
    assert_eq!(e.on_sample(s(200, 200, 6, 1000)), Edges::default());
    // Pages between low and pressure: the kernel is still under pressure.
    assert_eq!(e.on_sample(s(300, 100, 6, 1000)), Edges::default());
    assert!(e.open().is_some());
    let edges = e.on_sample(s(400, 30, 6, 1240));
    assert!(edges.closed && !edges.opened);
    let ep = &e.list[0];
    assert_eq!(ep.started_by, Start::Refusal);
    assert_eq!(ep.start_ns, 150_000_000);
    assert_eq!(ep.duration_ms(), Some(250));
    assert_eq!(ep.peak_pages, 310);
    assert_eq!(ep.refusals, 2);
    assert_eq!(ep.kernel_ms, Some(240));
    assert_eq!(ep.kernel_entries, Some(1));
    assert_eq!(e.peak_pages, 310);
    // A late record of the closed episode does not open a new one.
    assert_eq!(e.on_refusal(390_000_000, 250, None), Edges::default());
    assert_eq!(e.list.len(), 1);
    assert_eq!(e.list[0].refusals, 3);
}

#[test]
fn pages_above_pressure_and_short_episodes_between_samples() {
    let mut e = Episodes::default();
    // Already on when the tracer starts.
    assert!(e.on_sample(s(0, 200, 5, 0)).opened);
    assert_eq!(e.list[0].started_by, Start::Before);
    assert!(e.on_sample(s(100, 50, 5, 80)).closed);
    // Entered and left within one period: timed by Chrono.
    assert_eq!(e.on_sample(s(200, 40, 6, 110)), Edges::default());
    assert_eq!(e.list.len(), 2);
    assert_eq!(e.list[1].kernel_ms, Some(30));
    assert_eq!(e.list[1].duration_ms(), Some(30));
    assert_eq!(e.list[1].started_by, Start::Counter);
    // Entered and still on with pages between low and pressure.
    assert!(e.on_sample(s(300, 100, 7, 110)).opened);
    assert!(e.on_sample(s(400, 129, 7, 110)) == Edges::default());
    assert!(e.on_sample(s(500, 10, 7, 150)).closed);
    assert_eq!(e.list.len(), 3);
    assert_eq!(e.list[2].duration_ms(), Some(200));
}

#[test]
fn an_earlier_leave_in_the_start_window_does_not_end_the_episode() {
    let mut e = Episodes::default();
    e.on_sample(s(0, 10, 5, 1000));
    // The kernel left a stale episode (Chrono +17520) just before this one began.
    assert!(e.on_refusal(50_000_000, 300, None).opened);
    assert_eq!(e.on_sample(s(100, 300, 6, 18_520)), Edges::default());
    assert_eq!(e.on_sample(s(200, 300, 6, 18_520)), Edges::default());
    assert!(e.on_sample(s(300, 20, 6, 18_700)).closed);
    assert_eq!(e.list.len(), 1);
    assert_eq!(e.list[0].kernel_ms, Some(180));
    assert_eq!(e.list[0].tcp_mem, Some(MEM));
    assert_eq!(e.worst().unwrap().peak_pages, 300);
}

fn who(pid: u32) -> Entry {
    Entry {
        pid,
        comm: "x".into(),
        ..Entry::default()
    }
}

#[test]
fn kernel_edges_give_exact_start_and_end() {
    let mut e = Episodes::with_kernel_edges(true);
    assert_eq!(e.on_sample(s(0, 10, 5, 1000)), Edges::default());
    assert!(e.on_edge(120_000_000, true, who(7)).opened);
    // Samples neither close (pages under low) nor open anything while edges rule.
    assert_eq!(e.on_sample(s(200, 300, 6, 1000)), Edges::default());
    assert_eq!(e.on_sample(s(300, 20, 6, 1000)), Edges::default());
    assert!(e.open().is_some());
    assert!(e.on_edge(345_000_000, false, who(0)).closed);
    // The next sample gives the kernel's Chrono figure for it.
    assert_eq!(e.on_sample(s(400, 20, 6, 1225)), Edges::default());
    let ep = &e.list[0];
    assert_eq!(ep.started_by, Start::Edge);
    assert_eq!(ep.duration_ms(), Some(225));
    assert!(ep.end_exact);
    assert_eq!(ep.kernel_ms, Some(225));
    assert_eq!(ep.kernel_entries, Some(1));
    assert_eq!(ep.peak_pages, 300);
    assert_eq!(ep.entered_by.as_ref().unwrap().pid, 7);
    assert_eq!(ep.tcp_mem, Some(MEM));
    // A leave with nothing open changes nothing; a refusal record read after the
    // leave does not open a new episode.
    assert_eq!(e.on_edge(350_000_000, false, who(0)), Edges::default());
    assert_eq!(e.on_refusal(340_000_000, 250, None), Edges::default());
    assert_eq!(e.list.len(), 1);
}

#[test]
fn edges_read_late_keep_the_limits_in_force_before_the_start() {
    let mut e = Episodes::with_kernel_edges(true);
    e.on_sample(s(0, 10, 5, 1000));
    // Both edges read after tcp_mem was changed back (reader starved).
    assert!(e.on_edge(100_000_000, true, who(1)).opened);
    assert!(e.on_edge(900_000_000, false, who(1)).closed);
    let mut later = s(1000, 10, 6, 1800);
    later.tcp_mem.pressure = 999;
    e.on_sample(later);
    assert_eq!(e.list[0].tcp_mem, Some(MEM));
    // A refusal record's limits (the kernel's) win over a sample's.
    let mut e = Episodes::with_kernel_edges(true);
    e.on_sample(s(0, 10, 5, 1000));
    e.on_edge(100_000_000, true, who(1));
    let mut wrong = s(100, 300, 6, 1000);
    wrong.tcp_mem.low = 1;
    e.on_sample(wrong);
    e.on_refusal(150_000_000, 300, Some(MEM));
    assert_eq!(e.list[0].tcp_mem, Some(MEM));
}

#[test]
fn an_entry_edge_read_after_a_refusal_moves_the_start_back() {
    let mut e = Episodes::with_kernel_edges(true);
    e.on_sample(s(0, 10, 5, 1000));
    assert!(e.on_refusal(150_000_000, 300, None).opened);
    assert_eq!(e.on_edge(149_000_000, true, who(3)), Edges::default());
    assert_eq!(e.list[0].start_ns, 149_000_000);
    assert_eq!(e.list[0].started_by, Start::Edge);
}

#[test]
fn idle_samples_make_no_episode() {
    let mut e = Episodes::default();
    for t in 0..20 {
        assert_eq!(e.on_sample(s(t * 100, 100 + t % 3, 5, 7)), Edges::default());
    }
    assert!(e.list.is_empty());
    assert_eq!(e.peak_pages, 102);
}

#[test]
fn episodes_are_capped_and_the_count_and_durations_stay_exact() {
    let mut e = Episodes::default();
    let n = EPISODES_CAPACITY as u64 + 250;
    e.on_sample(s(0, 10, 0, 0));
    // Each episode: a refusal opens it, a sample 100 ms later sees Chrono grow.
    for i in 0..n {
        let t = 1_000 + i * 1_000;
        assert!(e.on_refusal(t * 1_000_000, 300, None).opened);
        assert!(e.on_sample(s(t + 100, 10, i + 1, (i + 1) * 100)).closed);
    }
    assert_eq!(e.list.len(), EPISODES_CAPACITY);
    assert_eq!(e.evicted, 250);
    assert_eq!(e.total(), n);
    let d = e.durations_ms();
    assert_eq!(d.len(), n);
    assert_eq!(d.max(), d.highest_equivalent(100));
    // The metric's buckets too: every episode's 100 ms under the 0.1 s bound.
    let b = e.durations_buckets();
    assert_eq!(b.count(), n);
    assert_eq!(b.sum_s(), (n * 100_000_000) as f64 / 1e9);
    // The latest ones are kept.
    assert_eq!(
        e.list.last().unwrap().start_ns,
        (1_000 + (n - 1) * 1_000) * 1_000_000
    );
}
