//! gimmm's durable store: SQLite in WAL mode with group commit.
//!
//! One writer thread owns the read-write connection. Callers hand it
//! [`Batch`]es of [`Op`]s; it applies every batch that is waiting in **one**
//! transaction (`synchronous=FULL`, so one fsync per group, not per message)
//! and then reports each batch as [`Committed`]. The gateway's engine only
//! tells a BAL "accepted", or acks an upstream message to FCM, after that
//! report — so what was promised is on disk.
//!
//! Reads (recovery at start, paging queued messages and outboxes in) go
//! through a second, read-only connection, so they never wait for the writer.
//!
//! The schema lives in `migrations/`, applied in order and recorded in
//! `PRAGMA user_version`.

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Versioned schema migrations, applied in order.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_initial.sql")];

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite error on {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// Another process holds the store.
    #[error("store {0} is locked by another process (is another gimmm running on it?)")]
    Locked(PathBuf),
    /// The file system failed.
    #[error("cannot open store {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The writer thread is gone.
    #[error("store writer stopped")]
    Stopped,
    /// The database was written by a newer gimmm.
    #[error("store {path} has schema version {found}, this gimmm knows up to {known}")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Version this binary knows.
        known: i64,
    },
}

/// Milliseconds since the Unix epoch (wall clock; used for stored deadlines).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One write. Each is idempotent, so a batch can be retried after a failure.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store a new downstream message. Ignored (and reported as duplicate)
    /// when the session already has this message id.
    InsertDownstream(NewDownstream),
    /// Record a failed attempt and when the next may be made.
    RetryDownstream {
        /// Row id.
        id: u64,
        /// Attempts made so far.
        attempts: u32,
        /// Unix ms before which it must not be sent.
        not_before_ms: i64,
    },
    /// The message has its final result: keep only its id (for idempotency).
    FinishDownstream {
        /// Row id.
        id: u64,
    },
    /// A receipt arrived for this message: no more receipt routing needed.
    ReceiptDone {
        /// Row id.
        id: u64,
    },
    /// A sequenced message for a BAL session.
    InsertOutbox {
        /// Sequence id.
        seq: u64,
        /// Session.
        session: Arc<str>,
        /// The full JSON line (without newline).
        body: String,
    },
    /// The BAL acknowledged a sequenced message.
    DeleteOutbox {
        /// Sequence id.
        seq: u64,
    },
    /// An upstream message id was delivered (for deduplication of resends).
    UpstreamSeen {
        /// FCM's upstream message id.
        message_id: String,
    },
    /// An upstream message whose category no session has.
    Unroutable {
        /// The category.
        category: String,
        /// The upstream JSON.
        body: String,
    },
}

/// A downstream message to store.
#[derive(Debug, Clone)]
pub struct NewDownstream {
    /// Row id, chosen by the caller (increasing).
    pub id: u64,
    /// BAL session.
    pub session: Arc<str>,
    /// Message id (given or generated).
    pub message_id: String,
    /// Optional ordering group.
    pub group_id: Option<String>,
    /// The FCM JSON to send.
    pub body: String,
    /// Unix ms after which it expires.
    pub expires_at_ms: i64,
    /// Whether a delivery receipt was requested.
    pub receipt: bool,
}

/// Writes that commit together (or, on failure, are retried together).
#[derive(Debug, Default)]
pub struct Batch {
    /// Caller's batch number, echoed in [`Committed`].
    pub no: u64,
    /// The writes.
    pub ops: Vec<Op>,
}

/// The writer's report for one batch: it is on disk.
#[derive(Debug)]
pub struct Committed {
    /// The batch number.
    pub no: u64,
    /// Ids of `InsertDownstream` ops that were duplicates (not inserted).
    pub duplicates: Vec<u64>,
    /// Ids of `InsertDownstream` ops that could not be stored (disk full,
    /// read-only ...): they must not be reported as accepted.
    pub failed_inserts: Vec<u64>,
    /// The error that made inserts fail, for the BAL.
    pub error: Option<String>,
    /// How many batches shared the transaction.
    pub group_size: usize,
    /// How long the commit took.
    pub commit_time: Duration,
}

