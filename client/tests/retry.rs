//! What the client does when the server fails, against a stand-in server that fails on
//! purpose: which requests are repeated, that a repeated append is the same append, and how
//! problem documents arrive. (`tests/it/client.rs` of the `lethe` crate runs the client against
//! the real server on both engines.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use lethe_client::wire::ExpectedVersionWire;
use lethe_client::{Client, Error, event};
use serde_json::{Value, json};

/// Every request body the stand-in received, and how many failures it has left to give.
#[derive(Clone, Default)]
struct Recorded {
    bodies: Arc<Mutex<Vec<Value>>>,
    failures_left: Arc<Mutex<u32>>,
}

fn problem(status: u16, code: &str, extra: Value) -> Response {
    let mut body = json!({
        "type": format!("https://lethe.dev/problems/{code}"),
        "title": code,
        "status": status,
        "detail": format!("{code} for the test"),
        "code": code,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn append(State(recorded): State<Recorded>, axum::Json(body): axum::Json<Value>) -> Response {
    recorded.bodies.lock().unwrap().push(body);
    let mut failures = recorded.failures_left.lock().unwrap();
    if *failures > 0 {
        *failures -= 1;
        return problem(503, "storage_unavailable", json!({}));
    }
    let answer = json!({
        "stream": "s", "first_version": 0, "last_version": 0, "first_position": 1, "last_position": 1,
    });
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

async fn forget(State(recorded): State<Recorded>, axum::Json(body): axum::Json<Value>) -> Response {
    recorded.bodies.lock().unwrap().push(body);
    problem(503, "storage_unavailable", json!({}))
}

async fn conflict(axum::Json(_): axum::Json<Value>) -> Response {
    problem(
        409,
        "wrong_expected_version",
        json!({"stream": "s", "current_version": 4}),
    )
}

async fn stand_in(failures: u32) -> (String, Recorded) {
    let recorded = Recorded::default();
    *recorded.failures_left.lock().unwrap() = failures;
    let app = Router::new()
        .route("/streams/s", post(append))
        .route("/streams/conflict", post(conflict))
        .route("/admin/subjects/{subject}/forget", post(forget))
        .with_state(recorded.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), recorded)
}

fn client(base: &str) -> Client {
    Client::builder(base)
        .token("t")
        .attempts(4)
        .backoff(Duration::from_millis(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_append_is_repeated_after_a_503_with_the_same_event_ids() {
    let (base, recorded) = stand_in(2).await;
    let appended = client(&base)
        .append(
            "s",
            ExpectedVersionWire::NoStream,
            None,
            vec![event("T", json!({"a": 1}))],
        )
        .await
        .unwrap();
    assert_eq!(appended.result.first_position, 1);
    assert!(!appended.already_stored);
    let bodies = recorded.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 3, "two 503s, then the answer");
    let id = &bodies[0]["events"][0]["id"];
    assert!(id.is_string());
    assert!(bodies.iter().all(|b| &b["events"][0]["id"] == id), "{bodies:?}");
    assert_eq!(bodies[0]["expected_version"], "no_stream");
}

#[tokio::test]
async fn events_without_an_id_get_one_before_the_first_attempt() {
    let (base, recorded) = stand_in(1).await;
    let mut anonymous = event("T", json!({}));
    anonymous.id = None;
    client(&base)
        .append("s", ExpectedVersionWire::Exact(3), None, vec![anonymous])
        .await
        .unwrap();
    let bodies = recorded.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 2);
    assert!(bodies[0]["events"][0]["id"].is_string());
    assert_eq!(bodies[0]["events"][0]["id"], bodies[1]["events"][0]["id"]);
    assert_eq!(bodies[0]["expected_version"], 3);
}

#[tokio::test]
async fn the_retries_end_with_the_last_answer() {
    let (base, recorded) = stand_in(10).await;
    let error = client(&base)
        .append("s", ExpectedVersionWire::Any, None, vec![event("T", json!({}))])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("storage_unavailable"));
    assert_eq!(error.status(), Some(503));
    assert_eq!(recorded.bodies.lock().unwrap().len(), 4, "the configured attempts");
}

#[tokio::test]
async fn a_forget_is_never_repeated_once_sent() {
    let (base, recorded) = stand_in(0).await;
    let request = lethe_client::wire::ForgetRequest {
        reason: "Art. 17".into(),
        requested_by: "dpo".into(),
        reference: None,
    };
    let error = client(&base).forget("456", &request).await.unwrap_err();
    assert_eq!(error.code(), Some("storage_unavailable"));
    assert_eq!(recorded.bodies.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_problem_arrives_with_its_code_and_members() {
    let (base, _) = stand_in(0).await;
    let error = client(&base)
        .append(
            "conflict",
            ExpectedVersionWire::Exact(1),
            None,
            vec![event("T", json!({}))],
        )
        .await
        .unwrap_err();
    assert!(error.is_wrong_expected_version());
    assert!(!error.is_stream_gone());
    let problem = error.problem().unwrap();
    assert_eq!(problem.extra.current_version, Some(Some(4)));
    assert_eq!(problem.extra.stream.as_deref(), Some("s"));
    assert!(error.to_string().contains("wrong_expected_version"), "{error}");
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_after_the_attempts() {
    // A port that was free a moment ago: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = client(&base)
        .append("s", ExpectedVersionWire::Any, None, vec![event("T", json!({}))])
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert_eq!(error.code(), None);
}

#[test]
fn a_base_url_must_be_http() {
    assert!(matches!(Client::new("ftp://x"), Err(Error::InvalidArgument(_))));
    assert!(matches!(Client::new("not a url"), Err(Error::InvalidArgument(_))));
    let client = Client::builder("http://127.0.0.1:2113/")
        .token("secret")
        .build()
        .unwrap();
    assert_eq!(client.base_url(), "http://127.0.0.1:2113");
    assert!(!format!("{client:?}").contains("secret"));
}
