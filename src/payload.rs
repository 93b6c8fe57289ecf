//! Turning events into stored rows and back: serialization, size limits, content digests.
//!
//! This is the one place where an event's `data` is turned into the bytes the storage layer
//! keeps, and back.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, StorageError, ValidationError};
use crate::limits::EVENT_BYTES_MAX;
use crate::model::{NewEvent, RecordedEvent, StreamStatus};
use crate::storage::{EncodedEvent, StoredEvent};

/// Serializes an event for storage. `index` names the event in errors.
pub(crate) fn encode(event: NewEvent, index: usize) -> Result<EncodedEvent, ValidationError> {
    let data = serde_json::to_vec(&event.data).map_err(|_| ValidationError::InvalidEventType)?;
    let metadata = match &event.metadata {
        Some(m) => serde_json::to_string(m).map_err(|_| ValidationError::InvalidEventType)?,
        None => "{}".to_owned(),
    };
    let bytes = data.len() + metadata.len();
    if bytes > EVENT_BYTES_MAX {
        return Err(ValidationError::EventTooLarge {
            index,
            bytes,
            max: EVENT_BYTES_MAX,
        });
    }
    let digest = content_digest(&event.event_type, &metadata, &data);
    Ok(EncodedEvent {
        id: event.id.unwrap_or_else(Uuid::now_v7),
        event_type: event.event_type,
        payload: data,
        metadata,
        digest,
    })
}

/// What an idempotent retry compares: type, metadata and data, unambiguously framed.
fn content_digest(event_type: &str, metadata: &str, data: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [event_type.as_bytes(), metadata.as_bytes(), data] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Turns a stored row into what readers see.
pub(crate) fn decode(stored: StoredEvent) -> Result<RecordedEvent, Error> {
    let corrupt = |what: &str| {
        Error::Storage(StorageError::Corrupt(format!(
            "event at position {}: {what}",
            stored.position
        )))
    };
    let metadata =
        serde_json::from_str(&stored.metadata).map_err(|_| corrupt("metadata is not JSON"))?;
    let recorded_at = DateTime::<Utc>::from_timestamp_micros(stored.recorded_at_us)
        .ok_or_else(|| corrupt("recorded_at out of range"))?;
    let shredded = stored.stream_status != StreamStatus::Active && stored.key_id.is_some();
    let data = match (&stored.payload, shredded) {
        (Some(bytes), false) => {
            Some(serde_json::from_slice(bytes).map_err(|_| corrupt("data is not JSON"))?)
        }
        _ => None,
    };
    Ok(RecordedEvent {
        id: stored.id,
        stream: stored.stream,
        version: stored.version,
        position: stored.position,
        event_type: stored.event_type,
        erased: data.is_none(),
        data,
        metadata,
        recorded_at,
    })
}
