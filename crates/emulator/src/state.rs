//! Shared state of one emulator: counters, connections, upstream messages in
//! flight. Everything here is synchronous; the I/O tasks in `conn` call in
//! with short critical sections (never across an `.await`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fcm::{ErrorCode, Target};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::faults::Faults;
use crate::stats::{ConnStats, MsgStats, Stats};

/// `from` of the receipts CCS sends (seed 000).
pub(crate) const RECEIPT_FROM: &str = "gcm.googleapis.com";
/// Control message of table 7.
pub(crate) const DRAINING_JSON: &str =
    r#"{"message_type":"control","control_type":"CONNECTION_DRAINING"}"#;

/// What the I/O tasks of one connection hand to its writer.
#[derive(Debug)]
pub(crate) enum Out {
    /// Bytes to write (one or more complete stanzas).
    Bytes(Vec<u8>),
    /// CONNECTION_DRAINING was just queued: start the grace / timeout timers.
    DrainStarted,
    /// Write `</stream:stream>` after what is queued and close.
    Close,
}

/// Settings fixed at start.
#[derive(Clone, Debug)]
pub(crate) struct Tunables {
    pub(crate) receipt_category: String,
    pub(crate) max_pending: u64,
    pub(crate) drain_grace: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) max_stanza_bytes: usize,
    pub(crate) upstream_ttl: u32,
}

/// The fault settings one read batch works with (read once per batch).
pub(crate) struct View {
    pub(crate) nack_fraction: f64,
    pub(crate) nack_code: ErrorCode,
    pub(crate) ack_delay: Duration,
    pub(crate) drain_after: Option<u64>,
    pub(crate) drop_after: Option<u64>,
    pub(crate) prefixed: bool,
}

/// Result of handling one stanza.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// Drop the connection abruptly now.
    Drop,
}

/// Answers produced from one read, written together.
#[derive(Default)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
    answers: Vec<Answer>,
    /// Downstream messages answered by this batch.
    pending: u64,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.answers.is_empty() && self.pending == 0
    }
}

struct Answer {
    id: Option<String>,
    kind: AnswerKind,
    receipt: Option<ReceiptReq>,
}

enum AnswerKind {
    Ack { delivered: bool },
    Nack(ErrorCode),
}

/// A delivery receipt to produce once the ack is out.
pub(crate) struct ReceiptReq {
    original_message_id: String,
    token: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutKind {
    Upstream,
    Receipt,
}

/// An upstream message or receipt CCS expects the app server to ack.
struct Outbound {
    seq: u64,
    json: String,
    kind: OutKind,
    /// Connection it was last written to; `None` = waiting for one.
    conn: Option<u64>,
    sends: u32,
}

/// The live part of an open connection.
struct Live {
    tx: mpsc::UnboundedSender<Out>,
    kill: CancellationToken,
    authenticated: bool,
    draining: bool,
    grace_done: bool,
    closing: bool,
    /// Upstream messages / receipts written on it and not acked.
    outstanding: u64,
    /// Dispatch sequence of the last upstream given to it (round robin).
    last_pick: u64,
}

#[derive(Default)]
struct Counters {
    downstream_received: u64,
    acks_sent: u64,
    nacks_sent: u64,
    delivered: u64,
    duplicates: u64,
    receipts_sent: u64,
    receipts_acked: u64,
    receipts_resent: u64,
    upstream_sent: u64,
    upstream_acked: u64,
    upstream_resent: u64,
    unknown_acks: u64,
    bad_acks: u64,
    ignored: u64,
    auth_failures: u64,
    drains_sent: u64,
    drops: u64,
    window_violations: u64,
}

#[derive(Default)]
pub(crate) struct State {
    msgs: HashMap<Box<str>, MsgStats>,
    nacks_by_code: BTreeMap<String, u64>,
    conns: Vec<ConnStats>,
    live: HashMap<u64, Live>,
    c: Counters,
    unregistered: HashSet<String>,
    canonical: HashMap<String, String>,
    outbound: HashMap<String, Outbound>,
    waiting: VecDeque<String>,
    next_seq: u64,
    next_pick: u64,
}

impl State {
    fn conn_mut(&mut self, id: u64) -> Option<&mut ConnStats> {
        let idx = usize::try_from(id).ok()?.checked_sub(1)?;
        self.conns.get_mut(idx)
    }

