//! TLS and HTTP serving of the FCM HTTP v1 emulator (SPEC §9): one task per
//! TLS connection, ALPN `h2` or `http/1.1` (or, with no ALPN, the protocol
//! detected from the first bytes), served by hyper 1. Routes:
//!
//! | route | answer |
//! |---|---|
//! | `POST /token` | OAuth 2 token endpoint ([`super::auth`]) |
//! | `POST /v1/projects/{P}/messages:send` | the send method |
//! | anything else | 404 with Google's HTML page |
//!
//! Connection faults act here: GOAWAY after N requests (hyper's graceful
//! shutdown sends GOAWAY on HTTP/2, ends keep-alive on HTTP/1.1), abrupt
//! drops (the connection is let go without GOAWAY or TLS close_notify), the
//! advertised SETTINGS_MAX_CONCURRENT_STREAMS. Nothing is logged per
//! request above `trace`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, trace, warn};

use super::auth::{self, TokenState};
use super::errors::{html_error_page, ApiError, Detail, V1ErrorCode, Violation};
use super::state::{Answer, ConnCtx, QuotaHit, Shared, Start, View};
use super::validate::{self, Target};

type Body = Full<Bytes>;

const JSON: &str = "application/json; charset=UTF-8";
const HTML: &str = "text/html; charset=UTF-8";
/// Largest token request body read.
const MAX_TOKEN_BODY: usize = 64 * 1024;

pub(crate) async fn accept_loop(sh: Arc<Shared>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let accepted = tokio::select! {
            _ = sh.stop_accept.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let sh2 = Arc::clone(&sh);
                let acc = acceptor.clone();
                sh.tracker.spawn(serve_conn(sh2, tcp, peer, acc));
            }
            Err(e) => {
                // EMFILE and the like: back off a little instead of spinning.
                warn!(error = %e, "v1 emulator: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_conn(sh: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor) {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::select! {
        _ = sh.root.cancelled() => return,
        r = tokio::time::timeout(sh.fixed.handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "v1 emulator: TLS handshake failed");
                sh.tls_failed();
                return;
            }
            Err(_) => {
                debug!(%peer, "v1 emulator: TLS handshake timed out");
                sh.tls_failed();
                return;
            }
        },
    };
    let alpn = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => "h2",
        Some(b"http/1.1") => "http/1.1",
        _ => "",
    };
    let limit = sh.faults.borrow().effective_max_concurrent_streams();
    let ctx = sh.conn_opened(alpn, if alpn == "http/1.1" { 1 } else { limit });
    debug!(conn = ctx.id, %peer, alpn, "v1 emulator: connection accepted");

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limit);
    let builder = match alpn {
        "h2" => builder.http2_only(),
        "http/1.1" => builder.http1_only(),
        _ => builder,
    };
    let svc = {
        let (sh, ctx) = (Arc::clone(&sh), Arc::clone(&ctx));
        hyper::service::service_fn(move |req| {
            let (sh, ctx) = (Arc::clone(&sh), Arc::clone(&ctx));
            async move { Ok::<_, Infallible>(handle(sh, ctx, req).await) }
        })
    };
    // Boxed so that dropping it (below) really lets go of the socket.
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(tls), svc));
    let mut shutting_down = false;
    loop {
        tokio::select! {
            biased;
            // Abrupt: let go of the socket, no GOAWAY, no close_notify.
            _ = ctx.kill.cancelled() => break,
            _ = ctx.goaway.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
                sh.goaway_started(ctx.id, !ctx.http1.load(Ordering::Relaxed));
            }
            r = conn.as_mut() => {
                if let Err(e) = r {
                    trace!(conn = ctx.id, error = %e, "v1 emulator: connection ended with an error");
                }
                if ctx.goaway.is_cancelled() && !shutting_down {
                    // An HTTP/1.1 answer carried `Connection: close` and the
                    // connection ended before the shutdown branch ran.
                    sh.goaway_started(ctx.id, !ctx.http1.load(Ordering::Relaxed));
                }
                break;
            }
        }
    }
    drop(conn);
    ctx.closed.cancel();
    sh.conn_closed(ctx.id);
    debug!(conn = ctx.id, "v1 emulator: connection closed");
}

