//! Downstream messages (app server -> FCM): the typed model of seed 004
//! tables 1, 2a, 2b and 2c, and the validation rules of SPEC §3.2 with the
//! codes of table 4.

use std::io;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ErrorCode, Rejection};

/// Longest `time_to_live` FCM accepts: 4 weeks, in seconds (table 1, table 4).
pub const MAX_TTL_SECS: u32 = 2_419_200;
/// Largest payload (`data` + `notification`, keys and values) for a message
/// to a device (table 4, "message too big").
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Largest payload for a topic message (`to` = `/topics/…` or a `condition`).
pub const MAX_TOPIC_PAYLOAD_BYTES: usize = 2048;
/// Longest registration token accepted as well formed, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Most `&&` / `||` operators a `condition` may hold (table 1).
pub const MAX_CONDITION_OPERATORS: usize = 2;
/// Prefix of a topic target in `to` (table 1).
pub const TOPIC_PREFIX: &str = "/topics/";

/// Message priority (table 1): `"normal"` or `"high"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// `"normal"`: may be delayed to save battery (default for data messages).
    Normal,
    /// `"high"`: delivered at once (default for notification messages).
    High,
}

impl Priority {
    /// The wire spelling, `"normal"` or `"high"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// Parses the wire spelling (exact, lower case).
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            _ => None,
        }
    }
}

/// The `notification` payload: the predefined, user-visible keys of tables 2a
/// (Apple), 2b (Android) and 2c (Web).
///
/// Every known key is a string. `body_loc_args` / `title_loc_args` are a "JSON
/// array as string" in the seeds; a real JSON array of strings is accepted too
/// and then kept, as sent, in [`extra`](Self::extra) under its own key (see
/// [`body_loc_args_list`](Self::body_loc_args_list)). Unknown keys are kept in
/// `extra` with any JSON value. Deserializing applies these type rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>")]
pub struct Notification {
    /// Notification title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Notification body text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Sound to play.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    /// Badge on the app icon (Apple).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub badge: Option<String>,
    /// Action on click (APNs `category`, Android intent filter, Web URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_action: Option<String>,
    /// Subtitle (Apple).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    /// Localization key of the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_loc_key: Option<String>,
    /// Localization arguments of the body, as a JSON array in a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_loc_args: Option<String>,
    /// Localization key of the title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title_loc_key: Option<String>,
    /// Localization arguments of the title, as a JSON array in a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title_loc_args: Option<String>,
    /// Notification channel (Android O and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub android_channel_id: Option<String>,
    /// Icon (Android drawable name, Web URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Tag replacing an earlier notification (Android).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Icon colour, `#rrggbb` (Android).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// Keys not listed above, and loc-args sent as real JSON arrays. Must not
    /// repeat another known key (it would be written twice).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Names of the string keys of [`Notification`], in field order.
const NOTIFICATION_KEYS: [&str; 14] = [
    "title",
    "body",
    "sound",
    "badge",
    "click_action",
    "subtitle",
    "body_loc_key",
    "body_loc_args",
    "title_loc_key",
    "title_loc_args",
    "android_channel_id",
    "icon",
    "tag",
    "color",
];

impl Notification {
    /// The string fields with their keys, in field order.
    fn string_fields(&self) -> [(&'static str, Option<&str>); 14] {
        [
            ("title", self.title.as_deref()),
            ("body", self.body.as_deref()),
            ("sound", self.sound.as_deref()),
            ("badge", self.badge.as_deref()),
            ("click_action", self.click_action.as_deref()),
            ("subtitle", self.subtitle.as_deref()),
            ("body_loc_key", self.body_loc_key.as_deref()),
            ("body_loc_args", self.body_loc_args.as_deref()),
            ("title_loc_key", self.title_loc_key.as_deref()),
            ("title_loc_args", self.title_loc_args.as_deref()),
            ("android_channel_id", self.android_channel_id.as_deref()),
            ("icon", self.icon.as_deref()),
            ("tag", self.tag.as_deref()),
            ("color", self.color.as_deref()),
        ]
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "title" => &mut self.title,
            "body" => &mut self.body,
            "sound" => &mut self.sound,
            "badge" => &mut self.badge,
            "click_action" => &mut self.click_action,
            "subtitle" => &mut self.subtitle,
            "body_loc_key" => &mut self.body_loc_key,
            "body_loc_args" => &mut self.body_loc_args,
            "title_loc_key" => &mut self.title_loc_key,
            "title_loc_args" => &mut self.title_loc_args,
            "android_channel_id" => &mut self.android_channel_id,
            "icon" => &mut self.icon,
            "tag" => &mut self.tag,
            "color" => &mut self.color,
            _ => return None,
        })
    }

