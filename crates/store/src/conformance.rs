//! The store conformance suite: the contract of [`crate::Store`] (see the
//! crate docs) as tests any implementation runs, the way rustls runs one
//! suite over both crypto providers. SQLite and memory run it in
//! `tests/conformance_*.rs`; a further store (PostgreSQL, SPEC §12) adds
//! one line:
//!
//! ```ignore
//! struct MyHarness { /* where the data lives */ }
//! impl store::conformance::Harness for MyHarness { /* open it */ }
//! store::conformance_tests!(async { MyHarness::new() });
//! ```
//!
//! Each test gets a fresh harness; [`Harness::open_with`] may be called
//! again after the previous handle was dropped, and must then open the same
//! data (a restart). The retention tests (SPEC §11) open the store with a
//! manual [`Clock`] and make rows old by moving it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::retention::{Clock, Pruned, StoreOptions};
use crate::types::{Batch, Committed, NewDownstream, Op, Recovery};
use crate::{Store, StoreError};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// A store opened by a [`Harness`].
pub struct Opened {
    /// The store.
    pub store: Arc<dyn Store>,
    /// What it recovered.
    pub recovery: Recovery,
    /// Its commit reports.
    pub commits: UnboundedReceiver<Committed>,
}

/// Opens one implementation's store on one place for its data.
pub trait Harness: Send {
    /// Opens (the first time: creates) the store with these options.
    fn open_with(&mut self, options: StoreOptions) -> BoxFuture<'_, Result<Opened, StoreError>>;

    /// Opens it with the default options.
    fn open(&mut self) -> BoxFuture<'_, Result<Opened, StoreError>> {
        self.open_with(StoreOptions::default())
    }
}

/// Expands to one `#[tokio::test]` per conformance test, each with a fresh
/// harness made by the future `$make` (e.g. `async { MyHarness::new() }`).
/// A harness of `None` skips the test (a server the machine does not have;
/// see [`postgres_scratch`]).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            reports_in_order_exactly_once,
            duplicates_are_per_session_and_survive_finish,
            queued_rows_read_back,
            outbox_pages_per_session,
            upstream_is_delivered_once,
            receipt_targets,
            unroutable_and_counts,
            recovery_after_reopen,
            second_open_is_refused,
            retention_prunes_old_finished_rows_and_upstream_ids,
            retention_off_keeps_everything,
            pruning_runs_in_the_background,
            a_message_queued_past_the_retention_is_pruned_after_its_result,
            pruned_row_ids_are_not_reused);
    };
    (@each $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let made = $crate::conformance::Made::from($make.await);
                if let Some(mut h) = made.0 {
                    $crate::conformance::$name(&mut h).await;
                }
            }
        )*
    };
}

/// A harness, or `None` when the test is skipped.
pub struct Made<H>(pub Option<H>);

impl<H: Harness> From<H> for Made<H> {
    fn from(h: H) -> Made<H> {
        Made(Some(h))
    }
}

