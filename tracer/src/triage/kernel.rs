//! Kernel log (dmesg | tail): the lines that matter during an incident, counted per
//! kind with the latest of each, from /dev/kmsg records younger than `--since`.
use std::{
    fs::OpenOptions,
    io::{ErrorKind, Read as _, Seek as _, SeekFrom},
    os::unix::fs::OpenOptionsExt as _,
    time::Duration,
};

use super::{Finding, KernelLogRow, Part};
use crate::{output::human_duration, procinfo, snapshot::Level};

/// A kind of kernel message worth a row.
pub struct Pattern {
    pub check: &'static str,
    /// Substrings, any of which marks a line (case-sensitive, as the kernel prints them).
    pub needles: &'static [&'static str],
    /// Substrings that mark a matching line as benign (known noise of healthy hosts).
    pub unless: &'static [&'static str],
    pub level: Level,
    pub next: &'static str,
}

/// In the checklist's spirit: what `dmesg | tail` would make an engineer stop at.
pub const PATTERNS: &[Pattern] = &[
    Pattern {
        check: "OOM kills",
        needles: &[
            "Out of memory: Killed process",
            "invoked oom-killer",
            "Memory cgroup out of memory",
        ],
        unless: &[],
        level: Level::Crit,
        next: "dmesg -T | grep -iE 'oom|killed process' (which cgroup hit its limit, what was killed)",
    },
    Pattern {
        check: "TCP out of memory",
        needles: &["TCP: out of memory"],
        unless: &[],
        level: Level::Crit,
        next: "tracer tcp-pressure (who fills TCP memory, what to set net.ipv4.tcp_mem to)",
    },
    Pattern {
        check: "socket memory pressure",
        needles: &["too many orphaned sockets", "under memory pressure"],
        unless: &[],
        level: Level::Warn,
        next: "tracer tcp-pressure; ss -s; cat /proc/net/sockstat",
    },
    Pattern {
        check: "allocation failures",
        needles: &["page allocation failure"],
        unless: &[],
        level: Level::Warn,
        next: "dmesg -T | grep -A30 'page allocation failure' (order and gfp flags: fragmentation or real shortage); cat /proc/buddyinfo",
    },
    Pattern {
        check: "CPU lockups and stalls",
        needles: &[
            "soft lockup",
            "hard LOCKUP",
            "self-detected stall",
            "rcu_sched detected stalls",
            "rcu_preempt detected stalls",
        ],
        unless: &[],
        level: Level::Crit,
        next: "dmesg -T | grep -iE 'lockup|stall' (the stack shows the looping code); check steal and IRQ load",
    },
    Pattern {
        check: "hung tasks",
        needles: &["blocked for more than", "hung_task"],
        unless: &[],
        level: Level::Warn,
        next: "dmesg -T | grep -A20 'blocked for more than' (the stack shows what it waits on); cat /proc/PID/stack",
    },
    Pattern {
        check: "I/O errors",
        needles: &["I/O error", "critical medium error", "blk_update_request"],
        // Floppy and CD-ROM drives without media (emulated by most hypervisors) log
        // I/O errors when probed at boot: not a disk failing.
        unless: &[" dev fd", " dev sr", "[sr"],
        level: Level::Crit,
        next: "dmesg -T | grep -i 'i/o error' (which device); smartctl -a DEV",
    },
    Pattern {
        check: "filesystem errors",
        needles: &[
            "EXT4-fs error",
            "EXT4-fs critical",
            "Corruption detected",
            "xfs_do_force_shutdown",
            "XFS: Internal error",
        ],
        unless: &[],
        level: Level::Crit,
        next: "dmesg -T | grep -iE 'ext4|xfs' (which filesystem); plan an fsck",
    },
    Pattern {
        check: "no space left",
        needles: &["No space left on device"],
        unless: &[],
        level: Level::Warn,
        next: "df -h; df -i (inodes can run out with blocks free); tracer inodes",
    },
    Pattern {
        check: "fork failures",
        needles: &["fork rejected by pids controller", "fork failed"],
        unless: &[],
        level: Level::Warn,
        next: "tracer zombies --parent (PID headroom); cat pids.max / pids.current of the cgroup",
    },
];

/// One /dev/kmsg record: "PRIO,SEQ,USEC,FLAGS[,...];MESSAGE\n" plus continuation
/// lines that start with a space.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub usec: u64,
    pub msg: String,
}

pub fn parse_record(rec: &str) -> Option<Record> {
    let (head, body) = rec.split_once(';')?;
    let usec = head.split(',').nth(2)?.parse().ok()?;
    let msg = body.lines().next().unwrap_or("").to_string();
    Some(Record { usec, msg })
}

