//! The request and answer types. Each is the one definition of its JSON shape; doc comments
//! become the OpenAPI document's descriptions, and `value_type`s name the constraints of
//! [`crate::schemas`]. serde writes every `Option` member of an answer (as `null` when empty),
//! so those members are marked `required` for the document.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::schemas;

/// `"any" | "no_stream" | "exists" | <last version>`: what an append expects of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedVersionWire {
    /// No expectation (the default).
    #[default]
    Any,
    /// The stream has no events yet.
    NoStream,
    /// The stream has at least one event.
    Exists,
    /// The stream's last version is this one.
    Exact(u64),
}

impl Serialize for ExpectedVersionWire {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => serializer.serialize_str("any"),
            Self::NoStream => serializer.serialize_str("no_stream"),
            Self::Exists => serializer.serialize_str("exists"),
            Self::Exact(v) => serializer.serialize_u64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersionWire {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected_version must be \"any\", \"no_stream\", \"exists\" or a non-negative integer";
        // Any JSON value, then a precise message: an untagged enum would leak its own name.
        match Value::deserialize(deserializer)? {
            Value::Number(n) => n
                .as_u64()
                .map(Self::Exact)
                .ok_or_else(|| serde::de::Error::custom(EXPECTED)),
            Value::String(w) => match w.as_str() {
                "any" => Ok(Self::Any),
                "no_stream" => Ok(Self::NoStream),
                "exists" => Ok(Self::Exists),
                _ => Err(serde::de::Error::custom(EXPECTED)),
            },
            _ => Err(serde::de::Error::custom(EXPECTED)),
        }
    }
}

/// An event to append.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Makes retries idempotent; generated when absent.
    pub id: Option<Uuid>,
    #[serde(rename = "type")]
    #[schema(value_type = schemas::EventType)]
    pub event_type: String,
    /// Any JSON; encrypted at rest. Its size with `metadata` is limited (the 413 answer says
    /// how much).
    pub data: Value,
    /// Any JSON (default `{}`); stored in clear: no personal data.
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

/// An append to one stream (`POST /streams/{stream}`).
#[derive(Debug, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    pub expected_version: Option<ExpectedVersionWire>,
    #[schema(value_type = Option<schemas::SubjectId>)]
    pub subject: Option<String>,
    #[schema(value_type = schemas::AppendEvents, inline)]
    pub events: Vec<EventIn>,
}

/// One stream of `POST /streams`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(as = StreamAppend)]
pub struct StreamAppendIn {
    #[schema(value_type = schemas::StreamName)]
    pub stream: String,
    pub expected_version: Option<ExpectedVersionWire>,
    #[schema(value_type = Option<schemas::SubjectId>)]
    pub subject: Option<String>,
    #[schema(value_type = schemas::AppendEvents, inline)]
    pub events: Vec<EventIn>,
}

/// An append over several streams (`POST /streams`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiAppendRequest {
    #[schema(value_type = schemas::Appends, inline)]
    pub appends: Vec<StreamAppendIn>,
}

/// Where an append's events landed.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[schema(as = AppendResult)]
pub struct AppendResponse {
    pub stream: String,
    pub first_version: u64,
    pub last_version: u64,
    #[schema(minimum = 1)]
    pub first_position: u64,
    #[schema(minimum = 1)]
    pub last_position: u64,
}

/// Where the events of a multi-stream append landed, stream by stream.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = MultiAppendResult)]
pub struct MultiAppendResponse {
    pub appends: Vec<AppendResponse>,
}

/// An event as readers see it.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, ToSchema)]
#[schema(as = Event)]
pub struct EventOut {
    pub id: Uuid,
    pub stream: String,
    pub version: u64,
    #[schema(minimum = 1)]
    pub position: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's data; `null` once its stream was shredded (`erased: true`).
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    pub erased: bool,
    /// The version of its type's schema the event was written under (`GET /schemas/{type}`);
    /// absent when its type had no schema then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = u32, minimum = 1, required = false)]
    pub schema_version: Option<u32>,
    /// JSON pointers (RFC 6901) into `data` of the personal fields that read as their schema's
    /// replacement value (`x-lethe-erased`, default `null`) because their subject was forgotten;
    /// absent when there are none. Every other field is intact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub erased_fields: Vec<String>,
}

