//! Rendering shared by every detector: aligned tables, bcc-style log2 histograms,
//! latency summaries from hdrhistogram with exact buckets beside, and human durations.
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// An aligned text table; columns whose cells are all numeric are right-aligned.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A report row defined once: serialized as is for JSON, and rendered to the text
/// table by `cells`, in the order of `HEADER`.
pub trait Row: serde::Serialize {
    const HEADER: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

impl Table {
    /// The text table of `rows`.
    pub fn of<R: Row>(rows: &[R]) -> Self {
        let mut t = Table::new(R::HEADER);
        for r in rows {
            t.row(r.cells());
        }
        t
    }

    pub fn new<S: AsRef<str>>(headers: &[S]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.as_ref().to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        let mut numeric = vec![true; n];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
                if !is_numeric(c) {
                    numeric[i] = false;
                }
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String], header: bool| {
            let mut l = String::new();
            for i in 0..n {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width[i] - c.chars().count();
                let last = i + 1 == n;
                if numeric[i] && (!header || !self.rows.is_empty()) {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(c);
                } else {
                    l.push_str(c);
                    if !last {
                        l.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    l.push_str("  ");
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut out, &self.headers, true);
        for r in &self.rows {
            line(&mut out, r, false);
        }
        out
    }
}

fn is_numeric(s: &str) -> bool {
    let s = s.trim_start_matches(['>', '<', '=', '~']);
    !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '-')
        && s.chars()
            .all(|c| c.is_ascii_digit() || ".-%smhdµuk".contains(c))
}

/// count/p50/p90/p99/max of a histogram (all 0 when empty), in the histogram's unit;
/// with [`Summary::with`], also the exact `sum_s` and `buckets` of [`Buckets`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Exact>,
}

/// A latency's exact samples at fixed upper bounds, as reports carry them:
/// `"sum_s": <seconds>, "buckets": [{"le_s": <bound>, "count": <samples at most
/// bound>}, ...]`, cumulative, the same bounds in every report; the summary's `count`
/// is the +Inf bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exact {
    pub sum_s: f64,
    pub buckets: Vec<Le>,
}

/// Samples at most `le_s` seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Le {
    pub le_s: f64,
    pub count: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            buckets: None,
        }
    }

    /// The same summary with the exact buckets and sum of the same samples.
    pub fn with(self, b: &Buckets) -> Self {
        Self {
            buckets: Some(b.exact()),
            ..self
        }
    }
}

/// A latency counted into fixed buckets, as a Prometheus histogram is: how many samples
/// were at most each upper bound (seconds, ascending; +Inf is the count), and their
/// exact sum. Kept next to the hdrhistogram where the value is recorded, because
/// hdrhistogram rounds values to 3 digits (a sample just above a bound could count
/// under it) and keeps no sum.
///
/// Reports carry it as [`Exact`] (flattened into a latency summary).
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    bounds: &'static [f64],
    /// counts[i]: samples in (bounds[i-1], bounds[i]]; the last, above every bound.
    counts: Vec<u64>,
    sum_ns: u128,
}

impl Buckets {
    /// No samples yet, with these upper bounds (seconds, ascending, whole nanoseconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_ns: 0,
        }
    }

    /// The first bucket whose bound is not below `ns` (bounds are whole nanoseconds).
    fn slot(&self, ns: u64) -> usize {
        self.bounds.partition_point(|&b| bound_ns(b) < ns)
    }

    /// One sample of `ns` nanoseconds: a sample exactly on a bound counts under it.
    pub fn record_ns(&mut self, ns: u64) {
        let i = self.slot(ns);
        self.counts[i] += 1;
        self.sum_ns += u128::from(ns);
    }

    /// `n` samples known only to lie at or below `hi_ns` (and above the previous
    /// bucket's: one bucket of a histogram aggregated in the kernel). They count under
    /// the first bound at or above `hi_ns`, so a sample never counts under a bound it
    /// may exceed; bounds chosen on the kernel's bucket edges keep them exact. Their
    /// sum is added apart ([`Buckets::add_sum_ns`]).
    pub fn add_upto(&mut self, hi_ns: u64, n: u64) {
        let i = self.slot(hi_ns);
        self.counts[i] += n;
    }

    pub fn add_sum_ns(&mut self, ns: u128) {
        self.sum_ns += ns;
    }

    /// Adds the samples of `other` (the same bounds).
    pub fn merge(&mut self, other: &Buckets) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_s(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// Each bound with the samples at most it, ascending (cumulative; without +Inf).
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut seen = 0;
        self.bounds
            .iter()
            .zip(&self.counts)
            .map(|(&b, &c)| {
                seen += c;
                (b, seen)
            })
            .collect()
    }
}

/// A bound in seconds as whole nanoseconds.
fn bound_ns(s: f64) -> u64 {
    (s * 1e9).round() as u64
}

