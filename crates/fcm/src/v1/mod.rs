//! The FCM HTTP v1 link's pure parts (SPEC §8.2, §8.3): translating the
//! legacy `fcm_data` BALs send (§3.2) into the v1 request body, the checks
//! made before a message is accepted for the v1 link (and the one made for
//! the XMPP link), and the classification of FCM's answers. No I/O.
//!
//! * [`translate`] / [`translate_into`]: legacy `fcm_data` → the body of
//!   `POST /v1/projects/P/messages:send`, on the send path of every message;
//! * [`validate`] / [`validate_owned`]: §3.2's checks
//!   ([`validate_downstream`]) plus v1's, at acceptance time, with the
//!   DOWNSTREAM_ACCEPTED warning;
//! * [`reject_v1_blocks`]: with `api = "xmpp"`, v1's own blocks are refused;
//! * [`parse_success`], [`ack_json`]: a 200 answer → the DOWNSTREAM_ACK's
//!   `fcm_data`;
//! * [`classify`] / [`classify_at`]: any other answer → [`Failure`].
//!
//! # The request body
//!
//! Compact JSON, keys in this order: `{"message":{T,"data","notification",
//! "android","apns","webpush","fcm_options"},"validate_only":true}` where T is
//! one of `token` / `topic` / `condition`; a part with nothing in it is left
//! out, and `validate_only` is written only when true (`dry_run`). Field names
//! are the proto names (`collapse_key`, `channel_id`), which Google accepts
//! like the JSON names; the BAL's v1 blocks keep the spelling they came with.
//!
//! What goes where (SPEC §8.2's table; `n.` is the legacy `notification`):
//!
//! | legacy | v1 |
//! |---|---|
//! | `to` `/topics/x` / token, `condition` | `topic` `x` / `token` / `condition` |
//! | `data` | `data`, non-string values as their compact JSON text |
//! | `n.title`, `n.body`, `n.image` | `notification.title` / `.body` / `.image` |
//! | `n.icon`, `n.color`, `n.tag` | `android.notification.*` |
//! | `n.sound` | `android.notification.sound`, `apns.payload.aps.sound` |
//! | `n.click_action` | `android.notification.click_action`, `aps.category` |
//! | `n.body_loc_key` / `n.title_loc_key` | `android.notification.*`, `aps.alert.loc-key` / `title-loc-key` |
//! | `n.body_loc_args` / `n.title_loc_args` | as arrays: `android.notification.*`, `aps.alert.loc-args` / `title-loc-args` |
//! | `n.android_channel_id` | `android.notification.channel_id` |
//! | `n.subtitle` | `aps.alert.subtitle` |
//! | `n.badge` | `aps.badge`, a number |
//! | `priority` | `android.priority` `NORMAL`/`HIGH`, `apns.headers.apns-priority` `5`/`10` |
//! | `time_to_live` N | `android.ttl` = what is left at send time, `"Ns"`; `apns-expiration` = accepted_at + N (`"0"` for 0) |
//! | `collapse_key` | `android.collapse_key`, `apns-collapse-id` |
//! | `content_available` / `mutable_content` true | `aps.content-available` / `mutable-content` = 1 |
//! | `restricted_package_name` | `android.restricted_package_name` |
//! | `dry_run` true | `validate_only` true |
//! | `message_id`, `delivery_receipt_requested`, unknown keys | not sent |
//! | `android`, `apns`, `webpush`, `fcm_options` | merged in deeply; the BAL's values win |
//!
//! `aps.alert` is written only when there is a subtitle or a localization
//! key or argument list; it then carries `n.title` / `n.body` as `title` /
//! `body` too, because an explicit `aps.alert` may take the place of the one
//! FCM builds from `message.notification`. Otherwise title and body travel
//! once, in `message.notification`. Legacy notification keys of no table are
//! dropped (v1 has no place for them).
//!
//! Merging: where the BAL's block and the translation both hold an object
//! (`android.notification`, `apns.headers`, `apns.payload.aps`, …) they are
//! merged key by key; anywhere else the BAL's value wins — `null` included,
//! which unsets the translated field (proto3 JSON). A message field matches
//! under either spelling (`channelId` overrides a translated `channel_id`),
//! a header without regard to case (`APNS-Priority`).

mod json;
mod response;
mod schema;
mod translate;

use serde_json::Value;

pub use response::{
    ack_json, classify, classify_at, parse_success, BadSuccess, Failure, FailureClass, RetryAfter,
    MAX_RETRIES,
};
pub use translate::translate_into;

use crate::downstream::{validate_downstream, validate_downstream_owned, Downstream};
use crate::error::Rejection;

