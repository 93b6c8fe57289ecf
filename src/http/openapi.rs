//! The OpenAPI 3.1 document served at `/openapi.json`, generated with `utoipa`.
//!
//! Each route is registered with its operation (`Group::routes` in `super`: `utoipa_axum`'s
//! `routes!`), so a route cannot exist undocumented. The operation's prose, parameters and
//! answers are the handler's `#[utoipa::path]` attribute; the schemas are derived from the wire
//! types ([`super::wire`]) and the constraints of `super::schemas`. This module adds only what
//! the route's place in the router and the shared answers decide:
//!
//! - per group (`decorate`): the role its middleware enforces (`x-lethe-role`, and the 401,
//!   403, 408, 500 and 503 answers every route with a token can give), or `security: []` for the
//!   open routes;
//! - for the whole document (`finish`): every error answer as problem JSON whose `status` and
//!   `code` are narrowed to the problem table ([`super::problem::CODES`]; an answer may narrow
//!   its codes further with `x-problem-codes`); 413 and 415 for every operation that takes a
//!   body; response headers `required` unless listed in `x-optional-headers`; and unsigned
//!   integers bounded by `u64::MAX` rather than described as `int64` (which is signed), so that
//!   a generated request never holds a number the server cannot read.
//!
//! It is checked against the running server by the schemathesis test (`tests/it/schemathesis.rs`).

use std::sync::LazyLock;

use serde_json::{Map, Value, json};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::info::{InfoBuilder, LicenseBuilder};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{Components, OpenApi, OpenApiBuilder, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::Group;
use super::problem::{CODES, Problem};
use crate::limits::{APPEND_BYTES_MAX, EVENT_BYTES_MAX};

/// An answer's own narrowing of its problem codes (removed from the finished document).
const CODES_EXTENSION: &str = "x-problem-codes";
/// The response headers an answer may leave out (removed from the finished document).
const OPTIONAL_HEADERS_EXTENSION: &str = "x-optional-headers";
/// The role an operation's token needs.
const ROLE_EXTENSION: &str = "x-lethe-role";

/// The document.
pub fn document() -> Value {
    let mut document = serde_json::to_value(merged()).unwrap_or(Value::Null);
    finish(&mut document);
    document
}

/// The document as served (built once).
pub(crate) fn document_json() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| document().to_string());
    &DOCUMENT
}

/// Every group's operations and schemas, decorated, with the problem schema.
fn merged() -> OpenApi {
    let mut api = base();
    for group in Group::ALL {
        let mut part = group.routes().into_openapi();
        decorate(&mut part, group);
        api.merge(part);
    }
    let components = api.components.get_or_insert_with(Components::default);
    components
        .schemas
        .insert(Problem::name().into_owned(), Problem::schema());
    let mut dependencies = Vec::new();
    Problem::schemas(&mut dependencies);
    components.schemas.extend(dependencies);
    api
}

