//! The Google service-account key file (SPEC §8.1, §8.4): read and checked
//! when the config loads, then used by [`super::oauth`] to sign the RS256
//! JWT it exchanges for access tokens.
//!
//! A key file is the JSON Google's console downloads (`type`,
//! `project_id`, `private_key_id`, `private_key` as PEM, `client_email`,
//! `token_uri`, …). Every problem is reported by name — unreadable, not
//! JSON, a missing or mistyped field, a `private_key` that is not an RSA
//! key or cannot sign — and no error, log line or `Debug` output ever holds
//! the key: errors are built from field names, never from values (serde's
//! type errors would quote them, so the file is read as untyped JSON).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// Google's token endpoint, used when a key file names none.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The OAuth 2 scope of FCM HTTP v1 sends.
pub const FIREBASE_MESSAGING_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Lifetime of the JWT assertion (`exp - iat`), the most Google accepts.
pub const ASSERTION_LIFETIME_SECS: i64 = 3600;

/// A key file gimmm cannot use. The messages name the problem, never a
/// value from the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read the service-account key file {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not JSON (the parser's position, never the text).
    #[error("the service-account key file is not JSON ({0})")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("the service-account key file is not a JSON object")]
    NotObject,
    /// `type` is there and is not `service_account`.
    #[error("the key file's \"type\" is {0:?}, not \"service_account\" (gimmm needs a service-account key: Firebase console → Project settings → Service accounts → Generate new private key)")]
    WrongType(String),
    /// A required field is missing or empty.
    #[error("the service-account key file has no {0:?}")]
    Missing(&'static str),
    /// A field is not a string.
    #[error("the service-account key file's {0:?} is not a string")]
    NotString(&'static str),
    /// `private_key` is not an RSA private key in PEM form.
    #[error(
        "the service-account key file's \"private_key\" is not an RSA private key in PEM form"
    )]
    NotRsa,
    /// The key parsed but cannot sign an RS256 JWT.
    #[error("the service-account key file's \"private_key\" cannot sign an RS256 JWT (a broken or too short RSA key)")]
    CannotSign,
    /// `token_uri` is not an https URL.
    #[error("the service-account key file's \"token_uri\" is not an https:// URL")]
    BadTokenUri,
}

/// The private key, ready to sign. `Debug` never shows it.
#[derive(Clone)]
struct SigningKey(EncodingKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<private key>")
    }
}

/// A signed JWT assertion (a bearer credential for the token endpoint):
/// `Debug` never shows it.
pub(crate) struct Assertion(String);

impl Assertion {
    /// The JWT, for the one request that needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<JWT>")
    }
}

/// A checked service-account key. `Debug` shows the account, never the key.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    /// `project_id` of the key file, if it has one.
    pub project_id: Option<String>,
    /// `client_email`: the JWT's `iss`.
    pub client_email: String,
    /// `private_key_id`: the JWT header's `kid`, if the file has one.
    pub private_key_id: Option<String>,
    /// `token_uri`: where the JWT is exchanged (and its `aud`).
    pub token_uri: String,
    key: SigningKey,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

fn string_field(
    map: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, KeyError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(KeyError::NotString(name)),
    }
}

impl ServiceAccount {
    /// Reads and checks a key file.
    pub fn from_file(path: &Path) -> Result<ServiceAccount, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        ServiceAccount::from_json(&text)
    }

    /// Checks a key file's text: the fields gimmm needs, an RSA key that
    /// signs.
    pub fn from_json(text: &str) -> Result<ServiceAccount, KeyError> {
        // Syntax errors carry a position only; never the text.
        let v: Value = serde_json::from_str(text)
            .map_err(|e| KeyError::NotJson(format!("line {}, column {}", e.line(), e.column())))?;
        let Value::Object(map) = v else {
            return Err(KeyError::NotObject);
        };
        if let Some(t) = string_field(&map, "type")? {
            if t != "service_account" {
                // A type name is no secret; cap it anyway.
                return Err(KeyError::WrongType(t.chars().take(40).collect()));
            }
        }
        let pem = string_field(&map, "private_key")?.ok_or(KeyError::Missing("private_key"))?;
        let client_email =
            string_field(&map, "client_email")?.ok_or(KeyError::Missing("client_email"))?;
        let token_uri =
            string_field(&map, "token_uri")?.unwrap_or_else(|| GOOGLE_TOKEN_URI.to_string());
        if !token_uri.starts_with("https://") || http::Uri::try_from(token_uri.as_str()).is_err() {
            return Err(KeyError::BadTokenUri);
        }
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| KeyError::NotRsa)?;
        let sa = ServiceAccount {
            project_id: string_field(&map, "project_id")?,
            client_email,
            private_key_id: string_field(&map, "private_key_id")?,
            token_uri,
            key: SigningKey(key),
        };
        // The PEM parser only checks the armour and the algorithm: sign
        // once now so that a broken key is a config error, not a failure
        // an hour later.
        sa.assertion(FIREBASE_MESSAGING_SCOPE, 0)
            .map_err(|_| KeyError::CannotSign)?;
        Ok(sa)
    }

    /// The RS256 JWT of Google's server-to-server flow (SPEC §8.4): `iss` =
    /// `client_email`, `scope`, `aud` = `token_uri`, `iat`, `exp` = `iat` +
    /// 3600; `kid` = `private_key_id`.
    pub(crate) fn assertion(&self, scope: &str, iat: i64) -> Result<Assertion, KeyError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.private_key_id.clone();
        let claims = Claims {
            iss: &self.client_email,
            scope,
            aud: &self.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key.0)
            .map(Assertion)
            .map_err(|_| KeyError::CannotSign)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn problems_are_named_without_content() {
        let secretish = "SECRET-CONTENT-123";
        let cases: Vec<(String, &str)> = vec![
            (format!("{{\"private_key\": \"{secretish}"), "not JSON"),
            ("[1,2]".into(), "not a JSON object"),
            (
                format!("{{\"type\":\"authorized_user\",\"private_key\":\"{secretish}\"}}"),
                "\"authorized_user\"",
            ),
            ("{\"client_email\":\"a@b\"}".into(), "no \"private_key\""),
            (
                format!("{{\"private_key\":5,\"x\":\"{secretish}\"}}"),
                "\"private_key\" is not a string",
            ),
            (
                format!("{{\"private_key\":\"{secretish}\",\"client_email\":\"a@b\"}}"),
                "not an RSA private key",
            ),
            (
                format!("{{\"private_key\":\"{secretish}\"}}"),
                "no \"client_email\"",
            ),
            (
                format!(
                    "{{\"private_key\":\"{secretish}\",\"client_email\":\"a@b\",\"token_uri\":\"http://x/token\"}}"
                ),
                "token_uri",
            ),
        ];
        for (text, want) in cases {
            let e = ServiceAccount::from_json(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
            assert!(!e.contains(secretish), "{e:?} leaks the content");
        }
    }

    #[test]
    fn an_ec_key_is_not_rsa() {
        let ec = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let text = serde_json::json!({
            "type": "service_account", "private_key": ec, "client_email": "a@b.c"
        })
        .to_string();
        let e = ServiceAccount::from_json(&text).unwrap_err();
        assert!(matches!(e, KeyError::NotRsa), "{e}");
        assert!(!e.to_string().contains("BEGIN"), "{e}");
    }
}
