//! Small HTTP/JSON control and stats endpoint (axum).
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /stats` (`?summary=true` leaves out `messages`) | | [`crate::Stats`] |
//! | `GET /faults` | | [`crate::Faults`] |
//! | `POST /faults` | [`crate::Faults`] JSON | the faults now in force |
//! | `POST /unregister/{token}` | | `{"unregistered":token}` |
//! | `POST /upstream` | `{"from":..,"category":..,"data":{..}}` | `{"message_id":..}` |
//! | `POST /drain` | | `{"ok":true}` |
//! | `POST /drop` | | `{"ok":true}` |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::faults::Faults;
use crate::state::Shared;
use crate::stats::Stats;

type Sh = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/faults", get(get_faults).post(set_faults))
        .route("/unregister/{token}", post(unregister))
        .route("/upstream", post(upstream))
        .route("/drain", post(drain))
        .route("/drop", post(drop_all))
        .with_state(shared)
}

#[derive(Deserialize)]
struct StatsQuery {
    #[serde(default)]
    summary: bool,
}

async fn stats(State(sh): Sh, Query(q): Query<StatsQuery>) -> Json<Stats> {
    Json(sh.stats(!q.summary))
}

async fn get_faults(State(sh): Sh) -> Json<Faults> {
    Json(sh.faults.borrow().clone())
}

async fn set_faults(State(sh): Sh, Json(f): Json<Faults>) -> Json<Faults> {
    sh.set_faults(f.clone());
    Json(f)
}

async fn unregister(State(sh): Sh, Path(token): Path<String>) -> Json<Value> {
    sh.mark_unregistered(&token);
    Json(json!({ "unregistered": token }))
}

#[derive(Deserialize)]
struct UpstreamReq {
    from: String,
    category: String,
    #[serde(default)]
    data: Map<String, Value>,
}

async fn upstream(State(sh): Sh, Json(r): Json<UpstreamReq>) -> Json<Value> {
    let id = sh.send_upstream(&r.from, &r.category, r.data);
    Json(json!({ "message_id": id }))
}

async fn drain(State(sh): Sh) -> Json<Value> {
    sh.drain_all();
    Json(json!({ "ok": true }))
}

async fn drop_all(State(sh): Sh) -> Json<Value> {
    sh.drop_all();
    Json(json!({ "ok": true }))
}
