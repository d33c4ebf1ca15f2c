//! `cargo xtask bench tcp-pressure`: loopback bulk TCP throughput alone, under
//! `tracer tcp-pressure`, and under a bpftrace script on the same tracepoints.
//! The workload is built in (a sender and a receiver thread on 127.0.0.1), so the
//! figure is the kernel's loopback path plus what the observers add to it.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::common::{self, Cmp, Observer, Target, WorkResult};

/// Bytes per write() and writes per workload run (4 GiB).
const WRITE: usize = 128 * 1024;
const WRITES: u64 = 32_768;

/// Memory-related skb:kfree_skb reasons, as the tracer counts them.
const REASONS: &[&str] = &[
    "PROTO_MEM",
    "SOCKET_RCVBUFF",
    "SOCKET_BACKLOG",
    "TCP_OFO_QUEUE_PRUNE",
    "TCP_ZEROWINDOW",
    "NOMEM",
    "PFMEMALLOC",
];

/// The numbers of `names` in kfree_skb's `__print_symbolic` table on this kernel.
fn reason_numbers(names: &[&str]) -> Result<Vec<u64>> {
    let path = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(|r| format!("{r}/events/skb/kfree_skb/format"))
        .find(|p| std::path::Path::new(p).exists())
        .context("skb:kfree_skb format not found (is tracefs mounted?)")?;
    let fmt = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut out = Vec::new();
    for name in names {
        let needle = format!(", \"{name}\" }}");
        if let Some(end) = fmt.find(&needle) {
            let start = fmt[..end].rfind('{').map(|i| i + 1).unwrap_or(end);
            if let Ok(n) = fmt[start..end].trim().parse() {
                out.push(n);
            }
        }
    }
    if out.is_empty() {
        bail!("no memory-related drop reason in {path}");
    }
    Ok(out)
}

/// The same hooks as the tracer, with the same in-kernel filtering and aggregation.
fn bpftrace_script() -> Result<String> {
    let cond = reason_numbers(REASONS)?
        .iter()
        .map(|n| format!("args->reason == {n}"))
        .collect::<Vec<_>>()
        .join(" || ");
    Ok(format!(
        r#"
tracepoint:sock:sock_exceed_buf_limit {{ @refusals[pid, comm, args->kind] = count(); }}
tracepoint:skb:kfree_skb /{cond}/ {{ @drops[args->reason] = count(); }}
tracepoint:sock:sock_rcvqueue_full {{ @rcvq_full = count(); }}
tracepoint:tcp:tcp_retransmit_skb {{ @retrans = count(); }}
tracepoint:syscalls:sys_enter_sendto, tracepoint:syscalls:sys_enter_sendmsg,
tracepoint:syscalls:sys_enter_sendmmsg,
tracepoint:syscalls:sys_enter_write, tracepoint:syscalls:sys_enter_writev {{ @start[tid] = nsecs; }}
tracepoint:sock:sock_send_length /@start[tid] && (args->family == 2 || args->family == 10) && args->protocol == 6/ {{
  @send_us = hist((nsecs - @start[tid]) / 1000); delete(@start[tid]); }}
END {{ clear(@start); }}
"#
    ))
}

/// Sends WRITES writes of WRITE bytes over one loopback connection to a reader
/// thread that drains them; the rate is writes per second.
fn workload() -> Result<WorkResult> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; WRITE];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    let buf = vec![0x5au8; WRITE];
    let t0 = Instant::now();
    for _ in 0..WRITES {
        c.write_all(&buf).context("write")?;
    }
    drop(c);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
        .context("reader")?;
    let secs = t0.elapsed().as_secs_f64();
    if got != WRITES * WRITE as u64 {
        bail!("the reader got {got} bytes of {}", WRITES * WRITE as u64);
    }
    Ok(WorkResult { ops: WRITES, secs })
}

/// 1-byte writes to /dev/null per run of the second phase: what every write() on the
/// host pays while the send-latency hooks are attached (the syscall tracepoint itself
/// plus the program), the worst case for a tracer that hooks write().
const SMALL_WRITES: u64 = 2_000_000;

fn small_writes() -> Result<WorkResult> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    let t0 = Instant::now();
    for _ in 0..SMALL_WRITES {
        f.write_all(&[0u8]).context("write")?;
    }
    Ok(WorkResult {
        ops: SMALL_WRITES,
        secs: t0.elapsed().as_secs_f64(),
    })
}

pub fn run(a: &super::Args) -> Result<()> {
    let observers = [
        Observer::Alone,
        Observer::Tracer(vec!["tcp-pressure".into()]),
        Observer::Bpftrace(bpftrace_script()?),
    ];
    println!(
        "bench tcp-pressure: {WRITES} writes of {} KiB over loopback TCP per run ({} GiB), {} rounds",
        WRITE / 1024,
        (WRITES * WRITE as u64) >> 30,
        a.rounds
    );
    let all = common::interleave(a.rounds, &observers, workload)?;
    let (alone, tracer, _) = common::report(
        "tcp-pressure",
        "writes/s",
        &all,
        &[
            common::throughput_ratio(0.97),
            common::cpu_vs_bpftrace(1.0),
            common::lost_events(),
            Target {
                name: "tracer peak RSS (MiB), for reference",
                cmp: Cmp::AtLeast,
                target: 0.0,
                value: |_, t, _| t.rss_kib / 1024.0,
            },
            Target {
                name: "tracer time to attached (s)",
                cmp: Cmp::AtMost,
                target: 0.3,
                value: |_, t, _| t.attach_s,
            },
        ],
    );
    let gib = |w: f64| w * WRITE as f64 / f64::from(1u32 << 30);
    println!(
        "\nthroughput: alone {:.2} GiB/s, with tracer {:.2} GiB/s",
        gib(alone.rate),
        gib(tracer.rate)
    );

    println!(
        "\nphase 2: {SMALL_WRITES} 1-byte writes to /dev/null per run (not TCP: the cost every write() pays)"
    );
    let all = common::interleave(a.rounds, &observers, small_writes)?;
    let (alone, tracer, bpf) = common::report(
        "tcp-pressure small writes",
        "writes/s",
        &all,
        &[common::lost_events()],
    );
    let ns = |rate: f64| 1e9 / rate;
    println!(
        "\nns per write: alone {:.0}, tracer {:.0} (+{:.0}), bpftrace {}",
        ns(alone.rate),
        ns(tracer.rate),
        ns(tracer.rate) - ns(alone.rate),
        bpf.map(|b| format!("{:.0} (+{:.0})", ns(b.rate), ns(b.rate) - ns(alone.rate)))
            .unwrap_or_else(|| "-".into())
    );
    Ok(())
}
