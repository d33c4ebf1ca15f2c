//! The `tracer inodes` report: one typed struct (build.rs fills it) that renders the
//! text for people, one titled section per table, and gives the metrics; its JSON is
//! its serialization.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    census::Census,
    metrics,
    rows::{DirectoryRow, EnospcRow, FilesystemRow, ProcessRow},
};
use crate::{
    output::{Row, Table, human_duration},
    prom::{Families, PCT, Process, top_by},
    report::Body,
};

/// What `tracer inodes` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InodesReport {
    /// `--fs`: only this filesystem (its mount point).
    pub filter_fs: Option<PathBuf>,
    /// Whether ext4 allocations are counted per process and directory.
    pub ext4_attribution: Ext4Attribution,
    /// Every inode-limited filesystem (or `--fs`'s), fullest first.
    pub filesystems: Vec<FilesystemRow>,
    /// How inode creations are counted on filesystems other than ext4 (ext4 by its own
    /// tracepoints when they are attached).
    pub creations: super::Creations,
    /// Processes with the most net inodes created, at most `--top`.
    pub top_processes: Vec<ProcessRow>,
    /// Directories where the most inodes were created, at most `--top`.
    pub top_directories: Vec<DirectoryRow>,
    /// Processes whose creates failed with ENOSPC, the most failures first.
    pub enospc: Vec<EnospcRow>,
    /// What to do about the fullest filesystem in trouble.
    pub hints: Vec<String>,
    pub state_evicted: Evicted,
    /// Where the inodes are now (census.rs): None when no census ran, and then
    /// `census_why_none` says why.
    pub census: Option<Vec<Census>>,
    pub census_why_none: Option<String>,
    /// What the report could not see.
    pub caveats: Vec<String>,
    /// For the text only.
    #[serde(skip)]
    pub view: View,
}

/// Per-process and per-directory ext4 attribution: available, or why not and what the
/// report shows instead (both absent when available).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ext4Attribution {
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl Ext4Attribution {
    /// Why attribution is unavailable; None when it is available.
    pub fn missing(&self) -> Option<&str> {
        self.reason.as_deref().filter(|_| !self.available)
    }
}

/// State dropped to keep memory bounded (README "Bounded state").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evicted {
    /// First ENOSPC paths forgotten, least recently failing first.
    pub enospc_paths: u64,
}

/// What only the text shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// `--level-hold`, seconds (the FILESYSTEMS title).
    pub level_hold_s: f64,
    /// `--trend-span`, seconds (the FILESYSTEMS title).
    pub trend_span_s: f64,
}

