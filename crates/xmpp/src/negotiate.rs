//! Stream negotiation as sans-I/O state machines (RFC 6120 §4.3 features,
//! §6 SASL, §6.4.6 stream restart, §7 resource binding).
//!
//! Both roles consume [`Event`]s from a [`StanzaReader`](crate::StanzaReader)
//! and return [`Action`]s for the driver to carry out, in order. They never
//! touch a socket, so they are tested event by event and against each other.
//!
//! Client (what gimmm does towards CCS):
//!
//! ```text
//! start()            -> header
//! StreamStart        -> (wait)
//! Features(PLAIN)    -> Send(<auth mechanism="PLAIN">)
//! SaslSuccess        -> RestartStream, Send(header)
//! StreamStart        -> (wait)
//! Features(bind)     -> Send(<iq type="set"><bind/></iq>)
//! Iq(result, jid)    -> Ready { jid }
//! ```
//!
//! Server (the emulator's side) is the mirror image; wrong credentials give
//! `Send(<failure><not-authorized/></failure>)`, after which the negotiator is
//! failed ([`ServerNegotiator::failed`]) and any further event yields
//! `Err(AuthFailed)`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;

use crate::reader::{Event, Features, Iq};
use crate::{writer, XmppError};

/// Something the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the peer.
    Send(Vec<u8>),
    /// The stream restarts (after SASL success): call
    /// [`StanzaReader::reset`](crate::StanzaReader::reset) now, before reading
    /// further. The client's new header comes in the following `Send`.
    RestartStream,
    /// Negotiation is complete; the bound full JID.
    Ready {
        /// e.g. `123456789012@fcm.googleapis.com/RESOURCE`.
        jid: String,
    },
}

/// What the client needs to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientParams {
    /// The server's domain, the header's `to` (e.g. `fcm.googleapis.com`).
    pub to: String,
    /// Exactly the SASL PLAIN authcid, e.g. `SENDER_ID@fcm.googleapis.com`
    /// for CCS or a bare localpart for Prosody.
    pub username: String,
    /// The SASL PLAIN password (CCS: the server key). Never printed.
    pub password: String,
    /// Resource to request in the bind; `None` lets the server choose.
    pub resource: Option<String>,
}

impl fmt::Debug for ClientParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientParams")
            .field("to", &self.to)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("resource", &self.resource)
            .finish()
    }
}

/// Id of our bind request.
const BIND_ID: &str = "bind_1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Start,
    AwaitHeader,
    AwaitSaslFeatures,
    AwaitAuthResult,
    AwaitRestartHeader,
    AwaitBindFeatures,
    AwaitBindResult,
    Ready,
}

/// The client side of stream negotiation (SASL PLAIN + bind).
#[derive(Debug)]
pub struct ClientNegotiator {
    params: ClientParams,
    state: ClientState,
}

impl ClientNegotiator {
    /// A negotiator for these credentials.
    pub fn new(params: ClientParams) -> Self {
        ClientNegotiator {
            params,
            state: ClientState::Start,
        }
    }

    /// The opening stream header to send first.
    pub fn start(&mut self) -> Vec<u8> {
        self.state = ClientState::AwaitHeader;
        writer::client_stream_header(&self.params.to).into_bytes()
    }

    /// Whether [`Action::Ready`] was produced.
    pub fn is_ready(&self) -> bool {
        self.state == ClientState::Ready
    }

