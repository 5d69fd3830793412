//! Test client: the `xmpp` crate over real TLS against an [`Emulator`].
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::time::Duration;

use emulator::{Emulator, EmulatorConfig, Faults};
use fcm::Inbound;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xmpp::connect::{BoxStream, Connector, DirectTls};
use xmpp::{ClientParams, Event, XmppError, XmppStream};

/// Every wait in the tests is bounded by this.
pub const T: Duration = Duration::from_secs(10);

pub async fn start(faults: Faults) -> Emulator {
    start_with(EmulatorConfig {
        faults,
        ..EmulatorConfig::default()
    })
    .await
}

pub async fn start_with(cfg: EmulatorConfig) -> Emulator {
    Emulator::start(cfg).await.unwrap()
}

pub struct Client {
    pub xs: XmppStream<BoxStream>,
    pub jid: String,
}

pub async fn try_connect_as(
    emu: &Emulator,
    username: &str,
    password: &str,
) -> Result<Client, XmppError> {
    let tls = DirectTls::with_ca_pem(emu.ca_pem().as_bytes())?;
    let io = tokio::time::timeout(T, tls.connect("localhost", emu.addr().port()))
        .await
        .map_err(|_| XmppError::Protocol("connect timeout".into()))??;
    let mut xs = XmppStream::new(io, 1 << 20);
    let params = ClientParams {
        to: "fcm.googleapis.com".into(),
        username: username.into(),
        password: password.into(),
        resource: None,
    };
    let jid = tokio::time::timeout(T, xs.negotiate_client(params))
        .await
        .map_err(|_| XmppError::Protocol("negotiation timeout".into()))??;
    Ok(Client { xs, jid })
}

pub async fn connect(emu: &Emulator) -> Client {
    let user = format!("{}@fcm.googleapis.com", emu.sender_id());
    try_connect_as(emu, &user, emu.server_key()).await.unwrap()
}

/// A downstream message to a token.
pub fn msg(id: &str, to: &str) -> String {
    serde_json::json!({"to": to, "message_id": id, "data": {"k": "v"}}).to_string()
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("jid", &self.jid).finish()
    }
}

impl Client {
    pub async fn send(&mut self, json: &str) {
        self.xs
            .send(xmpp::writer::gcm_message(None, json).as_bytes())
            .await
            .unwrap();
    }

    /// Send several messages in one write.
    pub async fn send_many(&mut self, jsons: &[String]) {
        let mut buf = Vec::new();
        for j in jsons {
            xmpp::writer::append_gcm_message(&mut buf, None, j);
        }
        self.xs.send(&buf).await.unwrap();
    }

    /// Next event other than a keepalive.
    pub async fn event(&mut self) -> Result<Event, XmppError> {
        loop {
            let ev = tokio::time::timeout(T, self.xs.next_event())
                .await
                .expect("timed out waiting for an event")?;
            if ev != Event::Keepalive {
                return Ok(ev);
            }
        }
    }

    /// Raw JSON of the next `<gcm>` message.
    pub async fn json(&mut self) -> Value {
        match self.event().await.unwrap() {
            Event::Message(m) => serde_json::from_str(m.gcm.as_deref().unwrap()).unwrap(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub async fn recv(&mut self) -> Inbound {
        let v = self.json().await;
        fcm::parse_inbound(&v.to_string()).unwrap()
    }

    pub async fn expect_ack(&mut self, id: &str) -> fcm::Ack {
        match self.recv().await {
            Inbound::Ack(a) => {
                assert_eq!(a.message_id, id);
                a
            }
            other => panic!("expected ack for {id}, got {other:?}"),
        }
    }

    pub async fn expect_nack(&mut self, id: &str) -> fcm::Nack {
        match self.recv().await {
            Inbound::Nack(n) => {
                assert_eq!(n.message_id, id);
                n
            }
            other => panic!("expected nack for {id}, got {other:?}"),
        }
    }

    /// App-server ack (table 6).
    pub async fn ack(&mut self, to: &str, id: &str) {
        self.send(&fcm::app_ack_json(to, id)).await;
    }

    /// End our stream politely and close.
    pub async fn close(mut self) {
        let _ = self.xs.send(xmpp::writer::STREAM_END.as_bytes()).await;
        let (mut io, _) = self.xs.into_parts();
        let _ = io.shutdown().await;
    }
}

/// Minimal HTTP/1.1 request; returns (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}
