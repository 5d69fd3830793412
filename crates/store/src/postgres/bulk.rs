//! A group's writes as one statement per kind (SPEC §6 group commit, on
//! PostgreSQL): the inserts of every batch in the group go in one `INSERT …
//! SELECT FROM unnest(…)`, the final results in one `UPDATE … WHERE id =
//! ANY(…)`, and so on, so the server runs a handful of statements per
//! transaction instead of four per message.
//!
//! That reorders the group's writes by kind: the dedupe inserts of upstream
//! ids first, then new downstream rows, updates of rows, outbox inserts,
//! outbox deletes, unroutable messages. The result is the one of applying
//! them in order as long as no write needs a row that a later write of the
//! group creates (an update of a row inserted after it, an outbox delete
//! before the insert of its row): the engine never does that, since it
//! refers to a row only after the batch that wrote it was reported. A group
//! that does anyway — and one with an [`Op::Upstream`] carrying writes of
//! another kind — is applied one write after another instead
//! ([`Plan::new`] says `None`). Within a kind the order holds: the first
//! of two inserts of one message id wins, the last of two updates of a row.

use super::apply::Started;
use super::writer::Stmts;
use crate::types::{Batch, Op};
use std::collections::{HashMap, HashSet};
use tokio_postgres::Client;

/// Per batch: ids of duplicate inserts, seqs of repeated upstream.
pub(super) type Outcome = (Vec<u64>, Vec<u64>);

/// What a group writes, by kind, in order within each kind.
#[derive(Default)]
pub(super) struct Plan<'a> {
    /// New downstream rows and the batch of each.
    inserts: Vec<(usize, &'a crate::types::NewDownstream)>,
    /// Upstream ids to record, in order: batch, id, the writes of a first
    /// delivery (`None` for [`Op::UpstreamSeen`]).
    upstream: Vec<(usize, &'a str, Option<&'a [Op]>)>,
    updates: Updates<'a>,
}

