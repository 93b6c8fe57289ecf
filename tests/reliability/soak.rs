//! Concurrency soak: two `lethe serve` processes on one PostgreSQL database (and one vault
//! database), 16 writers on each — read-then-append with an expected version on eight shared
//! counter streams, and 25-event batches with `any` — plus subjects bound and forgotten, for a
//! bounded time, while three subscribers tail the log: Server-Sent Events (`/subscribe`) on one
//! process, a durable consumer's long poll (`/consumers/{name}/events` + ack) on the other, and
//! the library's `EventStore::subscribe` in this process (a third store on the same database).
//!
//! Afterwards: each subscriber saw every committed event exactly once, in position order (the
//! log's positions, which have no gaps); every acknowledged append is in the log once; no lost
//! update — each counter stream's version equals the number of appends to it that succeeded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lethe::LogFilter;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::harness::{
    Forgets, call, client, pick, random_below, report, serial, start_forgets, wait_erasures_completed,
};
use crate::http_support::{ADMIN_TOKEN, SseReader};
use crate::load_support::{Ack, Lethe, Load, batch_events, read_log, verify};
use crate::support::TestDb;

const COUNTERS: u64 = 8;
const WRITERS_PER_PROCESS: usize = 16;

/// What the writers did.
#[derive(Default)]
struct Writes {
    /// Successful appends per counter stream (besides its first event).
    successes: Mutex<HashMap<String, u64>>,
    conflicts: AtomicUsize,
    violations: Mutex<Vec<String>>,
}

fn start_writers(base: &str, process: usize, load: Arc<Load>, writes: Arc<Writes>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS_PER_PROCESS)
        .map(|w| {
            let (base, load, writes) = (base.to_owned(), load.clone(), writes.clone());
            tokio::spawn(async move {
                let client = client();
                while !load.stop.load(Ordering::SeqCst) {
                    if w % 4 == 3 {
                        // A batch with `any`.
                        let stream = format!("batch-{process}-{w}");
                        let ids: Vec<Uuid> = (0..25).map(|_| Uuid::new_v4()).collect();
                        let body = json!({"expected_version": "any", "events": batch_events(&ids, Uuid::new_v4(), 25)});
                        let url = format!("{base}/streams/{stream}");
                        match call(&client, Method::POST, &url, ADMIN_TOKEN, Some(&body)).await {
                            Some((201, _, answer)) => load.acks.lock().unwrap().push(Ack {
                                sent: vec![(stream, ids)],
                                results: vec![answer],
                            }),
                            other => writes.violations.lock().unwrap().push(format!("{stream}: {other:?}")),
                        }
                        continue;
                    }
                    // Read the counter's version, append with it expected.
                    let stream = format!("ctr-{}", random_below(COUNTERS));
                    let url = format!("{base}/streams/{stream}");
                    let read = call(
                        &client,
                        Method::GET,
                        &format!("{url}?direction=backward&limit=1"),
                        ADMIN_TOKEN,
                        None,
                    )
                    .await;
                    let Some((200, _, read)) = read else {
                        writes
                            .violations
                            .lock()
                            .unwrap()
                            .push(format!("read {stream}: {read:?}"));
                        continue;
                    };
                    let version = read["version"].as_u64().expect("version");
                    let ids = vec![Uuid::new_v4()];
                    let body = json!({"expected_version": version, "events": batch_events(&ids, Uuid::new_v4(), 1)});
                    match call(&client, Method::POST, &url, ADMIN_TOKEN, Some(&body)).await {
                        Some((201, _, answer)) => {
                            assert_eq!(answer["first_version"], version + 1, "{answer}");
                            *writes.successes.lock().unwrap().entry(stream.clone()).or_default() += 1;
                            load.acks.lock().unwrap().push(Ack {
                                sent: vec![(stream, ids)],
                                results: vec![answer],
                            });
                        }
                        Some((409, _, answer)) if answer["code"] == "wrong_expected_version" => {
                            assert!(answer["current_version"].as_u64().unwrap() > version, "{answer}");
                            writes.conflicts.fetch_add(1, Ordering::SeqCst);
                        }
                        other => writes.violations.lock().unwrap().push(format!("{stream}: {other:?}")),
                    }
                }
            })
        })
        .collect()
}

