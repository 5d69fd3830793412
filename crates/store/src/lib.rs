//! gimmm's durable store: the interface the engine writes and reads through
//! (DESIGN §5, "the store interface"), and its implementations.
//!
//! * [`Store`] is the interface. [`sqlite::SqliteStore`] (SQLite in WAL mode
//!   with pipelined group commit, SPEC §6) is the embedded default;
//!   [`memory::MemStore`] keeps everything in memory, for tests that drive
//!   the engine under paused time. Both pass the [`conformance`] suite, which
//!   any further implementation (PostgreSQL, SPEC §12) runs as well.
//! * [`types`] holds what crosses the interface: the writes ([`Op`] in a
//!   [`Batch`]), the commit report ([`Committed`]) and the rows read back
//!   ([`QueuedRow`], [`OutboxRow`], …), all named structs.
//!
//! # The contract
//!
//! **Writes.** The engine hands the store [`Batch`]es with increasing
//! numbers through [`Store::submit`]. The store applies each batch
//! atomically and reports it **exactly once, in submission order**, as a
//! [`Committed`] on the channel given when it was opened — and only once
//! the batch is durable (on disk, fsynced). A store may commit many
//! batches in one transaction (group commit) but reports each one. The
//! engine runs nothing the outside world relies on (DOWNSTREAM_ACCEPTED, a
//! sequenced line to a BAL, an ack of an upstream message) before the
//! report of the batch that records it. Every [`Op`] is idempotent, so a
//! batch can be re-applied after a failure. When a store cannot take writes
//! (disk full …) it says so through [`Store::is_degraded`], refuses the new
//! messages of the batches it could not commit
//! ([`Committed::failed_inserts`]) and keeps retrying the rest, which the
//! engine has already acted on.
//!
//! **Reads** are async and run off the caller's task, so a slow disk or a
//! remote database never stalls the engine. They return **only durable
//! rows**: a row written by a batch that has not been reported yet is never
//! returned (SQLite makes a commit visible a moment before its fsync; the
//! SQLite store hides that). Errors are [`StoreError`]s, the backend's own
//! error boxed inside.
//!
//! **Retention** (SPEC §11). Finished downstream rows (kept for
//! idempotency and receipt routing) and upstream ids older than
//! [`StoreOptions::retention`] are deleted in the background, in small
//! steps that never hold up a batch; queued rows, outbox rows and
//! unroutable messages are never pruned. After a prune, a repeated message
//! id is a new message and a resent upstream id is delivered again: the
//! idempotency of SPEC §3.2 holds within the retention window. Row ids stay
//! above every id handed out, pruned or not ([`Recovery::next_id`]).
//! [`Store::prune_now`] runs a pass on demand and [`Store::pruned`] counts
//! what was removed, so tests wait for pruning instead of sleeping; rows
//! are aged by the store's [`Clock`], which tests set by hand.

pub mod conformance;
mod error;
mod marks;
pub mod memory;
pub mod postgres;
pub mod retention;
pub mod sqlite;
pub mod types;

pub use error::StoreError;
pub use retention::{Clock, Pruned, StoreOptions, DEFAULT_RETENTION};
pub use types::{
    now_ms, Batch, Committed, Counts, NewDownstream, Op, OutboxRow, QueuedRow, ReceiptTarget,
    Recovery, UnroutableRow, WriterLease,
};

use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::watch;

/// A shared handle to a store, as the engine and the admin API hold it.
pub type SharedStore = Arc<dyn Store>;

/// Result of a store read.
pub type ReadResult<T> = Result<T, StoreError>;

/// The store interface (see the crate docs for the contract).
///
/// Read futures are `'static`: they own what they need, so callers can
/// spawn them or await them anywhere.
pub trait Store: Send + Sync + 'static {
    /// Hands a batch to the writer; it is reported on the commit channel
    /// once durable. Fails only when the writer has stopped.
    fn submit(&self, batch: Batch) -> Result<(), StoreError>;

    /// True while commits fail (disk full, read-only …): new messages
    /// should be refused at once rather than queued behind the stuck write.
    fn is_degraded(&self) -> bool;

    /// Queued downstream messages with `id > after`, in id order, at most
    /// `limit`.
    fn load_queued(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, ReadResult<Vec<QueuedRow>>>;

    /// Sequenced messages of `session` with `seq > after`, in order, at
    /// most `limit`.
    fn load_outbox(
        &self,
        session: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, ReadResult<Vec<OutboxRow>>>;

    /// The session and row of a finished downstream message that still
    /// waits for a delivery receipt, by its message id (the newest if
    /// several sessions used the id).
    fn receipt_target(
        &self,
        message_id: &str,
    ) -> BoxFuture<'static, ReadResult<Option<ReceiptTarget>>>;

    /// Whether this upstream id was already delivered.
    fn upstream_seen(&self, message_id: &str) -> BoxFuture<'static, ReadResult<bool>>;

    /// Row counts for metrics and the admin API.
    fn counts(&self) -> BoxFuture<'static, ReadResult<Counts>>;

    /// The newest unroutable upstream messages, at most `limit`.
    fn unroutable(&self, limit: usize) -> BoxFuture<'static, ReadResult<Vec<UnroutableRow>>>;

    /// Where the data lives, for logs (a path, never a password).
    fn describe(&self) -> String;

    /// Runs a prune pass now: deletes what the retention allows, in the
    /// usual small steps (batches still go first), and resolves with what
    /// the pass removed once that is visible to reads. Without retention it
    /// resolves at once with nothing.
    fn prune_now(&self) -> BoxFuture<'static, ReadResult<Pruned>>;

    /// Rows pruned since the store was opened (background passes and
    /// [`Store::prune_now`]), counted when their deletion is visible.
    fn pruned(&self) -> watch::Receiver<Pruned>;

    /// The writer lease of a store several nodes share (SPEC §12); `None`
    /// for a store only this process uses.
    fn writer_lease(&self) -> BoxFuture<'static, ReadResult<Option<WriterLease>>> {
        Box::pin(async { Ok(None) })
    }
}
