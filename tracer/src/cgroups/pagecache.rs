//! Which files' page cache each memory cgroup charged while tracing: the kernel counts
//! pages added to the page cache (filemap:mm_filemap_add_to_page_cache) per (memcg of
//! the adding task, device, inode) in an LRU map; here the map is read, each file is
//! named (a bounded walk of the mounts of its device, remembered across reports) and
//! its resident pages now are counted (mincore).
//!
//! The adding task's memcg is read by the kernel program through kernel struct offsets
//! from BTF (task->cgroups->subsys[memory]->cgroup->kn->id), the same id on cgroup v1
//! and v2: the inode number of the memcg's directory, which a dying memcg keeps.
use std::{
    collections::{HashMap, VecDeque},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use tracer_common::{
    cgroups::{
        PAGECACHE_CAPACITY, PC_ADDS, PC_NEW_KEYS, PC_NO_MEMCG, PageCacheCount, PageCacheKey,
    },
    comm_str,
};

use crate::{kbtf::KernelBtf, tracefs::Tracefs};

/// Directory entries one report's walks look at, at most, over all unknown files.
pub const WALK_ENTRIES: usize = 200_000;
/// And the time they may take.
pub const WALK_TIME: Duration = Duration::from_secs(2);
/// Page size assumed for the byte counts (x86-64, arm64 with 4 KiB pages).
pub const PAGE: u64 = 4096;

/// Globals of the page-cache program: the optional `order` field's offset (0 where the
/// kernel lacks it) and the struct offsets that lead to the current memcg (all 0, and
/// the reason, when the kernel's BTF does not give them: the program then counts
/// nothing per file).
pub fn globals(tracefs: &Tracefs) -> (Vec<(&'static str, u32)>, Option<String>) {
    let order = tracefs
        .format("filemap", "mm_filemap_add_to_page_cache")
        .and_then(|f| f.offset("order"))
        .unwrap_or(0);
    let mut g = vec![("CGROUPS_FILEMAP_ORDER", order)];
    match memcg_offsets() {
        Ok(o) => {
            g.extend(o);
            (g, None)
        }
        Err(e) => (
            g,
            Some(format!(
                "the memcg of a task adding page cache cannot be read ({e:#}): files are not named"
            )),
        ),
    }
}

fn memcg_offsets() -> Result<Vec<(&'static str, u32)>> {
    let b = KernelBtf::from_sys_fs()?;
    Ok(vec![
        (
            "CGROUPS_TASK_CGROUPS",
            b.member_offset("task_struct", "cgroups")?,
        ),
        (
            "CGROUPS_CSS_SET_SUBSYS",
            b.member_offset("css_set", "subsys")?,
        ),
        ("CGROUPS_MEMORY_SUBSYS", memory_subsys_id()?),
        (
            "CGROUPS_CSS_CGROUP",
            b.member_offset("cgroup_subsys_state", "cgroup")?,
        ),
        ("CGROUPS_CGROUP_KN", b.member_offset("cgroup", "kn")?),
        ("CGROUPS_KN_ID", b.member_offset("kernfs_node", "id")?),
    ])
}

/// memory_cgrp_id: /proc/cgroups lists the controllers in the order of their ids.
fn memory_subsys_id() -> Result<u32> {
    let text = fs::read_to_string("/proc/cgroups").context("reading /proc/cgroups")?;
    subsys_id(&text, "memory").context("the kernel has no memory controller (/proc/cgroups)")
}

fn subsys_id(proc_cgroups: &str, name: &str) -> Option<u32> {
    (proc_cgroups.lines())
        .filter(|l| !l.starts_with('#'))
        .position(|l| l.split_whitespace().next() == Some(name))
        .map(|i| i as u32)
}

/// The map and counters, taken after the load (None: the hook is not attached).
pub struct Maps {
    pub files: BpfHashMap<MapData, PageCacheKey, PageCacheCount>,
    pub counts: PerCpuArray<MapData, u64>,
}

/// One (memcg, file) of the map.
#[derive(Clone, Debug)]
pub struct Charged {
    pub memcg: u64,
    pub dev: u32,
    pub ino: u64,
    pub pages: u64,
    pub tgid: u32,
    pub comm: String,
}

/// What the map holds now, with its accounting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PageCacheInfo {
    /// Page-cache adds seen (every task, every file) while tracing.
    pub adds: u64,
    /// Adds whose memcg could not be read.
    pub adds_without_memcg: u64,
    /// (memcg, file) pairs held now, and the map's capacity.
    pub files_tracked: u64,
    pub capacity: u32,
    /// Pairs dropped because the map was full (the least recently added first).
    pub evicted: u64,
}

impl Maps {
    fn count(&self, slot: u32) -> u64 {
        (self.counts.get(&slot, 0))
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Every pair of the map, and its accounting.
    pub fn read(&self) -> (Vec<Charged>, PageCacheInfo) {
        let all: Vec<Charged> = (self.files.iter().flatten())
            .map(|(k, v)| Charged {
                memcg: k.memcg,
                dev: k.dev,
                ino: k.ino,
                pages: v.pages,
                tgid: v.tgid,
                comm: comm_str(&v.comm).to_string(),
            })
            .collect();
        let held = all.len() as u64;
        let info = PageCacheInfo {
            adds: self.count(PC_ADDS),
            adds_without_memcg: self.count(PC_NO_MEMCG),
            files_tracked: held,
            capacity: PAGECACHE_CAPACITY,
            evicted: self.count(PC_NEW_KEYS).saturating_sub(held),
        };
        (all, info)
    }
}

/// Why a file has no path in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum PathUnknown {
    /// No mount of its device is in /proc/self/mountinfo (unmounted, or another mount
    /// namespace).
    NoMount,
    /// The bounded walk of its device's mounts did not find it (deleted, or past the
    /// bound): `entries` looked at.
    NotFound { entries: usize, complete: bool },
}

/// The kernel's dev_t (major << 20 | minor) as "major:minor".
pub fn dev_name(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// Names files by (dev, inode), remembering what it found across reports.
#[derive(Default)]
pub struct Namer {
    known: HashMap<(u32, u64), PathBuf>,
}

impl Namer {
    /// Paths of `wanted` files, within one walk budget ([`WALK_ENTRIES`], [`WALK_TIME`]).
    pub fn name(
        &mut self,
        wanted: &[(u32, u64)],
    ) -> HashMap<(u32, u64), Result<PathBuf, PathUnknown>> {
        let mut out = HashMap::new();
        let mut missing: HashMap<u32, Vec<u64>> = HashMap::new();
        for &(dev, ino) in wanted {
            match self.known.get(&(dev, ino)) {
                Some(p) if same_file(p, dev, ino) => {
                    out.insert((dev, ino), Ok(p.clone()));
                }
                _ => missing.entry(dev).or_default().push(ino),
            }
        }
        let mounts = mounts_by_dev();
        let mut budget = Budget {
            entries: 0,
            until: Instant::now() + WALK_TIME,
        };
        for (dev, inos) in missing {
            let Some(dirs) = mounts.get(&dev) else {
                out.extend(inos.iter().map(|&i| ((dev, i), Err(PathUnknown::NoMount))));
                continue;
            };
            let (found, complete) = walk_for(dirs, &inos, &mut budget);
            for ino in inos {
                let r = match found.get(&ino) {
                    Some(p) => {
                        self.known.insert((dev, ino), p.clone());
                        Ok(p.clone())
                    }
                    None => Err(PathUnknown::NotFound {
                        entries: budget.entries,
                        complete,
                    }),
                };
                out.insert((dev, ino), r);
            }
        }
        if self.known.len() > PAGECACHE_CAPACITY as usize {
            self.known.clear();
        }
        out
    }
}

struct Budget {
    entries: usize,
    until: Instant,
}

fn same_file(p: &Path, dev: u32, ino: u64) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.ino() == ino && kernel_dev(m.dev()) == dev)
}

