//! Versioned schema migrations of the PostgreSQL store (SPEC §6 "schema
//! migrations versioned in the repo", SPEC §12): the files of
//! `migrations/postgres/`, applied in order, the version kept in
//! `gimmm_schema`.

use super::{pg, PgTarget, WRITER_LOCK_KEY};
use crate::StoreError;
use std::path::PathBuf;
use tokio_postgres::Client;

/// The migrations, in order; the schema version is their count.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_initial.sql"),
    include_str!("../../migrations/postgres/0002_writer_lease.sql"),
];

/// Brings the database up to [`MIGRATIONS`] in one transaction (PostgreSQL's
/// DDL is transactional: all or nothing), under a transaction advisory lock
/// so that nodes starting together migrate one after another; refuses a
/// database written by a newer gimmm.
pub(crate) async fn migrate(client: &mut Client, target: &PgTarget) -> Result<(), StoreError> {
    let e = pg(target, "migrating the schema");
    let tx = client.transaction().await.map_err(&e)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITER_LOCK_KEY])
        .await
        .map_err(&e)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS gimmm_schema (version INTEGER NOT NULL)")
        .await
        .map_err(&e)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM gimmm_schema", &[])
        .await
        .map_err(&e)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(StoreError::TooNew {
            path: PathBuf::from(target.to_string()),
            found: i64::from(version),
            known: i64::from(known),
        });
    }
    if version == known {
        return Ok(());
    }
    for m in MIGRATIONS.iter().skip(version as usize) {
        tx.batch_execute(m).await.map_err(&e)?;
    }
    tx.execute("DELETE FROM gimmm_schema", &[])
        .await
        .map_err(&e)?;
    tx.execute("INSERT INTO gimmm_schema (version) VALUES ($1)", &[&known])
        .await
        .map_err(&e)?;
    tx.commit().await.map_err(&e)?;
    tracing::info!(from = version, to = known, store = %target, "store schema migrated");
    Ok(())
}
