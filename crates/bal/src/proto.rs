//! BAL protocol messages (SPEC §3), version 1.
//!
//! One compact JSON object per line; every object has `message_type`.
//! Unknown extra fields are ignored. Lines from the BAL are decoded with
//! [`FromBal::parse`], which distinguishes "not JSON" from "unknown type" so
//! the gateway can answer with the right [`BalError`] code.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

/// Error codes of SPEC §3.4, sent in `{"message_type":"ERROR",...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BalError {
    /// The line is not a JSON object, or a field has the wrong type.
    InvalidJson,
    /// `message_type` is missing or not one gimmm knows.
    UnknownMessageType,
    /// Anything but LOGON before a successful LOGON.
    NotLoggedOn,
    /// The line is longer than `bal.max_line_bytes`; the connection is closed.
    LineTooLong,
    /// An ACK names a `sequence_id` that is not outstanding on this session.
    UnknownSequenceId,
    /// Another connection logged on with this session id; this one is closed.
    SessionTakenOver,
    /// gimmm could not store the message (disk full, read-only store ...).
    StoreUnavailable,
    /// gimmm is shutting down: the message was not taken; send it again
    /// after the restart (or to another gateway).
    ShuttingDown,
}

impl BalError {
    /// The wire form, e.g. `"INVALID_JSON"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BalError::InvalidJson => "INVALID_JSON",
            BalError::UnknownMessageType => "UNKNOWN_MESSAGE_TYPE",
            BalError::NotLoggedOn => "NOT_LOGGED_ON",
            BalError::LineTooLong => "LINE_TOO_LONG",
            BalError::UnknownSequenceId => "UNKNOWN_SEQUENCE_ID",
            BalError::SessionTakenOver => "SESSION_TAKEN_OVER",
            BalError::StoreUnavailable => "STORE_UNAVAILABLE",
            BalError::ShuttingDown => "SHUTTING_DOWN",
        }
    }
}

impl std::fmt::Display for BalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parser error, worded for a BAL: nesting beyond the parser's limit is
/// said as such (serde_json calls it a "recursion limit").
fn explain(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.strip_prefix("recursion limit exceeded") {
        Some(rest) => format!(
            "JSON nested deeper than {} levels, the parser's limit{rest}",
            MAX_NESTING
        ),
        None => msg,
    }
}

/// How deep a BAL line may nest (serde_json's recursion limit).
pub const MAX_NESTING: usize = 128;

/// A message a BAL sends to gimmm.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "message_type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FromBal {
    /// The first line of every connection.
    Logon {
        /// The session (= FCM category) to log on to.
        session_id: String,
        /// The shared secret of that session.
        token: String,
    },
    /// A message to send to FCM.
    Downstream {
        /// Messages with the same group are sent strictly in order.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_id: Option<String>,
        /// FCM's downstream JSON (seed table 1).
        fcm_data: Value,
    },
    /// Acknowledges one sequenced message.
    Ack {
        /// The `sequence_id` being acknowledged.
        sequence_id: u64,
    },
    /// Liveness check, answered with PONG.
    Ping,
}

impl std::fmt::Debug for FromBal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The token is a secret: never print it.
            FromBal::Logon { session_id, .. } => f
                .debug_struct("Logon")
                .field("session_id", session_id)
                .field("token", &"<redacted>")
                .finish(),
            FromBal::Downstream { group_id, fcm_data } => f
                .debug_struct("Downstream")
                .field("group_id", group_id)
                .field("fcm_data", fcm_data)
                .finish(),
            FromBal::Ack { sequence_id } => f
                .debug_struct("Ack")
                .field("sequence_id", sequence_id)
                .finish(),
            FromBal::Ping => f.write_str("Ping"),
        }
    }
}

impl FromBal {
    /// Decodes one line. The error carries the SPEC §3.4 code and a description.
    pub fn parse(line: &[u8]) -> Result<FromBal, (BalError, String)> {
        Ok(match FromBalRef::parse(line)? {
            FromBalRef::Logon { session_id, token } => FromBal::Logon {
                session_id: session_id.into_owned(),
                token: token.into_owned(),
            },
            FromBalRef::Downstream { group_id, fcm_data } => FromBal::Downstream {
                group_id: group_id.map(Cow::into_owned),
                fcm_data: serde_json::from_str(fcm_data.get()).map_err(|e| {
                    (
                        BalError::InvalidJson,
                        format!("bad fields: {}", explain(&e)),
                    )
                })?,
            },
            FromBalRef::Ack { sequence_id } => FromBal::Ack { sequence_id },
            FromBalRef::Ping => FromBal::Ping,
        })
    }

