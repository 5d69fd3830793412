//! SPEC §8.2: the translation of legacy `fcm_data` into the FCM HTTP v1
//! request body — one golden test per row of the table, combinations, the
//! pass-through merge, the v1 validation and its errors, the XMPP link's
//! v1-block check, and a proptest over valid legacy messages.
#![allow(clippy::unwrap_used)]

use fcm::v1::{self, NO_RECEIPTS_WARNING};
use fcm::ErrorCode;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Accepted at 2023-11-14T22:13:20Z.
const ACC: i64 = 1_700_000_000_000;
const TOKEN: &str = "tok:APA91b-x_y.z";

/// Translates at the moment of acceptance and parses the body.
fn tr(v: Value) -> Value {
    tr_at(v, ACC)
}

fn tr_at(v: Value, now: i64) -> Value {
    let body = v1::translate(&v, ACC, now).unwrap_or_else(|r| panic!("rejected: {r} ({v})"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON: {e}: {body}"))
}

fn msg(v: Value) -> Value {
    tr(v)["message"].clone()
}

fn rejected(v: Value) -> fcm::Rejection {
    match v1::translate(&v, ACC, ACC) {
        Ok(body) => panic!("accepted: {v} -> {body}"),
        Err(r) => r,
    }
}

fn assert_rejects(v: Value, needle: &str) {
    let r = rejected(v.clone());
    assert_eq!(r.code, ErrorCode::InvalidJson, "{v}: {r}");
    assert!(
        r.description.contains(needle),
        "{v}: description {:?} lacks {needle:?}",
        r.description
    );
    // Acceptance-time validation refuses it too.
    assert!(v1::validate(&v).is_err(), "validate accepted {v}");
}

// ---- golden: exact bytes -------------------------------------------------

#[test]
fn golden_typical_message_exact_bytes() {
    let v = json!({"to": TOKEN, "message_id": "m-1",
                   "data": {"score": "3x1", "n": 3, "ok": true},
                   "notification": {"title": "Hi", "body": "There"},
                   "time_to_live": 600});
    let body = v1::translate(&v, ACC, ACC + 2_500).unwrap();
    assert_eq!(
        body,
        r#"{"message":{"token":"tok:APA91b-x_y.z","data":{"n":"3","ok":"true","score":"3x1"},"notification":{"title":"Hi","body":"There"},"android":{"ttl":"597s"},"apns":{"headers":{"apns-expiration":"1700000600"}}}}"#
    );
}

#[test]
fn golden_every_option_exact_bytes() {
    let v = json!({"to": "/topics/news", "priority": "high", "collapse_key": "ck",
                   "content_available": true, "mutable_content": true,
                   "restricted_package_name": "com.example", "dry_run": true,
                   "time_to_live": 0, "delivery_receipt_requested": true,
                   "notification": {"title": "T", "body": "B", "sound": "default",
                                    "badge": "3", "click_action": "OPEN", "subtitle": "S",
                                    "body_loc_key": "bk", "body_loc_args": "[\"a\",\"b\"]",
                                    "title_loc_key": "tk", "title_loc_args": ["c"],
                                    "android_channel_id": "chan", "icon": "ic",
                                    "tag": "tg", "color": "#ff0000", "image": "https://i/x.png"}});
    let body = v1::translate(&v, ACC, ACC).unwrap();
    assert_eq!(
        body,
        concat!(
            r#"{"message":{"topic":"news","#,
            r#""notification":{"title":"T","body":"B","image":"https://i/x.png"},"#,
            r#""android":{"collapse_key":"ck","priority":"HIGH","ttl":"0s","restricted_package_name":"com.example","#,
            r##""notification":{"icon":"ic","color":"#ff0000","sound":"default","tag":"tg","click_action":"OPEN","##,
            r#""body_loc_key":"bk","body_loc_args":["a","b"],"title_loc_key":"tk","title_loc_args":["c"],"channel_id":"chan"}},"#,
            r#""apns":{"headers":{"apns-priority":"10","apns-expiration":"0","apns-collapse-id":"ck"},"#,
            r#""payload":{"aps":{"alert":{"title":"T","body":"B","subtitle":"S","loc-key":"bk","loc-args":["a","b"],"#,
            r#""title-loc-key":"tk","title-loc-args":["c"]},"badge":3,"sound":"default","category":"OPEN","#,
            r#""content-available":1,"mutable-content":1}}}},"validate_only":true}"#
        )
    );
}

// ---- one test per row of the §8.2 table ----------------------------------

#[test]
fn row_to_topic() {
    let m = msg(json!({"to": "/topics/weather-eu_1.~%"}));
    assert_eq!(m, json!({"topic": "weather-eu_1.~%"}));
}

#[test]
fn row_to_token() {
    assert_eq!(msg(json!({"to": TOKEN})), json!({"token": TOKEN}));
}

#[test]
fn row_condition() {
    let c = "'a' in topics && ('b' in topics || 'c' in topics)";
    assert_eq!(msg(json!({"condition": c})), json!({"condition": c}));
}

#[test]
fn row_data_values_become_strings() {
    let m = msg(json!({"to": TOKEN, "data": {
        "s": "x", "i": 42, "neg": -1, "f": 1.5, "t": true, "nil": null,
        "obj": {"b": [1, "z"], "a": {}}, "arr": [], "esc": "q\"\n"}}));
    assert_eq!(
        m["data"],
        json!({"s": "x", "i": "42", "neg": "-1", "f": "1.5", "t": "true", "nil": "null",
               "obj": "{\"a\":{},\"b\":[1,\"z\"]}", "arr": "[]", "esc": "q\"\n"})
    );
    // Empty data: nothing to send.
    assert_eq!(
        msg(json!({"to": TOKEN, "data": {}})),
        json!({"token": TOKEN})
    );
}

#[test]
fn row_notification_title_body_image() {
    let m = msg(
        json!({"to": TOKEN, "notification": {"title": "T", "body": "B", "image": "https://x/i.png"}}),
    );
    assert_eq!(
        m,
        json!({"token": TOKEN, "notification": {"title": "T", "body": "B", "image": "https://x/i.png"}})
    );
    // Title or body alone; no android or apns part for them.
    let m = msg(json!({"to": TOKEN, "notification": {"body": "B"}}));
    assert_eq!(m, json!({"token": TOKEN, "notification": {"body": "B"}}));
}

#[test]
fn row_other_notification_keys_go_to_android_and_aps() {
    let cases: &[(&str, Value, Value, Value)] = &[
        // (legacy key, legacy value, android.notification, apns.payload.aps)
        (
            "sound",
            json!("ding"),
            json!({"sound": "ding"}),
            json!({"sound": "ding"}),
        ),
        ("badge", json!("7"), Value::Null, json!({"badge": 7})),
        ("badge", json!("0"), Value::Null, json!({"badge": 0})),
        (
            "click_action",
            json!("OPEN"),
            json!({"click_action": "OPEN"}),
            json!({"category": "OPEN"}),
        ),
        (
            "subtitle",
            json!("Sub"),
            Value::Null,
            json!({"alert": {"subtitle": "Sub"}}),
        ),
        ("icon", json!("ic"), json!({"icon": "ic"}), Value::Null),
        ("tag", json!("tg"), json!({"tag": "tg"}), Value::Null),
        (
            "color",
            json!("#112233"),
            json!({"color": "#112233"}),
            Value::Null,
        ),
        (
            "android_channel_id",
            json!("ch"),
            json!({"channel_id": "ch"}),
            Value::Null,
        ),
        (
            "body_loc_key",
            json!("BK"),
            json!({"body_loc_key": "BK"}),
            json!({"alert": {"loc-key": "BK"}}),
        ),
        (
            "title_loc_key",
            json!("TK"),
            json!({"title_loc_key": "TK"}),
            json!({"alert": {"title-loc-key": "TK"}}),
        ),
        (
            "body_loc_args",
            json!("[\"1\",\"two\"]"),
            json!({"body_loc_args": ["1", "two"]}),
            json!({"alert": {"loc-args": ["1", "two"]}}),
        ),
        (
            "title_loc_args",
            json!("[]"),
            json!({"title_loc_args": []}),
            json!({"alert": {"title-loc-args": []}}),
        ),
        // The array form the validation also accepts.
        (
            "body_loc_args",
            json!(["x"]),
            json!({"body_loc_args": ["x"]}),
            json!({"alert": {"loc-args": ["x"]}}),
        ),
    ];
    for (key, value, android, aps) in cases {
        let m = msg(json!({"to": TOKEN, "notification": {*key: value}}));
        let mut want = json!({"token": TOKEN});
        if !android.is_null() {
            want["android"] = json!({"notification": android});
        }
        if !aps.is_null() {
            want["apns"] = json!({"payload": {"aps": aps}});
        }
        assert_eq!(m, want, "notification.{key} = {value}");
    }
}

#[test]
fn alert_carries_title_and_body_only_when_written() {
    let m = msg(json!({"to": TOKEN, "notification": {"title": "T", "body": "B", "subtitle": "S"}}));
    assert_eq!(m["notification"], json!({"title": "T", "body": "B"}));
    assert_eq!(
        m["apns"]["payload"]["aps"]["alert"],
        json!({"title": "T", "body": "B", "subtitle": "S"})
    );
    let m = msg(json!({"to": TOKEN, "notification": {"title": "T", "sound": "s"}}));
    assert_eq!(m["apns"]["payload"]["aps"], json!({"sound": "s"}));
}

#[test]
fn unknown_notification_keys_and_nulls_are_dropped() {
    let m = msg(
        json!({"to": TOKEN, "notification": {"title": null, "whatever": {"x": 1}, "body": "B"}}),
    );
    assert_eq!(m, json!({"token": TOKEN, "notification": {"body": "B"}}));
}

#[test]
fn row_priority() {
    let m = msg(json!({"to": TOKEN, "priority": "normal"}));
    assert_eq!(m["android"], json!({"priority": "NORMAL"}));
    assert_eq!(m["apns"], json!({"headers": {"apns-priority": "5"}}));
    let m = msg(json!({"to": TOKEN, "priority": "high"}));
    assert_eq!(m["android"], json!({"priority": "HIGH"}));
    assert_eq!(m["apns"], json!({"headers": {"apns-priority": "10"}}));
}

#[test]
fn row_time_to_live_counts_from_acceptance() {
    let v = json!({"to": TOKEN, "time_to_live": 600});
    let at = |now: i64| tr_at(v.clone(), now)["message"].clone();
    // (elapsed ms, android.ttl)
    for (elapsed, ttl) in [
        (0, "600s"),
        (999, "599s"),
        (1_000, "599s"),
        (59_000, "541s"),
        (599_999, "0s"),
        (600_000, "0s"),
        (10_000_000, "0s"),
        // A clock that went backwards: no time has passed.
        (-5_000, "600s"),
    ] {
        let m = at(ACC + elapsed);
        assert_eq!(m["android"]["ttl"], json!(ttl), "elapsed {elapsed}");
        // The expiration does not move with the send time.
        assert_eq!(
            m["apns"]["headers"]["apns-expiration"],
            json!("1700000600"),
            "elapsed {elapsed}"
        );
    }
    let m = msg(json!({"to": TOKEN, "time_to_live": 0}));
    assert_eq!(m["android"], json!({"ttl": "0s"}));
    assert_eq!(m["apns"], json!({"headers": {"apns-expiration": "0"}}));
    let m = msg(json!({"to": TOKEN, "time_to_live": 2_419_200}));
    assert_eq!(m["android"]["ttl"], json!("2419200s"));
    assert_eq!(m["apns"]["headers"]["apns-expiration"], json!("1702419200"));
    // accepted_at with a fraction of a second: whole epoch seconds.
    let b = v1::translate(&v, ACC + 999, ACC + 999).unwrap();
    assert!(b.contains(r#""apns-expiration":"1700000600""#), "{b}");
}

#[test]
fn row_no_time_to_live_sets_neither() {
    let m = msg(json!({"to": TOKEN, "time_to_live": null}));
    assert_eq!(m, json!({"token": TOKEN}));
}

#[test]
fn row_collapse_key() {
    let m = msg(json!({"to": TOKEN, "collapse_key": "Updates Available"}));
    assert_eq!(m["android"], json!({"collapse_key": "Updates Available"}));
    assert_eq!(
        m["apns"],
        json!({"headers": {"apns-collapse-id": "Updates Available"}})
    );
}

#[test]
fn row_content_available_and_mutable_content() {
    let m = msg(json!({"to": TOKEN, "content_available": true}));
    assert_eq!(
        m["apns"],
        json!({"payload": {"aps": {"content-available": 1}}})
    );
    let m = msg(json!({"to": TOKEN, "mutable_content": true}));
    assert_eq!(
        m["apns"],
        json!({"payload": {"aps": {"mutable-content": 1}}})
    );
    let m = msg(json!({"to": TOKEN, "content_available": false, "mutable_content": false}));
    assert_eq!(m, json!({"token": TOKEN}));
}

#[test]
fn row_restricted_package_name() {
    let m = msg(json!({"to": TOKEN, "restricted_package_name": "com.example.app"}));
    assert_eq!(
        m["android"],
        json!({"restricted_package_name": "com.example.app"})
    );
}

#[test]
fn row_dry_run() {
    let v = tr(json!({"to": TOKEN, "dry_run": true}));
    assert_eq!(
        v,
        json!({"message": {"token": TOKEN}, "validate_only": true})
    );
    // false or absent: validate_only is left out.
    let v = tr(json!({"to": TOKEN, "dry_run": false}));
    assert_eq!(v, json!({"message": {"token": TOKEN}}));
}

#[test]
fn row_message_id_and_receipts_not_sent() {
    let v = tr(
        json!({"to": TOKEN, "message_id": "m-1", "delivery_receipt_requested": true,
                      "some_future_key": 1}),
    );
    assert_eq!(v, json!({"message": {"token": TOKEN}}));
}

#[test]
fn row_v1_blocks_pass_through() {
    let android = json!({"direct_boot_ok": true, "fcm_options": {"analytics_label": "l"},
                         "data": {"k": "v"}, "notification": {"notification_count": 3,
                         "light_settings": {"color": {"red": 1, "alpha": 0.5},
                                            "light_on_duration": "0.5s", "lightOffDuration": "1s"},
                         "vibrate_timings": ["0.1s", "0.2s"], "visibility": "PUBLIC",
                         "eventTime": "2024-01-01T00:00:00Z"}});
    let apns = json!({"headers": {"apns-push-type": "alert"}, "payload": {"custom": [1, 2]},
                      "fcm_options": {"image": "https://i"}, "live_activity_token": "lat"});
    let webpush = json!({"headers": {"TTL": "15"}, "data": {"w": "1"},
                         "notification": {"title": "W", "actions": [{"action": "a"}]},
                         "fcm_options": {"link": "https://example.com"}});
    let fo = json!({"analytics_label": "campaign"});
    let m = msg(
        json!({"to": TOKEN, "android": android, "apns": apns, "webpush": webpush,
                       "fcm_options": fo}),
    );
    assert_eq!(m["android"], android);
    assert_eq!(m["apns"], apns);
    assert_eq!(m["webpush"], webpush);
    assert_eq!(m["fcm_options"], fo);
    // fcm_options under its JSON spelling is written as fcm_options.
    let m = msg(json!({"to": TOKEN, "fcmOptions": {"analyticsLabel": "x"}}));
    assert_eq!(m["fcm_options"], json!({"analyticsLabel": "x"}));
    // Unknown fields inside a block are FCM's to judge.
    let m = msg(json!({"to": TOKEN, "android": {"future_field": {"a": 1}}}));
    assert_eq!(m["android"], json!({"future_field": {"a": 1}}));
    // null blocks are absent.
    let m = msg(
        json!({"to": TOKEN, "android": null, "apns": null, "webpush": null, "fcm_options": null}),
    );
    assert_eq!(m, json!({"token": TOKEN}));
}

// ---- the merge ------------------------------------------------------------

#[test]
fn merge_given_leaf_wins_and_other_keys_stay() {
    let m = msg(
        json!({"to": TOKEN, "priority": "normal", "collapse_key": "ck", "time_to_live": 60,
                       "android": {"priority": "high", "direct_boot_ok": true}}),
    );
    assert_eq!(
        m["android"],
        json!({"collapse_key": "ck", "priority": "high", "ttl": "60s", "direct_boot_ok": true})
    );
}

#[test]
fn merge_is_deep_and_key_by_key() {
    let m = msg(json!({"to": TOKEN,
        "notification": {"sound": "a", "badge": "1", "click_action": "C", "subtitle": "S",
                         "android_channel_id": "ch", "tag": "t"},
        "android": {"notification": {"tag": "t2", "notification_priority": "PRIORITY_HIGH"}},
        "apns": {"payload": {"aps": {"sound": "b", "thread-id": "th", "alert": {"subtitle": "S2"}},
                             "custom": "c"}}}));
    assert_eq!(
        m["android"]["notification"],
        json!({"sound": "a", "tag": "t2", "click_action": "C", "channel_id": "ch",
               "notification_priority": "PRIORITY_HIGH"})
    );
    assert_eq!(
        m["apns"]["payload"],
        json!({"aps": {"alert": {"subtitle": "S2"}, "badge": 1, "sound": "b", "category": "C",
                       "thread-id": "th"}, "custom": "c"})
    );
}

#[test]
fn merge_key_order_translated_first_then_given() {
    let v = json!({"to": TOKEN, "collapse_key": "ck", "android": {"direct_boot_ok": true, "collapse_key": "g"}});
    let body = v1::translate(&v, ACC, ACC).unwrap();
    assert!(
        body.contains(r#""android":{"collapse_key":"g","direct_boot_ok":true}"#),
        "{body}"
    );
}

#[test]
fn merge_camel_case_spelling_overrides_translated_field() {
    let m = msg(json!({"to": TOKEN, "collapse_key": "ck",
                       "notification": {"android_channel_id": "ch", "click_action": "C"},
                       "android": {"collapseKey": "g", "notification": {"channelId": "g2"}}}));
    // One field, one value: the BAL's, under its spelling.
    assert_eq!(
        m["android"],
        json!({"collapseKey": "g", "notification": {"click_action": "C", "channelId": "g2"}})
    );
}

#[test]
fn merge_headers_ignore_case() {
    let m = msg(json!({"to": TOKEN, "priority": "high", "time_to_live": 60,
                       "apns": {"headers": {"APNS-Priority": "5", "apns-push-type": "background"}}}));
    assert_eq!(
        m["apns"]["headers"],
        json!({"APNS-Priority": "5", "apns-expiration": "1700000060", "apns-push-type": "background"})
    );
}

#[test]
fn merge_given_non_object_replaces_translated_object() {
    // Apple allows aps.alert as a plain string.
    let m = msg(
        json!({"to": TOKEN, "notification": {"subtitle": "S", "badge": "2"},
                       "apns": {"payload": {"aps": {"alert": "plain"}}}}),
    );
    assert_eq!(
        m["apns"]["payload"]["aps"],
        json!({"alert": "plain", "badge": 2})
    );
}

#[test]
fn merge_null_unsets_translated_field() {
    let m = msg(
        json!({"to": TOKEN, "time_to_live": 60, "collapse_key": "ck",
                       "android": {"ttl": null}}),
    );
    assert_eq!(m["android"], json!({"collapse_key": "ck", "ttl": null}));
    let m = msg(json!({"to": TOKEN, "notification": {"sound": "s"},
                       "apns": {"payload": {"aps": {"sound": null}}}}));
    assert_eq!(m["apns"]["payload"]["aps"], json!({"sound": null}));
}

#[test]
fn merge_given_ttl_wins_and_is_checked() {
    let m = msg(json!({"to": TOKEN, "time_to_live": 60, "android": {"ttl": "3.5s"}}));
    assert_eq!(m["android"]["ttl"], json!("3.5s"));
    assert_eq!(m["apns"]["headers"]["apns-expiration"], json!("1700000060"));
    assert_rejects(
        json!({"to": TOKEN, "time_to_live": 60, "android": {"ttl": "2419201s"}}),
        "android.ttl",
    );
}

#[test]
fn merge_with_translated_but_no_given_block_part() {
    // The BAL's apns block holds only fcm_options; translated headers stay.
    let m = msg(
        json!({"to": TOKEN, "priority": "high", "apns": {"fcm_options": {"image": "https://i"}}}),
    );
    assert_eq!(
        m["apns"],
        json!({"headers": {"apns-priority": "10"}, "fcm_options": {"image": "https://i"}})
    );
}

// ---- errors ---------------------------------------------------------------

#[test]
fn errors_target() {
    assert_rejects(json!({}), "missing registration token");
    assert_rejects(
        json!({"to": TOKEN, "condition": "'a' in topics"}),
        "mutually exclusive",
    );
    assert_rejects(json!({"to": 5}), "to must be a string");
    assert_rejects(json!({"condition": []}), "condition must be a string");
    assert_rejects(json!([1]), "must be a JSON object");
    assert_rejects(json!("x"), "must be a JSON object");
}

#[test]
fn errors_legacy_types() {
    assert_rejects(json!({"to": TOKEN, "data": []}), "data must be an object");
    assert_rejects(
        json!({"to": TOKEN, "notification": "x"}),
        "notification must be an object",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"image": 5}}),
        "notification.image",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"title": 5}}),
        "notification.title",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"badge": "x"}}),
        "notification.badge",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"badge": "-1"}}),
        "notification.badge",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"badge": 3}}),
        "notification.badge",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"body_loc_args": "[1]"}}),
        "notification.body_loc_args",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"title_loc_args": "x"}}),
        "notification.title_loc_args",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"title_loc_args": [1]}}),
        "notification.title_loc_args",
    );
    assert_rejects(json!({"to": TOKEN, "priority": "urgent"}), "priority");
    assert_rejects(
        json!({"to": TOKEN, "time_to_live": 2_419_201}),
        "time_to_live",
    );
    assert_rejects(json!({"to": TOKEN, "time_to_live": -1}), "time_to_live");
    assert_rejects(json!({"to": TOKEN, "time_to_live": "60"}), "time_to_live");
    assert_rejects(json!({"to": TOKEN, "collapse_key": 1}), "collapse_key");
    assert_rejects(
        json!({"to": TOKEN, "content_available": "yes"}),
        "content_available",
    );
    assert_rejects(
        json!({"to": TOKEN, "mutable_content": 1}),
        "mutable_content",
    );
    assert_rejects(json!({"to": TOKEN, "dry_run": "true"}), "dry_run");
    assert_rejects(
        json!({"to": TOKEN, "restricted_package_name": 1}),
        "restricted_package_name",
    );
}

