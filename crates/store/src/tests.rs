use super::*;
use tokio::sync::mpsc::unbounded_channel;

fn new_msg(id: u64, session: &str, mid: &str) -> Op {
    Op::InsertDownstream(NewDownstream {
        id,
        session: Arc::from(session),
        message_id: mid.to_string(),
        group_id: None,
        body: format!(r#"{{"to":"t","message_id":"{mid}"}}"#),
        expires_at_ms: now_ms() + 60_000,
        receipt: false,
    })
}

async fn commit(
    store: &Store,
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
async fn insert_duplicate_finish_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    {
        let (tx, mut rx) = unbounded_channel();
        let (store, rec) = Store::open(&path, tx).unwrap();
        assert_eq!(rec.next_seq, 1);
        assert_eq!(rec.next_id, 1);
        let c = commit(
            &store,
            &mut rx,
            1,
            vec![
                new_msg(1, "s", "a"),
                new_msg(2, "s", "b"),
                new_msg(3, "s", "a"),
            ],
        )
        .await;
        assert_eq!(c.duplicates, vec![3]);
        // Same message id in another session is not a duplicate.
        let c = commit(&store, &mut rx, 2, vec![new_msg(4, "other", "a")]).await;
        assert!(c.duplicates.is_empty());
        let c = commit(
            &store,
            &mut rx,
            3,
            vec![
                Op::FinishDownstream { id: 1 },
                Op::InsertOutbox {
                    seq: 7,
                    session: Arc::from("s"),
                    body: "{}".into(),
                },
                Op::InsertOutbox {
                    seq: 8,
                    session: Arc::from("s"),
                    body: "{}".into(),
                },
                Op::DeleteOutbox {
                    session: Arc::from("s"),
                    seq: 7,
                },
                Op::RetryDownstream {
                    id: 2,
                    attempts: 3,
                    not_before_ms: 42,
                },
            ],
        )
        .await;
        assert!(c.error.is_none());
        // A finished message still blocks its id.
        let c = commit(&store, &mut rx, 4, vec![new_msg(9, "s", "a")]).await;
        assert_eq!(c.duplicates, vec![9]);
    }
    let (tx, _rx) = unbounded_channel();
    let (store, rec) = Store::open(&path, tx).unwrap();
    assert_eq!(rec.next_seq, 9);
    assert_eq!(rec.next_id, 5);
    assert_eq!(rec.queued, 2);
    assert_eq!(rec.outbox, vec![("s".to_string(), 1)]);
    let q = store.load_queued(0, 10).unwrap();
    assert_eq!(q.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 4]);
    assert_eq!(q[0].attempts, 3);
    assert_eq!(q[0].not_before_ms, 42);
    assert_eq!(store.load_queued(2, 10).unwrap().len(), 1);
    let o = store.load_outbox("s", 0, 10).unwrap();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].seq, 8);
}

#[tokio::test]
async fn second_open_is_refused_while_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let (tx, _rx) = unbounded_channel();
    let _first = Store::open(&path, tx).unwrap();
    let (tx2, _rx2) = unbounded_channel();
    let err = Store::open(&path, tx2).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    assert!(err.to_string().contains("locked"));
}

#[tokio::test]
async fn many_batches_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let (tx, mut rx) = unbounded_channel();
    let (store, _) = Store::open(&path, tx).unwrap();
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
    assert_eq!(store.counts().unwrap().0, n);
}

#[tokio::test]
async fn upstream_seen_and_unroutable() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = unbounded_channel();
    let (store, _) = Store::open(&dir.path().join("g.db"), tx).unwrap();
    assert!(!store.upstream_seen("u1").unwrap());
    commit(
        &store,
        &mut rx,
        1,
        vec![
            Op::UpstreamSeen {
                message_id: "u1".into(),
            },
            Op::Unroutable {
                category: "nobody".into(),
                body: "{}".into(),
            },
        ],
    )
    .await;
    assert!(store.upstream_seen("u1").unwrap());
    assert_eq!(store.unroutable(10).unwrap().len(), 1);
}

/// A store written by schema version 1 opens under version 2 with its
/// queued messages and outbox intact.
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
    let (store, rec) = Store::open(&path, tx).unwrap();
    assert_eq!(rec.next_seq, 6);
    assert_eq!(rec.next_id, 3);
    assert_eq!(rec.queued, 1);
    assert_eq!(rec.outbox, vec![("s".to_string(), 1)]);
    assert_eq!(store.load_queued(0, 10).unwrap().len(), 1);
    assert_eq!(
        store.receipt_target("a").unwrap(),
        Some(("s".to_string(), 1))
    );
    let o = store.load_outbox("s", 0, 10).unwrap();
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
    assert!(store.load_outbox("s", 0, 10).unwrap().is_empty());
}

/// Paging reads stop at the bound the engine knows to be durable.
#[tokio::test]
async fn bounded_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = unbounded_channel();
    let (store, _) = Store::open(&dir.path().join("g.db"), tx).unwrap();
    let mut ops: Vec<Op> = (1..=5).map(|i| new_msg(i, "s", &format!("m{i}"))).collect();
    ops.extend((1..=5).map(|seq| Op::InsertOutbox {
        seq,
        session: Arc::from("s"),
        body: "{}".into(),
    }));
    commit(&store, &mut rx, 1, ops).await;
    let ids: Vec<u64> = store
        .load_queued_upto(1, 3, 10)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![2, 3]);
    let seqs: Vec<u64> = store
        .load_outbox_upto("s", 0, 4, 10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
}

/// An upstream id seen before is not delivered again: its outbox row is
/// skipped and reported as repeated.
#[tokio::test]
async fn repeated_upstream_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = unbounded_channel();
    let (store, _) = Store::open(&dir.path().join("g.db"), tx).unwrap();
    let up = |seq: u64| Op::Upstream {
        message_id: "up-1".into(),
        then: vec![Op::InsertOutbox {
            seq,
            session: Arc::from("s"),
            body: "{}".into(),
        }],
    };
    let c = commit(&store, &mut rx, 1, vec![up(1), up(2)]).await;
    assert_eq!(c.repeated, vec![2]);
    let c = commit(&store, &mut rx, 2, vec![up(3)]).await;
    assert_eq!(c.repeated, vec![3]);
    let seqs: Vec<u64> = store
        .load_outbox("s", 0, 10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![1]);
    assert!(store.upstream_seen("up-1").unwrap());
}
