//! Inbound routing (SPEC §3.3 "Routing", §4 upstream acks, §10 ingress):
//! upstream messages go to the session named by their `category`, delivery
//! receipts to the session that sent the original message; what no session
//! takes is stored as unroutable. Each is acked to FCM only after it is
//! stored. Upstream posted to the ingress takes the same path (the same
//! UPSTREAM line, deduplicated by the store under a key of its own) and is
//! answered to its HTTP client only after it is stored.
//!
//! Deduplication: FCM resends what was not acked when a connection closes.
//! Ids seen recently are recognised here without a write; older repeats
//! are caught by the store ([`store::Op::Upstream`] delivers only an id it
//! has not seen). Either way the repeat is acked again, after the original
//! is durable (its ack is an effect of the same or a later batch).
//!
//! Receipt routing: messages acked recently that asked for a receipt are
//! remembered in memory; for older ones the store is asked, off the engine
//! task. While that lookup runs the receipt is parked, and a resend of it
//! waits with it.

use super::core::{Core, IngressResult, Output};
use super::durability::{AckUpstream, Effect, IngressStored};
use crate::link::{LinkId, MsgId, UpstreamToken};
use crate::metrics as m;
use bal::proto::line;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use store::{Op, ReadResult, ReceiptTarget};

/// Upstream / receipt ids remembered to spot FCM's resends without a write.
const UPSTREAM_RECENT: usize = 16_384;

/// Acked messages remembered for receipt routing; beyond this the store
/// answers (it keeps every message that asked for a receipt).
const MAX_RECEIPT_MEMORY: usize = 100_000;

/// A receipt waiting for the store to say where its original message came
/// from.
#[derive(Debug)]
struct Parked {
    link: LinkId,
    token: UpstreamToken,
    receipt: fcm::Receipt,
    raw: String,
    /// Resends of this receipt that arrived meanwhile: acked with it.
    also_ack: Vec<(LinkId, UpstreamToken)>,
}

/// Where a routed receipt goes.
struct Route {
    session: Arc<str>,
    id: MsgId,
}

/// Routing and dedupe state.
#[derive(Debug)]
pub(crate) struct InboundState {
    recent: HashSet<String>,
    /// Acked messages waiting for their receipt, in two generations: new
    /// ones go to the young map; when it holds half the bound it becomes
    /// the old one and the previous old one is forgotten (the store still
    /// answers for those). So the oldest go first (the receipts of the
    /// newest messages are the likely next ones), and an entry whose
    /// receipt came is freed at once.
    receipts: ReceiptMemory,
    parked: HashMap<u64, Parked>,
    parked_ids: HashMap<String, u64>,
    next_key: u64,
    /// Upstream messages and receipts for no configured session so far.
    pub(crate) unroutable: u64,
    /// Its warning, rate-limited.
    unroutable_log: crate::lograte::LogLimit,
}

impl Default for InboundState {
    fn default() -> Self {
        InboundState {
            recent: HashSet::new(),
            receipts: ReceiptMemory::default(),
            parked: HashMap::new(),
            parked_ids: HashMap::new(),
            next_key: 0,
            unroutable: 0,
            unroutable_log: crate::lograte::LogLimit::new(crate::lograte::WARN_EVERY_MS),
        }
    }
}

impl InboundState {
    /// False when this id was seen recently (an FCM resend after a
    /// reconnect: ack it again, write nothing).
    fn first_time(&mut self, message_id: &str) -> bool {
        if self.recent.contains(message_id) {
            return false;
        }
        if self.recent.len() >= UPSTREAM_RECENT {
            self.recent.clear();
        }
        self.recent.insert(message_id.to_string());
        true
    }

    /// `message_id` (row `id` of `session`) was acked and asked for a
    /// receipt.
    pub(crate) fn expect_receipt(&mut self, message_id: Arc<str>, session: Arc<str>, id: MsgId) {
        self.receipts.insert(message_id, session, id);
    }
}

/// See [`InboundState::receipts`].
#[derive(Debug, Default)]
struct ReceiptMemory {
    young: HashMap<Arc<str>, (Arc<str>, MsgId)>,
    old: HashMap<Arc<str>, (Arc<str>, MsgId)>,
}

