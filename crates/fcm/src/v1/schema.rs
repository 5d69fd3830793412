//! The JSON shapes of FCM HTTP v1's own `Message` blocks — `android`
//! (AndroidConfig), `apns` (ApnsConfig), `webpush` (WebpushConfig),
//! `fcm_options` (FcmOptions) and what they hold — as far as SPEC §8.2's
//! "the v1 blocks' JSON types" needs them, after Google's `projects.messages`
//! reference.
//!
//! Every field has its proto name (`channel_id`) and its JSON name
//! (`channelId`); Google's JSON parser accepts both, so gimmm does too, and
//! refuses an object that sets one field under both names. Fields this table
//! does not know are passed through unchecked: Google keeps adding fields
//! (`bandwidth_constrained_ok`, `live_activity_token`, …) and FCM itself is
//! the judge of those. Enum fields are checked for their JSON type (a string,
//! or the enum's number) but not their value, for the same reason. `null`
//! for a field means "unset", as in proto3 JSON.

use serde_json::{Map, Value};

use super::json::{kind, push_key, push_value, truncate};
use crate::downstream::MAX_TTL_SECS;
use crate::error::Rejection;

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// A string.
    Str,
    /// `true` / `false`.
    Bool,
    /// An `int32`: an integer, or a string holding one (proto3 JSON).
    Int32,
    /// A `float` / `double`: a number, or a string holding one.
    Number,
    /// An enum: its name as a string, or its number.
    Enum,
    /// A `google.protobuf.Duration`: `"3.5s"`.
    Duration,
    /// `android.ttl`: a Duration of 0 ..= 2419200 s.
    Ttl,
    /// A list of strings.
    StrList,
    /// A list of Durations.
    DurationList,
    /// `map<string, string>`: an object whose values are strings.
    StrMap,
    /// HTTP headers (`map<string, string>` whose keys compare without case).
    HeaderMap,
    /// A value inside a `map<string, string>`: a string, `null` not allowed.
    MapValue,
    /// `google.protobuf.Struct`: any object.
    Struct,
    /// Anything (inside a Struct).
    Any,
    /// A message with these fields.
    Msg(&'static [Field]),
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Str | Kind::MapValue => "a string",
            Kind::Bool => "a boolean",
            Kind::Int32 => "a 32-bit integer",
            Kind::Number => "a number",
            Kind::Enum => "an enum name (a string) or number",
            Kind::Duration => "a duration such as \"3.5s\"",
            Kind::Ttl => "a duration such as \"600s\" of at most 2419200 seconds",
            Kind::StrList => "an array of strings",
            Kind::DurationList => "an array of durations such as \"0.5s\"",
            Kind::StrMap | Kind::HeaderMap => "an object of strings",
            Kind::Struct | Kind::Msg(_) => "an object",
            Kind::Any => "any JSON value",
        }
    }
}

/// One field of a v1 message type.
#[derive(Debug)]
pub(super) struct Field {
    /// The proto field name, e.g. `channel_id`.
    pub(super) snake: &'static str,
    /// The JSON (lowerCamelCase) name, e.g. `channelId`.
    pub(super) camel: &'static str,
    /// Its JSON type.
    pub(super) kind: Kind,
}

const fn f(snake: &'static str, camel: &'static str, kind: Kind) -> Field {
    Field { snake, camel, kind }
}

/// `google.type.Color`.
const COLOR: &[Field] = &[
    f("red", "red", Kind::Number),
    f("green", "green", Kind::Number),
    f("blue", "blue", Kind::Number),
    f("alpha", "alpha", Kind::Number),
];

/// `LightSettings`.
const LIGHT_SETTINGS: &[Field] = &[
    f("color", "color", Kind::Msg(COLOR)),
    f("light_on_duration", "lightOnDuration", Kind::Duration),
    f("light_off_duration", "lightOffDuration", Kind::Duration),
];

