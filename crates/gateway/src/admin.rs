//! Admin HTTP (SPEC §6, §8.4, §10): `/healthz`, `/readyz`, `/metrics`
//! (Prometheus text) and the JSON API under `/api/v1`, optionally behind a
//! bearer token. `/readyz` is 200 while one link is ready with capacity
//! (on HTTP v1: connected and holding a valid access token). The outbox
//! view tells ingress upstream (SPEC §10) from FCM's and can filter by it
//! (`source=ingress|fcm`).

use crate::config::Secret;
use crate::engine::{Cmd, Snapshot};
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Renders gauges a link factory keeps (e.g. HTTP v1 streams in flight).
pub type ExtraMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the handlers need.
#[derive(Clone)]
pub struct AdminState {
    engine: mpsc::Sender<Cmd>,
    store: store::SharedStore,
    token: Arc<Secret>,
    /// `xmpp` or `http_v1`, for `/readyz`'s reason.
    link_kind: &'static str,
    extra_metrics: Option<ExtraMetrics>,
}

impl AdminState {
    /// Builds the state.
    pub fn new(engine: mpsc::Sender<Cmd>, store: store::SharedStore, token: Secret) -> AdminState {
        AdminState {
            engine,
            store,
            token: Arc::new(token),
            link_kind: "xmpp",
            extra_metrics: None,
        }
    }

    /// The kind of link in use (for `/readyz`) and the gauges its factory
    /// renders at scrape time.
    pub fn with_link(mut self, kind: &'static str, extra: Option<ExtraMetrics>) -> AdminState {
        self.link_kind = kind;
        self.extra_metrics = extra;
        self
    }

    async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.engine.send(Cmd::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }
}

pub use crate::metrics::{prometheus, METRICS};

/// How often histogram samples are folded into their buckets even when
/// nobody scrapes (the recorder otherwise buffers every sample: 8 bytes per
/// message per histogram; at 100k msg/s, 5 s of them were 4 MB of RSS).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/messages", get(messages))
        .route("/api/v1/cluster", get(cluster))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(api)
        .with_state(state)
}

/// Serves the admin router until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) {
    if let Some(h) = prometheus() {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => h.run_upkeep(),
                    _ = stop.cancelled() => break,
                }
            }
        });
    }
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn require_token(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    if st.token.is_empty() {
        return next.run(req).await;
    }
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.as_bytes() == st.token.expose().as_bytes());
    if ok {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response()
    }
}

