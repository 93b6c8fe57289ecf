//! What a process found true of some items under a change token, and may take as still true
//! while the token is unchanged (`change_tokens`, migration 0013).
//!
//! Two checks asked of the database again and again cost more than the work they guard: which
//! of a page's field keys belong to forgotten subjects (every read that opens personal fields),
//! and which of a group's subjects have an erasure request (every group write that names
//! subjects). Each can only turn true by one kind of change — a field key marked forgotten, a
//! subject erasure filed — and that change sets its token to a new random value in the same
//! transaction. So an item found clear (not forgotten, no request) after the token was read
//! stays clear while the token reads the same: a check reads the token (one row, or a column of
//! a read it makes anyway) and asks the database only about items not yet found clear under
//! it. A new token forgets every earlier finding.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Mutex;

use crate::limits::FIELD_INDEX_CACHE_ENTRIES_MAX;

pub(crate) struct TokenChecks<K> {
    checked: Mutex<Checked<K>>,
}

struct Checked<K> {
    /// The token the items were found clear under (`None`: none yet).
    token: Option<i64>,
    clear: HashSet<K>,
}

impl<K> Default for TokenChecks<K> {
    fn default() -> Self {
        Self {
            checked: Mutex::new(Checked {
                token: None,
                clear: HashSet::new(),
            }),
        }
    }
}

impl<K: Hash + Eq> TokenChecks<K> {
    /// Of `items`, those not found clear under `token`: the database must be asked about them.
    pub(crate) fn unchecked<'i, Q>(&self, token: i64, items: impl IntoIterator<Item = &'i Q>) -> Vec<&'i Q>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'i,
    {
        let checked = self.lock();
        if checked.token != Some(token) {
            return items.into_iter().collect();
        }
        items
            .into_iter()
            .filter(|item| !checked.clear.contains(*item))
            .collect()
    }

    /// Records items the database found clear, asked after `token` was read.
    pub(crate) fn found_clear(&self, token: i64, items: impl IntoIterator<Item = K>) {
        let mut checked = self.lock();
        if checked.token != Some(token) || checked.clear.len() >= FIELD_INDEX_CACHE_ENTRIES_MAX {
            // A new token voids every earlier finding; a full set starts over (bounded memory).
            checked.token = Some(token);
            checked.clear.clear();
        }
        checked.clear.extend(items);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Checked<K>> {
        // Each use leaves the set consistent: a panic cannot leave it half-updated.
        self.checked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new random token for `change_tokens`.
pub(crate) fn new_token() -> Result<i64, crate::error::StorageError> {
    let mut token = [0u8; 8];
    getrandom::fill(&mut token)
        .map_err(|e| crate::error::StorageError::Corrupt(format!("no random change token: {e}")))?;
    Ok(i64::from_le_bytes(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_found_clear_are_not_asked_about_again_until_the_token_changes() {
        let checks = TokenChecks::<u32>::default();
        assert_eq!(checks.unchecked(7, &[1, 2]), [&1, &2]);
        checks.found_clear(7, [1]);
        assert_eq!(checks.unchecked(7, &[1, 2]), [&2]);
        // A change since: every item is asked about again, and earlier findings are void.
        assert_eq!(checks.unchecked(8, &[1, 2]), [&1, &2]);
        checks.found_clear(8, [2]);
        assert_eq!(checks.unchecked(8, &[1, 2]), [&1]);
        // A token seen before, after another (a restored database): nothing carries over.
        assert_eq!(checks.unchecked(7, &[2]), [&2]);
    }
}
