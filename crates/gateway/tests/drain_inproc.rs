//! Shutdown drain in process (SPEC §11): the result of what is in flight
//! reaches a logged-on BAL before its connection closes.
#![allow(clippy::unwrap_used)]

mod common;

use bal::ToBal;
use common::*;
use emulator::Faults;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_of_what_is_in_flight_reaches_the_bal_before_the_close() {
    let mut env = start(
        Faults {
            ack_delay: Duration::from_millis(1500),
            ..Faults::default()
        },
        |_| {},
    )
    .await;
    let mut c = env.bal().await;
    c.downstream(None, msg("device-token-1", "in-flight"))
        .await
        .unwrap();
    assert!(matches!(
        recv(&mut c).await,
        ToBal::DownstreamAccepted { .. }
    ));
    env.wait_emu("the message at CCS", |s| s.downstream_received >= 1)
        .await;
    let gw = env.gw.take().unwrap();
    gw.shutdown();
    let stopping = tokio::spawn(gw.wait());
    // Sent while draining: refused.
    c.downstream(None, msg("device-token-1", "late"))
        .await
        .unwrap();
    let mut got = Vec::new();
    // Until gimmm closes the connection.
    while let Ok(m) = tokio::time::timeout(WAIT, c.recv()).await.unwrap() {
        got.push(m);
    }
    stopping.await.unwrap();
    assert!(
        got.iter().any(
            |m| matches!(m, ToBal::Error { error, .. } if *error == bal::BalError::ShuttingDown)
        ),
        "{got:?}"
    );
    assert!(
        got.iter().any(
            |m| matches!(m, ToBal::DownstreamAck { message_id, .. } if message_id == "in-flight")
        ),
        "{got:?}"
    );
    assert_eq!(env.emu.stats().msg("in-flight").received, 1);
    env.stop().await;
}

/// The same through a TCP relay while the BAL keeps pinging (as the Python
/// example does): the result still arrives before the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_relay_while_pinging() {
    let mut env = start(
        Faults {
            ack_delay: Duration::from_millis(1500),
            ..Faults::default()
        },
        |_| {},
    )
    .await;
    let relay = testkit::Relay::start().await.unwrap();
    relay.set_target(Some(env.gw().bal_addr));
    let mut c = bal::BalClient::connect_logon(relay.addr(), SESSION, TOKEN)
        .await
        .unwrap();
    c.downstream(None, msg("device-token-1", "in-flight"))
        .await
        .unwrap();
    assert!(matches!(
        recv(&mut c).await,
        ToBal::DownstreamAccepted { .. }
    ));
    env.wait_emu("the message at CCS", |s| s.downstream_received >= 1)
        .await;
    relay.set_target(None);
    let gw = env.gw.take().unwrap();
    let stopping = tokio::spawn(gw.stop());
    let mut got = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let t0 = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => { let _ = c.send(&bal::FromBal::Ping).await; }
            m = c.recv() => match m {
                Ok(m) => got.push(m),
                Err(_) => break, // closed by gimmm
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "{got:?}");
    }
    stopping.await.unwrap();
    assert!(
        got.iter().any(
            |m| matches!(m, ToBal::DownstreamAck { message_id, .. } if message_id == "in-flight")
        ),
        "{got:?}"
    );
    env.stop().await;
}
