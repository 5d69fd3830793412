//! `examples/python_bal.py` against a running gateway (issue 4): an
//! emulator and a `gateway::Gateway` run in-process, the example runs as
//! `python3 examples/python_bal.py --once ...` and must print its
//! DOWNSTREAM_ACK, ACK it, and exit 0; a second test makes it start before
//! the gateway is up and lose its connection mid-flight, so it has to
//! reconnect with backoff and still finish. `examples/python_ingress.py`
//! (the app side of SPEC §10, shown in the README) posts over HTTPS to the
//! ingress of an in-process gateway.
//! Another runs it with `--tls` against a gateway with TLS on its BAL
//! listener (SPEC §11): refused without the private CA, served with
//! `--ca-file`.
#![allow(clippy::unwrap_used)]

use emulator::{Emulator, EmulatorConfig, Faults, TlsIdentity};
use gateway::config::Config;
use gateway::Gateway;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use testkit::{emulator_config, in_process, Relay};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/python_bal.py");
const SESSION: &str = "com.example.app";
const TOKEN: &str = "py-token";
const WAIT: Duration = Duration::from_secs(60);

fn config(dir: &Path, emu: &Emulator) -> Config {
    let mut cfg = emulator_config(emu, dir, &[(SESSION, TOKEN)]).unwrap();
    cfg.retry.max_ms = 200;
    cfg.admin.listen = String::new();
    cfg
}

async fn gateway(cfg: &Config, emu: &Emulator) -> Gateway {
    in_process(cfg, emu).await.unwrap()
}

