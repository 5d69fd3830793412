//! Downstream messages: acks, every nack path, receipts, duplicates, window.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;
use tokio::time::Instant;

use common::{connect, msg, start, T};
use emulator::{ErrorCode, Faults};
use fcm::Inbound;
use serde_json::json;

#[tokio::test]
async fn valid_message_is_acked_and_counted() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    c.send(&msg("m1", "tok-1")).await;
    let ack = c.expect_ack("m1").await;
    assert_eq!(ack.from.as_deref(), Some("tok-1"));
    assert_eq!(ack.registration_id, None);

    let s = emu.wait_until(T, |s| s.acks_sent == 1).await.unwrap();
    let m = s.msg("m1");
    assert_eq!((m.received, m.acked, m.nacked, m.delivered), (1, 1, 0, 1));
    assert_eq!(s.downstream_received, 1);
    assert_eq!(s.delivered, 1);
    assert_eq!(s.duplicates, 0);
    let conn = &s.connections[0];
    assert!(conn.open && conn.authenticated);
    assert_eq!(conn.received, 1);
    assert_eq!(conn.pending, 0);
    assert_eq!(conn.pending_high_water, 1);
    assert_eq!(conn.window_violations, 0);
}

#[tokio::test]
async fn nack_paths_carry_table_4_codes() {
    let emu = start(Faults::default()).await;
    emu.mark_unregistered("gone-token");
    let mut c = connect(&emu).await;

    let cases: Vec<(String, &str, ErrorCode)> = vec![
        (msg("r1", "bad token!"), "r1", ErrorCode::BadRegistration),
        (msg("r2", ""), "r2", ErrorCode::BadRegistration),
        (
            msg("r3", "unregistered-device-7"),
            "r3",
            ErrorCode::DeviceUnregistered,
        ),
        (msg("r4", "gone-token"), "r4", ErrorCode::DeviceUnregistered),
        (
            json!({"to":"tok","message_id":"r5","time_to_live":2_419_201}).to_string(),
            "r5",
            ErrorCode::InvalidJson,
        ),
        (
            json!({"to":"tok","message_id":"r6","time_to_live":"60"}).to_string(),
            "r6",
            ErrorCode::InvalidJson,
        ),
        (
            json!({"message_id":"r7","data":{"a":"b"}}).to_string(),
            "r7",
            ErrorCode::InvalidJson,
        ),
        (
            json!({"to":"tok","message_id":"r8","data":{"from":"x"}}).to_string(),
            "r8",
            ErrorCode::InvalidJson,
        ),
        (
            json!({"to":"tok","message_id":"r9","data":{"big":"x".repeat(5000)}}).to_string(),
            "r9",
            ErrorCode::InvalidJson,
        ),
        (
            json!({"to":"tok","message_id":"r10","priority":"urgent"}).to_string(),
            "r10",
            ErrorCode::InvalidJson,
        ),
        (
            json!({"to":"tok","data":{"a":"b"}}).to_string(),
            "",
            ErrorCode::InvalidJson,
        ),
    ];
    for (json, id, code) in &cases {
        c.send(json).await;
        let n = c.expect_nack(id).await;
        assert_eq!(&n.error, code, "{json}");
        assert!(n.error_description.is_some());
    }
    // Not JSON at all: INVALID_JSON with the stanza's id unknown.
    c.send("this is {not json").await;
    let n = c.expect_nack("").await;
    assert_eq!(n.error, ErrorCode::InvalidJson);

    let s = emu
        .wait_until(T, |s| s.nacks_sent == cases.len() as u64 + 1)
        .await
        .unwrap();
    assert_eq!(s.acks_sent, 0);
    assert_eq!(s.nacks_by_code["BAD_REGISTRATION"], 2);
    assert_eq!(s.nacks_by_code["DEVICE_UNREGISTERED"], 2);
    assert_eq!(s.nacks_by_code["INVALID_JSON"], 8);
    let m = s.msg("r3");
    assert_eq!((m.received, m.nacked, m.acked), (1, 1, 0));
    assert_eq!(m.last_error.as_deref(), Some("DEVICE_UNREGISTERED"));
    assert_eq!(s.delivered, 0);
}

