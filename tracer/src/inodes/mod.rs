//! `tracer inodes`: which filesystems run out of inodes and how fast, which processes
//! (and containers) create the inodes, in which directories, and which creates already
//! fail with ENOSPC (the Sentry incident: `df -h` shows space, every create fails).
//!
//! The kernel side counts ext4 inode allocations and frees per (filesystem, process)
//! and per (filesystem, parent directory), and failed creates per (filesystem,
//! process), in maps read once per report: no per-file copy to userspace. Usage and
//! levels come from statvfs of every inode-limited filesystem.
mod dirs;

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Result, anyhow};
use aya::maps::{MapData, PerCpuHashMap};
use serde_json::json;
use tracer_common::{
    EventKind, comm_str, decode,
    inodes::{
        DEV_CAPACITY, DIR_CAPACITY, DevCounts, DevTgid, DirKey, ENOSPC_CAPACITY, PROC_CAPACITY,
        PathEvent, ProcCounts,
    },
};

use crate::{
    bpf::{self, Hook, Offset, Session, Spec},
    output::{Table, human_duration, round3},
    procinfo,
    run::{self, Detector, Report, ReportCtx, RunOpts},
    snapshot::{
        Level,
        inodes::{self as snap, FsUsage, Mount},
    },
};
use dirs::{Resolver, Source};

/// One enter and one exit hook per create-type syscall, all optional.
macro_rules! syscall_hooks {
    ($($name:literal),* $(,)?) => {
        &[
            Hook {
                program: "inodes_alloc",
                category: "ext4",
                name: "ext4_allocate_inode",
                required: true,
                purpose: "count inodes allocated per process and directory",
            },
            Hook {
                program: "inodes_free",
                category: "ext4",
                name: "ext4_free_inode",
                required: true,
                purpose: "count inodes freed per process",
            },
            Hook {
                program: "inodes_request",
                category: "ext4",
                name: "ext4_request_inode",
                required: false,
                purpose: "tell which ext4 filesystem a failed create was on",
            },
            $(
                Hook {
                    program: concat!("inodes_enter_", $name),
                    category: "syscalls",
                    name: concat!("sys_enter_", $name),
                    required: false,
                    purpose: concat!("name directories by the path given to ", $name, "()"),
                },
                Hook {
                    program: concat!("inodes_exit_", $name),
                    category: "syscalls",
                    name: concat!("sys_exit_", $name),
                    required: false,
                    purpose: concat!("count ", $name, "() calls that fail with ENOSPC"),
                },
            )*
        ]
    };
}

pub const SPEC: Spec = Spec {
    detector: "inodes",
    hooks: syscall_hooks!(
        "openat",
        "open",
        "creat",
        "openat2",
        "mkdirat",
        "mkdir",
        "mknodat",
        "mknod",
        "symlinkat",
        "symlink",
    ),
    offsets: &[
        Offset {
            global: "INODES_ALLOC_DEV",
            category: "ext4",
            event: "ext4_allocate_inode",
            field: "dev",
        },
        Offset {
            global: "INODES_ALLOC_DIR",
            category: "ext4",
            event: "ext4_allocate_inode",
            field: "dir",
        },
        Offset {
            global: "INODES_FREE_DEV",
            category: "ext4",
            event: "ext4_free_inode",
            field: "dev",
        },
        Offset {
            global: "INODES_REQUEST_DEV",
            category: "ext4",
            event: "ext4_request_inode",
            field: "dev",
        },
        Offset {
            global: "INODES_SYSCALL_ARG0",
            category: "syscalls",
            event: "sys_enter_openat",
            field: "dfd",
        },
        Offset {
            global: "INODES_SYSCALL_RET",
            category: "syscalls",
            event: "sys_exit_openat",
            field: "ret",
        },
    ],
    // Only the first inode of each directory and the first ENOSPC of each process
    // send a record (312 bytes): room for ~3,000 new directories between drains.
    ring_bytes: 1 << 20,
};

