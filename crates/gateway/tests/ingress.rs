//! The upstream ingress end to end (SPEC §10, issue 11): an in-process
//! gateway on real sockets with a real SQLite store, HTTPS with a
//! certificate chain from a CA made for the test, a BAL probe on the other
//! side.
//!
//! What each test proves is in its doc comment. Bad requests and their
//! metrics are in `ingress_errors.rs` (its own process: the metrics
//! recorder is process-wide). Hostile clients are in
//! `crates/gimmm/tests/ingress_hostile.rs`, SIGKILL in
//! `crates/gimmm/tests/ingress_crash.rs`, a full disk (503) in
//! `crates/gimmm/tests/store_faults.rs`.
#![allow(clippy::unwrap_used)]

use bal::{BalClient, ToBal};
use emulator::{Emulator, EmulatorConfig};
use gateway::config::Config;
use gateway::Gateway;
use std::path::Path;
use std::time::Duration;
use testkit::jwt::{alg_none, claims, hs256, jwks, now_secs, tamper, Signer};
use testkit::{
    emulator_config, http_get, in_process, ingress_config, upstream_body, AckPolicy, BalProbe,
    ClosedPort, HttpResponse, IngressClient, TestCa,
};

const SESSION: &str = "com.example.app";
const OTHER: &str = "com.example.other";
const TOKEN: &str = "bal-token";
const KEY: &str = "app-key-0123456789";
const WAIT: Duration = Duration::from_secs(20);
const ISS: &str = "https://auth.example.com";
const AUD: &str = "gimmm-ingress";

/// An emulator, a config with the ingress on (HTTPS from `ca`), both
/// sessions taking `KEY`.
async fn setup(dir: &Path, ca: Option<&TestCa>) -> (Emulator, Config) {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let mut cfg = emulator_config(&emu, dir, &[(SESSION, TOKEN), (OTHER, "other-token")]).unwrap();
    ingress_config(&mut cfg, ca, &[KEY]);
    (emu, cfg)
}

fn client(gw: &Gateway, ca: Option<&TestCa>) -> IngressClient {
    let addr = gw.ingress_addr.expect("the ingress is on");
    match ca {
        Some(ca) => IngressClient::tls(addr, ca.ca_pem.as_bytes(), "127.0.0.1").unwrap(),
        None => IngressClient::plain(addr),
    }
}

async fn post(c: &IngressClient, category: &str, id: &str) -> HttpResponse {
    c.post_json(Some(KEY), &upstream_body(category, id, "device-1"))
        .await
        .unwrap()
}

