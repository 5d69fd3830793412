//! The measured cases: one per hot path of a message's life in the gateway
//! (SPEC §3.2 acceptance, §8.2 HTTP v1 translation, §8.1 CCS stanzas, §5
//! durable store). Inputs are fixed, typical messages; every iteration's
//! result is checked.

use std::hint::black_box;
use std::sync::Arc;

/// One case: its name (the baseline's key), what it measures, and its
/// runner (`iterations` → a checksum of the results).
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) run: fn(u64) -> Result<u64, String>,
}

/// Every case, in the order the table prints them.
pub(crate) const ALL: &[Case] = &[
    Case {
        name: "bal_downstream_xmpp",
        what: "one DOWNSTREAM line from a BAL: bal::proto::FromBalRef::parse, strict fcm_data parse, message id, XMPP-link validation (fcm::v1::reject_v1_blocks + fcm::validate_downstream_owned)",
        run: bal_downstream_xmpp,
    },
    Case {
        name: "bal_downstream_v1",
        what: "the same line validated for the HTTP v1 link (fcm::v1::validate_owned instead)",
        run: bal_downstream_v1,
    },
    Case {
        name: "v1_translate",
        what: "the HTTP v1 request body of a stored message: serde_json parse of the stored text + fcm::v1::translate_into",
        run: v1_translate,
    },
    Case {
        name: "ccs_encode",
        what: "one downstream <message><gcm> stanza appended to a reused write buffer (xmpp::writer::append_gcm_message)",
        run: ccs_encode,
    },
    Case {
        name: "ccs_decode_ack",
        what: "one CCS ack stanza: StanzaReader::feed + next_event, then fcm::parse_inbound of its <gcm> text",
        run: ccs_decode_ack,
    },
    Case {
        name: "store_lifecycle_64",
        what: "64 messages through the SQLite store on tmpfs: a batch of inserts, a batch of finish + DOWNSTREAM_ACK outbox rows, a batch of outbox deletes (3 commits); per iteration = 64 messages",
        run: store_lifecycle,
    },
];

/// A registration token of FCM's usual length.
const TOKEN: &str = "dGhpcyBpcyBhIGJlbmNoIHRva2Vu:APA91bHPRgkF3JUikC4ENAHEeMrd41Zxv3hVZjC9KtT8OvPVGJ-hQMRKRrZuJAEcl7B338qju59zJMjw2DELjzEvxwYv7hH5Ynpc1ODQ0aT4U4OFEeco8ohsN5PjL1iC2dNtk2BAokeMCg2ZXKqpc8FXKmhX94kIxQ";

/// A typical `fcm_data`: token, 3 data keys, notification title and body,
/// time_to_live (the same message as `crates/fcm/benches/v1.rs`).
fn typical_fcm_data() -> String {
    format!(
        r#"{{"to":"{TOKEN}","message_id":"bench-1234abcd-42","data":{{"score":"3x1","match":"chat-42","minute":"87"}},"notification":{{"title":"Goal!","body":"3x1 in the 87th minute"}},"time_to_live":600}}"#
    )
}

/// The BAL line carrying [`typical_fcm_data`].
fn downstream_line() -> Vec<u8> {
    format!(
        r#"{{"message_type":"DOWNSTREAM","group_id":"g7","fcm_data":{}}}"#,
        typical_fcm_data()
    )
    .into_bytes()
}

/// Which link's acceptance rules (as `gateway::session::prepare::Rules`).
#[derive(Clone, Copy)]
enum Rules {
    Xmpp,
    HttpV1,
}

