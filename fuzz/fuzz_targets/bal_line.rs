//! The BAL line decoder (`bal::proto::FromBal::parse`) on arbitrary bytes.
//!
//! Properties: never panics; errors carry only the codes SPEC §3.4 allows
//! for a line (`INVALID_JSON`, `UNKNOWN_MESSAGE_TYPE`); a decoded message
//! re-encodes to a line that decodes to the same message.
#![no_main]

use bal::proto::{BalError, FromBal};
use libfuzzer_sys::fuzz_target;

fn value_has_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(a) => a.iter().any(value_has_float),
        serde_json::Value::Object(o) => o.values().any(value_has_float),
        _ => false,
    }
}

fn has_float(m: &FromBal) -> bool {
    matches!(m, FromBal::Downstream { fcm_data, .. } if value_has_float(fcm_data))
}

fuzz_target!(|line: &[u8]| {
    match FromBal::parse(line) {
        Ok(m) => {
            let again = serde_json::to_vec(&m).expect("a decoded message re-encodes");
            let back = FromBal::parse(&again).expect("a re-encoded message decodes");
            // serde_json (without its `float_roundtrip` feature) may read a
            // long decimal 1 ULP off; FCM payload values are strings, so only
            // float-free messages must round-trip exactly.
            if !has_float(&m) {
                assert_eq!(back, m);
            }
            // The token is a secret: Debug never shows it.
            if let FromBal::Logon { session_id, .. } = &m {
                let blank = FromBal::Logon {
                    session_id: session_id.clone(),
                    token: String::new(),
                };
                assert_eq!(format!("{m:?}"), format!("{blank:?}"));
            }
        }
        Err((code, _)) => {
            assert!(
                matches!(code, BalError::InvalidJson | BalError::UnknownMessageType),
                "unexpected code {code:?}"
            );
        }
    }
});
