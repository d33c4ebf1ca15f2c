//! `tracer triage` against conditions the tests cause for real: a parent holding
//! zombies, a loop-mounted ext4 out of inodes, a CPU burner per core, an OOM-like
//! kernel log line; plus a quiet run and an unprivileged one. Other tests may run on
//! the machine at the same time, so each asserts on the rows its own incident made
//! (its parent pid, its mount point, its tagged log line). Reports are read strictly
//! as `tracer::triage::TriageReport`, so a renamed or dropped field fails here.
//!
//! Over 600 lines because the healthy-busy-host load generator (Busy) and the checks
//! that it raises no finding live beside the incident tests they must not contradict.
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tracer::{
    snapshot::Level,
    triage::{Finding, TriageReport},
};
use tracer_tests::{
    Envelope, Finished, Incident, LoopExt4, Tracer, assert_none_loaded, require_root, run_tracer,
    run_tracer_unprivileged, serial,
};

/// A triage report as its JSON line reads back, strictly.
type Report = Envelope<TriageReport>;

/// The report as its JSON, for failure messages.
fn show(r: &Report) -> String {
    serde_json::to_string(r).expect("a typed report serializes")
}

/// The rows of `resource`/`check`, optionally about `subject`.
fn rows<'a>(r: &'a Report, resource: &str, check: &str, subject: Option<&str>) -> Vec<&'a Finding> {
    r.findings
        .iter()
        .filter(|f| f.resource == resource && f.check == check)
        .filter(|f| subject.is_none_or(|s| f.subject.as_deref() == Some(s)))
        .collect()
}

/// Checks the exit status against the report's worst row (0 ok, 3 warn, 4 crit).
fn exit_matches_report(out: &Finished, r: &Report) -> i32 {
    let worst = r
        .findings
        .iter()
        .map(|f| f.level)
        .max()
        .unwrap_or(Level::Ok);
    let expected = match worst {
        Level::Ok => 0,
        Level::Warn => 3,
        Level::Crit => 4,
    };
    let code = out.status.code().expect("exit code");
    assert_eq!(
        code, expected,
        "exit status vs worst row; stderr: {}",
        out.stderr
    );
    assert_eq!(i32::from(r.exit_code), expected);
    code
}

fn triage(args: &[&str]) -> (Finished, Report) {
    let mut all = vec!["triage", "--json"];
    all.extend_from_slice(args);
    let out = run_tracer(&all);
    let r = out.final_as::<TriageReport>();
    assert_eq!(r.header.command, "triage");
    (out, r)
}

#[test]
fn parent_holding_zombies_is_named_in_the_pids_row() {
    require_root();
    let _s = serial();
    let inc = Incident::start(&["zombies", "8"]);
    let prom = PromFile::new();
    // A zombie is stuck only when it outlives a window of at least 5 s.
    let (out, r) = triage(&["-d", "5s", "--prom-file", prom.0.to_str().unwrap()]);
    let pid = inc.pid.to_string();
    let row = rows(&r, "pids", "zombies", Some(&pid));
    assert_eq!(
        row.len(),
        1,
        "no zombies row for parent {pid}: {}",
        show(&r)
    );
    let row = row[0];
    assert_eq!(row.level, Level::Warn, "{row:?}");
    assert!(
        row.value
            .starts_with(&format!("8 zombie(s) under {pid} (incident) through the ")),
        "{row:?}"
    );
    assert_eq!(
        row.next.as_deref(),
        Some(format!("tracer zombies --parent -p {pid}").as_str()),
        "{row:?}"
    );
    let parent = (r.leaks.pids.zombie_parents.iter())
        .find(|p| p.ppid == inc.pid)
        .unwrap_or_else(|| panic!("parent missing from pids.zombie_parents: {}", show(&r)));
    assert_eq!(parent.zombies, 8);
    assert_eq!(parent.stuck, 8);
    assert!(exit_matches_report(&out, &r) >= 3);
    // Over a 1 s window the same zombies are judged too: the kernel dates them older
    // than 5 s by now (/proc/PID/sched), so the window need not prove it.
    let (_, r) = triage(&["-d", "1s"]);
    let row = rows(&r, "pids", "zombies", Some(&pid));
    assert_eq!(row[0].level, Level::Warn, "{row:?}");
    assert!(row[0].value.contains("dated by the kernel"), "{row:?}");
    assert!(out.stdout.lines().count() == 1, "one JSON object");
    // The same row as a Prometheus gauge: severity 1 (warn), labelled by parent.
    let text = fs::read_to_string(&prom.0).expect("the --prom-file was written");
    let series = text
        .lines()
        .find(|l| {
            l.starts_with("tracer_triage_finding_severity{")
                && l.contains("resource=\"pids\"")
                && l.contains(&format!("subject=\"{pid}\""))
        })
        .unwrap_or_else(|| panic!("no severity series for parent {pid}:\n{text}"));
    assert!(series.ends_with(" 1"), "{series}");
    // And the whole file is clean by promtool's rules.
    assert_eq!(tracer_tests::http::promtool_problems(&text), "", "{text}");
}

