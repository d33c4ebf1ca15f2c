//! What every benchmark shares: observers (nothing, the tracer, bpftrace) started
//! around a workload, interleaved rounds, and a side-by-side table of medians and
//! ratios. CPU time and peak RSS of an observer come from wait4()'s rusage, time to
//! attach from its "ready" line (tracer: "Tracing ...", bpftrace: "Attaching N probes").
use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// What runs beside the workload.
#[derive(Clone, Debug)]
pub enum Observer {
    Alone,
    /// tracer arguments (without --json, which is added to read lost_events).
    Tracer(Vec<String>),
    /// A bpftrace program (`bpftrace -e`).
    Bpftrace(String),
    /// A bpftrace program with empty probes on the tracer's tracepoints: what the
    /// tracepoints cost by themselves (the floor any tool pays).
    EmptyProbes(String),
}

impl Observer {
    pub fn label(&self) -> &'static str {
        match self {
            Observer::Alone => "alone",
            Observer::Tracer(_) => "tracer",
            Observer::Bpftrace(_) => "bpftrace",
            Observer::EmptyProbes(_) => "empty",
        }
    }
}

/// One workload run: how many operations and how long they took.
#[derive(Clone, Copy, Debug)]
pub struct WorkResult {
    pub ops: u64,
    pub secs: f64,
}

impl WorkResult {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
}

/// One observed run.
#[derive(Clone, Debug)]
pub struct Measured {
    pub label: &'static str,
    pub work: WorkResult,
    /// Observer user+system CPU seconds (0 for alone).
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
    pub attach_s: f64,
    /// tracer: lost_events of its final report.
    pub lost: Option<u64>,
    /// The observer's stdout (tracer: JSON reports), for benchmarks that check it.
    #[allow(dead_code, reason = "read by benchmarks that check reports")]
    pub stdout: String,
}

/// A started observer process.
pub struct Running {
    child: Child,
    attach_s: f64,
    stdout_rx: Option<mpsc::Receiver<String>>,
}

pub fn tracer_bin() -> Result<PathBuf> {
    crate::build()
}

pub fn bpftrace_bin() -> Result<PathBuf> {
    crate::setup::apt_tools(&[("bpftrace", "bpftrace")])?;
    Ok(PathBuf::from("bpftrace"))
}

/// Starts the observer and waits until it is attached.
pub fn start(obs: &Observer, tracer: &Path) -> Result<Option<Running>> {
    let t0 = Instant::now();
    let (mut cmd, ready, ready_on_stdout): (Command, &str, bool) = match obs {
        Observer::Alone => return Ok(None),
        Observer::Tracer(args) => {
            let mut c = Command::new(tracer);
            c.args(args).arg("--json");
            (c, "Tracing ", false)
        }
        Observer::Bpftrace(prog) | Observer::EmptyProbes(prog) => {
            let mut c = Command::new("bpftrace");
            c.arg("-e").arg(prog);
            // bpftrace prints "Attaching N probes..." on stdout once its probes are set up.
            (c, "Attaching ", true)
        }
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {obs:?}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let watched = if ready_on_stdout {
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>)
    } else {
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>)
    };
    let watched = watched.context("observer pipe")?;
    std::thread::spawn(move || {
        for line in BufReader::new(watched).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with(ready) => break,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let _ = child.wait();
                bail!("{} did not attach within 60 s: {err}", obs.label());
            }
        }
    }
    let attach_s = t0.elapsed().as_secs_f64();
    // bpftrace attaches right after its banner: give it the same settle time as the tracer.
    std::thread::sleep(Duration::from_millis(200));
    Ok(Some(Running {
        child,
        attach_s,
        stdout_rx: ready_on_stdout.then_some(rx),
    }))
}

