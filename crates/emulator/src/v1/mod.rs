//! A stand-in for Google's **FCM HTTP v1 API** (SPEC §9), faithful enough
//! that clients written against Google's API, the official Admin SDKs
//! included, run against it unchanged: the target of gimmm's HTTP v1 tests
//! and the load source of its benchmarks.
//!
//! * **Transport**: TLS (rustls, aws-lc-rs) with a certificate from the same
//!   throw-away CA mechanism as the CCS emulator ([`crate::TlsIdentity`]),
//!   ALPN `h2` and `http/1.1`, served by hyper 1. HTTP/2 advertises
//!   SETTINGS_MAX_CONCURRENT_STREAMS (100 unless
//!   [`V1Faults::max_concurrent_streams`] says otherwise).
//! * **Service account**: an RSA 2048 key generated at start, wrapped in a
//!   service-account JSON key file ([`V1Emulator::service_account_json`],
//!   written to [`V1Config::service_account_out`]) whose `token_uri` is the
//!   emulator's own `https://127.0.0.1:PORT/token`.
//! * **`POST /token`**: the JWT-bearer grant; RS256 signature, `iss`, `aud`
//!   (the key's `token_uri`, `https://oauth2.googleapis.com/token` or the
//!   legacy `https://accounts.google.com/o/oauth2/token`), scope
//!   (`firebase.messaging` or `cloud-platform`), `exp - iat <= 3600`, `iat`
//!   within 5 minutes of now; answers `{"access_token","expires_in",
//!   "token_type":"Bearer"}` or 400 `invalid_grant`. Access tokens are
//!   opaque and expire.
//! * **`POST /v1/projects/{P}/messages:send`**: 401 `UNAUTHENTICATED` for a
//!   missing, unknown or expired token and 403 `PERMISSION_DENIED` for
//!   another project (no FcmError, as Google); the body is validated as
//!   Google does (`validate.rs`); tokens follow SPEC §5's registry
//!   (malformed → 400 `INVALID_ARGUMENT` "The registration token is not a
//!   valid FCM registration token", `unregistered…` or
//!   [`V1Emulator::mark_unregistered`] → 404 `UNREGISTERED`, `mismatch…` →
//!   403 `SENDER_ID_MISMATCH`, anything else well-formed is a device);
//!   success → `{"name":"projects/P/messages/<unique>"}`, `validate_only` →
//!   `…/messages/fake_message_id`. Error bodies are `google.rpc.Status`
//!   (`errors.rs`).
//! * **Faults** ([`V1Faults`], settable at run time): latency, a fraction of
//!   answers with an errorCode (and `Retry-After`), 502/504 with HTML, a
//!   project quota per minute and a per-device rate (429 `QUOTA_EXCEEDED`),
//!   GOAWAY after N requests, abrupt drops after N requests or on demand,
//!   short-lived access tokens, a failing token endpoint, the stream limit,
//!   the legacy field violation on bad tokens.
//! * **Stats** ([`V1Stats`]): requests by status and errorCode, per message
//!   (keyed by [`message_key`]: target plus a hash of `data` and
//!   `notification`) how often received, answered 200 and delivered,
//!   per-connection stream high-water marks and requests over the limit,
//!   GOAWAYs, drops, tokens issued and refused; as a Rust snapshot, through
//!   [`V1Emulator::wait_until`], and as JSON on [`V1Config::stats_listen`]
//!   (routes in `control.rs`: `GET /stats`, `GET|POST /faults`,
//!   `POST /unregister/{token}`, `/drop`, `/goaway`, `/revoke-tokens`,
//!   `/reset`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), emulator::v1::V1Error> {
//! use emulator::v1::{V1Config, V1Emulator};
//! let emu = V1Emulator::start(V1Config::default()).await?;
//! println!("FCM v1 emulator at {} for project {}", emu.endpoint(), emu.project_id());
//! let key_file_json: &str = emu.service_account_json(); // holds the private key
//! # let _ = key_file_json;
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The private key and the access tokens are never logged, and `Debug` of
//! every type here leaves them out.