/// A userspace st_dev as the kernel's dev_t encoding.
fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

/// Mount points by device (kernel dev_t), from /proc/self/mountinfo.
fn mounts_by_dev() -> HashMap<u32, Vec<PathBuf>> {
    let mut m: HashMap<u32, Vec<PathBuf>> = HashMap::new();
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(devs), Some(point)) = (f.get(2), f.get(4)) else {
            continue;
        };
        let Some((a, b)) = devs.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (a.parse::<u32>(), b.parse::<u32>()) else {
            continue;
        };
        // mountinfo escapes blanks as octal (\040).
        let point = point.replace("\\040", " ");
        m.entry((major << 20) | minor)
            .or_default()
            .push(point.into());
    }
    m
}

/// Breadth-first walk of `dirs` (one device: never into other mounts) for `inos`,
/// within `budget`; returns what it found and whether it looked everywhere.
fn walk_for(dirs: &[PathBuf], inos: &[u64], budget: &mut Budget) -> (HashMap<u64, PathBuf>, bool) {
    let mut found = HashMap::new();
    let mut queue: VecDeque<(PathBuf, u64)> = VecDeque::new();
    for d in dirs {
        if let Ok(m) = fs::metadata(d) {
            queue.push_back((d.clone(), m.dev()));
        }
    }
    while let Some((dir, dev)) = queue.pop_front() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            budget.entries += 1;
            if budget.entries > WALK_ENTRIES || Instant::now() > budget.until {
                return (found, false);
            }
            if inos.contains(&e.ino()) {
                found.insert(e.ino(), e.path());
                if found.len() == inos.len() {
                    return (found, true);
                }
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) && e.metadata().is_ok_and(|m| m.dev() == dev)
            {
                queue.push_back((e.path(), dev));
            }
        }
    }
    (found, true)
}

