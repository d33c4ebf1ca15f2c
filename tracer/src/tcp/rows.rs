//! The tcp-pressure tables, each row defined once: serialized for JSON, `cells()` for
//! the text table; and [`human_bytes`], the byte counts of their cells.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{
    culprits::Culprit,
    episodes::{Entry, Episode},
    sockets::Sock,
};
use crate::{
    output::{Row, human_duration, serialize_round3},
    snapshot::tcpmem::TcpMem,
};

/// One episode of TCP memory pressure: an element of `episodes`, a row of EPISODES.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeRow {
    /// 1-based number (text only).
    #[serde(skip)]
    pub n: usize,
    /// Page size, to show the peak in bytes (text only).
    #[serde(skip)]
    pub page_size: u64,
    /// Since the tracer started.
    #[serde(serialize_with = "serialize_round3")]
    pub start_s: f64,
    pub duration_ms: Option<u64>,
    pub peak_pages: u64,
    pub refusals: u64,
    pub started_by: Cow<'static, str>,
    pub tcp_mem: Option<TcpMem>,
    pub kernel_ms: Option<u64>,
    pub kernel_entries: Option<u64>,
    pub end_exact: bool,
    pub entered_by: Option<Entry>,
}

impl EpisodeRow {
    /// Episode `i` (0-based) that started `start_s` after the tracer.
    pub fn new(i: usize, e: &Episode, start_s: f64, page_size: u64) -> Self {
        Self {
            n: i + 1,
            page_size,
            start_s,
            duration_ms: e.duration_ms(),
            peak_pages: e.peak_pages,
            refusals: e.refusals,
            started_by: e.started_by.as_str().into(),
            tcp_mem: e.tcp_mem,
            kernel_ms: e.kernel_ms,
            kernel_entries: e.kernel_entries,
            end_exact: e.end_exact,
            entered_by: e.entered_by.clone(),
        }
    }

    /// Who started it: whose socket crossed the limit (fentry), else the task that ran.
    fn started_by_text(&self) -> String {
        match &self.entered_by {
            Some(w) => match (w.socket_owner_pid, &w.socket_owner_comm) {
                (Some(p), Some(c)) => format!("{} (socket of {p} {c})", self.started_by),
                _ => format!("{} (task {} {})", self.started_by, w.pid, w.comm),
            },
            None => self.started_by.to_string(),
        }
    }
}

impl Row for EpisodeRow {
    const HEADER: &'static [&'static str] = &[
        "#",
        "START",
        "DURATION",
        "PEAK PAGES",
        "PEAK",
        "REFUSALS",
        "KERNEL MS",
        "STARTED BY",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.n.to_string(),
            format!("+{:.1}s", self.start_s),
            self.duration_ms
                .map(|d| human_duration(d as f64 / 1e3))
                .unwrap_or_else(|| "open".into()),
            self.peak_pages.to_string(),
            human_bytes(self.peak_pages * self.page_size),
            self.refusals.to_string(),
            self.kernel_ms
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            self.started_by_text(),
        ]
    }
}

/// A process whose TCP allocations were refused: an element of `culprits`, a row of
/// CULPRITS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CulpritRow {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub cgroup: crate::container::InCgroup,
    pub refusals: u64,
    pub send: u64,
    pub recv: u64,
    /// send, recv or send+recv.
    pub kind: Cow<'static, str>,
    pub sockets: usize,
    pub by_current_task: u64,
    pub max_rmem_bytes: u64,
    pub max_wmem_bytes: u64,
}

impl CulpritRow {
    pub fn new(pid: u32, c: &Culprit) -> Self {
        Self {
            pid,
            comm: c.comm.clone(),
            cgroup: c.cgroup.clone().into(),
            refusals: c.refusals(),
            send: c.send,
            recv: c.recv,
            kind: c.kind().into(),
            sockets: c.sockets.len(),
            by_current_task: c.by_context,
            max_rmem_bytes: c.max_rmem,
            max_wmem_bytes: c.max_wmem,
        }
    }
}

impl Row for CulpritRow {
    const HEADER: &'static [&'static str] = &[
        "PID",
        "COMM",
        "REFUSALS",
        "SEND",
        "RECV",
        "KIND",
        "SOCKETS",
        "MAX RECV Q",
        "MAX SEND Q",
        "CGROUP",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.pid.to_string(),
            self.comm.clone(),
            self.refusals.to_string(),
            self.send.to_string(),
            self.recv.to_string(),
            self.kind.to_string(),
            self.sockets.to_string(),
            human_bytes(self.max_rmem_bytes),
            human_bytes(self.max_wmem_bytes),
            self.cgroup.text(),
        ]
    }
}

/// A process holding TCP socket memory: an element of `holders`, a row of HOLDERS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HolderRow {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub cgroup: crate::container::InCgroup,
    pub sockets: usize,
    pub rmem_bytes: u64,
    pub wmem_bytes: u64,
    pub held_bytes: u64,
}

