//! Legacy `fcm_data` (SPEC §3.2) → FCM HTTP v1 request body, per the table of
//! SPEC §8.2.
//!
//! One pass over the input's top-level keys and its `notification`, borrowing
//! every string; the translated `android` / `apns` parts are a small tree of
//! borrowed [`Node`]s, merged key by key with the v1 blocks the BAL gave and
//! written straight into the output `String`. Nothing of the input is cloned.

use serde_json::{Map, Value};

use super::json::{kind, push_int, push_key, push_str, push_value};
use super::schema::{
    check_spellings, field, write_given, Field, Kind, Path, ANDROID_CONFIG, APNS_CONFIG,
    FCM_OPTIONS, WEBPUSH_CONFIG,
};
use crate::downstream::{MAX_TTL_SECS, TOPIC_PREFIX};
use crate::error::Rejection;

/// A translated value. Keys of objects are always ours (`'static`).
enum Node<'a> {
    /// A string borrowed from the input.
    Str(&'a str),
    /// One of our constants, written as a string.
    Static(&'static str),
    /// A JSON number.
    Int(u64),
    /// An integer written as a string (`"apns-expiration":"1700000600"`).
    IntStr(i64),
    /// A duration of whole seconds, `"600s"`.
    Secs(u64),
    /// An array borrowed from the input.
    Json(&'a Value),
    /// Strings parsed out of a legacy "JSON array as a string".
    Args(&'a [String]),
    /// An object.
    Obj(Vec<(&'static str, Node<'a>)>),
}

fn write_node(out: &mut String, node: &Node<'_>) {
    match node {
        Node::Str(s) => push_str(out, s),
        Node::Static(s) => push_str(out, s),
        Node::Int(n) => push_int(out, i64::try_from(*n).unwrap_or(i64::MAX)),
        Node::IntStr(n) => {
            out.push('"');
            push_int(out, *n);
            out.push('"');
        }
        Node::Secs(n) => {
            out.push('"');
            push_int(out, i64::try_from(*n).unwrap_or(i64::MAX));
            out.push_str("s\"");
        }
        Node::Json(v) => push_value(out, v),
        Node::Args(items) => {
            out.push('[');
            for (i, s) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_str(out, s);
            }
            out.push(']');
        }
        Node::Obj(entries) => {
            out.push('{');
            let mut first = true;
            for (k, v) in entries {
                push_key(out, &mut first, k);
                write_node(out, v);
            }
            out.push('}');
        }
    }
}

/// The given object's entry for the translated key `key`, by the rules of
/// `kind`: a message field under either spelling, a header without regard to
/// case, anything else exactly.
fn find_given<'g>(
    map: &'g Map<String, Value>,
    kind: Kind,
    key: &str,
) -> Option<(&'g str, &'g Value, Kind)> {
    match kind {
        Kind::Msg(fields) => {
            let f = field(fields, key)?;
            map.get_key_value(f.snake)
                .or_else(|| map.get_key_value(f.camel))
                .map(|(k, v)| (k.as_str(), v, f.kind))
        }
        Kind::HeaderMap => map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(k, v)| (k.as_str(), v, Kind::MapValue)),
        _ => map
            .get_key_value(key)
            .map(|(k, v)| (k.as_str(), v, Kind::Any)),
    }
}

/// Does the given key `gk` stand for the translated key `key`?
fn same_key(kind: Kind, fields: Option<&Field>, gk: &str, key: &str) -> bool {
    match (kind, fields) {
        (Kind::Msg(_), Some(f)) => f.snake == key,
        (Kind::Msg(_), None) => false,
        (Kind::HeaderMap, _) => gk.eq_ignore_ascii_case(key),
        _ => gk == key,
    }
}

