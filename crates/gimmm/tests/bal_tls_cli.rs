//! TLS for BALs from the command line (SPEC §11, issue 12 point 4): a
//! `gimmm serve` child with `bal.tls_cert_file` / `bal.tls_key_file` (a CA
//! and a server certificate for localhost / 127.0.0.1, generated with
//! rcgen), `gimmm send --tls --ca-file` and `gimmm listen --tls --ca-file`
//! against it, the clients' refusals (no CA, no TLS), and `check-config` on
//! a certificate and a key that do not belong together.
#![allow(clippy::unwrap_used)]

use emulator::{Emulator, EmulatorConfig, TlsIdentity};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use testkit::{emulator_config, ChildGateway, ChildOpts};
use tokio::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_gimmm");
const SESSION: &str = "com.example.app";
const TOKEN: &str = "tls-cli-token";
const WAIT: Duration = Duration::from_secs(60);

/// Writes `id`'s chain, key and CA to `dir`: (cert, key, ca).
fn write_identity(dir: &Path, id: &TlsIdentity, prefix: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(format!("{prefix}-{n}.pem"));
    let (cert, key, ca) = (p("cert"), p("key"), p("ca"));
    std::fs::write(&cert, &id.cert_chain_pem).unwrap();
    std::fs::write(&key, &id.key_pem).unwrap();
    std::fs::write(&ca, &id.ca_pem).unwrap();
    (cert, key, ca)
}

fn localhost() -> TlsIdentity {
    TlsIdentity::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap()
}

async fn gimmm(args: &[&str]) -> Output {
    let run = Command::new(EXE)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("GIMMM_CONFIG")
        .env_remove("GIMMM_SERVER")
        .env_remove("GIMMM_SESSION")
        .env_remove("GIMMM_TOKEN")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("gimmm did not exit")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_listen_over_tls_to_a_child_gateway() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = write_identity(dir.path(), &localhost(), "bal");
    let mut cfg = emulator_config(&emu, dir.path(), &[(SESSION, TOKEN)]).unwrap();
    cfg.bal.tls_cert_file = Some(cert);
    cfg.bal.tls_key_file = Some(key);
    let gw = ChildGateway::spawn(&cfg, ChildOpts::new(EXE).dir(dir.path()))
        .await
        .unwrap();
    let server = gw.bal_addr().to_string();
    let ca = ca.to_str().unwrap();
    let conn = ["--server", &server, "--session", SESSION, "--token", TOKEN];

    // --wait: the final result, over TLS with the private CA.
    let send = |id: &'static str, wait: bool| {
        let mut args: Vec<&str> = vec!["send"];
        args.extend(conn);
        args.extend([
            "--tls",
            "--ca-file",
            ca,
            "--to",
            "dev-tls",
            "--message-id",
            id,
        ]);
        if wait {
            args.push("--wait");
        }
        args
    };
    let out = gimmm(&send("cli-tls-1", true)).await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "send failed: {stdout}{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("DOWNSTREAM_ACCEPTED"), "{stdout}");
    assert!(
        stdout.contains("DOWNSTREAM_ACK") && stdout.contains("cli-tls-1"),
        "{stdout}"
    );
    assert_eq!(emu.stats().msg("cli-tls-1").acked, 1);

    // Without --wait the result stays for the session: `listen` gets it.
    let out = gimmm(&send("cli-tls-2", false)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut args: Vec<&str> = vec!["listen"];
    args.extend(conn);
    args.extend(["--tls", "--ca-file", ca, "--count", "1"]);
    let out = gimmm(&args).await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "listen: {stdout}{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("DOWNSTREAM_ACK") && stdout.contains("cli-tls-2"),
        "{stdout}"
    );

    // Refusals: the private CA not trusted; plain TCP on a TLS port;
    // --ca-file without --tls.
    let mut args: Vec<&str> = vec!["send"];
    args.extend(conn);
    args.extend(["--tls", "--to", "dev-tls"]);
    let out = gimmm(&args).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&server) && stderr.contains("certificate"),
        "{stderr}"
    );
    let mut args: Vec<&str> = vec!["send"];
    args.extend(conn);
    args.extend(["--to", "dev-tls"]);
    let out = gimmm(&args).await;
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let mut args: Vec<&str> = vec!["send"];
    args.extend(conn);
    args.extend(["--ca-file", ca, "--to", "dev-tls"]);
    let out = gimmm(&args).await;
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--tls"),
        "{stderr}"
    );

    // The gateway took none of this badly.
    assert_eq!(
        gw.stderr().matches("panicked").count(),
        0,
        "{}",
        gw.stderr()
    );
    let out = gimmm(&send("cli-tls-3", true)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(gw);
    emu.shutdown().await;
}

#[tokio::test]
async fn check_config_names_the_file_of_a_bad_certificate_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _, _) = write_identity(dir.path(), &localhost(), "a");
    let (_, other_key, _) = write_identity(dir.path(), &localhost(), "b");
    let key_pem = std::fs::read_to_string(&other_key).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap().to_string();
    let write = |body: String| {
        let p = dir.path().join("g.toml");
        std::fs::write(
            &p,
            format!("{body}[[bal.sessions]]\nsession_id = \"a\"\ntoken = \"t\"\n"),
        )
        .unwrap();
        p
    };
    let cases = [
        // A key that is not the certificate's.
        (
            cert.clone(),
            other_key.clone(),
            "bal.tls_key_file",
            &other_key,
        ),
        // A key where the certificate should be.
        (
            other_key.clone(),
            other_key.clone(),
            "bal.tls_cert_file",
            &other_key,
        ),
        // A missing file.
        (
            cert.clone(),
            dir.path().join("missing-key.pem"),
            "bal.tls_key_file",
            &dir.path().join("missing-key.pem"),
        ),
    ];
    for (c, k, want_key, want_file) in cases {
        let p = write(format!(
            "[bal]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            c.display().to_string(),
            k.display().to_string()
        ));
        let out = gimmm(&["check-config", p.to_str().unwrap()]).await;
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{want_key}: {}", text(&out.stdout));
        assert!(
            stderr.contains(want_key) && stderr.contains(&want_file.display().to_string()),
            "{want_key}: {stderr}"
        );
        assert!(
            !stderr.contains(&key_line) && !stderr.contains("BEGIN"),
            "key material on stderr: {stderr}"
        );
    }
    // Only one of the two.
    let p = write(format!(
        "[bal]\ntls_cert_file = {:?}\n",
        cert.display().to_string()
    ));
    let out = gimmm(&["check-config", p.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bal.tls_key_file"),
        "{}",
        text(&out.stderr)
    );
    // The right pair passes.
    let (cert, key, _) = write_identity(dir.path(), &localhost(), "c");
    let p = write(format!(
        "[bal]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    ));
    let out = gimmm(&["check-config", p.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("over TLS"),
        "{}",
        text(&out.stdout)
    );
}
