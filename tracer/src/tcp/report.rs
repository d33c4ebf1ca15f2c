//! The `tracer tcp-pressure` report: one typed struct (built in build.rs) that renders
//! the text for people and gives the metrics; its JSON is its serialization.
use serde::{Deserialize, Serialize};

use super::{
    PodAdvice,
    advice::Advice,
    counters::{Drops, TcpExt},
    memcg::{self, MemcgPressure},
    metrics,
    pods::{self, PodSockets},
    prune,
    rcvq::{self, RcvQueue},
    rows::{CulpritRow, EpisodeRow, HolderRow, SockRow, human_bytes},
    send::{SendLatency, SendLog2},
    sockets::Source,
    warn,
};
use crate::{
    output::{Log2, Summary, Table, serialize_round3},
    prom::{Families, Num, Process, top_by},
    report::Body,
    snapshot::tcpmem::TcpMem,
};

/// What `tracer tcp-pressure` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcpPressureReport {
    /// net.ipv4.tcp_mem now, pages.
    pub tcp_mem: TcpMem,
    pub page_size: u64,
    /// Pages TCP holds (/proc/net/sockstat).
    pub mem_pages: MemPages,
    pub mem_bytes: MemBytes,
    /// An episode is open.
    pub pressure_now: bool,
    /// Pressure now, or the early warning when its rule holds.
    pub warning: Option<String>,
    pub early_warning: warn::State,
    /// The latest episodes, oldest first.
    pub episodes: Vec<EpisodeRow>,
    /// Durations of the ended episodes (the evicted ones included), milliseconds,
    /// with the exact buckets in seconds.
    pub episode_duration_ms: Summary,
    /// Refused allocations the kernel counted.
    pub refusals: u64,
    /// Processes refused the most, most first (--top).
    pub culprits: Vec<CulpritRow>,
    /// Processes holding the most socket memory, most first (--top).
    pub holders: Vec<HolderRow>,
    pub top_sockets: TopSockets,
    /// Memory-related drops by reason; null when they are not counted here.
    pub drops: Option<Drops>,
    /// Packets refused by full receive queues.
    pub rcvqueue_full: u64,
    pub retransmits: Retransmits,
    /// Growth of the TcpExt pressure counters since the start.
    pub tcpext: TcpExt,
    pub send_latency_us: SendLatency,
    pub advice: Advice,
    /// The kernel paths taken, in words.
    pub path: String,
    /// The path each choice took.
    pub paths: Paths,
    pub state_evicted: Evicted,
    /// What the report could not see.
    pub caveats: Vec<String>,
    /// Socket memory per pod and per cgroup, from the same look as the holders.
    pub socket_memory: PodSockets,
    /// Memory cgroups whose own limit refused socket memory while global TCP memory
    /// was under tcp_mem's pressure threshold.
    pub memcg_pressure: MemcgPressure,
    /// Receive-queue pruning and collapsing, since the start and during pressure.
    pub rcv_queue: RcvQueue,
    /// Advice per pod and memcg (printed, never applied).
    pub pod_advice: Vec<PodAdvice>,
    /// For the text only.
    #[serde(skip)]
    pub view: View,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemPages {
    pub current: u64,
    /// The most seen while tracing (samples and refusal records).
    pub peak: u64,
    /// `current` as a percentage of tcp_mem's pressure threshold.
    #[serde(serialize_with = "serialize_round3")]
    pub pct_of_pressure: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemBytes {
    pub current: u64,
    pub peak: u64,
}

/// The look at the sockets the holders and sockets come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopSockets {
    pub when: Look,
    /// Since the tracer started.
    #[serde(serialize_with = "serialize_round3")]
    pub at_s: f64,
    pub source: Source,
    /// Memory charged to all TCP sockets, bytes.
    pub total_bytes: u64,
    /// The largest, most first (--top).
    pub sockets: Vec<SockRow>,
}

/// When the sockets were looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Look {
    /// During an episode, the look where they held the most.
    Episode,
    /// At the report (no episode was seen).
    Now,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Retransmits {
    pub pressure: u64,
    pub normal: u64,
}

