//! `/admin`: erasure requests, subjects (access and export), API tokens.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

use super::metrics::{KindLabel, metrics};
use super::problem::ApiError;
use super::schemas;
use super::wire::{
    AuditEntryOut, AuditListResponse, AuditQueryParams, AuditVerifyResponse, ErasureListResponse, ErasureReportOut,
    ErasureResponse, ErasuresQuery, EventOut, ExportResponse, ForgetRequest, HoldOut, HoldRequest, NewTokenOut,
    ReconcileReportOut, ReportQuery, SubjectResponse, SubjectStreamOut, TokenListResponse, TokenOut, TokenRequest,
    erasure_response,
};
use super::{AppState, Caller, JsonBody, PathParam, audit_entry};
use crate::limits::{AUDIT_LIMIT_DEFAULT, ERASURES_LIMIT_DEFAULT, ERASURES_LIST_MAX};
use crate::model::AuditQuery;
use crate::model::Role;
use crate::model::SubjectId;
use crate::model::{ErasureFilter, ErasureReason, ErasureStatus};

fn subject_of(raw: &str) -> Result<SubjectId, ApiError> {
    Ok(SubjectId::new(raw).map_err(crate::Error::from)?)
}

/// Forget a data subject (GDPR Art. 17)
///
/// Records an erasure request and runs it: every stream bound to the subject is shredded (its
/// key destroyed, a `$erased` tombstone), the subject's field key is destroyed (its personal
/// fields in other streams then read as their replacement values; `field_streams` lists those
/// streams), and a `SubjectForgotten` tombstone goes to `$erasures`. A forgotten subject stays
/// forgotten: no stream can be bound to it, and none of its personal fields written, again.
/// If the key vault is unreachable the request stays `pending` and is resumed. Idempotent:
/// forgetting a forgotten subject completes at once (`already_erased: true`).
#[utoipa::path(
    post,
    path = "/admin/subjects/{subject}/forget",
    tag = "admin",
    operation_id = "forgetSubject",
    params(("subject" = schemas::SubjectId, Path, description = "A data subject's id.")),
    request_body = ForgetRequest,
    responses(
        (
            status = 202,
            description = "The erasure request, as far as it got.",
            body = ErasureResponse,
            links(
                ("GetErasure" = (operation_id = "getErasure", parameters(("id" = "$response.body#/request_id")))),
                ("GetSubject" = (operation_id = "getSubject", parameters(("subject" = "$request.path.subject")))),
                ("ExportSubject" = (operation_id = "exportSubject", parameters(("subject" = "$request.path.subject")))),
            ),
        ),
        (status = 400, description = "An invalid subject id or body, or a text member over its length limit."),
        (status = 404, description = "No such route"),
        (
            status = 409,
            description = "An active legal hold blocks forgetting this subject (`legal_hold`); the request is \
                recorded as `refused` (`request_id`), and `hold_until` says when the hold lapses (`null`: when \
                lifted).",
            extensions(("x-problem-codes" = json!(["legal_hold"]))),
        ),
    ),
)]
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
    Ok((StatusCode::ACCEPTED, Json(erasure_response(erasure, state.store.now()))).into_response())
}

/// Show an erasure request
///
/// Its status (`pending` → `keys_destroyed` → `awaiting_acknowledgements` → `completed`, or
/// `refused` under a legal hold), the streams it shredded, the streams holding the subject's
/// personal fields (`field_streams`), the keys it destroyed, its deadline,
/// and each erasure-dependent consumer with its acknowledgement.
#[utoipa::path(
    get,
    path = "/admin/erasures/{id}",
    tag = "admin",
    operation_id = "getErasure",
    params(("id" = Uuid, Path, description = "The erasure request's id (`request_id`).")),
    responses(
        (status = 200, description = "The erasure request.", body = ErasureResponse),
        (status = 400, description = "The id is not a UUID."),
        (status = 404, description = "No such erasure request"),
    ),
)]
pub async fn erasure(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<ErasureResponse>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("the erasure id must be a UUID"))?;
    let erasure = state.store.erasure(id).await?.ok_or_else(ApiError::not_found)?;
    Ok(Json(erasure_response(erasure, state.store.now())))
}

/// List erasure requests
///
/// Erasure requests (forgotten subjects and deleted streams), newest first: the `limit` newest
/// of those that match every filter given (`subject`, `status`, `from`, `to`, `overdue`).
#[utoipa::path(
    get,
    path = "/admin/erasures",
    tag = "admin",
    operation_id = "listErasures",
    params(ErasuresQuery),
    responses(
        (status = 200, description = "The erasure requests.", body = ErasureListResponse),
        (status = 400, description = "An invalid subject id or limit."),
    ),
)]
pub async fn erasures(
    State(state): State<AppState>,
    query: Result<Query<ErasuresQuery>, QueryRejection>,
) -> Result<Json<ErasureListResponse>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(ERASURES_LIMIT_DEFAULT);
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
    let now = state.store.now();
    let erasures = state
        .store
        .list_erasures(&filter)
        .await?
        .into_iter()
        .map(|e| erasure_response(e, now))
        .collect();
    Ok(Json(ErasureListResponse { erasures }))
}

