//! The HTTP v1 link end to end (SPEC §8.2, §8.3, and §3 on this link): real
//! TLS, real HTTP/2, the HTTP v1 emulator, real SQLite. Each test names the
//! promise it checks.
#![allow(clippy::unwrap_used)]

mod http_v1_common;

use bal::{FromBal, ToBal};
use emulator::v1::{V1ErrorCode, V1Faults};
use http_v1_common::*;
use std::time::Duration;
use testkit::{recv, recv_until, Final};

/// The final result of `id` on a plain client (ACKing what comes before).
async fn final_of(c: &mut bal::BalClient, id: &str) -> ToBal {
    recv_until(c, WAIT, |m| m.is_final() && m.message_id() == Some(id))
        .await
        .unwrap()
}

// ----- §8.3: 200 → DOWNSTREAM_ACK ------------------------------------------

#[tokio::test]
async fn an_accepted_message_is_acked_with_the_v1_name() {
    let env = start(V1Faults::default(), |_| {}).await;
    let mut c = env.bal().await;
    c.downstream(None, msg("device-1", "m-1")).await.unwrap();
    assert_eq!(
        recv(&mut c, WAIT).await.unwrap(),
        ToBal::DownstreamAccepted {
            message_id: "m-1".into(),
            duplicate: false,
            warning: None
        }
    );
    let ack = final_of(&mut c, "m-1").await;
    let ToBal::DownstreamAck {
        fcm_data,
        session_id,
        ..
    } = &ack
    else {
        panic!("expected DOWNSTREAM_ACK, got {ack:?}");
    };
    assert_eq!(session_id, SESSION);
    assert_eq!(fcm_data["message_type"], "ack");
    assert_eq!(fcm_data["message_id"], "m-1");
    assert_eq!(fcm_data["from"], "device-1");
    let name = fcm_data["name"].as_str().unwrap();
    assert!(
        name.starts_with(&format!("projects/{}/messages/", env.emu.project_id())),
        "{name}"
    );
    // A topic: `from` is the target as the BAL gave it.
    c.downstream(
        None,
        serde_json::json!({"to": "/topics/news", "message_id": "t-1", "data": {"id": "t-1"}}),
    )
    .await
    .unwrap();
    let ToBal::DownstreamAck { fcm_data, .. } = final_of(&mut c, "t-1").await else {
        panic!("topic message not acked")
    };
    assert_eq!(fcm_data["from"], "/topics/news");
    let s = env.emu.stats();
    assert_eq!(s.msg(&key("device-1", "m-1")).delivered, 1);
    assert_eq!(s.delivered, 2);
    env.stop().await;
}

// ----- §8.2: acceptance on the v1 link -------------------------------------

#[tokio::test]
async fn receipts_are_accepted_with_a_warning_and_v1_checks_apply() {
    let env = start(V1Faults::default(), |_| {}).await;
    let mut c = env.bal().await;
    c.downstream(
        None,
        serde_json::json!({"to": "device-r", "message_id": "r-1", "data": {"id": "r-1"},
                           "delivery_receipt_requested": true}),
    )
    .await
    .unwrap();
    assert_eq!(
        recv(&mut c, WAIT).await.unwrap(),
        ToBal::DownstreamAccepted {
            message_id: "r-1".into(),
            duplicate: false,
            warning: Some(fcm::v1::NO_RECEIPTS_WARNING.into())
        }
    );
    assert!(matches!(
        final_of(&mut c, "r-1").await,
        ToBal::DownstreamAck { .. }
    ));
    // v1's own checks before acceptance: a block of the wrong type, a ttl
    // beyond four weeks; never sent.
    for (id, body) in [
        (
            "bad-block",
            serde_json::json!({"to": "d", "message_id": "bad-block", "android": "high"}),
        ),
        (
            "bad-ttl",
            serde_json::json!({"to": "d", "message_id": "bad-ttl", "android": {"ttl": "2419201s"}}),
        ),
    ] {
        c.downstream(None, body).await.unwrap();
        let m = recv_until(&mut c, WAIT, |m| m.message_id() == Some(id))
            .await
            .unwrap();
        let ToBal::DownstreamReject { error, .. } = &m else {
            panic!("{id}: expected a REJECT, got {m:?}");
        };
        assert_eq!(error, "INVALID_JSON", "{m:?}");
    }
    // Non-string data values are sent as their JSON text (v1 takes strings).
    c.downstream(
        None,
        serde_json::json!({"to": "device-n", "message_id": "n-1", "data": {"n": 3, "o": {"a": [1]}}}),
    )
    .await
    .unwrap();
    assert!(matches!(
        final_of(&mut c, "n-1").await,
        ToBal::DownstreamAck { .. }
    ));
    let k = emulator::v1::message_key(
        &serde_json::json!({"token": "device-n", "data": {"n": "3", "o": "{\"a\":[1]}"}}),
    )
    .unwrap();
    assert_eq!(env.emu.stats().msg(&k).delivered, 1);
    assert_eq!(env.emu.stats().requests, 2, "the invalid ones were sent");
    env.stop().await;
}