/// The sequenced messages of `session` waiting in the store (the admin
/// API returns only durable rows), UPSTREAMs from the ingress only.
async fn stored_ingress(gw: &Gateway, session: &str) -> Vec<serde_json::Value> {
    let (st, body) = http_get(
        gw.admin_addr.unwrap(),
        &format!("/api/v1/messages?state=outbox&session={session}&source=ingress&limit=1000"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["items"].as_array().unwrap().clone()
}

/// Over HTTPS (the server presents a chain from a CA made for the test;
/// the client trusts only that CA): the 202 comes only once the message is
/// durable — it is in the store's outbox (which shows durable rows only)
/// the moment the 202 arrives — and the BAL receives the very UPSTREAM an
/// XMPP upstream message gives, with `"source":"ingress"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_post_is_stored_before_202_and_reaches_the_bal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path()).unwrap();
    let (emu, cfg) = setup(dir.path(), Some(&ca)).await;
    let gw = in_process(&cfg, &emu).await.unwrap();
    let c = client(&gw, Some(&ca));
    // Not ACKing: what the BAL receives stays in the outbox.
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    probe.connect(gw.bal_addr).await.unwrap();

    for i in 0..5 {
        let id = format!("u-{i}");
        let r = post(&c, SESSION, &id).await;
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(r.json(), serde_json::json!({"message_id": id}));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let stored = stored_ingress(&gw, SESSION).await;
        assert!(
            stored
                .iter()
                .any(|m| m["message"]["fcm_data"]["message_id"] == id.as_str()),
            "{id} not durable when its 202 arrived: {stored:?}"
        );
    }
    probe
        .wait_until("five upstream messages", WAIT, |l| l.upstream.len() == 5)
        .await
        .unwrap();
    // The line itself, as a plain BAL sees it.
    let stored = stored_ingress(&gw, SESSION).await;
    let m = &stored[0]["message"];
    assert_eq!(stored[0]["source"], "ingress");
    assert_eq!(m["message_type"], "UPSTREAM");
    assert_eq!(m["session_id"], SESSION);
    assert_eq!(
        m["fcm_data"],
        serde_json::json!({"from": "device-1", "category": SESSION, "message_id": "u-0",
            "data": {"text": "hello from device-1", "n": "u-0"}, "source": "ingress"})
    );
    probe.snapshot().assert_each_delivered_once();
    // The TLS port speaks only TLS.
    let plain = IngressClient::plain(gw.ingress_addr.unwrap());
    assert!(post_err(&plain).await, "plain HTTP on the HTTPS port");
    // A client trusting another CA refuses the server.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestCa::generate(other_dir.path()).unwrap();
    let wrong = IngressClient::tls(
        gw.ingress_addr.unwrap(),
        other.ca_pem.as_bytes(),
        "127.0.0.1",
    )
    .unwrap();
    assert!(post_err(&wrong).await, "a certificate from an untrusted CA");
    gw.stop().await;
    emu.shutdown().await;
}

async fn post_err(c: &IngressClient) -> bool {
    c.post_json(Some(KEY), &upstream_body(SESSION, "x", "d"))
        .await
        .is_err()
}

/// A repeated `message_id` for the same category is answered 200
/// `duplicate:true` and never becomes a second UPSTREAM — in the same
/// process and after a restart on the same store; the same id for another
/// category is a different message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_200_and_never_a_second_upstream_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, cfg) = setup(dir.path(), None).await;
    let gw = in_process(&cfg, &emu).await.unwrap();
    let c = client(&gw, None);
    let mut probe = BalProbe::new(SESSION, TOKEN);
    probe.connect(gw.bal_addr).await.unwrap();
    assert_eq!(post(&c, SESSION, "dup-1").await.status, 202);
    // Concurrent repeats: exactly one is new at most (it was already).
    let repeats: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { post(&c, SESSION, "dup-1").await })
        })
        .collect();
    for r in repeats {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.json(),
            serde_json::json!({"message_id": "dup-1", "duplicate": true})
        );
    }
    // The same id for another category is its own message.
    let mut other = BalProbe::new(OTHER, "other-token");
    other.connect(gw.bal_addr).await.unwrap();
    assert_eq!(post(&c, OTHER, "dup-1").await.status, 202);
    other
        .wait_until("the other session's upstream", WAIT, |l| {
            l.upstream.contains_key("dup-1")
        })
        .await
        .unwrap();
    probe
        .wait_until("dup-1", WAIT, |l| l.upstream.contains_key("dup-1"))
        .await
        .unwrap();

    gw.stop().await;
    let gw = in_process(&cfg, &emu).await.unwrap();
    let c = client(&gw, None);
    probe.connect(gw.bal_addr).await.unwrap();
    let r = post(&c, SESSION, "dup-1").await;
    assert_eq!(r.status, 200, "after the restart: {r:?}");
    assert_eq!(r.json()["duplicate"], true);
    // A new message after the restart passes the old one's place in line.
    assert_eq!(post(&c, SESSION, "after-restart").await.status, 202);
    probe
        .wait_until("after-restart", WAIT, |l| {
            l.upstream.contains_key("after-restart")
        })
        .await
        .unwrap();
    let seen = probe.snapshot();
    assert_eq!(seen.upstream_lines("dup-1"), 1, "{}", seen.summary());
    seen.assert_each_delivered_once();
    gw.stop().await;
    emu.shutdown().await;
}