#[test]
fn errors_v1_block_types() {
    let cases: &[(Value, &str)] = &[
        (json!({"android": "x"}), "android must be an object"),
        (json!({"apns": []}), "apns must be an object"),
        (json!({"webpush": 1}), "webpush must be an object"),
        (
            json!({"fcm_options": true}),
            "fcm_options must be an object",
        ),
        (json!({"fcmOptions": "x"}), "fcmOptions must be an object"),
        (
            json!({"android": {"ttl": "abc"}}),
            "android.ttl must be a duration",
        ),
        (json!({"android": {"ttl": "600"}}), "android.ttl"),
        (json!({"android": {"ttl": "-1s"}}), "android.ttl"),
        (json!({"android": {"ttl": "2419200.5s"}}), "android.ttl"),
        (json!({"android": {"ttl": 600}}), "android.ttl"),
        (
            json!({"android": {"collapse_key": 1}}),
            "android.collapse_key must be a string",
        ),
        (json!({"android": {"priority": true}}), "android.priority"),
        (
            json!({"android": {"direct_boot_ok": "yes"}}),
            "android.direct_boot_ok must be a boolean",
        ),
        (
            json!({"android": {"data": {"k": 1}}}),
            "android.data.k must be a string",
        ),
        (
            json!({"android": {"data": {"k": null}}}),
            "android.data.k must be a string",
        ),
        (
            json!({"android": {"data": []}}),
            "android.data must be an object of strings",
        ),
        (
            json!({"android": {"notification": []}}),
            "android.notification must be an object",
        ),
        (
            json!({"android": {"notification": {"body_loc_args": "[\"a\"]"}}}),
            "android.notification.body_loc_args",
        ),
        (
            json!({"android": {"notification": {"titleLocArgs": [1]}}}),
            "android.notification.titleLocArgs[0]",
        ),
        (
            json!({"android": {"notification": {"notification_count": "many"}}}),
            "android.notification.notification_count",
        ),
        (
            json!({"android": {"notification": {"notification_count": 1.5}}}),
            "android.notification.notification_count",
        ),
        (
            json!({"android": {"notification": {"vibrate_timings": ["1"]}}}),
            "android.notification.vibrate_timings[0]",
        ),
        (
            json!({"android": {"notification": {"light_settings": {"color": {"red": "x"}}}}}),
            "android.notification.light_settings.color.red",
        ),
        (
            json!({"android": {"notification": {"lightSettings": {"lightOnDuration": 1}}}}),
            "android.notification.lightSettings.lightOnDuration",
        ),
        (
            json!({"android": {"fcm_options": {"analytics_label": 1}}}),
            "android.fcm_options.analytics_label",
        ),
        (
            json!({"apns": {"headers": {"apns-priority": 10}}}),
            "apns.headers.apns-priority must be a string",
        ),
        (
            json!({"apns": {"payload": "x"}}),
            "apns.payload must be an object",
        ),
        (
            json!({"apns": {"fcm_options": {"image": 1}}}),
            "apns.fcm_options.image",
        ),
        (
            json!({"apns": {"live_activity_token": 1}}),
            "apns.live_activity_token",
        ),
        (
            json!({"webpush": {"data": {"w": true}}}),
            "webpush.data.w must be a string",
        ),
        (
            json!({"webpush": {"headers": {"TTL": 15}}}),
            "webpush.headers.TTL must be a string",
        ),
        (
            json!({"webpush": {"notification": []}}),
            "webpush.notification must be an object",
        ),
        (
            json!({"webpush": {"fcm_options": {"link": 1}}}),
            "webpush.fcm_options.link",
        ),
        (
            json!({"fcm_options": {"analytics_label": 1}}),
            "fcm_options.analytics_label",
        ),
        (
            json!({"fcm_options": {}, "fcmOptions": {}}),
            "name the same v1 block",
        ),
        (
            json!({"android": {"collapse_key": "a", "collapseKey": "b"}}),
            "collapse_key and collapseKey",
        ),
        (
            json!({"android": {"notification": {"channel_id": "a", "channelId": "b"}}}),
            "channel_id and channelId",
        ),
    ];
    for (extra, needle) in cases {
        let mut v = json!({"to": TOKEN});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        assert_rejects(v, needle);
    }
}

