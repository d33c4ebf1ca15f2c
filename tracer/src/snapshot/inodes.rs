//! Inode and block usage of the mounted filesystems that have a fixed number of
//! inodes (ext2/3/4, xfs, f2fs, tmpfs), as `df -i` and `df` would show them.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use nix::sys::statvfs::statvfs;
use procfs::process::Process;

use super::{Level, pct};

/// Filesystem types whose inodes can run out (btrfs allocates them dynamically and
/// reports no total).
pub const FSTYPES: &[&str] = &["ext2", "ext3", "ext4", "xfs", "f2fs", "tmpfs"];

/// node_exporter-style thresholds on inodes used.
pub const WARN_PCT: f64 = 80.0;
pub const CRIT_PCT: f64 = 90.0;

#[derive(Clone, Debug, serde::Serialize)]
pub struct FsUsage {
    pub mount: PathBuf,
    /// The mount source (e.g. /dev/loop0, tmpfs).
    pub device: String,
    pub fstype: String,
    /// The device number as the kernel's tracepoints print it (MAJOR << 20 | MINOR).
    pub dev: u32,
    pub major: u32,
    pub minor: u32,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub blocks_total: u64,
    pub blocks_used: u64,
    pub block_size: u64,
}

impl FsUsage {
    pub fn inodes_used_pct(&self) -> f64 {
        pct(self.inodes_used, self.inodes_total)
    }

    pub fn blocks_used_pct(&self) -> f64 {
        pct(self.blocks_used, self.blocks_total)
    }

    pub fn level(&self) -> Level {
        Level::of_pct(self.inodes_used_pct(), WARN_PCT, CRIT_PCT)
    }

    /// The Sentry signature: inodes (nearly) gone while most blocks are free, so
    /// `df -h` looks fine and every create fails with ENOSPC.
    pub fn inodes_full_blocks_free(&self) -> bool {
        self.inodes_used_pct() >= 95.0 && self.blocks_used_pct() < 50.0
    }
}

/// The kernel's internal dev_t encoding (include/linux/kdev_t.h), used by the ext4
/// tracepoints' `dev` field.
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

/// statvfs of one path.
pub fn usage_of(path: &Path) -> Result<(u64, u64, u64, u64, u64)> {
    let s = statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    let files = s.files() as u64;
    let ffree = s.files_free() as u64;
    let blocks = s.blocks() as u64;
    let bfree = s.blocks_free() as u64;
    Ok((
        files,
        files.saturating_sub(ffree),
        blocks,
        blocks.saturating_sub(bfree),
        s.fragment_size() as u64,
    ))
}

/// One entry of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount: PathBuf,
    /// The mount source (e.g. /dev/loop0, tmpfs).
    pub device: String,
    pub fstype: String,
    /// As the tracepoints print it (MAJOR << 20 | MINOR).
    pub dev: u32,
}

impl Mount {
    pub fn major(&self) -> u32 {
        self.dev >> 20
    }

    pub fn minor(&self) -> u32 {
        self.dev & 0xfffff
    }
}

/// Every mount of this mount namespace, in mountinfo order (later mounts on the same
/// point hide earlier ones).
pub fn mounts() -> Result<Vec<Mount>> {
    let infos = Process::myself()
        .and_then(|p| p.mountinfo())
        .context("reading /proc/self/mountinfo")?;
    Ok(infos
        .into_iter()
        .map(|m| {
            let (major, minor) = m
                .majmin
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .unwrap_or((0, 0));
            Mount {
                mount: m.mount_point,
                device: m.mount_source.unwrap_or_else(|| "-".into()),
                fstype: m.fs_type,
                dev: kernel_dev(major, minor),
            }
        })
        .collect())
}

/// The mount that holds `path` (longest mount point that is a prefix; the last such
/// mount wins).
pub fn mount_of_path<'a>(path: &Path, mounts: &'a [Mount]) -> Option<&'a Mount> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount))
        .max_by_key(|(i, m)| (m.mount.components().count(), *i))
        .map(|(_, m)| m)
}

/// The kernel dev_t of the filesystem a file is on (st_dev uses another encoding).
pub fn kernel_dev_of(md: &std::fs::Metadata) -> u32 {
    let d = md.dev();
    kernel_dev(libc::major(d), libc::minor(d))
}

/// Usage of the filesystem mounted as `m`; None when statvfs fails or it has no
/// inode limit.
pub fn usage(m: &Mount) -> Option<FsUsage> {
    // Unmounted meanwhile, or not ours to stat.
    let (inodes_total, inodes_used, blocks_total, blocks_used, block_size) =
        usage_of(&m.mount).ok()?;
    (inodes_total > 0).then(|| FsUsage {
        mount: m.mount.clone(),
        device: m.device.clone(),
        fstype: m.fstype.clone(),
        dev: m.dev,
        major: m.major(),
        minor: m.minor(),
        inodes_total,
        inodes_used,
        blocks_total,
        blocks_used,
        block_size,
    })
}

