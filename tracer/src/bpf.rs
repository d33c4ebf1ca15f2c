//! Loading the embedded eBPF object and attaching a detector's hooks: privilege check,
//! tracefs, field offsets from format files passed in as globals, hook kinds (classic
//! and BTF tracepoints, fentry/fexit, kprobe/kretprobe), probing with fallbacks
//! ([`Choice`]: the first of several hook sets that loads wins), and the lost-event
//! counter.
use std::fs;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{KProbe, Program, TracePoint},
};

use crate::tracefs::Tracefs;

/// The kernel programs, built by build.rs and embedded: nothing to install beside the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
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
    pub hooks: &'static [Hook],
    pub offsets: &'static [Offset],
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
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

/// A loaded detector: drop it and every program is detached and unloaded.
pub struct Session {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// The path each [`Choice`] took, in the order given to [`start_with`].
    pub chosen: Vec<Chosen>,
    pub tracefs: Tracefs,
}

impl Drop for Session {
    /// Detaching a tracepoint program waits for the kernel to let go of it (about
    /// 70 ms here, mostly an RCU grace period, not CPU). All programs detach in
    /// parallel, so a detector with 20 hooks exits in ~0.1 s instead of ~1.5 s.
    fn drop(&mut self) {
        std::thread::scope(|s| {
            for (name, prog) in self.ebpf.programs_mut() {
                if prog.fd().is_err() {
                    continue; // another detector's program, never loaded
                }
                s.spawn(move || {
                    let r = match prog {
                        Program::TracePoint(p) => p.unload(),
                        Program::BtfTracePoint(p) => p.unload(),
                        Program::RawTracePoint(p) => p.unload(),
                        Program::FEntry(p) => p.unload(),
                        Program::FExit(p) => p.unload(),
                        Program::KProbe(p) => p.unload(),
                        _ => Ok(()), // dropped with the object
                    };
                    if let Err(e) = r {
                        log::debug!("detaching {name}: {e}");
                    }
                });
            }
        });
    }
}

impl Session {
    /// Hooks that were optional and are missing, for the report's caveats.
    pub fn missing(&self) -> impl Iterator<Item = &HookStatus> {
        self.hooks.iter().filter(|h| h.state == HookState::Missing)
    }

    /// The path that won `choice` (None: no path worked, or it was not asked for).
    pub fn took(&self, choice: &str) -> Option<&'static str> {
        self.chosen
            .iter()
            .find(|c| c.choice == choice)
            .and_then(|c| c.path)
    }

    pub fn chosen(&self, choice: &str) -> Option<&Chosen> {
        self.chosen.iter().find(|c| c.choice == choice)
    }

    /// Takes a map out of the object for the detector to own, or says it is missing.
    pub fn take_map(&mut self, name: &str) -> Result<aya::maps::Map> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("map {name} is missing from the eBPF object"))
    }
}

/// Fails with one sentence when the process cannot load tracing programs.
pub fn require_privileges(detector: &str) -> Result<()> {
    let missing = missing_caps();
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "`tracer {detector}` needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs, \
         and this process lacks {}; run it as root, e.g. `sudo tracer {detector}`",
        missing.join(" and ")
    )
}

/// Capabilities missing for loading and attaching tracepoint programs.
pub fn missing_caps() -> Vec<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let eff = effective_caps();
    let has = |c: u32| eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Checks which of `spec`'s hooks exist (doctor). Tracepoints are looked up in
/// tracefs; other kinds are loaded alone into `probe` (see [`Prober`]).
pub fn probe_hooks(spec: &Spec, tracefs: &Tracefs, probe: &mut Prober) -> Vec<HookStatus> {
    spec.hooks
        .iter()
        .map(|h| {
            match probe
                .check(h, tracefs)
                .and_then(|()| usable(spec.offsets, tracefs, h))
            {
                Ok(()) => status(h, HookState::Found),
                Err(why) => HookStatus {
                    why: Some(why),
                    ..status(h, HookState::Missing)
                },
            }
        })
        .collect()
}

