//! SPEC §8.3: FCM HTTP v1 answers — the 200 body, the DOWNSTREAM_ACK's
//! `fcm_data`, and the classification of every other answer: one test per
//! row of the table, `details` in any order or missing, HTML and garbage
//! bodies, `Retry-After` forms, and a proptest that nothing panics.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fcm::v1::{
    ack_json, classify, classify_at, parse_success, Failure, FailureClass, RetryAfter, MAX_RETRIES,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const FCM_ERROR: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
const BAD_REQUEST: &str = "type.googleapis.com/google.rpc.BadRequest";
const QUOTA_FAILURE: &str = "type.googleapis.com/google.rpc.QuotaFailure";

fn status_body(code: u16, status: &str, message: &str, details: Option<Value>) -> Vec<u8> {
    let mut error = json!({"code": code, "message": message, "status": status});
    if let Some(d) = details {
        error["details"] = d;
    }
    serde_json::to_vec(&json!({ "error": error })).unwrap()
}

fn fcm_error(code: &str) -> Value {
    json!({"@type": FCM_ERROR, "errorCode": code})
}

fn bad_request(field: &str) -> Value {
    json!({"@type": BAD_REQUEST, "fieldViolations": [{"field": field, "description": format!("bad {field}")}]})
}

fn quota_failure() -> Value {
    json!({"@type": QUOTA_FAILURE, "violations": [{"subject": "device", "description": "too fast"}]})
}

fn final_(f: &Failure, error: &str) {
    assert_eq!(f.class, FailureClass::Final, "{f:?}");
    assert_eq!(f.error, error, "{f:?}");
}

// ---- 200 --------------------------------------------------------------------