/// Show a data subject
///
/// The streams bound to the subject (with their status), the streams holding its personal
/// fields (declared by event schemas), its legal hold and its erasure requests, newest first.
/// An unknown subject has none of them.
#[utoipa::path(
    get,
    path = "/admin/subjects/{subject}",
    tag = "admin",
    operation_id = "getSubject",
    params(("subject" = schemas::SubjectId, Path, description = "A data subject's id.")),
    responses(
        (status = 200, description = "The subject.", body = SubjectResponse),
        (status = 400, description = "An invalid subject id."),
        (status = 404, description = "No such route"),
    ),
)]
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
    let now = state.store.now();
    let erasures = state
        .store
        .erasures(Some(&subject), ERASURES_LIST_MAX)
        .await?
        .into_iter()
        .map(|e| erasure_response(e, now))
        .collect();
    let field_streams = state.store.subject_field_streams(&subject).await?;
    let hold = state.store.active_hold(&subject).await?.map(HoldOut::from);
    Ok(Json(SubjectResponse {
        subject: subject.to_string(),
        streams,
        field_streams,
        hold,
        erasures,
    }))
}

/// Export a data subject's events (GDPR Art. 15/20)
///
/// Every event of the subject's streams, decrypted (`data: null, erased: true` where a stream
/// was shredded), then every event of other streams that holds the subject's personal fields,
/// with only the subject's own personal fields kept (never another subject's), as one JSON
/// document streamed page by page. A failure part-way cuts the
/// document short, so a client sees invalid JSON rather than a silently incomplete export.
#[utoipa::path(
    get,
    path = "/admin/subjects/{subject}/export",
    tag = "admin",
    operation_id = "exportSubject",
    params(("subject" = schemas::SubjectId, Path, description = "A data subject's id.")),
    responses(
        (status = 200, description = "The export.", body = ExportResponse),
        (status = 400, description = "An invalid subject id."),
        (status = 404, description = "No such route"),
    ),
)]
// Written by hand, page by page, in the shape of `ExportResponse`.
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

/// Place a legal hold on a data subject
///
/// While the hold is active (until `until`, or until it is lifted), forgetting the subject is
/// refused with 409 `legal_hold` (the refused request is recorded). Placing a hold again
/// replaces it.
#[utoipa::path(
    put,
    path = "/admin/subjects/{subject}/hold",
    tag = "admin",
    operation_id = "placeHold",
    params(("subject" = schemas::SubjectId, Path, description = "A data subject's id.")),
    request_body = HoldRequest,
    responses(
        (
            status = 200,
            description = "The hold.",
            body = HoldOut,
            links(
                ("ForgetSubject" = (operation_id = "forgetSubject", parameters(("subject" = "$request.path.subject")))),
                ("GetSubject" = (operation_id = "getSubject", parameters(("subject" = "$request.path.subject")))),
                ("LiftHold" = (operation_id = "liftHold", parameters(("subject" = "$request.path.subject")))),
            ),
        ),
        (status = 400, description = "An invalid subject id or body, or an empty or too long reason."),
        (status = 404, description = "No such route"),
    ),
)]
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

/// Lift a data subject's legal hold
///
/// The subject can be forgotten again.
#[utoipa::path(
    delete,
    path = "/admin/subjects/{subject}/hold",
    tag = "admin",
    operation_id = "liftHold",
    params(("subject" = schemas::SubjectId, Path, description = "A data subject's id.")),
    responses(
        (status = 204, description = "Lifted."),
        (status = 400, description = "An invalid subject id."),
        (status = 404, description = "The subject has no hold"),
    ),
)]
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

/// Create an API token
///
/// Creates a token with a role. Its secret is in this answer and nowhere else: Lethe stores
/// only a hash of it.
#[utoipa::path(
    post,
    path = "/admin/tokens",
    tag = "admin",
    operation_id = "createToken",
    request_body = TokenRequest,
    responses(
        (
            status = 201,
            description = "The token, with its secret.",
            body = NewTokenOut,
            links(("RevokeToken" = (operation_id = "revokeToken", parameters(("id" = "$response.body#/id"))))),
        ),
        (status = 400, description = "An invalid name or role, or a malformed body."),
    ),
)]
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
    let out = NewTokenOut {
        record: TokenOut::from(token.record),
        token: token.secret.to_string(),
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// List API tokens
///
/// Every token, revoked ones too, without secrets.
#[utoipa::path(
    get,
    path = "/admin/tokens",
    tag = "admin",
    operation_id = "listTokens",
    responses((status = 200, description = "The tokens.", body = TokenListResponse)),
)]
pub async fn tokens(State(state): State<AppState>) -> Result<Json<TokenListResponse>, ApiError> {
    let tokens = state.store.tokens().await?.into_iter().map(TokenOut::from).collect();
    Ok(Json(TokenListResponse { tokens }))
}

