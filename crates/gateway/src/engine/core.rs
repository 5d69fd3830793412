//! The engine core: all message state, no I/O. Given the time and an
//! event ([`Input`]) it updates its state and says what to do
//! ([`Output`]): write a line to a BAL connection, send messages to a link,
//! start a link, submit a batch to the store, read a page back, look up a
//! receipt's target. Time is passed in ([`Millis`]), randomness comes from a
//! seeded generator, so tests drive it with a fake clock and scripted link
//! events, without sockets or SQLite (see `tests.rs`).
//!
//! The concerns live in their own files, each with its state and the
//! transitions of `Core` that belong to it:
//! [`super::queue`] (queued messages, groups, round robin, timers, TTL),
//! [`super::dispatch`] (links, capacity, outcomes, retries),
//! [`super::sessions`] (BAL outboxes, windows, paging),
//! [`super::durability`] (the open batch and the effects waiting for it),
//! [`super::inbound`] (upstream and receipt routing, dedupe).
//!
//! A turn: the driver feeds any number of inputs with [`Core::handle`],
//! then calls [`Core::end_turn`], which sends what is runnable to the links
//! and closes the batch; then it carries out [`Core::drain_outputs`].

use super::dispatch::Links;
use super::durability::{Accepted, Durability, Effect, OutboxLine};
use super::inbound::InboundState;
use super::queue::{Msg, MsgState, Queue};
use super::sessions::{Acked, Sessions};
use super::{ConnId, Incoming, Millis, Snapshot};
use crate::backoff::Backoff;
use crate::config::RetryConfig;
use crate::link::{LinkCmd, LinkEvent, LinkId, MsgId};
use crate::metrics::Meters;
use crate::session::out::Out;
use bal::proto::{line, BalError};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::Arc;
use std::time::Duration;
use store::{Batch, Committed, NewDownstream, Op, OutboxRow, QueuedRow, ReadResult, ReceiptTarget};

/// What the core needs to know.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Configured session ids.
    pub sessions: Vec<String>,
    /// Links to keep open.
    pub connections: usize,
    /// Sequenced messages in flight per BAL session.
    pub max_unacked: usize,
    /// Retry policy (nacks, reconnects).
    pub retry: RetryConfig,
    /// Downstream messages held in memory before paging.
    pub mem_messages: usize,
    /// Sequenced messages held in memory per session before paging.
    pub mem_outbox: usize,
    /// Said in every DOWNSTREAM_ACCEPTED of a message that asked for a
    /// delivery receipt the link cannot give.
    pub receipt_warning: Option<&'static str>,
    /// Seed of the jitter (fixed in tests).
    pub seed: u64,
    /// What the logs call the other end of the links ("CCS", "FCM").
    pub peer: &'static str,
}

/// An event for the core.
#[derive(Debug)]
pub enum Input {
    /// A connection logged on to a session (taking over an older one).
    Attach {
        /// Session.
        session: Arc<str>,
        /// Connection.
        conn: ConnId,
    },
    /// A connection went away.
    Detach {
        /// Session.
        session: Arc<str>,
        /// Connection.
        conn: ConnId,
    },
    /// A BAL ACKed a sequenced message.
    Ack {
        /// Session.
        session: Arc<str>,
        /// Connection it came on.
        conn: ConnId,
        /// Sequence id.
        seq: u64,
    },
    /// A DOWNSTREAM (validated, or rejected by validation).
    Downstream(Box<Incoming>),
    /// A link said something.
    Link(LinkEvent),
    /// The store committed a batch.
    Committed(Committed),
    /// A page of queued messages was read.
    QueuedPage {
        /// What was asked.
        limit: usize,
        /// The rows.
        rows: ReadResult<Vec<QueuedRow>>,
    },
    /// A page of a session's outbox was read.
    OutboxPage {
        /// Session.
        session: Arc<str>,
        /// What was asked.
        limit: usize,
        /// The rows.
        rows: ReadResult<Vec<OutboxRow>>,
    },
    /// A receipt's original message was looked up.
    ReceiptTarget {
        /// The lookup ([`Output::LookupReceipt`]).
        key: u64,
        /// The answer.
        target: ReadResult<Option<ReceiptTarget>>,
    },
    /// An upstream message posted to the ingress (SPEC §10), valid and
    /// authenticated; answered with [`Output::IngressReply`].
    Ingress {
        /// Echoed in the reply (the driver keeps the caller's channel).
        id: u64,
        /// The session named by its `category`.
        session: Arc<str>,
        /// The app's idempotency key.
        message_id: String,
        /// The upstream JSON the BAL receives as `fcm_data`.
        fcm_data: String,
    },
}

