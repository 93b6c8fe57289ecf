//! What this process knows of the field index already, so that appends carrying personal
//! fields neither ask the vault for a subject's field key id nor write the index rows again
//! each time.
//!
//! Both facts never change once true: a subject's field key id is fixed (the vault answers the
//! same key for a subject every time, until it refuses it for good), and index rows are never
//! removed. So nothing here is ever invalidated; the caches are only bounded.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lethe_keyvault::KeyId;
use lru::LruCache;

use crate::limits::FIELD_INDEX_CACHE_ENTRIES_MAX;

pub(crate) struct FieldIndexCache {
    /// Subject → its field key id.
    key_ids: Mutex<LruCache<String, KeyId>>,
    /// (subject, stream) pairs known to be in the index (with the subject's key row).
    recorded: Mutex<LruCache<(String, String), ()>>,
}

impl FieldIndexCache {
    pub(crate) fn new() -> Self {
        let capacity = NonZeroUsize::new(FIELD_INDEX_CACHE_ENTRIES_MAX).unwrap_or(NonZeroUsize::MIN);
        Self {
            key_ids: Mutex::new(LruCache::new(capacity)),
            recorded: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub(crate) fn key_of(&self, subject: &str) -> Option<KeyId> {
        lock(&self.key_ids).get(subject).copied()
    }

    pub(crate) fn learn(&self, subject: &str, id: KeyId) {
        lock(&self.key_ids).put(subject.to_owned(), id);
    }

    pub(crate) fn is_recorded(&self, subject: &str, stream: &str) -> bool {
        lock(&self.recorded).contains(&(subject.to_owned(), stream.to_owned()))
    }

    /// Pairs an append just committed (so their rows exist).
    pub(crate) fn remember(&self, pairs: Vec<(String, String)>) {
        if pairs.is_empty() {
            return;
        }
        let mut recorded = lock(&self.recorded);
        for pair in pairs {
            recorded.put(pair, ());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each use is one LruCache call: a panic cannot leave it inconsistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
