//! `tracer tcp-pressure` against real TCP memory pressure: net.ipv4.tcp_mem lowered
//! (and restored by a guard, also on panic), loopback connections whose receivers
//! never read, pushed by the `incident_tcp` helper.
//!
//! Over 600 lines because every kernel path (fentry, kprobe, tracepoint fallback, no
//! send timing, no drop reason) needs its own real pressure episode and assertions; they
//! share the push helper above and belong together.
use std::time::{Duration, Instant};

use tracer::{
    snapshot::tcpmem::TcpMem,
    tcp::{LatencyUs, Look, SendLatency, Source, TcpPressureReport},
};
use tracer_tests::{
    Envelope, Incident, TcpMemGuard, TracefsWithout, Tracer, assert_none_loaded, helper_bin,
    loaded_program_names, loopback_exchange, matrix_kernel, read_tcp_mem, require_root, run_tracer,
    run_tracer_env, serial, tcp_under_pressure, tcpext, wait_for,
};

/// A tcp-pressure report as the tracer wrote it, read into its type.
type Report = Envelope<TcpPressureReport>;

/// A report (or part of one) as JSON, for failure messages.
fn show(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("a report serializes")
}

/// Send latency during pressure and outside it; None where sends are not timed.
fn timed(r: &TcpPressureReport) -> Option<(&LatencyUs, &LatencyUs)> {
    match &r.send_latency_us {
        SendLatency::Measured {
            pressure, normal, ..
        } => Some((pressure, normal)),
        SendLatency::NotMeasured { .. } => None,
    }
}

/// Send latency during pressure; panics where sends are not timed.
fn during_pressure(r: &TcpPressureReport) -> &LatencyUs {
    timed(r)
        .unwrap_or_else(|| panic!("sends are not timed: {}", show(&r.send_latency_us)))
        .0
}

/// Send latency outside pressure; panics where sends are not timed.
fn outside_pressure(r: &TcpPressureReport) -> &LatencyUs {
    timed(r)
        .unwrap_or_else(|| panic!("sends are not timed: {}", show(&r.send_latency_us)))
        .1
}

/// The kernel path the tracer must take for pressure edges and send latency here:
/// this machine refuses fentry and has no kprobes; the stock kernels allow fentry.
fn expected_paths() -> (&'static str, &'static str) {
    match matrix_kernel() {
        "host" => ("sampling", "tracepoints"),
        _ => ("fentry", "fentry"),
    }
}

/// No `tcp_*` program is left loaded. The BTF tracepoint program is freed after an
/// RCU grace period once its link closes, so give the kernel a moment first.
fn assert_detached() {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline
        && loaded_program_names().iter().any(|n| n.starts_with("tcp_"))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_none_loaded("tcp_");
}

/// What the tracer reported while `incident_tcp push 40` ran under tcp_mem `64 128
/// 256`: every report (interval and final) and the helper's pid. tcp_mem is restored
/// (and checked) and the programs are gone when this returns.
struct Pushed {
    during: Vec<Report>,
    report: Report,
    helper: u32,
    /// The tracer's stderr (its warnings: late samples, lost events), for failures.
    stderr: String,
}

const LOWERED: &str = "64 128 256";

fn push_under_low_tcp_mem(extra: &[&str]) -> Pushed {
    push_under_low_tcp_mem_env(extra, &[])
}