/// Why a tracepoint that exists cannot be used: a field one of `offsets` reads is not
/// in its format on this kernel (e.g. skb:kfree_skb's `reason`, added in 5.17). Its
/// programs would read the wrong bytes, so the hook counts as missing.
pub fn lacking_field(
    offsets: &[Offset],
    tracefs: &Tracefs,
    category: &str,
    event: &str,
) -> Option<String> {
    let mut wanted = offsets
        .iter()
        .filter(|o| o.category == category && o.event == event)
        .peekable();
    wanted.peek()?;
    let format = tracefs.format(category, event).ok()?;
    wanted.find(|o| format.offset(o.field).is_err()).map(|o| {
        format!(
            "tracepoint {category}:{event} has no field `{}` on this kernel",
            o.field
        )
    })
}

/// A tracepoint hook whose event lacks a field its program reads is not usable.
fn usable(offsets: &[Offset], tracefs: &Tracefs, h: &Hook) -> Result<(), String> {
    match h.kind() {
        HookKind::TracePoint => {
            lacking_field(offsets, tracefs, h.category, h.name).map_or(Ok(()), Err)
        }
        _ => Ok(()),
    }
}

/// Paths of every [`Choice`] not to take (comma-separated names, e.g. `fentry` or
/// `fentry,kprobe`): to run a fallback on a kernel that has the fast path (tests of
/// the fallbacks, or a kernel whose trampolines misbehave). Reports name them.
pub const AVOID_ENV: &str = "TRACER_AVOID_PATHS";

