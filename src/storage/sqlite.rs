//! The SQLite engine: the embedded default, one process, one file.
//!
//! One writer connection (SQLite allows one writer at a time anyway) takes every write
//! transaction with `BEGIN IMMEDIATE`, so a write never has to upgrade a read lock and never
//! fails with "database is locked"; a separate pool of readers works beside it thanks to WAL.
//! `synchronous=FULL` makes every commit durable before it is acknowledged.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use lethe_keyvault::{KeyId, VaultClock};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use super::plan::{self, ExistingEvent, StreamState, SubjectErasure};
use super::rows::{DecodeRow, erasure_statuses, select_erasures, select_events, to_i64, to_u64};
use super::sql::{Engine, Pools};
use super::{AppendReply, AtomicAppend, ChangeFeed, EngineStorage, StoredEvent, TokenChecks};
use crate::error::StorageError;
use crate::limits::{SQLITE_BUSY_TIMEOUT, SQLITE_READ_CONNECTIONS_MAX};
use crate::model::{ErasureStatus, LogFilter, SubjectId};

pub struct SqliteStorage {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Where appends read the time they record.
    clock: Arc<dyn VaultClock>,
    /// Subjects the group writer found without an erasure request ([`TokenChecks`]).
    erasure_checks: TokenChecks<String>,
}

impl SqliteStorage {
    pub async fn open(url: &str, clock: Arc<dyn VaultClock>) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(false);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(SQLITE_BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        super::migrations::migrator(super::migrations::SQLITE)
            .await?
            .run(&writer)
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(SQLITE_READ_CONNECTIONS_MAX)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            readers,
            clock,
            erasure_checks: TokenChecks::default(),
        })
    }
}

const SELECT_STATES: &str = "SELECT name, version, status, subject, key_id FROM streams \
     WHERE name IN (SELECT value FROM json_each(?1))";
const SELECT_EXISTING: &str = "SELECT event_id, stream, version, position, digest FROM events \
     WHERE event_id IN (SELECT unhex(value) FROM json_each(?1))";
const SELECT_ERASING: &str = "SELECT DISTINCT subject, status FROM erasure_requests \
     WHERE kind = 'subject' AND status <> 'refused' AND subject IN (SELECT value FROM json_each(?1))";
const INSERT_EVENT: &str = "INSERT INTO events \
     (position, stream, version, event_id, event_type, payload, metadata, key_id, digest, recorded_at, schema_version) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
/// A group's new field keys, `[[subject, key id as hex], …]` in one JSON array: one statement
/// for all of them (a statement per row was most of the cost of an append carrying personal
/// fields).
const INSERT_SUBJECT_KEYS: &str = "INSERT INTO subject_keys (subject, key_id) \
     SELECT value ->> 0, unhex(value ->> 1) FROM json_each(?1) WHERE true ON CONFLICT DO NOTHING";
/// The field index rows of a group's events that seal personal fields,
/// `[[position, "<subject hex> <subject hex> …"], …]`, likewise (see migration 0014).
const INSERT_FIELD_INDEX: &str = "INSERT INTO field_index (rowid, subjects) \
     SELECT value ->> 0, value ->> 1 FROM json_each(?1)";
const INSERT_STREAM: &str = "INSERT INTO streams (name, subject, status, version, key_id, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const UPDATE_STREAM: &str = "UPDATE streams SET version = ?2, key_id = ?3 WHERE name = ?1";

impl Engine for SqliteStorage {
    type Db = Sqlite;

    fn now_us(&self) -> i64 {
        self.clock.now_micros()
    }

