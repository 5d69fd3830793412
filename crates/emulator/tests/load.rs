//! Throughput smoke test. The small default runs with the other tests; the
//! big one is `#[ignore]`d:
//! `cargo test --release -p emulator --test load -- --ignored --nocapture`
//! (`EMU_LOAD_MESSAGES`, `EMU_LOAD_LINKS` override the size).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;
use tokio::time::Instant;

use common::{connect, Client};
use emulator::Emulator;
use xmpp::Event;

/// Keep 100 messages in flight on one link until `total` are acked.
async fn drive(mut c: Client, link: usize, total: usize) -> usize {
    let mut sent = 0;
    let mut acked = 0;
    let mut buf = Vec::with_capacity(64 * 1024);
    while acked < total {
        let room = 100 - (sent - acked);
        let n = room.min(total - sent);
        if n > 0 {
            buf.clear();
            for i in sent..sent + n {
                let json = format!(
                    r#"{{"to":"device-token-{link}","message_id":"l{link}-{i}","data":{{"k":"v"}}}}"#
                );
                xmpp::writer::append_gcm_message(&mut buf, None, &json);
            }
            c.xs.send(&buf).await.unwrap();
            sent += n;
        }
        match tokio::time::timeout(Duration::from_secs(30), c.xs.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Message(m) => {
                let json = m.gcm.unwrap();
                assert!(json.contains("\"ack\""), "{json}");
                acked += 1;
            }
            Event::Keepalive => {}
            other => panic!("{other:?}"),
        }
    }
    acked
}

async fn run(total: usize, links: usize) -> f64 {
    let emu = Emulator::start(Default::default()).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..links {
        clients.push(connect(&emu).await);
    }
    let per = total / links;
    let t0 = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(drive(c, i, per)))
        .collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let s = emu
        .wait_until_summary(Duration::from_secs(30), |s| {
            s.acks_sent == (per * links) as u64
        })
        .await
        .unwrap();
    assert_eq!(acked, per * links);
    assert_eq!(s.window_violations, 0);
    assert_eq!(s.duplicates, 0);
    acked as f64 / secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_load_no_loss() {
    let rate = run(4000, 2).await;
    assert!(rate > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test; run with --release --ignored"]
async fn throughput() {
    let total = std::env::var("EMU_LOAD_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let links = std::env::var("EMU_LOAD_LINKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let rate = run(total, links).await;
    println!("emulator throughput: {rate:.0} msg/s ({total} messages, {links} links)");
}