mod auth;
mod control;
mod errors;
mod faults;
mod server;
mod state;
mod stats;
mod validate;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use auth::{
    CLOUD_PLATFORM_SCOPE, FIREBASE_MESSAGING_SCOPE, GOOGLE_LEGACY_TOKEN_AUDIENCE,
    GOOGLE_TOKEN_AUDIENCE, JWT_BEARER_GRANT,
};
pub use errors::{
    V1ErrorCode, BAD_REQUEST_TYPE, ERROR_INFO_TYPE, FCM_ERROR_TYPE, INVALID_TOKEN_MESSAGE,
    QUOTA_FAILURE_TYPE,
};
pub use faults::{V1Faults, DEFAULT_MAX_CONCURRENT_STREAMS};
pub use stats::{V1ConnStats, V1MsgStats, V1Stats};
pub use validate::message_key;

use crate::TlsIdentity;
use state::{Fixed, Shared};

/// Default listen address of the stand-alone HTTP v1 emulator.
pub const V1_DEFAULT_LISTEN: &str = "127.0.0.1:5238";
/// Default stats listen address of the stand-alone HTTP v1 emulator.
pub const V1_DEFAULT_STATS_LISTEN: &str = "127.0.0.1:5239";
/// Default project id.
pub const V1_DEFAULT_PROJECT_ID: &str = "gimmm-emulator";
/// Default project number (Google's sender id of the project).
pub const V1_DEFAULT_PROJECT_NUMBER: &str = crate::DEFAULT_SENDER_ID;
/// Default file the stand-alone emulator writes its service-account key to.
pub const V1_DEFAULT_SERVICE_ACCOUNT_OUT: &str = "./gimmm-emulator-sa.json";

/// Configuration of one HTTP v1 emulator. Plain data (no clap), so the CLI
/// maps its flags onto it.
///
/// `Default` suits tests: ephemeral port on 127.0.0.1, project
/// `gimmm-emulator`, no files written, no stats endpoint.
/// [`V1Config::standalone`] gives the `gimmm emulator --api http-v1`
/// defaults.
#[derive(Clone, Debug)]
pub struct V1Config {
    /// TLS listen address.
    pub listen: SocketAddr,
    /// The project the API serves (`projects/{project_id}`).
    pub project_id: String,
    /// The project's number, accepted in the path as well (Google's legacy
    /// form) and named in quota errors.
    pub project_number: String,
    /// Write the service-account JSON key here at start (mode 0600).
    pub service_account_out: Option<PathBuf>,
    /// Write the CA certificate (PEM) here at start.
    pub ca_out: Option<PathBuf>,
    /// Where to serve the plain-HTTP stats and control endpoint.
    pub stats_listen: Option<SocketAddr>,
    /// Initial fault settings.
    pub faults: V1Faults,
    /// Lifetime of access tokens (`expires_in`) unless
    /// [`V1Faults::token_lifetime_secs`] is set. Default one hour.
    pub token_lifetime: Duration,
    /// Keep per-message stats ([`V1Stats::messages`]). Default true; turn
    /// off for long benchmarks.
    pub track_messages: bool,
    /// Time allowed for the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// On [`V1Emulator::shutdown`], how long to wait for connections to end
    /// after GOAWAY. Default 2 s.
    pub close_timeout: Duration,
    /// Largest `messages:send` body accepted (Google: 1 MiB).
    pub max_body_bytes: usize,
    /// Names / IP addresses of the generated server certificate. Default
    /// `localhost`, `127.0.0.1`, `::1`.
    pub tls_names: Vec<String>,
    /// Use this certificate instead of generating one.
    pub tls_identity: Option<TlsIdentity>,
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
}

