//! `tracer doctor`: what this kernel allows and what each detector will use.
use anyhow::Result;
use serde_json::json;

use crate::{
    bpf::{self, HookState},
    detectors,
    output::Table,
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

pub fn run(args: Args) -> Result<i32> {
    let missing_caps = bpf::missing_caps();
    let tracefs = match Tracefs::find() {
        Some(t) => Ok(t),
        None if missing_caps.is_empty() => Tracefs::open().map_err(|e| format!("{e:#}")),
        None => Err("not mounted (and mounting it needs root)".to_string()),
    };
    let kprobes = bpf::kprobes_available(tracefs.as_ref().ok());
    // One small copy of the object (maps of one entry) for every load probe.
    let mut prober = bpf::Prober::default();
    let fentry = match (&tracefs, missing_caps.is_empty()) {
        (Ok(t), true) => bpf::fentry_available(&mut prober, t, "do_exit"),
        (Err(_), true) => Err("not probed: no tracefs".to_string()),
        _ => Err("not probed: needs root".to_string()),
    };

    let mut all_ok = missing_caps.is_empty() && tracefs.is_ok();
    let mut det_json = Vec::new();
    let mut table = Table::new(&["DETECTOR", "HOOK", "STATE", "REQUIRED", "USED FOR"]);
    // For alternatives the REQUIRED column names the choice and its path instead.
    for d in detectors::ALL {
        let statuses = match &tracefs {
            Ok(t) => bpf::probe_hooks(d.spec, t, &mut prober),
            Err(_) => Vec::new(),
        };
        // The path this kernel gives the detector, or why it has none.
        let base = match (&tracefs, d.probe_path) {
            (Ok(t), Some(probe)) => probe(t).map_err(|e| format!("{e:#}")),
            _ => Ok(d.path),
        };
        let chosen: Vec<bpf::Chosen> = match (&tracefs, missing_caps.is_empty()) {
            (Ok(t), true) => d
                .choices
                .iter()
                .map(|c| bpf::probe_choice(c, d.spec.offsets, t, &mut prober))
                .collect(),
            _ => Vec::new(),
        };
        let runnable = tracefs.is_ok()
            && missing_caps.is_empty()
            && base.is_ok()
            && statuses
                .iter()
                .all(|s| !s.required || s.state != HookState::Missing);
        all_ok &= runnable;
        for s in &statuses {
            let state = match s.state {
                HookState::Found | HookState::Attached => "found".to_string(),
                HookState::Missing if s.required => "MISSING".into(),
                HookState::Missing => format!("missing (fallback: {})", d.fallback),
            };
            table.row(vec![
                d.spec.detector.into(),
                s.hook.clone(),
                state,
                if s.required { "yes" } else { "no" }.into(),
                s.purpose.into(),
            ]);
        }
        // Optional hooks that are missing: the detector runs on its fallback.
        let degraded: Vec<&str> = statuses
            .iter()
            .filter(|s| !s.required && s.state == HookState::Missing)
            .map(|s| s.hook.as_str())
            .collect();
        // Alternatives: the winner's hooks are "found (taken)", the paths before it
        // say why they were refused, the ones after it are not needed.
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
                    table.row(vec![
                        d.spec.detector.into(),
                        h.label(),
                        state,
                        format!("{}: {}", c.name, path.name),
                        h.purpose.into(),
                    ]);
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
        det_json.push(json!({
            "detector": d.spec.detector,
            "runnable": runnable,
            "missing_optional": degraded,
            "fallback": (!degraded.is_empty()).then_some(d.fallback),
            "hooks": statuses,
            "choices": chosen,
            "path": path,
            "reason": base.as_ref().err(),
        }));
    }

    let release = bpf::kernel_release();
    let btf = bpf::has_btf();
    if args.json {
        println!(
            "{}",
            json!({
                "command": "doctor",
                "final": true,
                "kernel": release,
                "btf": btf,
                "tracefs": tracefs.as_ref().map(|t| t.root().display().to_string()).map_err(|e| e.clone()),
                "privileges": { "ok": missing_caps.is_empty(), "missing": missing_caps },
                "kprobes": kprobes,
                "fentry": { "available": fentry.is_ok(), "reason": fentry.as_ref().err() },
                "detectors": det_json,
                "all_runnable": all_ok,
            })
        );
    } else {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        println!("kernel      {release}");
        println!(
            "BTF         {}",
            if btf {
                "yes (/sys/kernel/btf/vmlinux)"
            } else {
                "no"
            }
        );
        match &tracefs {
            Ok(t) => println!("tracefs     {}", t.root().display()),
            Err(e) => println!("tracefs     MISSING: {e}"),
        }
        if missing_caps.is_empty() {
            println!("privileges  ok");
        } else {
            println!(
                "privileges  MISSING {} (run as root: sudo tracer ...)",
                missing_caps.join(", ")
            );
        }
        println!("kprobes     {}", yes_no(kprobes));
        match &fentry {
            Ok(()) => println!("fentry      yes"),
            Err(e) => println!("fentry      no ({e})"),
        }
        println!();
        print!("{}", table.render());
        println!();
        for d in &det_json {
            let name = d["detector"].as_str().unwrap_or("");
            let missing: Vec<&str> = d["missing_optional"]
                .as_array()
                .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
                .unwrap_or_default();
            let without = if missing.is_empty() {
                String::new()
            } else {
                format!(
                    ", without {} (fallback: {})",
                    missing.join(", "),
                    d["fallback"].as_str().unwrap_or("")
                )
            };
            match (d["runnable"].as_bool() == Some(true), d["path"].as_str()) {
                (true, Some(path)) => println!("{name:<13} can run (path: {path}){without}"),
                (true, None) => println!("{name:<13} can run{without}"),
                (false, _) => match d["reason"].as_str() {
                    Some(why) => println!("{name:<13} CANNOT RUN: {why}"),
                    None => println!("{name:<13} CANNOT RUN"),
                },
            }
        }
    }
    Ok(if all_ok { 0 } else { 1 })
}
