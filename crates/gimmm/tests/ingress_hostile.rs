//! Hostile clients of the upstream ingress (SPEC §10, issue 11), against
//! `gimmm serve` as a child process with HTTPS: slow-loris clients, 10,000
//! connections, 1 MB bodies, invalid UTF-8, deeply nested JSON, forged
//! JWTs.
//!
//! Each test first stores some upstream messages (posted while no BAL is
//! logged on), then attacks, and checks that meanwhile a normal request
//! from another client still gets its 202 promptly, that the gateway
//! process is still up afterwards with bounded memory, and that every
//! stored message then reaches the BAL exactly once (nothing stored is
//! lost). The results are in RELIABILITY.md.
#![allow(clippy::unwrap_used)]

use gateway::config::{Config, SessionConfig};
use std::time::Duration;
use testkit::jwt::{alg_none, claims, hs256, jwks, tamper, Signer};
use testkit::{
    ingress_config, upstream_body, BalProbe, ChildGateway, ChildOpts, IngressClient, TestCa,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

const SESSION: &str = "com.example.app";
const TOKEN: &str = "hostile-token";
const KEY: &str = "hostile-app-key-01";
const ISS: &str = "https://auth.example.com";
const AUD: &str = "gimmm-ingress";
const WAIT: Duration = Duration::from_secs(30);
/// How long a normal request may take while an attack runs.
const PROMPT: Duration = Duration::from_secs(3);

struct Rig {
    gw: ChildGateway,
    ca: TestCa,
    signer: Signer,
    stored: Vec<String>,
    _dir: tempfile::TempDir,
}

/// A child gateway with HTTPS, a static key and a JWKS, and 20 upstream
/// messages stored for a BAL that is not logged on.
async fn rig(tweak: impl FnOnce(&mut Config)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path()).unwrap();
    let signer = Signer::rsa("k1").unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&signer]).to_string()).unwrap();
    let mut cfg = Config::default();
    cfg.bal.listen = "127.0.0.1:0".into();
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.store.path = dir.path().join("gimmm.db");
    cfg.bal.sessions = vec![SessionConfig::new(SESSION, TOKEN)];
    ingress_config(&mut cfg, Some(&ca), &[KEY]);
    let s = &mut cfg.bal.sessions[0];
    s.ingress_jwks_file = Some(jwks_file);
    s.ingress_issuer = ISS.into();
    s.ingress_audience = AUD.into();
    tweak(&mut cfg);
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm")).dir(dir.path());
    let gw = ChildGateway::spawn(&cfg, opts).await.unwrap();
    let mut r = Rig {
        gw,
        ca,
        signer,
        stored: Vec::new(),
        _dir: dir,
    };
    for i in 0..20 {
        let id = format!("stored-{i}");
        let resp = r
            .client()
            .post_json(Some(KEY), &upstream_body(SESSION, &id, "good-device"))
            .await
            .unwrap();
        assert_eq!(resp.status, 202, "{resp:?}");
        r.stored.push(id);
    }
    r
}

impl Rig {
    fn client(&self) -> IngressClient {
        IngressClient::tls(
            self.gw.ingress_addr().unwrap(),
            self.ca.ca_pem.as_bytes(),
            "127.0.0.1",
        )
        .unwrap()
    }

    /// A normal post from a good client, answered 202 within [`PROMPT`].
    async fn normal_request_succeeds(&mut self, id: &str) -> Duration {
        let t = Instant::now();
        let r = timeout(
            PROMPT,
            self.client()
                .post_json(Some(KEY), &upstream_body(SESSION, id, "good-device")),
        )
        .await
        .unwrap_or_else(|_| panic!("{id}: no answer within {PROMPT:?} during the attack"))
        .unwrap();
        assert_eq!(r.status, 202, "{id}: {r:?}");
        self.stored.push(id.to_string());
        t.elapsed()
    }