#[tokio::test]
async fn v1_blocks_pass_through_to_fcm() {
    let env = start(V1Faults::default(), |_| {}).await;
    let mut c = env.bal().await;
    // A valid block: FCM takes it.
    c.downstream(
        None,
        serde_json::json!({"to": "device-b", "message_id": "b-1", "data": {"id": "b-1"},
            "android": {"notification": {"channel_id": "chat"}, "direct_boot_ok": true},
            "apns": {"headers": {"apns-push-type": "background"}},
            "fcm_options": {"analytics_label": "l1"}}),
    )
    .await
    .unwrap();
    assert!(matches!(
        final_of(&mut c, "b-1").await,
        ToBal::DownstreamAck { .. }
    ));
    // A block FCM refuses (an enum it does not know): the block reached
    // FCM, whose 400 comes back with the v1 fields.
    c.downstream(
        None,
        serde_json::json!({"to": "device-b", "message_id": "b-2", "data": {"id": "b-2"},
            "android": {"priority": "URGENT"}}),
    )
    .await
    .unwrap();
    let m = final_of(&mut c, "b-2").await;
    let ToBal::DownstreamReject {
        error,
        fcm_error,
        http_status,
        ..
    } = &m
    else {
        panic!("{m:?}")
    };
    assert_eq!(error, "INVALID_JSON");
    assert_eq!(*http_status, Some(400));
    assert_eq!(fcm_error.as_deref(), None, "{m:?}");
    env.stop().await;
}

// ----- §8.3: the final codes ------------------------------------------------

