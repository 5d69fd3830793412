//! Admin HTTP (issue 4): the router driven with `tower::ServiceExt::oneshot`
//! (against a scripted engine and a real store), and the real listener of a
//! gateway started by the harness (real engine, real CCS links to the
//! emulator). The metrics recorder is process-global, so metric checks here
//! are deltas / at-least, never exact totals.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bal::proto::FromBal;
use bal::ToBal;
use common::*;
use emulator::Faults;
use gateway::admin::{self, AdminState};
use gateway::config::Secret;
use gateway::engine::{Cmd, LinkInfo, SessionInfo, Snapshot};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tower::ServiceExt;

const ADMIN_TOKEN: &str = "admin-secret-token";

// ----- helpers ----------------------------------------------------------

/// A scripted engine: answers every snapshot request with `snap`.
fn fake_engine(snap: Snapshot) -> mpsc::Sender<Cmd> {
    let (tx, mut rx) = mpsc::channel::<Cmd>(16);
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            if let Cmd::Snapshot(reply) = cmd {
                let _ = reply.send(snap.clone());
            }
        }
    });
    tx
}

/// A real store in `dir`, with `rows` queued downstream messages: row `i`
/// (1-based) belongs to session `a` when odd, `b` when even.
async fn store_with_rows(dir: &std::path::Path, rows: u64) -> store::SharedStore {
    let (ctx, mut crx) = mpsc::unbounded_channel();
    let (st, _) = store::sqlite::SqliteStore::open(&dir.join("admin.db"), ctx).unwrap();
    let st: store::SharedStore = Arc::new(st);
    let ops = (1..=rows)
        .map(|i| {
            store::Op::InsertDownstream(store::NewDownstream {
                id: i,
                session: Arc::from(if i % 2 == 1 { "a" } else { "b" }),
                message_id: format!("m-{i}"),
                group_id: None,
                body: format!(r#"{{"to":"tok","message_id":"m-{i}"}}"#),
                accepted_at_ms: store::now_ms(),
                expires_at_ms: store::now_ms() + 600_000,
                receipt: false,
            })
        })
        .collect();
    st.submit(store::Batch { no: 1, ops }).unwrap();
    let c = tokio::time::timeout(WAIT, crx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.no, 1);
    assert!(c.failed_inserts.is_empty());
    st
}

async fn oneshot(app: &axum::Router, uri: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::builder().uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Polls `path` until `pred(status, body)` holds.
async fn wait_http(
    addr: SocketAddr,
    path: &str,
    what: &str,
    pred: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (st, body) = http_get(addr, path, None).await;
        if pred(st, &body) {
            return (st, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last {path}: {st} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses a scrape strictly enough: every sample line is `name{..} number`,
/// then with the Prometheus text parser.
fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad sample line {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of `name` with exactly these labels (absent = 0).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

async fn scrape(addr: SocketAddr) -> (String, prometheus_parse::Scrape) {
    let (st, text) = http_get(addr, "/metrics", None).await;
    assert_eq!(st, 200, "{text}");
    let parsed = parse_metrics(&text);
    (text, parsed)
}

fn snapshot_with(links: &[(u64, &'static str, usize)], auth_error: Option<&str>) -> Snapshot {
    Snapshot {
        links: links
            .iter()
            .map(|(id, state, pending)| LinkInfo {
                id: *id,
                state,
                pending: *pending,
                capacity: 100,
            })
            .collect(),
        sessions: vec![
            SessionInfo {
                session_id: "com.example.app".into(),
                connected: true,
                queued: 3,
                unacked: 4,
                spilled: false,
                downstream_in_memory: 2,
            },
            SessionInfo {
                session_id: "odd\"session\\id".into(),
                connected: false,
                queued: 0,
                unacked: 0,
                spilled: true,
                downstream_in_memory: 0,
            },
        ],
        messages_in_memory: 17,
        messages_spilled: false,
        auth_error: auth_error.map(str::to_string),
        unroutable: 0,
        ..Snapshot::default()
    }
}

// ----- the router with oneshot -------------------------------------------

#[tokio::test]
async fn oneshot_healthz_and_readyz_follow_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path(), 0).await;
    let cases: Vec<(Snapshot, StatusCode, &str)> = vec![
        (
            snapshot_with(&[(1, "ready", 0)], None),
            StatusCode::OK,
            "ready",
        ),
        (
            snapshot_with(&[(1, "connecting", 0), (2, "draining", 5)], None),
            StatusCode::SERVICE_UNAVAILABLE,
            "no CCS connection is ready",
        ),
        (
            snapshot_with(&[(3, "connecting", 0)], Some("not-authorized")),
            StatusCode::SERVICE_UNAVAILABLE,
            "FCM rejected credentials",
        ),
    ];
    for (snap, want, reason) in cases {
        let app = admin::router(AdminState::new(
            fake_engine(snap),
            store.clone(),
            Secret::default(),
        ));
        let (st, body) = oneshot(&app, "/healthz", None).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let (st, body) = oneshot(&app, "/readyz", None).await;
        assert_eq!(st, want, "{body}");
        assert!(body.contains(reason), "{body}");
    }
    // An engine that is gone: alive but not ready.
    let (tx, rx) = mpsc::channel::<Cmd>(1);
    drop(rx);
    let app = admin::router(AdminState::new(tx, store, Secret::default()));
    assert_eq!(oneshot(&app, "/healthz", None).await.0, StatusCode::OK);
    let (st, body) = oneshot(&app, "/readyz", None).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("engine not running"), "{body}");
}

#[tokio::test]
async fn oneshot_bearer_token_guards_only_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path(), 2).await;
    let app = admin::router(AdminState::new(
        fake_engine(snapshot_with(&[(1, "ready", 2)], None)),
        store.clone(),
        Secret::new(ADMIN_TOKEN),
    ));
    for path in [
        "/api/v1/sessions",
        "/api/v1/connections",
        "/api/v1/messages",
    ] {
        let (st, body) = oneshot(&app, path, None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(!body.contains(ADMIN_TOKEN));
        let (st, _) = oneshot(&app, path, Some("wrong-token")).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{path}");
        let (st, body) = oneshot(&app, path, Some(ADMIN_TOKEN)).await;
        assert_eq!(st, StatusCode::OK, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap();
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (st, body) = oneshot(&app, path, None).await;
        assert_eq!(st, StatusCode::OK, "{path} must not need the token: {body}");
    }
    // Without a configured token the API is open.
    let open = admin::router(AdminState::new(
        fake_engine(Snapshot::default()),
        store,
        Secret::default(),
    ));
    assert_eq!(
        oneshot(&open, "/api/v1/sessions", None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn oneshot_api_json_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path(), 0).await;
    let app = admin::router(AdminState::new(
        fake_engine(snapshot_with(
            &[(4, "ready", 9), (5, "draining", 1)],
            Some("bad key"),
        )),
        store,
        Secret::default(),
    ));
    let (st, body) = oneshot(&app, "/api/v1/sessions", None).await;
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["session_id"], "com.example.app");
    assert_eq!(v[0]["connected"], true);
    assert_eq!(v[0]["unacked"], 4);
    let (_, body) = oneshot(&app, "/api/v1/connections", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["links"][0]["id"], 4);
    assert_eq!(v["links"][0]["state"], "ready");
    assert_eq!(v["links"][0]["pending"], 9);
    assert_eq!(v["links"][1]["state"], "draining");
    assert_eq!(v["auth_error"], "bad key");
    let (st, body) = oneshot(&app, "/api/v1/messages?state=nonsense", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("nonsense"), "{body}");
    let (st, _) = oneshot(&app, "/api/v1/messages?state=outbox", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "outbox needs a session");
    let (st, _) = oneshot(&app, "/api/v1/messages?limit=abc", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn oneshot_messages_filter_by_session_and_page() {
    let dir = tempfile::tempdir().unwrap();
    // 1200 rows: more than one store page (500) per request.
    let store = store_with_rows(dir.path(), 1200).await;
    let app = admin::router(AdminState::new(
        fake_engine(Snapshot::default()),
        store,
        Secret::default(),
    ));
    let (st, body) = oneshot(&app, "/api/v1/messages?state=queued&limit=3", None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<u64> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(v["items"][0]["fcm_data"]["message_id"], "m-1");
    assert_eq!(v["next_after"], 3);

    // Page through session b in pages of 250: every even id, once, in order.
    let mut after = 0u64;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let uri = format!("/api/v1/messages?state=queued&session=b&limit=250&after={after}");
        let (st, body) = oneshot(&app, &uri, None).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for i in v["items"].as_array().unwrap() {
            assert_eq!(i["session"], "b");
            seen.push(i["id"].as_u64().unwrap());
        }
        match v["next_after"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    let want: Vec<u64> = (1..=1200).filter(|i| i % 2 == 0).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn oneshot_metrics_render_engine_state() {
    let _ = admin::prometheus();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path(), 5).await;
    let app = admin::router(AdminState::new(
        fake_engine(snapshot_with(
            &[(7, "ready", 42), (8, "draining", 3), (9, "connecting", 0)],
            Some("no"),
        )),
        store,
        Secret::new(ADMIN_TOKEN),
    ));
    let (st, text) = oneshot(&app, "/metrics", None).await;
    assert_eq!(st, StatusCode::OK);
    let s = parse_metrics(&text);
    assert_eq!(
        value(
            &s,
            "gimmm_link_pending",
            &[("link", "7"), ("state", "ready")]
        ),
        42.0
    );
    assert_eq!(value(&s, "gimmm_link_pending", &[("link", "8")]), 3.0);
    for (state, n) in [("ready", 1.0), ("draining", 1.0), ("connecting", 1.0)] {
        assert_eq!(value(&s, "gimmm_links_by_state", &[("state", state)]), n);
    }
    assert_eq!(
        value(
            &s,
            "gimmm_session_queue_depth",
            &[("session", "com.example.app")]
        ),
        7.0
    );
    assert_eq!(
        value(
            &s,
            "gimmm_session_unacked",
            &[("session", "com.example.app")]
        ),
        4.0
    );
    assert_eq!(value(&s, "gimmm_downstream_in_memory", &[]), 17.0);
    assert_eq!(value(&s, "gimmm_fcm_auth_failing", &[]), 1.0);
    assert_eq!(value(&s, "gimmm_engine_up", &[]), 1.0);
    assert_eq!(value(&s, "gimmm_store_queued_downstream", &[]), 5.0);
    // The escaped session id survives the round trip.
    assert!(
        text.contains(r#"gimmm_session_spilled{session="odd\"session\\id"} 1"#),
        "{text}"
    );
    assert!(text.contains("# HELP gimmm_link_pending "));
    assert!(!text.contains(ADMIN_TOKEN));
}

// ----- a real listener ---------------------------------------------------

#[tokio::test]
async fn real_listener_health_ready_token_and_api() {
    let env = start(
        Faults {
            ack_delay: Duration::from_millis(3000),
            ..Faults::default()
        },
        |c| c.admin.token = Secret::new(ADMIN_TOKEN),
    )
    .await;
    let addr = env.gw().admin_addr.unwrap();
    assert_eq!(http_get(addr, "/healthz", None).await.0, 200);
    wait_http(addr, "/readyz", "readiness", |st, _| st == 200).await;

    // Bearer token on /api/*.
    let (st, _) = http_get(addr, "/api/v1/sessions", None).await;
    assert_eq!(st, 401);
    let (st, _) = http_get(addr, "/api/v1/sessions", Some("nope")).await;
    assert_eq!(st, 401);
    let (st, body) = http_get(addr, "/api/v1/sessions", Some(ADMIN_TOKEN)).await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&SESSION), "{body}");
    let (st, body) = http_get(addr, "/api/v1/connections", Some(ADMIN_TOKEN)).await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["state"] == "ready"),
        "{body}"
    );

    // Three messages in flight (acks are delayed): queued in the store.
    let mut c = env.bal().await;
    for i in 0..3 {
        c.downstream(None, msg("device-token-1", &format!("adm-{i}")))
            .await
            .unwrap();
        assert!(matches!(
            recv(&mut c).await,
            ToBal::DownstreamAccepted { .. }
        ));
    }
    let (st, body) = http_get(
        addr,
        &format!("/api/v1/messages?state=queued&session={SESSION}&limit=2"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{body}");
    assert_eq!(items[0]["message_id"], "adm-0");
    assert_eq!(items[1]["message_id"], "adm-1");
    assert!(v["next_after"].is_u64(), "{body}");
    let (_, body) = http_get(
        addr,
        "/api/v1/messages?state=queued&session=com.example.other&limit=10",
        Some(ADMIN_TOKEN),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 0, "{body}");

    // The final results, not yet ACKed by the BAL, are in the outbox.
    let mut finals = 0;
    while finals < 3 {
        if recv(&mut c).await.is_final() {
            finals += 1;
        }
    }
    let (_, body) = http_get(
        addr,
        &format!("/api/v1/messages?state=outbox&session={SESSION}&limit=10"),
        Some(ADMIN_TOKEN),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{body}");
    assert_eq!(items[0]["message"]["message_type"], "DOWNSTREAM_ACK");
    env.stop().await;
}

#[tokio::test]
async fn real_listener_not_ready_while_ccs_is_unreachable() {
    // A port nothing listens on.
    let closed = testkit::ClosedPort::new().unwrap();
    let env = start(Faults::default(), |c| c.fcm.port = closed.port()).await;
    let addr = env.gw().admin_addr.unwrap();
    // Wait until at least one connect attempt has failed, then check.
    wait_http(addr, "/api/v1/connections", "a link", |st, b| {
        st == 200 && b.contains("connecting")
    })
    .await;
    for _ in 0..3 {
        let (st, body) = http_get(addr, "/readyz", None).await;
        assert_eq!(st, 503, "{body}");
        assert!(body.contains("no CCS connection is ready"), "{body}");
        assert_eq!(http_get(addr, "/healthz", None).await.0, 200);
    }
    let (_, s) = scrape(addr).await;
    assert_eq!(
        value(&s, "gimmm_links_by_state", &[("state", "ready")]),
        0.0
    );
    env.stop().await;
}

#[tokio::test]
async fn real_listener_readyz_names_rejected_credentials() {
    let _ = admin::prometheus();
    let env = start(Faults::default(), |c| {
        c.fcm.server_key = Secret::new("definitely-the-wrong-key")
    })
    .await;
    let addr = env.gw().admin_addr.unwrap();
    let (st, body) = wait_http(addr, "/readyz", "the auth failure", |_, b| {
        b.contains("FCM rejected credentials")
    })
    .await;
    assert_eq!(st, 503, "{body}");
    assert!(!body.contains("definitely-the-wrong-key"), "{body}");
    env.wait_emu("an auth failure", |s| s.auth_failures >= 1)
        .await;
    let (text, s) = scrape(addr).await;
    assert_eq!(value(&s, "gimmm_fcm_auth_failing", &[]), 1.0, "{text}");
    assert!(value(&s, "gimmm_link_connect_failures_total", &[("auth", "true")]) >= 1.0);
    assert!(!text.contains("definitely-the-wrong-key"));
    env.stop().await;
}

// ----- metrics under traffic ------------------------------------------------

/// Drives every kind of traffic the metrics describe through a running
/// gateway and returns the scrapes before and after.
async fn exercise(env: &Env) -> (prometheus_parse::Scrape, String, prometheus_parse::Scrape) {
    let addr = env.gw().admin_addr.unwrap();
    wait_http(addr, "/readyz", "readiness", |st, _| st == 200).await;
    let (_, before) = scrape(addr).await;
    let mut c = env.bal().await;

    // An ack with a receipt, a validation reject, a final nack.
    let mut with_receipt = msg("device-token-1", "met-ok");
    with_receipt["delivery_receipt_requested"] = true.into();
    c.downstream(None, with_receipt).await.unwrap();
    recv_until(&mut c, |m| matches!(m, ToBal::DownstreamReceipt { .. })).await;
    c.downstream(None, msg("bad token!", "met-bad"))
        .await
        .unwrap();
    recv_until(&mut c, |m| m.is_final()).await;
    c.downstream(None, msg("unregistered-x", "met-gone"))
        .await
        .unwrap();
    recv_until(&mut c, |m| m.is_final()).await;

    // Retryable nacks until MAX_RETRIES (max_attempts = 2 in this config).
    env.emu.set_faults(Faults {
        nack_fraction: 1.0,
        nack_code: Some(fcm::ErrorCode::ServiceUnavailable),
        ..Faults::default()
    });
    c.downstream(None, msg("device-token-2", "met-retry"))
        .await
        .unwrap();
    let m = recv_until(&mut c, |m| m.is_final()).await;
    assert!(
        matches!(&m, ToBal::DownstreamReject { error, .. } if error == "MAX_RETRIES"),
        "{m:?}"
    );
    env.emu.set_faults(Faults::default());

    // Upstream to a session and to nobody.
    let mut data = serde_json::Map::new();
    data.insert("k".into(), "v".into());
    env.emu.send_upstream("dev-up", SESSION, data.clone());
    recv_until(&mut c, |m| matches!(m, ToBal::Upstream { .. })).await;
    env.emu.send_upstream("dev-up", "com.nobody", data);
    env.wait_emu("the unroutable upstream acked", |s| s.upstream_acked >= 2)
        .await;

    // A drain and a dropped connection; the gateway comes back ready.
    let ready_before = value(&scrape(addr).await.1, "gimmm_link_ready_total", &[]);
    env.emu.drain_all();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, s) = scrape(addr).await;
        if value(&s, "gimmm_link_ready_total", &[]) > ready_before
            && value(&s, "gimmm_links_by_state", &[("state", "ready")]) >= 1.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replacement link"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.emu.drop_all();
    c.downstream(None, msg("device-token-3", "met-after-drop"))
        .await
        .unwrap();
    recv_until(&mut c, |m| m.is_final()).await;

    // A refused LOGON.
    let mut bad = bal::BalClient::connect(env.gw().bal_addr).await.unwrap();
    bad.send(&FromBal::Logon {
        session_id: SESSION.into(),
        token: "wrong".into(),
    })
    .await
    .unwrap();
    let _ = recv(&mut bad).await;

    let (text, after) = scrape(addr).await;
    drop(c);
    (before, text, after)
}

/// (metric, labels, least expected increase)
type Expect<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

#[tokio::test]
async fn metrics_counters_move_with_traffic() {
    let _ = admin::prometheus();
    let env = start(Faults::default(), |c| c.retry.max_attempts = 2).await;
    let (before, text, after) = exercise(&env).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let at_least: &[Expect<'_>] = &[
        ("gimmm_downstream_received_total", &[], 5.0),
        ("gimmm_downstream_sent_total", &[], 5.0),
        ("gimmm_downstream_final_total", &[("state", "ack")], 2.0),
        ("gimmm_downstream_final_total", &[("state", "reject")], 3.0),
        (
            "gimmm_downstream_rejected_total",
            &[("code", "BAD_REGISTRATION")],
            1.0,
        ),
        (
            "gimmm_downstream_rejected_total",
            &[("code", "DEVICE_UNREGISTERED")],
            1.0,
        ),
        (
            "gimmm_downstream_rejected_total",
            &[("code", "MAX_RETRIES")],
            1.0,
        ),
        ("gimmm_nacks_total", &[("code", "SERVICE_UNAVAILABLE")], 2.0),
        ("gimmm_nacks_total", &[("code", "DEVICE_UNREGISTERED")], 1.0),
        ("gimmm_retries_total", &[], 1.0),
        ("gimmm_receipts_received_total", &[], 1.0),
        ("gimmm_upstream_received_total", &[], 2.0),
        ("gimmm_upstream_unroutable_total", &[], 1.0),
        ("gimmm_link_drains_total", &[], 1.0),
        ("gimmm_link_reconnects_total", &[], 1.0),
        ("gimmm_link_ready_total", &[], 2.0),
        ("gimmm_bal_logon_failures_total", &[], 1.0),
        ("gimmm_store_commit_seconds_count", &[], 1.0),
        ("gimmm_store_batch_group_size_count", &[], 1.0),
    ];
    let mut failures = Vec::new();
    for (name, labels, min) in at_least {
        let d = delta(name, labels);
        if d < *min {
            failures.push(format!("{name}{labels:?}: moved by {d}, expected >= {min}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{text}");
    // Histograms are real histograms (buckets), so Grafana can use
    // histogram_quantile.
    assert!(
        text.contains("gimmm_store_commit_seconds_bucket{le=\""),
        "{text}"
    );
    assert!(
        text.contains("gimmm_store_batch_group_size_bucket{le=\""),
        "{text}"
    );
    assert!(value(&after, "gimmm_store_unroutable", &[]) >= 1.0);
    // (gimmm_bal_sessions_connected is a process-wide gauge that other
    // gateways in this test binary also set: checked per session instead.)
    assert!(
        value(&after, "gimmm_session_connected", &[("session", SESSION)]) == 1.0,
        "{text}"
    );
    // Every documented recorder metric is described (# HELP) once it exists.
    let described: HashMap<&str, ()> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .map(|n| (n, ()))
        .collect();
    for (name, _, _) in admin::METRICS {
        assert!(
            described.contains_key(name),
            "{name} has no HELP line\n{text}"
        );
    }
    env.stop().await;
}

/// Metric names referenced by a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("gimmm_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.push(expr[start..end].to_string());
        i = end;
    }
    out
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "expr" {
                    out.push(x.as_str().unwrap().to_string());
                } else {
                    collect_exprs(x, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn grafana_dashboard_uses_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/grafana-dashboard.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "needs a Prometheus datasource variable"
    );
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
        if p["type"] != "row" {
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "panel without a query: {}",
                p["title"]
            );
        }
    }
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "only {} queries", exprs.len());

    let _ = admin::prometheus();
    let env = start(Faults::default(), |c| c.retry.max_attempts = 2).await;
    let (_, text, _) = exercise(&env).await;
    env.stop().await;
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let mut used = std::collections::BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "query without a gimmm metric: {e}");
        for n in names {
            assert!(
                exported.contains(n.as_str()),
                "dashboard query {e:?} uses {n}, which /metrics does not export"
            );
            used.insert(n);
        }
    }
    // The dashboard covers the issue's list.
    for must in [
        "gimmm_downstream_final_total",
        "gimmm_downstream_rejected_total",
        "gimmm_upstream_received_total",
        "gimmm_receipts_received_total",
        "gimmm_session_queue_depth",
        "gimmm_link_pending",
        "gimmm_links_by_state",
        "gimmm_link_reconnects_total",
        "gimmm_link_drains_total",
        "gimmm_retries_total",
        "gimmm_bal_sessions_connected",
        "gimmm_store_commit_seconds_bucket",
        "gimmm_store_batch_group_size_bucket",
    ] {
        assert!(used.contains(must), "the dashboard has no panel for {must}");
    }
}
