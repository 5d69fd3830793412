//! Engine core tests: the core driven with a fake clock (plain
//! milliseconds), scripted link events and a scripted store (the test
//! answers each submitted batch), with no sockets, no SQLite, no tokio.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::core::{Core, CoreConfig, IngressResult, Input, Output};
use super::{ConnId, Incoming, Millis};
use crate::config::RetryConfig;
use crate::link::{
    CloseReason, Failure, FailureClass, HttpDetail, LinkCmd, LinkEvent, LinkId, MsgId, Outcome,
    SendResult, UpstreamToken,
};
use crate::session::out::Out;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use store::{Batch, Committed, Op, OutboxRow, QueuedRow, ReceiptTarget, Recovery};

const S: &str = "app";
const T0: Millis = 1_700_000_000_000;

fn cfg() -> CoreConfig {
    CoreConfig {
        sessions: vec![S.into(), "other".into()],
        connections: 1,
        max_unacked: 100,
        retry: RetryConfig {
            initial_ms: 1_000,
            max_ms: 60_000,
            max_attempts: 4,
        },
        mem_messages: 1_000,
        mem_outbox: 1_000,
        receipt_warning: None,
        seed: 7,
        peer: "FCM",
    }
}

/// A core, its clock, and what it asked for, split by kind.
struct Rig {
    core: Core,
    now: Millis,
    /// Batches submitted and not yet answered.
    batches: VecDeque<Batch>,
    /// Every batch submitted so far.
    submitted: Vec<Batch>,
    /// Messages handed to links: (link, ids).
    sent: Vec<(LinkId, Vec<MsgId>)>,
    /// Lines written: (conn, line) ("<close>" for a close).
    written: Vec<(ConnId, String)>,
    spawned: Vec<(LinkId, Duration)>,
    acks_to_fcm: Vec<(LinkId, UpstreamToken)>,
    loads: Vec<Output>,
    fatal: Vec<String>,
    /// Ingress answers: (post id, result).
    ingress: Vec<(u64, IngressResult)>,
}

impl Rig {
    fn new(c: CoreConfig) -> Rig {
        Rig::recovered(c, &Recovery::default())
    }

    fn recovered(c: CoreConfig, rec: &Recovery) -> Rig {
        let mut r = Rig {
            core: Core::new(c, rec, T0),
            now: T0,
            batches: VecDeque::new(),
            submitted: Vec::new(),
            sent: Vec::new(),
            written: Vec::new(),
            spawned: Vec::new(),
            acks_to_fcm: Vec::new(),
            loads: Vec::new(),
            fatal: Vec::new(),
            ingress: Vec::new(),
        };
        r.core.start(T0);
        r.collect();
        r
    }

    fn collect(&mut self) {
        let outs: Vec<Output> = self.core.drain_outputs().collect();
        for o in outs {
            match o {
                Output::Write { conn, out } => self.written.push((
                    conn,
                    match out {
                        Out::Line(l) => l.to_string(),
                        Out::Owned(l) => l,
                        Out::Close => "<close>".into(),
                    },
                )),
                Output::SpawnLink { link, delay } => self.spawned.push((link, delay)),
                Output::Link { link, cmd } => match cmd {
                    LinkCmd::Send(v) => self.sent.push((link, v.iter().map(|o| o.id).collect())),
                    LinkCmd::AckUpstream(t) => self.acks_to_fcm.push((link, t)),
                    LinkCmd::Close => {}
                },
                Output::Submit(b) => {
                    self.submitted.push(Batch {
                        no: b.no,
                        ops: b.ops.clone(),
                    });
                    self.batches.push_back(b)
                }
                o @ (Output::LoadQueued { .. }
                | Output::LoadOutbox { .. }
                | Output::LookupReceipt { .. }) => self.loads.push(o),
                Output::Fatal(why) => self.fatal.push(why),
                Output::IngressReply { id, result } => self.ingress.push((id, result)),
            }
        }
    }

    /// One input and the end of its turn.
    fn input(&mut self, i: Input) {
        self.core.handle(self.now, i);
        self.core.end_turn(self.now);
        self.collect();
    }

    fn link(&mut self, ev: LinkEvent) {
        self.input(Input::Link(ev));
    }

    /// The store commits every outstanding batch (in order).
    fn commit(&mut self) {
        self.commit_with(|_| Committed::default());
    }

    /// Commits every outstanding batch with a report made by `f`.
    fn commit_with(&mut self, f: impl Fn(&Batch) -> Committed) {
        while let Some(b) = self.batches.pop_front() {
            let mut c = f(&b);
            c.no = b.no;
            c.group_size = 1;
            self.input(Input::Committed(c));
        }
    }

    /// Moves the clock and runs the timers.
    fn advance(&mut self, ms: Millis) {
        self.now += ms;
        self.core.tick(self.now);
        self.core.end_turn(self.now);
        self.collect();
    }

    fn attach(&mut self, session: &str, conn: ConnId) {
        self.input(Input::Attach {
            session: Arc::from(session),
            conn,
        });
    }

    fn send(&mut self, conn: ConnId, mid: &str, group: Option<&str>, to: &str) {
        self.downstream(S, conn, mid, group, to, 600_000);
    }

