//! Where reports go. The run loop completes a detector's report with the fields every
//! report carries and hands it to each sink of the run: stdout as text for people or as
//! JSON lines for machines, and the `--prom-file` for node_exporter's textfile
//! collector. A new output (an HTTP endpoint) is one more [`Sink`].
use std::{io::Write as _, path::PathBuf};

use anyhow::Result;
use serde_json::{Map, Value};

use crate::{
    output::round3,
    run::{Report, ReportCtx, RunOpts},
};

/// A report as every sink gets it.
pub struct Emitted<'a> {
    pub command: &'a str,
    /// The detector's JSON after the common fields (command, final, elapsed_s,
    /// lost_events, bad_records, kernel_read_errors, kernel_map_full).
    pub json: Value,
    /// The detector's text, without the common header and footer.
    pub text: String,
    pub ctx: &'a ReportCtx,
}

impl<'a> Emitted<'a> {
    pub fn new(command: &'a str, report: Report, ctx: &'a ReportCtx) -> Self {
        let mut obj = Map::new();
        obj.insert("command".into(), command.into());
        obj.insert("final".into(), ctx.final_.into());
        obj.insert("elapsed_s".into(), round3(ctx.elapsed.as_secs_f64()).into());
        obj.insert("lost_events".into(), ctx.lost_events.into());
        obj.insert("bad_records".into(), ctx.bad_records.into());
        obj.insert("kernel_read_errors".into(), ctx.kernel_read_errors.into());
        obj.insert("kernel_map_full".into(), ctx.kernel_map_full.into());
        obj.insert(
            "hooks".into(),
            serde_json::to_value(&*ctx.hooks).unwrap_or(Value::Null),
        );
        if let Value::Object(m) = report.json {
            obj.extend(m);
        }
        Emitted {
            command,
            json: Value::Object(obj),
            text: report.text,
            ctx,
        }
    }
}

pub trait Sink: Send {
    fn write(&mut self, r: &Emitted) -> Result<()>;
}

/// The sinks `opts` asks for: the prom file (rewritten first, so a reader of stdout
/// finds it current), then stdout as JSON lines or text.
pub fn from_opts(opts: &RunOpts) -> Vec<Box<dyn Sink>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(path) = &opts.prom_file {
        sinks.push(Box::new(PromFile::new(path.clone())));
    }
    if opts.json {
        sinks.push(Box::new(JsonLines));
    } else {
        sinks.push(Box::new(Text));
    }
    sinks
}

/// `--prom-file`: the whole file replaced atomically with every report; with several
/// detectors it holds each one's latest report.
pub struct PromFile {
    path: PathBuf,
    latest: std::collections::BTreeMap<String, Value>,
}

impl PromFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            latest: Default::default(),
        }
    }
}

impl Sink for PromFile {
    fn write(&mut self, r: &Emitted) -> Result<()> {
        self.latest.insert(r.command.to_string(), r.json.clone());
        let all: Vec<(&str, &Value)> = self.latest.iter().map(|(c, j)| (c.as_str(), j)).collect();
        crate::prom::write_all(&self.path, &all)
    }
}

/// `--json`: one object per line on stdout.
pub struct JsonLines;

impl Sink for JsonLines {
    fn write(&mut self, r: &Emitted) -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", r.json)?;
        out.flush()?;
        Ok(())
    }
}

/// The text report on stdout, between a header naming it and a footer that counts
/// what the tracer could not see.
pub struct Text;

impl Sink for Text {
    fn write(&mut self, r: &Emitted) -> Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(text(r).as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

fn text(r: &Emitted) -> String {
    let ctx = r.ctx;
    let when = if ctx.final_ { "final report" } else { "report" };
    let mut t = format!(
        "=== tracer {}: {when} after {:.1}s ===\n{}",
        r.command,
        ctx.elapsed.as_secs_f64(),
        r.text
    );
    if ctx.lost_events > 0 {
        t += &format!(
            "lost events: {} (the ring buffer was full; the counts above are low by at least this much)\n",
            ctx.lost_events
        );
    } else {
        t += "lost events: 0\n";
    }
    if ctx.bad_records > 0 {
        t += &format!(
            "bad records: {} (too short or of a kind this detector does not know; ignored)\n",
            ctx.bad_records
        );
    }
    if ctx.kernel_read_errors > 0 {
        t += &format!(
            "kernel read errors: {} (the programs could not read a kernel field, so some events are missing or lack a detail; `tracer doctor` checks the hooks)\n",
            ctx.kernel_read_errors
        );
    }
    if ctx.kernel_map_full > 0 {
        t += &format!(
            "kernel map full: {} (the programs could not add an entry to a full kernel map, so some events lack their state or count; README \"Bounded state\" lists the maps)\n",
            ctx.kernel_map_full
        );
    }
    t + "\n"
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn ctx(lost: u64, bad: u64, read: u64) -> ReportCtx {
        ReportCtx {
            final_: true,
            elapsed: Duration::from_millis(2500),
            lost_events: lost,
            bad_records: bad,
            kernel_read_errors: read,
            kernel_map_full: 0,
            hooks: Default::default(),
        }
    }

    #[test]
    fn every_report_carries_the_common_fields_first() {
        let c = ctx(0, 0, 0);
        let r = Emitted::new(
            "zombies",
            Report {
                json: json!({"zombies_total": 3}),
                text: "x\n".into(),
            },
            &c,
        );
        assert_eq!(
            r.json.to_string(),
            r#"{"command":"zombies","final":true,"elapsed_s":2.5,"lost_events":0,"bad_records":0,"kernel_read_errors":0,"kernel_map_full":0,"hooks":{"attached":[],"paths":[]},"zombies_total":3}"#
        );
        assert_eq!(
            text(&r),
            "=== tracer zombies: final report after 2.5s ===\nx\nlost events: 0\n\n"
        );
    }

    #[test]
    fn the_text_footer_names_what_was_lost_bad_or_unreadable() {
        let c = ctx(4, 2, 7);
        let r = Emitted::new(
            "tcp-pressure",
            Report {
                json: json!({}),
                text: String::new(),
            },
            &c,
        );
        let t = text(&r);
        assert!(
            t.contains("lost events: 4 (the ring buffer was full"),
            "{t}"
        );
        assert!(t.contains("bad records: 2 ("), "{t}");
        assert!(t.contains("kernel read errors: 7 ("), "{t}");
    }
}