/// What no operation says: the API's description, tags and authentication.
fn base() -> OpenApi {
    let info = InfoBuilder::new()
        .title("Lethe")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(format!(
            "Every stream's payloads are encrypted with a key of their own; forgetting a data subject destroys the \
             keys of its streams and leaves tombstones.\n\n\
             Errors are RFC 9457 problem documents (`application/problem+json`) with a stable `code`, and change \
             nothing. Besides the answers listed per operation: a path without a route gets 404 `not_found`, a \
             method a path does not have gets 405 `method_not_allowed` with `Allow`. Request bodies are JSON \
             objects (`Content-Type: application/json`, at most `LETHE_BODY_LIMIT_BYTES`, default {} MiB) and \
             refuse members they do not define. Each operation names the role its token needs \
             (`x-lethe-role`).",
            mib(super::HttpLimits::default().body_bytes_max)
        )))
        .license(Some(
            LicenseBuilder::new()
                .name("Apache-2.0")
                .identifier(Some("Apache-2.0"))
                .build(),
        ))
        .build();
    let tag = |name: &str, description: &str| TagBuilder::new().name(name).description(Some(description)).build();
    let mut components = Components::default();
    components.security_schemes.insert(
        "bearer".to_owned(),
        RefOr::T(SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token (`Authorization: Bearer <token>`). Roles: `reader` (reads, subscriptions, \
                     consumer reads and acks, schema reads), `writer` (+ appends, stream deletion), `admin` (+ \
                     everything under `/admin`, consumer registration, tokens, schema registration). No token, an unknown or a revoked one: 401 \
                     `unauthorized`; a role too low: 403 `forbidden`. Both are decided before the route looks at \
                     its path, so neither reveals whether a stream exists.",
                ))
                .build(),
        )),
    );
    OpenApiBuilder::new()
        .info(info)
        .tags(Some([
            tag(
                "streams",
                "Appends, stream reads, stream deletion, the global log, subscriptions.",
            ),
            tag(
                "consumers",
                "Durable consumers: a checkpoint Lethe keeps for a reader of the log.",
            ),
            tag("admin", "Erasure requests, data subjects, legal holds, API tokens."),
            tag(
                "schemas",
                "Event schemas: what an event type's data must look like, and which of its fields are personal \
                 data of which subject (each encrypted with a key of its subject, destroyed when the subject is \
                 forgotten).",
            ),
            tag("ops", "Liveness, readiness, metrics, this document. No token needed."),
        ]))
        .security(Some([SecurityRequirement::new("bearer", Vec::<String>::new())]))
        .components(Some(components))
        .build()
}

/// An error answer whose problem codes are `codes` (see [`finish`]).
fn problem_answer(description: &str, codes: Option<&[&str]>) -> RefOr<Response> {
    let mut response = Response::new(description);
    if let Some(codes) = codes {
        response.extensions = Some(Extensions::from_iter([(CODES_EXTENSION, json!(codes))]));
    }
    RefOr::T(response)
}

/// What an operation's group decides: the role its middleware enforces and the answers that
/// come with a token and a timeout, or no security at all.
fn decorate(api: &mut OpenApi, group: Group) {
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            match group.role() {
                Some(role) => require_token(operation, role.as_str(), group),
                None => operation.security = Some(Vec::new()),
            }
        }
    }
}

fn require_token(operation: &mut Operation, role: &str, group: Group) {
    operation
        .extensions
        .get_or_insert_with(Extensions::default)
        .insert(ROLE_EXTENSION.to_owned(), json!(role));
    let description = operation.description.take().unwrap_or_default();
    operation.description = Some(format!("{description}\n\nNeeds the `{role}` role."));
    let answers = &mut operation.responses.responses;
    let mut unauthorized = Response::new("No bearer token, or an unknown or revoked one (`unauthorized`).");
    unauthorized.headers.insert(
        "WWW-Authenticate".to_owned(),
        HeaderBuilder::new()
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["Bearer"])),
            ))
            .description(Some("The scheme to authenticate with."))
            .build()
            .into(),
    );
    answers.insert("401".to_owned(), RefOr::T(unauthorized));
    answers.insert(
        "403".to_owned(),
        problem_answer(
            &format!("The token's role is below `{role}` (`forbidden`)."),
            Some(&["forbidden"]),
        ),
    );
    if group.timeout(&super::HttpLimits::default()).is_some() {
        answers.insert(
            "408".to_owned(),
            problem_answer(
                "The request took longer than the request timeout (`LETHE_REQUEST_TIMEOUT_SECS`; for reads, plus \
                 the longest long poll).",
                Some(&["request_timeout"]),
            ),
        );
    }
    // Every route with a token reads the token store, so any can meet a server-side failure.
    answers.insert(
        "500".to_owned(),
        problem_answer(
            "An internal failure (`storage_error`, `keyvault_error`, `corrupt_data`, `internal_error`); the \
             details are in the server log, not in the answer.",
            None,
        ),
    );
    answers.entry("503".to_owned()).or_insert_with(|| {
        problem_answer(
            "The event database or the key vault is unreachable, or the server is shutting down; retry later.",
            Some(&["storage_unavailable", "keyvault_unavailable", "shutting_down"]),
        )
    });
}

/// Whole MiB, for prose.
fn mib(bytes: usize) -> usize {
    bytes / (1024 * 1024)
}

