//! Failover on the PostgreSQL store (SPEC §12, as far as it is built: one
//! writer, standbys). Two `gimmm serve` nodes share one database: A holds
//! the writer lease, B waits as a standby. A is killed with SIGKILL under
//! load; B takes over within `lease_secs` plus a few seconds, the BAL
//! reconnects to B and every message A accepted ends in exactly one final
//! result; what FCM saw twice is bounded by what A had in flight. Needs the
//! tests' PostgreSQL server (`GIMMM_TEST_POSTGRES_URL`, see
//! `.ci/postgres-setup.sh`; skipped without it unless `CI` is set).
#![allow(clippy::unwrap_used)]

use bal::proto::FromBal;
use emulator::{Emulator, EmulatorConfig, Faults};
use gateway::config::Secret;
use std::time::Duration;
use testkit::{emulator_config, AckPolicy, BalProbe, ChildGateway, ChildOpts};

const WAIT: Duration = Duration::from_secs(60);
const SESSION: &str = "com.example.app";
const TOKEN: &str = "failover-token";
const LEASE_SECS: u64 = 2;
const LINKS: usize = 2;

/// Reads every `*.stderr.log` in `dir`.
fn logs(dir: &std::path::Path) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".stderr.log") {
            all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_writer_and_nothing_is_lost() {
    let Some(url) = store::conformance::postgres_scratch_url().await else {
        return;
    };
    let emu = Emulator::start(EmulatorConfig {
        faults: Faults {
            ack_delay: Duration::from_millis(1),
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let node = |dir: &std::path::Path, id: &str| {
        let mut cfg = emulator_config(&emu, dir, &[(SESSION, TOKEN)]).unwrap();
        cfg.fcm.connections = LINKS;
        cfg.admin.listen = String::new();
        cfg.store.url = Secret::new(url.clone());
        cfg.cluster.node_id = id.into();
        cfg.cluster.lease_secs = LEASE_SECS;
        cfg
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let exe = env!("CARGO_BIN_EXE_gimmm");
    let mut a = ChildGateway::spawn(
        &node(dir_a.path(), "node-a"),
        ChildOpts::new(exe).dir(dir_a.path()),
    )
    .await
    .unwrap();
    // B starts while A writes: it waits as a standby (its ports file comes
    // only once it holds the lease).
    let cfg_b = node(dir_b.path(), "node-b");
    let opts_b = ChildOpts::new(exe).dir(dir_b.path()).rust_log("info");
    let b = tokio::spawn(async move { ChildGateway::spawn(&cfg_b, opts_b).await });
    let standby = tokio::time::timeout(WAIT, async {
        while !logs(dir_b.path()).contains("standby") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(standby.is_ok(), "B never said it waits as a standby");
    assert!(!b.is_finished(), "B started beside a live writer");

    // Load on A; nothing ACKed before the kill, so every result seen so
    // far must come again from B.
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    probe.connect(a.bal_addr()).await.unwrap();
    let total = 3000usize;
    for i in 0..total {
        probe
            .send(FromBal::Downstream {
                group_id: (i % 5 == 0).then(|| format!("g{}", i % 3)),
                fcm_data: serde_json::json!({"to": format!("dev-{}", i % 50), "message_id": format!("f-{i}")}),
            })
            .unwrap();
    }
    probe.wait_accepted(total / 3, WAIT).await.unwrap();
    probe.wait_finals(50, WAIT).await.unwrap();
    let seen = probe.snapshot();
    assert!(
        seen.finals.len() < seen.accepted.len(),
        "the kill must happen mid-flight"
    );
    let seen_before = seen.finals.len() as u64;
    // What FCM had answered before the kill (taken just before it, so up
    // to a window more may follow before A dies).
    let answered_before = emu.stats().delivered;
    let killed_at = tokio::time::Instant::now();
    assert!(!a.kill().await.unwrap().success());
    tokio::time::timeout(WAIT, probe.closed()).await.unwrap();
    let accepted = probe.snapshot().accepted;

    // B takes over once A's lease has run out.
    let b = tokio::time::timeout(WAIT, b)
        .await
        .expect("B never took over");
    let mut b = b.unwrap().unwrap();
    let took = killed_at.elapsed();
    eprintln!(
        "B took over {:.1} s after the SIGKILL (lease {LEASE_SECS} s); {} accepted, {} final results seen before",
        took.as_secs_f64(),
        accepted.len(),
        seen.finals.len()
    );
    assert!(
        took <= Duration::from_secs(LEASE_SECS + 5),
        "failover took {took:?}"
    );
    probe.set_ack(AckPolicy::All);
    probe.connect(b.bal_addr()).await.unwrap();
    probe
        .wait_until("every accepted message's final result, from B", WAIT, |l| {
            accepted.iter().all(|id| l.finals.contains_key(id))
        })
        .await
        .unwrap();
    let seen = probe.snapshot();
    seen.assert_exactly_one_final(&accepted);
    let stats = emu.stats();
    for id in &accepted {
        assert!(stats.msg(id).acked >= 1, "{id} never reached FCM");
    }
    // Resent by B: only what A had in flight, i.e. sent without a stored
    // result: answered by FCM but not yet committed (at most what FCM had
    // answered less the results the BAL had seen), or not yet answered (at
    // most the window of each link).
    let twice: u64 = accepted
        .iter()
        .map(|id| stats.msg(id).acked.saturating_sub(1))
        .sum();
    let in_flight = answered_before.saturating_sub(seen_before) + 2 * (LINKS as u64) * 100;
    eprintln!("FCM saw {twice} message(s) twice; A had at most {in_flight} in flight");
    assert_eq!(twice, stats.duplicates, "the emulator counts them too");
    assert!(
        twice <= in_flight,
        "{twice} duplicates: more than A had in flight ({in_flight})"
    );
    assert_eq!(stats.window_violations, 0);
    assert!(b.term().await.unwrap().success());
    emu.shutdown().await;
}
