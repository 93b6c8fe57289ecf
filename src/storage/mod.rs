//! The event database, behind one trait.
//!
//! [`Storage`] is everything Lethe asks of an engine: store a group of appends in one
//! transaction, read a stream, read the global log, and say when others committed. Two
//! implementations exist, [`sqlite::SqliteStorage`] (the embedded default) and
//! [`postgres::PostgresStorage`] (production; several processes on one database). What an
//! append *means* (expected versions, idempotent retries, subject binding, positions) is decided
//! once, engine-independently, by [`plan`]; the engines only load the state the plan needs and
//! write what it decided. Queries whose SQL reads the same on both engines are written once, in
//! [`shared_queries`] (the [`SharedQueries`] supertrait); each engine's file holds only what
//! really differs.
//!
//! Rows here are opaque bytes: payloads arrive already encrypted and leave still encrypted.
//! This module never sees key bytes or plaintext.

/// The head of every event query (both engines use the same names): the columns
/// [`decode_event`] reads, in its order, joined with the stream's status. A macro so that
/// queries stay `&'static str` literals built with `concat!`.
macro_rules! select_events {
    () => {
        "SELECT e.position, e.stream, e.version, e.event_id, e.event_type, e.payload, \
         e.metadata, e.key_id, e.recorded_at, s.status \
         FROM events e JOIN streams s ON s.name = e.stream "
    };
}

/// The head of every erasure-request query: the columns [`decode_erasure`] reads, in order.
macro_rules! select_erasures {
    () => {
        "SELECT id, kind, subject, stream, status, streams, keys_destroyed, reason, requested_by, \
         reference, requested_at, keys_destroyed_at, completed_at, tombstone_position, refused_reason \
         FROM erasure_requests "
    };
}

