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
use super::schemas;
use super::wire::{
    AppendRequest, AppendResponse, DeleteStreamRequest, DirectionWire, ErasureResponse, EventIn, EventOut,
    ExpectedVersionWire, LogQuery, LogResponse, MultiAppendRequest, MultiAppendResponse, StreamQuery, StreamResponse,
    SubscribeQuery, erasure_response, wire_expectation,
};
use super::{AppState, JsonBody, PathParam, split_types};
use crate::limits::READ_LIMIT_DEFAULT;
use crate::model::ErasureReason;
use crate::model::{Direction, ExpectedVersion, LogFilter, NewEvent, StreamAppend, StreamName, SubjectId};

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
        expected.map_or(ExpectedVersion::Any, ExpectedVersion::from),
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

/// Append events to one stream
///
/// Appends `events` atomically at the end of the stream, if the stream's version matches
/// `expected_version` (or the `If-Match` header; default `any`). The first append with a
/// `subject` binds the stream to that data subject for good.
///
/// An event whose type has a schema (`PUT /schemas/{type}`) is checked against its latest
/// version: in `enforce` mode a violation is 400 `schema_violation` (with the failed `keyword`,
/// the `pointer` into `data` and the `schema_version`) and nothing is stored; in `warn` mode it
/// is stored and counted. The personal fields the schema declares are encrypted with a key of
/// their subject: a field whose subject id is missing, not a string or malformed (or `$stream`
/// on an unbound stream) is 400 `invalid_subject`; a field of a forgotten subject, or binding
/// the stream to one, is 409 `subject_forgotten` (`erasure_in_progress` while it is being
/// forgotten).
#[utoipa::path(
    post,
    path = "/streams/{stream}",
    tag = "streams",
    operation_id = "append",
    params(
        ("stream" = schemas::StreamName, Path, description = "A stream name (a leading `$` is reserved for system streams)."),
        (
            "If-Match" = Option<String>,
            Header,
            nullable = false,
            pattern = r#"^\s*(\*|(W/)?"[0-9]{1,20}")\s*$"#,
            description = "Optimistic concurrency as a header: `\"<version>\"` (the stream's last version, as in \
                its `ETag`) or `*` (the stream exists). Must agree with `expected_version` when both are given."
        ),
    ),
    request_body = AppendRequest,
    responses(
        (
            status = 200,
            description = "An idempotent retry: every event id is already stored in this stream at the same \
                version with the same content; nothing was stored again.",
            body = AppendResponse,
            headers(("ETag" = inline(schemas::ETag), description = "The stream's last version as an entity tag, e.g. `\"3\"` (usable in `If-Match`).")),
            links(
                ("ReadStream" = (operation_id = "readStream", parameters(("stream" = "$response.body#/stream")))),
                ("DeleteStream" = (operation_id = "deleteStream", parameters(("stream" = "$response.body#/stream")))),
            ),
        ),
        (
            status = 201,
            description = "The events were appended.",
            body = AppendResponse,
            headers(("ETag" = inline(schemas::ETag), description = "The stream's last version as an entity tag, e.g. `\"3\"` (usable in `If-Match`).")),
            links(
                ("ReadStream" = (operation_id = "readStream", parameters(("stream" = "$response.body#/stream")))),
                ("DeleteStream" = (operation_id = "deleteStream", parameters(("stream" = "$response.body#/stream")))),
            ),
        ),
        (
            status = 400,
            description = "A malformed body, an invalid stream name (`$` names are reserved), subject or event type, \
                no events or more than the limit, an event id twice, a malformed `If-Match` or one that disagrees \
                with `expected_version` (`invalid_request`, `invalid_stream_name`); an event that does not match its \
                type's schema in `enforce` mode (`schema_violation`, with `stream`, `index`, `schema_version`, \
                `keyword` and `pointer`); a personal field whose subject cannot be told (`invalid_subject`, with \
                `pointer`: the field)."
        ),
        (status = 404, description = "No such route"),
        (
            status = 409,
            description = "`wrong_expected_version` (with `current_version` and `streams`), `subject_mismatch` (the \
                stream is bound to another subject or to none), `duplicate_event_id` (an event id already stored \
                elsewhere or with other content), `erasure_in_progress` (the subject, or the subject of a personal \
                field, is being forgotten: it takes no new streams and no new fields), or `subject_forgotten` (the \
                subject, or the subject of a personal field, was forgotten, for good).",
            extensions(("x-problem-codes" = json!(["wrong_expected_version", "subject_mismatch", "duplicate_event_id", "erasure_in_progress", "subject_forgotten"]))),
        ),
        (
            status = 410,
            description = "The stream was shredded: its subject was forgotten (`stream_erased`) or it was deleted \
                (`stream_deleted`)."
        ),
    ),
)]
pub async fn append(
    State(state): State<AppState>,
    PathParam(stream): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AppendRequest>,
) -> Result<Response, ApiError> {
    let header_expectation = if_match(&headers)?;
    let expected = match (body.expected_version, header_expectation) {
        (Some(b), Some(h)) if ExpectedVersion::from(b) != h => {
            return Err(ApiError::bad_request("expected_version and If-Match disagree"));
        }
        (Some(b), _) => Some(b),
        (None, h) => h.map(wire_expectation),
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

/// Append to several streams atomically
///
/// One append over several streams, each with its own expected version and optional subject:
/// every stream is written or none is, and the events take contiguous positions in the order
/// given. One failed expectation fails the whole append and reports each stream's current
/// version. Schemas and personal fields are checked as for one stream: any failure fails the
/// whole append (`stream` and `index` name the event).
#[utoipa::path(
    post,
    path = "/streams",
    tag = "streams",
    operation_id = "appendMulti",
    request_body = MultiAppendRequest,
    responses(
        (status = 200, description = "An idempotent retry: nothing was stored again.", body = MultiAppendResponse),
        (
            status = 201,
            description = "The events were appended.",
            body = MultiAppendResponse,
            links(
                ("ReadStream" = (operation_id = "readStream", parameters(("stream" = "$response.body#/appends/0/stream")))),
                ("DeleteStream" = (operation_id = "deleteStream", parameters(("stream" = "$response.body#/appends/0/stream")))),
            ),
        ),
        (
            status = 400,
            description = "A malformed body, no streams or more than the limit, a stream twice, an invalid stream \
                name, subject or event type, a stream without events, more events than the limit, an event id twice \
                (`invalid_request`, `invalid_stream_name`); an event that does not match its type's schema in \
                `enforce` mode (`schema_violation`); a personal field whose subject cannot be told \
                (`invalid_subject`)."
        ),
        (
            status = 409,
            description = "`wrong_expected_version` (with `streams`: each stream's `current_version`), \
                `subject_mismatch`, `duplicate_event_id`, `erasure_in_progress` or `subject_forgotten`.",
            extensions(("x-problem-codes" = json!(["wrong_expected_version", "subject_mismatch", "duplicate_event_id", "erasure_in_progress", "subject_forgotten"]))),
        ),
        (
            status = 410,
            description = "One of the streams was shredded (`stream_erased`, `stream_deleted`; `stream` names it)."
        ),
    ),
)]
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

