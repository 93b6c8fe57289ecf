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
    tail_two_processes(db, 1, 1).await;
}

/// The same with parallel group writers in both processes: groups reserve positions and commit
/// in any order, and the reader still sees every committed event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_parallel_writers_tailing_reader_sees_every_commit_once_in_order() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    tail_two_processes(db, 4, 4).await;
}

/// And with one process of each kind on one database (a rolling change of the setting).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_one_locked_and_one_parallel_process_keep_the_order() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    tail_two_processes(db, 1, 4).await;
}

/// Two stores on one database (PostgreSQL) with these group writers each, or one (SQLite).
async fn tail_two_processes(db: TestDb, writers_first: usize, writers_second: usize) {
    let two_processes = db.engine == Engine::Postgres;
    let first = db.open_parallel(writers_first).await;
    if two_processes {
        slow_inserts(&db, 0).await;
    }
    let second = if two_processes {
        db.open_parallel(writers_second).await
    } else {
        first.clone()
    };
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
    slow_commit_is_not_skipped_by_a_reader(1).await;
}

/// With parallel group writers B does not wait for A's lock: it reserves the positions after
/// A's and commits first. Readers stop below A's reservation until A commits, and B is
/// acknowledged only once A's commit made both readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_parallel_slow_commit_is_not_skipped_by_a_reader() {
    slow_commit_is_not_skipped_by_a_reader(4).await;
}

async fn slow_commit_is_not_skipped_by_a_reader(writers: usize) {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let process_a = db.open_parallel(writers).await;
    slow_inserts(&db, 700).await;
    let process_b = db.open_parallel(writers).await;
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
            let appended = store
                .append(append(
                    "b",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("fast", json!({}))],
                ))
                .await;
            // Acknowledged means readable, with everything before it.
            let page = store.read_log(1, &LogFilter::default(), 10).await.unwrap();
            (appended, page.events.len())
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
    let (b, readable_at_ack) = b.await.unwrap();
    let b = b.unwrap();
    assert_eq!(readable_at_ack, 2, "B acknowledged before the log could show it and A");
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
    group_planned_before_another_commit_is_decided_again(1).await;
}

/// With parallel group writers B's write does not wait for a lock but meets A's new stream in
/// the unique index, and is planned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_parallel_a_group_planned_before_another_commit_is_decided_again() {
    group_planned_before_another_commit_is_decided_again(4).await;
}

async fn group_planned_before_another_commit_is_decided_again(writers: usize) {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let process_a = db.open_parallel(writers).await;
    slow_inserts(&db, 700).await;
    let process_b = db.open_parallel(writers).await;

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
    group_planned_before_a_shred_is_decided_again(1).await;
}

/// With parallel group writers the append's reservation waits for the shred's lock, and it
/// plans after the shred.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_parallel_a_group_planned_before_a_shred_is_decided_again() {
    group_planned_before_a_shred_is_decided_again(4).await;
}

