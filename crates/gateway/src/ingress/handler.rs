//! `POST /v1/upstream` (SPEC §10): read the body (bounded in size and
//! time), parse it ([`super::body`]), find the session named by its
//! `category`, authenticate ([`super::auth`]), apply the client's rate
//! limit ([`super::rate`]), and hand it to the engine, which answers once
//! the message is durably stored — only then 202.
//!
//! Answers (JSON, `{"error":CODE,"error_description":...}` for errors):
//!
//! | status | when |
//! |---|---|
//! | 202 `{"message_id"}` | stored; the BAL will receive it as an UPSTREAM |
//! | 200 `{"message_id","duplicate":true}` | this `message_id` was taken before for the category |
//! | 400 `INVALID_JSON` | the body is not a valid upstream message (the description names the problem) |
//! | 401 `UNAUTHORIZED` | no or bad credentials: one body for both |
//! | 404 `UNKNOWN_CATEGORY` | no session has the category |
//! | 408 `REQUEST_TIMEOUT` | the body did not arrive within `read_timeout_secs` |
//! | 413 `PAYLOAD_TOO_LARGE` | the body is over `max_body_bytes` |
//! | 429 `RATE_LIMITED` + `Retry-After` | the client's bucket is empty |
//! | 503 `STORE_UNAVAILABLE` / `SHUTTING_DOWN` + `Retry-After` | not stored: retry (with the same `message_id`) |

use super::auth::{Authenticated, SessionAuth};
use super::rate::RateLimiter;
use crate::engine::{Cmd, IngressPost, IngressResult};
use crate::metrics as m;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long the engine and the store may take to store a post before the
/// client is told 503 (it may still be stored: a retry with the same
/// `message_id` then gets 200 duplicate).
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// An oversized body up to this much over the limit is read and dropped
/// before the 413, so the client sees the answer instead of a connection
/// reset (the kernel resets a connection closed with unread data). One
/// announced larger by `Content-Length` is answered at once.
const DRAIN_MAX: u64 = 64 * 1024;

/// One session as the ingress sees it.
pub(crate) struct SessionEntry {
    pub(crate) id: Arc<str>,
    pub(crate) auth: SessionAuth,
}

/// What the handler needs.
pub(crate) struct IngressState {
    pub(crate) sessions: HashMap<String, SessionEntry>,
    pub(crate) engine: mpsc::Sender<Cmd>,
    pub(crate) store: store::SharedStore,
    pub(crate) rate: RateLimiter,
    pub(crate) max_body: usize,
    pub(crate) read_timeout: Duration,
}

/// A JSON answer.
fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `{"message_id":..}` (202) or `{"message_id":..,"duplicate":true}`
/// (200), in that order.
fn taken(status: StatusCode, message_id: &str, duplicate: bool) -> Response {
    #[derive(serde::Serialize)]
    struct Taken<'a> {
        message_id: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    }
    let body = serde_json::to_string(&Taken {
        message_id,
        duplicate,
    })
    .unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An error answer.
pub(crate) fn error(status: StatusCode, code: &str, description: &str) -> Response {
    json(
        status,
        &serde_json::json!({"error": code, "error_description": description}),
    )
}

fn with_header(mut r: Response, name: header::HeaderName, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
    r
}

/// The 401, the same for a missing and a wrong credential.
fn unauthorized() -> Response {
    with_header(
        error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or invalid credentials",
        ),
        header::WWW_AUTHENTICATE,
        "Bearer realm=\"gimmm\"",
    )
}

/// The 404 for a `category` no session has.
fn unknown_category() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "UNKNOWN_CATEGORY",
        "no session serves this category",
    )
}

fn too_large(max: usize) -> Response {
    with_header(
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("the body is larger than {max} bytes"),
        ),
        header::CONNECTION,
        "close",
    )
}

