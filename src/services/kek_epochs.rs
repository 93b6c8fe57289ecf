//! The key vault's KEK epochs in Lethe's audit trail: each finished rotation (`kek_rotated`)
//! and each destroyed epoch (`kek_epoch_destroyed`) is recorded once, whichever process sees
//! it first.
//!
//! The vault rotates and destroys epochs on its own schedule (in this process for an
//! in-process vault, in `lethe keyvault serve` for a remote one) and knows nothing of Lethe's
//! audit trail, so Lethe asks it for its epochs now and then and records what changed. The
//! record is claimed per fact (`kek_rotated:<epoch>`, `kek_epoch_destroyed:<epoch>`), so
//! several processes, or a restart, never record one twice.

use std::sync::Weak;

use lethe_keyvault::{EpochInfo, EpochState};
use serde_json::json;

use crate::core::Core;
use crate::error::Error;
use crate::limits::KEK_AUDIT_INTERVAL;
use crate::model::{NewAuditEntry, SYSTEM_ACTOR};

/// The once-key of a finished rotation away from `epoch` (also used by `lethe keyvault
/// rotate-kek`, so a hand rotation is not recorded a second time).
pub(crate) fn rotated_key(from_epoch: u32) -> String {
    format!("kek_rotated:{from_epoch}")
}

/// Records every rotation and epoch destruction the vault reports that the trail lacks;
/// returns how many entries were appended.
pub(crate) async fn audit_epochs(core: &Core) -> Result<u64, Error> {
    let epochs = core.keyring.vault().kek_epochs().await.map_err(Error::KeyVault)?;
    let mut appended = 0;
    for (key, entry) in entries(&epochs) {
        if core.storage.append_audit_once(&key, &entry).await? {
            appended += 1;
        }
    }
    Ok(appended)
}

/// What the epochs say, as (once-key, entry) pairs in epoch order.
fn entries(epochs: &[EpochInfo]) -> Vec<(String, NewAuditEntry)> {
    let mut out = Vec::new();
    for info in epochs {
        // Only an epoch that was ever active was rotated away from (an abandoned pending one,
        // or one this vault never recorded, was not).
        if let (Some(superseded_at), Some(_)) = (info.superseded_at, info.activated_at) {
            // The epoch that took over: the first later one that was ever active.
            let to = epochs
                .iter()
                .filter(|e| e.epoch > info.epoch && e.activated_at.is_some())
                .map(|e| e.epoch)
                .min();
            out.push((
                rotated_key(info.epoch),
                entry(
                    "kek_rotated",
                    json!({
                        "from_epoch": info.epoch,
                        "to_epoch": to,
                        "at": micros_rfc3339(superseded_at),
                    }),
                ),
            ));
        }
        if let (EpochState::Destroyed, Some(destroyed_at)) = (info.state, info.destroyed_at) {
            out.push((
                format!("kek_epoch_destroyed:{}", info.epoch),
                entry(
                    "kek_epoch_destroyed",
                    json!({ "epoch": info.epoch, "at": micros_rfc3339(destroyed_at) }),
                ),
            ));
        }
    }
    out
}

fn entry(action: &str, details: serde_json::Value) -> NewAuditEntry {
    NewAuditEntry {
        actor: SYSTEM_ACTOR.to_owned(),
        action: action.to_owned(),
        subject: None,
        request_id: None,
        details,
    }
}

fn micros_rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339()
}

/// Records the vault's epoch changes now and then every [`KEK_AUDIT_INTERVAL`], until the store
/// shuts down. Holds only a weak reference.
pub(crate) async fn audit_periodically(core: Weak<Core>) {
    let Some(mut shutdown) = core.upgrade().map(|core| core.shutdown_signal()) else {
        return;
    };
    loop {
        let Some(core) = core.upgrade() else {
            return;
        };
        if let Err(e) = audit_epochs(&core).await {
            tracing::warn!(error = %e, "recording KEK epoch changes in the audit trail failed; will retry");
        }
        drop(core);
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(KEK_AUDIT_INTERVAL) => {}
        }
    }
}
