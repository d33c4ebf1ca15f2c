//! The kernel's per-CPU counters of `tracer inodes`, summed over the CPUs, with a
//! caveat when a map is (nearly) full.
use aya::maps::{MapData, PerCpuHashMap};
use tracer_common::inodes::{DevCounts, ProcCounts};

/// Values that per-CPU maps hold once per CPU, and how to add them up. Allocation
/// counts wrap: the kernel takes a failed create back on whichever CPU the syscall
/// ended, so one CPU's value can be below zero and only the sum is meaningful.
pub(super) trait Sum: Copy + Default {
    fn add(&mut self, other: &Self);
}

impl Sum for u64 {
    fn add(&mut self, o: &u64) {
        *self = self.wrapping_add(*o);
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
        self.allocated = self.allocated.wrapping_add(o.allocated);
        self.freed += o.freed;
        // The comm is set on the CPU that first saw the process.
        if self.comm[0] == 0 {
            self.comm = o.comm;
        }
    }
}

/// Entries of a per-CPU kernel map summed over the CPUs, and a caveat when it is (nearly)
/// full (LRU eviction drops the least recently updated keys: their counts are missing).
pub(super) fn entries<K: aya::Pod, V: aya::Pod + Sum>(
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
