//! `/admin/retention`: retention policies (contract: `../shared/design.md`, "Retention"), and
//! `/admin/retention-sweep` to sweep them now. A policy makes Lethe file erasure requests
//! itself (`requested_by: "retention:<name>"`) for subjects whose data is past its period.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::problem::ApiError;
use super::schemas;
use super::wire::{RetentionPolicyIn, RetentionPolicyListResponse, RetentionPolicyOut, RetentionSweepOut};
use super::{AppState, Caller, JsonBody, PathParam};
use crate::model::RetentionAnchor;

/// Set a retention policy
///
/// Creates or replaces the policy `name`. From then on, a data subject whose every active
/// bound stream whose name starts with `stream_prefix` is older than `keep_for` (an ISO 8601
/// duration, counted from each stream's last event, or with `after: first_event` its first)
/// gets an erasure request filed by Lethe (`requested_by: "retention:<name>"`), which runs like
/// any other: legal holds refuse it (it is filed again once the hold lapses), dependents
/// acknowledge, the report counts it apart. Forgetting a subject erases *all* its bound
/// streams, including those the prefix does not match. Every Lethe process sweeps the policies
/// (`--retention-sweep-every`); each request is filed once. Audited (`retention_policy_set`).
#[utoipa::path(
    put,
    path = "/admin/retention/{name}",
    tag = "admin",
    operation_id = "putRetentionPolicy",
    params(("name" = inline(schemas::RetentionPolicyName), Path, description = "The policy's name.")),
    request_body = RetentionPolicyIn,
    responses(
        (
            status = 200,
            description = "Replaced.",
            body = RetentionPolicyOut,
            links(("GetRetentionPolicy" = (operation_id = "getRetentionPolicy", parameters(("name" = "$response.body#/name"))))),
        ),
        (
            status = 201,
            description = "Created.",
            body = RetentionPolicyOut,
            links(("GetRetentionPolicy" = (operation_id = "getRetentionPolicy", parameters(("name" = "$response.body#/name"))))),
        ),
        (
            status = 400,
            description = "`invalid_retention_policy`: a malformed name, prefix (empty, outside the stream-name \
                charset, or a system stream's `$`), duration (not ISO 8601, zero or negative, longer than 100 \
                years) or `after`. `invalid_request`: a malformed body, or a new policy beyond the limit. Nothing \
                is stored.",
            extensions(("x-problem-codes" = json!(["invalid_request", "invalid_retention_policy"]))),
        ),
        (status = 404, description = "No such route"),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(name): PathParam,
    JsonBody(body): JsonBody<RetentionPolicyIn>,
) -> Result<Response, ApiError> {
    let after = match body.after.as_deref() {
        None => RetentionAnchor::LastEvent,
        Some(after) => RetentionAnchor::parse(after).map_err(crate::Error::from)?,
    };
    let (policy, created) = state
        .store
        .put_retention_policy(&name, &body.stream_prefix, &body.keep_for, after, &caller.name)
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(RetentionPolicyOut::from(policy))).into_response())
}

/// List retention policies
///
/// Every retention policy, by name, with when it next files an erasure request.
#[utoipa::path(
    get,
    path = "/admin/retention",
    tag = "admin",
    operation_id = "listRetentionPolicies",
    responses((status = 200, description = "The policies.", body = RetentionPolicyListResponse)),
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<RetentionPolicyListResponse>, ApiError> {
    let policies = state
        .store
        .retention_policies()
        .await?
        .into_iter()
        .map(RetentionPolicyOut::from)
        .collect();
    Ok(Json(RetentionPolicyListResponse { policies }))
}

/// Show a retention policy
///
/// The policy, with when it next files an erasure request.
#[utoipa::path(
    get,
    path = "/admin/retention/{name}",
    tag = "admin",
    operation_id = "getRetentionPolicy",
    params(("name" = inline(schemas::RetentionPolicyName), Path, description = "The policy's name.")),
    responses(
        (status = 200, description = "The policy.", body = RetentionPolicyOut),
        (
            status = 400,
            description = "An invalid policy name.",
            extensions(("x-problem-codes" = json!(["invalid_retention_policy"]))),
        ),
        (status = 404, description = "No such policy"),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<RetentionPolicyOut>, ApiError> {
    Ok(Json(state.store.retention_policy(&name).await?.into()))
}

/// Remove a retention policy
///
/// The policy files no more requests; those it filed run on. Audited
/// (`retention_policy_removed`).
#[utoipa::path(
    delete,
    path = "/admin/retention/{name}",
    tag = "admin",
    operation_id = "deleteRetentionPolicy",
    params(("name" = inline(schemas::RetentionPolicyName), Path, description = "The policy's name.")),
    responses(
        (status = 204, description = "Removed."),
        (
            status = 400,
            description = "An invalid policy name.",
            extensions(("x-problem-codes" = json!(["invalid_retention_policy"]))),
        ),
        (status = 404, description = "No such policy"),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(name): PathParam,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_retention_policy(&name, &caller.name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

/// Sweep the retention policies now
///
/// Files an erasure request for every subject a policy finds due, as the background sweep
/// does (each request is filed once, whichever process sweeps), and says what it did. The
/// requests are carried out by the erasure workflow (`GET /admin/erasures`).
#[utoipa::path(
    post,
    path = "/admin/retention-sweep",
    tag = "admin",
    operation_id = "sweepRetention",
    responses((status = 200, description = "What the sweep did.", body = RetentionSweepOut)),
)]
pub async fn sweep(State(state): State<AppState>) -> Result<Json<RetentionSweepOut>, ApiError> {
    Ok(Json(state.store.sweep_retention().await?.into()))
}