    fn pools(&self) -> Pools<'_, Sqlite> {
        Pools {
            reader: &self.readers,
            writer: &self.writer,
        }
    }

    /// `BEGIN IMMEDIATE` on the one writer connection: writes are serialised up front and never
    /// fail half-way with "database is locked".
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StorageError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    // The single writer already serialises every write transaction: nothing to lock.
    const SELECT_AUDIT_HEAD_LOCKED: &'static str = "SELECT seq, hash FROM audit_head WHERE id = 1";
    const SELECT_ERASURE_LOCKED: &'static str = concat!(select_erasures!(), "WHERE id = $1");

    async fn dependent_rows(&self, ids: &[Uuid]) -> Result<Vec<SqliteRow>, StorageError> {
        let ids: Vec<String> = ids.iter().map(|id| hex::encode(id.as_bytes())).collect();
        Ok(sqlx::query(
            "SELECT erasure_id, consumer, acknowledged_at, removed_at, delivery_attempts, last_attempt_at, \
             last_delivery_error FROM erasure_dependents \
             WHERE erasure_id IN (SELECT unhex(value) FROM json_each(?1))",
        )
        .bind(json(&ids)?)
        .fetch_all(&self.readers)
        .await?)
    }

    async fn lock_commit_order(_conn: &mut SqliteConnection) -> Result<(), StorageError> {
        // The single writer connection serialises the shred with every append.
        Ok(())
    }

    async fn remove_payloads(conn: &mut SqliteConnection, streams: &[&str]) -> Result<(), StorageError> {
        sqlx::query("UPDATE events SET payload = NULL WHERE stream IN (SELECT value FROM json_each(?1))")
            .bind(json(streams)?)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn announce_revoked_keys(_conn: &mut SqliteConnection, _keys: &[KeyId]) -> Result<(), StorageError> {
        // One process owns the file: it evicts the keys itself.
        Ok(())
    }

    async fn announce_revoked_tokens(_conn: &mut SqliteConnection) -> Result<(), StorageError> {
        // One process owns the file: it forgets its verified tokens itself.
        Ok(())
    }

    async fn announce_schemas(_conn: &mut SqliteConnection) -> Result<(), StorageError> {
        // One process owns the file: it reloads its registry itself.
        Ok(())
    }
}

#[async_trait]
impl EngineStorage for SqliteStorage {
    async fn append_group(&self, group: &[AtomicAppend]) -> Result<Vec<AppendReply>, StorageError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;

        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;

        let lookups = plan::lookups(group);
        let names_json = json(&lookups.streams)?;
        let mut states: HashMap<String, StreamState> = HashMap::new();
        for row in sqlx::query(SELECT_STATES).bind(names_json).fetch_all(&mut *tx).await? {
            let (name, state) = row.decode_stream_state()?;
            states.insert(name, state);
        }

        let mut existing: HashMap<Uuid, ExistingEvent> = HashMap::new();
        if !lookups.given_ids.is_empty() {
            let ids: Vec<String> = lookups.given_ids.iter().map(|id| hex::encode(id.as_bytes())).collect();
            let ids_json = json(&ids)?;
            for row in sqlx::query(SELECT_EXISTING).bind(ids_json).fetch_all(&mut *tx).await? {
                let (id, event) = row.decode_existing()?;
                existing.insert(id, event);
            }
        }