/// The `warning` of DOWNSTREAM_ACCEPTED for a message that asks for a
/// delivery receipt on the v1 link (SPEC §8.2).
pub const NO_RECEIPTS_WARNING: &str = "no delivery receipts with FCM HTTP v1";

/// The top-level legacy keys that hold FCM HTTP v1's own blocks
/// (`fcmOptions` is `fcm_options`'s JSON spelling).
pub const V1_BLOCK_KEYS: [&str; 5] = ["android", "apns", "webpush", "fcm_options", "fcmOptions"];

/// Translates legacy `fcm_data` (SPEC §3.2) into the FCM HTTP v1 request
/// body `{"message":{…}}` (plus `"validate_only":true` for `dry_run`), per
/// SPEC §8.2; see the [module docs](self) for the table and the merge rules.
///
/// `accepted_at_ms` is when the message was accepted (DOWNSTREAM_ACCEPTED),
/// `now_ms` the time of this send, both in ms since the Unix epoch: the
/// lifetime `time_to_live` counts from acceptance, so `android.ttl` is what
/// is left of it now, in whole seconds rounded down, never below 0.
///
/// Meant for bodies [`validate`] accepted: it does not repeat §3.2's rules
/// (reserved data keys, payload size, token and topic syntax), but any input
/// gives either a body or a [`Rejection`] (`INVALID_JSON`, naming the key) —
/// never a panic. For bodies [`validate`] accepted, it fails for no `now_ms`.
pub fn translate(fcm_data: &Value, accepted_at_ms: i64, now_ms: i64) -> Result<String, Rejection> {
    let mut out = String::new();
    translate_into(fcm_data, accepted_at_ms, now_ms, &mut out)?;
    Ok(out)
}

/// A message accepted for the v1 link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The message as [`validate_downstream`] read it.
    pub downstream: Downstream,
    /// The DOWNSTREAM_ACCEPTED `warning`, if any: [`NO_RECEIPTS_WARNING`]
    /// when the message asks for a delivery receipt.
    pub warning: Option<&'static str>,
}

impl Accepted {
    fn new(downstream: Downstream) -> Self {
        let warning =
            (downstream.delivery_receipt_requested == Some(true)).then_some(NO_RECEIPTS_WARNING);
        Accepted {
            downstream,
            warning,
        }
    }
}

/// What translating adds to §3.2's checks: v1's types (strings where the
/// legacy API took anything, a numeric badge, the v1 blocks' JSON types,
/// `android.ttl` ≤ 2419200 s, string values in `android.data` /
/// `webpush.data` / headers).
fn check_v1(fcm_data: &Value) -> Result<(), Rejection> {
    // The translation of a message checks everything it writes; at
    // acceptance, now = accepted_at, so the TTL is whole.
    translate_into(fcm_data, 0, 0, &mut String::new())
}

/// The checks before accepting a message for the v1 link (SPEC §8.2): §3.2's
/// ([`validate_downstream`], whose answer wins when both fail) and then v1's.
/// A message this accepts translates at any later time.
pub fn validate(fcm_data: &Value) -> Result<Accepted, Rejection> {
    let v1 = check_v1(fcm_data);
    let downstream = validate_downstream(fcm_data)?;
    v1?;
    Ok(Accepted::new(downstream))
}

/// [`validate`] taking ownership (no copy of the payload, like
/// [`validate_downstream_owned`]).
pub fn validate_owned(fcm_data: Value) -> Result<Accepted, Rejection> {
    let v1 = check_v1(&fcm_data);
    let downstream = validate_downstream_owned(fcm_data)?;
    v1?;
    Ok(Accepted::new(downstream))
}

/// The extra check for the XMPP link (`api = "xmpp"`, SPEC §8.2): v1's own
/// blocks (`android`, `apns`, `webpush`, `fcm_options`) cannot be sent over
/// XMPP, so a message holding one is refused with `INVALID_JSON` naming the
/// key. [`validate_downstream`] alone lets them through (they are unknown
/// keys to §3.2, kept in [`Downstream::extra`] and sent to CCS as they are):
/// call this too when the link is XMPP. `null` counts as absent; a value
/// that is not an object is not looked at (§3.2's rules judge the rest).
pub fn reject_v1_blocks(fcm_data: &Value) -> Result<(), Rejection> {
    let Value::Object(map) = fcm_data else {
        return Ok(());
    };
    match V1_BLOCK_KEYS
        .iter()
        .find(|k| map.get(**k).is_some_and(|v| !v.is_null()))
    {
        Some(key) => Err(Rejection::invalid_json(format!(
            "\"{key}\" is an FCM HTTP v1 block; the XMPP link (api = \"xmpp\") cannot send it"
        ))),
        None => Ok(()),
    }
}
