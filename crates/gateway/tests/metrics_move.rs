//! The operators' metrics of SPEC §11 move when what they count happens:
//! the accepted → final latency histogram, sequenced lines written to and
//! ACKed by BALs, upstream resent by FCM, store commit errors, and the
//! downstream queue depth per session. The engine runs for real on the
//! in-memory store with a scripted link; the test sits between the store
//! and the engine to make one commit fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bal::proto::ToBal;
use gateway::config::RetryConfig;
use gateway::engine::{Cmd, Engine, EngineConfig, Incoming, Snapshot};
use gateway::link::scripted::ScriptedFactory;
use gateway::link::{LinkCmd, LinkEvent, Outcome, SendResult, UpstreamToken};
use gateway::session::out::{out_channel, Out, OutRx};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const S: &str = "app";
const WAIT: Duration = Duration::from_secs(20);

fn scrape() -> HashMap<String, f64> {
    let text = gateway::metrics::prometheus().unwrap().render();
    let mut m = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').unwrap();
        m.insert(name.to_string(), value.parse().unwrap_or(0.0));
    }
    m
}

fn value(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

async fn line(out: &mut OutRx) -> ToBal {
    let o = timeout(WAIT, out.recv()).await.unwrap().unwrap();
    match o {
        Out::Line(l) => serde_json::from_str(&l).unwrap(),
        Out::Owned(l) => serde_json::from_str(&l).unwrap(),
        Out::Close => panic!("closed"),
    }
}

fn downstream(mid: &str) -> Cmd {
    Cmd::Downstream(Box::new(Incoming {
        session: Arc::from(S),
        conn: 1,
        group_id: None,
        message_id: mid.into(),
        body: format!(r#"{{"to":"tok","message_id":"{mid}"}}"#),
        ttl_ms: 600_000,
        receipt: false,
        target: "tok".into(),
        rejected: None,
    }))
}

async fn snapshot(ctl: &mpsc::Sender<Cmd>) -> Snapshot {
    let (tx, rx) = oneshot::channel();
    ctl.send(Cmd::Snapshot(tx)).await.unwrap();
    rx.await.unwrap()
}

// Paused time: the 30 ms between acceptance and the ack are exact.
#[tokio::test(start_paused = true)]
async fn the_operators_metrics_move() {
    let _ = gateway::metrics::prometheus();
    let before = scrape();
    let data = store::memory::MemData::new();
    let (store_tx, mut store_rx) = mpsc::unbounded_channel();
    let (mem, recovery) = store::memory::MemStore::open(&data, store_tx).unwrap();
    // Between the store and the engine: can make the next commit fail.
    let (commit_tx, commit_rx) = mpsc::unbounded_channel();
    let fail_next = Arc::new(AtomicBool::new(false));
    let fail = fail_next.clone();
    tokio::spawn(async move {
        while let Some(mut c) = store_rx.recv().await {
            if fail.swap(false, Ordering::SeqCst) {
                c.error = Some("disk full (simulated)".into());
            }
            if commit_tx.send(c).is_err() {
                break;
            }
        }
    });
    let (factory, mut links) = ScriptedFactory::new();
    let shutdown = CancellationToken::new();
    let engine = Engine::new(
        EngineConfig {
            sessions: vec![S.into()],
            connections: 1,
            max_unacked: 100,
            retry: RetryConfig::default(),
            mem_messages: 1_000,
            mem_outbox: 1_000,
            receipt_warning: None,
            shutdown_grace: Duration::from_secs(5),
            abort: CancellationToken::new(),
        },
        Arc::new(mem),
        &recovery,
        Arc::new(factory),
        shutdown.clone(),
    );
    let (cmds, cmd_rx) = mpsc::channel(64);
    let (ctl, ctl_rx) = mpsc::channel(8);
    let task = tokio::spawn(engine.run(cmd_rx, ctl_rx, commit_rx));
    let (out_tx, mut out) = out_channel();
    cmds.send(Cmd::Attach {
        session: Arc::from(S),
        conn: 1,
        out: out_tx,
    })
    .await
    .unwrap();
    assert!(matches!(line(&mut out).await, ToBal::LogonResponse { .. }));
    let mut link = timeout(WAIT, links.recv()).await.unwrap().unwrap();

    // Queued, not sent (no link ready yet): the per-session depth shows it.
    cmds.send(downstream("m1")).await.unwrap();
    assert!(matches!(
        line(&mut out).await,
        ToBal::DownstreamAccepted { .. }
    ));
    let snap = snapshot(&ctl).await;
    let app = snap.sessions.iter().find(|s| s.session_id == S).unwrap();
    assert_eq!(app.downstream_in_memory, 1);

    // Sent, acked: a final result after some time, written to the BAL,
    // ACKed by it.
    link.ready(10);
    let id = loop {
        match timeout(WAIT, link.cmds.recv()).await.unwrap().unwrap() {
            LinkCmd::Send(v) => break v[0].id,
            _ => continue,
        }
    };
    tokio::time::sleep(Duration::from_millis(30)).await; // FCM takes 30 ms
    link.event(LinkEvent::Outcome {
        link: link.id,
        outcome: Outcome {
            id,
            result: SendResult::Delivered {
                raw: r#"{"message_type":"ack","message_id":"m1"}"#.into(),
            },
        },
    });
    let ack = line(&mut out).await;
    let seq = ack.sequence_id().unwrap();
    cmds.send(Cmd::Ack {
        session: Arc::from(S),
        conn: 1,
        seq,
    })
    .await
    .unwrap();

    // FCM sends the same upstream message twice.
    let raw = r#"{"from":"dev","category":"app","message_id":"u1","data":{"k":"v"}}"#;
    for _ in 0..2 {
        link.event(LinkEvent::Upstream {
            link: link.id,
            token: UpstreamToken {
                from: "dev".into(),
                message_id: "u1".into(),
            },
            upstream: serde_json::from_str(raw).unwrap(),
            raw: raw.into(),
        });
    }
    assert!(matches!(line(&mut out).await, ToBal::Upstream { .. }));

    // A commit that fails at first: the new message is refused.
    fail_next.store(true, Ordering::SeqCst);
    cmds.send(downstream("m2")).await.unwrap();
    let l = line(&mut out).await;
    assert!(
        matches!(&l, ToBal::Error { .. } | ToBal::DownstreamAccepted { .. }),
        "{l:?}"
    );

    let after = scrape();
    let moved = |name: &str| value(&after, name) - value(&before, name);
    assert!(
        moved("gimmm_downstream_final_seconds_count") >= 1.0,
        "accepted -> final latency"
    );
    assert!(
        value(&after, "gimmm_downstream_final_seconds_sum") >= 0.03,
        "the latency was at least 30 ms: {}",
        value(&after, "gimmm_downstream_final_seconds_sum")
    );
    assert!(
        moved("gimmm_bal_sequenced_sent_total") >= 2.0,
        "ACK + UPSTREAM written"
    );
    assert!(moved("gimmm_bal_sequenced_acked_total") >= 1.0);
    assert!(moved("gimmm_upstream_resent_total") >= 1.0);
    assert!(moved("gimmm_store_commit_errors_total") >= 1.0);
    shutdown.cancel();
    timeout(WAIT, task).await.unwrap().unwrap();
}
