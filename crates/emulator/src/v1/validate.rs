//! Request validation of `projects.messages.send`, the way Google's API
//! checks a `SendMessageRequest` (SPEC §9; field names from the v1
//! reference: `Message`, `Notification`, `AndroidConfig`,
//! `AndroidNotification`, `LightSettings`, `Color`, `AndroidFcmOptions`,
//! `ApnsConfig`, `ApnsFcmOptions`, `WebpushConfig`, `WebpushFcmOptions`,
//! `FcmOptions`).
//!
//! Two stages, as at Google:
//!
//! 1. **JSON → proto parsing** (Google's front end). Field names are
//!    accepted as the proto name (`collapse_key`) or its lowerCamelCase JSON
//!    name (`collapseKey`); `null` means "not set"; unknown names, values of
//!    the wrong JSON type, bad enum names (matched case-insensitively, or
//!    given as numbers), malformed `google.protobuf.Duration` (`"3.5s"`) or
//!    `Timestamp` strings, non-string map values and a second member of the
//!    `target` oneof are all reported together as one 400
//!    `INVALID_ARGUMENT` whose `BadRequest` lists every violation, with no
//!    FcmError.
//! 2. **FCM's own checks** (400 `INVALID_ARGUMENT` with an FcmError): a
//!    target is set (`token`, `topic`, `condition`, or `fid`, the Firebase
//!    installation ID of newer API revisions and Admin SDKs, which follows
//!    the token rules); reserved `data` keys ([`fcm::is_reserved_data_key`]);
//!    the payload limit (4096 bytes, 2048 for topic and condition messages,
//!    counted over `data` (or `android.data` when set) and `notification`,
//!    key bytes plus value bytes); `android.ttl` within 0..=2419200 s
//!    (rounded down to whole seconds first); `android.notification.color`
//!    as `#rrggbb`; the topic name and condition syntax (at most five
//!    topics, `&&`, `||`, `!`, parentheses); and last the registration
//!    token's form ([`fcm::token_is_well_formed`]).
//!
//! Whether a well-formed token is registered is the registry's business
//! (`server.rs`), not this module's.

use serde_json::{Map, Value};

use super::errors::{ApiError, Detail, V1ErrorCode, Violation, INVALID_TOKEN_MESSAGE};

// ---------------------------------------------------------------------
// schema

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int32,
    Float,
    Duration,
    Timestamp,
    Enum(&'static EnumDef),
    /// `map<string, string>`; the `*Entry` type name for error messages.
    StrMap(&'static str),
    /// `google.protobuf.Struct`: any JSON object.
    Struct,
    RepStr,
    RepDuration,
    Msg(&'static MsgDef),
}

struct FieldDef {
    /// Proto (snake_case) name.
    name: &'static str,
    kind: Kind,
    /// Name of the oneof it belongs to.
    oneof: Option<&'static str>,
}

struct MsgDef {
    type_url: &'static str,
    fields: &'static [FieldDef],
}

struct EnumDef {
    type_url: &'static str,
    values: &'static [&'static str],
}

const fn f(name: &'static str, kind: Kind) -> FieldDef {
    FieldDef {
        name,
        kind,
        oneof: None,
    }
}

const fn target(name: &'static str) -> FieldDef {
    FieldDef {
        name,
        kind: Kind::Str,
        oneof: Some("target"),
    }
}

static ANDROID_PRIORITY: EnumDef = EnumDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority",
    values: &["NORMAL", "HIGH"],
};

static NOTIFICATION_PRIORITY: EnumDef = EnumDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.AndroidNotification.NotificationPriority",
    values: &[
        "PRIORITY_UNSPECIFIED",
        "PRIORITY_MIN",
        "PRIORITY_LOW",
        "PRIORITY_DEFAULT",
        "PRIORITY_HIGH",
        "PRIORITY_MAX",
    ],
};

static VISIBILITY: EnumDef = EnumDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.AndroidNotification.Visibility",
    values: &["VISIBILITY_UNSPECIFIED", "PRIVATE", "PUBLIC", "SECRET"],
};

static PROXY: EnumDef = EnumDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.AndroidNotification.Proxy",
    values: &["PROXY_UNSPECIFIED", "ALLOW", "DENY", "IF_PRIORITY_LOWERED"],
};

static COLOR: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.type.Color",
    fields: &[
        f("red", Kind::Float),
        f("green", Kind::Float),
        f("blue", Kind::Float),
        f("alpha", Kind::Float),
    ],
};

static LIGHT_SETTINGS: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.LightSettings",
    fields: &[
        f("color", Kind::Msg(&COLOR)),
        f("light_on_duration", Kind::Duration),
        f("light_off_duration", Kind::Duration),
    ],
};

