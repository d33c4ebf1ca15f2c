//! Bookkeeping of cgroup events in userspace: cgroups created in the window (with their
//! creator), dying ones (rmdir seen, release not yet) with their rmdir time, recent
//! releases with their latency, rmdir-to-release histograms per hierarchy, and churn
//! per creating process and per parent path. Every map is bounded.
use std::collections::{BTreeMap, HashMap, VecDeque};

use hdrhistogram::Histogram;
use tracer_common::{COMM_LEN, EventKind, cgroups::CgroupEvent, comm_str};

use super::metrics::RELEASE_BOUNDS;
use crate::output::{self, Buckets};

use crate::snapshot::cgroups::parent_of;

/// Cgroups remembered from their mkdir (for the creator of a later dying one): more
/// than a busy Kubernetes node holds at once (a few thousand); ~5 MiB. Over it the
/// older half goes (a cgroup created weeks ago is shown as created before the start).
pub const LIVE_CAPACITY: usize = 65_536;
/// Dying cgroups tracked with their rmdir time: the leak this detector is about shows
/// long before 65,536 (each pins its memory); over it the older half goes, and they
/// stay in the counts, which come from the hierarchy itself.
pub const DYING_CAPACITY: usize = 65_536;
/// Releases kept for the report's `released` list (the latest ones).
pub const RECENT_CAPACITY: usize = 256;
/// Creating processes, and parent paths per hierarchy, counted for churn: the report
/// shows the top 100; over the cap the lighter half goes (the kernel counts every
/// mkdir and rmdir, so the totals stay exact).
pub const CHURN_CAPACITY: usize = 4_096;

/// A process that made or removed a cgroup (comm kept as the kernel's bytes: no
/// allocation per event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor {
    pub pid: u32,
    pub comm_bytes: [u8; COMM_LEN],
}

impl Actor {
    pub fn comm(&self) -> &str {
        comm_str(&self.comm_bytes)
    }
}

type Key = (i32, u64);

