//! One HTTP/2 connection to FCM HTTP v1 (SPEC §8.4), the body of one link.
//!
//! * **Transport**: TCP, TLS (rustls with aws-lc-rs; system roots plus
//!   `ca_file`, like the XMPP link's direct TLS) with ALPN `h2`, then the
//!   `h2` crate's client, driven by this task (no extra task per
//!   connection or request).
//! * **Capacity**: the server's SETTINGS come first in its connection
//!   preface, so the link sends a PING right after the handshake and, once
//!   its PONG is back, knows SETTINGS_MAX_CONCURRENT_STREAMS: the capacity
//!   it announces is min(`max_pending_per_connection`, that limit), updated
//!   when the server changes it. Filling a connection before then would
//!   open streams the server refuses (RST_STREAM REFUSED_STREAM). The
//!   engine never hands a link more than its capacity, and the engine's
//!   links are the pool: `connections` connections, each a link.
//! * **Requests**: one stream per message, `POST
//!   /v1/projects/P/messages:send` with the body of [`fcm::v1::translate`]
//!   (`android.ttl` measured at the send), answered out of order; one
//!   outcome each. A request without an answer after
//!   `request_timeout_secs` is a retry.
//! * **Keepalive**: an HTTP/2 PING every `keepalive_secs`; no PONG within
//!   as long means a dead connection: the link closes and the engine
//!   resends what had no outcome.
//! * **GOAWAY**: the link says `Draining` (the engine opens a replacement at
//!   once), streams at or below `last_stream_id` finish here, the others
//!   fail in h2 and are resent at once; when nothing is left the
//!   connection closes and the link reports `Closed`.
//! * **Tokens and auth** (SPEC §8.3): every request carries the shared
//!   source's current token; a 401 without FcmError asks the source for a
//!   new token and resends the message once with it (not an attempt); a
//!   second 401, or a 403 without FcmError, is an authentication error:
//!   `AuthFailed`, capacity 0, every message goes back to the engine's
//!   queue (none is rejected), and after a backoff the link probes the
//!   credentials with a `validate_only` request of its own (after a 401
//!   with a fresh token); when FCM takes it, capacity comes back. No valid
//!   token at all (the token endpoint failing past expiry) is the same
//!   capacity 0 until one comes.
//! * **Rate limit**: a send waits for the pool's token bucket
//!   ([`super::ratelimit`]).

use super::errors::{self, Mapped, StreamErr};
use super::oauth::{AccessToken, TokenState};
use super::Shared;
use crate::backoff::Backoff;
use crate::link::{
    CloseReason, Failure, FailureClass, LinkCmd, LinkEvent, LinkEvents, LinkId, MsgId, Outcome,
    Outgoing, SendResult,
};
use crate::metrics as m;
use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use h2::client::{Connection, ResponseFuture, SendRequest};
use h2::{Ping, PingPong};
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

/// The base URL of the API (`fcm.endpoint`) or of a token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (no brackets), for TCP and the certificate.
    pub host: String,
    /// Port (443 unless given).
    pub port: u16,
    /// `host[:port]` as in the URL (the `:authority` / `Host`).
    pub authority: String,
    /// The path, without a trailing `/` (`""` for a bare host).
    pub path: String,
}

impl Endpoint {
    /// Parses an `https://` URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url:?} is not an https:// URL"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(format!("{url:?}: a query is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Endpoint {
            host,
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_string(),
            path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The `messages:send` URL of `project`.
    pub fn send_uri(&self, project: &str) -> Result<http::Uri, String> {
        if project.is_empty()
            || !project
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(format!("{project:?} is not a project id"));
        }
        format!(
            "https://{}{}/v1/projects/{project}/messages:send",
            self.authority, self.path
        )
        .parse()
        .map_err(|e| format!("send URL: {e}"))
    }
}