/// What `gateway::session::prepare::downstream` does with a line that has
/// a message id, minus building the engine's `Incoming`: decode the line,
/// parse `fcm_data` strictly, read the message id, validate. Returns the
/// TTL, which the gateway reads next.
fn accept(line: &[u8], rules: Rules) -> Result<u64, String> {
    let fcm_data = match bal::proto::FromBalRef::parse(line) {
        Ok(bal::proto::FromBalRef::Downstream { fcm_data, .. }) => fcm_data,
        Ok(_) => return Err("the line did not decode as a DOWNSTREAM".into()),
        Err((code, desc)) => return Err(format!("line refused: {} {desc}", code.as_str())),
    };
    let raw = fcm_data.get();
    let v = fcm::strict::from_str_strict(raw).map_err(|e| format!("fcm_data refused: {e}"))?;
    let message_id = v
        .get("message_id")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .ok_or("no message_id")?;
    // The gateway keeps the text as received (no re-serialization).
    let body = raw.to_string();
    let checked = match rules {
        Rules::Xmpp => {
            fcm::v1::reject_v1_blocks(&v).and_then(|()| fcm::validate_downstream_owned(v))
        }
        Rules::HttpV1 => fcm::v1::validate_owned(v).map(|a| a.downstream),
    };
    let d = checked.map_err(|r| format!("rejected: {} {}", r.code.as_str(), r.description))?;
    black_box((&message_id, &body));
    Ok(u64::from(d.time_to_live.unwrap_or(0)))
}

fn bal_downstream(n: u64, rules: Rules) -> Result<u64, String> {
    let line = downstream_line();
    let mut sum = 0u64;
    for _ in 0..n {
        sum += accept(black_box(&line), rules)?;
    }
    Ok(sum)
}

fn bal_downstream_xmpp(n: u64) -> Result<u64, String> {
    bal_downstream(n, Rules::Xmpp)
}

fn bal_downstream_v1(n: u64) -> Result<u64, String> {
    bal_downstream(n, Rules::HttpV1)
}

/// The HTTP v1 link's request body (as `Conn::body` in the gateway's
/// `link/http_v1/conn.rs`): parse the stored text, translate into a string
/// sized for it.
fn v1_translate(n: u64) -> Result<u64, String> {
    const ACCEPTED: i64 = 1_700_000_000_000;
    let stored = typical_fcm_data();
    let mut sum = 0u64;
    for _ in 0..n {
        let text = black_box(stored.as_str());
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("stored message is not JSON: {e}"))?;
        let mut s = String::with_capacity(text.len() + 192);
        fcm::v1::translate_into(&v, ACCEPTED, ACCEPTED + 1500, &mut s)
            .map_err(|r| format!("translation refused: {}", r.description))?;
        sum += black_box(s).len() as u64;
    }
    Ok(sum)
}

/// The XMPP link's write path: a message's stored text as a stanza, into
/// the write buffer that is flushed once per batch (cleared here each time,
/// as after a flush).
fn ccs_encode(n: u64) -> Result<u64, String> {
    let body = typical_fcm_data();
    let mut out: Vec<u8> = Vec::with_capacity(8192);
    let mut sum = 0u64;
    for _ in 0..n {
        out.clear();
        xmpp::writer::append_gcm_message(&mut out, None, black_box(&body));
        sum += black_box(&out).len() as u64;
    }
    if n > 0 && !out.starts_with(b"<message><gcm") {
        return Err("unexpected stanza".into());
    }
    Ok(sum)
}

