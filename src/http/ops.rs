//! Operations: liveness, readiness, metrics, the OpenAPI document, fallbacks, latency.

use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::metrics::{RouteLabel, metrics, store_registry};
use super::problem::ApiError;
use super::wire::{DependencyStatus, HealthResponse, Liveness, ReadinessResponse, ReadinessStatus};
use crate::limits::READINESS_TIMEOUT;

/// Liveness
///
/// Answers as long as the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    operation_id = "healthz",
    responses((status = 200, description = "Up.", body = HealthResponse)),
)]
pub async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse { status: Liveness::Ok })
}

/// Readiness
///
/// Whether the event database and the key vault answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready.", body = ReadinessResponse),
        (
            status = 503,
            description = "Not ready: the database or the key vault does not answer.",
            body = ReadinessResponse,
        ),
    ),
)]
// Each dependency gets [`READINESS_TIMEOUT`] to answer: requests wait for a database connection
// for up to the pool's acquire timeout (so short outages stay invisible to clients), but a
// readiness probe must hear "not ready" promptly.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (database, vault, unreadable) = tokio::join!(
        tokio::time::timeout(READINESS_TIMEOUT, state.store.head()),
        tokio::time::timeout(READINESS_TIMEOUT, state.store.vault_health()),
        tokio::time::timeout(READINESS_TIMEOUT, state.store.keys_unreadable()),
    );
    let keys_unreadable = unreadable.ok().and_then(Result::ok);
    let database = matches!(database, Ok(Ok(_)));
    let vault = matches!(vault, Ok(Ok(_)));
    let status = if database && vault {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let dependency = |up: bool| {
        if up {
            DependencyStatus::Ok
        } else {
            DependencyStatus::Unavailable
        }
    };
    let body = ReadinessResponse {
        database: dependency(database),
        keyvault: dependency(vault),
        status: if status == StatusCode::OK {
            ReadinessStatus::Ready
        } else {
            ReadinessStatus::NotReady
        },
        keys_unreadable,
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics
///
/// Appends, events and bytes appended, errors by code, erasures, subscribers, the head of the
/// log, key-cache hits and misses, request latency by route, the group writer's transactions,
/// appends and busy seconds since start, and the events stored in `warn` mode although they did
/// not match their type's schema (`lethe_schema_violations_total`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    responses((status = 200, description = "OpenMetrics text.", body = String, content_type = "application/openmetrics-text")),
)]
pub async fn metrics_handler(State(state): State<AppState>) -> Response {
    let m = metrics();
    // Prometheus gauges are i64; counts this large never occur, and saturating beats panicking.
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let cache = state.store.key_cache_stats();
    m.key_cache_hits.set(gauge(cache.hits));
    m.key_cache_misses.set(gauge(cache.misses));
    m.keys_cached.set(gauge(state.store.cached_keys() as u64));
    let writer = state.store.writer_stats();
    m.writer_transactions.set(gauge(writer.transactions));
    m.writer_appends.set(gauge(writer.appends));
    m.writer_busy_seconds.set(writer.busy.as_secs_f64());
    if let Ok(head) = state.store.head().await {
        m.head_position.set(gauge(head));
    }
    if let Ok(unreadable) = state.store.keys_unreadable().await {
        m.keys_unreadable.set(gauge(unreadable));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(&store_registry(state.store.schema_violations())),
    )
        .into_response()
}

/// This document
///
/// The OpenAPI 3.1 description of every route.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    operation_id = "openapi",
    responses((status = 200, description = "The document.", body = inline(utoipa::openapi::Object))),
)]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::document_json(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new("method_not_allowed", "this method is not allowed on this route")
}

/// Turns the bare answers of tower layers — the raw body limit (413) and the request timeout
/// (408) — into problem JSON like every other failure.
pub async fn layer_problems(response: Response) -> Response {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            "payload_too_large",
            "the request body is larger than the server's limit",
        )
        .into_response(),
        StatusCode::REQUEST_TIMEOUT => ApiError::new("request_timeout", "the request took too long").into_response(),
        _ => response,
    }
}

/// Records each request's latency under its route template (never the concrete path, which
/// could carry ids).
pub async fn record_latency(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics()
        .request_seconds
        .get_or_create(&RouteLabel {
            route: format!("{method} {route}"),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}
