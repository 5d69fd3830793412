//! SPEC §3.2 / seed 004 table 4: every validation rule at and just beyond its
//! boundary.
#![allow(clippy::unwrap_used)]

use fcm::{
    condition_is_well_formed, is_reserved_data_key, token_is_well_formed,
    topic_name_is_well_formed, validate_downstream, validate_downstream_owned, Downstream,
    ErrorCode, Notification, Priority, Rejection, Target, MAX_PAYLOAD_BYTES, MAX_TOKEN_BYTES,
    MAX_TOPIC_PAYLOAD_BYTES, MAX_TTL_SECS,
};
use serde_json::{json, Value};

const TOKEN: &str = "bk3RNwTe3H0:CI2k_HHwgIpoDKCIZvvDMExUdFQ3P1";

fn ok(v: Value) -> Downstream {
    match validate_downstream(&v) {
        Ok(d) => {
            // The owned variant agrees.
            assert_eq!(validate_downstream_owned(v).unwrap(), d);
            d
        }
        Err(r) => panic!("expected valid, got {r} for {v}"),
    }
}

fn rej(v: Value) -> Rejection {
    match validate_downstream(&v) {
        Ok(d) => panic!("expected a rejection, got {d:?} for {v}"),
        Err(r) => {
            assert_eq!(validate_downstream_owned(v).unwrap_err(), r);
            r
        }
    }
}

/// Rejected with INVALID_JSON and a description mentioning `needle`.
fn invalid(v: Value, needle: &str) {
    let r = rej(v);
    assert_eq!(r.code, ErrorCode::InvalidJson, "{r}");
    assert!(
        r.description.contains(needle),
        "description {:?} should mention {needle:?}",
        r.description
    );
}

fn with(field: &str, value: Value) -> Value {
    let mut v = json!({"to": TOKEN, "message_id": "m-1"});
    v[field] = value;
    v
}

// ---------------------------------------------------------------- seeds ---

#[test]
fn seed_examples_are_valid() {
    // seed 000: downstream to a token.
    let d = ok(json!({
        "data": {"greeting": "Hello World"},
        "to": "bk3RNwTe3H0:CI2k_HHwgIpoDKCIZvvDMExUdFQ3P1..."
    }));
    assert_eq!(d.data.unwrap()["greeting"], "Hello World");
    // SPEC §3.2 fcm_data example.
    let d = ok(
        json!({"to": TOKEN, "message_id": "m-1", "data": {"score": "3x1"},
                      "time_to_live": 600, "delivery_receipt_requested": true}),
    );
    assert_eq!(d.time_to_live, Some(600));
    assert_eq!(d.delivery_receipt_requested, Some(true));
    assert_eq!(d.message_id.as_deref(), Some("m-1"));
}

