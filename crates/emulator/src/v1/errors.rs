//! Error bodies of the FCM HTTP v1 emulator: `google.rpc.Status` as Google
//! serves it (SPEC §8.3, §9), and the v1 `ErrorCode` enum.
//!
//! Every error answer has the shape
//! `{"error":{"code":N,"message":"..","status":"..","details":[..]}}`;
//! `details` holds a `google.firebase.fcm.v1.FcmError` for FCM's own errors,
//! and may hold `google.rpc.BadRequest`, `google.rpc.QuotaFailure` or
//! `google.rpc.ErrorInfo`, in the order Google uses for that error (which is
//! not always the same), or be missing. Bodies are pretty-printed with two
//! spaces, as Google's front end writes them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// `@type` of the FCM error detail.
pub const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
/// `@type` of the field-violation detail.
pub const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
/// `@type` of the quota detail.
pub const QUOTA_FAILURE_TYPE: &str = "type.googleapis.com/google.rpc.QuotaFailure";
/// `@type` of the error-info detail (authentication and permission errors).
pub const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// The message of Google's current answer to a malformed registration token.
pub const INVALID_TOKEN_MESSAGE: &str =
    "The registration token is not a valid FCM registration token";

/// The v1 API's `ErrorCode` enum (the `errorCode` of an `FcmError` detail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum V1ErrorCode {
    /// No more information is available about this error.
    UnspecifiedError,
    /// Request parameters were invalid (HTTP 400).
    InvalidArgument,
    /// The app instance was unregistered from FCM (HTTP 404).
    Unregistered,
    /// The authenticated sender id differs from the token's (HTTP 403).
    SenderIdMismatch,
    /// Sending limit exceeded for the project, device or topic (HTTP 429).
    QuotaExceeded,
    /// The server is overloaded (HTTP 503).
    Unavailable,
    /// An unknown internal error occurred (HTTP 500).
    Internal,
    /// The APNs certificate or web push auth key was invalid (HTTP 401).
    ThirdPartyAuthError,
}

impl V1ErrorCode {
    /// Every code, in the reference's order.
    pub const ALL: [V1ErrorCode; 8] = [
        V1ErrorCode::UnspecifiedError,
        V1ErrorCode::InvalidArgument,
        V1ErrorCode::Unregistered,
        V1ErrorCode::SenderIdMismatch,
        V1ErrorCode::QuotaExceeded,
        V1ErrorCode::Unavailable,
        V1ErrorCode::Internal,
        V1ErrorCode::ThirdPartyAuthError,
    ];

    /// The wire name, e.g. `"UNREGISTERED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            V1ErrorCode::UnspecifiedError => "UNSPECIFIED_ERROR",
            V1ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            V1ErrorCode::Unregistered => "UNREGISTERED",
            V1ErrorCode::SenderIdMismatch => "SENDER_ID_MISMATCH",
            V1ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            V1ErrorCode::Unavailable => "UNAVAILABLE",
            V1ErrorCode::Internal => "INTERNAL",
            V1ErrorCode::ThirdPartyAuthError => "THIRD_PARTY_AUTH_ERROR",
        }
    }

    /// Parse a wire name (case-insensitive); `None` for anything else.
    pub fn parse(s: &str) -> Option<V1ErrorCode> {
        V1ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
    }

    /// The HTTP status Google answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            V1ErrorCode::InvalidArgument => 400,
            V1ErrorCode::Unregistered => 404,
            V1ErrorCode::SenderIdMismatch => 403,
            V1ErrorCode::QuotaExceeded => 429,
            V1ErrorCode::Unavailable => 503,
            V1ErrorCode::UnspecifiedError | V1ErrorCode::Internal => 500,
            V1ErrorCode::ThirdPartyAuthError => 401,
        }
    }

    /// The `google.rpc.Code` name of the Status (`status` field).
    pub fn rpc_status(self) -> &'static str {
        match self {
            V1ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            V1ErrorCode::Unregistered => "NOT_FOUND",
            V1ErrorCode::SenderIdMismatch => "PERMISSION_DENIED",
            V1ErrorCode::QuotaExceeded => "RESOURCE_EXHAUSTED",
            V1ErrorCode::Unavailable => "UNAVAILABLE",
            V1ErrorCode::Internal => "INTERNAL",
            V1ErrorCode::UnspecifiedError => "UNKNOWN",
            V1ErrorCode::ThirdPartyAuthError => "UNAUTHENTICATED",
        }
    }

    /// The Status `message` Google uses for this code when nothing more
    /// specific applies.
    pub fn default_message(self) -> &'static str {
        match self {
            V1ErrorCode::InvalidArgument => "Request contains an invalid argument.",
            V1ErrorCode::Unregistered => "Requested entity was not found.",
            V1ErrorCode::SenderIdMismatch => "SenderId mismatch",
            V1ErrorCode::QuotaExceeded => "Quota exceeded.",
            V1ErrorCode::Unavailable => "The service is currently unavailable.",
            V1ErrorCode::Internal => "Internal error encountered.",
            V1ErrorCode::UnspecifiedError => "Unknown error.",
            V1ErrorCode::ThirdPartyAuthError => "Auth error from APNS or Web Push Service",
        }
    }
}

