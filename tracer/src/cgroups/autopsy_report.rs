//! The autopsy in the `tracer cgroups` report: taken at each report (census, page-cache
//! map, file names), rendered to text and to metrics.
use std::collections::HashMap;

use super::{
    Cgroups, metrics,
    pagecache::{self, Charged, PageCacheInfo},
    pinned::{self, Autopsy, FileSeen, FilesUnknown, Inputs, PinnedBy},
};
use crate::{output::Table, prom::Families, snapshot::cgroups::Survey};

impl Cgroups {
    /// The autopsy of the memory hierarchy's dying memcgs, or why there is none.
    pub(super) fn autopsy_section(
        &mut self,
        survey: &[Survey],
        final_: bool,
    ) -> (Option<Autopsy>, Option<String>) {
        let Some(s) = survey.iter().find(|s| s.hierarchy.has_memory()) else {
            return (None, Some("no memory controller is mounted".into()));
        };
        if !self.hierarchies.iter().any(|h| h.id == s.hierarchy.id) {
            return (
                None,
                Some(format!(
                    "--hierarchy leaves out {}, the memory hierarchy",
                    s.hierarchy.name
                )),
            );
        }
        let census = match self.census.latest(self.args.census_every, final_) {
            Ok(c) => c,
            Err(e) => return (None, Some(format!("{e:#}"))),
        };
        let root = s.hierarchy.id as i32;
        let dying: Vec<_> = (self.tracker.dying().into_iter())
            .filter(|d| d.root == root)
            .collect();
        let charged: Result<(Vec<Charged>, PageCacheInfo), String> = match &self.pagecache {
            Ok(m) => Ok(m.read()),
            Err(why) => Err(why.clone()),
        };
        // Only files the dying memcgs charged are named (each a bounded walk).
        let ids: Vec<u64> = dying.iter().map(|d| d.id).collect();
        let wanted: Vec<(u32, u64)> = match &charged {
            Ok((c, _)) => (c.iter())
                .filter(|c| ids.contains(&c.memcg))
                .map(|c| (c.dev, c.ino))
                .collect(),
            Err(_) => Vec::new(),
        };
        let files: HashMap<(u32, u64), FileSeen> = (self.namer.name(&wanted).into_iter())
            .map(|(k, path)| {
                let size_resident = path
                    .as_ref()
                    .ok()
                    .and_then(|p| pagecache::size_and_resident(p));
                let path = path.map(|p| p.display().to_string());
                (
                    k,
                    FileSeen {
                        path,
                        size_resident,
                    },
                )
            })
            .collect();
        let a = pinned::autopsy(Inputs {
            hierarchy: &s.hierarchy,
            dirs: &s.dirs,
            dying,
            census,
            charged,
            files: &files,
        });
        (Some(a), None)
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1u64 << 20) as f64)
}

/// The text section.
pub fn text(a: Option<&Autopsy>, missing: Option<&str>, top: usize) -> String {
    let mut t =
        "\nDYING MEMCG AUTOPSY (memory still charged, by closest live ancestor)\n".to_string();
    let Some(a) = a else {
        t += &format!("  not taken: {}\n", missing.unwrap_or("-"));
        return t;
    };
    let c = &a.census;
    t += &format!(
        "  census of /proc/kpagecgroup + /proc/kpageflags ({}): {} frames, {} charged, took {:.0}ms, {:.1}s ago{}{}\n",
        a.hierarchy,
        c.frames,
        c.charged_frames,
        c.took_ms,
        c.age_s,
        if c.complete {
            ""
        } else {
            ", INCOMPLETE (time bound)"
        },
        if c.idle_priority {
            ", idle priority"
        } else {
            ""
        }
    );
    match (&a.pagecache, &a.pagecache_missing) {
        (Some(p), _) => {
            t += &format!(
                "  page cache tracked: {} adds, {} (memcg, file) pairs of {}, {} evicted\n",
                p.adds, p.files_tracked, p.capacity, p.evicted
            )
        }
        (None, Some(why)) => t += &format!("  page cache not tracked: {why}\n"),
        _ => {}
    }
    let unseen: Vec<&str> = a.unseen.iter().map(|u| u.text()).collect();
    t += &format!("  not counted: {}\n", unseen.join("; "));
    t += "  kernel memory (slab, kmem) of a removed memcg moves to its parent: it pins nothing\n";
    if a.groups.is_empty() {
        t += "  no dying memcg holds memory\n";
        return t;
    }
    let mut tab = Table::new(&[
        "ANCESTOR", "DYING", "BEFORE", "FILE", "SHMEM", "ANON", "CREATOR",
    ]);
    for g in a.groups.iter().take(top) {
        tab.row(vec![
            g.ancestor.clone(),
            g.dying.len().to_string(),
            g.dying_before_start.map_or("?".into(), |n| n.to_string()),
            mib(g.pinned.file),
            mib(g.pinned.shmem),
            mib(g.pinned.anon),
            (g.dying.iter().find_map(|d| d.creator.clone()))
                .unwrap_or_else(|| "before start".into()),
        ]);
    }
    t += &tab.render();
    for g in a.groups.iter().take(top) {
        t += &group_text(g);
    }
    t += &by_text("by creator", &a.by_creator, top);
    t += &by_text("by container or pod", &a.by_container, top);
    t
}

