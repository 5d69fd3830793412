//! End-to-end tests of the gateway (issue 3): real TLS to the emulator,
//! real TCP from BAL clients, a real SQLite file.
#![allow(clippy::unwrap_used)]

mod common;

use bal::proto::{BalError, FromBal};
use bal::{BalClient, ToBal};
use common::*;
use emulator::Faults;
use fcm::ErrorCode;
use std::time::Duration;

#[tokio::test]
async fn logon_success_failure_ping_and_timeout() {
    let env = start(Faults::default(), |_| {}).await;
    let addr = env.gw().bal_addr;
    let mut c = env.bal().await;
    c.send(&FromBal::Ping).await.unwrap();
    assert_eq!(recv(&mut c).await, ToBal::Pong);

    // Wrong token and unknown session: same answer, then closed.
    let mut texts = Vec::new();
    for (s, t) in [(SESSION, "wrong"), ("no.such.session", TOKEN)] {
        let mut c = BalClient::connect(addr).await.unwrap();
        c.send(&FromBal::Logon {
            session_id: s.into(),
            token: t.into(),
        })
        .await
        .unwrap();
        match recv(&mut c).await {
            ToBal::LogonResponse {
                status,
                error_description,
                ..
            } => {
                assert_eq!(status, "FAILURE");
                texts.push(error_description);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(c.recv().await, Err(bal::ClientError::Closed)));
    }
    assert_eq!(
        texts[0], texts[1],
        "failure text must not reveal which part was wrong"
    );

    // No LOGON in time: closed.
    let mut idle = BalClient::connect(addr).await.unwrap();
    let m = recv(&mut idle).await;
    assert!(
        matches!(
            m,
            ToBal::Error {
                error: BalError::NotLoggedOn,
                ..
            }
        ),
        "{m:?}"
    );
    assert!(matches!(
        tokio::time::timeout(WAIT, idle.recv()).await.unwrap(),
        Err(bal::ClientError::Closed)
    ));
    env.stop().await;
}

#[tokio::test]
async fn downstream_accepted_acked_generated_id_and_duplicate() {
    let env = start(Faults::default(), |_| {}).await;
    let mut c = env.bal().await;
    c.downstream(None, msg("device-token-1", "m-1"))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut c).await,
        ToBal::DownstreamAccepted {
            message_id: "m-1".into(),
            duplicate: false,
            warning: None,
        }
    );
    let ack = recv(&mut c).await;
    let ToBal::DownstreamAck {
        sequence_id,
        message_id,
        fcm_data,
        session_id,
    } = &ack
    else {
        panic!("expected DOWNSTREAM_ACK, got {ack:?}");
    };
    assert_eq!(message_id, "m-1");
    assert_eq!(session_id, SESSION);
    assert_eq!(fcm_data["message_type"], "ack");
    c.ack(*sequence_id).await.unwrap();

    // Generated message id.
    c.downstream(
        None,
        serde_json::json!({"to": "device-token-2", "data": {"a": "b"}}),
    )
    .await
    .unwrap();
    let ToBal::DownstreamAccepted {
        message_id: gen, ..
    } = recv(&mut c).await
    else {
        panic!()
    };
    assert!(!gen.is_empty());
    let m = recv_until(&mut c, |m| m.is_final()).await;
    assert_eq!(m.message_id(), Some(gen.as_str()));

    // Idempotent resend: accepted as duplicate, sent to FCM once.
    c.downstream(None, msg("device-token-1", "m-1"))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut c).await,
        ToBal::DownstreamAccepted {
            message_id: "m-1".into(),
            duplicate: true,
            warning: None,
        }
    );
    c.send(&FromBal::Ping).await.unwrap();
    assert_eq!(recv(&mut c).await, ToBal::Pong);
    assert_eq!(env.emu.stats().msg("m-1").received, 1);
    env.stop().await;
}

