//! FCM's downstream error codes (seed 004, table 4), how gimmm reacts to each
//! (SPEC §4), and [`Rejection`], the outcome of a failed validation.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An error code from the `error` field of a CCS nack (seed 004, table 4).
///
/// Codes the seeds do not list are kept verbatim in [`ErrorCode::Unknown`], so
/// nothing FCM says is lost. Serializes and deserializes as the plain string
/// (`"BAD_REGISTRATION"`); [`fmt::Display`] prints the same string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `INVALID_JSON`: malformed message, missing token, bad field type or value,
    /// message too big, reserved data key, invalid time to live.
    InvalidJson,
    /// `BAD_REGISTRATION`: the registration token is not well formed.
    BadRegistration,
    /// `DEVICE_UNREGISTERED`: the token is no longer valid; stop using it.
    DeviceUnregistered,
    /// `SENDER_ID_MISMATCH`: the token belongs to another sender.
    SenderIdMismatch,
    /// `BAD_ACK`: an ack sent to CCS was malformed.
    BadAck,
    /// `SERVICE_UNAVAILABLE`: timeout in CCS; retry with exponential backoff.
    ServiceUnavailable,
    /// `INTERNAL_SERVER_ERROR`: CCS failed; retry with exponential backoff.
    InternalServerError,
    /// `DEVICE_MESSAGE_RATE_EXCEEDED`: too many messages to one device.
    DeviceMessageRateExceeded,
    /// `TOPICS_MESSAGE_RATE_EXCEEDED`: too many messages to one topic.
    TopicsMessageRateExceeded,
    /// `CONNECTION_DRAINING`: the connection is draining; resend on another one.
    ConnectionDraining,
    /// `INVALID_APNS_CREDENTIAL`: the APNs authentication key is missing or expired.
    InvalidApnsCredential,
    /// `AUTHENTICATION_FAILED`: authenticating with an external push service failed.
    AuthenticationFailed,
    /// Any other code, kept verbatim (an empty string if the nack had none).
    Unknown(String),
}

/// What to do with a downstream message that received a nack (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// Transient: retry with exponential backoff and jitter.
    Retry,
    /// Rate limited: retry the same way, but only after backing off the target
    /// (device or topic).
    RetryAfterTargetBackoff,
    /// Final: the message fails with this code.
    Final,
}

