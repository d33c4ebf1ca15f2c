//! Is a sampled count growing for real, or only moving? A pure judgement over a window
//! of samples, shared by the detectors that project or alert on growth (inode
//! exhaustion ETA, the pile of dying cgroups).
//!
//! A busy healthy host moves counts up and down all the time: temp files created and
//! deleted again, cgroup scopes removed and freed a moment later. One or two readings
//! cannot tell that from a leak. Growth counts as sustained only when
//! - there are at least [`MIN_SAMPLES`] samples spanning at least the required span
//!   (30 s by default), and
//! - the window, split into [`PARTS`] equal stretches of time, rises from each stretch
//!   to the next: each stretch's lowest sample is above the previous stretch's lowest,
//!   and the last stretch's lowest is above every sample of the first (the rise
//!   clears the noise).
//!
//! A burst that is undone again (created then deleted) never passes: the floor does not
//! rise. Random wobble around a level passes with a vanishing chance (every sample of
//! the last stretch above every sample of the first).
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::output::{human_duration, serialize_round3, serialize_round3_opt};

/// Samples needed before growth can be judged at all.
pub const MIN_SAMPLES: usize = 10;
/// The window is cut into this many stretches of time; growth must show in each step.
pub const PARTS: usize = 3;
/// Samples kept per series (a bound; at 1 sample/s more than any window needs).
pub const CAPACITY: usize = 4_096;

/// Timed samples of one count, oldest first, bounded.
#[derive(Clone, Debug, Default)]
pub struct Series {
    samples: VecDeque<(f64, f64)>,
}

impl Series {
    /// Adds a sample at `t` seconds (since the start); older than `keep_s` before it
    /// are dropped.
    pub fn push(&mut self, t: f64, v: f64, keep_s: f64) {
        if self.samples.back().is_some_and(|(last, _)| t <= *last) {
            return;
        }
        self.samples.push_back((t, v));
        while self.samples.len() > CAPACITY
            || self.samples.front().is_some_and(|(t0, _)| t - t0 > keep_s)
        {
            self.samples.pop_front();
        }
    }

    #[cfg(test)]
    pub fn samples(&self) -> impl Iterator<Item = &(f64, f64)> {
        self.samples.iter()
    }

    /// The samples within the last `span_s` seconds (the newest included).
    pub fn last(&self, span_s: f64) -> Vec<(f64, f64)> {
        let Some((t_end, _)) = self.samples.back() else {
            return Vec::new();
        };
        self.samples
            .iter()
            .filter(|(t, _)| t_end - t <= span_s)
            .copied()
            .collect()
    }
}

/// What the window shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Trend {
    /// Not enough evidence yet: fewer samples or a shorter span than required.
    TooFewSamples { samples: usize, span_s: f64 },
    /// Enough samples, but they do not rise stretch after stretch.
    NoSustainedGrowth { samples: usize, span_s: f64 },
    /// Sustained growth at `rate_per_s` (least-squares slope over the window).
    Growing {
        samples: usize,
        span_s: f64,
        rate_per_s: f64,
    },
}

impl Trend {
    pub fn rate(&self) -> Option<f64> {
        match self {
            Trend::Growing { rate_per_s, .. } => Some(*rate_per_s),
            _ => None,
        }
    }

    pub fn state(&self) -> &'static str {
        match self {
            Trend::TooFewSamples { .. } => "too_few_samples",
            Trend::NoSustainedGrowth { .. } => "no_sustained_growth",
            Trend::Growing { .. } => "growing",
        }
    }

    fn counts(&self) -> (usize, f64) {
        match self {
            Trend::TooFewSamples { samples, span_s }
            | Trend::NoSustainedGrowth { samples, span_s }
            | Trend::Growing {
                samples, span_s, ..
            } => (*samples, *span_s),
        }
    }

    /// One phrase for the text report, the same facts as [`Trend::report`].
    pub fn text(&self, need_span_s: f64) -> String {
        self.report(need_span_s).text(need_span_s)
    }

    /// The judgement and its evidence, with the rule that decided it.
    pub fn report(&self, need_span_s: f64) -> TrendReport {
        let (n, span) = self.counts();
        TrendReport {
            state: self.state().into(),
            growing: matches!(self, Trend::Growing { .. }),
            samples: n,
            span_s: span,
            rate_per_s: self.rate(),
            rule: rule(need_span_s),
        }
    }
}

