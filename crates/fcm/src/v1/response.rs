//! FCM HTTP v1 answers → what gimmm does (SPEC §8.3): the 200 body and the
//! ack gimmm hands the BAL, and the classification of every other answer.
//!
//! An error body is a `google.rpc.Status`:
//! `{"error":{"code":404,"message":"…","status":"NOT_FOUND","details":[…]}}`,
//! whose `details` may hold a `google.firebase.fcm.v1.FcmError`
//! (`errorCode`), a `google.rpc.BadRequest` (`fieldViolations`) and a
//! `google.rpc.QuotaFailure`, in any order, or be missing; a 502 / 504 from a
//! proxy may be HTML. Nothing here trusts the body: any bytes classify.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::json::{push_key, push_str, truncate};

/// `error` of a DOWNSTREAM_REJECT for a message whose retries ran out.
pub const MAX_RETRIES: &str = "MAX_RETRIES";

/// The `error_description` is cut to this many characters.
const MAX_DESCRIPTION_CHARS: usize = 512;

/// A 200 answer whose body is not `{"name": "<string>"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FCM HTTP v1 answered 200 with an unexpected body: {0}")]
pub struct BadSuccess(pub String);

/// The message name out of a 200 answer,
/// `{"name":"projects/P/messages/ID"}` (other keys ignored).
///
/// FCM took the message when it said 200, so a caller that gets
/// [`BadSuccess`] should still treat the message as sent (and log the error).
pub fn parse_success(body: &[u8]) -> Result<String, BadSuccess> {
    #[derive(Deserialize)]
    struct Success {
        name: String,
    }
    match serde_json::from_slice::<Success>(body) {
        Ok(s) => Ok(s.name),
        Err(e) => Err(BadSuccess(e.to_string())),
    }
}

/// The `fcm_data` of the DOWNSTREAM_ACK for a message FCM HTTP v1 took:
/// `{"message_type":"ack","message_id":…,"from":…,"name":…}` — the XMPP
/// ack's shape plus `name`. `target` is the message's target as the BAL gave
/// it: the token, `/topics/x`, or the condition.
pub fn ack_json(message_id: &str, target: &str, name: &str) -> String {
    let mut out = String::with_capacity(48 + message_id.len() + target.len() + name.len());
    out.push_str("{\"message_type\":\"ack\"");
    let mut first = false;
    push_key(&mut out, &mut first, "message_id");
    push_str(&mut out, message_id);
    push_key(&mut out, &mut first, "from");
    push_str(&mut out, target);
    push_key(&mut out, &mut first, "name");
    push_str(&mut out, name);
    out.push('}');
    out
}

/// What to do with a message FCM HTTP v1 did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureClass {
    /// Final: the message ends in a DOWNSTREAM_REJECT carrying
    /// [`Failure::error`].
    Final,
    /// Transient: retry with SPEC §4's backoff, not before `after` (from
    /// `Retry-After`, when it gave one); when `target_backoff`, back the
    /// message's target off too (`QUOTA_EXCEEDED`). When attempts run out the
    /// REJECT's `error` is [`MAX_RETRIES`].
    Retry {
        /// The server's `Retry-After`, if it gave a usable one.
        after: Option<Duration>,
        /// Back the target (token, topic, condition) off as well.
        target_backoff: bool,
    },
    /// 401 without an FcmError: the access token was refused. Refresh it and
    /// resend once at once (not an attempt); if it repeats, an authentication
    /// error (messages stay queued, `/readyz` 503).
    RefreshToken,
    /// 403 without an FcmError (API disabled, no permission): an
    /// authentication error; nothing is rejected, messages stay queued.
    AuthError,
}

/// A classified non-200 answer (SPEC §8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What to do.
    pub class: FailureClass,
    /// The DOWNSTREAM_REJECT `error`: for [`FailureClass::Final`] the code of
    /// the table (`BAD_REGISTRATION`, `DEVICE_UNREGISTERED`, …, the v1
    /// errorCode itself for codes the table does not list, else
    /// `HTTP_<status>`); for [`FailureClass::Retry`] [`MAX_RETRIES`], the
    /// code the REJECT gets should attempts run out; for
    /// [`FailureClass::RefreshToken`] / [`FailureClass::AuthError`] (which
    /// reject nothing) the Status `status` (`UNAUTHENTICATED`, …), else
    /// `HTTP_<status>`, for logs and metrics.
    pub error: String,
    /// The FcmError `errorCode`, if the body had one (the REJECT's
    /// `fcm_error`; `null` when `None`).
    pub fcm_error: Option<String>,
    /// The HTTP status (the REJECT's `http_status`).
    pub http_status: u16,
    /// The Status `message` (the REJECT's `error_description`); for a body
    /// without one, a short description of what came.
    pub description: String,
}

/// A parsed `Retry-After` header value (RFC 9110 §10.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: 30` — a delay in seconds.
    Delay(Duration),
    /// `Retry-After: Sun, 06 Nov 1994 08:49:37 GMT` — an instant, in seconds
    /// since the Unix epoch.
    At(i64),
}

