//! `/admin`: erasure requests, subjects (access and export), API tokens.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::metrics::{KindLabel, metrics};
use super::problem::ApiError;
use super::wire::{
    AuditEntryOut, AuditListResponse, AuditVerifyResponse, ErasureListResponse, ErasureResponse, EventOut,
    ForgetRequest, HoldOut, HoldRequest, SubjectResponse, SubjectStreamOut, TokenListResponse, TokenOut, TokenRequest,
};
use super::{AppState, Caller, JsonBody, PathParam, audit_entry};
use crate::limits::ERASURES_LIST_MAX;
use crate::model::AuditQuery;
use crate::model::Role;
use crate::model::SubjectId;
use crate::model::{ErasureFilter, ErasureReason, ErasureStatus};

fn subject_of(raw: &str) -> Result<SubjectId, ApiError> {
    Ok(SubjectId::new(raw).map_err(crate::Error::from)?)
}

/// `POST /admin/subjects/{subject}/forget` → 202 with the request. The erasure runs before
/// the answer when it can; if the vault is unreachable it stays `pending` and is resumed.
pub async fn forget(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(subject): PathParam,
    JsonBody(body): JsonBody<ForgetRequest>,
) -> Result<Response, ApiError> {
    let subject = subject_of(&subject)?;
    let reason = ErasureReason {
        reason: Some(body.reason),
        requested_by: Some(body.requested_by),
        reference: body.reference,
    };
    let details = json!({"reason": reason.reason, "requested_by": reason.requested_by, "reference": reason.reference});
    let request = match state.store.request_forget(&subject, reason).await {
        Ok(request) => request,
        Err(e @ crate::Error::LegalHold { request_id, .. }) => {
            let entry = audit_entry(&caller, "erasure_refused", Some(&subject), Some(request_id), details);
            state.store.audit_quietly(entry).await;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let entry = audit_entry(&caller, "erasure_requested", Some(&subject), Some(request.id), details);
    state.store.audit_quietly(entry).await;
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
        overdue: query.overdue,
        limit,
    };
    let erasures = state
        .store
        .list_erasures(&filter)
        .await?
        .into_iter()
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
pub async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(raw): PathParam,
) -> Result<Response, ApiError> {
    let subject = subject_of(&raw)?;
    let entry = audit_entry(&caller, "subject_exported", Some(&subject), None, json!({}));
    state.store.audit_quietly(entry).await;
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
    Extension(caller): Extension<Caller>,
    PathParam(raw): PathParam,
    JsonBody(body): JsonBody<HoldRequest>,
) -> Result<Json<HoldOut>, ApiError> {
    let subject = subject_of(&raw)?;
    let hold = state.store.place_hold(&subject, &body.reason, body.until).await?;
    let details = json!({"reason": hold.reason, "until": hold.until});
    state
        .store
        .audit_quietly(audit_entry(&caller, "hold_placed", Some(&subject), None, details))
        .await;
    Ok(Json(hold.into()))
}

/// `DELETE /admin/subjects/{subject}/hold` → 204 (404 if there was none).
pub async fn lift_hold(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(raw): PathParam,
) -> Result<StatusCode, ApiError> {
    let subject = subject_of(&raw)?;
    if state.store.lift_hold(&subject).await? {
        state
            .store
            .audit_quietly(audit_entry(&caller, "hold_lifted", Some(&subject), None, json!({})))
            .await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

/// `POST /admin/tokens` → 201 with the token (shown once).
pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<Response, ApiError> {
    let role = Role::parse(&body.role).ok_or_else(|| ApiError::bad_request("role must be reader, writer or admin"))?;
    let token = state.store.create_token(&body.name, role).await?;
    let details = json!({"token_id": token.record.id, "name": token.record.name, "role": role.as_str()});
    state
        .store
        .audit_quietly(audit_entry(&caller, "token_created", None, None, details))
        .await;
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
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("the token id must be a UUID"))?;
    if state.store.revoke_token(id).await? {
        let details = json!({"token_id": id});
        state
            .store
            .audit_quietly(audit_entry(&caller, "token_revoked", None, None, details))
            .await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQueryParams {
    /// Entries after this sequence number.
    after: Option<u64>,
    limit: Option<usize>,
    action: Option<String>,
    subject: Option<String>,
}

/// `GET /admin/audit?after=&limit=&action=&subject=`: the hash-chained trail, oldest first.
pub async fn audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQueryParams>, QueryRejection>,
) -> Result<Json<AuditListResponse>, ApiError> {
    let Query(query) = query?;
    let entries = state
        .store
        .audit_entries(&AuditQuery {
            after: query.after.unwrap_or(0),
            limit: query.limit.unwrap_or(100),
            action: query.action,
            subject: query.subject.as_deref().map(subject_of).transpose()?,
        })
        .await?;
    let next = entries.last().map(|e| e.seq);
    Ok(Json(AuditListResponse {
        entries: entries.into_iter().map(AuditEntryOut::from).collect(),
        next_after: next,
    }))
}

/// `GET /admin/audit/verify`: walks the chain; names the first broken entry.
pub async fn verify_audit(State(state): State<AppState>) -> Result<Json<AuditVerifyResponse>, ApiError> {
    let verification = state.store.verify_audit().await?;
    Ok(Json(AuditVerifyResponse {
        intact: verification.is_intact(),
        entries: verification.entries,
        head_seq: verification.head_seq,
        first_broken_seq: verification.first_broken,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    format: Option<String>,
}

/// `GET /admin/reports/erasures?from=&to=&format=json|csv`.
pub async fn erasure_report(
    State(state): State<AppState>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::bad_request("format must be json or csv")),
    };
    let report = state.store.erasure_report(query.from, query.to).await?;
    if csv {
        Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], report.to_csv()).into_response())
    } else {
        Ok(Json(report).into_response())
    }
}
