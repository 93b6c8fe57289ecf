//! The PostgreSQL engine: production, several Lethe processes on one database.
//!
//! Ordering (Guarantee 4): every write transaction first locks the single `log_head` row
//! (`SELECT … FOR UPDATE`), assigns positions after it, and holds that lock until COMMIT. So
//! write transactions commit one after the other in position order, and a reader that sees
//! position P can never later see a new event at a position ≤ P — whichever process wrote it.
//! A plain `bigserial` would hand out positions at INSERT time and let a later position commit
//! first, which a tailing reader would skip forever. Group commit (many appends per transaction)
//! is what keeps this serialisation from costing throughput; see ARCHITECTURE.md.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;
use uuid::Uuid;

use super::plan::{self, ExistingEvent, StreamState};
use super::{
    AppendReply, AtomicAppend, ChangeFeed, Delivery, Storage, StoredEvent, advance_head, attach_dependents,
    decode_audit, decode_consumer, decode_erasure, decode_event, decode_existing, decode_hold, decode_shredded,
    decode_stream_info, decode_stream_state, decode_token, encode_shredded, encode_types, hash32, now_us,
    overdue_cutoff_us, target_columns, to_i64, to_u64,
};
use crate::access::{Consumer, TokenRecord};
use crate::audit::{AuditEntry, AuditQuery, NewAuditEntry};
use crate::erasure::{Erasure, ErasureFilter, ErasureStatus, ErasureTarget, LegalHold};
use crate::error::StorageError;
use crate::model::{Direction, LogFilter, StreamInfo, StreamName, SubjectId};
use lethe_keyvault::KeyId;

/// The NOTIFY channel on which every commit announces the new head position.
const COMMITS_CHANNEL: &str = "lethe_commits";
/// The NOTIFY channel on which erasures announce destroyed keys (comma-separated ids).
const REVOKED_CHANNEL: &str = "lethe_revoked_keys";
/// 200 uuids of 36 characters plus commas stay under NOTIFY's 8000-byte payload limit.
const REVOKED_KEYS_PER_NOTIFY: usize = 200;
const SELECT_ERASING: &str =
    "SELECT DISTINCT subject FROM erasure_requests WHERE status IN ('pending', 'keys_destroyed') AND subject = ANY($1)";
const SELECT_STATES: &str = "SELECT name, version, status, subject, key_id FROM streams WHERE name = ANY($1)";
const CONNECTIONS_MAX: u32 = 16;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before re-listening after the notification connection broke.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

pub struct PostgresStorage {
    pool: PgPool,
    /// Tells the LISTEN task to stop (it holds a pool connection that `close` waits for).
    stop_listening: watch::Sender<bool>,
}

impl PostgresStorage {
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        // The migrator takes an advisory lock, so processes starting together migrate once.
        super::migrations::migrator(super::migrations::POSTGRES)
            .await?
            .run(&pool)
            .await?;
        Ok(Self {
            pool,
            stop_listening: watch::channel(false).0,
        })
    }
}

const INSERT_EVENTS: &str = "INSERT INTO events \
     (position, stream, version, event_id, event_type, payload, metadata, key_id, digest, recorded_at) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], \
                          $6::bytea[], $7::text[], $8::uuid[], $9::bytea[], $10::bigint[])";
const INSERT_STREAMS: &str = "INSERT INTO streams (name, subject, status, version, key_id, created_at) \
     SELECT u.name, u.subject, u.status, u.version, u.key_id, $6 \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::uuid[]) \
          AS u(name, subject, status, version, key_id)";
const UPDATE_STREAMS: &str = "UPDATE streams s SET version = u.version, key_id = u.key_id \
     FROM UNNEST($1::text[], $2::bigint[], $3::uuid[]) AS u(name, version, key_id) \
     WHERE s.name = u.name";

impl PostgresStorage {
    /// Fills in each erasure's dependents (one query for all of them).
    async fn load_dependents(&self, erasures: &mut [Erasure]) -> Result<(), StorageError> {
        if erasures.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT erasure_id, consumer, acknowledged_at, removed_at, delivery_attempts, last_attempt_at, \
             last_delivery_error FROM erasure_dependents \
             WHERE erasure_id = ANY($1)",
        )
        .bind(erasures.iter().map(|e| e.id).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        attach_dependents(erasures, &rows)
    }
}

super::transaction_helpers!(sqlx::PgConnection, head_select: "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE");

super::shared_queries!(PostgresStorage, writer: pool, reader: pool);

