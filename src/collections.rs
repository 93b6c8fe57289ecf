//! Hash maps for the hot paths, where an append or a page of reads hashes every subject and key
//! id it touches, hundreds of times per call: std's maps with foldhash (hashbrown's default
//! hasher, which the `lru` caches keyed by the same ids already use) instead of SipHash, which
//! cost as much as the lookups themselves. foldhash is seeded at random per process but is not
//! a keyed cryptographic hash: it resists collision flooding far less than SipHash, so it is
//! used only for maps bounded by one append or one page.
//!
//! (The LRU caches beside these maps are made with `LruCache::sparse`, whose table grows with
//! its contents: `LruCache::new` allocates the whole bound at once, and a cache bounded at
//! 100,000 entries holding a thousand spread them over megabytes, so every lookup missed the
//! CPU caches.)

use std::collections::{HashMap, HashSet};

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;
