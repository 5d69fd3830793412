//! Fairness (SPEC §11): while one session floods gimmm with 20,000
//! messages, another session's single messages are not stuck behind them:
//! their DOWNSTREAM_ACKs come back with a median of at most 50 ms.
//! (Ungrouped messages are served round-robin across sessions, and BAL
//! commands wait behind a short queue only.)
#![allow(clippy::unwrap_used)]

mod common;

use bal::proto::FromBal;
use bal::{BalClient, ToBal};
use common::*;
use emulator::Faults;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout, Instant};

const OTHER: &str = "com.example.other";
const OTHER_TOKEN: &str = "other-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sessions_messages_are_not_stuck_behind_a_flood() {
    let env = start(
        Faults {
            ack_delay: Duration::from_millis(2),
            ..Faults::default()
        },
        |c| c.fcm.connections = 2,
    )
    .await;
    let addr = env.gw().bal_addr;
    let (mut rd, mut wr) = env.bal().await.into_split();
    let n = 20_000usize;
    let finals = Arc::new(AtomicUsize::new(0));
    let (seq_tx, mut seq_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let writer = tokio::spawn(async move {
        for i in 0..n {
            wr.send(&FromBal::Downstream {
                group_id: None,
                fcm_data: msg("dev-f", &format!("f-{i}")),
            })
            .await
            .unwrap();
        }
        wr.flush().await.unwrap();
        while let Some(s) = seq_rx.recv().await {
            wr.send(&FromBal::Ack { sequence_id: s }).await.unwrap();
            if seq_rx.is_empty() {
                wr.flush().await.unwrap();
            }
        }
    });
    let done = finals.clone();
    let reader = tokio::spawn(async move {
        while done.load(Ordering::Relaxed) < n {
            let m = timeout(Duration::from_secs(120), rd.recv())
                .await
                .unwrap()
                .unwrap();
            if let Some(s) = m.sequence_id() {
                seq_tx.send(s).unwrap();
            }
            if m.is_final() {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut other = BalClient::connect_logon(addr, OTHER, OTHER_TOKEN)
        .await
        .unwrap();
    // Wait until the flood is in full swing.
    let start = Instant::now();
    while finals.load(Ordering::Relaxed) < 1_000 {
        assert!(start.elapsed() < WAIT, "the flood does not flow");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies = Vec::new();
    for i in 0..25 {
        if finals.load(Ordering::Relaxed) >= n - 1_000 {
            break; // measured during the flood only
        }
        let t = Instant::now();
        other
            .downstream(None, msg("dev-o", &format!("o-{i}")))
            .await
            .unwrap();
        let m = recv_until(&mut other, |m| m.is_final()).await;
        assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
        latencies.push(t.elapsed());
    }
    let flooded = finals.load(Ordering::Relaxed);
    assert!(
        latencies.len() >= 10,
        "only {} samples before the flood ended",
        latencies.len()
    );
    assert!(flooded < n, "the flood was over before the last sample");
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "{} single messages during a flood of {n}: median {median:?}, max {:?}",
        latencies.len(),
        latencies.last().unwrap()
    );
    assert!(
        median <= Duration::from_millis(50),
        "median {median:?} ({latencies:?})"
    );
    timeout(Duration::from_secs(120), reader)
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    env.stop().await;
}
