//! `cargo xtask bench serve`: a soak of `tracer serve` (every detector in one process)
//! under three storms at once from the bench's own threads (fork+exit+reap, cgroup2
//! mkdir+rmdir, file create+delete), scraped every second for `--minutes`. The storms
//! run alone first (20% of the soak, at most a minute), then with serve, in one run:
//! throughput ratios, RSS growth after warm-up, CPU, scrape latency and lost events.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::common::{self, Cmp};

/// Set by SIGINT/SIGTERM or when the measurement ends: every storm stops at it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Relaxed);
}

/// Storms, by index: what one operation is.
const STORMS: [&str; 3] = ["fork+exit+reap", "cgroup mkdir+rmdir", "file create+delete"];

/// Operations done so far, per storm.
static OPS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

fn ops() -> [u64; 3] {
    [0, 1, 2].map(|i| OPS[i].load(Relaxed))
}

/// A directory the bench made (a cgroup or a temp dir), removed with its contents on
/// drop, also when the bench fails or is interrupted.
struct Dir {
    path: PathBuf,
    cgroup: bool,
}

impl Drop for Dir {
    fn drop(&mut self) {
        if self.cgroup {
            // A cgroup's control files cannot be unlinked: remove the child cgroups.
            for e in fs::read_dir(&self.path).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(e.path());
                }
            }
            let _ = fs::remove_dir(&self.path);
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The first cgroup2 mount in /proc/self/mountinfo (/sys/fs/cgroup/unified on hybrid
/// hosts, /sys/fs/cgroup on pure cgroup2 ones).
fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split(' ').next() == Some("cgroup2")).then(|| pre.split(' ').nth(4))?
        })
        .map(PathBuf::from)
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

