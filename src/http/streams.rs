//! Streams and the log: append (one stream or several), read, delete, `/log`, `/subscribe`.

use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::{Stream, StreamExt};

use super::metrics::metrics;
use super::problem::ApiError;
use super::wire::{
    AppendRequest, AppendResponse, DeleteStreamRequest, DirectionWire, ErasureResponse, EventIn, EventOut,
    ExpectedVersionWire, LogQuery, LogResponse, MultiAppendRequest, MultiAppendResponse, StreamQuery, StreamResponse,
};
use super::{AppState, JsonBody, PathParam, split_types};
use crate::model::ErasureReason;
use crate::model::{Direction, ExpectedVersion, LogFilter, NewEvent, StreamAppend, StreamName, SubjectId};

/// Events a read returns when no `limit` is given.
const READ_LIMIT_DEFAULT: usize = 100;

fn to_events(events: Vec<EventIn>) -> Vec<NewEvent> {
    events
        .into_iter()
        .map(|e| NewEvent {
            id: e.id,
            event_type: e.event_type,
            data: e.data,
            metadata: e.metadata,
        })
        .collect()
}

fn stream_append(
    stream: &str,
    expected: Option<ExpectedVersionWire>,
    subject: Option<String>,
    events: Vec<EventIn>,
) -> Result<StreamAppend, ApiError> {
    let mut append = StreamAppend::new(
        StreamName::new(stream).map_err(crate::Error::from)?,
        expected.map_or(ExpectedVersion::Any, |e| e.0),
        to_events(events),
    );
    if let Some(subject) = subject {
        append = append.with_subject(SubjectId::new(subject).map_err(crate::Error::from)?);
    }
    Ok(append)
}

/// `If-Match: "<version>"` (or `*`: the stream exists) as an expected version.
fn if_match(headers: &HeaderMap) -> Result<Option<ExpectedVersion>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match must be an ETag like \"3\""))?
        .trim();
    if value == "*" {
        return Ok(Some(ExpectedVersion::Exists));
    }
    // Exactly `"N"` or `W/"N"`: anything looser could read a malformed tag as some version.
    let quoted = value.strip_prefix("W/").unwrap_or(value);
    let version = quoted
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("If-Match must be an ETag like \"3\" (a stream version) or *"))?;
    Ok(Some(ExpectedVersion::Exact(version)))
}

/// A precondition the route cannot honour is refused, never silently ignored: the client
/// would believe it was protected.
fn refuse_if_match(headers: &HeaderMap, why: &str) -> Result<(), ApiError> {
    if headers.contains_key(header::IF_MATCH) {
        return Err(ApiError::bad_request(format!("If-Match is not supported here: {why}")));
    }
    Ok(())
}

