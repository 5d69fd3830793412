//! The upstream ingress across SIGKILL (SPEC §10, issue 11): `gimmm
//! serve` as a child process — with no FCM credentials, so no FCM link is
//! configured and it runs its in-process emulator — takes posts from four
//! concurrent apps, is killed with SIGKILL mid-flight and restarted on the
//! same SQLite store. The apps retry what got no answer (same
//! `message_id`, as an app must) and re-post some that did.
//!
//! The promise: every post answered 202 reaches the BAL exactly once (the
//! ledger keys UPSTREAMs by message id and sequence id); a post answered
//! 202 before the kill is not lost; a retry of an answered post is 200
//! `duplicate:true`; nothing is delivered twice.
#![allow(clippy::unwrap_used)]

use gateway::config::{Config, SessionConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{
    ingress_config, upstream_body, AckPolicy, BalProbe, ChildGateway, ChildOpts, IngressClient,
    Ports,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SESSION: &str = "com.example.app";
const TOKEN: &str = "crash-token";
const KEY: &str = "crash-app-key-0001";
const WAIT: Duration = Duration::from_secs(60);

/// What one app saw for each of its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    Duplicate,
}

type Answers = Arc<Mutex<BTreeMap<String, Vec<Answer>>>>;

/// Posts `id` until it gets 202 or 200 (errors and 503 are retried at the
/// current address), recording the answer.
async fn post_until_answered(
    ports: &mut watch::Receiver<Option<Ports>>,
    id: &str,
    from: &str,
    answers: &Answers,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never answered"
        );
        let current = *ports.borrow_and_update();
        let Some(addr) = current.and_then(|p| p.ingress) else {
            // Killed: wait for the restart.
            let _ = tokio::time::timeout(Duration::from_secs(5), ports.changed()).await;
            continue;
        };
        let c = IngressClient::plain(addr);
        match c
            .post_json(Some(KEY), &upstream_body(SESSION, id, from))
            .await
        {
            Ok(r) if r.status == 202 || r.status == 200 => {
                let a = if r.status == 202 {
                    Answer::Accepted
                } else {
                    assert_eq!(r.json()["duplicate"], true, "{r:?}");
                    Answer::Duplicate
                };
                answers
                    .lock()
                    .unwrap()
                    .entry(id.into())
                    .or_default()
                    .push(a);
                return;
            }
            Ok(r) if r.status == 503 => {}
            Ok(r) => panic!("{id}: unexpected answer {r:?}"),
            // Connection refused / reset by the kill: retry.
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_accepted_post_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    // No [fcm] credentials: `gimmm serve` runs its in-process emulator.
    let mut cfg = Config::default();
    cfg.bal.listen = "127.0.0.1:0".into();
    cfg.admin.listen = String::new();
    cfg.store.path = dir.path().join("gimmm.db");
    cfg.bal.sessions = vec![SessionConfig::new(SESSION, TOKEN)];
    ingress_config(&mut cfg, None, &[KEY]);
    let opts = ChildOpts::new(env!("CARGO_BIN_EXE_gimmm")).dir(dir.path());
    let mut gw = ChildGateway::spawn(&cfg, opts).await.unwrap();
    assert!(gw.ingress_addr().is_some());

    // Nothing is ACKed before the kill: what the BAL saw must come back,
    // with the same sequence ids, after the restart.
    let mut probe = BalProbe::new(SESSION, TOKEN).with_ack(AckPolicy::None);
    probe.connect(gw.bal_addr()).await.unwrap();

    let answers: Answers = Arc::default();
    let stop = CancellationToken::new();
    let mut apps = Vec::new();
    for app in 0..4 {
        let mut ports = gw.follow();
        let answers = answers.clone();
        let stop = stop.clone();
        apps.push(tokio::spawn(async move {
            let from = format!("device-{app}");
            let mut i = 0;
            while !stop.is_cancelled() {
                let id = format!("a{app}-{i:05}");
                post_until_answered(&mut ports, &id, &from, &answers).await;
                // Every 25th: the app did not trust the answer and posts
                // the same id again.
                if i % 25 == 0 {
                    post_until_answered(&mut ports, &id, &from, &answers).await;
                }
                i += 1;
            }
            i
        }));
    }
    let accepted = |a: &Answers| {
        a.lock()
            .unwrap()
            .values()
            .filter(|v| v.contains(&Answer::Accepted))
            .count()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while accepted(&answers) < 400 {
        assert!(tokio::time::Instant::now() < deadline, "too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill: Vec<String> = answers
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.contains(&Answer::Accepted))
        .map(|(k, _)| k.clone())
        .collect();
    let status = gw.kill().await.unwrap();
    assert!(!status.success(), "killed with SIGKILL");
    tokio::time::timeout(WAIT, probe.closed()).await.unwrap();
    eprintln!(
        "killed gimmm with {} posts answered 202, {} upstream seen by the BAL",
        before_kill.len(),
        probe.snapshot().upstream.len()
    );

    gw.restart().await.unwrap();
    probe.set_ack(AckPolicy::All);
    probe.connect(gw.bal_addr()).await.unwrap();
    // The apps keep going on the restarted gateway for a while.
    let more = accepted(&answers) + 200;
    let deadline = tokio::time::Instant::now() + WAIT;
    while accepted(&answers) < more {
        assert!(
            tokio::time::Instant::now() < deadline,
            "too slow after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut posted = 0;
    for a in apps {
        posted += tokio::time::timeout(WAIT, a).await.unwrap().unwrap();
    }
    // Re-post everything accepted before the kill: all duplicates now.
    let c = IngressClient::plain(gw.ingress_addr().unwrap());
    for id in before_kill.iter().step_by(10) {
        let r = c
            .post_json(Some(KEY), &upstream_body(SESSION, id, "again"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{id}: {r:?}");
    }

    let answered: Vec<String> = answers.lock().unwrap().keys().cloned().collect();
    let done = probe
        .wait_until("every answered post", WAIT, |l| {
            answered.iter().all(|id| l.upstream.contains_key(id))
        })
        .await;
    let seen = probe.snapshot();
    if let Err(e) = done {
        let missing: Vec<_> = answered
            .iter()
            .filter(|id| !seen.upstream.contains_key(*id))
            .take(10)
            .collect();
        panic!("{e}; missing {missing:?}");
    }
    // Exactly once each (a redelivery after the restart has the same
    // sequence id), and nothing that was not posted.
    seen.assert_each_delivered_once();
    assert_eq!(seen.upstream.len(), answered.len(), "{}", seen.summary());
    let answers = answers.lock().unwrap().clone();
    for (id, a) in answers.iter() {
        let accepted = a.iter().filter(|x| **x == Answer::Accepted).count();
        assert!(accepted <= 1, "{id} was accepted twice: {a:?}");
    }
    let dups = answers
        .values()
        .filter(|a| a.contains(&Answer::Duplicate))
        .count();
    eprintln!(
        "{posted} ids posted by 4 apps, {} answered, {dups} with a duplicate answer, {} redeliveries after the restart",
        answers.len(),
        seen.redeliveries()
    );
    assert!(seen.redeliveries() > 0, "the unACKed ones came back");
    let status = gw.term().await.unwrap();
    assert!(status.success(), "SIGTERM: {status:?}");
}
