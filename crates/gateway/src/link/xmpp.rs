//! The XMPP (CCS) link (SPEC §4): one CCS connection behind the
//! [`super`] interface. It owns everything CCS: direct TLS and XMPP
//! negotiation, reading and writing stanzas, whitespace keepalive, the
//! window of `max_pending_per_connection` (announced as the link's
//! capacity), matching acks and nacks to messages by CCS `message_id`,
//! CONNECTION_DRAINING, and the acks of upstream messages and receipts.
//!
//! A link task lives for one connection: it connects (retrying with
//! backoff; slowly after an authentication failure), reports `Ready`, runs
//! until the connection ends, reports `Closed` and exits. The engine
//! decides whether to open a replacement.
//!
//! CCS matches answers by `message_id` alone, so two messages with the same
//! id (from different BAL sessions) must never be in flight on one
//! connection: the second waits in the link until the first is answered.

use super::{
    CloseReason, Failure, FailureClass, LinkCmd, LinkEvent, LinkEvents, LinkFactory, LinkHandle,
    LinkId, MsgId, Outcome, Outgoing, SendResult, UpstreamToken,
};
use crate::backoff::Backoff;
use fcm::{ErrorCode, Inbound, RetryClass};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xmpp::connect::Connector;
use xmpp::negotiate::ClientParams;
use xmpp::reader::Event;
use xmpp::stream::XmppStream;

/// What an XMPP link needs to connect.
#[derive(Clone)]
pub struct XmppParams {
    /// CCS host.
    pub host: String,
    /// CCS port.
    pub port: u16,
    /// TLS connector.
    pub connector: Arc<dyn Connector>,
    /// `<sender_id>@<auth_domain>`.
    pub username: String,
    /// Server key.
    pub password: crate::config::Secret,
    /// Stream `to` (the auth domain).
    pub domain: String,
    /// Whitespace ping interval; silence for 3x this is a dead link.
    pub keepalive: Duration,
    /// Largest stanza accepted.
    pub max_stanza_bytes: usize,
    /// CCS's flow-control window (the link's capacity).
    pub window: usize,
    /// Reconnect backoff after a failed connect.
    pub connect_backoff: Backoff,
    /// Backoff after an authentication failure (long).
    pub auth_backoff: Backoff,
}

/// Builds XMPP links.
pub struct XmppLinkFactory {
    params: XmppParams,
}

impl XmppLinkFactory {
    /// A factory for links with these parameters.
    pub fn new(params: XmppParams) -> XmppLinkFactory {
        XmppLinkFactory { params }
    }
}

impl LinkFactory for XmppLinkFactory {
    fn spawn(
        &self,
        id: LinkId,
        delay: Duration,
        events: LinkEvents,
        stop: CancellationToken,
    ) -> LinkHandle {
        let (handle, rx) = LinkHandle::channel();
        tokio::spawn(run(id, self.params.clone(), delay, rx, events, stop));
        handle
    }

    fn kind(&self) -> &'static str {
        "xmpp"
    }

    fn peer(&self) -> &'static str {
        "CCS"
    }
}

async fn run(
    id: LinkId,
    mut p: XmppParams,
    initial_delay: Duration,
    mut cmds: mpsc::UnboundedReceiver<LinkCmd>,
    events: LinkEvents,
    stop: CancellationToken,
) {
    let mut delay = initial_delay;
    let mut auth_logged = false;
    let stream = loop {
        // While connecting, only a Close (or the engine going away) matters.
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return closed(&events, id, CloseReason::Shutdown),
                why = closing_cmd(&mut cmds) => return closed(&events, id, why),
            }
        }
        let attempt = tokio::select! {
            r = connect(&p) => r,
            _ = stop.cancelled() => return closed(&events, id, CloseReason::Shutdown),
            why = closing_cmd(&mut cmds) => return closed(&events, id, why),
        };
        match attempt {
            Ok(s) => break s,
            Err(e) => {
                let auth = matches!(e, xmpp::XmppError::AuthFailed(_));
                delay = if auth {
                    p.auth_backoff.next_delay()
                } else {
                    p.connect_backoff.next_delay()
                };
                let error = e.to_string();
                if auth && !auth_logged {
                    // Said once per link; /readyz and the metrics keep saying it.
                    auth_logged = true;
                    tracing::error!(link = id, retry_in = ?delay, "FCM rejected the credentials (SASL failure): {error}");
                } else if auth {
                    tracing::debug!(link = id, retry_in = ?delay, "FCM still rejects the credentials");
                } else {
                    tracing::warn!(link = id, retry_in = ?delay, "CCS connect failed: {error}");
                }
                let _ = events.send(LinkEvent::ConnectFailed {
                    link: id,
                    error,
                    auth,
                });
            }
        }
    };
    tracing::debug!(link = id, "CCS link ready");
    let _ = events.send(LinkEvent::Ready {
        link: id,
        capacity: p.window,
    });
    let mut conn = Conn {
        id,
        events: &events,
        wire: HashMap::new(),
        held: VecDeque::new(),
        garbage_log: crate::lograte::LogLimit::new(crate::lograte::WARN_EVERY_MS),
    };
    let reason = conn.serve(&p, stream, &mut cmds, &stop).await;
    tracing::debug!(link = id, %reason, "CCS link closed");
    let _ = events.send(LinkEvent::Closed { link: id, reason });
}

