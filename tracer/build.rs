//! Builds `tracer-ebpf` for the BPF target with aya-build and leaves the object in
//! OUT_DIR, from where `tracer` embeds it (one self-contained binary).
use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = Path::new(&manifest).parent().context("workspace root")?;
    let ebpf_dir = root.join("tracer-ebpf");
    // aya-build only watches the eBPF crate itself; the shared types change it too.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tracer-common").display()
    );
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
