//! Rows to records and back, on either engine: the decoders are generic over sqlx's `Row`, so
//! each is written once.

use std::collections::HashMap;

use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use super::StoredEvent;
use super::plan;
use crate::error::StorageError;
use crate::model::{
    AuditEntry, Consumer, Dependent, Erasure, ErasureReason, ErasureStatus, ErasureTarget, EventSchema, LegalHold,
    LogFilter, RetentionAnchor, RetentionPeriod, RetentionPolicy, Role, SchemaMode, ShreddedStream, StreamInfo,
    StreamName, StreamStatus, SubjectId, TokenRecord,
};

/// The head of every event query (both engines use the same names): the columns
/// [`DecodeRow::decode_event`] reads, in its order, joined with the stream's status. These heads are
/// macros so that queries stay `&'static str` literals built with `concat!`.
macro_rules! select_events {
    () => {
        "SELECT e.position, e.stream, e.version, e.event_id, e.event_type, e.payload, \
         e.metadata, e.key_id, e.recorded_at, e.schema_version, s.status \
         FROM events e JOIN streams s ON s.name = e.stream "
    };
}

/// The head of every erasure-request query: the columns [`DecodeRow::decode_erasure`] reads, in order.
macro_rules! select_erasures {
    () => {
        "SELECT id, kind, subject, stream, status, streams, keys_destroyed, reason, requested_by, \
         reference, requested_at, keys_destroyed_at, completed_at, tombstone_position, refused_reason, \
         field_streams, subject_key_id, retention_policy \
         FROM erasure_requests "
    };
}
/// The head of a `streams` query: the columns [`DecodeRow::decode_stream_info`] reads, in order.
macro_rules! select_stream_info {
    () => {
        "SELECT name, subject, status, version FROM streams "
    };
}

/// The head of an `event_schemas` query: the columns [`DecodeRow::decode_schema`] reads, in order.
macro_rules! select_schemas {
    () => {
        "SELECT event_type, version, mode, schema, registered_at FROM event_schemas "
    };
}

/// The head of a `retention_policies` query: the columns [`DecodeRow::decode_retention_policy`]
/// reads, in order.
macro_rules! select_retention_policies {
    () => {
        "SELECT name, stream_prefix, keep_for, after_event, created_at, updated_at FROM retention_policies "
    };
}

/// The head of an `api_tokens` query: the columns [`DecodeRow::decode_token`] reads, in order.
macro_rules! select_tokens {
    () => {
        "SELECT id, name, role, token_hash, created_at, revoked_at FROM api_tokens "
    };
}

/// The columns of a `consumers` row as [`DecodeRow::decode_consumer`] reads them, in order.
macro_rules! consumer_columns {
    () => {
        "name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at, webhook_url"
    };
}

pub(crate) use {
    consumer_columns, select_erasures, select_events, select_retention_policies, select_schemas, select_stream_info,
    select_tokens,
};

/// Converts a stored (signed) integer to the unsigned one the model uses.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("negative {what}")))
}

