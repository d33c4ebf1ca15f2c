//! The TCP sockets that hold the most memory, like `ss -tm`: netlink sock_diag with
//! SKMEMINFO (the kernel's own per-socket memory figures), or /proc/net/tcp{,6}
//! rx_queue/tx_queue (bytes queued, not memory charged) where sock_diag fails.
//! Owners come from socket inodes in /proc/PID/fd.
use std::{
    collections::{HashMap, HashSet},
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Result, bail};
use serde::Serialize;

/// One TCP socket and the memory it holds.
#[derive(Clone, Debug, Serialize)]
pub struct Sock {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub state: &'static str,
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
}

impl Sock {
    /// Memory charged to TCP for this socket, bytes.
    pub fn total(&self) -> u64 {
        self.rmem + self.wmem + self.fwd_alloc
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
pub fn snapshot(cookies: &HashSet<u64>) -> (Vec<Sock>, Source) {
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

// Netlink sock_diag (linux/inet_diag.h, linux/sock_diag.h).
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_SKMEMINFO: u16 = 7;
const NLMSG_HDR: usize = 16;
/// struct inet_diag_msg: family, state, timer, retrans, sockid (48), expires, rqueue,
/// wqueue, uid, inode.
const DIAG_MSG: usize = 72;

/// struct nlmsghdr + struct inet_diag_req_v2.
#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    /// struct inet_diag_sockid (all zero: every socket).
    id: [u8; 48],
}

fn sock_diag() -> Result<Vec<Sock>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        dump(family as u8, &mut out)?;
    }
    Ok(out)
}

fn dump(family: u8, out: &mut Vec<Sock>) -> Result<()> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        bail!("netlink socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let req = Request {
        len: size_of::<Request>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: NLM_F_REQUEST | NLM_F_DUMP,
        seq: 1,
        pid: 0,
        family,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 1 << (INET_DIAG_SKMEMINFO - 1),
        pad: 0,
        states: !0,
        id: [0; 48],
    };
    // SAFETY: req is a plain repr(C) struct that lives for the call.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&req as *const Request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if n < 0 {
        bail!("netlink send: {}", std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            bail!("netlink recv: {}", std::io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(());
        }
        if parse_messages(&buf[..n as usize], family, out)? {
            return Ok(());
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Parses one datagram of netlink messages; true when the dump is done.
fn parse_messages(mut b: &[u8], family: u8, out: &mut Vec<Sock>) -> Result<bool> {
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0) as usize;
        let kind = u16_at(b, 4);
        if len < NLMSG_HDR || len > b.len() {
            bail!("malformed netlink message (length {len})");
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = if len >= NLMSG_HDR + 4 {
                    -(u32_at(b, NLMSG_HDR) as i32)
                } else {
                    0
                };
                bail!("sock_diag: {}", std::io::Error::from_raw_os_error(errno));
            }
            _ => {
                if let Some(s) = parse_diag(&b[NLMSG_HDR..len], family) {
                    out.push(s);
                }
            }
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    Ok(false)
}

fn addr(b: &[u8], family: u8) -> IpAddr {
    if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

/// One struct inet_diag_msg and its attributes.
fn parse_diag(m: &[u8], family: u8) -> Option<Sock> {
    if m.len() < DIAG_MSG {
        return None;
    }
    let state = m[1];
    let id = &m[4..52];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let local = SocketAddr::new(addr(&id[4..20], family), sport);
    let peer = SocketAddr::new(addr(&id[20..36], family), dport);
    let rqueue = u32_at(m, 56);
    let wqueue = u32_at(m, 60);
    let cookie = u64::from(u32_at(id, 40)) | u64::from(u32_at(id, 44)) << 32;
    let inode = u32_at(m, 68);
    let mut sock = Sock {
        local,
        peer,
        state: state_name(state),
        inode: u64::from(inode),
        cookie,
        rmem: u64::from(rqueue),
        rcvbuf: None,
        wmem: u64::from(wqueue),
        sndbuf: None,
        fwd_alloc: 0,
        drops: None,
        pid: None,
    };
    // rtattrs: u16 len, u16 type, payload, aligned to 4.
    let mut a = &m[DIAG_MSG..];
    while a.len() >= 4 {
        let alen = u16_at(a, 0) as usize;
        let atype = u16_at(a, 2);
        if alen < 4 || alen > a.len() {
            break;
        }
        if atype == INET_DIAG_SKMEMINFO && alen >= 4 + 9 * 4 {
            // SK_MEMINFO_RMEM_ALLOC, RCVBUF, WMEM_ALLOC, SNDBUF, FWD_ALLOC,
            // WMEM_QUEUED, OPTMEM, BACKLOG, DROPS.
            let v = |i: usize| u64::from(u32_at(a, 4 + i * 4));
            sock.rmem = v(0);
            sock.rcvbuf = Some(v(1));
            sock.sndbuf = Some(v(3));
            sock.fwd_alloc = v(4);
            sock.wmem = v(5);
            sock.drops = Some(v(8));
        }
        a = &a[alen.next_multiple_of(4).min(a.len())..];
    }
    Some(sock)
}

fn proc_net_tcp() -> Vec<Sock> {
    let mut all = procfs::net::tcp().unwrap_or_default();
    all.extend(procfs::net::tcp6().unwrap_or_default());
    all.into_iter()
        .map(|e| Sock {
            local: e.local_address,
            peer: e.remote_address,
            state: state_name(e.state.to_u8()),
            inode: e.inode,
            cookie: 0,
            rmem: u64::from(e.rx_queue),
            rcvbuf: None,
            wmem: u64::from(e.tx_queue),
            sndbuf: None,
            fwd_alloc: 0,
            drops: None,
            pid: None,
        })
        .collect()
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
        let (socks, _) = snapshot(&HashSet::new());
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
    fn parses_an_inet_diag_message_with_skmeminfo() {
        // struct inet_diag_msg for 127.0.0.1:8080 -> 127.0.0.1:40000, ESTABLISHED,
        // cookie 0x0000_0002_0000_0001, inode 777, then INET_DIAG_SKMEMINFO.
        let mut m = vec![0u8; DIAG_MSG];
        m[0] = libc::AF_INET as u8;
        m[1] = 1;
        m[4..6].copy_from_slice(&8080u16.to_be_bytes());
        m[6..8].copy_from_slice(&40000u16.to_be_bytes());
        m[8..12].copy_from_slice(&[127, 0, 0, 1]);
        m[24..28].copy_from_slice(&[127, 0, 0, 1]);
        m[44..48].copy_from_slice(&1u32.to_ne_bytes());
        m[48..52].copy_from_slice(&2u32.to_ne_bytes());
        m[68..72].copy_from_slice(&777u32.to_ne_bytes());
        let mem: [u32; 9] = [5000, 131072, 0, 16384, 1200, 3000, 0, 0, 4];
        m.extend_from_slice(&(4u16 + 36).to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
        for v in mem {
            m.extend_from_slice(&v.to_ne_bytes());
        }
        let s = parse_diag(&m, libc::AF_INET as u8).expect("parsed");
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
        assert!(parse_messages(&[20, 0, 0, 0, 0, 0], 2, &mut out).is_ok());
        assert!(
            parse_messages(
                &[200, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                2,
                &mut out
            )
            .is_err()
        );
        assert!(parse_diag(&[0u8; 10], 2).is_none());
    }
}
