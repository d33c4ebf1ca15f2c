//! The census of memory charged to memory cgroups, by kind: one pass over
//! /proc/kpagecgroup (u64 per page frame: the inode number of the memcg the page is
//! charged to) and /proc/kpageflags (u64 per page frame: KPF_* flags), read in 1 MiB
//! chunks side by side, never one frame at a time.
//!
//! What the kernel says for a page charged to a DYING memcg (measured on 6.18, and the
//! code of page_cgroup_ino() since 4.3): not the dying memcg's inode but that of its
//! closest online ancestor. So the census counts, per live memcg, what is charged to it
//! and to its dying descendants; [`super::pinned`] takes off what the live memcg charges
//! itself (cgroup v1 says that in memory.stat) and shares the rest among the dying
//! descendants it knows.
//!
//! The census runs on a thread of its own at idle priority (nice 19, idle I/O class),
//! off the async runtime, bounded by [`CENSUS_TIME`]; its duration is in the report.
use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::FileExt,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::output::serialize_round3;

/// Bytes read from each file per chunk (131,072 page frames).
pub const CHUNK: usize = 1 << 20;
/// The census stops after this long and says it is incomplete (at idle priority on a
/// host whose CPUs are busy, it gets little CPU time).
pub const CENSUS_TIME: Duration = Duration::from_secs(60);
/// A final report waits this long at most for the running census (on a busy host an
/// idle-priority census can take a minute); then the latest finished one serves.
pub const FINAL_WAIT: Duration = Duration::from_secs(5);
const PAGE: u64 = super::pagecache::PAGE;

// KPF_* bits (include/uapi/linux/kernel-page-flags.h).
const KPF_UPTODATE: u64 = 1 << 3;
const KPF_LRU: u64 = 1 << 5;
const KPF_SLAB: u64 = 1 << 7;
const KPF_ANON: u64 = 1 << 12;
const KPF_SWAPBACKED: u64 = 1 << 14;

/// Memory by kind, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kinds {
    /// File page cache (not shmem).
    pub file: u64,
    /// shmem and tmpfs pages (swap-backed, not anonymous).
    pub shmem: u64,
    /// Anonymous pages.
    pub anon: u64,
    /// Slab pages the census saw charged (kernel objects are charged through object
    /// cgroups, which the kernel moves to the parent at removal: usually 0).
    pub slab: u64,
    /// Other kernel pages charged (page tables, vmalloc, pipe buffers ...).
    pub kernel: u64,
}

impl Kinds {
    pub fn total(&self) -> u64 {
        self.file + self.shmem + self.anon + self.slab + self.kernel
    }

    /// `self - other`, kind by kind, never below 0.
    pub fn minus(&self, o: &Kinds) -> Kinds {
        Kinds {
            file: self.file.saturating_sub(o.file),
            shmem: self.shmem.saturating_sub(o.shmem),
            anon: self.anon.saturating_sub(o.anon),
            slab: self.slab.saturating_sub(o.slab),
            kernel: self.kernel.saturating_sub(o.kernel),
        }
    }

    pub fn add(&mut self, o: &Kinds) {
        self.file += o.file;
        self.shmem += o.shmem;
        self.anon += o.anon;
        self.slab += o.slab;
        self.kernel += o.kernel;
    }

    /// (kind, bytes) of the kinds that can pin a dying memcg, for metrics labels.
    pub fn each(&self) -> [(&'static str, u64); 3] {
        [
            ("file", self.file),
            ("shmem", self.shmem),
            ("anon", self.anon),
        ]
    }

    /// The kind of one page frame from its KPF_* flags.
    fn count(&mut self, flags: u64) {
        let slot = if flags & KPF_SLAB != 0 {
            &mut self.slab
        } else if flags & KPF_ANON != 0 {
            &mut self.anon
        } else if flags & KPF_SWAPBACKED != 0 {
            &mut self.shmem
        } else if flags & (KPF_LRU | KPF_UPTODATE) != 0 {
            &mut self.file
        } else {
            &mut self.kernel
        };
        *slot += PAGE;
    }
}

/// How the census went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CensusRun {
    /// Wall time of the pass, milliseconds.
    #[serde(serialize_with = "serialize_round3")]
    pub took_ms: f64,
    /// Page frames read.
    pub frames: u64,
    /// Frames charged to some memcg.
    pub charged_frames: u64,
    /// False when it stopped at its time bound ([`CENSUS_TIME`]) before the last frame.
    pub complete: bool,
    /// Whether the idle priority could be set (nice 19, idle I/O class).
    pub idle_priority: bool,
    /// Seconds between its end and the report.
    #[serde(serialize_with = "serialize_round3")]
    pub age_s: f64,
}

/// Per memcg inode (as the kernel reports it: dying ones under their closest online
/// ancestor), the bytes by kind.
#[derive(Clone)]
pub struct Census {
    pub run: CensusRun,
    pub by_memcg: HashMap<u64, Kinds>,
}

/// Takes censuses on a thread of its own at idle priority, one at a time, so that an
/// interval report never waits for one.
#[derive(Default)]
pub struct Worker {
    running: Option<mpsc::Receiver<Result<Census, String>>>,
    /// The latest finished census and when it finished.
    last: Option<(Instant, Census)>,
}

impl Worker {
    /// Starts a census now (at attach, so that the first interval report has one).
    pub fn start(&mut self) -> Result<()> {
        if self.running.is_none() {
            self.running = Some(spawn()?);
        }
        Ok(())
    }

