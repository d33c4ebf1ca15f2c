//! `tracer zombies` against real zombies made by the `incident` helper.
//!
//! Over 600 lines because each incident shape (non-reaping parent, prompt reaper, SIG_IGN,
//! threaded children, pre-existing zombies, the BTF fallback, doctor) is one test with its
//! own setup; splitting them would only scatter one detector's incidents over files.
use std::time::Duration;

use tracer::{
    doctor::Doctor,
    zombies::{ZombiesReport, rows::ParentRow},
};
use tracer_tests::{
    Envelope, Incident, TracefsWithout, Tracer, assert_none_loaded, matrix_kernel, require_root,
    run_tracer, run_tracer_env, run_tracer_without_tracepoints, serial, strict, zombie_children,
};

type Report = Envelope<ZombiesReport>;

fn parent(report: &Report, pid: u32) -> Option<&ParentRow> {
    report.parents.iter().find(|p| p.pid == pid)
}

/// Stuck zombies of `ppid` in a report's parents table (0 when not a finding).
fn stuck_under(report: &Report, ppid: u32) -> usize {
    parent(report, ppid).map_or(0, |p| p.zombies)
}

fn zombies_of(report: &Report, ppid: u32) -> Vec<u64> {
    let mut v: Vec<u64> = (report.zombies.iter())
        .filter(|z| z.ppid == ppid)
        .map(|z| u64::from(z.pid))
        .collect();
    v.sort();
    v
}

#[test]
fn non_reaping_parent_is_named_with_exact_zombie_count() {
    require_root();
    let _s = serial();
    let prom = std::env::temp_dir().join(format!("tracer-test-{}.prom", std::process::id()));
    let mut tracer = Tracer::start(&[
        "zombies",
        "--parent",
        "--json",
        "-i",
        "250ms",
        "--prom-file",
        prom.to_str().unwrap(),
    ]);
    let inc = Incident::start(&["zombies", "7"]);
    let expected: Vec<u64> = zombie_children(inc.pid)
        .into_iter()
        .map(u64::from)
        .collect();
    assert_eq!(expected.len(), 7, "the helper made 7 zombies");
    // Each exit and SIGCHLD happened before /proc showed the zombie (the helper waits
    // for that). A zombie is a finding once older than the stated threshold (5 s for
    // a parent never seen reaping): until then it is in flight.
    let r = tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        stuck_under(r, inc.pid) == 7
    });
    assert!(r.stuck_rule.starts_with("older than 5s"), "{r:?}");
    let out = tracer.interrupt();
    assert!(
        out.status.success(),
        "tracer failed after SIGINT: {}",
        out.stderr
    );
    let r = out.final_as::<ZombiesReport>();
    assert_eq!(r.header.command, "zombies");
    assert_eq!(r.header.lost_events, 0);
    let p = parent(&r, inc.pid).unwrap_or_else(|| panic!("parent {} not reported: {r:?}", inc.pid));
    assert_eq!(p.zombies, 7, "{p:?}");
    assert_eq!(p.in_flight, 0, "{p:?}");
    assert_eq!(p.stuck_after_s, 5.0, "{p:?}");
    assert_eq!(p.comm, "incident");
    assert_eq!(p.sigchld, "default");
    assert_eq!(p.reaped, 0);
    assert_eq!(
        p.wait_calls, 0,
        "the helper never waits while it holds zombies"
    );
    assert_eq!(p.sigchld_received, 7, "one SIGCHLD per exited child");
    assert!(p.cgroup.cgroup.starts_with('/'));
    assert!(p.cmdline.contains("incident zombies 7"));
    assert!(p.oldest_zombie_age_exact);
    assert_eq!(
        zombies_of(&r, inc.pid),
        expected,
        "each zombie's ppid is the parent"
    );
    assert!(r.pids.in_use.unwrap() > 0);
    assert!(r.pids.pid_max.unwrap() > 0);
    // The same finding, as node_exporter textfile metrics.
    let metrics = std::fs::read_to_string(&prom).expect("--prom-file written");
    let _ = std::fs::remove_file(&prom);
    let series = format!("pid=\"{}\"", inc.pid);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tracer_zombies_parent_zombies{")
                && l.contains(&series)
                && l.ends_with(" 7")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "tracer_report_final{detector=\"zombies\"} 1")
    );
    // The programs went away with the tracer.
    assert_none_loaded("zombies_");
    drop(inc);
    assert!(zombie_children(std::process::id()).is_empty());
}

