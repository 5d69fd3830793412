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

use emulator::{Emulator, EmulatorConfig, ErrorCode, Faults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{
    emulator_config, AckPolicy, BalProbe, ChildGateway, ChildOpts, Final, Ledger, LedgerWatch,
    Ports,
};
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

const SESSIONS: [(&str, &str); 2] = [
    ("com.example.app", "chaos-token-1"),
    ("com.example.other", "chaos-token-2"),
];

/// What one BAL session sent (what it received is in its probe's ledger).
/// Never locked while the ledger is borrowed, or the other way round.
#[derive(Default)]
struct Sent {
    /// Valid messages sent, with their JSON and group.
    valid: BTreeMap<String, (Option<String>, serde_json::Value)>,
    /// Invalid messages sent (rejected by validation, never resent).
    invalid: HashSet<String>,
    /// Receipt requested (valid messages).
    receipt_requested: HashSet<String>,
}

impl Sent {
    /// Valid messages sent but not (yet) seen ACCEPTED.
    fn unanswered(&self, accepted: &std::collections::BTreeSet<String>) -> Vec<String> {
        self.valid
            .keys()
            .filter(|id| !accepted.contains(*id))
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

/// A BAL session: sends, receives, ACKs (mostly), disconnects at random,
/// and finds gimmm again after every restart. Returns its connects.
async fn bal_driver(
    idx: usize,
    mut ports: watch::Receiver<Option<Ports>>,
    seed: u64,
    mut probe: BalProbe,
    sent: Arc<Mutex<Sent>>,
    mut phase: watch::Receiver<Phase>,
) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = 0u64;
    // Leave a few unACKed during the chaos: they come back after a reconnect.
    let ack_rng = Mutex::new(StdRng::seed_from_u64(seed ^ 0xac4));
    let ack_phase = phase.clone();
    probe.set_ack(AckPolicy::Decide(Arc::new(move |_| {
        *ack_phase.borrow() != Phase::Chaos || ack_rng.lock().unwrap().random_bool(0.97)
    })));
    let ledger = probe.ledger();
    let accepted = || ledger.with(|l| l.accepted.clone());
    'outer: loop {
        if *phase.borrow() == Phase::Stop {
            return probe.connects();
        }
        if probe
            .follow(&mut ports, Duration::from_millis(500))
            .await
            .is_err()
        {
            continue;
        }
        // Resend what was sent but not seen ACCEPTED (idempotent by message id).
        let acc = accepted();
        let resend: Vec<(Option<String>, serde_json::Value)> = {
            let s = sent.lock().unwrap();
            s.unanswered(&acc)
                .into_iter()
                .map(|id| s.valid[&id].clone())
                .collect()
        };
        for (group_id, fcm_data) in resend {
            if probe.downstream(group_id, fcm_data).is_err() {
                continue 'outer;
            }
        }
        let life = Duration::from_millis(rng.random_range(500..4000));
        let hang_up = Instant::now() + life;
        let closed = probe.closed();
        tokio::pin!(closed);
        let mut tick = tokio::time::interval(Duration::from_millis(4));
        loop {
            let p = *phase.borrow();
            if p == Phase::Stop {
                probe.disconnect();
                return probe.connects();
            }
            tokio::select! {
                _ = &mut closed => break,
                _ = tick.tick(), if p == Phase::Chaos => {
                    let acc = accepted();
                    let pending = sent.lock().unwrap().valid.len().saturating_sub(acc.len());
                    if pending > 300 {
                        continue;
                    }
                    let old = acc.iter().next().cloned();
                    let (group_id, fcm_data, valid, receipt) = message(idx, next, &mut rng, old.as_deref(), &sent);
                    next += 1;
                    let id = fcm_data["message_id"].as_str().unwrap().to_string();
                    {
                        let mut s = sent.lock().unwrap();
                        if valid {
                            s.valid.entry(id.clone()).or_insert((group_id.clone(), fcm_data.clone()));
                            if receipt {
                                s.receipt_requested.insert(id);
                            }
                        } else {
                            s.invalid.insert(id);
                        }
                    }
                    if probe.downstream(group_id, fcm_data).is_err() { break; }
                }
                _ = sleep(Duration::from_millis(50)), if p != Phase::Chaos => {
                    // Settling: keep resending what was never answered.
                    let acc = accepted();
                    let unanswered = !sent.lock().unwrap().unanswered(&acc).is_empty();
                    if unanswered && rng.random_bool(0.05) { break; }
                }
                _ = sleep(hang_up.saturating_duration_since(Instant::now())), if p == Phase::Chaos => break,
                _ = phase.changed() => {}
            }
        }
        probe.disconnect();
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
    accepted: Option<&str>,
    sent: &Mutex<Sent>,
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
            let s = sent.lock().unwrap();
            match accepted.and_then(|old| s.valid.get(old)) {
                Some((g, v)) => (g.clone(), v.clone(), true, false),
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
    let mut cfg = emulator_config(&emu, dir.path(), &SESSIONS).unwrap();
    cfg.fcm.connections = 2;
    cfg.retry.max_ms = 400;
    cfg.retry.max_attempts = 10;
    cfg.admin.listen = String::new();
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm")).dir(dir.path());
    let mut gw = ChildGateway::spawn(&cfg, opts).await.unwrap();

    let (phase_tx, phase_rx) = watch::channel(Phase::Chaos);
    let sent: Vec<Arc<Mutex<Sent>>> = (0..SESSIONS.len()).map(|_| Arc::default()).collect();
    let mut ledgers: Vec<LedgerWatch> = Vec::new();
    let mut drivers = Vec::new();
    for (i, (session, token)) in SESSIONS.iter().enumerate() {
        let probe = BalProbe::new(*session, *token);
        ledgers.push(probe.ledger());
        drivers.push(tokio::spawn(bal_driver(
            i,
            gw.follow(),
            seed.wrapping_add(1 + i as u64),
            probe,
            sent[i].clone(),
            phase_rx.clone(),
        )));
    }

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
        if let Some(status) = gw.try_wait().unwrap() {
            panic!(
                "gimmm exited on its own ({status}); log:\n{}",
                gw.log_tail(40)
            );
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
                let st = gw.kill().await.unwrap();
                assert!(!st.success());
                kills += 1;
                events.push(format!("{t} ms SIGKILL gimmm"));
                sleep(Duration::from_millis(rng.random_range(0..200))).await;
                gw.restart().await.unwrap();
            }
            90..=93 => {
                let st = gw.term().await.expect("SIGTERM must end gimmm");
                assert!(
                    st.success(),
                    "SIGTERM must end in exit 0, got {st}; log:\n{}",
                    gw.log_tail(40)
                );
                terms += 1;
                events.push(format!("{t} ms SIGTERM gimmm"));
                gw.restart().await.unwrap();
            }
            _ => events.push(format!("{t} ms (calm)")),
        }
    }

    // ---- settle: chaos off, everything must complete ---------------------
    emu.set_faults(Faults::default());
    phase_tx.send(Phase::Settle).unwrap();
    let settle_limit = Duration::from_secs(90);
    let settle_start = Instant::now();
    let settled = async {
        for (i, ledger) in ledgers.iter().enumerate() {
            let mine: Vec<&String> = upstream
                .iter()
                .filter(|(_, s)| *s == i)
                .map(|(id, _)| id)
                .collect();
            let left = settle_limit.saturating_sub(settle_start.elapsed());
            let waited = ledger
                .wait_until(&format!("session {i} to settle"), left, |l| {
                    unsettled(l, &sent[i], &mine).is_none()
                })
                .await;
            if waited.is_err() {
                let why = ledger.with(|l| unsettled(l, &sent[i], &mine));
                return Err(format!("session {i}: {}", why.unwrap_or_default()));
            }
        }
        Ok(())
    };
    let outcome = tokio::select! {
        r = settled => r,
        st = gw.wait() => Err(format!("gimmm exited on its own ({st:?})")),
    };
    if let Err(why) = outcome {
        panic!(
            "seed {seed}: not settled after {settle_limit:?}: {why}\nchaos events:\n{}\ngimmm log:\n{}\nemulator: {:?}",
            events.join("\n"),
            gw.log_tail(40),
            summary(&emu)
        );
    }
    // A little longer: a late duplicate would show up now.
    sleep(Duration::from_millis(500)).await;
    phase_tx.send(Phase::Stop).unwrap();
    let mut reconnects = Vec::new();
    for d in drivers {
        reconnects.push(
            timeout(Duration::from_secs(10), d)
                .await
                .ok()
                .and_then(Result::ok),
        );
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
    for (i, ledger) in ledgers.iter().enumerate() {
        let l = ledger.snapshot();
        let s = sent[i].lock().unwrap();
        // SHUTTING_DOWN is the answer to a DOWNSTREAM sent while a SIGTERM
        // drains (SPEC §11): not accepted, so the driver resends it.
        let errors: Vec<_> = l
            .errors
            .iter()
            .filter(|(e, _)| *e != bal::proto::BalError::ShuttingDown)
            .collect();
        assert!(
            errors.is_empty() && l.conflicts.is_empty() && l.bad_lines.is_empty(),
            "seed {seed}: session {i}: errors {:?}, conflicts {:?}, bad lines {:?}",
            errors,
            l.conflicts,
            l.bad_lines
        );
        let strays: Vec<&String> = l
            .accepted
            .iter()
            .filter(|id| !s.valid.contains_key(*id))
            .collect();
        assert!(
            strays.is_empty(),
            "seed {seed}: session {i}: ACCEPTED for invalid or unknown messages {strays:?}"
        );
        // Every accepted message has exactly one final result, and no
        // message (invalid ones included) more than one.
        if let Err(e) = l.exactly_one_final(&l.accepted) {
            panic!("seed {seed}: session {i}: {e}");
        }
        for id in &l.accepted {
            let kind = l.final_of(id).unwrap();
            if *kind == Final::Ack {
                assert!(
                    stats.msg(id).acked >= 1,
                    "seed {seed}: {id} ACKed at the BAL, never acked by FCM"
                );
                acks += 1;
            }
            *kinds.entry(kind.kind().to_string()).or_default() += 1;
        }
        for id in &s.invalid {
            assert_eq!(
                stats.msg(id).received,
                0,
                "seed {seed}: invalid {id} was sent to FCM"
            );
        }
        // Every upstream message and receipt arrived once (one sequence id).
        if let Err(e) = l.each_delivered_once() {
            panic!("seed {seed}: session {i}: {e}");
        }
        accepted += l.accepted.len();
        finals += l.finals.len();
        up_total += l.upstream.len();
        receipts += l.receipts.len();
        redeliveries += l.redeliveries();
        dup_answers += l.duplicate_accepts;
        report.push(format!(
            "session {i}: {} valid sent, {} invalid, {} accepted, {} reconnects",
            s.valid.len(),
            s.invalid.len(),
            l.accepted.len(),
            reconnects[i].map_or("?".to_string(), |n| n.to_string()),
        ));
    }
    for (id, i) in &upstream {
        for (j, ledger) in ledgers.iter().enumerate() {
            if j != *i {
                assert!(
                    !ledger.with(|l| l.upstream.contains_key(id)),
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

    let st = gw.term().await.unwrap();
    assert!(st.success(), "final SIGTERM: {st}");
    let text = gw.stderr();
    assert!(
        !text.contains("panicked"),
        "gimmm panicked:\n{}",
        gw.log_tail(40)
    );
    emu.shutdown().await;
}

/// Why session `i` has not settled yet (`None`: it has): a valid message
/// never ACCEPTED, an accepted one without a final result, a requested
/// receipt missing for an ACKed message, an upstream message not delivered.
fn unsettled(l: &Ledger, sent: &Mutex<Sent>, upstream: &[&String]) -> Option<String> {
    let s = sent.lock().unwrap();
    if let Some(id) = s.valid.keys().find(|id| !l.accepted.contains(*id)) {
        return Some(format!("{id} never ACCEPTED"));
    }
    if let Some(id) = l.accepted.iter().find(|id| !l.finals.contains_key(*id)) {
        return Some(format!("{id} accepted, no final result"));
    }
    if let Some(id) = s
        .receipt_requested
        .iter()
        .find(|id| l.final_of(id) == Some(&Final::Ack) && !l.receipts.contains_key(*id))
    {
        return Some(format!("no receipt for {id}"));
    }
    if let Some(id) = upstream.iter().find(|id| !l.upstream.contains_key(**id)) {
        return Some(format!("upstream {id} not delivered"));
    }
    None
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
