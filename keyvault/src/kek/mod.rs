//! Key-encryption keys: the [`Kek`] value, and the [`KekProvider`]s that hold a KEK per
//! *epoch* (the vault's KEK version) and wrap and unwrap DEKs with it.
//!
//! A provider owns where KEKs live and where wrapping happens: the keys directory (`file`), an
//! HSM token through PKCS#11 (`pkcs11`: the KEK never leaves the token), or KEKs handed in from
//! outside (`LETHE_KEK`, `LETHE_KEK_FILE`: the operator manages them, no automatic epochs).
//!
//! Architecture invariant: a KEK is never stored in the vault's database; only a check value
//! per epoch is (a legacy `HMAC-SHA256(KEK, "lethe:v1:kek-check")`, or a DEK-sized block of
//! zeros wrapped under the epoch's KEK with the nil key id as associated data), which
//! recognises a KEK without revealing it.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::envelope::{self, EnvelopeError};
use crate::keys::{Dek, KEY_LEN, KeyId, fill_random};

mod file;
mod given;
mod pkcs11;

pub use file::FileKeks;
pub use given::GivenKeks;
pub use pkcs11::{
    DEFAULT_LABEL_PREFIX, PKCS11_LABEL_PREFIX_SETTING, PKCS11_MODULE_SETTING, PKCS11_PIN_FILE_SETTING,
    PKCS11_SLOT_SETTING, PKCS11_TOKEN_SETTING, Pkcs11Config, Pkcs11Keks,
};

/// A KEK epoch: the vault's KEK version number. Epoch 1 is the first KEK a vault was opened
/// with; each rotation starts the next one.
pub type Epoch = u32;

/// Where the KEKs of a vault's epochs live, and where wrapping happens.
///
/// Every method is blocking and fast (a file read, an in-process PKCS#11 call); the vault
/// calls them from its own tasks. Implementations never log, return or `Debug`-print key
/// bytes or PINs.
pub trait KekProvider: Send + Sync + fmt::Debug + 'static {
    /// `"file"`, `"pkcs11"` or `"static"`: for logs, reports and errors.
    fn kind(&self) -> &'static str;
    /// Whether [`KekProvider::create_epoch`] and [`KekProvider::destroy_epoch`] work. False for
    /// KEKs handed in from outside, which the operator rotates by hand (`rotate-kek`).
    fn manages_epochs(&self) -> bool;
    /// The epochs this provider holds a KEK for, ascending.
    fn epochs(&self) -> Result<Vec<Epoch>, KekError>;
    /// Creates a fresh random KEK for `epoch` inside the provider. Idempotent and safe against
    /// a concurrent call for the same epoch (another process sharing the provider): if the
    /// epoch exists it is kept, never replaced.
    fn create_epoch(&self, epoch: Epoch) -> Result<(), KekError>;
    /// Destroys the KEK of `epoch` for good (file deleted and its directory synced; HSM object
    /// destroyed) and drops any copy held in memory. Idempotent.
    fn destroy_epoch(&self, epoch: Epoch) -> Result<(), KekError>;
    /// Wraps a DEK under the epoch's KEK, in the envelope format (`0x01 ‖ nonce ‖ ciphertext ‖
    /// tag`, AES-256-GCM), associated data = the key id's 16 bytes.
    fn wrap(&self, epoch: Epoch, id: KeyId, dek: &Dek) -> Result<Vec<u8>, KekError>;
    /// Unwraps what [`KekProvider::wrap`] produced for the same epoch and key id.
    /// [`KekError::EpochMissing`] if the provider holds no KEK for the epoch.
    fn unwrap(&self, epoch: Epoch, id: KeyId, wrapped: &[u8]) -> Result<Dek, KekError>;
    /// The legacy check value `HMAC-SHA256(KEK, "lethe:v1:kek-check")` of an epoch, where the
    /// provider can compute it (it holds the KEK bytes: `file`, `static`); `None` for an HSM.
    /// Lets a vault whose versions were recorded by an earlier release recognise its KEKs.
    fn legacy_check_value(&self, epoch: Epoch) -> Result<Option<[u8; 32]>, KekError> {
        let _ = epoch;
        Ok(None)
    }
}

