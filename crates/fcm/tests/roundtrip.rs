//! Property tests: Downstream serialize -> parse -> equal; Inbound
//! to_json -> parse_inbound -> equal; no input makes the parsers panic.
#![allow(clippy::unwrap_used)]

use fcm::{
    parse_inbound, validate_downstream, Ack, Control, Downstream, ErrorCode, Inbound, Nack,
    Notification, Priority, Receipt, ReceiptData, Upstream,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// JSON values whose text form parses back to an equal value (floats limited
/// to exactly representable ones).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1000i32..1000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Keys that collide with no known field ("x_" prefix).
fn extra_map(max: usize) -> impl Strategy<Value = Map<String, Value>> {
    btree_map("x_[a-z0-9_]{0,8}", json_value(), 0..max).prop_map(|m| m.into_iter().collect())
}

fn small_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,20}",
        any::<String>().prop_map(|s| s.chars().take(20).collect())
    ]
}

fn loc_args() -> impl Strategy<Value = Option<String>> {
    option::of(vec(small_string(), 0..3).prop_map(|v| serde_json::to_string(&v).unwrap()))
}

fn notification() -> impl Strategy<Value = Notification> {
    (
        (
            option::of(small_string()),
            option::of(small_string()),
            option::of(small_string()),
            option::of(small_string()),
            option::of(small_string()),
            option::of(small_string()),
            option::of(small_string()),
        ),
        (
            loc_args(),
            option::of(small_string()),
            loc_args(),
            option::of(small_string()),
            option::of(small_string()),
            option::of(small_string()),
            option::of(small_string()),
        ),
        extra_map(3),
        option::of(vec("[a-z]{0,5}", 0..3)),
    )
        .prop_map(
            |(
                (title, body, sound, badge, click_action, subtitle, body_loc_key),
                (
                    body_loc_args,
                    title_loc_key,
                    title_loc_args,
                    android_channel_id,
                    icon,
                    tag,
                    color,
                ),
                mut extra,
                array_args,
            )| {
                // Loc args as a real array live in `extra` when the string
                // form is absent.
                if let (None, Some(a)) = (&body_loc_args, array_args) {
                    extra.insert("body_loc_args".into(), Value::from(a));
                }
                Notification {
                    title,
                    body,
                    sound,
                    badge,
                    click_action,
                    subtitle,
                    body_loc_key,
                    body_loc_args,
                    title_loc_key,
                    title_loc_args,
                    android_channel_id,
                    icon,
                    tag,
                    color,
                    extra,
                }
            },
        )
}

fn data_map() -> impl Strategy<Value = Map<String, Value>> {
    // Non-reserved keys: start with a letter other than f/g/m ... or any
    // lowercase word prefixed by "k".
    btree_map("k[a-z0-9_.]{0,8}", json_value(), 0..5).prop_map(|m| m.into_iter().collect())
}

fn condition() -> impl Strategy<Value = String> {
    let atom = (
        "[a-zA-Z0-9_.~%-]{1,8}",
        any::<bool>(),
        "[iI][nN]",
        "[tT][oO][pP][iI][cC][sS]",
    )
        .prop_map(|(name, dq, i, t)| {
            let q = if dq { '"' } else { '\'' };
            format!("{q}{name}{q} {i} {t}")
        });
    (vec(atom, 1..=3), vec(any::<bool>(), 2), any::<bool>()).prop_map(|(atoms, ops, paren)| {
        let op = |b: bool| if b { " && " } else { " || " };
        match atoms.len() {
            1 => atoms[0].clone(),
            2 => format!("{}{}{}", atoms[0], op(ops[0]), atoms[1]),
            _ if paren => format!(
                "{}{}({}{}{})",
                atoms[0],
                op(ops[0]),
                atoms[1],
                op(ops[1]),
                atoms[2]
            ),
            _ => format!(
                "{}{}{}{}{}",
                atoms[0],
                op(ops[0]),
                atoms[1],
                op(ops[1]),
                atoms[2]
            ),
        }
    })
}

/// (to, condition): exactly one, well formed.
fn target() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    prop_oneof![
        "[A-Za-z0-9_:.-]{1,64}".prop_map(|t| (Some(t), None)),
        "[a-zA-Z0-9_.~%-]{1,20}".prop_map(|t| (Some(format!("/topics/{t}")), None)),
        condition().prop_map(|c| (None, Some(c))),
    ]
}

fn priority() -> impl Strategy<Value = Option<Priority>> {
    option::of(prop_oneof![Just(Priority::Normal), Just(Priority::High)])
}

fn downstream() -> impl Strategy<Value = Downstream> {
    (
        target(),
        (
            option::of(small_string()),
            option::of(small_string()),
            priority(),
        ),
        (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(0u32..=fcm::MAX_TTL_SECS),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
        ),
        option::of(data_map()),
        option::of(notification()),
        extra_map(3),
    )
        .prop_map(
            |(
                (to, condition),
                (message_id, collapse_key, priority),
                (content_available, mutable_content, time_to_live, dry_run, drr),
                data,
                notification,
                extra,
            )| Downstream {
                to,
                condition,
                message_id,
                collapse_key,
                priority,
                content_available,
                mutable_content,
                time_to_live,
                dry_run,
                delivery_receipt_requested: drr,
                data,
                notification,
                extra,
            },
        )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        (0..ErrorCode::ALL.len()).prop_map(|i| ErrorCode::ALL[i].clone()),
        any::<String>().prop_map(|s| ErrorCode::parse(&s)),
    ]
}