    /// The original two-pass decoder (a probe for `message_type`, then the
    /// whole line); it decides the error code when the fast path fails.
    fn parse_slow(line: &[u8]) -> Result<FromBal, (BalError, String)> {
        #[derive(Deserialize)]
        struct Probe<'a> {
            #[serde(borrow, default)]
            message_type: Option<Cow<'a, str>>,
        }
        let probe: Probe<'_> = serde_json::from_slice(line).map_err(|e| {
            (
                BalError::InvalidJson,
                format!("not a JSON object: {}", explain(&e)),
            )
        })?;
        match probe.message_type.as_deref() {
            Some("LOGON" | "DOWNSTREAM" | "ACK" | "PING") => {
                serde_json::from_slice(line).map_err(|e| {
                    (
                        BalError::InvalidJson,
                        format!("bad fields: {}", explain(&e)),
                    )
                })
            }
            Some(other) => Err((
                BalError::UnknownMessageType,
                format!("unknown message_type {other:?}"),
            )),
            None => Err((
                BalError::UnknownMessageType,
                "missing message_type".to_string(),
            )),
        }
    }
}

/// A line from a BAL decoded in one pass without copying: `fcm_data` stays
/// the JSON text the BAL sent. This is the gateway's hot path;
/// [`FromBal::parse`] gives the same answers (and the same errors) as owned
/// values.
pub enum FromBalRef<'a> {
    /// See [`FromBal::Logon`].
    Logon {
        /// The session.
        session_id: Cow<'a, str>,
        /// Its secret.
        token: Cow<'a, str>,
    },
    /// See [`FromBal::Downstream`].
    Downstream {
        /// Ordering group.
        group_id: Option<Cow<'a, str>>,
        /// FCM's downstream JSON, as sent (any JSON value: validation decides).
        fcm_data: Cow<'a, RawValue>,
    },
    /// See [`FromBal::Ack`].
    Ack {
        /// The sequence id.
        sequence_id: u64,
    },
    /// See [`FromBal::Ping`].
    Ping,
}

impl std::fmt::Debug for FromBalRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The token is a secret: never print it.
            FromBalRef::Logon { session_id, .. } => f
                .debug_struct("Logon")
                .field("session_id", session_id)
                .field("token", &"<redacted>")
                .finish(),
            FromBalRef::Downstream { group_id, fcm_data } => f
                .debug_struct("Downstream")
                .field("group_id", group_id)
                .field("fcm_data", &fcm_data.get())
                .finish(),
            FromBalRef::Ack { sequence_id } => f
                .debug_struct("Ack")
                .field("sequence_id", sequence_id)
                .finish(),
            FromBalRef::Ping => f.write_str("Ping"),
        }
    }
}

/// A present field, `null` included (`Option<&RawValue>` would read `null`
/// as absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

