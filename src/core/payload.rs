//! Turning events into stored rows and back: serialization, size limits, encryption, digests.
//!
//! This is the one place where an event's `data` becomes the bytes the storage layer keeps, and
//! back. User events are sealed with their stream's DEK ([`crate::crypto`]); Lethe's own system
//! events (tombstones) carry ids only and are stored in clear, with no key.

use chrono::{DateTime, Utc};
use lethe_keyvault::KeyId;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::collections::FastMap;
use crate::crypto::{self, DekCipher, KeyState, Nonces};
use crate::error::{Error, ValidationError};
use crate::limits::EVENT_BYTES_MAX;
use crate::model::{NewEvent, PersonalField, RecordedEvent, StreamStatus};
use crate::storage::{EncodedEvent, StoredEvent};

/// A personal field to seal with its subject's field key as an event is encoded.
pub(crate) struct FieldSeal<'a> {
    pub(crate) field: &'a PersonalField,
    pub(crate) key_id: KeyId,
    pub(crate) key: &'a DekCipher,
}

/// How an event is encoded besides its stream's key: the schema version it was checked under
/// and the personal fields to seal.
#[derive(Default)]
pub(crate) struct EventSchemaPart<'a> {
    pub(crate) version: Option<u32>,
    pub(crate) fields: Vec<FieldSeal<'a>>,
}

/// Serializes (and, given a DEK, encrypts) an event for storage, and answers the bytes of its
/// data and metadata as given (what the size limits count). `index` names the event in errors;
/// every seal takes its nonce from `nonces`. Personal fields are sealed with their subjects'
/// keys first, inside the data that is then sealed with the stream's key; the retry digest
/// covers the data as given with each personal field replaced by a digest under its own key.
pub(crate) fn encode(
    stream: &str,
    mut event: NewEvent,
    index: usize,
    dek: Option<&DekCipher>,
    nonces: &mut Nonces,
    schema: EventSchemaPart<'_>,
) -> Result<(EncodedEvent, usize), Error> {
    let id_given = event.id.is_some();
    let id = event.id.unwrap_or_else(Uuid::now_v7);
    let metadata = match &event.metadata {
        // serde_json::Value always serializes; the error arm is unreachable in practice.
        Some(m) => serde_json::to_string(m).map_err(|_| ValidationError::InvalidData)?,
        None => "{}".to_owned(),
    };
    let (content, data, bytes) = if schema.fields.is_empty() {
        let data = Zeroizing::new(serde_json::to_vec(&event.data).map_err(|_| ValidationError::InvalidData)?);
        let bytes = within_event_limit(index, data.len() + metadata.len())?;
        (content_for_digest(&event.event_type, &metadata, &data), data, bytes)
    } else {
        // The retry digest must not let the stream key confirm a guess of a personal field once
        // its subject is forgotten: each field enters it only as a digest keyed by the field's
        // own key (and so becomes unverifiable with that key's destruction).
        let mut sealed = Vec::with_capacity(schema.fields.len());
        // The JSON text of the fields as given, and of the digests that stand in for them.
        let (mut given_len, mut digests_len) = (0, 0);
        for seal in &schema.fields {
            if let Some(value) = seal.field.find_mut(&mut event.data) {
                let plaintext = Zeroizing::new(serde_json::to_vec(value).map_err(|_| ValidationError::InvalidData)?);
                let pointer = seal.field.pointer.as_str();
                sealed.push(crypto::seal_field(
                    seal.key,
                    seal.key_id,
                    nonces,
                    stream,
                    &id,
                    pointer,
                    &plaintext,
                )?);
                let keyed = hex_lower(&seal.key.keyed_digest(&field_digest_input(pointer, &plaintext)));
                given_len += plaintext.len();
                // The digest's JSON string: its hex digits and two quotes.
                digests_len += keyed.len() + 2;
                // The plaintext value is dropped here; `Value` cannot zeroize itself.
                *value = serde_json::Value::String(keyed);
            }
        }
        let masked = serde_json::to_vec(&event.data).map_err(|_| ValidationError::InvalidData)?;
        // Compact JSON text is the concatenation of its values' texts, so the data as given is
        // the masked text with each digest's string swapped back for the field's own text:
        // no third serialization just to count it.
        let data_len = masked.len().saturating_sub(digests_len) + given_len;
        let bytes = within_event_limit(index, data_len + metadata.len())?;
        let content = content_for_digest(&event.event_type, &metadata, &masked);
        let mut sealed = sealed.into_iter();
        for seal in &schema.fields {
            if let Some(value) = seal.field.find_mut(&mut event.data)
                && let Some(sealed) = sealed.next()
            {
                *value = serde_json::Value::String(sealed);
            }
        }
        let data = Zeroizing::new(serde_json::to_vec(&event.data).map_err(|_| ValidationError::InvalidData)?);
        (content, data, bytes)
    };
    let (payload, digest) = match dek {
        Some(dek) => (
            crypto::seal_event(dek, nonces, stream, &id, &data)?,
            crypto::keyed_digest(dek, &content),
        ),
        None => (data.to_vec(), Sha256::digest(&content).into()),
    };
    let encoded = EncodedEvent {
        id,
        id_given,
        event_type: event.event_type,
        payload,
        metadata,
        digest,
        schema_version: schema.version,
        field_subjects: Vec::new(),
    };
    Ok((encoded, bytes))
}

