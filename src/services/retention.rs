//! Retention: Lethe forgets on schedule (GDPR Art. 5(1)(e), storage limitation).
//!
//! Policies (`model::retention`) are stored in the event database and audited
//! (`retention_policy_set`, `retention_policy_removed`). A *sweep* files an erasure request for
//! each subject that a policy finds due — every active bound stream matching its prefix past
//! `keep_for`, counted from the stream's last or first event — and nothing else: the request
//! then runs through the erasure workflow unchanged (the resume loop drives it; dependents
//! acknowledge; deadlines and reports apply). A legal hold active when the request is filed
//! refuses it, and the subject is filed again by the first sweep after the hold lapses.
//!
//! Every process may sweep (`sweep_periodically`). A policy's due subjects are found page by
//! page without any lock; each page of [`RETENTION_SWEEP_BATCH_SUBJECTS`] is then one short
//! transaction that re-reads the policy, looks each subject up again and files it under the
//! audit chain's lock, so a request is filed once whichever process gets there first, a policy
//! removed meanwhile files nothing more, and no lock is held for a whole sweep (nor for a scan).
//! On SQLite, where a batch holds the one writer, the sweep waits as long as a batch took
//! before the next, so appends keep about half of its time. One policy failing does not stop the
//! others.

use std::sync::Weak;
use std::time::Instant;

use crate::core::Core;
use crate::error::{Error, ValidationError};
use crate::limits::{RETENTION_POLICIES_MAX, RETENTION_SWEEP_BATCH_SUBJECTS};
use crate::model::retention::{check_policy_name, check_stream_prefix};
use crate::model::{RetentionAnchor, RetentionPeriod, RetentionPolicy, RetentionStatus, RetentionSweep};

/// Creates or replaces the policy `name`; the answer says whether it was created. Every field
/// is checked before anything is stored.
pub(crate) async fn put(
    core: &Core,
    name: &str,
    stream_prefix: &str,
    keep_for: &str,
    after: RetentionAnchor,
    actor: &str,
) -> Result<(RetentionStatus, bool), Error> {
    check_policy_name(name)?;
    check_stream_prefix(stream_prefix)?;
    let keep_for = RetentionPeriod::parse(keep_for)?;
    let now = core.now();
    let policy = RetentionPolicy {
        name: name.to_owned(),
        stream_prefix: stream_prefix.to_owned(),
        keep_for,
        after,
        created_at: now,
        updated_at: now,
    };
    let Some((stored, created)) = core.storage.put_retention_policy(&policy, actor).await? else {
        return Err(ValidationError::TooMany {
            what: "retention policies",
            max: RETENTION_POLICIES_MAX,
        }
        .into());
    };
    tracing::info!(
        policy = name,
        keep_for = stored.keep_for.as_str(),
        "retention policy set"
    );
    Ok((status(core, stored).await?, created))
}

/// Removes the policy `name`; false if there was none. Requests it filed run on.
pub(crate) async fn delete(core: &Core, name: &str, actor: &str) -> Result<bool, Error> {
    check_policy_name(name)?;
    let removed = core.storage.delete_retention_policy(name, actor).await?;
    if removed {
        tracing::info!(policy = name, "retention policy removed");
    }
    Ok(removed)
}

/// Every policy, by name, with when it next files a request.
pub(crate) async fn list(core: &Core) -> Result<Vec<RetentionStatus>, Error> {
    let mut statuses = Vec::new();
    for policy in core.storage.retention_policies().await? {
        statuses.push(status(core, policy).await?);
    }
    Ok(statuses)
}

/// One policy with when it next files a request (`not_found` if there is none).
pub(crate) async fn get(core: &Core, name: &str) -> Result<RetentionStatus, Error> {
    check_policy_name(name)?;
    let policy = core
        .storage
        .retention_policies()
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or(Error::NotFound {
            what: "retention policy",
        })?;
    status(core, policy).await
}

async fn status(core: &Core, policy: RetentionPolicy) -> Result<RetentionStatus, Error> {
    let oldest = core.storage.retention_oldest_anchor(&policy).await?;
    let next_due = policy.next_due(oldest);
    Ok(RetentionStatus { policy, next_due })
}

/// Sweeps every policy once: files an erasure request for each subject due (see the module
/// documentation). One pass; each batch of subjects its own transaction.
pub(crate) async fn sweep(core: &Core) -> Result<RetentionSweep, Error> {
    let now = core.now();
    let mut sweep = RetentionSweep::default();
    let mut first_error = None;
    for policy in core.storage.retention_policies().await? {
        sweep.policies += 1;
        // One policy failing (say, a row it cannot file) does not hold up the others.
        if let Err(e) = sweep_policy(core, &policy, now, &mut sweep).await {
            tracing::warn!(policy = %policy.name, error = %e, "retention sweep of a policy failed; will retry");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(sweep),
    }
}

/// One policy's part of a sweep: its candidates found page by page without a lock, each page
/// confirmed and filed in one short transaction.
async fn sweep_policy(
    core: &Core,
    policy: &RetentionPolicy,
    now: chrono::DateTime<chrono::Utc>,
    sweep: &mut RetentionSweep,
) -> Result<(), Error> {
    let Some(cutoff) = policy.keep_for.before(now) else {
        return Ok(());
    };
    let (cutoff_us, now_us) = (cutoff.timestamp_micros(), now.timestamp_micros());
    let mut after: Option<String> = None;
    loop {
        let candidates = core
            .storage
            .retention_candidates(policy, cutoff_us, after.as_deref(), RETENTION_SWEEP_BATCH_SUBJECTS)
            .await?;
        let Some(last) = candidates.last().cloned() else {
            return Ok(());
        };
        let started = Instant::now();
        let batch = core
            .storage
            .file_retention_batch(policy, cutoff_us, now_us, &candidates)
            .await?;
        sweep.batches += 1;
        sweep.due += batch.due;
        for (id, refused) in &batch.filed {
            sweep.filed += 1;
            if *refused {
                sweep.refused += 1;
                tracing::info!(policy = %policy.name, request_id = %id, "retention erasure refused: legal hold");
            } else {
                tracing::info!(policy = %policy.name, request_id = %id, "retention erasure filed");
            }
        }
        if batch.policy_changed || candidates.len() < RETENTION_SWEEP_BATCH_SUBJECTS {
            return Ok(());
        }
        after = Some(last);
        // Where a batch holds the one writer (SQLite), as long again before the next: the sweep
        // holds it at most about half of the time, so appends go on at their pace.
        if core.storage.single_writer() {
            tokio::time::sleep(started.elapsed()).await;
        }
    }
}

/// Sweeps now and then every [`crate::core::StoreConfig::retention_sweep_every`], until the
/// store shuts down. Holds only a weak reference, so it never keeps a closed store alive. The
/// requests it files are driven by the erasure resume loop.
pub(crate) async fn sweep_periodically(core: Weak<Core>) {
    let Some((mut shutdown, Some(every))) = core
        .upgrade()
        .map(|core| (core.shutdown_signal(), core.retention_sweep_every))
    else {
        return;
    };
    loop {
        let Some(core) = core.upgrade() else {
            return;
        };
        match sweep(&core).await {
            Ok(sweep) if sweep.filed > 0 => {
                tracing::info!(
                    filed = sweep.filed,
                    refused = sweep.refused,
                    "retention sweep filed erasure requests"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; will retry"),
        }
        drop(core);
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
