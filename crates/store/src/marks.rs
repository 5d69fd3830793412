//! The "durable up to" marks of the store contract's reads (crate docs,
//! "Reads"): the highest downstream row id and sequence id of the batches
//! reported as committed. Reads return nothing above them, so a row shows
//! only once the batch that wrote it has been reported.

use std::sync::atomic::{AtomicU64, Ordering};

/// Highest downstream row id and sequence id reported as committed.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    pub(crate) id: AtomicU64,
    pub(crate) seq: AtomicU64,
}

impl Marks {
    /// Raises the marks to cover a reported batch (never lowers them).
    pub(crate) fn raise(&self, id: u64, seq: u64) {
        self.id.fetch_max(id, Ordering::Release);
        self.seq.fetch_max(seq, Ordering::Release);
    }
}

/// A mark as an SQL integer.
pub(crate) fn durable(mark: &AtomicU64) -> i64 {
    mark.load(Ordering::Acquire).min(i64::MAX as u64) as i64
}
