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
//! * **One writer per database: the writer lease** (`writer_lease`,
//!   migration 0002). A node writes only while it holds the lease; it takes
//!   it once the lease has expired (by the server's clock), with a new
//!   epoch, and renews it in the first statement of every transaction it
//!   commits (and every third of the lease when idle), matching holder and
//!   epoch. That is the fence, enforced in the SQL: a node whose lease was
//!   taken over finds no row to renew, its transaction is rolled back, and
//!   the store reports itself fenced ([`PgStore::fenced`]) and takes
//!   nothing more. A node that could not renew for a whole lease (the
//!   server unreachable) fences itself the same way, since another may have
//!   taken over. A lost connection alone loses nothing: the lease outlives
//!   it. An open waits for the lease ([`LeaseOptions::wait`]: a second
//!   gimmm is refused with [`StoreError::Locked`], or waits as a standby
//!   and becomes the writer when the holder stops or dies). Partitioned
//!   ownership across several active nodes (SPEC §12's cluster) is not
//!   built yet.
//! * **Retention** (SPEC §11): the writer prunes between groups, in steps
//!   of `prune_batch` rows, by the partial index on `done_at` and the index
//!   on `upstream_seen.at`.
//! * **Secrets.** The URL's password is never printed: [`PgStore::describe`]
//!   and every error name the target as `postgres://user@host:port/db`.

mod apply;
mod bulk;
mod migrate;
mod reader;
mod target;
mod writer;

pub use target::PgTarget;

/// The key of the transaction advisory lock the migrations take, so that
/// nodes starting together migrate one after another ("gimmm" in ASCII;
/// advisory locks are per database).
pub const WRITER_LOCK_KEY: i64 = 0x67_69_6d_6d_6d;

/// How a node holds the writer lease (SPEC §12 `[cluster]`).
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// This node's name in `writer_lease.holder`. Unique per node: a node
    /// that finds the lease held under its own id takes it back at once (a
    /// restart after a crash need not wait for the lease to run out; the
    /// process that held it, were it still alive, is fenced by the new
    /// epoch).
    pub node_id: String,
    /// How long the lease lasts without a renewal (`cluster.lease_secs`):
    /// a node silent this long loses the writing to another.
    pub lease: Duration,
    /// How long an open waits for a lease held by another node before
    /// refusing with [`StoreError::Locked`]; `None` waits as a standby
    /// until it gets it.
    pub wait: Option<Duration>,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            node_id: default_node_id(),
            lease: Duration::from_secs(10),
            wait: Some(writer::LOCK_WAIT),
        }
    }
}

/// `hostname-pid-xxxx`, the default node id: another for every call, so a
/// node without a configured id never takes a lease back as its own.
pub fn default_node_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gimmm".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = (nanos ^ CALLS.fetch_add(1, Ordering::Relaxed).rotate_left(16)) & 0xffff;
    format!("{host}-{}-{salt:04x}", std::process::id())
}

use crate::marks::{durable, Marks};
use crate::retention::{Pruned, StoreOptions};
use crate::types::{
    Batch, Committed, Counts, OutboxRow, QueuedRow, ReceiptTarget, Recovery, UnroutableRow,
    WriterLease,
};
use crate::{ReadResult, Store, StoreError};
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
    fenced: watch::Receiver<Option<String>>,
    /// This node's name, the epoch it holds the lease with, the lease.
    node: Arc<(String, i64, Duration)>,
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
    /// Connects to `target`, migrates the schema, takes the writer lease
    /// (waiting as `lease.wait` says), recovers the counters and starts the
    /// writer; each committed batch is reported on `committed`.
    pub async fn open_with(
        target: PgTarget,
        lease: LeaseOptions,
        committed: UnboundedSender<Committed>,
        options: StoreOptions,
    ) -> Result<(PgStore, Recovery), StoreError> {
        let target = Arc::new(target);
        let mut conn = writer::WriterConn::connect(&target).await?;
        migrate::migrate(&mut conn.client, &target).await?;
        let epoch = conn.acquire_waiting(&target, &lease).await?;
        conn.prepare(&target).await?;
        let (recovery, max_id, max_seq) = reader::recover(&conn.client, &target).await?;
        let marks = Arc::new(Marks::default());
        marks.raise(max_id, max_seq);
        let reader = Arc::new(reader::Reader::connect(&target).await?);
        let degraded = Arc::new(AtomicBool::new(false));
        let (totals, pruned) = watch::channel(Pruned::default());
        let (closed_tx, closed) = watch::channel(());
        let (fenced_tx, fenced) = watch::channel(None);
        let (tx, rx) = mpsc::unbounded_channel();
        let node = Arc::new((lease.node_id.clone(), epoch, lease.lease));
        let w = writer::Writer::new(writer::Parts {
            conn,
            epoch,
            lease,
            target: target.clone(),
            rx,
            committed,
            marks: marks.clone(),
            degraded: degraded.clone(),
            fenced: fenced_tx,
            totals,
            options,
        });
        tokio::spawn(async move {
            w.run().await;
            drop(closed_tx);
        });
        tracing::info!(store = %target, epoch, "postgres store open: this node holds the writer lease");
        Ok((
            PgStore {
                tx: tx.clone(),
                reader,
                marks,
                target,
                degraded,
                pruned,
                closed,
                fenced,
                node,
                _stop: Arc::new(StopOnDrop(tx)),
            },
            recovery,
        ))
    }

    /// Resolves with the reason once this node lost the writer lease (see
    /// the module docs): it commits nothing more, and what it holds in
    /// memory is another node's now. Pending for ever while it writes.
    pub fn fenced(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.fenced.clone();
        async move {
            loop {
                if let Some(r) = rx.borrow_and_update().clone() {
                    return r;
                }
                if rx.changed().await.is_err() {
                    // The writer stopped without being fenced.
                    std::future::pending::<()>().await;
                }
            }
        }
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
        if let Some(reason) = self.fenced.borrow().clone() {
            return Err(StoreError::Fenced {
                store: self.target.to_string(),
                reason,
            });
        }
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

    fn writer_lease(&self) -> BoxFuture<'static, ReadResult<Option<WriterLease>>> {
        let r = self.reader.clone();
        let node = self.node.clone();
        Box::pin(async move {
            let (holder, holder_epoch, expires_in_ms) = r.lease().await?;
            Ok(Some(WriterLease {
                node_id: node.0.clone(),
                epoch: node.1,
                holder,
                holder_epoch,
                expires_in_ms,
                lease_ms: u64::try_from(node.2.as_millis()).unwrap_or(u64::MAX),
            }))
        })
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
