//! The systemd unit in `deploy/` (issue 12, SPEC §11 deploys): its
//! hardening is all there, its commands and environment are ones gimmm
//! understands, and a gateway started the way it starts one stores where
//! the unit says and stops on its `KillSignal` with exit 0 well inside
//! `TimeoutStopSec`. (systemd itself is not run here: the unit is also
//! checked by hand with `systemd-analyze verify`, see docs/OPERATIONS.md.)
#![allow(clippy::unwrap_used)]

use bal::proto::FromBal;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use testkit::{emulator_config, BalProbe, ChildGateway, ChildOpts};
use tokio::time::Instant;

const UNIT: &str = include_str!("../../../deploy/gimmm@.service");
const SESSION: &str = "com.example.app";
const TOKEN: &str = "unit-token-0123456789";

/// The unit's `[Service]` settings: key → values in order (a key may repeat).
fn service() -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut in_service = false;
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    out
}

/// Expands the specifiers and variables the unit uses as systemd would for
/// instance `main`, with `state` as `%S` and `creds` as
/// `$CREDENTIALS_DIRECTORY`.
fn expand(s: &str, state: &Path, creds: &Path) -> String {
    assert!(
        !s.replace("%S", "")
            .replace("%i", "")
            .replace("${CREDENTIALS_DIRECTORY}", "")
            .contains(['%', '$']),
        "a specifier or variable this test does not know: {s}"
    );
    s.replace("%S", state.to_str().unwrap())
        .replace("%i", "main")
        .replace("${CREDENTIALS_DIRECTORY}", creds.to_str().unwrap())
}

#[test]
fn the_unit_is_hardened() {
    let s = service();
    let one = |k: &str| -> &str {
        let v = s.get(k).unwrap_or_else(|| panic!("{k}= missing"));
        v.last().unwrap()
    };
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "gimmm/%i"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("LimitNOFILE", "65536"),
        ("CapabilityBoundingSet", ""),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
    ] {
        // NoNewPrivileges is implied by DynamicUser; accept it either way.
        if k == "NoNewPrivileges" && !s.contains_key(k) {
            continue;
        }
        assert_eq!(one(k), v, "{k}=");
    }
    // Longer than the default drain (fcm.shutdown_grace_secs = 10) plus the
    // time to write results and close: systemd must not SIGKILL a drain.
    let stop: u64 = one("TimeoutStopSec").parse().unwrap();
    assert!(stop >= 20, "TimeoutStopSec={stop}");
    // Secrets reach the service as credentials, not world-readable files.
    assert!(one("LoadCredential").starts_with("gimmm.toml:/etc/gimmm/"));
    assert!(one("ExecStart").starts_with("/usr/local/bin/gimmm serve --config "));
}

/// `ExecReload` (check-config) and `ExecStart` (serve) as the unit runs
/// them: the environment is honoured (the store goes to the state
/// directory), and SIGTERM ends a gateway that has delivered a message
/// with exit 0 inside `TimeoutStopSec`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_runs_and_stops_as_the_unit_says() {
    let s = service();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var-lib");
    let creds = dir.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    // systemd creates the state directory before starting the service.
    std::fs::create_dir_all(state.join("gimmm/main")).unwrap();
    let env: Vec<(String, String)> = s["Environment"]
        .iter()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap();
            (k.to_string(), expand(v, &state, &creds))
        })
        .collect();
    let store = state.join("gimmm/main/gimmm.db");
    assert!(
        env.contains(&(
            "GIMMM_STORE__PATH".to_string(),
            store.to_str().unwrap().to_string()
        )),
        "{env:?}"
    );

    let emu = emulator::Emulator::start(emulator::EmulatorConfig::default())
        .await
        .unwrap();
    let cfg = emulator_config(&emu, dir.path(), &[(SESSION, TOKEN)]).unwrap();
    testkit::write_config(&cfg, &creds.join("gimmm.toml")).unwrap();

    // ExecReload: the config check, with the unit's environment.
    let reload = expand(&s["ExecReload"][0], &state, &creds);
    let mut words = reload.split_whitespace();
    let exe = words.next().unwrap();
    assert_eq!(exe, "/usr/local/bin/gimmm");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .args(words)
        .envs(env.iter().cloned())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(store.to_str().unwrap()), "{stdout}");

    // ExecStart: serve with the unit's environment (the child helper adds
    // its own --config and --ports-file; the store path comes from the
    // environment, which overrides the file).
    let start = expand(&s["ExecStart"][0], &state, &creds);
    assert!(start.contains("serve --config"), "{start}");
    let mut opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm"));
    for (k, v) in &env {
        opts = opts.env(k, v);
    }
    let mut gw = ChildGateway::spawn(&cfg, opts).await.unwrap();
    let mut probe = BalProbe::new(SESSION, TOKEN);
    probe.connect(gw.bal_addr()).await.unwrap();
    probe
        .send(FromBal::Downstream {
            group_id: None,
            fcm_data: serde_json::json!({"to": "dev-1", "message_id": "unit-1"}),
        })
        .unwrap();
    probe.wait_finals(1, Duration::from_secs(30)).await.unwrap();
    assert!(store.exists(), "no store at {}", store.display());

    let stop_secs: u64 = s["TimeoutStopSec"][0].parse().unwrap();
    assert_eq!(s["KillSignal"][0], "SIGTERM");
    let t = Instant::now();
    let status = gw.term().await.unwrap();
    assert!(status.success(), "{status}\n{}", gw.log_tail(20));
    assert!(
        t.elapsed() < Duration::from_secs(stop_secs) / 2,
        "SIGTERM took {:?}",
        t.elapsed()
    );
    emu.shutdown().await;
}
