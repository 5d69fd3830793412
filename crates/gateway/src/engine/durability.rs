//! The durability rule (SPEC §3.2, §3.3, §4; store contract in the `store`
//! crate): every state change is a write ([`store::Op`]) in the batch of the
//! current turn; everything the outside world may rely on — a
//! DOWNSTREAM_ACCEPTED, a sequenced line for a BAL, an ack of an upstream
//! message to FCM, the 202 of an ingress post (§10) — is an [`Effect`]
//! that runs only once the store reports that batch committed.
//!
//! The store reports batches in submission order, exactly once; the engine
//! checks that contract on every report ([`Durability::committed`]) rather
//! than trusting it, because running the effects of the wrong batch would
//! break the promise to BALs.
//!
//! Writes nothing waits on (a BAL's ACK deleting its outbox row, retry
//! bookkeeping) ride along with the next batch that has effects instead of
//! costing a commit (and an fsync) of their own, for at most
//! [`LAZY_MAX_DELAY`] or [`LAZY_MAX_OPS`] writes. Losing them in a crash is
//! harmless: the BAL sees the sequenced line again (same sequence id), a
//! retry counts again.

use super::queue::Msg;
use super::{ConnId, Millis};
use crate::link::{LinkId, MsgId, UpstreamToken};
use std::collections::VecDeque;
use std::sync::Arc;
use store::{Batch, Op};

/// How long effect-less writes may wait for a batch with effects.
pub(crate) const LAZY_MAX_DELAY: Millis = 50;
/// How many effect-less writes may wait.
pub(crate) const LAZY_MAX_OPS: usize = 4096;

/// A new downstream message, told ACCEPTED once stored.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) id: MsgId,
    pub(crate) msg: Box<Msg>,
    pub(crate) conn: ConnId,
    /// Said in the ACCEPTED line (e.g. no receipts on this link).
    pub(crate) warning: Option<&'static str>,
}

/// A sequenced line, queued for its session once stored.
#[derive(Debug)]
pub(crate) struct OutboxLine {
    pub(crate) session: Arc<str>,
    pub(crate) seq: u64,
    pub(crate) line: Arc<str>,
}

/// An upstream message or receipt, acked to FCM once stored.
#[derive(Debug)]
pub(crate) struct AckUpstream {
    pub(crate) link: LinkId,
    pub(crate) token: UpstreamToken,
}

/// An ingress post (SPEC §10), answered once stored: 202, or 200
/// duplicate when the store reports its outbox `seq` as repeated.
#[derive(Debug)]
pub(crate) struct IngressStored {
    /// The post's id ([`super::Input::Ingress`]).
    pub(crate) id: u64,
    /// The sequence id its UPSTREAM line was given.
    pub(crate) seq: u64,
}

/// What runs after a batch is on disk.
#[derive(Debug)]
pub(crate) enum Effect {
    Accepted(Accepted),
    Outbox(OutboxLine),
    AckUpstream(AckUpstream),
    IngressStored(IngressStored),
}

/// A batch handed to the store, waiting for its report.
#[derive(Debug)]
struct Submitted {
    no: u64,
    effects: Vec<Effect>,
}

/// The store broke its contract: a report for a batch other than the
/// oldest one outstanding.
#[derive(Debug, thiserror::Error)]
#[error("store reported batch {got}, expected {expected:?}: commit reports out of order")]
pub(crate) struct OutOfOrder {
    pub(crate) got: u64,
    pub(crate) expected: Option<u64>,
}

/// The open batch and the batches waiting for their commit.
#[derive(Debug, Default)]
pub(crate) struct Durability {
    batch_no: u64,
    ops: Vec<Op>,
    effects: Vec<Effect>,
    awaiting: VecDeque<Submitted>,
    /// Since when `ops` holds writes without effects.
    lazy_since: Option<Millis>,
}

impl Durability {
    /// Adds a write to the open batch.
    pub(crate) fn write(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Adds an effect of the open batch.
    pub(crate) fn effect(&mut self, e: Effect) {
        self.effects.push(e);
    }

    /// Batches submitted and not yet reported.
    pub(crate) fn awaiting(&self) -> usize {
        self.awaiting.len()
    }

    /// When effect-less writes must go out at the latest.
    pub(crate) fn deadline(&self) -> Option<Millis> {
        self.lazy_since.map(|t| t + LAZY_MAX_DELAY)
    }

    /// Closes the open batch if it is due: it has effects, or its lazy
    /// writes waited long enough (or `force`).
    pub(crate) fn flush(&mut self, now: Millis, force: bool) -> Option<Batch> {
        if self.ops.is_empty() && self.effects.is_empty() {
            return None;
        }
        if !force && self.effects.is_empty() && self.ops.len() < LAZY_MAX_OPS {
            match self.lazy_since {
                None => {
                    self.lazy_since = Some(now);
                    return None;
                }
                Some(t) if now < t + LAZY_MAX_DELAY => return None,
                Some(_) => {}
            }
        }
        self.lazy_since = None;
        self.batch_no += 1;
        let cap = self.ops.len();
        let ops = std::mem::replace(&mut self.ops, Vec::with_capacity(cap));
        let cap = self.effects.len();
        let effects = std::mem::replace(&mut self.effects, Vec::with_capacity(cap));
        self.awaiting.push_back(Submitted {
            no: self.batch_no,
            effects,
        });
        Some(Batch {
            no: self.batch_no,
            ops,
        })
    }

    /// The store reported batch `no`: its effects, if it is the oldest
    /// outstanding one.
    pub(crate) fn committed(&mut self, no: u64) -> Result<Vec<Effect>, OutOfOrder> {
        match self.awaiting.front() {
            Some(s) if s.no == no => Ok(self
                .awaiting
                .pop_front()
                .map(|s| s.effects)
                .unwrap_or_default()),
            other => Err(OutOfOrder {
                got: no,
                expected: other.map(|s| s.no),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn del(seq: u64) -> Op {
        Op::DeleteOutbox {
            session: Arc::from("s"),
            seq,
        }
    }

    #[test]
    fn lazy_writes_wait_for_effects_or_time() {
        let mut d = Durability::default();
        d.write(del(1));
        assert!(d.flush(0, false).is_none(), "no effect: waits");
        assert_eq!(d.deadline(), Some(LAZY_MAX_DELAY));
        assert!(d.flush(LAZY_MAX_DELAY - 1, false).is_none());
        let b = d.flush(LAZY_MAX_DELAY, false).unwrap();
        assert_eq!((b.no, b.ops.len()), (1, 1));
        assert_eq!(d.deadline(), None);
        // An effect takes them along at once.
        d.write(del(2));
        assert!(d.flush(100, false).is_none());
        d.effect(Effect::AckUpstream(AckUpstream {
            link: 1,
            token: UpstreamToken {
                from: "d".into(),
                message_id: "u".into(),
            },
        }));
        let b = d.flush(101, false).unwrap();
        assert_eq!((b.no, b.ops.len()), (2, 1));
        assert_eq!(d.awaiting(), 2);
    }

    #[test]
    fn reports_must_come_in_order() {
        let mut d = Durability::default();
        for _ in 0..3 {
            d.write(del(1));
            d.flush(0, true).unwrap();
        }
        assert!(d.committed(1).is_ok());
        let e = d.committed(3).unwrap_err();
        assert_eq!((e.got, e.expected), (3, Some(2)));
        assert!(d.committed(2).is_ok());
        assert!(d.committed(3).is_ok());
        assert_eq!(d.committed(4).unwrap_err().expected, None);
    }
}
