//! tracer: eBPF tracer that finds the causes of Linux production incidents.
//! main only parses the command line and dispatches to a detector.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bpf;
mod cgroups;
mod detectors;
mod doctor;
mod inodes;
mod kbtf;
mod output;
mod procinfo;
mod prom;
mod run;
mod sink;
mod snapshot;
mod tcp;
mod tracefs;
mod trend;
mod triage;
mod zombies;

/// Find the causes of Linux production incidents with eBPF.
///
/// Each command answers one question during an incident and prints a report when it
/// stops (Ctrl-C, or -d/--duration). Add --json for one JSON object per report.
/// Start with `tracer doctor` to see what this kernel allows.
#[derive(Parser, Debug)]
#[command(name = "tracer", version, verbatim_doc_comment)]
struct Cli {
    /// More detail on stderr (-v: debug, -vv: trace, including kernel-side logs).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// What this kernel allows and which hooks each detector will use.
    Doctor(doctor::Args),
    /// Where to look first: the first-60-seconds USE check of CPU, memory, disk,
    /// network, kernel log and leaks (Netflix). Exit 0 ok, 3 warn, 4 crit.
    Triage(triage::Args),
    /// TCP memory pressure episodes, who causes them, what to set (Cloudflare incident).
    TcpPressure(tcp::Args),
    /// Leaked and dying cgroups and who creates them (LinkedIn incident).
    Cgroups(cgroups::Args),
    /// Which filesystem runs out of inodes, who creates the files, where (Sentry incident).
    Inodes(inodes::Args),
    /// Parents that leave zombie children unreaped, and PID headroom (Uber incident).
    Zombies(zombies::Args),
}

fn main() -> ExitCode {
    bpf::return_big_buffers();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .init();

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("starting the async runtime: {e}")),
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Doctor(a) => doctor::run(a),
            Command::Triage(a) => triage::run(a).await.map(i32::from),
            Command::Inodes(a) => inodes::start(a)?.run().await.map(|()| 0),
            Command::Zombies(a) => zombies::start(a)?.run().await.map(|()| 0),
            Command::TcpPressure(a) => tcp::start(a)?.run().await.map(|()| 0),
            Command::Cgroups(a) => cgroups::start(a)?.run().await.map(|()| 0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => fail(e),
    }
}

/// One sentence on stderr, exit 1 (clap uses 2 for usage errors).
fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("tracer: {e:#}");
    ExitCode::from(1)
}
