//! The streaming XMPP reader fed arbitrary bytes split at arbitrary points.
//!
//! Input layout: a flags byte (header to prepend, stanza limit), a count
//! `n`, `n` chunk sizes, then the bytes.
//!
//! Properties checked on every input:
//! * it never panics and never loops forever;
//! * memory stays bounded: once an incomplete item is all that is left, the
//!   reader holds at most `max_stanza_bytes` of it;
//! * split invariance: feeding the bytes in arbitrary chunks gives the same
//!   events (keepalive runs aside, which may split) and the same final error
//!   as feeding them at once (that it failed, not which message it gave).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp::{Event, StanzaReader};

const HEADERS: [&[u8]; 4] = [
    b"",
    b"<stream:stream from=\"fcm.googleapis.com\" id=\"1\" version=\"1.0\" xmlns:stream=\"http://etherx.jabber.org/streams\" xmlns=\"jabber:client\">",
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='x'>",
    b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client' xmlns:data='google:mobile:data'>",
];
const LIMITS: [usize; 4] = [64, 300, 4096, 65536];

#[derive(Debug, PartialEq)]
enum Outcome {
    Event(Event),
    /// The stream failed. Which error is reported may depend on the split
    /// (an over-long item found in one read is "malformed", in many reads
    /// "too large"), so only the fact is compared.
    Error,
}

/// Feeds `chunks` one by one, draining events after each; SASL success
/// restarts the stream as a client would.
fn run(max: usize, chunks: &[&[u8]]) -> Vec<Outcome> {
    let mut r = StanzaReader::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        r.feed(chunk);
        loop {
            match r.next_event() {
                Ok(Some(ev)) => {
                    if ev == Event::SaslSuccess {
                        r.reset();
                    }
                    // Runs of whitespace may be reported in pieces.
                    if ev == Event::Keepalive
                        && out.last() == Some(&Outcome::Event(Event::Keepalive))
                    {
                        continue;
                    }
                    out.push(Outcome::Event(ev));
                }
                Ok(None) => {
                    assert!(
                        r.buffered() <= max,
                        "reader holds {} bytes of an incomplete item, limit {max}",
                        r.buffered()
                    );
                    break;
                }
                Err(_) => {
                    out.push(Outcome::Error);
                    // A failed reader stays failed and drops its input.
                    assert!(r.next_event().is_err());
                    r.feed(b"<message/>");
                    assert_eq!(r.buffered(), 0);
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // Layout: flags, n, n chunk sizes, then the stream bytes.
    let [flags, n, rest @ ..] = data else { return };
    let (sizes, body) = rest.split_at(usize::from(*n).min(rest.len()));
    let header = HEADERS[usize::from(flags & 3)];
    let max = LIMITS[usize::from((flags >> 2) & 3)];
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(body);

    let whole = run(max, &[&bytes]);

    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut rest: &[u8] = &bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = match sizes.get(i) {
            Some(&s) => usize::from(s).max(1),
            None => rest.len(),
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        chunks.push(a);
        rest = b;
        i += 1;
    }
    let split = run(max, &chunks);
    assert_eq!(whole, split, "events depend on how the input was split");
});
