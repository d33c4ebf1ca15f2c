//! The PID budgets and fork refusals of one `tracer zombies` run (issue 22): the pids
//! cgroup scan ([`budgets`]), the refusal hook's records ([`refusals`]) and its
//! per-syscall counters, held together for the detector.
use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use tracer_common::zombies::refusals::ForkCall;

use super::{
    budgets::{Budgets, PidBudgetRow, PidBudgetScan},
    refusals::{BySyscall, ForkRefusals, Refusals},
};
use crate::{
    bpf::{self, Hook},
    procinfo,
    run::BadRecord,
};

/// The refusal hooks, one per syscall: optional, and all four in the spec after the
/// detector's others (so a lean mode can leave them out).
pub const HOOKS: [Hook; 4] = [
    refusal_hook("zombies_clone_exit", "sys_exit_clone"),
    refusal_hook("zombies_clone3_exit", "sys_exit_clone3"),
    refusal_hook("zombies_fork_exit", "sys_exit_fork"),
    refusal_hook("zombies_vfork_exit", "sys_exit_vfork"),
];

const fn refusal_hook(program: &'static str, name: &'static str) -> Hook {
    Hook {
        program,
        category: "syscalls",
        name,
        required: false,
        purpose: "count forks refused with EAGAIN and name the process (costs every syscall the tracing slow path)",
    }
}

pub struct PidSection {
    budgets: Budgets,
    refusals: Refusals,
    counts: PerCpuArray<MapData, u64>,
}

impl PidSection {
    /// Takes the refusal counters and the pids cgroups' baselines (after the attach).
    pub fn attach(session: &mut bpf::Session) -> Result<PidSection> {
        let counts = PerCpuArray::try_from(session.take_map("ZOMBIES_REFUSALS")?)?;
        let missing: Vec<String> = (session.hooks.iter())
            .filter(|h| {
                h.state != bpf::HookState::Attached && HOOKS.iter().any(|k| k.program == h.program)
            })
            .map(|h| h.hook.clone())
            .collect();
        Ok(PidSection {
            budgets: Budgets::start(),
            refusals: Refusals::new(&missing),
            counts,
        })
    }

    pub fn on_event(&mut self, data: &[u8]) -> Result<(), BadRecord> {
        let hier = self.budgets.hierarchy.as_ref().ok();
        self.refusals.on_event(data, hier)
    }

    fn counts(&self) -> BySyscall {
        let mut s = BySyscall::default();
        for call in ForkCall::ALL {
            let n: u64 = (self.counts.get(&(call as u32), 0))
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            match call {
                ForkCall::Clone => s.clone = n,
                ForkCall::Clone3 => s.clone3 = n,
                ForkCall::Fork => s.fork = n,
                ForkCall::Vfork => s.vfork = n,
            }
        }
        s
    }

    /// The report's three fields.
    pub fn build(&mut self) -> (Vec<PidBudgetRow>, PidBudgetScan, ForkRefusals) {
        let stats = procinfo::all_stats();
        let refusals = &self.refusals;
        let (rows, scan) = self.budgets.report(&stats, |p| refusals.in_subtree(p));
        (rows, scan, self.refusals.report(self.counts()))
    }
}
