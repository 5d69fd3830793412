//! Retention in the SQLite store (SPEC §11 "Retention"): the prune steps
//! and when the writer thread runs them.
//!
//! A **step** deletes at most `prune_batch` finished downstream rows and as
//! many upstream ids older than the retention, walking both tables in key
//! order, which is the order rows age in: row ids are handed out in order
//! and messages finish roughly in that order; upstream ids are appended.
//! No index on the ages is kept (migration 0004): it cost a b-tree write on
//! every final result and another on every prune. The walk over
//! `downstream` keeps its place (`meta.prune_cursor`), deletes the finished
//! rows it passes in one range delete, and stops at the first row that is
//! not old yet: finished within the retention, or queued and accepted
//! within it. A row queued for longer than the retention is passed (queued
//! rows are never pruned); when it is finished it is put on the
//! `prune_late` list, and pruned from there a retention later; upstream
//! ids are deleted as the prefix of their table. The writer runs a step only when
//! no message is waiting on its channel, so a batch never queues behind
//! pruning for longer than one step, and never while stopping or degraded:
//!
//! * with a transaction open (batches applied, the previous commit's fsync
//!   running) the step joins that transaction inside a savepoint: this is
//!   time the writer would spend blocked anyway, and the deletes ride on the
//!   group's commit and fsync;
//! * with none open, the step opens a transaction. Further steps join it
//!   while the writer stays idle; a batch that arrives joins it too and it
//!   becomes an ordinary group. A transaction of prune steps alone is
//!   committed, without an fsync, when its pass is over or after
//!   [`PRUNE_STEPS_PER_TXN`] steps: a prune lost in a crash is simply done
//!   again, and the next group's fsync of the WAL covers it.
//!
//! One transaction holds at most [`PRUNE_STEPS_PER_TXN`] steps: committing
//! each step alone was measured to cost twice the CPU per pruned row
//! (every commit rewrites the same index and free-list pages into the WAL),
//! while a group's commit stays small enough not to delay its fsync much.
//!
//! A step that found a full batch is followed by the next as soon as the
//! writer is idle again; one that found less ends the pass, and the next
//! pass starts `prune_interval` later. Deleted pages go to SQLite's
//! free list and are reused by new rows, which keeps the file from growing
//! under steady load (BENCHMARKS.md, "Retention and disk space").
//!
//! This runs on the writer thread, which blocks by design: its schedule is
//! kept with `std::time::Instant` (rows are aged by the store's [`Clock`]).
#![allow(clippy::disallowed_methods)]

use crate::retention::{Clock, Pruned, StoreOptions};
use rusqlite::{params, Connection};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// The walk over `downstream`: the rows after the cursor, in id order.
pub(crate) const SQL_WALK_DOWNSTREAM: &str =
    "SELECT id, state, done_at, accepted_at FROM downstream WHERE id > ?1 ORDER BY id LIMIT ?2";
/// Deletes the finished rows the walk passed; queued ones stay.
const SQL_DELETE_WALKED: &str = "DELETE FROM downstream WHERE id > ?1 AND id <= ?2 AND state = 1";
/// Records the cursor, and keeps row ids above it (never reused).
const SQL_MOVE_CURSOR: &str = "UPDATE meta SET value =
     CASE key WHEN 'prune_cursor' THEN ?1 ELSE max(value, ?1 + 1) END
     WHERE key IN ('prune_cursor', 'next_id')";
/// Rows finished after the walk passed them, oldest first (their row may
/// be gone only if something else deleted it: then the entry goes too).
pub(crate) const SQL_WALK_LATE: &str = "SELECT l.id, d.state, d.done_at FROM prune_late l
     LEFT JOIN downstream d ON d.id = l.id ORDER BY l.id LIMIT ?1";
const SQL_DELETE_LATE: &str = "DELETE FROM prune_late WHERE id = ?1";
const SQL_DELETE_ROW: &str = "DELETE FROM downstream WHERE id = ?1";
/// Upstream ids in the order they were recorded (appended: rowid order).
pub(crate) const SQL_WALK_UPSTREAM: &str =
    "SELECT rowid, at FROM upstream_seen ORDER BY rowid LIMIT ?1";
const SQL_DELETE_UPSTREAM: &str = "DELETE FROM upstream_seen WHERE rowid <= ?1";

