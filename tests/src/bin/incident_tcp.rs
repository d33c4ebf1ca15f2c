//! TCP memory pressure on demand, for the tcp-pressure tests and bench.
//!
//!   incident_tcp push N     N loopback connections whose receivers never read; after
//!                           "go" on stdin, one thread pushes 64 KiB writes into every
//!                           connection in turn (each write gives up after 200 ms,
//!                           SO_SNDTIMEO) until stdin closes.
//!   incident_tcp chat N     N request/response round trips of 1 KiB on one loopback
//!                           connection whose peer reads everything (normal sends).
//!   incident_tcp bulk N M   N loopback connections; after "go", each pushes M MiB in
//!                           64 KiB write()s at full speed while its reader reads
//!                           everything (a healthy bulk transfer); then prints
//!                           `done WRITES BYTES` (write() calls and bytes read).
//!   incident_tcp hold N     N KiB written into one loopback connection whose receiver
//!                           never reads, then held (TCP memory that stays in use).
//!   incident_tcp feed N PORT  N connections to 127.0.0.1:PORT (another process's
//!                           listener that never reads); after "go", pushes 64 KiB writes
//!                           into each in turn (each gives up after 200 ms) until stdin
//!                           closes.
//!   incident_tcp collapse MS  one loopback connection whose receiver never reads and
//!                           shrinks its rcvbuf to 4 KiB once connected, while the sender
//!                           (TCP_NODELAY) writes 100-byte pieces for MS milliseconds:
//!                           the kernel prunes and collapses the receive queue; prints
//!                           `done WRITES`.
//!
//! It prints `ready PID` once the connections exist, `pushing` after "go", and exits
//! when stdin closes, which frees every socket.
use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let port = l.local_addr().expect("local addr").port();
    let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (s, _) = l.accept().expect("accept");
    (c, s)
}

/// SO_RCVBUF on a connected socket: the window it already advertised stays open, so
/// what arrives next outgrows the new buffer.
fn set_rcvbuf(s: &TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket fd and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: incident_tcp push N | chat N | bulk N MIB | hold N | feed N PORT | collapse MS";
    let n: usize = args
        .get(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{usage}"));
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let stdout = std::io::stdout();
    match args[1].as_str() {
        "push" => {
            let conns: Vec<(TcpStream, TcpStream)> = (0..n).map(|_| pair(&l)).collect();
            for (c, _) in &conns {
                c.set_write_timeout(Some(Duration::from_millis(200)))
                    .expect("SO_SNDTIMEO");
            }
            writeln!(stdout.lock(), "ready {}", std::process::id()).unwrap();
            let mut line = String::new();
            let stdin = std::io::stdin();
            stdin.lock().read_line(&mut line).expect("stdin");
            if line.trim() != "go" {
                return;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            std::thread::spawn(move || {
                // EOF on stdin (the test dropped its end): stop pushing.
                let _ = std::io::stdin().read_to_end(&mut Vec::new());
                stop2.store(true, Ordering::SeqCst);
            });
            writeln!(stdout.lock(), "pushing").unwrap();
            let chunk = vec![0x5au8; 64 * 1024];
            while !stop.load(Ordering::SeqCst) {
                for (c, _) in &conns {
                    // Refused or timed out under pressure: that is the point.
                    let _ = (&*c).write(&chunk);
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
            }
        }
        "chat" => {
            let (mut c, mut s) = pair(&l);
            writeln!(stdout.lock(), "ready {}", std::process::id()).unwrap();
            let echo = std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
            let mut buf = [7u8; 1024];
            for _ in 0..n {
                c.write_all(&buf).expect("send");
                c.read_exact(&mut buf).expect("receive");
            }
            drop(c);
            let _ = echo.join();
            writeln!(stdout.lock(), "done {n}").unwrap();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        "bulk" => {
            let mib: u64 = args
                .get(3)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{usage}"));
            let conns: Vec<(TcpStream, TcpStream)> = (0..n).map(|_| pair(&l)).collect();
            writeln!(stdout.lock(), "ready {}", std::process::id()).unwrap();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).expect("stdin");
            if line.trim() != "go" {
                return;
            }
            let mut threads = Vec::new();
            for (mut c, mut s) in conns {
                let reader = std::thread::spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut got = 0u64;
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => return got,
                            Ok(k) => got += k as u64,
                            Err(e) => panic!("reading: {e}"),
                        }
                    }
                });
                let writer = std::thread::spawn(move || {
                    let chunk = vec![0x5au8; 64 * 1024];
                    let mut writes = 0u64;
                    for _ in 0..mib * 16 {
                        c.write_all(&chunk).expect("send");
                        writes += 1;
                    }
                    writes
                });
                threads.push((writer, reader));
            }
            let (mut writes, mut bytes) = (0, 0);
            for (w, r) in threads {
                writes += w.join().expect("writer");
                bytes += r.join().expect("reader");
            }
            writeln!(stdout.lock(), "done {writes} {bytes}").unwrap();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        "hold" => {
            let (mut c, _s) = pair(&l);
            c.write_all(&vec![0x5au8; n * 1024]).expect("send");
            writeln!(stdout.lock(), "ready {}", std::process::id()).unwrap();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        "feed" => {
            let port: u16 = args
                .get(3)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{usage}"));
            let conns: Vec<TcpStream> = (0..n)
                .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
                .collect();
            for c in &conns {
                c.set_write_timeout(Some(Duration::from_millis(200)))
                    .expect("SO_SNDTIMEO");
            }
            // Everything this process needs is allocated before "ready" (the thread
            // too): once the test limits its memcg, only socket memory is charged.
            let (go, stop) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let (go2, stop2) = (go.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut stdin = std::io::stdin().lock();
                if stdin.read_line(&mut line).is_ok_and(|k| k > 0) {
                    go2.store(true, Ordering::SeqCst);
                    let _ = stdin.read_to_end(&mut Vec::new());
                }
                stop2.store(true, Ordering::SeqCst);
            });
            let chunk = vec![0x5au8; 64 * 1024];
            writeln!(stdout.lock(), "ready {}", std::process::id()).unwrap();
            while !go.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            writeln!(stdout.lock(), "pushing").unwrap();
            while !stop.load(Ordering::SeqCst) {
                for c in &conns {
                    // Refused or timed out at the memcg's limit: that is the point.
                    let _ = (&*c).write(&chunk);
                }
            }
        }
        "collapse" => {
            let (c, s) = pair(&l);
            set_rcvbuf(&s, 4096);
            c.set_nodelay(true).expect("TCP_NODELAY");
            c.set_nonblocking(true).expect("O_NONBLOCK");
            writeln!(stdout.lock(), "ready {}", std::process::id()).unwrap();
            let end = std::time::Instant::now() + Duration::from_millis(n as u64);
            let mut writes = 0u64;
            while std::time::Instant::now() < end {
                match (&c).write(&[0x5au8; 100]) {
                    // A short write is a write all the same: the piece's rest is dropped.
                    Ok(_n) => writes += 1,
                    // The window is full: the receiver never reads.
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            writeln!(stdout.lock(), "done {writes}").unwrap();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        _ => panic!("{usage}"),
    }
}