/// The engine's answer to an ingress post (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressResult {
    /// Durably stored; the BAL will receive it.
    Stored,
    /// This `message_id` was taken before for the category: nothing new is
    /// stored or delivered.
    Duplicate,
    /// The store cannot take writes: refused, not stored.
    StoreUnavailable,
    /// gimmm is shutting down: refused, not stored.
    ShuttingDown,
    /// No session has this category (the ingress checks before asking).
    UnknownCategory,
}

/// What the driver does for the core.
#[derive(Debug)]
pub enum Output {
    /// Write to a BAL connection.
    Write {
        /// Connection.
        conn: ConnId,
        /// What.
        out: Out,
    },
    /// Start link `link` after `delay`.
    SpawnLink {
        /// Its id.
        link: LinkId,
        /// When to connect.
        delay: Duration,
    },
    /// Tell a link something.
    Link {
        /// Link.
        link: LinkId,
        /// What.
        cmd: LinkCmd,
    },
    /// Submit a batch to the store.
    Submit(Batch),
    /// Read queued messages with `id > after`.
    LoadQueued {
        /// Start after.
        after: u64,
        /// At most.
        limit: usize,
    },
    /// Read a session's outbox with `seq > after`.
    LoadOutbox {
        /// Session.
        session: Arc<str>,
        /// Start after.
        after: u64,
        /// At most.
        limit: usize,
    },
    /// Look up the session of a receipt's original message.
    LookupReceipt {
        /// Echoed in [`Input::ReceiptTarget`].
        key: u64,
        /// The original message id.
        message_id: String,
    },
    /// Answer an ingress post ([`Input::Ingress`]): after the commit of
    /// the batch that stored it, or at once when it was refused.
    IngressReply {
        /// The post's id.
        id: u64,
        /// What happened.
        result: IngressResult,
    },
    /// Something is broken beyond repair (the store broke its contract):
    /// stop.
    Fatal(String),
}

/// Most queued messages one read returns (see the outbox's page size).
const QUEUED_PAGE: usize = 4096;

/// A failed read is retried after this long.
pub(crate) const READ_RETRY: Millis = 1_000;

/// How often expired messages are swept while no link takes them.
const SWEEP_EVERY: Millis = 1_000;

/// The engine core.
pub struct Core {
    pub(crate) cfg: CoreConfig,
    pub(crate) queue: Queue,
    pub(crate) links: Links,
    pub(crate) sessions: Sessions,
    pub(crate) dur: Durability,
    pub(crate) inbound: InboundState,
    pub(crate) out: Vec<Output>,
    pub(crate) meters: Meters,
    pub(crate) retry: Backoff,
    pub(crate) rng: StdRng,
    next_seq: u64,
    next_id: u64,
    /// The time of the event being handled (set at every entry point).
    pub(crate) now: Millis,
    next_sweep: Millis,
    store_degraded: bool,
    stopping: bool,
    started: bool,
}

