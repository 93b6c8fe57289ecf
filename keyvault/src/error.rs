//! The vault's one error type.
//!
//! Architecture invariant: no variant carries key bytes, wrapped or not. Messages name streams,
//! subjects, key ids, KEK versions and file paths only, so an error can be logged or returned
//! over HTTP as is.

use crate::envelope::EnvelopeError;
use crate::kek::KekError;

/// Everything a vault operation can fail with. `code()` gives the stable machine-readable name
/// the HTTP server puts in its problem JSON (and the client maps back).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The stream's key was destroyed; it is never created or handed out again.
    #[error("the key of stream {stream:?} was destroyed")]
    KeyDestroyed { stream: String },
    /// The stream already has a key bound to a different subject (or to none).
    #[error("stream {stream:?} is bound to a different subject")]
    SubjectMismatch { stream: String },
    /// The stream's key exists but the KEK epoch wrapping it was destroyed or is missing (a
    /// vault database restored from an old backup): its data cannot be read, and the stream
    /// never gets another key. Met by `create_keys` asking for that stream.
    #[error(
        "the key of stream {stream:?} is wrapped by KEK epoch {epoch}, which was destroyed or is missing: its data cannot be read"
    )]
    KeyUnreadable { stream: String, epoch: u32 },
    /// The data subject was forgotten (`destroy_subject_keys`): no key bound to it — its
    /// subject key or a stream key — is created again, ever. A `create_keys` batch that asks
    /// for one creates nothing. `subject` is the pseudonymous subject id the request named
    /// (the first such key of the batch, in request order).
    #[error("subject {subject:?} was forgotten; no key bound to it is created again")]
    SubjectForgotten { subject: String },
    /// The vault's storage or server could not be reached; retrying may help.
    #[error("key vault unavailable: {0}")]
    Unavailable(String),
    /// Missing or wrong bearer token.
    #[error("unauthorized")]
    Unauthorized,
    /// Stored data failed a consistency or authenticity check (e.g. a wrapped key that does not
    /// unwrap under its recorded KEK).
    #[error("key vault data corrupt: {0}")]
    Corrupt(String),
    /// The request itself is wrong (bad name, too many ids, malformed URL...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The storage engine reported an error that retrying will not obviously fix.
    #[error("key vault storage error: {0}")]
    Storage(String),
    /// Loading or matching a key-encryption key failed.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// Anything else (OS randomness failure, an unexpected server answer).
    #[error("key vault internal error: {0}")]
    Internal(String),
}

impl VaultError {
    /// Stable code, used as `code` in problem JSON.
    pub fn code(&self) -> &'static str {
        match self {
            VaultError::KeyDestroyed { .. } => "key_destroyed",
            VaultError::KeyUnreadable { .. } => "key_unreadable",
            VaultError::SubjectMismatch { .. } => "subject_mismatch",
            VaultError::SubjectForgotten { .. } => "subject_forgotten",
            VaultError::Unavailable(_) => "unavailable",
            VaultError::Unauthorized => "unauthorized",
            VaultError::Corrupt(_) => "corrupt",
            VaultError::InvalidInput(_) => "invalid_request",
            VaultError::Storage(_) => "storage_error",
            VaultError::Kek(_) => "kek_error",
            VaultError::Internal(_) => "internal_error",
        }
    }
}

impl From<sqlx::Error> for VaultError {
    fn from(e: sqlx::Error) -> Self {
        // Connection-level failures are "unavailable" so callers (Lethe's forget loop) retry;
        // everything else is a storage error. sqlx messages never include bound values, so no
        // key material can leak through them.
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => VaultError::Unavailable(e.to_string()),
            other => VaultError::Storage(other.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for VaultError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        VaultError::Storage(format!("migration failed: {e}"))
    }
}

impl From<EnvelopeError> for VaultError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Random => VaultError::Internal(e.to_string()),
            other => VaultError::Corrupt(other.to_string()),
        }
    }
}
