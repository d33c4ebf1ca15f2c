//! `cargo xtask`: setup, build, run, test and bench for the tracer workspace. Every
//! task runs `setup` first, so a fresh machine needs nothing installed by hand.
mod bench;
mod kernels;
pub mod setup;
mod test;
mod vm;

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
    /// Install what a fresh machine lacks: nightly rust-src, bpf-linker, test tools, and
    /// for the VM matrix qemu, virtme-ng and the stock kernels.
    Setup,
    /// Build the tracer (release) with its embedded eBPF object.
    Build,
    /// Build and run the tracer as root: `cargo xtask run -- zombies --parent`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test on the host, then inside VMs on the stock 6.1 and 6.12 kernels:
    /// `cargo xtask test [--kernel host|6.1|6.12]... [--no-vm] [-- --test zombies]`.
    Test(test::Args),
    /// Boot a stock kernel and run one command in it as root:
    /// `cargo xtask vm --kernel 6.1 -- target/release/tracer doctor`.
    Vm(vm::Args),
    /// Side-by-side benchmarks: workload alone, with tracer, with bpftrace.
    Bench(bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::all(),
        Task::Build => setup::run().and_then(|()| build()).map(|_| ()),
        Task::Run { args } => setup::run().and_then(|()| run(&args)),
        Task::Test(a) => setup::run().and_then(|()| test::run(a)),
        Task::Vm(a) => setup::run().and_then(|()| vm::task(a)),
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