impl Body for InodesReport {
    fn text(&self) -> String {
        let counted = self.creations.hook != super::CreationHook::None;
        let mut t = match self.ext4_attribution.missing() {
            Some(reason) => format!(
                "ext4 attribution unavailable ({reason}): {}; {}\n",
                if counted {
                    "ext4 frees are not counted per process"
                } else {
                    "per-process and per-directory counts are not collected"
                },
                self.ext4_attribution
                    .fallback
                    .as_deref()
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        t += &self.filesystems_text();
        t += &format!(
            "\ninode creations outside ext4 counted by: {} ({})\n",
            self.creations.hook.as_str(),
            self.creations.detail
        );
        t += &titled(
            &self.top_processes,
            "\nTOP PROCESSES (inodes, most net created first; frees only on ext4, for the process that dropped the last link)",
            &self.unavailable_or("none: no inode was created or freed"),
        );
        t += &titled(
            &self.top_directories,
            "\nTOP DIRECTORIES (where new inodes were created; FROM: syscall = path given to the create and checked by stat, walk = found under the mount, unresolved = inode number)",
            &self.unavailable_or("none"),
        );
        t += &titled(
            &self.enospc,
            "\nCREATES FAILED WITH ENOSPC (No space left on device)",
            "none",
        );
        for c in self.census.iter().flatten() {
            t += &c.text();
        }
        for h in &self.hints {
            t += &format!("hint: {h}\n");
        }
        for c in &self.caveats {
            t += &format!("note: {c}\n");
        }
        t
    }

    fn collect(&self, out: &mut Families) {
        use metrics::*;
        for f in &self.filesystems {
            let mount = f.mount.display().to_string();
            let l = [
                ("mount", mount.as_str()),
                ("device", f.device.as_str()),
                ("fstype", f.fstype.as_str()),
            ];
            out.sample(&INODES, &l, f.inodes_total);
            out.sample(&USED, &l, f.inodes_used);
            out.sample(&FREE, &l, f.inodes_free);
            out.sample(&BLOCKS_USED, &l, f.blocks_used_pct / PCT);
            out.opt(&ALLOCATED, &l, f.allocated);
            out.opt(&FREED, &l, f.freed);
            out.sample(&GROWTH, &l, f.net_inodes_per_s);
            out.opt(&ETA, &l, f.exhaustion_eta_s);
            out.sample(&LEVEL, &l, f.level.severity());
            out.sample(&FULL_BLOCKS_FREE, &l, u64::from(f.inodes_full_blocks_free));
        }
        let counted: Vec<(&ProcessRow, i64)> = (self.top_processes.iter())
            .filter_map(|p| Some((p, p.net?)))
            .collect();
        for (p, net) in top_by(&counted, |(_, n)| *n as f64, TOP) {
            out.process(
                &PROCESS_NET,
                &process(p.pid, &p.comm, &p.mount, &p.cgroup),
                *net,
            );
        }
        for p in top_by(&self.top_processes, |p| p.allocated as f64, TOP) {
            out.process(
                &PROCESS_CREATED,
                &process(p.pid, &p.comm, &p.mount, &p.cgroup),
                p.allocated,
            );
        }
        for e in top_by(&self.enospc, |e| e.count as f64, TOP) {
            out.process(
                &ENOSPC,
                &process(e.pid, &e.comm, &e.mount, &e.cgroup),
                e.count,
            );
        }
        for d in top_by(&self.top_directories, |d| d.allocated as f64, TOP) {
            let path = d.path.as_ref().map(|p| p.display().to_string());
            let l = [
                ("mount", d.mount.as_str()),
                ("path", path.as_deref().unwrap_or_default()),
            ];
            out.sample(&DIRECTORY, &l, d.allocated);
        }
    }

    fn state_evicted(&self) -> Vec<(&'static str, u64)> {
        vec![("enospc_paths", self.state_evicted.enospc_paths)]
    }
}

/// A process on a filesystem, as its series name it.
fn process<'a>(
    pid: u32,
    comm: &'a str,
    mount: &'a str,
    cgroup: &'a crate::container::InCgroup,
) -> Process<'a> {
    Process {
        pid,
        comm,
        mount: Some(mount),
        container: cgroup.container.as_ref(),
    }
}

/// A section of the text: its title, then its table, or a line saying there is nothing.
fn titled<R: Row>(rows: &[R], title: &str, none: &str) -> String {
    let body = if rows.is_empty() {
        format!("  {none}\n")
    } else {
        Table::of(rows).render()
    };
    format!("{title}\n{body}")
}

impl InodesReport {
    /// The filesystems table with its rules in the title, then the signature flags.
    fn filesystems_text(&self) -> String {
        let title = format!(
            "FILESYSTEMS (inodes; WARN >= 80% used, CRIT >= 90%, held in every sample of the last {} (full: CRIT at once); \
             NET/S = allocated - freed per second since the start, NOW/S since the last report; \
             EXHAUSTED IN only from sustained growth: {})",
            human_duration(self.view.level_hold_s),
            crate::trend::rule(self.view.trend_span_s)
        );
        let mut t = titled(&self.filesystems, &title, "none with a fixed inode count");
        t.extend(self.filesystems.iter().filter_map(FilesystemRow::flag));
        t
    }

