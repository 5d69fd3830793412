//! Resource faults of the store (issue 6):
//!
//! * the store's disk fills up: new DOWNSTREAMs are answered with
//!   `ERROR STORE_UNAVAILABLE` (never ACCEPTED), nothing already stored is
//!   lost, and gimmm recovers when space returns. The disk is a small tmpfs
//!   mounted for the test (needs root / CAP_SYS_ADMIN, as on the project's
//!   machines and CI; elsewhere the test prints a skip notice);
//! * the store is in use by another gimmm: `gimmm serve` refuses to start,
//!   exits non-zero and names the lock; a SIGKILLed owner leaves no stale
//!   lock behind.
#![allow(clippy::unwrap_used)]

use bal::{BalClient, FromBal, ToBal};
use emulator::{Emulator, EmulatorConfig, Faults};
use gateway::config::Config;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{
    emulator_config, in_process, recv_until, AckPolicy, BalProbe, ChildError, ChildGateway,
    ChildOpts,
};
use tokio::time::{timeout, Instant};

const SESSION: &str = "com.example.app";
const TOKEN: &str = "dev-token";
const WAIT: Duration = Duration::from_secs(20);

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) -> PathBuf {
        let p = self.path().join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        for size in [64 * 1024, 4096, 1] {
            let buf = vec![0u8; size];
            while f.write_all(&buf).is_ok() {}
        }
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The test config with its store at `store` (the emulator's CA goes to
/// `aux`, not to the small file system under test).
fn config(aux: &Path, store: &Path, emu: &Emulator) -> Config {
    let mut cfg = emulator_config(emu, aux, &[(SESSION, TOKEN)]).unwrap();
    cfg.retry.max_ms = 200;
    cfg.admin.listen = String::new();
    cfg.store.path = store.to_path_buf();
    cfg
}

fn big(id: &str) -> serde_json::Value {
    serde_json::json!({"to": "dev-full", "message_id": id, "data": {"blob": "z".repeat(3500)}})
}

/// Sends one DOWNSTREAM on a plain client; its direct answer (ACCEPTED or
/// ERROR), ACKing sequenced messages on the way; `None` when nothing
/// arrives for `within`.
async fn send_raw(c: &mut BalClient, data: serde_json::Value, within: Duration) -> Option<ToBal> {
    c.downstream(None, data).await.unwrap();
    recv_until(c, within, |m| {
        matches!(m, ToBal::DownstreamAccepted { .. } | ToBal::Error { .. })
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_new_messages_keeps_stored_ones_and_recovers() {
    let Some(fs) = Tmpfs::mount("6m") else { return };
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let aux = tempfile::tempdir().unwrap();
    let cfg = config(aux.path(), &fs.path().join("gimmm.db"), &emu);
    let gw = in_process(&cfg, &emu).await.unwrap();
    let mut probe = BalProbe::new(SESSION, TOKEN);
    probe.connect(gw.bal_addr).await.unwrap();
    let mut promised: Vec<String> = Vec::new();

    // Stored and answered while FCM holds them: accepted, not final yet.
    emu.set_faults(Faults {
        ack_delay: Duration::from_secs(3600),
        ..Faults::default()
    });
    for i in 0..30 {
        let id = format!("held-{i}");
        let m = probe.send_and_answer(None, big(&id), WAIT).await.unwrap();
        assert!(matches!(m, ToBal::DownstreamAccepted { .. }), "{m:?}");
        promised.push(id);
    }
    match emu.wait_until(WAIT, |s| s.downstream_received >= 30).await {
        Ok(_) => {}
        Err(s) => panic!("emulator got {} of 30", s.downstream_received),
    }

    // The disk fills up.
    let filler = fs.fill();
    let mut refused = Vec::new();
    for i in 0..400 {
        let id = format!("full-{i}");
        let m = probe
            .send_and_answer(None, big(&id), WAIT)
            .await
            .expect("an answer while the disk is full");
        match m {
            ToBal::DownstreamAccepted { .. } => promised.push(id),
            ToBal::Error {
                error,
                error_description,
            } => {
                assert_eq!(
                    error,
                    bal::BalError::StoreUnavailable,
                    "{error_description}"
                );
                eprintln!(
                    "refused after {} more accepted: {error_description}",
                    promised.len() - 30
                );
                refused.push(id);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused.len(), 1, "the disk never filled up");
    // While it stays full, every new message is refused at once.
    for i in 0..5 {
        let id = format!("refused-{i}");
        let t = Instant::now();
        let m = probe
            .send_and_answer(None, big(&id), Duration::from_secs(5))
            .await
            .expect("a prompt answer");
        assert!(
            matches!(
                &m,
                ToBal::Error {
                    error: bal::BalError::StoreUnavailable,
                    ..
                }
            ),
            "{id}: {m:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        refused.push(id);
    }
    // The session stays usable.
    probe.ping().unwrap();
    assert_eq!(probe.next_reply(WAIT).await.unwrap(), ToBal::Pong);

    // Space returns; FCM answers again (the held messages are resent on the
    // new connections).
    std::fs::remove_file(&filler).unwrap();
    emu.set_faults(Faults::default());
    emu.drop_all();
    let deadline = Instant::now() + WAIT;
    loop {
        let id = format!("after-{}", promised.len());
        match probe.send_and_answer(None, big(&id), WAIT).await.unwrap() {
            ToBal::DownstreamAccepted { .. } => {
                promised.push(id);
                break;
            }
            m => {
                assert!(Instant::now() < deadline, "no recovery: {m:?}");
                refused.push(id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Every promise kept, exactly once; nothing refused was ever sent.
    probe
        .wait_finals_for(&promised, WAIT)
        .await
        .expect("missing finals");
    let seen = probe.snapshot();
    seen.assert_exactly_one_final(&promised);
    let stats = emu.stats();
    for id in &refused {
        assert!(
            !seen.finals.contains_key(id),
            "{id} was refused but got a result"
        );
        assert_eq!(
            stats.msg(id).received,
            0,
            "{id} was refused but sent to FCM"
        );
    }
    for id in &promised {
        assert!(stats.msg(id).acked >= 1, "{id}");
    }
    eprintln!(
        "disk full: {} promised and delivered, {} refused",
        promised.len(),
        refused.len()
    );
    gw.stop().await;
    emu.shutdown().await;
}

/// While the disk is full, a batch that is not only new messages (here: an
/// upstream message to store) cannot be committed; the store writer retries
/// it until space returns. Nothing is lost: afterwards the DOWNSTREAM sent
/// meanwhile is answered and the upstream message arrives once. With
/// `strict`, the DOWNSTREAM must also be answered while the disk is full.
async fn disk_full_with_other_writes(strict: bool) {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let aux = tempfile::tempdir().unwrap();
    let cfg = config(aux.path(), &fs.path().join("gimmm.db"), &emu);
    let gw = in_process(&cfg, &emu).await.unwrap();
    let mut probe = BalProbe::new(SESSION, TOKEN);
    probe.connect(gw.bal_addr).await.unwrap();
    let filler = fs.fill();
    // Make sure the WAL cannot absorb anything more.
    for i in 0..400 {
        if let Ok(ToBal::Error { .. }) = probe
            .send_and_answer(None, big(&format!("fill-{i}")), WAIT)
            .await
        {
            break;
        }
    }
    let mut data = serde_json::Map::new();
    data.insert("k".into(), "v".into());
    let up = emu.send_upstream("dev-up", SESSION, data);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let answer = probe
        .send_and_answer(None, big("while-stuck"), Duration::from_secs(3))
        .await
        .ok();
    eprintln!(
        "answer while the disk is full, after {:?}: {answer:?}",
        t.elapsed()
    );
    std::fs::remove_file(&filler).unwrap();
    // After recovery: the DOWNSTREAM is answered and the upstream arrives once.
    let deadline = Instant::now() + WAIT;
    let mut answered = answer.is_some();
    while !answered {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = probe
            .next_reply(left)
            .await
            .unwrap_or_else(|e| panic!("answered=false: {e}"));
        match &m {
            ToBal::DownstreamAccepted { message_id, .. }
            | ToBal::Error {
                error_description: message_id,
                ..
            } if message_id.contains("while-stuck") => {
                eprintln!(
                    "answered after recovery, {:?} after sending: {m:?}",
                    t.elapsed()
                );
                answered = true;
            }
            _ => {}
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    probe
        .wait_until("the upstream message", left, |l| {
            l.upstream_lines_total() >= 1
        })
        .await
        .unwrap();
    // No second delivery of the upstream message: nothing more up to a PONG.
    probe.ping().unwrap();
    loop {
        if probe.next_reply(WAIT).await.unwrap() == ToBal::Pong {
            break;
        }
    }
    let seen = probe.snapshot();
    assert_eq!(
        seen.upstream.keys().collect::<Vec<_>>(),
        [&up],
        "{}",
        seen.summary()
    );
    assert_eq!(
        seen.upstream_lines_total(),
        1,
        "upstream delivered twice: {}",
        seen.summary()
    );
    gw.stop().await;
    emu.shutdown().await;
    if strict {
        assert!(
            answer.is_some(),
            "no answer to a DOWNSTREAM within 3 s while the disk is full"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_with_other_writes_loses_nothing() {
    disk_full_with_other_writes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_with_other_writes_still_answers_downstreams() {
    disk_full_with_other_writes(true).await;
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// While the store is stuck (disk full, a non-insert batch pending), a BAL
/// that keeps sending must not make gimmm hold every message in memory:
/// without backpressure each DOWNSTREAM becomes a batch queued for the
/// writer (body included) and an effect awaiting its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_does_not_buffer_new_messages_without_bound() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let aux = tempfile::tempdir().unwrap();
    let cfg = config(aux.path(), &fs.path().join("gimmm.db"), &emu);
    let gw = in_process(&cfg, &emu).await.unwrap();
    // A plain client: the flood below must meet TCP backpressure itself.
    let mut c = BalClient::connect_logon(gw.bal_addr, SESSION, TOKEN)
        .await
        .unwrap();
    let filler = fs.fill();
    for i in 0..400 {
        if let Some(ToBal::Error { .. }) = send_raw(&mut c, big(&format!("fill-{i}")), WAIT).await {
            break;
        }
    }
    let mut data = serde_json::Map::new();
    data.insert("k".into(), "v".into());
    emu.send_upstream("dev-up", SESSION, data);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes();
    // 20,000 messages of ~3.6 KB (72 MB) while nothing can be committed.
    let (mut rd, mut wr) = c.into_split();
    let sender = tokio::spawn(async move {
        for i in 0..20_000 {
            let m = FromBal::Downstream {
                group_id: None,
                fcm_data: big(&format!("flood-{i}")),
            };
            if timeout(Duration::from_secs(2), wr.send(&m))
                .await
                .map_or(true, |r| r.is_err())
            {
                return i;
            }
        }
        let _ = wr.flush().await;
        20_000
    });
    let sent = timeout(Duration::from_secs(60), sender)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "stuck store: {sent} DOWNSTREAMs sent without an answer; RSS grew {} MB",
        grown >> 20
    );
    std::fs::remove_file(&filler).unwrap();
    drop(rd.recv().await);
    gw.stop().await;
    emu.shutdown().await;
    assert!(
        grown < 48 << 20,
        "gimmm buffered {} MB while its store was stuck",
        grown >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_use_is_refused_with_a_clear_message() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gimmm.db");
    let mut cfg = emulator_config(&emu, dir.path(), &[(SESSION, TOKEN)]).unwrap();
    cfg.admin.listen = String::new();
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm")).dir(dir.path());
    let mut first = ChildGateway::spawn(&cfg, opts.clone()).await.unwrap();
    // Results stay unACKed: the next gimmm must still have them.
    let mut bal = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    bal.connect(first.bal_addr()).await.unwrap();
    bal.downstream(
        None,
        serde_json::json!({"to": "dev-l", "message_id": "lock-1"}),
    )
    .unwrap();

    // A second gimmm on the same store: refused, non-zero, names the lock
    // (and exits: a hang would end the spawn with NotReady).
    let (status, stderr) = match ChildGateway::spawn(&cfg, opts.clone()).await {
        Err(ChildError::ExitedEarly { status, stderr }) => (status, stderr),
        Err(e) => panic!("the second gimmm must exit, not {e}"),
        Ok(_) => panic!("a second gimmm started on a store in use"),
    };
    eprintln!("second gimmm: {status:?}: {}", stderr.trim());
    assert!(!status.success());
    assert!(stderr.contains("locked"), "{stderr}");
    assert!(
        stderr.contains(&db.display().to_string()),
        "names the store: {stderr}"
    );
    // The first is unaffected.
    let m = bal.next_reply(WAIT).await.unwrap();
    assert!(matches!(m, ToBal::DownstreamAccepted { .. }), "{m:?}");
    bal.send(FromBal::Ping).unwrap();
    assert_eq!(bal.next_reply(WAIT).await.unwrap(), ToBal::Pong);

    // SIGKILL the owner: the lock goes with the process, a new gimmm starts
    // on the store and still has the message's result.
    first.kill().await.unwrap();
    let mut second = ChildGateway::spawn(&cfg, opts).await.unwrap();
    let mut bal = BalProbe::new(SESSION, TOKEN);
    bal.connect(second.bal_addr()).await.unwrap();
    bal.wait_finals(1, WAIT).await.unwrap();
    let seen = bal.snapshot();
    assert_eq!(
        seen.finals.keys().collect::<Vec<_>>(),
        ["lock-1"],
        "{}",
        seen.summary()
    );
    second.kill().await.unwrap();
    emu.shutdown().await;
}
