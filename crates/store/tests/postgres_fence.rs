//! The PostgreSQL store's writer lease (SPEC §12; the store docs, "One
//! writer per database"): a lost connection loses nothing, a node whose
//! lease was taken commits nothing, a standby takes over from a writer that
//! stops. On the tests' server (`GIMMM_TEST_POSTGRES_URL`, see
//! `.ci/postgres-setup.sh`; skipped without it unless `CI` is set).
#![allow(clippy::unwrap_used)]

use std::time::Duration;
use store::conformance::{insert, postgres_scratch_url};
use store::postgres::{LeaseOptions, PgStore, PgTarget};
use store::{Batch, Committed, Store, StoreError, StoreOptions};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{Client, NoTls};

const WAIT: Duration = Duration::from_secs(20);

async fn admin(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

async fn open(url: &str, lease: LeaseOptions) -> (PgStore, UnboundedReceiver<Committed>) {
    let (tx, commits) = tokio::sync::mpsc::unbounded_channel();
    let target = PgTarget::parse(url, None).unwrap();
    let (store, _) = PgStore::open_with(target, lease, tx, StoreOptions::default())
        .await
        .unwrap();
    (store, commits)
}

async fn next(commits: &mut UnboundedReceiver<Committed>) -> Committed {
    tokio::time::timeout(WAIT, commits.recv())
        .await
        .expect("no commit report in time")
        .unwrap()
}

async fn submit(store: &PgStore, no: u64, id: u64) {
    store
        .submit(Batch {
            no,
            ops: vec![insert(id, "s", &format!("m{id}"))],
        })
        .unwrap();
}

/// Polls `f` until it holds (an event on the server; no sleep-and-hope).
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(WAIT, async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

async fn rows(c: &Client, id: i64) -> i64 {
    c.query_one("SELECT count(*) FROM downstream WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Terminates the store's writer connection and waits until it is gone.
async fn kill_writer_connection(other: &Client) {
    let pid: i32 = other
        .query_one(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'gimmm-writer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    other
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    until("the writer's backend to end", || async {
        let n: i64 = other
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
}

/// The writer's connection is killed between two batches: the next batch
/// reopens it and commits as if nothing happened (the lease outlives the
/// connection), nothing refused.
#[tokio::test]
async fn a_lost_writer_connection_loses_nothing() {
    let Some(url) = postgres_scratch_url().await else {
        return;
    };
    let (store, mut commits) = open(&url, LeaseOptions::default()).await;
    submit(&store, 1, 1).await;
    assert_eq!(next(&mut commits).await.no, 1);
    let other = admin(&url).await;
    kill_writer_connection(&other).await;
    submit(&store, 2, 2).await;
    let c = next(&mut commits).await;
    assert_eq!((c.no, c.failed_inserts.len()), (2, 0), "{:?}", c.error);
    assert_eq!(rows(&other, 2).await, 1);
    assert!(!store.is_degraded());
}

/// Another node takes the lease (as it would once this one fell silent for
/// a lease): this node's next commit finds no lease to renew, writes
/// nothing, reports nothing and says it is fenced; it takes no batch after.
#[tokio::test]
async fn a_node_whose_lease_was_taken_commits_nothing() {
    let Some(url) = postgres_scratch_url().await else {
        return;
    };
    let (store, mut commits) = open(&url, LeaseOptions::default()).await;
    submit(&store, 1, 1).await;
    assert_eq!(next(&mut commits).await.no, 1);
    let other = admin(&url).await;
    let n = other
        .execute(
            "UPDATE writer_lease SET holder = 'node-b', epoch = epoch + 1,
             expires_at = now() + interval '1 hour'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    submit(&store, 2, 2).await;
    let reason = tokio::time::timeout(WAIT, store.fenced())
        .await
        .expect("the store did not say it was fenced");
    assert!(reason.contains("another node"), "{reason}");
    assert_eq!(
        rows(&other, 2).await,
        0,
        "nothing written beside the lease holder"
    );
    assert!(
        commits.try_recv().is_err(),
        "a fenced batch is not reported"
    );
    assert!(store.is_degraded());
    match store.submit(Batch { no: 3, ops: vec![] }) {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
}

/// A standby waits while the writer lives, renewing its lease even when
/// idle; once the writer stops it takes over at once and finds what the
/// writer committed.
#[tokio::test]
async fn a_standby_takes_over_when_the_writer_stops() {
    let Some(url) = postgres_scratch_url().await else {
        return;
    };
    let lease = Duration::from_millis(600);
    let (a, mut commits) = open(
        &url,
        LeaseOptions {
            node_id: "node-a".into(),
            lease,
            ..LeaseOptions::default()
        },
    )
    .await;
    submit(&a, 1, 1).await;
    assert_eq!(next(&mut commits).await.no, 1);
    let standby_url = url.clone();
    let mut b = tokio::spawn(async move {
        let (tx, commits) = tokio::sync::mpsc::unbounded_channel();
        let target = PgTarget::parse(&standby_url, None).unwrap();
        let opened = PgStore::open_with(
            target,
            LeaseOptions {
                node_id: "node-b".into(),
                lease,
                wait: None,
            },
            tx,
            StoreOptions::default(),
        )
        .await;
        (opened, commits)
    });
    // Three leases of an idle writer: it renews, the standby keeps waiting.
    assert!(
        tokio::time::timeout(lease * 3, &mut b).await.is_err(),
        "the standby took over from a live writer"
    );
    drop(a);
    let (opened, mut b_commits) = tokio::time::timeout(WAIT, b)
        .await
        .expect("the standby did not take over")
        .unwrap();
    let (b, recovery) = opened.unwrap();
    assert_eq!((recovery.queued, recovery.next_id), (1, 2));
    submit(&b, 1, 2).await;
    assert_eq!(next(&mut b_commits).await.failed_inserts.len(), 0);
    let other = admin(&url).await;
    let holder: String = other
        .query_one("SELECT holder FROM writer_lease", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(holder, "node-b");
}

/// A node restarted under its own id takes its lease back at once, without
/// waiting for it to run out; the process that held it, had it survived,
/// is fenced by the new epoch.
#[tokio::test]
async fn a_node_restarted_under_its_own_id_takes_its_lease_back_at_once() {
    let Some(url) = postgres_scratch_url().await else {
        return;
    };
    let lease = |wait| LeaseOptions {
        node_id: "node-r".into(),
        lease: Duration::from_secs(3600),
        wait,
    };
    let (old, mut old_commits) = open(&url, lease(None)).await;
    submit(&old, 1, 1).await;
    assert_eq!(next(&mut old_commits).await.no, 1);
    // An hour's lease, held: another id would wait; this one does not.
    let (new, mut new_commits) = open(&url, lease(Some(Duration::ZERO))).await;
    submit(&new, 1, 2).await;
    assert_eq!(next(&mut new_commits).await.failed_inserts.len(), 0);
    submit(&old, 2, 3).await;
    tokio::time::timeout(WAIT, old.fenced())
        .await
        .expect("the old process was not fenced");
    let other = admin(&url).await;
    assert_eq!((rows(&other, 2).await, rows(&other, 3).await), (1, 0));
}
