//! Hostile BALs (issue 6): floods, 10 MB lines, thousands of connections, a
//! session that never ACKs, wrong tokens in a loop. gimmm must keep memory
//! bounded (no unbounded queues), apply its configurable limits
//! (`bal.max_connections`, `bal.max_line_bytes`, `bal.max_unacked`,
//! `bal.logon_timeout_secs`), and a second, well-behaved session must keep
//! getting its results promptly.
//!
//! The tests share one process, so they run one at a time (memory is
//! measured as the test process's RSS).
#![allow(clippy::unwrap_used)]

mod common;

use bal::proto::{BalError, FromBal};
use bal::{BalClient, ToBal};
use common::*;
use emulator::Faults;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const OTHER: &str = "com.example.other";
const OTHER_TOKEN: &str = "other-token";

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Round trip of one DOWNSTREAM on a well-behaved session: time until its
/// final result (which is ACKed).
async fn probe(c: &mut BalClient, id: &str) -> Duration {
    let t = Instant::now();
    c.downstream(None, msg("dev-probe", id)).await.unwrap();
    let m = recv_until(c, |m| m.is_final()).await;
    assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
    assert_eq!(m.message_id(), Some(id));
    t.elapsed()
}

async fn ping(c: &mut BalClient) -> Duration {
    let t = Instant::now();
    c.send(&FromBal::Ping).await.unwrap();
    assert_eq!(recv(c).await, ToBal::Pong);
    t.elapsed()
}

/// A BAL that writes as fast as it can and never reads. Each bad line is
/// answered with an ERROR line ~50x its size, so without backpressure gimmm
/// queues the answers in memory without bound.
#[tokio::test]
async fn flood_without_reading_keeps_memory_bounded() {
    let _serial = SERIAL.lock().await;
    let env = start(Faults::default(), |_| {}).await;
    let mut other = BalClient::connect_logon(env.gw().bal_addr, OTHER, OTHER_TOKEN)
        .await
        .unwrap();
    probe(&mut other, "warm-1").await;
    let before = rss_bytes();

    let mut flood = TcpStream::connect(env.gw().bal_addr).await.unwrap();
    flood
        .write_all(format!("{{\"message_type\":\"LOGON\",\"session_id\":\"{SESSION}\",\"token\":\"{TOKEN}\"}}\n").as_bytes())
        .await
        .unwrap();
    let chunk = b"x\n".repeat(32 * 1024);
    let budget = 4 << 20; // 4 MB of 2-byte lines: 2M ERROR answers (~250 MB)
    let mut written = 0usize;
    let deadline = Instant::now() + Duration::from_secs(8);
    while written < budget && Instant::now() < deadline {
        match timeout(Duration::from_secs(1), flood.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            // Blocked for a second: gimmm stopped reading (backpressure).
            Err(_) => break,
            Ok(Err(_)) => break,
        }
    }
    // Let gimmm work through what it has read.
    let mut peak = rss_bytes();
    let settle = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss_bytes();
        if now <= peak && Instant::now() > settle - Duration::from_secs(4) {
            break;
        }
        peak = peak.max(now);
        if Instant::now() > settle {
            break;
        }
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "flood: wrote {} KB without reading; RSS grew {} MB",
        written / 1024,
        grown >> 20
    );
    // The other session is served meanwhile.
    let lat = probe(&mut other, "during-flood-1").await;
    assert!(lat < Duration::from_secs(2), "other session waited {lat:?}");
    assert!(
        grown < 64 << 20,
        "gimmm buffered {} MB for a BAL that does not read ({} KB written)",
        grown >> 20,
        written / 1024
    );
    drop(flood);
    env.stop().await;
}

#[tokio::test]
async fn ten_megabyte_lines_are_refused() {
    let _serial = SERIAL.lock().await;
    let env = start(Faults::default(), |_| {}).await;
    let addr = env.gw().bal_addr;
    let mut other = BalClient::connect_logon(addr, OTHER, OTHER_TOKEN)
        .await
        .unwrap();
    let before = rss_bytes();
    for logged_on in [false, true] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if logged_on {
            s.write_all(format!("{{\"message_type\":\"LOGON\",\"session_id\":\"{SESSION}\",\"token\":\"{TOKEN}\"}}\n").as_bytes())
                .await
                .unwrap();
        }
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'a'; 64 * 1024];
            let mut n = 0usize;
            while n < 10 << 20 {
                if w.write_all(&chunk).await.is_err() {
                    break;
                }
                n += chunk.len();
            }
            let _ = w.write_all(b"\n").await;
            n
        });
        let mut got = Vec::new();
        let t = Instant::now();
        timeout(WAIT, r.read_to_end(&mut got)).await.unwrap().ok();
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("LINE_TOO_LONG"),
            "logged_on={logged_on}: {text}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "closed after {:?}",
            t.elapsed()
        );
        let n = timeout(WAIT, writer).await.unwrap().unwrap();
        eprintln!(
            "10 MB line (logged_on={logged_on}): refused after {:?}, {} KB written",
            t.elapsed(),
            n / 1024
        );
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 48 << 20, "RSS grew {} MB", grown >> 20);
    assert!(probe(&mut other, "after-long-lines").await < Duration::from_secs(2));
    env.stop().await;
}

