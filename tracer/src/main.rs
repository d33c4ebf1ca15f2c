//! tracer: eBPF tracer that finds the causes of Linux production incidents.
//! main only builds the command line from the registry and starts the detector named.
use std::process::ExitCode;

use clap::{Args as _, CommandFactory as _, FromArgMatches as _, Parser};

use tracer::{bpf, detectors, doctor, serve};

/// Find the causes of Linux production incidents with eBPF.
///
/// Each command answers one question during an incident and prints a report when it
/// stops (Ctrl-C, or -d/--duration). Add --json for one JSON object per report.
/// Start with `tracer doctor` to see what this kernel allows.
#[derive(Parser, Debug)]
#[command(name = "tracer", version, verbatim_doc_comment)]
#[command(arg_required_else_help = true, args_conflicts_with_subcommands = true)]
struct Cli {
    /// More detail on stderr (-v: debug, -vv: trace, including kernel-side logs).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print the names of the detectors, one per line, and exit (for scripts).
    #[arg(long)]
    list: bool,
}

/// The command line: the global options, `doctor`, and one subcommand per registered
/// detector (src/detectors.rs).
fn cli() -> clap::Command {
    let doctor = doctor::Args::augment_args(clap::Command::new("doctor"))
        .about("What this kernel allows and which hooks each detector will use");
    let serve = serve::Args::augment_args(clap::Command::new("serve")).about(
        "Run every detector continuously and serve Prometheus metrics (/metrics) for fleets",
    );
    detectors::ALL
        .iter()
        .fold(Cli::command().subcommand(doctor), |c, e| {
            c.subcommand(e.command())
        })
        .subcommand(serve)
}

fn main() -> ExitCode {
    bpf::return_big_buffers();
    let matches = cli().get_matches();
    let level = match matches.get_count("verbose") {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .init();
    let Some((name, sub)) = matches.subcommand() else {
        if matches.get_flag("list") {
            for e in detectors::ALL {
                println!("{}", e.spec.detector);
            }
            return ExitCode::SUCCESS;
        }
        // Options alone (`tracer -v`): clap's own usage error.
        cli()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "a command is required: `tracer --help` lists them",
            )
            .exit()
    };
    if name == "doctor" {
        let r = doctor::Args::from_arg_matches(sub)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(doctor::run);
        return match r {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => fail(e),
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("starting the async runtime: {e}")),
    };
    let result = rt.block_on(async {
        if name == "serve" {
            return serve::run(serve::Args::from_arg_matches(sub)?).await;
        }
        let entry = detectors::find(name).expect("every other subcommand is a registered detector");
        (entry.prepare)(sub)?.start()?.run().await
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e),
    }
}

/// One sentence on stderr, exit 1 (clap uses 2 for usage errors).
fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("tracer: {e:#}");
    ExitCode::from(1)
}
