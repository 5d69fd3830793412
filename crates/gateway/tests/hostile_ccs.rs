//! Hostile CCS peers (issue 6): a fake CCS server in the test completes a
//! normal handshake (TLS, SASL, bind) and then misbehaves — a DTD, a
//! billion-laughs payload, a 100 MB stanza streamed without end, invalid
//! UTF-8, unknown stanzas, acks for unknown message ids, a stream error,
//! silence (a dead peer that keeps the socket open) — or
//! presents a certificate for the wrong host, an expired one, or one from an
//! unknown CA.
//!
//! gimmm must refuse each one cleanly (close that connection, log the reason
//! once), reconnect with backoff, and keep its data: a message a BAL sent
//! before the trouble is delivered, once, when a good server is back.
#![allow(clippy::unwrap_used)]

use bal::{BalClient, ToBal};
use emulator::TlsIdentity;
use gateway::config::{Config, Secret, SessionConfig};
use gateway::Gateway;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use xmpp::negotiate::ServerParams;
use xmpp::reader::Event;
use xmpp::stream::XmppStream;
use xmpp::tokio_rustls::TlsAcceptor;

const SESSION: &str = "com.example.app";
const TOKEN: &str = "dev-token";
const WAIT: Duration = Duration::from_secs(20);

/// What the fake CCS does on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    /// Acks every downstream message.
    Good,
    /// A `<!DOCTYPE>` with an entity declaration mid-stream.
    Dtd,
    /// The classic exponential entity expansion.
    BillionLaughs,
    /// One stanza of this many bytes, streamed in 64 KiB writes.
    Huge(usize),
    /// A stanza that is not UTF-8.
    InvalidUtf8,
    /// `<stream:error>` then `</stream:stream>`.
    StreamError,
    /// Unknown stanzas, unknown JSON, acks/nacks for unknown ids — all to be
    /// ignored — then behaves as [`Behavior::Good`] on the same connection.
    UnknownThenGood,
    /// Says nothing more after the handshake (keeps reading).
    Silent,
    /// Certificate for another host name.
    TlsWrongHost,
    /// Expired certificate.
    TlsExpired,
    /// Certificate from a CA gimmm does not trust.
    TlsUnknownCa,
}

/// What happened on one connection.
#[derive(Clone, Debug)]
struct Record {
    behavior: Behavior,
    at: Instant,
    outcome: String,
}

struct FakeCcs {
    addr: SocketAddr,
    ca_pem: String,
    records: Arc<Mutex<Vec<Record>>>,
    stop: CancellationToken,
}

fn acceptor(id: &TlsIdentity) -> TlsAcceptor {
    TlsAcceptor::from(
        xmpp::connect::server_config(id.cert_chain_pem.as_bytes(), id.key_pem.as_bytes()).unwrap(),
    )
}

