//! The autopsy of dying memory cgroups: what is still charged to them, by kind, which
//! files' page cache that is, and what frees it.
//!
//! The kernel reports a page charged to a dying memcg under the memcg's closest online
//! ancestor ([`super::autopsy`]), so rows are per such ancestor ("group"): the dying
//! memcgs removed while tracing under it (with their creators), those from before the
//! start where the kernel counts them (cgroup2's nr_dying_descendants), the bytes the
//! census found under the ancestor minus what the ancestor charges itself (cgroup v1's
//! local memory.stat; cgroup2 does not say, so there its own pages are included), the
//! files whose page cache tasks of those memcgs added while tracing, and the remedies.
//! A group of one dying memcg is that memcg's own autopsy.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::{
    autopsy::{Census, CensusRun, Kinds},
    pagecache::{Charged, PAGE, PageCacheInfo, PathUnknown, dev_name},
    state::Dying,
};
use crate::{
    container::{self, Container},
    snapshot::cgroups::{Dir, Hierarchy, parent_of},
};

/// An ancestor with dying descendants none of which was removed while tracing gets a
/// row on cgroup v1 (which does not count dying cgroups per ancestor) only when at least
/// this much is charged under it beyond its own charge.
pub const MIN_UNTRACKED: u64 = 1 << 20;
/// Files listed per group at most.
pub const FILES_PER_GROUP: usize = 20;
/// Groups and per-creator rows listed at most.
pub const GROUPS: usize = 1_000;

/// The autopsy of the dying memcgs of the memory hierarchy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Autopsy {
    /// The hierarchy with the memory controller and its mount point.
    pub hierarchy: String,
    pub mount: String,
    pub census: CensusRun,
    /// Groups of dying memcgs by closest online ancestor, the most bytes first.
    pub groups: Vec<PinnedGroup>,
    /// Bytes pinned summed per creator of the dying memcgs ("before start" when the
    /// creation was not seen), and per container or pod (the dying memcg's, else the
    /// ancestor's), the most first.
    pub by_creator: Vec<PinnedBy>,
    pub by_container: Vec<PinnedBy>,
    /// The page-cache tracking's accounting (None: not tracked, `pagecache_missing`
    /// says why).
    pub pagecache: Option<PageCacheInfo>,
    pub pagecache_missing: Option<String>,
    /// Charges the census cannot see (no page frame of the memcg holds them).
    pub unseen: Vec<Unseen>,
}

/// A kind of charge that has no page frame charged to the memcg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unseen {
    /// Swapped-out anonymous and shmem pages: swap entries, not page frames (they pin
    /// the memcg until swapped in or freed).
    Swap,
    /// Socket buffers: charged to the memcg's counter, not to page frames.
    SocketBuffers,
}

impl Unseen {
    pub fn text(&self) -> &'static str {
        match self {
            Unseen::Swap => "swap entries (not page frames: the census cannot see them)",
            Unseen::SocketBuffers => "socket buffers (charged to a counter, not to page frames)",
        }
    }
}

/// Dying memcgs under one online ancestor and what is charged to them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinnedGroup {
    /// The closest online ancestor (path relative to the mount), under which the kernel
    /// reports the dying memcgs' pages.
    pub ancestor: String,
    /// Removed while tracing and still dying.
    pub dying: Vec<PinnedMemcg>,
    /// Dying from before the start (cgroup2's count; None on v1, which does not count
    /// them per ancestor).
    pub dying_before_start: Option<u64>,
    /// The census' bytes under the ancestor, what the ancestor charges itself (None:
    /// the kernel does not say, cgroup2), and the difference: the dying memcgs' share.
    pub charged: Kinds,
    pub own: Option<Kinds>,
    pub pinned: Kinds,
    /// Files whose page cache tasks of the dying memcgs added while tracing, the most
    /// first (at most [`FILES_PER_GROUP`]).
    pub files: Vec<PinFile>,
    /// Why files are missing (None: they are listed).
    pub files_unknown: Option<FilesUnknown>,
    pub remedies: Vec<Remedy>,
}

