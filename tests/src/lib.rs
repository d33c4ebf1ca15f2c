//! Harness for the integration tests: run the real tracer binary (which loads real
//! eBPF), cause incidents with the `incident` helper, and clean everything up in guards
//! that also run when a test fails.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// The tracer binary: TRACER_BIN (set by `cargo xtask test`) or target/release/tracer.
pub fn tracer_bin() -> PathBuf {
    let p = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tracer")
        });
    assert!(
        p.exists(),
        "tracer binary {} not found: run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

/// The kernel of the test matrix this test process runs on: "host" (this machine),
/// "6.1" or "6.12" (stock Debian kernels in a VM), from TRACER_MATRIX_KERNEL, which
/// `cargo xtask test` sets for every test process. Tests use it to assert the path
/// the tracer must take there (fast path where the kernel allows it, else the named
/// fallback).
pub fn matrix_kernel() -> &'static str {
    match std::env::var("TRACER_MATRIX_KERNEL").as_deref() {
        Ok("host") => "host",
        Ok("6.1") => "6.1",
        Ok("6.12") => "6.12",
        Ok(other) => {
            panic!("TRACER_MATRIX_KERNEL={other} is not a kernel of the matrix (host, 6.1, 6.12)")
        }
        Err(_) => panic!("TRACER_MATRIX_KERNEL is not set: run the tests with cargo xtask test"),
    }
}

/// These tests load eBPF and change system state: they need root, and fail loudly
/// without it (this project's CI runs as root, so a skip would hide a broken tracer).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests must run as root (cargo xtask test does)"
    );
}

/// Serializes the tests of one test binary that load programs or touch global state,
/// so checks like "no program left loaded" see only their own tracer.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

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
        let deadline = Instant::now() + Duration::from_secs(20);
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

/// How long a tracer run may take before a test calls it hung: far beyond any run the
/// tests make (seconds, tens under TCG emulation), short of the VM runner's timeout.
const HUNG_AFTER: Duration = Duration::from_secs(240);

/// Runs `cmd` to completion with its output captured, like `Command::output`, but a
/// run that has not ended after [`HUNG_AFTER`] fails the test with what its threads
/// are waiting in (kernel stacks), instead of hanging the whole suite.
fn run_bounded(mut cmd: Command) -> Finished {
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

/// Runs the tracer against an empty tracefs (TRACER_TRACEFS), as on a kernel without
/// any of the tracepoints; the directory is removed afterwards.
pub fn run_tracer_without_tracepoints(args: &[&str]) -> Finished {
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "tracer-test-tracefs-{}-{}",
        std::process::id(),
        args.first().copied().unwrap_or("")
    ));
    std::fs::create_dir_all(dir.join("events")).expect("creating an empty tracefs");
    let _rm = Rm(dir.clone());
    run_tracer_env(
        args,
        &[("TRACER_TRACEFS", dir.to_str().expect("UTF-8 temp dir"))],
    )
}

/// A tracefs view that lacks some event categories, as on a kernel where they do not
/// exist (e.g. "ext4" while the ext4 module is not loaded): a temp dir whose events/
/// links every category of the real tracefs but those. Pass `env()` to the tracer
/// (TRACER_TRACEFS); attaching still goes through the real tracefs. Removed on drop.
pub struct TracefsWithout {
    dir: PathBuf,
}

impl TracefsWithout {
    pub fn new(hidden: &[&str]) -> TracefsWithout {
        let real = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("events").is_dir())
            .unwrap_or_else(|| {
                sh(
                    "mount",
                    &["-t", "tracefs", "tracefs", "/sys/kernel/tracing"],
                );
                PathBuf::from("/sys/kernel/tracing")
            });
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracer-test-tracefs-without-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("events")).expect("creating the tracefs view");
        let t = TracefsWithout { dir };
        for e in std::fs::read_dir(real.join("events"))
            .expect("reading tracefs events/")
            .flatten()
        {
            let name = e.file_name();
            if hidden.iter().any(|h| name == std::ffi::OsStr::new(h)) {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), t.dir.join("events").join(&name))
                .expect("linking a tracefs category");
        }
        t
    }

    /// Makes a hidden category appear, as a module loaded while the tracer runs.
    pub fn reveal(&self, category: &str) {
        let real = std::fs::read_link(self.dir.join("events/syscalls"))
            .expect("the view links the syscalls category")
            .with_file_name(category);
        std::os::unix::fs::symlink(real, self.dir.join("events").join(category))
            .expect("linking a tracefs category");
    }

    /// Takes `field` out of `category:event`'s format, as on an older kernel whose
    /// tracepoint lacks it (e.g. sched_process_exit's `group_dead` before 6.18): the
    /// category becomes a directory of links to the real one, but for that event,
    /// whose `format` is a copy without the field's line.
    pub fn without_field(self, category: &str, event: &str, field: &str) -> TracefsWithout {
        let link = self.dir.join("events").join(category);
        let real = std::fs::read_link(&link).expect("the view links the category");
        std::fs::remove_file(&link).expect("unlinking the category");
        std::fs::create_dir(&link).expect("creating the category's copy");
        for e in std::fs::read_dir(&real)
            .expect("reading the category")
            .flatten()
        {
            if e.file_name() != std::ffi::OsStr::new(event) {
                std::os::unix::fs::symlink(e.path(), link.join(e.file_name()))
                    .expect("linking an event");
                continue;
            }
            let dir = link.join(event);
            std::fs::create_dir(&dir).expect("creating the event's copy");
            for f in std::fs::read_dir(e.path())
                .expect("reading the event")
                .flatten()
            {
                if f.file_name() != std::ffi::OsStr::new("format") {
                    std::os::unix::fs::symlink(f.path(), dir.join(f.file_name()))
                        .expect("linking an event file");
                }
            }
            let format = std::fs::read_to_string(e.path().join("format")).expect("format");
            let needle = format!(" {field};");
            assert!(
                format.contains(&needle),
                "{category}:{event} has no field {field}"
            );
            let kept: String = format
                .lines()
                .filter(|l| !(l.trim_start().starts_with("field:") && l.contains(&needle)))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(dir.join("format"), kept).expect("writing the format copy");
        }
        self
    }

    pub fn env(&self) -> [(&'static str, &str); 1] {
        [("TRACER_TRACEFS", self.dir.to_str().expect("UTF-8 temp dir"))]
    }
}

