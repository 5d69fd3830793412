//! gimmm's gateway: the engine, the links to FCM, the BAL sessions, admin
//! HTTP, metrics and configuration, wired by [`Gateway`].
//!
//! ```text
//!  BALs ──NDJSON/TCP── session ──Cmd──▶ engine ◀──LinkEvent── link 1..N ──XMPP/TLS── CCS
//!                                       (core)  ──LinkCmd──▶
//!                                          │ store::Store (batches ▸ in-order commit reports)
//!                                        store (SQLite WAL)
//! ```
//! See DESIGN.md §5: links own sockets and protocol details behind
//! [`link::LinkFactory`]; BAL sessions own lines and their output queues
//! ([`session`]); the engine's core owns message state without I/O
//! ([`engine::core`]); the store answers when data is on disk
//! ([`store::Store`]).

pub mod admin;
pub mod backoff;
pub mod config;
pub mod engine;
pub mod link;
pub mod metrics;
pub mod session;

use config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: String,
        /// Error.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error("TLS setup: {0}")]
    Tls(#[from] xmpp::XmppError),
}

/// A running gateway.
pub struct Gateway {
    /// Where BALs connect.
    pub bal_addr: SocketAddr,
    /// Admin HTTP address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    engine: mpsc::Sender<engine::Cmd>,
}

impl Gateway {
    /// Opens the store, binds the listeners, starts the links.
    pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Gateway, GatewayError> {
        let connector: Arc<dyn xmpp::connect::Connector> =
            Arc::new(xmpp::connect::DirectTls::new(cfg.fcm.ca_file.as_deref())?);
        Gateway::start_with_connector(cfg, connector, shutdown).await
    }

    /// Like [`Gateway::start`] with a given TLS connector (tests).
    pub async fn start_with_connector(
        cfg: Config,
        connector: Arc<dyn xmpp::connect::Connector>,
        shutdown: CancellationToken,
    ) -> Result<Gateway, GatewayError> {
        // Install the metrics recorder before anything records.
        let _ = metrics::prometheus();
        let abort = CancellationToken::new();
        let (commit_tx, commit_rx) = mpsc::unbounded_channel();
        let (sqlite, recovery) = store::sqlite::SqliteStore::open_with(
            &cfg.store.path,
            commit_tx,
            store::StoreOptions {
                retention: cfg.store.retention(),
                ..store::StoreOptions::default()
            },
        )?;
        let store: store::SharedStore = Arc::new(sqlite);
        tracing::info!(
            store = %store.describe(),
            retention_hours = cfg.store.retention_hours,
            queued = recovery.queued,
            next_seq = recovery.next_seq,
            "store open"
        );
        let bal_listener = tokio::net::TcpListener::bind(&cfg.bal.listen)
            .await
            .map_err(|source| GatewayError::Bind {
                what: "bal.listen",
                addr: cfg.bal.listen.clone(),
                source,
            })?;
        let bal_addr = bal_listener
            .local_addr()
            .map_err(|source| GatewayError::Bind {
                what: "bal.listen",
                addr: cfg.bal.listen.clone(),
                source,
            })?;
        let admin_listener = if cfg.admin.listen.is_empty() {
            None
        } else {
            Some(
                tokio::net::TcpListener::bind(&cfg.admin.listen)
                    .await
                    .map_err(|source| GatewayError::Bind {
                        what: "admin.listen",
                        addr: cfg.admin.listen.clone(),
                        source,
                    })?,
            )
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let retry = &cfg.retry;
        let factory: Arc<dyn link::LinkFactory> =
            Arc::new(link::xmpp::XmppLinkFactory::new(link::xmpp::XmppParams {
                host: cfg.fcm.host.clone(),
                port: cfg.fcm.port,
                connector,
                username: format!("{}@{}", cfg.fcm.sender_id, cfg.fcm.auth_domain),
                password: cfg.fcm.server_key.clone(),
                domain: cfg.fcm.auth_domain.clone(),
                keepalive: Duration::from_secs(cfg.fcm.keepalive_secs),
                max_stanza_bytes: cfg.fcm.max_stanza_bytes,
                window: cfg.fcm.max_pending_per_connection,
                connect_backoff: backoff::Backoff::new(
                    Duration::from_millis(retry.initial_ms),
                    Duration::from_millis(retry.max_ms),
                ),
                auth_backoff: backoff::Backoff::new(
                    Duration::from_millis(retry.max_ms.min(60_000).max(retry.initial_ms)),
                    Duration::from_millis(retry.max_ms),
                ),
            }));
        let ecfg = engine::EngineConfig {
            sessions: cfg
                .bal
                .sessions
                .iter()
                .map(|s| s.session_id.clone())
                .collect(),
            connections: cfg.fcm.connections,
            max_unacked: cfg.bal.max_unacked,
            retry: cfg.retry.clone(),
            // Bounded memory with a backlog on disk: 20k messages (~10 MB) in
            // memory is 0.2 s of sending at full speed; paging in more only
            // raised the peak RSS of a 1M-message drain (~115 MiB at 50k).
            mem_messages: 20_000,
            mem_outbox: 10_000,
            receipt_warning: None,
            shutdown_grace: Duration::from_secs(cfg.fcm.shutdown_grace_secs),
            abort: abort.clone(),
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(4096);
        let (ctl_tx, ctl_rx) = mpsc::channel(64);
        let tracker = TaskTracker::new();
        let eng = engine::Engine::new(ecfg, store.clone(), &recovery, factory, shutdown.clone());
        tracker.spawn(eng.run(cmd_rx, ctl_rx, commit_rx));
        tracker.spawn(session::serve(
            bal_listener,
            cfg.bal.clone(),
            cmd_tx,
            shutdown.clone(),
        ));
        if let Some(l) = admin_listener {
            let state = admin::AdminState::new(ctl_tx.clone(), store, cfg.admin.token.clone());
            tracker.spawn(admin::serve(l, state, shutdown.clone()));
        }
        tracker.close();
        tracing::info!(%bal_addr, admin = ?admin_addr, fcm = %format!("{}:{}", cfg.fcm.host, cfg.fcm.port), connections = cfg.fcm.connections, "gimmm gateway started");
        Ok(Gateway {
            bal_addr,
            admin_addr,
            shutdown,
            abort,
            tracker,
            engine: ctl_tx,
        })
    }

    /// The engine's state, for tests and tools.
    pub async fn snapshot(&self) -> Option<engine::Snapshot> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.send(engine::Cmd::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Asks everything to stop: the engine drains first (SPEC §11).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Cuts a drain short (a second signal): the engine stops waiting for
    /// FCM's answers and the links close at once. Nothing accepted is lost
    /// (it is stored); what was in flight is resent after a restart.
    pub fn abort(&self) {
        self.shutdown.cancel();
        self.abort.cancel();
    }

    /// A handle that can [`abort`](Gateway::abort) from elsewhere (a signal
    /// handler) while another task waits.
    pub fn abort_handle(&self) -> CancellationToken {
        self.abort.clone()
    }

    /// Waits until every task has finished (after [`Gateway::shutdown`] or
    /// the token being cancelled elsewhere).
    pub async fn wait(self) {
        drop(self.engine);
        self.tracker.wait().await;
    }

    /// Shuts down and waits.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}
