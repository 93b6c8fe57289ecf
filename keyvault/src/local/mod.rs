//! The in-process vault: generates, wraps, unwraps and destroys DEKs on top of a [`Storage`].
//! Used directly by Lethe for `sqlite://` and `postgres://` vault URLs, and by the vault server.
//!
//! The vault's KEK *versions* are its [`KekProvider`]'s *epochs*. KEKs handed in from outside
//! ([`LocalVault::open`]) become a [`GivenKeks`] provider, matched to versions by their check
//! values, and are rotated by hand ([`LocalVault::rotate_kek`]); a provider that manages its
//! epochs ([`LocalVault::open_with_provider`]) is rotated and pruned by the vault itself
//! (`epochs.rs`: [`LocalVault::tick_epochs`], [`LocalVault::spawn_epochs`]).
//!
//! Architecture invariant: KEKs live only in the provider (this module never holds KEK bytes:
//! a KEK handed in goes straight into its `GivenKeks`), DEKs are only ever handed out
//! unwrapped to the caller, and the vault keeps no DEK cache of its own — a destroyed key is
//! gone from the vault the moment `destroy_*` returns. A key whose epoch the provider lacks is
//! reported unreadable, never a reason to fail a batch or to refuse to open.

mod epochs;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use tracing::{debug, error, info, warn};

pub use self::epochs::{EpochPolicy, EpochTick, ManualClock, SystemClock, VaultClock};
use crate::KeyVault;
use crate::error::VaultError;
use crate::kek::{Epoch, GivenKeks, Kek, KekError, KekProvider};
use crate::keys::{
    Dek, EpochInfo, EpochState, KeyId, KeyLookup, NewKey, VaultStats, validate_new_key, validate_stream,
    validate_subject,
};
use crate::limits::{BATCH_KEYS_MAX, ROTATION_BATCH_DEFAULT};
use crate::storage::postgres::PgStorage;
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{
    CreateResult, Created, Finish, KekState, KekVersionRow, NewRow, Rewrap, Storage, Stored, WrappedKey, check_existing,
};

/// How a rotation runs.
#[derive(Debug, Clone, Copy)]
pub struct RotateOptions {
    /// Keys re-wrapped per transaction.
    pub batch_size: usize,
    /// Stop (leaving the rotation resumable) after this many batches. `None` runs to the end.
    /// Lets an operator spread a large rotation out, and lets tests interrupt one.
    pub max_batches: Option<u64>,
}