impl std::fmt::Display for V1ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `google.rpc.BadRequest` field violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    /// Field path (`message.android.ttl`); empty when the error is about the
    /// request as a whole (then Google leaves `field` out).
    pub(crate) field: String,
    pub(crate) description: String,
}

/// One entry of `details` besides the FcmError.
#[derive(Clone, Debug)]
pub(crate) enum Detail {
    /// `google.rpc.BadRequest`; an empty list is written as a detail with no
    /// `fieldViolations` (Google does that for "message is too big").
    BadRequest(Vec<Violation>),
    /// `google.rpc.QuotaFailure` with one violation.
    QuotaFailure {
        subject: String,
        description: String,
    },
    /// `google.rpc.ErrorInfo` (401 / 403 from Google's front end).
    ErrorInfo {
        reason: &'static str,
        domain: &'static str,
    },
}

/// An error answer of `messages:send`.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub(crate) http: u16,
    pub(crate) status: &'static str,
    pub(crate) message: Cow<'static, str>,
    /// The FcmError `errorCode`, if the answer carries one.
    pub(crate) code: Option<V1ErrorCode>,
    /// Other details.
    pub(crate) details: Vec<Detail>,
    /// Write the FcmError after the other details instead of before.
    pub(crate) fcm_last: bool,
    /// `Retry-After` header, seconds.
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    /// An FCM error with its code's HTTP status, rpc status and a message.
    pub(crate) fn fcm(code: V1ErrorCode, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            http: code.http_status(),
            status: code.rpc_status(),
            message: message.into(),
            code: Some(code),
            details: Vec::new(),
            fcm_last: false,
            retry_after: None,
        }
    }

    /// An FCM `INVALID_ARGUMENT` with a field violation on `field` (written
    /// before the FcmError, as Google does for semantic checks).
    pub(crate) fn invalid_field(field: &str, message: impl Into<Cow<'static, str>>) -> ApiError {
        let message = message.into();
        let mut e = ApiError::fcm(V1ErrorCode::InvalidArgument, message.clone());
        e.details.push(Detail::BadRequest(vec![Violation {
            field: field.to_owned(),
            description: message.into_owned(),
        }]));
        e.fcm_last = true;
        e
    }

    /// A JSON-level `INVALID_ARGUMENT` (what Google's front end answers while
    /// parsing the body: no FcmError, one field violation per problem).
    pub(crate) fn parse_errors(violations: Vec<Violation>) -> ApiError {
        let message = violations
            .iter()
            .map(|v| v.description.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        ApiError {
            http: 400,
            status: "INVALID_ARGUMENT",
            message: message.into(),
            code: None,
            details: vec![Detail::BadRequest(violations)],
            fcm_last: false,
            retry_after: None,
        }
    }

    /// A Status without FcmError (authentication, permission, routing).
    pub(crate) fn plain(
        http: u16,
        status: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> ApiError {
        ApiError {
            http,
            status,
            message: message.into(),
            code: None,
            details: Vec::new(),
            fcm_last: false,
            retry_after: None,
        }
    }

    /// Add a detail.
    pub(crate) fn with(mut self, d: Detail) -> ApiError {
        self.details.push(d);
        self
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> Vec<u8> {
        let mut details: Vec<DetailOut<'_>> = Vec::with_capacity(self.details.len() + 1);
        let fcm = self.code.map(|c| DetailOut::Fcm {
            ty: FCM_ERROR_TYPE,
            error_code: c.as_str(),
        });
        if !self.fcm_last {
            details.extend(fcm.clone());
        }
        for d in &self.details {
            details.push(match d {
                Detail::BadRequest(v) => DetailOut::BadRequest {
                    ty: BAD_REQUEST_TYPE,
                    field_violations: v
                        .iter()
                        .map(|v| ViolationOut {
                            field: (!v.field.is_empty()).then_some(v.field.as_str()),
                            description: &v.description,
                        })
                        .collect(),
                },
                Detail::QuotaFailure {
                    subject,
                    description,
                } => DetailOut::QuotaFailure {
                    ty: QUOTA_FAILURE_TYPE,
                    violations: vec![QuotaViolationOut {
                        subject,
                        description,
                    }],
                },
                Detail::ErrorInfo { reason, domain } => DetailOut::ErrorInfo {
                    ty: ERROR_INFO_TYPE,
                    reason,
                    domain,
                    metadata: ErrorInfoMeta {
                        service: "fcm.googleapis.com",
                        method: "google.firebase.fcm.v1.FcmService.SendMessage",
                    },
                },
            });
        }
        if self.fcm_last {
            details.extend(fcm);
        }
        let out = StatusOut {
            error: StatusInner {
                code: self.http,
                message: &self.message,
                status: self.status,
                details,
            },
        };
        let mut body = serde_json::to_vec_pretty(&out).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        body
    }
}

#[derive(Serialize)]
struct StatusOut<'a> {
    error: StatusInner<'a>,
}

#[derive(Serialize)]
struct StatusInner<'a> {
    code: u16,
    message: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    details: Vec<DetailOut<'a>>,
}

