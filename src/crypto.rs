//! Payload encryption and the key cache: the only module of Lethe that handles key bytes.
//!
//! Every user event's `data` is sealed with its stream's DEK in the contract's envelope format
//! (`lethe_keyvault::envelope`), with associated data binding it to its stream and event id.
//! DEKs come from the key vault and are kept in a bounded in-memory cache so that reads do not
//! call the vault per event; a page of reads needs at most one vault call for its misses.
//!
//! Every user event's personal fields are sealed likewise with their subjects' field keys.
//!
//! Cached keys are prepared ciphers (`DekCipher`: key schedule and digest sub-key, wiped on
//! drop), so evicting one wipes it once no page holds it. Keys of shredded streams and
//! forgotten subjects are *revoked*: evicted and refused re-entry, so a vault fetch that was in flight while a
//! forget ran cannot put a destroyed key back into the cache.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use lethe_keyvault::{Dek, KeyId, KeyLookup, KeyVault, NewKey, envelope};
use lru::LruCache;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::coalesce::{Batched, Coalescer};
use crate::collections::FastMap;
use crate::error::Error;
use crate::limits::REVOKED_KEYS_MAX;

/// What the cache knows about a key.
#[derive(Clone)]
pub(crate) enum KeyState {
    Live(LiveKey),
    Destroyed,
    /// The vault holds the key wrapped only by a KEK epoch it no longer has: read like a
    /// destroyed key (`data: null`), refused for appends as `key_unreadable`.
    Unreadable {
        epoch: u32,
    },
}

/// What the vault holds for a key (see [`Keyring::vault_states`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VaultKeyState {
    Live,
    Destroyed,
    /// The vault does not know the id.
    Missing,
    /// The vault holds the key, wrapped only by a KEK epoch it no longer has (destroyed after
    /// its retention, or a vault restored from an old backup): its data cannot be read.
    Unreadable,
}

impl VaultKeyState {
    fn of(lookup: KeyLookup) -> Self {
        match lookup {
            KeyLookup::Live(_) => VaultKeyState::Live,
            KeyLookup::Destroyed => VaultKeyState::Destroyed,
            KeyLookup::NotFound => VaultKeyState::Missing,
            KeyLookup::Unreadable { .. } => VaultKeyState::Unreadable,
        }
    }
}

/// A live DEK, prepared once (AES key schedule, digest sub-key) when it enters the cache, so
/// that pages touching many keys — a catch-up over the personal fields of a thousand subjects —
/// do not prepare each key again for every page. The raw DEK is not kept; the prepared key is
/// wiped when its last handle drops.
pub(crate) type LiveKey = Arc<DekCipher>;

fn prepare(dek: &Dek) -> LiveKey {
    DekCipher::new_shared(dek)
}

