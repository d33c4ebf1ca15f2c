use which::which;

/// Rebuild the eBPF object when bpf-linker changes (cargo cannot see it otherwise):
/// a new linker can change the emitted BTF without any source change.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