/// `GET /streams/{stream}`: a page of the stream.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = StreamPage)]
pub struct StreamResponse {
    pub stream: String,
    /// The subject the stream is bound to.
    #[schema(required = true)]
    pub subject: Option<String>,
    #[schema(value_type = schemas::StreamStatus)]
    pub status: String,
    /// The last version.
    #[schema(required = true)]
    pub version: Option<u64>,
    pub events: Vec<EventOut>,
}

/// `GET /log`: a page of the log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = LogPage)]
pub struct LogResponse {
    pub events: Vec<EventOut>,
    /// Where the next page starts (`from`).
    #[schema(minimum = 1)]
    pub next: u64,
    /// The last readable position (0: empty log): every position up to it is committed, or a
    /// gap that stays empty (positions may have gaps with parallel group writers).
    pub head: u64,
}

/// Query of `GET /streams/{stream}`.
#[derive(Debug, Serialize, Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// First version to read (inclusive). Default: 0 forward, the last version backward.
    pub from: Option<u64>,
    /// Most events to return.
    #[param(value_type = Option<schemas::ReadLimit>, inline)]
    pub limit: Option<usize>,
    #[param(inline)]
    pub direction: Option<DirectionWire>,
}

#[derive(Debug, Serialize, Deserialize, Clone, Copy, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(default = "forward")]
pub enum DirectionWire {
    Forward,
    Backward,
}

/// Query of `GET /log`. `types` is comma-separated.
#[derive(Debug, Serialize, Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// First position to read (inclusive; positions start at 1). Default 1.
    pub from: Option<u64>,
    /// Most events to return.
    #[param(value_type = Option<schemas::ReadLimit>, inline)]
    pub limit: Option<usize>,
    /// Only streams whose name starts with this (empty: all). No control characters.
    #[param(value_type = Option<schemas::StreamPrefix>, inline)]
    pub stream_prefix: Option<String>,
    /// Only these event types, comma-separated (each trimmed; empty items are ignored). No
    /// control characters.
    #[param(value_type = Option<schemas::TypesFilter>, inline)]
    pub types: Option<String>,
}

/// Query of `GET /subscribe`: that of `GET /log` but `limit`, which a subscription refuses.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubscribeQuery {
    /// First position to read (inclusive; positions start at 1). Default 1.
    pub from: Option<u64>,
    /// Read only to refuse it with a precise message: `limit` does not apply to a subscription.
    #[param(ignore)]
    pub limit: Option<serde::de::IgnoredAny>,
    /// Only streams whose name starts with this (empty: all). No control characters.
    #[param(value_type = Option<schemas::StreamPrefix>, inline)]
    pub stream_prefix: Option<String>,
    /// Only these event types, comma-separated (each trimmed; empty items are ignored). No
    /// control characters.
    #[param(value_type = Option<schemas::TypesFilter>, inline)]
    pub types: Option<String>,
}

/// A durable consumer's filter and webhook (`PUT /consumers/{name}`).
#[derive(Debug, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsumerRequest {
    /// Only streams whose name starts with this (empty or null: all).
    #[schema(value_type = Option<schemas::StreamPrefix>, inline)]
    pub stream_prefix: Option<String>,
    /// Only these event types (empty or null: all).
    #[schema(value_type = Option<schemas::ConsumerTypes>, inline)]
    pub types: Option<Vec<String>>,
    /// Erasures wait for this consumer to acknowledge their tombstones.
    #[serde(default)]
    #[schema(default = false)]
    pub erasure_dependent: bool,
    /// Push tombstones to this webhook (a 2xx acknowledges); absent: pull only.
    pub webhook: Option<WebhookIn>,
}