impl Row for HolderRow {
    const HEADER: &'static [&'static str] = &[
        "PID", "COMM", "SOCKETS", "RECV Q", "SEND Q", "HELD", "CGROUP",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.pid.to_string(),
            self.comm.clone(),
            self.sockets.to_string(),
            human_bytes(self.rmem_bytes),
            human_bytes(self.wmem_bytes),
            human_bytes(self.held_bytes),
            self.cgroup.text(),
        ]
    }
}

/// One of the largest sockets: an element of `top_sockets.sockets` (the socket's own
/// fields, then its owner's comm and the bytes it holds), a row of TOP SOCKETS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SockRow {
    #[serde(flatten)]
    pub sock: Sock,
    pub comm: Option<String>,
    pub held_bytes: u64,
}

impl Row for SockRow {
    const HEADER: &'static [&'static str] = &[
        "LOCAL", "PEER", "STATE", "RECV Q", "RCVBUF", "SEND Q", "SNDBUF", "HELD", "PID", "COMM",
    ];

    fn cells(&self) -> Vec<String> {
        let s = &self.sock;
        let dash = || "-".to_string();
        vec![
            s.local.to_string(),
            s.peer.to_string(),
            s.state.to_string(),
            human_bytes(s.rmem),
            s.rcvbuf.map(human_bytes).unwrap_or_else(dash),
            human_bytes(s.wmem),
            s.sndbuf.map(human_bytes).unwrap_or_else(dash),
            human_bytes(self.held_bytes),
            s.pid.map(|p| p.to_string()).unwrap_or_else(dash),
            self.comm.clone().unwrap_or_else(dash),
        ]
    }
}

/// 512 B, 4.0 KiB, 3.0 MiB, 1.50 GiB.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else {
        format!("{:.2} GiB", b / 1073741824.0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn episode_json_keys_and_started_by_cell() {
        let mut e = EpisodeRow {
            n: 2,
            page_size: 4096,
            start_s: 1.04951,
            duration_ms: None,
            peak_pages: 512,
            refusals: 3,
            started_by: "edge".into(),
            tcp_mem: None,
            kernel_ms: Some(7),
            kernel_entries: None,
            end_exact: false,
            entered_by: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            json!({"start_s": 1.05, "duration_ms": null, "peak_pages": 512, "refusals": 3,
                   "started_by": "edge", "tcp_mem": null, "kernel_ms": 7, "kernel_entries": null,
                   "end_exact": false, "entered_by": null})
            .to_string()
        );
        assert_eq!(
            e.cells(),
            ["2", "+1.0s", "open", "512", "2.0 MiB", "3", "7", "edge"]
        );
        e.entered_by = Some(Entry {
            pid: 9,
            comm: "ksoftirqd/0".into(),
            ..Default::default()
        });
        assert_eq!(e.cells()[7], "edge (task 9 ksoftirqd/0)");
        e.entered_by = Some(Entry {
            socket_owner_pid: Some(5),
            socket_owner_comm: Some("app".into()),
            ..Default::default()
        });
        assert_eq!(e.cells()[7], "edge (socket of 5 app)");
    }

    #[test]
    fn holder_json_keys_follow_the_report() {
        let h = HolderRow {
            pid: 1,
            comm: "a".into(),
            cgroup: "/".into(),
            sockets: 2,
            rmem_bytes: 10,
            wmem_bytes: 20,
            held_bytes: 30,
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            json!({"pid": 1, "comm": "a", "cgroup": "/", "sockets": 2,
                   "rmem_bytes": 10, "wmem_bytes": 20, "held_bytes": 30})
            .to_string()
        );
        assert_eq!(h.cells(), ["1", "a", "2", "10 B", "20 B", "30 B", "/"]);
    }

    #[test]
    fn sock_json_is_the_socket_then_comm_and_held() {
        let s = Sock {
            local: "127.0.0.1:80".parse().unwrap(),
            peer: "127.0.0.1:5000".parse().unwrap(),
            state: "ESTABLISHED".into(),
            inode: 1,
            cookie: 2,
            rmem: 100,
            rcvbuf: None,
            wmem: 200,
            sndbuf: Some(4096),
            fwd_alloc: 0,
            drops: None,
            pid: None,
            cgroup_id: None,
        };
        let row = SockRow {
            sock: s.clone(),
            comm: None,
            held_bytes: s.total(),
        };
        let mut want = serde_json::to_value(&s).unwrap();
        want["comm"] = json!(null);
        want["held_bytes"] = json!(300);
        assert_eq!(serde_json::to_string(&row).unwrap(), want.to_string());
        assert_eq!(row.cells()[4], "-");
        assert_eq!(row.cells()[6], "4.0 KiB");
        assert_eq!(row.cells()[8..], ["-", "-"]);
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