/// The writes after the dedupe inserts (an upstream message's writes join
/// them once its id turned out new).
#[derive(Default)]
struct Updates<'a> {
    /// id -> (attempts, not_before), the last one wins.
    retry: Vec<(i64, i32, i64)>,
    retry_at: HashMap<i64, usize>,
    finish: Vec<i64>,
    receipt_done: Vec<i64>,
    /// (session, seq) -> body, the last one wins.
    outbox: Vec<(&'a str, i64, &'a str)>,
    outbox_at: HashMap<(&'a str, i64), usize>,
    outbox_delete: Vec<(&'a str, i64)>,
    unroutable: Vec<(&'a str, &'a str)>,
}

/// Where the writes that refer to rows stand in the group (to find one
/// that needs a row written after it).
#[derive(Default)]
struct Order<'a> {
    /// Position of each new downstream row.
    inserted_at: HashMap<u64, usize>,
    /// Position of each outbox row inserted.
    outbox_at: HashMap<(&'a str, u64), usize>,
    /// (position, id) of each update.
    updates: Vec<(usize, u64)>,
    /// (position, key) of each outbox delete.
    deletes: Vec<(usize, (&'a str, u64))>,
}

impl<'a> Plan<'a> {
    /// The group by kind, or `None` when it must be applied one write after
    /// another (see the module docs). With `skip_inserts` new downstream
    /// rows are left out (they were refused).
    pub(super) fn new(group: &'a [Batch], skip_inserts: bool) -> Option<Plan<'a>> {
        let mut plan = Plan::default();
        let mut order = Order::default();
        let mut pos = 0usize;
        for (bi, b) in group.iter().enumerate() {
            for op in &b.ops {
                pos += 1;
                match op {
                    Op::InsertDownstream(n) => {
                        if !skip_inserts {
                            order.inserted_at.entry(n.id).or_insert(pos);
                            plan.inserts.push((bi, n));
                        }
                    }
                    Op::UpstreamSeen { message_id } => plan.upstream.push((bi, message_id, None)),
                    Op::Upstream { message_id, then } => {
                        // Its writes join the others only if its id is new;
                        // they are planned then, at this position.
                        for t in then {
                            if !matches!(
                                t,
                                Op::InsertOutbox { .. }
                                    | Op::ReceiptDone { .. }
                                    | Op::Unroutable { .. }
                            ) {
                                return None;
                            }
                            order.note(t, pos);
                        }
                        plan.upstream.push((bi, message_id, Some(then)));
                    }
                    other => {
                        order.note(other, pos);
                        plan.updates.add(other);
                    }
                }
            }
        }
        order.consistent().then_some(plan)
    }

    /// True when the group records upstream ids: their answer decides what
    /// else is written.
    pub(super) fn has_upstream(&self) -> bool {
        !self.upstream.is_empty()
    }
}

impl<'a> Order<'a> {
    fn note(&mut self, op: &'a Op, pos: usize) {
        match op {
            Op::RetryDownstream { id, .. }
            | Op::FinishDownstream { id }
            | Op::ReceiptDone { id } => {
                self.updates.push((pos, *id));
            }
            Op::InsertOutbox { seq, session, .. } => {
                self.outbox_at.entry((&**session, *seq)).or_insert(pos);
            }
            Op::DeleteOutbox { session, seq } => self.deletes.push((pos, (&**session, *seq))),
            _ => {}
        }
    }

    /// No write refers to a row the group creates only after it.
    fn consistent(&self) -> bool {
        self.updates
            .iter()
            .all(|(pos, id)| self.inserted_at.get(id).is_none_or(|at| at < pos))
            && self
                .deletes
                .iter()
                .all(|(pos, key)| self.outbox_at.get(key).is_none_or(|at| at < pos))
    }
}

impl<'a> Updates<'a> {
    fn add(&mut self, op: &'a Op) {
        match op {
            Op::RetryDownstream {
                id,
                attempts,
                not_before_ms,
            } => {
                let row = (
                    *id as i64,
                    i32::try_from(*attempts).unwrap_or(i32::MAX),
                    *not_before_ms,
                );
                match self.retry_at.get(&row.0) {
                    Some(&i) => self.retry[i] = row,
                    None => {
                        self.retry_at.insert(row.0, self.retry.len());
                        self.retry.push(row);
                    }
                }
            }
            Op::FinishDownstream { id } => self.finish.push(*id as i64),
            Op::ReceiptDone { id } => self.receipt_done.push(*id as i64),
            Op::InsertOutbox { seq, session, body } => {
                let key = (&**session, *seq as i64);
                match self.outbox_at.get(&key) {
                    Some(&i) => self.outbox[i] = (key.0, key.1, body),
                    None => {
                        self.outbox_at.insert(key, self.outbox.len());
                        self.outbox.push((key.0, key.1, body));
                    }
                }
            }
            Op::DeleteOutbox { session, seq } => self.outbox_delete.push((session, *seq as i64)),
            Op::Unroutable { category, body } => self.unroutable.push((category, body)),
            Op::InsertDownstream(_) | Op::UpstreamSeen { .. } | Op::Upstream { .. } => {}
        }
    }
}

/// The upstream ids the group records: sent now, answered with the ids
/// that were new.
pub(super) fn send_upstream<'a>(
    c: &'a Client,
    st: &'a Stmts,
    plan: &Plan<'a>,
    now: i64,
) -> Started<'a, Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>> {
    let ids: Vec<&'a str> = plan.upstream.iter().map(|(_, id, _)| *id).collect();
    Started::new(Box::pin(async move {
        c.query(&st.bulk_seen, &[&ids, &now]).await
    }))
}

/// With the new upstream ids known: the writes of first deliveries join
/// the plan; repeats are reported per batch.
pub(super) fn settle_upstream<'a>(
    plan: &mut Plan<'a>,
    new_ids: &[tokio_postgres::Row],
    out: &mut [Outcome],
) {
    let mut new: HashSet<&str> = new_ids.iter().map(|r| r.get::<_, &str>(0)).collect();
    let upstream = std::mem::take(&mut plan.upstream);
    for (bi, id, then) in &upstream {
        // The first occurrence of a new id is its delivery; later ones in
        // the group are repeats, like earlier deliveries.
        let first = new.remove(id);
        let Some(then) = then else { continue };
        if first {
            for op in *then {
                plan.updates.add(op);
            }
        } else {
            out[*bi].1.extend(then.iter().filter_map(|op| match op {
                Op::InsertOutbox { seq, .. } => Some(*seq),
                _ => None,
            }));
        }
    }
    plan.upstream = upstream;
}

/// The statements of the plan (after [`settle_upstream`]), sent in order;
/// their answers come back through [`Sent::finish`].
pub(super) struct Sent<'a> {
    inserts: Option<Started<'a, Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>>>,
    others: Vec<Started<'a, Result<u64, tokio_postgres::Error>>>,
    /// (batch, id) of each insert, in order.
    inserted: Vec<(usize, u64)>,
}

