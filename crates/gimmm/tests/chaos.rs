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
//! **HTTP v1 mode** (`chaos_soak_on_http_v1_loses_and_duplicates_nothing`,
//! SPEC §8 against the emulator of §9): the same BAL traffic (no upstream
//! messages and no receipts: v1 has neither; a `delivery_receipt_requested`
//! is accepted with a warning) through `fcm.api = "http_v1"`, while the
//! emulator sends GOAWAY on every connection or after N requests, drops
//! connections (all at once, or after N requests), answers bursts of 503
//! `UNAVAILABLE` with `Retry-After`, a fraction of 500 `INTERNAL` and
//! 502/504 HTML answers, delays answers, issues access tokens that live a
//! few seconds, revokes them (401), fails its token endpoint for a while and
//! lowers SETTINGS_MAX_CONCURRENT_STREAMS on new connections; gimmm is
//! SIGKILLed and SIGTERMed as above. Checked at the end besides the ledger:
//! every message ACKed at the BAL was delivered by the emulator, no invalid
//! message reached it, no request went over a connection's stream limit
//! (`over_limit == 0`, every connection's high-water mark within what it
//! advertised).
//!
//! **PostgreSQL mode** (`chaos_soak_on_postgres_loses_and_duplicates_nothing`,
//! SPEC §12): the XMPP soak with the store on the tests' PostgreSQL server
//! (`GIMMM_TEST_POSTGRES_URL`); each restart comes back under the same
//! `cluster.node_id` and takes the writer lease back at once.
//!
//! `GIMMM_CHAOS_SECS` (default 20) sets the chaos phase, `GIMMM_CHAOS_SEED`
//! replays a seed (the decisions, not the timing). The seed is printed.
//! `GIMMM_CHAOS_EVENTS=1` prints the chaos events of a passing run too.
//! `GIMMM_CHAOS_API` (`xmpp` or `http_v1`) runs only that mode's soak (the
//! other test then passes at once, saying so); unset, both run, one after
//! the other.
#![allow(clippy::unwrap_used)]