impl ErrorCode {
    /// Every code of table 4, in table order (without [`ErrorCode::Unknown`]).
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidJson,
        ErrorCode::BadRegistration,
        ErrorCode::DeviceUnregistered,
        ErrorCode::SenderIdMismatch,
        ErrorCode::BadAck,
        ErrorCode::ServiceUnavailable,
        ErrorCode::InternalServerError,
        ErrorCode::DeviceMessageRateExceeded,
        ErrorCode::TopicsMessageRateExceeded,
        ErrorCode::ConnectionDraining,
        ErrorCode::InvalidApnsCredential,
        ErrorCode::AuthenticationFailed,
    ];

    /// The code as FCM spells it, e.g. `"BAD_REGISTRATION"`; for
    /// [`ErrorCode::Unknown`] the kept text.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::BadRegistration => "BAD_REGISTRATION",
            ErrorCode::DeviceUnregistered => "DEVICE_UNREGISTERED",
            ErrorCode::SenderIdMismatch => "SENDER_ID_MISMATCH",
            ErrorCode::BadAck => "BAD_ACK",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::InternalServerError => "INTERNAL_SERVER_ERROR",
            ErrorCode::DeviceMessageRateExceeded => "DEVICE_MESSAGE_RATE_EXCEEDED",
            ErrorCode::TopicsMessageRateExceeded => "TOPICS_MESSAGE_RATE_EXCEEDED",
            ErrorCode::ConnectionDraining => "CONNECTION_DRAINING",
            ErrorCode::InvalidApnsCredential => "INVALID_APNS_CREDENTIAL",
            ErrorCode::AuthenticationFailed => "AUTHENTICATION_FAILED",
            ErrorCode::Unknown(s) => s,
        }
    }

    /// Parses a code; never fails. The match is exact (FCM sends upper case);
    /// anything else becomes [`ErrorCode::Unknown`] with the text kept.
    pub fn parse(s: &str) -> ErrorCode {
        match s {
            "INVALID_JSON" => ErrorCode::InvalidJson,
            "BAD_REGISTRATION" => ErrorCode::BadRegistration,
            "DEVICE_UNREGISTERED" => ErrorCode::DeviceUnregistered,
            "SENDER_ID_MISMATCH" => ErrorCode::SenderIdMismatch,
            "BAD_ACK" => ErrorCode::BadAck,
            "SERVICE_UNAVAILABLE" => ErrorCode::ServiceUnavailable,
            "INTERNAL_SERVER_ERROR" => ErrorCode::InternalServerError,
            "DEVICE_MESSAGE_RATE_EXCEEDED" => ErrorCode::DeviceMessageRateExceeded,
            "TOPICS_MESSAGE_RATE_EXCEEDED" => ErrorCode::TopicsMessageRateExceeded,
            "CONNECTION_DRAINING" => ErrorCode::ConnectionDraining,
            "INVALID_APNS_CREDENTIAL" => ErrorCode::InvalidApnsCredential,
            "AUTHENTICATION_FAILED" => ErrorCode::AuthenticationFailed,
            other => ErrorCode::Unknown(other.to_owned()),
        }
    }

    /// How a nack with this code is handled (SPEC §4): `SERVICE_UNAVAILABLE`,
    /// `INTERNAL_SERVER_ERROR` and `CONNECTION_DRAINING` are retried;
    /// `DEVICE_MESSAGE_RATE_EXCEEDED` and `TOPICS_MESSAGE_RATE_EXCEEDED` are
    /// retried after backing off the target; everything else, unknown codes
    /// included, is final.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            ErrorCode::ServiceUnavailable
            | ErrorCode::InternalServerError
            | ErrorCode::ConnectionDraining => RetryClass::Retry,
            ErrorCode::DeviceMessageRateExceeded | ErrorCode::TopicsMessageRateExceeded => {
                RetryClass::RetryAfterTargetBackoff
            }
            ErrorCode::InvalidJson
            | ErrorCode::BadRegistration
            | ErrorCode::DeviceUnregistered
            | ErrorCode::SenderIdMismatch
            | ErrorCode::BadAck
            | ErrorCode::InvalidApnsCredential
            | ErrorCode::AuthenticationFailed
            | ErrorCode::Unknown(_) => RetryClass::Final,
        }
    }

    /// `true` unless [`retry_class`](Self::retry_class) is [`RetryClass::Final`].
    pub fn is_retryable(&self) -> bool {
        self.retry_class() != RetryClass::Final
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ErrorCode::parse(s))
    }
}

impl From<&str> for ErrorCode {
    fn from(s: &str) -> Self {
        ErrorCode::parse(s)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(ErrorCode::parse(&s))
    }
}

/// Why a downstream message is refused: the code FCM would answer with and a
/// description that names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct Rejection {
    /// The code FCM would give (table 4).
    pub code: ErrorCode,
    /// Human-readable reason, naming the field.
    pub description: String,
}