/// Environment variable holding a base64 KEK when no KEK file is given.
pub const KEK_ENV: &str = "LETHE_KEK";
const CHECK_VALUE_LABEL: &[u8] = b"lethe:v1:kek-check";

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("KEK file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("KEK file {path} has mode {mode:04o}; it must not be accessible by group or others (chmod 600)")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("KEK file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    /// The keys directory is unusable: missing, not a directory, or open to group or others.
    #[error("keys directory {path}: {detail}")]
    KeysDir { path: PathBuf, detail: String },
    #[error("KEK from {source_name} has {len} bytes; it must be exactly {KEY_LEN}")]
    WrongLength { source_name: String, len: usize },
    #[error("environment variable {var} is not set")]
    EnvMissing { var: String },
    #[error("environment variable {var} is not valid base64")]
    EnvNotBase64 { var: String },
    #[error("OS random number generator failed")]
    Random,
    #[error("{0}")]
    Mismatch(String),
    /// The provider holds no KEK for this epoch (destroyed, or never present here).
    #[error("no KEK for epoch {epoch} in the {provider} KEK provider")]
    EpochMissing { provider: &'static str, epoch: Epoch },
    /// The provider cannot do this (e.g. create an epoch from a KEK handed in from outside).
    #[error("the {provider} KEK provider cannot {what}")]
    Unsupported { provider: &'static str, what: &'static str },
    /// The HSM (PKCS#11) failed or refused; `setting` names the setting to check.
    #[error("PKCS#11 ({setting}): {detail}")]
    Pkcs11 { setting: &'static str, detail: String },
    /// A wrapped DEK did not unwrap (wrong KEK, or damaged bytes).
    #[error("a key does not unwrap under KEK epoch {epoch}")]
    Unwrap { epoch: Epoch },
}

/// A 256-bit key-encryption key, zeroized on drop. Deliberately not `Clone`: one owner.
pub struct Kek {
    bytes: Box<[u8; KEY_LEN]>,
}

impl Drop for Kek {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for Kek {}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// A fresh KEK from the OS RNG.
    pub fn generate() -> Result<Kek, KekError> {
        let mut kek = Kek::zero();
        fill_random(&mut kek.bytes[..]).map_err(|_| KekError::Random)?;
        Ok(kek)
    }

    /// Exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Kek, KekError> {
        if bytes.len() != KEY_LEN {
            return Err(KekError::WrongLength {
                source_name: "bytes".into(),
                len: bytes.len(),
            });
        }
        let mut kek = Kek::zero();
        kek.bytes.copy_from_slice(bytes);
        Ok(kek)
    }

    /// Reads a KEK file: exactly 32 raw bytes, mode allowing no group/other access.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Kek, KekError> {
        let path = path.as_ref();
        let io = |source| KekError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(KekError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KekError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        // Read at most one byte more than a key, into a pre-sized zeroizing buffer, so a
        // wrong-length file is detected without ever reallocating secret bytes.
        let mut buf = Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
        file.take(KEY_LEN as u64 + 1).read_to_end(&mut buf).map_err(io)?;
        if buf.len() != KEY_LEN {
            return Err(KekError::WrongLength {
                source_name: path.display().to_string(),
                len: buf.len(),
            });
        }
        Kek::from_slice(&buf)
    }

    /// Reads a base64 KEK (standard alphabet, padding optional) from an environment variable.
    pub fn from_base64_env(var: &str) -> Result<Kek, KekError> {
        let value = Zeroizing::new(std::env::var(var).map_err(|_| KekError::EnvMissing { var: var.to_string() })?);
        Kek::from_base64(value.trim()).map_err(|e| match e {
            KekError::WrongLength { len, .. } => KekError::WrongLength {
                source_name: format!("environment variable {var}"),
                len,
            },
            KekError::EnvNotBase64 { .. } => KekError::EnvNotBase64 { var: var.to_string() },
            other => other,
        })
    }

    /// Decodes a base64 KEK (standard alphabet, padding optional).
    pub fn from_base64(text: &str) -> Result<Kek, KekError> {
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let bytes = Zeroizing::new(
            engine
                .decode(text.as_bytes())
                .map_err(|_| KekError::EnvNotBase64 { var: "value".into() })?,
        );
        Kek::from_slice(&bytes).map_err(|e| match e {
            KekError::WrongLength { len, .. } => KekError::WrongLength {
                source_name: "base64 value".into(),
                len,
            },
            other => other,
        })
    }

    /// Loads the KEK file, or creates it (32 OS-random bytes, mode 0600) if it does not exist:
    /// the embedded default. Creation is atomic: the key is written and synced to a temporary
    /// file that is then hard-linked into place, so a crash never leaves a short key file and
    /// two processes starting at once end up with the same key.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Kek, KekError> {
        let path = path.as_ref();
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Kek::from_file(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KekError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let kek = Kek::generate()?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match file::write_key_file(&dir, path, &kek.bytes[..])? {
            file::Created::New => Ok(kek),
            // Another process won the race: use its key.
            file::Created::AlreadyThere => Kek::from_file(path),
        }
    }

    /// `HMAC-SHA256(KEK, "lethe:v1:kek-check")`: stored per KEK version to recognise a KEK.
    pub fn check_value(&self) -> [u8; 32] {
        envelope::hmac_sha256(&self.bytes[..], CHECK_VALUE_LABEL)
    }

    /// Wraps a DEK: the envelope format under the KEK, associated data = the key id's 16 bytes.
    pub fn wrap_dek(&self, id: KeyId, dek: &Dek) -> Result<Vec<u8>, EnvelopeError> {
        envelope::seal_raw(&self.bytes, id.0.as_bytes(), dek.expose_secret())
    }

    /// Unwraps a DEK wrapped by [`Kek::wrap_dek`] for the same key id.
    pub fn unwrap_dek(&self, id: KeyId, wrapped: &[u8]) -> Result<Dek, EnvelopeError> {
        let plain = envelope::open_raw(&self.bytes, id.0.as_bytes(), wrapped)?;
        Dek::from_slice(&plain).map_err(|_| EnvelopeError::Authentication)
    }

    /// Raw key, for writing a generated KEK to a secret store. Named loudly on purpose.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    fn zero() -> Kek {
        Kek {
            bytes: Box::new([0u8; KEY_LEN]),
        }
    }
}