/// The path that tells a whole-process exit from a thread's, on each kernel of the
/// matrix: 6.18 has sched_process_exit's `group_dead`; 6.1 and 6.12 do not, and the
/// tracer reads task->signal->live at offsets from the kernel's BTF.
fn expected_exit_path() -> &'static str {
    match matrix_kernel() {
        "host" => "sched_process_exit group_dead field",
        _ => "sched_process_exit + task->signal->live (kernel BTF; no group_dead field here)",
    }
}

#[test]
fn multithreaded_children_make_one_zombie_each_however_their_threads_exit() {
    require_root();
    let _s = serial();
    // Half the children exit_group() with all threads running (their threads can all
    // see the process dead at once), half end the main thread first.
    let mut inc = Incident::start(&["threaded", "8"]);
    let pid = inc.pid.to_string();
    let mut tracer = Tracer::start(&["zombies", "-p", &pid, "--json", "-i", "250ms"]);
    inc.send("go");
    inc.expect_line("done");
    let expected: Vec<u64> = zombie_children(inc.pid)
        .into_iter()
        .map(u64::from)
        .collect();
    assert_eq!(expected.len(), 8, "the helper made 8 zombies");
    tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        stuck_under(r, inc.pid) == 8
    });
    let r = tracer.interrupt().final_as::<ZombiesReport>();
    assert_eq!(r.path, expected_exit_path(), "{r:?}");
    assert_eq!(r.header.lost_events, 0);
    let p = parent(&r, inc.pid).unwrap_or_else(|| panic!("parent {} not reported: {r:?}", inc.pid));
    // 8 processes of 5 threads each: 40 thread exits, 8 process exits, each seen once.
    assert_eq!(p.zombies, 8, "{p:?}");
    assert!(p.oldest_zombie_age_exact, "every exit was seen: {p:?}");
    assert_eq!(zombies_of(&r, inc.pid), expected);
    for z in r.zombies.iter().filter(|z| z.ppid == inc.pid) {
        assert!(z.age_exact, "exit of {} seen: {z:?}", z.pid);
    }
    assert!(r.caveats.is_empty(), "no exit went unclassified: {r:?}");
}

#[test]
fn without_the_group_dead_field_the_btf_fallback_makes_the_same_count() {
    require_root();
    let _s = serial();
    // This kernel's sched_process_exit has `group_dead`: hide it, as older kernels
    // lack it. Debian's 6.1 and 6.12 lack it already.
    let view = TracefsWithout::new(&[]);
    let view = if matrix_kernel() == "host" {
        view.without_field("sched", "sched_process_exit", "group_dead")
    } else {
        view
    };
    let mut inc = Incident::start(&["threaded", "6"]);
    let pid = inc.pid.to_string();
    let mut tracer = Tracer::start_env(
        &["zombies", "-p", &pid, "--json", "-i", "250ms"],
        &view.env(),
    );
    inc.send("go");
    inc.expect_line("done");
    tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        stuck_under(r, inc.pid) == 6
    });
    let r = tracer.interrupt().final_as::<ZombiesReport>();
    assert_eq!(
        r.path, "sched_process_exit + task->signal->live (kernel BTF; no group_dead field here)",
        "{r:?}"
    );
    let p = parent(&r, inc.pid).unwrap_or_else(|| panic!("parent {} not reported: {r:?}", inc.pid));
    assert_eq!(p.zombies, 6, "{p:?}");
    assert!(p.oldest_zombie_age_exact, "every exit was seen: {p:?}");
    assert_eq!(zombies_of(&r, inc.pid).len(), 6);
    assert!(r.caveats.is_empty(), "{r:?}");
}

#[test]
fn prompt_reaper_is_not_flagged_and_its_reaps_are_timed() {
    require_root();
    let _s = serial();
    let mut inc = Incident::start(&["reaper", "25"]);
    let pid = inc.pid.to_string();
    let tracer = Tracer::start(&["zombies", "-p", &pid, "--json"]);
    inc.send("go");
    // wait4() returned each child before "done": its reap record is already queued.
    inc.expect_line("done");
    let r = tracer.interrupt().final_as::<ZombiesReport>();
    assert!(
        parent(&r, inc.pid).is_none(),
        "a parent that reaps must not be flagged: {r:?}"
    );
    assert!(zombies_of(&r, inc.pid).is_empty());
    assert_eq!(
        r.reap_latency_us.count, 25,
        "one reap latency per child: {r:?}"
    );
    assert!(r.reap_latency_us.max > 0);
    let reaper = &r.reapers[0];
    assert_eq!(reaper.pid, inc.pid);
    assert_eq!(reaper.reaped, 25);
}