/// Find which filesystem runs out of inodes, who creates the files, and where.
///
/// Counts ext4 inode allocations and frees per process and per directory in the
/// kernel, creates that fail with ENOSPC, and inode/block usage of every mounted
/// inode-limited filesystem (ext2/3/4, xfs, tmpfs, ...) with a time-to-exhaustion.
///
/// Examples:
///   tracer inodes                      # until Ctrl-C
///   tracer inodes -d 30s --fs /var     # one filesystem
///   tracer inodes -i 10s --json        # a JSON report every 10 seconds
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only this filesystem (its mount point).
    #[arg(long = "fs", value_name = "MOUNTPOINT")]
    pub fs: Option<PathBuf>,
    /// Rows per table (processes, directories, failures).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    #[command(flatten)]
    pub run: RunOpts,
}

pub async fn run(args: Args) -> Result<()> {
    let target = match &args.fs {
        Some(p) => Some(snap::filesystem_at(p).map_err(|e| {
            anyhow!(
                "{e:#}; --fs takes the directory a filesystem is mounted on (`findmnt` lists them)"
            )
        })?),
        None => None,
    };
    let mut session = bpf::start(
        &SPEC,
        &[("INODES_TARGET_DEV", target.as_ref().map_or(0, |t| t.dev))],
    )?;
    let mut caveats: Vec<String> = session
        .missing()
        .map(|h| format!("{} is missing: cannot {}", h.hook, h.purpose))
        .collect();
    if let Some(t) = target.as_ref().filter(|t| !t.fstype.starts_with("ext")) {
        caveats.push(format!(
            "{} is {}, not ext4: usage and ENOSPC failures are shown, but allocations are \
             only traced per process and directory on ext4",
            t.mount.display(),
            t.fstype
        ));
    }
    let mut det = Inodes {
        procs: PerCpuHashMap::try_from(take(&mut session, "INODES_PROCS")?)?,
        dirs: PerCpuHashMap::try_from(take(&mut session, "INODES_DIRS")?)?,
        devs: PerCpuHashMap::try_from(take(&mut session, "INODES_DEVS")?)?,
        enospc: PerCpuHashMap::try_from(take(&mut session, "INODES_ENOSPC")?)?,
        enospc_first: HashMap::new(),
        start_usage: HashMap::new(),
        resolver: Resolver::default(),
        caveats,
        target,
        top: args.top.max(1),
    };
    // Usage at the start, for the rate of filesystems whose allocations are not traced.
    for f in det.filesystems(&snap::mounts()?) {
        det.start_usage.insert(f.dev, f.inodes_used);
    }
    let what = match &det.target {
        Some(t) => format!(
            "inode allocations, frees and ENOSPC on {}",
            t.mount.display()
        ),
        None => "inode allocations, frees and ENOSPC".into(),
    };
    run::drive(&args.run, &mut session.ebpf, &what, &mut det).await
}

fn take(session: &mut Session, name: &str) -> Result<aya::maps::Map> {
    session
        .ebpf
        .take_map(name)
        .ok_or_else(|| anyhow::anyhow!("map {name} is missing from the eBPF object"))
}

struct Inodes {
    procs: PerCpuHashMap<MapData, DevTgid, ProcCounts>,
    dirs: PerCpuHashMap<MapData, DirKey, u64>,
    devs: PerCpuHashMap<MapData, u32, DevCounts>,
    enospc: PerCpuHashMap<MapData, DevTgid, u64>,
    /// (dev, tgid) -> comm and path (absolute when it could be made so) of the first
    /// failed create, from the kernel's record.
    enospc_first: HashMap<DevTgid, (String, String)>,
    /// dev -> inodes used at the start.
    start_usage: HashMap<u32, u64>,
    resolver: Resolver,
    caveats: Vec<String>,
    target: Option<FsUsage>,
    top: usize,
}

/// Seconds until no inode is left at `net_per_s` (None when not growing).
pub fn eta_s(free: u64, net_per_s: f64) -> Option<f64> {
    (net_per_s > 0.0).then(|| free as f64 / net_per_s)
}

/// Values that per-CPU maps hold once per CPU, and how to add them up.
trait Sum: Copy + Default {
    fn add(&mut self, other: &Self);
}

impl Sum for u64 {
    fn add(&mut self, o: &u64) {
        *self += o;
    }
}

impl Sum for DevCounts {
    fn add(&mut self, o: &DevCounts) {
        self.allocated += o.allocated;
        self.freed += o.freed;
    }
}

impl Sum for ProcCounts {
    fn add(&mut self, o: &ProcCounts) {
        self.allocated += o.allocated;
        self.freed += o.freed;
        // The comm is set on the CPU that first saw the process.
        if self.comm[0] == 0 {
            self.comm = o.comm;
        }
    }
}

