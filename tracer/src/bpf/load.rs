//! Loading the object with a detector's field offsets and globals, attaching its hooks
//! (each [`Choice`] takes the first path that works), detaching them all on drop, and
//! the per-CPU counters every detector reads.
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    maps::PerCpuArray,
    programs::{KProbe, Program, TracePoint},
};

use super::{
    OBJECT,
    btf::{has_core_relocations, kernel_btf, load_btf_program, loader_without_btf},
    caps,
    maps::unused_maps,
    probe::{AVOID_ENV, avoided, kprobes_available, lacking_field, status, usable},
    program::{program, short_error, unload},
    spec::{Choice, Chosen, Hook, HookKind, HookState, HookStatus, Offset, Spec},
};
use crate::tracefs::Tracefs;

/// A loaded detector: drop it and every program is detached and unloaded.
pub struct Session {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// The path each [`Choice`] took, in the order the plans gave them.
    pub chosen: Vec<Chosen>,
    pub tracefs: Tracefs,
}

impl Drop for Session {
    /// Detaching a tracepoint program waits for the kernel to let go of it (RCU
    /// grace periods, not CPU). All programs detach in parallel threads; the kernel
    /// still serializes part of it (trace's event_mutex), so inodes' 23 hooks take
    /// ~50 ms on a quiet machine and ~0.9 s when both cores are busy (2026-12-01;
    /// one after the other: 0.8-2.0 s busy).
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
    /// `spec`'s hooks that were optional and are missing, for its report's caveats.
    pub fn missing<'a>(&'a self, spec: &'a Spec) -> impl Iterator<Item = &'a HookStatus> {
        self.hooks
            .iter()
            .filter(move |h| h.state == HookState::Missing && spec.owns(h.program))
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

/// Fails with one sentence when the process lacks a capability that `tracer
/// {command}` running `detectors` needs, naming each missing one and what it is for.
pub fn require_privileges(command: &str, detectors: &[&str]) -> Result<()> {
    let missing = caps::missing(detectors);
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "`tracer {command}` {}; run it as root, e.g. `sudo tracer {command}`, or give it \
         those capabilities (README: Privileges)",
        caps::shortfall(&caps::needed(detectors), &missing)
    )
}

/// Capabilities of the whole set (every detector) that this process lacks.
pub fn missing_caps() -> Vec<&'static str> {
    caps::missing_any().iter().map(|c| c.name).collect()
}

/// Loads and attaches hook `h` (any kind) in `ebpf`.
fn attach(ebpf: &mut Ebpf, h: &Hook, btf: Option<&Result<Btf, String>>) -> Result<()> {
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
                .context("the kernel's BTF was not read")?
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
    btf: Option<&Result<Btf, String>>,
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
        return Chosen::of(choice, Some(path.name), refused);
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
    Chosen::of(choice, None, refused)
}