/// The answers every operation that takes a JSON body can give.
fn body_answers() -> [(&'static str, String); 2] {
    [
        (
            "413",
            format!(
                "The body is larger than the request body limit (`LETHE_BODY_LIMIT_BYTES`, default {} MiB), or an \
                 event's or the append's `data` + `metadata` is over its limit ({} MiB per event, {} MiB per \
                 append).",
                mib(super::HttpLimits::default().body_bytes_max),
                mib(EVENT_BYTES_MAX),
                mib(APPEND_BYTES_MAX)
            ),
        ),
        (
            "415",
            "The body is not declared as JSON (`Content-Type: application/json` is required).".to_owned(),
        ),
    ]
}

/// Applies the rules of the whole document (see the module documentation) to the serialized
/// document.
fn finish(document: &mut Value) {
    if let Some(info) = document.get_mut("info").and_then(Value::as_object_mut) {
        // OpenAPI 3.1's `info.summary`, which utoipa's `Info` does not have.
        info.insert("summary".to_owned(), json!("An event store that can forget."));
    }
    let schemas = document["components"]["schemas"].clone();
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            for operation in item.as_object_mut().into_iter().flat_map(|item| item.values_mut()) {
                let reads_stream_names = reads_stream_names(operation, &schemas);
                finish_operation(operation, reads_stream_names);
            }
        }
    }
    bound_unsigned_integers(document);
}

/// Codes only some operations can give (by operation id). An answer that does not narrow its
/// codes (`x-problem-codes`) gets every other code the problem table gives its status.
const SCOPED_CODES: &[(&str, &[&str])] = &[
    ("schema_violation", &["append", "appendMulti"]),
    ("invalid_subject", &["append", "appendMulti"]),
    ("subject_forgotten", &["append", "appendMulti"]),
    ("invalid_schema", &["putSchema"]),
    // The operations that append to the erasure journal: an erasure's vault step.
    ("journal_unavailable", &["deleteStream", "reconcile"]),
    ("journal_corrupt", &["deleteStream", "reconcile"]),
];

/// Whether operation `operation_id` can answer `code` (see [`SCOPED_CODES`]).
fn may_answer(operation_id: &str, code: &str) -> bool {
    SCOPED_CODES
        .iter()
        .find(|(scoped, _)| *scoped == code)
        .is_none_or(|(_, operations)| operations.contains(&operation_id))
}

/// Members and parameters that hold a stream name or a prefix of one.
const STREAM_NAME_MEMBERS: [&str; 2] = ["stream", "stream_prefix"];

/// Whether an operation reads a stream name (a parameter, or a member of its body), the only
/// input `invalid_stream_name` refuses.
fn reads_stream_names(operation: &Value, schemas: &Value) -> bool {
    fn mentions(schema: &Value, schemas: &Value, seen: &mut Vec<String>) -> bool {
        match schema {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    let name = reference.rsplit('/').next().unwrap_or_default().to_owned();
                    if seen.contains(&name) {
                        return false;
                    }
                    seen.push(name.clone());
                    return mentions(&schemas[name.as_str()], schemas, seen);
                }
                let named = map
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|members| STREAM_NAME_MEMBERS.iter().any(|m| members.contains_key(*m)));
                named || map.values().any(|v| mentions(v, schemas, seen))
            }
            Value::Array(items) => items.iter().any(|v| mentions(v, schemas, seen)),
            _ => false,
        }
    }
    let in_parameters = operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| STREAM_NAME_MEMBERS.iter().any(|m| p["name"] == *m));
    in_parameters || mentions(&operation["requestBody"], schemas, &mut Vec::new())
}