    /// `body_loc_args` as a list, whichever form it was sent in (a JSON array
    /// in a string, or a JSON array). `None` if absent or malformed.
    pub fn body_loc_args_list(&self) -> Option<Vec<String>> {
        loc_args_list(
            self.body_loc_args.as_deref(),
            self.extra.get("body_loc_args"),
        )
    }

    /// `title_loc_args` as a list, whichever form it was sent in.
    pub fn title_loc_args_list(&self) -> Option<Vec<String>> {
        loc_args_list(
            self.title_loc_args.as_deref(),
            self.extra.get("title_loc_args"),
        )
    }

    /// Payload bytes this notification counts for: key bytes plus value bytes
    /// (strings without quotes, other values as compact JSON).
    pub fn payload_size(&self) -> usize {
        let known: usize = self
            .string_fields()
            .iter()
            .filter_map(|(k, v)| v.map(|v| k.len() + v.len()))
            .sum();
        known + map_payload_size(&self.extra)
    }
}

fn loc_args_list(s: Option<&str>, array: Option<&Value>) -> Option<Vec<String>> {
    match (s, array) {
        (Some(s), _) => serde_json::from_str(s).ok(),
        (None, Some(v)) => serde_json::from_value(v.clone()).ok(),
        (None, None) => None,
    }
}

impl TryFrom<Map<String, Value>> for Notification {
    type Error = String;

    fn try_from(map: Map<String, Value>) -> Result<Self, Self::Error> {
        notification_from_map(map).map_err(|r| r.description)
    }
}

fn is_loc_args(key: &str) -> bool {
    key == "body_loc_args" || key == "title_loc_args"
}

fn check_loc_args_array(key: &str, items: &[Value]) -> Result<(), Rejection> {
    match items.iter().position(|v| !v.is_string()) {
        None => Ok(()),
        Some(i) => Err(Rejection::invalid_json(format!(
            "notification.{key}[{i}] must be a string, got {}",
            kind(&items[i])
        ))),
    }
}

/// Type rules for `notification` (tables 2a–2c).
fn notification_from_map(map: Map<String, Value>) -> Result<Notification, Rejection> {
    let mut n = Notification::default();
    for (key, value) in map {
        if !NOTIFICATION_KEYS.contains(&key.as_str()) {
            n.extra.insert(key, value);
            continue;
        }
        match value {
            Value::Null => {}
            Value::String(s) => {
                if is_loc_args(&key) {
                    match serde_json::from_str::<Value>(&s) {
                        Ok(Value::Array(items)) => check_loc_args_array(&key, &items)?,
                        _ => {
                            return Err(Rejection::invalid_json(format!(
                                "notification.{key} must be a JSON array of strings \
                                 (as a string or an array)"
                            )))
                        }
                    }
                }
                if let Some(slot) = n.slot(&key) {
                    *slot = Some(s);
                }
            }
            Value::Array(items) if is_loc_args(&key) => {
                check_loc_args_array(&key, &items)?;
                n.extra.insert(key, Value::Array(items));
            }
            other => {
                return Err(Rejection::invalid_json(format!(
                    "notification.{key} must be a string, got {}",
                    kind(&other)
                )))
            }
        }
    }
    Ok(n)
}

