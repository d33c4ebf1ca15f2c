//! `cargo xtask bench autopsy`: what the dying-memcg autopsy of `tracer cgroups` costs.
//! A page-cache workload (a 1 GiB file read cold, its cache dropped before each run:
//! 262,144 pages through filemap:mm_filemap_add_to_page_cache) alone, under `tracer
//! cgroups` (which counts every add per (memcg, file) and takes a census of
//! /proc/kpagecgroup at its report) and under a bpftrace script counting the same
//! adds; then the census' own time, frames and the tracer's peak RSS.
use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::common::{self, Observer, WorkResult};

const FILE_MIB: u64 = 1024;

const BPFTRACE: &str = "tracepoint:filemap:mm_filemap_add_to_page_cache { @[cgroup, args->s_dev, args->i_ino] = count(); }";

/// The bench's file, deleted on drop.
struct BenchFile(PathBuf);

impl Drop for BenchFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn drop_cache(p: &Path) -> Result<()> {
    let st = Command::new("dd")
        .args([
            &format!("if={}", p.display()),
            "iflag=nocache",
            "count=0",
            "status=none",
        ])
        .status()?;
    if !st.success() {
        bail!("dropping the cache of {}", p.display());
    }
    Ok(())
}

fn workload(p: &Path) -> Result<WorkResult> {
    drop_cache(p)?;
    let t0 = Instant::now();
    let mut f = fs::File::open(p)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    Ok(WorkResult {
        ops: bytes / 4096,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// (census ms, frames, charged frames) from the tracer's final report.
fn census_of(stdout: &str) -> Option<(f64, u64, u64)> {
    let v = (stdout.lines().rev())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["autopsy"].is_object())?;
    let c = &v["autopsy"]["census"];
    Some((
        c["took_ms"].as_f64()?,
        c["frames"].as_u64()?,
        c["charged_frames"].as_u64()?,
    ))
}

pub fn run(a: &super::Args) -> Result<()> {
    // On the root file system (ext4 here): a file system with page cache, not tmpfs.
    let file = BenchFile(PathBuf::from(format!(
        "/var/tmp/tracer-bench-autopsy-{}",
        std::process::id()
    )));
    let st = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", file.0.display()),
            "bs=1M",
            &format!("count={FILE_MIB}"),
            "conv=fsync",
            "status=none",
        ])
        .status()
        .context("writing the bench file")?;
    if !st.success() {
        bail!("writing {}", file.0.display());
    }
    let observers = [
        Observer::Alone,
        Observer::Tracer(vec!["cgroups".into(), "--census-every".into(), "0s".into()]),
        Observer::Bpftrace(BPFTRACE.into()),
    ];
    println!(
        "bench autopsy: read {FILE_MIB} MiB cold from {} per run, {} rounds",
        file.0.display(),
        a.rounds
    );
    let all = common::interleave(a.rounds, &observers, || workload(&file.0))?;
    common::report(
        "autopsy",
        "pages/s",
        &all,
        &[common::throughput_ratio(0.95), common::lost_events()],
    );
    let tracer: Vec<&common::Measured> = all.iter().filter(|m| m.label == "tracer").collect();
    let census: Vec<(f64, u64, u64)> = tracer.iter().filter_map(|m| census_of(&m.stdout)).collect();
    if census.len() != tracer.len() {
        bail!("a tracer run reported no census");
    }
    // The census is work bpftrace does not do: the tracing is compared without it (its
    // wall time, CPU-bound reads of /proc, taken off each run's CPU), the whole after.
    let bpf = common::median(
        (all.iter())
            .filter(|m| m.label == "bpftrace")
            .map(|m| m.cpu_s)
            .collect(),
    );
    let tracing = common::median(
        (tracer.iter().zip(&census))
            .map(|(m, c)| (m.cpu_s - c.0 / 1000.0).max(0.0))
            .collect(),
    );
    let whole = common::median(tracer.iter().map(|m| m.cpu_s).collect());
    common::check(
        "tracer CPU less its census / bpftrace CPU",
        tracing / bpf.max(1e-9),
        common::Cmp::AtMost,
        2.0,
    );
    println!(
        "{:<48} {:>9.3}  (the census included, for reference)",
        "tracer CPU / bpftrace CPU",
        whole / bpf.max(1e-9)
    );
    let ms = common::median(census.iter().map(|c| c.0).collect());
    let rss = common::median(tracer.iter().map(|m| m.peak_rss_kib as f64).collect());
    println!(
        "census of /proc/kpagecgroup + /proc/kpageflags: median {ms:.0} ms over {} frames ({:.1} GiB), {} charged; runs {:?} ms",
        census[0].1,
        census[0].1 as f64 * 4096.0 / (1u64 << 30) as f64,
        census[0].2,
        census.iter().map(|c| c.0.round()).collect::<Vec<_>>()
    );
    println!("tracer cgroups peak RSS: median {:.1} MiB", rss / 1024.0);
    Ok(())
}