pub(super) fn send<'a>(c: &'a Client, st: &'a Stmts, plan: &Plan<'a>, now: i64) -> Sent<'a> {
    let mut sent = Sent {
        inserts: None,
        others: Vec::new(),
        inserted: plan.inserts.iter().map(|(bi, n)| (*bi, n.id)).collect(),
    };
    if !plan.inserts.is_empty() {
        let n = &plan.inserts;
        let id: Vec<i64> = n.iter().map(|(_, r)| r.id as i64).collect();
        let session: Vec<&'a str> = n.iter().map(|(_, r)| &*r.session).collect();
        let message_id: Vec<&'a str> = n.iter().map(|(_, r)| r.message_id.as_str()).collect();
        let group_id: Vec<Option<&'a str>> = n.iter().map(|(_, r)| r.group_id.as_deref()).collect();
        let body: Vec<&'a str> = n.iter().map(|(_, r)| r.body.as_str()).collect();
        let expires: Vec<i64> = n.iter().map(|(_, r)| r.expires_at_ms).collect();
        let receipt: Vec<bool> = n.iter().map(|(_, r)| r.receipt).collect();
        let accepted: Vec<i64> = n.iter().map(|(_, r)| r.accepted_at_ms).collect();
        sent.inserts = Some(Started::new(Box::pin(async move {
            c.query(
                &st.bulk_insert,
                &[
                    &id,
                    &session,
                    &message_id,
                    &group_id,
                    &body,
                    &expires,
                    &receipt,
                    &accepted,
                ],
            )
            .await
        })));
    }
    let u = &plan.updates;
    if !u.retry.is_empty() {
        let id: Vec<i64> = u.retry.iter().map(|r| r.0).collect();
        let attempts: Vec<i32> = u.retry.iter().map(|r| r.1).collect();
        let not_before: Vec<i64> = u.retry.iter().map(|r| r.2).collect();
        sent.others.push(Started::new(Box::pin(async move {
            c.execute(&st.bulk_retry, &[&id, &attempts, &not_before])
                .await
        })));
    }
    if !u.finish.is_empty() {
        let id = u.finish.clone();
        sent.others.push(Started::new(Box::pin(async move {
            c.execute(&st.bulk_finish, &[&id, &now]).await
        })));
    }
    if !u.receipt_done.is_empty() {
        let id = u.receipt_done.clone();
        sent.others.push(Started::new(Box::pin(async move {
            c.execute(&st.bulk_receipt_done, &[&id]).await
        })));
    }
    if !u.outbox.is_empty() {
        let session: Vec<&'a str> = u.outbox.iter().map(|r| r.0).collect();
        let seq: Vec<i64> = u.outbox.iter().map(|r| r.1).collect();
        let body: Vec<&'a str> = u.outbox.iter().map(|r| r.2).collect();
        sent.others.push(Started::new(Box::pin(async move {
            c.execute(&st.bulk_outbox, &[&session, &seq, &body]).await
        })));
    }
    if !u.outbox_delete.is_empty() {
        let session: Vec<&'a str> = u.outbox_delete.iter().map(|r| r.0).collect();
        let seq: Vec<i64> = u.outbox_delete.iter().map(|r| r.1).collect();
        sent.others.push(Started::new(Box::pin(async move {
            c.execute(&st.bulk_outbox_delete, &[&session, &seq]).await
        })));
    }
    if !u.unroutable.is_empty() {
        let category: Vec<&'a str> = u.unroutable.iter().map(|r| r.0).collect();
        let body: Vec<&'a str> = u.unroutable.iter().map(|r| r.1).collect();
        sent.others.push(Started::new(Box::pin(async move {
            c.execute(&st.bulk_unroutable, &[&category, &body, &now])
                .await
        })));
    }
    sent
}

