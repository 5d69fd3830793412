//! DOWNSTREAM preparation (SPEC §3.2, §8.2): validation with the seeds'
//! rules and, per link, its own ([`Rules`]: on HTTP v1 the v1 checks of
//! [`fcm::v1::validate_owned`]; on XMPP v1's own blocks are refused), the
//! message id (given or generated), the TTL in gimmm's queue. Runs on the
//! BAL connection's task, so validation runs in parallel with the engine;
//! the engine gets an [`Incoming`], accepted or rejected.

use crate::engine::{ConnId, Incoming};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which link's acceptance rules apply (SPEC §8.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Rules {
    /// §3.2's rules; v1's own blocks (`android`, `apns`, `webpush`,
    /// `fcm_options`) are an `INVALID_JSON` naming the key.
    #[default]
    Xmpp,
    /// §3.2's rules plus v1's (string data after translation, `android.ttl`
    /// range, the v1 blocks' types). A receipt request is accepted with the
    /// "no delivery receipts" warning (the engine adds it).
    HttpV1,
}

/// Default TTL (seconds) when a message gives none: FCM's 4 weeks.
const DEFAULT_TTL: u64 = fcm::MAX_TTL_SECS as u64;

/// Message ids for DOWNSTREAMs that bring none: unique per gimmm start.
#[derive(Debug)]
pub struct IdSource {
    prefix: String,
    next: AtomicU64,
}