/// The [`SharedQueries`] of an engine, from one definition: `shared_queries!(Engine, writer:
/// pool_field, reader: pool_field)`. The SQL uses `$N` placeholders, which sqlx binds by number
/// on SQLite as on PostgreSQL.
macro_rules! shared_queries {
    ($engine:ty, writer: $w:ident, reader: $r:ident) => {
        #[async_trait::async_trait]
        impl super::SharedQueries for $engine {
    async fn stream_info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, StorageError> {
        let row = sqlx::query("SELECT name, subject, status, version FROM streams WHERE name = $1")
            .bind(stream.as_str())
            .fetch_optional(&self.$r)
            .await?;
        row.as_ref().map(decode_stream_info).transpose()
    }

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
            .fetch_all(&self.$r)
            .await?;
        rows.iter().map(decode_event).collect()
    }

    async fn head(&self) -> Result<u64, StorageError> {
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
            .fetch_one(&self.$r)
            .await?;
        to_u64(head, "head")
    }

    async fn subject_streams(&self, subject: &SubjectId) -> Result<Vec<StreamInfo>, StorageError> {
        let rows = sqlx::query("SELECT name, subject, status, version FROM streams WHERE subject = $1 ORDER BY name")
            .bind(subject.as_str())
            .fetch_all(&self.$r)
            .await?;
        rows.iter().map(decode_stream_info).collect()
    }

    async fn mark_erasure_completed(&self, id: Uuid, tombstone_position: Option<u64>) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE erasure_requests SET status = 'completed', completed_at = $2, tombstone_position = $3 \
             WHERE id = $1 AND status = 'keys_destroyed'",
        )
        .bind(id)
        .bind(now_us())
        .bind(tombstone_position.map(to_i64))
        .execute(&self.$w)
        .await?;
        Ok(())
    }

    async fn erasure(&self, id: Uuid) -> Result<Option<Erasure>, StorageError> {
        let row = sqlx::query(concat!(select_erasures!(), "WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.$r)
            .await?;
        let mut erasures = row
            .as_ref()
            .map(decode_erasure)
            .transpose()?
            .into_iter()
            .collect::<Vec<_>>();
        self.load_dependents(&mut erasures).await?;
        Ok(erasures.pop())
    }

    async fn unfinished_erasures(&self) -> Result<Vec<Erasure>, StorageError> {
        let rows = sqlx::query(concat!(
            select_erasures!(),
            "WHERE status NOT IN ('completed', 'refused') ORDER BY requested_at"
        ))
        .fetch_all(&self.$r)
        .await?;
        rows.iter().map(decode_erasure).collect()
    }

    async fn mark_tombstoned(&self, id: Uuid, position: u64) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE erasure_requests SET status = 'awaiting_acknowledgements', tombstone_position = $2 \
             WHERE id = $1 AND status = 'keys_destroyed'",
        )
        .bind(id)
        .bind(to_i64(position))
        .execute(&self.$w)
        .await?;
        Ok(())
    }

    async fn set_consumer_webhook(&self, name: &str, webhook: Option<(&str, &str)>) -> Result<bool, StorageError> {
        let done =
            sqlx::query("UPDATE consumers SET webhook_url = $2, webhook_secret = $3, updated_at = $4 WHERE name = $1")
                .bind(name)
                .bind(webhook.map(|(url, _)| url))
                .bind(webhook.map(|(_, secret)| secret))
                .bind(now_us())
                .execute(&self.$w)
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
        .fetch_all(&self.$w)
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
            .execute(&self.$w)
            .await?;
            if claim.rows_affected() == 1 {
                claimed.push(delivery);
            }
        }
        Ok(claimed)
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
        .execute(&self.$w)
        .await?;
        Ok(())
    }

    async fn lift_hold(&self, subject: &SubjectId) -> Result<bool, StorageError> {
        let done = sqlx::query("DELETE FROM legal_holds WHERE subject = $1")
            .bind(subject.as_str())
            .execute(&self.$w)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn active_holds(&self, now_us: i64) -> Result<u64, StorageError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM legal_holds WHERE until IS NULL OR until > $1")
            .bind(now_us)
            .fetch_one(&self.$r)
            .await?;
        to_u64(count, "holds")
    }

    async fn hold(&self, subject: &SubjectId) -> Result<Option<LegalHold>, StorageError> {
        let row = sqlx::query("SELECT subject, reason, until, placed_at FROM legal_holds WHERE subject = $1")
            .bind(subject.as_str())
            .fetch_optional(&self.$r)
            .await?;
        row.as_ref().map(decode_hold).transpose()
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StorageError> {
        sqlx::query("INSERT INTO api_tokens (id, name, role, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token.id)
            .bind(token.name.as_str())
            .bind(token.role.as_str())
            .bind(token.hash.as_slice())
            .bind(token.created_at.timestamp_micros())
            .execute(&self.$w)
            .await?;
        Ok(())
    }

    async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StorageError> {
        let row = sqlx::query(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM api_tokens WHERE token_hash = $1",
        )
        .bind(hash.as_slice())
        .fetch_optional(&self.$r)
        .await?;
        row.as_ref().map(decode_token).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, name, role, token_hash, created_at, revoked_at FROM api_tokens ORDER BY created_at",
        )
        .fetch_all(&self.$r)
        .await?;
        rows.iter().map(decode_token).collect()
    }

    async fn upsert_consumer(
        &self,
        name: &str,
        filter: &LogFilter,
        erasure_dependent: bool,
    ) -> Result<Consumer, StorageError> {
        let now = now_us();
        let row = sqlx::query(
            "INSERT INTO consumers (name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 0, $5, $5) \
             ON CONFLICT (name) DO UPDATE SET stream_prefix = excluded.stream_prefix, types = excluded.types, \
               erasure_dependent = excluded.erasure_dependent, updated_at = excluded.updated_at \
             RETURNING name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at, webhook_url",
        )
        .bind(name)
        .bind(filter.stream_prefix.as_deref())
        .bind(encode_types(&filter.types))
        .bind(erasure_dependent)
        .bind(now)
        .fetch_one(&self.$w)
        .await?;
        decode_consumer(&row)
    }

    async fn consumer(&self, name: &str) -> Result<Option<Consumer>, StorageError> {
        let row = sqlx::query(
            "SELECT name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at, webhook_url \
             FROM consumers WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.$r)
        .await?;
        row.as_ref().map(decode_consumer).transpose()
    }

    async fn consumers(&self) -> Result<Vec<Consumer>, StorageError> {
        let rows = sqlx::query(
            "SELECT name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at, webhook_url \
             FROM consumers ORDER BY name",
        )
        .fetch_all(&self.$r)
        .await?;
        rows.iter().map(decode_consumer).collect()
    }

    async fn audit_head(&self) -> Result<(u64, [u8; 32]), StorageError> {
        let (seq, hash): (i64, Vec<u8>) = sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.$r)
            .await?;
        Ok((to_u64(seq, "audit seq")?, hash32(hash)?))
    }
        }
    };
}
pub(crate) use shared_queries;

