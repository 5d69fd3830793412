//! Configuration (SPEC §2, §8.1): a TOML file, `GIMMM_<SECTION>__<KEY>`
//! environment overrides, defaults for everything, and validation that names
//! the key. `[fcm] api` chooses the link (XMPP or HTTP v1, see
//! [`Config::link`]); an HTTP v1 service-account key file is read and
//! checked at load time, and refused naming the problem, never its content.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A secret string (server key, BAL token): never shown by `Debug`/`Display`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole configuration.
///
/// It is `Serialize` so that test support and tools can write a config file
/// from a typed value. **Serializing exposes every secret** (server key, BAL
/// and admin tokens) in clear text: only test support and tools that write a
/// config file should do it, and the result must never be logged.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// FCM (CCS) connection.
    pub fcm: FcmConfig,
    /// Retry policy for nacks and reconnects.
    pub retry: RetryConfig,
    /// BAL listener and sessions.
    pub bal: BalConfig,
    /// Durable store.
    pub store: StoreConfig,
    /// Admin HTTP.
    pub admin: AdminConfig,
    /// Upstream ingress over HTTPS (SPEC §10).
    pub ingress: IngressConfig,
    /// Several nodes on one PostgreSQL store (SPEC §12; with `store.url`).
    pub cluster: ClusterConfig,
}

/// `[cluster]` (SPEC §12): how this node shares a PostgreSQL store with
/// others. Today one node writes at a time (the holder of the writer
/// lease) and the others wait as standbys; partitioned ownership over
/// several active nodes is not built yet (`partitions` is not accepted).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name in the lease and the logs; default hostname-pid.
    pub node_id: String,
    /// A node silent this long loses the writing to a standby.
    pub lease_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            lease_secs: 10,
        }
    }
}

/// Longest `cluster.lease_secs` accepted (an hour).
pub const MAX_LEASE_SECS: u64 = 3600;

impl ClusterConfig {
    /// The store's lease options: this node, its lease, waiting as a
    /// standby while another node writes.
    pub fn lease(&self) -> store::postgres::LeaseOptions {
        store::postgres::LeaseOptions {
            node_id: if self.node_id.is_empty() {
                store::postgres::default_node_id()
            } else {
                self.node_id.clone()
            },
            lease: std::time::Duration::from_secs(self.lease_secs),
            wait: None,
        }
    }
}

/// `fcm.api`: which FCM API gimmm speaks (SPEC §8.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// HTTP v1 when a service account is configured, XMPP when a server key
    /// is; neither: the in-process XMPP emulator.
    #[default]
    Auto,
    /// FCM's XMPP connection server (CCS).
    Xmpp,
    /// FCM's HTTP v1 API.
    HttpV1,
}

/// The link gimmm will run, as [`Config::link`] resolves `fcm.api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChoice {
    /// XMPP to CCS; `emulator` when no credentials are configured (then the
    /// in-process CCS emulator is the endpoint).
    Xmpp {
        /// No server key: the in-process emulator.
        emulator: bool,
    },
    /// FCM HTTP v1; `emulator` when no service account is configured (then
    /// the in-process HTTP v1 emulator is the endpoint).
    HttpV1 {
        /// No service account: the in-process emulator.
        emulator: bool,
    },
}

impl LinkChoice {
    /// True for the HTTP v1 link.
    pub fn is_http_v1(self) -> bool {
        matches!(self, LinkChoice::HttpV1 { .. })
    }

    /// True when gimmm must start an in-process emulator.
    pub fn is_emulator(self) -> bool {
        match self {
            LinkChoice::Xmpp { emulator } | LinkChoice::HttpV1 { emulator } => emulator,
        }
    }
}

/// Default `fcm.endpoint`: Google's FCM HTTP v1 API.
pub const DEFAULT_V1_ENDPOINT: &str = "https://fcm.googleapis.com";

/// The environment variable Google's libraries read the service-account key
/// file from (SPEC §8.1).
pub const GOOGLE_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// `[fcm]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcmConfig {
    /// Which API: `auto`, `xmpp` or `http_v1`.
    pub api: Api,
    /// CCS host.
    pub host: String,
    /// CCS port (5235 production, 5236 testing).
    pub port: u16,
    /// Sender id (project number).
    pub sender_id: String,
    /// Server key.
    pub server_key: Secret,
    /// File holding the server key (instead of `server_key`).
    pub server_key_file: Option<PathBuf>,
    /// SASL PLAIN user is `<sender_id>@<auth_domain>`; also the stream `to`.
    pub auth_domain: String,
    /// Number of parallel CCS connections.
    pub connections: usize,
    /// FCM's flow-control window per connection.
    pub max_pending_per_connection: usize,
    /// Extra CA certificate (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Whitespace keepalive interval; a link silent for 3x this is dead.
    pub keepalive_secs: u64,
    /// Largest stanza accepted from CCS.
    pub max_stanza_bytes: usize,
    /// On SIGTERM, how long to wait for FCM's answers to what is in flight
    /// (SPEC §11).
    pub shutdown_grace_secs: u64,
    /// HTTP v1: the Google service-account JSON key file; when unset,
    /// `$GOOGLE_APPLICATION_CREDENTIALS` (resolved by [`Config::load`]).
    pub service_account_file: Option<PathBuf>,
    /// HTTP v1: the project; empty = the key file's `project_id`.
    pub project_id: String,
    /// HTTP v1: base URL of the API.
    pub endpoint: String,
    /// HTTP v1: client-side project quota (a token bucket over the pool); 0
    /// = no limit.
    pub max_messages_per_minute: u64,
    /// HTTP v1: a request without an answer after this long is retried.
    pub request_timeout_secs: u64,
    /// Where `service_account_file` came from when it was not in the file
    /// or a `GIMMM_` variable (`$GOOGLE_APPLICATION_CREDENTIALS`), for
    /// messages.
    #[serde(skip)]
    pub service_account_from_env: bool,
}

impl Default for FcmConfig {
    fn default() -> Self {
        FcmConfig {
            host: "fcm-xmpp.googleapis.com".into(),
            port: 5235,
            sender_id: String::new(),
            server_key: Secret::default(),
            server_key_file: None,
            auth_domain: "fcm.googleapis.com".into(),
            connections: 1,
            max_pending_per_connection: 100,
            ca_file: None,
            keepalive_secs: 60,
            max_stanza_bytes: 64 * 1024,
            shutdown_grace_secs: 10,
            api: Api::Auto,
            service_account_file: None,
            project_id: String::new(),
            endpoint: DEFAULT_V1_ENDPOINT.into(),
            max_messages_per_minute: 600_000,
            request_timeout_secs: 30,
            service_account_from_env: false,
        }
    }
}