impl IdSource {
    /// Ids `gimmm-<start time in hex>-<n>`.
    pub fn new() -> IdSource {
        IdSource {
            prefix: format!("gimmm-{:x}-", store::now_ms()),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Default for IdSource {
    fn default() -> Self {
        IdSource::new()
    }
}

/// The `message_id` of an `fcm_data` text, when it has a string one (read
/// leniently: also from a body refused for duplicate keys or depth).
pub fn message_id_of(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        message_id: Option<String>,
    }
    match serde_json::from_str::<Id>(raw) {
        Ok(id) => id.message_id,
        // E.g. `message_id` given twice: the last one, as a Value reads it.
        Err(_) => serde_json::from_str::<serde_json::Value>(raw)
            .ok()?
            .get("message_id")?
            .as_str()
            .map(str::to_string),
    }
}

/// Validates a DOWNSTREAM and prepares it for the engine. `raw` is the
/// `fcm_data` JSON as the BAL sent it: when it has a `message_id` it is
/// stored and sent as is (no re-serialization); otherwise gimmm generates an
/// id and serializes the message with it.
pub fn downstream(
    ids: &IdSource,
    rules: Rules,
    session: &Arc<str>,
    conn: ConnId,
    group_id: Option<String>,
    raw: &str,
) -> Incoming {
    let mut fcm_data = match fcm::strict::from_str_strict(raw) {
        Ok(v) => v,
        Err(e) => {
            // Duplicate keys, too deep (SPEC §11): refused, keeping the
            // BAL's message id when one can be read.
            let message_id = message_id_of(raw).unwrap_or_else(|| ids.next());
            // The REJECT echoes the body as its `fcm_data`, except one too
            // deep for the BAL's own parser to read back.
            let body = if e == fcm::strict::StrictError::TooDeep {
                "null".to_string()
            } else {
                raw.to_string()
            };
            return rejected(
                session,
                conn,
                group_id,
                message_id,
                body,
                (fcm::ErrorCode::InvalidJson, format!("fcm_data: {e}")),
            );
        }
    };
    let given = fcm_data
        .get("message_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let (message_id, body) = match given {
        Some(id) => (id, raw.to_string()),
        None => {
            let generated = ids.next();
            if let Some(obj) = fcm_data.as_object_mut() {
                if !obj.contains_key("message_id") {
                    obj.insert(
                        "message_id".into(),
                        serde_json::Value::String(generated.clone()),
                    );
                }
            }
            let body = serde_json::to_string(&fcm_data).unwrap_or_default();
            (generated, body)
        }
    };
    let checked = match rules {
        Rules::Xmpp => fcm::v1::reject_v1_blocks(&fcm_data)
            .and_then(|()| fcm::validate_downstream_owned(fcm_data)),
        Rules::HttpV1 => fcm::v1::validate_owned(fcm_data).map(|a| a.downstream),
    };
    match checked {
        Ok(d) => {
            let ttl = d.time_to_live.map(u64::from).unwrap_or(DEFAULT_TTL);
            // TTL 0 means "now or never" at FCM; give it one second to leave gimmm.
            let ttl_ms = (ttl * 1000).max(1000) as i64;
            let receipt = d.delivery_receipt_requested.unwrap_or(false);
            let target = d.to.or(d.condition).unwrap_or_default();
            Incoming {
                session: session.clone(),
                conn,
                group_id,
                message_id,
                body,
                ttl_ms,
                receipt,
                target,
                rejected: None,
            }
        }
        Err(rej) => rejected(
            session,
            conn,
            group_id,
            message_id,
            body,
            (rej.code, rej.description),
        ),
    }
}

/// A DOWNSTREAM refused by validation: never sent, its REJECT is the
/// final result.
fn rejected(
    session: &Arc<str>,
    conn: ConnId,
    group_id: Option<String>,
    message_id: String,
    body: String,
    why: (fcm::ErrorCode, String),
) -> Incoming {
    Incoming {
        session: session.clone(),
        conn,
        group_id,
        message_id,
        body,
        ttl_ms: 0,
        receipt: false,
        target: String::new(),
        rejected: Some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(rules: Rules, raw: &str) -> Incoming {
        let session: Arc<str> = Arc::from("s");
        downstream(&IdSource::new(), rules, &session, 1, None, raw)
    }

    #[test]
    fn xmpp_refuses_v1_blocks_naming_the_key() {
        for key in ["android", "apns", "webpush", "fcm_options"] {
            let raw = format!(r#"{{"to":"t","message_id":"m","{key}":{{}}}}"#);
            let inc = prep(Rules::Xmpp, &raw);
            let (code, desc) = inc.rejected.expect("refused");
            assert_eq!(code.as_str(), "INVALID_JSON");
            assert!(desc.contains(key), "{desc}");
            // The v1 link takes them.
            assert!(prep(Rules::HttpV1, &raw).rejected.is_none(), "{key}");
        }
    }

    #[test]
    fn v1_rules_add_v1_checks_and_keep_the_receipt_flag() {
        let inc = prep(
            Rules::HttpV1,
            r#"{"to":"t","message_id":"m","delivery_receipt_requested":true,"data":{"n":1}}"#,
        );
        assert!(inc.rejected.is_none());
        assert!(inc.receipt, "the engine adds the no-receipts warning");
        let inc = prep(
            Rules::HttpV1,
            r#"{"to":"t","message_id":"m","android":{"ttl":"2419201s"}}"#,
        );
        assert_eq!(inc.rejected.unwrap().0.as_str(), "INVALID_JSON");
        // §3.2's rules still apply, and win.
        let inc = prep(Rules::HttpV1, r#"{"message_id":"m","data":{"from":"x"}}"#);
        assert!(inc.rejected.is_some());
    }

    #[test]
    fn duplicate_keys_and_deep_nesting_are_refused_keeping_the_message_id() {
        for rules in [Rules::Xmpp, Rules::HttpV1] {
            let inc = prep(rules, r#"{"to":"a","message_id":"m-dup","to":"b"}"#);
            let (code, desc) = inc.rejected.expect("refused");
            assert_eq!(code.as_str(), "INVALID_JSON");
            assert!(desc.contains("duplicate key \"to\""), "{desc}");
            assert_eq!(inc.message_id, "m-dup");
            let inc = prep(
                rules,
                r#"{"to":"a","message_id":"m-dup2","data":{"k":"1","k":"2"}}"#,
            );
            assert!(inc.rejected.unwrap().1.contains("duplicate key \"k\""));
            assert_eq!(inc.message_id, "m-dup2");
            // Two message ids: which one would FCM use? Refused; the id
            // reported is the one serde reads (the last).
            let inc = prep(rules, r#"{"to":"a","message_id":"x","message_id":"y"}"#);
            assert!(inc.rejected.is_some());
            assert_eq!(inc.message_id, "y");
            let deep = format!(
                r#"{{"to":"a","message_id":"m-deep","data":{{"k":"v"}},"x":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            );
            let inc = prep(rules, &deep);
            let (_, desc) = inc.rejected.expect("refused");
            assert!(desc.contains("nested deeper than 128"), "{desc}");
            assert_eq!(inc.message_id, "m-deep");
            assert_eq!(inc.body, "null", "not echoed: too deep to read back");
        }
    }
}
