//! The in-process vault: generates, wraps, unwraps and destroys DEKs on top of a [`Storage`].
//! Used directly by Lethe for `sqlite://` and `postgres://` vault URLs, and by the vault server.
//!
//! Architecture invariant: KEKs live only in this module's key ring (memory), DEKs are only
//! ever handed out unwrapped to the caller, and the vault keeps no DEK cache of its own — a
//! destroyed key is gone from the vault the moment `destroy_*` returns.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use tracing::{debug, info, warn};

use crate::KeyVault;
use crate::error::VaultError;
use crate::kek::{Kek, KekError};
use crate::keys::{Dek, KeyId, KeyLookup, NewKey, VaultStats, validate_new_key, validate_stream, validate_subject};
use crate::storage::postgres::PgStorage;
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{
    CreateResult, Created, KekState, KekVersionRow, NewRow, Rewrap, Storage, Stored, WrappedKey, check_existing,
};

use crate::limits::{BATCH_KEYS_MAX, ROTATION_BATCH_DEFAULT};

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

/// KEKs known to this process, by version, and the version new keys are wrapped with.
#[derive(Debug)]
struct KeyRing {
    keks: HashMap<u32, Kek>,
    write_version: u32,
}

pub struct LocalVault {
    storage: Box<dyn Storage>,
    ring: RwLock<KeyRing>,
    /// One rotation at a time in this process (the database serialises across processes).
    rotation: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for LocalVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalVault { .. }")
    }
}

impl LocalVault {
    /// Opens the vault at a `sqlite://` or `postgres://` URL. `kek` is the current KEK;
    /// `other_keks` may add the other side of an interrupted rotation (old or new KEK).
    pub async fn open(url: &str, kek: Kek, other_keks: Vec<Kek>) -> Result<LocalVault, VaultError> {
        let storage: Box<dyn Storage> = if url.starts_with("sqlite:") {
            Box::new(SqliteStorage::open(url).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Box::new(PgStorage::open(url).await?)
        } else {
            return Err(VaultError::InvalidInput(
                "a local vault URL starts with sqlite: or postgres://".into(),
            ));
        };
        LocalVault::with_storage(storage, kek, other_keks).await
    }

    async fn with_storage(storage: Box<dyn Storage>, kek: Kek, other_keks: Vec<Kek>) -> Result<LocalVault, VaultError> {
        // A fresh vault adopts the first KEK it is opened with as version 1.
        storage.init_kek(&kek.check_value()).await?;
        let versions = storage.kek_versions().await?;
        let mut keks = HashMap::new();
        for k in std::iter::once(kek).chain(other_keks) {
            match versions.iter().find(|v| v.check_value == k.check_value()) {
                Some(v) => {
                    keks.insert(v.version, k);
                }
                None => warn!("a supplied KEK matches no KEK version of this vault; ignored"),
            }
        }
        let ring = build_ring(&versions, keks)?;
        let in_use = storage.versions_in_use().await?;
        if let Some(missing) = in_use.iter().find(|v| !ring.keks.contains_key(v)) {
            let pending = versions.iter().find(|v| v.state == KekState::Pending);
            return Err(KekError::Mismatch(match pending {
                Some(p) => format!(
                    "a KEK rotation to version {} is in progress and keys are wrapped with KEK \
                     version {missing}: supply both the old and the new KEK, or re-run rotate-kek",
                    p.version
                ),
                None => format!("keys are wrapped with KEK version {missing}, whose KEK was not supplied"),
            })
            .into());
        }
        info!(kek_version = ring.write_version, "key vault opened");
        Ok(LocalVault {
            storage,
            ring: RwLock::new(ring),
            rotation: tokio::sync::Mutex::new(()),
        })
    }

    /// Re-wraps every live DEK under `new` and makes it the only KEK needed. See
    /// [`LocalVault::rotate_kek_with`].
    pub async fn rotate_kek(&self, new: Kek) -> Result<RotationReport, VaultError> {
        self.rotate_kek_with(new, RotateOptions::default()).await
    }

    /// Crash-safe KEK rotation. The new KEK is first recorded (by its check value) as the
    /// pending version; keys are then re-wrapped in batches, each its own transaction, each
    /// row carrying the version it is wrapped with, so at every instant every key is readable
    /// by a vault holding the old and the new KEK. When no key is left on another version the
    /// pending version becomes active and the old one retired in one transaction. Running it
    /// again with the same new KEK resumes (or, once finished, does nothing).
    pub async fn rotate_kek_with(&self, new: Kek, options: RotateOptions) -> Result<RotationReport, VaultError> {
        let batch_size = options.batch_size.clamp(1, BATCH_KEYS_MAX);
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
        {
            let mut ring = self.ring_write()?;
            ring.keks.insert(target, new);
            // Keys created from now on need no re-wrapping.
            ring.write_version = target;
        }
        let mut report = RotationReport {
            from_version: active,
            to_version: target,
            rewrapped: 0,
            batches: 0,
            complete: false,
        };
        loop {
            let rows = self.storage.rotation_batch(target, batch_size).await?;
            if rows.is_empty() {
                if self.storage.finish_rotation(target).await? {
                    break;
                }
                // Another process inserted a key with the old version meanwhile: go again.
                continue;
            }
            if options.max_batches.is_some_and(|m| report.batches >= m) {
                info!(to = target, rewrapped = report.rewrapped, "KEK rotation paused");
                return Ok(report);
            }
            let batch = {
                let ring = self.ring_read()?;
                let new_kek = ring
                    .keks
                    .get(&target)
                    .ok_or_else(|| VaultError::Internal("rotation target KEK vanished".into()))?;
                let mut batch = Vec::with_capacity(rows.len());
                for row in rows {
                    let dek = unwrap_with(&ring, row.id, &row.key)?;
                    batch.push(Rewrap {
                        id: row.id,
                        from_version: row.key.kek_version,
                        to: WrappedKey {
                            kek_version: target,
                            wrapped: new_kek.wrap_dek(row.id, &dek)?,
                        },
                    });
                }
                batch
            };
            report.rewrapped += self.storage.rewrap(&batch).await?;
            report.batches += 1;
            debug!(to = target, batch = report.batches, "KEK rotation batch committed");
        }
        // Old-KEK copies of re-wrapped keys linger in dead rows / WAL frames until purged.
        self.storage.purge().await?;
        {
            let mut ring = self.ring_write()?;
            // Dropping the old KEKs zeroizes them: from here on only the new KEK is needed.
            ring.keks.retain(|v, _| *v == target);
        }
        report.complete = true;
        info!(
            from = active,
            to = target,
            rewrapped = report.rewrapped,
            "KEK rotation complete"
        );
        Ok(report)
    }

    fn ring_read(&self) -> Result<std::sync::RwLockReadGuard<'_, KeyRing>, VaultError> {
        self.ring
            .read()
            .map_err(|_| VaultError::Internal("key ring lock poisoned".into()))
    }

