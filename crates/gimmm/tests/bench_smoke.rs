//! `gimmm bench` end to end, small: emulator in the bench process, gateway as
//! a child process, 2000 messages (some grouped, some upstream, with
//! receipts). Checks the JSON report and that nothing was lost or
//! duplicated. The same on the HTTP v1 link (`--api http-v1`, no upstream,
//! no receipts), and that the flags v1 cannot honour are refused; and over
//! TLS on the BAL listener.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn bench_2000_messages_reports_json_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .args([
            "bench",
            "--messages",
            "2000",
            "--links",
            "2",
            "--sessions",
            "2",
        ])
        .args([
            "--groups",
            "0.1",
            "--upstream-fraction",
            "0.2",
            "--receipts",
        ])
        .args(["--timeout-secs", "15", "--store-dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("throughput"), "{stdout}");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["api"], "xmpp", "{v:#}");
    assert_eq!(v["messages"], 2000, "{v:#}");
    assert_eq!(v["upstream"], 400, "{v:#}");
    assert_eq!(v["downstream"], 1600, "{v:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["duplicated"], 0, "{v:#}");
    assert_eq!(v["rejected"], 0, "{v:#}");
    assert!(v["elapsed_secs"].as_f64().unwrap() > 0.0, "{v:#}");
    assert!(
        v["throughput_msgs_per_sec"].as_f64().unwrap() > 0.0,
        "{v:#}"
    );
    for q in ["p50", "p99", "p999"] {
        let ms = v["latency_ms"][q].as_f64().unwrap();
        assert!(ms > 0.0 && ms < 60_000.0, "latency {q} = {ms}: {v:#}");
    }
    assert!(v["latency_ms"]["p50"].as_f64() <= v["latency_ms"]["p99"].as_f64());
    // Read from /proc/<child>/status on Linux.
    if cfg!(target_os = "linux") {
        assert!(
            v["gateway_peak_rss_bytes"].as_u64().unwrap() > 1_000_000,
            "{v:#}"
        );
    }
    let emu = &v["emulator"];
    assert_eq!(emu["acks_sent"], 1600, "{v:#}");
    assert_eq!(emu["duplicates"], 0, "{v:#}");
    assert_eq!(emu["window_violations"], 0, "{v:#}");
    assert_eq!(emu["upstream_acked"], 400, "{v:#}");
    assert_eq!(emu["receipts_acked"], 1600, "{v:#}");
}

#[test]
fn bench_on_http_v1_reports_json_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench-v1.json");
    let out = Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .args(["bench", "--api", "http-v1", "--messages", "2000"])
        .args(["--links", "2", "--sessions", "2", "--groups", "0.1"])
        // A low stream limit, so that the pool has to respect it.
        .args([
            "--max-streams",
            "8",
            "--latency-ms",
            "1",
            "--track-messages",
        ])
        .args(["--timeout-secs", "15", "--store-dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("HTTP v1"), "{stdout}");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["api"], "http_v1", "{v:#}");
    assert_eq!(v["messages"], 2000, "{v:#}");
    assert_eq!(v["downstream"], 2000, "{v:#}");
    assert_eq!(v["upstream"], 0, "{v:#}");
    assert_eq!(v["links"], 2, "{v:#}");
    assert_eq!(v["max_streams"], 8, "{v:#}");
    assert_eq!(v["emulator_latency_ms"], 1, "{v:#}");
    assert_eq!(v["max_messages_per_minute"], 0, "{v:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["duplicated"], 0, "{v:#}");
    assert_eq!(v["rejected"], 0, "{v:#}");
    assert!(
        v["throughput_msgs_per_sec"].as_f64().unwrap() > 0.0,
        "{v:#}"
    );
    for q in ["p50", "p99", "p999"] {
        let ms = v["latency_ms"][q].as_f64().unwrap();
        // At least the emulator's 1 ms.
        assert!((1.0..60_000.0).contains(&ms), "latency {q} = {ms}: {v:#}");
    }
    if cfg!(target_os = "linux") {
        assert!(
            v["gateway_peak_rss_bytes"].as_u64().unwrap() > 1_000_000,
            "{v:#}"
        );
        assert!(v["gateway_cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{v:#}");
    }
    let emu = &v["emulator"];
    assert_eq!(emu["requests"], 2000, "{v:#}");
    assert_eq!(emu["delivered"], 2000, "{v:#}");
    assert_eq!(emu["errors"], 0, "{v:#}");
    assert_eq!(emu["duplicates"], 0, "{v:#}");
    assert_eq!(emu["over_limit"], 0, "{v:#}");
    assert_eq!(emu["max_concurrent_streams"], 8, "{v:#}");
    assert_eq!(emu["connections_over_stream_limit"], 0, "{v:#}");
    let high = emu["streams_high_water"].as_u64().unwrap();
    assert!((1..=8).contains(&high), "streams high-water {high}: {v:#}");
    assert!(emu["connections_opened"].as_u64().unwrap() >= 2, "{v:#}");
    assert!(emu["tokens_issued"].as_u64().unwrap() >= 1, "{v:#}");
}

#[test]
fn bench_on_http_v1_refuses_upstream_and_receipts() {
    for (flags, why) in [
        (&["--upstream-fraction", "0.2"][..], "no upstream messages"),
        (&["--receipts"][..], "no delivery receipts"),
        (&["--ack-delay-ms", "1"][..], "--latency-ms"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gimmm"))
            .args(["bench", "--api", "http-v1", "--messages", "10"])
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} accepted");
        assert!(stderr.contains(why), "{flags:?}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .args(["bench", "--messages", "10", "--latency-ms", "5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("only apply to --api http-v1"), "{stderr}");
}

/// `gimmm bench --tls` works out of the box: the gateway child gets a
/// generated certificate, the BAL connections trust its CA.
#[test]
fn bench_over_tls_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .args(["bench", "--tls", "--messages", "500", "--sessions", "2"])
        .args(["--timeout-secs", "15", "--store-dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("over TLS"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["bal_tls"], true, "{v:#}");
    assert_eq!(v["messages"], 500, "{v:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["duplicated"], 0, "{v:#}");
    assert_eq!(v["emulator"]["acks_sent"], 500, "{v:#}");
    // --ca-file is for someone else's gateway.
    let out = Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .args(["bench", "--tls", "--ca-file", "/nonexistent/ca.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--gateway"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
