//! Cgroup hierarchies and how many cgroups each holds, live and dying.
//!
//! A dying cgroup was removed (rmdir) but is still referenced, typically by page
//! cache charged to a memory cgroup, so the kernel cannot free it yet. Its directory
//! is gone, so the count comes from the kernel's own numbers:
//! - cgroup v2: `cgroup.stat` `nr_dying_descendants` (at the root: the whole tree);
//! - cgroup v1: `/proc/cgroups` `num_cgroups` (which still counts dying cgroups) minus
//!   the directories visible under the hierarchy's mount.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use procfs::process::Process;

/// Walks stop here, so a host with runaway cgroups cannot make a snapshot slow.
pub const MAX_WALK: usize = 1_000_000;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Hierarchy {
    /// Controllers joined by ',' ("memory", "cpu,cpuacct", "name=systemd"), or
    /// "cgroup2" for the unified hierarchy.
    pub name: String,
    /// The kernel's hierarchy id: `root` in the cgroup tracepoints (0 for cgroup2).
    pub id: u32,
    pub version: u8,
    pub mount: PathBuf,
    /// Controllers bound to it: v1 from the mount options, cgroup2 from the root's
    /// `cgroup.controllers` (what a v1 mount holds is not available on cgroup2).
    pub controllers: Vec<String>,
    /// Live cgroups: the directories under the mount, the root included.
    pub cgroups: u64,
    /// Dying cgroups, when the kernel tells (None for named v1 hierarchies, which
    /// /proc/cgroups does not list, and for mounts of a sub-tree).
    pub dying: Option<u64>,
    /// How `dying` was obtained, for the report.
    pub dying_source: String,
}

impl Hierarchy {
    /// Whether the memory controller is bound to it (v1 memory hierarchy, or cgroup2
    /// when no v1 hierarchy holds memory).
    pub fn has_memory(&self) -> bool {
        self.controllers.iter().any(|c| c == "memory")
    }
}

/// One mounted cgroup hierarchy from mountinfo (the first mount of each).
#[derive(Clone, Debug)]
struct Mount {
    point: PathBuf,
    version: u8,
    controllers: Vec<String>,
    /// The cgroup the mount shows as its root ("/" unless a sub-tree is mounted).
    root: String,
}

fn mounts() -> Result<Vec<Mount>> {
    let infos = Process::myself()
        .and_then(|p| p.mountinfo())
        .context("reading /proc/self/mountinfo")?;
    let mut out: Vec<Mount> = Vec::new();
    for m in infos {
        let version = match m.fs_type.as_str() {
            "cgroup" => 1,
            "cgroup2" => 2,
            _ => continue,
        };
        let controllers: Vec<String> = if version == 2 {
            Vec::new()
        } else {
            m.super_options
                .iter()
                .filter_map(|(k, v)| match (k.as_str(), v) {
                    ("name", Some(v)) => Some(format!("name={v}")),
                    (k, None) if super_controller(k) => Some(k.to_string()),
                    _ => None,
                })
                .collect()
        };
        if out
            .iter()
            .any(|o| o.version == version && o.controllers == controllers)
        {
            continue;
        }
        out.push(Mount {
            point: m.mount_point,
            version,
            controllers,
            root: m.root,
        });
    }
    Ok(out)
}

/// Super options of a v1 cgroup mount that name a controller.
fn super_controller(opt: &str) -> bool {
    !matches!(
        opt,
        "rw" | "ro"
            | "noprefix"
            | "clone_children"
            | "xattr"
            | "cpuset_v2_mode"
            | "favordynmods"
            | "nsdelegate"
            | "memory_localevents"
            | "memory_recursiveprot"
            | "memory_hugetlb_accounting"
            | "memory_recursive_prot"
            | "pids_localevents"
    ) && !opt.starts_with("release_agent")
}

/// /proc/cgroups: controller -> (hierarchy id, num_cgroups).
pub fn proc_cgroups() -> Result<BTreeMap<String, (u32, u64)>> {
    let s = fs::read_to_string("/proc/cgroups").context("reading /proc/cgroups")?;
    Ok(parse_proc_cgroups(&s))
}