use emulator::v1::{V1Config, V1Emulator, V1ErrorCode, V1Faults};
use emulator::{Emulator, EmulatorConfig, ErrorCode, Faults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{
    emulator_config, v1_emulator_config, AckPolicy, BalProbe, ChildGateway, ChildOpts, Final,
    Ledger, LedgerWatch, Ports,
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
    /// Invalid messages sent (rejected by validation, never resent), with
    /// their JSON.
    invalid: BTreeMap<String, serde_json::Value>,
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

/// Which FCM link the soak runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Api {
    Xmpp,
    HttpV1,
}

/// A BAL session: sends, receives, ACKs (mostly), disconnects at random,
/// and finds gimmm again after every restart. Returns its connects.
async fn bal_driver(
    api: Api,
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
                    let (group_id, fcm_data, valid, receipt) = message_for(api, idx, next, &mut rng, old.as_deref(), &sent);
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
                            s.invalid.insert(id, fcm_data.clone());
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

/// [`message`] for `api`. On HTTP v1 every message carries its id in
/// `data` (the emulator keys its per-message stats by target and data), and
/// no receipt is expected (v1 has none: the request is accepted with a
/// warning).
fn message_for(
    api: Api,
    idx: usize,
    n: u64,
    rng: &mut StdRng,
    accepted: Option<&str>,
    sent: &Mutex<Sent>,
) -> (Option<String>, serde_json::Value, bool, bool) {
    let (group, mut fcm_data, valid, receipt) = message(idx, n, rng, accepted, sent);
    if api == Api::Xmpp {
        return (group, fcm_data, valid, receipt);
    }
    let id = fcm_data["message_id"].clone();
    match fcm_data.get_mut("data").and_then(|d| d.as_object_mut()) {
        Some(d) => {
            d.insert("id".into(), id);
        }
        None => fcm_data["data"] = serde_json::json!({ "id": id }),
    }
    (group, fcm_data, valid, false)
}

/// The emulator's key of a message sent to the HTTP v1 link: its target
/// and its data, as translated (SPEC §8.2: `to` becomes `token`; the data
/// here holds strings only, which v1 keeps as they are).
fn v1_key(fcm_data: &serde_json::Value) -> String {
    emulator::v1::message_key(&serde_json::json!({
        "token": fcm_data["to"],
        "data": fcm_data["data"],
    }))
    .unwrap()
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

/// Only one soak at a time: each is sized for the 2 cores alone.
static SOAK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether `GIMMM_CHAOS_API` selects `api` (unset: every mode).
fn selected(api: Api) -> bool {
    match std::env::var("GIMMM_CHAOS_API").ok().as_deref() {
        None | Some("") => true,
        Some("xmpp") => api == Api::Xmpp,
        Some("http_v1") => api == Api::HttpV1,
        Some(other) => panic!("GIMMM_CHAOS_API={other:?}: expected xmpp or http_v1"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_loses_and_duplicates_nothing() {
    soak(Api::Xmpp, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_on_http_v1_loses_and_duplicates_nothing() {
    soak(Api::HttpV1, None).await;
}

/// The XMPP soak on the PostgreSQL store (SPEC §12; the tests' server,
/// `GIMMM_TEST_POSTGRES_URL`, skipped without it unless `CI` is set): every
/// SIGKILL and SIGTERM restarts the node under the same `cluster.node_id`,
/// which takes its writer lease back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_on_postgres_loses_and_duplicates_nothing() {
    if !selected(Api::Xmpp) {
        eprintln!("chaos: the PostgreSQL soak runs the XMPP mode, not selected by GIMMM_CHAOS_API; skipped");
        return;
    }
    let Some(url) = store::conformance::postgres_scratch_url().await else {
        return;
    };
    soak(Api::Xmpp, Some(url)).await;
}

fn random_v1_faults(rng: &mut StdRng) -> V1Faults {
    let mut f = V1Faults::default();
    if rng.random_bool(0.5) {
        f.latency = Duration::from_millis(rng.random_range(0..15));
    }
    if rng.random_bool(0.4) {
        f.error_fraction = rng.random_range(0.05..0.3);
        f.error_code = Some(if rng.random_bool(0.5) {
            V1ErrorCode::Unavailable
        } else {
            V1ErrorCode::Internal
        });
        if rng.random_bool(0.5) {
            f.retry_after_secs = Some(rng.random_range(0..=1));
        }
    }
    if rng.random_bool(0.2) {
        f.gateway_error_fraction = rng.random_range(0.05..0.2);
        f.gateway_error_status = Some(if rng.random_bool(0.5) { 502 } else { 504 });
    }
    if rng.random_bool(0.25) {
        f.goaway_after = Some(rng.random_range(20..200));
    }
    if rng.random_bool(0.2) {
        f.drop_after = Some(rng.random_range(20..400));
    }
    if rng.random_bool(0.4) {
        f.token_lifetime_secs = Some(rng.random_range(2..6));
    }
    if rng.random_bool(0.1) {
        f.token_endpoint_error = Some(500);
    }
    if rng.random_bool(0.4) {
        f.max_concurrent_streams = Some([1, 3, 10, 50][rng.random_range(0..4)]);
    }
    f
}

/// The emulator of a soak (one per soak: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Fcm {
    Ccs(Emulator),
    V1 {
        emu: V1Emulator,
        /// Faults in force apart from a 503 burst.
        base: V1Faults,
        /// A 503 burst ends then (the base faults come back).
        burst_until: Option<Instant>,
    },
}

impl Fcm {
    /// The chaos action `roll` (0..=74) on the FCM side; returns its name.
    /// The XMPP mapping and draws are those of the original soak, so its
    /// seeds replay the same decisions.
    fn act(
        &mut self,
        roll: u32,
        rng: &mut StdRng,
        t: u128,
        events: &mut Vec<String>,
    ) -> &'static str {
        match self {
            Fcm::Ccs(emu) => match roll {
                0..=14 => {
                    emu.drain_all();
                    events.push(format!("{t} ms drain_all"));
                    "drains"
                }
                15..=29 => {
                    emu.drop_all();
                    events.push(format!("{t} ms drop_all"));
                    "drops"
                }
                30..=59 => {
                    let f = random_faults(rng);
                    events.push(format!("{t} ms faults {f:?}"));
                    emu.set_faults(f);
                    "fault changes"
                }
                _ => {
                    emu.set_faults(Faults::default());
                    events.push(format!("{t} ms faults cleared"));
                    "clears"
                }
            },
            Fcm::V1 {
                emu,
                base,
                burst_until,
            } => match roll {
                0..=11 => {
                    emu.goaway_all();
                    events.push(format!("{t} ms goaway_all"));
                    "GOAWAYs"
                }
                12..=23 => {
                    emu.drop_all();
                    events.push(format!("{t} ms drop_all"));
                    "drops"
                }
                24..=35 => {
                    // A burst of 503 UNAVAILABLE with Retry-After over the
                    // base faults, for a moment.
                    let mut f = base.clone();
                    f.error_fraction = rng.random_range(0.3..=1.0);
                    f.error_code = Some(V1ErrorCode::Unavailable);
                    f.retry_after_secs = Some(rng.random_range(0..=2));
                    let lasts = Duration::from_millis(rng.random_range(200..1500));
                    events.push(format!(
                        "{t} ms 503 burst for {lasts:?}: fraction {:.2}, Retry-After {:?} s",
                        f.error_fraction, f.retry_after_secs
                    ));
                    emu.set_faults(f).unwrap();
                    *burst_until = Some(Instant::now() + lasts);
                    "503 bursts"
                }
                36..=59 => {
                    let f = random_v1_faults(rng);
                    events.push(format!("{t} ms faults {f:?}"));
                    emu.set_faults(f.clone()).unwrap();
                    *base = f;
                    *burst_until = None;
                    "fault changes"
                }
                60..=64 => {
                    emu.revoke_tokens();
                    events.push(format!("{t} ms revoke_tokens"));
                    "token revocations"
                }
                _ => {
                    emu.set_faults(V1Faults::default()).unwrap();
                    *base = V1Faults::default();
                    *burst_until = None;
                    events.push(format!("{t} ms faults cleared"));
                    "clears"
                }
            },
        }
    }

    /// Ends a 503 burst whose time is up.
    fn tick(&mut self, t: u128, events: &mut Vec<String>) {
        if let Fcm::V1 {
            emu,
            base,
            burst_until,
        } = self
        {
            if burst_until.is_some_and(|u| Instant::now() >= u) {
                *burst_until = None;
                emu.set_faults(base.clone()).unwrap();
                events.push(format!("{t} ms 503 burst over"));
            }
        }
    }

    fn clear(&mut self) {
        match self {
            Fcm::Ccs(emu) => emu.set_faults(Faults::default()),
            Fcm::V1 {
                emu,
                base,
                burst_until,
            } => {
                *base = V1Faults::default();
                *burst_until = None;
                emu.set_faults(V1Faults::default()).unwrap();
            }
        }
    }

    fn summary(&self) -> String {
        match self {
            Fcm::Ccs(emu) => summary(emu),
            Fcm::V1 { emu, .. } => v1_summary(emu),
        }
    }
}

/// One soak of `api`, on SQLite or, with `store_url`, on PostgreSQL.
async fn soak(api: Api, store_url: Option<String>) {
    if !selected(api) {
        eprintln!("chaos: {api:?} soak not selected by GIMMM_CHAOS_API; skipped");
        return;
    }
    let _one_at_a_time = SOAK.lock().await;
    let secs: u64 = std::env::var("GIMMM_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("GIMMM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "chaos: {api:?}: seed {seed} (replay with GIMMM_CHAOS_SEED={seed}), {secs} s of chaos"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    // HTTP v1 draws its chaos decisions from a generator of their own, so a
    // seed replays the same sequence of actions and faults whatever the
    // timing (the XMPP mode draws them from `rng`, as its recorded seeds
    // expect, and so replays them only as far as the timing repeats).
    let mut decide = (api == Api::HttpV1).then(|| StdRng::seed_from_u64(seed ^ 0x0dec_1de5));

    let dir = tempfile::tempdir().unwrap();
    let (mut fcm, mut cfg) = match api {
        Api::Xmpp => {
            let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
            let cfg = emulator_config(&emu, dir.path(), &SESSIONS).unwrap();
            (Fcm::Ccs(emu), cfg)
        }
        Api::HttpV1 => {
            let emu = V1Emulator::start(V1Config::default()).await.unwrap();
            let cfg = v1_emulator_config(&emu, dir.path(), &SESSIONS).unwrap();
            (
                Fcm::V1 {
                    emu,
                    base: V1Faults::default(),
                    burst_until: None,
                },
                cfg,
            )
        }
    };
    let on = if store_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    if let Some(url) = store_url {
        cfg.store.url = gateway::config::Secret::new(url);
        cfg.cluster.node_id = "chaos-node".into();
    }
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
            api,
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
    let (mut kills, mut terms) = (0, 0);
    let mut actions: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = Instant::now();
    let chaos_end = started + Duration::from_secs(secs);
    let mut next_action = Instant::now() + Duration::from_millis(rng.random_range(100..600));
    let mut data = serde_json::Map::new();
    data.insert("hello".into(), "device".into());

    // ---- chaos ---------------------------------------------------------
    while Instant::now() < chaos_end {
        sleep(Duration::from_millis(rng.random_range(5..40))).await;
        // Devices talk all the time (CCS only: HTTP v1 has no upstream).
        if let Fcm::Ccs(emu) = &fcm {
            let i = rng.random_range(0..SESSIONS.len());
            upstream.push((
                emu.send_upstream(
                    &format!("dev-{}", rng.random_range(0..20)),
                    SESSIONS[i].0,
                    data.clone(),
                ),
                i,
            ));
        }
        fcm.tick(started.elapsed().as_millis(), &mut events);
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
        let d: &mut StdRng = match decide.as_mut() {
            Some(d) => d,
            None => &mut rng,
        };
        match d.random_range(0..100) {
            roll @ 0..=74 => {
                let what = fcm.act(roll, d, t, &mut events);
                *actions.entry(what).or_default() += 1;
            }
            75..=89 => {
                let st = gw.kill().await.unwrap();
                assert!(!st.success());
                kills += 1;
                events.push(format!("{t} ms SIGKILL gimmm"));
                sleep(Duration::from_millis(d.random_range(0..200))).await;
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
    fcm.clear();
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
            "{api:?} seed {seed}: not settled after {settle_limit:?}: {why}\nchaos events:\n{}\ngimmm log:\n{}\nemulator: {}",
            events.join("\n"),
            gw.log_tail(40),
            fcm.summary()
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
    let ccs_stats = match &fcm {
        Fcm::Ccs(emu) => Some(emu.stats()),
        Fcm::V1 { .. } => None,
    };
    let v1_stats = match &fcm {
        Fcm::V1 { emu, .. } => Some(emu.stats()),
        Fcm::Ccs(_) => None,
    };
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
        // For an ACK the gateway did not expect: what that sequence id
        // carried, and how often it came.
        let named: Vec<String> = errors
            .iter()
            .filter_map(|(_, d)| d.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|seq| format!("sequence_id {seq}: {:?}", l.deliveries.get(&seq)))
            .collect();
        assert!(
            errors.is_empty() && l.conflicts.is_empty() && l.bad_lines.is_empty(),
            "{api:?} seed {seed}: session {i}: errors {:?} ({named:?}), conflicts {:?}, bad lines {:?}\nchaos events:\n{}\ngimmm log:\n{}",
            errors,
            l.conflicts,
            l.bad_lines,
            events.join("\n"),
            gw.log_tail(40)
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
            panic!("{api:?} seed {seed}: session {i}: {e}");
        }
        for id in &l.accepted {
            let kind = l.final_of(id).unwrap();
            if *kind == Final::Ack {
                if let Some(stats) = &ccs_stats {
                    assert!(
                        stats.msg(id).acked >= 1,
                        "seed {seed}: {id} ACKed at the BAL, never acked by FCM"
                    );
                }
                if let Some(stats) = &v1_stats {
                    assert!(
                        stats.msg(&v1_key(&s.valid[id].1)).delivered >= 1,
                        "http_v1 seed {seed}: {id} ACKed at the BAL, never delivered by FCM"
                    );
                }
                acks += 1;
            }
            *kinds.entry(kind.kind().to_string()).or_default() += 1;
        }
        for (id, json) in &s.invalid {
            if let Some(stats) = &ccs_stats {
                assert_eq!(
                    stats.msg(id).received,
                    0,
                    "seed {seed}: invalid {id} was sent to FCM"
                );
            }
            if let Some(stats) = &v1_stats {
                assert_eq!(
                    stats.msg(&v1_key(json)).received,
                    0,
                    "http_v1 seed {seed}: invalid {id} was sent to FCM"
                );
            }
        }
        // Every upstream message and receipt arrived once (one sequence id).
        if let Err(e) = l.each_delivered_once() {
            panic!("{api:?} seed {seed}: session {i}: {e}");
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
    let delivered_up: usize = upstream.len();
    assert_eq!(
        up_total, delivered_up,
        "seed {seed}: upstream delivered vs sent"
    );
    let n = |k: &str| actions.get(k).copied().unwrap_or(0);
    let emulator_line = if let Some(stats) = &ccs_stats {
        assert_eq!(stats.window_violations, 0, "seed {seed}: window violations");
        format!(
            "{} drains, {} drops, {} fault changes; emulator: {} downstream received ({} duplicates), {} nacks, max pending {}, 0 window violations",
            n("drains"),
            n("drops"),
            n("fault changes"),
            stats.downstream_received,
            stats.duplicates,
            stats.nacks_sent,
            stats.max_pending_high_water(),
        )
    } else if let Some(stats) = &v1_stats {
        // No request over the stream limit, on any connection.
        assert_eq!(
            stats.over_limit, 0,
            "http_v1 seed {seed}: requests over the stream limit"
        );
        for c in stats.connections.iter().filter(|c| c.alpn == "h2") {
            assert!(
                c.over_limit == 0 && c.streams_high_water <= u64::from(c.max_concurrent_streams),
                "http_v1 seed {seed}: connection {} had {} streams at once (advertised {}), {} over the limit",
                c.id,
                c.streams_high_water,
                c.max_concurrent_streams,
                c.over_limit
            );
        }
        let limits: std::collections::BTreeSet<u32> = stats
            .connections
            .iter()
            .filter(|c| c.alpn == "h2")
            .map(|c| c.max_concurrent_streams)
            .collect();
        format!(
            "{} GOAWAYs (goaway_all), {} drops (drop_all), {} 503 bursts, {} fault changes, {} token revocations; \
             emulator: {} requests, {} delivered ({} duplicates), by status {:?}, {} GOAWAYs sent, {} connections dropped, \
             {} connections (stream limits {limits:?}, high-water {}), 0 over the limit, {} tokens issued, {} refused, {} unauthenticated",
            n("GOAWAYs"),
            n("drops"),
            n("503 bursts"),
            n("fault changes"),
            n("token revocations"),
            stats.requests,
            stats.delivered,
            stats.duplicates,
            stats.by_status,
            stats.goaways_sent,
            stats.drops,
            stats.connections_opened,
            stats.max_streams_high_water(),
            stats.tokens_issued,
            stats.tokens_refused,
            stats.unauthenticated,
        )
    } else {
        String::new()
    };

    eprintln!(
        "chaos: {api:?} on {on}: seed {seed}, {secs} s chaos + {:?} settle: {accepted} accepted, {finals} final results ({acks} ACK; by kind {kinds:?}), \
         0 lost, 0 duplicated; {up_total} upstream delivered once each; {receipts} receipts once each; \
         {redeliveries} redeliveries (same sequence_id), {dup_answers} duplicate:true answers; \
         {kills} SIGKILL, {terms} SIGTERM, {emulator_line}",
        settle_start.elapsed(),
    );
    for l in report {
        eprintln!("chaos: {l}");
    }
    if std::env::var_os("GIMMM_CHAOS_EVENTS").is_some() {
        eprintln!("chaos events:\n{}", events.join("\n"));
    }

    let st = gw.term().await.unwrap();
    assert!(st.success(), "final SIGTERM: {st}");
    let text = gw.stderr();
    assert!(
        !text.contains("panicked"),
        "gimmm panicked:\n{}",
        gw.log_tail(40)
    );
    match fcm {
        Fcm::Ccs(emu) => emu.shutdown().await,
        Fcm::V1 { emu, .. } => emu.shutdown().await,
    }
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

fn v1_summary(emu: &V1Emulator) -> String {
    let s = emu.stats_summary();
    format!(
        "requests {} delivered {} duplicates {} by status {:?} by error code {:?} goaways {} drops {} dropped requests {} over limit {} tokens issued {} refused {} unauthenticated {} open connections {}",
        s.requests,
        s.delivered,
        s.duplicates,
        s.by_status,
        s.by_error_code,
        s.goaways_sent,
        s.drops,
        s.dropped_requests,
        s.over_limit,
        s.tokens_issued,
        s.tokens_refused,
        s.unauthenticated,
        s.open_connections(),
    )
}
