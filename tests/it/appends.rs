//! Appends: optimistic concurrency (Guarantee 1), atomic batches (2), idempotent retries (3),
//! durability (5) and group commit.

use std::collections::BTreeSet;

use futures::future::join_all;
use lethe::{Direction, Error, EventStore, ExpectedVersion, LogFilter, NewEvent, StreamAppend, StreamName};
use serde_json::json;
use uuid::Uuid;

use crate::backend_tests;
use crate::support::TestDb;

pub fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

pub fn events(n: usize, kind: &str) -> Vec<NewEvent> {
    (0..n).map(|i| NewEvent::new(kind, json!({ "i": i }))).collect()
}

pub fn append(name: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend::new(stream(name), expected, events)
}

pub(crate) async fn all_events(store: &EventStore) -> Vec<lethe::RecordedEvent> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_log(from, &LogFilter::default(), 1000).await.unwrap();
        if page.events.is_empty() {
            return out;
        }
        from = page.next;
        out.extend(page.events);
    }
}

backend_tests!(
    same_expected_version_exactly_one_of_32_wins,
    any_appends_all_succeed_with_contiguous_versions,
    conflict_reports_current_version_and_appends_nothing,
    batch_is_stored_whole_or_not_at_all,
    failed_append_does_not_fail_its_group_neighbours,
    retry_with_same_ids_returns_original_result_and_stores_nothing,
    reusing_an_event_id_for_other_content_is_an_error,
    acknowledged_appends_survive_reopen,
    positions_are_never_reused_after_rows_are_removed,
    concurrent_appends_share_transactions,
);

async fn same_expected_version_exactly_one_of_32_wins(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("race", ExpectedVersion::NoStream, events(1, "created")))
        .await
        .unwrap();

    let attempts = (0..32).map(|i| {
        let store = store.clone();
        async move {
            store
                .append(append(
                    "race",
                    ExpectedVersion::Exact(0),
                    vec![NewEvent::new("won", json!({ "by": i }))],
                ))
                .await
        }
    });
    let results = join_all(attempts.map(tokio::spawn)).await;
    let mut wins = 0;
    for result in results {
        match result.unwrap() {
            Ok(r) => {
                wins += 1;
                assert_eq!((r.first_version, r.last_version), (1, 1));
            }
            Err(Error::WrongExpectedVersion { conflicts }) => {
                assert_eq!(conflicts.len(), 1);
                assert_eq!(conflicts[0].current, Some(1), "the loser learns the winner's version");
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(wins, 1, "exactly one writer wins");
    let slice = store
        .read_stream(&stream("race"), 0, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(slice.events.len(), 2);
    assert_eq!(slice.info.version, Some(1));
}

async fn any_appends_all_succeed_with_contiguous_versions(db: TestDb) {
    let store = db.open().await;
    let tasks = (0..32).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.append(append("busy", ExpectedVersion::Any, events(3, "e"))).await })
    });
    let mut ranges: Vec<(u64, u64)> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| {
            let r = r.unwrap().unwrap();
            (r.first_version, r.last_version)
        })
        .collect();
    ranges.sort();
    for (i, (first, last)) in ranges.iter().enumerate() {
        assert_eq!(
            (*first, *last),
            (3 * i as u64, 3 * i as u64 + 2),
            "each batch is contiguous"
        );
    }
    let slice = store
        .read_stream(&stream("busy"), 0, Direction::Forward, 1000)
        .await
        .unwrap();
    let versions: Vec<u64> = slice.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (0..96).collect::<Vec<_>>());
}

