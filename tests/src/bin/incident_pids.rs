//! Causes the PID-budget incidents of `tests/tests/pid_budgets.rs` inside a pids cgroup
//! the test made (issue 22: Uber inside containers).
//!
//! incident_pids zombies CGDIR N   join CGDIR, fork N children that exit at once, never
//!                                 wait for them (N + 1 pids charged to CGDIR)
//! incident_pids refuse CGDIR N    join CGDIR; on "go": N raw fork syscalls in turn
//!                                 clone, clone3, fork, vfork; print `done E O`: E
//!                                 refused with EAGAIN, O any other outcome
//!
//! Each prints `ready PID` when in place. On EOF on stdin it reaps every child left and
//! exits, so the tests' guards leave nothing behind.
use std::{
    io::{BufRead as _, Write as _},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: incident_pids zombies|refuse CGDIR N";
    let (Some(what), Some(dir), Some(n)) = (
        args.get(1),
        args.get(2),
        args.get(3).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let me = std::process::id();
    // Join the test's cgroup before forking, so every child is charged to it.
    std::fs::write(format!("{dir}/cgroup.procs"), me.to_string())
        .unwrap_or_else(|e| panic!("joining {dir}: {e}"));
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    match what.as_str() {
        "zombies" => {
            let kids: Vec<i32> = (0..n).filter_map(|_| raw_fork(0)).collect();
            assert_eq!(kids.len(), n, "every fork succeeded");
            wait_zombies(&kids);
            say(&format!("ready {me}"));
        }
        "refuse" => {
            say(&format!("ready {me}"));
            let _ = lines.next();
            let (mut refused, mut other) = (0, 0);
            for i in 0..n {
                match try_fork(i % 4) {
                    Err(libc::EAGAIN) => refused += 1,
                    _ => other += 1,
                }
            }
            say(&format!("done {refused} {other}"));
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
    for _ in lines.by_ref() {}
    // SAFETY: waitpid with a null status pointer reaps any child; -1 ends the loop.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
}

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// clone_args of clone3(2), version 0 (64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// One raw fork syscall: 0 clone, 1 clone3, 2 fork, 3 vfork (each like fork(): a new
/// process that gets SIGCHLD's parent). Some(child pid), or None with errno.
fn raw_fork(which: usize) -> Option<i32> {
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: raw process-creating syscalls in a single-threaded process; a child only
    // calls _exit. A vfork child shares the parent's memory until then: _exit touches
    // nothing of it.
    let ret = unsafe {
        match which {
            0 => libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0),
            1 => libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                size_of::<CloneArgs>(),
            ),
            2 => libc::syscall(libc::SYS_fork),
            _ => libc::syscall(libc::SYS_vfork),
        }
    };
    match ret {
        // SAFETY: the child ends at once.
        0 => unsafe { libc::_exit(0) },
        r if r > 0 => Some(r as i32),
        _ => None,
    }
}

/// A fork by syscall `which`: Ok(()) when a child was made (it exits; reaped at the
/// end), Err(errno) when refused.
fn try_fork(which: usize) -> Result<(), i32> {
    match raw_fork(which) {
        Some(_) => Ok(()),
        None => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
    }
}

/// Waits until every child is a zombie (state Z in /proc).
fn wait_zombies(kids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
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
    panic!("the children did not all become zombies within 30 s");
}
