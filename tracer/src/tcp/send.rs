//! Send latency: the kernel's log-linear histograms (split by the pressure flag) read
//! into the report's summaries, and the report's `send_latency_us` with its two
//! shapes, measured or not.
use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use tracer_common::tcp::{LAT_BUCKETS, lat_bucket, lat_range};

use super::{TcpPressure, metrics};
use crate::output::{self, Buckets, Exact, Log2, Summary, serialize_round3};

/// `send_latency_us`: the two summaries, or why sends are not timed on this kernel.
/// Both shapes start with `measured` (true, false).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SendLatency {
    Measured {
        measured: Is<true>,
        /// The hooks that time sends, in words.
        via: String,
        /// During pressure.
        pressure: LatencyUs,
        /// Outside pressure.
        normal: LatencyUs,
    },
    NotMeasured {
        measured: Is<false>,
        /// The caveat that says why (null when there is none).
        why: Option<String>,
    },
}

/// A boolean that is always `B`: tells the shapes of an untagged enum apart.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Is<const B: bool>;

impl<const B: bool> Serialize for Is<B> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(B)
    }
}

impl<'de, const B: bool> Deserialize<'de> for Is<B> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match bool::deserialize(d)? {
            b if b == B => Ok(Is),
            b => Err(D::Error::custom(format!("{b}, expected {B}"))),
        }
    }
}

/// A send latency summary in microseconds, with the exact sum and buckets (seconds)
/// of the Prometheus histogram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyUs {
    pub count: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub p50: f64,
    #[serde(serialize_with = "serialize_round3")]
    pub p90: f64,
    #[serde(serialize_with = "serialize_round3")]
    pub p99: f64,
    /// Exact (the kernel keeps the largest).
    #[serde(serialize_with = "serialize_round3")]
    pub max: f64,
    #[serde(flatten)]
    pub exact: Exact,
}

impl LatencyUs {
    /// A summary of `h` (ns) in usecs, with the buckets and exact sum.
    fn of((h, buckets): &(Histogram<u64>, Buckets), exact_max: u64) -> Self {
        // Quantiles at the bottom of hdrhistogram's equivalence range (its own
        // rounding is far finer than the kernel's 1/16 buckets), never above the exact
        // maximum.
        let q = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.lowest_equivalent(h.value_at_quantile(q)).min(exact_max) as f64 / 1e3
            }
        };
        LatencyUs {
            count: h.len(),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            max: exact_max as f64 / 1e3,
            exact: buckets.exact(),
        }
    }

    /// The count and buckets as a [`Summary`] (what a Prometheus histogram takes; the
    /// quantiles are not part of it).
    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count,
            buckets: Some(self.exact.clone()),
            ..Summary::default()
        }
    }
}

impl TcpPressure {
    /// `send_latency_us` and its histograms for the text: measured when a hook times
    /// sends, else the caveat that says why not.
    pub(super) fn send_latency(&self, caveats: &[String]) -> (SendLatency, SendLog2) {
        let Some(via) = self.send_path else {
            let why = caveats.iter().find(|c| c.starts_with("send latency"));
            let not = SendLatency::NotMeasured {
                measured: Is,
                why: why.cloned(),
            };
            return (not, SendLog2::default());
        };
        let [normal, pressure] = self.latency();
        let log2 = SendLog2 {
            pressure: us_log2(&pressure.0),
            normal: us_log2(&normal.0),
        };
        let measured = SendLatency::Measured {
            measured: Is,
            via: via.into(),
            pressure: LatencyUs::of(&pressure, self.send_max(1)),
            normal: LatencyUs::of(&normal, self.send_max(0)),
        };
        (measured, log2)
    }