impl FcmConfig {
    /// True when XMPP credentials are configured (sender id and server
    /// key). Without them the XMPP link runs against the in-process
    /// emulator.
    pub fn has_credentials(&self) -> bool {
        !self.sender_id.is_empty()
            && (!self.server_key.is_empty() || self.server_key_file.is_some())
    }

    /// True when an HTTP v1 service account is configured (the key file, or
    /// `$GOOGLE_APPLICATION_CREDENTIALS` once resolved by [`Config::load`]).
    pub fn has_service_account(&self) -> bool {
        self.service_account_file
            .as_ref()
            .is_some_and(|p| !p.as_os_str().is_empty())
    }

    /// The config key (or variable) the service account came from, for
    /// messages.
    pub fn service_account_key(&self) -> &'static str {
        if self.service_account_from_env {
            GOOGLE_APPLICATION_CREDENTIALS
        } else {
            "fcm.service_account_file"
        }
    }

    /// Reads and checks the service-account key file, if one is configured
    /// (SPEC §8.1). The error names the key and the problem, never the
    /// key's content.
    pub fn load_service_account(
        &self,
    ) -> Result<Option<crate::link::http_v1::ServiceAccount>, ConfigError> {
        let Some(path) = self.service_account_file.as_deref() else {
            return Ok(None);
        };
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        crate::link::http_v1::ServiceAccount::from_file(path)
            .map(Some)
            .map_err(|e| invalid(self.service_account_key(), e.to_string()))
    }
}

/// `[retry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First retry delay.
    pub initial_ms: u64,
    /// Cap on the delay.
    pub max_ms: u64,
    /// Attempts before DOWNSTREAM_REJECT MAX_RETRIES.
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_ms: 1000,
            max_ms: 300_000,
            max_attempts: 10,
        }
    }
}

/// `[bal]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalConfig {
    /// Listen address.
    pub listen: String,
    /// Seconds a new connection has to LOGON.
    pub logon_timeout_secs: u64,
    /// Sequenced messages in flight to one session.
    pub max_unacked: usize,
    /// Longest line accepted.
    pub max_line_bytes: usize,
    /// Most BAL connections at once.
    pub max_connections: usize,
    /// Configured sessions.
    pub sessions: Vec<SessionConfig>,
    /// TLS on the listener (SPEC §11): the certificate chain (PEM, server
    /// certificate first). Set together with `tls_key_file`; unset or ""
    /// = plain TCP.
    pub tls_cert_file: Option<PathBuf>,
    /// TLS on the listener: the private key of `tls_cert_file` (PEM:
    /// PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for BalConfig {
    fn default() -> Self {
        BalConfig {
            listen: "127.0.0.1:5001".into(),
            logon_timeout_secs: 10,
            max_unacked: 100,
            max_line_bytes: 65536,
            max_connections: 1024,
            sessions: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl BalConfig {
    /// `(tls_cert_file, tls_key_file)` when TLS is configured (an empty
    /// path counts as unset). [`Config::validate`] makes sure it is both or
    /// neither.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        fn set(p: &Option<PathBuf>) -> Option<&Path> {
            p.as_deref().filter(|p| !p.as_os_str().is_empty())
        }
        set(&self.tls_cert_file).zip(set(&self.tls_key_file))
    }

    /// The listener's TLS server config, read from the files now; `None`
    /// without TLS. A file that cannot be read or used is refused naming
    /// its key, its path and the problem, never its content.
    pub fn tls_server_config(&self) -> Result<Option<crate::session::tls::TlsConfig>, ConfigError> {
        crate::session::tls::server_config(self)
    }
}

/// `[[bal.sessions]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Session id = FCM category.
    pub session_id: String,
    /// Shared secret.
    pub token: Secret,
    /// Ingress (SPEC §10): API keys an app may present as
    /// `Authorization: Bearer <key>`. Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_keys: Vec<Secret>,
    /// Ingress: a JWKS file (JSON) whose RS256 / ES256 keys verify the JWTs
    /// apps present as bearer tokens; `""` = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_jwks_file: Option<PathBuf>,
    /// Ingress: the `iss` a JWT must carry (required with a JWKS file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ingress_issuer: String,
    /// Ingress: the `aud` a JWT must carry (required with a JWKS file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ingress_audience: String,
}

impl SessionConfig {
    /// A session with a BAL token and no ingress credentials.
    pub fn new(session_id: impl Into<String>, token: impl Into<String>) -> SessionConfig {
        SessionConfig {
            session_id: session_id.into(),
            token: Secret::new(token),
            ingress_keys: Vec::new(),
            ingress_jwks_file: None,
            ingress_issuer: String::new(),
            ingress_audience: String::new(),
        }
    }

    /// The JWKS file, unless unset or `""`.
    pub fn jwks_file(&self) -> Option<&Path> {
        self.ingress_jwks_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// True when apps can authenticate to this session on the ingress.
    pub fn takes_ingress(&self) -> bool {
        !self.ingress_keys.is_empty() || self.jwks_file().is_some()
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite file (the embedded default; unused when `url` is set).
    pub path: PathBuf,
    /// PostgreSQL instead of SQLite (SPEC §12):
    /// `postgres://user[:password]@host[:port]/database`. A secret: its
    /// password is never printed; without one in the URL, `PGPASSWORD` of
    /// the environment is used.
    pub url: Secret,
    /// Hours finished downstream messages and upstream ids are kept for
    /// idempotency, deduplication and receipt routing (SPEC §11
    /// "Retention"); 0 keeps them forever. A fraction is allowed.
    pub retention_hours: f64,
}

/// Longest `store.retention_hours` accepted (ten years).
pub const MAX_RETENTION_HOURS: f64 = 24.0 * 365.0 * 10.0;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("gimmm-data/gimmm.db"),
            url: Secret::default(),
            retention_hours: 24.0,
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL store's target when `url` is set (SPEC §12), with
    /// `pgpassword` (`PGPASSWORD`) when the URL has no password.
    pub fn postgres(
        &self,
        pgpassword: Option<&str>,
    ) -> Result<Option<store::postgres::PgTarget>, ConfigError> {
        if self.url.is_empty() {
            return Ok(None);
        }
        store::postgres::PgTarget::parse(self.url.expose(), pgpassword)
            .map(Some)
            .map_err(|problem| invalid("store.url", problem))
    }

    /// Where the store lives, for messages (never a password).
    pub fn describe(&self) -> String {
        match self.postgres(None) {
            Ok(Some(t)) => t.to_string(),
            Ok(None) => format!("sqlite:{}", self.path.display()),
            Err(_) => "postgres (store.url is invalid)".into(),
        }
    }

    /// The retention as the store takes it: `None` (keep forever) for 0
    /// (and for a value [`Config::validate`] refuses).
    pub fn retention(&self) -> Option<std::time::Duration> {
        if self.retention_hours > 0.0 {
            std::time::Duration::try_from_secs_f64(self.retention_hours * 3600.0).ok()
        } else {
            None
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address; empty disables the admin server.
    pub listen: String,
    /// Bearer token required on `/api/*` when set.
    pub token: Secret,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8080".into(),
            token: Secret::default(),
        }
    }
}

/// `[ingress]` (SPEC §10): devices and apps `POST /v1/upstream` here.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Listen address; empty disables the ingress.
    pub listen: String,
    /// Certificate chain (PEM); with `tls_key_file`: HTTPS, else plain
    /// HTTP (behind a TLS proxy). `""` = none.
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Largest request body; larger = 413.
    pub max_body_bytes: usize,
    /// Token bucket per client (`from`) and session: requests per minute
    /// (also the burst); past it 429 with `Retry-After`.
    pub per_client_per_minute: u32,
    /// Connections open at once. When full, the connection idle the
    /// longest is closed to make room; if none is idle the new one is
    /// refused.
    pub max_connections: usize,
    /// A client has this long for its TLS handshake, each request head
    /// and each request body (slow clients are cut off).
    pub read_timeout_secs: u64,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            listen: String::new(),
            tls_cert_file: None,
            tls_key_file: None,
            max_body_bytes: 4096,
            per_client_per_minute: 240,
            max_connections: 4096,
            read_timeout_secs: 10,
        }
    }
}

