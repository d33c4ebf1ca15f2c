//! Disk: per device IOPS, throughput, average wait and utilization over the window
//! (iostat -xz), and PSI io. %util is time with at least one request in flight: on
//! SSD/NVMe, which serve many requests in parallel, 100% does not mean saturated, so
//! there the row is judged by await and %util alone never makes it crit.
use std::path::Path;

use procfs::{Current as _, DiskStat, IoPressure};

use super::{DiskRow, DiskSection, Finding, Part, Window, judge, rows::round1};
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

/// The await part of the disk row's threshold, as the report states it.
pub const AWAIT_THRESHOLD: &str =
    "read await, and write await when writes average < 256 KiB: >= 20 ms warn, 100 crit";

/// Writes average at least this much (KiB) in a streaming (bulk) write.
const STREAMING_WRITE_KIB: f64 = 256.0;

/// Await by direction. Reads are what tasks wait on; small writes (databases, logs
/// with fsync) too. A bulk write (a copy, a backup, a dump with fsync) sends large
/// merged requests that queue behind each other by design: on a healthy disk each
/// takes its transfer time plus the queue (70 ms seen for 4 MiB requests at 270 MB/s),
/// which is throughput, not a slow disk.
pub fn await_level(reads: u64, r_await: f64, writes: u64, w_await: f64, w_kib: f64) -> Level {
    let r = if reads > 0 {
        judge(r_await, 20.0, 100.0)
    } else {
        Level::Ok
    };
    let w = if writes > 0 && w_kib < STREAMING_WRITE_KIB {
        judge(w_await, 20.0, 100.0)
    } else {
        Level::Ok
    };
    r.max(w)
}

pub const IO_PSI_THRESHOLD: &str = "a disk short (its await or %util row warn or crit): some >= 10% warn, 40% crit; no disk short: some >= 40% warn";

/// PSI io "some" (share of the window with a task stalled on I/O). On a disk that
/// keeps up, writers still stall briefly in dirty-page throttling and fsync: 10% was
/// seen here during a 90 MB/s copy at 18% util and 2 ms await. Only a disk that is
/// short (slow or saturated by its own row) makes 10% evidence.
pub fn io_psi_level(pct: f64, short: bool) -> Level {
    if short {
        judge(pct, 10.0, 40.0)
    } else {
        judge(pct, 40.0, f64::INFINITY)
    }
}

/// The disk rows, and what they measured.
pub fn check(before: Before, w: Window, part: &mut Part) -> DiskSection {
    let after = procfs::diskstats().unwrap_or_default();
    let devices: Vec<DiskRow> = (after.iter().filter(|d| wanted(&d.name)))
        .filter_map(|b| {
            let a = before.disks.iter().find(|d| d.name == b.name)?;
            device(part, a, b, w)
        })
        .collect();
    if devices.is_empty() {
        part.findings.push(Finding::new(
            "disk",
            "io",
            "no disk I/O in the window",
            AWAIT_THRESHOLD,
            Level::Ok,
        ));
    }
    // The device rows were just pushed as findings; a disk is short when its row is.
    let short = (part.findings.iter())
        .any(|f| f.resource == "disk" && f.check == "io" && f.level != Level::Ok);
    let disk_psi_some_pct = super::psi_judged(
        part,
        "disk",
        "/proc/pressure/io",
        before.psi,
        IoPressure::current().map(|p| p.some),
        w,
        "cat /proc/pressure/io; iostat -xz 1; per cgroup: io.pressure",
        |pct| (io_psi_level(pct, short), IO_PSI_THRESHOLD.into()),
    );
    DiskSection {
        disks: devices,
        disk_psi_some_pct,
    }
}

/// One disk's row over the window from its counters at both ends (iostat -xz); None
/// when it was idle.
fn device(part: &mut Part, a: &DiskStat, b: &DiskStat, w: Window) -> Option<DiskRow> {
    let d = |x: u64, y: u64| y.saturating_sub(x);
    let reads = d(a.reads, b.reads);
    let writes = d(a.writes, b.writes);
    let ios = reads + writes;
    if ios == 0 {
        return None; // iostat -z: idle devices are left out
    }
    let sectors = d(a.sectors_read, b.sectors_read) + d(a.sectors_written, b.sectors_written);
    let wait_ms = d(a.time_reading, b.time_reading) + d(a.time_writing, b.time_writing);
    let busy_ms = d(a.time_in_progress, b.time_in_progress);
    let iops = ios as f64 / w.secs;
    let mb_s = sectors as f64 * 512.0 / w.secs / 1e6;
    let await_ms = wait_ms as f64 / ios as f64;
    let r_await = d(a.time_reading, b.time_reading) as f64 / reads.max(1) as f64;
    let w_await = d(a.time_writing, b.time_writing) as f64 / writes.max(1) as f64;
    let w_kib = d(a.sectors_written, b.sectors_written) as f64 / 2.0 / writes.max(1) as f64;
    let util = (busy_ms as f64 / (w.secs * 1000.0) * 100.0).min(100.0);
    let rot = rotational(&b.name);
    let await_level = await_level(reads, r_await, writes, w_await, w_kib);
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
                "{iops:.0} IOPS (r {:.0} w {:.0}), {mb_s:.1} MB/s, await {await_ms:.1} ms (r {r_await:.1} w {w_await:.1}, writes avg {w_kib:.0} KiB), %util {util:.0}{}",
                reads as f64 / w.secs,
                writes as f64 / w.secs,
                if rot { "" } else { " (SSD/NVMe: %util misleads)" }
            ),
            if rot {
                format!("{AWAIT_THRESHOLD}; %util >= 60 warn, 90 crit")
            } else {
                format!("{AWAIT_THRESHOLD}; %util >= 90 warn")
            },
            await_level.max(util_level),
        )
        .subject(&b.name)
        .next(format!("iostat -xz 1 {}; biolatency / biotop for who and how slow", b.name)),
    );
    Some(DiskRow {
        device: b.name.clone(),
        iops: round1(iops),
        reads_per_s: round1(reads as f64 / w.secs),
        writes_per_s: round1(writes as f64 / w.secs),
        mb_per_s: round1(mb_s),
        await_ms: round1(await_ms),
        r_await_ms: round1(r_await),
        w_await_ms: round1(w_await),
        write_kib_avg: round1(w_kib),
        util_pct: round1(util),
        rotational: rot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_write_queues_by_design_slow_reads_and_small_writes_do_not() {
        // 1 GiB written with fsync: 4 MiB requests, 72 ms await, no reads.
        assert_eq!(await_level(0, 0.0, 260, 72.5, 4096.0), Level::Ok);
        assert_eq!(await_level(10, 30.0, 260, 72.5, 4096.0), Level::Warn);
        assert_eq!(await_level(0, 0.0, 500, 150.0, 8.0), Level::Crit);
        assert_eq!(await_level(100, 0.4, 500, 2.0, 8.0), Level::Ok);
    }

    #[test]
    fn io_stalls_are_evidence_only_on_a_disk_that_is_short() {
        // A copy at 90 MB/s, 18% util and 2.1 ms await stalled writers 10.0% of a 4 s
        // window here: not evidence while the disk keeps up.
        assert_eq!(io_psi_level(10.0, false), Level::Ok);
        assert_eq!(io_psi_level(39.9, false), Level::Ok);
        assert_eq!(io_psi_level(40.0, false), Level::Warn);
        assert_eq!(io_psi_level(10.0, true), Level::Warn);
        assert_eq!(io_psi_level(40.0, true), Level::Crit);
    }
}