/// Counters of the key cache (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// DEKs by id: the vault, with a bounded cache in front.
pub(crate) struct Keyring {
    vault: std::sync::Arc<dyn KeyVault>,
    creator: Coalescer<KeyCreation>,
    cache: Mutex<LruCache<KeyId, LiveKey>>,
    revoked: Mutex<LruCache<KeyId, ()>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Keyring {
    pub(crate) fn new(vault: std::sync::Arc<dyn KeyVault>, cache_keys_max: usize) -> Self {
        let capacity = NonZeroUsize::new(cache_keys_max).unwrap_or(NonZeroUsize::MIN);
        let revoked = NonZeroUsize::new(REVOKED_KEYS_MAX).unwrap_or(NonZeroUsize::MIN);
        Self {
            creator: Coalescer::start(KeyCreation { vault: vault.clone() }),
            vault,
            // `sparse`: tables that grow with their contents (see `collections`).
            cache: Mutex::new(LruCache::sparse(capacity)),
            revoked: Mutex::new(LruCache::sparse(revoked)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub(crate) fn vault(&self) -> &dyn KeyVault {
        self.vault.as_ref()
    }

    /// Creates (or, idempotently, returns) the keys of streams about to be written for the
    /// first time: one vault call for all of them.
    ///
    /// Concurrent calls are coalesced into one vault call (like group commit for appends), so
    /// that many appends creating new streams do not each wait for a vault transaction.
    pub(crate) async fn create(&self, keys: &[NewKey]) -> Result<Vec<(KeyId, LiveKey)>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let created = self.creator.call(keys.to_vec()).await?;
        Ok(created
            .into_iter()
            .map(|(id, dek)| {
                let live = prepare(&dek);
                self.remember(id, &live);
                (id, live)
            })
            .collect())
    }

    /// Looks keys up: cache first, then one vault call for every miss.
    pub(crate) async fn lookup(&self, ids: &[KeyId]) -> Result<FastMap<KeyId, KeyState>, Error> {
        let mut found = FastMap::with_capacity_and_hasher(ids.len(), Default::default());
        let mut missing = Vec::new();
        {
            let mut cache = self.lock_cache();
            for id in ids {
                if found.contains_key(id) {
                    continue;
                }
                match cache.get(id) {
                    Some(live) => {
                        found.insert(*id, KeyState::Live(live.clone()));
                    }
                    None if self.is_revoked(id) => {
                        found.insert(*id, KeyState::Destroyed);
                    }
                    None => {
                        if !missing.contains(id) {
                            missing.push(*id);
                        }
                    }
                }
            }
        }
        self.hits.fetch_add((found.len()) as u64, Ordering::Relaxed);
        if missing.is_empty() {
            return Ok(found);
        }
        self.misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
        let fetched = self.vault.fetch_keys(&missing).await.map_err(Error::from_vault)?;
        for (id, lookup) in fetched {
            let state = match lookup {
                KeyLookup::Live(dek) => {
                    let live = prepare(&dek);
                    self.remember(id, &live);
                    KeyState::Live(live)
                }
                KeyLookup::Destroyed => {
                    self.revoke(&[id]);
                    KeyState::Destroyed
                }
                KeyLookup::NotFound => {
                    return Err(Error::Corrupt {
                        detail: format!("key {id} is unknown to the key vault"),
                    });
                }
                // Wrapped only by a destroyed KEK epoch: gone for good, like a destroyed key, so
                // its events read as `data: null`; not revoked, since a vault opened with the
                // wrong keys directory by mistake answers the same until it is restarted right.
                // Reported by reconciliation, `/readyz` and the metrics.
                KeyLookup::Unreadable { epoch } => {
                    tracing::warn!(key_id = %id, epoch, "key wrapped only by a destroyed KEK epoch: its data cannot be read");
                    KeyState::Unreadable { epoch }
                }
            };
            found.insert(id, state);
        }
        Ok(found)
    }

    /// What the vault itself holds for each key — never the cache, and nothing is cached: for
    /// comparing the vault with the event database (the journal's replay, reconciliation), which
    /// may be about to destroy these keys. One vault call per
    /// [`BATCH_KEYS_MAX`](lethe_keyvault::limits::BATCH_KEYS_MAX) keys; a live key's bytes are
    /// dropped (zeroized) at once.
    pub(crate) async fn vault_states(&self, ids: &[KeyId]) -> Result<Vec<(KeyId, VaultKeyState)>, Error> {
        let mut states = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(lethe_keyvault::limits::BATCH_KEYS_MAX) {
            let fetched = self.vault.fetch_keys(chunk).await.map_err(Error::from_vault)?;
            states.extend(fetched.into_iter().map(|(id, lookup)| (id, VaultKeyState::of(lookup))));
        }
        Ok(states)
    }

    /// Whether the vault has forgotten `subject`, asked with the stream bound to it whose key
    /// the vault destroyed: asking to create that key again is refused `subject_forgotten` if
    /// the subject was forgotten (the vault checks that first), and `key_destroyed` if only the
    /// stream's key was destroyed; either way nothing is created. `None`: the key is live after
    /// all (its DEK, returned, is dropped at once).
    pub(crate) async fn vault_forgot_subject(&self, stream: &str, subject: &str) -> Result<Option<bool>, Error> {
        let probe = NewKey {
            stream: stream.to_owned(),
            subject: Some(subject.to_owned()),
        };
        match self.vault.create_keys(std::slice::from_ref(&probe)).await {
            Ok(_) => Ok(None),
            Err(lethe_keyvault::VaultError::SubjectForgotten { .. }) => Ok(Some(true)),
            Err(lethe_keyvault::VaultError::KeyDestroyed { .. }) => Ok(Some(false)),
            Err(e) => Err(Error::from_vault(e)),
        }
    }

    /// Evicts (and so zeroizes) keys of shredded streams, and refuses to cache them again.
    pub(crate) fn revoke(&self, ids: &[KeyId]) {
        {
            let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                revoked.put(*id, ());
            }
        }
        let mut cache = self.lock_cache();
        for id in ids {
            cache.pop(id);
        }
    }

    /// Drops every cached key (zeroizing it).
    pub(crate) fn clear(&self) {
        self.lock_cache().clear();
    }

    pub(crate) fn stats(&self) -> KeyCacheStats {
        KeyCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Number of keys currently cached.
    pub(crate) fn cached_keys(&self) -> usize {
        self.lock_cache().len()
    }

    fn remember(&self, id: KeyId, key: &LiveKey) {
        if self.is_revoked(&id) {
            return;
        }
        self.lock_cache().put(id, key.clone());
    }

    fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, LruCache<KeyId, LiveKey>> {
        // A panic while holding the lock cannot leave the cache inconsistent (each operation is
        // one LruCache call), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Key creation for many callers at once: their keys in one vault call.
struct KeyCreation {
    vault: std::sync::Arc<dyn KeyVault>,
}

#[async_trait]
impl Batched for KeyCreation {
    type Request = Vec<NewKey>;
    type Answer = Vec<(KeyId, Dek)>;
    /// The vault's own per-call limit.
    const WEIGHT_MAX: usize = lethe_keyvault::limits::BATCH_KEYS_MAX;

    fn weight(keys: &Vec<NewKey>) -> usize {
        keys.len()
    }

    async fn call(&self, requests: &[&Vec<NewKey>]) -> Result<Vec<Vec<(KeyId, Dek)>>, Error> {
        let all: Vec<NewKey> = requests.iter().flat_map(|keys| keys.iter().cloned()).collect();
        let mut created = self
            .vault
            .create_keys(&all)
            .await
            .map_err(Error::from_vault)?
            .into_iter();
        Ok(requests
            .iter()
            .map(|keys| created.by_ref().take(keys.len()).collect())
            .collect())
    }
}

/// A DEK prepared to seal, open and digest many events (`envelope::DekCipher`): the key cache
/// holds keys so prepared, so the AES key schedule and the digest sub-key are computed once per
/// key as it enters the cache, not per event or per page. Wiped on drop, like the `Dek`.
pub(crate) use lethe_keyvault::envelope::{DekCipher, Nonces};

/// Seals an event's serialized data with its stream's DEK.
pub(crate) fn seal_event(
    dek: &DekCipher,
    nonces: &mut Nonces,
    stream: &str,
    event_id: &Uuid,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    dek.seal_from(nonces, &envelope::event_aad(stream, event_id), plaintext)
        .map_err(|e| Error::Corrupt {
            detail: format!("cannot encrypt event {event_id}: {e}"),
        })
}

/// Opens an event's sealed data. A ciphertext moved to another row, or tampered with, fails
/// here and is reported as corruption, never returned.
pub(crate) fn open_event(
    dek: &DekCipher,
    stream: &str,
    event_id: &Uuid,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    dek.open(&envelope::event_aad(stream, event_id), sealed)
        .map_err(|e| Error::Corrupt {
            detail: format!("event {event_id} in stream {stream:?} does not decrypt: {e}"),
        })
}

/// The idempotency digest of an event's content, keyed by its stream's DEK so that it reveals
/// nothing once the DEK is destroyed.
pub(crate) fn keyed_digest(dek: &DekCipher, content: &[u8]) -> [u8; 32] {
    dek.keyed_digest(content)
}

/// The prefix of the associated data of a personal field (see [`field_aad`]).
const FIELD_AAD_PREFIX: &[u8] = b"lethe:f1";
/// How a sealed personal field starts inside the event's (stream-sealed) data:
/// `lethe:f1:<field key id>:<base64 of the envelope>`.
pub(crate) const SEALED_FIELD_PREFIX: &str = "lethe:f1:";

/// The associated data of a personal field:
/// `"lethe:f1" ‖ u32-be len(stream) ‖ stream ‖ event id (16 bytes) ‖ u32-be len(pointer) ‖ pointer`.
/// Binding stream, event and pointer means a sealed field copied to another field, event or
/// stream fails to open.
pub(crate) fn field_aad(stream: &str, event_id: &Uuid, pointer: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(FIELD_AAD_PREFIX.len() + 8 + stream.len() + 16 + pointer.len());
    aad.extend_from_slice(FIELD_AAD_PREFIX);
    // Stream names and pointers are bounded far below u32::MAX.
    aad.extend_from_slice(&u32::try_from(stream.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(stream.as_bytes());
    aad.extend_from_slice(event_id.as_bytes());
    aad.extend_from_slice(&u32::try_from(pointer.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(pointer.as_bytes());
    aad
}

/// Seals one personal field's value (its JSON text) with its subject's field key, as the
/// string that takes the value's place: [`SEALED_FIELD_PREFIX`], the key id, `:`, and the
/// envelope in standard base64.
pub(crate) fn seal_field(
    key: &DekCipher,
    key_id: KeyId,
    nonces: &mut Nonces,
    stream: &str,
    event_id: &Uuid,
    pointer: &str,
    plaintext: &[u8],
) -> Result<String, Error> {
    use base64::Engine as _;
    let sealed = key
        .seal_from(nonces, &field_aad(stream, event_id, pointer), plaintext)
        .map_err(|e| Error::Corrupt {
            detail: format!("cannot encrypt a personal field of event {event_id}: {e}"),
        })?;
    // Written in place rather than with `format!`: an append seals every field of every event.
    let mut text = String::with_capacity(SEALED_FIELD_PREFIX.len() + 37 + sealed.len().div_ceil(3) * 4);
    text.push_str(SEALED_FIELD_PREFIX);
    text.push_str(key_id.0.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    text.push(':');
    base64::engine::general_purpose::STANDARD.encode_string(sealed, &mut text);
    Ok(text)
}

/// The field key id of a sealed personal field, if `value` looks like one.
pub(crate) fn sealed_field_key_id(value: &str) -> Option<KeyId> {
    let rest = value.strip_prefix(SEALED_FIELD_PREFIX)?;
    let (id, _) = rest.split_once(':')?;
    Uuid::parse_str(id).ok().map(KeyId)
}

/// The field key id and envelope of a sealed personal field, if `value` is one.
pub(crate) fn parse_sealed_field(value: &str) -> Option<(KeyId, Vec<u8>)> {
    use base64::Engine as _;
    let id = sealed_field_key_id(value)?;
    let (_, sealed) = value.strip_prefix(SEALED_FIELD_PREFIX)?.split_once(':')?;
    let sealed = base64::engine::general_purpose::STANDARD.decode(sealed).ok()?;
    Some((id, sealed))
}

/// Opens a sealed personal field: its value's JSON text.
pub(crate) fn open_field(
    key: &DekCipher,
    stream: &str,
    event_id: &Uuid,
    pointer: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    key.open(&field_aad(stream, event_id, pointer), sealed)
        .map_err(|e| Error::Corrupt {
            detail: format!(
                "personal field {pointer:?} of event {event_id} in stream {stream:?} does not decrypt: {e}"
            ),
        })
}
