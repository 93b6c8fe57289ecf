//! Typed errors of the library, each with a stable machine-readable code.
//!
//! The codes are part of the contract (`../shared/design.md`, HTTP API): clients match on them,
//! so they never change once released. Messages carry stream names, subject ids and event ids
//! (which the contract keeps free of personal data), never event data or key bytes.

use uuid::Uuid;

pub use crate::model::{ValidationError, VersionConflict};

/// A failure of the event database itself (connection, SQL, corrupt row).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[source] DatabaseError),
    #[error("database migration failed: {0}")]
    Migration(#[source] DatabaseError),
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("corrupt row in the event database: {0}")]
    Corrupt(String),
    #[error("invalid storage setting: {0}")]
    InvalidConfig(String),
    /// Parallel group writers only: an append kept meeting concurrent writes to its streams.
    /// Nothing of it was stored; retrying is safe.
    #[error("contended: {0}; nothing was stored, retry")]
    Contended(String),
}

/// A failure of the erasure journal (`<keys-dir>/erasures.journal`, see `crate::journal`). It
/// names the file and, for a line that breaks the chain, its line number; never a line's
/// content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The file cannot be opened, read, written, locked or synced.
    #[error("erasure journal {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line does not parse, or breaks the hash chain: the journal was changed, truncated in
    /// the middle or reordered. Nothing is skipped; the store does not open.
    #[error("erasure journal {}, line {line}: {problem}", path.display())]
    Corrupt {
        path: std::path::PathBuf,
        line: u64,
        problem: String,
    },
}

impl JournalError {
    /// The stable code: `journal_unavailable` (I/O, retrying may help) or `journal_corrupt`.
    pub fn code(&self) -> &'static str {
        match self {
            JournalError::Io { .. } => "journal_unavailable",
            JournalError::Corrupt { .. } => "journal_corrupt",
        }
    }
}

/// An error of the database driver, kept opaque so that the driver is not part of Lethe's
/// API: its message, its [`source`](std::error::Error::source), and whether it means the
/// database is unreachable for now ([`DatabaseError::is_unavailable`]).
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct DatabaseError {
    source: Box<dyn std::error::Error + Send + Sync>,
    unavailable: bool,
}

impl DatabaseError {
    /// Whether the database is unreachable right now (retrying may help).
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        let unavailable = is_unavailable(&e);
        StorageError::Database(DatabaseError {
            source: Box::new(e),
            unavailable,
        })
    }
}

impl From<sqlx::migrate::MigrateError> for StorageError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StorageError::Migration(DatabaseError {
            source: Box::new(e),
            unavailable: false,
        })
    }
}

/// Every error the Lethe library returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("wrong expected version for {}", describe_conflicts(.conflicts))]
    WrongExpectedVersion { conflicts: Vec<VersionConflict> },
    #[error("stream {stream:?} has been erased")]
    StreamErased { stream: String },
    #[error("stream {stream:?} has been deleted")]
    StreamDeleted { stream: String },
    #[error("stream {stream:?} is bound to another subject (or to none)")]
    SubjectMismatch { stream: String },
    #[error("event id {event_id} is already stored with other content or at another place")]
    DuplicateEventId { event_id: Uuid },
    #[error("stream {stream:?} not found")]
    StreamNotFound { stream: String },
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("a legal hold blocks forgetting this subject (request {request_id} recorded as refused)")]
    LegalHold {
        request_id: Uuid,
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    #[error("the last active admin token cannot be revoked; create another admin token first")]
    LastAdminToken,
    #[error(
        "subject {subject:?} is being forgotten: no new stream can be bound to it, and none of its personal \
         fields written, until that completes"
    )]
    ErasureInProgress { subject: String },
    #[error(
        "subject {subject:?} has been forgotten: no stream can be bound to it, and none of its personal fields \
         written"
    )]
    SubjectForgotten { subject: String },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the store is shutting down")]
    ShuttingDown,
    /// Stored data failed a check (an event that does not decrypt, a key the vault does not
    /// know). Never returned as data.
    #[error("corrupt data: {detail}")]
    Corrupt { detail: String },
    #[error("key vault: {0}")]
    KeyVault(lethe_keyvault::VaultError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A test-only fault point fired (see `StoreConfig::erasure_fault`).
    #[doc(hidden)]
    #[error("injected fault")]
    InjectedFault,
}

impl Error {
    /// Maps a vault error to the store's words where they mean the same thing.
    pub(crate) fn from_vault(e: lethe_keyvault::VaultError) -> Self {
        match e {
            lethe_keyvault::VaultError::SubjectMismatch { stream } => Error::SubjectMismatch { stream },
            lethe_keyvault::VaultError::KeyDestroyed { stream } => Error::StreamErased { stream },
            lethe_keyvault::VaultError::SubjectForgotten { subject } => Error::SubjectForgotten { subject },
            other => Error::KeyVault(other),
        }
    }
}

fn describe_conflicts(conflicts: &[VersionConflict]) -> String {
    conflicts
        .iter()
        .map(|c| {
            let current = c.current.map_or_else(|| "no stream".to_owned(), |v| v.to_string());
            format!("{:?} (expected {}, current {current})", c.stream, c.expected)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// The stable code for this error (the `code` of the HTTP problem JSON).
    pub fn code(&self) -> &'static str {
        match self {
            Error::WrongExpectedVersion { .. } => "wrong_expected_version",
            Error::StreamErased { .. } => "stream_erased",
            Error::StreamDeleted { .. } => "stream_deleted",
            Error::SubjectMismatch { .. } => "subject_mismatch",
            Error::DuplicateEventId { .. } => "duplicate_event_id",
            Error::StreamNotFound { .. } | Error::NotFound { .. } => "not_found",
            Error::ErasureInProgress { .. } => "erasure_in_progress",
            Error::SubjectForgotten { .. } => "subject_forgotten",
            Error::LegalHold { .. } => "legal_hold",
            Error::LastAdminToken => "last_admin_token",
            Error::Invalid(v) => v.code(),
            Error::Storage(StorageError::Database(e)) if e.is_unavailable() => "storage_unavailable",
            Error::Storage(StorageError::Corrupt(_)) => "corrupt_data",
            Error::Storage(_) => "storage_error",
            Error::ShuttingDown => "shutting_down",
            Error::Corrupt { .. } => "corrupt_data",
            Error::KeyVault(lethe_keyvault::VaultError::Unavailable(_)) => "keyvault_unavailable",
            Error::KeyVault(lethe_keyvault::VaultError::KeyUnreadable { .. }) => "key_unreadable",
            Error::KeyVault(_) => "keyvault_error",
            Error::Journal(e) => e.code(),
            Error::InjectedFault => "injected_fault",
        }
    }
}

/// Database errors that mean "not reachable right now" (retrying may help).
fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
    )
}