#[tokio::test]
async fn final_answers_become_rejects_with_the_v1_fields() {
    let env = start(V1Faults::default(), |_| {}).await;
    let mut c = env.bal().await;
    // (token, expected error, fcm_error, http_status)
    let cases = [
        ("unregistered-1", "DEVICE_UNREGISTERED", "UNREGISTERED", 404),
        (
            "mismatch-1",
            "SENDER_ID_MISMATCH",
            "SENDER_ID_MISMATCH",
            403,
        ),
    ];
    for (i, (to, ..)) in cases.iter().enumerate() {
        c.downstream(None, msg(to, &format!("f-{i}")))
            .await
            .unwrap();
    }
    for (i, (_, error, fcm_error, status)) in cases.iter().enumerate() {
        let id = format!("f-{i}");
        let m = final_of(&mut c, &id).await;
        let ToBal::DownstreamReject {
            error: e,
            fcm_error: f,
            http_status: h,
            error_description,
            fcm_data,
            ..
        } = &m
        else {
            panic!("{id}: {m:?}")
        };
        assert_eq!(e, error, "{m:?}");
        assert_eq!(f.as_deref(), Some(*fcm_error), "{m:?}");
        assert_eq!(*h, Some(*status), "{m:?}");
        assert!(!error_description.is_empty(), "{m:?}");
        assert_eq!(fcm_data["message_id"], id.as_str(), "the original JSON");
    }
    // An injected final code (the emulator cannot be made to answer the
    // table's "anything else" row; fcm::v1::classify's tests cover it).
    for (code, error, status) in [(
        V1ErrorCode::ThirdPartyAuthError,
        "INVALID_APNS_CREDENTIAL",
        401,
    )] {
        env.emu
            .set_faults(V1Faults {
                error_fraction: 1.0,
                error_code: Some(code),
                ..V1Faults::default()
            })
            .unwrap();
        let id = format!("inj-{error}");
        c.downstream(None, msg("device-i", &id)).await.unwrap();
        let m = final_of(&mut c, &id).await;
        let ToBal::DownstreamReject {
            error: e,
            fcm_error,
            http_status,
            ..
        } = &m
        else {
            panic!("{m:?}")
        };
        assert_eq!(e, error, "{m:?}");
        assert_eq!(fcm_error.as_deref(), Some(code.as_str()));
        assert_eq!(*http_status, Some(status), "{m:?}");
    }
    env.emu.set_faults(V1Faults::default()).unwrap();
    // A malformed token is caught before acceptance (§3.2), never sent.
    c.downstream(None, msg("bad token!", "bad-1"))
        .await
        .unwrap();
    let m = final_of(&mut c, "bad-1").await;
    assert!(
        matches!(&m, ToBal::DownstreamReject { error, http_status: None, .. } if error == "BAD_REGISTRATION"),
        "{m:?}"
    );
    // The metrics count the answers.
    let text = env.metrics().await;
    assert_eq!(
        metric(&text, "gimmm_fcm_errors_total", &[("code", "UNREGISTERED")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "gimmm_fcm_http_responses_total",
            &[("status", "404")]
        ),
        Some(1.0)
    );
    env.stop().await;
}

// ----- §8.3: retries --------------------------------------------------------

#[tokio::test]
async fn unavailable_internal_and_gateway_errors_are_retried_honouring_retry_after() {
    let env = start(
        V1Faults {
            error_fraction: 1.0,
            error_code: Some(V1ErrorCode::Unavailable),
            retry_after_secs: Some(1),
            ..V1Faults::default()
        },
        |c| c.retry.max_attempts = 50,
    )
    .await;
    let mut c = env.bal().await;
    let started = tokio::time::Instant::now();
    c.downstream(None, msg("device-u", "u-1")).await.unwrap();
    let k = key("device-u", "u-1");
    env.wait_emu("two attempts", |s| s.msg(&k).received >= 2)
        .await;
    // The engine's backoff starts at 20 ms: the second attempt waited for
    // Retry-After.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // INTERNAL, then a bare 502 with an HTML body, then 504: retried too.
    env.emu
        .set_faults(V1Faults {
            error_fraction: 1.0,
            error_code: Some(V1ErrorCode::Internal),
            ..V1Faults::default()
        })
        .unwrap();
    let n = env.emu.stats().msg(&k).received;
    env.wait_emu("an INTERNAL answer", |s| s.msg(&k).received > n)
        .await;
    for status in [502, 504] {
        env.emu
            .set_faults(V1Faults {
                gateway_error_fraction: 1.0,
                gateway_error_status: Some(status),
                ..V1Faults::default()
            })
            .unwrap();
        env.wait_emu("a gateway error", |s| s.status(status) >= 1)
            .await;
    }
    env.emu.set_faults(V1Faults::default()).unwrap();
    assert!(matches!(
        final_of(&mut c, "u-1").await,
        ToBal::DownstreamAck { .. }
    ));
    let s = env.emu.stats();
    assert!(s.status(503) >= 2 && s.status(500) >= 1, "{s:#?}");
    assert_eq!(s.msg(&k).delivered, 1);
    env.stop().await;
}

#[tokio::test]
async fn retries_run_out_in_max_retries_with_the_last_answer() {
    let env = start(
        V1Faults {
            error_fraction: 1.0,
            error_code: Some(V1ErrorCode::Internal),
            ..V1Faults::default()
        },
        |c| c.retry.max_attempts = 3,
    )
    .await;
    let mut c = env.bal().await;
    c.downstream(None, msg("device-x", "x-1")).await.unwrap();
    let m = final_of(&mut c, "x-1").await;
    let ToBal::DownstreamReject {
        error,
        fcm_error,
        http_status,
        error_description,
        ..
    } = &m
    else {
        panic!("{m:?}")
    };
    assert_eq!(error, "MAX_RETRIES");
    assert_eq!(fcm_error.as_deref(), Some("INTERNAL"));
    assert_eq!(*http_status, Some(500));
    assert!(error_description.contains("INTERNAL"), "{m:?}");
    assert_eq!(env.emu.stats().msg(&key("device-x", "x-1")).received, 3);
    env.stop().await;
}

#[tokio::test]
async fn quota_exceeded_backs_the_target_off_and_honours_retry_after() {
    let env = start(
        V1Faults {
            error_fraction: 1.0,
            error_code: Some(V1ErrorCode::QuotaExceeded),
            retry_after_secs: Some(2),
            ..V1Faults::default()
        },
        |c| c.retry.max_attempts = 50,
    )
    .await;
    let mut c = env.bal().await;
    c.downstream(None, msg("device-q", "q-1")).await.unwrap();
    let k1 = key("device-q", "q-1");
    env.wait_emu("the first 429", |s| s.msg(&k1).received == 1)
        .await;
    let t429 = tokio::time::Instant::now();
    // Now the quota is fine again; a second message to the same target
    // waits for the target's backoff, one to another target does not.
    env.emu.set_faults(V1Faults::default()).unwrap();
    c.downstream(None, msg("device-q", "q-2")).await.unwrap();
    c.downstream(None, msg("device-other", "o-1"))
        .await
        .unwrap();
    assert!(matches!(
        final_of(&mut c, "o-1").await,
        ToBal::DownstreamAck { .. }
    ));
    assert!(
        t429.elapsed() < Duration::from_millis(1500),
        "another target waited"
    );
    assert_eq!(
        env.emu.stats().msg(&key("device-q", "q-2")).received,
        0,
        "the backed-off target got a message"
    );
    let mut done = Vec::new();
    while done.len() < 2 {
        let m = recv_until(&mut c, WAIT, |m| m.is_final()).await.unwrap();
        assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
        done.push(m.message_id().unwrap().to_string());
    }
    assert!(
        t429.elapsed() >= Duration::from_millis(1900),
        "Retry-After not honoured: {:?}",
        t429.elapsed()
    );
    env.stop().await;
}

#[tokio::test]
async fn a_request_without_an_answer_times_out_and_is_retried() {
    let env = start(
        V1Faults {
            latency: Duration::from_millis(2500),
            ..V1Faults::default()
        },
        |c| {
            c.fcm.request_timeout_secs = 1;
            c.retry.max_attempts = 20;
        },
    )
    .await;
    let mut c = env.bal().await;
    c.downstream(None, msg("device-slow", "s-1")).await.unwrap();
    let k = key("device-slow", "s-1");
    env.wait_emu("a retry after the timeout", |s| s.msg(&k).received >= 2)
        .await;
    env.emu.set_faults(V1Faults::default()).unwrap();
    assert!(matches!(
        final_of(&mut c, "s-1").await,
        ToBal::DownstreamAck { .. }
    ));
    let text = env.metrics().await;
    assert!(
        metric(&text, "gimmm_fcm_errors_total", &[("code", "TIMEOUT")]).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "gimmm_retries_total", &[]).unwrap() >= 1.0);
    env.stop().await;
}