    /// The exact largest send latency (ns) of half 0 (normal) or 1 (pressure).
    fn send_max(&self, half: u32) -> u64 {
        self.max
            .get(&half, 0)
            .map(|v| v.iter().copied().max().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Send latency histograms (ns) from the kernel's buckets, with the same counts in
    /// the Prometheus histogram's buckets and the exact sum: (normal, pressure).
    fn latency(&self) -> [(Histogram<u64>, Buckets); 2] {
        let new = || (output::new_histogram(), Buckets::new(metrics::SEND_BOUNDS));
        let mut out = [new(), new()];
        for (half, (h, prom)) in out.iter_mut().enumerate() {
            let sum: u128 = (self.sum.get(&(half as u32), 0))
                .map(|v| v.iter().map(|&x| u128::from(x)).sum())
                .unwrap_or(0);
            prom.add_sum_ns(sum);
            let max = self.send_max(half as u32);
            let base = half as u32 * LAT_BUCKETS;
            let max_bucket = lat_bucket(max);
            for b in 0..LAT_BUCKETS {
                let n: u64 = self
                    .hist
                    .get(&(base + b), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let (lo, hi) = lat_range(b);
                // The last bucket holds every longer latency too.
                prom.add_upto(if b == LAT_BUCKETS - 1 { u64::MAX } else { hi }, n);
                let mid = (lo + (hi - lo) / 2).clamp(h.low(), h.high());
                if b == max_bucket {
                    // One sample of the top bucket is the exact maximum.
                    let _ = h.record_n(mid.min(max), n - 1);
                    let _ = h.record(max.clamp(h.low(), h.high()));
                } else {
                    let _ = h.record_n(mid, n);
                }
            }
        }
        out
    }
}

/// The bcc-style histogram in usecs of a ns histogram.
fn us_log2(ns: &Histogram<u64>) -> Log2 {
    let mut us = output::new_histogram();
    for v in ns.iter_recorded() {
        let _ = us.record_n(
            (v.value_iterated_to() / 1000).clamp(us.low(), us.high()),
            v.count_at_value(),
        );
    }
    Log2::of(&us)
}

/// Send latency during and outside pressure as log2 histograms, for the text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SendLog2 {
    pub pressure: Log2,
    pub normal: Log2,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn latency_is_in_usecs_and_max_is_exact() {
        let mut h = output::new_histogram();
        h.record_n(10_000, 99).unwrap();
        h.record(250_000_000).unwrap();
        let mut b = Buckets::new(metrics::SEND_BOUNDS);
        // The kernel's buckets of the two latencies.
        b.add_upto(lat_range(lat_bucket(10_000)).1, 99);
        b.add_upto(lat_range(lat_bucket(250_000_123)).1, 1);
        b.add_sum_ns(99 * 10_000 + 250_000_123);
        let l = LatencyUs::of(&(h, b), 250_000_123);
        assert_eq!((l.count, l.p50, l.max), (100, 10.0, 250_000.123));
        assert_eq!(l.exact.sum_s, 0.250_990_123);
        // 10 us is under the bound 16.384 us, 250 ms under 268.435456 ms.
        let le = |s: f64| l.exact.buckets.iter().find(|b| b.le_s == s).unwrap().count;
        assert_eq!((le(4.096e-6), le(16.384e-6)), (0, 99));
        assert_eq!((le(0.067108864), le(0.268435456)), (99, 100));
        let j = serde_json::to_value(&l).unwrap();
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["count", "p50", "p90", "p99", "max", "sum_s", "buckets"]
        );
    }

    #[test]
    fn send_bounds_are_edges_of_the_kernels_buckets() {
        for &le in metrics::SEND_BOUNDS {
            let ns = (le * 1e9).round() as u64;
            assert_eq!(
                lat_range(lat_bucket(ns)).0,
                ns,
                "{le}: a bucket starts there"
            );
        }
    }

    #[test]
    fn not_measured_is_measured_false_and_why_and_reads_back_as_such() {
        let not = SendLatency::NotMeasured {
            measured: Is,
            why: Some("no hook".into()),
        };
        let j = serde_json::to_value(&not).unwrap();
        assert_eq!(j, json!({"measured": false, "why": "no hook"}));
        assert_eq!(serde_json::from_value::<SendLatency>(j).unwrap(), not);
        let none = json!({"measured": false, "why": null});
        let back: SendLatency = serde_json::from_value(none.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), none);
        // `measured: true` without the summaries reads as neither shape.
        for bad in [
            json!({"measured": true, "why": "x"}),
            json!({"measured": true}),
        ] {
            assert!(
                serde_json::from_value::<SendLatency>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
