//! Run-queue latency over the window: the kernel programs in tracer-ebpf/src/triage.rs
//! fill a log2 histogram (usecs) per CPU; it is read once, for the report.
use aya::maps::{MapData, PerCpuArray};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tracer_common::triage::RUNQ_SLOTS;

use super::metrics::RUNQ_BOUNDS;
use crate::{
    bpf::{Hook, Offset, Session, Spec},
    output::{self, Buckets},
};

pub const SPEC: Spec = Spec {
    detector: "triage",
    prefix: "triage",
    hooks: &[
        Hook {
            program: "triage_wakeup",
            category: "sched",
            name: "sched_wakeup",
            required: true,
            purpose: "see tasks woken up (put on a run queue)",
        },
        Hook {
            program: "triage_wakeup_new",
            category: "sched",
            name: "sched_wakeup_new",
            required: false,
            purpose: "see new tasks' first wait on a run queue",
        },
        Hook {
            program: "triage_switch",
            category: "sched",
            name: "sched_switch",
            required: true,
            purpose: "see tasks start running (and preempted tasks queued again)",
        },
    ],
    offsets: &[
        Offset {
            global: "TRIAGE_WAKEUP_PID",
            category: "sched",
            event: "sched_wakeup",
            field: "pid",
        },
        Offset {
            global: "TRIAGE_WAKEUP_NEW_PID",
            category: "sched",
            event: "sched_wakeup_new",
            field: "pid",
        },
        Offset {
            global: "TRIAGE_SWITCH_PREV_PID",
            category: "sched",
            event: "sched_switch",
            field: "prev_pid",
        },
        Offset {
            global: "TRIAGE_SWITCH_PREV_STATE",
            category: "sched",
            event: "sched_switch",
            field: "prev_state",
        },
        Offset {
            global: "TRIAGE_SWITCH_NEXT_PID",
            category: "sched",
            event: "sched_switch",
            field: "next_pid",
        },
    ],
    // Nothing is sent per event; the smallest ring the loader accepts.
    ring_bytes: 4096,
    kinds: &[],
};

/// The run-queue maps of the loaded object (the run's session detaches the programs).
pub struct Runq {
    hist: PerCpuArray<MapData, u64>,
    max: PerCpuArray<MapData, u64>,
    sum: PerCpuArray<MapData, u64>,
}

impl Runq {
    /// Takes the maps, or says why there are none (the run's load failed or a map is
    /// missing).
    pub fn take(session: &mut Session) -> anyhow::Result<Runq> {
        Ok(Runq {
            hist: PerCpuArray::try_from(session.take_map("TRIAGE_RUNQ")?)?,
            max: PerCpuArray::try_from(session.take_map("TRIAGE_RUNQ_MAX")?)?,
            sum: PerCpuArray::try_from(session.take_map("TRIAGE_RUNQ_SUM")?)?,
        })
    }

