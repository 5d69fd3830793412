//! Sending a group's writes on the writer's connection (SPEC §6 group
//! commit, on PostgreSQL): every statement goes out as it is made and its
//! answer is read later (pipelining, [`Started`]); the group goes either by
//! kind of write ([`super::bulk`]) or, when that would not equal applying
//! it in order, one write after another ([`apply_group`]).

use super::bulk::{self, Outcome};
use super::writer::Stmts;
use crate::types::{Batch, Op};
use futures::future::BoxFuture;
use tokio_postgres::Client;

/// A statement sent, its answer not yet read: which batch it belongs to
/// and, for an insert, the row id (no row changed = a duplicate).
pub(super) struct Pending<'a> {
    batch: usize,
    insert: Option<u64>,
    answer: Started<'a, Result<u64, tokio_postgres::Error>>,
}

/// A future polled once when made: tokio-postgres sends a request on its
/// first poll, so statements made one after another go out in that order
/// and their answers can be awaited later (pipelining).
pub(super) enum Started<'a, T> {
    Ready(T),
    Running(BoxFuture<'a, T>),
}

impl<'a, T> Started<'a, T> {
    pub(super) fn new(mut f: BoxFuture<'a, T>) -> Started<'a, T> {
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Started::Ready(v),
            std::task::Poll::Pending => Started::Running(f),
        }
    }

    pub(super) async fn get(self) -> T {
        match self {
            Started::Ready(v) => v,
            Started::Running(f) => f.await,
        }
    }
}

/// Writes sent, answers not read yet.
pub(super) enum InFlight<'a> {
    ByKind(bulk::Sent<'a>),
    OneByOne(Vec<Pending<'a>>),
}

impl InFlight<'_> {
    pub(super) async fn finish(self, out: &mut [Outcome]) -> Result<(), tokio_postgres::Error> {
        match self {
            InFlight::ByKind(s) => s.finish(out).await,
            InFlight::OneByOne(run) => flush(run, out).await,
        }
    }
}

/// Sends the group by kind ([`bulk`]); only the upstream ids, when there
/// are any, are waited for, since their answer decides what else goes.
pub(super) async fn by_kind<'a>(
    c: &'a Client,
    st: &'a Stmts,
    mut plan: bulk::Plan<'a>,
    batches: usize,
    now: i64,
) -> Result<(Vec<Outcome>, InFlight<'a>), tokio_postgres::Error> {
    let mut out: Vec<Outcome> = (0..batches).map(|_| Outcome::default()).collect();
    if plan.has_upstream() {
        let rows = bulk::send_upstream(c, st, &plan, now).get().await?;
        bulk::settle_upstream(&mut plan, &rows, &mut out);
    }
    Ok((out, InFlight::ByKind(bulk::send(c, st, &plan, now))))
}

/// Sends the group's writes in order. An [`Op::Upstream`] waits for the
/// answers before it and for its own dedupe insert, whose answer decides
/// whether its writes are applied; everything else is left in flight and
/// returned, to be read by [`flush`].
pub(super) async fn apply_group<'a>(
    c: &'a Client,
    st: &'a Stmts,
    group: &'a [Batch],
    skip_inserts: bool,
    now: i64,
) -> Result<(Vec<Outcome>, Vec<Pending<'a>>), tokio_postgres::Error> {
    let mut out: Vec<Outcome> = group.iter().map(|_| Outcome::default()).collect();
    let mut run: Vec<Pending<'a>> = Vec::new();
    for (bi, b) in group.iter().enumerate() {
        let mut todo: Vec<&'a Op> = b.ops.iter().rev().collect();
        while let Some(op) = todo.pop() {
            if let Op::Upstream { message_id, then } = op {
                flush(std::mem::take(&mut run), &mut out).await?;
                if c.execute(&st.seen, &[message_id, &now]).await? == 1 {
                    todo.extend(then.iter().rev());
                } else {
                    out[bi].1.extend(then.iter().filter_map(|op| match op {
                        Op::InsertOutbox { seq, .. } => Some(*seq),
                        _ => None,
                    }));
                }
                continue;
            }
            if let Some(p) = send(c, st, op, bi, skip_inserts, now) {
                run.push(p);
            }
        }
    }
    Ok((out, run))
}

/// Reads the answers of what was sent, in order.
async fn flush(run: Vec<Pending<'_>>, out: &mut [Outcome]) -> Result<(), tokio_postgres::Error> {
    let mut first_err = None;
    for p in run {
        // Every answer is read, so none is left for the next statement.
        match p.answer.get().await {
            Ok(0) => {
                if let Some(id) = p.insert {
                    out[p.batch].0.push(id);
                }
            }
            Ok(_) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Sends the statement of one write (not [`Op::Upstream`]).
fn send<'a>(
    c: &'a Client,
    st: &'a Stmts,
    op: &'a Op,
    batch: usize,
    skip_inserts: bool,
    now: i64,
) -> Option<Pending<'a>> {
    let mut insert = None;
    let answer: BoxFuture<'a, _> = match op {
        Op::InsertDownstream(n) => {
            if skip_inserts {
                return None;
            }
            insert = Some(n.id);
            let id = n.id as i64;
            Box::pin(async move {
                let session: &str = &n.session;
                c.execute(
                    &st.insert,
                    &[
                        &id,
                        &session,
                        &n.message_id,
                        &n.group_id,
                        &n.body,
                        &n.expires_at_ms,
                        &n.receipt,
                        &n.accepted_at_ms,
                    ],
                )
                .await
            })
        }
        Op::RetryDownstream {
            id,
            attempts,
            not_before_ms,
        } => {
            let (id, attempts) = (*id as i64, i32::try_from(*attempts).unwrap_or(i32::MAX));
            Box::pin(async move { c.execute(&st.retry, &[&id, &attempts, not_before_ms]).await })
        }
        Op::FinishDownstream { id } => {
            let id = *id as i64;
            Box::pin(async move { c.execute(&st.finish, &[&id, &now]).await })
        }
        Op::ReceiptDone { id } => {
            let id = *id as i64;
            Box::pin(async move { c.execute(&st.receipt_done, &[&id]).await })
        }
        Op::InsertOutbox { seq, session, body } => {
            let seq = *seq as i64;
            Box::pin(async move {
                let (session, body): (&str, &str) = (session, body);
                c.execute(&st.outbox, &[&session, &seq, &body]).await
            })
        }
        Op::DeleteOutbox { session, seq } => {
            let seq = *seq as i64;
            Box::pin(async move {
                let session: &str = session;
                c.execute(&st.outbox_delete, &[&session, &seq]).await
            })
        }
        Op::UpstreamSeen { message_id } => {
            Box::pin(async move { c.execute(&st.seen, &[message_id, &now]).await })
        }
        Op::Unroutable { category, body } => {
            Box::pin(async move { c.execute(&st.unroutable, &[category, body, &now]).await })
        }
        Op::Upstream { .. } => return None,
    };
    Some(Pending {
        batch,
        insert,
        answer: Started::new(answer),
    })
}
