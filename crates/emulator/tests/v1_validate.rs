//! Body validation and the token registry of `messages:send` (SPEC §9), over
//! real TLS and HTTP/2.
#![allow(clippy::unwrap_used)]

mod v1_common;

use std::collections::HashSet;

use emulator::v1::{V1Faults, BAD_REQUEST_TYPE, FCM_ERROR_TYPE, INVALID_TOKEN_MESSAGE};
use serde_json::{json, Value};
use v1_common::*;

/// What a case expects: HTTP status, FcmError code (None = no FcmError), a
/// substring of the Status message, and the field of the first violation.
struct Want {
    status: u16,
    code: Option<&'static str>,
    message: &'static str,
    field: Option<&'static str>,
}

const fn ok() -> Want {
    Want {
        status: 200,
        code: None,
        message: "",
        field: None,
    }
}

const fn parse(field: &'static str, message: &'static str) -> Want {
    Want {
        status: 400,
        code: None,
        message,
        field: Some(field),
    }
}

const fn invalid(message: &'static str) -> Want {
    Want {
        status: 400,
        code: Some("INVALID_ARGUMENT"),
        message,
        field: None,
    }
}

fn check(name: &str, r: &Resp, want: &Want) {
    assert_eq!(r.status, want.status, "{name}: {:?}", r.body);
    if want.status == 200 {
        let n = r.json()["name"].as_str().unwrap().to_owned();
        assert!(n.starts_with("projects/"), "{name}: {n}");
        return;
    }
    let v = r.json();
    assert_eq!(v["error"]["code"], want.status, "{name}");
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{name}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(want.message), "{name}: message {msg:?}");
    assert_eq!(r.error_code().as_deref(), want.code, "{name}: {v}");
    if let Some(field) = want.field {
        let br = r
            .detail(BAD_REQUEST_TYPE)
            .unwrap_or_else(|| panic!("{name}: no BadRequest: {v}"));
        let got = br["fieldViolations"][0]["field"].as_str().unwrap_or("");
        assert_eq!(got, field, "{name}: {v}");
    }
}