/// The helpers every engine's write transactions share: appending to the audit chain and
/// completing acknowledged erasures (audited in the same transaction). `$head_select` reads the
/// chain head, locking it where the engine can (`FOR UPDATE` on PostgreSQL; SQLite's single
/// writer already serialises).
macro_rules! transaction_helpers {
    ($conn:ty, head_select: $head_select:expr) => {
        /// Marks a token revoked inside the caller's transaction; false if there is no such
        /// (unrevoked) token.
        async fn revoke_token_in(conn: &mut $conn, id: Uuid) -> Result<bool, StorageError> {
            let done = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now_us())
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        /// Appends an audit entry inside the caller's transaction (the chain head's row lock orders it).
        async fn audit_in(conn: &mut $conn, entry: &NewAuditEntry) -> Result<AuditEntry, StorageError> {
            let (head_seq, head_hash): (i64, Vec<u8>) = sqlx::query_as($head_select).fetch_one(&mut *conn).await?;
            let prev_hash = hash32(head_hash)?;
            let seq = to_u64(head_seq, "audit seq")? + 1;
            let at = now_us();
            let subject = entry.subject.as_ref().map(|s| s.as_str());
            let fields = crate::audit::HashedFields {
                seq,
                at_us: at,
                actor: &entry.actor,
                action: &entry.action,
                subject,
                request_id: entry.request_id,
                details: &entry.details,
            };
            let hash = crate::audit::entry_hash(&prev_hash, &fields);
            sqlx::query(
                "INSERT INTO audit_log (seq, at, actor, action, subject, request_id, details, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(to_i64(seq))
            .bind(at)
            .bind(entry.actor.as_str())
            .bind(entry.action.as_str())
            .bind(subject)
            .bind(entry.request_id)
            .bind(entry.details.to_string())
            .bind(prev_hash.as_slice())
            .bind(hash.as_slice())
            .execute(&mut *conn)
            .await?;
            sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
                .bind(to_i64(seq))
                .bind(hash.as_slice())
                .execute(&mut *conn)
                .await?;
            Ok(AuditEntry {
                seq,
                at: chrono::DateTime::from_timestamp_micros(at).unwrap_or_default(),
                actor: entry.actor.clone(),
                action: entry.action.clone(),
                subject: subject.map(str::to_owned),
                request_id: entry.request_id,
                details: entry.details.clone(),
                prev_hash,
                hash,
            })
        }

        /// Completes every request no dependent is still holding up, and audits each completion in the
        /// same transaction.
        async fn complete_acknowledged(conn: &mut $conn, now: i64) -> Result<(), StorageError> {
            let completed: Vec<(Uuid, Option<String>)> = sqlx::query_as(COMPLETE_ACKNOWLEDGED)
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
            for (request_id, subject) in completed {
                let entry = NewAuditEntry {
                    actor: crate::audit::SYSTEM_ACTOR.to_owned(),
                    action: "erasure_completed".to_owned(),
                    subject: subject.and_then(|s| crate::model::SubjectId::new(s).ok()),
                    request_id: Some(request_id),
                    details: serde_json::json!({}),
                };
                audit_in(conn, &entry).await?;
            }
            Ok(())
        }

        /// Audits, once, each hold whose `until` has passed (`hold_expired`, by the system actor).
        /// The row update claims a hold, so of two processes only one audits it.
        async fn audit_lapsed_holds_in(conn: &mut $conn, now: i64) -> Result<u64, StorageError> {
            let mut lapsed: Vec<(String, i64)> = sqlx::query_as(
                "UPDATE legal_holds SET lapse_audited_at = $1 \
                 WHERE until IS NOT NULL AND until <= $1 AND lapse_audited_at IS NULL RETURNING subject, until",
            )
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
            lapsed.sort();
            for (subject, until) in &lapsed {
                let until = chrono::DateTime::from_timestamp_micros(*until).unwrap_or_default();
                let entry = NewAuditEntry {
                    actor: crate::audit::SYSTEM_ACTOR.to_owned(),
                    action: "hold_expired".to_owned(),
                    subject: crate::model::SubjectId::new(subject.as_str()).ok(),
                    request_id: None,
                    details: serde_json::json!({ "until": until.to_rfc3339() }),
                };
                audit_in(conn, &entry).await?;
            }
            Ok(lapsed.len() as u64)
        }

        /// Completes every request no dependent is still holding up (param 1: now).
        const COMPLETE_ACKNOWLEDGED: &str = "UPDATE erasure_requests SET status = 'completed', completed_at = $1 \
             WHERE status = 'awaiting_acknowledgements' AND NOT EXISTS ( \
               SELECT 1 FROM erasure_dependents d WHERE d.erasure_id = erasure_requests.id \
                 AND d.acknowledged_at IS NULL AND d.removed_at IS NULL) \
             RETURNING id, subject";
    };
}
pub(crate) use transaction_helpers;

pub(crate) mod plan;
pub(crate) mod postgres;
pub(crate) mod sqlite;

mod migrations;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use lethe_keyvault::KeyId;
use tokio::sync::watch;
use uuid::Uuid;

use crate::access::{Consumer, Role, TokenRecord};
use crate::audit::{AuditEntry, AuditQuery, NewAuditEntry};
use crate::erasure::{
    Dependent, Erasure, ErasureFilter, ErasureReason, ErasureStatus, ErasureTarget, LegalHold, ShreddedStream,
};

use crate::error::{Error, StorageError};
use crate::model::{
    AppendOutcome, Direction, ExpectedVersion, LogFilter, StreamInfo, StreamName, StreamStatus, SubjectId,
};

/// An event ready to be stored: its payload already encoded (encrypted) by the store layer.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    pub id: Uuid,
    /// Whether the caller chose `id`. Only such events can already be stored (an idempotent
    /// retry, or a duplicate id); an id the store generated (a fresh UUIDv7) cannot, so the
    /// engines skip looking those up (one query less inside the commit-order lock).
    pub id_given: bool,
    pub event_type: String,
    /// Ciphertext (or, for tests of the storage layer alone, any bytes).
    pub payload: Vec<u8>,
    /// JSON text, stored in clear.
    pub metadata: String,
    /// Keyed digest of the event's content, compared on idempotent retries.
    pub digest: [u8; 32],
}

