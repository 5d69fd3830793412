//! XML namespace names used on an XMPP client stream (RFC 6120 §4.8, §6,
//! §7; RFC 3921 §3 for the legacy session feature; FCM's `google:mobile:data`).

/// The stream namespace, bound to the `stream` prefix (RFC 6120 §4.8.1).
pub const STREAMS: &str = "http://etherx.jabber.org/streams";
/// The default content namespace of a client stream (RFC 6120 §4.8.3).
pub const CLIENT: &str = "jabber:client";
/// The default content namespace of a server-to-server stream.
pub const SERVER: &str = "jabber:server";
/// SASL negotiation elements (RFC 6120 §6.4).
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Resource binding (RFC 6120 §7).
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// Legacy session establishment (RFC 3921 §3).
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// Stream error conditions (RFC 6120 §4.9.3).
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// FCM's payload element `<gcm>`.
pub const GCM: &str = "google:mobile:data";
