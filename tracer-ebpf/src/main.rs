//! Kernel-side programs of the tracer. One module per detector (same name as the
//! detector's module in `tracer` and `tracer-common`); programs are named
//! `<detector>_<hook>`. Only the programs of the running detector are loaded.
#![no_std]
#![no_main]

mod cgroups;
mod common;
mod inodes;
mod probe;
mod tcp;
mod tcp_prune;
mod triage;
mod zombies;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never executed.
    loop {}
}

/// GPL-compatible so the tracing helpers (bpf_probe_read_*) are allowed.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