fn push_under_low_tcp_mem_env(extra: &[&str], env: &[(&str, &str)]) -> Pushed {
    let normal = read_tcp_mem();
    let mut args = vec!["tcp-pressure", "--json", "-i", "500ms"];
    args.extend_from_slice(extra);
    let mut tracer = Tracer::start_env(&args, env);
    let mut inc = Incident::start_bin(&helper_bin("incident_tcp"), &["push", "40"]);
    let helper = inc.pid;
    let out = {
        let mem = TcpMemGuard::set(LOWERED);
        let entered = tcpext("TCPMemoryPressures");
        inc.send("go");
        inc.expect_line("pushing");
        // Pressure as the kernel counts it, then pushing under it until an interval
        // report has seen the episode open under the lowered limits, with refusals
        // counted and sends timed during it.
        wait_for(30, "TCPMemoryPressures to grow", || {
            (tcpext("TCPMemoryPressures") > entered).then_some(())
        });
        tracer.report_as_where::<TcpPressureReport>(Duration::from_secs(60), |x| {
            x.tcp_mem == lowered()
                && x.pressure_now
                && x.episodes.iter().any(|e| e.duration_ms.is_none())
                && x.refusals > 0
                && timed(x).is_some_and(|(p, _)| p.count > 0)
        });
        // Stop pushing, free the sockets and restore tcp_mem: the kernel leaves
        // pressure at the next socket-memory release under "low" (per-CPU caching
        // of TCP memory may keep the count above the lowered "low" for good, so the
        // test makes releases under the restored one until it has left).
        drop(inc);
        drop(mem);
        wait_for(30, "the kernel to leave TCP memory pressure", || {
            loopback_exchange();
            (!tcp_under_pressure()).then_some(())
        });
        // A report after the end: the tracer has sampled the kernel out of pressure.
        tracer.report_as_where::<TcpPressureReport>(Duration::from_secs(60), |x| !x.pressure_now);
        tracer.interrupt()
    };
    // The guard put tcp_mem back.
    assert_eq!(read_tcp_mem(), normal, "tcp_mem was not restored");
    assert_detached();
    assert!(out.status.success(), "tracer failed: {}", out.stderr);
    Pushed {
        during: out.reports_as(),
        report: out.final_as(),
        helper,
        stderr: out.stderr.clone(),
    }
}

fn lowered() -> TcpMem {
    TcpMem {
        low: 64,
        pressure: 128,
        high: 256,
    }
}