/// Writes the translated `node` merged with the value the BAL gave (if any):
/// objects key by key (translated keys first, in our order, then the BAL's
/// other keys in theirs), and wherever both hold a value that is not an
/// object on both sides, the BAL's value, checked against `kind`.
fn write_merged(
    out: &mut String,
    path: &Path<'_>,
    node: &Node<'_>,
    given: Option<&Value>,
    kind: Kind,
) -> Result<(), Rejection> {
    let (entries, map) = match (node, given) {
        (_, None) => {
            write_node(out, node);
            return Ok(());
        }
        (Node::Obj(entries), Some(Value::Object(map)))
            if matches!(
                kind,
                Kind::Msg(_) | Kind::Struct | Kind::Any | Kind::HeaderMap | Kind::StrMap
            ) =>
        {
            (entries, map)
        }
        (_, Some(v)) => return write_given(out, path, v, kind),
    };
    if let Kind::Msg(fields) = kind {
        check_spellings(path, fields, map)?;
    }
    out.push('{');
    let mut first = true;
    for (key, child) in entries {
        match find_given(map, kind, key) {
            Some((gk, gv, child_kind)) => {
                push_key(out, &mut first, gk);
                write_merged(out, &path.child(gk), child, Some(gv), child_kind)?;
            }
            None => {
                push_key(out, &mut first, key);
                write_node(out, child);
            }
        }
    }
    for (gk, gv) in map {
        let f = match kind {
            Kind::Msg(fields) => field(fields, gk),
            _ => None,
        };
        if entries.iter().any(|(key, _)| same_key(kind, f, gk, key)) {
            continue;
        }
        push_key(out, &mut first, gk);
        let child_kind = match kind {
            Kind::Msg(_) => f.map(|f| f.kind),
            Kind::HeaderMap | Kind::StrMap => Some(Kind::MapValue),
            _ => None,
        };
        match child_kind {
            Some(k) => write_given(out, &path.child(gk), gv, k)?,
            None => push_value(out, gv),
        }
    }
    out.push('}');
    Ok(())
}

/// The legacy keys translate reads, `null` counting as absent.
#[derive(Default)]
struct Legacy<'a> {
    to: Option<&'a Value>,
    condition: Option<&'a Value>,
    data: Option<&'a Value>,
    notification: Option<&'a Value>,
    priority: Option<&'a Value>,
    time_to_live: Option<&'a Value>,
    collapse_key: Option<&'a Value>,
    content_available: Option<&'a Value>,
    mutable_content: Option<&'a Value>,
    restricted_package_name: Option<&'a Value>,
    dry_run: Option<&'a Value>,
    android: Option<&'a Value>,
    apns: Option<&'a Value>,
    webpush: Option<&'a Value>,
    fcm_options: Option<(&'a str, &'a Value)>,
}

fn non_null(v: &Value) -> Option<&Value> {
    (!v.is_null()).then_some(v)
}

fn string<'a>(key: &str, v: Option<&'a Value>) -> Result<Option<&'a str>, Rejection> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Rejection::invalid_json(format!(
            "{key} must be a string, got {}",
            kind(other)
        ))),
    }
}

fn boolean(key: &str, v: Option<&Value>) -> Result<bool, Rejection> {
    match v {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Rejection::invalid_json(format!(
            "{key} must be a boolean, got {}",
            kind(other)
        ))),
    }
}

/// A legacy `*_loc_args`: a JSON array of strings, in a string (the seeds'
/// form) or as an array.
enum LocArgs<'a> {
    Parsed(Vec<String>),
    Array(&'a Value),
}

impl LocArgs<'_> {
    fn node(&self) -> Node<'_> {
        match self {
            LocArgs::Parsed(items) => Node::Args(items),
            LocArgs::Array(v) => Node::Json(v),
        }
    }
}

fn loc_args<'a>(key: &str, v: &'a Value) -> Result<LocArgs<'a>, Rejection> {
    let bad = || {
        Rejection::invalid_json(format!(
            "notification.{key} must be a JSON array of strings (as a string or an array)"
        ))
    };
    match v {
        Value::String(s) => serde_json::from_str::<Vec<String>>(s)
            .map(LocArgs::Parsed)
            .map_err(|_| bad()),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(LocArgs::Array(v)),
        _ => Err(bad()),
    }
}

/// The legacy `notification`, split by where each key goes.
#[derive(Default)]
struct Notif<'a> {
    title: Option<&'a str>,
    body: Option<&'a str>,
    image: Option<&'a str>,
    sound: Option<&'a str>,
    badge: Option<u64>,
    click_action: Option<&'a str>,
    subtitle: Option<&'a str>,
    body_loc_key: Option<&'a str>,
    body_loc_args: Option<LocArgs<'a>>,
    title_loc_key: Option<&'a str>,
    title_loc_args: Option<LocArgs<'a>>,
    channel_id: Option<&'a str>,
    icon: Option<&'a str>,
    tag: Option<&'a str>,
    color: Option<&'a str>,
}

