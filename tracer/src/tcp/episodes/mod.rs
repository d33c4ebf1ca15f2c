//! Pressure episodes, from the 10 Hz samples of /proc (pages vs tcp_mem, the TcpExt
//! counters) and the kernel's refusal records, and the culprits of those refusals.
//!
//! The kernel enters TCP memory pressure when the pages TCP holds exceed tcp_mem's
//! "pressure" (counting TcpExt TCPMemoryPressures) and leaves it only once they fall
//! below "low" (adding the time spent to TCPMemoryPressuresChrono). An episode here
//! starts at the first of: a refusal record (exact kernel time), a sample above
//! "pressure", or a sample where TCPMemoryPressures grew; it ends at the sample where
//! Chrono grew or pages fell below "low" (so up to one sample period late).

use hdrhistogram::Histogram;

use super::metrics::EPISODE_BOUNDS;
use crate::{
    output::{self, Buckets},
    snapshot::tcpmem::TcpMem,
};

/// Episodes kept one by one for the report (its EPISODES table and JSON list). A host
/// that flaps in and out of pressure for weeks would otherwise keep every one; 1,000
/// is far more than a report can show and ~250 KiB. The oldest (ended) one goes first:
/// its duration stays in the duration summary and it stays in the count.
pub const EPISODES_CAPACITY: usize = 1_000;

/// One look at /proc.
#[derive(Clone, Debug)]
pub struct Sample {
    /// CLOCK_MONOTONIC ns, the clock of the kernel's records.
    pub t_ns: u64,
    pub pages: u64,
    pub tcp_mem: TcpMem,
    /// TcpExt TCPMemoryPressures and TCPMemoryPressuresChrono (ms), when the kernel has them.
    pub pressures: Option<u64>,
    pub chrono_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// A refused allocation: the kernel's own timestamp.
    Refusal,
    /// A sample saw pages above tcp_mem pressure.
    Pages,
    /// A sample saw TCPMemoryPressures grow.
    Counter,
    /// Pressure was on when the tracer started: the real start is earlier.
    Before,
    /// The kernel's own entry (fentry/kprobe on tcp_enter_memory_pressure).
    Edge,
}

impl Start {
    pub fn as_str(&self) -> &'static str {
        match self {
            Start::Refusal => "refusal",
            Start::Pages => "pages above pressure",
            Start::Counter => "TCPMemoryPressures",
            Start::Before => "already on at start",
            Start::Edge => "tcp_enter_memory_pressure",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Episode {
    pub start_ns: u64,
    pub started_by: Start,
    pub end_ns: Option<u64>,
    pub peak_pages: u64,
    pub refusals: u64,
    /// net.ipv4.tcp_mem when the episode started (operators change it mid-incident).
    pub tcp_mem: Option<TcpMem>,
    /// TCPMemoryPressures in the sample before the start, and Chrono in the first
    /// sample that saw the episode open (an earlier episode's leave may add to Chrono
    /// in the window where this one starts).
    chrono_at_start: Option<u64>,
    pressures_at_start: Option<u64>,
    /// A sample has seen this episode open.
    sampled: bool,
    /// `tcp_mem` came from a refusal record: the limits the kernel applied.
    limits_exact: bool,
    /// tcp_mem of the last sample before a kernel entry edge, for an episode that no
    /// sample saw open (a starved reader reads both edges late).
    tcp_mem_before: Option<TcpMem>,
    /// TCPMemoryPressuresChrono growth over the episode: the kernel's own time under
    /// pressure (ms, jiffies resolution).
    pub kernel_ms: Option<u64>,
    /// Times the kernel entered pressure during the episode (TCPMemoryPressures growth).
    pub kernel_entries: Option<u64>,
    /// The episode's end came from the kernel's leave edge (exact), not a sample.
    pub end_exact: bool,
    /// The task current at the kernel's entry edge and the socket whose allocation
    /// crossed the limit (fast paths only).
    pub entered_by: Option<Entry>,
}

/// Who was running when the kernel entered pressure, and whose socket it was.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The current task (a bystander when the allocation ran in softirq).
    pub pid: u32,
    pub comm: String,
    /// Cookie of the socket (0: the kprobe path has none).
    pub cookie: u64,
    /// Owner of that socket when it was looked up (sock_diag + /proc fds).
    pub socket_owner_pid: Option<u32>,
    pub socket_owner_comm: Option<String>,
}

impl Episode {
    /// Duration in ms (None while open).
    pub fn duration_ms(&self) -> Option<u64> {
        self.end_ns
            .map(|e| e.saturating_sub(self.start_ns) / 1_000_000)
    }
}

/// What a sample or record changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Edges {
    pub closed: bool,
    pub opened: bool,
}

