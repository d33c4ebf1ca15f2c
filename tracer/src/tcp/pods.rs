//! TCP socket memory per cgroup, container and pod: the sockets of one look (sock_diag)
//! summed by the cgroup each socket was created in (INET_DIAG_CGROUP_ID, Linux 5.9+),
//! else by the cgroup of the process holding it; pods from the kubelet's cgroup layout
//! (container/), with each cgroup's own charge (memory.stat `sock`) where the cgroup2
//! memory controller keeps one.
use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{rows::human_bytes, sockets::Sock};
use crate::{
    container::{self, InCgroup},
    output::Row,
    procinfo,
};

/// Cgroups kept per look (the report shows at most --top of them).
const KEEP_CGROUPS: usize = 1000;
/// Directories walked at most to map cgroup ids to paths (a large node has thousands).
const WALK_CAP: usize = 200_000;
/// The cgroup2 tree is walked again for an unknown id at most this often.
const WALK_EVERY: Duration = Duration::from_secs(1);
/// Ids remembered; cleared when full (then walked again).
const ID_CACHE_CAPACITY: usize = 100_000;

/// How sockets were put in cgroups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupSource {
    /// sock_diag's INET_DIAG_CGROUP_ID: the cgroup2 cgroup the socket was created in.
    #[default]
    SocketCgroupId,
    /// The cgroup of the process holding the socket: this kernel sends no cgroup id.
    OwnerProcess,
}

impl CgroupSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupSource::SocketCgroupId => "by each socket's cgroup (sock_diag cgroup id)",
            CgroupSource::OwnerProcess => {
                "by the cgroup of the process holding each socket (this kernel sends no socket cgroup id)"
            }
        }
    }
}

/// Socket memory of one cgroup in one look.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupSum {
    pub cgroup: String,
    pub sockets: usize,
    pub rmem: u64,
    pub wmem: u64,
    pub held: u64,
}

/// Sums the sockets holding memory per cgroup, most first.
pub fn by_cgroup(socks: &[Sock]) -> (Vec<CgroupSum>, CgroupSource) {
    let held: Vec<&Sock> = socks.iter().filter(|s| s.total() > 0).collect();
    let with_ids = held.iter().any(|s| s.cgroup_id.is_some());
    let ids: Vec<u64> = held.iter().filter_map(|s| s.cgroup_id).collect();
    let paths = paths_of(&ids);
    let mut of_pid: HashMap<u32, String> = HashMap::new();
    let mut sums: HashMap<String, CgroupSum> = HashMap::new();
    for s in held {
        let path = match s.cgroup_id.and_then(|id| paths.get(&id)) {
            Some(p) => p.clone(),
            None => match s.pid {
                Some(pid) => (of_pid.entry(pid))
                    .or_insert_with(|| procinfo::cgroup_of(pid))
                    .clone(),
                None => "-".into(),
            },
        };
        let e = sums.entry(path.clone()).or_insert_with(|| CgroupSum {
            cgroup: path,
            ..Default::default()
        });
        e.sockets += 1;
        e.rmem += s.rmem;
        e.wmem += s.wmem;
        e.held += s.total();
    }
    let mut v: Vec<CgroupSum> = sums.into_values().collect();
    v.sort_by(|a, b| b.held.cmp(&a.held).then(a.cgroup.cmp(&b.cgroup)));
    v.truncate(KEEP_CGROUPS);
    let source = if with_ids {
        CgroupSource::SocketCgroupId
    } else {
        CgroupSource::OwnerProcess
    };
    (v, source)
}

/// cgroup id -> path (relative to the cgroup2 root) of the ids found.
fn paths_of(ids: &[u64]) -> HashMap<u64, String> {
    static CACHE: Mutex<Option<(HashMap<u64, String>, Option<Instant>)>> = Mutex::new(None);
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let (known, last) = guard.get_or_insert_with(|| (HashMap::new(), None));
    let missing = ids.iter().any(|id| !known.contains_key(id));
    if missing
        && last.is_none_or(|t| t.elapsed() >= WALK_EVERY)
        && let Some(root) = cgroup2_mount()
    {
        *last = Some(Instant::now());
        if known.len() > ID_CACHE_CAPACITY {
            known.clear();
        }
        walk(&root, &root, known, &mut 0);
    }
    ids.iter()
        .filter_map(|id| Some((*id, known.get(id)?.clone())))
        .collect()
}

/// Records the inode number (the cgroup id) of every directory under `dir`.
fn walk(root: &Path, dir: &Path, out: &mut HashMap<u64, String>, seen: &mut usize) {
    if *seen >= WALK_CAP {
        return;
    }
    *seen += 1;
    let Ok(md) = fs::metadata(dir) else { return };
    let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
    out.insert(md.ino(), format!("/{}", rel.display()));
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &e.path(), out, seen);
        }
    }
}

