//! Time-driven behaviour under paused tokio time (DESIGN §4.6): nothing here
//! sleeps for real. The runtime's clock only moves when every task waits,
//! straight to the next timer, so a 90 s keepalive timeout takes
//! milliseconds and the measured delays are exact.
//!
//! * the XMPP link's whitespace keepalive and its dead-link detection,
//!   against a CCS played by the test over an in-memory duplex;
//! * the XMPP link's connect backoff, against a connector that fails;
//! * the whole engine (driver and core) on the in-memory store with
//!   scripted links: retry backoff, `Retry-After`, reconnect backoff and
//!   TTL expiry, as a BAL would see them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bal::proto::ToBal;
use gateway::backoff::Backoff;
use gateway::config::{RetryConfig, Secret};
use gateway::engine::{Cmd, Engine, EngineConfig, Incoming};
use gateway::link::scripted::{ScriptedFactory, ScriptedLink};
use gateway::link::xmpp::{XmppLinkFactory, XmppParams};
use gateway::link::{
    CloseReason, Failure, FailureClass, LinkCmd, LinkEvent, LinkFactory, Outcome, SendResult,
};
use gateway::session::out::{out_channel, Out, OutRx};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xmpp::connect::{BoxStream, ConnectFuture, Connector};
use xmpp::negotiate::ServerParams;
use xmpp::stream::XmppStream;
use xmpp::XmppError;

// ----- the XMPP link against a CCS played over a duplex --------------------

/// Hands the server half of every connection to the test.
struct DuplexConnector {
    servers: mpsc::UnboundedSender<DuplexStream>,
}

impl Connector for DuplexConnector {
    fn connect<'a>(&'a self, _host: &'a str, _port: u16) -> ConnectFuture<'a> {
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            self.servers
                .send(server)
                .map_err(|_| XmppError::Protocol("test gone".into()))?;
            Ok(Box::new(client) as BoxStream)
        })
    }
}

/// Refuses every connection, recording when it was asked.
struct FailingConnector {
    attempts: mpsc::UnboundedSender<Instant>,
}

impl Connector for FailingConnector {
    fn connect<'a>(&'a self, _host: &'a str, _port: u16) -> ConnectFuture<'a> {
        let _ = self.attempts.send(Instant::now());
        Box::pin(async { Err(XmppError::Protocol("connection refused".into())) })
    }
}

fn params(connector: Arc<dyn Connector>, keepalive: Duration) -> XmppParams {
    XmppParams {
        host: "ccs.test".into(),
        port: 5235,
        connector,
        username: "123@fcm.googleapis.com".into(),
        password: Secret::new("key"),
        domain: "fcm.googleapis.com".into(),
        keepalive,
        max_stanza_bytes: 64 * 1024,
        window: 100,
        connect_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        auth_backoff: Backoff::new(Duration::from_secs(60), Duration::from_secs(300)),
    }
}

