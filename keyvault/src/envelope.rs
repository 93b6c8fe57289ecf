//! The one ciphertext format, used for event payloads (keyed by a DEK) and for wrapped DEKs
//! (keyed by the KEK):
//!
//! ```text
//! 0x01 ‖ nonce (12 bytes, OS random) ‖ AES-256-GCM ciphertext (len = plaintext len) ‖ tag (16)
//! ```
//!
//! The associated data is the caller's: [`event_aad`] for events, the key id's 16 bytes for
//! wrapped DEKs. Changing the layout means a new version byte; `open` refuses versions it does
//! not know rather than guessing.
//!
//! Architecture invariant: this module never stores, logs or formats a key; errors say what
//! was wrong with the *ciphertext*, never what the key was.

use aes_gcm::aead::{AeadInPlace, KeyInit as _};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::{Dek, KEY_LEN, fill_random};

/// Format version byte.
pub const VERSION: u8 = 0x01;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Prefix of the associated data of an event payload.
pub const EVENT_AAD_PREFIX: &[u8] = b"lethe:v1";
/// Domain separator for the digest sub-key, so digests and ciphertexts never share a key.
const DIGEST_KEY_LABEL: &[u8] = b"lethe:v1:digest";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("unsupported ciphertext version {0:#04x}")]
    UnsupportedVersion(u8),
    #[error("ciphertext truncated: {len} bytes is shorter than the {OVERHEAD}-byte minimum")]
    Truncated { len: usize },
    #[error("ciphertext failed authentication (wrong key, wrong associated data, or tampered)")]
    Authentication,
    #[error("plaintext too large for AES-GCM")]
    TooLarge,
    #[error("OS random number generator failed")]
    Random,
}

/// Seals `plaintext` under `key`. Panics only if the OS random number generator fails (as
/// `OsRng` does): continuing without a fresh nonce would be worse than stopping. Use
/// [`try_seal`] to get that as an error instead.
pub fn seal(key: &Dek, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    match try_seal(key, aad, plaintext) {
        Ok(sealed) => sealed,
        // The message carries no key or plaintext material.
        Err(e) => panic!("envelope::seal failed: {e}"),
    }
}

/// [`seal`] that reports RNG failure (and absurd plaintext sizes) as an error.
pub fn try_seal(key: &Dek, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    seal_raw(key.expose_secret(), aad, plaintext)
}

/// Opens a sealed message. Any malformed input is an error, never a panic.
pub fn open(key: &Dek, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    open_raw(key.expose_secret(), aad, sealed)
}

/// HMAC-SHA256 of `msg` under a sub-key derived from the DEK:
/// `HMAC-SHA256(key = HMAC-SHA256(key = DEK, "lethe:v1:digest"), msg)`.
/// Lethe uses it for idempotency digests of plaintext; once the DEK is destroyed the digest
/// can no longer be recomputed or confirmed against a guess.
pub fn keyed_digest(key: &Dek, msg: &[u8]) -> [u8; 32] {
    let sub_key = Zeroizing::new(hmac_sha256(key.expose_secret(), DIGEST_KEY_LABEL));
    hmac_sha256(&sub_key[..], msg)
}

