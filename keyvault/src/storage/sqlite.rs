//! SQLite storage: one file, WAL mode, `secure_delete` so deleted key material is overwritten
//! with zeros, and a TRUNCATE checkpoint after each destroy so no WAL frame keeps an old copy.
//!
//! Writes open with `BEGIN IMMEDIATE`: SQLite then serialises writers up front instead of
//! failing a read-then-write transaction with SQLITE_BUSY half-way through.
//!
//! What both engines do alike is in `sql.rs`; this file keeps opening the database and what
//! only SQLite does: creating keys row by row (after looking up the batch's forgotten subjects),
//! fetching by chunked `IN` lists, destroying a subject's keys without arrays, and purging with
//! a WAL checkpoint.

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::sql::{self, Engine};
use super::{CreateResult, Created, NewRow, check_forgotten};
use crate::error::VaultError;
use crate::keys::KeyId;
use crate::limits::{
    SQLITE_BUSY_TIMEOUT, SQLITE_CHECKPOINT_ATTEMPTS, SQLITE_CHECKPOINT_RETRY, SQLITE_CONNECTIONS_MAX,
    SQLITE_FETCH_KEYS_MAX,
};

// Numbered like PostgreSQL's: 0002 is PostgreSQL only.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "vault", include_str!("../../migrations/sqlite/0001_vault.sql")),
    (
        3,
        "forgotten subjects",
        include_str!("../../migrations/sqlite/0003_forgotten_subjects.sql"),
    ),
    (
        4,
        "kek epochs",
        include_str!("../../migrations/sqlite/0004_kek_epochs.sql"),
    ),
];

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
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_CONNECTIONS_MAX)
            .connect_with(options)
            .await?;
        super::migrator(MIGRATIONS).run(&pool).await?;
        Ok(SqliteStorage { pool })
    }
}

impl SqliteStorage {
    /// The forgotten subjects among the rows' subjects.
    async fn forgotten_among(
        &self,
        tx: &mut sqlx::Transaction<'static, Sqlite>,
        rows: &[NewRow<'_>],
    ) -> Result<Vec<String>, VaultError> {
        let mut subjects: Vec<&str> = rows.iter().filter_map(|r| r.subject).collect();
        subjects.sort_unstable();
        subjects.dedup();
        let mut forgotten = Vec::new();
        for chunk in subjects.chunks(SQLITE_FETCH_KEYS_MAX) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            // Only placeholders are interpolated; every value is bound.
            let sql = format!("SELECT subject FROM forgotten_subjects WHERE subject IN ({placeholders})");
            let mut q = sqlx::query_scalar(AssertSqlSafe(sql));
            for subject in chunk {
                q = q.bind(*subject);
            }
            forgotten.extend(q.fetch_all(&mut **tx).await?);
        }
        Ok(forgotten)
    }
}

impl Engine for SqliteStorage {
    type Db = Sqlite;
    type Version = i64;

    const NOW: &'static str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    /// `BEGIN IMMEDIATE` already serialises rotation starts, as every write.
    const LOCK_KEK_VERSIONS: Option<&'static str> = None;
    /// `BEGIN IMMEDIATE` already serialises `finish_rotation`s.
    const FOR_UPDATE: &'static str = "";
    /// `BEGIN IMMEDIATE` already keeps every create out, so count first and write only when
    /// the rotation can finish.
    const SWITCH_BEFORE_COUNT: bool = false;

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, VaultError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
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
        // `BEGIN IMMEDIATE` keeps every forget out until this transaction ends, so what this
        // reads stays true until the keys are committed.
        check_forgotten(rows, &self.forgotten_among(&mut tx, rows).await?)?;
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
                // Returning early drops `tx`, which rolls the whole batch back.
                sql::check_existing_row::<Self>(row.stream, row.subject, &e)?;
                out.push(sql::existing_key::<Self>(&e)?);
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

    async fn fetch_key_rows(&self, ids: &[KeyId]) -> Result<Vec<SqliteRow>, VaultError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(SQLITE_FETCH_KEYS_MAX) {
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
            rows.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }

    async fn destroy_subject(&self, subject: &str) -> Result<Vec<KeyId>, VaultError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(sql::FORGET_SUBJECT).bind(subject).execute(&mut *tx).await?;
        let rows = sqlx::query("SELECT id FROM vault_keys WHERE subject = ? AND destroyed_at IS NULL ORDER BY stream")
            .bind(subject)
            .fetch_all(&mut *tx)
            .await?;
        let ids = rows.iter().map(sql::key_id).collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "DELETE FROM vault_key_material WHERE id IN \
             (SELECT id FROM vault_keys WHERE subject = ? AND destroyed_at IS NULL)",
        )
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE vault_keys SET destroyed_at = {} WHERE subject = ? AND destroyed_at IS NULL",
            Self::NOW
        )))
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn purge(&self) -> Result<(), VaultError> {
        // secure_delete already zeroed the freed cells in the page images; the checkpoint copies
        // those pages into the main file and TRUNCATE empties the WAL, which still held the
        // pre-delete page images.
        for _ in 0..SQLITE_CHECKPOINT_ATTEMPTS {
            let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            let busy: i64 = row.try_get(0)?;
            if busy == 0 {
                return Ok(());
            }
            tokio::time::sleep(SQLITE_CHECKPOINT_RETRY).await;
        }
        Err(VaultError::Unavailable(
            "WAL checkpoint kept being blocked by readers; retry the destroy".into(),
        ))
    }
}
