//! Request parsing under hostile input (proptest): generated requests — every route, random
//! methods, path segments with any characters, query strings with known and unknown keys and
//! out-of-range values, wrong or missing content types, bad tokens, bodies that are arbitrary
//! bytes, arbitrary JSON, near-valid appends and forgets, deep nesting — sent to the real
//! router over a SQLite store in this process. Each answer: never a panic, never a 5xx; every
//! 4xx is problem JSON whose stable `code` maps to that status; a refused request changes
//! nothing (the log head and the erasure list stay as they were).
//!
//! `PROPTEST_CASES` overrides the number of cases (300 quick, 5,000 long).

use std::time::Duration;

use axum::body::Body;
use lethe::http::{AppState, HttpLimits, router};
use lethe::model::Role;
use lethe::{ExpectedVersion, NewEvent, StreamAppend, StreamName, SubjectId};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::harness::{pick, report, serial};
use crate::support::TestDb;

/// The routes (method, template); `{}` is replaced by a generated segment.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/streams/{}"),
    ("GET", "/streams/{}"),
    ("DELETE", "/streams/{}"),
    ("POST", "/streams"),
    ("GET", "/log"),
    ("GET", "/subscribe"),
    ("GET", "/consumers"),
    ("PUT", "/consumers/{}"),
    ("DELETE", "/consumers/{}"),
    ("GET", "/consumers/{}/events"),
    ("POST", "/consumers/{}/ack"),
    ("POST", "/admin/subjects/{}/forget"),
    ("GET", "/admin/subjects/{}"),
    ("GET", "/admin/subjects/{}/export"),
    ("PUT", "/admin/subjects/{}/hold"),
    ("DELETE", "/admin/subjects/{}/hold"),
    ("GET", "/admin/erasures"),
    ("GET", "/admin/erasures/{}"),
    ("GET", "/admin/reports/erasures"),
    ("GET", "/admin/audit"),
    ("GET", "/admin/audit/verify"),
    ("POST", "/admin/tokens"),
    ("GET", "/admin/tokens"),
    ("DELETE", "/admin/tokens/{}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/route"),
    // Writes again, so that they get more of the cases.
    ("POST", "/streams/{}"),
    ("POST", "/streams/{}"),
    ("POST", "/streams/{}"),
    ("POST", "/streams"),
    ("POST", "/streams"),
    ("POST", "/admin/subjects/{}/forget"),
];

const QUERY_KEYS: &[&str] = &[
    "from",
    "limit",
    "direction",
    "stream_prefix",
    "types",
    "wait_ms",
    "status",
    "subject",
    "to",
    "overdue",
    "format",
    "after",
    "action",
    "unknown",
];

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<&'static str>,
    auth: Auth,
    if_match: Option<String>,
    body: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Auth {
    Admin,
    Reader,
    None,
    Bad,
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9-]{1,12}",
        2 => prop_oneof![Just("s-1".to_owned()), Just("s-2".to_owned()), Just("u-1".to_owned())],
        1 => "\\$[a-z]{1,8}",
        1 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        2 => any::<String>(),
        1 => "[a-z]{201,260}",
    ]
    .prop_map(|s| percent_encode(&s))
}

fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..2000).prop_map(|n| n.to_string()),
        Just("forward".to_owned()),
        Just("backward".to_owned()),
        Just("csv".to_owned()),
        Just("true".to_owned()),
        Just("2026-01-01T00:00:00Z".to_owned()),
        any::<String>().prop_map(|s| percent_encode(&s)),
        Just(String::new()),
    ]
}

/// JSON of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,16}",
                    Just("events".to_owned()),
                    Just("expected_version".to_owned())
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An event, mostly well-formed, with fields fuzzed.
fn event() -> impl Strategy<Value = Value> {
    (
        prop_oneof![6 => Just(json!("T")), 1 => ".{0,10}".prop_map(Value::from), 1 => json_value()],
        json_value(),
        prop_oneof![4 => Just(None), 2 => Just(Some(json!({"corr": "c"}))), 1 => json_value().prop_map(Some)],
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(json!("not-a-uuid"))),
            1 => Just(Some(json!("00000000-0000-0000-0000-000000000001"))),
        ],
    )
        .prop_map(|(kind, data, metadata, id)| {
            let mut e = json!({"type": kind, "data": data});
            if let Some(m) = metadata {
                e["metadata"] = m;
            }
            if let Some(id) = id {
                e["id"] = id;
            }
            e
        })
}