    fn downstream(
        &mut self,
        session: &str,
        conn: ConnId,
        mid: &str,
        group: Option<&str>,
        to: &str,
        ttl_ms: i64,
    ) {
        self.input(Input::Downstream(Box::new(Incoming {
            session: Arc::from(session),
            conn,
            group_id: group.map(str::to_string),
            message_id: mid.to_string(),
            body: format!(r#"{{"to":"{to}","message_id":"{mid}"}}"#),
            ttl_ms,
            receipt: false,
            target: to.to_string(),
            rejected: None,
        })));
    }

    fn ready(&mut self, link: LinkId, capacity: usize) {
        self.link(LinkEvent::Ready { link, capacity });
    }

    fn outcome(&mut self, link: LinkId, id: MsgId, result: SendResult) {
        self.link(LinkEvent::Outcome {
            link,
            outcome: Outcome { id, result },
        });
    }

    fn deliver(&mut self, link: LinkId, id: MsgId) {
        self.outcome(
            link,
            id,
            SendResult::Delivered {
                raw: format!(r#"{{"message_type":"ack","message_id":"m{id}"}}"#),
            },
        );
    }

    fn fail(&mut self, link: LinkId, id: MsgId, class: FailureClass, code: &str) {
        self.outcome(
            link,
            id,
            SendResult::Failed(Failure {
                class,
                code: code.into(),
                detail: "d".into(),
                http: None,
            }),
        );
    }

    /// Every id sent so far, in order.
    fn sent_ids(&self) -> Vec<MsgId> {
        self.sent
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .collect()
    }

    fn take_sent(&mut self) -> Vec<MsgId> {
        let v = self.sent_ids();
        self.sent.clear();
        v
    }

    /// Lines written to `conn` whose message_type is `kind`.
    fn lines(&self, conn: ConnId, kind: &str) -> Vec<serde_json::Value> {
        self.written
            .iter()
            .filter(|(c, _)| *c == conn)
            .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message_type"] == kind)
            .collect()
    }

    fn ack_seq(&mut self, conn: ConnId, seq: u64) {
        self.input(Input::Ack {
            session: Arc::from(S),
            conn,
            seq,
        });
    }
}

const RETRY: FailureClass = FailureClass::Retry {
    after: None,
    target_backoff: false,
};

// ----- queueing, acceptance, capacity ---------------------------------------

#[test]
fn accepted_only_after_commit_and_sent_within_capacity() {
    let mut r = Rig::new(cfg());
    assert_eq!(
        r.spawned,
        vec![(1, Duration::ZERO)],
        "one link opened at start"
    );
    r.attach(S, 10);
    assert_eq!(r.lines(10, "LOGON_RESPONSE").len(), 1);
    for i in 1..=5 {
        r.send(10, &format!("m{i}"), None, "tok");
    }
    assert!(
        r.lines(10, "DOWNSTREAM_ACCEPTED").is_empty(),
        "nothing before the commit"
    );
    assert!(r.sent.is_empty());
    // Each turn's batch holds its insert.
    let inserts = r
        .batches
        .iter()
        .flat_map(|b| b.ops.iter())
        .filter(|o| matches!(o, Op::InsertDownstream(_)))
        .count();
    assert_eq!(inserts, 5);
    r.commit();
    let acc = r.lines(10, "DOWNSTREAM_ACCEPTED");
    assert_eq!(acc.len(), 5);
    assert_eq!(acc[0]["message_id"], "m1");
    assert!(r.sent.is_empty(), "no link is ready yet");
    r.ready(1, 2);
    assert_eq!(r.take_sent(), vec![1, 2], "capacity 2");
    r.deliver(1, 1);
    assert_eq!(r.take_sent(), vec![3], "one outcome frees one place");
    // DOWNSTREAM_ACK only once the outbox line is committed.
    assert!(r.lines(10, "DOWNSTREAM_ACK").is_empty());
    r.commit();
    let ack = r.lines(10, "DOWNSTREAM_ACK");
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0]["message_id"], "m1");
    assert_eq!(ack[0]["fcm_data"]["message_id"], "m1");
    // Capacity can grow.
    r.link(LinkEvent::Capacity {
        link: 1,
        capacity: 10,
    });
    assert_eq!(r.take_sent(), vec![4, 5]);
}

#[test]
fn duplicates_and_refused_inserts_are_not_sent() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "a", None, "tok");
    r.send(10, "b", None, "tok");
    r.send(10, "c", None, "tok");
    r.commit_with(|_| Committed {
        duplicates: vec![1],
        failed_inserts: vec![3],
        error: Some("disk full".into()),
        ..Committed::default()
    });
    let acc = r.lines(10, "DOWNSTREAM_ACCEPTED");
    assert_eq!(acc.len(), 2);
    assert_eq!(acc[0]["duplicate"], true);
    assert_eq!(acc[1]["message_id"], "b");
    let err = r.lines(10, "ERROR");
    assert_eq!(err[0]["error"], "STORE_UNAVAILABLE");
    assert!(err[0]["error_description"]
        .as_str()
        .unwrap()
        .contains("disk full"));
    assert_eq!(r.take_sent(), vec![2]);
}

#[test]
fn a_degraded_store_refuses_at_once() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.core.set_store_degraded(true);
    r.send(10, "a", None, "tok");
    assert_eq!(r.lines(10, "ERROR")[0]["error"], "STORE_UNAVAILABLE");
    assert!(r.batches.iter().all(|b| b.ops.is_empty()));
}

#[test]
fn validation_rejects_are_sequenced_and_never_sent() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.input(Input::Downstream(Box::new(Incoming {
        session: Arc::from(S),
        conn: 10,
        group_id: None,
        message_id: "bad".into(),
        body: r#"{"to":"","message_id":"bad"}"#.into(),
        ttl_ms: 0,
        receipt: false,
        target: String::new(),
        rejected: Some((fcm::ErrorCode::BadRegistration, "empty token".into())),
    })));
    r.commit();
    let rej = r.lines(10, "DOWNSTREAM_REJECT");
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0]["error"], "BAD_REGISTRATION");
    assert_eq!(rej[0]["fcm_data"]["message_id"], "bad");
    assert!(r.lines(10, "DOWNSTREAM_ACCEPTED").is_empty());
    assert!(r.sent.is_empty());
}

#[test]
fn sessions_take_turns_on_the_links() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.attach("other", 20);
    for i in 0..50 {
        r.send(10, &format!("flood{i}"), None, "tok");
    }
    r.downstream("other", 20, "single", None, "tok", 600_000);
    r.commit();
    r.ready(1, 4);
    let first = r.take_sent();
    assert_eq!(first.len(), 4);
    assert!(
        first.contains(&51),
        "the other session's message goes in the first round: {first:?}"
    );
}