#[test]
fn every_field_is_parsed() {
    let d = ok(json!({
        "to": TOKEN, "message_id": "m", "collapse_key": "Updates Available",
        "priority": "high", "content_available": true, "mutable_content": false,
        "time_to_live": 60, "dry_run": true, "delivery_receipt_requested": false,
        "data": {"a": "b"},
        "notification": {"title": "t", "body": "b", "sound": "default", "badge": "1",
            "click_action": "OPEN", "subtitle": "s", "body_loc_key": "bk",
            "body_loc_args": "[\"x\"]", "title_loc_key": "tk", "title_loc_args": "[]",
            "android_channel_id": "ch", "icon": "myicon", "tag": "tg", "color": "#ff0000"},
        "custom_option": {"kept": [1, 2]}
    }));
    assert_eq!(d.to.as_deref(), Some(TOKEN));
    assert_eq!(d.collapse_key.as_deref(), Some("Updates Available"));
    assert_eq!(d.priority, Some(Priority::High));
    assert_eq!(d.content_available, Some(true));
    assert_eq!(d.mutable_content, Some(false));
    assert_eq!(d.dry_run, Some(true));
    assert_eq!(d.delivery_receipt_requested, Some(false));
    let n = d.notification.as_ref().unwrap();
    assert_eq!(n.title.as_deref(), Some("t"));
    assert_eq!(n.color.as_deref(), Some("#ff0000"));
    assert_eq!(n.android_channel_id.as_deref(), Some("ch"));
    assert_eq!(n.body_loc_args_list(), Some(vec!["x".to_string()]));
    assert_eq!(n.title_loc_args_list(), Some(vec![]));
    assert!(n.extra.is_empty());
    assert_eq!(d.extra["custom_option"], json!({"kept": [1, 2]}));
    // Serializing gives back the same JSON.
    let back: Value = serde_json::from_str(&d.to_json()).unwrap();
    let original = json!({
        "to": TOKEN, "message_id": "m", "collapse_key": "Updates Available",
        "priority": "high", "content_available": true, "mutable_content": false,
        "time_to_live": 60, "dry_run": true, "delivery_receipt_requested": false,
        "data": {"a": "b"},
        "notification": {"title": "t", "body": "b", "sound": "default", "badge": "1",
            "click_action": "OPEN", "subtitle": "s", "body_loc_key": "bk",
            "body_loc_args": "[\"x\"]", "title_loc_key": "tk", "title_loc_args": "[]",
            "android_channel_id": "ch", "icon": "myicon", "tag": "tg", "color": "#ff0000"},
        "custom_option": {"kept": [1, 2]}
    });
    assert_eq!(back, original);
    assert_eq!(d.check(), Ok(()));
}

// ------------------------------------------------------ shape and target ---

#[test]
fn not_an_object_is_invalid_json() {
    for v in [json!([]), json!("x"), json!(1), json!(null), json!(true)] {
        invalid(v, "JSON object");
    }
}

#[test]
fn missing_target_is_invalid_json() {
    invalid(json!({}), "missing registration token");
    invalid(json!({"message_id": "m", "data": {"a": "b"}}), "missing");
    invalid(json!({"to": null, "message_id": "m"}), "missing");
    invalid(json!({"condition": null}), "missing");
}

#[test]
fn to_and_condition_together_are_invalid_json() {
    invalid(
        json!({"to": TOKEN, "condition": "'a' in topics"}),
        "condition",
    );
}

#[test]
fn target_kinds() {
    let d = ok(json!({"to": TOKEN}));
    assert_eq!(d.target(), Some(Target::Token(TOKEN)));
    assert!(!d.is_topic_message());
    assert_eq!(d.target_key(), Some(TOKEN));
    assert_eq!(d.max_payload_bytes(), MAX_PAYLOAD_BYTES);

    let d = ok(json!({"to": "/topics/news"}));
    assert_eq!(d.target(), Some(Target::Topic("news")));
    assert!(d.is_topic_message());
    assert_eq!(d.target_key(), Some("/topics/news"));
    assert_eq!(d.max_payload_bytes(), MAX_TOPIC_PAYLOAD_BYTES);

    let d = ok(json!({"condition": "'a' in topics || 'b' in topics"}));
    assert_eq!(
        d.target(),
        Some(Target::Condition("'a' in topics || 'b' in topics"))
    );
    assert!(d.is_topic_message());

    assert_eq!(Downstream::default().target(), None);
    assert!(!Downstream::default().is_topic_message());
}

// ---------------------------------------------------------------- token ---

#[test]
fn token_characters() {
    assert!(token_is_well_formed("aZ09_:.-"));
    assert!(token_is_well_formed(TOKEN));
    assert!(token_is_well_formed("x"));
    for bad in [
        "", "a b", "a/b", "a+b", "a=b", "é", "a\nb", "a\"b", "a,b", "a@b", "tok\u{0}",
    ] {
        assert!(!token_is_well_formed(bad), "{bad:?}");
        let r = rej(json!({"to": bad}));
        assert_eq!(r.code, ErrorCode::BadRegistration, "{bad:?}: {r}");
        assert!(r.description.contains("\"to\""), "{r}");
    }
}

