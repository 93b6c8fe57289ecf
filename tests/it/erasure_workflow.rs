//! The erasure workflow: dependents acknowledge tombstones, legal holds refuse, deadlines.

use std::time::Duration;

use chrono::Utc;
use lethe::{ErasureFilter, ErasureReason, ErasureStatus, EventStore, ExpectedVersion, LogFilter, NewEvent, SubjectId};
use serde_json::json;

use crate::appends::append;
use crate::backend_tests;
use crate::support::TestDb;

fn subject(id: &str) -> SubjectId {
    SubjectId::new(id).unwrap()
}

async fn private_stream(store: &EventStore, id: &str) {
    store
        .append(
            append(
                &format!("user-private-{id}"),
                ExpectedVersion::Any,
                vec![NewEvent::new("Given", json!({"n": id}))],
            )
            .with_subject(subject(id)),
        )
        .await
        .unwrap();
}

fn reason() -> ErasureReason {
    ErasureReason {
        reason: Some("Art. 17".into()),
        requested_by: Some("dpo".into()),
        reference: Some("ticket-1".into()),
    }
}

backend_tests!(
    erasure_waits_for_every_dependent_registered_at_the_time,
    a_restart_while_awaiting_acknowledgements_loses_nothing,
    removing_a_dependent_releases_the_erasure,
    legal_hold_refuses_until_lifted_or_lapsed,
    erasures_can_be_listed_by_subject_status_and_time,
    deadlines_follow_the_store_clock,
);

async fn erasure_waits_for_every_dependent_registered_at_the_time(db: TestDb) {
    let store = db.open().await;
    private_stream(&store, "456").await;
    store.put_consumer("ledger", LogFilter::default(), true).await.unwrap();
    store.put_consumer("search", LogFilter::default(), true).await.unwrap();
    store
        .put_consumer("dashboard", LogFilter::default(), false)
        .await
        .unwrap();

    let erasure = store.forget(&subject("456"), reason()).await.unwrap();
    assert_eq!(erasure.status, ErasureStatus::AwaitingAcknowledgements);
    let tombstone = erasure.tombstone_position.unwrap();
    let names: Vec<_> = erasure.dependents.iter().map(|d| d.consumer.as_str()).collect();
    assert_eq!(names, ["ledger", "search"], "only erasure-dependent consumers");
    // A dependent registered after the request is not one of its dependents.
    store.put_consumer("late", LogFilter::default(), true).await.unwrap();

    // The ledger reads the tombstone from its consumer feed, but acks short of it first.
    let batch = store.consumer_events("ledger", 100, Duration::ZERO).await.unwrap();
    assert!(batch.events.iter().any(|e| e.event_type == "SubjectForgotten"));
    store.ack_consumer("ledger", tombstone - 1).await.unwrap();
    let waiting = store.erasure(erasure.id).await.unwrap().unwrap();
    assert_eq!(waiting.status, ErasureStatus::AwaitingAcknowledgements);
    assert!(waiting.dependents.iter().all(|d| d.acknowledged_at.is_none()));

    store.ack_consumer("ledger", tombstone).await.unwrap();
    let one = store.erasure(erasure.id).await.unwrap().unwrap();
    assert_eq!(
        one.status,
        ErasureStatus::AwaitingAcknowledgements,
        "search has not acknowledged"
    );
    assert!(one.dependents[0].acknowledged_at.is_some());

    store.ack_consumer("search", store.head().await.unwrap()).await.unwrap();
    let done = store.erasure(erasure.id).await.unwrap().unwrap();
    assert_eq!(done.status, ErasureStatus::Completed);
    assert!(done.completed_at.is_some());
    assert!(done.dependents.iter().all(|d| d.acknowledged_at.is_some()));
}

async fn a_restart_while_awaiting_acknowledgements_loses_nothing(db: TestDb) {
    let store = db.open().await;
    private_stream(&store, "456").await;
    store.put_consumer("ledger", LogFilter::default(), true).await.unwrap();
    let erasure = store.forget(&subject("456"), reason()).await.unwrap();
    drop(store);

    let store = db.open().await;
    store.resume_erasures().await.unwrap();
    let waiting = store.erasure(erasure.id).await.unwrap().unwrap();
    assert_eq!(
        waiting.status,
        ErasureStatus::AwaitingAcknowledgements,
        "survives the restart, still waiting"
    );
    // The dependent acknowledges late, after the restart.
    store
        .ack_consumer("ledger", waiting.tombstone_position.unwrap())
        .await
        .unwrap();
    assert_eq!(
        store.erasure(erasure.id).await.unwrap().unwrap().status,
        ErasureStatus::Completed
    );
}