/// Posted while no BAL is logged on: each is answered 202 (nothing waits
/// for the BAL), held in the store, and delivered in the order posted when
/// the BAL logs on — also across a restart of the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_while_the_bal_is_offline_then_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, cfg) = setup(dir.path(), None).await;
    let gw = in_process(&cfg, &emu).await.unwrap();
    let c = client(&gw, None);
    let ids: Vec<String> = (0..40).map(|i| format!("off-{i:02}")).collect();
    for id in &ids[..20] {
        assert_eq!(post(&c, SESSION, id).await.status, 202);
    }
    gw.stop().await;
    let gw = in_process(&cfg, &emu).await.unwrap();
    let c = client(&gw, None);
    for id in &ids[20..] {
        assert_eq!(post(&c, SESSION, id).await.status, 202);
    }
    let mut bal = BalClient::connect_logon(gw.bal_addr, SESSION, TOKEN)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < ids.len() {
        match testkit::recv(&mut bal, WAIT).await.unwrap() {
            ToBal::Upstream {
                sequence_id,
                fcm_data,
                ..
            } => {
                assert_eq!(fcm_data["source"], "ingress");
                got.push(fcm_data["message_id"].as_str().unwrap().to_string());
                bal.ack(sequence_id).await.unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, ids, "in the order posted");
    gw.stop().await;
    emu.shutdown().await;
}

/// JWTs per session: RS256 and ES256 tokens signed in the test verify
/// against the session's JWKS file and their `sub` reaches the BAL as
/// `subject`; expired, not-yet-valid, wrong iss / aud, `alg: none`, HS256
/// with the public key as the secret, a tampered payload and an unknown
/// `kid` are all refused with the very 401 of a missing credential; the
/// session's static key keeps working beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_verify_offline_and_forgeries_get_the_same_401() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path()).unwrap();
    let (emu, mut cfg) = setup(dir.path(), Some(&ca)).await;
    let rsa = Signer::rsa("rsa-1").unwrap();
    let ec = Signer::ec("ec-1").unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&rsa, &ec]).to_string()).unwrap();
    let s = &mut cfg.bal.sessions[0];
    s.ingress_jwks_file = Some(jwks_file);
    s.ingress_issuer = ISS.into();
    s.ingress_audience = AUD.into();
    let gw = in_process(&cfg, &emu).await.unwrap();
    let c = client(&gw, Some(&ca));
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    probe.connect(gw.bal_addr).await.unwrap();

    let body = |id: &str| upstream_body(SESSION, id, "device-j");
    let r = c
        .post_json(
            Some(&rsa.sign(&claims(ISS, AUD, "user-rsa"))),
            &body("j-rsa"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    let r = c
        .post_json(Some(&ec.sign(&claims(ISS, AUD, "user-ec"))), &body("j-ec"))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        c.post_json(Some(KEY), &body("j-key")).await.unwrap().status,
        202
    );

    let missing = c.post_json(None, &body("j-bad")).await.unwrap();
    assert_eq!(missing.status, 401);
    let now = now_secs();
    let good = claims(ISS, AUD, "u");
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let forged: Vec<(&str, String)> = vec![
        ("expired", rsa.sign(&with("exp", (now - 600).into()))),
        ("not yet valid", ec.sign(&with("nbf", (now + 600).into()))),
        (
            "wrong iss",
            rsa.sign(&claims("https://evil.example", AUD, "u")),
        ),
        ("wrong aud", ec.sign(&claims(ISS, "someone-else", "u"))),
        ("alg none", alg_none(&good, Some("rsa-1"))),
        ("alg none, no kid", alg_none(&good, None)),
        (
            "HS256, public key as secret",
            hs256(&good, rsa.public_material().as_bytes(), Some("rsa-1")),
        ),
        (
            "HS256, EC public key as secret",
            hs256(&good, ec.public_material().as_bytes(), None),
        ),
        (
            "tampered",
            tamper(&rsa.sign(&good), &claims(ISS, AUD, "admin")),
        ),
        ("unknown kid", Signer::rsa("rsa-9").unwrap().sign(&good)),
        (
            "same kid, another key",
            Signer::ec("ec-1").unwrap().sign(&good),
        ),
        ("not a JWT", "eyJhbGciOiJSUzI1NiJ9".into()),
    ];
    for (what, token) in &forged {
        let r = c.post_json(Some(token), &body("j-bad")).await.unwrap();
        assert_eq!((r.status, &r.body), (401, &missing.body), "{what}");
        assert_eq!(
            r.header("www-authenticate"),
            missing.header("www-authenticate"),
            "{what}"
        );
    }
    probe
        .wait_until("three upstream", WAIT, |l| l.upstream.len() == 3)
        .await
        .unwrap();
    let stored = stored_ingress(&gw, SESSION).await;
    let subject_of = |id: &str| {
        stored
            .iter()
            .find(|m| m["message"]["fcm_data"]["message_id"] == id)
            .map(|m| m["message"]["fcm_data"]["subject"].clone())
            .unwrap()
    };
    assert_eq!(subject_of("j-rsa"), "user-rsa");
    assert_eq!(subject_of("j-ec"), "user-ec");
    assert_eq!(
        subject_of("j-key"),
        serde_json::Value::Null,
        "a static key has no subject"
    );
    assert!(!probe.snapshot().upstream.contains_key("j-bad"));
    gw.stop().await;
    emu.shutdown().await;
}

/// The ingress needs no FCM link: with FCM unreachable (no link ever
/// ready) posts are stored, answered 202 and delivered to the BAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_while_no_fcm_link_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, mut cfg) = setup(dir.path(), None).await;
    let closed = ClosedPort::new().unwrap();
    cfg.fcm.port = closed.port();
    let gw = in_process(&cfg, &emu).await.unwrap();
    let snap = gw.snapshot().await.unwrap();
    assert!(snap.links.iter().all(|l| l.state != "ready"));
    let c = client(&gw, None);
    let mut probe = BalProbe::new(SESSION, TOKEN);
    probe.connect(gw.bal_addr).await.unwrap();
    for i in 0..3 {
        assert_eq!(post(&c, SESSION, &format!("nolink-{i}")).await.status, 202);
    }
    probe
        .wait_until("three upstream", WAIT, |l| l.upstream.len() == 3)
        .await
        .unwrap();
    let (st, _) = http_get(gw.admin_addr.unwrap(), "/readyz", None)
        .await
        .unwrap();
    assert_eq!(st, 503, "FCM is still unreachable");
    gw.stop().await;
    emu.shutdown().await;
}

