//! The SQLite engine: the embedded default, one process, one file.
//!
//! One writer connection (SQLite allows one writer at a time anyway) takes every write
//! transaction with `BEGIN IMMEDIATE`, so a write never has to upgrade a read lock and never
//! fails with "database is locked"; a separate pool of readers works beside it thanks to WAL.
//! `synchronous=FULL` makes every commit durable before it is acknowledged.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use uuid::Uuid;

use super::plan::{self, ExistingEvent, StreamState};
use super::{
    AppendReply, AtomicAppend, ChangeFeed, Delivery, Storage, StoredEvent, attach_dependents, decode_audit,
    decode_consumer, decode_erasure, decode_event, decode_existing, decode_hold, decode_shredded, decode_stream_info,
    decode_stream_state, decode_token, encode_shredded, encode_types, hash32, now_us, overdue_cutoff_us,
    target_columns, to_i64, to_u64,
};
use crate::access::{Consumer, TokenRecord};
use crate::audit::{AuditEntry, AuditQuery, NewAuditEntry};
use crate::erasure::{Erasure, ErasureFilter, ErasureStatus, ErasureTarget, LegalHold};
use crate::error::StorageError;
use crate::model::{Direction, LogFilter, StreamInfo, StreamName, SubjectId};
use lethe_keyvault::KeyId;

/// How long a connection waits for a lock held by another connection (or process).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent readers.
const READ_CONNECTIONS_MAX: u32 = 8;

pub struct SqliteStorage {
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqliteStorage {
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        super::migrations::migrator(super::migrations::SQLITE)
            .await?
            .run(&writer)
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS_MAX)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, readers })
    }
}

const SELECT_STATES: &str = "SELECT name, version, status, subject, key_id FROM streams \
     WHERE name IN (SELECT value FROM json_each(?1))";
const SELECT_EXISTING: &str = "SELECT event_id, stream, version, position, digest FROM events \
     WHERE event_id IN (SELECT unhex(value) FROM json_each(?1))";
const SELECT_ERASING: &str = "SELECT DISTINCT subject FROM erasure_requests WHERE status IN ('pending', 'keys_destroyed') \
     AND subject IN (SELECT value FROM json_each(?1))";
const INSERT_EVENT: &str = "INSERT INTO events \
     (position, stream, version, event_id, event_type, payload, metadata, key_id, digest, recorded_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const INSERT_STREAM: &str = "INSERT INTO streams (name, subject, status, version, key_id, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const UPDATE_STREAM: &str = "UPDATE streams SET version = ?2, key_id = ?3 WHERE name = ?1";

impl SqliteStorage {
    /// Fills in each erasure's dependents (one query for all of them).
    async fn load_dependents(&self, erasures: &mut [Erasure]) -> Result<(), StorageError> {
        if erasures.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT erasure_id, consumer, acknowledged_at, removed_at, delivery_attempts, last_attempt_at, \
             last_delivery_error FROM erasure_dependents \
             WHERE erasure_id IN (SELECT unhex(value) FROM json_each(?1))",
        )
        .bind(
            serde_json::to_string(
                &erasures
                    .iter()
                    .map(|e| hex::encode(e.id.as_bytes()))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| StorageError::Corrupt(e.to_string()))?,
        )
        .fetch_all(&self.readers)
        .await?;
        attach_dependents(erasures, &rows)
    }
}

super::transaction_helpers!(sqlx::SqliteConnection, head_select: "SELECT seq, hash FROM audit_head WHERE id = 1");

super::shared_queries!(SqliteStorage, writer: writer, reader: readers);

#[async_trait]
impl Storage for SqliteStorage {
    async fn append_group(&self, group: &[AtomicAppend]) -> Result<Vec<AppendReply>, StorageError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;

        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;

        let lookups = plan::lookups(group);
        let names_json = serde_json::to_string(&lookups.streams).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let mut states: HashMap<String, StreamState> = HashMap::new();
        for row in sqlx::query(SELECT_STATES).bind(names_json).fetch_all(&mut *tx).await? {
            let (name, state) = decode_stream_state(&row)?;
            states.insert(name, state);
        }

        let mut existing: HashMap<Uuid, ExistingEvent> = HashMap::new();
        if !lookups.given_ids.is_empty() {
            let ids: Vec<String> = lookups.given_ids.iter().map(|id| hex::encode(id.as_bytes())).collect();
            let ids_json = serde_json::to_string(&ids).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            for row in sqlx::query(SELECT_EXISTING).bind(ids_json).fetch_all(&mut *tx).await? {
                let (id, event) = decode_existing(&row)?;
                existing.insert(id, event);
            }
        }

