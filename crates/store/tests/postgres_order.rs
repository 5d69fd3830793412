//! The PostgreSQL store applies a group by kind of write when that gives
//! the result of applying it in order, and one write after another when it
//! would not (`crates/store/src/postgres/bulk.rs`). These groups need the
//! second: their writes refer to rows written after them. On the tests'
//! server (`GIMMM_TEST_POSTGRES_URL`, see `.ci/postgres-setup.sh`; skipped
//! without it unless `CI` is set).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;
use store::conformance::{insert, postgres_scratch};
use store::postgres::{LeaseOptions, PgStore};
use store::{Batch, Op, Store, StoreOptions};

#[tokio::test]
async fn writes_before_the_rows_they_name_apply_in_order() {
    let Some(target) = postgres_scratch().await else {
        return;
    };
    let (tx, mut commits) = tokio::sync::mpsc::unbounded_channel();
    let (store, _) =
        PgStore::open_with(target, LeaseOptions::default(), tx, StoreOptions::default())
            .await
            .unwrap();
    let outbox = |seq| Op::InsertOutbox {
        session: Arc::from("s"),
        seq,
        body: Arc::from(format!("{{\"seq\":{seq}}}")),
    };
    // In order: the result of 5 finds no row yet (nothing happens), then 5
    // is stored queued; the delete of outbox row 7 finds nothing, then the
    // row is written; an upstream message's writes include a new
    // downstream row (another kind of write) and its id repeats in the
    // group, which must not deliver twice.
    let ops = vec![
        Op::FinishDownstream { id: 5 },
        insert(5, "s", "m5"),
        Op::DeleteOutbox {
            session: Arc::from("s"),
            seq: 7,
        },
        outbox(7),
        Op::Upstream {
            message_id: "up".into(),
            then: vec![insert(6, "s", "m6"), outbox(8)],
        },
        Op::Upstream {
            message_id: "up".into(),
            then: vec![outbox(9)],
        },
    ];
    store.submit(Batch { no: 1, ops }).unwrap();
    let c = tokio::time::timeout(Duration::from_secs(20), commits.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.no, c.repeated.clone()), (1, vec![9]));
    assert!(c.duplicates.is_empty() && c.failed_inserts.is_empty());
    let queued: Vec<u64> = store
        .load_queued(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        queued,
        vec![5, 6],
        "a result before its row changes nothing"
    );
    let seqs: Vec<u64> = store
        .load_outbox("s", 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![7, 8], "a delete before its row deletes nothing");
}
