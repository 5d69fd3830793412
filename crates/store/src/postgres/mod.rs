//! The PostgreSQL store (SPEC §12): the [`Store`] interface on a PostgreSQL
//! server (13+), for gateways whose state must outlive one machine's disk.
//! It passes the same [`crate::conformance`] suite as the SQLite store.
//!
//! * **Writes.** One writer connection, owned by the writer task
//!   ([`writer`]): it takes every batch waiting (group commit: many BAL
//!   batches per transaction), applies them with their statements
//!   pipelined, commits, raises the durable marks and reports each batch in
//!   submission order. PostgreSQL's `COMMIT` returns once its WAL record is
//!   flushed (`synchronous_commit = on`, the default), so a report always
//!   follows durability. A failed commit is retried with the group's new
//!   messages refused ([`Committed::failed_inserts`]) while
//!   [`Store::is_degraded`] says so; a lost connection is reopened.
//! * **Reads** run on a second connection ([`reader`]); tokio-postgres
//!   pipelines concurrent queries on it. They stop at the durable marks
//!   like the SQLite store's.
//! * **One writer per database.** The writer connection holds a session
//!   advisory lock; a second gimmm on the same database is refused with
//!   [`StoreError::Locked`]. That is also the fence: every transaction runs
//!   on the connection that holds the lock, and when that connection is
//!   lost the lock goes with it, so a writer that reconnects takes the lock
//!   again before it commits anything, and stays degraded (new messages
//!   refused, nothing written) while another node holds it. Partitioned
//!   ownership across several nodes (SPEC §12's cluster) is not built yet.
//! * **Retention** (SPEC §11): the writer prunes between groups, in steps
//!   of `prune_batch` rows, by the partial index on `done_at` and the index
//!   on `upstream_seen.at`.
//! * **Secrets.** The URL's password is never printed: [`PgStore::describe`]
//!   and every error name the target as `postgres://user@host:port/db`.

mod migrate;
mod reader;
mod target;
mod writer;

pub use target::PgTarget;

/// The key of the session advisory lock the writer holds
/// (`pg_try_advisory_lock`; "gimmm" in ASCII). Advisory locks are per
/// database, so stores in different databases of one server do not meet;
/// `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = …`
/// finds the node writing.
pub const WRITER_LOCK_KEY: i64 = 0x67_69_6d_6d_6d;

use crate::marks::{durable, Marks};
use crate::retention::{Pruned, StoreOptions};
use crate::types::{
    Batch, Committed, Counts, OutboxRow, QueuedRow, ReceiptTarget, Recovery, UnroutableRow,
};
use crate::{ReadResult, Store, StoreError};
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{mpsc, oneshot, watch};

/// The PostgreSQL store. Cheap to clone; the writer stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct PgStore {
    tx: mpsc::UnboundedSender<writer::ToWriter>,
    reader: Arc<reader::Reader>,
    marks: Arc<Marks>,
    target: Arc<PgTarget>,
    degraded: Arc<AtomicBool>,
    pruned: watch::Receiver<Pruned>,
    closed: watch::Receiver<()>,
    _stop: Arc<StopOnDrop>,
}

/// Tells the writer to stop when the last [`PgStore`] clone is dropped.
struct StopOnDrop(mpsc::UnboundedSender<writer::ToWriter>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(writer::ToWriter::Stop);
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target.to_string())
            .finish()
    }
}