/// Tombstones are pushed to `url` (POST, signed with `X-Lethe-Signature: sha256=<hex
/// HMAC-SHA256(secret, body)>`, retried with backoff); a 2xx answer acknowledges them. A PUT
/// without `webhook` removes the consumer's webhook.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Webhook)]
pub struct WebhookIn {
    #[schema(value_type = schemas::WebhookUrl, inline)]
    pub url: String,
    #[schema(value_type = schemas::WebhookSecret, inline)]
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

/// A durable consumer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Consumer)]
pub struct ConsumerResponse {
    pub name: String,
    #[schema(required = true)]
    pub stream_prefix: Option<String>,
    pub types: Vec<String>,
    pub erasure_dependent: bool,
    /// Last acknowledged position (0: none).
    pub checkpoint: u64,
    /// Positions between the checkpoint and the head of the log.
    pub lag: u64,
    /// Where tombstones are pushed, if anywhere.
    #[schema(required = true)]
    pub webhook_url: Option<String>,
}

/// Every durable consumer (`GET /consumers`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = ConsumerList)]
pub struct ConsumerListResponse {
    pub consumers: Vec<ConsumerResponse>,
}

/// Query of `GET /consumers/{name}/events`.
#[derive(Debug, Serialize, Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsumerEventsQuery {
    /// Most events to return.
    #[param(value_type = Option<schemas::ReadLimit>, inline)]
    pub limit: Option<usize>,
    /// How long to wait for events when there are none, in milliseconds (default 0).
    #[param(value_type = Option<schemas::WaitMs>, inline)]
    pub wait_ms: Option<u64>,
}

/// A consumer's next events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = ConsumerEvents)]
pub struct ConsumerEventsResponse {
    pub events: Vec<EventOut>,
    pub checkpoint: u64,
    pub head: u64,
}

/// How far a consumer has handled the log (`POST /consumers/{name}/ack`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The last position handled; at most the head of the log.
    pub position: u64,
}

/// `POST /admin/subjects/{subject}/forget`: why and for whom (kept in the erasure request; no
/// personal data).
#[derive(Debug, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest {
    #[schema(value_type = schemas::Text, inline)]
    pub reason: String,
    #[schema(value_type = schemas::Text, inline)]
    pub requested_by: String,
    #[schema(value_type = Option<schemas::Text>, inline)]
    pub reference: Option<String>,
}

/// Why the stream is deleted (kept in the erasure request; no personal data).
#[derive(Debug, Serialize, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteStreamRequest {
    #[schema(value_type = Option<schemas::Text>, inline)]
    pub reason: Option<String>,
    #[schema(value_type = Option<schemas::Text>, inline)]
    pub requested_by: Option<String>,
    #[schema(value_type = Option<schemas::Text>, inline)]
    pub reference: Option<String>,
}

/// What an erasure request erases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErasureKind {
    Subject,
    Stream,
}

/// An erasure request as the admin API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Erasure)]
pub struct ErasureResponse {
    pub request_id: Uuid,
    #[schema(inline)]
    pub kind: ErasureKind,
    /// Set for `kind: subject`.
    #[schema(required = true)]
    pub subject: Option<String>,
    /// Set for `kind: stream`.
    #[schema(required = true)]
    pub stream: Option<String>,
    #[schema(value_type = schemas::ErasureStatus)]
    pub status: String,
    /// The streams shredded.
    pub streams: Vec<String>,
    /// The streams holding personal fields of the subject (declared by event schemas): their
    /// events stay readable, but the subject's fields read as their replacement values once its
    /// key is destroyed. `null` until the request's first step ran; empty for a stream deletion.
    #[schema(required = true)]
    pub field_streams: Option<Vec<String>>,
    pub keys_destroyed: u64,
    #[schema(required = true)]
    pub reason: Option<String>,
    #[schema(required = true)]
    pub requested_by: Option<String>,
    #[schema(required = true)]
    pub reference: Option<String>,
    pub requested_at: DateTime<Utc>,
    #[schema(required = true)]
    pub keys_destroyed_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub completed_at: Option<DateTime<Utc>>,
    #[schema(required = true, minimum = 1)]
    pub tombstone_position: Option<u64>,
    /// True when there was nothing left to erase (already forgotten).
    pub already_erased: bool,
    /// One month after the request (GDPR Art. 12(3)).
    pub deadline: DateTime<Utc>,
    /// Not finished and past its deadline.
    pub overdue: bool,
    /// Why it was refused (the legal hold's reason).
    #[schema(required = true)]
    pub refused_reason: Option<String>,
    /// The erasure-dependent consumers registered at the time, and their acknowledgements.
    pub dependents: Vec<DependentOut>,
    /// The retention policy that filed it; `null`: a person asked for it (or Lethe re-applied
    /// an erasure a restored database had lost).
    #[schema(required = true)]
    pub retention_policy: Option<String>,
}

