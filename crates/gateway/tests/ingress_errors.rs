//! Bad requests to the upstream ingress (SPEC §10, issue 11): every
//! answer §10 lists for bad input, on a real socket against an in-process
//! gateway with a real store, and the metrics they move. In a test binary
//! of its own because the metrics recorder is process-wide.
#![allow(clippy::unwrap_used)]

use emulator::{Emulator, EmulatorConfig};
use gateway::config::Config;
use gateway::Gateway;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use testkit::{
    emulator_config, http_get, in_process, ingress_config, upstream_body, BalProbe, IngressClient,
};

const SESSION: &str = "com.example.app";
const OTHER: &str = "com.example.other";
const TOKEN: &str = "bal-token";
const KEY: &str = "app-key-0123456789";
const WAIT: Duration = Duration::from_secs(20);

async fn setup(dir: &Path) -> (Emulator, Config) {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let mut cfg = emulator_config(&emu, dir, &[(SESSION, TOKEN), (OTHER, "other-token")]).unwrap();
    ingress_config(&mut cfg, None, &[KEY]);
    (emu, cfg)
}

/// Every answer of SPEC §10 for bad input, with a body naming the problem,
/// and nothing of it reaches the BAL; the metrics count each by session and
/// outcome, and the latency histogram moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, mut cfg) = setup(dir.path()).await;
    cfg.ingress.per_client_per_minute = 3;
    // Room for a body whose data is over §3.2's 4096 bytes.
    cfg.ingress.max_body_bytes = 16 * 1024;
    let gw = in_process(&cfg, &emu).await.unwrap();
    let c = IngressClient::plain(gw.ingress_addr.unwrap());
    let mut probe = BalProbe::new(SESSION, TOKEN);
    probe.connect(gw.bal_addr).await.unwrap();
    let metrics_before = metrics(&gw).await;

    let bad = |body: &str| (body.to_string(), 400u16);
    let ok_body = |data: serde_json::Value| {
        serde_json::json!({"category": SESSION, "message_id": "m", "from": "d", "data": data})
            .to_string()
    };
    let cases: Vec<((String, u16), &str)> = vec![
        (bad("not json"), "not a valid upstream message"),
        (bad(""), "not complete JSON"),
        (bad("[1,2]"), "expected a JSON object"),
        (
            bad(r#"{"message_id":"m","from":"d","data":{}}"#),
            "missing field \"category\"",
        ),
        (
            bad(r#"{"category":5,"message_id":"m","from":"d","data":{}}"#),
            "\"category\" to be a string",
        ),
        (
            bad(r#"{"category":"com.example.app","message_id":"m","from":"d","data":"x"}"#),
            "\"data\" to be an object of strings",
        ),
        (
            bad(&ok_body(serde_json::json!({"k": 1}))),
            "data value \"k\" to be a string",
        ),
        (bad(&ok_body(serde_json::json!({"gcm.x": "v"}))), "reserved"),
        (bad(&ok_body(serde_json::json!({"from": "v"}))), "reserved"),
        (
            bad(&ok_body(serde_json::json!({"k": "v".repeat(4096)}))),
            "message too big",
        ),
        (
            bad(
                r#"{"category":"com.example.app","message_id":"m","from":"d","data":{"a":"1","a":"2"}}"#,
            ),
            "duplicate data key",
        ),
        (
            bad(&format!(
                r#"{{"category":"com.example.app","message_id":"m","from":"d","data":{{}},"x":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            )),
            "nested deeper than 128 levels (the parser's limit)",
        ),
    ];
    for ((body, status), says) in &cases {
        let r = c.post(Some(KEY), body.as_bytes()).await.unwrap();
        assert_eq!(r.status, *status, "{body}: {r:?}");
        assert_eq!(r.json()["error"], "INVALID_JSON", "{body}");
        let d = r.json()["error_description"].as_str().unwrap().to_string();
        assert!(d.contains(says), "{body}: {d}");
    }
    // Invalid UTF-8.
    let mut b = upstream_body(SESSION, "m", "d").to_string().into_bytes();
    b[3] = 0xc3;
    b[4] = 0x28;
    let r = c.post(Some(KEY), &b).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not valid UTF-8"), "{r:?}");

    // 401: the same answer for a missing and a wrong credential.
    let body = upstream_body(SESSION, "auth-1", "d");
    let missing = c.post_json(None, &body).await.unwrap();
    let wrong = c
        .post_json(Some("app-key-0123456788"), &body)
        .await
        .unwrap();
    let empty = c
        .raw(&request(
            &[("Authorization", "Basic Zm9vOmJhcg==")],
            body.to_string().as_bytes(),
        ))
        .await
        .unwrap();
    assert_eq!(missing.status, 401);
    for r in [&wrong, &empty] {
        assert_eq!((r.status, &r.body), (missing.status, &missing.body));
        assert_eq!(
            r.header("www-authenticate"),
            missing.header("www-authenticate")
        );
    }
    assert_eq!(missing.json()["error"], "UNAUTHORIZED");
    // 404: unknown category (whatever the credential).
    let r = c
        .post_json(Some(KEY), &upstream_body("com.nobody", "m", "d"))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, "UNKNOWN_CATEGORY".into())
    );
    // 413: announced, and streamed without a length.
    let big = upstream_body(SESSION, "big", &"d".repeat(20_000)).to_string();
    let r = c.post(Some(KEY), big.as_bytes()).await.unwrap();
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (413, "PAYLOAD_TOO_LARGE".into())
    );
    let chunked = chunked_request(big.as_bytes());
    let r = c.raw(&chunked).await.unwrap();
    assert_eq!(r.status, 413, "{r:?}");
    // 429 after per_client_per_minute (3) from one client, with Retry-After;
    // another client is not limited.
    for i in 0..3 {
        let r = c
            .post_json(
                Some(KEY),
                &upstream_body(SESSION, &format!("rl-{i}"), "chatty"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{r:?}");
    }
    let r = c
        .post_json(Some(KEY), &upstream_body(SESSION, "rl-3", "chatty"))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (429, "RATE_LIMITED".into())
    );
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&after), "Retry-After {after}");
    assert_eq!(
        c.post_json(Some(KEY), &upstream_body(SESSION, "rl-q", "quiet"))
            .await
            .unwrap()
            .status,
        202
    );
    // Other methods and paths.
    let r = c
        .raw(b"GET /v1/upstream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = c
        .raw(b"GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, "NOT_FOUND".into())
    );

    // Only the good ones reached the BAL.
    probe
        .wait_until("the four accepted", WAIT, |l| l.upstream.len() == 4)
        .await
        .unwrap();
    let seen = probe.snapshot();
    let ids: Vec<&String> = seen.upstream.keys().collect();
    assert_eq!(ids, vec!["rl-0", "rl-1", "rl-2", "rl-q"]);

    let m = metrics(&gw).await;
    let moved = |session: &str, outcome: &str| {
        let k =
            format!("gimmm_ingress_requests_total{{outcome=\"{outcome}\",session=\"{session}\"}}");
        m.get(&k).copied().unwrap_or(0.0) - metrics_before.get(&k).copied().unwrap_or(0.0)
    };
    assert_eq!(moved(SESSION, "accepted"), 4.0, "{m:?}");
    assert_eq!(moved(SESSION, "unauthorized"), 3.0);
    assert_eq!(moved(SESSION, "rate_limited"), 1.0);
    assert_eq!(moved("", "invalid"), 13.0);
    assert_eq!(moved("", "unknown_category"), 1.0);
    assert_eq!(moved("", "too_large"), 2.0);
    assert_eq!(moved("", "not_found"), 2.0);
    assert_eq!(moved(OTHER, "accepted"), 0.0, "series exist per session");
    assert!(m.contains_key(&format!(
        "gimmm_ingress_requests_total{{outcome=\"duplicate\",session=\"{OTHER}\"}}"
    )));
    let count = |m: &BTreeMap<String, f64>| {
        m.get("gimmm_ingress_request_seconds_count")
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(count(&m) - count(&metrics_before), 26.0, "{m:?}");
    gw.stop().await;
    emu.shutdown().await;
}

/// A request with extra header lines.
fn request(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/upstream HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// A chunked request of `body` (no Content-Length).
fn chunked_request(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/upstream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(1000) {
        r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        r.extend_from_slice(chunk);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// `/metrics` as `name{labels} -> value` (labels sorted as rendered).
async fn metrics(gw: &Gateway) -> BTreeMap<String, f64> {
    let (st, text) = http_get(gw.admin_addr.unwrap(), "/metrics", None)
        .await
        .unwrap();
    assert_eq!(st, 200);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((sorted_labels(k), v.parse().ok()?))
        })
        .collect()
}

/// `name{b="1",a="2"}` -> `name{a="2",b="1"}`.
fn sorted_labels(k: &str) -> String {
    let Some((name, rest)) = k.split_once('{') else {
        return k.to_string();
    };
    let inner = rest.trim_end_matches('}');
    let mut parts: Vec<&str> = inner.split("\",").collect();
    let last = parts.len() - 1;
    let mut owned: Vec<String> = parts
        .drain(..)
        .enumerate()
        .map(|(i, p)| {
            if i == last {
                p.to_string()
            } else {
                format!("{p}\"")
            }
        })
        .collect();
    owned.sort();
    format!("{name}{{{}}}", owned.join(","))
}
