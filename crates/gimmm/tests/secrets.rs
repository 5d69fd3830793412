//! Secrets never reach the logs, and logging is configurable (issue 4):
//! `gimmm serve` runs as a child with `RUST_LOG=debug --log-format json`
//! against an in-process emulator with a distinctive server key; a message
//! goes through `gimmm send --wait`, an upstream message is delivered, a LOGON
//! with a wrong token and an admin call with a wrong bearer token fail, and
//! the ingress (SPEC §10, HTTPS) takes a key, a wrong key, a JWT and a forged
//! one; after SIGTERM neither the key (nor its SASL form) nor any token, key
//! or JWT is anywhere in the child's output, and every log line is JSON.
#![allow(clippy::unwrap_used)]

use bal::BalClient;
use emulator::{Emulator, EmulatorConfig};
use gateway::config::{Config, Secret};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use testkit::{emulator_config, http_get, ChildGateway, ChildOpts};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(60);
const SERVER_KEY: &str = "SRVKEY-9d41c7e2b5f0";
const TOKEN_APP: &str = "TOKAPP-51c0ffee77aa";
const TOKEN_OTHER: &str = "TOKOTHER-8e3b1d44c2";
const WRONG_TOKEN: &str = "WRONGTOK-2f6a90d1e3";
const ADMIN_TOKEN: &str = "ADMTOK-a7c3e5f1b9d2";
const WRONG_ADMIN_TOKEN: &str = "BADADM-04d6e8a2c1";
const INGRESS_KEY: &str = "INGKEY-3b7d9f1a5c2e";
const WRONG_INGRESS_KEY: &str = "BADING-6e2a4c8f0b1d";

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The test config: the server key only in a file, two sessions, the admin
/// token only in the environment (see [`serve`]).
fn config(dir: &Path, emu: &Emulator) -> Config {
    let key = dir.join("fcm.key");
    std::fs::write(&key, format!("{SERVER_KEY}\n")).unwrap();
    let mut cfg = emulator_config(
        emu,
        dir,
        &[
            ("com.example.app", TOKEN_APP),
            ("com.example.other", TOKEN_OTHER),
        ],
    )
    .unwrap();
    cfg.fcm.server_key = Secret::default();
    cfg.fcm.server_key_file = Some(key);
    cfg
}

/// [`config`] plus the ingress over HTTPS with a key and a JWKS (the
/// signer's tokens are secrets too).
fn with_ingress(cfg: &mut Config, dir: &Path, signer: &testkit::jwt::Signer) -> testkit::TestCa {
    let ca = testkit::TestCa::generate(dir).unwrap();
    testkit::ingress_config(cfg, Some(&ca), &[INGRESS_KEY]);
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, testkit::jwt::jwks(&[signer]).to_string()).unwrap();
    let s = &mut cfg.bal.sessions[0];
    s.ingress_jwks_file = Some(jwks);
    s.ingress_issuer = "https://auth.example.com".into();
    s.ingress_audience = "gimmm".into();
    ca
}

/// `gimmm [args] serve` with its output collected.
async fn serve(cfg: &Config, dir: &Path, args: &[&str], rust_log: &str) -> ChildGateway {
    let mut opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm"))
        .dir(dir)
        .rust_log(rust_log)
        .env("GIMMM_ADMIN__TOKEN", ADMIN_TOKEN)
        .env_remove("GIMMM_LOG_FORMAT");
    for a in args {
        opts = opts.arg(a);
    }
    ChildGateway::spawn(cfg, opts).await.unwrap()
}

/// SIGTERM, expect exit 0 and the addresses announced on stdout, return
/// (stdout, stderr).
async fn terminate(mut gw: ChildGateway) -> (String, String) {
    let ports = gw.ports();
    let status = gw.term().await.unwrap();
    let (out, err) = (gw.stdout(), gw.stderr());
    assert!(
        status.success(),
        "SIGTERM must end in exit 0: {status:?}\n{err}"
    );
    assert!(
        out.contains(&format!("gimmm serving BALs on {}\n", ports.bal)),
        "{out}"
    );
    let admin = ports.admin.unwrap();
    assert!(
        out.contains(&format!("admin http on http://{admin} ")),
        "{out}"
    );
    (out, err)
}

