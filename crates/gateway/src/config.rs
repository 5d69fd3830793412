//! Configuration (SPEC §2): a TOML file, `GIMMM_<SECTION>__<KEY>` environment
//! overrides, defaults for everything, and validation that names the key.

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
}

/// `[fcm]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcmConfig {
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
        }
    }
}

impl FcmConfig {
    /// True when no credentials are configured: gimmm then runs the
    /// in-process emulator.
    pub fn has_credentials(&self) -> bool {
        !self.sender_id.is_empty()
            && (!self.server_key.is_empty() || self.server_key_file.is_some())
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
        }
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
    /// SQLite file.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("gimmm-data/gimmm.db"),
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
            .filter(|(k, _)| k.starts_with("GIMMM_"))
            .collect();
        Config::load_with_env(path, &env)
    }

    /// [`Config::load`] with an explicit environment (for tests).
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
                let t: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    origin: p.display().to_string(),
                    message: e.to_string(),
                })?;
                // Deserializing the text itself (not the table) keeps spans:
                // a mistake in the file is reported with its line and column.
                // The table form names the dotted key ("in `fcm.port`").
                if let Err(e) = toml::from_str::<Config>(&text) {
                    let key = toml::Value::Table(t)
                        .try_into::<Config>()
                        .err()
                        .and_then(|e| dotted_key(&e.to_string()));
                    return Err(ConfigError::Parse {
                        origin: p.display().to_string(),
                        message: match key {
                            Some(k) => format!("{k}: {e}"),
                            None => e.to_string(),
                        },
                    });
                }
                (t, p.display().to_string())
            }
            None => (toml::Table::new(), "(embedded default)".to_string()),
        };
        apply_env(&mut table, env)?;
        let mut cfg: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.clone(),
                    message: e.to_string(),
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
        cfg.validate()?;
        Ok(cfg)
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
        if self.store.path.as_os_str().is_empty() {
            return Err(invalid("store.path", "must not be empty"));
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
            "fcm" | "retry" | "bal" | "store" | "admin" | "ingress"
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
                "host" | "sender_id" | "server_key" | "server_key_file" | "auth_domain" | "ca_file"
            ) | ("bal", "listen")
                | ("store", "path")
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
