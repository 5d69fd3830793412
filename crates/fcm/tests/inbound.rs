//! parse_inbound on the seeds' examples (seed 000, seed 004 tables 3, 5, 6, 7).
#![allow(clippy::unwrap_used)]

use fcm::{
    app_ack_json, parse_app_ack, parse_inbound, Ack, AppAck, Control, ErrorCode, Inbound, Nack,
    Receipt, ReceiptData, RetryClass, Upstream, CONNECTION_DRAINING, MESSAGE_SENT_TO_DEVICE,
};
use serde_json::{json, Map, Value};

fn roundtrip(i: &Inbound) {
    let text = i.to_json();
    assert_eq!(&parse_inbound(&text).unwrap(), i, "{text}");
}

#[test]
fn seed_ack() {
    let json = r#"{
        "from":"bk3RNwTe3H0:CI2k_HHwgIpoDKCIZvvDMExUdFQ3P1...",
        "message_id":"1366082849205",
        "message_type":"ack"
    }"#;
    let i = parse_inbound(json).unwrap();
    assert_eq!(
        i,
        Inbound::Ack(Ack {
            from: Some("bk3RNwTe3H0:CI2k_HHwgIpoDKCIZvvDMExUdFQ3P1...".into()),
            message_id: "1366082849205".into(),
            registration_id: None,
        })
    );
    assert_eq!(i.message_type(), Some("ack"));
    assert_eq!(i.message_id(), Some("1366082849205"));
    roundtrip(&i);
    let out: Value = serde_json::from_str(&i.to_json()).unwrap();
    let seed: Value = serde_json::from_str(json).unwrap();
    assert_eq!(out, seed);
}

#[test]
fn ack_with_canonical_registration_id() {
    let i = parse_inbound(
        r#"{"message_type":"ack","from":"old","message_id":"m","registration_id":"new"}"#,
    )
    .unwrap();
    let Inbound::Ack(a) = &i else { panic!("{i:?}") };
    assert_eq!(a.registration_id.as_deref(), Some("new"));
    roundtrip(&i);
}

#[test]
fn seed_nack_bad_registration() {
    let json = r#"{ "message_type":"nack",
        "from":"eQq",
        "message_id":"800001",
        "error":"BAD_REGISTRATION",
        "error_description":""
        }"#;
    let i = parse_inbound(json).unwrap();
    assert_eq!(
        i,
        Inbound::Nack(Nack {
            from: Some("eQq".into()),
            message_id: "800001".into(),
            registration_id: None,
            error: ErrorCode::BadRegistration,
            error_description: Some(String::new()),
        })
    );
    let Inbound::Nack(n) = &i else { unreachable!() };
    assert_eq!(n.error.retry_class(), RetryClass::Final);
    roundtrip(&i);
}