fn notification_str<'a>(key: &str, v: &'a Value) -> Result<&'a str, Rejection> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(Rejection::invalid_json(format!(
            "notification.{key} must be a string, got {}",
            kind(other)
        ))),
    }
}

fn notification<'a>(map: &'a Map<String, Value>) -> Result<Notif<'a>, Rejection> {
    let mut n = Notif::default();
    for (key, v) in map {
        let Some(v) = non_null(v) else { continue };
        let s = |v: &'a Value| notification_str(key, v);
        match key.as_str() {
            "title" => n.title = Some(s(v)?),
            "body" => n.body = Some(s(v)?),
            "image" => n.image = Some(s(v)?),
            "sound" => n.sound = Some(s(v)?),
            "badge" => {
                let text = s(v)?;
                n.badge = Some(text.parse::<u32>().map(u64::from).map_err(|_| {
                    Rejection::invalid_json(format!(
                        "notification.badge must be a whole number (FCM HTTP v1 sends it to \
                         APNs as a number), got {:?}",
                        super::json::truncate(text, 32)
                    ))
                })?);
            }
            "click_action" => n.click_action = Some(s(v)?),
            "subtitle" => n.subtitle = Some(s(v)?),
            "body_loc_key" => n.body_loc_key = Some(s(v)?),
            "body_loc_args" => n.body_loc_args = Some(loc_args(key, v)?),
            "title_loc_key" => n.title_loc_key = Some(s(v)?),
            "title_loc_args" => n.title_loc_args = Some(loc_args(key, v)?),
            "android_channel_id" => n.channel_id = Some(s(v)?),
            "icon" => n.icon = Some(s(v)?),
            "tag" => n.tag = Some(s(v)?),
            "color" => n.color = Some(s(v)?),
            // Keys of no legacy table have no place in v1: ignored, as
            // unknown keys are everywhere in the BAL protocol (§3).
            _ => {}
        }
    }
    Ok(n)
}

fn push_opt<'a>(
    entries: &mut Vec<(&'static str, Node<'a>)>,
    key: &'static str,
    v: Option<Node<'a>>,
) {
    if let Some(v) = v {
        entries.push((key, v));
    }
}