/// A running example; its stdout and stderr lines arrive on one channel,
/// stderr ones prefixed with `!`.
struct Py {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

fn python(bal: SocketAddr, extra: &[&str]) -> Py {
    let mut child = Command::new("python3")
        .arg(EXAMPLE)
        .arg("--once")
        .args(extra)
        .arg(bal.to_string())
        .args([SESSION, TOKEN, "python-device-1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is needed to run examples/python_bal.py (CI installs it)");
    let (tx, lines) = mpsc::unbounded_channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let t = tx.clone();
    tokio::spawn(async move {
        let mut l = BufReader::new(out).lines();
        while let Ok(Some(x)) = l.next_line().await {
            let _ = t.send(x);
        }
    });
    tokio::spawn(async move {
        let mut l = BufReader::new(err).lines();
        while let Ok(Some(x)) = l.next_line().await {
            let _ = tx.send(format!("!{x}"));
        }
    });
    Py {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Py {
    /// Waits for a line containing `needle`.
    async fn wait_line(&mut self, needle: &str) -> String {
        loop {
            match tokio::time::timeout(WAIT, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                _ => panic!(
                    "no line with {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for exit; returns the status and every line (stderr ones
    /// prefixed with `!`).
    async fn exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("python_bal.py did not exit")
            .unwrap();
        while let Some(l) = self.lines.recv().await {
            self.seen.push(l);
        }
        (status, self.seen)
    }

    /// Waits for exit; returns (success, every stdout line).
    async fn finish(self) -> (bool, Vec<String>) {
        let (status, seen) = self.exit().await;
        assert!(
            status.success(),
            "python_bal.py exited with {status:?}:\n{}",
            seen.join("\n")
        );
        let out = seen.into_iter().filter(|l| !l.starts_with('!')).collect();
        (status.success(), out)
    }
}

fn parse(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Waits until the gateway holds nothing for the session: the example
/// ACKed every sequenced message it printed.
async fn wait_all_acked(gw: &Gateway) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = gw.snapshot().await.unwrap();
        let sess = s.sessions.iter().find(|x| x.session_id == SESSION).unwrap();
        if sess.queued == 0 && sess.unacked == 0 && !sess.spilled {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the example left messages unacked: {sess:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_sends_and_gets_its_ack() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&config(dir.path(), &emu), &emu).await;
    let py = python(gw.bal_addr, &[]);
    let (_, out) = py.finish().await;
    let msgs: Vec<serde_json::Value> = out.iter().map(|l| parse(l)).collect();
    let types: Vec<&str> = msgs
        .iter()
        .map(|m| m["message_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"LOGON_RESPONSE"), "{out:?}");
    let ack = msgs
        .iter()
        .find(|m| m["message_type"] == "DOWNSTREAM_ACK")
        .unwrap_or_else(|| panic!("no DOWNSTREAM_ACK printed: {out:?}"));
    let id = ack["message_id"].as_str().unwrap();
    assert!(id.starts_with("py-"), "{ack}");
    assert!(types.contains(&"DOWNSTREAM_ACCEPTED"), "{out:?}");
    assert_eq!(emu.stats().msg(id).acked, 1);
    wait_all_acked(&gw).await;
    gw.stop().await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_reconnects_with_backoff() {
    // Acks are slow, so the message is still in flight when the gateway
    // goes away under the example.
    let emu = Emulator::start(EmulatorConfig {
        faults: Faults {
            ack_delay: Duration::from_millis(3000),
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &emu);
    // No shutdown grace: the gateway goes away with the message still in
    // flight (with a grace it would wait for the answer and hand the
    // example its result before closing, SPEC §11).
    cfg.fcm.shutdown_grace_secs = 0;
    // The example knows one address; each gateway binds a new port, so a
    // relay on a fixed address forwards to the current one.
    let relay = Relay::start().await.unwrap();

    // No gateway yet (the relay closes every connection): the example retries.
    let mut py = python(relay.addr(), &["--ping", "0.2"]);
    py.wait_line("!connection lost").await;
    let gw = gateway(&cfg, &emu).await;
    relay.set_target(Some(gw.bal_addr));
    py.wait_line("DOWNSTREAM_ACCEPTED").await;
    py.wait_line("PONG").await;

    // The gateway stops (the connection drops) and comes back on the same
    // store: the stored message's result reaches the reconnected example.
    relay.set_target(None);
    gw.stop().await;
    py.wait_line("!connection lost").await;
    let gw = gateway(&cfg, &emu).await;
    relay.set_target(Some(gw.bal_addr));
    let (_, out) = py.finish().await;
    let acks: Vec<serde_json::Value> = out
        .iter()
        .map(|l| parse(l))
        .filter(|m| m["message_type"] == "DOWNSTREAM_ACK")
        .collect();
    assert_eq!(acks.len(), 1, "{out:?}");
    let logons = out.iter().filter(|l| l.contains("LOGON_RESPONSE")).count();
    assert!(logons >= 2, "it must have logged on again: {out:?}");
    let accepted = out
        .iter()
        .filter(|l| l.contains("DOWNSTREAM_ACCEPTED"))
        .count();
    assert_eq!(
        accepted, 1,
        "an accepted message is not sent again: {out:?}"
    );
    let id = acks[0]["message_id"].as_str().unwrap();
    assert!(emu.stats().msg(id).acked >= 1);
    wait_all_acked(&gw).await;
    gw.stop().await;
    emu.shutdown().await;
}

const INGRESS_EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/python_ingress.py"
);

/// Runs `examples/python_ingress.py` with `args`; (exit success, stdout).
async fn python_ingress(args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        WAIT,
        Command::new("python3")
            .arg(INGRESS_EXAMPLE)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python_ingress.py did not exit")
    .expect("python3 is needed to run examples/python_ingress.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// The README's app side of "Upstream without XMPP" (issue 11): the
/// example posts over HTTPS trusting the test CA, the BAL receives its
/// UPSTREAM; the same message id again is answered 200 duplicate and not
/// delivered again; a wrong key is a 401 and exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ingress_example_posts_once_over_https() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = testkit::TestCa::generate(dir.path()).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let mut cfg = config(dir.path(), &emu);
    testkit::ingress_config(&mut cfg, Some(&ca), &["py-app-key-000001"]);
    let gw = gateway(&cfg, &emu).await;
    let mut probe = testkit::BalProbe::new(SESSION, TOKEN);
    probe.connect(gw.bal_addr).await.unwrap();
    let url = format!("https://127.0.0.1:{}", gw.ingress_addr.unwrap().port());
    let ca_arg = ca_file.to_str().unwrap();
    let args = [
        url.as_str(),
        SESSION,
        "py-app-key-000001",
        "python-device-1",
        "--ca-file",
        ca_arg,
        "--message-id",
        "py-up-1",
        "text=hi there",
        "n=1",
    ];
    let (ok, out) = python_ingress(&args).await;
    assert!(ok, "{out}");
    assert_eq!(out, r#"202 {"message_id": "py-up-1"}"#);
    let (ok, out) = python_ingress(&args).await;
    assert!(ok, "{out}");
    assert_eq!(out, r#"200 {"message_id": "py-up-1", "duplicate": true}"#);
    let mut wrong = args;
    wrong[2] = "not-the-key";
    let (ok, out) = python_ingress(&wrong).await;
    assert!(!ok && out.starts_with("401 "), "{out}");
    probe
        .wait_until("py-up-1", WAIT, |l| l.upstream.contains_key("py-up-1"))
        .await
        .unwrap();
    // A second message shows the first was delivered once, not twice.
    let mut next = args;
    next[7] = "py-up-2";
    assert!(python_ingress(&next).await.0);
    probe
        .wait_until("py-up-2", WAIT, |l| l.upstream.contains_key("py-up-2"))
        .await
        .unwrap();
    let seen = probe.snapshot();
    assert_eq!(seen.upstream_lines("py-up-1"), 1);
    seen.assert_each_delivered_once();
    gw.stop().await;
    emu.shutdown().await;
}

/// `examples/python_bal.py --tls`: refused without the private CA, served
/// with `--ca-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_over_tls() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A private CA and a certificate for localhost / 127.0.0.1.
    let id = TlsIdentity::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let mut cfg = config(dir.path(), &emu);
    cfg.bal.tls_cert_file = Some(file("bal-cert.pem", &id.cert_chain_pem));
    cfg.bal.tls_key_file = Some(file("bal-key.pem", &id.key_pem));
    let ca = file("bal-ca.pem", &id.ca_pem);
    let gw = gateway(&cfg, &emu).await;

    // The system CAs alone do not know the private CA: the example says so
    // and stops (retrying would not help).
    let (status, seen) = python(gw.bal_addr, &["--tls"]).exit().await;
    assert_eq!(status.code(), Some(1), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("!TLS:") && l.contains("certificate verify failed")),
        "{seen:?}"
    );

    let py = python(gw.bal_addr, &["--tls", "--ca-file", ca.to_str().unwrap()]);
    let (_, out) = py.finish().await;
    let ack = out
        .iter()
        .map(|l| parse(l))
        .find(|m| m["message_type"] == "DOWNSTREAM_ACK")
        .unwrap_or_else(|| panic!("no DOWNSTREAM_ACK printed: {out:?}"));
    let msg_id = ack["message_id"].as_str().unwrap();
    assert_eq!(emu.stats().msg(msg_id).acked, 1);
    wait_all_acked(&gw).await;
    gw.stop().await;
    emu.shutdown().await;
}
