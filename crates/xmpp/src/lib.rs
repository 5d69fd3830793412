//! XMPP stream layer for gimmm's FCM (CCS) links, after RFC 6120.
//!
//! An XMPP session is one long XML document per direction (RFC 6120 §4): a
//! `<stream:stream>` header, then a sequence of top-level children called
//! *stanzas*, then `</stream:stream>`. Connecting to FCM's CCS goes:
//!
//! 1. TLS from the first byte ([`connect::DirectTls`]; CCS has no STARTTLS).
//! 2. Client sends a stream header, server answers with its header and
//!    `<stream:features>` offering SASL mechanisms (RFC 6120 §4.3).
//! 3. SASL PLAIN `\0username\0password` (RFC 6120 §6, RFC 4616); `<success/>`
//!    or `<failure/>`.
//! 4. On success both sides *restart* the stream (RFC 6120 §6.4.6): new
//!    headers, new features (now resource binding).
//! 5. Resource binding by `<iq type="set"><bind/></iq>` (RFC 6120 §7); the
//!    result carries the full JID and the session is ready.
//! 6. `<message>` stanzas carrying `<gcm xmlns="google:mobile:data">JSON</gcm>`
//!    flow both ways; whitespace between stanzas is a keepalive (§4.6.1).
//!
//! The crate is split the way rustls and mini-redis split things:
//! - [`reader`]: sans-I/O framing: bytes in, whole stanzas out ([`reader::Event`]).
//! - [`writer`]: functions producing the XML we send.
//! - [`negotiate`]: steps 2–5 as pure state machines (client and server role).
//! - [`connect`]: transports behind the [`connect::Connector`] trait.
//! - [`stream`]: [`stream::XmppStream`], the thin async driver tying it together.

#![warn(missing_docs)]

pub mod connect;
mod error;
pub mod negotiate;
pub mod ns;
pub mod reader;
pub mod stream;
pub mod writer;

pub use error::XmppError;
pub use negotiate::{Action, ClientNegotiator, ClientParams, ServerNegotiator, ServerParams};
pub use reader::{Bind, Event, Features, Iq, Message, StanzaReader};
pub use stream::XmppStream;

/// Re-export of the TLS library, so callers can build configs without
/// depending on it directly (same version as used here).
pub use rustls;
/// Re-export of the async TLS adapter (for `TlsAcceptor` on the server side).
pub use tokio_rustls;

/// A sensible default for [`StanzaReader::new`]: CCS messages are at most 4 KiB
/// of payload, so 64 KiB leaves room for escaping and envelope.
pub const DEFAULT_MAX_STANZA_BYTES: usize = 64 * 1024;
