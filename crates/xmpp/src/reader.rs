//! Streaming, sans-I/O XMPP reader: bytes in, whole stanzas out.
//!
//! Follows RFC 6120 §4 (XML streams: the header of §4.7, top-level children
//! as stanzas, whitespace keepalives of §4.6.1, the closing tag of §4.4) and
//! §11 (XML usage: no DTDs, no entity declarations, no processing
//! instructions other than the XML declaration).
//!
//! Framing is split from meaning, in two passes:
//!
//! 1. An incremental byte scanner finds item boundaries. It keeps its state
//!    (`Lex`, nesting depth, open quote, ...) across [`StanzaReader::feed`]
//!    calls, so every byte is looked at once no matter how the input is
//!    split. It knows just enough XML to find the `>` that ends a stanza:
//!    quoted attribute values, `/>`, end tags, comments, CDATA. It is also
//!    where the hard limits live: forbidden constructs are refused as soon as
//!    `<!D`/`<!E`/`<?` is seen, and the stanza size limit applies to an
//!    incomplete stanza too, so memory stays bounded by `max_stanza_bytes`
//!    plus one read.
//! 2. A complete stanza is parsed with quick-xml's `NsReader`, pre-loaded with
//!    the namespace declarations of the stream header (a stanza is a fragment:
//!    its default namespace and the `stream` prefix come from the header).
//!    The element tree is then classified into an [`Event`].
//!
//! quick-xml never expands entities beyond the five predefined ones and
//! character references, which is exactly what XMPP allows.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event as XmlEvent};
use quick_xml::name::{Namespace, PrefixDeclaration, ResolveResult};
use quick_xml::{NsReader, XmlVersion};

use crate::{ns, XmppError};

/// Deepest element nesting accepted inside one stanza. CCS stanzas are three
/// levels deep; the cap keeps the parse tree (and its recursive drop) small.
pub const MAX_DEPTH: usize = 64;

/// One thing read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's `<stream:stream>` header (RFC 6120 §4.7).
    StreamStart {
        /// The stream id (set by servers).
        id: Option<String>,
        /// The `from` attribute.
        from: Option<String>,
        /// The `to` attribute.
        to: Option<String>,
    },
    /// `<stream:features>` (RFC 6120 §4.3.2).
    Features(Features),
    /// A SASL `<auth>` (seen by servers); `payload` is the base64 text with
    /// whitespace removed.
    Auth {
        /// The `mechanism` attribute, e.g. `PLAIN`.
        mechanism: String,
        /// The base64-encoded initial response.
        payload: String,
    },
    /// SASL `<success/>` (RFC 6120 §6.4.6).
    SaslSuccess,
    /// SASL `<failure>` (RFC 6120 §6.5) with its condition element name.
    SaslFailure {
        /// e.g. `not-authorized`; `unspecified` when the server named none.
        condition: String,
    },
    /// An `<iq>` stanza (RFC 6120 §8.2.3).
    Iq(Iq),
    /// A `<message>` stanza, with the FCM payload if it has one.
    Message(Message),
    /// Whitespace between stanzas (RFC 6120 §4.6.1). One event per run of
    /// whitespace that was available at once; a run split across reads may
    /// yield several.
    Keepalive,
    /// `<stream:error>` (RFC 6120 §4.9).
    StreamError {
        /// The defined condition, e.g. `host-unknown`.
        condition: String,
        /// The optional `<text>`.
        text: Option<String>,
    },
    /// `</stream:stream>` (RFC 6120 §4.4).
    StreamEnd,
    /// Any other top-level element (presence, unknown extensions); skipped.
    Other {
        /// The element's local name.
        name: String,
    },
}

/// What a server offered in `<stream:features>`. Unknown features (`<sm>`,
/// `<register>`, entity caps, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// SASL mechanisms offered, in the server's order.
    pub mechanisms: Vec<String>,
    /// Resource binding offered (RFC 6120 §7).
    pub bind: bool,
    /// Legacy session establishment offered (RFC 3921 §3).
    pub session: bool,
}