#[tokio::test]
async fn fault_nack_fraction_one_nacks_everything() {
    let emu = start(Faults {
        nack_fraction: 1.0,
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    for i in 0..5 {
        let id = format!("f{i}");
        c.send(&msg(&id, "tok")).await;
        let n = c.expect_nack(&id).await;
        assert_eq!(n.error, ErrorCode::ServiceUnavailable);
        assert_eq!(n.from.as_deref(), Some("tok"));
    }
    // Another code, switched at run time; then healthy again.
    emu.set_faults(Faults {
        nack_fraction: 1.0,
        nack_code: Some(ErrorCode::DeviceMessageRateExceeded),
        ..Faults::default()
    });
    c.send(&msg("f5", "tok")).await;
    assert_eq!(
        c.expect_nack("f5").await.error,
        ErrorCode::DeviceMessageRateExceeded
    );
    emu.set_faults(Faults::default());
    c.send(&msg("f5", "tok")).await;
    c.expect_ack("f5").await;
    let s = emu.wait_until(T, |s| s.acks_sent == 1).await.unwrap();
    assert_eq!(s.nacks_by_code["SERVICE_UNAVAILABLE"], 5);
    let m = s.msg("f5");
    assert_eq!((m.received, m.nacked, m.acked), (2, 1, 1));
}

#[tokio::test]
async fn topics_conditions_and_dry_run() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    c.send(&json!({"to":"/topics/news","message_id":"t1","data":{"a":"b"}}).to_string())
        .await;
    assert_eq!(
        c.expect_ack("t1").await.from.as_deref(),
        Some("/topics/news")
    );
    c.send(&json!({"condition":"'a' in topics && 'b' in topics","message_id":"t2"}).to_string())
        .await;
    c.expect_ack("t2").await;
    c.send(
        &json!({"to":"tok","message_id":"t3","dry_run":true,
                   "delivery_receipt_requested":true})
        .to_string(),
    )
    .await;
    c.expect_ack("t3").await;
    let s = emu.wait_until(T, |s| s.acks_sent == 3).await.unwrap();
    assert_eq!(s.msg("t1").delivered, 1);
    assert_eq!(s.msg("t2").delivered, 1);
    assert_eq!(s.msg("t3").delivered, 0);
    assert_eq!(s.delivered, 2);
    // dry_run: no receipt either.
    assert_eq!(s.receipts_sent, 0);
}

#[tokio::test]
async fn canonical_registration_id_in_ack() {
    let emu = start(Faults::default()).await;
    emu.set_canonical("old-tok", "new-tok");
    let mut c = connect(&emu).await;
    c.send(&msg("c1", "old-tok")).await;
    let a = c.expect_ack("c1").await;
    assert_eq!(a.registration_id.as_deref(), Some("new-tok"));
}

#[tokio::test]
async fn receipt_follows_ack_and_is_acked() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    c.send(
        &json!({"to":"dev-1","message_id":"39","delivery_receipt_requested":true,
                "data":{"a":"b"}})
        .to_string(),
    )
    .await;
    c.expect_ack("39").await;
    let raw = c.json().await;
    assert_eq!(raw["message_type"], "receipt");
    assert_eq!(raw["message_id"], "dr2:39");
    assert_eq!(raw["from"], "gcm.googleapis.com");
    assert_eq!(raw["category"], "com.example.app");
    assert_eq!(raw["time_to_live"], 0);
    assert_eq!(raw["data"]["original_message_id"], "39");
    assert_eq!(raw["data"]["message_status"], "MESSAGE_SENT_TO_DEVICE");
    assert_eq!(raw["data"]["device_registration_id"], "dev-1");
    let ts = raw["data"]["message_sent_timestamp"].as_str().unwrap();
    assert!(ts.parse::<u64>().unwrap() > 1_600_000_000_000);
    // The fcm crate classifies it as a receipt.
    match fcm::parse_inbound(&raw.to_string()).unwrap() {
        Inbound::Receipt(r) => assert_eq!(r.data.original_message_id, "39"),
        other => panic!("{other:?}"),
    }
    let s = emu.stats();
    assert_eq!(
        (s.receipts_sent, s.receipts_acked, s.upstream_unacked),
        (1, 0, 1)
    );

    c.ack("gcm.googleapis.com", "dr2:39").await;
    let s = emu.wait_until(T, |s| s.receipts_acked == 1).await.unwrap();
    assert_eq!(s.upstream_unacked, 0);
    assert_eq!(s.unknown_acks, 0);
}