static ANDROID_NOTIFICATION: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.AndroidNotification",
    fields: &[
        f("title", Kind::Str),
        f("body", Kind::Str),
        f("icon", Kind::Str),
        f("color", Kind::Str),
        f("sound", Kind::Str),
        f("tag", Kind::Str),
        f("click_action", Kind::Str),
        f("body_loc_key", Kind::Str),
        f("body_loc_args", Kind::RepStr),
        f("title_loc_key", Kind::Str),
        f("title_loc_args", Kind::RepStr),
        f("channel_id", Kind::Str),
        f("ticker", Kind::Str),
        f("sticky", Kind::Bool),
        f("event_time", Kind::Timestamp),
        f("local_only", Kind::Bool),
        f("notification_priority", Kind::Enum(&NOTIFICATION_PRIORITY)),
        f("default_sound", Kind::Bool),
        f("default_vibrate_timings", Kind::Bool),
        f("default_light_settings", Kind::Bool),
        f("vibrate_timings", Kind::RepDuration),
        f("visibility", Kind::Enum(&VISIBILITY)),
        f("notification_count", Kind::Int32),
        f("light_settings", Kind::Msg(&LIGHT_SETTINGS)),
        f("image", Kind::Str),
        f("bypass_proxy_notification", Kind::Bool),
        f("proxy", Kind::Enum(&PROXY)),
    ],
};

static ANDROID_FCM_OPTIONS: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.AndroidFcmOptions",
    fields: &[f("analytics_label", Kind::Str)],
};

static ANDROID_CONFIG: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.AndroidConfig",
    fields: &[
        f("collapse_key", Kind::Str),
        f("priority", Kind::Enum(&ANDROID_PRIORITY)),
        f("ttl", Kind::Duration),
        f("restricted_package_name", Kind::Str),
        f(
            "data",
            Kind::StrMap("type.googleapis.com/google.firebase.fcm.v1.AndroidConfig.DataEntry"),
        ),
        f("notification", Kind::Msg(&ANDROID_NOTIFICATION)),
        f("fcm_options", Kind::Msg(&ANDROID_FCM_OPTIONS)),
        f("direct_boot_ok", Kind::Bool),
        f("bandwidth_constrained_ok", Kind::Bool),
        f("restricted_satellite_ok", Kind::Bool),
    ],
};

static APNS_FCM_OPTIONS: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.ApnsFcmOptions",
    fields: &[f("analytics_label", Kind::Str), f("image", Kind::Str)],
};

static APNS_CONFIG: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.ApnsConfig",
    fields: &[
        f(
            "headers",
            Kind::StrMap("type.googleapis.com/google.firebase.fcm.v1.ApnsConfig.HeadersEntry"),
        ),
        f("payload", Kind::Struct),
        f("fcm_options", Kind::Msg(&APNS_FCM_OPTIONS)),
        f("live_activity_token", Kind::Str),
    ],
};

static WEBPUSH_FCM_OPTIONS: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.WebpushFcmOptions",
    fields: &[f("link", Kind::Str), f("analytics_label", Kind::Str)],
};

static WEBPUSH_CONFIG: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.WebpushConfig",
    fields: &[
        f(
            "headers",
            Kind::StrMap("type.googleapis.com/google.firebase.fcm.v1.WebpushConfig.HeadersEntry"),
        ),
        f(
            "data",
            Kind::StrMap("type.googleapis.com/google.firebase.fcm.v1.WebpushConfig.DataEntry"),
        ),
        f("notification", Kind::Struct),
        f("fcm_options", Kind::Msg(&WEBPUSH_FCM_OPTIONS)),
    ],
};

static FCM_OPTIONS: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.FcmOptions",
    fields: &[f("analytics_label", Kind::Str)],
};

static NOTIFICATION: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.Notification",
    fields: &[
        f("title", Kind::Str),
        f("body", Kind::Str),
        f("image", Kind::Str),
    ],
};

static MESSAGE: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.Message",
    fields: &[
        f("name", Kind::Str),
        f(
            "data",
            Kind::StrMap("type.googleapis.com/google.firebase.fcm.v1.Message.DataEntry"),
        ),
        f("notification", Kind::Msg(&NOTIFICATION)),
        f("android", Kind::Msg(&ANDROID_CONFIG)),
        f("webpush", Kind::Msg(&WEBPUSH_CONFIG)),
        f("apns", Kind::Msg(&APNS_CONFIG)),
        f("fcm_options", Kind::Msg(&FCM_OPTIONS)),
        target("token"),
        target("topic"),
        target("condition"),
        // Newer API revisions: a Firebase installation ID instead of a token.
        target("fid"),
    ],
};

static SEND_MESSAGE_REQUEST: MsgDef = MsgDef {
    type_url: "type.googleapis.com/google.firebase.fcm.v1.SendMessageRequest",
    fields: &[
        f("message", Kind::Msg(&MESSAGE)),
        f("validate_only", Kind::Bool),
    ],
};

/// `key` names the proto field `proto` (snake_case), either literally or as
/// its lowerCamelCase JSON name. No allocation.
fn name_matches(key: &str, proto: &str) -> bool {
    if key == proto {
        return true;
    }
    let (mut k, mut p) = (key.bytes(), proto.bytes());
    loop {
        match (k.next(), p.next()) {
            (None, None) => return true,
            (Some(kc), Some(b'_')) => match p.next() {
                Some(pc) if pc.is_ascii_lowercase() && kc == pc.to_ascii_uppercase() => {}
                Some(pc) if pc.is_ascii_digit() && kc == pc => {}
                _ => return false,
            },
            (Some(kc), Some(pc)) if kc == pc => {}
            _ => return false,
        }
    }
}