#[derive(Clone, Debug)]
struct Live {
    creator: Actor,
    ts_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dying {
    pub root: i32,
    pub id: u64,
    pub path: String,
    pub rmdir_ns: u64,
    /// None: created before the tracer started.
    pub creator: Option<Actor>,
    pub remover: Actor,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Released {
    pub root: i32,
    pub id: u64,
    pub path: String,
    /// rmdir-to-release time; None when the rmdir was not seen (dying from before).
    pub latency_us: Option<u64>,
    pub creator: Option<Actor>,
    pub remover: Option<Actor>,
}

/// Churn of one creating process.
#[derive(Clone, Debug, Default)]
pub struct Churn {
    pub comm_bytes: [u8; COMM_LEN],
    pub mkdirs: u64,
    pub rmdirs: u64,
}

impl Churn {
    pub fn comm(&self) -> &str {
        comm_str(&self.comm_bytes)
    }
}

#[derive(Default)]
pub struct Tracker {
    live: HashMap<Key, Live>,
    dying: HashMap<Key, Dying>,
    recent: VecDeque<Released>,
    hist: BTreeMap<i32, Histogram<u64>>,
    /// The same latencies, exactly, in the buckets of the Prometheus histogram.
    buckets: BTreeMap<i32, Buckets>,
    by_process: HashMap<u32, Churn>,
    /// hierarchy -> parent path -> mkdirs (nested so a hit needs no allocation).
    by_parent: HashMap<i32, HashMap<String, u64>>,
    /// Releases of cgroups whose rmdir was not seen (dying before the start).
    pub released_unseen: BTreeMap<i32, u64>,
    /// Dying cgroups dropped from tracking because DYING_CAPACITY was reached.
    pub dying_evicted: u64,
    /// Live cgroups forgotten because LIVE_CAPACITY was reached.
    pub live_evicted: u64,
    /// Processes and parent paths dropped from the churn counts (CHURN_CAPACITY).
    pub churn_evicted: u64,
}

/// Keeps the newer half of `map` when it is over `cap` (amortized: one O(n) pass per
/// cap/2 inserts).
fn bound<V>(map: &mut HashMap<Key, V>, cap: usize, ts: impl Fn(&V) -> u64) -> usize {
    if map.len() <= cap {
        return 0;
    }
    let mut all: Vec<u64> = map.values().map(&ts).collect();
    let mid = all.len() / 2;
    let (_, cut, _) = all.select_nth_unstable(mid);
    let cut = *cut;
    let before = map.len();
    map.retain(|_, v| ts(v) >= cut);
    before - map.len()
}

/// Keeps the heavier half of `map` when it is over `cap`, by `weight` (ties: any of
/// them), and returns how many went. Exactly half stays even when every weight is the
/// same (a cut by value would then keep none).
fn keep_heavier_half<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    cap: usize,
    weight: impl Fn(&V) -> u64,
) -> u64 {
    if map.len() <= cap {
        return 0;
    }
    let mut v: Vec<(u64, K)> = map.iter().map(|(k, v)| (weight(v), k.clone())).collect();
    let keep = v.len() / 2;
    v.select_nth_unstable_by(keep, |a, b| b.0.cmp(&a.0));
    let before = map.len();
    for (_, k) in &v[keep..] {
        map.remove(k);
    }
    (before - map.len()) as u64
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A raw record (tests; the detector decodes once itself and calls on_record).
    #[cfg(test)]
    pub fn on_event(&mut self, data: &[u8]) -> Result<(), crate::run::BadRecord> {
        let (kind, ev) = crate::run::decode::<CgroupEvent>(data)?;
        self.on_record(kind, &ev);
        Ok(())
    }

    /// One decoded record of kind `kind`.
    pub fn on_record(&mut self, kind: EventKind, ev: &CgroupEvent) {
        let h = ev.header;
        let key = (ev.root, ev.id);
        let path = || String::from_utf8_lossy(ev.path_bytes()).into_owned();
        let actor = Actor {
            pid: h.tgid,
            comm_bytes: ev.comm,
        };
        match kind {
            EventKind::CgroupMkdir => {
                self.live.insert(
                    key,
                    Live {
                        creator: actor,
                        ts_ns: h.ts_ns,
                    },
                );
                self.live_evicted += bound(&mut self.live, LIVE_CAPACITY, |l| l.ts_ns) as u64;
                let c = self.by_process.entry(h.tgid).or_default();
                c.comm_bytes = ev.comm;
                c.mkdirs += 1;
                let parent = parent_of(comm_str(ev.path_bytes()));
                let parents = self.by_parent.entry(ev.root).or_default();
                match parents.get_mut(parent) {
                    Some(n) => *n += 1,
                    None => {
                        parents.insert(parent.to_string(), 1);
                    }
                }
                self.bound_churn();
            }
            EventKind::CgroupRmdir => {
                let creator = self.live.remove(&key).map(|l| l.creator);
                self.dying.insert(
                    key,
                    Dying {
                        root: ev.root,
                        id: ev.id,
                        path: path(),
                        rmdir_ns: h.ts_ns,
                        creator,
                        remover: actor,
                    },
                );
                self.dying_evicted += bound(&mut self.dying, DYING_CAPACITY, |d| d.rmdir_ns) as u64;
                let c = self.by_process.entry(h.tgid).or_default();
                if c.comm_bytes[0] == 0 {
                    c.comm_bytes = ev.comm;
                }
                c.rmdirs += 1;
                self.bound_churn();
            }
            EventKind::CgroupRelease => {
                let rel = match self.dying.remove(&key) {
                    Some(d) => {
                        let ns = h.ts_ns.saturating_sub(d.rmdir_ns);
                        let us = ns / 1_000;
                        output::record(
                            self.hist
                                .entry(ev.root)
                                .or_insert_with(output::new_histogram),
                            us,
                        );
                        (self.buckets.entry(ev.root))
                            .or_insert_with(|| Buckets::new(RELEASE_BOUNDS))
                            .record_ns(ns);
                        Released {
                            root: ev.root,
                            id: ev.id,
                            path: d.path,
                            latency_us: Some(us),
                            creator: d.creator,
                            remover: Some(d.remover),
                        }
                    }
                    None => {
                        // A cgroup created and released without an rmdir we saw: it
                        // was removed before the start (or its rmdir was lost).
                        self.live.remove(&key);
                        *self.released_unseen.entry(ev.root).or_default() += 1;
                        Released {
                            root: ev.root,
                            id: ev.id,
                            path: path(),
                            latency_us: None,
                            creator: None,
                            remover: None,
                        }
                    }
                };
                if self.recent.len() == RECENT_CAPACITY {
                    self.recent.pop_front();
                }
                self.recent.push_back(rel);
            }
            // Not a cgroups kind: decode_record refuses those.
            _ => {}
        }
    }

    fn bound_churn(&mut self) {
        self.churn_evicted += keep_heavier_half(&mut self.by_process, CHURN_CAPACITY, |c| {
            c.mkdirs.saturating_add(c.rmdirs)
        });
        for parents in self.by_parent.values_mut() {
            self.churn_evicted += keep_heavier_half(parents, CHURN_CAPACITY, |n| *n);
        }
    }

    /// Who made a live cgroup, when the tracer saw its mkdir.
    pub fn creator_of(&self, root: i32, id: u64) -> Option<Actor> {
        self.live.get(&(root, id)).map(|l| l.creator)
    }

    /// The path of a removed cgroup seen in an event (dying or recently released).
    pub fn path_of(&self, root: i32, id: u64) -> Option<&str> {
        let key = (root, id);
        self.dying.get(&key).map(|d| d.path.as_str()).or_else(|| {
            self.recent
                .iter()
                .rev()
                .find(|r| (r.root, r.id) == key)
                .map(|r| r.path.as_str())
        })
    }

    /// Dying cgroups, oldest rmdir first.
    pub fn dying(&self) -> Vec<&Dying> {
        let mut v: Vec<&Dying> = self.dying.values().collect();
        v.sort_by(|a, b| a.rmdir_ns.cmp(&b.rmdir_ns).then(a.id.cmp(&b.id)));
        v
    }

    /// Dying cgroups per (hierarchy, parent path): count and oldest rmdir, most first.
    pub fn dying_by_parent(&self) -> Vec<((i32, String), usize, u64)> {
        let mut m: HashMap<(i32, String), (usize, u64)> = HashMap::new();
        for d in self.dying.values() {
            let e = m
                .entry((d.root, parent_of(&d.path).to_string()))
                .or_insert((0, u64::MAX));
            e.0 += 1;
            e.1 = e.1.min(d.rmdir_ns);
        }
        let mut v: Vec<_> = m.into_iter().map(|(k, (n, t))| (k, n, t)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        v
    }

    pub fn dying_in(&self, root: i32) -> usize {
        self.dying.values().filter(|d| d.root == root).count()
    }

    /// Latest releases, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &Released> {
        self.recent.iter()
    }

    pub fn hist(&self, root: i32) -> Option<&Histogram<u64>> {
        self.hist.get(&root)
    }

    /// A hierarchy's release latencies in buckets (all 0 when none).
    pub fn buckets(&self, root: i32) -> Buckets {
        (self.buckets.get(&root).cloned()).unwrap_or_else(|| Buckets::new(RELEASE_BOUNDS))
    }

    /// All hierarchies' release latencies in buckets.
    pub fn buckets_all(&self) -> Buckets {
        let mut all = Buckets::new(RELEASE_BOUNDS);
        for b in self.buckets.values() {
            all.merge(b);
        }
        all
    }

    /// All hierarchies' release latencies in one histogram.
    pub fn hist_all(&self) -> Histogram<u64> {
        let mut all = output::new_histogram();
        for h in self.hist.values() {
            // Same bounds and precision: adding cannot fail.
            let _ = all.add(h);
        }
        all
    }

    pub fn roots_with_releases(&self) -> impl Iterator<Item = i32> + '_ {
        self.hist.keys().copied()
    }

