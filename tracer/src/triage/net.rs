//! Network: per interface throughput, errors and drops (sar -n DEV, sar -n EDEV), and
//! TCP opens and retransmits (sar -n TCP,ETCP), as rates over the window.
use std::collections::HashMap;

use procfs::net::{DeviceStatus, Snmp};

use super::{Finding, InterfaceRow, NetworkSection, Part, Tcp, Window, judge, rows::round1};
use crate::snapshot::{Level, pct};

pub struct Before {
    dev: HashMap<String, DeviceStatus>,
    snmp: Option<Snmp>,
}

impl Before {
    pub fn read() -> Before {
        Before {
            dev: procfs::net::dev_status().unwrap_or_default(),
            snmp: procfs::net::snmp().ok(),
        }
    }
}

/// Link speed in Mbit/s when the driver reports one (virtual links report -1 or none).
fn speed_mbit(iface: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/speed")).ok()?;
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|&v| v > 0)
        .map(|v| v as u64)
}

/// The interface row's threshold, as the report states it.
pub const ERRORS_THRESHOLD: &str = "errors >= 1/s warn, 100/s crit; drops >= 1% of packets warn, 5% crit (>= 10 drops/s); link >= 70% warn, 90% crit";

/// Errors (CRC, FIFO, carrier) are faults at any steady rate. Drops are not: healthy
/// hosts count frames of protocols nothing listens to (LLDP, STP) as rx drops, a few a
/// second; drops matter as a share of the traffic, at a rate that is not that noise.
pub fn errors_level(errs_per_s: f64, drops_per_s: f64, pkts_per_s: f64) -> Level {
    let errs = judge(errs_per_s, 1.0, 100.0);
    let drops = if drops_per_s >= 10.0 {
        judge(pct_f(drops_per_s, pkts_per_s + drops_per_s), 1.0, 5.0)
    } else {
        Level::Ok
    };
    errs.max(drops)
}

fn pct_f(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        0.0
    } else {
        part * 100.0 / whole
    }
}

/// The network rows, and what they measured.
pub fn check(before: Before, w: Window, part: &mut Part) -> NetworkSection {
    let interfaces = interfaces(part, &before.dev, w);
    let tcp = match (before.snmp, procfs::net::snmp()) {
        (Some(a), Ok(b)) => Some(tcp(part, &a, &b, w)),
        (_, Err(e)) => {
            part.skip("tcp counters", format!("reading /proc/net/snmp: {e}"));
            None
        }
        (None, Ok(_)) => {
            part.skip(
                "tcp counters",
                "/proc/net/snmp was not readable at the start of the window",
            );
            None
        }
    };
    NetworkSection { interfaces, tcp }
}