/// Every mounted filesystem of FSTYPES with a fixed inode count, one row per device
/// (the first mount point of a device wins, as in `df`).
pub fn filesystems() -> Result<Vec<FsUsage>> {
    Ok(filesystems_of(&mounts()?))
}

pub fn filesystems_of(mounts: &[Mount]) -> Vec<FsUsage> {
    let mut out: Vec<FsUsage> = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        // A later mount on the same mount point hides this one (statvfs would report
        // the later one under this row's name), as `df` shows.
        let shadowed = mounts[i + 1..].iter().any(|l| l.mount == m.mount);
        if shadowed || !FSTYPES.contains(&m.fstype.as_str()) || out.iter().any(|f| f.dev == m.dev) {
            continue;
        }
        out.extend(usage(m));
    }
    out
}

/// The filesystem mounted exactly at `mount`, or an error that says it is not a
/// mount point (and where it is), or not one with a fixed inode count.
pub fn filesystem_at(mount: &Path) -> Result<FsUsage> {
    let canon = mount
        .canonicalize()
        .with_context(|| format!("{} does not exist", mount.display()))?;
    let all = mounts()?;
    let Some(m) = all.iter().rev().find(|m| m.mount == canon) else {
        let on = mount_of_path(&canon, &all)
            .map(|m| {
                format!(
                    " (it is on the filesystem mounted at {})",
                    m.mount.display()
                )
            })
            .unwrap_or_default();
        bail!("{} is not a mount point{on}", mount.display());
    };
    if !FSTYPES.contains(&m.fstype.as_str()) {
        bail!(
            "{} is a {} mount, which has no fixed inode count (these do: {})",
            mount.display(),
            m.fstype,
            FSTYPES.join(", ")
        );
    }
    usage(m).with_context(|| {
        format!(
            "{} has no inode limit (statvfs shows none)",
            mount.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_hidden_by_a_later_one_on_the_same_point_is_left_out() {
        let m = |device: &str, dev: u32| Mount {
            mount: "/dev/shm".into(),
            device: device.into(),
            fstype: "tmpfs".into(),
            dev,
        };
        let rows = filesystems_of(&[m("hidden", 1), m("visible", 2)]);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].device, "visible");
    }

    #[test]
    fn levels_and_signature() {
        let mut f = FsUsage {
            mount: "/x".into(),
            device: "/dev/loop0".into(),
            fstype: "ext4".into(),
            dev: kernel_dev(7, 0),
            major: 7,
            minor: 0,
            inodes_total: 128,
            inodes_used: 128,
            blocks_total: 1000,
            blocks_used: 100,
            block_size: 4096,
        };
        assert_eq!(f.level(), Level::Crit);
        assert!(f.inodes_full_blocks_free());
        f.inodes_used = 105; // 82%
        assert_eq!(f.level(), Level::Warn);
        assert!(!f.inodes_full_blocks_free());
        f.inodes_used = 10;
        assert_eq!(f.level(), Level::Ok);
        assert_eq!(kernel_dev(7, 3), 7 << 20 | 3);
    }

    #[test]
    fn longest_mount_prefix_wins() {
        let m = |p: &str, dev| Mount {
            mount: p.into(),
            device: "-".into(),
            fstype: "ext4".into(),
            dev,
        };
        let all = vec![m("/", 1), m("/mnt", 2), m("/mnt/a", 3), m("/mnt", 4)];
        assert_eq!(mount_of_path(Path::new("/mnt/a/b"), &all).unwrap().dev, 3);
        assert_eq!(mount_of_path(Path::new("/mnt/ab"), &all).unwrap().dev, 4);
        assert_eq!(mount_of_path(Path::new("/etc"), &all).unwrap().dev, 1);
        assert_eq!((all[2].major(), all[2].minor()), (0, 3));
    }

    #[test]
    fn a_tmpfs_of_this_machine_is_listed_and_proc_is_not() {
        let all = filesystems().unwrap();
        assert!(
            all.iter()
                .all(|f| f.inodes_total > 0 && f.inodes_used <= f.inodes_total)
        );
        let e = filesystem_at(Path::new("/proc")).unwrap_err().to_string();
        assert!(
            e.contains("proc mount, which has no fixed inode count"),
            "{e}"
        );
        let e = filesystem_at(Path::new("/proc/self"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not a mount point (it is on the filesystem mounted at /proc)"),
            "{e}"
        );
        // /dev/shm is a tmpfs on every machine of the matrix; / is 9p in the VMs, which
        // has no fixed inode count.
        let shm = filesystem_at(Path::new("/dev/shm")).unwrap();
        assert_eq!(shm.mount, Path::new("/dev/shm"));
        let md = std::fs::metadata("/dev/shm").unwrap();
        assert_eq!(kernel_dev_of(&md), shm.dev);
    }
}