    /// Top creating processes by mkdirs (then rmdirs).
    pub fn top_processes(&self, n: usize) -> Vec<(u32, Churn)> {
        let mut v: Vec<(u32, Churn)> = self
            .by_process
            .iter()
            .map(|(p, c)| (*p, c.clone()))
            .collect();
        v.sort_by(|a, b| {
            b.1.mkdirs
                .cmp(&a.1.mkdirs)
                .then(b.1.rmdirs.cmp(&a.1.rmdirs))
                .then(a.0.cmp(&b.0))
        });
        v.truncate(n);
        v
    }

    /// Top parent paths by mkdirs.
    pub fn top_parents(&self, n: usize) -> Vec<((i32, String), u64)> {
        let mut v: Vec<_> = self
            .by_parent
            .iter()
            .flat_map(|(root, m)| m.iter().map(|(p, c)| ((*root, p.clone()), *c)))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{EventHeader, as_bytes, cgroups::PATH_LEN};

    fn ev(kind: EventKind, tgid: u32, ts: u64, root: i32, id: u64, path: &str) -> Vec<u8> {
        let mut e = CgroupEvent {
            header: EventHeader {
                kind: kind as u32,
                tgid,
                ts_ns: ts,
            },
            id,
            caller_cgroup2: 0,
            root,
            level: path.matches('/').count() as i32,
            path_len: path.len() as u32,
            _pad: 0,
            comm: [0; COMM_LEN],
            path: [0; PATH_LEN],
        };
        e.comm[..4].copy_from_slice(b"kube");
        e.path[..path.len()].copy_from_slice(path.as_bytes());
        as_bytes(&e).to_vec()
    }

    #[test]
    fn mkdir_rmdir_release_tracks_dying_and_latency() {
        let mut t = Tracker::new();
        t.on_event(&ev(EventKind::CgroupMkdir, 10, 1_000, 4, 7, "/p/a"))
            .unwrap();
        t.on_event(&ev(EventKind::CgroupMkdir, 10, 1_000, 4, 8, "/p/b"))
            .unwrap();
        t.on_event(&ev(EventKind::CgroupRmdir, 11, 2_000_000, 4, 7, "/p/a"))
            .unwrap();
        t.on_event(&ev(EventKind::CgroupRmdir, 11, 3_000_000, 4, 8, "/p/b"))
            .unwrap();
        let d = t.dying();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, "/p/a");
        assert_eq!(d[0].creator.as_ref().unwrap().pid, 10);
        assert_eq!(d[0].remover.pid, 11);
        assert_eq!(t.dying_by_parent()[0].1, 2);
        t.on_event(&ev(EventKind::CgroupRelease, 0, 5_000_000, 4, 7, "/p/a"))
            .unwrap();
        assert_eq!(t.dying_in(4), 1);
        let r: Vec<_> = t.recent().collect();
        assert_eq!(r[0].latency_us, Some(3_000));
        assert_eq!(t.hist(4).unwrap().len(), 1);
        assert_eq!(t.top_processes(5)[0].1.mkdirs, 2);
        assert_eq!(t.top_parents(5)[0], ((4, "/p".to_string()), 2));
    }

