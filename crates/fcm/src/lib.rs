//! `fcm`: the typed model of Firebase Cloud Messaging's XMPP (CCS) JSON
//! messages and the rules FCM applies to them. Pure: no I/O.
//!
//! Source material (`shared/seeds/004_*.txt`, the FCM XMPP server reference,
//! and `shared/seeds/000_*.txt`, the receipt example):
//!
//! * table 1 — downstream targets, options and payload: [`Downstream`],
//!   [`Priority`], [`Target`];
//! * tables 2a, 2b, 2c — notification keys (Apple, Android, Web):
//!   [`Notification`];
//! * table 3 — downstream responses: [`Ack`], [`Nack`];
//! * table 4 — downstream error codes: [`ErrorCode`], with SPEC §4's
//!   [`RetryClass`]; the validation rules and their codes:
//!   [`validate_downstream`], [`Rejection`];
//! * table 5 — upstream messages: [`Upstream`];
//! * table 6 — the app server's ack: [`app_ack_json`], [`AppAck`];
//! * table 7 — control messages: [`Control`] (`CONNECTION_DRAINING`);
//! * seed 000 — delivery receipts: [`Receipt`], [`ReceiptData`].
//!
//! The FCM HTTP v1 link (SPEC §8.2, §8.3): translation of the legacy JSON
//! into v1 request bodies and classification of v1 answers, in [`v1`].
//!
//! Inbound JSON (what CCS sends inside `<gcm>`) is classified by
//! [`parse_inbound`] into [`Inbound`]; [`Inbound::to_json`] writes it back
//! (used by the CCS emulator).

#![warn(missing_docs)]

mod downstream;
mod error;
mod inbound;
pub mod strict;
pub mod v1;

pub use downstream::{
    condition_is_well_formed, is_reserved_data_key, token_is_well_formed,
    topic_name_is_well_formed, validate_downstream, validate_downstream_owned, Downstream,
    Notification, Priority, Target, MAX_CONDITION_OPERATORS, MAX_PAYLOAD_BYTES, MAX_TOKEN_BYTES,
    MAX_TOPIC_PAYLOAD_BYTES, MAX_TTL_SECS, TOPIC_PREFIX,
};
pub use error::{ErrorCode, Rejection, RetryClass};
pub use inbound::{
    app_ack_json, parse_app_ack, parse_inbound, Ack, AppAck, Control, Inbound, Nack, Receipt,
    ReceiptData, Upstream, CONNECTION_DRAINING, MESSAGE_SENT_TO_DEVICE,
};

/// Compact JSON of a value whose serialization cannot fail: only string-keyed
/// maps, strings, integers and booleans (a `serde_json::Value` holds no NaN).
fn json_string<T: serde::Serialize + ?Sized>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(s) => s,
        Err(e) => unreachable!("serializing FCM JSON cannot fail: {e}"),
    }
}
