//! mkdir, mknod and symlink on kernels without the VFS creation hook. They return 0,
//! not a file, so the kernel cannot place them as it places the opens: it sends each
//! one's path argument with the directory that path starts from (the process's root
//! for an absolute path, else its cwd or the dirfd's directory), and they are placed
//! here, then counted per process and per directory beside the kernel's counts.
//!
//! A path without a slash after its last component is stripped (`mkdir x`, the common
//! case) is placed exactly from that directory alone, even when the process has already
//! exited. A longer path is looked up: in the tracer's own tree when the process has
//! the same root, else through /proc/PID while the process runs; otherwise it is
//! counted as not placed (`Creations::unplaced`).
use std::{
    collections::HashMap,
    hash::Hash,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use tracer_common::{
    comm_str,
    inodes::{DIR_CAPACITY, DevTgid, DirKey, PROC_CAPACITY, PathEvent, ProcCounts},
};

use super::dirs;
use crate::snapshot::inodes::kernel_dev_of;

/// The directory a creation went into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub dev: u32,
    pub ino: u64,
}

/// (dev, ino) of `path`, following symlinks as the kernel does for a parent.
fn id_of(path: &Path) -> Option<Placed> {
    let md = std::fs::metadata(path).ok()?;
    md.is_dir().then(|| Placed {
        dev: kernel_dev_of(&md),
        ino: md.ino(),
    })
}

/// The parent part of a path argument: None when the last component sits directly in
/// the directory the path starts from ("x", "x/", "/x"), else that part ("a/b" for
/// "a/b/x", "/" is kept for an absolute path).
fn parent_part(path: &str) -> Option<&str> {
    let p = path.trim_end_matches('/');
    let (parent, _) = p.rsplit_once('/')?;
    match parent.trim_end_matches('/') {
        "" => None,
        rest => Some(rest),
    }
}

/// Where the creation of `ev` (kind InodesMadeAt) went; `own_root` is the (dev, ino)
/// of the tracer's own "/". None when it cannot be known any more.
pub fn place(ev: &PathEvent, own_root: Option<&Placed>) -> Option<Placed> {
    let path = comm_str(&ev.first.path);
    if path.trim_end_matches('/').is_empty() {
        return None;
    }
    let start = Placed {
        dev: ev.dev,
        ino: ev.ino,
    };
    let Some(parent) = parent_part(path) else {
        return Some(start);
    };
    if parent.starts_with('/') && own_root == Some(&start) {
        return id_of(Path::new(parent));
    }
    // Through the process, while it runs: its root for an absolute path, its cwd or
    // dirfd (read from /proc, as the process sees them) for a relative one.
    let full = dirs::absolute(&ev.first)?;
    let dir = full.parent()?;
    let in_root =
        Path::new(&format!("/proc/{}/root", ev.first.tgid)).join(dir.strip_prefix("/").ok()?);
    id_of(&in_root)
}

/// The placed creations, per (dev, tgid) and per (dev, directory), as large as the
/// kernel's maps of the opens.
#[derive(Default)]
pub struct Made {
    pub procs: HashMap<DevTgid, ProcCounts>,
    pub dirs: HashMap<DirKey, u64>,
    /// Creations that could not be placed.
    pub unplaced: u64,
    /// Placed creations that are not in the tables: they were full.
    pub dropped: u64,
}

impl Made {
    /// Counts one creation by the process of `ev` in directory `at`.
    pub fn add(&mut self, ev: &PathEvent, at: &Placed) {
        let pk = DevTgid {
            dev: at.dev,
            tgid: ev.header.tgid,
        };
        let dk = DirKey {
            dev: at.dev,
            _pad: 0,
            ino: at.ino,
        };
        let room = |n: usize, cap: u32| n < cap as usize;
        if !(self.procs.contains_key(&pk) || room(self.procs.len(), PROC_CAPACITY))
            || !(self.dirs.contains_key(&dk) || room(self.dirs.len(), DIR_CAPACITY))
        {
            self.dropped += 1;
            return;
        }
        let p = self.procs.entry(pk).or_insert_with(|| ProcCounts {
            allocated: 0,
            freed: 0,
            comm: ev.comm,
        });
        p.allocated += 1;
        *self.dirs.entry(dk).or_insert(0) += 1;
    }
}

