//! Chaos soak (issue 6): `gimmm serve` as a child process under mixed
//! traffic while everything around it misbehaves at random moments.
//!
//! Traffic: two BAL sessions send downstream messages (ungrouped and
//! grouped, some with delivery receipts, some to `unregistered…` tokens that
//! FCM refuses for good, some invalid, some resent on purpose), simulated
//! devices send upstream messages to both sessions.
//!
//! Chaos: the emulator drains and drops connections, delays answers, nacks a
//! fraction (`SERVICE_UNAVAILABLE` / `INTERNAL_SERVER_ERROR`, retried by
//! gimmm), writes in 1-byte chunks, uses the `data:gcm` form, sends
//! keepalives; the driver SIGKILLs (and sometimes SIGTERMs) gimmm and
//! restarts it on the same store; the BALs disconnect and reconnect, leave
//! results unACKed and resend messages whose ACCEPTED they missed.
//!
//! At the end, with the chaos stopped: every message answered
//! DOWNSTREAM_ACCEPTED has exactly one final result (one distinct
//! sequence_id), every upstream message reached its session exactly once,
//! every receipt once, the emulator saw no window violation, and gimmm never
//! died on its own.
//!
//! `GIMMM_CHAOS_SECS` (default 20) sets the chaos phase, `GIMMM_CHAOS_SEED`
//! replays a seed (the decisions, not the timing). The seed is printed.
#![allow(clippy::unwrap_used)]

use bal::proto::FromBal;
use bal::{BalClient, ToBal};
use emulator::{Emulator, EmulatorConfig, ErrorCode, Faults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, Instant};

