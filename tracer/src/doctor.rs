//! `tracer doctor`: what this kernel allows and what each detector will use.
use std::borrow::Cow;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    bpf::{self, HookKind, HookState, HookStatus},
    detectors,
    output::{Row, Table},
    tracefs::Tracefs,
};

/// Check what this kernel allows: BTF, tracefs, privileges, kprobes, fentry, and for
/// every detector whether its hooks exist (exit 0 when every detector can run).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What doctor found: serialized as is for `--json` (and read back by the tests),
/// rendered by [`Doctor::text`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Doctor {
    pub command: Cow<'static, str>,
    #[serde(rename = "final")]
    pub final_: bool,
    pub kernel: String,
    pub btf: bool,
    /// The tracefs mount, or why there is none.
    pub tracefs: Result<String, String>,
    pub privileges: Privileges,
    pub kprobes: bool,
    pub fentry: Fentry,
    pub detectors: Vec<Verdict>,
    pub all_runnable: bool,
    /// The hook table of the text output (the JSON has the same facts per detector).
    #[serde(skip)]
    rows: Vec<HookRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Privileges {
    /// Every capability of the set (or root): every detector runs completely.
    pub ok: bool,
    pub missing: Vec<Cow<'static, str>>,
    /// The set itself.
    pub needed: Vec<Cow<'static, str>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fentry {
    pub available: bool,
    pub reason: Option<String>,
}

/// One detector: can it run here, on which path, without what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub detector: Cow<'static, str>,
    pub runnable: bool,
    /// Optional hooks that are missing: the detector runs on its fallback.
    pub missing_optional: Vec<String>,
    pub fallback: Option<Cow<'static, str>>,
    /// Capabilities it lacks but runs without, each with what it then skips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<String>,
    pub hooks: Vec<Hook>,
    pub choices: Vec<Choice>,
    pub path: Option<String>,
    pub reason: Option<String>,
}

/// One hook of a detector as the probes found it (a [`HookStatus`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hook {
    pub hook: String,
    pub kind: HookKind,
    pub program: Cow<'static, str>,
    pub required: bool,
    pub state: HookState,
    pub purpose: Cow<'static, str>,
    /// Why it is missing, when the probe knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl From<HookStatus> for Hook {
    fn from(s: HookStatus) -> Hook {
        Hook {
            hook: s.hook,
            kind: s.kind,
            program: s.program.into(),
            required: s.required,
            state: s.state,
            purpose: s.purpose.into(),
            why: s.why,
        }
    }
}

/// Which path of one of a detector's alternatives this kernel gives (a [`bpf::Chosen`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub choice: Cow<'static, str>,
    pub purpose: Cow<'static, str>,
    /// None: no path worked; the detector falls back to `otherwise`.
    pub path: Option<Cow<'static, str>>,
    /// (path, why not) for every path tried before the winner.
    pub refused: Vec<(Cow<'static, str>, String)>,
    pub otherwise: Cow<'static, str>,
}

impl From<bpf::Chosen> for Choice {
    fn from(c: bpf::Chosen) -> Choice {
        Choice {
            choice: c.choice.into(),
            purpose: c.purpose.into(),
            path: c.path.map(Into::into),
            refused: (c.refused.into_iter())
                .map(|(p, why)| (p.into(), why))
                .collect(),
            otherwise: c.otherwise.into(),
        }
    }
}

/// One row of the hook table.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct HookRow {
    detector: &'static str,
    hook: String,
    state: String,
    /// yes/no, or for alternatives the choice and its path.
    required: String,
    purpose: &'static str,
}

impl Row for HookRow {
    const HEADER: &'static [&'static str] = &["DETECTOR", "HOOK", "STATE", "REQUIRED", "USED FOR"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.detector.into(),
            self.hook.clone(),
            self.state.clone(),
            self.required.clone(),
            self.purpose.into(),
        ]
    }
}

