//! Atomic appends across streams (Guarantee 2, `POST /streams`): every stream or none, one
//! contiguous run of positions, conflicts reported per stream, idempotent retries.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use lethe::{Direction, Error, ExpectedVersion, LogFilter, NewEvent, StreamAppend, SubjectId};
use serde_json::json;
use uuid::Uuid;

use crate::appends::{all_events, append, events, stream};
use crate::backend_tests;
use crate::support::TestDb;

backend_tests!(
    both_streams_or_neither_under_an_injected_failure,
    of_32_overlapping_multi_appends_one_wins_and_losers_write_nothing,
    a_tailing_reader_sees_each_multi_append_as_one_contiguous_run,
    multi_append_retry_is_idempotent_and_partial_overlap_is_refused,
    any_failing_part_fails_the_whole_append,
);

fn register(id: usize, expected: ExpectedVersion) -> Vec<StreamAppend> {
    vec![
        append(
            &format!("user-public-{id}"),
            expected,
            vec![NewEvent::new("UserRegistered", json!({"id": id}))],
        ),
        append(
            &format!("user-private-{id}"),
            expected,
            vec![NewEvent::new("PersonalDataGiven", json!({"name": "x"}))],
        )
        .with_subject(SubjectId::new(id.to_string()).unwrap()),
    ]
}

async fn both_streams_or_neither_under_an_injected_failure(db: TestDb) {
    let store = db.open().await;
    db.poison_event_type().await;
    let mut appends = register(1, ExpectedVersion::NoStream);
    appends[1].events.push(NewEvent::new("poison", json!({})));
    let err = store.append_multi(appends).await.unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err}");
    for name in ["user-public-1", "user-private-1"] {
        let read = store.read_stream(&stream(name), 0, Direction::Forward, 10).await;
        assert!(
            matches!(read, Err(Error::StreamNotFound { .. })),
            "{name} was not half-created"
        );
    }
    if db.gapless() {
        assert_eq!(store.head().await.unwrap(), 0);
    }
    // The keys were created in the vault before the transaction; the retry reuses them.
    let retried = store
        .append_multi(register(1, ExpectedVersion::NoStream))
        .await
        .unwrap();
    let positions: Vec<u64> = retried.streams.iter().map(|s| s.first_position).collect();
    assert_eq!(positions[1], positions[0] + 1, "contiguous");
    assert_eq!(store.head().await.unwrap(), positions[1]);
    if db.gapless() {
        assert_eq!(positions, [1, 2]);
    }
}

async fn of_32_overlapping_multi_appends_one_wins_and_losers_write_nothing(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("shared", ExpectedVersion::NoStream, events(1, "e")))
        .await
        .unwrap();
    let tasks = (0..32).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let appends = vec![
                append(&format!("own-{i}"), ExpectedVersion::NoStream, events(2, "e")),
                append("shared", ExpectedVersion::Exact(0), events(1, "e")),
            ];
            (i, store.append_multi(appends).await)
        })
    });
    let mut winners = Vec::new();
    for result in join_all(tasks).await {
        let (i, result) = result.unwrap();
        match result {
            Ok(_) => winners.push(i),
            Err(Error::WrongExpectedVersion { conflicts }) => {
                let named: Vec<_> = conflicts.iter().map(|c| (c.stream.as_str(), c.current)).collect();
                assert_eq!(
                    named,
                    vec![("shared", Some(1))],
                    "only the failed stream, with its version"
                );
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(winners.len(), 1);
    for i in 0..32 {
        let own = store
            .read_stream(&stream(&format!("own-{i}")), 0, Direction::Forward, 10)
            .await;
        assert_eq!(own.is_ok(), winners.contains(&i), "own-{i} written only by the winner");
    }
    if db.gapless() {
        assert_eq!(store.head().await.unwrap(), 1 + 3);
    }
    assert_eq!(all_events(&store).await.len(), 1 + 3);
}

async fn a_tailing_reader_sees_each_multi_append_as_one_contiguous_run(db: TestDb) {
    let store = db.open().await;
    let reader = tokio::spawn({
        let store = store.clone();
        async move {
            let mut seen = Vec::new();
            let mut from = 1;
            let start = tokio::time::Instant::now();
            while seen.len() < 16 * 10 * 3 && start.elapsed() < Duration::from_secs(30) {
                let page = store.read_log(from, &LogFilter::default(), 7).await.unwrap();
                from = page.next;
                seen.extend(page.events.into_iter().map(|e| (e.position, e.stream)));
            }
            seen
        }
    });
    let writers = (0..16).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut runs = Vec::new();
            for i in 0..10 {
                let appends = vec![
                    append(&format!("a-{w}-{i}"), ExpectedVersion::NoStream, events(2, "e")),
                    append(&format!("b-{w}-{i}"), ExpectedVersion::NoStream, events(1, "e")),
                ];
                let outcome = store.append_multi(appends).await.unwrap();
                assert_eq!(
                    outcome.streams[0].last_position + 1,
                    outcome.streams[1].first_position,
                    "in the order given"
                );
                runs.push((
                    outcome.streams[0].first_position,
                    outcome.streams[1].last_position,
                    w,
                    i,
                ));
            }
            runs
        })
    });
    let runs: Vec<_> = join_all(writers).await.into_iter().flat_map(|r| r.unwrap()).collect();
    let seen = reader.await.unwrap();
    assert_eq!(seen.len(), 480, "everything seen once");
    let positions: BTreeSet<u64> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions.len(), 480);
    for (first, last, w, i) in runs {
        assert_eq!(last - first, 2, "three events, contiguous");
        let run: Vec<_> = seen
            .iter()
            .filter(|(p, _)| (first..=last).contains(p))
            .map(|(_, s)| s.clone())
            .collect();
        assert_eq!(
            run,
            vec![format!("a-{w}-{i}"), format!("a-{w}-{i}"), format!("b-{w}-{i}")]
        );
    }
}

