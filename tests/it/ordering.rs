//! The ordered global log (Guarantee 4): a reader tailing by position sees every committed
//! event exactly once, in position order — also with two store instances (as two processes
//! would be) writing to one PostgreSQL database while transactions stay open for random times.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use lethe::{EventStore, ExpectedVersion, LogFilter, NewEvent};
use serde_json::json;

use crate::appends::append;
use crate::backend_tests;
use crate::support::{Engine, TestDb};

backend_tests!(tailing_reader_sees_every_commit_once_in_order);

/// Makes inserting an event of type `slow` sleep `ms` inside the database transaction, and
/// events of type `jitter` sleep a random 0–5 ms: transactions held open before commit.
async fn slow_inserts(db: &TestDb, ms: u32) {
    match db.engine {
        Engine::Postgres => {
            db.execute(&format!(
                "CREATE FUNCTION slow() RETURNS trigger AS $$ BEGIN \
                   IF NEW.event_type = 'slow' THEN PERFORM pg_sleep({ms} / 1000.0); END IF; \
                   IF NEW.event_type = 'jitter' THEN PERFORM pg_sleep(random() * 0.005); END IF; \
                   RETURN NEW; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER slow BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow();"
            ))
            .await
        }
        Engine::Sqlite => unreachable!("SQLite has one writer; nothing to interleave"),
    }
}

/// Tails the log from position 1 until `expected` events have been seen or `deadline` passes.
async fn tail(store: EventStore, expected: usize, deadline: Duration) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut from = 1;
    let start = tokio::time::Instant::now();
    while seen.len() < expected && start.elapsed() < deadline {
        let page = store.read_log(from, &LogFilter::default(), 100).await.unwrap();
        from = page.next;
        if page.events.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen.extend(page.events.iter().map(|e| e.position));
    }
    seen
}

fn assert_exactly_once_in_order(seen: &[u64], committed: &BTreeSet<u64>) {
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no event delivered twice");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "delivered in position order");
    let missing: Vec<_> = committed.difference(&unique).take(10).collect();
    assert!(
        missing.is_empty(),
        "every committed event delivered; missing {missing:?}"
    );
}

async fn tailing_reader_sees_every_commit_once_in_order(db: TestDb) {
    let two_processes = db.engine == Engine::Postgres;
    let first = db.open().await;
    if two_processes {
        slow_inserts(&db, 0).await;
    }
    let second = if two_processes { db.open().await } else { first.clone() };
    const WRITERS: usize = 16;
    const APPENDS: usize = 15;
    let total = 2 * WRITERS * APPENDS;
    let reader = tokio::spawn(tail(first.clone(), total, Duration::from_secs(60)));

    let writers = [first.clone(), second.clone()]
        .into_iter()
        .enumerate()
        .flat_map(|(p, store)| {
            (0..WRITERS).map(move |w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut positions = Vec::new();
                    for i in 0..APPENDS {
                        let kind = if two_processes { "jitter" } else { "e" };
                        let event = NewEvent::new(kind, json!({ "p": p, "w": w, "i": i }));
                        let r = store
                            .append(append(&format!("p{p}-w{w}"), ExpectedVersion::Any, vec![event]))
                            .await
                            .unwrap();
                        positions.push(r.first_position);
                    }
                    positions
                })
            })
        });
    let committed: BTreeSet<u64> = join_all(writers).await.into_iter().flat_map(|r| r.unwrap()).collect();
    assert_eq!(committed.len(), total);
    let seen = reader.await.unwrap();
    assert_exactly_once_in_order(&seen, &committed);
}

