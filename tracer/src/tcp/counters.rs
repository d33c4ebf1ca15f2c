//! The kernel's counters as the report carries them: memory-related drops by reason
//! (the reasons this kernel names) and the growth of the TcpExt pressure counters.
use std::fmt;

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{MapAccess, Visitor},
    ser::SerializeMap,
};

use super::metrics;
use crate::prom::{Families, MS, Num};

/// Packets dropped per memory-related reason, in the order of
/// `spec::MEMORY_DROP_REASONS` (those this kernel's skb:kfree_skb names): a JSON
/// object of reason -> count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Drops(pub Vec<(String, u64)>);

impl Drops {
    /// The drops of `reason`; None when this kernel does not name it.
    pub fn get(&self, reason: &str) -> Option<u64> {
        self.0.iter().find(|(r, _)| r == reason).map(|(_, n)| *n)
    }
}

impl Serialize for Drops {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (reason, n) in &self.0 {
            m.serialize_entry(reason, n)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Drops {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Drops;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of drop reason -> count")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Drops, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    v.push(entry);
                }
                Ok(Drops(v))
            }
        }
        d.deserialize_map(InOrder)
    }
}

/// Growth of the TcpExt counters about memory pressure since the start (the kernel's
/// names, in the order of `snapshot::tcpmem::PRESSURE_COUNTERS`); a counter this
/// kernel lacks is left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpExt {
    #[serde(
        rename = "TCPMemoryPressures",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_pressures: Option<u64>,
    /// Milliseconds.
    #[serde(
        rename = "TCPMemoryPressuresChrono",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_pressures_chrono: Option<u64>,
    #[serde(
        rename = "PruneCalled",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prune_called: Option<u64>,
    #[serde(rename = "RcvPruned", default, skip_serializing_if = "Option::is_none")]
    pub rcv_pruned: Option<u64>,
    #[serde(rename = "OfoPruned", default, skip_serializing_if = "Option::is_none")]
    pub ofo_pruned: Option<u64>,
    #[serde(
        rename = "TCPRcvQDrop",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rcvq_drop: Option<u64>,
    #[serde(
        rename = "TCPAbortOnMemory",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub abort_on_memory: Option<u64>,
    /// Packets merged into fewer buffers while a receive queue was pruned.
    #[serde(
        rename = "TCPRcvCollapsed",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rcv_collapsed: Option<u64>,
}

impl TcpExt {
    /// Each counter by its kernel name, in the report's order.
    fn slots(&mut self) -> [(&'static str, &mut Option<u64>); 8] {
        [
            ("TCPMemoryPressures", &mut self.memory_pressures),
            (
                "TCPMemoryPressuresChrono",
                &mut self.memory_pressures_chrono,
            ),
            ("PruneCalled", &mut self.prune_called),
            ("RcvPruned", &mut self.rcv_pruned),
            ("OfoPruned", &mut self.ofo_pruned),
            ("TCPRcvQDrop", &mut self.rcvq_drop),
            ("TCPAbortOnMemory", &mut self.abort_on_memory),
            ("TCPRcvCollapsed", &mut self.rcv_collapsed),
        ]
    }

    /// Each counter's growth from `growth(kernel name)`.
    pub fn of(growth: impl Fn(&str) -> Option<u64>) -> TcpExt {
        let mut t = TcpExt::default();
        for (name, v) in t.slots() {
            *v = growth(name);
        }
        t
    }

    /// The counters this kernel has, by kernel name, in the report's order.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let mut t = self.clone();
        (t.slots().into_iter())
            .filter_map(|(name, v)| Some((name, (*v)?)))
            .collect()
    }

    /// Each counter as its own metric, in base units.
    pub fn collect(&self, out: &mut Families) {
        use metrics::*;
        out.opt(&PRESSURES, &[], self.memory_pressures);
        let chrono = self.memory_pressures_chrono.map(|ms| Num::from(ms).per(MS));
        out.opt(&PRESSURE_TIME, &[], chrono);
        out.opt(&PRUNES, &[], self.prune_called);
        out.opt(&RCV_PRUNED, &[], self.rcv_pruned);
        out.opt(&OFO_PRUNED, &[], self.ofo_pruned);
        out.opt(&RCVQ_DROP, &[], self.rcvq_drop);
        out.opt(&ABORTS, &[], self.abort_on_memory);
        out.opt(&RCV_COLLAPSED, &[], self.rcv_collapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tcpmem::PRESSURE_COUNTERS;

    #[test]
    fn tcpext_keys_are_the_kernels_counters_in_order_and_missing_ones_are_left_out() {
        let all = TcpExt::of(|name| Some(name.len() as u64));
        let names: Vec<&str> = all.named().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, PRESSURE_COUNTERS);
        let j = serde_json::to_value(&all).unwrap();
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(keys, PRESSURE_COUNTERS);
        assert_eq!(j["PruneCalled"], 11);
        assert_eq!(j["TCPRcvCollapsed"], 15);
        let some = TcpExt::of(|name| (name == "OfoPruned").then_some(3));
        assert_eq!(serde_json::to_string(&some).unwrap(), r#"{"OfoPruned":3}"#);
        assert_eq!(some.named(), [("OfoPruned", 3)]);
        let back: TcpExt = serde_json::from_str(r#"{"OfoPruned":3}"#).unwrap();
        assert_eq!(back, some);
    }

    #[test]
    fn drops_keep_the_kernels_order_both_ways() {
        let d = Drops(vec![("PROTO_MEM".into(), 2), ("NOMEM".into(), 0)]);
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(s, r#"{"PROTO_MEM":2,"NOMEM":0}"#);
        assert_eq!(serde_json::from_str::<Drops>(&s).unwrap(), d);
        assert_eq!(
            (d.get("PROTO_MEM"), d.get("NOMEM"), d.get("PFMEMALLOC")),
            (Some(2), Some(0), None)
        );
    }
}