#[derive(Serialize, Clone)]
#[serde(untagged)]
enum DetailOut<'a> {
    Fcm {
        #[serde(rename = "@type")]
        ty: &'static str,
        #[serde(rename = "errorCode")]
        error_code: &'static str,
    },
    BadRequest {
        #[serde(rename = "@type")]
        ty: &'static str,
        #[serde(rename = "fieldViolations", skip_serializing_if = "Vec::is_empty")]
        field_violations: Vec<ViolationOut<'a>>,
    },
    QuotaFailure {
        #[serde(rename = "@type")]
        ty: &'static str,
        violations: Vec<QuotaViolationOut<'a>>,
    },
    ErrorInfo {
        #[serde(rename = "@type")]
        ty: &'static str,
        reason: &'static str,
        domain: &'static str,
        metadata: ErrorInfoMeta,
    },
}

#[derive(Serialize, Clone)]
struct ViolationOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    description: &'a str,
}

#[derive(Serialize, Clone)]
struct QuotaViolationOut<'a> {
    subject: &'a str,
    description: &'a str,
}

#[derive(Serialize, Clone, Copy)]
struct ErrorInfoMeta {
    service: &'static str,
    method: &'static str,
}

/// The HTML page Google's front end serves with a 502 or 504 (and for
/// unknown URLs, with 404).
pub(crate) fn html_error_page(status: u16) -> Vec<u8> {
    let (title, text) = match status {
        404 => (
            "Error 404 (Not Found)!!1",
            "The requested URL was not found on this server.",
        ),
        502 => (
            "Error 502 (Server Error)!!1",
            "The server encountered a temporary error and could not complete your request. Please try again in 30 seconds.",
        ),
        504 => (
            "Error 504 (Gateway Timeout)!!1",
            "The server did not answer in time. Please try again in 30 seconds.",
        ),
        _ => ("Error", "The server encountered an error."),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>{title}</title>\n  <p><b>{status}.</b> <ins>That\u{2019}s an error.</ins>\n  <p>{text} <ins>That\u{2019}s all we know.</ins>\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    #[test]
    fn codes_round_trip_and_map_to_http() {
        for c in V1ErrorCode::ALL {
            assert_eq!(V1ErrorCode::parse(c.as_str()), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
        assert_eq!(
            V1ErrorCode::parse("unavailable"),
            Some(V1ErrorCode::Unavailable)
        );
        assert_eq!(V1ErrorCode::parse("NOPE"), None);
        assert_eq!(V1ErrorCode::Unregistered.http_status(), 404);
        assert_eq!(
            V1ErrorCode::QuotaExceeded.rpc_status(),
            "RESOURCE_EXHAUSTED"
        );
    }

    #[test]
    fn status_body_shape() {
        let e = ApiError::fcm(V1ErrorCode::Unregistered, "Requested entity was not found.");
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"code":404,"message":"Requested entity was not found.",
                "status":"NOT_FOUND","details":[{"@type":FCM_ERROR_TYPE,"errorCode":"UNREGISTERED"}]}})
        );
        // Keys in Google's order.
        let text = String::from_utf8(e.body()).unwrap();
        let (c, m, s) = (
            text.find("\"code\"").unwrap(),
            text.find("\"message\"").unwrap(),
            text.find("\"status\"").unwrap(),
        );
        assert!(c < m && m < s);
    }

    #[test]
    fn field_violation_goes_first_for_semantic_errors() {
        let e = ApiError::invalid_field("message", "Recipient of the message is not set.");
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        let d = v["error"]["details"].as_array().unwrap();
        assert_eq!(d[0]["@type"], BAD_REQUEST_TYPE);
        assert_eq!(d[0]["fieldViolations"][0]["field"], "message");
        assert_eq!(d[1]["errorCode"], "INVALID_ARGUMENT");
    }

    #[test]
    fn plain_errors_have_no_details() {
        let e = ApiError::plain(403, "PERMISSION_DENIED", "denied");
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert!(v["error"].get("details").is_none());
    }
}