impl<'a> FromBalRef<'a> {
    /// Decodes one line. Errors carry the SPEC §3.4 code and a description,
    /// exactly as [`FromBal::parse`].
    pub fn parse(line: &'a [u8]) -> Result<FromBalRef<'a>, (BalError, String)> {
        #[derive(Deserialize)]
        struct Fields<'a> {
            #[serde(borrow, default)]
            message_type: Option<Cow<'a, str>>,
            #[serde(borrow, default, deserialize_with = "present")]
            session_id: Option<&'a RawValue>,
            #[serde(borrow, default, deserialize_with = "present")]
            token: Option<&'a RawValue>,
            #[serde(borrow, default, deserialize_with = "present")]
            group_id: Option<&'a RawValue>,
            #[serde(borrow, default, deserialize_with = "present")]
            fcm_data: Option<&'a RawValue>,
            #[serde(borrow, default, deserialize_with = "present")]
            sequence_id: Option<&'a RawValue>,
        }
        fn field<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
            serde_json::from_str(raw?.get()).ok()
        }
        // Fast path: an object with well-typed fields. Anything else goes
        // through the original decoder, which picks the error code.
        let is_object = line
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        let fields = match is_object.then(|| serde_json::from_slice::<Fields<'a>>(line)) {
            Some(Ok(f)) => f,
            _ => return FromBalRef::parse_slow(line),
        };
        let decoded = match fields.message_type.as_deref() {
            Some("LOGON") => match (field(fields.session_id), field(fields.token)) {
                (Some(session_id), Some(token)) => Some(FromBalRef::Logon { session_id, token }),
                _ => None,
            },
            Some("DOWNSTREAM") => {
                let group_id = match fields.group_id {
                    None => Some(None),
                    Some(raw) => serde_json::from_str::<Option<Cow<'a, str>>>(raw.get()).ok(),
                };
                match (group_id, fields.fcm_data) {
                    (Some(group_id), Some(fcm_data)) => Some(FromBalRef::Downstream {
                        group_id,
                        fcm_data: Cow::Borrowed(fcm_data),
                    }),
                    _ => None,
                }
            }
            Some("ACK") => {
                field(fields.sequence_id).map(|sequence_id| FromBalRef::Ack { sequence_id })
            }
            Some("PING") => Some(FromBalRef::Ping),
            _ => None,
        };
        match decoded {
            Some(d) => Ok(d),
            None => FromBalRef::parse_slow(line),
        }
    }

    /// Lines the fast path does not take (errors, odd but valid lines such
    /// as repeated keys) get the original decoder's answer.
    fn parse_slow(line: &[u8]) -> Result<FromBalRef<'a>, (BalError, String)> {
        Ok(match FromBal::parse_slow(line)? {
            FromBal::Logon { session_id, token } => FromBalRef::Logon {
                session_id: Cow::Owned(session_id),
                token: Cow::Owned(token),
            },
            FromBal::Downstream { group_id, fcm_data } => FromBalRef::Downstream {
                group_id: group_id.map(Cow::Owned),
                fcm_data: Cow::Owned(
                    serde_json::value::to_raw_value(&fcm_data)
                        .map_err(|e| (BalError::InvalidJson, format!("bad fields: {e}")))?,
                ),
            },
            FromBal::Ack { sequence_id } => FromBalRef::Ack { sequence_id },
            FromBal::Ping => FromBalRef::Ping,
        })
    }
}

/// A message gimmm sends to a BAL. Decoded with serde; encoded by
/// [`line`], the one encoder of BAL lines ([`ToBal::to_line`] goes through
/// it too).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "message_type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ToBal {
    /// Answer to LOGON.
    LogonResponse {
        /// The session asked for.
        session_id: String,
        /// `SUCCESS` or `FAILURE`.
        status: String,
        /// Why it failed (never which part of the credentials was wrong).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_description: Option<String>,
    },
    /// The message is stored durably; a final result will follow.
    DownstreamAccepted {
        /// The message id (generated by gimmm when the BAL gave none).
        message_id: String,
        /// True when this session already sent this message id.
        #[serde(default)]
        duplicate: bool,
        /// Something the BAL should know about this message (e.g. that the
        /// link gives no delivery receipts).
        #[serde(default)]
        warning: Option<String>,
    },
    /// A device sent a message (sequenced).
    Upstream {
        /// Sequence number to ACK.
        sequence_id: u64,
        /// Session (= category).
        session_id: String,
        /// The upstream JSON.
        fcm_data: Value,
    },
    /// FCM acked a downstream message (sequenced, final).
    DownstreamAck {
        /// Sequence number to ACK.
        sequence_id: u64,
        /// Session that sent the message.
        session_id: String,
        /// The message id.
        message_id: String,
        /// FCM's ack JSON.
        fcm_data: Value,
    },
    /// The message will not be delivered (sequenced, final).
    DownstreamReject {
        /// Sequence number to ACK.
        sequence_id: u64,
        /// Session that sent the message.
        session_id: String,
        /// The message id.
        message_id: String,
        /// FCM error code, or `MAX_RETRIES` / `EXPIRED`.
        error: String,
        /// Human-readable detail.
        #[serde(default)]
        error_description: String,
        /// The FCM HTTP v1 `errorCode` (HTTP v1 link only; may be null).
        #[serde(default)]
        fcm_error: Option<String>,
        /// The HTTP status FCM answered (HTTP v1 link only).
        #[serde(default)]
        http_status: Option<u16>,
        /// The original downstream JSON.
        fcm_data: Value,
    },
    /// FCM delivered a receipt for a downstream message (sequenced).
    DownstreamReceipt {
        /// Sequence number to ACK.
        sequence_id: u64,
        /// Session that sent the original message.
        session_id: String,
        /// The original message id.
        message_id: String,
        /// The receipt JSON.
        fcm_data: Value,
    },
    /// A protocol error (SPEC §3.4).
    Error {
        /// The code.
        error: BalError,
        /// Detail.
        #[serde(default)]
        error_description: String,
    },
    /// Answer to PING.
    Pong,
}

