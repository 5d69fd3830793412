//! JWTs on the ingress (SPEC §10): `gateway::ingress::jwt` on arbitrary
//! input. The first byte picks what the rest is:
//!
//! * 0: a bearer token as text, into `inspect` and `Jwks::verify` against
//!   a JWKS of freshly generated RS256 and ES256 public keys;
//! * 1: the claims part of a token that is really signed (ES256, with the
//!   JWKS's key), so the claims parsing and checks run on arbitrary bytes;
//! * 2: a JWKS file, into `Jwks::parse`.
//!
//! Properties: never panics; `inspect` accepts only RS256 and ES256; a
//! token nobody signed never verifies (the fuzzer does not know the
//! private keys, so an `Ok` would be a forgery); a really signed token is
//! never refused for its signature, key or algorithm, and verifies only
//! when its claims are a JSON object with the right `iss`, `aud`, an `exp`
//! and a string `sub` or none, which comes back as the subject; a parsed
//! JWKS holds 1..=32 keys.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use gateway::ingress::jwt::{inspect, Jwks, JwtError, MAX_KEYS};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const ISS: &str = "https://issuer.example";
const AUD: &str = "gimmm-ingress";

struct Keys {
    jwks: Jwks,
    ec: EncodingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rp = rsa.public_key();
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = ec.public_key().as_ref().to_vec();
        let jwks = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "alg": "RS256",
             "n": B64.encode(rp.modulus().big_endian_without_leading_zero()),
             "e": B64.encode(rp.exponent().big_endian_without_leading_zero())},
            {"kty": "EC", "crv": "P-256", "kid": "e", "use": "sig",
             "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])},
        ]});
        Keys {
            jwks: Jwks::parse(jwks.to_string().as_bytes()).unwrap(),
            ec: EncodingKey::from_ec_der(ec.to_pkcs8v1().unwrap().as_ref()),
        }
    })
}

fn contains(v: &serde_json::Value, want: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == want,
        serde_json::Value::Array(a) => a.iter().any(|x| x.as_str() == Some(want)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let k = keys();
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            if let Ok(u) = inspect(&token) {
                assert!(matches!(u.alg, Algorithm::RS256 | Algorithm::ES256));
            }
            let r = k.jwks.verify(&token, ISS, AUD);
            assert!(r.is_err(), "a token nobody signed verified: {token}");
        }
        1 => {
            let head = B64.encode(br#"{"alg":"ES256","typ":"JWT","kid":"e"}"#);
            let message = format!("{head}.{}", B64.encode(rest));
            let sig =
                jsonwebtoken::crypto::sign(message.as_bytes(), &k.ec, Algorithm::ES256).unwrap();
            let token = format!("{message}.{sig}");
            match k.jwks.verify(&token, ISS, AUD) {
                Ok(v) => {
                    let c: serde_json::Value =
                        serde_json::from_slice(rest).expect("verified claims are JSON");
                    assert!(contains(&c["iss"], ISS), "{c}");
                    assert!(contains(&c["aud"], AUD), "{c}");
                    assert!(c.get("exp").is_some(), "{c}");
                    assert_eq!(v.subject.as_deref(), c.get("sub").and_then(|s| s.as_str()));
                }
                Err(e) => assert!(
                    !matches!(
                        e,
                        JwtError::Signature
                            | JwtError::UnknownKid
                            | JwtError::NoKey
                            | JwtError::Algorithm(_)
                    ),
                    "a really signed token refused: {e:?}"
                ),
            }
        }
        _ => {
            if let Ok(j) = Jwks::parse(rest) {
                assert!((1..=MAX_KEYS).contains(&j.len()));
                assert!(j.verify("a.b.c", ISS, AUD).is_err());
            }
        }
    }
});