#[test]
fn errors_inside_a_merge_are_found_too() {
    // The same checks apply where the translation and the block overlap.
    assert_rejects(
        json!({"to": TOKEN, "priority": "high", "apns": {"headers": {"apns-priority": 10}}}),
        "apns.headers.apns-priority must be a string",
    );
    assert_rejects(
        json!({"to": TOKEN, "collapse_key": "c", "android": {"collapse_key": "a", "collapseKey": "b"}}),
        "collapse_key and collapseKey",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"tag": "t"}, "android": {"notification": {"tag": 1}}}),
        "android.notification.tag must be a string",
    );
    assert_rejects(
        json!({"to": TOKEN, "notification": {"tag": "t"}, "android": {"notification": "x"}}),
        "android.notification must be an object",
    );
}

#[test]
fn error_descriptions_cut_long_keys() {
    let long = "k".repeat(1000);
    let r = rejected(json!({"to": TOKEN, "android": {"data": {long: 1}}}));
    assert!(r.description.len() < 200, "{}", r.description);
}

// ---- validate, validate_owned, reject_v1_blocks ---------------------------

#[test]
fn validate_accepts_and_warns_about_receipts() {
    let v = json!({"to": TOKEN, "message_id": "m-1", "delivery_receipt_requested": true,
                   "data": {"a": "b"}, "android": {"direct_boot_ok": true}});
    let a = v1::validate(&v).unwrap();
    assert_eq!(a.warning, Some(NO_RECEIPTS_WARNING));
    assert_eq!(a.downstream.message_id.as_deref(), Some("m-1"));
    assert_eq!(v1::validate_owned(v).unwrap(), a);
    let a = v1::validate(&json!({"to": TOKEN, "delivery_receipt_requested": false})).unwrap();
    assert_eq!(a.warning, None);
}