/// The path each of tcp-pressure's choices took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Paths {
    pub pressure_edges: EdgesPath,
    pub send_latency: SendPath,
    pub refusal_sockets: SocketsPath,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgesPath {
    /// fentry, kprobe, or `sampling` (no hook: the 10 Hz samples find the edges).
    pub path: String,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SendPath {
    /// fentry, kprobe, tracepoints; null when nothing can time sends.
    pub path: Option<String>,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SocketsPath {
    /// tp_btf (with socket cookies), else `tracepoint`.
    pub path: String,
}

/// State dropped to keep memory bounded (README "Bounded state").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evicted {
    /// The oldest episodes, no longer listed.
    pub episodes: u64,
    /// Processes whose refusal counts were forgotten.
    pub culprits: u64,
}

/// What only the text shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Episode durations, milliseconds, as a log2 histogram.
    pub episode_log2: Log2,
    /// Send latency during and outside pressure, microseconds.
    pub send_log2: SendLog2,
}

impl Body for TcpPressureReport {
    fn text(&self) -> String {
        let mut t = self.memory_text();
        t += &self.episodes_text();
        t += &self.culprits_text();
        t += &self.holders_text();
        t += &pods::text(&self.socket_memory);
        t += &memcg::text(&self.memcg_pressure);
        t += &self.effects_text();
        t += &self.send_latency_text();
        t += &self.advice_text();
        t
    }

    fn collect(&self, out: &mut Families) {
        use metrics::*;
        out.sample(&MEMORY, &[], self.mem_bytes.current);
        out.sample(&MEMORY_PEAK, &[], self.mem_bytes.peak);
        let tm = &self.tcp_mem;
        for (t, pages) in [
            ("low", tm.low),
            ("pressure", tm.pressure),
            ("high", tm.high),
        ] {
            out.sample(&MEMORY_LIMIT, &[("threshold", t)], pages * self.page_size);
        }
        // The ratio from the percentage as the JSON has it.
        let pct = crate::output::round3(self.mem_pages.pct_of_pressure);
        out.sample(
            &MEMORY_OF_PRESSURE,
            &[],
            Num::from(pct).per(crate::prom::PCT),
        );
        out.sample(&PRESSURE, &[], u64::from(self.pressure_now));
        out.sample(&EARLY_WARNING, &[], u64::from(self.early_warning.active));
        out.sample(&EPISODES, &[], self.episode_duration_ms.count);
        out.latency(&EPISODE_DURATION, &[], &self.episode_duration_ms);
        out.sample(&REFUSALS, &[], self.refusals);
        for (reason, n) in self.drops.iter().flat_map(|d| &d.0) {
            out.sample(&DROPS, &[("reason", reason)], *n);
        }
        out.sample(&RCVQ_FULL, &[], self.rcvqueue_full);
        let r = &self.retransmits;
        out.sample(&RETRANSMITS, &[("during", "pressure")], r.pressure);
        out.sample(&RETRANSMITS, &[("during", "normal")], r.normal);
        self.tcpext.collect(out);
        if let SendLatency::Measured {
            pressure, normal, ..
        } = &self.send_latency_us
        {
            out.latency(
                &SEND_LATENCY,
                &[("during", "pressure")],
                &pressure.summary(),
            );
            out.latency(&SEND_LATENCY, &[("during", "normal")], &normal.summary());
        }
        for c in top_by(&self.culprits, |c| c.refusals as f64, TOP) {
            let who = Process {
                pid: c.pid,
                comm: &c.comm,
                mount: None,
                container: c.cgroup.container.as_ref(),
            };
            out.process(&CULPRIT_REFUSALS, &who, c.refusals);
        }
        for h in top_by(&self.holders, |h| h.held_bytes as f64, TOP) {
            let who = Process {
                pid: h.pid,
                comm: &h.comm,
                mount: None,
                container: h.cgroup.container.as_ref(),
            };
            out.process(&HOLDER_BYTES, &who, h.held_bytes);
        }
        self.collect_pods(out);
    }

    fn state_evicted(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("episodes", self.state_evicted.episodes),
            ("culprits", self.state_evicted.culprits),
        ]
    }
}

