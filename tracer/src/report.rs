//! A report as it leaves a detector: the [`Header`] every report carries (what the
//! tracer could not see, its hooks) and the detector's own typed [`Body`]. Every sink
//! works from these two: the text for people, the JSON line (only a serialization of
//! them), the `--prom-file` and serve's `/metrics` (each body describes its own series).
//! The integration tests read a JSON line back into an [`Envelope`] of the same types,
//! so a field that disappears fails them.
use std::{ops::Deref, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    hooks::Hooks,
    output::serialize_round3,
    prom::{self, Collect, Families},
};

/// The fields every report carries, first in its JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The detector's name (its subcommand).
    pub command: String,
    /// The last report of the run.
    #[serde(rename = "final")]
    pub final_: bool,
    /// Time since the hooks were attached.
    #[serde(serialize_with = "serialize_round3")]
    pub elapsed_s: f64,
    /// Records the kernel could not put on the full ring buffer.
    pub lost_events: u64,
    /// Records the detector could not decode (too short, or a kind it does not know).
    pub bad_records: u64,
    /// Kernel reads that failed in the programs (READ_ERRORS).
    pub kernel_read_errors: u64,
    /// Entries the programs could not add to a full kernel map (MAP_FULL).
    pub kernel_map_full: u64,
    /// The detector's hooks and the path each choice took.
    pub hooks: Hooks,
    /// What the kernel counted for each of the detector's programs since it started
    /// timing them (`tracer serve`: BPF_ENABLE_STATS); None when it does not.
    pub programs: Option<Vec<ProgramCost>>,
}

/// One of a detector's BPF programs, as the kernel's statistics count it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub program: String,
    /// Times it ran.
    pub runs: u64,
    /// CPU time it ran for, in nanoseconds (the kernel's run_time_ns).
    pub run_time_ns: u64,
}

impl Header {
    pub fn elapsed(&self) -> Duration {
        Duration::from_secs_f64(self.elapsed_s.max(0.0))
    }
}

/// Serializes a body after a header, flattened into one JSON object: implemented for
/// every `Serialize` body, so a [`Body`] needs only derive it.
pub trait ToJson {
    fn json_after(&self, header: &Header) -> serde_json::Result<String>;
}

impl<T: Serialize> ToJson for T {
    fn json_after(&self, header: &Header) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Out<'a, B> {
            #[serde(flatten)]
            header: &'a Header,
            #[serde(flatten)]
            body: &'a B,
        }
        serde_json::to_string(&Out { header, body: self })
    }
}

/// A detector's report: a typed struct that serializes to the JSON after the header,
/// renders the text for people, and gives its metrics.
pub trait Body: ToJson + Send + Sync + 'static {
    /// The text report, without the header line and the footer the sink adds.
    fn text(&self) -> String;
    /// Its series, as the detector's `metrics.rs` describes them.
    fn collect(&self, out: &mut Families);
    /// Per-key state dropped to keep memory bounded, by state name
    /// (`tracer_state_evicted_total`); none by default.
    fn state_evicted(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A report as a JSON line reads back: the header and the detector's body, each a
/// typed struct (what the integration tests deserialize into). Derefs to the body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<B> {
    #[serde(flatten)]
    pub header: Header,
    #[serde(flatten)]
    pub body: B,
}

impl<B> Deref for Envelope<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.body
    }
}

/// A report as every sink gets it.
#[derive(Clone)]
pub struct Emitted {
    pub header: Header,
    pub body: Arc<dyn Body>,
}

impl Emitted {
    /// The JSON object on one line: the header's fields, then the body's.
    pub fn json(&self) -> serde_json::Result<String> {
        self.body.json_after(&self.header)
    }

    /// The text report: a line naming it, the body's text, and a footer that counts
    /// what the tracer could not see.
    pub fn text(&self) -> String {
        let h = &self.header;
        let when = if h.final_ { "final report" } else { "report" };
        let mut t = format!(
            "=== tracer {}: {when} after {:.1}s ===\n{}",
            h.command,
            h.elapsed_s,
            self.body.text()
        );
        if h.lost_events > 0 {
            t += &format!(
                "lost events: {} (the ring buffer was full; the counts above are low by at least this much)\n",
                h.lost_events
            );
        } else {
            t += "lost events: 0\n";
        }
        if h.bad_records > 0 {
            t += &format!(
                "bad records: {} (too short or of a kind this detector does not know; ignored)\n",
                h.bad_records
            );
        }
        if h.kernel_read_errors > 0 {
            t += &format!(
                "kernel read errors: {} (the programs could not read a kernel field, so some events are missing or lack a detail; `tracer doctor` checks the hooks)\n",
                h.kernel_read_errors
            );
        }
        if h.kernel_map_full > 0 {
            t += &format!(
                "kernel map full: {} (the programs could not add an entry to a full kernel map, so some events lack their state or count; docs/bounded-state.md lists the maps)\n",
                h.kernel_map_full
            );
        }
        t + "\n"
    }