/// Read a stream
///
/// Reads up to `limit` events from version `from` (inclusive), forward or backward. System
/// streams (`$erasures`) are readable too. Events of a shredded stream keep everything but
/// `data`, which is `null`, with `erased: true`. A personal field of a forgotten subject reads
/// as its schema's replacement value and is listed in the event's `erased_fields`.
#[utoipa::path(
    get,
    path = "/streams/{stream}",
    tag = "streams",
    operation_id = "readStream",
    params(
        ("stream" = inline(schemas::ReadableStreamName), Path, description = "A stream name, or a system stream (`$erasures`)."),
        StreamQuery,
    ),
    responses(
        (
            status = 200,
            description = "A page of the stream.",
            body = StreamResponse,
            headers(("ETag" = inline(schemas::ETag), description = "The stream's last version as an entity tag, e.g. `\"3\"` (usable in `If-Match`); absent while the stream has no events.")),
            extensions(("x-optional-headers" = json!(["ETag"]))),
        ),
        (status = 400, description = "An invalid stream name or query parameter."),
        (status = 404, description = "No such stream"),
    ),
)]
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

/// Delete (shred) one stream
///
/// Destroys the stream's key and writes a `$erased` tombstone: its events keep everything but
/// `data`, and appends to it fail with `stream_deleted`. The body is optional (without
/// `Content-Type` it is ignored).
#[utoipa::path(
    delete,
    path = "/streams/{stream}",
    tag = "streams",
    operation_id = "deleteStream",
    params(("stream" = schemas::StreamName, Path, description = "A stream name (a leading `$` is reserved for system streams).")),
    request_body = Option<DeleteStreamRequest>,
    responses(
        (
            status = 200,
            description = "The stream was shredded.",
            body = ErasureResponse,
            links(("GetErasure" = (operation_id = "getErasure", parameters(("id" = "$response.body#/request_id"))))),
        ),
        (
            status = 400,
            description = "An invalid stream name (system streams cannot be deleted) or a malformed body."
        ),
        (status = 404, description = "No such stream"),
        (status = 410, description = "The stream was shredded already (`stream_erased`, `stream_deleted`)."),
    ),
)]
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
    Ok(Json(erasure_response(erasure, state.store.now())))
}