impl TcpPressureReport {
    /// The per-pod, per-memcg and receive-queue metrics.
    fn collect_pods(&self, out: &mut Families) {
        use metrics::*;
        for p in top_by(&self.socket_memory.pods, |p| p.held_bytes as f64, TOP) {
            let labels = [
                ("pod_uid", p.pod_uid.as_str()),
                ("namespace", p.namespace.as_deref().unwrap_or("")),
                ("pod", p.pod.as_deref().unwrap_or("")),
                ("qos", p.qos.as_deref().unwrap_or("")),
            ];
            out.sample(&POD_SOCKET_MEMORY, &labels, p.held_bytes);
        }
        for m in top_by(&self.memcg_pressure.memcgs, |m| m.refusals as f64, TOP) {
            out.sample(&MEMCG_REFUSALS, &[("memcg", m.memcg.as_str())], m.refusals);
            out.sample(&MEMCG_LIMIT, &[("memcg", m.memcg.as_str())], m.limit_bytes);
        }
        let under = self.memcg_pressure.refusals_under_global;
        out.sample(&REFUSALS_UNDER_GLOBAL, &[], under);
        let d = &self.rcv_queue.during_pressure;
        for (c, n) in [
            ("PruneCalled", d.prune_called),
            ("RcvPruned", d.rcv_pruned),
            ("TCPRcvCollapsed", d.collapsed),
        ] {
            out.sample(&RCVQ_DURING_PRESSURE, &[("counter", c)], n);
        }
        for ((pod, comm), n) in prune::by_owner(&self.rcv_queue.per_socket, TOP) {
            out.sample(&SOCKET_PRUNES, &[("pod", &pod), ("comm", &comm)], n);
        }
    }

    /// TCP memory against tcp_mem, the warning, the paths taken and the caveats.
    fn memory_text(&self) -> String {
        let (tm, ps) = (&self.tcp_mem, self.page_size);
        let m = &self.mem_pages;
        let mut t = format!(
            "TCP memory now: {} pages ({}) = {:.0}% of pressure; peak {} pages ({})\n",
            m.current,
            human_bytes(self.mem_bytes.current),
            m.pct_of_pressure,
            m.peak,
            human_bytes(self.mem_bytes.peak)
        );
        t += &format!(
            "tcp_mem: low {} ({}), pressure {} ({}), high {} ({}) pages\n",
            tm.low,
            human_bytes(tm.low * ps),
            tm.pressure,
            human_bytes(tm.pressure * ps),
            tm.high,
            human_bytes(tm.high * ps)
        );
        match &self.warning {
            Some(w) => t += &format!("WARNING: {w}\n"),
            None => t += &format!("{}\n", warn::no_warning_line(&self.early_warning)),
        }
        t += &format!("path: {}\n", self.path);
        for c in &self.caveats {
            t += &format!("note: {c}\n");
        }
        t
    }

    fn episodes_text(&self) -> String {
        let mut t = "\nEPISODES (TCP memory pressure)\n".to_string();
        if self.episodes.is_empty() {
            t += "  none: TCP memory stayed out of pressure\n";
            return t;
        }
        t += &Table::of(&self.episodes).render();
        if self.episode_duration_ms.count > 0 {
            t += "episode durations\n";
            t += &self.view.episode_log2.render("msecs");
        }
        t
    }

    fn culprits_text(&self) -> String {
        let mut t = format!(
            "\nCULPRITS (refused TCP allocations: {} in all)\n",
            self.refusals
        );
        if self.culprits.is_empty() {
            t += "  none: no TCP allocation was refused\n";
        } else {
            t += &Table::of(&self.culprits).render();
        }
        t
    }

    /// The holders and the largest sockets, from the same look.
    fn holders_text(&self) -> String {
        let s = &self.top_sockets;
        let at = match s.when {
            Look::Now => "now".to_string(),
            Look::Episode => format!("at +{:.1}s, the fullest look during an episode", s.at_s),
        };
        let mut t = format!(
            "\nHOLDERS (socket memory {at}: {} in all; {})\n",
            human_bytes(s.total_bytes),
            s.source.as_str()
        );
        if self.holders.is_empty() {
            t += "  none\n";
            return t;
        }
        t += &Table::of(&self.holders).render();
        t += "\nTOP SOCKETS\n";
        t += &Table::of(&s.sockets).render();
        t
    }