    /// Feed one event from the server.
    ///
    /// SASL `<failure>` gives `Err(AuthFailed(condition))`, `<stream:error>`
    /// gives `Err(StreamError)`, the server closing the stream `Err(Closed)`;
    /// anything out of order `Err(Protocol)`. Keepalives and unknown stanzas
    /// are ignored.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Action>, XmppError> {
        use ClientState as S;
        match (self.state, event) {
            (_, Event::Keepalive | Event::Other { .. }) => Ok(Vec::new()),
            (_, Event::StreamError { condition, text }) => {
                Err(XmppError::StreamError { condition, text })
            }
            (S::Ready, ev) => Err(unexpected("after negotiation", &ev)),
            (_, Event::StreamEnd) => Err(XmppError::Closed),
            (S::AwaitHeader, Event::StreamStart { .. }) => {
                self.state = S::AwaitSaslFeatures;
                Ok(Vec::new())
            }
            (S::AwaitSaslFeatures, Event::Features(Features { mechanisms, .. })) => {
                if !mechanisms.iter().any(|m| m == "PLAIN") {
                    return Err(XmppError::Protocol(format!(
                        "server does not offer SASL PLAIN (offers {mechanisms:?})"
                    )));
                }
                self.state = S::AwaitAuthResult;
                let auth = writer::auth_plain(&self.params.username, &self.params.password);
                Ok(vec![Action::Send(auth.into_bytes())])
            }
            (S::AwaitAuthResult, Event::SaslSuccess) => {
                self.state = S::AwaitRestartHeader;
                Ok(vec![
                    Action::RestartStream,
                    Action::Send(writer::client_stream_header(&self.params.to).into_bytes()),
                ])
            }
            (S::AwaitAuthResult, Event::SaslFailure { condition }) => {
                Err(XmppError::AuthFailed(condition))
            }
            (S::AwaitRestartHeader, Event::StreamStart { .. }) => {
                self.state = S::AwaitBindFeatures;
                Ok(Vec::new())
            }
            (S::AwaitBindFeatures, Event::Features(f)) => {
                if !f.bind {
                    return Err(XmppError::Protocol(
                        "server does not offer resource binding".to_owned(),
                    ));
                }
                self.state = S::AwaitBindResult;
                let req = writer::bind_request(BIND_ID, self.params.resource.as_deref());
                Ok(vec![Action::Send(req.into_bytes())])
            }
            (S::AwaitBindResult, Event::Iq(iq)) => self.bind_result(iq),
            (_, ev) => Err(unexpected("during negotiation", &ev)),
        }
    }

    fn bind_result(&mut self, iq: Iq) -> Result<Vec<Action>, XmppError> {
        // CCS answers without an id (the seed trace); others echo ours.
        if iq.id.as_deref().is_some_and(|id| id != BIND_ID) {
            return Err(XmppError::Protocol(format!(
                "unexpected iq id {:?} while binding",
                iq.id
            )));
        }
        match iq.kind.as_str() {
            "result" => match iq.bind.and_then(|b| b.jid) {
                Some(jid) if !jid.is_empty() => {
                    self.state = ClientState::Ready;
                    Ok(vec![Action::Ready { jid }])
                }
                _ => Err(XmppError::Protocol("bind result without <jid>".to_owned())),
            },
            "error" => Err(XmppError::Protocol("resource binding refused".to_owned())),
            other => Err(XmppError::Protocol(format!(
                "unexpected iq type {other:?} while binding"
            ))),
        }
    }
}

fn unexpected(when: &str, ev: &Event) -> XmppError {
    let what = match ev {
        Event::StreamStart { .. } => "stream header".to_owned(),
        Event::Features(_) => "stream features".to_owned(),
        Event::Auth { .. } => "<auth>".to_owned(),
        Event::SaslSuccess => "<success>".to_owned(),
        Event::SaslFailure { .. } => "<failure>".to_owned(),
        Event::Iq(iq) => format!("<iq type={:?}>", iq.kind),
        Event::Message(_) => "<message>".to_owned(),
        Event::Keepalive => "keepalive".to_owned(),
        Event::StreamError { .. } => "<stream:error>".to_owned(),
        Event::StreamEnd => "</stream:stream>".to_owned(),
        Event::Other { name } => format!("<{name}>"),
    };
    XmppError::Protocol(format!("unexpected {what} {when}"))
}

/// What the server side needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerParams {
    /// Our domain: the headers' `from` and the JID's domain part.
    pub domain: String,
    /// Stream id for the first header (the restarted stream gets a derived one).
    pub stream_id: String,
}

/// SASL mechanisms the server offers, as CCS did (seed 000).
pub const SERVER_MECHANISMS: &[&str] = &["X-OAUTH2", "X-GOOGLE-TOKEN", "PLAIN"];

type CheckFn = Box<dyn Fn(&str, &str) -> bool + Send + 'static>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerState {
    AwaitHeader,
    AwaitAuth,
    AwaitRestartHeader { authcid: String },
    AwaitBind { authcid: String },
    Ready,
    Failed { condition: String },
}