/// A dying memcg removed while tracing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinnedMemcg {
    pub path: String,
    /// Its cgroup id (the inode of its directory).
    pub id: u64,
    /// "comm (pid)" of its creator; None when created before the start.
    pub creator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

/// A file whose page cache a dying memcg's tasks added while tracing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinFile {
    /// The dying memcg (path) that charged it.
    pub memcg: String,
    /// Device "major:minor" and inode.
    pub dev: String,
    pub ino: u64,
    /// Its path (None: `path_unknown` says why).
    pub path: Option<String>,
    pub path_unknown: Option<PathUnknown>,
    /// Its size and its bytes in the page cache now (None without a path).
    pub size: Option<u64>,
    pub resident: Option<u64>,
    /// Bytes the memcg's tasks added to the page cache while tracing.
    pub charged: u64,
    /// The first task that added them: "comm (pid)".
    pub adder: String,
}

/// Why a group lists no (or not all) files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum FilesUnknown {
    /// Its memcgs charged their pages before the tracer started: the kernel keeps no
    /// page-to-file index that userspace can read.
    ChargedBeforeStart,
    /// The page-cache tracking is off (`why`).
    NotTracked { why: String },
    /// No page-cache add by its memcgs was seen while tracing: shmem/tmpfs pages
    /// (added without the filemap tracepoint), anonymous or kernel memory, or pairs
    /// evicted from the map.
    NoneSeen,
}

/// One way to free what pins a group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Remedy {
    pub kind: RemedyKind,
    /// A command a shell runs as root.
    pub command: Option<String>,
    pub note: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemedyKind {
    /// Drop one file's page cache (POSIX_FADV_DONTNEED over the whole file).
    DropFileCache,
    /// Delete the tmpfs/shmem files: their pages go only with them (or to swap).
    DeleteShmemFiles,
    /// cgroup2 (5.19+): reclaim under the ancestor (its live children too).
    ReclaimAncestor,
    /// cgroup v1: empty each memcg (memory.force_empty) before its rmdir, next time.
    ForceEmptyBeforeRmdir,
}

/// Bytes pinned per creator or container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinnedBy {
    pub who: String,
    /// Dying memcgs counted (removed while tracing, plus cgroup2's count from before).
    pub memcgs: u64,
    pub pinned: Kinds,
}

/// What [`autopsy`] works from.
pub struct Inputs<'a> {
    pub hierarchy: &'a Hierarchy,
    pub dirs: &'a [Dir],
    /// Dying memcgs tracked in this hierarchy.
    pub dying: Vec<&'a Dying>,
    pub census: Census,
    /// The page-cache map (None: not tracked, and why).
    pub charged: Result<(Vec<Charged>, PageCacheInfo), String>,
    /// Paths, sizes and residency of files by (dev, ino).
    pub files: &'a HashMap<(u32, u64), FileSeen>,
}

/// A file as userspace found it.
#[derive(Clone, Debug)]
pub struct FileSeen {
    pub path: Result<String, PathUnknown>,
    pub size_resident: Option<(u64, u64)>,
}