#[test]
fn pressure_episode_names_the_pushing_process_and_its_latency() {
    require_root();
    let _s = serial();
    let Pushed {
        during,
        report,
        helper,
        stderr,
    } = push_under_low_tcp_mem(&[]);
    let r = &report;
    assert_eq!(r.header.command, "tcp-pressure");
    assert_eq!(r.header.lost_events, 0, "{}", show(r));
    // The triple the test set, as the reports saw it while it was in force.
    let set = lowered();
    assert!(
        during.iter().any(|x| !x.header.final_ && x.tcp_mem == set),
        "no interval report saw the lowered tcp_mem"
    );
    // At least one episode, with the lowered limits crossed.
    let eps = &r.episodes;
    assert!(!eps.is_empty(), "no episode: {}", show(r));
    assert!(eps.iter().any(|e| e.peak_pages > 128), "{}", show(eps));
    assert!(
        eps.iter().all(|e| e.tcp_mem == Some(set)),
        "{}\ntracer stderr: {stderr}",
        show(eps)
    );
    // While it was on, interval reports said so, with the episode still open.
    assert!(
        during.iter().any(|x| !x.header.final_
            && x.pressure_now
            && x.warning
                .as_deref()
                .is_some_and(|w| w.starts_with("TCP memory pressure NOW"))
            && x.episodes.iter().any(|e| e.duration_ms.is_none())),
        "no interval report saw the episode open"
    );
    assert!(r.mem_pages.peak > 128);
    // The helper is the top culprit. On loopback the kernel force-charges the sends
    // and refuses the receiving sockets (the helper's, which never read): the
    // refusals are found by socket cookie and counted for the socket's owner.
    let top = (r.culprits.first())
        .unwrap_or_else(|| panic!("top culprit is not the helper: {}", show(r)));
    assert_eq!(
        top.pid,
        helper,
        "top culprit is not the helper: {}",
        show(r)
    );
    // Softirq runs refusals on a kernel thread's stack (ksoftirqd) or whoever it
    // interrupted: a kernel thread is a bystander, never a culprit.
    for c in &r.culprits {
        let pid = c.pid;
        let flags: u64 = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, t)| t.split_whitespace().nth(6)?.parse().ok())
            })
            .unwrap_or(0);
        assert_eq!(
            flags & 0x0020_0000,
            0,
            "kernel thread named as a culprit: {}",
            show(c)
        );
    }
    assert!(top.refusals > 0, "{}", show(top));
    assert_eq!(top.comm, "incident_tcp");
    assert!(top.kind.contains("recv"), "{}", show(top));
    assert!(top.sockets >= 1, "{}", show(top));
    assert!(top.cgroup.cgroup.starts_with('/'));
    assert!(r.refusals >= top.refusals);
    // Its sockets held the most memory when the tracer looked during the episode.
    let holder = (r.holders.first()).unwrap_or_else(|| panic!("top holder: {}", show(r)));
    assert_eq!(holder.pid, helper, "top holder: {}", show(r));
    assert!(holder.sockets >= 1, "{}", show(holder));
    assert!(holder.held_bytes > 0, "{}", show(holder));
    assert_eq!(holder.comm, "incident_tcp");
    assert_eq!(r.top_sockets.source, Source::SockDiag);
    assert_ne!(r.top_sockets.when, Look::Now);
    // Send latency was measured during pressure, with real percentiles.
    let p = during_pressure(r);
    assert!(p.count > 0, "{}", show(p));
    assert!(p.max >= p.p99);
    assert!(p.p99 >= p.p50);
    assert!(p.p50 > 0.0);
    // Drops are counted by name (the table comes from the kernel's format file).
    assert!(
        r.drops.as_ref().and_then(|d| d.get("PROTO_MEM")).is_some(),
        "{}",
        show(&r.drops)
    );
    // Advice is computed from the measured peak, not applied.
    let adv = &r.advice;
    assert!(
        adv.sysctl
            .first()
            .is_some_and(|l| l.starts_with("sysctl -w net.ipv4.tcp_mem=")),
        "{}",
        show(adv)
    );
    // The kernel path taken on this kernel of the matrix, in `paths` and in `path`.
    let (edges, send) = expected_paths();
    assert_eq!(r.paths.pressure_edges.path, edges, "{}", show(&r.paths));
    assert_eq!(
        r.paths.send_latency.path.as_deref(),
        Some(send),
        "{}",
        show(&r.paths)
    );
    // The same paths in the common `hooks` every report carries (and the metrics
    // expose as tracer_hook_path), `none` where the detector samples instead.
    let via = |choice: &str| {
        (r.header.hooks.paths.iter())
            .find(|p| p.choice == choice)
            .map(|p| p.path.clone())
            .unwrap_or_else(|| panic!("{choice} not in {}", show(&r.header.hooks)))
    };
    assert_eq!(
        via("pressure edges"),
        if edges == "sampling" { "none" } else { edges }
    );
    assert_eq!(via("send latency"), send);
    assert!(matches!(r.send_latency_us, SendLatency::Measured { .. }));
    let path = r.path.as_str();
    if edges == "sampling" {
        assert!(path.starts_with("tracepoints + 10 Hz sampling"), "{path}");
        assert!(
            path.contains("send latency from syscall entry -> sock:sock_send_length"),
            "{path}"
        );
    } else {
        assert!(
            path.starts_with("fentry on tcp_enter/leave_memory_pressure"),
            "{path}"
        );
        assert!(
            path.contains("send latency from fentry/fexit tcp_sendmsg"),
            "{path}"
        );
        // Episodes start and end at the kernel's own edges, and the entry names the
        // socket whose allocation crossed the limit: the helper's.
        let ep = eps
            .iter()
            .find(|e| e.started_by == "tcp_enter_memory_pressure")
            .unwrap_or_else(|| panic!("no episode from the kernel's entry edge: {}", show(eps)));
        assert!(ep.end_exact, "{}", show(ep));
        assert!(ep.duration_ms.is_some(), "{}", show(ep));
        let who = (ep.entered_by.as_ref()).unwrap_or_else(|| panic!("{}", show(ep)));
        assert!(who.cookie != 0, "{}", show(ep));
        assert_eq!(who.socket_owner_pid, Some(helper), "{}", show(ep));
        assert_eq!(
            who.socket_owner_comm.as_deref(),
            Some("incident_tcp"),
            "{}",
            show(ep)
        );
    }
}

