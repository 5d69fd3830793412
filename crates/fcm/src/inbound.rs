//! What CCS sends to the app server inside `<gcm>` (acks and nacks, table 3;
//! receipts, seed 000; upstream messages, table 5; control messages, table 7)
//! and the ack the app server sends back (table 6).

use std::borrow::Cow;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::ErrorCode;

/// `control_type` of the only control message FCM sends (table 7).
pub const CONNECTION_DRAINING: &str = "CONNECTION_DRAINING";
/// `message_status` of a delivery receipt for a delivered message.
pub const MESSAGE_SENT_TO_DEVICE: &str = "MESSAGE_SENT_TO_DEVICE";

/// CCS accepted a downstream message (table 3, `message_type` `ack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Registration token of the target device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The downstream message's id.
    pub message_id: String,
    /// Canonical registration token, when FCM wants the old one replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
}

/// CCS refused a downstream message (table 3, `message_type` `nack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// Registration token of the target device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The downstream message's id.
    pub message_id: String,
    /// Canonical registration token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// The error code (table 4). A nack without one (or with `null`) gets
    /// `ErrorCode::Unknown("")`, which is final.
    #[serde(default = "missing_error", deserialize_with = "de_error_code")]
    pub error: ErrorCode,
    /// Descriptive text for the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

fn missing_error() -> ErrorCode {
    ErrorCode::Unknown(String::new())
}

fn de_error_code<'de, D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
    Ok(Option::<ErrorCode>::deserialize(d)?.unwrap_or_else(missing_error))
}

/// A delivery receipt (seed 000, `message_type` `receipt`). It must be acked
/// with [`app_ack_json`]`(from, message_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Sender of the receipt (`gcm.googleapis.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The receipt's own id (e.g. `dr2:39`), to ack.
    pub message_id: String,
    /// The app's package name / bundle id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// What the receipt is about.
    pub data: ReceiptData,
    /// Usually `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_live: Option<u32>,
}

/// The `data` object of a [`Receipt`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptData {
    /// Id of the downstream message the receipt is for.
    pub original_message_id: String,
    /// E.g. [`MESSAGE_SENT_TO_DEVICE`].
    pub message_status: String,
    /// Registration token of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_registration_id: Option<String>,
    /// Milliseconds since the epoch, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_sent_timestamp: Option<String>,
    /// Other keys, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A control message (table 7, `message_type` `control`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// The kind of control message; only `CONNECTION_DRAINING` exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_type: Option<String>,
}

impl Control {
    /// A `CONNECTION_DRAINING` control message.
    pub fn connection_draining() -> Self {
        Control {
            control_type: Some(CONNECTION_DRAINING.to_owned()),
        }
    }

    /// `true` for `CONNECTION_DRAINING`: send nothing more on this connection.
    pub fn is_connection_draining(&self) -> bool {
        self.control_type.as_deref() == Some(CONNECTION_DRAINING)
    }
}

/// A message from a device (table 5; no `message_type`). It must be acked
/// with [`app_ack_json`]`(from, message_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// Registration token of the sending device.
    pub from: String,
    /// Package name / bundle id of the sending app (= BAL session id).
    pub category: String,
    /// Unique id of the message.
    pub message_id: String,
    /// Key/value payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// Time to live set by the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_live: Option<u32>,
    /// Other keys, kept as sent. [`Inbound::to_json`] leaves out a
    /// `message_type` key here, which would change the classification.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What CCS sends inside `<gcm>`, classified by `message_type` (absent means
/// an upstream message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `ack`.
    Ack(Ack),
    /// `nack`.
    Nack(Nack),
    /// `receipt`.
    Receipt(Receipt),
    /// `control`.
    Control(Control),
    /// No `message_type`.
    Upstream(Upstream),
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(default, borrow)]
    message_type: Option<Cow<'a, str>>,
}

/// Reads `message_type`, insisting on a JSON object (serde would also accept
/// an array for a struct).
fn probe(json: &str) -> Result<Probe<'_>, serde_json::Error> {
    if !json.trim_start().starts_with('{') {
        return Err(serde_json::Error::custom("expected a JSON object"));
    }
    serde_json::from_str(json)
}

/// Parses the JSON of one `<gcm>` element. `message_type` `ack`, `nack`,
/// `receipt` or `control` (ASCII case-insensitive) picks the variant; absent
/// (or `null`) means [`Inbound::Upstream`], which requires `from`, `category`
/// and `message_id`. Any other `message_type`, invalid JSON or missing
/// required fields give an error.
pub fn parse_inbound(json: &str) -> Result<Inbound, serde_json::Error> {
    let probe = probe(json)?;
    let Some(kind) = probe.message_type else {
        return serde_json::from_str(json).map(Inbound::Upstream);
    };
    if kind.eq_ignore_ascii_case("ack") {
        serde_json::from_str(json).map(Inbound::Ack)
    } else if kind.eq_ignore_ascii_case("nack") {
        serde_json::from_str(json).map(Inbound::Nack)
    } else if kind.eq_ignore_ascii_case("receipt") {
        serde_json::from_str(json).map(Inbound::Receipt)
    } else if kind.eq_ignore_ascii_case("control") {
        serde_json::from_str(json).map(Inbound::Control)
    } else {
        Err(serde_json::Error::custom(format!(
            "unknown message_type {:?}",
            kind.chars().take(64).collect::<String>()
        )))
    }
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    message_type: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// `Upstream` for output: `extra` without a `message_type` key.
#[derive(Serialize)]
struct UpstreamOut<'a> {
    from: &'a str,
    category: &'a str,
    message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_to_live: Option<u32>,
    #[serde(flatten)]
    extra: ExtraWithoutMessageType<'a>,
}

