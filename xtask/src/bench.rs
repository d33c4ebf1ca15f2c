//! Benchmarks (filled in per detector).
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark: zombies.
    pub name: String,
}

pub fn run(_a: Args) -> Result<()> {
    anyhow::bail!("not yet")
}
