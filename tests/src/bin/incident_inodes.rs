//! Incident helper for `tracer inodes`: a process that eats inodes.
//!
//!   incident_inodes fill DIR RETRIES [relative]
//!                                      on "go": create DIR/f0, f1, ... until a create
//!                                      fails with ENOSPC, try RETRIES more times, print
//!                                      "full CREATED FAILED"; then "delete K" removes
//!                                      f0..f(K-1) and prints "deleted K"; with
//!                                      `relative`, from inside DIR as f0, f1, ...
//!   incident_inodes rate DIR PER_S     on "go": create PER_S files a second in DIR
//!                                      until stdin closes; prints "created N" at the end
//!   incident_inodes churn DIR BATCH    on "go": create BATCH temp files in DIR and
//!                                      delete them again, over and over (a healthy busy
//!                                      host), until "stop"; prints "churned N" (created
//!                                      and deleted again, each)
//!
//! It prints "ready PID" first and exits when its stdin closes.
use std::{
    io::{BufRead as _, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

const ENOSPC: i32 = 28;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn die(msg: String) -> ! {
    say(&format!("error {msg}"));
    std::process::exit(1);
}

fn create(dir: &Path, i: u64) -> std::io::Result<()> {
    // One small file: the inode is what runs out, not the blocks.
    std::fs::write(dir.join(format!("f{i}")), b"x")
}

fn fill(mut dir: PathBuf, retries: u32, relative: bool) {
    if relative {
        std::env::set_current_dir(&dir).unwrap_or_else(|e| die(format!("chdir: {e}")));
        dir = PathBuf::new();
    }
    let mut lines = std::io::stdin().lock().lines();
    match lines.next() {
        Some(Ok(l)) if l == "go" => {}
        _ => return,
    }
    let mut created = 0u64;
    let err = loop {
        match create(&dir, created) {
            Ok(()) => created += 1,
            Err(e) => break e,
        }
    };
    if err.raw_os_error() != Some(ENOSPC) {
        die(format!("create failed with {err}, not ENOSPC"));
    }
    let mut failed = 1;
    for _ in 0..retries {
        match create(&dir, created) {
            Err(e) if e.raw_os_error() == Some(ENOSPC) => failed += 1,
            other => die(format!("retry gave {other:?}, not ENOSPC")),
        }
    }
    say(&format!("full {created} {failed}"));
    for line in lines.map_while(Result::ok) {
        if let Some(k) = line.strip_prefix("delete ") {
            let k: u64 = k.parse().unwrap_or_else(|_| die(format!("bad count {k}")));
            for i in 0..k.min(created) {
                std::fs::remove_file(dir.join(format!("f{i}")))
                    .unwrap_or_else(|e| die(format!("delete f{i}: {e}")));
            }
            say(&format!("deleted {k}"));
        }
    }
}

fn rate(dir: PathBuf, per_s: u64) {
    // A reader thread says "go" and then stop (stdin closed: the test is done).
    let stop = Arc::new(AtomicBool::new(false));
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let s = stop.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line == "go" {
                let _ = go_tx.send(());
            }
        }
        s.store(true, Ordering::Relaxed);
    });
    if go_rx.recv().is_err() {
        return;
    }
    let t0 = Instant::now();
    let mut created = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Steady pace: file n is due at n / per_s seconds.
        let due = t0 + Duration::from_secs_f64(created as f64 / per_s as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        create(&dir, created).unwrap_or_else(|e| die(format!("create: {e}")));
        created += 1;
    }
    say(&format!("created {created}"));
}

fn churn(dir: PathBuf, batch: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let s = stop.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            match line.as_str() {
                "go" => {
                    let _ = go_tx.send(());
                }
                "stop" => s.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
        s.store(true, Ordering::Relaxed);
    });
    if go_rx.recv().is_err() {
        return;
    }
    let mut churned = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..batch {
            std::fs::write(dir.join(format!("tmp{i}")), b"x")
                .unwrap_or_else(|e| die(format!("create: {e}")));
        }
        for i in 0..batch {
            std::fs::remove_file(dir.join(format!("tmp{i}")))
                .unwrap_or_else(|e| die(format!("delete: {e}")));
        }
        churned += batch;
        // A breath between rounds, as a real service has: leaves CPU to the tracer on
        // 2 cores.
        std::thread::sleep(Duration::from_millis(20));
    }
    say(&format!("churned {churned}"));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            die("usage: incident_inodes fill DIR RETRIES | rate DIR PER_S".into())
        })
    };
    let dir = PathBuf::from(arg(1));
    let n: u64 = arg(2)
        .parse()
        .unwrap_or_else(|_| die(format!("not a number: {}", arg(2))));
    say(&format!("ready {}", std::process::id()));
    match arg(0) {
        "fill" => fill(dir, n as u32, args.get(3).is_some_and(|a| a == "relative")),
        "rate" => rate(dir, n.max(1)),
        "churn" => churn(dir, n.max(1)),
        other => die(format!("unknown mode {other}")),
    }
}
