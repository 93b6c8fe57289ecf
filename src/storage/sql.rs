//! [`Storage`], written once for every engine.
//!
//! An engine writes [`EngineStorage`] itself (its append path, log reads, list lookups and
//! notifications) and says in [`Engine`] what else differs — its sqlx database, its pools, how
//! a write transaction begins, the statements that bind lists inside shared steps, and what
//! other processes must be told; the blanket `impl Storage for E: Engine` below holds
//! everything else, once. Statements here read the same on both engines: `$N` placeholders bind by number
//! on SQLite as on PostgreSQL, and `CAST(… AS …)` takes the place of PostgreSQL's `::type`.
//!
//! Rust does not imply where-clauses, so the sqlx traits the shared statements need (encoding
//! and decoding the column types Lethe uses, executing on the engine's connections) are stated
//! once per blanket impl: on [`SharedSteps`] and [`Storage`] here, and on the row decoders'
//! `DecodeRow` in `rows.rs`.

use std::future::Future;

use async_trait::async_trait;
use lethe_keyvault::KeyId;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Transaction, Type};
use uuid::Uuid;

use super::rows::{
    DecodeRow, attach_dependents, consumer_columns, decode_shredded, encode_shredded, encode_types, hash32, now_us,
    overdue_cutoff_us, parse_status, select_erasures, select_events, select_retention_policies, select_schemas,
    select_stream_info, select_tokens, target_columns, to_i64, to_u64,
};
use super::{
    Delivery, EngineStorage, KeyedStream, RetentionBatch, SchemaRegistration, Storage, StoredEvent, SubjectKeyRow,
};
use crate::error::StorageError;
use crate::limits::{RETENTION_POLICIES_MAX, SCHEMA_TYPES_MAX, SCHEMA_VERSIONS_MAX};
use crate::model::{
    AuditEntry, AuditQuery, Consumer, Direction, Erasure, ErasureFilter, ErasureReason, ErasureStatus, ErasureTarget,
    EventSchema, HashedFields, LegalHold, LogFilter, NewAuditEntry, RetentionPolicy, SYSTEM_ACTOR, SchemaMode,
    StreamInfo, StreamName, SubjectId, TokenRecord, entry_hash,
};

/// The streams holding a subject's personal fields (`$1`), by name.
/// Rows per multi-row statement: the batched writes' statements stay well under both engines'
/// limits on bound parameters (11 per row at most here).
const ROWS_PER_STATEMENT: usize = 100;

/// `($1, …, $n), ($n+1, …)`: `rows` groups of `columns` numbered placeholders.
fn values_placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", list_placeholders(r * columns + 1, columns)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$first, …`: `count` numbered placeholders.
fn list_placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A subject's legal hold (`$1`), as [`DecodeRow::decode_hold`] reads it.
const SELECT_HOLD: &str = "SELECT subject, reason, until, placed_at FROM legal_holds WHERE subject = $1";

/// The subjects a retention policy covers, one row each: `FROM` … `WHERE` of the retention
/// queries below, grouped by subject after it. `$1` the stream prefix, `$2` the anchor
/// (`first_event` or `last_event`). A subject counts through its active bound streams whose
/// names start with the prefix, each by its first or last event (one lookup by stream and
/// version); subjects with an erasure request other than a refused one are left out (being or
/// already forgotten, or re-filed after a hold).
macro_rules! retention_subjects {
    () => {
        "FROM streams s \
         JOIN events e ON e.stream = s.name \
           AND e.version = CASE WHEN $2 = 'first_event' THEN 0 ELSE s.version END \
         LEFT JOIN legal_holds h ON h.subject = s.subject \
         WHERE s.subject IS NOT NULL AND s.status = 'active' AND substr(s.name, 1, length($1)) = $1 \
           AND NOT EXISTS (SELECT 1 FROM erasure_requests r \
             WHERE r.subject = s.subject AND r.kind = 'subject' AND r.status <> 'refused') "
    };
}

/// Up to `$5` subjects due (see [`retention_subjects`]) after `$3` by id: each subject whose
/// newest anchor is before `$4`. Read without a lock; [`retention_due`] confirms them.
const RETENTION_CANDIDATES: &str = concat!(
    "SELECT s.subject ",
    retention_subjects!(),
    "AND (CAST($3 AS TEXT) IS NULL OR s.subject > $3) \
     GROUP BY s.subject HAVING MAX(e.recorded_at) < $4 ORDER BY s.subject LIMIT $5"
);

/// Which of the subjects `$4, …` are due (see [`retention_subjects`]) with newest anchor before
/// `$3`, each with its legal hold (count, until, placed_at, reason) and its last retention
/// request refused: the candidates confirmed under the lock, one statement per hundred.
macro_rules! retention_due {
    () => {
        concat!(
            "SELECT s.subject, MAX(e.recorded_at), COUNT(h.subject), MAX(h.until), MAX(h.placed_at), MAX(h.reason), \
               (SELECT MAX(r.requested_at) FROM erasure_requests r WHERE r.subject = s.subject AND r.kind = 'subject' \
                  AND r.status = 'refused' AND r.retention_policy IS NOT NULL) ",
            retention_subjects!(),
            "AND s.subject IN ({}) GROUP BY s.subject HAVING MAX(e.recorded_at) < $3"
        )
    };
}

/// The oldest newest-anchor among a policy's subjects (see [`retention_subjects`]).
const RETENTION_OLDEST_ANCHOR: &str = concat!(
    "SELECT MIN(newest) FROM (SELECT MAX(e.recorded_at) AS newest ",
    retention_subjects!(),
    "GROUP BY s.subject) t"
);

/// A connection of an engine's database (a transaction derefs to one).
pub(crate) type Conn<E> = <<E as Engine>::Db as Database>::Connection;

/// What an event database engine supplies; the rest of [`Storage`] is written once, below.
pub(crate) trait Engine: EngineStorage {
    type Db: Database;

