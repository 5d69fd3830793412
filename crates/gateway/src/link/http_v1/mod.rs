//! The FCM HTTP v1 link (SPEC §8) behind the [`super`] interface: one link
//! task per HTTP/2 connection; the engine's `connections` links are the
//! pool (SPEC §8.4: a client that queues behind one connection's stream
//! limit is not enough).
//!
//! A link task: waits until the shared [`TokenSource`] holds a valid
//! access token (reporting `ConnectFailed` with the token endpoint's error
//! meanwhile, `auth` when it refused the key), connects (TCP, TLS with ALPN
//! h2, the HTTP/2 handshake, one PING round trip for the server's SETTINGS,
//! see [`conn`]), retrying with backoff, reports `Ready { capacity }`, serves
//! the connection until it ends, reports `Closed` and exits; the engine
//! decides whether to open a replacement.
//!
//! One concern per file: [`conn`] (the connection: streams, capacity,
//! keepalive, GOAWAY, auth errors), [`oauth`] (the token source),
//! [`errors`] (v1 answers → outcomes), [`ratelimit`] (the pool's quota),
//! [`key`] (the service-account key file).

mod conn;
mod errors;
pub mod key;
pub mod oauth;
pub mod ratelimit;

pub use conn::{tls_configs, Endpoint};
pub use key::{KeyError, ServiceAccount};
pub use oauth::{HttpsExchange, RefreshPolicy, TokenSource, TokenState};
pub use ratelimit::RateLimiter;

use super::{CloseReason, LinkCmd, LinkEvent, LinkEvents, LinkFactory, LinkHandle, LinkId};
use crate::backoff::Backoff;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What an HTTP v1 link needs.
#[derive(Clone)]
pub struct HttpV1Params {
    /// `fcm.endpoint`.
    pub endpoint: Endpoint,
    /// The project messages are sent for.
    pub project_id: String,
    /// TLS client config offering ALPN `h2` ([`tls_configs`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// `max_pending_per_connection`: streams per connection at most (the
    /// server's SETTINGS_MAX_CONCURRENT_STREAMS wins when lower).
    pub max_pending: usize,
    /// HTTP/2 PING interval; no PONG within as long is a dead connection.
    pub keepalive: Duration,
    /// A request without an answer after this long is retried.
    pub request_timeout: Duration,
    /// Reconnect backoff after a failed connect.
    pub connect_backoff: Backoff,
    /// Backoff between probes while FCM refuses the credentials.
    pub auth_backoff: Backoff,
}

/// What the links of one factory share.
pub(crate) struct Shared {
    params: HttpV1Params,
    send_uri: http::Uri,
    tokens: TokenSource,
    limiter: Option<RateLimiter>,
    /// Streams in flight per live link, for `gimmm_fcm_streams_in_flight`.
    streams: Mutex<BTreeMap<LinkId, Arc<AtomicUsize>>>,
}

/// Builds HTTP v1 links.
pub struct HttpV1LinkFactory {
    shared: Arc<Shared>,
}

