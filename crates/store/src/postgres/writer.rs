//! The PostgreSQL store's writer task (the store contract's "Writes", SPEC
//! §6 group commit, SPEC §11 retention, SPEC §12): one connection; every
//! batch waiting goes into one transaction that first renews the writer
//! lease (the fence: see the module docs of [`super`]), sent at once and
//! its answers read after (pipelining); reports in order after `COMMIT`; prune
//! steps between groups; the lease renewed when idle and released at the
//! end.

use super::apply::{apply_group, by_kind, InFlight, Started};
use super::bulk::{self, Outcome};
use super::{pg, target, LeaseOptions, PgTarget};
use crate::marks::Marks;
use crate::retention::{Pruned, StoreOptions};
use crate::types::{batch_marks, Batch, Committed, Op};
use crate::{ReadResult, StoreError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

/// How long an open waits by default for the writer lease held by another
/// node (one that is closing lets go at once) before it refuses with
/// [`StoreError::Locked`].
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Most writes in one transaction; more batches wait for the next.
const MAX_GROUP_OPS: usize = 4096;

/// How often a standby looks whether the writer lease has expired, and how
/// often it says it is waiting.
const STANDBY_POLL: Duration = Duration::from_millis(250);
const STANDBY_TELL_EVERY: Duration = Duration::from_secs(30);

/// Backoff between failed commits.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the store's handles send the writer.
pub(crate) enum ToWriter {
    /// Apply this batch.
    Batch(Batch),
    /// Run a prune pass now; answer with what it removed once committed.
    Prune(oneshot::Sender<ReadResult<Pruned>>),
    /// The last store handle is gone: commit what is waiting and stop.
    Stop,
}

const SQL_INSERT: &str = "INSERT INTO downstream
 (id, session, message_id, group_id, body, expires_at, receipt, accepted_at)
 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING";
const SQL_RETRY: &str = "UPDATE downstream SET attempts = $2, not_before = $3 WHERE id = $1";
const SQL_FINISH: &str =
    "UPDATE downstream SET state = 1, body = NULL, group_id = NULL, done_at = $2
 WHERE id = $1";
const SQL_RECEIPT_DONE: &str = "UPDATE downstream SET receipt = FALSE WHERE id = $1";
const SQL_OUTBOX: &str = "INSERT INTO outbox (session, seq, body) VALUES ($1, $2, $3)
 ON CONFLICT (session, seq) DO UPDATE SET body = EXCLUDED.body";
const SQL_OUTBOX_DELETE: &str = "DELETE FROM outbox WHERE session = $1 AND seq = $2";
const SQL_SEEN: &str =
    "INSERT INTO upstream_seen (message_id, at) VALUES ($1, $2) ON CONFLICT DO NOTHING";
const SQL_UNROUTABLE: &str = "INSERT INTO unroutable (category, body, at) VALUES ($1, $2, $3)";
const SQL_BUMP_SEQ: &str = "UPDATE meta SET value = GREATEST(value, $1) WHERE key = 'next_seq'";
const SQL_KEEP_NEXT_ID: &str = "UPDATE meta SET value =
 GREATEST(value, (SELECT coalesce(max(id), 0) + 1 FROM downstream)) WHERE key = 'next_id'";
const SQL_PRUNE_DOWN: &str = "WITH gone AS (DELETE FROM downstream WHERE id IN
 (SELECT id FROM downstream WHERE state = 1 AND done_at < $1 ORDER BY done_at LIMIT $2)
 RETURNING 1) SELECT count(*) FROM gone";
const SQL_ACQUIRE: &str = "UPDATE writer_lease
 SET holder = $1, epoch = epoch + 1, expires_at = now() + make_interval(secs => $2)
 WHERE id = 1 AND (expires_at < now() OR holder = $1) RETURNING epoch";
const SQL_HOLDER: &str = "SELECT holder, extract(epoch FROM expires_at - now())::float8
 FROM writer_lease WHERE id = 1";
const SQL_RENEW: &str = "UPDATE writer_lease SET expires_at = now() + make_interval(secs => $3)
 WHERE id = 1 AND holder = $1 AND epoch = $2";
const SQL_RENEW_IN_TX: &str = "SELECT gimmm_renew_lease($1, $2, $3)";
const SQL_RELEASE: &str = "UPDATE writer_lease SET expires_at = '-infinity'
 WHERE id = 1 AND holder = $1 AND epoch = $2";
