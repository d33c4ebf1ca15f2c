//! Memory-cgroup socket pressure, told apart from global tcp_mem pressure.
//!
//! The kernel charges a socket's memory to its memcg before it looks at tcp_mem
//! (__sk_mem_raise_allocated): a charge the memcg refuses (its limit reached) is a
//! refusal (sock_exceed_buf_limit) whatever global TCP memory is. So a refusal while
//! global TCP memory is under tcp_mem's pressure threshold and no episode is open came
//! from a memcg, and the memcg of the refused socket's owner (or an ancestor) at its
//! limit is the evidence that names it. A refusal whose memcg is nowhere near a limit
//! is counted, never reported as memcg pressure (no false alarm from a memcg merely
//! having sockets).
//!
//! Where sockets are charged: cgroup2 charges them with all the memcg's memory
//! (memory.max, memory.current, memory.stat `sock`); a cgroup v1 memory controller
//! charges them only to memory.kmem.tcp.*, and only in memcgs whose
//! memory.kmem.tcp.limit_in_bytes was set; without kmem.tcp (or no memory controller)
//! memcg socket pressure cannot happen or be seen, and the report says so.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::rows::human_bytes;
use crate::{
    container::{self, Container},
    output::{Row, serialize_round3},
    snapshot::tcpmem::TcpMem,
};
use tracer_common::tcp::SK_MEM_SEND;

/// Memcgs followed; refusals in more are counted in `not_followed`.
pub const MEMCGS_CAPACITY: usize = 256;
/// Pids listed per memcg.
const PIDS_PER_MEMCG: usize = 8;
/// A memcg is at its limit when its usage is at least this share of it...
const NEAR_LIMIT_PCT: f64 = 90.0;
/// ... or within this of it (a receive charge of a loopback skb can be 64 KiB or more).
const NEAR_LIMIT_BYTES: u64 = 256 << 10;
/// v1's "no limit" (PAGE_COUNTER_MAX pages, rounded); anything above is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// How this host charges socket memory to memory cgroups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accounting {
    /// cgroup2: sockets are charged with all the memcg's memory (memory.max).
    #[default]
    Cgroup2,
    /// cgroup v1 memory controller: sockets are charged to memory.kmem.tcp.*, only in
    /// memcgs whose memory.kmem.tcp.limit_in_bytes is set.
    V1KmemTcp,
    /// cgroup v1 memory controller without memory.kmem.tcp: sockets are not charged to
    /// memcgs, so memcg socket pressure cannot be seen here.
    V1WithoutKmemTcp,
    /// No memory controller is mounted: no memcg socket pressure.
    NoMemoryController,
}

impl Accounting {
    pub fn as_str(self) -> &'static str {
        match self {
            Accounting::Cgroup2 => "cgroup2 (memory.max, memory.current, memory.stat sock)",
            Accounting::V1KmemTcp => {
                "cgroup v1 memory.kmem.tcp.* (sockets are charged only in memcgs with memory.kmem.tcp.limit_in_bytes set)"
            }
            Accounting::V1WithoutKmemTcp => {
                "cgroup v1 memory controller without memory.kmem.tcp: sockets are not charged to memcgs"
            }
            Accounting::NoMemoryController => "no memory controller mounted",
        }
    }
}

/// What the report says about memcg socket pressure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemcgPressure {
    pub accounting: Accounting,
    /// Why memcg socket pressure cannot be seen on this host; null where it can.
    pub cannot_see: Option<String>,
    /// Refusals while global TCP memory was under tcp_mem's pressure threshold and no
    /// episode was open (only a memcg refuses those).
    pub refusals_under_global: u64,
    /// Of those, refusals whose owner's memcg was not at a limit: not memcg pressure.
    pub not_at_limit: u64,
    /// Of those, refusals in memcgs beyond MEMCGS_CAPACITY.
    pub not_followed: u64,
    /// Memcgs whose own limit refused socket memory, most refusals first (--top).
    pub memcgs: Vec<MemcgRow>,
}