/// An erasure-dependent consumer of an erasure request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Dependent)]
pub struct DependentOut {
    pub consumer: String,
    #[schema(required = true)]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The consumer was deleted.
    #[schema(required = true)]
    pub removed_at: Option<DateTime<Utc>>,
    /// Webhook deliveries tried.
    pub delivery_attempts: u64,
    #[schema(required = true)]
    pub last_attempt_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub last_delivery_error: Option<String>,
}

/// Erasure requests, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = ErasureList)]
pub struct ErasureListResponse {
    pub erasures: Vec<ErasureResponse>,
}

/// Query of `GET /admin/erasures`.
#[derive(Debug, Serialize, Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ErasuresQuery {
    /// Only this subject's erasure requests.
    #[param(value_type = Option<schemas::SubjectId>)]
    pub subject: Option<String>,
    /// Only requests in this status.
    #[param(value_type = Option<schemas::ErasureStatus>)]
    pub status: Option<String>,
    /// Only requests made at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Only requests made before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Only requests past their deadline and not finished (`true`), or only the others (`false`).
    pub overdue: Option<bool>,
    /// How many of the newest requests to look at.
    #[param(value_type = Option<schemas::ErasuresLimit>, inline)]
    pub limit: Option<usize>,
}

/// A bound stream of a subject.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = SubjectStream)]
pub struct SubjectStreamOut {
    pub stream: String,
    #[schema(value_type = schemas::StreamStatus)]
    pub status: String,
    #[schema(required = true)]
    pub version: Option<u64>,
}

/// What Lethe holds about a data subject.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Subject)]
pub struct SubjectResponse {
    pub subject: String,
    /// The streams bound to the subject.
    pub streams: Vec<SubjectStreamOut>,
    /// The streams holding personal fields of the subject (declared by event schemas, see
    /// `PUT /schemas/{type}`), by name: forgetting the subject erases those fields and leaves
    /// the rest of their events intact.
    pub field_streams: Vec<String>,
    /// The active legal hold, if any.
    #[schema(required = true)]
    pub hold: Option<HoldOut>,
    pub erasures: Vec<ErasureResponse>,
}

/// A legal hold to place (`PUT /admin/subjects/{subject}/hold`).
#[derive(Debug, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    #[schema(value_type = schemas::HoldReason, inline)]
    pub reason: String,
    /// When the hold lapses (RFC 3339); absent or null: when it is lifted.
    pub until: Option<DateTime<Utc>>,
}

/// A legal hold.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Hold)]
pub struct HoldOut {
    pub subject: String,
    pub reason: String,
    #[schema(required = true)]
    pub until: Option<DateTime<Utc>>,
    pub placed_at: DateTime<Utc>,
}

/// Every event of a subject's streams, decrypted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Export)]
pub struct ExportResponse {
    pub subject: String,
    pub exported_at: DateTime<Utc>,
    pub events: Vec<EventOut>,
}

/// What happens to an event that does not match its type's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = SchemaMode)]
pub enum SchemaModeWire {
    /// The append is refused (400 `schema_violation`) and nothing of it is stored.
    Enforce,
    /// The event is stored and the violation counted (`lethe_schema_violations_total`).
    Warn,
}