#[tokio::test]
async fn validation_rules() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;
    let t = TOKEN;
    let big = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, Value, Want)> = vec![
        ("minimal", json!({"message":{"token":t}}), ok()),
        ("snake_case", json!({"message":{"token":t,"android":{"collapse_key":"c","restricted_package_name":"p",
            "direct_boot_ok":true,"notification":{"click_action":"a","channel_id":"c","body_loc_args":["x"],
            "notification_count":2,"light_settings":{"color":{"red":1,"green":0.5,"blue":0},
            "light_on_duration":"0.5s","light_off_duration":"1s"},"event_time":"2024-05-06T07:08:09Z",
            "vibrate_timings":["0.1s"],"default_sound":true,"visibility":"PUBLIC"},
            "fcm_options":{"analytics_label":"l"}},"apns":{"headers":{"apns-priority":"10"},
            "payload":{"aps":{"alert":{"title":"t"},"badge":3,"content-available":1}},
            "fcm_options":{"image":"https://i"}},"webpush":{"headers":{"Urgency":"high"},
            "data":{"a":"b"},"notification":{"title":"t","requireInteraction":true},
            "fcm_options":{"link":"https://l"}},"fcm_options":{"analytics_label":"x"}},"validate_only":false}), ok()),
        ("lowerCamelCase", json!({"message":{"token":t,"android":{"collapseKey":"c","restrictedPackageName":"p",
            "directBootOk":true,"notification":{"clickAction":"a","channelId":"c","bodyLocArgs":["x"],
            "notificationCount":2,"lightSettings":{"color":{"red":1},"lightOnDuration":"1s","lightOffDuration":"1s"},
            "notificationPriority":"PRIORITY_HIGH","defaultVibrateTimings":true},
            "fcmOptions":{"analyticsLabel":"l"}},"fcmOptions":{"analyticsLabel":"x"}},"validateOnly":false}), ok()),
        ("nulls are unset", json!({"message":{"token":t,"android":null,"notification":null}}), ok()),
        // Unknown names: no FcmError, a BadRequest violation naming the parent.
        ("unknown in message", json!({"message":{"token":t,"x":1}}),
            parse("message", "Invalid JSON payload received. Unknown name \"x\" at 'message': Cannot find field.")),
        ("unknown in android.notification", json!({"message":{"token":t,"android":{"notification":{"colour":"#000000"}}}}),
            parse("message.android.notification", "Unknown name \"colour\" at 'message.android.notification'")),
        ("unknown at top level", json!({"message":{"token":t},"dry_run":true}),
            parse("", "Unknown name \"dry_run\": Cannot find field.")),
        ("legacy 'to'", json!({"message":{"to":t}}), parse("message", "Unknown name \"to\"")),
        ("legacy top-level priority", json!({"message":{"token":t,"priority":"high"}}), parse("message", "Unknown name \"priority\"")),
        // Targets.
        ("no target", json!({"message":{"data":{"a":"b"}}}), invalid("Recipient of the message is not set.")),
        ("no message", json!({"validate_only":true}), invalid("Recipient of the message is not set.")),
        ("two targets", json!({"message":{"token":t,"topic":"news"}}),
            parse("message", "Oneof field 'target' is already set. Cannot set 'topic'")),
        ("topic", json!({"message":{"topic":"news"}}), ok()),
        ("topic with prefix", json!({"message":{"topic":"/topics/news"}}), ok()),
        ("bad topic", json!({"message":{"topic":"no spaces"}}), invalid("Topic name is not valid")),
        ("condition", json!({"message":{"condition":"'a' in topics && ('b' in topics || 'c' in topics)"}}), ok()),
        ("bad condition", json!({"message":{"condition":"'a' in topics &&"}}), invalid("Invalid condition")),
        // Data.
        ("data number", json!({"message":{"token":t,"data":{"a":"x","n":1}}}),
            parse("message.data[1].value", "Invalid value at 'message.data[1].value' (TYPE_STRING), 1")),
        ("data object", json!({"message":{"token":t,"data":{"o":{"k":"v"}}}}), parse("message.data[0].value", "TYPE_STRING")),
        ("data not a map", json!({"message":{"token":t,"data":"x"}}), parse("message.data", "Invalid value at 'message.data'")),
        ("reserved from", json!({"message":{"token":t,"data":{"from":"x"}}}), invalid("Invalid data payload key: from")),
        ("reserved message_type", json!({"message":{"token":t,"data":{"message_type":"x"}}}), invalid("Invalid data payload key: message_type")),
        ("reserved google.", json!({"message":{"token":t,"data":{"google.c.a":"x"}}}), invalid("Invalid data payload key: google.c.a")),
        ("reserved gcm.", json!({"message":{"token":t,"data":{"gcm.notification.x":"x"}}}), invalid("Invalid data payload key")),
        ("reserved in android.data", json!({"message":{"token":t,"android":{"data":{"from":"x"}}}}), invalid("Invalid data payload key: from")),
        // Payload size: key bytes plus value bytes over data and notification.
        ("4096 bytes", json!({"message":{"token":t,"data":{"k":big(4095)}}}), ok()),
        ("4097 bytes", json!({"message":{"token":t,"data":{"k":big(4096)}}}), invalid("Android message is too big")),
        ("notification counts", json!({"message":{"token":t,"data":{"k":big(3000)},"notification":{"body":big(1200)}}}),
            invalid("too big")),
        ("topic 2048 bytes", json!({"message":{"topic":"t","data":{"k":big(2047)}}}), ok()),
        ("topic 2049 bytes", json!({"message":{"topic":"t","data":{"k":big(2048)}}}), invalid("Topic message is too big")),
        ("condition 2049 bytes", json!({"message":{"condition":"'t' in topics","data":{"k":big(2048)}}}), invalid("too big")),
        // android.ttl.
        ("ttl 3.5s", json!({"message":{"token":t,"android":{"ttl":"3.5s"}}}), ok()),
        ("ttl 0s", json!({"message":{"token":t,"android":{"ttl":"0s"}}}), ok()),
        ("ttl 4 weeks", json!({"message":{"token":t,"android":{"ttl":"2419200s"}}}), ok()),
        ("ttl no unit", json!({"message":{"token":t,"android":{"ttl":"60"}}}),
            parse("message.android.ttl", "(type.googleapis.com/google.protobuf.Duration), \"60\"")),
        ("ttl number", json!({"message":{"token":t,"android":{"ttl":60}}}), parse("message.android.ttl", "google.protobuf.Duration")),
        ("ttl garbage", json!({"message":{"token":t,"android":{"ttl":"1h"}}}), parse("message.android.ttl", "Duration")),
        ("ttl over 4 weeks", json!({"message":{"token":t,"android":{"ttl":"2419201s"}}}),
            Want { field: Some("message.android.ttl"), ..invalid("TTL must be between") }),
        ("ttl negative", json!({"message":{"token":t,"android":{"ttl":"-5s"}}}), invalid("TTL must be between")),
        // Enums, in either case, or by number.
        ("priority HIGH", json!({"message":{"token":t,"android":{"priority":"HIGH"}}}), ok()),
        ("priority high", json!({"message":{"token":t,"android":{"priority":"high"}}}), ok()),
        ("priority normal", json!({"message":{"token":t,"android":{"priority":"normal"}}}), ok()),
        ("priority Normal", json!({"message":{"token":t,"android":{"priority":"Normal"}}}), ok()),
        ("priority 1", json!({"message":{"token":t,"android":{"priority":1}}}), ok()),
        ("priority urgent", json!({"message":{"token":t,"android":{"priority":"urgent"}}}),
            parse("message.android.priority", "AndroidMessagePriority), \"urgent\"")),
        ("visibility bogus", json!({"message":{"token":t,"android":{"notification":{"visibility":"HIDDEN"}}}}),
            parse("message.android.notification.visibility", "Visibility")),
        // Other types.
        ("bool as string", json!({"message":{"token":t,"android":{"direct_boot_ok":"true"}}}),
            parse("message.android.direct_boot_ok", "TYPE_BOOL")),
        ("token as number", json!({"message":{"token":7}}), parse("message.token", "TYPE_STRING")),
        ("android as string", json!({"message":{"token":t,"android":"x"}}), parse("message.android", "AndroidConfig")),
        ("apns payload array", json!({"message":{"token":t,"apns":{"payload":[1]}}}), parse("message.apns.payload", "Struct")),
        ("apns header number", json!({"message":{"token":t,"apns":{"headers":{"apns-priority":10}}}}),
            parse("message.apns.headers[0].value", "TYPE_STRING")),
        ("loc args not strings", json!({"message":{"token":t,"android":{"notification":{"title_loc_args":[1]}}}}),
            parse("message.android.notification.title_loc_args[0]", "TYPE_STRING")),
        ("bad timestamp", json!({"message":{"token":t,"android":{"notification":{"event_time":"now"}}}}),
            parse("message.android.notification.event_time", "Timestamp")),
        ("bad color", json!({"message":{"token":t,"android":{"notification":{"color":"red"}}}}),
            Want { field: Some("message.android.notification.color"), ..invalid("#rrggbb") }),
        ("root not an object", json!([1, 2]), parse("", "Root element must be a message")),
        // Tokens.
        ("malformed token", json!({"message":{"token":"not a token!"}}), invalid(INVALID_TOKEN_MESSAGE)),
        ("empty token", json!({"message":{"token":""}}), invalid(INVALID_TOKEN_MESSAGE)),
        ("long token", json!({"message":{"token":big(4097)}}), invalid(INVALID_TOKEN_MESSAGE)),
    ];
    for (name, body, want) in &cases {
        let r = s.send(body).await;
        check(name, &r, want);
    }
    // Several problems are reported together.
    let r = s
        .send(&json!({"message":{"token":t,"a":1,"android":{"b":2,"ttl":"x"}}}))
        .await;
    let v = r.json();
    assert_eq!(r.status, 400);
    let fv = r.detail(BAD_REQUEST_TYPE).unwrap()["fieldViolations"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(fv, 3, "{v}");
    assert_eq!(v["error"]["message"].as_str().unwrap().lines().count(), 3);

    // Google's current answer to a malformed token has no field violation.
    let r = s.send(&json!({"message":{"token":"bad token"}})).await;
    assert!(r.detail(BAD_REQUEST_TYPE).is_none(), "{}", r.json());
    // Malformed JSON.
    let r = s.send_raw(b"{\"message\": {\"token\": ").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Invalid JSON payload received."));
    assert_eq!(r.error_code(), None);
    emu.shutdown().await;
}

