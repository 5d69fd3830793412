//! Faithful stand-ins for Firebase Cloud Messaging, the targets of gimmm's
//! tests and the load sources of its benchmarks:
//!
//! | API | emulator | configuration | SPEC |
//! |---|---|---|---|
//! | XMPP Connection Server (CCS), shut down by Google in 2024 | [`Emulator`] | [`EmulatorConfig`], [`Faults`], [`Stats`] | §5 |
//! | FCM HTTP v1 (`projects.messages.send` + OAuth 2 token endpoint) | [`v1::V1Emulator`] | [`v1::V1Config`], [`v1::V1Faults`], [`v1::V1Stats`] | §9 |
//!
//! The **HTTP v1 emulator** ([`v1`]) serves Google's HTTP v1 API over TLS
//! (ALPN `h2` and `http/1.1`, certificate from the same throw-away CA as
//! below): it generates a service-account key whose `token_uri` is its own
//! `POST /token` (a JWT-bearer grant checked like Google's), answers
//! `POST /v1/projects/{P}/messages:send` with Google's validation, token
//! registry and `google.rpc.Status` error bodies, injects faults (latency,
//! error codes with `Retry-After`, quotas, GOAWAY, drops, short-lived
//! tokens, a failing token endpoint, the concurrent-stream limit) and counts
//! everything, with its own plain-HTTP stats endpoint. See [`v1`].
//!
//! The rest of this page is the **CCS emulator**, a faithful stand-in for
//! Firebase Cloud Messaging's XMPP Connection Server (SPEC §5).
//!
//! What is emulated (seed documents in `shared/seeds/`):
//!
//! * **Connection** (seed 000, handshake trace): direct TLS from the first
//!   byte with a certificate generated at start (a throw-away CA, written to
//!   [`EmulatorConfig::ca_out`] and returned by [`Emulator::ca_pem`], signing a
//!   server certificate for `localhost`, `127.0.0.1` and `::1`); stream
//!   header; SASL PLAIN checked against the sender id (`<sender_id>@<any
//!   domain>`, e.g. `fcm.googleapis.com` or `gcm.googleapis.com`) and the
//!   server key, `<failure><not-authorized/></failure>` and close otherwise;
//!   stream restart; resource bind returning
//!   `<sender_id>@fcm.googleapis.com/<resource>`.
//! * **Downstream messages** (seed 004, table 1): each `<gcm>` JSON is
//!   validated with [`fcm::validate_downstream`] and answered with an ack or a
//!   nack (table 3) carrying the code of table 4: `INVALID_JSON` for
//!   malformed JSON, bad `time_to_live`, reserved data keys, oversize
//!   payloads…; `BAD_REGISTRATION` for a token that is not well-formed;
//!   `DEVICE_UNREGISTERED` for a token starting with `unregistered` or marked
//!   with [`Emulator::mark_unregistered`]; `CONNECTION_DRAINING` for messages
//!   arriving on a draining connection. Every well-formed token is a
//!   registered device; `/topics/…` and `condition` targets are acked;
//!   `dry_run` messages are acked but not delivered.
//! * **Delivery receipts** (seed 000, receipt example): a delivered message
//!   with `delivery_receipt_requested` produces a `message_type":"receipt"`
//!   stanza (`message_id` `dr2:<original>`, `from` `gcm.googleapis.com`,
//!   `data.original_message_id`, `data.message_status`
//!   `MESSAGE_SENT_TO_DEVICE`, …) after the ack.
//! * **Upstream messages** (tables 5 and 6): simulated devices send messages
//!   with [`Emulator::send_upstream`]; receipts and upstream messages must be
//!   acked by the app server (`{"to":..,"message_id":..,"message_type":"ack"}`);
//!   whatever is unacked when its connection closes is resent on another
//!   connection, as FCM does. A malformed ack is nacked with `BAD_ACK`.
//! * **Flow control**: per connection the number of downstream messages not
//!   answered yet is tracked; its high-water mark and every message beyond
//!   the window of 100 ([`EmulatorConfig::max_pending`]) are counted.
//! * **Control messages** (table 7): `CONNECTION_DRAINING` on demand or by
//!   fault; the draining connection nacks new messages with
//!   `CONNECTION_DRAINING`, answers everything it already had, and is then
//!   closed with `</stream:stream>`.
//! * **Fault injection** ([`Faults`]): nack a fraction of messages, delay
//!   answers, drain after N messages or every T, drop the TCP connection
//!   abruptly, write in tiny chunks, send whitespace keepalives, use the
//!   `<data:gcm xmlns:data="google:mobile:data">` form.
//!
//! Everything it sees is counted ([`Stats`]), available as a Rust snapshot,
//! through [`Emulator::wait_until`], and over HTTP/JSON on
//! [`EmulatorConfig::stats_listen`]:
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /stats` (`?summary=true` leaves out `messages`) | | [`Stats`] |
//! | `GET /faults` | | [`Faults`] |
//! | `POST /faults` | [`Faults`] JSON (durations as `*_ms`) | the faults now in force |
//! | `POST /unregister/{token}` | | `{"unregistered":token}` |
//! | `POST /upstream` | `{"from":..,"category":..,"data":{..}}` | `{"message_id":..}` |
//! | `POST /drain` | | `{"ok":true}` (CONNECTION_DRAINING on every connection) |
//! | `POST /drop` | | `{"ok":true}` (every connection dropped abruptly) |
//!
//! ```no_run
//! # async fn demo() -> Result<(), emulator::EmulatorError> {
//! use emulator::{Emulator, EmulatorConfig};
//! let emu = Emulator::start(EmulatorConfig::default()).await?;
//! println!("CCS emulator on {} (CA: {} bytes)", emu.addr(), emu.ca_pem().len());
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The server key is never logged.

