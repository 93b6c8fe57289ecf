//! The Rust client (`client/`, crate `lethe-client`) against the real server on both engines:
//! appends and their idempotent repetition, reads and paging as async streams, a subscription
//! that outlives a server restart without skipping or repeating, durable consumers, and the
//! admin operations with their stable error codes. (`client/tests/retry.rs` covers what it does
//! when the server fails.)

use std::time::Duration;

use futures::StreamExt;
use lethe_client::wire::{
    AuditQueryParams, ConsumerRequest, DeleteStreamRequest, ErasuresQuery, EventIn, ExpectedVersionWire, ForgetRequest,
    HoldRequest, ReportQuery, RetentionPolicyIn, SchemaModeWire, SchemaRequest, StreamAppendIn, StreamQuery,
    TokenRequest,
};
use lethe_client::{Client, LogFilter, event};
use serde_json::json;

use crate::http_support::{ADMIN_TOKEN, Server, config_for};
use crate::support::TestDb;

crate::backend_tests!(
    appends_reads_and_pages,
    consumers_and_erasures,
    admin_operations,
    a_subscription_outlives_a_restart,
);

fn admin(server: &Server) -> Client {
    Client::builder(&server.base).token(ADMIN_TOKEN).build().unwrap()
}

fn events(n: usize, kind: &str) -> Vec<EventIn> {
    (0..n).map(|i| event(kind, json!({ "i": i }))).collect()
}

async fn appends_reads_and_pages(db: TestDb) {
    let server = Server::start(&db).await;
    let lethe = admin(&server);

    let first = events(2, "Registered");
    let appended = lethe
        .append(
            "user-1",
            ExpectedVersionWire::NoStream,
            Some("subject-1"),
            first.clone(),
        )
        .await
        .unwrap();
    assert_eq!((appended.result.first_version, appended.result.last_version), (0, 1));
    assert!(!appended.already_stored);

    // The same events again (a retry after a lost answer): stored once, answered as before.
    let again = lethe
        .append("user-1", ExpectedVersionWire::NoStream, Some("subject-1"), first)
        .await
        .unwrap();
    assert!(again.already_stored);
    assert_eq!(again.result, appended.result);

    // A stale expectation is a conflict with its code and the stream's version.
    let conflict = lethe
        .append("user-1", ExpectedVersionWire::Exact(0), None, events(1, "Renamed"))
        .await
        .unwrap_err();
    assert!(conflict.is_wrong_expected_version(), "{conflict}");
    assert_eq!(conflict.problem().unwrap().extra.current_version, Some(Some(1)));

    let page = lethe.read_stream("user-1", &StreamQuery::default()).await.unwrap();
    assert_eq!(page.subject.as_deref(), Some("subject-1"));
    assert_eq!(page.version, Some(1));
    assert_eq!(page.events[1].data, json!({"i": 1}));

    // Several streams atomically, one of them refused: nothing is written.
    let refused = lethe
        .append_multi(vec![
            StreamAppendIn {
                stream: "account-1".into(),
                expected_version: Some(ExpectedVersionWire::NoStream),
                subject: None,
                events: events(1, "Opened"),
            },
            StreamAppendIn {
                stream: "user-1".into(),
                expected_version: Some(ExpectedVersionWire::NoStream),
                subject: None,
                events: events(1, "Renamed"),
            },
        ])
        .await
        .unwrap_err();
    assert!(refused.is_wrong_expected_version());
    let missing = lethe
        .read_stream("account-1", &StreamQuery::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some("not_found"));

    // More than a page: 1,500 events in two appends, read back in order through the paging.
    for _ in 0..2 {
        lethe
            .append("big", ExpectedVersionWire::Any, None, events(750, "Tick"))
            .await
            .unwrap();
    }
    let versions: Vec<u64> = lethe
        .stream_events("big", 0)
        .map(|e| e.unwrap().version)
        .collect()
        .await;
    assert_eq!(versions, (0..1_500).collect::<Vec<_>>());
    let filtered = LogFilter {
        stream_prefix: Some("big".into()),
        types: vec!["Tick".into()],
    };
    let positions: Vec<u64> = lethe.log(1, filtered).map(|e| e.unwrap().position).collect().await;
    assert_eq!(positions.len(), 1_500);
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let all: Vec<String> = lethe
        .log(1, LogFilter::default())
        .map(|e| e.unwrap().stream)
        .collect()
        .await;
    assert_eq!(all.len(), 1_502);
    assert_eq!(&all[..2], ["user-1", "user-1"]);

    server.stop().await;
}

