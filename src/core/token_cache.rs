//! API tokens verified lately, so that a busy client costs no database query per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::TOKEN_CACHE_ENTRIES_MAX;
use crate::model::TokenRecord;

/// Tokens verified in the last `ttl`, by hash. Only valid tokens are cached: an unknown one
/// is looked up every time, so guessing fills nothing.
pub(crate) struct TokenCache {
    verified: Mutex<HashMap<[u8; 32], (TokenRecord, Instant)>>,
    ttl: Duration,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            verified: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    pub(crate) fn get(&self, hash: &[u8; 32]) -> Option<TokenRecord> {
        let verified = self.lock();
        let (record, at) = verified.get(hash)?;
        (at.elapsed() < self.ttl).then(|| record.clone())
    }

    pub(crate) fn put(&self, record: TokenRecord) {
        let mut verified = self.lock();
        if verified.len() >= TOKEN_CACHE_ENTRIES_MAX {
            verified.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if verified.len() >= TOKEN_CACHE_ENTRIES_MAX {
                verified.clear();
            }
        }
        verified.insert(record.hash, (record, Instant::now()));
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (TokenRecord, Instant)>> {
        // Each operation is one map call: a panic elsewhere cannot leave it half-changed.
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}