/// One stream's part of an atomic append.
#[derive(Debug, Clone)]
pub struct StreamWrite {
    pub stream: StreamName,
    pub expected: ExpectedVersion,
    pub subject: Option<SubjectId>,
    /// The stream's key (recorded on the stream's first write).
    pub key_id: Option<Uuid>,
    /// Whether these events' payloads are sealed with `key_id` (system events are not).
    pub sealed: bool,
    pub events: Vec<EncodedEvent>,
    /// System writes (tombstones) may append to erased or deleted streams.
    pub allow_closed: bool,
}

/// One append: all of its stream writes are stored, or none.
#[derive(Debug, Clone)]
pub struct AtomicAppend {
    pub writes: Vec<StreamWrite>,
}

impl AtomicAppend {
    pub fn event_count(&self) -> usize {
        self.writes.iter().map(|w| w.events.len()).sum()
    }
}

/// Called with keys that must be evicted from the cache.
pub type KeyRevoker = Arc<dyn Fn(&[KeyId]) + Send + Sync>;

/// A tombstone to push to a dependent's webhook.
#[derive(Clone)]
pub struct Delivery {
    pub erasure_id: Uuid,
    pub consumer: String,
    pub url: String,
    pub secret: String,
    pub tombstone_position: u64,
    pub attempts: u64,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("erasure_id", &self.erasure_id)
            .field("consumer", &self.consumer)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Where an engine reports changes made by other processes.
#[derive(Clone)]
pub struct ChangeFeed {
    /// Raised to each new head committed elsewhere.
    pub commits: watch::Sender<u64>,
    /// Called with the keys another process's erasure destroyed.
    pub revoked_keys: KeyRevoker,
    /// Called when notifications may have been missed (the listener reconnected): every cached
    /// key is dropped, since a revocation may have been among the missed.
    pub forget_cached_keys: Arc<dyn Fn() + Send + Sync>,
    /// Called when another process revoked a token, or when notifications may have been
    /// missed: every verified token is verified again.
    pub forget_verified_tokens: Arc<dyn Fn() + Send + Sync>,
}

/// The result of one append of a group.
pub type AppendReply = Result<AppendOutcome, Error>;

/// A stored event row, payload still encoded.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub id: Uuid,
    pub event_type: String,
    /// Ciphertext; `None` once the payload itself has been removed.
    pub payload: Option<Vec<u8>>,
    pub metadata: String,
    pub key_id: Option<Uuid>,
    pub recorded_at_us: i64,
    /// The status of the event's stream at the time of the read (the source of truth for
    /// whether the payload may be decrypted).
    pub stream_status: StreamStatus,
}

