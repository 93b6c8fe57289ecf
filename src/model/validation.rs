//! What Lethe refuses before any I/O: [`ValidationError`] and the checks that raise it.
//!
//! Every check here is pure; the services call them first, so bad input changes nothing.

use std::collections::HashSet;

use uuid::Uuid;

use super::{ErasureReason, LogFilter, StreamAppend, SubjectId};
use crate::limits::{
    APPEND_EVENTS_MAX, APPEND_STREAMS_MAX, EVENT_TYPE_LEN_MAX, FILTER_TYPES_MAX, NAME_LEN_MAX, READ_PAGE_EVENTS_MAX,
    REASON_LEN_MAX, TOKEN_NAME_LEN_MAX, WEBHOOK_SECRET_LEN_MAX, WEBHOOK_SECRET_LEN_MIN, WEBHOOK_URL_LEN_MAX,
};

/// Input that Lethe refuses before touching any storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid stream name {stream:?}: it {reason}")]
    InvalidStreamName { stream: String, reason: &'static str },
    #[error("stream names starting with '$' are reserved for system streams: {stream:?}")]
    ReservedStreamName { stream: String },
    #[error("invalid subject id: it {reason}")]
    InvalidSubject { reason: &'static str },
    #[error(
        "invalid event type: it must be 1 to {} characters without control characters",
        EVENT_TYPE_LEN_MAX
    )]
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
    /// A schema that is not a valid JSON Schema (2020-12), or whose personal-field declarations
    /// break Lethe's rules.
    #[error("invalid schema: {reason}")]
    InvalidSchema { reason: String },
    /// An event that does not match its type's schema (in `enforce` mode). Names where and which
    /// keyword failed, never the offending value (it may be personal data).
    #[error(
        "event data does not match schema version {version} of its type: keyword {keyword:?} failed at {pointer:?}"
    )]
    SchemaViolation {
        version: u32,
        pointer: String,
        keyword: String,
    },
    /// A personal field whose subject cannot be told.
    #[error("the subject of personal field {field:?} {reason}")]
    InvalidFieldSubject { field: String, reason: &'static str },
    #[error("too many {what}: at most {max}")]
    TooMany { what: &'static str, max: usize },
    /// A retention policy field that is malformed (names the field, and why).
    #[error("invalid retention policy: {field}: {reason}")]
    InvalidRetentionPolicy { field: &'static str, reason: &'static str },
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
            ValidationError::InvalidSchema { .. } => "invalid_schema",
            ValidationError::SchemaViolation { .. } => "schema_violation",
            ValidationError::InvalidFieldSubject { .. } => "invalid_subject",
            ValidationError::InvalidRetentionPolicy { .. } => "invalid_retention_policy",
            _ => "invalid_request",
        }
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
pub(crate) fn check_reason(reason: &ErasureReason) -> Result<(), ValidationError> {
    let max = REASON_LEN_MAX;
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

/// Checks a log filter: a legal prefix (any prefix of a legal name) and a bounded type list.
pub(crate) fn check_filter(filter: &LogFilter) -> Result<(), ValidationError> {
    if filter.types.len() > FILTER_TYPES_MAX {
        return Err(ValidationError::TooManyTypes {
            count: filter.types.len(),
            max: FILTER_TYPES_MAX,
        });
    }
    for event_type in &filter.types {
        check_event_type(event_type)?;
    }
    if let Some(prefix) = &filter.stream_prefix
        && (prefix.chars().count() > NAME_LEN_MAX || prefix.chars().any(char::is_control))
    {
        return Err(ValidationError::InvalidStreamName {
            stream: prefix.chars().take(64).collect(),
            reason: "is not a valid stream-name prefix",
        });
    }
    Ok(())
}

/// Checks how many items one read asks for: 1 to `max`.
pub(crate) fn check_limit(limit: usize, max: usize) -> Result<(), ValidationError> {
    if limit == 0 || limit > max {
        return Err(ValidationError::InvalidLimit { max });
    }
    Ok(())
}

/// [`check_limit`] for reads of events (stream reads, log pages).
pub(crate) fn check_page_limit(limit: usize) -> Result<(), ValidationError> {
    check_limit(limit, READ_PAGE_EVENTS_MAX)
}

/// Checks an append's shape before any I/O: sizes are checked while encoding.
pub(crate) fn check_append(appends: &[StreamAppend]) -> Result<(), ValidationError> {
    if appends.is_empty() {
        return Err(ValidationError::NoStreams);
    }
    if appends.len() > APPEND_STREAMS_MAX {
        return Err(ValidationError::TooManyStreams {
            count: appends.len(),
            max: APPEND_STREAMS_MAX,
        });
    }
    let total: usize = appends.iter().map(|a| a.events.len()).sum();
    if total > APPEND_EVENTS_MAX {
        return Err(ValidationError::TooManyEvents {
            count: total,
            max: APPEND_EVENTS_MAX,
        });
    }
    let mut streams = HashSet::new();
    let mut ids = HashSet::new();
    for append in appends {
        if append.events.is_empty() {
            return Err(ValidationError::NoEvents);
        }
        if !streams.insert(append.stream.as_str()) {
            return Err(ValidationError::DuplicateStreamInAppend {
                stream: append.stream.to_string(),
            });
        }
        for (index, event) in append.events.iter().enumerate() {
            check_event_type(&event.event_type).map_err(|e| e.in_part(append.stream.as_str(), index))?;
            if let Some(id) = event.id
                && !ids.insert(id)
            {
                return Err(ValidationError::DuplicateEventIdInAppend { event_id: id });
            }
        }
    }
    Ok(())
}

/// Checks a consumer name: the stream-name charset, 1 to [`NAME_LEN_MAX`] characters.
pub(crate) fn check_consumer_name(name: &str) -> Result<(), ValidationError> {
    SubjectId::new(name)
        .map(drop)
        .map_err(|_| ValidationError::InvalidName {
            what: "consumer name (of A-Z a-z 0-9 _ . : @ -)",
            max: NAME_LEN_MAX,
        })
}

/// Checks a token name: free text for humans, 1 to [`TOKEN_NAME_LEN_MAX`] characters.
pub(crate) fn check_token_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.chars().count() > TOKEN_NAME_LEN_MAX || name.chars().any(char::is_control) {
        return Err(ValidationError::InvalidName {
            what: "token name",
            max: TOKEN_NAME_LEN_MAX,
        });
    }
    Ok(())
}

/// Checks a webhook before it is stored: an http(s) URL and a long enough secret.
pub fn check_webhook(url: &str, secret: &str) -> Result<(), ValidationError> {
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || url.len() > WEBHOOK_URL_LEN_MAX || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::InvalidName {
            what: "webhook url (http:// or https://)",
            max: WEBHOOK_URL_LEN_MAX,
        });
    }
    let secret_len = secret.chars().count();
    if !(WEBHOOK_SECRET_LEN_MIN..=WEBHOOK_SECRET_LEN_MAX).contains(&secret_len) || secret.chars().any(char::is_control)
    {
        return Err(ValidationError::InvalidName {
            what: "webhook secret (at least 16 characters)",
            max: WEBHOOK_SECRET_LEN_MAX,
        });
    }
    Ok(())
}