impl Default for RotateOptions {
    fn default() -> Self {
        RotateOptions {
            batch_size: ROTATION_BATCH_DEFAULT,
            max_batches: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RotationReport {
    /// The version active before the rotation (equal to `to_version` if nothing was to do).
    pub from_version: u32,
    pub to_version: u32,
    /// Keys re-wrapped by this call.
    pub rewrapped: u64,
    pub batches: u64,
    /// False if stopped by `max_batches`; run it again with the same new KEK to finish.
    pub complete: bool,
}

/// A key generated for a create request, used only if its stream has no key yet.
struct FreshKey {
    id: KeyId,
    dek: Dek,
    wrapped: WrappedKey,
}

pub struct LocalVault {
    storage: Box<dyn Storage>,
    /// Holds the KEK of every epoch (version) this vault can read, and wraps and unwraps.
    keks: Arc<dyn KekProvider>,
    /// The same provider, typed, when the KEKs were handed in: manual rotation adds to it.
    given: Option<Arc<GivenKeks>>,
    /// The version new keys are wrapped with: the active one, or the pending one once a
    /// rotation has started.
    write_version: AtomicU32,
    /// One rotation (and one epoch tick) at a time in this process; the database serialises
    /// across processes.
    rotation: tokio::sync::Mutex<()>,
    policy: EpochPolicy,
    clock: Arc<dyn VaultClock>,
}

impl std::fmt::Debug for LocalVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalVault")
            .field("kek_provider", &self.keks.kind())
            .field("write_version", &self.write_version.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// Length of a legacy check value (`HMAC-SHA256(KEK, label)`); a wrapped check value is longer.
const LEGACY_CHECK_LEN: usize = 32;

/// What [`settle_versions`] left: the version to write with, and the keys nobody can read.
#[derive(Debug)]
struct Settled {
    write_version: u32,
    /// Live keys per version whose KEK the provider lacks.
    unreadable: Vec<(Epoch, u64)>,
    /// The epoch started because the provider held neither the active nor the pending one.
    replaced_by: Option<Epoch>,
}

impl Settled {
    fn unreadable_keys(&self) -> u64 {
        self.unreadable.iter().map(|(_, n)| n).sum()
    }
}

async fn open_storage(url: &str) -> Result<Box<dyn Storage>, VaultError> {
    if url.starts_with("sqlite:") {
        Ok(Box::new(SqliteStorage::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(PgStorage::open(url).await?))
    } else {
        Err(VaultError::InvalidInput(
            "a local vault URL starts with sqlite: or postgres://".into(),
        ))
    }
}

impl LocalVault {
    /// Opens the vault at a `sqlite://` or `postgres://` URL with KEKs handed in: `kek` is the
    /// current KEK; `other_keks` may add the other side of an interrupted rotation (old or new
    /// KEK). A fresh vault records `kek` as version 1. Each KEK is matched to the version whose
    /// check value it has; every version a key is wrapped with must be matched. No automatic
    /// epochs: rotate by hand ([`LocalVault::rotate_kek`]).
    pub async fn open(url: &str, kek: Kek, other_keks: Vec<Kek>) -> Result<LocalVault, VaultError> {
        let storage = open_storage(url).await?;
        let clock: Arc<dyn VaultClock> = Arc::new(SystemClock);
        // A fresh vault adopts the first KEK it is opened with as version 1.
        storage.init_kek(1, &kek.check_value(), clock.now_micros()).await?;
        let versions = storage.kek_versions().await?;
        let mut matched = Vec::new();
        for k in std::iter::once(kek).chain(other_keks) {
            match versions.iter().find(|v| given_matches(v, &k)) {
                Some(v) => matched.push((v.version, k)),
                None => warn!("a supplied KEK matches no KEK version of this vault; ignored"),
            }
        }
        let given = Arc::new(GivenKeks::new(matched));
        LocalVault::with_provider(storage, given.clone(), Some(given), EpochPolicy::default(), clock).await
    }

    /// Opens the vault at a `sqlite://` or `postgres://` URL with its KEKs in `provider`.
    ///
    /// A fresh database gets a new epoch (one above every epoch the provider holds: an old
    /// epoch's KEK is never adopted). An existing one is checked against the provider: a
    /// version the provider holds whose check value does not match refuses the open (wrong
    /// keys directory or token); a version it does not hold only makes that version's keys
    /// unreadable (logged at error level, counted in [`VaultStats::keys_unreadable`]), and if
    /// that is the active version a new epoch starts at once. A rotation left pending by a
    /// crash is resumed before this returns. Run [`LocalVault::spawn_epochs`] (or
    /// [`LocalVault::tick_epochs`]) for the automatic rotation and retention of `policy`.
    pub async fn open_with_provider(
        url: &str,
        provider: Arc<dyn KekProvider>,
        policy: EpochPolicy,
        clock: Arc<dyn VaultClock>,
    ) -> Result<LocalVault, VaultError> {
        let storage = open_storage(url).await?;
        LocalVault::with_provider(storage, provider, None, policy, clock).await
    }

    async fn with_provider(
        storage: Box<dyn Storage>,
        keks: Arc<dyn KekProvider>,
        given: Option<Arc<GivenKeks>>,
        policy: EpochPolicy,
        clock: Arc<dyn VaultClock>,
    ) -> Result<LocalVault, VaultError> {
        let settled = settle_versions(&*storage, &*keks, &*clock).await?;
        if let Some(epoch) = settled.replaced_by {
            warn!(
                kek_epoch = epoch,
                "the KEK provider holds neither the active nor the pending KEK epoch; a new epoch was started"
            );
        }
        if !settled.unreadable.is_empty() {
            let epochs: Vec<Epoch> = settled.unreadable.iter().map(|(e, _)| *e).collect();
            error!(
                keys_unreadable = settled.unreadable_keys(),
                kek_epochs = ?epochs,
                "{} keys are wrapped only by destroyed or missing KEK epochs {epochs:?}: their data cannot be read",
                settled.unreadable_keys()
            );
        }
        let vault = LocalVault {
            storage,
            keks,
            given,
            write_version: AtomicU32::new(settled.write_version),
            rotation: tokio::sync::Mutex::new(()),
            policy,
            clock,
        };
        info!(
            kek_version = settled.write_version,
            kek_provider = vault.keks.kind(),
            "key vault opened"
        );
        vault.resume_at_open().await;
        Ok(vault)
    }

    /// Re-wraps every live DEK under `new` and makes it the only KEK needed. See
    /// [`LocalVault::rotate_kek_with`].
    pub async fn rotate_kek(&self, new: Kek) -> Result<RotationReport, VaultError> {
        self.rotate_kek_with(new, RotateOptions::default()).await
    }

    /// Crash-safe KEK rotation, for a vault opened with KEKs handed in ([`LocalVault::open`];
    /// a provider that manages epochs rotates by itself: [`LocalVault::tick_epochs`]). The new
    /// KEK is first recorded (by its check value) as the pending version; keys are then
    /// re-wrapped in batches, each its own transaction, each row carrying the version it is
    /// wrapped with, so at every instant every key is readable by a vault holding the old and
    /// the new KEK. When no key is left on another version the pending version becomes active
    /// and the old one retired in one transaction. Running it again with the same new KEK
    /// resumes (or, once finished, does nothing).
    pub async fn rotate_kek_with(&self, new: Kek, options: RotateOptions) -> Result<RotationReport, VaultError> {
        let Some(given) = &self.given else {
            return Err(KekError::Unsupported {
                provider: self.keks.kind(),
                what: "rotate to a KEK handed in (its epochs rotate automatically)",
            }
            .into());
        };
        let _guard = self.rotation.lock().await;
        let check = new.check_value();
        let versions = self.storage.kek_versions().await?;
        let active = active_version(&versions)?;
        if let Some(v) = versions.iter().find(|v| v.check_value == check) {
            match v.state {
                KekState::Active => {
                    return Ok(RotationReport {
                        from_version: v.version,
                        to_version: v.version,
                        rewrapped: 0,
                        batches: 0,
                        complete: true,
                    });
                }
                KekState::Retired => {
                    return Err(KekError::Mismatch(format!(
                        "this KEK is the retired KEK version {}; rotate to a fresh KEK",
                        v.version
                    ))
                    .into());
                }
                KekState::Pending => {}
            }
        }
        let pending = self.storage.begin_rotation(&check).await?;
        if pending.check_value != check {
            return Err(KekError::Mismatch(format!(
                "a rotation to KEK version {} is in progress with a different KEK; re-run it with that KEK",
                pending.version
            ))
            .into());
        }
        let target = pending.version;
        info!(from = active, to = target, "KEK rotation started");
        given.insert(target, new);
        // Keys created from now on need no re-wrapping.
        self.write_version.store(target, Ordering::SeqCst);
        let (report, _) = self.run_rotation(active, target, options).await?;
        if report.complete {
            // Dropping the old KEKs zeroizes them: from here on only the new KEK is needed.
            given.keep_only(target);
        }
        Ok(report)
    }

    /// The resumable batch loop of every rotation: re-wraps the live keys of every version the
    /// provider holds (other than `target`) under `target`, then switches the active version.
    /// Keys of versions the provider lacks stay as they are (unreadable). The caller holds
    /// `self.rotation`. Also says whether this call made `target` active.
    async fn run_rotation(
        &self,
        active: u32,
        target: u32,
        options: RotateOptions,
    ) -> Result<(RotationReport, bool), VaultError> {
        let batch_size = options.batch_size.clamp(1, BATCH_KEYS_MAX);
        let mut sources: Vec<Epoch> = self.keks.epochs()?.into_iter().filter(|e| *e != target).collect();
        let mut report = RotationReport {
            from_version: active,
            to_version: target,
            rewrapped: 0,
            batches: 0,
            complete: false,
        };
        let switched = loop {
            let rows = self.storage.rotation_batch(&sources, batch_size).await?;
            if rows.is_empty() {
                match self
                    .storage
                    .finish_rotation(target, &sources, self.clock.now_micros())
                    .await?
                {
                    Finish::Switched { from } => {
                        report.from_version = from;
                        break true;
                    }
                    Finish::AlreadyActive => break false,
                    // Another process inserted a key with the old version meanwhile: go again.
                    Finish::KeysLeft => continue,
                }
            }
            if options.max_batches.is_some_and(|m| report.batches >= m) {
                info!(to = target, rewrapped = report.rewrapped, "KEK rotation paused");
                return Ok((report, false));
            }
            let mut batch = Vec::with_capacity(rows.len());
            for row in rows {
                let dek = match self.unwrap_key(row.id, &row.key)? {
                    Ok(dek) => dek,
                    // Destroyed since `sources` was read: its keys stay as they are
                    // (unreadable), and are not asked for again.
                    Err(epoch) => {
                        sources.retain(|e| *e != epoch);
                        continue;
                    }
                };
                batch.push(Rewrap {
                    id: row.id,
                    from_version: row.key.kek_version,
                    to: WrappedKey {
                        kek_version: target,
                        wrapped: self.keks.wrap(target, row.id, &dek)?,
                    },
                });
            }
            report.rewrapped += self.storage.rewrap(&batch).await?;
            report.batches += 1;
            debug!(to = target, batch = report.batches, "KEK rotation batch committed");
        };
        // Old-KEK copies of re-wrapped keys linger in dead rows / WAL frames until purged.
        self.storage.purge().await?;
        self.write_version.store(target, Ordering::SeqCst);
        report.complete = true;
        info!(
            from = report.from_version,
            to = target,
            rewrapped = report.rewrapped,
            "KEK rotation complete"
        );
        Ok((report, switched))
    }

    /// After another process finished a rotation our write version is retired: adopt the
    /// version now to write with (for a provider that manages epochs, settling the versions
    /// as at open).
    async fn refresh_write_version(&self) -> Result<(), VaultError> {
        if self.keks.manages_epochs() {
            let settled = settle_versions(&*self.storage, &*self.keks, &*self.clock).await?;
            self.write_version.store(settled.write_version, Ordering::SeqCst);
            return Ok(());
        }
        let versions = self.storage.kek_versions().await?;
        let held: BTreeSet<Epoch> = self.keks.epochs()?.into_iter().collect();
        let active = active_version(&versions)?;
        let pending = versions
            .iter()
            .find(|v| v.state == KekState::Pending)
            .map(|v| v.version);
        match pending.filter(|p| held.contains(p)) {
            Some(p) => self.write_version.store(p, Ordering::SeqCst),
            None if held.contains(&active) => self.write_version.store(active, Ordering::SeqCst),
            None => {
                return Err(KekError::Mismatch(format!(
                    "the vault's KEK was rotated to version {active} by another process; restart with the new KEK"
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Generates and wraps one fresh key per request, with the current write KEK version.
    fn wrap_new(&self, keys: &[NewKey]) -> Result<(u32, Vec<FreshKey>), VaultError> {
        let version = self.write_version.load(Ordering::SeqCst);
        let mut out = Vec::with_capacity(keys.len());
        for _ in keys {
            let id = KeyId::new_random();
            let dek = Dek::generate()?;
            let wrapped = WrappedKey {
                kek_version: version,
                wrapped: self.keks.wrap(version, id, &dek)?,
            };
            out.push(FreshKey { id, dek, wrapped });
        }
        Ok((version, out))
    }

    /// Unwraps a stored key. `Ok(Err(epoch))`: the provider manages epochs and no longer holds
    /// this one, so the key is unreadable. A process given KEKs by hand that lacks a version
    /// gets an error instead: the KEK exists, this process was just not given it.
    fn unwrap_key(&self, id: KeyId, key: &WrappedKey) -> Result<Result<Dek, Epoch>, VaultError> {
        match self.keks.unwrap(key.kek_version, id, &key.wrapped) {
            Ok(dek) => Ok(Ok(dek)),
            Err(KekError::EpochMissing { epoch, .. }) if self.keks.manages_epochs() => Ok(Err(epoch)),
            Err(KekError::EpochMissing { .. }) => Err(KekError::Mismatch(format!(
                "key {id} is wrapped with KEK version {}, which this process does not hold",
                key.kek_version
            ))
            .into()),
            Err(KekError::Unwrap { .. }) => Err(VaultError::Corrupt(format!(
                "key {id} does not unwrap under KEK version {}",
                key.kek_version
            ))),
            Err(other) => Err(other.into()),
        }
    }
}

/// Whether the KEK handed in is the one of version `v`: by the legacy check value, or (for a
/// version recorded by a provider) by unwrapping its check value.
fn given_matches(v: &KekVersionRow, kek: &Kek) -> bool {
    if v.check_value.len() == LEGACY_CHECK_LEN {
        return v.check_value == kek.check_value();
    }
    kek.unwrap_dek(KeyId(uuid::Uuid::nil()), &v.check_value)
        .is_ok_and(|dek| dek.expose_secret() == &[0u8; crate::KEY_LEN])
}

fn active_version(versions: &[KekVersionRow]) -> Result<u32, VaultError> {
    versions
        .iter()
        .find(|v| v.state == KekState::Active)
        .map(|v| v.version)
        .ok_or_else(|| VaultError::Corrupt("no active KEK version".into()))
}

/// Brings the recorded versions and the provider together and picks the version to write
/// with. See [`LocalVault::open_with_provider`] for the rules; KEKs handed in (a provider that
/// does not manage epochs) keep the strict rules of old: every version a key is wrapped with
/// must be held, and the vault refuses to open otherwise.
async fn settle_versions(
    storage: &dyn Storage,
    keks: &dyn KekProvider,
    clock: &dyn VaultClock,
) -> Result<Settled, VaultError> {
    let manages = keks.manages_epochs();
    let mut replaced_by = None;
    for _ in 0..crate::limits::EPOCH_OPEN_ATTEMPTS {
        // Versions first, then the provider's epochs: an epoch is created in the provider
        // before it is recorded, so every recorded epoch that exists is seen.
        let versions = storage.kek_versions().await?;
        let held: BTreeSet<Epoch> = keks.epochs()?.into_iter().collect();
        if versions.is_empty() {
            // A fresh epoch, never an old one's KEK; KEKs handed in: the latest.
            let (version, check) = if manages {
                epochs::make_epoch(keks, 0)?
            } else {
                let latest = *held
                    .last()
                    .ok_or_else(|| KekError::Mismatch("no KEK was given".into()))?;
                (latest, epochs::check_value(keks, latest)?)
            };
            storage.init_kek(version, &check, clock.now_micros()).await?;
            // Read back: another process may have recorded its own epoch first.
            continue;
        }
        for v in &versions {
            if v.destroyed_at.is_none() && held.contains(&v.version) {
                verify_version(storage, keks, v).await?;
            }
        }
        let in_use = storage.keys_per_version().await?;
        let unreadable: Vec<(Epoch, u64)> = in_use.iter().copied().filter(|(v, _)| !held.contains(v)).collect();
        let active = versions.iter().find(|v| v.state == KekState::Active).map(|v| v.version);
        let pending = versions
            .iter()
            .find(|v| v.state == KekState::Pending)
            .map(|v| v.version);
        if !manages {
            let write_version = match (pending.filter(|p| held.contains(p)), active) {
                (Some(p), _) => p,
                (None, Some(a)) if held.contains(&a) => a,
                _ => {
                    return Err(KekError::Mismatch(
                        "the supplied KEK does not match this vault's active KEK (wrong KEK file?)".into(),
                    )
                    .into());
                }
            };
            if let Some((missing, _)) = unreadable.first() {
                return Err(KekError::Mismatch(match pending {
                    Some(p) => format!(
                        "a KEK rotation to version {p} is in progress and keys are wrapped with KEK \
                         version {missing}: supply both the old and the new KEK, or re-run rotate-kek"
                    ),
                    None => format!("keys are wrapped with KEK version {missing}, whose KEK was not supplied"),
                })
                .into());
            }
            return Ok(Settled {
                write_version,
                unreadable,
                replaced_by,
            });
        }
        match (pending, active) {
            (Some(p), _) if held.contains(&p) => {
                return Ok(Settled {
                    write_version: p,
                    unreadable,
                    replaced_by,
                });
            }
            (Some(p), Some(a)) if held.contains(&a) => {
                // The rotation's target is gone: give it up (keys already re-wrapped to it are
                // unreadable); the next tick starts a fresh one.
                error!(
                    kek_epoch = p,
                    "the pending KEK epoch is missing from the provider; rotation abandoned"
                );
                storage.abandon_pending(p, clock.now_micros()).await?;
            }
            (None, Some(a)) if held.contains(&a) => {
                return Ok(Settled {
                    write_version: a,
                    unreadable,
                    replaced_by,
                });
            }
            _ => {
                // Only a vault database older than the provider (restored from a backup: the
                // provider moved on to later epochs since) replaces its active epoch. A provider
                // with nothing newer is the wrong one (another keys directory or token), or lost
                // its KEKs: starting an epoch would leave every key unreadable, so refuse.
                let newest_recorded = versions.iter().map(|v| v.version).max().unwrap_or(0);
                if !held.iter().any(|e| *e > newest_recorded) {
                    return Err(KekError::Mismatch(format!(
                        "the {} KEK provider holds none of this vault's live KEK epochs (active: {}) and \
                         no later one: is it the wrong keys directory or token? Refusing to open, since \
                         a new epoch would leave every key unreadable",
                        keks.kind(),
                        active.map_or_else(|| "none".to_owned(), |a| a.to_string()),
                    ))
                    .into());
                }
                let now = clock.now_micros();
                let make = |max_db: u32| epochs::make_epoch(keks, max_db);
                if storage.replace_active(active, pending, now, &make).await? {
                    let versions = storage.kek_versions().await?;
                    replaced_by = versions.iter().find(|v| v.state == KekState::Active).map(|v| v.version);
                }
            }
        }
    }
    Err(VaultError::Unavailable(
        "the vault's KEK versions kept changing while opening; retry".into(),
    ))
}

/// Checks that the provider's KEK of a version it holds is the one the version was recorded
/// with: refuses (a wrong keys directory or token) with [`KekError::Mismatch`].
async fn verify_version(storage: &dyn Storage, keks: &dyn KekProvider, v: &KekVersionRow) -> Result<(), VaultError> {
    let matches = if v.check_value.len() == LEGACY_CHECK_LEN {
        match keks.legacy_check_value(v.version)? {
            Some(check) => subtle::ConstantTimeEq::ct_eq(&check[..], &v.check_value[..]).into(),
            // The provider cannot compute the legacy check (an HSM): unwrap a key instead.
            None => match storage.sample_key(v.version).await? {
                Some(row) => match keks.unwrap(v.version, row.id, &row.key.wrapped) {
                    Ok(_) => true,
                    Err(KekError::Unwrap { .. }) => false,
                    Err(KekError::EpochMissing { .. }) => true,
                    Err(e) => return Err(e.into()),
                },
                None => true,
            },
        }
    } else {
        match keks.unwrap(v.version, KeyId(uuid::Uuid::nil()), &v.check_value) {
            Ok(dek) => dek.expose_secret() == &[0u8; crate::KEY_LEN],
            Err(KekError::Unwrap { .. }) => false,
            // Destroyed since the epochs were listed: nothing to compare.
            Err(KekError::EpochMissing { .. }) => true,
            Err(e) => return Err(e.into()),
        }
    };
    if matches {
        Ok(())
    } else {
        Err(KekError::Mismatch(format!(
            "the {} KEK provider's KEK for epoch {} does not match this vault's KEK version {} \
             (wrong keys directory or token?)",
            keks.kind(),
            v.version,
            v.version
        ))
        .into())
    }
}

fn check_batch(len: usize) -> Result<(), VaultError> {
    if len > BATCH_KEYS_MAX {
        return Err(VaultError::InvalidInput(format!(
            "at most {BATCH_KEYS_MAX} keys per call, got {len}"
        )));
    }
    Ok(())
}

#[async_trait]
impl KeyVault for LocalVault {
    async fn create_keys(&self, keys: &[NewKey]) -> Result<Vec<(KeyId, Dek)>, VaultError> {
        check_batch(keys.len())?;
        for k in keys {
            validate_new_key(k)?;
        }
        // A stream asked for twice must be asked for with one subject; refused here, before
        // storage, so that both engines answer a batch alike whatever else is wrong with it.
        let mut subjects: HashMap<&str, Option<&str>> = HashMap::with_capacity(keys.len());
        for k in keys {
            let first = *subjects.entry(&k.stream).or_insert(k.subject.as_deref());
            check_existing(&k.stream, k.subject.as_deref(), first, false)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // At most one retry: the first attempt may race a rotation finished elsewhere.
        for attempt in 0..2 {
            let (version, fresh) = self.wrap_new(keys)?;
            let rows: Vec<NewRow<'_>> = keys
                .iter()
                .zip(&fresh)
                .map(|(k, fresh)| NewRow {
                    id: fresh.id,
                    stream: &k.stream,
                    subject: k.subject.as_deref(),
                    wrapped: fresh.wrapped.clone(),
                })
                .collect();
            let created = match self.storage.create_keys(&rows, version).await? {
                CreateResult::Done(created) => created,
                CreateResult::KekVersionRetired if attempt == 0 => {
                    self.refresh_write_version().await?;
                    continue;
                }
                CreateResult::KekVersionRetired => {
                    return Err(VaultError::Unavailable(
                        "KEK version changed twice during one create; retry".into(),
                    ));
                }
            };
            let mut out = Vec::with_capacity(keys.len());
            let mut new_ids = Vec::new();
            for ((c, FreshKey { dek, .. }), k) in created.into_iter().zip(fresh).zip(keys) {
                match c {
                    Created::Inserted(id) => {
                        new_ids.push(id);
                        out.push((id, dek));
                    }
                    // Our freshly generated DEK is dropped (zeroized) unused.
                    Created::Existing(id, wrapped) => match self.unwrap_key(id, &wrapped)? {
                        Ok(existing) => out.push((id, existing)),
                        Err(epoch) => {
                            return Err(VaultError::KeyUnreadable {
                                stream: k.stream.clone(),
                                epoch,
                            });
                        }
                    },
                }
            }
            if !new_ids.is_empty() {
                info!(key_ids = ?new_ids, "keys created");
            }
            return Ok(out);
        }
        Err(VaultError::Internal("create_keys retry loop exhausted".into()))
    }

    async fn fetch_keys(&self, ids: &[KeyId]) -> Result<Vec<(KeyId, KeyLookup)>, VaultError> {
        check_batch(ids.len())?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let stored = self.storage.fetch_keys(ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, s) in ids.iter().zip(stored) {
            let lookup = match s {
                Stored::Live(w) => match self.unwrap_key(*id, &w)? {
                    Ok(dek) => KeyLookup::Live(dek),
                    Err(epoch) => KeyLookup::Unreadable { epoch },
                },
                Stored::Destroyed => KeyLookup::Destroyed,
                Stored::NotFound => KeyLookup::NotFound,
            };
            out.push((*id, lookup));
        }
        debug!(count = ids.len(), "keys fetched");
        Ok(out)
    }

    async fn destroy_subject_keys(&self, subject: &str) -> Result<Vec<KeyId>, VaultError> {
        validate_subject(subject)?;
        let ids = self.storage.destroy_subject(subject).await?;
        // Purge even when nothing was destroyed now: a previous call may have committed the
        // deletion and then failed before its purge; this retry completes it.
        self.storage.purge().await?;
        info!(subject, key_ids = ?ids, "subject keys destroyed");
        Ok(ids)
    }

    async fn destroy_stream_key(&self, stream: &str) -> Result<Option<KeyId>, VaultError> {
        validate_stream(stream)?;
        let id = self.storage.destroy_stream(stream).await?;
        self.storage.purge().await?;
        if let Some(id) = id {
            info!(key_id = %id, "stream key destroyed");
        }
        Ok(id)
    }

    async fn stats(&self) -> Result<VaultStats, VaultError> {
        let counts = self.storage.counts().await?;
        let kek_version = active_version(&self.storage.kek_versions().await?)?;
        let held: BTreeSet<Epoch> = self.keks.epochs()?.into_iter().collect();
        let keys_unreadable = self
            .storage
            .keys_per_version()
            .await?
            .iter()
            .filter(|(v, _)| !held.contains(v))
            .map(|(_, n)| n)
            .sum();
        Ok(VaultStats {
            live_keys: counts.live,
            destroyed_keys: counts.destroyed,
            kek_version,
            subject_keys_live: counts.subject_live,
            subject_keys_destroyed: counts.subject_destroyed,
            keys_unreadable,
            kek_provider: self.keks.kind().to_string(),
        })
    }

    async fn kek_epochs(&self) -> Result<Vec<EpochInfo>, VaultError> {
        let versions = self.storage.kek_versions().await?;
        let live: HashMap<Epoch, u64> = self.storage.keys_per_version().await?.into_iter().collect();
        let held: BTreeSet<Epoch> = self.keks.epochs()?.into_iter().collect();
        Ok(versions
            .iter()
            .map(|v| {
                let live_keys = live.get(&v.version).copied().unwrap_or(0);
                let state = match v.state {
                    _ if v.destroyed_at.is_some() => EpochState::Destroyed,
                    KekState::Retired if held.contains(&v.version) || live_keys == 0 => EpochState::Retired,
                    _ if !held.contains(&v.version) => EpochState::Missing,
                    KekState::Active => EpochState::Active,
                    KekState::Pending => EpochState::Pending,
                    KekState::Retired => EpochState::Retired,
                };
                EpochInfo {
                    epoch: v.version,
                    state,
                    activated_at: v.activated_at,
                    superseded_at: v.superseded_at,
                    destroyed_at: v.destroyed_at,
                    live_keys,
                }
            })
            .collect())
    }

    async fn health(&self) -> Result<(), VaultError> {
        self.storage.health().await
    }
}