/// An `<iq>` stanza, reduced to what negotiation needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Iq {
    /// The `id` attribute.
    pub id: Option<String>,
    /// The `type` attribute (`get`, `set`, `result`, `error`); empty if absent.
    pub kind: String,
    /// The `<bind>` child, if any.
    pub bind: Option<Bind>,
}

/// The `<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind">` payload of an iq.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bind {
    /// Requested resource (in a `set`).
    pub resource: Option<String>,
    /// Bound full JID (in a `result`).
    pub jid: Option<String>,
}

/// A `<message>` stanza.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The `id` attribute.
    pub id: Option<String>,
    /// The `from` attribute.
    pub from: Option<String>,
    /// The `to` attribute.
    pub to: Option<String>,
    /// Text of the child element `gcm` in namespace `google:mobile:data`
    /// (under any prefix), unescaped and trimmed of XML whitespace.
    pub gcm: Option<String>,
}

/// Where the reader is in the stream document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the stream header: XML declaration, whitespace, comments allowed.
    Prolog,
    /// After the header: top-level children are stanzas.
    Stream,
    /// After `</stream:stream>`: further input is discarded.
    Ended,
    /// An error was returned; the stream is unusable.
    Failed,
}

/// Lexical state of the boundary scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// At depth 0 between items (nothing of the next item seen yet).
    Idle,
    /// Character data inside a stanza.
    Text,
    /// Just after `<`.
    Lt,
    /// Inside a start tag. `quote` is the open quote byte (0 = none); `slash`
    /// whether the last byte outside quotes was `/`.
    StartTag { quote: u8, slash: bool },
    /// Inside an end tag.
    EndTag,
    /// After `<!-`.
    CommentOpen,
    /// After `<![`, `n` bytes of `CDATA[` matched.
    CDataOpen { n: u8 },
    /// Inside a comment; `dashes` = consecutive `-` just seen (max 2).
    Comment { dashes: u8 },
    /// Inside CDATA; `brackets` = consecutive `]` just seen (max 2).
    CData { brackets: u8 },
    /// After `<?`, `n` bytes of the target `xml` matched.
    PiTarget { n: u8 },
    /// Inside the XML declaration; `qmark` whether the last byte was `?`.
    Decl { qmark: bool },
}

/// What the scanner found.
enum Step {
    /// All buffered bytes scanned, the current item is incomplete.
    NeedMore,
    /// A run of whitespace at depth 0 ends at `pos`.
    Whitespace,
    /// A comment or XML declaration at depth 0: consume silently.
    Skip,
    /// The stream header (`empty`: it was `<stream:stream .../>`).
    Header { empty: bool },
    /// A complete top-level element.
    Stanza,
    /// An end tag at depth 0: the stream's closing tag.
    StreamClose,
}

/// Outcome of [`StanzaReader::step`].
enum Stepped {
    NeedMore,
    /// Something was consumed without producing an event.
    Silent,
    Event(Event),
}

/// A namespace declaration of the stream header: prefix (None = default).
type NsDecl = (Option<Vec<u8>>, Vec<u8>);

/// Incremental, sans-I/O reader of one direction of an XMPP stream.
///
/// Feed it bytes as they arrive with [`feed`](Self::feed), then call
/// [`next_event`](Self::next_event) until it returns `Ok(None)`. It never
/// panics on any input and never holds more than `max_stanza_bytes` of an
/// incomplete stanza (plus the unscanned bytes of the last feed).
#[derive(Debug, Clone)]
pub struct StanzaReader {
    max: usize,
    buf: Vec<u8>,
    /// Start of the current (unconsumed) item in `buf`.
    start: usize,
    /// Next byte to scan.
    pos: usize,
    lex: Lex,
    /// Element depth inside the current stanza (0 = between stanzas).
    depth: usize,
    phase: Phase,
    /// Namespace declarations of the current stream header.
    decls: Vec<NsDecl>,
    /// Qualified name of the stream root (to check the closing tag).
    root_name: Vec<u8>,
    /// An event queued behind the one just returned (StreamEnd after an
    /// empty header).
    pending: Option<Event>,
    /// Bytes the boundary scanner advanced over in total (see
    /// [`StanzaReader::bytes_scanned`]).
    scanned: u64,
}