#[test]
fn zombies_from_before_the_start_are_reported() {
    require_root();
    let _s = serial();
    let inc = Incident::start(&["zombies", "4"]);
    let mut tracer = Tracer::start(&["zombies", "--json", "-i", "250ms"]);
    // Their exit time is unknown: they count as stuck once seen for the threshold.
    let r = tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        stuck_under(r, inc.pid) == 4
    });
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    // Dated by the kernel, they are older than the tracer's run (stuck once 5 s old).
    let seen = parent(&r, inc.pid).unwrap();
    assert!(seen.oldest_zombie_age_s > r.header.elapsed_s, "{r:?}");
    let r = out.final_as::<ZombiesReport>();
    let p = parent(&r, inc.pid)
        .unwrap_or_else(|| panic!("pre-existing zombies' parent missing: {r:?}"));
    assert_eq!(p.zombies, 4);
    // Their exit was not seen: the kernel dates them (/proc/PID/sched, which every
    // kernel of the matrix has); zombie_ages.rs checks the ages.
    assert!(p.oldest_zombie_age_exact);
    assert_eq!(
        p.oldest_zombie_age_source,
        tracer::zombies::ages::AgeSource::ExitedAt
    );
    assert_eq!(zombies_of(&r, inc.pid).len(), 4);
}

#[test]
fn ignored_sigchld_leaves_no_zombies_and_shows_ignore() {
    require_root();
    let _s = serial();
    let mut inc = Incident::start(&["sigign", "6"]);
    let mut tracer = Tracer::start(&["zombies", "--json", "-i", "100ms"]);
    inc.send("go");
    inc.expect_line("done");
    // Autoreaped children are released at once but freed (their reap seen) only after
    // an RCU grace period: wait for the tracer to see all six, then stop it.
    let reaped = |r: &Report| {
        (r.reapers.iter())
            .find(|x| x.pid == inc.pid)
            .is_some_and(|x| x.reaped == 6)
    };
    tracer.report_as_where::<ZombiesReport>(Duration::from_secs(30), reaped);
    let r = tracer.interrupt().final_as::<ZombiesReport>();
    assert!(parent(&r, inc.pid).is_none(), "{r:?}");
    assert!(zombies_of(&r, inc.pid).is_empty());
    let reaper = (r.reapers.iter())
        .find(|x| x.pid == inc.pid)
        .unwrap_or_else(|| panic!("autoreaped children not counted: {r:?}"));
    assert_eq!(reaper.reaped, 6);
    assert_eq!(reaper.sigchld, "ignore");
}

