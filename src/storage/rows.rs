//! Rows to records and back, on either engine: the decoders are generic over sqlx's `Row`, so
//! each is written once.

use std::collections::HashMap;

use uuid::Uuid;

use super::StoredEvent;
use super::plan;
use crate::error::StorageError;
use crate::model::{
    AuditEntry, Consumer, Dependent, Erasure, ErasureReason, ErasureStatus, ErasureTarget, LegalHold, LogFilter, Role,
    ShreddedStream, StreamInfo, StreamName, StreamStatus, SubjectId, TokenRecord,
};

/// The head of every event query (both engines use the same names): the columns
/// [`decode_event`] reads, in its order, joined with the stream's status. These heads are
/// macros so that queries stay `&'static str` literals built with `concat!`.
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
/// The head of a `streams` query: the columns [`decode_stream_info`] reads, in order.
macro_rules! select_stream_info {
    () => {
        "SELECT name, subject, status, version FROM streams "
    };
}

/// The head of an `api_tokens` query: the columns [`decode_token`] reads, in order.
macro_rules! select_tokens {
    () => {
        "SELECT id, name, role, token_hash, created_at, revoked_at FROM api_tokens "
    };
}

/// The columns of a `consumers` row as [`decode_consumer`] reads them, in order.
macro_rules! consumer_columns {
    () => {
        "name, stream_prefix, types, erasure_dependent, checkpoint, created_at, updated_at, webhook_url"
    };
}

pub(crate) use {consumer_columns, select_erasures, select_events, select_stream_info, select_tokens};

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
    StreamStatus::parse(s).ok_or_else(|| StorageError::Corrupt(format!("unknown stream status {s:?}")))
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
        status: ErasureStatus::parse(&status).ok_or_else(|| corrupt("bad status"))?,
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
