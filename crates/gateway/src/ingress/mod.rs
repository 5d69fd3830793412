//! The upstream ingress (SPEC §10): devices and apps `POST /v1/upstream`
//! over HTTPS, and the BAL of the session named by `category` receives the
//! very same UPSTREAM line XMPP upstream gives it (§3.3), with
//! `"source":"ingress"` (and `"subject"` when a JWT authenticated it):
//! sequenced, durable, held while the BAL is offline, never delivered
//! twice (the app's `message_id` is its idempotency key).
//!
//! ```text
//!  app ──HTTPS──▶ listener ──▶ handler ──Cmd::Ingress──▶ engine ──Batch──▶ store
//!                 (limits,     (body, auth,  ◀──reply──  (core: Op::Upstream,
//!                  TLS)         rate limit)   after the    dedupe key, UPSTREAM
//!                                             commit       line, effect)
//! ```
//!
//! One concern per file: [`listener`] (accept, connection limit, TLS,
//! hyper, timeouts), [`handler`] (the endpoint and its answers), [`body`]
//! (parsing, pure), [`auth`] (keys and JWTs per session), [`jwt`] (JWKS
//! and token verification, pure), [`rate`] (token buckets per client),
//! [`conns`] (the connection table). The ingress needs no FCM link: it
//! works whichever link is configured, and while none is ready.

pub mod auth;
pub mod body;
mod conns;
mod handler;
pub mod jwt;
mod listener;
pub mod rate;

use crate::config::Config;
use crate::engine::Cmd;
use axum::routing::post;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr} (ingress.listen): {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Error.
        source: std::io::Error,
    },
    /// The certificate or key cannot be used (the key itself is never
    /// shown).
    #[error("ingress TLS ({file}): {problem}")]
    Tls {
        /// Which file or step.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// A session's credentials cannot be loaded.
    #[error(transparent)]
    Auth(#[from] auth::AuthSetupError),
}

/// A bound ingress, ready to [`Ingress::serve`].
pub struct Ingress {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<handler::IngressState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The router of the ingress (also for tests without sockets).
fn router(state: Arc<handler::IngressState>) -> Router {
    Router::new()
        .route(
            "/v1/upstream",
            post(handler::upstream).fallback(handler::method_not_allowed),
        )
        .fallback(handler::not_found)
        .with_state(state)
}

/// The TLS acceptor for `cert` and `key` (PEM files).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, IngressError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| IngressError::Tls {
            file: p.display().to_string(),
            problem: e.to_string(),
        })
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let cfg = xmpp::connect::server_config(&cert_pem, &key_pem).map_err(|e| IngressError::Tls {
        file: format!("{} / {}", cert.display(), key.display()),
        problem: e.to_string(),
    })?;
    let mut cfg = (*cfg).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

impl Ingress {
    /// Binds `ingress.listen` and loads the TLS identity and the sessions'
    /// credentials; `None` when `ingress.listen` is empty.
    pub async fn bind(
        cfg: &Config,
        engine: mpsc::Sender<Cmd>,
        store: store::SharedStore,
    ) -> Result<Option<Ingress>, IngressError> {
        let ic = &cfg.ingress;
        if ic.listen.is_empty() {
            return Ok(None);
        }
        let tls = match ic.tls_files() {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let mut sessions = HashMap::new();
        for (i, s) in cfg.bal.sessions.iter().enumerate() {
            let auth = auth::SessionAuth::from_config(i, s)?;
            crate::metrics::ingress_series(&s.session_id);
            sessions.insert(
                s.session_id.clone(),
                handler::SessionEntry {
                    id: Arc::from(s.session_id.as_str()),
                    auth,
                },
            );
        }
        let listener =
            crate::listen::bind(&ic.listen)
                .await
                .map_err(|source| IngressError::Bind {
                    addr: ic.listen.clone(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| IngressError::Bind {
            addr: ic.listen.clone(),
            source,
        })?;
        let state = Arc::new(handler::IngressState {
            sessions,
            engine,
            store,
            rate: rate::RateLimiter::new(ic.per_client_per_minute),
            max_body: ic.max_body_bytes,
            read_timeout: Duration::from_secs(ic.read_timeout_secs),
        });
        Ok(Some(Ingress {
            listener,
            addr,
            state,
            tls,
            max_connections: ic.max_connections,
        }))
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when it speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown`: then takes no new connection and lets the
    /// requests in progress finish.
    pub async fn serve(self, shutdown: CancellationToken) {
        let s = listener::Serving {
            read_timeout: self.state.read_timeout,
            app: router(self.state),
            tls: self.tls,
            conns: conns::Conns::new(self.max_connections),
            shutdown,
        };
        listener::accept_loop(self.listener, s).await;
    }
}
