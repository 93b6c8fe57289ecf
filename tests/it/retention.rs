//! Retention (contract: "Retention"): policies filed through the admin API, and the sweep that
//! files erasure requests for subjects past them — once across processes, deferred by legal
//! holds, stopped by removing the policy, in batches that never hold a lock for a whole sweep.
//! Time is a `ManualClock` the store reads for what it records and decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use lethe::limits::{RETENTION_POLICIES_MAX, RETENTION_SWEEP_BATCH_SUBJECTS};
use lethe::model::AuditQuery;
use lethe::{
    Direction, ErasureFilter, ErasureStatus, EventStore, ExpectedVersion, LogFilter, NewEvent, RetentionAnchor,
    StreamAppend, StreamStatus, SubjectId,
};
use lethe_keyvault::ManualClock;
use reqwest::Method;
use serde_json::{Value, json};

use crate::appends::{append, stream};
use crate::backend_tests;
use crate::http_support::{Server, config_for};
use crate::support::TestDb;

const DAY: Duration = Duration::from_secs(86_400);

backend_tests!(
    a_subject_past_keep_for_is_forgotten_and_one_with_a_younger_stream_is_not,
    after_first_event_counts_from_each_stream_s_first_event,
    a_legal_hold_defers_the_request_until_it_lapses,
    a_hold_placed_after_filing_refuses_the_request_before_it_runs,
    two_processes_sweeping_at_once_file_one_request,
    a_removed_policy_files_nothing_more,
    malformed_policies_are_refused_and_nothing_is_stored,
    a_sweep_of_10_000_subjects_files_them_in_one_pass_of_short_batches,
    the_admin_api_sets_lists_and_removes_policies,
);

fn subject(id: &str) -> SubjectId {
    SubjectId::new(id).unwrap()
}

/// A store whose clock the test moves, and which sweeps only when asked.
async fn open(db: &TestDb) -> (EventStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Utc::now().timestamp_micros()));
    (open_on(db, &clock).await, clock)
}

async fn open_on(db: &TestDb, clock: &Arc<ManualClock>) -> EventStore {
    let mut config = db.config().await;
    config.clock = clock.clone();
    config.retention_sweep_every = None;
    db.open_with(config).await
}

/// Appends one event to `name`, bound to `subject`.
async fn bind(store: &EventStore, name: &str, subject_id: &str) {
    store
        .append(
            append(
                name,
                ExpectedVersion::Any,
                vec![NewEvent::new("Noted", json!({"n": 1}))],
            )
            .with_subject(subject(subject_id)),
        )
        .await
        .unwrap();
}

async fn policy(store: &EventStore, name: &str, prefix: &str, keep_for: &str, after: RetentionAnchor) -> bool {
    store
        .put_retention_policy(name, prefix, keep_for, after, "dpo")
        .await
        .unwrap()
        .1
}

async fn status(store: &EventStore, name: &str) -> StreamStatus {
    let slice = store
        .read_stream(&stream(name), 0, Direction::Forward, 1)
        .await
        .unwrap();
    slice.info.status
}

async fn erasures_of(store: &EventStore, id: &str) -> Vec<lethe::Erasure> {
    store.erasures(Some(&subject(id)), 100).await.unwrap()
}

