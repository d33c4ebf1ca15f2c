//! TCP socket memory: `net.ipv4.tcp_mem`, the pages TCP holds now
//! (/proc/net/sockstat), and the TcpExt counters that tell memory pressure happened
//! (/proc/net/netstat).
use std::{collections::BTreeMap, fs};

use anyhow::{Context, Result};

pub const TCP_MEM: &str = "/proc/sys/net/ipv4/tcp_mem";
pub const SOCKSTAT: &str = "/proc/net/sockstat";
pub const NETSTAT: &str = "/proc/net/netstat";

/// The TcpExt counters about memory pressure, in the order reports show them.
pub const PRESSURE_COUNTERS: &[&str] = &[
    "TCPMemoryPressures",
    "TCPMemoryPressuresChrono",
    "PruneCalled",
    "RcvPruned",
    "OfoPruned",
    "TCPRcvQDrop",
    "TCPAbortOnMemory",
    "TCPRcvCollapsed",
];

/// `net.ipv4.tcp_mem` in pages: below `low` no pressure; above `pressure` the kernel
/// trims buffers; `high` is the hard limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpMem {
    pub low: u64,
    pub pressure: u64,
    pub high: u64,
}

impl TcpMem {
    pub fn read() -> Result<TcpMem> {
        let s = fs::read_to_string(TCP_MEM).with_context(|| format!("reading {TCP_MEM}"))?;
        TcpMem::parse(&s).with_context(|| format!("parsing {TCP_MEM}: {s:?}"))
    }

    pub fn parse(s: &str) -> Option<TcpMem> {
        let [low, pressure, high] = triple(s)?;
        Some(TcpMem {
            low,
            pressure,
            high,
        })
    }
}

/// Parses the three numbers of a triple sysctl (tcp_mem, tcp_rmem, tcp_wmem).
pub fn triple(s: &str) -> Option<[u64; 3]> {
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Pages all TCP sockets hold now: the `mem` field of the TCP line of sockstat.
pub fn mem_pages() -> Result<u64> {
    let s = fs::read_to_string(SOCKSTAT).with_context(|| format!("reading {SOCKSTAT}"))?;
    parse_sockstat_mem(&s).with_context(|| format!("no TCP mem in {SOCKSTAT}"))
}

pub fn parse_sockstat_mem(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// All TcpExt counters by name.
pub fn tcp_ext() -> Result<BTreeMap<String, u64>> {
    let s = fs::read_to_string(NETSTAT).with_context(|| format!("reading {NETSTAT}"))?;
    Ok(parse_netstat(&s, "TcpExt:"))
}

/// The name/value line pairs of /proc/net/netstat (or /proc/net/snmp) for one prefix.
pub fn parse_netstat(s: &str, prefix: &str) -> BTreeMap<String, u64> {
    let mut lines = s.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return BTreeMap::new();
    };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect()
}

/// Everything at once, for reports that show TCP memory beside other findings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Snapshot {
    pub tcp_mem: TcpMem,
    pub mem_pages: u64,
    pub page_size: u64,
    /// The PRESSURE_COUNTERS this kernel has (cumulative since boot).
    pub counters: BTreeMap<String, u64>,
}

impl Snapshot {
    pub fn read() -> Result<Snapshot> {
        let ext = tcp_ext()?;
        Ok(Snapshot {
            tcp_mem: TcpMem::read()?,
            mem_pages: mem_pages()?,
            page_size: page_size(),
            counters: PRESSURE_COUNTERS
                .iter()
                .filter_map(|&n| Some((n.to_string(), *ext.get(n)?)))
                .collect(),
        })
    }

    /// Current pages as a percentage of the pressure threshold.
    pub fn pressure_pct(&self) -> f64 {
        super::pct(self.mem_pages, self.tcp_mem.pressure)
    }
}

pub fn page_size() -> u64 {
    procfs::page_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_sources() {
        assert_eq!(
            TcpMem::parse("287898\t383867\t575796\n"),
            Some(TcpMem {
                low: 287898,
                pressure: 383867,
                high: 575796
            })
        );
        assert_eq!(TcpMem::parse("1 2"), None);
        let sockstat =
            "sockets: used 13\nTCP: inuse 1 orphan 0 tw 0 alloc 1 mem 166\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_mem(sockstat), Some(166));
        let netstat =
            "TcpExt: PruneCalled TCPMemoryPressures\nTcpExt: 4 7\nIpExt: InNoRoutes\nIpExt: 1\n";
        let m = parse_netstat(netstat, "TcpExt:");
        assert_eq!(m["PruneCalled"], 4);
        assert_eq!(m["TCPMemoryPressures"], 7);
        assert_eq!(m.len(), 2);
    }
}