/// Stops the observer with SIGINT and measures it.
pub fn stop(run: Option<Running>, label: &'static str, work: WorkResult) -> Result<Measured> {
    let Some(mut run) = run else {
        return Ok(Measured {
            label,
            work,
            cpu_s: 0.0,
            peak_rss_kib: 0,
            attach_s: 0.0,
            lost: None,
            stdout: String::new(),
        });
    };
    let pid = run.child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let mut stdout = String::new();
    if let Some(rx) = run.stdout_rx.take() {
        while let Ok(l) = rx.recv_timeout(Duration::from_secs(10)) {
            stdout.push_str(&l);
            stdout.push('\n');
        }
    } else if let Some(mut o) = run.child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    let (_, cpu_s, peak_rss_kib) =
        wait_rusage(pid).with_context(|| format!("waiting for {label}"))?;
    let lost = stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["lost_events"].as_u64());
    Ok(Measured {
        label,
        work,
        cpu_s,
        peak_rss_kib,
        attach_s: run.attach_s,
        lost,
        stdout,
    })
}

/// Runs `rounds` rounds; each runs the workload under every observer once, in an
/// order rotated per round so slow drifts of the machine hit every observer alike.
pub fn interleave(
    rounds: usize,
    observers: &[Observer],
    mut workload: impl FnMut() -> Result<WorkResult>,
) -> Result<Vec<Measured>> {
    let tracer = tracer_bin()?;
    if observers
        .iter()
        .any(|o| matches!(o, Observer::Bpftrace(_) | Observer::EmptyProbes(_)))
    {
        bpftrace_bin()?;
    }
    // One warm-up run so page cache and the fork path are hot for everyone.
    workload()?;
    let mut out = Vec::new();
    for round in 0..rounds {
        for i in 0..observers.len() {
            let obs = &observers[(i + round) % observers.len()];
            let run = start(obs, &tracer)?;
            let work = workload();
            let m = stop(
                run,
                obs.label(),
                work.as_ref()
                    .map(|w| *w)
                    .unwrap_or(WorkResult { ops: 0, secs: 1.0 }),
            )?;
            work?;
            eprintln!(
                "  round {}/{} {:<8} {:>10.0} ops/s  cpu {:.3}s  rss {} KiB  attach {:.3}s",
                round + 1,
                rounds,
                m.label,
                m.work.rate(),
                m.cpu_s,
                m.peak_rss_kib,
                m.attach_s
            );
            out.push(m);
        }
    }
    Ok(out)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians per observer.
pub struct Summary {
    pub rate: f64,
    pub cpu_s: f64,
    pub cpu_ms_per_1k_ops: f64,
    pub rss_kib: f64,
    pub attach_s: f64,
    pub lost: Option<u64>,
}

pub fn summarize(all: &[Measured], label: &str) -> Summary {
    let of: Vec<&Measured> = all.iter().filter(|m| m.label == label).collect();
    let m = |f: &dyn Fn(&Measured) -> f64| median(of.iter().map(|x| f(x)).collect());
    Summary {
        rate: m(&|x| x.work.rate()),
        cpu_s: m(&|x| x.cpu_s),
        cpu_ms_per_1k_ops: m(&|x| x.cpu_s * 1e6 / x.work.ops.max(1) as f64),
        rss_kib: m(&|x| x.peak_rss_kib as f64),
        attach_s: m(&|x| x.attach_s),
        lost: of.iter().filter_map(|x| x.lost).max(),
    }
}

/// Prints the side-by-side table and the target checks; returns the summaries
/// (alone, tracer, bpftrace when present).
pub fn report(
    title: &str,
    unit: &str,
    all: &[Measured],
    targets: &[Target],
) -> (Summary, Summary, Option<Summary>) {
    let alone = summarize(all, "alone");
    let tracer = summarize(all, "tracer");
    let bpf = all
        .iter()
        .any(|m| m.label == "bpftrace")
        .then(|| summarize(all, "bpftrace"));
    let rounds = all.iter().filter(|m| m.label == "alone").count();
    println!("\n== bench {title}: medians of {rounds} interleaved rounds ==");
    println!(
        "{:<10} {:>14} {:>10} {:>14} {:>10} {:>9} {:>6}",
        "observer", unit, "cpu s", "cpu ms/1k ops", "rss MiB", "attach s", "lost"
    );
    let row = |name: &str, s: &Summary| {
        println!(
            "{:<10} {:>14.0} {:>10.3} {:>14.3} {:>10.1} {:>9.3} {:>6}",
            name,
            s.rate,
            s.cpu_s,
            s.cpu_ms_per_1k_ops,
            s.rss_kib / 1024.0,
            s.attach_s,
            s.lost.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
        )
    };
    row("alone", &alone);
    row("tracer", &tracer);
    if let Some(b) = &bpf {
        row("bpftrace", b);
    }
    println!();
    for t in targets {
        check(
            t.name,
            (t.value)(&alone, &tracer, bpf.as_ref()),
            t.cmp,
            t.target,
        );
    }
    (alone, tracer, bpf)
}

/// Prints one figure against its target: `name  value  (target <= x)  ok|MISSED`.
pub fn check(name: &str, v: f64, cmp: Cmp, target: f64) {
    let (ok, sym) = match cmp {
        Cmp::AtLeast => (v >= target, ">="),
        Cmp::AtMost => (v <= target, "<="),
    };
    println!(
        "{name:<48} {v:>9.3}  (target {sym} {target})  {}",
        if ok { "ok" } else { "MISSED" }
    );
}

#[derive(Clone, Copy)]
pub enum Cmp {
    AtLeast,
    AtMost,
}

/// A ratio or figure printed against its target.
pub struct Target {
    pub name: &'static str,
    pub cmp: Cmp,
    pub target: f64,
    pub value: fn(&Summary, &Summary, Option<&Summary>) -> f64,
}

/// Common targets.
pub fn throughput_ratio(min: f64) -> Target {
    Target {
        name: "throughput with tracer / alone",
        cmp: Cmp::AtLeast,
        target: min,
        value: |a, t, _| t.rate / a.rate,
    }
}

pub fn cpu_vs_bpftrace(max: f64) -> Target {
    Target {
        name: "tracer CPU / bpftrace CPU",
        cmp: Cmp::AtMost,
        target: max,
        value: |_, t, b| b.map(|b| t.cpu_s / b.cpu_s.max(1e-9)).unwrap_or(f64::NAN),
    }
}

pub fn lost_events() -> Target {
    Target {
        name: "tracer lost events",
        cmp: Cmp::AtMost,
        target: 0.0,
        value: |_, t, _| t.lost.unwrap_or(0) as f64,
    }
}

/// With an EmptyProbes observer in the same rounds: prints the tracepoints' own cost
/// (empty probes / alone) and the tracer's throughput relative to that floor.
pub fn floor(all: &[Measured], target: f64) {
    let alone = summarize(all, "alone").rate;
    let floor = summarize(all, "empty").rate / alone;
    let own = summarize(all, "tracer").rate / alone / floor;
    println!(
        "{:<48} {:>9.0}",
        "empty probes, median ops/s",
        summarize(all, "empty").rate
    );
    println!(
        "{:<48} {:>9.3}  (the tracepoints' own cost, for reference)",
        "throughput with empty probes / alone", floor
    );
    println!(
        "{:<48} {:>9.3}  (target >= {target})  {}",
        "throughput with tracer / with empty probes",
        own,
        if own >= target { "ok" } else { "MISSED" }
    );
}

/// Waits for child `pid` with wait4 (Child::wait does not return the rusage): its
/// wait status, CPU seconds (user + system) and peak RSS in KiB.
pub fn wait_rusage(pid: libc::pid_t) -> Result<(libc::c_int, f64, u64)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; the pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        bail!("wait4({pid}) failed: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        status,
        tv(ru.ru_utime) + tv(ru.ru_stime),
        ru.ru_maxrss as u64,
    ))
}

/// Forks a child that exits at once and reaps it: one fork+exit+reap of a storm.
pub fn fork_and_reap() -> Result<()> {
    // SAFETY: the child only calls _exit (async-signal-safe after fork).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => bail!("fork failed: {}", std::io::Error::last_os_error()),
        0 => unsafe { libc::_exit(0) },
        _ => {
            let mut st = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            Ok(())
        }
    }
}
