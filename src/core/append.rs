//! The append path: validate, find or create the streams' keys, encrypt, submit to the writer.
//!
//! Validation happens before any I/O, and keys for new streams are created in the vault before
//! any event is written with them, so a failed append stores nothing. Encryption happens here,
//! on the caller's task, so it never extends the time the commit-order lock is held.

use std::collections::HashMap;
use std::sync::Arc;

use lethe_keyvault::{KeyId, NewKey};

use super::Core;
use super::field_index::KnownKey;
use super::payload::{self, EventSchemaPart, FieldSeal};
use super::schemas::Registry;
use crate::coalesce::Batched;
use crate::collections::{FastMap, FastSet};
use crate::crypto::{DekCipher, KeyState, Nonces};
use crate::error::Error;
use crate::limits::{APPEND_BYTES_MAX, APPEND_STREAMS_MAX};
use crate::model::schema::field_subjects;
use crate::model::validation::check_append;
use crate::model::{
    AppendOutcome, ExpectedVersion, PersonalField, SchemaMode, StreamAppend, StreamStatus, SubjectId, ValidationError,
    VersionConflict,
};
use crate::storage::plan::StreamState;
use crate::storage::{AtomicAppend, FieldSubject, Storage, StreamWrite};

impl Core {
    /// Appends to several streams atomically: every stream is written or none is, each with
    /// its own expected version, and the events take contiguous positions in the order given.
    pub(crate) async fn append(&self, appends: Vec<StreamAppend>) -> Result<AppendOutcome, Error> {
        check_append(&appends)?;
        let names: Vec<String> = appends.iter().map(|a| a.stream.to_string()).collect();
        let states = self.state_reads.call(names).await?;
        let registry = self.schemas.current().await?;
        let schemas = self.check_schemas(&registry, &appends, &states)?;
        let keys = self.keys_for_append(&appends, &states).await?;
        let field_keys = self.subject_field_keys(&schemas).await?;
        let (atomic, data_bytes) = encode_append(appends, &keys, &schemas, &field_keys, !self.noop_cipher)?;
        let new_keys: Vec<(String, KeyId)> = atomic
            .writes
            .iter()
            .flat_map(|write| &write.field_subjects)
            .filter(|field| !field.key_recorded)
            .map(|field| (field.subject.to_string(), KeyId(field.key_id)))
            .collect();
        let mut outcome = self.committer.submit(atomic).await?;
        outcome.data_bytes = data_bytes;
        self.field_index.remember(new_keys);
        Ok(outcome)
    }

