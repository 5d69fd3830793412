//! SQLite-specific tests. The interface's contract is tested by the
//! conformance suite (`tests/conformance_sqlite.rs`); here: migrations of
//! old files, group commit, the "durable rows only" marks, and retention:
//! the prune statements and the file sizes under waves of traffic.

use super::*;
use crate::types::{now_ms, NewDownstream, Op};
use apply::apply_batch;
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

/// The prune walks go in key order without sorting and without an index
/// of their own: a step costs the rows it reads, whatever the size of the
/// store.
#[test]
fn prune_walks_follow_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Connection::open(dir.path().join("g.db")).unwrap();
    migrate::migrate(&mut c, dir.path()).unwrap();
    let plan = |sql: &str, n: usize| -> String {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let args: Vec<i64> = vec![0; n];
        let rows = st
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    };
    let down = plan(prune::SQL_WALK_DOWNSTREAM, 2);
    assert!(
        down.contains("SEARCH downstream USING INTEGER PRIMARY KEY (rowid>?)"),
        "{down}"
    );
    let late = plan(prune::SQL_WALK_LATE, 1);
    assert!(
        late.contains("SEARCH d USING INTEGER PRIMARY KEY (rowid=?)"),
        "{late}"
    );
    let up = plan(prune::SQL_WALK_UPSTREAM, 1);
    for p in [&down, &late, &up] {
        assert!(!p.contains("TEMP B-TREE"), "sorts: {p}");
    }
}