    /// The latest finished census (its age set); starts a new one when none runs and
    /// the latest is older than `every`. A final report waits for a census started no
    /// earlier than the last period (a fresh one when none runs); an interval report
    /// never waits, and says so while the first one runs.
    pub fn latest(&mut self, every: Duration, final_: bool) -> Result<Census> {
        self.collect(false);
        let stale = self
            .last
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= every);
        if self.running.is_none() && (stale || final_) {
            self.start()?;
        }
        if final_ {
            self.collect(true);
        }
        // (An interval report takes what has finished; see `collect`.)
        let Some((at, c)) = &self.last else {
            bail!("the first census of /proc/kpagecgroup is still running")
        };
        let mut c = c.clone();
        c.run.age_s = at.elapsed().as_secs_f64();
        Ok(c)
    }

    /// Takes the running census' result if it is there (`wait`: waits for it).
    fn collect(&mut self, wait: bool) {
        let Some(rx) = &self.running else { return };
        let got = if wait {
            rx.recv_timeout(FINAL_WAIT).map_err(|_| ())
        } else {
            rx.try_recv().map_err(|_| ())
        };
        match got {
            Ok(r) => {
                self.running = None;
                match r {
                    Ok(c) => self.last = Some((Instant::now(), c)),
                    Err(e) => log::warn!("memcg census: {e}"),
                }
            }
            // Still running (a final report gave up waiting: the latest finished one
            // serves), or its thread is gone: start another next time.
            Err(()) if matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty)) => {}
            Err(()) => self.running = None,
        }
    }
}

/// Starts one census on a thread of its own at idle priority.
fn spawn() -> Result<mpsc::Receiver<Result<Census, String>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("memcg-census".into())
        .spawn(move || {
            let idle = idle_priority();
            let r = census_here(CENSUS_TIME).map(|mut c| {
                c.run.idle_priority = idle;
                c
            });
            let _ = tx.send(r.map_err(|e| format!("{e:#}")));
        })
        .context("starting the memcg census thread")?;
    Ok(rx)
}

/// nice 19 and the idle I/O class for the calling thread only (Linux applies both per
/// thread); true when both were set.
fn idle_priority() -> bool {
    // SAFETY: plain syscalls on the calling thread's id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let nice = libc::setpriority(libc::PRIO_PROCESS, tid, 19) == 0;
        // IOPRIO_WHO_PROCESS = 1, IOPRIO_CLASS_IDLE = 3 << IOPRIO_CLASS_SHIFT (13).
        let io = libc::syscall(libc::SYS_ioprio_set, 1, tid, 3 << 13) == 0;
        nice && io
    }
}

/// The pass itself, on the calling thread, for at most `limit`.
pub fn census_here(limit: Duration) -> Result<Census> {
    let open = |p: &str| {
        File::open(p).with_context(|| {
            format!("opening {p} (needs root and a kernel with CONFIG_MEMCG and CONFIG_PROC_PAGE_MONITOR)")
        })
    };
    let (cgroups, flags) = (open("/proc/kpagecgroup")?, open("/proc/kpageflags")?);
    let start = Instant::now();
    let mut by_memcg: HashMap<u64, Kinds> = HashMap::new();
    let (mut cg_buf, mut fl_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut frames, mut charged, mut off) = (0u64, 0u64, 0u64);
    let mut complete = true;
    loop {
        if start.elapsed() > limit {
            complete = false;
            break;
        }
        let n = read_full(&cgroups, &mut cg_buf, off).context("reading /proc/kpagecgroup")?;
        let m = read_full(&flags, &mut fl_buf, off).context("reading /proc/kpageflags")?;
        let n = n.min(m) / 8 * 8;
        if n == 0 {
            break;
        }
        // The last memcg's entry, looked up again only when the memcg changes (runs of
        // frames of one memcg are common).
        let mut last: Option<(u64, Kinds)> = None;
        for (c, f) in cg_buf[..n].chunks_exact(8).zip(fl_buf[..n].chunks_exact(8)) {
            let ino = u64::from_le_bytes(c.try_into().unwrap_or_default());
            if ino == 0 {
                continue;
            }
            charged += 1;
            let fl = u64::from_le_bytes(f.try_into().unwrap_or_default());
            match &mut last {
                Some((i, k)) if *i == ino => k.count(fl),
                _ => {
                    if let Some((i, k)) = last.take() {
                        by_memcg.entry(i).or_default().add(&k);
                    }
                    let mut k = Kinds::default();
                    k.count(fl);
                    last = Some((ino, k));
                }
            }
        }
        if let Some((i, k)) = last {
            by_memcg.entry(i).or_default().add(&k);
        }
        frames += n as u64 / 8;
        off += n as u64;
    }
    Ok(Census {
        run: CensusRun {
            took_ms: start.elapsed().as_secs_f64() * 1e3,
            frames,
            charged_frames: charged,
            complete,
            idle_priority: false,
            age_s: 0.0,
        },
        by_memcg,
    })
}

/// pread until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_flags() {
        let mut k = Kinds::default();
        k.count(KPF_LRU | KPF_UPTODATE);
        k.count(KPF_LRU | KPF_SWAPBACKED);
        k.count(KPF_LRU | KPF_ANON | KPF_SWAPBACKED);
        k.count(KPF_SLAB);
        k.count(0);
        assert_eq!(
            k,
            Kinds {
                file: PAGE,
                shmem: PAGE,
                anon: PAGE,
                slab: PAGE,
                kernel: PAGE
            }
        );
        assert_eq!(
            k.minus(&Kinds {
                file: 9 * PAGE,
                ..k
            })
            .file,
            0
        );
    }
}
