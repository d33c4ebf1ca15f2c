//! The `tracer zombies` report: one typed struct, built from the census of zombies and
//! the kernel's counters, that renders the text for people and gives the metrics; its
//! JSON is its serialization.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{
    budget_metrics,
    budgets::{self, PidBudgetRow, PidBudgetScan},
    metrics,
    refusals::{self, ForkRefusals},
    rows::{ParentRow, ZombieRow, fmt_age},
};
use crate::{
    output::{Log2, Summary, Table, human_duration, serialize_round3, serialize_round3_opt},
    prom::{Families, Process, top_by},
    report::Body,
    trend::TrendReport,
};

/// What `tracer zombies` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZombiesReport {
    /// `--pid`: only children of this parent.
    pub filter_ppid: Option<u32>,
    /// When a zombie counts as stuck, in words.
    pub stuck_rule: String,
    /// Parents with stuck or in-flight zombies, the most stuck first.
    pub parents: Vec<ParentRow>,
    /// Every zombie, oldest first.
    pub zombies: Vec<ZombieRow>,
    pub zombies_total: usize,
    pub zombies_stuck: usize,
    pub zombies_in_flight: usize,
    /// Growth of stuck zombies per second, when sustained (see `trend`).
    #[serde(serialize_with = "serialize_round3_opt")]
    pub zombie_growth_per_s: Option<f64>,
    pub trend: TrendReport,
    /// Exit to reap, microseconds, with the exact buckets in seconds.
    pub reap_latency_us: Summary,
    /// The parents that reaped the most.
    pub reapers: Vec<ReaperRow>,
    pub state_evicted: Evicted,
    pub pids: Pids,
    pub forks: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub forks_per_s: f64,
    pub exits: u64,
    #[serde(serialize_with = "serialize_round3")]
    pub exits_per_s: f64,
    /// How this kernel shows a process's exit.
    pub path: String,
    /// What to do about each non-reaping parent.
    pub hints: Vec<String>,
    /// What the report could not see.
    pub caveats: Vec<String>,
    /// For the text only.
    #[serde(skip)]
    pub view: View,
    // PID budgets and fork refusals (issue 22).
    /// Pids cgroups with a pids.max or a refused fork, findings and the fullest first.
    pub pid_budgets: Vec<PidBudgetRow>,
    /// Where the pids cgroups were read and how many.
    pub pid_budget_scan: PidBudgetScan,
    /// Forks refused with EAGAIN, per syscall and process.
    pub fork_refusals: ForkRefusals,
}

/// What only the text shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// `--parent`: the parents' table without the zombies' list.
    pub by_parent: bool,
    /// `--trend-span`, seconds.
    pub trend_span_s: f64,
    /// Reaps in the window (the histogram below counts the timed ones).
    pub reaped: u64,
    /// Reap latency, microseconds, as a log2 histogram.
    pub reap_log2: Log2,
}

/// A parent that reaped: a row of `reapers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReaperRow {
    pub pid: u32,
    pub comm: Option<String>,
    #[serde(flatten)]
    pub cgroup: crate::container::InCgroup,
    pub reaped: u64,
    /// SIGCHLD disposition: default, ignore or handler.
    pub sigchld: Cow<'static, str>,
}

/// State dropped to keep memory bounded (docs/bounded-state.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evicted {
    /// Parents whose reap counts were forgotten.
    pub reapers: u64,
    /// Exits not tracked because the candidates were at their cap.
    pub exits_untracked: u64,
}

/// PID headroom.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pids {
    /// Tasks (threads) in use: each holds a pid.
    pub in_use: Option<u64>,
    pub pid_max: Option<u64>,
    pub threads_max: Option<u64>,
    /// Time until pids run out at the sustained growth of stuck zombies.
    #[serde(serialize_with = "serialize_round3_opt")]
    pub exhaustion_eta_s: Option<f64>,
}

impl Body for ZombiesReport {
    fn text(&self) -> String {
        let mut t = self.summary_text();
        t += &budgets::text(&self.pid_budgets, &self.pid_budget_scan);
        t += &refusals::text(&self.fork_refusals);
        t += &self.parents_text();
        if !self.view.by_parent {
            t += &self.zombies_text();
        }
        t += "\nREAP LATENCY (exit -> reaped by wait4 or released)\n";
        t += &self.view.reap_log2.render("usecs");
        t
    }