/// A downstream message (table 1): target, options and payload.
///
/// `Serialize` omits `None` fields and writes [`extra`](Self::extra) (unknown
/// keys, kept as sent) after the known ones. `Deserialize` applies the JSON
/// type rules (strings, booleans, `time_to_live` an unsigned integer,
/// `priority` `normal`/`high`, `data` and `notification` objects; `null` counts
/// as absent) but not the semantic rules: use [`validate_downstream`] for those.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>")]
pub struct Downstream {
    /// Target: a registration token, a device group key or `/topics/NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Target: a topic condition such as `'a' in topics && 'b' in topics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Identifies the message on the XMPP connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Collapsible group of messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    /// `normal` or `high`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// APNs `content-available`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_available: Option<bool>,
    /// APNs `mutable-content`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutable_content: Option<bool>,
    /// Seconds FCM keeps the message for an offline device, 0..=[`MAX_TTL_SECS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_live: Option<u32>,
    /// Test the request without delivering it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Ask CCS for a delivery receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_receipt_requested: Option<bool>,
    /// Custom key/value payload (string values recommended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// Predefined user-visible payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
    /// Keys not listed above, kept as sent. Must not repeat a known key (it
    /// would be written twice).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The target of a [`Downstream`] message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target<'a> {
    /// `to` holding a registration token (or device group key).
    Token(&'a str),
    /// `to` = `/topics/NAME`; holds `NAME` (without the prefix).
    Topic(&'a str),
    /// `condition`, as written.
    Condition(&'a str),
}

impl Downstream {
    /// The target: `to` (a topic if it starts with `/topics/`, else a token)
    /// or else `condition`; `None` if neither is set.
    pub fn target(&self) -> Option<Target<'_>> {
        match (&self.to, &self.condition) {
            (Some(to), _) => Some(match to.strip_prefix(TOPIC_PREFIX) {
                Some(name) => Target::Topic(name),
                None => Target::Token(to),
            }),
            (None, Some(c)) => Some(Target::Condition(c)),
            (None, None) => None,
        }
    }

    /// The raw target text (`to`, else `condition`): a key for per-target
    /// backoff after a `*_RATE_EXCEEDED` nack.
    pub fn target_key(&self) -> Option<&str> {
        self.to.as_deref().or(self.condition.as_deref())
    }

    /// `true` for a topic message: `to` starts with `/topics/` or a
    /// `condition` is set. Topic messages have the smaller payload limit.
    pub fn is_topic_message(&self) -> bool {
        self.condition.is_some()
            || self
                .to
                .as_deref()
                .is_some_and(|to| to.starts_with(TOPIC_PREFIX))
    }

    /// The payload limit for this message: [`MAX_TOPIC_PAYLOAD_BYTES`] for a
    /// topic message, else [`MAX_PAYLOAD_BYTES`].
    pub fn max_payload_bytes(&self) -> usize {
        if self.is_topic_message() {
            MAX_TOPIC_PAYLOAD_BYTES
        } else {
            MAX_PAYLOAD_BYTES
        }
    }

    /// Payload size as FCM counts it: over `data` and `notification`, key
    /// bytes plus value bytes (strings as their UTF-8 length without quotes,
    /// other values as their compact JSON length).
    pub fn payload_size(&self) -> usize {
        self.data.as_ref().map_or(0, map_payload_size)
            + self
                .notification
                .as_ref()
                .map_or(0, Notification::payload_size)
    }

    /// Compact JSON, as sent inside `<gcm>`.
    pub fn to_json(&self) -> String {
        crate::json_string(self)
    }

    /// Applies every rule of [`validate_downstream`] to this value.
    pub fn check(&self) -> Result<(), Rejection> {
        let v = serde_json::to_value(self)
            .map_err(|e| Rejection::invalid_json(format!("not serializable: {e}")))?;
        validate_downstream(&v).map(drop)
    }
}

impl TryFrom<Map<String, Value>> for Downstream {
    type Error = String;

    fn try_from(map: Map<String, Value>) -> Result<Self, Self::Error> {
        downstream_from_map(map).map_err(|r| r.description)
    }
}

/// Short name of a JSON value's type, for error descriptions.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() => "an integer",
        Value::Number(n) if n.is_i64() => "a negative integer",
        Value::Number(_) => "a float",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn opt_string(key: &str, v: Value) -> Result<Option<String>, Rejection> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(Rejection::invalid_json(format!(
            "{key} must be a string, got {}",
            kind(&other)
        ))),
    }
}

fn opt_bool(key: &str, v: Value) -> Result<Option<bool>, Rejection> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        other => Err(Rejection::invalid_json(format!(
            "{key} must be a boolean, got {}",
            kind(&other)
        ))),
    }
}

fn ttl_error(got: &str) -> Rejection {
    Rejection::invalid_json(format!(
        "time_to_live must be an integer between 0 and {MAX_TTL_SECS} seconds, got {got}"
    ))
}

fn opt_ttl(v: Value) -> Result<Option<u32>, Rejection> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64().map(u32::try_from) {
            Some(Ok(secs)) => Ok(Some(secs)),
            _ => Err(ttl_error(&n.to_string())),
        },
        other => Err(ttl_error(kind(&other))),
    }
}