    fn count_nack(&mut self, code: &ErrorCode) {
        self.c.nacks_sent += 1;
        match self.nacks_by_code.get_mut(code.as_str()) {
            Some(n) => *n += 1,
            None => {
                self.nacks_by_code.insert(code.as_str().to_owned(), 1);
            }
        }
    }
}

/// Lock guard that wakes `wait_until` callers when it is released.
pub(crate) struct Guard<'a> {
    inner: Option<MutexGuard<'a, State>>,
    shared: &'a Shared,
}

impl Deref for Guard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        // The Option is only emptied in drop.
        match &self.inner {
            Some(g) => g,
            None => unreachable!("guard used after drop"),
        }
    }
}

impl DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        match &mut self.inner {
            Some(g) => g,
            None => unreachable!("guard used after drop"),
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // Read the waiter count while still holding the lock: a waiter that
        // registered after this point takes the lock later and sees our change.
        let wake = self.shared.waiters.load(Ordering::SeqCst) > 0;
        self.inner = None;
        if wake {
            self.shared.changed.notify_waiters();
        }
    }
}

/// Everything the tasks of one emulator share.
pub(crate) struct Shared {
    pub(crate) sender_id: String,
    pub(crate) server_key: String,
    pub(crate) tun: Tunables,
    pub(crate) faults: watch::Sender<Faults>,
    state: Mutex<State>,
    pub(crate) changed: Notify,
    pub(crate) waiters: AtomicUsize,
    receipts_tx: mpsc::UnboundedSender<(Instant, ReceiptReq)>,
    /// Cancelled at the very end: kills every task.
    pub(crate) root: CancellationToken,
    /// Cancelled first on shutdown: stops the listeners.
    pub(crate) stop_accept: CancellationToken,
    pub(crate) tracker: TaskTracker,
    id_prefix: String,
}

impl Shared {
    pub(crate) fn new(
        sender_id: String,
        server_key: String,
        tun: Tunables,
        faults: Faults,
    ) -> (Shared, mpsc::UnboundedReceiver<(Instant, ReceiptReq)>) {
        let (receipts_tx, receipts_rx) = mpsc::unbounded_channel();
        let root = CancellationToken::new();
        let shared = Shared {
            sender_id,
            server_key,
            tun,
            faults: watch::Sender::new(faults),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            waiters: AtomicUsize::new(0),
            receipts_tx,
            stop_accept: root.child_token(),
            root,
            tracker: TaskTracker::new(),
            id_prefix: format!("{:08x}", rand::random::<u32>()),
        };
        (shared, receipts_rx)
    }

