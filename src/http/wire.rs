//! The JSON shapes of the HTTP API (contract: `../shared/design.md`, HTTP API), separate from
//! the library's types so that either can change without silently changing the other.
//! Request bodies refuse unknown fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::model::{AppendResult, ExpectedVersion, RecordedEvent};

/// `"any" | "no_stream" | "exists" | <last version>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedVersionWire(pub ExpectedVersion);

impl<'de> Deserialize<'de> for ExpectedVersionWire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected_version must be \"any\", \"no_stream\", \"exists\" or a non-negative integer";
        // Any JSON value, then a precise message: an untagged enum would leak its own name.
        match Value::deserialize(deserializer)? {
            Value::Number(n) => n
                .as_u64()
                .map(|v| Self(ExpectedVersion::Exact(v)))
                .ok_or_else(|| serde::de::Error::custom(EXPECTED)),
            Value::String(w) => match w.as_str() {
                "any" => Ok(Self(ExpectedVersion::Any)),
                "no_stream" => Ok(Self(ExpectedVersion::NoStream)),
                "exists" => Ok(Self(ExpectedVersion::Exists)),
                _ => Err(serde::de::Error::custom(EXPECTED)),
            },
            _ => Err(serde::de::Error::custom(EXPECTED)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    pub id: Option<Uuid>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Value,
    pub metadata: Option<Value>,
}

// `data` may hold personal data: `Debug` shows the rest only, so nothing logs it by accident.
impl std::fmt::Debug for EventIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventIn")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .finish_non_exhaustive()
    }
}

/// `POST /streams/{stream}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    pub expected_version: Option<ExpectedVersionWire>,
    pub subject: Option<String>,
    pub events: Vec<EventIn>,
}

/// One stream of `POST /streams`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamAppendIn {
    pub stream: String,
    pub expected_version: Option<ExpectedVersionWire>,
    pub subject: Option<String>,
    pub events: Vec<EventIn>,
}

/// `POST /streams`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiAppendRequest {
    pub appends: Vec<StreamAppendIn>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppendResponse {
    pub stream: String,
    pub first_version: u64,
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

impl From<AppendResult> for AppendResponse {
    fn from(r: AppendResult) -> Self {
        Self {
            stream: r.stream.to_string(),
            first_version: r.first_version,
            last_version: r.last_version,
            first_position: r.first_position,
            last_position: r.last_position,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MultiAppendResponse {
    pub appends: Vec<AppendResponse>,
}

/// An event as readers see it.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct EventOut {
    pub id: Uuid,
    pub stream: String,
    pub version: u64,
    pub position: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `null` once the stream was shredded (`erased: true`).
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    pub erased: bool,
}

impl From<RecordedEvent> for EventOut {
    fn from(e: RecordedEvent) -> Self {
        Self {
            id: e.id,
            stream: e.stream,
            version: e.version,
            position: e.position,
            event_type: e.event_type,
            data: e.data.unwrap_or(Value::Null),
            metadata: e.metadata,
            recorded_at: e.recorded_at,
            erased: e.erased,
        }
    }
}

/// `GET /streams/{stream}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StreamResponse {
    pub stream: String,
    pub subject: Option<String>,
    pub status: String,
    /// Last version; `null` for a stream without events.
    pub version: Option<u64>,
    pub events: Vec<EventOut>,
}

/// `GET /log`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogResponse {
    pub events: Vec<EventOut>,
    pub next: u64,
    pub head: u64,
}

/// Query of `GET /streams/{stream}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub from: Option<u64>,
    pub limit: Option<usize>,
    pub direction: Option<DirectionWire>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum DirectionWire {
    Forward,
    Backward,
}

/// Query of `GET /log` and `GET /subscribe`. `types` is comma-separated.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    pub from: Option<u64>,
    pub limit: Option<usize>,
    pub stream_prefix: Option<String>,
    pub types: Option<String>,
}

/// `PUT /consumers/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerRequest {
    pub stream_prefix: Option<String>,
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub erasure_dependent: bool,
    /// Push tombstones to this webhook (a 2xx acknowledges); absent: pull only.
    pub webhook: Option<WebhookIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookIn {
    pub url: String,
    /// Signs each delivery (`X-Lethe-Signature: sha256=<hex HMAC-SHA256(secret, body)>`).
    pub secret: String,
}

