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
}

/// `[store]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite file.
    pub path: PathBuf,
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
            retention_hours: 24.0,
        }
    }
}

impl StoreConfig {
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
    c.bal.sessions.push(SessionConfig {
        session_id: "com.example.app".into(),
        token: Secret::new("dev-token"),
    });
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
            "fcm" | "retry" | "bal" | "store" | "admin"
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
}