async fn conflict_reports_current_version_and_appends_nothing(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("s", ExpectedVersion::Any, events(3, "e")))
        .await
        .unwrap();
    let cases = [
        (ExpectedVersion::NoStream, Some(2)),
        (ExpectedVersion::Exact(1), Some(2)),
        (ExpectedVersion::Exact(7), Some(2)),
    ];
    for (expected, current) in cases {
        match store.append(append("s", expected, events(1, "e"))).await {
            Err(Error::WrongExpectedVersion { conflicts }) => {
                assert_eq!(conflicts[0].current, current)
            }
            other => panic!("expected a conflict for {expected}, got {other:?}"),
        }
    }
    match store
        .append(append("missing", ExpectedVersion::Exists, events(1, "e")))
        .await
    {
        Err(Error::WrongExpectedVersion { conflicts }) => assert_eq!(conflicts[0].current, None),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), 3, "no conflicting append stored anything");
    assert!(matches!(
        store.read_stream(&stream("missing"), 0, Direction::Forward, 10).await,
        Err(Error::StreamNotFound { .. })
    ));
}

async fn batch_is_stored_whole_or_not_at_all(db: TestDb) {
    let store = db.open().await;
    db.poison_event_type().await;
    store
        .append(append("s", ExpectedVersion::Any, events(2, "ok")))
        .await
        .unwrap();

    // The third of five events fails inside the database, after two rows were inserted.
    let mut batch = events(5, "ok");
    batch[2].event_type = "poison".into();
    let err = store
        .append(append("s", ExpectedVersion::Exact(1), batch))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "got {err}");

    let slice = store
        .read_stream(&stream("s"), 0, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(slice.events.len(), 2, "none of the failed batch is stored");
    assert_eq!(slice.info.version, Some(1));
    if db.gapless() {
        assert_eq!(store.head().await.unwrap(), 2);
    }
    // And the store carries on where it was (past the failed group's positions, with parallel
    // group writers).
    let next = store
        .append(append("s", ExpectedVersion::Exact(1), events(5, "ok")))
        .await
        .unwrap();
    assert_eq!(next.first_version, 2);
    if db.gapless() {
        assert_eq!(next.first_position, 3);
    } else {
        assert!(next.first_position > 2);
    }
}

async fn failed_append_does_not_fail_its_group_neighbours(db: TestDb) {
    let store = db.open().await;
    db.poison_event_type().await;
    let tasks = (0..40).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let kind = if i % 10 == 3 { "poison" } else { "ok" };
            let expected = if i % 10 == 7 {
                ExpectedVersion::Exact(99)
            } else {
                ExpectedVersion::Any
            };
            (
                i,
                store.append(append(&format!("s-{i}"), expected, events(2, kind))).await,
            )
        })
    });
    for result in join_all(tasks).await {
        let (i, result) = result.unwrap();
        match i % 10 {
            3 => assert!(matches!(result, Err(Error::Storage(_))), "{i}: {result:?}"),
            7 => assert!(
                matches!(result, Err(Error::WrongExpectedVersion { .. })),
                "{i}: {result:?}"
            ),
            _ => assert!(result.is_ok(), "{i}: {result:?}"),
        }
    }
    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 32 * 2);
    let positions: Vec<u64> = stored.iter().map(|e| e.position).collect();
    if db.gapless() {
        assert_eq!(
            positions,
            (1..=64).collect::<Vec<_>>(),
            "no gaps left by the failed appends"
        );
    } else {
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }
}

async fn retry_with_same_ids_returns_original_result_and_stores_nothing(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("other", ExpectedVersion::Any, events(1, "e")))
        .await
        .unwrap();
    let batch: Vec<NewEvent> = events(3, "e").into_iter().map(|e| e.with_id(Uuid::new_v4())).collect();
    let request = append("s", ExpectedVersion::NoStream, batch.clone());
    let first = store.append_with_outcome(request.clone()).await.unwrap();
    assert!(!first.idempotent_retry);
    store
        .append(append("other", ExpectedVersion::Any, events(1, "e")))
        .await
        .unwrap();

    let again = store.append_with_outcome(request).await.unwrap();
    assert!(again.idempotent_retry);
    assert_eq!(again.streams, first.streams, "the original result");
    // Retried with `any`, it is still the same append.
    let any = store
        .append_with_outcome(append("s", ExpectedVersion::Any, batch.clone()))
        .await
        .unwrap();
    assert!(any.idempotent_retry);
    assert_eq!(all_events(&store).await.len(), 5, "nothing stored twice");

    // Partly stored (first two ids plus a new one) is never half-applied.
    let mut partial = batch[..2].to_vec();
    partial.push(NewEvent::new("e", json!({})).with_id(Uuid::new_v4()));
    let err = store
        .append(append("s", ExpectedVersion::Any, partial))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "duplicate_event_id");
    assert_eq!(all_events(&store).await.len(), 5);
}