const SQL_PRUNE_UP: &str = "WITH gone AS (DELETE FROM upstream_seen WHERE message_id IN
 (SELECT message_id FROM upstream_seen WHERE at < $1 ORDER BY at LIMIT $2)
 RETURNING 1) SELECT count(*) FROM gone";

const SQL_BULK_SEEN: &str = "INSERT INTO upstream_seen (message_id, at)
 SELECT m, $2 FROM unnest($1::text[]) WITH ORDINALITY AS u(m, o) ORDER BY o
 ON CONFLICT DO NOTHING RETURNING message_id";
const SQL_BULK_INSERT: &str = "INSERT INTO downstream
 (id, session, message_id, group_id, body, expires_at, receipt, accepted_at)
 SELECT i, s, m, g, b, e, r, a FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
   $5::text[], $6::bigint[], $7::bool[], $8::bigint[]) WITH ORDINALITY AS u(i, s, m, g, b, e, r, a, o)
 ORDER BY o ON CONFLICT DO NOTHING RETURNING id";
const SQL_BULK_RETRY: &str = "UPDATE downstream d SET attempts = u.a, not_before = u.n
 FROM unnest($1::bigint[], $2::int[], $3::bigint[]) AS u(id, a, n) WHERE d.id = u.id";
const SQL_BULK_FINISH: &str = "UPDATE downstream
 SET state = 1, body = NULL, group_id = NULL, done_at = $2 WHERE id = ANY($1::bigint[])";
const SQL_BULK_RECEIPT_DONE: &str =
    "UPDATE downstream SET receipt = FALSE WHERE id = ANY($1::bigint[])";
const SQL_BULK_OUTBOX: &str = "INSERT INTO outbox (session, seq, body)
 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])
 ON CONFLICT (session, seq) DO UPDATE SET body = EXCLUDED.body";
const SQL_BULK_OUTBOX_DELETE: &str = "DELETE FROM outbox o
 USING unnest($1::text[], $2::bigint[]) AS u(s, q) WHERE o.session = u.s AND o.seq = u.q";
const SQL_BULK_UNROUTABLE: &str = "INSERT INTO unroutable (category, body, at)
 SELECT c, b, $3 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(c, b, o) ORDER BY o";

/// The writes, prepared once per connection: one statement per write
/// (a group applied one write after another) and one per kind of write
/// (a group applied by kind, [`super::bulk`]).
pub(super) struct Stmts {
    pub(super) insert: Statement,
    pub(super) retry: Statement,
    pub(super) finish: Statement,
    pub(super) receipt_done: Statement,
    pub(super) outbox: Statement,
    pub(super) outbox_delete: Statement,
    pub(super) seen: Statement,
    pub(super) unroutable: Statement,
    pub(super) bump_seq: Statement,
    pub(super) keep_next_id: Statement,
    pub(super) prune_down: Statement,
    pub(super) prune_up: Statement,
    pub(super) renew: Statement,
    pub(super) bulk_seen: Statement,
    pub(super) bulk_insert: Statement,
    pub(super) bulk_retry: Statement,
    pub(super) bulk_finish: Statement,
    pub(super) bulk_receipt_done: Statement,
    pub(super) bulk_outbox: Statement,
    pub(super) bulk_outbox_delete: Statement,
    pub(super) bulk_unroutable: Statement,
}

/// The writer's connection: it holds the writer lock.
pub(crate) struct WriterConn {
    pub(crate) client: Client,
    task: JoinHandle<()>,
    st: Option<Stmts>,
}

impl WriterConn {
    pub(crate) async fn connect(target: &PgTarget) -> Result<WriterConn, StoreError> {
        let (client, task) = target::connect(target, "writer").await?;
        Ok(WriterConn {
            client,
            task,
            st: None,
        })
    }

