//! Fault injection of the FCM HTTP v1 emulator (SPEC §9, "Faults"), seen
//! from real HTTP/2 and HTTP/1.1 clients over TLS.
#![allow(clippy::unwrap_used)]

mod v1_common;

use std::time::Duration;

use bytes::Bytes;
use emulator::v1::{V1Config, V1ErrorCode, V1Faults, QUOTA_FAILURE_TYPE};
use serde_json::{json, Value};
use tokio::time::Instant;
use v1_common::*;

/// A raw `h2` client (to see SETTINGS and GOAWAY as the peer sent them).
struct RawH2 {
    client: h2::client::SendRequest<Bytes>,
    conn: tokio::task::JoinHandle<Result<(), h2::Error>>,
    path: String,
    auth: String,
}

async fn raw_h2(emu: &emulator::v1::V1Emulator, token: &str) -> RawH2 {
    let io = tls(emu, &[b"h2"]).await;
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    RawH2 {
        client,
        conn: tokio::spawn(conn),
        path: format!("https://localhost{}", send_path(emu)),
        auth: format!("Bearer {token}"),
    }
}

impl RawH2 {
    async fn send(&mut self, body: &Value) -> Result<u16, h2::Error> {
        let mut client = self.client.clone().ready().await?;
        let req = hyper::Request::post(&self.path)
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (resp, mut stream) = client.send_request(req, false)?;
        stream.send_data(Bytes::from(serde_json::to_vec(body).unwrap()), true)?;
        let resp = tokio::time::timeout(T, resp).await.expect("answer")?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Ok(status)
    }
}

#[tokio::test]
async fn goaway_after_n_streams_reaches_the_client() {
    let emu = start(V1Faults::default()).await;
    let token = access_token(&emu).await;
    emu.set_faults(V1Faults {
        goaway_after: Some(3),
        ..V1Faults::default()
    })
    .unwrap();
    let mut c = raw_h2(&emu, &token).await;
    // The N-th request is still answered.
    for i in 0..3 {
        assert_eq!(c.send(&msg_to(TOKEN, &i.to_string())).await.unwrap(), 200);
    }
    // The server's GOAWAY ends the connection cleanly ...
    let ended = tokio::time::timeout(T, &mut c.conn).await.unwrap().unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    // ... and no new stream may be opened on it: the client saw a GOAWAY
    // sent by the remote.
    let e = c.send(&msg_to(TOKEN, "late")).await.unwrap_err();
    assert!(e.is_go_away() && e.is_remote(), "{e:?}");
    assert_eq!(e.reason(), Some(h2::Reason::NO_ERROR));

    let s = emu
        .wait_until(T, |s| {
            s.connections.iter().any(|c| c.alpn == "h2" && !c.open)
        })
        .await
        .unwrap();
    assert_eq!(s.goaways_sent, 1);
    let conn = s.connections.iter().find(|c| c.alpn == "h2").unwrap();
    assert!(conn.goaway_sent);
    assert_eq!(conn.requests, 3);
    // A new connection works.
    let mut c2 = raw_h2(&emu, &token).await;
    assert_eq!(c2.send(&msg_to(TOKEN, "again")).await.unwrap(), 200);

    // On demand, too.
    emu.goaway_all();
    let ended = tokio::time::timeout(T, &mut c2.conn)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert_eq!(emu.stats().goaways_sent, 2);
    emu.shutdown().await;
}

