//! The engine: the single owner of message state (DESIGN §1, §5).
//!
//! [`core::Core`] holds all the state and decides everything, without I/O.
//! This module is the thin async driver around it: one task that selects
//! over the BAL commands, the links' events, the store's commit reports,
//! the reads it runs for the core, and the core's next deadline; feeds each
//! to the core; and carries out what the core says — lines to BAL
//! connections, commands to links (started through a [`LinkFactory`]),
//! batches to the store, reads off the engine task.
//!
//! Time: the core sees milliseconds on a clock that starts at the wall
//! clock when the engine starts and then advances with tokio's monotonic
//! clock, so stored deadlines (wall clock) and timers agree, and tests can
//! run the whole engine under paused tokio time.

pub mod core;
pub(crate) mod dispatch;
pub(crate) mod durability;
pub(crate) mod inbound;
pub(crate) mod queue;
pub(crate) mod sessions;
#[cfg(test)]
mod tests;

pub use self::core::{Core, CoreConfig, IngressResult, Input, Output};

use crate::config::RetryConfig;
use crate::link::{LinkEvent, LinkFactory, LinkHandle, LinkId};
use crate::session::out::{Delivery, Out, OutTx};
use fcm::ErrorCode;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use store::{Committed, SharedStore};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Identifies one BAL TCP connection.
pub type ConnId = u64;

/// The core's clock: milliseconds since the Unix epoch, as the wall clock
/// read at start plus tokio's monotonic time since.
pub type Millis = i64;

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
    /// How long it may wait in gimmm's queue, from acceptance (ms).
    pub ttl_ms: i64,
    /// Delivery receipt requested.
    pub receipt: bool,
    /// `to` or `condition`, for rate backoff.
    pub target: String,
    /// Validation failure: (code, description). Not sent, rejected at once.
    pub rejected: Option<(ErrorCode, String)>,
}

/// An upstream message posted to the ingress (SPEC §10): valid and
/// authenticated; answered on `reply` once stored (or refused).
#[derive(Debug)]
pub struct IngressPost {
    /// The session named by its `category`.
    pub session: Arc<str>,
    /// The app's idempotency key.
    pub message_id: String,
    /// The upstream JSON the BAL receives as `fcm_data`.
    pub fcm_data: String,
    /// Where the answer goes.
    pub reply: oneshot::Sender<IngressResult>,
}

/// Commands from BAL sessions, the ingress and the admin API.
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
    /// An upstream message from the ingress (SPEC §10).
    Ingress(Box<IngressPost>),
    /// State for the admin API.
    Snapshot(oneshot::Sender<Snapshot>),
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Configured session ids.
    pub sessions: Vec<String>,
    /// Links to keep open.
    pub connections: usize,
    /// Sequenced messages in flight per BAL session.
    pub max_unacked: usize,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Downstream messages held in memory before paging.
    pub mem_messages: usize,
    /// Sequenced messages held in memory per session before paging.
    pub mem_outbox: usize,
    /// Said in DOWNSTREAM_ACCEPTED when a receipt was asked for and the
    /// link gives none.
    pub receipt_warning: Option<&'static str>,
    /// On shutdown, how long to wait for FCM's answers to what is in flight.
    pub shutdown_grace: Duration,
    /// Cancelled to cut the shutdown drain short (a second signal).
    pub abort: CancellationToken,
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
    /// The store cannot take writes (disk full …): new messages are
    /// refused.
    pub store_degraded: bool,
}

/// One link, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct LinkInfo {
    /// Id.
    pub id: LinkId,
    /// `connecting`, `ready` or `draining`.
    pub state: &'static str,
    /// Messages handed to it without an outcome yet.
    pub pending: usize,
    /// Messages it can hold at once.
    pub capacity: usize,
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
    /// Downstream messages of this session held in memory, waiting for
    /// FCM or in flight.
    pub downstream_in_memory: usize,
}

/// Batches handed to the store and not yet committed beyond which the
/// engine stops taking BAL commands.
const MAX_AWAITING: usize = 64;

/// The core's clock (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    wall_ms: Millis,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            wall_ms: store::now_ms(),
        }
    }

    fn now(&self) -> Millis {
        self.wall_ms + self.start.elapsed().as_millis() as Millis
    }

    fn instant(&self, at: Millis) -> Instant {
        self.start + Duration::from_millis(at.saturating_sub(self.wall_ms).max(0) as u64)
    }
}