    /// Takes the writer lease once it has expired — or at once when it is
    /// held under this node's own id (a restart: the process that held it
    /// is gone, or is fenced by the new epoch) — waiting as `lease.wait`
    /// says (for ever: a standby); returns the new epoch.
    pub(crate) async fn acquire_waiting(
        &self,
        target: &PgTarget,
        lease: &LeaseOptions,
    ) -> Result<i64, StoreError> {
        let e = pg(target, "taking the writer lease");
        let secs = lease.lease.as_secs_f64().max(0.001);
        let mut waited = Duration::ZERO;
        let mut told = None::<Duration>;
        loop {
            let got = self
                .client
                .query_opt(SQL_ACQUIRE, &[&lease.node_id, &secs])
                .await
                .map_err(&e)?;
            if let Some(row) = got {
                return Ok(row.get(0));
            }
            let step = match lease.wait {
                Some(w) if waited >= w => {
                    return Err(StoreError::Locked(PathBuf::from(target.to_string())))
                }
                Some(_) => Duration::from_millis(50),
                None => STANDBY_POLL,
            };
            if lease.wait.is_none() && told.is_none_or(|t| waited >= t + STANDBY_TELL_EVERY) {
                let row = self.client.query_one(SQL_HOLDER, &[]).await.map_err(&e)?;
                let (holder, left): (String, f64) = (row.get(0), row.get(1));
                tracing::info!(store = %target, holder = %holder, expires_in_secs = left.max(0.0),
                    "standby: another node holds the writer lease; taking over when it stops or falls silent");
                told = Some(waited);
            }
            tokio::time::sleep(step).await;
            waited += step;
        }
    }

    pub(crate) async fn prepare(&mut self, target: &PgTarget) -> Result<(), StoreError> {
        let c = &self.client;
        let e = pg(target, "preparing the writes");
        self.st = Some(Stmts {
            insert: c.prepare(SQL_INSERT).await.map_err(&e)?,
            retry: c.prepare(SQL_RETRY).await.map_err(&e)?,
            finish: c.prepare(SQL_FINISH).await.map_err(&e)?,
            receipt_done: c.prepare(SQL_RECEIPT_DONE).await.map_err(&e)?,
            outbox: c.prepare(SQL_OUTBOX).await.map_err(&e)?,
            outbox_delete: c.prepare(SQL_OUTBOX_DELETE).await.map_err(&e)?,
            seen: c.prepare(SQL_SEEN).await.map_err(&e)?,
            unroutable: c.prepare(SQL_UNROUTABLE).await.map_err(&e)?,
            bump_seq: c.prepare(SQL_BUMP_SEQ).await.map_err(&e)?,
            keep_next_id: c.prepare(SQL_KEEP_NEXT_ID).await.map_err(&e)?,
            prune_down: c.prepare(SQL_PRUNE_DOWN).await.map_err(&e)?,
            prune_up: c.prepare(SQL_PRUNE_UP).await.map_err(&e)?,
            renew: c.prepare(SQL_RENEW_IN_TX).await.map_err(&e)?,
            bulk_seen: c.prepare(SQL_BULK_SEEN).await.map_err(&e)?,
            bulk_insert: c.prepare(SQL_BULK_INSERT).await.map_err(&e)?,
            bulk_retry: c.prepare(SQL_BULK_RETRY).await.map_err(&e)?,
            bulk_finish: c.prepare(SQL_BULK_FINISH).await.map_err(&e)?,
            bulk_receipt_done: c.prepare(SQL_BULK_RECEIPT_DONE).await.map_err(&e)?,
            bulk_outbox: c.prepare(SQL_BULK_OUTBOX).await.map_err(&e)?,
            bulk_outbox_delete: c.prepare(SQL_BULK_OUTBOX_DELETE).await.map_err(&e)?,
            bulk_unroutable: c.prepare(SQL_BULK_UNROUTABLE).await.map_err(&e)?,
        });
        Ok(())
    }
}

/// What the writer is started with.
pub(crate) struct Parts {
    pub(crate) conn: WriterConn,
    /// The writer lease's epoch this node holds.
    pub(crate) epoch: i64,
    pub(crate) lease: LeaseOptions,
    /// Set once the lease is lost.
    pub(crate) fenced: watch::Sender<Option<String>>,
    pub(crate) target: Arc<PgTarget>,
    pub(crate) rx: UnboundedReceiver<ToWriter>,
    pub(crate) committed: UnboundedSender<Committed>,
    pub(crate) marks: Arc<Marks>,
    pub(crate) degraded: Arc<AtomicBool>,
    pub(crate) totals: watch::Sender<Pruned>,
    pub(crate) options: StoreOptions,
}

