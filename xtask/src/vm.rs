//! Runs commands as root inside a stock kernel booted under qemu with virtme-ng, which
//! shares this machine's root file system read-only (so the test binaries built here run
//! unchanged) and one read-write output directory.
//!
//! Under TCG (`--disable-kvm`: `/dev/kvm` opens here but KVM guests hang, there is no
//! nested virtualisation) the guest's stdout does not reliably reach the host, and vng's
//! own exit status does not tell the guest command's. So the guest writes each command's
//! output and exit status into the output directory (`N.out`, `N.rc`), and the host polls
//! for them: a missing `N.rc` means the command never finished. The guest console
//! (`--verbose`: kernel log at loglevel 7) goes to `console.log` there, for a hung or
//! panicked guest, which a timeout kills.
use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::kernels::{self, Kernel, Series};

/// Guest size: 2 vCPUs by default (TRACER_VM_CPUS overrides), so the tracer and the
/// workload it watches are scheduled as on an SMP host, and 4 GiB (the tests' loop images
/// and /tmp live in guest memory).
const CPUS: &str = "2";
const MEMORY: &str = "4G";

fn cpus() -> String {
    std::env::var("TRACER_VM_CPUS").unwrap_or_else(|_| CPUS.to_string())
}

/// Default bound on one guest's whole run: the full suite takes a few minutes under TCG.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// Paths the guest does not see from the host: virtme-ng mounts a tmpfs (or its own
/// tree) over them.
const HIDDEN_IN_GUEST: &[&str] = &[
    "/run",
    "/var/cache",
    "/var/log",
    "/var/tmp",
    "/var/lib/apt",
    "/var/lib/private",
    "/usr/lib/modules",
    "/lib/modules",
    "/dev",
    "/proc",
    "/sys",
];

/// One command to run in the guest.
#[derive(Clone)]
pub struct Job {
    pub label: String,
    pub cwd: PathBuf,
    pub argv: Vec<String>,
}

/// What became of a job.
pub enum Outcome {
    Exited {
        code: i32,
        output: String,
    },
    /// No exit status came back: the guest hung, panicked or was killed first.
    NotFinished {
        output: String,
    },
}

/// How the guest run went.
pub struct Boot {
    /// From starting vng to the guest script's first line (the host-side boot time).
    pub boot: Option<Duration>,
    pub total: Duration,
    /// Set when the guest was killed or stopped before the last job finished: one
    /// sentence, followed by the tail of the console when printed.
    pub failure: Option<String>,
    pub console: PathBuf,
}

/// `'...'` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Parses `90`, `90s`, `20m` into a duration.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    match num.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n * unit)),
        _ => Err(format!(
            "`{s}` is not a timeout: give seconds (`900`, `900s`) or minutes (`20m`)"
        )),
    }
}

/// The timeout from TRACER_VM_TIMEOUT, else the default.
pub fn env_timeout() -> Result<Duration> {
    match std::env::var("TRACER_VM_TIMEOUT") {
        Ok(v) => parse_timeout(&v).map_err(|e| anyhow::anyhow!("TRACER_VM_TIMEOUT: {e}")),
        Err(_) => Ok(DEFAULT_TIMEOUT),
    }
}

fn check_visible(what: &str, p: &Path) -> Result<()> {
    if let Some(h) = HIDDEN_IN_GUEST.iter().find(|h| p.starts_with(h)) {
        bail!(
            "the {what} {} is under {h}, which the VM does not share from the host: move it elsewhere",
            p.display()
        );
    }
    Ok(())
}

