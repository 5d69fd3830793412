//! The PostgreSQL store's writer lock as a fence (SPEC §12; the store docs,
//! "One writer per database"), on the tests' server
//! (`GIMMM_TEST_POSTGRES_URL`, see `.ci/postgres-setup.sh`; skipped without
//! it unless `CI` is set).
#![allow(clippy::unwrap_used)]

use std::time::Duration;
use store::conformance::{insert, postgres_scratch_url};
use store::postgres::{PgStore, PgTarget, WRITER_LOCK_KEY};
use store::{Batch, Store, StoreOptions};
use tokio_postgres::{Client, NoTls};

const WAIT: Duration = Duration::from_secs(20);

async fn admin(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// Polls `f` until it holds (an event on another server, no sleep-and-hope).
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

async fn next(
    commits: &mut tokio::sync::mpsc::UnboundedReceiver<store::Committed>,
) -> store::Committed {
    tokio::time::timeout(WAIT, commits.recv())
        .await
        .expect("no commit report in time")
        .unwrap()
}

async fn rows(c: &Client, id: i64) -> i64 {
    c.query_one("SELECT count(*) FROM downstream WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// The writer's connection is killed and, before the writer comes back,
/// another session (a second node) takes the writer lock: the writer's next
/// commit finds the lock taken, writes nothing and says it is degraded.
/// Once the lock is free it commits that batch with its new message
/// refused (it was not stored in time), and the batch after goes in as
/// usual.
#[tokio::test]
async fn a_lost_writer_reconnects_and_the_lock_fences_it() {
    let Some(url) = postgres_scratch_url().await else {
        return;
    };
    let (tx, mut commits) = tokio::sync::mpsc::unbounded_channel();
    let target = PgTarget::parse(&url, None).unwrap();
    let (store, _) = PgStore::open_with(target, tx, StoreOptions::default())
        .await
        .unwrap();
    store
        .submit(Batch {
            no: 1,
            ops: vec![insert(1, "s", "a")],
        })
        .unwrap();
    assert_eq!(next(&mut commits).await.no, 1);

    let other = admin(&url).await;
    let writer: i32 = other
        .query_one(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((classid::bigint << 32) | objid::bigint) = $1",
            &[&WRITER_LOCK_KEY],
        )
        .await
        .unwrap()
        .get(0);
    other
        .execute("SELECT pg_terminate_backend($1)", &[&writer])
        .await
        .unwrap();
    until("the writer's backend to end", || async {
        let n: i64 = other
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&writer],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    let got: bool = other
        .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK_KEY])
        .await
        .unwrap()
        .get(0);
    assert!(got, "the lock went with the writer's connection");

    store
        .submit(Batch {
            no: 2,
            ops: vec![insert(2, "s", "b")],
        })
        .unwrap();
    until("the store to say it is degraded", || {
        let d = store.is_degraded();
        async move { d }
    })
    .await;
    assert_eq!(
        rows(&other, 2).await,
        0,
        "nothing written beside the lock holder"
    );
    assert!(commits.try_recv().is_err(), "no report while fenced");

    other
        .execute("SELECT pg_advisory_unlock($1)", &[&WRITER_LOCK_KEY])
        .await
        .unwrap();
    let c = next(&mut commits).await;
    assert_eq!(c.no, 2);
    assert_eq!(c.failed_inserts, vec![2], "refused: not stored in time");
    assert!(c.error.is_some());
    assert!(!store.is_degraded());
    store
        .submit(Batch {
            no: 3,
            ops: vec![insert(3, "s", "c")],
        })
        .unwrap();
    let c = next(&mut commits).await;
    assert_eq!((c.no, c.failed_inserts.len()), (3, 0));
    assert_eq!((rows(&other, 2).await, rows(&other, 3).await), (0, 1));
    assert_eq!(store.counts().await.unwrap().queued, 2);
}
