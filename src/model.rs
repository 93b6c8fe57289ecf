//! The library's vocabulary: streams, subjects, events, expected versions and append results.
//!
//! These are the types a Lethe user programs against. They are validated on construction
//! (a `StreamName` is always a legal name), so code further in never re-checks them. Wire
//! formats (HTTP JSON) and stored rows are separate types in their own modules.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::error::ValidationError;
use crate::limits::{EVENT_TYPE_LEN_MAX, NAME_LEN_MAX};

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
    #[allow(dead_code)] // Used by forget (tombstones in `$erasures`).
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

/// An event to append. Without an `id` Lethe assigns one; give one to make retries idempotent.
#[derive(Clone, PartialEq)]
pub struct NewEvent {
    pub id: Option<Uuid>,
    pub event_type: String,
    /// The payload. Encrypted at rest; may hold personal data (in bound streams).
    pub data: Value,
    /// Stored in clear: never put personal data here.
    pub metadata: Option<Value>,
}

impl NewEvent {
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        Self {
            id: None,
            event_type: event_type.into(),
            data,
            metadata: None,
        }
    }

    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

pub(crate) fn check_event_type(event_type: &str) -> Result<(), ValidationError> {
    if event_type.is_empty()
        || event_type.chars().count() > EVENT_TYPE_LEN_MAX
        || event_type.chars().any(char::is_control)
    {
        return Err(ValidationError::InvalidEventType);
    }
    Ok(())
}

/// The appends to one stream inside an append (a multi-stream append has several).
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream: StreamName,
    pub expected_version: ExpectedVersion,
    /// Binds the stream to this data subject on its first append; must match afterwards.
    pub subject: Option<SubjectId>,
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    pub fn new(stream: StreamName, expected_version: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected_version,
            subject: None,
            events,
        }
    }

    pub fn with_subject(mut self, subject: SubjectId) -> Self {
        self.subject = Some(subject);
        self
    }
}

/// Where one stream's part of an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    pub stream: StreamName,
    pub first_version: u64,
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// The outcome of a successful append (one entry per stream, in request order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub streams: Vec<AppendResult>,
    /// True when every event was already stored by an earlier identical append: nothing was
    /// written this time.
    pub idempotent_retry: bool,
    /// Bytes of the events' `data` and `metadata` as serialized JSON (what the append size
    /// limits count), for metrics.
    pub data_bytes: usize,
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

    pub(crate) fn from_db(s: &str) -> Option<Self> {
        match s {
            "active" => Some(StreamStatus::Active),
            "erased" => Some(StreamStatus::Erased),
            "deleted" => Some(StreamStatus::Deleted),
            _ => None,
        }
    }
}

/// A stored event as a reader sees it.
#[derive(Clone, PartialEq)]
pub struct RecordedEvent {
    pub id: Uuid,
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub event_type: String,
    /// `None` once the stream has been shredded (`erased` is then true).
    pub data: Option<Value>,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    pub erased: bool,
}

// `data` may hold personal data: the `Debug` of an event shows everything else, so that no
// log line, error or panic message carries it by accident.
impl fmt::Debug for NewEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewEvent")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RecordedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordedEvent")
            .field("id", &self.id)
            .field("stream", &self.stream)
            .field("version", &self.version)
            .field("position", &self.position)
            .field("event_type", &self.event_type)
            .field("erased", &self.erased)
            .field("metadata", &self.metadata)
            .field("recorded_at", &self.recorded_at)
            .finish_non_exhaustive()
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

/// A page of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSlice {
    pub info: StreamInfo,
    pub events: Vec<RecordedEvent>,
}

/// Filters for the global log and subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only streams whose name starts with this.
    pub stream_prefix: Option<String>,
    /// Only these event types (empty: all).
    pub types: Vec<String>,
}

/// A page of the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts (inclusive).
    pub next: u64,
    /// The last committed position when the page was read (0: empty log).
    pub head: u64,
}

/// Checks free text an admin typed (reasons, references): at most `max` characters, and no
/// control characters but line breaks and tabs (PostgreSQL cannot even store a NUL).
pub(crate) fn check_text(what: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    let bad_char = value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r');
    if bad_char || value.chars().count() > max {
        return Err(ValidationError::InvalidText { what, max });
    }
    Ok(())
}

/// [`check_text`] for every free-text field of an erasure request.
pub(crate) fn check_reason(reason: &crate::erasure::ErasureReason) -> Result<(), ValidationError> {
    let max = crate::limits::REASON_LEN_MAX;
    for (what, value) in [
        ("reason", &reason.reason),
        ("requested_by", &reason.requested_by),
        ("reference", &reason.reference),
    ] {
        if let Some(value) = value {
            check_text(what, value, max)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_an_event_never_shows_its_data() {
        let marker = "Ada-Lovelace-private-marker";
        let new = NewEvent::new("PersonalDataGiven", serde_json::json!({ "name": marker }));
        let recorded = RecordedEvent {
            id: Uuid::nil(),
            stream: "user-1".to_owned(),
            version: 0,
            position: 1,
            event_type: "PersonalDataGiven".to_owned(),
            data: Some(serde_json::json!({ "name": marker })),
            metadata: serde_json::json!({}),
            recorded_at: DateTime::<Utc>::UNIX_EPOCH,
            erased: false,
        };
        for debug in [
            format!("{new:?}"),
            format!("{recorded:?}"),
            format!("{:?}", vec![recorded.clone()]),
        ] {
            assert!(!debug.contains(marker), "{debug}");
            assert!(debug.contains("PersonalDataGiven"), "the rest is shown: {debug}");
        }
    }
}