/// A --prom-file path in the temp dir, removed on drop.
struct PromFile(PathBuf);

impl PromFile {
    fn new() -> PromFile {
        PromFile(std::env::temp_dir().join(format!("tracer-triage-{}.prom", std::process::id())))
    }
}

impl Drop for PromFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A loop-mounted ext4 with 128 inodes, filled until ENOSPC; unmounted and removed
/// on drop.
fn full_ext4() -> LoopExt4 {
    let fs = LoopExt4::new(64, 128);
    let mut made = 0;
    loop {
        match fs::File::create(fs.mnt.join(format!("f{made}"))) {
            Ok(_) => made += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("creating file {made}: {e}"),
        }
        assert!(made < 10_000, "the filesystem never ran out of inodes");
    }
    fs
}

#[test]
fn ext4_out_of_inodes_is_crit_for_that_mount() {
    require_root();
    let _s = serial();
    let fs = full_ext4();
    let mount = fs.mnt().to_string();
    let (out, r) = triage(&["-d", "1s"]);
    let row = rows(&r, "inodes", "inode usage", Some(&mount));
    assert_eq!(row.len(), 1, "no inodes row for {mount}: {}", show(&r));
    let row = row[0];
    assert_eq!(row.level, Level::Crit, "{row:?}");
    assert!(row.value.starts_with("100% of inodes used"), "{row:?}");
    assert!(row.value.contains("inodes full, blocks free"), "{row:?}");
    assert!(
        (row.next.as_deref().expect("a next step"))
            .starts_with(&format!("tracer inodes --fs {mount} ")),
        "{row:?}"
    );
    let listed = (r.leaks.filesystems.iter().flatten())
        .find(|f| f.mount == Path::new(&mount))
        .unwrap_or_else(|| panic!("{mount} missing from filesystems: {}", show(&r)));
    assert!(listed.inodes_full_blocks_free, "{listed:?}");
    assert_eq!(exit_matches_report(&out, &r), 4);
    drop(fs);
    assert!(
        !Path::new(&mount).exists(),
        "the test mount point is cleaned up"
    );
}

/// Busy-looping children, killed and reaped on drop (only the pids spawned here).
struct Burners(Vec<Child>);

impl Burners {
    fn per_core() -> Burners {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Burners((0..n).map(|_| burner(None)).collect())
    }

    /// `n` burners that may only run on `cpu` (sched_setaffinity in the child).
    fn pinned(n: usize, cpu: usize) -> Burners {
        Burners((0..n).map(|_| burner(Some(cpu))).collect())
    }

    /// Waits until every burner has run its loop for at least a clock tick (user time
    /// in /proc), so the window that follows sees them all burning.
    fn running(self) -> Burners {
        let deadline = Instant::now() + Duration::from_secs(30);
        let utime = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split(' ').nth(11)?.parse::<u64>().ok()
                })
                .unwrap_or(0)
        };
        while !self.0.iter().all(|c| utime(c.id()) > 0) {
            assert!(
                Instant::now() < deadline,
                "the CPU burners did not start running within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self
    }
}

