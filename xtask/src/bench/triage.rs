//! `cargo xtask bench triage`: `tracer triage -d 1s` against the ten commands of
//! Netflix's first-60-seconds checklist run by hand, one after the other, each over
//! the same 1 s window (sysstat and procps from apt). Wall time from start to the
//! last output and CPU time (user+system of the process and everything it waited
//! for, from wait4's rusage), interleaved rounds, medians side by side. Then every
//! detector's peak RSS for `-d 2s` against its 25 MiB target.
use std::{
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::common;

/// The checklist as an engineer types it, with 1 s intervals so each interval tool
/// prints exactly one measured interval (vmstat/iostat print a since-boot line first).
const CHECKLIST: &[(&str, &str)] = &[
    ("uptime", "uptime"),
    ("dmesg | tail", "dmesg | tail"),
    ("vmstat 1", "vmstat 1 2"),
    ("mpstat -P ALL 1", "mpstat -P ALL 1 1"),
    ("pidstat 1", "pidstat 1 1"),
    ("iostat -xz 1", "iostat -xz 1 2"),
    ("free -m", "free -m"),
    ("sar -n DEV 1", "sar -n DEV 1 1"),
    ("sar -n TCP,ETCP 1", "sar -n TCP,ETCP 1 1"),
    ("top", "top -b -n 1"),
];

/// One measured run: wall seconds (to the report, and to exit), CPU seconds, peak RSS
/// (KiB).
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    report_s: f64,
    wall_s: f64,
    cpu_s: f64,
    rss_kib: u64,
}

/// Runs `cmd` to completion and measures it with wait4's rusage.
/// The report time is when the last stdout byte arrived (the tracer prints its one
/// JSON line before it detaches its programs).
fn measure(cmd: &mut Command) -> Result<Run> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as i32;
    let mut out = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut last = None;
        let mut buf = [0u8; 65536];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            last = Some(Instant::now());
        }
        last
    });
    let waited = common::wait_rusage(pid);
    let wall_s = t0.elapsed().as_secs_f64();
    let report_s = reader
        .join()
        .ok()
        .flatten()
        .map_or(wall_s, |t| t.duration_since(t0).as_secs_f64());
    let (status, cpu_s, rss_kib) = waited.with_context(|| format!("waiting for {cmd:?}"))?;
    // triage exits 3/4 when it finds something: that is a verdict, not a failure.
    let code = libc::WEXITSTATUS(status);
    if !libc::WIFEXITED(status) || ![0, 3, 4].contains(&code) {
        bail!("{cmd:?} failed (status {status:#x})");
    }
    Ok(Run {
        report_s,
        wall_s,
        cpu_s,
        rss_kib,
    })
}

const TRIAGE_ARGS: &[&str] = &["triage", "-d", "1s", "--json", "--fail-on", "never"];

fn tracer_run(tracer: &Path) -> Result<Run> {
    measure(Command::new(tracer).args(TRIAGE_ARGS))
}

/// The same run without privileges (setpriv execs the tracer in place, so wait4
/// measures the tracer): the /proc checks alone, no eBPF.
fn unprivileged_run(tracer: &Path) -> Result<Run> {
    measure(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .arg(tracer)
            .args(TRIAGE_ARGS),
    )
}