/// The shell script the guest runs: the privileged environment the tests expect, then
/// each job with its output and exit status written into `out`.
fn script(out: &Path, env: &[(String, String)], jobs: &[Job]) -> String {
    let o = quote(&out.to_string_lossy());
    let mut s = format!(
        "#!/bin/sh\n\
         # Written by cargo xtask; runs as root inside the VM.\n\
         O={o}\n\
         cut -d' ' -f1 /proc/uptime > \"$O/boot-seconds\"\n\
         exec 3> \"$O/guest-setup.log\"\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         # virtme-ng mounts these; mount them where it did not. tracefs is left to the\n\
         # tracer, which mounts it itself when missing.\n\
         grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup >&3 2>&3\n\
         grep -q ' /sys/kernel/debug debugfs ' /proc/mounts || mount -t debugfs debugfs /sys/kernel/debug >&3 2>&3\n\
         grep -q ' /dev/shm tmpfs ' /proc/mounts || mount -t tmpfs tmpfs /dev/shm >&3 2>&3\n\
         # Loop devices for the tests' ext4 images. ext4 itself is NOT loaded here: the\n\
         # tracer must cope with ext4 absent, and the first ext4 mount autoloads it.\n\
         modprobe loop >&3 2>&3\n\
         uname -r >&3; cat /proc/mounts >&3; cat /proc/modules >&3\n"
    );
    for (k, v) in env {
        s += &format!("export {k}={}\n", quote(v));
    }
    for (i, job) in jobs.iter().enumerate() {
        let argv: Vec<String> = job.argv.iter().map(|a| quote(a)).collect();
        s += &format!(
            "(cd {} && exec {}) > \"$O/{i}.out\" 2>&1 < /dev/null; echo $? > \"$O/{i}.rc\"\n",
            quote(&job.cwd.to_string_lossy()),
            argv.join(" ")
        );
    }
    s += "echo done > \"$O/done\"\n";
    s
}

