//! FCM HTTP v1 answers → what the link tells the engine (SPEC §8.3).
//!
//! [`fcm::v1::classify`] decides what an answer means; this maps it onto
//! the link interface's [`Failure`]:
//!
//! | `fcm::v1::FailureClass` | link |
//! |---|---|
//! | `Final` | [`FailureClass::Final`] with `code` = the REJECT `error`, `detail` = the Status `message`, `http` = `fcm_error` + `http_status` |
//! | `Retry { after, target_backoff }` | [`FailureClass::Retry`] (the engine's backoff, not before `after`; `MAX_RETRIES` when attempts run out, with the last answer's `fcm_error` / `http_status`) |
//! | `RefreshToken` (401 without FcmError) | not an outcome: the link refreshes the token and resends once at once ([`Mapped::RefreshToken`]) |
//! | `AuthError` (403 without FcmError) | not an outcome: an authentication error, the message stays queued ([`Mapped::AuthError`]) |
//!
//! Answers that never came are the link's own: a request timeout is a
//! retry; a stream the server refused (RST_STREAM REFUSED_STREAM) or left
//! beyond a GOAWAY's `last_stream_id` was never processed and is resent at
//! once (not an attempt); any other stream reset is a retry.

use crate::link::{Failure, FailureClass, HttpDetail};
use std::time::Duration;

/// What an answer other than 200 means for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mapped {
    /// An outcome for the engine.
    Outcome(Failure),
    /// The access token was refused (401 without FcmError).
    RefreshToken(fcm::v1::Failure),
    /// The credentials were refused (403 without FcmError).
    AuthError(fcm::v1::Failure),
}

/// The code an answer is counted under in `gimmm_fcm_errors_total` and
/// named by in a retry's detail: the errorCode, else `HTTP_<status>`.
pub(crate) fn answer_code(f: &fcm::v1::Failure) -> String {
    match &f.fcm_error {
        Some(c) => c.clone(),
        None => format!("HTTP_{}", f.http_status),
    }
}

/// Maps a classified answer (SPEC §8.3's table).
pub(crate) fn map(f: fcm::v1::Failure) -> Mapped {
    let http = Some(HttpDetail {
        fcm_error: f.fcm_error.clone(),
        http_status: f.http_status,
    });
    match f.class {
        fcm::v1::FailureClass::Final => Mapped::Outcome(Failure {
            class: FailureClass::Final,
            code: f.error,
            detail: f.description,
            http,
        }),
        fcm::v1::FailureClass::Retry {
            after,
            target_backoff,
        } => Mapped::Outcome(Failure {
            class: FailureClass::Retry {
                after,
                target_backoff,
            },
            // The engine REJECTs with MAX_RETRIES when attempts run out and
            // names this code as the last error.
            code: answer_code(&f),
            detail: f.description,
            http,
        }),
        fcm::v1::FailureClass::RefreshToken => Mapped::RefreshToken(f),
        fcm::v1::FailureClass::AuthError => Mapped::AuthError(f),
    }
}

/// No answer within `request_timeout_secs`: a retry (FCM may have taken
/// it; the engine's backoff and attempts apply).
pub(crate) fn timeout(after: Duration) -> Failure {
    Failure {
        class: FailureClass::Retry {
            after: None,
            target_backoff: false,
        },
        code: "TIMEOUT".into(),
        detail: format!("no answer from FCM within {} s", after.as_secs()),
        http: None,
    }
}

/// Never processed by FCM (refused stream, beyond a GOAWAY, refused before
/// it left): resent at once elsewhere, not an attempt.
pub(crate) fn resend(why: &str) -> Failure {
    Failure {
        class: FailureClass::Resend,
        code: "RESEND".into(),
        detail: why.to_string(),
        http: None,
    }
}

/// The server reset the stream for another reason: it may have processed
/// the request, so this is an attempt.
pub(crate) fn stream_reset(reason: &str) -> Failure {
    Failure {
        class: FailureClass::Retry {
            after: None,
            target_backoff: false,
        },
        code: "STREAM_RESET".into(),
        detail: format!("FCM reset the stream ({reason})"),
        http: None,
    }
}

/// How an HTTP/2 error of one request is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamErr {
    /// Never processed: resend at once (REFUSED_STREAM, or the stream lay
    /// beyond a GOAWAY's `last_stream_id` — RFC 9113 §8.7 guarantees both).
    Unprocessed,
    /// Reset by either side for another reason: a retry.
    Reset,
    /// The connection broke: no outcome; the link closes and the engine
    /// resends what had none (counted in `gimmm_fcm_resent_total`).
    ConnectionLost,
}

/// Sorts an h2 error of one request.
pub(crate) fn stream_err(e: &h2::Error) -> StreamErr {
    if e.is_remote() && e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        return StreamErr::Unprocessed;
    }
    if e.is_remote() && e.is_go_away() {
        // h2 fails only the streams above last_stream_id this way (and new
        // requests after the GOAWAY); those at or below finish, or see the
        // connection end (an I/O error, below).
        return StreamErr::Unprocessed;
    }
    if e.is_io() || e.is_go_away() {
        // I/O errors and GOAWAYs of our own end the whole connection.
        return StreamErr::ConnectionLost;
    }
    // A reset, or anything else the connection survives: the message
    // needs an outcome.
    StreamErr::Reset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &str) -> Mapped {
        map(fcm::v1::classify(status, Some("7"), body.as_bytes()))
    }

    #[test]
    fn finals_carry_the_http_details() {
        let m = classify(
            404,
            r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
        );
        assert_eq!(
            m,
            Mapped::Outcome(Failure {
                class: FailureClass::Final,
                code: "DEVICE_UNREGISTERED".into(),
                detail: "Requested entity was not found.".into(),
                http: Some(HttpDetail {
                    fcm_error: Some("UNREGISTERED".into()),
                    http_status: 404
                }),
            })
        );
    }

    #[test]
    fn retries_name_the_code_and_keep_retry_after() {
        let Mapped::Outcome(f) = classify(
            429,
            r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"q","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"QUOTA_EXCEEDED"}]}}"#,
        ) else {
            panic!("not an outcome")
        };
        assert_eq!(
            f.class,
            FailureClass::Retry {
                after: Some(Duration::from_secs(7)),
                target_backoff: true
            }
        );
        assert_eq!(f.code, "QUOTA_EXCEEDED");
        let Mapped::Outcome(f) = classify(502, "<html>bad gateway</html>") else {
            panic!("not an outcome")
        };
        assert_eq!(f.code, "HTTP_502");
        assert!(matches!(
            f.class,
            FailureClass::Retry {
                target_backoff: false,
                ..
            }
        ));
    }

    #[test]
    fn auth_answers_are_not_outcomes() {
        let body = r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#;
        assert!(matches!(classify(401, body), Mapped::RefreshToken(_)));
        let body = r#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}"#;
        assert!(matches!(classify(403, body), Mapped::AuthError(_)));
    }
}