/// A queued downstream message read back from disk.
#[derive(Debug, Clone)]
pub struct QueuedRow {
    /// Row id.
    pub id: u64,
    /// Session.
    pub session: String,
    /// Message id.
    pub message_id: String,
    /// Ordering group.
    pub group_id: Option<String>,
    /// FCM JSON.
    pub body: String,
    /// Attempts made.
    pub attempts: u32,
    /// Unix ms before which not to send.
    pub not_before_ms: i64,
    /// Unix ms expiry.
    pub expires_at_ms: i64,
    /// Receipt requested.
    pub receipt: bool,
}

/// A sequenced message read back from disk.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Sequence id.
    pub seq: u64,
    /// Session.
    pub session: String,
    /// JSON line.
    pub body: String,
}

/// What the store knows at start.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Next sequence id to hand out.
    pub next_seq: u64,
    /// Next downstream row id.
    pub next_id: u64,
    /// Queued downstream messages on disk.
    pub queued: u64,
    /// Sessions with sequenced messages waiting, and how many.
    pub outbox: Vec<(String, u64)>,
}

/// Handle to the store. Cheap to clone; the writer stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Batch>,
    reader: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
    _lock: Arc<File>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(path, flags).map_err(sql(path))?;
    c.busy_timeout(Duration::from_secs(5)).map_err(sql(path))?;
    Ok(c)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql(path))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(sql(path))?;
        tx.execute_batch(m).map_err(sql(path))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(sql(path))?;
        tx.commit().map_err(sql(path))?;
        tracing::info!(version = i + 1, "store schema migrated");
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store at `path` and starts the writer
    /// thread; each committed batch is reported on `committed`.
    pub fn open(
        path: &Path,
        committed: UnboundedSender<Committed>,
    ) -> Result<(Store, Recovery), StoreError> {
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
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(path.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }

        let mut w = open_conn(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        w.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql(path))?;
        w.pragma_update(None, "synchronous", "FULL")
            .map_err(sql(path))?;
        w.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql(path))?;
        migrate(&mut w, path)?;
        let r = open_conn(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let recovery = recover(&r, path)?;

        let (tx, rx) = mpsc::channel::<Batch>();
        let wpath = path.to_path_buf();
        std::thread::Builder::new()
            .name("gimmm-store".into())
            .spawn(move || writer_loop(w, &wpath, rx, committed))
            .map_err(io)?;
        Ok((
            Store {
                tx,
                reader: Arc::new(Mutex::new(r)),
                path: Arc::new(path.to_path_buf()),
                _lock: Arc::new(lock),
            },
            recovery,
        ))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a batch for the writer.
    pub fn submit(&self, batch: Batch) -> Result<(), StoreError> {
        self.tx.send(batch).map_err(|_| StoreError::Stopped)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let guard = self.reader.lock().map_err(|_| StoreError::Stopped)?;
        f(&guard).map_err(sql(&self.path))
    }

    /// Queued downstream messages with `id > after`, in id order.
    pub fn load_queued(&self, after: u64, limit: usize) -> Result<Vec<QueuedRow>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, session, message_id, group_id, body, attempts, not_before, expires_at, receipt
                 FROM downstream WHERE state = 0 AND id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = st.query_map(params![after as i64, limit as i64], |r| {
                Ok(QueuedRow {
                    id: r.get::<_, i64>(0)? as u64,
                    session: r.get(1)?,
                    message_id: r.get(2)?,
                    group_id: r.get(3)?,
                    body: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    attempts: r.get::<_, i64>(5)? as u32,
                    not_before_ms: r.get(6)?,
                    expires_at_ms: r.get(7)?,
                    receipt: r.get::<_, i64>(8)? != 0,
                })
            })?;
            rows.collect()
        })
    }

    /// Sequenced messages of `session` with `seq > after`, in order.
    pub fn load_outbox(
        &self,
        session: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, session, body FROM outbox WHERE session = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = st.query_map(params![session, after as i64, limit as i64], |r| {
                Ok(OutboxRow {
                    seq: r.get::<_, i64>(0)? as u64,
                    session: r.get(1)?,
                    body: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    /// The session and row id of a done downstream message still waiting
    /// for a receipt, by its message id (newest first if several).
    pub fn receipt_target(&self, message_id: &str) -> Result<Option<(String, u64)>, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT session, id FROM downstream WHERE message_id = ?1 AND receipt = 1
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![message_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .optional()
        })
    }

    /// Whether this upstream message id was already delivered.
    pub fn upstream_seen(&self, message_id: &str) -> Result<bool, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT 1 FROM upstream_seen WHERE message_id = ?1")?
                .exists(params![message_id])
        })
    }

    /// Row counts for the admin API: (queued downstream, outbox, unroutable).
    pub fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.read(|c| {
            let q: i64 =
                c.query_row("SELECT count(*) FROM downstream WHERE state = 0", [], |r| {
                    r.get(0)
                })?;
            let o: i64 = c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
            let u: i64 = c.query_row("SELECT count(*) FROM unroutable", [], |r| r.get(0))?;
            Ok((q as u64, o as u64, u as u64))
        })
    }

    /// Recent unroutable upstream messages: (category, body).
    pub fn unroutable(&self, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT category, body FROM unroutable ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = st.query_map(params![limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }
}

fn recover(c: &Connection, path: &Path) -> Result<Recovery, StoreError> {
    let meta_seq: i64 = c
        .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
            r.get(0)
        })
        .map_err(sql(path))?;
    let max_seq: i64 = c
        .query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |r| r.get(0))
        .map_err(sql(path))?;
    let max_id: i64 = c
        .query_row("SELECT coalesce(max(id), 0) FROM downstream", [], |r| {
            r.get(0)
        })
        .map_err(sql(path))?;
    let queued: i64 = c
        .query_row("SELECT count(*) FROM downstream WHERE state = 0", [], |r| {
            r.get(0)
        })
        .map_err(sql(path))?;
    let mut st = c
        .prepare("SELECT session, count(*) FROM outbox GROUP BY session")
        .map_err(sql(path))?;
    let outbox = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql(path))?;
    Ok(Recovery {
        next_seq: meta_seq.max(max_seq + 1) as u64,
        next_id: (max_id + 1) as u64,
        queued: queued as u64,
        outbox,
    })
}

