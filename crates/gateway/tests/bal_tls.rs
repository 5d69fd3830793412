//! TLS for BALs (SPEC §11, issue 12 point 4), on real sockets with a real
//! certificate chain (a CA and a server certificate for localhost /
//! 127.0.0.1, generated with rcgen):
//!
//! * a BAL over TLS logs on, sends, gets DOWNSTREAM_ACCEPTED and
//!   DOWNSTREAM_ACK (in-process gateway against the CCS emulator);
//! * a client trusting another CA, a client checking another host name and
//!   a plain-TCP client are refused, and the gateway keeps serving others;
//! * under paused time: a client that opens TCP and never sends a
//!   ClientHello is dropped exactly at `bal.logon_timeout_secs`, while
//!   another one is served meanwhile (the handshake never blocks the accept
//!   loop), and the handshake counts towards the LOGON deadline.
#![allow(clippy::unwrap_used)]

mod common;

use bal::proto::{line, FromBal};
use bal::{BalClient, ClientError, ClientTls, ToBal};
use common::*;
use emulator::{Faults, TlsIdentity};
use gateway::config::{BalConfig, SessionConfig};
use gateway::engine::Cmd;
use gateway::session::out::Out;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A CA and a server certificate for localhost / 127.0.0.1, written to
/// `dir` as `bal-cert.pem` (chain) and `bal-key.pem`.
fn identity(dir: &Path) -> TlsIdentity {
    let id = TlsIdentity::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("bal-cert.pem"), &id.cert_chain_pem).unwrap();
    std::fs::write(dir.join("bal-key.pem"), &id.key_pem).unwrap();
    id
}

fn with_tls(cfg: &mut gateway::config::Config, dir: &Path) {
    cfg.bal.tls_cert_file = Some(dir.join("bal-cert.pem"));
    cfg.bal.tls_key_file = Some(dir.join("bal-key.pem"));
}

/// Reads until EOF (or a reset); what was read. Fails after [`WAIT`].
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection stayed open; read so far: {got:?}"),
        }
    }
}

async fn round_trip(c: &mut BalClient, id: &str) {
    c.downstream(None, msg("dev-tls", id)).await.unwrap();
    let m = recv_until(c, |m| matches!(m, ToBal::DownstreamAccepted { .. })).await;
    assert_eq!(m.message_id(), Some(id), "{m:?}");
    let m = recv_until(c, |m| m.is_final()).await;
    assert!(matches!(m, ToBal::DownstreamAck { .. }), "{m:?}");
    assert_eq!(m.message_id(), Some(id));
    c.ack(m.sequence_id().unwrap()).await.unwrap();
}

#[tokio::test]
async fn a_bal_over_tls_logs_on_sends_and_gets_its_ack() {
    let certs = tempfile::tempdir().unwrap();
    let id = identity(certs.path());
    let env = start(Faults::default(), |c| with_tls(c, certs.path())).await;
    let tls = ClientTls::with_ca_pem(id.ca_pem.as_bytes()).unwrap();
    let addr = env.gw().bal_addr;

    // SNI and the certificate check by DNS name...
    let mut c = BalClient::connect_tls(addr, "localhost", &tls)
        .await
        .unwrap();
    c.logon(SESSION, TOKEN).await.unwrap();
    round_trip(&mut c, "tls-1").await;
    c.send(&FromBal::Ping).await.unwrap();
    assert_eq!(recv(&mut c).await, ToBal::Pong);
    drop(c);
    // ... and by IP address, from `host:port` as `gimmm send` has it.
    let mut c = BalClient::connect_logon_to(&addr.to_string(), Some(&tls), SESSION, TOKEN)
        .await
        .unwrap();
    round_trip(&mut c, "tls-2").await;
    let s = env.wait_emu("both acked", |s| s.acks_sent >= 2).await;
    assert_eq!(s.msg("tls-1").acked, 1);
    assert_eq!(s.msg("tls-2").acked, 1);
    drop(c);
    env.stop().await;
}

