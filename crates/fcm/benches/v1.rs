//! Micro-benchmarks of the FCM HTTP v1 link's per-message work (SPEC §8.2,
//! §8.3; `cargo bench -p fcm --bench v1`):
//!
//! * `v1/translate_typical` — [`fcm::v1::translate`] of a typical message
//!   (token, 3 data keys, notification title/body, time_to_live), already
//!   parsed;
//! * `v1/translate_into_reused` — the same into a reused `String`;
//! * `v1/parse_and_translate` — what the send path does with a stored body:
//!   parse the text, then translate;
//! * `v1/translate_full` — every legacy option plus v1 blocks to merge;
//! * `v1/validate_typical` — [`fcm::v1::validate`] at acceptance time;
//! * `v1/success_and_ack` — [`fcm::v1::parse_success`] of a 200 body and
//!   [`fcm::v1::ack_json`];
//! * `v1/classify_unregistered` — [`fcm::v1::classify`] of a 404
//!   UNREGISTERED body.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use std::hint::black_box;

const ACC: i64 = 1_700_000_000_000;
const TOKEN: &str = "dGhpcyBpcyBhIGJlbmNoIHRva2Vu:APA91bHPRgkF3JUikC4ENAHEeMrd41Zxv3hVZjC9KtT8OvPVGJ-hQMRKRrZuJAEcl7B338qju59zJMjw2DELjzEvxwYv7hH5Ynpc1ODQ0aT4U4OFEeco8ohsN5PjL1iC2dNtk2BAokeMCg2ZXKqpc8FXKmhX94kIxQ";

fn typical() -> Value {
    json!({"to": TOKEN, "message_id": "bench-1234abcd-42",
           "data": {"score": "3x1", "match": "chat-42", "minute": "87"},
           "notification": {"title": "Goal!", "body": "3x1 in the 87th minute"},
           "time_to_live": 600})
}

fn full() -> Value {
    json!({"to": "/topics/news", "message_id": "m-1", "priority": "high", "collapse_key": "score",
           "content_available": true, "mutable_content": true, "time_to_live": 3600,
           "delivery_receipt_requested": true,
           "data": {"a": "1", "b": 2, "c": {"d": [1, 2]}},
           "notification": {"title": "T", "body": "B", "sound": "default", "badge": "3",
                            "click_action": "OPEN", "subtitle": "S", "body_loc_key": "bk",
                            "body_loc_args": "[\"a\",\"b\"]", "android_channel_id": "ch",
                            "icon": "ic", "color": "#ff0000", "tag": "t"},
           "android": {"direct_boot_ok": true, "notification": {"channelId": "c2", "visibility": "PUBLIC"}},
           "apns": {"headers": {"apns-push-type": "alert"}, "payload": {"aps": {"thread-id": "x"}}},
           "fcm_options": {"analytics_label": "l"}})
}

fn translate(c: &mut Criterion) {
    let mut g = c.benchmark_group("v1");
    g.throughput(Throughput::Elements(1));
    let v = typical();
    let text = serde_json::to_string(&v).unwrap();
    assert!(fcm::v1::validate(&v).is_ok());
    g.bench_function("translate_typical", |b| {
        b.iter(|| fcm::v1::translate(black_box(&v), ACC, ACC + 1500).unwrap())
    });
    let mut out = String::new();
    g.bench_function("translate_into_reused", |b| {
        b.iter(|| {
            out.clear();
            fcm::v1::translate_into(black_box(&v), ACC, ACC + 1500, &mut out).unwrap();
            out.len()
        })
    });
    g.bench_function("parse_and_translate", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(&text)).unwrap();
            fcm::v1::translate(&v, ACC, ACC + 1500).unwrap()
        })
    });
    let f = full();
    assert!(fcm::v1::validate(&f).is_ok());
    g.bench_function("translate_full", |b| {
        b.iter(|| fcm::v1::translate(black_box(&f), ACC, ACC + 1500).unwrap())
    });
    g.bench_function("validate_typical", |b| {
        b.iter(|| fcm::v1::validate(black_box(&v)).is_ok())
    });
    let ok = br#"{"name":"projects/bench-project/messages/0:1700000000000000%31bd1c9631bd1c96"}"#;
    g.bench_function("success_and_ack", |b| {
        b.iter(|| {
            let name = fcm::v1::parse_success(black_box(ok)).unwrap();
            fcm::v1::ack_json("bench-1234abcd-42", TOKEN, &name)
        })
    });
    let err = serde_json::to_vec(&json!({"error": {"code": 404, "message": "Requested entity was not found.",
        "status": "NOT_FOUND", "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
        "errorCode": "UNREGISTERED"}]}}))
    .unwrap();
    g.bench_function("classify_unregistered", |b| {
        b.iter(|| fcm::v1::classify(404, None, black_box(&err)))
    });
    g.finish();
}

criterion_group!(benches, translate);
criterion_main!(benches);
