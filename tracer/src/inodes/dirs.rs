//! Directory inode -> path, two ways, each checked against the inode:
//! - `syscall`: the path argument of the first create the kernel side saw in that
//!   directory (made absolute with the process's cwd or dirfd while it runs), accepted
//!   only when stat() of its parent gives the same device and inode;
//! - `walk`: a breadth-first search of the directory tree under the mount point, on the
//!   same device only, for a directory entry with that inode number, visiting at most
//!   WALK_BUDGET entries (shallow directories are found first);
//! - otherwise `unresolved`, and the report shows the inode number.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use tracer_common::{
    comm_str,
    inodes::{AT_FDCWD, PathArg},
};

use crate::snapshot::inodes::kernel_dev_of;

/// Directories remembered (path or unresolved): eight times the kernel's INODES_DIRS,
/// so that every directory the report can show stays named; cleared when full (the
/// walk finds the hot ones again).
pub const CACHE_CAPACITY: usize = 65_536;

/// Directory entries one walk (of one filesystem, for every unresolved directory on it) may read.
pub const WALK_BUDGET: usize = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Syscall,
    Walk,
    Unresolved,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Syscall => "syscall",
            Source::Walk => "walk",
            Source::Unresolved => "unresolved",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub path: Option<PathBuf>,
    pub source: Source,
}

/// The absolute path a process meant with a path argument (relative ones through its
/// cwd or dirfd, which can only be read while the process runs).
pub fn absolute(arg: &PathArg) -> Option<PathBuf> {
    let p = comm_str(&arg.path);
    if p.is_empty() {
        return None;
    }
    if p.starts_with('/') {
        return Some(PathBuf::from(p));
    }
    let base = if arg.dfd == AT_FDCWD {
        format!("/proc/{}/cwd", arg.tgid)
    } else {
        format!("/proc/{}/fd/{}", arg.tgid, arg.dfd)
    };
    Some(std::fs::read_link(base).ok()?.join(p))
}

fn same(path: &Path, dev: u32, ino: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|md| kernel_dev_of(&md) == dev && md.ino() == ino)
}

/// The parent directory of the path argument, when it is the directory (dev, ino).
/// The process's root is tried too (a container sees its own tree).
pub fn from_syscall(arg: &PathArg, dev: u32, ino: u64) -> Option<PathBuf> {
    let file = absolute(arg)?;
    let dir = file.parent()?.to_path_buf();
    if same(&dir, dev, ino) {
        return Some(dir);
    }
    let in_root = Path::new(&format!("/proc/{}/root", arg.tgid)).join(dir.strip_prefix("/").ok()?);
    same(&in_root, dev, ino).then_some(dir)
}

/// Bounded breadth-first search under `mount` for the directories with the inode
/// numbers `want` on device `dev`: one walk for all of them.
pub fn walk(mount: &Path, dev: u32, want: &HashSet<u64>, budget: usize) -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    let Ok(root) = std::fs::metadata(mount) else {
        return found;
    };
    if kernel_dev_of(&root) != dev {
        return found;
    }
    if want.contains(&root.ino()) {
        found.insert(root.ino(), mount.to_path_buf());
    }
    let mut left = budget;
    let mut queue = VecDeque::from([mount.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if left == 0 || found.len() == want.len() {
                return found;
            }
            left -= 1;
            // d_type: no stat for files.
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            // Stay on this filesystem (d_ino of a mount point is the covered directory's).
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if kernel_dev_of(&md) != dev {
                continue;
            }
            if want.contains(&md.ino()) {
                found.insert(md.ino(), path.clone());
            }
            queue.push_back(path);
        }
    }
    found
}

/// Resolutions are remembered: a directory's path rarely changes during a run, and a
/// directory is looked for by a walk at most once.
#[derive(Default)]
pub struct Resolver {
    cache: HashMap<(u32, u64), Resolved>,
}

impl Resolver {
    /// Tries the path argument of the first create in a directory (no walk): called when
    /// the kernel reports it, while the creating process still runs.
    pub fn try_syscall(&mut self, dev: u32, ino: u64, first: &PathArg) {
        if self.cache.len() >= CACHE_CAPACITY {
            // Forget them all rather than grow without bound; the walk finds hot ones again.
            self.cache.clear();
        }
        // A walk may have named it first: a report can read the kernel's directory
        // counts between the program's map update and its ring-buffer record. The
        // syscall's path is the exact one (stat-checked), so it replaces a walk's.
        if self
            .cache
            .get(&(dev, ino))
            .is_some_and(|r| r.source == Source::Syscall)
        {
            return;
        }
        if let Some(p) = from_syscall(first, dev, ino) {
            self.cache.insert(
                (dev, ino),
                Resolved {
                    path: Some(p),
                    source: Source::Syscall,
                },
            );
        }
    }