/// Reads every record /dev/kmsg holds now: non-blocking, from the start of the
/// buffer, until EAGAIN. Records overwritten while reading (EPIPE) are skipped.
fn read_kmsg() -> std::io::Result<Vec<Record>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    f.seek(SeekFrom::Start(0))?;
    let mut out = Vec::new();
    // One read returns one record; the kernel caps a record at 8 KiB (CONSOLE_EXT_LOG_MAX).
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(r) = parse_record(&String::from_utf8_lossy(&buf[..n])) {
                    out.push(r);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Whether a line is of this kind and not one of its benign look-alikes.
pub fn matches(p: &Pattern, msg: &str) -> bool {
    p.needles.iter().any(|n| msg.contains(n)) && !p.unless.iter().any(|u| msg.contains(u))
}

/// Count and latest record per pattern, among records younger than `since`.
pub fn classify(
    records: &[Record],
    now_usec: u64,
    since: Duration,
) -> Vec<(&'static Pattern, usize, &Record)> {
    let from = now_usec.saturating_sub(since.as_micros() as u64);
    let mut out = Vec::new();
    for p in PATTERNS {
        let hits: Vec<&Record> = records
            .iter()
            .filter(|r| r.usec >= from && matches(p, &r.msg))
            .collect();
        if let Some(last) = hits.last() {
            out.push((p, hits.len(), *last));
        }
    }
    out
}

/// The kernel log rows, and each kind found with its count and latest line (None
/// when /dev/kmsg is not readable).
pub fn check(since: Duration, part: &mut Part) -> Option<Vec<KernelLogRow>> {
    let since_s = human_duration(since.as_secs_f64());
    let records = match read_kmsg() {
        Ok(r) => r,
        Err(e) => {
            let why = if e.kind() == ErrorKind::PermissionDenied {
                "reading /dev/kmsg is not permitted (kernel.dmesg_restrict=1 allows it to root only): run as root, or with CAP_SYSLOG"
                    .to_string()
            } else {
                format!("reading /dev/kmsg: {e}")
            };
            part.skip("kernel log", why);
            return None;
        }
    };
    // Record times are microseconds of CLOCK_MONOTONIC (the kernel's local clock).
    let now = procinfo::monotonic_ns() / 1000;
    let hits = classify(&records, now, since);
    let mut rows = Vec::new();
    for (p, n, last) in &hits {
        let age = now.saturating_sub(last.usec) as f64 / 1e6;
        part.findings.push(
            Finding::new(
                "kernel",
                p.check,
                format!(
                    "{n} in {since_s}; latest {} ago: {}",
                    human_duration(age),
                    crate::output::truncate(&last.msg, 120)
                ),
                format!("any line in {since_s}"),
                p.level,
            )
            .next(p.next),
        );
        rows.push(KernelLogRow {
            check: p.check.into(),
            count: *n,
            latest: last.msg.clone(),
            latest_age_s: age,
        });
    }
    if hits.is_empty() {
        part.findings.push(Finding::new(
            "kernel",
            "log",
            format!(
                "no OOM, I/O, fs, TCP memory, lockup, hung task or fork errors ({} records)",
                records.len()
            ),
            format!("any such line in {since_s}"),
            Level::Ok,
        ));
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_classify_within_since() {
        let r =
            parse_record("3,1234,5000000,-;Out of memory: Killed process 42 (x)\n SUBSYSTEM=x\n")
                .unwrap();
        assert_eq!(r.usec, 5_000_000);
        assert_eq!(r.msg, "Out of memory: Killed process 42 (x)");
        assert_eq!(parse_record("garbage"), None);
        let recs = vec![
            r,
            parse_record("6,1,9000000,-;EXT4-fs (loop0): mounted filesystem").unwrap(),
            parse_record("3,2,9500000,-;TCP: out of memory -- consider tuning tcp_mem").unwrap(),
            parse_record("0,3,7000000,-;watchdog: BUG: soft lockup - CPU#1 stuck for 22s!")
                .unwrap(),
        ];
        let hits = classify(&recs, 10_000_000, Duration::from_secs(10));
        let checks: Vec<_> = hits.iter().map(|(p, n, _)| (p.check, *n)).collect();
        assert_eq!(
            checks,
            vec![
                ("OOM kills", 1),
                ("TCP out of memory", 1),
                ("CPU lockups and stalls", 1)
            ]
        );
        // Media-less floppy and CD-ROM drives probed at boot: benign.
        let io = PATTERNS.iter().find(|p| p.check == "I/O errors").unwrap();
        assert!(!matches(
            io,
            "blk_update_request: I/O error, dev fd0, sector 0"
        ));
        assert!(!matches(
            io,
            "Buffer I/O error on dev sr0, logical block 0, async page read"
        ));
        assert!(matches(
            io,
            "I/O error, dev sda, sector 2048 op 0x1:(WRITE)"
        ));
        assert!(matches(
            io,
            "Buffer I/O error on dev vda1, logical block 12"
        ));
        // The OOM line is 5 s old: a 2 s lookback leaves only the TCP line.
        let hits = classify(&recs, 10_000_000, Duration::from_secs(2));
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0.check, "TCP out of memory");
    }
}