fn storm(i: usize, dir: &Path) -> Result<()> {
    let target = dir.join("x");
    while !STOP.load(Relaxed) {
        match i {
            0 => {
                common::fork_and_reap()?;
            }
            1 => {
                fs::create_dir(&target).with_context(|| format!("mkdir {}", target.display()))?;
                fs::remove_dir(&target).with_context(|| format!("rmdir {}", target.display()))?;
            }
            _ => {
                fs::File::create(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                fs::remove_file(&target)
                    .with_context(|| format!("deleting {}", target.display()))?;
            }
        }
        OPS[i].fetch_add(1, Relaxed);
    }
    Ok(())
}

/// The running `tracer serve`; stopped with SIGINT and reaped on drop when the bench
/// fails before it stops it.
struct Serve {
    child: Option<Child>,
    addr: SocketAddr,
    /// stderr lines so far (drained all along so the tracer never blocks on it).
    stderr: mpsc::Receiver<String>,
}

impl Serve {
    fn start(tracer: &Path, detectors: Option<&str>) -> Result<Serve> {
        let mut cmd = Command::new(tracer);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "-i", "1s"]);
        if let Some(d) = detectors {
            cmd.args(["--detectors", d]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tracer serve")?;
        let err = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut serve = Serve {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = String::new();
        loop {
            let Ok(line) = serve
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                bail!("tracer serve did not attach within 60 s: {seen}");
            };
            if let Some(a) = line.strip_prefix("Serving metrics on http://") {
                serve.addr = a.trim_end_matches("/metrics").parse()?;
            }
            if line.starts_with("Tracing ") {
                return Ok(serve);
            }
            seen.push_str(&line);
            seen.push('\n');
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGINT, then wait4: CPU seconds and peak RSS (KiB) over its whole life.
    fn stop(&mut self) -> Result<(f64, u64)> {
        let pid = self.pid();
        self.child = None;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let (st, cpu, rss) = common::wait_rusage(pid)?;
        if !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
            let err: Vec<String> = self.stderr.try_iter().collect();
            bail!("tracer serve failed (status {st:#x}): {}", err.join("\n"));
        }
        Ok((cpu, rss))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let t0 = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET /metrics over HTTP/1.0, read to the end: the body.
fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// Sum of a metric's series in Prometheus text, and the non-zero ones.
fn sum_metric(body: &str, name: &str) -> (f64, Vec<String>) {
    let mut sum = 0.0;
    let mut nonzero = Vec::new();
    for l in body.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !rest.starts_with(['{', ' ']) {
            continue;
        }
        if let Some(v) = l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()) {
            sum += v;
            if v != 0.0 {
                nonzero.push(l.to_string());
            }
        }
    }
    (sum, nonzero)
}

/// VmRSS in KiB and utime+stime in seconds of `pid`.
fn proc_sample(pid: i32) -> Result<(u64, f64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" that ends comm: state is field 3, utime 14, stime 15.
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .context("bad stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((rss, ticks as f64 / hz))
}

/// One scrape: when, how long, the tracer's RSS and CPU, the storms' counts.
struct Sample {
    at: f64,
    ms: f64,
    rss_kib: u64,
    cpu_s: f64,
    ops: [u64; 3],
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn sleep_until(t: Instant) -> Result<()> {
    while Instant::now() < t {
        if STOP.load(Relaxed) {
            bail!("interrupted");
        }
        std::thread::sleep(
            t.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
    Ok(())
}

pub fn run(a: &super::Args) -> Result<()> {
    let soak = Duration::from_secs_f64(a.minutes * 60.0);
    // Warm-up and the alone stretch: the first minute, or 20% of a short soak.
    let warm = Duration::from_secs(60).min(soak / 5);
    let tracer = common::tracer_bin()?;
    let cg_root = cgroup2_root()?;
    let name = format!("tracer-bench-serve-{}", std::process::id());
    let cg = Dir {
        path: cg_root.join(&name),
        cgroup: true,
    };
    fs::create_dir(&cg.path).with_context(|| format!("creating {}", cg.path.display()))?;
    let tmp = Dir {
        path: std::env::temp_dir().join(&name),
        cgroup: false,
    };
    fs::create_dir(&tmp.path).with_context(|| format!("creating {}", tmp.path.display()))?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    println!(
        "bench serve: storms ({}) alone for {:.0} s, then under `tracer serve -i 1s` ({}) \
         scraped every 1 s for {:.1} min (warm-up {:.0} s); cgroups under {}, files under {}",
        STORMS.join(", "),
        warm.as_secs_f64(),
        a.detectors.as_deref().unwrap_or("every detector"),
        a.minutes,
        warm.as_secs_f64(),
        cg.path.display(),
        tmp.path.display()
    );
    let dirs = [tmp.path.clone(), cg.path.clone(), tmp.path.clone()];
    let res = std::thread::scope(|s| {
        let storms: Vec<_> = (0..3)
            .map(|i| {
                let d = &dirs[i];
                s.spawn(move || {
                    let r = storm(i, d);
                    STOP.store(true, Relaxed);
                    r
                })
            })
            .collect();
        let r = measure(&tracer, a.detectors.as_deref(), soak, warm);
        STOP.store(true, Relaxed);
        for h in storms {
            h.join()
                .map_err(|_| anyhow::anyhow!("a storm panicked"))??;
        }
        r
    });
    drop((cg, tmp));
    res
}

fn measure(tracer: &Path, detectors: Option<&str>, soak: Duration, warm: Duration) -> Result<()> {
    // Alone: the storms with nothing attached (after a second to get going).
    sleep_until(Instant::now() + Duration::from_secs(1))?;
    let t0 = Instant::now();
    let ops0 = ops();
    sleep_until(t0 + warm)?;
    let alone_s = t0.elapsed().as_secs_f64();
    let alone: Vec<f64> = (0..3)
        .map(|i| (ops()[i] - ops0[i]) as f64 / alone_s)
        .collect();
    eprintln!(
        "  alone: {:.0} / {:.0} / {:.0} ops/s",
        alone[0], alone[1], alone[2]
    );

    let mut serve = Serve::start(tracer, detectors)?;
    let pid = serve.pid();
    let start = Instant::now();
    let (rss0, cpu0) = proc_sample(pid)?;
    let first = Sample {
        at: 0.0,
        ms: 0.0,
        rss_kib: rss0,
        cpu_s: cpu0,
        ops: ops(),
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut errors = Vec::new();
    let mut last_body = String::new();
    let mut get_cpu_s = 0.0;
    let mut k = 1u32;
    while start.elapsed() < soak {
        sleep_until(start + Duration::from_secs(k.into()))?;
        k += 1;
        let (_, c0) = proc_sample(pid)?;
        let t = Instant::now();
        let body = scrape(serve.addr);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let (rss_kib, cpu_s) = proc_sample(pid)?;
        get_cpu_s += cpu_s - c0;
        match body {
            Ok(b) => last_body = b,
            Err(e) => errors.push(format!("{e:#}")),
        }
        samples.push(Sample {
            at: start.elapsed().as_secs_f64(),
            ms,
            rss_kib,
            cpu_s,
            ops: ops(),
        });
        if k.is_multiple_of(30) {
            eprintln!(
                "  {:>4.0} s  rss {:.1} MiB  cpu {:.1} s  scrape {:.1} ms",
                start.elapsed().as_secs_f64(),
                rss_kib as f64 / 1024.0,
                cpu_s - cpu0,
                ms
            );
        }
    }
    let last = samples.last().context("no scrape")?;
    let (total_cpu_s, peak_kib) = serve.stop()?;
    let warm_end = samples
        .iter()
        .find(|s| s.at >= warm.as_secs_f64())
        .unwrap_or(&first);

    let span = last.at - first.at;
    let with: Vec<f64> = (0..3)
        .map(|i| (last.ops[i] - first.ops[i]) as f64 / span)
        .collect();
    println!(
        "\n== bench serve: {:.0} s alone, then {:.0} s with serve, {} scrapes ==",
        alone_s,
        span,
        samples.len()
    );
    println!(
        "{:<22} {:>12} {:>12} {:>12}",
        "storm", "alone ops/s", "serve ops/s", "serve/alone"
    );
    for i in 0..3 {
        println!(
            "{:<22} {:>12.0} {:>12.0} {:>12.3}",
            STORMS[i],
            alone[i],
            with[i],
            with[i] / alone[i]
        );
    }
    let total_ops: u64 = (0..3).map(|i| last.ops[i] - first.ops[i]).sum();
    let cpu = last.cpu_s - first.cpu_s;
    let ms: Vec<f64> = samples.iter().map(|s| s.ms).collect();
    let mib = |k: u64| k as f64 / 1024.0;
    let growth = (last.rss_kib as f64 - warm_end.rss_kib as f64) / 1024.0;
    let (lost, lost_by) = sum_metric(&last_body, "tracer_lost_events_total");
    let (bad, bad_by) = sum_metric(&last_body, "tracer_bad_records_total");
    println!();
    let fig = |name: &str, v: f64| println!("{name:<48} {v:>9.3}");
    fig("tracer RSS at attach (MiB)", mib(first.rss_kib));
    fig(
        &format!("tracer RSS after warm-up, at {:.0} s (MiB)", warm_end.at),
        mib(warm_end.rss_kib),
    );
    fig("tracer RSS at the end (MiB)", mib(last.rss_kib));
    let peak = samples
        .iter()
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0)
        .max(peak_kib);
    fig("tracer peak RSS, VmRSS or wait4 (MiB)", mib(peak));
    common::check("RSS growth after warm-up (MiB)", growth, Cmp::AtMost, 2.0);
    // Still growing at the end, or levelled off? The slope over the last half.
    let mid = &samples[samples.len() / 2];
    fig(
        "RSS growth over the last half (MiB/min)",
        (last.rss_kib as f64 - mid.rss_kib as f64) / 1024.0 / ((last.at - mid.at) / 60.0),
    );
    fig("tracer CPU % of one core", cpu / span * 100.0);
    fig(
        "tracer CPU ms per scrape interval (1 s)",
        cpu * 1e3 / samples.len() as f64,
    );
    fig(
        "tracer CPU ms during a GET (mean; 10 ms ticks)",
        get_cpu_s * 1e3 / samples.len() as f64,
    );
    fig(
        "tracer CPU ms per 1,000 storm ops",
        cpu * 1e6 / total_ops.max(1) as f64,
    );
    fig("tracer CPU s over its life, wait4", total_cpu_s);
    fig("scrape p50 (ms)", percentile(&ms, 0.5));
    common::check("scrape p99 (ms)", percentile(&ms, 0.99), Cmp::AtMost, 50.0);
    fig("scrape max (ms)", percentile(&ms, 1.0));
    let count = |name: &str, v: f64| println!("{name:<48} {v:>9}");
    count("failed scrapes", errors.len() as f64);
    count("tracer_lost_events_total, last scrape", lost);
    count("tracer_bad_records_total, last scrape", bad);
    for l in lost_by.iter().chain(&bad_by) {
        println!("  {l}");
    }
    for e in errors.iter().take(5) {
        println!("  failed scrape: {e}");
    }
    Ok(())
}
