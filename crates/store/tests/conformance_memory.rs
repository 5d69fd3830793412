//! The store conformance suite on the in-memory store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use store::conformance::{Harness, Opened};
use store::memory::{MemData, MemStore};
use store::StoreError;

struct Memory(MemData);

impl Harness for Memory {
    fn open(&mut self) -> Result<Opened, StoreError> {
        let (tx, commits) = tokio::sync::mpsc::unbounded_channel();
        let (store, recovery) = MemStore::open(&self.0, tx)?;
        Ok(Opened {
            store: Arc::new(store),
            recovery,
            commits,
        })
    }
}

store::conformance_tests!(Memory(MemData::new()));