impl IngressConfig {
    /// The certificate and key files, when both are set (not `""`).
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        fn nonempty(p: &Option<PathBuf>) -> Option<&Path> {
            p.as_deref().filter(|p| !p.as_os_str().is_empty())
        }
        Some((
            nonempty(&self.tls_cert_file)?,
            nonempty(&self.tls_key_file)?,
        ))
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type (the message names the key).
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// File or environment.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {key}: {problem}")]
    Invalid {
        /// The key, e.g. `fcm.port`.
        key: String,
        /// The problem.
        problem: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// The embedded default used by `gimmm serve` without `--config`: one
/// session `com.example.app` / `dev-token` and no FCM credentials.
pub fn embedded_default() -> Config {
    let mut c = Config::default();
    c.bal
        .sessions
        .push(SessionConfig::new("com.example.app", "dev-token"));
    c
}

impl Config {
    /// Reads `path` (or the embedded default when `None`), applies
    /// `GIMMM_*` environment overrides, resolves `server_key_file`, validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("GIMMM_") || k == GOOGLE_APPLICATION_CREDENTIALS)
            .collect();
        Config::load_with_env(path, &env)
    }

    /// [`Config::load`] with an explicit environment (for tests): the
    /// `GIMMM_*` overrides and `GOOGLE_APPLICATION_CREDENTIALS`.
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let origin = p.display().to_string();
                let t: toml::Table = toml::from_str(&text)
                    .map_err(|e| parse_error(&origin, Some(&text), &e, None))?;
                // Deserializing the text itself (not the table) keeps spans:
                // a mistake in the file is reported with its line and column.
                // The table form names the dotted key ("in `fcm.port`").
                if let Err(e) = toml::from_str::<Config>(&text) {
                    let key = toml::Value::Table(t)
                        .try_into::<Config>()
                        .err()
                        .and_then(|e| dotted_key(&e.to_string()));
                    return Err(parse_error(&origin, Some(&text), &e, key));
                }
                (t, p.display().to_string())
            }
            None => (toml::Table::new(), "(embedded default)".to_string()),
        };
        apply_env(&mut table, env)?;
        let mut cfg: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let key = dotted_key(&e.to_string());
                    parse_error(&origin, None, &e, key)
                })?;
        if path.is_none() && cfg.bal.sessions.is_empty() {
            cfg.bal.sessions = embedded_default().bal.sessions;
        }
        if let Some(f) = &cfg.fcm.server_key_file {
            let key = std::fs::read_to_string(f).map_err(|e| {
                invalid(
                    "fcm.server_key_file",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            cfg.fcm.server_key = Secret::new(key.trim());
        }
        if !cfg.fcm.has_service_account() {
            // Google's convention, honoured unless the config names a file.
            if let Some((_, v)) = env
                .iter()
                .find(|(k, v)| k == GOOGLE_APPLICATION_CREDENTIALS && !v.is_empty())
            {
                cfg.fcm.service_account_file = Some(PathBuf::from(v));
                cfg.fcm.service_account_from_env = true;
            }
        }
        cfg.validate()?;
        if cfg.link()?.is_http_v1() {
            cfg.fcm.load_service_account()?;
        }
        // The BAL listener's certificate and key are read and checked now,
        // so `check-config` and a start refuse a bad pair alike.
        cfg.bal.tls_server_config()?;
        Ok(cfg)
    }

    /// Which link gimmm runs (SPEC §8.1): `fcm.api`, and for `auto` the
    /// credentials configured (a service account: HTTP v1; a server key:
    /// XMPP; both: an error naming both; neither: the in-process XMPP
    /// emulator).
    pub fn link(&self) -> Result<LinkChoice, ConfigError> {
        let sa = self.fcm.has_service_account();
        let xmpp = self.fcm.has_credentials();
        Ok(match self.fcm.api {
            Api::Xmpp => LinkChoice::Xmpp { emulator: !xmpp },
            Api::HttpV1 => LinkChoice::HttpV1 { emulator: !sa },
            Api::Auto => match (sa, xmpp) {
                (true, true) => {
                    return Err(invalid(
                        "fcm.api",
                        format!(
                            "\"auto\" found both an HTTP v1 service account ({}) and an XMPP server key (fcm.sender_id / fcm.server_key); configure one, or set fcm.api to \"http_v1\" or \"xmpp\"",
                            self.fcm.service_account_key()
                        ),
                    ))
                }
                (true, false) => LinkChoice::HttpV1 { emulator: false },
                (false, true) => LinkChoice::Xmpp { emulator: false },
                (false, false) => LinkChoice::Xmpp { emulator: true },
            },
        })
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.fcm.host.is_empty() {
            return Err(invalid("fcm.host", "must not be empty"));
        }
        if self.fcm.port == 0 {
            return Err(invalid("fcm.port", "must be 1..=65535"));
        }
        if !(1..=1000).contains(&self.fcm.connections) {
            return Err(invalid("fcm.connections", "must be 1..=1000"));
        }
        if self.fcm.max_pending_per_connection == 0 {
            return Err(invalid("fcm.max_pending_per_connection", "must be > 0"));
        }
        if self.fcm.keepalive_secs == 0 {
            return Err(invalid("fcm.keepalive_secs", "must be > 0"));
        }
        if self.fcm.max_stanza_bytes < 1024 {
            return Err(invalid("fcm.max_stanza_bytes", "must be >= 1024"));
        }
        if self.fcm.request_timeout_secs == 0 {
            return Err(invalid("fcm.request_timeout_secs", "must be > 0"));
        }
        crate::link::http_v1::Endpoint::parse(&self.fcm.endpoint)
            .map_err(|e| invalid("fcm.endpoint", e))?;
        self.link()?;
        if !self.fcm.sender_id.is_empty() && self.fcm.server_key.is_empty() {
            return Err(invalid(
                "fcm.server_key",
                "sender_id is set but no server_key or server_key_file",
            ));
        }
        if let Some(ca) = &self.fcm.ca_file {
            if !ca.as_os_str().is_empty() && std::fs::metadata(ca).is_err() {
                return Err(invalid(
                    "fcm.ca_file",
                    format!("cannot read {}", ca.display()),
                ));
            }
        }
        if self.retry.initial_ms == 0 {
            return Err(invalid("retry.initial_ms", "must be > 0"));
        }
        if self.retry.max_ms < self.retry.initial_ms {
            return Err(invalid("retry.max_ms", "must be >= retry.initial_ms"));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be > 0"));
        }
        self.bal
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("bal.listen", format!("{:?}: {e}", self.bal.listen)))?;
        if self.bal.max_unacked == 0 {
            return Err(invalid("bal.max_unacked", "must be > 0"));
        }
        if self.bal.max_line_bytes < 256 {
            return Err(invalid("bal.max_line_bytes", "must be >= 256"));
        }
        if self.bal.logon_timeout_secs == 0 {
            return Err(invalid("bal.logon_timeout_secs", "must be > 0"));
        }
        if self.bal.sessions.is_empty() {
            return Err(invalid("bal.sessions", "at least one session is needed"));
        }
        let set = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| !p.as_os_str().is_empty());
        match (set(&self.bal.tls_cert_file), set(&self.bal.tls_key_file)) {
            (true, false) => {
                return Err(invalid(
                    "bal.tls_key_file",
                    "must be set with bal.tls_cert_file (TLS needs both, or neither for plain TCP)",
                ))
            }
            (false, true) => {
                return Err(invalid(
                    "bal.tls_cert_file",
                    "must be set with bal.tls_key_file (TLS needs both, or neither for plain TCP)",
                ))
            }
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.bal.sessions.iter().enumerate() {
            if s.session_id.is_empty() {
                return Err(invalid(
                    &format!("bal.sessions[{i}].session_id"),
                    "must not be empty",
                ));
            }
            if s.token.is_empty() {
                return Err(invalid(
                    &format!("bal.sessions[{i}].token"),
                    "must not be empty",
                ));
            }
            if !seen.insert(s.session_id.as_str()) {
                return Err(invalid(
                    &format!("bal.sessions[{i}].session_id"),
                    format!("duplicate session id {:?}", s.session_id),
                ));
            }
        }
        if self.store.url.is_empty() && self.store.path.as_os_str().is_empty() {
            return Err(invalid("store.path", "must not be empty"));
        }
        self.store.postgres(None)?;
        if !(1..=MAX_LEASE_SECS).contains(&self.cluster.lease_secs) {
            return Err(invalid(
                "cluster.lease_secs",
                format!(
                    "must be 1..={MAX_LEASE_SECS}, not {}",
                    self.cluster.lease_secs
                ),
            ));
        }
        let r = self.store.retention_hours;
        if !r.is_finite() || !(0.0..=MAX_RETENTION_HOURS).contains(&r) {
            return Err(invalid(
                "store.retention_hours",
                format!(
                    "must be 0..={MAX_RETENTION_HOURS} hours (0 keeps everything forever), not {r}"
                ),
            ));
        }
        if !self.admin.listen.is_empty() {
            self.admin
                .listen
                .parse::<SocketAddr>()
                .map_err(|e| invalid("admin.listen", format!("{:?}: {e}", self.admin.listen)))?;
        }
        self.validate_ingress()
    }

    /// `[ingress]` and the sessions' `ingress_*` keys (SPEC §10).
    fn validate_ingress(&self) -> Result<(), ConfigError> {
        let ing = &self.ingress;
        for (i, s) in self.bal.sessions.iter().enumerate() {
            let key = |k: &str| format!("bal.sessions[{i}].{k}");
            if s.ingress_keys.iter().any(Secret::is_empty) {
                return Err(invalid(&key("ingress_keys"), "keys must not be empty"));
            }
            match s.jwks_file() {
                Some(path) => {
                    crate::ingress::auth::Jwks::load(path)
                        .map_err(|e| invalid(&key("ingress_jwks_file"), e.to_string()))?;
                    if s.ingress_issuer.is_empty() {
                        return Err(invalid(
                            &key("ingress_issuer"),
                            "must be set with ingress_jwks_file (the iss every JWT must carry)",
                        ));
                    }
                    if s.ingress_audience.is_empty() {
                        return Err(invalid(
                            &key("ingress_audience"),
                            "must be set with ingress_jwks_file (the aud every JWT must carry)",
                        ));
                    }
                }
                None => {
                    for (k, v) in [
                        ("ingress_issuer", &s.ingress_issuer),
                        ("ingress_audience", &s.ingress_audience),
                    ] {
                        if !v.is_empty() {
                            return Err(invalid(&key(k), "only applies with ingress_jwks_file"));
                        }
                    }
                }
            }
        }
        let set = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| !p.as_os_str().is_empty());
        match (set(&ing.tls_cert_file), set(&ing.tls_key_file)) {
            (true, false) => {
                return Err(invalid(
                    "ingress.tls_key_file",
                    "must be set with ingress.tls_cert_file",
                ))
            }
            (false, true) => {
                return Err(invalid(
                    "ingress.tls_cert_file",
                    "must be set with ingress.tls_key_file",
                ))
            }
            _ => {}
        }
        if let Some((cert, key)) = ing.tls_files() {
            for (k, p) in [
                ("ingress.tls_cert_file", cert),
                ("ingress.tls_key_file", key),
            ] {
                std::fs::metadata(p)
                    .map_err(|e| invalid(k, format!("cannot read {}: {e}", p.display())))?;
            }
        }
        if !(256..=1024 * 1024).contains(&ing.max_body_bytes) {
            return Err(invalid("ingress.max_body_bytes", "must be 256..=1048576"));
        }
        if ing.per_client_per_minute == 0 {
            return Err(invalid("ingress.per_client_per_minute", "must be > 0"));
        }
        if ing.max_connections == 0 {
            return Err(invalid("ingress.max_connections", "must be > 0"));
        }
        if ing.read_timeout_secs == 0 {
            return Err(invalid("ingress.read_timeout_secs", "must be > 0"));
        }
        if ing.listen.is_empty() {
            return Ok(());
        }
        ing.listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("ingress.listen", format!("{:?}: {e}", ing.listen)))?;
        if !self.bal.sessions.iter().any(SessionConfig::takes_ingress) {
            return Err(invalid(
                "ingress.listen",
                "the ingress is on but no session has ingress_keys or ingress_jwks_file: every request would be refused",
            ));
        }
        Ok(())
    }
}