impl StanzaReader {
    /// A reader that refuses stanzas (and stream headers) longer than
    /// `max_stanza_bytes` bytes.
    pub fn new(max_stanza_bytes: usize) -> Self {
        StanzaReader {
            max: max_stanza_bytes.max(1),
            buf: Vec::new(),
            start: 0,
            pos: 0,
            lex: Lex::Idle,
            depth: 0,
            phase: Phase::Prolog,
            decls: Vec::new(),
            root_name: Vec::new(),
            pending: None,
            scanned: 0,
        }
    }

    /// Bytes the boundary scanner has advanced over so far. Each byte fed
    /// is scanned once (a stream restart rescans what is buffered), so this
    /// stays linear in the input however it is split — which tests check
    /// by counting work rather than timing it.
    pub fn bytes_scanned(&self) -> u64 {
        self.scanned
    }

    /// The configured stanza size limit.
    pub fn max_stanza_bytes(&self) -> usize {
        self.max
    }

    /// Bytes held that are not yet part of a returned event.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Append bytes received from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        if matches!(self.phase, Phase::Ended | Phase::Failed) {
            return;
        }
        // Drop consumed bytes when they are at least half of the buffer: each
        // byte is moved at most once per halving, so total work stays O(n).
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Stream restart (RFC 6120 §6.4.6, after SASL success): expect a new
    /// stream header. Bytes already buffered are kept and rescanned.
    pub fn reset(&mut self) {
        self.phase = Phase::Prolog;
        self.lex = Lex::Idle;
        self.depth = 0;
        self.pos = self.start;
        self.decls.clear();
        self.root_name.clear();
        self.pending = None;
    }

    /// The next complete event, `Ok(None)` if more bytes are needed.
    ///
    /// After an `Err` the reader is failed and keeps returning errors; after
    /// [`Event::StreamEnd`] it returns `Ok(None)` (until [`reset`](Self::reset)).
    pub fn next_event(&mut self) -> Result<Option<Event>, XmppError> {
        if let Some(ev) = self.pending.take() {
            return Ok(Some(ev));
        }
        loop {
            match self.phase {
                Phase::Failed => {
                    return Err(XmppError::Protocol(
                        "stream reader already failed".to_owned(),
                    ))
                }
                Phase::Ended => {
                    self.buf.clear();
                    self.start = 0;
                    self.pos = 0;
                    return Ok(None);
                }
                Phase::Prolog | Phase::Stream => {}
            }
            match self.step() {
                Ok(Stepped::Event(ev)) => return Ok(Some(ev)),
                Ok(Stepped::Silent) => {}
                Ok(Stepped::NeedMore) => return Ok(None),
                Err(e) => {
                    self.phase = Phase::Failed;
                    self.buf = Vec::new();
                    self.start = 0;
                    self.pos = 0;
                    return Err(e);
                }
            }
        }
    }

    /// Scan one item and turn it into an event.
    fn step(&mut self) -> Result<Stepped, XmppError> {
        let step = self.scan()?;
        let item_start = self.start;
        let item_end = self.pos;
        let event = match step {
            Step::NeedMore => return Ok(Stepped::NeedMore),
            Step::Whitespace | Step::Skip => {
                self.lex = Lex::Idle;
                if self.phase == Phase::Stream && matches!(step, Step::Whitespace) {
                    Some(Event::Keepalive)
                } else {
                    None
                }
            }
            Step::Header { empty } => {
                let text = utf8(&self.buf[item_start..item_end])?;
                let (ev, decls, root) = parse_header(text)?;
                self.decls = decls;
                self.root_name = root;
                self.phase = Phase::Stream;
                if empty {
                    self.pending = Some(Event::StreamEnd);
                    self.phase = Phase::Ended;
                }
                Some(ev)
            }
            Step::Stanza => {
                let text = utf8(&self.buf[item_start..item_end])?;
                Some(parse_stanza(text, &self.decls)?)
            }
            Step::StreamClose => {
                let tag = &self.buf[item_start + 2..item_end - 1];
                let name = trim_ascii_ws(tag);
                if name != self.root_name.as_slice() {
                    return Err(XmppError::Xml(format!(
                        "end tag </{}> does not close the stream",
                        String::from_utf8_lossy(name)
                    )));
                }
                self.phase = Phase::Ended;
                Some(Event::StreamEnd)
            }
        };
        self.lex = Lex::Idle;
        self.start = item_end;
        Ok(match event {
            Some(ev) => Stepped::Event(ev),
            None => Stepped::Silent,
        })
    }

    /// The boundary scanner. Advances `pos` over buffered bytes until an item
    /// completes or the buffer ends. Every byte is visited once overall.
    fn scan(&mut self) -> Result<Step, XmppError> {
        let buf = self.buf.as_slice();
        let len = buf.len();
        let mut pos = self.pos;
        let mut lex = self.lex;
        let mut depth = self.depth;
        let in_prolog = self.phase == Phase::Prolog;
        let limit = self.max;
        let start = self.start;

        let result = loop {
            if pos - start > limit {
                break Err(XmppError::StanzaTooLarge { limit });
            }
            let Some(&b) = buf.get(pos) else {
                break Ok(Step::NeedMore);
            };
            match lex {
                Lex::Idle => {
                    if is_ws(b) {
                        let run = buf[pos..].iter().take_while(|&&c| is_ws(c)).count();
                        pos += run;
                        break Ok(Step::Whitespace);
                    }
                    if b != b'<' {
                        break Err(XmppError::Xml(
                            "character data outside of a stanza".to_owned(),
                        ));
                    }
                    lex = Lex::Lt;
                    pos += 1;
                }
                Lex::Text => {
                    // Fast path: skip to the next markup.
                    match buf[pos..].iter().position(|&c| c == b'<') {
                        Some(i) => {
                            pos += i + 1;
                            lex = Lex::Lt;
                        }
                        None => pos = len,
                    }
                    // Do not let one huge text run skip the size check.
                    if pos - start > limit {
                        break Err(XmppError::StanzaTooLarge { limit });
                    }
                }
                Lex::Lt => match b {
                    b'/' => {
                        lex = Lex::EndTag;
                        pos += 1;
                    }
                    b'!' => {
                        // Decide on the byte after `<!`.
                        match buf.get(pos + 1) {
                            None => break Ok(Step::NeedMore),
                            Some(b'-') => {
                                lex = Lex::CommentOpen;
                                pos += 2;
                            }
                            Some(b'[') => {
                                if depth == 0 {
                                    break Err(XmppError::Xml(
                                        "CDATA outside of a stanza".to_owned(),
                                    ));
                                }
                                lex = Lex::CDataOpen { n: 0 };
                                pos += 2;
                            }
                            Some(b'D') => break Err(XmppError::Forbidden("DTD (<!DOCTYPE>)")),
                            Some(_) => {
                                break Err(XmppError::Forbidden(
                                    "markup declaration (<!ENTITY>, <!ELEMENT>, ...)",
                                ))
                            }
                        }
                    }
                    b'?' => {
                        if in_prolog && depth == 0 {
                            lex = Lex::PiTarget { n: 0 };
                            pos += 1;
                        } else {
                            break Err(XmppError::Forbidden("processing instruction"));
                        }
                    }
                    // Name start (or garbage quick-xml will reject): re-read
                    // this byte as part of the start tag.
                    _ => {
                        lex = Lex::StartTag {
                            quote: 0,
                            slash: false,
                        }
                    }
                },
                Lex::StartTag { quote, slash } => {
                    if quote != 0 {
                        match buf[pos..].iter().position(|&c| c == quote) {
                            Some(i) => {
                                pos += i + 1;
                                lex = Lex::StartTag {
                                    quote: 0,
                                    slash: false,
                                };
                            }
                            None => pos = len,
                        }
                        continue;
                    }
                    pos += 1;
                    match b {
                        b'"' | b'\'' => {
                            lex = Lex::StartTag {
                                quote: b,
                                slash: false,
                            }
                        }
                        b'/' => {
                            lex = Lex::StartTag {
                                quote: 0,
                                slash: true,
                            }
                        }
                        b'>' => {
                            if depth == 0 && in_prolog {
                                break Ok(Step::Header { empty: slash });
                            }
                            if slash {
                                if depth == 0 {
                                    break Ok(Step::Stanza);
                                }
                            } else {
                                depth += 1;
                                if depth > MAX_DEPTH {
                                    break Err(XmppError::Forbidden("element nesting too deep"));
                                }
                            }
                            lex = Lex::Text;
                        }
                        _ => {
                            if slash {
                                lex = Lex::StartTag {
                                    quote: 0,
                                    slash: false,
                                };
                            }
                        }
                    }
                }
                Lex::EndTag => {
                    match buf[pos..].iter().position(|&c| c == b'>') {
                        Some(i) => pos += i + 1,
                        None => {
                            pos = len;
                            continue;
                        }
                    }
                    if depth == 0 {
                        if in_prolog {
                            break Err(XmppError::Xml(
                                "end tag before the stream header".to_owned(),
                            ));
                        }
                        break Ok(Step::StreamClose);
                    }
                    depth -= 1;
                    if depth == 0 {
                        break Ok(Step::Stanza);
                    }
                    lex = Lex::Text;
                }
                Lex::CommentOpen => {
                    if b != b'-' {
                        break Err(XmppError::Xml("malformed comment".to_owned()));
                    }
                    pos += 1;
                    lex = Lex::Comment { dashes: 0 };
                }
                Lex::Comment { dashes } => {
                    pos += 1;
                    lex = match b {
                        b'-' => Lex::Comment {
                            dashes: (dashes + 1).min(2),
                        },
                        b'>' if dashes >= 2 => {
                            if depth == 0 {
                                break Ok(Step::Skip);
                            }
                            Lex::Text
                        }
                        _ => Lex::Comment { dashes: 0 },
                    };
                }
                Lex::CDataOpen { n } => {
                    const OPEN: &[u8] = b"CDATA[";
                    if OPEN.get(usize::from(n)) != Some(&b) {
                        break Err(XmppError::Xml("malformed CDATA section".to_owned()));
                    }
                    pos += 1;
                    lex = if usize::from(n) + 1 == OPEN.len() {
                        Lex::CData { brackets: 0 }
                    } else {
                        Lex::CDataOpen { n: n + 1 }
                    };
                }
                Lex::CData { brackets } => {
                    pos += 1;
                    lex = match b {
                        b']' => Lex::CData {
                            brackets: (brackets + 1).min(2),
                        },
                        b'>' if brackets >= 2 => Lex::Text,
                        _ => Lex::CData { brackets: 0 },
                    };
                }
                Lex::PiTarget { n } => {
                    if n < 3 {
                        if b"xml"[usize::from(n)] != b {
                            break Err(XmppError::Forbidden("processing instruction"));
                        }
                        lex = Lex::PiTarget { n: n + 1 };
                    } else if is_ws(b) {
                        lex = Lex::Decl { qmark: false };
                    } else {
                        break Err(XmppError::Forbidden("processing instruction"));
                    }
                    pos += 1;
                }
                Lex::Decl { qmark } => {
                    pos += 1;
                    lex = match b {
                        b'?' => Lex::Decl { qmark: true },
                        b'>' if qmark => break Ok(Step::Skip),
                        _ => Lex::Decl { qmark: false },
                    };
                }
            }
        };
        self.scanned += (pos - self.pos) as u64;
        self.pos = pos;
        self.lex = lex;
        self.depth = depth;
        match result {
            // The byte that completed an item was not yet counted.
            Ok(Step::Header { .. } | Step::Stanza | Step::StreamClose | Step::Skip)
                if pos - start > limit =>
            {
                Err(XmppError::StanzaTooLarge { limit })
            }
            other => other,
        }
    }
}

