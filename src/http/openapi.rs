//! The OpenAPI 3.1 document served at `/openapi.json`: every route of [`super::router`], its
//! parameters, request bodies and every response each handler can give.
//!
//! It is written by hand from the wire types ([`super::wire`]), the problem table
//! ([`super::problem`]) and the handlers, and checked against the running server by the
//! schemathesis test (`tests/it/schemathesis.rs`): a field, a status or a limit added to the API
//! must be added here too. Limits come from their constants so that the two cannot drift.
//!
//! Shapes that serde decides: request bodies refuse unknown members (`additionalProperties:
//! false`); `Option` members of responses are always present, as `null` when empty (so they are
//! `required` with a `null` type); the one exception is a token's secret, only present in the
//! answer to its creation.

use serde_json::{Map, Value, json};

use crate::limits::{
    APPEND_EVENTS_MAX, APPEND_STREAMS_MAX, ERASURES_LIST_MAX, EVENT_TYPE_LEN_MAX, FILTER_TYPES_MAX, NAME_LEN_MAX,
    READ_PAGE_EVENTS_MAX, REASON_LEN_MAX, TOKEN_NAME_LEN_MAX, WEBHOOK_SECRET_LEN_MAX, WEBHOOK_SECRET_LEN_MIN,
    WEBHOOK_URL_LEN_MAX,
};
use crate::model::ErasureStatus;

/// Where `$ref`s to schemas point.
const SCHEMAS: &str = "#/components/schemas/";
/// Largest value of a `u64` (versions, positions, `from`, `wait_ms`).
const U64_MAX: u64 = u64::MAX;
/// Characters `char::is_control` refuses (Unicode category Cc), as a regex class body.
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// Control characters free text may not hold (all but tab, line feed and carriage return).
const TEXT_FORBIDDEN: &str = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f";
/// Characters `str::trim` removes (Unicode `White_Space`), as a regex class.
const TRIMMED: &str = r"[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (path, item) in stream_paths()
        .into_iter()
        .chain(consumer_paths())
        .chain(admin_paths())
        .chain(ops_paths())
    {
        paths.insert(path.to_owned(), item);
    }
    json!({
        "openapi": "3.1.0",
        "info": info(),
        "tags": tags(),
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (`Authorization: Bearer <token>`). Roles: `reader` (reads, \
                        subscriptions, consumer reads and acks), `writer` (+ appends, stream deletion), `admin` \
                        (+ everything under `/admin`, consumer registration, tokens). No token, an unknown or \
                        a revoked one: 401 `unauthorized`; a role too low: 403 `forbidden`. Both are decided \
                        before the route looks at its path, so neither reveals whether a stream exists."
                }
            },
            "parameters": parameters(),
            "schemas": schemas(),
        }
    })
}

fn info() -> Value {
    json!({
        "title": "Lethe",
        "version": env!("CARGO_PKG_VERSION"),
        "summary": "An event store that can forget.",
        "description": "Every stream's payloads are encrypted with a key of their own; forgetting a data subject \
            destroys the keys of its streams and leaves tombstones.\n\n\
            Errors are RFC 9457 problem documents (`application/problem+json`) with a stable `code`, and change \
            nothing. Besides the answers listed per operation: a path without a route gets 404 `not_found`, a \
            method a path does not have gets 405 `method_not_allowed` with `Allow`. Request bodies are JSON \
            objects (`Content-Type: application/json`, at most `LETHE_BODY_LIMIT_BYTES`, default 4 MiB) and \
            refuse members they do not define. Each operation names the role its token needs \
            (`x-lethe-role`).",
        "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" }
    })
}

fn tags() -> Value {
    json!([
        { "name": "streams", "description": "Appends, stream reads, stream deletion, the global log, subscriptions." },
        { "name": "consumers", "description": "Durable consumers: a checkpoint Lethe keeps for a reader of the log." },
        { "name": "admin", "description": "Erasure requests, data subjects, legal holds, API tokens." },
        { "name": "ops", "description": "Liveness, readiness, metrics, this document. No token needed." }
    ])
}

// ---------------------------------------------------------------------------------------------
// Building blocks

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("{SCHEMAS}{name}") })
}

fn param_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

/// `schema` or `null`.
fn nullable(schema: Value) -> Value {
    json!({ "anyOf": [schema, { "type": "null" }] })
}

/// A JSON request body.
fn json_body(schema: &str, required: bool) -> Value {
    json!({
        "required": required,
        "content": { "application/json": { "schema": schema_ref(schema) } }
    })
}

/// A JSON response.
fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

/// A problem response whose `code` is one of `codes` (`None`: any code).
fn problem(status: u16, description: &str, codes: Option<&[&str]>) -> Value {
    let mut narrowing = json!({ "properties": { "status": { "const": status } } });
    if let Some(codes) = codes {
        narrowing["properties"]["code"] = json!({ "enum": codes });
    }
    json!({
        "description": description,
        "content": {
            "application/problem+json": {
                "schema": { "allOf": [schema_ref("Problem"), narrowing] }
            }
        }
    })
}

/// `400 invalid_request` (and `invalid_stream_name` when the route names a stream).
fn bad_request(description: &str, stream_names: bool) -> Value {
    let codes: &[&str] = if stream_names {
        &["invalid_request", "invalid_stream_name"]
    } else {
        &["invalid_request"]
    };
    problem(400, description, Some(codes))
}

fn not_found(description: &str) -> Value {
    problem(
        404,
        &format!(
            "{description} (`not_found`; also the answer to any path without a route, e.g. a path parameter \
             `.` or `..` that a client normalised away)."
        ),
        Some(&["not_found"]),
    )
}

fn unsupported_media_type() -> Value {
    problem(
        415,
        "The body is not declared as JSON (`Content-Type: application/json` is required).",
        Some(&["unsupported_media_type"]),
    )
}

/// 413: from the body limit (`LETHE_BODY_LIMIT_BYTES`, counted on the raw bytes) or an event or
/// append over its size limit.
fn payload_too_large() -> Value {
    problem(
        413,
        "The body is larger than the request body limit (`LETHE_BODY_LIMIT_BYTES`, default 4 MiB), or an \
         event's or the append's `data` + `metadata` is over its limit (1 MiB per event, 4 MiB per append).",
        Some(&["payload_too_large"]),
    )
}

fn timeout() -> Value {
    problem(
        408,
        "The request took longer than the request timeout (`LETHE_REQUEST_TIMEOUT_SECS`; for reads, plus the \
         longest long poll).",
        Some(&["request_timeout"]),
    )
}

/// 500 and 503: what any route that touches storage or the key vault can answer.
fn server_side(responses: &mut Map<String, Value>) {
    responses.insert(
        "500".into(),
        problem(
            500,
            "An internal failure (`storage_error`, `keyvault_error`, `corrupt_data`, `internal_error`); the \
             details are in the server log, not in the answer.",
            None,
        ),
    );
    responses.insert(
        "503".into(),
        problem(
            503,
            "The event database or the key vault is unreachable, or the server is shutting down; retry later.",
            Some(&["storage_unavailable", "keyvault_unavailable", "shutting_down"]),
        ),
    );
}

/// An operation that needs a token of `role`: adds the role to the description and the 401 and
/// 403 answers. `extra` holds the other members (parameters, requestBody, responses).
fn operation(
    tag: &str,
    operation_id: &str,
    summary: &str,
    description: &str,
    role: &str,
    mut responses: Map<String, Value>,
    extra: Value,
) -> Value {
    let mut unauthorized = problem(
        401,
        "No bearer token, or an unknown or revoked one (`unauthorized`).",
        Some(&["unauthorized"]),
    );
    unauthorized["headers"] = json!({
        "WWW-Authenticate": {
            "description": "The scheme to authenticate with.",
            "required": true,
            "schema": { "const": "Bearer" }
        }
    });
    responses.insert("401".into(), unauthorized);
    responses.insert(
        "403".into(),
        problem(
            403,
            &format!("The token's role is below `{role}` (`forbidden`)."),
            Some(&["forbidden"]),
        ),
    );
    // Every route with a token is under the request timeout, but for subscriptions.
    responses.insert("408".into(), timeout());
    server_side(&mut responses);
    let mut op = json!({
        "tags": [tag],
        "operationId": operation_id,
        "summary": summary,
        "description": format!("{description}\n\nNeeds the `{role}` role."),
        "x-lethe-role": role,
        "responses": responses,
    });
    if let (Some(op), Value::Object(extra)) = (op.as_object_mut(), extra) {
        op.extend(extra);
    }
    op
}