/// Nothing is answered before its commit: while another process holds the
/// store's write lock the post waits (and is not in the store); once the
/// store says it cannot take writes, new posts get 503 STORE_UNAVAILABLE at
/// once; when the lock goes, the waiting post is committed and only then
/// answered 202, and delivered once. The refused one was never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_202_before_the_commit_and_503_while_the_store_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, cfg) = setup(dir.path(), None).await;
    let gw = in_process(&cfg, &emu).await.unwrap();
    let c = client(&gw, None);
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    probe.connect(gw.bal_addr).await.unwrap();
    assert_eq!(post(&c, SESSION, "before").await.status, 202);

    let blocker = rusqlite::Connection::open(&cfg.store.path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { post(&c, SESSION, "held").await })
    };
    // The store's writer waits for the lock (its busy timeout), then says
    // it cannot write; meanwhile the post has no answer and is not stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !gw.snapshot().await.unwrap().store_degraded {
        assert!(tokio::time::Instant::now() < deadline, "never degraded");
        assert!(!waiting.is_finished(), "answered before its commit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!waiting.is_finished(), "answered before its commit");
    let ids: Vec<_> = stored_ingress(&gw, SESSION)
        .await
        .iter()
        .map(|m| m["message"]["fcm_data"]["message_id"].clone())
        .collect();
    assert_eq!(ids, vec!["before"], "only durable rows are shown");
    let t = tokio::time::Instant::now();
    let r = post(&c, SESSION, "refused").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "STORE_UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "at once: {:?}",
        t.elapsed()
    );

    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let r = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    probe
        .wait_until("held", WAIT, |l| l.upstream.contains_key("held"))
        .await
        .unwrap();
    // The refused one can be sent again now, and is new.
    assert_eq!(post(&c, SESSION, "refused").await.status, 202);
    probe
        .wait_until("refused", WAIT, |l| l.upstream.contains_key("refused"))
        .await
        .unwrap();
    let seen = probe.snapshot();
    seen.assert_each_delivered_once();
    assert_eq!(seen.upstream.len(), 3);
    gw.stop().await;
    emu.shutdown().await;
}

/// One gimmm takes both sources at once: an upstream message from FCM
/// (XMPP) and one from the ingress reach the same session as the same kind
/// of UPSTREAM, and the admin API's outbox view tells them apart
/// (`source=ingress|fcm`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_and_ingress_upstream_side_by_side_in_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, cfg) = setup(dir.path(), None).await;
    let gw = in_process(&cfg, &emu).await.unwrap();
    let c = client(&gw, None);
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    probe.connect(gw.bal_addr).await.unwrap();
    let mut data = serde_json::Map::new();
    data.insert("k".into(), "v".into());
    let from_fcm = emu.send_upstream("device-x", SESSION, data);
    assert_eq!(post(&c, SESSION, "from-ingress").await.status, 202);
    probe
        .wait_until("both", WAIT, |l| l.upstream.len() == 2)
        .await
        .unwrap();
    let admin = gw.admin_addr.unwrap();
    let page = |q: &str| {
        let q = q.to_string();
        async move {
            let (st, body) = http_get(
                admin,
                &format!("/api/v1/messages?state=outbox&session={SESSION}{q}"),
                None,
            )
            .await
            .unwrap();
            (
                st,
                serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };
    let ids = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["source"].as_str().unwrap().to_string(),
                    i["message"]["fcm_data"]["message_id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    };
    let (st, all) = page("").await;
    assert_eq!(st, 200);
    let mut both = ids(&all);
    both.sort();
    let mut want = vec![
        ("fcm".to_string(), from_fcm.clone()),
        ("ingress".to_string(), "from-ingress".to_string()),
    ];
    want.sort();
    assert_eq!(both, want);
    assert_eq!(
        ids(&page("&source=ingress").await.1),
        vec![("ingress".into(), "from-ingress".into())]
    );
    assert_eq!(
        ids(&page("&source=fcm").await.1),
        vec![("fcm".into(), from_fcm)]
    );
    assert_eq!(page("&source=carrier-pigeon").await.0, 400);
    gw.stop().await;
    emu.shutdown().await;
}
