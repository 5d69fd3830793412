//! The XML gimmm writes on an XMPP stream: stream headers (RFC 6120 §4.7),
//! features (§4.3.2), SASL PLAIN (§6.4, RFC 4616), resource binding (§7),
//! stream errors (§4.9) and FCM `<message><gcm>` stanzas.
//!
//! Everything is built by string concatenation with explicit escaping: the
//! shapes are fixed and small, and the hot path
//! ([`append_gcm_message`]) appends straight into the caller's write buffer.
//!
//! Escaping: text escapes `&`, `<`, `>` and `\r` (a literal CR would be
//! normalised away by the reader); attribute values additionally escape
//! quotes, `\n` and `\t` (attribute-value normalisation would turn them into
//! spaces). Characters XML 1.0 cannot carry at all (C0 controls other than
//! tab/LF/CR, U+FFFE, U+FFFF) are replaced by U+FFFD; valid JSON never
//! contains them unescaped.

use base64::Engine as _;

use crate::ns;

/// A whitespace keepalive (RFC 6120 §4.6.1).
pub const KEEPALIVE: &[u8] = b" ";
/// Closes our side of the stream (RFC 6120 §4.4).
pub const STREAM_END: &str = "</stream:stream>";

/// Where escaped output goes: a `String` or the hot path's `Vec<u8>`.
trait Sink {
    fn put(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

/// Escape `s` into `out`. `attr`: escape for a double-quoted attribute value.
fn escape_into<S: Sink>(out: &mut S, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut last = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let (rep, width): (&str, usize) = match b {
            b'&' => ("&amp;", 1),
            b'<' => ("&lt;", 1),
            b'>' => ("&gt;", 1),
            b'\r' => ("&#13;", 1),
            b'"' if attr => ("&quot;", 1),
            b'\'' if attr => ("&apos;", 1),
            b'\n' if attr => ("&#10;", 1),
            b'\t' if attr => ("&#9;", 1),
            0x00..=0x08 | 0x0B | 0x0C | 0x0E..=0x1F => ("\u{FFFD}", 1),
            // U+FFFE / U+FFFF are EF BF BE / EF BF BF.
            0xEF if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                ("\u{FFFD}", 3)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        // `i` is at an ASCII byte or a UTF-8 lead byte: a char boundary.
        out.put(s.get(last..i).unwrap_or_default());
        out.put(rep);
        i += width;
        last = i;
    }
    out.put(s.get(last..).unwrap_or_default());
}

/// `s` escaped for use as XML character data.
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    escape_into(&mut out, s, false);
    out
}

/// `s` escaped for use inside a double-quoted attribute value.
pub fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    escape_into(&mut out, s, true);
    out
}

/// Keep element names we interpolate (SASL/stream error conditions) to a safe
/// NCName subset; anything else becomes `fallback`.
fn condition_name<'a>(condition: &'a str, fallback: &'a str) -> &'a str {
    let ok = !condition.is_empty()
        && condition
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && condition
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic());
    if ok {
        condition
    } else {
        fallback
    }
}

/// The client's stream header (RFC 6120 §4.7), as CCS expects it:
/// `<stream:stream to="..." version="1.0" xmlns="jabber:client" xmlns:stream="...">`.
pub fn client_stream_header(to: &str) -> String {
    let mut s = String::with_capacity(160);
    s.push_str("<stream:stream to=\"");
    escape_into(&mut s, to, true);
    s.push_str("\" version=\"1.0\" xmlns=\"");
    s.push_str(ns::CLIENT);
    s.push_str("\" xmlns:stream=\"");
    s.push_str(ns::STREAMS);
    s.push_str("\">");
    s
}

/// The server's stream header, like CCS's in the seed trace.
pub fn server_stream_header(from: &str, id: &str) -> String {
    let mut s = String::with_capacity(180);
    s.push_str("<stream:stream from=\"");
    escape_into(&mut s, from, true);
    s.push_str("\" id=\"");
    escape_into(&mut s, id, true);
    s.push_str("\" version=\"1.0\" xmlns:stream=\"");
    s.push_str(ns::STREAMS);
    s.push_str("\" xmlns=\"");
    s.push_str(ns::CLIENT);
    s.push_str("\">");
    s
}