/// The XMPP link's read path for the commonest stanza, an ack: bytes into
/// the reader (one stanza per read, as on a quiet link), the stanza out,
/// its JSON classified.
fn ccs_decode_ack(n: u64) -> Result<u64, String> {
    let mut reader = xmpp::StanzaReader::new(xmpp::DEFAULT_MAX_STANZA_BYTES);
    reader.feed(xmpp::writer::server_stream_header("fcm.googleapis.com", "ICOUNT1").as_bytes());
    match reader.next_event() {
        Ok(Some(xmpp::Event::StreamStart { .. })) => {}
        other => return Err(format!("no stream header: {other:?}")),
    }
    let ack =
        format!(r#"{{"from":"{TOKEN}","message_id":"bench-1234abcd-42","message_type":"ack"}}"#);
    let stanza = xmpp::writer::gcm_message(None, &ack);
    let mut sum = 0u64;
    for _ in 0..n {
        reader.feed(black_box(stanza.as_bytes()));
        let gcm = match reader.next_event() {
            Ok(Some(xmpp::Event::Message(m))) => m.gcm.ok_or("a message without <gcm>")?,
            other => return Err(format!("expected a message, got {other:?}")),
        };
        match fcm::parse_inbound(&gcm) {
            Ok(fcm::Inbound::Ack(a)) => sum += a.message_id.len() as u64,
            Ok(_) => return Err("not an ack".into()),
            Err(e) => return Err(format!("ack JSON refused: {e}")),
        }
        if !matches!(reader.next_event(), Ok(None)) {
            return Err("more than one event per stanza".into());
        }
    }
    Ok(sum)
}

/// Messages per store iteration.
const STORE_MSGS: u64 = 64;
/// Iterations run before measuring starts (also when `n` = 0), so that the
/// tables and indexes are not trivially small.
const STORE_HISTORY: u64 = 20;

/// The store and the channel its commits are reported on.
struct StoreRig {
    store: store::sqlite::SqliteStore,
    committed: tokio::sync::mpsc::UnboundedReceiver<store::Committed>,
    batch_no: u64,
    next_id: u64,
    session: Arc<str>,
}

impl StoreRig {
    fn commit(&mut self, ops: Vec<store::Op>) -> Result<(), String> {
        use store::Store as _;
        self.batch_no += 1;
        self.store
            .submit(store::Batch {
                no: self.batch_no,
                ops,
            })
            .map_err(|e| format!("submit: {e}"))?;
        let c = self
            .committed
            .blocking_recv()
            .ok_or("the store stopped reporting")?;
        if c.no != self.batch_no || c.error.is_some() || !c.duplicates.is_empty() {
            return Err(format!("unexpected commit report: {c:?}"));
        }
        Ok(())
    }

    /// A downstream message's writes, as the engine batches them.
    fn lifecycle(&mut self) -> Result<(), String> {
        const T0: i64 = 1_700_000_000_000;
        let ids = self.next_id..self.next_id + STORE_MSGS;
        self.next_id += STORE_MSGS;
        let inserts = ids
            .clone()
            .map(|id| {
                store::Op::InsertDownstream(store::NewDownstream {
                    id,
                    session: self.session.clone(),
                    message_id: format!("m-{id}"),
                    group_id: None,
                    body: format!(
                        r#"{{"to":"bench-device-{}","message_id":"m-{id}","time_to_live":3600,"data":{{"score":"3x1"}}}}"#,
                        id % 1000
                    ),
                    accepted_at_ms: T0,
                    expires_at_ms: T0 + 3_600_000,
                    receipt: false,
                })
            })
            .collect();
        self.commit(inserts)?;
        let mut acked = Vec::with_capacity(2 * STORE_MSGS as usize);
        for id in ids.clone() {
            acked.push(store::Op::FinishDownstream { id });
            acked.push(store::Op::InsertOutbox {
                seq: id,
                session: self.session.clone(),
                body: format!(
                    r#"{{"message_type":"DOWNSTREAM_ACK","sequence_id":{id},"session_id":"com.example.app","message_id":"m-{id}","fcm_data":{{"from":"bench-device-1","message_id":"m-{id}","message_type":"ack"}}}}"#
                )
                .into(),
            });
        }
        self.commit(acked)?;
        let deletes = ids
            .map(|seq| store::Op::DeleteOutbox {
                session: self.session.clone(),
                seq,
            })
            .collect();
        self.commit(deletes)
    }
}

/// The SQLite store's write path on tmpfs (`/dev/shm`; a temporary
/// directory where there is none), fsync included: on tmpfs it is a cheap
/// syscall, and callgrind counts user-space instructions only. Retention is
/// off and the clock manual: pruning runs on a wall-clock schedule, which
/// under callgrind's slowdown would make the count depend on time.
fn store_lifecycle(n: u64) -> Result<u64, String> {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .map_err(|e| format!("temporary directory: {e}"))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let options = store::StoreOptions {
        retention: None,
        clock: store::Clock::manual(1_700_000_000_000),
        ..store::StoreOptions::default()
    };
    let (store, _) =
        store::sqlite::SqliteStore::open_with(&dir.path().join("icount.db"), tx, options)
            .map_err(|e| format!("open: {e}"))?;
    let mut rig = StoreRig {
        store,
        committed: rx,
        batch_no: 0,
        next_id: 1,
        session: Arc::from("com.example.app"),
    };
    for _ in 0..STORE_HISTORY + n {
        rig.lifecycle()?;
    }
    Ok(rig.next_id - 1)
}
