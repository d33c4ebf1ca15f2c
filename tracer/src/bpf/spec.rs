//! What a detector asks of the kernel: its hooks (classic and BTF tracepoints,
//! fentry/fexit, kprobe/kretprobe), alternatives tried in order ([`Choice`]), the
//! tracepoint fields whose offsets its programs read, and what became of each hook.

/// A kernel hook a detector attaches one of its programs to.
///
/// `category` names the hook kind the way libbpf's section prefixes do: a tracefs
/// category ("sock", "sched", ...) is a classic tracepoint; the reserved words
/// `tp_btf`, `fentry`, `fexit`, `kprobe` and `kretprobe` make `name` the BTF
/// tracepoint or the kernel function. The const constructors below spell them.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Program name in the object (`<detector>_<hook>`).
    pub program: &'static str,
    /// tracefs category of a classic tracepoint, or the hook kind (see above).
    pub category: &'static str,
    /// Tracepoint or kernel function name.
    pub name: &'static str,
    /// Without a required hook the detector cannot run; an optional one only narrows
    /// what it sees, and the report says so.
    pub required: bool,
    /// What the detector loses without it (shown by doctor and on errors).
    pub purpose: &'static str,
}

/// How a program hooks the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// `#[tracepoint]`: fields at offsets from tracefs format files.
    TracePoint,
    /// `#[btf_tracepoint]` (tp_btf): the tracepoint's typed arguments.
    BtfTracePoint,
    /// `#[fentry]` / `#[fexit]`: BPF trampolines on a kernel function (BTF, 5.5+).
    FEntry,
    FExit,
    /// `#[kprobe]` / `#[kretprobe]`: CONFIG_KPROBES.
    KProbe,
    KRetProbe,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::TracePoint => "tracepoint",
            HookKind::BtfTracePoint => "tp_btf",
            HookKind::FEntry => "fentry",
            HookKind::FExit => "fexit",
            HookKind::KProbe => "kprobe",
            HookKind::KRetProbe => "kretprobe",
        }
    }

    /// Loaded against the kernel's BTF (fentry, fexit, tp_btf).
    pub fn needs_btf(self) -> bool {
        matches!(
            self,
            HookKind::FEntry | HookKind::FExit | HookKind::BtfTracePoint
        )
    }
}

impl Hook {
    pub fn kind(&self) -> HookKind {
        match self.category {
            "tp_btf" => HookKind::BtfTracePoint,
            "fentry" => HookKind::FEntry,
            "fexit" => HookKind::FExit,
            "kprobe" => HookKind::KProbe,
            "kretprobe" => HookKind::KRetProbe,
            _ => HookKind::TracePoint,
        }
    }

    /// `sock:sock_send_length`, `fentry/tcp_sendmsg`, `tp_btf/sock_exceed_buf_limit`.
    pub fn label(&self) -> String {
        match self.kind() {
            HookKind::TracePoint => format!("{}:{}", self.category, self.name),
            k => format!("{}/{}", k.as_str(), self.name),
        }
    }

    const fn of(
        program: &'static str,
        category: &'static str,
        name: &'static str,
        purpose: &'static str,
    ) -> Hook {
        Hook {
            program,
            category,
            name,
            required: false,
            purpose,
        }
    }

    /// Optional classic tracepoint `category:name`.
    pub const fn tracepoint(
        program: &'static str,
        category: &'static str,
        name: &'static str,
        purpose: &'static str,
    ) -> Hook {
        Hook::of(program, category, name, purpose)
    }

    /// BTF tracepoint (tp_btf) `name`.
    pub const fn btf_tracepoint(
        program: &'static str,
        name: &'static str,
        purpose: &'static str,
    ) -> Hook {
        Hook::of(program, "tp_btf", name, purpose)
    }

    /// fentry on kernel function `function`.
    pub const fn fentry(
        program: &'static str,
        function: &'static str,
        purpose: &'static str,
    ) -> Hook {
        Hook::of(program, "fentry", function, purpose)
    }

    /// fexit on kernel function `function`.
    pub const fn fexit(
        program: &'static str,
        function: &'static str,
        purpose: &'static str,
    ) -> Hook {
        Hook::of(program, "fexit", function, purpose)
    }

    /// kprobe on kernel function `function`.
    pub const fn kprobe(
        program: &'static str,
        function: &'static str,
        purpose: &'static str,
    ) -> Hook {
        Hook::of(program, "kprobe", function, purpose)
    }

    /// kretprobe on kernel function `function`.
    pub const fn kretprobe(
        program: &'static str,
        function: &'static str,
        purpose: &'static str,
    ) -> Hook {
        Hook::of(program, "kretprobe", function, purpose)
    }
}

/// One way to serve a [`Choice`]: hooks that must all load and attach.
#[derive(Clone, Copy, Debug)]
pub struct Path {
    /// Short name reports and doctor show ("fentry", "kprobe", "tracepoints").
    pub name: &'static str,
    pub hooks: &'static [Hook],
}