        // Only subjects not found without an erasure request since the last filing
        // (`TokenChecks`); the token is read in this transaction, which holds the writer lock.
        let mut erasing = HashMap::new();
        if !lookups.subjects.is_empty() {
            let token: i64 = sqlx::query_scalar("SELECT subject_erasure_filed FROM change_tokens WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            let subjects = self.erasure_checks.unchecked(token, lookups.subjects.iter().copied());
            if !subjects.is_empty() {
                let rows: Vec<(String, String)> = sqlx::query_as(SELECT_ERASING)
                    .bind(json(&subjects)?)
                    .fetch_all(&mut *tx)
                    .await?;
                erasing = plan::subject_erasures(rows);
                plan::record_clear_subjects(&self.erasure_checks, token, &subjects, &erasing);
            }
        }

        let plan = plan::plan_group(
            group,
            states,
            existing,
            &erasing,
            to_u64(head, "head")?,
            self.clock.now_micros(),
        );

        for row in &plan.rows {
            sqlx::query(INSERT_EVENT)
                .bind(to_i64(row.position))
                .bind(row.stream)
                .bind(to_i64(row.version))
                .bind(row.event.id)
                .bind(row.event.event_type.as_str())
                .bind(row.event.payload.as_slice())
                .bind(row.event.metadata.as_str())
                .bind(row.key_id)
                .bind(row.event.digest.as_slice())
                .bind(row.recorded_at_us)
                .bind(row.event.schema_version.map(i64::from))
                .execute(&mut *tx)
                .await?;
        }
        if !plan.field_index.keys.is_empty() {
            let keys: Vec<(&str, String)> = plan
                .field_index
                .keys
                .iter()
                .map(|(subject, key_id)| (*subject, hex::encode(key_id.as_bytes())))
                .collect();
            sqlx::query(INSERT_SUBJECT_KEYS)
                .bind(json(&keys)?)
                .execute(&mut *tx)
                .await?;
        }
        let indexed: Vec<(i64, String)> = plan
            .rows
            .iter()
            .filter(|row| !row.event.field_subjects.is_empty())
            .map(|row| (to_i64(row.position), field_index_entry(&row.event.field_subjects)))
            .collect();
        if !indexed.is_empty() {
            sqlx::query(INSERT_FIELD_INDEX)
                .bind(json(&indexed)?)
                .execute(&mut *tx)
                .await?;
        }
        let created_at = plan.now_us;
        for stream in &plan.streams {
            let version = stream.state.version.map(to_i64);
            if stream.is_new {
                sqlx::query(INSERT_STREAM)
                    .bind(stream.name.as_str())
                    .bind(stream.state.subject.as_deref())
                    .bind(stream.state.status.as_str())
                    .bind(version)
                    .bind(stream.state.key_id)
                    .bind(created_at)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(UPDATE_STREAM)
                    .bind(stream.name.as_str())
                    .bind(version)
                    .bind(stream.state.key_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if !plan.rows.is_empty() {
            sqlx::query("UPDATE log_head SET position = ?1 WHERE id = 1")
                .bind(to_i64(plan.head))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(plan.replies)
    }

    async fn read_log(
        &self,
        from: u64,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64), StorageError> {
        // Both statements run in one read transaction: one snapshot for head and rows.
        let mut tx = self.readers.begin().await?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let types_json = if filter.types.is_empty() {
            None
        } else {
            Some(json(&filter.types)?)
        };
        let sql = concat!(
            select_events!(),
            "WHERE e.position >= ?1 AND e.position <= ?2 \
               AND (?3 IS NULL OR substr(e.stream, 1, length(?3)) = ?3) \
               AND (?4 IS NULL OR e.event_type IN (SELECT value FROM json_each(?4))) \
             ORDER BY e.position ASC LIMIT ?5"
        );
        let rows = sqlx::query(sql)
            .bind(to_i64(from))
            .bind(head)
            .bind(filter.stream_prefix.as_deref())
            .bind(types_json)
            .bind(to_i64(limit as u64))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let events = rows
            .iter()
            .map(DecodeRow::decode_event)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((events, to_u64(head, "head")?))
    }

    async fn stream_states(&self, names: &[&str]) -> Result<HashMap<String, StreamState>, StorageError> {
        let names_json = json(names)?;
        let rows = sqlx::query(SELECT_STATES)
            .bind(names_json)
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(DecodeRow::decode_stream_state).collect()
    }

    async fn subject_erasures(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectErasure>, StorageError> {
        let rows: Vec<(String, String)> = sqlx::query_as(SELECT_ERASING)
            .bind(json(subjects)?)
            .fetch_all(&self.readers)
            .await?;
        Ok(plan::subject_erasures(rows))
    }

    async fn forgotten_field_keys(&self, keys: &[Uuid]) -> Result<HashSet<Uuid>, StorageError> {
        let ids: Vec<String> = keys.iter().map(|id| hex::encode(id.as_bytes())).collect();
        let rows: Vec<Uuid> = sqlx::query_scalar(
            "SELECT key_id FROM subject_keys WHERE forgotten_at IS NOT NULL \
             AND key_id IN (SELECT unhex(value) FROM json_each(?1))",
        )
        .bind(json(&ids)?)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn erasure_statuses(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, ErasureStatus>, StorageError> {
        let ids: Vec<String> = ids.iter().map(|id| hex::encode(id.as_bytes())).collect();
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, status FROM erasure_requests WHERE id IN (SELECT unhex(value) FROM json_each(?1))",
        )
        .bind(json(&ids)?)
        .fetch_all(&self.readers)
        .await?;
        erasure_statuses(rows)
    }

    async fn watch_foreign_changes(&self, _feed: ChangeFeed) -> Result<(), StorageError> {
        // One process owns the file; its own commits and erasures are handled in-process.
        Ok(())
    }

    fn single_writer(&self) -> bool {
        true
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

/// A list bound as one JSON array (`json_each(?N)` reads it): SQLite has no array parameters.
/// An event's entry in the field index: its subjects, each as the lower-case hex of its bytes
/// (one FTS5 token that no tokenizer folds or splits), separated by spaces.
fn field_index_entry(subjects: &[SubjectId]) -> String {
    let mut entry = String::new();
    for subject in subjects {
        if !entry.is_empty() {
            entry.push(' ');
        }
        entry.push_str(&hex::encode(subject.as_str()));
    }
    entry
}

fn json<T: serde::Serialize + ?Sized>(list: &T) -> Result<String, StorageError> {
    serde_json::to_string(list).map_err(|e| StorageError::Corrupt(e.to_string()))
}
