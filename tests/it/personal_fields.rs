//! Personal data inside events: schemas, per-subject field keys, and forgetting one subject of
//! an event while the rest of it — other subjects' fields, amounts, ids — stays readable.

use std::time::Duration;

use futures::StreamExt;
use lethe::model::ErasureFault;
use lethe::{
    Direction, ErasureReason, ErasureStatus, EventStore, ExpectedVersion, LogFilter, NewEvent, RecordedEvent,
    SchemaMode, StreamAppend, SubjectId,
};
use lethe_keyvault::{KeyId, KeyLookup};
use serde_json::{Value, json};

use crate::appends::{append, stream};
use crate::backend_tests;
use crate::support::{TestDb, contains_bytes, sqlite_file_bytes};

const SENDER_MARKER: &str = "Grace-Hopper-5e1b-sender-marker";
const RECEIVER_MARKER: &str = "Alan-Turing-9c2d-receiver-marker";

fn subject(id: &str) -> SubjectId {
    SubjectId::new(id).unwrap()
}

fn transfer_schema() -> Value {
    json!({
        "type": "object",
        "required": ["sender_id", "receiver_id", "amount"],
        "properties": {
            "sender_id": {"type": "string"},
            "receiver_id": {"type": "string"},
            "amount": {"type": "integer", "minimum": 1},
            "sender_name": {"type": "string", "x-lethe-personal": {"subject": "/sender_id"}, "x-lethe-erased": "[erased]"},
            "receiver": {"type": "object", "properties": {
                "name": {"type": "string", "x-lethe-personal": {"subject": "/receiver_id"}}
            }}
        }
    })
}

fn transfer(sender: &str, receiver: &str, amount: u64) -> NewEvent {
    NewEvent::new(
        "MoneyTransferred",
        json!({
            "sender_id": sender,
            "receiver_id": receiver,
            "amount": amount,
            "sender_name": format!("{SENDER_MARKER}-{sender}"),
            "receiver": {"name": format!("{RECEIVER_MARKER}-{receiver}")},
        }),
    )
}

/// Appends one transfer of 10 to `stream_name` (any expected version).
async fn pay(
    store: &EventStore,
    stream_name: &str,
    sender: &str,
    receiver: &str,
) -> Result<lethe::AppendResult, lethe::Error> {
    store
        .append(append(
            stream_name,
            ExpectedVersion::Any,
            vec![transfer(sender, receiver, 10)],
        ))
        .await
}

async fn with_transfer_schema(store: &EventStore) {
    let (schema, created) = store
        .register_schema("MoneyTransferred", &transfer_schema(), SchemaMode::Enforce, "test")
        .await
        .unwrap();
    assert!(created);
    assert_eq!(schema.version, 1);
}

async fn read(store: &EventStore, name: &str) -> lethe::StreamSlice {
    let name = lethe::StreamName::parse_readable(name).unwrap();
    store.read_stream(&name, 0, Direction::Forward, 100).await.unwrap()
}

fn contains(events: &[RecordedEvent], marker: &str) -> bool {
    events
        .iter()
        .any(|e| e.data.as_ref().is_some_and(|d| d.to_string().contains(marker)))
}

/// Asserts an event is the transfer with the sender forgotten and everything else intact.
fn assert_sender_erased(event: &RecordedEvent, sender: &str, receiver: &str) {
    let data = event.data.as_ref().expect("the event is not erased as a whole");
    assert_eq!(data["sender_name"], "[erased]");
    assert_eq!(event.erased_fields, vec!["/sender_name".to_owned()]);
    assert_eq!(data["receiver"]["name"], format!("{RECEIVER_MARKER}-{receiver}"));
    assert_eq!(
        (data["sender_id"].as_str(), data["receiver_id"].as_str()),
        (Some(sender), Some(receiver))
    );
    assert_eq!(data["amount"], 10);
    assert!(!event.erased);
    assert_eq!(event.schema_version, Some(1));
}

backend_tests!(
    a_two_subject_event_in_a_public_stream_forgets_only_one_subject,
    every_read_path_applies_the_replacement_values,
    schema_violations_change_nothing,
    warn_mode_stores_and_counts_violations,
    a_personal_field_needs_a_subject_it_can_tell,
    stream_subject_fields_follow_the_bound_subject,
    a_forgotten_subject_stays_forgotten,
    fields_of_a_subject_being_forgotten_are_refused,
    a_second_process_with_the_subject_key_cached_cannot_decrypt_after_forget,
    appends_racing_a_forget_write_nothing_under_a_destroyed_key,
    forget_with_fields_interrupted_at_any_step_resumes_to_completion,
    export_includes_own_fields_from_other_streams_only,
    the_registry_survives_a_restart,
    a_big_page_opens_every_field,
    the_field_index_tells_subject_ids_apart_exactly,
);

