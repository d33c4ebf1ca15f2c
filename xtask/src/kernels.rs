//! The stock kernels of the test matrix: Debian's signed `-amd64` images of the 6.1 and
//! 6.12 LTS series. The newest package of each series in the apt lists is fetched with
//! `apt-get download` and unpacked with `dpkg -x` (never installed), its modules indexed
//! with `depmod -b`, and the result cached between runs. The cache must be readable
//! inside the guest, which sees this machine's root file system (the VM runner also
//! shares the cache directory explicitly).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::status;

/// A kernel series of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Series {
    /// Debian 12's 6.1 LTS (also the series of Amazon Linux 2023): linux-image-6.1.0-N-amd64.
    #[value(name = "6.1")]
    V6_1,
    /// The 6.12 LTS backported to Debian 12: linux-image-6.12.N+deb12-amd64.
    #[value(name = "6.12")]
    V6_12,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::V6_1, Series::V6_12];

    pub fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// The package name pattern, for messages.
    fn pattern(self) -> &'static str {
        match self {
            Series::V6_1 => "linux-image-6.1.0-N-amd64",
            Series::V6_12 => "linux-image-6.12.N+deb12-amd64",
        }
    }

    /// The N of a plain `-amd64` image of this series (not -cloud, -rt, -dbg, -unsigned).
    fn abi(self, pkg: &str) -> Option<u32> {
        let (prefix, suffix) = match self {
            Series::V6_1 => ("linux-image-6.1.0-", "-amd64"),
            Series::V6_12 => ("linux-image-6.12.", "+deb12-amd64"),
        };
        pkg.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
    }

    /// The newest package of the series among `names`.
    fn newest<'a>(self, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        names
            .into_iter()
            .filter_map(|n| self.abi(n).map(|v| (v, n)))
            .max()
            .map(|(_, n)| n)
    }
}

/// A stock kernel unpacked in the cache, ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub series: Series,
    pub package: String,
    /// `uname -r` of the kernel.
    pub release: String,
    /// The `dpkg -x` tree: boot/vmlinuz-RELEASE and lib/modules/RELEASE.
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
}

/// Where unpacked kernels live: TRACER_KERNEL_CACHE, else ~/.cache/tracer-kernels (kept
/// across clones of the workspace, and visible in the guest, unlike /var/cache).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRACER_KERNEL_CACHE") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"))
        .join("tracer-kernels")
}

const READY: &str = ".ready";

/// Packages of every series in the apt lists (one `apt-cache search`, about 3 s).
fn apt_packages() -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-image-6\.1(\.0-[0-9]+|2\.[0-9]+\+deb12)-amd64$",
        ])
        .output()
        .context("running apt-cache (the matrix kernels come from Debian's packages)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

fn apt_update() -> Result<()> {
    eprintln!("xtask: apt-get update (looking for the matrix kernels)");
    status(Command::new("apt-get").args(["update", "-q"]))
}

/// Cached kernels of `series`, newest first.
fn cached(series: Series) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| series.abi(n).is_some() && cache_dir().join(n).join(READY).exists())
        .collect();
    names.sort_by_key(|n| std::cmp::Reverse(series.abi(n)));
    names
}

