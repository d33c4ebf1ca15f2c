//! One program of the loaded object: found by name as the kind its hook says,
//! unloaded whatever its kind, and its load error in one line.
use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, programs::Program};

pub(super) fn unload(p: &mut Program) -> Result<(), aya::programs::ProgramError> {
    match p {
        Program::TracePoint(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        _ => Ok(()),
    }
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program>,
{
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is not in the eBPF object"))?;
    p.try_into()
        .map_err(|_| anyhow!("program {name} is not of the kind its hook says"))
}

/// First line of a load error, without aya's empty "Verifier output:" tail.
pub(super) fn short_error(e: &aya::programs::ProgramError) -> String {
    let s = e.to_string();
    let first = s.lines().next().unwrap_or(&s);
    first
        .split(". Verifier output:")
        .next()
        .unwrap_or(first)
        .to_string()
}