/// rustls client configs for the link (ALPN `h2`) and the token endpoint
/// (ALPN `http/1.1`): the system roots plus `ca_file` plus `extra_ca_pem`
/// (the in-process emulator's CA), aws-lc-rs.
pub fn tls_configs(
    ca_file: Option<&std::path::Path>,
    extra_ca_pem: Option<&[u8]>,
) -> Result<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>), xmpp::XmppError> {
    let mut roots = xmpp::connect::system_roots();
    if let Some(path) = ca_file.filter(|p| !p.as_os_str().is_empty()) {
        let pem = std::fs::read(path).map_err(|e| {
            xmpp::XmppError::Tls(format!("reading CA file {}: {e}", path.display()))
        })?;
        xmpp::connect::add_pem_roots(&mut roots, &pem)?;
    }
    if let Some(pem) = extra_ca_pem {
        xmpp::connect::add_pem_roots(&mut roots, pem)?;
    }
    let base = xmpp::connect::client_config(roots)?;
    let mut h2 = (*base).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let mut h1 = (*base).clone();
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(h2), Arc::new(h1)))
}

type H2Conn = Connection<TlsStream<TcpStream>, Bytes>;

/// A connection whose SETTINGS are known.
pub(super) struct Connected {
    send: SendRequest<Bytes>,
    conn: Pin<Box<H2Conn>>,
    ping: PingPong,
    /// min(max_pending_per_connection, SETTINGS_MAX_CONCURRENT_STREAMS).
    pub(super) capacity: usize,
}

/// TCP, TLS with ALPN h2, the HTTP/2 handshake, and one PING round trip
/// so that the server's SETTINGS are in.
pub(super) async fn connect(sh: &Shared) -> Result<Connected, String> {
    let ep = &sh.params.endpoint;
    let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", ep.authority))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
        .map_err(|e| format!("invalid host {:?}: {e}", ep.host))?;
    let tls = tokio_rustls::TlsConnector::from(sh.params.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {} failed: {e}", ep.authority))?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!(
            "{} did not agree to HTTP/2 (ALPN h2)",
            ep.authority
        ));
    }
    let (send, conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {} failed: {e}", ep.authority))?;
    let mut conn = Box::pin(conn);
    let mut ping = conn
        .ping_pong()
        .ok_or_else(|| "HTTP/2 PING handle unavailable".to_string())?;
    ping.send_ping(Ping::opaque())
        .map_err(|e| format!("HTTP/2 PING: {e}"))?;
    let pong = futures::future::poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Err(match r {
                Ok(()) => "closed by FCM during setup".to_string(),
                Err(e) => format!("HTTP/2 setup: {e}"),
            }));
        }
        ping.poll_pong(cx)
            .map(|r| r.map(|_| ()).map_err(|e| format!("HTTP/2 PING: {e}")))
    })
    .await;
    pong?;
    let limit = send.current_max_send_streams();
    Ok(Connected {
        capacity: sh.params.max_pending.min(limit),
        send,
        conn,
        ping,
    })
}

/// A message the link holds.
struct Pending {
    out: Outgoing,
    /// Resent once already after a 401 and a token refresh.
    refreshed: bool,
}

/// An answer as read off the stream.
struct Answer {
    status: u16,
    retry_after: Option<HeaderValue>,
    body: Bytes,
}

enum ReqError {
    Timeout,
    H2(h2::Error),
}

/// A finished request.
struct Done {
    /// The message; `None` for a credentials probe.
    p: Option<Pending>,
    /// The token generation it was sent with.
    generation: u64,
    result: Result<Answer, ReqError>,
}

type ReqFuture = Pin<Box<dyn Future<Output = Done> + Send>>;

/// Error bodies beyond this are not read further (only the start matters).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long a closing link waits for the answers in flight.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long a finished connection may take to close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

async fn exchange(resp: ResponseFuture, timeout: Duration) -> Result<Answer, ReqError> {
    let read = async move {
        let resp = resp.await?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get(RETRY_AFTER).cloned();
        let mut body = resp.into_body();
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        let mut total = 0usize;
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            // Keep the connection's receive window open.
            let _ = body.flow_control().release_capacity(chunk.len());
            total += chunk.len();
            match (&mut first, &mut more) {
                (None, _) => first = Some(chunk),
                (Some(f), None) => {
                    let mut b = BytesMut::with_capacity(f.len() + chunk.len());
                    b.extend_from_slice(f);
                    b.extend_from_slice(&chunk);
                    more = Some(b);
                }
                (_, Some(b)) => b.extend_from_slice(&chunk),
            }
            if total > MAX_ANSWER_BYTES {
                break;
            }
        }
        let body = match more {
            Some(b) => b.freeze(),
            None => first.unwrap_or_default(),
        };
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r.map_err(ReqError::H2),
        Err(_) => Err(ReqError::Timeout),
    }
}

