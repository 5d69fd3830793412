//! The negotiation state machines (client and server role) fed arbitrary
//! input: either raw bytes through a `StanzaReader` (the way the links and
//! the emulator drive them) or arbitrary sequences of reader events.
//!
//! Properties: never panics; the password never appears in an error; a
//! server reaches `Ready` only after its credential check accepted; a client
//! reaches `Ready` at most once and only with a non-empty JID; after an error
//! or `Ready`, nothing but keepalives/unknown stanzas is accepted silently.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use xmpp::reader::{Bind, Features, Iq, Message};
use xmpp::{
    Action, ClientNegotiator, ClientParams, Event, ServerNegotiator, ServerParams, StanzaReader,
};

const PASSWORD: &str = "s3cret-server-key";
const USER: &str = "123456789012@fcm.googleapis.com";

#[derive(Arbitrary, Debug)]
enum FEvent {
    StreamStart {
        id: Option<String>,
        from: Option<String>,
        to: Option<String>,
    },
    Features {
        mechanisms: Vec<String>,
        plain: bool,
        bind: bool,
        session: bool,
    },
    Auth {
        mechanism: String,
        payload: String,
    },
    AuthPlain {
        authzid: String,
        authcid: String,
        password: String,
        good: bool,
    },
    SaslSuccess,
    SaslFailure {
        condition: String,
    },
    Iq {
        id: Option<String>,
        kind: u8,
        bind: bool,
        resource: Option<String>,
        jid: Option<String>,
    },
    Message {
        id: Option<String>,
        gcm: Option<String>,
    },
    Keepalive,
    StreamError {
        condition: String,
        text: Option<String>,
    },
    StreamEnd,
    Other {
        name: String,
    },
}

fn b64(raw: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in raw.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

impl FEvent {
    fn into_event(self) -> Event {
        match self {
            FEvent::StreamStart { id, from, to } => Event::StreamStart { id, from, to },
            FEvent::Features {
                mut mechanisms,
                plain,
                bind,
                session,
            } => {
                if plain {
                    mechanisms.push("PLAIN".into());
                }
                Event::Features(Features {
                    mechanisms,
                    bind,
                    session,
                })
            }
            FEvent::Auth { mechanism, payload } => Event::Auth { mechanism, payload },
            FEvent::AuthPlain {
                authzid,
                authcid,
                password,
                good,
            } => {
                let (user, pw) = if good {
                    (USER.to_string(), PASSWORD.to_string())
                } else {
                    (authcid, password)
                };
                let raw = format!("{authzid}\0{user}\0{pw}");
                Event::Auth {
                    mechanism: "PLAIN".into(),
                    payload: b64(raw.as_bytes()),
                }
            }
            FEvent::SaslSuccess => Event::SaslSuccess,
            FEvent::SaslFailure { condition } => Event::SaslFailure { condition },
            FEvent::Iq {
                id,
                kind,
                bind,
                resource,
                jid,
            } => Event::Iq(Iq {
                id,
                kind: ["set", "result", "error", "get", ""][usize::from(kind % 5)].to_string(),
                bind: bind.then_some(Bind { resource, jid }),
            }),
            FEvent::Message { id, gcm } => Event::Message(Message {
                id,
                gcm,
                ..Message::default()
            }),
            FEvent::Keepalive => Event::Keepalive,
            FEvent::StreamError { condition, text } => Event::StreamError { condition, text },
            FEvent::StreamEnd => Event::StreamEnd,
            FEvent::Other { name } => Event::Other { name },
        }
    }
}

/// Which role, and the state needed to check it.
enum Role {
    Client {
        neg: ClientNegotiator,
        ready: bool,
    },
    Server {
        neg: ServerNegotiator,
        accepted: Arc<AtomicBool>,
        ready: bool,
    },
}

impl Role {
    fn new(server: bool) -> Role {
        if server {
            let accepted = Arc::new(AtomicBool::new(false));
            let flag = accepted.clone();
            let neg = ServerNegotiator::new(
                ServerParams {
                    domain: "fcm.googleapis.com".into(),
                    stream_id: "S1".into(),
                },
                move |user, pw| {
                    let ok = user == USER && pw == PASSWORD;
                    if ok {
                        flag.store(true, Ordering::SeqCst);
                    }
                    ok
                },
            );
            Role::Server {
                neg,
                accepted,
                ready: false,
            }
        } else {
            let mut neg = ClientNegotiator::new(ClientParams {
                to: "fcm.googleapis.com".into(),
                username: USER.into(),
                password: PASSWORD.into(),
                resource: None,
            });
            let header = neg.start();
            assert!(header.starts_with(b"<stream:stream"));
            Role::Client { neg, ready: false }
        }
    }

    /// Feeds one event; `Ok(restart)` or `Err(())` when the negotiator failed.
    fn handle(&mut self, ev: Event) -> Result<bool, ()> {
        let res = match self {
            Role::Client { neg, .. } => neg.handle(ev),
            Role::Server { neg, .. } => neg.handle(ev),
        };
        let actions = match res {
            Ok(a) => a,
            Err(e) => {
                let text = format!("{e} {e:?}");
                assert!(
                    !text.contains(PASSWORD),
                    "the password leaked into an error: {text}"
                );
                return Err(());
            }
        };
        let mut restart = false;
        for a in actions {
            match a {
                Action::Send(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    assert!(
                        !text.contains(PASSWORD),
                        "the password is only sent base64-encoded"
                    );
                }
                Action::RestartStream => restart = true,
                Action::Ready { jid } => {
                    assert!(!jid.is_empty());
                    match self {
                        Role::Client { neg, ready } => {
                            assert!(!*ready, "Ready twice");
                            assert!(neg.is_ready());
                            *ready = true;
                        }
                        Role::Server {
                            neg,
                            accepted,
                            ready,
                        } => {
                            assert!(!*ready, "Ready twice");
                            assert!(
                                accepted.load(Ordering::SeqCst),
                                "Ready without accepted credentials"
                            );
                            assert!(neg.is_ready() && neg.failed().is_none());
                            *ready = true;
                        }
                    }
                }
            }
        }
        if let Role::Server { neg, .. } = self {
            if neg.failed().is_some() {
                return Err(());
            }
        }
        Ok(restart)
    }
}

/// Layout: `n`, `n` chunk sizes, then the bytes the peer sends.
fn bytes_mode(server: bool, input: &[u8]) {
    let [n, rest @ ..] = input else { return };
    let (sizes, data) = rest.split_at(usize::from(*n).min(rest.len()));
    let mut role = Role::new(server);
    let mut reader = StanzaReader::new(4096);
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i)
            .map_or(rest.len(), |&s| usize::from(s).max(1))
            .min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        i += 1;
        reader.feed(chunk);
        loop {
            match reader.next_event() {
                Ok(Some(ev)) => match role.handle(ev) {
                    Ok(true) => reader.reset(),
                    Ok(false) => {}
                    Err(()) => return,
                },
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn event_mode(server: bool, u: &mut Unstructured<'_>) {
    let Ok(events) = Vec::<FEvent>::arbitrary(u) else {
        return;
    };
    let mut role = Role::new(server);
    for ev in events {
        if role.handle(ev.into_event()).is_err() {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => bytes_mode(false, rest),
        1 => bytes_mode(true, rest),
        2 => event_mode(false, &mut Unstructured::new(rest)),
        _ => event_mode(true, &mut Unstructured::new(rest)),
    }
});