#[test]
fn validate_runs_section_3_2_first() {
    // §3.2's answer wins over v1's when both fail.
    let v = json!({"to": "bad token!", "android": "x"});
    let r = v1::validate(&v).unwrap_err();
    assert_eq!(r.code, ErrorCode::BadRegistration);
    assert_eq!(
        v1::validate_owned(v).unwrap_err().code,
        ErrorCode::BadRegistration
    );
    // §3.2's rules the translation does not repeat.
    for v in [
        json!({"to": TOKEN, "data": {"from": "x"}}),
        json!({"to": "/topics/", "data": {}}),
        json!({"to": TOKEN, "data": {"big": "x".repeat(5000)}}),
    ] {
        assert!(v1::translate(&v, ACC, ACC).is_ok());
        assert_eq!(
            v1::validate(&v).unwrap_err().code,
            ErrorCode::InvalidJson,
            "{v}"
        );
        assert_eq!(
            v1::validate_owned(v).unwrap_err().code,
            ErrorCode::InvalidJson
        );
    }
}

#[test]
fn validate_adds_v1_checks() {
    for v in [
        json!({"to": TOKEN, "android": {"ttl": "3000000s"}}),
        json!({"to": TOKEN, "notification": {"badge": "many"}}),
        json!({"to": TOKEN, "notification": {"image": {}}}),
        json!({"to": TOKEN, "apns": {"headers": {"x": 1}}}),
    ] {
        // §3.2 alone lets these through; the v1 link does not.
        assert!(fcm::validate_downstream(&v).is_ok(), "{v}");
        assert_eq!(
            v1::validate(&v).unwrap_err().code,
            ErrorCode::InvalidJson,
            "{v}"
        );
        assert_eq!(
            v1::validate_owned(v).unwrap_err().code,
            ErrorCode::InvalidJson
        );
    }
}