impl HttpV1LinkFactory {
    /// A factory for links with these parameters, sharing `tokens` and
    /// `limiter` (the pool's quota; `None` = no limit).
    pub fn new(
        params: HttpV1Params,
        tokens: TokenSource,
        limiter: Option<RateLimiter>,
    ) -> Result<HttpV1LinkFactory, String> {
        let send_uri = params.endpoint.send_uri(&params.project_id)?;
        Ok(HttpV1LinkFactory {
            shared: Arc::new(Shared {
                params,
                send_uri,
                tokens,
                limiter,
                streams: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The shared token source.
    pub fn tokens(&self) -> &TokenSource {
        &self.shared.tokens
    }

    /// Appends `gimmm_fcm_streams_in_flight{link}` (Prometheus text) for
    /// the live links.
    pub fn render_metrics(&self, out: &mut String) {
        render_streams(&self.shared, out);
    }

    /// A renderer of [`HttpV1LinkFactory::render_metrics`] that the admin
    /// server can hold.
    pub fn metrics_renderer(&self) -> Arc<dyn Fn(&mut String) + Send + Sync> {
        let sh = self.shared.clone();
        Arc::new(move |out: &mut String| render_streams(&sh, out))
    }
}

fn render_streams(sh: &Shared, out: &mut String) {
    use std::fmt::Write as _;
    let map = sh.streams.lock().unwrap_or_else(|p| p.into_inner());
    let name = crate::metrics::FCM_STREAMS_IN_FLIGHT;
    let _ = writeln!(
        out,
        "# HELP {name} HTTP/2 streams (requests) in flight per FCM HTTP v1 connection"
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (link, n) in map.iter() {
        let _ = writeln!(
            out,
            "{name}{{link=\"{link}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    out.push('\n');
}

impl LinkFactory for HttpV1LinkFactory {
    fn spawn(
        &self,
        id: LinkId,
        delay: Duration,
        events: LinkEvents,
        stop: CancellationToken,
    ) -> LinkHandle {
        let (handle, rx) = LinkHandle::channel();
        tokio::spawn(run(id, self.shared.clone(), delay, rx, events, stop));
        handle
    }

    fn kind(&self) -> &'static str {
        "http_v1"
    }

    fn peer(&self) -> &'static str {
        "FCM"
    }
}

/// Removes the link's gauge when its task ends, however it ends.
struct GaugeGuard<'a> {
    sh: &'a Shared,
    id: LinkId,
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.sh
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

fn closed(events: &LinkEvents, id: LinkId, reason: CloseReason) {
    let _ = events.send(LinkEvent::Closed { link: id, reason });
}

/// Waits for a reason to stop before the link is ready (a Close, or the
/// engine dropping its handle); other commands cannot come yet.
async fn closing_cmd(cmds: &mut mpsc::UnboundedReceiver<LinkCmd>) -> CloseReason {
    loop {
        match cmds.recv().await {
            Some(LinkCmd::Close) => return CloseReason::Shutdown,
            Some(_) => {}
            None => return CloseReason::EngineGone,
        }
    }
}

async fn run(
    id: LinkId,
    sh: Arc<Shared>,
    initial_delay: Duration,
    mut cmds: mpsc::UnboundedReceiver<LinkCmd>,
    events: LinkEvents,
    stop: CancellationToken,
) {
    let mut backoff = sh.params.connect_backoff.clone();
    let mut tokens = sh.tokens.watch();
    let mut delay = initial_delay;
    let mut said: Option<String> = None;
    let (connected, token) = loop {
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return closed(&events, id, CloseReason::Shutdown),
                why = closing_cmd(&mut cmds) => return closed(&events, id, why),
            }
        }
        // A valid access token first: a link is ready only with one.
        let token = loop {
            let st = tokens.borrow_and_update().clone();
            if let Some(t) = st.token.filter(oauth::AccessToken::is_valid) {
                break t;
            }
            if let Some(e) = st.error {
                if said.as_deref() != Some(e.message.as_str()) {
                    said = Some(e.message.clone());
                    let _ = events.send(LinkEvent::ConnectFailed {
                        link: id,
                        error: e.message,
                        auth: e.refused,
                    });
                }
            }
            tokio::select! {
                r = tokens.changed() => if r.is_err() {
                    return closed(&events, id, CloseReason::Shutdown);
                },
                _ = stop.cancelled() => return closed(&events, id, CloseReason::Shutdown),
                why = closing_cmd(&mut cmds) => return closed(&events, id, why),
            }
        };
        let attempt = tokio::select! {
            r = tokio::time::timeout(sh.params.request_timeout, conn::connect(&sh)) => {
                r.unwrap_or_else(|_| Err(format!("connecting to {} timed out", sh.params.endpoint.authority)))
            }
            _ = stop.cancelled() => return closed(&events, id, CloseReason::Shutdown),
            why = closing_cmd(&mut cmds) => return closed(&events, id, why),
        };
        match attempt {
            Ok(c) => break (c, token),
            Err(error) => {
                delay = backoff.next_delay();
                tracing::warn!(link = id, retry_in = ?delay, "FCM HTTP v1 connect failed: {error}");
                let _ = events.send(LinkEvent::ConnectFailed {
                    link: id,
                    error,
                    auth: false,
                });
            }
        }
    };
    let gauge = Arc::new(AtomicUsize::new(0));
    sh.streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, gauge.clone());
    let _guard = GaugeGuard { sh: &sh, id };
    tracing::debug!(
        link = id,
        capacity = connected.capacity,
        "FCM HTTP v1 link ready"
    );
    let _ = events.send(LinkEvent::Ready {
        link: id,
        capacity: connected.capacity,
    });
    let io = conn::Io {
        tokens: &mut tokens,
        cmds: &mut cmds,
        events: &events,
        stop: &stop,
        gauge,
    };
    let reason = conn::serve(id, &sh, connected, token, io).await;
    tracing::debug!(link = id, %reason, "FCM HTTP v1 link closed");
    closed(&events, id, reason);
}
