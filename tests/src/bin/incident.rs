//! Causes the incidents the integration tests trace, with processes the tests own.
//!
//! incident zombies N    fork N children that exit at once; never wait for them
//! incident reaper N     on "go": fork N children that exit, wait for each at once
//! incident service N    on "go": fork N workers that exit, reaping the ones that have
//!                       exited after each fork (WNOHANG), then wait for the rest: a
//!                       service that reaps as it goes
//! incident sigign N     SIGCHLD = SIG_IGN; on "go": fork N children that exit
//! incident leak N MS    on "go": fork a child every MS ms, N in all, never wait (a
//!                       steadily leaking parent, for the growth trend)
//! incident threaded N   on "go": fork N children with 4 threads each, never wait:
//!                       odd children exit_group() with every thread running, even
//!                       ones end their main thread first and their last thread later
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
    let usage = "usage: incident zombies|reaper|service|sigign|threaded N | leak N MS";
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
        "threaded" => {
            say(&format!("ready {me}"));
            let _ = lines.next();
            let kids: Vec<Pid> = (0..n).map(|i| spawn_threaded(i % 2 == 1)).collect();
            wait_zombies(&kids);
            say("done");
        }
        "leak" => {
            let every = args
                .get(3)
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or_else(|| {
                    eprintln!("{usage}");
                    std::process::exit(2)
                });
            say(&format!("ready {me}"));
            let _ = lines.next();
            let start = Instant::now();
            let mut kids = Vec::new();
            for i in 0..n {
                // The pace of the leak itself (a rate, not a wait for an event).
                if let Some(left) =
                    (start + every * i as u32).checked_duration_since(Instant::now())
                {
                    std::thread::sleep(left);
                }
                kids.extend(spawn(1));
            }
            wait_zombies(&kids);
            say("done");
        }
        "reaper" => {
            say(&format!("ready {me}"));
            let _ = lines.next();
            for k in spawn(n) {
                let _ = waitpid(k, None);
            }
            say("done");
        }
        "service" => {
            say(&format!("ready {me}"));
            let _ = lines.next();
            let mut running = 0;
            for _ in 0..n {
                spawn(1);
                running += 1;
                while running > 0 {
                    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => running -= 1,
                    }
                }
            }
            for _ in 0..running {
                let _ = waitpid(Pid::from_raw(-1), None);
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

/// Forks a child with 4 threads besides its main thread. With `exit_group` the main
/// thread calls _exit() while the others run, so all five exit at once; without, the
/// main thread exits alone and the others end after it, the last making the zombie.
fn spawn_threaded(exit_group: bool) -> Pid {
    // SAFETY: this helper is single-threaded, so the child may start threads.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Parent { child } => child,
        ForkResult::Child => {
            let started = std::sync::Arc::new(std::sync::Barrier::new(5));
            for i in 0..4u64 {
                let started = started.clone();
                std::thread::spawn(move || {
                    started.wait();
                    if exit_group {
                        loop {
                            std::hint::spin_loop();
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20 + 10 * i));
                    // SAFETY: ends this thread only (SYS_exit, not exit_group).
                    unsafe { libc::syscall(libc::SYS_exit, 0) };
                });
            }
            started.wait();
            // SAFETY: _exit ends the whole process; SYS_exit ends the main thread only.
            unsafe {
                if exit_group {
                    libc::_exit(0);
                }
                libc::syscall(libc::SYS_exit, 0);
            }
            unreachable!("the main thread has exited")
        }
    }
}

/// Waits until every child is a zombie: state Z in /proc, and no thread left (a main
/// thread that ended before its other threads shows Z while they still run).
fn wait_zombies(kids: &[Pid]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let all = kids.iter().all(|k| {
            let z = std::fs::read_to_string(format!("/proc/{k}/stat"))
                .ok()
                .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
                .unwrap_or(false);
            z && std::fs::read_dir(format!("/proc/{k}/task")).is_ok_and(|d| d.count() == 1)
        });
        if all {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
