//! Versioned schema migrations (SPEC §6 "schema migrations versioned in the
//! repo"): the files of `migrations/`, applied in order, each in its own
//! transaction, the version recorded in `PRAGMA user_version`.

use super::sql;
use crate::StoreError;
use rusqlite::Connection;
use std::path::Path;

/// The migrations, in order; the schema version is their count.
pub const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_initial.sql"),
    include_str!("../../migrations/0002_fewer_index_writes.sql"),
    include_str!("../../migrations/0003_accepted_at.sql"),
    include_str!("../../migrations/0004_retention.sql"),
];

/// Brings the database up to [`MIGRATIONS`]; refuses one written by a newer
/// gimmm.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
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