/// Entries of a per-CPU kernel map summed over the CPUs, and a caveat when it is (nearly)
/// full (LRU eviction drops the least recently updated keys: their counts are missing).
fn entries<K: aya::Pod, V: aya::Pod + Sum>(
    map: &PerCpuHashMap<MapData, K, V>,
    name: &str,
    capacity: u32,
    caveats: &mut Vec<String>,
) -> Vec<(K, V)> {
    let v: Vec<(K, V)> = map
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, per_cpu)| {
            let mut total = V::default();
            for v in per_cpu.iter() {
                total.add(v);
            }
            (k, total)
        })
        .collect();
    // LRU maps start evicting a little before they are full (per-CPU free lists).
    if v.len() as u64 * 10 >= capacity as u64 * 9 {
        caveats.push(format!(
            "the {name} map holds {} of its {capacity} entries: LRU eviction may have \
             dropped the least recently active, whose counts are then missing here",
            v.len()
        ));
    }
    v
}

impl Inodes {
    fn filesystems(&self, mounts: &[Mount]) -> Vec<FsUsage> {
        let mut all = snap::filesystems_of(mounts);
        if let Some(t) = &self.target {
            all.retain(|f| f.dev == t.dev);
        }
        all
    }

    fn mount_name(dev: u32, mounts: &[Mount]) -> String {
        match mounts.iter().find(|m| m.dev == dev) {
            Some(m) => m.mount.display().to_string(),
            None => format!("dev {}:{}", dev >> 20, dev & 0xfffff),
        }
    }
}

fn cgroup(pid: u32) -> String {
    if procinfo::exists(pid) {
        procinfo::cgroup_of(pid)
    } else {
        "exited".into()
    }
}