fn opt_priority(v: Value) -> Result<Option<Priority>, Rejection> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => match Priority::parse(&s) {
            Some(p) => Ok(Some(p)),
            None => Err(Rejection::invalid_json(format!(
                "priority must be \"normal\" or \"high\", got {:?}",
                truncate(&s, 32)
            ))),
        },
        other => Err(Rejection::invalid_json(format!(
            "priority must be the string \"normal\" or \"high\", got {}",
            kind(&other)
        ))),
    }
}

/// JSON type rules for every known field; unknown keys go to `extra`.
fn downstream_from_map(map: Map<String, Value>) -> Result<Downstream, Rejection> {
    let mut d = Downstream::default();
    for (key, value) in map {
        match key.as_str() {
            "to" => d.to = opt_string("to", value)?,
            "condition" => d.condition = opt_string("condition", value)?,
            "message_id" => d.message_id = opt_string("message_id", value)?,
            "collapse_key" => d.collapse_key = opt_string("collapse_key", value)?,
            "priority" => d.priority = opt_priority(value)?,
            "content_available" => d.content_available = opt_bool("content_available", value)?,
            "mutable_content" => d.mutable_content = opt_bool("mutable_content", value)?,
            "dry_run" => d.dry_run = opt_bool("dry_run", value)?,
            "delivery_receipt_requested" => {
                d.delivery_receipt_requested = opt_bool("delivery_receipt_requested", value)?;
            }
            "time_to_live" => d.time_to_live = opt_ttl(value)?,
            "data" => {
                d.data = match value {
                    Value::Null => None,
                    Value::Object(m) => Some(m),
                    other => {
                        return Err(Rejection::invalid_json(format!(
                            "data must be an object, got {}",
                            kind(&other)
                        )))
                    }
                }
            }
            "notification" => {
                d.notification = match value {
                    Value::Null => None,
                    Value::Object(m) => Some(notification_from_map(m)?),
                    other => {
                        return Err(Rejection::invalid_json(format!(
                            "notification must be an object, got {}",
                            kind(&other)
                        )))
                    }
                }
            }
            _ => {
                d.extra.insert(key, value);
            }
        }
    }
    Ok(d)
}

/// Validates a downstream message exactly as SPEC §3.2 and seed 004 table 4
/// ask, each failure mapped to the code FCM gives:
///
/// * not a JSON object, wrong JSON type of a known field -> `INVALID_JSON`;
/// * neither `to` nor `condition` ("missing registration token") or both ->
///   `INVALID_JSON`;
/// * `to` = `/topics/NAME` with `NAME` not matching `[a-zA-Z0-9-_.~%]+`, or a
///   `condition` that is not `'topic' in topics` tests joined by `&&` / `||`
///   (parentheses allowed, at most two operators) -> `INVALID_JSON`;
/// * `time_to_live` not an integer in 0..=2419200 -> `INVALID_JSON`;
/// * `priority` not `normal` / `high` -> `INVALID_JSON`;
/// * a `data` key that is reserved (`from`, `message_type`, or starting with
///   `google` or `gcm`) -> `INVALID_JSON`;
/// * `notification` not an object of strings (loc-args: a JSON array of
///   strings, as a string or an array) -> `INVALID_JSON`;
/// * payload over [`MAX_PAYLOAD_BYTES`] ([`MAX_TOPIC_PAYLOAD_BYTES`] for topic
///   messages) -> `INVALID_JSON` "message too big";
/// * `to` not a well-formed token ([`token_is_well_formed`]) ->
///   `BAD_REGISTRATION` (checked last: JSON problems take precedence).
///
/// `null` counts as an absent field. Unknown keys are accepted and kept in
/// [`Downstream::extra`].
pub fn validate_downstream(v: &Value) -> Result<Downstream, Rejection> {
    match v {
        Value::Object(map) => validate_map(map.clone()),
        other => Err(Rejection::invalid_json(format!(
            "a downstream message must be a JSON object, got {}",
            kind(other)
        ))),
    }
}

/// [`validate_downstream`] taking ownership (no copy of the payload).
pub fn validate_downstream_owned(v: Value) -> Result<Downstream, Rejection> {
    match v {
        Value::Object(map) => validate_map(map),
        other => validate_downstream(&other),
    }
}

