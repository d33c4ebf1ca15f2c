//! Mounted filesystems with a fixed number of inodes, their statvfs inode and block
//! usage, and mapping of devices and paths to mounts.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use procfs::process::{MountInfo, Process};
use tracer_common::inodes::kernel_dev;

/// Filesystem types whose inode count is fixed (at mkfs or mount time); btrfs and
/// others with dynamic inodes report no inode total and are left out anyway.
pub const INODE_FSTYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "tmpfs", "f2fs", "jfs", "reiserfs",
];

/// One mount of a filesystem.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    pub mount: PathBuf,
    pub device: String,
    pub fstype: String,
    /// Kernel dev_t (major << 20 | minor), as tracepoints report it.
    pub dev: u32,
}

/// A filesystem's usage now.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    pub inodes_total: u64,
    pub inodes_free: u64,
    pub blocks_total: u64,
    pub blocks_free: u64,
}

impl Usage {
    pub fn inodes_used(&self) -> u64 {
        self.inodes_total.saturating_sub(self.inodes_free)
    }

    pub fn inodes_used_pct(&self) -> f64 {
        pct(self.inodes_used(), self.inodes_total)
    }

    pub fn blocks_used_pct(&self) -> f64 {
        pct(
            self.blocks_total.saturating_sub(self.blocks_free),
            self.blocks_total,
        )
    }

    pub fn of(path: &Path) -> Result<Usage> {
        let s = nix::sys::statvfs::statvfs(path)
            .with_context(|| format!("statvfs {}", path.display()))?;
        Ok(Usage {
            inodes_total: s.files(),
            inodes_free: s.files_free(),
            blocks_total: s.blocks(),
            blocks_free: s.blocks_free(),
        })
    }
}

pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn parse_majmin(s: &str) -> Option<u32> {
    let (a, b) = s.split_once(':')?;
    Some(kernel_dev(a.parse().ok()?, b.parse().ok()?))
}

fn to_mount(m: &MountInfo) -> Option<Mount> {
    Some(Mount {
        mount: m.mount_point.clone(),
        device: m.mount_source.clone().unwrap_or_else(|| "none".into()),
        fstype: m.fs_type.clone(),
        dev: parse_majmin(&m.majmin)?,
    })
}

/// Every mount in this mount namespace, in mountinfo order.
pub fn all_mounts() -> Result<Vec<Mount>> {
    let infos = Process::myself()
        .and_then(|p| p.mountinfo())
        .context("reading /proc/self/mountinfo")?;
    Ok(infos.into_iter().filter_map(|m| to_mount(&m)).collect())
}

/// One mount per inode-limited filesystem (the first mount of each device: bind mounts
/// and overmounts of the same filesystem are one filesystem).
pub fn inode_filesystems(mounts: &[Mount]) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for m in mounts {
        if INODE_FSTYPES.contains(&m.fstype.as_str()) && !out.iter().any(|o| o.dev == m.dev) {
            out.push(m.clone());
        }
    }
    out
}

/// The mount whose mount point is exactly `path` (after resolving symlinks): `--fs`.
pub fn mount_at(path: &Path, mounts: &[Mount]) -> Result<Mount> {
    let canon = std::fs::canonicalize(path).with_context(|| {
        format!(
            "{} does not exist; pass the mount point of a filesystem to --fs",
            path.display()
        )
    })?;
    // The last entry wins: a later mount on the same point hides the earlier one.
    match mounts.iter().rev().find(|m| m.mount == canon) {
        Some(m) => Ok(m.clone()),
        None => bail!(
            "{} is not a mount point; pass the directory a filesystem is mounted on to --fs \
             (`findmnt` lists them; {} is on {})",
            path.display(),
            path.display(),
            mount_of_path(&canon, mounts)
                .map(|m| m.mount.display().to_string())
                .unwrap_or_else(|| "?".into())
        ),
    }
}

/// The mount that holds `path` (longest mount-point prefix; the last such mount wins).
pub fn mount_of_path<'a>(path: &Path, mounts: &'a [Mount]) -> Option<&'a Mount> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount))
        .max_by_key(|(i, m)| (m.mount.components().count(), *i))
        .map(|(_, m)| m)
}

/// Kernel dev_t of the filesystem a file is on.
pub fn kernel_dev_of(md: &std::fs::Metadata) -> u32 {
    let d = md.dev();
    kernel_dev(libc::major(d), libc::minor(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &str, dev: u32, fstype: &str) -> Mount {
        Mount {
            mount: path.into(),
            device: "/dev/x".into(),
            fstype: fstype.into(),
            dev,
        }
    }

    #[test]
    fn longest_prefix_wins_and_filesystems_are_deduplicated() {
        let mounts = vec![
            m("/", 1, "ext4"),
            m("/mnt", 2, "ext4"),
            m("/mnt/a", 3, "tmpfs"),
            m("/proc", 4, "proc"),
            m("/bind", 2, "ext4"),
        ];
        assert_eq!(
            mount_of_path(Path::new("/mnt/a/b"), &mounts).unwrap().dev,
            3
        );
        assert_eq!(mount_of_path(Path::new("/mnt/ab"), &mounts).unwrap().dev, 2);
        assert_eq!(mount_of_path(Path::new("/etc"), &mounts).unwrap().dev, 1);
        let fs: Vec<u32> = inode_filesystems(&mounts).iter().map(|m| m.dev).collect();
        assert_eq!(fs, vec![1, 2, 3]);
        assert_eq!(parse_majmin("7:3"), Some(kernel_dev(7, 3)));
    }

    #[test]
    fn usage_percentages() {
        let u = Usage {
            inodes_total: 128,
            inodes_free: 0,
            blocks_total: 1000,
            blocks_free: 900,
        };
        assert_eq!(u.inodes_used_pct(), 100.0);
        assert!((u.blocks_used_pct() - 10.0).abs() < 1e-9);
    }
}