/// A response map from `(status, response)` pairs.
fn responses<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn etag_header(required: bool) -> Value {
    json!({
        "ETag": {
            "description": "The stream's last version as an entity tag, e.g. `\"3\"` (usable in `If-Match`).",
            "required": required,
            "schema": { "type": "string", "pattern": "^\"[0-9]+\"$" }
        }
    })
}

/// Adds OpenAPI links to a response: `(name, operationId, {parameter: runtime expression})`.
fn with_links(mut response: Value, links: &[(&str, &str, Value)]) -> Value {
    let links: Map<String, Value> = links
        .iter()
        .map(|(name, operation_id, parameters)| {
            (
                (*name).to_owned(),
                json!({ "operationId": operation_id, "parameters": parameters }),
            )
        })
        .collect();
    response["links"] = Value::Object(links);
    response
}

/// Where an appended stream can be read and deleted.
fn stream_links(stream: &str) -> [(&'static str, &'static str, Value); 2] {
    [
        ("ReadStream", "readStream", json!({ "stream": stream })),
        ("DeleteStream", "deleteStream", json!({ "stream": stream })),
    ]
}

// ---------------------------------------------------------------------------------------------
// Paths

fn stream_paths() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/streams/{stream}",
            json!({
                "get": read_stream(),
                "post": append(),
                "delete": delete_stream(),
            }),
        ),
        ("/streams", json!({ "post": append_multi() })),
        ("/log", json!({ "get": log() })),
        ("/subscribe", json!({ "get": subscribe() })),
    ]
}

fn append() -> Value {
    let mut ok = json_response(
        "An idempotent retry: every event id is already stored in this stream at the same version with \
         the same content; nothing was stored again.",
        schema_ref("AppendResult"),
    );
    ok["headers"] = etag_header(true);
    let ok = with_links(ok, &stream_links("$response.body#/stream"));
    let mut created = json_response("The events were appended.", schema_ref("AppendResult"));
    created["headers"] = etag_header(true);
    let created = with_links(created, &stream_links("$response.body#/stream"));
    operation(
        "streams",
        "append",
        "Append events to one stream",
        "Appends `events` atomically at the end of the stream, if the stream's version matches \
         `expected_version` (or the `If-Match` header; default `any`). The first append with a `subject` \
         binds the stream to that data subject for good.",
        "writer",
        responses([
            ("200", ok),
            ("201", created),
            (
                "400",
                bad_request(
                    "A malformed body, an invalid stream name (`$` names are reserved), subject or event type, \
                     no events or more than the limit, an event id twice, a malformed `If-Match` or one that \
                     disagrees with `expected_version`.",
                    true,
                ),
            ),
            ("404", not_found("No such route")),
            (
                "409",
                problem(
                    409,
                    "`wrong_expected_version` (with `current_version` and `streams`), `subject_mismatch` (the \
                     stream is bound to another subject or to none), `duplicate_event_id` (an event id already \
                     stored elsewhere or with other content), or `erasure_in_progress` (the subject is being \
                     forgotten and takes no new streams).",
                    Some(&[
                        "wrong_expected_version",
                        "subject_mismatch",
                        "duplicate_event_id",
                        "erasure_in_progress",
                    ]),
                ),
            ),
            (
                "410",
                problem(
                    410,
                    "The stream was shredded: its subject was forgotten (`stream_erased`) or it was deleted \
                     (`stream_deleted`).",
                    Some(&["stream_erased", "stream_deleted"]),
                ),
            ),
            ("413", payload_too_large()),
            ("415", unsupported_media_type()),
        ]),
        json!({
            "parameters": [param_ref("StreamName"), param_ref("IfMatch")],
            "requestBody": json_body("AppendRequest", true),
        }),
    )
}

fn append_multi() -> Value {
    operation(
        "streams",
        "appendMulti",
        "Append to several streams atomically",
        "One append over several streams, each with its own expected version and optional subject: every \
         stream is written or none is, and the events take contiguous positions in the order given. One \
         failed expectation fails the whole append and reports each stream's current version.",
        "writer",
        responses([
            (
                "200",
                json_response(
                    "An idempotent retry: nothing was stored again.",
                    schema_ref("MultiAppendResult"),
                ),
            ),
            (
                "201",
                with_links(
                    json_response("The events were appended.", schema_ref("MultiAppendResult")),
                    &stream_links("$response.body#/appends/0/stream"),
                ),
            ),
            (
                "400",
                bad_request(
                    "A malformed body, no streams or more than the limit, a stream twice, an invalid stream \
                     name, subject or event type, a stream without events, more events than the limit, an \
                     event id twice.",
                    true,
                ),
            ),
            (
                "409",
                problem(
                    409,
                    "`wrong_expected_version` (with `streams`: each stream's `current_version`), \
                     `subject_mismatch`, `duplicate_event_id` or `erasure_in_progress`.",
                    Some(&[
                        "wrong_expected_version",
                        "subject_mismatch",
                        "duplicate_event_id",
                        "erasure_in_progress",
                    ]),
                ),
            ),
            (
                "410",
                problem(
                    410,
                    "One of the streams was shredded (`stream_erased`, `stream_deleted`; `stream` names it).",
                    Some(&["stream_erased", "stream_deleted"]),
                ),
            ),
            ("413", payload_too_large()),
            ("415", unsupported_media_type()),
        ]),
        json!({ "requestBody": json_body("MultiAppendRequest", true) }),
    )
}

fn read_stream() -> Value {
    let mut ok = json_response("A page of the stream.", schema_ref("StreamPage"));
    ok["headers"] = etag_header(false);
    operation(
        "streams",
        "readStream",
        "Read a stream",
        "Reads up to `limit` events from version `from` (inclusive), forward or backward. System streams \
         (`$erasures`) are readable too. Events of a shredded stream keep everything but `data`, which is \
         `null`, with `erased: true`.",
        "reader",
        responses([
            ("200", ok),
            ("400", bad_request("An invalid stream name or query parameter.", true)),
            ("404", not_found("No such stream")),
        ]),
        json!({
            "parameters": [
                param_ref("ReadableStreamName"),
                {
                    "name": "from", "in": "query",
                    "description": "First version to read (inclusive). Default: 0 forward, the last version backward.",
                    "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX }
                },
                param_ref("Limit"),
                {
                    "name": "direction", "in": "query",
                    "schema": { "type": "string", "enum": ["forward", "backward"], "default": "forward" }
                }
            ]
        }),
    )
}

fn delete_stream() -> Value {
    operation(
        "streams",
        "deleteStream",
        "Delete (shred) one stream",
        "Destroys the stream's key and writes a `$erased` tombstone: its events keep everything but `data`, and \
         appends to it fail with `stream_deleted`. The body is optional (without `Content-Type` it is \
         ignored).",
        "writer",
        responses([
            (
                "200",
                with_links(
                    json_response("The stream was shredded.", schema_ref("Erasure")),
                    &[(
                        "GetErasure",
                        "getErasure",
                        json!({ "id": "$response.body#/request_id" }),
                    )],
                ),
            ),
            (
                "400",
                bad_request(
                    "An invalid stream name (system streams cannot be deleted) or a malformed body.",
                    true,
                ),
            ),
            ("404", not_found("No such stream")),
            (
                "410",
                problem(
                    410,
                    "The stream was shredded already (`stream_erased`, `stream_deleted`).",
                    Some(&["stream_erased", "stream_deleted"]),
                ),
            ),
            ("413", payload_too_large()),
            ("415", unsupported_media_type()),
        ]),
        json!({
            "parameters": [param_ref("StreamName")],
            "requestBody": json_body("DeleteStreamRequest", false),
        }),
    )
}

