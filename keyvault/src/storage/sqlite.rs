//! SQLite storage: one file, WAL mode, `secure_delete` so deleted key material is overwritten
//! with zeros, and a TRUNCATE checkpoint after each destroy so no WAL frame keeps an old copy.
//!
//! Writes open with `BEGIN IMMEDIATE`: SQLite then serialises writers up front instead of
//! failing a read-then-write transaction with SQLITE_BUSY half-way through.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::{
    CreateResult, Created, KekState, KekVersionRow, MaterialRow, NewRow, Rewrap, Storage, Stored, WrappedKey,
    check_existing, count_from_db, version_from_db,
};
use crate::error::VaultError;
use crate::keys::KeyId;

const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "vault", include_str!("../../migrations/sqlite/0001_vault.sql"))];
/// SQLite's default limit on bound parameters is 32766; stay far below it.
const FETCH_CHUNK: usize = 500;
const POOL_CONNECTIONS_MAX: u32 = 8;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// A TRUNCATE checkpoint cannot finish while a reader holds an old snapshot; retry briefly.
const CHECKPOINT_ATTEMPTS: u32 = 20;
const CHECKPOINT_RETRY: Duration = Duration::from_millis(50);
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

pub(crate) struct SqliteStorage {
    pool: SqlitePool,
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or `sqlite:path`) and
    /// applies the migrations.
    pub(crate) async fn open(url: &str) -> Result<SqliteStorage, VaultError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| VaultError::InvalidInput(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A created key must survive power loss: events encrypted with it are useless
            // without it.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .connect_with(options)
            .await?;
        super::migrator(MIGRATIONS).run(&pool).await?;
        Ok(SqliteStorage { pool })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, VaultError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn key_id(row: &sqlx::sqlite::SqliteRow, col: &str) -> Result<KeyId, VaultError> {
    Ok(KeyId(row.try_get::<Uuid, _>(col)?))
}

fn wrapped(row: &sqlx::sqlite::SqliteRow) -> Result<Option<WrappedKey>, VaultError> {
    let version: Option<i64> = row.try_get("kek_version")?;
    let bytes: Option<Vec<u8>> = row.try_get("wrapped")?;
    match (version, bytes) {
        (Some(v), Some(wrapped)) => Ok(Some(WrappedKey {
            kek_version: version_from_db(v)?,
            wrapped,
        })),
        _ => Ok(None),
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn kek_versions(&self) -> Result<Vec<KekVersionRow>, VaultError> {
        let rows = sqlx::query("SELECT version, check_value, state FROM kek_versions ORDER BY version")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KekVersionRow {
                    version: version_from_db(r.try_get("version")?)?,
                    check_value: r.try_get("check_value")?,
                    state: KekState::parse(r.try_get("state")?)?,
                })
            })
            .collect()
    }

    async fn init_kek(&self, check_value: &[u8]) -> Result<(), VaultError> {
        sqlx::query(
            "INSERT INTO kek_versions (version, check_value, state) \
             SELECT 1, ?, 'active' WHERE NOT EXISTS (SELECT 1 FROM kek_versions)",
        )
        .bind(check_value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn begin_rotation(&self, check_value: &[u8]) -> Result<KekVersionRow, VaultError> {
        let mut tx = self.begin_write().await?;
        let pending = sqlx::query("SELECT version, check_value FROM kek_versions WHERE state = 'pending'")
            .fetch_optional(&mut *tx)
            .await?;
        let row = match pending {
            Some(r) => KekVersionRow {
                version: version_from_db(r.try_get("version")?)?,
                check_value: r.try_get("check_value")?,
                state: KekState::Pending,
            },
            None => {
                let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM kek_versions")
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO kek_versions (version, check_value, state) VALUES (?, ?, 'pending')")
                    .bind(next)
                    .bind(check_value)
                    .execute(&mut *tx)
                    .await?;
                KekVersionRow {
                    version: version_from_db(next)?,
                    check_value: check_value.to_vec(),
                    state: KekState::Pending,
                }
            }
        };
        tx.commit().await?;
        Ok(row)
    }

    async fn create_keys(&self, rows: &[NewRow<'_>], kek_version: u32) -> Result<CreateResult, VaultError> {
        let mut tx = self.begin_write().await?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM kek_versions WHERE version = ?")
            .bind(i64::from(kek_version))
            .fetch_optional(&mut *tx)
            .await?;
        if !matches!(state.as_deref(), Some("active" | "pending")) {
            return Ok(CreateResult::KekVersionRetired);
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let existing = sqlx::query(
                "SELECT k.id, k.subject, k.destroyed_at IS NOT NULL AS destroyed, m.kek_version, m.wrapped \
                 FROM vault_keys k LEFT JOIN vault_key_material m ON m.id = k.id WHERE k.stream = ?",
            )
            .bind(row.stream)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(e) = existing {
                let subject: Option<String> = e.try_get("subject")?;
                let destroyed: bool = e.try_get("destroyed")?;
                // Returning early drops `tx`, which rolls the whole batch back.
                check_existing(row.stream, row.subject, subject.as_deref(), destroyed)?;
                let id = key_id(&e, "id")?;
                let material =
                    wrapped(&e)?.ok_or_else(|| VaultError::Corrupt(format!("live key {id} has no key material")))?;
                out.push(Created::Existing(id, material));
                continue;
            }
            sqlx::query("INSERT INTO vault_keys (id, stream, subject) VALUES (?, ?, ?)")
                .bind(row.id.0)
                .bind(row.stream)
                .bind(row.subject)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO vault_key_material (id, kek_version, wrapped) VALUES (?, ?, ?)")
                .bind(row.id.0)
                .bind(i64::from(row.wrapped.kek_version))
                .bind(&row.wrapped.wrapped)
                .execute(&mut *tx)
                .await?;
            out.push(Created::Inserted(row.id));
        }
        tx.commit().await?;
        Ok(CreateResult::Done(out))
    }

    async fn fetch_keys(&self, ids: &[KeyId]) -> Result<Vec<Stored>, VaultError> {
        let mut found: HashMap<KeyId, Stored> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(FETCH_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            // Only placeholders are interpolated; every value is bound.
            let sql = format!(
                "SELECT k.id, k.destroyed_at IS NOT NULL AS destroyed, m.kek_version, m.wrapped \
                 FROM vault_keys k LEFT JOIN vault_key_material m ON m.id = k.id \
                 WHERE k.id IN ({placeholders})"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.0);
            }
            for row in q.fetch_all(&self.pool).await? {
                let id = key_id(&row, "id")?;
                let destroyed: bool = row.try_get("destroyed")?;
                let stored = match (destroyed, wrapped(&row)?) {
                    (true, _) => Stored::Destroyed,
                    (false, Some(w)) => Stored::Live(w),
                    (false, None) => {
                        return Err(VaultError::Corrupt(format!("live key {id} has no key material")));
                    }
                };
                found.insert(id, stored);
            }
        }
        Ok(ids
            .iter()
            .map(|id| match found.get(id) {
                Some(Stored::Live(w)) => Stored::Live(w.clone()),
                Some(Stored::Destroyed) => Stored::Destroyed,
                _ => Stored::NotFound,
            })
            .collect())
    }

    async fn destroy_subject(&self, subject: &str) -> Result<Vec<KeyId>, VaultError> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query("SELECT id FROM vault_keys WHERE subject = ? AND destroyed_at IS NULL ORDER BY stream")
            .bind(subject)
            .fetch_all(&mut *tx)
            .await?;
        let ids = rows.iter().map(|r| key_id(r, "id")).collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "DELETE FROM vault_key_material WHERE id IN \
             (SELECT id FROM vault_keys WHERE subject = ? AND destroyed_at IS NULL)",
        )
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE vault_keys SET destroyed_at = {NOW} WHERE subject = ? AND destroyed_at IS NULL"
        )))
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn destroy_stream(&self, stream: &str) -> Result<Option<KeyId>, VaultError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT id FROM vault_keys WHERE stream = ? AND destroyed_at IS NULL")
            .bind(stream)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id = key_id(&row, "id")?;
        sqlx::query("DELETE FROM vault_key_material WHERE id = ?")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE vault_keys SET destroyed_at = {NOW} WHERE id = ?"
        )))
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    async fn purge(&self) -> Result<(), VaultError> {
        // secure_delete already zeroed the freed cells in the page images; the checkpoint copies
        // those pages into the main file and TRUNCATE empties the WAL, which still held the
        // pre-delete page images.
        for _ in 0..CHECKPOINT_ATTEMPTS {
            let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            let busy: i64 = row.try_get(0)?;
            if busy == 0 {
                return Ok(());
            }
            tokio::time::sleep(CHECKPOINT_RETRY).await;
        }
        Err(VaultError::Unavailable(
            "WAL checkpoint kept being blocked by readers; retry the destroy".into(),
        ))
    }

    async fn counts(&self) -> Result<(u64, u64), VaultError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM vault_key_material) AS live, \
                    (SELECT count(*) FROM vault_keys WHERE destroyed_at IS NOT NULL) AS destroyed",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((
            count_from_db(row.try_get("live")?),
            count_from_db(row.try_get("destroyed")?),
        ))
    }

    async fn rotation_batch(&self, target: u32, limit: usize) -> Result<Vec<MaterialRow>, VaultError> {
        let rows = sqlx::query(
            "SELECT id, kek_version, wrapped FROM vault_key_material WHERE kek_version <> ? ORDER BY id LIMIT ?",
        )
        .bind(i64::from(target))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id = key_id(r, "id")?;
                let key = wrapped(r)?.ok_or_else(|| VaultError::Corrupt(format!("key {id} has no material")))?;
                Ok(MaterialRow { id, key })
            })
            .collect()
    }

    async fn rewrap(&self, batch: &[Rewrap]) -> Result<u64, VaultError> {
        let mut tx = self.begin_write().await?;
        let mut updated = 0;
        for r in batch {
            updated += sqlx::query(
                "UPDATE vault_key_material SET kek_version = ?, wrapped = ? WHERE id = ? AND kek_version = ?",
            )
            .bind(i64::from(r.to.kek_version))
            .bind(&r.to.wrapped)
            .bind(r.id.0)
            .bind(i64::from(r.from_version))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
    }

    async fn finish_rotation(&self, target: u32) -> Result<bool, VaultError> {
        let mut tx = self.begin_write().await?;
        let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM vault_key_material WHERE kek_version <> ?")
            .bind(i64::from(target))
            .fetch_one(&mut *tx)
            .await?;
        if remaining > 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE kek_versions SET state = 'retired' WHERE state = 'active'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE kek_versions SET state = 'active' WHERE version = ? AND state = 'pending'")
            .bind(i64::from(target))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn versions_in_use(&self) -> Result<Vec<u32>, VaultError> {
        let rows: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT kek_version FROM vault_key_material ORDER BY 1")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(version_from_db).collect()
    }

    async fn health(&self) -> Result<(), VaultError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