    /// Lock for a change (wakes waiters on release).
    pub(crate) fn lock(&self) -> Guard<'_> {
        Guard {
            inner: Some(self.state.lock().unwrap_or_else(|e| e.into_inner())),
            shared: self,
        }
    }

    /// Lock for reading only.
    fn lock_ro(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fault settings for the next read batch.
    pub(crate) fn view(&self) -> View {
        let f = self.faults.borrow();
        View {
            nack_fraction: f.nack_fraction,
            nack_code: f.effective_nack_code(),
            ack_delay: f.ack_delay,
            drain_after: f.drain_after,
            drop_after: f.drop_after,
            prefixed: f.prefixed,
        }
    }

    fn prefixed(&self) -> bool {
        self.faults.borrow().prefixed
    }

    // ----------------------------------------------------------------
    // connection lifecycle

    /// A TCP connection was accepted.
    pub(crate) fn conn_opened(&self) -> (u64, mpsc::UnboundedReceiver<Out>, CancellationToken) {
        let (tx, rx) = mpsc::unbounded_channel();
        let kill = self.root.child_token();
        let mut st = self.lock();
        let id = st.conns.len() as u64 + 1;
        st.conns.push(ConnStats {
            id,
            open: true,
            ..ConnStats::default()
        });
        st.live.insert(
            id,
            Live {
                tx,
                kill: kill.clone(),
                authenticated: false,
                draining: false,
                grace_done: false,
                closing: false,
                outstanding: 0,
                last_pick: 0,
            },
        );
        (id, rx, kill)
    }

    /// SASL and bind done: the connection may carry upstream traffic.
    pub(crate) fn conn_ready(&self, id: u64) {
        let prefixed = self.prefixed();
        let mut st = self.lock();
        if let Some(l) = st.live.get_mut(&id) {
            l.authenticated = true;
        }
        if let Some(c) = st.conn_mut(id) {
            c.authenticated = true;
        }
        dispatch_waiting(&mut st, prefixed);
    }

    pub(crate) fn auth_failed(&self) {
        self.lock().c.auth_failures += 1;
    }

    /// The connection is gone: whatever upstream it had in flight is sent
    /// again elsewhere (as FCM does).
    pub(crate) fn conn_closed(&self, id: u64) {
        let prefixed = self.prefixed();
        let mut st = self.lock();
        st.live.remove(&id);
        if let Some(c) = st.conn_mut(id) {
            c.open = false;
        }
        let mut requeue: Vec<(u64, String)> = st
            .outbound
            .iter_mut()
            .filter(|(_, ob)| ob.conn == Some(id))
            .map(|(k, ob)| {
                ob.conn = None;
                (ob.seq, k.clone())
            })
            .collect();
        requeue.sort_unstable();
        for (_, k) in requeue.into_iter().rev() {
            st.waiting.push_front(k);
        }
        dispatch_waiting(&mut st, prefixed);
    }

    /// Queue bytes for a connection's writer (e.g. a stream error).
    pub(crate) fn send_bytes(&self, id: u64, bytes: Vec<u8>) {
        let st = self.lock_ro();
        if let Some(l) = st.live.get(&id) {
            let _ = l.tx.send(Out::Bytes(bytes));
        }
    }

    // ----------------------------------------------------------------
    // draining / dropping

    /// Send CONNECTION_DRAINING on a connection (once).
    pub(crate) fn drain(&self, id: u64) {
        let prefixed = self.prefixed();
        let mut st = self.lock();
        start_drain(&mut st, id, prefixed);
    }

    pub(crate) fn drain_all(&self) {
        let prefixed = self.prefixed();
        let mut st = self.lock();
        let ids: Vec<u64> = st.live.keys().copied().collect();
        for id in ids {
            start_drain(&mut st, id, prefixed);
        }
    }

    pub(crate) fn drop_all(&self) {
        let mut st = self.lock();
        let mut n = 0;
        for l in st.live.values() {
            if !l.kill.is_cancelled() {
                l.kill.cancel();
                n += 1;
            }
        }
        st.c.drops += n;
    }

    /// The grace period after CONNECTION_DRAINING is over.
    pub(crate) fn drain_grace_elapsed(&self, id: u64) {
        let mut st = self.lock();
        if let Some(l) = st.live.get_mut(&id) {
            l.grace_done = true;
        }
        maybe_close(&mut st, id);
    }

    /// A draining connection did not settle in time: close it anyway.
    pub(crate) fn drain_timed_out(&self, id: u64) {
        let mut st = self.lock();
        if let Some(l) = st.live.get_mut(&id) {
            if !l.closing {
                l.closing = true;
                let _ = l.tx.send(Out::Close);
            }
        }
    }

    /// Close every connection gracefully (`</stream:stream>`).
    pub(crate) fn close_all(&self) {
        let mut st = self.lock();
        for l in st.live.values_mut() {
            if !l.closing {
                l.closing = true;
                let _ = l.tx.send(Out::Close);
            }
        }
    }

    pub(crate) fn live_count(&self) -> usize {
        self.lock_ro().live.len()
    }

    // ----------------------------------------------------------------
    // inbound stanzas

    /// A `<message>` without a `gcm` payload, or an unknown `message_type`.
    pub(crate) fn ignored(&self) {
        self.lock().c.ignored += 1;
    }

    /// Handle the JSON of one `<gcm>` element received on connection `conn`.
    pub(crate) fn handle_gcm(
        &self,
        conn: u64,
        stanza_id: Option<&str>,
        json: &str,
        view: &View,
        batch: &mut Batch,
        scratch: &mut String,
    ) -> Flow {
        let value: Value = match serde_json::from_str(json) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) | Err(_) => {
                // Unparseable: a downstream message FCM answers with INVALID_JSON.
                let id = stanza_id.unwrap_or("");
                let mut st = self.lock();
                if let Some(flow) = self.receive(&mut st, conn, None, view) {
                    return flow;
                }
                drop(st);
                let answer = Answer {
                    id: None,
                    kind: AnswerKind::Nack(ErrorCode::InvalidJson),
                    receipt: None,
                };
                push_nack(
                    batch,
                    scratch,
                    None,
                    id,
                    &ErrorCode::InvalidJson,
                    "message is not a JSON object",
                    view.prefixed,
                );
                batch.answers.push(answer);
                batch.pending += 1;
                return Flow::Continue;
            }
        };
        match value.get("message_type") {
            None => {}
            Some(Value::String(t)) if t == "ack" => {
                self.handle_app_ack(&value, view, batch, scratch);
                return Flow::Continue;
            }
            Some(_) => {
                self.ignored();
                return Flow::Continue;
            }
        }
        self.handle_downstream(conn, value, view, batch, scratch)
    }

    /// Receive bookkeeping for one downstream message; `Some(Flow::Drop)`
    /// when the connection must be dropped now.
    fn receive(&self, st: &mut State, conn: u64, id: Option<&str>, view: &View) -> Option<Flow> {
        st.c.downstream_received += 1;
        let max_pending = self.tun.max_pending;
        let mut violation = false;
        let mut received = 0;
        if let Some(c) = st.conn_mut(conn) {
            c.received += 1;
            c.pending += 1;
            if c.pending > c.pending_high_water {
                c.pending_high_water = c.pending;
            }
            if c.pending > max_pending {
                c.window_violations += 1;
                violation = true;
            }
            received = c.received;
        }
        if violation {
            st.c.window_violations += 1;
        }
        if let Some(id) = id {
            let dup = match st.msgs.get_mut(id) {
                Some(m) => {
                    m.received += 1;
                    m.acked > 0
                }
                None => {
                    st.msgs.insert(
                        id.into(),
                        MsgStats {
                            received: 1,
                            ..MsgStats::default()
                        },
                    );
                    false
                }
            };
            if dup {
                st.c.duplicates += 1;
            }
        }
        if view.drop_after.is_some_and(|n| received >= n) {
            if let Some(l) = st.live.get(&conn) {
                if !l.kill.is_cancelled() {
                    l.kill.cancel();
                    st.c.drops += 1;
                }
            }
            return Some(Flow::Drop);
        }
        None
    }

    fn handle_downstream(
        &self,
        conn: u64,
        value: Value,
        view: &View,
        batch: &mut Batch,
        scratch: &mut String,
    ) -> Flow {
        let owned = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
        let (owned_id, owned_to) = (owned("message_id"), owned("to"));
        let raw_id = owned_id.as_deref();
        let raw_to = owned_to.as_deref();
        let validated = fcm::validate_downstream_owned(value);

        let mut st = self.lock();
        if let Some(flow) = self.receive(&mut st, conn, raw_id, view) {
            return flow;
        }
        let (draining, received) = {
            let draining = st.live.get(&conn).is_some_and(|l| l.draining);
            let received = st.conn_mut(conn).map_or(0, |c| c.received);
            (draining, received)
        };

        let mut registration_id: Option<String> = None;
        let mut receipt = None;
        let decision: Result<bool, (ErrorCode, Cow<'static, str>)> = if draining {
            Err((
                ErrorCode::ConnectionDraining,
                "connection is draining".into(),
            ))
        } else {
            match &validated {
                Err(rej) => Err((rej.code.clone(), rej.description.clone().into())),
                Ok(d) if d.message_id.as_deref().is_none_or(str::is_empty) => {
                    Err((ErrorCode::InvalidJson, "missing message_id".into()))
                }
                Ok(d) => {
                    let injected = view.nack_fraction > 0.0
                        && (view.nack_fraction >= 1.0
                            || rand::random::<f64>() < view.nack_fraction);
                    match d.target() {
                        None => Err((ErrorCode::InvalidJson, "missing target".into())),
                        Some(_) if injected => {
                            Err((view.nack_code.clone(), "injected fault".into()))
                        }
                        Some(Target::Token(t)) => {
                            if !fcm::token_is_well_formed(t) {
                                Err((
                                    ErrorCode::BadRegistration,
                                    "invalid registration token".into(),
                                ))
                            } else if t.starts_with("unregistered") || st.unregistered.contains(t) {
                                Err((ErrorCode::DeviceUnregistered, "device unregistered".into()))
                            } else {
                                let dry = d.dry_run == Some(true);
                                registration_id = st.canonical.get(t).cloned();
                                if !dry && d.delivery_receipt_requested == Some(true) {
                                    receipt = Some(ReceiptReq {
                                        original_message_id: d
                                            .message_id
                                            .clone()
                                            .unwrap_or_default(),
                                        token: registration_id
                                            .clone()
                                            .unwrap_or_else(|| t.to_owned()),
                                    });
                                }
                                Ok(!dry)
                            }
                        }
                        Some(Target::Topic(_)) | Some(Target::Condition(_)) => {
                            Ok(d.dry_run != Some(true))
                        }
                    }
                }
            }
        };
        if !draining && view.drain_after.is_some_and(|n| received >= n) {
            start_drain(&mut st, conn, view.prefixed);
        }
        drop(st);

        let id = raw_id.unwrap_or("");
        match decision {
            Ok(delivered) => {
                push_ack(
                    batch,
                    scratch,
                    raw_to,
                    id,
                    registration_id.as_deref(),
                    view.prefixed,
                );
                batch.answers.push(Answer {
                    id: owned_id,
                    kind: AnswerKind::Ack { delivered },
                    receipt,
                });
            }
            Err((code, desc)) => {
                push_nack(batch, scratch, raw_to, id, &code, &desc, view.prefixed);
                batch.answers.push(Answer {
                    id: owned_id,
                    kind: AnswerKind::Nack(code),
                    receipt: None,
                });
            }
        }
        batch.pending += 1;
        Flow::Continue
    }

    /// The app server's ack of an upstream message or receipt (table 6).
    fn handle_app_ack(&self, v: &Value, view: &View, batch: &mut Batch, scratch: &mut String) {
        let id = v.get("message_id").and_then(Value::as_str);
        let to = v.get("to").and_then(Value::as_str);
        match (id, to) {
            (Some(id), Some(to)) if !id.is_empty() && !to.is_empty() => {
                let mut st = self.lock();
                match st.outbound.remove(id) {
                    Some(ob) => {
                        match ob.kind {
                            OutKind::Upstream => st.c.upstream_acked += 1,
                            OutKind::Receipt => st.c.receipts_acked += 1,
                        }
                        if let Some(c) = ob.conn {
                            if let Some(l) = st.live.get_mut(&c) {
                                l.outstanding = l.outstanding.saturating_sub(1);
                            }
                            maybe_close(&mut st, c);
                        }
                    }
                    None => st.c.unknown_acks += 1,
                }
            }
            _ => {
                self.lock().c.bad_acks += 1;
                push_nack(
                    batch,
                    scratch,
                    to,
                    id.unwrap_or(""),
                    &ErrorCode::BadAck,
                    "ack needs \"to\" and \"message_id\"",
                    view.prefixed,
                );
                batch.answers.push(Answer {
                    id: None,
                    kind: AnswerKind::Nack(ErrorCode::BadAck),
                    receipt: None,
                });
            }
        }
    }

    /// Hand a batch of answers to the connection's writer and count them.
    /// If the connection is gone, the answers are lost (and not counted).
    pub(crate) fn commit(&self, conn: u64, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        let (receipt_delay, prefixed) = {
            let f = self.faults.borrow();
            (f.receipt_delay, f.prefixed)
        };
        let mut later = Vec::new();
        let mut st = self.lock();
        let sent = match st.live.get(&conn) {
            Some(l) if !l.closing && !l.kill.is_cancelled() => {
                let bytes = std::mem::take(&mut batch.bytes);
                l.tx.send(Out::Bytes(bytes)).is_ok()
            }
            _ => false,
        };
        if !sent {
            batch.bytes.clear();
            batch.answers.clear();
            batch.pending = 0;
            return;
        }
        if let Some(c) = st.conn_mut(conn) {
            c.pending = c.pending.saturating_sub(batch.pending);
        }
        batch.pending = 0;
        for a in batch.answers.drain(..) {
            match &a.kind {
                AnswerKind::Ack { delivered } => {
                    st.c.acks_sent += 1;
                    if *delivered {
                        st.c.delivered += 1;
                    }
                    if let Some(m) = a.id.as_deref().and_then(|id| st.msgs.get_mut(id)) {
                        m.acked += 1;
                        if *delivered {
                            m.delivered += 1;
                        }
                    }
                }
                AnswerKind::Nack(code) => {
                    st.count_nack(code);
                    if let Some(m) = a.id.as_deref().and_then(|id| st.msgs.get_mut(id)) {
                        m.nacked += 1;
                        m.last_error = Some(code.as_str().to_owned());
                    }
                }
            }
            if let Some(r) = a.receipt {
                if receipt_delay.is_zero() {
                    self.enqueue_receipt_locked(&mut st, r, prefixed);
                } else {
                    later.push(r);
                }
            }
        }
        maybe_close(&mut st, conn);
        drop(st);
        if !later.is_empty() {
            let due = Instant::now() + receipt_delay;
            for r in later {
                let _ = self.receipts_tx.send((due, r));
            }
        }
    }

    /// A receipt whose delay is over: send it (or queue it for a connection).
    pub(crate) fn enqueue_receipt(&self, r: ReceiptReq) {
        let prefixed = self.prefixed();
        let mut st = self.lock();
        self.enqueue_receipt_locked(&mut st, r, prefixed);
    }

    fn enqueue_receipt_locked(&self, st: &mut State, r: ReceiptReq, prefixed: bool) {
        let id = format!("dr2:{}", r.original_message_id);
        if st.outbound.contains_key(&id) {
            return; // the same receipt is already on its way
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .to_string();
        let json = serde_json::json!({
            "category": self.tun.receipt_category,
            "data": {
                "device_registration_id": r.token,
                "message_sent_timestamp": ts,
                "message_status": "MESSAGE_SENT_TO_DEVICE",
                "original_message_id": r.original_message_id,
            },
            "from": RECEIPT_FROM,
            "message_id": id,
            "message_type": "receipt",
            "time_to_live": 0,
        })
        .to_string();
        enqueue_outbound(st, id, json, OutKind::Receipt, prefixed);
    }

    // ----------------------------------------------------------------
    // public API helpers

    pub(crate) fn send_upstream(
        &self,
        from: &str,
        category: &str,
        data: Map<String, Value>,
    ) -> String {
        let prefixed = self.prefixed();
        let mut st = self.lock();
        st.next_seq += 1;
        let id = format!("up-{}-{}", self.id_prefix, st.next_seq);
        let json = serde_json::json!({
            "from": from,
            "category": category,
            "message_id": id,
            "data": data,
            "time_to_live": self.tun.upstream_ttl,
        })
        .to_string();
        enqueue_outbound(&mut st, id.clone(), json, OutKind::Upstream, prefixed);
        id
    }

    pub(crate) fn mark_unregistered(&self, token: &str) {
        self.lock().unregistered.insert(token.to_owned());
    }

    pub(crate) fn set_canonical(&self, token: &str, canonical: &str) {
        self.lock()
            .canonical
            .insert(token.to_owned(), canonical.to_owned());
    }

    pub(crate) fn set_faults(&self, f: Faults) {
        self.faults.send_replace(f);
        // Wake waiters: a fault change is a visible state change too.
        drop(self.lock());
    }

    /// Snapshot; `full = false` leaves `messages` empty (cheap).
    pub(crate) fn stats(&self, full: bool) -> Stats {
        let st = self.lock_ro();
        let c = &st.c;
        let upstream_unacked = st.outbound.len() as u64;
        Stats {
            messages: if full {
                st.msgs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
            } else {
                BTreeMap::new()
            },
            connections: st.conns.clone(),
            downstream_received: c.downstream_received,
            acks_sent: c.acks_sent,
            nacks_sent: c.nacks_sent,
            nacks_by_code: st.nacks_by_code.clone(),
            delivered: c.delivered,
            duplicates: c.duplicates,
            receipts_sent: c.receipts_sent,
            receipts_acked: c.receipts_acked,
            receipts_resent: c.receipts_resent,
            upstream_sent: c.upstream_sent,
            upstream_acked: c.upstream_acked,
            upstream_resent: c.upstream_resent,
            upstream_unacked,
            unknown_acks: c.unknown_acks,
            bad_acks: c.bad_acks,
            ignored: c.ignored,
            auth_failures: c.auth_failures,
            drains_sent: c.drains_sent,
            drops: c.drops,
            window_violations: c.window_violations,
        }
    }

    /// Forget per-message stats and zero every counter (connections and
    /// upstream in flight are kept).
    pub(crate) fn reset_stats(&self) {
        let mut st = self.lock();
        st.msgs = HashMap::new();
        st.nacks_by_code.clear();
        st.c = Counters::default();
        for c in &mut st.conns {
            c.received = 0;
            c.pending_high_water = c.pending;
            c.window_violations = 0;
            c.upstream_sent = 0;
        }
    }
}

