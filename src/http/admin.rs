//! `/admin`: erasure requests, subjects (access and export), API tokens.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use super::problem::ApiError;
use super::wire::{
    ErasureListResponse, ErasureResponse, EventOut, ForgetRequest, HoldOut, HoldRequest, SubjectResponse,
    SubjectStreamOut, TokenListResponse, TokenOut, TokenRequest,
};
use super::{AppState, JsonBody, PathParam};
use crate::access::Role;
use crate::erasure::{ErasureFilter, ErasureReason, ErasureStatus};
use crate::metrics::{KindLabel, metrics};
use crate::model::SubjectId;

/// Longest free-text field of an erasure request (reason, requested_by, reference).
pub const REASON_LEN_MAX: usize = 1_000;
/// Erasure requests one listing returns at most.
const ERASURES_LIST_MAX: usize = 1_000;

fn subject_of(raw: &str) -> Result<SubjectId, ApiError> {
    Ok(SubjectId::new(raw).map_err(crate::Error::from)?)
}

fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().count() > REASON_LEN_MAX {
        return Err(ApiError::bad_request(format!(
            "{field} is longer than {REASON_LEN_MAX} characters"
        )));
    }
    Ok(())
}

/// `POST /admin/subjects/{subject}/forget` → 202 with the request. The erasure runs before
/// the answer when it can; if the vault is unreachable it stays `pending` and is resumed.
pub async fn forget(
    State(state): State<AppState>,
    PathParam(subject): PathParam,
    JsonBody(body): JsonBody<ForgetRequest>,
) -> Result<Response, ApiError> {
    let subject = subject_of(&subject)?;
    check_text("reason", &body.reason)?;
    check_text("requested_by", &body.requested_by)?;
    if let Some(reference) = &body.reference {
        check_text("reference", reference)?;
    }
    let reason = ErasureReason {
        reason: Some(body.reason),
        requested_by: Some(body.requested_by),
        reference: body.reference,
    };
    let request = state.store.request_forget(&subject, reason).await?;
    metrics()
        .erasures
        .get_or_create(&KindLabel { kind: "subject".into() })
        .inc();
    let erasure = match state.store.drive_erasure(request.id).await {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(request_id = %request.id, error = %e, "erasure not finished; it will be resumed");
            state.store.erasure(request.id).await?.unwrap_or(request)
        }
    };
    Ok((StatusCode::ACCEPTED, Json(ErasureResponse::from(erasure))).into_response())
}

/// `GET /admin/erasures/{id}`.
pub async fn erasure(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<ErasureResponse>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("the erasure id must be a UUID"))?;
    let erasure = state.store.erasure(id).await?.ok_or_else(ApiError::not_found)?;
    Ok(Json(erasure.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasuresQuery {
    subject: Option<String>,
    status: Option<String>,
    /// Requested at or after (RFC 3339).
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Requested before (RFC 3339).
    to: Option<chrono::DateTime<chrono::Utc>>,
    /// Only requests past their deadline and not finished.
    overdue: Option<bool>,
    limit: Option<usize>,
}

/// `GET /admin/erasures?subject=&status=&from=&to=&overdue=&limit=`, newest first.
pub async fn erasures(
    State(state): State<AppState>,
    query: Result<Query<ErasuresQuery>, QueryRejection>,
) -> Result<Json<ErasureListResponse>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > ERASURES_LIST_MAX {
        return Err(ApiError::bad_request(format!("limit must be 1 to {ERASURES_LIST_MAX}")));
    }
    let status = query
        .status
        .as_deref()
        .map(|s| {
            ErasureStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "status must be pending, keys_destroyed, awaiting_acknowledgements, completed or refused",
                )
            })
        })
        .transpose()?;
    let filter = ErasureFilter {
        subject: query.subject.as_deref().map(subject_of).transpose()?,
        status,
        from: query.from,
        to: query.to,
        limit,
    };
    let now = chrono::Utc::now();
    let erasures = state
        .store
        .list_erasures(&filter)
        .await?
        .into_iter()
        .filter(|e| query.overdue.is_none_or(|overdue| e.is_overdue(now) == overdue))
        .map(ErasureResponse::from)
        .collect();
    Ok(Json(ErasureListResponse { erasures }))
}