/// The field index answers exactly the streams holding a subject's fields, of single events
/// and of several events and streams per append: ids that differ only in case, that extend
/// another, or that hold every character a subject id may, each get their own streams (SQLite
/// keeps the index as FTS5 tokens, which are case-folded and split on punctuation unless
/// encoded).
async fn the_field_index_tells_subject_ids_apart_exactly(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    let odd = "Ann:1@x.y_z-W";
    for (stream, sender, receiver) in [
        ("ledger-1", "Ann", "ann"),
        ("ledger-2", "ann", odd),
        ("ledger-3", "ann-x", "bob"),
    ] {
        pay(&store, stream, sender, receiver).await.unwrap();
    }
    // Several events per stream, several streams per append: each subject of each is found.
    store
        .append_multi(vec![
            append(
                "ledger-4",
                ExpectedVersion::Any,
                vec![
                    transfer("zoe", "yan", 1),
                    transfer("yan", "zoe", 1),
                    transfer("bob", "xi", 1),
                ],
            ),
            append("ledger-5", ExpectedVersion::Any, vec![transfer("xi", "zoe", 1)]),
        ])
        .await
        .unwrap();
    for (id, streams) in [
        ("Ann", vec!["ledger-1"]),
        ("ann", vec!["ledger-1", "ledger-2"]),
        (odd, vec!["ledger-2"]),
        ("ann-x", vec!["ledger-3"]),
        ("an", vec![]),
        ("ANN", vec![]),
        ("zoe", vec!["ledger-4", "ledger-5"]),
        ("yan", vec!["ledger-4"]),
        ("bob", vec!["ledger-3", "ledger-4"]),
        ("xi", vec!["ledger-4", "ledger-5"]),
    ] {
        assert_eq!(
            store.subject_field_streams(&subject(id)).await.unwrap(),
            streams,
            "{id}"
        );
    }
}

async fn a_two_subject_event_in_a_public_stream_forgets_only_one_subject(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    let outcome = store
        .append(append(
            "bankaccount-123",
            ExpectedVersion::NoStream,
            vec![transfer("alice", "bob", 10)],
        ))
        .await
        .unwrap();
    assert_eq!(outcome.first_version, 0);

    let before = read(&store, "bankaccount-123").await;
    let data = before.events[0].data.as_ref().unwrap();
    assert_eq!(data["sender_name"], format!("{SENDER_MARKER}-alice"));
    assert_eq!(data["receiver"]["name"], format!("{RECEIVER_MARKER}-bob"));
    assert_eq!(before.events[0].schema_version, Some(1));
    assert!(before.events[0].erased_fields.is_empty());
    assert_eq!(
        store.subject_field_streams(&subject("alice")).await.unwrap(),
        vec!["bankaccount-123"]
    );
    assert_eq!(
        store.subject_field_streams(&subject("bob")).await.unwrap(),
        vec!["bankaccount-123"]
    );

    let erasure = store.forget(&subject("alice"), ErasureReason::default()).await.unwrap();
    assert_eq!(erasure.status, ErasureStatus::Completed);
    assert_eq!(
        erasure.field_streams.as_deref(),
        Some(&["bankaccount-123".to_owned()][..])
    );
    assert_eq!(erasure.streams.as_deref().map(<[_]>::len), Some(0), "no bound stream");
    assert_eq!(erasure.keys_destroyed, 1, "the subject key");
    let subject_key = erasure.subject_key.expect("the subject key is recorded");
    let vault = db.vault().await;
    assert!(matches!(
        vault.fetch_keys(&[KeyId(subject_key)]).await.unwrap()[0].1,
        KeyLookup::Destroyed
    ));
    let stats = vault.stats().await.unwrap();
    assert_eq!(
        (stats.subject_keys_live, stats.subject_keys_destroyed),
        (1, 1),
        "bob's lives on"
    );
    let report = store.erasure_report(None, None).await.unwrap();
    assert_eq!(
        (report.keys_destroyed, report.subject_keys_destroyed),
        (1, 1),
        "counted in the report"
    );
    assert!(report.to_csv().contains("summary,subject_keys_destroyed,1"));

    let after = read(&store, "bankaccount-123").await;
    assert_eq!(
        after.info.status,
        lethe::StreamStatus::Active,
        "the public stream stays"
    );
    assert_sender_erased(&after.events[0], "alice", "bob");
    // A SubjectForgotten tombstone names the stream holding the fields.
    let erasures = read(&store, "$erasures").await;
    assert_eq!(erasures.events.len(), 1);
    assert_eq!(
        erasures.events[0].data.as_ref().unwrap()["field_streams"],
        json!(["bankaccount-123"])
    );

    // The stream takes new events, the forgotten subject's fields aside; a retry with the same
    // event id is idempotent although each sealing of a field draws a new nonce.
    let retried = transfer("carol", "bob", 10).with_id(uuid::Uuid::now_v7());
    // The size limits count the data as given, not its sealed fields.
    let given = serde_json::to_vec(&retried.data).unwrap().len() + "{}".len();
    for _ in 0..2 {
        let outcome = store
            .append_with_outcome(append(
                "bankaccount-123",
                ExpectedVersion::Exact(0),
                vec![retried.clone()],
            ))
            .await
            .unwrap();
        assert_eq!(outcome.streams[0].first_version, 1);
        if !outcome.idempotent_retry {
            assert_eq!(outcome.data_bytes, given);
        }
    }
    assert_eq!(read(&store, "bankaccount-123").await.events.len(), 2);
}

