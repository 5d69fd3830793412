//! SQLite-specific tests. The interface's contract is tested by the
//! conformance suite (`tests/conformance_sqlite.rs`); here: migrations of
//! old files, group commit, and the "durable rows only" marks.

use super::*;
use crate::types::{now_ms, NewDownstream, Op};
use tokio::sync::mpsc::unbounded_channel;

fn new_msg(id: u64, session: &str, mid: &str) -> Op {
    Op::InsertDownstream(NewDownstream {
        id,
        session: Arc::from(session),
        message_id: mid.to_string(),
        group_id: None,
        body: format!(r#"{{"to":"t","message_id":"{mid}"}}"#),
        accepted_at_ms: now_ms(),
        expires_at_ms: now_ms() + 60_000,
        receipt: false,
    })
}

async fn commit(
    store: &SqliteStore,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Committed>,
    no: u64,
    ops: Vec<Op>,
) -> Committed {
    store.submit(Batch { no, ops }).unwrap();
    let c = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.no, no);
    c
}

#[tokio::test]
async fn many_batches_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let (tx, mut rx) = unbounded_channel();
    let (store, _) = SqliteStore::open(&path, tx).unwrap();
    let n = 2000u64;
    for i in 1..=n {
        store
            .submit(Batch {
                no: i,
                ops: vec![new_msg(i, "s", &format!("m{i}"))],
            })
            .unwrap();
    }
    let mut seen = 0u64;
    let mut max_group = 0;
    while seen < n {
        let c = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        seen += 1;
        assert_eq!(c.no, seen, "batches are reported in order");
        max_group = max_group.max(c.group_size);
    }
    assert!(max_group > 1, "group commit never grouped");
    assert_eq!(store.counts().await.unwrap().queued, n);
}

/// A store written by schema version 1 opens under the current version with
/// its queued messages and outbox intact.
#[tokio::test]
async fn migrates_a_version_1_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute_batch(
            "INSERT INTO downstream (id, session, message_id, body, expires_at, receipt)
                 VALUES (1, 's', 'a', '{}', 9999999999999, 1);
             INSERT INTO downstream (id, session, message_id, body, expires_at, state)
                 VALUES (2, 's', 'b', NULL, 9999999999999, 1);
             INSERT INTO outbox (seq, session, body) VALUES (5, 's', '{\"x\":1}');",
        )
        .unwrap();
    }
    let (tx, mut rx) = unbounded_channel();
    let (store, rec) = SqliteStore::open(&path, tx).unwrap();
    assert_eq!(rec.next_seq, 6);
    assert_eq!(rec.next_id, 3);
    assert_eq!(rec.queued, 1);
    assert_eq!(rec.outbox, vec![("s".to_string(), 1)]);
    let q = store.load_queued(0, 10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].accepted_at_ms, 0, "unknown before version 3");
    assert_eq!(
        store.receipt_target("a").await.unwrap(),
        Some(ReceiptTarget {
            session: "s".into(),
            id: 1
        })
    );
    let o = store.load_outbox("s", 0, 10).await.unwrap();
    assert_eq!((o[0].seq, o[0].body.as_str()), (5, r#"{"x":1}"#));
    // Deletes go by (session, seq) now.
    commit(
        &store,
        &mut rx,
        1,
        vec![Op::DeleteOutbox {
            session: Arc::from("s"),
            seq: 5,
        }],
    )
    .await;
    assert!(store.load_outbox("s", 0, 10).await.unwrap().is_empty());
}

/// Reads stop at the "durable up to" marks the syncer raises: a row SQLite
/// already shows but whose batch is not reported yet is not returned.
#[tokio::test]
async fn reads_stop_at_the_durable_marks() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = unbounded_channel();
    let (store, _) = SqliteStore::open(&dir.path().join("g.db"), tx).unwrap();
    let mut ops: Vec<Op> = (1..=5).map(|i| new_msg(i, "s", &format!("m{i}"))).collect();
    ops.extend((1..=5).map(|seq| Op::InsertOutbox {
        seq,
        session: Arc::from("s"),
        body: "{}".into(),
    }));
    commit(&store, &mut rx, 1, ops).await;
    assert_eq!(store.marks.id.load(Ordering::Acquire), 5);
    assert_eq!(store.marks.seq.load(Ordering::Acquire), 5);
    // As if the batch writing ids 4, 5 and seq 5 were committed, not synced.
    store.marks.id.store(3, Ordering::Release);
    store.marks.seq.store(4, Ordering::Release);
    let ids: Vec<u64> = store
        .load_queued(1, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![2, 3]);
    let seqs: Vec<u64> = store
        .load_outbox("s", 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
}

/// Reopening trusts what is on disk: the marks start at the highest ids.
#[tokio::test]
async fn marks_cover_what_a_previous_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    {
        let (tx, mut rx) = unbounded_channel();
        let (store, _) = SqliteStore::open(&path, tx).unwrap();
        commit(&store, &mut rx, 1, vec![new_msg(7, "s", "x")]).await;
    }
    let (tx, _rx) = unbounded_channel();
    let (store, rec) = SqliteStore::open(&path, tx).unwrap();
    assert_eq!(rec.next_id, 8);
    assert_eq!(store.load_queued(0, 10).await.unwrap().len(), 1);
}

/// A batch that could not be committed at first (here: another connection
/// holds the write lock; on a real machine: the disk is full) is applied
/// again without its new messages once the store can write. The upstream
/// messages it repeats must still be reported in `repeated`, or the engine
/// would deliver them a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_still_reports_repeated_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let (tx, mut rx) = unbounded_channel();
    let (store, _) = SqliteStore::open(&path, tx).unwrap();
    let up = |seq: u64| Op::Upstream {
        message_id: "u-1".into(),
        then: vec![Op::InsertOutbox {
            seq,
            session: Arc::from("s"),
            body: Arc::from(format!(r#"{{"n":{seq}}}"#)),
        }],
    };
    let c = commit(&store, &mut rx, 1, vec![up(1)]).await;
    assert!(c.repeated.is_empty());

    // Another connection takes the write lock: the writer's commit fails
    // (after its busy timeout) and it retries until the lock is free.
    let blocker = Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    store
        .submit(Batch {
            no: 2,
            ops: vec![up(2), new_msg(7, "s", "m-7")],
        })
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !store.is_degraded() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never noticed the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocker.execute_batch("ROLLBACK").unwrap();
    let c = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.no, 2);
    assert_eq!(c.failed_inserts, vec![7], "the new message was refused");
    assert_eq!(c.repeated, vec![2], "the repeat must not be delivered");
    let rows = store.load_outbox("s", 0, 10).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
}
