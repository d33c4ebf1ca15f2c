//! `cargo xtask bench zombies`: a fork+exit+wait loop alone, under `tracer zombies`,
//! and under a bpftrace script on the same tracepoints.
use std::time::Instant;

use anyhow::Result;

use super::common::{self, Cmp, Observer, Target, WorkResult};

/// Processes per workload run.
const FORKS: u64 = 20_000;

/// The same hooks the tracer uses, doing the same bookkeeping in bpftrace maps.
const BPFTRACE: &str = r#"
tracepoint:sched:sched_process_fork { @parent[args->child_pid] = pid; @forks = count(); }
tracepoint:sched:sched_process_exit /args->group_dead/ { @exited[pid] = nsecs; }
tracepoint:syscalls:sys_exit_wait4 /args->ret > 0 && @exited[args->ret]/ {
  @reap_us = hist((nsecs - @exited[args->ret]) / 1000); delete(@exited[args->ret]); delete(@parent[args->ret]); }
tracepoint:sched:sched_process_free /@exited[args->pid]/ { delete(@exited[args->pid]); delete(@parent[args->pid]); }
tracepoint:sched:sched_process_wait { @waits[pid] = count(); }
tracepoint:signal:signal_generate /args->sig == 17/ { @sigchld[args->pid] = count(); }
END { clear(@parent); clear(@exited); }
"#;

/// fork() a child that _exits at once, waitpid() it; FORKS times.
fn workload() -> Result<WorkResult> {
    let t0 = Instant::now();
    for _ in 0..FORKS {
        common::fork_and_reap()?;
    }
    Ok(WorkResult {
        ops: FORKS,
        secs: t0.elapsed().as_secs_f64(),
    })
}

pub fn run(a: &super::Args) -> Result<()> {
    let observers = [
        Observer::Alone,
        Observer::Tracer(vec!["zombies".into()]),
        Observer::Bpftrace(BPFTRACE.into()),
    ];
    println!(
        "bench zombies: {FORKS} fork+exit+wait per run, {} rounds",
        a.rounds
    );
    let all = common::interleave(a.rounds, &observers, workload)?;
    common::report(
        "zombies",
        "forks/s",
        &all,
        &[
            common::throughput_ratio(0.99),
            common::cpu_vs_bpftrace(0.5),
            common::lost_events(),
            Target {
                name: "tracer peak RSS (MiB)",
                cmp: Cmp::AtMost,
                target: 30.0,
                value: |_, t, _| t.rss_kib / 1024.0,
            },
            Target {
                name: "tracer time to attached (s)",
                cmp: Cmp::AtMost,
                target: 0.2,
                value: |_, t, _| t.attach_s,
            },
            Target {
                name: "bpftrace time to attached (s), for reference",
                cmp: Cmp::AtLeast,
                target: 0.0,
                value: |_, _, b| b.map(|b| b.attach_s).unwrap_or(f64::NAN),
            },
        ],
    );
    Ok(())
}