#[test]
fn classic_tracepoint_fallback_counts_every_refusal() {
    require_root();
    let _s = serial();
    let Pushed { report: r, .. } =
        push_under_low_tcp_mem(&["--no-socket-cookies", "--top", "1000"]);
    assert_eq!(r.header.lost_events, 0, "{}", show(&r));
    assert!(
        r.path
            .contains("refusals from sock:sock_exceed_buf_limit (no socket"),
        "{}",
        r.path
    );
    let refusals = r.refusals;
    assert!(refusals > 0, "{}", show(&r));
    // Without socket cookies every refusal is the current task's, and every one the
    // kernel counted reached a culprit row.
    let culprits = &r.culprits;
    let sum: u64 = culprits.iter().map(|c| c.refusals).sum();
    assert_eq!(sum, refusals, "{}", show(&r));
    assert!(
        culprits
            .iter()
            .all(|c| c.by_current_task == c.refusals && c.sockets == 0),
        "{}",
        show(&r)
    );
    // The limits in the kernel's records are the ones the test set.
    let eps = &r.episodes;
    assert!(!eps.is_empty(), "{}", show(&r));
    assert!(
        eps.iter().all(|e| e.tcp_mem == Some(lowered())),
        "{}",
        show(eps)
    );
}

#[test]
fn without_fentry_the_kprobe_or_tracepoint_fallback_is_named_and_works() {
    require_root();
    let _s = serial();
    let Pushed {
        report: r, helper, ..
    } = push_under_low_tcp_mem_env(&[], &[("TRACER_AVOID_PATHS", "fentry")]);
    assert_eq!(r.header.lost_events, 0, "{}", show(&r));
    let eps = &r.episodes;
    assert!(!eps.is_empty(), "no episode: {}", show(&r));
    let edges = &r.paths.pressure_edges;
    let detail = (edges.detail.as_deref()).unwrap_or_else(|| panic!("no detail: {}", show(edges)));
    assert!(
        detail.contains("fentry: avoided (TRACER_AVOID_PATHS)"),
        "{}",
        show(edges)
    );
    // Send latency during the episode, whatever path timed it.
    assert!(during_pressure(&r).count > 0, "{}", show(&r));
    assert_eq!(
        r.culprits.first().map(|c| c.pid),
        Some(helper),
        "{}",
        show(&r)
    );
    if matrix_kernel() == "host" {
        // No kprobes here: the tracepoint path, named.
        assert_eq!(edges.path, "sampling", "{}", show(edges));
        assert_eq!(r.paths.send_latency.path.as_deref(), Some("tracepoints"));
        assert!(
            detail.contains("kprobe: this kernel has no kprobes"),
            "{}",
            show(edges)
        );
    } else {
        // kprobes on the stock kernels: exact edges, the entering task but no socket.
        assert_eq!(edges.path, "kprobe", "{}", show(edges));
        assert_eq!(r.paths.send_latency.path.as_deref(), Some("kprobe"));
        let path = r.path.as_str();
        assert!(
            path.starts_with("kprobe on tcp_enter/leave_memory_pressure"),
            "{path}"
        );
        assert!(
            path.contains("send latency from kprobe/kretprobe tcp_sendmsg"),
            "{path}"
        );
        let ep = eps
            .iter()
            .find(|e| e.started_by == "tcp_enter_memory_pressure")
            .unwrap_or_else(|| panic!("no episode from the kernel's entry edge: {}", show(eps)));
        assert!(ep.end_exact, "{}", show(ep));
        let who = (ep.entered_by.as_ref()).unwrap_or_else(|| panic!("{}", show(ep)));
        assert_eq!(who.cookie, 0, "{}", show(ep));
        assert!(who.pid > 0, "{}", show(ep));
    }
}