async fn http_status(addr: SocketAddr, path: &str, token: &str) -> u16 {
    http_get(addr, path, Some(token)).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_debug_json_logs() {
    let emu = Emulator::start(EmulatorConfig {
        server_key: SERVER_KEY.into(),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &emu);
    let signer = testkit::jwt::Signer::ec("k1").unwrap();
    let ca = with_ingress(&mut cfg, dir.path(), &signer);
    let served = serve(&cfg, dir.path(), &["--log-format", "json"], "debug").await;

    // The ingress: a key, a wrong key, a JWT, a forged one.
    let ingress = testkit::IngressClient::tls(
        served.ingress_addr().unwrap(),
        ca.ca_pem.as_bytes(),
        "127.0.0.1",
    )
    .unwrap();
    let jwt = signer.sign(&testkit::jwt::claims(
        "https://auth.example.com",
        "gimmm",
        "user-1",
    ));
    let forged = testkit::jwt::tamper(
        &jwt,
        &testkit::jwt::claims("https://auth.example.com", "gimmm", "admin"),
    );
    for (i, (cred, want)) in [
        (INGRESS_KEY, 202),
        (WRONG_INGRESS_KEY, 401),
        (jwt.as_str(), 202),
        (forged.as_str(), 401),
    ]
    .into_iter()
    .enumerate()
    {
        let body = testkit::upstream_body("com.example.app", &format!("sec-{i}"), "d");
        let r = ingress.post_json(Some(cred), &body).await.unwrap();
        assert_eq!(r.status, want, "{r:?}");
    }

    // One message end to end with `gimmm send --wait` (token from the env).
    let send = tokio::time::timeout(
        WAIT,
        Command::new(env!("CARGO_BIN_EXE_gimmm"))
            .args(["send", "--server", &served.bal_addr().to_string()])
            .args(["--session", "com.example.app", "--to", "device-secret-1"])
            .args(["--data", "k=v", "--wait", "--timeout", "50"])
            .env("GIMMM_TOKEN", TOKEN_APP)
            .env_remove("RUST_LOG")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let send_out = String::from_utf8_lossy(&send.stdout).into_owned();
    assert!(
        send.status.success(),
        "gimmm send failed: {send_out} {}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(send_out.contains("DOWNSTREAM_ACK"), "{send_out}");

    // An upstream message to the other session.
    let mut other = BalClient::connect_logon(served.bal_addr(), "com.example.other", TOKEN_OTHER)
        .await
        .unwrap();
    let mut data = serde_json::Map::new();
    data.insert("hello".into(), "world".into());
    emu.send_upstream("device-up-1", "com.example.other", data);
    let m = tokio::time::timeout(WAIT, other.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(m, bal::ToBal::Upstream { .. }), "{m:?}");
    other.ack(m.sequence_id().unwrap()).await.unwrap();

    // A refused LOGON.
    match BalClient::connect_logon(served.bal_addr(), "com.example.app", WRONG_TOKEN).await {
        Err(bal::ClientError::LogonRefused(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a wrong token was accepted"),
    }
    // The admin API with a wrong and a right bearer token.
    let admin = served.admin_addr().unwrap();
    assert_eq!(
        http_status(admin, "/api/v1/sessions", WRONG_ADMIN_TOKEN).await,
        401
    );
    assert_eq!(
        http_status(admin, "/api/v1/sessions", ADMIN_TOKEN).await,
        200
    );
    drop(other);

    let (stdout, stderr) = terminate(served).await;
    emu.shutdown().await;

    assert_eq!(
        [base64(b"\0ab"), base64(b"ab"), base64(b"a")],
        ["AGFi", "YWI=", "YQ=="]
    );
    let sasl = base64(format!("\0{}@fcm.googleapis.com\0{SERVER_KEY}", "123456789012").as_bytes());
    for (what, secret) in [
        ("server key", SERVER_KEY),
        ("SASL PLAIN payload", sasl.as_str()),
        ("session token", TOKEN_APP),
        ("session token", TOKEN_OTHER),
        ("wrong token", WRONG_TOKEN),
        ("admin token", ADMIN_TOKEN),
        ("wrong admin token", WRONG_ADMIN_TOKEN),
        ("ingress key", INGRESS_KEY),
        ("wrong ingress key", WRONG_INGRESS_KEY),
        ("JWT", jwt.as_str()),
        ("JWT signature", jwt.rsplit('.').next().unwrap()),
        ("forged JWT", forged.as_str()),
    ] {
        assert!(!stdout.contains(secret), "{what} in stdout:\n{stdout}");
        assert!(!stderr.contains(secret), "{what} in the log:\n{stderr}");
        assert!(!send_out.contains(secret), "{what} in gimmm send's output");
    }

    // Every log line is one JSON object; RUST_LOG=debug let debug through.
    let mut levels = std::collections::BTreeSet::new();
    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        levels.insert(v["level"].as_str().unwrap().to_string());
        assert!(v["target"].is_string(), "{line}");
        if let Some(m) = v["fields"]["message"].as_str() {
            messages.push(m.to_string());
        }
    }
    assert!(
        levels.contains("DEBUG"),
        "no debug line with RUST_LOG=debug: {levels:?}"
    );
    assert!(levels.contains("INFO"), "{levels:?}");
    let tls_key = std::fs::read_to_string(&ca.key_file).unwrap();
    let key_body = tls_key.lines().nth(1).unwrap();
    assert!(!stderr.contains(key_body) && !stdout.contains(key_body));
    for expected in [
        "gimmm gateway started",
        "BAL logon refused",
        "upstream ingress listening",
        "ingress: credentials refused",
        "bye",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "no {expected:?} in the log: {messages:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_filters_and_human_format_is_default() {
    let emu = Emulator::start(EmulatorConfig {
        server_key: SERVER_KEY.into(),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu);
    // Only the gateway crate, at info: gimmm's own "bye" and every debug
    // line are filtered out.
    let served = serve(&cfg, dir.path(), &[], "gateway=info").await;
    let (_, stderr) = terminate(served).await;
    emu.shutdown().await;
    assert!(stderr.contains("gimmm gateway started"), "{stderr}");
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains("DEBUG"), "{stderr}");
    assert!(
        !stderr.contains("bye"),
        "gimmm's target must be filtered: {stderr}"
    );
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "human format by default, got JSON: {line}"
        );
    }
    assert!(!stderr.contains(SERVER_KEY) && !stderr.contains(TOKEN_APP));
}

/// The HTTP v1 link (SPEC §8.4): `gimmm serve` at debug level against the
/// HTTP v1 emulator, with short-lived access tokens (background refreshes),
/// revoked tokens (a 401 and a refresh on the send path's behalf), a
/// failing token endpoint for a while, and messages throughout. Neither the
/// private key (its PEM body), nor an access token, nor a JWT assertion
/// ever appears in the child's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_key_tokens_and_jwts_never_appear_in_debug_logs() {
    use emulator::v1::{V1Config, V1Emulator, V1Faults};
    let dir = tempfile::tempdir().unwrap();
    let emu = V1Emulator::start(V1Config {
        faults: V1Faults {
            token_lifetime_secs: Some(2),
            ..V1Faults::default()
        },
        ..V1Config::default()
    })
    .await
    .unwrap();
    let mut cfg =
        testkit::v1_emulator_config(&emu, dir.path(), &[("com.example.app", TOKEN_APP)]).unwrap();
    // The default retry pacing, as in production.
    cfg.retry = Config::default().retry;
    let sa = cfg.fcm.service_account_file.clone().unwrap();
    let served = serve(&cfg, dir.path(), &[], "debug").await;
    let send = |to: &'static str| {
        let bal = served.bal_addr().to_string();
        async move {
            let out = tokio::time::timeout(
                WAIT,
                Command::new(env!("CARGO_BIN_EXE_gimmm"))
                    .args(["send", "--server", &bal, "--session", "com.example.app"])
                    .args(["--to", to, "--data", "k=v", "--wait", "--timeout", "50"])
                    .env("GIMMM_TOKEN", TOKEN_APP)
                    .env_remove("RUST_LOG")
                    .output(),
            )
            .await
            .unwrap()
            .unwrap();
            let o = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success() && o.contains("DOWNSTREAM_ACK"), "{o}");
        }
    };
    send("device-v1-1").await;
    // A refused token: 401, refresh, resend.
    emu.revoke_tokens();
    send("device-v1-2").await;
    // Background refreshes of 2-second tokens.
    match emu
        .wait_until(WAIT, |s| s.tokens_issued >= 4 && s.unauthenticated >= 1)
        .await
    {
        Ok(_) => {}
        Err(s) => panic!("no refreshes: {s:#?}"),
    }
    // A failing token endpoint for a while, then a message again.
    emu.set_faults(V1Faults {
        token_lifetime_secs: Some(2),
        token_endpoint_error: Some(400),
        ..V1Faults::default()
    })
    .unwrap();
    match emu.wait_until(WAIT, |s| s.tokens_refused >= 1).await {
        Ok(_) => {}
        Err(s) => panic!("no refused token request: {s:#?}"),
    }
    emu.set_faults(V1Faults::default()).unwrap();
    send("device-v1-3").await;
    let (stdout, stderr) = terminate(served).await;
    emu.shutdown().await;

    let key_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sa).unwrap()).unwrap();
    let pem = key_file["private_key"].as_str().unwrap();
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(body.len() > 10, "the key's PEM body");
    for line in &body {
        assert!(
            !stderr.contains(line),
            "a line of the private key is in the log"
        );
        assert!(
            !stdout.contains(line),
            "a line of the private key is in stdout"
        );
    }
    for (what, needle) in [
        ("a PEM armour", "PRIVATE KEY"),
        // The emulator's access tokens all start so.
        ("an access token", "ya29."),
        // A JWT's header is base64url JSON: `{"` → `eyJ`.
        ("a JWT", "eyJ"),
        ("the session token", TOKEN_APP),
    ] {
        assert!(!stderr.contains(needle), "{what} in the log:\n{stderr}");
        assert!(!stdout.contains(needle), "{what} in stdout:\n{stdout}");
    }
    // The log did run at debug level and did see the token traffic.
    assert!(stderr.contains("DEBUG"), "not at debug level");
    assert!(stderr.contains("FCM access token fetched"), "{stderr}");
    assert!(stderr.contains("refused the access token"), "{stderr}");
}
