//! The TCP sockets that hold the most memory, like `ss -tm`: netlink sock_diag with
//! SKMEMINFO (the kernel's own per-socket memory figures), or /proc/net/tcp{,6}
//! rx_queue/tx_queue (bytes queued, not memory charged) where sock_diag fails.
//! Owners come from socket inodes in /proc/PID/fd.
use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use anyhow::{Result, anyhow, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla as _,
};
use netlink_packet_sock_diag::{
    self as diag, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use serde::{Deserialize, Serialize};

use crate::procinfo;

/// One TCP socket and the memory it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sock {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// ESTAB, LISTEN, ... as `ss` names them.
    pub state: Cow<'static, str>,
    pub inode: u64,
    /// Socket cookie (sock_diag only; 0 otherwise), as bpf_get_socket_cookie() gives it.
    pub cookie: u64,
    /// Bytes in the receive queue (sock_diag: rmem_alloc, charged memory incl. overhead).
    pub rmem: u64,
    pub rcvbuf: Option<u64>,
    /// Bytes queued for sending (sock_diag: wmem_queued).
    pub wmem: u64,
    pub sndbuf: Option<u64>,
    /// Pre-charged, not yet used (sock_diag only).
    pub fwd_alloc: u64,
    pub drops: Option<u64>,
    pub pid: Option<u32>,
    /// The socket's cgroup v2 id (sock_diag's INET_DIAG_CGROUP_ID: the cgroup of the
    /// task that created it), on kernels that send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

impl Sock {
    /// Memory charged to TCP for this socket, bytes.
    pub fn total(&self) -> u64 {
        self.rmem + self.wmem + self.fwd_alloc
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    #[serde(rename = "sock_diag")]
    SockDiag,
    #[serde(rename = "/proc/net/tcp")]
    ProcNetTcp,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::SockDiag => "netlink sock_diag (skmem: rmem_alloc + wmem_queued + fwd_alloc)",
            Source::ProcNetTcp => {
                "/proc/net/tcp rx_queue/tx_queue (bytes queued; sock_diag failed)"
            }
        }
    }
}

/// Every TCP socket, largest holders first, with the owners of those holding memory
/// and of those whose cookie is in `cookies`.
pub fn list(cookies: &HashSet<u64>) -> (Vec<Sock>, Source) {
    let (mut socks, source) = match sock_diag() {
        Ok(s) => (s, Source::SockDiag),
        Err(e) => {
            log::debug!("sock_diag failed ({e:#}); using /proc/net/tcp");
            (proc_net_tcp(), Source::ProcNetTcp)
        }
    };
    socks.sort_by(|a, b| b.total().cmp(&a.total()).then(a.inode.cmp(&b.inode)));
    let wanted: HashSet<u64> = socks
        .iter()
        .filter(|s| (s.total() > 0 || cookies.contains(&s.cookie)) && s.inode != 0)
        .map(|s| s.inode)
        .collect();
    let owners = owners(&wanted);
    for s in &mut socks {
        s.pid = owners.get(&s.inode).copied();
    }
    (socks, source)
}

/// socket inode -> pid of a process that has it open (the first one found).
fn owners(wanted: &HashSet<u64>) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let Ok(all) = procfs::process::all_processes() else {
        return out;
    };
    for p in all.filter_map(|p| p.ok()) {
        let Ok(fds) = p.fd() else { continue };
        for fd in fds.filter_map(|f| f.ok()) {
            if let procfs::process::FDTarget::Socket(ino) = fd.target
                && wanted.contains(&ino)
            {
                out.entry(ino).or_insert(p.pid as u32);
            }
        }
        if out.len() == wanted.len() {
            break;
        }
    }
    out
}

fn state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "CLOSE",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW-SYN-RECV",
        _ => "?",
    }
}

/// inet_diag's attribute with the socket's cgroup v2 id (Linux 5.9+), sent with every
/// response where the kernel has it.
const INET_DIAG_CGROUP_ID: u16 = 21;

// Netlink sock_diag, spoken through the rust-netlink crates: netlink-sys for the
// socket, netlink-packet-sock-diag for inet_diag requests, responses and SKMEMINFO.

/// A dump of every TCP socket of both families.
fn sock_diag() -> Result<Vec<Sock>> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG)
        .map_err(|e| anyhow!("netlink socket: {e}"))?;
    socket
        .connect(&netlink_sys::SocketAddr::new(0, 0))
        .map_err(|e| anyhow!("netlink connect: {e}"))?;
    let mut out = Vec::new();
    for (seq, family) in [
        (1, diag::constants::AF_INET),
        (2, diag::constants::AF_INET6),
    ] {
        dump(&mut socket, seq, family, &mut out)?;
    }
    Ok(out)
}