/// A memcg that refused socket memory at its limit: an element of
/// `memcg_pressure.memcgs`, a row of MEMCG SOCKET PRESSURE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemcgRow {
    /// The memcg at its limit, relative to its hierarchy's root (the owner's memcg
    /// or the ancestor whose limit was nearest).
    pub memcg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// Cgroup2 or V1KmemTcp.
    pub accounting: Accounting,
    /// memory.max (cgroup2) or memory.kmem.tcp.limit_in_bytes (v1).
    pub limit_bytes: u64,
    /// memory.current or memory.kmem.tcp.usage_in_bytes, at the refusal nearest the limit.
    pub usage_bytes: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub usage_pct: f64,
    /// memory.stat `sock` (cgroup2) or memory.kmem.tcp.usage_in_bytes (v1), then.
    pub sock_bytes: Option<u64>,
    /// memory.events `max` (cgroup2) or memory.kmem.tcp.failcnt (v1), then.
    pub limit_hits: Option<u64>,
    pub refusals: u64,
    pub send: u64,
    pub recv: u64,
    /// Looks at the sockets (each report's, or the episode's) that found it at its
    /// limit with socket memory making up at least a quarter of its usage: the
    /// kernel throttles its sockets (their send buffers cut, charges forced over the
    /// limit or refused) without always emitting a refusal.
    pub at_limit_looks: u64,
    /// Owners of its sockets that were refused or held memory (up to 8).
    pub pids: Vec<u32>,
    /// Global TCP memory at those refusals (the most, pages) and tcp_mem's pressure
    /// threshold then: under it, so not global pressure.
    pub global_pages_max: u64,
    pub global_pressure_pages: u64,
}

impl Row for MemcgRow {
    const HEADER: &'static [&'static str] = &[
        "MEMCG",
        "LIMIT",
        "USAGE",
        "SOCK",
        "REFUSALS",
        "KIND",
        "AT LIMIT",
        "GLOBAL PAGES",
        "PIDS",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            container::label(&self.memcg, self.container.as_ref()),
            human_bytes(self.limit_bytes),
            format!("{} ({:.0}%)", human_bytes(self.usage_bytes), self.usage_pct),
            self.sock_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
            self.refusals.to_string(),
            match (self.send > 0, self.recv > 0) {
                (true, true) => "send+recv",
                (false, true) => "recv",
                (true, false) => "send",
                _ => "-",
            }
            .into(),
            format!("{} looks", self.at_limit_looks),
            format!("{} < {}", self.global_pages_max, self.global_pressure_pages),
            (self.pids.iter().map(u32::to_string))
                .collect::<Vec<_>>()
                .join(","),
        ]
    }
}

/// Where the memory controller is.
#[derive(Clone, Debug, Default)]
struct Mounts {
    accounting: Accounting,
    /// The hierarchy root that has the memory controller.
    root: Option<PathBuf>,
}

impl Mounts {
    fn read() -> Mounts {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let (mut v2, mut v1) = (None, None);
        for line in info.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mut post = post.split(' ');
            let (fstype, opts) = (post.next().unwrap_or(""), post.nth(1).unwrap_or(""));
            let Some(mnt) = pre.split(' ').nth(4) else {
                continue;
            };
            if fstype == "cgroup2" && v2.is_none() {
                v2 = Some(PathBuf::from(mnt));
            } else if fstype == "cgroup" && opts.split(',').any(|o| o == "memory") {
                v1 = Some(PathBuf::from(mnt));
            }
        }
        let v2_memory = v2.as_ref().is_some_and(|m| {
            fs::read_to_string(m.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        match (v2, v1) {
            (Some(m), _) if v2_memory => Mounts {
                accounting: Accounting::Cgroup2,
                root: Some(m),
            },
            (_, Some(m)) => Mounts {
                accounting: if m.join("memory.kmem.tcp.limit_in_bytes").exists() {
                    Accounting::V1KmemTcp
                } else {
                    Accounting::V1WithoutKmemTcp
                },
                root: Some(m),
            },
            _ => Mounts::default().with(Accounting::NoMemoryController),
        }
    }

    fn with(mut self, a: Accounting) -> Mounts {
        self.accounting = a;
        self
    }

    /// The memcg directory of `pid` in the memory hierarchy.
    fn memcg_of(&self, pid: u32) -> Option<PathBuf> {
        let root = self.root.as_ref()?;
        let groups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let v2 = self.accounting == Accounting::Cgroup2;
        groups.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            let ours = if v2 {
                ctl.is_empty()
            } else {
                ctl.split(',').any(|c| c == "memory")
            };
            ours.then(|| root.join(path.trim_start_matches('/')))
        })
    }
}

