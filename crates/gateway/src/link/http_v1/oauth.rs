//! OAuth 2 access tokens for FCM HTTP v1 (SPEC §8.4): one [`TokenSource`]
//! shared by every link of the pool.
//!
//! Google's server-to-server flow: an RS256 JWT signed with the service
//! account's key (`iss` = `client_email`, `scope` = firebase.messaging,
//! `aud` = `token_uri`, `iat`, `exp` = `iat` + 3600, see [`super::key`]) is
//! exchanged at the key's `token_uri`
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`,
//! HTTPS, here over HTTP/1.1) for `{"access_token","expires_in"}`.
//!
//! The schedule, which is all of this module's logic ([`refresh_loop`], run
//! under paused tokio time by the tests below):
//! * the first token is fetched at once; links report `Ready` only once
//!   they hold one;
//! * a token is refreshed in the background, never on the send path: 5
//!   minutes before it expires, or at half its lifetime when it lives less
//!   than 10 minutes ([`refresh_after`]);
//! * a failing token endpoint is retried with backoff (1 s doubling to 60
//!   s), and at least once more before the current token runs out; the
//!   token stays in use while it lasts; when it runs out the source
//!   publishes "no token" with the error, and keeps retrying;
//! * a link whose token FCM refused (401) asks for a new one
//!   ([`TokenSource::refused`]): fetched at once, once per token.
//!
//! Secrets: the access token lives only in a sensitive [`HeaderValue`]
//! inside [`AccessToken`], whose `Debug` shows neither it nor the JWT;
//! errors are built from status codes and the endpoint's `error` /
//! `error_description`, never from a body that could hold a token.

use super::conn::Endpoint;
use super::key::{ServiceAccount, FIREBASE_MESSAGING_SCOPE};
use crate::backoff::Backoff;
use crate::metrics as m;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `grant_type` of the JWT-bearer flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Tokens living at least this long are refreshed [`REFRESH_MARGIN`] before
/// they expire; shorter ones at half their lifetime.
pub const LONG_LIVED: Duration = Duration::from_secs(600);
/// How long before expiry a long-lived token is refreshed.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// What the error says once no token is left.
const NO_TOKEN: &str =
    "the FCM access token expired or was refused, and no new one could be fetched";

/// Largest token endpoint answer read.
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// When to refresh a token that lives `lifetime` from when it was fetched
/// (SPEC §8.4): 5 minutes before it expires, or at half its lifetime when
/// it lives less than 10 minutes.
pub fn refresh_after(lifetime: Duration) -> Duration {
    if lifetime >= LONG_LIVED {
        lifetime - REFRESH_MARGIN
    } else {
        lifetime / 2
    }
}

/// An access token: the `authorization` header value (`Bearer …`, marked
/// sensitive) and when it expires. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    header: HeaderValue,
    expires_at: Instant,
    generation: u64,
}

impl AccessToken {
    /// The `authorization` header value.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// When it expires.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// 1 for the first token fetched, then one more per refresh.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Still usable now.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why no token could be fetched (never holds a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// What went wrong.
    pub message: String,
    /// The token endpoint refused the credentials (400/401/403: a revoked
    /// or deleted key, a wrong account) rather than failing.
    pub refused: bool,
}

/// What the source publishes: the token in use (if one is valid) and the
/// last error (until a fetch works again).
#[derive(Debug, Clone, Default)]
pub struct TokenState {
    /// The token to send with, while it is valid.
    pub token: Option<AccessToken>,
    /// The last fetch's error, if it failed.
    pub error: Option<TokenError>,
}

/// A fetched token.
pub struct Fetched {
    /// `Bearer <access_token>` as a sensitive header value.
    pub header: HeaderValue,
    /// `expires_in`.
    pub lifetime: Duration,
}

/// One token fetch: the JWT exchange in production, a fake in tests.
pub trait Exchange: Send + Sync + 'static {
    /// Fetches a new access token.
    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, TokenError>>;
}

/// Retry policy of the refresher.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// Delay after a failed fetch (doubling, jittered).
    pub retry: Backoff,
    /// Never fetch more often than this (a token that lives a second would
    /// otherwise be fetched in a loop).
    pub min_interval: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            min_interval: Duration::from_secs(1),
        }
    }
}

/// The token source shared by the links of one factory. Cheap to clone.
#[derive(Clone)]
pub struct TokenSource {
    rx: watch::Receiver<TokenState>,
    refused: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Starts the refresher (a tokio task, stopped by `stop`) and returns
    /// the source. The first fetch starts at once.
    pub fn start(
        exchange: Arc<dyn Exchange>,
        policy: RefreshPolicy,
        stop: CancellationToken,
    ) -> TokenSource {
        let (tx, rx) = watch::channel(TokenState::default());
        let (refused, refused_rx) = watch::channel(0u64);
        tokio::spawn(refresh_loop(exchange, policy, tx, refused_rx, stop));
        TokenSource {
            rx,
            refused: Arc::new(refused),
        }
    }

    /// A receiver of every change.
    pub fn watch(&self) -> watch::Receiver<TokenState> {
        self.rx.clone()
    }

    /// The state now.
    pub fn current(&self) -> TokenState {
        self.rx.borrow().clone()
    }

    /// FCM refused the token of `generation` (401): fetch a new one at
    /// once. Several links asking for the same token cause one fetch.
    pub fn refused(&self, generation: u64) {
        self.refused.send_if_modified(|g| {
            if generation > *g {
                *g = generation;
                true
            } else {
                false
            }
        });
    }
}

/// The refresher (see the module docs for the schedule).
pub async fn refresh_loop(
    exchange: Arc<dyn Exchange>,
    policy: RefreshPolicy,
    tx: watch::Sender<TokenState>,
    mut refused: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut generation = 0u64;
    let mut retry = policy.retry.clone();
    let mut next = Instant::now();
    let mut expires_at: Option<Instant> = None;
    // The generation for which a fetch was forced already.
    let mut forced_for = 0u64;
    let mut failing = false;
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep_until(next) => false,
            r = refused.wait_for(|g| generation > 0 && *g >= generation && forced_for < generation) => {
                if r.is_err() {
                    // Every handle is gone: nobody needs tokens any more.
                    return;
                }
                true
            }
            _ = tokio::time::sleep_until(expires_at.unwrap_or(next)), if expires_at.is_some() => {
                // The token ran out before a refresh worked.
                expires_at = None;
                tx.send_modify(|s| {
                    s.token = None;
                    let why = s.error.as_ref().map(|e| e.message.as_str()).unwrap_or("no refresh yet");
                    let refused = s.error.as_ref().is_some_and(|e| e.refused);
                    s.error = Some(TokenError {
                        message: format!("{NO_TOKEN}: {why}"),
                        refused,
                    });
                });
                tracing::error!("FCM access token expired; the token endpoint keeps failing; messages wait");
                continue;
            }
            _ = stop.cancelled() => return,
        };
        if forced {
            forced_for = generation;
            tracing::debug!(
                generation,
                "FCM refused the access token; fetching a new one"
            );
        }
        let started = Instant::now();
        let fetched = tokio::select! {
            r = exchange.fetch() => r,
            _ = stop.cancelled() => return,
        };
        match fetched {
            Ok(f) if !f.lifetime.is_zero() => {
                generation += 1;
                retry.reset();
                metrics::counter!(m::FCM_TOKEN_REFRESH, "result" => "ok").increment(1);
                if failing {
                    tracing::info!("the token endpoint works again");
                    failing = false;
                }
                let exp = started + f.lifetime;
                expires_at = Some(exp);
                next = started + refresh_after(f.lifetime).max(policy.min_interval);
                tracing::debug!(generation, lifetime = ?f.lifetime, refresh_in = ?next.saturating_duration_since(started), "FCM access token fetched");
                tx.send_replace(TokenState {
                    token: Some(AccessToken {
                        header: f.header,
                        expires_at: exp,
                        generation,
                    }),
                    error: None,
                });
            }
            r => {
                let mut e = match r {
                    Err(e) => e,
                    Ok(_) => TokenError {
                        message: "the token endpoint issued an access token that expires at once"
                            .into(),
                        refused: false,
                    },
                };
                if forced || (generation > 0 && expires_at.is_none()) {
                    // No token to fall back on: say so.
                    e.message = format!("{NO_TOKEN}: {}", e.message);
                }
                let result = if e.refused { "refused" } else { "error" };
                metrics::counter!(m::FCM_TOKEN_REFRESH, "result" => result).increment(1);
                let now = Instant::now();
                let mut at = now + retry.next_delay();
                if let Some(exp) = expires_at {
                    // Try again at least once before the token runs out.
                    let left = exp.saturating_duration_since(now);
                    if left > policy.min_interval {
                        at = at.min(now + (left / 2).max(policy.min_interval));
                    }
                }
                next = at;
                if failing {
                    tracing::debug!(error = %e.message, retry_in = ?at - now, "the token endpoint still fails");
                } else {
                    failing = true;
                    tracing::warn!(error = %e.message, retry_in = ?at - now, "cannot fetch an FCM access token");
                }
                tx.send_modify(|s| {
                    if forced {
                        // FCM refused this token: it is of no use any more.
                        s.token = None;
                    }
                    s.error = Some(e);
                });
                if forced {
                    expires_at = None;
                }
            }
        }
    }
}

/// The production [`Exchange`]: signs the JWT and posts it to the key's
/// `token_uri` over HTTPS (HTTP/1.1), trusting the same roots as the link.
pub struct HttpsExchange {
    sa: Arc<ServiceAccount>,
    tls: tokio_rustls::TlsConnector,
    endpoint: Endpoint,
    timeout: Duration,
}

impl std::fmt::Debug for HttpsExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsExchange")
            .field("token_uri", &self.sa.token_uri)
            .finish_non_exhaustive()
    }
}

impl HttpsExchange {
    /// An exchange for `sa` over `tls` (a rustls config offering
    /// `http/1.1`), each fetch bounded by `timeout`.
    pub fn new(
        sa: Arc<ServiceAccount>,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<HttpsExchange, String> {
        let endpoint = Endpoint::parse(&sa.token_uri).map_err(|e| format!("token_uri: {e}"))?;
        Ok(HttpsExchange {
            sa,
            tls: tokio_rustls::TlsConnector::from(tls),
            endpoint,
            timeout,
        })
    }

    async fn post(&self, form: String) -> Result<(u16, Bytes), TokenError> {
        let ep = &self.endpoint;
        let transient = |message: String| TokenError {
            message,
            refused: false,
        };
        let tcp = tokio::net::TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| {
                transient(format!(
                    "cannot reach the token endpoint {}: {e}",
                    ep.authority
                ))
            })?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
            .map_err(|e| transient(format!("token endpoint host {:?}: {e}", ep.host)))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| {
            transient(format!(
                "TLS handshake with the token endpoint {} failed: {e}",
                ep.authority
            ))
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| transient(format!("token endpoint {}: {e}", ep.authority)))?;
        // The connection is driven next to the request; it ends with it.
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(ep.path.as_str())
            .header(http::header::HOST, ep.authority.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| transient(format!("token request: {e}")))?;
        let answer = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| transient(format!("token endpoint {}: {e}", ep.authority)))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_TOKEN_BODY)
                .collect()
                .await
                .map_err(|_| transient("the token endpoint's answer could not be read".into()))?
                .to_bytes();
            Ok((status, body))
        }
        .await;
        driver.abort();
        answer
    }
}

/// A printable, one-line, short excerpt of a string from the endpoint.
fn clean(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `error: error_description` of an OAuth error body, if it is one.
fn oauth_error(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = v.get("error")?;
    // Google's own errors are OAuth style; a google.rpc.Status also fits.
    let (code, desc) = match error {
        serde_json::Value::String(s) => (
            s.clone(),
            v.get("error_description")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_string(),
        ),
        serde_json::Value::Object(o) => (
            o.get("status")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_string(),
            o.get("message")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_string(),
        ),
        _ => return None,
    };
    Some(if desc.is_empty() {
        clean(&code)
    } else {
        format!("{}: {}", clean(&code), clean(&desc))
    })
}

impl Exchange for HttpsExchange {
    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, TokenError>> {
        Box::pin(async move {
            let iat = store::now_ms() / 1000;
            let jwt = self
                .sa
                .assertion(FIREBASE_MESSAGING_SCOPE, iat)
                .map_err(|e| TokenError {
                    message: e.to_string(),
                    refused: true,
                })?;
            let form = form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", JWT_BEARER_GRANT)
                .append_pair("assertion", jwt.expose())
                .finish();
            drop(jwt);
            let (status, body) = match tokio::time::timeout(self.timeout, self.post(form)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(TokenError {
                        message: format!(
                            "the token endpoint {} did not answer within {} s",
                            self.endpoint.authority,
                            self.timeout.as_secs()
                        ),
                        refused: false,
                    })
                }
            };
            if status != 200 {
                let what = oauth_error(&body).unwrap_or_else(|| "no OAuth error body".into());
                return Err(TokenError {
                    message: format!("the token endpoint answered HTTP {status} ({what})"),
                    // 400 invalid_grant and the like: the key is refused;
                    // a retry will not fix it, an operator must.
                    refused: matches!(status, 400 | 401 | 403),
                });
            }
            parse_token(&body)
        })
    }
}

/// The 200 answer of the token endpoint. Errors never quote the body (it
/// holds the token).
fn parse_token(body: &[u8]) -> Result<Fetched, TokenError> {
    let bad = |what: &str| TokenError {
        message: format!("the token endpoint's answer {what}"),
        refused: false,
    };
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad("is not JSON"))?;
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("has no access_token"))?;
    if let Some(t) = v.get("token_type") {
        if !t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("bearer")) {
            return Err(bad("is not a Bearer token"));
        }
    }
    let lifetime = match v.get("expires_in") {
        None => Duration::from_secs(3600),
        Some(e) => Duration::from_secs(e.as_u64().ok_or_else(|| bad("has a bad expires_in"))?),
    };
    let mut header = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| bad("holds an access token that is not a valid header value"))?;
    header.set_sensitive(true);
    Ok(Fetched { header, lifetime })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    /// Answers fetches from a plan (a lifetime, or an error), reporting the
    /// time of each call.
    struct Fake {
        plan: Mutex<VecDeque<Result<u64, bool>>>,
        calls: mpsc::UnboundedSender<Instant>,
    }

    impl Exchange for Fake {
        fn fetch(&self) -> BoxFuture<'_, Result<Fetched, TokenError>> {
            let _ = self.calls.send(Instant::now());
            let next = self.plan.lock().unwrap().pop_front().unwrap_or(Err(false));
            Box::pin(async move {
                match next {
                    Ok(secs) => Ok(Fetched {
                        header: HeaderValue::from_static("Bearer fake"),
                        lifetime: Duration::from_secs(secs),
                    }),
                    Err(refused) => Err(TokenError {
                        message: "endpoint down".into(),
                        refused,
                    }),
                }
            })
        }
    }

    fn start(plan: Vec<Result<u64, bool>>) -> (TokenSource, mpsc::UnboundedReceiver<Instant>) {
        let (calls, rx) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            plan: Mutex::new(plan.into()),
            calls,
        });
        let src = TokenSource::start(fake, RefreshPolicy::default(), CancellationToken::new());
        (src, rx)
    }

    /// The next fetch, in seconds since `t0` (paused time jumps to it).
    async fn next_call(rx: &mut mpsc::UnboundedReceiver<Instant>, t0: Instant) -> f64 {
        let at = tokio::time::timeout(Duration::from_secs(100_000), rx.recv())
            .await
            .expect("no fetch")
            .unwrap();
        (at - t0).as_secs_f64()
    }

    #[test]
    fn schedule() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(599)),
            Duration::from_millis(299_500)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_hour_token_is_refreshed_five_minutes_before_it_expires() {
        let t0 = Instant::now();
        let (src, mut calls) = start(vec![Ok(3600), Ok(3600), Ok(3600)]);
        assert_eq!(next_call(&mut calls, t0).await, 0.0);
        assert_eq!(next_call(&mut calls, t0).await, 3300.0);
        assert_eq!(next_call(&mut calls, t0).await, 6600.0);
        let s = src.current();
        let tok = s.token.unwrap();
        assert_eq!(tok.generation(), 3);
        assert_eq!(tok.expires_at() - t0, Duration::from_secs(6600 + 3600));
        assert!(s.error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_token_is_refreshed_at_half_its_life() {
        let t0 = Instant::now();
        let (src, mut calls) = start(vec![Ok(240), Ok(240), Ok(30)]);
        assert_eq!(next_call(&mut calls, t0).await, 0.0);
        assert_eq!(next_call(&mut calls, t0).await, 120.0);
        assert_eq!(next_call(&mut calls, t0).await, 240.0);
        // Then 30 s tokens: every 15 s.
        assert_eq!(next_call(&mut calls, t0).await, 255.0);
        // (The plan ran out: that fetch failed, the 30 s token still holds.)
        assert!(src.current().token.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_endpoint_is_retried_while_the_token_lasts() {
        let t0 = Instant::now();
        // A 10-minute token (refreshed at 5 min), then failures, then a token.
        let mut plan = vec![Ok(600)];
        plan.extend(std::iter::repeat_n(Err(false), 30));
        plan.push(Ok(600));
        let (src, mut calls) = start(plan);
        let mut state = src.watch();
        assert_eq!(next_call(&mut calls, t0).await, 0.0);
        assert_eq!(next_call(&mut calls, t0).await, 300.0);
        // Retries with backoff (jittered, doubling from 1 s), while the
        // token is still in use.
        let mut last = 300.0;
        let mut gaps = Vec::new();
        loop {
            let t = next_call(&mut calls, t0).await;
            gaps.push(t - last);
            last = t;
            if t < 600.0 {
                let s = state.borrow_and_update().clone();
                assert!(
                    s.token.is_some(),
                    "the token is dropped before it expires ({t} s)"
                );
                assert_eq!(s.error.as_ref().unwrap().message, "endpoint down");
            }
            if t > 600.0 {
                break;
            }
        }
        assert!((0.5..=1.0).contains(&gaps[0]), "{gaps:?}");
        assert!((1.0..=2.0).contains(&gaps[1]), "{gaps:?}");
        assert!((2.0..=4.0).contains(&gaps[2]), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= 60.0), "{gaps:?}");
        // Past expiry: no token, and the error says why.
        let s = state.borrow_and_update().clone();
        assert!(s.token.is_none());
        assert!(s.error.unwrap().message.contains("expired"), "no reason");
        // The endpoint comes back (the plan's last entry) in a later retry.
        loop {
            let _ = next_call(&mut calls, t0).await;
            state.changed().await.unwrap();
            if let Some(t) = state.borrow_and_update().token.clone() {
                assert_eq!(t.generation(), 2);
                break;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_replaced_at_once_and_once() {
        let t0 = Instant::now();
        let (src, mut calls) = start(vec![Ok(3600), Ok(3600), Ok(3600)]);
        assert_eq!(next_call(&mut calls, t0).await, 0.0);
        let mut state = src.watch();
        state.wait_for(|s| s.token.is_some()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Three links hit 401 with the first token: one fetch, at once.
        src.refused(1);
        src.refused(1);
        src.refused(1);
        assert_eq!(next_call(&mut calls, t0).await, 10.0);
        state
            .wait_for(|s| s.token.as_ref().is_some_and(|t| t.generation() == 2))
            .await
            .unwrap();
        // A late 401 for the old token changes nothing; the next refresh is
        // 55 minutes after the new token.
        src.refused(1);
        assert_eq!(next_call(&mut calls, t0).await, 3310.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_key_drops_the_refused_token() {
        let t0 = Instant::now();
        let (src, mut calls) = start(vec![Ok(3600), Err(true)]);
        assert_eq!(next_call(&mut calls, t0).await, 0.0);
        let mut state = src.watch();
        state.wait_for(|s| s.token.is_some()).await.unwrap();
        src.refused(1);
        let _ = next_call(&mut calls, t0).await;
        let s = state.wait_for(|s| s.error.is_some()).await.unwrap().clone();
        assert!(s.token.is_none());
        assert!(s.error.unwrap().refused);
    }

    #[test]
    fn token_answers_never_quote_the_body() {
        let secret = "ya29.SECRET";
        for body in [
            format!("{{\"access_token\":\"{secret}\",\"token_type\":\"MAC\"}}"),
            format!("{{\"access_token\":\"{secret}\",\"expires_in\":\"x\"}}"),
            format!("{{\"access_token\":\"{secret}\n\"}}"),
            format!("not json {secret}"),
        ] {
            let e = parse_token(body.as_bytes()).err().unwrap();
            assert!(!e.message.contains(secret), "{}", e.message);
        }
        let ok =
            parse_token(br#"{"access_token":"ya29.x","expires_in":120,"token_type":"Bearer"}"#)
                .ok()
                .unwrap();
        assert_eq!(ok.lifetime, Duration::from_secs(120));
        assert!(ok.header.is_sensitive());
        assert!(!format!("{:?}", ok.header).contains("ya29"));
    }

    #[test]
    fn oauth_errors_are_short_and_clean() {
        assert_eq!(
            oauth_error(
                br#"{"error":"invalid_grant","error_description":"Invalid JWT\nSignature."}"#
            )
            .unwrap(),
            "invalid_grant: Invalid JWT Signature."
        );
        assert!(oauth_error(b"<html>").is_none());
    }
}
