//! Handshake, authentication, configuration output and the HTTP endpoint.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{connect, http, msg, start, start_with, try_connect_as, T};
use emulator::{Emulator, EmulatorConfig, ErrorCode, Faults, Stats};
use fcm::Inbound;
use serde_json::{json, Value};
use xmpp::XmppError;

#[tokio::test]
async fn handshake_binds_sender_jid() {
    let emu = start(Faults::default()).await;
    let c = connect(&emu).await;
    assert!(
        c.jid.starts_with("123456789012@fcm.googleapis.com/"),
        "{}",
        c.jid
    );
    assert!(c.jid.len() > "123456789012@fcm.googleapis.com/".len());
    // The older gcm.googleapis.com user name is accepted too.
    let c2 = try_connect_as(&emu, "123456789012@gcm.googleapis.com", "emulator-key")
        .await
        .unwrap();
    assert!(c2.jid.starts_with("123456789012@fcm.googleapis.com/"));
    let s = emu
        .wait_until(T, |s| s.ready_connections() == 2)
        .await
        .unwrap();
    assert_eq!(s.auth_failures, 0);
    assert_eq!(s.connections[0].id, 1);
    assert_eq!(s.connections[1].id, 2);
}

#[tokio::test]
async fn wrong_credentials_fail_auth() {
    let emu = start(Faults::default()).await;
    let wrong_key = try_connect_as(&emu, "123456789012@fcm.googleapis.com", "nope").await;
    assert!(
        matches!(wrong_key, Err(XmppError::AuthFailed(ref c)) if c == "not-authorized"),
        "{wrong_key:?}"
    );
    let wrong_sender = try_connect_as(&emu, "999@fcm.googleapis.com", "emulator-key").await;
    assert!(matches!(wrong_sender, Err(XmppError::AuthFailed(_))));
    let no_domain = try_connect_as(&emu, "123456789012", "emulator-key").await;
    assert!(matches!(no_domain, Err(XmppError::AuthFailed(_))));
    let s = emu
        .wait_until(T, |s| s.auth_failures == 3 && s.open_connections() == 0)
        .await
        .unwrap();
    assert!(s.connections.iter().all(|c| !c.authenticated));
}