fn filter_of(stream_prefix: Option<&str>, types: Option<&str>) -> LogFilter {
    LogFilter {
        stream_prefix: stream_prefix.filter(|p| !p.is_empty()).map(str::to_owned),
        types: split_types(types),
    }
}

/// Read the global log
///
/// Up to `limit` events of every stream in commit order, from position `from` (inclusive),
/// optionally only streams whose name starts with `stream_prefix` and only the event types in
/// `types`. Continue with `from=next`; `head` is the last readable position. Positions only
/// increase; with parallel group writers they may have gaps.
#[utoipa::path(
    get,
    path = "/log",
    tag = "streams",
    operation_id = "readLog",
    params(LogQuery),
    responses(
        (status = 200, description = "A page of the log.", body = LogResponse),
        (status = 400, description = "An invalid query parameter or filter."),
    ),
)]
pub async fn log(
    State(state): State<AppState>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<LogResponse>, ApiError> {
    let Query(query) = query?;
    let page = state
        .store
        .read_log(
            query.from.unwrap_or(1),
            &filter_of(query.stream_prefix.as_deref(), query.types.as_deref()),
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

/// Subscribe to the log (Server-Sent Events)
///
/// The log from position `from` as Server-Sent Events: first what is stored (catch-up), then
/// new events as they are committed (live), with no gap and no duplicate between the two. Each
/// event's SSE `id` is its position and its `data` an `Event` as JSON; a client resumes with
/// `Last-Event-ID`. Comments keep the connection alive. After a failure the stream sends one
/// `event: error` (its data is the error code) and ends. Not subject to the request timeout.
//
// A slow client only reads its own pages more slowly: subscriptions pull from the log, nothing
// is queued for them.
#[utoipa::path(
    get,
    path = "/subscribe",
    tag = "streams",
    operation_id = "subscribe",
    params(
        SubscribeQuery,
        (
            "Last-Event-ID" = Option<String>,
            Header,
            nullable = false,
            pattern = r"^\s*\+?[0-9]{1,19}\s*$",
            description = "The last position the client saw: the stream resumes after it (overrides `from`)."
        ),
    ),
    responses(
        (
            status = 200,
            description = "An endless stream of Server-Sent Events. `schema` describes one event, as OpenAPI 3.2's \
                `itemSchema` does: `id: <position>` and `data: <Event as JSON>`, or, after a failure, `event: error` \
                with the error code as `data` (the stream then ends).",
            content_type = "text/event-stream",
            body = schemas::ServerSentEvent,
        ),
        (
            status = 400,
            description = "An invalid query parameter, filter or `Last-Event-ID` (`limit` does not apply here)."
        ),
        (
            status = 503,
            description = "Too many open subscriptions (`too_many_subscribers`, `LETHE_SUBSCRIBERS_MAX`), the event \
                database or the key vault is unreachable, or the server is shutting down; retry later."
        ),
    ),
)]
pub async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SubscribeQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query?;
    if query.limit.is_some() {
        return Err(ApiError::bad_request("limit does not apply to /subscribe"));
    }
    let filter = filter_of(query.stream_prefix.as_deref(), query.types.as_deref());
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