/// Ends a request's stream in the counters exactly once, also when hyper
/// drops the request future (the client reset the stream).
struct InFlight<'a> {
    sh: &'a Shared,
    conn: u64,
    armed: bool,
}

impl InFlight<'_> {
    fn answered(mut self, a: &Answer<'_>) {
        self.armed = false;
        self.sh.answered(self.conn, a);
    }
    fn token_answered(mut self, refusal: Option<&'static str>) {
        self.armed = false;
        self.sh.token_answered(self.conn, refusal);
    }
    fn not_found(mut self) {
        self.armed = false;
        self.sh.not_found(self.conn);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.sh.request_finished(self.conn);
        }
    }
}

/// [`Route`] once the request's borrow has ended.
enum Routed {
    Token,
    /// `Some(project)` when the path names another project.
    Send(Option<String>),
    NotFound,
}

enum Route<'a> {
    Token,
    Send(&'a str),
    NotFound,
}

fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    if method != Method::POST {
        return Route::NotFound;
    }
    if path == "/token" {
        return Route::Token;
    }
    match path
        .strip_prefix("/v1/projects/")
        .and_then(|rest| rest.strip_suffix("/messages:send"))
    {
        Some(p) if !p.is_empty() && !p.contains('/') => Route::Send(p),
        _ => Route::NotFound,
    }
}

fn response(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = response(e.http, JSON, e.body());
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

async fn handle(sh: Arc<Shared>, conn: Arc<ConnCtx>, req: Request<Incoming>) -> Response<Body> {
    let view = sh.view();
    // Resolve the route while the request is borrowed; only a foreign
    // project name is kept (for its 403 message).
    let route = match route(req.method(), req.uri().path()) {
        Route::Token => Routed::Token,
        Route::NotFound => Routed::NotFound,
        Route::Send(p) if p == sh.fixed.project_id || p == sh.fixed.project_number => {
            Routed::Send(None)
        }
        Route::Send(p) => Routed::Send(Some(p.to_owned())),
    };
    let send = matches!(route, Routed::Send(_));
    let http1 = req.version() < Version::HTTP_2;
    if http1 {
        conn.http1.store(true, Ordering::Relaxed);
    }
    let guard = InFlight {
        sh: &sh,
        conn: conn.id,
        armed: true,
    };
    if sh.request_started(&conn, send, &view) == Start::Drop {
        // Wait until the serving task has let go of the connection, so that
        // no answer to this request can reach the client.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed.cancelled()).await;
        drop(guard);
        return response(503, JSON, Vec::new());
    }
    let mut resp = match route {
        Routed::Token => token(&sh, req, guard).await,
        Routed::Send(foreign) => send_message(&sh, req, foreign, &view, guard).await,
        Routed::NotFound => {
            guard.not_found();
            response(404, HTML, html_error_page(404))
        }
    };
    if http1 && conn.goaway.is_cancelled() {
        // The graceful shutdown may only reach hyper after this answer is
        // written; say so in the answer itself, as a well-behaved server does.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

enum BodyError {
    TooLarge,
    Io,
}

async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Err(_) => Err(BodyError::Io),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response<Body> {
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "error": error,
        "error_description": description,
    }))
    .unwrap_or_default();
    response(status, JSON, body)
}

async fn token(sh: &Shared, req: Request<Incoming>, guard: InFlight<'_>) -> Response<Body> {
    let fault = sh.faults.borrow().token_endpoint_error;
    let body = read_body(req, MAX_TOKEN_BODY).await;
    match fault {
        Some(500) => {
            guard.token_answered(Some("fault"));
            return oauth_error(500, "internal_failure", "Backend Error");
        }
        Some(_) => {
            guard.token_answered(Some("fault"));
            return oauth_error(
                400,
                "invalid_grant",
                "Token endpoint failure (injected fault)",
            );
        }
        None => {}
    }
    let Ok(body) = body else {
        guard.token_answered(Some("malformed"));
        return oauth_error(400, "invalid_request", "Could not read the request body");
    };
    match auth::check_grant(&sh.sa, &body, unix_now()) {
        Ok(()) => {
            let lifetime = sh.token_lifetime();
            let token = sh.tokens.issue(lifetime);
            guard.token_answered(None);
            let body = serde_json::to_vec_pretty(&serde_json::json!({
                "access_token": token,
                "expires_in": lifetime.as_secs(),
                "token_type": "Bearer",
            }))
            .unwrap_or_default();
            let mut r = response(200, JSON, body);
            r.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, no-store, max-age=0, must-revalidate"),
            );
            r
        }
        Err(refusal) => {
            guard.token_answered(Some(refusal.reason()));
            oauth_error(400, refusal.error(), refusal.description())
        }
    }
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