fn etag(version: u64) -> HeaderValue {
    // Digits and quotes are always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

fn count_append(events: usize, bytes: usize) {
    let m = metrics();
    m.appends.inc();
    m.events_appended.inc_by(events as u64);
    m.bytes_appended.inc_by(bytes as u64);
}

/// `POST /streams/{stream}`.
pub async fn append(
    State(state): State<AppState>,
    PathParam(stream): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AppendRequest>,
) -> Result<Response, ApiError> {
    let header_expectation = if_match(&headers)?;
    let expected = match (body.expected_version, header_expectation) {
        (Some(b), Some(h)) if b.0 != h => {
            return Err(ApiError::bad_request("expected_version and If-Match disagree"));
        }
        (Some(b), _) => Some(b),
        (None, h) => h.map(ExpectedVersionWire),
    };
    let append = stream_append(&stream, expected, body.subject, body.events)?;
    let events = append.events.len();
    let outcome = state.store.append_with_outcome(append).await?;
    let status = if outcome.idempotent_retry {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    if !outcome.idempotent_retry {
        count_append(events, outcome.data_bytes);
    }
    let result = outcome
        .streams
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new("internal_error", "append returned no result"))?;
    let mut response = (status, Json(AppendResponse::from(result.clone()))).into_response();
    response.headers_mut().insert(header::ETAG, etag(result.last_version));
    Ok(response)
}

/// `POST /streams`: several streams, atomically.
pub async fn append_multi(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<MultiAppendRequest>,
) -> Result<Response, ApiError> {
    refuse_if_match(
        &headers,
        "a multi-stream append takes each stream's expected_version in its body",
    )?;
    let appends = body
        .appends
        .into_iter()
        .map(|a| stream_append(&a.stream, a.expected_version, a.subject, a.events))
        .collect::<Result<Vec<_>, _>>()?;
    let events = appends.iter().map(|a| a.events.len()).sum();
    let outcome = state.store.append_multi(appends).await?;
    let status = if outcome.idempotent_retry {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    if !outcome.idempotent_retry {
        count_append(events, outcome.data_bytes);
    }
    let response = MultiAppendResponse {
        appends: outcome.streams.into_iter().map(AppendResponse::from).collect(),
    };
    Ok((status, Json(response)).into_response())
}

/// `GET /streams/{stream}`.
pub async fn read(
    State(state): State<AppState>,
    PathParam(stream): PathParam,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let stream = StreamName::parse_readable(&stream).map_err(crate::Error::from)?;
    let direction = match query.direction {
        Some(DirectionWire::Backward) => Direction::Backward,
        _ => Direction::Forward,
    };
    let from = query.from.unwrap_or(match direction {
        Direction::Forward => 0,
        Direction::Backward => u64::MAX,
    });
    let limit = query.limit.unwrap_or(READ_LIMIT_DEFAULT);
    let slice = state.store.read_stream(&stream, from, direction, limit).await?;
    let body = StreamResponse {
        stream: slice.info.stream.to_string(),
        subject: slice.info.subject.map(|s| s.to_string()),
        status: slice.info.status.as_str().to_owned(),
        version: slice.info.version,
        events: slice.events.into_iter().map(EventOut::from).collect(),
    };
    let version = body.version;
    let mut response = Json(body).into_response();
    if let Some(version) = version {
        response.headers_mut().insert(header::ETAG, etag(version));
    }
    Ok(response)
}

/// `DELETE /streams/{stream}`: shreds one stream.
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<super::Caller>,
    PathParam(stream): PathParam,
    headers: HeaderMap,
    body: Option<JsonBody<DeleteStreamRequest>>,
) -> Result<Json<ErasureResponse>, ApiError> {
    refuse_if_match(&headers, "a stream deletion is not conditional")?;
    let stream = StreamName::new(stream).map_err(crate::Error::from)?;
    // The body is optional; one that is there must be valid.
    let body = body.map(|JsonBody(b)| b).unwrap_or_default();
    let reason = ErasureReason {
        reason: body.reason,
        requested_by: body.requested_by,
        reference: body.reference,
    };
    let erasure = state.store.delete_stream(&stream, reason).await?;
    let details = serde_json::json!({"stream": stream.as_str()});
    let entry = super::audit_entry(&caller, "stream_deleted", None, Some(erasure.id), details);
    state.store.audit_quietly(entry).await;
    metrics()
        .erasures
        .get_or_create(&super::metrics::KindLabel { kind: "stream".into() })
        .inc();
    Ok(Json(erasure.into()))
}

fn filter_of(query: &LogQuery) -> LogFilter {
    LogFilter {
        stream_prefix: query.stream_prefix.clone().filter(|p| !p.is_empty()),
        types: split_types(query.types.as_deref()),
    }
}

/// `GET /log`.
pub async fn log(
    State(state): State<AppState>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<LogResponse>, ApiError> {
    let Query(query) = query?;
    let page = state
        .store
        .read_log(
            query.from.unwrap_or(1),
            &filter_of(&query),
            query.limit.unwrap_or(READ_LIMIT_DEFAULT),
        )
        .await?;
    metrics()
        .head_position
        .set(i64::try_from(page.head).unwrap_or(i64::MAX));
    Ok(Json(LogResponse {
        events: page.events.into_iter().map(EventOut::from).collect(),
        next: page.next,
        head: page.head,
    }))
}

/// `GET /subscribe`: Server-Sent Events, catch-up then live. Each event's SSE `id` is its
/// position, so a reconnecting client resumes with `Last-Event-ID`. A slow client only reads
/// its own pages more slowly: subscriptions pull from the log, nothing is queued for them.
pub async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query?;
    if query.limit.is_some() {
        return Err(ApiError::bad_request("limit does not apply to /subscribe"));
    }
    let filter = filter_of(&query);
    crate::model::validation::check_filter(&filter).map_err(crate::Error::from)?;
    let resume_after = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a position"))?,
        ),
        None => None,
    };
    let from = resume_after.map_or(query.from.unwrap_or(1), |p| p.saturating_add(1));
    let permit = state
        .subscriber_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::new("too_many_subscribers", "too many open subscriptions; retry later"))?;
    metrics().subscribers.inc();
    let guard = SubscriberGuard(permit);
    let events = state
        .store
        .subscribe(from, filter)
        .take_until(state.shutdown_signal())
        .map(move |item| {
            let _held = &guard;
            Ok(match item {
                Ok(event) => {
                    let id = event.position.to_string();
                    let json = serde_json::to_string(&EventOut::from(event)).unwrap_or_else(|_| "null".to_owned());
                    SseEvent::default().id(id).data(json)
                }
                // The stream ends after an error; the client resumes with Last-Event-ID.
                Err(e) => SseEvent::default().event("error").data(e.code()),
            })
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(state.limits.keep_alive)))
}

/// Holds a subscriber slot for as long as the SSE response lives.
struct SubscriberGuard(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        metrics().subscribers.dec();
    }
}
