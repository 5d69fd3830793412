//! Which way of reusing space keeps the SQLite store's files flat under
//! steady load with retention (SPEC §11 "Retention"; the figures are in
//! BENCHMARKS.md, "Retention and disk space"). Not a test: run by hand.
//!
//! ```text
//! cargo run --release -p store --example space_reuse -- \
//!     [--mode reuse|incremental|off] [--waves 20] [--per-wave 50000] \
//!     [--no-reader] [--dir DIR] [--prune-batch 128]
//! ```
//!
//! Each wave runs `--per-wave` messages through the store the way the
//! engine does (insert; final result + DOWNSTREAM_ACK outbox row; the BAL's
//! ACK deletes it), one in five also an upstream id, in batches of 256, with
//! a reader thread paging the queue meanwhile (as the engine does; it holds
//! WAL snapshots, which decides how far checkpoints get). After each wave
//! the store's manual clock moves past the retention, so the wave's rows are
//! pruned in the background during the next one; the wave ends once they
//! are (awaited on the store's pruned counter). Then the sizes are read.
//!
//! * `reuse` — the store as it is: deleted pages go to SQLite's free list
//!   and new rows take them.
//! * `incremental` — the database is created with `auto_vacuum =
//!   INCREMENTAL`, and a second connection runs `PRAGMA
//!   incremental_vacuum(256)` every 100 ms (1 MiB steps), returning free
//!   pages to the file system.
//! * `off` — no retention (the reference: what grows without pruning).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::sqlite::SqliteStore;
use store::{Batch, Clock, NewDownstream, Op, Store, StoreOptions};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const BATCH: u64 = 256;
const HOUR: Duration = Duration::from_secs(3600);

struct Args {
    mode: String,
    waves: u64,
    per_wave: u64,
    reader: bool,
    dir: Option<PathBuf>,
    prune_batch: usize,
}