#[tokio::test]
async fn http1_goaway_fault_closes_after_the_answer() {
    let emu = start(V1Faults::default()).await;
    let token = access_token(&emu).await;
    emu.set_faults(V1Faults {
        goaway_after: Some(2),
        ..V1Faults::default()
    })
    .unwrap();
    let mut c = h1(&emu).await;
    let auth = format!("Bearer {token}");
    let path = send_path(&emu);
    let body = serde_json::to_vec(&msg_to(TOKEN, "1")).unwrap();
    let r = c
        .post(&path, &[("authorization", &auth), JSON_CT], body.clone())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), None);
    let r = c
        .post(&path, &[("authorization", &auth), JSON_CT], body)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let ended = tokio::time::timeout(T, c.driver).await.unwrap().unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let s = emu.stats();
    assert_eq!(s.http1_closes, 1);
    assert_eq!(s.goaways_sent, 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn concurrent_stream_limit_is_advertised_and_respected() {
    // The default, as Google advertises.
    let emu = start(V1Faults::default()).await;
    let token = access_token(&emu).await;
    let mut c = raw_h2(&emu, &token).await;
    assert_eq!(c.send(&msg_to(TOKEN, "0")).await.unwrap(), 200);
    assert_eq!(c.client.current_max_send_streams(), 100);

    emu.set_faults(V1Faults {
        max_concurrent_streams: Some(4),
        latency: Duration::from_millis(300),
        ..V1Faults::default()
    })
    .unwrap();
    // Connections opened from now on advertise 4.
    let mut raw = raw_h2(&emu, &token).await;
    assert_eq!(raw.send(&msg_to(TOKEN, "1")).await.unwrap(), 200);
    assert_eq!(raw.client.current_max_send_streams(), 4);

    // A client that queues behind the limit: 12 requests at once on one
    // connection; never more than 4 in flight at the emulator. (The client
    // must have the server's SETTINGS first: streams opened before they
    // arrive may exceed the limit, and the server refuses those with
    // REFUSED_STREAM, as Google's does. One round trip guarantees it.)
    let mut s = sender(&emu).await;
    assert_eq!(s.send(&msg_to(TOKEN, "warm-up")).await.status, 200);
    let auth = format!("Bearer {}", s.token);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut send = s.c.send.clone();
        let req = hyper::Request::post(format!("https://localhost{}", s.path))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(
                serde_json::to_vec(&msg_to(TOKEN, &format!("c{i}"))).unwrap(),
            )))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            send.send_request(req).await.map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(
            tokio::time::timeout(T, t).await.unwrap().unwrap().unwrap(),
            200
        );
    }
    let st = emu.stats();
    let conn = st.connections.last().unwrap();
    assert_eq!(conn.alpn, "h2");
    assert_eq!(conn.max_concurrent_streams, 4);
    assert_eq!(conn.requests, 13);
    assert_eq!(conn.streams_high_water, 4, "{conn:?}");
    assert_eq!(conn.over_limit, 0);
    assert_eq!(st.over_limit, 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn drop_after_n_requests_closes_the_connection() {
    let emu = start(V1Faults::default()).await;
    let token = access_token(&emu).await;
    emu.set_faults(V1Faults {
        drop_after: Some(2),
        ..V1Faults::default()
    })
    .unwrap();
    let mut s = Sender {
        c: h2(&emu).await,
        token,
        path: send_path(&emu),
    };
    assert_eq!(s.send(&msg_to(TOKEN, "1")).await.status, 200);
    // The second request is never answered: the connection goes away.
    assert!(s.try_send(&msg_to(TOKEN, "2")).await.is_err());
    let _ = tokio::time::timeout(T, &mut s.c.driver).await.unwrap();
    assert!(s.c.send.is_closed());
    let st = emu.stats();
    assert_eq!(st.drops, 1);
    assert_eq!(st.dropped_requests, 1);
    assert_eq!(st.status(200), 1);
    assert_eq!(st.answered(), 1);
    let conn = st.connections.last().unwrap();
    assert!(conn.dropped && !conn.open && !conn.goaway_sent);
    emu.shutdown().await;
}

#[tokio::test]
async fn drop_all_on_demand_leaves_requests_unanswered() {
    let emu = start_with(V1Config {
        stats_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..V1Config::default()
    })
    .await;
    let token = access_token(&emu).await;
    emu.set_faults(V1Faults {
        latency: Duration::from_secs(5),
        ..V1Faults::default()
    })
    .unwrap();
    let mut s = Sender {
        c: h2(&emu).await,
        token: token.clone(),
        path: send_path(&emu),
    };
    let started = Instant::now();
    let pending = tokio::spawn(async move {
        let r = s.try_send(&msg_to(TOKEN, "slow")).await;
        (r.map(|r| r.status), s)
    });
    emu.wait_until(T, |st| {
        st.connections
            .iter()
            .any(|c| c.alpn == "h2" && c.in_flight == 1)
    })
    .await
    .unwrap();
    emu.drop_all();
    let (r, mut s) = tokio::time::timeout(T, pending).await.unwrap().unwrap();
    assert!(r.is_err(), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = tokio::time::timeout(T, &mut s.c.driver).await.unwrap();
    emu.wait_until(T, |st| st.open_connections() == 0)
        .await
        .unwrap();
    assert_eq!(emu.stats().drops, 1);

    // Through the stats endpoint.
    emu.set_faults(V1Faults::default()).unwrap();
    let mut c = h2(&emu).await;
    let auth = format!("Bearer {token}");
    let body = serde_json::to_vec(&msg_to(TOKEN, "x")).unwrap();
    assert_eq!(
        c.post(&send_path(&emu), &[("authorization", &auth), JSON_CT], body)
            .await
            .status,
        200
    );
    let (status, _) = stats_http(emu.stats_addr().unwrap(), "POST", "/drop", "").await;
    assert_eq!(status, 200);
    let _ = tokio::time::timeout(T, &mut c.driver).await.unwrap();
    assert!(c.send.is_closed());
    assert_eq!(emu.stats().drops, 2);
    emu.shutdown().await;
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;
    emu.set_faults(V1Faults {
        latency: Duration::from_millis(120),
        ..V1Faults::default()
    })
    .unwrap();
    let t0 = Instant::now();
    assert_eq!(s.send(&msg_to(TOKEN, "1")).await.status, 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t0.elapsed()
    );
    // Errors too.
    let t0 = Instant::now();
    assert_eq!(s.send(&msg_to("unregistered-1", "1")).await.status, 404);
    assert!(t0.elapsed() >= Duration::from_millis(120));
    emu.shutdown().await;
}

#[tokio::test]
async fn injected_error_codes_with_retry_after() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;
    for (code, status, rpc) in [
        (V1ErrorCode::Unavailable, 503, "UNAVAILABLE"),
        (V1ErrorCode::Internal, 500, "INTERNAL"),
        (V1ErrorCode::QuotaExceeded, 429, "RESOURCE_EXHAUSTED"),
        (V1ErrorCode::ThirdPartyAuthError, 401, "UNAUTHENTICATED"),
    ] {
        emu.set_faults(V1Faults {
            error_fraction: 1.0,
            error_code: Some(code),
            retry_after_secs: Some(7),
            ..V1Faults::default()
        })
        .unwrap();
        let r = s.send(&msg_to(TOKEN, code.as_str())).await;
        assert_eq!(r.status, status, "{code}");
        assert_eq!(r.json()["error"]["status"], rpc);
        assert_eq!(r.error_code().as_deref(), Some(code.as_str()));
        assert_eq!(r.header("retry-after").as_deref(), Some("7"), "{code}");
    }
    // Default code, no Retry-After unless asked for.
    emu.set_faults(V1Faults {
        error_fraction: 1.0,
        ..V1Faults::default()
    })
    .unwrap();
    let r = s.send(&msg_to(TOKEN, "d")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), None);
    // Only otherwise successful sends are hit.
    assert_eq!(s.send(&msg_to("bad token", "d")).await.status, 400);

    // A fraction.
    emu.set_faults(V1Faults {
        error_fraction: 0.5,
        ..V1Faults::default()
    })
    .unwrap();
    emu.reset_stats();
    let mut failed = 0;
    for i in 0..400 {
        if s.send(&msg_to(TOKEN, &format!("f{i}"))).await.status == 503 {
            failed += 1;
        }
    }
    assert!((100..=300).contains(&failed), "{failed} of 400");
    let st = emu.stats();
    assert_eq!(st.injected_errors, failed);
    assert_eq!(st.error_code("UNAVAILABLE"), failed);
    assert_eq!(st.status(200), 400 - failed);
    emu.shutdown().await;
}