async fn every_read_path_applies_the_replacement_values(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    store
        .put_consumer("projector", LogFilter::default(), false)
        .await
        .unwrap();
    let mut live = Box::pin(store.subscribe(1, LogFilter::default()));
    pay(&store, "transfers", "alice", "bob").await.unwrap();
    let before = live.next().await.unwrap().unwrap();
    assert!(contains(std::slice::from_ref(&before), SENDER_MARKER));
    pay(&store, "transfers", "alice", "bob").await.unwrap();
    store.forget(&subject("alice"), ErasureReason::default()).await.unwrap();

    let mut seen: Vec<(&str, Vec<RecordedEvent>)> = Vec::new();
    let transfers = |events: Vec<RecordedEvent>| -> Vec<RecordedEvent> {
        events
            .into_iter()
            .filter(|e| e.event_type == "MoneyTransferred")
            .collect()
    };
    seen.push(("stream read", read(&store, "transfers").await.events));
    seen.push((
        "backward read",
        store
            .read_stream(&stream("transfers"), u64::MAX, Direction::Backward, 10)
            .await
            .unwrap()
            .events,
    ));
    seen.push((
        "log",
        transfers(store.read_log(1, &LogFilter::default(), 100).await.unwrap().events),
    ));
    let pages: Vec<_> = store.read_log_pages(1, LogFilter::default(), 1).take(3).collect().await;
    seen.push((
        "catch-up pages",
        transfers(pages.into_iter().flat_map(|p| p.unwrap().events).collect()),
    ));
    let subscribed: Vec<_> = store.subscribe(1, LogFilter::default()).take(2).collect().await;
    seen.push(("new subscription", subscribed.into_iter().map(Result::unwrap).collect()));
    // A subscription opened before the forget reads on after it.
    seen.push(("live subscription", vec![live.next().await.unwrap().unwrap()]));
    let batch = store.consumer_events("projector", 10, Duration::ZERO).await.unwrap();
    seen.push(("consumer", transfers(batch.events)));

    for (path, events) in seen {
        assert!(!events.is_empty(), "{path}");
        assert!(!contains(&events, SENDER_MARKER), "{path} leaks the forgotten field");
        for event in &events {
            assert_sender_erased(event, "alice", "bob");
        }
    }
    // Her export: her (replaced) fields, never bob's.
    let export: Vec<RecordedEvent> = store
        .export_subject(subject("alice"))
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(export.len(), 2);
    for event in &export {
        let data = event.data.as_ref().unwrap();
        assert_eq!(data["sender_name"], "[erased]");
        assert_eq!(event.erased_fields, vec!["/sender_name".to_owned()]);
        assert!(data["receiver"].get("name").is_none(), "{data}");
    }
}

