//! Running the real tracer: to completion or in the background, with its reports
//! parsed, bounded in time, and what it leaves loaded in the kernel.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::*;

/// Output of a finished tracer run.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The tracer failed as a user should see it: exit `code`, and stderr is one line
    /// that contains every piece of `says`.
    pub fn assert_one_sentence(&self, code: i32, says: &[&str]) {
        assert_eq!(self.status.code(), Some(code), "{}", self.stderr);
        for s in says {
            assert!(
                self.stderr.contains(s),
                "expected {s:?} in: {}",
                self.stderr
            );
        }
        assert_eq!(self.stderr.trim().lines().count(), 1, "{}", self.stderr);
    }

    /// Every JSON report (one per line).
    pub fn reports(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
            .collect()
    }

    /// The last report, checked to be the final one.
    pub fn final_report(&self) -> Value {
        let r = self.reports().pop().unwrap_or_else(|| {
            panic!(
                "no JSON report; stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        });
        assert_eq!(r["final"], true, "last report is not final: {r}");
        r
    }
}

/// A running tracer; killed (and waited for) on drop if the test did not finish it.
pub struct Tracer {
    child: Option<Child>,
    stderr_rx: mpsc::Receiver<String>,
    stderr: String,
    stdout_rx: mpsc::Receiver<String>,
    /// stdout lines read so far (by `report_where`), kept for the finished output.
    stdout: String,
}

/// Sends each line of `r` to a channel, from a thread, until EOF.
fn line_channel(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Tracer {
    /// Starts `tracer ARGS` and waits until it says it is tracing (hooks attached).
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::start_env(args, &[])
    }

    /// [`Tracer::start`] with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Tracer {
        let mut child = Command::new(tracer_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the tracer");
        let stderr_rx = line_channel(child.stderr.take().expect("stderr"));
        let stdout_rx = line_channel(child.stdout.take().expect("stdout"));
        let mut t = Tracer {
            child: Some(child),
            stderr_rx,
            stderr: String::new(),
            stdout_rx,
            stdout: String::new(),
        };
        // A bound on a hang, not a timing check: attaching inodes' 23 tracepoints
        // took over 20 s in a 6.1 TCG guest sharing the host with the other VM and a
        // build, so the bound is generous.
        let deadline = Instant::now() + START_BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match t.stderr_rx.recv_timeout(left) {
                Ok(line) => {
                    t.stderr.push_str(&line);
                    t.stderr.push('\n');
                    if line.starts_with("Tracing ") {
                        return t;
                    }
                }
                Err(_) => {
                    let out = t.finish_inner(false);
                    panic!(
                        "tracer {args:?} did not start tracing; status {:?}\nstderr:\n{}",
                        out.status, out.stderr
                    );
                }
            }
        }
    }

    /// What the tracer printed on stderr up to its "Tracing ..." line.
    pub fn stderr(&self) -> &str {
        &self.stderr
    }

    /// The address `tracer serve` said it serves on ("Serving metrics on http://ADDR/metrics").
    pub fn served_at(&self) -> std::net::SocketAddr {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("Serving metrics on http://"))
            .and_then(|l| l.strip_suffix("/metrics"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in: {}", self.stderr))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits for a JSON report (interval reports need `-i` and `--json`) for which
    /// `pred` holds, and returns it; panics with the last report after `timeout`. For
    /// what the kernel does in its own time (an RCU grace period before a free).
    pub fn report_where(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.stdout_rx.recv_timeout(left) else {
                panic!("no report matched within {timeout:?}; last report: {last}");
            };
            self.stdout.push_str(&line);
            self.stdout.push('\n');
            if line.starts_with('{') {
                let r: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bad JSON line {line}: {e}"));
                if pred(&r) {
                    return r;
                }
                last = line;
            }
        }
    }

    /// Sends SIGINT (Ctrl-C) and collects the output.
    pub fn interrupt(mut self) -> Finished {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        self.finish_inner(true)
    }

    /// Waits for the tracer to stop by itself (--duration).
    pub fn wait(mut self) -> Finished {
        self.finish_inner(true)
    }

    fn finish_inner(&mut self, graceful: bool) -> Finished {
        let mut child = self.child.take().expect("tracer already finished");
        if !graceful {
            let _ = child.kill();
        }
        let status = wait_bounded(&mut child, "the tracer");
        // The pipe closed with the tracer: the reader thread sends the rest, then ends.
        let mut stdout = std::mem::take(&mut self.stdout);
        for line in self.stdout_rx.iter() {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        while let Ok(line) = self.stderr_rx.recv_timeout(Duration::from_millis(200)) {
            self.stderr.push_str(&line);
            self.stderr.push('\n');
        }
        Finished {
            status,
            stdout,
            stderr: std::mem::take(&mut self.stderr),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the tracer to completion (for bad-input and --duration checks).
pub fn run_tracer(args: &[&str]) -> Finished {
    run_tracer_env(args, &[])
}

/// Runs the tracer to completion with extra environment variables.
pub fn run_tracer_env(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut cmd = Command::new(tracer_bin());
    cmd.args(args).envs(env.iter().copied());
    run_bounded(cmd)
}

/// How long a started tracer may take to attach its hooks (the "Tracing ..." line)
/// before the test calls it hung.
const START_BOUND: Duration = Duration::from_secs(120);

/// How long a tracer run may take before a test calls it hung: far beyond any run the
/// tests make (seconds, tens under TCG emulation), short of the VM runner's timeout.
const HUNG_AFTER: Duration = Duration::from_secs(240);

/// Runs `cmd` to completion with its output captured, like `Command::output`, but a
/// run that has not ended after [`HUNG_AFTER`] fails the test with what its threads
/// are waiting in (kernel stacks), instead of hanging the whole suite.
pub(crate) fn run_bounded(mut cmd: Command) -> Finished {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let drain = |r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let mut r = r;
            let _ = std::io::Read::read_to_end(&mut r, &mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_bounded(&mut child, &format!("{cmd:?}"));
    Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Waits for `child`; after [`HUNG_AFTER`] kills it and panics with the state and
/// kernel stack of each of its threads (and of its children), for the diagnosis.
fn wait_bounded(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + HUNG_AFTER;
    loop {
        if let Some(st) = child.try_wait().expect("waiting for a child") {
            return st;
        }
        if Instant::now() >= deadline {
            let pid = child.id();
            let mut state = String::new();
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default();
            for t in tasks {
                let read = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_default();
                state += &format!(
                    "{}: {} wchan={}\n{}\n",
                    t.display(),
                    read("stat").trim(),
                    read("wchan"),
                    read("stack")
                );
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {HUNG_AFTER:?}; killed. Its threads:\n{state}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the tracer with every capability dropped, as an unprivileged user would.
pub fn run_tracer_unprivileged(args: &[&str]) -> Finished {
    run_tracer_with_caps(&[], args)
}

/// Runs the tracer as uid and gid 65534 (nobody) without supplementary groups, holding
/// exactly `caps` (as capabilities(7) spells them: "CAP_BPF"): setpriv puts them in the
/// inheritable, ambient and bounding sets, so they are effective in the tracer.
pub fn run_tracer_with_caps(caps: &[&str], args: &[&str]) -> Finished {
    let set: Vec<String> = std::iter::once("-all".to_string())
        .chain(
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())),
        )
        .collect();
    let set = set.join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(tracer_bin())
        .args(args);
    run_bounded(cmd)
}

/// Names of the BPF programs loaded in the kernel now.
pub fn loaded_program_names() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .collect()
}

/// Ids of the BPF programs that some other running process holds (a program fd, or a
/// link to it): another tracer on the machine, not a leak of the one under test.
fn held_by_others() -> std::collections::HashSet<u32> {
    let me = std::process::id().to_string();
    let mut ids = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return ids;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let name = name.to_string_lossy();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            ids.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    ids
}

/// Asserts that no program whose name starts with `prefix` is loaded any more.
/// The kernel frees a program after its last reference is dropped and an RCU grace
/// period has passed, so one the tracer released a moment ago may still be listed:
/// waits up to 3 s for the list to drop it.
pub fn assert_none_loaded(prefix: &str) {
    // Programs another running process holds (a tracer that is not the one under
    // test) are not this test's leak.
    let left = || -> Vec<String> {
        let others = held_by_others();
        aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .filter(|p| !others.contains(&p.id()))
            .filter_map(|p| p.name_as_str().map(str::to_string))
            .filter(|n| n.starts_with(prefix))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = left();
    assert!(
        left.is_empty(),
        "programs left loaded after the tracer exited: {left:?}"
    );
}

/// Waits until a running tracer has rewritten its --prom-file `n` times (every report
/// rewrites it), so the reports after this call were made after what the test just
/// did: the wait the tests use instead of a sleep. Fails after 60 s (a hang guard: a
/// loaded TCG guest can be several times slower than the host).
pub fn wait_reports(prom: &std::path::Path, n: usize) {
    let mtime = || std::fs::metadata(prom).and_then(|m| m.modified()).ok();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = mtime();
    let mut seen = 0;
    while seen < n {
        assert!(
            Instant::now() < deadline,
            "the tracer stopped rewriting {} ({seen} of {n} reports seen in 60 s)",
            prom.display()
        );
        std::thread::sleep(Duration::from_millis(20));
        let now = mtime();
        if now != last {
            seen += 1;
            last = now;
        }
    }
}
