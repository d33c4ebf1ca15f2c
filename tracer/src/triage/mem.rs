//! Memory: available (not free) vs total (free -m), swap in/out and major faults per
//! second (vmstat si/so, sar -B), OOM kills in the window, PSI memory.
use std::collections::HashMap;

use procfs::{Current as _, Meminfo, MemoryPressure};

use super::{Finding, Memory, MemorySection, Part, Window, judge, rows::round1};
use crate::snapshot::{Level, pct};

/// /proc/vmstat counters at the start of the window.
pub struct Before {
    vmstat: HashMap<String, i64>,
    psi: Option<u64>,
}

impl Before {
    pub fn read() -> Before {
        Before {
            vmstat: procfs::vmstat().unwrap_or_default(),
            psi: MemoryPressure::current().ok().map(|p| p.some.total),
        }
    }
}

/// Per-second rate of a /proc/vmstat counter over the window (None when missing).
fn rate(a: &HashMap<String, i64>, b: &HashMap<String, i64>, key: &str, secs: f64) -> Option<f64> {
    Some((b.get(key)? - a.get(key)?).max(0) as f64 / secs)
}

/// The swapping row's threshold, as the report states it.
pub const SWAP_THRESHOLD: &str = "swap-in >= 10 pages/s warn; in+out >= 1000 pages/s crit";

/// Swapping over the window. Swap-out alone is the kernel moving idle anonymous pages
/// out to make room for page cache, which healthy hosts with swap do under ordinary
/// disk writes; swap-in is tasks waiting for their pages to come back (the working set
/// does not fit). A page or two over the window is neither.
pub fn swap_level(si: f64, so: f64) -> Level {
    if si + so >= 1000.0 {
        Level::Crit
    } else if si >= 10.0 {
        Level::Warn
    } else {
        Level::Ok
    }
}

/// The memory rows, and what they measured.
pub fn check(before: Before, w: Window, part: &mut Part) -> MemorySection {
    let after = procfs::vmstat().unwrap_or_default();
    let memory = available(part);
    swapping(part, &before.vmstat, &after, w);
    let memory_psi_some_pct = super::psi(
        part,
        "memory",
        "/proc/pressure/memory",
        before.psi,
        MemoryPressure::current().map(|p| p.some),
        w,
        "cat /proc/pressure/memory; per cgroup: memory.pressure; vmstat 1",
    );
    MemorySection {
        memory,
        memory_psi_some_pct,
    }
}

/// Memory available (free -m), and the totals.
fn available(part: &mut Part) -> Option<Memory> {
    match Meminfo::current() {
        Ok(m) => {
            let total = m.mem_total;
            // MemAvailable: what can be allocated without swapping (free + reclaimable
            // cache); MemFree alone looks alarming on every healthy Linux host.
            let avail = m.mem_available.unwrap_or(m.mem_free + m.cached);
            let avail_pct = pct(avail, total);
            part.findings.push(
                Finding::new(
                    "memory",
                    "available",
                    format!(
                        "{} MiB of {} MiB available ({avail_pct:.0}%)",
                        avail >> 20,
                        total >> 20
                    ),
                    "available <= 10% warn, 5% crit",
                    judge(100.0 - avail_pct, 90.0, 95.0),
                )
                .next("free -m; top -o RES (who holds it); slabtop; check memory cgroup limits"),
            );
            Some(Memory {
                total_bytes: total,
                available_bytes: avail,
                available_pct: round1(avail_pct),
                swap_total_bytes: m.swap_total,
                swap_used_bytes: m.swap_total.saturating_sub(m.swap_free),
            })
        }
        Err(e) => {
            part.skip("memory available", format!("reading /proc/meminfo: {e}"));
            None
        }
    }
}

/// Swapping, major faults and OOM kills over the window (vmstat, sar -B).
fn swapping(part: &mut Part, a: &HashMap<String, i64>, after: &HashMap<String, i64>, w: Window) {
    let f = &mut part.findings;
    if let (Some(si), Some(so)) = (
        rate(a, after, "pswpin", w.secs),
        rate(a, after, "pswpout", w.secs),
    ) {
        f.push(
            Finding::new(
                "memory",
                "swapping",
                format!("in {si:.1} pages/s, out {so:.1} pages/s"),
                SWAP_THRESHOLD,
                swap_level(si, so),
            )
            .next("vmstat 1 (si/so); memory is short: see memory available and who holds it"),
        );
    }
    if let Some(majflt) = rate(a, after, "pgmajfault", w.secs) {
        f.push(
            Finding::new(
                "memory",
                "major faults",
                format!("{majflt:.1}/s (pages read from disk on access)"),
                ">= 100/s warn, 1000/s crit",
                judge(majflt, 100.0, 1000.0),
            )
            .next("sar -B 1; pidstat -r 1 (majflt/s per process): the working set does not fit"),
        );
    }
    if let (Some(x), Some(y)) = (a.get("oom_kill"), after.get("oom_kill")) {
        let n = (y - x).max(0);
        f.push(
            Finding::new(
                "memory",
                "OOM kills in window",
                n.to_string(),
                "> 0 crit",
                if n > 0 { Level::Crit } else { Level::Ok },
            )
            .next(
                "dmesg -T | grep -i 'killed process' (who was killed, which cgroup hit its limit)",
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_out_of_idle_pages_is_not_a_finding_swap_in_is() {
        assert_eq!(swap_level(0.0, 0.0), Level::Ok);
        // One page in over a 5 s window, reclaim writing idle pages out.
        assert_eq!(swap_level(0.2, 300.0), Level::Ok);
        assert_eq!(swap_level(12.0, 0.0), Level::Warn);
        assert_eq!(swap_level(200.0, 900.0), Level::Crit);
    }
}
