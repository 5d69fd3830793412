//! gimmm's gateway: the engine, the links to FCM, the BAL sessions, admin
//! HTTP, metrics and configuration, wired by [`Gateway`].
//!
//! ```text
//!  BALs ──NDJSON/TCP── session ──Cmd──▶ engine ◀──LinkEvent── link 1..N ──XMPP/TLS── CCS
//!  apps ──HTTPS──────── ingress ──Cmd──▶ (core)  ──LinkCmd──▶           or HTTP/2+TLS── FCM HTTP v1
//!                                          │ store::Store (batches ▸ in-order commit reports)
//!                                        store (SQLite WAL)
//! ```
//! `fcm.api` picks the link factory (SPEC §8.1, [`config::Config::link`]).
//! See DESIGN.md §5: links own sockets and protocol details behind
//! [`link::LinkFactory`]; BAL sessions own lines and their output queues
//! ([`session`]); the engine's core owns message state without I/O
//! ([`engine::core`]); the store answers when data is on disk
//! ([`store::Store`]).

pub mod admin;
pub mod backoff;
pub mod config;
pub mod engine;
pub mod ingress;
pub mod link;
pub mod listen;
pub mod lograte;
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
    /// The configuration cannot run (e.g. HTTP v1 without a service
    /// account).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The HTTP v1 link could not be set up.
    #[error("FCM HTTP v1 link: {0}")]
    HttpV1(String),
    /// The upstream ingress could not start (SPEC §10).
    #[error(transparent)]
    Ingress(#[from] ingress::IngressError),
}

/// How [`Gateway::start_with`] reaches FCM beyond what the config says
/// (tests, and `gimmm serve`'s in-process emulators).
#[derive(Clone, Default)]
pub struct StartOptions {
    /// XMPP: the TLS connector (default: system roots plus `fcm.ca_file`).
    pub xmpp_connector: Option<Arc<dyn xmpp::connect::Connector>>,
    /// HTTP v1: a CA (PEM) to trust besides the system roots and
    /// `fcm.ca_file` (an emulator's).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// HTTP v1: this service account instead of the key file of the
    /// config (an in-process emulator's).
    pub service_account: Option<link::http_v1::ServiceAccount>,
    /// HTTP v1: the token refresh policy (tests shorten it).
    pub refresh_policy: Option<link::http_v1::RefreshPolicy>,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("xmpp_connector", &self.xmpp_connector.is_some())
            .field("extra_ca_pem", &self.extra_ca_pem.is_some())
            .field("service_account", &self.service_account)
            .finish_non_exhaustive()
    }
}

/// Commands from BAL connections the engine has not taken yet.
const BAL_CMD_QUEUE: usize = 256;

/// How long [`Gateway::wait`] waits, after its tasks ended, for the store's
/// threads to finish their last commit and release the store.
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// A running gateway.
pub struct Gateway {
    /// Where BALs connect.
    pub bal_addr: SocketAddr,
    /// Admin HTTP address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// Upstream ingress address (SPEC §10), when enabled.
    pub ingress_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    engine: mpsc::Sender<engine::Cmd>,
    store_closed: StoreClosed,
    /// Set when the gateway stopped by itself (the store fenced it).
    fatal: tokio::sync::watch::Receiver<Option<String>>,
}

/// Resolves when the store has closed (its writer finished, its lock released).
type StoreClosed = futures::future::BoxFuture<'static, ()>;

impl Gateway {
    /// Opens the store, binds the listeners, starts the links (XMPP or
    /// HTTP v1, per `fcm.api`).
    pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Gateway, GatewayError> {
        Gateway::start_with(cfg, StartOptions::default(), shutdown).await
    }

    /// Like [`Gateway::start`] with a given XMPP TLS connector (tests).
    pub async fn start_with_connector(
        cfg: Config,
        connector: Arc<dyn xmpp::connect::Connector>,
        shutdown: CancellationToken,
    ) -> Result<Gateway, GatewayError> {
        let opts = StartOptions {
            xmpp_connector: Some(connector),
            ..StartOptions::default()
        };
        Gateway::start_with(cfg, opts, shutdown).await
    }