fn validate_map(map: Map<String, Value>) -> Result<Downstream, Rejection> {
    let d = downstream_from_map(map)?;

    if let Some(ttl) = d.time_to_live {
        if ttl > MAX_TTL_SECS {
            return Err(ttl_error(&ttl.to_string()));
        }
    }

    if let Some(data) = &d.data {
        if let Some(key) = data.keys().find(|k| is_reserved_data_key(k)) {
            return Err(Rejection::invalid_json(format!(
                "data key {:?} is reserved (from, message_type, google*, gcm*)",
                truncate(key, 64)
            )));
        }
    }

    match (&d.to, &d.condition) {
        (None, None) => {
            return Err(Rejection::invalid_json(
                "missing registration token/target: set \"to\" or \"condition\"",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Rejection::invalid_json(
                "\"to\" and \"condition\" are mutually exclusive: set only one",
            ))
        }
        (Some(to), None) => {
            if let Some(name) = to.strip_prefix(TOPIC_PREFIX) {
                if !topic_name_is_well_formed(name) {
                    return Err(Rejection::invalid_json(format!(
                        "invalid topic name in \"to\": {:?} (must match [a-zA-Z0-9-_.~%]+)",
                        truncate(name, 64)
                    )));
                }
            }
        }
        (None, Some(cond)) => {
            if let Err(why) = check_condition(cond) {
                return Err(Rejection::invalid_json(format!("invalid condition: {why}")));
            }
        }
    }

    let size = d.payload_size();
    let limit = d.max_payload_bytes();
    if size > limit {
        return Err(Rejection::invalid_json(format!(
            "message too big: payload (data + notification) is {size} bytes, the limit is \
             {limit}{}",
            if d.is_topic_message() {
                " for topic messages"
            } else {
                ""
            }
        )));
    }

    if let Some(Target::Token(token)) = d.target() {
        if let Err(why) = check_token(token) {
            return Err(Rejection::new(
                ErrorCode::BadRegistration,
                format!("invalid registration token in \"to\": {why}"),
            ));
        }
    }

    Ok(d)
}

/// `true` for a `data` key FCM reserves: `from`, `message_type`, or any key
/// starting with `google` or `gcm` (table 1, table 4).
pub fn is_reserved_data_key(key: &str) -> bool {
    key == "from" || key == "message_type" || key.starts_with("google") || key.starts_with("gcm")
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-')
}

fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("empty".into());
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "{} bytes, longer than {MAX_TOKEN_BYTES}",
            token.len()
        ));
    }
    match token
        .chars()
        .find(|c| !c.is_ascii() || !is_token_byte(*c as u8))
    {
        Some(c) => Err(format!(
            "character {c:?} is not allowed (only [A-Za-z0-9_:.-])"
        )),
        None => Ok(()),
    }
}

/// A registration token is well formed if it is non-empty, at most 4096 bytes
/// and only holds `[A-Za-z0-9_:.-]`. A token that is not gets
/// `BAD_REGISTRATION`.
pub fn token_is_well_formed(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_TOKEN_BYTES && token.bytes().all(is_token_byte)
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%')
}

/// A topic name (after `/topics/`, or quoted in a condition) must match
/// `[a-zA-Z0-9-_.~%]+`.
pub fn topic_name_is_well_formed(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_topic_byte)
}

/// `true` if `condition` follows table 1's syntax; see [`validate_downstream`].
pub fn condition_is_well_formed(condition: &str) -> bool {
    check_condition(condition).is_ok()
}

/// Checks a topic condition: operands `'name' in topics` (single or double
/// quotes; `in topics` case-insensitive), `&&` / `||` between them, balanced
/// parentheses, at most [`MAX_CONDITION_OPERATORS`] operators. A single pass
/// with a depth counter: no recursion, so hostile nesting cannot overflow the
/// stack.
fn check_condition(cond: &str) -> Result<(), String> {
    let b = cond.as_bytes();
    let mut i = 0;
    let mut expect_operand = true;
    let mut depth = 0usize;
    let mut operators = 0usize;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let Some(&c) = b.get(i) else { break };
        if expect_operand {
            match c {
                b'(' => {
                    depth += 1;
                    i += 1;
                }
                b'\'' | b'"' => {
                    let start = i + 1;
                    let Some(len) = b[start..].iter().position(|&x| x == c) else {
                        return Err(format!("unterminated quote at byte {i}"));
                    };
                    let name = &b[start..start + len];
                    if name.is_empty() || !name.iter().all(|&x| is_topic_byte(x)) {
                        return Err(format!(
                            "topic name at byte {start} must match [a-zA-Z0-9-_.~%]+"
                        ));
                    }
                    i = start + len + 1;
                    for word in ["in", "topics"] {
                        while i < b.len() && b[i].is_ascii_whitespace() {
                            i += 1;
                        }
                        let w_start = i;
                        while i < b.len() && b[i].is_ascii_alphanumeric() {
                            i += 1;
                        }
                        if !b[w_start..i].eq_ignore_ascii_case(word.as_bytes()) {
                            return Err(format!(
                                "expected \"{word}\" at byte {w_start} (form: 'name' in topics)"
                            ));
                        }
                    }
                    expect_operand = false;
                }
                _ => return Err(format!("expected 'topic' in topics or '(' at byte {i}")),
            }
        } else {
            match (c, b.get(i + 1)) {
                (b')', _) => {
                    if depth == 0 {
                        return Err(format!("unbalanced ')' at byte {i}"));
                    }
                    depth -= 1;
                    i += 1;
                }
                (b'&', Some(b'&')) | (b'|', Some(b'|')) => {
                    operators += 1;
                    if operators > MAX_CONDITION_OPERATORS {
                        return Err(format!("more than {MAX_CONDITION_OPERATORS} operators"));
                    }
                    expect_operand = true;
                    i += 2;
                }
                _ => return Err(format!("expected &&, || or ')' at byte {i}")),
            }
        }
    }
    if expect_operand {
        return Err(if operators == 0 && depth == 0 {
            "empty condition".into()
        } else {
            "condition ends where a topic test is expected".into()
        });
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    Ok(())
}

