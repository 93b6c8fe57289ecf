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
    /// Subjects whose key row is known to be stored.
    keys_recorded: Mutex<LruCache<String, ()>>,
    /// `subject \n stream` pairs known to be in the index (a name holds no line break), for
    /// engines that keep a row per pair (`Storage::field_index_by_pair`).
    streams_recorded: Mutex<LruCache<String, ()>>,
}

impl FieldIndexCache {
    pub(crate) fn new() -> Self {
        let capacity = NonZeroUsize::new(FIELD_INDEX_CACHE_ENTRIES_MAX).unwrap_or(NonZeroUsize::MIN);
        Self {
            key_ids: Mutex::new(LruCache::new(capacity)),
            keys_recorded: Mutex::new(LruCache::new(capacity)),
            streams_recorded: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub(crate) fn key_of(&self, subject: &str) -> Option<KeyId> {
        lock(&self.key_ids).get(subject).copied()
    }

    pub(crate) fn learn(&self, subject: &str, id: KeyId) {
        lock(&self.key_ids).put(subject.to_owned(), id);
    }

    /// Whether the subject's key row, and the pair of subject and stream, are known stored.
    /// With no stream (an engine that keeps no pair rows) the pair counts as stored.
    pub(crate) fn recorded(&self, subject: &str, stream: Option<&str>) -> (bool, bool) {
        (
            lock(&self.keys_recorded).contains(subject),
            stream.is_none_or(|stream| lock(&self.streams_recorded).contains(&pair(subject, stream))),
        )
    }

    /// What an append just committed (so its rows exist): subjects' key rows and pairs.
    pub(crate) fn remember(&self, keys: Vec<String>, streams: Vec<(String, String)>) {
        if !keys.is_empty() {
            let mut recorded = lock(&self.keys_recorded);
            for subject in keys {
                recorded.put(subject, ());
            }
        }
        if !streams.is_empty() {
            let mut recorded = lock(&self.streams_recorded);
            for (subject, stream) in streams {
                recorded.put(pair(&subject, &stream), ());
            }
        }
    }
}

fn pair(subject: &str, stream: &str) -> String {
    let mut pair = String::with_capacity(subject.len() + 1 + stream.len());
    pair.push_str(subject);
    pair.push('\n');
    pair.push_str(stream);
    pair
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each use is one LruCache call: a panic cannot leave it inconsistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