impl FakeCcs {
    async fn start(script: Vec<Behavior>) -> FakeCcs {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let good = TlsIdentity::generate(&names).unwrap();
        let expired_id = TlsIdentity::generate_expired(&names).unwrap();
        let unknown_ca = acceptor(&TlsIdentity::generate(&names).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        // gimmm trusts the good CA, and (for the wrong-host and expired cases,
        // so that the only fault is the one under test) their CAs too.
        let wrong_host_ca = {
            let id = TlsIdentity::generate(&["wrong.example.com".to_string()]).unwrap();
            let pem = id.ca_pem.clone();
            (acceptor(&id), pem)
        };
        let ca_pem = format!("{}{}{}", good.ca_pem, wrong_host_ca.1, expired_id.ca_pem);
        let acceptors = Arc::new(Acceptors {
            good: acceptor(&good),
            wrong_host: wrong_host_ca.0,
            expired: acceptor(&expired_id),
            unknown_ca,
        });
        let (s, r, st) = (script, records.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = st.cancelled() => return,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let behavior = s.lock().unwrap().pop_front().unwrap_or(Behavior::Good);
                let (r, acc, st) = (r.clone(), acceptors.clone(), st.clone());
                tokio::spawn(async move {
                    let at = Instant::now();
                    let outcome = tokio::select! {
                        o = serve(tcp, behavior, &acc) => o,
                        _ = st.cancelled() => "stopped".to_string(),
                    };
                    r.lock().unwrap().push(Record {
                        behavior,
                        at,
                        outcome,
                    });
                });
            }
        });
        FakeCcs {
            addr,
            ca_pem,
            records,
            stop,
        }
    }

    fn records(&self) -> Vec<Record> {
        let mut v = self.records.lock().unwrap().clone();
        v.sort_by_key(|r| r.at);
        v
    }

    /// Waits until `n` connections have finished (or the good one acked).
    async fn wait_records(&self, pred: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.records();
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; records so far: {r:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Acceptors {
    good: TlsAcceptor,
    wrong_host: TlsAcceptor,
    expired: TlsAcceptor,
    unknown_ca: TlsAcceptor,
}

type Xs = XmppStream<xmpp::tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// Reads until a downstream message arrives; its message id.
async fn next_downstream(xs: &mut Xs) -> Result<String, String> {
    loop {
        match timeout(Duration::from_secs(10), xs.next_event()).await {
            Err(_) => return Err("no downstream message within 10 s".into()),
            Ok(Err(e)) => return Err(format!("read failed: {e}")),
            Ok(Ok(Event::Message(m))) => {
                let Some(json) = m.gcm else { continue };
                let v: serde_json::Value =
                    serde_json::from_str(&json).map_err(|e| e.to_string())?;
                if v.get("message_type").is_none() {
                    return Ok(v["message_id"].as_str().unwrap_or_default().to_string());
                }
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// After a hostile payload: gimmm must close the connection.
async fn expect_close(xs: &mut Xs) -> String {
    loop {
        match timeout(Duration::from_secs(5), xs.next_event()).await {
            Err(_) => return "STILL OPEN 5 s after the hostile payload".into(),
            Ok(Err(_)) | Ok(Ok(Event::StreamEnd)) => return "closed by gimmm".into(),
            Ok(Ok(_)) => {}
        }
    }
}

async fn ack_forever(xs: &mut Xs, first: Option<String>) -> String {
    let mut acked = Vec::new();
    let mut pending = first;
    loop {
        if let Some(id) = pending.take() {
            let ack = serde_json::json!({"message_type": "ack", "from": "dev", "message_id": id})
                .to_string();
            if xs
                .send(xmpp::writer::gcm_message(None, &ack).as_bytes())
                .await
                .is_err()
            {
                break;
            }
            acked.push(id);
        }
        match next_downstream(xs).await {
            Ok(id) => pending = Some(id),
            Err(_) => break,
        }
    }
    format!("acked {acked:?}")
}

async fn serve(tcp: tokio::net::TcpStream, behavior: Behavior, acc: &Acceptors) -> String {
    let acceptor = match behavior {
        Behavior::TlsWrongHost => &acc.wrong_host,
        Behavior::TlsExpired => &acc.expired,
        Behavior::TlsUnknownCa => &acc.unknown_ca,
        _ => &acc.good,
    };
    let tls = match timeout(Duration::from_secs(5), acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return format!("TLS refused by gimmm: {e}"),
        Err(_) => return "TLS timed out".into(),
    };
    let mut xs = XmppStream::new(tls, 1 << 20);
    let params = ServerParams {
        domain: "fcm.googleapis.com".into(),
        stream_id: "fake".into(),
    };
    match timeout(
        Duration::from_secs(5),
        xs.negotiate_server(params, |_, _| true),
    )
    .await
    {
        Ok(Ok(_)) => {}
        other => return format!("negotiation failed: {other:?}"),
    }
    // Wait until gimmm has handed us the message, so it is in flight here.
    let first = match next_downstream(&mut xs).await {
        Ok(id) => id,
        Err(e) => return e,
    };
    let payload: Vec<u8> = match behavior {
        Behavior::Good | Behavior::TlsWrongHost | Behavior::TlsExpired | Behavior::TlsUnknownCa => {
            return ack_forever(&mut xs, Some(first)).await
        }
        Behavior::Silent => {
            let t = Instant::now();
            loop {
                match timeout(Duration::from_secs(10), xs.next_event()).await {
                    Err(_) => return "STILL OPEN after 10 s of silence".into(),
                    Ok(Err(_)) | Ok(Ok(Event::StreamEnd)) => {
                        return format!("closed by gimmm after {} ms of silence", t.elapsed().as_millis())
                    }
                    Ok(Ok(_)) => {}
                }
            }
        }
        Behavior::Dtd => {
            b"<!DOCTYPE message [<!ENTITY x \"y\">]><message><gcm xmlns=\"google:mobile:data\">&x;</gcm></message>".to_vec()
        }
        Behavior::BillionLaughs => {
            let mut p = String::from("<!DOCTYPE lolz [<!ENTITY lol \"lol\">");
            let mut prev = "lol".to_string();
            for i in 1..=9 {
                let name = format!("lol{i}");
                p.push_str(&format!("<!ENTITY {name} \"{}\">", format!("&{prev};").repeat(10)));
                prev = name;
            }
            p.push_str("]><message><gcm xmlns=\"google:mobile:data\">&lol9;</gcm></message>");
            p.into_bytes()
        }
        Behavior::InvalidUtf8 => {
            b"<message><gcm xmlns=\"google:mobile:data\">{\"message_type\":\"ack\",\"message_id\":\"\xff\xfe\xc3\x28\"}</gcm></message>".to_vec()
        }
        Behavior::StreamError => format!(
            "{}{}",
            xmpp::writer::stream_error_with_text("conflict", "Replaced by new connection"),
            xmpp::writer::STREAM_END
        )
        .into_bytes(),
        Behavior::Huge(total) => {
            let io = xs.get_mut();
            if io.write_all(b"<message><gcm xmlns=\"google:mobile:data\">{\"x\":\"").await.is_err() {
                return "write failed at once".into();
            }
            let chunk = vec![b'a'; 64 * 1024];
            let mut written = 0usize;
            while written < total {
                if io.write_all(&chunk).await.is_err() || io.flush().await.is_err() {
                    return format!("gimmm closed after {written} bytes of the huge stanza");
                }
                written += chunk.len();
            }
            return format!("WROTE ALL {written} bytes: gimmm kept reading");
        }
        Behavior::UnknownThenGood => {
            let mut p = String::new();
            p.push_str("<presence/><iq type=\"get\" id=\"p1\"><ping xmlns=\"urn:xmpp:ping\"/></iq>");
            p.push_str("<foo xmlns=\"urn:example:bar\"><baz a=\"1\"/>text</foo>");
            p.push_str("<message><body>no gcm here</body></message> \n\t ");
            for json in [
                r#"{"message_type":"weird","message_id":"w-1"}"#,
                "this is not JSON",
                r#"{"message_type":"ack","from":"dev","message_id":"no-such-message"}"#,
                r#"{"message_type":"nack","from":"dev","message_id":"no-such-message-2","error":"BAD_REGISTRATION"}"#,
                r#"{"message_type":"control","control_type":"SOMETHING_NEW"}"#,
                "[]",
            ] {
                p.push_str(&xmpp::writer::gcm_message(Some("u"), json));
            }
            if xs.send(p.as_bytes()).await.is_err() {
                return "gimmm closed on unknown stanzas (write failed)".into();
            }
            // gimmm must keep the connection: nothing to read but no EOF.
            match timeout(Duration::from_millis(500), xs.next_event()).await {
                Ok(Err(e)) => return format!("gimmm closed on unknown stanzas: {e}"),
                Ok(Ok(Event::StreamEnd)) => return "gimmm ended the stream on unknown stanzas".into(),
                _ => {}
            }
            return format!("kept open; {}", ack_forever(&mut xs, Some(first)).await);
        }
    };
    if xs.send(&payload).await.is_err() {
        return "closed by gimmm (write failed)".into();
    }
    expect_close(&mut xs).await
}

/// Captures the gateway's log lines (INFO and above).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Installs a per-thread subscriber (the test runtime is single-threaded,
/// so every gateway task logs through it).
fn capture_logs() -> (Capture, tracing::subscriber::DefaultGuard) {
    let cap = Capture::default();
    let c2 = cap.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || c2.clone())
        .finish();
    (cap, tracing::subscriber::set_default(sub))
}

struct Env {
    gw: Gateway,
    _dir: tempfile::TempDir,
}

async fn gateway(fake: &FakeCcs, tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.fcm.host = "127.0.0.1".into();
    cfg.fcm.port = fake.addr.port();
    cfg.fcm.sender_id = "123456789012".into();
    cfg.fcm.server_key = Secret::new("key");
    cfg.retry.initial_ms = 100;
    cfg.retry.max_ms = 1000;
    cfg.bal.listen = "127.0.0.1:0".into();
    cfg.admin.listen = String::new();
    cfg.store.path = dir.path().join("gimmm.db");
    cfg.bal.sessions = vec![SessionConfig::new(SESSION, TOKEN)];
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let connector: Arc<dyn xmpp::connect::Connector> =
        Arc::new(xmpp::connect::DirectTls::with_ca_pem(fake.ca_pem.as_bytes()).unwrap());
    let gw = Gateway::start_with_connector(cfg, connector, CancellationToken::new())
        .await
        .unwrap();
    Env { gw, _dir: dir }
}

/// Sends one message and returns once it is accepted.
async fn send_one(gw: &Gateway, id: &str) -> BalClient {
    let mut c = BalClient::connect_logon(gw.bal_addr, SESSION, TOKEN)
        .await
        .unwrap();
    c.downstream(
        None,
        serde_json::json!({"to": "dev-1", "message_id": id, "data": {"k": "v"}}),
    )
    .await
    .unwrap();
    let m = timeout(WAIT, c.recv()).await.unwrap().unwrap();
    assert!(matches!(m, ToBal::DownstreamAccepted { .. }), "{m:?}");
    c
}

/// The message's final result arrives exactly once.
async fn expect_one_final(c: &mut BalClient, id: &str) {
    let m = timeout(WAIT, c.recv())
        .await
        .expect("final result in time")
        .unwrap();
    match &m {
        ToBal::DownstreamAck {
            message_id,
            sequence_id,
            ..
        } => {
            assert_eq!(message_id, id);
            c.ack(*sequence_id).await.unwrap();
        }
        other => panic!("expected DOWNSTREAM_ACK for {id}, got {other:?}"),
    }
    // Nothing more: no second final result.
    c.send(&bal::FromBal::Ping).await.unwrap();
    let m = timeout(Duration::from_secs(2), c.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m, ToBal::Pong, "no second result for {id}");
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn hostile_stanzas_are_refused_and_the_message_survives() {
    let (logs, _guard) = capture_logs();
    let hostile = [
        Behavior::Dtd,
        Behavior::BillionLaughs,
        Behavior::InvalidUtf8,
        Behavior::StreamError,
    ];
    let mut script = hostile.to_vec();
    script.push(Behavior::UnknownThenGood);
    let fake = FakeCcs::start(script).await;
    let env = gateway(&fake, |_| {}).await;
    let mut c = send_one(&env.gw, "survivor-1").await;
    expect_one_final(&mut c, "survivor-1").await;

    let recs = fake.wait_records(|r| r.len() >= hostile.len()).await;
    for (r, b) in recs.iter().zip(hostile) {
        assert_eq!(r.behavior, b);
        assert_eq!(r.outcome, "closed by gimmm", "{b:?}: {}", r.outcome);
    }
    // Reconnects were spaced by the backoff, never a tight loop.
    for w in recs.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= Duration::from_millis(45),
            "reconnect after {gap:?}: {recs:#?}"
        );
    }
    env.gw.stop().await;
    // The last connection ends with the gateway; wait for its record.
    let recs = fake.wait_records(|r| r.len() > hostile.len()).await;
    fake.stop.cancel();
    let lines = logs.lines();
    let lost: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("CCS connection lost"))
        .collect();
    for l in &lost {
        eprintln!("log: {l}");
    }
    // Logged once per bad connection, with the reason.
    assert_eq!(
        lost.len(),
        hostile.len(),
        "one log line per refused connection"
    );
    assert_eq!(
        count(&lines, "DTD"),
        2,
        "DTD and billion laughs are refused as DTDs"
    );
    assert_eq!(count(&lines, "UTF-8"), 1);
    assert_eq!(count(&lines, "stream error from CCS: conflict"), 1);
    // The unknown stanzas on the last connection did not close it.
    let last = recs
        .iter()
        .find(|r| r.behavior == Behavior::UnknownThenGood)
        .unwrap();
    assert!(last.outcome.starts_with("kept open"), "{}", last.outcome);
}

#[tokio::test]
async fn huge_stanza_is_refused_without_buffering_it() {
    let (logs, _guard) = capture_logs();
    let fake = FakeCcs::start(vec![Behavior::Huge(100 << 20), Behavior::Good]).await;
    let env = gateway(&fake, |c| c.fcm.max_stanza_bytes = 16 * 1024).await;
    let mut c = send_one(&env.gw, "survivor-2").await;
    expect_one_final(&mut c, "survivor-2").await;
    let recs = fake.wait_records(|r| !r.is_empty()).await;
    let outcome = &recs[0].outcome;
    eprintln!("huge stanza: {outcome}");
    let written: usize = outcome
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("gimmm must close the connection: {outcome}"));
    assert!(outcome.starts_with("gimmm closed after"), "{outcome}");
    // What was written before the refusal is bounded by socket buffers, far
    // below the 100 MB stanza.
    assert!(
        written < 40 << 20,
        "gimmm read {written} bytes of one stanza"
    );
    env.gw.stop().await;
    fake.stop.cancel();
    let lines = logs.lines();
    assert_eq!(count(&lines, "CCS connection lost"), 1);
    assert_eq!(
        count(&lines, "stanza exceeds the limit of 16384 bytes"),
        1,
        "{lines:#?}"
    );
}

#[tokio::test]
async fn bad_certificates_are_refused_with_backoff() {
    let (logs, _guard) = capture_logs();
    let bad = [
        Behavior::TlsWrongHost,
        Behavior::TlsExpired,
        Behavior::TlsUnknownCa,
    ];
    let mut script = bad.to_vec();
    script.push(Behavior::Good);
    let fake = FakeCcs::start(script).await;
    let env = gateway(&fake, |_| {}).await;
    let mut c = send_one(&env.gw, "survivor-3").await;
    expect_one_final(&mut c, "survivor-3").await;
    let recs = fake.wait_records(|r| r.len() >= bad.len()).await;
    for (r, b) in recs.iter().zip(bad) {
        assert_eq!(r.behavior, b);
        assert!(
            r.outcome.starts_with("TLS refused by gimmm"),
            "{b:?}: {}",
            r.outcome
        );
    }
    // Exponential backoff between failed connects: delays drawn from
    // [50,100], [100,200], [200,400] ms.
    let gaps: Vec<Duration> = recs.windows(2).map(|w| w[1].at - w[0].at).collect();
    eprintln!("connect gaps: {gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(45), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(95), "{gaps:?}");
    env.gw.stop().await;
    fake.stop.cancel();
    let lines = logs.lines();
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("CCS connect failed"))
        .collect();
    for l in &failed {
        eprintln!("log: {l}");
    }
    assert_eq!(
        failed.len(),
        bad.len(),
        "one log line per refused certificate"
    );
    assert!(
        failed[0].contains("NotValidForName") || failed[0].contains("not valid for name"),
        "{}",
        failed[0]
    );
    assert!(
        failed[1].to_lowercase().contains("expired"),
        "{}",
        failed[1]
    );
    // A CA with the same name as a trusted one but another key: the
    // signature check fails (UnknownIssuer for a CA of another name).
    assert!(
        failed[2].contains("BadSignature") || failed[2].contains("UnknownIssuer"),
        "{}",
        failed[2]
    );
    // The server key never reaches the log.
    assert_eq!(count(&lines, "key\""), 0);
}

#[tokio::test]
async fn a_silent_ccs_is_declared_dead_and_replaced() {
    let (logs, _guard) = capture_logs();
    let fake = FakeCcs::start(vec![Behavior::Silent, Behavior::Good]).await;
    let env = gateway(&fake, |c| c.fcm.keepalive_secs = 1).await;
    let mut c = send_one(&env.gw, "survivor-4").await;
    expect_one_final(&mut c, "survivor-4").await;
    let recs = fake.wait_records(|r| !r.is_empty()).await;
    eprintln!("silent CCS: {}", recs[0].outcome);
    assert!(
        recs[0].outcome.starts_with("closed by gimmm after"),
        "{}",
        recs[0].outcome
    );
    env.gw.stop().await;
    fake.stop.cancel();
    let lines = logs.lines();
    assert_eq!(count(&lines, "no data from CCS"), 1, "{lines:#?}");
}