pub fn parse_proc_cgroups(s: &str) -> BTreeMap<String, (u32, u64)> {
    s.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_string();
            let id = f.next()?.parse().ok()?;
            let num = f.next()?.parse().ok()?;
            Some((name, (id, num)))
        })
        .collect()
}

/// Hierarchy ids of named v1 hierarchies (e.g. name=systemd), from /proc/self/cgroup.
fn named_ids() -> BTreeMap<String, u32> {
    let Ok(s) = fs::read_to_string("/proc/self/cgroup") else {
        return BTreeMap::new();
    };
    s.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let id = f.next()?.parse().ok()?;
            let ctl = f.next()?;
            ctl.starts_with("name=").then(|| (ctl.to_string(), id))
        })
        .collect()
}

/// Every directory under `root` (root included), depth first, at most MAX_WALK: its
/// absolute path, its path relative to `root` ("/" for the root, as the tracepoints
/// print it) and how many child directories it has.
fn walk(root: &Path) -> Vec<(PathBuf, String, usize)> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), "/".to_string())];
    while let Some((abs, rel)) = stack.pop() {
        if out.len() >= MAX_WALK {
            break;
        }
        let children = child_dirs(&abs, &rel);
        let n = children.len();
        stack.extend(children);
        out.push((abs, rel, n));
    }
    out
}

/// The child directories of cgroup directory `abs`, whose path relative to its
/// hierarchy's root is `rel` ("/" for the root): each one's absolute and relative path.
/// An unreadable directory (removed meanwhile) has none.
pub fn child_dirs(abs: &Path, rel: &str) -> Vec<(PathBuf, String)> {
    let Ok(rd) = fs::read_dir(abs) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if rel == "/" {
                format!("/{name}")
            } else {
                format!("{rel}/{name}")
            };
            (e.path(), child)
        })
        .collect()
}

