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
//!
//! When the store keeps an erasure journal (`crate::journal`), step 2 first appends the
//! destruction to it (fsynced). Restoring a database from a backup must not bring forgotten
//! data back, so what one database lacks is re-applied from the other or from the journal,
//! audited `erasure_reapplied`: [`replay()`] (the journal, at open) and [`reconcile()`] (the two
//! databases compared, at open and on demand).

mod reconcile;
mod replay;

pub(crate) use reconcile::reconcile;
pub(crate) use replay::replay;

use std::sync::Weak;

use lethe_keyvault::KeyId;
use serde_json::json;
use uuid::Uuid;

use crate::core::Core;
use crate::core::payload;
use crate::crypto::Nonces;
use crate::error::Error;
use crate::limits::{ERASURE_RESUME_INTERVAL, ERASURES_LIST_MAX, REASON_LEN_MAX};
use crate::model::validation::{check_limit, check_reason, check_text};
use crate::model::{
    ERASED_EVENT_TYPE, ERASURES_STREAM, Erasure, ErasureFault, ErasureFilter, ErasureReason, ErasureStatus,
    ErasureTarget, ExpectedVersion, LegalHold, NewAuditEntry, NewEvent, STREAM_DELETED_EVENT_TYPE,
    SUBJECT_FORGOTTEN_EVENT_TYPE, SYSTEM_ACTOR, StreamName, StreamStatus, SubjectId, ValidationError,
};
use crate::storage::{AtomicAppend, EncodedEvent, StreamWrite};

/// Records a forget request without running it (it runs on [`drive`] or the next resume).
/// An active legal hold refuses the request: it is recorded as `refused` (with the hold's
/// reason) and `Error::LegalHold` names it.
pub(crate) async fn request_forget(core: &Core, subject: &SubjectId, reason: ErasureReason) -> Result<Erasure, Error> {
    check_reason(&reason)?;
    let mut erasure = Erasure::new(ErasureTarget::Subject(subject.clone()), reason, core.now());
    if let Some(hold) = core.storage.hold(subject).await?
        && hold.is_active(core.now())
    {
        erasure.status = ErasureStatus::Refused;
        erasure.refused_reason = Some(hold.reason.clone());
        core.storage.insert_erasure(&erasure).await?;
        tracing::info!(request_id = %erasure.id, subject = %subject, "erasure refused: legal hold");
        return Err(Error::LegalHold {
            request_id: erasure.id,
            until: hold.until,
        });
    }
    core.storage.insert_erasure(&erasure).await?;
    tracing::info!(request_id = %erasure.id, subject = %subject, "erasure requested");
    Ok(erasure)
}

/// Records the deletion of one stream and drives it to completion.
pub(crate) async fn delete_stream(core: &Core, stream: &StreamName, reason: ErasureReason) -> Result<Erasure, Error> {
    check_reason(&reason)?;
    match core.stream_info(stream).await?.status {
        StreamStatus::Active => {}
        StreamStatus::Erased => {
            return Err(Error::StreamErased {
                stream: stream.to_string(),
            });
        }
        StreamStatus::Deleted => {
            return Err(Error::StreamDeleted {
                stream: stream.to_string(),
            });
        }
    }
    if stream.is_system() {
        return Err(ValidationError::ReservedStreamName {
            stream: stream.to_string(),
        }
        .into());
    }
    let erasure = Erasure::new(ErasureTarget::Stream(stream.clone()), reason, core.now());
    core.storage.insert_erasure(&erasure).await?;
    drive(core, erasure.id).await
}

/// An erasure request by id.
pub(crate) async fn get(core: &Core, id: Uuid) -> Result<Option<Erasure>, Error> {
    Ok(core.storage.erasure(id).await?)
}

/// Erasure requests matching a filter (subject, status, time range), newest first.
pub(crate) async fn list(core: &Core, filter: &ErasureFilter) -> Result<Vec<Erasure>, Error> {
    check_limit(filter.limit, ERASURES_LIST_MAX)?;
    Ok(core.storage.erasures(filter).await?)
}