async fn multi_append_retry_is_idempotent_and_partial_overlap_is_refused(db: TestDb) {
    let store = db.open().await;
    let with_ids = |appends: Vec<StreamAppend>| -> Vec<StreamAppend> {
        appends
            .into_iter()
            .map(|mut a| {
                a.events = a.events.into_iter().map(|e| e.with_id(Uuid::new_v4())).collect();
                a
            })
            .collect()
    };
    let request = with_ids(register(7, ExpectedVersion::NoStream));
    let first = store.append_multi(request.clone()).await.unwrap();
    let again = store.append_multi(request.clone()).await.unwrap();
    assert!(again.idempotent_retry);
    assert_eq!(again.streams, first.streams);
    assert_eq!(store.head().await.unwrap(), 2);

    // Same first stream's events, but the second part is new: never half-applied.
    let mut partial = request.clone();
    partial[1].events = vec![NewEvent::new("e", json!({})).with_id(Uuid::new_v4())];
    partial[1].expected_version = ExpectedVersion::Any;
    let err = store.append_multi(partial).await.unwrap_err();
    assert_eq!(err.code(), "duplicate_event_id");
    assert_eq!(store.head().await.unwrap(), 2);
}

async fn any_failing_part_fails_the_whole_append(db: TestDb) {
    let store = db.open().await;
    store
        .append_multi(register(1, ExpectedVersion::NoStream))
        .await
        .unwrap();
    store
        .forget(&SubjectId::new("1").unwrap(), Default::default())
        .await
        .unwrap();
    let head = store.head().await.unwrap();
    let cases: Vec<(Vec<StreamAppend>, &str)> = vec![
        (
            vec![
                append("fresh-a", ExpectedVersion::Any, events(1, "e")),
                append("user-private-1", ExpectedVersion::Any, events(1, "e")),
            ],
            "stream_erased",
        ),
        (
            vec![
                append("fresh-b", ExpectedVersion::Any, events(1, "e")),
                append("user-public-1", ExpectedVersion::Any, events(1, "e"))
                    .with_subject(SubjectId::new("9").unwrap()),
            ],
            "subject_mismatch",
        ),
        (
            vec![
                append("fresh-c", ExpectedVersion::Any, events(1, "e")),
                append("fresh-c", ExpectedVersion::Any, events(1, "e")),
            ],
            "invalid_request",
        ),
        (
            vec![
                append("fresh-d", ExpectedVersion::Any, events(1, "e")),
                append("fresh-e", ExpectedVersion::Any, vec![NewEvent::new("", json!({}))]),
            ],
            "invalid_request",
        ),
    ];
    for (appends, code) in cases {
        let err = store.append_multi(appends).await.unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    // A validation error names the part it is about.
    let err = store
        .append_multi(vec![
            append("fresh-f", ExpectedVersion::Any, events(1, "e")),
            append(
                "fresh-g",
                ExpectedVersion::Any,
                vec![NewEvent::new("e", json!({})), NewEvent::new("", json!({}))],
            ),
        ])
        .await
        .unwrap_err();
    match err {
        Error::Invalid(lethe::ValidationError::InPart { stream, index, .. }) => {
            assert_eq!((stream.as_str(), index), ("fresh-g", 1))
        }
        other => panic!("expected the part to be named, got {other}"),
    }
    assert_eq!(
        store.head().await.unwrap(),
        head,
        "no part of any failed append was written"
    );
}
