//! The body of `POST /v1/upstream` (SPEC §10), parsed without I/O:
//! `{"category":"com.example.app","message_id":"u-1","from":"<device>","data":{...}}`.
//!
//! The rules are §3.2's for a payload, applied to what a device sends up:
//! `data` is an object of strings whose keys are not reserved (`from`,
//! `message_type`, `google*`, `gcm*`, [`fcm::is_reserved_data_key`]) and
//! whose keys and values together take at most [`fcm::MAX_PAYLOAD_BYTES`];
//! duplicate keys are refused (SPEC §11 "input hygiene": the JSON would mean
//! different things to different parsers). Every problem is described in
//! words that name the field, for the `error_description` of a 400; nesting
//! beyond the parser's limit says so. Unknown top-level fields are ignored,
//! as in the BAL protocol (§3).
//!
//! The parser is hand-driven serde (a map visitor) rather than a derived
//! struct so that a wrong type names its field and a duplicate key anywhere
//! is caught; the JSON grammar itself is serde_json's.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;

/// Longest `message_id` (the app's idempotency key, kept in the store).
pub const MAX_MESSAGE_ID_BYTES: usize = 256;
/// Longest `category` (a session id: an Android package or iOS bundle id).
pub const MAX_CATEGORY_BYTES: usize = 256;
/// Longest `from` (a registration token is at most this long, §3.2).
pub const MAX_FROM_BYTES: usize = fcm::MAX_TOKEN_BYTES;
/// serde_json's nesting limit, for the error text.
const PARSER_DEPTH_LIMIT: usize = 128;

/// A valid upstream post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamPost {
    /// The session it is for.
    pub category: String,
    /// The app's idempotency key.
    pub message_id: String,
    /// The device (registration token or another id the app uses).
    pub from: String,
    /// The payload, in the order sent.
    pub data: Vec<(String, String)>,
}

/// Why a body is refused (the `error_description` of the 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

/// Longest description (serde quotes a wrong-typed string in full).
pub const MAX_DESCRIPTION_CHARS: usize = 300;

impl BodyError {
    fn new(s: impl Into<String>) -> BodyError {
        let s: String = s.into();
        match s.char_indices().nth(MAX_DESCRIPTION_CHARS) {
            Some((i, _)) => BodyError(format!("{}…", &s[..i])),
            None => BodyError(s),
        }
    }

    /// The description.
    pub fn description(&self) -> &str {
        &self.0
    }
}

/// Parses and checks a body (see the module docs).
pub fn parse(body: &[u8]) -> Result<UpstreamPost, BodyError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(BodyError::new(format!(
            "the body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = de.deserialize_map(PostVisitor).map_err(describe)?;
    de.end().map_err(describe)?;
    raw.check()
}

/// serde_json's error, in words for the client.
fn describe(e: serde_json::Error) -> BodyError {
    let text = e.to_string();
    if text.starts_with("recursion limit exceeded") {
        return BodyError::new(format!(
            "JSON nested deeper than {PARSER_DEPTH_LIMIT} levels (the parser's limit) at line {} column {}",
            e.line(),
            e.column()
        ));
    }
    if e.is_eof() {
        return BodyError::new(format!("the body is not complete JSON: {text}"));
    }
    BodyError::new(format!("the body is not a valid upstream message: {text}"))
}

/// What the visitor collected, before the checks that need every field.
struct Raw {
    category: Option<String>,
    message_id: Option<String>,
    from: Option<String>,
    data: Option<Vec<(String, String)>>,
}

impl Raw {
    fn check(self) -> Result<UpstreamPost, BodyError> {
        let missing = |f: &str| BodyError::new(format!("missing field \"{f}\""));
        let category = self.category.ok_or_else(|| missing("category"))?;
        let message_id = self.message_id.ok_or_else(|| missing("message_id"))?;
        let from = self.from.ok_or_else(|| missing("from"))?;
        let data = self.data.ok_or_else(|| missing("data"))?;
        for (name, v, max) in [
            ("category", &category, MAX_CATEGORY_BYTES),
            ("message_id", &message_id, MAX_MESSAGE_ID_BYTES),
            ("from", &from, MAX_FROM_BYTES),
        ] {
            if v.is_empty() {
                return Err(BodyError::new(format!("\"{name}\" must not be empty")));
            }
            if v.len() > max {
                return Err(BodyError::new(format!(
                    "\"{name}\" is {} bytes, the limit is {max}",
                    v.len()
                )));
            }
        }
        if let Some((k, _)) = data.iter().find(|(k, _)| fcm::is_reserved_data_key(k)) {
            return Err(BodyError::new(format!(
                "data key {:?} is reserved (from, message_type, google*, gcm*)",
                truncate(k, 64)
            )));
        }
        let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > fcm::MAX_PAYLOAD_BYTES {
            return Err(BodyError::new(format!(
                "message too big: data (keys and values) is {size} bytes, the limit is {}",
                fcm::MAX_PAYLOAD_BYTES
            )));
        }
        Ok(UpstreamPost {
            category,
            message_id,
            from,
            data,
        })
    }
}

struct PostVisitor;

impl<'de> Visitor<'de> for PostVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut raw = Raw {
            category: None,
            message_id: None,
            from: None,
            data: None,
        };
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {:?}",
                    truncate(&key, 64)
                )));
            }
            match key.as_str() {
                "category" => raw.category = Some(map.next_value_seed(Text("\"category\""))?),
                "message_id" => raw.message_id = Some(map.next_value_seed(Text("\"message_id\""))?),
                "from" => raw.from = Some(map.next_value_seed(Text("\"from\""))?),
                "data" => raw.data = Some(map.next_value_seed(Data)?),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(raw)
    }
}

