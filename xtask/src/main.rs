//! `cargo xtask`: setup, build, run, test and bench for the tracer workspace. Every
//! task runs `setup` first, so a fresh machine needs nothing installed by hand.
mod bench;
pub mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Tasks for the tracer workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: nightly rust-src, bpf-linker, test tools.
    Setup,
    /// Build the tracer (release) with its embedded eBPF object.
    Build,
    /// Build and run the tracer as root: `cargo xtask run -- zombies --parent`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests and the integration tests that load real eBPF.
    Test {
        /// Extra arguments for `cargo test`: a test name filter, or `--test zombies` for one
        /// integration test file.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Side-by-side benchmarks: workload alone, with tracer, with bpftrace.
    Bench(bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build => setup::run().and_then(|()| build()).map(|_| ()),
        Task::Run { args } => setup::run().and_then(|()| run(&args)),
        Task::Test { args } => setup::run().and_then(|()| test(&args)),
        Task::Bench(a) => setup::run().and_then(|()| bench::run(a)),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo` with bpf-linker on PATH (it may live in ~/.cargo/bin only).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// Builds the release tracer and returns the binary's path.
pub fn build() -> Result<PathBuf> {
    status(cargo().args(["build", "--release", "--package", "tracer"]))?;
    Ok(workspace_root().join("target/release/tracer"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs as root: directly when root already, else through sudo when present.
pub fn root_command(bin: &Path) -> Result<Command> {
    if is_root() {
        return Ok(Command::new(bin));
    }
    if Command::new("sudo").arg("-n").arg("true").status().is_ok() {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(bin);
        return Ok(c);
    }
    bail!("the tracer needs root to load eBPF programs and sudo is not installed; run this as root")
}

fn run(args: &[String]) -> Result<()> {
    let bin = build()?;
    let st = root_command(&bin)?
        .args(args)
        .status()
        .context("starting the tracer")?;
    std::process::exit(st.code().unwrap_or(1));
}

fn test(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and create cgroups and loop mounts: run `cargo xtask test` as root"
        );
    }
    let bin = build()?;
    // Doc tests are left out (there are none; their empty runs would close the log).
    // `--test NAME` picks one integration test file; `--tests` would add all the others.
    let targets: &[&str] = if args.iter().any(|a| a == "--test") {
        &[]
    } else {
        &["--lib", "--bins", "--tests"]
    };
    let mut child = cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "tracer-ebpf",
            "--release",
        ])
        .args(targets)
        .args(args)
        .env("TRACER_BIN", &bin)
        // Tests assert the kernel path the tracer takes on each kernel of the matrix.
        .env("TRACER_MATRIX_KERNEL", "host")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through and add up cargo's "test result:" lines.
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|p| {
                        p.trim().strip_suffix(word).map(|n| {
                            n.trim()
                                .trim_start_matches("ok.")
                                .trim_start_matches("FAILED.")
                                .trim()
                                .parse::<u64>()
                                .unwrap_or(0)
                        })
                    })
                    .unwrap_or(0)
            };
            passed += num(" passed");
            failed += num(" failed");
        }
    }
    let st = child.wait().context("waiting for cargo test")?;
    println!("{passed} passed, {failed} failed");
    if !st.success() {
        bail!("tests failed ({st})");
    }
    Ok(())
}
