//! Crash safety (issue 3, item 12): `gimmm serve` as a child process is
//! killed with SIGKILL mid-flight and restarted on the same SQLite store.
//! Every message that got DOWNSTREAM_ACCEPTED must end in exactly one final
//! result at the BAL (redeliveries carry the same sequence id) and must have
//! reached the emulator; every upstream message must reach the BAL once.
#![allow(clippy::unwrap_used)]

use bal::proto::FromBal;
use bal::{BalClient, ToBal};
use emulator::{Emulator, EmulatorConfig, Faults};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, emu: &Emulator, bal_port: u16) -> std::path::PathBuf {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem()).unwrap();
    let cfg = format!(
        r#"
[fcm]
host = "127.0.0.1"
port = {port}
sender_id = "{sender}"
server_key = "{key}"
ca_file = "{ca}"
connections = 2

[retry]
initial_ms = 20
max_ms = 500

[bal]
listen = "127.0.0.1:{bal_port}"

[[bal.sessions]]
session_id = "com.example.app"
token = "crash-token"

[store]
path = "{db}"

[admin]
listen = ""
"#,
        port = emu.addr().port(),
        sender = emu.sender_id(),
        key = emu.server_key(),
        ca = ca.display(),
        db = dir.join("gimmm.db").display(),
    );
    let p = dir.join("gimmm.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Connects and logs on, retrying while the child starts up.
async fn logon(addr: SocketAddr) -> BalClient {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match BalClient::connect_logon(addr, "com.example.app", "crash-token").await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "gimmm did not come up: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[derive(Default)]
struct Seen {
    accepted: HashSet<String>,
    /// message_id -> sequence ids of final results seen
    finals: HashMap<String, HashSet<u64>>,
    upstream: HashMap<String, HashSet<u64>>,
}

impl Seen {
    fn record(&mut self, m: &ToBal) {
        match m {
            ToBal::DownstreamAccepted { message_id, .. } => {
                self.accepted.insert(message_id.clone());
            }
            ToBal::DownstreamAck {
                message_id,
                sequence_id,
                ..
            }
            | ToBal::DownstreamReject {
                message_id,
                sequence_id,
                ..
            } => {
                self.finals
                    .entry(message_id.clone())
                    .or_default()
                    .insert(*sequence_id);
            }
            ToBal::Upstream {
                fcm_data,
                sequence_id,
                ..
            } => {
                let id = fcm_data["message_id"].as_str().unwrap().to_string();
                self.upstream.entry(id).or_default().insert(*sequence_id);
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing() {
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
    let bal_port = free_port();
    let config = write_config(dir.path(), &emu, bal_port);
    let addr: SocketAddr = format!("127.0.0.1:{bal_port}").parse().unwrap();

    let mut child = spawn(&config);
    let client = logon(addr).await;
    let (mut rd, mut wr) = client.into_split();
    let total = 3000usize;
    let mut seen = Seen::default();
    let mut upstream_ids = Vec::new();
    let mut data = serde_json::Map::new();
    data.insert("k".into(), "v".into());

    // Send everything without waiting; read and ACK concurrently.
    let sender = tokio::spawn(async move {
        for i in 0..total {
            let m = FromBal::Downstream {
                group_id: (i % 5 == 0).then(|| format!("g{}", i % 3)),
                fcm_data: serde_json::json!({"to": format!("dev-{}", i % 50), "message_id": format!("c-{i}")}),
            };
            if wr.send(&m).await.is_err() {
                break;
            }
            if i % 50 == 0 && wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.flush().await;
        wr
    });
    // Kill when a good part is accepted and some results are flowing.
    while seen.accepted.len() < total / 3 {
        let m = tokio::time::timeout(WAIT, rd.recv()).await.unwrap();
        let Ok(m) = m else { break };
        seen.record(&m);
        if seen.accepted.len() % 200 == 0 {
            upstream_ids.push(emu.send_upstream("device-up", "com.example.app", data.clone()));
        }
        // Nothing is ACKed before the kill: every result seen so far must be
        // redelivered, with the same sequence id, after the restart.
    }
    assert!(
        seen.finals.len() < seen.accepted.len(),
        "the kill must happen mid-flight"
    );
    eprintln!(
        "killing gimmm with {} accepted, {} final results seen",
        seen.accepted.len(),
        seen.finals.len()
    );
    child.start_kill().unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "killed with SIGKILL");
    drop(rd);
    let _ = sender.await;
    for _ in 0..5 {
        upstream_ids.push(emu.send_upstream("device-up", "com.example.app", data.clone()));
    }

    // Restart on the same store; a new BAL connection ACKs everything.
    let mut child = spawn(&config);
    let mut c = logon(addr).await;
    let accepted = seen.accepted.clone();
    let done = |s: &Seen| {
        accepted.iter().all(|id| s.finals.contains_key(id))
            && upstream_ids.iter().all(|id| s.upstream.contains_key(id))
    };
    while !done(&seen) {
        let m = match tokio::time::timeout(WAIT, c.recv()).await {
            Ok(m) => m.unwrap(),
            Err(_) => {
                let missing: Vec<_> = accepted
                    .iter()
                    .filter(|id| !seen.finals.contains_key(*id))
                    .take(10)
                    .collect();
                let missing_up: Vec<_> = upstream_ids
                    .iter()
                    .filter(|id| !seen.upstream.contains_key(*id))
                    .collect();
                panic!("timed out; missing finals {missing:?} upstream {missing_up:?}");
            }
        };
        seen.record(&m);
        if let Some(seq) = m.sequence_id() {
            c.ack(seq).await.unwrap();
        }
    }
    // Exactly one final result per message (a redelivery has the same sequence id).
    for (id, seqs) in &seen.finals {
        assert_eq!(
            seqs.len(),
            1,
            "message {id} got {} different final results",
            seqs.len()
        );
    }
    for (id, seqs) in &seen.upstream {
        assert_eq!(
            seqs.len(),
            1,
            "upstream {id} delivered as {} different messages",
            seqs.len()
        );
    }
    let stats = emu.stats();
    for id in &accepted {
        assert!(
            stats.msg(id).acked >= 1,
            "accepted message {id} never reached the emulator"
        );
    }
    assert_eq!(stats.window_violations, 0);

    // Clean shutdown: SIGTERM -> exit 0.
    let pid = child.id().unwrap();
    let kill = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "SIGTERM must end in exit 0, got {status:?}"
    );
    emu.shutdown().await;
}