impl Buckets {
    /// The cumulative counts and the sum, as reports carry them.
    pub fn exact(&self) -> Exact {
        Exact {
            sum_s: self.sum_s(),
            buckets: (self.cumulative().into_iter())
                .map(|(le_s, count)| Le { le_s, count })
                .collect(),
        }
    }
}

/// A histogram with 3 significant digits over 1..=2^40, enough for ns to hours.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1 << 40, 3).expect("static histogram bounds are valid")
}

/// Records `v`, clamped into the histogram's range (no value is dropped).
pub fn record(h: &mut Histogram<u64>, v: u64) {
    let v = v.clamp(h.low(), h.high());
    // Cannot fail after the clamp.
    let _ = h.record(v);
}

/// bcc-style log2 histogram (`usecs : count distribution`), then p50/p90/p99/max.
pub fn log2_histogram(h: &Histogram<u64>, unit: &str) -> String {
    Log2::of(h).render(unit)
}

/// A histogram's log2 slots and its summary: what its bcc-style text shows, kept in a
/// report so the text is rendered from the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Log2 {
    /// Slot 0 holds 0, slot k >= 1 holds [2^(k-1), 2^k - 1].
    pub slots: Vec<u64>,
    pub summary: Summary,
}

impl Log2 {
    pub fn of(h: &Histogram<u64>) -> Self {
        let mut slots = vec![0u64; 64];
        for v in h.iter_recorded() {
            let value = h.lowest_equivalent(v.value_iterated_to());
            let slot = if value == 0 {
                0
            } else {
                64 - value.leading_zeros() as usize
            };
            slots[slot.min(63)] += v.count_at_value();
        }
        Log2 {
            slots,
            summary: Summary::of(h),
        }
    }

    /// The bcc-style text: the slots' lines, then count/p50/p90/p99/max.
    pub fn render(&self, unit: &str) -> String {
        let s = &self.summary;
        if s.count == 0 {
            return "     (no samples)\n".into();
        }
        let mut out = log2_rows(&self.slots, unit);
        let _ = writeln!(
            out,
            "     count {}  p50 {}  p90 {}  p99 {}  max {} ({unit})",
            s.count, s.p50, s.p90, s.p99, s.max
        );
        out
    }
}

/// The bucket lines of a bcc-style log2 histogram: slot 0 holds 0, slot k >= 1 holds
/// [2^(k-1), 2^k - 1] (for histograms aggregated in the kernel as well).
pub fn log2_rows(buckets: &[u64], unit: &str) -> String {
    let mut out = String::new();
    let first = buckets.iter().position(|&c| c > 0).unwrap_or(0);
    let last = buckets.iter().rposition(|&c| c > 0).unwrap_or(0);
    let max = buckets.iter().copied().max().unwrap_or(1).max(1);
    let _ = writeln!(out, "{:>24} : count    distribution", unit);
    for (slot, &count) in buckets.iter().enumerate().take(last + 1).skip(first) {
        let (lo, hi) = if slot == 0 {
            (0, 0)
        } else {
            (1u64 << (slot - 1), (1u64 << slot) - 1)
        };
        let stars = ((count as u128 * 40).div_ceil(max as u128)) as usize;
        let stars = if count == 0 { 0 } else { stars.max(1) };
        let _ = writeln!(
            out,
            "{:>10} -> {:<10} : {:<8} |{:<40}|",
            lo,
            hi,
            count,
            "*".repeat(stars)
        );
    }
    out
}

/// 1.5s, 3m12s, 2h05m, 3d04h; sub-second as ms.
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    if secs < 1.0 {
        return format!("{:.0}ms", secs * 1e3);
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    match s {
        0..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The first `n` characters of `s`, with "..." when it was longer.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n - 3).collect::<String>())
    }
}

/// Rounds to 3 decimals for JSON (no 0.30000000000000004 in reports).
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `serialize_with` for an f64 field kept exact for text but written rounded to 3
/// decimals in JSON, as [`round3`].
pub fn serialize_round3<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round3(*v))
}

