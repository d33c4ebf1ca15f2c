//! Loading the embedded eBPF object and attaching a detector's hooks: privilege check,
//! tracefs, field offsets from format files passed in as globals, hook probing with
//! fallbacks, and the lost-event counter.
use std::{fs, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{FEntry, Program, TracePoint},
};

use crate::tracefs::Tracefs;

/// The kernel programs, built by build.rs and embedded: nothing to install beside the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// A tracepoint a detector attaches one of its programs to.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Program name in the object (`<detector>_<hook>`).
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    /// Without a required hook the detector cannot run; an optional one only narrows
    /// what it sees, and the report says so.
    pub required: bool,
    /// What the detector loses without it (shown by doctor and on errors).
    pub purpose: &'static str,
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
    pub program: &'static str,
    pub required: bool,
    pub state: HookState,
    pub purpose: &'static str,
}

/// A loaded detector: drop it and every program is detached and unloaded.
pub struct Session {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
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

/// Checks which of `spec`'s hooks exist, without loading anything (doctor).
pub fn probe_hooks(spec: &Spec, tracefs: &Tracefs) -> Vec<HookStatus> {
    spec.hooks
        .iter()
        .map(|h| {
            status(
                h,
                if tracefs.has_tracepoint(h.category, h.name) {
                    HookState::Found
                } else {
                    HookState::Missing
                },
            )
        })
        .collect()
}

fn status(h: &Hook, state: HookState) -> HookStatus {
    HookStatus {
        hook: format!("{}:{}", h.category, h.name),
        program: h.program,
        required: h.required,
        state,
        purpose: h.purpose,
    }
}

/// Loads the object with `spec`'s offsets and attaches its hooks. `extra` sets
/// detector-specific `Global<u32>`s (in-kernel filters and the like).
pub fn start(spec: &Spec, extra: &[(&'static str, u32)]) -> Result<Session> {
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
    }

    let mut offsets = Vec::with_capacity(spec.offsets.len());
    for o in spec.offsets {
        if !tracefs.has_tracepoint(o.category, o.event) {
            // Belongs to an optional hook that is missing: its program is not loaded.
            offsets.push((o.global, 0u32));
            continue;
        }
        let off = tracefs
            .format(o.category, o.event)?
            .offset(o.field)
            .with_context(|| format!("tracepoint {}:{}", o.category, o.event))?;
        offsets.push((o.global, off));
    }
    let extra: Vec<(&'static str, u32)> = extra.to_vec();
    let log_level = log::max_level() as u8;
    let wakeup_bytes = u64::from(spec.ring_bytes / 4);

    let mut loader = EbpfLoader::new();
    loader.map_max_entries("EVENTS", spec.ring_bytes);
    // The object holds every detector's maps; the ones this detector's programs never
    // touch are created with one entry, so a load costs only what it uses.
    let prefixes: Vec<&str> = spec
        .hooks
        .iter()
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

    let mut hooks = Vec::new();
    for h in spec.hooks {
        if !tracefs.has_tracepoint(h.category, h.name) {
            log::warn!(
                "tracepoint {}:{} is missing; {} will not be seen",
                h.category,
                h.name,
                h.purpose
            );
            hooks.push(status(h, HookState::Missing));
            continue;
        }
        match attach_tracepoint(&mut ebpf, h.program, h.category, h.name) {
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
                hooks.push(status(h, HookState::Missing));
            }
        }
    }
    log::debug!("{}: {} hooks attached", spec.detector, hooks.len());
    Ok(Session {
        ebpf,
        hooks,
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

/// Sum of the per-CPU lost-event counters: records the kernel could not put on the
/// ring buffer because it was full.
pub struct LostCounter {
    map: PerCpuArray<aya::maps::MapData, u64>,
}

impl LostCounter {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map("LOST")
            .context("map LOST is missing from the eBPF object")?;
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
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || tracefs.is_some_and(|t| t.root().join("kprobe_events").exists())
}

/// Whether fentry programs load here: tries to load the probe program against `func`.
/// Err carries the reason (e.g. EPERM under lockdown, no BTF).
pub fn fentry_available(func: &str) -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("EVENTS", 4096)
        .load(OBJECT)
        .map_err(|e| format!("loading the object: {e}"))?;
    let prog: &mut FEntry = ebpf
        .program_mut("probe_fentry")
        .ok_or("probe program missing")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load(func, &btf).map_err(|e| {
        let s = e.to_string();
        let first = s.lines().next().unwrap_or(&s);
        // An empty verifier log adds nothing: "...(os error 1). Verifier output: ".
        first
            .split(". Verifier output:")
            .next()
            .unwrap_or(first)
            .to_string()
    })
}

/// Kernel release and whether BTF is there, for doctor and reports.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn has_btf() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

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
