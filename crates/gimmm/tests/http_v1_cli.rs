//! The HTTP v1 link from the command line (SPEC §8.1): `gimmm serve` with
//! `GIMMM_FCM__API=http_v1` and no credentials runs the in-process v1
//! emulator and `gimmm send --wait` gets a DOWNSTREAM_ACK with
//! `fcm_data.name`; `gimmm check-config` says which link and project it
//! will use, and refuses each bad key file naming the problem, never the key.
#![allow(clippy::unwrap_used)]

use emulator::v1::{V1Config, V1Emulator};
use gateway::config::{Config, SessionConfig};
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use testkit::{ChildGateway, ChildOpts};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config with no FCM credentials at all.
fn bare_config(dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.bal.listen = "127.0.0.1:0".into();
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.store.path = dir.join("gimmm.db");
    cfg.bal.sessions = vec![SessionConfig::new("com.example.app", "dev-token")];
    cfg
}

async fn send_wait(bal: std::net::SocketAddr, to: &str) -> Output {
    tokio::time::timeout(
        WAIT,
        Command::new(env!("CARGO_BIN_EXE_gimmm"))
            .args(["send", "--server", &bal.to_string()])
            .args(["--session", "com.example.app", "--token", "dev-token"])
            .args(["--to", to, "--data", "k=v", "--wait", "--timeout", "30"])
            .env_remove("RUST_LOG")
            .output(),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_api_http_v1_and_no_credentials_uses_the_in_process_v1_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bare_config(dir.path());
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm"))
        .dir(dir.path())
        .rust_log("info")
        .env("GIMMM_FCM__API", "http_v1")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS");
    let mut gw = ChildGateway::spawn(&cfg, opts).await.unwrap();
    let out = send_wait(gw.bal_addr(), "device-cli-1").await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.contains("DOWNSTREAM_ACK"))
        .unwrap_or_else(|| panic!("no DOWNSTREAM_ACK: {stdout}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let name = v["fcm_data"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("projects/gimmm-emulator/messages/"),
        "{line}"
    );
    assert_eq!(v["fcm_data"]["from"], "device-cli-1");
    let status = gw.term().await.unwrap();
    assert!(status.success(), "{status:?}");
    let log = gw.stderr();
    assert!(
        log.contains("IN-PROCESS FCM HTTP v1 EMULATOR"),
        "not announced loudly: {log}"
    );
    assert!(log.contains("HTTP v1"), "{log}");
}

fn check_config(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_gimmm"));
    c.arg("check-config")
        .arg(path)
        .env_remove("RUST_LOG")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

const SESSION: &str = "[[bal.sessions]]\nsession_id = \"a\"\ntoken = \"t\"\n";

/// One line from the middle of the key's PEM body.
fn pem_line(sa_json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(sa_json).unwrap();
    v["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(3)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn check_config_names_the_link_and_the_project_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let sa = dir.path().join("sa.json");
    let emu = V1Emulator::start(V1Config {
        service_account_out: Some(sa.clone()),
        project_id: "cli-proj".into(),
        ..V1Config::default()
    })
    .await
    .unwrap();
    let secret = pem_line(emu.service_account_json());
    let write = |name: &str, body: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let sa_line = format!("service_account_file = {:?}\n", sa.display().to_string());

    // The key file's project.
    let p = write("v1.toml", format!("{SESSION}[fcm]\n{sa_line}"));
    let out = check_config(&p, &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("FCM HTTP v1 at https://fcm.googleapis.com"),
        "{stdout}"
    );
    assert!(
        stdout.contains("for project cli-proj (from the key file)"),
        "{stdout}"
    );
    assert!(stdout.contains(emu.client_email()), "{stdout}");
    assert!(stdout.contains("fcm.service_account_file"), "{stdout}");
    assert!(
        !stdout.contains(&secret) && !stdout.contains("PRIVATE KEY"),
        "{stdout}"
    );

    // fcm.project_id wins; the file may come from the environment.
    let p = write(
        "v1b.toml",
        format!("{SESSION}[fcm]\napi = \"http_v1\"\nproject_id = \"other-proj\"\n"),
    );
    let out = check_config(
        &p,
        &[("GOOGLE_APPLICATION_CREDENTIALS", sa.to_str().unwrap())],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("for project other-proj (fcm.project_id)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{stdout}"
    );

    // No credentials with api = http_v1: the in-process emulator.
    let p = write("v1c.toml", format!("{SESSION}[fcm]\napi = \"http_v1\"\n"));
    let out = check_config(&p, &[]);
    assert!(
        text(&out.stdout).contains("in-process HTTP v1 emulator"),
        "{}",
        text(&out.stdout)
    );
    // The XMPP example still says XMPP.
    let p = write(
        "x.toml",
        format!("{SESSION}[fcm]\nsender_id = \"1\"\nserver_key = \"SRVKEY-zz\"\n"),
    );
    let out = check_config(&p, &[]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FCM XMPP (CCS)") && !stdout.contains("SRVKEY-zz"),
        "{stdout}"
    );

    // Bad key files and a double configuration: refused, named, no key.
    let good: serde_json::Value = serde_json::from_str(emu.service_account_json()).unwrap();
    let mut no_key = good.clone();
    no_key.as_object_mut().unwrap().remove("private_key");
    let mut not_rsa = good.clone();
    not_rsa["private_key"] = rcgen_ec_pem().into();
    let mut not_sa = good.clone();
    not_sa["type"] = "authorized_user".into();
    let json = emu.service_account_json().to_string();
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (dir.path().join("absent.json"), "cannot read"),
        (
            write("half.json", json[..json.len() / 2].to_string()),
            "not JSON",
        ),
        (
            write("nokey.json", no_key.to_string()),
            "no \"private_key\"",
        ),
        (
            write("ec.json", not_rsa.to_string()),
            "not an RSA private key",
        ),
        (write("user.json", not_sa.to_string()), "authorized_user"),
    ];
    for (key, want) in cases {
        let p = write(
            "bad.toml",
            format!(
                "{SESSION}[fcm]\nservice_account_file = {:?}\n",
                key.display().to_string()
            ),
        );
        let out = check_config(&p, &[]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{want}: accepted");
        assert!(
            stderr.contains("fcm.service_account_file") && stderr.contains(want),
            "{want}: {stderr}"
        );
        assert!(
            !stderr.contains(&secret) && !stderr.contains("BEGIN"),
            "{stderr}"
        );
        assert!(!text(&out.stdout).contains(&secret));
    }
    let p = write(
        "both.toml",
        format!("{SESSION}[fcm]\n{sa_line}sender_id = \"1\"\nserver_key = \"k\"\n"),
    );
    let out = check_config(&p, &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("fcm.service_account_file") && stderr.contains("fcm.server_key"),
        "{stderr}"
    );
    emu.shutdown().await;
}

/// An EC key in PEM (not RSA), generated.
fn rcgen_ec_pem() -> String {
    // The emulator's TLS identity is an EC key: reuse its generator.
    emulator::TlsIdentity::generate(&["localhost".to_string()])
        .unwrap()
        .key_pem
}