/// Per interface but lo with traffic: throughput, errors and drops (sar -n DEV,EDEV).
fn interfaces(
    part: &mut Part,
    before: &HashMap<String, DeviceStatus>,
    w: Window,
) -> Vec<InterfaceRow> {
    let after = procfs::net::dev_status().unwrap_or_default();
    let mut names: Vec<&String> = after.keys().filter(|n| n.as_str() != "lo").collect();
    names.sort();
    let mut ifaces = Vec::new();
    for name in names {
        let (Some(a), Some(b)) = (before.get(name), after.get(name)) else {
            continue;
        };
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / w.secs;
        let rx = d(a.recv_bytes, b.recv_bytes);
        let tx = d(a.sent_bytes, b.sent_bytes);
        let pkts = d(a.recv_packets, b.recv_packets) + d(a.sent_packets, b.sent_packets);
        let errs = d(a.recv_errs, b.recv_errs) + d(a.sent_errs, b.sent_errs);
        let drops = d(a.recv_drop, b.recv_drop) + d(a.sent_drop, b.sent_drop);
        if pkts == 0.0 && errs == 0.0 && drops == 0.0 {
            continue; // sar shows idle interfaces; the table does not need them
        }
        let speed = speed_mbit(name);
        let util = speed.map(|s| (rx.max(tx) * 8.0 / (s as f64 * 1e6)) * 100.0);
        let err_level = errors_level(errs, drops, pkts);
        let util_level = util.map(|u| judge(u, 70.0, 90.0)).unwrap_or(Level::Ok);
        part.findings.push(
            Finding::new(
                "network",
                "interface",
                format!(
                    "rx {:.2} MB/s, tx {:.2} MB/s{}, errors {errs:.1}/s, drops {drops:.1}/s",
                    rx / 1e6,
                    tx / 1e6,
                    util.map(|u| format!(" ({u:.0}% of {} Mbit/s)", speed.unwrap_or(0)))
                        .unwrap_or_default()
                ),
                ERRORS_THRESHOLD,
                err_level.max(util_level),
            )
            .subject(name.as_str())
            .next(format!(
                "sar -n DEV,EDEV 1; ip -s link show {name}; ethtool -S {name}"
            )),
        );
        ifaces.push(InterfaceRow {
            interface: name.clone(),
            rx_bytes_per_s: round1(rx),
            tx_bytes_per_s: round1(tx),
            errors_per_s: round1(errs),
            drops_per_s: round1(drops),
            speed_mbit: speed,
            util_pct: util.map(round1),
        });
    }
    if ifaces.is_empty() {
        part.findings.push(Finding::new(
            "network",
            "interface",
            "no traffic on any interface but lo",
            ERRORS_THRESHOLD,
            Level::Ok,
        ));
    }
    ifaces
}

/// TCP opens, resets and retransmits over the window (sar -n TCP,ETCP).
fn tcp(part: &mut Part, a: &Snmp, b: &Snmp, w: Window) -> Tcp {
    let d = |x: u64, y: u64| y.saturating_sub(x);
    let active = d(a.tcp_active_opens, b.tcp_active_opens) as f64 / w.secs;
    let passive = d(a.tcp_passive_opens, b.tcp_passive_opens) as f64 / w.secs;
    let out = d(a.tcp_out_segs, b.tcp_out_segs);
    let retrans = d(a.tcp_retrans_segs, b.tcp_retrans_segs);
    let ratio = pct(retrans, out);
    let resets = d(a.tcp_estab_resets, b.tcp_estab_resets) as f64 / w.secs;
    part.findings.push(Finding::new(
        "network",
        "tcp connections",
        format!(
            "active opens {active:.1}/s, passive opens {passive:.1}/s, {} established, resets {resets:.1}/s",
            b.tcp_curr_estab
        ),
        "load indicator, not judged",
        Level::Ok,
    ));
    // A ratio over a handful of segments says nothing: judge from 100 up.
    let level = if out >= 100 {
        judge(ratio, 1.0, 5.0)
    } else {
        Level::Ok
    };
    part.findings.push(
        Finding::new(
            "network",
            "tcp retransmits",
            format!(
                "{:.1}/s, {ratio:.2}% of {out} segments sent",
                retrans as f64 / w.secs
            ),
            "ratio >= 1% warn, 5% crit (>= 100 segments)",
            level,
        )
        .next("sar -n TCP,ETCP 1; tcpretrans (which connections); ss -ti"),
    );
    Tcp {
        active_opens_per_s: round1(active),
        passive_opens_per_s: round1(passive),
        established: b.tcp_curr_estab,
        retrans_per_s: round1(retrans as f64 / w.secs),
        retrans_pct: (ratio * 100.0).round() / 100.0,
        out_segs: out,
        estab_resets_per_s: round1(resets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_unknown_protocol_drops_are_noise_errors_are_not() {
        // STP/LLDP frames nobody listens to, on an idle link.
        assert_eq!(errors_level(0.0, 2.0, 3.0), Level::Ok);
        // 20 drops/s of 100k packets/s: 0.02%.
        assert_eq!(errors_level(0.0, 20.0, 100_000.0), Level::Ok);
        assert_eq!(errors_level(0.0, 50.0, 2_000.0), Level::Warn);
        assert_eq!(errors_level(0.0, 500.0, 2_000.0), Level::Crit);
        assert_eq!(errors_level(2.0, 0.0, 1_000.0), Level::Warn);
    }
}