/// A cgroup2 `cgroup.stat` as name -> value.
pub fn cgroup_stat(dir: &Path) -> Option<BTreeMap<String, u64>> {
    let s = fs::read_to_string(dir.join("cgroup.stat")).ok()?;
    Some(
        s.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// Every mounted hierarchy with its live and dying cgroup counts.
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let procs = proc_cgroups()?;
    let named = named_ids();
    Ok(mounts()?
        .into_iter()
        .map(|m| {
            let cgroups = walk(&m.point).len() as u64;
            describe(m, cgroups, &procs, &named)
        })
        .collect())
}

/// A hierarchy with every directory of it, for detectors that look at each cgroup.
#[derive(Clone, Debug)]
pub struct Survey {
    pub hierarchy: Hierarchy,
    pub dirs: Vec<Dir>,
}

/// Like [`hierarchies`], with one detailed walk per hierarchy (see [`Dir`]).
pub fn survey() -> Result<Vec<Survey>> {
    let procs = proc_cgroups()?;
    let named = named_ids();
    Ok(mounts()?
        .into_iter()
        .map(|m| {
            let dirs = walk_dirs(&m.point, m.version == 2);
            let hierarchy = describe(m, dirs.len() as u64, &procs, &named);
            Survey { hierarchy, dirs }
        })
        .collect())
}

fn describe(
    m: Mount,
    cgroups: u64,
    procs: &BTreeMap<String, (u32, u64)>,
    named: &BTreeMap<String, u32>,
) -> Hierarchy {
    let sub_tree = m.root != "/";
    let (name, id, dying, dying_source) = if m.version == 2 {
        let stat = cgroup_stat(&m.point);
        let dying = stat
            .as_ref()
            .and_then(|s| s.get("nr_dying_descendants").copied());
        let source = match dying {
            Some(_) => format!("{}/cgroup.stat nr_dying_descendants", m.point.display()),
            None => "unknown: no cgroup.stat".to_string(),
        };
        ("cgroup2".to_string(), 0, dying, source)
    } else {
        let name = m.controllers.join(",");
        let known = m.controllers.iter().find_map(|c| procs.get(c).copied());
        let id = known
            .map(|(id, _)| id)
            .or_else(|| m.controllers.iter().find_map(|c| named.get(c).copied()))
            .unwrap_or(0);
        match known {
            Some((_, num)) if !sub_tree => (
                name,
                id,
                Some(num.saturating_sub(cgroups)),
                format!("/proc/cgroups num_cgroups {num} minus {cgroups} visible directories"),
            ),
            Some(_) => (
                name,
                id,
                None,
                format!("unknown: only the sub-tree {} is mounted here", m.root),
            ),
            None => (
                name,
                id,
                None,
                "unknown: named hierarchy, not in /proc/cgroups".to_string(),
            ),
        }
    };
    let controllers = if m.version == 2 {
        fs::read_to_string(m.point.join("cgroup.controllers"))
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    } else {
        m.controllers
    };
    Hierarchy {
        name,
        id,
        version: m.version,
        controllers,
        mount: m.point,
        cgroups,
        dying,
        dying_source,
    }
}

/// One cgroup directory as a detailed walk sees it.
#[derive(Clone, Debug)]
pub struct Dir {
    /// Path relative to the mount point, "/" for the root, as the tracepoints print it.
    pub path: String,
    /// The cgroup id (the directory's inode number, = kernfs node id).
    pub id: u64,
    /// Child cgroups.
    pub children: usize,
    /// Tasks in it (cgroup.procs lines), read for leaves only (None otherwise).
    pub procs: Option<usize>,
    /// Time since the directory's ctime (its creation, for a cgroup).
    pub age: Option<Duration>,
    /// cgroup2: this level's `nr_dying_descendants`.
    pub dying_descendants: Option<u64>,
}

/// Every directory under `root` with its id, children, tasks (leaves), age and, on
/// cgroup2, dying descendants; at most MAX_WALK.
pub fn walk_dirs(root: &Path, v2: bool) -> Vec<Dir> {
    let now = SystemTime::now();
    walk(root)
        .into_iter()
        .filter_map(|(abs, rel, children)| {
            let meta = fs::metadata(&abs).ok()?;
            let ctime = SystemTime::UNIX_EPOCH
                + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().max(0) as u32);
            // Only leaves can be leftovers, so only their task lists are read.
            let procs = (children == 0)
                .then(|| fs::read_to_string(abs.join("cgroup.procs")).ok())
                .flatten()
                .map(|s| s.lines().count());
            let dying_descendants = v2
                .then(|| cgroup_stat(&abs))
                .flatten()
                .and_then(|s| s.get("nr_dying_descendants").copied());
            Some(Dir {
                path: rel,
                id: meta.ino(),
                children,
                procs,
                age: now.duration_since(ctime).ok(),
                dying_descendants,
            })
        })
        .collect()
}

/// Empty cgroups (no tasks, no children, not the root) at least `min_age` old.
pub fn empty(dirs: &[Dir], min_age: Duration) -> impl Iterator<Item = &Dir> {
    dirs.iter().filter(move |d| {
        d.path != "/"
            && d.children == 0
            && d.procs == Some(0)
            && d.age.is_some_and(|a| a >= min_age)
    })
}