impl Rejection {
    /// A rejection with the given code and description.
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Rejection {
            code,
            description: description.into(),
        }
    }

    /// An `INVALID_JSON` rejection.
    pub fn invalid_json(description: impl Into<String>) -> Self {
        Rejection::new(ErrorCode::InvalidJson, description)
    }

    /// A `BAD_REGISTRATION` rejection.
    pub fn bad_registration(description: impl Into<String>) -> Self {
        Rejection::new(ErrorCode::BadRegistration, description)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_parse_and_as_str() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
            assert_eq!(code.to_string(), code.as_str());
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
            assert!(!matches!(code, ErrorCode::Unknown(_)));
        }
    }

    #[test]
    fn table4_strings_are_exact() {
        let expected = [
            "INVALID_JSON",
            "BAD_REGISTRATION",
            "DEVICE_UNREGISTERED",
            "SENDER_ID_MISMATCH",
            "BAD_ACK",
            "SERVICE_UNAVAILABLE",
            "INTERNAL_SERVER_ERROR",
            "DEVICE_MESSAGE_RATE_EXCEEDED",
            "TOPICS_MESSAGE_RATE_EXCEEDED",
            "CONNECTION_DRAINING",
            "INVALID_APNS_CREDENTIAL",
            "AUTHENTICATION_FAILED",
        ];
        let got: Vec<&str> = ErrorCode::ALL.iter().map(ErrorCode::as_str).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn unknown_code_is_kept() {
        let c = ErrorCode::parse("QUOTA_EXCEEDED");
        assert_eq!(c, ErrorCode::Unknown("QUOTA_EXCEEDED".into()));
        assert_eq!(c.as_str(), "QUOTA_EXCEEDED");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"QUOTA_EXCEEDED\"");
        let back: ErrorCode = serde_json::from_str("\"QUOTA_EXCEEDED\"").unwrap();
        assert_eq!(back, c);
        // Case matters: FCM codes are upper case.
        assert_eq!(
            ErrorCode::parse("bad_registration"),
            ErrorCode::Unknown("bad_registration".into())
        );
        assert_eq!(ErrorCode::parse(""), ErrorCode::Unknown(String::new()));
        assert_eq!(
            "BAD_ACK".parse::<ErrorCode>(),
            Ok::<_, Infallible>(ErrorCode::BadAck)
        );
        assert_eq!(ErrorCode::from("BAD_ACK"), ErrorCode::BadAck);
    }

    #[test]
    fn escaped_code_deserializes() {
        // A JSON string with an escape cannot be borrowed; still parsed.
        let c: ErrorCode = serde_json::from_str(r#""BAD_\u0041CK""#).unwrap();
        assert_eq!(c, ErrorCode::BadAck);
        assert!(serde_json::from_str::<ErrorCode>("42").is_err());
    }

    #[test]
    fn retry_classes_follow_spec_section_4() {
        use RetryClass::*;
        let expect = [
            (ErrorCode::InvalidJson, Final),
            (ErrorCode::BadRegistration, Final),
            (ErrorCode::DeviceUnregistered, Final),
            (ErrorCode::SenderIdMismatch, Final),
            (ErrorCode::BadAck, Final),
            (ErrorCode::ServiceUnavailable, Retry),
            (ErrorCode::InternalServerError, Retry),
            (
                ErrorCode::DeviceMessageRateExceeded,
                RetryAfterTargetBackoff,
            ),
            (
                ErrorCode::TopicsMessageRateExceeded,
                RetryAfterTargetBackoff,
            ),
            (ErrorCode::ConnectionDraining, Retry),
            (ErrorCode::InvalidApnsCredential, Final),
            (ErrorCode::AuthenticationFailed, Final),
            (ErrorCode::Unknown("WHATEVER".into()), Final),
            (ErrorCode::Unknown(String::new()), Final),
        ];
        for (code, class) in expect {
            assert_eq!(code.retry_class(), class, "{code}");
            assert_eq!(code.is_retryable(), class != Final, "{code}");
        }
    }

    #[test]
    fn rejection_display_names_code_and_reason() {
        let r = Rejection::invalid_json("time_to_live must be an integer");
        assert_eq!(r.code, ErrorCode::InvalidJson);
        assert_eq!(
            r.to_string(),
            "INVALID_JSON: time_to_live must be an integer"
        );
        let e: &dyn std::error::Error = &r;
        assert!(e.source().is_none());
        assert_eq!(
            Rejection::bad_registration("x").code,
            ErrorCode::BadRegistration
        );
    }
}
