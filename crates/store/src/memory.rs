//! An in-memory [`Store`]: the same contract as the SQLite store (it passes
//! the same [`crate::conformance`] suite), with "durable" meaning "in this
//! process". Each batch is applied and reported synchronously inside
//! [`Store::submit`], with no thread of its own, so tests can drive the
//! whole engine under paused tokio time. Not for production: nothing
//! survives the process.
//!
//! Reopening a [`MemData`] gives a new handle on the same data, the way a
//! restart reopens a database file.

use crate::types::{
    Batch, Committed, Counts, NewDownstream, Op, OutboxRow, QueuedRow, ReceiptTarget, Recovery,
    UnroutableRow,
};
use crate::{ReadResult, Store, StoreError};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

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
    seen: HashSet<String>,
    unroutable: Vec<UnroutableRow>,
    max_seq: u64,
    /// Set while a writer handle is open (one store, one writer).
    open: bool,
}

struct Row {
    new: NewDownstream,
    attempts: u32,
    not_before_ms: i64,
    done: bool,
}

/// A handle on a [`MemData`].
pub struct MemStore {
    data: MemData,
    committed: UnboundedSender<Committed>,
}

impl Drop for MemStore {
    fn drop(&mut self) {
        if let Ok(mut s) = self.data.0.lock() {
            s.open = false;
        }
    }
}

impl MemStore {
    /// Opens `data`; each batch is reported on `committed`. Fails when
    /// another handle has it open.
    pub fn open(
        data: &MemData,
        committed: UnboundedSender<Committed>,
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
            next_id: s.downstream.keys().next_back().map_or(1, |id| id + 1),
            queued: s.downstream.values().filter(|r| !r.done).count() as u64,
            outbox: outbox.into_iter().collect(),
        };
        drop(s);
        Ok((
            MemStore {
                data: data.clone(),
                committed,
            },
            recovery,
        ))
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> ReadResult<T> {
        let mut s = self.data.0.lock().map_err(|_| StoreError::Stopped)?;
        Ok(f(&mut s))
    }
}

fn apply(s: &mut State, op: &Op, c: &mut Committed) {
    match op {
        Op::InsertDownstream(n) => {
            let key = (n.session.to_string(), n.message_id.clone());
            if s.ids.contains_key(&key) || s.downstream.contains_key(&n.id) {
                c.duplicates.push(n.id);
            } else {
                s.ids.insert(key, n.id);
                s.downstream.insert(
                    n.id,
                    Row {
                        new: n.clone(),
                        attempts: 0,
                        not_before_ms: 0,
                        done: false,
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
                r.done = true;
                r.new.body.clear();
                r.new.group_id = None;
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
            s.seen.insert(message_id.clone());
        }
        Op::Upstream { message_id, then } => {
            if s.seen.insert(message_id.clone()) {
                for op in then {
                    apply(s, op, c);
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
            for op in &batch.ops {
                apply(s, op, &mut c);
            }
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
        let r = self.with(|s| s.seen.contains(message_id));
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
}