/// Positions a subscriber has seen, in the order it saw them.
#[derive(Default)]
struct Seen {
    positions: Mutex<Vec<u64>>,
    errors: Mutex<Vec<String>>,
}

impl Seen {
    fn last(&self) -> u64 {
        self.positions.lock().unwrap().last().copied().unwrap_or(0)
    }
}

/// SSE from position 1 until `stop`.
fn sse_subscriber(base: &str, seen: Arc<Seen>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let base = base.to_owned();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let response = client
            .get(format!("{base}/subscribe?from=1"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("subscribe");
        let mut sse = SseReader::new(response);
        while !stop.load(Ordering::SeqCst) {
            let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), sse.next(Duration::from_secs(60))).await
            else {
                continue;
            };
            let Some(frame) = frame else {
                seen.errors.lock().unwrap().push("SSE stream ended".into());
                return;
            };
            if frame.data.is_none() {
                continue;
            }
            let event = frame.json();
            let position = event["position"].as_u64().expect("position");
            assert_eq!(frame.id.as_deref(), Some(position.to_string().as_str()));
            seen.positions.lock().unwrap().push(position);
        }
    })
}

/// A durable consumer's long poll, acking each page, until `stop`.
fn consumer_subscriber(base: &str, seen: Arc<Seen>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let base = base.to_owned();
    tokio::spawn(async move {
        let client = client();
        let url = format!("{base}/consumers/soak");
        let put = call(
            &client,
            Method::PUT,
            &url,
            ADMIN_TOKEN,
            Some(&json!({"erasure_dependent": false})),
        )
        .await;
        assert_eq!(put.as_ref().map(|p| p.0), Some(200), "{put:?}");
        while !stop.load(Ordering::SeqCst) {
            let page = call(
                &client,
                Method::GET,
                &format!("{url}/events?limit=1000&wait_ms=200"),
                ADMIN_TOKEN,
                None,
            )
            .await;
            let Some((200, _, page)) = page else {
                seen.errors.lock().unwrap().push(format!("consumer events: {page:?}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let events = page["events"].as_array().expect("events");
            let Some(last) = events.last() else { continue };
            let last = last["position"].as_u64().unwrap();
            seen.positions
                .lock()
                .unwrap()
                .extend(events.iter().map(|e| e["position"].as_u64().unwrap()));
            let ack = call(
                &client,
                Method::POST,
                &format!("{url}/ack"),
                ADMIN_TOKEN,
                Some(&json!({"position": last})),
            )
            .await;
            if !matches!(ack, Some((200..=299, _, _))) {
                seen.errors.lock().unwrap().push(format!("ack: {ack:?}"));
            }
        }
    })
}

/// `EventStore::subscribe` on a store of this process, resubscribing after an error.
fn library_subscriber(store: lethe::EventStore, seen: Arc<Seen>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let mut events = Box::pin(store.subscribe(seen.last() + 1, LogFilter::default()));
            while !stop.load(Ordering::SeqCst) {
                match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
                    Err(_) => continue,
                    Ok(Some(Ok(event))) => seen.positions.lock().unwrap().push(event.position),
                    Ok(Some(Err(e))) => {
                        seen.errors.lock().unwrap().push(format!("subscribe: {e}"));
                        break;
                    }
                    Ok(None) => {
                        seen.errors.lock().unwrap().push("subscription ended".into());
                        break;
                    }
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_concurrent_writers_and_three_subscribers() {
    let _serial = serial().await;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let kek = db.dir.path().join("kek.key");
    lethe_keyvault::Kek::load_or_create(&kek).expect("KEK");
    let env = [("LETHE_KEK_FILE", kek.display().to_string())];
    let mut processes = Vec::new();
    for p in 0..2 {
        let dir = db.dir.path().join(format!("data-{p}"));
        std::fs::create_dir_all(&dir).unwrap();
        processes.push(Lethe::start_with(&db, &dir, &env).await);
    }
    let (a, b) = (processes[0].base.clone(), processes[1].base.clone());
    let library = db.open().await;

    // The counters exist (version 0) before the writers start.
    let load = Arc::new(Load::default());
    for k in 0..COUNTERS {
        let stream = format!("ctr-{k}");
        let ids = vec![Uuid::new_v4()];
        let body = json!({"expected_version": "no_stream", "events": batch_events(&ids, Uuid::new_v4(), 1)});
        let answer = call(
            &client(),
            Method::POST,
            &format!("{a}/streams/{stream}"),
            ADMIN_TOKEN,
            Some(&body),
        )
        .await;
        let Some((201, _, answer)) = answer else {
            panic!("{answer:?}")
        };
        load.acks.lock().unwrap().push(Ack {
            sent: vec![(stream, ids)],
            results: vec![answer],
        });
    }

    let stop_subscribers = Arc::new(AtomicBool::new(false));
    let (sse, consumer, lib) = (
        Arc::new(Seen::default()),
        Arc::new(Seen::default()),
        Arc::new(Seen::default()),
    );
    let subscribers = vec![
        sse_subscriber(&a, sse.clone(), stop_subscribers.clone()),
        consumer_subscriber(&b, consumer.clone(), stop_subscribers.clone()),
        library_subscriber(library.clone(), lib.clone(), stop_subscribers.clone()),
    ];

    let writes = Arc::new(Writes::default());
    let forgets = Arc::new(Forgets::default());
    let mut workers = Vec::new();
    for (p, base) in [&a, &b].into_iter().enumerate() {
        workers.extend(start_writers(base, p, load.clone(), writes.clone()));
        workers.extend(start_forgets(
            base,
            &format!("soak{p}"),
            1,
            load.clone(),
            forgets.clone(),
        ));
    }
    let duration = pick(Duration::from_secs(10), Duration::from_secs(90));
    tokio::time::sleep(duration).await;
    load.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let violations = writes.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let refusals = forgets.refusals.lock().unwrap().clone();
    assert!(refusals.is_empty(), "{refusals:#?}");
    let sent = forgets.sent.lock().unwrap().clone();
    wait_erasures_completed(&a, ADMIN_TOKEN, &sent).await;

    // The log as it stands, read through process B; every subscriber catches up to its head.
    let log = read_log(&b, ADMIN_TOKEN).await;
    let acks = load.acks.lock().unwrap().clone();
    verify(&log, &acks);
    let positions: Vec<u64> = log.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    let head = *positions.last().unwrap();
    if db.gapless() {
        assert_eq!(positions, (1..=head).collect::<Vec<_>>(), "the log has gaps");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (name, seen) in [("sse", &sse), ("consumer", &consumer), ("library", &lib)] {
        while seen.last() < head {
            assert!(
                Instant::now() < deadline,
                "{name} subscriber at {} of {head}; errors {:?}",
                seen.last(),
                seen.errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop_subscribers.store(true, Ordering::SeqCst);
    for s in subscribers {
        s.await.unwrap();
    }
    for (name, seen) in [("sse", &sse), ("consumer", &consumer), ("library", &lib)] {
        let errors = seen.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "{name} subscriber: {errors:?}");
        let got = seen.positions.lock().unwrap().clone();
        assert_eq!(got.len(), positions.len(), "{name}: events seen vs. committed");
        assert!(
            got == positions,
            "{name} subscriber did not see every event exactly once, in order"
        );
    }

    // No lost update: each counter's version is the number of successful appends to it.
    let successes = writes.successes.lock().unwrap().clone();
    for k in 0..COUNTERS {
        let stream = format!("ctr-{k}");
        let read = call(
            &client(),
            Method::GET,
            &format!("{a}/streams/{stream}?limit=1"),
            ADMIN_TOKEN,
            None,
        )
        .await;
        let Some((200, _, read)) = read else { panic!("{read:?}") };
        assert_eq!(
            read["version"].as_u64().unwrap(),
            successes.get(&stream).copied().unwrap_or(0),
            "{stream}: a lost update"
        );
    }
    let appended: u64 = successes.values().sum();
    report(&format!(
        "soak: {duration:?}, 2 processes x {WRITERS_PER_PROCESS} writers, {head} events, {appended} counter appends \
         won, {} lost to conflicts, {} forgets; SSE, consumer and library subscribers each saw all {head} once in order",
        writes.conflicts.load(Ordering::SeqCst),
        sent.len()
    ));
    library.close().await;
    for mut p in processes {
        p.kill_9();
    }
}
