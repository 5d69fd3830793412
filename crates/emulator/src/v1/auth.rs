//! The service account and the OAuth 2 token endpoint of the FCM HTTP v1
//! emulator (SPEC §9; the flow is Google's "OAuth 2.0 for server to server
//! applications", SPEC §8.4).
//!
//! At start the emulator generates an RSA 2048 key (aws-lc-rs) and a
//! service-account JSON key around it, whose `token_uri` is the emulator's own
//! `POST /token`. That endpoint takes the JWT-bearer grant
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`),
//! verifies the RS256 signature with `jsonwebtoken`, then the claims as
//! Google does, and issues an opaque access token with an expiry.
//!
//! Neither the private key nor any access token is ever logged or printed by
//! `Debug`.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

/// `grant_type` of the JWT-bearer flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The scope FCM documents for sending.
pub const FIREBASE_MESSAGING_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The broad scope the API also accepts.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The audience Google's own client libraries always sign, whatever the key
/// file's `token_uri` says.
pub const GOOGLE_TOKEN_AUDIENCE: &str = "https://oauth2.googleapis.com/token";
/// The older audience, still accepted by Google (older Admin SDKs sign it).
pub const GOOGLE_LEGACY_TOKEN_AUDIENCE: &str = "https://accounts.google.com/o/oauth2/token";

/// Longest assertion lifetime Google accepts (`exp - iat`), seconds.
const MAX_ASSERTION_LIFETIME: i64 = 3600;
/// How far `iat` may be from now, seconds.
const MAX_CLOCK_SKEW: i64 = 300;

/// The generated service account. The private key lives only in `json` and
/// `key_pem`; `Debug` shows neither.
pub(crate) struct ServiceAccount {
    pub(crate) project_id: String,
    pub(crate) private_key_id: String,
    pub(crate) client_email: String,
    pub(crate) client_id: String,
    pub(crate) token_uri: String,
    /// The whole key file (holds the private key).
    pub(crate) json: String,
    decoding_key: DecodingKey,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("private_key_id", &self.private_key_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// PEM armour (64-character lines, `\n` line ends, as in Google's key files).
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

impl ServiceAccount {
    /// Generate a fresh RSA 2048 key and the key file around it.
    pub(crate) fn generate(project_id: &str, token_uri: &str) -> Result<ServiceAccount, String> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| "RSA key generation failed".to_owned())?;
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'static>>::as_der(&kp)
            .map_err(|_| "RSA key serialization failed".to_owned())?;
        let key_pem = pem("PRIVATE KEY", der.as_ref());
        let public = kp.public_key();
        let decoding_key = DecodingKey::from_rsa_raw_components(
            public.modulus().big_endian_without_leading_zero(),
            public.exponent().big_endian_without_leading_zero(),
        );

        let private_key_id = hex(&rand::random::<[u8; 20]>());
        let account = format!(
            "firebase-adminsdk-{}",
            &hex(&rand::random::<[u8; 3]>())[..5]
        );
        let client_email = format!("{account}@{project_id}.iam.gserviceaccount.com");
        // Google's client ids are 21 decimal digits.
        let client_id = format!("1{:020}", rand::random::<u64>());
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": private_key_id,
            "private_key": key_pem,
            "client_email": client_email,
            "client_id": client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": format!(
                "https://www.googleapis.com/robot/v1/metadata/x509/{account}%40{project_id}.iam.gserviceaccount.com"
            ),
            "universe_domain": "googleapis.com",
        }))
        .map_err(|e| format!("service account JSON: {e}"))?;
        Ok(ServiceAccount {
            project_id: project_id.to_owned(),
            private_key_id,
            client_email,
            client_id,
            token_uri: token_uri.to_owned(),
            json,
            decoding_key,
        })
    }
}

/// Why a token request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    GrantType,
    AssertionMissing,
    Malformed,
    Signature,
    Issuer,
    Audience,
    Scope,
    Lifetime,
    Iat,
}

impl Refusal {
    /// Key in [`super::V1Stats::token_refusals`].
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::GrantType => "grant_type",
            Refusal::AssertionMissing => "assertion_missing",
            Refusal::Malformed => "malformed",
            Refusal::Signature => "signature",
            Refusal::Issuer => "issuer",
            Refusal::Audience => "audience",
            Refusal::Scope => "scope",
            Refusal::Lifetime => "lifetime",
            Refusal::Iat => "iat",
        }
    }

    /// OAuth 2 `error`.
    pub(crate) fn error(self) -> &'static str {
        match self {
            Refusal::GrantType => "unsupported_grant_type",
            Refusal::AssertionMissing => "invalid_request",
            _ => "invalid_grant",
        }
    }

    /// `error_description`, in Google's words where known.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Refusal::GrantType => "Invalid grant_type: expected urn:ietf:params:oauth:grant-type:jwt-bearer",
            Refusal::AssertionMissing => "Missing required parameter: assertion",
            Refusal::Malformed => "Invalid JWT: could not be decoded",
            Refusal::Signature => "Invalid JWT Signature.",
            Refusal::Issuer => "Invalid grant: account not found",
            Refusal::Audience => "Invalid JWT: Failed audience check.",
            Refusal::Scope => "Invalid JWT: the scope must include https://www.googleapis.com/auth/firebase.messaging or https://www.googleapis.com/auth/cloud-platform",
            Refusal::Lifetime | Refusal::Iat => "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<Value>,
    aud: Option<Value>,
    scope: Option<Value>,
    iat: Option<Value>,
    exp: Option<Value>,
}

fn as_secs(v: Option<&Value>) -> Option<i64> {
    let v = v?;
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// Check a token request body (`application/x-www-form-urlencoded`) against
/// the service account; `now` in Unix seconds.
pub(crate) fn check_grant(sa: &ServiceAccount, body: &[u8], now: i64) -> Result<(), Refusal> {
    let mut grant_type = None;
    let mut assertion = None;
    for (k, v) in form_urlencoded::parse(body) {
        match &*k {
            "grant_type" => grant_type = Some(v),
            "assertion" => assertion = Some(v),
            _ => {}
        }
    }
    if grant_type.as_deref() != Some(JWT_BEARER_GRANT) {
        return Err(Refusal::GrantType);
    }
    let assertion = assertion
        .filter(|a| !a.is_empty())
        .ok_or(Refusal::AssertionMissing)?;
    check_assertion(sa, &assertion, now)
}

fn check_assertion(sa: &ServiceAccount, jwt: &str, now: i64) -> Result<(), Refusal> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| Refusal::Malformed)?;
    if header.alg != Algorithm::RS256 {
        return Err(Refusal::Signature);
    }
    if header
        .kid
        .as_deref()
        .is_some_and(|k| k != sa.private_key_id)
    {
        // Signed with another key of (maybe) the same account.
        return Err(Refusal::Signature);
    }
    let mut v = Validation::new(Algorithm::RS256);
    // Claims are checked below, in Google's terms.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims = HashSet::new();
    let data = jsonwebtoken::decode::<Claims>(jwt, &sa.decoding_key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => Refusal::Signature,
            _ => Refusal::Malformed,
        }
    })?;
    let c = data.claims;

    if c.iss.as_ref().and_then(Value::as_str) != Some(sa.client_email.as_str()) {
        return Err(Refusal::Issuer);
    }
    let aud_ok = |a: &str| {
        a == sa.token_uri || a == GOOGLE_TOKEN_AUDIENCE || a == GOOGLE_LEGACY_TOKEN_AUDIENCE
    };
    let aud_ok = match &c.aud {
        Some(Value::String(a)) => aud_ok(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(aud_ok),
        _ => false,
    };
    if !aud_ok {
        return Err(Refusal::Audience);
    }
    let scope_ok = c.scope.as_ref().and_then(Value::as_str).is_some_and(|s| {
        s.split_ascii_whitespace()
            .any(|s| s == FIREBASE_MESSAGING_SCOPE || s == CLOUD_PLATFORM_SCOPE)
    });
    if !scope_ok {
        return Err(Refusal::Scope);
    }
    let (Some(iat), Some(exp)) = (as_secs(c.iat.as_ref()), as_secs(c.exp.as_ref())) else {
        return Err(Refusal::Lifetime);
    };
    if (iat - now).abs() > MAX_CLOCK_SKEW {
        return Err(Refusal::Iat);
    }
    if exp <= iat || exp - iat > MAX_ASSERTION_LIFETIME || exp <= now {
        return Err(Refusal::Lifetime);
    }
    Ok(())
}

/// What the bearer token of a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenState {
    Valid,
    Expired,
    Unknown,
}

/// Access tokens issued and not yet forgotten. Reads (every send) take a
/// shared lock; issuing takes the exclusive one.
#[derive(Default)]
pub(crate) struct Tokens {
    map: RwLock<HashMap<Box<str>, Instant>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

/// Expired tokens are kept this long (to answer "expired" rather than
/// "unknown"), then forgotten.
const EXPIRED_MEMORY: Duration = Duration::from_secs(3600);

impl Tokens {
    /// Issue a new random opaque token living `lifetime`.
    pub(crate) fn issue(&self, lifetime: Duration) -> String {
        let token = format!(
            "ya29.emu{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        );
        let now = Instant::now();
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= 1024 {
            map.retain(|_, exp| *exp + EXPIRED_MEMORY > now);
        }
        map.insert(token.as_str().into(), now + lifetime);
        token
    }

    /// State of a presented token.
    pub(crate) fn check(&self, token: &str) -> TokenState {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        match map.get(token) {
            Some(exp) if Instant::now() < *exp => TokenState::Valid,
            Some(_) => TokenState::Expired,
            None => TokenState::Unknown,
        }
    }

    /// Forget every token (clients then get 401 and must fetch a new one).
    pub(crate) fn revoke_all(&self) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn key_pem(sa: &ServiceAccount) -> String {
        let v: Value = serde_json::from_str(&sa.json).unwrap();
        v["private_key"].as_str().unwrap().to_owned()
    }

    fn sign(sa: &ServiceAccount, claims: &Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = kid.map(str::to_owned);
        let key = EncodingKey::from_rsa_pem(key_pem(sa).as_bytes()).unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }

    fn claims(sa: &ServiceAccount, now: i64) -> Value {
        serde_json::json!({"iss": sa.client_email, "aud": sa.token_uri,
            "scope": FIREBASE_MESSAGING_SCOPE, "iat": now, "exp": now + 3600})
    }

    #[test]
    fn key_file_and_claims() {
        let sa = ServiceAccount::generate("proj", "https://127.0.0.1:1/token").unwrap();
        let v: Value = serde_json::from_str(&sa.json).unwrap();
        assert_eq!(v["type"], "service_account");
        assert_eq!(v["project_id"], "proj");
        assert_eq!(v["token_uri"], "https://127.0.0.1:1/token");
        assert!(v["private_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(v["client_id"].as_str().unwrap().len(), 21);
        assert!(!format!("{sa:?}").contains("PRIVATE"));

        let now = 1_700_000_000;
        let ok = sign(&sa, &claims(&sa, now), Some(&sa.private_key_id));
        assert_eq!(check_assertion(&sa, &ok, now), Ok(()));
        let mut c = claims(&sa, now);
        c["aud"] = GOOGLE_TOKEN_AUDIENCE.into();
        c["scope"] = format!("openid {CLOUD_PLATFORM_SCOPE}").into();
        assert_eq!(check_assertion(&sa, &sign(&sa, &c, None), now), Ok(()));

        let bad = [
            ("iss", Value::from("x@y"), Refusal::Issuer),
            ("aud", Value::from("https://evil/token"), Refusal::Audience),
            (
                "scope",
                Value::from("https://www.googleapis.com/auth/userinfo.email"),
                Refusal::Scope,
            ),
            ("exp", Value::from(now + 3601), Refusal::Lifetime),
            ("iat", Value::from(now - 301), Refusal::Iat),
        ];
        for (k, val, want) in bad {
            let mut c = claims(&sa, now);
            c[k] = val;
            assert_eq!(
                check_assertion(&sa, &sign(&sa, &c, None), now),
                Err(want),
                "{k}"
            );
        }
        let other = ServiceAccount::generate("proj", "https://127.0.0.1:1/token").unwrap();
        let forged = sign(&other, &claims(&sa, now), None);
        assert_eq!(check_assertion(&sa, &forged, now), Err(Refusal::Signature));
        assert_eq!(
            check_assertion(&sa, &sign(&sa, &claims(&sa, now), Some("other-kid")), now),
            Err(Refusal::Signature)
        );
        assert_eq!(check_assertion(&sa, "a.b.c", now), Err(Refusal::Malformed));
    }

    #[test]
    fn form_body() {
        let sa = ServiceAccount::generate("p", "https://127.0.0.1:1/token").unwrap();
        assert_eq!(
            check_grant(&sa, b"grant_type=password", 0),
            Err(Refusal::GrantType)
        );
        assert_eq!(
            check_grant(
                &sa,
                b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer",
                0
            ),
            Err(Refusal::AssertionMissing)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire() {
        let t = Tokens::default();
        let tok = t.issue(Duration::from_secs(10));
        assert!(tok.starts_with("ya29."));
        assert_eq!(t.check(&tok), TokenState::Valid);
        assert_eq!(t.check("nope"), TokenState::Unknown);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(t.check(&tok), TokenState::Expired);
        t.revoke_all();
        assert_eq!(t.check(&tok), TokenState::Unknown);
    }
}
