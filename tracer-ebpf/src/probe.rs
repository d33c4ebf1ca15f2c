//! Capability probes: programs that are only loaded (never attached) to learn whether
//! this kernel allows a program type. `tracer doctor` and detectors with an fentry fast
//! path load this; a failure (EPERM here, lockdown or no BTF trampolines) selects the
//! tracepoint fallback.
use aya_ebpf::{macros::fentry, programs::FEntryContext};

/// fentry on a function given at load time (the loader picks one present in BTF).
#[fentry(function = "do_exit")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}