// ----- SPEC §3 on this link -------------------------------------------------

#[tokio::test]
async fn idempotency_dry_run_and_exactly_one_final_each() {
    let env = start(V1Faults::default(), |_| {}).await;
    let mut p = env.probe().await;
    let n = 200;
    for i in 0..n {
        p.downstream(None, msg(&format!("dev-{}", i % 7), &format!("e-{i}")))
            .unwrap();
    }
    p.wait_finals(n, WAIT).await.unwrap();
    for _ in 0..n {
        let a = p.next_reply(WAIT).await.unwrap();
        assert!(
            matches!(
                a,
                ToBal::DownstreamAccepted {
                    duplicate: false,
                    ..
                }
            ),
            "{a:?}"
        );
    }
    // The same ids again: accepted as duplicates, not sent again.
    for i in 0..10 {
        let a = p
            .send_and_answer(
                None,
                msg(&format!("dev-{}", i % 7), &format!("e-{i}")),
                WAIT,
            )
            .await
            .unwrap();
        assert_eq!(
            a,
            ToBal::DownstreamAccepted {
                message_id: format!("e-{i}"),
                duplicate: true,
                warning: None
            }
        );
    }
    // dry_run → validate_only: acked, not delivered.
    p.send_and_answer(
        None,
        serde_json::json!({"to": "dev-dry", "message_id": "dry-1", "data": {"id": "dry-1"}, "dry_run": true}),
        WAIT,
    )
    .await
    .unwrap();
    p.wait_finals(n + 1, WAIT).await.unwrap();
    let l = p.snapshot();
    let accepted: Vec<String> = (0..n).map(|i| format!("e-{i}")).collect();
    l.assert_exactly_one_final(accepted.iter());
    l.assert_each_delivered_once();
    assert!(accepted
        .iter()
        .all(|id| l.final_of(id) == Some(&Final::Ack)));
    assert_eq!(l.final_of("dry-1"), Some(&Final::Ack));
    let s = env.emu.stats();
    assert_eq!(s.requests, n as u64 + 1);
    assert_eq!(s.validated_only, 1);
    assert_eq!(s.delivered, n as u64);
    assert_eq!(s.duplicates, 0);
    env.stop().await;
}