// --------------------------------------------------------------------
// helpers working on a locked State

fn start_drain(st: &mut State, id: u64, prefixed: bool) {
    let Some(l) = st.live.get_mut(&id) else {
        return;
    };
    if l.draining || l.closing || !l.authenticated || l.kill.is_cancelled() {
        return;
    }
    l.draining = true;
    let mut bytes = Vec::with_capacity(128);
    append_stanza(&mut bytes, DRAINING_JSON, prefixed);
    let _ = l.tx.send(Out::Bytes(bytes));
    let _ = l.tx.send(Out::DrainStarted);
    st.c.drains_sent += 1;
    if let Some(c) = st.conn_mut(id) {
        c.draining = true;
    }
}

/// Close a draining connection once everything it carried is answered/acked
/// and the grace period is over.
fn maybe_close(st: &mut State, id: u64) {
    let pending = {
        let idx = usize::try_from(id).ok().and_then(|i| i.checked_sub(1));
        idx.and_then(|i| st.conns.get(i)).map_or(0, |c| c.pending)
    };
    if let Some(l) = st.live.get_mut(&id) {
        if l.draining && l.grace_done && !l.closing && l.outstanding == 0 && pending == 0 {
            l.closing = true;
            let _ = l.tx.send(Out::Close);
        }
    }
}