/// Converts a model integer to the signed column type both engines use.
pub(crate) fn to_i64(v: u64) -> i64 {
    // Positions and versions come from counters that would take millennia to pass i64::MAX.
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `(id, status)` rows of erasure requests, by id.
pub(crate) fn erasure_statuses(
    rows: impl IntoIterator<Item = (Uuid, String)>,
) -> Result<HashMap<Uuid, ErasureStatus>, StorageError> {
    rows.into_iter()
        .map(|(id, status)| {
            let status = ErasureStatus::parse(&status)
                .ok_or_else(|| StorageError::Corrupt(format!("erasure request {id}: unknown status")))?;
            Ok((id, status))
        })
        .collect()
}

pub(crate) fn parse_status(s: &str) -> Result<StreamStatus, StorageError> {
    StreamStatus::parse(s).ok_or_else(|| StorageError::Corrupt(format!("unknown stream status {s:?}")))
}

/// Row decoders, on either engine: one blanket implementation for every sqlx `Row` whose
/// database decodes the column types Lethe uses, so each decoder is written once.
pub(crate) trait DecodeRow: Row {
    /// Decodes a row selected with [`select_events`], on either engine.
    fn decode_event(&self) -> Result<StoredEvent, StorageError>;
    /// [`DecodeRow::decode_event`] for a row whose stream status was read on its own (columns 0–9 only).
    fn decode_event_with_status(&self, stream_status: StreamStatus) -> Result<StoredEvent, StorageError>;
    /// Decodes a `streams` row selected as `name, subject, status, version`.
    fn decode_stream_info(&self) -> Result<StreamInfo, StorageError>;
    /// Decodes a `streams` row selected as `name, version, status, subject, key_id` for planning.
    fn decode_stream_state(&self) -> Result<(String, plan::StreamState), StorageError>;
    /// Decodes an `events` row selected as `event_id, stream, version, position, digest`.
    fn decode_existing(&self) -> Result<(Uuid, plan::ExistingEvent), StorageError>;
    /// Decodes an `erasure_requests` row selected with [`select_erasures`].
    fn decode_erasure(&self) -> Result<Erasure, StorageError>;
    /// Decodes a `legal_holds` row selected as `subject, reason, until, placed_at`.
    fn decode_hold(&self) -> Result<LegalHold, StorageError>;
    /// Decodes an `api_tokens` row selected as `id, name, role, token_hash, created_at, revoked_at`.
    fn decode_token(&self) -> Result<TokenRecord, StorageError>;
    /// Decodes a `consumers` row selected as
    /// `name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at, webhook_url`.
    fn decode_consumer(&self) -> Result<Consumer, StorageError>;
    /// Decodes an `audit_log` row selected as
    /// `seq, at, actor, action, subject, request_id, details, prev_hash, hash`.
    fn decode_audit(&self) -> Result<AuditEntry, StorageError>;
    /// Decodes an `erasure_dependents` row selected as `erasure_id, consumer, acknowledged_at,
    /// removed_at, delivery_attempts, last_attempt_at, last_delivery_error` (see [`attach_dependents`]).
    fn decode_dependent(&self) -> Result<(Uuid, Dependent), StorageError>;
    /// Decodes a `name, key_id` row of a shredded stream (see [`decode_shredded`]).
    fn decode_shredded_stream(&self) -> Result<ShreddedStream, StorageError>;
    /// Decodes an `event_schemas` row selected as `event_type, version, mode, schema, registered_at`.
    fn decode_schema(&self) -> Result<EventSchema, StorageError>;
    /// Decodes a `retention_policies` row selected with [`select_retention_policies`].
    fn decode_retention_policy(&self) -> Result<RetentionPolicy, StorageError>;
}

impl<R> DecodeRow for R
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Uuid: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn decode_event(&self) -> Result<StoredEvent, StorageError> {
        let status: String = self.try_get(10)?;
        self.decode_event_with_status(parse_status(&status)?)
    }

    fn decode_event_with_status(&self, stream_status: StreamStatus) -> Result<StoredEvent, StorageError> {
        Ok(StoredEvent {
            position: to_u64(self.try_get(0)?, "position")?,
            stream: self.try_get(1)?,
            version: to_u64(self.try_get(2)?, "version")?,
            id: self.try_get(3)?,
            event_type: self.try_get(4)?,
            payload: self.try_get(5)?,
            metadata: self.try_get(6)?,
            key_id: self.try_get(7)?,
            recorded_at_us: self.try_get(8)?,
            schema_version: self
                .try_get::<Option<i64>, _>(9)?
                .map(|v| u32::try_from(v).map_err(|_| StorageError::Corrupt("schema version out of range".into())))
                .transpose()?,
            stream_status,
        })
    }

    fn decode_stream_info(&self) -> Result<StreamInfo, StorageError> {
        let name: String = self.try_get(0)?;
        let subject: Option<String> = self.try_get(1)?;
        let status: String = self.try_get(2)?;
        let version: Option<i64> = self.try_get(3)?;
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

    fn decode_stream_state(&self) -> Result<(String, plan::StreamState), StorageError> {
        let version: Option<i64> = self.try_get(1)?;
        let status: String = self.try_get(2)?;
        Ok((
            self.try_get(0)?,
            plan::StreamState {
                version: version.map(|v| to_u64(v, "version")).transpose()?,
                status: parse_status(&status)?,
                subject: self.try_get(3)?,
                key_id: self.try_get(4)?,
            },
        ))
    }

    fn decode_existing(&self) -> Result<(Uuid, plan::ExistingEvent), StorageError> {
        Ok((
            self.try_get(0)?,
            plan::ExistingEvent {
                stream: self.try_get(1)?,
                version: to_u64(self.try_get(2)?, "version")?,
                position: to_u64(self.try_get(3)?, "position")?,
                digest: self.try_get(4)?,
            },
        ))
    }

    fn decode_erasure(&self) -> Result<Erasure, StorageError> {
        let corrupt = |what: &str| StorageError::Corrupt(format!("erasure request: {what}"));
        let kind: String = self.try_get(1)?;
        let subject: Option<String> = self.try_get(2)?;
        let stream: Option<String> = self.try_get(3)?;
        let target = match (kind.as_str(), subject, stream) {
            ("subject", Some(s), _) => ErasureTarget::Subject(SubjectId::new(s).map_err(|_| corrupt("bad subject"))?),
            ("stream", _, Some(s)) => {
                ErasureTarget::Stream(StreamName::parse_readable(&s).map_err(|_| corrupt("bad stream"))?)
            }
            _ => return Err(corrupt("bad target")),
        };
        let status: String = self.try_get(4)?;
        let streams: Option<String> = self.try_get(5)?;
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
        let requested_at: i64 = self.try_get(10)?;
        let tombstone: Option<i64> = self.try_get(13)?;
        Ok(Erasure {
            id: self.try_get(0)?,
            target,
            status: ErasureStatus::parse(&status).ok_or_else(|| corrupt("bad status"))?,
            streams,
            keys_destroyed: to_u64(self.try_get(6)?, "keys_destroyed")?,
            reason: ErasureReason {
                reason: self.try_get(7)?,
                requested_by: self.try_get(8)?,
                reference: self.try_get(9)?,
            },
            requested_at: time(Some(requested_at))?.ok_or_else(|| corrupt("bad time"))?,
            keys_destroyed_at: time(self.try_get(11)?)?,
            completed_at: time(self.try_get(12)?)?,
            tombstone_position: tombstone.map(|p| to_u64(p, "tombstone_position")).transpose()?,
            refused_reason: self.try_get(14)?,
            field_streams: self
                .try_get::<Option<String>, _>(15)?
                .map(|json| serde_json::from_str::<Vec<String>>(&json))
                .transpose()
                .map_err(|_| corrupt("bad field stream list"))?,
            subject_key: self.try_get(16)?,
            dependents: Vec::new(),
            retention_policy: self.try_get(17)?,
        })
    }

    fn decode_hold(&self) -> Result<LegalHold, StorageError> {
        let subject: String = self.try_get(0)?;
        let until: Option<i64> = self.try_get(2)?;
        Ok(LegalHold {
            subject: SubjectId::new(subject).map_err(|_| StorageError::Corrupt("hold subject".into()))?,
            reason: self.try_get(1)?,
            until: until.map(micros).transpose()?,
            placed_at: micros(self.try_get(3)?)?,
        })
    }

    fn decode_token(&self) -> Result<TokenRecord, StorageError> {
        let role: String = self.try_get(2)?;
        let hash: Vec<u8> = self.try_get(3)?;
        let revoked: Option<i64> = self.try_get(5)?;
        Ok(TokenRecord {
            id: self.try_get(0)?,
            name: self.try_get(1)?,
            role: Role::parse(&role).ok_or_else(|| StorageError::Corrupt("unknown role".into()))?,
            hash: hash
                .try_into()
                .map_err(|_| StorageError::Corrupt("token hash is not 32 bytes".into()))?,
            created_at: micros(self.try_get(4)?)?,
            revoked_at: revoked.map(micros).transpose()?,
        })
    }

    fn decode_consumer(&self) -> Result<Consumer, StorageError> {
        let types: String = self.try_get(2)?;
        Ok(Consumer {
            name: self.try_get(0)?,
            filter: LogFilter {
                stream_prefix: self.try_get(1)?,
                types: serde_json::from_str(&types).map_err(|_| StorageError::Corrupt("consumer types".into()))?,
            },
            erasure_dependent: self.try_get(3)?,
            checkpoint: to_u64(self.try_get(4)?, "checkpoint")?,
            created_at: micros(self.try_get(5)?)?,
            updated_at: micros(self.try_get(6)?)?,
            webhook_url: self.try_get(7)?,
        })
    }

    fn decode_audit(&self) -> Result<AuditEntry, StorageError> {
        let details: String = self.try_get(6)?;
        Ok(AuditEntry {
            seq: to_u64(self.try_get(0)?, "seq")?,
            at: micros(self.try_get(1)?)?,
            actor: self.try_get(2)?,
            action: self.try_get(3)?,
            subject: self.try_get(4)?,
            request_id: self.try_get(5)?,
            // A row edited into invalid JSON still decodes (as a string) so verification can
            // name it instead of failing as a whole.
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
            prev_hash: hash32(self.try_get(7)?)?,
            hash: hash32(self.try_get(8)?)?,
        })
    }

    fn decode_dependent(&self) -> Result<(Uuid, Dependent), StorageError> {
        let acknowledged: Option<i64> = self.try_get(2)?;
        let removed: Option<i64> = self.try_get(3)?;
        let last_attempt: Option<i64> = self.try_get(5)?;
        let dependent = Dependent {
            consumer: self.try_get(1)?,
            acknowledged_at: acknowledged.map(micros).transpose()?,
            removed_at: removed.map(micros).transpose()?,
            delivery_attempts: to_u64(self.try_get(4)?, "delivery_attempts")?,
            last_attempt_at: last_attempt.map(micros).transpose()?,
            last_delivery_error: self.try_get(6)?,
        };
        Ok((self.try_get(0)?, dependent))
    }

    fn decode_shredded_stream(&self) -> Result<ShreddedStream, StorageError> {
        Ok(ShreddedStream {
            stream: self.try_get(0)?,
            key_id: self.try_get(1)?,
        })
    }

    fn decode_schema(&self) -> Result<EventSchema, StorageError> {
        let corrupt = |what: &str| StorageError::Corrupt(format!("event schema: {what}"));
        let mode: String = self.try_get(2)?;
        let schema: String = self.try_get(3)?;
        Ok(EventSchema {
            event_type: self.try_get(0)?,
            version: u32::try_from(self.try_get::<i64, _>(1)?).map_err(|_| corrupt("bad version"))?,
            mode: SchemaMode::parse(&mode).ok_or_else(|| corrupt("bad mode"))?,
            schema: serde_json::from_str(&schema).map_err(|_| corrupt("not JSON"))?,
            registered_at: micros(self.try_get(4)?)?,
        })
    }

    fn decode_retention_policy(&self) -> Result<RetentionPolicy, StorageError> {
        let corrupt = |what: &str| StorageError::Corrupt(format!("retention policy: {what}"));
        let keep_for: String = self.try_get(2)?;
        let after: String = self.try_get(3)?;
        Ok(RetentionPolicy {
            name: self.try_get(0)?,
            stream_prefix: self.try_get(1)?,
            keep_for: RetentionPeriod::parse_stored(&keep_for).ok_or_else(|| corrupt("bad keep_for"))?,
            after: RetentionAnchor::parse(&after).map_err(|_| corrupt("bad after"))?,
            created_at: micros(self.try_get(4)?)?,
            updated_at: micros(self.try_get(5)?)?,
        })
    }
}

/// Decodes `erasure_dependents` rows into each erasure's dependents, sorted by consumer.
pub(crate) fn attach_dependents<R: DecodeRow>(erasures: &mut [Erasure], rows: &[R]) -> Result<(), StorageError> {
    let mut by_id: HashMap<Uuid, Vec<Dependent>> = HashMap::new();
    for row in rows {
        let (erasure_id, dependent) = row.decode_dependent()?;
        by_id.entry(erasure_id).or_default().push(dependent);
    }
    for erasure in erasures {
        if let Some(mut dependents) = by_id.remove(&erasure.id) {
            dependents.sort_by(|a, b| a.consumer.cmp(&b.consumer));
            erasure.dependents = dependents;
        }
    }
    Ok(())
}

/// Decodes `name, key_id` rows of shredded streams, sorted by name.
pub(crate) fn decode_shredded<R: DecodeRow>(rows: &[R]) -> Result<Vec<ShreddedStream>, StorageError> {
    let mut shredded = rows
        .iter()
        .map(DecodeRow::decode_shredded_stream)
        .collect::<Result<Vec<_>, _>>()?;
    shredded.sort_by(|a, b| a.stream.cmp(&b.stream));
    Ok(shredded)
}

/// The current time in unix microseconds (the `recorded_at` of events).
pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
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

fn micros(us: i64) -> Result<chrono::DateTime<chrono::Utc>, StorageError> {
    chrono::DateTime::from_timestamp_micros(us).ok_or_else(|| StorageError::Corrupt("time out of range".into()))
}

/// The `types` column of a consumer: its type filter as a JSON array.
pub(crate) fn encode_types(types: &[String]) -> String {
    serde_json::to_string(types).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], StorageError> {
    bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("audit hash is not 32 bytes".into()))
}

/// Requests made before this (unix microseconds) are past their one-month deadline at `now_us`.
pub(crate) fn overdue_cutoff_us(now_us: i64) -> i64 {
    let now = chrono::DateTime::from_timestamp_micros(now_us).unwrap_or_default();
    now.checked_sub_months(chrono::Months::new(1))
        .unwrap_or(now)
        .timestamp_micros()
}