/// The writer task's state.
pub(crate) struct Writer {
    conn: Option<WriterConn>,
    epoch: i64,
    lease: LeaseOptions,
    fenced: watch::Sender<Option<String>>,
    /// When the lease was last renewed (a commit or an idle renewal).
    renewed: Instant,
    /// When to renew it next if no commit does.
    next_renew: Instant,
    target: Arc<PgTarget>,
    rx: UnboundedReceiver<ToWriter>,
    committed: UnboundedSender<Committed>,
    marks: Arc<Marks>,
    degraded: Arc<AtomicBool>,
    totals: watch::Sender<Pruned>,
    options: StoreOptions,
    /// Batches taken from the channel, not yet committed.
    group: Vec<Batch>,
    group_ops: usize,
    /// `prune_now` callers waiting for a pass.
    prunes: Vec<oneshot::Sender<ReadResult<Pruned>>>,
    stop: bool,
    /// Failed commits in a row.
    failures: u64,
}

impl Writer {
    pub(crate) fn new(p: Parts) -> Writer {
        let first_renew = Instant::now() + renew_every(&p.lease);
        Writer {
            conn: Some(p.conn),
            epoch: p.epoch,
            lease: p.lease,
            fenced: p.fenced,
            renewed: Instant::now(),
            next_renew: first_renew,
            target: p.target,
            rx: p.rx,
            committed: p.committed,
            marks: p.marks,
            degraded: p.degraded,
            totals: p.totals,
            options: p.options,
            group: Vec::new(),
            group_ops: 0,
            prunes: Vec::new(),
            stop: false,
            failures: 0,
        }
    }

    /// Runs until the last handle is gone and what it sent is committed.
    pub(crate) async fn run(mut self) {
        let every = self.options.prune_interval.max(Duration::from_millis(1));
        let mut next_prune = Instant::now() + every;
        loop {
            if self.is_fenced() {
                self.refuse_all().await;
                break;
            }
            if self.group.is_empty() && self.prunes.is_empty() {
                if self.stop {
                    break;
                }
                let prune_at = self.options.retention.map(|_| next_prune);
                let renew_at = self.next_renew;
                tokio::select! {
                    m = self.rx.recv() => match m {
                        Some(m) => self.take(m),
                        None => self.stop = true,
                    },
                    _ = tokio::time::sleep_until(renew_at) => {
                        self.renew_idle().await;
                        continue;
                    }
                    _ = sleep_until_some(prune_at) => {
                        if let Err(e) = self.prune_pass().await {
                            tracing::warn!(store = %self.target, error = %e, "prune pass failed");
                        }
                        next_prune = Instant::now() + every;
                        continue;
                    }
                }
            }
            self.drain();
            if !self.group.is_empty() {
                self.commit_group().await;
                continue;
            }
            if !self.prunes.is_empty() {
                let waiting = std::mem::take(&mut self.prunes);
                let r = self.prune_pass().await;
                for w in waiting {
                    let _ = w.send(match &r {
                        Ok(p) => Ok(*p),
                        Err(e) => Err(StoreError::Backend {
                            what: format!("postgres store {} while pruning", self.target),
                            source: e.to_string().into(),
                        }),
                    });
                }
                next_prune = Instant::now() + every;
            }
        }
        if let Some(c) = self.conn.take() {
            if !self.is_fenced() {
                // Let a standby take over at once.
                let released = c
                    .client
                    .execute(SQL_RELEASE, &[&self.lease.node_id, &self.epoch])
                    .await;
                if let Err(e) = released {
                    tracing::warn!(store = %self.target, error = %e, "could not release the writer lease; it expires by itself");
                }
            }
            let WriterConn { client, task, .. } = c;
            drop(client);
            let _ = task.await;
        }
        tracing::debug!(store = %self.target, "postgres store writer stopped");
    }

    fn renewed_now(&mut self) {
        self.renewed = Instant::now();
        self.next_renew = self.renewed + renew_every(&self.lease);
    }

    fn is_fenced(&self) -> bool {
        self.fenced.borrow().is_some()
    }