fn log() -> Value {
    operation(
        "streams",
        "readLog",
        "Read the global log",
        "Up to `limit` events of every stream in commit order, from position `from` (inclusive), optionally \
         only streams whose name starts with `stream_prefix` and only the event types in `types`. Continue \
         with `from=next`; `head` is the last committed position.",
        "reader",
        responses([
            ("200", json_response("A page of the log.", schema_ref("LogPage"))),
            ("400", bad_request("An invalid query parameter or filter.", true)),
        ]),
        json!({
            "parameters": [param_ref("From"), param_ref("Limit"), param_ref("StreamPrefix"), param_ref("Types")]
        }),
    )
}

fn subscribe() -> Value {
    let mut op = operation(
        "streams",
        "subscribe",
        "Subscribe to the log (Server-Sent Events)",
        "The log from position `from` as Server-Sent Events: first what is stored (catch-up), then new events \
         as they are committed (live), with no gap and no duplicate between the two. Each event's SSE `id` is \
         its position and its `data` an `Event` as JSON; a client resumes with `Last-Event-ID`. Comments keep \
         the connection alive. After a failure the stream sends one `event: error` (its data is the error \
         code) and ends. Not subject to the request timeout.",
        "reader",
        responses([
            (
                "200",
                json!({
                    "description": "An endless stream of Server-Sent Events. `schema` describes one event, as \
                        OpenAPI 3.2's `itemSchema` does: `id: <position>` and `data: <Event as JSON>`, or, after a \
                        failure, `event: error` with the error code as `data` (the stream then ends).",
                    "content": { "text/event-stream": { "schema": schema_ref("ServerSentEvent") } }
                }),
            ),
            (
                "400",
                bad_request(
                    "An invalid query parameter, filter or `Last-Event-ID` (`limit` does not apply here).",
                    true,
                ),
            ),
        ]),
        json!({
            "parameters": [
                param_ref("From"),
                param_ref("StreamPrefix"),
                param_ref("Types"),
                {
                    "name": "Last-Event-ID", "in": "header",
                    "description": "The last position the client saw: the stream resumes after it (overrides `from`).",
                    "schema": { "type": "string", "pattern": r"^\s*\+?[0-9]{1,19}\s*$" }
                }
            ]
        }),
    );
    if let Some(responses) = op["responses"].as_object_mut() {
        responses.remove("408");
    }
    op["responses"]["503"] = problem(
        503,
        "Too many open subscriptions (`too_many_subscribers`, `LETHE_SUBSCRIBERS_MAX`), the event database or \
         the key vault is unreachable, or the server is shutting down; retry later.",
        Some(&[
            "too_many_subscribers",
            "storage_unavailable",
            "keyvault_unavailable",
            "shutting_down",
        ]),
    );
    op
}

fn consumer_paths() -> Vec<(&'static str, Value)> {
    vec![
        ("/consumers", json!({ "get": list_consumers() })),
        (
            "/consumers/{name}",
            json!({ "put": put_consumer(), "get": get_consumer(), "delete": delete_consumer() }),
        ),
        ("/consumers/{name}/events", json!({ "get": consumer_events() })),
        ("/consumers/{name}/ack", json!({ "post": ack() })),
    ]
}

fn list_consumers() -> Value {
    operation(
        "consumers",
        "listConsumers",
        "List durable consumers",
        "Every consumer with its filter, checkpoint and lag.",
        "admin",
        responses([(
            "200",
            json_response(
                "The consumers.",
                json!({
                    "type": "object",
                    "required": ["consumers"],
                    "properties": { "consumers": { "type": "array", "items": schema_ref("Consumer") } }
                }),
            ),
        )]),
        json!({}),
    )
}

fn put_consumer() -> Value {
    operation(
        "consumers",
        "putConsumer",
        "Create or update a durable consumer",
        "Registers a consumer, or changes its filter and `erasure_dependent` flag (its checkpoint is kept). An \
         erasure-dependent consumer is a service that derives data from events: erasures wait for it to \
         acknowledge their tombstones.",
        "admin",
        responses([
            (
                "200",
                with_links(
                    json_response("The consumer.", schema_ref("Consumer")),
                    &[
                        ("GetConsumer", "getConsumer", json!({ "name": "$response.body#/name" })),
                        (
                            "ConsumerEvents",
                            "consumerEvents",
                            json!({ "name": "$response.body#/name" }),
                        ),
                        ("AckConsumer", "ackConsumer", json!({ "name": "$response.body#/name" })),
                    ],
                ),
            ),
            ("400", bad_request("An invalid name, filter or body.", true)),
            ("404", not_found("No such route")),
            ("413", payload_too_large()),
            ("415", unsupported_media_type()),
        ]),
        json!({
            "parameters": [param_ref("ConsumerName")],
            "requestBody": json_body("ConsumerRequest", true),
        }),
    )
}

fn get_consumer() -> Value {
    operation(
        "consumers",
        "getConsumer",
        "Show a durable consumer",
        "The consumer's filter, checkpoint and lag.",
        "admin",
        responses([
            ("200", json_response("The consumer.", schema_ref("Consumer"))),
            ("400", bad_request("An invalid consumer name.", false)),
            ("404", not_found("No such consumer")),
        ]),
        json!({ "parameters": [param_ref("ConsumerName")] }),
    )
}

fn delete_consumer() -> Value {
    operation(
        "consumers",
        "deleteConsumer",
        "Delete a durable consumer",
        "Removes the consumer and its checkpoint. An erasure-dependent consumer stops holding up the \
         erasures that wait for its acknowledgement.",
        "admin",
        responses([
            ("204", json!({ "description": "Deleted." })),
            ("400", bad_request("An invalid consumer name.", false)),
            ("404", not_found("No such consumer")),
        ]),
        json!({ "parameters": [param_ref("ConsumerName")] }),
    )
}

fn consumer_events() -> Value {
    let long_poll_max_ms = super::HttpLimits::default().long_poll_max.as_millis();
    operation(
        "consumers",
        "consumerEvents",
        "Read a consumer's next events (long poll)",
        "Up to `limit` events after the consumer's checkpoint that match its filter. When there are none, \
         waits up to `wait_ms` for new ones. Reading does not move the checkpoint: acknowledge with \
         `POST /consumers/{name}/ack`.",
        "reader",
        responses([
            (
                "200",
                json_response("The events (possibly none).", schema_ref("ConsumerEvents")),
            ),
            (
                "400",
                bad_request("An invalid consumer name or query parameter.", false),
            ),
            ("404", not_found("No such consumer")),
        ]),
        json!({
            "parameters": [
                param_ref("ConsumerName"),
                param_ref("Limit"),
                {
                    "name": "wait_ms", "in": "query",
                    "description": format!(
                        "How long to wait for events when there are none, in milliseconds (default 0). \
                         Longer waits are cut to {long_poll_max_ms} ms."
                    ),
                    "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX, "default": 0 }
                }
            ]
        }),
    )
}

fn ack() -> Value {
    operation(
        "consumers",
        "ackConsumer",
        "Acknowledge a consumer's events",
        "Moves the checkpoint to `position` (never back: a lower position leaves it where it is).",
        "reader",
        responses([
            (
                "200",
                json_response("The consumer, checkpoint moved.", schema_ref("Consumer")),
            ),
            (
                "400",
                bad_request("A malformed body, or a position past the head of the log.", false),
            ),
            ("404", not_found("No such consumer")),
            ("413", payload_too_large()),
            ("415", unsupported_media_type()),
        ]),
        json!({
            "parameters": [param_ref("ConsumerName")],
            "requestBody": json_body("AckRequest", true),
        }),
    )
}

fn admin_paths() -> Vec<(&'static str, Value)> {
    vec![
        ("/admin/subjects/{subject}/forget", json!({ "post": forget() })),
        ("/admin/subjects/{subject}", json!({ "get": subject() })),
        ("/admin/subjects/{subject}/export", json!({ "get": export() })),
        (
            "/admin/subjects/{subject}/hold",
            json!({ "put": place_hold(), "delete": lift_hold() }),
        ),
        ("/admin/erasures", json!({ "get": erasures() })),
        ("/admin/erasures/{id}", json!({ "get": erasure() })),
        ("/admin/tokens", json!({ "post": create_token(), "get": list_tokens() })),
        ("/admin/audit", json!({ "get": list_audit() })),
        ("/admin/reports/erasures", json!({ "get": erasure_report() })),
        ("/admin/audit/verify", json!({ "get": verify_audit() })),
        ("/admin/tokens/{id}", json!({ "delete": revoke_token() })),
    ]
}

