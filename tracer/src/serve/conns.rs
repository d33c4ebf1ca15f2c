//! `tracer serve`'s connections. The cap counts requests in progress, not sockets: a
//! connection with no request in progress (one that has not sent its request yet,
//! sends it a byte at a time, or waits between keep-alive requests) is idle, and at
//! [`MAX_OPEN`] open connections the one idle longest is closed to make room for the
//! new one. So a client holding many idle or slow connections cannot keep a scrape or
//! a liveness probe out: they connect, send their request at once, and are served.
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Open connections kept. A scraper or a probe holds one at a time; the rest is
/// headroom for several Prometheus servers and whatever else connects. Each costs a
/// task and hyper's buffers.
pub const MAX_OPEN: usize = 128;
/// Requests handled at once; one more waits for a slot (a request takes milliseconds).
pub const MAX_REQUESTS: usize = 32;

/// The open connections and the request slots.
pub struct Conns {
    table: Mutex<Table>,
    requests: Arc<Semaphore>,
    /// Idle connections closed to make room, since the start.
    closed_idle: AtomicU64,
}

#[derive(Default)]
struct Table {
    next: u64,
    open: BTreeMap<u64, Entry>,
}

struct Entry {
    /// A request is in progress on it (HTTP/1.1 serves one at a time per connection).
    busy: bool,
    /// When it was accepted or last answered a request.
    idle_since: Instant,
    /// Told when it must close to make room.
    close: Arc<Notify>,
}

/// A connection let in: its number, and what tells it to close.
pub struct Admitted {
    pub id: u64,
    pub close: Arc<Notify>,
}

/// A request in progress: its connection is busy, and it holds a request slot, until
/// this is dropped.
pub struct Busy {
    conns: Arc<Conns>,
    id: u64,
    _slot: OwnedSemaphorePermit,
}

impl Default for Conns {
    fn default() -> Self {
        Conns {
            table: Mutex::default(),
            requests: Arc::new(Semaphore::new(MAX_REQUESTS)),
            closed_idle: AtomicU64::new(0),
        }
    }
}

impl Conns {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a new connection in. At the cap, the connection idle longest is told to
    /// close; None when every open connection has a request in progress (then the new
    /// one is closed: the client retries).
    pub fn admit(&self) -> Option<Admitted> {
        let mut t = self.table();
        if t.open.len() >= MAX_OPEN {
            let idlest = (t.open.iter())
                .filter(|(_, e)| !e.busy)
                .min_by_key(|(_, e)| e.idle_since)
                .map(|(id, _)| *id)?;
            if let Some(e) = t.open.remove(&idlest) {
                e.close.notify_one();
                self.closed_idle.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = t.next;
        t.next += 1;
        let close = Arc::new(Notify::new());
        t.open.insert(
            id,
            Entry {
                busy: false,
                idle_since: Instant::now(),
                close: close.clone(),
            },
        );
        Some(Admitted { id, close })
    }

    /// Connection `id` closed (or was closed to make room).
    pub fn gone(&self, id: u64) {
        self.table().open.remove(&id);
    }

    /// A request arrived on connection `id`: it is busy (never closed to make room)
    /// from now until the returned guard drops, and the request waits for a slot.
    pub async fn request(self: &Arc<Self>, id: u64) -> Busy {
        if let Some(e) = self.table().open.get_mut(&id) {
            e.busy = true;
        }
        // The semaphore is never closed.
        let slot = (self.requests.clone().acquire_owned().await)
            .unwrap_or_else(|_| unreachable!("the request semaphore is never closed"));
        Busy {
            conns: self.clone(),
            id,
            _slot: slot,
        }
    }

    /// Idle connections closed to make room, since the start.
    pub fn closed_idle(&self) -> u64 {
        self.closed_idle.load(Ordering::Relaxed)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(e) = self.conns.table().open.get_mut(&self.id) {
            e.busy = false;
            e.idle_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_connection_idle_longest_makes_room() {
        let conns = Conns::default();
        let first: Vec<Admitted> = (0..MAX_OPEN).map(|_| conns.admit().unwrap()).collect();
        assert_eq!(conns.closed_idle(), 0);
        let extra = conns.admit().unwrap();
        assert_eq!(conns.closed_idle(), 1);
        assert_eq!(conns.table().open.len(), MAX_OPEN);
        assert!(!conns.table().open.contains_key(&first[0].id));
        assert!(conns.table().open.contains_key(&extra.id));
    }

    #[tokio::test]
    async fn a_connection_with_a_request_in_progress_is_never_closed_for_room() {
        let conns = Arc::new(Conns::default());
        let first: Vec<Admitted> = (0..MAX_OPEN).map(|_| conns.admit().unwrap()).collect();
        let busy = conns.request(first[0].id).await;
        conns.admit().unwrap();
        assert!(conns.table().open.contains_key(&first[0].id));
        assert!(!conns.table().open.contains_key(&first[1].id));
        drop(busy);
        // Answered: idle again, and now the one idle the shortest time.
        assert!(!conns.table().open[&first[0].id].busy);
        conns.admit().unwrap();
        assert!(conns.table().open.contains_key(&first[0].id));
        assert!(!conns.table().open.contains_key(&first[2].id));
        assert_eq!(conns.closed_idle(), 2);
    }

    #[test]
    fn with_every_connection_busy_a_new_one_is_refused() {
        let conns = Conns::default();
        let all: Vec<Admitted> = (0..MAX_OPEN).map(|_| conns.admit().unwrap()).collect();
        for a in &all {
            conns.table().open.get_mut(&a.id).unwrap().busy = true;
        }
        assert!(conns.admit().is_none());
        conns.gone(all[5].id);
        assert!(conns.admit().is_some());
        assert_eq!(conns.closed_idle(), 0);
    }
}
