//! `cargo xtask bench NAME`: a workload run alone, with the tracer and with an
//! equivalent bpftrace script, interleaved several times; medians and ratios printed
//! side by side from one run (never timed assertions in tests: machines are noisy).
mod cgroups;
pub mod common;
mod inodes;
mod tcp;
mod triage;
mod zombies;

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark: zombies, tcp-pressure, cgroups, inodes, triage.
    pub name: String,
    /// Interleaved rounds (each runs alone, tracer, bpftrace once).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

pub fn run(a: Args) -> Result<()> {
    match a.name.as_str() {
        "zombies" => zombies::run(&a),
        "tcp-pressure" => tcp::run(&a),
        "cgroups" => cgroups::run(&a),
        "inodes" => inodes::run(&a),
        "triage" => triage::run(&a),
        other => bail!(
            "no benchmark named `{other}`; try zombies, tcp-pressure, cgroups, inodes or triage"
        ),
    }
}