#[tokio::test(start_paused = true)]
async fn xmpp_keepalive_and_silence() {
    let (servers_tx, mut servers) = mpsc::unbounded_channel();
    let keepalive = Duration::from_secs(30);
    let factory = XmppLinkFactory::new(params(
        Arc::new(DuplexConnector {
            servers: servers_tx,
        }),
        keepalive,
    ));
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let _handle = factory.spawn(1, Duration::ZERO, ev_tx, CancellationToken::new());
    let server = servers.recv().await.unwrap();
    let mut ccs = XmppStream::new(server, 64 * 1024);
    ccs.negotiate_server(
        ServerParams {
            domain: "fcm.googleapis.com".into(),
            stream_id: "s1".into(),
        },
        |user, key| user == "123@fcm.googleapis.com" && key == "key",
    )
    .await
    .unwrap();
    match events.recv().await.unwrap() {
        LinkEvent::Ready { capacity, .. } => assert_eq!(capacity, 100),
        other => panic!("expected Ready, got {other:?}"),
    }
    let ready = Instant::now();
    let (mut io, _) = ccs.into_parts();
    // CCS stays silent: gimmm pings with whitespace every keepalive...
    let mut b = [0u8; 16];
    for n in 1..=2u32 {
        let got = io.read(&mut b).await.unwrap();
        assert_eq!(&b[..got], b" ", "a whitespace keepalive");
        let at = ready.elapsed();
        assert!(
            at >= keepalive * n && at < keepalive * n + Duration::from_secs(6),
            "keepalive {n} after {at:?}"
        );
    }
    // ...and gives the link up after 3x keepalive without a byte from CCS.
    match events.recv().await.unwrap() {
        LinkEvent::Closed {
            reason: CloseReason::Silent { peer, .. },
            ..
        } => assert_eq!(peer, "CCS"),
        other => panic!("expected Closed(Silent), got {other:?}"),
    }
    let at = ready.elapsed();
    assert!(
        at > keepalive * 3 && at < keepalive * 3 + Duration::from_secs(6),
        "declared dead after {at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn xmpp_connect_backoff_doubles_with_jitter() {
    let (tx, mut attempts) = mpsc::unbounded_channel();
    let factory = XmppLinkFactory::new(params(
        Arc::new(FailingConnector { attempts: tx }),
        Duration::from_secs(30),
    ));
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let _handle = factory.spawn(1, Duration::from_secs(3), ev_tx, stop.clone());
    let start = Instant::now();
    let mut times = Vec::new();
    for _ in 0..6 {
        times.push(attempts.recv().await.unwrap());
        assert!(matches!(
            events.recv().await.unwrap(),
            LinkEvent::ConnectFailed { auth: false, .. }
        ));
    }
    assert_eq!(
        times[0] - start,
        Duration::from_secs(3),
        "the initial delay"
    );
    for (n, w) in times.windows(2).enumerate() {
        let gap = w[1] - w[0];
        let ceiling = Duration::from_secs(1 << n);
        assert!(
            gap >= ceiling / 2 && gap <= ceiling,
            "gap {n} is {gap:?}, not within [{:?}, {ceiling:?}]",
            ceiling / 2
        );
    }
    stop.cancel();
    loop {
        if let LinkEvent::Closed { reason, .. } = events.recv().await.unwrap() {
            assert_eq!(reason, CloseReason::Shutdown);
            break;
        }
    }
}

// ----- the whole engine on the memory store, scripted links -----------------

const S: &str = "app";

struct Rig {
    cmds: mpsc::Sender<Cmd>,
    links: mpsc::UnboundedReceiver<ScriptedLink>,
    out: OutRx,
    shutdown: CancellationToken,
    _ctl: mpsc::Sender<Cmd>,
}

fn start_engine() -> Rig {
    let data = store::memory::MemData::new();
    let (commit_tx, commit_rx) = mpsc::unbounded_channel();
    let (mem, recovery) = store::memory::MemStore::open(&data, commit_tx).unwrap();
    let (factory, links) = ScriptedFactory::new();
    let shutdown = CancellationToken::new();
    let engine = Engine::new(
        EngineConfig {
            sessions: vec![S.into()],
            connections: 1,
            max_unacked: 100,
            retry: RetryConfig {
                initial_ms: 1_000,
                max_ms: 60_000,
                max_attempts: 5,
            },
            mem_messages: 1_000,
            mem_outbox: 1_000,
            receipt_warning: None,
            shutdown_grace: Duration::from_secs(10),
            abort: CancellationToken::new(),
        },
        Arc::new(mem),
        &recovery,
        Arc::new(factory),
        shutdown.clone(),
    );
    let (cmds, cmd_rx) = mpsc::channel(64);
    let (ctl, ctl_rx) = mpsc::channel(8);
    tokio::spawn(engine.run(cmd_rx, ctl_rx, commit_rx));
    let (out_tx, out) = out_channel();
    let cmds2 = cmds.clone();
    tokio::spawn(async move {
        cmds2
            .send(Cmd::Attach {
                session: Arc::from(S),
                conn: 1,
                out: out_tx,
            })
            .await
            .unwrap();
    });
    Rig {
        cmds,
        links,
        out,
        shutdown,
        _ctl: ctl,
    }
}

impl Rig {
    async fn line(&mut self) -> ToBal {
        match self.out.recv().await.expect("engine closed the BAL") {
            Out::Line(l) => serde_json::from_str(&l).unwrap(),
            Out::Owned(l) => serde_json::from_str(&l).unwrap(),
            Out::Close => panic!("closed"),
        }
    }

    async fn send(&self, mid: &str, ttl_ms: i64) {
        self.cmds
            .send(Cmd::Downstream(Box::new(Incoming {
                session: Arc::from(S),
                conn: 1,
                group_id: None,
                message_id: mid.into(),
                body: format!(r#"{{"to":"tok","message_id":"{mid}"}}"#),
                ttl_ms,
                receipt: false,
                target: "tok".into(),
                rejected: None,
            })))
            .await
            .unwrap();
    }
}

async fn next_send(link: &mut ScriptedLink) -> u64 {
    loop {
        match link.cmds.recv().await.expect("link dropped") {
            LinkCmd::Send(v) => {
                assert_eq!(v.len(), 1);
                return v[0].id;
            }
            _ => continue,
        }
    }
}

fn retry(link: &ScriptedLink, id: u64, after: Option<Duration>) {
    link.event(LinkEvent::Outcome {
        link: link.id,
        outcome: Outcome {
            id,
            result: SendResult::Failed(Failure {
                class: FailureClass::Retry {
                    after,
                    target_backoff: false,
                },
                code: "UNAVAILABLE".into(),
                detail: String::new(),
                http: None,
            }),
        },
    });
}

#[tokio::test(start_paused = true)]
async fn engine_retry_backoff_and_retry_after() {
    let mut r = start_engine();
    assert!(matches!(r.line().await, ToBal::LogonResponse { .. }));
    let mut link = r.links.recv().await.unwrap();
    assert_eq!(link.delay, Duration::ZERO);
    link.ready(10);
    r.send("m1", 3_600_000).await;
    assert!(matches!(r.line().await, ToBal::DownstreamAccepted { .. }));
    let id = next_send(&mut link).await;
    // Attempt n waits within [ceiling/2, ceiling], ceiling = 1 s * 2^(n-1).
    for n in 0..3u32 {
        retry(&link, id, None);
        let t = Instant::now();
        assert_eq!(next_send(&mut link).await, id);
        let waited = t.elapsed();
        let ceiling = Duration::from_secs(1 << n);
        assert!(
            waited >= ceiling / 2 && waited <= ceiling + Duration::from_millis(2),
            "retry {n} after {waited:?}"
        );
    }
    // A Retry-After longer than the backoff wins.
    retry(&link, id, Some(Duration::from_secs(30)));
    let t = Instant::now();
    assert_eq!(next_send(&mut link).await, id);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_millis(30_002),
        "{waited:?}"
    );
    // The fifth failure is the last attempt.
    retry(&link, id, None);
    match r.line().await {
        ToBal::DownstreamReject { error, .. } => assert_eq!(error, "MAX_RETRIES"),
        other => panic!("expected MAX_RETRIES, got {other:?}"),
    }
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn engine_ttl_expires_while_no_link_is_ready() {
    let mut r = start_engine();
    assert!(matches!(r.line().await, ToBal::LogonResponse { .. }));
    let _link = r.links.recv().await.unwrap(); // never ready
    let t = Instant::now();
    r.send("short", 5_000).await;
    assert!(matches!(r.line().await, ToBal::DownstreamAccepted { .. }));
    match r.line().await {
        ToBal::DownstreamReject {
            error, message_id, ..
        } => {
            assert_eq!((error.as_str(), message_id.as_str()), ("EXPIRED", "short"));
        }
        other => panic!("expected EXPIRED, got {other:?}"),
    }
    let at = t.elapsed();
    // Swept within a second of running out.
    assert!(
        at >= Duration::from_secs(5) && at <= Duration::from_secs(6) + Duration::from_millis(10),
        "{at:?}"
    );
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn engine_reconnects_with_backoff_and_resends() {
    let mut r = start_engine();
    assert!(matches!(r.line().await, ToBal::LogonResponse { .. }));
    let mut link = r.links.recv().await.unwrap();
    link.ready(10);
    r.send("m1", 3_600_000).await;
    assert!(matches!(r.line().await, ToBal::DownstreamAccepted { .. }));
    let id = next_send(&mut link).await;
    let mut ceiling = Duration::from_secs(1);
    for _ in 0..3 {
        // The link dies with the message unanswered (right after its
        // handshake: the backoff keeps growing).
        link.event(LinkEvent::Closed {
            link: link.id,
            reason: CloseReason::Io("reset".into()),
        });
        link = r.links.recv().await.unwrap();
        assert!(
            link.delay >= ceiling / 2 && link.delay <= ceiling,
            "reconnect after {:?}, ceiling {ceiling:?}",
            link.delay
        );
        ceiling *= 2;
        link.ready(10);
        assert_eq!(next_send(&mut link).await, id, "resent on the new link");
    }
    link.event(LinkEvent::Outcome {
        link: link.id,
        outcome: Outcome {
            id,
            result: SendResult::Delivered {
                raw: r#"{"message_type":"ack","message_id":"m1"}"#.into(),
            },
        },
    });
    assert!(matches!(r.line().await, ToBal::DownstreamAck { .. }));
    r.shutdown.cancel();
}