/// Revoke an API token
///
/// The token stops working at once.
#[utoipa::path(
    delete,
    path = "/admin/tokens/{id}",
    tag = "admin",
    operation_id = "revokeToken",
    params(("id" = Uuid, Path, description = "The token's id.")),
    responses(
        (status = 204, description = "Revoked."),
        (status = 400, description = "The id is not a UUID."),
        (status = 404, description = "No such token, or it was revoked already"),
        (
            status = 409,
            description = "The last active admin token cannot be revoked (`last_admin_token`): create another \
                admin token first, so the API is never locked for good.",
            extensions(("x-problem-codes" = json!(["last_admin_token"]))),
        ),
    ),
)]
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

/// Read the audit trail
///
/// The hash-chained trail of admin actions, oldest first, a page at a time (`after` = the
/// previous page's `next_after`). Entries carry ids, never personal data.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    operation_id = "listAudit",
    params(AuditQueryParams),
    responses(
        (status = 200, description = "A page of entries.", body = AuditListResponse),
        (status = 400, description = "An invalid query parameter."),
    ),
)]
pub async fn audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQueryParams>, QueryRejection>,
) -> Result<Json<AuditListResponse>, ApiError> {
    let Query(query) = query?;
    let entries = state
        .store
        .audit_entries(&AuditQuery {
            after: query.after.unwrap_or(0),
            limit: query.limit.unwrap_or(AUDIT_LIMIT_DEFAULT),
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

/// Verify the audit trail
///
/// Walks the whole chain (`hash = SHA-256(prev_hash ‖ canonical JSON of the entry)`) and names
/// the first entry whose link or hash does not hold.
#[utoipa::path(
    get,
    path = "/admin/audit/verify",
    tag = "admin",
    operation_id = "verifyAudit",
    responses((status = 200, description = "The verification.", body = AuditVerifyResponse)),
)]
pub async fn verify_audit(State(state): State<AppState>) -> Result<Json<AuditVerifyResponse>, ApiError> {
    let verification = state.store.verify_audit().await?;
    Ok(Json(AuditVerifyResponse {
        intact: verification.is_intact(),
        entries: verification.entries,
        head_seq: verification.head_seq,
        first_broken_seq: verification.first_broken,
    }))
}

/// The erasure report
///
/// Requests made in `[from, to)`: counts by status, time from request to completion (median,
/// p95, max), overdue requests (past their one-month deadline), dependents that have not
/// acknowledged a tombstone and for how long, keys destroyed, active legal holds. `format=csv`
/// gives `section,key,value` rows.
#[utoipa::path(
    get,
    path = "/admin/reports/erasures",
    tag = "admin",
    operation_id = "erasureReport",
    params(ReportQuery),
    responses(
        (
            status = 200,
            description = "The report.",
            content((ErasureReportOut = "application/json"), (String = "text/csv")),
        ),
        (status = 400, description = "An invalid query parameter."),
    ),
)]
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
        Ok(Json(ErasureReportOut::from(report)).into_response())
    }
}

/// Reconcile the event database with the key vault
///
/// Compares the two databases and re-applies the erasures one of them lacks, as after either
/// was restored from a backup taken before a forget: keys the vault still holds for streams the
/// event database shows erased or deleted (or subjects it shows forgotten) are destroyed; active
/// streams whose keys the vault destroyed are shredded and tombstoned through erasure requests
/// Lethe files itself (`requests`). Each step is audited `erasure_reapplied`, the run itself
/// `reconciled`. Idempotent; `lethe serve` also runs it at start. Takes no body.
#[utoipa::path(
    post,
    path = "/admin/reconcile",
    tag = "admin",
    operation_id = "reconcile",
    responses((status = 200, description = "What was compared and re-applied.", body = ReconcileReportOut)),
)]
pub async fn reconcile(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ReconcileReportOut>, ApiError> {
    let report = state.store.reconcile().await?;
    let details = json!({
        "streams_checked": report.streams_checked,
        "subject_keys_checked": report.subject_keys_checked,
        "keys_destroyed": report.keys_destroyed,
        "streams_shredded": report.streams_shredded,
        "requests": report.requests.len(),
        "keys_missing": report.keys_missing,
    });
    state
        .store
        .audit_quietly(audit_entry(&caller, "reconciled", None, None, details))
        .await;
    Ok(Json(report.into()))
}
