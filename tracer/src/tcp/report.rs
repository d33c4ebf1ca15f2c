//! The tcp-pressure report: episodes, the early warning, culprits and holders, send
//! latency in and out of pressure, drops, and the advice, in text and JSON.
use super::{
    rows::{CulpritRow, EpisodeRow, HolderRow, SockRow},
    *,
};

impl TcpPressure {
    /// The report [`Detector::report`] hands out.
    pub(super) fn build_report(&mut self, ctx: &ReportCtx) -> Result<Report> {
        self.resolve(true);
        let snap = &self.latest;
        let tm: TcpMem = snap.tcp_mem;
        let ps = snap.page_size;
        let pages = snap.mem_pages;
        let peak = self.episodes.peak_pages.max(pages);
        let pct = snap.pressure_pct();
        let open = self.episodes.open().is_some();
        let near = self.near.state(&self.rule);
        let warning = warn::warning(open, pages, tm.pressure, &near);

        // Episodes: the latest EPISODES_CAPACITY, numbered from the first one seen;
        // the durations are of them all.
        let skipped = self.episodes.evicted as usize;
        let episodes: Vec<EpisodeRow> = (self.episodes.list.iter().enumerate())
            .map(|(i, e)| EpisodeRow::new(skipped + i, e, self.rel_s(e.start_ns), ps))
            .collect();
        let dur_hist = self.episodes.durations_ms();
        let dur_buckets = self.episodes.durations_buckets();
        let ep_table = Table::of(&episodes);

        // Culprits by refused allocations.
        let culprits: Vec<CulpritRow> = (self.culprits.ranked().iter().take(self.top))
            .map(|(pid, c)| CulpritRow::new(*pid, c))
            .collect();
        let cul_table = Table::of(&culprits);

        // Sockets: at the episode start where they held most, else now.
        let now_snap;
        let (sock_snap, when) = match &self.episode_socks {
            Some(s) => (s, "episode"),
            None => {
                now_snap = SocketLook::take(procinfo::monotonic_ns(), &HashSet::new()).0;
                (&now_snap, "now")
            }
        };
        let all_bytes = sock_snap.total;
        let holders: Vec<HolderRow> = (sock_snap.holders.iter().take(self.top))
            .map(|&(pid, sockets, rmem_bytes, wmem_bytes, held_bytes)| {
                let (comm, cgroup) = sock_snap.owner(pid);
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
        let hold_table = Table::of(&holders);
        let top_socks: Vec<&Sock> = sock_snap.socks.iter().take(self.top).collect();
        let sockets: Vec<SockRow> = (top_socks.iter())
            .map(|s| SockRow {
                sock: s,
                comm: s.pid.map(|p| sock_snap.owner(p).0),
                held_bytes: s.total(),
            })
            .collect();
        let sock_table = Table::of(&sockets);
        let top_bytes: u64 = top_socks.iter().map(|s| s.total()).sum();
        let top_recv: u64 = top_socks.iter().map(|s| s.rmem).sum();
        let top_share = (all_bytes > 0 && !top_socks.is_empty()).then(|| {
            (
                top_bytes as f64 / all_bytes as f64,
                top_socks.len(),
                top_recv * 2 >= top_bytes,
            )
        });

        // Effects.
        let mut drops = serde_json::Map::new();
        let mut drop_text = Vec::new();
        for (i, name) in self.drop_names.iter().enumerate() {
            let n = self.count(COUNT_DROP_BASE + i as u32);
            drops.insert((*name).into(), n.into());
            if n > 0 {
                drop_text.push(format!("{name} {n}"));
            }
        }
        let retrans_p = self.count(COUNT_RETRANS_PRESSURE);
        let retrans_n = self.count(COUNT_RETRANS_NORMAL);
        let rcvq_full = self.count(COUNT_RCVQ_FULL);
        let refusals = self.count(COUNT_REFUSALS);
        let mut ext = serde_json::Map::new();
        let mut ext_text = Vec::new();
        for name in tcpmem::PRESSURE_COUNTERS {
            let (Some(a), Some(b)) = (self.first.counters.get(*name), snap.counters.get(*name))
            else {
                continue;
            };
            let d = b.saturating_sub(*a);
            ext.insert((*name).into(), d.into());
            ext_text.push(format!("{name} +{d}"));
        }
        let lat = self.latency();

        // Advice is about the limits in force when it hurt most.
        let adv_mem = self.episodes.worst().and_then(|e| e.tcp_mem).unwrap_or(tm);
        let mut adv = advice::compute(&advice::Inputs {
            tcp_mem: adv_mem,
            page_size: ps,
            peak_pages: peak,
            episodes: self.episodes.total() as usize,
            sustained_near: near.sustained,
            near_rule: self.rule.describe(),
            mem_total_bytes: mem_total_bytes(),
            top_share,
            rmem: read_triple("/proc/sys/net/ipv4/tcp_rmem"),
            wmem: read_triple("/proc/sys/net/ipv4/tcp_wmem"),
        });

        if let Some(note) = advice::limits_changed(adv_mem, tm) {
            adv.notes.insert(1, note);
        }
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

        let json = json!({
            "tcp_mem": tm,
            "page_size": ps,
            "mem_pages": {"current": pages, "peak": peak, "pct_of_pressure": round3(pct)},
            "mem_bytes": {"current": pages * ps, "peak": peak * ps},
            "pressure_now": open,
            "warning": warning,
            "early_warning": near,
            "episodes": episodes,
            "episode_duration_ms": output::Summary::of(&dur_hist).with(&dur_buckets),
            "refusals": refusals,
            "culprits": culprits,
            "holders": holders,
            "top_sockets": {
                "when": when,
                "at_s": round3(self.rel_s(sock_snap.t_ns)),
                "source": sock_snap.source,
                "total_bytes": all_bytes,
                "sockets": sockets,
            },
            "drops": self.drops_counted.then_some(drops),
            "rcvqueue_full": rcvq_full,
            "retransmits": {"pressure": retrans_p, "normal": retrans_n},
            "tcpext": ext,
            "send_latency_us": match self.send_path {
                Some(via) => json!({
                    "measured": true,
                    "via": via,
                    "pressure": latency_json(&lat[1], self.send_max(1)),
                    "normal": latency_json(&lat[0], self.send_max(0)),
                }),
                None => json!({
                    "measured": false,
                    "why": caveats.iter().find(|c| c.starts_with("send latency")),
                }),
            },
            "advice": adv,
            "path": self.path,
            "paths": self.paths,
            "state_evicted": {"episodes": ep_evicted, "culprits": cul_evicted},
            "caveats": caveats,
        });

        // Text.
        let mut t = String::new();
        t += &format!(
            "TCP memory now: {pages} pages ({}) = {pct:.0}% of pressure; peak {peak} pages ({})\n",
            human_bytes(pages * ps),
            human_bytes(peak * ps)
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
        match &warning {
            Some(w) => t += &format!("WARNING: {w}\n"),
            None => t += &format!("{}\n", warn::no_warning_line(&near, &self.rule)),
        }
        t += &format!("path: {}\n", self.path);
        for c in &caveats {
            t += &format!("note: {c}\n");
        }
        t += "\nEPISODES (TCP memory pressure)\n";
        if ep_table.is_empty() {
            t += "  none: TCP memory stayed out of pressure\n";
        } else {
            t += &ep_table.render();
            if !dur_hist.is_empty() {
                t += "episode durations\n";
                t += &output::log2_histogram(&dur_hist, "msecs");
            }
        }
        t += &format!("\nCULPRITS (refused TCP allocations: {refusals} in all)\n");
        if cul_table.is_empty() {
            t += "  none: no TCP allocation was refused\n";
        } else {
            t += &cul_table.render();
        }
        let at = if when == "now" {
            "now".to_string()
        } else {
            format!(
                "at +{:.1}s, the fullest look during an episode",
                self.rel_s(sock_snap.t_ns)
            )
        };
        t += &format!(
            "\nHOLDERS (socket memory {at}: {} in all; {})\n",
            human_bytes(all_bytes),
            sock_snap.source.as_str()
        );
        if hold_table.is_empty() {
            t += "  none\n";
        } else {
            t += &hold_table.render();
            t += "\nTOP SOCKETS\n";
            t += &sock_table.render();
        }
        t += "\nEFFECTS\n";
        t += &format!(
            "  memory-related drops: {}\n",
            if !self.drops_counted {
                "not counted (see the note above)".into()
            } else if drop_text.is_empty() {
                "none".into()
            } else {
                drop_text.join(", ")
            }
        );
        t += &format!(
            "  retransmits: {retrans_p} during pressure, {retrans_n} outside; receive queue full: {rcvq_full}\n"
        );
        t += &format!("  TcpExt since start: {}\n", ext_text.join(", "));
        match self.send_path {
            Some(via) => {
                t += &format!("\nSEND LATENCY during pressure ({via}, TCP only)\n");
                t += &latency_text(&lat[1].0);
                t += "\nSEND LATENCY outside pressure\n";
                t += &latency_text(&lat[0].0);
            }
            None => {
                t += "\nSEND LATENCY during pressure: NOT MEASURED (no hook can time sends on this kernel; see the note above)\n";
            }
        }
        t += "\nADVICE (computed from the measured numbers above; printed, never applied)\n";
        for n in &adv.notes {
            t += &format!("  {n}\n");
        }
        for l in &adv.sysctl {
            t += &format!("  {l}\n");
        }
        if !adv.sysctl.is_empty() {
            t += "  to persist, put the same settings (`net.ipv4.tcp_mem = ...`) in /etc/sysctl.d/90-tcp-memory.conf and run `sysctl --system`\n";
        }
        Ok(Report { json, text: t })
    }
}

/// A send latency summary in usecs, with the Prometheus buckets and exact sum.
fn latency_json((h, buckets): &(Histogram<u64>, Buckets), exact_max: u64) -> Value {
    // Quantiles at the bottom of hdrhistogram's equivalence range (its own rounding
    // is far finer than the kernel's 1/16 buckets), never above the exact maximum.
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            let v = h.lowest_equivalent(h.value_at_quantile(q)).min(exact_max);
            round3(v as f64 / 1e3)
        }
    };
    let mut j = json!({
        "count": h.len(),
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": round3(exact_max as f64 / 1e3),
    });
    if let (Some(o), Ok(Value::Object(b))) = (j.as_object_mut(), serde_json::to_value(buckets.exact())) {
        o.extend(b);
    }
    j
}

pub(super) fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else {
        format!("{:.2} GiB", b / 1073741824.0)
    }
}