    /// Validates each event against the latest schema of its type (refusing the append on a
    /// violation in `enforce` mode, counting it in `warn`) and finds the subject of each
    /// personal field it carries. One entry per stream, one per event.
    fn check_schemas<'r>(
        &self,
        registry: &'r Registry,
        appends: &[StreamAppend],
        states: &HashMap<String, StreamState>,
    ) -> Result<Vec<Vec<EventSchemaPlan<'r>>>, Error> {
        let mut plans = Vec::with_capacity(appends.len());
        for append in appends {
            let stream = append.stream.as_str();
            if registry.is_empty() {
                plans.push(Vec::new());
                continue;
            }
            // The subject `$stream` fields belong to: the bound one (a stream bound to another
            // fails the append with subject_mismatch anyway).
            let bound = match (&append.subject, states.get(stream).and_then(|s| s.subject.as_deref())) {
                (Some(subject), _) => Some(subject.clone()),
                (None, Some(stored)) => Some(SubjectId::new(stored)?),
                (None, None) => None,
            };
            let mut events = Vec::with_capacity(append.events.len());
            for (index, event) in append.events.iter().enumerate() {
                let Some(schema) = registry.latest(&event.event_type) else {
                    events.push(EventSchemaPlan::default());
                    continue;
                };
                if let Err(violation) = schema.validate(&event.data) {
                    match schema.schema.mode {
                        SchemaMode::Enforce => return Err(violation.in_part(stream, index).into()),
                        SchemaMode::Warn => self.schemas.count_violation(),
                    }
                }
                let fields = field_subjects(&schema.personal, &event.data, bound.as_ref())
                    .map_err(|e| e.in_part(stream, index))?;
                events.push(EventSchemaPlan {
                    version: Some(schema.schema.version),
                    fields,
                });
            }
            plans.push(events);
        }
        Ok(plans)
    }

    /// The field key of every subject whose personal fields an append carries: known subjects'
    /// from the cache or the vault, the others' created (or found) in the vault in one call.
    /// A subject being forgotten, or forgotten, takes no field (checked again at commit, under
    /// the commit-order lock).
    async fn subject_field_keys<'p>(
        &self,
        schemas: &'p [Vec<EventSchemaPlan<'_>>],
    ) -> Result<FastMap<&'p str, FieldKey>, Error> {
        let mut seen: FastSet<&str> = FastSet::default();
        let subjects: Vec<&str> = schemas
            .iter()
            .flatten()
            .flat_map(|e| e.fields.iter().map(|(_, subject)| subject.as_str()))
            .filter(|subject| seen.insert(subject))
            .collect();
        if subjects.is_empty() {
            return Ok(FastMap::default());
        }
        let (known, unknown): (Vec<(&str, Option<KnownKey>)>, Vec<_>) = subjects
            .iter()
            .copied()
            .zip(self.field_index.known(&subjects))
            .partition(|(_, known)| known.is_some());
        let mut keys = FastMap::with_capacity_and_hasher(subjects.len(), Default::default());
        if !unknown.is_empty() {
            let names: Vec<&str> = unknown.iter().map(|(s, _)| *s).collect();
            if let Some((subject, state)) = self.storage.subject_erasures(&names).await?.into_iter().next() {
                return Err(state.error(&subject));
            }
            let requests: Vec<NewKey> = names.iter().map(|s| NewKey::subject_key(s)).collect();
            // A forgotten subject's key is refused by the vault as `subject_forgotten`.
            let created = self.keyring.create(&requests).await?;
            let learnt: Vec<(&str, KeyId)> = names.iter().copied().zip(created.iter().map(|(id, _)| *id)).collect();
            self.field_index.learn(&learnt);
            for (subject, (id, live)) in names.into_iter().zip(created) {
                keys.insert(
                    subject,
                    FieldKey {
                        id,
                        cipher: live,
                        recorded: false,
                    },
                );
            }
        }
        let ids: Vec<KeyId> = known.iter().filter_map(|(_, known)| known.map(|k| k.id)).collect();
        let found = self.keyring.lookup(&ids).await?;
        for (subject, known) in known {
            let Some(known) = known else { continue };
            match found.get(&known.id) {
                Some(KeyState::Live(live)) => {
                    keys.insert(
                        subject,
                        FieldKey {
                            id: known.id,
                            cipher: live.clone(),
                            recorded: known.recorded,
                        },
                    );
                }
                _ => {
                    let state = self.storage.subject_erasures(&[subject]).await?;
                    return Err(match state.get(subject) {
                        Some(state) => state.error(subject),
                        None => Error::SubjectForgotten {
                            subject: subject.to_owned(),
                        },
                    });
                }
            }
        }
        Ok(keys)
    }

    /// The DEK of every stream of an append: existing streams' from the cache or the vault,
    /// new streams' created in the vault (one call for all) before any event is written.
    async fn keys_for_append(
        &self,
        appends: &[StreamAppend],
        states: &HashMap<String, StreamState>,
    ) -> Result<HashMap<String, (KeyId, Arc<DekCipher>)>, Error> {
        let mut new_streams = Vec::new();
        let mut existing = Vec::new();
        for append in appends {
            match states.get(append.stream.as_str()) {
                Some(state) => {
                    let key = state.key_id.ok_or_else(|| Error::Corrupt {
                        detail: format!("stream {:?} has no key", append.stream.as_str()),
                    })?;
                    existing.push((append.stream.as_str(), state.status, KeyId(key)));
                }
                None => new_streams.push(append),
            }
        }
        // A stream that does not exist cannot satisfy `exists` or a version: fail before a key
        // is created for nothing (this is never a retry: a retry's streams exist).
        if new_streams
            .iter()
            .any(|a| matches!(a.expected_version, ExpectedVersion::Exists | ExpectedVersion::Exact(_)))
        {
            let conflicts = appends
                .iter()
                .filter_map(|a| {
                    let current = states.get(a.stream.as_str()).and_then(|s| s.version);
                    (!a.expected_version.is_satisfied_by(current)).then(|| VersionConflict {
                        stream: a.stream.to_string(),
                        expected: a.expected_version,
                        current,
                    })
                })
                .collect();
            return Err(Error::WrongExpectedVersion { conflicts });
        }

        // A subject being forgotten, or forgotten, takes no new streams (checked again at
        // commit, under the commit-order lock); checking here too keeps the vault from keying a
        // stream that the erasure would then destroy the key of.
        let subjects: Vec<&str> = new_streams
            .iter()
            .filter_map(|a| a.subject.as_ref().map(|s| s.as_str()))
            .collect();
        if !subjects.is_empty()
            && let Some((subject, state)) = self.storage.subject_erasures(&subjects).await?.into_iter().next()
        {
            return Err(state.error(&subject));
        }

        let mut keys = HashMap::with_capacity(appends.len());
        let requests: Vec<NewKey> = new_streams
            .iter()
            .map(|a| NewKey {
                stream: a.stream.to_string(),
                subject: a.subject.as_ref().map(|s| s.as_str().to_owned()),
            })
            .collect();
        let created = self.keyring.create(&requests).await?;
        for (request, (id, live)) in requests.into_iter().zip(created) {
            keys.insert(request.stream, (id, live));
        }

        let ids: Vec<KeyId> = existing.iter().map(|(_, _, id)| *id).collect();
        let found = self.keyring.lookup(&ids).await?;
        for (stream, status, id) in existing {
            match (found.get(&id), status) {
                (Some(KeyState::Live(live)), _) => {
                    keys.insert(stream.to_owned(), (id, live.clone()));
                }
                (Some(KeyState::Unreadable { epoch }), StreamStatus::Active) => {
                    return Err(Error::KeyVault(lethe_keyvault::VaultError::KeyUnreadable {
                        stream: stream.to_owned(),
                        epoch: *epoch,
                    }));
                }
                (_, StreamStatus::Deleted) => {
                    return Err(Error::StreamDeleted {
                        stream: stream.to_owned(),
                    });
                }
                _ => {
                    return Err(Error::StreamErased {
                        stream: stream.to_owned(),
                    });
                }
            }
        }
        Ok(keys)
    }
}