fn forget() -> Value {
    operation(
        "admin",
        "forgetSubject",
        "Forget a data subject (GDPR Art. 17)",
        "Records an erasure request and runs it: every stream bound to the subject is shredded (its key \
         destroyed, a `$erased` tombstone) and a `SubjectForgotten` tombstone goes to `$erasures`. If the key \
         vault is unreachable the request stays `pending` and is resumed. Idempotent: forgetting a forgotten \
         subject completes at once (`already_erased: true`).",
        "admin",
        responses([
            (
                "202",
                with_links(
                    json_response("The erasure request, as far as it got.", schema_ref("Erasure")),
                    &[
                        (
                            "GetErasure",
                            "getErasure",
                            json!({ "id": "$response.body#/request_id" }),
                        ),
                        (
                            "GetSubject",
                            "getSubject",
                            json!({ "subject": "$request.path.subject" }),
                        ),
                        (
                            "ExportSubject",
                            "exportSubject",
                            json!({ "subject": "$request.path.subject" }),
                        ),
                    ],
                ),
            ),
            (
                "400",
                bad_request(
                    "An invalid subject id or body, or a text member over its length limit.",
                    false,
                ),
            ),
            ("404", not_found("No such route")),
            (
                "409",
                problem(
                    409,
                    "An active legal hold blocks forgetting this subject (`legal_hold`); the request is recorded as \
                     `refused` (`request_id`), and `hold_until` says when the hold lapses (`null`: when lifted).",
                    Some(&["legal_hold"]),
                ),
            ),
            ("413", payload_too_large()),
            ("415", unsupported_media_type()),
        ]),
        json!({
            "parameters": [param_ref("Subject")],
            "requestBody": json_body("ForgetRequest", true),
        }),
    )
}

fn subject() -> Value {
    operation(
        "admin",
        "getSubject",
        "Show a data subject",
        "The streams bound to the subject (with their status) and its erasure requests, newest first. An \
         unknown subject has none of either.",
        "admin",
        responses([
            ("200", json_response("The subject.", schema_ref("Subject"))),
            ("400", bad_request("An invalid subject id.", false)),
            ("404", not_found("No such route")),
        ]),
        json!({ "parameters": [param_ref("Subject")] }),
    )
}

fn export() -> Value {
    operation(
        "admin",
        "exportSubject",
        "Export a data subject's events (GDPR Art. 15/20)",
        "Every event of the subject's streams, decrypted (`data: null, erased: true` where a stream was \
         shredded), as one JSON document streamed page by page. A failure part-way cuts the document short, \
         so a client sees invalid JSON rather than a silently incomplete export.",
        "admin",
        responses([
            ("200", json_response("The export.", schema_ref("Export"))),
            ("400", bad_request("An invalid subject id.", false)),
            ("404", not_found("No such route")),
        ]),
        json!({ "parameters": [param_ref("Subject")] }),
    )
}

fn place_hold() -> Value {
    operation(
        "admin",
        "placeHold",
        "Place a legal hold on a data subject",
        "While the hold is active (until `until`, or until it is lifted), forgetting the subject is refused \
         with 409 `legal_hold` (the refused request is recorded). Placing a hold again replaces it.",
        "admin",
        responses([
            (
                "200",
                with_links(
                    json_response("The hold.", schema_ref("Hold")),
                    &[
                        (
                            "ForgetSubject",
                            "forgetSubject",
                            json!({ "subject": "$request.path.subject" }),
                        ),
                        (
                            "GetSubject",
                            "getSubject",
                            json!({ "subject": "$request.path.subject" }),
                        ),
                        ("LiftHold", "liftHold", json!({ "subject": "$request.path.subject" })),
                    ],
                ),
            ),
            (
                "400",
                bad_request("An invalid subject id or body, or an empty or too long reason.", false),
            ),
            ("404", not_found("No such route")),
            ("413", payload_too_large()),
            ("415", unsupported_media_type()),
        ]),
        json!({
            "parameters": [param_ref("Subject")],
            "requestBody": json_body("HoldRequest", true),
        }),
    )
}

fn lift_hold() -> Value {
    operation(
        "admin",
        "liftHold",
        "Lift a data subject's legal hold",
        "The subject can be forgotten again.",
        "admin",
        responses([
            ("204", json!({ "description": "Lifted." })),
            ("400", bad_request("An invalid subject id.", false)),
            ("404", not_found("The subject has no hold")),
        ]),
        json!({ "parameters": [param_ref("Subject")] }),
    )
}

fn erasures() -> Value {
    operation(
        "admin",
        "listErasures",
        "List erasure requests",
        "Erasure requests (forgotten subjects and deleted streams), newest first: the `limit` newest that \
         match `subject`, `status`, `from` and `to`, then only those that match `overdue`.",
        "admin",
        responses([
            ("200", json_response("The erasure requests.", schema_ref("ErasureList"))),
            ("400", bad_request("An invalid subject id or limit.", false)),
        ]),
        json!({
            "parameters": [
                {
                    "name": "subject", "in": "query",
                    "description": "Only this subject's erasure requests.",
                    "schema": schema_ref("SubjectId")
                },
                {
                    "name": "status", "in": "query",
                    "description": "Only requests in this status.",
                    "schema": schema_ref("ErasureStatus")
                },
                {
                    "name": "from", "in": "query",
                    "description": "Only requests made at or after this time (RFC 3339).",
                    "schema": { "type": "string", "format": "date-time" }
                },
                {
                    "name": "to", "in": "query",
                    "description": "Only requests made before this time (RFC 3339).",
                    "schema": { "type": "string", "format": "date-time" }
                },
                {
                    "name": "overdue", "in": "query",
                    "description": "Only requests past their deadline and not finished (`true`), or only the others (`false`).",
                    "schema": { "type": "boolean" }
                },
                {
                    "name": "limit", "in": "query",
                    "description": "How many of the newest requests to look at.",
                    "schema": { "type": "integer", "minimum": 1, "maximum": ERASURES_LIST_MAX, "default": 100 }
                }
            ]
        }),
    )
}

fn erasure() -> Value {
    operation(
        "admin",
        "getErasure",
        "Show an erasure request",
        "Its status (`pending` → `keys_destroyed` → `awaiting_acknowledgements` → `completed`, or `refused` \
         under a legal hold), the streams it shredded, the keys it destroyed, its deadline, and each \
         erasure-dependent consumer with its acknowledgement.",
        "admin",
        responses([
            ("200", json_response("The erasure request.", schema_ref("Erasure"))),
            ("400", bad_request("The id is not a UUID.", false)),
            ("404", not_found("No such erasure request")),
        ]),
        json!({
            "parameters": [{
                "name": "id", "in": "path", "required": true,
                "description": "The erasure request's id (`request_id`).",
                "schema": { "type": "string", "format": "uuid" }
            }]
        }),
    )
}

fn create_token() -> Value {
    operation(
        "admin",
        "createToken",
        "Create an API token",
        "Creates a token with a role. Its secret is in this answer and nowhere else: Lethe stores only a \
         hash of it.",
        "admin",
        responses([
            (
                "201",
                with_links(
                    json_response("The token, with its secret.", schema_ref("NewToken")),
                    &[("RevokeToken", "revokeToken", json!({ "id": "$response.body#/id" }))],
                ),
            ),
            (
                "400",
                bad_request("An invalid name or role, or a malformed body.", false),
            ),
            ("413", payload_too_large()),
            ("415", unsupported_media_type()),
        ]),
        json!({ "requestBody": json_body("TokenRequest", true) }),
    )
}