/// Look a field up by its proto name, whichever spelling the client used;
/// `null` counts as absent.
fn get<'a>(obj: &'a Map<String, Value>, proto: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, v)| !v.is_null() && name_matches(k, proto))
        .map(|(_, v)| v)
}

fn get_str<'a>(obj: &'a Map<String, Value>, proto: &str) -> Option<&'a str> {
    get(obj, proto).and_then(Value::as_str)
}

fn get_obj<'a>(obj: &'a Map<String, Value>, proto: &str) -> Option<&'a Map<String, Value>> {
    get(obj, proto).and_then(Value::as_object)
}

// ---------------------------------------------------------------------
// field paths, rendered only when an error needs them

#[derive(Clone, Copy)]
enum Seg {
    Root,
    Field(&'static str),
    Index(usize),
    MapValue(usize),
}

#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg,
}

impl<'a> Path<'a> {
    const ROOT: Path<'static> = Path {
        parent: None,
        seg: Seg::Root,
    };

    fn child(&'a self, seg: Seg) -> Path<'a> {
        Path {
            parent: Some(self),
            seg,
        }
    }

    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut p = Some(self);
        while let Some(x) = p {
            segs.push(x.seg);
            p = x.parent;
        }
        let mut out = String::new();
        for s in segs.iter().rev() {
            match s {
                Seg::Root => {}
                Seg::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
                Seg::MapValue(i) => out.push_str(&format!("[{i}].value")),
            }
        }
        out
    }
}

// ---------------------------------------------------------------------
// stage 1: JSON → proto

