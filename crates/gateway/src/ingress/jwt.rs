//! JWTs on the ingress (SPEC §10): `ingress_jwks_file` holds the public
//! keys (a JWKS, RFC 7517) an app's tokens are signed with; a bearer token
//! is verified offline against them with `jsonwebtoken`.
//!
//! Only RS256 (RSA keys of 2048 bits or more) and ES256 (P-256 keys) are
//! accepted. `alg: none` is refused (it is not even an algorithm the
//! library parses), and so is every HMAC algorithm: with a JWKS of public
//! keys an HS256 token "signed" with a public key as its secret would
//! otherwise verify (the classic algorithm confusion). The algorithm comes
//! from the key, never from the token: a token whose header names another
//! algorithm than its key's is refused.
//!
//! Claims: `exp` is required and checked, `nbf` checked when present
//! (60 s of clock skew allowed either way), `iss` and `aud` are required and
//! must equal the session's `ingress_issuer` / `ingress_audience` (`aud`
//! may be an array holding it). `sub`, when present, must be a string: it
//! is handed to the BAL as `subject`.
//!
//! [`inspect`] (the header, no crypto) and [`Jwks::parse`] are pure
//! functions, fuzzed by `fuzz/fuzz_targets/ingress_jwt.rs`.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::path::Path;

/// Longest token looked at (a real one is well under 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most keys a JWKS file may hold (a token without `kid` is tried
/// against each key of its algorithm).
pub const MAX_KEYS: usize = 32;
/// Clock skew allowed on `exp` and `nbf`, seconds.
pub const LEEWAY_SECS: u64 = 60;
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Why a token is refused. The client only ever learns "401"; the reason
/// is for the metrics and the debug log (it never holds the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header.
    #[error("malformed token")]
    Malformed,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token too long")]
    TooLong,
    /// `alg` other than RS256 / ES256 (none, HMAC, PS*, ...).
    #[error("algorithm {0} refused (RS256 and ES256 only)")]
    Algorithm(String),
    /// The header names a `kid` the JWKS does not have.
    #[error("unknown key id")]
    UnknownKid,
    /// No key of the token's algorithm.
    #[error("no key for the algorithm")]
    NoKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` is past.
    #[error("expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("not yet valid")]
    NotYetValid,
    /// `iss` is missing or not the session's.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` is missing or not the session's.
    #[error("wrong audience")]
    Audience,
    /// A required claim is missing or has the wrong type.
    #[error("bad claims: {0}")]
    Claims(String),
}

impl JwtError {
    /// A short stable name (metrics label, log field).
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed",
            JwtError::TooLong => "too_long",
            JwtError::Algorithm(_) => "algorithm",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::NoKey => "no_key",
            JwtError::Signature => "signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::Issuer => "issuer",
            JwtError::Audience => "audience",
            JwtError::Claims(_) => "claims",
        }
    }
}

/// A JWKS that cannot be used, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Error.
        source: std::io::Error,
    },
    /// Not a JWKS.
    #[error("not a JWKS (a JSON object with \"keys\"): {0}")]
    Json(String),
    /// A key gimmm does not accept.
    #[error("key {index}{kid}: {problem}")]
    Key {
        /// Its position in `keys`.
        index: usize,
        /// `" (kid ...)"` or empty.
        kid: String,
        /// What is wrong.
        problem: String,
    },
    /// No keys, or too many.
    #[error("{0}")]
    Count(String),
}

/// What the header says, before any signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// RS256 or ES256.
    pub alg: Algorithm,
    /// The key id, if any.
    pub kid: Option<String>,
}

