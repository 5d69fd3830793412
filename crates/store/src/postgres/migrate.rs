//! Versioned schema migrations of the PostgreSQL store (SPEC §6 "schema
//! migrations versioned in the repo", SPEC §12): the files of
//! `migrations/postgres/`, applied in order, each in its own transaction,
//! the version kept in `gimmm_schema`. They run under the writer lock, so
//! two nodes never migrate at once.

use super::{pg, PgTarget};
use crate::StoreError;
use std::path::PathBuf;
use tokio_postgres::Client;

/// The migrations, in order; the schema version is their count.
pub(crate) const MIGRATIONS: &[&str] =
    &[include_str!("../../migrations/postgres/0001_initial.sql")];

/// Brings the database up to [`MIGRATIONS`]; refuses one written by a newer
/// gimmm.
pub(crate) async fn migrate(client: &mut Client, target: &PgTarget) -> Result<(), StoreError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS gimmm_schema (version INTEGER NOT NULL)")
        .await
        .map_err(pg(target, "reading the schema version"))?;
    let version: i32 = client
        .query_opt("SELECT version FROM gimmm_schema", &[])
        .await
        .map_err(pg(target, "reading the schema version"))?
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
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let v = i as i32 + 1;
        let doing = format!("migrating the schema to version {v}");
        let tx = client.transaction().await.map_err(pg(target, &doing))?;
        tx.batch_execute(m).await.map_err(pg(target, &doing))?;
        tx.execute("DELETE FROM gimmm_schema", &[])
            .await
            .map_err(pg(target, &doing))?;
        tx.execute("INSERT INTO gimmm_schema (version) VALUES ($1)", &[&v])
            .await
            .map_err(pg(target, &doing))?;
        tx.commit().await.map_err(pg(target, &doing))?;
        tracing::info!(version = v, store = %target, "store schema migrated");
    }
    Ok(())
}