impl RetryAfter {
    /// Parses delay-seconds or an IMF-fixdate (the only date form RFC 9110
    /// lets senders generate; the obsolete RFC 850 and asctime forms give
    /// `None`, as does anything else). Surrounding whitespace is ignored.
    pub fn parse(value: &str) -> Option<RetryAfter> {
        let v = value.trim();
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            // An absurdly long number still means "a long time".
            let secs = v.parse::<u64>().unwrap_or(u64::MAX);
            return Some(RetryAfter::Delay(Duration::from_secs(secs)));
        }
        imf_fixdate(v).map(RetryAfter::At)
    }

    /// The delay from `now_ms` (ms since the epoch); an instant in the past
    /// is no delay.
    pub fn delay_from(self, now_ms: i64) -> Duration {
        match self {
            RetryAfter::Delay(d) => d,
            RetryAfter::At(at) => {
                let ms = at.saturating_mul(1000).saturating_sub(now_ms).max(0);
                Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            }
        }
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → epoch seconds.
fn imf_fixdate(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || b[7] != b' ' || b[11] != b' ' || b[16] != b' ' {
        return None;
    }
    if b[19] != b':' || b[22] != b':' || &b[25..] != b" GMT" {
        return None;
    }
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    if !DAYS.contains(&&b[0..3]) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = &b[r];
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(d.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0')))
    };
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| *m == &b[8..11])? as i64 + 1;
    let year = num(12..16)?;
    let (h, m, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    // `month` is 1..=12 by construction.
    let max_day = month_days[usize::try_from(month - 1).ok()?];
    if day < 1 || day > max_day || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What the error body says, as far as gimmm uses it.
#[derive(Default)]
struct ErrorBody {
    /// `error.status`, e.g. `NOT_FOUND`.
    status: Option<String>,
    /// `error.message`.
    message: Option<String>,
    /// The first FcmError's `errorCode`.
    fcm_error: Option<String>,
    /// A BadRequest field violation names `message.token`.
    token_violation: bool,
    /// The first field violation's description (a fallback description).
    violation: Option<String>,
}

fn type_is(detail: &serde_json::Map<String, Value>, name: &str) -> bool {
    detail
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.rsplit('/').next() == Some(name))
}

/// Either spelling of a proto field (Google writes lowerCamelCase JSON).
fn get<'v>(o: &'v serde_json::Map<String, Value>, camel: &str, snake: &str) -> Option<&'v Value> {
    o.get(camel).or_else(|| o.get(snake))
}

fn parse_error_body(v: &Value) -> ErrorBody {
    let mut e = ErrorBody::default();
    let error = match v.get("error") {
        Some(Value::Object(o)) => o,
        // OAuth-style `{"error":"invalid_grant","error_description":…}`.
        Some(Value::String(s)) => {
            e.message = v
                .get("error_description")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| Some(s.clone()));
            return e;
        }
        _ => return e,
    };
    e.status = error
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_owned);
    e.message = error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(Value::Array(details)) = error.get("details") else {
        return e;
    };
    for d in details {
        let Value::Object(d) = d else { continue };
        if type_is(d, "google.firebase.fcm.v1.FcmError") {
            if e.fcm_error.is_none() {
                e.fcm_error = get(d, "errorCode", "error_code")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned);
            }
        } else if type_is(d, "google.rpc.BadRequest") {
            let Some(Value::Array(vs)) = get(d, "fieldViolations", "field_violations") else {
                continue;
            };
            for fv in vs {
                let Value::Object(fv) = fv else { continue };
                if fv.get("field").and_then(Value::as_str) == Some("message.token") {
                    e.token_violation = true;
                }
                if e.violation.is_none() {
                    e.violation = fv
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                }
            }
        }
        // google.rpc.QuotaFailure and others: the errorCode says enough.
    }
    e
}

/// Does the message say the registration token is not valid? Google's
/// current answer to a malformed token is 400 INVALID_ARGUMENT "The
/// registration token is not a valid FCM registration token", without a
/// field violation.
fn says_bad_token(message: Option<&str>) -> bool {
    message.is_some_and(|m| {
        m.to_ascii_lowercase()
            .contains("registration token is not a valid")
    })
}

/// `s` cut to [`MAX_DESCRIPTION_CHARS`], control characters (newlines
/// included) as spaces: descriptions end up in logs, one line each.
fn one_line(s: &str) -> String {
    truncate(s, MAX_DESCRIPTION_CHARS)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A printable excerpt of a body that is not a Status.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(400)]);
    let squeezed: Vec<&str> = text.split_whitespace().collect();
    let joined = squeezed.join(" ");
    let clean: String = joined
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(&clean, 120).to_owned()
}