/// Queries written once for both engines (see [`shared_queries`]): `$N` placeholders mean the
/// same thing to sqlx on SQLite and PostgreSQL, so only the pools differ.
#[async_trait]
pub trait SharedQueries: Send + Sync + 'static {
    /// A stream's metadata, or `None` if it was never written.
    async fn stream_info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, StorageError>;

    /// Up to `limit` events of a stream from version `from` (inclusive) in `direction`.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StorageError>;

    /// The last committed position (0 for an empty log).
    async fn head(&self) -> Result<u64, StorageError>;

    /// Streams bound to a subject.
    async fn subject_streams(&self, subject: &SubjectId) -> Result<Vec<StreamInfo>, StorageError>;

    /// Step 3 done: tombstones written (the `$erasures` event at `tombstone_position`).
    async fn mark_erasure_completed(&self, id: Uuid, tombstone_position: Option<u64>) -> Result<(), StorageError>;

    async fn erasure(&self, id: Uuid) -> Result<Option<Erasure>, StorageError>;

    /// Tombstones written at `position`: now waiting for acknowledgements.
    async fn mark_tombstoned(&self, id: Uuid, position: u64) -> Result<(), StorageError>;

    /// Sets (or, with `None`, removes) a consumer's webhook; false if there is no such consumer.
    async fn set_consumer_webhook(&self, name: &str, webhook: Option<(&str, &str)>) -> Result<bool, StorageError>;

    /// Webhook deliveries due now (dependents with a webhook, not acknowledged, whose next
    /// attempt time has come), each claimed for `lease` so that one worker tries it at a time.
    async fn claim_due_deliveries(
        &self,
        now_us: i64,
        lease_us: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StorageError>;

    /// Places (or replaces) the legal hold on a subject.
    async fn put_hold(&self, hold: &LegalHold) -> Result<(), StorageError>;
    /// Lifts a subject's hold; false if there was none.
    async fn lift_hold(&self, subject: &SubjectId) -> Result<bool, StorageError>;
    /// Holds active at `now_us` (no `until`, or `until` later).
    async fn active_holds(&self, now_us: i64) -> Result<u64, StorageError>;
    /// The subject's hold, active or lapsed.
    async fn hold(&self, subject: &SubjectId) -> Result<Option<LegalHold>, StorageError>;

    /// Requests not yet completed (to resume after a crash).
    async fn unfinished_erasures(&self) -> Result<Vec<Erasure>, StorageError>;

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StorageError>;
    async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StorageError>;
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError>;

    /// Creates a consumer or updates its filter and flag (its checkpoint stays).
    async fn upsert_consumer(
        &self,
        name: &str,
        filter: &LogFilter,
        erasure_dependent: bool,
    ) -> Result<Consumer, StorageError>;
    async fn consumer(&self, name: &str) -> Result<Option<Consumer>, StorageError>;
    async fn consumers(&self) -> Result<Vec<Consumer>, StorageError>;
    /// The chain head: last `seq` and its hash.
    async fn audit_head(&self) -> Result<(u64, [u8; 32]), StorageError>;
}

/// Everything else Lethe needs from an event database engine (the parts whose SQL differs).
#[async_trait]
pub trait Storage: SharedQueries {
    /// Stores a group of independent appends in one database transaction. Each append is
    /// checked on its own (a conflict rejects only that append); the `Vec` has one reply per
    /// append, in order. `Err` means the transaction itself failed and nothing was stored.
    async fn append_group(&self, group: &[AtomicAppend]) -> Result<Vec<AppendReply>, StorageError>;

    /// Up to `limit` events of the global log from position `from` (inclusive), never past the
    /// returned head: every position up to the head is committed, so a reader that continues
    /// from `head + 1` skips nothing.
    async fn read_log(
        &self,
        from: u64,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64), StorageError>;

    /// The stored state of these streams (absent: never written).
    async fn stream_states(&self, names: &[&str]) -> Result<HashMap<String, plan::StreamState>, StorageError>;

    /// Which of these subjects have an unfinished erasure.
    async fn subjects_being_erased(&self, subjects: &[&str]) -> Result<HashSet<String>, StorageError>;

    /// Records a new erasure request.
    async fn insert_erasure(&self, erasure: &Erasure) -> Result<(), StorageError>;

    /// Step 1 of an erasure, in one transaction serialised with appends: marks its target's
    /// active streams erased (subject) or deleted (stream), removes their ciphertext, and
    /// records the list on the request. Once: a repeat returns the recorded list unchanged.
    async fn shred_streams(&self, id: Uuid) -> Result<Erasure, StorageError>;

    /// Step 2 done: the vault destroyed `keys`. Other processes are told to evict them.
    async fn mark_keys_destroyed(&self, id: Uuid, count: u64, keys: &[KeyId]) -> Result<(), StorageError>;

    /// Erasure requests matching `filter`, newest first, with their dependents.
    async fn erasures(&self, filter: &ErasureFilter) -> Result<Vec<Erasure>, StorageError>;

    /// Counts dependents already past the tombstone as acknowledged, and completes the request
    /// if none is left waiting.
    async fn settle_acknowledgements(&self, id: Uuid) -> Result<(), StorageError>;

    /// Deletes a consumer; as a dependent of unfinished erasures it is marked removed (which
    /// may complete them). False if there was no such consumer.
    async fn delete_consumer(&self, name: &str) -> Result<bool, StorageError>;