/// Builds the autopsy.
pub fn autopsy(i: Inputs) -> Autopsy {
    let v2 = i.hierarchy.version == 2;
    let live: HashMap<&str, &Dir> = i.dirs.iter().map(|d| (d.path.as_str(), d)).collect();
    // Tracked dying memcgs by closest live ancestor.
    let mut tracked: BTreeMap<String, Vec<&Dying>> = BTreeMap::new();
    for d in &i.dying {
        tracked
            .entry(live_ancestor(&d.path, &live))
            .or_default()
            .push(d);
    }
    let before = if v2 {
        dying_before(i.dirs)
    } else {
        HashMap::new()
    };
    let (charged, info) = match &i.charged {
        Ok((c, info)) => (c.as_slice(), Some(info.clone())),
        Err(_) => (&[][..], None),
    };
    let mut groups = Vec::new();
    for d in i.dirs {
        let mine = tracked.remove(&d.path).unwrap_or_default();
        let charged_here = i.census.by_memcg.get(&d.id).copied().unwrap_or_default();
        let own = (!v2).then(|| own_v1(&i.hierarchy.mount, &d.path));
        let pinned = not_pinning(own.map_or(charged_here, |o| charged_here.minus(&o)));
        let direct = before.get(d.path.as_str()).copied();
        let earlier = direct.map(|n| n.saturating_sub(mine.len() as u64));
        let untracked_v1 = !v2 && i.hierarchy.dying.unwrap_or(0) > i.dying.len() as u64;
        let wanted = !mine.is_empty()
            || earlier.is_some_and(|n| n > 0)
            || (untracked_v1 && pinned.file + pinned.shmem >= MIN_UNTRACKED);
        if !wanted {
            continue;
        }
        let ids: HashMap<u64, &str> = mine.iter().map(|m| (m.id, m.path.as_str())).collect();
        let files = files_of(&ids, charged, i.files);
        let files_unknown = match (&i.charged, files.is_empty()) {
            (Err(why), _) => Some(FilesUnknown::NotTracked { why: why.clone() }),
            (Ok(_), true) if mine.is_empty() => Some(FilesUnknown::ChargedBeforeStart),
            (Ok(_), true) => Some(FilesUnknown::NoneSeen),
            (Ok(_), false) if mine.is_empty() || earlier.is_some_and(|n| n > 0) => {
                Some(FilesUnknown::ChargedBeforeStart)
            }
            _ => None,
        };
        let remedies = remedies(i.hierarchy, &d.path, &pinned, &files, &mine);
        groups.push(PinnedGroup {
            ancestor: d.path.clone(),
            dying: (mine.iter()).map(|m| memcg_row(m)).collect(),
            dying_before_start: if v2 { earlier } else { None },
            charged: charged_here,
            own,
            pinned,
            files,
            files_unknown,
            remedies,
        });
    }
    groups.sort_by(|a, b| {
        b.pinned
            .total()
            .cmp(&a.pinned.total())
            .then(a.ancestor.cmp(&b.ancestor))
    });
    groups.truncate(GROUPS);
    Autopsy {
        hierarchy: i.hierarchy.name.clone(),
        mount: i.hierarchy.mount.display().to_string(),
        census: i.census.run,
        by_creator: sum_by(&groups, |g| creator_of(g)),
        by_container: sum_by(&groups, |g| container_of(g)),
        groups,
        pagecache: info,
        pagecache_missing: i.charged.err(),
        unseen: vec![Unseen::Swap, Unseen::SocketBuffers],
    }
}

/// What the census shows under an ancestor less the kernel memory: at removal the
/// kernel moves a memcg's kernel objects (slab, kmem pages) to its parent (obj_cgroup
/// reparenting, 5.9+), so they are the parent's and pin nothing; `charged` keeps them.
fn not_pinning(k: Kinds) -> Kinds {
    Kinds {
        slab: 0,
        kernel: 0,
        ..k
    }
}

/// The closest ancestor of `path` (itself excluded) that is a live directory.
fn live_ancestor(path: &str, live: &HashMap<&str, &Dir>) -> String {
    let mut p = parent_of(path);
    while !live.contains_key(p) && p != "/" {
        p = parent_of(p);
    }
    p.to_string()
}