/// A read the driver runs for the core.
type Read = futures::future::BoxFuture<'static, Input>;

/// The engine task. Build with [`Engine::new`], run with [`Engine::run`].
pub struct Engine {
    core: Core,
    store: SharedStore,
    factory: Arc<dyn LinkFactory>,
    links: HashMap<LinkId, LinkHandle>,
    conns: HashMap<ConnId, OutTx>,
    link_tx: mpsc::UnboundedSender<LinkEvent>,
    link_rx: mpsc::UnboundedReceiver<LinkEvent>,
    reads: FuturesUnordered<Read>,
    /// The core's outputs being carried out (kept for its allocation).
    outputs: Vec<Output>,
    /// Store reads run for the core: queued pages, outbox pages, receipt
    /// lookups (logged at the end).
    reads_done: [u64; 3],
    clock: Clock,
    shutdown: CancellationToken,
    /// Aborts the links (they close cleanly on `LinkCmd::Close` otherwise).
    link_stop: CancellationToken,
    /// Cuts the shutdown drain short (a second signal).
    abort: CancellationToken,
    /// How long the drain waits for answers to what is in flight.
    grace: Duration,
    /// Ingress posts waiting for their answer, by the id the core echoes.
    ingress: HashMap<u64, oneshot::Sender<IngressResult>>,
    next_ingress: u64,
}

impl Engine {
    /// An engine on an opened store (see [`store::Recovery`]), building its
    /// links with `factory`.
    pub fn new(
        cfg: EngineConfig,
        store: SharedStore,
        recovery: &store::Recovery,
        factory: Arc<dyn LinkFactory>,
        shutdown: CancellationToken,
    ) -> Engine {
        let clock = Clock::new();
        let cfg_grace = cfg.shutdown_grace;
        let abort = cfg.abort.clone();
        let core = Core::new(
            CoreConfig {
                sessions: cfg.sessions,
                connections: cfg.connections,
                max_unacked: cfg.max_unacked,
                retry: cfg.retry,
                mem_messages: cfg.mem_messages,
                mem_outbox: cfg.mem_outbox,
                receipt_warning: cfg.receipt_warning,
                seed: rand::random(),
                peer: factory.peer(),
            },
            recovery,
            clock.now(),
        );
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        Engine {
            core,
            store,
            factory,
            links: HashMap::new(),
            conns: HashMap::new(),
            link_tx,
            link_rx,
            reads: FuturesUnordered::new(),
            outputs: Vec::new(),
            reads_done: [0; 3],
            clock,
            shutdown,
            link_stop: CancellationToken::new(),
            abort,
            grace: cfg_grace,
            ingress: HashMap::new(),
            next_ingress: 1,
        }
    }