/// Translates `fcm_data` and appends the request body to `out` (the buffer
/// is not cleared first; on error it may hold part of a body). See
/// [`translate`](super::translate).
pub fn translate_into(
    fcm_data: &Value,
    accepted_at_ms: i64,
    now_ms: i64,
    out: &mut String,
) -> Result<(), Rejection> {
    let Value::Object(map) = fcm_data else {
        return Err(Rejection::invalid_json(format!(
            "a downstream message must be a JSON object, got {}",
            kind(fcm_data)
        )));
    };
    let mut l = Legacy::default();
    for (key, v) in map {
        let Some(v) = non_null(v) else { continue };
        match key.as_str() {
            "to" => l.to = Some(v),
            "condition" => l.condition = Some(v),
            "data" => l.data = Some(v),
            "notification" => l.notification = Some(v),
            "priority" => l.priority = Some(v),
            "time_to_live" => l.time_to_live = Some(v),
            "collapse_key" => l.collapse_key = Some(v),
            "content_available" => l.content_available = Some(v),
            "mutable_content" => l.mutable_content = Some(v),
            "restricted_package_name" => l.restricted_package_name = Some(v),
            "dry_run" => l.dry_run = Some(v),
            "android" => l.android = Some(v),
            "apns" => l.apns = Some(v),
            "webpush" => l.webpush = Some(v),
            "fcm_options" | "fcmOptions" => {
                if let Some((other, _)) = l.fcm_options {
                    return Err(Rejection::invalid_json(format!(
                        "{other} and {key} name the same v1 block; set only one"
                    )));
                }
                l.fcm_options = Some((key.as_str(), v));
            }
            // message_id, delivery_receipt_requested: v1 has no such fields.
            _ => {}
        }
    }

    // Target.
    let target = match (string("to", l.to)?, string("condition", l.condition)?) {
        (Some(_), Some(_)) => {
            return Err(Rejection::invalid_json(
                "\"to\" and \"condition\" are mutually exclusive: set only one",
            ))
        }
        (Some(to), None) => match to.strip_prefix(TOPIC_PREFIX) {
            Some(topic) => ("topic", topic),
            None => ("token", to),
        },
        (None, Some(c)) => ("condition", c),
        (None, None) => {
            return Err(Rejection::invalid_json(
                "missing registration token/target: set \"to\" or \"condition\"",
            ))
        }
    };

    let data = match l.data {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            return Err(Rejection::invalid_json(format!(
                "data must be an object, got {}",
                kind(other)
            )))
        }
    };
    let notif = match l.notification {
        None => Notif::default(),
        Some(Value::Object(m)) => notification(m)?,
        Some(other) => {
            return Err(Rejection::invalid_json(format!(
                "notification must be an object, got {}",
                kind(other)
            )))
        }
    };
    let high = match string("priority", l.priority)? {
        None => None,
        Some("high") => Some(true),
        Some("normal") => Some(false),
        Some(other) => {
            return Err(Rejection::invalid_json(format!(
                "priority must be \"normal\" or \"high\", got {:?}",
                super::json::truncate(other, 32)
            )))
        }
    };
    let ttl = match l.time_to_live {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if n <= u64::from(MAX_TTL_SECS) => Some(n),
            _ => {
                return Err(Rejection::invalid_json(format!(
                    "time_to_live must be an integer between 0 and {MAX_TTL_SECS} seconds, \
                     got {v}"
                )))
            }
        },
    };
    let collapse_key = string("collapse_key", l.collapse_key)?;
    let content_available = boolean("content_available", l.content_available)?;
    let mutable_content = boolean("mutable_content", l.mutable_content)?;
    let restricted = string("restricted_package_name", l.restricted_package_name)?;
    let dry_run = boolean("dry_run", l.dry_run)?;

    // android: AndroidConfig.
    let mut android = Vec::new();
    push_opt(&mut android, "collapse_key", collapse_key.map(Node::Str));
    push_opt(
        &mut android,
        "priority",
        high.map(|h| Node::Static(if h { "HIGH" } else { "NORMAL" })),
    );
    if let Some(n) = ttl {
        // What is left of the lifetime, counted from DOWNSTREAM_ACCEPTED, in
        // whole seconds rounded down (never more than the BAL asked for), at
        // least 0; a clock that went backwards counts as no time passed.
        let elapsed = now_ms.saturating_sub(accepted_at_ms).max(0);
        let total = i64::try_from(n).unwrap_or(i64::MAX).saturating_mul(1000);
        let left = total.saturating_sub(elapsed).max(0) / 1000;
        android.push(("ttl", Node::Secs(u64::try_from(left).unwrap_or(0))));
    }
    push_opt(
        &mut android,
        "restricted_package_name",
        restricted.map(Node::Str),
    );
    let mut an = Vec::new();
    push_opt(&mut an, "icon", notif.icon.map(Node::Str));
    push_opt(&mut an, "color", notif.color.map(Node::Str));
    push_opt(&mut an, "sound", notif.sound.map(Node::Str));
    push_opt(&mut an, "tag", notif.tag.map(Node::Str));
    push_opt(&mut an, "click_action", notif.click_action.map(Node::Str));
    push_opt(&mut an, "body_loc_key", notif.body_loc_key.map(Node::Str));
    push_opt(
        &mut an,
        "body_loc_args",
        notif.body_loc_args.as_ref().map(LocArgs::node),
    );
    push_opt(&mut an, "title_loc_key", notif.title_loc_key.map(Node::Str));
    push_opt(
        &mut an,
        "title_loc_args",
        notif.title_loc_args.as_ref().map(LocArgs::node),
    );
    push_opt(&mut an, "channel_id", notif.channel_id.map(Node::Str));
    if !an.is_empty() {
        android.push(("notification", Node::Obj(an)));
    }

    // apns: ApnsConfig.
    let mut headers = Vec::new();
    push_opt(
        &mut headers,
        "apns-priority",
        high.map(|h| Node::Static(if h { "10" } else { "5" })),
    );
    if let Some(n) = ttl {
        // APNs: "0" = deliver once, do not store; else the epoch second
        // after which APNs drops it: accepted_at + N.
        let at = if n == 0 {
            0
        } else {
            accepted_at_ms
                .div_euclid(1000)
                .saturating_add(i64::try_from(n).unwrap_or(i64::MAX))
        };
        headers.push(("apns-expiration", Node::IntStr(at)));
    }
    push_opt(
        &mut headers,
        "apns-collapse-id",
        collapse_key.map(Node::Str),
    );
    let mut alert = Vec::new();
    push_opt(&mut alert, "subtitle", notif.subtitle.map(Node::Str));
    push_opt(&mut alert, "loc-key", notif.body_loc_key.map(Node::Str));
    push_opt(
        &mut alert,
        "loc-args",
        notif.body_loc_args.as_ref().map(LocArgs::node),
    );
    push_opt(
        &mut alert,
        "title-loc-key",
        notif.title_loc_key.map(Node::Str),
    );
    push_opt(
        &mut alert,
        "title-loc-args",
        notif.title_loc_args.as_ref().map(LocArgs::node),
    );
    let mut aps = Vec::new();
    if !alert.is_empty() {
        // An explicit aps.alert may take the place of the one FCM builds
        // from message.notification: carry title and body into it.
        let mut full = Vec::with_capacity(alert.len() + 2);
        push_opt(&mut full, "title", notif.title.map(Node::Str));
        push_opt(&mut full, "body", notif.body.map(Node::Str));
        full.append(&mut alert);
        aps.push(("alert", Node::Obj(full)));
    }
    push_opt(&mut aps, "badge", notif.badge.map(Node::Int));
    push_opt(&mut aps, "sound", notif.sound.map(Node::Str));
    push_opt(&mut aps, "category", notif.click_action.map(Node::Str));
    if content_available {
        aps.push(("content-available", Node::Int(1)));
    }
    if mutable_content {
        aps.push(("mutable-content", Node::Int(1)));
    }
    let mut apns = Vec::new();
    if !headers.is_empty() {
        apns.push(("headers", Node::Obj(headers)));
    }
    if !aps.is_empty() {
        apns.push(("payload", Node::Obj(vec![("aps", Node::Obj(aps))])));
    }

    // Write.
    // Most bodies fit: one allocation.
    out.reserve(512);
    out.push_str("{\"message\":{");
    let mut first = true;
    push_key(out, &mut first, target.0);
    push_str(out, target.1);
    if let Some(data) = data.filter(|d| !d.is_empty()) {
        push_key(out, &mut first, "data");
        out.push('{');
        let mut first_entry = true;
        let mut text = String::new();
        for (k, v) in data {
            push_key(out, &mut first_entry, k);
            match v {
                Value::String(s) => push_str(out, s),
                // v1 takes strings only: the compact JSON text instead.
                other => {
                    text.clear();
                    push_value(&mut text, other);
                    push_str(out, &text);
                }
            }
        }
        out.push('}');
    }
    if notif.title.is_some() || notif.body.is_some() || notif.image.is_some() {
        push_key(out, &mut first, "notification");
        out.push('{');
        let mut first_entry = true;
        for (k, v) in [
            ("title", notif.title),
            ("body", notif.body),
            ("image", notif.image),
        ] {
            if let Some(v) = v {
                push_key(out, &mut first_entry, k);
                push_str(out, v);
            }
        }
        out.push('}');
    }
    for (key, node, given, fields) in [
        ("android", Node::Obj(android), l.android, ANDROID_CONFIG),
        ("apns", Node::Obj(apns), l.apns, APNS_CONFIG),
        ("webpush", Node::Obj(Vec::new()), l.webpush, WEBPUSH_CONFIG),
    ] {
        let translated = matches!(&node, Node::Obj(e) if !e.is_empty());
        if !translated && given.is_none() {
            continue;
        }
        push_key(out, &mut first, key);
        write_merged(out, &Path::root(key), &node, given, Kind::Msg(fields))?;
    }
    if let Some((key, given)) = l.fcm_options {
        push_key(out, &mut first, "fcm_options");
        write_given(out, &Path::root(key), given, Kind::Msg(FCM_OPTIONS))?;
    }
    out.push('}');
    if dry_run {
        out.push_str(",\"validate_only\":true");
    }
    out.push('}');
    Ok(())
}