/// Drives every unfinished erasure to completion; returns how many it completed. One stuck
/// request (say, its vault call failing) does not hold up the others; the first error is
/// returned after all were tried.
pub(crate) async fn resume(core: &Core) -> Result<usize, Error> {
    let mut completed = 0;
    let mut first_error = None;
    for erasure in core.storage.unfinished_erasures().await? {
        match drive(core, erasure.id).await {
            Ok(_) => completed += 1,
            Err(e) => {
                tracing::warn!(request_id = %erasure.id, error = %e, "erasure not finished yet");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(completed),
    }
}

/// Retries unfinished erasures (and audits lapsed holds) now and then every
/// [`ERASURE_RESUME_INTERVAL`], until the store shuts down. Holds only a weak reference, so it
/// never keeps a closed store alive.
pub(crate) async fn resume_periodically(core: Weak<Core>) {
    let Some(mut shutdown) = core.upgrade().map(|core| core.shutdown_signal()) else {
        return;
    };
    loop {
        let Some(core) = core.upgrade() else {
            return;
        };
        if let Err(e) = resume(&core).await {
            tracing::warn!(error = %e, "resuming erasures failed; will retry");
        }
        if let Err(e) = audit_lapsed_holds(&core).await {
            tracing::warn!(error = %e, "auditing lapsed holds failed; will retry");
        }
        drop(core);
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(ERASURE_RESUME_INTERVAL) => {}
        }
    }
}

/// Places (or replaces) a legal hold: forgetting the subject is refused while it is active.
pub(crate) async fn place_hold(
    core: &Core,
    subject: &SubjectId,
    reason: &str,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<LegalHold, Error> {
    check_text("hold reason", reason, REASON_LEN_MAX)?;
    if reason.trim().is_empty() {
        return Err(ValidationError::InvalidText {
            what: "hold reason",
            max: REASON_LEN_MAX,
        }
        .into());
    }
    let hold = LegalHold {
        subject: subject.clone(),
        reason: reason.to_owned(),
        until,
        placed_at: core.now(),
    };
    core.storage.put_hold(&hold).await?;
    tracing::info!(subject = %subject, "legal hold placed");
    Ok(hold)
}

/// Lifts a subject's legal hold; false if it had none.
pub(crate) async fn lift_hold(core: &Core, subject: &SubjectId) -> Result<bool, Error> {
    let lifted = core.storage.lift_hold(subject).await?;
    if lifted {
        tracing::info!(subject = %subject, "legal hold lifted");
    }
    Ok(lifted)
}

/// The subject's active legal hold, if any (a hold past its `until` has lapsed).
pub(crate) async fn active_hold(core: &Core, subject: &SubjectId) -> Result<Option<LegalHold>, Error> {
    let hold = core.storage.hold(subject).await?;
    Ok(hold.filter(|h| h.is_active(core.now())))
}

/// Records `hold_expired` in the audit trail for each hold that has lapsed since the last call
/// (each once, across processes); returns how many.
pub(crate) async fn audit_lapsed_holds(core: &Core) -> Result<u64, Error> {
    let now = core.now().timestamp_micros();
    Ok(core.storage.audit_lapsed_holds(now).await?)
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
                "field_streams": erasure.field_streams.as_deref().unwrap_or_default(),
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
    let event = NewEvent::new(event_type, data.clone()).with_id(id);
    let (encoded, _): (EncodedEvent, _) =
        payload::encode(stream.as_str(), event, 0, None, &mut Nonces::new(0), Default::default())?;
    Ok(StreamWrite {
        stream,
        expected: ExpectedVersion::Any,
        subject: None,
        key_id: None,
        sealed: false,
        events: vec![encoded],
        allow_closed: true,
        field_subjects: Vec::new(),
    })
}

fn fail_at(core: &Core, step: ErasureFault) -> Result<(), Error> {
    if core.erasure_fault == Some(step) {
        return Err(Error::InjectedFault);
    }
    Ok(())
}

/// Drives a recorded erasure from wherever it stands to `completed`. Safe to run again, and
/// concurrently from several processes: every step is idempotent.
pub(crate) async fn drive(core: &Core, id: Uuid) -> Result<Erasure, Error> {
    loop {
        let erasure = core.storage.erasure(id).await?.ok_or_else(|| Error::Corrupt {
            detail: format!("erasure request {id} vanished"),
        })?;
        match erasure.status {
            ErasureStatus::Pending => {
                // Lists recorded before this run: the step ran before (a crash, an unreachable
                // vault, another process), so the destruction may be journaled already.
                let rerun = erasure.streams.is_some();
                let erasure = core.storage.shred_streams(id).await?;
                if erasure.status == ErasureStatus::Refused {
                    tracing::info!(request_id = %id, "retention erasure refused: legal hold placed since it was filed");
                    audit_step(core, &erasure, "erasure_refused", json!({ "reason": "legal_hold" })).await;
                    return Ok(erasure);
                }
                let keys = erasure.key_ids();
                core.keyring.revoke(&keys);
                fail_at(core, ErasureFault::AfterShred)?;
                // Journaled and fsynced before the vault destroys anything: a destruction that
                // happened is in the journal, whichever database is later restored.
                if let Some(journal) = &core.journal
                    && journal.record(&erasure, rerun).await?
                {
                    tracing::info!(request_id = %id, "erasure journaled");
                }
                fail_at(core, ErasureFault::AfterJournal)?;
                destroy_in_vault(core, &erasure.target).await?;
                fail_at(core, ErasureFault::AfterVaultDestroy)?;
                // Counted from the event database's record, not from what the vault answered:
                // after a crash the vault's repeat answer is empty, the record is not.
                core.storage.mark_keys_destroyed(id, keys.len() as u64, &keys).await?;
                core.keyring.revoke(&keys);
                audit_step(
                    core,
                    &erasure,
                    "erasure_keys_destroyed",
                    json!({ "keys_destroyed": keys.len() }),
                )
                .await;
                tracing::info!(request_id = %id, keys = keys.len(), "erasure: keys destroyed");
                fail_at(core, ErasureFault::AfterKeysDestroyed)?;
            }
            ErasureStatus::KeysDestroyed => {
                if erasure.found_nothing() {
                    // Nothing was shredded, so there is no tombstone to acknowledge.
                    fail_at(core, ErasureFault::AfterTombstones)?;
                    core.storage.mark_erasure_completed(id, None).await?;
                    audit_step(core, &erasure, "erasure_completed", json!({ "already_erased": true })).await;
                } else {
                    let outcome = core.committer.submit(tombstones(&erasure)?).await?;
                    let position = outcome.streams.last().map_or(0, |s| s.last_position);
                    fail_at(core, ErasureFault::AfterTombstones)?;
                    core.storage.mark_tombstoned(id, position).await?;
                    audit_step(
                        core,
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
                core.storage.settle_acknowledgements(id).await?;
                let settled = core.storage.erasure(id).await?.ok_or_else(|| Error::Corrupt {
                    detail: format!("erasure request {id} vanished"),
                })?;
                return Ok(settled);
            }
            ErasureStatus::Completed | ErasureStatus::Refused => return Ok(erasure),
        }
    }
}

/// Destroys a target's keys in the vault (all of a subject's, or one stream's), idempotently;
/// returns the ids this call destroyed (empty on a repeat).
async fn destroy_in_vault(core: &Core, target: &ErasureTarget) -> Result<Vec<KeyId>, Error> {
    let vault = core.keyring.vault();
    match target {
        ErasureTarget::Subject(subject) => vault
            .destroy_subject_keys(subject.as_str())
            .await
            .map_err(Error::KeyVault),
        ErasureTarget::Stream(stream) => Ok(vault
            .destroy_stream_key(stream.as_str())
            .await
            .map_err(Error::KeyVault)?
            .into_iter()
            .collect()),
    }
}

/// Why Lethe re-applies an erasure by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reapply {
    /// The erasure journal lists it (`replay`).
    Journal,
    /// The two databases disagree (`reconcile`).
    Reconcile,
}

impl Reapply {
    fn source(self) -> &'static str {
        match self {
            Reapply::Journal => "journal",
            Reapply::Reconcile => "reconcile",
        }
    }

    /// The reason recorded on a request Lethe files again (ids and words only).
    fn reason(self) -> ErasureReason {
        let (reason, requested_by) = match self {
            Reapply::Journal => (
                "re-applied at start: the erasure journal lists it, the event database lacked it",
                "lethe:journal",
            ),
            Reapply::Reconcile => (
                "re-applied by reconciliation: the key vault had destroyed the keys",
                "lethe:reconcile",
            ),
        };
        ErasureReason {
            reason: Some(reason.to_owned()),
            requested_by: Some(requested_by.to_owned()),
            reference: None,
        }
    }
}

/// Records an erasure that Lethe re-applies (under its own id, unless it exists) and drives it
/// to completion: the streams are marked and tombstoned like any other request's. No legal
/// hold is consulted — the keys are gone already, so a refusal would only leave the event
/// database claiming data nobody can read. Audited `erasure_reapplied` (`request_recorded`).
async fn reapply(core: &Core, request: Erasure, why: Reapply) -> Result<Erasure, Error> {
    if core.storage.insert_erasure_if_absent(&request).await? {
        tracing::info!(request_id = %request.id, source = why.source(), "erasure re-applied");
        audit_reapplied(
            core,
            &request.target,
            Some(request.id),
            why,
            "request_recorded",
            json!({}),
        )
        .await;
    }
    drive(core, request.id).await
}

/// Records a re-applied step (`erasure_reapplied`): ids and counts only.
async fn audit_reapplied(
    core: &Core,
    target: &ErasureTarget,
    request_id: Option<Uuid>,
    why: Reapply,
    step: &str,
    details: serde_json::Value,
) {
    let mut details = details;
    details["source"] = json!(why.source());
    details["step"] = json!(step);
    let subject = match target {
        ErasureTarget::Subject(subject) => Some(subject.clone()),
        ErasureTarget::Stream(stream) => {
            details["stream"] = json!(stream.as_str());
            None
        }
    };
    let entry = NewAuditEntry {
        actor: SYSTEM_ACTOR.to_owned(),
        action: "erasure_reapplied".to_owned(),
        subject,
        request_id,
        details,
    };
    core.audit_quietly(&entry).await;
}

/// Records an erasure step in the audit trail. The step has happened whatever the trail says,
/// so a failure to write the entry is logged, not returned (a re-run of the step would not
/// repeat it: steps are recorded before the next one starts).
async fn audit_step(core: &Core, erasure: &Erasure, action: &str, details: serde_json::Value) {
    let subject = match &erasure.target {
        ErasureTarget::Subject(s) => Some(s.clone()),
        ErasureTarget::Stream(_) => None,
    };
    let mut details = details;
    if let ErasureTarget::Stream(stream) = &erasure.target {
        details["stream"] = json!(stream.as_str());
    }
    let entry = NewAuditEntry {
        actor: SYSTEM_ACTOR.to_owned(),
        action: action.to_owned(),
        subject,
        request_id: Some(erasure.id),
        details,
    };
    core.audit_quietly(&entry).await;
}
