//! The probe and its ledger against a real gateway (in this process) and
//! the emulator: results left unACKed come back after a reconnect with the
//! same sequence ids and count once; after a restart on new ports the probe
//! reconnects and every accepted message has exactly one final result.
#![allow(clippy::unwrap_used)]

use bal::ToBal;
use emulator::{Emulator, EmulatorConfig};
use std::time::Duration;
use testkit::{emulator_config, in_process, AckPolicy, BalProbe, Final};

const WAIT: Duration = Duration::from_secs(20);
const SESSION: &str = "com.example.app";
const TOKEN: &str = "probe-token";

fn msg(id: &str) -> serde_json::Value {
    serde_json::json!({"to": "dev-1", "message_id": id, "data": {"k": "v"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_results_come_back_once_and_restarts_are_followed() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = emulator_config(&emu, dir.path(), &[(SESSION, TOKEN)]).unwrap();
    cfg.admin.listen = String::new();
    let gw = in_process(&cfg, &emu).await.unwrap();

    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    probe.connect(gw.bal_addr).await.unwrap();
    let m = probe.send_and_answer(None, msg("p-0"), WAIT).await.unwrap();
    assert!(
        matches!(&m, ToBal::DownstreamAccepted { message_id, duplicate: false, .. } if message_id == "p-0"),
        "{m:?}"
    );
    for i in 1..20 {
        probe.downstream(None, msg(&format!("p-{i}"))).unwrap();
    }
    probe.wait_finals(20, WAIT).await.unwrap();
    let first = probe.snapshot();
    assert_eq!(first.accepted.len(), 20);
    assert_eq!(first.redeliveries(), 0);

    // Nothing was ACKed: a new connection gets the same results again.
    probe.set_ack(AckPolicy::All);
    probe.connect(gw.bal_addr).await.unwrap();
    probe
        .wait_until("20 redeliveries", WAIT, |l| l.redeliveries() >= 20)
        .await
        .unwrap();
    let l = probe.snapshot();
    l.assert_exactly_one_final(&first.accepted);
    l.assert_each_delivered_once();
    assert_eq!(l.final_of("p-3"), Some(&Final::Ack));
    // A resend of an accepted message id is answered duplicate, no new result.
    let m = probe.send_and_answer(None, msg("p-1"), WAIT).await.unwrap();
    assert!(
        matches!(
            m,
            ToBal::DownstreamAccepted {
                duplicate: true,
                ..
            }
        ),
        "{m:?}"
    );
    probe.ping().unwrap();
    assert_eq!(probe.next_reply(WAIT).await.unwrap(), ToBal::Pong);

    // The gateway restarts on a new port; the probe follows it.
    let old = gw.bal_addr;
    gw.stop().await;
    probe.closed().await;
    assert!(!probe.is_connected());
    assert!(probe.downstream(None, msg("lost")).is_err());
    let gw = in_process(&cfg, &emu).await.unwrap();
    assert_ne!(gw.bal_addr, old);
    probe.connect(gw.bal_addr).await.unwrap();
    let m = probe
        .send_and_answer(None, msg("p-after"), WAIT)
        .await
        .unwrap();
    assert!(matches!(m, ToBal::DownstreamAccepted { .. }), "{m:?}");
    let ids: Vec<String> = vec!["p-after".into()];
    probe.wait_finals_for(&ids, WAIT).await.unwrap();
    let l = probe.snapshot();
    l.assert_exactly_one_final(&l.accepted);
    assert_eq!(probe.connects(), 3);
    assert_eq!(l.duplicate_accepts, 1);
    assert!(
        l.errors.is_empty() && l.bad_lines.is_empty(),
        "{}",
        l.summary()
    );

    // A wait that cannot succeed times out and says what it waited for.
    let e = probe
        .wait_finals(1000, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("1000 final results"), "{e}");
    gw.stop().await;
    emu.shutdown().await;
}