/// Opens the personal fields of a decoded event, as its schema version declares them: each
/// reads as written while its subject's key lives, and as the field's replacement value —
/// listed in `erased_fields` — once the subject is forgotten (its key `Destroyed` in `keys`).
pub(crate) fn open_fields(
    event: &mut RecordedEvent,
    fields: &[PersonalField],
    keys: &FastMap<KeyId, KeyState>,
) -> Result<(), Error> {
    let (stream, id) = (event.stream.as_str(), event.id);
    let Some(data) = event.data.as_mut() else {
        return Ok(());
    };
    for field in fields {
        let Some(value) = field.find_mut(data) else {
            continue;
        };
        let (key_id, sealed) = sealed_field(value).ok_or_else(|| Error::Corrupt {
            detail: format!("personal field {:?} of event {id} is not sealed", field.pointer),
        })?;
        match keys.get(&key_id) {
            Some(KeyState::Live(key)) => {
                let plaintext = crypto::open_field(key, stream, &id, field.pointer.as_str(), &sealed)?;
                *value = serde_json::from_slice(&plaintext).map_err(|_| Error::Corrupt {
                    detail: format!("personal field {:?} of event {id} is not JSON", field.pointer),
                })?;
            }
            Some(KeyState::Destroyed | KeyState::Unreadable { .. }) => {
                *value = field.erased.clone();
                event.erased_fields.push(field.pointer.to_string());
            }
            None => {
                return Err(Error::Corrupt {
                    detail: format!("no key supplied for a personal field of event {id}"),
                });
            }
        }
    }
    Ok(())
}

/// The field key id of a sealed personal field's stored value (its envelope left undecoded).
pub(crate) fn sealed_field_key(value: &serde_json::Value) -> Option<KeyId> {
    value.as_str().and_then(crypto::sealed_field_key_id)
}

/// The field key id and envelope of a sealed personal field's stored value.
pub(crate) fn sealed_field(value: &serde_json::Value) -> Option<(KeyId, Vec<u8>)> {
    value.as_str().and_then(crypto::parse_sealed_field)
}

/// `bytes` of an event's data and metadata, if within [`EVENT_BYTES_MAX`].
fn within_event_limit(index: usize, bytes: usize) -> Result<usize, Error> {
    if bytes > EVENT_BYTES_MAX {
        return Err(ValidationError::EventTooLarge {
            index,
            bytes,
            max: EVENT_BYTES_MAX,
        }
        .into());
    }
    Ok(bytes)
}

/// Lower-case hex, written directly (`hex::encode` goes through a `char` iterator, and an
/// append writes one per personal field).
fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// What a personal field contributes to the retry digest (keyed by its field key): its pointer
/// and its value's JSON text, unambiguously framed.
fn field_digest_input(pointer: &str, plaintext: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(16 + pointer.len() + plaintext.len());
    for part in [pointer.as_bytes(), plaintext] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part);
    }
    input
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
pub(crate) fn decode(stored: StoredEvent, key: Option<&KeyState>) -> Result<RecordedEvent, Error> {
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
            Some(KeyState::Live(dek)) => {
                let plaintext = crypto::open_event(dek, &stored.stream, &stored.id, sealed)?;
                Some(serde_json::from_slice(&plaintext).map_err(|_| corrupt("data is not JSON"))?)
            }
            Some(KeyState::Destroyed | KeyState::Unreadable { .. }) => None,
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
        schema_version: stored.schema_version,
        erased_fields: Vec::new(),
        metadata,
        recorded_at,
    })
}

#[cfg(test)]
mod tests {
    use lethe_keyvault::Dek;
    use serde_json::json;

    use super::*;
    use crate::model::schema::personal_fields;

    /// The size limits count an event's data as given, also when its personal fields are
    /// sealed (and the size is worked out from the masked text): escapes, non-ASCII text,
    /// nested and absent fields, and fields of an unexpected shape alike.
    #[test]
    fn sealed_events_count_their_data_as_given() {
        let fields = personal_fields(&json!({"properties": {
            "name": {"x-lethe-personal": {"subject": "$stream"}},
            "address": {"properties": {"line/1": {"x-lethe-personal": {"subject": "$stream"}}}},
            "absent": {"x-lethe-personal": {"subject": "$stream"}}
        }}))
        .unwrap();
        let key = DekCipher::new(&Dek::generate().unwrap());
        let shapes = [
            json!({"name": "Zoë \"Q\" \n\u{1}", "address": {"line/1": ["a", {"b": 1.5}], "city": "Köln"}, "n": -1}),
            json!({"name": null, "address": {"line/1": 12345678901234567u64}}),
            json!({"address": "flat", "name": {"first": "Ann"}}),
            json!({}),
        ];
        for data in shapes {
            let given = serde_json::to_vec(&data).unwrap().len() + r#"{"m":"é"}"#.len();
            let mut event = NewEvent::new("Moved", data.clone());
            event.metadata = Some(json!({"m": "é"}));
            let seals = fields
                .iter()
                .map(|field| FieldSeal {
                    field,
                    key_id: KeyId(Uuid::nil()),
                    key: &key,
                })
                .collect();
            let part = EventSchemaPart {
                version: Some(1),
                fields: seals,
            };
            let (_, bytes) = encode("s-1", event, 0, Some(&key), &mut Nonces::new(4), part).unwrap();
            assert_eq!(bytes, given, "{data}");
        }
    }

    #[test]
    fn hex_is_lower_case_hex() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_lower(&bytes), hex::encode(&bytes));
    }
}