fn group_text(g: &pinned::PinnedGroup) -> String {
    let mut t = format!("  {}:\n", g.ancestor);
    for d in &g.dying {
        t += &format!("    dying {} (id {})\n", d.path, d.id);
    }
    for f in &g.files {
        let path = f
            .path
            .clone()
            .unwrap_or_else(|| format!("{}:{} (path unknown: {:?})", f.dev, f.ino, f.path_unknown));
        t += &format!(
            "    file {path}: size {}, in page cache {}, charged {} by {} ({})\n",
            f.size.map_or("?".into(), mib),
            f.resident.map_or("?".into(), mib),
            mib(f.charged),
            f.memcg,
            f.adder
        );
    }
    match &g.files_unknown {
        Some(FilesUnknown::ChargedBeforeStart) => {
            t += "    files: unknown for pages charged before the start\n"
        }
        Some(FilesUnknown::NotTracked { why }) => t += &format!("    files: not tracked ({why})\n"),
        Some(FilesUnknown::NoneSeen) => {
            t += "    files: no page-cache add by these memcgs seen while tracing (tmpfs/shmem, anonymous or kernel memory)\n"
        }
        None => {}
    }
    for r in &g.remedies {
        match &r.command {
            Some(c) => t += &format!("    remedy: {c}    # {}\n", r.note),
            None => t += &format!("    remedy: {}\n", r.note),
        }
    }
    t
}

fn by_text(what: &str, rows: &[PinnedBy], top: usize) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut t = format!("  {what}:\n");
    for r in rows.iter().take(top) {
        t += &format!(
            "    {}: {} memcgs, {} pinned (file {})\n",
            r.who,
            r.memcgs,
            mib(r.pinned.total()),
            mib(r.pinned.file)
        );
    }
    t
}

/// The autopsy's metrics: bounded to the [`metrics::TOP_PATHS`] groups and creators
/// with the most bytes (the lists are sorted so).
pub fn collect(a: &Autopsy, out: &mut Families) {
    use metrics::*;
    out.sample(&CENSUS_DURATION, &[], a.census.took_ms / 1e3);
    for g in a.groups.iter().take(TOP_PATHS) {
        for (kind, b) in g.pinned.each() {
            out.sample(
                &PINNED,
                &[
                    ("hierarchy", &a.hierarchy),
                    ("path", &g.ancestor),
                    ("kind", kind),
                ],
                b,
            );
        }
    }
    for c in a.by_creator.iter().take(TOP_PATHS) {
        for (kind, b) in c.pinned.each() {
            out.sample(
                &PINNED_BY_CREATOR,
                &[("creator", &c.who), ("kind", kind)],
                b,
            );
        }
    }
    if let Some(p) = &a.pagecache {
        out.sample(&PAGECACHE_EVICTED, &[], p.evicted);
    }
}
