//! Test harness for the FCM HTTP v1 link: a [`V1Emulator`] and a gateway
//! on loopback, real TLS and HTTP/2, a real SQLite file in a temp dir. The
//! gateway is configured the way a user would: `fcm.api = "http_v1"`, the
//! emulator's service-account key file and CA file on disk.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use emulator::v1::{V1Config, V1Emulator, V1Faults, V1Stats};
use gateway::config::{Api, Config, SessionConfig};
use gateway::Gateway;
use std::time::Duration;
use testkit::BalProbe;
use tokio_util::sync::CancellationToken;

pub const SESSION: &str = "com.example.app";
pub const TOKEN: &str = "dev-token";
pub const WAIT: Duration = Duration::from_secs(20);

pub struct V1Env {
    pub emu: V1Emulator,
    pub gw: Option<Gateway>,
    pub cfg: Config,
    pub dir: tempfile::TempDir,
    pub opts: gateway::StartOptions,
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Starts an emulator with `faults` (and `emu_tweak` on its config).
pub async fn emulator(
    dir: &std::path::Path,
    faults: V1Faults,
    emu_tweak: impl FnOnce(&mut V1Config),
) -> V1Emulator {
    let mut ecfg = V1Config {
        faults,
        service_account_out: Some(dir.join("sa.json")),
        ca_out: Some(dir.join("ca.pem")),
        ..V1Config::default()
    };
    emu_tweak(&mut ecfg);
    V1Emulator::start(ecfg).await.unwrap()
}

/// The usual test gateway config against `emu`.
pub fn v1_config(dir: &std::path::Path, emu: &V1Emulator) -> Config {
    let mut cfg = Config::default();
    cfg.fcm.api = Api::HttpV1;
    cfg.fcm.service_account_file = Some(dir.join("sa.json"));
    cfg.fcm.endpoint = emu.endpoint().to_string();
    cfg.fcm.ca_file = Some(dir.join("ca.pem"));
    cfg.fcm.keepalive_secs = 30;
    cfg.fcm.request_timeout_secs = 10;
    cfg.retry.initial_ms = 20;
    cfg.retry.max_ms = 200;
    cfg.bal.listen = "127.0.0.1:0".into();
    cfg.bal.logon_timeout_secs = 2;
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.store.path = dir.join("gimmm.db");
    cfg.bal.sessions = vec![
        SessionConfig::new(SESSION, TOKEN),
        SessionConfig::new("com.example.other", "other-token"),
    ];
    cfg
}

pub async fn start(faults: V1Faults, tweak: impl FnOnce(&mut Config)) -> V1Env {
    start_with(faults, |_| {}, tweak, gateway::StartOptions::default()).await
}

pub async fn start_with(
    faults: V1Faults,
    emu_tweak: impl FnOnce(&mut V1Config),
    tweak: impl FnOnce(&mut Config),
    opts: gateway::StartOptions,
) -> V1Env {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(dir.path(), faults, emu_tweak).await;
    let mut cfg = v1_config(dir.path(), &emu);
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let gw = Gateway::start_with(cfg.clone(), opts.clone(), CancellationToken::new())
        .await
        .unwrap();
    V1Env {
        emu,
        gw: Some(gw),
        cfg,
        dir,
        opts,
    }
}

impl V1Env {
    pub fn gw(&self) -> &Gateway {
        self.gw.as_ref().unwrap()
    }

    pub fn admin(&self) -> std::net::SocketAddr {
        self.gw().admin_addr.unwrap()
    }

    /// A probe logged on to the main session.
    pub async fn probe(&self) -> BalProbe {
        let mut p = BalProbe::new(SESSION, TOKEN);
        p.connect(self.gw().bal_addr).await.unwrap();
        p
    }

    pub async fn bal(&self) -> bal::BalClient {
        bal::BalClient::connect_logon(self.gw().bal_addr, SESSION, TOKEN)
            .await
            .unwrap()
    }

    /// Stops the gateway and starts a new one on the same store.
    pub async fn restart(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.stop().await;
        }
        let gw = Gateway::start_with(
            self.cfg.clone(),
            self.opts.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        self.gw = Some(gw);
    }

    pub async fn wait_emu(&self, what: &str, pred: impl Fn(&V1Stats) -> bool) -> V1Stats {
        match self.emu.wait_until(WAIT, pred).await {
            Ok(s) => s,
            Err(s) => panic!("timed out waiting for {what}; emulator stats: {s:#?}"),
        }
    }

    /// Waits until `/readyz` answers `status`; returns its body.
    pub async fn wait_readyz(&self, status: u16) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (s, body) = testkit::http_get(self.admin(), "/readyz", None)
                .await
                .unwrap();
            if s == status {
                return body;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("/readyz stayed {s} ({body}), wanted {status}");
            }
            // Polling an HTTP endpoint: there is no event to wait on.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let (s, body) = testkit::http_get(self.admin(), "/metrics", None)
            .await
            .unwrap();
        assert_eq!(s, 200);
        body
    }

    pub async fn stop(mut self) {
        if let Some(gw) = self.gw.take() {
            gw.stop().await;
        }
        self.emu.shutdown().await;
    }
}

/// A downstream to token `to` with id `id`; `data` carries the id, so the
/// emulator's per-message key is unique.
pub fn msg(to: &str, id: &str) -> serde_json::Value {
    serde_json::json!({"to": to, "message_id": id, "data": {"id": id}})
}

/// The emulator's stats key of [`msg`]`(to, id)`.
pub fn key(to: &str, id: &str) -> String {
    let m = serde_json::json!({"token": to, "data": {"id": id}});
    emulator::v1::message_key(&m).unwrap()
}

/// The value of one sample of `name` with these labels in Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}
