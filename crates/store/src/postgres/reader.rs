//! The PostgreSQL store's reads (the store contract's "Reads"): one
//! connection shared by every read, its statements prepared once, reopened
//! when it was lost. tokio-postgres pipelines the queries of concurrent
//! reads on it. Each read stops at the durable marks its caller passes.

use super::{pg, target, PgTarget};
use crate::types::{
    Counts, OutboxRow, QueuedRow, ReceiptTarget, Recovered, Recovery, UnroutableRow,
};
use crate::{ReadResult, StoreError};
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Statement};

const SQL_QUEUED: &str = "SELECT id, session, message_id, group_id, body, attempts, not_before,
        accepted_at, expires_at, receipt
 FROM downstream WHERE state = 0 AND id > $1 AND id <= $2 ORDER BY id LIMIT $3";
const SQL_OUTBOX: &str = "SELECT seq, session, body FROM outbox
 WHERE session = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4";
const SQL_RECEIPT: &str = "SELECT session, id FROM downstream
 WHERE message_id = $1 AND receipt AND id <= $2 ORDER BY id DESC LIMIT 1";
const SQL_SEEN: &str = "SELECT 1 FROM upstream_seen WHERE message_id = $1";
const SQL_COUNTS: &str = "SELECT (SELECT count(*) FROM downstream WHERE state = 0),
        (SELECT count(*) FROM outbox), (SELECT count(*) FROM unroutable)";
const SQL_LEASE: &str = "SELECT holder, epoch,
        (extract(epoch FROM expires_at - now()) * 1000)::bigint FROM writer_lease WHERE id = 1";
const SQL_UNROUTABLE: &str = "SELECT category, body FROM unroutable ORDER BY id DESC LIMIT $1";

/// A connection with its prepared reads.
struct ReadConn {
    client: Client,
    queued: Statement,
    outbox: Statement,
    receipt: Statement,
    seen: Statement,
    counts: Statement,
    unroutable: Statement,
    lease: Statement,
}

/// The reads' connection, reopened on demand.
pub(crate) struct Reader {
    target: Arc<PgTarget>,
    conn: Mutex<Option<Arc<ReadConn>>>,
}

impl Reader {
    /// Opens the reads' connection (so that a bad URL fails at open).
    pub(crate) async fn connect(target: &Arc<PgTarget>) -> Result<Reader, StoreError> {
        let c = open(target).await?;
        Ok(Reader {
            target: target.clone(),
            conn: Mutex::new(Some(Arc::new(c))),
        })
    }

