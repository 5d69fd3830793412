//! Retention (SPEC §11 "Retention"): how long finished downstream rows and
//! upstream dedupe ids are kept, the clock they are aged by, and what a
//! prune pass removed. The stores take these as [`StoreOptions`] when they
//! are opened.
//!
//! Finished downstream rows keep `(session, message_id)` so that a repeated
//! message id is answered `duplicate:true` (SPEC §3.2), and, when a receipt
//! was asked for, so that the receipt can be routed; upstream ids are kept
//! so that FCM's resends are not delivered twice. Both are needed only for a
//! while: past the retention a store deletes them, in small steps that never
//! hold up a batch (the SQLite store prunes in its writer thread only when
//! no batch is waiting). Idempotency therefore holds **within the retention
//! window**; a receipt arriving after it is unroutable.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The wall clock a store stamps rows with (Unix ms) and ages them by.
/// Tests use a manual one to make rows old without waiting.
#[derive(Clone, Default)]
pub enum Clock {
    /// The system's wall clock ([`crate::now_ms`]).
    #[default]
    System,
    /// A clock that moves only when told to ([`Clock::advance`], [`Clock::set`]).
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `start_ms`.
    pub fn manual(start_ms: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    /// Now, in Unix ms.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => crate::now_ms(),
            Clock::Manual(t) => t.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(t) = self {
            t.fetch_add(
                i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
                Ordering::AcqRel,
            );
        }
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.store(ms, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clock::System => f.write_str("System"),
            Clock::Manual(t) => write!(f, "Manual({})", t.load(Ordering::Acquire)),
        }
    }
}

/// How a store is run. [`StoreOptions::default`] is what `open` uses.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long finished downstream rows and upstream ids are kept after
    /// they were written (a row's age counts from its final result, an
    /// upstream id's from its first delivery). `None` keeps them forever.
    /// Default: 24 hours (`store.retention_hours`).
    pub retention: Option<Duration>,
    /// Most rows one prune step deletes from each table. Small, so that a
    /// batch arriving during a step waits little; the next step follows at
    /// once when the writer is idle again.
    pub prune_batch: usize,
    /// After a pass that found nothing more to delete, how long until the
    /// store looks again.
    pub prune_interval: Duration,
    /// The clock rows are stamped and aged by.
    pub clock: Clock,
}

/// The default retention (SPEC §11): 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            retention: Some(DEFAULT_RETENTION),
            prune_batch: 128,
            prune_interval: Duration::from_secs(1),
            clock: Clock::System,
        }
    }
}

impl StoreOptions {
    /// The retention in ms, `None` when rows are kept forever.
    pub(crate) fn retention_ms(&self) -> Option<i64> {
        self.retention
            .map(|r| i64::try_from(r.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Rows removed by pruning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished downstream rows.
    pub downstream: u64,
    /// Upstream dedupe ids.
    pub upstream: u64,
}

impl Pruned {
    /// Adds `other` to this.
    pub fn add(&mut self, other: Pruned) {
        self.downstream += other.downstream;
        self.upstream += other.upstream;
    }
}