fn expected_version() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => Just(json!("any")),
        1 => Just(json!("no_stream")),
        1 => Just(json!("exists")),
        1 => (0u64..5).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => json_value(),
    ]
}

fn append_body() -> impl Strategy<Value = Vec<u8>> {
    (
        expected_version(),
        proptest::collection::vec(event(), 0..4),
        prop_oneof![Just(None), "[a-z0-9]{1,6}".prop_map(Some)],
    )
        .prop_map(|(ev, events, subject)| {
            let mut b = json!({"expected_version": ev, "events": events});
            if let Some(s) = subject {
                b["subject"] = json!(s);
            }
            b.to_string().into_bytes()
        })
}

fn multi_body() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        (
            prop_oneof![4 => "[a-z0-9-]{1,8}".prop_map(Value::from), 1 => json_value()],
            expected_version(),
            proptest::collection::vec(event(), 0..3),
        ),
        0..4,
    )
    .prop_map(|appends| {
        let appends: Vec<Value> = appends
            .into_iter()
            .map(|(s, ev, events)| json!({"stream": s, "expected_version": ev, "events": events}))
            .collect();
        json!({"appends": appends}).to_string().into_bytes()
    })
}

/// Bodies of forgets and holds (`reason`, `requested_by`, `reference`, `until`).
fn reason_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![3 => ".{1,20}".prop_map(Value::from), 1 => json_value()],
        prop_oneof![3 => Just(json!("dpo")), 1 => json_value()],
        prop_oneof![3 => Just(Value::Null), 1 => json_value()],
        prop_oneof![3 => Just(None), 1 => Just(Some(json!("2030-01-01T00:00:00Z"))), 1 => json_value().prop_map(Some)],
    )
        .prop_map(|(reason, by, reference, until)| {
            let mut b = json!({"reason": reason, "requested_by": by, "reference": reference});
            if let Some(until) = until {
                b["until"] = until;
            }
            b.to_string().into_bytes()
        })
}

/// Bodies of consumers, acks and tokens.
fn admin_body() -> impl Strategy<Value = Vec<u8>> {
    (json_value(), json_value(), any::<bool>(), 0u64..100).prop_map(|(a, b, dependent, position)| {
        json!({"position": position, "stream_prefix": a, "erasure_dependent": dependent, "name": b, "role": "reader"})
            .to_string()
            .into_bytes()
    })
}

/// Anything: nothing, random bytes, random JSON, deep nesting.
fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => (1usize..5000, any::<bool>()).prop_map(|(depth, object)| {
            if object {
                format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)).into_bytes()
            } else {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
            }
        }),
    ]
}