#[test]
fn nack_codes() {
    for code in ErrorCode::ALL {
        let text =
            json!({"message_type": "nack", "message_id": "m", "error": code.as_str()}).to_string();
        let Inbound::Nack(n) = parse_inbound(&text).unwrap() else {
            panic!()
        };
        assert_eq!(n.error, code);
    }
    // Unknown code kept; missing or null code -> Unknown("").
    let Inbound::Nack(n) =
        parse_inbound(r#"{"message_type":"nack","message_id":"m","error":"NEW_CODE"}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(n.error, ErrorCode::Unknown("NEW_CODE".into()));
    for text in [
        r#"{"message_type":"nack","message_id":"m"}"#,
        r#"{"message_type":"nack","message_id":"m","error":null}"#,
    ] {
        let i = parse_inbound(text).unwrap();
        let Inbound::Nack(n) = &i else { panic!() };
        assert_eq!(n.error, ErrorCode::Unknown(String::new()));
        assert_eq!(n.error.retry_class(), RetryClass::Final);
        roundtrip(&i);
    }
    assert!(parse_inbound(r#"{"message_type":"nack","message_id":"m","error":5}"#).is_err());
}

#[test]
fn seed_receipt() {
    let json = r#"{
        "category": "com.gmail.rajeshkhumanthem.seabus",
        "data": {
            "device_registration_id": "feQxxxxxxxa",
            "message_sent_timestamp": "1498801519251",
            "message_status": "MESSAGE_SENT_TO_DEVICE",
            "original_message_id": "39"
        },
        "from": "gcm.googleapis.com",
        "message_id": "dr2:39",
        "message_type": "receipt",
        "time_to_live": 0
    }"#;
    let i = parse_inbound(json).unwrap();
    assert_eq!(
        i,
        Inbound::Receipt(Receipt {
            from: Some("gcm.googleapis.com".into()),
            message_id: "dr2:39".into(),
            category: Some("com.gmail.rajeshkhumanthem.seabus".into()),
            data: ReceiptData {
                original_message_id: "39".into(),
                message_status: MESSAGE_SENT_TO_DEVICE.into(),
                device_registration_id: Some("feQxxxxxxxa".into()),
                message_sent_timestamp: Some("1498801519251".into()),
                extra: Map::new(),
            },
            time_to_live: Some(0),
        })
    );
    roundtrip(&i);
    let out: Value = serde_json::from_str(&i.to_json()).unwrap();
    assert_eq!(out, serde_json::from_str::<Value>(json).unwrap());
    // The app server acks it to its sender.
    let Inbound::Receipt(r) = &i else {
        unreachable!()
    };
    assert_eq!(
        app_ack_json(r.from.as_deref().unwrap(), &r.message_id),
        r#"{"to":"gcm.googleapis.com","message_id":"dr2:39","message_type":"ack"}"#
    );
}

#[test]
fn receipt_keeps_unknown_data_keys_and_requires_data() {
    let i = parse_inbound(
        r#"{"message_type":"receipt","message_id":"dr2:1","data":{"original_message_id":"1","message_status":"X","extra_key":7}}"#,
    )
    .unwrap();
    let Inbound::Receipt(r) = &i else { panic!() };
    assert_eq!(r.data.extra["extra_key"], 7);
    roundtrip(&i);
    assert!(parse_inbound(r#"{"message_type":"receipt","message_id":"dr2:1"}"#).is_err());
    assert!(parse_inbound(
        r#"{"message_type":"receipt","message_id":"dr2:1","data":{"message_status":"X"}}"#
    )
    .is_err());
}

#[test]
fn seed_upstream() {
    let json = r#"
    {"data": {"Hello":"World"},
    "time_to_live":10,
    "from":"feQqD9P957k:APA91bH-jE8j6dAohIB5spQrCajDwUsDtNdf3",
    "message_id":"1234567",
    "category":"com.gmail.rajeshkhumanthem.phantom"
    }
    "#;
    let i = parse_inbound(json).unwrap();
    let mut data = Map::new();
    data.insert("Hello".into(), "World".into());
    assert_eq!(
        i,
        Inbound::Upstream(Upstream {
            from: "feQqD9P957k:APA91bH-jE8j6dAohIB5spQrCajDwUsDtNdf3".into(),
            category: "com.gmail.rajeshkhumanthem.phantom".into(),
            message_id: "1234567".into(),
            data: Some(data),
            time_to_live: Some(10),
            extra: Map::new(),
        })
    );
    assert_eq!(i.message_type(), None);
    roundtrip(&i);
    let text = i.to_json();
    assert!(!text.contains("message_type"), "{text}");
    // seed 000: the ack the app server sends back for it.
    let Inbound::Upstream(u) = &i else {
        unreachable!()
    };
    let ack = app_ack_json(&u.from, &u.message_id);
    let seed_ack: Value = serde_json::from_str(
        r#"{
            "to":"feQqD9P957k:APA91bH-jE8j6dAohIB5spQrCajDwUsDtNdf3",
            "message_id":"1234567",
            "message_type": "ack"
        }"#,
    )
    .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&ack).unwrap(), seed_ack);
    assert_eq!(
        ack,
        r#"{"to":"feQqD9P957k:APA91bH-jE8j6dAohIB5spQrCajDwUsDtNdf3","message_id":"1234567","message_type":"ack"}"#
    );
    assert_eq!(
        parse_app_ack(&ack).unwrap(),
        AppAck {
            to: u.from.clone(),
            message_id: u.message_id.clone()
        }
    );
}

#[test]
fn upstream_requires_from_category_message_id() {
    for text in [
        r#"{"category":"c","message_id":"m"}"#,
        r#"{"from":"f","message_id":"m"}"#,
        r#"{"from":"f","category":"c"}"#,
        r#"{"from":"f","category":"c","message_id":1}"#,
        r#"{"from":"f","category":"c","message_id":"m","data":"x"}"#,
        r#"{"from":"f","category":"c","message_id":"m","time_to_live":-1}"#,
    ] {
        assert!(parse_inbound(text).is_err(), "{text}");
    }
    // Unknown keys kept; message_type null counts as absent.
    let i = parse_inbound(
        r#"{"from":"f","category":"c","message_id":"m","message_type":null,"x":[1]}"#,
    )
    .unwrap();
    let Inbound::Upstream(u) = &i else { panic!() };
    assert_eq!(u.extra["x"], json!([1]));
}

#[test]
fn seed_control_connection_draining() {
    let i = parse_inbound(r#"{"message_type":"control","control_type":"CONNECTION_DRAINING"}"#)
        .unwrap();
    assert_eq!(i, Inbound::Control(Control::connection_draining()));
    let Inbound::Control(c) = &i else {
        unreachable!()
    };
    assert!(c.is_connection_draining());
    assert_eq!(c.control_type.as_deref(), Some(CONNECTION_DRAINING));
    assert_eq!(i.message_id(), None);
    assert_eq!(
        i.to_json(),
        r#"{"message_type":"control","control_type":"CONNECTION_DRAINING"}"#
    );
    roundtrip(&i);
    // Other or missing control types are still control messages.
    let i = parse_inbound(r#"{"message_type":"control"}"#).unwrap();
    assert_eq!(i, Inbound::Control(Control::default()));
    assert!(!Control::default().is_connection_draining());
    roundtrip(&i);
}

#[test]
fn to_json_emits_message_type_first() {
    let cases: [(Inbound, &str); 4] = [
        (
            Ack {
                from: None,
                message_id: "m".into(),
                registration_id: None,
            }
            .into(),
            r#"{"message_type":"ack","message_id":"m"}"#,
        ),
        (
            Nack {
                from: Some("f".into()),
                message_id: "m".into(),
                registration_id: None,
                error: ErrorCode::ServiceUnavailable,
                error_description: None,
            }
            .into(),
            r#"{"message_type":"nack","from":"f","message_id":"m","error":"SERVICE_UNAVAILABLE"}"#,
        ),
        (
            Receipt {
                from: None,
                message_id: "dr2:m".into(),
                category: None,
                data: ReceiptData {
                    original_message_id: "m".into(),
                    message_status: MESSAGE_SENT_TO_DEVICE.into(),
                    ..Default::default()
                },
                time_to_live: None,
            }
            .into(),
            r#"{"message_type":"receipt","message_id":"dr2:m","data":{"original_message_id":"m","message_status":"MESSAGE_SENT_TO_DEVICE"}}"#,
        ),
        (
            Control::connection_draining().into(),
            r#"{"message_type":"control","control_type":"CONNECTION_DRAINING"}"#,
        ),
    ];
    for (i, expected) in cases {
        assert_eq!(i.to_json(), expected);
        roundtrip(&i);
    }
}

#[test]
fn message_type_classification() {
    // Case-insensitive known types.
    assert!(matches!(
        parse_inbound(r#"{"message_type":"ACK","message_id":"m"}"#),
        Ok(Inbound::Ack(_))
    ));
    assert!(matches!(
        parse_inbound(r#"{"message_type":"Nack","message_id":"m","error":"BAD_ACK"}"#),
        Ok(Inbound::Nack(_))
    ));
    // Escaped message_type text still classifies.
    assert!(matches!(
        parse_inbound(r#"{"message_type":"\u0061ck","message_id":"m"}"#),
        Ok(Inbound::Ack(_))
    ));
    // Unknown message types, wrong types, non-objects, bad JSON: errors.
    for text in [
        r#"{"message_type":"upstream","from":"f","category":"c","message_id":"m"}"#,
        r#"{"message_type":"","message_id":"m"}"#,
        r#"{"message_type":5,"message_id":"m"}"#,
        r#"{"message_type":"ack"}"#,
        r#"["control"]"#,
        r#"["ack","m"]"#,
        r#""ack""#,
        "",
        "   ",
        "{",
        "not json",
        r#"{"message_type":"ack","message_id":"m"} trailing"#,
    ] {
        assert!(parse_inbound(text).is_err(), "{text:?}");
    }
    let err = parse_inbound(r#"{"message_type":"weird"}"#).unwrap_err();
    assert!(err.to_string().contains("weird"), "{err}");
}

#[test]
fn app_ack_parsing() {
    assert!(parse_app_ack(r#"{"to":"t","message_id":"m","message_type":"ack"}"#).is_ok());
    assert!(parse_app_ack(r#"{"to":"t","message_id":"m"}"#).is_err());
    assert!(parse_app_ack(r#"{"to":"t","message_id":"m","message_type":"nack"}"#).is_err());
    assert!(parse_app_ack(r#"{"message_id":"m","message_type":"ack"}"#).is_err());
    assert!(parse_app_ack(r#"["t","m"]"#).is_err());
}