fn inbound() -> impl Strategy<Value = Inbound> {
    let s = || any::<String>();
    let os = || option::of(any::<String>());
    prop_oneof![
        (os(), s(), os()).prop_map(|(from, message_id, registration_id)| {
            Inbound::Ack(Ack {
                from,
                message_id,
                registration_id,
            })
        }),
        (os(), s(), os(), error_code(), os()).prop_map(
            |(from, message_id, registration_id, error, error_description)| {
                Inbound::Nack(Nack {
                    from,
                    message_id,
                    registration_id,
                    error,
                    error_description,
                })
            }
        ),
        (
            (os(), s(), os(), option::of(any::<u32>())),
            (s(), s(), os(), os(), extra_map(3)),
        )
            .prop_map(
                |(
                    (from, message_id, category, time_to_live),
                    (
                        original_message_id,
                        message_status,
                        device_registration_id,
                        message_sent_timestamp,
                        extra,
                    ),
                )| {
                    Inbound::Receipt(Receipt {
                        from,
                        message_id,
                        category,
                        data: ReceiptData {
                            original_message_id,
                            message_status,
                            device_registration_id,
                            message_sent_timestamp,
                            extra,
                        },
                        time_to_live,
                    })
                }
            ),
        os().prop_map(|control_type| Inbound::Control(Control { control_type })),
        (
            s(),
            s(),
            s(),
            option::of(btree_map(any::<String>(), json_value(), 0..4)),
            option::of(any::<u32>()),
            extra_map(3),
        )
            .prop_map(|(from, category, message_id, data, time_to_live, extra)| {
                Inbound::Upstream(Upstream {
                    from,
                    category,
                    message_id,
                    data: data.map(|m| m.into_iter().collect()),
                    time_to_live,
                    extra,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn downstream_serde_round_trip(d in downstream()) {
        let text = serde_json::to_string(&d).unwrap();
        let back: Downstream = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &d);
        prop_assert_eq!(d.to_json(), text);
    }

    #[test]
    fn downstream_validate_round_trip(d in downstream()) {
        let v = serde_json::to_value(&d).unwrap();
        match validate_downstream(&v) {
            Ok(back) => {
                prop_assert_eq!(&back, &d);
                // Serializing the validated message validates again, equal.
                let again = validate_downstream(&serde_json::from_str(&back.to_json()).unwrap());
                prop_assert_eq!(again.as_ref(), Ok(&d));
            }
            Err(r) => {
                // Generated messages break no rule except possibly size.
                prop_assert!(d.payload_size() > d.max_payload_bytes(), "{}", r);
                prop_assert!(r.description.contains("message too big"));
            }
        }
    }

    #[test]
    fn inbound_round_trip(i in inbound()) {
        let text = i.to_json();
        let back = parse_inbound(&text);
        prop_assert!(back.is_ok(), "{} -> {:?}", text, back);
        prop_assert_eq!(i.message_type().is_some(), text.starts_with("{\"message_type\""));
        prop_assert_eq!(back.unwrap(), i);
    }

    #[test]
    fn validate_never_panics(v in json_value(), m in btree_map(
        prop_oneof![
            Just("to".to_string()), Just("condition".to_string()),
            Just("time_to_live".to_string()), Just("priority".to_string()),
            Just("data".to_string()), Just("notification".to_string()),
            Just("dry_run".to_string()), "[a-z_]{1,8}",
        ],
        json_value(), 0..6)) {
        let _ = validate_downstream(&v);
        let obj = Value::Object(m.into_iter().collect());
        let _ = validate_downstream(&obj);
        let _ = serde_json::from_value::<Downstream>(obj);
    }

    #[test]
    fn parse_inbound_never_panics(s in any::<String>(), v in json_value()) {
        let _ = parse_inbound(&s);
        let _ = parse_inbound(&v.to_string());
    }

    #[test]
    fn conditions_never_panic(s in any::<String>(), t in "[ ()'\"a-z&|!]{0,40}") {
        let _ = fcm::condition_is_well_formed(&s);
        let _ = fcm::condition_is_well_formed(&t);
    }

    #[test]
    fn token_rule_matches_charset(t in any::<String>()) {
        let expected = !t.is_empty() && t.len() <= fcm::MAX_TOKEN_BYTES
            && t.chars().all(|c| c.is_ascii_alphanumeric() || "_:.-".contains(c));
        prop_assert_eq!(fcm::token_is_well_formed(&t), expected);
    }

    #[test]
    fn error_code_text_round_trips(s in any::<String>()) {
        let c = ErrorCode::parse(&s);
        prop_assert_eq!(c.as_str(), s.as_str());
        let json = serde_json::to_string(&c).unwrap();
        prop_assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), c);
    }
}