#[derive(Default)]
pub struct Episodes {
    /// The latest EPISODES_CAPACITY episodes, oldest first.
    pub list: Vec<Episode>,
    /// Episodes dropped from `list` (the oldest), and their durations in ms.
    pub evicted: u64,
    evicted_ms: Option<Histogram<u64>>,
    /// The evicted episodes' durations at the metric's bounds.
    evicted_buckets: Option<Buckets>,
    last: Option<Sample>,
    pub peak_pages: u64,
    last_end_ns: u64,
    /// The kernel reports entry and leave (fast path): samples then only open an
    /// episode that was on before the tracer started, and never close one.
    pub kernel_edges: bool,
    /// An episode closed by a leave edge waits for the next sample's TcpExt counters.
    counters_pending: bool,
}

impl Episodes {
    pub fn with_kernel_edges(kernel_edges: bool) -> Episodes {
        Episodes {
            kernel_edges,
            ..Episodes::default()
        }
    }

    pub fn open(&self) -> Option<&Episode> {
        self.list.last().filter(|e| e.end_ns.is_none())
    }

    fn open_mut(&mut self) -> Option<&mut Episode> {
        self.list.last_mut().filter(|e| e.end_ns.is_none())
    }

    /// Every episode seen, the evicted ones included.
    pub fn total(&self) -> u64 {
        self.evicted + self.list.len() as u64
    }

    /// Durations in ms of every ended episode, the evicted ones included.
    pub fn durations_ms(&self) -> Histogram<u64> {
        let mut h = self
            .evicted_ms
            .clone()
            .unwrap_or_else(output::new_histogram);
        for d in self.list.iter().filter_map(Episode::duration_ms) {
            output::record(&mut h, d);
        }
        h
    }

    /// Durations of every ended episode, the evicted ones included, at the bounds of
    /// `tracer_tcp_pressure_episode_duration_seconds`.
    pub fn durations_buckets(&self) -> Buckets {
        let mut b = self
            .evicted_buckets
            .clone()
            .unwrap_or_else(|| Buckets::new(EPISODE_BOUNDS));
        for e in &self.list {
            if let Some(end) = e.end_ns {
                b.record_ns(end.saturating_sub(e.start_ns));
            }
        }
        b
    }

    fn start(&mut self, start_ns: u64, by: Start, peak: u64, tcp_mem: Option<TcpMem>) {
        if self.list.len() >= EPISODES_CAPACITY {
            // Only the last one can be open, and it is never the first of a full list.
            let old = self.list.remove(0);
            if let Some(d) = old.duration_ms() {
                output::record(self.evicted_ms.get_or_insert_with(output::new_histogram), d);
            }
            if let Some(end) = old.end_ns {
                self.evicted_buckets
                    .get_or_insert_with(|| Buckets::new(EPISODE_BOUNDS))
                    .record_ns(end.saturating_sub(old.start_ns));
            }
            self.evicted += 1;
        }
        let prev = self.last.as_ref();
        self.list.push(Episode {
            start_ns,
            started_by: by,
            end_ns: None,
            peak_pages: peak,
            refusals: 0,
            tcp_mem,
            chrono_at_start: None,
            pressures_at_start: prev.and_then(|s| s.pressures),
            sampled: false,
            limits_exact: false,
            tcp_mem_before: prev.map(|s| s.tcp_mem),
            kernel_ms: None,
            kernel_entries: None,
            end_exact: false,
            entered_by: None,
        });
    }

