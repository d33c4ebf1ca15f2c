//! Disk: per device IOPS, throughput, average wait and utilization over the window
//! (iostat -xz), and PSI io. %util is time with at least one request in flight: on
//! SSD/NVMe, which serve many requests in parallel, 100% does not mean saturated, so
//! there the row is judged by await and %util alone never makes it crit.
use std::path::Path;

use procfs::{Current as _, DiskStat, IoPressure};
use serde_json::json;

use super::{Finding, Part, Window, cpu::round1, judge};
use crate::snapshot::Level;

pub struct Before {
    disks: Vec<DiskStat>,
    psi: Option<u64>,
}

impl Before {
    pub fn read() -> Before {
        Before {
            disks: procfs::diskstats().unwrap_or_default(),
            psi: IoPressure::current().ok().map(|p| p.some.total),
        }
    }
}

/// Whole disks from /sys/block, without loop and ram devices (which mirror files and
/// memory, and whose activity shows on the disk underneath).
fn wanted(name: &str) -> bool {
    !name.starts_with("loop")
        && !name.starts_with("ram")
        && Path::new("/sys/block").join(name).exists()
}

fn rotational(name: &str) -> bool {
    crate::procinfo::read_u64(&format!("/sys/block/{name}/queue/rotational")) == Some(1)
}

pub fn findings(before: Before, w: Window) -> Part {
    let mut part = Part::default();
    let after = procfs::diskstats().unwrap_or_default();
    let mut devices = Vec::new();
    for b in after.iter().filter(|d| wanted(&d.name)) {
        let Some(a) = before.disks.iter().find(|d| d.name == b.name) else {
            continue;
        };
        let d = |x: u64, y: u64| y.saturating_sub(x);
        let reads = d(a.reads, b.reads);
        let writes = d(a.writes, b.writes);
        let ios = reads + writes;
        if ios == 0 {
            continue; // iostat -z: idle devices are left out
        }
        let sectors = d(a.sectors_read, b.sectors_read) + d(a.sectors_written, b.sectors_written);
        let wait_ms = d(a.time_reading, b.time_reading) + d(a.time_writing, b.time_writing);
        let busy_ms = d(a.time_in_progress, b.time_in_progress);
        let iops = ios as f64 / w.secs;
        let mb_s = sectors as f64 * 512.0 / w.secs / 1e6;
        let await_ms = wait_ms as f64 / ios as f64;
        let util = (busy_ms as f64 / (w.secs * 1000.0) * 100.0).min(100.0);
        let rot = rotational(&b.name);
        let await_level = judge(await_ms, 20.0, 100.0);
        let util_level = if rot {
            judge(util, 60.0, 90.0)
        } else {
            judge(util, 90.0, f64::INFINITY)
        };
        part.findings.push(
            Finding::new(
                "disk",
                "io",
                format!(
                    "{iops:.0} IOPS (r {:.0} w {:.0}), {mb_s:.1} MB/s, await {await_ms:.1} ms, %util {util:.0}{}",
                    reads as f64 / w.secs,
                    writes as f64 / w.secs,
                    if rot { "" } else { " (SSD/NVMe: %util misleads)" }
                ),
                if rot {
                    "await >= 20 ms warn, 100 crit; %util >= 60 warn, 90 crit"
                } else {
                    "await >= 20 ms warn, 100 crit; %util >= 90 warn"
                },
                await_level.max(util_level),
            )
            .subject(&b.name)
            .next(format!("iostat -xz 1 {}; biolatency / biotop for who and how slow", b.name)),
        );
        devices.push(json!({"device": b.name, "iops": round1(iops), "reads_per_s": round1(reads as f64 / w.secs),
            "writes_per_s": round1(writes as f64 / w.secs), "mb_per_s": round1(mb_s), "await_ms": round1(await_ms),
            "util_pct": round1(util), "rotational": rot}));
    }
    if devices.is_empty() {
        part.findings.push(Finding::new(
            "disk",
            "io",
            "no disk I/O in the window",
            "await >= 20 ms warn, 100 crit",
            Level::Ok,
        ));
    }
    part.json.insert("disks".into(), json!(devices));
    super::psi(
        &mut part,
        "disk",
        "/proc/pressure/io",
        before.psi,
        IoPressure::current().map(|p| p.some),
        w,
        "cat /proc/pressure/io; iostat -xz 1; per cgroup: io.pressure",
    );
    part
}