fn show(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 100 {
        let mut cut = 100;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn invalid_value(errs: &mut Vec<Violation>, path: &Path<'_>, ty: &str, v: &Value) {
    let field = path.render();
    errs.push(Violation {
        description: format!("Invalid value at '{field}' ({ty}), {}", show(v)),
        field,
    });
}

fn walk_msg(def: &MsgDef, obj: &Map<String, Value>, path: &Path<'_>, errs: &mut Vec<Violation>) {
    let mut oneof_set: Option<&'static str> = None;
    for (k, v) in obj {
        let Some(fd) = def.fields.iter().find(|fd| name_matches(k, fd.name)) else {
            let field = path.render();
            let description = if field.is_empty() {
                format!("Invalid JSON payload received. Unknown name \"{k}\": Cannot find field.")
            } else {
                format!(
                    "Invalid JSON payload received. Unknown name \"{k}\" at '{field}': Cannot find field."
                )
            };
            errs.push(Violation { field, description });
            continue;
        };
        if v.is_null() {
            continue;
        }
        if let Some(oneof) = fd.oneof {
            if oneof_set.is_some() {
                errs.push(Violation {
                    field: path.render(),
                    description: format!(
                        "Invalid JSON payload received. Oneof field '{oneof}' is already set. Cannot set '{}'",
                        fd.name
                    ),
                });
                continue;
            }
            oneof_set = Some(oneof);
        }
        let fpath = path.child(Seg::Field(fd.name));
        walk_value(fd.kind, v, &fpath, errs);
    }
}

fn walk_value(kind: Kind, v: &Value, path: &Path<'_>, errs: &mut Vec<Violation>) {
    match kind {
        Kind::Str => {
            if !v.is_string() {
                invalid_value(errs, path, "TYPE_STRING", v);
            }
        }
        Kind::Bool => {
            if !v.is_boolean() {
                invalid_value(errs, path, "TYPE_BOOL", v);
            }
        }
        Kind::Int32 => {
            let ok = match v {
                Value::Number(n) => n
                    .as_i64()
                    .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                    .is_some_and(|i| i32::try_from(i).is_ok()),
                Value::String(s) => s.parse::<i32>().is_ok(),
                _ => false,
            };
            if !ok {
                invalid_value(errs, path, "TYPE_INT32", v);
            }
        }
        Kind::Float => {
            let ok = match v {
                Value::Number(_) => true,
                Value::String(s) => {
                    matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity")
                        || s.parse::<f64>().is_ok()
                }
                _ => false,
            };
            if !ok {
                invalid_value(errs, path, "TYPE_FLOAT", v);
            }
        }
        Kind::Duration => {
            if v.as_str().and_then(parse_duration).is_none() {
                invalid_value(
                    errs,
                    path,
                    "type.googleapis.com/google.protobuf.Duration",
                    v,
                );
            }
        }
        Kind::Timestamp => {
            if !v.as_str().is_some_and(timestamp_is_valid) {
                invalid_value(
                    errs,
                    path,
                    "type.googleapis.com/google.protobuf.Timestamp",
                    v,
                );
            }
        }
        Kind::Enum(e) => {
            let ok = match v {
                Value::String(s) => e.values.iter().any(|n| n.eq_ignore_ascii_case(s)),
                Value::Number(n) => n
                    .as_u64()
                    .is_some_and(|i| usize::try_from(i).is_ok_and(|i| i < e.values.len())),
                _ => false,
            };
            if !ok {
                invalid_value(errs, path, e.type_url, v);
            }
        }
        Kind::StrMap(entry) => match v {
            Value::Object(m) => {
                for (i, (_, val)) in m.iter().enumerate() {
                    if !val.is_string() {
                        invalid_value(errs, &path.child(Seg::MapValue(i)), "TYPE_STRING", val);
                    }
                }
            }
            _ => invalid_value(errs, path, entry, v),
        },
        Kind::Struct => {
            if !v.is_object() {
                invalid_value(errs, path, "type.googleapis.com/google.protobuf.Struct", v);
            }
        }
        Kind::RepStr | Kind::RepDuration => {
            let Value::Array(items) = v else {
                let ty = if matches!(kind, Kind::RepStr) {
                    "TYPE_STRING"
                } else {
                    "type.googleapis.com/google.protobuf.Duration"
                };
                invalid_value(errs, path, ty, v);
                return;
            };
            let elem = if matches!(kind, Kind::RepStr) {
                Kind::Str
            } else {
                Kind::Duration
            };
            for (i, item) in items.iter().enumerate() {
                walk_value(elem, item, &path.child(Seg::Index(i)), errs);
            }
        }
        Kind::Msg(def) => match v {
            Value::Object(m) => walk_msg(def, m, path, errs),
            _ => invalid_value(errs, path, def.type_url, v),
        },
    }
}

/// Largest |seconds| of a `google.protobuf.Duration` (10 000 years).
const MAX_DURATION_SECS: i64 = 315_576_000_000;

/// Parse a proto3 JSON Duration (`"3s"`, `"3.5s"`, `"-1.000000001s"`) into
/// whole seconds (rounded toward zero) and a sign-carrying nanosecond part.
pub(crate) fn parse_duration(s: &str) -> Option<(i64, i32)> {
    let body = s.strip_suffix('s')?;
    let (neg, body) = match body.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    if secs > MAX_DURATION_SECS {
        return None;
    }
    let nanos = match frac {
        None => 0,
        Some(f) => {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: i32 = f.parse().ok()?;
            n * 10i32.pow(9 - f.len() as u32)
        }
    };
    Some(if neg { (-secs, -nanos) } else { (secs, nanos) })
}

/// RFC 3339 as proto3 JSON writes Timestamps:
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
fn timestamp_is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        std::str::from_utf8(&b[r])
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(99)
    };
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 9 {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

// ---------------------------------------------------------------------
// stage 2: FCM's checks

/// The target of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    Token(&'a str),
    /// A Firebase installation ID (same registry rules as a token).
    Fid(&'a str),
    /// Topic name as given (a `/topics/` prefix is tolerated).
    Topic(&'a str),
    Condition(&'a str),
}

impl<'a> Target<'a> {
    fn is_topic_like(&self) -> bool {
        matches!(self, Target::Topic(_) | Target::Condition(_))
    }

    /// The device id (token or FID), when the target is one device.
    pub(crate) fn device(&self) -> Option<&'a str> {
        match self {
            Target::Token(t) | Target::Fid(t) => Some(t),
            _ => None,
        }
    }
}

fn target_of(msg: &Map<String, Value>) -> Option<Target<'_>> {
    if let Some(t) = get_str(msg, "token") {
        Some(Target::Token(t))
    } else if let Some(t) = get_str(msg, "fid") {
        Some(Target::Fid(t))
    } else if let Some(t) = get_str(msg, "topic") {
        Some(Target::Topic(t))
    } else {
        get_str(msg, "condition").map(Target::Condition)
    }
}

/// What validation found out about one request.
pub(crate) struct Checked<'a> {
    /// The `message` object, when the body had one.
    pub(crate) message: Option<&'a Map<String, Value>>,
    /// Its target, when one was set.
    pub(crate) target: Option<Target<'a>>,
    pub(crate) validate_only: bool,
    /// `Err` = the answer; `Ok` = valid (the registry decides next).
    pub(crate) result: Result<(), ApiError>,
}

/// Validate a parsed `SendMessageRequest` body.
pub(crate) fn check_request(body: &Value, legacy_token_violation: bool) -> Checked<'_> {
    let Some(req) = body.as_object() else {
        return Checked {
            message: None,
            target: None,
            validate_only: false,
            result: Err(ApiError::parse_errors(vec![Violation {
                field: String::new(),
                description:
                    "Invalid JSON payload received. Unknown name \"\": Root element must be a message."
                        .into(),
            }])),
        };
    };
    let message = get_obj(req, "message");
    let target = message.and_then(target_of);
    let validate_only = get(req, "validate_only")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut errs = Vec::new();
    walk_msg(&SEND_MESSAGE_REQUEST, req, &Path::ROOT, &mut errs);
    let result = if !errs.is_empty() {
        Err(ApiError::parse_errors(errs))
    } else {
        match message {
            None => Err(no_recipient()),
            Some(m) => check_message(m, target, legacy_token_violation),
        }
    };
    Checked {
        message,
        target,
        validate_only,
        result,
    }
}