/// The stored state of the streams of many appends, read in one query.
pub(crate) struct StateReads {
    pub(crate) storage: Arc<dyn Storage>,
}

#[async_trait::async_trait]
impl Batched for StateReads {
    /// The streams of one append.
    type Request = Vec<String>;
    /// Those of them that exist.
    type Answer = HashMap<String, StreamState>;
    /// Names per query: a few appends' worth.
    const WEIGHT_MAX: usize = 4 * APPEND_STREAMS_MAX;

    fn weight(names: &Vec<String>) -> usize {
        names.len()
    }

    async fn call(&self, requests: &[&Vec<String>]) -> Result<Vec<HashMap<String, StreamState>>, Error> {
        let names: Vec<&str> = requests
            .iter()
            .flat_map(|names| names.iter().map(String::as_str))
            .collect();
        let states = self.storage.stream_states(&names).await?;
        Ok(requests
            .iter()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| states.get(name).map(|state| (name.clone(), state.clone())))
                    .collect()
            })
            .collect())
    }
}

/// What the schemas say about one event of an append.
#[derive(Default)]
pub(crate) struct EventSchemaPlan<'r> {
    /// The schema version it was checked under.
    version: Option<u32>,
    /// Its personal fields present in its data, each with its subject.
    fields: Vec<(&'r PersonalField, SubjectId)>,
}