async fn removing_a_dependent_releases_the_erasure(db: TestDb) {
    let store = db.open().await;
    private_stream(&store, "456").await;
    store.put_consumer("gone", LogFilter::default(), true).await.unwrap();
    let erasure = store.forget(&subject("456"), reason()).await.unwrap();
    assert_eq!(erasure.status, ErasureStatus::AwaitingAcknowledgements);
    assert!(store.delete_consumer("gone").await.unwrap());
    assert!(!store.delete_consumer("gone").await.unwrap());
    let done = store.erasure(erasure.id).await.unwrap().unwrap();
    assert_eq!(done.status, ErasureStatus::Completed);
    assert!(done.dependents[0].removed_at.is_some() && done.dependents[0].acknowledged_at.is_none());
}

async fn legal_hold_refuses_until_lifted_or_lapsed(db: TestDb) {
    let store = db.open().await;
    private_stream(&store, "456").await;
    store
        .place_hold(&subject("456"), "litigation 2026-17", None)
        .await
        .unwrap();
    let err = store.forget(&subject("456"), reason()).await.unwrap_err();
    assert_eq!(err.code(), "legal_hold");
    let refused = store.erasures(Some(&subject("456")), 10).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].status, ErasureStatus::Refused);
    assert_eq!(refused[0].refused_reason.as_deref(), Some("litigation 2026-17"));
    let data = store
        .read_stream(
            &lethe::StreamName::new("user-private-456").unwrap(),
            0,
            lethe::Direction::Forward,
            10,
        )
        .await
        .unwrap();
    assert!(data.events[0].data.is_some(), "nothing was erased");

    assert!(store.lift_hold(&subject("456")).await.unwrap());
    assert_eq!(
        store.forget(&subject("456"), reason()).await.unwrap().status,
        ErasureStatus::Completed
    );

    // A hold that expires: refused while it lasts, then forget goes through.
    private_stream(&store, "789").await;
    let until = Utc::now() + chrono::Duration::milliseconds(800);
    store
        .place_hold(&subject("789"), "retention", Some(until))
        .await
        .unwrap();
    assert!(store.active_hold(&subject("789")).await.unwrap().is_some());
    assert_eq!(
        store.forget(&subject("789"), reason()).await.unwrap_err().code(),
        "legal_hold"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(store.active_hold(&subject("789")).await.unwrap().is_none(), "lapsed");
    assert_eq!(
        store.forget(&subject("789"), reason()).await.unwrap().status,
        ErasureStatus::Completed
    );

    let bad = store.place_hold(&subject("x"), "", None).await.unwrap_err();
    assert_eq!(bad.code(), "invalid_request");
}

