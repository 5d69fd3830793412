//! The SQLite store (SPEC §6 "Storage"): WAL mode, pipelined group commit,
//! versioned migrations. The embedded default of [`crate::Store`].
//!
//! One writer thread owns the read-write connection. Batches are applied as
//! they arrive inside one open transaction, which is committed as soon as
//! the previous commit is on disk (**group commit**: one fsync per group,
//! not per message). A second thread, the syncer, makes each commit durable
//! with `fdatasync` of the WAL and only then reports its batches as
//! [`Committed`]; the writer meanwhile applies the next batches, so CPU work
//! and the disk's flush latency overlap instead of adding up
//! ([`writer`]).
//!
//! Durability is that of `synchronous=FULL` (every reported commit was
//! fsynced); the connection runs with `synchronous=NORMAL` only because the
//! fsync after each commit is done by the syncer instead of inside
//! `COMMIT`. With NORMAL, SQLite still syncs the WAL before and the database
//! after every checkpoint. One consequence: a commit is visible to readers
//! a moment before it is durable. The interface promises durable rows only,
//! so the syncer raises "durable up to" marks (highest row id and sequence
//! id of the batches it reported) and the reads stop there.
//!
//! Reads go through a second, read-only connection on a blocking thread, so
//! they never wait for the writer and never run on the caller's task.
//!
//! The schema lives in `migrations/`, applied in order and recorded in
//! `PRAGMA user_version` ([`migrate`]).
//!
//! Retention (SPEC §11): the writer thread also deletes finished rows and
//! upstream ids older than [`StoreOptions::retention`], one small step at a
//! time and only when no batch is waiting ([`prune`]).

mod apply;
mod migrate;
mod prune;
mod writer;

use crate::marks::{durable, Marks};
use crate::retention::{Pruned, StoreOptions};
use crate::types::{
    Batch, Committed, Counts, OutboxRow, QueuedRow, ReceiptTarget, Recovered, Recovery,
    UnroutableRow,
};
use crate::{ReadResult, Store, StoreError};
use futures::future::BoxFuture;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{oneshot, watch};

pub use migrate::MIGRATIONS;

/// Page cache of the writer connection (KiB). The indexes of a busy store
/// are written all over; a larger cache saves reads of hot pages.
const WRITER_CACHE_KIB: i64 = 8 * 1024;

/// Size the WAL is cut back to when it restarts after a checkpoint. Under
/// steady load it stays near the auto-checkpoint size (1000 pages, ~4 MiB)
/// and this never acts; after a burst (one huge group, a reader that held
/// a snapshot for long) it keeps the file from staying at its high-water
/// mark for ever (BENCHMARKS.md, "Retention and disk space").
pub(crate) const WAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

/// How often and how many times an open retries a store that is locked:
/// about two seconds, for a store still closing, before it is refused.
const LOCK_RETRY_EVERY: Duration = Duration::from_millis(10);
const LOCK_TRIES: u32 = 200;

/// The SQLite store. Cheap to clone; the writer stops when the last handle
/// is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    tx: mpsc::Sender<writer::ToWriter>,
    reader: mpsc::Sender<ReadJob>,
    path: Arc<PathBuf>,
    /// The marks (the reader thread and the syncer hold them too); the
    /// tests lower them to see reads stop there.
    #[cfg(test)]
    marks: Arc<Marks>,
    _lock: Arc<StoreLock>,
    closed: watch::Receiver<()>,
    _stop: Arc<StopOnDrop>,
    degraded: Arc<AtomicBool>,
    pruned: watch::Receiver<Pruned>,
}

/// The advisory lock beside the database. Every handle and each of the
/// store's threads (writer, syncer, reader) holds it, so it is released only
/// once the last of them is gone and nothing can write any more: then a
/// store opened again in the same process cannot race a writer still
/// finishing. The file closes (releasing the lock) before `closed` drops,
/// which is what [`SqliteStore::closed`] waits for.
pub(crate) struct StoreLock {
    _file: File,
    _closed: watch::Sender<()>,
}