mod conn;
mod faults;
mod http;
mod state;
mod stats;
mod tls;
pub mod v1;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use faults::Faults;
pub use fcm::ErrorCode;
pub use stats::{ConnStats, MsgStats, Stats};
pub use tls::TlsIdentity;

use state::{Shared, Tunables};

/// Default XMPP listen address of the stand-alone emulator (FCM's testing port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5236";
/// Default stats listen address of the stand-alone emulator.
pub const DEFAULT_STATS_LISTEN: &str = "127.0.0.1:5237";
/// Default sender id.
pub const DEFAULT_SENDER_ID: &str = "123456789012";
/// Default server key.
pub const DEFAULT_SERVER_KEY: &str = "emulator-key";
/// Default file the stand-alone emulator writes its CA certificate to.
pub const DEFAULT_CA_OUT: &str = "./gimmm-emulator-ca.pem";
/// Default `category` of delivery receipts.
pub const DEFAULT_RECEIPT_CATEGORY: &str = "com.example.app";
/// FCM's flow-control window.
pub const DEFAULT_MAX_PENDING: u64 = 100;

/// Configuration of one emulator. Plain data (no clap), so the CLI maps its
/// flags onto it.
///
/// `Default` suits tests: ephemeral port on 127.0.0.1, no stats endpoint, no
/// CA file. [`EmulatorConfig::standalone`] gives the `gimmm emulator`
/// defaults of SPEC §5.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// XMPP (direct TLS) listen address.
    pub listen: SocketAddr,
    /// Sender id accepted in SASL PLAIN (`<sender_id>@<domain>`).
    pub sender_id: String,
    /// Server key accepted as SASL password. Never logged.
    pub server_key: String,
    /// Where to serve the HTTP/JSON stats and control endpoint.
    pub stats_listen: Option<SocketAddr>,
    /// Write the CA certificate (PEM) here at start.
    pub ca_out: Option<PathBuf>,
    /// Initial fault settings.
    pub faults: Faults,
    /// `category` of the delivery receipts (the app's package name).
    pub receipt_category: String,
    /// Flow-control window: a message arriving while this many are pending
    /// on its connection counts as a window violation. Default 100.
    pub max_pending: u64,
    /// After CONNECTION_DRAINING, wait at least this long before closing the
    /// connection (and until every pending message is answered and every
    /// upstream message on it is acked). Default 200 ms.
    pub drain_grace: Duration,
    /// Close a draining connection after this long even if messages are still
    /// pending or unacked. Default 10 s.
    pub drain_timeout: Duration,
    /// Time allowed for TLS plus XMPP negotiation. Default 10 s.
    pub handshake_timeout: Duration,
    /// Time allowed for the peer to end its side after we sent
    /// `</stream:stream>`. Default 2 s.
    pub close_timeout: Duration,
    /// Largest stanza accepted from clients. Default 64 KiB.
    pub max_stanza_bytes: usize,
    /// `time_to_live` put in upstream messages. Default 86400.
    pub upstream_ttl: u32,
    /// Names / IP addresses of the generated server certificate. Default
    /// `localhost`, `127.0.0.1`, `::1`.
    pub tls_names: Vec<String>,
    /// Use this certificate instead of generating one.
    pub tls_identity: Option<TlsIdentity>,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The server key is never printed.
        f.debug_struct("EmulatorConfig")
            .field("listen", &self.listen)
            .field("sender_id", &self.sender_id)
            .field("server_key", &"<redacted>")
            .field("stats_listen", &self.stats_listen)
            .field("ca_out", &self.ca_out)
            .field("faults", &self.faults)
            .field("receipt_category", &self.receipt_category)
            .field("max_pending", &self.max_pending)
            .field("drain_grace", &self.drain_grace)
            .field("drain_timeout", &self.drain_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("max_stanza_bytes", &self.max_stanza_bytes)
            .field("upstream_ttl", &self.upstream_ttl)
            .field("tls_names", &self.tls_names)
            .field("tls_identity", &self.tls_identity)
            .finish()
    }
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            sender_id: DEFAULT_SENDER_ID.to_owned(),
            server_key: DEFAULT_SERVER_KEY.to_owned(),
            stats_listen: None,
            ca_out: None,
            faults: Faults::default(),
            receipt_category: DEFAULT_RECEIPT_CATEGORY.to_owned(),
            max_pending: DEFAULT_MAX_PENDING,
            drain_grace: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            max_stanza_bytes: 64 * 1024,
            upstream_ttl: 86_400,
            tls_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            tls_identity: None,
        }
    }
}

