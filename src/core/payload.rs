//! Turning events into stored rows and back: serialization, size limits, encryption, digests.
//!
//! This is the one place where an event's `data` becomes the bytes the storage layer keeps, and
//! back. User events are sealed with their stream's DEK ([`crate::crypto`]); Lethe's own system
//! events (tombstones) carry ids only and are stored in clear, with no key.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::crypto::{self, DekCipher, OpenKey};
use crate::error::{Error, ValidationError};
use crate::limits::EVENT_BYTES_MAX;
use crate::model::{NewEvent, RecordedEvent, StreamStatus};
use crate::storage::{EncodedEvent, StoredEvent};

/// Serializes (and, given a DEK, encrypts) an event for storage. `index` names the event in
/// errors.
pub(crate) fn encode(
    stream: &str,
    event: NewEvent,
    index: usize,
    dek: Option<&DekCipher>,
) -> Result<EncodedEvent, Error> {
    let id_given = event.id.is_some();
    let id = event.id.unwrap_or_else(Uuid::now_v7);
    // serde_json::Value always serializes; the error arm is unreachable in practice.
    let data = Zeroizing::new(serde_json::to_vec(&event.data).map_err(|_| ValidationError::InvalidData)?);
    let metadata = match &event.metadata {
        Some(m) => serde_json::to_string(m).map_err(|_| ValidationError::InvalidData)?,
        None => "{}".to_owned(),
    };
    let bytes = data.len() + metadata.len();
    if bytes > EVENT_BYTES_MAX {
        return Err(ValidationError::EventTooLarge {
            index,
            bytes,
            max: EVENT_BYTES_MAX,
        }
        .into());
    }
    let content = content_for_digest(&event.event_type, &metadata, &data);
    let (payload, digest) = match dek {
        Some(dek) => (
            crypto::seal_event(dek, stream, &id, &data)?,
            crypto::keyed_digest(dek, &content),
        ),
        None => (data.to_vec(), Sha256::digest(&content).into()),
    };
    Ok(EncodedEvent {
        id,
        id_given,
        event_type: event.event_type,
        payload,
        metadata,
        digest,
    })
}

/// What an idempotent retry compares: type, metadata and (a hash of) data, unambiguously framed.
/// The result is only ever stored through a digest keyed by the stream's DEK.
fn content_for_digest(event_type: &str, metadata: &str, data: &[u8]) -> Vec<u8> {
    let data_hash: [u8; 32] = Sha256::digest(data).into();
    let mut content = Vec::with_capacity(24 + event_type.len() + metadata.len() + 32);
    for part in [event_type.as_bytes(), metadata.as_bytes(), &data_hash] {
        content.extend_from_slice(&(part.len() as u64).to_be_bytes());
        content.extend_from_slice(part);
    }
    content
}

/// Whether a stored event's data is gone: its stream was shredded, its payload removed, or its
/// key destroyed.
pub(crate) fn is_shredded(stored: &StoredEvent) -> bool {
    stored.key_id.is_some() && (stored.stream_status != StreamStatus::Active || stored.payload.is_none())
}

/// Turns a stored row into what readers see. `key` is the state of the row's key (`None` for
/// rows that have no key or need none).
pub(crate) fn decode(stored: StoredEvent, key: Option<&OpenKey>) -> Result<RecordedEvent, Error> {
    let corrupt = |what: &str| Error::Corrupt {
        detail: format!("event at position {}: {what}", stored.position),
    };
    // Events appended without metadata store `{}`: no parser needed for the common case.
    let metadata = if stored.metadata == "{}" {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_str(&stored.metadata).map_err(|_| corrupt("metadata is not JSON"))?
    };
    let recorded_at = DateTime::<Utc>::from_timestamp_micros(stored.recorded_at_us)
        .ok_or_else(|| corrupt("recorded_at out of range"))?;
    let data = match (&stored.payload, stored.key_id) {
        _ if is_shredded(&stored) => None,
        (None, None) => None,
        (Some(clear), None) => Some(serde_json::from_slice(clear).map_err(|_| corrupt("data is not JSON"))?),
        (Some(sealed), Some(_)) => match key {
            Some(OpenKey::Live(dek)) => {
                let plaintext = crypto::open_event(dek, &stored.stream, &stored.id, sealed)?;
                Some(serde_json::from_slice(&plaintext).map_err(|_| corrupt("data is not JSON"))?)
            }
            Some(OpenKey::Destroyed) => None,
            None => return Err(corrupt("no key supplied for an encrypted event")),
        },
        (None, Some(_)) => None,
    };
    Ok(RecordedEvent {
        id: stored.id,
        stream: stored.stream,
        version: stored.version,
        position: stored.position,
        event_type: stored.event_type,
        erased: data.is_none() && stored.key_id.is_some(),
        data,
        metadata,
        recorded_at,
    })
}