/// XML whitespace (XML 1.0 production `S`).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim_ascii_ws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ws(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ws(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Trim XML whitespace (not Unicode whitespace) from both ends.
fn trim_xml(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

fn utf8(bytes: &[u8]) -> Result<&str, XmppError> {
    std::str::from_utf8(bytes).map_err(|e| XmppError::Xml(format!("invalid UTF-8: {e}")))
}

fn attr_value(a: &quick_xml::events::attributes::Attribute<'_>) -> Result<String, XmppError> {
    a.normalized_value(XmlVersion::Implicit1_0)
        .map(Cow::into_owned)
        .map_err(XmppError::xml)
}

/// Parse the stream header tag (`<stream:stream ...>`, alone).
fn parse_header(text: &str) -> Result<(Event, Vec<NsDecl>, Vec<u8>), XmppError> {
    let mut r = NsReader::from_str(text);
    let start = match r.read_event().map_err(XmppError::xml)? {
        XmlEvent::Start(e) | XmlEvent::Empty(e) => e,
        other => {
            return Err(XmppError::Xml(format!(
                "expected the stream header, got {other:?}"
            )))
        }
    };
    let (res, local) = r.resolver().resolve_element(start.name());
    let ns = resolved_ns(res)?;
    if ns != ns::STREAMS || local.as_ref() != b"stream" {
        return Err(XmppError::Protocol(format!(
            "expected <stream:stream> in {}, got <{}> in {ns:?}",
            ns::STREAMS,
            String::from_utf8_lossy(start.name().as_ref())
        )));
    }
    let (mut id, mut from, mut to) = (None, None, None);
    let mut decls = Vec::new();
    for a in start.attributes() {
        let a = a.map_err(XmppError::xml)?;
        if let Some(p) = a.key.as_namespace_binding() {
            let prefix = match p {
                PrefixDeclaration::Default => None,
                PrefixDeclaration::Named(p) => Some(p.to_vec()),
            };
            decls.push((prefix, attr_value(&a)?.into_bytes()));
            continue;
        }
        match a.key.as_ref() {
            b"id" => id = Some(attr_value(&a)?),
            b"from" => from = Some(attr_value(&a)?),
            b"to" => to = Some(attr_value(&a)?),
            _ => {}
        }
    }
    let root = start.name().as_ref().to_vec();
    Ok((Event::StreamStart { id, from, to }, decls, root))
}

fn resolved_ns(res: ResolveResult<'_>) -> Result<&str, XmppError> {
    match res {
        ResolveResult::Bound(Namespace(n)) => utf8(n),
        ResolveResult::Unbound => Ok(""),
        ResolveResult::Unknown(p) => Err(XmppError::Xml(format!(
            "undeclared namespace prefix {:?}",
            String::from_utf8_lossy(&p)
        ))),
    }
}

/// A parsed element: namespace-resolved name, plain attributes, children and
/// the concatenation of its direct text.
#[derive(Debug, Default)]
struct Element {
    ns: String,
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.ns == ns && c.name == name)
    }

    fn child_text(&self, ns: &str, name: &str) -> Option<String> {
        self.child(ns, name).map(|c| trim_xml(&c.text).to_owned())
    }

    /// First child element in `ns` other than `<text>`: a defined condition
    /// (RFC 6120 §4.9.2, §6.5).
    fn condition(&self, ns: &str) -> Option<&str> {
        self.children
            .iter()
            .find(|c| c.ns == ns && c.name != "text")
            .map(|c| c.name.as_str())
    }
}

