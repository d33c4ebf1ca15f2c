//! Advice per pod: a memcg whose own limit refused socket memory gets a limit to set;
//! a pod holding much of TCP memory in its receive (send) queues during pressure gets a
//! tcp_rmem (tcp_wmem) cap for its network namespace. Printed, never applied.
use serde::{Deserialize, Serialize};

use super::{memcg::MemcgPressure, pods::PodSockets, rows::human_bytes};

/// One line of advice about one pod or memcg.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodAdvice {
    /// The pod (namespace/name or UID), else the memcg's path.
    pub who: String,
    pub advice: String,
}

/// A pod holding at least this share of TCP memory during pressure is advised.
const POD_SHARE: f64 = 0.25;
/// Per-socket buffer caps are multiples of this, and at least twice it.
const CAP_STEP: u64 = 64 << 10;

/// What the advice is computed from.
pub struct Inputs<'a> {
    pub pods: &'a PodSockets,
    pub memcg: &'a MemcgPressure,
    /// Memory all TCP sockets held at the look, bytes.
    pub total_bytes: u64,
    /// An episode happened or memory stayed near the threshold (global evidence).
    pub pressure: bool,
    /// tcp_mem's pressure threshold, bytes.
    pub pressure_bytes: u64,
    pub rmem: Option<[u64; 3]>,
    pub wmem: Option<[u64; 3]>,
}

pub fn compute(i: &Inputs) -> Vec<PodAdvice> {
    let mut out = Vec::new();
    for m in &i.memcg.memcgs {
        let who = match m.container.as_ref() {
            Some(c) => c.short(),
            None => m.memcg.clone(),
        };
        // Room for the socket memory it held on top of the limit it hit, at least a
        // quarter more, rounded up to MiB.
        let grow = m.sock_bytes.unwrap_or(0).max(m.limit_bytes / 4);
        let suggest = (m.limit_bytes + grow).div_ceil(1 << 20) * (1 << 20);
        out.push(PodAdvice {
            who,
            advice: format!(
                "memcg {} throttles its sockets at its own limit ({} refused charges, at the limit in {} looks; limit {}, usage {}, sockets {}) while global TCP memory was under tcp_mem's pressure threshold: raise or set the pod's memory limit to at least {} (resources.limits.memory), or cap its sockets' buffers (net.ipv4.tcp_rmem/tcp_wmem in the pod's network namespace)",
                m.memcg,
                m.refusals,
                m.at_limit_looks,
                human_bytes(m.limit_bytes),
                human_bytes(m.usage_bytes),
                m.sock_bytes.map(human_bytes).unwrap_or_else(|| "?".into()),
                human_bytes(suggest)
            ),
        });
    }
    if !i.pressure || i.total_bytes == 0 {
        return out;
    }
    for p in &i.pods.pods {
        let share = p.held_bytes as f64 / i.total_bytes as f64;
        if share < POD_SHARE || p.sockets == 0 {
            continue;
        }
        let recv = p.rmem_bytes >= p.wmem_bytes;
        let (name, cur) = if recv {
            ("tcp_rmem", i.rmem)
        } else {
            ("tcp_wmem", i.wmem)
        };
        // Its sockets may together hold at most a quarter of the pressure threshold.
        let per = i.pressure_bytes / 4 / p.sockets as u64;
        let cap = (per / CAP_STEP * CAP_STEP).max(2 * CAP_STEP);
        let mut line = format!(
            "pod {} held {} ({:.0}% of TCP memory) in {} sockets, mostly in {} queues",
            p.label(),
            human_bytes(p.held_bytes),
            share * 100.0,
            p.sockets,
            if recv { "receive" } else { "send" }
        );
        match cur {
            Some([min, def, max]) if cap < max => {
                line += &format!(
                    ": cap {name} in the pod's network namespace (pod securityContext.sysctls net.ipv4.{name}=\"{min} {} {cap}\", {} KiB a socket, now {} KiB), or fix its {}",
                    def.min(cap),
                    cap / 1024,
                    max / 1024,
                    if recv { "readers" } else { "peers" }
                );
            }
            _ => line += ": its buffers are already small; fix its readers or spread the load",
        }
        out.push(PodAdvice {
            who: p.label(),
            advice: line,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::{Accounting, MemcgRow, PodRow};

    fn pod(held: u64) -> PodRow {
        PodRow {
            pod_uid: "u1".into(),
            qos: None,
            namespace: Some("web".into()),
            pod: Some("proxy".into()),
            pod_cgroup: "/kubepods/podu1".into(),
            containers: 1,
            sockets: 40,
            rmem_bytes: held,
            wmem_bytes: 0,
            held_bytes: held,
            memcg_sock_bytes: None,
        }
    }

    fn inputs<'a>(pods: &'a PodSockets, memcg: &'a MemcgPressure, pressure: bool) -> Inputs<'a> {
        Inputs {
            pods,
            memcg,
            total_bytes: 100 << 20,
            pressure,
            pressure_bytes: 400 << 20,
            rmem: Some([4096, 131_072, 6_291_456]),
            wmem: Some([4096, 16_384, 4_194_304]),
        }
    }

    #[test]
    fn a_pod_holding_most_during_pressure_gets_a_cap_and_without_pressure_nothing() {
        let pods = PodSockets {
            pods: vec![pod(60 << 20)],
            ..Default::default()
        };
        let m = MemcgPressure::default();
        let a = compute(&inputs(&pods, &m, true));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].who, "web/proxy");
        // 400 MiB / 4 / 40 sockets = 2.5 MiB -> 2560 KiB.
        assert!(
            a[0].advice
                .contains("net.ipv4.tcp_rmem=\"4096 131072 2621440\""),
            "{a:?}"
        );
        assert!(compute(&inputs(&pods, &m, false)).is_empty());
    }

    #[test]
    fn a_memcg_at_its_limit_gets_a_limit() {
        let pods = PodSockets::default();
        let m = MemcgPressure {
            memcgs: vec![MemcgRow {
                memcg: "/kubepods/burstable/podu1".into(),
                container: None,
                accounting: Accounting::Cgroup2,
                limit_bytes: 16 << 20,
                usage_bytes: 16 << 20,
                usage_pct: 100.0,
                sock_bytes: Some(10 << 20),
                limit_hits: Some(3),
                refusals: 7,
                send: 0,
                recv: 7,
                at_limit_looks: 1,
                pids: vec![1],
                global_pages_max: 10,
                global_pressure_pages: 100,
            }],
            ..Default::default()
        };
        let a = compute(&inputs(&pods, &m, false));
        assert_eq!(a.len(), 1);
        assert!(
            a[0].advice
                .contains("raise or set the pod's memory limit to at least 26.0 MiB"),
            "{a:?}"
        );
    }
}