fn list_audit() -> Value {
    operation(
        "admin",
        "listAudit",
        "Read the audit trail",
        "The hash-chained trail of admin actions, oldest first, a page at a time (`after` = the previous \
         page's `next_after`). Entries carry ids, never personal data.",
        "admin",
        responses([
            ("200", json_response("A page of entries.", schema_ref("AuditList"))),
            ("400", bad_request("An invalid query parameter.", false)),
        ]),
        json!({
            "parameters": [
                { "name": "after", "in": "query", "description": "Entries after this sequence number (default 0).",
                  "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX } },
                { "name": "limit", "in": "query", "description": "Entries per page (default 100).",
                  "schema": { "type": "integer", "minimum": 1, "maximum": crate::limits::AUDIT_PAGE_MAX } },
                { "name": "action", "in": "query", "description": "Only this action.", "schema": { "type": "string" } },
                { "name": "subject", "in": "query", "description": "Only entries about this subject.",
                  "schema": schema_ref("SubjectId") }
            ]
        }),
    )
}

fn verify_audit() -> Value {
    operation(
        "admin",
        "verifyAudit",
        "Verify the audit trail",
        "Walks the whole chain (`hash = SHA-256(prev_hash ‖ canonical JSON of the entry)`) and names the \
         first entry whose link or hash does not hold.",
        "admin",
        responses([(
            "200",
            json_response("The verification.", schema_ref("AuditVerification")),
        )]),
        json!({}),
    )
}

fn erasure_report() -> Value {
    operation(
        "admin",
        "erasureReport",
        "The erasure report",
        "Requests made in `[from, to)`: counts by status, time from request to completion (median, p95, max), \
         overdue requests (past their one-month deadline), dependents that have not acknowledged a tombstone and \
         for how long, keys destroyed, active legal holds. `format=csv` gives `section,key,value` rows.",
        "admin",
        responses([
            (
                "200",
                json!({
                    "description": "The report.",
                    "content": {
                        "application/json": { "schema": schema_ref("ErasureReport") },
                        "text/csv": { "schema": { "type": "string" } }
                    }
                }),
            ),
            ("400", bad_request("An invalid query parameter.", false)),
        ]),
        json!({
            "parameters": [
                { "name": "from", "in": "query", "description": "Requests made at or after (RFC 3339).",
                  "schema": { "type": "string", "format": "date-time" } },
                { "name": "to", "in": "query", "description": "Requests made before (RFC 3339).",
                  "schema": { "type": "string", "format": "date-time" } },
                { "name": "format", "in": "query", "description": "`json` (default) or `csv`.",
                  "schema": { "type": "string", "enum": ["json", "csv"] } }
            ]
        }),
    )
}

fn audit_schemas() -> Value {
    json!({
        "AuditEntry": {
            "type": "object",
            "required": ["seq", "at", "actor", "action", "subject", "request_id", "details", "prev_hash", "hash"],
            "properties": {
                "seq": { "type": "integer", "minimum": 1 },
                "at": { "type": "string", "format": "date-time" },
                "actor": { "type": "string", "description": "The token's name, or `lethe` for its own steps." },
                "action": { "type": "string" },
                "subject": { "type": ["string", "null"] },
                "request_id": { "type": ["string", "null"], "format": "uuid" },
                "details": {},
                "prev_hash": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                "hash": { "type": "string", "pattern": "^[0-9a-f]{64}$" }
            }
        },
        "ErasureReport": {
            "type": "object",
            "required": ["from", "to", "generated_at", "requests", "by_status", "time_to_complete", "overdue",
                         "unacknowledged", "keys_destroyed", "holds_active", "weekly"],
            "properties": {
                "from": { "type": ["string", "null"], "format": "date-time" },
                "to": { "type": ["string", "null"], "format": "date-time" },
                "generated_at": { "type": "string", "format": "date-time" },
                "requests": { "type": "integer", "minimum": 0 },
                "by_status": { "type": "object", "additionalProperties": { "type": "integer", "minimum": 0 } },
                "time_to_complete": {
                    "type": "object",
                    "required": ["count", "median_secs", "p95_secs", "max_secs"],
                    "properties": {
                        "count": { "type": "integer", "minimum": 0 },
                        "median_secs": { "type": ["number", "null"] },
                        "p95_secs": { "type": ["number", "null"] },
                        "max_secs": { "type": ["number", "null"] }
                    }
                },
                "overdue": { "type": "array", "items": { "type": "object" } },
                "unacknowledged": { "type": "array", "items": { "type": "object" } },
                "keys_destroyed": { "type": "integer", "minimum": 0 },
                "holds_active": { "type": "integer", "minimum": 0 },
                "weekly": {
                    "type": "array",
                    "description": "Requests per week (Monday to Sunday, UTC), oldest first, empty weeks included.",
                    "items": {
                        "type": "object",
                        "required": ["week", "requests", "completed", "median_secs_to_complete"],
                        "properties": {
                            "week": { "type": "string", "format": "date" },
                            "requests": { "type": "integer", "minimum": 0 },
                            "completed": { "type": "integer", "minimum": 0 },
                            "median_secs_to_complete": { "type": ["number", "null"] }
                        }
                    }
                }
            }
        },
        "AuditList": {
            "type": "object",
            "required": ["entries", "next_after"],
            "properties": {
                "entries": { "type": "array", "items": schema_ref("AuditEntry") },
                "next_after": { "type": ["integer", "null"], "minimum": 1 }
            }
        },
        "AuditVerification": {
            "type": "object",
            "required": ["intact", "entries", "head_seq", "first_broken_seq"],
            "properties": {
                "intact": { "type": "boolean" },
                "entries": { "type": "integer", "minimum": 0 },
                "head_seq": { "type": "integer", "minimum": 0 },
                "first_broken_seq": { "type": ["integer", "null"], "minimum": 1 }
            }
        }
    })
}

fn list_tokens() -> Value {
    operation(
        "admin",
        "listTokens",
        "List API tokens",
        "Every token, revoked ones too, without secrets.",
        "admin",
        responses([("200", json_response("The tokens.", schema_ref("TokenList")))]),
        json!({}),
    )
}

fn revoke_token() -> Value {
    operation(
        "admin",
        "revokeToken",
        "Revoke an API token",
        "The token stops working at once.",
        "admin",
        responses([
            ("204", json!({ "description": "Revoked." })),
            ("400", bad_request("The id is not a UUID.", false)),
            ("404", not_found("No such token, or it was revoked already")),
            (
                "409",
                problem(
                    409,
                    "The last active admin token cannot be revoked (`last_admin_token`): create another admin token \
                     first, so the API is never locked for good.",
                    Some(&["last_admin_token"]),
                ),
            ),
        ]),
        json!({
            "parameters": [{
                "name": "id", "in": "path", "required": true,
                "description": "The token's id.",
                "schema": { "type": "string", "format": "uuid" }
            }]
        }),
    )
}

fn ops_paths() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/healthz",
            json!({ "get": open_operation(
                "healthz",
                "Liveness",
                "Answers as long as the process is up.",
                responses([("200", json_response("Up.", schema_ref("Health")))]),
            )}),
        ),
        (
            "/readyz",
            json!({ "get": open_operation(
                "readyz",
                "Readiness",
                "Whether the event database and the key vault answer.",
                responses([
                    ("200", json_response("Ready.", schema_ref("Readiness"))),
                    ("503", json_response("Not ready: the database or the key vault does not answer.", schema_ref("Readiness"))),
                ]),
            )}),
        ),
        (
            "/metrics",
            json!({ "get": open_operation(
                "metrics",
                "Prometheus metrics",
                "Appends, events and bytes appended, errors by code, erasures, subscribers, the head of the log, \
                 key-cache hits and misses, request latency by route, and the group writer's transactions, \
                 appends and busy seconds since start.",
                responses([(
                    "200",
                    json!({
                        "description": "OpenMetrics text.",
                        "content": { "application/openmetrics-text": { "schema": { "type": "string" } } }
                    }),
                )]),
            )}),
        ),
        (
            "/openapi.json",
            json!({ "get": open_operation(
                "openapi",
                "This document",
                "The OpenAPI 3.1 description of every route.",
                responses([("200", json_response("The document.", json!({ "type": "object" })))]),
            )}),
        ),
        ui_path("/admin/ui", "adminUi", "The admin web page", "text/html"),
        ui_path(
            "/admin/ui/app.js",
            "adminUiScript",
            "The admin page's script",
            "text/javascript",
        ),
        ui_path(
            "/admin/ui/app.css",
            "adminUiStyles",
            "The admin page's stylesheet",
            "text/css",
        ),
    ]
}

