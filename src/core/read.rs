//! The read path: rows come from storage still sealed, each joined with its stream's
//! *current* status; the page's keys are looked up (cache first, then at most one vault call);
//! then [`payload::decode`] opens each row — unless its stream is shredded, whose events come
//! back `erased` with everything but `data` intact.

use std::sync::Arc;

use lethe_keyvault::KeyId;

use super::Core;
use super::payload;
use super::schemas::CompiledSchema;
use crate::collections::{FastMap, FastSet};
use crate::crypto::KeyState;
use crate::error::Error;
use crate::model::schema::{SubjectSource, remove_at};
use crate::model::validation::{check_filter, check_page_limit};
use crate::model::{
    Direction, LogFilter, LogPage, RecordedEvent, StreamInfo, StreamName, StreamSlice, StreamStatus, SubjectId,
};
use crate::storage::StoredEvent;

/// The schema versions of a page's events (a page holds few: a list beats hashing each
/// event's type).
#[derive(Default)]
struct PageSchemas(Vec<Arc<CompiledSchema>>);

impl PageSchemas {
    fn find(&self, event_type: &str, version: u32) -> Option<&Arc<CompiledSchema>> {
        self.0
            .iter()
            .find(|s| s.schema.version == version && s.schema.event_type == event_type)
    }
}

/// How a decode learns which field keys belong to forgotten subjects.
#[derive(Clone, Copy)]
enum ForgottenCheck {
    /// Ask the event database (the source of truth) for the page's field keys.
    Database,
    /// The page was warmed ([`Core::warm_keys`] asked the database): revocations since suffice.
    Revocations,
}

/// Pages of at least this many events are decoded on two threads ([`Core::decode`]).
const PARALLEL_DECODE_EVENTS_MIN: usize = 256;

impl Core {
    /// Reads up to `limit` events of a stream from version `from` (inclusive). Backward reads
    /// with `from = u64::MAX` start at the end.
    pub(crate) async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, Error> {
        check_page_limit(limit)?;
        let stored = self.storage.read_stream(stream, from, direction, limit).await?;
        let keyed: Vec<bool> = stored.iter().map(|event| event.key_id.is_some()).collect();
        let mut events = self.decode(stored).await?;
        // The status is read after the events and their keys, so that a read racing a forget
        // answers one picture. A forget commits the status before the vault destroys the key:
        // an event found erased (status or key) means the status read now is no longer
        // `active`, and a status no longer `active` erases the events read just before it.
        let info = self.stream_info(stream).await?;
        if info.status != StreamStatus::Active {
            for (event, keyed) in events.iter_mut().zip(keyed) {
                if keyed {
                    event.data = None;
                    event.erased = true;
                }
            }
        }
        Ok(StreamSlice { info, events })
    }

    /// A page of one stream, still encrypted (for lazily decrypting readers).
    pub(crate) async fn read_stream_stored(
        &self,
        stream: &StreamName,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        check_page_limit(limit)?;
        Ok(self
            .storage
            .read_stream(stream, from, Direction::Forward, limit)
            .await?)
    }

    /// Reads up to `limit` events of the global log from position `from` (inclusive).
    pub(crate) async fn read_log(&self, from: u64, filter: &LogFilter, limit: usize) -> Result<LogPage, Error> {
        let (stored, next, head) = self.read_log_stored(from, filter, limit).await?;
        let events = self.decode(stored).await?;
        Ok(LogPage { events, next, head })
    }

    /// A page of the global log, still encrypted: `(events, next, head)`.
    pub(crate) async fn read_log_stored(
        &self,
        from: u64,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64, u64), Error> {
        check_page_limit(limit)?;
        check_filter(filter)?;
        let from = from.max(1);
        let (stored, head) = self.storage.read_log(from, filter, limit).await?;
        // A full page continues after its last event; a short one has seen everything up to
        // the head, filtered out or not.
        let next = if stored.len() == limit {
            stored.last().map_or(from, |e| e.position + 1)
        } else {
            head.max(from - 1) + 1
        };
        Ok((stored, next, head))
    }

    /// What a stream is (`stream_not_found` if it was never written).
    pub(crate) async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, Error> {
        self.storage
            .stream_info(stream)
            .await?
            .ok_or_else(|| Error::StreamNotFound {
                stream: stream.to_string(),
            })
    }

    /// Streams bound to a subject.
    pub(crate) async fn subject_streams(&self, subject: &SubjectId) -> Result<Vec<StreamInfo>, Error> {
        Ok(self.storage.subject_streams(subject).await?)
    }

    /// Decrypts a page of stored events: one key lookup for the page (cache, then at most one
    /// vault call). The stream status read with the rows decides: a shredded stream's events
    /// are never decrypted, even with the key still at hand, and its key is evicted. Personal
    /// fields are opened after the event database said which of their keys are forgotten.
    pub(crate) async fn decode(&self, stored: Vec<StoredEvent>) -> Result<Vec<RecordedEvent>, Error> {
        self.decode_checked(stored, ForgottenCheck::Database).await
    }