/// Reports a link that ends before it was ever ready.
fn closed(events: &LinkEvents, id: LinkId, reason: CloseReason) {
    let _ = events.send(LinkEvent::Closed { link: id, reason });
}

/// Waits for a reason to stop before the link is ready: a Close, or the
/// engine dropping its handle. Other commands cannot come yet (the engine
/// sends only to ready links) and are dropped.
async fn closing_cmd(cmds: &mut mpsc::UnboundedReceiver<LinkCmd>) -> CloseReason {
    loop {
        match cmds.recv().await {
            Some(LinkCmd::Close) => return CloseReason::Shutdown,
            Some(_) => {}
            None => return CloseReason::EngineGone,
        }
    }
}

/// How long a closing link waits for CCS's stream end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

async fn connect(p: &XmppParams) -> Result<XmppStream<xmpp::connect::BoxStream>, xmpp::XmppError> {
    let io = tokio::time::timeout(
        Duration::from_secs(30),
        p.connector.connect(&p.host, p.port),
    )
    .await
    .map_err(|_| xmpp::XmppError::Protocol("connect timed out".into()))??;
    let mut s = XmppStream::new(io, p.max_stanza_bytes);
    let params = ClientParams {
        to: p.domain.clone(),
        username: p.username.clone(),
        password: p.password.expose().to_string(),
        resource: None,
    };
    tokio::time::timeout(Duration::from_secs(30), s.negotiate_client(params))
        .await
        .map_err(|_| xmpp::XmppError::Protocol("negotiation timed out".into()))??;
    Ok(s)
}

/// One ready connection's state.
struct Conn<'a> {
    id: LinkId,
    events: &'a LinkEvents,
    /// Messages written and not answered, by CCS message id.
    wire: HashMap<Arc<str>, MsgId>,
    /// Messages whose id is already on the wire: sent once it is answered.
    held: VecDeque<Outgoing>,
    /// CCS can make this warning repeat.
    garbage_log: crate::lograte::LogLimit,
}

/// How a stream ended on the reading side.
enum ReadEnd {
    /// `</stream:stream>` from CCS.
    StreamEnd,
    /// Anything else.
    Failed(CloseReason),
}