    /// The lease is lost: say so once; nothing more is committed.
    fn fence(&mut self, reason: String) {
        if self.is_fenced() {
            return;
        }
        tracing::error!(store = %self.target, node = %self.lease.node_id, epoch = self.epoch, %reason,
            "this node lost the writer lease: it commits nothing more");
        self.degraded.store(true, Ordering::Relaxed);
        self.fenced.send_replace(Some(reason));
    }

    /// After the fence: batches are dropped unreported (nothing of theirs
    /// is stored; the node holding the lease now owns the work), prune
    /// requests refused, until the last handle is gone.
    async fn refuse_all(&mut self) {
        let reason = self.fenced.borrow().clone().unwrap_or_default();
        let refuse = |tx: oneshot::Sender<ReadResult<Pruned>>, target: &PgTarget| {
            let _ = tx.send(Err(StoreError::Fenced {
                store: target.to_string(),
                reason: reason.clone(),
            }));
        };
        self.group.clear();
        for tx in std::mem::take(&mut self.prunes) {
            refuse(tx, &self.target);
        }
        while let Some(m) = self.rx.recv().await {
            match m {
                ToWriter::Batch(_) => {}
                ToWriter::Prune(tx) => refuse(tx, &self.target),
                ToWriter::Stop => break,
            }
        }
    }

    /// Renews the lease while no batch comes. A node that could not renew
    /// for a whole lease fences itself: another may have taken over.
    async fn renew_idle(&mut self) {
        let (node, epoch, secs) = (
            self.lease.node_id.clone(),
            self.epoch,
            self.lease.lease.as_secs_f64(),
        );
        let target = self.target.clone();
        let r = match self.connected().await {
            Ok(c) => c
                .client
                .execute(SQL_RENEW, &[&node, &epoch, &secs])
                .await
                .map_err(pg(&target, "renewing the writer lease")),
            Err(e) => Err(e),
        };
        match r {
            Ok(1) => self.renewed_now(),
            Ok(_) => self.fence("another node took the writer lease".into()),
            Err(e) => {
                if self.renewed.elapsed() >= self.lease.lease {
                    self.fence(format!(
                        "the writer lease could not be renewed for {:?} ({e})",
                        self.lease.lease
                    ));
                } else {
                    tracing::warn!(store = %self.target, error = %e, "could not renew the writer lease; retrying");
                    // Again soon, not a whole renewal period later.
                    self.next_renew = Instant::now() + RETRY_MAX.min(self.lease.lease / 6);
                }
            }
        }
    }

    fn take(&mut self, m: ToWriter) {
        match m {
            ToWriter::Batch(b) => {
                self.group_ops += b.ops.len();
                self.group.push(b);
            }
            ToWriter::Prune(tx) => self.prunes.push(tx),
            ToWriter::Stop => self.stop = true,
        }
    }

    /// Takes what is waiting, up to a group's worth of writes.
    fn drain(&mut self) {
        while self.group_ops < MAX_GROUP_OPS {
            match self.rx.try_recv() {
                Ok(m) => self.take(m),
                Err(_) => break,
            }
        }
    }

