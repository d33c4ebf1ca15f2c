//! `cargo xtask bench NAME`: a workload run alone, with the tracer and with an
//! equivalent bpftrace script, interleaved several times; medians and ratios printed
//! side by side from one run (never timed assertions in tests: machines are noisy).
mod autopsy;
mod census;
mod cgroups;
pub mod common;
mod inodes;
mod serve;
mod tcp;
mod triage;
mod zombies;

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark: zombies, tcp-pressure, cgroups, autopsy, inodes, census, triage, serve.
    pub name: String,
    /// Interleaved rounds (each runs alone, tracer, bpftrace once).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// serve: minutes of soak under `tracer serve` (the storms run alone 20% of that,
    /// at most a minute, before).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// serve: only these detectors (`tracer serve --detectors`), to tell which one
    /// holds memory or CPU; default all.
    #[arg(long)]
    pub detectors: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    match a.name.as_str() {
        "zombies" => zombies::run(&a),
        "tcp-pressure" => tcp::run(&a),
        "cgroups" => cgroups::run(&a),
        "autopsy" => autopsy::run(&a),
        "inodes" => inodes::run(&a),
        "census" => census::run(&a),
        "triage" => triage::run(&a),
        "serve" => serve::run(&a),
        other => bail!(
            "no benchmark named `{other}`; try zombies, tcp-pressure, cgroups, autopsy, inodes, census, triage or serve"
        ),
    }
}