impl PgStore {
    /// Connects to `target`, takes the database's writer lock (waiting
    /// about two seconds for a store that is closing), migrates the schema,
    /// recovers the counters and starts the writer; each committed batch is
    /// reported on `committed`.
    pub async fn open_with(
        target: PgTarget,
        committed: UnboundedSender<Committed>,
        options: StoreOptions,
    ) -> Result<(PgStore, Recovery), StoreError> {
        let target = Arc::new(target);
        let mut conn = writer::WriterConn::connect(&target).await?;
        conn.lock(&target, writer::LOCK_WAIT).await?;
        migrate::migrate(&mut conn.client, &target).await?;
        conn.prepare(&target).await?;
        let (recovery, max_id, max_seq) = reader::recover(&conn.client, &target).await?;
        let marks = Arc::new(Marks::default());
        marks.raise(max_id, max_seq);
        let reader = Arc::new(reader::Reader::connect(&target).await?);
        let degraded = Arc::new(AtomicBool::new(false));
        let (totals, pruned) = watch::channel(Pruned::default());
        let (closed_tx, closed) = watch::channel(());
        let (tx, rx) = mpsc::unbounded_channel();
        let w = writer::Writer::new(writer::Parts {
            conn,
            target: target.clone(),
            rx,
            committed,
            marks: marks.clone(),
            degraded: degraded.clone(),
            totals,
            options,
        });
        tokio::spawn(async move {
            w.run().await;
            drop(closed_tx);
        });
        tracing::debug!(store = %target, "postgres store open");
        Ok((
            PgStore {
                tx: tx.clone(),
                reader,
                marks,
                target,
                degraded,
                pruned,
                closed,
                _stop: Arc::new(StopOnDrop(tx)),
            },
            recovery,
        ))
    }

    /// Resolves once the writer has finished (every handle dropped, the
    /// last group committed, its connection closed).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.clone();
        async move { while rx.changed().await.is_ok() {} }
    }
}

impl Store for PgStore {
    fn submit(&self, batch: Batch) -> Result<(), StoreError> {
        self.tx
            .send(writer::ToWriter::Batch(batch))
            .map_err(|_| StoreError::Stopped)
    }

    fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn load_queued(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, ReadResult<Vec<QueuedRow>>> {
        let r = self.reader.clone();
        let upto = durable(&self.marks.id);
        Box::pin(async move { r.load_queued(after, upto, limit).await })
    }

    fn load_outbox(
        &self,
        session: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, ReadResult<Vec<OutboxRow>>> {
        let r = self.reader.clone();
        let session = session.to_string();
        let upto = durable(&self.marks.seq);
        Box::pin(async move { r.load_outbox(&session, after, upto, limit).await })
    }

    fn receipt_target(
        &self,
        message_id: &str,
    ) -> BoxFuture<'static, ReadResult<Option<ReceiptTarget>>> {
        let r = self.reader.clone();
        let message_id = message_id.to_string();
        let upto = durable(&self.marks.id);
        Box::pin(async move { r.receipt_target(&message_id, upto).await })
    }

    fn upstream_seen(&self, message_id: &str) -> BoxFuture<'static, ReadResult<bool>> {
        let r = self.reader.clone();
        let message_id = message_id.to_string();
        Box::pin(async move { r.upstream_seen(&message_id).await })
    }

    fn counts(&self) -> BoxFuture<'static, ReadResult<Counts>> {
        let r = self.reader.clone();
        Box::pin(async move { r.counts().await })
    }

    fn unroutable(&self, limit: usize) -> BoxFuture<'static, ReadResult<Vec<UnroutableRow>>> {
        let r = self.reader.clone();
        Box::pin(async move { r.unroutable(limit).await })
    }

    fn describe(&self) -> String {
        self.target.to_string()
    }

    fn prune_now(&self) -> BoxFuture<'static, ReadResult<Pruned>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(writer::ToWriter::Prune(tx));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Stopped)?;
            rx.await.map_err(|_| StoreError::Stopped)?
        })
    }

    fn pruned(&self) -> watch::Receiver<Pruned> {
        self.pruned.clone()
    }
}

/// Maps a PostgreSQL error to the store's, naming the target (never its
/// password).
pub(crate) fn pg(target: &PgTarget, doing: &str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    let what = format!("postgres error on {target} while {doing}");
    move |source| StoreError::Backend {
        what: what.clone(),
        source: Box::new(source),
    }
}