/// A trend as reports carry it (`"trend"` objects).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrendReport {
    /// too_few_samples, no_sustained_growth or growing.
    pub state: String,
    pub growing: bool,
    pub samples: usize,
    #[serde(serialize_with = "serialize_round3")]
    pub span_s: f64,
    #[serde(serialize_with = "serialize_round3_opt")]
    pub rate_per_s: Option<f64>,
    pub rule: String,
}

impl TrendReport {
    /// One phrase for the text report; `need_span_s` is the span the rule asks for.
    pub fn text(&self, need_span_s: f64) -> String {
        let (n, span) = (self.samples, self.span_s);
        match (self.state.as_str(), self.rate_per_s) {
            ("growing", Some(rate)) => {
                format!("growing {rate:+.2}/s over {}", human_duration(span))
            }
            ("no_sustained_growth", _) => "no sustained growth".into(),
            _ => format!(
                "too few samples ({n} over {}; needs {MIN_SAMPLES} over {})",
                human_duration(span),
                human_duration(need_span_s)
            ),
        }
    }
}

/// The rule in words, as the reports state it.
pub fn rule(span_s: f64) -> String {
    format!(
        ">= {MIN_SAMPLES} samples over >= {}, rising in each of {PARTS} equal stretches \
         (each stretch's lowest sample above the previous one's, the last stretch's lowest \
         above the first stretch's highest)",
        human_duration(span_s)
    )
}

/// Judges the samples of the last `span_s * 2` seconds (the recent trend, not the
/// whole run) against the rule: at least MIN_SAMPLES over at least `span_s`.
pub fn judge(series: &Series, span_s: f64) -> Trend {
    judge_window(&series.last(span_s * 2.0), span_s)
}