    /// Records a delivery attempt: success acknowledges the dependent (and may complete the
    /// erasure); failure records the error and when to try again.
    async fn record_delivery(
        &self,
        delivery: &Delivery,
        outcome: Result<(), String>,
        next_attempt_us: i64,
    ) -> Result<(), StorageError>;
    /// Moves a consumer's checkpoint forward to `position` (never back); `None`: no such consumer.
    async fn ack_consumer(&self, name: &str, position: u64) -> Result<Option<Consumer>, StorageError>;

    /// Appends an entry to the audit chain (serialised by the chain head's row lock).
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry, StorageError>;
    /// Audits each hold that lapsed by `now_us` and was not audited yet; returns how many.
    async fn audit_lapsed_holds(&self, now_us: i64) -> Result<u64, StorageError>;
    /// Audit entries after `query.after`, oldest first.
    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError>;

    /// Marks a token revoked; false if there is no such (unrevoked) token. On PostgreSQL the
    /// revocation is also announced to every other process (at COMMIT), which forget the
    /// tokens they had verified.
    async fn revoke_token(&self, id: Uuid) -> Result<bool, StorageError>;

    /// Starts forwarding what *other* processes do — new commits, revoked keys and tokens — into `feed`
    /// (PostgreSQL LISTEN/NOTIFY). Engines without other writers do nothing.
    async fn watch_foreign_changes(&self, feed: ChangeFeed) -> Result<(), StorageError>;

    /// Closes the connection pools.
    async fn close(&self);
}

/// Opens an event database by URL (`sqlite://path` or `postgres://…`), applying migrations.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Storage>, StorageError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStorage::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(std::sync::Arc::new(postgres::PostgresStorage::open(url).await?))
    } else {
        Err(StorageError::UnsupportedUrl)
    }
}

/// Converts a stored (signed) integer to the unsigned one the model uses.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("negative {what}")))
}

/// Converts a model integer to the signed column type both engines use.
pub(crate) fn to_i64(v: u64) -> i64 {
    // Positions and versions come from counters that would take millennia to pass i64::MAX.
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn parse_status(s: &str) -> Result<StreamStatus, StorageError> {
    StreamStatus::from_db(s).ok_or_else(|| StorageError::Corrupt(format!("unknown stream status {s:?}")))
}

/// Decodes a row selected with [`select_events`], on either engine.
pub(crate) fn decode_event<R>(row: &R) -> Result<StoredEvent, StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get(9)?;
    decode_event_with_status(row, parse_status(&status)?)
}

/// [`decode_event`] for a row whose stream status was read on its own (columns 0–8 only).
pub(crate) fn decode_event_with_status<R>(row: &R, stream_status: StreamStatus) -> Result<StoredEvent, StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredEvent {
        position: to_u64(row.try_get(0)?, "position")?,
        stream: row.try_get(1)?,
        version: to_u64(row.try_get(2)?, "version")?,
        id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        payload: row.try_get(5)?,
        metadata: row.try_get(6)?,
        key_id: row.try_get(7)?,
        recorded_at_us: row.try_get(8)?,
        stream_status,
    })
}

/// Decodes a `streams` row selected as `name, subject, status, version`.
pub(crate) fn decode_stream_info<R>(row: &R) -> Result<StreamInfo, StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let name: String = row.try_get(0)?;
    let subject: Option<String> = row.try_get(1)?;
    let status: String = row.try_get(2)?;
    let version: Option<i64> = row.try_get(3)?;
    Ok(StreamInfo {
        stream: StreamName::parse_readable(&name).map_err(|e| StorageError::Corrupt(e.to_string()))?,
        subject: subject
            .map(SubjectId::new)
            .transpose()
            .map_err(|e| StorageError::Corrupt(e.to_string()))?,
        status: parse_status(&status)?,
        version: version.map(|v| to_u64(v, "version")).transpose()?,
    })
}

/// Decodes a `streams` row selected as `name, version, status, subject, key_id` for planning.
pub(crate) fn decode_stream_state<R>(row: &R) -> Result<(String, plan::StreamState), StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let version: Option<i64> = row.try_get(1)?;
    let status: String = row.try_get(2)?;
    Ok((
        row.try_get(0)?,
        plan::StreamState {
            version: version.map(|v| to_u64(v, "version")).transpose()?,
            status: parse_status(&status)?,
            subject: row.try_get(3)?,
            key_id: row.try_get(4)?,
        },
    ))
}