#[test]
fn success_name() {
    assert_eq!(
        parse_success(br#"{"name":"projects/p-1/messages/0:1500415314455276%31bd1c9631bd1c96"}"#)
            .unwrap(),
        "projects/p-1/messages/0:1500415314455276%31bd1c9631bd1c96"
    );
    // Other keys are ignored; escapes are decoded.
    assert_eq!(
        parse_success(br#"{"x":1,"name":"projects/p/messages/a\u0062"}"#).unwrap(),
        "projects/p/messages/ab"
    );
    for bad in [
        &b""[..],
        b"{}",
        b"[]",
        b"{\"name\":5}",
        b"<html>",
        b"{\"name\":\"x\"",
        b"\xff\xfe",
    ] {
        let e = parse_success(bad).unwrap_err();
        assert!(e.to_string().contains("unexpected body"), "{e}");
    }
}

#[test]
fn ack_has_the_xmpp_shape_plus_name() {
    let a = ack_json("m-1", "/topics/news", "projects/p/messages/1");
    assert_eq!(
        a,
        r#"{"message_type":"ack","message_id":"m-1","from":"/topics/news","name":"projects/p/messages/1"}"#
    );
    let a = ack_json("q\"\\\n", "'a' in topics && 'b' in topics", "n");
    let v: Value = serde_json::from_str(&a).unwrap();
    assert_eq!(
        v,
        json!({"message_type": "ack", "message_id": "q\"\\\n",
               "from": "'a' in topics && 'b' in topics", "name": "n"})
    );
    // It parses as the XMPP ack does.
    let inbound = fcm::parse_inbound(&ack_json("m-2", "tok", "projects/p/messages/2")).unwrap();
    assert!(
        matches!(inbound, fcm::Inbound::Ack(ref a) if a.message_id == "m-2"),
        "{inbound:?}"
    );
}

// ---- one test per row -------------------------------------------------------

#[test]
fn row_invalid_argument_bad_token_by_message() {
    // Google's current answer: FcmError INVALID_ARGUMENT, no field violation.
    let body = status_body(
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
        Some(json!([fcm_error("INVALID_ARGUMENT")])),
    );
    let f = classify(400, None, &body);
    final_(&f, "BAD_REGISTRATION");
    assert_eq!(f.fcm_error.as_deref(), Some("INVALID_ARGUMENT"));
    assert_eq!(f.http_status, 400);
    assert_eq!(
        f.description,
        "The registration token is not a valid FCM registration token"
    );
}

#[test]
fn row_invalid_argument_bad_token_by_field_violation() {
    // The older answer: a field violation on message.token, in either order.
    for details in [
        json!([fcm_error("INVALID_ARGUMENT"), bad_request("message.token")]),
        json!([bad_request("message.token"), fcm_error("INVALID_ARGUMENT")]),
        json!([bad_request("message.data"), bad_request("message.token")]),
    ] {
        let body = status_body(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            Some(details.clone()),
        );
        let f = classify(400, None, &body);
        final_(&f, "BAD_REGISTRATION");
        assert_eq!(
            f.description, "Request contains an invalid argument.",
            "{details}"
        );
    }
}

#[test]
fn row_invalid_argument_otherwise_invalid_json() {
    // The emulator's and Google's unknown-field answer: BadRequest, no FcmError.
    let body = status_body(
        400,
        "INVALID_ARGUMENT",
        "Invalid JSON payload received. Unknown name \"foo\" at 'message': Cannot find field.",
        Some(json!([bad_request("message")])),
    );
    let f = classify(400, None, &body);
    final_(&f, "INVALID_JSON");
    assert_eq!(f.fcm_error, None);
    assert!(f.description.starts_with("Invalid JSON payload received."));
    // With an FcmError and a field violation elsewhere.
    let body = status_body(
        400,
        "INVALID_ARGUMENT",
        "bad ttl",
        Some(json!([
            bad_request("message.android.ttl"),
            fcm_error("INVALID_ARGUMENT")
        ])),
    );
    final_(&classify(400, None, &body), "INVALID_JSON");
    // A bare 400 with no body at all.
    let f = classify(400, None, b"");
    final_(&f, "INVALID_JSON");
    assert_eq!(f.description, "HTTP 400");
}

#[test]
fn row_unregistered() {
    let body = status_body(
        404,
        "NOT_FOUND",
        "Requested entity was not found.",
        Some(json!([fcm_error("UNREGISTERED")])),
    );
    let f = classify(404, None, &body);
    final_(&f, "DEVICE_UNREGISTERED");
    assert_eq!(f.fcm_error.as_deref(), Some("UNREGISTERED"));
    assert_eq!(f.description, "Requested entity was not found.");
}

#[test]
fn row_sender_id_mismatch() {
    let body = status_body(
        403,
        "PERMISSION_DENIED",
        "SenderId mismatch",
        Some(json!([fcm_error("SENDER_ID_MISMATCH")])),
    );
    let f = classify(403, None, &body);
    final_(&f, "SENDER_ID_MISMATCH");
    assert_eq!(f.fcm_error.as_deref(), Some("SENDER_ID_MISMATCH"));
}

#[test]
fn row_third_party_auth_error() {
    let body = status_body(
        401,
        "UNAUTHENTICATED",
        "Auth error from APNS or Web Push Service",
        Some(json!([fcm_error("THIRD_PARTY_AUTH_ERROR")])),
    );
    let f = classify(401, None, &body);
    final_(&f, "INVALID_APNS_CREDENTIAL");
    assert_eq!(f.fcm_error.as_deref(), Some("THIRD_PARTY_AUTH_ERROR"));
}

#[test]
fn row_quota_exceeded() {
    let body = status_body(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send requests'",
        Some(json!([quota_failure(), fcm_error("QUOTA_EXCEEDED")])),
    );
    let f = classify(429, Some("30"), &body);
    assert_eq!(
        f.class,
        FailureClass::Retry {
            after: Some(Duration::from_secs(30)),
            target_backoff: true
        }
    );
    assert_eq!(f.error, MAX_RETRIES);
    assert_eq!(f.fcm_error.as_deref(), Some("QUOTA_EXCEEDED"));
    // Without Retry-After, and details the other way round.
    let body = status_body(
        429,
        "RESOURCE_EXHAUSTED",
        "q",
        Some(json!([fcm_error("QUOTA_EXCEEDED"), quota_failure()])),
    );
    assert_eq!(
        classify(429, None, &body).class,
        FailureClass::Retry {
            after: None,
            target_backoff: true
        }
    );
    // A 429 without any FcmError is a quota answer too.
    assert_eq!(
        classify(429, Some("7"), b"Too Many Requests").class,
        FailureClass::Retry {
            after: Some(Duration::from_secs(7)),
            target_backoff: true
        }
    );
}

#[test]
fn row_unavailable_internal_and_5xx_retry() {
    let cases: Vec<(u16, Vec<u8>, Option<&str>)> = vec![
        (503, status_body(503, "UNAVAILABLE", "The service is currently unavailable.", Some(json!([fcm_error("UNAVAILABLE")]))), Some("UNAVAILABLE")),
        (500, status_body(500, "INTERNAL", "Internal error encountered.", Some(json!([fcm_error("INTERNAL")]))), Some("INTERNAL")),
        (500, status_body(500, "INTERNAL", "Internal error encountered.", None), None),
        (503, b"".to_vec(), None),
        (502, b"<!DOCTYPE html>\n<html lang=en>\n  <title>Error 502 (Server Error)!!1</title>\n</html>".to_vec(), None),
        (504, b"<html><body>Gateway Timeout</body></html>".to_vec(), None),
        // An UNAVAILABLE errorCode under an odd status still retries.
        (409, status_body(409, "ABORTED", "x", Some(json!([fcm_error("UNAVAILABLE")]))), Some("UNAVAILABLE")),
    ];
    for (status, body, code) in cases {
        for (ra, after) in [
            (None, None),
            (Some("120"), Some(Duration::from_secs(120))),
            (Some(" 5 "), Some(Duration::from_secs(5))),
        ] {
            let f = classify(status, ra, &body);
            assert_eq!(
                f.class,
                FailureClass::Retry {
                    after,
                    target_backoff: false
                },
                "{status} {ra:?}"
            );
            assert_eq!(f.error, MAX_RETRIES);
            assert_eq!(f.fcm_error.as_deref(), code);
            assert_eq!(f.http_status, status);
        }
    }
}

#[test]
fn html_bodies_get_a_short_description() {
    let html = b"<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 502 (Server Error)!!1</title>\n".repeat(50);
    let f = classify(502, None, &html);
    assert!(
        f.description
            .starts_with("HTTP 502, body not JSON: <!DOCTYPE html> <html lang=en>"),
        "{}",
        f.description
    );
    assert!(f.description.chars().count() < 200, "{}", f.description);
    assert!(!f.description.contains('\n'));
}

#[test]
fn row_401_without_fcm_error_refreshes_the_token() {
    let body = status_body(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials.",
        None,
    );
    let f = classify(401, None, &body);
    assert_eq!(f.class, FailureClass::RefreshToken);
    assert_eq!(f.error, "UNAUTHENTICATED");
    assert_eq!(f.fcm_error, None);
    assert_eq!(classify(401, None, b"").error, "HTTP_401");
    assert_eq!(classify(401, None, b"").class, FailureClass::RefreshToken);
}

#[test]
fn row_403_without_fcm_error_is_an_auth_error() {
    let body = status_body(
        403,
        "PERMISSION_DENIED",
        "Firebase Cloud Messaging API has not been used in project 1 before or it is disabled.",
        Some(
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED"}]),
        ),
    );
    let f = classify(403, None, &body);
    assert_eq!(f.class, FailureClass::AuthError);
    assert_eq!(f.error, "PERMISSION_DENIED");
    assert!(f.description.contains("disabled"));
    assert_eq!(
        classify(403, None, b"<html>").class,
        FailureClass::AuthError
    );
}

#[test]
fn row_anything_else() {
    // Another errorCode: final with it.
    let body = status_body(
        400,
        "FAILED_PRECONDITION",
        "x",
        Some(json!([fcm_error("UNSPECIFIED_ERROR")])),
    );
    let f = classify(412, None, &body);
    final_(&f, "UNSPECIFIED_ERROR");
    assert_eq!(f.fcm_error.as_deref(), Some("UNSPECIFIED_ERROR"));
    let body = status_body(400, "X", "x", Some(json!([fcm_error("SOME_FUTURE_CODE")])));
    final_(&classify(422, None, &body), "SOME_FUTURE_CODE");
    // No errorCode: HTTP_<status>.
    final_(&classify(418, None, b"I'm a teapot"), "HTTP_418");
    final_(
        &classify(409, None, &status_body(409, "ABORTED", "x", None)),
        "HTTP_409",
    );
    final_(&classify(301, None, b""), "HTTP_301");
    // A bare 404 is not DEVICE_UNREGISTERED: Google always names an
    // unregistered token with an FcmError.
    let f = classify(404, None, b"<html>Not Found</html>");
    final_(&f, "HTTP_404");
    final_(
        &classify(
            404,
            None,
            &status_body(404, "NOT_FOUND", "Requested entity was not found.", None),
        ),
        "HTTP_404",
    );
}

#[test]
fn fcm_error_decides_before_the_status() {
    // An FcmError under 401 / 403 is not a token problem.
    let body = status_body(
        403,
        "PERMISSION_DENIED",
        "x",
        Some(json!([fcm_error("UNREGISTERED")])),
    );
    final_(&classify(403, None, &body), "DEVICE_UNREGISTERED");
    let body = status_body(
        401,
        "UNAUTHENTICATED",
        "x",
        Some(json!([fcm_error("SENDER_ID_MISMATCH")])),
    );
    final_(&classify(401, None, &body), "SENDER_ID_MISMATCH");
    // An FcmError with a final code under a 5xx status is final.
    let body = status_body(
        503,
        "UNAVAILABLE",
        "x",
        Some(json!([fcm_error("UNREGISTERED")])),
    );
    final_(&classify(503, None, &body), "DEVICE_UNREGISTERED");
}

#[test]
fn details_in_any_order_or_shape() {
    let body = |details: Value| status_body(404, "NOT_FOUND", "gone", Some(details));
    for d in [
        json!([fcm_error("UNREGISTERED")]),
        json!([quota_failure(), bad_request("x"), fcm_error("UNREGISTERED")]),
        json!([1, "x", null, {}, {"@type": 5}, fcm_error("UNREGISTERED")]),
        // The first FcmError counts.
        json!([fcm_error("UNREGISTERED"), fcm_error("INTERNAL")]),
        // snake_case spelling, and a @type without the URL prefix.
        json!([{"@type": "google.firebase.fcm.v1.FcmError", "error_code": "UNREGISTERED"}]),
    ] {
        final_(
            &classify(404, None, &body(d.clone())),
            "DEVICE_UNREGISTERED",
        );
    }
    // Missing, or not an array: decided by status.
    for d in [
        None,
        Some(json!({})),
        Some(json!("x")),
        Some(json!([{"@type": FCM_ERROR}])),
        Some(json!([{"@type": FCM_ERROR, "errorCode": 7}])),
    ] {
        let f = classify(404, None, &status_body(404, "NOT_FOUND", "gone", d.clone()));
        final_(&f, "HTTP_404");
        assert_eq!(f.fcm_error, None, "{d:?}");
    }
    // A type that only ends like FcmError is not one.
    let d = json!([{"@type": "type.googleapis.com/evil.FcmErrorX", "errorCode": "UNREGISTERED"}]);
    final_(&classify(404, None, &body(d)), "HTTP_404");
}

#[test]
fn strange_bodies_never_panic_and_still_classify() {
    let bodies: &[&[u8]] = &[
        b"",
        b"null",
        b"[]",
        b"{}",
        b"{\"error\":null}",
        b"{\"error\":[]}",
        b"{\"error\":{\"message\":5,\"status\":[],\"details\":5}}",
        b"{\"error\":{\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.BadRequest\",\"fieldViolations\":5}]}}",
        b"{\"error\":{\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.BadRequest\",\"fieldViolations\":[5,{\"field\":1}]}]}}",
        b"{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT\"}",
        b"\xff\xfe\x00garbage",
        b"{\"error\":{\"message\":\"truncated",
        b"\x1b[31mred\x07",
    ];
    for &b in bodies {
        for status in [
            0,
            200,
            400,
            401,
            403,
            404,
            429,
            500,
            502,
            503,
            504,
            599,
            999,
            u16::MAX,
        ] {
            let f = classify(status, Some("garbage"), b);
            assert_eq!(f.http_status, status);
            assert!(!f.error.is_empty());
            assert!(!f.description.is_empty());
            assert!(
                !f.description.chars().any(char::is_control),
                "{:?}",
                f.description
            );
        }
    }
    let f = classify(
        400,
        None,
        b"{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT\"}",
    );
    assert_eq!(f.description, "Invalid JWT");
}

#[test]
fn descriptions_are_one_printable_line() {
    // Found by fuzzing: a Status message with control characters.
    let body = status_body(
        400,
        "INVALID_ARGUMENT",
        "line one\nline\u{7f} two\r\u{1b}[31m",
        None,
    );
    assert_eq!(
        classify(400, None, &body).description,
        "line one line  two  [31m"
    );
    let body = serde_json::to_vec(&json!({"error": {"details": [{"@type": BAD_REQUEST,
        "fieldViolations": [{"field": "f", "description": "a\tb"}]}]}}))
    .unwrap();
    assert_eq!(classify(400, None, &body).description, "a b");
}

#[test]
fn long_messages_are_cut() {
    let body = status_body(400, "INVALID_ARGUMENT", &"é".repeat(5000), None);
    let f = classify(400, None, &body);
    assert_eq!(f.description.chars().count(), 512);
}

#[test]
fn field_violation_description_when_no_message() {
    let body = serde_json::to_vec(
        &json!({"error": {"code": 400, "details": [bad_request("message.data")]}}),
    )
    .unwrap();
    let f = classify(400, None, &body);
    assert_eq!(f.description, "bad message.data");
}

// ---- Retry-After --------------------------------------------------------------

#[test]
fn retry_after_forms() {
    assert_eq!(
        RetryAfter::parse("0"),
        Some(RetryAfter::Delay(Duration::ZERO))
    );
    assert_eq!(
        RetryAfter::parse(" 42\t"),
        Some(RetryAfter::Delay(Duration::from_secs(42)))
    );
    assert_eq!(
        RetryAfter::parse("99999999999999999999999"),
        Some(RetryAfter::Delay(Duration::from_secs(u64::MAX)))
    );
    assert_eq!(
        RetryAfter::parse("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(RetryAfter::At(1_445_412_480))
    );
    for bad in [
        "",
        " ",
        "-1",
        "1.5",
        "+3",
        "3s",
        "soon",
        "Wednesday, 21-Oct-15 07:28:00 GMT",
        "Wed Oct 21 07:28:00 2015",
    ] {
        assert_eq!(RetryAfter::parse(bad), None, "{bad:?}");
    }
    assert_eq!(
        RetryAfter::At(100).delay_from(90_500),
        Duration::from_millis(9_500)
    );
    assert_eq!(RetryAfter::At(100).delay_from(200_000), Duration::ZERO);
    assert_eq!(
        RetryAfter::Delay(Duration::from_secs(3)).delay_from(i64::MAX),
        Duration::from_secs(3)
    );
}

#[test]
fn retry_after_date_is_unknown_without_a_clock_and_honoured_with_one() {
    let date = "Wed, 21 Oct 2015 07:28:00 GMT";
    let now_ms = 1_445_412_480_000 - 90_000;
    let f = classify(503, Some(date), b"");
    assert_eq!(
        f.class,
        FailureClass::Retry {
            after: None,
            target_backoff: false
        }
    );
    let f = classify_at(503, Some(date), b"", now_ms);
    assert_eq!(
        f.class,
        FailureClass::Retry {
            after: Some(Duration::from_secs(90)),
            target_backoff: false
        }
    );
    let f = classify_at(429, Some("12"), b"", now_ms);
    assert_eq!(
        f.class,
        FailureClass::Retry {
            after: Some(Duration::from_secs(12)),
            target_backoff: true
        }
    );
    // A date in the past: retry now (after the backoff).
    let f = classify_at(503, Some(date), b"", now_ms + 1_000_000);
    assert_eq!(
        f.class,
        FailureClass::Retry {
            after: Some(Duration::ZERO),
            target_backoff: false
        }
    );
    // Retry-After is ignored where nothing is retried.
    let body = status_body(
        404,
        "NOT_FOUND",
        "x",
        Some(json!([fcm_error("UNREGISTERED")])),
    );
    assert_eq!(classify(404, Some("30"), &body).class, FailureClass::Final);
}

proptest! {
    #[test]
    fn classify_never_panics(
        status in any::<u16>(),
        retry_after in prop::option::of(".{0,40}"),
        body in prop::collection::vec(any::<u8>(), 0..300),
        now in any::<i64>(),
    ) {
        let f = classify(status, retry_after.as_deref(), &body);
        prop_assert_eq!(f.http_status, status);
        prop_assert!(!f.error.is_empty());
        let g = classify_at(status, retry_after.as_deref(), &body, now);
        prop_assert_eq!(&f.error, &g.error);
        prop_assert_eq!(&f.fcm_error, &g.fcm_error);
        let _ = parse_success(&body);
    }

    #[test]
    fn classify_any_status_body(
        status in any::<u16>(),
        code in prop::option::of(prop::sample::select(vec![
            "INVALID_ARGUMENT", "UNREGISTERED", "SENDER_ID_MISMATCH", "QUOTA_EXCEEDED",
            "UNAVAILABLE", "INTERNAL", "THIRD_PARTY_AUTH_ERROR", "UNSPECIFIED_ERROR", "",
        ])),
        token_field in any::<bool>(),
        shuffle in any::<bool>(),
    ) {
        let mut details = vec![quota_failure(), bad_request(if token_field { "message.token" } else { "message.data" })];
        if let Some(c) = code {
            details.push(fcm_error(c));
        }
        if shuffle {
            details.reverse();
        }
        let body = status_body(status, "S", "m", Some(Value::Array(details)));
        let f = classify(status, None, &body);
        // RefreshToken / AuthError only without an FcmError.
        if matches!(f.class, FailureClass::RefreshToken | FailureClass::AuthError) {
            prop_assert!(code.is_none() || code == Some(""));
        }
        if code == Some("INVALID_ARGUMENT") {
            prop_assert_eq!(f.error, if token_field { "BAD_REGISTRATION" } else { "INVALID_JSON" });
        }
    }
}