/// Reads the header of `token` and applies the algorithm policy (no
/// crypto). Refuses anything but RS256 / ES256.
pub fn inspect(token: &str) -> Result<Unverified, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLong);
    }
    if token.bytes().filter(|b| *b == b'.').count() != 2 {
        return Err(JwtError::Malformed);
    }
    let header = match jsonwebtoken::decode_header(token) {
        Ok(h) => h,
        Err(_) => {
            // `alg: none` (and other names the library does not know) ends
            // here: say which, for the log.
            return Err(match raw_alg(token) {
                Some(alg) => JwtError::Algorithm(alg),
                None => JwtError::Malformed,
            });
        }
    };
    match header.alg {
        Algorithm::RS256 | Algorithm::ES256 => Ok(Unverified {
            alg: header.alg,
            kid: header.kid,
        }),
        other => Err(JwtError::Algorithm(format!("{other:?}"))),
    }
}

/// The `alg` of a header the library refused, when it is a short string.
fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let alg = v.get("alg")?.as_str()?;
    Some(alg.chars().take(16).collect())
}

/// One verification key.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys of a JWKS file, ready to verify with.
pub struct Jwks {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|k| (k.kid.as_deref().unwrap_or("-"), k.alg)),
            )
            .finish()
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its `sub`, if any.
    pub subject: Option<String>,
}

#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
}