impl Drop for TracefsWithout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the tracer with every capability dropped, as an unprivileged user would.
pub fn run_tracer_unprivileged(args: &[&str]) -> Finished {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ])
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

/// Asserts that no program whose name starts with `prefix` is loaded any more.
pub fn assert_none_loaded(prefix: &str) {
    let left: Vec<_> = loaded_program_names()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(
        left.is_empty(),
        "programs left loaded after the tracer exited: {left:?}"
    );
}

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

/// An ext4 image file, attached to a loop device and mounted in a temp dir. Drop
/// unmounts it, detaches the loop device and deletes the image, also when the test
/// failed half-way (each step is undone only if it was done).
pub struct LoopExt4 {
    dir: PathBuf,
    pub mnt: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
}

impl LoopExt4 {
    /// `size_mib` MiB with `inodes` inodes (mkfs.ext4 -N), mounted at `self.mnt`.
    pub fn new(size_mib: u64, inodes: u32) -> LoopExt4 {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracer-test-ext4-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut fs = LoopExt4 {
            mnt: dir.join("mnt"),
            dir,
            loop_dev: None,
            mounted: false,
        };
        std::fs::create_dir_all(&fs.mnt).expect("creating the temp dir");
        let img = fs.dir.join("ext4.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size_mib << 20))
            .expect("creating the image (truncate)");
        let img = img.to_str().unwrap();
        sh("mkfs.ext4", &["-q", "-F", "-N", &inodes.to_string(), img]);
        fs.loop_dev = Some(sh("losetup", &["--find", "--show", img]));
        sh(
            "mount",
            &[fs.loop_dev.as_deref().unwrap(), fs.mnt.to_str().unwrap()],
        );
        fs.mounted = true;
        fs
    }

    pub fn mnt(&self) -> &str {
        self.mnt.to_str().unwrap()
    }

    pub fn inodes_used(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.mnt).expect("statvfs");
        s.files() - s.files_free()
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Something still holds it (a helper killed late): detach it lazily.
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cgroup hierarchies this host has mounted, read from /proc/self/mountinfo (never
/// assumed): cgroup2 is at /sys/fs/cgroup on a pure cgroup2 host (every current
/// distribution) and at /sys/fs/cgroup/unified on a hybrid one (this project's CI
/// machine), and v1 hierarchies hold the controllers bound to them.
#[derive(Debug)]
pub struct CgroupLayout {
    /// The cgroup2 mount, if any.
    pub unified: Option<PathBuf>,
    /// v1 mounts: (controllers from the super options, mount point).
    pub v1: Vec<(Vec<String>, PathBuf)>,
}

/// Where the memory controller is, and how `tracer cgroups` names its hierarchy.
#[derive(Debug, Clone)]
pub struct MemoryHierarchy {
    /// The mount whose directories are memory cgroups.
    pub mount: PathBuf,
    /// true: cgroup2 (memory enabled through cgroup.subtree_control); false: the v1
    /// memory hierarchy.
    pub v2: bool,
    /// The tracer's name for it (`--hierarchy`, the `hierarchy` fields).
    pub name: String,
}

impl MemoryHierarchy {
    /// For assertion messages: which path the test took.
    pub fn describe(&self) -> String {
        format!(
            "{} memory controller at {}",
            if self.v2 { "cgroup2" } else { "cgroup v1" },
            self.mount.display()
        )
    }
}

impl CgroupLayout {
    pub fn read() -> CgroupLayout {
        let info =
            std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
        let mut layout = CgroupLayout {
            unified: None,
            v1: Vec::new(),
        };
        for line in info.lines() {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split(' ').nth(4) else {
                continue;
            };
            let point = PathBuf::from(point.replace("\\040", " "));
            let mut r = right.split(' ');
            match r.next() {
                Some("cgroup2") if layout.unified.is_none() => layout.unified = Some(point),
                Some("cgroup") => {
                    let ctrls: Vec<String> = r
                        .nth(1)
                        .unwrap_or("")
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro" | "noprefix" | "clone_children" | "xattr")
                                && !o.contains('=')
                                || o.starts_with("name=")
                        })
                        .map(str::to_string)
                        .collect();
                    if !layout.v1.iter().any(|(c, _)| *c == ctrls) {
                        layout.v1.push((ctrls, point));
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// The cgroup2 mount; fails the test with a sentence when there is none.
    pub fn unified(&self) -> &std::path::Path {
        self.unified.as_deref().unwrap_or_else(|| {
            panic!(
                "no cgroup2 file system is mounted (none in /proc/self/mountinfo): mount one, e.g. \
                 `mount -t cgroup2 none /sys/fs/cgroup`"
            )
        })
    }

    /// Controllers the cgroup2 root offers (cgroup.controllers).
    pub fn unified_controllers(&self) -> Vec<String> {
        self.unified
            .as_ref()
            .and_then(|u| std::fs::read_to_string(u.join("cgroup.controllers")).ok())
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Where the memory controller is: the v1 memory hierarchy when memory is bound to
    /// v1 (then cgroup2 cannot have it), else cgroup2 when its root offers memory.
    /// Fails the test with a sentence when neither has it.
    pub fn memory(&self) -> MemoryHierarchy {
        if let Some((ctrls, mount)) = self
            .v1
            .iter()
            .find(|(c, _)| c.iter().any(|c| c == "memory"))
        {
            return MemoryHierarchy {
                mount: mount.clone(),
                v2: false,
                name: ctrls.join(","),
            };
        }
        if self.unified_controllers().iter().any(|c| c == "memory") {
            return MemoryHierarchy {
                mount: self.unified().to_path_buf(),
                v2: true,
                name: "cgroup2".into(),
            };
        }
        panic!(
            "no memory controller: no v1 hierarchy has it and cgroup2's cgroup.controllers ({:?}) \
             lacks it; boot with the memory cgroup enabled",
            self.unified_controllers()
        )
    }
}

/// A controller enabled in a cgroup2 directory's cgroup.subtree_control by a test, and
/// disabled again on drop (only if the test enabled it: a controller the host had on
/// stays on).
pub struct SubtreeControl {
    dir: PathBuf,
    controller: String,
    enabled_here: bool,
}

impl SubtreeControl {
    /// Makes sure `controller` is on for the children of `dir`. cgroup2's "no internal
    /// processes" rule: `dir` must hold no process itself (the root is exempt).
    pub fn enable(dir: &std::path::Path, controller: &str) -> SubtreeControl {
        let file = dir.join("cgroup.subtree_control");
        let on = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
            .split_whitespace()
            .any(|c| c == controller);
        if !on {
            std::fs::write(&file, format!("+{controller}"))
                .unwrap_or_else(|e| panic!("enabling {controller} in {}: {e}", file.display()));
        }
        SubtreeControl {
            dir: dir.to_path_buf(),
            controller: controller.into(),
            enabled_here: !on,
        }
    }
}

impl Drop for SubtreeControl {
    fn drop(&mut self) {
        if self.enabled_here && self.dir.exists() {
            let file = self.dir.join("cgroup.subtree_control");
            if let Err(e) = std::fs::write(&file, format!("-{}", self.controller)) {
                eprintln!(
                    "could not disable {} in {}: {e}",
                    self.controller,
                    file.display()
                );
            }
        }
    }
}

/// A tmpfs mounted on a fresh temp dir with `options` (e.g. "size=16m,nr_inodes=32");
/// unmounted and its directory removed on drop, also when the test failed.
pub struct Tmpfs {
    pub dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    pub fn new(tag: &str, options: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("tracer-tmpfs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the mount point");
        let mut t = Tmpfs {
            dir,
            mounted: false,
        };
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                options,
                "tmpfs",
                t.dir.to_str().unwrap(),
            ],
        );
        t.mounted = true;
        t
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Waits until a running tracer has rewritten its --prom-file `n` times (every report
/// rewrites it), so the reports after this call were made after what the test just
/// did: the wait the tests use instead of a sleep. Fails after 10 s.
pub fn wait_reports(prom: &std::path::Path, n: usize) {
    let mtime = || std::fs::metadata(prom).and_then(|m| m.modified()).ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = mtime();
    let mut seen = 0;
    while seen < n {
        assert!(
            Instant::now() < deadline,
            "the tracer stopped rewriting {} ({seen} of {n} reports seen in 10 s)",
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