/// Decodes an `events` row selected as `event_id, stream, version, position, digest`.
pub(crate) fn decode_existing<R>(row: &R) -> Result<(Uuid, plan::ExistingEvent), StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        row.try_get(0)?,
        plan::ExistingEvent {
            stream: row.try_get(1)?,
            version: to_u64(row.try_get(2)?, "version")?,
            position: to_u64(row.try_get(3)?, "position")?,
            digest: row.try_get(4)?,
        },
    ))
}

/// The current time in unix microseconds (the `recorded_at` of events).
pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Raises the announced head to `head` (never lowers it), waking readers that wait for commits.
pub(crate) fn advance_head(commits: &watch::Sender<u64>, head: u64) {
    commits.send_if_modified(|seen| {
        let newer = head > *seen;
        if newer {
            *seen = head;
        }
        newer
    });
}

/// Decodes an `erasure_requests` row selected with [`select_erasures`].
pub(crate) fn decode_erasure<R>(row: &R) -> Result<Erasure, StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let corrupt = |what: &str| StorageError::Corrupt(format!("erasure request: {what}"));
    let kind: String = row.try_get(1)?;
    let subject: Option<String> = row.try_get(2)?;
    let stream: Option<String> = row.try_get(3)?;
    let target = match (kind.as_str(), subject, stream) {
        ("subject", Some(s), _) => ErasureTarget::Subject(SubjectId::new(s).map_err(|_| corrupt("bad subject"))?),
        ("stream", _, Some(s)) => {
            ErasureTarget::Stream(StreamName::parse_readable(&s).map_err(|_| corrupt("bad stream"))?)
        }
        _ => return Err(corrupt("bad target")),
    };
    let status: String = row.try_get(4)?;
    let streams: Option<String> = row.try_get(5)?;
    let streams = streams
        .map(|json| serde_json::from_str::<Vec<(String, Option<Uuid>)>>(&json))
        .transpose()
        .map_err(|_| corrupt("bad stream list"))?
        .map(|list| {
            list.into_iter()
                .map(|(stream, key_id)| ShreddedStream { stream, key_id })
                .collect()
        });
    let time = |v: Option<i64>| -> Result<Option<chrono::DateTime<chrono::Utc>>, StorageError> {
        v.map(|us| chrono::DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt("bad time")))
            .transpose()
    };
    let requested_at: i64 = row.try_get(10)?;
    let tombstone: Option<i64> = row.try_get(13)?;
    Ok(Erasure {
        id: row.try_get(0)?,
        target,
        status: ErasureStatus::from_db(&status).ok_or_else(|| corrupt("bad status"))?,
        streams,
        keys_destroyed: to_u64(row.try_get(6)?, "keys_destroyed")?,
        reason: ErasureReason {
            reason: row.try_get(7)?,
            requested_by: row.try_get(8)?,
            reference: row.try_get(9)?,
        },
        requested_at: time(Some(requested_at))?.ok_or_else(|| corrupt("bad time"))?,
        keys_destroyed_at: time(row.try_get(11)?)?,
        completed_at: time(row.try_get(12)?)?,
        tombstone_position: tombstone.map(|p| to_u64(p, "tombstone_position")).transpose()?,
        refused_reason: row.try_get(14)?,
        dependents: Vec::new(),
    })
}

/// Decodes `erasure_id, consumer, acknowledged_at, removed_at, delivery_attempts,
/// last_attempt_at, last_delivery_error` rows into each erasure's dependents.
pub(crate) fn attach_dependents<R>(erasures: &mut [Erasure], rows: &[R]) -> Result<(), StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut by_id: HashMap<Uuid, Vec<Dependent>> = HashMap::new();
    for row in rows {
        let acknowledged: Option<i64> = row.try_get(2)?;
        let removed: Option<i64> = row.try_get(3)?;
        let last_attempt: Option<i64> = row.try_get(5)?;
        by_id.entry(row.try_get(0)?).or_default().push(Dependent {
            consumer: row.try_get(1)?,
            acknowledged_at: acknowledged.map(micros).transpose()?,
            removed_at: removed.map(micros).transpose()?,
            delivery_attempts: to_u64(row.try_get(4)?, "delivery_attempts")?,
            last_attempt_at: last_attempt.map(micros).transpose()?,
            last_delivery_error: row.try_get(6)?,
        });
    }
    for erasure in erasures {
        if let Some(mut dependents) = by_id.remove(&erasure.id) {
            dependents.sort_by(|a, b| a.consumer.cmp(&b.consumer));
            erasure.dependents = dependents;
        }
    }
    Ok(())
}