async fn erasures_can_be_listed_by_subject_status_and_time(db: TestDb) {
    let store = db.open().await;
    let before = Utc::now();
    for id in ["1", "2", "3"] {
        private_stream(&store, id).await;
        store.forget(&subject(id), reason()).await.unwrap();
    }
    store.place_hold(&subject("4"), "hold", None).await.unwrap();
    let _ = store.forget(&subject("4"), reason()).await;
    let list = |filter: ErasureFilter| {
        let store = store.clone();
        async move { store.list_erasures(&filter).await.unwrap() }
    };
    let all = list(ErasureFilter {
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(all.len(), 4);
    assert!(
        all.windows(2).all(|w| w[0].requested_at >= w[1].requested_at),
        "newest first"
    );
    let refused = list(ErasureFilter {
        status: Some(ErasureStatus::Refused),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(refused.len(), 1);
    let two = list(ErasureFilter {
        subject: Some(subject("2")),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(two.len(), 1);
    let none = list(ErasureFilter {
        to: Some(before),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert!(none.is_empty());
    let since = list(ErasureFilter {
        from: Some(before),
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(since.len(), 2, "limit");
    // Deadline: one month after the request; nothing here is overdue yet.
    let first = &all[0];
    assert_eq!(
        first.deadline(),
        first.requested_at.checked_add_months(chrono::Months::new(1)).unwrap()
    );
    assert!(!first.is_overdue(Utc::now()));
    assert!(
        all.iter()
            .filter(|e| !e.status.is_final())
            .all(|e| e.is_overdue(Utc::now() + chrono::Duration::days(40)))
    );

    // An old, unfinished request is overdue, and the filter finds it however old it is.
    db.execute("UPDATE erasure_requests SET requested_at = requested_at - 3456000000000, status = 'pending' WHERE subject = '1'")
        .await;
    let overdue = list(ErasureFilter {
        overdue: Some(true),
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0].target, lethe::ErasureTarget::Subject(subject("1")));
    assert!(overdue[0].is_overdue(Utc::now()));
    let on_time = list(ErasureFilter {
        overdue: Some(false),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(on_time.len(), 3);
}

backend_tests!(a_webhook_that_fails_twice_then_succeeds_acknowledges_the_erasure);

async fn a_webhook_that_fails_twice_then_succeeds_acknowledges_the_erasure(db: TestDb) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};

    const SECRET: &str = "webhook-secret-0123456789";
    let calls = Arc::new(AtomicUsize::new(0));
    let received: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let (calls, received) = (calls.clone(), received.clone());
            move |headers: HeaderMap, body: Bytes| async move {
                let signed = headers
                    .get("x-lethe-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                assert_eq!(
                    signed,
                    lethe::model::signature(SECRET, &body),
                    "signed with the consumer's secret"
                );
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                received.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut config = db.config().await;
    config.webhook_poll = Duration::from_millis(20);
    config.webhook_retry_base = Duration::from_millis(50);
    let store = db.open_with(config).await;
    private_stream(&store, "456").await;
    store.put_consumer("ledger", LogFilter::default(), true).await.unwrap();
    store
        .set_consumer_webhook("ledger", Some((&hook, SECRET)))
        .await
        .unwrap();
    let bad = store
        .set_consumer_webhook("ledger", Some(("ftp://x", SECRET)))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), "invalid_request");

    let erasure = store.forget(&subject("456"), reason()).await.unwrap();
    assert_eq!(erasure.status, ErasureStatus::AwaitingAcknowledgements);
    let mut done = erasure.clone();
    for _ in 0..200 {
        done = store.erasure(erasure.id).await.unwrap().unwrap();
        if done.status == ErasureStatus::Completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        done.status,
        ErasureStatus::Completed,
        "the third delivery acknowledged it"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let dependent = &done.dependents[0];
    assert_eq!(dependent.delivery_attempts, 3, "every attempt is visible");
    assert!(dependent.acknowledged_at.is_some() && dependent.last_delivery_error.is_none());
    let body = received.lock().unwrap()[0].clone();
    assert_eq!(body["request_id"], serde_json::json!(erasure.id));
    assert_eq!(body["event"]["type"], "SubjectForgotten");
    assert_eq!(body["event"]["data"]["subject"], "456");
}

/// Deadlines, the overdue filter, the report and the HTTP answer all read the store's clock
/// (here a `ManualClock` a year ahead of the real one), and so do the request's lifecycle times.
async fn deadlines_follow_the_store_clock(db: TestDb) {
    use std::sync::Arc;

    use lethe_keyvault::ManualClock;

    let start =
        chrono::DateTime::from_timestamp_micros((Utc::now() + chrono::Duration::days(365)).timestamp_micros()).unwrap();
    let clock = Arc::new(ManualClock::new(start.timestamp_micros()));
    let mut config = db.config().await;
    config.clock = clock.clone();
    config.retention_sweep_every = None;
    let store = db.open_with(config).await;
    private_stream(&store, "456").await;
    store.put_consumer("ledger", LogFilter::default(), true).await.unwrap();

    let erasure = store.forget(&subject("456"), reason()).await.unwrap();
    assert_eq!(erasure.status, ErasureStatus::AwaitingAcknowledgements);
    assert_eq!(erasure.requested_at.timestamp_micros(), start.timestamp_micros());
    assert_eq!(
        erasure.keys_destroyed_at.map(|t| t.timestamp_micros()),
        Some(start.timestamp_micros()),
        "the lifecycle times come from the same clock"
    );
    assert_eq!(
        erasure.deadline(),
        start.checked_add_months(chrono::Months::new(1)).unwrap()
    );
    let overdue = |store: &EventStore| {
        let store = store.clone();
        async move {
            store
                .list_erasures(&ErasureFilter {
                    overdue: Some(true),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(overdue(&store).await, 0);
    assert_eq!(store.erasure_report(None, None).await.unwrap().overdue.len(), 0);

    // A month and a day later on the store's clock (the real clock has not moved).
    clock.advance(Duration::from_secs(32 * 24 * 3600));
    assert_eq!(overdue(&store).await, 1, "the filter reads the store's clock");
    let report = store.erasure_report(None, None).await.unwrap();
    assert_eq!(report.overdue.len(), 1, "so does the report");
    assert_eq!(report.overdue[0].request_id, erasure.id);
    let answer = lethe::http::wire::erasure_response(store.erasure(erasure.id).await.unwrap().unwrap(), store.now());
    assert!(answer.overdue, "and the HTTP answer");
}
