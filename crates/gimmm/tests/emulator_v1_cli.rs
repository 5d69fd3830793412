//! `gimmm emulator --api http-v1` (SPEC §9, command line): start-up facts,
//! the files it writes, serving over TLS, the stats endpoint, flag checks.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use xmpp::connect::{Connector, DirectTls};

const T: Duration = Duration::from_secs(20);

async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
    request: String,
) -> String {
    io.write_all(request.as_bytes()).await.unwrap();
    io.flush().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, io.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http_v1_emulator_starts_writes_its_files_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let sa = dir.path().join("sa.json");
    let ca = dir.path().join("ca.pem");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .args(["emulator", "--api", "http-v1", "--listen", "127.0.0.1:0"])
        .args(["--stats-listen", "127.0.0.1:0", "--project-id", "cli-proj"])
        .arg("--service-account-out")
        .arg(&sa)
        .arg("--ca-out")
        .arg(&ca)
        .args(["--latency-ms", "1", "--max-concurrent-streams", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    // Fault lines come last, SETTINGS_MAX_CONCURRENT_STREAMS last of them.
    while !got
        .iter()
        .any(|l: &String| l.contains("MAX_CONCURRENT_STREAMS"))
    {
        let line = tokio::time::timeout(T, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("start-up lines");
        got.push(line);
    }
    let find = |prefix: &str| {
        got.iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {got:?}"))
            .clone()
    };
    let listening = find("listening on ");
    let addr: std::net::SocketAddr = listening["listening on ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(find("project id "), "project id cli-proj");
    assert_eq!(
        find("service account written to "),
        format!("service account written to {}", sa.display())
    );
    assert_eq!(
        find("ca written to "),
        format!("ca written to {}", ca.display())
    );
    assert!(got.iter().any(|l| l == "fault: latency 1 ms"), "{got:?}");
    assert!(
        got.iter().any(|l| l.contains("MAX_CONCURRENT_STREAMS 50")),
        "{got:?}"
    );
    let stats: std::net::SocketAddr = find("stats on http://")["stats on http://".len()..]
        .trim_end_matches("/stats")
        .parse()
        .unwrap();
    // The key is in the file, never on stdout.
    assert!(!got.iter().any(|l| l.contains("PRIVATE KEY")));

    let key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sa).unwrap()).unwrap();
    assert_eq!(key["type"], "service_account");
    assert_eq!(key["project_id"], "cli-proj");
    assert_eq!(
        key["token_uri"],
        format!("https://127.0.0.1:{}/token", addr.port())
    );

    // TLS with the written CA (this client sends no ALPN: the emulator
    // detects HTTP/1.1 from the first bytes). A wrong grant is refused.
    let ca_pem = std::fs::read(&ca).unwrap();
    let tls = DirectTls::with_ca_pem(&ca_pem).unwrap();
    let io = tls.connect("localhost", addr.port()).await.unwrap();
    let body = "grant_type=password";
    let answer = http_exchange(
        io,
        format!(
            "POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("unsupported_grant_type"), "{answer}");

    // The stats endpoint counted it.
    let tcp = tokio::net::TcpStream::connect(stats).await.unwrap();
    let answer = http_exchange(
        tcp,
        "GET /stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"token_requests\":1"), "{answer}");
    assert!(answer.contains("\"tokens_refused\":1"), "{answer}");

    // SIGTERM: clean exit.
    let pid = child.id().unwrap().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn flags_of_the_other_api_are_refused() {
    for (args, needle) in [
        (
            &["emulator", "--api", "http-v1", "--nack-fraction", "0.5"][..],
            "--nack-fraction only apply to --api xmpp",
        ),
        (
            &["emulator", "--latency-ms", "5"][..],
            "--latency-ms only apply to --api http-v1",
        ),
        (
            &["emulator", "--api", "http-v1", "--error-code", "NOPE"][..],
            "not an FCM v1 errorCode",
        ),
        (
            &["emulator", "--api", "http-v1", "--error-fraction", "2"][..],
            "error_fraction",
        ),
    ] {
        let out = tokio::time::timeout(
            T,
            Command::new(env!("CARGO_BIN_EXE_gimmm"))
                .args(args)
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn help_lists_the_http_v1_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .args(["emulator", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--api",
        "http-v1",
        "--project-id",
        "--service-account-out",
        "--latency-ms",
        "--error-fraction",
        "--error-code",
        "--retry-after-secs",
        "--gateway-error-fraction",
        "--quota-per-minute",
        "--device-rate-per-minute",
        "--goaway-after",
        "--drop-after",
        "--token-lifetime-secs",
        "--token-endpoint-error",
        "--max-concurrent-streams",
        "--legacy-token-violation",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}