/// The request for every TCP socket of `family`, with SKMEMINFO.
fn request(seq: u32, family: u8) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let socket_id = if family == diag::constants::AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut msg = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: diag::constants::IPPROTO_TCP,
            extensions: ExtensionFlags::SKMEMINFO,
            states: StateFlags::from_bits_retain(u32::MAX),
            socket_id,
        })
        .into(),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn dump(socket: &mut netlink_sys::Socket, seq: u32, family: u8, out: &mut Vec<Sock>) -> Result<()> {
    socket
        .send(&request(seq, family), 0)
        .map_err(|e| anyhow!("netlink send: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| anyhow!("netlink recv: {e}"))?;
        if n == 0 || parse_messages(&buf[..n], out)? {
            return Ok(());
        }
    }
}

/// Parses one datagram of netlink messages; true when the dump is done.
fn parse_messages(mut b: &[u8], out: &mut Vec<Sock>) -> Result<bool> {
    while !b.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(b)
            .map_err(|e| anyhow!("malformed sock_diag message: {e}"))?;
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => {
                let errno = e.code.map(|c| -c.get()).unwrap_or(0);
                bail!("sock_diag: {}", std::io::Error::from_raw_os_error(errno));
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => out.push(sock(&r)),
            _ => {}
        }
        if len == 0 {
            break;
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    Ok(false)
}

/// One inet_diag response: addresses, state, queues, and the SKMEMINFO figures when the
/// kernel sent them.
fn sock(r: &InetResponse) -> Sock {
    let h = &r.header;
    let id = &h.socket_id;
    // idiag_cookie is two u32 halves in host order, low half first.
    let half = |i: usize| {
        u64::from(u32::from_ne_bytes(
            id.cookie[i..i + 4].try_into().unwrap_or_default(),
        ))
    };
    let mut s = Sock {
        local: SocketAddr::new(id.source_address, id.source_port),
        peer: SocketAddr::new(id.destination_address, id.destination_port),
        state: state_name(h.state).into(),
        inode: u64::from(h.inode),
        cookie: half(0) | half(4) << 32,
        rmem: u64::from(h.recv_queue),
        rcvbuf: None,
        wmem: u64::from(h.send_queue),
        sndbuf: None,
        fwd_alloc: 0,
        drops: None,
        pid: None,
        cgroup_id: None,
    };
    for nla in &r.nlas {
        if let Nla::Other(a) = nla
            && a.kind() == INET_DIAG_CGROUP_ID
            && a.value_len() == 8
        {
            let mut v = [0u8; 8];
            a.emit_value(&mut v);
            s.cgroup_id = Some(u64::from_ne_bytes(v));
        }
        if let Nla::MemInfo(m) = nla {
            s.rmem = u64::from(m.receive_queue);
            s.rcvbuf = Some(u64::from(m.receive_queue_max));
            s.sndbuf = Some(u64::from(m.send_queue_max));
            s.fwd_alloc = u64::from(m.cache);
            s.wmem = u64::from(m.send_queue);
            s.drops = Some(u64::from(m.drops));
        }
    }
    s
}

fn proc_net_tcp() -> Vec<Sock> {
    let mut all = procfs::net::tcp().unwrap_or_default();
    all.extend(procfs::net::tcp6().unwrap_or_default());
    all.into_iter()
        .map(|e| Sock {
            local: e.local_address,
            peer: e.remote_address,
            state: state_name(e.state.to_u8()).into(),
            inode: e.inode,
            cookie: 0,
            rmem: u64::from(e.rx_queue),
            rcvbuf: None,
            wmem: u64::from(e.tx_queue),
            sndbuf: None,
            fwd_alloc: 0,
            drops: None,
            pid: None,
            cgroup_id: None,
        })
        .collect()
}

/// One look at the TCP sockets (during an episode, or now): the largest holders
/// and per-process totals, bounded whatever the number of sockets.
pub struct SocketLook {
    pub t_ns: u64,
    pub source: Source,
    /// Memory charged to all sockets, bytes.
    pub total: u64,
    /// The KEEP_SOCKETS sockets holding the most.
    pub socks: Vec<Sock>,
    /// Per owner: (pid, sockets, receive queue, send queue, charged), most first.
    pub holders: Vec<(u32, usize, u64, u64, u64)>,
    /// comm and cgroup of each owner, read when the look was taken (an owner
    /// may be gone by the time the report is printed).
    pub owners: HashMap<u32, (String, String)>,
    /// Socket memory per cgroup, most first (pods.rs).
    pub by_cgroup: Vec<super::pods::CgroupSum>,
    pub cgroup_source: super::pods::CgroupSource,
}

/// Sockets kept per look (the report shows at most --top of them).
const KEEP_SOCKETS: usize = 1000;

impl SocketLook {
    /// Takes a look; also returns (owner pid, receive and send queue bytes) of
    /// the sockets whose cookie is in `cookies` and that a process holds.
    pub fn take(t_ns: u64, cookies: &HashSet<u64>) -> (SocketLook, HashMap<u64, (u32, u64, u64)>) {
        let (mut socks, source) = list(cookies);
        let found: HashMap<u64, (u32, u64, u64)> = socks
            .iter()
            .filter(|s| cookies.contains(&s.cookie))
            .filter_map(|s| Some((s.cookie, (s.pid?, s.rmem, s.wmem))))
            .collect();
        let total = socks.iter().map(Sock::total).sum();
        let (by_cgroup, cgroup_source) = super::pods::by_cgroup(&socks);
        let mut per_pid: HashMap<u32, (usize, u64, u64, u64)> = HashMap::new();
        for s in &socks {
            if let Some(pid) = s.pid {
                let h = per_pid.entry(pid).or_default();
                h.0 += 1;
                h.1 += s.rmem;
                h.2 += s.wmem;
                h.3 += s.total();
            }
        }
        let mut holders: Vec<_> = per_pid
            .into_iter()
            .filter(|(_, h)| h.3 > 0)
            .map(|(p, (n, r, w, t))| (p, n, r, w, t))
            .collect();
        holders.sort_by(|a, b| b.4.cmp(&a.4).then(a.0.cmp(&b.0)));
        holders.truncate(KEEP_SOCKETS);
        // list() sorted them, largest first.
        socks.retain(|s| s.total() > 0);
        socks.truncate(KEEP_SOCKETS);
        let owners = socks
            .iter()
            .filter_map(|s| s.pid)
            .chain(holders.iter().map(|h| h.0))
            .chain(found.values().map(|v| v.0))
            .collect::<HashSet<u32>>()
            .into_iter()
            .map(|p| {
                let comm = procinfo::comm_of(p).unwrap_or_else(|| "?".into());
                (p, (comm, procinfo::cgroup_of(p)))
            })
            .collect();
        let snap = SocketLook {
            t_ns,
            source,
            total,
            socks,
            holders,
            owners,
            by_cgroup,
            cgroup_source,
        };
        (snap, found)
    }

    pub fn owner(&self, pid: u32) -> (String, String) {
        self.owners
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| ("?".into(), "-".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_diag_sees_a_loopback_connection_and_its_owner() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_srv, _) = l.accept().unwrap();
        std::io::Write::write_all(&mut c, &[7u8; 10_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (socks, _) = list(&HashSet::new());
        let me = std::process::id();
        let srv = socks
            .iter()
            .find(|s| s.local.to_string() == format!("127.0.0.1:{port}") && s.state == "ESTAB")
            .unwrap_or_else(|| panic!("accepted socket not listed: {socks:?}"));
        // Nobody read: the 10,000 bytes sit in its receive queue.
        assert!(srv.rmem >= 10_000, "{srv:?}");
        assert_eq!(srv.pid, Some(me));
        assert_ne!(srv.cookie, 0);
    }

    #[test]
    fn a_response_with_skmeminfo_becomes_a_sock() {
        // What the kernel answers for 127.0.0.1:8080 -> 127.0.0.1:40000, ESTABLISHED,
        // cookie 0x0000_0002_0000_0001, inode 777, with INET_DIAG_SKMEMINFO, serialized
        // and parsed back as one datagram.
        use netlink_packet_sock_diag::inet::{InetResponseHeader, nlas::MemInfo};
        let mut cookie = [0u8; 8];
        cookie[..4].copy_from_slice(&1u32.to_ne_bytes());
        cookie[4..].copy_from_slice(&2u32.to_ne_bytes());
        let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
        let response = InetResponse {
            header: InetResponseHeader {
                family: diag::constants::AF_INET,
                state: 1,
                timer: None,
                socket_id: SocketId {
                    source_port: 8080,
                    destination_port: 40000,
                    source_address: localhost,
                    destination_address: localhost,
                    interface_id: 0,
                    cookie,
                },
                recv_queue: 0,
                send_queue: 0,
                uid: 0,
                inode: 777,
            },
            nlas: [Nla::MemInfo(MemInfo {
                receive_queue: 5000,
                receive_queue_max: 131072,
                bottom_send_queues: 0,
                send_queue_max: 16384,
                cache: 1200,
                send_queue: 3000,
                options: 0,
                backlog_queue_length: 0,
                drops: 4,
            })]
            .into_iter()
            .collect(),
        };
        let mut msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            SockDiagMessage::InetResponse(Box::new(response)).into(),
        );
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        let mut out = Vec::new();
        assert!(!parse_messages(&buf, &mut out).unwrap());
        let s = &out[0];
        assert_eq!(s.local.to_string(), "127.0.0.1:8080");
        assert_eq!(s.peer.to_string(), "127.0.0.1:40000");
        assert_eq!(s.state, "ESTAB");
        assert_eq!(s.cookie, (2 << 32) | 1);
        assert_eq!(s.inode, 777);
        assert_eq!((s.rmem, s.wmem, s.fwd_alloc), (5000, 3000, 1200));
        assert_eq!(
            (s.rcvbuf, s.sndbuf, s.drops),
            (Some(131072), Some(16384), Some(4))
        );
        assert_eq!(s.total(), 9200);
    }

    #[test]
    fn rejects_truncated_messages() {
        let mut out = Vec::new();
        assert!(
            parse_messages(
                &[200, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                &mut out
            )
            .is_err()
        );
        assert!(parse_messages(&[20, 0, 0, 0, 0, 0], &mut out).is_err());
        assert!(out.is_empty());
    }
}
