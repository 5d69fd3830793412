//! The store conformance suite on the SQLite store, each test on a fresh
//! database file in a temp dir.
#![allow(clippy::unwrap_used)]

use futures::future::BoxFuture;
use std::sync::Arc;
use store::conformance::{Harness, Opened};
use store::sqlite::SqliteStore;
use store::{StoreError, StoreOptions};

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Harness for Sqlite {
    fn open_with(&mut self, options: StoreOptions) -> BoxFuture<'_, Result<Opened, StoreError>> {
        Box::pin(async move {
            let (tx, commits) = tokio::sync::mpsc::unbounded_channel();
            let (store, recovery) =
                SqliteStore::open_with(&self.dir.path().join("gimmm.db"), tx, options)?;
            Ok(Opened {
                store: Arc::new(store),
                recovery,
                commits,
            })
        })
    }
}

store::conformance_tests!(async { Sqlite::new() });
