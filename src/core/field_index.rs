//! What this process knows of subjects' field keys already, so that appends carrying personal
//! fields neither ask the vault for a subject's field key id nor write its key row again each
//! time. (The field index proper is written with every event that seals fields: nothing to
//! remember about it.)
//!
//! Both facts never change once true: a subject's field key id is fixed (the vault answers the
//! same key for a subject every time, until it refuses it for good), and key rows are never
//! removed. So nothing here is ever invalidated; the cache is only bounded.
//!
//! An append asks about all of its subjects under one lock ([`FieldIndexCache::known`]): it
//! names a couple of hundred at a time, and 8 appenders taking the lock once per subject spent
//! more time passing it between cores than looking anything up.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lethe_keyvault::KeyId;
use lru::LruCache;

use crate::limits::FIELD_INDEX_CACHE_ENTRIES_MAX;

/// What is known of one subject's field key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KnownKey {
    pub(crate) id: KeyId,
    /// Its key row is known to be stored in the event database.
    pub(crate) recorded: bool,
}

pub(crate) struct FieldIndexCache {
    /// Subject → its field key.
    keys: Mutex<LruCache<String, KnownKey>>,
}

impl FieldIndexCache {
    pub(crate) fn new() -> Self {
        let capacity = NonZeroUsize::new(FIELD_INDEX_CACHE_ENTRIES_MAX).unwrap_or(NonZeroUsize::MIN);
        Self {
            keys: Mutex::new(LruCache::sparse(capacity)),
        }
    }

    /// What is known of each subject's field key, in the order given.
    pub(crate) fn known(&self, subjects: &[&str]) -> Vec<Option<KnownKey>> {
        let mut keys = self.lock();
        subjects.iter().map(|subject| keys.get(*subject).copied()).collect()
    }

    /// Subjects' field key ids, learnt from the vault: a subject new to this cache (or whose
    /// id differs) is entered with its row not known stored; one already known keeps what is
    /// known of its row.
    pub(crate) fn learn(&self, learnt: &[(&str, KeyId)]) {
        let mut keys = self.lock();
        for (subject, id) in learnt {
            if keys.get(*subject).is_none_or(|known| known.id != *id) {
                keys.put(
                    (*subject).to_owned(),
                    KnownKey {
                        id: *id,
                        recorded: false,
                    },
                );
            }
        }
    }

    /// Subjects whose key rows an append just committed (so the rows exist).
    pub(crate) fn remember(&self, recorded: Vec<(String, KeyId)>) {
        if recorded.is_empty() {
            return;
        }
        let mut keys = self.lock();
        for (subject, id) in recorded {
            keys.put(subject, KnownKey { id, recorded: true });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, KnownKey>> {
        // Each use is a sequence of LruCache calls, each leaving it consistent: a panic cannot
        // leave it broken.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> KeyId {
        KeyId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_learnt_key_is_known_unrecorded_until_its_row_is_committed() {
        let cache = FieldIndexCache::new();
        assert_eq!(cache.known(&["a", "b"]), vec![None, None]);
        cache.learn(&[("a", id(1))]);
        assert_eq!(
            cache.known(&["a", "b"]),
            vec![
                Some(KnownKey {
                    id: id(1),
                    recorded: false
                }),
                None
            ]
        );
        cache.remember(vec![("a".to_owned(), id(1)), ("b".to_owned(), id(2))]);
        cache.learn(&[("a", id(1))]);
        assert_eq!(
            cache.known(&["b", "a"]),
            vec![
                Some(KnownKey {
                    id: id(2),
                    recorded: true
                }),
                Some(KnownKey {
                    id: id(1),
                    recorded: true
                })
            ],
            "learning a key again keeps what is known of its row"
        );
    }
}
