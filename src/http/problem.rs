//! Every HTTP error as RFC 9457 problem JSON, from one table.
//!
//! Handlers return `Result<_, ApiError>`; [`CODES`] is the only place that decides which status
//! a stable error code gets (the Meilisearch habit: no status codes scattered around), and the
//! OpenAPI document reads its problem answers from it too.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, ValidationError};

/// Where problem `type` URIs point (documentation anchors by code).
const TYPE_BASE: &str = "https://lethe.dev/problems/";

pub use lethe_wire::CODES;

fn entry(code: &str) -> Option<&'static (&'static str, u16, &'static str)> {
    CODES.iter().find(|(c, ..)| *c == code)
}

/// The HTTP status of each stable code.
pub fn status_of(code: &str) -> StatusCode {
    entry(code)
        .and_then(|(_, status, _)| StatusCode::from_u16(*status).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn title_of(code: &str) -> &'static str {
    entry(code).map_or("Internal error", |(_, _, title)| title)
}

pub use lethe_wire::{Problem, ProblemExtra, StreamVersion};

/// An error on its way to becoming a problem response.
#[derive(Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub detail: String,
    /// Boxed: most errors have none, and a `Result` carrying an `ApiError` stays small.
    pub extra: Option<Box<ProblemExtra>>,
}

impl ApiError {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            extra: None,
        }
    }

    fn extra_mut(&mut self) -> &mut ProblemExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new("invalid_request", detail)
    }

    pub fn not_found() -> Self {
        Self::new("not_found", "not found")
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
            title: title_of(self.code).to_owned(),
            status: status.as_u16(),
            detail,
            code: self.code.to_owned(),
            extra: self.extra.map(|extra| *extra).unwrap_or_default(),
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
                    api.extra_mut().current_version = Some(only.current);
                }
                let streams = conflicts
                    .iter()
                    .map(|c| StreamVersion {
                        current_version: c.current,
                        stream: c.stream.clone(),
                    })
                    .collect();
                api.extra_mut().streams = Some(streams);
            }
            Error::LegalHold { request_id, until } => {
                api.extra_mut().request_id = Some(*request_id);
                api.extra_mut().hold_until = Some(*until);
            }
            Error::Invalid(ValidationError::InPart { stream, index, error }) => {
                api.extra_mut().stream = Some(stream.clone());
                api.extra_mut().index = Some(*index);
                api.locate(error);
            }
            Error::Invalid(error) => api.locate(error),
            Error::StreamErased { stream }
            | Error::StreamDeleted { stream }
            | Error::SubjectMismatch { stream }
            | Error::StreamNotFound { stream } => {
                api.extra_mut().stream = Some(stream.clone());
            }
            _ => {}
        }
        api
    }
}

impl ApiError {
    /// The members that say where in an event a schema check failed (never the value there:
    /// it may be personal data).
    fn locate(&mut self, error: &ValidationError) {
        match error {
            ValidationError::SchemaViolation {
                version,
                pointer,
                keyword,
            } => {
                let extra = self.extra_mut();
                extra.schema_version = Some(*version);
                extra.pointer = Some(pointer.clone());
                extra.keyword = Some(keyword.clone());
            }
            ValidationError::InvalidFieldSubject { field, .. } => {
                self.extra_mut().pointer = Some(field.clone());
            }
            _ => {}
        }
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
