//! `cargo xtask bench inodes`: small-file create+delete churn on a loop-mounted ext4
//! image alone, under `tracer inodes`, and under a bpftrace script counting the same
//! tracepoints into maps.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::common::{self, Observer, WorkResult};
use crate::status;

/// Files created and deleted per workload run.
const FILES: u64 = 100_000;
/// Files alive at once: create a batch, delete it, repeat (the image needs this many
/// inodes, not FILES).
const BATCH: u64 = 10_000;

/// The same hooks on the hot path (ext4 alloc/free/request, openat and mkdir enter and
/// exit), counting per (dev, process) and per (dev, directory) in maps.
const BPFTRACE: &str = r#"
tracepoint:ext4:ext4_allocate_inode { @alloc[args->dev, pid] = count(); @dirs[args->dev, args->dir] = count(); }
tracepoint:ext4:ext4_free_inode { @freed[args->dev, pid] = count(); }
tracepoint:ext4:ext4_request_inode /@pending[tid]/ { @dev[tid] = args->dev; }
tracepoint:syscalls:sys_enter_openat /args->flags & 0x400040/ { @pending[tid] = args->filename; }
tracepoint:syscalls:sys_enter_mkdir { @pending[tid] = args->pathname; }
tracepoint:syscalls:sys_exit_openat, tracepoint:syscalls:sys_exit_mkdir /@pending[tid]/ {
  if (args->ret == -28) { @enospc[@dev[tid], pid] = count(); }
  delete(@pending[tid]); delete(@dev[tid]); }
END { clear(@pending); clear(@dev); }
"#;

/// The same tracepoints with nothing in them: what attaching costs by itself.
const BPFTRACE_EMPTY: &str = "tracepoint:ext4:ext4_allocate_inode { } tracepoint:ext4:ext4_free_inode { } \
    tracepoint:ext4:ext4_request_inode { } tracepoint:syscalls:sys_enter_openat { } \
    tracepoint:syscalls:sys_exit_openat { }";

/// A loop-mounted ext4 image in a temp dir; unmounted, detached and deleted on drop.
struct Image {
    dir: PathBuf,
    mnt: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
}

impl Image {
    fn new() -> Result<Image> {
        let dir = std::env::temp_dir().join(format!("tracer-bench-inodes-{}", std::process::id()));
        let mut img = Image {
            mnt: dir.join("mnt"),
            dir,
            loop_dev: None,
            mounted: false,
        };
        std::fs::create_dir_all(&img.mnt)?;
        let file = img.dir.join("ext4.img");
        std::fs::File::create(&file)?.set_len(256 << 20)?;
        status(
            Command::new("mkfs.ext4")
                .arg("-q")
                .arg("-F")
                .arg("-N")
                .arg((2 * BATCH).to_string())
                .arg(&file),
        )?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .context("running losetup")?;
        anyhow::ensure!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        img.loop_dev = Some(dev.clone());
        status(Command::new("mount").arg(&dev).arg(&img.mnt))?;
        img.mounted = true;
        Ok(img)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU seconds (user + system) this thread has used.
fn thread_cpu_s() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer for the call.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Creates FILES one-byte files in BATCH-sized rounds, deleting each batch. The rate
/// is per CPU second of the workload, not per wall second: the kernel programs run in
/// the workload's syscalls and are charged to its system time, while wall time on
/// these 2 shared cores mostly measures whoever else runs. The wall rate is kept in
/// `wall` for the record.
fn workload(dir: &Path, wall: &mut Vec<f64>) -> Result<WorkResult> {
    let t0 = Instant::now();
    let cpu0 = thread_cpu_s();
    let mut done = 0;
    while done < FILES {
        let n = BATCH.min(FILES - done);
        for i in 0..n {
            std::fs::write(dir.join(format!("f{i}")), b"x")
                .with_context(|| format!("creating file {i} in {}", dir.display()))?;
        }
        for i in 0..n {
            std::fs::remove_file(dir.join(format!("f{i}")))?;
        }
        done += n;
    }
    wall.push(FILES as f64 / t0.elapsed().as_secs_f64());
    Ok(WorkResult {
        ops: FILES,
        secs: thread_cpu_s() - cpu0,
    })
}

pub fn run(a: &super::Args) -> Result<()> {
    crate::setup::apt_tools(&[("mkfs.ext4", "e2fsprogs"), ("losetup", "mount")])?;
    let img = Image::new()?;
    let dir = img.mnt.join("cache/entries");
    std::fs::create_dir_all(&dir)?;
    let observers = [
        Observer::Alone,
        Observer::Tracer(vec!["inodes".into()]),
        Observer::Bpftrace(BPFTRACE.into()),
        Observer::EmptyProbes(BPFTRACE_EMPTY.into()),
    ];
    println!(
        "bench inodes: {FILES} one-byte files created and deleted per run (batches of {BATCH}) on a loop-mounted ext4, {} rounds",
        a.rounds
    );
    let mut wall = Vec::new();
    let all = common::interleave(a.rounds, &observers, || workload(&dir, &mut wall))?;
    // Every file is counted: the bench filesystem's allocations in each final report.
    let mnt = img.mnt.display().to_string();
    let seen: Vec<u64> = all
        .iter()
        .filter(|m| m.label == "tracer")
        .filter_map(|m| {
            let last = m
                .stdout
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())?;
            last["filesystems"]
                .as_array()?
                .iter()
                .find(|f| f["mount"] == mnt.as_str())?["allocated"]
                .as_u64()
        })
        .collect();
    println!("tracer saw allocated per run: {seen:?} (each run created {FILES})");
    common::report(
        "inodes",
        "files/cpu-s",
        &all,
        &[
            common::throughput_ratio(0.98),
            common::cpu_vs_bpftrace(1.0),
            common::lost_events(),
        ],
    );
    common::floor(&all, 0.98);
    // interleave() runs one warm-up, then the runs in the order of `all`.
    for label in ["alone", "tracer", "bpftrace", "empty"] {
        let rates: Vec<f64> = all
            .iter()
            .zip(wall.iter().skip(1))
            .filter(|(m, _)| m.label == label)
            .map(|(_, w)| *w)
            .collect();
        println!(
            "{:<48} {:>9.0}  (wall clock, shared machine: for the record)",
            format!("{label}, median files/s"),
            common::median(rates)
        );
    }
    drop(img);
    Ok(())
}