fn make_element(r: &NsReader<&[u8]>, e: &BytesStart<'_>) -> Result<Element, XmppError> {
    let (res, local) = r.resolver().resolve_element(e.name());
    let ns = resolved_ns(res)?.to_owned();
    let name = utf8(local.as_ref())?.to_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(XmppError::xml)?;
        if a.key.as_namespace_binding().is_some() {
            continue;
        }
        attrs.push((utf8(a.key.as_ref())?.to_owned(), attr_value(&a)?));
    }
    Ok(Element {
        ns,
        name,
        attrs,
        ..Element::default()
    })
}

/// Parse one complete stanza (a fragment of the stream document).
fn parse_stanza(text: &str, decls: &[NsDecl]) -> Result<Event, XmppError> {
    let mut r = NsReader::from_str(text);
    for (prefix, uri) in decls {
        let p = match prefix {
            None => PrefixDeclaration::Default,
            Some(p) => PrefixDeclaration::Named(p),
        };
        r.resolver_mut()
            .add(p, Namespace(uri))
            .map_err(XmppError::xml)?;
    }
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let ev = r.read_event().map_err(XmppError::xml)?;
        match ev {
            XmlEvent::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmppError::Forbidden("element nesting too deep"));
                }
                let el = make_element(&r, &e)?;
                stack.push(el);
            }
            XmlEvent::Empty(e) => {
                let el = make_element(&r, &e)?;
                attach(&mut stack, &mut root, el)?;
            }
            XmlEvent::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| XmppError::Xml("unbalanced end tag".to_owned()))?;
                attach(&mut stack, &mut root, el)?;
            }
            XmlEvent::Text(t) => {
                let s = t.xml10_content().map_err(XmppError::xml)?;
                push_text(&mut stack, &s)?;
            }
            XmlEvent::CData(c) => {
                let s = c.xml10_content().map_err(XmppError::xml)?;
                push_text(&mut stack, &s)?;
            }
            XmlEvent::GeneralRef(g) => {
                let resolved: Cow<'_, str> = match g.resolve_char_ref().map_err(XmppError::xml)? {
                    Some(c) => Cow::Owned(c.to_string()),
                    None => {
                        let name = g.decode().map_err(XmppError::xml)?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => Cow::Borrowed(s),
                            None => {
                                return Err(XmppError::Xml(format!("undefined entity &{name};")))
                            }
                        }
                    }
                };
                push_text(&mut stack, &resolved)?;
            }
            XmlEvent::Comment(_) => {}
            XmlEvent::Decl(_) | XmlEvent::PI(_) => {
                return Err(XmppError::Forbidden("processing instruction"))
            }
            XmlEvent::DocType(_) => return Err(XmppError::Forbidden("DTD (<!DOCTYPE>)")),
            XmlEvent::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmppError::Xml("unclosed element in stanza".to_owned()));
    }
    let root = root.ok_or_else(|| XmppError::Xml("empty stanza".to_owned()))?;
    Ok(classify(root))
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element) -> Result<(), XmppError> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None if root.is_none() => *root = Some(el),
        None => return Err(XmppError::Xml("more than one root in stanza".to_owned())),
    }
    Ok(())
}