    /// [`Core::decode`] for an event of a page already passed to [`Core::warm_keys`] (lazily
    /// decrypting readers): the page's forgotten field keys were revoked then, and a forget
    /// since revoked its keys in this process (or, on PostgreSQL, by notification), so the
    /// key ring alone decides, with no query per event.
    pub(crate) async fn decode_warmed(&self, stored: Vec<StoredEvent>) -> Result<Vec<RecordedEvent>, Error> {
        self.decode_checked(stored, ForgottenCheck::Revocations).await
    }

    async fn decode_checked(
        &self,
        stored: Vec<StoredEvent>,
        check: ForgottenCheck,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let schemas = self.page_schemas(&stored).await?;
        if schemas.0.is_empty() {
            return self.decode_payloads(stored).await;
        }
        // The change token is read on another task while this one decrypts the payloads (CPU
        // work that blocks it): its round trip no longer stalls every page with fields. It is
        // still read after the page's rows and before the forgotten keys are asked for.
        let token = match check {
            ForgottenCheck::Database => {
                let storage = self.storage.clone();
                Some(tokio::spawn(async move { storage.field_key_forgotten_token().await }))
            }
            ForgottenCheck::Revocations => None,
        };
        let mut events = self.decode_payloads(stored).await?;
        let token = match token {
            Some(read) => Some(match read.await {
                Ok(token) => token?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return Err(Error::ShuttingDown),
            }),
            None => None,
        };
        let keys = self.field_keys(&events, &schemas, token).await?;
        open_page_fields(&mut events, &schemas, &keys)?;
        Ok(events)
    }

    /// The schema versions of a page's events that declare personal fields (none: the page has
    /// no field to open, and the event database need not be asked about any).
    async fn page_schemas(&self, stored: &[StoredEvent]) -> Result<PageSchemas, Error> {
        let mut schemas = PageSchemas::default();
        for event in stored {
            let Some(version) = event.schema_version else { continue };
            if schemas.find(&event.event_type, version).is_none() {
                schemas.0.push(self.schemas.version(&event.event_type, version).await?);
            }
        }
        schemas.0.retain(|schema| !schema.personal.is_empty());
        Ok(schemas)
    }

    /// The keys of the sealed personal fields of a decoded page (`schemas`: its events' schema
    /// versions that declare personal fields), looked up once for the page (cache, then at
    /// most one vault call). Given the `field_key_forgotten` change token read after the page's
    /// rows ([`ForgottenCheck::Database`]), the event database is asked first which of them
    /// belong to forgotten subjects — the source of truth, as the stream status is for stream keys, so
    /// that a key still cached in a process that missed a revocation opens nothing — and those
    /// are revoked.
    async fn field_keys(
        &self,
        events: &[RecordedEvent],
        schemas: &PageSchemas,
        forgotten_token: Option<i64>,
    ) -> Result<FastMap<KeyId, KeyState>, Error> {
        let mut needed: FastSet<KeyId> = FastSet::default();
        for event in events {
            let (Some(version), Some(data)) = (event.schema_version, event.data.as_ref()) else {
                continue;
            };
            let Some(schema) = schemas.find(&event.event_type, version) else {
                continue;
            };
            for field in &schema.personal {
                if let Some(id) = field.find(data).and_then(payload::sealed_field_key) {
                    needed.insert(id);
                }
            }
        }
        if needed.is_empty() {
            return Ok(FastMap::default());
        }
        let forgotten: Vec<KeyId> = match forgotten_token {
            Some(token) => {
                // Only keys not found live since the last forget (`storage::TokenChecks`).
                let unchecked: Vec<KeyId> = self
                    .field_key_checks
                    .unchecked(token, &needed)
                    .into_iter()
                    .copied()
                    .collect();
                if unchecked.is_empty() {
                    Vec::new()
                } else {
                    let ids: Vec<uuid::Uuid> = unchecked.iter().map(|id| id.0).collect();
                    let forgotten = self.storage.forgotten_field_keys(&ids).await?;
                    self.field_key_checks
                        .found_clear(token, unchecked.into_iter().filter(|id| !forgotten.contains(&id.0)));
                    forgotten.into_iter().map(KeyId).collect()
                }
            }
            None => Vec::new(),
        };
        if !forgotten.is_empty() {
            self.keyring.revoke(&forgotten);
        }
        let live: Vec<KeyId> = needed.into_iter().filter(|id| !forgotten.contains(id)).collect();
        let mut keys = self.keyring.lookup(&live).await?;
        keys.extend(forgotten.into_iter().map(|id| (id, KeyState::Destroyed)));
        Ok(keys)
    }