#[tokio::test]
async fn gateway_errors_with_html_bodies() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;
    for status in [502, 504] {
        emu.set_faults(V1Faults {
            gateway_error_fraction: 1.0,
            gateway_error_status: Some(status),
            ..V1Faults::default()
        })
        .unwrap();
        let r = s.send(&msg_to(TOKEN, "g")).await;
        assert_eq!(r.status, status);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.body.starts_with(b"<!DOCTYPE html>"));
        assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    }
    let st = emu.stats();
    assert_eq!(st.injected_errors, 2);
    assert_eq!(st.status(502) + st.status(504), 2);
    emu.shutdown().await;
}

#[tokio::test]
async fn project_quota_per_minute() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;
    emu.set_faults(V1Faults {
        quota_per_minute: Some(3),
        ..V1Faults::default()
    })
    .unwrap();
    for i in 0..3 {
        assert_eq!(s.send(&msg_to(TOKEN, &i.to_string())).await.status, 200);
    }
    // Invalid messages do not use the quota, and get their own answer.
    assert_eq!(
        s.send(&json!({"message":{"token":TOKEN,"x":1}}))
            .await
            .status,
        400
    );
    let r = s.send(&msg_to(TOKEN, "over")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(r.error_code().as_deref(), Some("QUOTA_EXCEEDED"));
    let qf = r.detail(QUOTA_FAILURE_TYPE).unwrap();
    assert_eq!(
        qf["violations"][0]["subject"],
        format!("project_number:{}", emu.project_number())
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Other targets share the project quota.
    assert_eq!(
        s.send(&json!({"message":{"topic":"news"}})).await.status,
        429
    );
    // A new setting starts a new window.
    emu.set_faults(V1Faults {
        quota_per_minute: Some(1),
        ..V1Faults::default()
    })
    .unwrap();
    assert_eq!(s.send(&msg_to(TOKEN, "w2")).await.status, 200);
    assert_eq!(s.send(&msg_to(TOKEN, "w2b")).await.status, 429);
    let st = emu.stats();
    assert_eq!(st.quota_rejections, 3);
    assert_eq!(st.error_code("QUOTA_EXCEEDED"), 3);
    emu.shutdown().await;
}

#[tokio::test]
async fn per_device_rate() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;
    emu.set_faults(V1Faults {
        device_rate_per_minute: Some(2),
        ..V1Faults::default()
    })
    .unwrap();
    assert_eq!(s.send(&msg_to("device-a", "1")).await.status, 200);
    assert_eq!(s.send(&msg_to("device-a", "2")).await.status, 200);
    let r = s.send(&msg_to("device-a", "3")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code().as_deref(), Some("QUOTA_EXCEEDED"));
    assert!(r.header("retry-after").is_some());
    // Another device, and topics, are not limited by it.
    assert_eq!(s.send(&msg_to("device-b", "1")).await.status, 200);
    for _ in 0..3 {
        assert_eq!(s.send(&json!({"message":{"topic":"t"}})).await.status, 200);
    }
    assert_eq!(emu.stats().quota_rejections, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn faults_over_the_stats_endpoint() {
    let emu = start_with(V1Config {
        stats_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..V1Config::default()
    })
    .await;
    let addr = emu.stats_addr().unwrap();
    let (status, v) = stats_http(addr, "GET", "/faults", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_value::<V1Faults>(v).unwrap(),
        V1Faults::default()
    );

    let (status, v) = stats_http(
        addr,
        "POST",
        "/faults",
        r#"{"latency_ms":3,"quota_per_minute":10,"error_code":"INTERNAL","max_concurrent_streams":8}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let want = V1Faults {
        latency: Duration::from_millis(3),
        quota_per_minute: Some(10),
        error_code: Some(V1ErrorCode::Internal),
        max_concurrent_streams: Some(8),
        ..V1Faults::default()
    };
    assert_eq!(emu.faults(), want);
    let (_, v) = stats_http(addr, "GET", "/faults", "").await;
    assert_eq!(v["latency_ms"], 3);
    assert!(emu.describe().iter().any(|l| l == "fault: latency 3 ms"));

    // Refused: nonsense values, unknown fields.
    let (status, _) = stats_http(addr, "POST", "/faults", r#"{"error_fraction":2}"#).await;
    assert_eq!(status, 400);
    let (status, _) = stats_http(addr, "POST", "/faults", r#"{"latency":3}"#).await;
    assert_ne!(status, 200);
    assert_eq!(emu.faults(), want);

    // The new stream limit holds for new connections.
    let token = access_token(&emu).await;
    let mut raw = raw_h2(&emu, &token).await;
    assert_eq!(raw.send(&msg_to(TOKEN, "x")).await.unwrap(), 200);
    assert_eq!(raw.client.current_max_send_streams(), 8);

    let (status, _) = stats_http(addr, "POST", "/revoke-tokens", "").await;
    assert_eq!(status, 200);
    assert_eq!(raw.send(&msg_to(TOKEN, "y")).await.unwrap(), 401);
    emu.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_goaway() {
    let emu = start(V1Faults::default()).await;
    let token = access_token(&emu).await;
    let mut raw = raw_h2(&emu, &token).await;
    assert_eq!(raw.send(&msg_to(TOKEN, "x")).await.unwrap(), 200);
    emu.shutdown().await;
    let ended = tokio::time::timeout(T, &mut raw.conn)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let e = raw.send(&msg_to(TOKEN, "y")).await.unwrap_err();
    assert!(e.is_go_away() && e.is_remote(), "{e:?}");
}