#[tokio::test]
async fn validation_failures_and_final_nacks_become_rejects() {
    let env = start(Faults::default(), |_| {}).await;
    env.emu.mark_unregistered("gone-token");
    let mut c = env.bal().await;
    let cases = [
        (
            serde_json::json!({"to": "tok", "message_id": "v1", "time_to_live": 2419201}),
            "INVALID_JSON",
        ),
        (
            serde_json::json!({"message_id": "v2", "data": {"a": "b"}}),
            "INVALID_JSON",
        ),
        (
            serde_json::json!({"to": "tok", "message_id": "v3", "data": {"from": "x"}}),
            "INVALID_JSON",
        ),
        (
            serde_json::json!({"to": "bad token!", "message_id": "v4"}),
            "BAD_REGISTRATION",
        ),
        (
            serde_json::json!({"to": "unregistered-1", "message_id": "v5"}),
            "DEVICE_UNREGISTERED",
        ),
        (
            serde_json::json!({"to": "gone-token", "message_id": "v6"}),
            "DEVICE_UNREGISTERED",
        ),
    ];
    for (data, code) in cases {
        let id = data["message_id"].as_str().unwrap().to_string();
        c.downstream(None, data).await.unwrap();
        let m = recv_until(&mut c, |m| m.is_final()).await;
        match m {
            ToBal::DownstreamReject {
                message_id,
                error,
                fcm_data,
                ..
            } => {
                assert_eq!(message_id, id);
                assert_eq!(error, code, "for {id}");
                assert_eq!(fcm_data["message_id"], id.as_str());
            }
            other => panic!("expected reject for {id}, got {other:?}"),
        }
    }
    let s = env.emu.stats();
    for id in ["v1", "v2", "v3", "v4"] {
        assert_eq!(s.msg(id).received, 0, "{id} must never be sent to FCM");
    }
    env.stop().await;
}