// ----- groups -----------------------------------------------------------------

#[test]
fn a_group_goes_one_at_a_time_in_order() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 100);
    for i in 1..=3 {
        r.send(10, &format!("g{i}"), Some("chat"), "tok");
    }
    r.send(10, "free", None, "tok");
    r.commit();
    assert_eq!(
        r.take_sent(),
        vec![1, 4],
        "one of the group, plus the ungrouped one"
    );
    // A retry of the active message keeps the others waiting.
    r.fail(1, 1, RETRY, "SERVICE_UNAVAILABLE");
    assert!(r.take_sent().is_empty());
    r.advance(1_000);
    assert_eq!(
        r.take_sent(),
        vec![1],
        "the same message again, not the next"
    );
    r.deliver(1, 1);
    assert_eq!(r.take_sent(), vec![2]);
    // A final failure also releases the next.
    r.fail(1, 2, FailureClass::Final, "BAD_REGISTRATION");
    assert_eq!(r.take_sent(), vec![3]);
    r.commit();
    let rej = r.lines(10, "DOWNSTREAM_REJECT");
    assert_eq!(rej[0]["message_id"], "g2");
}

// ----- retries ----------------------------------------------------------------

#[test]
fn retries_back_off_exponentially_then_give_up() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "m", None, "tok");
    r.commit();
    assert_eq!(r.take_sent(), vec![1]);
    // Attempt n waits within [ceiling/2, ceiling], ceiling = 1 s * 2^(n-1).
    let mut waited = Vec::new();
    for ceiling in [1_000, 2_000, 4_000] {
        r.fail(1, 1, RETRY, "SERVICE_UNAVAILABLE");
        let mut t = 0;
        while r.sent.is_empty() {
            r.advance(10);
            t += 10;
            assert!(t <= ceiling, "not resent within {ceiling} ms");
        }
        assert!(
            t >= ceiling / 2,
            "resent after {t} ms, before {}",
            ceiling / 2
        );
        waited.push(t);
        assert_eq!(r.take_sent(), vec![1]);
    }
    // The retry bookkeeping is written (attempts, not_before).
    r.advance(100);
    let retries: Vec<u32> = r
        .submitted
        .iter()
        .flat_map(|b| b.ops.iter())
        .filter_map(|o| match o {
            Op::RetryDownstream { attempts, .. } => Some(*attempts),
            _ => None,
        })
        .collect();
    assert_eq!(retries, vec![1, 2, 3]);
    // The fourth failure is the last attempt (max_attempts = 4).
    r.fail(1, 1, RETRY, "SERVICE_UNAVAILABLE");
    r.commit();
    let rej = r.lines(10, "DOWNSTREAM_REJECT");
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0]["error"], "MAX_RETRIES");
    assert!(rej[0]["error_description"]
        .as_str()
        .unwrap()
        .contains("SERVICE_UNAVAILABLE"));
    assert!(waited.windows(2).all(|w| w[1] > w[0]), "{waited:?}");
}

#[test]
fn retry_after_wins_when_later_than_the_backoff() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "m", None, "tok");
    r.commit();
    r.take_sent();
    r.fail(
        1,
        1,
        FailureClass::Retry {
            after: Some(Duration::from_secs(5)),
            target_backoff: false,
        },
        "UNAVAILABLE",
    );
    r.advance(4_999);
    assert!(r.sent.is_empty());
    r.advance(1);
    assert_eq!(r.take_sent(), vec![1]);
}

#[test]
fn rate_limits_back_off_the_whole_target() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 1);
    r.send(10, "a1", None, "dev-a");
    r.send(10, "a2", None, "dev-a");
    r.send(10, "b1", None, "dev-b");
    r.commit();
    assert_eq!(r.take_sent(), vec![1]);
    r.fail(
        1,
        1,
        FailureClass::Retry {
            after: None,
            target_backoff: true,
        },
        "DEVICE_MESSAGE_RATE_EXCEEDED",
    );
    // a2 is for the backed-off target: it waits; b1 goes.
    assert_eq!(r.take_sent(), vec![3]);
    r.deliver(1, 3);
    assert!(r.take_sent().is_empty(), "dev-a is still backed off");
    r.advance(1_000);
    let after = r.take_sent();
    assert_eq!(after.len(), 1, "capacity 1");
    assert!(after[0] == 1 || after[0] == 2);
}

#[test]
fn resends_are_not_attempts() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "m", None, "tok");
    r.commit();
    r.take_sent();
    for _ in 0..10 {
        r.fail(1, 1, FailureClass::Resend, "");
        assert_eq!(r.take_sent(), vec![1], "resent at once");
    }
    r.deliver(1, 1);
    r.commit();
    assert_eq!(r.lines(10, "DOWNSTREAM_ACK").len(), 1);
}

#[test]
fn final_failures_carry_http_details() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "m", None, "unregistered-x");
    r.commit();
    r.take_sent();
    r.outcome(
        1,
        1,
        SendResult::Failed(Failure {
            class: FailureClass::Final,
            code: "DEVICE_UNREGISTERED".into(),
            detail: "Requested entity was not found.".into(),
            http: Some(HttpDetail {
                fcm_error: Some("UNREGISTERED".into()),
                http_status: 404,
            }),
        }),
    );
    r.commit();
    let rej = &r.lines(10, "DOWNSTREAM_REJECT")[0];
    assert_eq!(rej["error"], "DEVICE_UNREGISTERED");
    assert_eq!(rej["fcm_error"], "UNREGISTERED");
    assert_eq!(rej["http_status"], 404);
    assert_eq!(rej["error_description"], "Requested entity was not found.");
}

// ----- TTL --------------------------------------------------------------------