/// One step deletes at most `batch` rows of each table, in key order: it
/// passes queued rows, stops at the first finished row that is not old
/// yet, and says when there may be more. A row it passed while queued is
/// pruned from the late list once finished and old.
#[test]
fn a_prune_step_is_bounded_and_walks_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Connection::open(dir.path().join("g.db")).unwrap();
    migrate::migrate(&mut c, dir.path()).unwrap();
    for i in 1..=10i64 {
        // Row 3 is still queued; the others finished at time i.
        let (state, done_at) = if i == 3 { (0, None) } else { (1, Some(i)) };
        c.execute(
            "INSERT INTO downstream (id, session, message_id, expires_at, state, done_at)
             VALUES (?1, 's', ?2, 0, ?3, ?4)",
            params![i, format!("m{i}"), state, done_at],
        )
        .unwrap();
        c.execute(
            "INSERT INTO upstream_seen (message_id, at) VALUES (?1, ?2)",
            params![format!("u{i}"), i],
        )
        .unwrap();
    }
    // Row 11: queued, accepted at time 100.
    c.execute(
        "INSERT INTO downstream (id, session, message_id, expires_at, accepted_at)
         VALUES (11, 's', 'm11', 0, 100)",
        [],
    )
    .unwrap();
    let ids = |c: &Connection| -> Vec<i64> {
        c.prepare("SELECT id FROM downstream ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    let s = prune::step(&c, 8, 4, 0).unwrap();
    assert_eq!(
        (s.pruned.downstream, s.pruned.upstream, s.more),
        (3, 4, true)
    );
    assert_eq!(s.cursor, 4, "the walk passed the row queued for long");
    assert_eq!(ids(&c), vec![3, 5, 6, 7, 8, 9, 10, 11]);
    // Row 3 gets its final result (at time 2): the walk is past it.
    apply_batch(
        &c,
        &Batch {
            no: 1,
            ops: vec![Op::FinishDownstream { id: 3 }],
        },
        false,
        2,
        s.cursor,
    )
    .unwrap();
    let s = prune::step(&c, 8, 4, s.cursor).unwrap();
    // 5, 6, 7 by the walk (8 is not old: it stops there), 3 from the late list.
    assert_eq!(
        (s.pruned.downstream, s.pruned.upstream, s.more),
        (4, 3, false)
    );
    assert_eq!(s.cursor, 7);
    assert_eq!(ids(&c), vec![8, 9, 10, 11]);
    let late: i64 = c
        .query_row("SELECT count(*) FROM prune_late", [], |r| r.get(0))
        .unwrap();
    assert_eq!(late, 0);
    let meta = |k: &str| -> i64 {
        c.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(meta("prune_cursor"), 7);
    assert_eq!(meta("next_id"), 8, "above every pruned row");
    // Later: a row queued since after the cutoff stops the walk.
    let s = prune::step(&c, 100, 4, s.cursor).unwrap();
    assert_eq!((s.pruned.downstream, s.cursor, s.more), (3, 10, false));
    assert_eq!(ids(&c), vec![11]);
}

/// Rows finished before the upgrade to schema 4 have no time of their
/// final result: they count from the upgrade, so they are kept a full
/// retention after it, then pruned.
#[tokio::test]
async fn rows_finished_before_the_upgrade_count_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    {
        let c = Connection::open(&path).unwrap();
        for m in &MIGRATIONS[..3] {
            c.execute_batch(m).unwrap();
        }
        c.pragma_update(None, "user_version", 3).unwrap();
        c.execute_batch(
            "INSERT INTO downstream (id, session, message_id, body, expires_at, state)
                 VALUES (1, 's', 'done-before', NULL, 0, 1);
             INSERT INTO downstream (id, session, message_id, body, expires_at)
                 VALUES (2, 's', 'queued-before', '{}', 9999999999999);
             INSERT INTO upstream_seen (message_id, at) VALUES ('up-before', 0);",
        )
        .unwrap();
    }
    let clock = crate::Clock::manual(now_ms());
    let opts = crate::StoreOptions {
        retention: Some(Duration::from_secs(3600)),
        clock: clock.clone(),
        ..crate::StoreOptions::default()
    };
    let (tx, _rx) = unbounded_channel();
    let (store, rec) = SqliteStore::open_with(&path, tx, opts).unwrap();
    assert_eq!(rec.next_id, 3);
    store.prune_now().await.unwrap();
    // Upstream ids always had their time: the old one goes at once.
    assert!(!store.upstream_seen("up-before").await.unwrap());
    assert_eq!(store.pruned().borrow().downstream, 0);
    clock.advance(Duration::from_secs(3601 + 60));
    store.prune_now().await.unwrap();
    assert_eq!(store.pruned().borrow().downstream, 1);
    assert_eq!(store.counts().await.unwrap().queued, 1);
}

/// Bytes of the database and its WAL.
fn store_bytes(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path.to_path_buf(), PathBuf::from(wal)]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Runs `n` messages (from row id `first`) through the writes of their
/// life: insert, final result + DOWNSTREAM_ACK line, the BAL's ACK; every
/// fifth also an upstream id with its line.
async fn wave(
    store: &SqliteStore,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Committed>,
    no: &mut u64,
    first: u64,
    n: u64,
) {
    let s: Arc<str> = Arc::from("com.example.app");
    for chunk in (first..first + n).collect::<Vec<_>>().chunks(256) {
        let mut ins: Vec<Op> = chunk
            .iter()
            .map(|&id| new_msg(id, &s, &format!("bench-0badf00d-{id}")))
            .collect();
        ins.extend(
            chunk
                .iter()
                .filter(|id| *id % 5 == 0)
                .map(|id| Op::Upstream {
                    message_id: format!("0:1700000000000000%{id:016x}"),
                    then: vec![Op::InsertOutbox {
                        seq: id * 2 + 1,
                        session: s.clone(),
                        body: r#"{"message_type":"UPSTREAM","data":{"k":"v"}}"#.into(),
                    }],
                }),
        );
        let mut done = Vec::new();
        let mut acks = Vec::new();
        for &id in chunk {
            done.push(Op::FinishDownstream { id });
            done.push(Op::InsertOutbox {
                seq: id * 2,
                session: s.clone(),
                body: format!(r#"{{"message_type":"DOWNSTREAM_ACK","message_id":"bench-0badf00d-{id}","fcm_data":{{"from":"d","message_type":"ack"}}}}"#).into(),
            });
            for seq in [id * 2, id * 2 + 1] {
                acks.push(Op::DeleteOutbox {
                    session: s.clone(),
                    seq,
                });
            }
        }
        for ops in [ins, done, acks] {
            *no += 1;
            commit(store, rx, *no, ops).await;
        }
    }
}

/// Waves of traffic with a short retention keep the store's files (db +
/// WAL) from growing wave over wave: each wave's rows are pruned in the
/// background during the next (awaited on the pruned counter), and their
/// pages are reused. The same traffic without retention grows the files
/// by every wave (the reference: the bound is not met by accident).
#[tokio::test]
async fn files_stay_flat_over_waves_with_retention() {
    const WAVES: u64 = 8;
    const PER_WAVE: u64 = 12_000;
    let hour = Duration::from_secs(3600);
    let mut sizes = Vec::new();
    for retention in [Some(hour), None] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let clock = crate::Clock::manual(now_ms());
        let (tx, mut rx) = unbounded_channel();
        let (store, _) = SqliteStore::open_with(
            &path,
            tx,
            crate::StoreOptions {
                retention,
                clock: clock.clone(),
                // Look again soon after a pass (1 s by default), so that a
                // wave's rows are pruned as soon as they are old.
                prune_interval: Duration::from_millis(10),
                ..crate::StoreOptions::default()
            },
        )
        .unwrap();
        let mut pruned = store.pruned();
        let mut no = 0;
        let mut per_wave = Vec::new();
        for w in 0..WAVES {
            wave(&store, &mut rx, &mut no, 1 + w * PER_WAVE, PER_WAVE).await;
            if retention.is_some() && w > 0 {
                // Every earlier wave is past the retention: wait until the
                // background pruner has removed it.
                let want = w * PER_WAVE;
                tokio::time::timeout(Duration::from_secs(60), async {
                    while pruned.borrow_and_update().downstream < want {
                        pruned.changed().await.unwrap();
                    }
                })
                .await
                .expect("the earlier waves were not pruned");
                assert_eq!(pruned.borrow().upstream, want / 5);
            }
            clock.advance(hour + Duration::from_millis(1));
            per_wave.push(store_bytes(&path));
        }
        sizes.push(per_wave);
    }
    let (with, without) = (&sizes[0], &sizes[1]);
    // Two waves of rows live at the peak from the third wave on.
    let steady = with[2];
    for (w, &b) in with.iter().enumerate().skip(3) {
        assert!(
            b <= steady + steady / 10,
            "wave {}: {b} bytes, {steady} after wave 3 (all: {with:?})",
            w + 1
        );
    }
    assert!(
        without[WAVES as usize - 1] > 2 * with[WAVES as usize - 1],
        "without retention the files should keep growing: {without:?} vs {with:?}"
    );
}

/// After a burst has grown the WAL far beyond its usual size, the file is
/// cut back to [`WAL_SIZE_LIMIT`] once it restarts (`journal_size_limit`),
/// instead of staying at its high-water mark.
#[tokio::test]
async fn the_wal_is_cut_back_after_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let (tx, mut rx) = unbounded_channel();
    let (store, _) = SqliteStore::open(&path, tx).unwrap();
    let wal = || {
        std::fs::metadata(dir.path().join("g.db-wal"))
            .unwrap()
            .len()
    };
    // One batch of ~30 MiB: a single transaction, all of it in the WAL.
    let pad = "x".repeat(600);
    let big: Vec<Op> = (1..=50_000u64)
        .map(|i| match new_msg(i, "s", &format!("m{i}")) {
            Op::InsertDownstream(mut n) => {
                n.body = format!(r#"{{"to":"t","pad":"{pad}"}}"#);
                Op::InsertDownstream(n)
            }
            op => op,
        })
        .collect();
    commit(&store, &mut rx, 1, big).await;
    let high = wal();
    assert!(
        high > 2 * WAL_SIZE_LIMIT as u64,
        "the burst left {high} bytes"
    );
    // The commit checkpointed it (auto-checkpoint); the next commits
    // restart the WAL from its start, and the first of them truncates it.
    for no in 2..=4 {
        commit(&store, &mut rx, no, vec![new_msg(100_000 + no, "s", "x")]).await;
    }
    let after = wal();
    assert!(
        after <= WAL_SIZE_LIMIT as u64,
        "WAL still {after} bytes after the burst ({high} at its peak)"
    );
}

/// The lock outlives the handles until the writer has finished: batches
/// submitted just before the last handle drops are committed, the store
/// then reports itself closed, and a reopen in the same process finds them
/// all (not a writer still running beside it).
#[tokio::test]
async fn closed_after_the_writer_finished_and_then_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let (tx, _rx) = unbounded_channel();
    let (store, _) = SqliteStore::open(&path, tx).unwrap();
    let n = 500u64;
    for i in 1..=n {
        store
            .submit(Batch {
                no: i,
                ops: vec![new_msg(i, "s", &format!("m{i}"))],
            })
            .unwrap();
    }
    let closed = store.closed();
    let clone = store.clone();
    drop(store);
    // A handle left: still open.
    let mut closed = Box::pin(closed);
    assert!(futures::poll!(closed.as_mut()).is_pending());
    drop(clone);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the store closes once its last handle is gone");
    let (tx, _rx) = unbounded_channel();
    let (again, recovery) = SqliteStore::open(&path, tx).unwrap();
    assert_eq!(recovery.queued, n);
    assert_eq!(again.counts().await.unwrap().queued, n);
}
