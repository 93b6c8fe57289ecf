//! Durable consumers: register (admin), then read after the checkpoint (long poll) and ack.
//!
//! Decision: registering or changing a consumer needs `admin` (the contract lists consumers
//! under admin), but reading a consumer's events and acknowledging them only needs `reader`,
//! so that a dependent service never has to hold a token that could forget subjects.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::problem::ApiError;
use super::schemas;
use super::wire::{
    AckRequest, ConsumerEventsQuery, ConsumerEventsResponse, ConsumerListResponse, ConsumerRequest, ConsumerResponse,
    EventOut,
};
use super::{AppState, JsonBody, PathParam};
use crate::limits::READ_LIMIT_DEFAULT;
use crate::model::Consumer;
use crate::model::LogFilter;

fn out(consumer: Consumer, head: u64) -> ConsumerResponse {
    ConsumerResponse {
        lag: head.saturating_sub(consumer.checkpoint),
        name: consumer.name,
        stream_prefix: consumer.filter.stream_prefix,
        types: consumer.filter.types,
        erasure_dependent: consumer.erasure_dependent,
        checkpoint: consumer.checkpoint,
        webhook_url: consumer.webhook_url,
    }
}

/// Create or update a durable consumer
///
/// Registers a consumer, or changes its filter and `erasure_dependent` flag (its checkpoint is
/// kept). An erasure-dependent consumer is a service that derives data from events: erasures
/// wait for it to acknowledge their tombstones.
#[utoipa::path(
    put,
    path = "/consumers/{name}",
    tag = "consumers",
    operation_id = "putConsumer",
    params(("name" = inline(schemas::ConsumerName), Path, description = "A consumer's name (the stream-name charset).")),
    request_body = ConsumerRequest,
    responses(
        (
            status = 200,
            description = "The consumer.",
            body = ConsumerResponse,
            links(
                ("GetConsumer" = (operation_id = "getConsumer", parameters(("name" = "$response.body#/name")))),
                ("ConsumerEvents" = (operation_id = "consumerEvents", parameters(("name" = "$response.body#/name")))),
                ("AckConsumer" = (operation_id = "ackConsumer", parameters(("name" = "$response.body#/name")))),
            ),
        ),
        (status = 400, description = "An invalid name, filter or body."),
        (status = 404, description = "No such route"),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<super::Caller>,
    PathParam(name): PathParam,
    JsonBody(body): JsonBody<ConsumerRequest>,
) -> Result<Json<ConsumerResponse>, ApiError> {
    let filter = LogFilter {
        stream_prefix: body.stream_prefix.filter(|p| !p.is_empty()),
        types: body.types.unwrap_or_default(),
    };
    // Checked before anything is stored, so a bad webhook changes nothing.
    if let Some(webhook) = &body.webhook {
        crate::model::check_webhook(&webhook.url, &webhook.secret).map_err(crate::Error::from)?;
    }
    state.store.put_consumer(&name, filter, body.erasure_dependent).await?;
    // PUT replaces: without a webhook in the body the consumer has none.
    let webhook = body.webhook.as_ref().map(|w| (w.url.as_str(), w.secret.as_str()));
    let consumer = state.store.set_consumer_webhook(&name, webhook).await?;
    let details = serde_json::json!({
        "consumer": name, "erasure_dependent": consumer.erasure_dependent, "webhook": consumer.webhook_url.is_some()
    });
    state
        .store
        .audit_quietly(super::audit_entry(&caller, "consumer_registered", None, None, details))
        .await;
    let head = state.store.head().await?;
    Ok(Json(out(consumer, head)))
}