async fn group_planned_before_a_shred_is_decided_again(writers: usize) {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let process_a = db.open_parallel(writers).await;
    let process_b = db.open_parallel(writers).await;
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

/// A crash between a parallel group's reservation and its commit (Guarantee 4 with parallel
/// group writers): a session reserves three positions as a group writer does and starts writing
/// an event at the first, then dies before committing. Meanwhile readers stop below the
/// reservation, and a later append, though committed, is not acknowledged. Once the dead
/// session's reservation is reaped, readers go on past it: the later append is delivered
/// right after what was read before, the reserved positions stay a gap for good, and the
/// crashed write is nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_group_that_dies_between_reservation_and_commit_leaves_a_gap() {
    use sqlx::Connection;

    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.open_parallel(4).await;
    let before = store
        .append(append(
            "before",
            ExpectedVersion::Any,
            vec![NewEvent::new("e", json!({}))],
        ))
        .await
        .unwrap();
    let mut reader_from = {
        let page = store.read_log(1, &LogFilter::default(), 10).await.unwrap();
        assert_eq!(page.events.len(), 1);
        page.next
    };

    // The dying writer: its reservation commits, its group's transaction never does.
    let mut dying = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let first = reserve_by_hand(&mut dying, 3, None, 0.0).await;
    assert_eq!(first as u64, before.last_position + 1);
    sqlx::query("BEGIN").execute(&mut dying).await.unwrap();
    sqlx::query(
        "INSERT INTO streams (name, status, version, created_at) VALUES ('crashed', 'active', 0, 0); \
         ",
    )
    .execute(&mut dying)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (position, stream, version, event_id, event_type, payload, metadata, digest, recorded_at) \
         VALUES ($1, 'crashed', 0, gen_random_uuid(), 'lost', NULL, '{}', '\\x00', 0)",
    )
    .bind(first)
    .execute(&mut dying)
    .await
    .unwrap();

    let later = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append(append(
                    "later",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("e", json!({}))],
                ))
                .await
        }
    });
    // While the dying session lives, nothing past the reservation is readable or acknowledged.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let page = store.read_log(reader_from, &LogFilter::default(), 10).await.unwrap();
        assert!(
            page.events.is_empty(),
            "read past an open reservation: {:?}",
            page.events
        );
        assert_eq!(page.next, reader_from);
        assert_eq!(store.head().await.unwrap(), before.last_position);
    }
    assert!(!later.is_finished(), "acknowledged while an older reservation was open");

    // The crash: the session ends without committing.
    db.execute(&format!(
        "SELECT pg_terminate_backend(owner_pid) FROM log_reservations WHERE first = {first}"
    ))
    .await;
    drop(dying);
    let later = tokio::time::timeout(Duration::from_secs(20), later)
        .await
        .expect("acknowledged once the dead session's reservation is reaped")
        .unwrap()
        .unwrap();
    assert_eq!(later.first_position, first as u64 + 3, "after the reserved positions");

    let page = store.read_log(reader_from, &LogFilter::default(), 10).await.unwrap();
    let seen: Vec<(u64, &str)> = page.events.iter().map(|e| (e.position, e.stream.as_str())).collect();
    assert_eq!(
        seen,
        [(later.first_position, "later")],
        "the gap is skipped, nothing else"
    );
    reader_from = page.next;
    assert_eq!(reader_from, later.first_position + 1);
    let all = store.read_log(1, &LogFilter::default(), 10).await.unwrap();
    let positions: Vec<u64> = all.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [before.first_position, later.first_position]);
    let crashed = store
        .read_stream(
            &lethe::StreamName::new("crashed").unwrap(),
            0,
            lethe::Direction::Forward,
            10,
        )
        .await;
    assert!(
        matches!(crashed, Err(lethe::Error::StreamNotFound { .. })),
        "the crashed group wrote nothing: {crashed:?}"
    );

    // The next append continues after it; the gap is never filled.
    let next = store
        .append(append(
            "next",
            ExpectedVersion::Any,
            vec![NewEvent::new("e", json!({}))],
        ))
        .await
        .unwrap();
    assert_eq!(next.first_position, later.last_position + 1);
    let all = store.read_log(1, &LogFilter::default(), 10).await.unwrap();
    assert_eq!(all.events.len(), 3);
}

/// A parallel group that fails (here a database error raised for one event type) gives its
/// reservation back before it answers, so readers are not held up until the reaper comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_failed_parallel_group_releases_its_reservation() {
    use sqlx::Connection;

    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.open_parallel(4).await;
    db.execute(
        "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
           IF NEW.event_type = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END \
         $$ LANGUAGE plpgsql; \
         CREATE TRIGGER poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .await;
    let failed = store
        .append(append(
            "p",
            ExpectedVersion::Any,
            vec![NewEvent::new("poison", json!({}))],
        ))
        .await;
    assert!(matches!(failed, Err(lethe::Error::Storage(_))), "{failed:?}");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM log_reservations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(open, 0, "the failed group's reservation is released");
    let ok = store
        .append(append("q", ExpectedVersion::Any, vec![NewEvent::new("e", json!({}))]))
        .await
        .unwrap();
    assert_eq!(store.head().await.unwrap(), ok.last_position);
    let page = store.read_log(1, &LogFilter::default(), 10).await.unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(
        page.events[0].position, ok.first_position,
        "after the failed group's gap"
    );
}