impl Core {
    /// A core on what the store recovered.
    pub fn new(cfg: CoreConfig, recovery: &store::Recovery, now: Millis) -> Core {
        let retry = Backoff::new(
            Duration::from_millis(cfg.retry.initial_ms),
            Duration::from_millis(cfg.retry.max_ms),
        );
        Core {
            queue: Queue::new(recovery.queued > 0, cfg.mem_messages),
            links: Links::new(cfg.connections, retry.clone()),
            sessions: Sessions::new(
                &cfg.sessions,
                &recovery.outbox,
                cfg.max_unacked,
                cfg.mem_outbox,
            ),
            dur: Durability::default(),
            inbound: InboundState::default(),
            out: Vec::new(),
            meters: Meters::new(),
            retry,
            rng: StdRng::seed_from_u64(cfg.seed),
            next_seq: recovery.next_seq.max(1),
            next_id: recovery.next_id.max(1),
            now,
            next_sweep: now + SWEEP_EVERY,
            store_degraded: false,
            stopping: false,
            started: false,
            cfg,
        }
    }

    /// Opens the links and starts reading the backlog.
    pub fn start(&mut self, now: Millis) {
        self.now = now;
        if self.started {
            return;
        }
        self.started = true;
        for _ in 0..self.cfg.connections {
            self.spawn_link(Duration::ZERO);
        }
        self.page_in(now);
    }

    /// What to do, since the last call.
    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, Output> {
        self.out.drain(..)
    }

    /// Moves what to do into `buf` (empty), keeping both allocations.
    pub fn swap_outputs(&mut self, buf: &mut Vec<Output>) {
        debug_assert!(buf.is_empty());
        std::mem::swap(&mut self.out, buf);
    }

    /// Batches submitted and not yet committed (the driver holds BAL
    /// commands back while this is high).
    pub fn awaiting(&self) -> usize {
        self.dur.awaiting()
    }

    /// The store cannot take writes: refuse new messages at once.
    pub fn set_store_degraded(&mut self, degraded: bool) {
        self.store_degraded = degraded;
    }

    /// True while new messages are refused because the store cannot take
    /// writes.
    pub(crate) fn store_degraded(&self) -> bool {
        self.store_degraded
    }

    /// When [`Core::tick`] must run next.
    pub fn next_deadline(&self) -> Millis {
        let mut d = self.next_sweep;
        if let Some(t) = self.dur.deadline() {
            d = d.min(t);
        }
        if let Some(t) = self.queue.next_timer() {
            d = d.min(t);
        }
        d
    }

    /// One event.
    pub fn handle(&mut self, now: Millis, input: Input) {
        self.now = now;
        match input {
            Input::Attach { session, conn } => self.on_attach(session, conn, now),
            Input::Detach { session, conn } => {
                if self.sessions.detach(&session, conn) {
                    tracing::debug!(%session, conn, "BAL disconnected");
                }
                self.session_gauge();
            }
            Input::Ack { session, conn, seq } => self.on_ack(session, conn, seq, now),
            Input::Downstream(inc) => self.on_downstream(*inc, now),
            Input::Link(ev) => self.on_link(ev, now),
            Input::Committed(c) => self.on_commit(c, now),
            Input::QueuedPage { limit, rows } => self.on_queued_page(limit, rows, now),
            Input::OutboxPage {
                session,
                limit,
                rows,
            } => {
                match rows {
                    Ok(rows) => self.sessions.page_loaded(&session, rows, limit),
                    Err(e) => {
                        tracing::error!(error = %e, %session, "cannot read outbox");
                        self.sessions.page_failed(&session, now + READ_RETRY);
                    }
                }
                self.pump_session(&session, now);
            }
            Input::ReceiptTarget { key, target } => self.on_receipt_target(key, target, now),
            Input::Ingress {
                id,
                session,
                message_id,
                fcm_data,
            } => self.on_ingress(id, session, message_id, fcm_data),
        }
    }