#[test]
fn bad_input_gets_one_clear_sentence_and_nonzero_exit() {
    require_root();
    let _s = serial();
    let out = run_tracer(&["zombies", "-p", "4194304"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("no process with pid 4194304"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one sentence: {}",
        out.stderr
    );

    // -d, unknown flags, privileges: tests/contract.rs, for every detector.
}

#[test]
fn doctor_reports_every_detector_runnable_and_the_paths_of_this_kernel() {
    require_root();
    let out = run_tracer(&["doctor", "--json"]);
    assert!(
        out.status.success(),
        "doctor: {}\n{}",
        out.stdout,
        out.stderr
    );
    let r: Doctor = strict(&serde_json::from_str(out.stdout.trim()).expect("doctor JSON"));
    assert!(r.all_runnable, "{r:?}");
    // This machine's kernel has neither kprobes nor BPF trampolines; Debian's have both.
    let fast = matrix_kernel() != "host";
    assert_eq!(r.kprobes, fast, "{r:?}");
    assert_eq!(r.fentry.available, fast, "{r:?}");
    assert!(r.btf);
    for d in &r.detectors {
        assert!(d.runnable, "{d:?}");
    }
    let zombies = (r.detectors.iter())
        .find(|d| d.detector == "zombies")
        .unwrap_or_else(|| panic!("doctor lists no zombies detector: {r:?}"));
    assert_eq!(
        zombies.path.as_deref(),
        Some(expected_exit_path()),
        "{zombies:?}"
    );
    let text = run_tracer(&["doctor"]);
    let (kprobes, fentry) = if fast {
        ("kprobes     yes", "fentry      yes")
    } else {
        ("kprobes     no", "fentry      no")
    };
    assert!(
        text.stdout.contains(kprobes) && text.stdout.contains(fentry),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains(&format!(
            "zombies       can run (path: {})",
            expected_exit_path()
        )),
        "{}",
        text.stdout
    );
    // Before any ext4 file system is mounted, Debian's ext4 module (and its tracepoints)
    // is not loaded: every detector still runs, inodes on its named fallback.
    let no_ext4 = TracefsWithout::new(&["ext4"]);
    let out = run_tracer_env(&["doctor"], &no_ext4.env());
    assert_eq!(out.status.code(), Some(0), "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("inodes        can run")
                && l.contains("without ext4:ext4_allocate_inode")
                && l.contains("ext4 module not loaded")),
        "{}",
        out.stdout
    );
}

#[test]
fn doctor_on_a_kernel_without_the_tracepoints_says_cannot_run() {
    require_root();
    // An empty tracefs: doctor says the detector cannot run and exits non-zero (the
    // detector's own one-sentence refusal is in tests/contract.rs).
    let out = run_tracer_without_tracepoints(&["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.contains("MISSING") && out.stdout.contains("CANNOT RUN"),
        "{}",
        out.stdout
    );
}

/// Shell processes the test started; killed and reaped if the test fails.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn young_zombies_are_in_flight_not_findings_in_text_json_and_metrics() {
    require_root();
    let _s = serial();
    let prom = std::env::temp_dir().join(format!("tracer-inflight-{}.prom", std::process::id()));
    let mut tracer = Tracer::start(&[
        "zombies",
        "--json",
        "-i",
        "200ms",
        "--stuck-after",
        "10m",
        "--prom-file",
        prom.to_str().unwrap(),
    ]);
    let inc = Incident::start(&["zombies", "5"]);
    let r = tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        zombies_of(r, inc.pid).len() == 5
    });
    assert!(
        parent(&r, inc.pid).is_none(),
        "younger than 10m: not a finding: {r:?}"
    );
    assert_eq!(r.stuck_rule, "older than 10m (--stuck-after)");
    let mut ours = r.zombies.iter().filter(|z| z.ppid == inc.pid);
    assert!(ours.all(|z| !z.stuck), "{r:?}");
    assert!(r.zombies_in_flight >= 5, "{r:?}");
    assert!(
        (r.hints.iter()).all(|h| !h.contains(&format!("{} (", inc.pid))),
        "{r:?}"
    );
    let out = tracer.interrupt();
    let f = out.final_as::<ZombiesReport>();
    // The prom file holds the final report: the same split.
    let metrics = std::fs::read_to_string(&prom).expect("--prom-file written");
    let _ = std::fs::remove_file(&prom);
    for (n, metric) in [
        (f.zombies_stuck, "tracer_zombies_stuck"),
        (f.zombies_in_flight, "tracer_zombies_in_flight"),
    ] {
        let line = format!("{metric} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let series = format!("pid=\"{}\"", inc.pid);
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("tracer_zombies_parent_") && l.contains(&series)),
        "{metrics}"
    );

    // Text: a short run sees them (from before its start, dated by the kernel: in
    // flight under the same 10 m rule, however slow the machine) and says none is stuck.
    let pid = inc.pid.to_string();
    let out = run_tracer(&["zombies", "-d", "1s", "-p", &pid, "--stuck-after", "10m"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("zombies now: 0 stuck under 0 parent(s), oldest -; 5 in flight")
            && out
                .stdout
                .contains("none: no zombie outlived its parent's normal reap delay")
            && out.stdout.contains("in flight")
            && !out.stdout.contains("hint:"),
        "{}",
        out.stdout
    );
}

#[test]
fn steady_leak_forecasts_pid_exhaustion_only_while_it_grows() {
    require_root();
    let _s = serial();
    // 40 children, one every 150 ms: about 6 s of steady leaking.
    let mut inc = Incident::start(&["leak", "40", "150"]);
    let pid = inc.pid.to_string();
    let mut tracer = Tracer::start(&[
        "zombies",
        "-p",
        &pid,
        "--json",
        "-i",
        "250ms",
        "--trend-span",
        "3s",
        "--stuck-after",
        "500ms",
    ]);
    // Before the leak, a full window with no growth: no forecast, and the reason.
    // (The state, not span_s: that is rounded, and 2.9996 s shows as 3.0.)
    let r = tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        r.trend.state != "too_few_samples"
    });
    assert_eq!(r.trend.state, "no_sustained_growth", "{r:?}");
    assert_eq!(r.pids.exhaustion_eta_s, None, "{r:?}");
    inc.send("go");
    let r = tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| r.trend.growing);
    let growth = r.zombie_growth_per_s.unwrap();
    // One zombie per 150 ms is 6.7/s; the fit over a 3 s window stays near it.
    assert!((2.0..=12.0).contains(&growth), "{r:?}");
    let eta = (r.pids.exhaustion_eta_s).unwrap_or_else(|| panic!("no ETA: {r:?}"));
    let p = &r.pids;
    let limit = p.pid_max.unwrap().min(p.threads_max.unwrap()) as f64;
    let headroom = limit - p.in_use.unwrap() as f64;
    assert!(
        (eta * growth - headroom).abs() <= headroom * 0.01 + 1.0,
        "{r:?}"
    );
    assert!(r.trend.samples >= 10, "{r:?}");
    assert_eq!(r.trend.rate_per_s, r.zombie_growth_per_s, "{r:?}");
    inc.expect_line("done");
    // Once the leak stops, the count is flat: the forecast goes away.
    let r = tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        stuck_under(r, inc.pid) == 40 && !r.trend.growing
    });
    assert_eq!(r.pids.exhaustion_eta_s, None, "{r:?}");
    let f = tracer.interrupt().final_as::<ZombiesReport>();
    assert_eq!(parent(&f, inc.pid).unwrap().zombies, 40, "{f:?}");
}

