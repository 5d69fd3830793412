//! Client negotiator against server negotiator: over `tokio::io::duplex`
//! (including a tiny pipe that splits every write) and over real TLS sockets
//! on 127.0.0.1 with an rcgen certificate.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use xmpp::connect::{server_config, Connector, DirectTls, PlainTcp};
use xmpp::reader::{Event, Message};
use xmpp::tokio_rustls::TlsAcceptor;
use xmpp::{writer, ClientParams, ServerParams, XmppError, XmppStream};

const SENDER: &str = "123456789012";
const KEY: &str = "emulator-key";
const LIMIT: usize = xmpp::DEFAULT_MAX_STANZA_BYTES;

fn client_params(password: &str) -> ClientParams {
    ClientParams {
        to: "fcm.googleapis.com".into(),
        username: format!("{SENDER}@fcm.googleapis.com"),
        password: password.into(),
        resource: None,
    }
}

fn server_params() -> ServerParams {
    ServerParams {
        domain: "fcm.googleapis.com".into(),
        stream_id: "A89EBEF93CBB12CF".into(),
    }
}

fn check(user: &str, pw: &str) -> bool {
    user == format!("{SENDER}@fcm.googleapis.com") && pw == KEY
}

async fn server_side<S>(io: S) -> Result<(String, XmppStream<S>), XmppError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut s = XmppStream::new(io, LIMIT);
    let jid = s.negotiate_server(server_params(), check).await?;
    Ok((jid, s))
}

async fn client_side<S>(io: S, password: &str) -> Result<(String, XmppStream<S>), XmppError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = XmppStream::new(io, LIMIT);
    let jid = c.negotiate_client(client_params(password)).await?;
    Ok((jid, c))
}

/// After negotiation: a downstream message, an ack back with the prefixed
/// form, keepalives, and a clean close. Both sides run concurrently (a tiny
/// pipe blocks a writer until the other side reads).
async fn exchange<A, B>(client: XmppStream<A>, mut server: XmppStream<B>)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let json = r#"{"to":"tok<&>","message_id":"m1","data":{"k":"v"}}"#;
    let ack = r#"{"from":"tok<&>","message_id":"m1","message_type":"ack"}"#;
    let client_side = async move {
        let mut client = client;
        let mut out = Vec::new();
        writer::append_gcm_message(&mut out, Some("m1"), json);
        client.send(&out).await.unwrap();
        client.send(writer::KEEPALIVE).await.unwrap();
        // The reader may be carried on after into_parts.
        let (io, reader) = client.into_parts();
        let mut client = XmppStream::from_parts(io, reader);
        let mut got = client.next_event().await.unwrap();
        while got == Event::Keepalive {
            got = client.next_event().await.unwrap();
        }
        assert_eq!(
            got,
            Event::Message(Message {
                gcm: Some(ack.into()),
                ..Message::default()
            })
        );
        assert_eq!(client.next_event().await.unwrap(), Event::StreamEnd);
    };
    let server_side = async move {
        assert_eq!(
            server.next_event().await.unwrap(),
            Event::Message(Message {
                id: Some("m1".into()),
                gcm: Some(json.into()),
                ..Message::default()
            })
        );
        assert_eq!(server.next_event().await.unwrap(), Event::Keepalive);
        server
            .send(writer::gcm_message_prefixed(None, ack).as_bytes())
            .await
            .unwrap();
        server.send(writer::STREAM_END.as_bytes()).await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(client_side, server_side)
    })
    .await
    .unwrap();
}

async fn negotiate_pair<A, B>(
    a: A,
    b: B,
    password: &str,
) -> (
    Result<(String, XmppStream<A>), XmppError>,
    Result<(String, XmppStream<B>), XmppError>,
)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server = tokio::spawn(server_side(b));
    let client = client_side(a, password).await;
    let server = server.await.unwrap();
    (client, server)
}

#[tokio::test]
async fn duplex_success() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (client, server) = tokio::time::timeout(Duration::from_secs(10), negotiate_pair(a, b, KEY))
        .await
        .unwrap();
    let (cjid, c) = client.unwrap();
    let (sjid, s) = server.unwrap();
    assert_eq!(cjid, sjid);
    assert!(
        cjid.starts_with("123456789012@fcm.googleapis.com/"),
        "{cjid}"
    );
    exchange(c, s).await;
}

#[tokio::test]
async fn duplex_with_tiny_pipe_splits_everything() {
    // 3-byte pipe: every stanza arrives in many reads.
    let (a, b) = tokio::io::duplex(3);
    let (client, server) = tokio::time::timeout(Duration::from_secs(10), negotiate_pair(a, b, KEY))
        .await
        .unwrap();
    let (cjid, c) = client.unwrap();
    let (sjid, s) = server.unwrap();
    assert_eq!(cjid, sjid);
    exchange(c, s).await;
}

