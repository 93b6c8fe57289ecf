//! Every HTTP error as RFC 9457 problem JSON, from one table.
//!
//! Handlers return `Result<_, ApiError>`; [`status_of`] is the only place that decides which
//! status a stable error code gets (the Meilisearch habit: no status codes scattered around).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;

/// Where problem `type` URIs point (documentation anchors by code).
const TYPE_BASE: &str = "https://lethe.dev/problems/";

/// The HTTP status of each stable code.
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "wrong_expected_version"
        | "subject_mismatch"
        | "duplicate_event_id"
        | "legal_hold"
        | "erasure_in_progress"
        | "last_admin_token" => StatusCode::CONFLICT,
        "stream_erased" | "stream_deleted" => StatusCode::GONE,
        "invalid_stream_name" | "invalid_request" => StatusCode::BAD_REQUEST,
        "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
        "precondition_failed" => StatusCode::PRECONDITION_FAILED,
        "too_many_subscribers" | "storage_unavailable" | "keyvault_unavailable" | "shutting_down" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "request_timeout" => StatusCode::REQUEST_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
    /// Extra members (`current_version`, `streams`, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// An error on its way to becoming a problem response.
#[derive(Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub detail: String,
    pub extra: serde_json::Map<String, Value>,
}

impl ApiError {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            extra: serde_json::Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new("invalid_request", detail)
    }

    pub fn not_found() -> Self {
        Self::new("not_found", "not found")
    }
}

fn title_of(code: &str) -> &'static str {
    match code {
        "wrong_expected_version" => "Wrong expected version",
        "stream_erased" => "Stream erased",
        "stream_deleted" => "Stream deleted",
        "subject_mismatch" => "Subject mismatch",
        "duplicate_event_id" => "Duplicate event id",
        "invalid_stream_name" => "Invalid stream name",
        "invalid_request" => "Invalid request",
        "payload_too_large" => "Payload too large",
        "unsupported_media_type" => "Unsupported media type",
        "unauthorized" => "Unauthorized",
        "forbidden" => "Forbidden",
        "not_found" => "Not found",
        "method_not_allowed" => "Method not allowed",
        "precondition_failed" => "Precondition failed",
        "legal_hold" => "Legal hold",
        "erasure_in_progress" => "Erasure in progress",
        "last_admin_token" => "Last admin token",
        "too_many_subscribers" => "Too many subscribers",
        "storage_unavailable" => "Storage unavailable",
        "keyvault_unavailable" => "Key vault unavailable",
        "keyvault_error" => "Key vault error",
        "storage_error" => "Storage error",
        "corrupt_data" => "Corrupt data",
        "shutting_down" => "Shutting down",
        "request_timeout" => "Request timeout",
        _ => "Internal error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.code);
        super::metrics::record_error(self.code);
        if status.is_server_error() {
            tracing::warn!(code = self.code, detail = %self.detail, "request failed");
        }
        // Server-side failures keep their details in the log, not in the answer.
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "internal error".to_owned()
        } else {
            self.detail
        };
        let problem = Problem {
            kind: format!("{TYPE_BASE}{}", self.code),
            title: title_of(self.code),
            status: status.as_u16(),
            detail,
            code: self.code,
            extra: self.extra,
        };
        let mut response = (status, Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §15.5.2: a 401 names the scheme it wants.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let mut api = ApiError::new(e.code(), e.to_string());
        match &e {
            Error::WrongExpectedVersion { conflicts } => {
                if let [only] = conflicts.as_slice() {
                    api = api.with("current_version", serde_json::json!(only.current));
                }
                let streams: Vec<Value> = conflicts
                    .iter()
                    .map(|c| serde_json::json!({"stream": c.stream, "current_version": c.current}))
                    .collect();
                api = api.with("streams", Value::Array(streams));
            }
            Error::LegalHold { request_id, until } => {
                api = api
                    .with("request_id", serde_json::json!(request_id))
                    .with("hold_until", serde_json::json!(until));
            }
            Error::Invalid(crate::error::ValidationError::InPart { stream, index, .. }) => {
                api = api
                    .with("stream", Value::String(stream.clone()))
                    .with("index", serde_json::json!(index));
            }
            Error::StreamErased { stream }
            | Error::StreamDeleted { stream }
            | Error::SubjectMismatch { stream }
            | Error::StreamNotFound { stream } => {
                api = api.with("stream", Value::String(stream.clone()));
            }
            _ => {}
        }
        api
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::new("unsupported_media_type", "expected Content-Type: application/json")
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new("payload_too_large", "the request body is too large")
            }
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}