fn enqueue_outbound(st: &mut State, id: String, json: String, kind: OutKind, prefixed: bool) {
    st.next_seq += 1;
    let seq = st.next_seq;
    st.outbound.insert(
        id.clone(),
        Outbound {
            seq,
            json,
            kind,
            conn: None,
            sends: 0,
        },
    );
    st.waiting.push_back(id);
    dispatch_waiting(st, prefixed);
}

/// Write waiting upstream messages / receipts to ready connections (the one
/// with the fewest in flight, round robin among equals).
fn dispatch_waiting(st: &mut State, prefixed: bool) {
    let State {
        waiting,
        outbound,
        live,
        conns,
        c,
        next_pick,
        ..
    } = st;
    while let Some(id) = waiting.front() {
        let Some(ob) = outbound.get_mut(id) else {
            waiting.pop_front();
            continue;
        };
        if ob.conn.is_some() {
            waiting.pop_front();
            continue;
        }
        let pick = live
            .iter_mut()
            .filter(|(_, l)| l.authenticated && !l.draining && !l.closing && !l.kill.is_cancelled())
            .min_by_key(|(_, l)| (l.outstanding, l.last_pick));
        let Some((&conn_id, l)) = pick else {
            break;
        };
        let mut bytes = Vec::with_capacity(ob.json.len() + 64);
        append_stanza(&mut bytes, &ob.json, prefixed);
        if l.tx.send(Out::Bytes(bytes)).is_err() {
            // Writer gone: this connection is closing; never pick it again.
            l.closing = true;
            continue;
        }
        *next_pick += 1;
        l.last_pick = *next_pick;
        l.outstanding += 1;
        ob.conn = Some(conn_id);
        let resend = ob.sends > 0;
        ob.sends += 1;
        match (ob.kind, resend) {
            (OutKind::Upstream, false) => c.upstream_sent += 1,
            (OutKind::Upstream, true) => c.upstream_resent += 1,
            (OutKind::Receipt, false) => c.receipts_sent += 1,
            (OutKind::Receipt, true) => c.receipts_resent += 1,
        }
        if let Some(cs) = usize::try_from(conn_id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| conns.get_mut(i))
        {
            cs.upstream_sent += 1;
        }
        waiting.pop_front();
    }
}

