//! An in-memory [`Store`]: the same contract as the SQLite store (it passes
//! the same [`crate::conformance`] suite), with "durable" meaning "in this
//! process". Each batch is applied and reported synchronously inside
//! [`Store::submit`], with no thread of its own, so tests can drive the
//! whole engine under paused tokio time. Not for production: nothing
//! survives the process.
//!
//! Reopening a [`MemData`] gives a new handle on the same data, the way a
//! restart reopens a database file.
//!
//! Retention (SPEC §11): with no thread to prune in the background, a
//! submit that finds a prune step due runs one after applying its batch (at
//! most `prune_batch` rows per table); [`Store::prune_now`] runs a whole
//! pass.

use crate::retention::{Pruned, StoreOptions};
use crate::types::{
    Batch, Committed, Counts, NewDownstream, Op, OutboxRow, QueuedRow, ReceiptTarget, Recovery,
    UnroutableRow,
};
use crate::{ReadResult, Store, StoreError};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

/// The data of an in-memory store, shared by the handles opened on it.
#[derive(Clone, Default)]
pub struct MemData(Arc<Mutex<State>>);

impl MemData {
    /// An empty store.
    pub fn new() -> MemData {
        MemData::default()
    }
}

#[derive(Default)]
struct State {
    downstream: BTreeMap<u64, Row>,
    ids: HashMap<(String, String), u64>,
    outbox: BTreeMap<(String, u64), String>,
    /// Upstream ids and when they were first seen (Unix ms) …
    seen: HashMap<String, i64>,
    /// … and the same, oldest first, for pruning.
    seen_by_age: BTreeSet<(i64, String)>,
    /// Finished rows, oldest first: (done at, id).
    done_by_age: BTreeSet<(i64, u64)>,
    unroutable: Vec<UnroutableRow>,
    max_seq: u64,
    /// Highest row id ever stored (pruning does not lower it).
    max_id: u64,
    /// Set while a writer handle is open (one store, one writer).
    open: bool,
}

struct Row {
    new: NewDownstream,
    attempts: u32,
    not_before_ms: i64,
    done: bool,
    /// When it was finished (Unix ms).
    done_at: i64,
}

/// A handle on a [`MemData`].
pub struct MemStore {
    data: MemData,
    committed: UnboundedSender<Committed>,
    options: StoreOptions,
    retention_ms: Option<i64>,
    /// Clock time (Unix ms) at which the next prune step is due.
    next_prune: Mutex<i64>,
    totals: watch::Sender<Pruned>,
}

impl Drop for MemStore {
    fn drop(&mut self) {
        if let Ok(mut s) = self.data.0.lock() {
            s.open = false;
        }
    }
}

impl MemStore {
    /// Opens `data` with the default options (24 hours' retention); each
    /// batch is reported on `committed`. Fails when another handle has it
    /// open.
    pub fn open(
        data: &MemData,
        committed: UnboundedSender<Committed>,
    ) -> Result<(MemStore, Recovery), StoreError> {
        MemStore::open_with(data, committed, StoreOptions::default())
    }

    /// [`MemStore::open`] with the given options.
    pub fn open_with(
        data: &MemData,
        committed: UnboundedSender<Committed>,
        options: StoreOptions,
    ) -> Result<(MemStore, Recovery), StoreError> {
        let mut s = data.0.lock().map_err(|_| StoreError::Stopped)?;
        if s.open {
            return Err(StoreError::Locked("memory".into()));
        }
        s.open = true;
        let mut outbox: BTreeMap<String, u64> = BTreeMap::new();
        for (session, _) in s.outbox.keys() {
            *outbox.entry(session.clone()).or_default() += 1;
        }
        let recovery = Recovery {
            next_seq: s.max_seq + 1,
            next_id: s.max_id + 1,
            queued: s.downstream.values().filter(|r| !r.done).count() as u64,
            outbox: outbox.into_iter().collect(),
        };
        drop(s);
        let retention_ms = options.retention_ms();
        Ok((
            MemStore {
                data: data.clone(),
                committed,
                next_prune: Mutex::new(options.clock.now_ms()),
                retention_ms,
                options,
                totals: watch::Sender::new(Pruned::default()),
            },
            recovery,
        ))
    }