#[test]
fn healthy_busy_shells_and_a_forking_service_are_not_findings() {
    require_root();
    let _s = serial();
    let prom = std::env::temp_dir().join(format!("tracer-healthy-{}.prom", std::process::id()));
    let mut tracer = Tracer::start(&[
        "zombies",
        "--parent",
        "--json",
        "-i",
        "500ms",
        "--trend-span",
        "3s",
        "--prom-file",
        prom.to_str().unwrap(),
    ]);
    // Two shells running short commands (every tenth an exec'd /bin/true, the others
    // subshells: fork, exit, reap, cheap enough for a TCG guest), and a service
    // forking and reaping workers.
    const RUNS: u64 = 1500;
    let script = format!(
        "i=0; while [ $i -lt {RUNS} ]; do if [ $((i % 10)) -eq 0 ]; then /bin/true; else ( : ); fi; i=$((i+1)); done"
    );
    let mut shells = Children(
        (0..2)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", &script])
                    .spawn()
                    .expect("sh")
            })
            .collect(),
    );
    let shell_pids: Vec<u32> = shells.0.iter().map(|c| c.id()).collect();
    // The service reaps as it goes: forking all 300 first, then waiting, left the
    // first ones unreaped for over 5 s in a starved TCG guest (a parent that has not
    // reaped for 5 s is stuck by the rule; `reaper` tests that parent elsewhere).
    let mut svc = Incident::start(&["service", "300"]);
    svc.send("go");
    svc.expect_line("done");
    for c in &mut shells.0 {
        assert!(c.wait().expect("sh").success());
    }
    // Reports until a full trend window after the workload ended.
    let end = (tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |_| true))
        .header
        .elapsed_s;
    tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        r.header.elapsed_s >= end + 3.5
    });
    let out = tracer.interrupt();
    let reports = out.reports_as::<ZombiesReport>();
    let ours: Vec<u32> = shell_pids.iter().copied().chain([svc.pid]).collect();
    for r in &reports {
        for &p in &ours {
            assert!(parent(r, p).is_none(), "{p} reaps: not a finding: {r:?}");
            assert!(r.zombies.iter().all(|z| z.ppid != p || !z.stuck), "{r:?}");
        }
        assert_eq!(r.pids.exhaustion_eta_s, None, "no forecast: {r:?}");
        assert!(!r.trend.growing, "{r:?}");
    }
    // The workload was there and seen: every command reaped by its shell, every worker
    // by the service, and the window was evaluated.
    let f = out.final_as::<ZombiesReport>();
    assert!(f.trend.span_s >= 3.0, "{f:?}");
    assert!(f.forks >= 2 * RUNS + 300, "{f:?}");
    let reaped = |pid: u32| f.reapers.iter().find(|x| x.pid == pid).map(|x| x.reaped);
    for &p in &shell_pids {
        assert_eq!(reaped(p), Some(RUNS), "shell {p}: {f:?}");
    }
    assert_eq!(reaped(svc.pid), Some(300), "{f:?}");
    let metrics = std::fs::read_to_string(&prom).expect("--prom-file written");
    let _ = std::fs::remove_file(&prom);
    assert!(
        !metrics.contains("tracer_zombies_pid_exhaustion_eta_seconds"),
        "{metrics}"
    );
    for &p in &ours {
        let series = format!("pid=\"{p}\"");
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("tracer_zombies_parent_") && l.contains(&series)),
            "{metrics}"
        );
    }
}