fn finish_operation(operation: &mut Value, reads_stream_names: bool) {
    let takes_body = operation.get("requestBody").is_some();
    let operation_id = operation["operationId"].as_str().unwrap_or_default().to_owned();
    if let Some(body) = operation.get_mut("requestBody") {
        optional_body(body);
    }
    let Some(answers) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    if takes_body {
        for (status, description) in body_answers() {
            answers
                .entry(status)
                .or_insert_with(|| json!({ "description": description }));
        }
    }
    for (status, answer) in answers.iter_mut() {
        let Some(answer) = answer.as_object_mut() else {
            continue;
        };
        let codes = answer.remove(CODES_EXTENSION);
        let optional_headers = answer.remove(OPTIONAL_HEADERS_EXTENSION);
        for (name, header) in answer
            .get_mut("headers")
            .and_then(Value::as_object_mut)
            .into_iter()
            .flatten()
        {
            let optional = optional_headers
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|names| names.iter().any(|n| n == name));
            header["required"] = json!(!optional);
        }
        let Some(status) = status.parse::<u16>().ok().filter(|s| *s >= 400) else {
            continue;
        };
        if answer.contains_key("content") {
            continue; // an error answer of its own (`/readyz`'s 503)
        }
        if status == 404
            && let Some(Value::String(description)) = answer.get_mut("description")
        {
            description.push_str(
                " (`not_found`; also the answer to any path without a route, e.g. a path parameter `.` or `..` \
                 that a client normalised away).",
            );
        }
        answer.insert(
            "content".to_owned(),
            problem_content(status, codes, &operation_id, reads_stream_names),
        );
    }
}

/// utoipa writes an optional body (`Option<T>`) as a nullable one. What is optional is the body
/// itself: one that is there must be an object (JSON `null` is refused like any non-object).
fn optional_body(body: &mut Value) {
    let Some(content) = body.get_mut("content").and_then(Value::as_object_mut) else {
        return;
    };
    let mut optional = false;
    for media in content.values_mut() {
        let schema = &mut media["schema"];
        if let Some([inner, null]) = schema.get("oneOf").and_then(Value::as_array).map(Vec::as_slice)
            && *null == json!({ "type": "null" })
        {
            *schema = inner.clone();
            optional = true;
        }
    }
    if optional {
        body["required"] = json!(false);
    }
}

/// `application/problem+json` with `status` fixed and `code` one of `codes`, or else one of the
/// codes the problem table gives `status` (`invalid_stream_name` only where the operation reads
/// a stream name, [`SCOPED_CODES`] only on their operations). A 500 is also every code the
/// table does not list, so its code is left open.
fn problem_content(status: u16, codes: Option<Value>, operation_id: &str, reads_stream_names: bool) -> Value {
    let mut narrowing = json!({ "properties": { "status": { "const": status } } });
    let codes = codes.unwrap_or_else(|| {
        json!(
            CODES
                .iter()
                .filter(|(code, s, _)| *s == status && (reads_stream_names || *code != "invalid_stream_name"))
                .filter(|(code, ..)| may_answer(operation_id, code))
                .map(|(code, ..)| *code)
                .collect::<Vec<_>>()
        )
    });
    if status != 500 {
        narrowing["properties"]["code"] = json!({ "enum": codes });
    }
    json!({
        "application/problem+json": {
            "schema": { "allOf": [{ "$ref": format!("#/components/schemas/{}", Problem::name()) }, narrowing] }
        }
    })
}

/// utoipa describes `u64` as `format: int64` (a signed type) with `minimum: 0`, and `usize` with
/// no bound above: both become `minimum`..`u64::MAX`, the range the server reads.
fn bound_unsigned_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if is_unsigned_integer(map) {
                if map.get("format") == Some(&json!("int64")) {
                    map.remove("format");
                }
                map.entry("maximum").or_insert(json!(u64::MAX));
            }
            map.values_mut().for_each(bound_unsigned_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned_integers),
        _ => {}
    }
}