impl Jwks {
    /// Reads and parses a JWKS file.
    pub fn load(path: &Path) -> Result<Jwks, JwksError> {
        let bytes = std::fs::read(path).map_err(|source| JwksError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Jwks::parse(&bytes)
    }

    /// Parses a JWKS: every key must be an RSA key of at least 2048 bits
    /// (RS256) or an EC P-256 key (ES256), for signatures; `alg`, when
    /// given, must match.
    pub fn parse(bytes: &[u8]) -> Result<Jwks, JwksError> {
        let set: JwkSet =
            serde_json::from_slice(bytes).map_err(|e| JwksError::Json(e.to_string()))?;
        if set.keys.is_empty() {
            return Err(JwksError::Count("the JWKS has no keys".into()));
        }
        if set.keys.len() > MAX_KEYS {
            return Err(JwksError::Count(format!(
                "the JWKS has {} keys, at most {MAX_KEYS} are accepted",
                set.keys.len()
            )));
        }
        let mut keys = Vec::with_capacity(set.keys.len());
        for (index, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let bad = |problem: String| JwksError::Key {
                index,
                kid: kid
                    .as_deref()
                    .map(|k| format!(" (kid {k:?})"))
                    .unwrap_or_default(),
                problem,
            };
            if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
                return Err(bad("\"use\" is not \"sig\"".into()));
            }
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(p) => {
                    use base64::Engine as _;
                    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(p.n.trim_end_matches('='))
                        .map_err(|e| bad(format!("\"n\" is not base64url: {e}")))?;
                    let bytes = n.iter().skip_while(|b| **b == 0).count();
                    if bytes < MIN_RSA_MODULUS_BYTES {
                        return Err(bad(format!(
                            "RSA key of {} bits, at least 2048 are required",
                            bytes * 8
                        )));
                    }
                    Algorithm::RS256
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::EllipticCurve(p) => {
                    return Err(bad(format!(
                        "EC curve {:?}: only P-256 (ES256) is accepted",
                        p.curve
                    )))
                }
                AlgorithmParameters::OctetKey(_) => {
                    return Err(bad(
                        "symmetric (oct) keys are refused: HMAC tokens are not accepted".into(),
                    ))
                }
                _ => {
                    return Err(bad(
                        "only RSA (RS256) and EC P-256 (ES256) keys are accepted".into(),
                    ))
                }
            };
            if let Some(a) = jwk.common.key_algorithm {
                if a != KeyAlgorithm::from(alg) {
                    return Err(bad(format!("\"alg\" {a:?} does not fit the key ({alg:?})")));
                }
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
            keys.push(Key { kid, alg, key });
        }
        Ok(Jwks { keys })
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are none (never, for a parsed JWKS).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `token`: header policy ([`inspect`]), signature with the
    /// key named by `kid` (or each key of the algorithm when there is no
    /// `kid`), then the claims (see the module docs).
    pub fn verify(&self, token: &str, issuer: &str, audience: &str) -> Result<Verified, JwtError> {
        let head = inspect(token)?;
        let mut v = Validation::new(head.alg);
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_issuer(&[issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut candidates = self.keys.iter().filter(|k| k.alg == head.alg).peekable();
        if let Some(kid) = &head.kid {
            let mut named = self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .peekable();
            if named.peek().is_none() {
                return Err(JwtError::UnknownKid);
            }
            // The key's algorithm decides, not the token's.
            let mut last = JwtError::NoKey;
            for k in named {
                if k.alg != head.alg {
                    last = JwtError::Algorithm(format!("{:?} for a {:?} key", head.alg, k.alg));
                    continue;
                }
                match check(token, k, &v) {
                    Err(JwtError::Signature) => last = JwtError::Signature,
                    other => return other,
                }
            }
            return Err(last);
        }
        if candidates.peek().is_none() {
            return Err(JwtError::NoKey);
        }
        for k in candidates {
            match check(token, k, &v) {
                Err(JwtError::Signature) => continue,
                other => return other,
            }
        }
        Err(JwtError::Signature)
    }
}

fn check(token: &str, k: &Key, v: &Validation) -> Result<Verified, JwtError> {
    use jsonwebtoken::errors::ErrorKind;
    match jsonwebtoken::decode::<Claims>(token, &k.key, v) {
        Ok(data) => Ok(Verified {
            subject: data.claims.sub,
        }),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => JwtError::Signature,
            ErrorKind::InvalidAlgorithm => JwtError::Algorithm(format!("{:?}", k.alg)),
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidIssuer => JwtError::Issuer,
            ErrorKind::InvalidAudience => JwtError::Audience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => JwtError::Issuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => JwtError::Audience,
            ErrorKind::MissingRequiredClaim(c) => JwtError::Claims(format!("missing {c}")),
            ErrorKind::InvalidClaimFormat(c) => JwtError::Claims(format!("{c} has the wrong type")),
            ErrorKind::Json(_) => JwtError::Claims("not a JSON object as expected".into()),
            _ => JwtError::Malformed,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::jwt::{alg_none, claims, hs256, jwks, now_secs, tamper, Signer};

    const ISS: &str = "https://auth.example.com";
    const AUD: &str = "gimmm-ingress";

    fn set(signers: &[&Signer]) -> Jwks {
        Jwks::parse(jwks(signers).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn rs256_and_es256_verify_and_give_the_subject() {
        let rsa = Signer::rsa("r1").unwrap();
        let ec = Signer::ec("e1").unwrap();
        let k = set(&[&rsa, &ec]);
        assert_eq!(k.len(), 2);
        for s in [&rsa, &ec] {
            let t = s.sign(&claims(ISS, AUD, "user-42"));
            let v = k.verify(&t, ISS, AUD).unwrap();
            assert_eq!(v.subject.as_deref(), Some("user-42"));
        }
        // Without kid: tried against each key of the algorithm.
        let h = jsonwebtoken::Header::new(Algorithm::ES256);
        let t = ec.sign_with(&h, &claims(ISS, AUD, "u"));
        assert!(k.verify(&t, ISS, AUD).is_ok());
        // aud as an array holding ours; no sub.
        let now = now_secs();
        let c = serde_json::json!({"iss": ISS, "aud": ["x", AUD], "exp": now + 60});
        assert_eq!(k.verify(&rsa.sign(&c), ISS, AUD).unwrap().subject, None);
    }

    #[test]
    fn every_forgery_and_bad_claim_is_refused() {
        let rsa = Signer::rsa("r1").unwrap();
        let ec = Signer::ec("e1").unwrap();
        let other = Signer::rsa("r1").unwrap();
        let k = set(&[&rsa, &ec]);
        let now = now_secs();
        let good = claims(ISS, AUD, "u");
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = good.clone();
            f(&mut c);
            c
        };
        let cases: Vec<(&str, String, JwtError)> = vec![
            (
                "expired",
                rsa.sign(&with(&|c| c["exp"] = (now - 3600).into())),
                JwtError::Expired,
            ),
            (
                "not yet valid",
                rsa.sign(&with(&|c| c["nbf"] = (now + 3600).into())),
                JwtError::NotYetValid,
            ),
            (
                "wrong iss",
                rsa.sign(&claims("evil", AUD, "u")),
                JwtError::Issuer,
            ),
            (
                "wrong aud",
                ec.sign(&claims(ISS, "other", "u")),
                JwtError::Audience,
            ),
            (
                "no iss",
                rsa.sign(&with(&|c| {
                    c.as_object_mut().unwrap().remove("iss");
                })),
                JwtError::Issuer,
            ),
            (
                "no exp",
                rsa.sign(&with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                })),
                JwtError::Claims("missing exp".into()),
            ),
            (
                "alg none",
                alg_none(&good, Some("r1")),
                JwtError::Algorithm("none".into()),
            ),
            (
                "HS256 with the public key as secret",
                hs256(&good, rsa.public_material().as_bytes(), Some("r1")),
                JwtError::Algorithm("HS256".into()),
            ),
            (
                "tampered payload",
                tamper(&rsa.sign(&good), &claims(ISS, AUD, "admin")),
                JwtError::Signature,
            ),
            (
                "signed by another key with the same kid",
                other.sign(&good),
                JwtError::Signature,
            ),
            (
                "unknown kid",
                Signer::ec("e9").unwrap().sign(&good),
                JwtError::UnknownKid,
            ),
            ("garbage", "a.b.c".into(), JwtError::Malformed),
            ("two parts", "abc.def".into(), JwtError::Malformed),
            ("huge", "a.".repeat(5000) + "b", JwtError::TooLong),
        ];
        for (what, token, want) in cases {
            assert_eq!(k.verify(&token, ISS, AUD), Err(want), "{what}");
        }
        // A token naming an RSA key but ES256 in its header.
        let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
        h.kid = Some("r1".into());
        let t = ec.sign_with(&h, &good);
        assert!(matches!(
            k.verify(&t, ISS, AUD),
            Err(JwtError::Algorithm(_))
        ));
        // sub of the wrong type.
        let t = rsa.sign(&with(&|c| c["sub"] = 7.into()));
        assert!(matches!(k.verify(&t, ISS, AUD), Err(JwtError::Claims(_))));
    }

    #[test]
    fn inspect_applies_the_algorithm_policy() {
        let rsa = Signer::rsa("r1").unwrap();
        let t = rsa.sign(&claims(ISS, AUD, "u"));
        assert_eq!(
            inspect(&t).unwrap(),
            Unverified {
                alg: Algorithm::RS256,
                kid: Some("r1".into())
            }
        );
        let t = hs256(&claims(ISS, AUD, "u"), b"secret", None);
        assert_eq!(inspect(&t), Err(JwtError::Algorithm("HS256".into())));
    }

    #[test]
    fn jwks_files_are_checked_key_by_key() {
        let bad = |v: serde_json::Value| {
            Jwks::parse(v.to_string().as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(serde_json::json!({"keys": []})).contains("no keys"));
        assert!(Jwks::parse(b"not json").is_err());
        let e = bad(serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}));
        assert!(e.contains("symmetric") && e.contains("kid \"h\""), "{e}");
        let e = bad(serde_json::json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}));
        assert!(e.contains("at least 2048"), "{e}");
        let ec = Signer::ec("e").unwrap();
        let mut j = ec.jwk().clone();
        j["alg"] = "RS256".into();
        let e = bad(serde_json::json!({"keys": [j]}));
        assert!(e.contains("does not fit"), "{e}");
        let mut j = ec.jwk().clone();
        j["use"] = "enc".into();
        assert!(bad(serde_json::json!({"keys": [j]})).contains("\"use\""));
        let mut j = ec.jwk().clone();
        j["crv"] = "P-384".into();
        assert!(bad(serde_json::json!({"keys": [j]})).contains("P-256"));
        // Debug shows key ids and algorithms only.
        let k = set(&[&ec]);
        assert_eq!(format!("{k:?}"), "[(\"e\", ES256)]");
    }
}
