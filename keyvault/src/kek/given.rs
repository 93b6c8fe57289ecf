//! [`GivenKeks`]: KEKs handed in from outside (`LETHE_KEK`, `LETHE_KEK_FILE`, the KEKs given to
//! `LocalVault::open`), each matched to the vault's KEK version it belongs to.
//!
//! The operator owns these KEKs: this provider cannot create or destroy an epoch, so a vault
//! using it has no automatic epochs and is rotated by hand (`rotate-kek`), which hands in the
//! next KEK with [`GivenKeks::insert`].
//!
//! Architecture invariant: the KEKs stay in this process's memory only, zeroized when dropped
//! (when a rotation makes them unneeded, or with the vault); nothing here prints them.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Epoch, Kek, KekError, KekProvider};
use crate::keys::{Dek, KeyId};

const KIND: &str = "static";

/// KEKs handed in from outside, by epoch (the vault's KEK version).
#[derive(Debug, Default)]
pub struct GivenKeks {
    keks: RwLock<BTreeMap<Epoch, Kek>>,
}

impl GivenKeks {
    /// The given KEKs, each with the epoch (KEK version) it was matched to.
    pub fn new(keks: impl IntoIterator<Item = (Epoch, Kek)>) -> GivenKeks {
        GivenKeks {
            keks: RwLock::new(keks.into_iter().collect()),
        }
    }

    /// Hands in the KEK of `epoch` (the target of a manual rotation), replacing any held.
    pub fn insert(&self, epoch: Epoch, kek: Kek) {
        self.write().insert(epoch, kek);
    }

    /// Drops (and so zeroizes) every KEK but the one of `epoch`: after a rotation only the
    /// new KEK is needed.
    pub(crate) fn keep_only(&self, epoch: Epoch) {
        self.write().retain(|e, _| *e == epoch);
    }

    /// Whether a KEK is held for `epoch`.
    pub fn holds(&self, epoch: Epoch) -> bool {
        self.read().contains_key(&epoch)
    }

    // A poisoned lock is taken over: the map holds whole keys only, so a panic elsewhere
    // cannot have left it half-changed.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Epoch, Kek>> {
        self.keks.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<Epoch, Kek>> {
        self.keks.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl KekProvider for GivenKeks {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn manages_epochs(&self) -> bool {
        false
    }

    fn epochs(&self) -> Result<Vec<Epoch>, KekError> {
        Ok(self.read().keys().copied().collect())
    }

    fn create_epoch(&self, _epoch: Epoch) -> Result<(), KekError> {
        Err(KekError::Unsupported {
            provider: KIND,
            what: "create a KEK epoch (KEKs handed in are rotated by hand: rotate-kek)",
        })
    }

    fn destroy_epoch(&self, _epoch: Epoch) -> Result<(), KekError> {
        Err(KekError::Unsupported {
            provider: KIND,
            what: "destroy a KEK epoch (KEKs handed in are destroyed by their operator)",
        })
    }

    fn wrap(&self, epoch: Epoch, id: KeyId, dek: &Dek) -> Result<Vec<u8>, KekError> {
        let keks = self.read();
        let kek = keks
            .get(&epoch)
            .ok_or(KekError::EpochMissing { provider: KIND, epoch })?;
        // Sealing 32 bytes fails only for want of randomness (a nonce).
        kek.wrap_dek(id, dek).map_err(|_| KekError::Random)
    }

    fn unwrap(&self, epoch: Epoch, id: KeyId, wrapped: &[u8]) -> Result<Dek, KekError> {
        let keks = self.read();
        let kek = keks
            .get(&epoch)
            .ok_or(KekError::EpochMissing { provider: KIND, epoch })?;
        kek.unwrap_dek(id, wrapped).map_err(|_| KekError::Unwrap { epoch })
    }

    fn legacy_check_value(&self, epoch: Epoch) -> Result<Option<[u8; 32]>, KekError> {
        Ok(self.read().get(&epoch).map(Kek::check_value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(seed: u8) -> Kek {
        Kek::from_slice(&[seed; 32]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn wraps_per_epoch_and_cannot_manage_epochs() {
        let given = GivenKeks::new([(1, kek(1)), (3, kek(3))]);
        assert_eq!(given.epochs().ok(), Some(vec![1, 3]));
        assert!(!given.manages_epochs());
        assert!(matches!(given.create_epoch(4), Err(KekError::Unsupported { .. })));
        assert!(matches!(given.destroy_epoch(1), Err(KekError::Unsupported { .. })));

        let id = KeyId::new_random();
        let dek = Dek::from_slice(&[7; 32]).unwrap_or_else(|e| panic!("{e}"));
        let wrapped = given.wrap(3, id, &dek).unwrap_or_else(|e| panic!("{e}"));
        let back = given.unwrap(3, id, &wrapped).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.expose_secret(), dek.expose_secret());
        assert!(matches!(
            given.unwrap(1, id, &wrapped),
            Err(KekError::Unwrap { epoch: 1 })
        ));
        assert!(matches!(
            given.unwrap(2, id, &wrapped),
            Err(KekError::EpochMissing { epoch: 2, .. })
        ));
        assert_eq!(given.legacy_check_value(1).ok().flatten(), Some(kek(1).check_value()));

        given.insert(4, kek(4));
        given.keep_only(4);
        assert_eq!(given.epochs().ok(), Some(vec![4]));
        assert!(!format!("{given:?}").contains("4, 4"));
    }
}
