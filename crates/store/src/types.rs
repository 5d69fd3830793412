//! What crosses the store interface: writes, commit reports and the rows
//! read back, as named structs (no tuples).

use std::sync::Arc;
use std::time::Duration;

/// Milliseconds since the Unix epoch (wall clock; used for stored deadlines).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One write. Each is idempotent, so a batch can be retried after a failure.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store a new downstream message. Ignored (and reported as duplicate)
    /// when the session already has this message id.
    InsertDownstream(NewDownstream),
    /// Record a failed attempt and when the next may be made.
    RetryDownstream {
        /// Row id.
        id: u64,
        /// Attempts made so far.
        attempts: u32,
        /// Unix ms before which it must not be sent.
        not_before_ms: i64,
    },
    /// The message has its final result: keep only its id (for idempotency).
    FinishDownstream {
        /// Row id.
        id: u64,
    },
    /// A receipt arrived for this message: no more receipt routing needed.
    ReceiptDone {
        /// Row id.
        id: u64,
    },
    /// A sequenced message for a BAL session.
    InsertOutbox {
        /// Sequence id.
        seq: u64,
        /// Session.
        session: Arc<str>,
        /// The full JSON line (without newline), shared with the sender.
        body: Arc<str>,
    },
    /// The BAL acknowledged a sequenced message.
    DeleteOutbox {
        /// Session the message was for.
        session: Arc<str>,
        /// Sequence id.
        seq: u64,
    },
    /// An upstream message id was delivered (for deduplication of resends).
    UpstreamSeen {
        /// The upstream message id.
        message_id: String,
    },
    /// An upstream message or receipt, deduplicated here: its id is
    /// recorded as seen and, only when it was not seen before, `then` is
    /// applied (the sequenced line for a BAL, an unroutable record, …).
    /// The sequence ids of outbox rows skipped that way are reported in
    /// [`Committed::repeated`].
    Upstream {
        /// The upstream message id (FCM's, or the ingress key).
        message_id: String,
        /// Writes for a first delivery.
        then: Vec<Op>,
    },
    /// An upstream message whose category no session has.
    Unroutable {
        /// The category.
        category: String,
        /// The upstream JSON.
        body: String,
    },
}

/// A downstream message to store.
#[derive(Debug, Clone)]
pub struct NewDownstream {
    /// Row id, chosen by the caller (increasing).
    pub id: u64,
    /// BAL session.
    pub session: Arc<str>,
    /// Message id (given or generated).
    pub message_id: String,
    /// Optional ordering group.
    pub group_id: Option<String>,
    /// The FCM JSON to send.
    pub body: String,
    /// Unix ms when gimmm accepted it (the TTL counts from here).
    pub accepted_at_ms: i64,
    /// Unix ms after which it expires.
    pub expires_at_ms: i64,
    /// Whether a delivery receipt was requested.
    pub receipt: bool,
}

/// Writes that commit together (or, on failure, are retried together).
#[derive(Debug, Default)]
pub struct Batch {
    /// Caller's batch number, echoed in [`Committed`]; increasing.
    pub no: u64,
    /// The writes.
    pub ops: Vec<Op>,
}

/// The store's report for one batch: it is durable.
#[derive(Debug, Default)]
pub struct Committed {
    /// The batch number.
    pub no: u64,
    /// Ids of `InsertDownstream` ops that were duplicates (not inserted).
    pub duplicates: Vec<u64>,
    /// Sequence ids of outbox rows not written because their
    /// [`Op::Upstream`] had been seen before: not to be delivered.
    pub repeated: Vec<u64>,
    /// Ids of `InsertDownstream` ops that could not be stored (disk full,
    /// read-only …): they must not be reported as accepted.
    pub failed_inserts: Vec<u64>,
    /// The error that made inserts fail, for the BAL.
    pub error: Option<String>,
    /// How many batches shared the transaction.
    pub group_size: usize,
    /// How long the commit took (apply, commit and sync).
    pub commit_time: Duration,
}

