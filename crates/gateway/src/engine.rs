//! The engine: the single owner of message state.
//!
//! One task, driven by channels: BAL sessions send [`Cmd`]s, links send
//! [`LinkEvent`]s, the store reports [`Committed`] batches. The engine holds
//! the queues (ungrouped FIFO and per-group queues), the pending window of
//! every link, retry timers, target backoff, sequence numbers and the
//! per-session outboxes.
//!
//! Durability rule: every state change is written to the store as an [`Op`]
//! in the batch of the current loop turn; anything the outside world may
//! rely on — DOWNSTREAM_ACCEPTED, a sequenced message to a BAL, an ack of an
//! upstream message to FCM — is an [`Effect`] that runs only after that
//! batch is committed.
//!
//! Memory is bounded: at most `mem_messages` downstream messages and
//! `mem_outbox` sequenced messages per session are held; the rest stays on
//! disk and is paged in (by row id / sequence id) as the queues drain.

use crate::backoff::Backoff;
use crate::config::RetryConfig;
use crate::link::{self, LinkCmd, LinkEvent, LinkId, LinkParams};
use bal::proto::{line, BalError, ToBal};
use fcm::{ErrorCode, Inbound, RetryClass};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::Duration;
use store::{now_ms, Batch, Committed, NewDownstream, Op, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Identifies one BAL TCP connection.
pub type ConnId = u64;

/// Something written to a BAL connection.
#[derive(Debug, Clone)]
pub enum Out {
    /// One JSON line (without the newline), shared with the outbox.
    Line(Arc<str>),
    /// One JSON line (without the newline) sent once.
    Owned(String),
    /// Close the connection after what was queued.
    Close,
}

/// Where the engine and a BAL connection's reader queue lines for that
/// connection's writer. The queue is counted: the reader stops reading from
/// the socket while the BAL does not read what it is sent (TCP then pushes
/// back on the BAL), and the engine disconnects a BAL whose backlog still
/// grows past [`SLOW_CONSUMER_LINES`] — its results stay stored and are
/// redelivered when it logs on again.
#[derive(Debug, Clone)]
pub struct OutTx {
    tx: mpsc::UnboundedSender<Out>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    drained: Arc<tokio::sync::Notify>,
}

/// The writer's side of an [`OutTx`].
#[derive(Debug)]
pub struct OutRx {
    rx: mpsc::UnboundedReceiver<Out>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    drained: Arc<tokio::sync::Notify>,
}

/// Lines queued for one BAL beyond which its reader pauses.
pub const BACKPRESSURE_LINES: usize = 1024;
/// Lines queued for one BAL beyond which the engine disconnects it.
pub const SLOW_CONSUMER_LINES: usize = 16 * 1024;

/// A counted queue of lines for one BAL connection.
pub fn out_channel() -> (OutTx, OutRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drained = Arc::new(tokio::sync::Notify::new());
    (
        OutTx {
            tx,
            queued: queued.clone(),
            drained: drained.clone(),
        },
        OutRx {
            rx,
            queued,
            drained,
        },
    )
}

impl OutTx {
    /// Queues one item; fails when the writer is gone.
    pub fn send(&self, o: Out) -> Result<(), mpsc::error::SendError<Out>> {
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx.send(o)
    }

    /// Items queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the backlog is at most `limit`.
    pub async fn wait_below(&self, limit: usize) {
        while self.backlog() > limit {
            if self.tx.is_closed() {
                return;
            }
            self.drained.notified().await;
        }
    }
}

impl OutRx {
    /// The next item.
    pub async fn recv(&mut self) -> Option<Out> {
        let o = self.rx.recv().await;
        self.took(o.is_some());
        o
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<Out> {
        let o = self.rx.try_recv().ok();
        self.took(o.is_some());
        o
    }

    fn took(&self, some: bool) {
        if some {
            self.queued
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Tells a paused reader that the queue was written out.
    pub fn written(&self) {
        self.drained.notify_one();
    }
}

/// Hasher for the engine's own row ids (sequential integers, not chosen by
/// anyone outside): one multiplication instead of SipHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Metric handles resolved once (the hot path then only bumps atomics).
struct Meters {
    received: metrics::Counter,
    sent: metrics::Counter,
    final_ack: metrics::Counter,
    upstream: metrics::Counter,
    receipts: metrics::Counter,
    commit_seconds: metrics::Histogram,
    group_size: metrics::Histogram,
}

impl Meters {
    fn new() -> Meters {
        Meters {
            received: metrics::counter!("gimmm_downstream_received_total"),
            sent: metrics::counter!("gimmm_downstream_sent_total"),
            final_ack: metrics::counter!("gimmm_downstream_final_total", "state" => "ack"),
            upstream: metrics::counter!("gimmm_upstream_received_total"),
            receipts: metrics::counter!("gimmm_receipts_received_total"),
            commit_seconds: metrics::histogram!("gimmm_store_commit_seconds"),
            group_size: metrics::histogram!("gimmm_store_batch_group_size"),
        }
    }
}

/// A validated (or rejected) DOWNSTREAM from a BAL.
#[derive(Debug)]
pub struct Incoming {
    /// Session.
    pub session: Arc<str>,
    /// Connection it came on.
    pub conn: ConnId,
    /// Ordering group.
    pub group_id: Option<String>,
    /// Message id (given or generated).
    pub message_id: String,
    /// The FCM JSON (with `message_id`).
    pub body: String,
    /// Unix ms when it expires in gimmm's queue.
    pub expires_at_ms: i64,
    /// Delivery receipt requested.
    pub receipt: bool,
    /// `to` or `condition`, for rate backoff.
    pub target: String,
    /// Validation failure: (code, description). Not sent, rejected at once.
    pub rejected: Option<(ErrorCode, String)>,
}

/// Commands from BAL sessions and the admin API.
#[derive(Debug)]
pub enum Cmd {
    /// A connection logged on to a session (takes over an older one).
    Attach {
        /// Session.
        session: Arc<str>,
        /// Connection.
        conn: ConnId,
        /// Where to write.
        out: OutTx,
    },
    /// A connection went away.
    Detach {
        /// Session.
        session: Arc<str>,
        /// Connection.
        conn: ConnId,
    },
    /// A DOWNSTREAM.
    Downstream(Box<Incoming>),
    /// An ACK of a sequenced message.
    Ack {
        /// Session.
        session: Arc<str>,
        /// Connection.
        conn: ConnId,
        /// Sequence id.
        seq: u64,
    },
    /// State for the admin API.
    Snapshot(oneshot::Sender<Snapshot>),
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// Configured session ids.
    pub sessions: Vec<String>,
    /// Links to keep open.
    pub connections: usize,
    /// FCM window per link.
    pub max_pending: usize,
    /// Sequenced messages in flight per BAL session.
    pub max_unacked: usize,
    /// Retry policy.
    pub retry: RetryConfig,
    /// How links connect.
    pub link: LinkParams,
    /// Downstream messages held in memory before paging.
    pub mem_messages: usize,
    /// Sequenced messages held in memory per session before paging.
    pub mem_outbox: usize,
}

/// A point-in-time view for `/readyz`, `/metrics` and the admin API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Links.
    pub links: Vec<LinkInfo>,
    /// Sessions.
    pub sessions: Vec<SessionInfo>,
    /// Downstream messages held in memory (queued, waiting or in flight).
    pub messages_in_memory: usize,
    /// More queued messages are on disk only.
    pub messages_spilled: bool,
    /// Last authentication failure, if the credentials are being refused.
    pub auth_error: Option<String>,
    /// Upstream messages for unknown categories so far.
    pub unroutable: u64,
}

/// One link, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct LinkInfo {
    /// Id.
    pub id: LinkId,
    /// `connecting`, `ready` or `draining`.
    pub state: &'static str,
    /// Unacked downstream messages.
    pub pending: usize,
}

/// One session, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Session id.
    pub session_id: String,
    /// A BAL is logged on.
    pub connected: bool,
    /// Sequenced messages waiting in memory.
    pub queued: usize,
    /// Sequenced messages sent, not yet ACKed.
    pub unacked: usize,
    /// More sequenced messages are on disk only.
    pub spilled: bool,
}

/// What runs after a batch is on disk.
#[derive(Debug)]
enum Effect {
    Accepted {
        id: u64,
        msg: Box<Msg>,
        conn: ConnId,
    },
    Outbox {
        session: Arc<str>,
        seq: u64,
        line: Arc<str>,
    },
    AckFcm {
        link: LinkId,
        to: String,
        message_id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgState {
    Queued,
    InFlight(LinkId),
    Waiting,
}

#[derive(Debug)]
struct Msg {
    session: Arc<str>,
    message_id: Arc<str>,
    group: Option<Arc<str>>,
    body: Arc<str>,
    attempts: u32,
    expires_at_ms: i64,
    receipt: bool,
    target: Arc<str>,
    state: MsgState,
}

#[derive(Default)]
struct GroupQ {
    active: Option<u64>,
    waiting: VecDeque<u64>,
}

struct LinkState {
    tx: mpsc::UnboundedSender<LinkCmd>,
    ready: bool,
    draining: bool,
    /// Messages sent on this link and not answered (they are in `wire`).
    pending: usize,
    /// When it became ready.
    ready_at: Option<Instant>,
}

struct SessionState {
    conn: Option<(ConnId, OutTx)>,
    queue: VecDeque<(u64, Arc<str>)>,
    inflight: BTreeMap<u64, Arc<str>>,
    spilled: bool,
    max_loaded: u64,
}

impl SessionState {
    fn new() -> SessionState {
        SessionState {
            conn: None,
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            spilled: true, // whatever is on disk is loaded on first use
            max_loaded: 0,
        }
    }
}

/// Batches handed to the store and not yet committed beyond which the
/// engine stops taking BAL commands.
const MAX_AWAITING: usize = 64;

/// A link ready for this long resets the reconnect backoff when it drops.
const STABLE_LINK: Duration = Duration::from_secs(10);

/// Done messages remembered in memory for receipt routing; beyond this the
/// store answers (it keeps every message that asked for a receipt).
const MAX_RECEIPT_MEMORY: usize = 100_000;

/// How often expired messages are swept while no link takes them.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Upstream / receipt ids remembered in memory to spot FCM's resends
/// without touching the store.
const UPSTREAM_RECENT: usize = 16_384;

/// Writes nothing waits on (a BAL's ACK deleting its outbox row, retry
/// bookkeeping) join the next batch that has effects instead of costing a
/// commit (and an fsync) of their own — for at most this long...
const LAZY_MAX_DELAY: Duration = Duration::from_millis(50);
/// ...or this many writes. Losing them in a crash is harmless: the BAL sees
/// the sequenced message again (same sequence id), a retry counts again.
const LAZY_MAX_OPS: usize = 4096;

/// The engine. Build with [`Engine::new`], run with [`Engine::run`].
pub struct Engine {
    cfg: EngineConfig,
    store: Store,
    sessions: HashMap<Arc<str>, SessionState>,
    msgs: IdMap<Msg>,
    ready: VecDeque<u64>,
    groups: HashMap<(Arc<str>, Arc<str>), GroupQ>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    target_backoff: HashMap<Arc<str>, Instant>,
    links: BTreeMap<LinkId, LinkState>,
    next_link: LinkId,
    link_tx: mpsc::UnboundedSender<LinkEvent>,
    /// Messages on the wire by message id: (row id, link).
    wire: HashMap<Arc<str>, (u64, LinkId)>,
    collided: Vec<u64>,
    receipts: HashMap<String, (Arc<str>, u64)>,
    upstream_recent: HashSet<String>,
    next_seq: u64,
    next_id: u64,
    batch_no: u64,
    batch: Vec<Op>,
    effects: Vec<Effect>,
    /// Batches submitted and not yet on disk: (batch no, effects, highest
    /// sequence id and row id handed out when it was formed).
    awaiting: VecDeque<(u64, Vec<Effect>, u64, u64)>,
    /// Highest sequence id / downstream row id known to be on disk: paging
    /// reads stop there (a commit is visible a moment before it is durable).
    durable_seq: u64,
    durable_id: u64,
    /// Since when `batch` holds writes without effects (see [`LAZY_MAX_DELAY`]).
    lazy_since: Option<Instant>,
    meters: Meters,
    down_spilled: bool,
    down_max_loaded: u64,
    reconnect: Backoff,
    retry: Backoff,
    auth_error: Option<String>,
    unroutable: u64,
    shutdown: CancellationToken,
    next_sweep: Instant,
}

impl Engine {
    /// Builds the engine on an opened store (see [`store::Recovery`]).
    pub fn new(
        cfg: EngineConfig,
        store: Store,
        recovery: &store::Recovery,
        link_tx: mpsc::UnboundedSender<LinkEvent>,
        shutdown: CancellationToken,
    ) -> Engine {
        let mut sessions = HashMap::new();
        for s in &cfg.sessions {
            sessions.insert(Arc::from(s.as_str()), SessionState::new());
        }
        for (s, _) in &recovery.outbox {
            sessions
                .entry(Arc::from(s.as_str()))
                .or_insert_with(SessionState::new);
        }
        let retry = Backoff::new(
            Duration::from_millis(cfg.retry.initial_ms),
            Duration::from_millis(cfg.retry.max_ms),
        );
        Engine {
            reconnect: retry.clone(),
            retry,
            cfg,
            store,
            sessions,
            msgs: IdMap::default(),
            ready: VecDeque::new(),
            groups: HashMap::new(),
            timers: BinaryHeap::new(),
            target_backoff: HashMap::new(),
            links: BTreeMap::new(),
            next_link: 1,
            link_tx,
            wire: HashMap::new(),
            collided: Vec::new(),
            receipts: HashMap::new(),
            upstream_recent: HashSet::new(),
            next_seq: recovery.next_seq,
            next_id: recovery.next_id,
            batch_no: 0,
            batch: Vec::new(),
            effects: Vec::new(),
            awaiting: VecDeque::new(),
            durable_seq: recovery.next_seq.saturating_sub(1),
            durable_id: recovery.next_id.saturating_sub(1),
            lazy_since: None,
            meters: Meters::new(),
            down_spilled: recovery.queued > 0,
            down_max_loaded: 0,
            auth_error: None,
            unroutable: 0,
            shutdown,
            next_sweep: Instant::now() + SWEEP_EVERY,
        }
    }

    /// Runs until `shutdown` is cancelled, then drains: closes the links,
    /// commits what is pending and closes the BAL connections.
    pub async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut ctl: mpsc::Receiver<Cmd>,
        mut link_rx: mpsc::UnboundedReceiver<LinkEvent>,
        mut commit_rx: mpsc::UnboundedReceiver<Committed>,
    ) {
        self.page_in_messages();
        for _ in 0..self.cfg.connections {
            self.spawn_link(Duration::ZERO);
        }
        let shutdown = self.shutdown.clone();
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                Some(c) = commit_rx.recv() => {
                    self.on_commit(c);
                    while let Ok(c) = commit_rx.try_recv() { self.on_commit(c); }
                }
                Some(ev) = link_rx.recv() => {
                    self.on_link(ev);
                    for _ in 0..1024 {
                        match link_rx.try_recv() { Ok(ev) => self.on_link(ev), Err(_) => break }
                    }
                }
                // Admin snapshots have their own channel so /readyz answers
                // even while BAL commands are held back.
                Some(cmd) = ctl.recv() => self.on_cmd(cmd),
                // Backpressure: while the store has many batches to commit
                // (a slow or stuck disk), stop taking BAL commands; the BAL
                // tasks then stop reading their sockets.
                Some(cmd) = cmds.recv(), if self.awaiting.len() < MAX_AWAITING || self.store.is_degraded() => {
                    self.on_cmd(cmd);
                    for _ in 0..1024 {
                        match cmds.try_recv() { Ok(c) => self.on_cmd(c), Err(_) => break }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => self.on_timer(),
                _ = shutdown.cancelled() => break,
            }
            self.pump_links();
            self.flush_batch();
        }
        // Drain: links close their streams themselves on the shutdown token.
        // Commit what is pending so every promise made is kept.
        self.flush_batch_now();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.awaiting.is_empty() {
            match tokio::time::timeout_at(deadline, commit_rx.recv()).await {
                Ok(Some(c)) => self.on_commit(c),
                _ => break,
            }
        }
        for s in self.sessions.values() {
            if let Some((_, out)) = &s.conn {
                let _ = out.send(Out::Close);
            }
        }
        // Let the links send </stream:stream> and see CCS's answer.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.links.is_empty() {
            match tokio::time::timeout_at(deadline, link_rx.recv()).await {
                Ok(Some(LinkEvent::Closed { link, .. })) => {
                    self.links.remove(&link);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        tracing::info!("engine stopped");
    }

    fn next_deadline(&self) -> Instant {
        let mut d = self.next_sweep;
        if let Some(t) = self.lazy_since {
            d = d.min(t + LAZY_MAX_DELAY);
        }
        if let Some(Reverse((t, _))) = self.timers.peek() {
            d = d.min(*t);
        }
        d
    }

    // ----- links -------------------------------------------------------

    fn spawn_link(&mut self, delay: Duration) {
        let id = self.next_link;
        self.next_link += 1;
        let tx = link::spawn(
            id,
            self.cfg.link.clone(),
            delay,
            self.link_tx.clone(),
            self.shutdown.clone(),
        );
        self.links.insert(
            id,
            LinkState {
                tx,
                ready: false,
                draining: false,
                pending: 0,
                ready_at: None,
            },
        );
        metrics::gauge!("gimmm_links").set(self.links.len() as f64);
    }

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Connecting(_) => {}
            LinkEvent::Ready(id) => {
                if let Some(l) = self.links.get_mut(&id) {
                    l.ready = true;
                    l.ready_at = Some(Instant::now());
                }
                self.auth_error = None;
                metrics::counter!("gimmm_link_ready_total").increment(1);
            }
            LinkEvent::ConnectFailed { error, auth, .. } => {
                metrics::counter!("gimmm_link_connect_failures_total", "auth" => if auth { "true" } else { "false" }).increment(1);
                if auth {
                    self.auth_error = Some(error);
                }
            }
            LinkEvent::Draining(id) => {
                metrics::counter!("gimmm_link_drains_total").increment(1);
                let replace = match self.links.get_mut(&id) {
                    Some(l) if !l.draining => {
                        l.draining = true;
                        true
                    }
                    _ => false,
                };
                if replace && !self.shutdown.is_cancelled() {
                    // FCM asks us to move: open the replacement at once and
                    // keep reading this one until CCS closes it.
                    self.spawn_link(Duration::ZERO);
                }
            }
            LinkEvent::Closed { link, reason } => {
                let Some(l) = self.links.remove(&link) else {
                    return;
                };
                // Everything unacked goes back to the front, in order.
                let mut back: Vec<u64> = Vec::new();
                self.wire.retain(|_, (id, on)| {
                    if *on == link {
                        back.push(*id);
                        false
                    } else {
                        true
                    }
                });
                back.sort_unstable();
                for id in back.into_iter().rev() {
                    if let Some(m) = self.msgs.get_mut(&id) {
                        m.state = MsgState::Queued;
                        self.ready.push_front(id);
                    }
                }
                self.release_collided();
                if !l.draining && !self.shutdown.is_cancelled() {
                    metrics::counter!("gimmm_link_reconnects_total").increment(1);
                    // A link that lived a while earns a fresh backoff; one that
                    // dies right after its handshake keeps backing off.
                    if l.ready_at.is_some_and(|t| t.elapsed() >= STABLE_LINK) {
                        self.reconnect.reset();
                    }
                    let delay = self.reconnect.next_delay();
                    tracing::info!(link, %reason, retry_in = ?delay, "CCS connection lost; reconnecting");
                    self.spawn_link(delay);
                }
                metrics::gauge!("gimmm_links").set(self.links.len() as f64);
            }
            LinkEvent::Inbound { link, msg, raw } => self.on_inbound(link, msg, raw),
        }
    }

    fn best_link(&self) -> Option<LinkId> {
        self.links
            .iter()
            .filter(|(_, l)| l.ready && !l.draining && l.pending < self.cfg.max_pending)
            .min_by_key(|(_, l)| l.pending)
            .map(|(id, _)| *id)
    }

    fn pump_links(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let now = Instant::now();
        let now_wall = now_ms();
        let mut batches: Vec<(LinkId, Vec<Arc<str>>)> = Vec::new();
        while let Some(link) = self.best_link() {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(m) = self.msgs.get_mut(&id) else {
                continue;
            };
            if m.state != MsgState::Queued {
                continue;
            }
            if m.expires_at_ms < now_wall {
                self.finish_reject(
                    id,
                    "EXPIRED",
                    "time_to_live ran out before the message could be sent",
                );
                continue;
            }
            if let Some(until) = (!self.target_backoff.is_empty())
                .then(|| self.target_backoff.get(&m.target))
                .flatten()
            {
                if *until > now {
                    m.state = MsgState::Waiting;
                    self.timers.push(Reverse((*until, id)));
                    continue;
                }
            }
            if self.wire.contains_key(&m.message_id) {
                // Another session's message with the same id is in flight:
                // acks are matched by id, so wait for it.
                self.collided.push(id);
                continue;
            }
            m.state = MsgState::InFlight(link);
            self.wire.insert(m.message_id.clone(), (id, link));
            let body = m.body.clone();
            if let Some(l) = self.links.get_mut(&link) {
                l.pending += 1;
            }
            match batches.iter_mut().find(|(l, _)| *l == link) {
                Some((_, v)) => v.push(body),
                None => batches.push((link, vec![body])),
            }
        }
        for (link, bodies) in batches {
            self.meters.sent.increment(bodies.len() as u64);
            if let Some(l) = self.links.get(&link) {
                let _ = l.tx.send(LinkCmd::Send(bodies));
            }
        }
        self.page_in_messages();
    }

    fn release_collided(&mut self) {
        for id in self.collided.drain(..).rev() {
            self.ready.push_front(id);
        }
    }

    fn on_inbound(&mut self, link: LinkId, msg: Inbound, raw: String) {
        match msg {
            Inbound::Ack(a) => {
                let Some(id) = self.take_pending(link, &a.message_id) else {
                    tracing::debug!(link, message_id = %a.message_id, "ack for a message not in flight");
                    return;
                };
                self.finish_ack(id, &raw);
            }
            Inbound::Nack(n) => {
                let Some(id) = self.take_pending(link, &n.message_id) else {
                    tracing::debug!(link, message_id = %n.message_id, "nack for a message not in flight");
                    return;
                };
                metrics::counter!("gimmm_nacks_total", "code" => n.error.as_str().to_string())
                    .increment(1);
                let desc = n.error_description.clone().unwrap_or_default();
                match n.error.retry_class() {
                    RetryClass::Final => self.finish_reject(id, n.error.as_str(), &desc),
                    class => self.schedule_retry(id, class, &n.error, &desc),
                }
            }
            Inbound::Upstream(u) => {
                self.meters.upstream.increment(1);
                if !self.first_time(&u.message_id) {
                    // FCM resent something we stored: ack it again.
                    self.effects.push(Effect::AckFcm {
                        link,
                        to: u.from,
                        message_id: u.message_id,
                    });
                    return;
                }
                let session = self
                    .sessions
                    .get_key_value(u.category.as_str())
                    .map(|(k, _)| k.clone());
                let mut then = Vec::with_capacity(1);
                match session {
                    Some(session) => {
                        let seq = self.take_seq();
                        let l = line::upstream(seq, &session, &raw);
                        then.push(self.outbox_op(session, seq, l));
                    }
                    None => {
                        tracing::warn!(category = %u.category, "upstream message for an unknown category stored as unroutable");
                        metrics::counter!("gimmm_upstream_unroutable_total").increment(1);
                        self.unroutable += 1;
                        then.push(Op::Unroutable {
                            category: u.category.clone(),
                            body: raw,
                        });
                    }
                }
                // Stored only if this id is new (the store decides: FCM
                // resends what was not acked, also across our restarts).
                self.batch.push(Op::Upstream {
                    message_id: u.message_id.clone(),
                    then,
                });
                self.effects.push(Effect::AckFcm {
                    link,
                    to: u.from,
                    message_id: u.message_id,
                });
            }
            Inbound::Receipt(r) => {
                self.meters.receipts.increment(1);
                let to = r.from.clone().unwrap_or_default();
                if !self.first_time(&r.message_id) {
                    self.effects.push(Effect::AckFcm {
                        link,
                        to,
                        message_id: r.message_id,
                    });
                    return;
                }
                let mut then = Vec::with_capacity(2);
                let orig = r.data.original_message_id.clone();
                let target = match self.receipts.remove(&orig) {
                    Some(t) => Some(t),
                    None => match self.store.receipt_target(&orig) {
                        Ok(Some((s, id))) => Some((Arc::from(s.as_str()), id)),
                        _ => None,
                    },
                };
                let session = match &target {
                    Some((s, id)) => {
                        then.push(Op::ReceiptDone { id: *id });
                        Some(s.clone())
                    }
                    None => r
                        .category
                        .as_deref()
                        .and_then(|c| self.sessions.get_key_value(c).map(|(k, _)| k.clone())),
                };
                match session {
                    Some(session) => {
                        let seq = self.take_seq();
                        let l = line::downstream_receipt(seq, &session, &orig, &raw);
                        then.push(self.outbox_op(session, seq, l));
                    }
                    None => {
                        self.unroutable += 1;
                        metrics::counter!("gimmm_upstream_unroutable_total").increment(1);
                        then.push(Op::Unroutable {
                            category: r.category.clone().unwrap_or_default(),
                            body: raw,
                        });
                    }
                }
                self.batch.push(Op::Upstream {
                    message_id: r.message_id.clone(),
                    then,
                });
                self.effects.push(Effect::AckFcm {
                    link,
                    to,
                    message_id: r.message_id,
                });
            }
            Inbound::Control(c) => {
                tracing::debug!(link, control = ?c.control_type, "control message");
            }
        }
    }

    /// False when this upstream/receipt id was seen recently (an FCM resend
    /// after a reconnect: ack it again, write nothing). Older repeats are
    /// caught by the store ([`Op::Upstream`]), without a read here.
    fn first_time(&mut self, message_id: &str) -> bool {
        if self.upstream_recent.contains(message_id) {
            return false;
        }
        if self.upstream_recent.len() >= UPSTREAM_RECENT {
            self.upstream_recent.clear();
        }
        self.upstream_recent.insert(message_id.to_string());
        true
    }

    fn take_pending(&mut self, link: LinkId, message_id: &str) -> Option<u64> {
        match self.wire.get(message_id) {
            Some((_, on)) if *on == link => {}
            _ => return None,
        }
        let (id, _) = self.wire.remove(message_id)?;
        if let Some(l) = self.links.get_mut(&link) {
            l.pending = l.pending.saturating_sub(1);
        }
        if !self.collided.is_empty() {
            self.release_collided();
        }
        Some(id)
    }

    fn schedule_retry(&mut self, id: u64, class: RetryClass, code: &ErrorCode, desc: &str) {
        let Some(m) = self.msgs.get_mut(&id) else {
            return;
        };
        m.attempts += 1;
        if m.attempts >= self.cfg.retry.max_attempts {
            let d = format!(
                "gave up after {} attempts; last error {code}: {desc}",
                m.attempts
            );
            self.finish_reject(id, "MAX_RETRIES", &d);
            return;
        }
        let delay = self.retry.delay(m.attempts - 1);
        let at = Instant::now() + delay;
        if class == RetryClass::RetryAfterTargetBackoff {
            // Back off the whole target, not only this message.
            let e = self.target_backoff.entry(m.target.clone()).or_insert(at);
            *e = (*e).max(at);
        }
        metrics::counter!("gimmm_retries_total").increment(1);
        m.state = MsgState::Waiting;
        self.timers.push(Reverse((at, id)));
        self.batch.push(Op::RetryDownstream {
            id,
            attempts: m.attempts,
            not_before_ms: now_ms() + delay.as_millis() as i64,
        });
    }

    // ----- final results -----------------------------------------------

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Stores a sequenced line (without newline) and queues it for the
    /// session once it is on disk.
    fn queue_outbox(&mut self, session: Arc<str>, seq: u64, line: String) {
        let op = self.outbox_op(session, seq, line);
        self.batch.push(op);
    }

    /// The write of a sequenced line, whose delivery waits for the commit
    /// (and is skipped if the store reports the seq as repeated).
    fn outbox_op(&mut self, session: Arc<str>, seq: u64, line: String) -> Op {
        let line: Arc<str> = Arc::from(line);
        self.effects.push(Effect::Outbox {
            session: session.clone(),
            seq,
            line: line.clone(),
        });
        Op::InsertOutbox {
            seq,
            session,
            body: line,
        }
    }

    fn remove_msg(&mut self, id: u64) -> Option<Msg> {
        let m = self.msgs.remove(&id)?;
        if let Some(g) = &m.group {
            let key = (m.session.clone(), g.clone());
            if let Some(q) = self.groups.get_mut(&key) {
                if q.active == Some(id) {
                    q.active = None;
                    while let Some(next) = q.waiting.pop_front() {
                        if self.msgs.contains_key(&next) {
                            q.active = Some(next);
                            self.ready.push_back(next);
                            break;
                        }
                    }
                } else {
                    q.waiting.retain(|x| *x != id);
                }
                if q.active.is_none() && q.waiting.is_empty() {
                    self.groups.remove(&key);
                }
            }
        }
        self.batch.push(Op::FinishDownstream { id });
        Some(m)
    }

    fn finish_ack(&mut self, id: u64, raw: &str) {
        let Some(m) = self.remove_msg(id) else { return };
        self.meters.final_ack.increment(1);
        tracing::debug!(session = %m.session, message_id = %m.message_id, "downstream acked");
        if m.receipt {
            if self.receipts.len() >= MAX_RECEIPT_MEMORY {
                self.receipts.clear();
            }
            self.receipts
                .insert(m.message_id.to_string(), (m.session.clone(), id));
        }
        let seq = self.take_seq();
        let l = line::downstream_ack(seq, &m.session, &m.message_id, raw);
        self.queue_outbox(m.session, seq, l);
    }

    fn finish_reject(&mut self, id: u64, code: &str, desc: &str) {
        let Some(m) = self.remove_msg(id) else { return };
        self.reject_line(&m.session, &m.message_id, &m.body, code, desc);
    }

    fn reject_line(
        &mut self,
        session: &Arc<str>,
        message_id: &str,
        body: &str,
        code: &str,
        desc: &str,
    ) {
        metrics::counter!("gimmm_downstream_final_total", "state" => "reject").increment(1);
        metrics::counter!("gimmm_downstream_rejected_total", "code" => code.to_string())
            .increment(1);
        tracing::debug!(%session, %message_id, code, "downstream rejected");
        let seq = self.take_seq();
        let line = ToBal::DownstreamReject {
            sequence_id: seq,
            session_id: session.to_string(),
            message_id: message_id.to_string(),
            error: code.to_string(),
            error_description: desc.to_string(),
            fcm_data: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        };
        self.queue_outbox(session.clone(), seq, line_of(&line));
    }

    // ----- BAL side ----------------------------------------------------

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Attach { session, conn, out } => {
                let st = self
                    .sessions
                    .entry(session.clone())
                    .or_insert_with(SessionState::new);
                if let Some((old, old_out)) = st.conn.take() {
                    tracing::info!(%session, old, new = conn, "session taken over");
                    let _ = old_out.send(Out::Line(Arc::from(line_of(&ToBal::error(
                        BalError::SessionTakenOver,
                        "another connection logged on to this session",
                    )))));
                    let _ = old_out.send(Out::Close);
                }
                // Unacked messages are redelivered on the new connection.
                let back: Vec<(u64, Arc<str>)> =
                    std::mem::take(&mut st.inflight).into_iter().collect();
                for item in back.into_iter().rev() {
                    st.queue.push_front(item);
                }
                let _ = out.send(Out::Line(Arc::from(line_of(&ToBal::LogonResponse {
                    session_id: session.to_string(),
                    status: "SUCCESS".into(),
                    error_description: None,
                }))));
                st.conn = Some((conn, out));
                tracing::debug!(%session, conn, "BAL logged on");
                self.pump_session(&session);
                self.session_gauge();
            }
            Cmd::Detach { session, conn } => {
                if let Some(st) = self.sessions.get_mut(&session) {
                    if matches!(&st.conn, Some((c, _)) if *c == conn) {
                        st.conn = None;
                        let back: Vec<(u64, Arc<str>)> =
                            std::mem::take(&mut st.inflight).into_iter().collect();
                        for item in back.into_iter().rev() {
                            st.queue.push_front(item);
                        }
                        tracing::debug!(%session, conn, "BAL disconnected");
                    }
                }
                self.session_gauge();
            }
            Cmd::Ack { session, conn, seq } => {
                let Some(st) = self.sessions.get_mut(&session) else {
                    return;
                };
                let known = if st.inflight.remove(&seq).is_some() {
                    true
                } else if let Some(pos) = st.queue.iter().position(|(s, _)| *s == seq) {
                    st.queue.remove(pos);
                    true
                } else {
                    false
                };
                if known {
                    self.batch.push(Op::DeleteOutbox {
                        session: session.clone(),
                        seq,
                    });
                    self.pump_session(&session);
                } else if let Some((c, out)) = &st.conn {
                    if *c == conn {
                        let _ = out.send(Out::Line(Arc::from(line_of(&ToBal::error(
                            BalError::UnknownSequenceId,
                            format!("sequence_id {seq} is not outstanding"),
                        )))));
                    }
                }
            }
            Cmd::Downstream(inc) => self.on_downstream(*inc),
            Cmd::Snapshot(tx) => {
                let _ = tx.send(self.snapshot());
            }
        }
    }

    fn session_gauge(&self) {
        let n = self.sessions.values().filter(|s| s.conn.is_some()).count();
        metrics::gauge!("gimmm_bal_sessions_connected").set(n as f64);
    }

    fn on_downstream(&mut self, inc: Incoming) {
        self.meters.received.increment(1);
        if self.store.is_degraded() {
            // The store cannot take writes: refuse at once (never ACCEPTED)
            // rather than queue the message behind the stuck write.
            let line = line_of(&ToBal::error(
                BalError::StoreUnavailable,
                format!(
                    "message {} not accepted: the store cannot take writes (disk full?)",
                    inc.message_id
                ),
            ));
            self.send_to_conn(&inc.session, inc.conn, line);
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
            );
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let body: Arc<str> = Arc::from(inc.body.as_str());
        self.batch.push(Op::InsertDownstream(NewDownstream {
            id,
            session: inc.session.clone(),
            message_id: inc.message_id.clone(),
            group_id: inc.group_id.clone(),
            body: inc.body,
            expires_at_ms: inc.expires_at_ms,
            receipt: inc.receipt,
        }));
        let msg = Msg {
            session: inc.session,
            message_id: Arc::from(inc.message_id.as_str()),
            group: inc.group_id.map(|g| Arc::from(g.as_str())),
            body,
            attempts: 0,
            expires_at_ms: inc.expires_at_ms,
            receipt: inc.receipt,
            target: Arc::from(inc.target.as_str()),
            state: MsgState::Queued,
        };
        self.effects.push(Effect::Accepted {
            id,
            msg: Box::new(msg),
            conn: inc.conn,
        });
    }

    fn send_to_conn(&self, session: &str, conn: ConnId, line: String) {
        if let Some(st) = self.sessions.get(session) {
            if let Some((c, out)) = &st.conn {
                if *c == conn {
                    if out.backlog() > SLOW_CONSUMER_LINES {
                        // The BAL does not read: disconnect it; its results
                        // stay stored and are redelivered on its next logon.
                        tracing::warn!(%session, conn, "BAL does not read what it is sent; disconnecting it");
                        let _ = out.send(Out::Close);
                        return;
                    }
                    let _ = out.send(Out::Owned(line));
                }
            }
        }
    }

    fn pump_session(&mut self, session: &Arc<str>) {
        let max = self.cfg.max_unacked;
        let limit = self.cfg.mem_outbox;
        let durable = self.durable_seq;
        let Some(st) = self.sessions.get_mut(session) else {
            return;
        };
        let Some((_, out)) = &st.conn else { return };
        while st.inflight.len() < max {
            if st.queue.is_empty() && st.spilled {
                match self
                    .store
                    .load_outbox_upto(session, st.max_loaded, durable, limit)
                {
                    Ok(rows) => {
                        st.spilled = rows.len() == limit;
                        for r in rows {
                            st.max_loaded = st.max_loaded.max(r.seq);
                            st.queue.push_back((r.seq, Arc::from(r.body)));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read outbox");
                        break;
                    }
                }
            }
            let Some((seq, line)) = st.queue.pop_front() else {
                break;
            };
            if out.send(Out::Line(line.clone())).is_err() {
                st.queue.push_front((seq, line));
                break;
            }
            st.inflight.insert(seq, line);
        }
    }

    // ----- store -------------------------------------------------------

    fn flush_batch(&mut self) {
        if self.batch.is_empty() && self.effects.is_empty() {
            return;
        }
        if self.effects.is_empty() && self.batch.len() < LAZY_MAX_OPS {
            let now = Instant::now();
            match self.lazy_since {
                None => {
                    self.lazy_since = Some(now);
                    return;
                }
                Some(t) if now < t + LAZY_MAX_DELAY => return,
                Some(_) => {}
            }
        }
        self.flush_batch_now();
    }

    fn flush_batch_now(&mut self) {
        if self.batch.is_empty() && self.effects.is_empty() {
            return;
        }
        self.lazy_since = None;
        self.batch_no += 1;
        let cap = self.batch.len();
        let ops = std::mem::replace(&mut self.batch, Vec::with_capacity(cap));
        let cap = self.effects.len();
        let effects = std::mem::replace(&mut self.effects, Vec::with_capacity(cap));
        if let Err(e) = self.store.submit(Batch {
            no: self.batch_no,
            ops,
        }) {
            tracing::error!(error = %e, "store writer is gone; stopping");
            self.shutdown.cancel();
            return;
        }
        self.awaiting.push_back((
            self.batch_no,
            effects,
            self.next_seq.saturating_sub(1),
            self.next_id.saturating_sub(1),
        ));
    }

    fn on_commit(&mut self, c: Committed) {
        self.meters
            .commit_seconds
            .record(c.commit_time.as_secs_f64());
        self.meters.group_size.record(c.group_size as f64);
        let Some((no, effects, seq_mark, id_mark)) = self.awaiting.pop_front() else {
            return;
        };
        debug_assert_eq!(no, c.no);
        self.durable_seq = self.durable_seq.max(seq_mark);
        self.durable_id = self.durable_id.max(id_mark);
        let dups: HashSet<u64> = c.duplicates.into_iter().collect();
        let repeated: HashSet<u64> = c.repeated.into_iter().collect();
        let failed: HashSet<u64> = c.failed_inserts.into_iter().collect();
        let mut touched: Vec<Arc<str>> = Vec::new();
        for e in effects {
            match e {
                Effect::Accepted { id, msg, conn } => {
                    let (duplicate, refused) = (dups.contains(&id), failed.contains(&id));
                    let line = if refused {
                        line_of(&ToBal::error(
                            BalError::StoreUnavailable,
                            format!(
                                "message {} not accepted: {}",
                                msg.message_id,
                                c.error.as_deref().unwrap_or("store failure")
                            ),
                        ))
                    } else {
                        line::downstream_accepted(&msg.message_id, duplicate)
                    };
                    self.send_to_conn(&msg.session, conn, line);
                    if !duplicate && !refused {
                        self.admit(id, *msg);
                    }
                }
                Effect::Outbox { seq, .. } if repeated.contains(&seq) => {}
                Effect::Outbox { session, seq, line } => {
                    let limit = self.cfg.mem_outbox;
                    let st = self
                        .sessions
                        .entry(session.clone())
                        .or_insert_with(SessionState::new);
                    if !st.spilled && seq > st.max_loaded {
                        if st.queue.len() >= limit {
                            st.spilled = true; // on disk; paged in later
                        } else {
                            st.max_loaded = seq;
                            st.queue.push_back((seq, line));
                        }
                    }
                    if !touched.contains(&session) {
                        touched.push(session);
                    }
                }
                Effect::AckFcm {
                    link,
                    to,
                    message_id,
                } => {
                    if let Some(l) = self.links.get(&link) {
                        let _ = l.tx.send(LinkCmd::AckFcm { to, message_id });
                    }
                }
            }
        }
        for s in touched {
            self.pump_session(&s);
        }
    }

    /// A stored message enters the in-memory queues (unless paged out).
    fn admit(&mut self, id: u64, msg: Msg) {
        if self.down_spilled || id <= self.down_max_loaded {
            return;
        }
        if self.msgs.len() >= self.cfg.mem_messages {
            self.down_spilled = true;
            return;
        }
        self.down_max_loaded = id;
        self.enqueue(id, msg, None);
    }

    fn enqueue(&mut self, id: u64, msg: Msg, not_before: Option<Instant>) {
        let group = msg.group.clone().map(|g| (msg.session.clone(), g));
        let mut m = msg;
        let mut runnable = true;
        if let Some(key) = group {
            let q = self.groups.entry(key).or_default();
            if q.active.is_none() {
                q.active = Some(id);
            } else {
                q.waiting.push_back(id);
                runnable = false;
            }
        }
        if runnable {
            match not_before {
                Some(t) if t > Instant::now() => {
                    m.state = MsgState::Waiting;
                    self.timers.push(Reverse((t, id)));
                }
                _ => self.ready.push_back(id),
            }
        }
        self.msgs.insert(id, m);
    }

    /// Loads queued messages from disk while memory has room.
    fn page_in_messages(&mut self) {
        if !self.down_spilled || self.msgs.len() > self.cfg.mem_messages / 2 {
            return;
        }
        let room = self.cfg.mem_messages - self.msgs.len();
        let rows = match self
            .store
            .load_queued_upto(self.down_max_loaded, self.durable_id, room)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot page queued messages in");
                return;
            }
        };
        self.down_spilled = rows.len() == room;
        let now_wall = now_ms();
        for r in rows {
            self.down_max_loaded = self.down_max_loaded.max(r.id);
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
                .get_key_value(r.session.as_str())
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(r.session.as_str()));
            let not_before = (r.not_before_ms > now_wall).then(|| {
                Instant::now() + Duration::from_millis((r.not_before_ms - now_wall) as u64)
            });
            let msg = Msg {
                session,
                message_id: Arc::from(r.message_id.as_str()),
                group: r.group_id.map(|g| Arc::from(g.as_str())),
                body: Arc::from(r.body),
                attempts: r.attempts,
                expires_at_ms: r.expires_at_ms,
                receipt: r.receipt,
                target: Arc::from(target),
                state: MsgState::Queued,
            };
            self.enqueue(r.id, msg, not_before);
        }
    }

    // ----- timers ------------------------------------------------------

    fn on_timer(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(m) = self.msgs.get_mut(&id) {
                if m.state == MsgState::Waiting {
                    m.state = MsgState::Queued;
                    self.ready.push_back(id);
                }
            }
        }
        self.target_backoff.retain(|_, until| *until > now);
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.sweep_expired();
        }
    }

    /// Rejects messages whose TTL ran out while they wait (no link, retry,
    /// group order).
    fn sweep_expired(&mut self) {
        let now_wall = now_ms();
        let expired: Vec<u64> = self
            .msgs
            .iter()
            .filter(|(_, m)| {
                !matches!(m.state, MsgState::InFlight(_)) && m.expires_at_ms < now_wall
            })
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        let set: HashSet<u64> = expired.iter().copied().collect();
        self.ready.retain(|id| !set.contains(id));
        for id in expired {
            self.finish_reject(
                id,
                "EXPIRED",
                "time_to_live ran out before the message could be sent",
            );
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            links: self
                .links
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
                    pending: l.pending,
                })
                .collect(),
            sessions: {
                let mut v: Vec<SessionInfo> = self
                    .sessions
                    .iter()
                    .map(|(k, s)| SessionInfo {
                        session_id: k.to_string(),
                        connected: s.conn.is_some(),
                        queued: s.queue.len(),
                        unacked: s.inflight.len(),
                        spilled: s.spilled,
                    })
                    .collect();
                v.sort_by(|a, b| a.session_id.cmp(&b.session_id));
                v
            },
            messages_in_memory: self.msgs.len(),
            messages_spilled: self.down_spilled,
            auth_error: self.auth_error.clone(),
            unroutable: self.unroutable,
        }
    }
}

/// A protocol message as one line without newline.
pub(crate) fn line_of(m: &ToBal) -> String {
    let mut l = m.to_line();
    l.pop();
    l
}