async fn audit_actions(store: &EventStore, action: &str) -> Vec<lethe::model::AuditEntry> {
    store
        .audit_entries(&AuditQuery {
            limit: 1000,
            action: Some(action.into()),
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn a_subject_past_keep_for_is_forgotten_and_one_with_a_younger_stream_is_not(db: TestDb) {
    let (store, clock) = open(&db).await;
    let start = clock_now(&clock);
    bind(&store, "customer-a-1", "a").await;
    bind(&store, "profile-a", "a").await; // bound to `a`, outside the prefix
    bind(&store, "customer-b-1", "b").await;
    clock.advance(20 * DAY);
    bind(&store, "customer-b-2", "b").await; // `b` has a younger stream
    bind(&store, "profile-a", "a").await; // young, but not under the policy
    assert!(policy(&store, "customers", "customer-", "P30D", RetentionAnchor::LastEvent).await);
    store.put_consumer("ledger", LogFilter::default(), true).await.unwrap();

    let sweep = store.sweep_retention().await.unwrap();
    assert_eq!((sweep.policies, sweep.filed), (1, 0), "nothing is 30 days old yet");

    clock.advance(15 * DAY); // customer-a-1 and customer-b-1: 35 days; customer-b-2: 15
    // Next due: the oldest subject not filed (a, its stream written at the start) + 30 days.
    let next_due = store.retention_policy("customers").await.unwrap().next_due.unwrap();
    assert_eq!(next_due.timestamp_micros(), start + 30 * DAY.as_micros() as i64);
    let sweep = store.sweep_retention().await.unwrap();
    assert_eq!((sweep.due, sweep.filed, sweep.refused), (1, 1, 0));
    let filed = erasures_of(&store, "a").await;
    assert_eq!(filed.len(), 1);
    assert_eq!(filed[0].reason.requested_by.as_deref(), Some("retention:customers"));
    assert_eq!(filed[0].retention_policy.as_deref(), Some("customers"));
    assert!(erasures_of(&store, "b").await.is_empty(), "b's younger stream keeps it");
    let next_due = store.retention_policy("customers").await.unwrap().next_due.unwrap();
    assert_eq!(
        next_due.timestamp_micros(),
        start + 50 * DAY.as_micros() as i64,
        "now b: its newest stream + 30 days"
    );

    // The workflow carries it out unchanged: every stream of `a` is erased, the prefix or not,
    // and the dependent registered when it was filed acknowledges the tombstone.
    assert_eq!(filed[0].dependents.len(), 1, "ledger, registered before the sweep");
    store.resume_erasures().await.unwrap();
    let waiting = store.erasure(filed[0].id).await.unwrap().unwrap();
    assert_eq!(waiting.status, ErasureStatus::AwaitingAcknowledgements);
    store
        .ack_consumer("ledger", waiting.tombstone_position.unwrap())
        .await
        .unwrap();
    let done = store.erasure(filed[0].id).await.unwrap().unwrap();
    assert_eq!(done.status, ErasureStatus::Completed);
    assert_eq!(status(&store, "customer-a-1").await, StreamStatus::Erased);
    assert_eq!(status(&store, "profile-a").await, StreamStatus::Erased);
    assert_eq!(status(&store, "customer-b-1").await, StreamStatus::Active);
    let audited = audit_actions(&store, "retention_erasure_filed").await;
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].request_id, Some(filed[0].id));
    assert_eq!(audited[0].details["policy"], "customers");

    // A second sweep files nothing again; once b's last stream is 30 days old, b is filed.
    assert_eq!(store.sweep_retention().await.unwrap().filed, 0);
    clock.advance(16 * DAY);
    assert_eq!(store.sweep_retention().await.unwrap().filed, 1);
    assert_eq!(erasures_of(&store, "b").await.len(), 1);
    store.close().await;
}

async fn after_first_event_counts_from_each_stream_s_first_event(db: TestDb) {
    let (store, clock) = open(&db).await;
    bind(&store, "customer-c-1", "c").await;
    clock.advance(35 * DAY);
    bind(&store, "customer-c-1", "c").await; // its last event is new, its first 35 days old

    assert!(policy(&store, "customers", "customer-", "P30D", RetentionAnchor::LastEvent).await);
    assert_eq!(store.sweep_retention().await.unwrap().filed, 0, "last_event: young");

    // Replacing the policy keeps its name and creation time; `first_event` finds c due.
    let created = store.retention_policy("customers").await.unwrap().policy.created_at;
    assert!(!policy(&store, "customers", "customer-", "P30D", RetentionAnchor::FirstEvent).await);
    let replaced = store.retention_policy("customers").await.unwrap().policy;
    assert_eq!(
        (replaced.created_at, replaced.after),
        (created, RetentionAnchor::FirstEvent)
    );
    assert_eq!(
        store.sweep_retention().await.unwrap().filed,
        1,
        "first_event: 35 days old"
    );
    assert_eq!(erasures_of(&store, "c").await.len(), 1);
    store.close().await;
}

async fn a_legal_hold_defers_the_request_until_it_lapses(db: TestDb) {
    let (store, clock) = open(&db).await;
    bind(&store, "customer-h-1", "h").await;
    let until = chrono::DateTime::from_timestamp_micros(clock_now(&clock) + 60 * DAY.as_micros() as i64).unwrap();
    store
        .place_hold(&subject("h"), "litigation", Some(until))
        .await
        .unwrap();
    assert!(policy(&store, "customers", "customer-", "P30D", RetentionAnchor::LastEvent).await);

    clock.advance(35 * DAY);
    let sweep = store.sweep_retention().await.unwrap();
    assert_eq!((sweep.filed, sweep.refused), (1, 1), "filed, and refused by the hold");
    let refused = erasures_of(&store, "h").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].status, ErasureStatus::Refused);
    assert_eq!(refused[0].refused_reason.as_deref(), Some("litigation"));
    assert_eq!(status(&store, "customer-h-1").await, StreamStatus::Active);

    // While the hold lasts, the subject is not filed again.
    clock.advance(10 * DAY);
    assert_eq!(store.sweep_retention().await.unwrap().filed, 0);
    assert_eq!(erasures_of(&store, "h").await.len(), 1);

    // Once it lapses, the next sweep files it again and the workflow carries it out.
    clock.advance(20 * DAY);
    let sweep = store.sweep_retention().await.unwrap();
    assert_eq!((sweep.filed, sweep.refused), (1, 0));
    store.resume_erasures().await.unwrap();
    assert_eq!(status(&store, "customer-h-1").await, StreamStatus::Erased);

    // The report counts retention erasures apart from requested ones.
    let report = store.erasure_report(None, None).await.unwrap();
    assert_eq!((report.requested.requests, report.retention.requests), (0, 2));
    assert_eq!(report.retention.by_status["refused"], 1);
    assert_eq!(report.retention.by_status["completed"], 1);
    assert_eq!(report.retention_policies.len(), 1);
    assert_eq!(report.retention_policies[0].requests, 2);
    assert_eq!(report.retention_policies[0].next_due, None, "nothing left to file");
    assert!(report.to_csv().contains("retention,requests,2"));

    // A hold lifted (not lapsed) lets the next sweep file the subject it deferred.
    bind(&store, "customer-l-1", "l").await;
    store.place_hold(&subject("l"), "audit", None).await.unwrap();
    clock.advance(31 * DAY);
    let sweep = store.sweep_retention().await.unwrap();
    assert_eq!((sweep.filed, sweep.refused), (1, 1), "refused while the hold is on");
    assert_eq!(store.sweep_retention().await.unwrap().filed, 0);
    assert!(store.lift_hold(&subject("l")).await.unwrap());
    let sweep = store.sweep_retention().await.unwrap();
    assert_eq!((sweep.filed, sweep.refused), (1, 0), "filed once the hold is lifted");
    let statuses: Vec<_> = erasures_of(&store, "l").await.iter().map(|e| e.status).collect();
    assert!(statuses.contains(&ErasureStatus::Refused) && statuses.contains(&ErasureStatus::Pending));
    store.close().await;
}

