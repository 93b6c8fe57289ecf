//! Typed errors of the library, each with a stable machine-readable code.
//!
//! The codes are part of the contract (`../shared/design.md`, HTTP API): clients match on them,
//! so they never change once released. Messages carry stream names, subject ids and event ids
//! (which the contract keeps free of personal data), never event data or key bytes.

use uuid::Uuid;

/// One stream whose expectation failed, with the version it actually has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionConflict {
    pub stream: String,
    pub expected: crate::model::ExpectedVersion,
    /// The stream's last version; `None` when it has no events.
    pub current: Option<u64>,
}

/// Input that Lethe refuses before touching any storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid stream name {stream:?}: it {reason}")]
    InvalidStreamName { stream: String, reason: &'static str },
    #[error("stream names starting with '$' are reserved for system streams: {stream:?}")]
    ReservedStreamName { stream: String },
    #[error("invalid subject id: it {reason}")]
    InvalidSubject { reason: &'static str },
    #[error("invalid event type: it must be 1 to 200 characters without control characters")]
    InvalidEventType,
    /// A problem with one event of one stream of an append (the part is named).
    #[error("stream {stream:?}, event {index}: {error}")]
    InPart {
        stream: String,
        index: usize,
        error: Box<ValidationError>,
    },
    #[error("an append needs at least one event for each stream")]
    NoEvents,
    #[error("a multi-stream append needs at least one stream")]
    NoStreams,
    #[error("too many events in one append: {count} (at most {max})")]
    TooManyEvents { count: usize, max: usize },
    #[error("too many streams in one append: {count} (at most {max})")]
    TooManyStreams { count: usize, max: usize },
    #[error("event {index} is too large: {bytes} bytes of data and metadata (at most {max})")]
    EventTooLarge { index: usize, bytes: usize, max: usize },
    #[error("append is too large: {bytes} bytes of data and metadata (at most {max})")]
    AppendTooLarge { bytes: usize, max: usize },
    #[error("event id {event_id} appears twice in one append")]
    DuplicateEventIdInAppend { event_id: Uuid },
    #[error("stream {stream:?} appears twice in one append")]
    DuplicateStreamInAppend { stream: String },
    #[error("event data or metadata cannot be serialized as JSON")]
    InvalidData,
    #[error("invalid {what}: it must be 1 to {max} characters")]
    InvalidName { what: &'static str, max: usize },
    #[error("invalid {what}: at most {max} characters, and no control characters")]
    InvalidText { what: &'static str, max: usize },
    #[error("invalid position: {position} is past the head of the log ({head})")]
    PositionPastHead { position: u64, head: u64 },
    #[error("invalid limit: it must be 1 to {max}")]
    InvalidLimit { max: usize },
    #[error("too many event types in a filter: {count} (at most {max})")]
    TooManyTypes { count: usize, max: usize },
}

impl ValidationError {
    /// Names the stream and event (index within its stream) this error is about.
    pub(crate) fn in_part(self, stream: &str, index: usize) -> Self {
        ValidationError::InPart {
            stream: stream.to_owned(),
            index,
            error: Box::new(self),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::InPart { error, .. } => error.code(),
            ValidationError::InvalidStreamName { .. } | ValidationError::ReservedStreamName { .. } => {
                "invalid_stream_name"
            }
            ValidationError::EventTooLarge { .. } | ValidationError::AppendTooLarge { .. } => "payload_too_large",
            _ => "invalid_request",
        }
    }
}

/// A failure of the event database itself (connection, SQL, corrupt row).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("corrupt row in the event database: {0}")]
    Corrupt(String),
}

/// Every error the Lethe library returns.
#[derive(Debug, thiserror::Error)]
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
    #[error("subject {subject:?} is being forgotten: no new stream can be bound to it until that completes")]
    ErasureInProgress { subject: String },
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
    /// A test-only fault point fired (see `StoreConfig::fault`).
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
            Error::LegalHold { .. } => "legal_hold",
            Error::LastAdminToken => "last_admin_token",
            Error::Invalid(v) => v.code(),
            Error::Storage(StorageError::Database(e)) if is_unavailable(e) => "storage_unavailable",
            Error::Storage(StorageError::Corrupt(_)) => "corrupt_data",
            Error::Storage(_) => "storage_error",
            Error::ShuttingDown => "shutting_down",
            Error::Corrupt { .. } => "corrupt_data",
            Error::KeyVault(lethe_keyvault::VaultError::Unavailable(_)) => "keyvault_unavailable",
            Error::KeyVault(_) => "keyvault_error",
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

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Storage(StorageError::Database(e))
    }
}
