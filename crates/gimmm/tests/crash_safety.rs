//! Crash safety (issue 3, item 12): `gimmm serve` as a child process is
//! killed with SIGKILL mid-flight and restarted on the same store (SQLite;
//! PostgreSQL per SPEC §12 when the tests' server is there, see
//! `.ci/postgres-setup.sh`).
//! Every message that got DOWNSTREAM_ACCEPTED must end in exactly one final
//! result at the BAL (redeliveries carry the same sequence id) and must have
//! reached the emulator; every upstream message must reach the BAL once.
#![allow(clippy::unwrap_used)]

use bal::proto::FromBal;
use emulator::{Emulator, EmulatorConfig, Faults};
use std::time::Duration;
use testkit::{emulator_config, AckPolicy, BalProbe, ChildGateway, ChildOpts};

const WAIT: Duration = Duration::from_secs(60);
const SESSION: &str = "com.example.app";
const TOKEN: &str = "crash-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing() {
    sigkill_mid_flight(None).await;
}

/// The same on the PostgreSQL store (SPEC §12): the server keeps what was
/// committed when gimmm died, and the restarted gimmm takes the writer
/// lock the dead one held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing_on_postgres() {
    let Some(url) = store::conformance::postgres_scratch_url().await else {
        return;
    };
    sigkill_mid_flight(Some(url)).await;
}

