//! The tcp-pressure report built from the detector's state, section by section:
//! memory and the warning, episodes, culprits, the look at the sockets, the kernel's
//! counters, send latency, the advice and the caveats.
use super::{
    counters::{Drops, TcpExt},
    report::{Evicted, Look, MemBytes, MemPages, Retransmits, TcpPressureReport, TopSockets, View},
    rows::{CulpritRow, EpisodeRow, HolderRow, SockRow},
    *,
};
use crate::output::{Log2, Summary};

impl TcpPressure {
    /// The report [`Detector::report`] hands out.
    pub(super) fn build_report(&mut self, ctx: &ReportCtx) -> TcpPressureReport {
        self.resolve(true);
        self.flush_memcg();
        let snap = &self.latest;
        let (tm, ps, pages) = (snap.tcp_mem, snap.page_size, snap.mem_pages);
        let peak = self.episodes.peak_pages.max(pages);
        let open = self.episodes.open().is_some();
        let near = self.near.state(&self.rule);
        let (holders, top_sockets, socket_memory) = self.socket_look();
        let pids: Vec<u32> = holders.iter().map(|h| h.pid).collect();
        self.memcg
            .check_holders(&pids, pages, tm, self.episodes.open().is_some());
        let memcg_pressure = self.memcg.report(self.top);
        let pod_advice = pod_advice::compute(&pod_advice::Inputs {
            pods: &socket_memory,
            memcg: &memcg_pressure,
            total_bytes: top_sockets.total_bytes,
            pressure: self.episodes.total() > 0 || near.sustained,
            pressure_bytes: tm.pressure * ps,
            rmem: read_triple("/proc/sys/net/ipv4/tcp_rmem"),
            wmem: read_triple("/proc/sys/net/ipv4/tcp_wmem"),
        });
        let refusals = self.count(COUNT_REFUSALS);
        let prunes_seen = (self.count(COUNT_PRUNES), self.count(COUNT_PRUNE_DISCARDS));
        let caveats = self.caveats_now(ctx, refusals);
        let (send_latency_us, send_log2) = self.send_latency(&caveats);
        let dur_hist = self.episodes.durations_ms();
        TcpPressureReport {
            tcp_mem: tm,
            page_size: ps,
            mem_pages: MemPages {
                current: pages,
                peak,
                pct_of_pressure: snap.pressure_pct(),
            },
            mem_bytes: MemBytes {
                current: pages * ps,
                peak: peak * ps,
            },
            pressure_now: open,
            warning: warn::warning(open, pages, tm.pressure, &near),
            advice: self.advice(peak, near.sustained, &top_sockets),
            early_warning: near,
            episodes: self.episode_rows(),
            episode_duration_ms: Summary::of(&dur_hist).with(&self.episodes.durations_buckets()),
            refusals,
            culprits: (self.culprits.ranked().iter().take(self.top))
                .map(|(pid, c)| CulpritRow::new(*pid, c))
                .collect(),
            holders,
            top_sockets,
            drops: self.drops(),
            rcvqueue_full: self.count(COUNT_RCVQ_FULL),
            retransmits: Retransmits {
                pressure: self.count(COUNT_RETRANS_PRESSURE),
                normal: self.count(COUNT_RETRANS_NORMAL),
            },
            tcpext: self.tcpext(),
            send_latency_us,
            path: self.path.clone(),
            paths: self.paths.clone(),
            state_evicted: Evicted {
                episodes: self.episodes.evicted,
                culprits: self.culprits.evicted(),
            },
            caveats,
            socket_memory,
            memcg_pressure,
            rcv_queue: self.rcvq.report(&self.first, &self.latest, prunes_seen),
            pod_advice,
            view: View {
                episode_log2: Log2::of(&dur_hist),
                send_log2,
            },
        }
    }

    /// The latest episodes, numbered from the first one seen.
    fn episode_rows(&self) -> Vec<EpisodeRow> {
        let (skipped, ps) = (self.episodes.evicted as usize, self.latest.page_size);
        (self.episodes.list.iter().enumerate())
            .map(|(i, e)| EpisodeRow::new(skipped + i, e, self.rel_s(e.start_ns), ps))
            .collect()
    }

