//! FCM JSON: downstream validation (`fcm::validate_downstream`) on arbitrary
//! JSON, inbound classification (`fcm::parse_inbound`), the app server's ack
//! and error codes.
//!
//! Properties: never panics; a message that validates re-serializes to JSON
//! that validates to the same message; an inbound message re-serializes to
//! JSON that parses to the same message; error codes round-trip.
#![no_main]

use fcm::{ErrorCode, Inbound};
use libfuzzer_sys::fuzz_target;

fn has_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(a) => a.iter().any(has_float),
        serde_json::Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

fn downstream(bytes: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let owned = fcm::validate_downstream_owned(v.clone());
    match fcm::validate_downstream(&v) {
        Ok(d) => {
            assert_eq!(
                owned.as_ref().ok(),
                Some(&d),
                "owned and borrowed validation agree"
            );
            let json = d.to_json();
            let v2: serde_json::Value = serde_json::from_str(&json).expect("to_json is JSON");
            let d2 = fcm::validate_downstream(&v2)
                .unwrap_or_else(|r| panic!("re-serialized message rejected: {r} ({json})"));
            // serde_json may read a long decimal 1 ULP off (no
            // `float_roundtrip`); only float-free messages compare exactly.
            if !has_float(&v) {
                assert_eq!(d, d2);
            }
            assert!(d.target().is_some(), "a valid message has a target");
        }
        Err(r) => {
            let o = owned.expect_err("owned and borrowed validation agree");
            assert_eq!(o.code, r.code);
            assert!(!r.code.as_str().is_empty());
        }
    }
}

fn without_message_type(i: Inbound) -> Inbound {
    match i {
        Inbound::Upstream(mut u) => {
            u.extra.remove("message_type");
            Inbound::Upstream(u)
        }
        other => other,
    }
}

fn inbound(bytes: &[u8]) {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(i) = fcm::parse_inbound(s) {
        let json = i.to_json();
        let back = fcm::parse_inbound(&json)
            .unwrap_or_else(|e| panic!("re-serialized inbound does not parse: {e} ({json})"));
        assert_eq!(back.message_type(), i.message_type());
        assert_eq!(back.message_id(), i.message_id());
        if !has_float(&serde_json::from_str(s).unwrap_or_default()) {
            assert_eq!(without_message_type(back), without_message_type(i));
        }
    }
}

fn acks_and_codes(bytes: &[u8]) {
    let s = String::from_utf8_lossy(bytes);
    let (to, id) = s.split_at(
        s.char_indices()
            .nth(s.chars().count() / 2)
            .map_or(0, |(i, _)| i),
    );
    let a = fcm::parse_app_ack(&fcm::app_ack_json(to, id)).expect("our own ack parses");
    assert_eq!((a.to.as_str(), a.message_id.as_str()), (to, id));
    let _ = fcm::parse_app_ack(&s);
    let c = ErrorCode::parse(&s);
    assert_eq!(ErrorCode::parse(c.as_str()), c);
    let _ = c.retry_class();
    let _ = fcm::token_is_well_formed(&s);
    let _ = fcm::condition_is_well_formed(&s);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => downstream(rest),
        1 => inbound(rest),
        _ => acks_and_codes(rest),
    }
});