/// `GET /admin/subjects/{subject}`: bound streams and erasure requests.
pub async fn subject(
    State(state): State<AppState>,
    PathParam(raw): PathParam,
) -> Result<Json<SubjectResponse>, ApiError> {
    let subject = subject_of(&raw)?;
    let streams = state
        .store
        .subject_streams(&subject)
        .await?
        .into_iter()
        .map(|s| SubjectStreamOut {
            stream: s.stream.to_string(),
            status: s.status.as_str().to_owned(),
            version: s.version,
        })
        .collect();
    let erasures = state
        .store
        .erasures(Some(&subject), ERASURES_LIST_MAX)
        .await?
        .into_iter()
        .map(ErasureResponse::from)
        .collect();
    let hold = state.store.active_hold(&subject).await?.map(HoldOut::from);
    Ok(Json(SubjectResponse {
        subject: subject.to_string(),
        streams,
        hold,
        erasures,
    }))
}

/// `GET /admin/subjects/{subject}/export`: every event of the subject's streams, decrypted,
/// streamed as one JSON document `{subject, exported_at, events: [...]}`.
pub async fn export(State(state): State<AppState>, PathParam(raw): PathParam) -> Result<Response, ApiError> {
    let subject = subject_of(&raw)?;
    tracing::info!(subject = %subject, "subject export");
    let head = serde_json::json!({ "subject": subject.as_str(), "exported_at": chrono::Utc::now() }).to_string();
    // `{"subject":…,"exported_at":…` + `,"events":[` + events + `]}`.
    let opening = format!("{},\"events\":[", head.trim_end_matches('}'));
    let mut first = true;
    let events = state.store.export_subject(subject).map(move |item| {
        match item {
            Ok(event) => {
                let json = serde_json::to_string(&EventOut::from(event)).unwrap_or_else(|_| "null".to_owned());
                let sep = if first { "" } else { "," };
                first = false;
                Ok(format!("{sep}{json}"))
            }
            // A failure mid-stream cuts the document short: the client sees invalid JSON
            // rather than a silently incomplete export.
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    });
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(opening) })
        .chain(events)
        .chain(futures::stream::once(async { Ok("]}".to_owned()) }));
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response())
}

/// `PUT /admin/subjects/{subject}/hold`: places (or replaces) a legal hold.
pub async fn place_hold(
    State(state): State<AppState>,
    PathParam(raw): PathParam,
    JsonBody(body): JsonBody<HoldRequest>,
) -> Result<Json<HoldOut>, ApiError> {
    let subject = subject_of(&raw)?;
    let hold = state.store.place_hold(&subject, &body.reason, body.until).await?;
    Ok(Json(hold.into()))
}

/// `DELETE /admin/subjects/{subject}/hold` → 204 (404 if there was none).
pub async fn lift_hold(State(state): State<AppState>, PathParam(raw): PathParam) -> Result<StatusCode, ApiError> {
    let subject = subject_of(&raw)?;
    if state.store.lift_hold(&subject).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

/// `POST /admin/tokens` → 201 with the token (shown once).
pub async fn create_token(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<Response, ApiError> {
    let role = Role::parse(&body.role).ok_or_else(|| ApiError::bad_request("role must be reader, writer or admin"))?;
    let token = state.store.create_token(&body.name, role).await?;
    let mut out = TokenOut::from(token.record);
    out.token = Some(token.secret.to_string());
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `GET /admin/tokens` (never the secrets).
pub async fn tokens(State(state): State<AppState>) -> Result<Json<TokenListResponse>, ApiError> {
    let tokens = state.store.tokens().await?.into_iter().map(TokenOut::from).collect();
    Ok(Json(TokenListResponse { tokens }))
}

/// `DELETE /admin/tokens/{id}` → 204.
pub async fn revoke_token(State(state): State<AppState>, PathParam(id): PathParam) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("the token id must be a UUID"))?;
    if state.store.revoke_token(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}