/// [`serialize_round3`] for an optional f64 (None stays null).
pub fn serialize_round3_opt<S: serde::Serializer>(
    v: &Option<f64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&round3(*v)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_numbers_right() {
        let mut t = Table::new(&["PID", "COMM"]);
        t.row(vec!["7".into(), "init".into()]);
        t.row(vec!["1234".into(), "a".into()]);
        assert_eq!(t.render(), " PID  COMM\n   7  init\n1234  a\n");
    }

    #[test]
    fn log2_buckets_and_summary() {
        let mut h = new_histogram();
        for v in [1, 2, 3, 5, 6, 7, 100] {
            record(&mut h, v);
        }
        let text = log2_histogram(&h, "usecs");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("usecs : count"));
        assert!(lines[1].trim_start().starts_with("1 -> 1") && lines[1].contains(": 1 "));
        assert!(lines[2].trim_start().starts_with("2 -> 3") && lines[2].contains(": 2 "));
        assert!(lines[3].trim_start().starts_with("4 -> 7") && lines[3].contains(": 3 "));
        assert!(lines[3].contains(&format!("|{}|", "*".repeat(40))));
        assert!(text.contains("64 -> 127") && text.contains("max 100"));
        assert_eq!(Summary::of(&h).count, 7);
        assert_eq!(
            log2_histogram(&new_histogram(), "usecs").trim(),
            "(no samples)"
        );
    }

    const BOUNDS: &[f64] = &[1e-5, 1e-3, 0.5, 60.0];

    #[test]
    fn buckets_are_cumulative_and_monotone_and_a_bound_counts_under_itself() {
        let mut b = Buckets::new(BOUNDS);
        // 10 us exactly (on the first bound), 10.001 us, 1 ms exactly, 2 s, 2 h.
        for ns in [10_000, 10_001, 1_000_000, 2_000_000_000, 7_200_000_000_000] {
            b.record_ns(ns);
        }
        assert_eq!(
            b.cumulative(),
            vec![(1e-5, 1), (1e-3, 3), (0.5, 3), (60.0, 4)]
        );
        let c: Vec<u64> = b.cumulative().iter().map(|x| x.1).collect();
        assert!(c.windows(2).all(|w| w[0] <= w[1]));
        assert!(*c.last().unwrap() <= b.count());
        assert_eq!(b.count(), 5);
        // 0 ns counts under the lowest bound.
        b.record_ns(0);
        assert_eq!(b.cumulative()[0], (1e-5, 2));
    }

    #[test]
    fn buckets_keep_the_exact_sum() {
        let mut b = Buckets::new(BOUNDS);
        assert_eq!(b.sum_s(), 0.0);
        for ns in [1, 10_000, 250_000_000, 3_000_000_000] {
            b.record_ns(ns);
        }
        assert_eq!(b.sum_s(), 3.250010001);
        let mut m = Buckets::new(BOUNDS);
        m.record_ns(500_000_000);
        m.merge(&b);
        assert_eq!(m.count(), 5);
        assert_eq!(m.sum_s(), 3.750010001);
        assert_eq!(m.cumulative()[2], (0.5, 4));
    }

    #[test]
    fn kernel_buckets_count_under_the_first_bound_they_cannot_exceed() {
        let mut b = Buckets::new(BOUNDS);
        // A kernel bucket up to 9_999 ns is under 10 us; one up to 10_000 too; one
        // that straddles 1 ms counts under the next bound.
        b.add_upto(9_999, 2);
        b.add_upto(10_000, 1);
        b.add_upto(1_015_807, 4);
        b.add_upto(u64::MAX, 1);
        b.add_sum_ns(42);
        assert_eq!(
            b.cumulative(),
            vec![(1e-5, 3), (1e-3, 3), (0.5, 7), (60.0, 7)]
        );
        assert_eq!((b.count(), b.sum_s()), (8, 42e-9));
    }

    #[test]
    fn a_summary_with_buckets_is_the_summary_plus_sum_and_cumulative_buckets() {
        let mut h = new_histogram();
        let mut b = Buckets::new(BOUNDS);
        for us in [5, 700] {
            record(&mut h, us);
            b.record_ns(us * 1000);
        }
        let j = serde_json::to_value(Summary::of(&h).with(&b)).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"count": 2, "p50": 5, "p90": 700, "p99": 700, "max": 700,
                "sum_s": 0.000705, "buckets": [{"le_s": 1e-5, "count": 1},
                {"le_s": 1e-3, "count": 2}, {"le_s": 0.5, "count": 2}, {"le_s": 60.0, "count": 2}]})
        );
        // No samples: every bucket 0, sum 0; without buckets, the summary alone.
        let j = serde_json::to_value(Summary::default().with(&Buckets::new(BOUNDS))).unwrap();
        assert_eq!(
            (j["count"].as_u64(), j["sum_s"].as_f64()),
            (Some(0), Some(0.0))
        );
        assert!(
            j["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["count"] == 0)
        );
        assert_eq!(
            serde_json::to_string(&Summary::default()).unwrap(),
            r#"{"count":0,"p50":0,"p90":0,"p99":0,"max":0}"#
        );
    }

    #[test]
    fn records_are_clamped_not_dropped() {
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(0.25), "250ms");
        assert_eq!(human_duration(5.0), "5.0s");
        assert_eq!(human_duration(192.0), "3m12s");
        assert_eq!(human_duration(7500.0), "2h05m");
    }

    #[test]
    fn serialize_round3_rounds_only_the_json() {
        #[derive(Serialize)]
        struct R {
            #[serde(serialize_with = "serialize_round3")]
            v: f64,
            #[serde(serialize_with = "serialize_round3_opt")]
            o: Option<f64>,
            #[serde(serialize_with = "serialize_round3_opt")]
            n: Option<f64>,
        }
        let r = R {
            v: 1.04951,
            o: Some(0.1 + 0.2),
            n: None,
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["v"], 1.05);
        assert_eq!(j["o"], 0.3);
        assert!(j["n"].is_null());
        assert_eq!(format!("{:.1}", r.v), "1.0");
    }
}