#[tokio::test]
async fn duplex_wrong_password() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (client, server) = tokio::time::timeout(
        Duration::from_secs(10),
        negotiate_pair(a, b, "wrong-password"),
    )
    .await
    .unwrap();
    let err = client.err().unwrap();
    assert!(
        matches!(&err, XmppError::AuthFailed(c) if c == "not-authorized"),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong-password"));
    assert!(!format!("{err:?}").contains("wrong-password"));
    let err = server.err().unwrap();
    assert!(
        matches!(&err, XmppError::AuthFailed(c) if c == "not-authorized"),
        "{err}"
    );
}

#[tokio::test]
async fn client_sees_stream_error_and_eof() {
    let (a, mut b) = tokio::io::duplex(4096);
    let client = tokio::spawn(client_side(a, KEY));
    b.write_all(
        format!(
            "{}{}{}",
            writer::server_stream_header("fcm.googleapis.com", "x"),
            writer::stream_error_with_text("host-unknown", "no such host"),
            writer::STREAM_END
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let err = client.await.unwrap().err().unwrap();
    assert!(
        matches!(&err, XmppError::StreamError { condition, text } if condition == "host-unknown" && text.as_deref() == Some("no such host")),
        "{err}"
    );

    let (a, b) = tokio::io::duplex(4096);
    drop(b);
    let err = client_side(a, KEY).await.err().unwrap();
    assert!(matches!(err, XmppError::Closed | XmppError::Io(_)), "{err}");
}

#[tokio::test]
async fn client_handles_server_keepalives_and_xml_declarations() {
    // A hand-written server that behaves like Prosody: XML declarations,
    // extra features, whitespace everywhere.
    let (a, mut b) = tokio::io::duplex(4096);
    let client = tokio::spawn(client_side(a, KEY));
    let mut srv = XmppStream::new(&mut b, LIMIT);
    assert!(matches!(
        srv.next_event().await.unwrap(),
        Event::StreamStart { .. }
    ));
    srv.send(concat!(
        "<?xml version='1.0'?>\n<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' id='a' xmlns='jabber:client' version='1.0' from='fcm.googleapis.com'>",
        " <stream:features><register xmlns='http://jabber.org/features/iq-register'/>",
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features> ",
    ).as_bytes())
    .await
    .unwrap();
    let ev = srv.next_event().await.unwrap();
    assert!(
        matches!(ev, Event::Auth { ref mechanism, .. } if mechanism == "PLAIN"),
        "{ev:?}"
    );
    srv.send(writer::sasl_success().as_bytes()).await.unwrap();
    srv.reader_mut().reset();
    assert!(matches!(
        srv.next_event().await.unwrap(),
        Event::StreamStart { .. }
    ));
    srv.send(concat!(
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' id='b' xmlns='jabber:client' version='1.0' from='fcm.googleapis.com'>",
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session><sm xmlns='urn:xmpp:sm:3'/></stream:features>\n",
    ).as_bytes())
    .await
    .unwrap();
    let Event::Iq(iq) = srv.next_event().await.unwrap() else {
        panic!()
    };
    assert_eq!(iq.kind, "set");
    srv.send(b" \n").await.unwrap();
    srv.send(
        writer::bind_result(
            iq.id.as_deref().unwrap(),
            "123456789012@fcm.googleapis.com/x",
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (jid, _) = client.await.unwrap().unwrap();
    assert_eq!(jid, "123456789012@fcm.googleapis.com/x");
}

#[tokio::test]
async fn server_refuses_oversized_stanza() {
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut s = XmppStream::new(b, 512);
        s.negotiate_server(server_params(), check).await
    });
    a.write_all(writer::client_stream_header("fcm.googleapis.com").as_bytes())
        .await
        .unwrap();
    a.write_all(b"<").await.unwrap();
    a.write_all(&vec![b'a'; 4096]).await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(err, XmppError::StanzaTooLarge { limit: 512 }),
        "{err}"
    );
}

// ---- TLS -------------------------------------------------------------------------

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a leaf for `localhost` / 127.0.0.1 signed by it (what the
/// emulator does).
fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gimmm test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// Accept one TLS connection and run the server negotiation on it.
async fn tls_server(pki: &Pki) -> (u16, tokio::task::JoinHandle<Result<String, XmppError>>) {
    let config = server_config(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let tls = TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map_err(|e| XmppError::Tls(e.to_string()))?;
        let mut s = XmppStream::new(tls, LIMIT);
        let jid = s.negotiate_server(server_params(), check).await?;
        // answer one message then close
        let ev = s.next_event().await?;
        assert!(matches!(ev, Event::Message(_)));
        s.send(writer::STREAM_END.as_bytes()).await?;
        Ok(jid)
    });
    (port, task)
}

async fn tls_roundtrip(
    connector: &dyn Connector,
    host: &str,
    port: u16,
) -> Result<String, XmppError> {
    let io = connector.connect(host, port).await?;
    let mut c = XmppStream::new(io, LIMIT);
    let jid = c.negotiate_client(client_params(KEY)).await?;
    c.send(writer::gcm_message(Some("1"), "{}").as_bytes())
        .await?;
    assert_eq!(c.next_event().await?, Event::StreamEnd);
    Ok(jid)
}

#[tokio::test]
async fn tls_on_loopback_with_ca_pem() {
    let pki = pki();
    let connector = DirectTls::with_ca_pem(pki.ca_pem.as_bytes()).unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let (port, server) = tls_server(&pki).await;
        let jid = tokio::time::timeout(
            Duration::from_secs(10),
            tls_roundtrip(&connector, host, port),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(server.await.unwrap().unwrap(), jid);
    }
}

#[tokio::test]
async fn tls_with_ca_file_and_system_roots() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    let connector: Box<dyn Connector> = Box::new(DirectTls::new(Some(&ca_path)).unwrap());
    let (port, server) = tls_server(&pki).await;
    let jid = tls_roundtrip(connector.as_ref(), "localhost", port)
        .await
        .unwrap();
    assert_eq!(server.await.unwrap().unwrap(), jid);

    assert!(matches!(
        DirectTls::new(Some(&dir.path().join("missing.pem"))),
        Err(XmppError::Tls(_))
    ));
    assert!(matches!(
        DirectTls::with_ca_pem(b"not a pem"),
        Err(XmppError::Tls(_))
    ));
}