#[test]
fn where_nothing_can_time_sends_the_report_says_so() {
    require_root();
    let _s = serial();
    // Only the tracepoint path left: it needs sock:sock_send_length, which 6.1 lacks.
    let out = run_tracer_env(
        &["tcp-pressure", "-d", "500ms", "--json"],
        &[("TRACER_AVOID_PATHS", "fentry,kprobe")],
    );
    assert!(out.status.success(), "{}", out.stderr);
    let r: Report = out.final_as();
    if matrix_kernel() == "6.1" {
        // Not measured, and no made-up histogram: that shape has none.
        let SendLatency::NotMeasured { why, .. } = &r.send_latency_us else {
            panic!("sends timed where nothing can: {}", show(&r));
        };
        let why = why
            .as_deref()
            .unwrap_or_else(|| panic!("no why: {}", show(&r)));
        assert!(
            why.starts_with("send latency cannot be measured on this kernel")
                && why.contains("tracepoint sock:sock_send_length is missing"),
            "{why}"
        );
        assert!(r.path.contains("send latency from nothing (not measured)"));
    } else {
        assert!(
            matches!(r.send_latency_us, SendLatency::Measured { .. }),
            "{}",
            show(&r)
        );
        assert_eq!(
            r.paths.send_latency.path.as_deref(),
            Some("tracepoints"),
            "{}",
            show(&r)
        );
    }
    // With every path avoided, on any kernel: said in the text report too.
    let out = run_tracer_env(
        &["tcp-pressure", "-d", "500ms"],
        &[("TRACER_AVOID_PATHS", "fentry,kprobe,tracepoints")],
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("note: send latency cannot be measured on this kernel: none, send latency is not measured"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("SEND LATENCY during pressure: NOT MEASURED"),
        "{}",
        out.stdout
    );
    assert_detached();
}

fn sockstat_pages() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").expect("sockstat");
    let line = s.lines().find(|l| l.starts_with("TCP:")).expect("TCP line");
    let mut w = line.split_whitespace();
    while let Some(x) = w.next() {
        if x == "mem" {
            return w.next().unwrap().parse().unwrap();
        }
    }
    panic!("no mem in {line}");
}

#[test]
fn a_kfree_skb_without_the_reason_field_is_named_and_drops_are_not_counted() {
    require_root();
    let _s = serial();
    // Kernels before 5.17 have skb:kfree_skb without `reason`: the tracer must not read
    // other bytes as a reason, and must say drops are not counted rather than "none".
    let view = TracefsWithout::new(&[]).without_field("skb", "kfree_skb", "reason");
    let out = run_tracer_env(&["tcp-pressure", "-d", "1s", "--json"], &view.env());
    assert!(out.status.success(), "{}", out.stderr);
    let r: Report = out.final_as();
    assert!(
        r.drops.is_none(),
        "drops must be unknown, not zero: {}",
        show(&r)
    );
    assert!(
        r.caveats
            .iter()
            .any(|c| c.contains("skb:kfree_skb is missing")),
        "{:?}",
        r.caveats
    );
    assert!(
        out.stderr
            .contains("tracepoint skb:kfree_skb has no field `reason` on this kernel"),
        "{}",
        out.stderr
    );
    let text = run_tracer_env(&["tcp-pressure", "-d", "1s"], &view.env());
    assert!(
        text.stdout
            .contains("memory-related drops: not counted (see the note above)"),
        "{}",
        text.stdout
    );
    let doctor = run_tracer_env(&["doctor"], &view.env());
    assert_eq!(doctor.status.code(), Some(0), "{}", doctor.stdout);
    assert!(
        doctor
            .stdout
            .lines()
            .any(|l| l.starts_with("tcp-pressure  can run") && l.contains("without skb:kfree_skb")),
        "{}",
        doctor.stdout
    );
    assert_detached();
}