    /// Where reads and single-statement writes go.
    fn pools(&self) -> Pools<'_, Self::Db>;
    /// The store's clock now, in unix microseconds (what deadlines are measured against).
    fn now_us(&self) -> i64;
    /// Begins a write transaction, on the writer pool.
    fn begin_write(&self) -> impl Future<Output = Result<Transaction<'static, Self::Db>, StorageError>> + Send {
        async move { Ok(self.pools().writer.begin().await?) }
    }

    /// `seq, hash` of the audit chain's head, locked until COMMIT where the engine locks rows,
    /// so that entries chain in one order across processes.
    const SELECT_AUDIT_HEAD_LOCKED: &'static str;
    /// The position readers may read up to (`Storage::head`).
    const SELECT_HEAD: &'static str = "SELECT position FROM log_head WHERE id = 1";
    /// The streams holding personal fields of subject `$1`, each once, in name order: the
    /// distinct streams of the events whose row in the field index lists the subject (each
    /// engine keeps that index its own way; this is SQLite's FTS5 table of migration 0014,
    /// whose entries are subject ids in lower-case hex).
    const SELECT_FIELD_STREAMS: &'static str = "SELECT DISTINCT stream FROM events WHERE position IN \
         (SELECT rowid FROM field_index WHERE field_index MATCH '\"' || lower(hex($1)) || '\"') ORDER BY stream";
    /// An erasure request by id (`$1`), [`select_erasures`]'s columns, locked likewise.
    const SELECT_ERASURE_LOCKED: &'static str;

    /// The `erasure_dependents` rows of these requests, as [`attach_dependents`] reads them.
    fn dependent_rows(
        &self,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<Vec<<Self::Db as Database>::Row>, StorageError>> + Send;
    /// First in the shred transaction: the commit-order lock, where appends take one, so that
    /// an append commits wholly before the shred or finds its stream closed.
    fn lock_commit_order(conn: &mut Conn<Self>) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Removes the ciphertext of every event of these streams.
    fn remove_payloads(
        conn: &mut Conn<Self>,
        streams: &[&str],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Tells the other processes, at COMMIT, to evict these keys (nothing where there are none).
    fn announce_revoked_keys(
        conn: &mut Conn<Self>,
        keys: &[KeyId],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Tells the other processes, at COMMIT, to forget the tokens they verified.
    fn announce_revoked_tokens(conn: &mut Conn<Self>) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Tells the other processes, at COMMIT, to read the schema registry again.
    fn announce_schemas(conn: &mut Conn<Self>) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// An engine's connection pools.
pub(crate) struct Pools<'a, Db: Database> {
    /// Where reads go.
    pub(crate) reader: &'a Pool<Db>,
    /// Where single-statement writes go (on SQLite, its one writer connection).
    pub(crate) writer: &'a Pool<Db>,
}

/// The rows a statement changed: sqlx gives each engine's result the method, but no trait.
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::sqlite::SqliteQueryResult::rows_affected(self)
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::postgres::PgQueryResult::rows_affected(self)
    }
}

