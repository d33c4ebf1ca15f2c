//! Loading the embedded eBPF object and attaching a detector's hooks, one file per job:
//! - [`spec`]: what a detector asks of the kernel (hooks and their kinds, choices of
//!   paths with fallbacks, tracepoint field offsets);
//! - [`caps`]: the capabilities the tracer needs, and which this process lacks;
//! - [`load`]: privileges, loading the object with the offsets and attaching the hooks
//!   (a [`Session`]), and the shared kernel counters;
//! - [`probe`]: whether a hook can be used here without attaching it (`tracer doctor`);
//! - [`program`]: one program of the object, by name and kind;
//! - [`maps`]: reading the object's maps, so that maps no loaded program uses cost
//!   one entry.
mod btf;
pub mod caps;
mod load;
mod maps;
mod probe;
mod program;
mod spec;

pub use btf::return_big_buffers;
pub use load::{CpuSum, Plan, Session, missing_caps, require_privileges, start_many};
pub use probe::{
    Prober, fentry_available, has_btf, kernel_release, kprobes_available, probe_choice, probe_hooks,
};
pub use spec::{Choice, Chosen, Hook, HookKind, HookState, HookStatus, Offset, Path, Spec};

/// The kernel programs, built by build.rs and embedded: nothing to install beside the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));