async fn sigkill_mid_flight(store_url: Option<String>) {
    let emu = Emulator::start(EmulatorConfig {
        faults: Faults {
            ack_delay: Duration::from_millis(1),
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = emulator_config(&emu, dir.path(), &[(SESSION, TOKEN)]).unwrap();
    cfg.fcm.connections = 2;
    cfg.admin.listen = String::new();
    if let Some(url) = store_url {
        cfg.store.url = gateway::config::Secret::new(url);
        // The restart takes its own writer lease back at once.
        cfg.cluster.node_id = "crash-node".into();
    }
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm")).dir(dir.path());
    let mut gw = ChildGateway::spawn(&cfg, opts).await.unwrap();

    // Nothing is ACKed before the kill: every result seen so far must be
    // redelivered, with the same sequence id, after the restart.
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    probe.connect(gw.bal_addr()).await.unwrap();
    let total = 3000usize;
    let mut upstream_ids = Vec::new();
    let mut data = serde_json::Map::new();
    data.insert("k".into(), "v".into());

    // Send everything without waiting; the probe reads concurrently.
    for i in 0..total {
        let m = FromBal::Downstream {
            group_id: (i % 5 == 0).then(|| format!("g{}", i % 3)),
            fcm_data: serde_json::json!({"to": format!("dev-{}", i % 50), "message_id": format!("c-{i}")}),
        };
        probe.send(m).unwrap();
    }
    // Kill when a good part is accepted and results are flowing (unACKed
    // results must come back after the restart); an upstream message every
    // 200 accepted.
    for k in (200..=total / 3).step_by(200) {
        probe.wait_accepted(k, WAIT).await.unwrap();
        upstream_ids.push(emu.send_upstream("device-up", SESSION, data.clone()));
    }
    probe.wait_finals(50, WAIT).await.unwrap();
    let seen = probe.snapshot();
    assert!(
        seen.finals.len() < seen.accepted.len(),
        "the kill must happen mid-flight"
    );
    eprintln!(
        "killing gimmm with {} accepted, {} final results seen",
        seen.accepted.len(),
        seen.finals.len()
    );
    let status = gw.kill().await.unwrap();
    assert!(!status.success(), "killed with SIGKILL");
    tokio::time::timeout(WAIT, probe.closed()).await.unwrap();
    for _ in 0..5 {
        upstream_ids.push(emu.send_upstream("device-up", SESSION, data.clone()));
    }

    // Restart on the same store; a new BAL connection ACKs everything.
    let accepted = probe.snapshot().accepted;
    gw.restart().await.unwrap();
    probe.set_ack(AckPolicy::All);
    probe.connect(gw.bal_addr()).await.unwrap();
    let done = probe
        .wait_until("every final result and upstream message", WAIT, |l| {
            accepted.iter().all(|id| l.finals.contains_key(id))
                && upstream_ids.iter().all(|id| l.upstream.contains_key(id))
        })
        .await;
    let seen = probe.snapshot();
    if let Err(e) = done {
        let missing: Vec<_> = accepted
            .iter()
            .filter(|id| !seen.finals.contains_key(*id))
            .take(10)
            .collect();
        let missing_up: Vec<_> = upstream_ids
            .iter()
            .filter(|id| !seen.upstream.contains_key(*id))
            .collect();
        panic!("{e}; missing finals {missing:?} upstream {missing_up:?}");
    }
    // Exactly one final result per message (a redelivery has the same
    // sequence id), each upstream message as one sequenced message.
    seen.assert_exactly_one_final(&accepted);
    seen.assert_each_delivered_once();
    let stats = emu.stats();
    for id in &accepted {
        assert!(
            stats.msg(id).acked >= 1,
            "accepted message {id} never reached the emulator"
        );
    }
    assert_eq!(stats.window_violations, 0);

    // Clean shutdown: SIGTERM -> exit 0.
    let status = gw.term().await.unwrap();
    assert!(
        status.success(),
        "SIGTERM must end in exit 0, got {status:?}"
    );
    emu.shutdown().await;
}

/// The same on the FCM HTTP v1 link (SPEC §3 holds whatever the link):
/// SIGKILL mid-flight, restart on the same store, every accepted message
/// ends in exactly one final result and reached the HTTP v1 emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing_on_http_v1() {
    use emulator::v1::{V1Config, V1Emulator, V1Faults};
    let dir = tempfile::tempdir().unwrap();
    let emu = V1Emulator::start(V1Config {
        faults: V1Faults {
            latency: Duration::from_millis(1),
            ..V1Faults::default()
        },
        ..V1Config::default()
    })
    .await
    .unwrap();
    let mut cfg = testkit::v1_emulator_config(&emu, dir.path(), &[(SESSION, TOKEN)]).unwrap();
    cfg.fcm.connections = 2;
    cfg.admin.listen = String::new();
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm")).dir(dir.path());
    let mut gw = ChildGateway::spawn(&cfg, opts).await.unwrap();

    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    probe.connect(gw.bal_addr()).await.unwrap();
    let total = 3000usize;
    let to = |i: usize| format!("dev-{}", i % 50);
    for i in 0..total {
        let id = format!("v-{i}");
        let m = FromBal::Downstream {
            group_id: (i % 5 == 0).then(|| format!("g{}", i % 3)),
            fcm_data: serde_json::json!({"to": to(i), "message_id": id, "data": {"id": id}}),
        };
        probe.send(m).unwrap();
    }
    probe.wait_accepted(total / 3, WAIT).await.unwrap();
    probe.wait_finals(50, WAIT).await.unwrap();
    let seen = probe.snapshot();
    assert!(
        seen.finals.len() < seen.accepted.len(),
        "the kill must happen mid-flight"
    );
    eprintln!(
        "killing gimmm with {} accepted, {} final results seen",
        seen.accepted.len(),
        seen.finals.len()
    );
    let status = gw.kill().await.unwrap();
    assert!(!status.success(), "killed with SIGKILL");
    tokio::time::timeout(WAIT, probe.closed()).await.unwrap();

    let accepted = probe.snapshot().accepted;
    gw.restart().await.unwrap();
    probe.set_ack(AckPolicy::All);
    probe.connect(gw.bal_addr()).await.unwrap();
    probe
        .wait_until("every final result", WAIT, |l| {
            accepted.iter().all(|id| l.finals.contains_key(id))
        })
        .await
        .unwrap();
    let seen = probe.snapshot();
    seen.assert_exactly_one_final(&accepted);
    seen.assert_each_delivered_once();
    let stats = emu.stats();
    for id in &accepted {
        let i: usize = id.strip_prefix("v-").unwrap().parse().unwrap();
        let key =
            emulator::v1::message_key(&serde_json::json!({"token": to(i), "data": {"id": id}}))
                .unwrap();
        assert!(
            stats.msg(&key).delivered >= 1,
            "accepted message {id} never reached the emulator"
        );
    }
    assert_eq!(stats.over_limit, 0);
    let status = gw.term().await.unwrap();
    assert!(
        status.success(),
        "SIGTERM must end in exit 0, got {status:?}"
    );
    emu.shutdown().await;
}