fn avoided() -> Vec<String> {
    std::env::var(AVOID_ENV)
        .map(|v| {
            v.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Which path of `choice` would win here (doctor), probed as [`probe_hooks`] does.
pub fn probe_choice(
    choice: &Choice,
    offsets: &[Offset],
    tracefs: &Tracefs,
    probe: &mut Prober,
) -> Chosen {
    let mut refused = Vec::new();
    let avoid = avoided();
    for path in choice.paths {
        if avoid.iter().any(|a| a == path.name) {
            refused.push((path.name, format!("avoided ({AVOID_ENV})")));
            continue;
        }
        match path.hooks.iter().try_for_each(|h| {
            probe
                .check(h, tracefs)
                .and_then(|()| usable(offsets, tracefs, h))
        }) {
            Ok(()) => {
                return Chosen {
                    choice: choice.name,
                    purpose: choice.purpose,
                    path: Some(path.name),
                    refused,
                    otherwise: choice.otherwise,
                };
            }
            Err(why) => refused.push((path.name, why)),
        }
    }
    Chosen {
        choice: choice.name,
        purpose: choice.purpose,
        path: None,
        refused,
        otherwise: choice.otherwise,
    }
}

fn status(h: &Hook, state: HookState) -> HookStatus {
    HookStatus {
        hook: h.label(),
        kind: h.kind(),
        program: h.program,
        required: h.required,
        state,
        purpose: h.purpose,
        why: None,
    }
}

/// Cheap checks whether a hook can be used here: tracefs for classic tracepoints;
/// the kprobe PMU and the function's symbol for kprobes; kernel BTF plus loading the
/// one program (never attached) for fentry, fexit and tp_btf, in a copy of the
/// object whose maps all have one entry (a few KiB, not the detectors' full maps).
#[derive(Default)]
pub struct Prober {
    small: Option<Result<Ebpf, String>>,
    btf: Option<Result<Btf, String>>,
}

impl Prober {
    fn btf(&mut self) -> Result<&Btf, String> {
        self.btf
            .get_or_insert_with(|| Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn small(&mut self) -> Result<&mut Ebpf, String> {
        if self.small.is_none() {
            // Before self.btf is parsed: the loader's own copy is freed on return.
            self.small = Some(load_small());
        }
        match &mut self.small {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => Err(e.clone()),
            None => Err("the probe object was not loaded".into()),
        }
    }

    /// Ok when `h` exists and (for BTF-based kinds) its program loads here.
    pub fn check(&mut self, h: &Hook, tracefs: &Tracefs) -> Result<(), String> {
        match h.kind() {
            HookKind::TracePoint => {
                if tracefs.has_tracepoint(h.category, h.name) {
                    Ok(())
                } else {
                    Err(format!("tracepoint {} is missing", h.label()))
                }
            }
            HookKind::KProbe | HookKind::KRetProbe => {
                if !kprobes_available(Some(tracefs)) {
                    return Err("this kernel has no kprobes (CONFIG_KPROBES)".into());
                }
                if !kernel_function_exists(h.name) {
                    return Err(format!("no kernel function {}", h.name));
                }
                let ebpf = self.small()?;
                let p: &mut KProbe = program(ebpf, h.program).map_err(|e| format!("{e:#}"))?;
                let r = p.load().map_err(|e| short_error(&e));
                let _ = p.unload();
                r
            }
            HookKind::FEntry | HookKind::FExit | HookKind::BtfTracePoint => {
                self.small()?;
                self.btf()?;
                let (Some(Ok(btf)), Some(Ok(ebpf))) = (&self.btf, &mut self.small) else {
                    return Err("no kernel BTF".into());
                };
                let r = load_btf_program(ebpf, h, btf).map_err(|e| short_error(&e));
                if let Some(p) = ebpf.program_mut(h.program) {
                    let _ = unload(p);
                }
                r
            }
        }
    }
}

/// Whether `name` is a kernel function kprobes can hook: available_filter_functions
/// where it is readable, else /proc/kallsyms (text symbols).
fn kernel_function_exists(name: &str) -> bool {
    let has = |text: &str, field: usize| {
        text.lines()
            .any(|l| l.split_whitespace().nth(field).is_some_and(|f| f == name))
    };
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if let Ok(t) = fs::read_to_string(format!("{dir}/available_filter_functions")) {
            return has(&t, 0);
        }
    }
    fs::read_to_string("/proc/kallsyms").is_ok_and(|t| {
        t.lines().any(|l| {
            let mut w = l.split_whitespace().skip(1);
            matches!(w.next(), Some("t" | "T")) && w.next() == Some(name)
        })
    })
}

/// The object with every map at one entry (ring buffers at one page): what probing
/// a program's load needs, at a fraction of a detector's memory.
fn load_small() -> Result<Ebpf, String> {
    let mut loader = EbpfLoader::new();
    let names = object_maps(OBJECT);
    for (name, ty) in &names {
        loader.map_max_entries(name, if *ty == RINGBUF { 4096 } else { 1 });
    }
    loader
        .load(OBJECT)
        .map_err(|e| format!("loading the eBPF object: {e}"))
}

const RINGBUF: u32 = 27; // BPF_MAP_TYPE_RINGBUF

/// Loads a fentry, fexit or tp_btf program against its BTF target.
fn load_btf_program(
    ebpf: &mut Ebpf,
    h: &Hook,
    btf: &Btf,
) -> Result<(), aya::programs::ProgramError> {
    let Some(p) = ebpf.program_mut(h.program) else {
        return Err(aya::programs::ProgramError::UnexpectedProgramType);
    };
    match (h.kind(), p) {
        (HookKind::FEntry, Program::FEntry(p)) => p.load(h.name, btf),
        (HookKind::FExit, Program::FExit(p)) => p.load(h.name, btf),
        (HookKind::BtfTracePoint, Program::BtfTracePoint(p)) => p.load(h.name, btf),
        _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

fn unload(p: &mut Program) -> Result<(), aya::programs::ProgramError> {
    match p {
        Program::TracePoint(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        _ => Ok(()),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program>,
{
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is not in the eBPF object"))?;
    p.try_into()
        .map_err(|_| anyhow!("program {name} is not of the kind its hook says"))
}

/// First line of a load error, without aya's empty "Verifier output:" tail.
fn short_error(e: &aya::programs::ProgramError) -> String {
    let s = e.to_string();
    let first = s.lines().next().unwrap_or(&s);
    first
        .split(". Verifier output:")
        .next()
        .unwrap_or(first)
        .to_string()
}

/// Loads and attaches hook `h` (any kind) in `ebpf`.
fn attach(ebpf: &mut Ebpf, h: &Hook, btf: &mut Option<Result<Btf, String>>) -> Result<()> {
    match h.kind() {
        HookKind::TracePoint => attach_tracepoint(ebpf, h.program, h.category, h.name),
        HookKind::KProbe | HookKind::KRetProbe => {
            let p: &mut KProbe = program(ebpf, h.program)?;
            p.load()
                .map_err(|e| anyhow!("loading {}: {}", h.program, verifier_summary(&e)))?;
            p.attach(h.name, 0)
                .map_err(|e| anyhow!("attaching {}: {e}", h.label()))?;
            Ok(())
        }
        HookKind::FEntry | HookKind::FExit | HookKind::BtfTracePoint => {
            let btf = btf
                .get_or_insert_with(|| {
                    Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))
                })
                .as_ref()
                .map_err(|e| anyhow!("{e}"))?;
            load_btf_program(ebpf, h, btf).map_err(|e| {
                anyhow!(
                    "loading {} for {}: {}",
                    h.program,
                    h.label(),
                    short_error(&e)
                )
            })?;
            let r = match ebpf.program_mut(h.program) {
                Some(Program::FEntry(p)) => p.attach().map(drop),
                Some(Program::FExit(p)) => p.attach().map(drop),
                Some(Program::BtfTracePoint(p)) => p.attach().map(drop),
                _ => Ok(()),
            };
            r.map_err(|e| anyhow!("attaching {}: {e}", h.label()))
        }
    }
}

/// Tries `choice`'s paths in order in the loaded object; keeps the first whose hooks
/// all exist, load and attach, and unloads what a failed path had attached.
fn take_choice(
    ebpf: &mut Ebpf,
    choice: &Choice,
    offsets: &[Offset],
    tracefs: &Tracefs,
    btf: &mut Option<Result<Btf, String>>,
) -> Chosen {
    let mut refused = Vec::new();
    let avoid = avoided();
    'paths: for path in choice.paths {
        if avoid.iter().any(|a| a == path.name) {
            refused.push((path.name, format!("avoided ({AVOID_ENV})")));
            continue;
        }
        // Cheap existence checks first (no load for a tracepoint or kprobe that is not there).
        for h in path.hooks {
            let missing = match h.kind() {
                HookKind::TracePoint if !tracefs.has_tracepoint(h.category, h.name) => {
                    Some(format!("tracepoint {} is missing", h.label()))
                }
                HookKind::TracePoint => lacking_field(offsets, tracefs, h.category, h.name),
                HookKind::KProbe | HookKind::KRetProbe => (!kprobes_available(Some(tracefs)))
                    .then(|| "this kernel has no kprobes (CONFIG_KPROBES)".to_string()),
                _ => None,
            };
            if let Some(why) = missing {
                refused.push((path.name, why));
                continue 'paths;
            }
        }
        let mut done: Vec<&str> = Vec::new();
        for h in path.hooks {
            if let Err(e) = attach(ebpf, h, btf) {
                for p in done.iter().chain([&h.program]) {
                    if let Some(p) = ebpf.program_mut(p) {
                        let _ = unload(p);
                    }
                }
                log::debug!("{}: path {} refused: {e:#}", choice.name, path.name);
                refused.push((path.name, format!("{e:#}")));
                continue 'paths;
            }
            done.push(h.program);
        }
        log::debug!("{}: path {} attached", choice.name, path.name);
        return Chosen {
            choice: choice.name,
            purpose: choice.purpose,
            path: Some(path.name),
            refused,
            otherwise: choice.otherwise,
        };
    }
    log::warn!(
        "{}: no path works here ({}); {}",
        choice.name,
        refused
            .iter()
            .map(|(p, e)| format!("{p}: {e}"))
            .collect::<Vec<_>>()
            .join("; "),
        choice.otherwise
    );
    Chosen {
        choice: choice.name,
        purpose: choice.purpose,
        path: None,
        refused,
        otherwise: choice.otherwise,
    }
}

/// Loads the object with `spec`'s offsets and attaches its hooks. `extra` sets
/// detector-specific `Global<u32>`s (in-kernel filters and the like).
pub fn start(spec: &Spec, extra: &[(&'static str, u32)]) -> Result<Session> {
    start_with(spec, &[], extra)
}

/// [`start`], then each of `choices` takes the first of its paths that loads and
/// attaches (`Session::took` names it), all in the one loaded object.
pub fn start_with(
    spec: &Spec,
    choices: &[Choice],
    extra: &[(&'static str, u32)],
) -> Result<Session> {
    require_privileges(spec.detector)?;
    let tracefs = Tracefs::open()?;

    // Required hooks first: a missing one is the whole answer.
    for h in spec.hooks.iter().filter(|h| h.required) {
        if !tracefs.has_tracepoint(h.category, h.name) {
            bail!(
                "tracepoint {}:{} is missing on this kernel, and `tracer {}` needs it to {}; \
                 `tracer doctor` lists what this kernel has",
                h.category,
                h.name,
                spec.detector,
                h.purpose
            );
        }
        if let Some(why) = lacking_field(spec.offsets, &tracefs, h.category, h.name) {
            bail!(
                "{why}, and `tracer {}` needs it to {}; `tracer doctor` lists what this kernel has",
                spec.detector,
                h.purpose
            );
        }
    }

    // Offsets of fields a kernel lacks stay 0: their (optional) hooks are not attached.
    let mut offsets = Vec::with_capacity(spec.offsets.len());
    for o in spec.offsets {
        let off = tracefs
            .format(o.category, o.event)
            .and_then(|f| f.offset(o.field))
            .unwrap_or(0);
        offsets.push((o.global, off));
    }
    let extra: Vec<(&'static str, u32)> = extra.to_vec();
    let log_level = log::max_level() as u8;
    let wakeup_bytes = u64::from(spec.ring_bytes / 4);

    // EbpfLoader::new() parses the kernel's BTF (about 8 MiB of heap while it lives).
    // The loader is dropped right after the load, so the fentry/tp_btf loads below
    // parse their copy into the memory it freed: two copies alive at once (or a
    // second full object loaded to probe fentry) raised the peak RSS from ~23 to
    // ~44 MiB.
    let mut loader = EbpfLoader::new();
    loader.map_max_entries("EVENTS", spec.ring_bytes);
    // The object holds every detector's maps; the ones this detector's programs never
    // touch are created with one entry, so a load costs only what it uses.
    let prefixes: Vec<&str> = spec
        .hooks
        .iter()
        .chain(
            choices
                .iter()
                .flat_map(|c| c.paths.iter().flat_map(|p| p.hooks)),
        )
        .map(|h| h.program.split('_').next().unwrap_or(h.program))
        .collect();
    let unused = unused_maps(OBJECT, &prefixes);
    for name in &unused {
        loader.map_max_entries(name, 1);
    }
    log::debug!(
        "{} maps of other detectors shrunk to one entry",
        unused.len()
    );
    loader.override_global("AYA_LOG_LEVEL", &log_level, false);
    loader.override_global("WAKEUP_BYTES", &wakeup_bytes, true);
    for (name, off) in &offsets {
        loader.override_global(name, off, true);
    }
    for (name, v) in &extra {
        loader.override_global(name, v, true);
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| {
        anyhow!("loading the eBPF object failed: {e}; run `tracer doctor` to see what this kernel allows")
    })?;
    drop(loader);

    let mut hooks = Vec::new();
    let mut btf = None;
    for h in spec.hooks {
        if h.kind() == HookKind::TracePoint && !tracefs.has_tracepoint(h.category, h.name) {
            log::warn!(
                "tracepoint {}:{} is missing; {} will not be seen",
                h.category,
                h.name,
                h.purpose
            );
            hooks.push(status(h, HookState::Missing));
            continue;
        }
        if let Err(why) = usable(spec.offsets, &tracefs, h) {
            log::warn!("{why}; {} will not be seen", h.purpose);
            hooks.push(HookStatus {
                why: Some(why),
                ..status(h, HookState::Missing)
            });
            continue;
        }
        match attach(&mut ebpf, h, &mut btf) {
            Ok(()) => hooks.push(status(h, HookState::Attached)),
            Err(e) if h.required => {
                bail!(
                    "{e:#}; `tracer {}` cannot run without it; `tracer doctor` shows what this \
                     kernel allows",
                    spec.detector
                )
            }
            // An optional hook that exists but does not load here narrows what the
            // detector sees; the report lists it as missing.
            Err(e) => {
                log::warn!("{e:#}; {} will not be seen", h.purpose);
                hooks.push(HookStatus {
                    why: Some(format!("{e:#}")),
                    ..status(h, HookState::Missing)
                });
            }
        }
    }
    let chosen = choices
        .iter()
        .map(|c| take_choice(&mut ebpf, c, spec.offsets, &tracefs, &mut btf))
        .collect();
    log::debug!("{}: {} hooks attached", spec.detector, hooks.len());
    Ok(Session {
        ebpf,
        hooks,
        chosen,
        tracefs,
    })
}

/// Map types whose size is only memory: safe to create with one entry when no loaded
/// program uses them (ring buffers and the like keep their size).
const SHRINKABLE: &[u32] = &[
    1,  // BPF_MAP_TYPE_HASH
    2,  // BPF_MAP_TYPE_ARRAY
    5,  // BPF_MAP_TYPE_PERCPU_HASH
    6,  // BPF_MAP_TYPE_PERCPU_ARRAY
    9,  // BPF_MAP_TYPE_LRU_HASH
    10, // BPF_MAP_TYPE_LRU_PERCPU_HASH
];

/// Every map of the `maps` section of `object` with its BPF map type.
fn object_maps(object: &[u8]) -> Vec<(String, u32)> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let Ok(file) = object::File::parse(object) else {
        return Vec::new();
    };
    let Some(maps) = file.section_by_name("maps") else {
        return Vec::new();
    };
    let data = maps.data().unwrap_or(&[]);
    file.symbols()
        .filter(|s| s.section_index() == Some(maps.index()))
        .filter_map(|s| {
            let at = usize::try_from(s.address()).ok()?;
            let ty = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?);
            Some((s.name().ok()?.to_string(), ty))
        })
        .collect()
}

/// The maps in the `maps` section of `object` that no program named `<prefix>_*` (for
/// a prefix in `prefixes`) and no shared function references, from the programs'
/// relocations. Unparseable input yields no names (nothing is shrunk).
fn unused_maps(object: &[u8], prefixes: &[&str]) -> Vec<String> {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};
    let Ok(file) = object::File::parse(object) else {
        return Vec::new();
    };
    let Some(maps) = file.section_by_name("maps") else {
        return Vec::new();
    };
    let maps_data = maps.data().unwrap_or(&[]);
    let ours = |name: &str| {
        prefixes
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|r| r.starts_with('_')))
    };
    let mut used = std::collections::BTreeSet::new();
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        // Program symbols of this section: (start, end, ours). Shared functions (in
        // .text) count as ours: any program may call them.
        let shared = section.name().is_ok_and(|n| n.starts_with(".text"));
        let progs: Vec<(u64, u64, bool)> = file
            .symbols()
            .filter(|s| s.section_index() == Some(section.index()) && s.size() > 0)
            .map(|s| {
                let name = s.name().unwrap_or("");
                (s.address(), s.address() + s.size(), shared || ours(name))
            })
            .collect();
        for (offset, reloc) in section.relocations() {
            let RelocationTarget::Symbol(idx) = reloc.target() else {
                continue;
            };
            let Ok(sym) = file.symbol_by_index(idx) else {
                continue;
            };
            if sym.section_index() != Some(maps.index()) {
                continue;
            }
            let keep = shared
                || progs
                    .iter()
                    .any(|&(a, b, ours)| ours && (a..b).contains(&offset));
            if keep {
                used.insert(sym.name().unwrap_or("").to_string());
            }
        }
    }
    file.symbols()
        .filter(|s| s.section_index() == Some(maps.index()))
        .filter_map(|s| {
            let name = s.name().ok()?;
            let at = usize::try_from(s.address()).ok()?;
            let ty = u32::from_le_bytes(maps_data.get(at..at + 4)?.try_into().ok()?);
            (!used.contains(name) && SHRINKABLE.contains(&ty)).then(|| name.to_string())
        })
        .collect()
}

pub fn attach_tracepoint(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<()> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} is not in the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a tracepoint program"))?;
    prog.load().map_err(|e| {
        anyhow!(
            "loading {program} for {category}:{name}: {}",
            verifier_summary(&e)
        )
    })?;
    prog.attach(category, name)
        .map_err(|e| anyhow!("attaching {category}:{name}: {e}"))?;
    Ok(())
}

/// The verifier's log is long; keep its last lines, which say what went wrong.
fn verifier_summary(e: &aya::programs::ProgramError) -> String {
    let s = e.to_string();
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() <= 6 {
        return s;
    }
    format!("{} ... {}", lines[0], lines[lines.len() - 4..].join(" | "))
}

/// A per-CPU counter of the shared kernel code, summed over the CPUs: `LOST` (records
/// the kernel could not put on the full ring buffer) or `READ_ERRORS` (kernel reads
/// that failed; see tracer-ebpf/src/common.rs).
pub struct CpuSum {
    map: PerCpuArray<aya::maps::MapData, u64>,
}

impl CpuSum {
    pub const LOST: &str = "LOST";
    pub const READ_ERRORS: &str = "READ_ERRORS";

    pub fn take(ebpf: &mut Ebpf, name: &str) -> Result<Self> {
        let map = ebpf
            .take_map(name)
            .with_context(|| format!("map {name} is missing from the eBPF object"))?;
        Ok(Self {
            map: PerCpuArray::try_from(map)?,
        })
    }

    pub fn get(&self) -> u64 {
        self.map.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

/// Whether this kernel has kprobes: perf's kprobe PMU or tracefs kprobe_events exist
/// only with CONFIG_KPROBES.
pub fn kprobes_available(tracefs: Option<&Tracefs>) -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || tracefs.is_some_and(|t| t.root().join("kprobe_events").exists())
}

/// Whether fentry programs load here: loads the probe program (alone, in the
/// one-entry-maps object) against `func`. Err carries the reason (e.g. EPERM under
/// lockdown, no BTF).
pub fn fentry_available(
    probe: &mut Prober,
    tracefs: &Tracefs,
    func: &'static str,
) -> Result<(), String> {
    probe.check(&Hook::fentry("probe_fentry", func, "probe"), tracefs)
}

/// Kernel release and whether BTF is there, for doctor and reports.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn has_btf() -> bool {
    std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
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

    #[test]
    fn every_program_of_a_spec_or_choice_is_in_the_object() {
        let names: Vec<String> = object_programs();
        for h in crate::tcp::SPEC.hooks.iter().chain(
            crate::tcp::CHOICES
                .iter()
                .flat_map(|c| c.paths.iter().flat_map(|p| p.hooks)),
        ) {
            assert!(
                names.iter().any(|n| n == h.program),
                "{} missing: {names:?}",
                h.program
            );
        }
    }

    fn object_programs() -> Vec<String> {
        use object::{Object, ObjectSymbol, SymbolKind};
        let file = object::File::parse(OBJECT).expect("object");
        file.symbols()
            .filter(|s| s.kind() == SymbolKind::Text)
            .filter_map(|s| s.name().ok().map(String::from))
            .collect()
    }

    #[test]
    fn maps_of_other_detectors_are_found_unused() {
        let theirs = unused_maps(OBJECT, &["nobody"]);
        assert!(theirs.iter().any(|m| m == "ZOMBIES_PARENT"), "{theirs:?}");
        // Ring buffers keep their size whatever uses them.
        assert!(!theirs.iter().any(|m| m == "EVENTS"), "{theirs:?}");
        let ours = unused_maps(OBJECT, &["zombies"]);
        for m in [
            "ZOMBIES_PARENT",
            "ZOMBIES_EXITED",
            "ZOMBIES_COUNTERS",
            "ZOMBIES_COUNTS",
            "LOST",
        ] {
            assert!(
                !ours.iter().any(|u| u == m),
                "{m} is used by zombies: {ours:?}"
            );
        }
    }
}