impl Sent<'_> {
    /// Reads every answer; the duplicate inserts go to their batches.
    pub(super) async fn finish(self, out: &mut [Outcome]) -> Result<(), tokio_postgres::Error> {
        let mut first_err = None;
        if let Some(ins) = self.inserts {
            match ins.get().await {
                Ok(rows) => {
                    let stored: HashSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
                    for (bi, id) in &self.inserted {
                        if !stored.contains(&(*id as i64)) {
                            out[*bi].0.push(*id);
                        }
                    }
                }
                Err(e) => first_err = Some(e),
            }
        }
        for s in self.others {
            if let Err(e) = s.get().await {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::conformance::insert;
    use std::sync::Arc;

    fn b(ops: Vec<Op>) -> Batch {
        Batch { no: 0, ops }
    }

    #[test]
    fn a_write_needing_a_later_row_falls_back_to_one_by_one() {
        // Finish of a row inserted later in the group.
        let g = vec![
            b(vec![Op::FinishDownstream { id: 2 }]),
            b(vec![insert(2, "s", "m")]),
        ];
        assert!(Plan::new(&g, false).is_none());
        // Insert first, then its result: by kind is the same.
        let g = vec![
            b(vec![insert(2, "s", "m")]),
            b(vec![Op::FinishDownstream { id: 2 }]),
        ];
        assert!(Plan::new(&g, false).is_some());
        // An outbox delete before the insert of its row.
        let del = Op::DeleteOutbox {
            session: Arc::from("s"),
            seq: 5,
        };
        let ins = Op::InsertOutbox {
            session: Arc::from("s"),
            seq: 5,
            body: Arc::from("{}"),
        };
        assert!(Plan::new(&[b(vec![del.clone()]), b(vec![ins.clone()])], false).is_none());
        assert!(Plan::new(&[b(vec![ins]), b(vec![del])], false).is_some());
        // An upstream message carrying a new downstream row.
        let up = Op::Upstream {
            message_id: "u".into(),
            then: vec![insert(9, "s", "x")],
        };
        assert!(Plan::new(&[b(vec![up])], false).is_none());
    }

    #[test]
    fn the_last_update_of_a_row_and_of_an_outbox_key_wins() {
        let g = vec![b(vec![
            Op::RetryDownstream {
                id: 1,
                attempts: 1,
                not_before_ms: 10,
            },
            Op::RetryDownstream {
                id: 1,
                attempts: 2,
                not_before_ms: 20,
            },
            Op::InsertOutbox {
                session: Arc::from("s"),
                seq: 3,
                body: Arc::from("a"),
            },
            Op::InsertOutbox {
                session: Arc::from("s"),
                seq: 3,
                body: Arc::from("b"),
            },
        ])];
        let p = Plan::new(&g, false).unwrap();
        assert_eq!(p.updates.retry, vec![(1, 2, 20)]);
        assert_eq!(p.updates.outbox, vec![("s", 3, "b")]);
    }
}