async fn a_hold_placed_after_filing_refuses_the_request_before_it_runs(db: TestDb) {
    let (store, clock) = open(&db).await;
    bind(&store, "customer-p-1", "p").await;
    assert!(policy(&store, "customers", "customer-", "P30D", RetentionAnchor::LastEvent).await);
    clock.advance(31 * DAY);
    assert_eq!(store.sweep_retention().await.unwrap().filed, 1);
    // The request waits for the resume loop; a hold placed meanwhile refuses it then.
    store.place_hold(&subject("p"), "subpoena", None).await.unwrap();
    store.resume_erasures().await.unwrap();
    let filed = erasures_of(&store, "p").await;
    assert_eq!(filed.len(), 1);
    assert_eq!(filed[0].status, ErasureStatus::Refused);
    assert_eq!(filed[0].refused_reason.as_deref(), Some("subpoena"));
    assert_eq!(status(&store, "customer-p-1").await, StreamStatus::Active);
    assert_eq!(audit_actions(&store, "erasure_refused").await.len(), 1);
    // Not filed again under that hold; filed once it is lifted.
    assert_eq!(store.sweep_retention().await.unwrap().filed, 0);
    assert!(store.lift_hold(&subject("p")).await.unwrap());
    assert_eq!(store.sweep_retention().await.unwrap().filed, 1);
    store.resume_erasures().await.unwrap();
    assert_eq!(status(&store, "customer-p-1").await, StreamStatus::Erased);
    store.close().await;
}

fn clock_now(clock: &ManualClock) -> i64 {
    use lethe_keyvault::VaultClock;
    clock.now_micros()
}