#[tokio::test]
async fn untrusted_wrong_name_and_plain_clients_are_refused_and_others_served() {
    let certs = tempfile::tempdir().unwrap();
    let id = identity(certs.path());
    let env = start(Faults::default(), |c| with_tls(c, certs.path())).await;
    let addr = env.gw().bal_addr;
    let good = ClientTls::with_ca_pem(id.ca_pem.as_bytes()).unwrap();
    // A good BAL stays logged on through everything below.
    let mut steady = BalClient::connect_logon_to(&addr.to_string(), Some(&good), SESSION, TOKEN)
        .await
        .unwrap();

    // Another CA: the client refuses the gateway's certificate.
    let other = TlsIdentity::generate(&["localhost".into()]).unwrap();
    let stranger = ClientTls::with_ca_pem(other.ca_pem.as_bytes()).unwrap();
    match BalClient::connect_tls(addr, "localhost", &stranger).await {
        Err(ClientError::Tls(e)) => assert!(e.contains("certificate"), "{e}"),
        Err(e) => panic!("not a TLS error: {e}"),
        Ok(_) => panic!("a client trusting another CA completed the handshake"),
    }
    // The right CA, another name: the host name is checked.
    match BalClient::connect_tls(addr, "gw.example.com", &good).await {
        Err(ClientError::Tls(e)) => assert!(e.contains("certificate"), "{e}"),
        Err(e) => panic!("not a TLS error: {e}"),
        Ok(_) => panic!("a certificate for localhost was accepted for gw.example.com"),
    }
    // Plain TCP on the TLS port: a LOGON in clear is not a ClientHello;
    // the gateway drops the connection (a TLS alert at most, no JSON).
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(
            format!("{{\"message_type\":\"LOGON\",\"session_id\":\"{SESSION}\",\"token\":\"{TOKEN}\"}}\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let got = read_to_close(&mut plain).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("LOGON_RESPONSE"),
        "{got:?}"
    );
    // The same through the plain client API, which names the TLS alert.
    let refused = match BalClient::connect(addr).await {
        Ok(mut c) => c.logon(SESSION, TOKEN).await,
        Err(e) => Err(e),
    };
    match refused {
        Err(ClientError::BadLine(e)) => assert!(e.contains("TLS alert"), "{e}"),
        // The alert may be lost to a reset when the gateway closes first.
        Err(ClientError::Io(_) | ClientError::Closed) => {}
        r => panic!("plain LOGON on the TLS port: {r:?}"),
    }

    // Still serving: the steady BAL and a new one.
    round_trip(&mut steady, "after-1").await;
    let mut fresh = BalClient::connect_logon_to(
        &addr.to_string(),
        Some(&good),
        "com.example.other",
        "other-token",
    )
    .await
    .unwrap();
    round_trip(&mut fresh, "after-2").await;
    drop((steady, fresh));
    env.stop().await;
}

/// The listener alone under paused time: `session::serve` with TLS and a
/// stand-in engine that answers LOGON. Time moves only when every task
/// waits, straight to the next timer, so the deadline is exact.
#[tokio::test(start_paused = true)]
async fn a_client_that_never_sends_a_client_hello_is_dropped_at_the_timeout() {
    let certs = tempfile::tempdir().unwrap();
    let id = identity(certs.path());
    let timeout = Duration::from_secs(7);
    let cfg = BalConfig {
        listen: "127.0.0.1:0".into(),
        logon_timeout_secs: timeout.as_secs(),
        sessions: vec![SessionConfig::new(SESSION, TOKEN)],
        tls_cert_file: Some(certs.path().join("bal-cert.pem")),
        tls_key_file: Some(certs.path().join("bal-key.pem")),
        ..BalConfig::default()
    };
    let server = cfg.tls_server_config().unwrap();
    assert!(server.is_some());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (engine, mut cmds) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway::session::serve(
        listener,
        cfg,
        server,
        gateway::session::prepare::Rules::Xmpp,
        engine,
        shutdown.clone(),
    ));
    // The engine's part of LOGON: attach, answer SUCCESS; report attaches.
    let (attached_tx, mut attached) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(cmd) = cmds.recv().await {
            if let Cmd::Attach { session, out, .. } = cmd {
                let _ = out.send(Out::Owned(line::logon_response(&session, None)));
                let _ = attached_tx.send(Instant::now());
            }
        }
    });

    let t0 = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Meanwhile another BAL does its handshake and logs on.
    let tls = ClientTls::with_ca_pem(id.ca_pem.as_bytes()).unwrap();
    let mut other = BalClient::connect_tls(addr, "localhost", &tls)
        .await
        .unwrap();
    other.logon(SESSION, TOKEN).await.unwrap();
    let at = attached.recv().await.unwrap();
    assert!(
        at - t0 < timeout,
        "a silent handshake held up the others: served after {:?}",
        at - t0
    );
    // A third completes its handshake but never sends LOGON: the same
    // deadline, counted from accept, ends it with NOT_LOGGED_ON.
    let t1 = Instant::now();
    let mut mute = BalClient::connect_tls(addr, "localhost", &tls)
        .await
        .unwrap();

    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).await.unwrap();
    assert_eq!(n, 0, "the silent client was sent {:?}", &buf[..n]);
    let waited = t0.elapsed();
    assert!(
        waited >= timeout && waited < timeout + Duration::from_millis(50),
        "dropped after {waited:?}, the timeout is {timeout:?}"
    );
    match mute.recv().await.unwrap() {
        ToBal::Error { error, .. } => assert_eq!(error, bal::BalError::NotLoggedOn),
        m => panic!("{m:?}"),
    }
    assert!(matches!(mute.recv().await, Err(ClientError::Closed)));
    let waited = t1.elapsed();
    assert!(
        waited >= timeout && waited < timeout + Duration::from_millis(50),
        "{waited:?}"
    );
    // The logged-on one is unaffected.
    other.send(&FromBal::Ping).await.unwrap();
    assert_eq!(other.recv().await.unwrap(), ToBal::Pong);
    shutdown.cancel();
}