/// Whether a finished row (`done_at`, Unix ms) is past `cutoff`. A row
/// without the time (none should exist after migration 0004) counts as old
/// rather than holding the walk up for ever.
fn is_old(done_at: Option<i64>, cutoff: i64) -> bool {
    done_at.is_none_or(|d| d < cutoff)
}

/// One step in the current transaction: what is older than `cutoff`
/// (Unix ms), at most `batch` rows of each table, in key order; the walk
/// over `downstream` starts after `cursor`. A finished row that is not old
/// yet ends the walk (the rows after it finished later, as a rule), and so
/// does a queued row accepted after the cutoff (it will most likely be
/// finished soon, and walked then). A row queued for longer than the
/// retention is passed, and listed in `prune_late` when it is finished
/// (see the apply of `FinishDownstream`).
pub(crate) fn step(
    conn: &Connection,
    cutoff: i64,
    batch: usize,
    cursor: i64,
) -> rusqlite::Result<Step> {
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let mut pruned = Pruned::default();
    // Downstream, in id order from the cursor.
    let (mut seen, mut stopped, mut to) = (0usize, false, cursor);
    {
        let mut st = conn.prepare_cached(SQL_WALK_DOWNSTREAM)?;
        let mut rows = st.query(params![cursor, limit])?;
        while let Some(r) = rows.next()? {
            seen += 1;
            let (id, state, done_at, accepted_at): (i64, i64, Option<i64>, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let old = if state == 0 {
                accepted_at < cutoff
            } else {
                is_old(done_at, cutoff)
            };
            if !old {
                stopped = true;
                break;
            }
            to = id;
        }
    }
    if to > cursor {
        pruned.downstream += conn
            .prepare_cached(SQL_DELETE_WALKED)?
            .execute(params![cursor, to])? as u64;
        conn.prepare_cached(SQL_MOVE_CURSOR)?.execute(params![to])?;
    }
    let more_walk = seen == batch && !stopped;
    // Rows the walk passed while they were queued, finished since.
    let mut late = Vec::new();
    let mut late_seen = 0usize;
    {
        let mut st = conn.prepare_cached(SQL_WALK_LATE)?;
        let mut rows = st.query(params![limit])?;
        while let Some(r) = rows.next()? {
            late_seen += 1;
            let (id, state, done_at): (i64, Option<i64>, Option<i64>) =
                (r.get(0)?, r.get(1)?, r.get(2)?);
            match state {
                None => late.push((id, false)),
                Some(0) => {}
                Some(_) if is_old(done_at, cutoff) => late.push((id, true)),
                // Finished recently: the ones after it finished later.
                Some(_) => break,
            }
        }
    }
    for (id, has_row) in &late {
        if *has_row {
            pruned.downstream += conn.prepare_cached(SQL_DELETE_ROW)?.execute(params![id])? as u64;
        }
        conn.prepare_cached(SQL_DELETE_LATE)?.execute(params![id])?;
    }
    let more_late = late_seen == batch && late.len() == batch;
    // Upstream ids, oldest first.
    let (mut up_seen, mut up_to) = (0usize, None);
    {
        let mut st = conn.prepare_cached(SQL_WALK_UPSTREAM)?;
        let mut rows = st.query(params![limit])?;
        while let Some(r) = rows.next()? {
            let (rowid, at): (i64, i64) = (r.get(0)?, r.get(1)?);
            if at >= cutoff {
                break;
            }
            up_seen += 1;
            up_to = Some(rowid);
        }
    }
    if let Some(to) = up_to {
        pruned.upstream += conn
            .prepare_cached(SQL_DELETE_UPSTREAM)?
            .execute(params![to])? as u64;
    }
    Ok(Step {
        pruned,
        more: more_walk || more_late || up_seen == batch,
        cursor: to,
    })
}

/// Most prune steps in one transaction (see the module docs).
pub(crate) const PRUNE_STEPS_PER_TXN: usize = 8;

/// What one step did.
pub(crate) struct Step {
    pub(crate) pruned: Pruned,
    pub(crate) more: bool,
    /// Where the walk over `downstream` stopped.
    pub(crate) cursor: i64,
}

/// What a `prune_now` caller is answered: what its pass removed, or why a
/// step of it failed.
pub(crate) type PassResult = Result<Pruned, String>;

/// A `prune_now` caller and what was pruned for it so far.
struct Waiter {
    tx: oneshot::Sender<PassResult>,
    so_far: Pruned,
}

/// When the writer prunes, and the totals it reports.
pub(crate) struct Pruner {
    retention_ms: Option<i64>,
    batch: usize,
    interval: Duration,
    clock: Clock,
    /// When the next step is due (`None`: retention is off).
    due: Option<Instant>,
    /// The walk's place: the last row id it passed, in the open transaction
    /// and as committed (a rollback returns to that).
    cursor: i64,
    committed_cursor: i64,
    /// `prune_now` callers: answered when a transaction whose last step
    /// found nothing more to delete has committed.
    waiters: Vec<Waiter>,
    totals: watch::Sender<Pruned>,
}

impl Pruner {
    /// `cursor` is `meta.prune_cursor` as the store was opened with.
    pub(crate) fn new(opts: &StoreOptions, totals: watch::Sender<Pruned>, cursor: i64) -> Pruner {
        let retention_ms = opts.retention_ms();
        Pruner {
            retention_ms,
            batch: opts.prune_batch.max(1),
            interval: opts.prune_interval,
            clock: opts.clock.clone(),
            // The first pass right after the open: a gateway that was down
            // for a while has old rows to drop.
            due: retention_ms.map(|_| Instant::now()),
            cursor,
            committed_cursor: cursor,
            waiters: Vec::new(),
            totals,
        }
    }

    /// The clock rows are stamped with.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Rows up to this id were passed by the walk: one of them finished now
    /// goes on the late list.
    pub(crate) fn late_below(&self) -> i64 {
        self.cursor
    }

    /// A `prune_now` request: a pass starts at once. Without retention
    /// there is nothing to prune and it is answered now.
    pub(crate) fn request(&mut self, tx: oneshot::Sender<PassResult>) {
        if self.retention_ms.is_none() {
            let _ = tx.send(Ok(Pruned::default()));
            return;
        }
        self.waiters.push(Waiter {
            tx,
            so_far: Pruned::default(),
        });
        self.due = Some(Instant::now());
    }

    /// Whether a step is due.
    pub(crate) fn wants_step(&self) -> bool {
        self.due.is_some_and(|d| d <= Instant::now())
    }

    /// How long the writer may block before the next step is due (`None`:
    /// until a message comes).
    pub(crate) fn wait(&self) -> Option<Duration> {
        self.due
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Runs one step in the current transaction; the caller commits it.
    /// Returns what it deleted (to be counted once committed).
    pub(crate) fn step(&mut self, conn: &Connection) -> rusqlite::Result<Step> {
        let Some(retention) = self.retention_ms else {
            return Ok(Step {
                pruned: Pruned::default(),
                more: false,
                cursor: self.cursor,
            });
        };
        let cutoff = self.clock.now_ms().saturating_sub(retention);
        let r = step(conn, cutoff, self.batch, self.cursor);
        if let Ok(s) = &r {
            self.cursor = s.cursor;
        }
        self.due = Some(match &r {
            Ok(s) if s.more => Instant::now(),
            // Done for now, or failed (the cause is logged by the caller):
            // look again later, not in a tight loop.
            _ => Instant::now() + self.interval,
        });
        r
    }

    /// Steps of a transaction that committed: counted in the totals and
    /// for the waiting callers, who are answered when the pass is over.
    pub(crate) fn committed(&mut self, pruned: Pruned, pass_over: bool) {
        self.committed_cursor = self.cursor;
        if pruned != Pruned::default() {
            self.totals.send_modify(|t| t.add(pruned));
        }
        for w in &mut self.waiters {
            w.so_far.add(pruned);
        }
        if pass_over {
            for w in self.waiters.drain(..) {
                let _ = w.tx.send(Ok(w.so_far));
            }
        }
    }

    /// Steps whose transaction was rolled back: they are done again soon,
    /// from where the walk was at the last commit.
    pub(crate) fn rolled_back(&mut self) {
        self.cursor = self.committed_cursor;
        if self.retention_ms.is_some() {
            self.due = Some(Instant::now() + self.interval);
        }
    }

    /// A step of their pass failed: the waiting callers get the error (the
    /// background pruner tries again later). `txn_lost`: the whole
    /// transaction went with it (else only the step, in its savepoint).
    pub(crate) fn failed(&mut self, e: &rusqlite::Error, txn_lost: bool) {
        if txn_lost {
            self.rolled_back();
        } else if self.retention_ms.is_some() {
            self.due = Some(Instant::now() + self.interval);
        }
        for w in self.waiters.drain(..) {
            let _ = w.tx.send(Err(e.to_string()));
        }
    }
}
