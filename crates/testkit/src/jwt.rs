//! JWTs for testing the ingress (SPEC §10): RS256 and ES256 signers with
//! keys generated in the test (aws-lc-rs), their JWKS, and the usual
//! forgeries — `alg: none`, HS256 "signed" with the public key as its
//! secret, a tampered payload.
//!
//! The private keys live only in memory; nothing here is written to disk
//! but the public JWKS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A signing key and its public JWK.
pub struct Signer {
    /// RS256 or ES256.
    pub alg: Algorithm,
    /// The key id it signs with (and its JWK has).
    pub kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A key could not be generated.
#[derive(Debug, thiserror::Error)]
#[error("key generation: {0}")]
pub struct KeyError(String);

fn pem(label: &str, der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Signer {
    /// A fresh RSA 2048 key (RS256).
    pub fn rsa(kid: &str) -> Result<Signer, KeyError> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|e| KeyError(e.to_string()))?;
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'static>>::as_der(&kp)
            .map_err(|e| KeyError(e.to_string()))?;
        let key = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes())
            .map_err(|e| KeyError(e.to_string()))?;
        let public = kp.public_key();
        let jwk = serde_json::json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
            "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
        });
        Ok(Signer {
            alg: Algorithm::RS256,
            kid: kid.into(),
            key,
            jwk,
        })
    }

    /// A fresh P-256 key (ES256).
    pub fn ec(kid: &str) -> Result<Signer, KeyError> {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|e| KeyError(e.to_string()))?;
        let der = kp.to_pkcs8v1().map_err(|e| KeyError(e.to_string()))?;
        let key = EncodingKey::from_ec_der(der.as_ref());
        // Uncompressed point: 0x04 || x || y.
        let point = kp.public_key().as_ref();
        if point.len() != 65 {
            return Err(KeyError(format!(
                "unexpected point of {} bytes",
                point.len()
            )));
        }
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": B64.encode(&point[1..33]),
            "y": B64.encode(&point[33..65]),
        });
        Ok(Signer {
            alg: Algorithm::ES256,
            kid: kid.into(),
            key,
            jwk,
        })
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// The public key's raw material as the JWK holds it (`n` or `x`): what
    /// an attacker would use as an HMAC secret.
    pub fn public_material(&self) -> String {
        self.jwk
            .get("n")
            .or_else(|| self.jwk.get("x"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// Signs `claims` with a header naming this key's `kid`.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        self.sign_with(&h, claims)
    }

    /// Signs `claims` with the header `h` (its `alg` must be this key's).
    pub fn sign_with(&self, h: &Header, claims: &serde_json::Value) -> String {
        match jsonwebtoken::encode(h, claims, &self.key) {
            Ok(t) => t,
            Err(e) => panic!("signing a test token: {e}"),
        }
    }
}

/// A JWKS (`{"keys":[...]}`) of the signers' public keys.
pub fn jwks(signers: &[&Signer]) -> serde_json::Value {
    serde_json::json!({"keys": signers.iter().map(|s| s.jwk().clone()).collect::<Vec<_>>()})
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Claims valid for an hour from now.
pub fn claims(iss: &str, aud: &str, sub: &str) -> serde_json::Value {
    let now = now_secs();
    serde_json::json!({"iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + 3600})
}

/// An unsigned token: `{"alg":"none"}`, empty signature.
pub fn alg_none(claims: &serde_json::Value, kid: Option<&str>) -> String {
    let mut h = serde_json::json!({"alg": "none", "typ": "JWT"});
    if let Some(k) = kid {
        h["kid"] = k.into();
    }
    format!(
        "{}.{}.",
        B64.encode(h.to_string()),
        B64.encode(claims.to_string())
    )
}

/// An HS256 token whose secret is `secret` (e.g. a public key: the
/// algorithm-confusion attack).
pub fn hs256(claims: &serde_json::Value, secret: &[u8], kid: Option<&str>) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    let key = match EncodingKey::from_secret(secret) {
        Ok(k) => k,
        Err(e) => panic!("an HMAC test key: {e}"),
    };
    match jsonwebtoken::encode(&h, claims, &key) {
        Ok(t) => t,
        Err(e) => panic!("signing a test token: {e}"),
    }
}

/// `token` with its payload replaced by `claims` (the signature kept).
pub fn tamper(token: &str, claims: &serde_json::Value) -> String {
    let mut parts = token.split('.');
    let head = parts.next().unwrap_or_default();
    let _ = parts.next();
    let sig = parts.next().unwrap_or_default();
    format!("{head}.{}.{sig}", B64.encode(claims.to_string()))
}
