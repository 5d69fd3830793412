//! The SQLite store's writes: one prepared statement per [`Op`] kind,
//! prepared once per batch when first needed, applied inside the writer's
//! open transaction.

use crate::types::{Batch, Op};
use rusqlite::{params, Connection};

/// The write statements, prepared once per batch when first needed.
struct Stmts<'c> {
    conn: &'c Connection,
    cache: [Option<rusqlite::CachedStatement<'c>>; 9],
}

const SQL_INSERT: usize = 0;
const SQL_RETRY: usize = 1;
const SQL_FINISH: usize = 2;
const SQL_RECEIPT_DONE: usize = 3;
const SQL_OUTBOX: usize = 4;
const SQL_OUTBOX_DELETE: usize = 5;
const SQL_SEEN: usize = 6;
const SQL_UNROUTABLE: usize = 7;
const SQL_LATE: usize = 8;

const WRITE_SQL: [&str; 9] = [
    "INSERT OR IGNORE INTO downstream (id, session, message_id, group_id, body, expires_at, receipt, accepted_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    "UPDATE downstream SET attempts = ?2, not_before = ?3 WHERE id = ?1",
    "UPDATE downstream SET state = 1, body = NULL, group_id = NULL, done_at = ?2 WHERE id = ?1",
    "UPDATE downstream SET receipt = 0 WHERE id = ?1",
    "INSERT OR REPLACE INTO outbox (session, seq, body) VALUES (?1, ?2, ?3)",
    "DELETE FROM outbox WHERE session = ?1 AND seq = ?2",
    "INSERT OR IGNORE INTO upstream_seen (message_id, at) VALUES (?1, ?2)",
    "INSERT INTO unroutable (category, body, at) VALUES (?1, ?2, ?3)",
    "INSERT OR IGNORE INTO prune_late (id) VALUES (?1)",
];

impl<'c> Stmts<'c> {
    fn new(conn: &'c Connection) -> Stmts<'c> {
        Stmts {
            conn,
            cache: Default::default(),
        }
    }

    fn get(&mut self, which: usize) -> rusqlite::Result<&mut rusqlite::CachedStatement<'c>> {
        let slot = &mut self.cache[which];
        if slot.is_none() {
            *slot = Some(self.conn.prepare_cached(WRITE_SQL[which])?);
        }
        match slot {
            Some(st) => Ok(st),
            None => Err(rusqlite::Error::InvalidQuery),
        }
    }
}

/// Applies one batch inside the open transaction; returns the ids of
/// duplicate inserts and the outbox seqs of repeated upstream messages.
/// With `skip_inserts`, new downstream messages are left out (they were
/// refused). `now` (Unix ms, from the store's clock) stamps finished rows
/// and upstream ids, which retention ages by. A message finished with a row
/// id up to `late_below` was passed by the prune walk while it was queued:
/// it goes on the late list (see `prune`).
pub(crate) fn apply_batch(
    conn: &Connection,
    b: &Batch,
    skip_inserts: bool,
    now: i64,
    late_below: i64,
) -> rusqlite::Result<(Vec<u64>, Vec<u64>)> {
    let mut dups = Vec::new();
    let mut repeated = Vec::new();
    let mut st = Stmts::new(conn);
    let at = At { now, late_below };
    for op in &b.ops {
        apply_op(&mut st, op, skip_inserts, at, &mut dups, &mut repeated)?;
    }
    Ok((dups, repeated))
}

/// The time of a batch and the prune walk's place.
#[derive(Clone, Copy)]
struct At {
    now: i64,
    late_below: i64,
}

fn apply_op(
    st: &mut Stmts<'_>,
    op: &Op,
    skip_inserts: bool,
    at: At,
    dups: &mut Vec<u64>,
    repeated: &mut Vec<u64>,
) -> rusqlite::Result<()> {
    let now = at.now;
    {
        match op {
            Op::InsertDownstream(n) => {
                if skip_inserts {
                    return Ok(());
                }
                let changed = st.get(SQL_INSERT)?.execute(params![
                    n.id as i64,
                    &*n.session,
                    n.message_id,
                    n.group_id,
                    n.body,
                    n.expires_at_ms,
                    n.receipt as i64,
                    n.accepted_at_ms
                ])?;
                if changed == 0 {
                    dups.push(n.id);
                }
            }
            Op::RetryDownstream {
                id,
                attempts,
                not_before_ms,
            } => {
                st.get(SQL_RETRY)?
                    .execute(params![*id as i64, *attempts as i64, not_before_ms])?;
            }
            Op::FinishDownstream { id } => {
                let id = *id as i64;
                let finished = st.get(SQL_FINISH)?.execute(params![id, now])?;
                if finished > 0 && id <= at.late_below {
                    st.get(SQL_LATE)?.execute(params![id])?;
                }
            }
            Op::ReceiptDone { id } => {
                st.get(SQL_RECEIPT_DONE)?.execute(params![*id as i64])?;
            }
            Op::InsertOutbox { seq, session, body } => {
                st.get(SQL_OUTBOX)?
                    .execute(params![&**session, *seq as i64, &**body])?;
            }
            Op::DeleteOutbox { session, seq } => {
                st.get(SQL_OUTBOX_DELETE)?
                    .execute(params![&**session, *seq as i64])?;
            }
            Op::UpstreamSeen { message_id } => {
                st.get(SQL_SEEN)?.execute(params![message_id, now])?;
            }
            Op::Upstream { message_id, then } => {
                if st.get(SQL_SEEN)?.execute(params![message_id, now])? == 1 {
                    for op in then {
                        apply_op(st, op, skip_inserts, at, dups, repeated)?;
                    }
                } else {
                    repeated.extend(then.iter().filter_map(|op| match op {
                        Op::InsertOutbox { seq, .. } => Some(*seq),
                        _ => None,
                    }));
                }
            }
            Op::Unroutable { category, body } => {
                st.get(SQL_UNROUTABLE)?
                    .execute(params![category, body, now])?;
            }
        }
    }
    Ok(())
}