/// `AndroidNotification`.
pub(super) const ANDROID_NOTIFICATION: &[Field] = &[
    f("title", "title", Kind::Str),
    f("body", "body", Kind::Str),
    f("icon", "icon", Kind::Str),
    f("color", "color", Kind::Str),
    f("sound", "sound", Kind::Str),
    f("tag", "tag", Kind::Str),
    f("click_action", "clickAction", Kind::Str),
    f("body_loc_key", "bodyLocKey", Kind::Str),
    f("body_loc_args", "bodyLocArgs", Kind::StrList),
    f("title_loc_key", "titleLocKey", Kind::Str),
    f("title_loc_args", "titleLocArgs", Kind::StrList),
    f("channel_id", "channelId", Kind::Str),
    f("ticker", "ticker", Kind::Str),
    f("sticky", "sticky", Kind::Bool),
    f("event_time", "eventTime", Kind::Str),
    f("local_only", "localOnly", Kind::Bool),
    f("notification_priority", "notificationPriority", Kind::Enum),
    f("default_sound", "defaultSound", Kind::Bool),
    f(
        "default_vibrate_timings",
        "defaultVibrateTimings",
        Kind::Bool,
    ),
    f("default_light_settings", "defaultLightSettings", Kind::Bool),
    f("vibrate_timings", "vibrateTimings", Kind::DurationList),
    f("visibility", "visibility", Kind::Enum),
    f("notification_count", "notificationCount", Kind::Int32),
    f("light_settings", "lightSettings", Kind::Msg(LIGHT_SETTINGS)),
    f("image", "image", Kind::Str),
    f(
        "bypass_proxy_notification",
        "bypassProxyNotification",
        Kind::Bool,
    ),
    f("proxy", "proxy", Kind::Enum),
];

/// `AndroidFcmOptions`.
const ANDROID_FCM_OPTIONS: &[Field] = &[f("analytics_label", "analyticsLabel", Kind::Str)];

/// `AndroidConfig`.
pub(super) const ANDROID_CONFIG: &[Field] = &[
    f("collapse_key", "collapseKey", Kind::Str),
    f("priority", "priority", Kind::Enum),
    f("ttl", "ttl", Kind::Ttl),
    f(
        "restricted_package_name",
        "restrictedPackageName",
        Kind::Str,
    ),
    f("data", "data", Kind::StrMap),
    f(
        "notification",
        "notification",
        Kind::Msg(ANDROID_NOTIFICATION),
    ),
    f("fcm_options", "fcmOptions", Kind::Msg(ANDROID_FCM_OPTIONS)),
    f("direct_boot_ok", "directBootOk", Kind::Bool),
    f(
        "bandwidth_constrained_ok",
        "bandwidthConstrainedOk",
        Kind::Bool,
    ),
    f(
        "restricted_satellite_ok",
        "restrictedSatelliteOk",
        Kind::Bool,
    ),
];

/// `ApnsFcmOptions`.
const APNS_FCM_OPTIONS: &[Field] = &[
    f("analytics_label", "analyticsLabel", Kind::Str),
    f("image", "image", Kind::Str),
];

/// `ApnsConfig`.
pub(super) const APNS_CONFIG: &[Field] = &[
    f("headers", "headers", Kind::HeaderMap),
    f("payload", "payload", Kind::Struct),
    f("fcm_options", "fcmOptions", Kind::Msg(APNS_FCM_OPTIONS)),
    f("live_activity_token", "liveActivityToken", Kind::Str),
];

/// `WebpushFcmOptions`.
const WEBPUSH_FCM_OPTIONS: &[Field] = &[
    f("link", "link", Kind::Str),
    f("analytics_label", "analyticsLabel", Kind::Str),
];

/// `WebpushConfig`.
pub(super) const WEBPUSH_CONFIG: &[Field] = &[
    f("headers", "headers", Kind::HeaderMap),
    f("data", "data", Kind::StrMap),
    f("notification", "notification", Kind::Struct),
    f("fcm_options", "fcmOptions", Kind::Msg(WEBPUSH_FCM_OPTIONS)),
];

/// `FcmOptions`.
pub(super) const FCM_OPTIONS: &[Field] = &[f("analytics_label", "analyticsLabel", Kind::Str)];

/// The field `key` names (under either spelling).
pub(super) fn field<'f>(fields: &'f [Field], key: &str) -> Option<&'f Field> {
    fields.iter().find(|f| f.snake == key || f.camel == key)
}

/// Where a value sits in the message, for error descriptions; built on the
/// stack, rendered only when something is wrong.
#[derive(Clone, Copy)]
pub(super) struct Path<'p> {
    parent: Option<&'p Path<'p>>,
    key: &'p str,
}

impl<'p> Path<'p> {
    /// A top-level key.
    pub(super) fn root(key: &'p str) -> Self {
        Path { parent: None, key }
    }

    /// `self.key`.
    pub(super) fn child(&'p self, key: &'p str) -> Path<'p> {
        Path {
            parent: Some(self),
            key,
        }
    }

    /// `android.notification.channel_id`.
    pub(super) fn render(&self) -> String {
        let mut keys = vec![truncate(self.key, 64)];
        let mut p = self.parent;
        while let Some(q) = p {
            keys.push(truncate(q.key, 64));
            p = q.parent;
        }
        keys.reverse();
        // Keys are the BAL's text: one printable line in descriptions.
        keys.join(".")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }

    fn wrong_type(&self, kind: Kind, got: &Value) -> Rejection {
        Rejection::invalid_json(format!(
            "{} must be {}, got {}",
            self.render(),
            kind.expected(),
            describe(got)
        ))
    }
}

