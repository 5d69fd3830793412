//! The usual test gateway configuration (SPEC §2) as a typed value.
//!
//! Tests build a [`gateway::config::Config`] with [`emulator_config`] (the
//! XMPP link) or [`v1_emulator_config`] (the HTTP v1 link, SPEC §8.1),
//! change what they test, and either start it in this process
//! ([`in_process`]) or hand it to [`crate::ChildGateway::spawn`], which
//! writes it as TOML with [`write_config`]. The listeners are
//! `127.0.0.1:0`: the gateway picks its ports and reports them.

use emulator::v1::V1Emulator;
use emulator::Emulator;
use gateway::config::{Config, Secret, SessionConfig};
use gateway::Gateway;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A problem writing or starting a test configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration does not serialize as TOML.
    #[error("cannot serialize the config as TOML: {0}")]
    Toml(#[from] toml::ser::Error),
    /// The configuration does not validate.
    #[error(transparent)]
    Invalid(#[from] gateway::config::ConfigError),
    /// The emulator's CA certificate is not usable.
    #[error("cannot trust the emulator's CA: {0}")]
    Tls(String),
    /// The in-process gateway did not start.
    #[error("the gateway did not start: {0}")]
    Gateway(#[from] gateway::GatewayError),
}

/// The usual test configuration against `emu`: its address, sender id and
/// server key; its CA certificate written to `dir/emulator-ca.pem` and set
/// as `fcm.ca_file`; the store at `dir/gimmm.db`; the BAL and admin
/// listeners on `127.0.0.1:0`; fast retries (20 ms doubling up to 500 ms);
/// one BAL session per `(session_id, token)`.
pub fn emulator_config(
    emu: &Emulator,
    dir: &Path,
    sessions: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    let ca = dir.join("emulator-ca.pem");
    std::fs::write(&ca, emu.ca_pem()).map_err(|source| ConfigError::Write {
        path: ca.clone(),
        source,
    })?;
    let mut cfg = Config::default();
    cfg.fcm.host = "127.0.0.1".into();
    cfg.fcm.port = emu.addr().port();
    cfg.fcm.sender_id = emu.sender_id().to_string();
    cfg.fcm.server_key = Secret::new(emu.server_key());
    cfg.fcm.ca_file = Some(ca);
    local_test_defaults(&mut cfg, dir, sessions);
    Ok(cfg)
}

/// The usual test configuration against the HTTP v1 emulator `emu`
/// (`fcm.api = "http_v1"`): its service-account key written to
/// `dir/emulator-sa.json` (mode 0600: it holds the emulator's private key)
/// and its CA to `dir/emulator-ca.pem`, `fcm.endpoint` its base URL;
/// otherwise as [`emulator_config`]: the store at `dir/gimmm.db`, the
/// listeners on `127.0.0.1:0`, fast retries, one BAL session per
/// `(session_id, token)`.
pub fn v1_emulator_config(
    emu: &V1Emulator,
    dir: &Path,
    sessions: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    let write = |path: std::path::PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(|source| ConfigError::Write {
            path: path.clone(),
            source,
        })?;
        Ok::<_, ConfigError>(path)
    };
    let ca = write(dir.join("emulator-ca.pem"), emu.ca_pem())?;
    let sa = write(dir.join("emulator-sa.json"), emu.service_account_json())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sa, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| ConfigError::Write {
                path: sa.clone(),
                source,
            },
        )?;
    }
    let mut cfg = Config::default();
    cfg.fcm.api = gateway::config::Api::HttpV1;
    cfg.fcm.service_account_file = Some(sa);
    cfg.fcm.endpoint = emu.endpoint().to_string();
    cfg.fcm.ca_file = Some(ca);
    local_test_defaults(&mut cfg, dir, sessions);
    Ok(cfg)
}

/// What both emulator configurations share: fast retries (20 ms doubling
/// up to 500 ms), the BAL and admin listeners on `127.0.0.1:0`, the store
/// at `dir/gimmm.db`, one BAL session per `(session_id, token)`.
fn local_test_defaults(cfg: &mut Config, dir: &Path, sessions: &[(&str, &str)]) {
    cfg.retry.initial_ms = 20;
    cfg.retry.max_ms = 500;
    cfg.bal.listen = "127.0.0.1:0".into();
    cfg.bal.sessions = sessions
        .iter()
        .map(|(id, token)| SessionConfig::new(*id, *token))
        .collect();
    cfg.store.path = dir.join("gimmm.db");
    cfg.admin.listen = "127.0.0.1:0".into();
}

/// The configuration as TOML. It holds every secret in clear (see
/// [`Config`]): write it to a file, never log it.
pub fn to_toml(cfg: &Config) -> Result<String, ConfigError> {
    Ok(toml::to_string(cfg)?)
}

/// Writes `cfg` as TOML to `path`, then loads the file the way `gimmm
/// serve` will (`server_key_file` read, validated; no environment), so a
/// bad config fails here, naming the key, rather than in a child.
pub fn write_config(cfg: &Config, path: &Path) -> Result<(), ConfigError> {
    let text = to_toml(cfg)?;
    std::fs::write(path, text).map_err(|source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Config::load_with_env(Some(path), &[])?;
    Ok(())
}

/// Starts `cfg` as a gateway in this process, trusting `emu`'s CA.
pub async fn in_process(cfg: &Config, emu: &Emulator) -> Result<Gateway, ConfigError> {
    cfg.validate()?;
    let tls = xmpp::connect::DirectTls::with_ca_pem(emu.ca_pem().as_bytes())
        .map_err(|e| ConfigError::Tls(e.to_string()))?;
    let connector: Arc<dyn xmpp::connect::Connector> = Arc::new(tls);
    Ok(Gateway::start_with_connector(cfg.clone(), connector, CancellationToken::new()).await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn toml_round_trips_through_config_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.fcm.sender_id = "123".into();
        cfg.fcm.server_key = Secret::new("k3y");
        cfg.fcm.connections = 3;
        cfg.bal.listen = "127.0.0.1:0".into();
        cfg.bal.max_unacked = 7;
        cfg.bal.sessions = vec![
            SessionConfig::new("a", "ta"),
            SessionConfig::new("b \"quoted\"", "tb"),
        ];
        cfg.store.path = dir.path().join("x.db");
        cfg.admin.listen = String::new();
        let p = dir.path().join("c.toml");
        write_config(&cfg, &p).unwrap();
        let back = Config::load_with_env(Some(&p), &[]).unwrap();
        assert_eq!(to_toml(&back).unwrap(), to_toml(&cfg).unwrap());
        assert_eq!(back.fcm.server_key.expose(), "k3y");
        assert_eq!(back.bal.sessions[1].session_id, "b \"quoted\"");
        assert_eq!(back.bal.max_unacked, 7);
        assert!(back.fcm.ca_file.is_none());
    }

    #[test]
    fn an_invalid_config_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let e = write_config(&Config::default(), &p).unwrap_err();
        assert!(e.to_string().contains("bal.sessions"), "{e}");
    }
}
