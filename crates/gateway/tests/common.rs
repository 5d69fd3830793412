//! Test harness: an emulator and a gateway on loopback with a real SQLite
//! file in a temp dir, plus helpers that wait on events with timeouts.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use bal::{BalClient, ToBal};
use emulator::{Emulator, EmulatorConfig, Faults, Stats};
use gateway::config::{Config, Secret, SessionConfig};
use gateway::Gateway;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const SESSION: &str = "com.example.app";
pub const TOKEN: &str = "dev-token";
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Env {
    pub emu: Emulator,
    pub gw: Option<Gateway>,
    pub cfg: Config,
    pub dir: tempfile::TempDir,
    pub connector: Arc<dyn xmpp::connect::Connector>,
}

pub fn base_config(dir: &std::path::Path, emu: &Emulator) -> Config {
    let mut cfg = Config::default();
    cfg.fcm.host = "127.0.0.1".into();
    cfg.fcm.port = emu.addr().port();
    cfg.fcm.sender_id = emu.sender_id().to_string();
    cfg.fcm.server_key = Secret::new(emu.server_key());
    cfg.fcm.keepalive_secs = 30;
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

pub async fn start(faults: Faults, tweak: impl FnOnce(&mut Config)) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let emu = Emulator::start(EmulatorConfig {
        faults,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(dir.path(), &emu);
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let connector: Arc<dyn xmpp::connect::Connector> =
        Arc::new(xmpp::connect::DirectTls::with_ca_pem(emu.ca_pem().as_bytes()).unwrap());
    let gw =
        Gateway::start_with_connector(cfg.clone(), connector.clone(), CancellationToken::new())
            .await
            .unwrap();
    Env {
        emu,
        gw: Some(gw),
        cfg,
        dir,
        connector,
    }
}

impl Env {
    pub fn gw(&self) -> &Gateway {
        self.gw.as_ref().unwrap()
    }

    pub async fn bal(&self) -> BalClient {
        BalClient::connect_logon(self.gw().bal_addr, SESSION, TOKEN)
            .await
            .unwrap()
    }

    /// Stops the gateway and starts a new one on the same store.
    pub async fn restart(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.stop().await;
        }
        let gw = Gateway::start_with_connector(
            self.cfg.clone(),
            self.connector.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        self.gw = Some(gw);
    }

    pub async fn wait_emu(&self, what: &str, pred: impl Fn(&Stats) -> bool) -> Stats {
        match self.emu.wait_until(WAIT, pred).await {
            Ok(s) => s,
            Err(s) => panic!("timed out waiting for {what}; emulator stats: {s:#?}"),
        }
    }

    pub async fn stop(mut self) {
        if let Some(gw) = self.gw.take() {
            gw.stop().await;
        }
        self.emu.shutdown().await;
    }
}

/// Receives the next message, failing after [`WAIT`].
pub async fn recv(c: &mut BalClient) -> ToBal {
    match testkit::recv(c, WAIT).await {
        Ok(m) => m,
        Err(e) => panic!("no message from gimmm: {e}"),
    }
}

/// Receives until `pred` matches, ACKing sequenced messages on the way
/// (each message within [`WAIT`]).
pub async fn recv_until(c: &mut BalClient, pred: impl Fn(&ToBal) -> bool) -> ToBal {
    match testkit::recv_until(c, WAIT, pred).await {
        Ok(m) => m,
        Err(e) => panic!("no matching message from gimmm: {e}"),
    }
}

/// `GET path` from the admin listener at `addr`: (status, decoded body).
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    match testkit::http_get(addr, path, token).await {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

pub fn msg(to: &str, id: &str) -> serde_json::Value {
    serde_json::json!({"to": to, "message_id": id, "data": {"k": "v"}})
}