const SESSIONS: [(&str, &str); 2] = [
    ("com.example.app", "chaos-token-1"),
    ("com.example.other", "chaos-token-2"),
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, emu: &Emulator, bal_port: u16) -> PathBuf {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem()).unwrap();
    let mut cfg = format!(
        "[fcm]\nhost = \"127.0.0.1\"\nport = {}\nsender_id = \"{}\"\nserver_key = \"{}\"\nca_file = \"{}\"\nconnections = 2\n\n\
         [retry]\ninitial_ms = 20\nmax_ms = 400\nmax_attempts = 10\n\n\
         [bal]\nlisten = \"127.0.0.1:{bal_port}\"\n\n[store]\npath = \"{}\"\n\n[admin]\nlisten = \"\"\n",
        emu.addr().port(),
        emu.sender_id(),
        emu.server_key(),
        ca.display(),
        dir.join("gimmm.db").display()
    );
    for (s, t) in SESSIONS {
        cfg.push_str(&format!(
            "\n[[bal.sessions]]\nsession_id = \"{s}\"\ntoken = \"{t}\"\n"
        ));
    }
    let p = dir.join("gimmm.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn spawn_gimmm(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Everything one BAL session saw.
#[derive(Default)]
struct Record {
    /// Valid messages sent, in order, with their JSON and group.
    valid: BTreeMap<String, (Option<String>, serde_json::Value)>,
    /// Invalid messages sent (rejected by validation, never resent).
    invalid: HashSet<String>,
    /// Valid messages answered ACCEPTED.
    accepted: HashSet<String>,
    /// Receipt requested (valid messages).
    receipt_requested: HashSet<String>,
    /// message_id -> distinct sequence ids of final results.
    finals: HashMap<String, HashSet<u64>>,
    /// message_id -> the final's kind ("ACK" or the reject code).
    final_kind: HashMap<String, String>,
    /// upstream message_id -> distinct sequence ids.
    upstream: HashMap<String, HashSet<u64>>,
    /// original message_id -> distinct sequence ids of receipts.
    receipts: HashMap<String, HashSet<u64>>,
    /// sequence_id -> the line's identity, to check a redelivery is the same.
    by_seq: HashMap<u64, String>,
    duplicate_answers: u64,
    redeliveries: u64,
    errors: Vec<String>,
    reconnects: u64,
}

impl Record {
    fn note(&mut self, m: &ToBal) {
        match m {
            ToBal::DownstreamAccepted {
                message_id,
                duplicate,
                ..
            } => {
                if *duplicate {
                    self.duplicate_answers += 1;
                }
                if self.valid.contains_key(message_id) {
                    self.accepted.insert(message_id.clone());
                } else {
                    self.errors.push(format!(
                        "ACCEPTED for an invalid or unknown message {message_id}"
                    ));
                }
            }
            ToBal::Error {
                error,
                error_description,
            } => {
                self.errors
                    .push(format!("ERROR {error}: {error_description}"));
            }
            _ => {}
        }
        let Some(seq) = m.sequence_id() else { return };
        let identity = match m {
            ToBal::DownstreamAck { message_id, .. } => format!("ACK {message_id}"),
            ToBal::DownstreamReject {
                message_id, error, ..
            } => format!("REJECT {message_id} {error}"),
            ToBal::DownstreamReceipt { message_id, .. } => format!("RECEIPT {message_id}"),
            ToBal::Upstream { fcm_data, .. } => format!("UPSTREAM {}", fcm_data["message_id"]),
            other => format!("{other:?}"),
        };
        match self.by_seq.get(&seq) {
            Some(prev) if *prev != identity => {
                self.errors.push(format!(
                    "sequence_id {seq} carried {prev} and then {identity}"
                ));
            }
            Some(_) => self.redeliveries += 1,
            None => {
                self.by_seq.insert(seq, identity);
            }
        }
        match m {
            ToBal::DownstreamAck { message_id, .. } => {
                self.finals
                    .entry(message_id.clone())
                    .or_default()
                    .insert(seq);
                self.final_kind.insert(message_id.clone(), "ACK".into());
            }
            ToBal::DownstreamReject {
                message_id, error, ..
            } => {
                self.finals
                    .entry(message_id.clone())
                    .or_default()
                    .insert(seq);
                self.final_kind.insert(message_id.clone(), error.clone());
            }
            ToBal::DownstreamReceipt { message_id, .. } => {
                self.receipts
                    .entry(message_id.clone())
                    .or_default()
                    .insert(seq);
            }
            ToBal::Upstream { fcm_data, .. } => {
                let id = fcm_data["message_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                self.upstream.entry(id).or_default().insert(seq);
            }
            _ => {}
        }
    }

    /// Valid messages sent but not (yet) seen ACCEPTED.
    fn unanswered(&self) -> Vec<String> {
        self.valid
            .keys()
            .filter(|id| !self.accepted.contains(*id))
            .cloned()
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Chaos,
    Settle,
    Stop,
}

/// A BAL session: sends, receives, ACKs (mostly), disconnects at random.
async fn bal_driver(
    idx: usize,
    addr: SocketAddr,
    seed: u64,
    rec: Arc<Mutex<Record>>,
    mut phase: watch::Receiver<Phase>,
) {
    let (session, token) = SESSIONS[idx];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = 0u64;
    'outer: loop {
        if *phase.borrow() == Phase::Stop {
            return;
        }
        let client = loop {
            match BalClient::connect_logon(addr, session, token).await {
                Ok(c) => break c,
                Err(_) => {
                    if *phase.borrow() == Phase::Stop {
                        return;
                    }
                    sleep(Duration::from_millis(30)).await;
                }
            }
        };
        rec.lock().unwrap().reconnects += 1;
        let (mut rd, mut wr) = client.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<ToBal>();
        let reader = tokio::spawn(async move {
            while let Ok(m) = rd.recv().await {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        // Resend what was sent but not seen ACCEPTED (idempotent by message id).
        let resend: Vec<(String, Option<String>, serde_json::Value)> = {
            let r = rec.lock().unwrap();
            r.unanswered()
                .into_iter()
                .map(|id| {
                    let (g, v) = r.valid[&id].clone();
                    (id, g, v)
                })
                .collect()
        };
        for (_, group_id, fcm_data) in resend {
            if wr
                .send(&FromBal::Downstream { group_id, fcm_data })
                .await
                .is_err()
            {
                reader.abort();
                continue 'outer;
            }
        }
        let _ = wr.flush().await;
        let life = Duration::from_millis(rng.random_range(500..4000));
        let hang_up = Instant::now() + life;
        let mut tick = tokio::time::interval(Duration::from_millis(4));
        loop {
            let p = *phase.borrow();
            if p == Phase::Stop {
                reader.abort();
                return;
            }
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { break };
                    rec.lock().unwrap().note(&m);
                    if let Some(seq) = m.sequence_id() {
                        // Leave a few unACKed: they come back after a reconnect.
                        if p != Phase::Chaos || rng.random_bool(0.97) {
                            if wr.send(&FromBal::Ack { sequence_id: seq }).await.is_err() { break; }
                            if rx.is_empty() && wr.flush().await.is_err() { break; }
                        }
                    }
                }
                _ = tick.tick(), if p == Phase::Chaos => {
                    let pending = {
                        let r = rec.lock().unwrap();
                        r.valid.len() - r.accepted.len()
                    };
                    if pending > 300 {
                        continue;
                    }
                    let (group_id, fcm_data, valid, receipt) = message(idx, next, &mut rng, &rec);
                    next += 1;
                    let id = fcm_data["message_id"].as_str().unwrap().to_string();
                    {
                        let mut r = rec.lock().unwrap();
                        if valid {
                            r.valid.entry(id.clone()).or_insert((group_id.clone(), fcm_data.clone()));
                            if receipt {
                                r.receipt_requested.insert(id);
                            }
                        } else {
                            r.invalid.insert(id);
                        }
                    }
                    if wr.send(&FromBal::Downstream { group_id, fcm_data }).await.is_err() { break; }
                    if wr.flush().await.is_err() { break; }
                }
                _ = sleep(Duration::from_millis(50)), if p != Phase::Chaos => {
                    // Settling: keep resending what was never answered.
                    let resend = rec.lock().unwrap().unanswered();
                    if !resend.is_empty() && rng.random_bool(0.05) { break; }
                }
                _ = sleep(hang_up.saturating_duration_since(Instant::now())), if p == Phase::Chaos => break,
                _ = phase.changed() => {}
            }
        }
        reader.abort();
        if *phase.borrow() == Phase::Chaos {
            sleep(Duration::from_millis(rng.random_range(0..300))).await;
        }
    }
}

/// The next message of session `idx`: (group, fcm_data, valid, receipt).
fn message(
    idx: usize,
    n: u64,
    rng: &mut StdRng,
    rec: &Arc<Mutex<Record>>,
) -> (Option<String>, serde_json::Value, bool, bool) {
    let id = format!("s{idx}-{n}");
    let roll: u32 = rng.random_range(0..100);
    let dev = format!("dev-{}", rng.random_range(0..20));
    match roll {
        0..=59 => (
            None,
            serde_json::json!({"to": dev, "message_id": id, "data": {"n": n.to_string()}}),
            true,
            false,
        ),
        60..=79 => (
            Some(format!("g{}", rng.random_range(0..4))),
            serde_json::json!({"to": dev, "message_id": id, "data": {"n": n.to_string()}}),
            true,
            false,
        ),
        80..=86 => (
            None,
            serde_json::json!({"to": dev, "message_id": id, "delivery_receipt_requested": true}),
            true,
            true,
        ),
        87..=91 => (
            None,
            serde_json::json!({"to": format!("unregistered-{dev}"), "message_id": id}),
            true,
            false,
        ),
        92..=94 => (
            None,
            serde_json::json!({"to": dev, "message_id": id, "time_to_live": 9_999_999}),
            false,
            false,
        ),
        _ => {
            // Resend an accepted message on purpose: answered duplicate, not sent again.
            let r = rec.lock().unwrap();
            match r.accepted.iter().next() {
                Some(old) => {
                    let (g, v) = r.valid[old].clone();
                    (g, v, true, false)
                }
                None => (
                    None,
                    serde_json::json!({"to": dev, "message_id": id}),
                    true,
                    false,
                ),
            }
        }
    }
}

fn random_faults(rng: &mut StdRng) -> Faults {
    let mut f = Faults::default();
    if rng.random_bool(0.5) {
        f.ack_delay = Duration::from_millis(rng.random_range(0..15));
    }
    if rng.random_bool(0.5) {
        f.nack_fraction = rng.random_range(0.05..0.3);
        f.nack_code = Some(if rng.random_bool(0.5) {
            ErrorCode::ServiceUnavailable
        } else {
            ErrorCode::InternalServerError
        });
    }
    if rng.random_bool(0.15) {
        f.chunk_size = Some(1);
    } else if rng.random_bool(0.2) {
        f.chunk_size = Some(rng.random_range(2..64));
    }
    f.prefixed = rng.random_bool(0.3);
    if rng.random_bool(0.3) {
        f.keepalive_every = Some(Duration::from_millis(rng.random_range(20..200)));
    }
    if rng.random_bool(0.3) {
        f.receipt_delay = Duration::from_millis(rng.random_range(0..50));
    }
    if rng.random_bool(0.2) {
        f.drain_after = Some(rng.random_range(20..200));
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_loses_and_duplicates_nothing() {
    let secs: u64 = std::env::var("GIMMM_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("GIMMM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos: seed {seed} (replay with GIMMM_CHAOS_SEED={seed}), {secs} s of chaos");
    let mut rng = StdRng::seed_from_u64(seed);

    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bal_port = free_port();
    let config = write_config(dir.path(), &emu, bal_port);
    let log = dir.path().join("gimmm.log");
    let addr: SocketAddr = format!("127.0.0.1:{bal_port}").parse().unwrap();
    let mut child = spawn_gimmm(&config, &log);

    let (phase_tx, phase_rx) = watch::channel(Phase::Chaos);
    let records: Vec<Arc<Mutex<Record>>> = (0..SESSIONS.len()).map(|_| Arc::default()).collect();
    let drivers: Vec<_> = (0..SESSIONS.len())
        .map(|i| {
            tokio::spawn(bal_driver(
                i,
                addr,
                seed.wrapping_add(1 + i as u64),
                records[i].clone(),
                phase_rx.clone(),
            ))
        })
        .collect();

    let mut upstream: Vec<(String, usize)> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    let (mut kills, mut terms, mut drains, mut drops, mut fault_changes) = (0, 0, 0, 0, 0);
    let started = Instant::now();
    let chaos_end = started + Duration::from_secs(secs);
    let mut next_action = Instant::now() + Duration::from_millis(rng.random_range(100..600));
    let mut data = serde_json::Map::new();
    data.insert("hello".into(), "device".into());

    // ---- chaos ---------------------------------------------------------
    while Instant::now() < chaos_end {
        sleep(Duration::from_millis(rng.random_range(5..40))).await;
        // Devices talk all the time.
        let i = rng.random_range(0..SESSIONS.len());
        upstream.push((
            emu.send_upstream(
                &format!("dev-{}", rng.random_range(0..20)),
                SESSIONS[i].0,
                data.clone(),
            ),
            i,
        ));
        // gimmm must never die on its own.
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gimmm exited on its own ({status}); log:\n{}", tail(&log));
        }
        if Instant::now() < next_action {
            continue;
        }
        next_action = Instant::now() + Duration::from_millis(rng.random_range(100..900));
        let t = started.elapsed().as_millis();
        match rng.random_range(0..100) {
            0..=14 => {
                emu.drain_all();
                drains += 1;
                events.push(format!("{t} ms drain_all"));
            }
            15..=29 => {
                emu.drop_all();
                drops += 1;
                events.push(format!("{t} ms drop_all"));
            }
            30..=59 => {
                let f = random_faults(&mut rng);
                events.push(format!("{t} ms faults {f:?}"));
                emu.set_faults(f);
                fault_changes += 1;
            }
            60..=74 => {
                emu.set_faults(Faults::default());
                events.push(format!("{t} ms faults cleared"));
            }
            75..=89 => {
                child.start_kill().unwrap();
                let st = timeout(Duration::from_secs(10), child.wait())
                    .await
                    .unwrap()
                    .unwrap();
                assert!(!st.success());
                kills += 1;
                events.push(format!("{t} ms SIGKILL gimmm"));
                sleep(Duration::from_millis(rng.random_range(0..200))).await;
                child = spawn_gimmm(&config, &log);
            }
            90..=93 => {
                let pid = child.id().unwrap();
                std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .unwrap();
                let st = timeout(Duration::from_secs(20), child.wait())
                    .await
                    .expect("SIGTERM must end gimmm")
                    .unwrap();
                assert!(
                    st.success(),
                    "SIGTERM must end in exit 0, got {st}; log:\n{}",
                    tail(&log)
                );
                terms += 1;
                events.push(format!("{t} ms SIGTERM gimmm"));
                child = spawn_gimmm(&config, &log);
            }
            _ => events.push(format!("{t} ms (calm)")),
        }
    }

    // ---- settle: chaos off, everything must complete ---------------------
    emu.set_faults(Faults::default());
    phase_tx.send(Phase::Settle).unwrap();
    let settle_limit = Duration::from_secs(90);
    let settle_start = Instant::now();
    let done = |records: &[Arc<Mutex<Record>>], upstream: &[(String, usize)]| -> Option<String> {
        for (i, r) in records.iter().enumerate() {
            let r = r.lock().unwrap();
            if let Some(id) = r.valid.keys().find(|id| !r.accepted.contains(*id)) {
                return Some(format!("session {i}: {id} never ACCEPTED"));
            }
            if let Some(id) = r.accepted.iter().find(|id| !r.finals.contains_key(*id)) {
                return Some(format!("session {i}: {id} accepted, no final result"));
            }
            if let Some(id) = r.receipt_requested.iter().find(|id| {
                r.final_kind.get(*id).is_some_and(|k| k == "ACK") && !r.receipts.contains_key(*id)
            }) {
                return Some(format!("session {i}: no receipt for {id}"));
            }
        }
        for (id, i) in upstream {
            if !records[*i].lock().unwrap().upstream.contains_key(id) {
                return Some(format!("upstream {id} not delivered to session {i}"));
            }
        }
        None
    };
    loop {
        match done(&records, &upstream) {
            None => break,
            Some(why) => {
                if settle_start.elapsed() > settle_limit {
                    panic!(
                        "seed {seed}: not settled after {settle_limit:?}: {why}\nchaos events:\n{}\ngimmm log:\n{}\nemulator: {:?}",
                        events.join("\n"),
                        tail(&log),
                        summary(&emu)
                    );
                }
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gimmm exited on its own ({status}); log:\n{}", tail(&log));
        }
        sleep(Duration::from_millis(100)).await;
    }
    // A little longer: a late duplicate would show up now.
    sleep(Duration::from_millis(500)).await;
    phase_tx.send(Phase::Stop).unwrap();
    for d in drivers {
        let _ = timeout(Duration::from_secs(10), d).await;
    }

    // ---- checks ----------------------------------------------------------
    let stats = emu.stats();
    let mut report = Vec::new();
    let (
        mut accepted,
        mut finals,
        mut acks,
        mut up_total,
        mut receipts,
        mut redeliveries,
        mut dup_answers,
    ) = (0, 0, 0, 0, 0, 0, 0);
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let r = r.lock().unwrap();
        assert!(
            r.errors.is_empty(),
            "seed {seed}: session {i}: {:?}",
            r.errors
        );
        for id in &r.accepted {
            let n = r.finals[id].len();
            assert_eq!(
                n, 1,
                "seed {seed}: session {i}: message {id} got {n} different final results"
            );
            if r.final_kind[id] == "ACK" {
                assert!(
                    stats.msg(id).acked >= 1,
                    "seed {seed}: {id} ACKed at the BAL, never acked by FCM"
                );
                acks += 1;
            }
            *kinds.entry(r.final_kind[id].clone()).or_default() += 1;
        }
        for id in &r.invalid {
            let n = r.finals.get(id).map_or(0, HashSet::len);
            assert!(n <= 1, "seed {seed}: invalid message {id} got {n} results");
            assert_eq!(
                stats.msg(id).received,
                0,
                "seed {seed}: invalid {id} was sent to FCM"
            );
        }
        for (id, seqs) in &r.upstream {
            assert_eq!(
                seqs.len(),
                1,
                "seed {seed}: upstream {id} delivered {} times",
                seqs.len()
            );
        }
        for (id, seqs) in &r.receipts {
            assert_eq!(
                seqs.len(),
                1,
                "seed {seed}: receipt for {id} delivered {} times",
                seqs.len()
            );
        }
        accepted += r.accepted.len();
        finals += r.finals.len();
        up_total += r.upstream.len();
        receipts += r.receipts.len();
        redeliveries += r.redeliveries;
        dup_answers += r.duplicate_answers;
        report.push(format!(
            "session {i}: {} valid sent, {} invalid, {} accepted, {} reconnects",
            r.valid.len(),
            r.invalid.len(),
            r.accepted.len(),
            r.reconnects
        ));
    }
    for (id, i) in &upstream {
        for (j, r) in records.iter().enumerate() {
            if j != *i {
                assert!(
                    !r.lock().unwrap().upstream.contains_key(id),
                    "seed {seed}: upstream {id} reached the wrong session"
                );
            }
        }
    }
    assert_eq!(stats.window_violations, 0, "seed {seed}: window violations");
    let delivered_up: usize = upstream.len();
    assert_eq!(
        up_total, delivered_up,
        "seed {seed}: upstream delivered vs sent"
    );

    eprintln!(
        "chaos: seed {seed}, {secs} s chaos + {:?} settle: {accepted} accepted, {finals} final results ({acks} ACK; by kind {kinds:?}), \
         0 lost, 0 duplicated; {up_total} upstream delivered once each; {receipts} receipts once each; \
         {redeliveries} redeliveries (same sequence_id), {dup_answers} duplicate:true answers; \
         {kills} SIGKILL, {terms} SIGTERM, {drains} drains, {drops} drops, {fault_changes} fault changes; \
         emulator: {} downstream received ({} duplicates), {} nacks, max pending {}, 0 window violations",
        settle_start.elapsed(),
        stats.downstream_received,
        stats.duplicates,
        stats.nacks_sent,
        stats.max_pending_high_water(),
    );
    for l in report {
        eprintln!("chaos: {l}");
    }

    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let st = timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "final SIGTERM: {st}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("panicked"),
        "gimmm panicked:\n{}",
        tail(&log)
    );
    emu.shutdown().await;
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn summary(emu: &Emulator) -> String {
    let s = emu.stats_summary();
    format!(
        "received {} acks {} nacks {} dup {} upstream sent {} acked {} resent {} unacked {} receipts {} acked {} window violations {}",
        s.downstream_received,
        s.acks_sent,
        s.nacks_sent,
        s.duplicates,
        s.upstream_sent,
        s.upstream_acked,
        s.upstream_resent,
        s.upstream_unacked,
        s.receipts_sent,
        s.receipts_acked,
        s.window_violations
    )
}