async fn consumers_and_erasures(db: TestDb) {
    let server = Server::start(&db).await;
    let lethe = admin(&server);
    lethe
        .append(
            "user-2",
            ExpectedVersionWire::NoStream,
            Some("subject-2"),
            events(1, "Registered"),
        )
        .await
        .unwrap();
    let consumer = ConsumerRequest {
        erasure_dependent: true,
        ..ConsumerRequest::default()
    };
    let created = lethe.put_consumer("search", &consumer).await.unwrap();
    assert!(created.erasure_dependent);
    let first = lethe.consumer_events("search", None, Duration::ZERO).await.unwrap();
    assert_eq!(first.events.len(), 1);
    lethe.ack("search", first.events[0].position).await.unwrap();

    let forget = ForgetRequest {
        reason: "Art. 17".into(),
        requested_by: "dpo".into(),
        reference: None,
    };
    let erasure = lethe.forget("subject-2", &forget).await.unwrap();
    assert_eq!(erasure.streams, ["user-2"]);
    assert_eq!(erasure.status, "awaiting_acknowledgements");

    // The dependent long-polls the tombstones and acknowledges them; the request completes.
    let tombstones = lethe
        .consumer_events("search", Some(10), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        tombstones.events.iter().any(|e| e.event_type == "$erased"),
        "{tombstones:?}"
    );
    lethe
        .ack("search", tombstones.events.last().unwrap().position)
        .await
        .unwrap();
    assert_eq!(lethe.erasure(erasure.request_id).await.unwrap().status, "completed");
    let listed = lethe
        .erasures(&ErasuresQuery {
            subject: Some("subject-2".into()),
            ..ErasuresQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.erasures.len(), 1);

    // A shredded stream refuses appends with its code; reads show it erased.
    let gone = lethe
        .append("user-2", ExpectedVersionWire::Any, None, events(1, "Renamed"))
        .await
        .unwrap_err();
    assert!(gone.is_stream_gone(), "{gone}");
    assert_eq!(gone.code(), Some("stream_erased"));
    let page = lethe.read_stream("user-2", &StreamQuery::default()).await.unwrap();
    assert!(page.events[0].erased);

    // One stream deleted on its own; deleting it again says it is gone.
    lethe
        .append("scratch", ExpectedVersionWire::NoStream, None, events(1, "Noted"))
        .await
        .unwrap();
    let deleted = lethe
        .delete_stream("scratch", &DeleteStreamRequest::default())
        .await
        .unwrap();
    assert_eq!(deleted.stream.as_deref(), Some("scratch"));
    let again = lethe
        .delete_stream("scratch", &DeleteStreamRequest::default())
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some("stream_deleted"));

    assert_eq!(lethe.consumers().await.unwrap().consumers.len(), 1);
    lethe.delete_consumer("search").await.unwrap();
    assert_eq!(lethe.consumer("search").await.unwrap_err().code(), Some("not_found"));
    server.stop().await;
}

