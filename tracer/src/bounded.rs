//! A map with a cap for state that grows with events (`tracer serve` runs for weeks):
//! once full, a new key evicts the least recently used one, and the evictions are
//! counted so that a report can say how much per-key detail it no longer has. Totals
//! belong next to it, never in it: they must stay exact whatever was evicted.
use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    hash::Hash,
};

/// At most `cap` entries, least recently used evicted first.
#[derive(Clone, Debug)]
pub struct Lru<K, V> {
    cap: usize,
    /// key -> (value, the tick of its last use).
    map: HashMap<K, (V, u64)>,
    /// tick -> key: the oldest use first.
    order: BTreeMap<u64, K>,
    tick: u64,
    evicted: u64,
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    /// A map of at most `cap` (at least 1) entries.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            evicted: 0,
        }
    }

    /// The value for `key`, made the most recently used; inserted from `init` when
    /// absent, evicting the least recently used entry when the map is full.
    pub fn entry(&mut self, key: K, init: impl FnOnce() -> V) -> &mut V {
        self.tick += 1;
        let tick = self.tick;
        let new = match self.map.entry(key.clone()) {
            Entry::Occupied(mut o) => {
                let old = std::mem::replace(&mut o.get_mut().1, tick);
                self.order.remove(&old);
                false
            }
            Entry::Vacant(v) => {
                v.insert((init(), tick));
                true
            }
        };
        self.order.insert(tick, key.clone());
        if new && self.map.len() > self.cap {
            // The newest key has the highest tick: the first one is another key.
            if let Some((_, oldest)) = self.order.pop_first() {
                self.map.remove(&oldest);
                self.evicted += 1;
            }
        }
        &mut self.map.get_mut(&key).expect("inserted above").0
    }

    /// The value for `key`, without counting it as a use.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    /// Removes `key` (not an eviction).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (v, tick) = self.map.remove(key)?;
        self.order.remove(&tick);
        Some(v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, (v, _))| (k, v))
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries evicted to make room since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_keeps_the_cap_and_evicts_the_least_recently_used() {
        let mut m = Lru::new(3);
        for k in 0..3 {
            *m.entry(k, || 0) += 1;
        }
        // 0 is used again: 1 is now the least recently used.
        *m.entry(0, || 0) += 1;
        *m.entry(3, || 0) += 1;
        assert_eq!(m.len(), 3);
        assert_eq!(m.evicted(), 1);
        assert_eq!(m.get(&1), None);
        assert_eq!(m.get(&0), Some(&2));
        for k in 4..1_000 {
            m.entry(k, || 0);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.evicted(), 997);
        assert_eq!(m.order.len(), 3, "the order index is bounded too");
        assert_eq!(m.remove(&999), Some(0));
        assert_eq!((m.len(), m.order.len(), m.evicted()), (2, 2, 997));
    }
}