/// What the connection said, polled next to everything else.
enum ConnEv {
    /// The connection ended.
    Ended(Result<(), h2::Error>),
    /// New streams are refused: GOAWAY from FCM.
    GoAway,
    /// New streams are refused: the connection broke.
    Broken,
    /// A stream slot h2 was waiting for is free.
    Unstalled,
}

/// Why the link cannot take messages now (announced as capacity 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 401 without FcmError, again after a token refresh.
    Unauthorized,
    /// 403 without FcmError.
    Forbidden,
}

/// FCM refuses the credentials: the link probes them now and then.
struct Block {
    kind: Refusal,
    /// When to probe next (`None` while a probe is on its way).
    at: Option<Instant>,
    /// Probing after a 401 waits for a token newer than this.
    after_generation: Option<u64>,
}

/// The request body of a credentials probe: validated by FCM, sent to
/// nobody (`validate_only`), so it costs no message and no delivery.
const PROBE_BODY: &[u8] =
    br#"{"message":{"topic":"gimmm-credentials-probe"},"validate_only":true}"#;

/// Small cache of `gimmm_fcm_http_responses_total` handles by status.
#[derive(Default)]
struct StatusCounters(Vec<(u16, metrics::Counter)>);

impl StatusCounters {
    fn inc(&mut self, status: u16) {
        if let Some((_, c)) = self.0.iter().find(|(s, _)| *s == status) {
            c.increment(1);
            return;
        }
        let c = metrics::counter!(m::FCM_HTTP_RESPONSES, "status" => status.to_string());
        c.increment(1);
        self.0.push((status, c));
    }
}

/// One ready connection's state.
struct Link<'a> {
    id: LinkId,
    sh: &'a Shared,
    events: &'a LinkEvents,
    /// `None` once the link stops sending (closing, drained): dropping it
    /// lets h2 close the connection.
    send: Option<SendRequest<Bytes>>,
    inflight: FuturesUnordered<ReqFuture>,
    /// Handed over by the engine, waiting for the rate limiter or a stream
    /// slot.
    waiting: VecDeque<Pending>,
    /// Answered 401, waiting for a newer token.
    refresh_wait: Vec<Pending>,
    /// Messages whose connection broke (no outcome: the engine resends
    /// them when the link closes).
    lost: usize,
    token: Option<AccessToken>,
    /// min(configured, server limit).
    capacity: usize,
    /// What the engine was last told.
    announced: usize,
    block: Option<Block>,
    auth_backoff: Backoff,
    no_token: bool,
    draining: bool,
    closing: bool,
    stalled: bool,
    rl_wake: Option<Instant>,
    statuses: StatusCounters,
    gauge: Arc<AtomicUsize>,
}

/// What a link task hands its connection.
pub(super) struct Io<'a> {
    /// The shared token source's changes.
    pub(super) tokens: &'a mut watch::Receiver<TokenState>,
    /// The engine's commands.
    pub(super) cmds: &'a mut mpsc::UnboundedReceiver<LinkCmd>,
    /// Where events go.
    pub(super) events: &'a LinkEvents,
    /// Aborts the link.
    pub(super) stop: &'a CancellationToken,
    /// This link's `gimmm_fcm_streams_in_flight`.
    pub(super) gauge: Arc<AtomicUsize>,
}

