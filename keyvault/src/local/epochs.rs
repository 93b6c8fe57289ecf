//! KEK epochs: the automatic rotation and retention of a vault whose [`KekProvider`] manages
//! its epochs (the keys directory, an HSM).
//!
//! Every `rotate_every` a new epoch starts and every live DEK is re-wrapped under it (the same
//! resumable batch loop as a manual rotation); an epoch is destroyed in the provider `retain`
//! after it was superseded, once no live key is wrapped with it. So a copy of the vault's
//! database older than rotation plus retention holds only keys wrapped by destroyed epochs:
//! crypto-shredding reaches backups with no operator action. Time comes from a
//! [`VaultClock`], so tests (the vault's and Lethe's) drive it with a [`ManualClock`].
//!
//! Architecture invariant: a tick never fails a read or a create. Both epochs of a rotation
//! are in the provider while it runs, and every step is recorded before the next, so an
//! interrupted tick is resumed by the next one (at open, when a rotation is pending).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use super::{LocalVault, RotateOptions, settle_versions};
use crate::error::VaultError;
use crate::kek::{Epoch, KekProvider};
use crate::keys::{Dek, KEY_LEN, KeyId};
use crate::limits::{
    EPOCH_CHECK_EVERY_DEFAULT, EPOCH_CHECK_EVERY_MIN, EPOCH_RETAIN_DEFAULT, EPOCH_ROTATE_EVERY_DEFAULT,
    ROTATION_BATCH_DEFAULT,
};
use crate::storage::{BeginEpoch, KekState};

/// Where the vault reads the time for its epochs: unix microseconds.
pub trait VaultClock: Send + Sync + std::fmt::Debug {
    fn now_micros(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl VaultClock for SystemClock {
    fn now_micros(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, micros)
    }
}

/// A clock that moves only when told: for tests (the vault's and Lethe's) of rotation and
/// retention without waiting days.
#[derive(Debug, Default)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    pub fn new(start_micros: i64) -> ManualClock {
        ManualClock {
            micros: AtomicI64::new(start_micros),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.micros.fetch_add(micros(by), Ordering::SeqCst);
    }

    pub fn set(&self, micros: i64) {
        self.micros.store(micros, Ordering::SeqCst);
    }
}

impl VaultClock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.micros.load(Ordering::SeqCst)
    }
}

/// When epochs rotate and are destroyed (for a provider that manages epochs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochPolicy {
    /// A new epoch starts this long after the active one was activated (default 7 days).
    pub rotate_every: Duration,
    /// A superseded epoch is destroyed this long after it was superseded (default 30 days).
    pub retain: Duration,
    /// How often [`LocalVault::spawn_epochs`] ticks (default 60 s).
    pub check_every: Duration,
    /// Keys re-wrapped per transaction by a rotation.
    pub batch_size: usize,
}

impl Default for EpochPolicy {
    fn default() -> Self {
        EpochPolicy {
            rotate_every: EPOCH_ROTATE_EVERY_DEFAULT,
            retain: EPOCH_RETAIN_DEFAULT,
            check_every: EPOCH_CHECK_EVERY_DEFAULT,
            batch_size: ROTATION_BATCH_DEFAULT,
        }
    }
}

/// What one [`LocalVault::tick_epochs`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EpochTick {
    /// `(from, to)` when this tick made a new epoch active.
    pub rotated: Option<(Epoch, Epoch)>,
    /// Epochs this tick destroyed in the provider.
    pub destroyed: Vec<Epoch>,
    /// Keys this tick re-wrapped.
    pub rewrapped: u64,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// One above every epoch the provider holds and every version the database records: an
/// epoch number is never reused, and an old epoch's KEK never adopted.
fn next_epoch(keks: &dyn KekProvider, max_recorded: Epoch) -> Result<Epoch, VaultError> {
    let max_held = keks.epochs()?.into_iter().max().unwrap_or(0);
    max_held
        .max(max_recorded)
        .checked_add(1)
        .ok_or_else(|| VaultError::Corrupt("KEK epoch numbers exhausted".into()))
}

/// Creates the next epoch in the provider and returns it with its check value: what storage
/// records under its lock ([`crate::storage::MakeEpoch`]).
pub(super) fn make_epoch(keks: &dyn KekProvider, max_recorded: Epoch) -> Result<(Epoch, Vec<u8>), VaultError> {
    let epoch = next_epoch(keks, max_recorded)?;
    keks.create_epoch(epoch)?;
    Ok((epoch, check_value(keks, epoch)?))
}

/// A DEK-sized block of zeros wrapped under the epoch's KEK with the nil key id: recognises
/// the KEK (it unwraps to zeros) without revealing it.
pub(super) fn check_value(keks: &dyn KekProvider, epoch: Epoch) -> Result<Vec<u8>, VaultError> {
    let zeros = Dek::from_slice(&[0u8; KEY_LEN])?;
    Ok(keks.wrap(epoch, KeyId(uuid::Uuid::nil()), &zeros)?)
}