async fn schema_violations_change_nothing(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    let head = store.head().await.unwrap();
    let mut bad = transfer("alice", "bob", 10);
    bad.data["amount"] = json!(0);
    // The bad event is the second stream's; the first stream's event is not stored either.
    let err = store
        .append_multi(vec![
            append(
                "ledger",
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Noted", json!({}))],
            ),
            append(
                "transfers",
                ExpectedVersion::NoStream,
                vec![transfer("alice", "bob", 10), bad],
            ),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "schema_violation");
    let message = err.to_string();
    assert!(message.contains("/amount") && message.contains("minimum"), "{message}");
    assert!(
        message.contains("\"transfers\"") && message.contains("event 1"),
        "{message}"
    );
    assert!(!message.contains(SENDER_MARKER), "{message}");
    assert_eq!(store.head().await.unwrap(), head, "nothing stored");
    for name in ["ledger", "transfers"] {
        let missing = store
            .read_stream(&stream(name), 0, Direction::Forward, 10)
            .await
            .unwrap_err();
        assert_eq!(missing.code(), "not_found");
    }
    assert!(store.subject_field_streams(&subject("alice")).await.unwrap().is_empty());
    let missing_field = NewEvent::new("MoneyTransferred", json!({"sender_id": "alice", "receiver_id": "bob"}));
    let err = store
        .append(append("transfers", ExpectedVersion::Any, vec![missing_field]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "schema_violation");
    assert!(err.to_string().contains("required"), "{err}");
    // Types without a schema are not checked.
    store
        .append(append(
            "other",
            ExpectedVersion::Any,
            vec![NewEvent::new("Anything", json!(42))],
        ))
        .await
        .unwrap();
}

async fn warn_mode_stores_and_counts_violations(db: TestDb) {
    let store = db.open().await;
    let schema = json!({"type": "object", "required": ["note"]});
    let register = |mode| store.register_schema("Noted", &schema, mode, "test");
    let (v1, _) = register(SchemaMode::Enforce).await.unwrap();
    let (v2, created) = register(SchemaMode::Warn).await.unwrap();
    assert!(created);
    assert_eq!((v1.version, v2.version), (1, 2), "a new mode is a new version");
    let (same, created) = register(SchemaMode::Warn).await.unwrap();
    assert!(!created, "the latest version again: nothing stored");
    assert_eq!(same.version, 2);
    assert_eq!(store.schema_versions("Noted").await.unwrap().len(), 2);

    store
        .append(append(
            "notes",
            ExpectedVersion::Any,
            vec![NewEvent::new("Noted", json!({"other": 1}))],
        ))
        .await
        .unwrap();
    assert_eq!(store.schema_violations(), 1);
    let stored = read(&store, "notes").await;
    assert_eq!(stored.events[0].schema_version, Some(2));
    assert_eq!(stored.events[0].data, Some(json!({"other": 1})));
    let query = lethe::model::AuditQuery {
        limit: 100,
        ..Default::default()
    };
    let audited = store.audit_entries(&query).await.unwrap();
    assert_eq!(
        audited.iter().filter(|e| e.action == "schema_registered").count(),
        2,
        "each version audited once"
    );
}

async fn a_personal_field_needs_a_subject_it_can_tell(db: TestDb) {
    let store = db.open().await;
    let schema = json!({"type": "object", "properties": {
        "owner_id": {},
        "owner_name": {"x-lethe-personal": {"subject": "/owner_id"}},
        "note": {"x-lethe-personal": {"subject": "$stream"}},
    }});
    store
        .register_schema("AccountOpened", &schema, SchemaMode::Warn, "test")
        .await
        .unwrap();
    let head = store.head().await.unwrap();
    let cases = [
        (json!({"owner_name": "x"}), "is missing"),
        (json!({"owner_id": 7, "owner_name": "x"}), "not a string"),
        (
            json!({"owner_id": "no spaces allowed", "owner_name": "x"}),
            "legal subject id",
        ),
        (json!({"owner_id": "$system", "owner_name": "x"}), "legal subject id"),
        (json!({"note": "x"}), "bound to none"),
    ];
    for (data, reason) in cases {
        let err = store
            .append(append(
                "account-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("AccountOpened", data.clone())],
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_subject", "{data}");
        assert!(err.to_string().contains(reason), "{data}: {err}");
    }
    assert_eq!(store.head().await.unwrap(), head, "nothing stored");
    // An absent personal field needs no subject.
    store
        .append(append(
            "account-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("AccountOpened", json!({}))],
        ))
        .await
        .unwrap();
}

async fn stream_subject_fields_follow_the_bound_subject(db: TestDb) {
    let store = db.open().await;
    let schema = json!({"type": "object", "properties": {
        "name": {"x-lethe-personal": {"subject": "$stream"}, "x-lethe-erased": {"gone": true}},
    }});
    store
        .register_schema("NameGiven", &schema, SchemaMode::Enforce, "test")
        .await
        .unwrap();
    let named = |name: &str| NewEvent::new("NameGiven", json!({ "name": name }));
    store
        .append(append("profile-dave", ExpectedVersion::NoStream, vec![named("Dave D")]).with_subject(subject("dave")))
        .await
        .unwrap();
    // Later appends need not repeat the subject: the stream's binding says whose it is.
    store
        .append(append("profile-dave", ExpectedVersion::Exact(0), vec![named("Dave E")]))
        .await
        .unwrap();
    let events = read(&store, "profile-dave").await.events;
    assert_eq!(events[1].data.as_ref().unwrap()["name"], "Dave E");
    assert_eq!(
        store.subject_field_streams(&subject("dave")).await.unwrap(),
        vec!["profile-dave"]
    );
    store.forget(&subject("dave"), ErasureReason::default()).await.unwrap();
    let events = read(&store, "profile-dave").await.events;
    assert!(
        events[0].erased && events[0].data.is_none(),
        "a shredded stream reads data: null"
    );
}

async fn a_forgotten_subject_stays_forgotten(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    pay(&store, "transfers", "alice", "bob").await.unwrap();
    // Erin never had a field or a stream before she was forgotten.
    for who in ["alice", "erin"] {
        store.forget(&subject(who), ErasureReason::default()).await.unwrap();
    }
    let head = store.head().await.unwrap();
    for who in ["alice", "erin"] {
        let err = pay(&store, "transfers", who, "bob").await.unwrap_err();
        assert_eq!(err.code(), "subject_forgotten", "{who}: a personal field");
        let err = store
            .append(
                append(
                    &format!("private-{who}"),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("Noted", json!({}))],
                )
                .with_subject(subject(who)),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "subject_forgotten", "{who}: a bound stream");
    }
    assert_eq!(store.head().await.unwrap(), head, "nothing stored");
    let stats = db.vault().await.stats().await.unwrap();
    assert_eq!(
        stats.subject_keys_live, 1,
        "bob's only: no key was created for a forgotten subject"
    );
    // A process that never saw the forget refuses too (the event database and the vault say so).
    let other = db.open().await;
    let err = pay(&other, "transfers", "erin", "bob").await.unwrap_err();
    assert_eq!(err.code(), "subject_forgotten");
}

async fn fields_of_a_subject_being_forgotten_are_refused(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    pay(&store, "transfers", "alice", "bob").await.unwrap();
    let requested = store
        .request_forget(&subject("alice"), ErasureReason::default())
        .await
        .unwrap();
    let err = pay(&store, "transfers", "alice", "bob").await.unwrap_err();
    assert_eq!(err.code(), "erasure_in_progress");
    // Another subject's fields are not held up.
    pay(&store, "transfers", "carol", "bob").await.unwrap();
    let done = store.drive_erasure(requested.id).await.unwrap();
    assert_eq!(done.status, ErasureStatus::Completed);
    let err = pay(&store, "transfers", "alice", "bob").await.unwrap_err();
    assert_eq!(err.code(), "subject_forgotten");
}

async fn a_second_process_with_the_subject_key_cached_cannot_decrypt_after_forget(db: TestDb) {
    let first = db.open().await;
    let second = db.open().await;
    with_transfer_schema(&first).await;
    pay(&first, "transfers", "alice", "bob").await.unwrap();
    // The second process reads, so it holds both subject keys (and the stream's) in its cache.
    assert!(contains(&read(&second, "transfers").await.events, SENDER_MARKER));
    first.forget(&subject("alice"), ErasureReason::default()).await.unwrap();
    let after = read(&second, "transfers").await;
    assert_sender_erased(&after.events[0], "alice", "bob");
    let log = second.read_log(1, &LogFilter::default(), 10).await.unwrap();
    assert!(!contains(&log.events, SENDER_MARKER));
}

/// Appends naming a subject race its forget: each either commits before the forget's first
/// step (and its field then reads erased) or is refused; none writes a field under a key the
/// forget destroyed, and no key of the subject is created after the forget.
async fn appends_racing_a_forget_write_nothing_under_a_destroyed_key(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    pay(&store, "warmup", "alice", "bob").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let appender = store.clone();
        tasks.push(tokio::spawn(async move {
            // Half of them name a subject never seen before (its key is created on the way).
            let who = if i % 2 == 0 {
                "alice".to_owned()
            } else {
                format!("newcomer-{i}")
            };
            let forgotten = if i % 2 == 0 { "alice" } else { "newcomer" };
            let result = appender
                .append(append(
                    &format!("race-{i}"),
                    ExpectedVersion::Any,
                    vec![transfer(&who, "bob", 10)],
                ))
                .await;
            (i, forgotten, result)
        }));
        if i == 20 {
            let forgetter = store.clone();
            tasks.push(tokio::spawn(async move {
                forgetter
                    .forget(&subject("alice"), ErasureReason::default())
                    .await
                    .unwrap();
                (usize::MAX, "", Err(lethe::Error::NotFound { what: "none" }))
            }));
        }
    }
    // Every task done (the forget too) before any check.
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let mut refused = 0;
    for (i, forgotten, result) in results {
        if i == usize::MAX {
            continue;
        }
        match result {
            Ok(_) if forgotten == "alice" => {
                // Committed before the forget: its field reads erased now.
                let events = read(&store, &format!("race-{i}")).await.events;
                assert_sender_erased(&events[0], "alice", "bob");
            }
            Ok(_) => {}
            Err(e) => {
                assert_eq!(forgotten, "alice", "only the forgotten subject is refused: {e}");
                assert!(matches!(e.code(), "erasure_in_progress" | "subject_forgotten"), "{e}");
                refused += 1;
            }
        }
    }
    let erasure = &store.erasures(Some(&subject("alice")), 10).await.unwrap()[0];
    assert_eq!(erasure.status, ErasureStatus::Completed);
    // Every stream holding alice's fields is listed, and no live key of hers is left.
    let listed = erasure.field_streams.clone().unwrap();
    for name in store.subject_field_streams(&subject("alice")).await.unwrap() {
        assert!(
            listed.contains(&name),
            "{name} written after the erasure listed its streams"
        );
    }
    let vault = db.vault().await;
    let key = vault
        .create_keys(&[lethe_keyvault::NewKey::subject_key("alice")])
        .await
        .unwrap_err();
    assert_eq!(key.code(), "subject_forgotten", "no key is ever created for her again");
    let stats = vault.stats().await.unwrap();
    assert_eq!(stats.subject_keys_destroyed, 1);
    eprintln!("{refused} of 20 appends naming the forgotten subject were refused");
}

async fn forget_with_fields_interrupted_at_any_step_resumes_to_completion(db: TestDb) {
    for fault in ErasureFault::ALL {
        let db = db.another().await;
        let mut config = db.config().await;
        config.erasure_fault = Some(fault);
        let crashing = db.open_with(config).await;
        with_transfer_schema(&crashing).await;
        pay(&crashing, "transfers", "alice", "bob").await.unwrap();
        let err = crashing
            .forget(&subject("alice"), ErasureReason::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), "injected_fault", "{fault:?}");
        // From the first step on, the field does not decrypt any more.
        assert_sender_erased(&read(&crashing, "transfers").await.events[0], "alice", "bob");
        drop(crashing);

        let restarted = db.open().await;
        restarted.resume_erasures().await.unwrap();
        let erasure = &restarted.erasures(Some(&subject("alice")), 10).await.unwrap()[0];
        assert_eq!(erasure.status, ErasureStatus::Completed, "{fault:?}");
        assert_eq!(erasure.keys_destroyed, 1, "{fault:?}");
        let key = erasure.subject_key.unwrap();
        assert!(matches!(
            db.vault().await.fetch_keys(&[KeyId(key)]).await.unwrap()[0].1,
            KeyLookup::Destroyed
        ));
        assert_sender_erased(&read(&restarted, "transfers").await.events[0], "alice", "bob");
        assert_eq!(
            read(&restarted, "$erasures").await.events.len(),
            1,
            "{fault:?}: one tombstone"
        );
        let again = restarted
            .forget(&subject("alice"), ErasureReason::default())
            .await
            .unwrap();
        assert!(again.found_nothing(), "idempotent: {fault:?}");
        assert_eq!(read(&restarted, "$erasures").await.events.len(), 1, "{fault:?}");
    }
}

async fn export_includes_own_fields_from_other_streams_only(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    store
        .append_multi(vec![
            append("transfers", ExpectedVersion::Any, vec![transfer("alice", "bob", 10)]),
            append("ledger", ExpectedVersion::Any, vec![transfer("carol", "dave", 10)]),
            append(
                "private-bob",
                ExpectedVersion::Any,
                vec![NewEvent::new("Noted", json!({"n": 1})), transfer("alice", "bob", 10)],
            )
            .with_subject(subject("bob")),
        ])
        .await
        .unwrap();
    let export: Vec<RecordedEvent> = store.export_subject(subject("bob")).map(Result::unwrap).collect().await;
    let streams: Vec<&str> = export.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(
        streams,
        vec!["private-bob", "private-bob", "transfers"],
        "bound streams (every event), then field streams"
    );
    assert_eq!(export[0].data, Some(json!({"n": 1})));
    // Even in his own stream, alice's personal field is not his to export.
    let own = export[1].data.as_ref().unwrap();
    assert!(own.get("sender_name").is_none(), "{own}");
    assert_eq!(own["receiver"]["name"], format!("{RECEIVER_MARKER}-bob"));
    let transfer = export[2].data.as_ref().unwrap();
    assert_eq!(
        transfer["receiver"]["name"],
        format!("{RECEIVER_MARKER}-bob"),
        "his own field"
    );
    assert!(
        transfer.get("sender_name").is_none(),
        "never another subject's field: {transfer}"
    );
    assert_eq!(
        (transfer["amount"].clone(), transfer["sender_id"].clone()),
        (json!(10), json!("alice"))
    );
    assert!(!contains(&export, SENDER_MARKER));
}

/// Pages of hundreds of events are opened on two threads: every field of both halves is
/// opened or replaced as its subject says.
async fn a_big_page_opens_every_field(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    let senders = ["alice", "carol"];
    let transfers: Vec<NewEvent> = (0..600).map(|i| transfer(senders[i % 2], "bob", 10)).collect();
    store
        .append(append("ledger", ExpectedVersion::NoStream, transfers))
        .await
        .unwrap();
    store.forget(&subject("alice"), ErasureReason::default()).await.unwrap();
    let page = store.read_log(1, &LogFilter::default(), 1000).await.unwrap();
    let transfers: Vec<&RecordedEvent> = page
        .events
        .iter()
        .filter(|e| e.event_type == "MoneyTransferred")
        .collect();
    assert_eq!(transfers.len(), 600);
    for (i, event) in transfers.into_iter().enumerate() {
        let data = event.data.as_ref().unwrap();
        if i % 2 == 0 {
            assert_sender_erased(event, "alice", "bob");
        } else {
            assert_eq!(data["sender_name"], format!("{SENDER_MARKER}-carol"), "event {i}");
            assert_eq!(data["receiver"]["name"], format!("{RECEIVER_MARKER}-bob"), "event {i}");
            assert!(event.erased_fields.is_empty());
        }
    }
}

async fn the_registry_survives_a_restart(db: TestDb) {
    let store = db.open().await;
    with_transfer_schema(&store).await;
    pay(&store, "transfers", "alice", "bob").await.unwrap();
    store.close().await;
    let reopened = db.open().await;
    let events = read(&reopened, "transfers").await.events;
    assert_eq!(
        events[0].data.as_ref().unwrap()["sender_name"],
        format!("{SENDER_MARKER}-alice")
    );
    let mut bad = transfer("alice", "bob", 10);
    bad.data["amount"] = json!("ten");
    let err = reopened
        .append(append("transfers", ExpectedVersion::Any, vec![bad]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "schema_violation");
    assert_eq!(reopened.schemas().await.unwrap().len(), 1);
}

/// On PostgreSQL a schema registered by one process is enforced by the others (announced, and
/// read again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_registrations_reach_other_processes() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let first = db.open().await;
    let second = db.open().await;
    // The second process has read the (empty) registry.
    second
        .append(append(
            "warm",
            ExpectedVersion::Any,
            vec![NewEvent::new("Noted", json!({}))],
        ))
        .await
        .unwrap();
    with_transfer_schema(&first).await;
    let mut bad = transfer("alice", "bob", 10);
    bad.data["amount"] = json!(0);
    let mut refused = false;
    for _ in 0..100 {
        match second
            .append(append("transfers", ExpectedVersion::Any, vec![bad.clone()]))
            .await
        {
            Err(e) if e.code() == "schema_violation" => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(refused, "the other process enforces the new schema");
}

/// Raw files: no plaintext of a personal field in any file, the subject key's wrapped bytes
/// gone from the vault's files after the forget, and an independent program decrypts a field
/// from what SECURITY.md says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_files_never_hold_a_personal_field_and_lose_the_subject_key_on_forget() {
    use sqlx::Connection;
    let db = TestDb::sqlite().await;
    let store = db.open().await;
    with_transfer_schema(&store).await;
    for i in 0..20 {
        store
            .append(StreamAppend::new(
                stream("bankaccount-123"),
                ExpectedVersion::Any,
                vec![transfer("alice", &format!("bob-{i}"), 10)],
            ))
            .await
            .unwrap();
    }
    let events_db = db.dir.path().join("events.db");
    let vault_db = db.dir.path().join("keyvault.db");
    let files = sqlite_file_bytes;
    let found = contains_bytes;
    for marker in [SENDER_MARKER, RECEIVER_MARKER] {
        assert!(
            !found(&files(&events_db), marker.as_bytes()),
            "{marker} in the event database"
        );
        assert!(!found(&files(&vault_db), marker.as_bytes()), "{marker} in the vault");
    }
    assert!(found(&files(&events_db), b"bankaccount-123"), "the scan is real");

    let mut events = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let alice_key: uuid::Uuid = sqlx::query_scalar("SELECT key_id FROM subject_keys WHERE subject = 'alice'")
        .fetch_one(&mut events)
        .await
        .unwrap();
    let mut vault = sqlx::SqliteConnection::connect(&format!("sqlite://{}", vault_db.display()))
        .await
        .unwrap();
    let wrapped: Vec<u8> = sqlx::query_scalar("SELECT wrapped FROM vault_key_material WHERE id = ?1")
        .bind(alice_key)
        .fetch_one(&mut vault)
        .await
        .unwrap();
    drop(vault);
    assert!(
        found(&files(&vault_db), &wrapped),
        "the wrapped subject key is in the vault file before"
    );

    independent_field_decryption(&db, &mut events, alice_key).await;

    store.forget(&subject("alice"), ErasureReason::default()).await.unwrap();
    assert!(
        !found(&files(&vault_db), &wrapped),
        "the wrapped subject key is gone from the vault file and WAL"
    );
    for marker in [SENDER_MARKER, RECEIVER_MARKER] {
        assert!(!found(&files(&events_db), marker.as_bytes()));
    }
}

/// Decrypts alice's `sender_name` in the first event with Python's `cryptography` and the
/// formats of SECURITY.md alone: the stream key opens the payload, the subject key the field.
async fn independent_field_decryption(db: &TestDb, events: &mut sqlx::SqliteConnection, alice_key: uuid::Uuid) {
    use sqlx::Row;
    let ready = std::process::Command::new("python3")
        .args(["-c", "from cryptography.hazmat.primitives.ciphers.aead import AESGCM"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        assert!(std::env::var_os("CI").is_none(), "CI needs python3 with `cryptography`");
        eprintln!("independent decryption skipped: python3 with `cryptography` not available");
        return;
    }
    let row = sqlx::query(
        "SELECT e.stream, e.event_id, e.payload, e.key_id FROM events e \
         WHERE e.stream = 'bankaccount-123' AND e.version = 0",
    )
    .fetch_one(&mut *events)
    .await
    .unwrap();
    let (name, event_id, payload, stream_key): (String, uuid::Uuid, Vec<u8>, uuid::Uuid) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_field.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg("--vault-db")
        .arg(db.dir.path().join("keyvault.db"))
        .arg("--kek-file")
        .arg(db.dir.path().join("kek.key"))
        .args(["--stream-key-id", &stream_key.to_string()])
        .args(["--stream", &name])
        .args(["--event-id", &event_id.to_string()])
        .args(["--payload-hex", &hex::encode(&payload)])
        .args(["--pointer", "/sender_name"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["field_key_id"], alice_key.to_string());
    assert_eq!(answer["value"], format!("{SENDER_MARKER}-alice"));
    assert_eq!(answer["payload"]["amount"], 10, "the payload opens with the stream key");
}

/// Migration 0012 moves PostgreSQL's field index from the `field_streams` table onto the
/// events (`field_subjects`): applied to a database of the older shape, every subject's field
/// streams are answered as before, by the query the store runs.
#[tokio::test]
async fn postgres_upgrade_moves_the_field_index_onto_the_events() {
    use sqlx::Connection;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let migrations = [
        include_str!("../../migrations/postgres/0001_events.sql"),
        include_str!("../../migrations/postgres/0002_erasures.sql"),
        include_str!("../../migrations/postgres/0003_access.sql"),
        include_str!("../../migrations/postgres/0004_erasure_workflow.sql"),
        include_str!("../../migrations/postgres/0005_audit.sql"),
        include_str!("../../migrations/postgres/0006_hold_lapses.sql"),
        include_str!("../../migrations/postgres/0007_write_generation.sql"),
        include_str!("../../migrations/postgres/0008_personal_fields.sql"),
        include_str!("../../migrations/postgres/0009_audit_once.sql"),
        include_str!("../../migrations/postgres/0010_retention.sql"),
        include_str!("../../migrations/postgres/0011_log_reservations.sql"),
    ];
    for sql in migrations {
        db.execute(sql).await;
    }
    let event = |position: u32, stream: &str, version: u32, schema: &str| {
        format!(
            "INSERT INTO events (position, stream, version, event_id, event_type, payload, metadata, key_id, \
             digest, recorded_at, schema_version) VALUES ({position}, '{stream}', {version}, gen_random_uuid(), \
             'MoneyTransferred', '\\x00', '{{}}', gen_random_uuid(), '\\x00', 0, {schema});"
        )
    };
    db.execute(
        &[
            event(1, "transfer-1", 0, "1"),
            event(2, "transfer-1", 1, "1"),
            event(3, "public-2", 0, "1"),
            event(4, "other-3", 0, "NULL"),
            "INSERT INTO field_streams (subject, stream) VALUES ('p-1', 'transfer-1'), ('p-2', 'transfer-1'), \
         ('p-1', 'public-2');"
                .to_owned(),
        ]
        .concat(),
    )
    .await;
    db.execute(include_str!("../../migrations/postgres/0012_field_subjects.sql"))
        .await;

    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let streams_of = async |conn: &mut sqlx::PgConnection, subject: &str| -> Vec<String> {
        // The store's query (`SELECT_FIELD_STREAMS` of the PostgreSQL engine).
        sqlx::query_scalar(
            "SELECT DISTINCT stream FROM events WHERE field_subjects @> ARRAY[$1::text] \
             AND field_subjects IS NOT NULL ORDER BY stream",
        )
        .bind(subject)
        .fetch_all(conn)
        .await
        .unwrap()
    };
    assert_eq!(streams_of(&mut conn, "p-1").await, ["public-2", "transfer-1"]);
    assert_eq!(streams_of(&mut conn, "p-2").await, ["transfer-1"]);
    assert!(streams_of(&mut conn, "p-3").await.is_empty());
    let unmarked: Option<Vec<String>> =
        sqlx::query_scalar("SELECT field_subjects FROM events WHERE stream = 'other-3'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(unmarked, None, "an event without a schema carries no field subjects");
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('field_streams')::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(table, None, "the old table is gone");
}

/// Migration 0014 moves SQLite's field index from the `field_streams` table into the FTS5
/// table `field_index`: applied to a database of the older shape, every subject's field streams
/// are answered as before by the query the store runs, and subject ids that differ only in case
/// (or carry every character a subject id may hold) stay apart.
#[tokio::test]
async fn sqlite_upgrade_moves_the_field_index_into_an_inverted_index() {
    use sqlx::Connection;
    let db = TestDb::sqlite().await;
    let url = format!("{}?mode=rwc", db.url);
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let migrations = [
        include_str!("../../migrations/sqlite/0001_events.sql"),
        include_str!("../../migrations/sqlite/0002_erasures.sql"),
        include_str!("../../migrations/sqlite/0003_access.sql"),
        include_str!("../../migrations/sqlite/0004_erasure_workflow.sql"),
        include_str!("../../migrations/sqlite/0005_audit.sql"),
        include_str!("../../migrations/sqlite/0006_hold_lapses.sql"),
        include_str!("../../migrations/sqlite/0008_personal_fields.sql"),
        include_str!("../../migrations/sqlite/0009_audit_once.sql"),
        include_str!("../../migrations/sqlite/0010_retention.sql"),
        include_str!("../../migrations/sqlite/0013_change_tokens.sql"),
    ];
    let run = async |conn: &mut sqlx::SqliteConnection, sql: String| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn).await.unwrap();
    };
    for sql in migrations {
        run(&mut conn, sql.to_owned()).await;
    }
    let event = |position: u32, stream: &str, version: u32, schema: &str| {
        format!(
            "INSERT INTO events (position, stream, version, event_id, event_type, payload, metadata, key_id, \
             digest, recorded_at, schema_version) VALUES ({position}, '{stream}', {version}, randomblob(16), \
             'MoneyTransferred', x'00', '{{}}', randomblob(16), x'00', 0, {schema});"
        )
    };
    let odd = "Ann:1@x.y_z-W";
    run(
        &mut conn,
        [
            event(1, "transfer-1", 0, "1"),
            event(2, "transfer-1", 1, "1"),
            event(3, "public-2", 0, "1"),
            event(4, "other-3", 0, "NULL"),
            event(5, "notes-4", 0, "1"),
            format!(
                "INSERT INTO field_streams (subject, stream) VALUES ('p-1', 'transfer-1'), ('p-2', 'transfer-1'), \
                 ('p-1', 'public-2'), ('P-1', 'notes-4'), ('{odd}', 'notes-4');"
            ),
        ]
        .concat(),
    )
    .await;
    run(
        &mut conn,
        include_str!("../../migrations/sqlite/0014_field_index.sql").to_owned(),
    )
    .await;

    let streams_of = async |conn: &mut sqlx::SqliteConnection, subject: &str| -> Vec<String> {
        // The store's query (`SELECT_FIELD_STREAMS` of the SQLite engine).
        sqlx::query_scalar(
            "SELECT DISTINCT stream FROM events WHERE position IN \
             (SELECT rowid FROM field_index WHERE field_index MATCH '\"' || lower(hex($1)) || '\"') ORDER BY stream",
        )
        .bind(subject)
        .fetch_all(conn)
        .await
        .unwrap()
    };
    assert_eq!(streams_of(&mut conn, "p-1").await, ["public-2", "transfer-1"]);
    assert_eq!(streams_of(&mut conn, "p-2").await, ["transfer-1"]);
    assert_eq!(
        streams_of(&mut conn, "P-1").await,
        ["notes-4"],
        "ids differing in case stay apart"
    );
    assert_eq!(streams_of(&mut conn, odd).await, ["notes-4"]);
    assert!(streams_of(&mut conn, "p-3").await.is_empty());
    assert!(streams_of(&mut conn, "p").await.is_empty(), "no prefix matches");
    let table: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'field_streams'")
            .fetch_optional(&mut conn)
            .await
            .unwrap();
    assert_eq!(table, None, "the old table is gone");
}