#[tokio::test]
async fn custom_sender_and_key() {
    let emu = start_with(EmulatorConfig {
        sender_id: "42".into(),
        server_key: "k-42".into(),
        ..EmulatorConfig::default()
    })
    .await;
    assert_eq!((emu.sender_id(), emu.server_key()), ("42", "k-42"));
    let c = try_connect_as(&emu, "42@fcm.googleapis.com", "k-42")
        .await
        .unwrap();
    assert!(c.jid.starts_with("42@fcm.googleapis.com/"));
    assert!(
        try_connect_as(&emu, "42@fcm.googleapis.com", "emulator-key")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn ca_written_and_describe_lines() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let emu = start_with(EmulatorConfig {
        ca_out: Some(ca.clone()),
        stats_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..EmulatorConfig::default()
    })
    .await;
    let written = std::fs::read_to_string(&ca).unwrap();
    assert_eq!(written, emu.ca_pem());
    assert!(written.starts_with("-----BEGIN CERTIFICATE-----"));
    // A client trusting only that file connects.
    let tls = xmpp::connect::DirectTls::new(Some(&ca)).unwrap();
    let io = xmpp::connect::Connector::connect(&tls, "127.0.0.1", emu.addr().port())
        .await
        .unwrap();
    drop(io);

    let lines = emu.describe();
    assert_eq!(lines[0], format!("listening on {}", emu.addr()));
    assert_eq!(lines[1], "sender id 123456789012");
    assert_eq!(lines[2], "server key emulator-key");
    assert_eq!(lines[3], format!("ca written to {}", ca.display()));
    assert_eq!(
        lines[4],
        format!("stats on http://{}/stats", emu.stats_addr().unwrap())
    );
    assert_eq!(lines.len(), 5);
}

#[test]
fn standalone_defaults_describe() {
    let cfg = EmulatorConfig::standalone();
    assert_eq!(
        cfg.describe(),
        vec![
            "listening on 127.0.0.1:5236",
            "sender id 123456789012",
            "server key emulator-key",
            "ca written to ./gimmm-emulator-ca.pem",
            "stats on http://127.0.0.1:5237/stats",
        ]
    );
    let with_faults = EmulatorConfig {
        faults: Faults {
            drain_after: Some(5),
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    };
    assert!(with_faults
        .describe()
        .iter()
        .any(|l| l == "fault: drain after 5 messages"));
}

#[tokio::test]
async fn wait_until_times_out_with_snapshot() {
    let emu = start(Faults::default()).await;
    let t0 = tokio::time::Instant::now();
    let r = emu
        .wait_until(Duration::from_millis(100), |s| s.acks_sent == 1)
        .await;
    let snap = r.unwrap_err();
    assert_eq!(snap.acks_sent, 0);
    assert!(t0.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn reset_stats_zeroes_counters() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    c.send(&msg("r", "tok")).await;
    c.expect_ack("r").await;
    emu.wait_until(T, |s| s.acks_sent == 1).await.unwrap();
    emu.reset_stats();
    let s = emu.stats();
    assert_eq!((s.acks_sent, s.downstream_received), (0, 0));
    assert!(s.messages.is_empty());
    assert_eq!(s.ready_connections(), 1);
    c.send(&msg("r2", "tok")).await;
    c.expect_ack("r2").await;
}

#[tokio::test]
async fn stats_and_control_over_http() {
    let emu = start_with(EmulatorConfig {
        stats_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..EmulatorConfig::default()
    })
    .await;
    let addr = emu.stats_addr().unwrap();
    let mut c = connect(&emu).await;
    c.send(&msg("h1", "tok")).await;
    c.expect_ack("h1").await;
    emu.wait_until(T, |s| s.acks_sent == 1).await.unwrap();

    let (status, body) = http(addr, "GET", "/stats", "").await;
    assert_eq!(status, 200);
    let s: Stats = serde_json::from_str(&body).unwrap();
    assert_eq!(s.acks_sent, 1);
    assert_eq!(s.messages["h1"].acked, 1);
    let raw: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(raw["downstream_received"], 1);
    assert_eq!(raw["connections"][0]["pending_high_water"], 1);

    let (_, body) = http(addr, "GET", "/stats?summary=true", "").await;
    let s: Stats = serde_json::from_str(&body).unwrap();
    assert!(s.messages.is_empty());
    assert_eq!(s.acks_sent, 1);

    // Faults in, faults out.
    let (status, _) = http(
        addr,
        "POST",
        "/faults",
        r#"{"nack_fraction":1.0,"nack_code":"INTERNAL_SERVER_ERROR","ack_delay_ms":1}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(emu.faults().ack_delay, Duration::from_millis(1));
    c.send(&msg("h2", "tok")).await;
    assert_eq!(
        c.expect_nack("h2").await.error,
        ErrorCode::InternalServerError
    );
    let (_, body) = http(addr, "GET", "/faults", "").await;
    let f: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(f["nack_code"], "INTERNAL_SERVER_ERROR");
    let (status, _) = http(addr, "POST", "/faults", r#"{"bogus":1}"#).await;
    assert!(status >= 400);
    http(addr, "POST", "/faults", "{}").await;

    // Unregister a token.
    let (status, _) = http(addr, "POST", "/unregister/gone-1", "").await;
    assert_eq!(status, 200);
    c.send(&msg("h3", "gone-1")).await;
    assert_eq!(
        c.expect_nack("h3").await.error,
        ErrorCode::DeviceUnregistered
    );

    // Upstream from a simulated device.
    let (status, body) = http(
        addr,
        "POST",
        "/upstream",
        &json!({"from":"dev-9","category":"com.example.app","data":{"x":"1"}}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let id = serde_json::from_str::<Value>(&body).unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    match c.recv().await {
        Inbound::Upstream(u) => {
            assert_eq!(u.message_id, id);
            assert_eq!(u.from, "dev-9");
            c.ack(&u.from, &u.message_id).await;
        }
        other => panic!("{other:?}"),
    }
    emu.wait_until(T, |s| s.upstream_acked == 1).await.unwrap();

    // Drain, then drop.
    let (status, _) = http(addr, "POST", "/drain", "").await;
    assert_eq!(status, 200);
    match c.recv().await {
        Inbound::Control(ctl) => assert!(ctl.is_connection_draining()),
        other => panic!("{other:?}"),
    }
    let mut c2 = connect(&emu).await;
    let (status, _) = http(addr, "POST", "/drop", "").await;
    assert_eq!(status, 200);
    assert!(c2.event().await.is_err());
    emu.wait_until(T, |s| s.open_connections() == 0)
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_xml_gets_stream_error() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    c.xs.send(b"<message><gcm xmlns=\"google:mobile:data\">{}</oops></message>")
        .await
        .unwrap();
    match c.event().await {
        Ok(xmpp::Event::StreamError { condition, .. }) => assert_eq!(condition, "not-well-formed"),
        other => panic!("{other:?}"),
    }
    emu.wait_until(T, |s| s.open_connections() == 0)
        .await
        .unwrap();
}

#[tokio::test]
async fn emulator_is_send_and_debug() {
    fn assert_send<T: Send + Sync>() {}
    assert_send::<Emulator>();
    let emu = start(Faults::default()).await;
    let dbg = format!("{emu:?}");
    assert!(!dbg.contains("emulator-key"), "{dbg}");
    let dbg = format!("{:?}", EmulatorConfig::default());
    assert!(!dbg.contains("emulator-key"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
}