    pub fn read(&mut self) -> Summary {
        let mut buckets = vec![0u64; RUNQ_SLOTS as usize];
        for (slot, b) in buckets.iter_mut().enumerate() {
            *b = self
                .hist
                .get(&(slot as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
        }
        let max = self
            .max
            .get(&0, 0)
            .map(|v| v.iter().copied().max().unwrap_or(0))
            .unwrap_or(0);
        let sum_ns = (self.sum.get(&0, 0))
            .map(|v| v.iter().map(|&x| u128::from(x)).sum())
            .unwrap_or(0);
        Summary {
            buckets,
            max,
            sum_ns,
        }
    }
}

/// The histogram read from the kernel.
pub struct Summary {
    pub buckets: Vec<u64>,
    /// Exact largest latency (usecs).
    pub max: u64,
    /// Exact sum of the latencies (ns).
    pub sum_ns: u128,
}

/// The run-queue latency as the report carries it (`runqueue_latency_us`), usecs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    /// p50/p90/p99 are upper bounds of the log2 bucket the quantile falls in
    /// (capped at the exact max), as the kernel keeps only the buckets.
    pub resolution: Cow<'static, str>,
    /// The Prometheus histogram's buckets and exact sum.
    #[serde(flatten)]
    pub prom: crate::output::Exact,
}

impl Summary {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Upper bound of the bucket holding quantile `q` (capped at the exact max).
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (slot, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let hi = if slot == 0 { 0 } else { (1u64 << slot) - 1 };
                return hi.min(self.max);
            }
        }
        self.max
    }

    pub fn quantiles(&self) -> Quantiles {
        Quantiles {
            count: self.count(),
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            max: self.max,
            resolution: "log2 bucket upper bound".into(),
            prom: self.prom().exact(),
        }
    }

    /// The slots in the buckets of RUNQ_BOUNDS. Slot 0 holds latencies under 1 us,
    /// slot k >= 1 those of [2^(k-1), 2^k) us (the kernel truncates to whole us); the
    /// last also every longer one.
    pub fn prom(&self) -> Buckets {
        let mut b = Buckets::new(RUNQ_BOUNDS);
        let last = self.buckets.len().saturating_sub(1);
        for (slot, &n) in self.buckets.iter().enumerate() {
            let hi_ns = match slot {
                _ if slot == last => u64::MAX,
                0 => 999,
                k => (1u64 << k) * 1000 - 1,
            };
            b.add_upto(hi_ns, n);
        }
        b.add_sum_ns(self.sum_ns);
        b
    }
}

impl Quantiles {
    /// The bcc-style text: the log2 `slots` the kernel counted, then the quantiles.
    pub fn text(&self, slots: &[u64]) -> String {
        if self.count == 0 {
            return "     (no samples)\n".into();
        }
        format!(
            "{}     count {}  p50 <={}  p90 <={}  p99 <={}  max {} (usecs)\n",
            output::log2_rows(slots, "usecs"),
            self.count,
            self.p50,
            self.p90,
            self.p99,
            self.max
        )
    }

    /// The latency as a summary with its exact buckets, for the histogram metric.
    pub fn summary(&self) -> output::Summary {
        output::Summary {
            count: self.count,
            p50: self.p50,
            p90: self.p90,
            p99: self.p99,
            max: self.max,
            buckets: Some(self.prom.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds_capped_at_max() {
        let mut buckets = vec![0u64; 64];
        buckets[3] = 98; // 4..7 us
        buckets[11] = 2; // 1024..2047 us
        let s = Summary {
            buckets,
            max: 1500,
            sum_ns: 0,
        };
        assert_eq!(s.count(), 100);
        assert_eq!(s.quantile(0.5), 7);
        assert_eq!(s.quantile(0.98), 7);
        assert_eq!(s.quantile(0.99), 1500);
        assert!(s.quantiles().text(&s.buckets).contains("1024 -> 2047"));
        let empty = Summary {
            buckets: vec![0; 64],
            max: 0,
            sum_ns: 0,
        };
        assert_eq!(empty.quantile(0.99), 0);
        assert!(empty.prom().cumulative().iter().all(|b| b.1 == 0));
    }

    #[test]
    fn slots_count_under_the_power_of_2_us_bounds_exactly() {
        let mut buckets = vec![0u64; 64];
        buckets[0] = 1; // < 1 us
        buckets[1] = 2; // 1 us
        buckets[3] = 3; // 4..7 us
        buckets[11] = 4; // 1024..2047 us
        buckets[63] = 5; // beyond
        let s = Summary {
            buckets,
            max: u64::MAX,
            sum_ns: 12_345,
        };
        let b = s.prom();
        let c = b.cumulative();
        assert_eq!(c[0], (1e-6, 1), "slot 1 (1..2 us) may exceed 1 us");
        assert_eq!(c[1], (4e-6, 3));
        assert_eq!(c[2], (16e-6, 6));
        assert_eq!(c[5], (0.001_024, 6));
        assert_eq!(c[6], (0.004_096, 10));
        assert_eq!(c.last().unwrap().1, 10);
        assert_eq!((b.count(), b.sum_s()), (15, 12_345e-9));
        // Every bound is a slot edge: 2^k us.
        for &le in RUNQ_BOUNDS {
            let us = (le * 1e6).round() as u64;
            assert!(us.is_power_of_two(), "{le}");
        }
    }
}
