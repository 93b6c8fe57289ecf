//! The value types every vault speaks: key ids, DEKs, requests and answers.

use std::fmt;

use rand::TryRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::VaultError;
use crate::limits::NAME_LEN_MAX;

/// Length of a DEK and of a KEK in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// The id of one DEK: a random (v4) UUID, so ids reveal neither order nor creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub uuid::Uuid);

impl KeyId {
    pub fn new_random() -> Self {
        KeyId(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// A data-encryption key: 32 bytes, boxed so moves of the handle never copy the secret, and
/// zeroized when dropped. Cloning makes a second zeroize-on-drop copy.
#[derive(Clone)]
pub struct Dek {
    bytes: Box<[u8; KEY_LEN]>,
}

impl Dek {
    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Result<Dek, VaultError> {
        let mut dek = Dek {
            bytes: Box::new([0u8; KEY_LEN]),
        };
        fill_random(&mut dek.bytes[..])?;
        Ok(dek)
    }

    /// Builds a DEK from exactly 32 bytes (e.g. an unwrapped key). The caller owns zeroizing
    /// its own copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Dek, VaultError> {
        if bytes.len() != KEY_LEN {
            return Err(VaultError::Corrupt(format!(
                "a DEK must be {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let mut dek = Dek {
            bytes: Box::new([0u8; KEY_LEN]),
        };
        dek.bytes.copy_from_slice(bytes);
        Ok(dek)
    }

    /// The raw key. Named loudly so every use is easy to find in review.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

impl Drop for Dek {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for Dek {}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(<redacted>)")
    }
}

/// A request to create (or get back) the DEK of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKey {
    pub stream: String,
    #[serde(default)]
    pub subject: Option<String>,
}

/// The answer for one requested key id.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    Live(Dek),
    /// The key existed and was destroyed: its data is gone for good.
    Destroyed,
    /// The vault never had this id.
    NotFound,
}

/// Counts for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultStats {
    pub live_keys: u64,
    pub destroyed_keys: u64,
    /// The KEK version new keys are wrapped with.
    pub kek_version: u32,
}

/// Fills `buf` from the OS RNG (getrandom), never a userspace PRNG: keys and nonces must not
/// depend on a seeded generator's state surviving a fork or snapshot.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), VaultError> {
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .map_err(|e| VaultError::Internal(format!("OS random number generator failed: {e}")))
}

/// Names of streams and subjects: 1–200 chars of `[A-Za-z0-9_.:@-]`; a stream may start with
/// `$` (system streams). Checked here too so a remote caller cannot store junk in the vault.
pub(crate) fn validate_name(what: &str, name: &str, allow_dollar: bool) -> Result<(), VaultError> {
    let body = match (allow_dollar, name.strip_prefix('$')) {
        (true, Some(rest)) => rest,
        _ => name,
    };
    let ok = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidInput(format!(
            "{what} must be 1-{NAME_LEN_MAX} characters of [A-Za-z0-9_.:@-]"
        )))
    }
}

pub(crate) fn validate_stream(stream: &str) -> Result<(), VaultError> {
    validate_name("stream name", stream, true)
}

pub(crate) fn validate_subject(subject: &str) -> Result<(), VaultError> {
    validate_name("subject", subject, false)
}