/// Most batches that share one transaction.
const MAX_GROUP: usize = 512;

fn writer_loop(
    mut conn: Connection,
    path: &Path,
    rx: mpsc::Receiver<Batch>,
    committed: UnboundedSender<Committed>,
) {
    let mut group: Vec<Batch> = Vec::with_capacity(MAX_GROUP);
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let n = group.len();
        let mut outcomes: Vec<Committed> = match apply(&mut conn, &group, false) {
            Ok(dups) => group
                .iter()
                .zip(dups)
                .map(|(b, duplicates)| Committed {
                    no: b.no,
                    duplicates,
                    failed_inserts: Vec::new(),
                    error: None,
                    group_size: n,
                    commit_time: Duration::ZERO,
                })
                .collect(),
            Err(e) => {
                // The store cannot take writes (disk full, read-only ...).
                // New messages are refused; everything else is retried until
                // it is on disk, because the engine already acted on it.
                tracing::error!(error = %e, path = %path.display(), "store commit failed; refusing new messages until it recovers");
                let failed: Vec<Vec<u64>> = group
                    .iter()
                    .map(|b| {
                        b.ops
                            .iter()
                            .filter_map(|op| match op {
                                Op::InsertDownstream(d) => Some(d.id),
                                _ => None,
                            })
                            .collect()
                    })
                    .collect();
                let mut delay = Duration::from_millis(50);
                loop {
                    match apply(&mut conn, &group, true) {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "store still failing; retrying");
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                let msg = e.to_string();
                group
                    .iter()
                    .zip(failed)
                    .map(|(b, failed_inserts)| Committed {
                        no: b.no,
                        duplicates: Vec::new(),
                        failed_inserts,
                        error: Some(msg.clone()),
                        group_size: n,
                        commit_time: Duration::ZERO,
                    })
                    .collect()
            }
        };
        let took = started.elapsed();
        for mut c in outcomes.drain(..) {
            c.commit_time = took;
            if committed.send(c).is_err() {
                return;
            }
        }
        group.clear();
    }
}

