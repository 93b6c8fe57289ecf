//! Streams and subjects: their names, their lifecycle, and how appends state what they expect
//! of a stream.

use std::fmt;

use super::ValidationError;
use crate::limits::NAME_LEN_MAX;

/// Characters allowed in stream names and subject ids.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')
}

/// Checks a name body (without any `$` prefix) against the contract's charset and length.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > NAME_LEN_MAX {
        return Err("is longer than 200 characters");
    }
    if !name.chars().all(is_name_char) {
        return Err("may only contain A-Z a-z 0-9 _ . : @ -");
    }
    Ok(())
}

/// A stream's name: 1–200 characters of `[A-Za-z0-9_.:@-]`, or a system stream (`$` prefix).
///
/// Names are stored in clear, so they must never carry personal data (use ids).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// A user stream name. A leading `$` is refused: those names are reserved for Lethe.
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        if name.starts_with('$') {
            return Err(ValidationError::ReservedStreamName { stream: name });
        }
        check_name(&name).map_err(|reason| ValidationError::InvalidStreamName {
            stream: truncate_for_error(&name),
            reason,
        })?;
        Ok(Self(name))
    }

    /// A system stream (`$erasures`, …). Only Lethe itself writes these.
    pub(crate) fn system(name: &str) -> Self {
        debug_assert!(name.starts_with('$') && check_name(&name[1..]).is_ok());
        Self(name.to_owned())
    }

    /// Parses any legal name, system streams included (for reads).
    pub fn parse_readable(name: &str) -> Result<Self, ValidationError> {
        match name.strip_prefix('$') {
            Some(rest) => {
                check_name(rest)
                    .map(|()| Self(name.to_owned()))
                    .map_err(|reason| ValidationError::InvalidStreamName {
                        stream: truncate_for_error(name),
                        reason,
                    })
            }
            None => Self::new(name),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A data subject's opaque, pseudonymous id (same charset as stream names, no `$`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectId(String);

impl SubjectId {
    pub fn new(id: impl Into<String>) -> Result<Self, ValidationError> {
        let id = id.into();
        check_name(&id).map_err(|reason| ValidationError::InvalidSubject { reason })?;
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Error messages echo at most this much of a rejected name.
fn truncate_for_error(name: &str) -> String {
    name.chars().take(64).collect()
}

/// What the writer expects of a stream before its append (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet (have no events).
    NoStream,
    /// The stream must exist (have at least one event).
    Exists,
    /// The stream's last version must be exactly this.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `current` (None: no events) satisfies this.
    pub fn is_satisfied_by(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::Exists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::Exists => f.write_str("exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// A stream's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStatus {
    Active,
    /// Shredded because its subject was forgotten.
    Erased,
    /// Shredded on its own (stream deletion).
    Deleted,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Active => "active",
            StreamStatus::Erased => "erased",
            StreamStatus::Deleted => "deleted",
        }
    }

    /// Parses the stored form ([`StreamStatus::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(StreamStatus::Active),
            "erased" => Some(StreamStatus::Erased),
            "deleted" => Some(StreamStatus::Deleted),
            _ => None,
        }
    }
}

/// What a stream is, apart from its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream: StreamName,
    pub subject: Option<SubjectId>,
    pub status: StreamStatus,
    /// Last version; `None` when the stream has no events.
    pub version: Option<u64>,
}

/// Which way a stream read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

/// Filters for the global log and subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only streams whose name starts with this.
    pub stream_prefix: Option<String>,
    /// Only these event types (empty: all).
    pub types: Vec<String>,
}