#[test]
fn early_warning_at_80_percent_of_the_pressure_threshold() {
    require_root();
    let _s = serial();
    let normal = read_tcp_mem();
    // 2 MiB that nobody reads keeps TCP memory in use. How many pages the kernel
    // charges for it differs (241 to 256 pages seen here, 255 on 6.1): wait until the
    // held data shows and stops moving, and derive the thresholds from that.
    let before = sockstat_pages();
    let inc = Incident::start_bin(&helper_bin("incident_tcp"), &["hold", "2048"]);
    let mut last = (0, Instant::now());
    let pages = wait_for(20, "the held data to show in sockstat and settle", || {
        let now = sockstat_pages();
        if now != last.0 {
            last = (now, Instant::now());
            return None;
        }
        (now >= before + 128 && last.1.elapsed() >= Duration::from_millis(300)).then_some(now)
    });
    // Pressure threshold such that the held pages are 88% of it; no episode. The
    // warning needs the level held for 3 s (--warn-after's default): the helper holds
    // it, and the test waits for the first report that warns.
    let pressure = pages * 100 / 88;
    let (r, all) = {
        let _mem = TcpMemGuard::set(&format!("{} {pressure} {}", pages / 2, pressure * 4));
        let mut tracer = Tracer::start(&["tcp-pressure", "-i", "500ms", "--json"]);
        let r = tracer
            .report_as_where::<TcpPressureReport>(Duration::from_secs(60), |r| r.warning.is_some());
        let out = tracer.interrupt();
        assert!(out.status.success(), "{}", out.stderr);
        (r, out.reports_as::<TcpPressureReport>())
    };
    let last = all.last().expect("a final report");
    drop(inc);
    assert_eq!(read_tcp_mem(), normal, "tcp_mem was not restored");
    assert_eq!(r.tcp_mem.pressure, pressure, "{}", show(&r));
    let pct = r.mem_pages.pct_of_pressure;
    assert!((80.0..100.0).contains(&pct), "{pct}% ({})", show(&r));
    let w = r
        .warning
        .as_deref()
        .expect("the report the test waited for warns");
    assert!(
        w.contains("of the pressure threshold") && w.contains("an episode is near"),
        "{w}"
    );
    // The warning rests on the level held for the stated time, not on one sample.
    let near = &r.early_warning;
    assert!(near.active, "{}", show(near));
    assert_eq!(near.threshold_pct, 80.0, "{}", show(near));
    assert_eq!(near.hold_s, 3.0, "{}", show(near));
    assert!(near.held_s >= 3.0, "{}", show(near));
    assert!(near.held_samples >= 2, "{}", show(near));
    assert!(w.contains("the warning needs 3.0s"), "{w}");
    // The first interval report, with the level held for less, did not warn yet.
    let first = &all[0];
    assert_eq!(first.warning, None, "{}", show(first));
    assert!(!first.early_warning.active, "{}", show(first));
    assert!(first.early_warning.held_s < 3.0, "{}", show(first));
    assert!(!r.pressure_now);
    assert_eq!(r.episodes.len(), 0, "{}", show(&r));
    assert_eq!(last.episodes.len(), 0, "{}", show(last));
}

/// Every report of a run: no warning, no episode, no culprit, no advice.
fn assert_quiet(r: &TcpPressureReport) {
    assert_eq!(r.warning, None, "{}", show(r));
    assert!(!r.early_warning.active, "{}", show(r));
    assert!(!r.early_warning.sustained, "{}", show(r));
    assert!(!r.pressure_now, "{}", show(r));
    assert_eq!(r.episodes.len(), 0, "{}", show(r));
    assert_eq!(r.culprits.len(), 0, "{}", show(r));
    assert_eq!(r.refusals, 0, "{}", show(r));
    assert_eq!(during_pressure(r).count, 0, "{}", show(r));
    let adv = &r.advice;
    assert!(adv.sysctl.is_empty(), "{}", show(adv));
    assert!(
        adv.notes
            .first()
            .is_some_and(|n| n.starts_with("no change needed")),
        "{}",
        show(adv)
    );
}