/// [`judge`] on a window of (t, value), oldest first.
pub fn judge_window(w: &[(f64, f64)], span_s: f64) -> Trend {
    let samples = w.len();
    let span = match (w.first(), w.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0.0,
    };
    if samples < MIN_SAMPLES || span + 1e-9 < span_s {
        return Trend::TooFewSamples {
            samples,
            span_s: span,
        };
    }
    let t0 = w[0].0;
    let part = |t: f64| (((t - t0) / span * PARTS as f64) as usize).min(PARTS - 1);
    let mut lo = [f64::INFINITY; PARTS];
    let mut hi = [f64::NEG_INFINITY; PARTS];
    for &(t, v) in w {
        let p = part(t);
        lo[p] = lo[p].min(v);
        hi[p] = hi[p].max(v);
    }
    let rising = lo.iter().all(|v| v.is_finite())
        && (1..PARTS).all(|p| lo[p] > lo[p - 1])
        && lo[PARTS - 1] > hi[0];
    if !rising {
        return Trend::NoSustainedGrowth {
            samples,
            span_s: span,
        };
    }
    // Least-squares slope over the window.
    let n = samples as f64;
    let mt = w.iter().map(|s| s.0).sum::<f64>() / n;
    let mv = w.iter().map(|s| s.1).sum::<f64>() / n;
    let cov: f64 = w.iter().map(|s| (s.0 - mt) * (s.1 - mv)).sum();
    let var: f64 = w.iter().map(|s| (s.0 - mt) * (s.0 - mt)).sum();
    let rate_per_s = if var > 0.0 { cov / var } else { 0.0 };
    Trend::Growing {
        samples,
        span_s: span,
        rate_per_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(f64) -> f64, secs: usize) -> Series {
        let mut s = Series::default();
        for i in 0..=secs {
            s.push(i as f64, f(i as f64), 600.0);
        }
        s
    }

    #[test]
    fn steady_growth_is_sustained_with_its_rate() {
        let t = judge(&series(|t| 1000.0 + 50.0 * t, 40), 30.0);
        let r = t.rate().unwrap_or_else(|| panic!("{t:?}"));
        assert!((r - 50.0).abs() < 1e-6, "{t:?}");
        // The window is the last 2 x span: 41 samples (0..=40 s) all inside 60 s.
        assert_eq!(
            t,
            Trend::Growing {
                samples: 41,
                span_s: 40.0,
                rate_per_s: r
            }
        );
        assert!(
            t.text(30.0).starts_with("growing +50.00/s"),
            "{}",
            t.text(30.0)
        );
    }

    #[test]
    fn too_short_or_too_few_is_not_judged() {
        // 20 s of strong growth is not 30 s.
        let t = judge(&series(|t| 100.0 * t, 20), 30.0);
        assert_eq!(t.state(), "too_few_samples");
        assert!(t.rate().is_none());
        assert!(
            t.text(30.0).contains("needs 10 over 30.0s"),
            "{}",
            t.text(30.0)
        );
        // 3 samples over 40 s are too few.
        let mut s = Series::default();
        for t in [0.0, 20.0, 40.0] {
            s.push(t, t * 10.0, 600.0);
        }
        assert_eq!(judge(&s, 30.0).state(), "too_few_samples");
    }

    #[test]
    fn bursts_deleted_again_are_not_growth() {
        // Thousands of temp files created and deleted in cycles: the count swings
        // between 0 and 2000 and comes back.
        let t = judge(
            &series(
                |t| {
                    if (t as u64).is_multiple_of(3) {
                        0.0
                    } else {
                        2000.0
                    }
                },
                60,
            ),
            30.0,
        );
        assert_eq!(t.state(), "no_sustained_growth", "{t:?}");
        // A burst that stays (one step up, then flat): the last stretch does not rise.
        let t = judge(&series(|t| if t < 25.0 { 0.0 } else { 500.0 }, 45), 30.0);
        assert_eq!(t.state(), "no_sustained_growth", "{t:?}");
        // Growth that stopped (a leak fixed a while ago) is not projected.
        let t = judge(&series(|t| (t.min(30.0)) * 10.0, 90), 30.0);
        assert_eq!(t.state(), "no_sustained_growth", "{t:?}");
        // Flat.
        assert_eq!(
            judge(&series(|_| 7.0, 40), 30.0).state(),
            "no_sustained_growth"
        );
    }

    #[test]
    fn growth_under_noise_counts_only_once_it_clears_the_noise() {
        // 10/s of real growth under +-500 of churn: within 40 s the growth does not
        // clear the noise.
        let noisy = |t: f64| {
            10.0 * t
                + if (t as u64).is_multiple_of(2) {
                    500.0
                } else {
                    -500.0
                }
        };
        assert_eq!(
            judge(&series(noisy, 40), 30.0).state(),
            "no_sustained_growth"
        );
        // 50/s under +-400: 2000 over the 40 s between the first and last stretch of
        // the 60 s window clears 800 of noise.
        let clear = |t: f64| {
            50.0 * t
                + if (t as u64).is_multiple_of(2) {
                    400.0
                } else {
                    -400.0
                }
        };
        assert_eq!(judge(&series(clear, 600), 30.0).state(), "growing");
    }

    #[test]
    fn series_is_bounded_and_keeps_the_recent_window() {
        let mut s = Series::default();
        for i in 0..100 {
            s.push(i as f64, 0.0, 10.0);
        }
        assert_eq!(s.samples().count(), 11);
        // Time never goes back.
        s.push(50.0, 1.0, 10.0);
        assert_eq!(s.samples().count(), 11);
        assert_eq!(s.last(5.0).len(), 6);
    }
}
