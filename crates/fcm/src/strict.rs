//! Strict JSON for message bodies (SPEC §11 "Input hygiene"): a key given
//! twice in one object is an error, not "the last one wins" (what
//! `serde_json::Value` does, and what FCM might do differently), and a
//! document nested deeper than the parser allows is refused with an error
//! that says so.
//!
//! One pass: the body is parsed into a [`Value`] with a duplicate check in
//! each object, at the cost of a plain `Value` parse.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// How deep JSON may nest (serde_json's recursion limit).
pub const MAX_NESTING: usize = 128;

/// Why a body is not strict JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictError {
    /// A key appears twice in one object.
    #[error("duplicate key {key:?} in a JSON object")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// Nested deeper than [`MAX_NESTING`] levels.
    #[error("JSON nested deeper than {MAX_NESTING} levels")]
    TooDeep,
    /// Not JSON at all.
    #[error("not valid JSON: {0}")]
    Syntax(String),
}

/// Parses `text` into a [`Value`], refusing duplicate keys at any depth.
pub fn from_str_strict(text: &str) -> Result<Value, StrictError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = StrictSeed.deserialize(&mut de).map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(v)
}

const DUPLICATE: &str = "gimmm-duplicate-key:";

fn classify(e: serde_json::Error) -> StrictError {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix(DUPLICATE) {
        // The line/column suffix serde adds is not part of the key.
        let key = rest.rsplit_once(" at line ").map_or(rest, |(k, _)| k);
        return StrictError::DuplicateKey {
            key: key.to_string(),
        };
    }
    if msg.starts_with("recursion limit exceeded") {
        return StrictError::TooDeep;
    }
    StrictError::Syntax(msg)
}

/// Deserializes one value strictly.
struct StrictSeed;

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(x) = seq.next_element_seed(StrictSeed)? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(StrictSeed)?;
            if m.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("{DUPLICATE}{key}")));
            }
            m.insert(key, value);
        }
        Ok(Value::Object(m))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_value_and_refuses_duplicates_and_depth() {
        let text = r#"{"to":"t","data":{"a":"1","b":[1,2.5,null,true,{"x":"y"}]},"n":-3}"#;
        assert_eq!(
            from_str_strict(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(
            from_str_strict(r#"{"to":"a","to":"b"}"#),
            Err(StrictError::DuplicateKey { key: "to".into() })
        );
        assert_eq!(
            from_str_strict(r#"{"data":{"k":"1","k":"2"}}"#),
            Err(StrictError::DuplicateKey { key: "k".into() })
        );
        assert_eq!(
            from_str_strict(r#"[{"a at line 1":1,"a at line 1":2}]"#),
            Err(StrictError::DuplicateKey {
                key: "a at line 1".into()
            })
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(from_str_strict(&deep), Err(StrictError::TooDeep));
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(from_str_strict(&ok).is_ok());
        assert!(matches!(
            from_str_strict(r#"{"a":1"#),
            Err(StrictError::Syntax(_))
        ));
        assert!(matches!(
            from_str_strict(r#"{"a":1} x"#),
            Err(StrictError::Syntax(_))
        ));
        assert!(StrictError::TooDeep.to_string().contains("128"));
    }
}
