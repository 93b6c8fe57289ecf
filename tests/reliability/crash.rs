//! Crash safety: the real `lethe serve` killed with SIGKILL at a random moment, cycle after
//! cycle, while clients append (single events, 25-event batches, two-stream appends) and
//! subjects are being forgotten. After each restart: every acknowledged event is present
//! exactly once where its answer said, no batch is partial, every erasure request that was
//! sent reaches `awaiting_acknowledgements` (an erasure-dependent consumer is registered) with
//! its tombstone written, and no shredded stream yields data — not by stream read, not in the
//! log — nor takes new events. At the end the dependent acknowledges the head, and every
//! request is `completed`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::harness::{
    Forgets, assert_append_refused, assert_shredded, call, client, pick, random_between, read_stream, report, serial,
    start_forgets, wait_erasures_completed, wait_erasures_in,
};
use crate::http_support::ADMIN_TOKEN;
use crate::load_support::{Ack, Lethe, Load, read_log, start_load, verify, wait_for_acks};
use crate::support::TestDb;

backend_tests!(lethe_killed_at_random_moments_loses_nothing_acknowledged);

async fn lethe_killed_at_random_moments_loses_nothing_acknowledged(db: TestDb) {
    killed_at_random_moments(db, &[]).await;
}

/// The same with parallel group writers: kills land between reservations and commits too, and
/// each restarted process reaps what the dead one reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_parallel_writers_killed_at_random_moments_lose_nothing_acknowledged() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    killed_at_random_moments(db, &[("LETHE_PG_GROUP_WRITERS", "4".to_owned())]).await;
}

async fn killed_at_random_moments(db: TestDb, env: &[(&str, String)]) {
    let _serial = serial().await;
    let cycles = pick(5, 20);
    let data_dir = db.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut lethe = Lethe::start_with(&db, &data_dir, env).await;
    // A dependent service: every erasure waits for its acknowledgement.
    let dependent = call(
        &client(),
        Method::PUT,
        &format!("{}/consumers/dependent", lethe.base),
        ADMIN_TOKEN,
        Some(&json!({"erasure_dependent": true})),
    )
    .await;
    assert_eq!(dependent.as_ref().map(|d| d.0), Some(200), "{dependent:?}");
    let mut all_sent: Vec<String> = Vec::new();
    let mut acks: Vec<Ack> = Vec::new();
    let mut shredded: HashSet<String> = HashSet::new();
    let mut forgotten = 0;

    for cycle in 0..cycles {
        let load = Arc::new(Load::default());
        let forgets = Arc::new(Forgets::default());
        let mut workers = start_load(lethe.base.clone(), ADMIN_TOKEN.to_owned(), 6, load.clone());
        workers.extend(start_forgets(
            &lethe.base,
            &format!("{cycle}"),
            2,
            load.clone(),
            forgets.clone(),
        ));
        // A random moment once the load is going: requests (and erasure steps) are in flight.
        wait_for_acks(&load, 50).await;
        tokio::time::sleep(random_between(Duration::ZERO, Duration::from_millis(1500))).await;
        lethe.kill_9();
        load.stop.store(true, Ordering::SeqCst);
        for worker in workers {
            worker.await.unwrap();
        }
        let refusals = load.refusals.lock().unwrap().clone();
        assert!(refusals.is_empty(), "cycle {cycle}: appends refused: {refusals:?}");
        let refusals = forgets.refusals.lock().unwrap().clone();
        assert!(refusals.is_empty(), "cycle {cycle}: refused: {refusals:?}");
        acks.extend(load.acks.lock().unwrap().iter().cloned());

        lethe = Lethe::start_with(&db, &data_dir, env).await;
        let base = lethe.base.clone();

        // Every forget that was sent gets as far as it can without the dependent (resumed at
        // start): keys destroyed, tombstones written; each answered one is there.
        let sent = forgets.sent.lock().unwrap().clone();
        all_sent.extend(sent.iter().cloned());
        let erasures = wait_erasures_in(&base, ADMIN_TOKEN, &sent, "awaiting_acknowledgements").await;
        for erasure in &erasures {
            let tombstone = erasure["tombstone_position"].as_u64();
            assert!(tombstone.is_some() || erasure["already_erased"] == true, "{erasure}");
        }
        let ids: HashSet<&str> = erasures.iter().filter_map(|e| e["request_id"].as_str()).collect();
        let answered = forgets.answered.lock().unwrap().clone();
        for (subject, stream, id) in &answered {
            assert!(ids.contains(id.as_str()), "answered forget {id} of {subject} is lost");
            shredded.insert(stream.clone());
        }
        for erasure in &erasures {
            for stream in erasure["streams"].as_array().unwrap() {
                shredded.insert(stream.as_str().unwrap().to_owned());
            }
        }
        forgotten += answered.len();

        // Nothing acknowledged is lost or doubled, no batch is partial; shredded streams
        // yield no data in the log nor by stream read, and take no new events.
        let log: Vec<Value> = read_log(&base, ADMIN_TOKEN).await;
        verify(&log, &acks);
        for event in &log {
            let stream = event["stream"].as_str().unwrap();
            if shredded.contains(stream) && event["type"] != "$erased" {
                assert!(event["data"].is_null() && event["erased"] == true, "{event}");
            }
        }
        for (_, stream, _) in &answered {
            let (status, read) = read_stream(&base, ADMIN_TOKEN, stream).await;
            assert_eq!(status, 200, "{read}");
            assert_shredded(stream, &read);
        }
        if let Some((_, stream, _)) = answered.first() {
            assert_append_refused(&base, ADMIN_TOKEN, stream).await;
        }
    }

    // The dependent acknowledges everything: every request completes.
    // The last event's position (with parallel group writers positions may have gaps).
    let head = read_log(&lethe.base, ADMIN_TOKEN)
        .await
        .last()
        .and_then(|e| e["position"].as_u64())
        .unwrap_or(0);
    let ack = call(
        &client(),
        Method::POST,
        &format!("{}/consumers/dependent/ack", lethe.base),
        ADMIN_TOKEN,
        Some(&json!({"position": head})),
    )
    .await;
    assert!(matches!(ack, Some((200..=299, _, _))), "{ack:?}");
    wait_erasures_completed(&lethe.base, ADMIN_TOKEN, &all_sent).await;

    let acked: usize = acks.iter().flat_map(|a| a.sent.iter().map(|(_, ids)| ids.len())).sum();
    report(&format!(
        "crash ({:?}): {cycles} SIGKILL cycles, {acked} acknowledged events kept, {forgotten} forgets answered \
         (every request sent waited in awaiting_acknowledgements, then completed on the dependent's ack)",
        db.engine
    ));
    lethe.kill_9();
}