    fn rss_kib(&self) -> u64 {
        let pid = self.gw.pid().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    /// The gateway is still up, and every stored message reaches the BAL
    /// exactly once; no panic in its log.
    async fn nothing_lost(mut self) {
        assert!(
            self.gw.try_wait().unwrap().is_none(),
            "gimmm exited: {}",
            self.gw.log_tail(30)
        );
        let mut probe = BalProbe::new(SESSION, TOKEN);
        probe.connect(self.gw.bal_addr()).await.unwrap();
        let stored = self.stored.clone();
        probe
            .wait_until("every stored message", WAIT, |l| {
                stored.iter().all(|id| l.upstream.contains_key(id))
            })
            .await
            .unwrap();
        let seen = probe.snapshot();
        seen.assert_each_delivered_once();
        assert_eq!(seen.upstream.len(), stored.len(), "{}", seen.summary());
        let log = self.gw.stderr();
        assert!(!log.contains("panicked"), "{log}");
        let status = self.gw.term().await.unwrap();
        assert!(status.success(), "SIGTERM: {status:?}");
    }
}

/// Slow-loris: 200 clients finish TLS and then send their request head one
/// byte every 300 ms, 50 more send a head and then trickle the body, 50
/// open TCP and send nothing at all. `read_timeout_secs` = 2: each is cut
/// off within it (plus scheduling), while a normal client is served at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_cut_off_and_others_served() {
    let mut r = rig(|c| c.ingress.read_timeout_secs = 2).await;
    let c = r.client();
    let head = format!(
        "POST /v1/upstream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 200\r\n\r\n"
    );
    let mut tasks = Vec::new();
    for i in 0..300 {
        let c = c.clone();
        let head = head.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut answer = Vec::new();
            let mut buf = [0u8; 512];
            // Writes `slow` a byte every 300 ms, reading between the bytes,
            // until the server answers or closes.
            let mut s: Box<dyn testkit::ingress::Io> = if i < 250 {
                c.open().await.unwrap()
            } else {
                // TCP only: not even a TLS ClientHello.
                Box::new(tokio::net::TcpStream::connect(c.addr()).await.unwrap())
            };
            let slow: Vec<u8> = match i {
                0..200 => head.into_bytes(),
                200..250 => {
                    s.write_all(head.as_bytes()).await.unwrap();
                    vec![b' '; 200]
                }
                _ => Vec::new(),
            };
            let mut rest = slow.iter();
            loop {
                if let Some(b) = rest.next() {
                    if s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                }
                match timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
                if t.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
            (i, t.elapsed(), String::from_utf8_lossy(&answer).to_string())
        }));
    }
    // Meanwhile, good clients.
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        worst = worst.max(r.normal_request_succeeds(&format!("during-{i}")).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut longest = Duration::ZERO;
    for t in tasks {
        let (i, took, answer) = t.await.unwrap();
        assert!(
            took < Duration::from_secs(10),
            "client {i} held on for {took:?}"
        );
        if (200..250).contains(&i) {
            assert!(answer.starts_with("HTTP/1.1 408"), "client {i}: {answer}");
            assert!(answer.contains("REQUEST_TIMEOUT"), "client {i}: {answer}");
        }
        longest = longest.max(took);
    }
    eprintln!(
        "slow-loris: 300 slow clients cut off after at most {longest:?}; good clients' worst latency {worst:?}"
    );
    r.nothing_lost().await;
}

