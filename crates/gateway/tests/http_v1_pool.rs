//! The HTTP/2 pool of the HTTP v1 link (SPEC §8.4): `connections`
//! connections, each carrying at most min(`max_pending_per_connection`,
//! the server's SETTINGS_MAX_CONCURRENT_STREAMS) requests; GOAWAY handled as
//! draining with no message lost or duplicated; dropped and dead (no PONG)
//! connections replaced and their requests resent elsewhere.
#![allow(clippy::unwrap_used)]

mod http_v1_common;

use emulator::v1::V1Faults;
use http_v1_common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{BalProbe, Final};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Sends every id (to a few devices) and waits for all finals; checks one
/// ACK each.
async fn run_batch(p: &mut BalProbe, prefix: &str, n: usize) -> Vec<String> {
    let all = ids(prefix, n);
    for (i, id) in all.iter().enumerate() {
        p.downstream(None, msg(&format!("dev-{}", i % 13), id))
            .unwrap();
    }
    p.wait_until(&format!("{n} finals for {prefix}"), WAIT * 2, |l| {
        all.iter().all(|id| l.has_final(id))
    })
    .await
    .unwrap();
    let l = p.snapshot();
    l.assert_exactly_one_final(all.iter());
    for id in &all {
        assert_eq!(l.final_of(id), Some(&Final::Ack), "{id}: {}", l.summary());
    }
    all
}

fn h2_conns(s: &emulator::v1::V1Stats) -> Vec<&emulator::v1::V1ConnStats> {
    s.connections.iter().filter(|c| c.alpn == "h2").collect()
}

#[tokio::test]
async fn connections_times_streams_never_over_the_limit() {
    let env = start(
        V1Faults {
            latency: Duration::from_millis(30),
            max_concurrent_streams: Some(8),
            ..V1Faults::default()
        },
        |c| c.fcm.connections = 3,
    )
    .await;
    let mut p = env.probe().await;
    run_batch(&mut p, "a", 600).await;
    let s = env.emu.stats();
    let conns = h2_conns(&s);
    let used = conns.iter().filter(|c| c.requests > 0).count();
    assert!(used >= 2, "one connection did everything: {conns:#?}");
    for c in &conns {
        assert_eq!(c.max_concurrent_streams, 8);
        assert!(c.streams_high_water <= 8, "{c:#?}");
    }
    assert!(
        conns.iter().any(|c| c.streams_high_water == 8),
        "the limit was never reached: {conns:#?}"
    );
    assert_eq!(s.over_limit, 0);
    // The engine was told the server's limit, not the configured 100.
    let snap = env.gw().snapshot().await.unwrap();
    assert!(
        snap.links.iter().all(|l| l.capacity == 8),
        "{:?}",
        snap.links
    );
    // The stream gauge is there per link.
    let text = env.metrics().await;
    assert!(
        text.contains("gimmm_fcm_streams_in_flight{link=\""),
        "{text}"
    );

    // New connections learn a new limit from their SETTINGS.
    env.emu
        .set_faults(V1Faults {
            latency: Duration::from_millis(30),
            max_concurrent_streams: Some(3),
            ..V1Faults::default()
        })
        .unwrap();
    let old = s.connections.len() as u64;
    env.emu.goaway_all();
    run_batch(&mut p, "b", 300).await;
    let s = env.emu.stats();
    let new: Vec<_> = h2_conns(&s)
        .into_iter()
        .filter(|c| c.id > old && c.requests > 0)
        .collect();
    assert!(!new.is_empty(), "{:#?}", s.connections);
    for c in &new {
        assert_eq!(c.max_concurrent_streams, 3);
        assert!(c.streams_high_water <= 3, "{c:#?}");
    }
    assert_eq!(s.over_limit, 0);
    assert_eq!(s.duplicates, 0);
    env.stop().await;
}

#[tokio::test]
async fn the_configured_limit_wins_when_lower() {
    let env = start(
        V1Faults {
            latency: Duration::from_millis(20),
            ..V1Faults::default()
        },
        |c| c.fcm.max_pending_per_connection = 4,
    )
    .await;
    let mut p = env.probe().await;
    run_batch(&mut p, "c", 100).await;
    let s = env.emu.stats();
    let conns = h2_conns(&s);
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].streams_high_water, 4, "{conns:#?}");
    env.stop().await;
}

#[tokio::test]
async fn goaway_drains_without_losing_or_duplicating() {
    let env = start(
        V1Faults {
            latency: Duration::from_millis(3),
            goaway_after: Some(50),
            ..V1Faults::default()
        },
        |c| c.fcm.connections = 2,
    )
    .await;
    let mut p = env.probe().await;
    let all = run_batch(&mut p, "g", 600).await;
    let s = env.emu.stats();
    assert!(s.goaways_sent >= 5, "{s:#?}");
    assert_eq!(s.duplicates, 0, "a message was delivered twice");
    for (i, id) in all.iter().enumerate() {
        let k = key(&format!("dev-{}", i % 13), id);
        assert_eq!(s.msg(&k).delivered, 1, "{id}: {:?}", s.msg(&k));
    }
    assert_eq!(s.over_limit, 0);
    let text = env.metrics().await;
    assert!(metric(&text, "gimmm_link_drains_total", &[]).unwrap() >= 5.0);
    env.stop().await;
}