    /// The report's series with, at a scrape of `tracer serve`, how old it is.
    pub fn aged(&self, age_s: Option<f64>) -> Aged<'_> {
        Aged { r: self, age_s }
    }
}

/// A report's series at a given age (see [`Emitted::aged`]).
pub struct Aged<'a> {
    r: &'a Emitted,
    age_s: Option<f64>,
}

impl Collect for Aged<'_> {
    fn collect(&self, out: &mut Families) {
        let (h, body) = (&self.r.header, &self.r.body);
        let l = [("detector", h.command.as_str())];
        out.sample(&prom::LOST_EVENTS, &l, h.lost_events);
        out.sample(&prom::BAD_RECORDS, &l, h.bad_records);
        out.sample(&prom::KERNEL_READ_ERRORS, &l, h.kernel_read_errors);
        out.sample(&prom::KERNEL_MAP_FULL, &l, h.kernel_map_full);
        for (state, n) in body.state_evicted() {
            let l = [("detector", h.command.as_str()), ("state", state)];
            out.sample(&prom::STATE_EVICTED, &l, n);
        }
        out.sample(
            &prom::REPORT_ELAPSED,
            &l,
            crate::output::round3(h.elapsed_s),
        );
        if let Some(age) = self.age_s {
            out.sample(&prom::REPORT_AGE, &l, crate::output::round3(age));
        }
        out.sample(&prom::REPORT_FINAL, &l, u64::from(h.final_));
        for a in &h.hooks.attached {
            let l = [("detector", h.command.as_str()), ("hook", a.hook.as_str())];
            out.sample(&prom::HOOK_ATTACHED, &l, u64::from(a.attached));
        }
        for p in h.programs.iter().flatten() {
            let l = [
                ("detector", h.command.as_str()),
                ("program", p.program.as_str()),
            ];
            out.sample(&prom::own::BPF_RUNS, &l, p.runs);
            out.sample(&prom::own::BPF_RUN_TIME, &l, p.run_time_ns as f64 / 1e9);
        }
        for p in &h.hooks.paths {
            let l = [
                ("detector", h.command.as_str()),
                ("choice", &p.choice),
                ("via", &p.path),
            ];
            out.sample(&prom::HOOK_PATH, &l, 1u64);
        }
        body.collect(out);
    }
}

impl Collect for Emitted {
    fn collect(&self, out: &mut Families) {
        self.aged(None).collect(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Count {
        zombies_total: u64,
    }

    impl Body for Count {
        fn text(&self) -> String {
            "x\n".into()
        }
        fn collect(&self, _: &mut Families) {}
    }

    fn header(lost: u64, bad: u64, read: u64) -> Header {
        Header {
            command: "zombies".into(),
            final_: true,
            elapsed_s: 2.5,
            lost_events: lost,
            bad_records: bad,
            kernel_read_errors: read,
            kernel_map_full: 0,
            hooks: Hooks::default(),
            programs: None,
        }
    }

    #[test]
    fn every_report_carries_the_common_fields_first_and_reads_back() {
        let r = Emitted {
            header: header(0, 0, 0),
            body: Arc::new(Count { zombies_total: 3 }),
        };
        let line = r.json().unwrap();
        assert_eq!(
            line,
            r#"{"command":"zombies","final":true,"elapsed_s":2.5,"lost_events":0,"bad_records":0,"kernel_read_errors":0,"kernel_map_full":0,"hooks":{"attached":[],"paths":[]},"programs":null,"zombies_total":3}"#
        );
        assert_eq!(
            r.text(),
            "=== tracer zombies: final report after 2.5s ===\nx\nlost events: 0\n\n"
        );
        let back: Envelope<Count> = serde_json::from_str(&line).unwrap();
        assert_eq!(back.header, r.header);
        assert_eq!(back.zombies_total, 3);
    }

    #[test]
    fn the_text_footer_names_what_was_lost_bad_or_unreadable() {
        let r = Emitted {
            header: header(4, 2, 7),
            body: Arc::new(Count { zombies_total: 0 }),
        };
        let t = r.text();
        assert!(
            t.contains("lost events: 4 (the ring buffer was full"),
            "{t}"
        );
        assert!(t.contains("bad records: 2 ("), "{t}");
        assert!(t.contains("kernel read errors: 7 ("), "{t}");
    }
}