/// Boots `kernel`, runs `jobs` in order as root with `env`, and calls `done` with each
/// job's outcome as soon as it is known (so output streams while the guest runs).
pub fn run(
    kernel: &Kernel,
    out: &Path,
    env: &[(String, String)],
    jobs: &[Job],
    timeout: Duration,
    mut done: impl FnMut(usize, &Outcome),
) -> Result<Boot> {
    let ws = crate::workspace_root();
    check_visible("workspace", &ws)?;
    check_visible("output directory", out)?;
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let script_path = out.join("run.sh");
    std::fs::write(&script_path, script(out, env, jobs))?;
    let console = out.join("console.log");
    let log = File::create(&console)?;

    let start = Instant::now();
    let mut child = Command::new("vng")
        .arg("--verbose")
        .arg("--disable-kvm")
        .args(["-p", &cpus(), "-m", MEMORY])
        // Single-threaded TCG: the vCPUs take turns on one host thread. Under qemu 7.2's
        // multi-threaded TCG a vCPU can still run code another vCPU has just patched
        // back (attaching and detaching tracepoints flips static keys with int3
        // patching), and a 6.12 guest died with "Oops: int3" in ttwu_do_activate in one
        // full run of the suite. Taking turns makes every patch visible at once.
        .args(["--qemu-opt=-accel", "--qemu-opt=tcg,thread=single"])
        .arg("--rwdir")
        .arg(out)
        // The kernel's modules: the guest's /lib/modules/RELEASE links into this tree.
        .arg("--rodir")
        .arg(kernels::cache_dir())
        .arg("--run")
        .arg(kernel.vmlinuz())
        .args(["--user", "root", "--cwd"])
        .arg(&ws)
        .arg("--exec")
        .arg(format!("sh {}", quote(&script_path.to_string_lossy())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so a timeout kills vng and qemu and nothing else.
        .process_group(0)
        .spawn()
        .context("starting vng (virtme-ng; `cargo xtask setup` installs it)")?;
    let pgid = child.id() as i32;

    let mut next = 0;
    let mut boot = None;
    let mut killed = false;
    let mut exited = false;
    loop {
        if boot.is_none() && out.join("boot-seconds").exists() {
            boot = Some(start.elapsed());
        }
        while next < jobs.len() && out.join(format!("{next}.rc")).exists() {
            let code = std::fs::read_to_string(out.join(format!("{next}.rc")))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let output =
                std::fs::read_to_string(out.join(format!("{next}.out"))).unwrap_or_default();
            // An rc file caught half-written is read again on the next round.
            let Some(code) = code else { break };
            done(next, &Outcome::Exited { code, output });
            next += 1;
        }
        if exited || next == jobs.len() && out.join("done").exists() {
            break;
        }
        if child.try_wait()?.is_some() {
            // One more round picks up files written just before the guest stopped.
            exited = true;
            continue;
        }
        if start.elapsed() > timeout {
            // SAFETY: kill(2) on the process group this function created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if !killed && !exited {
        // The script is done; give the guest a moment to power off, then make sure.
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let failure = if next < jobs.len() {
        for i in next..jobs.len() {
            let output = std::fs::read_to_string(out.join(format!("{i}.out"))).unwrap_or_default();
            done(i, &Outcome::NotFinished { output });
        }
        Some(if killed {
            format!(
                "the {} guest did not finish within {}s (hung or panicked) and was killed; {} of {} commands finished",
                kernel.series.name(),
                timeout.as_secs(),
                next,
                jobs.len()
            )
        } else if boot.is_none() {
            format!(
                "the {} guest stopped before running anything (boot failure)",
                kernel.series.name()
            )
        } else {
            format!(
                "the {} guest stopped after {} of {} commands (kernel panic or crash)",
                kernel.series.name(),
                next,
                jobs.len()
            )
        })
    } else {
        None
    };
    Ok(Boot {
        boot,
        total: start.elapsed(),
        failure,
        console,
    })
}

/// The last `n` lines of the console log, for a guest that went wrong.
pub fn console_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn seconds(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// `cargo xtask vm`: boot one kernel and run one command by hand.
#[derive(clap::Args)]
pub struct Args {
    /// Kernel to boot.
    #[arg(long, value_enum)]
    kernel: Series,
    /// Kill the guest after this long (`900`, `900s`, `20m`; default 40m or TRACER_VM_TIMEOUT).
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// The command, run as root in the workspace: `-- target/release/tracer doctor`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

pub fn task(args: Args) -> Result<()> {
    crate::setup::vm_tools()?;
    let kernel = kernels::ensure(&[args.kernel])?.remove(0);
    let timeout = match args.timeout {
        Some(t) => t,
        None => env_timeout()?,
    };
    let tracer = crate::build()?;
    let out = crate::workspace_root()
        .join("target/vm")
        .join(format!("cmd-{}", args.kernel.name()));
    let env = vec![
        (
            "TRACER_BIN".to_string(),
            tracer.to_string_lossy().into_owned(),
        ),
        (
            "TRACER_MATRIX_KERNEL".to_string(),
            args.kernel.name().to_string(),
        ),
    ];
    let job = Job {
        label: args.command.join(" "),
        cwd: crate::workspace_root(),
        argv: args.command,
    };
    eprintln!(
        "xtask: booting {} ({}) under qemu (TCG)",
        kernel.package, kernel.release
    );
    let mut code = 1;
    let boot = run(
        &kernel,
        &out,
        &env,
        std::slice::from_ref(&job),
        timeout,
        |_, o| match o {
            Outcome::Exited { code: c, output } => {
                print!("{output}");
                code = *c;
            }
            Outcome::NotFinished { output } => print!("{output}"),
        },
    )?;
    if let Some(f) = boot.failure {
        eprintln!(
            "xtask: {f}. Last lines of its console ({}):\n{}",
            boot.console.display(),
            console_tail(&boot.console, 40)
        );
        std::process::exit(1);
    }
    eprintln!(
        "xtask: `{}` exited with status {code} on {} (boot {}, total {})",
        job.label,
        kernel.release,
        boot.boot.map(seconds).unwrap_or_default(),
        seconds(boot.total)
    );
    std::process::exit(code);
}
