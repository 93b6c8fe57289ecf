//! Reconciliation: the event database and the key vault compared, and what one lacks of the
//! other's erasures re-applied (at open when `StoreConfig::reconcile_at_open` is set, after the
//! journal's replay, and on demand: `POST /admin/reconcile`, `lethe admin reconcile`).
//!
//! It works without the journal too, from the two databases alone, page by page
//! ([`RECONCILE_PAGE_STREAMS`]: one event-database query and one vault lookup per page):
//!
//! - **A restored vault.** A stream the event database shows erased (deleted), or a subject key
//!   it shows forgotten, whose key the vault holds live: the key is destroyed again — all of the
//!   subject's keys for an erased stream or a forgotten subject key, the stream's for a deleted
//!   stream.
//! - **A restored event database.** An active stream whose key the vault reports destroyed is
//!   shredded through the erasure workflow, as a request Lethe files itself: the forget of its
//!   subject if the vault forgot that subject (a forget destroys all of its keys at once, so the
//!   subject's other streams go with it), otherwise the stream's deletion; a subject key the
//!   vault destroyed while the event database does not show it forgotten means the vault forgot
//!   the subject: its forget is filed.
//!
//! Every step is audited `erasure_reapplied`; keys the vault does not know at all are counted,
//! never a failure.

use std::collections::{HashMap, HashSet};

use lethe_keyvault::KeyId;
use serde_json::json;

use super::{Reapply, audit_reapplied, destroy_in_vault, reapply};
use crate::core::Core;
use crate::crypto::VaultKeyState;
use crate::error::Error;
use crate::limits::{RECONCILE_PAGE_STREAMS, RECONCILE_REPORT_IDS_MAX};
use crate::model::{Erasure, ErasureTarget, ReappliedErasure, ReconcileReport, StreamStatus, SubjectId};
use crate::storage::KeyedStream;

/// Compares the event database with the vault and re-applies what one lacks (see the module's
/// documentation).
pub(crate) async fn reconcile(core: &Core) -> Result<ReconcileReport, Error> {
    let mut run = Run::default();
    reconcile_streams(core, &mut run).await?;
    reconcile_subject_keys(core, &mut run).await?;
    let mut report = run.report;
    // The vault's own count: every live key it holds wrapped only by a KEK epoch it no longer
    // has, whether the event database names it or not.
    report.keys_unreadable = Some(core.keys_unreadable().await?);
    if report.reapplied_anything() {
        tracing::warn!(
            keys_destroyed = report.keys_destroyed,
            streams_shredded = report.streams_shredded,
            requests = report.requests.len(),
            keys_missing = report.keys_missing,
            "reconciliation re-applied erasures that a restored database had lost"
        );
    } else {
        tracing::info!(
            streams = report.streams_checked,
            subject_keys = report.subject_keys_checked,
            keys_missing = report.keys_missing,
            "reconciliation: the event database and the key vault agree"
        );
    }
    Ok(report)
}

/// One reconciliation's progress.
#[derive(Default)]
struct Run {
    report: ReconcileReport,
    /// Targets whose keys this run destroyed again (each is destroyed once).
    destroyed: HashSet<ErasureTarget>,
    /// Subjects this run filed a forget for (their other streams went with it).
    forgotten: HashSet<SubjectId>,
}

impl Run {
    fn list_destroyed(&mut self, target: ErasureTarget) {
        if self.report.destroyed.len() < RECONCILE_REPORT_IDS_MAX {
            self.report.destroyed.push(target);
        } else {
            self.report.truncated = true;
        }
    }

    fn list_request(&mut self, erasure: &Erasure) {
        let streams = erasure.streams.as_ref().map_or(0, Vec::len) as u64;
        self.report.streams_shredded += streams;
        if self.report.requests.len() < RECONCILE_REPORT_IDS_MAX {
            self.report.requests.push(ReappliedErasure {
                request_id: erasure.id,
                target: erasure.target.clone(),
                streams,
            });
        } else {
            self.report.truncated = true;
        }
    }
}

/// What the vault holds for each key.
async fn vault_states(core: &Core, ids: &[KeyId]) -> Result<HashMap<KeyId, VaultKeyState>, Error> {
    Ok(core.keyring.vault_states(ids).await?.into_iter().collect())
}

/// Destroys a target's keys again (once per run), audited, counting what the vault destroyed.
async fn destroy_again(core: &Core, run: &mut Run, target: ErasureTarget) -> Result<(), Error> {
    if run.destroyed.contains(&target) {
        return Ok(());
    }
    let keys = destroy_in_vault(core, &target).await?;
    core.keyring.revoke(&keys);
    run.report.keys_destroyed += keys.len() as u64;
    // Not an erasure request of its own: the request that shredded these streams is recorded
    // (the event database says so); the audit entry names no request.
    let details = json!({ "keys_destroyed": keys.len() });
    audit_reapplied(core, &target, None, Reapply::Reconcile, "vault_keys_destroyed", details).await;
    run.destroyed.insert(target.clone());
    run.list_destroyed(target);
    Ok(())
}