    /// The writer connection, reopened when it was lost (the lease
    /// outlives it; the next renewal says whether it is still ours).
    async fn connected(&mut self) -> Result<&mut WriterConn, StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let mut c = WriterConn::connect(&self.target).await?;
            c.prepare(&self.target).await?;
            tracing::info!(store = %self.target, "postgres writer connection reopened");
            self.conn = Some(c);
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(StoreError::Stopped),
        }
    }

    /// Commits the group, retrying until it is in (with its new messages
    /// refused once a commit failed for another reason than a connection
    /// lost and reopened at once), then reports each batch in order. A
    /// fenced node reports nothing: the group is not stored.
    async fn commit_group(&mut self) {
        let group = std::mem::take(&mut self.group);
        self.group_ops = 0;
        let started = Instant::now();
        let mut refused: Option<String> = None;
        let mut delay = RETRY_FIRST;
        let mut reconnected = false;
        let outcomes = loop {
            let now = self.options.clock.now_ms();
            match self.try_commit(&group, refused.is_some(), now).await {
                Ok(o) => {
                    self.renewed_now();
                    break o;
                }
                Err(Failed::Fenced) => {
                    self.fence("another node took the writer lease".into());
                    return;
                }
                Err(Failed::Store(e)) => {
                    let lost = self.conn.as_ref().is_none_or(|c| c.client.is_closed());
                    if lost && !reconnected {
                        // A connection dropped between groups: reopen and
                        // retry once before refusing anything.
                        reconnected = true;
                        continue;
                    }
                    self.failures += 1;
                    self.degraded.store(true, Ordering::Relaxed);
                    if self.failures == 1 || self.failures.is_multiple_of(100) {
                        tracing::warn!(store = %self.target, error = %e, failures = self.failures,
                            "store commit failed; new messages are refused while it lasts");
                    }
                    if self.renewed.elapsed() >= self.lease.lease {
                        self.fence(format!(
                            "the writer lease could not be renewed for {:?} ({e})",
                            self.lease.lease
                        ));
                        return;
                    }
                    refused = Some(format!("store write failed: {e}"));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        };
        if self.failures > 0 {
            tracing::info!(store = %self.target, after = self.failures, "store commits work again");
            self.failures = 0;
        }
        self.degraded.store(false, Ordering::Relaxed);
        let (mut max_id, mut max_seq) = (0, 0);
        for b in &group {
            let (i, s) = batch_marks(b);
            max_id = max_id.max(i);
            max_seq = max_seq.max(s);
        }
        self.marks.raise(max_id, max_seq);
        let n = group.len();
        let took = started.elapsed();
        for (b, (duplicates, repeated)) in group.iter().zip(outcomes) {
            let failed_inserts = if refused.is_some() {
                insert_ids(&b.ops)
            } else {
                Vec::new()
            };
            let error = (!failed_inserts.is_empty())
                .then(|| refused.clone())
                .flatten();
            let _ = self.committed.send(Committed {
                no: b.no,
                duplicates,
                repeated,
                failed_inserts,
                error,
                group_size: n,
                commit_time: took,
            });
        }
    }

    /// One attempt at the group: the whole transaction is sent at once
    /// (BEGIN, the lease renewal, the writes, COMMIT), each statement's
    /// answer read after; only an [`Op::Upstream`] waits mid-way for the
    /// answers before it. The renewal raises when the lease is lost, which
    /// aborts the transaction: its COMMIT then rolls back.
    async fn try_commit(
        &mut self,
        group: &[Batch],
        skip_inserts: bool,
        now: i64,
    ) -> Result<Vec<Outcome>, Failed> {
        let target = self.target.clone();
        let e = pg(&target, "committing a batch");
        let (node, epoch, secs) = (
            self.lease.node_id.clone(),
            self.epoch,
            self.lease.lease.as_secs_f64(),
        );
        let max_seq = group.iter().map(|b| batch_marks(b).1).max().unwrap_or(0);
        let next_seq = (max_seq + 1) as i64;
        let WriterConn { client, st, .. } = self.connected().await?;
        let Some(st) = st.as_ref() else {
            return Err(StoreError::Stopped.into());
        };
        let client: &Client = client;
        let begin = Started::new(Box::pin(client.batch_execute("BEGIN")));
        let renew = Started::new(Box::pin(async {
            client.execute(&st.renew, &[&node, &epoch, &secs]).await
        }));
        let sent = match bulk::Plan::new(group, skip_inserts) {
            Some(plan) => by_kind(client, st, plan, group.len(), now).await,
            None => apply_group(client, st, group, skip_inserts, now)
                .await
                .map(|(out, run)| (out, InFlight::OneByOne(run))),
        };
        let (mut out, run) = match sent {
            Ok(x) => x,
            Err(err) => {
                // Nothing committed: end the transaction, say why.
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(first_failure(begin, renew, err, &e).await);
            }
        };
        let bump = (max_seq > 0).then(|| {
            Started::new(Box::pin(async move {
                client.execute(&st.bump_seq, &[&next_seq]).await
            }))
        });
        let commit = Started::new(Box::pin(client.batch_execute("COMMIT")));
        begin.get().await.map_err(&e)?;
        if let Err(err) = renew.get().await {
            let _ = commit.get().await;
            return Err(classify(err, &e));
        }
        // A write that failed aborted the transaction: COMMIT rolled back.
        let flushed = run.finish(&mut out).await;
        let bumped = match bump {
            Some(b) => b.get().await.map(|_| ()),
            None => Ok(()),
        };
        let committed = commit.get().await;
        flushed.map_err(&e)?;
        bumped.map_err(&e)?;
        committed.map_err(&e)?;
        Ok(out)
    }

    /// A prune pass: steps until one finds less than a step's worth; the
    /// batches that arrive meanwhile are committed between steps.
    async fn prune_pass(&mut self) -> Result<Pruned, StoreError> {
        let Some(retention) = self.options.retention_ms() else {
            return Ok(Pruned::default());
        };
        let limit = self.options.prune_batch.max(1) as i64;
        let mut pass = Pruned::default();
        loop {
            let cutoff = self.options.clock.now_ms().saturating_sub(retention);
            let step = self.prune_step(cutoff, limit).await?;
            pass.add(step);
            if step != Pruned::default() {
                self.totals.send_modify(|t| t.add(step));
            }
            if (step.downstream as i64) < limit && (step.upstream as i64) < limit {
                return Ok(pass);
            }
            // Batches go first.
            self.drain();
            if !self.group.is_empty() {
                self.commit_group().await;
            }
        }
    }

    async fn prune_step(&mut self, cutoff: i64, limit: i64) -> Result<Pruned, StoreError> {
        let target = self.target.clone();
        let e = pg(&target, "pruning");
        let (node, epoch, secs) = (
            self.lease.node_id.clone(),
            self.epoch,
            self.lease.lease.as_secs_f64(),
        );
        let WriterConn { client, st, .. } = self.connected().await?;
        let Some(st) = st.as_ref() else {
            return Err(StoreError::Stopped);
        };
        let tx = client.transaction().await.map_err(&e)?;
        if let Err(err) = tx.execute(&st.renew, &[&node, &epoch, &secs]).await {
            drop(tx);
            return match classify(err, &e) {
                Failed::Fenced => {
                    self.fence("another node took the writer lease".into());
                    Err(StoreError::Fenced {
                        store: target.to_string(),
                        reason: "another node took the writer lease".into(),
                    })
                }
                Failed::Store(e) => Err(e),
            };
        }
        // Ids stay above every row handed out, even the pruned highest.
        tx.execute(&st.keep_next_id, &[]).await.map_err(&e)?;
        let down: i64 = tx
            .query_one(&st.prune_down, &[&cutoff, &limit])
            .await
            .map_err(&e)?
            .get(0);
        let up: i64 = tx
            .query_one(&st.prune_up, &[&cutoff, &limit])
            .await
            .map_err(&e)?
            .get(0);
        tx.commit().await.map_err(&e)?;
        Ok(Pruned {
            downstream: down as u64,
            upstream: up as u64,
        })
    }
}

/// Why a commit did not happen.
enum Failed {
    /// The renewal found no row: another node holds the lease.
    Fenced,
    /// Anything else (connection, server).
    Store(StoreError),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        Failed::Store(e)
    }
}

