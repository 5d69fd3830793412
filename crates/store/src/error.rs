//! The store's errors (DESIGN §4.5: a typed error per layer). The backend's
//! own error (SQLite's, later PostgreSQL's) is boxed inside, with the
//! context that says where.

use std::path::PathBuf;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database backend failed.
    #[error("{what}: {source}")]
    Backend {
        /// Where: e.g. "sqlite error on gimmm-data/gimmm.db".
        what: String,
        /// The backend's error.
        source: Box<dyn std::error::Error + Send + Sync>,
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
    /// The writer is gone.
    #[error("store writer stopped")]
    Stopped,
    /// Another node took this node's writer lease (SPEC §12): this node
    /// writes nothing more.
    #[error("store {store}: {reason}; this node writes nothing more")]
    Fenced {
        /// The store (never a password).
        store: String,
        /// How it was lost.
        reason: String,
    },
    /// The database was written by a newer gimmm.
    #[error("store {path} has schema version {found}, this gimmm knows up to {known}")]
    TooNew {
        /// Where.
        path: PathBuf,
        /// Version found.
        found: i64,
        /// Version this binary knows.
        known: i64,
    },
}
