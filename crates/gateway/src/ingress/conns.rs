//! The ingress's connection limit (`ingress.max_connections`, SPEC §10).
//!
//! Refusing new connections once the limit is reached would let a few
//! thousand idle or slow connections (slow-loris) lock everybody else out
//! until their timeouts fire. Instead, when the table is full, the
//! connection that has been idle the longest — not inside a request: still
//! sending its TLS handshake or request head, or waiting between requests —
//! is closed to make room. Only when every connection is inside a request
//! is the new one refused. A legitimate client's request takes
//! milliseconds, so it is rarely the one evicted; an idle keep-alive client
//! that is evicted simply reconnects.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

/// The open connections.
#[derive(Debug)]
pub(crate) struct Conns {
    max: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// Increases on every state change: orders idle connections by age.
    next_mark: u64,
    /// Idle connections: mark -> connection id.
    idle: BTreeMap<u64, u64>,
    /// Every connection: id -> its idle mark (None while busy), its stop.
    all: HashMap<u64, (Option<u64>, u32, CancellationToken)>,
}

/// What [`Conns::admit`] decided.
pub(crate) enum Admit {
    /// In; `evicted` says whether another connection was closed for it.
    In { conn: Arc<ConnGuard>, evicted: bool },
    /// Full of busy connections: refused.
    Full,
}

impl Conns {
    pub(crate) fn new(max: usize) -> Arc<Conns> {
        Arc::new(Conns {
            max: max.max(1),
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        }
    }

    /// A new connection: in (closing the longest-idle one when full), or
    /// refused when every connection is busy.
    pub(crate) fn admit(self: &Arc<Conns>) -> Admit {
        let mut t = self.lock();
        let mut evicted = false;
        if t.all.len() >= self.max {
            match t.idle.pop_first() {
                Some((_, victim)) => {
                    if let Some((_, _, stop)) = t.all.remove(&victim) {
                        stop.cancel();
                    }
                    evicted = true;
                }
                None => return Admit::Full,
            }
        }
        t.next_id += 1;
        t.next_mark += 1;
        let (id, mark) = (t.next_id, t.next_mark);
        let stop = CancellationToken::new();
        t.idle.insert(mark, id);
        t.all.insert(id, (Some(mark), 0, stop.clone()));
        gauge(t.all.len());
        Admit::In {
            conn: Arc::new(ConnGuard {
                conns: self.clone(),
                id,
                stop,
            }),
            evicted,
        }
    }

    /// Connections in the table.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().all.len()
    }
}

fn gauge(n: usize) {
    metrics::gauge!(crate::metrics::INGRESS_CONNECTIONS).set(n as f64);
}

/// One admitted connection; leaves the table when dropped.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    conns: Arc<Conns>,
    id: u64,
    stop: CancellationToken,
}

impl ConnGuard {
    /// Cancelled when the connection was evicted: close it.
    pub(crate) fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// A request starts: not evictable until the [`Busy`] is dropped.
    pub(crate) fn busy(self: &Arc<ConnGuard>) -> Busy {
        let mut t = self.conns.lock();
        if let Some((mark, n, _)) = t.all.get_mut(&self.id) {
            *n += 1;
            if let Some(m) = mark.take() {
                t.idle.remove(&m);
            }
        }
        Busy(self.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut t = self.conns.lock();
        if let Some((Some(m), _, _)) = t.all.remove(&self.id) {
            t.idle.remove(&m);
        }
        gauge(t.all.len());
    }
}

/// A request in progress on a connection.
pub(crate) struct Busy(Arc<ConnGuard>);

impl Drop for Busy {
    fn drop(&mut self) {
        let g = &self.0;
        let mut t = g.conns.lock();
        t.next_mark += 1;
        let mark = t.next_mark;
        let idle = match t.all.get_mut(&g.id) {
            Some((m, n, _)) => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    *m = Some(mark);
                    true
                } else {
                    false
                }
            }
            None => false,
        };
        if idle {
            t.idle.insert(mark, g.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(c: &Arc<Conns>) -> Option<(Arc<ConnGuard>, bool)> {
        match c.admit() {
            Admit::In { conn, evicted } => Some((conn, evicted)),
            Admit::Full => None,
        }
    }

    #[test]
    fn the_longest_idle_goes_first_and_busy_ones_stay() {
        let c = Conns::new(3);
        let (a, _) = admit(&c).unwrap();
        let (b, _) = admit(&c).unwrap();
        let (d, e) = admit(&c).unwrap();
        assert!(!e);
        // a is busy, b idle since before d: b is evicted.
        let busy_a = a.busy();
        let (x, e) = admit(&c).unwrap();
        assert!(e && b.stop().is_cancelled() && !a.stop().is_cancelled());
        assert_eq!(c.len(), 3);
        // a finishes its request: now idle, but newer than d.
        drop(busy_a);
        let (_y, _) = admit(&c).unwrap();
        assert!(d.stop().is_cancelled() && !a.stop().is_cancelled());
        // Everybody busy: refused.
        let _busy = [a.busy(), x.busy(), _y.busy()];
        assert!(admit(&c).is_none());
        drop(b);
        drop(d);
        assert_eq!(c.len(), 3);
        drop(_busy);
        drop(x);
        assert_eq!(c.len(), 2);
    }
}
