//! Deploys without duplicates (SPEC §11): `gimmm serve` as a child process
//! gets SIGTERM under load while CCS answers slowly. It takes nothing new
//! (SHUTTING_DOWN), sends nothing new to FCM, waits for the answers to
//! what is in flight, hands their results to the BAL, and exits 0; after
//! the restart the rest is sent. FCM (the emulator) sees no message twice,
//! and every accepted message has exactly one final result. A second signal
//! cuts the wait short and still loses nothing.
#![allow(clippy::unwrap_used)]

use bal::proto::{BalError, FromBal};
use emulator::{Emulator, EmulatorConfig, Faults};
use std::time::Duration;
use testkit::{emulator_config, AckPolicy, BalProbe, ChildGateway, ChildOpts};

const WAIT: Duration = Duration::from_secs(60);
const SESSION: &str = "com.example.app";
const TOKEN: &str = "drain-token";

async fn slow_emulator(ack_delay: Duration) -> Emulator {
    Emulator::start(EmulatorConfig {
        faults: Faults {
            ack_delay,
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

fn downstream(i: usize) -> FromBal {
    FromBal::Downstream {
        group_id: i.is_multiple_of(50).then(|| format!("g{}", i % 3)),
        fcm_data: serde_json::json!({"to": format!("dev-{}", i % 40), "message_id": format!("d-{i}")}),
    }
}

/// Waits until the child's log says `needle` (an event, polled with a
/// deadline: the log is a file).
async fn wait_log(gw: &ChildGateway, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gw.stderr().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            gw.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_sends_fcm_nothing_twice() {
    let emu = slow_emulator(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = emulator_config(&emu, dir.path(), &[(SESSION, TOKEN)]).unwrap();
    cfg.fcm.connections = 2;
    cfg.fcm.shutdown_grace_secs = 20;
    cfg.admin.listen = String::new();
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm"))
        .dir(dir.path())
        .rust_log("info");
    let mut gw = ChildGateway::spawn(&cfg, opts).await.unwrap();
    let mut follow = gw.follow();
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::All);
    probe.connect(gw.bal_addr()).await.unwrap();

    let total = 2_000usize;
    for i in 0..total {
        probe.send(downstream(i)).unwrap();
    }
    // Results are flowing; a window of 2 x 100 is in flight at CCS.
    probe.wait_finals(300, WAIT).await.unwrap();
    assert!(emu.stats().downstream_received >= 300);
    gw.signal_term().await.unwrap();
    wait_log(&gw, "shutting down").await;
    // New work is refused while draining (the BAL's reader still works).
    probe.send(downstream(total)).unwrap();
    let status = tokio::time::timeout(WAIT, gw.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "drained and exited 0: {status}\n{}",
        gw.log_tail(20)
    );
    // The gateway closed the BAL connection after its last lines: once the
    // probe sees the close it has read them all.
    tokio::time::timeout(WAIT, probe.closed()).await.unwrap();
    let at_exit = probe.snapshot();
    assert!(
        at_exit
            .errors
            .iter()
            .any(|(e, d)| *e == BalError::ShuttingDown && d.contains(&format!("d-{total}"))),
        "SHUTTING_DOWN for the message sent while draining: {:?}",
        at_exit.errors
    );
    // Everything FCM had when the signal came was answered and reached the
    // BAL before the exit: nothing is in flight any more.
    let stats = emu.stats();
    for (id, m) in &stats.messages {
        if m.received > 0 && !at_exit.has_final(id) {
            panic!("{id} reached FCM but its result did not reach the BAL before the exit");
        }
    }
    assert!(
        at_exit.finals.len() < at_exit.accepted.len(),
        "the signal came mid-flight ({} finals of {} accepted)",
        at_exit.finals.len(),
        at_exit.accepted.len()
    );

    gw.restart().await.unwrap();
    probe.follow(&mut follow, WAIT).await.unwrap();
    let accepted = probe.snapshot().accepted;
    probe.wait_finals_for(&accepted, WAIT).await.unwrap();
    let ledger = probe.snapshot();
    ledger.assert_exactly_one_final(&accepted);
    ledger.assert_each_delivered_once();
    let stats = emu.stats();
    assert_eq!(stats.duplicates, 0, "FCM saw a message twice");
    for id in &accepted {
        assert_eq!(stats.msg(id).received, 1, "{id} sent to FCM more than once");
    }
    assert!(!accepted.contains(&format!("d-{total}")));
    gw.term().await.unwrap();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_loses_nothing() {
    // CCS answers after 8 s: a drain would wait that long.
    let emu = slow_emulator(Duration::from_secs(8)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = emulator_config(&emu, dir.path(), &[(SESSION, TOKEN)]).unwrap();
    cfg.fcm.shutdown_grace_secs = 60;
    cfg.admin.listen = String::new();
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm"))
        .dir(dir.path())
        .rust_log("info");
    let mut gw = ChildGateway::spawn(&cfg, opts).await.unwrap();
    let mut follow = gw.follow();
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::All);
    probe.connect(gw.bal_addr()).await.unwrap();
    for i in 0..20 {
        probe.send(downstream(i)).unwrap();
    }
    probe.wait_accepted(20, WAIT).await.unwrap();
    emu.wait_until(WAIT, |s| s.downstream_received >= 20)
        .await
        .unwrap();
    gw.signal_term().await.unwrap();
    wait_log(&gw, "shutting down").await;
    let t = tokio::time::Instant::now();
    gw.signal_term().await.unwrap();
    let status = tokio::time::timeout(WAIT, gw.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "the second signal did not cut the 8 s wait short: {:?}",
        t.elapsed()
    );
    assert!(gw.stderr().contains("second signal"));
    assert_eq!(probe.snapshot().finals.len(), 0, "nothing was answered yet");

    // Nothing accepted is lost: after the restart (CCS now quick) every
    // message ends in exactly one final result.
    emu.set_faults(Faults::default());
    gw.restart().await.unwrap();
    probe.follow(&mut follow, WAIT).await.unwrap();
    let accepted = probe.snapshot().accepted;
    assert_eq!(accepted.len(), 20);
    probe.wait_finals_for(&accepted, WAIT).await.unwrap();
    probe.snapshot().assert_exactly_one_final(&accepted);
    gw.term().await.unwrap();
    emu.shutdown().await;
}

/// The same drain on the FCM HTTP v1 link: slow answers, SIGTERM under
/// load, restart; the v1 emulator received no message twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_http_v1_sends_fcm_nothing_twice() {
    use emulator::v1::{V1Config, V1Emulator, V1Faults};
    let dir = tempfile::tempdir().unwrap();
    let emu = V1Emulator::start(V1Config {
        faults: V1Faults {
            latency: Duration::from_millis(200),
            ..V1Faults::default()
        },
        ..V1Config::default()
    })
    .await
    .unwrap();
    let mut cfg = testkit::v1_emulator_config(&emu, dir.path(), &[(SESSION, TOKEN)]).unwrap();
    // The default retry pacing, as in production.
    cfg.retry = gateway::config::Config::default().retry;
    cfg.fcm.connections = 2;
    cfg.fcm.shutdown_grace_secs = 20;
    cfg.admin.listen = String::new();
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm"))
        .dir(dir.path())
        .rust_log("info");
    let mut gw = ChildGateway::spawn(&cfg, opts).await.unwrap();
    let mut follow = gw.follow();
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::All);
    probe.connect(gw.bal_addr()).await.unwrap();
    let to = |i: usize| format!("dev-{}", i % 40);
    let total = 1_500usize;
    for i in 0..total {
        let id = format!("v-{i}");
        probe
            .send(FromBal::Downstream {
                group_id: None,
                fcm_data: serde_json::json!({"to": to(i), "message_id": id, "data": {"id": id}}),
            })
            .unwrap();
    }
    probe.wait_finals(200, WAIT).await.unwrap();
    gw.signal_term().await.unwrap();
    wait_log(&gw, "shutting down").await;
    let status = tokio::time::timeout(WAIT, gw.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}\n{}", gw.log_tail(20));
    tokio::time::timeout(WAIT, probe.closed()).await.unwrap();
    let at_exit = probe.snapshot();
    assert!(at_exit.finals.len() < at_exit.accepted.len(), "mid-flight");

    gw.restart().await.unwrap();
    probe.follow(&mut follow, WAIT).await.unwrap();
    let accepted = probe.snapshot().accepted;
    probe.wait_finals_for(&accepted, WAIT).await.unwrap();
    let ledger = probe.snapshot();
    ledger.assert_exactly_one_final(&accepted);
    let stats = emu.stats();
    for id in &accepted {
        let i: usize = id.strip_prefix("v-").unwrap().parse().unwrap();
        let key =
            emulator::v1::message_key(&serde_json::json!({"token": to(i), "data": {"id": id}}))
                .unwrap();
        assert_eq!(
            stats.msg(&key).received,
            1,
            "{id} reached FCM {} times",
            stats.msg(&key).received
        );
    }
    gw.term().await.unwrap();
}
