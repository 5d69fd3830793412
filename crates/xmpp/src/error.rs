//! Errors of the XMPP stream layer (RFC 6120 §4.9 stream errors, §6.5 SASL
//! failures, plus transport and framing errors of our own).

use std::fmt;

/// Everything that can go wrong in the XMPP layer.
///
/// No variant ever carries a password: SASL failures only carry the condition
/// the server named.
#[derive(Debug, thiserror::Error)]
pub enum XmppError {
    /// The peer sent malformed XML or invalid UTF-8.
    #[error("malformed XML: {0}")]
    Xml(String),
    /// One stanza (or the stream header) exceeded the reader's size limit.
    #[error("stanza exceeds the limit of {limit} bytes")]
    StanzaTooLarge {
        /// The configured `max_stanza_bytes`.
        limit: usize,
    },
    /// The peer used an XML construct XMPP forbids (RFC 6120 §11.1): a DTD,
    /// an entity declaration, a processing instruction, absurd nesting.
    #[error("forbidden XML construct: {0}")]
    Forbidden(&'static str),
    /// SASL authentication failed; the payload is the SASL condition
    /// (e.g. `not-authorized`).
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The peer broke the negotiation protocol (unexpected stanza, missing
    /// mechanism, failed bind, ...).
    #[error("XMPP protocol violation: {0}")]
    Protocol(String),
    /// The peer sent `<stream:error>` (RFC 6120 §4.9); the stream is dead.
    #[error("stream error from peer: {}", StreamErrorDisplay(condition, text.as_deref()))]
    StreamError {
        /// The defined condition element name, e.g. `host-unknown`.
        condition: String,
        /// The optional human-readable `<text>`.
        text: Option<String>,
    },
    /// Socket I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration or handshake failed.
    #[error("TLS error: {0}")]
    Tls(String),
    /// The peer closed the connection (EOF).
    #[error("connection closed")]
    Closed,
}

struct StreamErrorDisplay<'a>(&'a str, Option<&'a str>);

impl fmt::Display for StreamErrorDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(text) => write!(f, "{} ({})", self.0, text),
            None => f.write_str(self.0),
        }
    }
}

impl XmppError {
    pub(crate) fn xml(e: impl fmt::Display) -> Self {
        XmppError::Xml(e.to_string())
    }
}