#[test]
fn xmpp_link_refuses_v1_blocks() {
    for key in ["android", "apns", "webpush", "fcm_options", "fcmOptions"] {
        let v = json!({"to": TOKEN, key: {}});
        // Today's XMPP validation lets them through...
        assert!(fcm::validate_downstream(&v).is_ok(), "{key}");
        // ...so the XMPP link calls reject_v1_blocks as well.
        let r = v1::reject_v1_blocks(&v).unwrap_err();
        assert_eq!(r.code, ErrorCode::InvalidJson);
        assert!(
            r.description.contains(&format!("\"{key}\"")),
            "{}",
            r.description
        );
    }
    assert!(v1::reject_v1_blocks(&json!({"to": TOKEN, "android": null})).is_ok());
    assert!(v1::reject_v1_blocks(&json!({"to": TOKEN, "notification": {"title": "x"}})).is_ok());
    assert!(v1::reject_v1_blocks(&json!("not an object")).is_ok());
}

#[test]
fn translate_into_appends() {
    let mut out = String::from("prefix");
    v1::translate_into(&json!({"to": TOKEN}), ACC, ACC, &mut out).unwrap();
    assert_eq!(
        out,
        format!("prefix{{\"message\":{{\"token\":\"{TOKEN}\"}}}}")
    );
}