impl ToBal {
    /// The `sequence_id` of a sequenced message.
    pub fn sequence_id(&self) -> Option<u64> {
        match self {
            ToBal::Upstream { sequence_id, .. }
            | ToBal::DownstreamAck { sequence_id, .. }
            | ToBal::DownstreamReject { sequence_id, .. }
            | ToBal::DownstreamReceipt { sequence_id, .. } => Some(*sequence_id),
            _ => None,
        }
    }

    /// True for the final results of a downstream message.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ToBal::DownstreamAck { .. } | ToBal::DownstreamReject { .. }
        )
    }

    /// The message id of a downstream result, receipt or acceptance.
    pub fn message_id(&self) -> Option<&str> {
        match self {
            ToBal::DownstreamAccepted { message_id, .. }
            | ToBal::DownstreamAck { message_id, .. }
            | ToBal::DownstreamReject { message_id, .. }
            | ToBal::DownstreamReceipt { message_id, .. } => Some(message_id),
            _ => None,
        }
    }

    /// One compact JSON line with its `\n`.
    pub fn to_line(&self) -> String {
        let mut s = self.encode();
        s.push('\n');
        s
    }

    /// One compact JSON line without newline ([`line::encode`]).
    pub fn encode(&self) -> String {
        line::encode(self)
    }

    /// A protocol error line.
    pub fn error(error: BalError, description: impl Into<String>) -> ToBal {
        ToBal::Error {
            error,
            error_description: description.into(),
        }
    }
}

/// The one encoder of BAL lines (SPEC §3): every line gimmm writes to a BAL
/// is built here, directly as text, without going through
/// `serde_json::Value` (so without parsing and re-serializing `fcm_data`,
/// the gateway's hot path). Each function returns one compact JSON object
/// without the newline; `fcm_data` is spliced in as given and must be one
/// valid JSON value (line breaks in it, which JSON allows only as
/// whitespace, become spaces). [`encode`] writes any [`ToBal`] with them.
pub mod line {
    use super::{BalError, ToBal};