/// Pieces several [`Storage`] methods share.
trait SharedSteps: Engine {
    /// Fills in each erasure's dependents (one query for all of them).
    fn load_dependents(&self, erasures: &mut [Erasure]) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Appends an audit entry (the chain head's row lock orders it).
    fn audit_in(
        conn: &mut Conn<Self>,
        entry: &NewAuditEntry,
    ) -> impl Future<Output = Result<AuditEntry, StorageError>> + Send;
    /// Appends audit entries in this order: the head read once, the rows inserted by the
    /// hundred, the head written once.
    fn audit_all_in(
        conn: &mut Conn<Self>,
        entries: &[NewAuditEntry],
    ) -> impl Future<Output = Result<Vec<AuditEntry>, StorageError>> + Send;
    /// Completes every request no dependent is still holding up, each audited.
    fn complete_acknowledged(conn: &mut Conn<Self>, now: i64) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Inserts an erasure request with its dependents (the erasure-dependent consumers of the
    /// moment, for a pending one); with `if_absent`, nothing if its id exists. True if inserted.
    fn insert_erasure_in(
        conn: &mut Conn<Self>,
        erasure: &Erasure,
        if_absent: bool,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;
    /// [`insert_erasure_in`](SharedSteps::insert_erasure_in) for many requests, in statements
    /// of a hundred; the ids inserted.
    fn insert_erasures_in(
        conn: &mut Conn<Self>,
        erasures: &[Erasure],
        if_absent: bool,
    ) -> impl Future<Output = Result<Vec<Uuid>, StorageError>> + Send;
}

impl<E> SharedSteps for E
where
    E: Engine,
    for<'c> &'c mut Conn<E>: Executor<'c, Database = E::Db>,
    <E::Db as Database>::Arguments: IntoArguments<E::Db>,
    for<'q> &'q str: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> Option<&'q str>: Encode<'q, E::Db>,
    for<'q> &'q [u8]: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> i64: Encode<'q, E::Db> + Decode<'q, E::Db> + Type<E::Db>,
    for<'q> Option<Uuid>: Encode<'q, E::Db>,
    for<'q> bool: Decode<'q, E::Db> + Type<E::Db>,
    for<'q> Uuid: Encode<'q, E::Db> + Decode<'q, E::Db> + Type<E::Db>,
    for<'q> String: Decode<'q, E::Db> + Type<E::Db>,
    for<'q> Vec<u8>: Decode<'q, E::Db> + Type<E::Db>,
    usize: ColumnIndex<<E::Db as Database>::Row>,
{
    async fn load_dependents(&self, erasures: &mut [Erasure]) -> Result<(), StorageError> {
        if erasures.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = erasures.iter().map(|e| e.id).collect();
        let rows = self.dependent_rows(&ids).await?;
        attach_dependents(erasures, &rows)
    }

    async fn audit_in(conn: &mut Conn<E>, entry: &NewAuditEntry) -> Result<AuditEntry, StorageError> {
        let mut written = Self::audit_all_in(conn, std::slice::from_ref(entry)).await?;
        written
            .pop()
            .ok_or_else(|| StorageError::Corrupt("an audit entry was not written".into()))
    }

    async fn audit_all_in(conn: &mut Conn<E>, entries: &[NewAuditEntry]) -> Result<Vec<AuditEntry>, StorageError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let head = sqlx::query(E::SELECT_AUDIT_HEAD_LOCKED).fetch_one(&mut *conn).await?;
        let mut prev_hash = hash32(head.try_get(1)?)?;
        let mut seq = to_u64(head.try_get(0)?, "audit seq")?;
        let at = now_us();
        let mut written = Vec::with_capacity(entries.len());
        for entry in entries {
            seq += 1;
            let subject = entry.subject.as_ref().map(|s| s.as_str());
            let fields = HashedFields {
                seq,
                at_us: at,
                actor: &entry.actor,
                action: &entry.action,
                subject,
                request_id: entry.request_id,
                details: &entry.details,
            };
            let hash = entry_hash(&prev_hash, &fields);
            written.push(AuditEntry {
                seq,
                at: chrono::DateTime::from_timestamp_micros(at).unwrap_or_default(),
                actor: entry.actor.clone(),
                action: entry.action.clone(),
                subject: subject.map(str::to_owned),
                request_id: entry.request_id,
                details: entry.details.clone(),
                prev_hash,
                hash,
            });
            prev_hash = hash;
        }
        for chunk in written.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO audit_log (seq, at, actor, action, subject, request_id, details, prev_hash, hash) VALUES {}",
                values_placeholders(chunk.len(), 9)
            );
            let details: Vec<String> = chunk.iter().map(|entry| entry.details.to_string()).collect();
            // Only placeholders are interpolated; every value is bound.
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (entry, details) in chunk.iter().zip(&details) {
                insert = insert
                    .bind(to_i64(entry.seq))
                    .bind(at)
                    .bind(entry.actor.as_str())
                    .bind(entry.action.as_str())
                    .bind(entry.subject.as_deref())
                    .bind(entry.request_id)
                    .bind(details.as_str())
                    .bind(entry.prev_hash.as_slice())
                    .bind(entry.hash.as_slice());
            }
            insert.execute(&mut *conn).await?;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(to_i64(seq))
            .bind(prev_hash.as_slice())
            .execute(&mut *conn)
            .await?;
        Ok(written)
    }

    async fn insert_erasure_in(conn: &mut Conn<E>, erasure: &Erasure, if_absent: bool) -> Result<bool, StorageError> {
        let inserted = Self::insert_erasures_in(conn, std::slice::from_ref(erasure), if_absent).await?;
        Ok(!inserted.is_empty())
    }

    async fn insert_erasures_in(
        conn: &mut Conn<E>,
        erasures: &[Erasure],
        if_absent: bool,
    ) -> Result<Vec<Uuid>, StorageError> {
        let mut inserted = Vec::with_capacity(erasures.len());
        for chunk in erasures.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO erasure_requests (id, kind, subject, stream, status, reason, requested_by, reference, \
                 requested_at, refused_reason, retention_policy) VALUES {} {} RETURNING id",
                values_placeholders(chunk.len(), 11),
                if if_absent { "ON CONFLICT (id) DO NOTHING" } else { "" }
            );
            // Only placeholders are interpolated; every value is bound.
            let mut insert = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
            for erasure in chunk {
                let (kind, subject, stream) = target_columns(&erasure.target);
                insert = insert
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
                    .bind(erasure.retention_policy.as_deref());
            }
            let ids: Vec<Uuid> = insert.fetch_all(&mut *conn).await?;
            // The dependents are those registered at the time of the request.
            let pending: Vec<Uuid> = chunk
                .iter()
                .filter(|e| e.status == ErasureStatus::Pending && ids.contains(&e.id))
                .map(|e| e.id)
                .collect();
            if !pending.is_empty() {
                let sql = format!(
                    "INSERT INTO erasure_dependents (erasure_id, consumer) \
                     SELECT r.id, c.name FROM erasure_requests r JOIN consumers c ON c.erasure_dependent \
                     WHERE r.id IN ({})",
                    list_placeholders(1, pending.len())
                );
                // Only placeholders are interpolated; every value is bound.
                let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in &pending {
                    insert = insert.bind(*id);
                }
                insert.execute(&mut *conn).await?;
            }
            inserted.extend(ids);
        }
        // The group writers' findings of subjects with no erasure request are void now.
        if erasures.iter().any(|e| matches!(e.target, ErasureTarget::Subject(_))) {
            sqlx::query("UPDATE change_tokens SET subject_erasure_filed = $1 WHERE id = 1")
                .bind(super::token_checks::new_token()?)
                .execute(&mut *conn)
                .await?;
        }
        Ok(inserted)
    }

    async fn complete_acknowledged(conn: &mut Conn<E>, now: i64) -> Result<(), StorageError> {
        let completed = sqlx::query(
            "UPDATE erasure_requests SET status = 'completed', completed_at = $1 \
             WHERE status = 'awaiting_acknowledgements' AND NOT EXISTS ( \
               SELECT 1 FROM erasure_dependents d WHERE d.erasure_id = erasure_requests.id \
                 AND d.acknowledged_at IS NULL AND d.removed_at IS NULL) \
             RETURNING id, subject",
        )
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        for row in completed {
            let subject: Option<String> = row.try_get(1)?;
            let entry = NewAuditEntry {
                actor: SYSTEM_ACTOR.to_owned(),
                action: "erasure_completed".to_owned(),
                subject: subject.and_then(|s| SubjectId::new(s).ok()),
                request_id: Some(row.try_get(0)?),
                details: serde_json::json!({}),
            };
            Self::audit_in(conn, &entry).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<E> Storage for E
where
    E: Engine,
    <E::Db as Database>::QueryResult: RowsAffected,
    for<'c> &'c mut Conn<E>: Executor<'c, Database = E::Db>,
    <E::Db as Database>::Arguments: IntoArguments<E::Db>,
    for<'q> &'q str: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> Option<&'q str>: Encode<'q, E::Db>,
    for<'q> &'q [u8]: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> i64: Encode<'q, E::Db> + Decode<'q, E::Db> + Type<E::Db>,
    for<'q> Option<i64>: Encode<'q, E::Db>,
    for<'q> Option<bool>: Encode<'q, E::Db>,
    for<'q> Option<Uuid>: Encode<'q, E::Db>,
    for<'q> bool: Encode<'q, E::Db> + Decode<'q, E::Db> + Type<E::Db>,
    for<'q> Uuid: Encode<'q, E::Db> + Decode<'q, E::Db> + Type<E::Db>,
    for<'q> String: Decode<'q, E::Db> + Type<E::Db>,
    for<'q> Vec<u8>: Decode<'q, E::Db> + Type<E::Db>,
    usize: ColumnIndex<<E::Db as Database>::Row>,
{
    // Appends and reads

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StorageError> {
        let sql = match direction {
            Direction::Forward => concat!(
                select_events!(),
                "WHERE e.stream = $1 AND e.version >= $2 ORDER BY e.version ASC LIMIT $3"
            ),
            Direction::Backward => concat!(
                select_events!(),
                "WHERE e.stream = $1 AND e.version <= $2 ORDER BY e.version DESC LIMIT $3"
            ),
        };
        let rows = sqlx::query(sql)
            .bind(stream.as_str())
            .bind(to_i64(from))
            .bind(to_i64(limit as u64))
            .fetch_all(self.pools().reader)
            .await?;
        rows.iter().map(DecodeRow::decode_event).collect()
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, StorageError> {
        let row = sqlx::query(concat!(select_stream_info!(), "WHERE name = $1"))
            .bind(stream.as_str())
            .fetch_optional(self.pools().reader)
            .await?;
        row.as_ref().map(DecodeRow::decode_stream_info).transpose()
    }

    async fn head(&self) -> Result<u64, StorageError> {
        let row = sqlx::query(E::SELECT_HEAD).fetch_one(self.pools().reader).await?;
        to_u64(row.try_get(0)?, "head")
    }

    async fn subject_streams(&self, subject: &SubjectId) -> Result<Vec<StreamInfo>, StorageError> {
        let rows = sqlx::query(concat!(select_stream_info!(), "WHERE subject = $1 ORDER BY name"))
            .bind(subject.as_str())
            .fetch_all(self.pools().reader)
            .await?;
        rows.iter().map(DecodeRow::decode_stream_info).collect()
    }

    async fn field_key_forgotten_token(&self) -> Result<i64, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT field_key_forgotten FROM change_tokens WHERE id = 1")
                .fetch_one(self.pools().reader)
                .await?,
        )
    }

    async fn field_streams(&self, subject: &SubjectId) -> Result<Vec<String>, StorageError> {
        Ok(sqlx::query_scalar(E::SELECT_FIELD_STREAMS)
            .bind(subject.as_str())
            .fetch_all(self.pools().reader)
            .await?)
    }

    // Event schemas

    async fn schemas(&self) -> Result<Vec<EventSchema>, StorageError> {
        let rows = sqlx::query(concat!(select_schemas!(), "ORDER BY event_type, version"))
            .fetch_all(self.pools().reader)
            .await?;
        rows.iter().map(DecodeRow::decode_schema).collect()
    }

    async fn register_schema(
        &self,
        event_type: &str,
        mode: SchemaMode,
        schema: &serde_json::Value,
        actor: &str,
    ) -> Result<SchemaRegistration, StorageError> {
        let mut tx = self.begin_write().await?;
        // The audit chain's lock first: registrations of one type then take versions in turn.
        sqlx::query(E::SELECT_AUDIT_HEAD_LOCKED).fetch_one(&mut *tx).await?;
        let latest = sqlx::query(concat!(
            select_schemas!(),
            "WHERE event_type = $1 ORDER BY version DESC LIMIT 1"
        ))
        .bind(event_type)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.decode_schema())
        .transpose()?;
        let version = match latest {
            Some(latest) if latest.mode == mode && latest.schema == *schema => {
                return Ok(SchemaRegistration::Unchanged(latest));
            }
            Some(latest) => latest.version + 1,
            None => {
                let types: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT event_type) FROM event_schemas")
                    .fetch_one(&mut *tx)
                    .await?;
                if to_u64(types, "schema types")? >= SCHEMA_TYPES_MAX as u64 {
                    return Ok(SchemaRegistration::TooManyTypes);
                }
                1
            }
        };
        if version as usize > SCHEMA_VERSIONS_MAX {
            return Ok(SchemaRegistration::TooManyVersions);
        }
        let registered_at = self.now_us();
        sqlx::query(
            "INSERT INTO event_schemas (event_type, version, mode, schema, registered_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(event_type)
        .bind(i64::from(version))
        .bind(mode.as_str())
        .bind(schema.to_string().as_str())
        .bind(registered_at)
        .execute(&mut *tx)
        .await?;
        let entry = NewAuditEntry {
            actor: actor.to_owned(),
            action: "schema_registered".to_owned(),
            subject: None,
            request_id: None,
            details: serde_json::json!({ "type": event_type, "version": version, "mode": mode.as_str() }),
        };
        E::audit_in(&mut tx, &entry).await?;
        E::announce_schemas(&mut tx).await?;
        tx.commit().await?;
        Ok(SchemaRegistration::Registered(EventSchema {
            event_type: event_type.to_owned(),
            version,
            mode,
            schema: schema.clone(),
            registered_at: chrono::DateTime::from_timestamp_micros(registered_at)
                .ok_or_else(|| StorageError::Corrupt("clock out of range".into()))?,
        }))
    }

    // Erasure requests and legal holds

    async fn insert_erasure(&self, erasure: &Erasure) -> Result<(), StorageError> {
        let mut tx = self.begin_write().await?;
        E::insert_erasure_in(&mut tx, erasure, false).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_erasure_if_absent(&self, erasure: &Erasure) -> Result<bool, StorageError> {
        let mut tx = self.begin_write().await?;
        let inserted = E::insert_erasure_in(&mut tx, erasure, true).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn shred_streams(&self, id: Uuid) -> Result<Erasure, StorageError> {
        let now_us = self.now_us();
        let mut tx = self.begin_write().await?;
        // An append either committed before this (its events are shredded with the rest) or
        // runs after it and finds the stream closed.
        E::lock_commit_order(&mut tx).await?;
        let row = sqlx::query(E::SELECT_ERASURE_LOCKED)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("erasure request {id} not found")))?;
        let mut erasure = row.decode_erasure()?;
        if erasure.streams.is_some() || erasure.status == ErasureStatus::Refused {
            tx.commit().await?;
            return Ok(erasure);
        }
        // A retention request waits for the resume loop: a legal hold placed since it was filed
        // refuses it now, before anything is shredded (the next sweep after the hold files it
        // again). A person's request was checked when filed; a re-applied one never is.
        if let (Some(_), ErasureTarget::Subject(subject)) = (&erasure.retention_policy, &erasure.target) {
            let hold = sqlx::query(SELECT_HOLD)
                .bind(subject.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .as_ref()
                .map(DecodeRow::decode_hold)
                .transpose()?;
            let now = chrono::DateTime::from_timestamp_micros(now_us).unwrap_or_default();
            if let Some(hold) = hold.filter(|h| h.is_active(now)) {
                sqlx::query("UPDATE erasure_requests SET status = 'refused', refused_reason = $2 WHERE id = $1")
                    .bind(id)
                    .bind(hold.reason.as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                erasure.status = ErasureStatus::Refused;
                erasure.refused_reason = Some(hold.reason);
                return Ok(erasure);
            }
        }
        let (sql, target) = match &erasure.target {
            ErasureTarget::Subject(subject) => (
                "UPDATE streams SET status = 'erased' WHERE subject = $1 AND status = 'active' RETURNING name, key_id",
                subject.as_str(),
            ),
            ErasureTarget::Stream(stream) => (
                "UPDATE streams SET status = 'deleted' WHERE name = $1 AND status = 'active' RETURNING name, key_id",
                stream.as_str(),
            ),
        };
        let rows = sqlx::query(sql).bind(target).fetch_all(&mut *tx).await?;
        let shredded = decode_shredded(&rows)?;
        let names: Vec<&str> = shredded.iter().map(|s| s.stream.as_str()).collect();
        E::remove_payloads(&mut tx, &names).await?;
        // A subject's personal fields elsewhere: the streams holding them are listed, and its
        // field key is marked forgotten, so that from this commit on no read decrypts them.
        let (field_streams, subject_key) = match &erasure.target {
            ErasureTarget::Subject(subject) => {
                // Only a key not forgotten before: a repeated forget finds nothing new (no
                // field can have been written since, a forgotten subject takes none).
                let key: Option<Uuid> = sqlx::query_scalar(
                    "UPDATE subject_keys SET forgotten_at = $2 WHERE subject = $1 AND forgotten_at IS NULL \
                     RETURNING key_id",
                )
                .bind(subject.as_str())
                .bind(now_us)
                .fetch_optional(&mut *tx)
                .await?;
                let streams: Vec<String> = match key {
                    Some(_) => {
                        // Readers that found no field key forgotten check again (`TokenChecks`).
                        sqlx::query("UPDATE change_tokens SET field_key_forgotten = $1 WHERE id = 1")
                            .bind(super::token_checks::new_token()?)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query_scalar(E::SELECT_FIELD_STREAMS)
                            .bind(subject.as_str())
                            .fetch_all(&mut *tx)
                            .await?
                    }
                    None => Vec::new(),
                };
                (streams, key)
            }
            ErasureTarget::Stream(_) => (Vec::new(), None),
        };
        let field_streams_json =
            serde_json::to_string(&field_streams).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE erasure_requests SET streams = $2, field_streams = $3, subject_key_id = $4 WHERE id = $1")
            .bind(id)
            .bind(encode_shredded(&shredded).as_str())
            .bind(field_streams_json.as_str())
            .bind(subject_key)
            .execute(&mut *tx)
            .await?;
        erasure.streams = Some(shredded);
        erasure.field_streams = Some(field_streams);
        erasure.subject_key = subject_key;
        // Other processes evict these keys now, not only after the vault destroyed them.
        E::announce_revoked_keys(&mut tx, &erasure.key_ids()).await?;
        tx.commit().await?;
        Ok(erasure)
    }

    async fn mark_keys_destroyed(&self, id: Uuid, count: u64, keys: &[KeyId]) -> Result<(), StorageError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE erasure_requests SET status = 'keys_destroyed', keys_destroyed = $2, keys_destroyed_at = $3 \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(to_i64(count))
        .bind(self.now_us())
        .execute(&mut *tx)
        .await?;
        // Again: a process that fetched a key between the shred and the destruction drops it.
        E::announce_revoked_keys(&mut tx, keys).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_tombstoned(&self, id: Uuid, position: u64) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE erasure_requests SET status = 'awaiting_acknowledgements', tombstone_position = $2 \
             WHERE id = $1 AND status = 'keys_destroyed'",
        )
        .bind(id)
        .bind(to_i64(position))
        .execute(self.pools().writer)
        .await?;
        Ok(())
    }

    async fn mark_erasure_completed(&self, id: Uuid, tombstone_position: Option<u64>) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE erasure_requests SET status = 'completed', completed_at = $2, tombstone_position = $3 \
             WHERE id = $1 AND status = 'keys_destroyed'",
        )
        .bind(id)
        .bind(self.now_us())
        .bind(tombstone_position.map(to_i64))
        .execute(self.pools().writer)
        .await?;
        Ok(())
    }

    async fn settle_acknowledgements(&self, id: Uuid) -> Result<(), StorageError> {
        let mut tx = self.begin_write().await?;
        let now = self.now_us();
        sqlx::query(
            "UPDATE erasure_dependents SET acknowledged_at = $2 \
             WHERE erasure_id = $1 AND acknowledged_at IS NULL AND removed_at IS NULL \
               AND consumer IN (SELECT c.name FROM consumers c, erasure_requests r \
                                WHERE r.id = $1 AND c.checkpoint >= r.tombstone_position)",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        E::complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn erasure(&self, id: Uuid) -> Result<Option<Erasure>, StorageError> {
        let row = sqlx::query(concat!(select_erasures!(), "WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pools().reader)
            .await?;
        let mut erasures = row
            .as_ref()
            .map(DecodeRow::decode_erasure)
            .transpose()?
            .into_iter()
            .collect::<Vec<_>>();
        self.load_dependents(&mut erasures).await?;
        Ok(erasures.pop())
    }

    async fn erasures(&self, filter: &ErasureFilter) -> Result<Vec<Erasure>, StorageError> {
        let rows = sqlx::query(concat!(
            select_erasures!(),
            "WHERE (CAST($1 AS TEXT) IS NULL OR subject = $1) AND (CAST($2 AS TEXT) IS NULL OR status = $2) \
             AND (CAST($3 AS BIGINT) IS NULL OR requested_at >= $3) \
             AND (CAST($4 AS BIGINT) IS NULL OR requested_at < $4) \
             AND (CAST($6 AS BOOLEAN) IS NULL OR \
                  ((status NOT IN ('completed', 'refused') AND requested_at < $7) = $6)) \
             ORDER BY requested_at DESC LIMIT $5"
        ))
        .bind(filter.subject.as_ref().map(|s| s.as_str()))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.from.map(|t| t.timestamp_micros()))
        .bind(filter.to.map(|t| t.timestamp_micros()))
        .bind(to_i64(filter.limit as u64))
        .bind(filter.overdue)
        .bind(overdue_cutoff_us(self.now_us()))
        .fetch_all(self.pools().reader)
        .await?;
        let mut erasures = rows
            .iter()
            .map(DecodeRow::decode_erasure)
            .collect::<Result<Vec<_>, _>>()?;
        self.load_dependents(&mut erasures).await?;
        Ok(erasures)
    }

    async fn unfinished_erasures(&self) -> Result<Vec<Erasure>, StorageError> {
        let rows = sqlx::query(concat!(
            select_erasures!(),
            "WHERE status NOT IN ('completed', 'refused') ORDER BY requested_at"
        ))
        .fetch_all(self.pools().reader)
        .await?;
        rows.iter().map(DecodeRow::decode_erasure).collect()
    }

    async fn put_hold(&self, hold: &LegalHold) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO legal_holds (subject, reason, until, placed_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (subject) DO UPDATE SET reason = excluded.reason, until = excluded.until, \
               placed_at = excluded.placed_at, lapse_audited_at = NULL",
        )
        .bind(hold.subject.as_str())
        .bind(hold.reason.as_str())
        .bind(hold.until.map(|t| t.timestamp_micros()))
        .bind(hold.placed_at.timestamp_micros())
        .execute(self.pools().writer)
        .await?;
        Ok(())
    }

    async fn lift_hold(&self, subject: &SubjectId) -> Result<bool, StorageError> {
        let done = sqlx::query("DELETE FROM legal_holds WHERE subject = $1")
            .bind(subject.as_str())
            .execute(self.pools().writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn hold(&self, subject: &SubjectId) -> Result<Option<LegalHold>, StorageError> {
        let row = sqlx::query(SELECT_HOLD)
            .bind(subject.as_str())
            .fetch_optional(self.pools().reader)
            .await?;
        row.as_ref().map(DecodeRow::decode_hold).transpose()
    }

    async fn active_holds(&self, now_us: i64) -> Result<u64, StorageError> {
        let row = sqlx::query("SELECT COUNT(*) FROM legal_holds WHERE until IS NULL OR until > $1")
            .bind(now_us)
            .fetch_one(self.pools().reader)
            .await?;
        to_u64(row.try_get(0)?, "holds")
    }

    // Retention policies

    async fn put_retention_policy(
        &self,
        policy: &RetentionPolicy,
        actor: &str,
    ) -> Result<Option<(RetentionPolicy, bool)>, StorageError> {
        let mut tx = self.begin_write().await?;
        // The audit chain's lock first: it also orders this against sweeps and other writers.
        sqlx::query(E::SELECT_AUDIT_HEAD_LOCKED).fetch_one(&mut *tx).await?;
        let existing = sqlx::query(concat!(select_retention_policies!(), "WHERE name = $1"))
            .bind(policy.name.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.decode_retention_policy())
            .transpose()?;
        if existing.is_none() {
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM retention_policies")
                .fetch_one(&mut *tx)
                .await?;
            if to_u64(count, "retention policies")? >= RETENTION_POLICIES_MAX as u64 {
                return Ok(None);
            }
        }
        let created_at = existing.as_ref().map_or(policy.created_at, |e| e.created_at);
        sqlx::query(
            "INSERT INTO retention_policies (name, stream_prefix, keep_for, after_event, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET stream_prefix = excluded.stream_prefix, \
               keep_for = excluded.keep_for, after_event = excluded.after_event, updated_at = excluded.updated_at",
        )
        .bind(policy.name.as_str())
        .bind(policy.stream_prefix.as_str())
        .bind(policy.keep_for.as_str())
        .bind(policy.after.as_str())
        .bind(created_at.timestamp_micros())
        .bind(policy.updated_at.timestamp_micros())
        .execute(&mut *tx)
        .await?;
        let entry = NewAuditEntry {
            actor: actor.to_owned(),
            action: "retention_policy_set".to_owned(),
            subject: None,
            request_id: None,
            details: serde_json::json!({
                "name": policy.name,
                "stream_prefix": policy.stream_prefix,
                "keep_for": policy.keep_for.as_str(),
                "after": policy.after.as_str(),
                "replaced": existing.is_some(),
            }),
        };
        E::audit_in(&mut tx, &entry).await?;
        tx.commit().await?;
        let stored = RetentionPolicy {
            created_at,
            ..policy.clone()
        };
        Ok(Some((stored, existing.is_none())))
    }

    async fn delete_retention_policy(&self, name: &str, actor: &str) -> Result<bool, StorageError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(E::SELECT_AUDIT_HEAD_LOCKED).fetch_one(&mut *tx).await?;
        let removed = sqlx::query("DELETE FROM retention_policies WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if removed.rows_affected() == 0 {
            return Ok(false);
        }
        let entry = NewAuditEntry {
            actor: actor.to_owned(),
            action: "retention_policy_removed".to_owned(),
            subject: None,
            request_id: None,
            details: serde_json::json!({ "name": name }),
        };
        E::audit_in(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn retention_policies(&self) -> Result<Vec<RetentionPolicy>, StorageError> {
        let rows = sqlx::query(concat!(select_retention_policies!(), "ORDER BY name"))
            .fetch_all(self.pools().reader)
            .await?;
        rows.iter().map(DecodeRow::decode_retention_policy).collect()
    }

    async fn retention_oldest_anchor(&self, policy: &RetentionPolicy) -> Result<Option<i64>, StorageError> {
        Ok(sqlx::query_scalar(RETENTION_OLDEST_ANCHOR)
            .bind(policy.stream_prefix.as_str())
            .bind(policy.after.as_str())
            .fetch_one(self.pools().reader)
            .await?)
    }

    async fn retention_candidates(
        &self,
        policy: &RetentionPolicy,
        cutoff_us: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        Ok(sqlx::query_scalar(RETENTION_CANDIDATES)
            .bind(policy.stream_prefix.as_str())
            .bind(policy.after.as_str())
            .bind(after)
            .bind(cutoff_us)
            .bind(to_i64(limit as u64))
            .fetch_all(self.pools().reader)
            .await?)
    }

    async fn file_retention_batch(
        &self,
        policy: &RetentionPolicy,
        cutoff_us: i64,
        now_us: i64,
        subjects: &[String],
    ) -> Result<RetentionBatch, StorageError> {
        let mut tx = self.begin_write().await?;
        // The audit chain's lock: of several processes sweeping at once, one files a subject's
        // request and the others, reading after it, find the request there.
        sqlx::query(E::SELECT_AUDIT_HEAD_LOCKED).fetch_one(&mut *tx).await?;
        let current = sqlx::query(concat!(select_retention_policies!(), "WHERE name = $1"))
            .bind(policy.name.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.decode_retention_policy())
            .transpose()?;
        if current.as_ref() != Some(policy) {
            return Ok(RetentionBatch {
                policy_changed: true,
                ..RetentionBatch::default()
            });
        }
        // The candidates again, under the lock.
        let mut rows = Vec::with_capacity(subjects.len());
        for chunk in subjects.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(retention_due!(), list_placeholders(4, chunk.len()));
            // Only placeholders are interpolated; every value is bound.
            let mut due = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(policy.stream_prefix.as_str())
                .bind(policy.after.as_str())
                .bind(cutoff_us);
            for subject in chunk {
                due = due.bind(subject.as_str());
            }
            rows.extend(due.fetch_all(&mut *tx).await?);
        }
        let mut batch = RetentionBatch {
            due: rows.len() as u64,
            ..RetentionBatch::default()
        };
        let requested_at = chrono::DateTime::from_timestamp_micros(now_us)
            .ok_or_else(|| StorageError::Corrupt("clock out of range".into()))?;
        let mut erasures = Vec::with_capacity(rows.len());
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let subject: String = row.try_get(0)?;
            let holds: i64 = row.try_get(2)?;
            let until: Option<i64> = row.try_get(3)?;
            let placed_at: Option<i64> = row.try_get(4)?;
            let hold_reason: Option<String> = row.try_get(5)?;
            let last_refused: Option<i64> = row.try_get(6)?;
            let held = holds > 0 && until.is_none_or(|until| until > now_us);
            if held && last_refused.is_some_and(|refused| placed_at.is_some_and(|placed| refused >= placed)) {
                // Refused under this hold already: filed again once it lapses.
                continue;
            }
            let subject =
                SubjectId::new(subject).map_err(|_| StorageError::Corrupt("subject of a bound stream".into()))?;
            let mut erasure = Erasure::new(
                ErasureTarget::Subject(subject.clone()),
                ErasureReason {
                    reason: Some(format!(
                        "retention: kept for {} after its {}",
                        policy.keep_for.as_str(),
                        policy.after.as_str().replace('_', " ")
                    )),
                    requested_by: Some(policy.requested_by()),
                    reference: None,
                },
                requested_at,
            );
            erasure.retention_policy = Some(policy.name.clone());
            if held {
                erasure.status = ErasureStatus::Refused;
                erasure.refused_reason = hold_reason;
            }
            entries.push(NewAuditEntry {
                actor: SYSTEM_ACTOR.to_owned(),
                action: "retention_erasure_filed".to_owned(),
                subject: Some(subject),
                request_id: Some(erasure.id),
                details: serde_json::json!({
                    "policy": policy.name,
                    "keep_for": policy.keep_for.as_str(),
                    "after": policy.after.as_str(),
                    "status": erasure.status.as_str(),
                }),
            });
            batch.filed.push((erasure.id, held));
            erasures.push(erasure);
        }
        E::insert_erasures_in(&mut tx, &erasures, false).await?;
        E::audit_all_in(&mut tx, &entries).await?;
        tx.commit().await?;
        Ok(batch)
    }

    // Reconciliation with the key vault

    async fn keyed_streams(&self, after: Option<&str>, limit: usize) -> Result<Vec<KeyedStream>, StorageError> {
        let rows = sqlx::query(
            "SELECT name, subject, status, key_id FROM streams \
             WHERE key_id IS NOT NULL AND (CAST($1 AS TEXT) IS NULL OR name > $1) ORDER BY name LIMIT $2",
        )
        .bind(after)
        .bind(to_i64(limit as u64))
        .fetch_all(self.pools().reader)
        .await?;
        rows.iter()
            .map(|row| {
                let corrupt = |e: crate::model::ValidationError| StorageError::Corrupt(e.to_string());
                let name: String = row.try_get(0)?;
                let subject: Option<String> = row.try_get(1)?;
                let status: String = row.try_get(2)?;
                Ok(KeyedStream {
                    name: StreamName::parse_readable(&name).map_err(corrupt)?,
                    subject: subject.map(SubjectId::new).transpose().map_err(corrupt)?,
                    status: parse_status(&status)?,
                    key_id: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn subject_key_rows(&self, after: Option<&str>, limit: usize) -> Result<Vec<SubjectKeyRow>, StorageError> {
        let rows = sqlx::query(
            "SELECT subject, key_id, forgotten_at IS NOT NULL FROM subject_keys \
             WHERE CAST($1 AS TEXT) IS NULL OR subject > $1 ORDER BY subject LIMIT $2",
        )
        .bind(after)
        .bind(to_i64(limit as u64))
        .fetch_all(self.pools().reader)
        .await?;
        rows.iter()
            .map(|row| {
                let subject: String = row.try_get(0)?;
                Ok(SubjectKeyRow {
                    subject: SubjectId::new(subject).map_err(|e| StorageError::Corrupt(e.to_string()))?,
                    key_id: row.try_get(1)?,
                    forgotten: row.try_get(2)?,
                })
            })
            .collect()
    }

    // API tokens

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StorageError> {
        sqlx::query("INSERT INTO api_tokens (id, name, role, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token.id)
            .bind(token.name.as_str())
            .bind(token.role.as_str())
            .bind(token.hash.as_slice())
            .bind(token.created_at.timestamp_micros())
            .execute(self.pools().writer)
            .await?;
        Ok(())
    }

    async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StorageError> {
        let row = sqlx::query(concat!(select_tokens!(), "WHERE token_hash = $1"))
            .bind(hash.as_slice())
            .fetch_optional(self.pools().reader)
            .await?;
        row.as_ref().map(DecodeRow::decode_token).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError> {
        let rows = sqlx::query(concat!(select_tokens!(), "ORDER BY created_at"))
            .fetch_all(self.pools().reader)
            .await?;
        rows.iter().map(DecodeRow::decode_token).collect()
    }

    async fn revoke_token(&self, id: Uuid) -> Result<bool, StorageError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(self.now_us())
            .execute(&mut *tx)
            .await?;
        let revoked = done.rows_affected() == 1;
        if revoked {
            // Delivered at COMMIT: no process can hear of a revocation that did not happen.
            E::announce_revoked_tokens(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }

    // Consumers and webhook deliveries

    async fn upsert_consumer(
        &self,
        name: &str,
        filter: &LogFilter,
        erasure_dependent: bool,
    ) -> Result<Consumer, StorageError> {
        let now = self.now_us();
        let row = sqlx::query(concat!(
            "INSERT INTO consumers (name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 0, $5, $5) \
             ON CONFLICT (name) DO UPDATE SET stream_prefix = excluded.stream_prefix, types = excluded.types, \
               erasure_dependent = excluded.erasure_dependent, updated_at = excluded.updated_at \
             RETURNING ",
            consumer_columns!()
        ))
        .bind(name)
        .bind(filter.stream_prefix.as_deref())
        .bind(encode_types(&filter.types).as_str())
        .bind(erasure_dependent)
        .bind(now)
        .fetch_one(self.pools().writer)
        .await?;
        row.decode_consumer()
    }

    async fn consumer(&self, name: &str) -> Result<Option<Consumer>, StorageError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            consumer_columns!(),
            " FROM consumers WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(self.pools().reader)
        .await?;
        row.as_ref().map(DecodeRow::decode_consumer).transpose()
    }

    async fn consumers(&self) -> Result<Vec<Consumer>, StorageError> {
        let rows = sqlx::query(concat!("SELECT ", consumer_columns!(), " FROM consumers ORDER BY name"))
            .fetch_all(self.pools().reader)
            .await?;
        rows.iter().map(DecodeRow::decode_consumer).collect()
    }

    async fn ack_consumer(&self, name: &str, position: u64) -> Result<Option<Consumer>, StorageError> {
        let mut tx = self.begin_write().await?;
        let now = self.now_us();
        let row = sqlx::query(concat!(
            "UPDATE consumers SET checkpoint = CASE WHEN checkpoint < $2 THEN $2 ELSE checkpoint END, \
               updated_at = $3 WHERE name = $1 RETURNING ",
            consumer_columns!()
        ))
        .bind(name)
        .bind(to_i64(position))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(consumer) = row.as_ref().map(DecodeRow::decode_consumer).transpose()? else {
            return Ok(None);
        };
        // Acknowledges every tombstone this consumer has now read past.
        sqlx::query(
            "UPDATE erasure_dependents SET acknowledged_at = $3 \
             WHERE consumer = $1 AND acknowledged_at IS NULL AND removed_at IS NULL \
               AND erasure_id IN (SELECT id FROM erasure_requests \
                                  WHERE status = 'awaiting_acknowledgements' AND tombstone_position <= $2)",
        )
        .bind(name)
        .bind(to_i64(consumer.checkpoint))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        E::complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(Some(consumer))
    }

    async fn delete_consumer(&self, name: &str) -> Result<bool, StorageError> {
        let mut tx = self.begin_write().await?;
        let now = self.now_us();
        let deleted = sqlx::query("DELETE FROM consumers WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE erasure_dependents SET removed_at = $2 \
             WHERE consumer = $1 AND acknowledged_at IS NULL AND removed_at IS NULL",
        )
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        E::complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn set_consumer_webhook(&self, name: &str, webhook: Option<(&str, &str)>) -> Result<bool, StorageError> {
        let done =
            sqlx::query("UPDATE consumers SET webhook_url = $2, webhook_secret = $3, updated_at = $4 WHERE name = $1")
                .bind(name)
                .bind(webhook.map(|(url, _)| url))
                .bind(webhook.map(|(_, secret)| secret))
                .bind(self.now_us())
                .execute(self.pools().writer)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_due_deliveries(
        &self,
        now_us: i64,
        lease_us: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StorageError> {
        let rows = sqlx::query(
            "SELECT d.erasure_id, d.consumer, c.webhook_url, c.webhook_secret, r.tombstone_position, d.delivery_attempts \
             FROM erasure_dependents d \
             JOIN consumers c ON c.name = d.consumer \
             JOIN erasure_requests r ON r.id = d.erasure_id \
             WHERE r.status = 'awaiting_acknowledgements' AND d.acknowledged_at IS NULL AND d.removed_at IS NULL \
               AND c.webhook_url IS NOT NULL AND c.webhook_secret IS NOT NULL \
               AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $1) \
             ORDER BY r.requested_at LIMIT $2",
        )
        .bind(now_us)
        .bind(to_i64(limit as u64))
        .fetch_all(self.pools().writer)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let delivery = Delivery {
                erasure_id: row.try_get(0)?,
                consumer: row.try_get(1)?,
                url: row.try_get(2)?,
                secret: row.try_get(3)?,
                tombstone_position: to_u64(row.try_get(4)?, "tombstone_position")?,
                attempts: to_u64(row.try_get(5)?, "delivery_attempts")?,
            };
            // Claimed only if no other worker moved its next attempt meanwhile.
            let claim = sqlx::query(
                "UPDATE erasure_dependents SET next_attempt_at = $3 \
                 WHERE erasure_id = $1 AND consumer = $2 AND (next_attempt_at IS NULL OR next_attempt_at <= $4)",
            )
            .bind(delivery.erasure_id)
            .bind(delivery.consumer.as_str())
            .bind(now_us + lease_us)
            .bind(now_us)
            .execute(self.pools().writer)
            .await?;
            if claim.rows_affected() == 1 {
                claimed.push(delivery);
            }
        }
        Ok(claimed)
    }

    async fn record_delivery(
        &self,
        delivery: &Delivery,
        outcome: Result<(), String>,
        next_attempt_us: i64,
    ) -> Result<(), StorageError> {
        let mut tx = self.begin_write().await?;
        let now = self.now_us();
        let (acknowledged, error) = match &outcome {
            Ok(()) => (Some(now), None),
            Err(e) => (None, Some(e.as_str())),
        };
        sqlx::query(
            "UPDATE erasure_dependents SET delivery_attempts = delivery_attempts + 1, last_attempt_at = $3, \
               last_delivery_error = CAST($4 AS TEXT), next_attempt_at = $5, \
               acknowledged_at = CASE WHEN acknowledged_at IS NULL THEN CAST($6 AS BIGINT) ELSE acknowledged_at END \
             WHERE erasure_id = $1 AND consumer = $2",
        )
        .bind(delivery.erasure_id)
        .bind(delivery.consumer.as_str())
        .bind(now)
        .bind(error)
        .bind(next_attempt_us)
        .bind(acknowledged)
        .execute(&mut *tx)
        .await?;
        E::complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    // The audit chain

    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry, StorageError> {
        let mut tx = self.begin_write().await?;
        let appended = E::audit_in(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(appended)
    }

    async fn append_audit_once(&self, once_key: &str, entry: &NewAuditEntry) -> Result<bool, StorageError> {
        let mut tx = self.begin_write().await?;
        let claimed = sqlx::query("INSERT INTO audit_once (key) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(once_key)
            .execute(&mut *tx)
            .await?;
        let appended = claimed.rows_affected() == 1;
        if appended {
            E::audit_in(&mut tx, entry).await?;
        }
        tx.commit().await?;
        Ok(appended)
    }

    async fn audit_lapsed_holds(&self, now_us: i64) -> Result<u64, StorageError> {
        let mut tx = self.begin_write().await?;
        // The row update claims each lapse, so of several processes exactly one audits it.
        let rows = sqlx::query(
            "UPDATE legal_holds SET lapse_audited_at = $1 \
             WHERE until IS NOT NULL AND until <= $1 AND lapse_audited_at IS NULL RETURNING subject, until",
        )
        .bind(now_us)
        .fetch_all(&mut *tx)
        .await?;
        let mut lapsed = rows
            .iter()
            .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        lapsed.sort();
        for (subject, until) in &lapsed {
            let until = chrono::DateTime::from_timestamp_micros(*until).unwrap_or_default();
            let entry = NewAuditEntry {
                actor: SYSTEM_ACTOR.to_owned(),
                action: "hold_expired".to_owned(),
                subject: SubjectId::new(subject.as_str()).ok(),
                request_id: None,
                details: serde_json::json!({ "until": until.to_rfc3339() }),
            };
            E::audit_in(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        Ok(lapsed.len() as u64)
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, subject, request_id, details, prev_hash, hash FROM audit_log \
             WHERE seq > $1 AND (CAST($2 AS TEXT) IS NULL OR action = $2) \
               AND (CAST($3 AS TEXT) IS NULL OR subject = $3) \
             ORDER BY seq LIMIT $4",
        )
        .bind(to_i64(query.after))
        .bind(query.action.as_deref())
        .bind(query.subject.as_ref().map(|s| s.as_str()))
        .bind(to_i64(query.limit as u64))
        .fetch_all(self.pools().reader)
        .await?;
        rows.iter().map(DecodeRow::decode_audit).collect()
    }

    async fn audit_head(&self) -> Result<(u64, [u8; 32]), StorageError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(self.pools().reader)
            .await?;
        Ok((to_u64(row.try_get(0)?, "audit seq")?, hash32(row.try_get(1)?)?))
    }
}
