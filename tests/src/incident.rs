//! The helper processes that cause the incidents (`incident`, `incident_inodes`,
//! `incident_tcp`), and small /proc and shell helpers for setting them up.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

/// A process of the `incident` helper. It prints `ready PID` when the incident is in
/// place; dropping it closes its stdin, on which it reaps its children and exits, and
/// then it is waited for, so no zombie outlives the test (killed if it hangs).
pub struct Incident {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Incident {
    pub fn start(args: &[&str]) -> Incident {
        Self::start_bin(&incident_bin(), args)
    }

    /// Starts another helper binary that speaks the same protocol (e.g. incident_inodes).
    pub fn start_bin(bin: &std::path::Path, args: &[&str]) -> Incident {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the incident helper");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let pid = child.id();
        let mut inc = Incident {
            child,
            stdin,
            stdout,
            pid,
        };
        inc.expect_line("ready");
        inc
    }

    /// Reads the helper's next line and checks it starts with `word`.
    pub fn expect_line(&mut self, word: &str) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading the incident helper");
        assert!(
            line.starts_with(word),
            "incident helper said {line:?}, expected {word:?}"
        );
        line
    }

    /// Sends one command line to the helper.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("writing to the incident helper");
        stdin.flush().expect("flush");
    }
}

impl Drop for Incident {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `incident` helper, built by cargo beside the test binaries (target/*/incident).
pub fn incident_bin() -> PathBuf {
    helper_bin("incident")
}

/// A helper binary of this crate, built by cargo beside the test binaries.
pub fn helper_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: run the tests through cargo",
        p.display()
    );
    p
}

/// Pids of the current zombie children of `ppid`, from /proc.
pub fn zombie_children(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut f = rest.split(' ');
        let state = f.next().unwrap_or("");
        let pp: u32 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        if state == "Z" && pp == ppid {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Runs a setup command, panicking with its stderr when it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} (install it with `cargo xtask setup`): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