impl LocalVault {
    /// One step of the automatic epochs, for a provider that manages them (otherwise does
    /// nothing): (a) a pending rotation is resumed to the end; (b) else, once `rotate_every`
    /// has passed since the active epoch was activated, a new epoch is created in the provider
    /// and recorded as pending (under a database lock, so two processes never start two), every
    /// live key is re-wrapped under it, and it becomes active; (c) every retired epoch
    /// superseded `retain` ago that no live key is wrapped with is destroyed in the provider,
    /// then recorded as destroyed (a crash between the two is repaired by the next tick).
    /// Safe to run from several processes at once; reads and creates go on meanwhile.
    pub async fn tick_epochs(&self) -> Result<EpochTick, VaultError> {
        let mut tick = EpochTick::default();
        if !self.keks.manages_epochs() {
            return Ok(tick);
        }
        let _guard = self.rotation.lock().await;
        let settled = settle_versions(&*self.storage, &*self.keks, &*self.clock).await?;
        if let Some(epoch) = settled.replaced_by {
            error!(
                kek_epoch = epoch,
                keys_unreadable = settled.unreadable_keys(),
                "the KEK provider lost the active KEK epoch; a new epoch was started"
            );
        }
        self.write_version.store(settled.write_version, Ordering::SeqCst);

        let versions = self.storage.kek_versions().await?;
        let now = self.clock.now_micros();
        let active = versions.iter().find(|v| v.state == KekState::Active);
        let pending = versions.iter().find(|v| v.state == KekState::Pending);
        let target = match (pending, active) {
            (Some(p), _) => Some(p.version),
            (None, Some(a)) => {
                let due = a
                    .activated_at
                    .is_none_or(|t| now >= t.saturating_add(micros(self.policy.rotate_every)));
                if due {
                    let make = |max_db: Epoch| make_epoch(&*self.keks, max_db);
                    match self.storage.begin_epoch(a.version, &make).await? {
                        BeginEpoch::Started(row) => {
                            info!(from = a.version, to = row.version, "KEK epoch started");
                            Some(row.version)
                        }
                        BeginEpoch::Pending(row) => Some(row.version),
                        BeginEpoch::ActiveChanged => None,
                    }
                } else {
                    None
                }
            }
            (None, None) => None,
        };
        if let Some(target) = target {
            let from = active.map_or(target, |a| a.version);
            // New keys go to the new epoch from now on: they need no re-wrapping.
            self.write_version.store(target, Ordering::SeqCst);
            let options = RotateOptions {
                batch_size: self.policy.batch_size,
                max_batches: None,
            };
            let (report, switched) = self.run_rotation(from, target, options).await?;
            tick.rewrapped = report.rewrapped;
            if switched {
                tick.rotated = Some((report.from_version, target));
            }
        }
        tick.destroyed = self.destroy_expired().await?;
        Ok(tick)
    }

    /// Step (c) of [`LocalVault::tick_epochs`]; also destroys again an epoch recorded as
    /// destroyed that the provider holds once more (its keys were restored from a backup).
    async fn destroy_expired(&self) -> Result<Vec<Epoch>, VaultError> {
        let versions = self.storage.kek_versions().await?;
        let in_use: Vec<Epoch> = self
            .storage
            .keys_per_version()
            .await?
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        let held = self.keks.epochs()?;
        let now = self.clock.now_micros();
        let retain = micros(self.policy.retain);
        // Epochs the provider holds below the newest recorded one that this database never
        // recorded wrapped keys of another timeline (this database restored from a backup
        // while the provider moved on): retired from now, so that retention destroys them and
        // that timeline's backups become unreadable like any other. (An epoch being created
        // right now is above the newest recorded one.)
        let newest = versions.iter().map(|v| v.version).max().unwrap_or(0);
        for orphan in held
            .iter()
            .filter(|e| **e < newest && !versions.iter().any(|v| v.version == **e))
        {
            let check = check_value(&*self.keks, *orphan)?;
            self.storage.record_orphan(*orphan, &check, now).await?;
            warn!(
                kek_epoch = orphan,
                "a KEK epoch this vault never recorded is retired; retention destroys it"
            );
        }
        let mut destroyed = Vec::new();
        for v in &versions {
            if v.state != KekState::Retired || in_use.contains(&v.version) {
                continue;
            }
            match (v.destroyed_at, v.superseded_at) {
                (None, Some(superseded)) if now >= superseded.saturating_add(retain) => {
                    self.keks.destroy_epoch(v.version)?;
                    self.storage.mark_destroyed(v.version, now).await?;
                    info!(kek_epoch = v.version, "KEK epoch destroyed");
                    destroyed.push(v.version);
                }
                (Some(_), _) if held.contains(&v.version) => {
                    warn!(
                        kek_epoch = v.version,
                        "a destroyed KEK epoch is back in the provider (restored from a backup?); destroying it again"
                    );
                    self.keks.destroy_epoch(v.version)?;
                }
                _ => {}
            }
        }
        Ok(destroyed)
    }

    /// Runs [`LocalVault::tick_epochs`] every `check_every` in the background, for as long as
    /// the vault lives (the task holds only a weak reference, and ends once the vault is
    /// dropped). A failed tick is logged and tried again at the next check. Call it from
    /// within a Tokio runtime.
    pub fn spawn_epochs(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let vault = Arc::downgrade(self);
        let every = self.policy.check_every.max(EPOCH_CHECK_EVERY_MIN);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(vault) = vault.upgrade() else {
                    break;
                };
                if let Err(e) = vault.tick_epochs().await {
                    error!(code = e.code(), error = %e, "KEK epoch check failed; retrying at the next check");
                }
            }
        })
    }

    /// At open, a rotation left pending (by a crash, or a failed tick) is resumed and finished
    /// before the vault is used, so old-epoch copies do not linger. A failure is logged: reads
    /// and creates work meanwhile, and the next tick tries again.
    pub(super) async fn resume_at_open(&self) {
        if !self.keks.manages_epochs() {
            return;
        }
        let pending = match self.storage.kek_versions().await {
            Ok(versions) => versions.iter().any(|v| v.state == KekState::Pending),
            Err(e) => {
                error!(code = e.code(), error = %e, "reading the KEK versions at open failed");
                return;
            }
        };
        if !pending {
            return;
        }
        info!("a KEK rotation is pending; resuming it");
        if let Err(e) = self.tick_epochs().await {
            error!(code = e.code(), error = %e, "resuming the KEK rotation at open failed; retrying at the next check");
        }
    }
}