/// A value's type, plus the text of a short string (a malformed duration
/// is easier to fix when you see it).
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", truncate(s, 32)),
        other => kind(other).to_owned(),
    }
}

/// A `google.protobuf.Duration` in JSON: `[-]SECONDS[.FRACTION]s`, at most
/// nine fraction digits. Returns (negative, seconds, has a non-zero fraction).
pub(super) fn parse_duration(s: &str) -> Option<(bool, u64, bool)> {
    let body = s.strip_suffix('s')?;
    let (negative, body) = match body.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let (secs, frac) = match body.split_once('.') {
        Some((secs, frac)) => (secs, Some(frac)),
        None => (body, None),
    };
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let fractional = match frac {
        None => false,
        Some(frac) => {
            if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            frac.bytes().any(|b| b != b'0')
        }
    };
    // Proto's Duration range: ±315,576,000,000 s.
    if secs > 315_576_000_000 {
        return None;
    }
    Some((negative, secs, fractional))
}

fn ttl_ok(s: &str) -> bool {
    match parse_duration(s) {
        Some((false, secs, fractional)) => {
            let max = u64::from(MAX_TTL_SECS);
            secs < max || (secs == max && !fractional)
        }
        Some((true, secs, fractional)) => secs == 0 && !fractional,
        None => false,
    }
}

/// Refuses an object that names one field under both of its spellings.
pub(super) fn check_spellings(
    path: &Path<'_>,
    fields: &[Field],
    map: &Map<String, Value>,
) -> Result<(), Rejection> {
    for f in fields {
        if f.snake != f.camel && map.contains_key(f.snake) && map.contains_key(f.camel) {
            return Err(Rejection::invalid_json(format!(
                "{}: {} and {} name the same field; set only one",
                path.render(),
                f.snake,
                f.camel
            )));
        }
    }
    Ok(())
}