impl ReceiptMemory {
    fn insert(&mut self, message_id: Arc<str>, session: Arc<str>, id: MsgId) {
        if self.young.len() >= MAX_RECEIPT_MEMORY / 2 {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&message_id);
        self.young.insert(message_id, (session, id));
    }

    fn remove(&mut self, message_id: &str) -> Option<(Arc<str>, MsgId)> {
        self.young
            .remove(message_id)
            .or_else(|| self.old.remove(message_id))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

impl Core {
    fn ack_after_commit(&mut self, link: LinkId, token: UpstreamToken) {
        self.dur
            .effect(Effect::AckUpstream(AckUpstream { link, token }));
    }

    fn unroutable(&mut self, category: &str, raw: String) -> Op {
        // Devices can make this repeat: at most once per 10 s in the log;
        // the metric counts each.
        if let Some(more) = self.inbound.unroutable_log.allow(self.now) {
            tracing::warn!(%category, suppressed = more, "upstream message for an unknown category stored as unroutable");
        }
        metrics::counter!(m::UPSTREAM_UNROUTABLE).increment(1);
        self.inbound.unroutable += 1;
        Op::Unroutable {
            category: category.to_string(),
            body: raw,
        }
    }

    pub(crate) fn on_upstream(
        &mut self,
        link: LinkId,
        token: UpstreamToken,
        upstream: fcm::Upstream,
        raw: String,
    ) {
        self.meters.upstream.increment(1);
        if !self.inbound.first_time(&upstream.message_id) {
            self.meters.upstream_resent.increment(1);
            self.ack_after_commit(link, token);
            return;
        }
        let then = match self.sessions.key(&upstream.category) {
            Some(session) => {
                let seq = self.take_seq();
                let l = line::upstream(seq, &session, &raw);
                vec![self.outbox_op(session, seq, l)]
            }
            None => vec![self.unroutable(&upstream.category, raw)],
        };
        // Stored only if this id is new (the store decides: FCM resends
        // what was not acked, also across our restarts).
        self.dur.write(Op::Upstream {
            message_id: upstream.message_id,
            then,
        });
        self.ack_after_commit(link, token);
    }

    pub(crate) fn on_receipt(
        &mut self,
        link: LinkId,
        token: UpstreamToken,
        receipt: fcm::Receipt,
        raw: String,
    ) {
        self.meters.receipts.increment(1);
        if let Some(key) = self.inbound.parked_ids.get(&receipt.message_id) {
            if let Some(p) = self.inbound.parked.get_mut(key) {
                self.meters.upstream_resent.increment(1);
                p.also_ack.push((link, token));
                return;
            }
        }
        if !self.inbound.first_time(&receipt.message_id) {
            self.meters.upstream_resent.increment(1);
            self.ack_after_commit(link, token);
            return;
        }
        let orig = &receipt.data.original_message_id;
        if let Some((session, id)) = self.inbound.receipts.remove(orig.as_str()) {
            self.route_receipt(
                link,
                token,
                receipt,
                raw,
                Some(Route { session, id }),
                Vec::new(),
            );
            return;
        }
        self.inbound.next_key += 1;
        let key = self.inbound.next_key;
        self.out.push(Output::LookupReceipt {
            key,
            message_id: orig.clone(),
        });
        self.inbound
            .parked_ids
            .insert(receipt.message_id.clone(), key);
        self.inbound.parked.insert(
            key,
            Parked {
                link,
                token,
                receipt,
                raw,
                also_ack: Vec::new(),
            },
        );
    }

    pub(crate) fn on_receipt_target(
        &mut self,
        key: u64,
        target: ReadResult<Option<ReceiptTarget>>,
        _now: super::Millis,
    ) {
        let Some(p) = self.inbound.parked.remove(&key) else {
            return;
        };
        self.inbound.parked_ids.remove(&p.receipt.message_id);
        let route = match target {
            Ok(Some(t)) => Some(Route {
                session: self
                    .sessions
                    .key(&t.session)
                    .unwrap_or_else(|| Arc::from(t.session.as_str())),
                id: t.id,
            }),
            Ok(None) => None,
            Err(e) => {
                // Routed by its category instead; nothing is lost.
                tracing::warn!(error = %e, "cannot look up a receipt's message; routing it by category");
                None
            }
        };
        self.route_receipt(p.link, p.token, p.receipt, p.raw, route, p.also_ack);
    }

    fn route_receipt(
        &mut self,
        link: LinkId,
        token: UpstreamToken,
        receipt: fcm::Receipt,
        raw: String,
        route: Option<Route>,
        also_ack: Vec<(LinkId, UpstreamToken)>,
    ) {
        let mut then = Vec::with_capacity(2);
        let session = match route {
            Some(r) => {
                then.push(Op::ReceiptDone { id: r.id });
                Some(r.session)
            }
            None => receipt
                .category
                .as_deref()
                .and_then(|c| self.sessions.key(c)),
        };
        match session {
            Some(session) => {
                let seq = self.take_seq();
                let l = line::downstream_receipt(
                    seq,
                    &session,
                    &receipt.data.original_message_id,
                    &raw,
                );
                then.push(self.outbox_op(session, seq, l));
            }
            None => {
                let category = receipt.category.clone().unwrap_or_default();
                then.push(self.unroutable(&category, raw));
            }
        }
        self.dur.write(Op::Upstream {
            message_id: receipt.message_id,
            then,
        });
        self.ack_after_commit(link, token);
        for (l, t) in also_ack {
            self.ack_after_commit(l, t);
        }
    }
}

/// The dedupe key of an ingress post (SPEC §10): the app's `message_id`
/// namespaced by its category, so two apps' ids never collide with each
/// other, and prefixed, so they do not collide with FCM's upstream ids.
/// The category's length goes first: `a` + `b:c` and `a:b` + `c` differ.
pub(crate) fn ingress_key(category: &str, message_id: &str) -> String {
    format!("ingress:{}:{category}:{message_id}", category.len())
}

impl Core {
    /// An upstream message posted to the ingress (SPEC §10): stored like an
    /// XMPP upstream message (deduplicated by the store, the UPSTREAM line
    /// sequenced for its session) and answered only after the commit.
    pub(crate) fn on_ingress(
        &mut self,
        id: u64,
        session: Arc<str>,
        message_id: String,
        fcm_data: String,
    ) {
        let refused = if self.stopping() {
            Some(IngressResult::ShuttingDown)
        } else if self.store_degraded() {
            // As for DOWNSTREAMs: refused at once, never queued behind a
            // write that cannot commit.
            Some(IngressResult::StoreUnavailable)
        } else {
            None
        };
        let key = self.sessions.key(&session);
        let (session, result) = match (refused, key) {
            (Some(r), _) => (None, r),
            (None, None) => (None, IngressResult::UnknownCategory),
            (None, Some(s)) => (Some(s), IngressResult::Stored),
        };
        let Some(session) = session else {
            self.out.push(Output::IngressReply { id, result });
            return;
        };
        let seq = self.take_seq();
        let l = line::upstream(seq, &session, &fcm_data);
        let key = ingress_key(&session, &message_id);
        let then = vec![self.outbox_op(session, seq, l)];
        self.dur.write(Op::Upstream {
            message_id: key,
            then,
        });
        self.dur
            .effect(Effect::IngressStored(IngressStored { id, seq }));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(i: usize) -> Arc<str> {
        Arc::from(format!("m-{i}"))
    }

    /// The memory never holds more than its bound, forgets the oldest
    /// first, keeps the newest half at least, and frees an entry as soon
    /// as its receipt takes it.
    #[test]
    fn receipt_memory_is_bounded_and_forgets_the_oldest() {
        let mut m = ReceiptMemory::default();
        let s: Arc<str> = Arc::from("s");
        let n = 3 * MAX_RECEIPT_MEMORY + 7;
        for i in 0..n {
            m.insert(id(i), s.clone(), i as MsgId);
            assert!(m.len() <= MAX_RECEIPT_MEMORY);
        }
        for i in n - MAX_RECEIPT_MEMORY / 2..n {
            assert_eq!(m.remove(&id(i)).unwrap().1, i as MsgId);
        }
        assert!(m.remove(&id(0)).is_none(), "the oldest are forgotten");
        let before = m.len();
        let newest_old = n - MAX_RECEIPT_MEMORY / 2 - 1;
        assert!(m.remove(&id(newest_old)).is_some());
        assert_eq!(m.len(), before - 1);
        // The same id again replaces its entry.
        m.insert(id(1), s.clone(), 10);
        m.insert(id(1), s, 11);
        assert_eq!(m.remove(&id(1)).unwrap().1, 11);
        assert!(m.remove(&id(1)).is_none());
    }
}