    /// A directory whose path was checked by its caller (made.rs: a parent looked up in
    /// the tracer's own tree), named like a syscall's.
    pub fn known(&mut self, dev: u32, ino: u64, path: PathBuf) {
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache.clear();
        }
        self.cache.insert(
            (dev, ino),
            Resolved {
                path: Some(path),
                source: Source::Syscall,
            },
        );
    }

    /// Resolves (dev, ino, mount point) each: from the cache (filled by try_syscall),
    /// else by one walk per filesystem for all its unresolved directories (once).
    pub fn resolve_all(&mut self, items: &[(u32, u64, Option<PathBuf>)]) -> Vec<Resolved> {
        let mut walks: HashMap<(u32, PathBuf), HashSet<u64>> = HashMap::new();
        for (dev, ino, mount) in items {
            if let std::collections::hash_map::Entry::Vacant(e) = self.cache.entry((*dev, *ino)) {
                if let Some(m) = mount {
                    walks.entry((*dev, m.clone())).or_default().insert(*ino);
                }
                e.insert(Resolved {
                    path: None,
                    source: Source::Unresolved,
                });
            }
        }
        for ((dev, mount), want) in walks {
            for (ino, path) in walk(&mount, dev, &want, WALK_BUDGET) {
                let r = self.cache.entry((dev, ino)).or_insert(Resolved {
                    path: None,
                    source: Source::Unresolved,
                });
                if r.source == Source::Unresolved {
                    *r = Resolved {
                        path: Some(path),
                        source: Source::Walk,
                    };
                }
            }
        }
        items
            .iter()
            .map(|(dev, ino, _)| {
                self.cache.get(&(*dev, *ino)).cloned().unwrap_or(Resolved {
                    path: None,
                    source: Source::Unresolved,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(path: &str, dfd: i32) -> PathArg {
        let mut a = PathArg {
            tgid: std::process::id(),
            dfd,
            ..Default::default()
        };
        a.path[..path.len()].copy_from_slice(path.as_bytes());
        a
    }

    #[test]
    fn syscall_path_is_verified_and_walk_finds_nested_dirs() {
        let base = std::env::temp_dir().join(format!("tracer-dirs-{}", std::process::id()));
        let nested = base.join("a/b/c");
        std::fs::create_dir_all(&nested).unwrap();
        let md = std::fs::metadata(&nested).unwrap();
        let (dev, ino) = (kernel_dev_of(&md), md.ino());
        let file = nested.join("f");
        assert_eq!(
            from_syscall(&arg(file.to_str().unwrap(), AT_FDCWD), dev, ino),
            Some(nested.clone())
        );
        // A path whose parent is another directory is rejected, not trusted.
        let other = base.join("a/f");
        assert_eq!(
            from_syscall(&arg(other.to_str().unwrap(), AT_FDCWD), dev, ino),
            None
        );
        // Relative to a dirfd of ours.
        let fd = std::fs::File::open(&base).unwrap();
        let rel = arg("a/b/c/f", std::os::fd::AsRawFd::as_raw_fd(&fd));
        assert_eq!(from_syscall(&rel, dev, ino), Some(nested.clone()));
        let want = HashSet::from([ino]);
        assert_eq!(walk(&base, dev, &want, 100).get(&ino), Some(&nested));
        assert!(
            walk(&base, dev, &want, 1).is_empty(),
            "the budget bounds the walk"
        );
        let mut r = Resolver::default();
        let got = r.resolve_all(&[
            (dev, ino, Some(base.clone())),
            (dev, ino + 1_000_000_000, Some(base.clone())),
        ]);
        assert_eq!(got[0].source, Source::Walk);
        assert_eq!(got[0].path.as_ref(), Some(&nested));
        assert_eq!(got[1].source, Source::Unresolved);
        // The kernel's path resolves a directory without a walk.
        let mut r = Resolver::default();
        r.try_syscall(dev, ino, &arg(file.to_str().unwrap(), AT_FDCWD));
        let got = r.resolve_all(&[(dev, ino, None)]);
        assert_eq!(got[0].source, Source::Syscall);
        assert_eq!(got[0].path.as_ref(), Some(&nested));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
