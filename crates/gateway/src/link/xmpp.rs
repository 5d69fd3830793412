//! A link: one CCS connection (SPEC §4). It owns the socket — direct TLS,
//! XMPP negotiation, reading and writing stanzas, keepalive — and knows
//! nothing about BALs or the store. The engine talks to it with
//! [`LinkCmd`]s and hears [`LinkEvent`]s.
//!
//! A link task lives for one connection: it connects (retrying with
//! backoff; slowly after an authentication failure), reports `Ready`, runs
//! until the connection ends, reports `Closed` and exits. The engine
//! decides whether to open a replacement.

use crate::backoff::Backoff;
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

/// Identifies a link for its whole life.
pub type LinkId = u64;

/// What a link needs to connect.
#[derive(Clone)]
pub struct LinkParams {
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
    /// Reconnect backoff after a failed connect.
    pub connect_backoff: Backoff,
    /// Backoff after an authentication failure (long).
    pub auth_backoff: Backoff,
}

/// Commands from the engine.
#[derive(Debug)]
pub enum LinkCmd {
    /// Send these downstream messages (JSON bodies).
    Send(Vec<Arc<str>>),
    /// Ack an upstream message or receipt to FCM.
    AckFcm {
        /// The device token (upstream `from`).
        to: String,
        /// The upstream message id.
        message_id: String,
    },
    /// Close the stream cleanly.
    Close,
}

/// Events to the engine.
#[derive(Debug)]
pub enum LinkEvent {
    /// The link is negotiating (again).
    Connecting(LinkId),
    /// Negotiation finished; the link takes messages.
    Ready(LinkId),
    /// Connecting failed; `auth` when FCM refused the credentials.
    ConnectFailed {
        /// Link.
        link: LinkId,
        /// Why (never contains the key).
        error: String,
        /// Authentication failure.
        auth: bool,
    },
    /// A message from CCS.
    Inbound {
        /// Link it arrived on.
        link: LinkId,
        /// Parsed message.
        msg: fcm::Inbound,
        /// The JSON as received.
        raw: String,
    },
    /// CONNECTION_DRAINING: send nothing more on this link.
    Draining(LinkId),
    /// The connection ended; the task exits.
    Closed {
        /// Link.
        link: LinkId,
        /// Why.
        reason: String,
    },
}

/// Starts a link task.
pub fn spawn(
    id: LinkId,
    params: LinkParams,
    initial_delay: Duration,
    events: mpsc::UnboundedSender<LinkEvent>,
    shutdown: CancellationToken,
) -> mpsc::UnboundedSender<LinkCmd> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(id, params, initial_delay, rx, events, shutdown));
    tx
}

async fn run(
    id: LinkId,
    mut p: LinkParams,
    initial_delay: Duration,
    mut cmds: mpsc::UnboundedReceiver<LinkCmd>,
    events: mpsc::UnboundedSender<LinkEvent>,
    shutdown: CancellationToken,
) {
    let mut delay = initial_delay;
    let mut auth_logged = false;
    let stream = loop {
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return closed(&events, id),
            }
        }
        let _ = events.send(LinkEvent::Connecting(id));
        let attempt = tokio::select! {
            r = connect(&p) => r,
            _ = shutdown.cancelled() => return closed(&events, id),
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
    let _ = events.send(LinkEvent::Ready(id));
    let reason = serve(id, &p, stream, &mut cmds, &events, &shutdown).await;
    tracing::debug!(link = id, %reason, "CCS link closed");
    let _ = events.send(LinkEvent::Closed { link: id, reason });
}

/// Reports a link that ends before it was ever ready (shutdown).
fn closed(events: &mpsc::UnboundedSender<LinkEvent>, id: LinkId) {
    let _ = events.send(LinkEvent::Closed {
        link: id,
        reason: "shutdown".into(),
    });
}

