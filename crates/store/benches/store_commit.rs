//! Store micro-benchmarks: the writes of a downstream message's life, in
//! batches as the engine makes them (`cargo bench -p store`).
//!
//! * `lifecycle/256` — 256 messages: one batch of inserts, one batch of
//!   "acked" (finish + DOWNSTREAM_ACK outbox row), one batch of outbox
//!   deletes (the BAL's ACKs). Three commits (three fsyncs with
//!   `synchronous=FULL`), so the per-message figure is what group commit
//!   buys.
//! * `commit/1` — one message per commit: the fsync-bound latency of a lone
//!   message.
//! * `tmpfs/…` — the same on `/dev/shm` (when there is one), where fsync
//!   costs nothing: the CPU cost alone. The disk variants depend on the
//!   machine's flush latency, which on a shared VM varies by 10x.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use store::sqlite::SqliteStore;
use store::{now_ms, Batch, Committed, NewDownstream, Op, Store};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

struct Rig {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    rx: UnboundedReceiver<Committed>,
    no: u64,
    next: u64,
    session: Arc<str>,
}

impl Rig {
    fn new(tmpfs: bool) -> Rig {
        let dir = if tmpfs {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let (tx, rx) = unbounded_channel();
        let (store, _) = SqliteStore::open(&dir.path().join("bench.db"), tx).unwrap();
        Rig {
            _dir: dir,
            store,
            rx,
            no: 0,
            next: 1,
            session: Arc::from("com.example.app"),
        }
    }

    fn commit(&mut self, ops: Vec<Op>) {
        self.no += 1;
        self.store.submit(Batch { no: self.no, ops }).unwrap();
        let c = self.rx.blocking_recv().unwrap();
        assert_eq!(c.no, self.no);
    }

    /// Runs `n` messages through insert, finish + outbox, outbox delete.
    fn lifecycle(&mut self, n: u64) {
        let first = self.next;
        self.next += n;
        let ids = first..first + n;
        let inserts = ids
            .clone()
            .map(|id| {
                Op::InsertDownstream(NewDownstream {
                    id,
                    session: self.session.clone(),
                    message_id: format!("m-{id}"),
                    group_id: None,
                    body: format!(
                        r#"{{"to":"bench-device-{}","message_id":"m-{id}","time_to_live":3600,"data":{{"score":"3x1"}}}}"#,
                        id % 1000
                    ),
                    accepted_at_ms: now_ms(),
                    expires_at_ms: now_ms() + 3_600_000,
                    receipt: false,
                })
            })
            .collect();
        self.commit(inserts);
        let mut acked = Vec::with_capacity(2 * n as usize);
        for id in ids.clone() {
            acked.push(Op::FinishDownstream { id });
            acked.push(Op::InsertOutbox {
                seq: id,
                session: self.session.clone(),
                body: format!(
                    r#"{{"message_type":"DOWNSTREAM_ACK","sequence_id":{id},"session_id":"com.example.app","message_id":"m-{id}","fcm_data":{{"from":"bench-device-1","message_id":"m-{id}","message_type":"ack"}}}}"#
                )
                .into(),
            });
        }
        self.commit(acked);
        let deletes = ids
            .map(|seq| Op::DeleteOutbox {
                session: self.session.clone(),
                seq,
            })
            .collect();
        self.commit(deletes);
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.sample_size(20);
    let tmpfs = std::path::Path::new("/dev/shm").is_dir();
    for (name, on_tmpfs) in [("disk", false), ("tmpfs", true)] {
        if on_tmpfs && !tmpfs {
            continue;
        }
        let mut rig = Rig::new(on_tmpfs);
        // Some history first, so the indexes are not trivially small.
        for _ in 0..40 {
            rig.lifecycle(256);
        }
        g.throughput(Throughput::Elements(256));
        g.bench_function(format!("{name}/lifecycle/256"), |b| {
            b.iter(|| rig.lifecycle(256))
        });
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}/commit/1"), |b| b.iter(|| rig.lifecycle(1)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
