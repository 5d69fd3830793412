//! Dispatch (SPEC §4 "connections", "Nacks", "Lost connection"; §8.3): the
//! links the engine keeps open, how much each can take, which link gets
//! which message, and what each message's outcome means.
//!
//! * A link announces its capacity; the engine counts what it handed the
//!   link and has no outcome for yet, and sends a message only to a ready,
//!   not draining link below its capacity — the one with the fewest in
//!   flight.
//! * Outcomes: delivered → DOWNSTREAM_ACK; final → DOWNSTREAM_REJECT; retry
//!   → exponential backoff with jitter (honouring a delay FCM asked for),
//!   optionally backing off the whole target, up to `max_attempts`; resend →
//!   back to the front of the queue at once, not an attempt.
//! * A link that closes gives back everything it had in flight; unless it
//!   was draining (its replacement is open already) or gimmm is stopping,
//!   a replacement opens after the reconnect backoff.

use super::core::Core;
use super::queue::MsgState;
use super::{LinkInfo, Millis, Output};
use crate::backoff::Backoff;
use crate::link::{
    Failure, FailureClass, LinkCmd, LinkEvent, LinkId, MsgId, Outcome, Outgoing, SendResult,
};
use crate::metrics as m;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use store::Op;

/// A link that stayed ready this long resets the reconnect backoff when it
/// drops.
const STABLE_LINK: Millis = 10_000;

/// One link as the engine sees it.
#[derive(Debug)]
pub(crate) struct LinkState {
    ready: bool,
    draining: bool,
    capacity: usize,
    /// Handed to the link, no outcome yet.
    inflight: HashSet<MsgId, std::hash::BuildHasherDefault<super::queue::IdHasher>>,
    ready_at: Option<Millis>,
}

impl LinkState {
    fn room(&self) -> usize {
        if !self.ready || self.draining {
            return 0;
        }
        self.capacity.saturating_sub(self.inflight.len())
    }
}

/// The links.
#[derive(Debug)]
pub(crate) struct Links {
    map: BTreeMap<LinkId, LinkState>,
    next_id: LinkId,
    reconnect: Backoff,
    /// The last authentication failure, while credentials are refused.
    pub(crate) auth_error: Option<String>,
}

impl Links {
    pub(crate) fn new(_connections: usize, reconnect: Backoff) -> Links {
        Links {
            map: BTreeMap::new(),
            next_id: 1,
            reconnect,
            auth_error: None,
        }
    }

    /// The link to send the next message on.
    fn best(&self) -> Option<LinkId> {
        self.map
            .iter()
            .filter(|(_, l)| l.room() > 0)
            .min_by_key(|(_, l)| l.inflight.len())
            .map(|(id, _)| *id)
    }

    /// For the admin API.
    pub(crate) fn info(&self) -> Vec<LinkInfo> {
        self.map
            .iter()
            .map(|(id, l)| LinkInfo {
                id: *id,
                state: if l.draining {
                    "draining"
                } else if l.ready {
                    "ready"
                } else {
                    "connecting"
                },
                pending: l.inflight.len(),
                capacity: l.capacity,
            })
            .collect()
    }

    /// Links open or opening.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Messages handed to links without an outcome yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.map.values().map(|l| l.inflight.len()).sum()
    }
}

impl Core {
    pub(crate) fn spawn_link(&mut self, delay: Duration) {
        let id = self.links.next_id;
        self.links.next_id += 1;
        self.links.map.insert(
            id,
            LinkState {
                ready: false,
                draining: false,
                capacity: 0,
                inflight: HashSet::default(),
                ready_at: None,
            },
        );
        metrics::gauge!(m::LINKS).set(self.links.len() as f64);
        self.out.push(Output::SpawnLink { link: id, delay });
    }

    pub(crate) fn on_link(&mut self, ev: LinkEvent, now: Millis) {
        match ev {
            LinkEvent::Ready { link, capacity } => {
                if let Some(l) = self.links.map.get_mut(&link) {
                    l.ready = true;
                    l.capacity = capacity;
                    l.ready_at = Some(now);
                }
                self.links.auth_error = None;
                metrics::counter!(m::LINK_READY).increment(1);
            }
            LinkEvent::Capacity { link, capacity } => {
                if let Some(l) = self.links.map.get_mut(&link) {
                    l.capacity = capacity;
                    if capacity > 0 && l.ready {
                        self.links.auth_error = None;
                    }
                }
            }
            LinkEvent::ConnectFailed { error, auth, .. } => {
                metrics::counter!(m::LINK_CONNECT_FAILURES, "auth" => if auth { "true" } else { "false" })
                    .increment(1);
                if auth {
                    self.links.auth_error = Some(error);
                }
            }
            LinkEvent::AuthFailed { error, .. } => {
                self.links.auth_error = Some(error);
            }
            LinkEvent::Draining { link } => {
                metrics::counter!(m::LINK_DRAINS).increment(1);
                let replace = match self.links.map.get_mut(&link) {
                    Some(l) if !l.draining => {
                        l.draining = true;
                        true
                    }
                    _ => false,
                };
                if replace && !self.stopping() {
                    // FCM asks us to move: open the replacement at once and
                    // keep hearing this one until it closes.
                    self.spawn_link(Duration::ZERO);
                }
            }
            LinkEvent::Closed { link, reason } => self.on_link_closed(link, reason, now),
            LinkEvent::Outcome { link, outcome } => self.on_outcome(link, outcome, now),
            LinkEvent::Upstream {
                link,
                token,
                upstream,
                raw,
            } => self.on_upstream(link, token, upstream, raw),
            LinkEvent::Receipt {
                link,
                token,
                receipt,
                raw,
            } => self.on_receipt(link, token, receipt, raw),
        }
    }