/// Runs a ready connection until it ends; returns why.
pub(super) async fn serve(
    id: LinkId,
    sh: &Shared,
    c: Connected,
    token: AccessToken,
    io: Io<'_>,
) -> CloseReason {
    let Io {
        tokens,
        cmds,
        events,
        stop,
        gauge,
    } = io;
    let Connected {
        send,
        mut conn,
        mut ping,
        capacity,
    } = c;
    let mut link = Link {
        id,
        sh,
        events,
        send: Some(send),
        inflight: FuturesUnordered::new(),
        waiting: VecDeque::new(),
        refresh_wait: Vec::new(),
        lost: 0,
        token: Some(token),
        capacity,
        announced: capacity,
        block: None,
        auth_backoff: sh.params.auth_backoff.clone(),
        no_token: false,
        draining: false,
        closing: false,
        stalled: false,
        rl_wake: None,
        statuses: StatusCounters::default(),
        gauge,
    };
    let keepalive = sh.params.keepalive;
    let mut tick = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_sent: Option<Instant> = None;
    let mut close_deadline: Option<Instant> = None;
    let mut conn_ended: Option<Result<(), h2::Error>> = None;
    // A far deadline for disabled timer branches.
    let far = || Instant::now() + Duration::from_secs(86_400 * 365);

    let reason = loop {
        link.pump();
        if link.send.is_some() && link.finished() {
            // Draining or closing, nothing left: let h2 close it.
            link.send = None;
            close_deadline = Some(Instant::now() + SHUTDOWN_WAIT);
        }
        let watch_send = link.send.is_some() && !link.draining;
        let stalled = link.stalled;
        let rl_wake = link.rl_wake;
        let probe_at = link.probe_at();
        tokio::select! {
            biased;
            Some(d) = link.inflight.next(), if !link.inflight.is_empty() => {
                link.done(d);
                // Everything else already answered, in the same turn.
                while let Some(Some(d)) = link.inflight.next().now_or_never() {
                    link.done(d);
                }
                link.gauge.store(link.inflight.len(), Ordering::Relaxed);
                link.check_capacity();
            }
            ev = futures::future::poll_fn(|cx| poll_conn(conn.as_mut(), link.send.as_mut(), watch_send, stalled, cx)) => match ev {
                ConnEv::Ended(r) => {
                    conn_ended = Some(r);
                    break None;
                }
                ConnEv::GoAway => link.start_draining(),
                ConnEv::Broken => {
                    // The connection's end follows; nothing more is sent.
                    link.draining = true;
                    link.resend_held("the connection to FCM broke");
                }
                ConnEv::Unstalled => link.stalled = false,
            },
            cmd = cmds.recv(), if !link.closing => {
                let Some(cmd) = cmd else {
                    link.start_closing();
                    close_deadline = Some(Instant::now() + CLOSE_WAIT);
                    continue;
                };
                let mut close = link.command(cmd);
                while !close {
                    match cmds.try_recv() {
                        Ok(c) => close = link.command(c),
                        Err(_) => break,
                    }
                }
                if close {
                    link.start_closing();
                    close_deadline = Some(Instant::now() + CLOSE_WAIT);
                }
            }
            r = futures::future::poll_fn(|cx| ping.poll_pong(cx)), if ping_sent.is_some() => {
                match r {
                    Ok(_) => {
                        ping_sent = None;
                        link.check_capacity();
                    }
                    // The connection's end follows.
                    Err(e) => tracing::debug!(link = id, error = %e, "HTTP/2 PING failed"),
                }
            }
            // The tick's own (scheduled) instant marks the PING, so the
            // next tick sees a full interval without a PONG.
            t = tick.tick() => match ping_sent {
                Some(at) if at.elapsed() >= keepalive => {
                    break Some(CloseReason::Silent { peer: "FCM", for_: at.elapsed() });
                }
                Some(_) => {}
                None => {
                    if ping.send_ping(Ping::opaque()).is_ok() {
                        ping_sent = Some(t);
                    }
                }
            },
            r = tokens.changed() => {
                if r.is_err() {
                    // The token source is gone (gimmm is stopping).
                    link.start_closing();
                    close_deadline = Some(Instant::now() + CLOSE_WAIT);
                } else {
                    let st = tokens.borrow_and_update().clone();
                    link.on_token(st);
                }
            }
            _ = tokio::time::sleep_until(rl_wake.unwrap_or_else(far)), if rl_wake.is_some() => {
                link.rl_wake = None;
            }
            _ = tokio::time::sleep_until(probe_at.unwrap_or_else(far)), if probe_at.is_some() => {
                link.probe_due();
            }
            _ = tokio::time::sleep_until(close_deadline.unwrap_or_else(far)), if close_deadline.is_some() => {
                break Some(if link.closing { CloseReason::Shutdown } else { CloseReason::PeerClosed });
            }
            _ = stop.cancelled() => break Some(CloseReason::Shutdown),
        }
    };
    let reason = match reason {
        Some(r) => r,
        None => {
            // The connection ended: answers already read still count, the
            // rest had none (the engine resends them).
            let deadline = Instant::now() + SHUTDOWN_WAIT;
            while !link.inflight.is_empty() {
                match tokio::time::timeout_at(deadline, link.inflight.next()).await {
                    Ok(Some(d)) => link.done(d),
                    _ => break,
                }
            }
            match conn_ended {
                Some(Err(e)) if e.is_io() => CloseReason::Io(e.to_string()),
                Some(Err(e))
                    if !(e.is_go_away()
                        && e.is_remote()
                        && e.reason() == Some(h2::Reason::NO_ERROR)) =>
                {
                    CloseReason::Protocol(format!("HTTP/2: {e}"))
                }
                _ if link.closing => CloseReason::Shutdown,
                _ => CloseReason::PeerClosed,
            }
        }
    };
    link.gauge.store(0, Ordering::Relaxed);
    if link.lost > 0 || !link.inflight.is_empty() {
        tracing::debug!(
            link = id,
            lost = link.lost + link.inflight.len(),
            "requests without an answer go back to the queue"
        );
    }
    reason
}