// --------------------------------------------------------------------
// JSON / stanza formatting (hot path: no serde_json::Value, one buffer)

/// Append one `<message>` stanza carrying `json`.
pub(crate) fn append_stanza(out: &mut Vec<u8>, json: &str, prefixed: bool) {
    if prefixed {
        out.extend_from_slice(xmpp::writer::gcm_message_prefixed(None, json).as_bytes());
    } else {
        xmpp::writer::append_gcm_message(out, None, json);
    }
}

/// Append `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// `{"from":..,"message_id":..,"message_type":"ack"}` (table 3).
fn push_ack(
    batch: &mut Batch,
    scratch: &mut String,
    from: Option<&str>,
    id: &str,
    registration_id: Option<&str>,
    prefixed: bool,
) {
    scratch.clear();
    scratch.push('{');
    if let Some(from) = from {
        scratch.push_str("\"from\":");
        push_json_str(scratch, from);
        scratch.push(',');
    }
    scratch.push_str("\"message_id\":");
    push_json_str(scratch, id);
    if let Some(r) = registration_id {
        scratch.push_str(",\"registration_id\":");
        push_json_str(scratch, r);
    }
    scratch.push_str(",\"message_type\":\"ack\"}");
    append_stanza(&mut batch.bytes, scratch, prefixed);
}