    /// Timers: retries and backoffs that are due, lazy writes, TTL sweep.
    pub fn tick(&mut self, now: Millis) {
        self.now = now;
        self.queue.due(now);
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.sweep_expired(now);
            // A failed page read is retried here.
            self.page_in(now);
            for s in self.sessions.ids() {
                self.pump_session(&s, now);
            }
        }
    }

    /// Ends a turn: runnable messages go to the links, the batch closes.
    pub fn end_turn(&mut self, now: Millis) {
        self.now = now;
        if !self.stopping {
            self.pump_links(now);
            self.page_in(now);
        }
        // While stopping nothing waits for company: every write goes out.
        self.flush(now, self.stopping);
    }

    /// Shutdown (SPEC §11): sends nothing new to FCM, takes no new
    /// DOWNSTREAM (answered SHUTTING_DOWN), and commits what is pending;
    /// outcomes of what is in flight are still handled.
    pub fn begin_shutdown(&mut self, now: Millis) {
        self.now = now;
        self.stopping = true;
        self.flush(now, true);
    }

    /// True once [`Core::begin_shutdown`] ran.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Messages handed to links without an outcome yet.
    pub fn in_flight(&self) -> usize {
        self.links.in_flight()
    }

    /// True when a shutdown has nothing left to wait for: no answer from
    /// FCM outstanding, every batch committed, every result written to the
    /// BALs that are logged on.
    pub fn drained(&self) -> bool {
        self.links.in_flight() == 0 && self.dur.awaiting() == 0 && self.sessions.unwritten() == 0
    }

    /// Connections logged on (for shutdown).
    pub fn conns(&self) -> Vec<ConnId> {
        self.sessions.conns()
    }

    fn flush(&mut self, now: Millis, force: bool) {
        if let Some(b) = self.dur.flush(now, force) {
            self.out.push(Output::Submit(b));
        }
    }

    pub(crate) fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    pub(crate) fn write_to(&mut self, conn: ConnId, line: String) {
        self.out.push(Output::Write {
            conn,
            out: Out::Owned(line),
        });
    }

    /// Stores a sequenced line and queues it for its session once stored.
    pub(crate) fn queue_outbox(&mut self, session: Arc<str>, seq: u64, line: String) {
        let op = self.outbox_op(session, seq, line);
        self.dur.write(op);
    }

    /// The write of a sequenced line; its delivery waits for the commit
    /// (and is skipped if the store reports the seq as repeated).
    pub(crate) fn outbox_op(&mut self, session: Arc<str>, seq: u64, line: String) -> Op {
        let line: Arc<str> = Arc::from(line);
        self.dur.effect(Effect::Outbox(OutboxLine {
            session: session.clone(),
            seq,
            line: line.clone(),
        }));
        Op::InsertOutbox {
            seq,
            session,
            body: line,
        }
    }

    /// Writes what a session's window allows (see `Sessions::pump`).
    pub(crate) fn pump_session(&mut self, session: &Arc<str>, now: Millis) {
        let n = self.sessions.pump(session, now, &mut self.out);
        if n > 0 {
            self.meters.bal_sent.increment(n);
        }
    }

    fn session_gauge(&self) {
        metrics::gauge!(crate::metrics::BAL_SESSIONS_CONNECTED)
            .set(self.sessions.connected() as f64);
    }

    // ----- BAL side -------------------------------------------------------

    fn on_attach(&mut self, session: Arc<str>, conn: ConnId, now: Millis) {
        if let Some(old) = self.sessions.attach(&session, conn) {
            if old != conn {
                tracing::info!(%session, old, new = conn, "session taken over");
                self.out.push(Output::Write {
                    conn: old,
                    out: Out::Owned(line::error(
                        BalError::SessionTakenOver,
                        "another connection logged on to this session",
                    )),
                });
                self.out.push(Output::Write {
                    conn: old,
                    out: Out::Close,
                });
            }
        }
        self.write_to(conn, line::logon_response(&session, None));
        tracing::debug!(%session, conn, "BAL logged on");
        self.pump_session(&session, now);
        self.session_gauge();
    }

    fn on_ack(&mut self, session: Arc<str>, conn: ConnId, seq: u64, now: Millis) {
        match self.sessions.ack(&session, seq) {
            Acked::Known => {
                self.meters.bal_acked.increment(1);
                self.dur.write(Op::DeleteOutbox {
                    session: session.clone(),
                    seq,
                });
                self.pump_session(&session, now);
            }
            Acked::Unknown => {
                if self.sessions.conn(&session) == Some(conn) {
                    self.write_to(
                        conn,
                        line::error(
                            BalError::UnknownSequenceId,
                            &format!("sequence_id {seq} is not outstanding"),
                        ),
                    );
                }
            }
        }
    }

    fn on_downstream(&mut self, inc: Incoming, now: Millis) {
        self.meters.received.increment(1);
        let refused = if self.stopping {
            // Draining for a shutdown: take nothing new (SPEC §11).
            Some((BalError::ShuttingDown, "gimmm is shutting down"))
        } else if self.store_degraded {
            // The store cannot take writes: refuse at once (never ACCEPTED)
            // rather than queue the message behind the stuck write.
            Some((
                BalError::StoreUnavailable,
                "the store cannot take writes (disk full?)",
            ))
        } else {
            None
        };
        if let Some((code, why)) = refused {
            if self.sessions.conn(&inc.session) == Some(inc.conn) {
                let l = line::error(
                    code,
                    &format!("message {} not accepted: {why}", inc.message_id),
                );
                self.write_to(inc.conn, l);
            }
            return;
        }
        if let Some((code, desc)) = inc.rejected {
            // Never sent: the REJECT is the final result (sequenced, stored).
            self.reject_line(
                &inc.session,
                &inc.message_id,
                &inc.body,
                code.as_str(),
                &desc,
                None,
            );
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let expires_at_ms = now.saturating_add(inc.ttl_ms);
        let body: Arc<str> = Arc::from(inc.body.as_str());
        let warning = if inc.receipt {
            self.cfg.receipt_warning
        } else {
            None
        };
        self.dur.write(Op::InsertDownstream(NewDownstream {
            id,
            session: inc.session.clone(),
            message_id: inc.message_id.clone(),
            group_id: inc.group_id.clone(),
            body: inc.body,
            accepted_at_ms: now,
            expires_at_ms,
            receipt: inc.receipt,
        }));
        let msg = Msg {
            lane: self.queue.lane_of(&inc.session),
            session: inc.session,
            message_id: Arc::from(inc.message_id.as_str()),
            group: inc.group_id.map(|g| Arc::from(g.as_str())),
            body,
            attempts: 0,
            accepted_at_ms: now,
            expires_at_ms,
            receipt: inc.receipt,
            target: Arc::from(inc.target.as_str()),
            state: MsgState::Queued,
        };
        self.dur.effect(Effect::Accepted(Accepted {
            id,
            msg: Box::new(msg),
            conn: inc.conn,
            warning,
        }));
    }

    // ----- the store ------------------------------------------------------

    fn on_commit(&mut self, mut c: Committed, now: Millis) {
        // Looked up per effect below: sorted for binary search.
        c.duplicates.sort_unstable();
        c.failed_inserts.sort_unstable();
        c.repeated.sort_unstable();
        self.meters
            .commit_seconds
            .record(c.commit_time.as_secs_f64());
        self.meters.group_size.record(c.group_size as f64);
        if c.error.is_some() {
            self.meters.commit_errors.increment(1);
        }
        let effects = match self.dur.committed(c.no) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "store contract broken; stopping");
                self.out.push(Output::Fatal(e.to_string()));
                return;
            }
        };
        let mut touched: Vec<Arc<str>> = Vec::new();
        for e in effects {
            match e {
                Effect::Accepted(a) => {
                    let duplicate = c.duplicates.binary_search(&a.id).is_ok();
                    let refused = c.failed_inserts.binary_search(&a.id).is_ok();
                    let l = if refused {
                        line::error(
                            BalError::StoreUnavailable,
                            &format!(
                                "message {} not accepted: {}",
                                a.msg.message_id,
                                c.error.as_deref().unwrap_or("store failure")
                            ),
                        )
                    } else {
                        line::downstream_accepted(&a.msg.message_id, duplicate, a.warning)
                    };
                    if self.sessions.conn(&a.msg.session) == Some(a.conn) {
                        self.write_to(a.conn, l);
                    }
                    if !duplicate && !refused {
                        self.admit(a.id, *a.msg, now);
                    }
                }
                Effect::Outbox(o) => {
                    if c.repeated.binary_search(&o.seq).is_ok() {
                        // Seen before this process knew it: FCM resent it.
                        self.meters.upstream_resent.increment(1);
                        continue;
                    }
                    self.sessions.committed(&o.session, o.seq, o.line);
                    if !touched.contains(&o.session) {
                        touched.push(o.session);
                    }
                }
                Effect::AckUpstream(a) => self.out.push(Output::Link {
                    link: a.link,
                    cmd: LinkCmd::AckUpstream(a.token),
                }),
                Effect::IngressStored(i) => {
                    // The store skipped the outbox row of an id it had seen:
                    // a duplicate (its Outbox effect above was skipped too).
                    let duplicate = c.repeated.binary_search(&i.seq).is_ok();
                    self.out.push(Output::IngressReply {
                        id: i.id,
                        result: if duplicate {
                            IngressResult::Duplicate
                        } else {
                            IngressResult::Stored
                        },
                    });
                }
            }
        }
        for s in touched {
            self.pump_session(&s, now);
        }
    }

    /// A stored message enters the in-memory queue (unless the backlog is
    /// on disk).
    fn admit(&mut self, id: MsgId, msg: Msg, now: Millis) {
        let room = self.queue.len() < self.cfg.mem_messages;
        if let Some(msg) = self.queue.paging.admit(id, msg, room) {
            self.queue.insert(id, msg, None, now);
        }
    }

    /// Reads queued messages from disk while memory has room.
    pub(crate) fn page_in(&mut self, now: Millis) {
        if self.queue.len() > self.cfg.mem_messages / 2 {
            return;
        }
        let limit = (self.cfg.mem_messages - self.queue.len()).min(QUEUED_PAGE);
        if let Some(after) = self.queue.paging.start_read(now) {
            self.out.push(Output::LoadQueued { after, limit });
        }
    }

    fn on_queued_page(&mut self, limit: usize, rows: ReadResult<Vec<QueuedRow>>, now: Millis) {
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot page queued messages in");
                self.queue.paging.read_failed(now + READ_RETRY);
                return;
            }
        };
        let n = rows.len();
        let last = rows.last().map(|r| r.id);
        let before = self.queue.paging.max_loaded;
        for r in rows {
            if r.id <= before || self.queue.get(r.id).is_some() {
                continue;
            }
            let msg = self.msg_from_row(&r);
            let not_before = (r.not_before_ms > now).then_some(r.not_before_ms);
            self.queue.insert(r.id, msg, not_before, now);
        }
        // Messages accepted during the read that it did not return follow
        // it, while memory has room; the rest stays on disk.
        for (id, msg) in self.queue.paging.finish_read(n, limit, last) {
            if self.queue.len() >= self.cfg.mem_messages {
                self.queue.paging.spill_before(id);
                break;
            }
            self.queue.insert(id, msg, None, now);
        }
    }

    fn msg_from_row(&mut self, r: &QueuedRow) -> Msg {
        let target = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| {
                v.get("to")
                    .or_else(|| v.get("condition"))
                    .and_then(|t| t.as_str().map(str::to_string))
            })
            .unwrap_or_default();
        let session: Arc<str> = self
            .sessions
            .key(&r.session)
            .unwrap_or_else(|| Arc::from(r.session.as_str()));
        let accepted_at_ms = if r.accepted_at_ms > 0 {
            r.accepted_at_ms
        } else {
            accepted_from_expiry(&r.body, r.expires_at_ms)
        };
        Msg {
            lane: self.queue.lane_of(&session),
            session,
            message_id: Arc::from(r.message_id.as_str()),
            group: r.group_id.as_deref().map(Arc::from),
            body: Arc::from(r.body.as_str()),
            attempts: r.attempts,
            accepted_at_ms,
            expires_at_ms: r.expires_at_ms,
            receipt: r.receipt,
            target: Arc::from(target),
            state: MsgState::Queued,
        }
    }

    // ----- final results --------------------------------------------------

    pub(crate) fn finish_ack(&mut self, id: MsgId, raw: &str) {
        let Some(m) = self.remove_msg(id) else { return };
        self.meters.final_ack.increment(1);
        self.meters
            .final_seconds
            .record((self.now - m.accepted_at_ms).max(0) as f64 / 1000.0);
        tracing::debug!(session = %m.session, message_id = %m.message_id, "downstream acked");
        if m.receipt {
            self.inbound
                .expect_receipt(m.message_id.clone(), m.session.clone(), id);
        }
        let seq = self.take_seq();
        let l = line::downstream_ack(seq, &m.session, &m.message_id, raw);
        self.queue_outbox(m.session, seq, l);
    }

    pub(crate) fn finish_reject(
        &mut self,
        id: MsgId,
        code: &str,
        desc: &str,
        http: Option<&crate::link::HttpDetail>,
    ) {
        let Some(m) = self.remove_msg(id) else { return };
        self.meters
            .final_seconds
            .record((self.now - m.accepted_at_ms).max(0) as f64 / 1000.0);
        self.reject_line(&m.session, &m.message_id, &m.body, code, desc, http);
    }

    fn remove_msg(&mut self, id: MsgId) -> Option<Msg> {
        let m = self.queue.remove(id)?;
        self.dur.write(Op::FinishDownstream { id });
        Some(m)
    }

    fn reject_line(
        &mut self,
        session: &Arc<str>,
        message_id: &str,
        body: &str,
        code: &str,
        desc: &str,
        http: Option<&crate::link::HttpDetail>,
    ) {
        self.meters.final_reject.increment(1);
        metrics::counter!(crate::metrics::DOWNSTREAM_REJECTED, "code" => code.to_string())
            .increment(1);
        tracing::debug!(%session, %message_id, code, "downstream rejected");
        let seq = self.take_seq();
        let l = line::downstream_reject(
            seq,
            session,
            message_id,
            code,
            desc,
            http.map(|h| line::HttpFields {
                fcm_error: h.fcm_error.as_deref(),
                http_status: h.http_status,
            }),
            body,
        );
        self.queue_outbox(session.clone(), seq, l);
    }

    /// Rejects messages whose TTL ran out while they wait (no link, retry,
    /// group order).
    fn sweep_expired(&mut self, now: Millis) {
        for id in self.queue.expired(now) {
            self.finish_reject(
                id,
                "EXPIRED",
                "time_to_live ran out before the message could be sent",
                None,
            );
        }
    }

    /// A point-in-time view for `/readyz`, `/metrics` and the admin API.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            links: self.links.info(),
            sessions: self.sessions.info(&self.queue.per_session()),
            messages_in_memory: self.queue.len(),
            messages_spilled: self.queue.paging.spilled,
            auth_error: self.links.auth_error.clone(),
            unroutable: self.inbound.unroutable,
            store_degraded: self.store_degraded,
        }
    }
}

/// When a message stored without `accepted_at` (schema < 3) was accepted:
/// its expiry minus its TTL as gimmm computed it (at least one second).
fn accepted_from_expiry(body: &str, expires_at_ms: i64) -> i64 {
    let ttl = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("time_to_live").and_then(|t| t.as_u64()))
        .unwrap_or(fcm::MAX_TTL_SECS as u64);
    expires_at_ms - (ttl.saturating_mul(1000).max(1000)) as i64
}