/// The ten commands one after the other; per-command figures too.
fn checklist_run() -> Result<(Run, Vec<Run>)> {
    let t0 = Instant::now();
    let mut each = Vec::new();
    for (_, cmd) in CHECKLIST {
        each.push(measure(Command::new("sh").arg("-c").arg(cmd))?);
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let total = Run {
        // The checklist's report is the last command's output.
        report_s: wall_s - each.last().map_or(0.0, |r| r.wall_s - r.report_s),
        wall_s,
        cpu_s: each.iter().map(|r| r.cpu_s).sum(),
        rss_kib: each.iter().map(|r| r.rss_kib).max().unwrap_or(0),
    };
    Ok((total, each))
}

pub fn run(a: &super::Args) -> Result<()> {
    crate::setup::apt_tools(&[
        ("setpriv", "util-linux"),
        ("mpstat", "sysstat"),
        ("vmstat", "procps"),
        ("dmesg", "util-linux"),
    ])?;
    let tracer = common::tracer_bin()?;
    println!(
        "bench triage: `tracer triage -d 1s` vs the 10 checklist commands (1 s intervals), {} rounds",
        a.rounds
    );
    // Warm-up: page cache and binaries hot for both.
    tracer_run(&tracer)?;
    checklist_run()?;
    let mut per = vec![Vec::new(); CHECKLIST.len()];
    // Runs of the tracer, the checklist and the tracer without root, in that order.
    let mut runs: [Vec<Run>; 3] = Default::default();
    for round in 0..a.rounds {
        // Rotate who goes first so slow drifts of the machine hit all alike.
        for i in 0..runs.len() {
            let who = (i + round) % runs.len();
            let r = match who {
                0 => tracer_run(&tracer)?,
                1 => {
                    let (r, each) = checklist_run()?;
                    for (p, e) in per.iter_mut().zip(each) {
                        p.push(e);
                    }
                    r
                }
                _ => unprivileged_run(&tracer)?,
            };
            eprintln!(
                "  round {}/{} {:<10} wall {:.3}s cpu {:.3}s",
                round + 1,
                a.rounds,
                ["tracer", "checklist", "no root"][who],
                r.wall_s,
                r.cpu_s
            );
            runs[who].push(r);
        }
    }
    let [tr, cl, unpriv] = runs;
    let med = |v: &[Run], f: fn(&Run) -> f64| common::median(v.iter().map(f).collect());
    let row = |name: &str, n: String, v: &[Run]| {
        println!(
            "{:<34} {:>8} {:>11.3} {:>9.3} {:>9.3} {:>13.1}",
            name,
            n,
            med(v, |r| r.report_s),
            med(v, |r| r.wall_s),
            med(v, |r| r.cpu_s),
            med(v, |r| r.rss_kib as f64) / 1024.0
        )
    };
    println!(
        "\n== bench triage: medians of {} interleaved rounds ==",
        a.rounds
    );
    println!(
        "{:<34} {:>8} {:>11} {:>9} {:>9} {:>13}",
        "run", "commands", "to report s", "wall s", "cpu s", "peak rss MiB"
    );
    row("tracer triage -d 1s", "1".into(), &tr);
    row("  the same without root (no eBPF)", "1".into(), &unpriv);
    row(
        "checklist, one after the other",
        CHECKLIST.len().to_string(),
        &cl,
    );
    for (i, (name, _)) in CHECKLIST.iter().enumerate() {
        row(&format!("  {name}"), String::new(), &per[i]);
    }
    let (t_report, t_cpu) = (med(&tr, |r| r.report_s), med(&tr, |r| r.cpu_s));
    let (c_report, c_cpu) = (med(&cl, |r| r.report_s), med(&cl, |r| r.cpu_s));
    let t_wall = med(&tr, |r| r.wall_s);
    println!();
    let line = |name: &str, v: f64, target: f64| {
        println!(
            "{:<48} {:>9.3}  (target <= {target})  {}",
            name,
            v,
            if v <= target { "ok" } else { "MISSED" }
        )
    };
    line("tracer CPU / checklist CPU", t_cpu / c_cpu.max(1e-9), 1.0);
    line(
        "tracer time to report / checklist",
        t_report / c_report.max(1e-9),
        1.0,
    );
    line(
        "tracer time to report beyond its 1 s window (s)",
        t_report - 1.0,
        0.3,
    );
    line(
        "tracer exit beyond its 1 s window (s, detach)",
        t_wall - 1.0,
        0.5,
    );
    detectors_rss(&tracer, a.rounds)
}

const RSS_TARGET_MIB: f64 = 25.0;

/// Every detector, as the binary lists them (`tracer --list`).
pub fn detectors(tracer: &Path) -> Result<Vec<String>> {
    let out = Command::new(tracer)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", tracer.display()))?;
    if !out.status.success() {
        bail!(
            "{} --list failed: {}",
            tracer.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Peak RSS (wait4's ru_maxrss) and wall time of `tracer NAME -d 2s` for every
/// detector, `rounds` times each, medians against the target side by side.
fn detectors_rss(tracer: &Path, rounds: usize) -> Result<()> {
    let detectors = detectors(tracer)?;
    let mut runs = vec![Vec::new(); detectors.len()];
    for round in 0..rounds {
        for (d, v) in detectors.iter().zip(&mut runs) {
            let r = measure(Command::new(tracer).args([d, "-d", "2s"]))?;
            eprintln!(
                "  round {}/{rounds} {d:<12} rss {} KiB wall {:.3}s",
                round + 1,
                r.rss_kib,
                r.wall_s
            );
            v.push(r);
        }
    }
    let med = |v: &[Run], f: fn(&Run) -> f64| common::median(v.iter().map(f).collect());
    println!("\n== every detector, `tracer NAME -d 2s`: medians of {rounds} rounds ==");
    println!("{:<34} {:>8} {:>9}", "detector", "rss MiB", "wall s");
    for (d, v) in detectors.iter().zip(&runs) {
        let rss = med(v, |r| r.rss_kib as f64) / 1024.0;
        println!(
            "{:<34} {rss:>8.1} {:>9.3}  (target <= {RSS_TARGET_MIB} MiB)  {}",
            format!("peak RSS, tracer {d}"),
            med(v, |r| r.wall_s),
            if rss <= RSS_TARGET_MIB {
                "ok"
            } else {
                "MISSED"
            }
        );
    }
    Ok(())
}