/// `{"message_type":"nack","from":..,"message_id":..,"error":..,"error_description":..}`.
fn push_nack(
    batch: &mut Batch,
    scratch: &mut String,
    from: Option<&str>,
    id: &str,
    code: &ErrorCode,
    description: &str,
    prefixed: bool,
) {
    scratch.clear();
    scratch.push_str("{\"message_type\":\"nack\",");
    if let Some(from) = from {
        scratch.push_str("\"from\":");
        push_json_str(scratch, from);
        scratch.push(',');
    }
    scratch.push_str("\"message_id\":");
    push_json_str(scratch, id);
    scratch.push_str(",\"error\":");
    push_json_str(scratch, code.as_str());
    scratch.push_str(",\"error_description\":");
    push_json_str(scratch, description);
    scratch.push('}');
    append_stanza(&mut batch.bytes, scratch, prefixed);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn ack_and_nack_json_parse_back() {
        let mut batch = Batch::default();
        let mut scratch = String::new();
        push_ack(
            &mut batch,
            &mut scratch,
            Some("tok<1>"),
            "m&1",
            Some("new"),
            false,
        );
        let v: Value = serde_json::from_str(&scratch).unwrap();
        assert_eq!(v["from"], "tok<1>");
        assert_eq!(v["message_id"], "m&1");
        assert_eq!(v["registration_id"], "new");
        assert_eq!(v["message_type"], "ack");
        push_nack(
            &mut batch,
            &mut scratch,
            None,
            "m2",
            &ErrorCode::BadRegistration,
            "bad \"token\"",
            true,
        );
        let v: Value = serde_json::from_str(&scratch).unwrap();
        assert_eq!(v["message_type"], "nack");
        assert_eq!(v["error"], "BAD_REGISTRATION");
        assert_eq!(v["error_description"], "bad \"token\"");
        assert!(v.get("from").is_none());
        let text = String::from_utf8(batch.bytes).unwrap();
        assert!(text.contains("data:gcm"), "{text}");
    }
}