    /// The line of a section that has no rows: `none`, or why ext4 attribution is
    /// unavailable.
    fn unavailable_or(&self, none: &str) -> String {
        match self.ext4_attribution.missing() {
            Some(reason) if self.creations.hook == super::CreationHook::None => {
                format!("unavailable: {reason}")
            }
            _ => none.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Envelope;

    /// The report of prom's fixture, with the rules of a default run.
    fn fixture() -> (String, Envelope<InodesReport>) {
        let text = include_str!("../prom/fixtures/inodes.json");
        let mut r: Envelope<InodesReport> = serde_json::from_str(text).unwrap();
        r.body.view = View {
            level_hold_s: 10.0,
            trend_span_s: 30.0,
        };
        for f in &mut r.body.filesystems {
            f.trend_span_s = 30.0;
        }
        (text.to_string(), r)
    }

    #[test]
    fn a_report_writes_back_the_json_it_was_read_from_in_its_order() {
        let (text, r) = fixture();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
    }

    #[test]
    fn the_text_has_every_section_from_the_report() {
        let (_, mut r) = fixture();
        let t = r.body.text();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("FILESYSTEMS (inodes; WARN >= 80% used, CRIT >= 90%, held in every sample of the last 10.0s (full: CRIT at once);"), "{t}");
        assert!(
            lines[0]
                .contains("EXHAUSTED IN only from sustained growth: >= 10 samples over >= 30.0s"),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "/               /dev/vda  ext4    419386/16777216   2.5%     5.5%  +67.3      -  too few samples (5 over 3.0s; needs 10 over 30.0s)  OK",
            "{t}"
        );
        for line in [
            "TOP PROCESSES (inodes, most net created first;",
            "inode creations outside ext4 counted by: fentry inode_init_owner (fentry)\n",
            "18101  cargo       /            181      0  +181  /\n",
            "TOP DIRECTORIES (where new inodes were created;",
            "/      /work/wt-rss/target/release/deps",
            "CREATES FAILED WITH ENOSPC (No space left on device)",
            "4242  touch  /tmp/ifull      12  /tmp/ifull/f118\n",
        ] {
            assert!(t.contains(line), "{line:?} in\n{t}");
        }
        assert!(!t.contains("unavailable") && !t.contains("!!!") && !t.contains("hint:"));

        // Without ext4 attribution: the reason up front and in the empty sections.
        r.body.ext4_attribution = Ext4Attribution {
            available: false,
            reason: Some("ext4 tracepoints missing: why".into()),
            fallback: Some(super::super::EXT4_FALLBACK.into()),
        };
        (r.body.top_processes, r.body.top_directories) = (vec![], vec![]);
        r.body.creations = crate::inodes::Creations {
            hook: crate::inodes::CreationHook::None,
            detail: "not counted: why".into(),
            unplaced: None,
        };
        r.body.filesystems[0].inodes_full_blocks_free = true;
        r.body.hints = vec!["free some".into()];
        r.body.caveats = vec!["a caveat".into()];
        let t = r.body.text();
        assert!(t.starts_with("ext4 attribution unavailable (ext4 tracepoints missing: why): per-process and per-directory counts are not collected; usage, NET/S and ETA from statvfs"), "{t}");
        assert_eq!(
            t.matches("  unavailable: ext4 tracepoints missing: why\n")
                .count(),
            2,
            "{t}"
        );
        assert!(
            t.contains("!!! /: 2% of inodes used while only 5% of blocks are"),
            "{t}"
        );
        assert!(
            t.ends_with("CREATES FAILED WITH ENOSPC (No space left on device)\n PID  COMM   MOUNT       ENOSPC  FIRST FAILED PATH\n4242  touch  /tmp/ifull      12  /tmp/ifull/f118\nhint: free some\nnote: a caveat\n"),
            "{t}"
        );
    }
}