/// Checks `v` against `kind` and appends it. `null` is accepted for any
/// field (proto3 JSON: unset) but not inside a map or a list.
pub(super) fn write_given(
    out: &mut String,
    path: &Path<'_>,
    v: &Value,
    kind: Kind,
) -> Result<(), Rejection> {
    let ok = match (kind, v) {
        (Kind::MapValue, Value::String(_)) => true,
        (Kind::MapValue, _) => false,
        (_, Value::Null) | (Kind::Any, _) => true,
        (Kind::Str, Value::String(_)) | (Kind::Bool, Value::Bool(_)) => true,
        (Kind::Int32, Value::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        (Kind::Int32, Value::String(s)) => s.parse::<i32>().is_ok(),
        (Kind::Number, Value::Number(_)) => true,
        (Kind::Number, Value::String(s)) => s.parse::<f64>().is_ok(),
        (Kind::Enum, Value::String(_)) => true,
        (Kind::Enum, Value::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        (Kind::Duration, Value::String(s)) => parse_duration(s).is_some(),
        (Kind::Ttl, Value::String(s)) => ttl_ok(s),
        (Kind::StrList, Value::Array(items)) => {
            return write_list(out, path, items, |v| v.is_string(), "a string");
        }
        (Kind::DurationList, Value::Array(items)) => {
            return write_list(
                out,
                path,
                items,
                |v| v.as_str().and_then(parse_duration).is_some(),
                "a duration such as \"0.5s\"",
            );
        }
        (Kind::StrMap | Kind::HeaderMap, Value::Object(map)) => {
            out.push('{');
            let mut first = true;
            for (k, item) in map {
                push_key(out, &mut first, k);
                write_given(out, &path.child(k), item, Kind::MapValue)?;
            }
            out.push('}');
            return Ok(());
        }
        (Kind::Struct, Value::Object(_)) => true,
        (Kind::Msg(fields), Value::Object(map)) => {
            check_spellings(path, fields, map)?;
            out.push('{');
            let mut first = true;
            for (k, item) in map {
                push_key(out, &mut first, k);
                match field(fields, k) {
                    Some(f) => write_given(out, &path.child(k), item, f.kind)?,
                    None => push_value(out, item),
                }
            }
            out.push('}');
            return Ok(());
        }
        _ => false,
    };
    if !ok {
        return Err(path.wrong_type(kind, v));
    }
    push_value(out, v);
    Ok(())
}

fn write_list(
    out: &mut String,
    path: &Path<'_>,
    items: &[Value],
    ok: impl Fn(&Value) -> bool,
    expected: &str,
) -> Result<(), Rejection> {
    if let Some(i) = items.iter().position(|v| !ok(v)) {
        return Err(Rejection::invalid_json(format!(
            "{}[{i}] must be {expected}, got {}",
            path.render(),
            describe(&items[i])
        )));
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_value(out, item);
    }
    out.push(']');
    Ok(())
}

/// Checks `v` against `kind` without keeping the output.
#[cfg(test)]
fn check_given(path: &Path<'_>, v: &Value, kind: Kind) -> Result<(), Rejection> {
    write_given(&mut String::new(), path, v, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Some((false, 3, false)));
        assert_eq!(parse_duration("3.5s"), Some((false, 3, true)));
        assert_eq!(parse_duration("3.000s"), Some((false, 3, false)));
        assert_eq!(parse_duration("-1s"), Some((true, 1, false)));
        assert_eq!(parse_duration("0.000000001s"), Some((false, 0, true)));
        for bad in [
            "",
            "s",
            "3",
            "3.5",
            ".5s",
            "3.s",
            "3.1234567890s",
            "+3s",
            " 3s",
            "3 s",
            "3ms",
            "1e3s",
            "--1s",
            "99999999999999999999s",
            "315576000001s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ttl_range() {
        for ok in [
            "0s",
            "-0s",
            "600s",
            "2419200s",
            "2419200.000s",
            "2419199.999999999s",
        ] {
            assert!(ttl_ok(ok), "{ok}");
        }
        for bad in ["2419200.5s", "2419201s", "-1s", "-0.5s", "600", "abc"] {
            assert!(!ttl_ok(bad), "{bad}");
        }
    }

    #[test]
    fn tables_have_consistent_spellings() {
        // The JSON name is the lowerCamelCase of the proto name.
        fn camel(s: &str) -> String {
            let mut out = String::new();
            let mut up = false;
            for c in s.chars() {
                if c == '_' {
                    up = true;
                } else if up {
                    out.extend(c.to_uppercase());
                    up = false;
                } else {
                    out.push(c);
                }
            }
            out
        }
        fn walk(fields: &[Field]) {
            for f in fields {
                assert_eq!(camel(f.snake), f.camel);
                if let Kind::Msg(inner) = f.kind {
                    walk(inner);
                }
            }
        }
        for t in [ANDROID_CONFIG, APNS_CONFIG, WEBPUSH_CONFIG, FCM_OPTIONS] {
            walk(t);
        }
    }

    #[test]
    fn kinds_accept_and_refuse() {
        let p = Path::root("x");
        let cases: &[(Kind, Value, bool)] = &[
            (Kind::Str, json!("a"), true),
            (Kind::Str, json!(1), false),
            (Kind::Str, json!(null), true),
            (Kind::Bool, json!(true), true),
            (Kind::Bool, json!("true"), false),
            (Kind::Int32, json!(5), true),
            (Kind::Int32, json!("5"), true),
            (Kind::Int32, json!(5.5), false),
            (Kind::Int32, json!(4_294_967_296_u64), false),
            (Kind::Int32, json!("x"), false),
            (Kind::Number, json!(0.5), true),
            (Kind::Number, json!("0.5"), true),
            (Kind::Number, json!("x"), false),
            (Kind::Enum, json!("HIGH"), true),
            (Kind::Enum, json!(2), true),
            (Kind::Enum, json!(true), false),
            (Kind::Duration, json!("1.5s"), true),
            (Kind::Duration, json!(1.5), false),
            (Kind::StrList, json!(["a", "b"]), true),
            (Kind::StrList, json!(["a", 1]), false),
            (Kind::StrList, json!("a"), false),
            (Kind::DurationList, json!(["1s", "0.5s"]), true),
            (Kind::DurationList, json!(["1"]), false),
            (Kind::StrMap, json!({"a": "b"}), true),
            (Kind::StrMap, json!({"a": 1}), false),
            (Kind::StrMap, json!({"a": null}), false),
            (Kind::StrMap, json!([]), false),
            (Kind::Struct, json!({"a": [1, {"b": null}]}), true),
            (Kind::Struct, json!("x"), false),
            (Kind::Any, json!([1]), true),
            (Kind::Msg(COLOR), json!({"red": 0.5, "unknown": [1]}), true),
            (Kind::Msg(COLOR), json!({"red": "x"}), false),
            (Kind::Msg(COLOR), json!(1), false),
        ];
        for (kind, v, ok) in cases {
            assert_eq!(check_given(&p, v, *kind).is_ok(), *ok, "{kind:?} {v}");
        }
    }

    #[test]
    fn paths_render() {
        let a = Path::root("android");
        let b = a.child("notification");
        let c = b.child("channel_id");
        assert_eq!(c.render(), "android.notification.channel_id");
        assert_eq!(a.child("da\nta").render(), "android.da ta");
        let e = check_given(&c, &json!(1), Kind::Str).unwrap_err();
        assert_eq!(
            e.description,
            "android.notification.channel_id must be a string, got an integer"
        );
    }
}