/// An unknown field's value, skipped. Unlike [`IgnoredAny`] (which
/// serde_json skips without looking at the depth) it goes through the
/// parser's nesting limit, so hostile nesting is refused, and said to be.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

/// A string field; `0` names it in a type error.
struct Text<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for Text<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_string(self)
    }
}

impl Visitor<'_> for Text<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to be a string", self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// `data`: an object of strings, without duplicate keys.
struct Data;

impl<'de> DeserializeSeed<'de> for Data {
    type Value = Vec<(String, String)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Data {
    type Value = Vec<(String, String)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"data\" to be an object of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "duplicate data key {:?}",
                    truncate(&key, 64)
                )));
            }
            let name = format!("data value {:?}", truncate(&key, 64));
            let v = map.next_value_seed(Text(&name))?;
            out.push((key, v));
        }
        Ok(out)
    }
}

/// At most `max` characters of `s`, for error descriptions.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl UpstreamPost {
    /// The upstream JSON the BAL receives as `fcm_data` (SPEC §10): the
    /// fields of an XMPP upstream message (§3.3) plus `"source":"ingress"`
    /// and, when a JWT authenticated the request, `"subject"` = its `sub`.
    pub fn fcm_data(&self, subject: Option<&str>) -> String {
        let out = FcmData {
            post: self,
            subject,
        };
        match serde_json::to_string(&out) {
            Ok(s) => s,
            // Only strings and string maps: serializing cannot fail.
            Err(e) => unreachable!("serializing strings cannot fail: {e}"),
        }
    }
}

struct FcmData<'a> {
    post: &'a UpstreamPost,
    subject: Option<&'a str>,
}

impl Serialize for FcmData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.post;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("from", &p.from)?;
        m.serialize_entry("category", &p.category)?;
        m.serialize_entry("message_id", &p.message_id)?;
        m.serialize_entry("data", &DataOut(&p.data))?;
        m.serialize_entry("source", "ingress")?;
        if let Some(sub) = self.subject {
            m.serialize_entry("subject", sub)?;
        }
        m.end()
    }
}

struct DataOut<'a>(&'a [(String, String)]);