#[test]
fn messages_expire_while_queued() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.downstream(S, 10, "short", None, "tok", 2_000);
    r.downstream(S, 10, "long", None, "tok", 600_000);
    r.commit();
    // No link is ready: the sweep rejects the short one once it expired.
    r.advance(1_000);
    r.commit();
    assert!(r.lines(10, "DOWNSTREAM_REJECT").is_empty());
    r.advance(1_500);
    r.commit();
    let rej = r.lines(10, "DOWNSTREAM_REJECT");
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0]["message_id"], "short");
    assert_eq!(rej[0]["error"], "EXPIRED");
    r.ready(1, 10);
    assert_eq!(r.take_sent(), vec![2]);
}

#[test]
fn an_expired_message_is_not_sent_when_a_link_comes() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.downstream(S, 10, "short", None, "tok", 500);
    r.commit();
    r.now += 600; // no tick: the sweep has not run
    r.ready(1, 10);
    assert!(r.sent.is_empty());
    r.commit();
    assert_eq!(r.lines(10, "DOWNSTREAM_REJECT")[0]["error"], "EXPIRED");
}

// ----- links: draining, loss ----------------------------------------------------

#[test]
fn draining_opens_a_replacement_and_moves_the_unanswered() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    for i in 1..=3 {
        r.send(10, &format!("m{i}"), None, "tok");
    }
    r.commit();
    assert_eq!(r.take_sent(), vec![1, 2, 3]);
    r.link(LinkEvent::Draining { link: 1 });
    assert_eq!(
        r.spawned.last(),
        Some(&(2, Duration::ZERO)),
        "replacement at once"
    );
    r.send(10, "m4", None, "tok");
    r.commit();
    assert!(r.sent.is_empty(), "nothing new on a draining link");
    r.deliver(1, 1);
    r.ready(2, 10);
    assert_eq!(r.take_sent(), vec![4]);
    r.link(LinkEvent::Closed {
        link: 1,
        reason: CloseReason::PeerClosed,
    });
    assert_eq!(
        r.take_sent(),
        vec![2, 3],
        "the unanswered go out on the new link, in order"
    );
    assert_eq!(r.spawned.len(), 2, "no reconnect for a drained link");
}

#[test]
fn a_lost_link_reconnects_with_backoff() {
    let mut r = Rig::new(cfg());
    r.ready(1, 10);
    r.link(LinkEvent::Closed {
        link: 1,
        reason: CloseReason::Io("reset".into()),
    });
    let (id, d) = *r.spawned.last().unwrap();
    assert_eq!(id, 2);
    assert!(
        d >= Duration::from_millis(500) && d <= Duration::from_millis(1_000),
        "{d:?}"
    );
    // It dies right after connecting: the backoff keeps growing.
    r.ready(2, 10);
    r.link(LinkEvent::Closed {
        link: 2,
        reason: CloseReason::PeerClosed,
    });
    let (_, d2) = *r.spawned.last().unwrap();
    assert!(
        d2 >= Duration::from_millis(1_000) && d2 <= Duration::from_millis(2_000),
        "{d2:?}"
    );
    // A link that stayed up a while earns a fresh backoff.
    r.ready(3, 10);
    r.advance(10_000);
    r.link(LinkEvent::Closed {
        link: 3,
        reason: CloseReason::PeerClosed,
    });
    let (_, d3) = *r.spawned.last().unwrap();
    assert!(d3 <= Duration::from_millis(1_000), "{d3:?}");
}

#[test]
fn auth_failures_show_until_a_link_is_ready() {
    let mut r = Rig::new(cfg());
    r.link(LinkEvent::ConnectFailed {
        link: 1,
        error: "not-authorized".into(),
        auth: true,
    });
    assert_eq!(
        r.core.snapshot().auth_error.as_deref(),
        Some("not-authorized")
    );
    r.ready(1, 10);
    assert_eq!(r.core.snapshot().auth_error, None);
    r.link(LinkEvent::AuthFailed {
        link: 1,
        error: "token refused".into(),
    });
    r.link(LinkEvent::Capacity {
        link: 1,
        capacity: 0,
    });
    assert_eq!(
        r.core.snapshot().auth_error.as_deref(),
        Some("token refused")
    );
    r.attach(S, 10);
    r.send(10, "m", None, "tok");
    r.commit();
    assert!(r.sent.is_empty(), "no capacity: stays queued");
    r.link(LinkEvent::Capacity {
        link: 1,
        capacity: 10,
    });
    assert_eq!(r.take_sent(), vec![1]);
    assert_eq!(r.core.snapshot().auth_error, None);
}

#[test]
fn outcomes_from_elsewhere_are_ignored() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "m", None, "tok");
    r.commit();
    r.take_sent();
    r.deliver(7, 1); // a link that never had it
    r.deliver(1, 99); // an id it never had
    r.commit();
    assert!(r.lines(10, "DOWNSTREAM_ACK").is_empty());
    r.deliver(1, 1);
    r.deliver(1, 1); // twice: the second is ignored
    r.commit();
    assert_eq!(r.lines(10, "DOWNSTREAM_ACK").len(), 1);
}

// ----- sessions: takeover, acks, paging ---------------------------------------

#[test]
fn takeover_redelivers_the_unacked_with_the_same_sequence_ids() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "m1", None, "tok");
    r.commit();
    r.deliver(1, 1);
    r.commit();
    let first = r.lines(10, "DOWNSTREAM_ACK");
    let seq = first[0]["sequence_id"].as_u64().unwrap();
    r.attach(S, 11);
    let old: Vec<&String> = r
        .written
        .iter()
        .filter(|(c, _)| *c == 10)
        .map(|(_, l)| l)
        .collect();
    assert!(old.iter().any(|l| l.contains("SESSION_TAKEN_OVER")));
    assert_eq!(old.last().map(|s| s.as_str()), Some("<close>"));
    let again = r.lines(11, "DOWNSTREAM_ACK");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["sequence_id"].as_u64(), Some(seq));
    // The old connection's ACK no longer counts; the new one's does.
    r.ack_seq(10, seq);
    r.ack_seq(11, seq);
    r.advance(100);
    let deletes = r
        .submitted
        .iter()
        .flat_map(|b| b.ops.iter())
        .filter(|o| matches!(o, Op::DeleteOutbox { .. }))
        .count();
    assert_eq!(deletes, 1);
    // An unknown sequence id is an error on the connection that sent it.
    r.ack_seq(11, 999);
    assert_eq!(r.lines(11, "ERROR")[0]["error"], "UNKNOWN_SEQUENCE_ID");
}