    /// One prune step if one is due (after a batch, as the SQLite writer
    /// prunes between batches).
    fn prune_if_due(&self, s: &mut State) {
        let Some(retention) = self.retention_ms else {
            return;
        };
        let Ok(mut next) = self.next_prune.lock() else {
            return;
        };
        let now = self.options.clock.now_ms();
        if now < *next {
            return;
        }
        let (pruned, more) = prune_step(s, now.saturating_sub(retention), self.batch());
        *next = if more {
            now
        } else {
            now.saturating_add(
                i64::try_from(self.options.prune_interval.as_millis()).unwrap_or(i64::MAX),
            )
        };
        self.count(pruned);
    }

    fn batch(&self) -> usize {
        self.options.prune_batch.max(1)
    }

    fn count(&self, pruned: Pruned) {
        if pruned != Pruned::default() {
            self.totals.send_modify(|t| t.add(pruned));
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> ReadResult<T> {
        let mut s = self.data.0.lock().map_err(|_| StoreError::Stopped)?;
        Ok(f(&mut s))
    }
}

/// Deletes at most `batch` finished rows and as many upstream ids older
/// than `cutoff` (Unix ms), the oldest first; also says whether a table had
/// a full batch (there may be more).
fn prune_step(s: &mut State, cutoff: i64, batch: usize) -> (Pruned, bool) {
    let mut pruned = Pruned::default();
    let old: Vec<(i64, u64)> = s
        .done_by_age
        .iter()
        .take_while(|(at, _)| *at < cutoff)
        .take(batch)
        .copied()
        .collect();
    for key in &old {
        s.done_by_age.remove(key);
        if let Some(r) = s.downstream.remove(&key.1) {
            let id_key = (r.new.session.to_string(), r.new.message_id);
            if s.ids.get(&id_key) == Some(&key.1) {
                s.ids.remove(&id_key);
            }
            pruned.downstream += 1;
        }
    }
    let seen: Vec<(i64, String)> = s
        .seen_by_age
        .iter()
        .take_while(|(at, _)| *at < cutoff)
        .take(batch)
        .cloned()
        .collect();
    for key in seen {
        s.seen.remove(&key.1);
        s.seen_by_age.remove(&key);
        pruned.upstream += 1;
    }
    let more = old.len() >= batch || pruned.upstream as usize >= batch;
    (pruned, more)
}

/// Records an upstream id as seen at `now`; false when it was seen before.
fn see(s: &mut State, message_id: &str, now: i64) -> bool {
    if s.seen.contains_key(message_id) {
        return false;
    }
    s.seen.insert(message_id.to_string(), now);
    s.seen_by_age.insert((now, message_id.to_string()));
    true
}

fn apply(s: &mut State, op: &Op, now: i64, c: &mut Committed) {
    match op {
        Op::InsertDownstream(n) => {
            let key = (n.session.to_string(), n.message_id.clone());
            if s.ids.contains_key(&key) || s.downstream.contains_key(&n.id) {
                c.duplicates.push(n.id);
            } else {
                s.max_id = s.max_id.max(n.id);
                s.ids.insert(key, n.id);
                s.downstream.insert(
                    n.id,
                    Row {
                        new: n.clone(),
                        attempts: 0,
                        not_before_ms: 0,
                        done: false,
                        done_at: 0,
                    },
                );
            }
        }
        Op::RetryDownstream {
            id,
            attempts,
            not_before_ms,
        } => {
            if let Some(r) = s.downstream.get_mut(id) {
                r.attempts = *attempts;
                r.not_before_ms = *not_before_ms;
            }
        }
        Op::FinishDownstream { id } => {
            if let Some(r) = s.downstream.get_mut(id) {
                if r.done {
                    s.done_by_age.remove(&(r.done_at, *id));
                }
                r.done = true;
                r.done_at = now;
                r.new.body.clear();
                r.new.group_id = None;
                s.done_by_age.insert((now, *id));
            }
        }
        Op::ReceiptDone { id } => {
            if let Some(r) = s.downstream.get_mut(id) {
                r.new.receipt = false;
            }
        }
        Op::InsertOutbox { seq, session, body } => {
            s.max_seq = s.max_seq.max(*seq);
            s.outbox
                .insert((session.to_string(), *seq), body.to_string());
        }
        Op::DeleteOutbox { session, seq } => {
            s.outbox.remove(&(session.to_string(), *seq));
        }
        Op::UpstreamSeen { message_id } => {
            see(s, message_id, now);
        }
        Op::Upstream { message_id, then } => {
            if see(s, message_id, now) {
                for op in then {
                    apply(s, op, now, c);
                }
            } else {
                c.repeated.extend(then.iter().filter_map(|op| match op {
                    Op::InsertOutbox { seq, .. } => Some(*seq),
                    _ => None,
                }));
            }
        }
        Op::Unroutable { category, body } => s.unroutable.push(UnroutableRow {
            category: category.clone(),
            body: body.clone(),
        }),
    }
}

impl Store for MemStore {
    fn submit(&self, batch: Batch) -> Result<(), StoreError> {
        let c = self.with(|s| {
            let mut c = Committed {
                no: batch.no,
                group_size: 1,
                ..Committed::default()
            };
            let now = self.options.clock.now_ms();
            for op in &batch.ops {
                apply(s, op, now, &mut c);
            }
            self.prune_if_due(s);
            c
        })?;
        self.committed.send(c).map_err(|_| StoreError::Stopped)
    }

    fn is_degraded(&self) -> bool {
        false
    }

    fn load_queued(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, ReadResult<Vec<QueuedRow>>> {
        let r = self.with(|s| {
            s.downstream
                .range(after.saturating_add(1)..)
                .filter(|(_, r)| !r.done)
                .take(limit)
                .map(|(id, r)| QueuedRow {
                    id: *id,
                    session: r.new.session.to_string(),
                    message_id: r.new.message_id.clone(),
                    group_id: r.new.group_id.clone(),
                    body: r.new.body.clone(),
                    attempts: r.attempts,
                    not_before_ms: r.not_before_ms,
                    accepted_at_ms: r.new.accepted_at_ms,
                    expires_at_ms: r.new.expires_at_ms,
                    receipt: r.new.receipt,
                })
                .collect()
        });
        Box::pin(async move { r })
    }

    fn load_outbox(
        &self,
        session: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, ReadResult<Vec<OutboxRow>>> {
        let session = session.to_string();
        let r = self.with(|s| {
            s.outbox
                .range((session.clone(), after.saturating_add(1))..)
                .take_while(|((sess, _), _)| *sess == session)
                .take(limit)
                .map(|((sess, seq), body)| OutboxRow {
                    seq: *seq,
                    session: sess.clone(),
                    body: body.clone(),
                })
                .collect()
        });
        Box::pin(async move { r })
    }

    fn receipt_target(
        &self,
        message_id: &str,
    ) -> BoxFuture<'static, ReadResult<Option<ReceiptTarget>>> {
        let r = self.with(|s| {
            s.downstream
                .iter()
                .rev()
                .find(|(_, r)| r.new.receipt && r.new.message_id == message_id)
                .map(|(id, r)| ReceiptTarget {
                    session: r.new.session.to_string(),
                    id: *id,
                })
        });
        Box::pin(async move { r })
    }

    fn upstream_seen(&self, message_id: &str) -> BoxFuture<'static, ReadResult<bool>> {
        let r = self.with(|s| s.seen.contains_key(message_id));
        Box::pin(async move { r })
    }

    fn counts(&self) -> BoxFuture<'static, ReadResult<Counts>> {
        let r = self.with(|s| Counts {
            queued: s.downstream.values().filter(|r| !r.done).count() as u64,
            outbox: s.outbox.len() as u64,
            unroutable: s.unroutable.len() as u64,
        });
        Box::pin(async move { r })
    }

    fn unroutable(&self, limit: usize) -> BoxFuture<'static, ReadResult<Vec<UnroutableRow>>> {
        let r = self.with(|s| s.unroutable.iter().rev().take(limit).cloned().collect());
        Box::pin(async move { r })
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    fn prune_now(&self) -> BoxFuture<'static, ReadResult<Pruned>> {
        let r = match self.retention_ms {
            None => Ok(Pruned::default()),
            Some(retention) => self.with(|s| {
                let cutoff = self.options.clock.now_ms().saturating_sub(retention);
                let mut total = Pruned::default();
                loop {
                    let (p, more) = prune_step(s, cutoff, self.batch());
                    total.add(p);
                    if !more {
                        break total;
                    }
                }
            }),
        };
        if let Ok(p) = &r {
            self.count(*p);
        }
        Box::pin(async move { r })
    }

    fn pruned(&self) -> watch::Receiver<Pruned> {
        self.totals.subscribe()
    }
}