async fn readyz(State(st): State<AdminState>) -> Response {
    let Some(s) = st.snapshot().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "engine not running\n").into_response();
    };
    // A link with capacity 0 is connected but cannot send (HTTP v1: no
    // valid access token, or FCM refuses the credentials).
    if s.links.iter().any(|l| l.state == "ready" && l.capacity > 0) {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let reason = match (&s.auth_error, st.link_kind) {
        (Some(e), _) => format!("not ready: FCM rejected credentials ({e})\n"),
        (None, "http_v1") => {
            "not ready: no FCM HTTP v1 connection is ready (connecting, or no valid access token)\n"
                .to_string()
        }
        (None, _) => "not ready: no CCS connection is ready\n".to_string(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
}

async fn metrics_text(State(st): State<AdminState>) -> Response {
    let Some(h) = prometheus() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n",
        )
            .into_response();
    };
    let snapshot = st.snapshot().await;
    let counts = st.store.counts().await.ok();
    let mut text = h.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    render_state(&mut text, snapshot.as_ref(), counts);
    if let Some(extra) = &st.extra_metrics {
        extra(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Gauges computed at scrape time from the engine's [`Snapshot`] and the
/// store's row counts. They are rendered here rather than kept in the
/// recorder so that a link or session that went away leaves no stale series
/// behind (links get a new id on every reconnect).
fn render_state(out: &mut String, s: Option<&Snapshot>, counts: Option<store::Counts>) {
    family(
        out,
        "gimmm_engine_up",
        "1 when the engine answered this scrape",
        &[(String::new(), if s.is_some() { 1.0 } else { 0.0 })],
    );
    if let Some(s) = s {
        let links: Vec<(String, f64)> = s
            .links
            .iter()
            .map(|l| {
                (
                    labels(&[("link", &l.id.to_string()), ("state", l.state)]),
                    l.pending as f64,
                )
            })
            .collect();
        family(
            out,
            "gimmm_link_pending",
            "Unacked downstream messages per CCS connection",
            &links,
        );
        let by_state: Vec<(String, f64)> = ["connecting", "ready", "draining"]
            .iter()
            .map(|st| {
                let n = s.links.iter().filter(|l| l.state == *st).count();
                (labels(&[("state", st)]), n as f64)
            })
            .collect();
        family(
            out,
            "gimmm_links_by_state",
            "CCS connections by state",
            &by_state,
        );
        let sess = |f: &dyn Fn(&crate::engine::SessionInfo) -> f64| -> Vec<(String, f64)> {
            s.sessions
                .iter()
                .map(|x| (labels(&[("session", &x.session_id)]), f(x)))
                .collect()
        };
        family(
            out,
            "gimmm_session_queue_depth",
            "Sequenced messages held in memory for a BAL session, waiting or unacked",
            &sess(&|x| (x.queued + x.unacked) as f64),
        );
        family(
            out,
            "gimmm_session_downstream_queued",
            "Downstream messages of a session held in memory, waiting for FCM or in flight",
            &sess(&|x| x.downstream_in_memory as f64),
        );
        family(
            out,
            "gimmm_session_unacked",
            "Sequenced messages sent to a BAL session and not yet ACKed",
            &sess(&|x| x.unacked as f64),
        );
        family(
            out,
            "gimmm_session_spilled",
            "1 when more sequenced messages for the session wait on disk only",
            &sess(&|x| if x.spilled { 1.0 } else { 0.0 }),
        );
        family(
            out,
            "gimmm_session_connected",
            "1 when a BAL is logged on to the session",
            &sess(&|x| if x.connected { 1.0 } else { 0.0 }),
        );
        family(
            out,
            "gimmm_downstream_in_memory",
            "Downstream messages held in memory (queued, waiting to retry or in flight)",
            &[(String::new(), s.messages_in_memory as f64)],
        );
        family(
            out,
            "gimmm_fcm_auth_failing",
            "1 while FCM refuses the configured credentials",
            &[(
                String::new(),
                if s.auth_error.is_some() { 1.0 } else { 0.0 },
            )],
        );
    }
    if let Some(store::Counts {
        queued,
        outbox,
        unroutable,
    }) = counts
    {
        family(
            out,
            "gimmm_store_queued_downstream",
            "Downstream messages in the store without a final result",
            &[(String::new(), queued as f64)],
        );
        family(
            out,
            "gimmm_store_outbox",
            "Sequenced messages in the store not yet ACKed by their BAL",
            &[(String::new(), outbox as f64)],
        );
        family(
            out,
            "gimmm_store_unroutable",
            "Unroutable upstream messages kept in the store",
            &[(String::new(), unroutable as f64)],
        );
    }
}

/// One gauge family in the Prometheus text format.
fn family(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
    out.push('\n');
}

/// `{k="v",...}` with Prometheus label escaping.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

async fn sessions(State(st): State<AdminState>) -> Response {
    match st.snapshot().await {
        Some(s) => Json(s.sessions).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Who writes the store (SPEC §12): on PostgreSQL the writer lease (this
/// node holds it while it serves; standbys wait outside the database and
/// are not listed); SQLite is one node's.
async fn cluster(State(st): State<AdminState>) -> Response {
    let store = st.store.describe();
    match st.store.writer_lease().await {
        Ok(None) => Json(serde_json::json!({
            "store": store,
            "mode": "single",
            "nodes": 1,
        }))
        .into_response(),
        Ok(Some(l)) => {
            let writes = l.holder == l.node_id && l.holder_epoch == l.epoch;
            Json(serde_json::json!({
                "store": store,
                "mode": "writer_lease",
                "node": {"id": l.node_id, "epoch": l.epoch, "writes": writes},
                "lease": {
                    "holder": l.holder,
                    "epoch": l.holder_epoch,
                    "expires_in_ms": l.expires_in_ms,
                    "lease_ms": l.lease_ms,
                },
                "partitions": serde_json::Value::Null,
            }))
            .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the writer lease: {e}\n"),
        )
            .into_response(),
    }
}

async fn connections(State(st): State<AdminState>) -> Response {
    match st.snapshot().await {
        Some(s) => {
            Json(serde_json::json!({"links": s.links, "auth_error": s.auth_error})).into_response()
        }
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[derive(Deserialize)]
struct MessagesQuery {
    state: Option<String>,
    session: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
    /// `state=outbox` only: `ingress` or `fcm` keeps the UPSTREAMs that
    /// came that way (SPEC §10).
    source: Option<String>,
}

/// Where an UPSTREAM in the outbox came from: `ingress` (SPEC §10) or
/// `fcm`; `None` for other sequenced messages.
fn upstream_source(line: &serde_json::Value) -> Option<&'static str> {
    if line.get("message_type").and_then(|t| t.as_str()) != Some("UPSTREAM") {
        return None;
    }
    let ingress = line
        .pointer("/fcm_data/source")
        .and_then(|s| s.as_str())
        .is_some_and(|s| s == "ingress");
    Some(if ingress { "ingress" } else { "fcm" })
}

/// A page of a session's outbox, optionally only the UPSTREAMs from
/// `source`.
async fn outbox_page(
    store: &store::SharedStore,
    session: &str,
    source: Option<&str>,
    after: u64,
    limit: usize,
) -> Result<serde_json::Value, ApiError> {
    let page = if source.is_some() { SCAN_PAGE } else { limit };
    let (items, next) = scan(
        after,
        limit,
        page,
        |cursor, n| store.load_outbox(session, cursor, n),
        |r| r.seq,
        |r| {
            let message = json_or_null(&r.body);
            let from = upstream_source(&message);
            source.is_none_or(|want| from == Some(want)).then(
                || serde_json::json!({"sequence_id": r.seq, "source": from, "message": message}),
            )
        },
    )
    .await?;
    Ok(serde_json::json!({"state": "outbox", "items": items, "next_after": next}))
}

/// Reads rows `page` at a time from `after` on and keeps those `pick`
/// turns into an item, until `limit` items, [`SCAN_MAX`] rows read or the
/// end; also where a following request resumes (`None` at the end; with a
/// full last page the next one may be empty: a client just gets [] then).
async fn scan<T, F>(
    after: u64,
    limit: usize,
    page: usize,
    mut load: impl FnMut(u64, usize) -> F,
    key: impl Fn(&T) -> u64,
    mut pick: impl FnMut(T) -> Option<serde_json::Value>,
) -> Result<(Vec<serde_json::Value>, Option<u64>), ApiError>
where
    F: std::future::Future<Output = Result<Vec<T>, store::StoreError>>,
{
    let mut cursor = after;
    let mut items = Vec::new();
    let mut scanned = 0usize;
    let mut more = true;
    'scan: while items.len() < limit && scanned < SCAN_MAX {
        let rows = load(cursor, page).await.map_err(internal)?;
        let n = rows.len();
        for r in rows {
            cursor = key(&r);
            scanned += 1;
            if let Some(item) = pick(r) {
                items.push(item);
                if items.len() == limit {
                    break 'scan;
                }
            }
        }
        if n < page {
            more = false;
            break;
        }
    }
    Ok((items, more.then_some(cursor)))
}

/// Rows read per store query while filtering queued messages by session.
const SCAN_PAGE: usize = 500;
/// Most queued rows one request looks at (the answer's `next_after` resumes).
const SCAN_MAX: usize = 20_000;

fn json_or_null(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

type ApiError = (StatusCode, String);

fn internal(e: store::StoreError) -> ApiError {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("store: {e}\n"))
}

async fn queued_page(
    store: &store::SharedStore,
    session: Option<&str>,
    after: u64,
    limit: usize,
) -> Result<serde_json::Value, ApiError> {
    let (items, next) = scan(
        after,
        limit,
        SCAN_PAGE,
        |cursor, n| store.load_queued(cursor, n),
        |r| r.id,
        |r| {
            session.is_none_or(|s| s == r.session).then(|| {
                serde_json::json!({
                "id": r.id, "session": r.session, "message_id": r.message_id,
                "group_id": r.group_id, "attempts": r.attempts,
                "not_before_ms": r.not_before_ms, "accepted_at_ms": r.accepted_at_ms,
                "expires_at_ms": r.expires_at_ms,
                "fcm_data": json_or_null(&r.body)})
            })
        },
    )
    .await?;
    Ok(serde_json::json!({"state": "queued", "items": items, "next_after": next}))
}

async fn messages(State(st): State<AdminState>, Query(q): Query<MessagesQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let state = q.state.unwrap_or_else(|| "queued".into());
    let after = q.after.unwrap_or(0);
    let res: Result<serde_json::Value, ApiError> = match state.as_str() {
        "queued" => queued_page(&st.store, q.session.as_deref(), after, limit).await,
        "unroutable" => match st.store.unroutable(limit).await {
            Ok(rows) => {
                let items: Vec<serde_json::Value> = rows
                    .into_iter()
                    .map(|r| serde_json::json!({"category": r.category, "fcm_data": json_or_null(&r.body)}))
                    .collect();
                Ok(serde_json::json!({"state": "unroutable", "items": items}))
            }
            Err(e) => Err(internal(e)),
        },
        "outbox" => match (q.session.as_deref(), q.source.as_deref()) {
            (None, _) => Err((
                StatusCode::BAD_REQUEST,
                "state=outbox needs session=\n".into(),
            )),
            (Some(_), Some(other)) if other != "ingress" && other != "fcm" => Err((
                StatusCode::BAD_REQUEST,
                format!("unknown source {other:?} (ingress, fcm)\n"),
            )),
            (Some(session), source) => outbox_page(&st.store, session, source, after, limit).await,
        },
        other => Err((
            StatusCode::BAD_REQUEST,
            format!("unknown state {other:?} (queued, outbox, unroutable)\n"),
        )),
    };
    match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
