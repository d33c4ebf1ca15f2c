//! Which of a detector's hooks a run attached and which path each of its choices took:
//! every report carries it (`"hooks"` in JSON) and the metrics expose it
//! (`tracer_hook_attached`, `tracer_hook_path`), so a fleet sees a detector running on
//! its fallback without reading logs.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::bpf::{HookState, Plan, Session};

/// One detector's hooks after its attach step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hooks {
    pub attached: Vec<HookRow>,
    pub paths: Vec<PathRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HookRow {
    /// `category:name` for a tracepoint, `kind/function` otherwise.
    pub hook: String,
    pub required: bool,
    pub attached: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathRow {
    pub choice: Cow<'static, str>,
    /// The path that won, or `none` when the detector does without (its report says
    /// what it does instead).
    pub path: Cow<'static, str>,
}

/// Name of the path of a choice no path of which worked.
pub const NO_PATH: &str = "none";

impl Hooks {
    /// `plan`'s hooks as `session` has them; with no session (the load failed and the
    /// detector runs without eBPF) nothing is attached and no path was taken.
    pub fn of(session: Option<&Session>, plan: &Plan) -> Self {
        let attached = plan
            .spec
            .hooks
            .iter()
            .map(|h| HookRow {
                hook: h.label(),
                required: h.required,
                attached: session.is_some_and(|s| {
                    s.hooks
                        .iter()
                        .any(|st| st.program == h.program && st.state == HookState::Attached)
                }),
            })
            .collect();
        let paths = plan
            .choices
            .iter()
            .map(|c| PathRow {
                choice: c.name.into(),
                path: session
                    .and_then(|s| s.took(c.name))
                    .unwrap_or(NO_PATH)
                    .into(),
            })
            .collect();
        Hooks { attached, paths }
    }
}

/// The programs `session` attached for `plan`: its spec's hooks that attached and
/// the hooks of the path each choice took (for their kernel run time and count).
pub fn programs(session: &Session, plan: &Plan) -> Vec<&'static str> {
    let attached = |p: &str| {
        (session.hooks.iter()).any(|st| st.program == p && st.state == HookState::Attached)
    };
    let mut out: Vec<&'static str> = (plan.spec.hooks.iter())
        .map(|h| h.program)
        .filter(|p| attached(p))
        .collect();
    for c in &plan.choices {
        let took = session.took(c.name);
        for path in c.paths.iter().filter(|p| Some(p.name) == took) {
            out.extend(path.hooks.iter().map(|h| h.program));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::{Choice, Hook, Path, Spec};

    const HOOKS: &[Hook] = &[
        Hook::tracepoint("t_exit", "sched", "sched_process_exit", "exits"),
        Hook::fentry("t_fast", "do_wait", "waits"),
    ];
    const SPEC: Spec = Spec {
        detector: "t",
        prefix: "t",
        hooks: HOOKS,
        offsets: &[],
        ring_bytes: 4096,
        kinds: &[],
    };
    const CHOICES: &[Choice] = &[Choice {
        name: "waits",
        purpose: "time waits",
        paths: &[Path {
            name: "fentry",
            hooks: &[Hook::fentry("t_fast", "do_wait", "waits")],
        }],
        otherwise: "no wait times",
    }];

    #[test]
    fn without_a_session_nothing_is_attached_and_every_choice_took_none() {
        let mut plan = Plan::new(&SPEC);
        plan.choices = CHOICES.to_vec();
        let h = Hooks::of(None, &plan);
        assert_eq!(h.attached.len(), HOOKS.len());
        assert!(h.attached.iter().all(|r| !r.attached));
        assert_eq!(h.paths.len(), 1);
        assert!(h.paths.iter().all(|p| p.path == NO_PATH));
    }
}
