//! Events, appends and what reads return.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{ExpectedVersion, StreamInfo, StreamName, SubjectId};

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

/// One stream whose expectation failed, with the version it actually has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionConflict {
    pub stream: String,
    pub expected: ExpectedVersion,
    /// The stream's last version; `None` when it has no events.
    pub current: Option<u64>,
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
    /// The version of its type's schema the event was written under (none: no schema then).
    pub schema_version: Option<u32>,
    /// JSON pointers of the personal fields that read as their replacement values because
    /// their subjects were forgotten.
    pub erased_fields: Vec<String>,
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
            .field("schema_version", &self.schema_version)
            .field("erased_fields", &self.erased_fields)
            .field("metadata", &self.metadata)
            .field("recorded_at", &self.recorded_at)
            .finish_non_exhaustive()
    }
}

/// A page of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSlice {
    pub info: StreamInfo,
    pub events: Vec<RecordedEvent>,
}

/// A page of the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts (inclusive).
    pub next: u64,
    /// The last position readable when the page was read (0: empty log): every position up to
    /// it is committed, or a gap that stays empty (PostgreSQL's parallel group writers).
    pub head: u64,
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
            schema_version: None,
            erased_fields: Vec::new(),
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