    #[test]
    fn release_without_rmdir_is_counted_apart() {
        let mut t = Tracker::new();
        t.on_event(&ev(EventKind::CgroupRelease, 0, 5, 0, 9, "/old"))
            .unwrap();
        assert_eq!(t.released_unseen.get(&0), Some(&1));
        assert!(t.hist(0).is_none());
        assert_eq!(t.recent().next().unwrap().latency_us, None);
        assert!(t.on_event(&[1, 2, 3]).is_err());
    }

    #[test]
    fn dying_map_is_bounded() {
        let mut t = Tracker::new();
        for i in 0..(DYING_CAPACITY as u64 + 1) {
            t.on_event(&ev(EventKind::CgroupRmdir, 1, i, 0, i, "/x"))
                .unwrap();
        }
        assert!(t.dying().len() <= DYING_CAPACITY);
        assert!(t.dying_evicted > 0);
        // The newest survive.
        assert!(t.dying().iter().any(|d| d.id == DYING_CAPACITY as u64));
    }

    #[test]
    fn live_and_churn_maps_are_bounded_and_their_evictions_counted() {
        let mut t = Tracker::new();
        let n = LIVE_CAPACITY as u64 + 1;
        // One mkdir each by as many processes, under as many parents.
        for i in 0..n {
            let path = format!("/p{i}/c");
            t.on_event(&ev(EventKind::CgroupMkdir, i as u32, i, 0, i, &path))
                .unwrap();
        }
        assert!(t.live.len() <= LIVE_CAPACITY);
        assert_eq!(t.live_evicted, n - t.live.len() as u64);
        assert!(t.creator_of(0, n - 1).is_some(), "the newest are kept");
        assert!(t.by_process.len() <= CHURN_CAPACITY && t.by_process.len() >= CHURN_CAPACITY / 2);
        let parents = &t.by_parent[&0];
        assert!(parents.len() <= CHURN_CAPACITY && parents.len() >= CHURN_CAPACITY / 2);
        // Every mkdir is either still counted or counted as evicted.
        let kept: u64 = t.by_process.values().map(|c| c.mkdirs).sum();
        let kept_parents: u64 = parents.values().sum();
        assert_eq!(
            kept + kept_parents + t.churn_evicted,
            2 * n,
            "each evicted entry held one mkdir"
        );
    }
}
