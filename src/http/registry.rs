//! `/schemas`: the event schema registry (contract: `../shared/design.md`, "Personal data
//! inside events"). Registering a version is an admin action; reading them needs `reader`, so
//! that a producer can check what its events must look like.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::problem::ApiError;
use super::schemas;
use super::wire::{SchemaListResponse, SchemaModeWire, SchemaOut, SchemaRequest, SchemaVersionsResponse};
use super::{AppState, Caller, JsonBody, PathParam};
use crate::model::validation::check_event_type;

/// Register an event type's schema
///
/// Registers `schema` as the next version of the event type's schema, in `mode` (default
/// `enforce`). From then on every event of that type is checked at append against it: in
/// `enforce` a violation is 400 `schema_violation` and nothing of the append is stored; in
/// `warn` the event is stored and counted (`lethe_schema_violations_total`). Its personal fields
/// (`x-lethe-personal`) are encrypted with a key of their subject, which forgetting the subject
/// destroys. Versions are immutable: registering the latest version's schema and mode again
/// changes nothing and answers that version (200). Audited (`schema_registered`).
#[utoipa::path(
    put,
    path = "/schemas/{type}",
    tag = "schemas",
    operation_id = "putSchema",
    params(("type" = schemas::EventType, Path, description = "An event type.")),
    request_body = SchemaRequest,
    responses(
        (
            status = 200,
            description = "Nothing changed: the latest version already has this schema and mode.",
            body = SchemaOut,
            links(("GetSchema" = (operation_id = "getSchema", parameters(("type" = "$response.body#/type"))))),
        ),
        (
            status = 201,
            description = "The new version.",
            body = SchemaOut,
            links(("GetSchema" = (operation_id = "getSchema", parameters(("type" = "$response.body#/type"))))),
        ),
        (
            status = 400,
            description = "`invalid_schema`: not a JSON Schema 2020-12 (or one that does not compile, or over its \
                size limit), or a malformed personal-field declaration (`x-lethe-personal`, `x-lethe-erased`). \
                `invalid_request`: a malformed body, an invalid event type, or too many versions of the type or \
                types with a schema. Nothing is stored.",
            extensions(("x-problem-codes" = json!(["invalid_request", "invalid_schema"]))),
        ),
        (status = 404, description = "No such route"),
    ),
)]
pub async fn put_schema(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(event_type): PathParam,
    JsonBody(body): JsonBody<SchemaRequest>,
) -> Result<Response, ApiError> {
    let mode = body.mode.unwrap_or(SchemaModeWire::Enforce).into();
    let (schema, created) = state
        .store
        .register_schema(&event_type, &body.schema, mode, &caller.name)
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(SchemaOut::from(schema))).into_response())
}

/// List event schemas
///
/// The latest version of every event type's schema, by type.
#[utoipa::path(
    get,
    path = "/schemas",
    tag = "schemas",
    operation_id = "listSchemas",
    responses((status = 200, description = "The schemas.", body = SchemaListResponse)),
)]
pub async fn list_schemas(State(state): State<AppState>) -> Result<Json<SchemaListResponse>, ApiError> {
    let schemas = state.store.schemas().await?.into_iter().map(SchemaOut::from).collect();
    Ok(Json(SchemaListResponse { schemas }))
}

/// Show an event type's schema
///
/// Every version of the event type's schema, oldest first (a recorded event's
/// `schema_version` names the one it was written under).
#[utoipa::path(
    get,
    path = "/schemas/{type}",
    tag = "schemas",
    operation_id = "getSchema",
    params(("type" = schemas::EventType, Path, description = "An event type.")),
    responses(
        (status = 200, description = "The versions.", body = SchemaVersionsResponse),
        (
            status = 400,
            description = "An invalid event type.",
            extensions(("x-problem-codes" = json!(["invalid_request"]))),
        ),
        (status = 404, description = "The event type has no schema"),
    ),
)]
pub async fn get_schema(
    State(state): State<AppState>,
    PathParam(event_type): PathParam,
) -> Result<Json<SchemaVersionsResponse>, ApiError> {
    check_event_type(&event_type).map_err(crate::Error::from)?;
    let versions = state
        .store
        .schema_versions(&event_type)
        .await?
        .into_iter()
        .map(SchemaOut::from)
        .collect();
    Ok(Json(SchemaVersionsResponse { event_type, versions }))
}
