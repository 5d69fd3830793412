//! Who may post to a session (SPEC §10): `Authorization: Bearer <credential>`
//! where the credential is one of the session's `ingress_keys` (compared in
//! constant time, every key every time) or a JWT verified offline against
//! the session's `ingress_jwks_file` ([`super::jwt`]).
//!
//! A missing and a wrong credential get the same 401 (the handler answers
//! both with one body); the reason is kept for the metrics and the debug
//! log only, and never holds the credential.

pub use super::jwt::Jwks;
use super::jwt::JwtError;
use crate::config::{Secret, SessionConfig};

/// The credentials of one session.
pub struct SessionAuth {
    keys: Vec<Secret>,
    jwt: Option<JwtAuth>,
}

struct JwtAuth {
    jwks: Jwks,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for SessionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAuth")
            .field("keys", &self.keys.len())
            .field("jwks", &self.jwt.as_ref().map(|j| &j.jwks))
            .finish()
    }
}

/// How a request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// One of the static keys.
    Key,
    /// A JWT; its `sub`, if any.
    Jwt {
        /// The `sub` claim.
        subject: Option<String>,
    },
}

/// Why a request was refused (never shown to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No `Authorization: Bearer` header.
    #[error("no bearer credential")]
    Missing,
    /// A credential that is no key of the session and no JWT it accepts.
    #[error("not a key of the session")]
    WrongKey,
    /// A JWT that does not verify.
    #[error("JWT refused: {0}")]
    Jwt(#[from] JwtError),
}

impl Refused {
    /// A short stable name (log field).
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::WrongKey => "wrong_key",
            Refused::Jwt(e) => e.reason(),
        }
    }
}

/// A session's setup problem (an unreadable JWKS file).
#[derive(Debug, thiserror::Error)]
#[error("bal.sessions[{index}].ingress_jwks_file: {source}")]
pub struct AuthSetupError {
    /// The session's position in the config.
    pub index: usize,
    /// Why.
    pub source: super::jwt::JwksError,
}

impl SessionAuth {
    /// The credentials configured for a session (`index` names it in an
    /// error).
    pub fn from_config(index: usize, s: &SessionConfig) -> Result<SessionAuth, AuthSetupError> {
        let jwt = match s.jwks_file() {
            Some(path) => Some(JwtAuth {
                jwks: Jwks::load(path).map_err(|source| AuthSetupError { index, source })?,
                issuer: s.ingress_issuer.clone(),
                audience: s.ingress_audience.clone(),
            }),
            None => None,
        };
        Ok(SessionAuth {
            keys: s.ingress_keys.clone(),
            jwt,
        })
    }

    /// Static keys only (tests).
    pub fn with_keys(keys: Vec<Secret>) -> SessionAuth {
        SessionAuth { keys, jwt: None }
    }

    /// True when this session takes any credential at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some()
    }

    /// Checks the value of the `Authorization` header (`None` if absent).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<Authenticated, Refused> {
        let credential = authorization
            .and_then(bearer)
            .filter(|c| !c.is_empty())
            .ok_or(Refused::Missing)?;
        // Every key is compared, whether or not an earlier one matched, so
        // the time taken says nothing about which key (or how much of one)
        // was right.
        let mut matched = false;
        for k in &self.keys {
            matched |= crate::session::same_secret(k.expose().as_bytes(), credential);
        }
        if matched {
            return Ok(Authenticated::Key);
        }
        match (&self.jwt, std::str::from_utf8(credential)) {
            (Some(j), Ok(token)) if token.bytes().filter(|b| *b == b'.').count() == 2 => {
                let v = j.jwks.verify(token, &j.issuer, &j.audience)?;
                Ok(Authenticated::Jwt { subject: v.subject })
            }
            _ => Err(Refused::WrongKey),
        }
    }
}

/// The credential of `Bearer <credential>` (the scheme is
/// case-insensitive, RFC 7235 §2.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_the_bearer_scheme() {
        let a = SessionAuth::with_keys(vec![Secret::new("k-one"), Secret::new("k-two")]);
        assert!(a.enabled());
        assert_eq!(a.check(Some(b"Bearer k-two")), Ok(Authenticated::Key));
        assert_eq!(a.check(Some(b"bearer  k-one ")), Ok(Authenticated::Key));
        assert_eq!(a.check(None), Err(Refused::Missing));
        assert_eq!(a.check(Some(b"Basic k-one")), Err(Refused::Missing));
        assert_eq!(a.check(Some(b"Bearer ")), Err(Refused::Missing));
        assert_eq!(a.check(Some(b"Bearer k-on")), Err(Refused::WrongKey));
        assert_eq!(a.check(Some(b"Bearer k-one1")), Err(Refused::WrongKey));
        assert_eq!(a.check(Some(b"Bearer a.b.c")), Err(Refused::WrongKey));
        assert_eq!(a.check(Some(b"Bearer \xff\xfe")), Err(Refused::WrongKey));
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("k-one"), "{dbg}");
        assert!(!SessionAuth::with_keys(Vec::new()).enabled());
    }
}