/// The deterministic version: A inserts and waits, B tries to commit meanwhile, the reader polls,
/// A commits. Both must be delivered. With positions from a plain sequence, B would commit a
/// higher position first and a reader past it would never see A.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_slow_commit_is_not_skipped_by_a_reader() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let process_a = db.open().await;
    slow_inserts(&db, 700).await;
    let process_b = db.open().await;
    let reader = db.open().await;

    let a = tokio::spawn({
        let store = process_a.clone();
        async move {
            store
                .append(append(
                    "a",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("slow", json!({}))],
                ))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await; // A is inside its transaction now.
    let b = tokio::spawn({
        let store = process_b.clone();
        async move {
            store
                .append(append(
                    "b",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("fast", json!({}))],
                ))
                .await
        }
    });

    // Poll while A is still open: whatever the reader sees, it must not skip anything later.
    let mut seen = Vec::new();
    let mut from = 1;
    let start = tokio::time::Instant::now();
    while seen.len() < 2 && start.elapsed() < Duration::from_secs(10) {
        let page = reader.read_log(from, &LogFilter::default(), 10).await.unwrap();
        from = page.next;
        seen.extend(page.events.iter().map(|e| (e.position, e.stream.clone())));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = a.await.unwrap().unwrap();
    let b = b.await.unwrap().unwrap();
    assert!(a.first_position < b.first_position, "positions follow commit order");
    assert_eq!(
        seen,
        vec![(a.first_position, "a".to_owned()), (b.first_position, "b".to_owned())],
        "both delivered, in order"
    );
}

/// A group is planned from what it read before it takes the commit-order lock, and written
/// only if no other lock holder committed meanwhile (`log_head.generation`). Here B plans
/// "`x` does not exist" while A, in another process, is inside the transaction that creates
/// it: B's write must not apply that stale plan but decide again, and report the conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_group_planned_before_another_commit_is_decided_again() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let process_a = db.open().await;
    slow_inserts(&db, 700).await;
    let process_b = db.open().await;

    let a = tokio::spawn({
        let store = process_a.clone();
        async move {
            store
                .append(append(
                    "x",
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("slow", json!({}))],
                ))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await; // A is inside its transaction now.
    let b = process_b
        .append(append(
            "x",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("fast", json!({}))],
        ))
        .await;
    let a = a.await.unwrap().unwrap();
    match b {
        Err(lethe::Error::WrongExpectedVersion { conflicts }) => {
            assert_eq!(conflicts.len(), 1);
            assert_eq!(conflicts[0].current, Some(a.last_version), "B sees A's stream");
        }
        other => panic!("B must lose to A with a version conflict, got {other:?}"),
    }
    let stream = process_b
        .read_stream(&lethe::StreamName::new("x").unwrap(), 0, lethe::Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(stream.events.len(), 1, "only A's event is stored");
    assert_eq!(stream.events[0].event_type, "slow");
}

/// The same for a forget: a group planned while a shred (in another process) holds the
/// commit-order lock must see the stream erased when it is decided again, though the shred
/// appends nothing and leaves the head's position alone — it raises the head's generation.
/// Without that, the append would land in a stream whose key is being destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_group_planned_before_a_shred_is_decided_again() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let process_a = db.open().await;
    let process_b = db.open().await;
    let subject = lethe::SubjectId::new("456").unwrap();
    process_b
        .append(
            append(
                "user-private-456",
                ExpectedVersion::Any,
                vec![NewEvent::new("Given", json!({}))],
            )
            .with_subject(subject.clone()),
        )
        .await
        .unwrap();
    // The shred's transaction stays open 700 ms after it took the commit-order lock.
    db.execute(
        "CREATE FUNCTION slow_shred() RETURNS trigger AS $$ BEGIN \
           PERFORM pg_sleep(0.7); RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER slow_shred BEFORE UPDATE ON streams FOR EACH ROW \
           WHEN (NEW.status = 'erased') EXECUTE FUNCTION slow_shred();",
    )
    .await;

    let forget = tokio::spawn({
        let store = process_a.clone();
        let subject = subject.clone();
        async move { store.forget(&subject, lethe::ErasureReason::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // A holds the lock now.
    let late = process_b
        .append(append(
            "user-private-456",
            ExpectedVersion::Any,
            vec![NewEvent::new("Changed", json!({}))],
        ))
        .await;
    assert!(
        matches!(late, Err(lethe::Error::StreamErased { .. })),
        "an append racing the shred must find the stream erased, got {late:?}"
    );
    forget.await.unwrap().unwrap();
    let stream = process_b
        .read_stream(
            &lethe::StreamName::new("user-private-456").unwrap(),
            0,
            lethe::Direction::Forward,
            10,
        )
        .await
        .unwrap();
    let types: Vec<&str> = stream.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Given", "$erased"], "nothing was appended after the shred");
}
