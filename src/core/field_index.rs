//! What this process knows of subjects' field keys already, so that appends carrying personal
//! fields neither ask the vault for a subject's field key id nor write its key row again each
//! time. (The field index proper is written with every event that seals fields: nothing to
//! remember about it.)
//!
//! Both facts never change once true: a subject's field key id is fixed (the vault answers the
//! same key for a subject every time, until it refuses it for good), and key rows are never
//! removed. So nothing here is ever invalidated; the caches are only bounded.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lethe_keyvault::KeyId;
use lru::LruCache;

use crate::limits::FIELD_INDEX_CACHE_ENTRIES_MAX;

pub(crate) struct FieldIndexCache {
    /// Subject → its field key id.
    key_ids: Mutex<LruCache<String, KeyId>>,
    /// Subjects whose key row is known to be stored.
    keys_recorded: Mutex<LruCache<String, ()>>,
}

impl FieldIndexCache {
    pub(crate) fn new() -> Self {
        let capacity = NonZeroUsize::new(FIELD_INDEX_CACHE_ENTRIES_MAX).unwrap_or(NonZeroUsize::MIN);
        Self {
            key_ids: Mutex::new(LruCache::new(capacity)),
            keys_recorded: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub(crate) fn key_of(&self, subject: &str) -> Option<KeyId> {
        lock(&self.key_ids).get(subject).copied()
    }

    pub(crate) fn learn(&self, subject: &str, id: KeyId) {
        lock(&self.key_ids).put(subject.to_owned(), id);
    }

    /// Whether the subject's key row is known stored.
    pub(crate) fn key_recorded(&self, subject: &str) -> bool {
        lock(&self.keys_recorded).contains(subject)
    }

    /// Subjects whose key rows an append just committed (so the rows exist).
    pub(crate) fn remember(&self, keys: Vec<String>) {
        if !keys.is_empty() {
            let mut recorded = lock(&self.keys_recorded);
            for subject in keys {
                recorded.put(subject, ());
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each use is one LruCache call: a panic cannot leave it inconsistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