    /// Runs until `shutdown` is cancelled, then drains: commits what is
    /// pending, closes the BAL connections, lets the links close.
    pub async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut ctl: mpsc::Receiver<Cmd>,
        mut commit_rx: mpsc::UnboundedReceiver<Committed>,
    ) {
        self.core.start(self.clock.now());
        self.apply();
        let shutdown = self.shutdown.clone();
        loop {
            let deadline = self.clock.instant(self.core.next_deadline());
            // Backpressure: while the store has many batches to commit (a
            // slow or stuck disk), stop taking BAL commands; the BAL tasks
            // then stop reading their sockets. A degraded store refuses
            // new messages at once, so keep taking them then.
            let take_cmds = self.core.awaiting() < MAX_AWAITING || self.store.is_degraded();
            tokio::select! {
                biased;
                Some(c) = commit_rx.recv() => {
                    let now = self.clock.now();
                    self.core.handle(now, Input::Committed(c));
                    while let Ok(c) = commit_rx.try_recv() {
                        self.core.handle(now, Input::Committed(c));
                    }
                }
                Some(ev) = self.link_rx.recv() => {
                    let now = self.clock.now();
                    self.on_link_event(now, ev);
                    for _ in 0..1024 {
                        match self.link_rx.try_recv() {
                            Ok(ev) => self.on_link_event(now, ev),
                            Err(_) => break,
                        }
                    }
                }
                Some(input) = self.reads.next(), if !self.reads.is_empty() => {
                    self.core.handle(self.clock.now(), input);
                }
                // Admin snapshots have their own channel so /readyz answers
                // even while BAL commands are held back.
                Some(cmd) = ctl.recv() => self.on_cmd(cmd),
                Some(cmd) = cmds.recv(), if take_cmds => {
                    // Read when the commands are handled: a store that got
                    // stuck while the engine waited refuses them at once.
                    self.core.set_store_degraded(self.store.is_degraded());
                    self.on_cmd(cmd);
                    for _ in 0..1024 {
                        match cmds.try_recv() {
                            Ok(c) => self.on_cmd(c),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => self.core.tick(self.clock.now()),
                _ = shutdown.cancelled() => break,
            }
            self.core.end_turn(self.clock.now());
            self.apply();
        }
        self.drain(&mut cmds, &mut ctl, &mut commit_rx).await;
        let [queued, outbox, receipts] = self.reads_done;
        tracing::info!(
            reads.queued = queued,
            reads.outbox = outbox,
            reads.receipts = receipts,
            "engine stopped"
        );
    }

    /// Shutdown, draining (SPEC §11 "Deploys without duplicates"): nothing
    /// new goes to FCM and no new DOWNSTREAM is taken (SHUTTING_DOWN); the
    /// answers to what is in flight are awaited, for up to the grace time,
    /// and their results stored and handed to the logged-on BALs; then the
    /// BAL connections close (after what was queued for them) and the
    /// links close cleanly. A restart then sends FCM nothing twice. What is
    /// still in flight when the grace time is over stays stored and is
    /// resent after the restart.
    async fn drain(
        &mut self,
        cmds: &mut mpsc::Receiver<Cmd>,
        ctl: &mut mpsc::Receiver<Cmd>,
        commit_rx: &mut mpsc::UnboundedReceiver<Committed>,
    ) {
        self.core.begin_shutdown(self.clock.now());
        self.apply();
        let in_flight = self.core.in_flight();
        if in_flight > 0 {
            tracing::info!(in_flight, grace = ?self.grace, "shutting down: waiting for FCM's answers to what is in flight");
        }
        let deadline = Instant::now() + self.grace;
        loop {
            if self.core.drained() {
                break;
            }
            let timer = self.clock.instant(self.core.next_deadline());
            tokio::select! {
                biased;
                _ = self.abort.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        in_flight = self.core.in_flight(),
                        "shutdown grace time over; what is still in flight is resent after the restart, unwritten results are delivered then"
                    );
                    break;
                }
                Some(c) = commit_rx.recv() => {
                    self.core.handle(self.clock.now(), Input::Committed(c));
                }
                Some(ev) = self.link_rx.recv() => {
                    let now = self.clock.now();
                    self.on_link_event(now, ev);
                }
                Some(input) = self.reads.next(), if !self.reads.is_empty() => {
                    self.core.handle(self.clock.now(), input);
                }
                Some(cmd) = ctl.recv() => self.on_cmd(cmd),
                // BALs keep ACKing; DOWNSTREAMs get SHUTTING_DOWN.
                Some(cmd) = cmds.recv() => self.on_cmd(cmd),
                _ = tokio::time::sleep_until(timer) => self.core.tick(self.clock.now()),
            }
            self.core.end_turn(self.clock.now());
            self.apply();
        }
        // Whatever the last turns wrote (BAL ACKs, retry bookkeeping) is
        // committed before the connections go.
        self.core.begin_shutdown(self.clock.now());
        self.apply();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.core.awaiting() > 0 && !self.abort.is_cancelled() {
            match tokio::time::timeout_at(deadline, commit_rx.recv()).await {
                Ok(Some(c)) => {
                    self.core.handle(self.clock.now(), Input::Committed(c));
                    self.apply();
                }
                _ => break,
            }
        }
        for out in self.conns.values() {
            let _ = out.send(Out::Close);
        }
        // Close the links cleanly and let them see FCM's answer; abort
        // those that take too long.
        for h in self.links.values() {
            h.send(crate::link::LinkCmd::Close);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.links.is_empty() && !self.abort.is_cancelled() {
            match tokio::time::timeout_at(deadline, self.link_rx.recv()).await {
                Ok(Some(LinkEvent::Closed { link, .. })) => {
                    self.links.remove(&link);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        self.link_stop.cancel();
    }

    fn on_link_event(&mut self, now: Millis, ev: LinkEvent) {
        if let LinkEvent::Closed { link, .. } = &ev {
            self.links.remove(link);
        }
        self.core.handle(now, Input::Link(ev));
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let now = self.clock.now();
        match cmd {
            Cmd::Attach { session, conn, out } => {
                self.conns.insert(conn, out);
                self.core.handle(now, Input::Attach { session, conn });
            }
            Cmd::Detach { session, conn } => {
                self.core.handle(now, Input::Detach { session, conn });
                self.conns.remove(&conn);
            }
            Cmd::Downstream(inc) => self.core.handle(now, Input::Downstream(inc)),
            Cmd::Ack { session, conn, seq } => {
                self.core.handle(now, Input::Ack { session, conn, seq })
            }
            Cmd::Ingress(post) => {
                let IngressPost {
                    session,
                    message_id,
                    fcm_data,
                    reply,
                } = *post;
                if reply.is_closed() {
                    // The client is gone before anything was written.
                    return;
                }
                let id = self.next_ingress;
                self.next_ingress += 1;
                self.ingress.insert(id, reply);
                self.core.handle(
                    now,
                    Input::Ingress {
                        id,
                        session,
                        message_id,
                        fcm_data,
                    },
                );
            }
            Cmd::Snapshot(tx) => {
                let mut snap = self.core.snapshot();
                snap.store_degraded = self.store.is_degraded();
                let _ = tx.send(snap);
            }
        }
    }

    /// Carries out what the core asked for.
    fn apply(&mut self) {
        let mut outputs = std::mem::take(&mut self.outputs);
        self.core.swap_outputs(&mut outputs);
        for o in outputs.drain(..) {
            match o {
                Output::Write { conn, out } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        if tx.deliver(out) == Delivery::SlowConsumer {
                            // Its results stay stored and are redelivered
                            // on its next logon; nothing more is queued for
                            // it (its Detach follows).
                            self.conns.remove(&conn);
                            tracing::warn!(
                                conn,
                                "BAL does not read what it is sent; disconnecting it"
                            );
                            metrics::counter!(crate::metrics::BAL_SLOW_CONSUMERS).increment(1);
                        }
                    }
                }
                Output::SpawnLink { link, delay } => {
                    let h = self.factory.spawn(
                        link,
                        delay,
                        self.link_tx.clone(),
                        self.link_stop.clone(),
                    );
                    self.links.insert(link, h);
                }
                Output::Link { link, cmd } => {
                    if let Some(h) = self.links.get(&link) {
                        h.send(cmd);
                    }
                }
                Output::Submit(b) => {
                    if let Err(e) = self.store.submit(b) {
                        tracing::error!(error = %e, "store writer is gone; stopping");
                        self.shutdown.cancel();
                    }
                }
                Output::LoadQueued { after, limit } => {
                    self.reads_done[0] += 1;
                    let f = self.store.load_queued(after, limit);
                    self.reads.push(Box::pin(async move {
                        Input::QueuedPage {
                            limit,
                            rows: f.await,
                        }
                    }));
                }
                Output::LoadOutbox {
                    session,
                    after,
                    limit,
                } => {
                    self.reads_done[1] += 1;
                    let f = self.store.load_outbox(&session, after, limit);
                    self.reads.push(Box::pin(async move {
                        Input::OutboxPage {
                            session,
                            limit,
                            rows: f.await,
                        }
                    }));
                }
                Output::LookupReceipt { key, message_id } => {
                    self.reads_done[2] += 1;
                    let f = self.store.receipt_target(&message_id);
                    self.reads.push(Box::pin(async move {
                        Input::ReceiptTarget {
                            key,
                            target: f.await,
                        }
                    }));
                }
                Output::IngressReply { id, result } => {
                    if let Some(tx) = self.ingress.remove(&id) {
                        // The client may have gone; what is stored stays.
                        let _ = tx.send(result);
                    }
                }
                Output::Fatal(why) => {
                    tracing::error!(%why, "engine cannot continue; shutting down");
                    self.shutdown.cancel();
                }
            }
        }
        self.outputs = outputs;
    }
}
