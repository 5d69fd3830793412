//! FCM HTTP v1 translation (`fcm::v1::translate`, SPEC §8.2) and the v1
//! acceptance checks (`fcm::v1::validate`, `reject_v1_blocks`) on arbitrary
//! JSON.
//!
//! Properties: never panics; a translated body is a JSON object whose
//! `message` has exactly one target and only string `data` values, and
//! `validate_only` only as `true`; translation is deterministic; a message
//! `validate` accepts translates at any send time, including absurd clocks;
//! borrowed and owned validation agree; a message with a v1 block is refused
//! for the XMPP link.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ACC: i64 = 1_700_000_000_000;

/// A send time derived from the input (FNV-1a), so the corpus stays plain
/// JSON: from 10 s before acceptance to ~35 days after.
fn elapsed_for(bytes: &[u8]) -> i64 {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % 3_000_000_000) as i64 - 10_000
}

fn check_body(body: &str, v: &Value) {
    let out: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("translate wrote invalid JSON ({e}): {body}"));
    let m = out["message"].as_object().expect("a message object");
    let targets = ["token", "topic", "condition"]
        .iter()
        .filter(|k| m.contains_key(**k))
        .count();
    assert_eq!(targets, 1, "exactly one target: {body}");
    if let Some(data) = m.get("data") {
        let data = data.as_object().expect("data is an object");
        assert!(
            data.values().all(Value::is_string),
            "data values are strings: {body}"
        );
    }
    match out.get("validate_only") {
        None => {}
        Some(Value::Bool(true)) => assert_eq!(v["dry_run"], Value::Bool(true)),
        Some(other) => panic!("validate_only is {other}"),
    }
    let keys = out.as_object().map(|o| o.len()).unwrap_or(0);
    assert!(keys <= 2, "only message and validate_only: {body}");
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let times = [
        (ACC, ACC + elapsed_for(bytes)),
        (ACC, ACC),
        (i64::MIN, i64::MAX),
        (i64::MAX, i64::MIN),
        (-1, 0),
    ];
    let accepted = fcm::v1::validate(&v);
    let owned = fcm::v1::validate_owned(v.clone());
    match (&accepted, &owned) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "owned and borrowed validation agree"),
        (Err(a), Err(b)) => assert_eq!(a, b, "owned and borrowed validation agree"),
        _ => panic!("owned and borrowed validation disagree: {accepted:?} / {owned:?}"),
    }
    for (acc, now) in times {
        match fcm::v1::translate(&v, acc, now) {
            Ok(body) => {
                check_body(&body, &v);
                let again = fcm::v1::translate(&v, acc, now).expect("deterministic");
                assert_eq!(body, again, "deterministic");
            }
            Err(r) => {
                assert!(
                    accepted.is_err(),
                    "validate accepted a message translate refuses at ({acc}, {now}): {r}"
                );
                assert_eq!(r.code, fcm::ErrorCode::InvalidJson);
                assert!(!r.description.is_empty());
            }
        }
    }
    if let Err(r) = &accepted {
        assert!(!r.description.is_empty());
    }
    let has_block = v.as_object().is_some_and(|o| {
        fcm::v1::V1_BLOCK_KEYS
            .iter()
            .any(|k| o.get(*k).is_some_and(|b| !b.is_null()))
    });
    assert_eq!(fcm::v1::reject_v1_blocks(&v).is_err(), has_block);
});