#[test]
fn token_length_boundary() {
    let max = "a".repeat(MAX_TOKEN_BYTES);
    assert_eq!(MAX_TOKEN_BYTES, 4096);
    assert!(token_is_well_formed(&max));
    ok(json!({"to": max}));
    let over = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert!(!token_is_well_formed(&over));
    let r = rej(json!({"to": over}));
    assert_eq!(r.code, ErrorCode::BadRegistration);
    assert!(r.description.contains("4097"), "{r}");
}

#[test]
fn empty_token_is_bad_registration() {
    let r = rej(json!({"to": ""}));
    assert_eq!(r.code, ErrorCode::BadRegistration);
    assert!(r.description.contains("empty"));
}

#[test]
fn json_errors_take_precedence_over_bad_registration() {
    let r = rej(json!({"to": "bad token", "time_to_live": -1}));
    assert_eq!(r.code, ErrorCode::InvalidJson);
}

#[test]
fn to_must_be_a_string() {
    invalid(json!({"to": 123}), "to");
    invalid(json!({"to": ["a"]}), "to");
}

// --------------------------------------------------------------- topics ---

#[test]
fn topic_names() {
    for good in ["news", "a-b_c.d~e%20", "A", "0"] {
        assert!(topic_name_is_well_formed(good));
        ok(json!({"to": format!("/topics/{good}")}));
    }
    for bad in ["", "a b", "a/b", "é", "a+b", "a'b", "a:b"] {
        assert!(!topic_name_is_well_formed(bad), "{bad:?}");
        invalid(json!({"to": format!("/topics/{bad}")}), "topic");
    }
    // Without the exact prefix it is a token, and '/' is not a token character.
    assert_eq!(
        rej(json!({"to": "/topicsnews"})).code,
        ErrorCode::BadRegistration
    );
    assert_eq!(
        rej(json!({"to": "/Topics/news"})).code,
        ErrorCode::BadRegistration
    );
}

// ------------------------------------------------------------ condition ---

#[test]
fn condition_operator_count() {
    ok(json!({"condition": "'a' in topics"}));
    ok(json!({"condition": "'a' in topics && 'b' in topics"}));
    ok(json!({"condition": "'a' in topics && ('b' in topics || 'c' in topics)"}));
    ok(json!({"condition": "\"a\" IN TOPICS || \"b\" in Topics"}));
    invalid(
        json!({"condition": "'a' in topics && 'b' in topics || 'c' in topics && 'd' in topics"}),
        "operators",
    );
    invalid(
        json!({"condition": "('a' in topics && 'b' in topics) || ('c' in topics && 'd' in topics)"}),
        "condition",
    );
}

#[test]
fn condition_syntax() {
    for bad in [
        "",
        "a in topics",
        "'a' in topic",
        "'a' in topics &&",
        "'a' in topics & 'b' in topics",
        "('a' in topics",
        "'a' in topics)",
        "'a b' in topics",
        "'a' in topics 'b' in topics",
        "!('a' in topics)",
        "'a\" in topics",
        "'' in topics",
    ] {
        assert!(!condition_is_well_formed(bad), "{bad:?}");
        invalid(json!({"condition": bad}), "condition");
    }
    invalid(json!({"condition": 1}), "condition");
}

// ------------------------------------------------------------------ TTL ---