    /// A kernel edge at `ts_ns`: entry (`enter`) or leave. Returns what it changed.
    pub fn on_edge(&mut self, ts_ns: u64, enter: bool, who: Entry) -> Edges {
        if enter {
            if let Some(e) = self.open_mut() {
                // Sampling or a refusal record saw it first: the kernel's moment is exact.
                if ts_ns < e.start_ns && e.started_by != Start::Before {
                    e.start_ns = ts_ns;
                    e.started_by = Start::Edge;
                }
                e.entered_by.get_or_insert(who);
                return Edges::default();
            }
            if ts_ns <= self.last_end_ns {
                return Edges::default();
            }
            let pages = self.last.as_ref().map_or(0, |s| s.pages);
            self.start(ts_ns, Start::Edge, pages, None);
            if let Some(e) = self.list.last_mut() {
                e.entered_by = Some(who);
            }
            return Edges {
                closed: false,
                opened: true,
            };
        }
        let Some(e) = self.open_mut() else {
            return Edges::default();
        };
        e.end_ns = Some(ts_ns.max(e.start_ns));
        e.end_exact = true;
        self.last_end_ns = ts_ns;
        self.counters_pending = true;
        Edges {
            closed: true,
            opened: false,
        }
    }

    /// A refusal record (kernel time `ts_ns`, `allocated` pages, the limits the
    /// kernel applied when the record has them). Returns whether it opened an episode.
    pub fn on_refusal(&mut self, ts_ns: u64, allocated: u64, limits: Option<TcpMem>) -> Edges {
        self.peak_pages = self.peak_pages.max(allocated);
        if let Some(e) = self.open_mut() {
            e.refusals += 1;
            e.peak_pages = e.peak_pages.max(allocated);
            // The kernel's own limits beat a sample's (read when the reader got to it).
            if let (Some(l), false) = (limits, e.limits_exact) {
                e.tcp_mem = Some(l);
                e.limits_exact = true;
            }
            return Edges::default();
        }
        if ts_ns <= self.last_end_ns {
            // Read after the sample that closed its episode.
            if let Some(e) = self.list.last_mut() {
                e.refusals += 1;
            }
            return Edges::default();
        }
        self.start(ts_ns, Start::Refusal, allocated, limits);
        if let Some(e) = self.list.last_mut() {
            e.refusals = 1;
            e.limits_exact = limits.is_some();
        }
        Edges {
            closed: false,
            opened: true,
        }
    }

    /// The episode just opened by sample `s` has been seen by it.
    fn mark_sampled(&mut self, s: &Sample) {
        if let Some(e) = self.list.last_mut() {
            e.sampled = true;
            e.chrono_at_start = s.chrono_ms;
        }
    }

    /// The episode with the highest peak (its tcp_mem is what the advice is about).
    pub fn worst(&self) -> Option<&Episode> {
        self.list.iter().max_by_key(|e| e.peak_pages)
    }