impl std::fmt::Debug for WebhookIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookIn")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConsumerResponse {
    pub name: String,
    pub stream_prefix: Option<String>,
    pub types: Vec<String>,
    pub erasure_dependent: bool,
    pub checkpoint: u64,
    /// Positions between the checkpoint and the head of the log.
    pub lag: u64,
    pub webhook_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerEventsQuery {
    pub limit: Option<usize>,
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConsumerEventsResponse {
    pub events: Vec<EventOut>,
    pub checkpoint: u64,
    pub head: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub position: u64,
}

/// `POST /admin/subjects/{subject}/forget`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest {
    pub reason: String,
    pub requested_by: String,
    pub reference: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteStreamRequest {
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub reference: Option<String>,
}

/// An erasure request as the admin API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErasureResponse {
    pub request_id: Uuid,
    pub kind: String,
    pub subject: Option<String>,
    pub stream: Option<String>,
    pub status: String,
    pub streams: Vec<String>,
    pub keys_destroyed: u64,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub reference: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub keys_destroyed_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub tombstone_position: Option<u64>,
    /// True when there was nothing left to erase (already forgotten).
    pub already_erased: bool,
    /// One month after the request (GDPR Art. 12(3)).
    pub deadline: DateTime<Utc>,
    /// Not finished and past its deadline.
    pub overdue: bool,
    /// Why it was refused (the legal hold's reason).
    pub refused_reason: Option<String>,
    /// The erasure-dependent consumers registered at the time, and their acknowledgements.
    pub dependents: Vec<DependentOut>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DependentOut {
    pub consumer: String,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub removed_at: Option<DateTime<Utc>>,
    pub delivery_attempts: u64,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_delivery_error: Option<String>,
}

impl From<crate::model::Erasure> for ErasureResponse {
    fn from(e: crate::model::Erasure) -> Self {
        let (kind, subject, stream) = match &e.target {
            crate::model::ErasureTarget::Subject(s) => ("subject", Some(s.to_string()), None),
            crate::model::ErasureTarget::Stream(s) => ("stream", None, Some(s.to_string())),
        };
        let (deadline, overdue) = (e.deadline(), e.is_overdue(Utc::now()));
        Self {
            request_id: e.id,
            kind: kind.to_owned(),
            subject,
            stream,
            status: e.status.as_str().to_owned(),
            already_erased: e.found_nothing(),
            streams: e.streams.iter().flatten().map(|s| s.stream.clone()).collect(),
            keys_destroyed: e.keys_destroyed,
            reason: e.reason.reason,
            requested_by: e.reason.requested_by,
            reference: e.reason.reference,
            requested_at: e.requested_at,
            keys_destroyed_at: e.keys_destroyed_at,
            completed_at: e.completed_at,
            tombstone_position: e.tombstone_position,
            deadline,
            overdue,
            refused_reason: e.refused_reason,
            dependents: e
                .dependents
                .into_iter()
                .map(|d| DependentOut {
                    consumer: d.consumer,
                    acknowledged_at: d.acknowledged_at,
                    removed_at: d.removed_at,
                    delivery_attempts: d.delivery_attempts,
                    last_attempt_at: d.last_attempt_at,
                    last_delivery_error: d.last_delivery_error,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErasureListResponse {
    pub erasures: Vec<ErasureResponse>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SubjectStreamOut {
    pub stream: String,
    pub status: String,
    pub version: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SubjectResponse {
    pub subject: String,
    pub streams: Vec<SubjectStreamOut>,
    /// The active legal hold, if any.
    pub hold: Option<HoldOut>,
    pub erasures: Vec<ErasureResponse>,
}

/// `PUT /admin/subjects/{subject}/hold`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    pub reason: String,
    /// When the hold lapses (RFC 3339); absent: until lifted.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HoldOut {
    pub subject: String,
    pub reason: String,
    pub until: Option<DateTime<Utc>>,
    pub placed_at: DateTime<Utc>,
}

impl From<crate::model::LegalHold> for HoldOut {
    fn from(h: crate::model::LegalHold) -> Self {
        Self {
            subject: h.subject.to_string(),
            reason: h.reason,
            until: h.until,
            placed_at: h.placed_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExportResponse {
    pub subject: String,
    pub exported_at: DateTime<Utc>,
    pub events: Vec<EventOut>,
}

/// `POST /admin/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub role: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenOut {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<crate::model::TokenRecord> for TokenOut {
    fn from(t: crate::model::TokenRecord) -> Self {
        Self {
            id: t.id,
            name: t.name,
            role: t.role.as_str().to_owned(),
            created_at: t.created_at,
            revoked_at: t.revoked_at,
            token: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenListResponse {
    pub tokens: Vec<TokenOut>,
}

/// An audit trail entry (hashes in hex).
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditEntryOut {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: Option<String>,
    pub request_id: Option<Uuid>,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<crate::model::AuditEntry> for AuditEntryOut {
    fn from(e: crate::model::AuditEntry) -> Self {
        Self {
            seq: e.seq,
            at: e.at,
            actor: e.actor,
            action: e.action,
            subject: e.subject,
            request_id: e.request_id,
            details: e.details,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditListResponse {
    pub entries: Vec<AuditEntryOut>,
    /// Pass as `after` for the next page (`null`: this page was empty).
    pub next_after: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditVerifyResponse {
    pub intact: bool,
    pub entries: u64,
    pub head_seq: u64,
    /// The first entry whose link or hash does not hold.
    pub first_broken_seq: Option<u64>,
}