impl Default for V1Config {
    fn default() -> Self {
        V1Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            project_id: V1_DEFAULT_PROJECT_ID.to_owned(),
            project_number: V1_DEFAULT_PROJECT_NUMBER.to_owned(),
            service_account_out: None,
            ca_out: None,
            stats_listen: None,
            faults: V1Faults::default(),
            token_lifetime: Duration::from_secs(3600),
            track_messages: true,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            max_body_bytes: 1 << 20,
            tls_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            tls_identity: None,
        }
    }
}

impl V1Config {
    /// Defaults of the stand-alone `gimmm emulator --api http-v1`: listen
    /// 127.0.0.1:5238, stats on 127.0.0.1:5239, service account written to
    /// `./gimmm-emulator-sa.json`, CA to `./gimmm-emulator-ca.pem`.
    pub fn standalone() -> Self {
        V1Config {
            listen: parse_addr(V1_DEFAULT_LISTEN),
            stats_listen: Some(parse_addr(V1_DEFAULT_STATS_LISTEN)),
            service_account_out: Some(PathBuf::from(V1_DEFAULT_SERVICE_ACCOUNT_OUT)),
            ca_out: Some(PathBuf::from(crate::DEFAULT_CA_OUT)),
            ..V1Config::default()
        }
    }
}

/// Why the HTTP v1 emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum V1Error {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate or key generation failed.
    #[error("key generation failed: {0}")]
    Keys(String),
    /// The TLS server configuration was refused.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] xmpp::XmppError),
    /// The initial faults are inconsistent.
    #[error("invalid faults: {0}")]
    Faults(String),
    /// A file could not be written.
    #[error("cannot write the {what} to {path}: {source}")]
    Write {
        /// "CA certificate" or "service account".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Other I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A running HTTP v1 emulator. Dropping it stops every task abruptly;
/// [`V1Emulator::shutdown`] sends GOAWAY first.
pub struct V1Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stats_addr: Option<SocketAddr>,
    endpoint: String,
    ca_pem: String,
    ca_out: Option<PathBuf>,
    service_account_out: Option<PathBuf>,
}

impl std::fmt::Debug for V1Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V1Emulator")
            .field("addr", &self.addr)
            .field("stats_addr", &self.stats_addr)
            .field("project_id", &self.shared.fixed.project_id)
            .field("service_account", &self.shared.sa)
            .finish_non_exhaustive()
    }
}

/// The address clients should use for a bound address: an unspecified IP
/// becomes the loopback of its family.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

async fn write_file(
    path: &Path,
    contents: &str,
    what: &'static str,
    private: bool,
) -> Result<(), V1Error> {
    let err = |source| V1Error::Write {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).await.map_err(err)?;
    #[cfg(unix)]
    if private {
        // `mode` only applies when the file is created: tighten an old one.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(err)?;
    }
    tokio::io::AsyncWriteExt::write_all(&mut f, contents.as_bytes())
        .await
        .map_err(err)?;
    tokio::io::AsyncWriteExt::flush(&mut f).await.map_err(err)?;
    Ok(())
}