async fn two_processes_sweeping_at_once_file_one_request(db: TestDb) {
    let (first, clock) = open(&db).await;
    let second = open_on(&db, &clock).await;
    let subjects = 300;
    for chunk in (0..subjects).collect::<Vec<_>>().chunks(100) {
        let appends = chunk
            .iter()
            .map(|i| {
                append(
                    &format!("customer-{i}"),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("Noted", json!({}))],
                )
                .with_subject(subject(&format!("s{i}")))
            })
            .collect();
        first.append_multi(appends).await.unwrap();
    }
    assert!(policy(&first, "customers", "customer-", "P30D", RetentionAnchor::LastEvent).await);
    clock.advance(31 * DAY);

    let (a, b) = tokio::join!(first.sweep_retention(), second.sweep_retention());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.filed + b.filed, subjects, "each subject filed once: {a:?} {b:?}");
    let report = first.erasure_report(None, None).await.unwrap();
    assert_eq!(report.retention.requests, subjects);
    let filed = audit_actions(&first, "retention_erasure_filed").await;
    let mut named: Vec<_> = filed.iter().filter_map(|e| e.subject.clone()).collect();
    named.sort();
    named.dedup();
    assert_eq!(named.len() as u64, subjects);
    assert_eq!(filed.len() as u64, subjects);
    assert_eq!(first.verify_audit().await.unwrap().first_broken, None);
    first.close().await;
    second.close().await;
}

async fn a_removed_policy_files_nothing_more(db: TestDb) {
    let (store, clock) = open(&db).await;
    bind(&store, "customer-x-1", "x").await;
    assert!(policy(&store, "customers", "customer-", "P30D", RetentionAnchor::LastEvent).await);
    assert!(store.delete_retention_policy("customers", "dpo").await.unwrap());
    assert!(!store.delete_retention_policy("customers", "dpo").await.unwrap());
    clock.advance(31 * DAY);
    let sweep = store.sweep_retention().await.unwrap();
    assert_eq!((sweep.policies, sweep.filed), (0, 0));
    assert!(erasures_of(&store, "x").await.is_empty());
    assert_eq!(store.retention_policies().await.unwrap().len(), 0);
    let set = audit_actions(&store, "retention_policy_set").await;
    let removed = audit_actions(&store, "retention_policy_removed").await;
    assert_eq!((set.len(), removed.len()), (1, 1));
    assert_eq!(set[0].actor, "dpo");
    assert_eq!(set[0].details["keep_for"], "P30D");
    assert_eq!(removed[0].details["name"], "customers");
    assert!(matches!(
        store.retention_policy("customers").await,
        Err(lethe::Error::NotFound { .. })
    ));
    store.close().await;
}

async fn malformed_policies_are_refused_and_nothing_is_stored(db: TestDb) {
    let (store, _clock) = open(&db).await;
    for (name, prefix, keep_for) in [
        ("p", "customer-", "P-1D"),
        ("p", "customer-", "PT0S"),
        ("p", "customer-", "P101Y"),
        ("p", "customer-", "P1300M"),
        ("p", "customer-", "30 days"),
        ("p", "", "P30D"),
        ("p", "$erasures", "P30D"),
        ("p", "customer name", "P30D"),
        ("", "customer-", "P30D"),
        ("bad name", "customer-", "P30D"),
    ] {
        let err = store
            .put_retention_policy(name, prefix, keep_for, RetentionAnchor::LastEvent, "dpo")
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            "invalid_retention_policy",
            "{name:?} {prefix:?} {keep_for:?}: {err}"
        );
    }
    assert!(store.retention_policies().await.unwrap().is_empty());
    assert!(audit_actions(&store, "retention_policy_set").await.is_empty());

    // The documented limit: one more is refused, replacing one at the limit is not.
    for i in 0..RETENTION_POLICIES_MAX {
        policy(
            &store,
            &format!("p{i}"),
            "customer-",
            "P30D",
            RetentionAnchor::LastEvent,
        )
        .await;
    }
    let err = store
        .put_retention_policy("one-more", "customer-", "P30D", RetentionAnchor::LastEvent, "dpo")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(!policy(&store, "p0", "customer-", "P7D", RetentionAnchor::LastEvent).await);
    assert_eq!(store.retention_policies().await.unwrap().len(), RETENTION_POLICIES_MAX);
    store.close().await;
}

