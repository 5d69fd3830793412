//! FCM HTTP v1 answers (`fcm::v1::classify`, `classify_at`,
//! `parse_success`, `ack_json`; SPEC §8.3) on arbitrary bytes.
//!
//! Input: 2 bytes HTTP status (little endian), 1 byte `Retry-After` length
//! (mod 64; 0 = no header), that many bytes of header (lossy UTF-8), then
//! the body.
//!
//! Properties: never panics; the failure keeps the status, has a non-empty
//! `error` and a short one-line description; RefreshToken / AuthError only
//! for 401 / 403 without an FcmError; target backoff only for
//! QUOTA_EXCEEDED or a bare 429; `classify` and `classify_at` agree except on
//! the delay; a parsed 200 name builds an ack that parses back.
#![no_main]

use fcm::v1::{FailureClass, MAX_RETRIES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let ra_len = usize::from(data[2] % 64).min(data.len() - 3);
    let ra_text = String::from_utf8_lossy(&data[3..3 + ra_len]).into_owned();
    let retry_after = (ra_len > 0).then_some(ra_text.as_str());
    let body = &data[3 + ra_len..];

    let f = fcm::v1::classify(status, retry_after, body);
    assert_eq!(f.http_status, status);
    assert!(!f.error.is_empty());
    assert!(!f.description.is_empty());
    assert!(f.description.chars().count() <= 600, "{}", f.description);
    assert!(
        !f.description.chars().any(char::is_control),
        "{:?}",
        f.description
    );
    match &f.class {
        FailureClass::RefreshToken => assert!(status == 401 && f.fcm_error.is_none()),
        FailureClass::AuthError => assert!(status == 403 && f.fcm_error.is_none()),
        FailureClass::Retry { target_backoff, .. } => {
            assert_eq!(f.error, MAX_RETRIES);
            if *target_backoff {
                assert!(
                    f.fcm_error.as_deref() == Some("QUOTA_EXCEEDED")
                        || (f.fcm_error.is_none() && status == 429),
                    "{f:?}"
                );
            }
        }
        FailureClass::Final => assert_ne!(f.error, MAX_RETRIES),
    }
    if f.fcm_error.is_none() && !matches!(status, 400 | 401 | 403 | 429 | 500 | 502 | 503 | 504) {
        assert_eq!(f.error, format!("HTTP_{status}"));
    }

    let g = fcm::v1::classify_at(status, retry_after, body, 1_700_000_000_000);
    assert_eq!(
        (&f.error, &f.fcm_error, &f.description),
        (&g.error, &g.fcm_error, &g.description)
    );
    assert_eq!(
        std::mem::discriminant(&f.class),
        std::mem::discriminant(&g.class)
    );
    if let Some(ra) = retry_after {
        let _ = fcm::v1::RetryAfter::parse(ra).map(|r| r.delay_from(i64::MIN));
    }

    if let Ok(name) = fcm::v1::parse_success(body) {
        let ack = fcm::v1::ack_json(&ra_text, &ra_text, &name);
        let v: serde_json::Value = serde_json::from_str(&ack).expect("the ack is JSON");
        assert_eq!(v["name"].as_str(), Some(name.as_str()));
        assert_eq!(v["message_type"], "ack");
    }
});
