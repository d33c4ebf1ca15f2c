//! `cargo xtask bench cgroups`: cgroup mkdir+rmdir churn (cgroup2, no controllers: the
//! cheapest cgroup there is, so the highest event rate) alone, under `tracer cgroups`,
//! and under a bpftrace script doing the same bookkeeping on the same tracepoints.
use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context as _, Result};

use super::common::{self, Observer, WorkResult};

/// mkdir+rmdir pairs per workload run.
const CYCLES: u64 = 20_000;

/// The tracer's hooks and bookkeeping, in bpftrace: counts per hierarchy and per
/// creating process, the path of each live cgroup, rmdir time of each dying one, the
/// rmdir-to-release histogram, task moves per (destination, mover).
const BPFTRACE: &str = r#"
tracepoint:cgroup:cgroup_mkdir { @mkdir[args->root] = count(); @creator[pid, comm] = count();
  @path[args->root, args->id] = str(args->path); }
tracepoint:cgroup:cgroup_rmdir { @rmdir[args->root] = count(); @remover[pid, comm] = count();
  @rmdir_ns[args->root, args->id] = nsecs; }
tracepoint:cgroup:cgroup_release /@rmdir_ns[args->root, args->id]/ {
  @release_us[args->root] = hist((nsecs - @rmdir_ns[args->root, args->id]) / 1000);
  delete(@rmdir_ns[args->root, args->id]); delete(@path[args->root, args->id]); }
tracepoint:cgroup:cgroup_attach_task { @moves[args->dst_root, args->dst_id, pid] = count(); }
END { clear(@path); clear(@rmdir_ns); }
"#;

/// The floor: the same tracepoints with empty probes. Enabling the cgroup tracepoints
/// costs by itself (the kernel formats the cgroup's path under a global lock for every
/// mkdir, rmdir and release while any of them is enabled), whatever the program does.
const BPFTRACE_EMPTY: &str = "tracepoint:cgroup:cgroup_mkdir { } tracepoint:cgroup:cgroup_rmdir { } tracepoint:cgroup:cgroup_release { }";

/// The bench's parent cgroup, removed on drop (also when the bench fails).
struct Parent(PathBuf);

impl Drop for Parent {
    fn drop(&mut self) {
        if let Ok(rd) = fs::read_dir(&self.0) {
            for e in rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            {
                let _ = fs::remove_dir(e.path());
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

fn workload(parent: &std::path::Path) -> Result<WorkResult> {
    let t0 = Instant::now();
    for i in 0..CYCLES {
        let c = parent.join(format!("c{i}"));
        fs::create_dir(&c).with_context(|| format!("mkdir {}", c.display()))?;
        fs::remove_dir(&c).with_context(|| format!("rmdir {}", c.display()))?;
    }
    Ok(WorkResult {
        ops: CYCLES,
        secs: t0.elapsed().as_secs_f64(),
    })
}

pub fn run(a: &super::Args) -> Result<()> {
    let root = PathBuf::from("/sys/fs/cgroup/unified");
    let root = if root.join("cgroup.procs").exists() {
        root
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    let parent = Parent(root.join(format!("tracer-bench-{}", std::process::id())));
    fs::create_dir(&parent.0)
        .with_context(|| format!("creating the bench cgroup {}", parent.0.display()))?;
    let observers = [
        Observer::Alone,
        Observer::Tracer(vec!["cgroups".into()]),
        Observer::Bpftrace(BPFTRACE.into()),
        Observer::EmptyProbes(BPFTRACE_EMPTY.into()),
    ];
    println!(
        "bench cgroups: {CYCLES} mkdir+rmdir of cgroups under {} per run, {} rounds",
        parent.0.display(),
        a.rounds
    );
    let all = common::interleave(a.rounds, &observers, || workload(&parent.0))?;
    // The tracer must have seen every cgroup of its runs (it may see other hosts' too).
    let seen: Vec<u64> = all
        .iter()
        .filter(|m| m.label == "tracer")
        .filter_map(|m| {
            m.stdout
                .lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| v["created"].as_u64())
        })
        .collect();
    println!("tracer saw created per run: {seen:?} (each run made {CYCLES})");
    common::report(
        "cgroups",
        "cycles/s",
        &all,
        &[
            common::throughput_ratio(0.99),
            common::cpu_vs_bpftrace(1.0),
            common::lost_events(),
        ],
    );
    // What the tracepoints cost with a program that does nothing, measured in the same
    // rounds, so the tracer's own share can be told from the kernel's.
    common::floor(&all, 0.99);
    Ok(())
}
