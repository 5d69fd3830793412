//! The link interface (DESIGN §5): how the engine talks to one connection
//! to FCM, whatever the protocol underneath.
//!
//! The engine speaks only in its own ids ([`MsgId`], the store's row id)
//! and never sees a wire id: it hands a link [`Outgoing`] messages with
//! [`LinkCmd::Send`] and hears one [`Outcome`] per message, in any order.
//! A link announces how many messages it can hold at once
//! ([`LinkEvent::Ready`], [`LinkEvent::Capacity`]); the engine counts what it
//! sent and has not heard back about, and never exceeds that capacity — the
//! way tower's `poll_ready` makes capacity a first-class signal.
//!
//! Everything protocol-specific lives behind a link: CCS's window of 100
//! and its message-id correlation, draining and upstream acks
//! ([`xmpp`]); HTTP/2 stream limits, OAuth tokens and v1 error bodies
//! ([`http_v1`]). A [`LinkFactory`], chosen by config, builds links;
//! the engine's tests use a scripted one.
//!
//! Lifecycle of a link, as the engine sees it: spawned (connecting,
//! possibly [`LinkEvent::ConnectFailed`] several times), [`LinkEvent::Ready`],
//! then outcomes, upstream and receipts, maybe [`LinkEvent::Draining`] (send
//! nothing more; the engine opens a replacement at once), and finally
//! exactly one [`LinkEvent::Closed`]. Messages without an outcome when a
//! link closes go back to the queue and are resent elsewhere.

pub mod http_v1;
pub mod scripted;
pub mod xmpp;

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Identifies a link for its whole life (a reconnect is a new link).
pub type LinkId = u64;

/// The engine's id of a downstream message (its store row id).
pub type MsgId = u64;

/// A downstream message handed to a link.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The engine's id, echoed in the [`Outcome`].
    pub id: MsgId,
    /// The message id the BAL knows it by.
    pub message_id: Arc<str>,
    /// `to` or `condition` of the message.
    pub target: Arc<str>,
    /// The legacy FCM JSON (SPEC §3.2), as stored.
    pub body: Arc<str>,
    /// Unix ms when gimmm accepted it (the TTL counts from here).
    pub accepted_at_ms: i64,
}

/// What the engine tells a link.
#[derive(Debug)]
pub enum LinkCmd {
    /// Send these messages (within the announced capacity).
    Send(Vec<Outgoing>),
    /// An upstream message or receipt is durably stored: acknowledge it to
    /// FCM (on the connection it came on).
    AckUpstream(UpstreamToken),
    /// Close cleanly: send nothing more, report the outcomes of what is in
    /// flight that arrive while the protocol's close takes (bounded by the
    /// link), then report [`LinkEvent::Closed`]. The engine sends it once
    /// the answers it waits for are in (or its grace time is over).
    Close,
}

/// What a link needs to acknowledge one upstream message or receipt;
/// opaque to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamToken {
    /// The sender (a device token, or FCM itself for receipts).
    pub from: String,
    /// The upstream message id.
    pub message_id: String,
}

/// The result of one message.
#[derive(Debug)]
pub enum SendResult {
    /// FCM took it; `raw` is the ack JSON for DOWNSTREAM_ACK's `fcm_data`.
    Delivered {
        /// FCM's ack as JSON.
        raw: String,
    },
    /// FCM did not take it.
    Failed(Failure),
}

/// Why FCM did not take a message, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What the engine does next.
    pub class: FailureClass,
    /// The DOWNSTREAM_REJECT `error` code if it ends the message
    /// (`BAD_REGISTRATION`, `DEVICE_UNREGISTERED`, …).
    pub code: String,
    /// Human-readable detail.
    pub detail: String,
    /// HTTP details for the REJECT (HTTP v1 link only).
    pub http: Option<HttpDetail>,
}

/// HTTP v1 details a DOWNSTREAM_REJECT carries (SPEC §8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpDetail {
    /// The v1 `errorCode`, if the error body had one.
    pub fcm_error: Option<String>,
    /// The HTTP status.
    pub http_status: u16,
}

/// What the engine does with a failed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The message is done: DOWNSTREAM_REJECT with the code.
    Final,
    /// Try again later: counts as an attempt; waits for the retry backoff
    /// or `after`, whichever is later; with `target_backoff` every message
    /// to the same target waits too.
    Retry {
        /// A delay FCM asked for (`Retry-After`).
        after: Option<Duration>,
        /// Back off the whole target (rate exceeded, quota).
        target_backoff: bool,
    },
    /// Not FCM's answer: the request never completed (its connection
    /// died, it was refused before processing). Resend at once, elsewhere;
    /// not an attempt.
    Resend,
}