/// Where cgroup2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        (post.split(' ').next() == Some("cgroup2"))
            .then(|| pre.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The `sock` line of a cgroup2 cgroup's memory.stat: socket memory charged to it and
/// its descendants. None where the memory controller is not enabled for it.
pub fn memcg_sock(rel: &str) -> Option<u64> {
    let dir = cgroup2_mount()?.join(rel.trim_start_matches('/'));
    let stat = fs::read_to_string(dir.join("memory.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("sock ")?.trim().parse().ok())
}

/// Socket memory per pod and per cgroup, from one look.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodSockets {
    pub source: CgroupSource,
    /// Why `memcg_sock_bytes` is null, where it is (cgroup2 memory.stat `sock` only).
    pub memcg_sock_note: Option<String>,
    /// Pods holding the most, most first (--top).
    pub pods: Vec<PodRow>,
    /// Cgroups holding the most, most first (--top).
    pub cgroups: Vec<CgroupRow>,
}

/// One pod's sockets: an element of `socket_memory.pods`, a row of TOP PODS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodRow {
    /// The pod's UID, with dashes.
    pub pod_uid: String,
    pub qos: Option<Cow<'static, str>>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// The pod's cgroup (the parent of its containers').
    pub pod_cgroup: String,
    /// Its containers holding socket memory.
    pub containers: usize,
    pub sockets: usize,
    pub rmem_bytes: u64,
    pub wmem_bytes: u64,
    pub held_bytes: u64,
    /// memory.stat `sock` of the pod's cgroup (what its memcg is charged for sockets).
    pub memcg_sock_bytes: Option<u64>,
}

impl PodRow {
    /// `namespace/name` when the runtime named it, else the UID.
    pub fn label(&self) -> String {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(p)) => format!("{ns}/{p}"),
            (None, Some(p)) => p.clone(),
            _ => self.pod_uid.clone(),
        }
    }
}

impl Row for PodRow {
    const HEADER: &'static [&'static str] = &[
        "POD",
        "QOS",
        "CONTAINERS",
        "SOCKETS",
        "RECV Q",
        "SEND Q",
        "HELD",
        "MEMCG SOCK",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.label(),
            self.qos.as_deref().unwrap_or("-").to_string(),
            self.containers.to_string(),
            self.sockets.to_string(),
            human_bytes(self.rmem_bytes),
            human_bytes(self.wmem_bytes),
            human_bytes(self.held_bytes),
            self.memcg_sock_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
        ]
    }
}

/// One cgroup's sockets: an element of `socket_memory.cgroups`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CgroupRow {
    #[serde(flatten)]
    pub cgroup: InCgroup,
    pub sockets: usize,
    pub rmem_bytes: u64,
    pub wmem_bytes: u64,
    pub held_bytes: u64,
    pub memcg_sock_bytes: Option<u64>,
}

impl Row for CgroupRow {
    const HEADER: &'static [&'static str] = &[
        "CGROUP",
        "SOCKETS",
        "RECV Q",
        "SEND Q",
        "HELD",
        "MEMCG SOCK",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.cgroup.text(),
            self.sockets.to_string(),
            human_bytes(self.rmem_bytes),
            human_bytes(self.wmem_bytes),
            human_bytes(self.held_bytes),
            self.memcg_sock_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
        ]
    }
}

/// The top `top` pods and cgroups of one look's per-cgroup sums.
pub fn summarize(sums: &[CgroupSum], source: CgroupSource, top: usize) -> PodSockets {
    let memcg = |rel: &str| (rel != "-").then(|| memcg_sock(rel)).flatten();
    let mut pods: BTreeMap<String, PodRow> = BTreeMap::new();
    for s in sums {
        let Some(c) = container::of_cgroup(&s.cgroup) else {
            continue;
        };
        let Some(uid) = c.pod_uid.clone() else {
            continue;
        };
        let p = pods.entry(uid.clone()).or_insert_with(|| {
            let named = c.clone().named();
            let pod_cgroup = parent(&s.cgroup);
            PodRow {
                pod_uid: uid,
                qos: c.qos.clone(),
                namespace: named.names.namespace.clone(),
                pod: named.names.pod.clone(),
                memcg_sock_bytes: memcg(&pod_cgroup),
                pod_cgroup,
                containers: 0,
                sockets: 0,
                rmem_bytes: 0,
                wmem_bytes: 0,
                held_bytes: 0,
            }
        });
        p.containers += 1;
        p.sockets += s.sockets;
        p.rmem_bytes += s.rmem;
        p.wmem_bytes += s.wmem;
        p.held_bytes += s.held;
    }
    let mut pods: Vec<PodRow> = pods.into_values().collect();
    pods.sort_by(|a, b| {
        b.held_bytes
            .cmp(&a.held_bytes)
            .then(a.pod_uid.cmp(&b.pod_uid))
    });
    pods.truncate(top);
    let cgroups: Vec<CgroupRow> = (sums.iter().take(top))
        .map(|s| CgroupRow {
            cgroup: s.cgroup.as_str().into(),
            sockets: s.sockets,
            rmem_bytes: s.rmem,
            wmem_bytes: s.wmem,
            held_bytes: s.held,
            memcg_sock_bytes: memcg(&s.cgroup),
        })
        .collect();
    let any_memcg = cgroups.iter().any(|c| c.memcg_sock_bytes.is_some());
    PodSockets {
        source,
        memcg_sock_note: (!any_memcg && !cgroups.is_empty()).then(|| {
            "memory.stat `sock` is kept by the cgroup2 memory controller only, and it is not enabled for these cgroups"
                .into()
        }),
        pods,
        cgroups,
    }
}