impl V1Emulator {
    /// Generate the keys, write the files, bind the listeners and start
    /// serving. Must be called inside a tokio runtime.
    pub async fn start(cfg: V1Config) -> Result<V1Emulator, V1Error> {
        cfg.faults.check().map_err(V1Error::Faults)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| V1Error::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr()?;
        let stats_listener = match cfg.stats_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|source| V1Error::Bind { addr: a, source })?,
            ),
            None => None,
        };
        let stats_addr = match &stats_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let endpoint = format!("https://{}", reachable(addr));
        let token_uri = format!("{endpoint}/token");

        // RSA key generation takes a while: keep it off the async workers.
        let (project_id, uri) = (cfg.project_id.clone(), token_uri.clone());
        let sa =
            tokio::task::spawn_blocking(move || auth::ServiceAccount::generate(&project_id, &uri))
                .await
                .map_err(|e| V1Error::Keys(e.to_string()))?
                .map_err(V1Error::Keys)?;

        let identity = match cfg.tls_identity.clone() {
            Some(id) => id,
            None => {
                TlsIdentity::generate(&cfg.tls_names).map_err(|e| V1Error::Keys(e.to_string()))?
            }
        };
        let mut server_config = (*xmpp::connect::server_config(
            identity.cert_chain_pem.as_bytes(),
            identity.key_pem.as_bytes(),
        )?)
        .clone();
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        if let Some(path) = &cfg.ca_out {
            write_file(path, &identity.ca_pem, "CA certificate", false).await?;
        }
        if let Some(path) = &cfg.service_account_out {
            write_file(path, &sa.json, "service account", true).await?;
        }

        let fixed = Fixed {
            project_id: cfg.project_id.clone(),
            project_number: cfg.project_number.clone(),
            token_lifetime: cfg.token_lifetime,
            track_messages: cfg.track_messages,
            handshake_timeout: cfg.handshake_timeout,
            close_timeout: cfg.close_timeout,
            max_body_bytes: cfg.max_body_bytes,
        };
        let shared = Arc::new(Shared::new(fixed, sa, cfg.faults.clone()));
        let acceptor = TlsAcceptor::from(Arc::new(server_config));
        shared
            .tracker
            .spawn(server::accept_loop(Arc::clone(&shared), listener, acceptor));
        if let Some(l) = stats_listener {
            let router = control::router(Arc::clone(&shared));
            let stop = shared.stop_accept.clone();
            shared.tracker.spawn(async move {
                let served = axum::serve(l, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "v1 emulator: stats endpoint failed");
                }
            });
        }
        tracing::info!(%addr, project_id = %cfg.project_id, "FCM HTTP v1 emulator listening");
        Ok(V1Emulator {
            shared,
            addr,
            stats_addr,
            endpoint,
            ca_pem: identity.ca_pem,
            ca_out: cfg.ca_out,
            service_account_out: cfg.service_account_out,
        })
    }

    /// The bound TLS address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound stats address, if the endpoint is enabled.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.stats_addr
    }

    /// Base URL for clients, e.g. `https://127.0.0.1:5238` (gimmm's
    /// `fcm.endpoint`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// URL of the send method for the emulator's project.
    pub fn send_url(&self) -> String {
        format!(
            "{}/v1/projects/{}/messages:send",
            self.endpoint, self.shared.fixed.project_id
        )
    }

    /// The token endpoint (`token_uri` of the key file).
    pub fn token_uri(&self) -> &str {
        &self.shared.sa.token_uri
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the CA was written, if anywhere.
    pub fn ca_out(&self) -> Option<&Path> {
        self.ca_out.as_deref()
    }

    /// The project id served.
    pub fn project_id(&self) -> &str {
        &self.shared.fixed.project_id
    }

    /// The project number (also accepted in the path).
    pub fn project_number(&self) -> &str {
        &self.shared.fixed.project_number
    }

    /// The service-account JSON key file, private key included. Treat it as
    /// a secret: never log it.
    pub fn service_account_json(&self) -> &str {
        &self.shared.sa.json
    }

    /// Where the service account was written, if anywhere.
    pub fn service_account_out(&self) -> Option<&Path> {
        self.service_account_out.as_deref()
    }

    /// `client_email` of the service account (the JWT's `iss`).
    pub fn client_email(&self) -> &str {
        &self.shared.sa.client_email
    }

    /// `private_key_id` of the service account (the JWT header's `kid`).
    pub fn private_key_id(&self) -> &str {
        &self.shared.sa.private_key_id
    }

    /// `client_id` of the service account.
    pub fn client_id(&self) -> &str {
        &self.shared.sa.client_id
    }

    /// Start-up lines: `listening on …`, `project id …`, `service account
    /// written to …`, `ca written to …`, `token uri …`, `stats on …`, then one
    /// `fault: …` line per active fault. Never the key.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "listening on {} (FCM HTTP v1, {})",
                self.addr, self.endpoint
            ),
            format!("project id {}", self.shared.fixed.project_id),
        ];
        if let Some(p) = &self.service_account_out {
            out.push(format!("service account written to {}", p.display()));
        }
        if let Some(p) = &self.ca_out {
            out.push(format!("ca written to {}", p.display()));
        }
        out.push(format!("token uri {}", self.shared.sa.token_uri));
        if let Some(a) = self.stats_addr {
            out.push(format!("stats on http://{a}/stats"));
        }
        out.extend(self.faults().describe());
        out
    }

    /// Replace the fault settings. They apply from the next request; the
    /// stream limit applies to connections opened afterwards; a changed
    /// quota starts a fresh window. Refused when [`V1Faults::check`] fails.
    pub fn set_faults(&self, f: V1Faults) -> Result<(), V1Error> {
        f.check().map_err(V1Error::Faults)?;
        self.shared.set_faults(f);
        Ok(())
    }

    /// The fault settings in force.
    pub fn faults(&self) -> V1Faults {
        self.shared.faults.borrow().clone()
    }

    /// From now on, sends to `token` are answered 404 `UNREGISTERED`.
    pub fn mark_unregistered(&self, token: &str) {
        self.shared.mark_unregistered(token);
    }

    /// Drop every connection abruptly (no GOAWAY, no TLS close_notify;
    /// requests in flight stay unanswered).
    pub fn drop_all(&self) {
        self.shared.drop_all();
    }

    /// Graceful shutdown of every open connection (GOAWAY on HTTP/2).
    pub fn goaway_all(&self) {
        self.shared.goaway_all();
    }

    /// Forget every access token issued so far: clients get 401 until they
    /// fetch a new one.
    pub fn revoke_tokens(&self) {
        self.shared.tokens.revoke_all();
    }

    /// Full snapshot of the counters, per-message stats included.
    pub fn stats(&self) -> V1Stats {
        self.shared.stats(true)
    }

    /// Snapshot without the per-message map.
    pub fn stats_summary(&self) -> V1Stats {
        self.shared.stats(false)
    }

    /// Zero every counter and forget per-message stats (e.g. after a
    /// benchmark warm-up).
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Wait until `pred` holds on a full snapshot; `Err(last snapshot)` after
    /// `timeout`. Woken by every change, no polling.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&V1Stats) -> bool,
    ) -> Result<V1Stats, V1Stats> {
        self.wait_inner(timeout, true, pred).await
    }

    /// Like [`V1Emulator::wait_until`] on summary snapshots.
    pub async fn wait_until_summary(
        &self,
        timeout: Duration,
        pred: impl Fn(&V1Stats) -> bool,
    ) -> Result<V1Stats, V1Stats> {
        self.wait_inner(timeout, false, pred).await
    }

    async fn wait_inner(
        &self,
        timeout: Duration,
        full: bool,
        pred: impl Fn(&V1Stats) -> bool,
    ) -> Result<V1Stats, V1Stats> {
        struct Registered<'a>(&'a Shared);
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                self.0.waiters.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        self.shared.waiters.fetch_add(1, Ordering::SeqCst);
        let _registered = Registered(&self.shared);
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let snap = self.shared.stats(full);
            if pred(&snap) {
                return Ok(snap);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let snap = self.shared.stats(full);
                    return if pred(&snap) { Ok(snap) } else { Err(snap) };
                }
            }
        }
    }

    /// Stop listening, send GOAWAY on every connection, wait up to
    /// [`V1Config::close_timeout`] for them to end, then stop every task.
    pub async fn shutdown(self) {
        let shared = Arc::clone(&self.shared);
        shared.stop_accept.cancel();
        shared.goaway_all();
        let closed = self
            .wait_until_summary(shared.fixed.close_timeout, |_| shared.live_count() == 0)
            .await;
        if closed.is_err() {
            tracing::debug!("v1 emulator: connections still open at shutdown");
        }
        shared.root.cancel();
        shared.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.tracker.wait()).await;
    }
}

impl Drop for V1Emulator {
    fn drop(&mut self) {
        self.shared.root.cancel();
    }
}
