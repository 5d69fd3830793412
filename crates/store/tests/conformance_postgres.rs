//! The store conformance suite on the PostgreSQL store (SPEC §12), each
//! test on a fresh database of the tests' server (`GIMMM_TEST_POSTGRES_URL`,
//! see `.ci/postgres-setup.sh`; skipped without it unless `CI` is set).
#![allow(clippy::unwrap_used)]

use futures::future::BoxFuture;
use std::sync::Arc;
use store::conformance::{Harness, Opened};
use store::postgres::{LeaseOptions, PgStore, PgTarget};
use store::{StoreError, StoreOptions};

struct Postgres {
    target: PgTarget,
}

impl Harness for Postgres {
    fn open_with(&mut self, options: StoreOptions) -> BoxFuture<'_, Result<Opened, StoreError>> {
        Box::pin(async move {
            let (tx, commits) = tokio::sync::mpsc::unbounded_channel();
            let (store, recovery) =
                PgStore::open_with(self.target.clone(), LeaseOptions::default(), tx, options)
                    .await?;
            Ok(Opened {
                store: Arc::new(store),
                recovery,
                commits,
            })
        })
    }
}

store::conformance_tests!(async {
    store::conformance::postgres_scratch()
        .await
        .map(|target| Postgres { target })
});