/// 10,000 connections at once (more than `max_connections`, 4096 by
/// default): the longest-idle ones are closed to make room, the process
/// stays within bounds, a normal request is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_do_not_lock_others_out() {
    let mut r = rig(|_| {}).await;
    let addr = r.gw.ingress_addr().unwrap();
    let rss_before = r.rss_kib();
    let t = Instant::now();
    let mut held = Vec::with_capacity(10_000);
    let mut failed = 0;
    for chunk in 0..20 {
        let mut batch = Vec::new();
        for _ in 0..500 {
            batch.push(tokio::spawn(tokio::net::TcpStream::connect(addr)));
        }
        for b in batch {
            match b.await.unwrap() {
                Ok(s) => held.push(s),
                Err(_) => failed += 1,
            }
        }
        if chunk % 5 == 4 {
            r.normal_request_succeeds(&format!("during-{chunk}")).await;
        }
    }
    let opened = t.elapsed();
    let rss_peak = r.rss_kib();
    let worst = r.normal_request_succeeds("while-held").await;
    // The server closed the evicted ones: most of ours read EOF at once.
    let mut closed = 0;
    for s in &mut held {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(1), s.read(&mut b)).await {
            closed += 1;
        }
    }
    eprintln!(
        "10,000 connections: opened in {opened:?} ({failed} failed), {closed} closed by gimmm to make room; RSS {rss_before} -> {rss_peak} KiB; a normal request took {worst:?}"
    );
    assert!(
        closed >= 10_000 - 4096 - failed - 16,
        "only {closed} closed"
    );
    assert!(
        rss_peak < rss_before + 200 * 1024,
        "RSS grew from {rss_before} to {rss_peak} KiB"
    );
    drop(held);
    r.normal_request_succeeds("after").await;
    r.nothing_lost().await;
}

/// 1 MB bodies, announced (Content-Length) and streamed (chunked), 40 at a
/// time: refused with 413 (or the connection closed) after reading at most
/// `max_body_bytes` + 64 KiB of each; memory stays flat; others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_bodies_are_refused_without_buffering_them() {
    let mut r = rig(|_| {}).await;
    let c = r.client();
    let rss_before = r.rss_kib();
    let mb = vec![b'x'; 1 << 20];
    let mut tasks = Vec::new();
    for i in 0..40 {
        let c = c.clone();
        let mb = mb.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = c.open().await.unwrap();
            let head = if i % 2 == 0 {
                format!("POST /v1/upstream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n", mb.len())
            } else {
                format!("POST /v1/upstream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", mb.len())
            };
            let mut req = head.into_bytes();
            req.extend_from_slice(&mb);
            let (mut rd, mut wr) = tokio::io::split(s.as_mut());
            let write = async {
                let _ = wr.write_all(&req).await;
                let _ = wr.flush().await;
            };
            let mut answer = Vec::new();
            let read = async {
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n)) = timeout(WAIT, rd.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                    answer.extend_from_slice(&buf[..n]);
                }
            };
            tokio::join!(write, read);
            String::from_utf8_lossy(&answer).to_string()
        }));
    }
    let worst = r.normal_request_succeeds("during").await;
    let mut answered = 0;
    for t in tasks {
        let answer = t.await.unwrap();
        if !answer.is_empty() {
            assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
            answered += 1;
        }
    }
    let rss_after = r.rss_kib();
    eprintln!(
        "1 MB bodies: 40 sent, {answered} read their 413 (the others saw the connection close); RSS {rss_before} -> {rss_after} KiB; a normal request took {worst:?}"
    );
    assert!(answered >= 1, "no 413 at all");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    r.nothing_lost().await;
}