/// One static file of the admin page (open: the page signs in with a token to call the API).
fn ui_path(path: &'static str, operation_id: &str, summary: &str, media_type: &str) -> (&'static str, Value) {
    (
        path,
        json!({ "get": open_operation(
            operation_id,
            summary,
            "A static file of the admin page served at `/admin/ui`; it holds no data.",
            responses([(
                "200",
                json!({
                    "description": "The file.",
                    "content": { media_type: { "schema": { "type": "string" } } }
                }),
            )]),
        )}),
    )
}

/// An operation that needs no token.
fn open_operation(operation_id: &str, summary: &str, description: &str, responses: Map<String, Value>) -> Value {
    json!({
        "tags": ["ops"],
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "security": [],
        "responses": responses,
    })
}

// ---------------------------------------------------------------------------------------------
// Components

fn name_pattern() -> String {
    format!("^[A-Za-z0-9_.:@-]{{1,{NAME_LEN_MAX}}}$")
}

fn parameters() -> Value {
    json!({
        "StreamName": {
            "name": "stream", "in": "path", "required": true,
            "description": "A stream name (a leading `$` is reserved for system streams).",
            "schema": schema_ref("StreamName")
        },
        "ReadableStreamName": {
            "name": "stream", "in": "path", "required": true,
            "description": "A stream name, or a system stream (`$erasures`).",
            "schema": { "type": "string", "pattern": format!("^\\$?[A-Za-z0-9_.:@-]{{1,{NAME_LEN_MAX}}}$") }
        },
        "Subject": {
            "name": "subject", "in": "path", "required": true,
            "description": "A data subject's id.",
            "schema": schema_ref("SubjectId")
        },
        "ConsumerName": {
            "name": "name", "in": "path", "required": true,
            "description": "A consumer's name (the stream-name charset).",
            "schema": { "type": "string", "pattern": name_pattern() }
        },
        "IfMatch": {
            "name": "If-Match", "in": "header",
            "description": "Optimistic concurrency as a header: `\"<version>\"` (the stream's last version, as in \
                its `ETag`) or `*` (the stream exists). Must agree with `expected_version` when both are given.",
            "schema": { "type": "string", "pattern": r#"^\s*(\*|(W/)?"[0-9]{1,20}")\s*$"# }
        },
        "From": {
            "name": "from", "in": "query",
            "description": "First position to read (inclusive; positions start at 1). Default 1.",
            "schema": { "type": "integer", "minimum": 0, "maximum": U64_MAX }
        },
        "Limit": {
            "name": "limit", "in": "query",
            "description": "Most events to return.",
            "schema": { "type": "integer", "minimum": 1, "maximum": READ_PAGE_EVENTS_MAX, "default": 100 }
        },
        "StreamPrefix": {
            "name": "stream_prefix", "in": "query",
            "description": format!(
                "Only streams whose name starts with this (empty: all). At most {NAME_LEN_MAX} bytes, no control \
                 characters."
            ),
            "schema": {
                "type": "string",
                "maxLength": NAME_LEN_MAX,
                "pattern": format!("^[^{CONTROL}]*$")
            }
        },
        "Types": {
            "name": "types", "in": "query",
            "description": format!(
                "Only these event types, comma-separated (each trimmed; empty items are ignored). At most \
                 {FILTER_TYPES_MAX} types of 1 to {EVENT_TYPE_LEN_MAX} characters without control characters."
            ),
            "schema": { "type": "string", "pattern": types_pattern() }
        }
    })
}

/// `types`: comma-separated items, each trimmed, then 0 (ignored) to 200 characters without control
/// characters.
fn types_pattern() -> String {
    let item = format!("{TRIMMED}*[^,{CONTROL}]{{0,{EVENT_TYPE_LEN_MAX}}}{TRIMMED}*");
    format!("^{item}(,{item})*$")
}

fn schemas() -> Value {
    let mut all = Map::new();
    for part in [
        request_schemas(),
        stream_schemas(),
        admin_schemas(),
        audit_schemas(),
        misc_schemas(),
    ] {
        if let Value::Object(part) = part {
            all.extend(part);
        }
    }
    Value::Object(all)
}

fn request_schemas() -> Value {
    json!({
        "StreamName": {
            "type": "string",
            "description": "1 to 200 characters of `A-Z a-z 0-9 _ . : @ -`. Never personal data: names are stored in clear.",
            "pattern": name_pattern()
        },
        "SubjectId": {
            "type": "string",
            "description": "A data subject's opaque, pseudonymous id: 1 to 200 characters of `A-Z a-z 0-9 _ . : @ -`.",
            "pattern": name_pattern()
        },
        "EventType": {
            "type": "string",
            "minLength": 1,
            "maxLength": EVENT_TYPE_LEN_MAX,
            "pattern": format!("^[^{CONTROL}]*$")
        },
        "ExpectedVersion": {
            "description": "`any` (default), `no_stream`, `exists`, or the stream's last version.",
            "anyOf": [
                { "type": "string", "enum": ["any", "no_stream", "exists"] },
                { "type": "integer", "minimum": 0, "maximum": U64_MAX }
            ]
        },
        "EventIn": {
            "type": "object",
            "additionalProperties": false,
            "required": ["type", "data"],
            "properties": {
                "id": nullable(json!({
                    "type": "string", "format": "uuid",
                    "description": "Makes retries idempotent; generated when absent."
                })),
                "type": schema_ref("EventType"),
                "data": { "description": "Any JSON; encrypted at rest. At most 1 MiB with `metadata`." },
                "metadata": { "description": "Any JSON (default `{}`); stored in clear: no personal data." }
            }
        },
        "AppendRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["events"],
            "properties": {
                "expected_version": nullable(schema_ref("ExpectedVersion")),
                "subject": nullable(schema_ref("SubjectId")),
                "events": {
                    "type": "array", "minItems": 1, "maxItems": APPEND_EVENTS_MAX,
                    "description": "Event ids must be distinct.",
                    "items": schema_ref("EventIn")
                }
            }
        },
        "StreamAppend": {
            "type": "object",
            "additionalProperties": false,
            "required": ["stream", "events"],
            "properties": {
                "stream": schema_ref("StreamName"),
                "expected_version": nullable(schema_ref("ExpectedVersion")),
                "subject": nullable(schema_ref("SubjectId")),
                "events": {
                    "type": "array", "minItems": 1, "maxItems": APPEND_EVENTS_MAX,
                    "items": schema_ref("EventIn")
                }
            }
        },
        "MultiAppendRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["appends"],
            "properties": {
                "appends": {
                    "type": "array", "minItems": 1, "maxItems": APPEND_STREAMS_MAX,
                    "description": format!(
                        "Distinct streams, at most {APPEND_EVENTS_MAX} events over all of them, event ids distinct."
                    ),
                    "items": schema_ref("StreamAppend")
                }
            }
        },
        "DeleteStreamRequest": {
            "type": "object",
            "additionalProperties": false,
            "description": "Why the stream is deleted (kept in the erasure request; no personal data).",
            "properties": {
                "reason": {
                    "type": ["string", "null"], "maxLength": REASON_LEN_MAX, "pattern": format!("^[^{TEXT_FORBIDDEN}]*$")
                },
                "requested_by": {
                    "type": ["string", "null"], "maxLength": REASON_LEN_MAX, "pattern": format!("^[^{TEXT_FORBIDDEN}]*$")
                },
                "reference": {
                    "type": ["string", "null"], "maxLength": REASON_LEN_MAX, "pattern": format!("^[^{TEXT_FORBIDDEN}]*$")
                }
            }
        },
        "ConsumerRequest": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "stream_prefix": {
                    "type": ["string", "null"],
                    "description": "Only streams whose name starts with this (empty or null: all).",
                    "maxLength": NAME_LEN_MAX,
                    "pattern": format!("^[^{CONTROL}]*$")
                },
                "types": {
                    "type": ["array", "null"],
                    "description": "Only these event types (empty or null: all).",
                    "maxItems": FILTER_TYPES_MAX,
                    "items": schema_ref("EventType")
                },
                "erasure_dependent": {
                    "type": "boolean", "default": false,
                    "description": "Erasures wait for this consumer to acknowledge their tombstones."
                },
                "webhook": nullable(schema_ref("Webhook"))
            }
        },
        "Webhook": {
            "type": "object",
            "additionalProperties": false,
            "description": "Tombstones are pushed to `url` (POST, signed with `X-Lethe-Signature: sha256=<hex \
                HMAC-SHA256(secret, body)>`, retried with backoff); a 2xx answer acknowledges them. A PUT without \
                `webhook` removes the consumer's webhook.",
            "required": ["url", "secret"],
            "properties": {
                "url": {
                    "type": "string",
                    "maxLength": WEBHOOK_URL_LEN_MAX,
                    "pattern": format!("^https?://[^{}{CONTROL}]*$", &TRIMMED[1..TRIMMED.len() - 1]),
                    "description": format!("`http://` or `https://`, at most {WEBHOOK_URL_LEN_MAX} bytes, no whitespace.")
                },
                "secret": {
                    "type": "string",
                    "minLength": WEBHOOK_SECRET_LEN_MIN,
                    "maxLength": WEBHOOK_SECRET_LEN_MAX,
                    "writeOnly": true,
                    "pattern": format!("^[^{CONTROL}]*$")
                }
            }
        },
        "HoldRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["reason"],
            "properties": {
                "reason": {
                    "type": "string",
                    "maxLength": REASON_LEN_MAX,
                    "pattern": format!(
                        "^[^{TEXT_FORBIDDEN}]*[^{}{TEXT_FORBIDDEN}][^{TEXT_FORBIDDEN}]*$",
                        &TRIMMED[1..TRIMMED.len() - 1]
                    ),
                    "description": "Why (not only whitespace; no control characters but tabs and line breaks; \
                        no personal data)."
                },
                "until": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "When the hold lapses (RFC 3339); absent or null: when it is lifted."
                }
            }
        },
        "AckRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["position"],
            "properties": {
                "position": {
                    "type": "integer", "minimum": 0, "maximum": U64_MAX,
                    "description": "The last position handled; at most the head of the log."
                }
            }
        },
        "ForgetRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["reason", "requested_by"],
            "description": "Why and for whom (kept in the erasure request; no personal data).",
            "properties": {
                "reason": { "type": "string", "maxLength": REASON_LEN_MAX, "pattern": format!("^[^{TEXT_FORBIDDEN}]*$") },
                "requested_by": { "type": "string", "maxLength": REASON_LEN_MAX, "pattern": format!("^[^{TEXT_FORBIDDEN}]*$") },
                "reference": {
                    "type": ["string", "null"], "maxLength": REASON_LEN_MAX, "pattern": format!("^[^{TEXT_FORBIDDEN}]*$")
                }
            }
        },
        "TokenRequest": {
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "role"],
            "properties": {
                "name": {
                    "type": "string", "minLength": 1, "maxLength": TOKEN_NAME_LEN_MAX,
                    "pattern": format!("^[^{CONTROL}]*$")
                },
                "role": schema_ref("Role")
            }
        }
    })
}