/// Tells the writer to stop when the last [`SqliteStore`] clone is dropped
/// (the syncer keeps the writer's channel open, so disconnection cannot say
/// it).
struct StopOnDrop(mpsc::Sender<writer::ToWriter>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(writer::ToWriter::Stop);
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Maps a SQLite error to the store's, naming the file.
pub(crate) fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Backend {
        what: format!("sqlite error on {}", path.display()),
        source: Box::new(source),
    }
}

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(path, flags).map_err(sql(path))?;
    c.busy_timeout(Duration::from_secs(5)).map_err(sql(path))?;
    Ok(c)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with the default
    /// options (24 hours' retention) and starts the writer and syncer
    /// threads; each committed batch is reported on `committed`. A store
    /// open elsewhere is refused with [`StoreError::Locked`], after about
    /// two seconds' wait for one that is closing.
    pub fn open(
        path: &Path,
        committed: UnboundedSender<Committed>,
    ) -> Result<(SqliteStore, Recovery), StoreError> {
        SqliteStore::open_with(path, committed, StoreOptions::default())
    }

    /// [`SqliteStore::open`] with the given options.
    pub fn open_with(
        path: &Path,
        committed: UnboundedSender<Committed>,
        options: StoreOptions,
    ) -> Result<(SqliteStore, Recovery), StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
        }
        // An advisory lock beside the database: two gimmm on one store would
        // hand out the same sequence ids.
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        // A store closing (its last commit, in this process or one that is
        // exiting) lets go within moments: wait that long before refusing.
        let mut tries = 0;
        loop {
            match lock_file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < LOCK_TRIES => {
                    tries += 1;
                    std::thread::sleep(LOCK_RETRY_EVERY);
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked(path.to_path_buf()))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        let (closed_tx, closed) = watch::channel(());
        let lock = Arc::new(StoreLock {
            _file: lock_file,
            _closed: closed_tx,
        });

        let mut w = open_conn(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        w.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql(path))?;
        // FULL durability: the syncer fsyncs the WAL after every commit
        // before reporting it (see the module docs).
        w.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql(path))?;
        w.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(sql(path))?;
        w.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(sql(path))?;
        w.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql(path))?;
        migrate::migrate(&mut w, path)?;
        let r = open_conn(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let (recovery, max_id, max_seq) = recover(&r, path)?;
        // What a previous run left is visible now; make it durable too, so
        // that everything read back is on disk.
        let files = writer::SyncFiles::new(path);
        files.sync_once().map_err(io)?;
        let marks = Arc::new(Marks::default());
        marks.raise(max_id, max_seq);

        let degraded = Arc::new(AtomicBool::new(false));
        let (totals, pruned) = watch::channel(Pruned::default());
        let cursor: i64 = w
            .query_row(
                "SELECT value FROM meta WHERE key = 'prune_cursor'",
                [],
                |r| r.get(0),
            )
            .map_err(sql(path))?;
        let pruner = prune::Pruner::new(&options, totals, cursor);
        let tx = writer::start(
            w,
            path,
            files,
            pruner,
            writer::Shared {
                committed,
                marks: marks.clone(),
                degraded: degraded.clone(),
                lock: lock.clone(),
            },
        )
        .map_err(io)?;
        #[cfg(test)]
        let test_marks = marks.clone();
        let reader = start_reader(r, path, marks, lock.clone()).map_err(io)?;
        Ok((
            SqliteStore {
                tx: tx.clone(),
                reader,
                path: Arc::new(path.to_path_buf()),
                #[cfg(test)]
                marks: test_marks,
                _lock: lock,
                closed,
                _stop: Arc::new(StopOnDrop(tx)),
                degraded,
                pruned,
            },
            recovery,
        ))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves once the store is closed: every handle dropped, the writer,
    /// syncer and reader threads finished and the lock released, so the
    /// same file can be opened again. Holding this future does not keep the
    /// store open.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.clone();
        async move {
            // Only the sender's drop ends this: nothing sends on it.
            while rx.changed().await.is_ok() {}
        }
    }

    /// Runs a read on the reader thread, with the reader connection.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Marks) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, ReadResult<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = self.path.clone();
        let job: ReadJob = Box::new(move |c, marks| {
            let _ = tx.send(f(c, marks).map_err(sql(&path)));
        });
        let sent = self.reader.send(job).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Stopped);
            }
            rx.await.map_err(|_| StoreError::Stopped)?
        })
    }
}

/// A read for the reader thread.
type ReadJob = Box<dyn FnOnce(&Connection, &Marks) + Send>;

/// Starts the reader thread: it owns the read-only connection and runs the
/// reads one after another. One thread rather than tokio's blocking pool:
/// the rows a read allocates then always come from one allocator arena,
/// which keeps the gateway's memory flat (with a thread per read, each
/// thread's arena keeps what its reads once held).
fn start_reader(
    conn: Connection,
    path: &Path,
    marks: Arc<Marks>,
    lock: Arc<StoreLock>,
) -> std::io::Result<mpsc::Sender<ReadJob>> {
    let (tx, rx) = mpsc::channel::<ReadJob>();
    let name = path.display().to_string();
    std::thread::Builder::new()
        .name("gimmm-store-read".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                job(&conn, &marks);
            }
            drop(conn);
            drop(lock);
            tracing::debug!(store = %name, "store reader stopped");
        })?;
    Ok(tx)
}

impl Store for SqliteStore {
    fn submit(&self, batch: Batch) -> Result<(), StoreError> {
        self.tx
            .send(writer::ToWriter::Batch(batch))
            .map_err(|_| StoreError::Stopped)
    }

    fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn load_queued(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, ReadResult<Vec<QueuedRow>>> {
        self.read(move |c, marks| {
            let mut st = c.prepare_cached(
                "SELECT id, session, message_id, group_id, body, attempts, not_before,
                        accepted_at, expires_at, receipt
                 FROM downstream WHERE state = 0 AND id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
            )?;
            let rows = st.query_map(
                params![after as i64, durable(&marks.id), limit as i64],
                |r| {
                    Ok(QueuedRow {
                        id: r.get::<_, i64>(0)? as u64,
                        session: r.get(1)?,
                        message_id: r.get(2)?,
                        group_id: r.get(3)?,
                        body: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        attempts: r.get::<_, i64>(5)? as u32,
                        not_before_ms: r.get(6)?,
                        accepted_at_ms: r.get(7)?,
                        expires_at_ms: r.get(8)?,
                        receipt: r.get::<_, i64>(9)? != 0,
                    })
                },
            )?;
            rows.collect()
        })
    }

    fn load_outbox(
        &self,
        session: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, ReadResult<Vec<OutboxRow>>> {
        let session = session.to_string();
        self.read(move |c, marks| {
            let mut st = c.prepare_cached(
                "SELECT seq, session, body FROM outbox WHERE session = ?1 AND seq > ?2 AND seq <= ?3
                 ORDER BY seq LIMIT ?4",
            )?;
            let rows = st.query_map(
                params![session, after as i64, durable(&marks.seq), limit as i64],
                |r| {
                    Ok(OutboxRow {
                        seq: r.get::<_, i64>(0)? as u64,
                        session: r.get(1)?,
                        body: r.get(2)?,
                    })
                },
            )?;
            rows.collect()
        })
    }

    fn receipt_target(
        &self,
        message_id: &str,
    ) -> BoxFuture<'static, ReadResult<Option<ReceiptTarget>>> {
        let message_id = message_id.to_string();
        self.read(move |c, marks| {
            c.prepare_cached(
                "SELECT session, id FROM downstream WHERE message_id = ?1 AND receipt = 1
                 AND id <= ?2 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![message_id, durable(&marks.id)], |r| {
                Ok(ReceiptTarget {
                    session: r.get(0)?,
                    id: r.get::<_, i64>(1)? as u64,
                })
            })
            .optional()
        })
    }

    fn upstream_seen(&self, message_id: &str) -> BoxFuture<'static, ReadResult<bool>> {
        let message_id = message_id.to_string();
        self.read(move |c, _| {
            c.prepare_cached("SELECT 1 FROM upstream_seen WHERE message_id = ?1")?
                .exists(params![message_id])
        })
    }

    fn counts(&self) -> BoxFuture<'static, ReadResult<Counts>> {
        self.read(|c, _| {
            let q: i64 =
                c.query_row("SELECT count(*) FROM downstream WHERE state = 0", [], |r| {
                    r.get(0)
                })?;
            let o: i64 = c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
            let u: i64 = c.query_row("SELECT count(*) FROM unroutable", [], |r| r.get(0))?;
            Ok(Counts {
                queued: q as u64,
                outbox: o as u64,
                unroutable: u as u64,
            })
        })
    }

    fn unroutable(&self, limit: usize) -> BoxFuture<'static, ReadResult<Vec<UnroutableRow>>> {
        self.read(move |c, _| {
            let mut st = c.prepare_cached(
                "SELECT category, body FROM unroutable ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = st.query_map(params![limit as i64], |r| {
                Ok(UnroutableRow {
                    category: r.get(0)?,
                    body: r.get(1)?,
                })
            })?;
            rows.collect()
        })
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn prune_now(&self) -> BoxFuture<'static, ReadResult<Pruned>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(writer::ToWriter::Prune(tx));
        let path = self.path.clone();
        Box::pin(async move {
            sent.map_err(|_| StoreError::Stopped)?;
            rx.await
                .map_err(|_| StoreError::Stopped)?
                .map_err(|e| StoreError::Backend {
                    what: format!("sqlite error on {} while pruning", path.display()),
                    source: e.into(),
                })
        })
    }

    fn pruned(&self) -> watch::Receiver<Pruned> {
        self.pruned.clone()
    }
}

/// What the database holds at open: the recovery summary, and the highest
/// row id and sequence id (everything there is durable).
fn recover(c: &Connection, path: &Path) -> Result<(Recovery, u64, u64), StoreError> {
    let meta_seq: i64 = c
        .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
            r.get(0)
        })
        .map_err(sql(path))?;
    let max_id: i64 = c
        .query_row("SELECT coalesce(max(id), 0) FROM downstream", [], |r| {
            r.get(0)
        })
        .map_err(sql(path))?;
    // Pruning may have deleted the highest rows: ids stay above them.
    let meta_id: i64 = c
        .query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql(path))?
        .unwrap_or(1);
    let queued: i64 = c
        .query_row("SELECT count(*) FROM downstream WHERE state = 0", [], |r| {
            r.get(0)
        })
        .map_err(sql(path))?;
    let mut st = c
        .prepare("SELECT session, count(*), max(seq) FROM outbox GROUP BY session")
        .map_err(sql(path))?;
    let per_session = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql(path))?;
    Ok(Recovered {
        meta_seq,
        meta_id,
        max_id,
        queued,
        outbox: per_session,
    }
    .summary())
}

#[cfg(test)]
mod tests;