impl Serialize for DataOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().to_string()
    }

    const OK: &str =
        r#"{"category":"app","message_id":"u-1","from":"dev-1","data":{"a":"1","b":"x"}}"#;

    #[test]
    fn a_good_body_and_its_fcm_data() {
        let p = parse(OK.as_bytes()).unwrap();
        assert_eq!(p.category, "app");
        assert_eq!(
            p.data,
            vec![("a".into(), "1".into()), ("b".into(), "x".into())]
        );
        let v: serde_json::Value = serde_json::from_str(&p.fcm_data(None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"from":"dev-1","category":"app","message_id":"u-1",
                "data":{"a":"1","b":"x"},"source":"ingress"})
        );
        let v: serde_json::Value = serde_json::from_str(&p.fcm_data(Some("user-7"))).unwrap();
        assert_eq!(v["subject"], "user-7");
        // Unknown fields are ignored; an empty data object is fine.
        let p =
            parse(br#"{"x":[1,{"y":null}],"category":"c","message_id":"m","from":"f","data":{}}"#)
                .unwrap();
        assert!(p.data.is_empty());
    }

    #[test]
    fn every_problem_is_named() {
        assert!(
            err("nope").contains("not a valid upstream message"),
            "{}",
            err("nope")
        );
        assert!(
            err("[1]").contains("expected a JSON object"),
            "{}",
            err("[1]")
        );
        assert!(err(r#"{"category":"a""#).contains("not complete JSON"));
        assert!(err(&format!("{OK} x")).contains("trailing characters"));
        for f in ["category", "message_id", "from", "data"] {
            let v: serde_json::Value = serde_json::from_str(OK).unwrap();
            let mut m = v.as_object().unwrap().clone();
            m.remove(f);
            let e = err(&serde_json::to_string(&m).unwrap());
            assert_eq!(e, format!("missing field \"{f}\""));
            m.insert(f.into(), serde_json::json!(5));
            let e = err(&serde_json::to_string(&m).unwrap());
            assert!(e.contains(&format!("\"{f}\" to be")), "{f}: {e}");
        }
        let e = err(r#"{"category":"a","message_id":"m","from":"f","data":{"k":1}}"#);
        assert!(e.contains("data value \"k\" to be a string"), "{e}");
        let e = err(r#"{"category":"","message_id":"m","from":"f","data":{}}"#);
        assert_eq!(e, "\"category\" must not be empty");
        let e = err(r#"{"category":"a","category":"b","message_id":"m","from":"f","data":{}}"#);
        assert!(e.contains("duplicate key \"category\""), "{e}");
        let e = err(r#"{"category":"a","message_id":"m","from":"f","data":{"k":"1","k":"2"}}"#);
        assert!(e.contains("duplicate data key \"k\""), "{e}");
        let e = err(&format!(
            r#"{{"category":"a","message_id":"{}","from":"f","data":{{}}}}"#,
            "m".repeat(MAX_MESSAGE_ID_BYTES + 1)
        ));
        assert!(e.contains("\"message_id\" is 257 bytes"), "{e}");
    }

    #[test]
    fn reserved_keys_and_size() {
        for k in ["from", "message_type", "google.x", "gcm.y"] {
            let e = err(&format!(
                r#"{{"category":"a","message_id":"m","from":"f","data":{{"{k}":"v"}}}}"#
            ));
            assert!(e.contains("is reserved"), "{k}: {e}");
        }
        let at_limit = "v".repeat(fcm::MAX_PAYLOAD_BYTES - 1);
        let body = format!(
            r#"{{"category":"a","message_id":"m","from":"f","data":{{"k":"{at_limit}"}}}}"#
        );
        assert!(parse(body.as_bytes()).is_ok());
        let body = format!(
            r#"{{"category":"a","message_id":"m","from":"f","data":{{"kk":"{at_limit}"}}}}"#
        );
        let e = parse(body.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("message too big") && e.contains("4097"), "{e}");
    }

    #[test]
    fn descriptions_are_bounded() {
        let long = "x".repeat(4000);
        let e = err(&format!(
            r#"{{"category":"a","message_id":"m","from":"f","data":"{long}"}}"#
        ));
        assert!(e.chars().count() <= MAX_DESCRIPTION_CHARS + 1, "{e}");
        assert!(
            e.starts_with("the body is not a valid upstream message: invalid type: string"),
            "{e}"
        );
    }

    #[test]
    fn utf8_and_nesting() {
        let mut b = OK.as_bytes().to_vec();
        b[14] = 0xff;
        let e = parse(&b).unwrap_err().to_string();
        assert_eq!(e, "the body is not valid UTF-8 (at byte 14)");
        let deep = format!(
            r#"{{"category":"a","message_id":"m","from":"f","data":{{}},"x":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let e = parse(deep.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("nested deeper than 128 levels (the parser's limit)"),
            "{e}"
        );
        // Nesting inside data is a type error, found at once.
        let deep = format!(
            r#"{{"category":"a","message_id":"m","from":"f","data":{{"k":{}}}}}"#,
            "[".repeat(10_000)
        );
        let e = parse(deep.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("to be a string"), "{e}");
    }
}
