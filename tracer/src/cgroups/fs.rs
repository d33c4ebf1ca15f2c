//! What the cgroup filesystems show: the mounted hierarchies and their ids, a walk of
//! each (cgroups, per-level dying counts on cgroup2, empty leftovers, id -> path), the
//! dying count of v1 hierarchies from /proc/cgroups, and the memory.stat read time.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// The `root` of the cgroup tracepoints: 0 for cgroup2, else /proc/cgroups' id.
    pub id: i32,
    /// "cgroup2", or the v1 controllers ("memory", "cpu,cpuacct", "name=systemd").
    pub name: String,
    pub mount: PathBuf,
    pub v2: bool,
    /// v1 controllers bound to it (empty for cgroup2 and named hierarchies).
    pub controllers: Vec<String>,
}

/// The mounted hierarchies, from /proc/self/cgroup (hierarchy ids and controllers)
/// and /proc/self/mountinfo (where each is mounted).
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    Ok(parse_hierarchies(&own, &mountinfo))
}

/// mountinfo: `id parent major:minor root mount_point opts ... - fstype source super_opts`.
fn mounts(mountinfo: &str) -> Vec<(String, PathBuf, Vec<String>)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let opts = post.nth(1).unwrap_or("").split(',').map(String::from);
            let mount = pre.split(' ').nth(4)?;
            Some((fstype, PathBuf::from(unescape(mount)), opts.collect()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn parse_hierarchies(own_cgroup: &str, mountinfo: &str) -> Vec<Hierarchy> {
    let mounts = mounts(mountinfo);
    let mut out = Vec::new();
    for line in own_cgroup.lines() {
        // "4:memory:/path", "9:name=systemd:/", "0::/"
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctrl)) = (f.next(), f.next()) else {
            continue;
        };
        let Ok(id) = id.parse::<i32>() else { continue };
        let tokens: Vec<String> = ctrl
            .split(',')
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        let found = mounts.iter().find(|(fstype, _, opts)| {
            if id == 0 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && !tokens.is_empty() && tokens.iter().all(|t| opts.contains(t))
            }
        });
        let Some((_, mount, _)) = found else { continue };
        if out.iter().any(|h: &Hierarchy| h.id == id) {
            continue;
        }
        out.push(Hierarchy {
            id,
            name: if id == 0 {
                "cgroup2".into()
            } else {
                tokens.join(",")
            },
            mount: mount.clone(),
            v2: id == 0,
            controllers: tokens.into_iter().filter(|t| !t.contains('=')).collect(),
        });
    }
    out.sort_by_key(|h| h.id);
    out
}

/// One directory of a hierarchy.
#[derive(Clone, Debug)]
pub struct Dir {
    /// Path relative to the mount point, "/" for the root, as the tracepoints print it.
    pub path: String,
    /// The cgroup id (inode number of the directory).
    pub id: u64,
    pub children: usize,
    /// Tasks in it (cgroup.procs lines); None when unreadable.
    pub procs: Option<usize>,
    /// Age from the directory's ctime.
    pub age: Option<Duration>,
    /// cgroup2: nr_dying_descendants of this level.
    pub dying_descendants: Option<u64>,
}

/// What one walk of a hierarchy saw.
#[derive(Clone, Debug)]
pub struct Walk {
    pub dirs: Vec<Dir>,
    /// The walk stops after this many directories (a runaway host must not stall it).
    pub truncated: bool,
}

/// Directories visited per hierarchy walk at most.
pub const WALK_LIMIT: usize = 200_000;

pub fn walk(h: &Hierarchy) -> Walk {
    let mut dirs = Vec::new();
    let mut truncated = false;
    let mut stack = vec![(h.mount.clone(), "/".to_string())];
    let now = SystemTime::now();
    while let Some((abs, rel)) = stack.pop() {
        if dirs.len() >= WALK_LIMIT {
            truncated = true;
            break;
        }
        let Ok(meta) = fs::metadata(&abs) else {
            continue;
        };
        let mut children = 0;
        if let Ok(rd) = fs::read_dir(&abs) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    children += 1;
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child_rel = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((e.path(), child_rel));
                }
            }
        }
        use std::os::unix::fs::MetadataExt as _;
        let ctime = SystemTime::UNIX_EPOCH
            + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().max(0) as u32);
        // Only leaves can be leftovers, so only their task lists are read.
        let procs = if children == 0 {
            fs::read_to_string(abs.join("cgroup.procs"))
                .ok()
                .map(|s| s.lines().count())
        } else {
            None
        };
        let dying_descendants = if h.v2 {
            fs::read_to_string(abs.join("cgroup.stat"))
                .ok()
                .and_then(|s| stat_field(&s, "nr_dying_descendants"))
        } else {
            None
        };
        dirs.push(Dir {
            path: rel,
            id: meta.ino(),
            children,
            procs,
            age: now.duration_since(ctime).ok(),
            dying_descendants,
        });
    }
    Walk { dirs, truncated }
}

pub fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// num_cgroups per v1 hierarchy id, from /proc/cgroups (all controllers of one
/// hierarchy show the same number).
pub fn proc_cgroups() -> HashMap<i32, u64> {
    parse_proc_cgroups(&fs::read_to_string("/proc/cgroups").unwrap_or_default())
}

pub fn parse_proc_cgroups(text: &str) -> HashMap<i32, u64> {
    let mut out = HashMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let (Some(id), Some(n)) = (
            f.get(1).and_then(|v| v.parse::<i32>().ok()),
            f.get(2).and_then(|v| v.parse::<u64>().ok()),
        ) {
            if id > 0 {
                out.insert(id, n);
            }
        }
    }
    out
}