/// The associated data of an event payload:
/// `"lethe:v1" ‖ u32-be len(stream) ‖ stream ‖ event id (16 bytes)`.
/// Binding the stream and event id means a ciphertext copied to another row fails to open.
pub fn event_aad(stream: &str, event_id: &uuid::Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(EVENT_AAD_PREFIX.len() + 4 + stream.len() + 16);
    aad.extend_from_slice(EVENT_AAD_PREFIX);
    // Stream names are at most 200 chars, so the length always fits in a u32.
    let len = u32::try_from(stream.len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(stream.as_bytes());
    aad.extend_from_slice(event_id.as_bytes());
    aad
}

pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 keyed with the DEK's digest sub-key, ready for messages ([`keyed_digest`]).
fn digest_mac(key: &Dek) -> Hmac<Sha256> {
    let sub_key = Zeroizing::new(hmac_sha256(key.expose_secret(), DIGEST_KEY_LABEL));
    // HMAC accepts keys of any length, so this cannot fail.
    match <Hmac<Sha256> as KeyInit>::new_from_slice(&sub_key[..]) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

/// One DEK, ready to seal, open and digest many messages: the AES key schedule and the keyed
/// HMAC state of the digest sub-key are computed once instead of per message (for a page of
/// reads or an append of many events this was a large share of the CPU time). Same format and
/// results as [`try_seal`], [`open`] and [`keyed_digest`]. The AES key schedule and the HMAC
/// state are wiped on drop (the `zeroize` features of `aes` and `sha2`: the HMAC state is two
/// SHA-256 states, each wiped by its own `Drop`). The GHASH key `H = AES_K(0)` that the cipher
/// also holds is not: aes-gcm 0.10 does not wipe it (SECURITY.md, "Key lifecycle", "Use").
///
/// aes-gcm is 0.10 rather than 0.11 on purpose: 0.11's `aes` 0.9 takes its VAES-512 path on
/// CPUs with AVX-512 and sets up 512-bit round keys on every call, which made one seal of a
/// personal field (a few dozen bytes) take twice as long as with 0.10's AES-NI path.
pub struct DekCipher {
    cipher: Aes256Gcm,
    digest_mac: Hmac<Sha256>,
}

// The HMAC state is as good as the key: only cache it because SHA-256 states wipe themselves;
// and the AES key schedule is the key.
const _: fn() = || {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<sha2::block_api::Sha256VarCore>();
    wiped_on_drop::<aes::Aes256>();
};

impl DekCipher {
    /// Boxed, like [`Dek`]: the key schedule then stays in one place and is not copied around
    /// (leaving unwiped copies behind) when its owner moves.
    pub fn new(key: &Dek) -> Box<Self> {
        Box::new(Self {
            cipher: cipher(key.expose_secret()),
            digest_mac: digest_mac(key),
        })
    }

    /// [`DekCipher::new`] behind an `Arc`, for a cache that hands the prepared key to many
    /// readers at once (built in the `Arc`'s own allocation: converting a `Box` would copy the
    /// key schedule and leave the old allocation unwiped).
    pub fn new_shared(key: &Dek) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            cipher: cipher(key.expose_secret()),
            digest_mac: digest_mac(key),
        })
    }

    /// [`try_seal`] with this key.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        seal_with(&self.cipher, aad, plaintext)
    }

    /// [`DekCipher::seal`] with a nonce taken from `nonces` (many seals, one RNG call).
    pub fn seal_from(&self, nonces: &mut Nonces, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        seal_with_nonce(&self.cipher, nonces.take()?, aad, plaintext)
    }

    /// [`open`] with this key.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        open_with(&self.cipher, aad, sealed)
    }

    /// [`keyed_digest`] with this key.
    pub fn keyed_digest(&self, msg: &[u8]) -> [u8; 32] {
        let mut mac = self.digest_mac.clone();
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }
}

// Never shows key material.
impl std::fmt::Debug for DekCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DekCipher(..)")
    }
}

pub(crate) fn seal_raw(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    seal_with(&cipher(key), aad, plaintext)
}

fn seal_with(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce).map_err(|_| EnvelopeError::Random)?;
    seal_with_nonce(cipher, nonce, aad, plaintext)
}

/// Nonces for many seals, drawn from the OS RNG (never a userspace PRNG) in one call per
/// `count` instead of one call per message: an append of a hundred events with personal fields
/// seals hundreds of messages, and the system calls were a tenth of its CPU time. The bytes are
/// drawn on first use; each nonce is handed out once, and the pool is neither `Clone` nor
/// `Copy`, so no nonce can be handed out twice.
pub struct Nonces {
    bytes: Vec<u8>,
    next: usize,
}

impl Nonces {
    /// At most this many nonces are drawn at once (the pool draws again when it runs out).
    const DRAW_MAX: usize = 1024;

    /// A pool for about `count` seals.
    pub fn new(count: usize) -> Self {
        let len = count.clamp(1, Self::DRAW_MAX) * NONCE_LEN;
        Self {
            bytes: vec![0; len],
            next: len,
        }
    }

    fn take(&mut self) -> Result<[u8; NONCE_LEN], EnvelopeError> {
        if self.next + NONCE_LEN > self.bytes.len() {
            fill_random(&mut self.bytes).map_err(|_| EnvelopeError::Random)?;
            self.next = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&self.bytes[self.next..self.next + NONCE_LEN]);
        self.next += NONCE_LEN;
        Ok(nonce)
    }
}

fn seal_with_nonce(
    cipher: &Aes256Gcm,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    // Pre-sized so the buffer holding plaintext is never reallocated (which would leave an
    // un-zeroized copy behind); after encryption it only holds ciphertext.
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    let body_start = out.len();
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(nonce), aad, &mut out[body_start..])
        .map_err(|_| {
            // Only reachable for > 64 GiB plaintexts; scrub the plaintext we copied in.
            zeroize::Zeroize::zeroize(&mut out);
            EnvelopeError::TooLarge
        })?;
    out.extend_from_slice(&tag);
    Ok(out)
}