async fn admin_operations(db: TestDb) {
    let server = Server::start(&db).await;
    let lethe = admin(&server);

    // Tokens: a writer token works, and stops working once revoked.
    let writer = lethe
        .create_token(&TokenRequest {
            name: "service".into(),
            role: "writer".into(),
        })
        .await
        .unwrap();
    let service = Client::builder(&server.base).token(&writer.token).build().unwrap();
    service
        .append("order-1", ExpectedVersionWire::NoStream, None, events(1, "Placed"))
        .await
        .unwrap();
    let forbidden = service.tokens().await.unwrap_err();
    assert_eq!(forbidden.code(), Some("forbidden"));
    assert!(
        lethe
            .tokens()
            .await
            .unwrap()
            .tokens
            .iter()
            .any(|t| t.id == writer.record.id)
    );
    lethe.revoke_token(writer.record.id).await.unwrap();
    let revoked = service
        .read_stream("order-1", &StreamQuery::default())
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), Some("unauthorized"));
    // A subscription the server refuses ends with the refusal instead of reconnecting forever.
    let mut refused = service.subscribe(1, LogFilter::default());
    let first = tokio::time::timeout(Duration::from_secs(30), refused.next())
        .await
        .expect("an answer")
        .expect("an item")
        .unwrap_err();
    assert_eq!(first.code(), Some("unauthorized"));
    assert!(refused.next().await.is_none());

    // Schemas: the same schema twice is found, not registered again.
    let schema = SchemaRequest {
        schema: json!({"type": "object", "properties": {"name": {"x-lethe-personal": {"subject": "/customer"}}}}),
        mode: Some(SchemaModeWire::Warn),
    };
    let put = lethe.put_schema("Placed", &schema).await.unwrap();
    assert!(put.created);
    assert_eq!(put.value.version, 1);
    assert!(!lethe.put_schema("Placed", &schema).await.unwrap().created);
    assert_eq!(lethe.schemas().await.unwrap().schemas.len(), 1);
    assert_eq!(lethe.schema_versions("Placed").await.unwrap().versions.len(), 1);

    // Holds block a forget, with the stable code, until lifted.
    lethe
        .append(
            "user-3",
            ExpectedVersionWire::NoStream,
            Some("subject-3"),
            events(1, "Registered"),
        )
        .await
        .unwrap();
    lethe
        .place_hold(
            "subject-3",
            &HoldRequest {
                reason: "litigation".into(),
                until: None,
            },
        )
        .await
        .unwrap();
    let forget = ForgetRequest {
        reason: "Art. 17".into(),
        requested_by: "dpo".into(),
        reference: None,
    };
    let held = lethe.forget("subject-3", &forget).await.unwrap_err();
    assert_eq!(held.code(), Some("legal_hold"));
    lethe.lift_hold("subject-3").await.unwrap();
    assert_eq!(lethe.forget("subject-3", &forget).await.unwrap().status, "completed");
    let subject = lethe.subject("subject-3").await.unwrap();
    assert_eq!(subject.streams[0].status, "erased");
    assert_eq!(lethe.export("subject-3").await.unwrap().subject, "subject-3");
    let mut bytes = Vec::new();
    let mut export = lethe.export_bytes("subject-3").await.unwrap();
    while let Some(chunk) = export.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["subject"],
        "subject-3"
    );

    // Audit, report, retention, reconciliation, health.
    assert!(lethe.verify_audit().await.unwrap().intact);
    let audit = lethe.audit(&AuditQueryParams::default()).await.unwrap();
    assert!(!audit.entries.is_empty());
    let report = lethe.erasure_report(&ReportQuery::default()).await.unwrap();
    assert!(report.requests >= 1);
    let csv = lethe.erasure_report_csv(&ReportQuery::default()).await.unwrap();
    assert!(csv.lines().count() > 1, "{csv}");
    let policy = RetentionPolicyIn {
        stream_prefix: "session-".into(),
        keep_for: "P30D".into(),
        after: None,
    };
    assert!(lethe.put_retention_policy("sessions", &policy).await.unwrap().created);
    assert!(!lethe.put_retention_policy("sessions", &policy).await.unwrap().created);
    assert_eq!(lethe.retention_policy("sessions").await.unwrap().keep_for, "P30D");
    assert_eq!(lethe.retention_policies().await.unwrap().policies.len(), 1);
    assert_eq!(lethe.sweep_retention().await.unwrap().filed, 0);
    lethe.delete_retention_policy("sessions").await.unwrap();
    let bad = lethe
        .put_retention_policy(
            "bad",
            &RetentionPolicyIn {
                keep_for: "soon".into(),
                ..policy
            },
        )
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some("invalid_retention_policy"));
    assert_eq!(lethe.reconcile().await.unwrap().keys_destroyed, 0);
    lethe.health().await.unwrap();
    lethe.readiness().await.unwrap();
    server.stop().await;
}

/// One event in each of the streams `tick-<i>`.
async fn append_ticks(lethe: &Client, range: std::ops::Range<usize>) {
    for i in range {
        lethe
            .append(
                &format!("tick-{i}"),
                ExpectedVersionWire::NoStream,
                None,
                events(1, "Tick"),
            )
            .await
            .unwrap();
    }
}

async fn a_subscription_outlives_a_restart(db: TestDb) {
    let mut config = config_for(&db);
    let server = Server::start_config(config.clone()).await;
    // The same port after the restart, so that the client reconnects to it.
    config.listen = server.addr().parse().unwrap();
    let lethe = Client::builder(&server.base)
        .token(ADMIN_TOKEN)
        .backoff(Duration::from_millis(20))
        .build()
        .unwrap();
    let filter = LogFilter {
        stream_prefix: Some("tick-".into()),
        types: Vec::new(),
    };
    let mut subscription = lethe.subscribe(1, filter);
    append_ticks(&lethe, 0..5).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(subscription.next().await.unwrap().unwrap().position);
    }

    server.stop().await;
    let server = Server::start_config(config).await;
    append_ticks(&lethe, 5..10).await;
    while seen.len() < 10 {
        let next = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("the subscription resumed")
            .unwrap()
            .unwrap();
        seen.push(next.position);
    }
    let stored: Vec<u64> = lethe
        .log(1, LogFilter::default())
        .map(|e| e.unwrap())
        .filter(|e| std::future::ready(e.stream.starts_with("tick-")))
        .map(|e| e.position)
        .collect()
        .await;
    assert_eq!(seen, stored, "every event once, in order");
    drop(subscription);
    server.stop().await;
}

#[path = "../../client/examples/register/flow.rs"]
mod register_example;

crate::backend_tests!(the_example_program_runs);

/// `cargo run -p lethe-client --example register`, its steps against a fresh server.
async fn the_example_program_runs(db: TestDb) {
    let server = Server::start(&db).await;
    let outcome = register_example::run(&admin(&server), "456").await.unwrap();
    assert_eq!(outcome.followed.len(), 2, "{outcome:?}");
    assert!(
        outcome.followed[0].ends_with("user-public-456 UserRegistered"),
        "{outcome:?}"
    );
    assert_eq!(outcome.erasure_status, "completed");
    assert!(outcome.private_erased);
    assert_eq!(outcome.public_data, json!({"user_id": "456", "newsletter": true}));
    server.stop().await;
}