/// Counts of one hierarchy and how they were obtained.
#[derive(Clone, Debug)]
pub struct Counts {
    pub cgroups: u64,
    pub cgroups_how: String,
    pub dying: Option<u64>,
    pub dying_how: String,
}

pub fn counts(h: &Hierarchy, w: &Walk, num_cgroups: &HashMap<i32, u64>) -> Counts {
    let visible = w.dirs.len() as u64;
    let cgroups_how = format!(
        "directories under {}{}",
        h.mount.display(),
        if w.truncated { " (walk cut short)" } else { "" }
    );
    if h.v2 {
        let root = w.dirs.iter().find(|d| d.path == "/");
        let dying = root.and_then(|d| d.dying_descendants);
        return Counts {
            cgroups: visible,
            cgroups_how,
            dying,
            dying_how: match dying {
                Some(_) => "nr_dying_descendants of the root cgroup.stat".into(),
                None => "unknown: cgroup.stat unreadable".into(),
            },
        };
    }
    match num_cgroups.get(&h.id) {
        Some(&n) => Counts {
            cgroups: visible,
            cgroups_how,
            dying: Some(n.saturating_sub(visible)),
            dying_how: format!("/proc/cgroups num_cgroups {n} - {visible} visible directories"),
        },
        None => Counts {
            cgroups: visible,
            cgroups_how,
            dying: None,
            dying_how: "unknown: a hierarchy without controllers is not in /proc/cgroups".into(),
        },
    }
}

/// cgroup2 levels that hold dying cgroups directly (their own nr_dying_descendants
/// minus their children's), most first: where pre-existing dying cgroups sit.
pub fn dying_parents(w: &Walk) -> Vec<(String, u64)> {
    let by_path: HashMap<&str, u64> = w
        .dirs
        .iter()
        .filter_map(|d| Some((d.path.as_str(), d.dying_descendants?)))
        .collect();
    let mut below: HashMap<&str, u64> = HashMap::new();
    for d in &w.dirs {
        if d.path == "/" {
            continue;
        }
        let parent = parent_of(&d.path);
        if let Some(&n) = by_path.get(d.path.as_str()) {
            *below.entry(parent).or_default() += n;
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

/// The LinkedIn symptom: how long one read of memory.stat takes where it covers the
/// most cgroups (the v1 memory root, else the cgroup2 root or its first child that
/// has one).
#[derive(Clone, Debug)]
pub struct StatProbe {
    pub path: PathBuf,
    pub read: Duration,
}

pub fn memory_stat_probe(hs: &[Hierarchy]) -> Option<StatProbe> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for h in hs
        .iter()
        .filter(|h| h.controllers.iter().any(|c| c == "memory"))
    {
        candidates.push(h.mount.join("memory.stat"));
    }
    if let Some(v2) = hs.iter().find(|h| h.v2) {
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
    candidates
        .into_iter()
        .find(|p| p.exists())
        .and_then(|p| time_read(&p).map(|read| StatProbe { path: p, read }))
}

fn time_read(p: &Path) -> Option<Duration> {
    let t0 = Instant::now();
    fs::read(p).ok()?;
    Some(t0.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN: &str = "9:name=systemd:/\n4:memory:/a/b\n1:cpu:/\n0::/\n";

    #[test]
    fn hierarchies_map_ids_to_mounts() {
        let hs = parse_hierarchies(OWN, MOUNTINFO);
        let got: Vec<(i32, &str, &str)> = hs
            .iter()
            .map(|h| (h.id, h.name.as_str(), h.mount.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "cgroup2", "/sys/fs/cgroup/unified"),
                (1, "cpu", "/sys/fs/cgroup/cpu"),
                (4, "memory", "/sys/fs/cgroup/memory"),
                (9, "name=systemd", "/sys/fs/cgroup/systemd"),
            ]
        );
        assert!(hs[0].v2 && hs[3].controllers.is_empty());
        assert_eq!(hs[2].controllers, vec!["memory"]);
    }

    #[test]
    fn proc_cgroups_and_v1_dying() {
        let n = parse_proc_cgroups(
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t4\t16\t1\nnet_cls\t0\t1\t1\n",
        );
        assert_eq!(n, HashMap::from([(4, 16)]));
        let h = parse_hierarchies(OWN, MOUNTINFO).remove(2);
        let dir = |p: &str| Dir {
            path: p.into(),
            id: 1,
            children: 0,
            procs: Some(0),
            age: None,
            dying_descendants: None,
        };
        let w = Walk {
            dirs: vec![dir("/"), dir("/a"), dir("/a/b")],
            truncated: false,
        };
        let c = counts(&h, &w, &n);
        assert_eq!((c.cgroups, c.dying), (3, Some(13)));
        assert!(c.dying_how.contains("num_cgroups 16 - 3"));
    }

    #[test]
    fn dying_is_attributed_to_the_deepest_level() {
        let dir = |p: &str, d: u64| Dir {
            path: p.into(),
            id: 1,
            children: 0,
            procs: None,
            age: None,
            dying_descendants: Some(d),
        };
        let w = Walk {
            dirs: vec![dir("/", 5), dir("/a", 4), dir("/a/b", 3), dir("/c", 0)],
            truncated: false,
        };
        assert_eq!(
            dying_parents(&w),
            vec![("/a/b".into(), 3), ("/".into(), 1), ("/a".into(), 1)]
        );
        assert_eq!(parent_of("/a/b"), "/a");
        assert_eq!(parent_of("/a"), "/");
        assert_eq!(
            stat_field(
                "nr_descendants 3\nnr_dying_descendants 7\n",
                "nr_dying_descendants"
            ),
            Some(7)
        );
    }
}