/// The server side of stream negotiation (offers SASL, checks PLAIN
/// credentials with a closure, binds a resource).
pub struct ServerNegotiator {
    params: ServerParams,
    check: CheckFn,
    state: ServerState,
}

impl fmt::Debug for ServerNegotiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerNegotiator")
            .field("params", &self.params)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

static RESOURCE_COUNTER: AtomicU64 = AtomicU64::new(1);

impl ServerNegotiator {
    /// A negotiator accepting PLAIN credentials for which
    /// `check(authcid, password)` is true.
    pub fn new(params: ServerParams, check: impl Fn(&str, &str) -> bool + Send + 'static) -> Self {
        ServerNegotiator {
            params,
            check: Box::new(check),
            state: ServerState::AwaitHeader,
        }
    }

    /// The SASL condition if authentication failed (the failure has been
    /// handed out as a `Send`; the driver should stop here).
    pub fn failed(&self) -> Option<&str> {
        match &self.state {
            ServerState::Failed { condition } => Some(condition),
            _ => None,
        }
    }

    /// Whether [`Action::Ready`] was produced.
    pub fn is_ready(&self) -> bool {
        self.state == ServerState::Ready
    }

    /// Feed one event from the client.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Action>, XmppError> {
        if let ServerState::Failed { condition } = &self.state {
            return Err(XmppError::AuthFailed(condition.clone()));
        }
        let state = std::mem::replace(&mut self.state, ServerState::AwaitHeader);
        let (next, result) = self.transition(state, event);
        self.state = next;
        result
    }

    fn transition(
        &self,
        state: ServerState,
        event: Event,
    ) -> (ServerState, Result<Vec<Action>, XmppError>) {
        use ServerState as S;
        match (state, event) {
            (s, Event::Keepalive | Event::Other { .. }) => (s, Ok(Vec::new())),
            (s, Event::StreamError { condition, text }) => {
                (s, Err(XmppError::StreamError { condition, text }))
            }
            (S::Ready, ev) => (S::Ready, Err(unexpected("after negotiation", &ev))),
            (s, Event::StreamEnd) => (s, Err(XmppError::Closed)),
            (S::AwaitHeader, Event::StreamStart { .. }) => {
                let mut out =
                    writer::server_stream_header(&self.params.domain, &self.params.stream_id);
                out.push_str(&writer::sasl_features(SERVER_MECHANISMS));
                (S::AwaitAuth, Ok(vec![Action::Send(out.into_bytes())]))
            }
            (S::AwaitAuth, Event::Auth { mechanism, payload }) => {
                match self.check_auth(&mechanism, &payload) {
                    Ok(authcid) => (
                        S::AwaitRestartHeader { authcid },
                        Ok(vec![
                            Action::Send(writer::sasl_success().into_bytes()),
                            Action::RestartStream,
                        ]),
                    ),
                    Err(condition) => (
                        S::Failed {
                            condition: condition.to_owned(),
                        },
                        Ok(vec![Action::Send(
                            writer::sasl_failure(condition).into_bytes(),
                        )]),
                    ),
                }
            }
            (S::AwaitRestartHeader { authcid }, Event::StreamStart { .. }) => {
                let id = format!("{}-1", self.params.stream_id);
                let mut out = writer::server_stream_header(&self.params.domain, &id);
                out.push_str(&writer::bind_features());
                (
                    S::AwaitBind { authcid },
                    Ok(vec![Action::Send(out.into_bytes())]),
                )
            }
            (S::AwaitBind { authcid }, Event::Iq(iq)) if iq.kind == "set" && iq.bind.is_some() => {
                let requested = iq.bind.and_then(|b| b.resource).filter(|r| !r.is_empty());
                let resource = requested.unwrap_or_else(|| {
                    format!("gimmm{}", RESOURCE_COUNTER.fetch_add(1, Ordering::Relaxed))
                });
                let local = authcid.split('@').next().unwrap_or_default();
                let jid = format!("{local}@{}/{resource}", self.params.domain);
                let result = writer::bind_result(iq.id.as_deref().unwrap_or_default(), &jid);
                (
                    S::Ready,
                    Ok(vec![
                        Action::Send(result.into_bytes()),
                        Action::Ready { jid },
                    ]),
                )
            }
            (s, ev) => (s, Err(unexpected("during negotiation", &ev))),
        }
    }

    /// Check an `<auth>`; the authcid on success, the SASL condition otherwise.
    fn check_auth(&self, mechanism: &str, payload: &str) -> Result<String, &'static str> {
        if mechanism != "PLAIN" {
            return Err("invalid-mechanism");
        }
        let raw = if payload == "=" {
            Vec::new()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|_| "incorrect-encoding")?
        };
        let raw = String::from_utf8(raw).map_err(|_| "malformed-request")?;
        let mut parts = raw.split('\0');
        let (Some(_authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed-request");
        };
        if authcid.is_empty() || !(self.check)(authcid, password) {
            return Err("not-authorized");
        }
        Ok(authcid.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::Bind;

    fn params() -> ClientParams {
        ClientParams {
            to: "fcm.googleapis.com".into(),
            username: "123@fcm.googleapis.com".into(),
            password: "s3cret-key".into(),
            resource: None,
        }
    }

    fn header() -> Event {
        Event::StreamStart {
            id: Some("1".into()),
            from: None,
            to: None,
        }
    }

    #[test]
    fn debug_redacts_password() {
        let dbg = format!("{:?}", params());
        assert!(!dbg.contains("s3cret-key"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn client_happy_path() {
        let mut c = ClientNegotiator::new(params());
        let hdr = c.start();
        assert!(String::from_utf8(hdr)
            .unwrap()
            .contains("to=\"fcm.googleapis.com\""));
        assert_eq!(c.handle(header()).unwrap(), vec![]);
        assert_eq!(c.handle(Event::Keepalive).unwrap(), vec![]);
        let a = c
            .handle(Event::Features(Features {
                mechanisms: vec!["X-OAUTH2".into(), "PLAIN".into()],
                ..Features::default()
            }))
            .unwrap();
        assert_eq!(
            a,
            vec![Action::Send(
                writer::auth_plain("123@fcm.googleapis.com", "s3cret-key").into_bytes()
            )]
        );
        let a = c.handle(Event::SaslSuccess).unwrap();
        assert_eq!(a[0], Action::RestartStream);
        assert!(matches!(&a[1], Action::Send(h) if h.starts_with(b"<stream:stream")));
        assert_eq!(c.handle(header()).unwrap(), vec![]);
        let a = c
            .handle(Event::Features(Features {
                bind: true,
                session: true,
                ..Features::default()
            }))
            .unwrap();
        assert!(matches!(&a[0], Action::Send(b) if b.starts_with(b"<iq type=\"set\"")));
        assert!(!c.is_ready());
        let a = c
            .handle(Event::Iq(Iq {
                id: None,
                kind: "result".into(),
                bind: Some(Bind {
                    resource: None,
                    jid: Some("123@fcm.googleapis.com/R".into()),
                }),
            }))
            .unwrap();
        assert_eq!(
            a,
            vec![Action::Ready {
                jid: "123@fcm.googleapis.com/R".into()
            }]
        );
        assert!(c.is_ready());
    }

    #[test]
    fn client_errors() {
        let mut c = ClientNegotiator::new(params());
        c.start();
        c.handle(header()).unwrap();
        let err = c
            .handle(Event::Features(Features {
                mechanisms: vec!["SCRAM-SHA-1".into()],
                ..Features::default()
            }))
            .unwrap_err();
        assert!(matches!(err, XmppError::Protocol(_)), "{err}");

        let mut c = ClientNegotiator::new(params());
        c.start();
        c.handle(header()).unwrap();
        c.handle(Event::Features(Features {
            mechanisms: vec!["PLAIN".into()],
            ..Features::default()
        }))
        .unwrap();
        let err = c
            .handle(Event::SaslFailure {
                condition: "not-authorized".into(),
            })
            .unwrap_err();
        assert!(matches!(&err, XmppError::AuthFailed(c) if c == "not-authorized"));
        assert!(!err.to_string().contains("s3cret"));

        let mut c = ClientNegotiator::new(params());
        c.start();
        let err = c
            .handle(Event::StreamError {
                condition: "host-unknown".into(),
                text: None,
            })
            .unwrap_err();
        assert!(matches!(err, XmppError::StreamError { .. }));

        let mut c = ClientNegotiator::new(params());
        c.start();
        assert!(matches!(
            c.handle(Event::SaslSuccess),
            Err(XmppError::Protocol(_))
        ));
        let mut c = ClientNegotiator::new(params());
        c.start();
        assert!(matches!(c.handle(Event::StreamEnd), Err(XmppError::Closed)));
    }

    fn server(ok: bool) -> ServerNegotiator {
        ServerNegotiator::new(
            ServerParams {
                domain: "fcm.googleapis.com".into(),
                stream_id: "S1".into(),
            },
            move |u, p| ok && u == "123@fcm.googleapis.com" && p == "s3cret-key",
        )
    }

    fn auth(user: &str, pw: &str) -> Event {
        let raw = format!("\0{user}\0{pw}");
        Event::Auth {
            mechanism: "PLAIN".into(),
            payload: base64::engine::general_purpose::STANDARD.encode(raw),
        }
    }

    #[test]
    fn server_happy_path_and_jid() {
        let mut s = server(true);
        let a = s.handle(header()).unwrap();
        let Action::Send(b) = &a[0] else { panic!() };
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(text.contains("<mechanism>PLAIN</mechanism>"), "{text}");
        let a = s
            .handle(auth("123@fcm.googleapis.com", "s3cret-key"))
            .unwrap();
        assert_eq!(
            a,
            vec![
                Action::Send(writer::sasl_success().into_bytes()),
                Action::RestartStream
            ]
        );
        let a = s.handle(header()).unwrap();
        let Action::Send(b) = &a[0] else { panic!() };
        assert!(String::from_utf8(b.clone()).unwrap().contains("xmpp-bind"));
        let a = s
            .handle(Event::Iq(Iq {
                id: Some("b".into()),
                kind: "set".into(),
                bind: Some(Bind {
                    resource: Some("res".into()),
                    jid: None,
                }),
            }))
            .unwrap();
        assert_eq!(
            a[1],
            Action::Ready {
                jid: "123@fcm.googleapis.com/res".into()
            }
        );
        assert!(s.is_ready());
    }

    #[test]
    fn server_rejects_bad_credentials_and_mechanisms() {
        let mut s = server(true);
        s.handle(header()).unwrap();
        let a = s.handle(auth("123@fcm.googleapis.com", "wrong")).unwrap();
        assert_eq!(
            a,
            vec![Action::Send(
                writer::sasl_failure("not-authorized").into_bytes()
            )]
        );
        assert_eq!(s.failed(), Some("not-authorized"));
        assert!(matches!(
            s.handle(Event::StreamEnd),
            Err(XmppError::AuthFailed(_))
        ));

        let mut s = server(true);
        s.handle(header()).unwrap();
        s.handle(Event::Auth {
            mechanism: "X-OAUTH2".into(),
            payload: String::new(),
        })
        .unwrap();
        assert_eq!(s.failed(), Some("invalid-mechanism"));

        let mut s = server(true);
        s.handle(header()).unwrap();
        s.handle(Event::Auth {
            mechanism: "PLAIN".into(),
            payload: "!!!".into(),
        })
        .unwrap();
        assert_eq!(s.failed(), Some("incorrect-encoding"));

        let mut s = server(true);
        s.handle(header()).unwrap();
        s.handle(Event::Auth {
            mechanism: "PLAIN".into(),
            payload: base64::engine::general_purpose::STANDARD.encode("no-nuls"),
        })
        .unwrap();
        assert_eq!(s.failed(), Some("malformed-request"));
    }

    #[test]
    fn server_generates_resource_with_localpart() {
        let mut s = ServerNegotiator::new(
            ServerParams {
                domain: "example.org".into(),
                stream_id: "S".into(),
            },
            |_, _| true,
        );
        s.handle(header()).unwrap();
        s.handle(auth("sender@elsewhere", "x")).unwrap();
        s.handle(header()).unwrap();
        let a = s
            .handle(Event::Iq(Iq {
                id: None,
                kind: "set".into(),
                bind: Some(Bind::default()),
            }))
            .unwrap();
        let Action::Ready { jid } = &a[1] else {
            panic!()
        };
        assert!(jid.starts_with("sender@example.org/gimmm"), "{jid}");
        let Action::Send(b) = &a[0] else { panic!() };
        assert!(String::from_utf8(b.clone())
            .unwrap()
            .starts_with("<iq type=\"result\"><bind"));
    }
}
