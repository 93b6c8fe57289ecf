//! The key-encryption key: where it comes from, and the two things done with it (wrapping a
//! DEK, and computing a key-check value so the vault can tell which KEK version it was given).
//!
//! Architecture invariant: the KEK is never stored in the vault's database; only its
//! key-check value `HMAC-SHA256(KEK, "lethe:v1:kek-check")` is, which identifies a KEK without
//! revealing it.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::envelope::{self, EnvelopeError};
use crate::keys::{Dek, KEY_LEN, KeyId, fill_random};

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
        let io = |source| KekError::Io {
            path: path.to_path_buf(),
            source,
        };
        let kek = Kek::generate()?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut suffix = [0u8; 8];
        fill_random(&mut suffix).map_err(|_| KekError::Random)?;
        let tmp = dir.join(format!(".kek-{}.tmp", hex::encode(suffix)));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&kek.bytes[..])?;
            f.sync_all()
        };
        let result = write().and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match result {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok(kek)
            }
            // Another process won the race: use its key.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Kek::from_file(path),
            Err(e) => Err(io(e)),
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