impl EmulatorConfig {
    /// Defaults of the stand-alone `gimmm emulator` (SPEC §5): listen
    /// 127.0.0.1:5236, stats on 127.0.0.1:5237, CA written to
    /// `./gimmm-emulator-ca.pem`.
    pub fn standalone() -> Self {
        EmulatorConfig {
            listen: parse_addr(DEFAULT_LISTEN),
            stats_listen: Some(parse_addr(DEFAULT_STATS_LISTEN)),
            ca_out: Some(PathBuf::from(DEFAULT_CA_OUT)),
            ..EmulatorConfig::default()
        }
    }

    /// Start-up lines for this configuration (configured addresses; use
    /// [`Emulator::describe`] for the bound ones):
    /// `listening on …`, `sender id …`, `server key …`, `ca written to …`,
    /// `stats on http://…/stats`, then one `fault: …` line per active fault.
    pub fn describe(&self) -> Vec<String> {
        describe_lines(
            self.listen,
            &self.sender_id,
            &self.server_key,
            self.ca_out.as_ref(),
            self.stats_listen,
            &self.faults,
        )
    }
}

fn describe_lines(
    listen: SocketAddr,
    sender_id: &str,
    server_key: &str,
    ca_out: Option<&PathBuf>,
    stats: Option<SocketAddr>,
    faults: &Faults,
) -> Vec<String> {
    let mut out = vec![
        format!("listening on {listen}"),
        format!("sender id {sender_id}"),
        format!("server key {server_key}"),
    ];
    if let Some(p) = ca_out {
        out.push(format!("ca written to {}", p.display()));
    }
    if let Some(a) = stats {
        out.push(format!("stats on http://{a}/stats"));
    }
    out.extend(faults.describe());
    out
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Cert(String),
    /// The TLS server configuration was refused.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] xmpp::XmppError),
    /// The CA file could not be written.
    #[error("cannot write CA certificate to {path}: {source}")]
    CaOut {
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

/// A running CCS emulator. Dropping it stops every task abruptly;
/// [`Emulator::shutdown`] closes streams politely first.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stats_addr: Option<SocketAddr>,
    ca_pem: String,
    ca_out: Option<PathBuf>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("stats_addr", &self.stats_addr)
            .field("sender_id", &self.shared.sender_id)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Generate the certificate, write the CA file, bind the listeners and
    /// start serving. Must be called inside a tokio runtime.
    pub async fn start(cfg: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let identity = match cfg.tls_identity.clone() {
            Some(id) => id,
            None => TlsIdentity::generate(&cfg.tls_names)?,
        };
        let server_config = xmpp::connect::server_config(
            identity.cert_chain_pem.as_bytes(),
            identity.key_pem.as_bytes(),
        )?;
        if let Some(path) = &cfg.ca_out {
            tokio::fs::write(path, identity.ca_pem.as_bytes())
                .await
                .map_err(|source| EmulatorError::CaOut {
                    path: path.clone(),
                    source,
                })?;
        }
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| EmulatorError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let addr = listener.local_addr()?;
        let stats_listener = match cfg.stats_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|source| EmulatorError::Bind { addr: a, source })?,
            ),
            None => None,
        };
        let stats_addr = match &stats_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };

        let tun = Tunables {
            receipt_category: cfg.receipt_category.clone(),
            max_pending: cfg.max_pending,
            drain_grace: cfg.drain_grace,
            drain_timeout: cfg.drain_timeout,
            handshake_timeout: cfg.handshake_timeout,
            close_timeout: cfg.close_timeout,
            max_stanza_bytes: cfg.max_stanza_bytes,
            upstream_ttl: cfg.upstream_ttl,
        };
        let (shared, receipts_rx) = Shared::new(
            cfg.sender_id.clone(),
            cfg.server_key.clone(),
            tun,
            cfg.faults.clone(),
        );
        let shared = Arc::new(shared);

        let acceptor = TlsAcceptor::from(server_config);
        shared
            .tracker
            .spawn(conn::accept_loop(Arc::clone(&shared), listener, acceptor));
        shared
            .tracker
            .spawn(conn::receipt_scheduler(Arc::clone(&shared), receipts_rx));
        if let Some(l) = stats_listener {
            let router = http::router(Arc::clone(&shared));
            let stop = shared.stop_accept.clone();
            shared.tracker.spawn(async move {
                let served = axum::serve(l, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "emulator: stats endpoint failed");
                }
            });
        }
        tracing::info!(%addr, sender_id = %cfg.sender_id, "CCS emulator listening");
        Ok(Emulator {
            shared,
            addr,
            stats_addr,
            ca_pem: identity.ca_pem,
            ca_out: cfg.ca_out,
        })
    }

    /// The bound XMPP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound stats address, if the endpoint is enabled.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.stats_addr
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the CA was written, if anywhere.
    pub fn ca_out(&self) -> Option<&std::path::Path> {
        self.ca_out.as_deref()
    }

    /// The sender id accepted in SASL.
    pub fn sender_id(&self) -> &str {
        &self.shared.sender_id
    }

    /// The server key accepted in SASL.
    pub fn server_key(&self) -> &str {
        &self.shared.server_key
    }

    /// Start-up lines with the bound addresses (see
    /// [`EmulatorConfig::describe`]).
    pub fn describe(&self) -> Vec<String> {
        describe_lines(
            self.addr,
            &self.shared.sender_id,
            &self.shared.server_key,
            self.ca_out.as_ref(),
            self.stats_addr,
            &self.faults(),
        )
    }

    /// Replace the fault settings (takes effect with the next read on each
    /// connection; timers are re-armed at once).
    pub fn set_faults(&self, f: Faults) {
        self.shared.set_faults(f);
    }

    /// The fault settings in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults.borrow().clone()
    }

    /// From now on, messages to `token` are nacked `DEVICE_UNREGISTERED`.
    pub fn mark_unregistered(&self, token: &str) {
        self.shared.mark_unregistered(token);
    }

    /// From now on, acks for messages to `token` carry
    /// `"registration_id": canonical` (FCM's canonical-token hint).
    pub fn set_canonical(&self, token: &str, canonical: &str) {
        self.shared.set_canonical(token, canonical);
    }

    /// A simulated device sends an upstream message (table 5). It goes out on
    /// a ready connection (fewest unacked first), or waits for one, and is
    /// resent until the app server acks it. Returns its `message_id`.
    pub fn send_upstream(&self, from: &str, category: &str, data: Map<String, Value>) -> String {
        self.shared.send_upstream(from, category, data)
    }

    /// Send CONNECTION_DRAINING on every ready connection.
    pub fn drain_all(&self) {
        self.shared.drain_all();
    }

    /// Drop every connection abruptly (no stream end, no TLS close_notify).
    pub fn drop_all(&self) {
        self.shared.drop_all();
    }

    /// Full snapshot of the counters, per-message stats included.
    pub fn stats(&self) -> Stats {
        self.shared.stats(true)
    }

    /// Snapshot without the per-message map (cheap even after millions of
    /// messages).
    pub fn stats_summary(&self) -> Stats {
        self.shared.stats(false)
    }

    /// Zero every counter and forget per-message stats (e.g. after a
    /// benchmark warm-up). Connections and upstream in flight are kept.
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Wait until `pred` holds on a full snapshot; `Err(last snapshot)` after
    /// `timeout`. Woken by every change, no polling.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&Stats) -> bool,
    ) -> Result<Stats, Stats> {
        self.wait_inner(timeout, true, pred).await
    }

    /// Like [`Emulator::wait_until`] on summary snapshots (no `messages`).
    pub async fn wait_until_summary(
        &self,
        timeout: Duration,
        pred: impl Fn(&Stats) -> bool,
    ) -> Result<Stats, Stats> {
        self.wait_inner(timeout, false, pred).await
    }

    async fn wait_inner(
        &self,
        timeout: Duration,
        full: bool,
        pred: impl Fn(&Stats) -> bool,
    ) -> Result<Stats, Stats> {
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

    /// Stop listening, end every stream with `</stream:stream>`, wait briefly
    /// for the clients, then stop every task.
    pub async fn shutdown(self) {
        let shared = Arc::clone(&self.shared);
        shared.stop_accept.cancel();
        shared.close_all();
        let closed = self
            .wait_until_summary(shared.tun.close_timeout, |_| shared.live_count() == 0)
            .await;
        if closed.is_err() {
            tracing::debug!("emulator: connections still open at shutdown");
        }
        shared.root.cancel();
        shared.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.tracker.wait()).await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.root.cancel();
    }
}
