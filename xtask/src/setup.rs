//! Installs what a fresh machine lacks, idempotently, and quickly when done already:
//! nightly's rust-src, bpf-linker built against nightly's own libLLVM (no prebuilt
//! binary can be downloaded here and Debian has no matching LLVM), and the Debian tools
//! the tests and benchmarks use.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::status;

/// bpf-linker version known to work with aya 0.14 and nightly's LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: command that proves it is there -> package.
const TOOLS: &[(&str, &str)] = &[
    ("mkfs.ext4", "e2fsprogs"),
    // The inode-creation tests fill a small xfs (tests/tests/inode_creations.rs).
    ("mkfs.xfs", "xfsprogs"),
    ("losetup", "mount"),
    ("setpriv", "util-linux"),
    ("ip", "iproute2"),
    ("promtool", "prometheus"),
    // A real container runtime for the container tests (tests/src/docker.rs), and the
    // static busybox their image is made of (no registry is reachable).
    ("dockerd", "docker.io"),
    ("busybox", "busybox-static"),
];

/// What the VM matrix needs: qemu (TCG), depmod for the unpacked kernels' modules,
/// a static busybox for virtme-ng's initramfs (Debian kernels build 9p and virtio as
/// modules, so the guest needs one), and virtme-ng itself.
const VM_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("depmod", "kmod"),
    ("busybox", "busybox-static"),
];

/// virtme-ng version the VM runner was written against (console on stderr with
/// `--verbose`, `--rwdir`/`--rodir`, `--exec`).
const VIRTME_NG: &str = "virtme-ng==1.42";

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    apt_tools(TOOLS)
}

/// `cargo xtask setup`: everything, the VM matrix's tools and kernels included.
pub fn all() -> Result<()> {
    run()?;
    vm_tools()?;
    crate::kernels::ensure(&crate::kernels::Series::ALL).map(|_| ())
}

/// Tools that boot the matrix kernels: Debian packages, then virtme-ng from PyPI.
pub fn vm_tools() -> Result<()> {
    apt_tools(VM_TOOLS).context("installing the VM matrix's tools")?;
    if have("vng") {
        return Ok(());
    }
    eprintln!("xtask: pip install {VIRTME_NG} (boots the matrix kernels)");
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "-q"])
            .args(extra)
            .arg(VIRTME_NG)
            .status()
            .is_ok_and(|s| s.success())
    };
    // A Debian system Python refuses pip installs (PEP 668) unless told otherwise.
    if !pip(&[]) && !pip(&["--break-system-packages"]) {
        bail!(
            "virtme-ng is missing and `python3 -m pip install {VIRTME_NG}` failed: install it with pip"
        );
    }
    if !have("vng") {
        bail!(
            "pip installed virtme-ng but `vng` is not on PATH: add pip's script directory (e.g. ~/.local/bin) to PATH"
        );
    }
    Ok(())
}

pub fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// PATH with ~/.cargo/bin in front, where `cargo install` puts bpf-linker.
pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("the nightly toolchain is needed to build the eBPF programs")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly (eBPF builds core from source)");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let bin = cargo_bin().join("bpf-linker");
    if bin.exists() {
        let v = output(Command::new(&bin).arg("--version")).unwrap_or_default();
        if v.contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    // Link bpf-linker against the nightly toolchain's own libLLVM, whose name and major
    // version are derived here rather than hard-coded.
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let so = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM-") && n.contains("-rust-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*-rust-*.so in {}", libdir.display()))?;
    let so = so
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV shows no LLVM version")?
        .to_string();
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {so} (about a minute)");
    let libdir = libdir.display();
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .env(
                "RUSTFLAGS",
                format!("-L {libdir} -l dylib={so} -C link-arg=-Wl,-rpath,{libdir}"),
            ),
    )
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success())
}

/// apt-get installs the packages whose commands are missing (one update, one install).
pub fn apt_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing tools ({}); install them with apt-get as root",
            missing.join(" ")
        );
    }
    eprintln!("xtask: apt-get install {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