/// The next version of an event type's schema (`PUT /schemas/{type}`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SchemaRegistration)]
pub struct SchemaRequest {
    #[schema(value_type = schemas::JsonSchema)]
    pub schema: Value,
    /// `enforce` (default) or `warn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub mode: Option<SchemaModeWire>,
}

/// One version of an event type's schema (versions are immutable).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(as = EventSchema)]
pub struct SchemaOut {
    #[serde(rename = "type")]
    #[schema(value_type = schemas::EventType)]
    pub event_type: String,
    /// 1 for the type's first schema, then one more for each change.
    #[schema(minimum = 1)]
    pub version: u32,
    #[schema(inline)]
    pub mode: SchemaModeWire,
    #[schema(value_type = schemas::JsonSchema)]
    pub schema: Value,
    pub registered_at: DateTime<Utc>,
}

/// The latest schema of every event type that has one, by type (`GET /schemas`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = SchemaList)]
pub struct SchemaListResponse {
    pub schemas: Vec<SchemaOut>,
}

/// Every version of one event type's schema, oldest first (`GET /schemas/{type}`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = SchemaVersions)]
pub struct SchemaVersionsResponse {
    #[serde(rename = "type")]
    #[schema(value_type = schemas::EventType)]
    pub event_type: String,
    pub versions: Vec<SchemaOut>,
}

/// A token to create (`POST /admin/tokens`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[schema(value_type = schemas::TokenName, inline)]
    pub name: String,
    #[schema(value_type = schemas::Role)]
    pub role: String,
}

/// An API token (never its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Token)]
pub struct TokenOut {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = schemas::Role)]
    pub role: String,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just created, with its secret.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(as = NewToken)]
pub struct NewTokenOut {
    #[serde(flatten)]
    pub record: TokenOut,
    /// The secret, shown only here.
    pub token: String,
}

// Hand-written: the secret must not reach a log through `{:?}`.
impl std::fmt::Debug for NewTokenOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewTokenOut")
            .field("record", &self.record)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Every API token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = TokenList)]
pub struct TokenListResponse {
    pub tokens: Vec<TokenOut>,
}

/// An audit trail entry (hashes in hex).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditEntryOut {
    #[schema(minimum = 1)]
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// The token's name, or `lethe` for its own steps.
    pub actor: String,
    pub action: String,
    #[schema(required = true)]
    pub subject: Option<String>,
    #[schema(required = true)]
    pub request_id: Option<Uuid>,
    pub details: Value,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub prev_hash: String,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub hash: String,
}

/// A page of the audit trail.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = AuditList)]
pub struct AuditListResponse {
    pub entries: Vec<AuditEntryOut>,
    /// Pass as `after` for the next page (`null`: this page was empty).
    #[schema(required = true, minimum = 1)]
    pub next_after: Option<u64>,
}

/// Query of `GET /admin/audit`.
#[derive(Debug, Serialize, Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQueryParams {
    /// Entries after this sequence number (default 0).
    pub after: Option<u64>,
    /// Entries per page.
    #[param(value_type = Option<schemas::AuditLimit>, inline)]
    pub limit: Option<usize>,
    /// Only this action.
    pub action: Option<String>,
    /// Only entries about this subject.
    #[param(value_type = Option<schemas::SubjectId>)]
    pub subject: Option<String>,
}

/// The audit trail's verification.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = AuditVerification)]
pub struct AuditVerifyResponse {
    pub intact: bool,
    pub entries: u64,
    pub head_seq: u64,
    /// The first entry whose link or hash does not hold.
    #[schema(required = true, minimum = 1)]
    pub first_broken_seq: Option<u64>,
}

/// Query of `GET /admin/reports/erasures`.
#[derive(Debug, Serialize, Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// Requests made at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Requests made before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// `json` (default) or `csv`.
    #[param(value_type = Option<schemas::ReportFormat>, inline)]
    pub format: Option<String>,
}