// ---- proptest --------------------------------------------------------------

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn target() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        "[A-Za-z0-9_:.-]{1,40}".prop_map(|t| ("to", t)),
        "[a-zA-Z0-9-_.~%]{1,20}".prop_map(|t| ("to", format!("/topics/{t}"))),
        ("[a-z]{1,8}", "[a-z]{1,8}")
            .prop_map(|(a, b)| ("condition", format!("'{a}' in topics || '{b}' in topics"))),
    ]
}

fn notification() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec![
        "title",
        "body",
        "image",
        "sound",
        "click_action",
        "subtitle",
        "body_loc_key",
        "title_loc_key",
        "android_channel_id",
        "icon",
        "tag",
        "color",
    ]);
    (
        prop::collection::btree_map(key, ".{0,16}", 0..6),
        prop::option::of(0u32..1000),
        prop::option::of(prop::collection::vec(".{0,6}", 0..3)),
        prop::option::of(prop::collection::vec(".{0,6}", 0..3)),
    )
        .prop_map(|(strings, badge, bla, tla)| {
            let mut m: serde_json::Map<String, Value> = strings
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v)))
                .collect();
            if let Some(b) = badge {
                m.insert("badge".into(), Value::String(b.to_string()));
            }
            if let Some(a) = bla {
                // The legacy form: a JSON array in a string.
                m.insert(
                    "body_loc_args".into(),
                    Value::String(serde_json::to_string(&a).unwrap()),
                );
            }
            if let Some(a) = tla {
                m.insert("title_loc_args".into(), json!(a));
            }
            Value::Object(m)
        })
}