async fn a_sweep_of_10_000_subjects_files_them_in_one_pass_of_short_batches(db: TestDb) {
    let (store, clock) = open(&db).await;
    let subjects: u64 = 10_000;
    for chunk in (0..subjects).collect::<Vec<_>>().chunks(100) {
        let appends: Vec<StreamAppend> = chunk
            .iter()
            .map(|i| {
                append(
                    &format!("customer-{i:05}"),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("Noted", json!({}))],
                )
                .with_subject(subject(&format!("s{i:05}")))
            })
            .collect();
        store.append_multi(appends).await.unwrap();
    }
    assert!(policy(&store, "customers", "customer-", "P30D", RetentionAnchor::LastEvent).await);
    clock.advance(31 * DAY);

    // A writer appends throughout the sweep: were the sweep one transaction (holding the
    // writer on SQLite, the audit chain's lock on PostgreSQL), none would land meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (store, stop, appended) = (store.clone(), stop.clone(), appended.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                store
                    .append(append(
                        "orders-live",
                        ExpectedVersion::Any,
                        vec![NewEvent::new("Placed", json!({}))],
                    ))
                    .await
                    .unwrap();
                appended.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    while appended.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let before = appended.load(Ordering::SeqCst);
    let sweep = store.sweep_retention().await.unwrap();
    let during = appended.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    assert_eq!(
        (sweep.due, sweep.filed),
        (subjects, subjects),
        "one pass files every subject"
    );
    assert!(
        sweep.batches >= subjects / RETENTION_SWEEP_BATCH_SUBJECTS as u64,
        "batches of {RETENTION_SWEEP_BATCH_SUBJECTS}: {sweep:?}"
    );
    // A sweep in one transaction would let at most one append in; batches with pauses between
    // let at least one in for every other batch.
    assert!(
        during >= sweep.batches / 2,
        "appends went on while the sweep ran: {during} in {} batches",
        sweep.batches
    );
    let pending = store
        .list_erasures(&ErasureFilter {
            status: Some(ErasureStatus::Pending),
            limit: 10,
            ..ErasureFilter::default()
        })
        .await
        .unwrap();
    assert!(
        pending
            .iter()
            .all(|e| e.retention_policy.as_deref() == Some("customers"))
    );
    assert_eq!(
        store.erasure_report(None, None).await.unwrap().retention.requests,
        subjects
    );
    assert_eq!(store.sweep_retention().await.unwrap().filed, 0, "filed once");
    store.close().await;
}

async fn the_admin_api_sets_lists_and_removes_policies(db: TestDb) {
    let server = Server::start_config(config_for(&db)).await;
    let admin = server.admin.clone();
    let body = json!({"stream_prefix": "customer-", "keep_for": "P1Y6M", "after": "first_event"});
    let created = server.put("/admin/retention/customers", &admin, &body).await;
    created.assert_status(201);
    assert_eq!(created.body["keep_for"], "P1Y6M");
    assert_eq!(created.body["after"], "first_event");
    assert_eq!(created.body["next_due"], Value::Null);
    server
        .put(
            "/admin/retention/customers",
            &admin,
            &json!({"stream_prefix": "customer-", "keep_for": "P30D"}),
        )
        .await
        .assert_status(200);
    let listed = server.get("/admin/retention", &admin).await;
    assert_eq!(listed.body["policies"][0]["after"], "last_event", "the default");
    assert_eq!(listed.body["policies"][0]["keep_for"], "P30D");

    for (body, code) in [
        (
            json!({"stream_prefix": "customer-", "keep_for": "P-1D"}),
            "invalid_retention_policy",
        ),
        (
            json!({"stream_prefix": "customer-", "keep_for": "PT0S"}),
            "invalid_retention_policy",
        ),
        (
            json!({"stream_prefix": "customer-", "keep_for": "P200Y"}),
            "invalid_retention_policy",
        ),
        (
            json!({"stream_prefix": "customer-", "keep_for": "P30D", "after": "creation"}),
            "invalid_retention_policy",
        ),
        (
            json!({"stream_prefix": "", "keep_for": "P30D"}),
            "invalid_retention_policy",
        ),
        (json!({"stream_prefix": "customer-", "keep_for": 30}), "invalid_request"),
        (
            json!({"stream_prefix": "customer-", "keep_for": "P30D", "extra": 1}),
            "invalid_request",
        ),
    ] {
        server
            .put("/admin/retention/other", &admin, &body)
            .await
            .assert_problem(400, code);
    }
    server.get("/admin/retention/other", &admin).await.assert_status(404);
    server
        .call(Method::GET, "/admin/retention", Some(&server.writer), None)
        .await
        .assert_status(403);
    let sweep = server.post("/admin/retention-sweep", &admin, &json!({})).await;
    sweep.assert_status(200);
    assert_eq!(sweep.body["policies"], 1);
    server
        .delete("/admin/retention/customers", &admin)
        .await
        .assert_status(204);
    server
        .delete("/admin/retention/customers", &admin)
        .await
        .assert_status(404);
    let audit = server.get("/admin/audit?action=retention_policy_set", &admin).await;
    assert_eq!(
        audit.body["entries"].as_array().unwrap().len(),
        2,
        "set twice, refused never"
    );
    assert_eq!(audit.body["entries"][0]["actor"], "bootstrap admin");
    server.stop().await;
}