    fn on_link_closed(&mut self, link: LinkId, reason: crate::link::CloseReason, now: Millis) {
        let Some(l) = self.links.map.remove(&link) else {
            return;
        };
        // Everything without an outcome goes back to the front, in order.
        let mut back: Vec<MsgId> = l.inflight.into_iter().collect();
        back.sort_unstable();
        if !back.is_empty() {
            self.meters.resent.increment(back.len() as u64);
        }
        for id in back.into_iter().rev() {
            self.queue.requeue_front(id);
        }
        if !l.draining && !self.stopping() {
            metrics::counter!(m::LINK_RECONNECTS).increment(1);
            // A link that lived a while earns a fresh backoff; one that
            // dies right after its handshake keeps backing off.
            if l.ready_at.is_some_and(|t| now - t >= STABLE_LINK) {
                self.links.reconnect.reset();
            }
            let delay = self.links.reconnect.next_delay_with(&mut self.rng);
            let peer = self.cfg.peer;
            tracing::info!(link, %reason, retry_in = ?delay, "{peer} connection lost; reconnecting");
            self.spawn_link(delay);
        }
        metrics::gauge!(m::LINKS).set(self.links.len() as f64);
    }

    /// Hands runnable messages to the links with room, one batch per link.
    pub(crate) fn pump_links(&mut self, now: Millis) {
        if self.queue.ready_len() == 0 {
            return;
        }
        let mut batches: Vec<(LinkId, Vec<Outgoing>)> = Vec::new();
        while let Some(link) = self.links.best() {
            let Some(id) = self.queue.pop_ready() else {
                break;
            };
            let Some(msg) = self.queue.get(id) else {
                continue;
            };
            if msg.expires_at_ms < now {
                self.finish_reject(
                    id,
                    "EXPIRED",
                    "time_to_live ran out before the message could be sent",
                    None,
                );
                continue;
            }
            if let Some(until) = self.queue.target_blocked(&msg.target, now) {
                self.queue.wait_until(id, until);
                continue;
            }
            let o = Outgoing {
                id,
                message_id: msg.message_id.clone(),
                target: msg.target.clone(),
                body: msg.body.clone(),
                accepted_at_ms: msg.accepted_at_ms,
            };
            if msg.receipt {
                // FCM may send the receipt on another connection than the
                // ack, so it can arrive first: know where it goes from now.
                let (mid, session) = (msg.message_id.clone(), msg.session.clone());
                self.inbound.expect_receipt(mid, session, id);
            }
            if let Some(msg) = self.queue.get_mut(id) {
                msg.state = MsgState::InFlight(link);
            }
            if let Some(l) = self.links.map.get_mut(&link) {
                l.inflight.insert(id);
            }
            match batches.iter_mut().find(|(l, _)| *l == link) {
                Some((_, v)) => v.push(o),
                None => batches.push((link, vec![o])),
            }
        }
        for (link, msgs) in batches {
            self.meters.sent.increment(msgs.len() as u64);
            self.out.push(Output::Link {
                link,
                cmd: LinkCmd::Send(msgs),
            });
        }
    }

    fn on_outcome(&mut self, link: LinkId, outcome: Outcome, now: Millis) {
        let id = outcome.id;
        let ours = self
            .links
            .map
            .get_mut(&link)
            .is_some_and(|l| l.inflight.remove(&id));
        let in_flight_here = self
            .queue
            .get(id)
            .is_some_and(|m| m.state == MsgState::InFlight(link));
        if !ours || !in_flight_here {
            tracing::debug!(link, id, "outcome for a message not in flight on this link");
            return;
        }
        match outcome.result {
            SendResult::Delivered { raw } => self.finish_ack(id, &raw),
            SendResult::Failed(f) => self.on_failure(id, f, now),
        }
    }

    fn on_failure(&mut self, id: MsgId, f: Failure, now: Millis) {
        match f.class {
            FailureClass::Final => self.finish_reject(id, &f.code, &f.detail, f.http.as_ref()),
            FailureClass::Resend => {
                self.meters.resent.increment(1);
                self.queue.requeue_front(id);
            }
            FailureClass::Retry {
                after,
                target_backoff,
            } => self.schedule_retry(id, &f, after, target_backoff, now),
        }
    }

    fn schedule_retry(
        &mut self,
        id: MsgId,
        f: &Failure,
        after: Option<Duration>,
        target_backoff: bool,
        now: Millis,
    ) {
        let max_attempts = self.cfg.retry.max_attempts;
        let Some(msg) = self.queue.get_mut(id) else {
            return;
        };
        msg.attempts += 1;
        let attempts = msg.attempts;
        if attempts >= max_attempts {
            let d = format!(
                "gave up after {attempts} attempts; last error {}: {}",
                f.code, f.detail
            );
            self.finish_reject(id, "MAX_RETRIES", &d, f.http.as_ref());
            return;
        }
        let mut delay = self.retry.delay_with(attempts - 1, &mut self.rng);
        if let Some(a) = after {
            delay = delay.max(a);
        }
        let at = now + delay.as_millis() as Millis;
        if target_backoff {
            // Back off the whole target, not only this message.
            let target = msg.target.clone();
            self.queue.backoff_target(&target, at);
        }
        self.meters.retries.increment(1);
        self.queue.wait_until(id, at);
        self.dur.write(Op::RetryDownstream {
            id,
            attempts,
            not_before_ms: at,
        });
    }
}
