//! Memory cgroups kept dying for real, the way LinkedIn's hosts piled them up: a task in
//! each memcg writes page cache and exits, the memcg is removed (rmdir), and the cache
//! still charged to it keeps the kernel from releasing it until that cache is freed.
//! [`PinnedMemcgs`] sets this up on whichever hierarchy has the memory controller (the
//! v1 memory hierarchy on this project's hybrid host, cgroup2 on the VM kernels) and
//! undoes it on drop, also when the test failed half-way.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::*;

/// A cgroup directory a test made; removed (children first) on drop.
pub struct Cgroup {
    pub path: PathBuf,
    removed: bool,
}

impl Cgroup {
    pub fn create(path: impl Into<PathBuf>) -> Cgroup {
        let path = path.into();
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup {
            path,
            removed: false,
        }
    }

    /// rmdir from this (the test) process.
    pub fn remove(&mut self) {
        fs::remove_dir(&self.path).unwrap_or_else(|e| panic!("rmdir {}: {e}", self.path.display()));
        self.removed = true;
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.removed || !self.path.exists() {
            return;
        }
        // Children first (a failed test may leave some), then this one; retry briefly
        // while a just-exited task is still leaving it.
        if let Ok(rd) = fs::read_dir(&self.path) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    drop(Cgroup {
                        path: e.path(),
                        removed: false,
                    });
                }
            }
        }
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove test cgroup {}", self.path.display());
    }
}

/// Memory cgroups under a parent of the test's, removed while page cache charged to
/// them keeps them dying. Drop deletes the cache, empties the per-CPU caches that could
/// still reference them (so the kernel releases them), removes the parent, turns off
/// what the test turned on and unmounts the cache's tmpfs.
pub struct PinnedMemcgs {
    /// Where the memory controller is on this host.
    pub mem: MemoryHierarchy,
    /// The parent, as the tracer names it: relative to the hierarchy's root.
    pub rel_parent: String,
    /// The memcgs made dying so far, as the tracer names them, oldest first.
    pub dying: Vec<String>,
    /// Page cache each memcg gets, in bytes.
    bytes: u64,
    /// The cache files, one per memcg, until freed.
    files: Vec<PathBuf>,
    // Dropped in this order: children (a failed test may leave some), the parent, the
    // controllers the test enabled, the tmpfs.
    children: Vec<Cgroup>,
    parent: Cgroup,
    _parent_ctl: Option<SubtreeControl>,
    _root_ctl: Option<SubtreeControl>,
    cache: Tmpfs,
}

impl PinnedMemcgs {
    /// A parent memcg `/tracer-test-PID-TAG` on the memory hierarchy, ready for
    /// [`PinnedMemcgs::make_dying`]; each memcg will get `bytes` of page cache.
    pub fn new(tag: &str, bytes: u64) -> PinnedMemcgs {
        // The hierarchy that has the memory controller on this host: cgroup2 (the VM
        // kernels, every current distribution) or v1 (this project's hybrid CI machine).
        let mem = CgroupLayout::read().memory();
        // The cache files live on a tmpfs of the test's own: their pages are charged to
        // the cgroup that wrote them and freed with the files, no filesystem metadata
        // block (a directory or bitmap block first touched from inside a test cgroup) and
        // no cgroup writeback structure (cgroup2 ext4) can pin one afterwards. The size
        // is a limit, not an allocation.
        let cache = Tmpfs::new(&format!("memcg-{tag}"), "size=256m");
        let rel_parent = format!("/tracer-test-{}-{tag}", std::process::id());
        // cgroup2: the memory controller must be on in the root's subtree_control (the
        // root may hold processes) and in the parent's, which holds none ("no internal
        // processes": only leaves have tasks). Guards turn off what the test turned on.
        let root_ctl = mem.v2.then(|| SubtreeControl::enable(&mem.mount, "memory"));
        let parent = Cgroup::create(mem.mount.join(&rel_parent[1..]));
        let parent_ctl = mem
            .v2
            .then(|| SubtreeControl::enable(&parent.path, "memory"));
        // Page in sh and head (and their libraries) from here first: pages are charged
        // to the cgroup that reads them first, and a binary first read from inside a
        // test memcg would pin it after the test deletes its files.
        let st = Command::new("sh")
            .arg("-c")
            .arg("head -c 4096 /dev/zero > /dev/null")
            .status()
            .expect("running sh");
        assert!(st.success());
        PinnedMemcgs {
            mem,
            rel_parent,
            dying: Vec::new(),
            bytes,
            files: Vec::new(),
            children: Vec::new(),
            parent,
            _parent_ctl: parent_ctl,
            _root_ctl: root_ctl,
            cache,
        }
    }

    /// The parent memcg's directory.
    pub fn parent(&self) -> &Path {
        &self.parent.path
    }