#[tokio::test]
async fn legacy_token_field_violation_fault() {
    let emu = start(V1Faults {
        legacy_token_violation: true,
        ..V1Faults::default()
    })
    .await;
    let mut s = sender(&emu).await;
    let r = s.send(&json!({"message":{"token":"bad token"}})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code().as_deref(), Some("INVALID_ARGUMENT"));
    assert_eq!(r.json()["error"]["message"], INVALID_TOKEN_MESSAGE);
    let br = r.detail(BAD_REQUEST_TYPE).unwrap();
    assert_eq!(br["fieldViolations"][0]["field"], "message.token");
    emu.shutdown().await;
}

#[tokio::test]
async fn token_registry() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;

    let r = s.send(&msg_to("unregistered-device-1", "v")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["status"], "NOT_FOUND");
    assert_eq!(r.error_code().as_deref(), Some("UNREGISTERED"));

    let r = s.send(&msg_to("mismatch-device-1", "v")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(r.error_code().as_deref(), Some("SENDER_ID_MISMATCH"));

    // Well-formed tokens are devices, until marked gone.
    let dev = "device-to-forget";
    assert_eq!(s.send(&msg_to(dev, "1")).await.status, 200);
    emu.mark_unregistered(dev);
    let r = s.send(&msg_to(dev, "2")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code().as_deref(), Some("UNREGISTERED"));
    // validate_only checks the registry too.
    let mut dry = msg_to(dev, "3");
    dry["validate_only"] = true.into();
    assert_eq!(s.send(&dry).await.status, 404);

    // Through the stats endpoint as well.
    let emu2 = start_with(emulator::v1::V1Config {
        stats_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..emulator::v1::V1Config::default()
    })
    .await;
    let mut s2 = sender(&emu2).await;
    assert_eq!(s2.send(&msg_to("dev-b", "1")).await.status, 200);
    let (st, v) = stats_http(emu2.stats_addr().unwrap(), "POST", "/unregister/dev-b", "").await;
    assert_eq!(st, 200);
    assert_eq!(v["unregistered"], "dev-b");
    assert_eq!(s2.send(&msg_to("dev-b", "2")).await.status, 404);

    let st = emu.stats();
    assert_eq!(st.error_code("UNREGISTERED"), 3);
    assert_eq!(st.error_code("SENDER_ID_MISMATCH"), 1);
    assert_eq!(st.status(404), 3);
    emu.shutdown().await;
    emu2.shutdown().await;
}