fn block() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"direct_boot_ok": true, "priority": "HIGH", "data": {"x": "y"}})),
        Just(json!({"ttl": "12.5s", "notification": {"tag": "x", "channelId": "c"}})),
        Just(json!({"collapse_key": null, "notification": {"sound": null}})),
    ]
}

fn legacy() -> impl Strategy<Value = Value> {
    (
        target(),
        prop::option::of(prop::collection::btree_map("[a-z]{1,6}", any_json(), 0..4)),
        prop::option::of(notification()),
        prop::option::of(prop::sample::select(vec!["normal", "high"])),
        prop::option::of(0u32..=2_419_200),
        prop::option::of(".{0,10}"),
        (
            any::<Option<bool>>(),
            any::<Option<bool>>(),
            any::<Option<bool>>(),
        ),
        (
            prop::option::of(block()),
            prop::option::of(Just(
                json!({"headers": {"apns-push-type": "alert"}, "payload": {"aps": {"sound": "x"}}}),
            )),
        ),
    )
        .prop_map(
            |(t, data, n, prio, ttl, ck, (ca, mc, dry), (android, apns))| {
                let mut m = serde_json::Map::new();
                m.insert(t.0.into(), Value::String(t.1));
                m.insert("message_id".into(), json!("m"));
                if let Some(d) = data {
                    m.insert("data".into(), Value::Object(d.into_iter().collect()));
                }
                if let Some(n) = n {
                    m.insert("notification".into(), n);
                }
                if let Some(p) = prio {
                    m.insert("priority".into(), json!(p));
                }
                if let Some(t) = ttl {
                    m.insert("time_to_live".into(), json!(t));
                }
                if let Some(c) = ck {
                    m.insert("collapse_key".into(), json!(c));
                }
                for (k, b) in [
                    ("content_available", ca),
                    ("mutable_content", mc),
                    ("dry_run", dry),
                ] {
                    if let Some(b) = b {
                        m.insert(k.into(), json!(b));
                    }
                }
                if let Some(a) = android {
                    m.insert("android".into(), a);
                }
                if let Some(a) = apns {
                    m.insert("apns".into(), a);
                }
                Value::Object(m)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_legacy_messages_always_translate(
        v in legacy(),
        elapsed in -10_000_000i64..10_000_000_000,
    ) {
        // Only messages §3.2 accepts (payload size may rule some out).
        prop_assume!(fcm::validate_downstream(&v).is_ok());
        prop_assert!(v1::validate(&v).is_ok(), "validate refused {}", v);
        let body = v1::translate(&v, ACC, ACC + elapsed)
            .map_err(|r| TestCaseError::fail(format!("{r}: {v}")))?;
        let out: Value = serde_json::from_str(&body)
            .map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
        let m = &out["message"];
        let targets = ["token", "topic", "condition"].iter().filter(|k| m.get(**k).is_some()).count();
        prop_assert_eq!(targets, 1);
        if let Some(data) = m.get("data") {
            prop_assert!(data.as_object().unwrap().values().all(Value::is_string));
        }
        if let (Some(ttl), Some(n)) = (m["android"]["ttl"].as_str(), v["time_to_live"].as_u64()) {
            if v["android"].get("ttl").is_none() {
                let secs: u64 = ttl.strip_suffix('s').unwrap().parse().unwrap();
                prop_assert!(secs <= n);
            }
        }
        prop_assert_eq!(out.get("validate_only").is_some(), v["dry_run"] == json!(true));
        // Compact: the same bytes serde_json writes for the parsed value
        // (serde_json orders keys; ours are in a fixed order, so compare lengths).
        prop_assert_eq!(body.len(), serde_json::to_string(&out).unwrap().len());
    }

    #[test]
    fn arbitrary_json_never_panics(v in any_json(), a in any::<i64>(), n in any::<i64>()) {
        if let Ok(body) = v1::translate(&v, a, n) {
            prop_assert!(serde_json::from_str::<Value>(&body).is_ok(), "{}", body);
        }
        let _ = v1::validate(&v);
        let _ = v1::reject_v1_blocks(&v);
    }

    #[test]
    fn arbitrary_objects_with_v1_blocks_never_panic(
        android in any_json(), apns in any_json(), webpush in any_json(), notif in any_json(),
        a in any::<i64>(), n in any::<i64>(),
    ) {
        let v = json!({"to": TOKEN, "notification": notif, "android": android, "apns": apns,
                       "webpush": webpush, "priority": "high", "time_to_live": 5, "collapse_key": "c"});
        if let Ok(body) = v1::translate(&v, a, n) {
            prop_assert!(serde_json::from_str::<Value>(&body).is_ok(), "{}", body);
        }
    }
}
