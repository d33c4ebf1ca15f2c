//! TCP helpers shared by the tcp-pressure and Prometheus tests: net.ipv4.tcp_mem set
//! and restored by a guard, the kernel's own pressure flag and counters, loopback
//! traffic, and a bounded wait for what the kernel does in its own time.
use std::time::{Duration, Instant};

/// Polls `what` every 20 ms until it returns Some, or panics with `waiting_for` after
/// `secs` seconds (TCG guests are slow: deadlines are generous, the wait is not).
pub fn wait_for<T>(secs: u64, waiting_for: &str, mut what: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = what() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {waiting_for}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TcpExt counter of /proc/net/netstat.
pub fn tcpext(name: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/net/netstat").expect("/proc/net/netstat");
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (
        lines.next().expect("TcpExt names"),
        lines.next().expect("TcpExt values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name}"))
}

/// /proc/net/protocols' "press" column for TCP: whether the kernel is under TCP
/// memory pressure now (tcp_memory_pressure).
pub fn tcp_under_pressure() -> bool {
    let s = std::fs::read_to_string("/proc/net/protocols").expect("/proc/net/protocols");
    let mut lines = s.lines();
    let head: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    let col = head
        .iter()
        .position(|h| *h == "press")
        .expect("press column");
    let tcp: Vec<&str> = lines
        .find(|l| l.starts_with("TCP "))
        .expect("TCP line")
        .split_whitespace()
        .collect();
    tcp[col] == "yes"
}

/// 64 KiB over a fresh loopback connection, read and closed: TCP memory charged and
/// released (the kernel checks whether to leave pressure on a release).
pub fn loopback_exchange() {
    use std::io::{Read as _, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (mut s, _) = l.accept().expect("accept");
    let data = vec![1u8; 64 * 1024];
    let t = std::thread::spawn(move || c.write_all(&data));
    let mut buf = vec![0u8; 64 * 1024];
    s.read_exact(&mut buf).expect("read");
    t.join().expect("writer").expect("write");
}

pub const TCP_MEM: &str = "/proc/sys/net/ipv4/tcp_mem";

pub fn read_tcp_mem() -> String {
    std::fs::read_to_string(TCP_MEM)
        .expect("reading tcp_mem")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets net.ipv4.tcp_mem and puts the saved value back when dropped (a failed
/// assertion unwinds through it too).
pub struct TcpMemGuard {
    saved: String,
}

impl TcpMemGuard {
    pub fn set(value: &str) -> TcpMemGuard {
        let saved = read_tcp_mem();
        std::fs::write(TCP_MEM, value).expect("writing tcp_mem");
        TcpMemGuard { saved }
    }
}

impl Drop for TcpMemGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(TCP_MEM, &self.saved) {
            eprintln!("restoring tcp_mem to {} failed: {e}", self.saved);
        }
    }
}