/// Counts and times an answer.
fn done(session: &str, outcome: &'static str, started: Instant, r: Response) -> Response {
    metrics::counter!(m::INGRESS_REQUESTS, "session" => session.to_string(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(m::INGRESS_REQUEST_SECONDS).record(started.elapsed().as_secs_f64());
    r
}

/// `POST /v1/upstream`.
pub(crate) async fn upstream(State(st): State<Arc<IngressState>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // 413 at once when the client announces far too much.
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > st.max_body as u64 + DRAIN_MAX) {
        return done("", "too_large", started, too_large(st.max_body));
    }
    let bytes = match tokio::time::timeout(st.read_timeout, read_body(body, st.max_body)).await {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => return done("", "too_large", started, too_large(st.max_body)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ingress: reading a request body failed");
            return done(
                "",
                "invalid",
                started,
                error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_JSON",
                    "the body could not be read",
                ),
            );
        }
        Err(_) => {
            return done(
                "",
                "timeout",
                started,
                with_header(
                    error(
                        StatusCode::REQUEST_TIMEOUT,
                        "REQUEST_TIMEOUT",
                        &format!(
                            "the body did not arrive within {} s",
                            st.read_timeout.as_secs()
                        ),
                    ),
                    header::CONNECTION,
                    "close",
                ),
            );
        }
    };
    let post = match super::body::parse(&bytes) {
        Ok(p) => p,
        Err(e) => {
            return done(
                "",
                "invalid",
                started,
                error(StatusCode::BAD_REQUEST, "INVALID_JSON", e.description()),
            );
        }
    };
    let Some(session) = st.sessions.get(&post.category) else {
        return done("", "unknown_category", started, unknown_category());
    };
    let label = &*session.id;
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let subject = match session.auth.check(authorization) {
        Ok(Authenticated::Key) => None,
        Ok(Authenticated::Jwt { subject }) => subject,
        Err(why) => {
            tracing::debug!(
                session = label,
                reason = why.reason(),
                "ingress: credentials refused"
            );
            return done(label, "unauthorized", started, unauthorized());
        }
    };
    if let Err(wait) = st.rate.take(label, &post.from, Instant::now()) {
        let secs = wait.as_secs().max(1);
        return done(
            label,
            "rate_limited",
            started,
            with_header(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    &format!("too many requests from this client; retry in {secs} s"),
                ),
                header::RETRY_AFTER,
                &secs.to_string(),
            ),
        );
    }
    if st.store.is_degraded() {
        return done(label, "unavailable", started, store_unavailable());
    }
    let fcm_data = post.fcm_data(subject.as_deref());
    let (tx, rx) = oneshot::channel();
    let cmd = Cmd::Ingress(Box::new(IngressPost {
        session: session.id.clone(),
        message_id: post.message_id.clone(),
        fcm_data,
        reply: tx,
    }));
    let asked = async {
        st.engine.send(cmd).await.ok()?;
        rx.await.ok()
    };
    let answer = match tokio::time::timeout(STORE_TIMEOUT, asked).await {
        Ok(Some(a)) => a,
        Ok(None) => IngressResult::ShuttingDown,
        Err(_) => {
            tracing::warn!(
                session = label,
                "ingress: a post was not stored within {STORE_TIMEOUT:?}"
            );
            return done(label, "unavailable", started, store_unavailable());
        }
    };
    match answer {
        IngressResult::Stored => done(
            label,
            "accepted",
            started,
            taken(StatusCode::ACCEPTED, &post.message_id, false),
        ),
        IngressResult::Duplicate => done(
            label,
            "duplicate",
            started,
            taken(StatusCode::OK, &post.message_id, true),
        ),
        IngressResult::StoreUnavailable => done(label, "unavailable", started, store_unavailable()),
        IngressResult::ShuttingDown => done(
            label,
            "unavailable",
            started,
            with_header(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SHUTTING_DOWN",
                    "gimmm is shutting down; not stored, retry",
                ),
                header::RETRY_AFTER,
                "5",
            ),
        ),
        IngressResult::UnknownCategory => {
            done(label, "unknown_category", started, unknown_category())
        }
    }
}

/// Reads the body: `Some(bytes)`, or `None` when it is over `max` (what
/// follows is read and dropped up to [`DRAIN_MAX`] more bytes, so the
/// client gets to read the 413).
async fn read_body(mut body: axum::body::Body, max: usize) -> Result<Option<Vec<u8>>, axum::Error> {
    let mut buf = Vec::new();
    let mut seen = 0u64;
    let mut over = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if !over && buf.len() + data.len() > max {
            over = true;
            buf = Vec::new();
        }
        if over {
            if seen > max as u64 + DRAIN_MAX {
                break;
            }
        } else {
            buf.extend_from_slice(&data);
        }
    }
    Ok((!over).then_some(buf))
}

fn store_unavailable() -> Response {
    with_header(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "STORE_UNAVAILABLE",
            "the store cannot take writes (disk full?); not stored, retry with the same message_id",
        ),
        header::RETRY_AFTER,
        "1",
    )
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    let started = Instant::now();
    done(
        "",
        "not_found",
        started,
        error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "the ingress serves POST /v1/upstream only",
        ),
    )
}

/// `/v1/upstream` with another method.
pub(crate) async fn method_not_allowed() -> Response {
    let started = Instant::now();
    done(
        "",
        "not_found",
        started,
        with_header(
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "use POST /v1/upstream",
            ),
            header::ALLOW,
            "POST",
        ),
    )
}