/// One memcg's reading at a refusal.
#[derive(Clone, Debug, Default, PartialEq)]
struct Reading {
    limit: u64,
    usage: u64,
    sock: Option<u64>,
    hits: Option<u64>,
}

impl Reading {
    fn headroom(&self) -> u64 {
        self.limit.saturating_sub(self.usage)
    }

    fn pct(&self) -> f64 {
        crate::snapshot::pct(self.usage, self.limit)
    }

    /// At its limit: the evidence that the memcg, not tcp_mem, refused.
    fn at_limit(&self) -> bool {
        self.pct() >= NEAR_LIMIT_PCT || self.headroom() <= NEAR_LIMIT_BYTES
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn keyed(p: &Path, key: &str) -> Option<u64> {
    let s = fs::read_to_string(p).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The limit and usage of the memcg at `dir`, when it has a limit.
fn reading(a: Accounting, dir: &Path) -> Option<Reading> {
    match a {
        Accounting::Cgroup2 => Some(Reading {
            // "max" (no limit) does not parse.
            limit: read_u64(&dir.join("memory.max"))?,
            usage: read_u64(&dir.join("memory.current"))?,
            sock: keyed(&dir.join("memory.stat"), "sock"),
            hits: keyed(&dir.join("memory.events"), "max"),
        }),
        Accounting::V1KmemTcp => {
            let limit = read_u64(&dir.join("memory.kmem.tcp.limit_in_bytes"))?;
            let usage = read_u64(&dir.join("memory.kmem.tcp.usage_in_bytes"))?;
            (limit < V1_UNLIMITED).then_some(Reading {
                limit,
                usage,
                sock: Some(usage),
                hits: read_u64(&dir.join("memory.kmem.tcp.failcnt")),
            })
        }
        _ => None,
    }
}

/// The memcg at `dir` or the ancestor (up to `root`) with the least headroom under
/// its limit.
fn tightest(a: Accounting, root: &Path, dir: &Path) -> Option<(PathBuf, Reading)> {
    let mut best: Option<(PathBuf, Reading)> = None;
    let mut d = Some(dir);
    while let Some(cur) = d.filter(|c| c.starts_with(root)) {
        if let Some(r) = reading(a, cur)
            && best
                .as_ref()
                .is_none_or(|(_, b)| r.headroom() < b.headroom())
        {
            best = Some((cur.to_path_buf(), r));
        }
        d = cur.parent();
    }
    best
}

/// One memcg's refusals so far.
#[derive(Clone, Debug, Default)]
struct Seen {
    worst: Reading,
    /// Looks at the sockets that found it at its limit with socket memory charged.
    looks: u64,
    send: u64,
    recv: u64,
    pids: Vec<u32>,
    global_pages_max: u64,
    global_pressure: u64,
}

/// A refusal to examine: owner (or current task), kind, global TCP pages then.
pub type Pending = (u32, u32, u64);

/// Follows refusals made under the global pressure threshold to their memcgs.
#[derive(Default)]
pub struct MemcgWatch {
    mounts: Mounts,
    seen: BTreeMap<String, Seen>,
    under_global: u64,
    not_at_limit: u64,
    not_followed: u64,
}

impl MemcgWatch {
    pub fn new() -> MemcgWatch {
        MemcgWatch {
            mounts: Mounts::read(),
            ..Default::default()
        }
    }

    /// Examines a batch of refusals, reading each memcg once. `tcp_mem` is in force
    /// now; `global_open` says a global episode is open (then nothing is memcg's).
    /// Returns whether any refusal was a memcg's at its limit.
    pub fn examine(&mut self, batch: &[Pending], tcp_mem: TcpMem, global_open: bool) -> bool {
        let a = self.mounts.accounting;
        let Some(root) = self.mounts.root.clone() else {
            return false;
        };
        let mut found = false;
        let mut of_pid: HashMap<u32, Option<(PathBuf, Reading)>> = HashMap::new();
        for &(pid, kind, allocated) in batch {
            if global_open || tcp_mem.pressure == 0 || allocated >= tcp_mem.pressure {
                continue;
            }
            self.under_global += 1;
            let tight = of_pid.entry(pid).or_insert_with(|| {
                let dir = self.mounts.memcg_of(pid)?;
                tightest(a, &root, &dir)
            });
            let Some((dir, r)) = tight.clone().filter(|(_, r)| r.at_limit()) else {
                self.not_at_limit += 1;
                continue;
            };
            let (dir, r) = (&dir, &r);
            let Some(s) = self.entry(&root, dir, r, pid, allocated, tcp_mem) else {
                continue;
            };
            if kind == SK_MEM_SEND {
                s.send += 1;
            } else {
                s.recv += 1;
            }
            found = true;
        }
        found
    }

    /// The memcg's record, updated with a reading at its limit; None (counted) when
    /// MEMCGS_CAPACITY memcgs are followed already.
    fn entry(
        &mut self,
        root: &Path,
        dir: &Path,
        r: &Reading,
        pid: u32,
        global_pages: u64,
        tcp_mem: TcpMem,
    ) -> Option<&mut Seen> {
        let rel = format!("/{}", dir.strip_prefix(root).unwrap_or(dir).display());
        if !self.seen.contains_key(&rel) && self.seen.len() >= MEMCGS_CAPACITY {
            self.not_followed += 1;
            return None;
        }
        let s = self.seen.entry(rel).or_default();
        if s.worst.limit == 0 || r.headroom() <= s.worst.headroom() {
            s.worst = r.clone();
        }
        if !s.pids.contains(&pid) && s.pids.len() < PIDS_PER_MEMCG {
            s.pids.push(pid);
        }
        s.global_pages_max = s.global_pages_max.max(global_pages);
        s.global_pressure = tcp_mem.pressure;
        Some(s)
    }

    /// Looks at the memcgs of the processes holding socket memory (`pids`, from a
    /// look at the sockets), while global TCP memory (`pages`) is under tcp_mem's
    /// pressure threshold and no episode is open: a memcg at its limit whose socket
    /// memory is at least a quarter of its usage (all of it for v1's kmem.tcp) has its
    /// sockets throttled by its own limit. Most of that throttling emits no refusal:
    /// a send over the limit has its send buffer cut to what it holds and waits, the
    /// first buffer of a queue and softirq receives are charged over the limit.
    /// Page cache at memory.max with a few sockets is not this.
    pub fn check_holders(&mut self, pids: &[u32], pages: u64, tcp_mem: TcpMem, global_open: bool) {
        let a = self.mounts.accounting;
        let Some(root) = self.mounts.root.clone() else {
            return;
        };
        if global_open || tcp_mem.pressure == 0 || pages >= tcp_mem.pressure {
            return;
        }
        let mut done: Vec<PathBuf> = Vec::new();
        for &pid in pids {
            let Some(dir) = self.mounts.memcg_of(pid) else {
                continue;
            };
            let Some((dir, r)) = tightest(a, &root, &dir) else {
                continue;
            };
            let sock_heavy = r.sock.is_some_and(|b| b.saturating_mul(4) >= r.usage);
            if !r.at_limit() || !sock_heavy {
                continue;
            }
            let first = !done.contains(&dir);
            if let Some(s) = self.entry(&root, &dir, &r, pid, pages, tcp_mem)
                && first
            {
                s.looks += 1;
                done.push(dir);
            }
        }
    }

    /// The report's section, the `top` memcgs with the most refusals.
    pub fn report(&self, top: usize) -> MemcgPressure {
        let a = self.mounts.accounting;
        let mut memcgs: Vec<MemcgRow> = (self.seen.iter())
            .map(|(path, s)| MemcgRow {
                memcg: path.clone(),
                container: container::of_cgroup(path).map(Container::named),
                accounting: a,
                limit_bytes: s.worst.limit,
                usage_bytes: s.worst.usage,
                usage_pct: s.worst.pct(),
                sock_bytes: s.worst.sock,
                limit_hits: s.worst.hits,
                refusals: s.send + s.recv,
                send: s.send,
                recv: s.recv,
                at_limit_looks: s.looks,
                pids: s.pids.clone(),
                global_pages_max: s.global_pages_max,
                global_pressure_pages: s.global_pressure,
            })
            .collect();
        memcgs.sort_by(|x, y| {
            (y.refusals, y.at_limit_looks)
                .cmp(&(x.refusals, x.at_limit_looks))
                .then(x.memcg.cmp(&y.memcg))
        });
        memcgs.truncate(top);
        MemcgPressure {
            accounting: a,
            cannot_see: match a {
                Accounting::V1WithoutKmemTcp | Accounting::NoMemoryController => Some(format!(
                    "memcg socket pressure cannot be seen here: {}",
                    a.as_str()
                )),
                _ => None,
            },
            refusals_under_global: self.under_global,
            not_at_limit: self.not_at_limit,
            not_followed: self.not_followed,
            memcgs,
        }
    }
}

/// The text section.
pub fn text(m: &MemcgPressure) -> String {
    let mut t = format!(
        "\nMEMCG SOCKET PRESSURE (a memory cgroup's own limit throttling its sockets while global TCP memory is under tcp_mem's pressure threshold; {})\n",
        m.accounting.as_str()
    );
    if let Some(why) = &m.cannot_see {
        t += &format!("  {why}\n");
    } else if m.memcgs.is_empty() {
        t += "  none: no memcg at its limit refused socket memory\n";
    } else {
        t += &crate::output::Table::of(&m.memcgs).render();
    }
    if m.not_at_limit > 0 {
        t += &format!(
            "  {} of {} refusals under the global threshold came from memcgs not at a limit (not called memcg pressure)\n",
            m.not_at_limit, m.refusals_under_global
        );
    }
    t
}

impl super::TcpPressure {
    /// Follows the refusals since the last call to their memcgs; true when a memcg at
    /// its limit refused.
    pub(super) fn flush_memcg(&mut self) -> bool {
        if self.memcg_batch.is_empty() {
            return false;
        }
        let batch = std::mem::take(&mut self.memcg_batch);
        let open = self.episodes.open().is_some();
        self.memcg.examine(&batch, self.latest.tcp_mem, open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(limit: u64, usage: u64) -> Reading {
        Reading {
            limit,
            usage,
            ..Default::default()
        }
    }

    #[test]
    fn at_limit_is_near_the_limit_only() {
        assert!(r(100 << 20, 95 << 20).at_limit());
        assert!(r(1 << 20, 800 << 10).at_limit(), "within 256 KiB");
        assert!(!r(100 << 20, 50 << 20).at_limit());
    }

    #[test]
    fn refusals_over_the_global_threshold_or_in_an_episode_are_not_memcgs() {
        let mut w = MemcgWatch::new();
        let tm = TcpMem {
            low: 100,
            pressure: 200,
            high: 300,
        };
        let me = std::process::id();
        assert!(!w.examine(&[(me, SK_MEM_SEND, 250)], tm, false));
        assert!(!w.examine(&[(me, SK_MEM_SEND, 50)], tm, true));
        assert_eq!(w.report(10).refusals_under_global, 0);
        // Under the threshold: examined; this test's memcg has no limit near its usage.
        w.examine(&[(me, SK_MEM_SEND, 50)], tm, false);
        let rep = w.report(10);
        assert_eq!(
            rep.refusals_under_global,
            u64::from(w.mounts.root.is_some())
        );
        assert!(rep.memcgs.is_empty(), "{rep:?}");
    }
}