#[test]
fn the_window_to_a_bal_is_max_unacked() {
    let mut c = cfg();
    c.max_unacked = 2;
    let mut r = Rig::new(c);
    r.attach(S, 10);
    r.ready(1, 10);
    for i in 1..=4 {
        r.send(10, &format!("m{i}"), None, "tok");
    }
    r.commit();
    for id in 1..=4 {
        r.deliver(1, id);
    }
    r.commit();
    let acks = r.lines(10, "DOWNSTREAM_ACK");
    assert_eq!(acks.len(), 2, "two unacked at most");
    let seq = acks[0]["sequence_id"].as_u64().unwrap();
    r.ack_seq(10, seq);
    assert_eq!(r.lines(10, "DOWNSTREAM_ACK").len(), 3);
    // A detach puts the unacked back; they come again on the next logon.
    r.input(Input::Detach {
        session: Arc::from(S),
        conn: 10,
    });
    r.attach(S, 12);
    assert_eq!(r.lines(12, "DOWNSTREAM_ACK").len(), 2);
}

#[test]
fn the_acks_of_bals_ride_along_with_the_next_batch() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "m1", None, "tok");
    r.commit();
    r.deliver(1, 1);
    r.commit();
    let seq = r.lines(10, "DOWNSTREAM_ACK")[0]["sequence_id"]
        .as_u64()
        .unwrap();
    let n = r.submitted.len();
    r.ack_seq(10, seq);
    assert_eq!(r.submitted.len(), n, "an ACK alone costs no commit at once");
    r.advance(49);
    assert_eq!(r.submitted.len(), n);
    r.advance(1);
    assert_eq!(r.submitted.len(), n + 1, "but goes out within 50 ms");
}

#[test]
fn queued_messages_page_in_from_disk() {
    let mut c = cfg();
    c.mem_messages = 4;
    let rec = Recovery {
        next_seq: 1,
        next_id: 11,
        queued: 10,
        outbox: vec![],
    };
    let mut r = Rig::recovered(c, &rec);
    let Some(Output::LoadQueued { after, limit }) = r.loads.pop() else {
        panic!("no page read at start: {:?}", r.loads);
    };
    assert_eq!((after, limit), (0, 4));
    let row = |id: u64| QueuedRow {
        id,
        session: S.into(),
        message_id: format!("q{id}"),
        group_id: None,
        body: format!(r#"{{"to":"tok","message_id":"q{id}"}}"#),
        attempts: 0,
        not_before_ms: 0,
        accepted_at_ms: T0 - 1_000,
        expires_at_ms: T0 + 600_000,
        receipt: false,
    };
    r.input(Input::QueuedPage {
        limit: 4,
        rows: Ok((1..=4).map(row).collect()),
    });
    r.ready(1, 100);
    assert_eq!(r.take_sent(), vec![1, 2, 3, 4]);
    assert!(r.loads.is_empty(), "memory is full (in flight)");
    r.deliver(1, 1);
    assert!(r.loads.is_empty(), "3 of 4 in memory: more than half");
    r.deliver(1, 2);
    // Memory has room again: the next page.
    let Some(Output::LoadQueued { after, .. }) = r.loads.pop() else {
        panic!("no second page: {:?}", r.loads);
    };
    assert_eq!(after, 4);
    // A message accepted while this (full) read runs stays on disk: the
    // next read returns it.
    r.attach(S, 10);
    r.send(10, "new", None, "tok");
    r.commit();
    r.input(Input::QueuedPage {
        limit: 4,
        rows: Ok((5..=8).map(row).collect()),
    });
    assert_eq!(r.take_sent(), vec![5, 6, 7, 8]);
    for id in 3..=8 {
        r.deliver(1, id);
    }
    let Some(Output::LoadQueued { after, .. }) = r.loads.pop() else {
        panic!("no third page: {:?}", r.loads);
    };
    assert_eq!(after, 8);
    // While that read runs, another message is accepted: the read (short:
    // the disk is exhausted) does not return it, so it is taken from
    // memory after the read.
    r.send(10, "newer", None, "tok");
    r.commit();
    let mut new_row = row(11);
    new_row.message_id = "new".into();
    r.input(Input::QueuedPage {
        limit: 4,
        rows: Ok(vec![row(9), row(10), new_row]),
    });
    assert_eq!(r.take_sent(), vec![9, 10, 11, 12]);
    assert!(
        !r.core.snapshot().messages_spilled,
        "memory is complete again"
    );
    // From now on accepted messages go straight to memory (when it has
    // room).
    for id in 9..=12 {
        r.deliver(1, id);
    }
    r.send(10, "newest", None, "tok");
    r.commit();
    assert_eq!(r.take_sent(), vec![13]);
    assert!(r.loads.is_empty());
}

#[test]
fn a_failed_page_read_is_retried() {
    let mut c = cfg();
    c.mem_messages = 4;
    let rec = Recovery {
        next_seq: 1,
        next_id: 3,
        queued: 2,
        outbox: vec![],
    };
    let mut r = Rig::recovered(c, &rec);
    assert_eq!(r.loads.len(), 1);
    r.loads.clear();
    r.input(Input::QueuedPage {
        limit: 4,
        rows: Err(store::StoreError::Stopped),
    });
    r.advance(500);
    assert!(r.loads.is_empty(), "not hammered");
    r.advance(1_000);
    assert!(matches!(
        r.loads.as_slice(),
        [Output::LoadQueued { after: 0, .. }]
    ));
}

#[test]
fn outboxes_page_in_from_disk() {
    let mut c = cfg();
    c.mem_outbox = 2;
    let rec = Recovery {
        next_seq: 10,
        next_id: 1,
        queued: 0,
        outbox: vec![(S.to_string(), 3)],
    };
    let mut r = Rig::recovered(c, &rec);
    assert!(r.loads.is_empty(), "nobody logged on yet");
    r.attach(S, 10);
    let Some(Output::LoadOutbox { after, limit, .. }) = r.loads.pop() else {
        panic!("no outbox read: {:?}", r.loads);
    };
    assert_eq!((after, limit), (0, 2));
    let line = |seq: u64| OutboxRow {
        seq,
        session: S.into(),
        body: format!(
            r#"{{"message_type":"UPSTREAM","sequence_id":{seq},"session_id":"app","fcm_data":{{}}}}"#
        ),
    };
    r.input(Input::OutboxPage {
        session: Arc::from(S),
        limit: 2,
        rows: Ok(vec![line(4), line(6)]),
    });
    assert_eq!(r.lines(10, "UPSTREAM").len(), 2);
    let Some(Output::LoadOutbox { after, .. }) = r.loads.pop() else {
        panic!("no second outbox read: {:?}", r.loads);
    };
    assert_eq!(after, 6);
    // While this read runs, an upstream message is stored for the session
    // (sequence id 10, after everything on disk): held, and delivered after
    // the read's rows without another read.
    r.link(upstream("during-read", S));
    r.commit();
    assert_eq!(
        r.lines(10, "UPSTREAM").len(),
        2,
        "nothing overtakes the disk"
    );
    r.input(Input::OutboxPage {
        session: Arc::from(S),
        limit: 2,
        rows: Ok(vec![line(9)]),
    });
    let seqs: Vec<u64> = r
        .lines(10, "UPSTREAM")
        .iter()
        .map(|l| l["sequence_id"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 6, 9, 10]);
    assert!(r.loads.is_empty(), "the outbox is in memory again");
    assert!(!r.core.snapshot().sessions[0].spilled);
}

// ----- the store contract ------------------------------------------------------

#[test]
fn commit_reports_out_of_order_stop_the_engine() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.send(10, "a", None, "tok");
    r.send(10, "b", None, "tok"); // same turn? No: each input ends a turn.
    assert_eq!(r.batches.len(), 2);
    let second = r.batches[1].no;
    r.input(Input::Committed(Committed {
        no: second,
        ..Committed::default()
    }));
    assert_eq!(r.fatal.len(), 1, "{:?}", r.fatal);
    assert!(
        r.lines(10, "DOWNSTREAM_ACCEPTED").is_empty(),
        "no effect of the wrong batch ran"
    );
}