/// The erasure report of a period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = ErasureReport)]
pub struct ErasureReportOut {
    #[schema(required = true)]
    pub from: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub to: Option<DateTime<Utc>>,
    pub generated_at: DateTime<Utc>,
    pub requests: u64,
    pub by_status: BTreeMap<String, u64>,
    pub time_to_complete: DurationStatsOut,
    pub overdue: Vec<OverdueRequestOut>,
    pub unacknowledged: Vec<WaitingDependentOut>,
    pub keys_destroyed: u64,
    /// Of `keys_destroyed`, subjects' field keys (one per forgotten subject whose personal
    /// fields were stored in events).
    pub subject_keys_destroyed: u64,
    pub holds_active: u64,
    /// Requests per week (Monday to Sunday, UTC), oldest first, empty weeks included.
    pub weekly: Vec<WeekFiguresOut>,
    /// Of `requests`, those a person filed (or Lethe re-applied after a restore).
    pub requested: OriginFiguresOut,
    /// Of `requests`, those retention policies filed.
    pub retention: OriginFiguresOut,
    /// Every retention policy: its requests in the period and when it next files one.
    pub retention_policies: Vec<RetentionPolicyFiguresOut>,
}

/// Erasure requests of one origin in the erasure report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = OriginFigures)]
pub struct OriginFiguresOut {
    pub requests: u64,
    /// Every status, zeroes included.
    pub by_status: BTreeMap<String, u64>,
}

/// One retention policy in the erasure report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = RetentionPolicyFigures)]
pub struct RetentionPolicyFiguresOut {
    pub name: String,
    /// Requests it filed in the period.
    pub requests: u64,
    /// When it next files a request (see `RetentionPolicy.next_due`).
    #[schema(required = true)]
    pub next_due: Option<DateTime<Utc>>,
}

/// A retention policy (`PUT /admin/retention/{name}`): a subject whose every active bound
/// stream whose name starts with `stream_prefix` is older than `keep_for` gets an erasure
/// request filed by Lethe.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RetentionPolicyRequest)]
pub struct RetentionPolicyIn {
    #[schema(value_type = schemas::RetentionPrefix, inline)]
    pub stream_prefix: String,
    #[schema(value_type = schemas::RetentionPeriod, inline)]
    pub keep_for: String,
    /// Default `last_event`.
    #[schema(value_type = Option<schemas::RetentionAfter>, inline)]
    pub after: Option<String>,
}

/// A retention policy, with when it next files an erasure request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = RetentionPolicy)]
pub struct RetentionPolicyOut {
    pub name: String,
    pub stream_prefix: String,
    /// An ISO 8601 duration, as given.
    pub keep_for: String,
    #[schema(value_type = schemas::RetentionAfter, inline)]
    pub after: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The earliest time at which a subject it covers, with no erasure request yet, is (or was)
    /// due: in the past while a legal hold defers that subject or until the next sweep; `null`
    /// when it covers no such subject.
    #[schema(required = true)]
    pub next_due: Option<DateTime<Utc>>,
}

/// Every retention policy, by name.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = RetentionPolicyList)]
pub struct RetentionPolicyListResponse {
    pub policies: Vec<RetentionPolicyOut>,
}

/// What one retention sweep did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = RetentionSweep)]
pub struct RetentionSweepOut {
    /// Policies swept.
    pub policies: u64,
    /// Subjects found due.
    pub due: u64,
    /// Erasure requests filed, including those a legal hold refused at once.
    pub filed: u64,
    /// Of `filed`, refused by an active legal hold (filed again once the hold lapses).
    pub refused: u64,
    /// Transactions the sweep took (one per batch of subjects).
    pub batches: u64,
}

/// Time from request to completion of the completed requests.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = DurationStats)]
pub struct DurationStatsOut {
    /// Completed requests measured.
    pub count: u64,
    #[schema(required = true)]
    pub median_secs: Option<f64>,
    #[schema(required = true)]
    pub p95_secs: Option<f64>,
    #[schema(required = true)]
    pub max_secs: Option<f64>,
}

