//! `tracer serve`: every detector in one process, their findings served over HTTP as
//! Prometheus metrics while real incidents happen (a parent leaving 7 zombies, a
//! cgroup made and removed); the endpoints, read-only-ness, bad input in one sentence,
//! and nothing left loaded after SIGTERM/SIGINT.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tracer_tests::{
    CgroupLayout, Incident, Tracer, assert_none_loaded,
    http::{get, promtool_problems, request, sample},
    require_root, run_tracer, serial,
};

/// Polls /metrics until `pred` holds for the exposition (the reports refresh every
/// --interval); panics with the last one after `timeout`.
fn metrics_where(addr: SocketAddr, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let r = get(addr, "/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        if pred(&r.body) {
            return r.body;
        }
        if Instant::now() > deadline {
            panic!("/metrics did not show it within {timeout:?}:\n{}", r.body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A cgroup the test made under cgroup2; removed on drop if the test did not.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn serve_runs_every_detector_in_one_process_and_serves_their_findings() {
    require_root();
    let _s = serial();
    let tracer = Tracer::start(&["serve", "--listen", "127.0.0.1:0", "-i", "300ms"]);
    let addr = tracer.served_at();
    // Ready once attached, which "Tracing ..." follows.
    let ready = get(addr, "/-/ready");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(get(addr, "/-/healthy").status, 200);
    let landing = get(addr, "/");
    assert_eq!(landing.status, 200);
    assert!(landing.body.contains("/metrics"), "{}", landing.body);
    assert_eq!(get(addr, "/nothing-here").status, 404);
    // Read-only.
    let post = request(addr, "POST", "/metrics");
    assert_eq!(post.status, 405, "{}", post.body);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    // Every detector reports into the one exposition.
    metrics_where(addr, Duration::from_secs(60), |m| {
        tracer::detectors::ALL.iter().all(|e| {
            sample(
                m,
                "tracer_report_elapsed_seconds",
                &[("detector", e.spec.detector)],
            )
            .is_some()
        })
    });
    let m = get(addr, "/metrics");
    let ctype = m.header("content-type").unwrap_or("");
    assert!(
        ctype.starts_with("text/plain") || ctype.starts_with("application/openmetrics-text"),
        "{ctype}"
    );
    assert!(m.body.contains("tracer_build_info"), "{}", m.body);

    // Incidents, for real: a parent that leaves 7 zombies, a cgroup made and removed.
    let inc = Incident::start(&["zombies", "7"]);
    let pid = inc.pid.to_string();
    let root = CgroupLayout::read().unified().to_path_buf();
    let cg = TestCgroup(root.join(format!("tracer-serve-{}", std::process::id())));
    std::fs::create_dir(&cg.0).unwrap();
    std::fs::remove_dir(&cg.0).unwrap();
    let m = metrics_where(addr, Duration::from_secs(60), |m| {
        sample(m, "tracer_zombies_parent_zombies", &[("pid", &pid)]) == Some(7.0)
            && sample(
                m,
                "tracer_cgroups_removed_total",
                &[("hierarchy", "cgroup2")],
            )
            .is_some_and(|n| n >= 1.0)
    });
    assert!(
        sample(
            &m,
            "tracer_cgroups_created_total",
            &[("hierarchy", "cgroup2")]
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert!(
        sample(&m, "tracer_zombies_present", &[]).is_some_and(|n| n >= 7.0),
        "{m}"
    );
    for e in tracer::detectors::ALL {
        let d = e.spec.detector;
        assert_eq!(
            sample(&m, "tracer_lost_events_total", &[("detector", d)]),
            Some(0.0),
            "{d}"
        );
    }
    // Its own cost: the kernel timed each program (every kernel of the matrix has
    // BPF_ENABLE_STATS, 5.8+), the exits above ran the exit program at least 7 times
    // and took time; and serve's own CPU and memory.
    let runs = |program: &str| {
        sample(
            &m,
            "tracer_bpf_program_runs_total",
            &[("detector", "zombies"), ("program", program)],
        )
    };
    assert!(runs("zombies_exit").is_some_and(|n| n >= 7.0), "{m}");
    assert!(
        sample(
            &m,
            "tracer_bpf_program_run_seconds_total",
            &[("detector", "zombies"), ("program", "zombies_exit")]
        )
        .is_some_and(|s| s > 0.0),
        "{m}"
    );
    for e in tracer::detectors::ALL {
        let d = e.spec.detector;
        assert!(
            m.lines()
                .any(|l| l.starts_with("tracer_bpf_program_runs_total{")
                    && l.contains(&format!("detector=\"{d}\""))),
            "no program of {d} is timed:\n{m}"
        );
    }
    assert!(
        sample(&m, "tracer_process_cpu_seconds_total", &[]).is_some_and(|s| s > 0.0),
        "{m}"
    );
    assert!(
        sample(&m, "tracer_process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6),
        "{m}"
    );
    // The live exposition, incidents included, is clean by promtool's rules.
    assert_eq!(promtool_problems(&m), "", "{m}");
    drop(inc);

    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    for e in tracer::detectors::ALL {
        assert_none_loaded(&format!("{}_", e.spec.prefix));
    }
}

#[test]
fn serve_builds_the_metrics_at_scrape_time() {
    require_root();
    let _s = serial();
    // An hour between interval reports: whatever a scrape shows, the scrape built.
    let tracer = Tracer::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "-i",
        "1h",
        "--detectors",
        "zombies,triage",
        "--no-bpf-stats",
    ]);
    let addr = tracer.served_at();
    assert_eq!(get(addr, "/-/ready").status, 200);
    // Zombies exist once the helper says ready (it waits for each child's Z state),
    // and their exits are in the ring by then: a scrape drains it and has every
    // detector report. A scrape does not wait over 20 ms for that (a TCG guest may
    // take longer); the next one has it. Nothing else reports within the hour.
    let inc = Incident::start(&["zombies", "5"]);
    let m = metrics_where(addr, Duration::from_secs(60), |m| {
        sample(m, "tracer_zombies_present", &[]).is_some_and(|n| n >= 5.0)
    });
    assert!(
        sample(&m, "tracer_report_age_seconds", &[("detector", "zombies")])
            .is_some_and(|age| age < 60.0),
        "{m}"
    );
    assert!(
        sample(&m, "tracer_zombies_exits_total", &[]).is_some_and(|n| n >= 5.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "tracer_hook_attached",
            &[
                ("detector", "zombies"),
                ("hook", "sched:sched_process_exit")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    // triage judges rates over the window between its interval reports; a scrape does
    // not cut one, so it has no report within the hour.
    assert_eq!(
        sample(
            &m,
            "tracer_report_elapsed_seconds",
            &[("detector", "triage")]
        ),
        None,
        "{m}"
    );
    // --no-bpf-stats: the kernel does not time the programs, so no cost is made up.
    assert!(!m.contains("tracer_bpf_program_runs_total"), "{m}");
    drop(inc);
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    for prefix in ["triage_", "zombies_"] {
        assert_none_loaded(prefix);
    }
}

#[test]
fn serve_answers_bad_input_in_one_sentence() {
    require_root();
    let _s = serial();
    let out = run_tracer(&["serve", "--detectors", "zombies,nope", "-d", "1s"]);
    out.assert_one_sentence(1, &["no detector is named `nope`", "zombies"]);
    // A port in use, held by this test.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out = run_tracer(&["serve", "--listen", &addr, "-d", "1s"]);
    out.assert_one_sentence(1, &["cannot listen on", &addr, "--listen"]);
    let out = run_tracer(&["serve", "--listen", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    for prefix in ["zombies_", "cgroups_"] {
        assert_none_loaded(prefix);
    }
}

/// One client's connections to serve, each idle (connected, nothing sent) or slow
/// (a request sent one byte a second); any serve closes is opened again on the next
/// pass, as a client that reconnects would.
struct Holder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Holder {
    /// Opens `n` connections to `addr` (half idle, half slow) and returns once all are
    /// open; a pass each second writes a byte on the slow ones and reopens closed ones.
    fn start(addr: SocketAddr, n: usize) -> Holder {
        use std::{
            io::{ErrorKind, Write as _},
            net::TcpStream,
            sync::{
                Arc,
                atomic::{AtomicBool, Ordering},
                mpsc,
            },
        };
        const REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: tracer\r\n\r\n";
        let stop = Arc::new(AtomicBool::new(false));
        let (opened, all_open) = mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let connect = || {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s)
            };
            // Each connection and how much of the request it has sent.
            let mut conns: Vec<Option<(TcpStream, usize)>> =
                (0..n).map(|_| connect().map(|s| (s, 0))).collect();
            let _ = opened.send(conns.iter().filter(|c| c.is_some()).count());
            let mut reopened = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                for (i, c) in conns.iter_mut().enumerate() {
                    let mut buf = [0u8; 1];
                    // Closed by serve: EOF or an error on a nonblocking peek.
                    let open = c.as_ref().is_some_and(|(s, _)| {
                        matches!(s.peek(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
                    });
                    if !open {
                        *c = connect().map(|s| (s, 0));
                        reopened += 1;
                    }
                    if i % 2 == 1
                        && let Some((s, sent)) = c
                        && *sent < REQUEST.len()
                        && s.write(&REQUEST[*sent..*sent + 1]).is_ok()
                    {
                        *sent += 1;
                    }
                }
            }
            reopened
        });
        let n_open = all_open.recv().expect("the holder thread ended");
        assert_eq!(n_open, n, "the holder opened {n_open} of {n} connections");
        Holder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Holder {
    /// Stops the holder; how many connections it opened again after serve closed them.
    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (self.thread.take())
            .map(|t| t.join().expect("the holder thread panicked"))
            .unwrap_or(0)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Raises this process's open-file limit to at least `n` (root may raise the hard
/// limit too), for a test that holds many sockets.
fn raise_open_files(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max = lim.rlim_max.max(n);
    lim.rlim_cur = lim.rlim_cur.max(n);
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn serve_answers_while_a_client_holds_a_thousand_idle_or_slow_connections() {
    require_root();
    let _s = serial();
    raise_open_files(4096);
    let tracer = Tracer::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "-i",
        "1s",
        "--detectors",
        "zombies",
    ]);
    let addr = tracer.served_at();
    assert_eq!(get(addr, "/-/ready").status, 200);
    // A thousand connections, over serve's cap of open ones: it keeps the ones that
    // arrived last and closes the idle rest; the holder opens them again each second.
    let holder = Holder::start(addr, 1000);
    // Each probe and scrape is answered (a connection closed without a response
    // panics in `get`), round after round while the holder reconnects.
    for round in 0..5 {
        for path in ["/-/healthy", "/-/ready", "/metrics"] {
            let r = get(addr, path);
            assert_eq!(r.status, 200, "{path}, round {round}: {}", r.body);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let m = get(addr, "/metrics").body;
    // Of the first thousand, all but the 128 kept were closed to make room.
    assert!(
        sample(&m, "tracer_serve_idle_connections_closed_total", &[])
            .is_some_and(|n| n >= 1000.0 - 128.0),
        "{m}"
    );
    assert_eq!(promtool_problems(&m), "", "{m}");
    let reopened = holder.stop();
    assert!(
        reopened >= 1,
        "serve closed none of the holder's connections"
    );
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    assert_none_loaded("zombies_");
}