/// The newest kernel of each series, downloaded and unpacked when not cached yet.
pub fn ensure(series: &[Series]) -> Result<Vec<Kernel>> {
    if series.is_empty() {
        return Ok(Vec::new());
    }
    let mut pkgs = apt_packages()?;
    let mut updated = false;
    if series
        .iter()
        .any(|s| s.newest(pkgs.iter().map(String::as_str)).is_none())
    {
        apt_update()?;
        updated = true;
        pkgs = apt_packages()?;
    }
    let mut kernels = Vec::new();
    for &s in series {
        let Some(pkg) = s
            .newest(pkgs.iter().map(String::as_str))
            .map(str::to_string)
        else {
            // No apt lists that know the series (offline, other distribution): a cached
            // kernel of the series still does.
            if let Some(pkg) = cached(s).into_iter().next() {
                eprintln!(
                    "xtask: apt knows no {} package; using the cached {pkg}",
                    s.pattern()
                );
                kernels.push(kernel(s, pkg));
                continue;
            }
            bail!(
                "no {} package in the apt lists and none cached in {}: the {} kernel of the matrix needs Debian 12's package sources",
                s.pattern(),
                cache_dir().display(),
                s.name()
            );
        };
        let mut k = kernel(s, pkg);
        if !k.dir.join(READY).exists() {
            match unpack(&k) {
                Ok(()) => {}
                // Stale lists name a package the mirror dropped: refresh once and retry.
                Err(_) if !updated => {
                    apt_update()?;
                    updated = true;
                    pkgs = apt_packages()?;
                    let pkg = s.newest(pkgs.iter().map(String::as_str)).with_context(|| {
                        format!("no {} package after apt-get update", s.pattern())
                    })?;
                    k = kernel(s, pkg.to_string());
                    if !k.dir.join(READY).exists() {
                        unpack(&k)?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        prune(s, &k.package);
        kernels.push(k);
    }
    Ok(kernels)
}

fn kernel(series: Series, package: String) -> Kernel {
    let release = package.trim_start_matches("linux-image-").to_string();
    let dir = cache_dir().join(&package);
    Kernel {
        series,
        package,
        release,
        dir,
    }
}

/// `apt-get download` + `dpkg -x` + `depmod -b`, into a temporary directory renamed into
/// place when complete, so an interrupted run leaves no half-unpacked kernel behind.
fn unpack(k: &Kernel) -> Result<()> {
    let cache = cache_dir();
    let work = cache.join(format!(".unpack-{}", k.package));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    eprintln!(
        "xtask: downloading {} (the {} kernel of the matrix)",
        k.package,
        k.series.name()
    );
    let dl = Command::new("apt-get")
        .args([
            "download",
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            &k.package,
        ])
        .current_dir(&work)
        .status()
        .context("running apt-get download")?;
    if !dl.success() {
        bail!("apt-get download {} failed ({dl})", k.package);
    }
    let deb = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {} left no .deb", k.package))?;
    let tree = work.join("tree");
    status(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;
    status(Command::new("depmod").arg("-b").arg(&tree).arg(&k.release))?;
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{}", k.release));
    if !vmlinuz.exists() {
        bail!("{} holds no {}", k.package, vmlinuz.display());
    }
    std::fs::write(tree.join(READY), &k.package)?;
    let _ = std::fs::remove_dir_all(&k.dir);
    std::fs::rename(&tree, &k.dir)
        .with_context(|| format!("moving the unpacked kernel to {}", k.dir.display()))?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// Removes older cached kernels of the series (each is about 400 MB unpacked).
fn prune(series: Series, keep: &str) {
    for old in cached(series).into_iter().filter(|n| n != keep) {
        let _ = std::fs::remove_dir_all(cache_dir().join(old));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_plain_amd64_image_of_each_series() {
        let names = [
            "linux-image-6.1.0-47-amd64",
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.1.0-57-amd64-dbg",
            "linux-image-6.1.0-50-amd64",
            "linux-image-6.12.111+deb12-amd64",
            "linux-image-6.12.117+deb12-rt-amd64",
            "linux-image-6.12.99+deb12-amd64",
            "linux-image-6.12-amd64",
        ];
        assert_eq!(
            Series::V6_1.newest(names),
            Some("linux-image-6.1.0-50-amd64")
        );
        assert_eq!(
            Series::V6_12.newest(names),
            Some("linux-image-6.12.111+deb12-amd64")
        );
        assert_eq!(
            Series::V6_1.newest(["linux-image-6.12.1+deb12-amd64"]),
            None
        );
    }
}