    /// Makes `k` more memcgs dying: creates them (`c0`, `c1`, ... under the parent),
    /// has a process in each write the page cache and exit, and removes them, all from
    /// this process. Returns their paths as the tracer names them.
    pub fn make_dying(&mut self, k: usize) -> Vec<String> {
        let how = self.mem.describe();
        let first = self.dying.len();
        let mut made: Vec<Cgroup> = (first..first + k)
            .map(|i| Cgroup::create(self.parent.path.join(format!("c{i}"))))
            .collect();
        if self.mem.v2 {
            for c in &made {
                let ctl = fs::read_to_string(c.path.join("cgroup.controllers")).unwrap();
                assert!(
                    ctl.split_whitespace().any(|c| c == "memory"),
                    "{how}: {} has no memory controller: {ctl}",
                    c.path.display()
                );
            }
        }
        // In each memcg a child process writes the page cache to a file of ours,
        // charged to that memcg, and exits (so the memcg has no task left).
        for (i, cg) in (first..).zip(&made) {
            let file = self.cache.dir.join(format!("cache{i}"));
            self.files.push(file.clone());
            let st = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && head -c {} /dev/zero > {}",
                    cg.path.display(),
                    self.bytes,
                    file.display()
                ))
                .status()
                .expect("running sh");
            assert!(
                st.success(),
                "{how}: the cache writer failed in {}",
                cg.path.display()
            );
        }
        let paths: Vec<String> = (first..first + k)
            .map(|i| format!("{}/c{i}", self.rel_parent))
            .collect();
        for cg in &mut made {
            cg.remove();
        }
        self.children.extend(made);
        self.dying.extend(paths.iter().cloned());
        paths
    }

    /// Empties the per-CPU caches that can keep a dying memcg referenced after its
    /// pages are gone, for the test's parent cgroup only (nothing else on the host is
    /// touched):
    ///
    /// - Folios sit in per-CPU LRU-add batches (up to 15 per CPU) until that CPU drains
    ///   them; a folio truncated from the page cache while still in another CPU's batch
    ///   keeps its reference, hence its memcg charge, and the memcg stays dying until
    ///   that CPU adds more folios or drains. On an idle 2-core machine that can take
    ///   minutes: the one-in-three flake of the cgroups test, where one cgroup stayed
    ///   dying after its files were deleted.
    /// - The per-CPU charge stock keeps a css reference on the last memcg that charged
    ///   on that CPU; offlining drains it with a trylock that gives up when another
    ///   drain runs.
    ///
    /// v1: memory.force_empty runs lru_add_drain_all() and drain_all_stock() for this
    /// subtree, then reclaims what is reclaimable. cgroup2 has no force_empty:
    /// memory.reclaim drains the LRU batches of every CPU on its last retry (it returns
    /// EAGAIN when nothing was reclaimable). Neither frees tmpfs pages while their files
    /// exist (no swap here; with swap the swapped-out entries pin the memcg just the
    /// same), so this cannot release a memcg that page cache still pins.
    ///
    /// Returns what was written and the error, if any, for failure messages (e.g.
    /// memory.reclaim's EAGAIN when nothing is left to reclaim, which is expected).
    pub fn drain_per_cpu_caches(&self) -> String {
        let (file, value) = if self.mem.v2 {
            ("memory.reclaim", "64M")
        } else {
            ("memory.force_empty", "0")
        };
        match fs::write(self.parent.path.join(file), value) {
            Ok(()) => format!("{file} <- {value}: ok"),
            Err(e) => format!("{file} <- {value}: {e}"),
        }
    }

    /// What is still charged under the parent, for failure messages.
    pub fn charged(&self) -> String {
        let parent = &self.parent.path;
        let read =
            |f: &str| fs::read_to_string(parent.join(f)).unwrap_or_else(|e| format!("{f}: {e}"));
        let keys: &[&str] = if self.mem.v2 {
            &["anon", "file", "shmem", "kernel", "slab", "sock", "percpu"]
        } else {
            &[
                "total_cache",
                "total_rss",
                "total_shmem",
                "total_mapped_file",
                "total_unevictable",
            ]
        };
        let stat: Vec<String> = read("memory.stat")
            .lines()
            .filter(|l| keys.iter().any(|k| l.split(' ').next() == Some(*k)))
            .map(str::to_string)
            .collect();
        let usage = if self.mem.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        format!(
            "{usage} {} of {}; memory.stat: {}{}",
            read(usage).trim(),
            parent.display(),
            stat.join(", "),
            if self.mem.v2 {
                format!("; cgroup.stat: {}", read("cgroup.stat").replace('\n', " "))
            } else {
                String::new()
            }
        )
    }

    /// Deletes the cache files: nothing pins the dying memcgs any more but per-CPU
    /// caches (see [`PinnedMemcgs::drain_per_cpu_caches`]).
    pub fn free_cache(&mut self) {
        for f in self.files.drain(..) {
            fs::remove_file(&f).unwrap_or_else(|e| panic!("deleting {}: {e}", f.display()));
        }
    }

    /// Frees the cache and waits, at most `timeout`, until `released` says the kernel
    /// released every dying memcg (Ok) or panics with its last answer (Err), the
    /// per-CPU drains done and what is still charged. While waiting, the per-CPU caches
    /// are drained once a second (a targeted action on the test's parent).
    pub fn free_and_wait_released(
        &mut self,
        timeout: Duration,
        mut released: impl FnMut() -> Result<(), String>,
    ) {
        self.free_cache();
        let how = self.mem.describe();
        let deadline = Instant::now() + timeout;
        let mut drains = vec![self.drain_per_cpu_caches()];
        let mut next_drain = Instant::now() + Duration::from_secs(1);
        loop {
            let last = match released() {
                Ok(()) => return,
                Err(last) => last,
            };
            assert!(
                Instant::now() < deadline,
                "{how}: the {} dying memcgs were not released within {timeout:?} of deleting \
                 their cache; per-CPU drains: {drains:?}; still charged: {}; last seen: {last}",
                self.dying.len(),
                self.charged()
            );
            if Instant::now() >= next_drain {
                drains.push(self.drain_per_cpu_caches());
                next_drain = Instant::now() + Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Removes the parent now (its memcgs are removed already), failing the test when
    /// the kernel refuses.
    pub fn remove_parent(&mut self) {
        self.parent.remove();
    }
}

impl Drop for PinnedMemcgs {
    fn drop(&mut self) {
        // Free what still pins them and let the kernel release them: the cache, then
        // the per-CPU references (the parent must still exist for that).
        for f in self.files.drain(..) {
            let _ = fs::remove_file(&f);
        }
        if self.parent.path.exists() {
            let _ = self.drain_per_cpu_caches();
        }
    }
}