#[async_trait]
impl Storage for PostgresStorage {
    async fn append_group(&self, group: &[AtomicAppend]) -> Result<Vec<AppendReply>, StorageError> {
        let mut tx = self.pool.begin().await?;

        // The commit-order lock: held until COMMIT (module comment).
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;

        let names: Vec<&str> = group
            .iter()
            .flat_map(|a| a.writes.iter().map(|w| w.stream.as_str()))
            .collect();
        let mut states: HashMap<String, StreamState> = HashMap::new();
        for row in sqlx::query(SELECT_STATES).bind(&names).fetch_all(&mut *tx).await? {
            let (name, state) = decode_stream_state(&row)?;
            states.insert(name, state);
        }

        // Only caller-chosen ids can be stored already (see `EncodedEvent::id_given`).
        let ids: Vec<Uuid> = group
            .iter()
            .flat_map(|a| a.writes.iter().flat_map(|w| w.events.iter()))
            .filter(|e| e.id_given)
            .map(|e| e.id)
            .collect();
        let mut existing: HashMap<Uuid, ExistingEvent> = HashMap::new();
        if !ids.is_empty() {
            for row in
                sqlx::query("SELECT event_id, stream, version, position, digest FROM events WHERE event_id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&mut *tx)
                    .await?
            {
                let (id, event) = decode_existing(&row)?;
                existing.insert(id, event);
            }
        }

        let subjects: Vec<&str> = group
            .iter()
            .flat_map(|a| a.writes.iter().filter_map(|w| w.subject.as_ref().map(|s| s.as_str())))
            .collect();
        let mut erasing = HashSet::new();
        if !subjects.is_empty() {
            let rows: Vec<String> = sqlx::query_scalar(SELECT_ERASING)
                .bind(&subjects)
                .fetch_all(&mut *tx)
                .await?;
            erasing.extend(rows);
        }

        let plan = plan::plan_group(group, states, existing, &erasing, to_u64(head, "head")?, now_us());

        if !plan.rows.is_empty() {
            let rows = &plan.rows;
            sqlx::query(INSERT_EVENTS)
                .bind(rows.iter().map(|r| to_i64(r.position)).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.stream).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| to_i64(r.version)).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.event.id).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.event.event_type.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.event.payload.as_slice()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.event.metadata.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.key_id).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.event.digest.as_slice()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.recorded_at_us).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        let (new, old): (Vec<_>, Vec<_>) = plan.streams.iter().partition(|s| s.is_new);
        if !new.is_empty() {
            sqlx::query(INSERT_STREAMS)
                .bind(new.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
                .bind(new.iter().map(|s| s.state.subject.as_deref()).collect::<Vec<_>>())
                .bind(new.iter().map(|s| s.state.status.as_str()).collect::<Vec<_>>())
                .bind(new.iter().map(|s| s.state.version.map(to_i64)).collect::<Vec<_>>())
                .bind(new.iter().map(|s| s.state.key_id).collect::<Vec<_>>())
                .bind(now_us())
                .execute(&mut *tx)
                .await?;
        }
        if !old.is_empty() {
            sqlx::query(UPDATE_STREAMS)
                .bind(old.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
                .bind(old.iter().map(|s| s.state.version.map(to_i64)).collect::<Vec<_>>())
                .bind(old.iter().map(|s| s.state.key_id).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        if !plan.rows.is_empty() {
            // The new head and its notification in one statement (one round trip less while
            // holding the commit-order lock). Delivered to listeners at COMMIT, never before.
            sqlx::query(
                "WITH head AS (UPDATE log_head SET position = $1 WHERE id = 1 RETURNING position) \
                 SELECT pg_notify($2, position::text) FROM head",
            )
            .bind(to_i64(plan.head))
            .bind(COMMITS_CHANNEL)
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
        // Read the head first: every position up to it is committed (the commit-order lock),
        // so rows up to it are complete even though the second statement has a newer snapshot.
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let types: Option<&[String]> = (!filter.types.is_empty()).then_some(filter.types.as_slice());
        let read = |last: i64| {
            sqlx::query(concat!(
                select_events!(),
                "WHERE e.position >= $1 AND e.position <= $2 \
                   AND ($3::text IS NULL OR starts_with(e.stream, $3)) \
                   AND ($4::text[] IS NULL OR e.event_type = ANY($4)) \
                 ORDER BY e.position ASC LIMIT $5"
            ))
            .bind(to_i64(from))
            .bind(last)
            .bind(filter.stream_prefix.as_deref())
            .bind(types)
            .bind(to_i64(limit as u64))
            .fetch_all(&self.pool)
        };
        // Unfiltered, a page is normally exactly positions from..=from+limit-1 (positions have
        // no gaps: a failed transaction rolls its `log_head` update back too), so read that
        // range first. It keeps every page cheap whatever the planner estimates: without
        // statistics (a freshly loaded table, before autovacuum's ANALYZE) the open range up to
        // the head was bitmap-scanned, joined and sorted in full for every page, which made a
        // catch-up from position 1 quadratic (seconds per page at 200k events). Only a short
        // answer before the head (a gap after all) falls through to the open range, so the
        // result is the same as before in every case.
        if filter.stream_prefix.is_none() && filter.types.is_empty() {
            let last = to_i64(from.saturating_add((limit as u64).saturating_sub(1))).min(head);
            let rows = read(last).await?;
            if rows.len() >= limit || last >= head {
                let events = rows.iter().map(decode_event).collect::<Result<Vec<_>, _>>()?;
                return Ok((events, to_u64(head, "head")?));
            }
        }
        let rows = read(head).await?;
        let events = rows.iter().map(decode_event).collect::<Result<Vec<_>, _>>()?;
        Ok((events, to_u64(head, "head")?))
    }

    async fn stream_states(&self, names: &[&str]) -> Result<HashMap<String, StreamState>, StorageError> {
        let rows = sqlx::query(SELECT_STATES).bind(names).fetch_all(&self.pool).await?;
        rows.iter().map(decode_stream_state).collect()
    }

    async fn subjects_being_erased(&self, subjects: &[&str]) -> Result<HashSet<String>, StorageError> {
        let rows: Vec<String> = sqlx::query_scalar(SELECT_ERASING)
            .bind(subjects)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    async fn insert_erasure(&self, erasure: &Erasure) -> Result<(), StorageError> {
        let (kind, subject, stream) = target_columns(&erasure.target);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO erasure_requests (id, kind, subject, stream, status, reason, requested_by, reference, \
             requested_at, refused_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
                 SELECT $1, name FROM consumers WHERE erasure_dependent",
            )
            .bind(erasure.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn shred_streams(&self, id: Uuid) -> Result<Erasure, StorageError> {
        let mut tx = self.pool.begin().await?;
        // The commit-order lock: an append either committed before this (its events are
        // shredded with the rest) or runs after it and finds the stream closed.
        sqlx::query("SELECT position FROM log_head WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(concat!(select_erasures!(), "WHERE id = $1 FOR UPDATE"))
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
                    "UPDATE streams SET status = 'erased' WHERE subject = $1 AND status = 'active' \
                     RETURNING name, key_id",
                )
                .bind(subject.as_str())
                .fetch_all(&mut *tx)
                .await?
            }
            ErasureTarget::Stream(stream) => {
                sqlx::query(
                    "UPDATE streams SET status = 'deleted' WHERE name = $1 AND status = 'active' \
                     RETURNING name, key_id",
                )
                .bind(stream.as_str())
                .fetch_all(&mut *tx)
                .await?
            }
        };
        let shredded = decode_shredded(&rows)?;
        let names: Vec<&str> = shredded.iter().map(|s| s.stream.as_str()).collect();
        sqlx::query("UPDATE events SET payload = NULL WHERE stream = ANY($1)")
            .bind(&names)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE erasure_requests SET streams = $2 WHERE id = $1")
            .bind(id)
            .bind(encode_shredded(&shredded))
            .execute(&mut *tx)
            .await?;
        // Other processes evict these keys now, not only after the vault destroyed them.
        let keys: Vec<KeyId> = shredded.iter().filter_map(|s| s.key_id.map(KeyId)).collect();
        notify_revoked(&mut tx, &keys).await?;
        tx.commit().await?;
        erasure.streams = Some(shredded);
        Ok(erasure)
    }

    async fn mark_keys_destroyed(&self, id: Uuid, count: u64, keys: &[KeyId]) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE erasure_requests SET status = 'keys_destroyed', keys_destroyed = $2, keys_destroyed_at = $3 \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(to_i64(count))
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        // Again: a process that fetched a key between the shred and the destruction drops it.
        notify_revoked(&mut tx, keys).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn erasures(&self, filter: &ErasureFilter) -> Result<Vec<Erasure>, StorageError> {
        let rows = sqlx::query(concat!(
            select_erasures!(),
            "WHERE ($1::text IS NULL OR subject = $1) AND ($2::text IS NULL OR status = $2) \
             AND ($3::bigint IS NULL OR requested_at >= $3) AND ($4::bigint IS NULL OR requested_at < $4) \
             AND ($6::boolean IS NULL OR \
                  ((status NOT IN ('completed', 'refused') AND requested_at < $7) = $6)) \
             ORDER BY requested_at DESC LIMIT $5"
        ))
        .bind(filter.subject.as_ref().map(|s| s.as_str()))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.from.map(|t| t.timestamp_micros()))
        .bind(filter.to.map(|t| t.timestamp_micros()))
        .bind(to_i64(filter.limit as u64))
        .bind(filter.overdue)
        .bind(overdue_cutoff_us())
        .fetch_all(&self.pool)
        .await?;
        let mut erasures = rows.iter().map(decode_erasure).collect::<Result<Vec<_>, _>>()?;
        self.load_dependents(&mut erasures).await?;
        Ok(erasures)
    }

    async fn settle_acknowledgements(&self, id: Uuid) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        let now = now_us();
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
        complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_consumer(&self, name: &str) -> Result<bool, StorageError> {
        let mut tx = self.pool.begin().await?;
        let now = now_us();
        let deleted = sqlx::query("DELETE FROM consumers WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE erasure_dependents SET removed_at = $2 \
             WHERE consumer = $1 AND acknowledged_at IS NULL AND removed_at IS NULL",
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
        let mut tx = self.pool.begin().await?;
        let now = now_us();
        let (acknowledged, error) = match &outcome {
            Ok(()) => (Some(now), None),
            Err(e) => (None, Some(e.as_str())),
        };
        sqlx::query(
            "UPDATE erasure_dependents SET delivery_attempts = delivery_attempts + 1, last_attempt_at = $3, \
               last_delivery_error = $4::text, next_attempt_at = $5, \
               acknowledged_at = CASE WHEN acknowledged_at IS NULL THEN $6::bigint ELSE acknowledged_at END \
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
        complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ack_consumer(&self, name: &str, position: u64) -> Result<Option<Consumer>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let now = now_us();
        let row = sqlx::query(
            "UPDATE consumers SET checkpoint = CASE WHEN checkpoint < $2 THEN $2 ELSE checkpoint END, \
               updated_at = $3 WHERE name = $1 \
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
        complete_acknowledged(&mut tx, now).await?;
        tx.commit().await?;
        Ok(Some(consumer))
    }

    async fn audit_lapsed_holds(&self, now_us: i64) -> Result<u64, StorageError> {
        let mut tx = self.pool.begin().await?;
        let audited = audit_lapsed_holds_in(&mut tx, now_us).await?;
        tx.commit().await?;
        Ok(audited)
    }

    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry, StorageError> {
        let mut tx = self.pool.begin().await?;
        let appended = audit_in(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(appended)
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, subject, request_id, details, prev_hash, hash FROM audit_log \
             WHERE seq > $1 AND ($2::text IS NULL OR action = $2) AND ($3::text IS NULL OR subject = $3) \
             ORDER BY seq LIMIT $4",
        )
        .bind(to_i64(query.after))
        .bind(query.action.as_deref())
        .bind(query.subject.as_ref().map(|s| s.as_str()))
        .bind(to_i64(query.limit as u64))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_audit).collect()
    }

    async fn watch_foreign_changes(&self, feed: ChangeFeed) -> Result<(), StorageError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all([COMMITS_CHANNEL, REVOKED_CHANNEL]).await?;
        let mut stop = self.stop_listening.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = feed.commits.closed() => return,
                    _ = stop.changed() => return,
                    received = listener.recv() => match received {
                        Ok(note) if note.channel() == COMMITS_CHANNEL => {
                            if let Ok(head) = note.payload().parse::<u64>() {
                                advance_head(&feed.commits, head);
                            }
                        }
                        Ok(note) => {
                            let keys: Vec<KeyId> = note
                                .payload()
                                .split(',')
                                .filter_map(|id| id.parse().ok().map(KeyId))
                                .collect();
                            (feed.revoked_keys)(&keys);
                        }
                        Err(e) => {
                            // PgListener reconnects on the next recv; readers also poll, and
                            // reads check stream status. A revocation may have been missed, so
                            // drop every cached key.
                            tracing::warn!(error = %e, "change notifications interrupted");
                            (feed.forget_cached_keys)();
                            tokio::time::sleep(LISTEN_RETRY).await;
                        }
                    },
                }
            }
        });
        Ok(())
    }

    async fn close(&self) {
        let _ = self.stop_listening.send(true);
        self.pool.close().await;
    }
}

/// Tells every process (at COMMIT) to evict these keys. NOTIFY payloads are limited to 8000
/// bytes, so the ids go in chunks.
async fn notify_revoked(tx: &mut sqlx::PgConnection, keys: &[KeyId]) -> Result<(), StorageError> {
    for chunk in keys.chunks(REVOKED_KEYS_PER_NOTIFY) {
        let ids: Vec<String> = chunk.iter().map(|k| k.0.to_string()).collect();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(REVOKED_CHANNEL)
            .bind(ids.join(","))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