/// cgroup2 levels that hold dying cgroups directly (their own nr_dying_descendants
/// minus their children's), most first: where dying cgroups sit, including ones from
/// before a tracer started.
pub fn dying_levels(dirs: &[Dir]) -> Vec<(String, u64)> {
    let by_path: HashMap<&str, u64> = dirs
        .iter()
        .filter_map(|d| Some((d.path.as_str(), d.dying_descendants?)))
        .collect();
    let mut below: HashMap<&str, u64> = HashMap::new();
    for d in dirs.iter().filter(|d| d.path != "/") {
        if let Some(&n) = by_path.get(d.path.as_str()) {
            *below.entry(parent_of(&d.path)).or_default() += n;
        }
    }
    let mut out: Vec<(String, u64)> = by_path
        .iter()
        .filter_map(|(p, &n)| {
            let own = n.saturating_sub(below.get(p).copied().unwrap_or(0));
            (own > 0).then(|| (p.to_string(), own))
        })
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// "/a/b" -> "/a", "/a" -> "/".
pub fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// One timed read of memory.stat (the LinkedIn symptom: with thousands of dying
/// memory cgroups it takes long, because the kernel sums over all of them).
#[derive(Clone, Debug)]
pub struct StatRead {
    pub path: PathBuf,
    pub took: Duration,
}

/// Times a read of the memory.stat that covers the most cgroups: the v1 memory root,
/// else the cgroup2 root's or its first top-level child's. None without a memory
/// controller.
pub fn time_memory_stat(hs: &[Hierarchy]) -> Option<StatRead> {
    let mut candidates: Vec<PathBuf> = hs
        .iter()
        .filter(|h| h.has_memory())
        .map(|h| h.mount.join("memory.stat"))
        .collect();
    if let Some(v2) = hs.iter().find(|h| h.version == 2) {
        candidates.push(v2.mount.join("memory.stat"));
        if let Ok(rd) = fs::read_dir(&v2.mount) {
            let mut tops: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().join("memory.stat"))
                .collect();
            tops.sort();
            candidates.extend(tops);
        }
    }
    let path = candidates.into_iter().find(|p| p.exists())?;
    let t0 = Instant::now();
    fs::read(&path).ok()?;
    Some(StatRead {
        took: t0.elapsed(),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_cgroups() {
        let s = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\nmemory\t4\t16\t1\nnet_cls\t0\t1\t1\n";
        let m = parse_proc_cgroups(s);
        assert_eq!(m["memory"], (4, 16));
        assert_eq!(m["net_cls"], (0, 1));
        assert_eq!(m.len(), 3);
    }

    fn dir(path: &str, dying: Option<u64>) -> Dir {
        Dir {
            path: path.into(),
            id: 1,
            children: 0,
            procs: Some(0),
            age: Some(Duration::from_secs(5)),
            dying_descendants: dying,
        }
    }

    #[test]
    fn dying_is_attributed_to_the_deepest_level() {
        let dirs = vec![
            dir("/", Some(5)),
            dir("/a", Some(4)),
            dir("/a/b", Some(3)),
            dir("/c", Some(0)),
        ];
        assert_eq!(
            dying_levels(&dirs),
            vec![("/a/b".into(), 3), ("/".into(), 1), ("/a".into(), 1)]
        );
        assert_eq!(parent_of("/a/b"), "/a");
        assert_eq!(parent_of("/a"), "/");
    }

    #[test]
    fn empty_leaves_past_min_age() {
        let mut busy = dir("/busy", None);
        busy.procs = Some(2);
        let mut parent = dir("/p", None);
        parent.children = 1;
        parent.procs = None;
        let dirs = vec![dir("/", None), busy, parent, dir("/p/leaf", None)];
        let got: Vec<&str> = empty(&dirs, Duration::from_secs(1))
            .map(|d| d.path.as_str())
            .collect();
        assert_eq!(got, vec!["/p/leaf"]);
        assert_eq!(empty(&dirs, Duration::from_secs(60)).count(), 0);
    }

    #[test]
    fn snapshot_of_this_machine_is_consistent() {
        // Every hierarchy has at least its root, and the cgroup2 one (if mounted)
        // reports its dying count from cgroup.stat.
        for h in hierarchies().unwrap() {
            assert!(h.cgroups >= 1, "{h:?}");
            assert!(
                walk_dirs(&h.mount, h.version == 2)
                    .iter()
                    .any(|d| d.path == "/")
            );
            if h.version == 2 {
                assert_eq!(h.id, 0);
                assert!(h.dying.is_some(), "{h:?}");
            }
        }
        // A controller is bound to one hierarchy: memory is on v1 or on cgroup2.
        let hs = hierarchies().unwrap();
        assert!(hs.iter().filter(|h| h.has_memory()).count() <= 1, "{hs:?}");
    }
}