/// A queued downstream message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRow {
    /// Row id.
    pub id: u64,
    /// Session.
    pub session: String,
    /// Message id.
    pub message_id: String,
    /// Ordering group.
    pub group_id: Option<String>,
    /// FCM JSON.
    pub body: String,
    /// Attempts made.
    pub attempts: u32,
    /// Unix ms before which not to send.
    pub not_before_ms: i64,
    /// Unix ms when it was accepted (0 when stored by a gimmm that did not
    /// record it).
    pub accepted_at_ms: i64,
    /// Unix ms expiry.
    pub expires_at_ms: i64,
    /// Receipt requested.
    pub receipt: bool,
}

/// A sequenced message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Sequence id.
    pub seq: u64,
    /// Session.
    pub session: String,
    /// JSON line.
    pub body: String,
}

/// Where a delivery receipt goes: the original message's session and row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptTarget {
    /// Session that sent the original message.
    pub session: String,
    /// Its row id.
    pub id: u64,
}

/// Row counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Downstream messages without a final result.
    pub queued: u64,
    /// Sequenced messages not yet ACKed by their BAL.
    pub outbox: u64,
    /// Unroutable upstream messages kept.
    pub unroutable: u64,
}

/// An upstream message for a category no session has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnroutableRow {
    /// The category it named.
    pub category: String,
    /// The upstream JSON.
    pub body: String,
}

/// Who writes a shared store (SPEC §12): the writer lease as the database
/// holds it and this node's part in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriterLease {
    /// This node's name.
    pub node_id: String,
    /// The epoch this node took the lease with.
    pub epoch: i64,
    /// The holder the database names now.
    pub holder: String,
    /// Its epoch (another than `epoch`: this node was fenced).
    pub holder_epoch: i64,
    /// Until the lease runs out without a renewal, in ms (negative: it
    /// has run out).
    pub expires_in_ms: i64,
    /// How long a renewal makes it last, in ms.
    pub lease_ms: u64,
}

/// What a store knows when it is opened.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Next sequence id to hand out.
    pub next_seq: u64,
    /// Next downstream row id.
    pub next_id: u64,
    /// Queued downstream messages.
    pub queued: u64,
    /// Sessions with sequenced messages waiting, and how many.
    pub outbox: Vec<(String, u64)>,
}

/// What a store read at open, before it is summed up as a [`Recovery`].
pub(crate) struct Recovered {
    /// `meta.next_seq`: above every sequence id handed out.
    pub(crate) meta_seq: i64,
    /// `meta.next_id`: above every row id handed out, pruned or not.
    pub(crate) meta_id: i64,
    /// The highest downstream row id there (0 when none).
    pub(crate) max_id: i64,
    /// Queued downstream messages.
    pub(crate) queued: i64,
    /// Per session with outbox rows: (session, rows, highest seq).
    pub(crate) outbox: Vec<(String, u64, i64)>,
}

impl Recovered {
    /// The recovery summary, and the highest row id and sequence id
    /// (everything a store holds at open is durable: its marks start there).
    pub(crate) fn summary(self) -> (Recovery, u64, u64) {
        let max_seq = self.outbox.iter().map(|(_, _, m)| *m).max().unwrap_or(0);
        let outbox = self.outbox.into_iter().map(|(s, n, _)| (s, n)).collect();
        let next_seq = self.meta_seq.max(max_seq + 1) as u64;
        (
            Recovery {
                next_seq,
                next_id: self.meta_id.max(self.max_id + 1) as u64,
                queued: self.queued as u64,
                outbox,
            },
            self.max_id as u64,
            next_seq.saturating_sub(1),
        )
    }
}

/// The highest downstream row id and sequence id a batch writes (for the
/// "only durable rows" rule of reads).
pub(crate) fn batch_marks(b: &Batch) -> (u64, u64) {
    fn walk(ops: &[Op], id: &mut u64, seq: &mut u64) {
        for op in ops {
            match op {
                Op::InsertDownstream(n) => *id = (*id).max(n.id),
                Op::InsertOutbox { seq: s, .. } => *seq = (*seq).max(*s),
                Op::Upstream { then, .. } => walk(then, id, seq),
                _ => {}
            }
        }
    }
    let (mut id, mut seq) = (0, 0);
    walk(&b.ops, &mut id, &mut seq);
    (id, seq)
}
