//! Upstream delivery and resend, draining, drops, and the wire-level faults.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{connect, msg, start, start_with, T};
use emulator::{EmulatorConfig, ErrorCode, Faults};
use fcm::Inbound;
use serde_json::{json, Map, Value};
use tokio::io::AsyncReadExt;
use xmpp::{Event, XmppError};

fn data(k: &str, v: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(k.into(), v.into());
    m
}

#[tokio::test]
async fn upstream_waits_for_a_connection_and_is_resent_until_acked() {
    let emu = start(Faults::default()).await;
    // No connection yet: it waits.
    let id = emu.send_upstream("device-tok", "com.example.app", data("hello", "world"));
    let s = emu.stats();
    assert_eq!((s.upstream_sent, s.upstream_unacked), (0, 1));

    let mut c = connect(&emu).await;
    let up = match c.recv().await {
        Inbound::Upstream(u) => u,
        other => panic!("{other:?}"),
    };
    assert_eq!(up.message_id, id);
    assert_eq!(up.from, "device-tok");
    assert_eq!(up.category, "com.example.app");
    assert_eq!(up.data.unwrap()["hello"], "world");
    assert!(up.time_to_live.is_some());

    // Not acked; the connection closes: FCM sends it again on the next one.
    c.close().await;
    emu.wait_until(T, |s| s.open_connections() == 0)
        .await
        .unwrap();
    let mut c2 = connect(&emu).await;
    let again = match c2.recv().await {
        Inbound::Upstream(u) => u,
        other => panic!("{other:?}"),
    };
    assert_eq!(again.message_id, id);
    c2.ack(&again.from, &again.message_id).await;
    let s = emu.wait_until(T, |s| s.upstream_acked == 1).await.unwrap();
    assert_eq!(
        (s.upstream_sent, s.upstream_resent, s.upstream_unacked),
        (1, 1, 0)
    );
    assert_eq!(s.unknown_acks, 0);
}