/// A choice (0–9) and one body of each kind: append, multi-stream append, reason, admin, any.
type Bodies = (u8, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

/// A body that fits the route most of the time, anything otherwise.
fn body() -> impl Strategy<Value = Bodies> {
    (
        0u8..10,
        append_body(),
        multi_body(),
        reason_body(),
        admin_body(),
        any_body(),
    )
}

fn body_for(route: &str, (pick, append, multi, reason, admin, any): Bodies) -> Vec<u8> {
    if pick >= 8 {
        return any;
    }
    match route {
        "/streams/{}" => append,
        "/streams" => multi,
        "/admin/subjects/{}/forget" | "/admin/subjects/{}/hold" => reason,
        "/consumers/{}" | "/consumers/{}/ack" | "/admin/tokens" => admin,
        _ => any,
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::sample::select(ROUTES),
        prop_oneof![
            8 => Just(None),
            1 => proptest::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"][..]).prop_map(Some),
        ],
        segment(),
        proptest::collection::vec((proptest::sample::select(QUERY_KEYS), query_value()), 0..4),
        prop_oneof![
            6 => Just(Some("application/json")),
            1 => Just(Some("application/json; charset=utf-8")),
            1 => Just(Some("text/plain")),
            1 => Just(Some("application/x-www-form-urlencoded")),
            1 => Just(None),
        ],
        prop_oneof![8 => Just(Auth::Admin), 1 => Just(Auth::Reader), 1 => Just(Auth::None), 1 => Just(Auth::Bad)],
        prop_oneof![12 => Just(None), 1 => ".{0,12}".prop_map(Some), 1 => (0u64..5).prop_map(|v| Some(format!("\"{v}\"")))],
        body(),
    )
        .prop_map(|((method, route), other_method, seg, query, content_type, auth, if_match, body)| Case {
            method: other_method.unwrap_or(method),
            path: route.replace("{}", &seg),
            body: body_for(route, body),
            query: query.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            content_type,
            auth,
            if_match,
        })
}

/// What a refused request must not change.
async fn state(store: &lethe::EventStore) -> (u64, usize) {
    let head = store.head().await.expect("head");
    let erasures = store.erasures(None, 1000).await.expect("erasures").len();
    (head, erasures)
}

#[test]
fn generated_requests_are_answered_with_problem_json_and_refusals_change_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _serial = rt.block_on(serial());
    let db = rt.block_on(TestDb::sqlite());
    let (store, app, admin, reader) = rt.block_on(async {
        let store = db.open().await;
        let admin = store.create_token("fuzz admin", Role::Admin).await.unwrap();
        let reader = store.create_token("fuzz reader", Role::Reader).await.unwrap();
        // Something for the routes to find: a public stream and a subject's private one.
        for (stream, subject) in [("s-1", None), ("s-2", Some("u-1"))] {
            let mut append = StreamAppend::new(
                StreamName::new(stream).unwrap(),
                ExpectedVersion::Any,
                vec![NewEvent::new("T", json!({"n": 1}))],
            );
            if let Some(subject) = subject {
                append = append.with_subject(SubjectId::new(subject).unwrap());
            }
            store.append_multi(vec![append]).await.unwrap();
        }
        let limits = HttpLimits {
            long_poll_max: Duration::from_millis(50),
            ..HttpLimits::default()
        };
        let app = router(AppState::new(store.clone(), limits));
        (store, app, admin.secret.to_string(), reader.secret.to_string())
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(pick(300, 5000));
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    let result = runner.run(&case(), |case| {
        let mut uri = case.path.clone();
        if !case.query.is_empty() {
            let query: Vec<String> = case.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            uri = format!("{uri}?{}", query.join("&"));
        }
        let mut request = axum::http::Request::builder().method(case.method).uri(&uri);
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        match case.auth {
            Auth::Admin => request = request.header("authorization", format!("Bearer {admin}")),
            Auth::Reader => request = request.header("authorization", format!("Bearer {reader}")),
            Auth::Bad => request = request.header("authorization", "Bearer lethe_nope"),
            Auth::None => {}
        }
        if let Some(tag) = &case.if_match
            && let Ok(value) = axum::http::HeaderValue::from_str(tag)
        {
            request = request.header("if-match", value);
        }
        let Ok(request) = request.body(Body::from(case.body.clone())) else {
            return Ok(()); // not a request any client could send (an invalid URI)
        };
        let (status, content_type, body, before, after) = rt.block_on(async {
            let before = state(&store).await;
            let response = app.clone().oneshot(request).await.expect("infallible");
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = if content_type.starts_with("text/event-stream") {
                Vec::new() // a subscription never ends; its status and type are what count
            } else {
                axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default()
            };
            let after = state(&store).await;
            (status, content_type, body, before, after)
        });
        *statuses.borrow_mut().entry(status).or_default() += 1;
        let text = String::from_utf8_lossy(&body);
        if status >= 500 {
            return Err(TestCaseError::fail(format!("{status} for {case:?}: {text}")));
        }
        if status >= 400 && case.method == "HEAD" {
            // No body in an answer to HEAD; the type still says what it would have been.
            prop_assert_eq!(content_type.as_str(), "application/problem+json", "{:?}", case);
        } else if status >= 400 {
            prop_assert_eq!(
                content_type.as_str(),
                "application/problem+json",
                "{:?}: {}",
                case,
                text
            );
            let problem: Value =
                serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            let code = problem["code"].as_str().unwrap_or("");
            prop_assert!(!code.is_empty(), "no code: {}", text);
            prop_assert_eq!(
                lethe::http::problem::status_of(code).as_u16(),
                status,
                "{:?}: {}",
                case,
                text
            );
            prop_assert_eq!(&problem["status"], &json!(status));
            // A refused request changes nothing (a forget refused by a legal hold is recorded).
            if code != "legal_hold" {
                prop_assert_eq!(before, after, "{:?} changed state: {}", case, text);
            }
        }
        Ok(())
    });
    let summary = format!(
        "hostile: {cases} generated requests, answers by status {:?}",
        statuses.borrow()
    );
    rt.block_on(store.close());
    drop(db);
    if let Err(e) = result {
        panic!("{e}");
    }
    report(&summary);
}