impl<H: Harness> From<Option<H>> for Made<H> {
    fn from(h: Option<H>) -> Made<H> {
        Made(h)
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// A downstream insert for tests.
pub fn insert(id: u64, session: &str, message_id: &str) -> Op {
    Op::InsertDownstream(NewDownstream {
        id,
        session: Arc::from(session),
        message_id: message_id.to_string(),
        group_id: Some(format!("g{}", id % 3)),
        body: format!(r#"{{"to":"t","message_id":"{message_id}"}}"#),
        accepted_at_ms: 1_000 + id as i64,
        expires_at_ms: 9_000_000_000_000,
        receipt: id.is_multiple_of(2),
    })
}

fn outbox(session: &str, seq: u64) -> Op {
    Op::InsertOutbox {
        seq,
        session: Arc::from(session),
        body: Arc::from(format!(r#"{{"seq":{seq}}}"#)),
    }
}

/// Submits one batch and waits for its report.
pub async fn commit(o: &mut Opened, no: u64, ops: Vec<Op>) -> Committed {
    o.store.submit(Batch { no, ops }).unwrap();
    let c = tokio::time::timeout(WAIT, o.commits.recv())
        .await
        .expect("no commit report in time")
        .expect("commit channel closed");
    assert_eq!(c.no, no, "reports come in submission order");
    c
}

/// Every batch is reported exactly once, in submission order.
pub async fn reports_in_order_exactly_once(h: &mut dyn Harness) {
    let mut o = h.open().await.unwrap();
    let n = 600u64;
    for i in 1..=n {
        o.store
            .submit(Batch {
                no: i,
                ops: vec![insert(i, "s", &format!("m{i}"))],
            })
            .unwrap();
    }
    for i in 1..=n {
        let c = tokio::time::timeout(WAIT, o.commits.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.no, i, "batches are reported in order");
        assert!(c.duplicates.is_empty() && c.failed_inserts.is_empty());
        assert!(c.group_size >= 1);
    }
    // Nothing more.
    let more = tokio::time::timeout(Duration::from_millis(50), o.commits.recv()).await;
    assert!(more.is_err(), "a batch was reported twice");
    assert_eq!(o.store.counts().await.unwrap().queued, n);
}

/// A message id repeated within a session is a duplicate (even once the
/// first is finished); the same id in another session is not.
pub async fn duplicates_are_per_session_and_survive_finish(h: &mut dyn Harness) {
    let mut o = h.open().await.unwrap();
    let c = commit(
        &mut o,
        1,
        vec![
            insert(1, "s", "a"),
            insert(2, "s", "b"),
            insert(3, "s", "a"),
        ],
    )
    .await;
    assert_eq!(c.duplicates, vec![3]);
    let c = commit(&mut o, 2, vec![insert(4, "other", "a")]).await;
    assert!(c.duplicates.is_empty());
    commit(&mut o, 3, vec![Op::FinishDownstream { id: 1 }]).await;
    let c = commit(&mut o, 4, vec![insert(5, "s", "a")]).await;
    assert_eq!(
        c.duplicates,
        vec![5],
        "a finished message still blocks its id"
    );
}

/// Queued rows come back with every field, in id order, paged by `after`
/// and `limit`; finished rows do not come back.
pub async fn queued_rows_read_back(h: &mut dyn Harness) {
    let mut o = h.open().await.unwrap();
    let ops = (1..=10).map(|i| insert(i, "s", &format!("m{i}"))).collect();
    commit(&mut o, 1, ops).await;
    commit(
        &mut o,
        2,
        vec![
            Op::FinishDownstream { id: 3 },
            Op::RetryDownstream {
                id: 4,
                attempts: 2,
                not_before_ms: 42,
            },
        ],
    )
    .await;
    let rows = o.store.load_queued(0, 100).await.unwrap();
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![1, 2, 4, 5, 6, 7, 8, 9, 10]);
    let r4 = &rows[2];
    assert_eq!((r4.attempts, r4.not_before_ms), (2, 42));
    assert_eq!(r4.session, "s");
    assert_eq!(r4.message_id, "m4");
    assert_eq!(r4.group_id.as_deref(), Some("g1"));
    assert_eq!(r4.body, r#"{"to":"t","message_id":"m4"}"#);
    assert_eq!(r4.accepted_at_ms, 1_004);
    assert_eq!(r4.expires_at_ms, 9_000_000_000_000);
    assert!(r4.receipt);
    let page: Vec<u64> = o
        .store
        .load_queued(4, 3)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(page, vec![5, 6, 7]);
}

/// Outbox rows page per session, in sequence order; deleted rows are gone.
pub async fn outbox_pages_per_session(h: &mut dyn Harness) {
    let mut o = h.open().await.unwrap();
    let mut ops: Vec<Op> = (1..=6).map(|s| outbox("a", s * 2)).collect();
    ops.extend((1..=3).map(|s| outbox("b", s * 2 + 1)));
    commit(&mut o, 1, ops).await;
    commit(
        &mut o,
        2,
        vec![Op::DeleteOutbox {
            session: Arc::from("a"),
            seq: 4,
        }],
    )
    .await;
    let seqs = |rows: Vec<crate::OutboxRow>| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(o.store.load_outbox("a", 0, 100).await.unwrap()),
        vec![2, 6, 8, 10, 12]
    );
    assert_eq!(
        seqs(o.store.load_outbox("a", 6, 2).await.unwrap()),
        vec![8, 10]
    );
    let b = o.store.load_outbox("b", 0, 100).await.unwrap();
    assert_eq!(seqs(b.clone()), vec![3, 5, 7]);
    assert_eq!(
        (b[0].session.as_str(), b[0].body.as_str()),
        ("b", r#"{"seq":3}"#)
    );
    assert!(o.store.load_outbox("c", 0, 100).await.unwrap().is_empty());
}

/// An upstream id is delivered once: a repeat's outbox rows are skipped and
/// reported as repeated, within a batch and across batches.
pub async fn upstream_is_delivered_once(h: &mut dyn Harness) {
    let mut o = h.open().await.unwrap();
    let up = |seq: u64| Op::Upstream {
        message_id: "up-1".into(),
        then: vec![outbox("s", seq)],
    };
    assert!(!o.store.upstream_seen("up-1").await.unwrap());
    let c = commit(&mut o, 1, vec![up(1), up(2)]).await;
    assert_eq!(c.repeated, vec![2]);
    let c = commit(&mut o, 2, vec![up(3)]).await;
    assert_eq!(c.repeated, vec![3]);
    let rows = o.store.load_outbox("s", 0, 10).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
    assert!(o.store.upstream_seen("up-1").await.unwrap());
    commit(
        &mut o,
        3,
        vec![Op::UpstreamSeen {
            message_id: "up-2".into(),
        }],
    )
    .await;
    assert!(o.store.upstream_seen("up-2").await.unwrap());
}

/// A finished message that asked for a receipt is found by its message id
/// (the newest when several sessions used it) until its receipt is done.
pub async fn receipt_targets(h: &mut dyn Harness) {
    let mut o = h.open().await.unwrap();
    // Even ids ask for receipts (see `insert`).
    commit(
        &mut o,
        1,
        vec![
            insert(2, "s1", "r"),
            insert(4, "s2", "r"),
            insert(6, "s1", "q"),
        ],
    )
    .await;
    commit(
        &mut o,
        2,
        vec![
            Op::FinishDownstream { id: 2 },
            Op::FinishDownstream { id: 4 },
        ],
    )
    .await;
    let t = o.store.receipt_target("r").await.unwrap().unwrap();
    assert_eq!((t.session.as_str(), t.id), ("s2", 4));
    commit(&mut o, 3, vec![Op::ReceiptDone { id: 4 }]).await;
    let t = o.store.receipt_target("r").await.unwrap().unwrap();
    assert_eq!((t.session.as_str(), t.id), ("s1", 2));
    assert!(o.store.receipt_target("nope").await.unwrap().is_none());
}

/// Unroutable upstream is kept (newest first) and counted.
pub async fn unroutable_and_counts(h: &mut dyn Harness) {
    let mut o = h.open().await.unwrap();
    commit(
        &mut o,
        1,
        vec![
            insert(1, "s", "a"),
            insert(2, "s", "b"),
            outbox("s", 1),
            Op::Unroutable {
                category: "nobody".into(),
                body: r#"{"n":1}"#.into(),
            },
            Op::Unroutable {
                category: "nobody".into(),
                body: r#"{"n":2}"#.into(),
            },
        ],
    )
    .await;
    commit(&mut o, 2, vec![Op::FinishDownstream { id: 1 }]).await;
    let c = o.store.counts().await.unwrap();
    assert_eq!((c.queued, c.outbox, c.unroutable), (1, 1, 2));
    let u = o.store.unroutable(1).await.unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].category.as_str(), u[0].body.as_str()),
        ("nobody", r#"{"n":2}"#)
    );
}

/// A reopened store recovers its counters: the next sequence id is above
/// every one handed out (even when every outbox row is gone), the next row
/// id above every row, the queued count and the outbox per session.
pub async fn recovery_after_reopen(h: &mut dyn Harness) {
    {
        let mut o = h.open().await.unwrap();
        assert_eq!((o.recovery.next_seq, o.recovery.next_id), (1, 1));
        commit(
            &mut o,
            1,
            vec![
                insert(1, "s", "a"),
                insert(2, "s", "b"),
                insert(3, "s", "c"),
                outbox("s", 7),
                outbox("s", 8),
                outbox("t", 9),
            ],
        )
        .await;
        commit(
            &mut o,
            2,
            vec![
                Op::FinishDownstream { id: 1 },
                Op::DeleteOutbox {
                    session: Arc::from("t"),
                    seq: 9,
                },
            ],
        )
        .await;
    }
    let o = h.open().await.unwrap();
    let r = &o.recovery;
    assert_eq!(r.next_seq, 10, "sequence ids are never reused");
    assert_eq!(r.next_id, 4);
    assert_eq!(r.queued, 2);
    assert_eq!(r.outbox, vec![("s".to_string(), 2)]);
    let ids: Vec<u64> = o
        .store
        .load_queued(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![2, 3]);
}

/// One store, one writer: a second open while the first is open fails
/// with [`StoreError::Locked`].
pub async fn second_open_is_refused(h: &mut dyn Harness) {
    let _first = h.open().await.unwrap();
    match h.open().await {
        Err(StoreError::Locked(_)) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second open succeeded"),
    }
}

/// Runs a prune pass, within the usual deadline.
pub async fn prune_now(o: &Opened) -> crate::Pruned {
    tokio::time::timeout(WAIT, o.store.prune_now())
        .await
        .expect("prune_now did not finish in time")
        .expect("prune_now failed")
}

const HOUR: Duration = Duration::from_secs(3600);
/// Where the manual clocks of the retention tests start (Unix ms).
const T0: i64 = 1_700_000_000_000;

fn with_retention(clock: &Clock, retention: Option<Duration>) -> StoreOptions {
    StoreOptions {
        retention,
        clock: clock.clone(),
        ..StoreOptions::default()
    }
}

fn upstream(message_id: &str, then: Vec<Op>) -> Op {
    Op::Upstream {
        message_id: message_id.into(),
        then,
    }
}

/// Past the retention, finished rows (with or without a receipt pending)
/// and upstream ids are gone: their ids are new again. Recent ones stay, as
/// do queued rows however old, outbox rows and unroutable messages. A
/// finished row's age counts from its final result, not its acceptance.
pub async fn retention_prunes_old_finished_rows_and_upstream_ids(h: &mut dyn Harness) {
    let clock = Clock::manual(T0);
    let mut o = h
        .open_with(with_retention(&clock, Some(HOUR)))
        .await
        .unwrap();
    commit(
        &mut o,
        1,
        vec![
            insert(1, "s", "old-done"),
            insert(2, "s", "old-receipt"),
            insert(3, "s", "old-queued"),
            insert(7, "s", "old-accepted"),
            outbox("s", 1),
            upstream("up-old", vec![outbox("s", 2)]),
            Op::UpstreamSeen {
                message_id: "seen-old".into(),
            },
            Op::Unroutable {
                category: "nobody".into(),
                body: "{}".into(),
            },
        ],
    )
    .await;
    // Row 2 asks for a receipt (even id); it is pruned all the same.
    commit(
        &mut o,
        2,
        vec![
            Op::FinishDownstream { id: 1 },
            Op::FinishDownstream { id: 2 },
        ],
    )
    .await;
    assert!(o
        .store
        .receipt_target("old-receipt")
        .await
        .unwrap()
        .is_some());
    clock.advance(2 * HOUR);
    commit(
        &mut o,
        3,
        vec![
            insert(4, "s", "new-done"),
            Op::FinishDownstream { id: 4 },
            Op::FinishDownstream { id: 7 },
            Op::UpstreamSeen {
                message_id: "up-new".into(),
            },
        ],
    )
    .await;
    // The background pruner may have been first; the totals count both.
    prune_now(&o).await;
    assert_eq!(
        *o.store.pruned().borrow(),
        Pruned {
            downstream: 2,
            upstream: 2
        }
    );
    assert!(o
        .store
        .receipt_target("old-receipt")
        .await
        .unwrap()
        .is_none());
    assert!(!o.store.upstream_seen("up-old").await.unwrap());
    assert!(!o.store.upstream_seen("seen-old").await.unwrap());
    assert!(o.store.upstream_seen("up-new").await.unwrap());
    let queued: Vec<u64> = o
        .store
        .load_queued(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(queued, vec![3], "a queued row is never pruned");
    let c = commit(
        &mut o,
        4,
        vec![
            insert(8, "s", "old-done"),
            insert(9, "s", "new-done"),
            insert(10, "s", "old-accepted"),
            insert(11, "s", "old-queued"),
            upstream("up-old", vec![outbox("s", 3)]),
            upstream("up-new", vec![outbox("s", 4)]),
        ],
    )
    .await;
    assert_eq!(
        c.duplicates,
        vec![9, 10, 11],
        "a pruned id is new again; kept ones are duplicates"
    );
    assert_eq!(
        c.repeated,
        vec![4],
        "a pruned upstream id is delivered again"
    );
    let seqs: Vec<u64> = o
        .store
        .load_outbox("s", 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3], "outbox rows are never pruned");
    let counts = o.store.counts().await.unwrap();
    assert_eq!((counts.queued, counts.unroutable), (2, 1));
}

/// Without a retention nothing is pruned, however old.
pub async fn retention_off_keeps_everything(h: &mut dyn Harness) {
    let clock = Clock::manual(T0);
    let mut o = h.open_with(with_retention(&clock, None)).await.unwrap();
    commit(
        &mut o,
        1,
        vec![
            insert(1, "s", "a"),
            Op::UpstreamSeen {
                message_id: "up".into(),
            },
        ],
    )
    .await;
    commit(&mut o, 2, vec![Op::FinishDownstream { id: 1 }]).await;
    clock.advance(10 * 365 * 24 * HOUR);
    assert_eq!(prune_now(&o).await, Pruned::default());
    let c = commit(&mut o, 3, vec![insert(2, "s", "a")]).await;
    assert_eq!(c.duplicates, vec![2]);
    assert!(o.store.upstream_seen("up").await.unwrap());
    assert_eq!(*o.store.pruned().borrow(), Pruned::default());
}

/// Pruning needs no call: with rows past the retention, the store deletes
/// them by itself, in steps of at most `prune_batch` rows, while batches
/// keep coming.
pub async fn pruning_runs_in_the_background(h: &mut dyn Harness) {
    let clock = Clock::manual(T0);
    let mut o = h
        .open_with(StoreOptions {
            prune_batch: 4,
            prune_interval: Duration::from_millis(10),
            ..with_retention(&clock, Some(HOUR))
        })
        .await
        .unwrap();
    let mut ops: Vec<Op> = (1..=10).map(|i| insert(i, "s", &format!("m{i}"))).collect();
    ops.extend((1..=10).map(|i| Op::UpstreamSeen {
        message_id: format!("up{i}"),
    }));
    commit(&mut o, 1, ops).await;
    commit(
        &mut o,
        2,
        (1..=10).map(|id| Op::FinishDownstream { id }).collect(),
    )
    .await;
    clock.advance(2 * HOUR);
    let mut pruned = o.store.pruned();
    let mut no = 2;
    // Traffic goes on (a store without a thread of its own prunes between
    // batches); the pruning is awaited, not slept for.
    tokio::time::timeout(WAIT, async {
        loop {
            let p = *pruned.borrow_and_update();
            if p.downstream >= 10 && p.upstream >= 10 {
                return p;
            }
            no += 1;
            commit(&mut o, no, vec![insert(100 + no, "t", &format!("x{no}"))]).await;
        }
    })
    .await
    .expect("old rows were not pruned in the background");
    assert_eq!(
        *o.store.pruned().borrow(),
        Pruned {
            downstream: 10,
            upstream: 10
        }
    );
    no += 1;
    let c = commit(&mut o, no, vec![insert(1000, "s", "m1")]).await;
    assert!(c.duplicates.is_empty(), "m1 was pruned: it is new again");
}

/// A message still queued when it is older than the retention is kept;
/// its row is pruned a retention after its final result, like any other.
pub async fn a_message_queued_past_the_retention_is_pruned_after_its_result(h: &mut dyn Harness) {
    let clock = Clock::manual(T0);
    let mut o = h
        .open_with(with_retention(&clock, Some(HOUR)))
        .await
        .unwrap();
    commit(
        &mut o,
        1,
        vec![
            insert(1, "s", "late"),
            insert(2, "s", "early"),
            insert(3, "s", "queued"),
        ],
    )
    .await;
    commit(&mut o, 2, vec![Op::FinishDownstream { id: 2 }]).await;
    clock.advance(2 * HOUR);
    prune_now(&o).await;
    assert_eq!(o.store.pruned().borrow().downstream, 1);
    commit(&mut o, 3, vec![Op::FinishDownstream { id: 1 }]).await;
    prune_now(&o).await;
    assert_eq!(
        o.store.pruned().borrow().downstream,
        1,
        "finished just now: kept"
    );
    let c = commit(&mut o, 4, vec![insert(4, "s", "late")]).await;
    assert_eq!(c.duplicates, vec![4]);
    clock.advance(2 * HOUR);
    prune_now(&o).await;
    assert_eq!(o.store.pruned().borrow().downstream, 2);
    let c = commit(
        &mut o,
        5,
        vec![insert(5, "s", "late"), insert(6, "s", "queued")],
    )
    .await;
    assert_eq!(c.duplicates, vec![6], "the queued one is still there");
    let queued: Vec<u64> = o
        .store
        .load_queued(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(queued, vec![3, 5]);
}

/// Row ids stay above every id handed out, even when pruning deleted the
/// highest rows and the store is reopened.
pub async fn pruned_row_ids_are_not_reused(h: &mut dyn Harness) {
    let clock = Clock::manual(T0);
    {
        let mut o = h
            .open_with(with_retention(&clock, Some(HOUR)))
            .await
            .unwrap();
        commit(
            &mut o,
            1,
            (1..=3).map(|i| insert(i, "s", &format!("m{i}"))).collect(),
        )
        .await;
        commit(
            &mut o,
            2,
            (1..=3).map(|id| Op::FinishDownstream { id }).collect(),
        )
        .await;
        clock.advance(2 * HOUR);
        prune_now(&o).await;
        assert_eq!(o.store.pruned().borrow().downstream, 3);
    }
    let o = h
        .open_with(with_retention(&clock, Some(HOUR)))
        .await
        .unwrap();
    assert_eq!(o.recovery.next_id, 4);
    assert_eq!(o.recovery.queued, 0);
}

/// The tests' PostgreSQL server (`GIMMM_TEST_POSTGRES_URL`, a superuser
/// URL; `.ci/postgres-setup.sh` starts one and writes it to
/// `/tmp/gimmm-pg/env`) with a fresh database created on it for the
/// caller. Without the variable: `None` and a notice (the test is skipped),
/// unless `CI` is set, where a missing server fails the test.
pub async fn postgres_scratch() -> Option<crate::postgres::PgTarget> {
    let url = postgres_scratch_url().await?;
    Some(crate::postgres::PgTarget::parse(&url, None).expect("scratch URL"))
}

/// [`postgres_scratch`] as a URL (with the password), for a config's
/// `store.url`.
pub async fn postgres_scratch_url() -> Option<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = match std::env::var("GIMMM_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but GIMMM_TEST_POSTGRES_URL is not: run .ci/postgres-setup.sh and source /tmp/gimmm-pg/env"
            );
            eprintln!(
                "skipping a PostgreSQL test: GIMMM_TEST_POSTGRES_URL not set (run .ci/postgres-setup.sh, then `set -a; . /tmp/gimmm-pg/env; set +a`)"
            );
            return None;
        }
    };
    let admin = crate::postgres::PgTarget::parse(&url, None).expect("GIMMM_TEST_POSTGRES_URL");
    let name = format!(
        "gimmm_t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        crate::now_ms() % 1_000_000_000
    );
    let (client, conn) = admin
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .expect("cannot connect to GIMMM_TEST_POSTGRES_URL");
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    drop(client);
    let _ = conn.await;
    // postgres://user:pw@host:port/DB?params: the database is the path.
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url.as_str(), None),
    };
    let base = match head.rfind('/') {
        Some(i) if i > head.find("//").map_or(0, |j| j + 1) => &head[..i],
        _ => head,
    };
    Some(match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    })
}