/// Counts bytes written, to size compact JSON without building it.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Payload bytes of one value: a string's UTF-8 length without quotes, any
/// other value's compact JSON length.
fn value_payload_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        other => {
            let mut counter = ByteCounter(0);
            // Writing a `Value` to an infallible sink cannot fail.
            let _ = serde_json::to_writer(&mut counter, other);
            counter.0
        }
    }
}

fn map_payload_size(map: &Map<String, Value>) -> usize {
    map.iter()
        .map(|(k, v)| k.len() + value_payload_size(v))
        .sum()
}

/// At most `max` characters of `s`, for error descriptions.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn value_sizes() {
        assert_eq!(value_payload_size(&json!("héllo")), 6);
        assert_eq!(value_payload_size(&json!(12)), 2);
        assert_eq!(value_payload_size(&json!(true)), 4);
        assert_eq!(value_payload_size(&json!(null)), 4);
        assert_eq!(value_payload_size(&json!({"a": [1, "x"]})), 13);
        assert_eq!(value_payload_size(&json!(1.5)), 3);
    }

    #[test]
    fn truncate_is_char_safe() {
        assert_eq!(truncate("ééé", 2), "éé");
        assert_eq!(truncate("ab", 5), "ab");
    }

    #[test]
    fn condition_grammar() {
        let ok = [
            "'a' in topics",
            "\"a\" in topics",
            "'a' IN Topics",
            "'a'in topics",
            "  'a'   in\ttopics  ",
            "'a' in topics && 'b' in topics",
            "'a' in topics || 'b' in topics",
            "'a' in topics&&'b' in topics||'c' in topics",
            "'a' in topics && ('b' in topics || 'c' in topics)",
            "('a' in topics && 'b' in topics) || 'c' in topics",
            "(('a' in topics))",
            "'TopicA-1_.~%' in topics",
        ];
        for c in ok {
            assert_eq!(check_condition(c), Ok(()), "{c}");
        }
        let bad = [
            "",
            "   ",
            "a in topics",
            "'a'",
            "'a' in",
            "'a' topics",
            "'a' in topic",
            "'a' intopics",
            "'a' in topicsx",
            "'a' in topics1",
            "'' in topics",
            "'a b' in topics",
            "'a\" in topics",
            "'a' in topics &&",
            "&& 'a' in topics",
            "'a' in topics & 'b' in topics",
            "'a' in topics | 'b' in topics",
            "'a' in topics 'b' in topics",
            "('a' in topics",
            "'a' in topics)",
            "()",
            "('a' in topics))(",
            "!('a' in topics)",
            "'a' in topics && 'b' in topics && 'c' in topics && 'd' in topics",
            "'é' in topics",
        ];
        for c in bad {
            assert!(check_condition(c).is_err(), "{c}");
        }
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let c = format!(
            "{}'a' in topics{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        assert_eq!(check_condition(&c), Ok(()));
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&json!(-1)), "a negative integer");
        assert_eq!(kind(&json!(1)), "an integer");
        assert_eq!(kind(&json!(1.5)), "a float");
        assert_eq!(kind(&json!("1")), "a string");
    }
}