fn args() -> Args {
    let mut a = Args {
        mode: "reuse".into(),
        waves: 20,
        per_wave: 50_000,
        reader: true,
        dir: None,
        prune_batch: StoreOptions::default().prune_batch,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("flag needs a value");
        match k.as_str() {
            "--mode" => a.mode = v(),
            "--waves" => a.waves = v().parse().expect("--waves"),
            "--per-wave" => a.per_wave = v().parse().expect("--per-wave"),
            "--no-reader" => a.reader = false,
            "--prune-batch" => a.prune_batch = v().parse().expect("--prune-batch"),
            "--dir" => a.dir = Some(v().into()),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        matches!(a.mode.as_str(), "reuse" | "incremental" | "off"),
        "--mode reuse|incremental|off"
    );
    a
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// CPU time (user + system) of this process so far, in seconds.
fn cpu_secs() -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = text.rsplit_once(')').map(|r| r.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime, in clock ticks (100 per second on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

struct Rig {
    store: SqliteStore,
    rx: UnboundedReceiver<store::Committed>,
    no: u64,
    next_id: u64,
    next_seq: u64,
    session: Arc<str>,
}

impl Rig {
    async fn commit(&mut self, ops: Vec<Op>) {
        self.no += 1;
        self.store.submit(Batch { no: self.no, ops }).unwrap();
        let c = self.rx.recv().await.unwrap();
        assert_eq!(c.no, self.no);
        assert!(c.failed_inserts.is_empty(), "{:?}", c.error);
    }

    async fn lifecycle(&mut self, n: u64, now: i64) {
        let first = self.next_id;
        self.next_id += n;
        let ids = first..first + n;
        let mut ops: Vec<Op> = ids
            .clone()
            .map(|id| {
                Op::InsertDownstream(NewDownstream {
                    id,
                    session: self.session.clone(),
                    message_id: format!("bench-0badf00d-{id}"),
                    group_id: None,
                    body: format!(
                        r#"{{"to":"bench-device-{}","message_id":"bench-0badf00d-{id}","time_to_live":3600,"data":{{"score":"3x1","bench_i":"{id}"}}}}"#,
                        id % 1000
                    ),
                    accepted_at_ms: now,
                    expires_at_ms: now + 3_600_000,
                    receipt: id % 10 == 0,
                })
            })
            .collect();
        // One in five: an upstream message (its id deduplicated, its line
        // queued for the BAL).
        let ups: Vec<(u64, u64)> = ids
            .clone()
            .filter(|id| id % 5 == 0)
            .map(|id| {
                self.next_seq += 1;
                (id, self.next_seq)
            })
            .collect();
        for (id, seq) in &ups {
            ops.push(Op::Upstream {
                message_id: format!("0:1700000000000000%{id:016x}"),
                then: vec![Op::InsertOutbox {
                    seq: *seq,
                    session: self.session.clone(),
                    body: format!(
                        r#"{{"message_type":"UPSTREAM","sequence_id":{seq},"data":{{"k":"v"}}}}"#
                    )
                    .into(),
                }],
            });
        }
        self.commit(ops).await;
        let mut acked = Vec::with_capacity(2 * n as usize);
        let mut seqs: Vec<u64> = ups.iter().map(|(_, s)| *s).collect();
        for id in ids {
            self.next_seq += 1;
            seqs.push(self.next_seq);
            acked.push(Op::FinishDownstream { id });
            acked.push(Op::InsertOutbox {
                seq: self.next_seq,
                session: self.session.clone(),
                body: format!(
                    r#"{{"message_type":"DOWNSTREAM_ACK","sequence_id":{},"message_id":"bench-0badf00d-{id}","fcm_data":{{"from":"bench-device-1","message_id":"bench-0badf00d-{id}","message_type":"ack"}}}}"#,
                    self.next_seq
                )
                .into(),
            });
        }
        self.commit(acked).await;
        let deletes = seqs
            .into_iter()
            .map(|seq| Op::DeleteOutbox {
                session: self.session.clone(),
                seq,
            })
            .collect();
        self.commit(deletes).await;
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let tmp = tempfile::tempdir().unwrap();
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("space-{}.db", a.mode));
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    for p in [&path, &wal] {
        let _ = std::fs::remove_file(p);
    }
    if a.mode == "incremental" {
        // Must be set before the first table is created.
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "auto_vacuum", "INCREMENTAL").unwrap();
        c.execute_batch("CREATE TABLE x (y); DROP TABLE x;")
            .unwrap();
    }
    let clock = Clock::manual(1_700_000_000_000);
    let retention = (a.mode != "off").then_some(HOUR);
    let (tx, rx) = unbounded_channel();
    let (store, _) = SqliteStore::open_with(
        &path,
        tx,
        StoreOptions {
            retention,
            clock: clock.clone(),
            // Look again soon after a pass (1 s by default): the wave's
            // time is then the work, not the pruner's schedule.
            prune_interval: Duration::from_millis(10),
            prune_batch: a.prune_batch,
        },
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    if a.reader {
        let (s, stop) = (store.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rt.block_on(async {
                    let _ = s.load_queued(0, 100).await;
                    let _ = s.upstream_seen(&format!("x{i}")).await;
                });
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    if a.mode == "incremental" {
        let (p, stop) = (path.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let c = Connection::open(&p).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = c.execute_batch("PRAGMA incremental_vacuum(256)");
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    let mut rig = Rig {
        store: store.clone(),
        rx,
        no: 0,
        next_id: 1,
        next_seq: 0,
        session: Arc::from("com.example.app"),
    };
    let per_wave_rows = a.per_wave;
    let per_wave_up = a.per_wave / 5;
    println!(
        "mode {} reader {} per wave {} (+{} upstream ids)",
        a.mode, a.reader, a.per_wave, per_wave_up
    );
    println!("wave   secs  msg/s  cpu µs/msg  db MiB  wal MiB  pages  free  pruned rows");
    let mut pruned_rx = store.pruned();
    let mut first_total = 0;
    for w in 1..=a.waves {
        let t = Instant::now();
        let cpu0 = cpu_secs();
        let mut left = a.per_wave;
        while left > 0 {
            let n = left.min(BATCH);
            rig.lifecycle(n, clock.now_ms()).await;
            left -= n;
        }
        if retention.is_some() && w > 1 {
            // Everything up to the previous wave is past the retention:
            // wait until it is gone.
            let want = (w - 1) * per_wave_rows;
            tokio::time::timeout(Duration::from_secs(120), async {
                loop {
                    if pruned_rx.borrow_and_update().downstream >= want {
                        return;
                    }
                    pruned_rx.changed().await.unwrap();
                }
            })
            .await
            .expect("pruning did not keep up");
        }
        let secs = t.elapsed().as_secs_f64();
        let cpu_us = (cpu_secs() - cpu0) * 1e6 / a.per_wave as f64;
        clock.advance(HOUR + Duration::from_millis(1));
        let r =
            Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let pages: i64 = r.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let free: i64 = r
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        drop(r);
        let total = size(&path) + size(&wal);
        if w == 3 {
            first_total = total;
        }
        println!(
            "{w:>4} {secs:>6.2} {:>6.0} {cpu_us:>11.2} {:>7.1} {:>8.1} {pages:>6} {free:>5} {}",
            a.per_wave as f64 / secs,
            mib(size(&path)),
            mib(size(&wal)),
            pruned_rx.borrow().downstream,
        );
        if w == a.waves && first_total > 0 {
            println!(
                "db+wal after wave 3: {:.1} MiB, after wave {w}: {:.1} MiB ({:+.1}%)",
                mib(first_total),
                mib(total),
                (total as f64 / first_total as f64 - 1.0) * 100.0
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
}
