//! A tiny compact-JSON writer into a `String` (SPEC §8.2, §8.3: the request
//! body and the ack are built on the send path of every message).
//!
//! Writing straight into a `String` needs no UTF-8 re-check and cannot fail,
//! so the callers need no error path for output. The escaping is JSON's
//! minimum (`"`, `\` and U+0000..U+001F), the same as `serde_json`'s.

use std::fmt::Write as _;

use serde_json::Value;

/// Bytes a JSON string literal must escape: `"`, `\\` and U+0000..U+001F.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` as a JSON string literal.
pub(super) fn push_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        // `i` is at an ASCII byte, hence on a char boundary.
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends `"key":` (with a leading comma unless `*first`).
pub(super) fn push_key(out: &mut String, first: &mut bool, key: &str) {
    if !std::mem::take(first) {
        out.push(',');
    }
    push_str(out, key);
    out.push(':');
}

/// Appends an integer. Formatting into a `String` cannot fail.
pub(super) fn push_int(out: &mut String, n: i64) {
    let _ = write!(out, "{n}");
}

/// Appends any JSON value, compact. Recursion depth is the value's depth
/// (`serde_json` parses at most 128 levels).
pub(super) fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // `Number`'s `Display` is its JSON form (itoa / shortest float, never
        // NaN or infinite).
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => push_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            let mut first = true;
            for (k, item) in map {
                push_key(out, &mut first, k);
                push_value(out, item);
            }
            out.push('}');
        }
    }
}

/// Short name of a JSON value's type, for error descriptions.
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "an integer",
        Value::Number(_) => "a float",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `max` characters of `s`, for error descriptions.
pub(super) fn truncate(s: &str, max: usize) -> &str {
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
    fn strings_escape_like_serde_json() {
        for s in [
            "",
            "plain",
            "q\"b\\s",
            "nl\ncr\rtab\tbs\u{8}ff\u{c}",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "é✓😀",
            "\u{2028}",
        ] {
            let mut out = String::new();
            push_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn values_serialize_like_serde_json() {
        let v = json!({"a": [1, -2, 1.5, 1e300, true, false, null, "x\"y"],
                       "b": {"c": {}}, "d": [], "e": u64::MAX, "f": i64::MIN});
        let mut out = String::new();
        push_value(&mut out, &v);
        assert_eq!(out, serde_json::to_string(&v).unwrap());
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn keys_and_ints() {
        let mut out = String::from("{");
        let mut first = true;
        push_key(&mut out, &mut first, "a");
        push_int(&mut out, -5);
        push_key(&mut out, &mut first, "b");
        push_int(&mut out, 7);
        out.push('}');
        assert_eq!(out, r#"{"a":-5,"b":7}"#);
    }
}