#[tokio::test]
async fn success_names_are_unique_and_validate_only_is_fake() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;
    let prefix = format!("projects/{}/messages/", emu.project_id());
    let mut names = HashSet::new();
    for i in 0..50 {
        let r = s.send(&msg_to(TOKEN, &i.to_string())).await;
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        let v = r.json();
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        let name = v["name"].as_str().unwrap().to_owned();
        assert!(name.starts_with(&prefix), "{name}");
        assert!(name.len() > prefix.len());
        assert!(names.insert(name));
    }
    for key in ["validate_only", "validateOnly"] {
        let mut m = msg_to(TOKEN, "dry");
        m[key] = true.into();
        let r = s.send(&m).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["name"], format!("{prefix}fake_message_id"));
    }
    let st = emu.stats();
    assert_eq!(st.ok, 52);
    assert_eq!(st.delivered, 50);
    assert_eq!(st.validated_only, 2);
    emu.shutdown().await;
}

#[tokio::test]
async fn status_bodies_have_googles_shape() {
    let emu = start(V1Faults::default()).await;
    let mut s = sender(&emu).await;
    let r = s.send(&msg_to("unregistered-x", "v")).await;
    assert_eq!(
        r.json(),
        json!({"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",
            "details":[{"@type":FCM_ERROR_TYPE,"errorCode":"UNREGISTERED"}]}})
    );
    // Unknown routes get Google's HTML 404.
    let r = s.c.post("/fcm/send", &[JSON_CT], b"{}".to_vec()).await;
    assert_eq!(r.status, 404);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(emu.stats().not_found, 1);
    emu.shutdown().await;
}