    async fn conn(&self) -> Result<Arc<ReadConn>, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let c = Arc::new(open(&self.target).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn err(&self, doing: &str) -> impl Fn(tokio_postgres::Error) -> StoreError {
        pg(&self.target, doing)
    }

    pub(crate) async fn load_queued(
        &self,
        after: u64,
        upto: i64,
        limit: usize,
    ) -> ReadResult<Vec<QueuedRow>> {
        let c = self.conn().await?;
        let rows = c
            .client
            .query(&c.queued, &[&(after as i64), &upto, &(limit as i64)])
            .await
            .map_err(self.err("reading queued messages"))?;
        Ok(rows
            .iter()
            .map(|r| QueuedRow {
                id: r.get::<_, i64>(0) as u64,
                session: r.get(1),
                message_id: r.get(2),
                group_id: r.get(3),
                body: r.get::<_, Option<String>>(4).unwrap_or_default(),
                attempts: r.get::<_, i32>(5) as u32,
                not_before_ms: r.get(6),
                accepted_at_ms: r.get(7),
                expires_at_ms: r.get(8),
                receipt: r.get(9),
            })
            .collect())
    }

    pub(crate) async fn load_outbox(
        &self,
        session: &str,
        after: u64,
        upto: i64,
        limit: usize,
    ) -> ReadResult<Vec<OutboxRow>> {
        let c = self.conn().await?;
        let rows = c
            .client
            .query(
                &c.outbox,
                &[&session, &(after as i64), &upto, &(limit as i64)],
            )
            .await
            .map_err(self.err("reading an outbox"))?;
        Ok(rows
            .iter()
            .map(|r| OutboxRow {
                seq: r.get::<_, i64>(0) as u64,
                session: r.get(1),
                body: r.get(2),
            })
            .collect())
    }

    pub(crate) async fn receipt_target(
        &self,
        message_id: &str,
        upto: i64,
    ) -> ReadResult<Option<ReceiptTarget>> {
        let c = self.conn().await?;
        let row = c
            .client
            .query_opt(&c.receipt, &[&message_id, &upto])
            .await
            .map_err(self.err("looking up a receipt's message"))?;
        Ok(row.map(|r| ReceiptTarget {
            session: r.get(0),
            id: r.get::<_, i64>(1) as u64,
        }))
    }

    pub(crate) async fn upstream_seen(&self, message_id: &str) -> ReadResult<bool> {
        let c = self.conn().await?;
        let row = c
            .client
            .query_opt(&c.seen, &[&message_id])
            .await
            .map_err(self.err("looking up an upstream id"))?;
        Ok(row.is_some())
    }

    pub(crate) async fn counts(&self) -> ReadResult<Counts> {
        let c = self.conn().await?;
        let r = c
            .client
            .query_one(&c.counts, &[])
            .await
            .map_err(self.err("counting rows"))?;
        Ok(Counts {
            queued: r.get::<_, i64>(0) as u64,
            outbox: r.get::<_, i64>(1) as u64,
            unroutable: r.get::<_, i64>(2) as u64,
        })
    }

    pub(crate) async fn unroutable(&self, limit: usize) -> ReadResult<Vec<UnroutableRow>> {
        let c = self.conn().await?;
        let rows = c
            .client
            .query(&c.unroutable, &[&(limit as i64)])
            .await
            .map_err(self.err("reading unroutable messages"))?;
        Ok(rows
            .iter()
            .map(|r| UnroutableRow {
                category: r.get(0),
                body: r.get(1),
            })
            .collect())
    }
}

impl Reader {
    /// The writer lease as the database holds it: holder, epoch, ms left.
    pub(crate) async fn lease(&self) -> ReadResult<(String, i64, i64)> {
        let c = self.conn().await?;
        let r = c
            .client
            .query_one(&c.lease, &[])
            .await
            .map_err(self.err("reading the writer lease"))?;
        Ok((r.get(0), r.get(1), r.get(2)))
    }
}

async fn open(target: &PgTarget) -> Result<ReadConn, StoreError> {
    let (client, _task) = target::connect(target, "reader").await?;
    let e = pg(target, "preparing the reads");
    Ok(ReadConn {
        queued: client.prepare(SQL_QUEUED).await.map_err(&e)?,
        outbox: client.prepare(SQL_OUTBOX).await.map_err(&e)?,
        receipt: client.prepare(SQL_RECEIPT).await.map_err(&e)?,
        seen: client.prepare(SQL_SEEN).await.map_err(&e)?,
        counts: client.prepare(SQL_COUNTS).await.map_err(&e)?,
        unroutable: client.prepare(SQL_UNROUTABLE).await.map_err(&e)?,
        lease: client.prepare(SQL_LEASE).await.map_err(&e)?,
        client,
    })
}

/// What the database holds at open: the recovery summary, and the highest
/// row id and sequence id (everything there is committed, so durable).
pub(crate) async fn recover(
    c: &Client,
    target: &PgTarget,
) -> Result<(Recovery, u64, u64), StoreError> {
    let e = pg(target, "recovering");
    let r = c
        .query_one(
            "SELECT (SELECT value FROM meta WHERE key = 'next_seq'),
                    (SELECT value FROM meta WHERE key = 'next_id'),
                    (SELECT coalesce(max(id), 0) FROM downstream),
                    (SELECT count(*) FROM downstream WHERE state = 0)",
            &[],
        )
        .await
        .map_err(&e)?;
    let rows = c
        .query(
            "SELECT session, count(*), max(seq) FROM outbox GROUP BY session ORDER BY session",
            &[],
        )
        .await
        .map_err(&e)?;
    Ok(Recovered {
        meta_seq: r.get(0),
        meta_id: r.get(1),
        max_id: r.get(2),
        queued: r.get(3),
        outbox: rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64, r.get(2)))
            .collect(),
    }
    .summary())
}