#[tokio::test]
async fn dropped_connections_are_replaced_and_their_requests_resent() {
    let env = start(
        V1Faults {
            latency: Duration::from_millis(5),
            drop_after: Some(40),
            // Fewer in flight than the drop point, or no request would
            // ever be answered before its connection drops.
            max_concurrent_streams: Some(10),
            ..V1Faults::default()
        },
        |c| c.fcm.connections = 2,
    )
    .await;
    let mut p = env.probe().await;
    let all = run_batch(&mut p, "d", 400).await;
    let s = env.emu.stats();
    assert!(s.drops >= 3, "{s:#?}");
    for (i, id) in all.iter().enumerate() {
        let k = key(&format!("dev-{}", i % 13), id);
        assert!(s.msg(&k).delivered >= 1, "{id} never delivered");
    }
    let text = env.metrics().await;
    let resent = metric(&text, "gimmm_fcm_resent_total", &[]).unwrap();
    assert!(resent >= 1.0, "{text}");
    // FCM may see a resent request twice (SPEC §8.3): never more often
    // than gimmm resent.
    assert!(s.duplicates as f64 <= resent, "{} > {resent}", s.duplicates);
    assert!(metric(&text, "gimmm_link_reconnects_total", &[]).unwrap() >= 3.0);
    env.stop().await;
}

/// A TCP relay whose connections can be frozen (nothing forwarded, the
/// sockets left open): a connection that went silent.
struct FreezingRelay {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<watch::Sender<bool>>>>,
}

impl FreezingRelay {
    async fn start(target: SocketAddr) -> FreezingRelay {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<watch::Sender<bool>>>> = Arc::default();
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (tx, rx) = watch::channel(false);
                c.lock().unwrap().push(tx);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, rx.clone()));
                tokio::spawn(pump(ur, dw, rx));
            }
        });
        FreezingRelay { addr, conns }
    }

    fn freeze(&self, i: usize) {
        let _ = self.conns.lock().unwrap()[i].send(true);
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *frozen.borrow_and_update() {
            // Silent from now on: hold the sockets, forward nothing.
            let _ = frozen.wait_for(|f| !*f).await;
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_silent_connection_is_found_by_ping_and_its_requests_resent() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(
        dir.path(),
        V1Faults {
            latency: Duration::from_millis(400),
            ..V1Faults::default()
        },
        |_| {},
    )
    .await;
    let relay = FreezingRelay::start(emu.addr()).await;
    let mut cfg = v1_config(dir.path(), &emu);
    cfg.fcm.endpoint = format!("https://{}", relay.addr);
    cfg.fcm.keepalive_secs = 1;
    cfg.fcm.request_timeout_secs = 30;
    let gw = gateway::Gateway::start(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let mut p = BalProbe::new(SESSION, TOKEN);
    p.connect(gw.bal_addr).await.unwrap();
    // The link's connection is the relay's first (the token endpoint is
    // reached directly).
    let all = ids("z", 20);
    for id in &all {
        p.downstream(None, msg("dev-z", id)).unwrap();
    }
    match emu.wait_until(WAIT, |s| s.requests >= 20).await {
        Ok(_) => {}
        Err(s) => panic!("requests did not arrive: {s:#?}"),
    }
    // Every request is in flight (answers take 400 ms): silence now.
    relay.freeze(0);
    p.wait_until("finals after the silence", WAIT, |l| {
        all.iter().all(|id| l.has_final(id))
    })
    .await
    .unwrap();
    let l = p.snapshot();
    l.assert_exactly_one_final(all.iter());
    assert!(all.iter().all(|id| l.final_of(id) == Some(&Final::Ack)));
    let s = emu.stats();
    assert!(
        s.requests >= 40,
        "the silent requests were not resent: {s:#?}"
    );
    let (_, text) = testkit::http_get(gw.admin_addr.unwrap(), "/metrics", None)
        .await
        .unwrap();
    assert!(
        metric(&text, "gimmm_fcm_resent_total", &[]).unwrap() >= 20.0,
        "{text}"
    );
    gw.stop().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn the_client_side_quota_spreads_a_burst() {
    // 600 a minute: a burst of one, then ~10 a second. FCM's own quota is
    // the same: not one 429.
    let env = start(
        V1Faults {
            quota_per_minute: Some(600),
            ..V1Faults::default()
        },
        |c| {
            c.fcm.max_messages_per_minute = 600;
            c.fcm.connections = 2;
        },
    )
    .await;
    env.wait_readyz(200).await;
    let mut p = env.probe().await;
    let started = tokio::time::Instant::now();
    run_batch(&mut p, "q", 21).await;
    let took = started.elapsed();
    // 20 tokens after the first at 599/60 per second: about 2 s.
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    let s = env.emu.stats();
    assert_eq!(s.quota_rejections, 0, "{s:#?}");
    assert_eq!(s.delivered, 21);
    env.stop().await;
}