// ----- inbound --------------------------------------------------------------

fn upstream(id: &str, category: &str) -> LinkEvent {
    let raw = format!(
        r#"{{"from":"dev","category":"{category}","message_id":"{id}","data":{{"k":"v"}}}}"#
    );
    LinkEvent::Upstream {
        link: 1,
        token: UpstreamToken {
            from: "dev".into(),
            message_id: id.into(),
        },
        upstream: serde_json::from_str(&raw).unwrap(),
        raw,
    }
}

#[test]
fn upstream_is_acked_to_fcm_only_after_it_is_stored() {
    let mut r = Rig::new(cfg());
    r.ready(1, 10);
    r.attach(S, 10);
    r.link(upstream("u1", S));
    assert!(r.acks_to_fcm.is_empty());
    r.commit();
    assert_eq!(r.acks_to_fcm.len(), 1);
    assert_eq!(r.acks_to_fcm[0].1.message_id, "u1");
    let up = r.lines(10, "UPSTREAM");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["fcm_data"]["data"]["k"], "v");
    // FCM resends it (after a reconnect): acked again, not delivered twice.
    r.link(upstream("u1", S));
    r.commit();
    assert_eq!(r.acks_to_fcm.len(), 2);
    assert_eq!(r.lines(10, "UPSTREAM").len(), 1);
    // An unknown category is stored as unroutable, and acked.
    r.link(upstream("u2", "nobody"));
    r.commit();
    assert_eq!(r.acks_to_fcm.len(), 3);
    assert_eq!(r.core.snapshot().unroutable, 1);
    assert!(r
        .submitted
        .iter()
        .flat_map(|b| b.ops.iter())
        .any(|o| matches!(o, Op::Upstream { then, .. } if matches!(then.as_slice(), [Op::Unroutable { .. }]))));
}

#[test]
fn a_repeat_the_store_knows_is_not_delivered() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.link(upstream("old", S));
    // The store saw this id before this process did (an earlier run).
    r.commit_with(|b| Committed {
        repeated: b
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Upstream { then, .. } => then.iter().find_map(|t| match t {
                    Op::InsertOutbox { seq, .. } => Some(*seq),
                    _ => None,
                }),
                _ => None,
            })
            .collect(),
        ..Committed::default()
    });
    assert!(r.lines(10, "UPSTREAM").is_empty());
    assert_eq!(r.acks_to_fcm.len(), 1, "still acked");
}

fn receipt(id: &str, orig: &str) -> LinkEvent {
    let raw = format!(
        r#"{{"message_type":"receipt","from":"gcm.googleapis.com","message_id":"{id}","category":"other","data":{{"message_status":"MESSAGE_SENT_TO_DEVICE","original_message_id":"{orig}","device_registration_id":"tok"}}}}"#
    );
    LinkEvent::Receipt {
        link: 1,
        token: UpstreamToken {
            from: "gcm.googleapis.com".into(),
            message_id: id.into(),
        },
        receipt: serde_json::from_str(&raw).unwrap(),
        raw,
    }
}