    pub fn on_sample(&mut self, s: Sample) -> Edges {
        let mut edges = Edges::default();
        let first = self.last.is_none();
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        let prev_t = self.last.as_ref().map(|p| p.t_ns);
        let d_press = delta(self.last.as_ref().and_then(|p| p.pressures), s.pressures);
        let d_chrono = delta(self.last.as_ref().and_then(|p| p.chrono_ms), s.chrono_ms);
        self.peak_pages = self.peak_pages.max(s.pages);

        if self.kernel_edges {
            return self.on_sample_with_edges(s, first, d_chrono);
        }
        if let Some(e) = self.open_mut() {
            e.peak_pages = e.peak_pages.max(s.pages);
            // Chrono growth ends the episode only if a sample saw it open before: in
            // the window where it started, the growth may be an earlier leave.
            let left = (e.sampled && d_chrono > 0) || s.pages < s.tcp_mem.low;
            if left {
                e.end_ns = Some(s.t_ns);
                // No growth: the kernel has not left pressure yet (it does so on the
                // next socket-memory change), so it has no figure for this episode.
                e.kernel_ms = match (s.chrono_ms, e.chrono_at_start) {
                    (Some(a), Some(b)) => Some(a.saturating_sub(b)),
                    (Some(_), None) => Some(d_chrono),
                    _ => None,
                }
                .filter(|&ms| ms > 0);
                e.tcp_mem.get_or_insert(s.tcp_mem);
                e.kernel_entries = s
                    .pressures
                    .zip(e.pressures_at_start)
                    .map(|(a, b)| a.saturating_sub(b));
                self.last_end_ns = s.t_ns;
                edges.closed = true;
            } else if !e.sampled {
                e.sampled = true;
                e.chrono_at_start = s.chrono_ms;
                // A refusal opened it between samples: the limits are those now.
                e.tcp_mem.get_or_insert(s.tcp_mem);
            }
        }
        if self.open().is_none() {
            if s.pages > s.tcp_mem.pressure {
                let by = if first {
                    Start::Before
                } else if d_press > 0 {
                    Start::Counter
                } else {
                    Start::Pages
                };
                self.start(s.t_ns, by, s.pages, Some(s.tcp_mem));
                self.mark_sampled(&s);
                edges.opened = true;
            } else if d_press > 0 && !edges.closed {
                if d_chrono > 0 {
                    // Entered and left between two samples: the kernel timed it.
                    let start = s
                        .t_ns
                        .saturating_sub(d_chrono * 1_000_000)
                        .max(prev_t.unwrap_or(0));
                    self.start(start, Start::Counter, s.pages, Some(s.tcp_mem));
                    if let Some(e) = self.list.last_mut() {
                        e.end_ns = Some(start + d_chrono * 1_000_000);
                        e.kernel_ms = Some(d_chrono);
                        e.kernel_entries = Some(d_press);
                    }
                    self.last_end_ns = s.t_ns;
                } else {
                    // Entered and still on (pages between low and pressure).
                    self.start(s.t_ns, Start::Counter, s.pages, Some(s.tcp_mem));
                    self.mark_sampled(&s);
                    edges.opened = true;
                }
            }
        }
        self.last = Some(s);
        edges
    }
}

impl Episodes {
    /// Samples when the kernel reports the edges: peaks, the limits, the kernel's own
    /// figures for an episode a leave edge closed, and an episode already on at start.
    fn on_sample_with_edges(&mut self, s: Sample, first: bool, d_chrono: u64) -> Edges {
        let mut edges = Edges::default();
        if self.counters_pending {
            self.counters_pending = false;
            if let Some(e) = self.list.last_mut() {
                e.kernel_ms = match (s.chrono_ms, e.chrono_at_start) {
                    (Some(a), Some(b)) => Some(a.saturating_sub(b)),
                    (Some(_), None) => Some(d_chrono),
                    _ => None,
                }
                .filter(|&ms| ms > 0);
                e.kernel_entries = s
                    .pressures
                    .zip(e.pressures_at_start)
                    .map(|(a, b)| a.saturating_sub(b));
                // No sample saw it open: the limits before its start, not after its end.
                e.tcp_mem = e.tcp_mem.or(e.tcp_mem_before).or(Some(s.tcp_mem));
            }
        }
        if let Some(e) = self.open_mut() {
            e.peak_pages = e.peak_pages.max(s.pages);
            e.tcp_mem.get_or_insert(s.tcp_mem);
            if !e.sampled {
                e.sampled = true;
                e.chrono_at_start = s.chrono_ms;
            }
        } else if first && s.pages > s.tcp_mem.pressure {
            self.start(s.t_ns, Start::Before, s.pages, Some(s.tcp_mem));
            self.mark_sampled(&s);
            edges.opened = true;
        }
        self.last = Some(s);
        edges
    }
}

#[cfg(test)]
mod tests;