/// What one detector asks the loader for: its spec, its choices of paths, and its
/// `Global<u32>`s (in-kernel filters and the like).
#[derive(Clone)]
pub struct Plan {
    pub spec: &'static Spec,
    pub choices: Vec<Choice>,
    pub globals: Vec<(&'static str, u32)>,
}

impl Plan {
    pub fn new(spec: &'static Spec) -> Self {
        Self {
            spec,
            choices: Vec::new(),
            globals: Vec::new(),
        }
    }
}

/// The ring buffer for `plans`: each detector's size, summed and rounded up to a power
/// of two (the kernel's rule for ring buffers).
pub fn ring_size(plans: &[Plan]) -> u32 {
    match plans {
        [one] => one.spec.ring_bytes,
        _ => plans
            .iter()
            .map(|p| p.spec.ring_bytes)
            .sum::<u32>()
            .next_power_of_two(),
    }
}

/// Loads the object once for every plan (each with its offsets and globals; maps no
/// planned program uses are created with one entry), attaches each plan's hooks, and
/// each of its choices takes the first of its paths that loads and attaches
/// (`Session::took` names it). The caller checked the privileges
/// ([`require_privileges`]).
pub fn start_many(plans: &[Plan]) -> Result<Session> {
    let tracefs = Tracefs::open()?;

    // Required hooks first: a missing one is the whole answer.
    for spec in plans.iter().map(|p| p.spec) {
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
    }

    // Offsets of fields a kernel lacks stay 0: their (optional) hooks are not attached.
    let mut globals: Vec<(&'static str, u32)> = Vec::new();
    for plan in plans {
        for o in plan.spec.offsets {
            let off = tracefs
                .format(o.category, o.event)
                .and_then(|f| f.offset(o.field))
                .unwrap_or(0);
            globals.push((o.global, off));
        }
        globals.extend(plan.globals.iter().copied());
    }
    let log_level = log::max_level() as u8;
    let ring_bytes = ring_size(plans);
    let wakeup_bytes = u64::from(ring_bytes / 4);

    // The kernel's BTF: the loader's own copy is dropped at once (see
    // `loader_without_btf`); one copy is parsed only when a fentry/fexit/tp_btf hook
    // will be tried (or for CO-RE relocations, then shared with the loader), before the
    // object is loaded, into the memory the loader's copy gave back, and dropped once
    // the hooks are attached. tcp-pressure (its tp_btf program needs it) parsed its
    // copy after the load, on top of the loaded object and of the heap holes glibc kept,
    // and peaked at 26.5 MiB (`-d 2s`, median of 3) against 23.0 MiB for the others;
    // parsed here (and from a mapping, see `kernel_btf`) it peaks at 23.3 MiB.
    let mut loader = loader_without_btf();
    let avoid = avoided();
    let wants_btf = plans.iter().any(|plan| {
        plan.spec
            .hooks
            .iter()
            .map(|h| h.kind())
            .any(HookKind::needs_btf)
            || plan
                .choices
                .iter()
                .flat_map(|c| c.paths)
                .filter(|p| !avoid.iter().any(|a| a == p.name))
                .flat_map(|p| p.hooks)
                .any(|h| h.kind().needs_btf())
    });
    let core = has_core_relocations(OBJECT);
    let btf = (wants_btf || core).then(kernel_btf);
    if core {
        loader.btf(btf.as_ref().and_then(|b| b.as_ref().ok()));
    }
    loader.map_max_entries("EVENTS", ring_bytes);
    // The object holds every detector's maps; the ones no planned program touches are
    // created with one entry, so a load costs only what it uses.
    let prefixes: Vec<&str> = plans.iter().map(|p| p.spec.prefix).collect();
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
    for (name, v) in &globals {
        loader.override_global(name, v, true);
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| {
        anyhow!("loading the eBPF object failed: {e}; run `tracer doctor` to see what this kernel allows")
    })?;
    drop(loader);

    let mut hooks = Vec::new();
    let mut chosen = Vec::new();
    for plan in plans {
        attach_spec(&mut ebpf, plan.spec, &tracefs, btf.as_ref(), &mut hooks)?;
        chosen.extend(
            plan.choices
                .iter()
                .map(|c| take_choice(&mut ebpf, c, plan.spec.offsets, &tracefs, btf.as_ref())),
        );
    }
    drop(btf); // ~13 MiB, before the run starts
    Ok(Session {
        ebpf,
        hooks,
        chosen,
        tracefs,
    })
}

/// Attaches `spec`'s hooks, recording each one's state in `hooks`; fails on a required
/// hook that does not attach.
fn attach_spec(
    ebpf: &mut Ebpf,
    spec: &Spec,
    tracefs: &Tracefs,
    btf: Option<&Result<Btf, String>>,
    hooks: &mut Vec<HookStatus>,
) -> Result<()> {
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
        if let Err(why) = usable(spec.offsets, tracefs, h) {
            log::warn!("{why}; {} will not be seen", h.purpose);
            hooks.push(HookStatus {
                why: Some(why),
                ..status(h, HookState::Missing)
            });
            continue;
        }
        match attach(ebpf, h, btf) {
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
    log::debug!("{}: {} hooks attached", spec.detector, hooks.len());
    Ok(())
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
        .map_err(|e| match caps::paranoid_perf_events() {
            Some(why) => anyhow!("attaching {category}:{name}: {e}; {why}"),
            None => anyhow!("attaching {category}:{name}: {e}"),
        })?;
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
/// the kernel could not put on the full ring buffer), `READ_ERRORS` (kernel reads
/// that failed) or `MAP_FULL` (map inserts that failed; see tracer-ebpf/src/common.rs).
pub struct CpuSum {
    map: PerCpuArray<aya::maps::MapData, u64>,
}

impl CpuSum {
    pub const LOST: &str = "LOST";
    pub const READ_ERRORS: &str = "READ_ERRORS";
    pub const MAP_FULL: &str = "MAP_FULL";

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
