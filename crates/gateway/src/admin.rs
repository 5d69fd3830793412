//! Admin HTTP (SPEC §6): `/healthz`, `/readyz`, `/metrics` (Prometheus text)
//! and the JSON API under `/api/v1`, optionally behind a bearer token.

use crate::config::Secret;
use crate::engine::{Cmd, Snapshot};
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the handlers need.
#[derive(Clone)]
pub struct AdminState {
    engine: mpsc::Sender<Cmd>,
    store: store::Store,
    token: Arc<Secret>,
}

impl AdminState {
    /// Builds the state.
    pub fn new(engine: mpsc::Sender<Cmd>, store: store::Store, token: Secret) -> AdminState {
        AdminState {
            engine,
            store,
            token: Arc::new(token),
        }
    }

    async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.engine.send(Cmd::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/messages", get(messages))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(api)
        .with_state(state)
}

/// Serves the admin router until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, state: AdminState, shutdown: CancellationToken) {
    let _ = prometheus();
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
    if s.links.iter().any(|l| l.state == "ready") {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let reason = match &s.auth_error {
        Some(e) => format!("not ready: FCM rejected credentials ({e})\n"),
        None => "not ready: no CCS connection is ready\n".to_string(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
}

async fn metrics_text(State(st): State<AdminState>) -> Response {
    if let Some(s) = st.snapshot().await {
        for l in &s.links {
            metrics::gauge!("gimmm_link_pending", "link" => l.id.to_string()).set(l.pending as f64);
        }
        for state in ["connecting", "ready", "draining"] {
            let n = s.links.iter().filter(|l| l.state == state).count();
            metrics::gauge!("gimmm_links_by_state", "state" => state).set(n as f64);
        }
        for sess in &s.sessions {
            metrics::gauge!("gimmm_session_queue_depth", "session" => sess.session_id.clone())
                .set((sess.queued + sess.unacked) as f64);
        }
        metrics::gauge!("gimmm_downstream_in_memory").set(s.messages_in_memory as f64);
    }
    if let Ok((queued, outbox, unroutable)) = st.store.counts() {
        metrics::gauge!("gimmm_store_queued_downstream").set(queued as f64);
        metrics::gauge!("gimmm_store_outbox").set(outbox as f64);
        metrics::gauge!("gimmm_store_unroutable").set(unroutable as f64);
    }
    match prometheus() {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder unavailable\n").into_response(),
    }
}

async fn sessions(State(st): State<AdminState>) -> Response {
    match st.snapshot().await {
        Some(s) => Json(s.sessions).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn connections(State(st): State<AdminState>) -> Response {
    match st.snapshot().await {
        Some(s) => Json(serde_json::json!({"links": s.links, "auth_error": s.auth_error})).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[derive(Deserialize)]
struct MessagesQuery {
    state: Option<String>,
    session: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
}

async fn messages(State(st): State<AdminState>, Query(q): Query<MessagesQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).min(1000);
    let store = st.store.clone();
    let state = q.state.unwrap_or_else(|| "queued".into());
    let res = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, String> {
        match state.as_str() {
            "queued" => {
                let rows = store.load_queued(q.after.unwrap_or(0), limit * 4).map_err(|e| e.to_string())?;
                let items: Vec<serde_json::Value> = rows
                    .into_iter()
                    .filter(|r| q.session.as_deref().is_none_or(|s| s == r.session))
                    .take(limit)
                    .map(|r| {
                        serde_json::json!({"id": r.id, "session": r.session, "message_id": r.message_id,
                            "group_id": r.group_id, "attempts": r.attempts, "fcm_data": serde_json::from_str::<serde_json::Value>(&r.body).unwrap_or_default()})
                    })
                    .collect();
                let next = items.last().and_then(|i| i.get("id")).cloned();
                Ok(serde_json::json!({"state": "queued", "items": items, "next_after": next}))
            }
            "unroutable" => {
                let rows = store.unroutable(limit).map_err(|e| e.to_string())?;
                let items: Vec<serde_json::Value> = rows
                    .into_iter()
                    .map(|(c, b)| serde_json::json!({"category": c, "fcm_data": serde_json::from_str::<serde_json::Value>(&b).unwrap_or_default()}))
                    .collect();
                Ok(serde_json::json!({"state": "unroutable", "items": items}))
            }
            "outbox" => {
                let Some(session) = q.session.clone() else {
                    return Err("state=outbox needs session=".into());
                };
                let rows = store.load_outbox(&session, q.after.unwrap_or(0), limit).map_err(|e| e.to_string())?;
                let items: Vec<serde_json::Value> = rows
                    .into_iter()
                    .map(|r| serde_json::json!({"sequence_id": r.seq, "message": serde_json::from_str::<serde_json::Value>(&r.body).unwrap_or_default()}))
                    .collect();
                Ok(serde_json::json!({"state": "outbox", "items": items}))
            }
            other => Err(format!("unknown state {other:?} (queued, outbox, unroutable)")),
        }
    })
    .await;
    match res {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