#[tokio::test]
async fn groups_go_in_order_one_at_a_time() {
    let env = start(
        V1Faults {
            latency: Duration::from_millis(5),
            ..V1Faults::default()
        },
        |_| {},
    )
    .await;
    let mut c = env.bal().await;
    for i in 0..8 {
        c.downstream(Some("g1"), msg("dev-g", &format!("g-{i}")))
            .await
            .unwrap();
    }
    let mut order = Vec::new();
    while order.len() < 8 {
        let m = recv_until(&mut c, WAIT, |m| m.is_final()).await.unwrap();
        assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
        order.push(m.message_id().unwrap().to_string());
    }
    let expected: Vec<String> = (0..8).map(|i| format!("g-{i}")).collect();
    assert_eq!(order, expected);
    assert_eq!(
        env.emu.stats().max_streams_high_water(),
        1,
        "a group has one request in flight at a time"
    );
    env.stop().await;
}

#[tokio::test]
async fn ttl_runs_out_while_fcm_cannot_be_reached() {
    let closed = testkit::ClosedPort::new().unwrap();
    let env = start(V1Faults::default(), |c| {
        c.fcm.endpoint = format!("https://127.0.0.1:{}", closed.port());
    })
    .await;
    let mut c = env.bal().await;
    c.downstream(
        None,
        serde_json::json!({"to": "t", "message_id": "ttl-1", "time_to_live": 1}),
    )
    .await
    .unwrap();
    assert!(matches!(
        recv(&mut c, WAIT).await.unwrap(),
        ToBal::DownstreamAccepted { .. }
    ));
    let m = final_of(&mut c, "ttl-1").await;
    assert!(
        matches!(&m, ToBal::DownstreamReject { error, .. } if error == "EXPIRED"),
        "{m:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn accepted_messages_survive_a_restart_and_are_sent_after_it() {
    // FCM unreachable at first: messages are accepted (stored) and wait.
    let closed = testkit::ClosedPort::new().unwrap();
    let mut env = start(V1Faults::default(), |c| {
        c.fcm.endpoint = format!("https://127.0.0.1:{}", closed.port());
    })
    .await;
    let mut c = env.bal().await;
    for i in 0..5 {
        c.downstream(None, msg("dev-d", &format!("d-{i}")))
            .await
            .unwrap();
        assert!(matches!(
            recv(&mut c, WAIT).await.unwrap(),
            ToBal::DownstreamAccepted { .. }
        ));
    }
    drop(c);
    // Restart pointing at the emulator: the stored messages go out.
    env.cfg.fcm.endpoint = env.emu.endpoint().to_string();
    env.restart().await;
    let mut c = env.bal().await;
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < 5 {
        let m = recv_until(&mut c, WAIT, |m| m.is_final()).await.unwrap();
        assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
        acked.insert(m.message_id().unwrap().to_string());
    }
    c.send(&FromBal::Ping).await.unwrap();
    assert_eq!(recv(&mut c, WAIT).await.unwrap(), ToBal::Pong);
    assert_eq!(env.emu.stats().delivered, 5);
    env.stop().await;
}

// ----- SPEC §10 on this link: the ingress with HTTP v1 ----------------------

/// The ingress works the same with the HTTP v1 link (issue 11, "works with
/// either FCM link"): a post is answered 202 and its UPSTREAM reaches the
/// BAL, while a downstream message of the same session goes out over v1.
#[tokio::test]
async fn ingress_upstream_and_v1_downstream_side_by_side() {
    const KEY: &str = "v1-app-key-0123456789";
    let env = start(V1Faults::default(), |cfg| {
        testkit::ingress_config(cfg, None, &[KEY]);
    })
    .await;
    let mut c = env.bal().await;
    c.downstream(None, msg("device-1", "down-1")).await.unwrap();
    let ingress = testkit::IngressClient::plain(env.gw().ingress_addr.unwrap());
    let r = ingress
        .post_json(
            Some(KEY),
            &testkit::upstream_body(SESSION, "up-1", "device-2"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    let up = recv_until(&mut c, WAIT, |m| matches!(m, ToBal::Upstream { .. }))
        .await
        .unwrap();
    let ToBal::Upstream { fcm_data, .. } = &up else {
        unreachable!()
    };
    assert_eq!(fcm_data["message_id"], "up-1");
    assert_eq!(fcm_data["from"], "device-2");
    assert_eq!(fcm_data["source"], "ingress");
    let ack = final_of(&mut c, "down-1").await;
    assert!(
        matches!(&ack, ToBal::DownstreamAck { fcm_data, .. } if fcm_data["name"].is_string()),
        "{ack:?}"
    );
    let st = env.wait_emu("one delivery", |s| s.delivered >= 1).await;
    assert_eq!(st.delivered, 1);
    env.stop().await;
}