/// Keys whose values are secrets: never shown in an error (the last part of
/// the dotted key: `fcm.server_key`, `bal.sessions[0].token`, `admin.token`,
/// …).
const SECRET_KEYS: &[&str] = &["server_key", "token", "ingress_keys", "url", "password"];

/// True when the value at dotted `key` is a secret.
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    let last = last.split('[').next().unwrap_or(last);
    SECRET_KEYS.contains(&last)
}

/// A TOML error as gimmm reports it: the file, line, column and key, and
/// the problem — never the line itself (toml's snippet would print a
/// secret on it), and for a secret key not even a value inside the
/// problem's text.
fn parse_error(
    origin: &str,
    text: Option<&str>,
    e: &toml::de::Error,
    key: Option<String>,
) -> ConfigError {
    let at = match (text, e.span()) {
        (Some(t), Some(span)) => Some(line_col(t, span.start)),
        _ => None,
    };
    // The key on the line the error points at; else the one the table
    // form named.
    let key = text
        .zip(e.span())
        .and_then(|(t, span)| key_at(t, span.start))
        .or(key);
    let mut problem = e.message().trim().to_string();
    if key.as_deref().is_some_and(is_secret_key) {
        problem = redact_values(&problem);
    }
    let mut message = String::new();
    if let Some((line, col)) = at {
        message.push_str(&format!("line {line}, column {col}: "));
    }
    if let Some(k) = &key {
        message.push_str(&format!("{k}: "));
    }
    message.push_str(&problem);
    ConfigError::Parse {
        origin: origin.to_string(),
        message,
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The dotted key defined on the line holding byte `offset` (its
/// `[section]` or `[[section]]` header included), for syntax errors, where
/// toml names no key.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let name = line.split('=').next()?.trim();
    if name.is_empty() || name.starts_with('[') || name.starts_with('#') {
        return None;
    }
    let section = before[..start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("[[")
            .and_then(|r| r.strip_suffix("]]"))
            .or_else(|| l.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
            .map(str::trim)
    });
    Some(match section {
        Some(s) => format!("{s}.{name}"),
        None => name.to_string(),
    })
}

/// The problem's text with what it quotes (values) taken out.
fn redact_values(problem: &str) -> String {
    let mut out = String::with_capacity(problem.len());
    let mut quote: Option<char> = None;
    for c in problem.chars() {
        match quote {
            Some(q) if c == q => {
                out.push_str("<redacted>");
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' || c == '\'' => quote = Some(c),
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push_str("<redacted>");
    }
    out
}

/// The key named by a toml error's last line ``in `fcm.port` ``.
fn dotted_key(message: &str) -> Option<String> {
    let last = message.trim_end().lines().last()?;
    let key = last.strip_prefix("in `")?.strip_suffix('`')?;
    (!key.is_empty()).then(|| key.to_string())
}

/// Applies `GIMMM_<SECTION>__<KEY>=value` overrides. Values are read as TOML
/// (numbers, booleans) and fall back to plain strings.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("GIMMM_") else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if !matches!(
            section.as_str(),
            "fcm" | "retry" | "bal" | "store" | "admin" | "ingress" | "cluster"
        ) {
            return Err(ConfigError::Parse {
                origin: format!("environment {name}"),
                message: format!("unknown section {section:?}"),
            });
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table() && !v.is_array())
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        // Keys that are strings in the schema stay strings ("123" sender ids).
        let is_string_key = matches!(
            (section.as_str(), key.as_str()),
            (
                "fcm",
                "host"
                    | "sender_id"
                    | "server_key"
                    | "server_key_file"
                    | "auth_domain"
                    | "ca_file"
                    | "api"
                    | "service_account_file"
                    | "project_id"
                    | "endpoint"
            ) | ("bal", "listen" | "tls_cert_file" | "tls_key_file")
                | ("store", "path" | "url")
                | ("cluster", "node_id")
                | ("admin", "listen" | "token")
                | ("ingress", "listen" | "tls_cert_file" | "tls_key_file")
        );
        let v = if is_string_key {
            toml::Value::String(value.clone())
        } else {
            parsed
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry.as_table_mut() {
            Some(t) => {
                t.insert(key, v);
            }
            None => {
                return Err(ConfigError::Parse {
                    origin: format!("environment {name}"),
                    message: format!("{section} is not a table"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.toml");
        std::fs::write(&p, text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Config::load_with_env(Some(&p), &env)
    }

    const MIN: &str = "[[bal.sessions]]\nsession_id = \"a\"\ntoken = \"t\"\n";

    #[test]
    fn store_url_is_a_secret_and_is_checked() {
        let c = load_str(
            MIN,
            &[
                (
                    "GIMMM_STORE__URL",
                    "postgres://gimmm:pa55-word@db.internal/gimmm",
                ),
                ("GIMMM_CLUSTER__NODE_ID", "node-7"),
                ("GIMMM_CLUSTER__LEASE_SECS", "5"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.store.describe(),
            "postgres://gimmm@db.internal:5432/gimmm"
        );
        assert!(!format!("{c:?}").contains("pa55"));
        let lease = c.cluster.lease();
        assert_eq!(
            (lease.node_id.as_str(), lease.lease.as_secs()),
            ("node-7", 5)
        );
        assert_eq!(lease.wait, None, "a second node waits as a standby");
        let e = load_str(
            MIN,
            &[(
                "GIMMM_STORE__URL",
                "postgres://gimmm:pa55-word@db.internal:port/x",
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.url") && !e.contains("pa55"), "{e}");
        let e = load_str(
            &format!("{MIN}[store]\nurl = \"postgres://u:pa55-word@h:99999/d\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("pa55"), "{e}");
        let e = load_str(MIN, &[("GIMMM_CLUSTER__LEASE_SECS", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.lease_secs"), "{e}");
        let e = load_str(&format!("{MIN}[cluster]\npartitions = 64\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("partitions"), "{e}");
    }

    #[test]
    fn defaults_and_embedded() {
        let c = Config::load_with_env(None, &[]).unwrap();
        assert_eq!(c.bal.listen, "127.0.0.1:5001");
        assert_eq!(c.bal.sessions[0].session_id, "com.example.app");
        assert!(!c.fcm.has_credentials());
        assert_eq!(c.fcm.max_pending_per_connection, 100);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_str(&format!("{MIN}[fcm]\nport = 70000\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = load_str(&format!("{MIN}[fcm]\nbogus = 1\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = load_str(&format!("{MIN}[retry]\nmax_attempts = \"x\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("max_attempts"), "{e}");
        let e = load_str(&format!("{MIN}{MIN}"), &[]).unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        let e = load_str("[[bal.sessions]]\nsession_id = \"a\"\ntoken = \"\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("bal.sessions[0].token"), "{e}");
        let e = load_str(
            &format!("{MIN}[fcm]\nserver_key_file = \"/nonexistent/k\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("fcm.server_key_file"), "{e}");
    }

    #[test]
    fn store_retention_hours() {
        let c = load_str(MIN, &[]).unwrap();
        assert_eq!(c.store.retention_hours, 24.0);
        assert_eq!(
            c.store.retention(),
            Some(std::time::Duration::from_secs(24 * 3600))
        );
        // A fraction (tests use seconds), an integer, and 0 = forever.
        let c = load_str(&format!("{MIN}[store]\nretention_hours = 0.001\n"), &[]).unwrap();
        assert_eq!(
            c.store.retention(),
            Some(std::time::Duration::from_secs_f64(3.6))
        );
        let c = load_str(&format!("{MIN}[store]\nretention_hours = 48\n"), &[]).unwrap();
        assert_eq!(c.store.retention_hours, 48.0);
        let c = load_str(&format!("{MIN}[store]\nretention_hours = 0\n"), &[]).unwrap();
        assert_eq!(c.store.retention(), None);
        // The environment overrides the file.
        let c = load_str(
            &format!("{MIN}[store]\nretention_hours = 48\n"),
            &[("GIMMM_STORE__RETENTION_HOURS", "0.5")],
        )
        .unwrap();
        assert_eq!(
            c.store.retention(),
            Some(std::time::Duration::from_secs(1800))
        );
        let c = load_str(MIN, &[("GIMMM_STORE__RETENTION_HOURS", "0")]).unwrap();
        assert_eq!(c.store.retention(), None);
        // Out of range, and not a number.
        for bad in ["-1", "-0.5", "87601", "nan", "inf"] {
            let e = load_str(&format!("{MIN}[store]\nretention_hours = {bad}\n"), &[]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { key, .. } if key == "store.retention_hours"),
                "{bad}: {e}"
            );
        }
        let e = load_str(MIN, &[("GIMMM_STORE__RETENTION_HOURS", "-2")]).unwrap_err();
        assert!(e.to_string().contains("store.retention_hours"), "{e}");
        let e = load_str(&format!("{MIN}[store]\nretention_hours = \"a day\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("retention_hours"), "{e}");
        let e = load_str(MIN, &[("GIMMM_STORE__RETENTION_HOURS", "a day")]).unwrap_err();
        assert!(e.to_string().contains("retention_hours"), "{e}");
    }

    #[test]
    fn env_overrides_and_secrets_hidden() {
        let c = load_str(
            MIN,
            &[
                ("GIMMM_FCM__SENDER_ID", "123"),
                ("GIMMM_FCM__SERVER_KEY", "sekrit"),
                ("GIMMM_FCM__CONNECTIONS", "4"),
            ],
        )
        .unwrap();
        assert_eq!(c.fcm.sender_id, "123");
        assert_eq!(c.fcm.connections, 4);
        assert_eq!(c.fcm.server_key.expose(), "sekrit");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sekrit") && !dbg.contains("\"t\""), "{dbg}");
        assert!(load_str(MIN, &[("GIMMM_NOPE__X", "1")]).is_err());
    }

    #[test]
    fn bal_tls_both_or_neither_env_overrides_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let k = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, params.self_signed(&k).unwrap().pem()).unwrap();
        std::fs::write(&key, k.serialize_pem()).unwrap();
        let (c, kf) = (cert.display().to_string(), key.display().to_string());

        // Neither: plain TCP.
        let cfg = load_str(MIN, &[]).unwrap();
        assert!(cfg.bal.tls_files().is_none());
        assert!(cfg.bal.tls_server_config().unwrap().is_none());
        // One without the other names the missing key.
        let e = load_str(&format!("[bal]\ntls_cert_file = {c:?}\n{MIN}"), &[]).unwrap_err();
        assert!(e.to_string().contains("bal.tls_key_file"), "{e}");
        let e = load_str(MIN, &[("GIMMM_BAL__TLS_KEY_FILE", kf.as_str())]).unwrap_err();
        assert!(e.to_string().contains("bal.tls_cert_file"), "{e}");
        // Both, from the file or the environment.
        let both = format!("[bal]\ntls_cert_file = {c:?}\ntls_key_file = {kf:?}\n{MIN}");
        let cfg = load_str(&both, &[]).unwrap();
        assert_eq!(cfg.bal.tls_files(), Some((cert.as_path(), key.as_path())));
        assert!(cfg.bal.tls_server_config().unwrap().is_some());
        let cfg = load_str(
            MIN,
            &[
                ("GIMMM_BAL__TLS_CERT_FILE", c.as_str()),
                ("GIMMM_BAL__TLS_KEY_FILE", kf.as_str()),
            ],
        )
        .unwrap();
        assert!(cfg.bal.tls_server_config().unwrap().is_some());
        // Empty values in the environment turn it off.
        let cfg = load_str(
            &both,
            &[
                ("GIMMM_BAL__TLS_CERT_FILE", ""),
                ("GIMMM_BAL__TLS_KEY_FILE", ""),
            ],
        )
        .unwrap();
        assert!(cfg.bal.tls_files().is_none());
        // A path that reads as a number stays a path.
        let e = load_str(&both, &[("GIMMM_BAL__TLS_CERT_FILE", "2024")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bal.tls_cert_file") && e.contains("cannot read 2024"),
            "{e}"
        );
        // A bad pair is refused at load, naming the key and the file.
        let e = load_str(&both, &[("GIMMM_BAL__TLS_KEY_FILE", c.as_str())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bal.tls_key_file") && e.contains(&c), "{e}");
    }

    /// A throw-away RSA service-account key file (PKCS#8 PEM, as Google's).
    pub(crate) fn rsa_key_file(dir: &Path, project: Option<&str>) -> PathBuf {
        use aws_lc_rs::encoding::AsDer;
        use base64::Engine as _;
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'static>>::as_der(&kp).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        let mut v = serde_json::json!({
            "type": "service_account", "private_key_id": "k1", "private_key": pem,
            "client_email": "gimmm@p.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        if let Some(p) = project {
            v["project_id"] = p.into();
        }
        let path = dir.join(format!("sa-{}.json", project.unwrap_or("none")));
        std::fs::write(&path, v.to_string()).unwrap();
        path
    }

    #[test]
    fn api_choice() {
        let dir = tempfile::tempdir().unwrap();
        let key = rsa_key_file(dir.path(), Some("proj-1"));
        let sa = format!(
            "[fcm]\nservice_account_file = {:?}\n",
            key.display().to_string()
        );
        let xmpp = "[fcm]\nsender_id = \"1\"\nserver_key = \"k\"\n";
        let c = load_str(&format!("{MIN}{sa}"), &[]).unwrap();
        assert_eq!(c.link().unwrap(), LinkChoice::HttpV1 { emulator: false });
        assert_eq!(c.fcm.endpoint, DEFAULT_V1_ENDPOINT);
        assert_eq!(c.fcm.max_messages_per_minute, 600_000);
        assert_eq!(c.fcm.request_timeout_secs, 30);
        let c = load_str(&format!("{MIN}{xmpp}"), &[]).unwrap();
        assert_eq!(c.link().unwrap(), LinkChoice::Xmpp { emulator: false });
        let c = load_str(MIN, &[]).unwrap();
        assert_eq!(c.link().unwrap(), LinkChoice::Xmpp { emulator: true });
        let c = load_str(MIN, &[("GIMMM_FCM__API", "http_v1")]).unwrap();
        assert_eq!(c.link().unwrap(), LinkChoice::HttpV1 { emulator: true });
        // Both: refused, naming both.
        let both = format!(
            "{MIN}{xmpp}service_account_file = {:?}\n",
            key.display().to_string()
        );
        let e = load_str(&both, &[]).unwrap_err().to_string();
        assert!(
            e.contains("fcm.service_account_file")
                && e.contains("fcm.server_key")
                && e.contains("fcm.api"),
            "{e}"
        );
        // An explicit api settles it.
        let c = load_str(&both, &[("GIMMM_FCM__API", "xmpp")]).unwrap();
        assert_eq!(c.link().unwrap(), LinkChoice::Xmpp { emulator: false });
        let e = load_str(&format!("{MIN}[fcm]\napi = \"grpc\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("api"), "{e}");
    }

    #[test]
    fn google_application_credentials_and_string_env_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = rsa_key_file(dir.path(), Some("proj-2"));
        let k = key.display().to_string();
        let c = load_str(
            MIN,
            &[
                (GOOGLE_APPLICATION_CREDENTIALS, k.as_str()),
                ("GIMMM_FCM__PROJECT_ID", "123456"),
                ("GIMMM_FCM__ENDPOINT", "https://127.0.0.1:9/base"),
                ("GIMMM_FCM__MAX_MESSAGES_PER_MINUTE", "60"),
            ],
        )
        .unwrap();
        assert_eq!(c.link().unwrap(), LinkChoice::HttpV1 { emulator: false });
        assert!(c.fcm.service_account_from_env);
        assert_eq!(c.fcm.service_account_key(), GOOGLE_APPLICATION_CREDENTIALS);
        assert_eq!(c.fcm.project_id, "123456");
        assert_eq!(c.fcm.max_messages_per_minute, 60);
        let sa = c.fcm.load_service_account().unwrap().unwrap();
        assert_eq!(sa.project_id.as_deref(), Some("proj-2"));
        assert_eq!(sa.client_email, "gimmm@p.iam.gserviceaccount.com");
        // The file in the config wins over the variable.
        let other = rsa_key_file(dir.path(), Some("proj-3"));
        let text = format!(
            "{MIN}[fcm]\nservice_account_file = {:?}\n",
            other.display().to_string()
        );
        let c = load_str(&text, &[(GOOGLE_APPLICATION_CREDENTIALS, k.as_str())]).unwrap();
        assert!(!c.fcm.service_account_from_env);
        assert_eq!(c.fcm.service_account_file.as_deref(), Some(other.as_path()));
        // A bad file named by the variable: the variable is named.
        let e = load_str(
            MIN,
            &[(GOOGLE_APPLICATION_CREDENTIALS, "/nonexistent/sa.json")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(GOOGLE_APPLICATION_CREDENTIALS) && e.contains("/nonexistent/sa.json"),
            "{e}"
        );
        let e = load_str(MIN, &[("GIMMM_FCM__ENDPOINT", "http://fcm.example")]).unwrap_err();
        assert!(e.to_string().contains("fcm.endpoint"), "{e}");
    }

    #[test]
    fn bad_key_files_are_refused_naming_the_problem_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = rsa_key_file(dir.path(), Some("p"));
        let text = std::fs::read_to_string(&good).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let pem = v["private_key"].as_str().unwrap().to_string();
        // A line from the middle of the key's base64 body.
        let body_line = pem.lines().nth(5).unwrap().to_string();
        let write = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let mut no_key = v.clone();
        no_key.as_object_mut().unwrap().remove("private_key");
        let mut ec = v.clone();
        ec["private_key"] = rcgen::KeyPair::generate().unwrap().serialize_pem().into();
        let mut broken = v;
        broken["private_key"] = pem.replace(&body_line, &"A".repeat(body_line.len())).into();
        let cases = [
            (dir.path().join("missing.json"), "cannot read"),
            (write("trunc.json", &text[..text.len() / 2]), "not JSON"),
            (
                write("nokey.json", &no_key.to_string()),
                "no \"private_key\"",
            ),
            (write("ec.json", &ec.to_string()), "not an RSA private key"),
            (write("broken.json", &broken.to_string()), "RSA"),
        ];
        for (path, want) in cases {
            let cfg = format!(
                "{MIN}[fcm]\nservice_account_file = {:?}\n",
                path.display().to_string()
            );
            let e = load_str(&cfg, &[]).unwrap_err().to_string();
            assert!(
                e.contains("fcm.service_account_file") && e.contains(want),
                "{want}: {e}"
            );
            assert!(
                !e.contains(&body_line) && !e.contains("BEGIN"),
                "the key leaks: {e}"
            );
        }
        // No project anywhere: the key loads, the gateway asks for one
        // (fcm.project_id), and Debug never shows the key.
        let sa = crate::link::http_v1::ServiceAccount::from_file(&rsa_key_file(dir.path(), None))
            .unwrap();
        assert!(sa.project_id.is_none());
        let dbg = format!("{sa:?}");
        assert!(!dbg.contains(&body_line) && !dbg.contains("BEGIN"), "{dbg}");
    }

    /// Config errors name the file, line, key and problem, and never show a
    /// secret's value (SPEC §11): one case per secret key and error kind.
    #[test]
    fn errors_never_show_secret_values() {
        const V: &str = "s3cr3t-VALUE-4711";
        let session =
            |token: &str| format!("[[bal.sessions]]\nsession_id = \"a\"\ntoken = {token}\n");
        let cases: Vec<(&str, String, &str)> = vec![
            // syntax: the closing quote is missing
            (
                "fcm.server_key",
                format!("{MIN}[fcm]\nserver_key = \"{V}\n"),
                "line 5",
            ),
            ("bal.sessions.token", session(&format!("\"{V}")), "line 3"),
            (
                "admin.token",
                format!("{MIN}[admin]\ntoken = \"{V}\n"),
                "line 5",
            ),
            // type
            (
                "fcm.server_key",
                format!("{MIN}[fcm]\nserver_key = {}\n", &V[7..11]),
                "",
            ),
            (
                "fcm.server_key",
                format!("{MIN}[fcm]\nserver_key = [\"{V}\"]\n"),
                "line 5",
            ),
            ("bal.sessions", session(&format!("[\"{V}\"]")), ""),
            (
                "admin.token",
                format!("{MIN}[admin]\ntoken = {{ x = \"{V}\" }}\n"),
                "",
            ),
            // unknown key (a typo of a secret's name)
            (
                "server_kee",
                format!("{MIN}[fcm]\nserver_kee = \"{V}\"\n"),
                "line 5",
            ),
            (
                "tokn",
                format!("[[bal.sessions]]\nsession_id = \"a\"\ntokn = \"{V}\"\n"),
                "",
            ),
            ("tokenn", format!("{MIN}[admin]\ntokenn = \"{V}\"\n"), ""),
            // store.url (SPEC §12): syntax, type, unknown key, a bad URL
            (
                "store.url",
                format!("{MIN}[store]\nurl = \"postgres://u:{V}@h/d\n"),
                "line 5",
            ),
            (
                "store.url",
                format!("{MIN}[store]\nurl = [\"postgres://u:{V}@h/d\"]\n"),
                "line 5",
            ),
            (
                "ulr",
                format!("{MIN}[store]\nulr = \"postgres://u:{V}@h/d\"\n"),
                "",
            ),
        ];
        for (key, text, at) in cases {
            let e = load_str(&text, &[]).unwrap_err().to_string();
            assert!(
                !e.contains(V) && !e.contains(&V[7..11]),
                "secret shown: {e}"
            );
            assert!(e.contains("g.toml"), "names the file: {e}");
            assert!(e.contains(key), "names the key {key}: {e}");
            assert!(e.contains(at), "says where ({at}): {e}");
            assert!(!e.contains("|"), "no source snippet: {e}");
        }
        // a value that is not a PostgreSQL URL
        let e = load_str(
            &format!("{MIN}[store]\nurl = \"postgres://u:{V}@h:port/d\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.url") && !e.contains(V), "{e}");
        // range / consistency
        let e = load_str(&format!("{MIN}[fcm]\nsender_id = \"1\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("fcm.server_key"), "{e}");
        let e = load_str(&session("\"\""), &[]).unwrap_err().to_string();
        assert!(
            e.contains("bal.sessions[0].token") && e.contains("empty"),
            "{e}"
        );
        // From the environment.
        let e = load_str(MIN, &[("GIMMM_FCM__PORT", V)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn ingress_settings_are_checked_and_keys_hidden() {
        let c = load_str(MIN, &[]).unwrap();
        assert!(c.ingress.listen.is_empty(), "off by default");
        assert_eq!(c.ingress.max_body_bytes, 4096);
        assert_eq!(c.ingress.per_client_per_minute, 240);
        let keyed = "[[bal.sessions]]\nsession_id = \"a\"\ntoken = \"t\"\ningress_keys = [\"app-key-1234\"]\n";
        let c = load_str(keyed, &[("GIMMM_INGRESS__LISTEN", "127.0.0.1:0")]).unwrap();
        assert_eq!(c.ingress.listen, "127.0.0.1:0");
        assert!(!format!("{c:?}").contains("app-key-1234"));
        let e = load_str(MIN, &[("GIMMM_INGRESS__LISTEN", "127.0.0.1:0")]).unwrap_err();
        assert!(
            e.to_string().contains("ingress.listen") && e.to_string().contains("no session"),
            "{e}"
        );
        let e = load_str(&format!("{keyed}[ingress]\nlisten = \"nope\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("ingress.listen"), "{e}");
        let e = load_str(
            &format!("{keyed}[ingress]\ntls_cert_file = \"/x.pem\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("ingress.tls_key_file"), "{e}");
        let e = load_str(
            &format!("{keyed}[ingress]\ntls_cert_file = \"/nonexistent/c.pem\"\ntls_key_file = \"/nonexistent/k.pem\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("ingress.tls_cert_file"), "{e}");
        let e = load_str(&format!("{keyed}[ingress]\nmax_body_bytes = 10\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("ingress.max_body_bytes"), "{e}");
        let e = load_str(
            &format!("{keyed}[ingress]\nper_client_per_minute = 0\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("per_client_per_minute"), "{e}");
        let e = load_str(
            "[[bal.sessions]]\nsession_id = \"a\"\ntoken = \"t\"\ningress_keys = [\"\"]\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("bal.sessions[0].ingress_keys"),
            "{e}"
        );
        let e = load_str(&format!("{MIN}ingress_issuer = \"i\"\n"), &[]).unwrap_err();
        assert!(
            e.to_string().contains("bal.sessions[0].ingress_issuer"),
            "{e}"
        );
        let e = load_str(
            &format!("{MIN}ingress_jwks_file = \"/nonexistent/jwks.json\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("bal.sessions[0].ingress_jwks_file"),
            "{e}"
        );
    }

    #[test]
    fn a_jwks_session_needs_issuer_and_audience() {
        let dir = tempfile::tempdir().unwrap();
        let signer = testkit::jwt::Signer::ec("k1").unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, testkit::jwt::jwks(&[&signer]).to_string()).unwrap();
        let base = format!(
            "{MIN}ingress_jwks_file = {:?}\n",
            jwks.display().to_string()
        );
        let e = load_str(&base, &[]).unwrap_err();
        assert!(e.to_string().contains("ingress_issuer"), "{e}");
        let e = load_str(&format!("{base}ingress_issuer = \"i\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("ingress_audience"), "{e}");
        let c = load_str(
            &format!("{base}ingress_issuer = \"i\"\ningress_audience = \"a\"\n"),
            &[("GIMMM_INGRESS__LISTEN", "127.0.0.1:0")],
        )
        .unwrap();
        assert!(c.bal.sessions[0].takes_ingress());
        std::fs::write(&jwks, "{\"keys\":[]}").unwrap();
        let e = load_str(
            &format!("{base}ingress_issuer = \"i\"\ningress_audience = \"a\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("no keys"), "{e}");
    }
}