async fn reusing_an_event_id_for_other_content_is_an_error(db: TestDb) {
    let store = db.open().await;
    let id = Uuid::new_v4();
    let original = NewEvent::new("e", json!({"a": 1})).with_id(id);
    store
        .append(append("s", ExpectedVersion::Any, vec![original.clone()]))
        .await
        .unwrap();

    let other_data = NewEvent::new("e", json!({"a": 2})).with_id(id);
    let other_type = NewEvent::new("f", json!({"a": 1})).with_id(id);
    let other_meta = original.clone().with_metadata(json!({"m": 1}));
    for event in [other_data, other_type, other_meta] {
        let err = store
            .append(append("s", ExpectedVersion::Any, vec![event]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::DuplicateEventId { event_id } if event_id == id),
            "{err}"
        );
    }
    let err = store
        .append(append("t", ExpectedVersion::Any, vec![original]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "duplicate_event_id", "same id in another stream");
    assert_eq!(all_events(&store).await.len(), 1);
}

async fn acknowledged_appends_survive_reopen(db: TestDb) {
    let store = db.open().await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let r = store
            .append(append(&format!("s-{}", i % 4), ExpectedVersion::Any, events(2, "e")))
            .await
            .unwrap();
        acknowledged.push(r.last_position);
    }
    // No close(): as if the process had died after the acknowledgements.
    drop(store);
    let reopened = db.open().await;
    let stored: BTreeSet<u64> = all_events(&reopened).await.iter().map(|e| e.position).collect();
    for p in acknowledged {
        assert!(stored.contains(&p), "acknowledged position {p} survived");
    }
    assert_eq!(stored.len(), 40);
}

async fn positions_are_never_reused_after_rows_are_removed(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("s", ExpectedVersion::Any, events(3, "e")))
        .await
        .unwrap();
    store.close().await;
    db.execute("DELETE FROM events WHERE position >= 2").await;
    let store = db.open().await;
    let r = store
        .append(append("t", ExpectedVersion::Any, events(1, "e")))
        .await
        .unwrap();
    assert_eq!(r.first_position, 4, "positions 2 and 3 are gone for good");
}

async fn concurrent_appends_share_transactions(db: TestDb) {
    let store = db.open().await;
    let before = store.writer_stats();
    let tasks = (0..64).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(append(&format!("g-{i}"), ExpectedVersion::NoStream, events(1, "e")))
                .await
        })
    });
    for r in join_all(tasks).await {
        r.unwrap().unwrap();
    }
    let after = store.writer_stats();
    assert_eq!(after.appends - before.appends, 64);
    assert!(
        after.transactions - before.transactions < 64,
        "64 concurrent appends took {} transactions",
        after.transactions - before.transactions
    );
}

/// Two stores (as two processes would be) on one SQLite file: concurrent appends from both all
/// succeed — writes take `BEGIN IMMEDIATE` and wait for the lock, never failing with
/// "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_stores_on_one_file_never_fail_with_database_locked() {
    let db = TestDb::sqlite().await;
    let first = db.open().await;
    let second = db.open().await;
    let tasks = (0..64).map(|i| {
        let store = if i % 2 == 0 { first.clone() } else { second.clone() };
        tokio::spawn(async move {
            store
                .append(append(&format!("s-{}", i % 8), ExpectedVersion::Any, events(3, "e")))
                .await
        })
    });
    for result in join_all(tasks).await {
        let result = result.unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
    let stored = all_events(&first).await;
    assert_eq!(stored.len(), 64 * 3);
    let positions: Vec<u64> = stored.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=192).collect::<Vec<_>>(), "one gap-free log");
}
