//! Retention in the SQLite store (SPEC §11 "Retention"): the prune steps
//! and when the writer thread runs them.
//!
//! A **step** deletes at most `prune_batch` finished downstream rows and as
//! many upstream ids older than the retention, the oldest first, through
//! the partial index on `downstream(done_at)` and the index on
//! `upstream_seen(at)` (migration 0004). The writer runs a step only when
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

pub(crate) const SQL_PRUNE_DOWNSTREAM: &str = "DELETE FROM downstream WHERE id IN
     (SELECT id FROM downstream WHERE state = 1 AND done_at < ?1 ORDER BY done_at LIMIT ?2)
     RETURNING id";
pub(crate) const SQL_PRUNE_UPSTREAM: &str = "DELETE FROM upstream_seen WHERE rowid IN
     (SELECT rowid FROM upstream_seen WHERE at < ?1 ORDER BY at LIMIT ?2)";
/// Keeps row ids from being reused after the highest rows were pruned.
const SQL_KEEP_NEXT_ID: &str = "UPDATE meta SET value = max(value, ?1) WHERE key = 'next_id'";

/// One step in the current transaction: what is older than `cutoff`
/// (Unix ms), at most `batch` rows of each table. Also reports whether a
/// table had a full batch (there may be more).
pub(crate) fn step(conn: &Connection, cutoff: i64, batch: usize) -> rusqlite::Result<Step> {
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let (mut down, mut max_id) = (0usize, 0i64);
    {
        let mut st = conn.prepare_cached(SQL_PRUNE_DOWNSTREAM)?;
        let mut rows = st.query(params![cutoff, limit])?;
        while let Some(r) = rows.next()? {
            down += 1;
            max_id = max_id.max(r.get(0)?);
        }
    }
    if down > 0 {
        // Nothing is written when nothing was pruned (an idle store's
        // passes touch no page).
        conn.prepare_cached(SQL_KEEP_NEXT_ID)?
            .execute(params![max_id + 1])?;
    }
    let up = conn
        .prepare_cached(SQL_PRUNE_UPSTREAM)?
        .execute(params![cutoff, limit])?;
    Ok(Step {
        pruned: Pruned {
            downstream: down as u64,
            upstream: up as u64,
        },
        more: down >= batch || up >= batch,
    })
}

/// Most prune steps in one transaction (see the module docs).
pub(crate) const PRUNE_STEPS_PER_TXN: usize = 8;

/// What one step did.
pub(crate) struct Step {
    pub(crate) pruned: Pruned,
    pub(crate) more: bool,
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
    /// `prune_now` callers: answered when a transaction whose last step
    /// found nothing more to delete has committed.
    waiters: Vec<Waiter>,
    totals: watch::Sender<Pruned>,
}

impl Pruner {
    pub(crate) fn new(opts: &StoreOptions, totals: watch::Sender<Pruned>) -> Pruner {
        let retention_ms = opts.retention_ms();
        Pruner {
            retention_ms,
            batch: opts.prune_batch.max(1),
            interval: opts.prune_interval,
            clock: opts.clock.clone(),
            // The first pass right after the open: a gateway that was down
            // for a while has old rows to drop.
            due: retention_ms.map(|_| Instant::now()),
            waiters: Vec::new(),
            totals,
        }
    }

    /// The clock rows are stamped with.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
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
            });
        };
        let cutoff = self.clock.now_ms().saturating_sub(retention);
        let r = step(conn, cutoff, self.batch);
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

    /// Steps whose transaction was rolled back: they are done again soon.
    pub(crate) fn rolled_back(&mut self) {
        if self.retention_ms.is_some() {
            self.due = Some(Instant::now() + self.interval);
        }
    }

    /// A step of their pass failed: the waiting callers get the error (the
    /// background pruner tries again later).
    pub(crate) fn failed(&mut self, e: &rusqlite::Error) {
        self.rolled_back();
        for w in self.waiters.drain(..) {
            let _ = w.tx.send(Err(e.to_string()));
        }
    }
}
