//! OAuth and authentication errors on the HTTP v1 link (SPEC §8.3, §8.4),
//! end to end against the emulator's token endpoint and API: the token is
//! fetched before the link is ready; short-lived tokens are refreshed in
//! the background; a failing token endpoint is retried while the token
//! lasts; a 401 refreshes the token and resends once (not an attempt); a
//! repeated 401, a 403 without FcmError and a refused key surface in
//! `/readyz` while the messages stay queued, and everything recovers. (The
//! refresh timing itself is tested under paused time in `oauth.rs`.)
#![allow(clippy::unwrap_used)]

mod http_v1_common;

use bal::ToBal;
use emulator::v1::V1Faults;
use http_v1_common::*;
use std::time::Duration;
use testkit::{BalProbe, Final};

/// Sends `ids` to `to` and waits for each to be accepted.
async fn send_all(p: &mut BalProbe, to: &str, ids: &[String]) {
    for id in ids {
        let a = p.send_and_answer(None, msg(to, id), WAIT).await.unwrap();
        assert!(matches!(a, ToBal::DownstreamAccepted { .. }), "{a:?}");
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn the_token_comes_before_ready_and_a_failing_endpoint_holds_messages() {
    let env = start(
        V1Faults {
            token_endpoint_error: Some(500),
            ..V1Faults::default()
        },
        |_| {},
    )
    .await;
    env.wait_emu("a refused token request", |s| s.tokens_refused >= 1)
        .await;
    let body = env.wait_readyz(503).await;
    assert!(
        body.contains("no FCM HTTP v1 connection is ready"),
        "{body}"
    );
    // Accepted (stored), not sent: there is no token to send with.
    let mut p = env.probe().await;
    send_all(&mut p, "dev-a", &ids("a", 3)).await;
    let s = env.emu.stats();
    assert_eq!(s.requests, 0, "sent without a token");
    assert!(
        s.connections.iter().all(|c| c.alpn != "h2"),
        "a link connected before it had a token: {:?}",
        s.connections
    );
    // The endpoint recovers: the retry fetches a token, the link gets
    // ready, the messages go.
    env.emu.set_faults(V1Faults::default()).unwrap();
    p.wait_finals(3, WAIT).await.unwrap();
    env.wait_readyz(200).await;
    let s = env.emu.stats();
    assert!(s.tokens_issued >= 1);
    assert_eq!(s.unauthenticated, 0);
    p.snapshot().assert_exactly_one_final(ids("a", 3).iter());
    env.stop().await;
}

#[tokio::test]
async fn a_refused_key_at_start_is_an_authentication_error() {
    let env = start(
        V1Faults {
            token_endpoint_error: Some(400),
            ..V1Faults::default()
        },
        |_| {},
    )
    .await;
    let body = loop {
        let b = env.wait_readyz(503).await;
        if b.contains("FCM rejected credentials") {
            break b;
        }
    };
    assert!(body.contains("invalid_grant"), "{body}");
    let text = env.metrics().await;
    assert!(
        metric(
            &text,
            "gimmm_fcm_token_refresh_total",
            &[("result", "refused")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(&text, "gimmm_fcm_auth_failing", &[]),
        Some(1.0),
        "{text}"
    );
    env.emu.set_faults(V1Faults::default()).unwrap();
    env.wait_readyz(200).await;
    env.stop().await;
}

#[tokio::test]
async fn a_401_refreshes_the_token_and_resends_once_not_as_an_attempt() {
    // One attempt only: were the 401 an attempt, every message would end
    // in MAX_RETRIES.
    let env = start(V1Faults::default(), |c| c.retry.max_attempts = 1).await;
    let mut p = env.probe().await;
    send_all(&mut p, "dev-r", &ids("warm", 1)).await;
    p.wait_finals(1, WAIT).await.unwrap();
    assert_eq!(env.emu.stats().tokens_issued, 1);
    env.emu.revoke_tokens();
    let batch = ids("r", 20);
    for id in &batch {
        p.downstream(None, msg("dev-r", id)).unwrap();
    }
    p.wait_finals(21, WAIT).await.unwrap();
    let l = p.snapshot();
    l.assert_exactly_one_final(batch.iter());
    for id in &batch {
        assert_eq!(l.final_of(id), Some(&Final::Ack), "{id}: {}", l.summary());
    }
    let s = env.emu.stats();
    assert!(s.unauthenticated >= 1, "{s:#?}");
    assert_eq!(s.tokens_issued, 2, "one refresh for every refused request");
    assert_eq!(s.delivered, 21);
    let text = env.metrics().await;
    assert_eq!(metric(&text, "gimmm_retries_total", &[]), Some(0.0));
    assert!(metric(&text, "gimmm_fcm_token_refresh_total", &[("result", "ok")]).unwrap() >= 2.0);
    assert!(
        metric(
            &text,
            "gimmm_fcm_http_responses_total",
            &[("status", "401")]
        )
        .unwrap()
            >= 1.0
    );
    env.stop().await;
}

/// A refusal that outlasts a refresh: `/readyz` says so, nothing is
/// rejected, and once FCM takes the credentials again everything goes.
async fn refusal_holds_messages_then_recovers(status: u16, reason: &str) {
    let env = start(V1Faults::default(), |c| c.retry.max_attempts = 1).await;
    env.wait_readyz(200).await;
    env.emu
        .set_faults(V1Faults {
            send_auth_error: Some(status),
            ..V1Faults::default()
        })
        .unwrap();
    let mut p = env.probe().await;
    let batch = ids("h", 10);
    send_all(&mut p, "dev-h", &batch).await;
    let body = loop {
        let b = env.wait_readyz(503).await;
        if b.contains("FCM rejected credentials") {
            break b;
        }
    };
    assert!(body.contains(reason), "{body}");
    // Held (back in the engine's queue), and the credentials probed now and
    // then (the auth backoff is 200 ms here): wait for a few refused
    // probes, still no final result.
    let refused = |s: &emulator::v1::V1Stats| {
        if status == 401 {
            s.unauthenticated
        } else {
            s.permission_denied
        }
    };
    let first = refused(&env.emu.stats());
    env.wait_emu("more refused probes", |s| refused(s) >= first + 3)
        .await;
    assert!(
        p.snapshot().finals.is_empty(),
        "a message ended while FCM refused the credentials: {}",
        p.snapshot().summary()
    );
    let s = env.emu.stats();
    assert!(
        refused(&s) < 40,
        "held messages are not all resent at every probe: {}",
        refused(&s)
    );
    if status == 401 {
        assert!(
            s.tokens_issued >= 3,
            "each probe after a 401 gets a new token"
        );
    }
    // FCM takes them again.
    env.emu.set_faults(V1Faults::default()).unwrap();
    p.wait_finals(batch.len(), WAIT).await.unwrap();
    let l = p.snapshot();
    l.assert_exactly_one_final(batch.iter());
    assert!(batch.iter().all(|id| l.final_of(id) == Some(&Final::Ack)));
    env.wait_readyz(200).await;
    let s = env.emu.stats();
    assert_eq!(s.delivered, batch.len() as u64);
    // The link probed with a validate_only request of its own, not with a
    // held message.
    assert!(s.validated_only >= 1, "{s:#?}");
    env.stop().await;
}

#[tokio::test]
async fn a_repeated_401_holds_messages_and_recovers() {
    refusal_holds_messages_then_recovers(401, "even after a refresh").await;
}

#[tokio::test]
async fn a_403_without_fcm_error_holds_messages_and_recovers() {
    refusal_holds_messages_then_recovers(403, "PERMISSION_DENIED").await;
}

#[tokio::test]
async fn a_key_refused_while_running_holds_messages_and_recovers() {
    let env = start(V1Faults::default(), |_| {}).await;
    env.wait_readyz(200).await;
    // The key is revoked: tokens stop working and no new one is issued.
    env.emu
        .set_faults(V1Faults {
            token_endpoint_error: Some(400),
            ..V1Faults::default()
        })
        .unwrap();
    env.emu.revoke_tokens();
    let mut p = env.probe().await;
    send_all(&mut p, "dev-k", &ids("k", 3)).await;
    let body = loop {
        let b = env.wait_readyz(503).await;
        if b.contains("FCM rejected credentials") {
            break b;
        }
    };
    assert!(body.contains("invalid_grant"), "{body}");
    assert!(p.snapshot().finals.is_empty());
    env.emu.set_faults(V1Faults::default()).unwrap();
    p.wait_finals(3, WAIT).await.unwrap();
    p.snapshot().assert_exactly_one_final(ids("k", 3).iter());
    assert!(ids("k", 3)
        .iter()
        .all(|id| p.snapshot().final_of(id) == Some(&Final::Ack)));
    env.wait_readyz(200).await;
    env.stop().await;
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_in_the_background() {
    let env = start(
        V1Faults {
            token_lifetime_secs: Some(2),
            ..V1Faults::default()
        },
        |_| {},
    )
    .await;
    let p = env.probe().await;
    // Traffic for about four token lifetimes.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while tokio::time::Instant::now() < until {
        p.downstream(None, msg("dev-s", &format!("s-{n}"))).unwrap();
        n += 1;
        // Pacing the sender: one message every 25 ms.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    p.wait_finals(n, WAIT).await.unwrap();
    let l = p.snapshot();
    let all = ids("s", n);
    l.assert_exactly_one_final(all.iter());
    assert!(all.iter().all(|id| l.final_of(id) == Some(&Final::Ack)));
    let s = env.emu.stats();
    assert!(s.tokens_issued >= 4, "{s:#?}");
    assert_eq!(
        s.unauthenticated, 0,
        "a request went out with an expired token: refresh is not ahead of expiry"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_failing_token_endpoint_is_retried_while_the_token_lasts() {
    let env = start(
        V1Faults {
            token_lifetime_secs: Some(6),
            ..V1Faults::default()
        },
        |_| {},
    )
    .await;
    env.wait_readyz(200).await;
    env.emu
        .set_faults(V1Faults {
            token_lifetime_secs: Some(6),
            token_endpoint_error: Some(500),
            ..V1Faults::default()
        })
        .unwrap();
    // The refresh at half-life fails and is retried with backoff...
    env.wait_emu("two failed refreshes", |s| s.tokens_refused >= 2)
        .await;
    // ...while the current token keeps working.
    let mut p = env.probe().await;
    send_all(&mut p, "dev-f", &ids("f", 2)).await;
    p.wait_finals(2, WAIT).await.unwrap();
    assert_eq!(env.emu.stats().unauthenticated, 0);
    // Once it expired: not ready, messages wait.
    env.wait_readyz(503).await;
    let before = env.emu.stats().requests;
    send_all(&mut p, "dev-f", &ids("g", 2)).await;
    assert_eq!(env.emu.stats().requests, before, "sent without a token");
    env.emu.set_faults(V1Faults::default()).unwrap();
    p.wait_finals(4, WAIT).await.unwrap();
    env.wait_readyz(200).await;
    let l = p.snapshot();
    let all: Vec<String> = ids("f", 2).into_iter().chain(ids("g", 2)).collect();
    l.assert_exactly_one_final(all.iter());
    assert!(all.iter().all(|id| l.final_of(id) == Some(&Final::Ack)));
    let text = env.metrics().await;
    assert!(
        metric(
            &text,
            "gimmm_fcm_token_refresh_total",
            &[("result", "error")]
        )
        .unwrap()
            >= 2.0
    );
    env.stop().await;
}