struct ExtraWithoutMessageType<'a>(&'a Map<String, Value>);

impl Serialize for ExtraWithoutMessageType<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().filter(|(k, _)| k.as_str() != "message_type"))
    }
}

impl Inbound {
    /// The `message_type` this variant is sent with; `None` for upstream.
    pub fn message_type(&self) -> Option<&'static str> {
        match self {
            Inbound::Ack(_) => Some("ack"),
            Inbound::Nack(_) => Some("nack"),
            Inbound::Receipt(_) => Some("receipt"),
            Inbound::Control(_) => Some("control"),
            Inbound::Upstream(_) => None,
        }
    }

    /// The message's `message_id`; `None` for control messages.
    pub fn message_id(&self) -> Option<&str> {
        match self {
            Inbound::Ack(a) => Some(&a.message_id),
            Inbound::Nack(n) => Some(&n.message_id),
            Inbound::Receipt(r) => Some(&r.message_id),
            Inbound::Control(_) => None,
            Inbound::Upstream(u) => Some(&u.message_id),
        }
    }

    /// Compact JSON as CCS would send it: with `message_type` (first) for
    /// ack, nack, receipt and control; without it for upstream.
    /// `parse_inbound(&x.to_json())` gives back `x`.
    pub fn to_json(&self) -> String {
        fn tagged<T: Serialize>(message_type: &'static str, body: &T) -> String {
            crate::json_string(&Tagged { message_type, body })
        }
        match self {
            Inbound::Ack(a) => tagged("ack", a),
            Inbound::Nack(n) => tagged("nack", n),
            Inbound::Receipt(r) => tagged("receipt", r),
            Inbound::Control(c) => tagged("control", c),
            Inbound::Upstream(u) => crate::json_string(&UpstreamOut {
                from: &u.from,
                category: &u.category,
                message_id: &u.message_id,
                data: u.data.as_ref(),
                time_to_live: u.time_to_live,
                extra: ExtraWithoutMessageType(&u.extra),
            }),
        }
    }
}

impl From<Ack> for Inbound {
    fn from(v: Ack) -> Self {
        Inbound::Ack(v)
    }
}

impl From<Nack> for Inbound {
    fn from(v: Nack) -> Self {
        Inbound::Nack(v)
    }
}

impl From<Receipt> for Inbound {
    fn from(v: Receipt) -> Self {
        Inbound::Receipt(v)
    }
}

impl From<Control> for Inbound {
    fn from(v: Control) -> Self {
        Inbound::Control(v)
    }
}

impl From<Upstream> for Inbound {
    fn from(v: Upstream) -> Self {
        Inbound::Upstream(v)
    }
}

/// The ack an app server sends for an upstream message or a receipt
/// (table 6): `{"to":..,"message_id":..,"message_type":"ack"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppAck {
    /// `from` of the acknowledged message.
    pub to: String,
    /// `message_id` of the acknowledged message.
    pub message_id: String,
}

#[derive(Serialize)]
struct AppAckOut<'a> {
    to: &'a str,
    message_id: &'a str,
    message_type: &'static str,
}

/// Builds the app server's ack for an upstream message or receipt (table 6):
/// `{"to":..,"message_id":..,"message_type":"ack"}`, JSON-escaped.
pub fn app_ack_json(to: &str, message_id: &str) -> String {
    crate::json_string(&AppAckOut {
        to,
        message_id,
        message_type: "ack",
    })
}

impl AppAck {
    /// The JSON of this ack, as [`app_ack_json`] builds it.
    pub fn to_json(&self) -> String {
        app_ack_json(&self.to, &self.message_id)
    }
}

/// Parses what an app server sent as an ack (the CCS side, e.g. the
/// emulator). Requires `message_type` `ack` (case-insensitive), `to` and
/// `message_id`; anything else is an error (CCS would answer `BAD_ACK`).
pub fn parse_app_ack(json: &str) -> Result<AppAck, serde_json::Error> {
    let probe = probe(json)?;
    match probe.message_type {
        Some(t) if t.eq_ignore_ascii_case("ack") => serde_json::from_str(json),
        _ => Err(serde_json::Error::custom("message_type is not \"ack\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ack_escapes() {
        let s = app_ack_json("a\"b\\c\u{1}", "m<1>&");
        assert_eq!(
            s,
            r#"{"to":"a\"b\\c\u0001","message_id":"m<1>&","message_type":"ack"}"#
        );
        let back = parse_app_ack(&s).unwrap();
        assert_eq!(back.to, "a\"b\\c\u{1}");
        assert_eq!(back.message_id, "m<1>&");
        assert_eq!(back.to_json(), s);
    }

    #[test]
    fn upstream_to_json_drops_message_type_from_extra() {
        let mut extra = Map::new();
        extra.insert("message_type".into(), Value::from("ack"));
        extra.insert("x".into(), Value::from(1));
        let u = Inbound::Upstream(Upstream {
            from: "f".into(),
            category: "c".into(),
            message_id: "m".into(),
            data: None,
            time_to_live: None,
            extra,
        });
        assert_eq!(
            u.to_json(),
            r#"{"from":"f","category":"c","message_id":"m","x":1}"#
        );
    }
}