impl Conn<'_> {
    /// Runs the connection until it ends; returns why.
    async fn serve(
        &mut self,
        p: &XmppParams,
        stream: XmppStream<xmpp::connect::BoxStream>,
        cmds: &mut mpsc::UnboundedReceiver<LinkCmd>,
        stop: &CancellationToken,
    ) -> CloseReason {
        let (io, mut reader) = stream.into_parts();
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut rbuf = vec![0u8; 64 * 1024];
        let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        let mut tick = tokio::time::interval(
            p.keepalive
                .min(Duration::from_secs(5))
                .max(Duration::from_millis(100)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a Close: our stream end is written; CCS answers what it
        // had, then its stream end.
        let mut closing = false;
        let mut close_deadline = Instant::now();

        // Stanzas the reader already buffered during negotiation.
        out.clear();
        if let Err(end) = self.drain_events(&mut reader, &mut out) {
            return self.end_reason(end, closing, &mut wr).await;
        }
        loop {
            if !out.is_empty() {
                // Held messages released by answers, written right away.
                if let Err(e) = write_all(&mut wr, &out).await {
                    return CloseReason::Io(format!("write failed: {e}"));
                }
                out.clear();
                last_write = Instant::now();
            }
            tokio::select! {
                cmd = cmds.recv(), if !closing => {
                    let Some(cmd) = cmd else {
                        // The engine is gone: close cleanly.
                        let _ = write_all(&mut wr, xmpp::writer::STREAM_END.as_bytes()).await;
                        return CloseReason::EngineGone;
                    };
                    let mut close = self.encode(cmd, &mut out);
                    // Coalesce whatever else is queued into the same write.
                    while !close && out.len() < 256 * 1024 {
                        match cmds.try_recv() {
                            Ok(c) => close = self.encode(c, &mut out),
                            Err(_) => break,
                        }
                    }
                    if close {
                        out.extend_from_slice(xmpp::writer::STREAM_END.as_bytes());
                        closing = true;
                        close_deadline = Instant::now() + CLOSE_WAIT;
                    }
                    if let Err(e) = write_all(&mut wr, &out).await {
                        return CloseReason::Io(format!("write failed: {e}"));
                    }
                    out.clear();
                    last_write = Instant::now();
                }
                r = rd.read(&mut rbuf) => {
                    match r {
                        Ok(0) => return if closing { CloseReason::Shutdown } else { CloseReason::PeerClosed },
                        Ok(n) => {
                            last_read = Instant::now();
                            reader.feed(&rbuf[..n]);
                            if let Err(end) = self.drain_events(&mut reader, &mut out) {
                                return self.end_reason(end, closing, &mut wr).await;
                            }
                        }
                        Err(e) => return CloseReason::Io(format!("read failed: {e}")),
                    }
                }
                _ = tick.tick() => {
                    if last_read.elapsed() > p.keepalive * 3 {
                        return CloseReason::Silent { peer: "CCS", for_: last_read.elapsed() };
                    }
                    if !closing && last_write.elapsed() >= p.keepalive {
                        if let Err(e) = write_all(&mut wr, xmpp::writer::KEEPALIVE).await {
                            return CloseReason::Io(format!("keepalive failed: {e}"));
                        }
                        last_write = Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(close_deadline), if closing => {
                    return CloseReason::Shutdown;
                }
                _ = stop.cancelled() => {
                    if !closing {
                        let _ = write_all(&mut wr, xmpp::writer::STREAM_END.as_bytes()).await;
                    }
                    return CloseReason::Shutdown;
                }
            }
        }
    }

    /// Why the connection ends when the reader stops; answers CCS's stream
    /// end with ours.
    async fn end_reason(
        &self,
        end: ReadEnd,
        closing: bool,
        wr: &mut (impl AsyncWriteExt + Unpin),
    ) -> CloseReason {
        match end {
            ReadEnd::StreamEnd => {
                if !closing {
                    let _ = write_all(wr, xmpp::writer::STREAM_END.as_bytes()).await;
                    CloseReason::PeerClosed
                } else {
                    CloseReason::Shutdown
                }
            }
            ReadEnd::Failed(r) => r,
        }
    }

    /// Appends a command's stanzas to `out`; true for `Close`.
    fn encode(&mut self, cmd: LinkCmd, out: &mut Vec<u8>) -> bool {
        match cmd {
            LinkCmd::Send(msgs) => {
                for m in msgs {
                    self.write_or_hold(m, out);
                }
                false
            }
            LinkCmd::AckUpstream(t) => {
                xmpp::writer::append_gcm_message(
                    out,
                    None,
                    &fcm::app_ack_json(&t.from, &t.message_id),
                );
                false
            }
            LinkCmd::Close => true,
        }
    }

    fn write_or_hold(&mut self, m: Outgoing, out: &mut Vec<u8>) {
        if self.wire.contains_key(&m.message_id) {
            self.held.push_back(m);
            return;
        }
        xmpp::writer::append_gcm_message(out, None, &m.body);
        self.wire.insert(m.message_id, m.id);
    }

    /// The message answered under `message_id`, if it is ours; releases a
    /// held message with the same id into `out`.
    fn answered(&mut self, message_id: &str, out: &mut Vec<u8>) -> Option<MsgId> {
        let id = self.wire.remove(message_id)?;
        if let Some(pos) = self.held.iter().position(|m| &*m.message_id == message_id) {
            if let Some(m) = self.held.remove(pos) {
                self.write_or_hold(m, out);
            }
        }
        Some(id)
    }

    fn outcome(&self, id: MsgId, result: SendResult) {
        let _ = self.events.send(LinkEvent::Outcome {
            link: self.id,
            outcome: Outcome { id, result },
        });
    }

    /// Hands every complete stanza to the engine; released held messages go
    /// to `out`. `Err` when the stream ended.
    fn drain_events(
        &mut self,
        reader: &mut xmpp::reader::StanzaReader,
        out: &mut Vec<u8>,
    ) -> Result<(), ReadEnd> {
        loop {
            match reader.next_event() {
                Ok(None) => return Ok(()),
                Ok(Some(Event::Message(m))) => {
                    let Some(raw) = m.gcm else { continue };
                    match fcm::parse_inbound(&raw) {
                        Ok(msg) => self.inbound(msg, raw, out),
                        Err(e) => {
                            if let Some(more) = self.garbage_log.allow(crate::lograte::tokio_ms()) {
                                tracing::warn!(link = self.id, error = %e, suppressed = more, "ignoring unparseable message from CCS");
                            }
                        }
                    }
                }
                Ok(Some(Event::StreamEnd)) => return Err(ReadEnd::StreamEnd),
                Ok(Some(Event::StreamError { condition, text })) => {
                    return Err(ReadEnd::Failed(CloseReason::Protocol(format!(
                        "stream error from CCS: {condition}{}",
                        text.map(|t| format!(" ({t})")).unwrap_or_default()
                    ))))
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    return Err(ReadEnd::Failed(CloseReason::Protocol(format!(
                        "bad data from CCS: {e}"
                    ))))
                }
            }
        }
    }

    fn inbound(&mut self, msg: Inbound, raw: String, out: &mut Vec<u8>) {
        match msg {
            Inbound::Ack(a) => match self.answered(&a.message_id, out) {
                Some(id) => self.outcome(id, SendResult::Delivered { raw }),
                None => {
                    tracing::debug!(link = self.id, message_id = %a.message_id, "ack for a message not in flight")
                }
            },
            Inbound::Nack(n) => {
                let Some(id) = self.answered(&n.message_id, out) else {
                    tracing::debug!(link = self.id, message_id = %n.message_id, "nack for a message not in flight");
                    return;
                };
                metrics::counter!(crate::metrics::NACKS, "code" => n.error.as_str().to_string())
                    .increment(1);
                self.outcome(
                    id,
                    SendResult::Failed(nack_failure(&n.error, n.error_description)),
                );
            }
            Inbound::Upstream(u) => {
                let token = UpstreamToken {
                    from: u.from.clone(),
                    message_id: u.message_id.clone(),
                };
                let _ = self.events.send(LinkEvent::Upstream {
                    link: self.id,
                    token,
                    upstream: u,
                    raw,
                });
            }
            Inbound::Receipt(r) => {
                let token = UpstreamToken {
                    from: r.from.clone().unwrap_or_default(),
                    message_id: r.message_id.clone(),
                };
                let _ = self.events.send(LinkEvent::Receipt {
                    link: self.id,
                    token,
                    receipt: r,
                    raw,
                });
            }
            Inbound::Control(c) if c.is_connection_draining() => {
                tracing::debug!(link = self.id, "CONNECTION_DRAINING");
                let _ = self.events.send(LinkEvent::Draining { link: self.id });
            }
            Inbound::Control(c) => {
                tracing::debug!(link = self.id, control = ?c.control_type, "control message");
            }
        }
    }
}

/// What a CCS nack means for the message (SPEC §4's nack table).
pub fn nack_failure(code: &ErrorCode, description: Option<String>) -> Failure {
    let class = match code.retry_class() {
        RetryClass::Final => FailureClass::Final,
        RetryClass::Retry => FailureClass::Retry {
            after: None,
            target_backoff: false,
        },
        RetryClass::RetryAfterTargetBackoff => FailureClass::Retry {
            after: None,
            target_backoff: true,
        },
    };
    Failure {
        class,
        code: code.as_str().to_string(),
        detail: description.unwrap_or_default(),
        http: None,
    }
}

async fn write_all(wr: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nack_classes() {
        let f = nack_failure(&ErrorCode::BadRegistration, Some("x".into()));
        assert_eq!(f.class, FailureClass::Final);
        assert_eq!(
            (f.code.as_str(), f.detail.as_str()),
            ("BAD_REGISTRATION", "x")
        );
        assert_eq!(
            nack_failure(&ErrorCode::ServiceUnavailable, None).class,
            FailureClass::Retry {
                after: None,
                target_backoff: false
            }
        );
        assert_eq!(
            nack_failure(&ErrorCode::DeviceMessageRateExceeded, None).class,
            FailureClass::Retry {
                after: None,
                target_backoff: true
            }
        );
        assert_eq!(
            nack_failure(&ErrorCode::Unknown("NEW_CODE".into()), None).class,
            FailureClass::Final
        );
    }
}