    /// Appends `s` as a JSON string literal, escaped as `serde_json` does.
    pub fn push_str(out: &mut String, s: &str) {
        out.push('"');
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            out.push_str(&s[start..i]);
            if esc.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            } else {
                out.push_str(esc);
            }
            start = i + 1;
        }
        out.push_str(&s[start..]);
        out.push('"');
    }

    /// Appends a JSON value given as text, keeping it on one line.
    pub fn push_raw(out: &mut String, json: &str) {
        if json.bytes().any(|b| b == b'\n' || b == b'\r') {
            out.extend(
                json.chars()
                    .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
            );
        } else {
            out.push_str(json);
        }
    }

    fn push_u64(out: &mut String, n: u64) {
        use std::fmt::Write;
        let _ = write!(out, "{n}");
    }

    fn field_str(out: &mut String, key: &str, value: &str) {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        push_str(out, value);
    }

    /// `{"message_type":"DOWNSTREAM_ACCEPTED","message_id":..[,"duplicate":true][,"warning":..]}`
    pub fn downstream_accepted(message_id: &str, duplicate: bool, warning: Option<&str>) -> String {
        let mut out = String::with_capacity(64 + message_id.len());
        out.push_str("{\"message_type\":\"DOWNSTREAM_ACCEPTED\",\"message_id\":");
        push_str(&mut out, message_id);
        if duplicate {
            out.push_str(",\"duplicate\":true");
        }
        if let Some(w) = warning {
            field_str(&mut out, "warning", w);
        }
        out.push('}');
        out
    }

    fn head(kind: &str, sequence_id: u64, session_id: &str, extra: usize) -> String {
        let mut out = String::with_capacity(96 + session_id.len() + extra);
        out.push_str("{\"message_type\":\"");
        out.push_str(kind);
        out.push_str("\",\"sequence_id\":");
        push_u64(&mut out, sequence_id);
        out.push_str(",\"session_id\":");
        push_str(&mut out, session_id);
        out
    }

    /// `{"message_type":"DOWNSTREAM_ACK","sequence_id":..,"session_id":..,"message_id":..,"fcm_data":..}`
    pub fn downstream_ack(
        sequence_id: u64,
        session_id: &str,
        message_id: &str,
        fcm_data: &str,
    ) -> String {
        with_message_id(
            "DOWNSTREAM_ACK",
            sequence_id,
            session_id,
            message_id,
            fcm_data,
        )
    }

    /// `{"message_type":"DOWNSTREAM_RECEIPT","sequence_id":..,"session_id":..,"message_id":..,"fcm_data":..}`
    pub fn downstream_receipt(
        sequence_id: u64,
        session_id: &str,
        message_id: &str,
        fcm_data: &str,
    ) -> String {
        with_message_id(
            "DOWNSTREAM_RECEIPT",
            sequence_id,
            session_id,
            message_id,
            fcm_data,
        )
    }

    /// The HTTP details of a REJECT from the FCM HTTP v1 link.
    #[derive(Debug, Clone, Copy)]
    pub struct HttpFields<'a> {
        /// v1 `errorCode` (written as null when absent).
        pub fcm_error: Option<&'a str>,
        /// HTTP status.
        pub http_status: u16,
    }

    /// `{"message_type":"DOWNSTREAM_REJECT","sequence_id":..,"session_id":..,"message_id":..,"error":..,"error_description":..[,"fcm_error":..,"http_status":..],"fcm_data":..}`
    pub fn downstream_reject(
        sequence_id: u64,
        session_id: &str,
        message_id: &str,
        error: &str,
        error_description: &str,
        http: Option<HttpFields<'_>>,
        fcm_data: &str,
    ) -> String {
        let mut out = head(
            "DOWNSTREAM_REJECT",
            sequence_id,
            session_id,
            message_id.len() + error_description.len() + fcm_data.len() + 48,
        );
        field_str(&mut out, "message_id", message_id);
        field_str(&mut out, "error", error);
        field_str(&mut out, "error_description", error_description);
        if let Some(h) = http {
            match h.fcm_error {
                Some(e) => field_str(&mut out, "fcm_error", e),
                None => out.push_str(",\"fcm_error\":null"),
            }
            out.push_str(",\"http_status\":");
            push_u64(&mut out, u64::from(h.http_status));
        }
        out.push_str(",\"fcm_data\":");
        push_raw(&mut out, fcm_data);
        out.push('}');
        out
    }

    /// A sequenced line of `kind` carrying a message id and raw `fcm_data`.
    fn with_message_id(
        kind: &str,
        sequence_id: u64,
        session_id: &str,
        message_id: &str,
        fcm_data: &str,
    ) -> String {
        let mut out = head(
            kind,
            sequence_id,
            session_id,
            message_id.len() + fcm_data.len(),
        );
        field_str(&mut out, "message_id", message_id);
        out.push_str(",\"fcm_data\":");
        push_raw(&mut out, fcm_data);
        out.push('}');
        out
    }

    /// `{"message_type":"UPSTREAM","sequence_id":..,"session_id":..,"fcm_data":..}`
    pub fn upstream(sequence_id: u64, session_id: &str, fcm_data: &str) -> String {
        let mut out = head("UPSTREAM", sequence_id, session_id, fcm_data.len());
        out.push_str(",\"fcm_data\":");
        push_raw(&mut out, fcm_data);
        out.push('}');
        out
    }

    /// `{"message_type":"LOGON_RESPONSE","session_id":..,"status":"SUCCESS"}` or
    /// `..."status":"FAILURE","error_description":..}`
    pub fn logon_response(session_id: &str, failure: Option<&str>) -> String {
        let mut out = String::with_capacity(96 + session_id.len());
        out.push_str("{\"message_type\":\"LOGON_RESPONSE\"");
        field_str(&mut out, "session_id", session_id);
        match failure {
            None => out.push_str(",\"status\":\"SUCCESS\""),
            Some(why) => {
                out.push_str(",\"status\":\"FAILURE\"");
                field_str(&mut out, "error_description", why);
            }
        }
        out.push('}');
        out
    }

    /// `{"message_type":"ERROR","error":..,"error_description":..}`
    pub fn error(code: BalError, description: &str) -> String {
        let mut out = String::with_capacity(64 + description.len());
        out.push_str("{\"message_type\":\"ERROR\"");
        field_str(&mut out, "error", code.as_str());
        field_str(&mut out, "error_description", description);
        out.push('}');
        out
    }

    /// `{"message_type":"PONG"}`
    pub fn pong() -> String {
        "{\"message_type\":\"PONG\"}".to_string()
    }

    fn json(v: &serde_json::Value) -> String {
        // A Value holds no NaN and only string keys: this cannot fail.
        serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
    }

    /// Any [`ToBal`] as one line without newline.
    pub fn encode(m: &ToBal) -> String {
        match m {
            ToBal::LogonResponse {
                session_id,
                status,
                error_description,
            } => {
                if status == "SUCCESS" {
                    logon_response(session_id, None)
                } else {
                    logon_response(session_id, Some(error_description.as_deref().unwrap_or("")))
                }
            }
            ToBal::DownstreamAccepted {
                message_id,
                duplicate,
                warning,
            } => downstream_accepted(message_id, *duplicate, warning.as_deref()),
            ToBal::Upstream {
                sequence_id,
                session_id,
                fcm_data,
            } => upstream(*sequence_id, session_id, &json(fcm_data)),
            ToBal::DownstreamAck {
                sequence_id,
                session_id,
                message_id,
                fcm_data,
            } => downstream_ack(*sequence_id, session_id, message_id, &json(fcm_data)),
            ToBal::DownstreamReject {
                sequence_id,
                session_id,
                message_id,
                error,
                error_description,
                fcm_error,
                http_status,
                fcm_data,
            } => downstream_reject(
                *sequence_id,
                session_id,
                message_id,
                error,
                error_description,
                http_status.map(|http_status| HttpFields {
                    fcm_error: fcm_error.as_deref(),
                    http_status,
                }),
                &json(fcm_data),
            ),
            ToBal::DownstreamReceipt {
                sequence_id,
                session_id,
                message_id,
                fcm_data,
            } => downstream_receipt(*sequence_id, session_id, message_id, &json(fcm_data)),
            ToBal::Error {
                error: code,
                error_description,
            } => error(*code, error_description),
            ToBal::Pong => pong(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_message_type() {
        let l = FromBal::parse(br#"{"message_type":"LOGON","session_id":"a","token":"t","x":1}"#);
        assert!(matches!(l, Ok(FromBal::Logon { .. })));
        let d = FromBal::parse(br#"{"message_type":"DOWNSTREAM","fcm_data":{"to":"x"}}"#);
        assert!(matches!(d, Ok(FromBal::Downstream { group_id: None, .. })));
        let a = FromBal::parse(br#"{"message_type":"ACK","sequence_id":7}"#);
        assert_eq!(a.ok(), Some(FromBal::Ack { sequence_id: 7 }));
        assert_eq!(
            FromBal::parse(br#"{"message_type":"PING"}"#).ok(),
            Some(FromBal::Ping)
        );
    }

    #[test]
    fn error_codes_for_bad_lines() {
        assert_eq!(
            FromBal::parse(b"not json").err().map(|e| e.0),
            Some(BalError::InvalidJson)
        );
        assert_eq!(
            FromBal::parse(br#"{"message_type":"NOPE"}"#)
                .err()
                .map(|e| e.0),
            Some(BalError::UnknownMessageType)
        );
        assert_eq!(
            FromBal::parse(br#"{"x":1}"#).err().map(|e| e.0),
            Some(BalError::UnknownMessageType)
        );
        assert_eq!(
            FromBal::parse(br#"{"message_type":"ACK","sequence_id":"x"}"#)
                .err()
                .map(|e| e.0),
            Some(BalError::InvalidJson)
        );
    }

    #[test]
    fn nesting_beyond_the_limit_says_so() {
        // (Fields gimmm does not read are skipped, however deep.)
        let deep = format!(
            r#"{{"message_type":"DOWNSTREAM","fcm_data":{{"to":"t","x":{}{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let (code, desc) = FromBal::parse(deep.as_bytes()).unwrap_err();
        assert_eq!(code, BalError::InvalidJson);
        assert!(desc.contains("nested deeper than 128 levels"), "{desc}");
    }

    #[test]
    fn logon_debug_hides_token() {
        let l = FromBal::Logon {
            session_id: "s".into(),
            token: "hunter2".into(),
        };
        assert!(!format!("{l:?}").contains("hunter2"));
    }

    #[test]
    fn to_bal_lines_round_trip() {
        let msgs = vec![
            ToBal::DownstreamAccepted {
                message_id: "m".into(),
                duplicate: true,
                warning: None,
            },
            ToBal::DownstreamReject {
                sequence_id: 3,
                session_id: "s".into(),
                message_id: "m".into(),
                error: "EXPIRED".into(),
                error_description: "ttl".into(),
                fcm_error: None,
                http_status: None,
                fcm_data: serde_json::json!({"to":"x"}),
            },
            ToBal::error(BalError::LineTooLong, "too long"),
            ToBal::Pong,
        ];
        for m in msgs {
            let line = m.to_line();
            assert!(line.ends_with('\n'));
            let back: ToBal = serde_json::from_str(line.trim_end()).unwrap();
            assert_eq!(back, m);
        }
        assert_eq!(
            ToBal::Pong.to_line(),
            "{\"message_type\":\"PONG\"}\n".to_string()
        );
    }

    /// The one-pass decoder agrees with the original two-pass one, answers
    /// and error codes alike.
    #[test]
    fn fast_decoder_agrees_with_the_original() {
        let lines: &[&[u8]] = &[
            br#"{"message_type":"LOGON","session_id":"a","token":"t","x":1}"#,
            br#"{"message_type":"LOGON","session_id":"a\u0041","token":"t"}"#,
            br#"{"message_type":"LOGON","session_id":"a"}"#,
            br#"{"message_type":"LOGON","session_id":5,"token":"t"}"#,
            br#"{"message_type":"DOWNSTREAM","fcm_data":{"to":"x","data":{"a":"b"}}}"#,
            br#"{"message_type":"DOWNSTREAM","group_id":"g","fcm_data":{"to":"x"}}"#,
            br#"{"message_type":"DOWNSTREAM","group_id":null,"fcm_data":{"to":"x"}}"#,
            br#"{"message_type":"DOWNSTREAM","group_id":7,"fcm_data":{"to":"x"}}"#,
            br#"{"message_type":"DOWNSTREAM","fcm_data":null}"#,
            br#"{"message_type":"DOWNSTREAM","fcm_data":[1,2]}"#,
            br#"{"message_type":"DOWNSTREAM"}"#,
            br#"{"message_type":"ACK","sequence_id":7}"#,
            br#"{"message_type":"ACK","sequence_id":"x"}"#,
            br#"{"message_type":"ACK","sequence_id":-1}"#,
            br#"{"message_type":"ACK"}"#,
            br#"{"message_type":"PING","token":1,"token":2}"#,
            br#"{"message_type":"PING"}"#,
            br#"{"message_type":"PING","sequence_id":"x"}"#,
            br#"{"message_type":"NOPE"}"#,
            br#"{"message_type":null}"#,
            br#"{"message_type":5}"#,
            br#"{"x":1}"#,
            br#"["LOGON","a","t",null,null,null]"#,
            br#"  {"message_type":"ACK","sequence_id":1}  "#,
            b"not json",
            b"",
            b"{",
        ];
        for line in lines {
            let fast = FromBal::parse(line);
            let slow = FromBal::parse_slow(line);
            assert_eq!(
                fast.as_ref().map_err(|e| e.0),
                slow.as_ref().map_err(|e| e.0),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        // fcm_data stays the text the BAL sent.
        let l = br#"{"message_type":"DOWNSTREAM","fcm_data":{"to":"x", "b":1}}"#;
        match FromBalRef::parse(l) {
            Ok(FromBalRef::Downstream { fcm_data, .. }) => {
                assert_eq!(fcm_data.get(), r#"{"to":"x", "b":1}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    /// The encoder writes what serde_json would (strings escaped the same
    /// way), every line decodes back to the message it encodes, and raw
    /// `fcm_data` is spliced in unchanged.
    #[test]
    fn encoder_matches_serde_json() {
        let weird = "a\"b\\c\nd\u{1}\u{8}\u{c}\té/\u{7f}";
        let mut esc = String::new();
        line::push_str(&mut esc, weird);
        assert_eq!(esc, serde_json::to_string(weird).unwrap());
        let data = serde_json::json!({"from":"tok","message_id":weird,"message_type":"ack"});
        let raw = data.to_string();
        let cases = [
            (
                line::downstream_accepted(weird, false, None),
                serde_json::json!({"message_type":"DOWNSTREAM_ACCEPTED","message_id":weird}),
            ),
            (
                line::downstream_accepted("m", true, Some("w")),
                serde_json::json!({"message_type":"DOWNSTREAM_ACCEPTED","message_id":"m","duplicate":true,"warning":"w"}),
            ),
            (
                line::downstream_ack(u64::MAX, weird, weird, &raw),
                serde_json::json!({"message_type":"DOWNSTREAM_ACK","sequence_id":u64::MAX,"session_id":weird,"message_id":weird,"fcm_data":data}),
            ),
            (
                line::downstream_receipt(3, "s", "m", &raw),
                serde_json::json!({"message_type":"DOWNSTREAM_RECEIPT","sequence_id":3,"session_id":"s","message_id":"m","fcm_data":data}),
            ),
            (
                line::upstream(4, "s", &raw),
                serde_json::json!({"message_type":"UPSTREAM","sequence_id":4,"session_id":"s","fcm_data":data}),
            ),
            (
                line::downstream_reject(5, "s", "m", "EXPIRED", weird, None, &raw),
                serde_json::json!({"message_type":"DOWNSTREAM_REJECT","sequence_id":5,"session_id":"s","message_id":"m","error":"EXPIRED","error_description":weird,"fcm_data":data}),
            ),
            (
                line::downstream_reject(
                    6,
                    "s",
                    "m",
                    "DEVICE_UNREGISTERED",
                    "gone",
                    Some(line::HttpFields {
                        fcm_error: Some("UNREGISTERED"),
                        http_status: 404,
                    }),
                    &raw,
                ),
                serde_json::json!({"message_type":"DOWNSTREAM_REJECT","sequence_id":6,"session_id":"s","message_id":"m","error":"DEVICE_UNREGISTERED","error_description":"gone","fcm_error":"UNREGISTERED","http_status":404,"fcm_data":data}),
            ),
            (
                line::downstream_reject(
                    7,
                    "s",
                    "m",
                    "HTTP_418",
                    "",
                    Some(line::HttpFields {
                        fcm_error: None,
                        http_status: 418,
                    }),
                    &raw,
                ),
                serde_json::json!({"message_type":"DOWNSTREAM_REJECT","sequence_id":7,"session_id":"s","message_id":"m","error":"HTTP_418","error_description":"","fcm_error":null,"http_status":418,"fcm_data":data}),
            ),
            (
                line::logon_response("s", None),
                serde_json::json!({"message_type":"LOGON_RESPONSE","session_id":"s","status":"SUCCESS"}),
            ),
            (
                line::logon_response("s", Some("no")),
                serde_json::json!({"message_type":"LOGON_RESPONSE","session_id":"s","status":"FAILURE","error_description":"no"}),
            ),
            (
                line::error(BalError::SessionTakenOver, weird),
                serde_json::json!({"message_type":"ERROR","error":"SESSION_TAKEN_OVER","error_description":weird}),
            ),
            (line::pong(), serde_json::json!({"message_type":"PONG"})),
        ];
        for (built, expected) in cases {
            assert!(!built.contains('\n'), "{built}");
            let v: serde_json::Value = serde_json::from_str(&built).unwrap();
            assert_eq!(v, expected, "{built}");
            let m: ToBal = serde_json::from_str(&built).unwrap();
            assert_eq!(m.encode(), built, "encode(decode(line)) is the line");
        }
        // Pretty-printed fcm_data stays on one line and means the same.
        let pretty = serde_json::to_string_pretty(&data).unwrap();
        let l = line::upstream(5, "s", &pretty);
        assert!(!l.contains('\n') && !l.contains('\r'));
        let back: ToBal = serde_json::from_str(&l).unwrap();
        assert_eq!(
            back,
            ToBal::Upstream {
                sequence_id: 5,
                session_id: "s".into(),
                fcm_data: data
            }
        );
    }
}
