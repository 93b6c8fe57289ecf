//! The rows storage takes and gives: appends already encoded (sealed) by the layers above, and
//! stored events still sealed. Storage never sees key bytes or plaintext.

use std::sync::Arc;

use lethe_keyvault::KeyId;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::Error;
use crate::model::{AppendOutcome, ExpectedVersion, StreamName, StreamStatus, SubjectId};

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
    /// The schema version the event was validated (and its personal fields sealed) under.
    pub schema_version: Option<u32>,
    /// The subjects whose personal fields the event seals, each once: the event's entry in the
    /// field index (a column of the event row on PostgreSQL, a row of `field_index` on SQLite).
    pub field_subjects: Vec<SubjectId>,
}

/// A subject whose personal fields one stream write seals with its field key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSubject {
    pub subject: SubjectId,
    /// The subject's field key (its id: the key itself is in the vault).
    pub key_id: Uuid,
    /// The subject's key row is known to be stored already: nothing to write for it.
    pub key_recorded: bool,
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
    /// The subjects whose personal fields these events carry (each once).
    pub field_subjects: Vec<FieldSubject>,
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

/// A stream that has a key, as reconciliation compares it with the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedStream {
    pub name: StreamName,
    pub subject: Option<SubjectId>,
    pub status: StreamStatus,
    pub key_id: Uuid,
}

/// A subject's field key, as reconciliation compares it with the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectKeyRow {
    pub subject: SubjectId,
    pub key_id: Uuid,
    /// The subject's forget marked it (`subject_keys.forgotten_at`).
    pub forgotten: bool,
}

/// What one batch of a retention sweep did ([`super::Storage::file_retention_batch`]).
#[derive(Debug, Clone, Default)]
pub struct RetentionBatch {
    /// Of the candidates, subjects still due under the lock.
    pub due: u64,
    /// Requests filed: id and whether a legal hold refused it at once.
    pub filed: Vec<(Uuid, bool)>,
    /// The policy was removed or changed since the sweep read it: nothing was filed.
    pub policy_changed: bool,
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
    /// Called when another process registered a schema, or when notifications may have been
    /// missed: the schema registry is read again.
    pub schemas_changed: Arc<dyn Fn() + Send + Sync>,
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
    /// The schema version the event was written under.
    pub schema_version: Option<u32>,
    /// The status of the event's stream at the time of the read (the source of truth for
    /// whether the payload may be decrypted).
    pub stream_status: StreamStatus,
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