/// Delete a durable consumer
///
/// Removes the consumer and its checkpoint. An erasure-dependent consumer stops holding up the
/// erasures that wait for its acknowledgement.
#[utoipa::path(
    delete,
    path = "/consumers/{name}",
    tag = "consumers",
    operation_id = "deleteConsumer",
    params(("name" = inline(schemas::ConsumerName), Path, description = "A consumer's name (the stream-name charset).")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "An invalid consumer name."),
        (status = 404, description = "No such consumer"),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<super::Caller>,
    PathParam(name): PathParam,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_consumer(&name).await? {
        let details = serde_json::json!({"consumer": name});
        state
            .store
            .audit_quietly(super::audit_entry(&caller, "consumer_removed", None, None, details))
            .await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

/// Show a durable consumer
///
/// The consumer's filter, checkpoint and lag.
#[utoipa::path(
    get,
    path = "/consumers/{name}",
    tag = "consumers",
    operation_id = "getConsumer",
    params(("name" = inline(schemas::ConsumerName), Path, description = "A consumer's name (the stream-name charset).")),
    responses(
        (status = 200, description = "The consumer.", body = ConsumerResponse),
        (status = 400, description = "An invalid consumer name."),
        (status = 404, description = "No such consumer"),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<ConsumerResponse>, ApiError> {
    let consumer = state.store.consumer(&name).await?.ok_or_else(ApiError::not_found)?;
    let head = state.store.head().await?;
    Ok(Json(out(consumer, head)))
}

/// List durable consumers
///
/// Every consumer with its filter, checkpoint and lag.
#[utoipa::path(
    get,
    path = "/consumers",
    tag = "consumers",
    operation_id = "listConsumers",
    responses((status = 200, description = "The consumers.", body = ConsumerListResponse)),
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<ConsumerListResponse>, ApiError> {
    let head = state.store.head().await?;
    let consumers = state
        .store
        .consumers()
        .await?
        .into_iter()
        .map(|c| out(c, head))
        .collect();
    Ok(Json(ConsumerListResponse { consumers }))
}

/// Read a consumer's next events (long poll)
///
/// Up to `limit` events after the consumer's checkpoint that match its filter. When there are
/// none, waits up to `wait_ms` for new ones. Reading does not move the checkpoint: acknowledge
/// with `POST /consumers/{name}/ack`.
#[utoipa::path(
    get,
    path = "/consumers/{name}/events",
    tag = "consumers",
    operation_id = "consumerEvents",
    params(
        ("name" = inline(schemas::ConsumerName), Path, description = "A consumer's name (the stream-name charset)."),
        ConsumerEventsQuery,
    ),
    responses(
        (status = 200, description = "The events (possibly none).", body = ConsumerEventsResponse),
        (status = 400, description = "An invalid consumer name or query parameter."),
        (status = 404, description = "No such consumer"),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    query: Result<Query<ConsumerEventsQuery>, QueryRejection>,
) -> Result<Json<ConsumerEventsResponse>, ApiError> {
    let Query(query) = query?;
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(state.limits.long_poll_max);
    let batch = state
        .store
        .consumer_events(&name, query.limit.unwrap_or(READ_LIMIT_DEFAULT), wait)
        .await?;
    Ok(Json(ConsumerEventsResponse {
        events: batch.events.into_iter().map(EventOut::from).collect(),
        checkpoint: batch.checkpoint,
        head: batch.head,
    }))
}

/// Acknowledge a consumer's events
///
/// Moves the checkpoint to `position` (never back: a lower position leaves it where it is).
#[utoipa::path(
    post,
    path = "/consumers/{name}/ack",
    tag = "consumers",
    operation_id = "ackConsumer",
    params(("name" = inline(schemas::ConsumerName), Path, description = "A consumer's name (the stream-name charset).")),
    request_body = AckRequest,
    responses(
        (status = 200, description = "The consumer, checkpoint moved.", body = ConsumerResponse),
        (status = 400, description = "A malformed body, or a position past the head of the log."),
        (status = 404, description = "No such consumer"),
    ),
)]
pub async fn ack(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    JsonBody(body): JsonBody<AckRequest>,
) -> Result<Json<ConsumerResponse>, ApiError> {
    let consumer = state.store.ack_consumer(&name, body.position).await?;
    let head = state.store.head().await?;
    Ok(Json(out(consumer, head)))
}