/// A reservation whose owner's session is alive but which nobody writes (a writer that hung
/// between reserving and writing) is reaped once it is older than `RESERVATION_ABANDONED_AFTER`
/// (its age is set back here rather than waited for): readers and acknowledgements go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_an_abandoned_reservation_of_a_live_session_is_reaped() {
    use sqlx::Connection;

    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.open_parallel(4).await;
    let mut hung = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let abandoned_for = lethe::limits::RESERVATION_ABANDONED_AFTER.as_secs_f64() + 1.0;
    let first = reserve_by_hand(&mut hung, 2, None, abandoned_for).await;
    let appended = append_once_reaped(&store, "the abandoned reservation").await;
    assert_eq!(appended.first_position, first as u64 + 2);
    let page = store.read_log(1, &LogFilter::default(), 10).await.unwrap();
    let positions: Vec<u64> = page.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [appended.first_position]);
    // The session that made it is still there, and still holds nothing.
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM log_reservations")
        .fetch_one(&mut hung)
        .await
        .unwrap();
    assert_eq!(open, 0);
}

/// The backend of a parallel store's reservation owner connection (`lethe-reservation-owner`).
async fn owner_pid(conn: &mut sqlx::PgConnection) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE application_name = 'lethe-reservation-owner' AND datname = current_database()",
    )
    .fetch_optional(conn)
    .await
    .unwrap()
}

/// A reservation its own (live) process lost track of — its reply lost after it committed,
/// its release failed — is reaped after a second, not after the minute a hung writer gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_stray_reservation_of_a_live_process_is_reaped() {
    use sqlx::Connection;

    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.open_parallel(4).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let owner = owner_pid(&mut conn).await.expect("the store's owner connection");
    let first = reserve_by_hand(&mut conn, 2, Some(owner), 2.0).await;
    let appended = append_once_reaped(&store, "the stray reservation").await;
    assert_eq!(appended.first_position, first as u64 + 2);
    let page = store.read_log(1, &LogFilter::default(), 10).await.unwrap();
    assert_eq!(page.events.len(), 1);
}

/// When the owner connection is lost (here terminated), the store opens a new one and goes on
/// appending; its new reservations name the new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_lost_reservation_owner_connection_is_opened_again() {
    use sqlx::Connection;

    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.open_parallel(4).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let before = owner_pid(&mut conn).await.expect("the store's owner connection");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(before)
        .execute(&mut conn)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        if let Some(pid) = owner_pid(&mut conn).await.filter(|pid| *pid != before) {
            break pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new owner connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(after, before);
    for i in 0..20 {
        store
            .append(append(
                &format!("s-{i}"),
                ExpectedVersion::Any,
                vec![NewEvent::new("e", json!({}))],
            ))
            .await
            .unwrap();
    }
    let page = store.read_log(1, &LogFilter::default(), 100).await.unwrap();
    assert_eq!(page.events.len(), 20);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM log_reservations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(open, 0);
}

/// Reserves `count` positions as a parallel group writer does, by hand: owned by `owner` (this
/// session if `None`), made `age_secs` ago. Returns the first position.
async fn reserve_by_hand(conn: &mut sqlx::PgConnection, count: i64, owner: Option<i32>, age_secs: f64) -> i64 {
    sqlx::query_scalar(
        "WITH h AS (UPDATE log_head SET position = position + $1, generation = generation + 1 \
           WHERE id = 1 RETURNING position) \
         INSERT INTO log_reservations (first, last, owner_pid, reserved_at) \
         SELECT position - $1 + 1, position, COALESCE($2, pg_backend_pid()), now() - make_interval(secs => $3) \
         FROM h RETURNING first",
    )
    .bind(count)
    .bind(owner)
    .bind(age_secs)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Appends one event and waits for its acknowledgement, which comes once `what` (an open
/// reservation below it) is reaped.
async fn append_once_reaped(store: &EventStore, what: &str) -> lethe::AppendResult {
    tokio::time::timeout(
        Duration::from_secs(20),
        store.append(append(
            "after",
            ExpectedVersion::Any,
            vec![NewEvent::new("e", json!({}))],
        )),
    )
    .await
    .unwrap_or_else(|_| panic!("not acknowledged: {what} was not reaped"))
    .unwrap()
}