/// cgroup2: dying memcgs whose closest online ancestor is each directory: its
/// nr_dying_descendants minus its live children's (a dying cgroup has no live child).
fn dying_before(dirs: &[Dir]) -> HashMap<&str, u64> {
    let mut under: HashMap<&str, u64> = HashMap::new();
    for d in dirs {
        if d.path != "/" {
            *under.entry(parent_of(&d.path)).or_default() += d.dying_descendants.unwrap_or(0);
        }
    }
    (dirs.iter())
        .filter_map(|d| {
            let n = d
                .dying_descendants?
                .saturating_sub(under.get(d.path.as_str()).copied().unwrap_or(0));
            Some((d.path.as_str(), n))
        })
        .collect()
}

/// cgroup v1: what the memcg charges itself, from memory.stat's local LRU lines (the
/// census classes pages the same way: shmem sits on the anon LRU).
fn own_v1(mount: &Path, path: &str) -> Kinds {
    let file = mount.join(path.trim_start_matches('/')).join("memory.stat");
    let text = fs::read_to_string(file).unwrap_or_default();
    own_from_stat(&text)
}

fn own_from_stat(text: &str) -> Kinds {
    let get = |k: &str| {
        (text.lines())
            .find_map(|l| {
                l.strip_prefix(k)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let shmem = get("shmem");
    Kinds {
        file: get("inactive_file") + get("active_file"),
        shmem,
        anon: (get("inactive_anon") + get("active_anon")).saturating_sub(shmem),
        slab: 0,
        kernel: 0,
    }
}

fn memcg_row(d: &Dying) -> PinnedMemcg {
    PinnedMemcg {
        path: d.path.clone(),
        id: d.id,
        creator: (d.creator.as_ref()).map(|a| format!("{} ({})", a.comm(), a.pid)),
        container: container::of_cgroup(&d.path).map(Container::named),
    }
}

/// The files the memcgs `ids` charged, the most bytes first.
fn files_of(
    ids: &HashMap<u64, &str>,
    charged: &[Charged],
    seen: &HashMap<(u32, u64), FileSeen>,
) -> Vec<PinFile> {
    let mut v: Vec<PinFile> = (charged.iter())
        .filter_map(|c| {
            let memcg = ids.get(&c.memcg)?;
            let s = seen.get(&(c.dev, c.ino));
            let path = s.map(|s| s.path.clone());
            Some(PinFile {
                memcg: memcg.to_string(),
                dev: dev_name(c.dev),
                ino: c.ino,
                path: path.clone().and_then(Result::ok),
                path_unknown: path.and_then(Result::err),
                size: s.and_then(|s| s.size_resident).map(|x| x.0),
                resident: s.and_then(|s| s.size_resident).map(|x| x.1),
                charged: c.pages * PAGE,
                adder: format!("{} ({})", c.comm, c.tgid),
            })
        })
        .collect();
    v.sort_by(|a, b| b.charged.cmp(&a.charged).then(a.ino.cmp(&b.ino)));
    v.truncate(FILES_PER_GROUP);
    v
}

/// What frees a group's pages, the most targeted first.
fn remedies(
    h: &Hierarchy,
    ancestor: &str,
    pinned: &Kinds,
    files: &[PinFile],
    mine: &[&Dying],
) -> Vec<Remedy> {
    let mut r: Vec<Remedy> = (files.iter())
        .filter(|f| f.resident.is_some_and(|b| b > 0))
        .filter_map(|f| f.path.as_ref())
        .map(|p| Remedy {
            kind: RemedyKind::DropFileCache,
            command: Some(format!("dd if={} iflag=nocache count=0 status=none", shell_quote(p))),
            note: "drops this file's page cache (all of it, whichever memcg charged it); dirty pages are written back first".into(),
        })
        .collect();
    if pinned.shmem > 0 {
        r.push(Remedy {
            kind: RemedyKind::DeleteShmemFiles,
            command: None,
            note: "shmem/tmpfs pages are freed only with their files (or swapped out): delete the tmpfs files the dying memcgs' tasks wrote".into(),
        });
    }
    let dir = h.mount.join(ancestor.trim_start_matches('/'));
    if h.version == 2 && dir.join("memory.reclaim").exists() && pinned.total() > 0 {
        r.push(Remedy {
            kind: RemedyKind::ReclaimAncestor,
            command: Some(format!("echo {} > {}", pinned.total(), shell_quote(&dir.join("memory.reclaim").display().to_string()))),
            note: "reclaims up to that many bytes under the ancestor: its live children lose page cache too".into(),
        });
    }
    if h.version == 1 {
        let who = (mine.iter().find_map(|d| d.creator.as_ref()))
            .map_or("the creator".to_string(), |a| a.comm().to_string());
        r.push(Remedy {
            kind: RemedyKind::ForceEmptyBeforeRmdir,
            command: Some(format!("echo 0 > {}/<memcg>/memory.force_empty && rmdir {}/<memcg>", dir.display(), dir.display())),
            note: format!("for {who}'s next removals: memory.force_empty reclaims a memcg's pages before rmdir, so it is released at once"),
        });
    }
    r
}

fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn creator_of(g: &PinnedGroup) -> String {
    let mut c = g.dying.iter().filter_map(|d| d.creator.as_deref());
    match (c.next(), g.dying.is_empty()) {
        (_, true) => "before start".into(),
        // The comm only: pids of one creator differ from memcg to memcg.
        (Some(first), _) => first.split(" (").next().unwrap_or(first).to_string(),
        (None, false) => "before start".into(),
    }
}

fn container_of(g: &PinnedGroup) -> String {
    (g.dying.iter().find_map(|d| d.container.as_ref()))
        .or(container::of_cgroup(&g.ancestor).as_ref())
        .map_or_else(|| "-".into(), |c| c.short())
}

/// Groups summed by `key`, the most bytes first.
fn sum_by(groups: &[PinnedGroup], key: impl Fn(&PinnedGroup) -> String) -> Vec<PinnedBy> {
    let mut m: BTreeMap<String, PinnedBy> = BTreeMap::new();
    for g in groups {
        let who = key(g);
        let e = m.entry(who.clone()).or_insert(PinnedBy {
            who,
            memcgs: 0,
            pinned: Kinds::default(),
        });
        e.memcgs += g.dying.len() as u64 + g.dying_before_start.unwrap_or(0);
        e.pinned.add(&g.pinned);
    }
    let mut v: Vec<PinnedBy> = m.into_values().collect();
    v.sort_by(|a, b| b.pinned.total().cmp(&a.pinned.total()));
    v.truncate(GROUPS);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str, id: u64, dying: Option<u64>) -> Dir {
        Dir {
            path: path.into(),
            id,
            children: 0,
            procs: None,
            age: None,
            dying_descendants: dying,
        }
    }

    #[test]
    fn v1_own_lines() {
        let k = own_from_stat(
            "cache 8192\nrss 4096\nshmem 4096\ninactive_anon 4096\nactive_anon 4096\ninactive_file 4096\nactive_file 0\ntotal_cache 99\n",
        );
        assert_eq!((k.file, k.shmem, k.anon), (4096, 4096, 4096));
    }

    #[test]
    fn dying_counted_at_closest_live_ancestor() {
        let dirs = [
            dir("/", 1, Some(3)),
            dir("/a", 2, Some(2)),
            dir("/a/b", 3, Some(0)),
        ];
        let m = dying_before(&dirs);
        assert_eq!((m["/"], m["/a"], m["/a/b"]), (1, 2, 0));
        let live: HashMap<&str, &Dir> = dirs.iter().map(|d| (d.path.as_str(), d)).collect();
        assert_eq!(live_ancestor("/a/x/y", &live), "/a");
        assert_eq!(live_ancestor("/z", &live), "/");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/mnt/a.b"), "/mnt/a.b");
        assert_eq!(shell_quote("/mnt/a b'c"), "'/mnt/a b'\\''c'");
    }
}