#[tokio::test]
async fn thousands_of_connections_are_capped_and_others_keep_working() {
    let _serial = SERIAL.lock().await;
    // A logon timeout longer than the connect storm, so no slot is recycled
    // while it lasts.
    let env = start(Faults::default(), |c| {
        c.bal.max_connections = 200;
        c.bal.logon_timeout_secs = 5;
    })
    .await;
    let addr = env.gw().bal_addr;
    let mut other = BalClient::connect_logon(addr, OTHER, OTHER_TOKEN)
        .await
        .unwrap();
    let t = Instant::now();
    let mut socks = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect(addr).await {
            Ok(s) => socks.push(s),
            Err(e) => panic!("connect failed: {e}"),
        }
    }
    // The other session is unaffected while 2,000 connections hammer the listener.
    let lat = probe(&mut other, "during-conn-flood").await;
    assert!(lat < Duration::from_secs(2), "other session waited {lat:?}");
    // Let the accept loop catch up with the kernel's backlog, then count the
    // refused ones: closed at once, with nothing written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut refused = 0;
    let mut open = 0;
    for s in &mut socks {
        let mut b = [0u8; 256];
        match timeout(Duration::from_millis(5), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
            _ => open += 1,
        }
    }
    eprintln!(
        "2000 connections in {:?}: {refused} refused, {open} open",
        t.elapsed()
    );
    assert!(
        open <= 200,
        "bal.max_connections = 200 but {open} were kept"
    );
    assert!(refused >= 1790, "{refused}");
    // The admitted ones get NOT_LOGGED_ON after logon_timeout_secs and are closed.
    let mut timed_out = 0;
    for s in &mut socks {
        let mut got = Vec::new();
        if timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .is_ok()
            && String::from_utf8_lossy(&got).contains("NOT_LOGGED_ON")
        {
            timed_out += 1;
        }
    }
    assert!(timed_out >= open - 1, "{timed_out} of {open}");
    drop(socks);
    // Slots are free again: a new session logs on.
    let deadline = Instant::now() + WAIT;
    let mut c = loop {
        match BalClient::connect_logon(addr, SESSION, TOKEN).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(ping(&mut c).await < Duration::from_secs(1));
    env.stop().await;
}