/// Files (and drives) an erasure of `target`, which the vault carried out already.
async fn shred_again(core: &Core, run: &mut Run, target: ErasureTarget) -> Result<(), Error> {
    if let ErasureTarget::Subject(subject) = &target
        && !run.forgotten.insert(subject.clone())
    {
        return Ok(());
    }
    let request = Erasure::new(target, Reapply::Reconcile.reason(), core.now());
    let erasure = reapply(core, request, Reapply::Reconcile).await?;
    run.list_request(&erasure);
    Ok(())
}

async fn reconcile_streams(core: &Core, run: &mut Run) -> Result<(), Error> {
    let mut after: Option<String> = None;
    loop {
        let page = core
            .storage
            .keyed_streams(after.as_deref(), RECONCILE_PAGE_STREAMS)
            .await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.name.to_string());
        let ids: Vec<KeyId> = page.iter().map(|s| KeyId(s.key_id)).collect();
        let states = vault_states(core, &ids).await?;
        for stream in &page {
            run.report.streams_checked += 1;
            match (stream.status, states.get(&KeyId(stream.key_id))) {
                (_, None | Some(VaultKeyState::Missing)) => run.report.keys_missing += 1,
                (StreamStatus::Active, Some(VaultKeyState::Live))
                | (StreamStatus::Erased | StreamStatus::Deleted, Some(VaultKeyState::Destroyed)) => {}
                // An unreadable key (its KEK epoch destroyed) of a closed stream still has its
                // wrapped row in the vault: destroyed like a live one.
                (
                    StreamStatus::Erased | StreamStatus::Deleted,
                    Some(VaultKeyState::Live | VaultKeyState::Unreadable),
                ) => {
                    destroy_again(core, run, closed_target(stream)).await?;
                }
                // Counted by the vault itself, below.
                (StreamStatus::Active, Some(VaultKeyState::Unreadable)) => {}
                (StreamStatus::Active, Some(VaultKeyState::Destroyed)) => {
                    // A forget this run filed shredded the subject's streams already.
                    if stream.subject.as_ref().is_some_and(|s| run.forgotten.contains(s)) {
                        continue;
                    }
                    if let Some(target) = destroyed_by(core, stream).await? {
                        shred_again(core, run, target).await?;
                    }
                }
            }
        }
    }
}

/// Whose keys go with a stream the event database shows erased or deleted: an erased stream
/// was its subject's forget (all of the subject's keys), a deleted one only itself.
fn closed_target(stream: &KeyedStream) -> ErasureTarget {
    match (&stream.status, &stream.subject) {
        (StreamStatus::Erased, Some(subject)) => ErasureTarget::Subject(subject.clone()),
        _ => ErasureTarget::Stream(stream.name.clone()),
    }
}

/// Which erasure destroyed an active stream's key in the vault: its subject's forget if the
/// vault forgot the subject, otherwise the stream's deletion. `None`: the key is live after all.
async fn destroyed_by(core: &Core, stream: &KeyedStream) -> Result<Option<ErasureTarget>, Error> {
    let Some(subject) = &stream.subject else {
        return Ok(Some(ErasureTarget::Stream(stream.name.clone())));
    };
    Ok(core
        .keyring
        .vault_forgot_subject(stream.name.as_str(), subject.as_str())
        .await?
        .map(|forgotten| match forgotten {
            true => ErasureTarget::Subject(subject.clone()),
            false => ErasureTarget::Stream(stream.name.clone()),
        }))
}

async fn reconcile_subject_keys(core: &Core, run: &mut Run) -> Result<(), Error> {
    let mut after: Option<String> = None;
    loop {
        let page = core
            .storage
            .subject_key_rows(after.as_deref(), RECONCILE_PAGE_STREAMS)
            .await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.subject.as_str().to_owned());
        let ids: Vec<KeyId> = page.iter().map(|k| KeyId(k.key_id)).collect();
        let states = vault_states(core, &ids).await?;
        for key in &page {
            run.report.subject_keys_checked += 1;
            let target = ErasureTarget::Subject(key.subject.clone());
            match (key.forgotten, states.get(&KeyId(key.key_id))) {
                (_, None | Some(VaultKeyState::Missing)) => run.report.keys_missing += 1,
                (true, Some(VaultKeyState::Live | VaultKeyState::Unreadable)) => {
                    destroy_again(core, run, target).await?;
                }
                (false, Some(VaultKeyState::Unreadable)) => {}
                // Only a subject's forget destroys its subject key.
                (false, Some(VaultKeyState::Destroyed)) => shred_again(core, run, target).await?,
                (true, Some(VaultKeyState::Destroyed)) | (false, Some(VaultKeyState::Live)) => {}
            }
        }
    }
}
