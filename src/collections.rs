//! Hash maps and caches for the hot paths, where an append or a page of reads hashes every
//! subject and key id it touches, hundreds of times per call.
//!
//! - [`FastMap`] / [`FastSet`]: std's maps with foldhash (hashbrown's default hasher, which the
//!   `lru` caches already use) instead of SipHash, which cost as much as the lookups
//!   themselves. Seeded at random per process, like SipHash.
//! - [`bounded_lru`]: an LRU cache whose table grows with its contents up to its bound.
//!   `LruCache::new` allocates the table for the bound at once: a cache bounded at 100,000
//!   entries holding a thousand spreads them over megabytes, and every lookup missed the CPU
//!   caches.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// An LRU cache of at most `capacity` entries, allocated as it fills.
pub(crate) fn bounded_lru<K: Hash + Eq, V>(capacity: NonZeroUsize) -> LruCache<K, V> {
    let mut cache = LruCache::unbounded();
    // Nothing to evict from an empty cache: this only sets the bound.
    cache.resize(capacity);
    cache
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_lru_evicts_the_least_recently_used_beyond_its_bound() {
        let mut cache = bounded_lru(NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN));
        cache.put("a", 1);
        cache.put("b", 2);
        assert_eq!(cache.get(&"a"), Some(&1));
        cache.put("c", 3);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"b"), None, "b was the least recently used");
        assert_eq!(cache.get(&"a"), Some(&1));
        assert_eq!(cache.get(&"c"), Some(&3));
    }
}
