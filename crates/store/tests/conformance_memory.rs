//! The store conformance suite on the in-memory store.
#![allow(clippy::unwrap_used)]

use futures::future::BoxFuture;
use std::sync::Arc;
use store::conformance::{Harness, Opened};
use store::memory::{MemData, MemStore};
use store::{StoreError, StoreOptions};

struct Memory(MemData);

impl Harness for Memory {
    fn open_with(&mut self, options: StoreOptions) -> BoxFuture<'_, Result<Opened, StoreError>> {
        Box::pin(async move {
            let (tx, commits) = tokio::sync::mpsc::unbounded_channel();
            let (store, recovery) = MemStore::open_with(&self.0, tx, options)?;
            Ok(Opened {
                store: Arc::new(store),
                recovery,
                commits,
            })
        })
    }
}

store::conformance_tests!(async { Memory(MemData::new()) });
