//! The ciphertext decoder under hostile input (proptest): `envelope::open` on truncated,
//! bit-flipped, wrong-version, wrong-key, wrong-associated-data and arbitrary bytes is always an
//! error — never a panic, never a plaintext. `PROPTEST_CASES` sets the number of cases (256 by
//! default; `scripts/reliability-long` runs more).

use lethe_keyvault::Dek;
use lethe_keyvault::envelope::{self, EnvelopeError, OVERHEAD, VERSION, event_aad};
use proptest::prelude::*;

fn dek(bytes: &[u8; 32]) -> Dek {
    Dek::from_slice(bytes).expect("32 bytes")
}

fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..512)
}

fn aad() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64)
}

proptest! {
    #[test]
    fn sealed_messages_open_to_their_plaintext(key in any::<[u8; 32]>(), aad in aad(), plain in plaintext()) {
        let key = dek(&key);
        let sealed = envelope::seal(&key, &aad, &plain);
        prop_assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        prop_assert_eq!(sealed[0], VERSION);
        let opened = envelope::open(&key, &aad, &sealed).expect("opens");
        prop_assert_eq!(&opened[..], &plain[..]);
    }

    #[test]
    fn truncated_messages_are_refused(key in any::<[u8; 32]>(), aad in aad(), plain in plaintext(), cut in any::<prop::sample::Index>()) {
        let key = dek(&key);
        let sealed = envelope::seal(&key, &aad, &plain);
        let keep = cut.index(sealed.len()); // 0 ..= len - 1 bytes
        let result = envelope::open(&key, &aad, &sealed[..keep]);
        prop_assert!(result.is_err(), "a {keep}-byte prefix of {} opened", sealed.len());
    }

    #[test]
    fn any_flipped_bit_is_refused(key in any::<[u8; 32]>(), aad in aad(), plain in plaintext(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let key = dek(&key);
        let mut sealed = envelope::seal(&key, &aad, &plain);
        let i = at.index(sealed.len());
        sealed[i] ^= 1 << bit;
        let result = envelope::open(&key, &aad, &sealed);
        if i == 0 {
            prop_assert_eq!(result.err(), Some(EnvelopeError::UnsupportedVersion(sealed[0])));
        } else {
            prop_assert_eq!(result.err(), Some(EnvelopeError::Authentication));
        }
    }

    #[test]
    fn an_unknown_version_byte_is_refused(key in any::<[u8; 32]>(), plain in plaintext(), version in any::<u8>()) {
        prop_assume!(version != VERSION);
        let key = dek(&key);
        let mut sealed = envelope::seal(&key, b"aad", &plain);
        sealed[0] = version;
        prop_assert_eq!(envelope::open(&key, b"aad", &sealed).err(), Some(EnvelopeError::UnsupportedVersion(version)));
    }

    #[test]
    fn other_associated_data_is_refused(key in any::<[u8; 32]>(), plain in plaintext(), stream in "[a-z0-9-]{1,40}", other in "[a-z0-9-]{1,40}", id in any::<u128>(), other_id in any::<u128>()) {
        prop_assume!(stream != other || id != other_id);
        let key = dek(&key);
        let (id, other_id) = (uuid::Uuid::from_u128(id), uuid::Uuid::from_u128(other_id));
        let sealed = envelope::seal(&key, &event_aad(&stream, &id), &plain);
        prop_assert_eq!(
            envelope::open(&key, &event_aad(&other, &other_id), &sealed).err(),
            Some(EnvelopeError::Authentication)
        );
    }

    #[test]
    fn another_key_is_refused(key in any::<[u8; 32]>(), other in any::<[u8; 32]>(), aad in aad(), plain in plaintext()) {
        prop_assume!(key != other);
        let sealed = envelope::seal(&dek(&key), &aad, &plain);
        prop_assert_eq!(envelope::open(&dek(&other), &aad, &sealed).err(), Some(EnvelopeError::Authentication));
    }

    #[test]
    fn arbitrary_bytes_never_open(key in any::<[u8; 32]>(), aad in aad(), bytes in proptest::collection::vec(any::<u8>(), 0..256), versioned in any::<bool>()) {
        let mut bytes = bytes;
        if versioned && !bytes.is_empty() {
            bytes[0] = VERSION;
        }
        prop_assert!(envelope::open(&dek(&key), &aad, &bytes).is_err());
    }
}