pub(crate) fn open_raw(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    open_with(&cipher(key), aad, sealed)
}

fn open_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let Some(&version) = sealed.first() else {
        return Err(EnvelopeError::Truncated { len: 0 });
    };
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    if sealed.len() < OVERHEAD {
        return Err(EnvelopeError::Truncated { len: sealed.len() });
    }
    let nonce_end = 1 + NONCE_LEN;
    let tag_start = sealed.len() - TAG_LEN;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[1..nonce_end]);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&sealed[tag_start..]);
    let mut plain = Zeroizing::new(sealed[nonce_end..tag_start].to_vec());
    cipher
        .decrypt_in_place_detached(&Nonce::from(nonce), aad, &mut plain[..], &Tag::from(tag))
        .map_err(|_| EnvelopeError::Authentication)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Dek {
        Dek::from_slice(&[7u8; 32]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn round_trip_and_layout() {
        let k = key();
        let sealed = seal(&k, b"aad", b"hello");
        assert_eq!(sealed.len(), OVERHEAD + 5);
        assert_eq!(sealed[0], VERSION);
        let opened = open(&k, b"aad", &sealed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&opened[..], b"hello");
    }

    #[test]
    fn dek_cipher_matches_the_free_functions() {
        let k = key();
        let c = DekCipher::new(&k);
        let sealed = c.seal(b"aad", b"hello").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            &open(&k, b"aad", &sealed).unwrap_or_else(|e| panic!("{e}"))[..],
            b"hello"
        );
        let sealed = seal(&k, b"aad", b"hi");
        assert_eq!(&c.open(b"aad", &sealed).unwrap_or_else(|e| panic!("{e}"))[..], b"hi");
        assert!(c.open(b"other", &sealed).is_err());
        assert_eq!(c.keyed_digest(b"m"), keyed_digest(&k, b"m"));
    }

    #[test]
    fn nonces_differ() {
        let k = key();
        assert_ne!(seal(&k, b"", b"x"), seal(&k, b"", b"x"));
    }

    /// A pool hands out each drawn nonce once, draws again when it runs out, and its seals
    /// open like any other.
    #[test]
    fn pooled_nonces_are_each_used_once() {
        let k = key();
        let c = DekCipher::new(&k);
        let mut nonces = Nonces::new(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let sealed = c
                .seal_from(&mut nonces, b"aad", b"hello")
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(seen.insert(sealed[1..1 + NONCE_LEN].to_vec()), "a nonce was used twice");
            assert_eq!(
                &open(&k, b"aad", &sealed).unwrap_or_else(|e| panic!("{e}"))[..],
                b"hello"
            );
        }
        let mut empty = Nonces::new(0);
        assert_ne!(empty.take().unwrap_or_else(|e| panic!("{e}")), [0u8; NONCE_LEN]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let k = key();
        let sealed = seal(&k, b"aad", b"hello");
        assert_eq!(open(&k, b"aad", &[]), Err(EnvelopeError::Truncated { len: 0 }));
        assert_eq!(
            open(&k, b"aad", &sealed[..10]),
            Err(EnvelopeError::Truncated { len: 10 })
        );
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert_eq!(open(&k, b"aad", &v2), Err(EnvelopeError::UnsupportedVersion(2)));
        assert_eq!(open(&k, b"other", &sealed), Err(EnvelopeError::Authentication));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(open(&k, b"aad", &flipped), Err(EnvelopeError::Authentication));
        let other = Dek::from_slice(&[8u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(open(&other, b"aad", &sealed), Err(EnvelopeError::Authentication));
        // Empty plaintext is valid.
        let empty = seal(&k, b"", b"");
        assert_eq!(open(&k, b"", &empty).map(|p| p.len()), Ok(0));
    }

    #[test]
    fn event_aad_layout() {
        let id = uuid::Uuid::from_bytes([9u8; 16]);
        let aad = event_aad("ab", &id);
        let mut want = b"lethe:v1".to_vec();
        want.extend_from_slice(&[0, 0, 0, 2]);
        want.extend_from_slice(b"ab");
        want.extend_from_slice(&[9u8; 16]);
        assert_eq!(aad, want);
    }

    #[test]
    fn keyed_digest_is_keyed_and_domain_separated() {
        let k = key();
        let d = keyed_digest(&k, b"m");
        assert_eq!(d, keyed_digest(&k, b"m"));
        let other = Dek::from_slice(&[8u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(d, keyed_digest(&other, b"m"));
        // Not a plain HMAC under the DEK itself.
        assert_ne!(d, hmac_sha256(k.expose_secret(), b"m"));
    }
}