fn read_triple(path: &str) -> Option<[u64; 3]> {
    tcpmem::triple(&std::fs::read_to_string(path).ok()?)
}

fn mem_total_bytes() -> Option<u64> {
    use procfs::Current as _;
    procfs::Meminfo::current().ok().map(|m| m.mem_total)
}

/// bcc-style histogram in usecs of a ns histogram.
fn latency_text(ns: &Histogram<u64>) -> String {
    let mut us = output::new_histogram();
    for v in ns.iter_recorded() {
        let _ = us.record_n(
            (v.value_iterated_to() / 1000).clamp(us.low(), us.high()),
            v.count_at_value(),
        );
    }
    output::log2_histogram(&us, "usecs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_json_is_in_usecs_and_max_is_exact() {
        let mut h = output::new_histogram();
        h.record_n(10_000, 99).unwrap();
        h.record(250_000_000).unwrap();
        let mut b = Buckets::new(metrics::SEND_BOUNDS);
        // The kernel's buckets of the two latencies.
        b.add_upto(lat_range(lat_bucket(10_000)).1, 99);
        b.add_upto(lat_range(lat_bucket(250_000_123)).1, 1);
        b.add_sum_ns(99 * 10_000 + 250_000_123);
        let j = latency_json(&(h, b), 250_000_123);
        assert_eq!(j["count"], 100);
        assert_eq!(j["p50"], 10.0);
        assert_eq!(j["max"], 250_000.123);
        assert_eq!(j["sum_s"], 0.250_990_123);
        // 10 us is under the bound 16.384 us, 250 ms under 268.435456 ms.
        let le = |s: f64| {
            j["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["le_s"] == s)
                .unwrap()["count"]
                .clone()
        };
        assert_eq!((le(4.096e-6), le(16.384e-6)), (json!(0), json!(99)));
        assert_eq!((le(0.067108864), le(0.268435456)), (json!(99), json!(100)));
    }

    #[test]
    fn send_bounds_are_edges_of_the_kernels_buckets() {
        for &le in metrics::SEND_BOUNDS {
            let ns = (le * 1e9).round() as u64;
            assert_eq!(
                lat_range(lat_bucket(ns)).0,
                ns,
                "{le}: a bucket starts there"
            );
        }
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