fn burner(cpu: Option<usize>) -> Child {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "while :; do :; done"]).stdin(Stdio::null());
    if let Some(cpu) = cpu {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().expect("spawning a CPU burner")
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_cpu_burner_per_core_makes_cpu_saturation_at_least_warn() {
    require_root();
    let _s = serial();
    let burners = Burners::per_core().running();
    let (out, r) = triage(&["-d", "2s"]);
    let pids: Vec<u32> = burners.0.iter().map(|c| c.id()).collect();
    drop(burners);
    let sat = rows(&r, "cpu", "saturation", None);
    assert_eq!(sat.len(), 1, "{}", show(&r));
    assert!(
        sat[0].level >= Level::Warn,
        "a burner per core must saturate the CPUs: {:?}",
        sat[0]
    );
    assert!(sat[0].next.is_some());
    let runnable = r.cpu.runnable.as_ref().expect("runnable tasks sampled");
    assert!(runnable.per_cpu >= 1.0, "{runnable:?}");
    let util = rows(&r, "cpu", "utilization", None);
    assert!(util[0].level >= Level::Warn, "{:?}", util[0]);
    // The burners are the top CPU users, each near one full CPU.
    let top = r.cpu.top_processes.as_ref().expect("top_processes");
    let burning: Vec<_> = top.iter().filter(|p| pids.contains(&p.pid)).collect();
    assert_eq!(
        burning.len(),
        pids.len(),
        "burners in top_processes: {top:?}"
    );
    for p in burning {
        assert!(p.cpu_pct >= 30.0, "{p:?}");
    }
    // The run-queue histogram saw the burners wait for each other.
    let rq = r.runqueue_latency_us.as_ref().expect("run-queue latency");
    assert!(rq.count > 0);
    exit_matches_report(&out, &r);
}

#[test]
fn two_burners_sharing_one_cpu_wait_for_each_other_in_the_runqueue_histogram() {
    require_root();
    let _s = serial();
    // Two CPU-bound tasks on one CPU take turns: each waits on the run queue for the
    // other's whole time slice (milliseconds), after every preemption.
    let burners = Burners::pinned(2, 0).running();
    let (out, r) = triage(&["-d", "1s"]);
    drop(burners);
    let rq = r.runqueue_latency_us.as_ref().expect("run-queue latency");
    assert!(rq.count > 0, "{rq:?}");
    assert!(
        rq.max >= 1000,
        "a task preempted by an equal CPU hog waits at least a slice: {rq:?}"
    );
    assert!(rq.p50 <= rq.p99);
    assert!(rq.p99 <= rq.max);
    assert_eq!(rq.resolution, "log2 bucket upper bound");
    assert_eq!(
        rows(&r, "cpu", "run-queue latency", None).len(),
        1,
        "a run-queue latency row: {}",
        show(&r)
    );
    assert_eq!(r.header.lost_events, 0);
    exit_matches_report(&out, &r);
}

#[test]
fn an_oom_line_in_the_kernel_log_makes_the_kernel_row_crit() {
    require_root();
    let _s = serial();
    // A tag no other line can carry; the line stays in the kernel log after the test
    // (which is why the quiet test only looks at lines from its own window).
    let tag = format!(
        "tracer-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let line = format!("Out of memory: Killed process 4194304 ({tag}) by the triage test");
    let mut kmsg = fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .expect("opening /dev/kmsg");
    writeln!(kmsg, "<3>{line}").expect("writing to /dev/kmsg");
    drop(kmsg);
    let (out, r) = triage(&["-d", "1s", "--since", "1m"]);
    let row = rows(&r, "kernel", "OOM kills", None);
    assert_eq!(row.len(), 1, "{}", show(&r));
    let row = row[0];
    assert_eq!(row.level, Level::Crit, "{row:?}");
    assert!(row.value.contains(&line), "latest line: {row:?}");
    let entry = (r.kernel_log.iter().flatten())
        .find(|e| e.check == "OOM kills")
        .unwrap();
    assert_eq!(entry.latest, line);
    assert!(entry.count >= 1);
    assert!(entry.latest_age_s < 60.0);
    assert_eq!(exit_matches_report(&out, &r), 4);
}

#[test]
fn quiet_machine_has_no_crit_rows_and_reports_within_the_window() {
    require_root();
    let _s = serial();
    let window = 2.0;
    // Kernel log lines from before this run (e.g. the OOM test's) are not this
    // machine's present state: look back only over the window.
    let (out, r) = triage(&["-d", "2s", "--since", "2s"]);
    let crit: Vec<&Finding> = (r.findings.iter())
        .filter(|f| f.level == Level::Crit)
        .collect();
    assert!(crit.is_empty(), "crit rows on a quiet machine: {crit:?}");
    // The rates cover the window asked for, not the load before it or the detach after
    // (wall time is not asserted: loading under TCG emulation alone takes seconds).
    let measured = r.measured_s;
    assert!(
        (window..window + 1.0).contains(&measured),
        "triage -d 2s measured {measured}s"
    );
    assert_eq!(r.window_s, window);
    assert_eq!(r.header.lost_events, 0);
    assert!(r.header.final_);
    // Every resource of the checklist has a row, in the checklist's order.
    let order = [
        "cpu", "kernel", "cpu", "memory", "disk", "network", "pids", "cgroups", "inodes", "tcp_mem",
    ];
    let resources: Vec<&str> = r.findings.iter().map(|f| &*f.resource).collect();
    assert_eq!(r.findings[0].check, "load average");
    let mut at = 0;
    for res in resources.iter() {
        while at < order.len() && order[at] != *res {
            at += 1;
        }
        assert!(
            at < order.len(),
            "row {res} out of checklist order: {resources:?}"
        );
    }
    for want in [
        "cpu", "kernel", "memory", "disk", "network", "pids", "cgroups", "inodes", "tcp_mem",
    ] {
        assert!(resources.contains(&want), "no {want} row: {resources:?}");
    }
    // check, value, threshold and level are fields of every row: the strict read
    // fails on a row without one.
    for f in &r.findings {
        assert_eq!(f.next.is_some(), f.level != Level::Ok, "{f:?}");
    }
    let rq = r.runqueue_latency_us.as_ref().expect("run-queue latency");
    assert!(rq.count > 0, "{rq:?}");
    assert!(rq.p50 <= rq.p99);
    assert!(rq.p99 <= rq.max);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    exit_matches_report(&out, &r);
    assert_none_loaded("triage_");
}

#[test]
fn ctrl_c_ends_the_window_early_with_a_full_report() {
    require_root();
    let _s = serial();
    let tracer = Tracer::start(&["triage", "-d", "60s", "--json"]);
    std::thread::sleep(Duration::from_millis(1500));
    let out = tracer.interrupt();
    let r = out.final_as::<TriageReport>();
    let measured = r.measured_s;
    assert!(
        (1.0..30.0).contains(&measured),
        "the window ends at Ctrl-C: measured {measured}s"
    );
    assert_eq!(r.window_s, 60.0);
    assert!(
        r.runqueue_latency_us
            .as_ref()
            .expect("run-queue latency")
            .count
            > 0
    );
    assert!(
        !rows(&r, "cpu", "utilization", None).is_empty(),
        "{}",
        show(&r)
    );
    exit_matches_report(&out, &r);
    assert_none_loaded("triage_");
}

#[test]
fn text_report_has_the_table_next_steps_and_histogram() {
    require_root();
    let _s = serial();
    let inc = Incident::start(&["zombies", "6"]);
    // Zombies count once present through a window of at least 5 s.
    let out = run_tracer(&["triage", "-d", "5s"]);
    let code = out.status.code().unwrap();
    assert!(code == 3 || code == 4, "a warn row exits 3 or 4: {code}");
    let s = &out.stdout;
    assert!(s.contains("LEVEL  RESOURCE  CHECK"), "{s}");
    assert!(s.contains("NEXT STEPS"), "{s}");
    assert!(
        s.contains(&format!(
            "pids zombies ({}): tracer zombies --parent -p {}",
            inc.pid, inc.pid
        )),
        "{s}"
    );
    assert!(s.contains("RUN-QUEUE LATENCY"), "{s}");
    assert!(s.contains("usecs : count"), "{s}");
    assert!(s.contains("lost events: 0"), "{s}");
    // --fail-on never: same report, exit 0.
    let out = run_tracer(&["triage", "-d", "1s", "--fail-on", "never"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("6 zombie(s) under {}", inc.pid))
    );
}

#[test]
fn unprivileged_run_gives_the_proc_rows_and_skips_ebpf() {
    require_root();
    let _s = serial();
    let out = run_tracer_unprivileged(&["triage", "-d", "1s", "--json", "--fail-on", "never"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    let r = out.final_as::<TriageReport>();
    for want in [
        "cpu", "memory", "disk", "network", "pids", "inodes", "tcp_mem",
    ] {
        assert!(
            r.findings.iter().any(|f| f.resource == want),
            "no {want} row without root: {}",
            show(&r)
        );
    }
    assert!(r.runqueue_latency_us.is_none());
    assert!(rows(&r, "cpu", "run-queue latency", None).is_empty());
    let skipped = &r.skipped;
    let ebpf = (skipped.iter())
        .find(|s| s.part == "run-queue latency (eBPF)")
        .unwrap_or_else(|| panic!("eBPF part not marked skipped: {skipped:?}"));
    assert!(ebpf.reason.contains("CAP_BPF"), "{ebpf:?}");
    assert!(
        out.stderr.contains("run-queue latency: skipped"),
        "{}",
        out.stderr
    );
    // Without --fail-on the status is the verdict (0/3/4), never an error.
    let out = run_tracer_unprivileged(&["triage", "-d", "1s", "--json"]);
    let r = out.final_as::<TriageReport>();
    exit_matches_report(&out, &r);
    assert!(!out.stderr.contains("tracer:"), "{}", out.stderr);
}

#[test]
fn bad_input_is_one_sentence_and_a_usage_error() {
    for args in [
        &["triage", "--fail-on", "sometimes"][..],
        &["triage", "-d", "soon"],
        &["triage", "--since", "0s"],
    ] {
        let out = run_tracer(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }
    let out = run_tracer(&[
        "triage",
        "-d",
        "1s",
        "--prom-file",
        "/nonexistent-dir/triage.prom",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("tracer: the directory of --prom-file"),
        "fails before the window, in one sentence: {}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    let help = run_tracer(&["triage", "--help"]);
    assert!(help.stdout.contains("Exit status:"), "{}", help.stdout);
    assert!(help.stdout.contains("4  at least one row is crit"));
}

/// A healthy, busy host, caused for real: two shells running batches of 10 short
/// commands, a loopback TCP transfer in 1 MiB chunks, and file writes with fsync, each
/// working a quarter of the time (it sleeps three times as long as its last piece of
/// work took, so the load follows the machine's speed, TCG guests included): busy, with
/// CPU headroom. Stopped and joined on drop (the temp file removed).
struct Busy {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// (start, end) of every finished shell batch.
    batches: std::sync::Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>,
    /// (start, end) of every 1 MiB chunk sent and read back on loopback.
    chunks: std::sync::Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    file: PathBuf,
}

const BATCH: u64 = 10;
const CHUNK: u64 = 1 << 20;

impl Busy {
    fn start() -> Busy {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let stop = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let chunks = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let file = std::env::temp_dir().join(format!("tracer-healthy-{}", std::process::id()));
        let mut threads = Vec::new();
        // Works, then rests three times as long as the work took.
        fn paced(
            stop: Arc<AtomicBool>,
            mut work: impl FnMut() + Send + 'static,
        ) -> std::thread::JoinHandle<()> {
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let t = Instant::now();
                    work();
                    std::thread::sleep(t.elapsed() * 3);
                }
            })
        }
        let script = format!("i=0; while [ $i -lt {BATCH} ]; do /bin/true; i=$((i+1)); done");
        for _ in 0..2 {
            let (b, script) = (batches.clone(), script.clone());
            threads.push(paced(stop.clone(), move || {
                let t = Instant::now();
                let st = Command::new("sh")
                    .args(["-c", &script])
                    .status()
                    .expect("running a shell batch");
                assert!(st.success(), "shell batch: {st}");
                b.lock().unwrap().push((t, Instant::now()));
            }));
        }
        {
            use std::io::Read as _;
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).expect("connect");
            let (mut s, _) = l.accept().expect("accept");
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            // The reader reads every chunk as it arrives and says so.
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            got += n as u64;
                            while got >= CHUNK {
                                got -= CHUNK;
                                if tx.send(()).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }));
            let ch = chunks.clone();
            let data = vec![0x5au8; CHUNK as usize];
            threads.push(paced(stop.clone(), move || {
                let t = Instant::now();
                c.write_all(&data).expect("loopback send");
                rx.recv().expect("the reader read the chunk");
                ch.lock().unwrap().push((t, Instant::now()));
            }));
        }
        {
            let (w, path) = (written.clone(), file.clone());
            let data = vec![0xa5u8; 4 << 20];
            threads.push(paced(stop.clone(), move || {
                let mut f = fs::File::create(&path).expect("creating the write file");
                f.write_all(&data).expect("writing");
                f.sync_all().expect("fsync");
                w.fetch_add(data.len() as u64, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        Busy {
            stop,
            threads,
            batches,
            chunks,
            written,
            file,
        }
    }

    fn commands(&self) -> u64 {
        self.batches.lock().unwrap().len() as u64 * BATCH
    }

    /// Shell batches and loopback chunks that started and ended within [from, to].
    fn within(&self, from: Instant, to: Instant) -> (u64, u64) {
        let n = |v: &Vec<(Instant, Instant)>| {
            v.iter().filter(|(a, b)| *a >= from && *b <= to).count() as u64
        };
        (
            n(&self.batches.lock().unwrap()),
            n(&self.chunks.lock().unwrap()),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // The loopback writer's last chunk is read by the reader, which then sees EOF
        // when the writer's thread ends and drops the connection.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.file);
    }
}

#[test]
fn healthy_busy_host_has_no_finding() {
    require_root();
    let _s = serial();
    let test_start = Instant::now();
    let busy = Busy::start();
    // Running: every kind of work has finished at least once, the shells 4 batches.
    let deadline = Instant::now() + Duration::from_secs(120);
    while busy.commands() < 4 * BATCH
        || busy.chunks.lock().unwrap().is_empty()
        || busy.written.load(std::sync::atomic::Ordering::SeqCst) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the workload did not get going in 120 s: {} commands, {} loopback chunks, {} bytes written, {} of {} workers ended",
            busy.commands(),
            busy.chunks.lock().unwrap().len(),
            busy.written.load(std::sync::atomic::Ordering::SeqCst),
            busy.threads.iter().filter(|t| t.is_finished()).count(),
            busy.threads.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "workload running after {:.1}s: {} commands, {} loopback chunks, {} bytes written",
        test_start.elapsed().as_secs_f64(),
        busy.commands(),
        busy.chunks.lock().unwrap().len(),
        busy.written.load(std::sync::atomic::Ordering::SeqCst)
    );
    // A window long enough for about a thousand commands at the pace seen so far, 4 to
    // 60 s (fork and exec are slow in a TCG guest: 2 commands a second were seen on
    // 6.1, against hundreds here).
    let rate = busy.commands() as f64 / test_start.elapsed().as_secs_f64();
    let window = (1000.0 / rate).ceil().clamp(4.0, 60.0);
    // Kernel log lines from before this test (other tests' OOM and TCP lines) are not
    // this workload's: look back over this test only (the report comes after at least
    // the time so far plus the window).
    let since = format!(
        "{:.0}s",
        test_start.elapsed().as_secs_f64().floor() + window
    );
    let spawned = Instant::now();
    let tracer = Tracer::start(&[
        "triage",
        "--json",
        "-d",
        &format!("{window}s"),
        "--since",
        &since,
    ]);
    let tracer_pid = tracer.pid() as u64;
    let from = Instant::now();
    let out = tracer.wait();
    let r = out.final_as::<TriageReport>();
    let measured = r.measured_s;
    // The window began after `spawned` and lasted `measured`: it covers [from, this].
    let to = spawned + Duration::from_secs_f64(measured);
    let (batches, chunks) = busy.within(from, to.min(Instant::now()));
    let commands = busy.commands();
    drop(busy);

    // The workload happened and the tracer saw it: each command of a batch wakes its
    // shell (a run-queue wait counted), each 64 KiB at most is a TCP segment sent.
    assert!(
        batches >= 2,
        "only {batches} shell batches within the {window} s window ({commands} commands in all)"
    );
    eprintln!(
        "{commands} short commands in all, {} in {batches} batches within the {window} s window, {chunks} MiB over loopback in it",
        batches * BATCH
    );
    let rq = r.runqueue_latency_us.as_ref().expect("run-queue latency");
    assert!(
        rq.count >= batches * BATCH,
        "{rq:?} run-queue waits for {} commands in the window: {}",
        batches * BATCH,
        show(&r)
    );
    assert!(chunks >= 1, "no loopback chunk within the window");
    let tcp = r.network.tcp.as_ref().expect("tcp counters");
    assert!(
        tcp.out_segs >= chunks * (CHUNK / 65536),
        "{tcp:?} segments for {chunks} MiB: {}",
        show(&r)
    );
    assert_eq!(r.header.lost_events, 0);

    // Other tests or builds sharing this host (named in top_processes) load its CPUs
    // and disks: then, and only then, cpu and disk rows may be non-ok. In CI nothing
    // else runs and every row must be ok.
    let foreign: f64 = (r.cpu.top_processes.as_ref().expect("top_processes").iter())
        .filter(|p| {
            let pid = u64::from(p.pid);
            pid != u64::from(std::process::id())
                && pid != tracer_pid
                && !["sh", "true"].contains(&p.comm.as_str())
        })
        .map(|p| p.cpu_pct)
        .sum();
    let shared = foreign >= 25.0;
    // Rows about another test's incident (a parent holding zombies, a filesystem out
    // of inodes: their subject is not this test's process or file system) are not
    // this workload's.
    let me = std::process::id().to_string();
    let tmp_mount = (r.leaks.filesystems.as_ref().expect("filesystems").iter())
        .filter_map(|f| f.mount.to_str())
        .filter(|m| std::env::temp_dir().starts_with(m))
        .max_by_key(|m| m.len())
        .map(str::to_string);
    let others = |f: &Finding| match (&*f.resource, f.subject.as_deref()) {
        ("pids", Some(parent)) => parent != me,
        ("inodes", Some(mount)) => tmp_mount.as_deref() != Some(mount),
        _ => false,
    };
    let (exempt, bad): (Vec<&Finding>, Vec<&Finding>) = (r.findings.iter())
        .filter(|f| f.level != Level::Ok)
        .partition(|f| others(f) || (shared && ["cpu", "disk"].contains(&&*f.resource)));
    assert!(
        bad.is_empty(),
        "findings on a healthy busy host (other processes used {foreign:.0}% CPU): {bad:#?}\n{}",
        show(&r)
    );
    if exempt.is_empty() {
        assert_eq!(r.worst, Level::Ok, "{}", show(&r));
        assert_eq!(exit_matches_report(&out, &r), 0);
    } else {
        eprintln!(
            "note: other processes used {foreign:.0}% of a CPU during the window; rows not about this workload: {:?}",
            exempt
                .iter()
                .map(|f| (&f.check, &f.value))
                .collect::<Vec<_>>()
        );
    }
    // Every row states its threshold.
    for f in &r.findings {
        assert!(!f.threshold.is_empty(), "{f:?}");
    }
    assert_none_loaded("triage_");
}