    /// The holders, the largest sockets and the memory per pod and cgroup: at the
    /// episode's look where the sockets held most, else now.
    fn socket_look(&self) -> (Vec<HolderRow>, TopSockets, pods::PodSockets) {
        let now;
        let (look, when) = match &self.episode_socks {
            Some(s) => (s, Look::Episode),
            None => {
                now = SocketLook::take(procinfo::monotonic_ns(), &HashSet::new()).0;
                (&now, Look::Now)
            }
        };
        let holders = (look.holders.iter().take(self.top))
            .map(|&(pid, sockets, rmem_bytes, wmem_bytes, held_bytes)| {
                let (comm, cgroup) = look.owner(pid);
                HolderRow {
                    pid,
                    comm,
                    cgroup: cgroup.into(),
                    sockets,
                    rmem_bytes,
                    wmem_bytes,
                    held_bytes,
                }
            })
            .collect();
        let sockets = (look.socks.iter().take(self.top))
            .map(|s| SockRow {
                sock: s.clone(),
                comm: s.pid.map(|p| look.owner(p).0),
                held_bytes: s.total(),
            })
            .collect();
        let top = TopSockets {
            when,
            at_s: self.rel_s(look.t_ns),
            source: look.source,
            total_bytes: look.total,
            sockets,
        };
        let pods = pods::summarize(&look.by_cgroup, look.cgroup_source, self.top);
        (holders, top, pods)
    }

    /// Memory-related drops by reason; None when kfree_skb cannot count them here.
    fn drops(&self) -> Option<Drops> {
        let by_reason = (self.drop_names.iter().enumerate())
            .map(|(i, name)| (name.to_string(), self.count(COUNT_DROP_BASE + i as u32)))
            .collect();
        self.drops_counted.then_some(Drops(by_reason))
    }

    /// Growth of the TcpExt pressure counters since the first sample.
    fn tcpext(&self) -> TcpExt {
        let (first, now) = (&self.first.counters, &self.latest.counters);
        TcpExt::of(|name| Some(now.get(name)?.saturating_sub(*first.get(name)?)))
    }

    /// The advice, about the limits in force when it hurt most.
    fn advice(&self, peak: u64, sustained_near: bool, top: &TopSockets) -> advice::Advice {
        let tm = self.latest.tcp_mem;
        let ps = self.latest.page_size;
        let adv_mem = self.episodes.worst().and_then(|e| e.tcp_mem).unwrap_or(tm);
        // The share of TCP memory the largest sockets held, and whether receive queues
        // made up most of it.
        let top_bytes: u64 = top.sockets.iter().map(|s| s.held_bytes).sum();
        let top_recv: u64 = top.sockets.iter().map(|s| s.sock.rmem).sum();
        let top_share = (top.total_bytes > 0 && !top.sockets.is_empty()).then(|| {
            (
                top_bytes as f64 / top.total_bytes as f64,
                top.sockets.len(),
                top_recv * 2 >= top_bytes,
            )
        });
        let mut adv = advice::compute(&advice::Inputs {
            tcp_mem: adv_mem,
            page_size: ps,
            peak_pages: peak,
            episodes: self.episodes.total() as usize,
            sustained_near,
            near_rule: self.rule.describe(),
            mem_total_bytes: mem_total_bytes(),
            top_share,
            rmem: read_triple("/proc/sys/net/ipv4/tcp_rmem"),
            wmem: read_triple("/proc/sys/net/ipv4/tcp_wmem"),
        });
        if let Some(note) = advice::limits_changed(adv_mem, tm) {
            adv.notes.insert(1, note);
        }
        adv
    }

    /// The attach-time caveats and what this report could not see.
    fn caveats_now(&self, ctx: &ReportCtx, refusals: u64) -> Vec<String> {
        let mut caveats = self.caveats.clone();
        if ctx.lost_events > 0 {
            caveats.push(format!(
                "{} refusal records were lost (ring buffer full): culprit counts are low; the kernel counted {refusals} refusals in all",
                ctx.lost_events
            ));
        }
        if self.unresolved > 0 {
            caveats.push(format!(
                "{} refusals hit sockets that no process held when looked up (closed or orphaned): {} counted for the task that was current, {} for nobody (a kernel thread was current: softirq work, not a culprit)",
                self.unresolved,
                self.unresolved.saturating_sub(self.unattributed),
                self.unattributed
            ));
        }
        let (ep_evicted, cul_evicted) = (self.episodes.evicted, self.culprits.evicted());
        if ep_evicted > 0 {
            caveats.push(format!(
                "the {ep_evicted} oldest episodes are not listed (the latest {} are kept); their durations are in the summary",
                episodes::EPISODES_CAPACITY
            ));
        }
        if cul_evicted > 0 {
            caveats.push(format!(
                "{cul_evicted} processes' refusal counts were forgotten to keep {} (least recently refused first): the culprits are of the recent ones; the total counts them all",
                culprits::CULPRITS_CAPACITY
            ));
        }
        caveats
    }
}

fn read_triple(path: &str) -> Option<[u64; 3]> {
    tcpmem::triple(&std::fs::read_to_string(path).ok()?)
}

fn mem_total_bytes() -> Option<u64> {
    use procfs::Current as _;
    procfs::Meminfo::current().ok().map(|m| m.mem_total)
}