fn push_text(stack: &mut [Element], s: &str) -> Result<(), XmppError> {
    match stack.last_mut() {
        Some(top) => top.text.push_str(s),
        None if trim_xml(s).is_empty() => {}
        None => {
            return Err(XmppError::Xml(
                "character data outside of a stanza".to_owned(),
            ))
        }
    }
    Ok(())
}

/// Stanza namespaces we accept for iq/message (client streams, and server
/// streams for completeness); `""` when a stanza arrives without any.
fn is_stanza_ns(n: &str) -> bool {
    n == ns::CLIENT || n == ns::SERVER || n.is_empty()
}

/// Give a parsed top-level element its meaning.
fn classify(el: Element) -> Event {
    match (el.ns.as_str(), el.name.as_str()) {
        (ns::STREAMS, "features") => {
            let mechanisms = el
                .child(ns::SASL, "mechanisms")
                .map(|m| {
                    m.children
                        .iter()
                        .filter(|c| c.ns == ns::SASL && c.name == "mechanism")
                        .map(|c| trim_xml(&c.text).to_owned())
                        .collect()
                })
                .unwrap_or_default();
            Event::Features(Features {
                mechanisms,
                bind: el.child(ns::BIND, "bind").is_some(),
                session: el.child(ns::SESSION, "session").is_some(),
            })
        }
        (ns::STREAMS, "error") => Event::StreamError {
            condition: el
                .condition(ns::STREAM_ERRORS)
                .unwrap_or("undefined-condition")
                .to_owned(),
            text: el.child_text(ns::STREAM_ERRORS, "text"),
        },
        (ns::SASL, "auth") => Event::Auth {
            mechanism: el.attr("mechanism").unwrap_or_default().to_owned(),
            payload: el
                .text
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect(),
        },
        (ns::SASL, "success") => Event::SaslSuccess,
        (ns::SASL, "failure") => Event::SaslFailure {
            condition: el.condition(ns::SASL).unwrap_or("unspecified").to_owned(),
        },
        (n, "iq") if is_stanza_ns(n) => Event::Iq(Iq {
            id: el.attr("id").map(str::to_owned),
            kind: el.attr("type").unwrap_or_default().to_owned(),
            bind: el.child(ns::BIND, "bind").map(|b| Bind {
                resource: b.child_text(ns::BIND, "resource"),
                jid: b.child_text(ns::BIND, "jid"),
            }),
        }),
        (n, "message") if is_stanza_ns(n) => Event::Message(Message {
            id: el.attr("id").map(str::to_owned),
            from: el.attr("from").map(str::to_owned),
            to: el.attr("to").map(str::to_owned),
            gcm: el.child_text(ns::GCM, "gcm"),
        }),
        _ => Event::Other { name: el.name },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(input: &[u8]) -> Vec<Event> {
        let mut r = StanzaReader::new(4096);
        r.feed(input);
        let mut out = Vec::new();
        while let Some(ev) = r.next_event().unwrap() {
            out.push(ev);
        }
        out
    }

    const HDR: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='x'>";

    #[test]
    fn header_then_message() {
        let mut input = HDR.to_vec();
        input.extend_from_slice(
            b"<message id='1'><gcm xmlns='google:mobile:data'> {&quot;a&quot;:1} </gcm></message>",
        );
        let ev = events(&input);
        assert_eq!(
            ev,
            vec![
                Event::StreamStart {
                    id: Some("x".into()),
                    from: None,
                    to: None
                },
                Event::Message(Message {
                    id: Some("1".into()),
                    gcm: Some("{\"a\":1}".into()),
                    ..Message::default()
                })
            ]
        );
    }

    #[test]
    fn trim_helpers() {
        assert_eq!(trim_ascii_ws(b" \n a b\t"), b"a b");
        assert_eq!(trim_ascii_ws(b"   "), b"");
        assert_eq!(trim_xml("\u{a0} x \r\n"), "\u{a0} x");
    }

    #[test]
    fn quoted_gt_and_slash_in_attributes() {
        let mut input = HDR.to_vec();
        input.extend_from_slice(b"<message id='a>/b' to=\"x/>y\"><body>hi</body></message>");
        let ev = events(&input);
        assert_eq!(
            ev[1],
            Event::Message(Message {
                id: Some("a>/b".into()),
                to: Some("x/>y".into()),
                ..Message::default()
            })
        );
    }

    #[test]
    fn failed_reader_stays_failed_and_drops_input() {
        let mut r = StanzaReader::new(64);
        r.feed(b"<!DOCTYPE x>");
        assert!(matches!(r.next_event(), Err(XmppError::Forbidden(_))));
        r.feed(&[b'a'; 1000]);
        assert_eq!(r.buffered(), 0);
        assert!(r.next_event().is_err());
    }
}