/// `<stream:features>` offering the given SASL mechanisms (RFC 6120 §6.4.1).
pub fn sasl_features(mechanisms: &[&str]) -> String {
    let mut s = String::with_capacity(128);
    s.push_str("<stream:features><mechanisms xmlns=\"");
    s.push_str(ns::SASL);
    s.push_str("\">");
    for m in mechanisms {
        s.push_str("<mechanism>");
        escape_into(&mut s, m, false);
        s.push_str("</mechanism>");
    }
    s.push_str("</mechanisms></stream:features>");
    s
}

/// `<stream:features>` after SASL: resource binding and (legacy) session.
pub fn bind_features() -> String {
    format!(
        "<stream:features><bind xmlns=\"{}\"/><session xmlns=\"{}\"/></stream:features>",
        ns::BIND,
        ns::SESSION
    )
}

/// The SASL PLAIN initial response (RFC 4616): `base64("\0authcid\0password")`.
pub fn auth_plain(authcid: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(authcid.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(authcid.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    format!(
        "<auth xmlns=\"{}\" mechanism=\"PLAIN\">{b64}</auth>",
        ns::SASL
    )
}

/// SASL `<success/>` (RFC 6120 §6.4.6).
pub fn sasl_success() -> String {
    format!("<success xmlns=\"{}\"/>", ns::SASL)
}

/// SASL `<failure>` with a condition element (RFC 6120 §6.5), e.g.
/// `sasl_failure("not-authorized")`. An invalid condition name becomes
/// `not-authorized`.
pub fn sasl_failure(condition: &str) -> String {
    format!(
        "<failure xmlns=\"{}\"><{}/></failure>",
        ns::SASL,
        condition_name(condition, "not-authorized")
    )
}

/// The resource-binding request (RFC 6120 §7.6 / §7.7).
pub fn bind_request(id: &str, resource: Option<&str>) -> String {
    let mut s = String::with_capacity(128);
    s.push_str("<iq type=\"set\" id=\"");
    escape_into(&mut s, id, true);
    s.push_str("\"><bind xmlns=\"");
    s.push_str(ns::BIND);
    match resource {
        Some(r) => {
            s.push_str("\"><resource>");
            escape_into(&mut s, r, false);
            s.push_str("</resource></bind></iq>");
        }
        None => s.push_str("\"/></iq>"),
    }
    s
}

/// The resource-binding result carrying the full JID (RFC 6120 §7.6.1).
/// An empty `id` omits the attribute (CCS's requests have none).
pub fn bind_result(id: &str, jid: &str) -> String {
    let mut s = String::with_capacity(128);
    s.push_str("<iq type=\"result\"");
    if !id.is_empty() {
        s.push_str(" id=\"");
        escape_into(&mut s, id, true);
        s.push('"');
    }
    s.push_str("><bind xmlns=\"");
    s.push_str(ns::BIND);
    s.push_str("\"><jid>");
    escape_into(&mut s, jid, false);
    s.push_str("</jid></bind></iq>");
    s
}

fn put_gcm_message<S: Sink>(out: &mut S, id: Option<&str>, json: &str, prefixed: bool) {
    match id {
        Some(id) => {
            out.put("<message id=\"");
            escape_into(out, id, true);
            out.put("\">");
        }
        None => out.put("<message>"),
    }
    if prefixed {
        out.put("<data:gcm xmlns:data=\"google:mobile:data\">");
    } else {
        out.put("<gcm xmlns=\"google:mobile:data\">");
    }
    escape_into(out, json, false);
    if prefixed {
        out.put("</data:gcm></message>");
    } else {
        out.put("</gcm></message>");
    }
}

/// `<message id="..."><gcm xmlns="google:mobile:data">JSON</gcm></message>`,
/// JSON escaped as XML text. `id: None` omits the attribute.
pub fn gcm_message(id: Option<&str>, json: &str) -> String {
    let mut s = String::with_capacity(json.len() + 96);
    put_gcm_message(&mut s, id, json, false);
    s
}

/// Same as [`gcm_message`] with the prefixed form CCS also uses:
/// `<data:gcm xmlns:data="google:mobile:data">`.
pub fn gcm_message_prefixed(id: Option<&str>, json: &str) -> String {
    let mut s = String::with_capacity(json.len() + 112);
    put_gcm_message(&mut s, id, json, true);
    s
}

/// The hot path: append a [`gcm_message`] to a write buffer without
/// intermediate allocations.
pub fn append_gcm_message(out: &mut Vec<u8>, id: Option<&str>, json: &str) {
    out.reserve(json.len() + 96);
    put_gcm_message(out, id, json, false);
}

/// `<stream:error>` with a defined condition (RFC 6120 §4.9.3); send
/// [`STREAM_END`] after it. An invalid condition becomes
/// `undefined-condition`.
pub fn stream_error(condition: &str) -> String {
    format!(
        "<stream:error><{} xmlns=\"{}\"/></stream:error>",
        condition_name(condition, "undefined-condition"),
        ns::STREAM_ERRORS
    )
}

/// `<stream:error>` with a condition and a human-readable `<text>`.
pub fn stream_error_with_text(condition: &str, text: &str) -> String {
    let mut s = format!(
        "<stream:error><{} xmlns=\"{}\"/><text xmlns=\"{}\">",
        condition_name(condition, "undefined-condition"),
        ns::STREAM_ERRORS,
        ns::STREAM_ERRORS
    );
    escape_into(&mut s, text, false);
    s.push_str("</text></stream:error>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_text_and_attributes() {
        assert_eq!(
            escape_text("a&b<c>d\"e'f\r\n"),
            "a&amp;b&lt;c&gt;d\"e'f&#13;\n"
        );
        assert_eq!(escape_attr("a\"b'c\n\td<"), "a&quot;b&apos;c&#10;&#9;d&lt;");
        assert_eq!(
            escape_text("x\u{1}y\u{FFFF}z\u{FFFE}é"),
            "x\u{FFFD}y\u{FFFD}z\u{FFFD}é"
        );
        assert_eq!(escape_text("\u{FFFD}\u{EFBF}ü"), "\u{FFFD}\u{EFBF}ü");
        assert_eq!(escape_text(""), "");
    }

    #[test]
    fn shapes() {
        assert_eq!(
            gcm_message(Some("m\"1"), "{\"a\":\"<&>\"}"),
            "<message id=\"m&quot;1\"><gcm xmlns=\"google:mobile:data\">{\"a\":\"&lt;&amp;&gt;\"}</gcm></message>"
        );
        assert_eq!(
            gcm_message_prefixed(None, "{}"),
            "<message><data:gcm xmlns:data=\"google:mobile:data\">{}</data:gcm></message>"
        );
        let mut v = b"x".to_vec();
        append_gcm_message(&mut v, Some("1"), "{}");
        assert_eq!(
            v,
            [b"x".as_slice(), gcm_message(Some("1"), "{}").as_bytes()].concat()
        );
        assert_eq!(
            sasl_failure("bad name"),
            "<failure xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"><not-authorized/></failure>"
        );
        assert_eq!(
            auth_plain("user", "pw"),
            "<auth xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\" mechanism=\"PLAIN\">AHVzZXIAcHc=</auth>"
        );
        assert_eq!(
            bind_request("b1", Some("r&")),
            "<iq type=\"set\" id=\"b1\"><bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\"><resource>r&amp;</resource></bind></iq>"
        );
        assert_eq!(
            bind_result("", "a@b/c"),
            "<iq type=\"result\"><bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\"><jid>a@b/c</jid></bind></iq>"
        );
        assert_eq!(
            stream_error("see-other-host"),
            "<stream:error><see-other-host xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/></stream:error>"
        );
    }
}