#[test]
fn healthy_busy_bulk_transfer_at_normal_tcp_mem_warns_of_nothing() {
    require_root();
    let _s = serial();
    // The host's own tcp_mem, untouched: a healthy host.
    let normal = read_tcp_mem();
    let mut tracer = Tracer::start(&["tcp-pressure", "-i", "500ms", "--json"]);
    // 4 connections, 128 MiB each at full speed, every byte read as it arrives.
    let (conns, mib) = (4u64, 128u64);
    let mut inc = Incident::start_bin(
        &helper_bin("incident_tcp"),
        &["bulk", &conns.to_string(), &mib.to_string()],
    );
    inc.send("go");
    let done = inc.expect_line("done");
    let nums: Vec<u64> = done
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let (writes, bytes) = (nums[0], nums[1]);
    assert_eq!(
        bytes,
        (conns * mib) << 20,
        "the readers got every byte: {done}"
    );
    // A report that timed at least every write of the transfer (all outside pressure).
    let seen = tracer.report_as_where::<TcpPressureReport>(Duration::from_secs(120), |r| {
        timed(r).is_some_and(|(_, n)| n.count >= writes)
    });
    drop(inc);
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    let reports = out.reports_as::<TcpPressureReport>();
    assert!(reports.len() >= 2, "{}", out.stdout);
    assert_eq!(read_tcp_mem(), normal, "tcp_mem changed during the test");
    assert_quiet(&seen);
    for r in &reports {
        assert_quiet(r);
    }
    let r: Report = out.final_as();
    assert_eq!(r.header.lost_events, 0, "{}", show(&r));
    // The transfer's sends were all timed outside pressure. (Its TCP memory may never
    // show in the global count: since 6.0 each CPU keeps up to 1 MiB of it (a per-CPU
    // reserve, net.core.mem_pcpu_rsv from 6.9) before adding to /proc/net/sockstat's
    // "mem"; a 6.12 guest sampled 0 pages through the whole transfer.)
    assert!(outside_pressure(&r).count >= writes, "{}", show(&r));
    assert_eq!(r.early_warning.threshold_pct, 80.0, "{}", show(&r));
    assert_eq!(r.early_warning.hold_s, 3.0, "{}", show(&r));
    // The text report says so in words.
    let text = run_tracer(&["tcp-pressure", "-d", "500ms"]);
    assert!(
        text.stdout.contains("early warning: none"),
        "{}",
        text.stdout
    );
    assert_detached();
}

#[test]
fn idle_system_has_no_episode_and_no_culprit_but_timed_sends() {
    require_root();
    let _s = serial();
    let tracer = Tracer::start(&["tcp-pressure", "--json"]);
    // 200 request/response round trips on loopback: sends outside pressure.
    let mut inc = Incident::start_bin(&helper_bin("incident_tcp"), &["chat", "200"]);
    inc.expect_line("done");
    std::thread::sleep(Duration::from_millis(300));
    let r: Report = tracer.interrupt().final_as();
    drop(inc);
    assert_eq!(r.header.lost_events, 0);
    assert_eq!(r.episodes.len(), 0, "{}", show(&r));
    assert_eq!(r.culprits.len(), 0, "{}", show(&r));
    assert_eq!(r.refusals, 0);
    assert!(!r.pressure_now);
    assert_eq!(r.warning, None);
    // The tcp_mem the kernel has now, and pages well under it.
    let now: Vec<u64> = read_tcp_mem()
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(r.tcp_mem.low, now[0]);
    assert_eq!(r.tcp_mem.pressure, now[1]);
    assert_eq!(r.tcp_mem.high, now[2]);
    // Both ends' sends were timed, all outside pressure.
    let n = outside_pressure(&r);
    assert!(n.count >= 200, "{}", show(n));
    assert_eq!(
        r.paths.send_latency.path.as_deref(),
        Some(expected_paths().1),
        "{}",
        show(&r.paths)
    );
    assert!(n.max > 0.0);
    assert_eq!(during_pressure(&r).count, 0);
    assert_eq!(r.retransmits.pressure, 0);
    assert!(
        (r.advice.notes.first()).is_some_and(|n| n.starts_with("no change needed")),
        "{}",
        show(&r.advice)
    );
}

#[test]
fn interrupt_prints_the_final_report_and_detaches() {
    require_root();
    let _s = serial();
    let tracer = Tracer::start(&["tcp-pressure"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("=== tracer tcp-pressure: final report"),
        "{}",
        out.stdout
    );
    assert_detached();
}
