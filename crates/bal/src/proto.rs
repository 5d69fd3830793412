//! BAL protocol messages (SPEC §3), version 1.
//!
//! One compact JSON object per line; every object has `message_type`.
//! Unknown extra fields are ignored. Lines from the BAL are decoded with
//! [`FromBal::parse`], which distinguishes "not JSON" from "unknown type" so
//! the gateway can answer with the right [`BalError`] code.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
        }
    }
}

impl std::fmt::Display for BalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
            FromBal::Ack { sequence_id } => {
                f.debug_struct("Ack").field("sequence_id", sequence_id).finish()
            }
            FromBal::Ping => f.write_str("Ping"),
        }
    }
}

impl FromBal {
    /// Decodes one line. The error carries the SPEC §3.4 code and a description.
    pub fn parse(line: &[u8]) -> Result<FromBal, (BalError, String)> {
        #[derive(Deserialize)]
        struct Probe<'a> {
            #[serde(borrow, default)]
            message_type: Option<std::borrow::Cow<'a, str>>,
        }
        let probe: Probe<'_> = serde_json::from_slice(line)
            .map_err(|e| (BalError::InvalidJson, format!("not a JSON object: {e}")))?;
        match probe.message_type.as_deref() {
            Some("LOGON" | "DOWNSTREAM" | "ACK" | "PING") => serde_json::from_slice(line)
                .map_err(|e| (BalError::InvalidJson, format!("bad fields: {e}"))),
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

/// A message gimmm sends to a BAL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
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
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            // Serialization of these plain structs cannot fail; keep a valid line anyway.
            r#"{"message_type":"ERROR","error":"INVALID_JSON"}"#.to_string()
        });
        s.push('\n');
        s
    }

    /// A protocol error line.
    pub fn error(error: BalError, description: impl Into<String>) -> ToBal {
        ToBal::Error {
            error,
            error_description: description.into(),
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
            FromBal::parse(br#"{"message_type":"NOPE"}"#).err().map(|e| e.0),
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
            },
            ToBal::DownstreamReject {
                sequence_id: 3,
                session_id: "s".into(),
                message_id: "m".into(),
                error: "EXPIRED".into(),
                error_description: "ttl".into(),
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
}
