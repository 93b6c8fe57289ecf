//! Forgetting: shredding a subject's streams (or one stream) and leaving tombstones.
//!
//! An erasure is a durable request that moves through fixed steps, each idempotent, so that a
//! crash or an unreachable vault at any point leaves a request that a retry or a restart drives
//! to completion:
//!
//! 1. **pending** — recorded. Then, in one event-database transaction (serialised with appends
//!    by the commit-order lock), the target streams are marked `erased` (subject) or `deleted`
//!    (stream), their ciphertext is removed, and the list of streams is recorded on the request.
//!    From this commit on, no read path on any process decrypts them: reads check the status.
//! 2. **keys_destroyed** — the vault destroyed the DEKs; every process evicts (zeroizes) them.
//! 3. **awaiting_acknowledgements** — the tombstones are written in one atomic append: a
//!    `$erased` event in each shredded stream and one `SubjectForgotten` / `StreamDeleted` event
//!    in `$erasures`. Their event ids derive from the request id, so re-writing them after a
//!    crash is an idempotent retry and never duplicates them.
//! 4. **completed** — every erasure-dependent consumer registered when the request was made has
//!    acknowledged a position at or past the `$erasures` tombstone (or was removed).
//!
//! An active legal hold makes the request `refused` instead.
//!
//! Tombstones carry ids only (stream names, key ids, the pseudonymous subject id), stored in
//! clear with no key, so they stay readable after the keys are gone.

use chrono::{DateTime, Utc};
use lethe_keyvault::KeyId;
use serde_json::json;
use uuid::Uuid;

use crate::error::Error;
use crate::model::{ExpectedVersion, StreamName, SubjectId};
use crate::storage::{AtomicAppend, EncodedEvent, StreamWrite};

/// The system stream that records every erasure.
pub const ERASURES_STREAM: &str = "$erasures";
/// The type of the tombstone appended to each shredded stream.
pub const ERASED_EVENT_TYPE: &str = "$erased";
/// The type of the event in `$erasures` when a subject is forgotten.
pub const SUBJECT_FORGOTTEN_EVENT_TYPE: &str = "SubjectForgotten";
/// The type of the event in `$erasures` when one stream is deleted.
pub const STREAM_DELETED_EVENT_TYPE: &str = "StreamDeleted";

/// What is being erased.
#[derive(Debug, Clone, PartialEq, Eq)]
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

    pub(crate) fn from_db(s: &str) -> Option<Self> {
        Self::parse(s)
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
}

impl Erasure {
    pub(crate) fn new(target: ErasureTarget, reason: ErasureReason) -> Self {
        Erasure {
            id: Uuid::now_v7(),
            target,
            status: ErasureStatus::Pending,
            streams: None,
            keys_destroyed: 0,
            reason,
            requested_at: Utc::now(),
            keys_destroyed_at: None,
            completed_at: None,
            tombstone_position: None,
            refused_reason: None,
            dependents: Vec::new(),
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
        self.streams.as_ref().is_some_and(Vec::is_empty)
    }

    pub(crate) fn key_ids(&self) -> Vec<KeyId> {
        self.streams
            .iter()
            .flatten()
            .filter_map(|s| s.key_id.map(KeyId))
            .collect()
    }
}

/// A step after which a test can make `forget` stop as if the process had crashed.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureFault {
    /// After the streams are marked, before the vault is called.
    AfterShred,
    /// After the vault destroyed the keys, before that is recorded.
    AfterVaultDestroy,
    /// After `keys_destroyed` is recorded, before the tombstones.
    AfterKeysDestroyed,
    /// After the tombstones, before `completed` is recorded.
    AfterTombstones,
}

/// The one atomic append that writes an erasure's tombstones.
pub(crate) fn tombstones(erasure: &Erasure) -> Result<AtomicAppend, Error> {
    let streams = erasure.streams.as_deref().unwrap_or_default();
    let mut writes = Vec::with_capacity(streams.len() + 1);
    for shredded in streams {
        let stream = StreamName::parse_readable(&shredded.stream)?;
        let data = json!({
            "request_id": erasure.id,
            "stream": shredded.stream,
            "key_id": shredded.key_id,
        });
        writes.push(system_write(
            stream,
            tombstone_id(erasure.id, &shredded.stream),
            ERASED_EVENT_TYPE,
            &data,
        )?);
    }
    let (event_type, data) = match &erasure.target {
        ErasureTarget::Subject(subject) => (
            SUBJECT_FORGOTTEN_EVENT_TYPE,
            json!({
                "subject": subject.as_str(),
                "request_id": erasure.id,
                "streams": streams.iter().map(|s| s.stream.as_str()).collect::<Vec<_>>(),
                "keys_destroyed": erasure.keys_destroyed,
            }),
        ),
        ErasureTarget::Stream(stream) => (
            STREAM_DELETED_EVENT_TYPE,
            json!({
                "stream": stream.as_str(),
                "request_id": erasure.id,
                "keys_destroyed": erasure.keys_destroyed,
            }),
        ),
    };
    writes.push(system_write(
        StreamName::system(ERASURES_STREAM),
        tombstone_id(erasure.id, ERASURES_STREAM),
        event_type,
        &data,
    )?);
    Ok(AtomicAppend { writes })
}

/// Tombstone ids derive from the request and the stream, so a re-run writes the same events.
fn tombstone_id(request_id: Uuid, stream: &str) -> Uuid {
    Uuid::new_v5(&request_id, stream.as_bytes())
}