/// A subject's field key, for sealing.
pub(crate) struct FieldKey {
    id: KeyId,
    cipher: Arc<DekCipher>,
    /// Its key row is known to be stored already.
    recorded: bool,
}

/// Encrypts an append's events with their streams' keys (and their personal fields with their
/// subjects' keys). Nothing is stored if this fails. Also answers the bytes of data and
/// metadata it counted against the limits.
fn encode_append(
    appends: Vec<StreamAppend>,
    keys: &HashMap<String, (KeyId, Arc<DekCipher>)>,
    schemas: &[Vec<EventSchemaPlan<'_>>],
    field_keys: &FastMap<&str, FieldKey>,
    sealed: bool,
) -> Result<(AtomicAppend, usize), Error> {
    let mut bytes = 0;
    let mut index = 0;
    let mut writes = Vec::with_capacity(appends.len());
    // One nonce per event and per personal field, drawn from the OS at once.
    let seals = appends.iter().map(|a| a.events.len()).sum::<usize>()
        + schemas.iter().flatten().map(|plan| plan.fields.len()).sum::<usize>();
    let mut nonces = Nonces::new(seals);
    let no_schemas = Vec::new();
    for (append_index, append) in appends.into_iter().enumerate() {
        let (key_id, dek) = keys.get(append.stream.as_str()).ok_or_else(|| Error::Corrupt {
            detail: format!("no key for stream {:?}", append.stream.as_str()),
        })?;
        let plans = schemas.get(append_index).unwrap_or(&no_schemas);
        let mut events = Vec::with_capacity(append.events.len());
        let mut field_subjects: Vec<FieldSubject> = Vec::new();
        let mut seen_subjects: FastSet<&str> = FastSet::default();
        // The DEK prepared once for all of this stream's events (not once per event).
        let cipher = sealed.then(|| dek.clone());
        for (in_stream, event) in append.events.into_iter().enumerate() {
            let mut part = EventSchemaPart::default();
            // The event's subjects, each once (an event names few: a list beats hashing).
            let mut event_subjects: Vec<SubjectId> = Vec::new();
            if let Some(plan) = plans.get(in_stream) {
                part.version = plan.version;
                for (field, subject) in &plan.fields {
                    let field_key = field_keys.get(subject.as_str()).ok_or_else(|| Error::Corrupt {
                        detail: format!("no field key for subject {subject:?}"),
                    })?;
                    part.fields.push(FieldSeal {
                        field,
                        key_id: field_key.id,
                        key: &field_key.cipher,
                    });
                    if !event_subjects.contains(subject) {
                        event_subjects.push(subject.clone());
                    }
                    if seen_subjects.insert(subject.as_str()) {
                        field_subjects.push(FieldSubject {
                            subject: subject.clone(),
                            key_id: field_key.id.0,
                            key_recorded: field_key.recorded,
                        });
                    }
                }
            }
            let (mut encoded, event_bytes) = payload::encode(
                append.stream.as_str(),
                event,
                index,
                cipher.as_deref(),
                &mut nonces,
                part,
            )
            .map_err(|e| match e {
                Error::Invalid(v) => Error::Invalid(v.in_part(append.stream.as_str(), in_stream)),
                other => other,
            })?;
            // Data and metadata as given: neither the envelope nor sealed fields count.
            bytes += event_bytes;
            if bytes > APPEND_BYTES_MAX {
                return Err(ValidationError::AppendTooLarge {
                    bytes,
                    max: APPEND_BYTES_MAX,
                }
                .into());
            }
            encoded.field_subjects = event_subjects;
            index += 1;
            events.push(encoded);
        }
        writes.push(StreamWrite {
            stream: append.stream,
            expected: append.expected_version,
            subject: append.subject,
            key_id: Some(key_id.0),
            sealed,
            events,
            allow_closed: false,
            field_subjects,
        });
    }
    Ok((AtomicAppend { writes }, bytes))
}