impl Detector for Inodes {
    fn command(&self) -> &'static str {
        "inodes"
    }

    fn on_event(&mut self, data: &[u8]) {
        let Some(ev) = decode::<PathEvent>(data) else {
            return;
        };
        match EventKind::from_u32(ev.header.kind) {
            // Resolve now: a relative path needs the process's cwd, which goes with it.
            Some(EventKind::InodesNewDir) => self.resolver.try_syscall(ev.dev, ev.ino, &ev.first),
            Some(EventKind::InodesEnospc) => {
                if self.enospc_first.len() >= ENOSPC_CAPACITY as usize {
                    return;
                }
                let path = dirs::absolute(&ev.first)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| comm_str(&ev.first.path).to_string());
                let key = DevTgid {
                    dev: ev.dev,
                    tgid: ev.header.tgid,
                };
                self.enospc_first
                    .entry(key)
                    .or_insert_with(|| (comm_str(&ev.comm).to_string(), path));
            }
            _ => {}
        }
    }

    fn report(&mut self, ctx: &ReportCtx) -> Result<Report> {
        let elapsed = ctx.elapsed.as_secs_f64().max(1e-3);
        let mounts = snap::mounts()?;
        let mut caveats = self.caveats.clone();
        let devs: HashMap<u32, DevCounts> =
            entries(&self.devs, "per-filesystem", DEV_CAPACITY, &mut caveats)
                .into_iter()
                .collect();

        // Filesystems: net rate from the kernel's counts on ext4, else from statvfs.
        let mut fs_rows: Vec<FsRow> = Vec::new();
        for u in self.filesystems(&mounts) {
            let row = match devs.get(&u.dev) {
                Some(d) => FsRow {
                    net: d.allocated as f64 - d.freed as f64,
                    source: "ebpf",
                    allocated: Some(d.allocated),
                    freed: Some(d.freed),
                    u,
                },
                None if u.fstype.starts_with("ext") => FsRow {
                    net: 0.0,
                    source: "ebpf",
                    allocated: Some(0),
                    freed: Some(0),
                    u,
                },
                None => {
                    let start = self
                        .start_usage
                        .get(&u.dev)
                        .copied()
                        .unwrap_or(u.inodes_used);
                    FsRow {
                        net: u.inodes_used as f64 - start as f64,
                        source: "statvfs",
                        allocated: None,
                        freed: None,
                        u,
                    }
                }
            };
            fs_rows.push(FsRow {
                net: row.net / elapsed,
                ..row
            });
        }
        fs_rows.sort_by(|a, b| {
            b.u.inodes_used_pct()
                .total_cmp(&a.u.inodes_used_pct())
                .then(b.net.total_cmp(&a.net))
        });

        // Processes: most net inodes first.
        let mut procs = entries(&self.procs, "per-process", PROC_CAPACITY, &mut caveats);
        procs.retain(|(k, _)| self.target.as_ref().is_none_or(|t| t.dev == k.dev));
        procs.sort_by(|a, b| {
            let net = |v: &ProcCounts| v.allocated as i64 - v.freed as i64;
            net(&b.1)
                .cmp(&net(&a.1))
                .then(b.1.allocated.cmp(&a.1.allocated))
                .then(a.0.tgid.cmp(&b.0.tgid))
        });
        procs.truncate(self.top);

        // Directories: most inodes created first.
        let mut dirs = entries(&self.dirs, "per-directory", DIR_CAPACITY, &mut caveats);
        dirs.retain(|(k, _)| self.target.as_ref().is_none_or(|t| t.dev == k.dev));
        let dirs_total: u64 = dirs.iter().map(|(_, v)| v).sum();
        dirs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.ino.cmp(&b.0.ino)));
        dirs.truncate(self.top);

        // Failed creates.
        let mut enospc: Vec<(DevTgid, u64, String, String, String)> =
            entries(&self.enospc, "ENOSPC", ENOSPC_CAPACITY, &mut caveats)
                .into_iter()
                .map(|(k, n)| {
                    let (comm, path) = self.enospc_first.get(&k).cloned().unwrap_or_else(|| {
                        let comm = procinfo::comm_of(k.tgid).unwrap_or_else(|| "?".into());
                        (comm, String::new())
                    });
                    let mount = if k.dev != 0 {
                        Self::mount_name(k.dev, &mounts)
                    } else {
                        // Not an ext4 inode request: the mount that holds the path.
                        snap::mount_of_path(std::path::Path::new(&path), &mounts)
                            .filter(|_| path.starts_with('/'))
                            .map(|m| m.mount.display().to_string())
                            .unwrap_or_else(|| "?".into())
                    };
                    (k, n, comm, path, mount)
                })
                .collect();
        if let Some(t) = &self.target {
            let tm = t.mount.display().to_string();
            enospc.retain(|(k, _, _, _, mount)| k.dev == t.dev || *mount == tm);
        }
        enospc.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.tgid.cmp(&b.0.tgid)));
        enospc.truncate(self.top);

        // JSON and text together.
        let mut text = String::new();
        let mut fs_json = Vec::new();
        let mut ft = Table::new(&[
            "MOUNT",
            "DEVICE",
            "FSTYPE",
            "INODES",
            "IUSE%",
            "BLOCKS%",
            "NET/S",
            "EXHAUSTED IN",
            "LEVEL",
        ]);
        let mut flags = Vec::new();
        for r in &fs_rows {
            let u = &r.u;
            let ipct = u.inodes_used_pct();
            let bpct = u.blocks_used_pct();
            let lvl = u.level().as_str();
            let eta = eta_s(u.inodes_total.saturating_sub(u.inodes_used), r.net);
            let sig = u.inodes_full_blocks_free();
            if sig {
                flags.push(format!(
                    "!!! {}: {:.0}% of inodes used while only {:.0}% of blocks are: `df -h` shows \
                     space but creates fail with \"No space left on device\"",
                    u.mount.display(),
                    ipct,
                    bpct
                ));
            }
            ft.row(vec![
                u.mount.display().to_string(),
                u.device.clone(),
                u.fstype.clone(),
                format!("{}/{}", u.inodes_used, u.inodes_total),
                format!("{ipct:.1}%"),
                format!("{bpct:.1}%"),
                format!("{:+.1}", r.net),
                match eta {
                    Some(e) if e <= 0.0 => "now (full)".into(),
                    Some(e) => human_duration(e),
                    None => "-".into(),
                },
                lvl.to_uppercase(),
            ]);
            fs_json.push(json!({
                "mount": u.mount, "device": u.device, "fstype": u.fstype,
                "dev": format!("{}:{}", u.major, u.minor),
                "inodes_total": u.inodes_total, "inodes_used": u.inodes_used,
                "inodes_free": u.inodes_total.saturating_sub(u.inodes_used),
                "inodes_used_pct": round3(ipct), "blocks_used_pct": round3(bpct),
                "allocated": r.allocated, "freed": r.freed,
                "net_inodes_per_s": round3(r.net), "rate_source": r.source,
                "exhaustion_eta_s": eta.map(round3), "level": lvl,
                "inodes_full_blocks_free": sig,
            }));
        }
        text += "FILESYSTEMS (inodes; WARN >= 80% used, CRIT >= 90%; NET/S = allocated - freed per second)\n";
        if ft.is_empty() {
            text += "  none with a fixed inode count\n";
        } else {
            text += &ft.render();
        }
        for f in &flags {
            text += &format!("{f}\n");
        }

        let mut pt = Table::new(&[
            "PID",
            "COMM",
            "MOUNT",
            "ALLOCATED",
            "FREED",
            "NET",
            "CGROUP",
        ]);
        let mut procs_json = Vec::new();
        for (k, v) in &procs {
            let comm = comm_str(&v.comm).to_string();
            let cg = cgroup(k.tgid);
            let mount = Self::mount_name(k.dev, &mounts);
            let net = v.allocated as i64 - v.freed as i64;
            pt.row(vec![
                k.tgid.to_string(),
                comm.clone(),
                mount.clone(),
                v.allocated.to_string(),
                v.freed.to_string(),
                format!("{net:+}"),
                cg.clone(),
            ]);
            procs_json.push(json!({
                "pid": k.tgid, "comm": comm, "cgroup": cg, "mount": mount,
                "allocated": v.allocated, "freed": v.freed, "net": net,
            }));
        }
        text += "\nTOP PROCESSES (ext4 inodes, most net created first; frees count for the process that dropped the last link)\n";
        if pt.is_empty() {
            text += "  none: no ext4 inode was allocated or freed\n";
        } else {
            text += &pt.render();
        }

        let mut dt = Table::new(&["MOUNT", "DIRECTORY", "FROM", "ALLOCATED", "SHARE"]);
        let mut dirs_json = Vec::new();
        // Resolved directories, most inodes first: (mount, path).
        let mut top_dirs: Vec<(String, String)> = Vec::new();
        let wanted: Vec<_> = dirs
            .iter()
            .map(|(k, _)| {
                let mount = mounts
                    .iter()
                    .find(|m| m.dev == k.dev)
                    .map(|m| m.mount.clone());
                (k.dev, k.ino, mount)
            })
            .collect();
        let resolved = self.resolver.resolve_all(&wanted);
        for ((k, n), r) in dirs.iter().zip(resolved) {
            let mount = Self::mount_name(k.dev, &mounts);
            let shown = match &r.path {
                Some(p) => p.display().to_string(),
                None => format!("inode {}", k.ino),
            };
            let share = 100.0 * *n as f64 / dirs_total.max(1) as f64;
            if r.source != Source::Unresolved {
                top_dirs.push((mount.clone(), shown.clone()));
            }
            dt.row(vec![
                mount.clone(),
                shown,
                r.source.as_str().into(),
                n.to_string(),
                format!("{share:.1}%"),
            ]);
            dirs_json.push(json!({
                "mount": mount, "path": r.path, "path_source": r.source, "ino": k.ino,
                "allocated": n, "share_pct": round3(share),
            }));
        }
        text += "\nTOP DIRECTORIES (where new inodes were created; FROM: syscall = path given to the create and checked by stat, walk = found under the mount, unresolved = inode number)\n";
        if dt.is_empty() {
            text += "  none\n";
        } else {
            text += &dt.render();
        }

        let mut et = Table::new(&["PID", "COMM", "MOUNT", "ENOSPC", "FIRST FAILED PATH"]);
        let mut enospc_json = Vec::new();
        for (k, n, comm, path, mount) in &enospc {
            et.row(vec![
                k.tgid.to_string(),
                comm.clone(),
                mount.clone(),
                n.to_string(),
                if path.is_empty() {
                    "-".into()
                } else {
                    path.clone()
                },
            ]);
            enospc_json.push(json!({
                "pid": k.tgid, "comm": comm, "mount": mount, "count": n,
                "first_path": path, "cgroup": cgroup(k.tgid),
            }));
        }
        text += "\nCREATES FAILED WITH ENOSPC (No space left on device)\n";
        if et.is_empty() {
            text += "  none\n";
        } else {
            text += &et.render();
        }

        let hints = hints(&fs_rows, &top_dirs, !enospc.is_empty());
        for h in &hints {
            text += &format!("hint: {h}\n");
        }
        for c in &caveats {
            text += &format!("note: {c}\n");
        }

        let json = json!({
            "filter_fs": self.target.as_ref().map(|t| &t.mount),
            "filesystems": fs_json,
            "top_processes": procs_json,
            "top_directories": dirs_json,
            "enospc": enospc_json,
            "hints": hints,
            "caveats": caveats,
        });
        Ok(Report { json, text })
    }
}

