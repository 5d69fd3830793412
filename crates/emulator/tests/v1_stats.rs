//! Counters of the FCM HTTP v1 emulator (SPEC §9, "Stats"): the Rust
//! snapshot, `wait_until`, and `GET /stats` on the plain-HTTP endpoint.
#![allow(clippy::unwrap_used)]

mod v1_common;

use emulator::v1::{message_key, V1Config, V1Faults, V1Stats};
use serde_json::json;
use v1_common::*;

fn with_stats() -> V1Config {
    V1Config {
        stats_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..V1Config::default()
    }
}

#[tokio::test]
async fn counts_by_status_code_and_message() {
    let emu = start_with(with_stats()).await;
    let mut s = sender(&emu).await;

    let a = msg_to("device-a", "hello");
    let key_a = message_key(&a["message"]).unwrap();
    // The same message twice (a resend): received 2, delivered 2, one duplicate.
    assert_eq!(s.send(&a).await.status, 200);
    // Key order and android.ttl do not change the key.
    let a_again =
        json!({"message":{"data":{"k":"hello"},"token":"device-a","android":{"ttl":"5s"}}});
    assert_eq!(message_key(&a_again["message"]).unwrap(), key_a);
    assert_eq!(s.send(&a_again).await.status, 200);
    // validate_only: ok, not delivered.
    let mut dry = msg_to("device-b", "dry");
    dry["validate_only"] = true.into();
    assert_eq!(s.send(&dry).await.status, 200);
    // Errors.
    let gone = msg_to("unregistered-c", "x");
    assert_eq!(s.send(&gone).await.status, 404);
    assert_eq!(s.send(&msg_to("bad token", "x")).await.status, 400);
    assert_eq!(
        s.send(&json!({"message":{"token":"d","x":1}})).await.status,
        400
    );
    let topic = json!({"message":{"topic":"news","notification":{"title":"t"}}});
    assert_eq!(s.send(&topic).await.status, 200);

    let st = emu.stats();
    assert_eq!(st.requests, 7);
    assert_eq!(st.answered(), 7);
    assert_eq!(st.status(200), 4);
    assert_eq!(st.status(404), 1);
    assert_eq!(st.status(400), 2);
    assert_eq!(st.error_code("UNREGISTERED"), 1);
    // Only the semantic INVALID_ARGUMENT carries an FcmError.
    assert_eq!(st.error_code("INVALID_ARGUMENT"), 1);
    assert_eq!(st.ok, 4);
    assert_eq!(st.delivered, 3);
    assert_eq!(st.validated_only, 1);
    assert_eq!(st.duplicates, 1);

    let ma = st.msg(&key_a);
    assert_eq!((ma.received, ma.ok, ma.delivered, ma.errors), (2, 2, 2, 0));
    assert_eq!(ma.last_status, 200);
    let md = st.msg(&message_key(&dry["message"]).unwrap());
    assert_eq!((md.received, md.ok, md.delivered), (1, 1, 0));
    let mg = st.msg(&message_key(&gone["message"]).unwrap());
    assert_eq!((mg.received, mg.ok, mg.errors), (1, 0, 1));
    assert_eq!(mg.last_error.as_deref(), Some("UNREGISTERED"));
    let mt = st.msg(&message_key(&topic["message"]).unwrap());
    assert!(message_key(&topic["message"])
        .unwrap()
        .starts_with("topic:news#"));
    assert_eq!(mt.delivered, 1);
    // All 7 requests named a target, so all were keyed.
    assert_eq!(st.messages.values().map(|m| m.received).sum::<u64>(), 7);

    // Connections: one HTTP/1.1 (token) and one HTTP/2.
    assert_eq!(st.connections_opened, 2);
    assert_eq!(st.connections[0].alpn, "http/1.1");
    assert_eq!(st.connections[1].alpn, "h2");
    assert_eq!(st.connections[1].requests, 7);
    assert_eq!(st.tokens_issued, 1);

    // Over HTTP: the same numbers.
    let addr = emu.stats_addr().unwrap();
    let (status, v) = stats_http(addr, "GET", "/stats", "").await;
    assert_eq!(status, 200);
    let http: V1Stats = serde_json::from_value(v).unwrap();
    assert_eq!(http, emu.stats());
    assert_eq!(http.by_status.get(&200), Some(&4));
    let (_, v) = stats_http(addr, "GET", "/stats?summary=true", "").await;
    let summary: V1Stats = serde_json::from_value(v).unwrap();
    assert!(summary.messages.is_empty());
    assert_eq!(summary.requests, 7);
    assert_eq!(summary, emu.stats_summary());

    // Reset.
    let (status, _) = stats_http(addr, "POST", "/reset", "").await;
    assert_eq!(status, 200);
    let st = emu.stats();
    assert_eq!(st.requests, 0);
    assert!(st.messages.is_empty() && st.by_status.is_empty());
    assert_eq!(st.connections.len(), 2);
    assert_eq!(st.connections[1].requests, 0);
    assert_eq!(s.send(&a).await.status, 200);
    assert_eq!(emu.stats().msg(&key_a).received, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn wait_until_sees_changes_and_times_out() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;
    let waiter = emu.wait_until(T, |st| st.delivered == 3);
    let sends = async {
        for i in 0..3 {
            assert_eq!(s.send(&msg_to(TOKEN, &i.to_string())).await.status, 200);
        }
    };
    let (got, ()) = tokio::join!(waiter, sends);
    assert_eq!(got.unwrap().delivered, 3);
    let short = std::time::Duration::from_millis(50);
    let err = emu
        .wait_until(short, |st| st.delivered == 4)
        .await
        .unwrap_err();
    assert_eq!(err.delivered, 3);
    emu.shutdown().await;
}

#[tokio::test]
async fn message_tracking_can_be_turned_off() {
    let emu = start_with(V1Config {
        track_messages: false,
        ..V1Config::default()
    })
    .await;
    let mut s = sender(&emu).await;
    for _ in 0..2 {
        assert_eq!(s.send(&msg_to(TOKEN, "same")).await.status, 200);
    }
    let st = emu.stats();
    assert!(st.messages.is_empty());
    assert_eq!(st.delivered, 2);
    assert_eq!(st.duplicates, 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn http1_clients_are_served_like_http2_ones() {
    let emu = start(V1Faults::default()).await;
    let token = access_token(&emu).await;
    let mut c = h1(&emu).await;
    let auth = format!("Bearer {token}");
    let path = send_path(&emu);
    for i in 0..3 {
        let body = serde_json::to_vec(&msg_to(TOKEN, &i.to_string())).unwrap();
        let r = c
            .post(&path, &[("authorization", &auth), JSON_CT], body)
            .await;
        assert_eq!(r.status, 200);
        assert!(r.json()["name"].as_str().unwrap().starts_with("projects/"));
    }
    let r = c
        .post(&path, &[("authorization", &auth), JSON_CT], b"{}".to_vec())
        .await;
    assert_eq!(r.status, 400);
    let st = emu.stats();
    // One keep-alive connection carried the token request and the sends.
    assert_eq!(st.connections_opened, 2);
    assert_eq!(st.connections[1].alpn, "http/1.1");
    assert_eq!(st.connections[1].requests, 4);
    assert_eq!(st.connections[1].max_concurrent_streams, 1);
    assert_eq!(st.delivered, 3);
    emu.shutdown().await;
}