use std::os::unix::fs::DirEntryExt as _;

/// A file's size and its pages in the page cache now (mincore over a mapping that
/// faults nothing in), in bytes.
pub fn size_and_resident(path: &Path) -> Option<(u64, u64)> {
    let f = fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    if size == 0 {
        return Some((0, 0));
    }
    use std::os::fd::AsRawFd as _;
    // Mapped a chunk at a time so a huge file never needs a huge mapping or vector.
    const CHUNK: u64 = 1 << 30;
    let mut resident = 0u64;
    let mut off = 0u64;
    while off < size {
        let len = (size - off).min(CHUNK) as usize;
        // SAFETY: a read-only shared mapping of an open file, unmapped below; mincore
        // writes one byte per page into `vec`, which has that many.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                off as i64,
            );
            if p == libc::MAP_FAILED {
                return None;
            }
            let mut vec = vec![0u8; len.div_ceil(PAGE as usize)];
            let ok = libc::mincore(p, len, vec.as_mut_ptr()) == 0;
            libc::munmap(p, len);
            if !ok {
                return None;
            }
            resident += vec.iter().filter(|b| *b & 1 == 1).count() as u64 * PAGE;
        }
        off += CHUNK;
    }
    Some((size, resident.min(size.next_multiple_of(PAGE))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_id_is_its_line() {
        let t = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t2\t1\t1\ncpu\t3\t1\t1\ncpuacct\t3\t1\t1\nblkio\t4\t1\t1\nmemory\t5\t9\t1\n";
        assert_eq!(subsys_id(t, "memory"), Some(4));
        assert_eq!(subsys_id(t, "pids"), None);
    }

    #[test]
    fn dev_round_trips() {
        let st = libc::makedev(254, 3);
        assert_eq!(dev_name(kernel_dev(st)), "254:3");
    }

    #[test]
    fn resident_of_a_file_just_written() {
        let p = std::env::temp_dir().join(format!("pc-test-{}", std::process::id()));
        fs::write(&p, vec![1u8; 3 * PAGE as usize + 5]).unwrap();
        let (size, res) = size_and_resident(&p).unwrap();
        let _ = fs::remove_file(&p);
        assert_eq!(size, 3 * PAGE + 5);
        assert!(res <= 4 * PAGE);
    }
}