    /// Like [`Gateway::start`], reaching FCM as `opts` says.
    pub async fn start_with(
        cfg: Config,
        opts: StartOptions,
        shutdown: CancellationToken,
    ) -> Result<Gateway, GatewayError> {
        let choice = cfg.link()?;
        // TLS for BALs (SPEC §11): the files are read before the store
        // opens or anything binds.
        let bal_tls = cfg.bal.tls_server_config()?;
        let bal_tls_on = bal_tls.is_some();
        // Install the metrics recorder before anything records.
        let _ = metrics::prometheus();
        let abort = CancellationToken::new();
        let (commit_tx, commit_rx) = mpsc::unbounded_channel();
        let options = store::StoreOptions {
            retention: cfg.store.retention(),
            ..store::StoreOptions::default()
        };
        let pgpassword = std::env::var("PGPASSWORD").ok();
        // On PostgreSQL a node may wait here as a standby until the
        // writer lease is free (SPEC §12); losing the lease later stops the
        // gateway (`fenced`).
        let (store, recovery, store_closed, fenced): (store::SharedStore, _, StoreClosed, _) =
            match cfg.store.postgres(pgpassword.as_deref())? {
                Some(target) => {
                    let (pg, recovery) = store::postgres::PgStore::open_with(
                        target,
                        cfg.cluster.lease(),
                        commit_tx,
                        options,
                    )
                    .await?;
                    let closed = Box::pin(pg.closed());
                    let fenced = Some(pg.fenced());
                    (Arc::new(pg), recovery, closed, fenced)
                }
                None => {
                    let (sqlite, recovery) =
                        store::sqlite::SqliteStore::open_with(&cfg.store.path, commit_tx, options)?;
                    let closed = Box::pin(sqlite.closed());
                    (Arc::new(sqlite), recovery, closed, None)
                }
            };
        tracing::info!(
            store = %store.describe(),
            retention_hours = cfg.store.retention_hours,
            queued = recovery.queued,
            next_seq = recovery.next_seq,
            "store open"
        );
        let bal_listener =
            listen::bind(&cfg.bal.listen)
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
        let admin_listener =
            if cfg.admin.listen.is_empty() {
                None
            } else {
                Some(listen::bind(&cfg.admin.listen).await.map_err(|source| {
                    GatewayError::Bind {
                        what: "admin.listen",
                        addr: cfg.admin.listen.clone(),
                        source,
                    }
                })?)
            };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let retry = &cfg.retry;
        let connect_backoff = backoff::Backoff::new(
            Duration::from_millis(retry.initial_ms),
            Duration::from_millis(retry.max_ms),
        );
        let auth_backoff = backoff::Backoff::new(
            Duration::from_millis(retry.max_ms.min(60_000).max(retry.initial_ms)),
            Duration::from_millis(retry.max_ms),
        );
        let mut extra_metrics = None;
        let factory: Arc<dyn link::LinkFactory> = if choice.is_http_v1() {
            let v1 = http_v1_factory(&cfg, opts, connect_backoff, auth_backoff, &shutdown)?;
            extra_metrics = Some(v1.metrics_renderer());
            Arc::new(v1)
        } else {
            let connector = match opts.xmpp_connector {
                Some(c) => c,
                None => Arc::new(xmpp::connect::DirectTls::new(cfg.fcm.ca_file.as_deref())?),
            };
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
                connect_backoff,
                auth_backoff,
            }))
        };
        let kind = factory.kind();
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
            receipt_warning: choice.is_http_v1().then_some(fcm::v1::NO_RECEIPTS_WARNING),
            shutdown_grace: Duration::from_secs(cfg.fcm.shutdown_grace_secs),
            abort: abort.clone(),
        };
        // BAL commands share one channel; tokio hands its free places out in
        // arrival order, so a session's command waits behind at most this
        // many of a flooding session's (SPEC §11 "Fairness"), and the
        // flooder's reader then waits, pushing back on its socket.
        let (cmd_tx, cmd_rx) = mpsc::channel(BAL_CMD_QUEUE);
        let (ctl_tx, ctl_rx) = mpsc::channel(64);
        // Ingress posts share the BAL commands' channel: the engine's
        // backpressure (a slow store) holds them back the same way.
        let ingress = ingress::Ingress::bind(&cfg, cmd_tx.clone(), store.clone()).await?;
        let ingress_addr = ingress.as_ref().map(ingress::Ingress::local_addr);
        let tracker = TaskTracker::new();
        let eng = engine::Engine::new(ecfg, store.clone(), &recovery, factory, shutdown.clone());
        tracker.spawn(eng.run(cmd_rx, ctl_rx, commit_rx));
        let rules = if choice.is_http_v1() {
            session::prepare::Rules::HttpV1
        } else {
            session::prepare::Rules::Xmpp
        };
        tracker.spawn(session::serve(
            bal_listener,
            cfg.bal.clone(),
            bal_tls,
            rules,
            cmd_tx,
            shutdown.clone(),
        ));
        if let Some(i) = ingress {
            tracing::info!(addr = %i.local_addr(), tls = i.is_tls(), "upstream ingress listening (POST /v1/upstream)");
            tracker.spawn(i.serve(shutdown.clone()));
        }
        if let Some(l) = admin_listener {
            let state = admin::AdminState::new(ctl_tx.clone(), store, cfg.admin.token.clone())
                .with_link(kind, extra_metrics);
            tracker.spawn(admin::serve(l, state, shutdown.clone()));
        }
        let (fatal_tx, fatal) = tokio::sync::watch::channel(None);
        if let Some(fenced) = fenced {
            // Another node writes now and owns what this one holds: stop at
            // once, without waiting for FCM's answers (they could not be
            // stored); the new writer resends what was in flight.
            let (shutdown, abort) = (shutdown.clone(), abort.clone());
            tracker.spawn(async move {
                tokio::select! {
                    reason = fenced => {
                        let _ = fatal_tx.send(Some(reason));
                        abort.cancel();
                        shutdown.cancel();
                    }
                    _ = shutdown.cancelled() => {}
                }
            });
        }
        tracker.close();
        let fcm = if choice.is_http_v1() {
            format!("{} (HTTP v1)", cfg.fcm.endpoint)
        } else {
            format!("{}:{} (XMPP)", cfg.fcm.host, cfg.fcm.port)
        };
        tracing::info!(%bal_addr, bal_tls = bal_tls_on, admin = ?admin_addr, %fcm, connections = cfg.fcm.connections, "gimmm gateway started");
        Ok(Gateway {
            bal_addr,
            admin_addr,
            ingress_addr,
            shutdown,
            abort,
            tracker,
            engine: ctl_tx,
            store_closed,
            fatal,
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
    /// the token being cancelled elsewhere) and the store is closed, so
    /// that a gateway started again in this process can open it.
    pub async fn wait(self) {
        drop(self.engine);
        self.tracker.wait().await;
        // Every task is done; the store's threads finish their last commit.
        if tokio::time::timeout(STORE_CLOSE_WAIT, self.store_closed)
            .await
            .is_err()
        {
            tracing::warn!(
                waited_secs = STORE_CLOSE_WAIT.as_secs(),
                "the store is still open after every task finished"
            );
        }
    }

    /// Resolves with the reason when the gateway stops by itself: on the
    /// PostgreSQL store, another node took the writer lease (SPEC §12).
    /// Then [`Gateway::wait`] and exit with an error.
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.clone();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Shuts down and waits.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

/// The HTTP v1 link factory of `cfg` (SPEC §8): the service account (from
/// `opts` or the key file), TLS, the shared token source and rate limiter.
fn http_v1_factory(
    cfg: &Config,
    opts: StartOptions,
    connect_backoff: backoff::Backoff,
    auth_backoff: backoff::Backoff,
    shutdown: &CancellationToken,
) -> Result<link::http_v1::HttpV1LinkFactory, GatewayError> {
    use link::http_v1 as v1;
    let sa = match opts.service_account {
        Some(sa) => sa,
        None => cfg.fcm.load_service_account()?.ok_or_else(|| {
            GatewayError::HttpV1(
                "fcm.api is http_v1 but no service account is configured (fcm.service_account_file or GOOGLE_APPLICATION_CREDENTIALS)".into(),
            )
        })?,
    };
    let project_id = if cfg.fcm.project_id.is_empty() {
        sa.project_id.clone().ok_or_else(|| {
            GatewayError::HttpV1(
                "the service account names no project_id; set fcm.project_id".into(),
            )
        })?
    } else {
        cfg.fcm.project_id.clone()
    };
    let (h2_tls, h1_tls) =
        v1::tls_configs(cfg.fcm.ca_file.as_deref(), opts.extra_ca_pem.as_deref())?;
    let request_timeout = Duration::from_secs(cfg.fcm.request_timeout_secs);
    let exchange = v1::HttpsExchange::new(Arc::new(sa), h1_tls, request_timeout)
        .map_err(GatewayError::HttpV1)?;
    let tokens = v1::TokenSource::start(
        Arc::new(exchange),
        opts.refresh_policy.unwrap_or_default(),
        shutdown.clone(),
    );
    let endpoint = v1::Endpoint::parse(&cfg.fcm.endpoint).map_err(GatewayError::HttpV1)?;
    tracing::info!(endpoint = %cfg.fcm.endpoint, project = %project_id, connections = cfg.fcm.connections, "FCM HTTP v1 link");
    v1::HttpV1LinkFactory::new(
        v1::HttpV1Params {
            endpoint,
            project_id,
            tls: h2_tls,
            max_pending: cfg.fcm.max_pending_per_connection,
            keepalive: Duration::from_secs(cfg.fcm.keepalive_secs),
            request_timeout,
            connect_backoff,
            auth_backoff,
        },
        tokens,
        v1::RateLimiter::new(cfg.fcm.max_messages_per_minute),
    )
    .map_err(GatewayError::HttpV1)
}