/// An erasure request past its deadline and not finished.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = OverdueRequest)]
pub struct OverdueRequestOut {
    pub request_id: Uuid,
    #[schema(required = true)]
    pub subject: Option<String>,
    #[schema(value_type = schemas::ErasureStatus)]
    pub status: String,
    pub requested_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

/// A dependent that has not acknowledged an erasure's tombstone.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = WaitingDependent)]
pub struct WaitingDependentOut {
    pub request_id: Uuid,
    pub consumer: String,
    /// Since when the tombstone has waited for this dependent (the keys' destruction).
    #[schema(required = true)]
    pub waiting_since: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub waiting_secs: Option<f64>,
}

/// One week of the erasure report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = WeekFigures)]
pub struct WeekFiguresOut {
    /// The Monday that starts the week (UTC).
    pub week: NaiveDate,
    /// Requests made that week.
    pub requests: u64,
    /// Of those, completed (by now).
    pub completed: u64,
    /// Median time from request to completion of those completed.
    #[schema(required = true)]
    pub median_secs_to_complete: Option<f64>,
}

/// What `POST /admin/reconcile` found and re-applied: the event database and the key vault
/// compared, after either may have been restored from a backup taken before a forget.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = ReconcileReport)]
pub struct ReconcileReportOut {
    /// Streams with a key that were compared.
    pub streams_checked: u64,
    /// Subject keys (of subjects whose personal fields events carry) that were compared.
    pub subject_keys_checked: u64,
    /// Keys the vault still held live although the event database shows their stream erased or
    /// deleted, or their subject forgotten: destroyed now.
    pub keys_destroyed: u64,
    /// Whose keys were destroyed again: forgotten subjects (all their keys) and deleted streams.
    pub destroyed: Vec<ErasureTargetOut>,
    /// Streams the event database showed active although the vault had destroyed their key:
    /// shredded and tombstoned now.
    pub streams_shredded: u64,
    /// The erasure requests filed to shred them (`GET /admin/erasures/{id}` follows each).
    pub requests: Vec<ReappliedErasureOut>,
    /// Keys the event database names that the vault does not know at all.
    pub keys_missing: u64,
    /// Keys the vault holds but cannot unwrap (wrapped only by destroyed KEK epochs); `null`:
    /// the vault does not report it.
    #[schema(required = true)]
    pub keys_unreadable: Option<u64>,
    /// `destroyed` or `requests` was cut short (the counts are whole).
    pub truncated: bool,
}

/// A data subject or one stream.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = ErasureTarget)]
pub struct ErasureTargetOut {
    #[schema(inline)]
    pub kind: ErasureKind,
    /// Set for `kind: subject`.
    #[schema(required = true)]
    pub subject: Option<String>,
    /// Set for `kind: stream`.
    #[schema(required = true)]
    pub stream: Option<String>,
}

/// An erasure request reconciliation filed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = ReappliedErasure)]
pub struct ReappliedErasureOut {
    pub request_id: Uuid,
    #[schema(inline)]
    pub kind: ErasureKind,
    /// Set for `kind: subject` (the vault had forgotten the subject).
    #[schema(required = true)]
    pub subject: Option<String>,
    /// Set for `kind: stream` (only this stream's key was destroyed).
    #[schema(required = true)]
    pub stream: Option<String>,
    /// The streams it shredded.
    pub streams: u64,
}

/// Liveness (`GET /healthz`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthResponse {
    #[schema(inline)]
    pub status: Liveness,
}

/// The process is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Ok,
}

/// Whether the event database and the key vault answer (`GET /readyz`).
// Members in the order of their names, as when the answer was a JSON map.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Readiness)]
pub struct ReadinessResponse {
    #[schema(inline)]
    pub database: DependencyStatus,
    #[schema(inline)]
    pub keyvault: DependencyStatus,
    #[schema(inline)]
    pub status: ReadinessStatus,
    /// Keys the vault holds wrapped only by KEK epochs it no longer has (destroyed after their
    /// retention, or a vault restored from an older backup): their events read as
    /// `data: null`. Does not make the server unready. Absent when the vault is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_unreadable: Option<u64>,
}

/// Whether the server is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    Ready,
    NotReady,
}

/// Whether a dependency answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependencyStatus {
    Ok,
    Unavailable,
}