#[test]
fn receipts_go_to_the_sender_via_memory_or_the_store() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.input(Input::Downstream(Box::new(Incoming {
        session: Arc::from(S),
        conn: 10,
        group_id: None,
        message_id: "wants-receipt".into(),
        body: r#"{"to":"tok","message_id":"wants-receipt","delivery_receipt_requested":true}"#
            .into(),
        ttl_ms: 600_000,
        receipt: true,
        target: "tok".into(),
        rejected: None,
    })));
    r.commit();
    r.deliver(1, 1);
    r.commit();
    // In memory: routed at once.
    r.link(receipt("dr2:1", "wants-receipt"));
    r.commit();
    let rc = r.lines(10, "DOWNSTREAM_RECEIPT");
    assert_eq!(rc.len(), 1);
    assert_eq!(rc[0]["message_id"], "wants-receipt");
    assert_eq!(r.acks_to_fcm.len(), 1);
    // Not in memory: the store is asked, the receipt waits (and so does a
    // resend of it).
    r.link(receipt("dr2:2", "older"));
    let Some(Output::LookupReceipt { key, message_id }) = r.loads.pop() else {
        panic!("no lookup: {:?}", r.loads);
    };
    assert_eq!(message_id, "older");
    r.link(receipt("dr2:2", "older"));
    r.commit();
    assert_eq!(r.acks_to_fcm.len(), 1, "nothing acked before it is stored");
    r.input(Input::ReceiptTarget {
        key,
        target: Ok(Some(ReceiptTarget {
            session: S.into(),
            id: 77,
        })),
    });
    r.commit();
    assert_eq!(r.lines(10, "DOWNSTREAM_RECEIPT").len(), 2);
    assert_eq!(r.acks_to_fcm.len(), 3, "the receipt and its resend");
    assert!(r
        .submitted
        .iter()
        .flat_map(|b| b.ops.iter())
        .any(|o| matches!(o, Op::Upstream { then, .. } if then.iter().any(|t| matches!(t, Op::ReceiptDone { id: 77 })))));
    // Unknown to the store too: routed by its category.
    r.attach("other", 20);
    r.link(receipt("dr2:3", "unknown"));
    let Some(Output::LookupReceipt { key, .. }) = r.loads.pop() else {
        panic!("no lookup");
    };
    r.input(Input::ReceiptTarget {
        key,
        target: Ok(None),
    });
    r.commit();
    assert_eq!(r.lines(20, "DOWNSTREAM_RECEIPT").len(), 1);
}

#[test]
fn a_receipt_before_its_ack_is_routed_without_a_lookup() {
    // FCM may send the receipt on another connection than the ack.
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.input(Input::Downstream(Box::new(Incoming {
        session: Arc::from(S),
        conn: 10,
        group_id: None,
        message_id: "early".into(),
        body: r#"{"to":"tok","message_id":"early","delivery_receipt_requested":true}"#.into(),
        ttl_ms: 600_000,
        receipt: true,
        target: "tok".into(),
        rejected: None,
    })));
    r.commit();
    assert_eq!(r.take_sent(), vec![1]);
    r.link(receipt("dr2:early", "early"));
    assert!(r.loads.is_empty(), "no store lookup: {:?}", r.loads);
    r.commit();
    assert_eq!(r.lines(10, "DOWNSTREAM_RECEIPT").len(), 1);
    r.deliver(1, 1);
    r.commit();
    assert_eq!(r.lines(10, "DOWNSTREAM_ACK").len(), 1);
}

#[test]
fn shutdown_drains_what_is_in_flight_and_takes_nothing_new() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "m1", None, "tok");
    r.send(10, "m2", None, "tok");
    r.commit();
    assert_eq!(r.take_sent(), vec![1, 2]);
    r.send(10, "queued", None, "tok");
    r.core.begin_shutdown(r.now);
    r.collect();
    r.commit();
    assert!(r.sent.is_empty(), "nothing new to FCM while stopping");
    assert!(!r.core.drained(), "two answers outstanding");
    // New work is refused.
    r.send(10, "late", None, "tok");
    let err = r.lines(10, "ERROR");
    assert_eq!(err.last().unwrap()["error"], "SHUTTING_DOWN");
    assert!(err.last().unwrap()["error_description"]
        .as_str()
        .unwrap()
        .contains("late"));
    // The answers still count; their results go out at once (no lazy wait).
    r.deliver(1, 1);
    r.deliver(1, 2);
    assert!(!r.core.drained(), "results not committed yet");
    assert_eq!(r.batches.len(), 2, "each turn's batch goes at once");
    r.commit();
    assert_eq!(r.lines(10, "DOWNSTREAM_ACK").len(), 2);
    assert!(r.core.drained());
    // A result the BAL's window holds back keeps the drain waiting.
    let mut c = cfg();
    c.max_unacked = 1;
    let mut r = Rig::new(c);
    r.attach(S, 10);
    r.ready(1, 10);
    r.send(10, "a", None, "tok");
    r.send(10, "b", None, "tok");
    r.commit();
    r.core.begin_shutdown(r.now);
    r.collect();
    r.deliver(1, 1);
    r.deliver(1, 2);
    r.commit();
    assert_eq!(r.lines(10, "DOWNSTREAM_ACK").len(), 1);
    assert!(!r.core.drained(), "one result still waits for the window");
    let seq = r.lines(10, "DOWNSTREAM_ACK")[0]["sequence_id"]
        .as_u64()
        .unwrap();
    r.ack_seq(10, seq);
    assert_eq!(
        r.batches.len(),
        1,
        "an ACK's delete does not wait for company while stopping"
    );
    r.commit();
    assert_eq!(r.lines(10, "DOWNSTREAM_ACK").len(), 2);
    assert!(r.core.drained());
}

