//! Harness for the integration tests: run the real tracer binary (which loads real
//! eBPF), cause incidents with the `incident` helper, and clean everything up in guards
//! that also run when a test fails.
mod docker;
mod fixtures;
pub mod http;
mod incident;
mod memcg;
mod run;
mod tcp;
mod tracefs;
mod typed;

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard},
};

pub use docker::*;
pub use fixtures::*;
pub use incident::*;
pub use memcg::*;
pub use run::*;
pub use tcp::*;
pub use tracefs::*;
pub use typed::*;

/// The tracer binary: TRACER_BIN (set by `cargo xtask test`) or target/release/tracer.
pub fn tracer_bin() -> PathBuf {
    let p = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tracer")
        });
    assert!(
        p.exists(),
        "tracer binary {} not found: run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

/// The kernel of the test matrix this test process runs on: "host" (this machine),
/// "6.1" or "6.12" (stock Debian kernels in a VM), from TRACER_MATRIX_KERNEL, which
/// `cargo xtask test` sets for every test process. Tests use it to assert the path
/// the tracer must take there (fast path where the kernel allows it, else the named
/// fallback).
pub fn matrix_kernel() -> &'static str {
    match std::env::var("TRACER_MATRIX_KERNEL").as_deref() {
        Ok("host") => "host",
        Ok("6.1") => "6.1",
        Ok("6.12") => "6.12",
        Ok(other) => {
            panic!("TRACER_MATRIX_KERNEL={other} is not a kernel of the matrix (host, 6.1, 6.12)")
        }
        Err(_) => panic!("TRACER_MATRIX_KERNEL is not set: run the tests with cargo xtask test"),
    }
}

/// These tests load eBPF and change system state: they need root, and fail loudly
/// without it (this project's CI runs as root, so a skip would hide a broken tracer).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests must run as root (cargo xtask test does)"
    );
}

/// Serializes the tests of one test binary that load programs or touch global state,
/// so checks like "no program left loaded" see only their own tracer.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
