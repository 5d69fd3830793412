//! The ingress body (SPEC §10): `gateway::ingress::body::parse` on
//! arbitrary bytes, as `POST /v1/upstream` receives them.
//!
//! Properties: never panics; a refusal has a non-empty, bounded
//! description; an accepted body obeys every rule (non-empty fields within
//! their limits, no reserved data key, data within §3.2's 4096 bytes, no
//! duplicate data key), and the `fcm_data` built from it is JSON that
//! parses back to the same message (with and without a subject).
#![no_main]

use gateway::ingress::body::{self, MAX_DESCRIPTION_CHARS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match body::parse(bytes) {
        Err(e) => {
            let d = e.description();
            assert!(!d.is_empty());
            assert!(d.chars().count() <= MAX_DESCRIPTION_CHARS + 1, "{d}");
        }
        Ok(p) => {
            assert!(!p.category.is_empty() && p.category.len() <= body::MAX_CATEGORY_BYTES);
            assert!(!p.message_id.is_empty() && p.message_id.len() <= body::MAX_MESSAGE_ID_BYTES);
            assert!(!p.from.is_empty() && p.from.len() <= body::MAX_FROM_BYTES);
            let size: usize = p.data.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(size <= fcm::MAX_PAYLOAD_BYTES);
            let mut keys: Vec<&str> = p.data.iter().map(|(k, _)| k.as_str()).collect();
            assert!(keys.iter().all(|k| !fcm::is_reserved_data_key(k)));
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), p.data.len(), "duplicate data keys");
            for subject in [None, Some("user \u{1F600} \"q\"")] {
                let out = p.fcm_data(subject);
                let v: serde_json::Value = serde_json::from_str(&out).expect("fcm_data is JSON");
                assert_eq!(v["source"], "ingress");
                assert_eq!(v["subject"].as_str(), subject);
                let back = body::parse(out.as_bytes()).expect("fcm_data parses back");
                assert_eq!(back, p);
            }
        }
    }
});