fn stream_schemas() -> Value {
    let version = json!({ "type": "integer", "minimum": 0 });
    let position = json!({ "type": "integer", "minimum": 1 });
    json!({
        "Event": {
            "type": "object",
            "required": ["id", "stream", "version", "position", "type", "data", "metadata", "recorded_at", "erased"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "stream": { "type": "string" },
                "version": version,
                "position": position,
                "type": { "type": "string" },
                "data": { "description": "The event's data; `null` once its stream was shredded (`erased: true`)." },
                "metadata": {},
                "recorded_at": { "type": "string", "format": "date-time" },
                "erased": { "type": "boolean" }
            }
        },
        "AppendResult": {
            "type": "object",
            "required": ["stream", "first_version", "last_version", "first_position", "last_position"],
            "properties": {
                "stream": { "type": "string" },
                "first_version": version,
                "last_version": version,
                "first_position": position,
                "last_position": position
            }
        },
        "MultiAppendResult": {
            "type": "object",
            "required": ["appends"],
            "properties": { "appends": { "type": "array", "items": schema_ref("AppendResult") } }
        },
        "StreamStatus": { "type": "string", "enum": ["active", "erased", "deleted"] },
        "StreamPage": {
            "type": "object",
            "required": ["stream", "subject", "status", "version", "events"],
            "properties": {
                "stream": { "type": "string" },
                "subject": { "type": ["string", "null"], "description": "The subject the stream is bound to." },
                "status": schema_ref("StreamStatus"),
                "version": { "type": ["integer", "null"], "minimum": 0, "description": "The last version." },
                "events": { "type": "array", "items": schema_ref("Event") }
            }
        },
        "LogPage": {
            "type": "object",
            "required": ["events", "next", "head"],
            "properties": {
                "events": { "type": "array", "items": schema_ref("Event") },
                "next": { "type": "integer", "minimum": 1, "description": "Where the next page starts (`from`)." },
                "head": { "type": "integer", "minimum": 0, "description": "The last committed position (0: empty log)." }
            }
        },
        "Consumer": {
            "type": "object",
            "required": ["name", "stream_prefix", "types", "erasure_dependent", "checkpoint", "lag", "webhook_url"],
            "properties": {
                "name": { "type": "string" },
                "stream_prefix": { "type": ["string", "null"] },
                "types": { "type": "array", "items": { "type": "string" } },
                "erasure_dependent": { "type": "boolean" },
                "checkpoint": { "type": "integer", "minimum": 0, "description": "Last acknowledged position (0: none)." },
                "lag": { "type": "integer", "minimum": 0, "description": "Positions between the checkpoint and the head." },
                "webhook_url": { "type": ["string", "null"], "description": "Where tombstones are pushed, if anywhere." }
            }
        },
        "ConsumerEvents": {
            "type": "object",
            "required": ["events", "checkpoint", "head"],
            "properties": {
                "events": { "type": "array", "items": schema_ref("Event") },
                "checkpoint": { "type": "integer", "minimum": 0 },
                "head": { "type": "integer", "minimum": 0 }
            }
        }
    })
}

fn admin_schemas() -> Value {
    let text = json!({ "type": ["string", "null"] });
    let time = json!({ "type": ["string", "null"], "format": "date-time" });
    json!({
        "ErasureStatus": {
            "type": "string",
            "enum": ErasureStatus::ALL.map(ErasureStatus::as_str)
        },
        "Erasure": {
            "type": "object",
            "required": [
                "request_id", "kind", "subject", "stream", "status", "streams", "keys_destroyed", "reason",
                "requested_by", "reference", "requested_at", "keys_destroyed_at", "completed_at",
                "tombstone_position", "already_erased", "deadline", "overdue", "refused_reason", "dependents"
            ],
            "properties": {
                "request_id": { "type": "string", "format": "uuid" },
                "kind": { "type": "string", "enum": ["subject", "stream"] },
                "subject": { "type": ["string", "null"], "description": "Set for `kind: subject`." },
                "stream": { "type": ["string", "null"], "description": "Set for `kind: stream`." },
                "status": schema_ref("ErasureStatus"),
                "streams": { "type": "array", "items": { "type": "string" }, "description": "The streams shredded." },
                "keys_destroyed": { "type": "integer", "minimum": 0 },
                "reason": text,
                "requested_by": text,
                "reference": text,
                "requested_at": { "type": "string", "format": "date-time" },
                "keys_destroyed_at": time,
                "completed_at": time,
                "tombstone_position": { "type": ["integer", "null"], "minimum": 1 },
                "already_erased": { "type": "boolean", "description": "Nothing was left to erase." },
                "deadline": {
                    "type": "string", "format": "date-time",
                    "description": "One month after the request (GDPR Art. 12(3))."
                },
                "overdue": { "type": "boolean", "description": "Not finished and past its deadline." },
                "refused_reason": { "type": ["string", "null"], "description": "Why it was refused (the hold's reason)." },
                "dependents": {
                    "type": "array",
                    "description": "The erasure-dependent consumers registered at the time, and their acknowledgements.",
                    "items": schema_ref("Dependent")
                }
            }
        },
        "Dependent": {
            "type": "object",
            "required": [
                "consumer", "acknowledged_at", "removed_at", "delivery_attempts", "last_attempt_at",
                "last_delivery_error"
            ],
            "properties": {
                "consumer": { "type": "string" },
                "acknowledged_at": time,
                "removed_at": { "type": ["string", "null"], "format": "date-time", "description": "The consumer was deleted." },
                "delivery_attempts": { "type": "integer", "minimum": 0, "description": "Webhook deliveries tried." },
                "last_attempt_at": time,
                "last_delivery_error": { "type": ["string", "null"] }
            }
        },
        "Hold": {
            "type": "object",
            "required": ["subject", "reason", "until", "placed_at"],
            "properties": {
                "subject": { "type": "string" },
                "reason": { "type": "string" },
                "until": time,
                "placed_at": { "type": "string", "format": "date-time" }
            }
        },
        "ErasureList": {
            "type": "object",
            "required": ["erasures"],
            "properties": { "erasures": { "type": "array", "items": schema_ref("Erasure") } }
        },
        "Subject": {
            "type": "object",
            "required": ["subject", "streams", "hold", "erasures"],
            "properties": {
                "subject": { "type": "string" },
                "streams": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["stream", "status", "version"],
                        "properties": {
                            "stream": { "type": "string" },
                            "status": schema_ref("StreamStatus"),
                            "version": { "type": ["integer", "null"], "minimum": 0 }
                        }
                    }
                },
                "hold": nullable(schema_ref("Hold")),
                "erasures": { "type": "array", "items": schema_ref("Erasure") }
            }
        },
        "Export": {
            "type": "object",
            "required": ["subject", "exported_at", "events"],
            "properties": {
                "subject": { "type": "string" },
                "exported_at": { "type": "string", "format": "date-time" },
                "events": { "type": "array", "items": schema_ref("Event") }
            }
        },
        "Role": { "type": "string", "enum": ["reader", "writer", "admin"] },
        "Token": {
            "type": "object",
            "required": ["id", "name", "role", "created_at", "revoked_at"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "name": { "type": "string" },
                "role": schema_ref("Role"),
                "created_at": { "type": "string", "format": "date-time" },
                "revoked_at": time
            }
        },
        "NewToken": {
            "allOf": [
                schema_ref("Token"),
                {
                    "type": "object",
                    "required": ["token"],
                    "properties": {
                        "token": { "type": "string", "description": "The secret, shown only here." }
                    }
                }
            ]
        },
        "TokenList": {
            "type": "object",
            "required": ["tokens"],
            "properties": { "tokens": { "type": "array", "items": schema_ref("Token") } }
        }
    })
}