/// A filesystem in the report; `net` is inodes per second (allocated - freed).
struct FsRow {
    u: FsUsage,
    net: f64,
    /// "ebpf": counted by the ext4 hooks; "statvfs": change of inodes used.
    source: &'static str,
    allocated: Option<u64>,
    freed: Option<u64>,
}

/// What to do, for the fullest filesystem in trouble and its top directory.
fn hints(fs_rows: &[FsRow], top_dirs: &[(String, String)], failing: bool) -> Vec<String> {
    let mut out = Vec::new();
    let hot: Vec<&FsRow> = fs_rows
        .iter()
        .filter(|r| r.u.level() != Level::Ok || (failing && r.u.inodes_used >= r.u.inodes_total))
        .collect();
    if hot.is_empty() && !failing {
        return out;
    }
    // The top directory on the fullest filesystem in trouble (rows are fullest first).
    let dir = hot
        .iter()
        .find_map(|r| {
            let m = r.u.mount.display().to_string();
            top_dirs
                .iter()
                .find(|(dm, _)| *dm == m)
                .map(|(_, d)| d.clone())
        })
        .or_else(|| top_dirs.first().map(|(_, d)| d.clone()))
        .unwrap_or_else(|| "DIR".into());
    out.push(format!(
        "free inodes now: delete old small files in the top directory, gently and in batches: \
         `ionice -c3 find {dir} -xdev -type f -mmin +60 -delete` (check with -print first)"
    ));
    out.push(format!(
        "keep it from coming back: have the writer clean up, or add a logrotate rule or a \
         systemd-tmpfiles `e {dir} - - - 1d` line for that directory"
    ));
    if hot.iter().any(|r| r.u.fstype.starts_with("ext")) {
        out.push(
            "for good: recreate the ext4 filesystem with more inodes (`mkfs.ext4 -i 4096` or \
             `-N COUNT`; the count is fixed at mkfs time) or use XFS, which allocates inodes \
             dynamically"
                .into(),
        );
    }
    out.push(
        "on Kubernetes nodes the kubelet evicts pods on `nodefs.inodesFree` \
         (e.g. --eviction-hard=nodefs.inodesFree<5%): alert before that"
            .into(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_only_when_growing() {
        assert_eq!(eta_s(1000, 10.0), Some(100.0));
        assert_eq!(eta_s(1000, 0.0), None);
        assert_eq!(eta_s(1000, -3.0), None);
    }

    fn row(mount: &str, used: u64) -> FsRow {
        FsRow {
            u: FsUsage {
                mount: mount.into(),
                device: "/dev/x".into(),
                fstype: "ext4".into(),
                dev: 1,
                major: 0,
                minor: 1,
                inodes_total: 100,
                inodes_used: used,
                blocks_total: 100,
                blocks_used: 1,
                block_size: 4096,
            },
            net: 0.0,
            source: "ebpf",
            allocated: None,
            freed: None,
        }
    }

    #[test]
    fn hints_name_the_top_directory_of_the_full_filesystem() {
        let rows = [row("/data", 100), row("/", 10)];
        let dirs = [
            ("/".to_string(), "/var/busy".to_string()),
            ("/data".to_string(), "/data/cache".to_string()),
        ];
        let h = hints(&rows, &dirs, true);
        assert!(h[0].contains("find /data/cache -xdev"), "{h:?}");
        assert!(h.iter().any(|l| l.contains("mkfs.ext4 -i")));
        // Nothing in trouble and no failures: no advice.
        assert!(hints(&[row("/", 10)], &dirs, false).is_empty());
    }
}
