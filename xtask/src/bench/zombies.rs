//! zombies benchmark (written next).
use anyhow::Result;

pub fn run(_a: &super::Args) -> Result<()> {
    anyhow::bail!("the zombies benchmark is being written")
}
