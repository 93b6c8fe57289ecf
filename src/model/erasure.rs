//! Erasure requests and legal holds as records: what `forget` and `delete_stream` file, the
//! steps a request moves through, and the holds that refuse it. The workflow that moves a
//! request is `services::erasure`.

use chrono::{DateTime, Utc};
use lethe_keyvault::KeyId;
use uuid::Uuid;

use super::{StreamName, SubjectId};

/// The system stream that records every erasure.
pub const ERASURES_STREAM: &str = "$erasures";
/// The type of the tombstone appended to each shredded stream.
pub const ERASED_EVENT_TYPE: &str = "$erased";
/// The type of the event in `$erasures` when a subject is forgotten.
pub const SUBJECT_FORGOTTEN_EVENT_TYPE: &str = "SubjectForgotten";
/// The type of the event in `$erasures` when one stream is deleted.
pub const STREAM_DELETED_EVENT_TYPE: &str = "StreamDeleted";

/// What is being erased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErasureTarget {
    /// Every stream bound to this subject (Art. 17).
    Subject(SubjectId),
    /// One stream.
    Stream(StreamName),
}

/// Where an erasure request stands:
/// `pending → keys_destroyed → awaiting_acknowledgements → completed`, or `refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureStatus {
    Pending,
    KeysDestroyed,
    /// Tombstones written; waiting for the erasure-dependent consumers to acknowledge them.
    AwaitingAcknowledgements,
    Completed,
    /// Not carried out (a legal hold was active).
    Refused,
}

impl ErasureStatus {
    pub const ALL: [ErasureStatus; 5] = [
        ErasureStatus::Pending,
        ErasureStatus::KeysDestroyed,
        ErasureStatus::AwaitingAcknowledgements,
        ErasureStatus::Completed,
        ErasureStatus::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErasureStatus::Pending => "pending",
            ErasureStatus::KeysDestroyed => "keys_destroyed",
            ErasureStatus::AwaitingAcknowledgements => "awaiting_acknowledgements",
            ErasureStatus::Completed => "completed",
            ErasureStatus::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Completed or refused: nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, ErasureStatus::Completed | ErasureStatus::Refused)
    }
}

/// An erasure-dependent consumer of one erasure, and whether it acknowledged the tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependent {
    pub consumer: String,
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The consumer was removed before acknowledging (an admin decision, audited).
    pub removed_at: Option<DateTime<Utc>>,
    /// Webhook deliveries of the tombstone tried so far (consumers with a webhook only).
    pub delivery_attempts: u64,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Why the last delivery failed (status or transport error; never a response body).
    pub last_delivery_error: Option<String>,
}

/// A legal hold on a subject: forgetting it is refused while the hold is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalHold {
    pub subject: SubjectId,
    pub reason: String,
    /// The hold lapses at this time; `None`: until lifted.
    pub until: Option<DateTime<Utc>>,
    pub placed_at: DateTime<Utc>,
}

impl LegalHold {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

/// Which erasure requests to list.
#[derive(Debug, Clone, Default)]
pub struct ErasureFilter {
    pub subject: Option<SubjectId>,
    pub status: Option<ErasureStatus>,
    /// Requested at or after.
    pub from: Option<DateTime<Utc>>,
    /// Requested before.
    pub to: Option<DateTime<Utc>>,
    /// Only requests past their deadline and unfinished (`true`), or only the others (`false`).
    pub overdue: Option<bool>,
    pub limit: usize,
}

/// Who asked, and why (recorded with the request; keep personal data out of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasureReason {
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub reference: Option<String>,
}

/// A stream an erasure shredded, with the key that encrypted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShreddedStream {
    pub stream: String,
    pub key_id: Option<Uuid>,
}

/// An erasure request as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub id: Uuid,
    pub target: ErasureTarget,
    pub status: ErasureStatus,
    /// The streams it shredded; `None` until step 1 ran.
    pub streams: Option<Vec<ShreddedStream>>,
    /// Streams holding personal fields of the subject (set with `streams`; empty for a stream
    /// deletion): their fields read as their replacement values once the subject key is gone.
    pub field_streams: Option<Vec<String>>,
    /// The subject's field key, if its personal fields were ever written (set with `streams`).
    pub subject_key: Option<Uuid>,
    pub keys_destroyed: u64,
    pub reason: ErasureReason,
    pub requested_at: DateTime<Utc>,
    pub keys_destroyed_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Position of the `$erasures` event, once written.
    pub tombstone_position: Option<u64>,
    /// Why it was refused (the legal hold's reason).
    pub refused_reason: Option<String>,
    /// The erasure-dependent consumers registered when it was requested.
    pub dependents: Vec<Dependent>,
    /// The retention policy that filed it (`None`: a person asked for it, or Lethe re-applied
    /// an erasure a restored database had lost).
    pub retention_policy: Option<String>,
}

impl Erasure {
    /// A new pending request, filed at `requested_at` (the store's clock: deadlines follow it).
    pub(crate) fn new(target: ErasureTarget, reason: ErasureReason, requested_at: DateTime<Utc>) -> Self {
        Erasure {
            id: Uuid::now_v7(),
            target,
            status: ErasureStatus::Pending,
            streams: None,
            field_streams: None,
            subject_key: None,
            keys_destroyed: 0,
            reason,
            requested_at,
            keys_destroyed_at: None,
            completed_at: None,
            tombstone_position: None,
            refused_reason: None,
            dependents: Vec::new(),
            retention_policy: None,
        }
    }

    /// The GDPR deadline: one month after the request (Art. 12(3)).
    pub fn deadline(&self) -> DateTime<Utc> {
        self.requested_at
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(self.requested_at)
    }

    /// Not finished and past its deadline.
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        !self.status.is_final() && now > self.deadline()
    }

    /// Nothing was left to shred: the subject was already forgotten (or the stream deleted).
    pub fn found_nothing(&self) -> bool {
        self.streams.as_ref().is_some_and(Vec::is_empty) && self.field_streams.as_ref().is_none_or(Vec::is_empty)
    }

    pub(crate) fn key_ids(&self) -> Vec<KeyId> {
        self.streams
            .iter()
            .flatten()
            .filter_map(|s| s.key_id.map(KeyId))
            .chain(self.subject_key.map(KeyId))
            .collect()
    }
}

/// A step after which a test can make `forget` stop as if the process had crashed.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureFault {
    /// After the streams are marked, before the destruction is journaled.
    AfterShred,
    /// After the destruction is journaled (when the store has a journal), before the vault is
    /// called.
    AfterJournal,
    /// After the vault destroyed the keys, before that is recorded.
    AfterVaultDestroy,
    /// After `keys_destroyed` is recorded, before the tombstones.
    AfterKeysDestroyed,
    /// After the tombstones, before `completed` is recorded.
    AfterTombstones,
}

impl ErasureFault {
    /// Every fault point, in the order the steps run.
    pub const ALL: [ErasureFault; 5] = [
        ErasureFault::AfterShred,
        ErasureFault::AfterJournal,
        ErasureFault::AfterVaultDestroy,
        ErasureFault::AfterKeysDestroyed,
        ErasureFault::AfterTombstones,
    ];
}