const UNAUTHENTICATED_MISSING: &str = "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";
const UNAUTHENTICATED_INVALID: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";

fn unauthenticated(state: Option<TokenState>) -> ApiError {
    let (message, reason) = match state {
        None => (UNAUTHENTICATED_MISSING, "CREDENTIALS_MISSING"),
        Some(TokenState::Expired) => (UNAUTHENTICATED_INVALID, "ACCESS_TOKEN_EXPIRED"),
        Some(_) => (UNAUTHENTICATED_INVALID, "ACCESS_TOKEN_TYPE_UNSUPPORTED"),
    };
    ApiError::plain(401, "UNAUTHENTICATED", message).with(Detail::ErrorInfo {
        reason,
        domain: "googleapis.com",
    })
}

fn quota_error(sh: &Shared, hit: QuotaHit) -> ApiError {
    match hit {
        QuotaHit::Project(left) => {
            let subject = format!("project_number:{}", sh.fixed.project_number);
            let message = format!(
                "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' of service 'fcm.googleapis.com' for consumer '{subject}'."
            );
            let mut e = ApiError::fcm(V1ErrorCode::QuotaExceeded, message.clone()).with(
                Detail::QuotaFailure {
                    subject,
                    description: message,
                },
            );
            // Google lists the QuotaFailure first here.
            e.fcm_last = true;
            e.retry_after = Some(left.max(1));
            e
        }
        QuotaHit::Device(left) => {
            let mut e = ApiError::fcm(
                V1ErrorCode::QuotaExceeded,
                "Message rate exceeded for this device.",
            );
            e.retry_after = Some(left.max(1));
            e
        }
    }
}

enum Outcome {
    Ok,
    Error(ApiError),
    /// A bare load-balancer error with an HTML body.
    Html(u16),
}