/// Applies the batches in one transaction. With `skip_inserts`, new
/// downstream messages are left out (they were refused).
fn apply(
    conn: &mut Connection,
    group: &[Batch],
    skip_inserts: bool,
) -> rusqlite::Result<Vec<Vec<u64>>> {
    let tx = conn.transaction()?;
    let mut dups = Vec::with_capacity(group.len());
    let mut max_seq = 0u64;
    {
        let mut ins = tx.prepare_cached(
            "INSERT OR IGNORE INTO downstream (id, session, message_id, group_id, body, expires_at, receipt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut retry =
            tx.prepare_cached("UPDATE downstream SET attempts = ?2, not_before = ?3 WHERE id = ?1")?;
        let mut finish = tx.prepare_cached(
            "UPDATE downstream SET state = 1, body = NULL, group_id = NULL WHERE id = ?1",
        )?;
        let mut receipt_done =
            tx.prepare_cached("UPDATE downstream SET receipt = 0 WHERE id = ?1")?;
        let mut outbox =
            tx.prepare_cached("INSERT OR REPLACE INTO outbox (seq, session, body) VALUES (?1, ?2, ?3)")?;
        let mut del = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
        let mut seen = tx.prepare_cached(
            "INSERT OR IGNORE INTO upstream_seen (message_id, at) VALUES (?1, ?2)",
        )?;
        let mut unroutable = tx
            .prepare_cached("INSERT INTO unroutable (category, body, at) VALUES (?1, ?2, ?3)")?;
        let now = now_ms();
        for b in group {
            let mut d = Vec::new();
            for op in &b.ops {
                match op {
                    Op::InsertDownstream(n) => {
                        if skip_inserts {
                            continue;
                        }
                        let changed = ins.execute(params![
                            n.id as i64,
                            &*n.session,
                            n.message_id,
                            n.group_id,
                            n.body,
                            n.expires_at_ms,
                            n.receipt as i64
                        ])?;
                        if changed == 0 {
                            d.push(n.id);
                        }
                    }
                    Op::RetryDownstream {
                        id,
                        attempts,
                        not_before_ms,
                    } => {
                        retry.execute(params![*id as i64, *attempts as i64, not_before_ms])?;
                    }
                    Op::FinishDownstream { id } => {
                        finish.execute(params![*id as i64])?;
                    }
                    Op::ReceiptDone { id } => {
                        receipt_done.execute(params![*id as i64])?;
                    }
                    Op::InsertOutbox { seq, session, body } => {
                        max_seq = max_seq.max(*seq);
                        outbox.execute(params![*seq as i64, &**session, body])?;
                    }
                    Op::DeleteOutbox { seq } => {
                        del.execute(params![*seq as i64])?;
                    }
                    Op::UpstreamSeen { message_id } => {
                        seen.execute(params![message_id, now])?;
                    }
                    Op::Unroutable { category, body } => {
                        unroutable.execute(params![category, body, now])?;
                    }
                }
            }
            dups.push(d);
        }
        if max_seq > 0 {
            tx.execute(
                "UPDATE meta SET value = max(value, ?1) WHERE key = 'next_seq'",
                params![(max_seq + 1) as i64],
            )?;
        }
    }
    tx.commit()?;
    Ok(dups)
}

#[cfg(test)]
mod tests;