#[tokio::test]
async fn tls_rejects_untrusted_certificate_and_wrong_name() {
    let pki = pki();
    let other = self::pki();
    let (port, server) = tls_server(&pki).await;
    let connector = DirectTls::with_ca_pem(other.ca_pem.as_bytes()).unwrap();
    let err = tls_roundtrip(&connector, "localhost", port)
        .await
        .unwrap_err();
    assert!(matches!(err, XmppError::Tls(_)), "{err}");
    assert!(server.await.unwrap().is_err());

    // Trusted CA but a name the certificate does not carry.
    let (port, server) = tls_server(&pki).await;
    let connector = DirectTls::with_ca_pem(pki.ca_pem.as_bytes()).unwrap();
    let err = tls_roundtrip(&connector, "127.0.0.2", port).await;
    // 127.0.0.2 may not be routable everywhere; either way it must fail.
    assert!(err.is_err());
    server.abort();
}

#[tokio::test]
async fn server_config_rejects_garbage() {
    let pki = pki();
    assert!(matches!(
        server_config(b"", pki.key_pem.as_bytes()),
        Err(XmppError::Tls(_))
    ));
    assert!(matches!(
        server_config(pki.cert_pem.as_bytes(), b""),
        Err(XmppError::Tls(_))
    ));
}

#[tokio::test]
async fn plain_tcp_connector() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        server_side(tcp).await.map(|(jid, _)| jid)
    });
    let io = PlainTcp.connect("127.0.0.1", port).await.unwrap();
    let (jid, _) = client_side(io, KEY).await.unwrap();
    assert_eq!(server.await.unwrap().unwrap(), jid);
}

#[tokio::test]
async fn bytes_after_bind_result_survive_into_parts() {
    // The server sends the bind result and a message in one write; the
    // message must still be there after into_parts.
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let client = tokio::spawn(client_side(a, KEY));
    let mut srv = XmppStream::new(&mut b, LIMIT);
    assert!(matches!(
        srv.next_event().await.unwrap(),
        Event::StreamStart { .. }
    ));
    srv.send(
        format!(
            "{}{}",
            writer::server_stream_header("fcm.googleapis.com", "1"),
            writer::sasl_features(&["PLAIN"])
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(matches!(
        srv.next_event().await.unwrap(),
        Event::Auth { .. }
    ));
    srv.send(writer::sasl_success().as_bytes()).await.unwrap();
    srv.reader_mut().reset();
    assert!(matches!(
        srv.next_event().await.unwrap(),
        Event::StreamStart { .. }
    ));
    srv.send(
        format!(
            "{}{}",
            writer::server_stream_header("fcm.googleapis.com", "2"),
            writer::bind_features()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let Event::Iq(iq) = srv.next_event().await.unwrap() else {
        panic!()
    };
    srv.send(
        format!(
            "{}{}",
            writer::bind_result(iq.id.as_deref().unwrap(), "1@fcm.googleapis.com/r"),
            writer::gcm_message(
                None,
                r#"{"message_type":"control","control_type":"CONNECTION_DRAINING"}"#
            )
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (jid, stream) = client.await.unwrap().unwrap();
    assert_eq!(jid, "1@fcm.googleapis.com/r");
    let (_io, mut reader) = stream.into_parts();
    let Some(Event::Message(m)) = reader.next_event().unwrap() else {
        panic!("message lost")
    };
    assert!(m.gcm.unwrap().contains("CONNECTION_DRAINING"));
}
