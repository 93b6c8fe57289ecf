//! The erasure journal's replay, at open, before the store serves anything.
//!
//! The journal (`crate::journal`) lists every destruction that happened, in the keys
//! directory, which is never restored. A database restored from a backup taken before a
//! forget has forgotten it: a restored vault holds the destroyed keys live again, a restored
//! event database shows the shredded streams active and lacks the request. For every entry:
//!
//! - keys it lists that the vault still holds (live, or unreadable) are destroyed again (the
//!   target's keys: all of a subject's, or one stream's);
//! - a request the event database lacks is recorded again under its own id and driven to
//!   completion, which marks the streams erased (deleted), tombstones them and marks the
//!   subject's field key forgotten; one the event database holds unfinished (`pending`,
//!   `keys_destroyed`) is driven.
//!
//! Entries are handled in batches ([`JOURNAL_REPLAY_BATCH_ENTRIES`]): one vault lookup and one
//! event-database query per batch, whatever the journal's length; an entry that needs nothing
//! (the common case) costs nothing more. Every step re-applied is audited `erasure_reapplied`.
//! Everything here is idempotent, so a replay interrupted at any point (a crash, `kill -9`)
//! is simply run again at the next open.

use std::collections::{HashMap, HashSet};

use lethe_keyvault::KeyId;
use serde_json::json;
use uuid::Uuid;

use super::{Reapply, audit_reapplied, destroy_in_vault, drive, reapply};
use crate::core::Core;
use crate::crypto::VaultKeyState;
use crate::error::Error;
use crate::journal::JournalEntry;
use crate::limits::JOURNAL_REPLAY_BATCH_ENTRIES;
use crate::model::{Erasure, ErasureStatus};

/// What a replay did (for the log).
#[derive(Debug, Default)]
struct Replayed {
    entries: u64,
    keys_destroyed: u64,
    requests_recorded: u64,
    requests_resumed: u64,
}

/// Replays the store's erasure journal, if it keeps one (see the module's documentation).
pub(crate) async fn replay(core: &Core) -> Result<(), Error> {
    let Some(journal) = &core.journal else {
        return Ok(());
    };
    let mut reader = journal.reader();
    let mut replayed = Replayed::default();
    loop {
        let batch = reader.next_batch(JOURNAL_REPLAY_BATCH_ENTRIES).await?;
        if batch.is_empty() {
            break;
        }
        replayed.entries += batch.len() as u64;
        replay_batch(core, &batch, &mut replayed).await?;
    }
    if replayed.keys_destroyed + replayed.requests_recorded + replayed.requests_resumed > 0 {
        tracing::warn!(
            entries = replayed.entries,
            keys_destroyed = replayed.keys_destroyed,
            requests_recorded = replayed.requests_recorded,
            requests_resumed = replayed.requests_resumed,
            "erasure journal replayed: a restored database had lost erasures, re-applied"
        );
    } else {
        tracing::info!(
            entries = replayed.entries,
            "erasure journal replayed: nothing to re-apply"
        );
    }
    Ok(())
}

async fn replay_batch(core: &Core, batch: &[JournalEntry], replayed: &mut Replayed) -> Result<(), Error> {
    // The vault: keys an entry lists that it holds again — live, or wrapped by a KEK epoch
    // it no longer has (the row is there all the same; destroying it records the subject as
    // forgotten again too).
    let mut ids: Vec<KeyId> = batch.iter().flat_map(|e| e.keys.iter().copied()).collect();
    ids.sort_by_key(|id| id.0);
    ids.dedup();
    let held: HashSet<KeyId> = core
        .keyring
        .vault_states(&ids)
        .await?
        .into_iter()
        .filter(|(_, state)| matches!(state, VaultKeyState::Live | VaultKeyState::Unreadable))
        .map(|(id, _)| id)
        .collect();
    let mut destroyed = HashSet::new();
    for entry in batch {
        let held_keys = entry.keys.iter().filter(|id| held.contains(id)).count();
        if held_keys == 0 || !destroyed.insert(&entry.target) {
            continue;
        }
        // Audited before the vault is asked: a crash between the two then leaves the entry and
        // a destruction that the next start completes, never a destruction without its entry
        // (found by the reliability suite's kill -9 during replay).
        let details = json!({ "keys_held": held_keys, "journal_line": entry.line });
        audit_reapplied(
            core,
            &entry.target,
            Some(entry.request_id),
            Reapply::Journal,
            "vault_keys_destroyed",
            details,
        )
        .await;
        let keys = destroy_in_vault(core, &entry.target).await?;
        core.keyring.revoke(&entry.keys);
        replayed.keys_destroyed += keys.len() as u64;
    }

    // The event database: requests it lacks, or holds unfinished. A request's parts are all in
    // the batch (the reader never ends one inside them); its first line stands for it.
    let mut firsts: Vec<&JournalEntry> = Vec::new();
    let mut whole = Vec::new();
    let mut seen = HashSet::new();
    for entry in batch {
        if seen.insert(entry.request_id) {
            firsts.push(entry);
        }
        if entry.last_part {
            whole.push(entry.request_id);
        }
    }
    // Driving them again must not journal them again.
    core.journal
        .iter()
        .for_each(|journal| journal.remember(whole.iter().copied()));
    let ids: Vec<Uuid> = firsts.iter().map(|e| e.request_id).collect();
    let statuses: HashMap<Uuid, ErasureStatus> = core.storage.erasure_statuses(&ids).await?;
    for entry in firsts {
        match statuses.get(&entry.request_id) {
            None => {
                let mut request = Erasure::new(entry.target.clone(), Reapply::Journal.reason(), entry.at);
                request.id = entry.request_id;
                reapply(core, request, Reapply::Journal).await?;
                replayed.requests_recorded += 1;
            }
            Some(ErasureStatus::Pending | ErasureStatus::KeysDestroyed) => {
                let details = json!({ "journal_line": entry.line });
                audit_reapplied(
                    core,
                    &entry.target,
                    Some(entry.request_id),
                    Reapply::Journal,
                    "request_resumed",
                    details,
                )
                .await;
                drive(core, entry.request_id).await?;
                replayed.requests_resumed += 1;
            }
            // Done (or waiting only for its dependents, which the resume loop follows).
            Some(_) => {}
        }
    }
    Ok(())
}