fn poll_conn(
    conn: Pin<&mut H2Conn>,
    send: Option<&mut SendRequest<Bytes>>,
    watch_send: bool,
    stalled: bool,
    cx: &mut Context<'_>,
) -> Poll<ConnEv> {
    if let Poll::Ready(r) = conn.poll(cx) {
        return Poll::Ready(ConnEv::Ended(r));
    }
    // h2 reports a GOAWAY (or a broken connection) to new streams only:
    // look right after the connection processed its frames.
    if let (true, Some(send)) = (watch_send, send) {
        match send.poll_ready(cx) {
            Poll::Ready(Err(e)) if e.is_go_away() && e.is_remote() => {
                return Poll::Ready(ConnEv::GoAway)
            }
            Poll::Ready(Err(_)) => return Poll::Ready(ConnEv::Broken),
            Poll::Ready(Ok(())) if stalled => return Poll::Ready(ConnEv::Unstalled),
            _ => {}
        }
    }
    Poll::Pending
}

/// Can a stream be opened now (h2 queues at most one over its limit)?
enum SlotState {
    Free,
    Busy,
    Refused,
}

fn slot(send: &mut SendRequest<Bytes>) -> SlotState {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match send.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => SlotState::Free,
        // The GOAWAY or the broken connection is reported by poll_conn.
        Poll::Ready(Err(_)) => SlotState::Refused,
        Poll::Pending => SlotState::Busy,
    }
}