        let mut erasing = HashSet::new();
        if !lookups.subjects.is_empty() {
            let subjects_json =
                serde_json::to_string(&lookups.subjects).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            let rows: Vec<String> = sqlx::query_scalar(SELECT_ERASING)
                .bind(subjects_json)
                .fetch_all(&mut *tx)
                .await?;
            erasing.extend(rows);
        }

        let plan = plan::plan_group(group, states, existing, &erasing, to_u64(head, "head")?, now_us());

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
                .execute(&mut *tx)
                .await?;
        }
        let created_at = now_us();
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
            Some(serde_json::to_string(&filter.types).map_err(|e| StorageError::Corrupt(e.to_string()))?)
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
        let events = rows.iter().map(decode_event).collect::<Result<Vec<_>, _>>()?;
        Ok((events, to_u64(head, "head")?))
    }

    async fn stream_states(&self, names: &[&str]) -> Result<HashMap<String, StreamState>, StorageError> {
        let names_json = serde_json::to_string(names).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(SELECT_STATES)
            .bind(names_json)
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(decode_stream_state).collect()
    }

    async fn subjects_being_erased(&self, subjects: &[&str]) -> Result<HashSet<String>, StorageError> {
        let subjects_json = serde_json::to_string(subjects).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let rows: Vec<String> = sqlx::query_scalar(SELECT_ERASING)
            .bind(subjects_json)
            .fetch_all(&self.readers)
            .await?;
        Ok(rows.into_iter().collect())
    }

    async fn insert_erasure(&self, erasure: &Erasure) -> Result<(), StorageError> {
        let (kind, subject, stream) = target_columns(&erasure.target);
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO erasure_requests (id, kind, subject, stream, status, reason, requested_by, reference, \
             requested_at, refused_reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(erasure.id)
        .bind(kind)
        .bind(subject)
        .bind(stream)
        .bind(erasure.status.as_str())
        .bind(erasure.reason.reason.as_deref())
        .bind(erasure.reason.requested_by.as_deref())
        .bind(erasure.reason.reference.as_deref())
        .bind(erasure.requested_at.timestamp_micros())
        .bind(erasure.refused_reason.as_deref())
        .execute(&mut *tx)
        .await?;
        if erasure.status == ErasureStatus::Pending {
            // The dependents are those registered at the time of the request.
            sqlx::query(
                "INSERT INTO erasure_dependents (erasure_id, consumer) \
                 SELECT ?1, name FROM consumers WHERE erasure_dependent",
            )
            .bind(erasure.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn shred_streams(&self, id: Uuid) -> Result<Erasure, StorageError> {
        // The single writer connection serialises this with every append.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(concat!(select_erasures!(), "WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("erasure request {id} not found")))?;
        let mut erasure = decode_erasure(&row)?;
        if erasure.streams.is_some() {
            tx.commit().await?;
            return Ok(erasure);
        }
        let rows = match &erasure.target {
            ErasureTarget::Subject(subject) => {
                sqlx::query(
                    "UPDATE streams SET status = 'erased' WHERE subject = ?1 AND status = 'active' \
                     RETURNING name, key_id",
                )
                .bind(subject.as_str())
                .fetch_all(&mut *tx)
                .await?
            }
            ErasureTarget::Stream(stream) => {
                sqlx::query(
                    "UPDATE streams SET status = 'deleted' WHERE name = ?1 AND status = 'active' \
                     RETURNING name, key_id",
                )
                .bind(stream.as_str())
                .fetch_all(&mut *tx)
                .await?
            }
        };
        let shredded = decode_shredded(&rows)?;
        let names: Vec<&str> = shredded.iter().map(|s| s.stream.as_str()).collect();
        let names_json = serde_json::to_string(&names).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE events SET payload = NULL WHERE stream IN (SELECT value FROM json_each(?1))")
            .bind(names_json)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE erasure_requests SET streams = ?2 WHERE id = ?1")
            .bind(id)
            .bind(encode_shredded(&shredded))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        erasure.streams = Some(shredded);
        Ok(erasure)
    }

    async fn mark_keys_destroyed(&self, id: Uuid, count: u64, _keys: &[KeyId]) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE erasure_requests SET status = 'keys_destroyed', keys_destroyed = ?2, keys_destroyed_at = ?3 \
             WHERE id = ?1 AND status = 'pending'",
        )
        .bind(id)
        .bind(to_i64(count))
        .bind(now_us())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn erasures(&self, filter: &ErasureFilter) -> Result<Vec<Erasure>, StorageError> {
        let rows = sqlx::query(concat!(
            select_erasures!(),
            "WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR status = ?2) \
             AND (?3 IS NULL OR requested_at >= ?3) AND (?4 IS NULL OR requested_at < ?4) \
             AND (?6 IS NULL OR \
                  ((status NOT IN ('completed', 'refused') AND requested_at < ?7) = ?6)) \
             ORDER BY requested_at DESC LIMIT ?5"
        ))
        .bind(filter.subject.as_ref().map(|s| s.as_str()))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.from.map(|t| t.timestamp_micros()))
        .bind(filter.to.map(|t| t.timestamp_micros()))
        .bind(to_i64(filter.limit as u64))
        .bind(filter.overdue)
        .bind(overdue_cutoff_us())
        .fetch_all(&self.readers)
        .await?;
        let mut erasures = rows.iter().map(decode_erasure).collect::<Result<Vec<_>, _>>()?;
        self.load_dependents(&mut erasures).await?;
        Ok(erasures)
    }

    async fn settle_acknowledgements(&self, id: Uuid) -> Result<(), StorageError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_us();
        sqlx::query(
            "UPDATE erasure_dependents SET acknowledged_at = ?2 \
             WHERE erasure_id = ?1 AND acknowledged_at IS NULL AND removed_at IS NULL \
               AND consumer IN (SELECT c.name FROM consumers c, erasure_requests r \
                                WHERE r.id = ?1 AND c.checkpoint >= r.tombstone_position)",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_consumer(&self, name: &str) -> Result<bool, StorageError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_us();
        let deleted = sqlx::query("DELETE FROM consumers WHERE name = ?1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE erasure_dependents SET removed_at = ?2 \
             WHERE consumer = ?1 AND acknowledged_at IS NULL AND removed_at IS NULL",
        )
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(deleted == 1)
    }

    async fn record_delivery(
        &self,
        delivery: &Delivery,
        outcome: Result<(), String>,
        next_attempt_us: i64,
    ) -> Result<(), StorageError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_us();
        let (acknowledged, error) = match &outcome {
            Ok(()) => (Some(now), None),
            Err(e) => (None, Some(e.as_str())),
        };
        sqlx::query(
            "UPDATE erasure_dependents SET delivery_attempts = delivery_attempts + 1, last_attempt_at = ?3, \
               last_delivery_error = ?4, next_attempt_at = ?5, \
               acknowledged_at = CASE WHEN acknowledged_at IS NULL THEN ?6 ELSE acknowledged_at END \
             WHERE erasure_id = ?1 AND consumer = ?2",
        )
        .bind(delivery.erasure_id)
        .bind(delivery.consumer.as_str())
        .bind(now)
        .bind(error)
        .bind(next_attempt_us)
        .bind(acknowledged)
        .execute(&mut *tx)
        .await?;
        complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ack_consumer(&self, name: &str, position: u64) -> Result<Option<Consumer>, StorageError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_us();
        let row = sqlx::query(
            "UPDATE consumers SET checkpoint = CASE WHEN checkpoint < ?2 THEN ?2 ELSE checkpoint END, \
               updated_at = ?3 WHERE name = ?1 \
             RETURNING name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at, webhook_url",
        )
        .bind(name)
        .bind(to_i64(position))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(consumer) = row.as_ref().map(decode_consumer).transpose()? else {
            return Ok(None);
        };
        // Acknowledges every tombstone this consumer has now read past.
        sqlx::query(
            "UPDATE erasure_dependents SET acknowledged_at = ?3 \
             WHERE consumer = ?1 AND acknowledged_at IS NULL AND removed_at IS NULL \
               AND erasure_id IN (SELECT id FROM erasure_requests \
                                  WHERE status = 'awaiting_acknowledgements' AND tombstone_position <= ?2)",
        )
        .bind(name)
        .bind(to_i64(consumer.checkpoint))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(Some(consumer))
    }

    async fn audit_lapsed_holds(&self, now_us: i64) -> Result<u64, StorageError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let audited = audit_lapsed_holds_in(&mut tx, now_us).await?;
        tx.commit().await?;
        Ok(audited)
    }

    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry, StorageError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let appended = audit_in(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(appended)
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, subject, request_id, details, prev_hash, hash FROM audit_log \
             WHERE seq > ?1 AND (?2 IS NULL OR action = ?2) AND (?3 IS NULL OR subject = ?3) \
             ORDER BY seq LIMIT ?4",
        )
        .bind(to_i64(query.after))
        .bind(query.action.as_deref())
        .bind(query.subject.as_ref().map(|s| s.as_str()))
        .bind(to_i64(query.limit as u64))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(decode_audit).collect()
    }

    async fn revoke_token(&self, id: Uuid) -> Result<bool, StorageError> {
        revoke_token_in(&mut *self.writer.acquire().await?, id).await
    }

    async fn watch_foreign_changes(&self, _feed: ChangeFeed) -> Result<(), StorageError> {
        // One process owns the file; its own commits and erasures are handled in-process.
        Ok(())
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}