fn no_recipient() -> ApiError {
    ApiError::invalid_field("message", "Recipient of the message is not set.")
}

fn map_payload(m: &Map<String, Value>) -> usize {
    m.iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum()
}

fn check_message(
    msg: &Map<String, Value>,
    target: Option<Target<'_>>,
    legacy_token_violation: bool,
) -> Result<(), ApiError> {
    let Some(target) = target else {
        return Err(no_recipient());
    };
    match target {
        Target::Topic(t) => {
            let name = t.strip_prefix(fcm::TOPIC_PREFIX).unwrap_or(t);
            if !fcm::topic_name_is_well_formed(name) {
                return Err(ApiError::invalid_field(
                    "message.topic",
                    "Topic name is not valid: it must match [a-zA-Z0-9-_.~%]+",
                ));
            }
        }
        Target::Condition(c) => {
            if !condition_is_valid(c) {
                return Err(ApiError::invalid_field(
                    "message.condition",
                    "Invalid condition expression provided.",
                ));
            }
        }
        Target::Token(_) | Target::Fid(_) => {}
    }

    let data = get_obj(msg, "data");
    let android = get_obj(msg, "android");
    let android_data = android.and_then(|a| get_obj(a, "data"));
    for (field, map) in [
        ("message.data", data),
        ("message.android.data", android_data),
    ] {
        if let Some(k) = map.and_then(|m| m.keys().find(|k| fcm::is_reserved_data_key(k))) {
            let text = format!("Invalid data payload key: {k}");
            let mut e = ApiError::fcm(V1ErrorCode::InvalidArgument, text.clone());
            e.details.push(Detail::BadRequest(vec![Violation {
                field: field.to_owned(),
                description: text,
            }]));
            e.fcm_last = true;
            return Err(e);
        }
    }

    // android.data replaces data on Android, so that is what counts there.
    let payload = android_data.or(data).map_or(0, map_payload)
        + get_obj(msg, "notification").map_or(0, map_payload);
    let limit = if target.is_topic_like() {
        fcm::MAX_TOPIC_PAYLOAD_BYTES
    } else {
        fcm::MAX_PAYLOAD_BYTES
    };
    if payload > limit {
        let text = if target.is_topic_like() {
            "Topic message is too big"
        } else {
            "Android message is too big"
        };
        let mut e = ApiError::fcm(V1ErrorCode::InvalidArgument, text);
        // Google sends an empty BadRequest before the FcmError here.
        e.details.push(Detail::BadRequest(Vec::new()));
        e.fcm_last = true;
        return Err(e);
    }

    if let Some(ttl) = android.and_then(|a| get_str(a, "ttl")) {
        let in_range = parse_duration(ttl).is_some_and(|(secs, nanos)| {
            secs >= 0 && nanos >= 0 && secs <= i64::from(fcm::MAX_TTL_SECS)
        });
        if !in_range {
            return Err(ApiError::invalid_field(
                "message.android.ttl",
                format!(
                    "Invalid value at 'message.android.ttl': the TTL must be between 0s and {}s (4 weeks), got \"{ttl}\"",
                    fcm::MAX_TTL_SECS
                ),
            ));
        }
    }

    let color = android
        .and_then(|a| get_obj(a, "notification"))
        .and_then(|n| get_str(n, "color"));
    if let Some(c) = color {
        let b = c.as_bytes();
        if !(b.len() == 7 && b[0] == b'#' && b[1..].iter().all(u8::is_ascii_hexdigit)) {
            return Err(ApiError::invalid_field(
                "message.android.notification.color",
                format!("Invalid color value \"{c}\": it must be in the form #rrggbb"),
            ));
        }
    }

    if let Some(t) = target.device() {
        if !fcm::token_is_well_formed(t) {
            let mut e = ApiError::fcm(V1ErrorCode::InvalidArgument, INVALID_TOKEN_MESSAGE);
            if legacy_token_violation {
                e.details.push(Detail::BadRequest(vec![Violation {
                    field: "message.token".into(),
                    description: INVALID_TOKEN_MESSAGE.into(),
                }]));
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Most topics a v1 condition may name.
const MAX_CONDITION_TOPICS: usize = 5;

/// v1 condition syntax: operands `'name' in topics` (single or double
/// quotes, `in topics` case-insensitive), `!` before an operand or a group,
/// `&&` and `||` between them, balanced parentheses, 1 to 5 topics. One pass
/// with a depth counter (no recursion).
pub(crate) fn condition_is_valid(cond: &str) -> bool {
    let b = cond.as_bytes();
    let mut i = 0;
    let mut expect_operand = true;
    let mut depth = 0usize;
    let mut topics = 0usize;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        let Some(&c) = b.get(i) else { break };
        if expect_operand {
            match c {
                b'!' => i += 1,
                b'(' => {
                    depth += 1;
                    i += 1;
                }
                b'\'' | b'"' => {
                    let start = i + 1;
                    let Some(len) = b[start..].iter().position(|&x| x == c) else {
                        return false;
                    };
                    let Ok(name) = std::str::from_utf8(&b[start..start + len]) else {
                        return false;
                    };
                    if !fcm::topic_name_is_well_formed(name) {
                        return false;
                    }
                    i = start + len + 1;
                    // `in`, whitespace, `topics`.
                    skip_ws(&mut i);
                    if !b
                        .get(i..i + 2)
                        .is_some_and(|w| w.eq_ignore_ascii_case(b"in"))
                    {
                        return false;
                    }
                    i += 2;
                    let before = i;
                    skip_ws(&mut i);
                    if i == before
                        || !b
                            .get(i..i + 6)
                            .is_some_and(|w| w.eq_ignore_ascii_case(b"topics"))
                    {
                        return false;
                    }
                    i += 6;
                    if b.get(i).is_some_and(|x| x.is_ascii_alphanumeric()) {
                        return false;
                    }
                    topics += 1;
                    expect_operand = false;
                }
                _ => return false,
            }
        } else {
            match c {
                b')' => {
                    if depth == 0 {
                        return false;
                    }
                    depth -= 1;
                    i += 1;
                }
                b'&' | b'|' => {
                    if b.get(i + 1) != Some(&c) {
                        return false;
                    }
                    i += 2;
                    expect_operand = true;
                }
                _ => return false,
            }
        }
    }
    !expect_operand && depth == 0 && (1..=MAX_CONDITION_TOPICS).contains(&topics)
}

// ---------------------------------------------------------------------
// message identity for the stats

/// FNV-1a, 64 bits: stable across runs and platforms, cheap.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn hash_map_canonical(h: &mut Fnv, m: Option<&Map<String, Value>>) {
    let Some(m) = m else {
        h.write(b"\x01");
        return;
    };
    let mut entries: Vec<(&String, &Value)> = m.iter().filter(|(_, v)| !v.is_null()).collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (k, v) in entries {
        h.write(k.as_bytes());
        h.write(b"\x00");
        match v {
            Value::String(s) => h.write(s.as_bytes()),
            other => h.write(other.to_string().as_bytes()),
        }
        h.write(b"\x00");
    }
    h.write(b"\x02");
}

/// The key under which the emulator counts a message in
/// [`super::V1Stats::messages`]: its target (`token:<t>`, `fid:<id>`,
/// `topic:<name>` without a `/topics/` prefix, or `condition:<c>`), `#`, and 16 hex digits
/// of a hash over its `data` and `notification` objects (key order and JSON
/// formatting do not matter). `message` is the `message` object of the
/// request; `None` when it is not an object or has no target.
pub fn message_key(message: &Value) -> Option<String> {
    let m = message.as_object()?;
    key_of(m, target_of(m)?)
}

pub(crate) fn key_of(m: &Map<String, Value>, target: Target<'_>) -> Option<String> {
    let mut h = Fnv::new();
    hash_map_canonical(&mut h, get_obj(m, "data"));
    hash_map_canonical(&mut h, get_obj(m, "notification"));
    let (kind, t) = match target {
        Target::Token(t) => ("token", t),
        Target::Fid(t) => ("fid", t),
        Target::Topic(t) => ("topic", t.strip_prefix(fcm::TOPIC_PREFIX).unwrap_or(t)),
        Target::Condition(c) => ("condition", c),
    };
    Some(format!("{kind}:{t}#{:016x}", h.0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<(), ApiError> {
        check_request(&v, false).result
    }

    fn parse_err(v: Value) -> Vec<Violation> {
        let e = check(v).unwrap_err();
        assert_eq!(e.http, 400);
        assert!(e.code.is_none(), "parse errors carry no FcmError: {e:?}");
        match &e.details[..] {
            [Detail::BadRequest(v)] => v.clone(),
            d => panic!("details {d:?}"),
        }
    }

    fn fcm_err(v: Value) -> ApiError {
        let e = check(v).unwrap_err();
        assert_eq!(e.code, Some(V1ErrorCode::InvalidArgument), "{e:?}");
        e
    }

    const TOK: &str = "dGVzdA:APA91bHxyz_-.";

    #[test]
    fn names_in_both_spellings() {
        assert!(name_matches("collapse_key", "collapse_key"));
        assert!(name_matches("collapseKey", "collapse_key"));
        assert!(name_matches("fcmOptions", "fcm_options"));
        assert!(!name_matches("collapsekey", "collapse_key"));
        assert!(!name_matches("collapse_Key", "collapse_key"));
        assert!(!name_matches("collapseKeys", "collapse_key"));
        let m = json!({"message":{"token":TOK,"android":{"collapseKey":"a","restricted_package_name":"p",
            "directBootOk":true,"notification":{"clickAction":"x","channel_id":"c","notificationCount":3,
            "light_settings":{"color":{"red":0.5,"green":"1","blue":0},"lightOnDuration":"0.5s","light_off_duration":"1s"},
            "eventTime":"2024-01-02T03:04:05.123Z","vibrate_timings":["1s","0.5s"],"visibility":"public",
            "notification_priority":"PRIORITY_HIGH","proxy":"deny","bodyLocArgs":["a"]},"fcmOptions":{"analyticsLabel":"l"}},
            "apns":{"headers":{"apns-priority":"10"},"payload":{"aps":{"badge":1}},"fcm_options":{"image":"i"}},
            "webpush":{"headers":{"TTL":"60"},"data":{"a":"b"},"notification":{"title":"t"},"fcmOptions":{"link":"https://x"}},
            "fcm_options":{"analytics_label":"x"}},"validateOnly":true});
        let c = check_request(&m, false);
        assert!(c.result.is_ok(), "{:?}", c.result);
        assert!(c.validate_only);
    }

    #[test]
    fn unknown_fields_at_every_level() {
        let v = parse_err(json!({"message":{"token":TOK,"foo":1}}));
        assert_eq!(v[0].field, "message");
        assert_eq!(
            v[0].description,
            "Invalid JSON payload received. Unknown name \"foo\" at 'message': Cannot find field."
        );
        let v = parse_err(
            json!({"message":{"token":TOK,"android":{"notification":{"colour":"#fff"}}}}),
        );
        assert_eq!(v[0].field, "message.android.notification");
        let v = parse_err(json!({"message":{"token":TOK},"dry_run":true}));
        assert_eq!(v[0].field, "");
        assert_eq!(
            v[0].description,
            "Invalid JSON payload received. Unknown name \"dry_run\": Cannot find field."
        );
        // Every violation reported at once.
        let v = parse_err(json!({"message":{"token":TOK,"a":1,"b":2}}));
        assert_eq!(v.len(), 2);
        // Legacy keys are unknown in v1.
        parse_err(json!({"message":{"to":TOK}}));
        parse_err(json!({"message":{"token":TOK,"priority":"high"}}));
    }

    #[test]
    fn types_and_enums() {
        let v = parse_err(json!({"message":{"token":TOK,"data":{"a":"x","b":1}}}));
        assert_eq!(v[0].field, "message.data[1].value");
        assert_eq!(
            v[0].description,
            "Invalid value at 'message.data[1].value' (TYPE_STRING), 1"
        );
        parse_err(json!({"message":{"token":1}}));
        parse_err(json!({"message":{"token":TOK,"android":{"direct_boot_ok":"yes"}}}));
        parse_err(json!({"message":{"token":TOK,"android":"x"}}));
        parse_err(json!({"message":{"token":TOK,"apns":{"payload":[]}}}));
        parse_err(
            json!({"message":{"token":TOK,"android":{"notification":{"body_loc_args":"a"}}}}),
        );
        parse_err(
            json!({"message":{"token":TOK,"android":{"notification":{"notification_count":1.5}}}}),
        );
        parse_err(
            json!({"message":{"token":TOK,"android":{"notification":{"event_time":"yesterday"}}}}),
        );
        for p in ["NORMAL", "HIGH", "high", "Normal", "normal"] {
            check(json!({"message":{"token":TOK,"android":{"priority":p}}})).unwrap();
        }
        check(json!({"message":{"token":TOK,"android":{"priority":1}}})).unwrap();
        let v = parse_err(json!({"message":{"token":TOK,"android":{"priority":"urgent"}}}));
        assert_eq!(v[0].field, "message.android.priority");
        assert!(v[0].description.contains("AndroidMessagePriority"));
        parse_err(json!({"message":{"token":TOK,"android":{"priority":2}}}));
        // null is "not set".
        check(json!({"message":{"token":TOK,"android":null,"data":null}})).unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Some((3, 0)));
        assert_eq!(parse_duration("3.5s"), Some((3, 500_000_000)));
        assert_eq!(parse_duration("0.000000001s"), Some((0, 1)));
        assert_eq!(parse_duration("-1.5s"), Some((-1, -500_000_000)));
        for bad in [
            "3",
            "s",
            "3.s",
            ".5s",
            "3.5",
            "1e3s",
            "3.0000000001s",
            " 3s",
            "+3s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let v = parse_err(json!({"message":{"token":TOK,"android":{"ttl":"60"}}}));
        assert_eq!(v[0].field, "message.android.ttl");
        assert!(v[0].description.contains("google.protobuf.Duration"));
        parse_err(json!({"message":{"token":TOK,"android":{"ttl":60}}}));
        check(json!({"message":{"token":TOK,"android":{"ttl":"2419200s"}}})).unwrap();
        check(json!({"message":{"token":TOK,"android":{"ttl":"2419200.9s"}}})).unwrap();
        check(json!({"message":{"token":TOK,"android":{"ttl":"0s"}}})).unwrap();
        let e = fcm_err(json!({"message":{"token":TOK,"android":{"ttl":"2419201s"}}}));
        assert!(format!("{e:?}").contains("message.android.ttl"));
        fcm_err(json!({"message":{"token":TOK,"android":{"ttl":"-1s"}}}));
    }

    #[test]
    fn exactly_one_target() {
        let e = fcm_err(json!({"message":{"data":{"a":"b"}}}));
        assert_eq!(e.message, "Recipient of the message is not set.");
        fcm_err(json!({}));
        let v = parse_err(json!({"message":{"token":TOK,"topic":"news"}}));
        assert!(v[0]
            .description
            .contains("Oneof field 'target' is already set"));
        parse_err(json!({"message":{"topic":"a","condition":"'a' in topics"}}));
        check(json!({"message":{"topic":"news"}})).unwrap();
        check(json!({"message":{"topic":"/topics/news"}})).unwrap();
        check(json!({"message":{"fid":"cTGq8wKaTnCJ0bhtJ1XyWp"}})).unwrap();
        parse_err(json!({"message":{"fid":"a","token":TOK}}));
        fcm_err(json!({"message":{"fid":"not valid!"}}));
        fcm_err(json!({"message":{"topic":"bad topic"}}));
        check(
            json!({"message":{"condition":"'a' in topics && ('b' in topics || !('c' in topics))"}}),
        )
        .unwrap();
    }

    #[test]
    fn conditions() {
        for ok in [
            "'a' in topics",
            "\"a\" IN Topics",
            "!('a' in topics)",
            "'a' in topics && 'b' in topics && 'c' in topics && 'd' in topics && 'e' in topics",
        ] {
            assert!(condition_is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "'a'",
            "'a' in topic",
            "'a' intopics",
            "'a' in topics &&",
            "('a' in topics",
            "'a' in topics)",
            "'a' in topics & 'b' in topics",
            "'a b' in topics",
            "'a' in topics && 'b' in topics && 'c' in topics && 'd' in topics && 'e' in topics || 'f' in topics",
        ] {
            assert!(!condition_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn reserved_keys_and_sizes() {
        for k in ["from", "message_type", "google.x", "gcm.n.e", "googleplay"] {
            let e = fcm_err(json!({"message":{"token":TOK,"data":{k:"v"}}}));
            assert_eq!(e.message, format!("Invalid data payload key: {k}"));
        }
        fcm_err(json!({"message":{"token":TOK,"android":{"data":{"from":"v"}}}}));
        // 4096 bytes: key + value.
        let fits = "x".repeat(4096 - 1);
        check(json!({"message":{"token":TOK,"data":{"k":fits}}})).unwrap();
        let over = "x".repeat(4096);
        let e = fcm_err(json!({"message":{"token":TOK,"data":{"k":over}}}));
        assert_eq!(e.message, "Android message is too big");
        let topic_over = "x".repeat(2048);
        fcm_err(json!({"message":{"topic":"t","data":{"k":topic_over}}}));
        let topic_fits = "x".repeat(2047);
        check(json!({"message":{"topic":"t","data":{"k":topic_fits}}})).unwrap();
        // notification counts too.
        let half = "x".repeat(2100);
        fcm_err(json!({"message":{"token":TOK,"data":{"k":half},"notification":{"body":half}}}));
    }

    #[test]
    fn tokens_and_colors() {
        let e = fcm_err(json!({"message":{"token":"bad token!"}}));
        assert_eq!(e.message, INVALID_TOKEN_MESSAGE);
        assert!(e.details.is_empty());
        let e = check_request(&json!({"message":{"token":""}}), true)
            .result
            .unwrap_err();
        match &e.details[..] {
            [Detail::BadRequest(v)] => assert_eq!(v[0].field, "message.token"),
            d => panic!("{d:?}"),
        }
        check(json!({"message":{"token":TOK,"android":{"notification":{"color":"#a0B1c2"}}}}))
            .unwrap();
        fcm_err(json!({"message":{"token":TOK,"android":{"notification":{"color":"red"}}}}));
    }

    #[test]
    fn root_must_be_object() {
        let v = parse_err(json!([1]));
        assert!(v[0].description.contains("Root element must be a message"));
    }

    #[test]
    fn timestamps() {
        for ok in [
            "2024-01-02T03:04:05Z",
            "2024-01-02T03:04:05.123456789Z",
            "2024-01-02T03:04:05+01:00",
        ] {
            assert!(timestamp_is_valid(ok), "{ok}");
        }
        for bad in [
            "2024-01-02",
            "2024-13-02T03:04:05Z",
            "2024-01-02T03:04:05",
            "2024-01-02T03:04:05.Z",
            "2024-01-02 03:04:05Z",
        ] {
            assert!(!timestamp_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn keys_ignore_order_and_ttl() {
        let a = json!({"token":"t1","data":{"a":"1","b":"2"},"android":{"ttl":"10s"}});
        let b = json!({"token":"t1","data":{"b":"2","a":"1"},"android":{"ttl":"9s"}});
        let c = json!({"token":"t1","data":{"a":"1","b":"3"}});
        let d = json!({"token":"t2","data":{"a":"1","b":"2"}});
        let ka = message_key(&a).unwrap();
        assert!(ka.starts_with("token:t1#"));
        assert_eq!(ka.len(), "token:t1#".len() + 16);
        assert_eq!(ka, message_key(&b).unwrap());
        assert_ne!(ka, message_key(&c).unwrap());
        assert_ne!(ka, message_key(&d).unwrap());
        assert_eq!(
            message_key(&json!({"topic":"/topics/x"})),
            message_key(&json!({"topic":"x"}))
        );
        assert!(message_key(&json!({"data":{}})).is_none());
    }
}