fn misc_schemas() -> Value {
    let version = json!({ "type": ["integer", "null"], "minimum": 0 });
    json!({
        "Problem": {
            "type": "object",
            "description": "An RFC 9457 problem document. Members beyond the five standard ones depend on the code.",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": { "type": "string", "format": "uri", "description": "Documentation of the code." },
                "title": { "type": "string" },
                "status": { "type": "integer", "minimum": 400, "maximum": 599 },
                "detail": { "type": "string" },
                "code": { "type": "string", "description": "The stable, machine-readable error code." },
                "current_version": {
                    "type": ["integer", "null"], "minimum": 0,
                    "description": "`wrong_expected_version` of one stream: its last version (`null`: no stream)."
                },
                "streams": {
                    "type": "array",
                    "description": "`wrong_expected_version`: each stream whose expectation failed.",
                    "items": {
                        "type": "object",
                        "required": ["stream", "current_version"],
                        "properties": { "stream": { "type": "string" }, "current_version": version }
                    }
                },
                "stream": { "type": "string", "description": "The stream the error is about." },
                "request_id": {
                    "type": "string", "format": "uuid",
                    "description": "`legal_hold`: the refused erasure request."
                },
                "hold_until": {
                    "type": ["string", "null"], "format": "date-time",
                    "description": "`legal_hold`: when the hold lapses (`null`: when lifted)."
                }
            }
        },
        "ServerSentEvent": {
            "description": "One event of `GET /subscribe`.",
            "anyOf": [
                {
                    "type": "object",
                    "required": ["id", "data"],
                    "properties": {
                        "event": { "const": "message" },
                        "id": { "type": "string", "pattern": "^[1-9][0-9]*$", "description": "The event's position." },
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": schema_ref("Event")
                        }
                    }
                },
                {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": { "const": "error" },
                        "data": { "type": "string", "description": "The error code (e.g. `storage_unavailable`)." }
                    }
                }
            ]
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": { "status": { "const": "ok" } }
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "database", "keyvault"],
            "properties": {
                "status": { "type": "string", "enum": ["ready", "not_ready"] },
                "database": { "type": "string", "enum": ["ok", "unavailable"] },
                "keyvault": { "type": "string", "enum": ["ok", "unavailable"] }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `METHOD path` that [`super::router`] serves, with the router it is in (`reader`,
    /// `writer`, `admin`, …), read from its source: each `.route("<path>", <method router>)` with
    /// the methods its method router names, under the closest `let <router> = Router::new()`.
    /// So a route added to the router without being documented here fails the tests below.
    fn router_routes() -> Vec<(String, String)> {
        let source = include_str!("mod.rs");
        let body = &source[source.find("pub fn router(").expect("the router function")..];
        let mut routes = Vec::new();
        let mut cursor = 0;
        while let Some(found) = body[cursor..].find(".route(") {
            let start = cursor + found + ".route(".len();
            // The arguments run to the parenthesis that closes the call.
            let mut depth = 1;
            let mut end = start;
            for (i, c) in body[start..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = start + i;
                    break;
                }
            }
            let before = &body[..start];
            let group = before
                .rfind("= Router::new()")
                .and_then(|i| before[..i].trim_end().rsplit(' ').next())
                .unwrap_or("")
                .to_owned();
            let args = &body[start..end];
            let path = args.split('"').nth(1).expect("a path literal");
            let method_router = &args[args.find(',').expect("a method router")..];
            for method in ["get", "post", "put", "delete", "patch"] {
                for (i, _) in method_router.match_indices(&format!("{method}(")) {
                    let preceding = method_router[..i].chars().next_back();
                    if preceding.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
                        routes.push((format!("{} {path}", method.to_uppercase()), group.clone()));
                    }
                }
            }
            cursor = end;
        }
        routes
    }

    #[test]
    fn documents_every_route_and_nothing_else() {
        let doc = document();
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        documented.sort();
        let mut expected: Vec<String> = router_routes().into_iter().map(|(route, _)| route).collect();
        expected.sort();
        assert!(expected.len() >= 20, "the router's routes were not found: {expected:?}");
        assert_eq!(documented, expected);
    }

    #[test]
    fn documents_the_role_each_route_needs() {
        let doc = document();
        for (route, group) in router_routes() {
            let (method, path) = route.split_once(' ').unwrap();
            let op = &doc["paths"][path][method.to_lowercase()];
            let role = match group.as_str() {
                "reader" | "subscribe" => Some("reader"),
                "writer" => Some("writer"),
                "admin" => Some("admin"),
                "open" => None,
                other => panic!("{route}: unknown router {other:?}"),
            };
            assert_eq!(op["x-lethe-role"].as_str(), role, "{route}");
            assert_eq!(op.get("security") == Some(&json!([])), role.is_none(), "{route}");
        }
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(v: &Value, doc: &Value) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let pointer = r.trim_start_matches('#');
                        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
                    }
                    map.values().for_each(|v| walk(v, doc));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }

    #[test]
    fn every_link_names_an_operation() {
        let doc = document();
        let mut ids = Vec::new();
        let mut targets = Vec::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                ids.push(op["operationId"].as_str().unwrap().to_owned());
                for response in op["responses"].as_object().unwrap().values() {
                    for link in response
                        .get("links")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flat_map(|l| l.values())
                    {
                        targets.push(link["operationId"].as_str().unwrap().to_owned());
                    }
                }
            }
        }
        assert!(!targets.is_empty());
        for target in targets {
            assert!(ids.contains(&target), "link to unknown operation {target}");
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique");
    }

    #[test]
    fn only_open_routes_need_no_token() {
        let doc = document();
        let mut open = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for op in item.as_object().unwrap().values() {
                if op.get("security") == Some(&json!([])) {
                    open.push(path.clone());
                } else {
                    assert!(op["responses"].get("401").is_some(), "{path}: no 401");
                }
            }
        }
        open.sort();
        assert_eq!(
            open,
            [
                "/admin/ui",
                "/admin/ui/app.css",
                "/admin/ui/app.js",
                "/healthz",
                "/metrics",
                "/openapi.json",
                "/readyz"
            ]
        );
    }
}