/// The `n` pods whose sockets hold the most memory now (for triage).
pub fn top_now(n: usize) -> Vec<PodRow> {
    let (socks, _) = super::sockets::list(&std::collections::HashSet::new());
    let (sums, source) = by_cgroup(&socks);
    summarize(&sums, source, n).pods
}

/// "; top pods by socket memory: a 1.0 MiB, b 256.0 KiB" for a one-line finding, or "".
pub fn top_text(pods: &[PodRow]) -> String {
    if pods.is_empty() {
        return String::new();
    }
    let each: Vec<String> = (pods.iter())
        .map(|p| format!("{} {}", p.label(), human_bytes(p.held_bytes)))
        .collect();
    format!("; top pods by socket memory: {}", each.join(", "))
}

/// The parent of a cgroup path ("/" for a top-level one).
fn parent(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".into(),
        Some((p, _)) => p.into(),
    }
}

/// The text section: top pods (when any pod holds socket memory) and top cgroups.
pub fn text(p: &PodSockets) -> String {
    let mut t = format!("\nSOCKET MEMORY BY POD ({})\n", p.source.as_str());
    if p.pods.is_empty() {
        t += "  no pod's containers hold socket memory\n";
    } else {
        t += &crate::output::Table::of(&p.pods).render();
    }
    if !p.cgroups.is_empty() {
        t += "by cgroup\n";
        t += &crate::output::Table::of(&p.cgroups).render();
    }
    if let Some(n) = &p.memcg_sock_note {
        t += &format!("note: {n}\n");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const ID_A: &str = "4f2a9c0d1e7b83a5c6d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5";
    const ID_B: &str = "5f2a9c0d1e7b83a5c6d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5";

    fn sum(cgroup: &str, held: u64) -> CgroupSum {
        CgroupSum {
            cgroup: cgroup.into(),
            sockets: 2,
            rmem: held / 2,
            wmem: held / 2,
            held,
        }
    }

    #[test]
    fn containers_of_a_pod_add_up_and_pods_rank_by_memory() {
        let other = "2b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let sums = [
            sum(&format!("/kubepods/burstable/pod{other}/{ID_A}"), 5000),
            sum(&format!("/kubepods/burstable/pod{UID}/{ID_A}"), 3000),
            sum(&format!("/kubepods/burstable/pod{UID}/{ID_B}"), 4000),
            sum("/system.slice/sshd.service", 100),
        ];
        let p = summarize(&sums, CgroupSource::SocketCgroupId, 10);
        assert_eq!(p.pods.len(), 2);
        assert_eq!(p.pods[0].pod_uid, UID);
        assert_eq!(p.pods[0].held_bytes, 7000);
        assert_eq!(p.pods[0].containers, 2);
        assert_eq!(p.pods[0].sockets, 4);
        assert_eq!(
            p.pods[0].pod_cgroup,
            format!("/kubepods/burstable/pod{UID}")
        );
        assert_eq!(p.pods[0].qos.as_deref(), Some("burstable"));
        assert_eq!(p.pods[1].held_bytes, 5000);
        assert_eq!(p.cgroups.len(), 4);
        assert_eq!(
            summarize(&sums, CgroupSource::OwnerProcess, 1).pods.len(),
            1
        );
    }

    #[test]
    fn parents() {
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
    }

    #[test]
    fn sockets_are_summed_by_their_cgroup_or_their_owners() {
        let me = std::process::id();
        let sock = |cgroup_id, pid, rmem| Sock {
            local: "127.0.0.1:1".parse().unwrap(),
            peer: "127.0.0.1:2".parse().unwrap(),
            state: "ESTAB".into(),
            inode: 1,
            cookie: 1,
            rmem,
            rcvbuf: None,
            wmem: 0,
            sndbuf: None,
            fwd_alloc: 0,
            drops: None,
            pid,
            cgroup_id,
        };
        // No cgroup id: by the owner's cgroup; none either: "-"; empty sockets skipped.
        let (v, src) = by_cgroup(&[
            sock(None, Some(me), 100),
            sock(None, Some(me), 50),
            sock(None, None, 10),
            sock(None, None, 0),
        ]);
        assert_eq!(src, CgroupSource::OwnerProcess);
        assert_eq!(v[0].cgroup, procinfo::cgroup_of(me));
        assert_eq!((v[0].sockets, v[0].held), (2, 150));
        assert_eq!((v[1].cgroup.as_str(), v[1].held), ("-", 10));
    }
}