#[test]
fn ttl_boundaries() {
    assert_eq!(MAX_TTL_SECS, 2_419_200);
    assert_eq!(ok(with("time_to_live", json!(0))).time_to_live, Some(0));
    assert_eq!(
        ok(with("time_to_live", json!(2_419_200))).time_to_live,
        Some(2_419_200)
    );
    assert_eq!(ok(with("time_to_live", json!(null))).time_to_live, None);
    for bad in [
        json!(2_419_201),
        json!(-1),
        json!(1.5),
        json!(600.0),
        json!(1e3),
        json!("600"),
        json!(true),
        json!(4_294_967_296u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!([600]),
        json!({}),
    ] {
        invalid(with("time_to_live", bad), "time_to_live");
    }
}

#[test]
fn ttl_text_forms() {
    // Parsed from text, as the gateway gets it.
    for (text, valid) in [
        ("0", true),
        ("2419200", true),
        ("2419201", false),
        ("-0", false), // serde_json reads -0 as the float -0.0
        ("1.0", false),
        ("6e2", false),
    ] {
        let v: Value =
            serde_json::from_str(&format!(r#"{{"to":"{TOKEN}","time_to_live":{text}}}"#)).unwrap();
        let res = validate_downstream(&v);
        assert_eq!(res.is_ok(), valid, "{text}: {res:?}");
    }
}

// ------------------------------------------------------------- priority ---

#[test]
fn priority_values() {
    assert_eq!(
        ok(with("priority", json!("normal"))).priority,
        Some(Priority::Normal)
    );
    assert_eq!(
        ok(with("priority", json!("high"))).priority,
        Some(Priority::High)
    );
    for bad in [
        json!("HIGH"),
        json!("low"),
        json!(""),
        json!(10),
        json!(5),
        json!(true),
    ] {
        invalid(with("priority", bad), "priority");
    }
    assert_eq!(Priority::High.as_str(), "high");
    assert_eq!(Priority::parse("normal"), Some(Priority::Normal));
    assert_eq!(Priority::parse("Normal"), None);
}

// ------------------------------------------------------------ JSON types ---

#[test]
fn booleans_must_be_booleans() {
    for field in [
        "content_available",
        "mutable_content",
        "dry_run",
        "delivery_receipt_requested",
    ] {
        ok(with(field, json!(true)));
        ok(with(field, json!(false)));
        for bad in [json!("true"), json!(1), json!(0), json!([]), json!({})] {
            invalid(with(field, bad), field);
        }
    }
}

#[test]
fn strings_must_be_strings() {
    for field in ["message_id", "collapse_key"] {
        ok(with(field, json!("x")));
        for bad in [json!(1), json!(true), json!([]), json!({})] {
            invalid(with(field, bad), field);
        }
    }
}

#[test]
fn data_must_be_an_object() {
    ok(with("data", json!({})));
    ok(with("data", json!(null)));
    for bad in [json!("k=v"), json!([]), json!(5), json!(true)] {
        invalid(with("data", bad), "data");
    }
}

#[test]
fn data_values_may_be_any_json() {
    let d = ok(with(
        "data",
        json!({"s": "x", "n": 1, "b": true, "o": {"x": 1}, "a": [1], "z": null}),
    ));
    assert_eq!(d.data.unwrap().len(), 6);
}

// -------------------------------------------------------- reserved keys ---

#[test]
fn reserved_data_keys() {
    for key in [
        "from",
        "message_type",
        "google",
        "google.x",
        "googlefoo",
        "google.c.a.e",
        "gcm",
        "gcmfoo",
        "gcm.notification.body",
    ] {
        assert!(is_reserved_data_key(key), "{key}");
        invalid(with("data", json!({ key: "v" })), key);
    }
    // Allowed: exact-match and prefix rules only; table-1 words such as
    // collapse_key are allowed in the payload (table 4).
    for key in [
        "From",
        "fromage",
        "message_types",
        "xgoogle",
        "Google",
        "GCM",
        "collapse_key",
        "to",
        "time_to_live",
        "gc",
        "goog",
    ] {
        assert!(!is_reserved_data_key(key), "{key}");
        ok(with("data", json!({ key: "v" })));
    }
}

// --------------------------------------------------------- notification ---

#[test]
fn notification_types() {
    ok(with("notification", json!({"title": "t", "body": "b"})));
    ok(with("notification", json!({})));
    ok(with("notification", json!(null)));
    for bad in [json!("t"), json!([]), json!(1)] {
        invalid(with("notification", bad), "notification");
    }
    for field in [
        "title",
        "body",
        "sound",
        "badge",
        "click_action",
        "subtitle",
        "body_loc_key",
        "title_loc_key",
        "android_channel_id",
        "icon",
        "tag",
        "color",
    ] {
        invalid(with("notification", json!({ field: 1 })), field);
        invalid(with("notification", json!({ field: true })), field);
        invalid(with("notification", json!({ field: ["x"] })), field);
    }
}

#[test]
fn loc_args_forms() {
    for field in ["body_loc_args", "title_loc_args"] {
        // JSON array as string (the seeds' form).
        let d = ok(with("notification", json!({ field: "[\"a\",\"b\"]" })));
        let n = d.notification.unwrap();
        assert!(n.extra.is_empty());
        // A real array of strings, kept as sent.
        let d = ok(with("notification", json!({ field: ["a", "b"] })));
        let n = d.notification.unwrap();
        assert_eq!(n.extra[field], json!(["a", "b"]));
        let list = if field == "body_loc_args" {
            n.body_loc_args_list()
        } else {
            n.title_loc_args_list()
        };
        assert_eq!(list, Some(vec!["a".to_string(), "b".to_string()]));
        // Wrong forms.
        for bad in [
            json!("a"),
            json!("{\"a\":1}"),
            json!("[1]"),
            json!([1]),
            json!([["a"]]),
            json!(1),
        ] {
            invalid(with("notification", json!({ field: bad })), field);
        }
    }
}

#[test]
fn notification_unknown_keys_are_kept() {
    let d = ok(with(
        "notification",
        json!({"title": "t", "image": "https://x", "count": 3}),
    ));
    let n = d.notification.unwrap();
    assert_eq!(n.extra["image"], "https://x");
    assert_eq!(n.extra["count"], 3);
}

// --------------------------------------------------------- payload size ---

fn data_of(len: usize) -> Value {
    // key "k" (1 byte) + value of `len - 1` bytes
    json!({ "k": "x".repeat(len - 1) })
}

#[test]
fn payload_limit_for_tokens() {
    assert_eq!(MAX_PAYLOAD_BYTES, 4096);
    let d = ok(json!({"to": TOKEN, "data": data_of(4096)}));
    assert_eq!(d.payload_size(), 4096);
    invalid(
        json!({"to": TOKEN, "data": data_of(4097)}),
        "message too big",
    );
}

#[test]
fn payload_limit_for_topics() {
    assert_eq!(MAX_TOPIC_PAYLOAD_BYTES, 2048);
    let d = ok(json!({"to": "/topics/news", "data": data_of(2048)}));
    assert_eq!(d.payload_size(), 2048);
    invalid(
        json!({"to": "/topics/news", "data": data_of(2049)}),
        "message too big",
    );
}

#[test]
fn payload_limit_for_conditions() {
    let c = "'a' in topics && 'b' in topics";
    ok(json!({"condition": c, "data": data_of(2048)}));
    invalid(
        json!({"condition": c, "data": data_of(2049)}),
        "message too big",
    );
}

#[test]
fn payload_counts_notification_and_data_keys_and_values() {
    // notification: "title"(5) + 995 = 1000; data: "k" + 3095 = 3096 -> 4096.
    let n = json!({"title": "t".repeat(995)});
    let d = ok(json!({"to": TOKEN, "notification": n, "data": data_of(3096)}));
    assert_eq!(d.payload_size(), 4096);
    invalid(
        json!({"to": TOKEN, "notification": n, "data": data_of(3097)}),
        "message too big",
    );
    // Notification alone.
    let d = ok(json!({"to": TOKEN, "notification": {"body": "b".repeat(4092)}}));
    assert_eq!(d.payload_size(), 4096);
    invalid(
        json!({"to": TOKEN, "notification": {"body": "b".repeat(4093)}}),
        "message too big",
    );
}

#[test]
fn payload_counts_utf8_bytes_and_json_of_non_strings() {
    // "é" is 2 bytes: key "k" + 2 * 2047 = 4095; + 1 ASCII = 4096.
    let v = format!("{}x", "é".repeat(2047));
    assert_eq!(
        ok(json!({"to": TOKEN, "data": {"k": v}})).payload_size(),
        4096
    );
    let v = format!("{}xy", "é".repeat(2047));
    invalid(json!({"to": TOKEN, "data": {"k": v}}), "message too big");
    // Non-string values count as compact JSON.
    let d =
        ok(json!({"to": TOKEN, "data": {"n": 123, "b": false, "a": [1, "x"], "o": {"k": null}}}));
    // n:1+3, b:1+5, a:1+7 ([1,"x"]), o:1+10 ({"k":null})
    assert_eq!(d.payload_size(), 4 + 6 + 8 + 11);
    // Unknown notification keys count too.
    let d = ok(json!({"to": TOKEN, "notification": {"count": 12}}));
    assert_eq!(d.payload_size(), 7);
    // Loc args as an array count as compact JSON.
    let d = ok(json!({"to": TOKEN, "notification": {"body_loc_args": ["a"]}}));
    assert_eq!(d.payload_size(), "body_loc_args".len() + "[\"a\"]".len());
}

#[test]
fn options_outside_payload_do_not_count() {
    let d = ok(json!({"to": TOKEN, "collapse_key": "c".repeat(10_000), "data": data_of(4096)}));
    assert_eq!(d.payload_size(), 4096);
}

// --------------------------------------------------- serde and structure ---

#[test]
fn serialize_skips_none_and_keeps_extra() {
    let d = Downstream {
        to: Some("t".into()),
        ..Default::default()
    };
    assert_eq!(d.to_json(), r#"{"to":"t"}"#);
    assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"to":"t"}"#);

    let d = ok(json!({"to": "t", "future_field": [1], "time_to_live": null}));
    assert_eq!(d.to_json(), r#"{"to":"t","future_field":[1]}"#);

    let n = Notification {
        title: Some("hi".into()),
        ..Default::default()
    };
    assert_eq!(serde_json::to_string(&n).unwrap(), r#"{"title":"hi"}"#);
}

#[test]
fn deserialize_applies_type_rules_only() {
    // Types enforced.
    assert!(serde_json::from_str::<Downstream>(r#"{"to":1}"#).is_err());
    assert!(serde_json::from_str::<Downstream>(r#"{"time_to_live":1.5}"#).is_err());
    assert!(serde_json::from_str::<Downstream>(r#"{"priority":"low"}"#).is_err());
    assert!(serde_json::from_str::<Downstream>(r#"{"notification":{"title":1}}"#).is_err());
    assert!(serde_json::from_str::<Downstream>(r#"[]"#).is_err());
    // Semantic rules are validate_downstream's job.
    let d: Downstream =
        serde_json::from_str(r#"{"data":{"from":"x"},"time_to_live":9999999}"#).unwrap();
    assert_eq!(d.time_to_live, Some(9_999_999));
    assert!(d.target().is_none());
    let r = d.check().unwrap_err();
    assert_eq!(r.code, ErrorCode::InvalidJson);
    // Notification alone.
    let n: Notification = serde_json::from_str(r#"{"body_loc_args":["a"],"x":1}"#).unwrap();
    assert_eq!(n.extra.len(), 2);
    assert!(serde_json::from_str::<Notification>(r#"{"body_loc_args":"nope"}"#).is_err());
}

#[test]
fn validated_message_round_trips() {
    let v = json!({"to": "/topics/x", "message_id": "m", "priority": "normal",
                   "data": {"k": "v", "n": 1}, "notification": {"body_loc_args": ["a"], "title": "t"},
                   "unknown": {"a": null}});
    let d = ok(v.clone());
    let text = d.to_json();
    let back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, v);
    assert_eq!(serde_json::from_str::<Downstream>(&text).unwrap(), d);
    assert_eq!(ok(back), d);
}

#[test]
fn descriptions_name_the_field() {
    let cases = [
        (with("time_to_live", json!(-1)), "time_to_live"),
        (with("priority", json!("urgent")), "priority"),
        (with("dry_run", json!("yes")), "dry_run"),
        (with("data", json!({"google.x": "1"})), "google.x"),
        (
            with("notification", json!({"badge": 3})),
            "notification.badge",
        ),
        (with("message_id", json!(7)), "message_id"),
    ];
    for (v, needle) in cases {
        invalid(v, needle);
    }
}