    fn collect(&self, out: &mut Families) {
        use metrics::*;
        out.sample(&PRESENT, &[], self.zombies_total as u64);
        out.sample(&STUCK, &[], self.zombies_stuck as u64);
        out.sample(&IN_FLIGHT, &[], self.zombies_in_flight as u64);
        out.sample(&GROWING, &[], u64::from(self.trend.growing));
        out.opt(&GROWTH, &[], self.zombie_growth_per_s);
        out.opt(&TASKS, &[], self.pids.in_use);
        out.opt(&PID_MAX, &[], self.pids.pid_max);
        out.opt(&THREADS_MAX, &[], self.pids.threads_max);
        out.opt(&EXHAUSTION, &[], self.pids.exhaustion_eta_s);
        out.sample(&FORKS, &[], self.forks);
        out.sample(&EXITS, &[], self.exits);
        out.sample(&REAPS, &[], self.reap_latency_us.count);
        out.latency(&REAP_LATENCY, &[], &self.reap_latency_us);
        for p in top_by(&self.parents, |p| p.zombies as f64, TOP_PARENTS) {
            let who = Process {
                pid: p.pid,
                comm: &p.comm,
                mount: None,
                container: p.cgroup.container.as_ref(),
            };
            out.process(&PARENT_ZOMBIES, &who, p.zombies as u64);
            out.process(&PARENT_OLDEST, &who, p.oldest_zombie_age_s);
        }
        budget_metrics::collect(&self.pid_budgets, &self.fork_refusals, out);
    }

    fn state_evicted(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("reapers", self.state_evicted.reapers),
            ("exits_untracked", self.state_evicted.exits_untracked),
        ]
    }
}

impl ZombiesReport {
    /// The lines above the tables: zombies now, the rule, rates, PID headroom.
    fn summary_text(&self) -> String {
        let oldest = (self.zombies.iter())
            .find(|z| z.stuck)
            .map(|z| fmt_age(z.age_s, z.age_exact))
            .unwrap_or_else(|| "-".into());
        let mut t = format!(
            "zombies now: {} stuck under {} parent(s), oldest {}; {} in flight (within the normal reap delay)\n",
            self.zombies_stuck,
            self.parents.len(),
            oldest,
            self.zombies_in_flight,
        );
        t += &format!("stuck means: {}\n", self.stuck_rule);
        t += &format!(
            "reaped in window: {}; forks {:.1}/s, exits {:.1}/s\n",
            self.view.reaped, self.forks_per_s, self.exits_per_s
        );
        let opt = |v: Option<u64>| v.map_or_else(|| "?".into(), |v| v.to_string());
        t += &format!(
            "pid headroom: {} tasks in use; pid_max {}, threads-max {}; ",
            opt(self.pids.in_use),
            opt(self.pids.pid_max),
            opt(self.pids.threads_max),
        );
        t += &format!("stuck zombies {}", self.trend.text(self.view.trend_span_s));
        if let Some(eta) = self.pids.exhaustion_eta_s {
            t += &format!(", PID space exhausted in ~{}", human_duration(eta));
        }
        t += "\n";
        t += &format!("exits seen by: {}\n", self.path);
        for c in &self.caveats {
            t += &format!("note: {c}\n");
        }
        t
    }

    fn parents_text(&self) -> String {
        let mut t = "\nNON-REAPING PARENTS (with stuck zombies)\n".to_string();
        if self.parents.is_empty() {
            t += "  none: no zombie outlived its parent's normal reap delay\n";
            return t;
        }
        t += &Table::of(&self.parents).render();
        t += "\n";
        for h in &self.hints {
            t += &format!("hint: {h}\n");
        }
        t
    }

    fn zombies_text(&self) -> String {
        const SHOWN: usize = 20;
        let mut t = "\nZOMBIES (oldest first)\n".to_string();
        let shown = &self.zombies[..self.zombies.len().min(SHOWN)];
        if shown.is_empty() {
            t += "  none\n";
            return t;
        }
        t += &Table::of(shown).render();
        if self.zombies.len() > SHOWN {
            t += &format!(
                "  ... and {} more (--json lists all)\n",
                self.zombies.len() - SHOWN
            );
        }
        t
    }
}