/// Garbage: invalid UTF-8, JSON nested 2,000 deep, 100,000 deep (over the
/// body limit), NUL bytes, bytes that are not HTTP at all, a 20 KB header.
/// Each gets its answer (400 naming the problem, 413, 431, or a closed
/// connection for non-HTTP), nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_answered_and_nothing_is_stored() {
    let mut r = rig(|_| {}).await;
    let c = r.client();
    let mut utf8 = upstream_body(SESSION, "bad-utf8", "d")
        .to_string()
        .into_bytes();
    let at = utf8.len() - 5;
    utf8[at] = 0xff;
    let deep = |n: usize| {
        format!(
            r#"{{"category":"{SESSION}","message_id":"deep","from":"d","data":{{}},"x":{}{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
        .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("invalid UTF-8", utf8, 400, "not valid UTF-8"),
        (
            "nested 2,000 deep",
            deep(2000),
            400,
            "nested deeper than 128 levels",
        ),
        ("nested 100,000 deep", deep(100_000), 413, "larger than"),
        ("NUL bytes", vec![0u8; 300], 400, "INVALID_JSON"),
        (
            "binary",
            (0..=255u8).cycle().take(3000).collect(),
            400,
            "INVALID_JSON",
        ),
    ];
    for _ in 0..50 {
        for (what, body, status, says) in &cases {
            let resp = c.post(Some(KEY), body).await.unwrap();
            assert_eq!(resp.status, *status, "{what}: {resp:?}");
            assert!(resp.body.contains(says), "{what}: {}", resp.body);
        }
    }
    // Not HTTP at all.
    for junk in [
        &b"\x16\x03\x01\x00\x05hello\r\n\r\n"[..],
        b"GARBAGE\r\n\r\n",
        &[0xffu8; 64][..],
    ] {
        let mut s = c.open().await.unwrap();
        let _ = s.write_all(junk).await;
        let mut out = Vec::new();
        let _ = timeout(WAIT, s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || text.starts_with("HTTP/1.1 400"), "{text}");
    }
    // A 20 KB header line.
    let big = format!(
        "POST /v1/upstream HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\nConnection: close\r\n\r\n",
        "j".repeat(20_000)
    );
    let resp = c.raw(big.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 431, "{resp:?}");
    r.normal_request_succeeds("after-garbage").await;
    r.nothing_lost().await;
}

/// 3,000 requests with forged JWTs (alg none, HS256 with the public key as
/// the secret, tampered payloads, unknown kids, random and oversized
/// tokens), 30 at a time: every one gets the same 401, nothing is stored,
/// a normal client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_jwts_all_get_the_same_401() {
    let mut r = rig(|c| c.ingress.per_client_per_minute = 100_000).await;
    let c = r.client();
    let good = claims(ISS, AUD, "mallory");
    let real = r.signer.sign(&good);
    let other = Signer::ec("k1").unwrap();
    let forged: Vec<String> = vec![
        alg_none(&good, Some("k1")),
        alg_none(&good, None),
        hs256(&good, r.signer.public_material().as_bytes(), Some("k1")),
        hs256(&good, r.signer.public_material().as_bytes(), None),
        tamper(&real, &claims(ISS, AUD, "admin")),
        other.sign(&good),
        Signer::rsa("k9").unwrap().sign(&good),
        format!(
            "{}.{}.{}",
            "e".repeat(3000),
            "e".repeat(3000),
            "e".repeat(3000)
        ),
        "a.b.c".into(),
        "..".into(),
    ];
    let missing = c
        .post_json(None, &upstream_body(SESSION, "forged", "m"))
        .await
        .unwrap();
    assert_eq!(missing.status, 401);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..30 {
        let c = c.clone();
        let forged = forged.clone();
        let want = missing.body.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let tok = &forged[(w + i) % forged.len()];
                let resp = c
                    .post_json(
                        Some(tok),
                        &upstream_body(SESSION, &format!("forged-{w}-{i}"), "m"),
                    )
                    .await
                    .unwrap();
                assert_eq!((resp.status, &resp.body), (401, &want), "{tok:.40}");
            }
        }));
    }
    let worst = r.normal_request_succeeds("during-forgeries").await;
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "forged JWTs: 3,000 refused with one 401 in {:?}; a normal request took {worst:?}",
        t.elapsed()
    );
    // The real token still works.
    let resp = c
        .post_json(Some(&real), &upstream_body(SESSION, "real-jwt", "m"))
        .await
        .unwrap();
    assert_eq!(resp.status, 202, "{resp:?}");
    r.stored.push("real-jwt".into());
    r.nothing_lost().await;
}