/// Decodes a `legal_holds` row selected as `subject, reason, until, placed_at`.
pub(crate) fn decode_hold<R>(row: &R) -> Result<LegalHold, StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let subject: String = row.try_get(0)?;
    let until: Option<i64> = row.try_get(2)?;
    Ok(LegalHold {
        subject: SubjectId::new(subject).map_err(|_| StorageError::Corrupt("hold subject".into()))?,
        reason: row.try_get(1)?,
        until: until.map(micros).transpose()?,
        placed_at: micros(row.try_get(3)?)?,
    })
}

/// The stream list recorded on an erasure request, as JSON `[[stream, key_id], ...]`.
pub(crate) fn encode_shredded(streams: &[ShreddedStream]) -> String {
    let list: Vec<(&str, Option<Uuid>)> = streams.iter().map(|s| (s.stream.as_str(), s.key_id)).collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned())
}

/// The `kind`, `subject` and `stream` columns of an erasure target.
pub(crate) fn target_columns(target: &ErasureTarget) -> (&'static str, Option<&str>, Option<&str>) {
    match target {
        ErasureTarget::Subject(s) => ("subject", Some(s.as_str()), None),
        ErasureTarget::Stream(s) => ("stream", None, Some(s.as_str())),
    }
}

/// Decodes `name, key_id` rows of shredded streams, sorted by name.
pub(crate) fn decode_shredded<R>(rows: &[R]) -> Result<Vec<ShreddedStream>, StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut shredded = rows
        .iter()
        .map(|r| {
            Ok(ShreddedStream {
                stream: r.try_get(0)?,
                key_id: r.try_get(1)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    shredded.sort_by(|a, b| a.stream.cmp(&b.stream));
    Ok(shredded)
}

/// Decodes an `api_tokens` row selected as `id, name, role, token_hash, created_at, revoked_at`.
pub(crate) fn decode_token<R>(row: &R) -> Result<TokenRecord, StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let role: String = row.try_get(2)?;
    let hash: Vec<u8> = row.try_get(3)?;
    let revoked: Option<i64> = row.try_get(5)?;
    Ok(TokenRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        role: Role::parse(&role).ok_or_else(|| StorageError::Corrupt("unknown role".into()))?,
        hash: hash
            .try_into()
            .map_err(|_| StorageError::Corrupt("token hash is not 32 bytes".into()))?,
        created_at: micros(row.try_get(4)?)?,
        revoked_at: revoked.map(micros).transpose()?,
    })
}

/// Decodes a `consumers` row selected as
/// `name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at, webhook_url`.
pub(crate) fn decode_consumer<R>(row: &R) -> Result<Consumer, StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let types: String = row.try_get(2)?;
    Ok(Consumer {
        name: row.try_get(0)?,
        filter: LogFilter {
            stream_prefix: row.try_get(1)?,
            types: serde_json::from_str(&types).map_err(|_| StorageError::Corrupt("consumer types".into()))?,
        },
        erasure_dependent: row.try_get(3)?,
        checkpoint: to_u64(row.try_get(4)?, "checkpoint")?,
        created_at: micros(row.try_get(5)?)?,
        updated_at: micros(row.try_get(6)?)?,
        webhook_url: row.try_get(7)?,
    })
}

fn micros(us: i64) -> Result<chrono::DateTime<chrono::Utc>, StorageError> {
    chrono::DateTime::from_timestamp_micros(us).ok_or_else(|| StorageError::Corrupt("time out of range".into()))
}

/// The `types` column of a consumer: its type filter as a JSON array.
pub(crate) fn encode_types(types: &[String]) -> String {
    serde_json::to_string(types).unwrap_or_else(|_| "[]".to_owned())
}

/// Decodes an `audit_log` row selected as
/// `seq, at, actor, action, subject, request_id, details, prev_hash, hash`.
pub(crate) fn decode_audit<R>(row: &R) -> Result<AuditEntry, StorageError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let details: String = row.try_get(6)?;
    Ok(AuditEntry {
        seq: to_u64(row.try_get(0)?, "seq")?,
        at: micros(row.try_get(1)?)?,
        actor: row.try_get(2)?,
        action: row.try_get(3)?,
        subject: row.try_get(4)?,
        request_id: row.try_get(5)?,
        // A row edited into invalid JSON still decodes (as a string) so verification can
        // name it instead of failing as a whole.
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: hash32(row.try_get(7)?)?,
        hash: hash32(row.try_get(8)?)?,
    })
}

pub(crate) fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], StorageError> {
    bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("audit hash is not 32 bytes".into()))
}

/// Requests made before this (unix microseconds) are past their one-month deadline now.
pub(crate) fn overdue_cutoff_us() -> i64 {
    let now = chrono::Utc::now();
    now.checked_sub_months(chrono::Months::new(1))
        .unwrap_or(now)
        .timestamp_micros()
}