/// Alternatives for one purpose, tried in order: the first path whose hooks all
/// exist, load and attach wins; the others are never loaded. `Session::took` says
/// which one won, `tracer doctor` probes them the same way.
#[derive(Clone, Copy, Debug)]
pub struct Choice {
    /// Key and label ("pressure edges").
    pub name: &'static str,
    pub purpose: &'static str,
    pub paths: &'static [Path],
    /// What the detector does when no path works (the report says it).
    pub otherwise: &'static str,
}

/// Which path of a [`Choice`] won, and why the ones before it did not.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Chosen {
    pub choice: &'static str,
    pub purpose: &'static str,
    /// None: no path worked; the detector falls back to `otherwise`.
    pub path: Option<&'static str>,
    /// (path, why not) for every path tried before the winner.
    pub refused: Vec<(&'static str, String)>,
    pub otherwise: &'static str,
}

impl Chosen {
    /// The outcome for `choice`: `path` won (None: none did) after `refused`.
    pub fn of(
        choice: &Choice,
        path: Option<&'static str>,
        refused: Vec<(&'static str, String)>,
    ) -> Chosen {
        Chosen {
            choice: choice.name,
            purpose: choice.purpose,
            path,
            refused,
            otherwise: choice.otherwise,
        }
    }

    /// "fentry", or "kprobe (fentry: EPERM ...)", or "none (fentry: ...; kprobe: ...)".
    pub fn describe(&self) -> String {
        let why = self
            .refused
            .iter()
            .map(|(p, e)| format!("{p}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        match (self.path, why.is_empty()) {
            (Some(p), true) => p.to_string(),
            (Some(p), false) => format!("{p} ({why})"),
            (None, _) => format!("none, {} ({why})", self.otherwise),
        }
    }
}

/// A tracepoint field whose offset a program reads from the global `global`.
#[derive(Clone, Copy, Debug)]
pub struct Offset {
    pub global: &'static str,
    pub category: &'static str,
    pub event: &'static str,
    pub field: &'static str,
}

/// What a detector needs from the kernel.
pub struct Spec {
    pub detector: &'static str,
    /// Its programs are named `<prefix>_<hook>` in the object (checked by a unit test
    /// for every detector); the loader keeps full size only for the maps they use.
    pub prefix: &'static str,
    pub hooks: &'static [Hook],
    pub offsets: &'static [Offset],
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// The ring-buffer record kinds its programs send: the run loop hands each record
    /// to the detector that owns its kind (a unit test checks each kind has one owner).
    pub kinds: &'static [tracer_common::EventKind],
}

impl Spec {
    /// Whether `program` is one of this detector's programs.
    pub fn owns(&self, program: &str) -> bool {
        program
            .strip_prefix(self.prefix)
            .is_some_and(|rest| rest.starts_with('_'))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookState {
    Attached,
    /// Present in tracefs (doctor does not attach).
    Found,
    Missing,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct HookStatus {
    pub hook: String,
    pub kind: HookKind,
    pub program: &'static str,
    pub required: bool,
    pub state: HookState,
    pub purpose: &'static str,
    /// Why it is missing (doctor's probes), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_kinds_and_labels() {
        let tp = Hook::tracepoint("tcp_drop", "skb", "kfree_skb", "x");
        assert_eq!(
            (tp.kind(), tp.label()),
            (HookKind::TracePoint, "skb:kfree_skb".into())
        );
        for (h, kind, label) in [
            (
                Hook::btf_tracepoint("p", "sock_exceed_buf_limit", "x"),
                HookKind::BtfTracePoint,
                "tp_btf/sock_exceed_buf_limit",
            ),
            (
                Hook::fentry("p", "tcp_sendmsg", "x"),
                HookKind::FEntry,
                "fentry/tcp_sendmsg",
            ),
            (
                Hook::fexit("p", "tcp_sendmsg", "x"),
                HookKind::FExit,
                "fexit/tcp_sendmsg",
            ),
            (
                Hook::kprobe("p", "tcp_sendmsg", "x"),
                HookKind::KProbe,
                "kprobe/tcp_sendmsg",
            ),
            (
                Hook::kretprobe("p", "tcp_sendmsg", "x"),
                HookKind::KRetProbe,
                "kretprobe/tcp_sendmsg",
            ),
        ] {
            assert_eq!(h.kind(), kind);
            assert_eq!(h.label(), label);
            assert!(!h.required);
        }
    }

    #[test]
    fn chosen_names_the_path_and_why_the_others_were_refused() {
        let c = Chosen {
            choice: "send latency",
            purpose: "p",
            path: Some("tracepoints"),
            refused: vec![("fentry", "EPERM".into()), ("kprobe", "no kprobes".into())],
            otherwise: "not measured",
        };
        assert_eq!(
            c.describe(),
            "tracepoints (fentry: EPERM; kprobe: no kprobes)"
        );
        let none = Chosen { path: None, ..c };
        assert!(
            none.describe()
                .starts_with("none, not measured (fentry: EPERM")
        );
    }
}