impl Link<'_> {
    fn outcome(&self, id: MsgId, result: SendResult) {
        let _ = self.events.send(LinkEvent::Outcome {
            link: self.id,
            outcome: Outcome { id, result },
        });
    }

    fn fail(&self, id: MsgId, f: Failure) {
        self.outcome(id, SendResult::Failed(f));
    }

    /// Takes a command; true for `Close`.
    fn command(&mut self, cmd: LinkCmd) -> bool {
        match cmd {
            LinkCmd::Send(msgs) => {
                let refuse = self.draining || self.closing || self.send.is_none();
                for out in msgs {
                    if refuse {
                        // Raced with our Draining: never sent.
                        self.fail(out.id, errors::resend("the connection is draining"));
                    } else if self.block.is_some() || self.no_token {
                        self.fail(
                            out.id,
                            errors::resend("FCM does not take the credentials now"),
                        );
                    } else {
                        self.waiting.push_back(Pending {
                            out,
                            refreshed: false,
                        });
                    }
                }
                false
            }
            LinkCmd::AckUpstream(_) => {
                // HTTP v1 has no upstream channel.
                false
            }
            LinkCmd::Close => true,
        }
    }

    /// Nothing more to do on this connection (draining or closing).
    fn finished(&self) -> bool {
        (self.draining || self.closing)
            && self.inflight.is_empty()
            && self.waiting.is_empty()
            && self.refresh_wait.is_empty()
    }

    /// Everything the link holds unsent goes back to the engine.
    fn resend_held(&mut self, why: &str) {
        for p in std::mem::take(&mut self.waiting) {
            self.fail(p.out.id, errors::resend(why));
        }
        for p in std::mem::take(&mut self.refresh_wait) {
            self.fail(p.out.id, errors::resend(why));
        }
    }

    fn start_draining(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        tracing::debug!(link = self.id, "GOAWAY from FCM: draining");
        let _ = self.events.send(LinkEvent::Draining { link: self.id });
        self.resend_held("FCM sent GOAWAY");
    }

    fn start_closing(&mut self) {
        self.closing = true;
        self.resend_held("the link is closing");
    }

    /// Starts what waits, within the rate limit and the stream slots.
    fn pump(&mut self) {
        if self.waiting.is_empty() || self.stalled || self.rl_wake.is_some() {
            return;
        }
        let Some(mut send) = self.send.take() else {
            return;
        };
        let now_ms = store::now_ms();
        let mut budget = self.waiting.len();
        if let Some(rl) = &self.sh.limiter {
            budget = rl.take(budget);
            if budget < self.waiting.len() {
                self.rl_wake = Some(Instant::now() + rl.wait());
            }
        }
        while budget > 0 {
            match slot(&mut send) {
                SlotState::Free => {}
                SlotState::Busy => {
                    self.stalled = true;
                    break;
                }
                SlotState::Refused => break,
            }
            let Some(p) = self.waiting.pop_front() else {
                break;
            };
            budget -= 1;
            self.start(&mut send, p, now_ms);
        }
        if budget > 0 {
            if let Some(rl) = &self.sh.limiter {
                rl.give_back(budget);
            }
        }
        self.send = Some(send);
        self.gauge.store(self.inflight.len(), Ordering::Relaxed);
    }

    /// The request body of a message, translated now.
    fn body(out: &Outgoing, now_ms: i64) -> Result<Bytes, Failure> {
        let final_ = |code: &str, detail: String| Failure {
            class: FailureClass::Final,
            code: code.to_string(),
            detail,
            http: None,
        };
        let v: serde_json::Value = serde_json::from_str(&out.body)
            .map_err(|e| final_("INVALID_JSON", format!("stored message is not JSON: {e}")))?;
        let mut s = String::with_capacity(out.body.len() + 192);
        fcm::v1::translate_into(&v, out.accepted_at_ms, now_ms, &mut s)
            .map_err(|r| final_(r.code.as_str(), r.description))?;
        Ok(Bytes::from(s))
    }

    fn start(&mut self, send: &mut SendRequest<Bytes>, p: Pending, now_ms: i64) {
        let body = match Self::body(&p.out, now_ms) {
            Ok(b) => b,
            Err(f) => {
                self.fail(p.out.id, f);
                return;
            }
        };
        self.request(send, Some(p), body);
    }

    /// Opens a stream for `body` (a message's, or a probe's).
    fn request(&mut self, send: &mut SendRequest<Bytes>, p: Option<Pending>, body: Bytes) {
        let Some(token) = self.token.clone() else {
            if let Some(p) = p {
                self.fail(p.out.id, errors::resend("no valid access token"));
            }
            return;
        };
        let mut req = http::Request::new(());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.sh.send_uri.clone();
        let h = req.headers_mut();
        h.insert(AUTHORIZATION, token.header().clone());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        let sent = send
            .send_request(req, false)
            .and_then(|(resp, mut stream)| stream.send_data(body, true).map(|()| resp));
        match sent {
            Ok(resp) => {
                let timeout = self.sh.params.request_timeout;
                let generation = token.generation();
                self.inflight.push(Box::pin(async move {
                    let result = exchange(resp, timeout).await;
                    Done {
                        p,
                        generation,
                        result,
                    }
                }));
            }
            Err(e) => match (p, errors::stream_err(&e)) {
                (Some(_), StreamErr::ConnectionLost) => self.lost += 1,
                (Some(p), _) => self.fail(p.out.id, errors::resend("FCM refused a new stream")),
                // A probe that could not go: try again later.
                (None, _) => self.probe_later(),
            },
        }
    }

    /// Updates the capacity to the server's current stream limit.
    fn check_capacity(&mut self) {
        if let Some(send) = &self.send {
            let c = self
                .sh
                .params
                .max_pending
                .min(send.current_max_send_streams());
            if c != self.capacity {
                tracing::debug!(
                    link = self.id,
                    from = self.capacity,
                    to = c,
                    "stream limit changed"
                );
                self.capacity = c;
                self.announce();
            }
        }
    }

    /// Tells the engine the capacity, if it changed.
    fn announce(&mut self) {
        let c = if self.block.is_some() || self.no_token {
            0
        } else {
            self.capacity
        };
        if c != self.announced {
            self.announced = c;
            let _ = self.events.send(LinkEvent::Capacity {
                link: self.id,
                capacity: c,
            });
        }
    }

    fn done(&mut self, d: Done) {
        let Done {
            p,
            generation,
            result,
        } = d;
        let Some(p) = p else {
            return self.probe_done(result);
        };
        let id = p.out.id;
        match result {
            Ok(a) => {
                self.statuses.inc(a.status);
                if a.status == 200 {
                    let name = fcm::v1::parse_success(&a.body).unwrap_or_else(|e| {
                        // FCM took it: still an ack.
                        tracing::warn!(link = self.id, error = %e, "odd 200 from FCM");
                        String::new()
                    });
                    self.credentials_work();
                    let raw = fcm::v1::ack_json(&p.out.message_id, &p.out.target, &name);
                    self.outcome(id, SendResult::Delivered { raw });
                    return;
                }
                let retry_after = a.retry_after.as_ref().and_then(|v| v.to_str().ok());
                let f = fcm::v1::classify_at(a.status, retry_after, &a.body, store::now_ms());
                metrics::counter!(m::FCM_ERRORS, "code" => errors::answer_code(&f)).increment(1);
                match errors::map(f) {
                    Mapped::Outcome(f) => {
                        self.credentials_work();
                        self.fail(id, f);
                    }
                    Mapped::RefreshToken(f) => self.unauthorized(p, generation, f),
                    Mapped::AuthError(f) => self.refused(Refusal::Forbidden, Some(p), &f),
                }
            }
            Err(ReqError::Timeout) => {
                metrics::counter!(m::FCM_ERRORS, "code" => "TIMEOUT").increment(1);
                self.fail(id, errors::timeout(self.sh.params.request_timeout));
            }
            Err(ReqError::H2(e)) => match errors::stream_err(&e) {
                StreamErr::Unprocessed => self.fail(id, errors::resend(&e.to_string())),
                StreamErr::Reset => {
                    let why = e
                        .reason()
                        .map(|r| format!("{r:?}"))
                        .unwrap_or_else(|| e.to_string());
                    metrics::counter!(m::FCM_ERRORS, "code" => "STREAM_RESET").increment(1);
                    self.fail(id, errors::stream_reset(&why));
                }
                StreamErr::ConnectionLost => self.lost += 1,
            },
        }
    }

    /// The answer to a credentials probe.
    fn probe_done(&mut self, result: Result<Answer, ReqError>) {
        let Ok(a) = result else {
            // No answer (timeout, reset, a broken connection): no news.
            return self.probe_later();
        };
        self.statuses.inc(a.status);
        if a.status == 200 {
            return self.credentials_work();
        }
        let f = fcm::v1::classify(a.status, None, &a.body);
        match f.class {
            fcm::v1::FailureClass::RefreshToken => self.refused(Refusal::Unauthorized, None, &f),
            fcm::v1::FailureClass::AuthError => self.refused(Refusal::Forbidden, None, &f),
            // Any other answer (a 5xx, a quota): FCM took the credentials.
            _ => self.credentials_work(),
        }
    }

    /// A 401 without FcmError: a new token and one resend, then an
    /// authentication error.
    fn unauthorized(&mut self, mut p: Pending, generation: u64, f: fcm::v1::Failure) {
        if self.block.is_some() || p.refreshed {
            self.refused(Refusal::Unauthorized, Some(p), &f);
            return;
        }
        p.refreshed = true;
        let current = self.token.as_ref().map_or(0, AccessToken::generation);
        if current > generation {
            // Another link refreshed already: resend at once.
            self.waiting.push_front(p);
        } else {
            tracing::debug!(
                link = self.id,
                generation,
                "FCM refused the access token (401); refreshing it"
            );
            self.refresh_wait.push(p);
            self.sh.tokens.refused(generation);
        }
    }

    /// FCM refuses the credentials (a second 401, a 403): capacity 0,
    /// every message back to the queue, a probe after a backoff.
    fn refused(&mut self, kind: Refusal, p: Option<Pending>, f: &fcm::v1::Failure) {
        if let Some(p) = p {
            self.fail(p.out.id, errors::resend("FCM refuses the credentials"));
        }
        let now = Instant::now();
        match &mut self.block {
            Some(b) => {
                b.kind = kind;
                if p_is_probe_answer(b) {
                    // The probe came back refused: wait longer.
                    let delay = self.auth_backoff.next_delay();
                    b.at = Some(now + delay);
                    b.after_generation = None;
                    tracing::debug!(link = self.id, retry_in = ?delay, "FCM still refuses the credentials");
                }
            }
            None => {
                let delay = self.auth_backoff.next_delay();
                let what = match kind {
                    Refusal::Unauthorized => "FCM refused the access token even after a refresh",
                    Refusal::Forbidden => "FCM refused the request (no permission, or the API is disabled for the project)",
                };
                let error = format!(
                    "{what}: HTTP {} {}: {}",
                    f.http_status, f.error, f.description
                );
                tracing::error!(link = self.id, retry_in = ?delay, "{error}; messages stay queued");
                let _ = self.events.send(LinkEvent::AuthFailed {
                    link: self.id,
                    error,
                });
                self.block = Some(Block {
                    kind,
                    at: Some(now + delay),
                    after_generation: None,
                });
                for w in std::mem::take(&mut self.waiting) {
                    self.fail(w.out.id, errors::resend("FCM refuses the credentials"));
                }
                for w in std::mem::take(&mut self.refresh_wait) {
                    self.fail(w.out.id, errors::resend("FCM refuses the credentials"));
                }
                self.announce();
            }
        }
    }

    /// An answer that was not an authentication error: the credentials
    /// work.
    fn credentials_work(&mut self) {
        if self.block.take().is_some() {
            tracing::info!(link = self.id, "FCM takes the credentials again");
            self.auth_backoff.reset();
            self.announce();
        }
    }

    fn probe_at(&self) -> Option<Instant> {
        let b = self.block.as_ref()?;
        if b.after_generation.is_some() {
            return None;
        }
        b.at
    }

    /// A probe could not be sent or answered: try again after the backoff.
    fn probe_later(&mut self) {
        let delay = self.auth_backoff.next_delay();
        if let Some(b) = self.block.as_mut() {
            b.at = Some(Instant::now() + delay);
            b.after_generation = None;
        }
    }

    /// Time to try the credentials again.
    fn probe_due(&mut self) {
        let Some(b) = self.block.as_mut() else { return };
        b.at = None;
        match b.kind {
            Refusal::Unauthorized => {
                // A new token first.
                let g = self.token.as_ref().map_or(0, AccessToken::generation);
                b.after_generation = Some(g);
                self.sh.tokens.refused(g);
            }
            Refusal::Forbidden => self.send_probe(),
        }
    }

    fn send_probe(&mut self) {
        if let Some(b) = self.block.as_mut() {
            b.after_generation = None;
        }
        if self.token.is_none() {
            // The token's return triggers the next probe.
            return;
        }
        match self.send.take() {
            Some(mut send) => {
                self.request(&mut send, None, Bytes::from_static(PROBE_BODY));
                self.send = Some(send);
            }
            None => self.probe_later(),
        }
    }

    fn on_token(&mut self, st: TokenState) {
        match st.token.filter(AccessToken::is_valid) {
            Some(t) => {
                let newer = self
                    .token
                    .as_ref()
                    .is_none_or(|c| t.generation() > c.generation());
                let generation = t.generation();
                self.token = Some(t);
                if self.no_token {
                    self.no_token = false;
                    tracing::info!(link = self.id, "an access token is available again");
                    self.announce();
                }
                if newer {
                    // Resend once what a 401 held back, first.
                    for p in std::mem::take(&mut self.refresh_wait).into_iter().rev() {
                        self.waiting.push_front(p);
                    }
                    let probe = self.block.as_ref().is_some_and(|b| {
                        b.after_generation.is_some_and(|g| generation > g)
                            || (b.at.is_none() && b.after_generation.is_none())
                    });
                    if probe {
                        self.send_probe();
                    }
                }
            }
            None => {
                self.token = None;
                if !self.no_token {
                    self.no_token = true;
                    let error = st
                        .error
                        .map(|e| e.message)
                        .unwrap_or_else(|| "no valid FCM access token".into());
                    let _ = self.events.send(LinkEvent::AuthFailed {
                        link: self.id,
                        error,
                    });
                    for p in std::mem::take(&mut self.waiting) {
                        self.fail(p.out.id, errors::resend("no valid access token"));
                    }
                    for p in std::mem::take(&mut self.refresh_wait) {
                        self.fail(p.out.id, errors::resend("no valid access token"));
                    }
                    self.announce();
                }
            }
        }
    }
}

/// Whether a refusal answers the probe: the probe is out when no probe is
/// scheduled and none waits for a token.
fn p_is_probe_answer(b: &Block) -> bool {
    b.at.is_none() && b.after_generation.is_none()
}