async fn send_message(
    sh: &Shared,
    req: Request<Incoming>,
    foreign_project: Option<String>,
    view: &View,
    guard: InFlight<'_>,
) -> Response<Body> {
    let token_state = bearer(req.headers()).map(|t| sh.tokens.check(t));
    let mut answer = Answer {
        key: None,
        status: 0,
        code: None,
        validate_only: false,
        injected: false,
        quota: false,
        unauthenticated: false,
        permission_denied: false,
    };
    let mut key = None;
    let outcome = if token_state != Some(TokenState::Valid) {
        answer.unauthenticated = true;
        Outcome::Error(unauthenticated(token_state))
    } else if view.send_auth_error == Some(401) {
        // Fault: the API refuses a token the token endpoint just issued.
        answer.unauthenticated = true;
        Outcome::Error(unauthenticated(Some(TokenState::Unknown)))
    } else if view.send_auth_error == Some(403) {
        answer.permission_denied = true;
        Outcome::Error(
            ApiError::plain(
                403,
                "PERMISSION_DENIED",
                "Firebase Cloud Messaging API has not been used in this project before or it is disabled. Enable it, then retry.",
            )
            .with(Detail::ErrorInfo {
                reason: "SERVICE_DISABLED",
                domain: "googleapis.com",
            }),
        )
    } else if let Some(project) = foreign_project {
        answer.permission_denied = true;
        Outcome::Error(
            ApiError::plain(
                403,
                "PERMISSION_DENIED",
                format!(
                    "Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."
                ),
            )
            .with(Detail::ErrorInfo {
                reason: "IAM_PERMISSION_DENIED",
                domain: "cloudresourcemanager.googleapis.com",
            }),
        )
    } else {
        match read_body(req, sh.fixed.max_body_bytes).await {
            Err(BodyError::TooLarge) => Outcome::Error(ApiError::parse_errors(vec![Violation {
                field: String::new(),
                description: format!(
                    "Request payload size exceeds the limit: {} bytes.",
                    sh.fixed.max_body_bytes
                ),
            }])),
            Err(BodyError::Io) => Outcome::Error(ApiError::plain(
                400,
                "INVALID_ARGUMENT",
                "The request body could not be read.",
            )),
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Err(e) => Outcome::Error(ApiError::parse_errors(vec![Violation {
                    field: String::new(),
                    description: format!("Invalid JSON payload received. {e}"),
                }])),
                Ok(body) => {
                    let checked = validate::check_request(&body, view.legacy_token_violation);
                    answer.validate_only = checked.validate_only;
                    if sh.fixed.track_messages {
                        key = checked
                            .message
                            .zip(checked.target)
                            .and_then(|(m, t)| validate::key_of(m, t));
                    }
                    let mut result = checked.result;
                    let token = checked.target.as_ref().and_then(Target::device);
                    if let (Ok(()), Some(t)) = (&result, token) {
                        if t.starts_with("unregistered") || sh.is_marked_unregistered(t) {
                            result = Err(ApiError::fcm(
                                V1ErrorCode::Unregistered,
                                V1ErrorCode::Unregistered.default_message(),
                            ));
                        } else if t.starts_with("mismatch") {
                            result = Err(ApiError::fcm(
                                V1ErrorCode::SenderIdMismatch,
                                V1ErrorCode::SenderIdMismatch.default_message(),
                            ));
                        }
                    }
                    if let Err(hit) = sh.admit(key.as_deref(), token, result.is_ok(), view) {
                        answer.quota = true;
                        result = Err(quota_error(sh, hit));
                    }
                    match result {
                        Err(e) => Outcome::Error(e),
                        Ok(()) => inject(view, &mut answer),
                    }
                }
            },
        }
    };
    if !view.latency.is_zero() {
        tokio::time::sleep(view.latency).await;
    }
    answer.key = key.as_deref();
    match outcome {
        Outcome::Ok => {
            answer.status = 200;
            guard.answered(&answer);
            let mut body = String::with_capacity(sh.name_head.len() + 48);
            body.push_str(&sh.name_head);
            if answer.validate_only {
                body.push_str("fake_message_id");
            } else {
                sh.next_message_id(&mut body);
            }
            body.push_str("\"\n}\n");
            response(200, JSON, body.into_bytes())
        }
        Outcome::Error(e) => {
            answer.status = e.http;
            answer.code = e.code;
            guard.answered(&answer);
            error_response(&e)
        }
        Outcome::Html(status) => {
            answer.status = status;
            guard.answered(&answer);
            response(status, HTML, html_error_page(status))
        }
    }
}

/// Injected failures of otherwise successful sends.
fn inject(view: &View, answer: &mut Answer<'_>) -> Outcome {
    let roll = |f: f64| f > 0.0 && (f >= 1.0 || rand::random::<f64>() < f);
    if roll(view.gateway_error_fraction) {
        answer.injected = true;
        return Outcome::Html(view.gateway_error_status);
    }
    if roll(view.error_fraction) {
        answer.injected = true;
        let mut e = ApiError::fcm(view.error_code, view.error_code.default_message());
        e.retry_after = view.retry_after_secs;
        return Outcome::Error(e);
    }
    Outcome::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(
            route(&Method::POST, "/v1/projects/p1/messages:send"),
            Route::Send("p1")
        ));
        assert!(matches!(route(&Method::POST, "/token"), Route::Token));
        for p in [
            "/v1/projects//messages:send",
            "/v1/projects/a/b/messages:send",
            "/v1/projects/p/messages",
            "/fcm/send",
        ] {
            assert!(matches!(route(&Method::POST, p), Route::NotFound), "{p}");
        }
        assert!(matches!(
            route(&Method::GET, "/v1/projects/p/messages:send"),
            Route::NotFound
        ));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
