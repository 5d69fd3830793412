//! Plain-HTTP stats and control endpoint of the FCM HTTP v1 emulator (axum),
//! on its own listener like the CCS emulator's (SPEC §9, "Stats").
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /stats` (`?summary=true` leaves out `messages`) | | [`super::V1Stats`] |
//! | `GET /faults` | | [`super::V1Faults`] |
//! | `POST /faults` | [`super::V1Faults`] JSON | the faults now in force (400 when refused) |
//! | `POST /unregister/{token}` | | `{"unregistered":token}` |
//! | `POST /drop` | | `{"ok":true}` (every connection dropped abruptly) |
//! | `POST /goaway` | | `{"ok":true}` (GOAWAY on every connection) |
//! | `POST /revoke-tokens` | | `{"ok":true}` (every access token forgotten) |
//! | `POST /reset` | | `{"ok":true}` (counters zeroed) |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::V1Faults;
use super::state::Shared;
use super::stats::V1Stats;

type Sh = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/faults", get(get_faults).post(set_faults))
        .route("/unregister/{token}", post(unregister))
        .route("/drop", post(drop_all))
        .route("/goaway", post(goaway_all))
        .route("/revoke-tokens", post(revoke_tokens))
        .route("/reset", post(reset))
        .with_state(shared)
}

#[derive(Deserialize)]
struct StatsQuery {
    #[serde(default)]
    summary: bool,
}

async fn stats(State(sh): Sh, Query(q): Query<StatsQuery>) -> Json<V1Stats> {
    Json(sh.stats(!q.summary))
}

async fn get_faults(State(sh): Sh) -> Json<V1Faults> {
    Json(sh.faults.borrow().clone())
}

async fn set_faults(State(sh): Sh, Json(f): Json<V1Faults>) -> (StatusCode, Json<Value>) {
    if let Err(e) = f.check() {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": e })));
    }
    sh.set_faults(f.clone());
    (
        StatusCode::OK,
        Json(serde_json::to_value(f).unwrap_or(Value::Null)),
    )
}

async fn unregister(State(sh): Sh, Path(token): Path<String>) -> Json<Value> {
    sh.mark_unregistered(&token);
    Json(json!({ "unregistered": token }))
}

async fn drop_all(State(sh): Sh) -> Json<Value> {
    sh.drop_all();
    Json(json!({ "ok": true }))
}

async fn goaway_all(State(sh): Sh) -> Json<Value> {
    sh.goaway_all();
    Json(json!({ "ok": true }))
}

async fn revoke_tokens(State(sh): Sh) -> Json<Value> {
    sh.tokens.revoke_all();
    Json(json!({ "ok": true }))
}

async fn reset(State(sh): Sh) -> Json<Value> {
    sh.reset_stats();
    Json(json!({ "ok": true }))
}
