//! TLS on the BAL listener (SPEC §11 "TLS for BALs on other hosts"):
//! optional, configured by `bal.tls_cert_file` / `bal.tls_key_file`. With
//! it, every accepted connection does a rustls (aws-lc-rs) handshake in its
//! own task, bounded by `bal.logon_timeout_secs`, and then speaks the same
//! newline-delimited JSON as plain TCP (SPEC §3). Without it nothing here
//! runs: the plain path is untouched.
//!
//! The files are read and checked when the configuration is loaded (so
//! `gimmm check-config` reports a bad pair) and again when the gateway
//! starts; a problem names the key, the file and what is wrong, never the
//! file's content (the key file is a secret).

use crate::config::{BalConfig, ConfigError};
use std::path::Path;
use std::sync::Arc;
use xmpp::XmppError;

/// The listener's rustls server config.
pub type TlsConfig = Arc<rustls::ServerConfig>;

const CERT_KEY: &str = "bal.tls_cert_file";
const KEY_KEY: &str = "bal.tls_key_file";

fn invalid(key: &str, problem: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem,
    }
}

/// What went wrong, without the "TLS error:" prefix of [`XmppError`].
fn detail(e: XmppError) -> String {
    match e {
        XmppError::Tls(s) => s,
        other => other.to_string(),
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Builds the server config from `cfg`'s certificate and key files, or
/// `None` when TLS is not configured (see [`BalConfig::tls_files`]).
pub fn server_config(cfg: &BalConfig) -> Result<Option<TlsConfig>, ConfigError> {
    let Some((cert_path, key_path)) = cfg.tls_files() else {
        return Ok(None);
    };
    let certs = xmpp::connect::pem_certs(&read(CERT_KEY, cert_path)?).map_err(|e| {
        invalid(
            CERT_KEY,
            format!(
                "{}: not a PEM certificate chain: {}",
                cert_path.display(),
                detail(e)
            ),
        )
    })?;
    // The key's bytes never reach a message: the parser's errors are
    // replaced by fixed descriptions (see `pem_private_key`).
    let key = xmpp::connect::pem_private_key(&read(KEY_KEY, key_path)?).map_err(|e| {
        invalid(
            KEY_KEY,
            format!(
                "{}: not a PEM private key: {}",
                key_path.display(),
                detail(e)
            ),
        )
    })?;
    // The same provider and protocol versions as every other TLS config of
    // the project (xmpp::connect); the error is matched here to say which
    // file is at fault.
    let builder = rustls::ServerConfig::builder_with_provider(xmpp::connect::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(CERT_KEY, format!("cannot set up TLS: {e}")))?
        .with_no_client_auth();
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        let (key, cert) = (key_path.display(), cert_path.display());
        invalid(
            KEY_KEY,
            match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    format!("{key}: does not belong to the certificate in {cert}")
                }
                other => format!("{key}: cannot be used with the certificate in {cert}: {other}"),
            },
        )
    })?;
    Ok(Some(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn files(dir: &Path, cert: &str, key: &str) -> BalConfig {
        let write = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        BalConfig {
            tls_cert_file: Some(write("cert.pem", cert)),
            tls_key_file: Some(write("key.pem", key)),
            ..BalConfig::default()
        }
    }

    fn pair() -> (String, String) {
        let k = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        (params.self_signed(&k).unwrap().pem(), k.serialize_pem())
    }

    #[test]
    fn none_without_files_and_a_config_with_a_good_pair() {
        assert!(server_config(&BalConfig::default()).unwrap().is_none());
        let empty = BalConfig {
            tls_cert_file: Some(PathBuf::new()),
            tls_key_file: Some(PathBuf::new()),
            ..BalConfig::default()
        };
        assert!(server_config(&empty).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        assert!(server_config(&files(dir.path(), &cert, &key))
            .unwrap()
            .is_some());
    }

    #[test]
    fn bad_files_name_the_key_the_file_and_the_problem_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        let (other_cert, _) = pair();
        // A line from the middle of the key's base64 body.
        let body = key.lines().nth(2).unwrap().to_string();
        let broken_key = key.replace(&body, &"!".repeat(body.len()));
        let cases: [(&str, &str, &str, &str); 6] = [
            (
                &key,
                &key,
                CERT_KEY,
                "cert.pem: not a PEM certificate chain",
            ),
            ("", &key, CERT_KEY, "no certificate"),
            (&cert, &cert, KEY_KEY, "key.pem: not a PEM private key"),
            (&cert, &broken_key, KEY_KEY, "not valid PEM"),
            (
                &other_cert,
                &key,
                KEY_KEY,
                "does not belong to the certificate in",
            ),
            (&cert, "garbage", KEY_KEY, "no private key"),
        ];
        for (c, k, want_key, want) in cases {
            let e = server_config(&files(dir.path(), c, k))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want_key) && e.contains(want), "{want}: {e}");
            assert!(
                !e.contains(&body) && !e.contains("BEGIN"),
                "key material in {e}"
            );
        }
        let missing = BalConfig {
            tls_cert_file: Some(dir.path().join("cert.pem")),
            tls_key_file: Some(dir.path().join("nope.pem")),
            ..BalConfig::default()
        };
        let e = server_config(&missing).unwrap_err().to_string();
        assert!(
            e.contains(KEY_KEY) && e.contains("cannot read") && e.contains("nope.pem"),
            "{e}"
        );
    }
}