#[tokio::test]
async fn a_session_that_never_acks_is_bounded_and_others_are_served() {
    let _serial = SERIAL.lock().await;
    let env = start(Faults::default(), |c| c.bal.max_unacked = 10).await;
    let addr = env.gw().bal_addr;
    let (mut rd, mut wr) = env.bal().await.into_split();
    let n = 300;
    for i in 0..n {
        wr.send(&FromBal::Downstream {
            group_id: None,
            fcm_data: msg("dev-n", &format!("n-{i}")),
        })
        .await
        .unwrap();
    }
    wr.flush().await.unwrap();
    // Read without ACKing: ACCEPTED for all, but at most max_unacked results.
    let mut sequenced = 0;
    let mut accepted = 0;
    loop {
        match timeout(Duration::from_secs(2), rd.recv()).await {
            Ok(Ok(m)) => {
                if m.sequence_id().is_some() {
                    sequenced += 1;
                } else if matches!(m, ToBal::DownstreamAccepted { .. }) {
                    accepted += 1;
                }
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => break,
        }
    }
    assert_eq!(accepted, n);
    assert_eq!(sequenced, 10, "bal.max_unacked = 10");
    let snap = env.gw().snapshot().await.unwrap();
    let s = snap
        .sessions
        .iter()
        .find(|s| s.session_id == SESSION)
        .unwrap();
    assert_eq!(s.unacked, 10);
    // Another session is served at once.
    let mut other = BalClient::connect_logon(addr, OTHER, OTHER_TOKEN)
        .await
        .unwrap();
    let lat = probe(&mut other, "while-stuck").await;
    assert!(lat < Duration::from_secs(2), "{lat:?}");
    // Taking over and ACKing everything delivers every result exactly once.
    drop((rd, wr));
    let mut c = env.bal().await;
    let mut finals: HashMap<String, HashSet<u64>> = HashMap::new();
    while finals.len() < n {
        let m = recv(&mut c).await;
        if let Some(seq) = m.sequence_id() {
            c.ack(seq).await.unwrap();
        }
        if m.is_final() {
            finals
                .entry(m.message_id().unwrap().to_string())
                .or_default()
                .insert(m.sequence_id().unwrap());
        }
    }
    assert!(finals.values().all(|s| s.len() == 1));
    env.stop().await;
}

#[tokio::test]
async fn wrong_tokens_in_a_loop_change_nothing() {
    let _serial = SERIAL.lock().await;
    let env = start(Faults::default(), |_| {}).await;
    let addr = env.gw().bal_addr;
    let mut other = BalClient::connect_logon(addr, OTHER, OTHER_TOKEN)
        .await
        .unwrap();
    let t = Instant::now();
    let mut worst = Duration::ZERO;
    for round in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            tasks.push(tokio::spawn(async move {
                let mut c = BalClient::connect(addr).await.unwrap();
                let (session, token) = if i % 2 == 0 {
                    (SESSION, "wrong")
                } else {
                    ("no.such", TOKEN)
                };
                c.send(&FromBal::Logon {
                    session_id: session.into(),
                    token: token.into(),
                })
                .await
                .unwrap();
                let m = timeout(WAIT, c.recv()).await.unwrap().unwrap();
                assert!(
                    matches!(&m, ToBal::LogonResponse { status, .. } if status == "FAILURE"),
                    "{m:?}"
                );
                assert!(matches!(
                    timeout(WAIT, c.recv()).await.unwrap(),
                    Err(bal::ClientError::Closed)
                ));
            }));
        }
        worst = worst.max(ping(&mut other).await);
        for task in tasks {
            task.await.unwrap();
        }
        if round % 5 == 0 {
            worst = worst.max(probe(&mut other, &format!("tok-loop-{round}")).await);
        }
    }
    eprintln!(
        "1000 wrong logons in {:?}; worst latency of the other session {worst:?}",
        t.elapsed()
    );
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    // No lockout: the right token still works, and the session is intact.
    let mut c = env.bal().await;
    assert!(ping(&mut c).await < Duration::from_secs(1));
    c.downstream(None, msg("dev-t", "after-loop"))
        .await
        .unwrap();
    let m = recv_until(&mut c, |m| m.is_final()).await;
    assert!(matches!(m, ToBal::DownstreamAck { .. }));
    // Garbage before LOGON is refused and closed as well.
    let mut g = BalClient::connect(addr).await.unwrap();
    g.writer().send_raw(b"\x00\xff garbage").await.unwrap();
    g.writer().flush().await.unwrap();
    let m = recv(&mut g).await;
    assert!(
        matches!(
            m,
            ToBal::Error {
                error: BalError::InvalidJson,
                ..
            }
        ),
        "{m:?}"
    );
    env.stop().await;
}

/// One session floods valid DOWNSTREAMs (reading and ACKing as it should);
/// the other keeps getting ACCEPTED and its results promptly.
#[tokio::test]
async fn a_flooding_session_does_not_starve_another() {
    let _serial = SERIAL.lock().await;
    let env = start(
        Faults {
            ack_delay: Duration::from_millis(2),
            ..Faults::default()
        },
        |_| {},
    )
    .await;
    let addr = env.gw().bal_addr;
    let (mut rd, mut wr) = env.bal().await.into_split();
    let n = 20_000usize;
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
    let reader = tokio::spawn(async move {
        let mut finals = 0;
        while finals < n {
            let m = timeout(Duration::from_secs(60), rd.recv())
                .await
                .unwrap()
                .unwrap();
            if let Some(s) = m.sequence_id() {
                seq_tx.send(s).unwrap();
            }
            if m.is_final() {
                finals += 1;
            }
        }
        finals
    });
    let mut other = BalClient::connect_logon(addr, OTHER, OTHER_TOKEN)
        .await
        .unwrap();
    let mut accepted_worst = Duration::ZERO;
    let mut final_worst = Duration::ZERO;
    for i in 0..5 {
        let t = Instant::now();
        other
            .downstream(None, msg("dev-o", &format!("o-{i}")))
            .await
            .unwrap();
        let m = recv(&mut other).await;
        assert!(matches!(m, ToBal::DownstreamAccepted { .. }), "{m:?}");
        accepted_worst = accepted_worst.max(t.elapsed());
        let m = recv_until(&mut other, |m| m.is_final()).await;
        assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
        final_worst = final_worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let snap = env.gw().snapshot().await.unwrap();
    eprintln!(
        "flood of {n}: other session worst ACCEPTED {accepted_worst:?}, worst final {final_worst:?}; {} messages in memory",
        snap.messages_in_memory
    );
    assert!(
        accepted_worst < Duration::from_secs(2),
        "{accepted_worst:?}"
    );
    assert!(final_worst < Duration::from_secs(10), "{final_worst:?}");
    let finals = timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finals, n);
    writer.await.unwrap();
    env.stop().await;
}