/// An idle node renews its lease every third of it.
fn renew_every(lease: &LeaseOptions) -> Duration {
    (lease.lease / 3).max(Duration::from_millis(10))
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The ids of the new messages in `ops` (refused when a commit failed).
fn insert_ids(ops: &[Op]) -> Vec<u64> {
    let mut ids = Vec::new();
    for op in ops {
        match op {
            Op::InsertDownstream(n) => ids.push(n.id),
            Op::Upstream { then, .. } => ids.extend(insert_ids(then)),
            _ => {}
        }
    }
    ids
}

/// The SQLSTATE `gimmm_renew_lease` raises when the lease is lost.
const LEASE_LOST: &str = "GM001";

fn classify(
    err: tokio_postgres::Error,
    e: &impl Fn(tokio_postgres::Error) -> StoreError,
) -> Failed {
    if err.code().is_some_and(|c| c.code() == LEASE_LOST) {
        Failed::Fenced
    } else {
        Failed::Store(e(err))
    }
}

/// After a failed write: the lease (renewed first) decides whether it was
/// the fence.
async fn first_failure(
    begin: Started<'_, Result<(), tokio_postgres::Error>>,
    renew: Started<'_, Result<u64, tokio_postgres::Error>>,
    err: tokio_postgres::Error,
    e: &impl Fn(tokio_postgres::Error) -> StoreError,
) -> Failed {
    if let Err(b) = begin.get().await {
        return Failed::Store(e(b));
    }
    match renew.get().await {
        Err(r) => classify(r, e),
        Ok(_) => classify(err, e),
    }
}