    /// Keeps, of a decoded event's personal fields, only those of `subject` (and everything
    /// that is not personal), for the subject's export; answers whether the event carries any
    /// of its fields. `bound` is the subject of the event's stream.
    pub(crate) async fn keep_fields_of(
        &self,
        event: &mut RecordedEvent,
        subject: &SubjectId,
        bound: Option<&SubjectId>,
    ) -> Result<bool, Error> {
        let Some(version) = event.schema_version else {
            return Ok(false);
        };
        let schema = self.schemas.version(&event.event_type, version).await?;
        let Some(data) = event.data.as_mut() else {
            return Ok(false);
        };
        let mut carries = false;
        let mut others = Vec::new();
        for field in &schema.personal {
            if field.find(data).is_none() {
                continue;
            }
            let owner = match &field.subject {
                SubjectSource::Stream => bound.map(SubjectId::as_str),
                SubjectSource::Pointer(pointer) => pointer.find(data).and_then(serde_json::Value::as_str),
            };
            if owner == Some(subject.as_str()) {
                carries = true;
            } else {
                others.push(field.pointer.as_str());
            }
        }
        for pointer in others {
            remove_at(data, pointer);
            event.erased_fields.retain(|p| p != pointer);
        }
        Ok(carries)
    }

    /// Decrypts the payloads of a page (personal fields still sealed).
    async fn decode_payloads(&self, stored: Vec<StoredEvent>) -> Result<Vec<RecordedEvent>, Error> {
        // Keys come prepared (the cache holds them so), not prepared again for each event.
        let keys = self.page_keys(&stored).await?;
        let decode_all = |events: Vec<StoredEvent>| -> Result<Vec<RecordedEvent>, Error> {
            events
                .into_iter()
                .map(|event| {
                    let key = event.key_id.and_then(|k| keys.get(&KeyId(k)));
                    payload::decode(event, key)
                })
                .collect()
        };
        if stored.len() < PARALLEL_DECODE_EVENTS_MIN {
            return decode_all(stored);
        }
        // A big page (a catch-up reads 1,000 events at a time) is pure CPU work — AES-GCM and
        // JSON parsing, a few µs per event — that kept one core busy while the database and
        // the other core waited: its second half is decoded on a scoped thread meanwhile. The
        // events keep their order, and an error is the first one in page order, as before.
        let mut first = stored;
        let second = first.split_off(first.len() / 2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| decode_all(second));
            let first = decode_all(first);
            let second = other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let mut events = first?;
            events.extend(second?);
            Ok(events)
        })
    }

    /// The stream keys a page will need, into the cache (a read-ahead that decodes the page
    /// later with [`Core::decode`], which checks its field keys then).
    pub(crate) async fn prefetch_stream_keys(&self, stored: &[StoredEvent]) -> Result<(), Error> {
        self.page_keys(stored).await.map(drop)
    }

    /// Puts the keys a page will need into the cache, field keys included (lazily decrypting
    /// readers call this when they read a page, and [`Core::decode_warmed`] each event when
    /// they hand it out).
    pub(crate) async fn warm_keys(&self, stored: &[StoredEvent]) -> Result<(), Error> {
        self.page_keys(stored).await?;
        // Personal fields: their key ids are inside the payloads, so the page's events with a
        // schema are opened once here to learn them, ask the event database which are
        // forgotten (revoking those) and cache the rest; `decode_warmed` then needs no query.
        let schemas = self.page_schemas(stored).await?;
        if schemas.0.is_empty() {
            return Ok(());
        }
        let with_fields: Vec<StoredEvent> = stored
            .iter()
            .filter(|e| {
                e.schema_version
                    .is_some_and(|v| schemas.find(&e.event_type, v).is_some())
            })
            .cloned()
            .collect();
        let events = self.decode_payloads(with_fields).await?;
        let token = self.storage.field_key_forgotten_token().await?;
        self.field_keys(&events, &schemas, Some(token)).await?;
        Ok(())
    }

    /// The keys of a page's live events (at most one vault call); keys of shredded streams
    /// are revoked instead.
    async fn page_keys(&self, stored: &[StoredEvent]) -> Result<FastMap<KeyId, KeyState>, Error> {
        let mut needed = FastSet::default();
        let mut revoked = FastSet::default();
        for event in stored {
            if let Some(key) = event.key_id.map(KeyId) {
                if payload::is_shredded(event) {
                    revoked.insert(key);
                } else {
                    needed.insert(key);
                }
            }
        }
        if !revoked.is_empty() {
            self.keyring.revoke(&revoked.into_iter().collect::<Vec<_>>());
        }
        self.keyring.lookup(&needed.into_iter().collect::<Vec<_>>()).await
    }
}

/// Opens the personal fields of a decoded page with the keys [`Core::field_keys`] found. Like
/// the payloads, a big page is opened on two threads: AES-GCM and JSON for each field, pure
/// CPU work.
fn open_page_fields(
    events: &mut [RecordedEvent],
    schemas: &PageSchemas,
    keys: &FastMap<KeyId, KeyState>,
) -> Result<(), Error> {
    let open_all = |events: &mut [RecordedEvent]| -> Result<(), Error> {
        for event in events {
            let Some(version) = event.schema_version else { continue };
            if let Some(schema) = schemas.find(&event.event_type, version) {
                payload::open_fields(event, &schema.personal, keys)?;
            }
        }
        Ok(())
    };
    if events.len() < PARALLEL_DECODE_EVENTS_MIN {
        return open_all(events);
    }
    let (first, second) = events.split_at_mut(events.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| open_all(second));
        let first = open_all(first);
        let second = other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        first.and(second)
    })
}