#[tokio::test]
async fn retryable_nacks_back_off_then_max_retries() {
    let faults = Faults {
        nack_fraction: 1.0,
        nack_code: Some(ErrorCode::ServiceUnavailable),
        ..Faults::default()
    };
    let env = start(faults, |c| {
        c.retry.max_attempts = 4;
        c.retry.initial_ms = 10;
        c.retry.max_ms = 40;
    })
    .await;
    let mut c = env.bal().await;
    c.downstream(None, msg("tok-r", "r-1")).await.unwrap();
    let m = recv_until(&mut c, |m| m.is_final()).await;
    match m {
        ToBal::DownstreamReject {
            error,
            error_description,
            ..
        } => {
            assert_eq!(error, "MAX_RETRIES");
            assert!(
                error_description.contains("SERVICE_UNAVAILABLE"),
                "{error_description}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.emu.stats().msg("r-1").received, 4);

    // A retryable nack that later succeeds ends in an ACK.
    env.emu.set_faults(Faults::default());
    c.downstream(None, msg("tok-r", "r-2")).await.unwrap();
    let m = recv_until(&mut c, |m| m.is_final()).await;
    assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
    env.stop().await;
}

#[tokio::test]
async fn ttl_runs_out_in_the_queue() {
    // FCM unreachable: a port nobody listens on.
    let closed = testkit::ClosedPort::new().unwrap();
    let env = start(Faults::default(), |c| c.fcm.port = closed.port()).await;
    let mut c = env.bal().await;
    c.downstream(
        None,
        serde_json::json!({"to": "t", "message_id": "e-1", "time_to_live": 1}),
    )
    .await
    .unwrap();
    assert!(matches!(
        recv(&mut c).await,
        ToBal::DownstreamAccepted { .. }
    ));
    let m = recv_until(&mut c, |m| m.is_final()).await;
    match m {
        ToBal::DownstreamReject {
            error, message_id, ..
        } => {
            assert_eq!(error, "EXPIRED");
            assert_eq!(message_id, "e-1");
        }
        other => panic!("{other:?}"),
    }
    env.stop().await;
}

#[tokio::test]
async fn receipts_reach_the_sending_session() {
    let env = start(Faults::default(), |_| {}).await;
    let mut c = env.bal().await;
    c.downstream(
        None,
        serde_json::json!({"to": "dev-1", "message_id": "rc-1", "delivery_receipt_requested": true}),
    )
    .await
    .unwrap();
    let m = recv_until(&mut c, |m| matches!(m, ToBal::DownstreamReceipt { .. })).await;
    let ToBal::DownstreamReceipt {
        message_id,
        fcm_data,
        session_id,
        ..
    } = m
    else {
        panic!()
    };
    assert_eq!(message_id, "rc-1");
    assert_eq!(session_id, SESSION);
    assert_eq!(fcm_data["message_type"], "receipt");
    env.wait_emu("receipt acked", |s| s.receipts_acked >= 1)
        .await;
    env.stop().await;
}

#[tokio::test]
async fn upstream_routed_held_offline_deduplicated_and_unroutable_kept() {
    let env = start(Faults::default(), |_| {}).await;
    // BAL offline: upstream is stored and acked to FCM.
    let mut data = serde_json::Map::new();
    data.insert("hello".into(), "world".into());
    let ids: Vec<String> = (0..3)
        .map(|_| env.emu.send_upstream("device-a", SESSION, data.clone()))
        .collect();
    let unroutable = env
        .emu
        .send_upstream("device-b", "com.nobody", data.clone());
    env.wait_emu("upstream acked", |s| s.upstream_acked >= 4)
        .await;

    let mut c = env.bal().await;
    for id in &ids {
        let m = recv(&mut c).await;
        match &m {
            ToBal::Upstream {
                fcm_data,
                session_id,
                sequence_id,
            } => {
                assert_eq!(session_id, SESSION);
                assert_eq!(fcm_data["message_id"], id.as_str(), "in order");
                assert_eq!(fcm_data["data"]["hello"], "world");
                c.ack(*sequence_id).await.unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    // The unroutable one is visible in the admin API.
    let admin = env.gw().admin_addr.unwrap();
    let (st, body) = http_get(admin, "/api/v1/messages?state=unroutable", None).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&unroutable), "{body}");

    // Later upstream messages flow straight to the logged-on BAL.
    let again = env.emu.send_upstream("device-a", SESSION, data.clone());
    let m = recv(&mut c).await;
    let ToBal::Upstream {
        sequence_id,
        fcm_data,
        ..
    } = &m
    else {
        panic!("{m:?}")
    };
    assert_eq!(fcm_data["message_id"], again.as_str());
    c.ack(*sequence_id).await.unwrap();
    c.send(&FromBal::Ping).await.unwrap();
    assert_eq!(recv(&mut c).await, ToBal::Pong);
    env.stop().await;
}

#[tokio::test]
async fn groups_are_strictly_ordered_one_at_a_time() {
    let faults = Faults {
        ack_delay: Duration::from_millis(10),
        ..Faults::default()
    };
    let env = start(faults, |_| {}).await;
    let mut c = env.bal().await;
    for i in 0..8 {
        c.downstream(Some("g1"), msg("dev-g", &format!("g-{i}")))
            .await
            .unwrap();
    }
    let mut order = Vec::new();
    while order.len() < 8 {
        let m = recv_until(&mut c, |m| m.is_final()).await;
        assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
        order.push(m.message_id().unwrap().to_string());
    }
    let expected: Vec<String> = (0..8).map(|i| format!("g-{i}")).collect();
    assert_eq!(order, expected);
    let s = env.emu.stats();
    assert_eq!(
        s.max_pending_high_water(),
        1,
        "a group has one message in flight at a time"
    );
    env.stop().await;
}

#[tokio::test]
async fn window_of_100_is_never_exceeded() {
    let faults = Faults {
        ack_delay: Duration::from_millis(30),
        ..Faults::default()
    };
    let env = start(faults, |_| {}).await;
    let (mut rd, mut wr) = env.bal().await.into_split();
    let n = 600;
    for i in 0..n {
        wr.send(&FromBal::Downstream {
            group_id: None,
            fcm_data: msg("dev-w", &format!("w-{i}")),
        })
        .await
        .unwrap();
    }
    wr.flush().await.unwrap();
    let mut finals = 0;
    while finals < n {
        let m = tokio::time::timeout(WAIT, rd.recv())
            .await
            .unwrap()
            .unwrap();
        if let Some(seq) = m.sequence_id() {
            wr.send(&FromBal::Ack { sequence_id: seq }).await.unwrap();
            wr.flush().await.unwrap();
        }
        if m.is_final() {
            assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
            finals += 1;
        }
    }
    let s = env.emu.stats();
    assert_eq!(s.window_violations, 0);
    assert!(s.max_pending_high_water() <= 100);
    assert!(
        s.max_pending_high_water() >= 50,
        "the window was used: {}",
        s.max_pending_high_water()
    );
    env.stop().await;
}

#[tokio::test]
async fn pool_draining_and_drops_lose_nothing() {
    let faults = Faults {
        drain_after: Some(40),
        ack_delay: Duration::from_millis(2),
        ..Faults::default()
    };
    let env = start(faults, |c| c.fcm.connections = 2).await;
    env.wait_emu("two links", |s| s.ready_connections() >= 2)
        .await;
    let (mut rd, mut wr) = env.bal().await.into_split();
    let n = 300;
    for i in 0..n {
        wr.send(&FromBal::Downstream {
            group_id: None,
            fcm_data: msg("dev-p", &format!("p-{i}")),
        })
        .await
        .unwrap();
    }
    wr.flush().await.unwrap();
    let mut acked = std::collections::HashSet::new();
    while acked.len() < n {
        let m = tokio::time::timeout(WAIT, rd.recv())
            .await
            .unwrap()
            .unwrap();
        if let Some(seq) = m.sequence_id() {
            wr.send(&FromBal::Ack { sequence_id: seq }).await.unwrap();
            wr.flush().await.unwrap();
        }
        if let ToBal::DownstreamAck { message_id, .. } = &m {
            assert!(
                acked.insert(message_id.clone()),
                "duplicate final result for {message_id}"
            );
        } else if m.is_final() {
            panic!("{m:?}");
        }
    }
    let s = env.emu.stats();
    assert!(s.drains_sent >= 2, "{}", s.drains_sent);
    assert_eq!(s.window_violations, 0);
    env.stop().await;

    // Abrupt drop mid-flight: everything unacked is resent after the reconnect.
    let faults = Faults {
        ack_delay: Duration::from_millis(5),
        ..Faults::default()
    };
    let env = start(faults, |_| {}).await;
    let (mut rd, mut wr) = env.bal().await.into_split();
    let n = 300;
    for i in 0..n {
        wr.send(&FromBal::Downstream {
            group_id: None,
            fcm_data: msg("dev-d", &format!("d-{i}")),
        })
        .await
        .unwrap();
    }
    wr.flush().await.unwrap();
    env.wait_emu("some acks", |s| s.acks_sent >= 50).await;
    env.emu.drop_all();
    let mut acked = std::collections::HashSet::new();
    while acked.len() < n {
        let m = tokio::time::timeout(WAIT, rd.recv())
            .await
            .unwrap()
            .unwrap();
        if let Some(seq) = m.sequence_id() {
            wr.send(&FromBal::Ack { sequence_id: seq }).await.unwrap();
            wr.flush().await.unwrap();
        }
        if m.is_final() {
            assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
            assert!(
                acked.insert(m.message_id().unwrap().to_string()),
                "duplicate final result"
            );
        }
    }
    assert!(env.emu.stats().drops >= 1);
    env.stop().await;
}

#[tokio::test]
async fn results_survive_bal_reconnect_takeover_and_gateway_restart() {
    let mut env = start(Faults::default(), |_| {}).await;
    let mut c = env.bal().await;
    c.downstream(None, msg("dev-1", "k-1")).await.unwrap();
    assert!(matches!(
        recv(&mut c).await,
        ToBal::DownstreamAccepted { .. }
    ));
    // Receive the ACK but do not ACK it.
    let first = recv(&mut c).await;
    assert!(matches!(first, ToBal::DownstreamAck { .. }));

    // Takeover: the old connection is told and closed; the result is redelivered.
    let mut c2 = env.bal().await;
    let m = recv(&mut c).await;
    assert!(
        matches!(
            m,
            ToBal::Error {
                error: BalError::SessionTakenOver,
                ..
            }
        ),
        "{m:?}"
    );
    let again = recv(&mut c2).await;
    assert_eq!(again.sequence_id(), first.sequence_id());

    // Restart gimmm: still not ACKed, so redelivered once more.
    drop(c2);
    env.restart().await;
    let mut c3 = env.bal().await;
    let m = recv(&mut c3).await;
    assert_eq!(m.sequence_id(), first.sequence_id());
    c3.ack(m.sequence_id().unwrap()).await.unwrap();
    // Unknown sequence id now.
    c3.ack(m.sequence_id().unwrap()).await.unwrap();
    let e = recv(&mut c3).await;
    assert!(
        matches!(
            e,
            ToBal::Error {
                error: BalError::UnknownSequenceId,
                ..
            }
        ),
        "{e:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn bad_bal_input_gets_errors_and_others_are_unaffected() {
    let env = start(Faults::default(), |c| c.bal.max_line_bytes = 1024).await;
    let addr = env.gw().bal_addr;

    // Before LOGON: error and close.
    let mut pre = BalClient::connect(addr).await.unwrap();
    pre.writer()
        .send_raw(br#"{"message_type":"PING"}"#)
        .await
        .unwrap();
    pre.writer().flush().await.unwrap();
    assert!(matches!(
        recv(&mut pre).await,
        ToBal::Error {
            error: BalError::NotLoggedOn,
            ..
        }
    ));

    let mut other = BalClient::connect_logon(addr, "com.example.other", "other-token")
        .await
        .unwrap();
    let mut c = env.bal().await;
    for (line, code) in [
        (&b"not json"[..], BalError::InvalidJson),
        (br#"{"message_type":"WHAT"}"#, BalError::UnknownMessageType),
        (br#"{"sequence_id":1}"#, BalError::UnknownMessageType),
        (
            br#"{"message_type":"ACK","sequence_id":999999}"#,
            BalError::UnknownSequenceId,
        ),
    ] {
        c.writer().send_raw(line).await.unwrap();
        c.writer().flush().await.unwrap();
        let m = recv(&mut c).await;
        assert!(
            matches!(&m, ToBal::Error { error, .. } if *error == code),
            "{m:?}"
        );
    }
    // Still usable after errors.
    c.send(&FromBal::Ping).await.unwrap();
    assert_eq!(recv(&mut c).await, ToBal::Pong);
    // Too long: error and close.
    let long = vec![b'x'; 5000];
    c.writer().send_raw(&long).await.unwrap();
    c.writer().flush().await.unwrap();
    assert!(matches!(
        recv(&mut c).await,
        ToBal::Error {
            error: BalError::LineTooLong,
            ..
        }
    ));
    assert!(matches!(
        tokio::time::timeout(WAIT, c.recv()).await.unwrap(),
        Err(bal::ClientError::Closed)
    ));
    // The other session still works end to end.
    other.downstream(None, msg("dev-o", "o-1")).await.unwrap();
    let m = recv_until(&mut other, |m| m.is_final()).await;
    assert!(matches!(m, ToBal::DownstreamAck { .. }));
    env.stop().await;
}

#[tokio::test]
async fn rate_exceeded_backs_off_that_target_only() {
    let faults = Faults {
        nack_fraction: 1.0,
        nack_code: Some(ErrorCode::DeviceMessageRateExceeded),
        ..Faults::default()
    };
    let env = start(faults, |c| {
        c.retry.initial_ms = 400;
        c.retry.max_ms = 400;
    })
    .await;
    let mut c = env.bal().await;
    c.downstream(None, msg("dev-hot", "rate-1")).await.unwrap();
    env.wait_emu("first nack", |s| s.msg("rate-1").nacked >= 1)
        .await;
    env.emu.set_faults(Faults::default());
    // dev-hot is backed off: a new message to it waits; another device does not.
    c.downstream(None, msg("dev-hot", "rate-2")).await.unwrap();
    c.downstream(None, msg("dev-cold", "rate-3")).await.unwrap();
    let mut order = Vec::new();
    while order.len() < 3 {
        let m = recv_until(&mut c, |m| m.is_final()).await;
        assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
        order.push(m.message_id().unwrap().to_string());
    }
    assert_eq!(
        order[0], "rate-3",
        "the other target is not held back: {order:?}"
    );
    env.stop().await;
}

/// Input hygiene (SPEC §11): an `fcm_data` with a key given twice, or nested
/// beyond the parser's limit, is a DOWNSTREAM_REJECT `INVALID_JSON` that
/// says why and keeps the BAL's message id; nothing reaches FCM.
#[tokio::test]
async fn duplicate_keys_and_deep_nesting_are_rejected_with_the_message_id() {
    let env = start(Faults::default(), |_| {}).await;
    let mut c = env.bal().await;
    c.writer()
        .send_raw(
            br#"{"message_type":"DOWNSTREAM","fcm_data":{"to":"dev-a","message_id":"dup-1","to":"dev-b"}}"#,
        )
        .await
        .unwrap();
    let deep = format!(
        r#"{{"message_type":"DOWNSTREAM","fcm_data":{{"to":"dev-a","message_id":"deep-1","data":{{"k":"v"}},"x":{}{}}}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    c.writer().send_raw(deep.as_bytes()).await.unwrap();
    c.writer().flush().await.unwrap();
    for (id, why) in [
        ("dup-1", "duplicate key \"to\""),
        ("deep-1", "nested deeper than 128"),
    ] {
        let m = recv_until(&mut c, |m| m.is_final()).await;
        let ToBal::DownstreamReject {
            message_id,
            error,
            error_description,
            ..
        } = &m
        else {
            panic!("expected a REJECT, got {m:?}");
        };
        assert_eq!((message_id.as_str(), error.as_str()), (id, "INVALID_JSON"));
        assert!(error_description.contains(why), "{error_description}");
    }
    assert_eq!(env.emu.stats().downstream_received, 0);
    env.stop().await;
}
