//! Which field keys this process found not forgotten, and as of which forget token.
//!
//! A read that opens personal fields asks the event database which of the page's field keys
//! belong to forgotten subjects (the source of truth: a process may have missed a revocation).
//! Asked for every page, that query cost a catch-up more than opening the fields did. The
//! erasure step that marks a key forgotten also sets a new random token
//! (`field_key_forgets`, in the same transaction), so a key found not forgotten under a token
//! stays so while the token is unchanged: the read reads the token (one row) and asks only
//! about the keys it has not checked under it. A new token forgets every check.

use std::collections::HashSet;
use std::sync::Mutex;

use lethe_keyvault::KeyId;

use crate::limits::FIELD_INDEX_CACHE_ENTRIES_MAX;

#[derive(Default)]
pub(crate) struct FieldKeyChecks {
    checked: Mutex<Checked>,
}

#[derive(Default)]
struct Checked {
    /// The token the keys were checked under (`None`: none yet).
    token: Option<i64>,
    /// Keys found not forgotten under `token`.
    live: HashSet<KeyId>,
}

impl FieldKeyChecks {
    /// Of `keys`, those not found live under `token`, which the database must be asked about.
    pub(crate) fn unchecked(&self, token: i64, keys: impl IntoIterator<Item = KeyId>) -> Vec<KeyId> {
        let checked = self.lock();
        if checked.token != Some(token) {
            return keys.into_iter().collect();
        }
        keys.into_iter().filter(|key| !checked.live.contains(key)).collect()
    }

    /// Records keys the database found not forgotten, asked after `token` was read.
    pub(crate) fn found_live(&self, token: i64, keys: impl IntoIterator<Item = KeyId>) {
        let mut checked = self.lock();
        if checked.token != Some(token) || checked.live.len() >= FIELD_INDEX_CACHE_ENTRIES_MAX {
            // A new token voids every earlier check; a full set starts over (bounded memory).
            checked.token = Some(token);
            checked.live.clear();
        }
        checked.live.extend(keys);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Checked> {
        // Each use leaves the set consistent: a panic cannot leave it half-updated.
        self.checked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u128) -> KeyId {
        KeyId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn keys_found_live_are_not_asked_about_again_until_the_token_changes() {
        let checks = FieldKeyChecks::default();
        assert_eq!(checks.unchecked(7, [key(1), key(2)]), [key(1), key(2)]);
        checks.found_live(7, [key(1)]);
        assert_eq!(checks.unchecked(7, [key(1), key(2)]), [key(2)]);
        // A forget since: every key is asked about again, and earlier checks are void.
        assert_eq!(checks.unchecked(8, [key(1), key(2)]), [key(1), key(2)]);
        checks.found_live(8, [key(2)]);
        assert_eq!(checks.unchecked(8, [key(1), key(2)]), [key(1)]);
        // A token seen before, after another (a restored database): nothing carries over.
        assert_eq!(checks.unchecked(7, [key(2)]), [key(2)]);
    }
}