/// The kernel's rows with ours added: a key in both gets the sum (`add`).
pub fn merged<K: Copy + Eq + Hash, V: Copy>(
    kernel: Vec<(K, V)>,
    ours: &HashMap<K, V>,
    add: impl Fn(&mut V, &V),
) -> Vec<(K, V)> {
    let mut all: HashMap<K, V> = kernel.into_iter().collect();
    for (k, v) in ours {
        match all.get_mut(k) {
            Some(a) => add(a, v),
            None => {
                all.insert(*k, *v);
            }
        }
    }
    all.into_iter().collect()
}

/// The path a placed directory is known by, for the resolver: the parent of an
/// absolute path in the tracer's own tree.
pub fn known_path(ev: &PathEvent, at: &Placed, own_root: Option<&Placed>) -> Option<PathBuf> {
    let parent = parent_part(comm_str(&ev.first.path))?;
    let start = Placed {
        dev: ev.dev,
        ino: ev.ino,
    };
    (parent.starts_with('/')
        && own_root == Some(&start)
        && id_of(Path::new(parent)).as_ref() == Some(at))
    .then(|| PathBuf::from(parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{EventHeader, EventKind, inodes::PathArg};

    fn ev(tgid: u32, path: &str, start: &Placed) -> PathEvent {
        let mut first = PathArg {
            tgid,
            dfd: tracer_common::inodes::AT_FDCWD,
            ..Default::default()
        };
        first.path[..path.len()].copy_from_slice(path.as_bytes());
        PathEvent {
            header: EventHeader {
                kind: EventKind::InodesMadeAt as u32,
                tgid,
                ts_ns: 1,
            },
            dev: start.dev,
            _pad: 0,
            ino: start.ino,
            comm: *b"mkdir\0\0\0\0\0\0\0\0\0\0\0",
            first,
        }
    }

    #[test]
    fn the_parent_part_of_a_path_argument() {
        assert_eq!(parent_part("x"), None);
        assert_eq!(parent_part("x/"), None);
        assert_eq!(parent_part("/x"), None);
        assert_eq!(parent_part("//x//"), None);
        assert_eq!(parent_part("a/b/x"), Some("a/b"));
        assert_eq!(parent_part("/a//x"), Some("/a"));
        assert_eq!(parent_part("../x"), Some(".."));
    }

    #[test]
    fn a_creation_is_placed_from_its_start_directory_or_its_path() {
        let tmp = std::env::temp_dir().join(format!("tracer-made-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("sub")).unwrap();
        let root = id_of(Path::new("/")).unwrap();
        let sub = id_of(&tmp.join("sub")).unwrap();
        let tmp_id = id_of(&tmp).unwrap();
        // No slash: the start directory, whatever it is, with no lookup (a pid that
        // does not exist).
        let e = ev(u32::MAX, "x", &tmp_id);
        assert_eq!(place(&e, Some(&root)), Some(tmp_id.clone()));
        // An absolute path from a process with the tracer's root: looked up here.
        let abs = format!("{}/x", tmp.join("sub").display());
        let e = ev(u32::MAX, &abs, &root);
        assert_eq!(place(&e, Some(&root)), Some(sub.clone()));
        assert_eq!(known_path(&e, &sub, Some(&root)), Some(tmp.join("sub")));
        // Another root (a container) and the process gone: not placed.
        assert_eq!(place(&e, Some(&sub)), None);
        // A relative path with a slash, from a live process (this one), through a
        // dirfd it holds open.
        let d = std::fs::File::open(&tmp).unwrap();
        let mut e = ev(std::process::id(), "sub/x", &tmp_id);
        e.first.dfd = std::os::fd::AsRawFd::as_raw_fd(&d);
        assert_eq!(place(&e, Some(&root)), Some(sub.clone()));
        drop(d);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn counts_are_bounded_and_merged_with_the_kernels() {
        let at = Placed { dev: 7, ino: 12 };
        let mut m = Made::default();
        m.add(&ev(5, "x", &at), &at);
        m.add(&ev(5, "y", &at), &at);
        let k = DevTgid { dev: 7, tgid: 5 };
        assert_eq!(m.procs[&k].allocated, 2);
        assert_eq!(comm_str(&m.procs[&k].comm), "mkdir");
        let kernel = vec![(
            k,
            ProcCounts {
                allocated: 3,
                freed: 0,
                comm: [0; 16],
            },
        )];
        let all = merged(kernel, &m.procs, |a, b| a.allocated += b.allocated);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.allocated, 5);
        // Full tables: one more process is dropped, counted.
        for tgid in 100..100 + PROC_CAPACITY {
            m.add(&ev(tgid, "x", &at), &at);
        }
        assert_eq!(m.procs.len(), PROC_CAPACITY as usize);
        assert_eq!(m.dropped, 1);
    }
}
