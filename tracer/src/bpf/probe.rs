//! Whether a hook can be used on this kernel, checked cheaply and without attaching
//! anything: what `tracer doctor` shows, and the reasons a detector gives for a
//! fallback.
use std::fs;

use aya::{Btf, Ebpf, programs::KProbe};

use super::{
    OBJECT,
    btf::{has_core_relocations, kernel_btf, load_btf_program, loader_without_btf},
    maps::object_maps,
    program::{program, short_error, unload},
    spec::{Choice, Chosen, Hook, HookKind, HookState, HookStatus, Offset, Spec},
};
use crate::tracefs::Tracefs;

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
pub(super) fn usable(offsets: &[Offset], tracefs: &Tracefs, h: &Hook) -> Result<(), String> {
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

pub(super) fn avoided() -> Vec<String> {
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
                return Chosen::of(choice, Some(path.name), refused);
            }
            Err(why) => refused.push((path.name, why)),
        }
    }
    Chosen::of(choice, None, refused)
}

pub(super) fn status(h: &Hook, state: HookState) -> HookStatus {
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
            .get_or_insert_with(kernel_btf)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn small(&mut self) -> Result<&mut Ebpf, String> {
        if self.small.is_none() {
            // The one parsed copy of the kernel's BTF, for CO-RE relocations if any.
            let core = has_core_relocations(OBJECT) && self.btf().is_ok();
            let btf = self.btf.as_ref().and_then(|b| b.as_ref().ok());
            self.small = Some(load_small(btf.filter(|_| core)));
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
fn load_small(btf: Option<&Btf>) -> Result<Ebpf, String> {
    let mut loader = loader_without_btf();
    loader.btf(btf);
    let names = object_maps(OBJECT);
    for (name, ty) in &names {
        loader.map_max_entries(name, if *ty == RINGBUF { 4096 } else { 1 });
    }
    loader
        .load(OBJECT)
        .map_err(|e| format!("loading the eBPF object: {e}"))
}

const RINGBUF: u32 = 27; // BPF_MAP_TYPE_RINGBUF

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