#[tokio::test]
async fn receipt_delay_is_applied() {
    let emu = start(Faults {
        receipt_delay: Duration::from_millis(300),
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    let t0 = Instant::now();
    c.send(&json!({"to":"dev","message_id":"d1","delivery_receipt_requested":true}).to_string())
        .await;
    c.expect_ack("d1").await;
    assert!(t0.elapsed() < Duration::from_millis(300));
    let raw = c.json().await;
    assert_eq!(raw["message_type"], "receipt");
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn unacked_receipt_is_resent_on_next_connection() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    c.send(&json!({"to":"dev","message_id":"x1","delivery_receipt_requested":true}).to_string())
        .await;
    c.expect_ack("x1").await;
    assert_eq!(c.json().await["message_id"], "dr2:x1");
    c.close().await;
    emu.wait_until(T, |s| s.open_connections() == 0)
        .await
        .unwrap();

    let mut c2 = connect(&emu).await;
    let raw = c2.json().await;
    assert_eq!(raw["message_id"], "dr2:x1");
    c2.ack("gcm.googleapis.com", "dr2:x1").await;
    let s = emu.wait_until(T, |s| s.receipts_acked == 1).await.unwrap();
    assert_eq!((s.receipts_sent, s.receipts_resent), (1, 1));
}

#[tokio::test]
async fn duplicate_after_ack_is_counted() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    c.send(&msg("dup", "tok")).await;
    c.expect_ack("dup").await;
    c.send(&msg("dup", "tok")).await;
    c.expect_ack("dup").await;
    let s = emu.wait_until(T, |s| s.acks_sent == 2).await.unwrap();
    assert_eq!(s.duplicates, 1);
    let m = s.msg("dup");
    assert_eq!((m.received, m.acked, m.delivered), (2, 2, 2));

    // A resend of a nacked message is not a duplicate.
    emu.mark_unregistered("tok2");
    c.send(&msg("n", "tok2")).await;
    c.expect_nack("n").await;
    c.send(&msg("n", "tok2")).await;
    c.expect_nack("n").await;
    let s = emu.wait_until(T, |s| s.nacks_sent == 2).await.unwrap();
    assert_eq!(s.duplicates, 1);
}

#[tokio::test]
async fn malformed_and_unknown_app_acks() {
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    c.send(r#"{"message_type":"ack","message_id":"zz"}"#).await;
    let n = c.expect_nack("zz").await;
    assert_eq!(n.error, ErrorCode::BadAck);
    c.ack("someone", "never-sent").await;
    // Unknown message_type from the app server: ignored.
    c.send(r#"{"message_type":"control","control_type":"X"}"#)
        .await;
    // Prove the connection still works and everything above was processed.
    c.send(&msg("after", "tok")).await;
    c.expect_ack("after").await;
    let s = emu.wait_until(T, |s| s.acks_sent == 1).await.unwrap();
    assert_eq!((s.bad_acks, s.unknown_acks, s.ignored), (1, 1, 1));
    assert_eq!(s.nacks_by_code["BAD_ACK"], 1);
    assert_eq!(s.downstream_received, 1);
}

#[tokio::test]
async fn window_over_100_is_a_violation() {
    let emu = start(Faults {
        ack_delay: Duration::from_millis(700),
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    let batch: Vec<String> = (0..150).map(|i| msg(&format!("w{i}"), "tok")).collect();
    c.send_many(&batch).await;
    let s = emu
        .wait_until(T, |s| s.downstream_received == 150)
        .await
        .unwrap();
    assert_eq!(s.connections[0].pending_high_water, 150);
    assert_eq!(s.connections[0].window_violations, 50);
    assert_eq!(s.window_violations, 50);
    // Nothing answered yet: the delay holds the acks back.
    assert_eq!(s.acks_sent, 0);
    for i in 0..150 {
        c.expect_ack(&format!("w{i}")).await;
    }
    let s = emu.wait_until(T, |s| s.acks_sent == 150).await.unwrap();
    assert_eq!(s.connections[0].pending, 0);
}

#[tokio::test]
async fn window_of_exactly_100_is_fine() {
    let emu = start(Faults {
        ack_delay: Duration::from_millis(300),
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    let batch: Vec<String> = (0..100).map(|i| msg(&format!("w{i}"), "tok")).collect();
    c.send_many(&batch).await;
    for i in 0..100 {
        c.expect_ack(&format!("w{i}")).await;
    }
    let s = emu.wait_until(T, |s| s.acks_sent == 100).await.unwrap();
    assert_eq!(s.connections[0].pending_high_water, 100);
    assert_eq!(s.window_violations, 0);
}

#[tokio::test]
async fn ack_delay_delays_answers_but_keeps_reading() {
    let emu = start(Faults {
        ack_delay: Duration::from_millis(250),
        ..Faults::default()
    })
    .await;
    let mut c = connect(&emu).await;
    let t0 = Instant::now();
    c.send(&msg("a", "tok")).await;
    // While "a" waits, "b" is read and counted.
    c.send(&msg("b", "tok")).await;
    let s = emu
        .wait_until(T, |s| s.downstream_received == 2)
        .await
        .unwrap();
    assert_eq!(s.acks_sent, 0);
    assert!(t0.elapsed() < Duration::from_millis(250));
    c.expect_ack("a").await;
    assert!(t0.elapsed() >= Duration::from_millis(250));
    c.expect_ack("b").await;
}

#[tokio::test]
async fn pipelined_load_respecting_the_window() {
    // A client keeping 100 in flight: no violation, nothing lost.
    let emu = start(Faults::default()).await;
    let mut c = connect(&emu).await;
    let total = 3000;
    let mut sent = 0;
    let mut acked = 0;
    while acked < total {
        let room = 100 - (sent - acked);
        let n = room.min(total - sent);
        if n > 0 {
            let batch: Vec<String> = (sent..sent + n)
                .map(|i| msg(&format!("p{i}"), "tok"))
                .collect();
            c.send_many(&batch).await;
            sent += n;
        }
        match c.recv().await {
            Inbound::Ack(_) => acked += 1,
            other => panic!("{other:?}"),
        }
    }
    let s = emu
        .wait_until_summary(T, |s| s.acks_sent == total as u64)
        .await
        .unwrap();
    assert_eq!(s.window_violations, 0);
    assert!(s.connections[0].pending_high_water <= 100);
    assert_eq!(s.duplicates, 0);
    assert_eq!(emu.stats().messages.len(), total);
}
