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
use super::wire::{
    AckRequest, ConsumerEventsQuery, ConsumerEventsResponse, ConsumerRequest, ConsumerResponse, EventOut,
};
use super::{AppState, JsonBody, PathParam};
use crate::model::Consumer;
use crate::model::LogFilter;

/// Events a consumer read returns when no `limit` is given.
const CONSUMER_LIMIT_DEFAULT: usize = 100;

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

/// `PUT /consumers/{name}`.
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

/// `DELETE /consumers/{name}` → 204. A dependent of unfinished erasures stops holding them up.
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

/// `GET /consumers/{name}`.
pub async fn get(
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<ConsumerResponse>, ApiError> {
    let consumer = state.store.consumer(&name).await?.ok_or_else(ApiError::not_found)?;
    let head = state.store.head().await?;
    Ok(Json(out(consumer, head)))
}

/// `GET /consumers`: every consumer with its checkpoint and lag.
pub async fn list(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let head = state.store.head().await?;
    let consumers: Vec<ConsumerResponse> = state
        .store
        .consumers()
        .await?
        .into_iter()
        .map(|c| out(c, head))
        .collect();
    Ok(Json(serde_json::json!({ "consumers": consumers })))
}

/// `GET /consumers/{name}/events?limit=&wait_ms=`: long poll.
pub async fn events(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    query: Result<Query<ConsumerEventsQuery>, QueryRejection>,
) -> Result<Json<ConsumerEventsResponse>, ApiError> {
    let Query(query) = query?;
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(state.limits.long_poll_max);
    let batch = state
        .store
        .consumer_events(&name, query.limit.unwrap_or(CONSUMER_LIMIT_DEFAULT), wait)
        .await?;
    Ok(Json(ConsumerEventsResponse {
        events: batch.events.into_iter().map(EventOut::from).collect(),
        checkpoint: batch.checkpoint,
        head: batch.head,
    }))
}

/// `POST /consumers/{name}/ack`: moves the checkpoint (never back).
pub async fn ack(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    JsonBody(body): JsonBody<AckRequest>,
) -> Result<Json<ConsumerResponse>, ApiError> {
    let consumer = state.store.ack_consumer(&name, body.position).await?;
    let head = state.store.head().await?;
    Ok(Json(out(consumer, head)))
}