pub fn run(args: Args) -> Result<i32> {
    let d = Doctor::gather();
    if args.json {
        println!("{}", serde_json::to_string(&d)?);
    } else {
        print!("{}", d.text());
    }
    Ok(if d.all_runnable { 0 } else { 1 })
}

impl Doctor {
    fn gather() -> Doctor {
        let missing_caps = bpf::missing_caps();
        // Enough to load and probe the eBPF object (what detectors need besides is in
        // the privileges line).
        let root = bpf::caps::missing(&[]).is_empty();
        let tracefs = match Tracefs::find() {
            Some(t) => Ok(t),
            None if root => Tracefs::open().map_err(|e| format!("{e:#}")),
            None => Err(Tracefs::why_not_found()),
        };
        let kprobes = bpf::kprobes_available(tracefs.as_ref().ok());
        // One small copy of the object (maps of one entry) for every load probe.
        let mut prober = bpf::Prober::default();
        let fentry = match (&tracefs, root) {
            (Ok(t), true) => bpf::fentry_available(&mut prober, t, "do_exit"),
            (Err(_), true) => Err("not probed: no tracefs".to_string()),
            _ => Err("not probed: needs root".to_string()),
        };
        let mut rows = Vec::new();
        let detectors: Vec<Verdict> = detectors::ALL
            .iter()
            .map(|e| verdict(e, tracefs.as_ref().ok(), root, &mut prober, &mut rows))
            .collect();
        Doctor {
            command: "doctor".into(),
            final_: true,
            kernel: bpf::kernel_release(),
            btf: bpf::has_btf(),
            all_runnable: root && tracefs.is_ok() && detectors.iter().all(|d| d.runnable),
            tracefs: tracefs.map(|t| t.root().display().to_string()),
            privileges: Privileges {
                ok: missing_caps.is_empty(),
                missing: missing_caps.into_iter().map(Into::into).collect(),
                needed: bpf::caps::names().into_iter().map(Into::into).collect(),
            },
            kprobes,
            fentry: Fentry {
                available: fentry.is_ok(),
                reason: fentry.err(),
            },
            detectors,
            rows,
        }
    }

    fn text(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut t = format!("kernel      {}\n", self.kernel);
        t += &format!(
            "BTF         {}\n",
            if self.btf {
                "yes (/sys/kernel/btf/vmlinux)"
            } else {
                "no"
            }
        );
        t += &match &self.tracefs {
            Ok(root) => format!("tracefs     {root}\n"),
            Err(e) => format!("tracefs     MISSING: {e}\n"),
        };
        t += &if self.privileges.ok {
            "privileges  ok\n".to_string()
        } else {
            format!(
                "privileges  MISSING {} (run as root, sudo tracer ..., or with {})\n",
                self.privileges.missing.join(", "),
                bpf::caps::and_list(
                    &self
                        .privileges
                        .needed
                        .iter()
                        .map(|c| &**c)
                        .collect::<Vec<_>>()
                )
            )
        };
        t += &format!("kprobes     {}\n", yes_no(self.kprobes));
        t += &match &self.fentry.reason {
            None => "fentry      yes\n".to_string(),
            Some(e) => format!("fentry      no ({e})\n"),
        };
        t += "\n";
        t += &Table::of(&self.rows).render();
        t += "\n";
        for d in &self.detectors {
            let name = &d.detector;
            let mut without = if d.missing_optional.is_empty() {
                String::new()
            } else {
                format!(
                    ", without {} (fallback: {})",
                    d.missing_optional.join(", "),
                    d.fallback.as_deref().unwrap_or("")
                )
            };
            if !d.degraded.is_empty() {
                without += &format!(", without {}", d.degraded.join(", "));
            }
            t += &match (d.runnable, &d.path, &d.reason) {
                (true, Some(path), _) => format!("{name:<13} can run (path: {path}){without}\n"),
                (true, None, _) => format!("{name:<13} can run{without}\n"),
                (false, _, Some(why)) => format!("{name:<13} CANNOT RUN: {why}\n"),
                (false, _, None) => format!("{name:<13} CANNOT RUN\n"),
            };
        }
        t
    }
}

