//! Lethe's errors on the wire: RFC 9457 problem documents with a stable `code`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every stable code with its HTTP status and title. A code not listed (`storage_error`,
/// `internal_error`, …) is a 500 titled "Internal error".
pub const CODES: &[(&str, u16, &str)] = &[
    ("wrong_expected_version", 409, "Wrong expected version"),
    ("subject_mismatch", 409, "Subject mismatch"),
    ("duplicate_event_id", 409, "Duplicate event id"),
    ("legal_hold", 409, "Legal hold"),
    ("erasure_in_progress", 409, "Erasure in progress"),
    ("subject_forgotten", 409, "Subject forgotten"),
    ("last_admin_token", 409, "Last admin token"),
    ("stream_erased", 410, "Stream erased"),
    ("stream_deleted", 410, "Stream deleted"),
    ("key_unreadable", 410, "Key unreadable"),
    ("invalid_request", 400, "Invalid request"),
    ("invalid_stream_name", 400, "Invalid stream name"),
    ("schema_violation", 400, "Schema violation"),
    ("invalid_schema", 400, "Invalid schema"),
    ("invalid_subject", 400, "Invalid subject"),
    ("invalid_retention_policy", 400, "Invalid retention policy"),
    ("payload_too_large", 413, "Payload too large"),
    ("unsupported_media_type", 415, "Unsupported media type"),
    ("unauthorized", 401, "Unauthorized"),
    ("forbidden", 403, "Forbidden"),
    ("not_found", 404, "Not found"),
    ("method_not_allowed", 405, "Method not allowed"),
    ("precondition_failed", 412, "Precondition failed"),
    ("request_timeout", 408, "Request timeout"),
    ("too_many_subscribers", 503, "Too many subscribers"),
    ("storage_unavailable", 503, "Storage unavailable"),
    ("keyvault_unavailable", 503, "Key vault unavailable"),
    ("shutting_down", 503, "Shutting down"),
    ("keyvault_error", 500, "Key vault error"),
    ("storage_error", 500, "Storage error"),
    ("corrupt_data", 500, "Corrupt data"),
    ("journal_unavailable", 503, "Erasure journal unavailable"),
    ("journal_corrupt", 500, "Erasure journal corrupt"),
];

/// A problem document (RFC 9457). Members beyond the five standard ones depend on the code.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Documentation of the code.
    #[serde(rename = "type")]
    #[schema(format = "uri")]
    pub kind: String,
    pub title: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    pub detail: String,
    /// The stable, machine-readable error code.
    pub code: String,
    #[serde(flatten)]
    pub extra: ProblemExtra,
}

/// The members some codes add to a problem document (absent otherwise).
// Serialized in the order of their names, as they were when they lived in a JSON map.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemExtra {
    /// `wrong_expected_version` of one stream: its last version (`null`: no stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, required = false)]
    pub current_version: Option<Option<u64>>,
    /// `legal_hold`: when the hold lapses (`null`: when lifted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<DateTime<Utc>>, required = false)]
    pub hold_until: Option<Option<DateTime<Utc>>>,
    /// Which event of the stream's append the error is about (0-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = usize, required = false)]
    pub index: Option<usize>,
    /// `schema_violation`: the JSON Schema keyword that failed (e.g. `required`, `type`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub keyword: Option<String>,
    /// `schema_violation`: where in the event's `data` the schema failed (a JSON pointer; empty:
    /// the whole `data`). `invalid_subject`: the personal field whose subject cannot be told.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub pointer: Option<String>,
    /// `legal_hold`: the refused erasure request.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Uuid, required = false)]
    pub request_id: Option<Uuid>,
    /// `schema_violation`: the version of the type's schema the event failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = u32, minimum = 1, required = false)]
    pub schema_version: Option<u32>,
    /// The stream the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub stream: Option<String>,
    /// `wrong_expected_version`: each stream whose expectation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<StreamVersion>, required = false)]
    pub streams: Option<Vec<StreamVersion>>,
}

/// A stream's last version (`null`: no stream).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamVersion {
    #[schema(required = true)]
    pub current_version: Option<u64>,
    pub stream: String,
}
