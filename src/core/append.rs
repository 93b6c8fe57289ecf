//! The append path: validate, find or create the streams' keys, encrypt, submit to the writer.
//!
//! Validation happens before any I/O, and keys for new streams are created in the vault before
//! any event is written with them, so a failed append stores nothing. Encryption happens here,
//! on the caller's task, so it never extends the time the commit-order lock is held.

use std::collections::HashMap;
use std::sync::Arc;

use lethe_keyvault::{Dek, KeyId, NewKey};

use super::Core;
use super::payload;
use crate::coalesce::Batched;
use crate::crypto::{DekCipher, KeyState};
use crate::error::Error;
use crate::limits::{APPEND_BYTES_MAX, APPEND_STREAMS_MAX};
use crate::model::validation::check_append;
use crate::model::{AppendOutcome, ExpectedVersion, StreamAppend, StreamStatus, ValidationError, VersionConflict};
use crate::storage::plan::StreamState;
use crate::storage::{AtomicAppend, Storage, StreamWrite};

impl Core {
    /// Appends to several streams atomically: every stream is written or none is, each with
    /// its own expected version, and the events take contiguous positions in the order given.
    pub(crate) async fn append(&self, appends: Vec<StreamAppend>) -> Result<AppendOutcome, Error> {
        check_append(&appends)?;
        let names: Vec<String> = appends.iter().map(|a| a.stream.to_string()).collect();
        let states = self.state_reads.call(names).await?;
        let keys = self.keys_for_append(&appends, &states).await?;
        let (atomic, data_bytes) = encode_append(appends, &keys, !self.noop_cipher)?;
        let mut outcome = self.committer.submit(atomic).await?;
        outcome.data_bytes = data_bytes;
        Ok(outcome)
    }

    /// The DEK of every stream of an append: existing streams' from the cache or the vault,
    /// new streams' created in the vault (one call for all) before any event is written.
    async fn keys_for_append(
        &self,
        appends: &[StreamAppend],
        states: &HashMap<String, StreamState>,
    ) -> Result<HashMap<String, (KeyId, Dek)>, Error> {
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

        // A subject being forgotten takes no new streams (checked again at commit, under the
        // commit-order lock); checking here too keeps the vault from keying a stream that the
        // erasure would then destroy the key of.
        let subjects: Vec<&str> = new_streams
            .iter()
            .filter_map(|a| a.subject.as_ref().map(|s| s.as_str()))
            .collect();
        if !subjects.is_empty()
            && let Some(subject) = self.storage.subjects_being_erased(&subjects).await?.into_iter().next()
        {
            return Err(Error::ErasureInProgress { subject });
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
        for (request, (id, dek)) in requests.into_iter().zip(created) {
            keys.insert(request.stream, (id, dek));
        }

        let ids: Vec<KeyId> = existing.iter().map(|(_, _, id)| *id).collect();
        let found = self.keyring.lookup(&ids).await?;
        for (stream, status, id) in existing {
            match (found.get(&id), status) {
                (Some(KeyState::Live(dek)), _) => {
                    keys.insert(stream.to_owned(), (id, dek.clone()));
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

/// Encrypts an append's events with their streams' keys. Nothing is stored if this fails.
/// Also answers the bytes of data and metadata it counted against the limits.
fn encode_append(
    appends: Vec<StreamAppend>,
    keys: &HashMap<String, (KeyId, Dek)>,
    sealed: bool,
) -> Result<(AtomicAppend, usize), Error> {
    let mut bytes = 0;
    let mut index = 0;
    let mut writes = Vec::with_capacity(appends.len());
    for append in appends {
        let (key_id, dek) = keys.get(append.stream.as_str()).ok_or_else(|| Error::Corrupt {
            detail: format!("no key for stream {:?}", append.stream.as_str()),
        })?;
        let mut events = Vec::with_capacity(append.events.len());
        // The DEK prepared once for all of this stream's events (not once per event).
        let cipher = sealed.then(|| DekCipher::new(dek));
        for (in_stream, event) in append.events.into_iter().enumerate() {
            let encoded =
                payload::encode(append.stream.as_str(), event, index, cipher.as_deref()).map_err(|e| match e {
                    Error::Invalid(v) => Error::Invalid(v.in_part(append.stream.as_str(), in_stream)),
                    other => other,
                })?;
            // Data and metadata as given: the envelope's own bytes do not count.
            let overhead = if sealed { lethe_keyvault::envelope::OVERHEAD } else { 0 };
            bytes += encoded.payload.len().saturating_sub(overhead) + encoded.metadata.len();
            if bytes > APPEND_BYTES_MAX {
                return Err(ValidationError::AppendTooLarge {
                    bytes,
                    max: APPEND_BYTES_MAX,
                }
                .into());
            }
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
        });
    }
    Ok((AtomicAppend { writes }, bytes))
}