/// Probes one detector's hooks and choices, adding its rows to the hook table.
fn verdict(
    d: &detectors::Entry,
    tracefs: Option<&Tracefs>,
    root: bool,
    prober: &mut bpf::Prober,
    rows: &mut Vec<HookRow>,
) -> Verdict {
    let statuses = match tracefs {
        Some(t) => bpf::probe_hooks(d.spec, t, prober),
        None => Vec::new(),
    };
    // The path this kernel gives the detector, or why it has none.
    let base = match (tracefs, d.probe_path) {
        (Some(t), Some(probe)) => probe(t).map_err(|e| format!("{e:#}")),
        _ => Ok(d.path),
    };
    let chosen: Vec<bpf::Chosen> = match (tracefs, root) {
        (Some(t), true) => d
            .choices
            .iter()
            .map(|c| bpf::probe_choice(c, d.spec.offsets, t, prober))
            .collect(),
        _ => Vec::new(),
    };
    let detector = [d.spec.detector];
    // A capability the detector does without only narrows what it sees.
    let (skips, lacks): (Vec<_>, Vec<_>) = bpf::caps::missing(&detector)
        .into_iter()
        .partition(|c| c.without.is_some());
    let degraded: Vec<String> = skips
        .iter()
        .map(|c| format!("{} ({})", c.name, c.without.unwrap_or("")))
        .collect();
    let runnable = tracefs.is_some()
        && lacks.is_empty()
        && base.is_ok()
        && statuses
            .iter()
            .all(|s| !s.required || s.state != HookState::Missing);
    for s in &statuses {
        let state = match s.state {
            HookState::Found | HookState::Attached => "found".to_string(),
            HookState::Missing if s.required => "MISSING".into(),
            HookState::Missing => format!("missing (fallback: {})", d.fallback),
        };
        rows.push(HookRow {
            detector: d.spec.detector,
            hook: s.hook.clone(),
            state,
            required: if s.required { "yes" } else { "no" }.into(),
            purpose: s.purpose,
        });
    }
    let missing_optional: Vec<String> = statuses
        .iter()
        .filter(|s| !s.required && s.state == HookState::Missing)
        .map(|s| s.hook.clone())
        .collect();
    // Alternatives: the winner's hooks are "found (taken)", the paths before it say
    // why they were refused, the ones after it are not needed.
    for (c, ch) in d.choices.iter().zip(&chosen) {
        let mut past = false;
        for path in c.paths {
            let refused = ch.refused.iter().find(|(p, _)| *p == path.name);
            for h in path.hooks {
                let state = if let Some((_, why)) = refused {
                    format!("refused ({why})")
                } else if ch.path == Some(path.name) && !past {
                    "found (taken)".to_string()
                } else {
                    "not needed".to_string()
                };
                rows.push(HookRow {
                    detector: d.spec.detector,
                    hook: h.label(),
                    state,
                    required: format!("{}: {}", c.name, path.name),
                    purpose: h.purpose,
                });
            }
            past |= ch.path == Some(path.name);
        }
    }
    let path = base.as_ref().ok().map(|base| {
        let parts = chosen
            .iter()
            .map(|c| format!("; {}: {}", c.choice, c.path.unwrap_or(c.otherwise)));
        std::iter::once(base.to_string())
            .chain(parts)
            .collect::<String>()
    });
    Verdict {
        detector: d.spec.detector.into(),
        runnable,
        fallback: (!missing_optional.is_empty()).then_some(d.fallback.into()),
        missing_optional,
        degraded,
        hooks: statuses.into_iter().map(Into::into).collect(),
        choices: chosen.into_iter().map(Into::into).collect(),
        path,
        reason: base.err().or_else(|| {
            (!lacks.is_empty()).then(|| bpf::caps::shortfall(&bpf::caps::needed(&detector), &lacks))
        }),
    }
}