#[test]
fn shutdown_stops_sending_and_flushes_at_once() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    r.send(10, "m", None, "tok");
    r.commit();
    r.ack_seq(10, 12345); // unknown: error only
    r.input(Input::Ack {
        session: Arc::from("other"),
        conn: 99,
        seq: 1,
    });
    r.core.begin_shutdown(r.now);
    r.collect();
    r.ready(1, 10);
    assert!(r.sent.is_empty(), "nothing new to FCM while stopping");
}

/// Captures the log lines written while `f` runs.
fn logged(f: impl FnOnce()) -> String {
    use std::sync::Mutex;
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || out.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(sub, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn repeated_unroutable_warnings_are_rate_limited() {
    let mut r = Rig::new(cfg());
    let log = logged(|| {
        for i in 0..500 {
            r.link(upstream(&format!("nobody-{i}"), "no.such.app"));
        }
        r.advance(10_000);
        r.link(upstream("nobody-late", "no.such.app"));
    });
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("unroutable")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[1].contains("suppressed=499"), "{}", lines[1]);
    // Every one is still stored and counted.
    r.commit();
    assert_eq!(r.core.snapshot().unroutable, 501);
    assert_eq!(r.acks_to_fcm.len(), 501);
}

// ----- ingress (SPEC §10) ---------------------------------------------------

fn post(r: &mut Rig, id: u64, session: &str, mid: &str) {
    r.input(Input::Ingress {
        id,
        session: Arc::from(session),
        message_id: mid.into(),
        fcm_data: format!(
            r#"{{"from":"dev","category":"{session}","message_id":"{mid}","data":{{}},"source":"ingress"}}"#
        ),
    });
}

/// The store's dedupe of `Op::Upstream` (its contract), for scripted
/// commits: an id seen before makes its outbox rows `repeated`.
fn dedupe(seen: &mut std::collections::HashSet<String>, b: &Batch) -> Committed {
    let mut c = Committed::default();
    for op in &b.ops {
        if let Op::Upstream { message_id, then } = op {
            if !seen.insert(message_id.clone()) {
                c.repeated.extend(then.iter().filter_map(|t| match t {
                    Op::InsertOutbox { seq, .. } => Some(*seq),
                    _ => None,
                }));
            }
        }
    }
    c
}

#[test]
fn an_ingress_post_is_answered_only_after_its_commit() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    post(&mut r, 1, S, "u-1");
    assert!(r.ingress.is_empty(), "no answer before the commit");
    assert!(r.lines(10, "UPSTREAM").is_empty());
    let keys: Vec<&str> = r
        .batches
        .iter()
        .flat_map(|b| b.ops.iter())
        .filter_map(|o| match o {
            Op::Upstream { message_id, then } => {
                assert!(matches!(then.as_slice(), [Op::InsertOutbox { .. }]));
                Some(message_id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(keys, vec!["ingress:3:app:u-1"], "namespaced per category");
    let seen = std::cell::RefCell::new(std::collections::HashSet::new());
    r.commit_with(|b| dedupe(&mut seen.borrow_mut(), b));
    assert_eq!(r.ingress, vec![(1, IngressResult::Stored)]);
    let up = r.lines(10, "UPSTREAM");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["fcm_data"]["source"], "ingress");
    assert_eq!(up[0]["session_id"], S);
    // No link was ever ready: the ingress does not need one.
    assert!(r.sent.is_empty());
}

#[test]
fn ingress_duplicates_within_a_batch_and_across_batches() {
    let mut r = Rig::new(cfg());
    r.attach(S, 10);
    let seen = std::cell::RefCell::new(std::collections::HashSet::new());
    // Two posts of one id in the same turn: one batch.
    r.core.handle(
        r.now,
        Input::Ingress {
            id: 1,
            session: Arc::from(S),
            message_id: "u-1".into(),
            fcm_data: "{}".into(),
        },
    );
    r.core.handle(
        r.now,
        Input::Ingress {
            id: 2,
            session: Arc::from(S),
            message_id: "u-1".into(),
            fcm_data: "{}".into(),
        },
    );
    r.core.end_turn(r.now);
    r.collect();
    assert_eq!(r.batches.len(), 1);
    r.commit_with(|b| dedupe(&mut seen.borrow_mut(), b));
    assert_eq!(
        r.ingress,
        vec![(1, IngressResult::Stored), (2, IngressResult::Duplicate)]
    );
    // A later batch, and the same id for another category (not a duplicate).
    post(&mut r, 3, S, "u-1");
    post(&mut r, 4, "other", "u-1");
    r.commit_with(|b| dedupe(&mut seen.borrow_mut(), b));
    assert_eq!(
        r.ingress[2..],
        [(3, IngressResult::Duplicate), (4, IngressResult::Stored)]
    );
    assert_eq!(r.lines(10, "UPSTREAM").len(), 1, "delivered once");
}

#[test]
fn ingress_is_refused_while_the_store_is_degraded_or_stopping() {
    let mut r = Rig::new(cfg());
    r.core.set_store_degraded(true);
    post(&mut r, 1, S, "u-1");
    assert_eq!(r.ingress, vec![(1, IngressResult::StoreUnavailable)]);
    assert!(
        r.batches.iter().all(|b| b.ops.is_empty()),
        "nothing written"
    );
    r.core.set_store_degraded(false);
    post(&mut r, 2, "nobody", "u-2");
    assert_eq!(r.ingress[1], (2, IngressResult::UnknownCategory));
    r.core.begin_shutdown(r.now);
    r.collect();
    post(&mut r, 3, S, "u-3");
    assert_eq!(r.ingress[2], (3, IngressResult::ShuttingDown));
    assert!(r.submitted.iter().all(|b| b.ops.is_empty()));
}

#[test]
fn ingress_keys_never_collide() {
    use super::inbound::ingress_key;
    assert_ne!(ingress_key("a", "b:c"), ingress_key("a:b", "c"));
    assert_ne!(ingress_key("a", "m"), ingress_key("b", "m"));
    assert!(ingress_key("a", "m").starts_with("ingress:"));
}
