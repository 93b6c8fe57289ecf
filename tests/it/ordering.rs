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