#[tokio::test]
async fn upstream_spread_over_connections() {
    let emu = start(Faults::default()).await;
    let mut a = connect(&emu).await;
    let mut b = connect(&emu).await;
    emu.wait_until(T, |s| s.ready_connections() == 2)
        .await
        .unwrap();
    let ids: Vec<String> = (0..4)
        .map(|i| emu.send_upstream(&format!("dev{i}"), "cat", Map::new()))
        .collect();
    let mut got = Vec::new();
    for c in [&mut a, &mut b] {
        for _ in 0..2 {
            match c.recv().await {
                Inbound::Upstream(u) => {
                    c.ack(&u.from, &u.message_id).await;
                    got.push(u.message_id);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    let s = emu.wait_until(T, |s| s.upstream_acked == 4).await.unwrap();
    assert_eq!(s.connections[0].upstream_sent, 2);
    assert_eq!(s.connections[1].upstream_sent, 2);
}

#[tokio::test]
async fn drain_after_n_then_close_when_settled() {
    let emu = start(Faults {
        drain_after: Some(3),
        ack_delay: Duration::from_millis(100),
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    let batch: Vec<String> = (0..5).map(|i| msg(&format!("d{i}"), "tok")).collect();
    c.send_many(&batch).await;

    // Control first (sent at once), then the delayed answers; d3, d4 arrived
    // after draining and are nacked CONNECTION_DRAINING.
    let mut control_seen = false;
    let mut acks = Vec::new();
    let mut nacks = Vec::new();
    while acks.len() + nacks.len() < 5 {
        match c.recv().await {
            Inbound::Control(ctl) => {
                assert!(ctl.is_connection_draining());
                assert!(acks.is_empty() && nacks.is_empty(), "control after answers");
                control_seen = true;
            }
            Inbound::Ack(a) => acks.push(a.message_id),
            Inbound::Nack(n) => {
                assert_eq!(n.error, ErrorCode::ConnectionDraining);
                nacks.push(n.message_id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(control_seen);
    assert_eq!(acks, ["d0", "d1", "d2"]);
    assert_eq!(nacks, ["d3", "d4"]);
    // Then the server ends the stream.
    assert_eq!(c.event().await.unwrap(), Event::StreamEnd);
    c.close().await;
    let s = emu
        .wait_until(T, |s| s.open_connections() == 0)
        .await
        .unwrap();
    assert_eq!(s.drains_sent, 1);
    assert!(s.connections[0].draining);
    assert_eq!(s.nacks_by_code["CONNECTION_DRAINING"], 2);
}

#[tokio::test]
async fn draining_waits_for_upstream_acks() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    let id = emu.send_upstream("dev", "cat", Map::new());
    let up = match c.recv().await {
        Inbound::Upstream(u) => u,
        other => panic!("{other:?}"),
    };
    emu.drain_all();
    match c.recv().await {
        Inbound::Control(ctl) => assert!(ctl.is_connection_draining()),
        other => panic!("{other:?}"),
    }
    // Grace (200 ms) passes; the connection stays while the upstream is unacked.
    let still_open = emu
        .wait_until(Duration::from_millis(400), |s| s.open_connections() == 0)
        .await;
    assert!(still_open.is_err());
    c.ack(&up.from, &id).await;
    assert_eq!(c.event().await.unwrap(), Event::StreamEnd);
    let s = emu
        .wait_until(T, |s| s.open_connections() == 0)
        .await
        .unwrap();
    assert_eq!((s.upstream_acked, s.upstream_resent), (1, 0));
}

#[tokio::test]
async fn drain_every_sends_control() {
    let emu = start(Faults {
        drain_every: Some(Duration::from_millis(150)),
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    match c.recv().await {
        Inbound::Control(ctl) => assert!(ctl.is_connection_draining()),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.event().await.unwrap(), Event::StreamEnd);
    let s = emu.wait_until(T, |s| s.drains_sent == 1).await.unwrap();
    assert_eq!(s.connections.len(), 1);
}

#[tokio::test]
async fn drop_after_closes_abruptly_and_upstream_moves() {
    let emu = start(Faults {
        drop_after: Some(2),
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    let up_id = emu.send_upstream("dev", "cat", Map::new());
    match c.recv().await {
        Inbound::Upstream(u) => assert_eq!(u.message_id, up_id),
        other => panic!("{other:?}"),
    }
    c.send(&msg("x1", "tok")).await;
    c.expect_ack("x1").await;
    c.send(&msg("x2", "tok")).await;
    // No answer, no stream end: EOF or a TLS error.
    loop {
        match c.xs.next_event().await {
            Ok(Event::Keepalive) => continue,
            Ok(other) => panic!("expected EOF, got {other:?}"),
            Err(XmppError::Closed) | Err(XmppError::Io(_)) | Err(XmppError::Tls(_)) => break,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    let s = emu
        .wait_until(T, |s| s.open_connections() == 0)
        .await
        .unwrap();
    assert_eq!(s.drops, 1);
    let m = s.msg("x2");
    assert_eq!((m.received, m.acked, m.nacked), (1, 0, 0));

    // The unacked upstream goes out again on the next connection.
    emu.set_faults(Faults::default());
    let mut c2 = connect(&emu).await;
    match c2.recv().await {
        Inbound::Upstream(u) => assert_eq!(u.message_id, up_id),
        other => panic!("{other:?}"),
    }
    let s = emu.wait_until(T, |s| s.upstream_resent == 1).await.unwrap();
    assert_eq!(s.upstream_sent, 1);
}

#[tokio::test]
async fn drop_all_drops_every_connection() {
    let emu = start(Faults::default()).await;
    let mut a = connect(&emu).await;
    let _b = connect(&emu).await;
    emu.wait_until(T, |s| s.ready_connections() == 2)
        .await
        .unwrap();
    emu.drop_all();
    assert!(a.event().await.is_err());
    let s = emu
        .wait_until(T, |s| s.open_connections() == 0)
        .await
        .unwrap();
    assert_eq!(s.drops, 2);
}

#[tokio::test]
async fn chunked_writes_still_parse() {
    let emu = start(Faults {
        chunk_size: Some(1),
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    c.send(
        &json!({"to":"tok","message_id":"<&\"chunk\">","delivery_receipt_requested":true})
            .to_string(),
    )
    .await;
    let a = c.expect_ack("<&\"chunk\">").await;
    assert_eq!(a.from.as_deref(), Some("tok"));
    assert_eq!(c.json().await["message_id"], "dr2:<&\"chunk\">");
}

#[tokio::test]
async fn prefixed_form_on_the_wire() {
    let emu = start(Faults {
        prefixed: true,
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    c.send(&msg("p1", "tok")).await;
    // Read the raw bytes to see the form used.
    let (mut io, mut reader) = c.xs.into_parts();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("</message>") {
        let n = tokio::time::timeout(T, io.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "EOF");
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(
        text.contains(r#"<data:gcm xmlns:data="google:mobile:data">"#),
        "{text}"
    );
    // And the xmpp reader understands it.
    reader.feed(&raw);
    match reader.next_event().unwrap() {
        Some(Event::Message(m)) => {
            let v: Value = serde_json::from_str(m.gcm.as_deref().unwrap()).unwrap();
            assert_eq!(v["message_type"], "ack");
            assert_eq!(v["message_id"], "p1");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn keepalives_are_whitespace() {
    let emu = start(Faults {
        keepalive_every: Some(Duration::from_millis(50)),
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    let ev = tokio::time::timeout(T, c.xs.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, Event::Keepalive);
    // Still a working session.
    c.send(&msg("k", "tok")).await;
    c.expect_ack("k").await;
}

#[tokio::test]
async fn keepalive_enabled_at_run_time() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    emu.set_faults(Faults {
        keepalive_every: Some(Duration::from_millis(30)),
        ..Faults::default()
    });
    let ev = tokio::time::timeout(T, c.xs.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, Event::Keepalive);
}

#[tokio::test]
async fn shutdown_ends_streams() {
    let emu = start_with(EmulatorConfig::default()).await;
    let mut c = connect(&emu).await;
    let shut = tokio::spawn(emu.shutdown());
    assert_eq!(c.event().await.unwrap(), Event::StreamEnd);
    c.close().await;
    tokio::time::timeout(T, shut).await.unwrap().unwrap();
}