fn system_write(
    stream: StreamName,
    id: Uuid,
    event_type: &str,
    data: &serde_json::Value,
) -> Result<StreamWrite, Error> {
    let event = crate::model::NewEvent::new(event_type, data.clone()).with_id(id);
    let encoded: EncodedEvent = crate::payload::encode(stream.as_str(), event, 0, None)?;
    Ok(StreamWrite {
        stream,
        expected: ExpectedVersion::Any,
        subject: None,
        key_id: None,
        sealed: false,
        events: vec![encoded],
        allow_closed: true,
    })
}

/// What driving an erasure needs from the store.
pub(crate) struct ErasureContext<'a> {
    pub storage: &'a dyn crate::storage::Storage,
    pub keyring: &'a crate::crypto::Keyring,
    pub committer: &'a crate::group_commit::GroupCommitter,
    pub fault: Option<ErasureFault>,
}

impl ErasureContext<'_> {
    fn fail_at(&self, step: ErasureFault) -> Result<(), Error> {
        if self.fault == Some(step) {
            return Err(Error::InjectedFault);
        }
        Ok(())
    }
}

/// Drives a recorded erasure from wherever it stands to `completed`. Safe to run again, and
/// concurrently from several processes: every step is idempotent.
pub(crate) async fn drive(ctx: &ErasureContext<'_>, id: Uuid) -> Result<Erasure, Error> {
    loop {
        let erasure = ctx.storage.erasure(id).await?.ok_or_else(|| Error::Corrupt {
            detail: format!("erasure request {id} vanished"),
        })?;
        match erasure.status {
            ErasureStatus::Pending => {
                let erasure = ctx.storage.shred_streams(id).await?;
                let keys = erasure.key_ids();
                ctx.keyring.revoke(&keys);
                ctx.fail_at(ErasureFault::AfterShred)?;
                let vault = ctx.keyring.vault();
                match &erasure.target {
                    ErasureTarget::Subject(subject) => {
                        vault
                            .destroy_subject_keys(subject.as_str())
                            .await
                            .map_err(Error::KeyVault)?;
                    }
                    ErasureTarget::Stream(stream) => {
                        vault
                            .destroy_stream_key(stream.as_str())
                            .await
                            .map_err(Error::KeyVault)?;
                    }
                }
                ctx.fail_at(ErasureFault::AfterVaultDestroy)?;
                // Counted from the event database's record, not from what the vault answered:
                // after a crash the vault's repeat answer is empty, the record is not.
                ctx.storage.mark_keys_destroyed(id, keys.len() as u64, &keys).await?;
                ctx.keyring.revoke(&keys);
                audit_step(
                    ctx,
                    &erasure,
                    "erasure_keys_destroyed",
                    json!({ "keys_destroyed": keys.len() }),
                )
                .await;
                tracing::info!(request_id = %id, keys = keys.len(), "erasure: keys destroyed");
                ctx.fail_at(ErasureFault::AfterKeysDestroyed)?;
            }
            ErasureStatus::KeysDestroyed => {
                if erasure.found_nothing() {
                    // Nothing was shredded, so there is no tombstone to acknowledge.
                    ctx.fail_at(ErasureFault::AfterTombstones)?;
                    ctx.storage.mark_erasure_completed(id, None).await?;
                    audit_step(ctx, &erasure, "erasure_completed", json!({ "already_erased": true })).await;
                } else {
                    let outcome = ctx.committer.submit(tombstones(&erasure)?).await?;
                    let position = outcome.streams.last().map_or(0, |s| s.last_position);
                    ctx.fail_at(ErasureFault::AfterTombstones)?;
                    ctx.storage.mark_tombstoned(id, position).await?;
                    audit_step(
                        ctx,
                        &erasure,
                        "erasure_tombstones_written",
                        json!({ "tombstone_position": position }),
                    )
                    .await;
                }
                tracing::info!(request_id = %id, "erasure: tombstones written");
            }
            ErasureStatus::AwaitingAcknowledgements => {
                // Dependents that had already read past the tombstone count as acknowledged;
                // the rest acknowledge through their acks. Either may complete the request.
                ctx.storage.settle_acknowledgements(id).await?;
                let settled = ctx.storage.erasure(id).await?.ok_or_else(|| Error::Corrupt {
                    detail: format!("erasure request {id} vanished"),
                })?;
                return Ok(settled);
            }
            ErasureStatus::Completed | ErasureStatus::Refused => return Ok(erasure),
        }
    }
}

/// Records an erasure step in the audit trail. The step has happened whatever the trail says,
/// so a failure to write the entry is logged, not returned (a re-run of the step would not
/// repeat it: steps are recorded before the next one starts).
async fn audit_step(ctx: &ErasureContext<'_>, erasure: &Erasure, action: &str, details: serde_json::Value) {
    let subject = match &erasure.target {
        ErasureTarget::Subject(s) => Some(s.clone()),
        ErasureTarget::Stream(_) => None,
    };
    let mut details = details;
    if let ErasureTarget::Stream(stream) = &erasure.target {
        details["stream"] = json!(stream.as_str());
    }
    let entry = crate::audit::NewAuditEntry {
        actor: crate::audit::SYSTEM_ACTOR.to_owned(),
        action: action.to_owned(),
        subject,
        request_id: Some(erasure.id),
        details,
    };
    if let Err(e) = ctx.storage.append_audit(&entry).await {
        tracing::error!(request_id = %erasure.id, error = %e, "audit entry not written");
    }
}