/// Classifies a non-200 answer (SPEC §8.3). `retry_after` is the
/// `Retry-After` header, if any: delay-seconds are honoured; an HTTP-date is
/// treated as unknown here (this function has no clock) — use
/// [`classify_at`] to honour dates too.
///
/// Decides by the FcmError `errorCode`, else by the HTTP status:
///
/// | errorCode / status | class | `error` |
/// |---|---|---|
/// | `INVALID_ARGUMENT`, or 400 without FcmError | Final | `BAD_REGISTRATION` if a field violation names `message.token` or the message says the registration token is not valid, else `INVALID_JSON` |
/// | `UNREGISTERED` | Final | `DEVICE_UNREGISTERED` |
/// | `SENDER_ID_MISMATCH` | Final | `SENDER_ID_MISMATCH` |
/// | `THIRD_PARTY_AUTH_ERROR` | Final | `INVALID_APNS_CREDENTIAL` |
/// | `QUOTA_EXCEEDED`, or 429 without FcmError | Retry, target backoff | `MAX_RETRIES` |
/// | `UNAVAILABLE`, `INTERNAL`, or status 500 / 502 / 503 / 504 | Retry | `MAX_RETRIES` |
/// | 401 without FcmError | RefreshToken | Status `status` or `HTTP_401` |
/// | 403 without FcmError | AuthError | Status `status` or `HTTP_403` |
/// | any other errorCode | Final | the errorCode |
/// | anything else | Final | `HTTP_<status>` |
///
/// A 404 without an FcmError is *not* `DEVICE_UNREGISTERED`: Google always
/// names an unregistered token with an FcmError, and a bare 404 (a wrong
/// endpoint or project path) must not make BALs drop good tokens.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Failure {
    let after = retry_after
        .and_then(RetryAfter::parse)
        .and_then(|r| match r {
            RetryAfter::Delay(d) => Some(d),
            RetryAfter::At(_) => None,
        });
    classify_with(status, after, body)
}

/// [`classify`], also honouring a `Retry-After` HTTP-date, measured from
/// `now_ms` (ms since the Unix epoch).
pub fn classify_at(status: u16, retry_after: Option<&str>, body: &[u8], now_ms: i64) -> Failure {
    let after = retry_after
        .and_then(RetryAfter::parse)
        .map(|r| r.delay_from(now_ms));
    classify_with(status, after, body)
}

fn classify_with(status: u16, after: Option<Duration>, body: &[u8]) -> Failure {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let e = parsed.as_ref().map(parse_error_body).unwrap_or_default();
    let description = match (&e.message, &e.violation) {
        (Some(m), _) if !m.is_empty() => one_line(m),
        (_, Some(v)) if !v.is_empty() => one_line(v),
        _ if parsed.is_none() && !body.is_empty() => {
            format!("HTTP {status}, body not JSON: {}", excerpt(body))
        }
        _ => format!("HTTP {status}"),
    };
    let http = || format!("HTTP_{status}");
    let retry = |target_backoff: bool| FailureClass::Retry {
        after,
        target_backoff,
    };
    let invalid_argument = || {
        if e.token_violation || says_bad_token(e.message.as_deref()) {
            "BAD_REGISTRATION".to_owned()
        } else {
            "INVALID_JSON".to_owned()
        }
    };
    let (class, error) = match (e.fcm_error.as_deref(), status) {
        (Some("INVALID_ARGUMENT"), _) | (None, 400) => (FailureClass::Final, invalid_argument()),
        (Some("UNREGISTERED"), _) => (FailureClass::Final, "DEVICE_UNREGISTERED".to_owned()),
        (Some("SENDER_ID_MISMATCH"), _) => (FailureClass::Final, "SENDER_ID_MISMATCH".to_owned()),
        (Some("THIRD_PARTY_AUTH_ERROR"), _) => {
            (FailureClass::Final, "INVALID_APNS_CREDENTIAL".to_owned())
        }
        (Some("QUOTA_EXCEEDED"), _) | (None, 429) => (retry(true), MAX_RETRIES.to_owned()),
        (Some("UNAVAILABLE" | "INTERNAL"), _) | (_, 500 | 502 | 503 | 504) => {
            (retry(false), MAX_RETRIES.to_owned())
        }
        (None, 401) => (
            FailureClass::RefreshToken,
            e.status.clone().unwrap_or_else(http),
        ),
        (None, 403) => (
            FailureClass::AuthError,
            e.status.clone().unwrap_or_else(http),
        ),
        (Some(code), _) if !code.is_empty() => (FailureClass::Final, code.to_owned()),
        _ => (FailureClass::Final, http()),
    };
    Failure {
        class,
        error,
        fcm_error: e.fcm_error,
        http_status: status,
        description,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imf_dates() {
        assert_eq!(imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            imf_fixdate("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        assert_eq!(
            imf_fixdate("Tue, 14 Nov 2023 22:13:20 GMT"),
            Some(1_700_000_000)
        );
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 0x Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMTX",
            "Sun, 06 Nov 1994 08:4é:37 GMT",
        ] {
            assert_eq!(imf_fixdate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
