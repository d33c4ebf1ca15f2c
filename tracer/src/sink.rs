//! Where reports go. The run loop hands each detector's report, with the header every
//! report carries, to each sink of the run: stdout as text for people or as JSON lines
//! for machines, and the `--prom-file` for node_exporter's textfile collector. A new
//! output (serve's HTTP endpoint) is one more [`Sink`].
use std::{collections::BTreeMap, io::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{opts::RunOpts, prom::Collect, report::Emitted};

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
    latest: BTreeMap<String, Emitted>,
}

impl PromFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            latest: BTreeMap::new(),
        }
    }
}

impl Sink for PromFile {
    fn write(&mut self, r: &Emitted) -> Result<()> {
        self.latest.insert(r.header.command.clone(), r.clone());
        let all: Vec<&dyn Collect> = self.latest.values().map(|r| r as &dyn Collect).collect();
        crate::prom::write_all(&self.path, &all)
    }
}

/// `--json`: one object per line on stdout.
pub struct JsonLines;

impl Sink for JsonLines {
    fn write(&mut self, r: &Emitted) -> Result<()> {
        let line = r
            .json()
            .with_context(|| format!("writing the {} report as JSON", r.header.command))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
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
        out.write_all(r.text().as_bytes())?;
        out.flush()?;
        Ok(())
    }
}