    fn ring_write(&self) -> Result<std::sync::RwLockWriteGuard<'_, KeyRing>, VaultError> {
        self.ring
            .write()
            .map_err(|_| VaultError::Internal("key ring lock poisoned".into()))
    }

    /// After another process finished a rotation our write version is retired; adopt the new
    /// active version if we hold its KEK.
    async fn refresh_write_version(&self) -> Result<(), VaultError> {
        let versions = self.storage.kek_versions().await?;
        let active = active_version(&versions)?;
        let mut ring = self.ring_write()?;
        if ring.keks.contains_key(&active) {
            ring.write_version = active;
            Ok(())
        } else {
            Err(KekError::Mismatch(format!(
                "the vault's KEK was rotated to version {active} by another process; restart with the new KEK"
            ))
            .into())
        }
    }

    /// Generates and wraps one fresh key per request, with the current write KEK version.
    fn wrap_new(&self, keys: &[NewKey]) -> Result<(u32, Vec<FreshKey>), VaultError> {
        let ring = self.ring_read()?;
        let version = ring.write_version;
        let kek = ring
            .keks
            .get(&version)
            .ok_or_else(|| VaultError::Internal("write KEK missing from key ring".into()))?;
        let mut out = Vec::with_capacity(keys.len());
        for _ in keys {
            let id = KeyId::new_random();
            let dek = Dek::generate()?;
            let wrapped = WrappedKey {
                kek_version: version,
                wrapped: kek.wrap_dek(id, &dek)?,
            };
            out.push(FreshKey { id, dek, wrapped });
        }
        Ok((version, out))
    }
}

fn active_version(versions: &[KekVersionRow]) -> Result<u32, VaultError> {
    versions
        .iter()
        .find(|v| v.state == KekState::Active)
        .map(|v| v.version)
        .ok_or_else(|| VaultError::Corrupt("no active KEK version".into()))
}

fn build_ring(versions: &[KekVersionRow], keks: HashMap<u32, Kek>) -> Result<KeyRing, VaultError> {
    let active = active_version(versions)?;
    let pending = versions
        .iter()
        .find(|v| v.state == KekState::Pending)
        .map(|v| v.version);
    let write_version = match pending {
        Some(p) if keks.contains_key(&p) => p,
        _ if keks.contains_key(&active) => active,
        _ => {
            return Err(KekError::Mismatch(
                "the supplied KEK does not match this vault's active KEK (wrong KEK file?)".into(),
            )
            .into());
        }
    };
    Ok(KeyRing { keks, write_version })
}

fn unwrap_with(ring: &KeyRing, id: KeyId, key: &WrappedKey) -> Result<Dek, VaultError> {
    let kek = ring.keks.get(&key.kek_version).ok_or_else(|| {
        VaultError::from(KekError::Mismatch(format!(
            "key {id} is wrapped with KEK version {}, which this process does not hold",
            key.kek_version
        )))
    })?;
    kek.unwrap_dek(id, &key.wrapped).map_err(|_| {
        VaultError::Corrupt(format!(
            "key {id} does not unwrap under KEK version {}",
            key.kek_version
        ))
    })
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
            let ring = self.ring_read()?;
            let mut out = Vec::with_capacity(keys.len());
            let mut new_ids = Vec::new();
            for (c, FreshKey { dek, .. }) in created.into_iter().zip(fresh) {
                match c {
                    Created::Inserted(id) => {
                        new_ids.push(id);
                        out.push((id, dek));
                    }
                    // Our freshly generated DEK is dropped (zeroized) unused.
                    Created::Existing(id, wrapped) => out.push((id, unwrap_with(&ring, id, &wrapped)?)),
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
        let ring = self.ring_read()?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, s) in ids.iter().zip(stored) {
            let lookup = match s {
                Stored::Live(w) => KeyLookup::Live(unwrap_with(&ring, *id, &w)?),
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
        Ok(VaultStats {
            live_keys: counts.live,
            destroyed_keys: counts.destroyed,
            kek_version,
            subject_keys_live: counts.subject_live,
            subject_keys_destroyed: counts.subject_destroyed,
        })
    }

    async fn health(&self) -> Result<(), VaultError> {
        self.storage.health().await
    }
}
