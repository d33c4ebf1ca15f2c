//! Cgroup hierarchies and how many cgroups each holds, live and dying.
//!
//! A dying cgroup was removed (rmdir) but is still referenced, typically by page
//! cache charged to a memory cgroup, so the kernel cannot free it yet. Its directory
//! is gone, so the count comes from the kernel's own numbers:
//! - cgroup v2: `cgroup.stat` `nr_dying_descendants` (at the root: the whole tree);
//! - cgroup v1: `/proc/cgroups` `num_cgroups` (which still counts dying cgroups) minus
//!   the directories visible under the hierarchy's mount.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
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
    /// Live cgroups: the directories under the mount, the root included.
    pub cgroups: u64,
    /// Dying cgroups, when the kernel tells (None for named v1 hierarchies, which
    /// /proc/cgroups does not list, and for mounts of a sub-tree).
    pub dying: Option<u64>,
    /// How `dying` was obtained, for the report.
    pub dying_source: String,
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

/// Every directory under `root` (root included), depth first, at most MAX_WALK.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if out.len() >= MAX_WALK {
            break;
        }
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
        out.push(dir);
    }
    out
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
    let mut out = Vec::new();
    for m in mounts()? {
        let cgroups = walk(&m.point).len() as u64;
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
        out.push(Hierarchy {
            name,
            id,
            version: m.version,
            mount: m.point,
            cgroups,
            dying,
            dying_source,
        });
    }
    Ok(out)
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

    #[test]
    fn snapshot_of_this_machine_is_consistent() {
        // Every hierarchy has at least its root, and the cgroup2 one (if mounted)
        // reports its dying count from cgroup.stat.
        for h in hierarchies().unwrap() {
            assert!(h.cgroups >= 1, "{h:?}");
            if h.version == 2 {
                assert_eq!(h.id, 0);
                assert!(h.dying.is_some(), "{h:?}");
            }
        }
    }
}