async fn connect(p: &LinkParams) -> Result<XmppStream<xmpp::connect::BoxStream>, xmpp::XmppError> {
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

/// Runs a ready connection until it ends; returns why.
async fn serve(
    id: LinkId,
    p: &LinkParams,
    stream: XmppStream<xmpp::connect::BoxStream>,
    cmds: &mut mpsc::UnboundedReceiver<LinkCmd>,
    events: &mpsc::UnboundedSender<LinkEvent>,
    shutdown: &CancellationToken,
) -> String {
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
    let mut closing = false;

    // Stanzas the reader already buffered during negotiation.
    if let Err(reason) = drain_events(id, &mut reader, events) {
        return reason;
    }
    loop {
        tokio::select! {
            cmd = cmds.recv(), if !closing => {
                let Some(cmd) = cmd else {
                    // The engine is gone: close cleanly.
                    let _ = wr.write_all(xmpp::writer::STREAM_END.as_bytes()).await;
                    let _ = wr.flush().await;
                    return "engine stopped".into();
                };
                out.clear();
                let mut close = encode(cmd, &mut out);
                // Coalesce whatever else is queued into the same write.
                while !close && out.len() < 256 * 1024 {
                    match cmds.try_recv() {
                        Ok(c) => close = encode(c, &mut out),
                        Err(_) => break,
                    }
                }
                if close {
                    out.extend_from_slice(xmpp::writer::STREAM_END.as_bytes());
                    closing = true;
                }
                if let Err(e) = async { wr.write_all(&out).await?; wr.flush().await }.await {
                    return format!("write failed: {e}");
                }
                last_write = Instant::now();
            }
            r = rd.read(&mut rbuf) => {
                match r {
                    Ok(0) => return if closing { "closed".into() } else { "connection closed by CCS".into() },
                    Ok(n) => {
                        last_read = Instant::now();
                        reader.feed(&rbuf[..n]);
                        if let Err(reason) = drain_events(id, &mut reader, events) {
                            if reason == STREAM_END_REASON && !closing {
                                // Answer the peer's stream end with ours.
                                let _ = wr.write_all(xmpp::writer::STREAM_END.as_bytes()).await;
                                let _ = wr.flush().await;
                            }
                            return reason;
                        }
                    }
                    Err(e) => return format!("read failed: {e}"),
                }
            }
            _ = tick.tick() => {
                if last_read.elapsed() > p.keepalive * 3 {
                    return format!("no data from CCS for {:?}", last_read.elapsed());
                }
                if !closing && last_write.elapsed() >= p.keepalive {
                    if let Err(e) = async { wr.write_all(xmpp::writer::KEEPALIVE).await?; wr.flush().await }.await {
                        return format!("keepalive failed: {e}");
                    }
                    last_write = Instant::now();
                }
            }
            _ = shutdown.cancelled(), if !closing => {
                let _ = wr.write_all(xmpp::writer::STREAM_END.as_bytes()).await;
                let _ = wr.flush().await;
                // Give CCS a moment to answer with its stream end.
                let deadline = Instant::now() + Duration::from_secs(2);
                loop {
                    match tokio::time::timeout_at(deadline, rd.read(&mut rbuf)).await {
                        Ok(Ok(n)) if n > 0 => {
                            reader.feed(&rbuf[..n]);
                            if drain_events(id, &mut reader, events).is_err() { break; }
                        }
                        _ => break,
                    }
                }
                return "shutdown".into();
            }
        }
    }
}

const STREAM_END_REASON: &str = "stream closed by CCS";

/// Appends a command's stanza to `out`; true for `Close`.
fn encode(cmd: LinkCmd, out: &mut Vec<u8>) -> bool {
    match cmd {
        LinkCmd::Send(bodies) => {
            for b in bodies {
                xmpp::writer::append_gcm_message(out, None, &b);
            }
            false
        }
        LinkCmd::AckFcm { to, message_id } => {
            xmpp::writer::append_gcm_message(out, None, &fcm::app_ack_json(&to, &message_id));
            false
        }
        LinkCmd::Close => true,
    }
}

/// Hands every complete stanza to the engine. `Err(reason)` when the stream ended.
fn drain_events(
    id: LinkId,
    reader: &mut xmpp::reader::StanzaReader,
    events: &mpsc::UnboundedSender<LinkEvent>,
) -> Result<(), String> {
    loop {
        match reader.next_event() {
            Ok(None) => return Ok(()),
            Ok(Some(Event::Message(m))) => {
                let Some(raw) = m.gcm else { continue };
                match fcm::parse_inbound(&raw) {
                    Ok(fcm::Inbound::Control(c)) if c.is_connection_draining() => {
                        tracing::debug!(link = id, "CONNECTION_DRAINING");
                        let _ = events.send(LinkEvent::Draining(id));
                    }
                    Ok(msg) => {
                        let _ = events.send(LinkEvent::Inbound { link: id, msg, raw });
                    }
                    Err(e) => {
                        tracing::warn!(link = id, error = %e, "ignoring unparseable message from CCS");
                    }
                }
            }
            Ok(Some(Event::StreamEnd)) => return Err(STREAM_END_REASON.into()),
            Ok(Some(Event::StreamError { condition, text })) => {
                return Err(format!(
                    "stream error from CCS: {condition}{}",
                    text.map(|t| format!(" ({t})")).unwrap_or_default()
                ))
            }
            Ok(Some(_)) => {}
            Err(e) => return Err(format!("bad data from CCS: {e}")),
        }
    }
}