fn is_unsigned_integer(schema: &Map<String, Value>) -> bool {
    let integer = match schema.get("type") {
        Some(Value::String(t)) => t == "integer",
        Some(Value::Array(types)) => types.iter().any(|t| t == "integer"),
        _ => false,
    };
    let format = schema.get("format").and_then(Value::as_str);
    integer && matches!(format, None | Some("int64")) && schema.get("minimum").and_then(Value::as_u64).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut all = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                all.push((method.to_uppercase(), path.clone(), operation));
            }
        }
        all
    }

    /// Each group's routes, as `METHOD path`, from the group itself.
    fn group_routes(group: Group) -> Vec<String> {
        let part = serde_json::to_value(group.routes().into_openapi()).expect("serializes");
        operations(&part)
            .into_iter()
            .map(|(method, path, _)| format!("{method} {path}"))
            .collect()
    }

    #[test]
    fn documents_the_role_each_route_needs() {
        let doc = document();
        let mut grouped = 0;
        for group in Group::ALL {
            for route in group_routes(group) {
                let (method, path) = route.split_once(' ').unwrap();
                let op = &doc["paths"][path][method.to_lowercase()];
                let role = group.role().map(crate::model::Role::as_str);
                assert_eq!(op[ROLE_EXTENSION].as_str(), role, "{route}");
                assert_eq!(op.get("security") == Some(&json!([])), role.is_none(), "{route}");
                grouped += 1;
            }
        }
        assert!(grouped >= 20, "the groups' routes were not found");
        assert_eq!(grouped, operations(&doc).len(), "every operation belongs to one group");
    }

    /// Merging keeps the first schema of a name: two wire types must not share one.
    #[test]
    fn schema_names_are_unique() {
        let merged = serde_json::to_value(merged()).unwrap();
        for group in Group::ALL {
            let part = serde_json::to_value(group.routes().into_openapi()).unwrap();
            for (name, schema) in part["components"]["schemas"].as_object().into_iter().flatten() {
                assert_eq!(
                    &merged["components"]["schemas"][name], schema,
                    "two schemas named {name}"
                );
            }
        }
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(v: &Value, doc: &Value, refs: &mut usize) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let pointer = r.trim_start_matches('#');
                        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
                        *refs += 1;
                    }
                    map.values().for_each(|v| walk(v, doc, refs));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc, refs)),
                _ => {}
            }
        }
        let doc = document();
        let mut refs = 0;
        walk(&doc, &doc, &mut refs);
        assert!(refs > 50, "only {refs} references");
    }

    #[test]
    fn every_link_names_an_operation() {
        let doc = document();
        let mut ids = Vec::new();
        let mut targets = Vec::new();
        for (_, _, op) in operations(&doc) {
            ids.push(op["operationId"].as_str().expect("an operation id").to_owned());
            for response in op["responses"].as_object().unwrap().values() {
                for link in response
                    .get("links")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|l| l.values())
                {
                    targets.push(link["operationId"].as_str().expect("a link's operationId").to_owned());
                }
            }
        }
        assert!(targets.contains(&"revokeToken".to_owned()), "createToken → revokeToken");
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
        for (_, path, op) in operations(&doc) {
            if op.get("security") == Some(&json!([])) {
                open.push(path);
            } else {
                assert!(op["responses"].get("401").is_some(), "{path}: no 401");
                assert!(op["responses"].get("403").is_some(), "{path}: no 403");
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

    /// Every error answer is problem JSON whose codes the problem table gives its status (but
    /// `/readyz`'s 503, which answers with the readiness), and no carrier extension is left.
    #[test]
    fn error_answers_are_problems_of_the_table() {
        let doc = document();
        let text = doc.to_string();
        assert!(!text.contains(CODES_EXTENSION) && !text.contains(OPTIONAL_HEADERS_EXTENSION));
        let mut narrowed = 0;
        for (method, path, op) in operations(&doc) {
            for (status, answer) in op["responses"].as_object().unwrap() {
                let status: u16 = status.parse().expect("a numeric status");
                if status < 400 || (path == "/readyz" && status == 503) {
                    continue;
                }
                let schema = &answer["content"]["application/problem+json"]["schema"];
                assert_eq!(
                    schema["allOf"][1]["properties"]["status"]["const"], status,
                    "{method} {path}"
                );
                let Some(codes) = schema["allOf"][1]["properties"]["code"]["enum"].as_array() else {
                    assert_eq!(status, 500, "{method} {path}: {status} without codes");
                    continue;
                };
                assert!(!codes.is_empty(), "{method} {path} {status}");
                if status == 400 {
                    let names_streams =
                        path.contains("{stream}") || ["/streams", "/log", "/subscribe"].contains(&path.as_str());
                    assert_eq!(
                        codes.contains(&json!("invalid_stream_name")),
                        names_streams || (method == "PUT" && path == "/consumers/{name}"),
                        "{method} {path}"
                    );
                }
                for code in codes {
                    let code = code.as_str().unwrap();
                    assert_eq!(
                        super::super::problem::status_of(code).as_u16(),
                        status,
                        "{method} {path}: {code} is not a {status}"
                    );
                }
                narrowed += 1;
            }
        }
        assert!(narrowed > 100);
    }

    /// The codes of schemas and personal fields are documented where they can happen: at
    /// appends (`schema_violation`, `invalid_subject`, `subject_forgotten`) and at schema
    /// registration (`invalid_schema`), and nowhere else.
    #[test]
    fn schema_codes_only_where_they_can_happen() {
        let doc = document();
        let codes = |path: &str, method: &str, status: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"][status]["content"]["application/problem+json"]["schema"]["allOf"][1]
                ["properties"]["code"]["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect()
        };
        for path in ["/streams/{stream}", "/streams"] {
            let bad = codes(path, "post", "400");
            assert!(bad.contains(&"schema_violation".to_owned()), "{path}: {bad:?}");
            assert!(bad.contains(&"invalid_subject".to_owned()), "{path}: {bad:?}");
            assert!(!bad.contains(&"invalid_schema".to_owned()), "{path}: {bad:?}");
            assert!(
                codes(path, "post", "409").contains(&"subject_forgotten".to_owned()),
                "{path}"
            );
        }
        assert_eq!(
            codes("/schemas/{type}", "put", "400"),
            ["invalid_request", "invalid_schema"]
        );
        let mut scoped = 0;
        for (method, path, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap();
            for status in op["responses"].as_object().unwrap().keys() {
                for code in codes(&path, &method.to_lowercase(), status) {
                    assert!(may_answer(id, &code), "{method} {path} {status}: {code}");
                    scoped += usize::from(SCOPED_CODES.iter().any(|(c, _)| *c == code));
                }
            }
        }
        assert_eq!(scoped, 7, "each scoped code on each of its operations");
    }

    /// utoipa narrows a schema with a description by `allOf` with `{type: object}`, which no
    /// string or array satisfies: every description must sit on the schema itself.
    #[test]
    fn no_schema_is_narrowed_to_an_object_by_accident() {
        fn walk(v: &Value, at: &str) {
            match v {
                Value::Object(map) => {
                    for part in map.get("allOf").and_then(Value::as_array).into_iter().flatten() {
                        let bare_object =
                            part.get("type") == Some(&json!("object")) && part.get("properties").is_none();
                        assert!(!bare_object, "{at}: {v}");
                    }
                    map.iter().for_each(|(k, v)| walk(v, &format!("{at}/{k}")));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, at)),
                _ => {}
            }
        }
        walk(&document(), "");
    }

    /// A JSON body brings 413 and 415; request bodies refuse unknown members.
    #[test]
    fn bodies_are_bounded_objects() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            let Some(body) = op.get("requestBody") else {
                continue;
            };
            assert!(op["responses"].get("413").is_some(), "{method} {path}: no 413");
            assert!(op["responses"].get("415").is_some(), "{method} {path}: no 415");
            let reference = body["content"]["application/json"]["schema"]["$ref"].as_str().unwrap();
            let schema = doc.pointer(reference.trim_start_matches('#')).unwrap();
            assert_eq!(schema["additionalProperties"], false, "{method} {path}");
        }
    }

    /// No integer the document allows is one a `u64` cannot hold, and none is called `int64`.
    #[test]
    fn unsigned_integers_are_bounded() {
        fn walk(v: &Value, seen: &mut usize) {
            match v {
                Value::Object(map) => {
                    if is_unsigned_integer(map) {
                        assert!(map.get("maximum").and_then(Value::as_u64).is_some(), "{map:?}");
                        assert_ne!(map.get("format"), Some(&json!("int64")));
                        *seen += 1;
                    }
                    map.values().for_each(|v| walk(v, seen));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, seen)),
                _ => {}
            }
        }
        let mut seen = 0;
        walk(&document(), &mut seen);
        assert!(seen > 30);
    }
}
