//! Throughput smoke test of the FCM HTTP v1 emulator. The small default runs
//! with the other tests; the big one is `#[ignore]`d:
//! `cargo test --release -p emulator --test v1_load -- --ignored --nocapture`
//! (`EMU_V1_REQUESTS`, `EMU_V1_CONNS`, `EMU_V1_STREAMS` override the size).
#![allow(clippy::unwrap_used)]

mod v1_common;

use tokio::time::Instant;

use bytes::Bytes;
use emulator::v1::{V1Config, V1Emulator};
use http_body_util::{BodyExt, Full};
use v1_common::*;

/// `conns` HTTP/2 connections, `streams` requests in flight on each, until
/// `total` sends are answered. Returns (answered 200, elapsed seconds).
async fn drive(emu: &V1Emulator, total: usize, conns: usize, streams: usize) -> (usize, f64) {
    let token = access_token(emu).await;
    let auth = format!("Bearer {token}");
    let uri = format!("https://localhost{}", send_path(emu));
    let mut clients = Vec::new();
    for _ in 0..conns {
        let mut c = h2(emu).await;
        // One round trip first, so the client knows the server's SETTINGS.
        let r = c
            .post(
                &send_path(emu),
                &[("authorization", &auth), JSON_CT],
                serde_json::to_vec(&msg_to(TOKEN, "warm-up")).unwrap(),
            )
            .await;
        assert_eq!(r.status, 200);
        clients.push(c);
    }
    emu.reset_stats();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (ci, c) in clients.iter().enumerate() {
        for _ in 0..streams {
            let mut send = c.send.clone();
            let (auth, uri, next) = (auth.clone(), uri.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut ok = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return ok;
                    }
                    let body = format!(
                        r#"{{"message":{{"token":"device-{ci}-{}","data":{{"n":"{i}"}},"android":{{"priority":"HIGH","ttl":"60s"}}}}}}"#,
                        i % 1000
                    );
                    let req = hyper::Request::post(&uri)
                        .header("authorization", &auth)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    let r = send.send_request(req).await.unwrap();
                    let status = r.status();
                    let _ = r.into_body().collect().await.unwrap();
                    if status == 200 {
                        ok += 1;
                    }
                }
            }));
        }
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    (ok, start.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_load_is_all_answered() {
    let emu = start_with(V1Config::default()).await;
    let (ok, _) = drive(&emu, 2000, 2, 50).await;
    assert_eq!(ok, 2000);
    let st = emu.stats();
    assert_eq!(st.requests, 2000);
    assert_eq!(st.status(200), 2000);
    assert_eq!(st.delivered, 2000);
    assert_eq!(st.duplicates, 0);
    assert_eq!(st.messages.len(), 2000);
    assert!(st.max_streams_high_water() <= 100);
    assert_eq!(st.over_limit, 0);
    emu.shutdown().await;
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
async fn throughput() {
    let total = env("EMU_V1_REQUESTS", 200_000);
    let conns = env("EMU_V1_CONNS", 4);
    let streams = env("EMU_V1_STREAMS", 100);
    for track in [true, false] {
        let emu = start_with(V1Config {
            track_messages: track,
            ..V1Config::default()
        })
        .await;
        let (ok, secs) = drive(&emu, total, conns, streams).await;
        assert_eq!(ok, total);
        println!(
            "v1 emulator: {total} sends over {conns} h2 connections x {streams} streams in {secs:.2} s = {:.0} req/s (track_messages={track}, client in the same process)",
            total as f64 / secs
        );
        emu.shutdown().await;
    }
}
