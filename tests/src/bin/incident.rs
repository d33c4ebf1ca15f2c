//! Causes the incidents the integration tests trace, with processes the tests own.
//!
//! incident zombies N    fork N children that exit at once; never wait for them
//! incident reaper N     on "go": fork N children that exit, wait for each at once
//! incident sigign N     SIGCHLD = SIG_IGN; on "go": fork N children that exit
//!
//! Each prints `ready PID` when the incident is in place (after "go" where there is
//! one: `ready` first, then `done`). On EOF on stdin it reaps every child left and
//! exits, so the tests' guards leave nothing behind.
use std::{
    io::{BufRead as _, Write as _},
    time::{Duration, Instant},
};

use nix::{
    sys::{
        signal::{SigHandler, Signal, signal},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, fork},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: incident zombies|reaper|sigign N";
    let (Some(what), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let me = std::process::id();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    match what.as_str() {
        "zombies" => {
            let kids = spawn(n);
            wait_zombies(&kids);
            say(&format!("ready {me}"));
        }
        "reaper" => {
            say(&format!("ready {me}"));
            let _ = lines.next();
            for k in spawn(n) {
                let _ = waitpid(k, None);
            }
            say("done");
        }
        "sigign" => {
            // SAFETY: single-threaded process; SIG_IGN installs no Rust handler.
            unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) }.expect("signal");
            say(&format!("ready {me}"));
            let _ = lines.next();
            let kids = spawn(n);
            // Children are autoreaped: wait until /proc no longer has them.
            let deadline = Instant::now() + Duration::from_secs(5);
            while kids
                .iter()
                .any(|k| std::path::Path::new(&format!("/proc/{k}")).exists())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            say("done");
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
    // Hold the incident until the test closes stdin, then clean up.
    for _ in lines.by_ref() {}
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::empty())) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

fn spawn(n: usize) -> Vec<Pid> {
    (0..n)
        .map(|_| {
            // SAFETY: this helper is single-threaded, so the child may run any code;
            // it only calls _exit.
            match unsafe { fork() }.expect("fork") {
                ForkResult::Child => unsafe { libc::_exit(0) },
                ForkResult::Parent { child } => child,
            }
        })
        .collect()
}

/// Waits until every child is a zombie (state Z in /proc).
fn wait_zombies(kids: &[Pid]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let all = kids.iter().all(|k| {
            std::fs::read_to_string(format!("/proc/{k}/stat"))
                .ok()
                .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
                .unwrap_or(false)
        });
        if all {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