/// One message's outcome.
#[derive(Debug)]
pub struct Outcome {
    /// The engine's id.
    pub id: MsgId,
    /// What happened.
    pub result: SendResult,
}

/// Why a link closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// gimmm is shutting down, or the engine asked ([`LinkCmd::Close`]).
    Shutdown,
    /// The engine is gone.
    EngineGone,
    /// FCM ended the connection cleanly (after draining, or at will).
    PeerClosed,
    /// The connection failed: I/O error, reset, TLS error.
    Io(String),
    /// Nothing arrived from the peer (`"CCS"`, `"FCM"`) for too long.
    Silent {
        /// Who was silent.
        peer: &'static str,
        /// For how long.
        for_: Duration,
    },
    /// FCM sent something gimmm cannot continue after (bad XML, stream
    /// error, protocol violation).
    Protocol(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Shutdown => f.write_str("shutdown"),
            CloseReason::EngineGone => f.write_str("engine stopped"),
            CloseReason::PeerClosed => f.write_str("closed by FCM"),
            CloseReason::Io(e) => write!(f, "connection failed: {e}"),
            CloseReason::Silent { peer, for_ } => write!(f, "no data from {peer} for {for_:?}"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// What a link tells the engine.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connecting failed; the link keeps trying. `auth` when FCM refused
    /// the credentials (shown in `/readyz`).
    ConnectFailed {
        /// Link.
        link: LinkId,
        /// Why (never contains a secret).
        error: String,
        /// FCM refused the credentials.
        auth: bool,
    },
    /// The link takes messages, at most `capacity` at once.
    Ready {
        /// Link.
        link: LinkId,
        /// Messages it can hold at once.
        capacity: usize,
    },
    /// The capacity changed (e.g. the server's stream limit); 0 while the
    /// link cannot send (an authentication problem).
    Capacity {
        /// Link.
        link: LinkId,
        /// Messages it can hold at once.
        capacity: usize,
    },
    /// The credentials stopped working while connected (HTTP v1: the token
    /// endpoint or FCM refuse them); messages stay queued.
    AuthFailed {
        /// Link.
        link: LinkId,
        /// Why (never contains a secret).
        error: String,
    },
    /// The outcome of one message sent on this link.
    Outcome {
        /// Link.
        link: LinkId,
        /// The outcome.
        outcome: Outcome,
    },
    /// A device sent a message (XMPP upstream).
    Upstream {
        /// Link it arrived on (the ack goes back there).
        link: LinkId,
        /// To acknowledge it once stored.
        token: UpstreamToken,
        /// Parsed.
        upstream: fcm::Upstream,
        /// The JSON as received, for the BAL.
        raw: String,
    },
    /// A delivery receipt (XMPP).
    Receipt {
        /// Link it arrived on.
        link: LinkId,
        /// To acknowledge it once stored.
        token: UpstreamToken,
        /// Parsed.
        receipt: fcm::Receipt,
        /// The JSON as received, for the BAL.
        raw: String,
    },
    /// FCM asked to move: send nothing more on this link; it keeps
    /// delivering outcomes until it closes.
    Draining {
        /// Link.
        link: LinkId,
    },
    /// The link ended; its task is gone. Sent exactly once.
    Closed {
        /// Link.
        link: LinkId,
        /// Why.
        reason: CloseReason,
    },
}

/// The engine's handle to a link.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    tx: mpsc::UnboundedSender<LinkCmd>,
}

impl LinkHandle {
    /// A handle and the command stream the link reads.
    pub fn channel() -> (LinkHandle, mpsc::UnboundedReceiver<LinkCmd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (LinkHandle { tx }, rx)
    }

    /// Sends a command; false when the link is gone (its `Closed` follows
    /// or came already).
    pub fn send(&self, cmd: LinkCmd) -> bool {
        self.tx.send(cmd).is_ok()
    }
}

/// Where a link sends its events.
pub type LinkEvents = mpsc::UnboundedSender<LinkEvent>;

/// Builds links of one kind (chosen by config: XMPP or HTTP v1; a scripted
/// one in tests).
pub trait LinkFactory: Send + Sync {
    /// Starts link `id`: after `delay` it connects, then reports on
    /// `events` until it sends [`LinkEvent::Closed`]. It closes cleanly on
    /// [`LinkCmd::Close`] or when the engine drops the handle; `stop`
    /// aborts it at once (a second signal, a deadline passed) — it still
    /// reports `Closed`.
    fn spawn(
        &self,
        id: LinkId,
        delay: Duration,
        events: LinkEvents,
        stop: CancellationToken,
    ) -> LinkHandle;

    /// What kind of link this is, for logs and the admin API ("xmpp",
    /// "http_v1").
    fn kind(&self) -> &'static str;

    /// What the logs call the other end ("CCS", "FCM").
    fn peer(&self) -> &'static str;
}