    /// Drops, retransmits, full receive queues and the TcpExt counters.
    fn effects_text(&self) -> String {
        let drops = match &self.drops {
            None => "not counted (see the note above)".to_string(),
            Some(d) => {
                let seen: Vec<String> = (d.0.iter())
                    .filter(|(_, n)| *n > 0)
                    .map(|(name, n)| format!("{name} {n}"))
                    .collect();
                if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(", ")
                }
            }
        };
        let ext: Vec<String> = (self.tcpext.named().into_iter())
            .map(|(name, d)| format!("{name} +{d}"))
            .collect();
        let r = &self.retransmits;
        format!(
            "\nEFFECTS\n  memory-related drops: {drops}\n  retransmits: {} during pressure, {} outside; receive queue full: {}\n  TcpExt since start: {}\n",
            r.pressure,
            r.normal,
            self.rcvqueue_full,
            ext.join(", ")
        ) + &rcvq::text(&self.rcv_queue)
    }

    fn send_latency_text(&self) -> String {
        match &self.send_latency_us {
            SendLatency::Measured { via, .. } => {
                let l = &self.view.send_log2;
                format!(
                    "\nSEND LATENCY during pressure ({via}, TCP only)\n{}\nSEND LATENCY outside pressure\n{}",
                    l.pressure.render("usecs"),
                    l.normal.render("usecs")
                )
            }
            SendLatency::NotMeasured { .. } => {
                "\nSEND LATENCY during pressure: NOT MEASURED (no hook can time sends on this kernel; see the note above)\n".into()
            }
        }
    }

    fn advice_text(&self) -> String {
        let mut t = "\nADVICE (computed from the measured numbers above; printed, never applied)\n"
            .to_string();
        for l in self.advice.notes.iter().chain(&self.advice.sysctl) {
            t += &format!("  {l}\n");
        }
        for a in &self.pod_advice {
            t += &format!("  {}: {}\n", a.who, a.advice);
        }
        if !self.advice.sysctl.is_empty() {
            t += "  to persist, put the same settings (`net.ipv4.tcp_mem = ...`) in /etc/sysctl.d/90-tcp-memory.conf and run `sysctl --system`\n";
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Envelope;

    fn fixture() -> TcpPressureReport {
        let text = include_str!("../prom/fixtures/tcp-pressure.json");
        serde_json::from_str::<Envelope<TcpPressureReport>>(text)
            .unwrap()
            .body
    }

    #[test]
    fn the_text_is_rendered_from_the_reports_fields() {
        let mut r = fixture();
        let t = r.text();
        for line in [
            "TCP memory now: 0 pages (0 B) = 0% of pressure; peak 0 pages (0 B)\n",
            "tcp_mem: low 287892 (1.10 GiB), pressure 383858 (1.46 GiB), high 575784 (2.20 GiB) pages\n",
            "early warning: none: TCP memory is below 80% of the pressure threshold (longest stretch at or above it: 0ms; the warning needs 80% of the pressure threshold held for 3.0s)\n",
            "\nCULPRITS (refused TCP allocations: 37 in all)\n",
            "\nHOLDERS (socket memory now: 0 B in all; netlink sock_diag",
            "  memory-related drops: none\n",
            "  TcpExt since start: TCPMemoryPressures +0, TCPMemoryPressuresChrono +0, PruneCalled +2,",
            "\nSEND LATENCY during pressure (syscall entry -> sock:sock_send_length, TCP only)\n",
            "  no change needed: no episode happened",
            "    pruned sockets (fentry tcp_collapse + tcp_prune_ofo_queue, by cookie): 2 prunes collapsed a receive queue, 1 went on to discard data\n",
            "      127.0.0.1:33603 -> 127.0.0.1:51744 incident_tcp (175) cgroup /: 2 prunes (0 during pressure), 1 discards\n",
        ] {
            assert!(t.contains(line), "{line:?} not in\n{t}");
        }
        r.drops = None;
        r.send_latency_us = SendLatency::NotMeasured {
            measured: super::super::send::Is,
            why: None,
        };
        r.top_sockets.when = Look::Episode;
        r.top_sockets.at_s = 1.26;
        let t = r.text();
        for line in [
            "  memory-related drops: not counted (see the note above)\n",
            "\nSEND LATENCY during pressure: NOT MEASURED",
            "\nHOLDERS (socket memory at +1.3s, the fullest look during an episode: 0 B in all;",
        ] {
            assert!(t.contains(line), "{line:?} not in\n{t}");
        }
        assert!(!t.contains("SEND LATENCY outside pressure"), "{t}");
    }
}
