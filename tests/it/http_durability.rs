//! Durability over HTTP (Guarantee 5): the real `lethe` binary killed with SIGKILL under load
//! (then stopped with SIGTERM under load), and an in-process server stopped gracefully under
//! load. Either way, every append that was
//! acknowledged with a 2xx is stored exactly once after a restart, and no batch is partial.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend_tests;
use crate::http_support::{ADMIN_TOKEN, Server};
use crate::load_support::{Lethe, Load, read_log, start_load, verify, wait_for_acks};
use crate::support::TestDb;

backend_tests!(
    http_acknowledged_appends_survive_kill_9,
    http_graceful_stop_keeps_every_acknowledged_append,
);

async fn http_acknowledged_appends_survive_kill_9(db: TestDb) {
    acknowledged_appends_survive_kill_9(db, &[]).await;
}

/// The same with parallel group writers: the process is killed while groups hold reservations
/// and are writing; the restarted process reaps them (their positions stay a gap) and every
/// acknowledged append is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_parallel_writers_acknowledged_appends_survive_kill_9() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    acknowledged_appends_survive_kill_9(db, &[("LETHE_PG_GROUP_WRITERS", "4".to_owned())]).await;
}

async fn acknowledged_appends_survive_kill_9(db: TestDb, env: &[(&str, String)]) {
    let parallel = !env.is_empty();
    let data_dir = db.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut lethe = Lethe::start_with(&db, &data_dir, env).await;

    let load = Arc::new(Load::default());
    let workers = start_load(lethe.base.clone(), ADMIN_TOKEN.to_owned(), 9, load.clone());
    wait_for_acks(&load, 3_000).await;
    // Mid-load: requests are in flight on every worker.
    lethe.kill_9();
    load.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let refusals = load.refusals.lock().unwrap().clone();
    assert!(refusals.is_empty(), "appends refused under load: {refusals:?}");
    let acks = load.acks.lock().unwrap().clone();

    let restarted = Lethe::start_with(&db, &data_dir, env).await;
    let log = read_log(&restarted.base, ADMIN_TOKEN).await;
    verify(&log, &acks);
    let acked: HashSet<Uuid> = acks
        .iter()
        .flat_map(|a| a.sent.iter().flat_map(|(_, ids)| ids.iter().copied()))
        .collect();
    assert!(acked.len() >= 3_000);
    assert!(log.len() >= acked.len());

    // The restarted server goes on where the log ends.
    let head = log.last().unwrap()["position"].as_u64().unwrap();
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/streams/after-restart", restarted.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"events": [{"type": "X", "data": {}}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_position = answer["first_position"].as_u64().unwrap();
    if parallel {
        // Groups killed after reserving leave their positions unused.
        assert!(first_position > head, "{answer}");
    } else {
        assert_eq!(first_position, head + 1, "{answer}");
    }

    // SIGTERM under load: a graceful shutdown that exits cleanly and loses nothing acknowledged.
    let mut restarted = restarted;
    let load = Arc::new(Load::default());
    let workers = start_load(restarted.base.clone(), ADMIN_TOKEN.to_owned(), 9, load.clone());
    wait_for_acks(&load, 500).await;
    let status = restarted.terminate().await;
    assert!(status.success(), "exit on SIGTERM: {status}: {}", restarted.output());
    load.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let refusals = load.refusals.lock().unwrap().clone();
    assert!(
        refusals.iter().all(|r| r.contains("shutting_down")),
        "appends refused during shutdown: {refusals:?}"
    );
    let mut all_acks = acks;
    all_acks.extend(load.acks.lock().unwrap().iter().cloned());
    let again = Lethe::start_with(&db, &data_dir, env).await;
    let log = read_log(&again.base, ADMIN_TOKEN).await;
    verify(&log, &all_acks);
}

async fn http_graceful_stop_keeps_every_acknowledged_append(db: TestDb) {
    let server = Server::start(&db).await;
    let load = Arc::new(Load::default());
    let workers = start_load(server.base.clone(), server.writer.clone(), 9, load.clone());
    wait_for_acks(&load, 500).await;
    // Stop while appends are in flight; the workers keep sending until the server is gone.
    server.stop().await;
    load.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let refusals = load.refusals.lock().unwrap().clone();
    // A request that reached the store while it was closing may be refused; never a 5xx other
    // than `shutting_down`.
    assert!(
        refusals.iter().all(|r| r.contains("shutting_down")),
        "appends refused during shutdown: {refusals:?}"
    );
    let acks = load.acks.lock().unwrap().clone();

    let restarted = Server::start(&db).await;
    let log = restarted.log().await;
    verify(&log, &acks);
    let acked: usize = acks.iter().flat_map(|a| a.sent.iter().map(|(_, ids)| ids.len())).sum();
    // In-flight appends were finished *and answered*: the log holds nothing unacknowledged.
    assert_eq!(log.len(), acked, "events stored without an answer to their client");
    restarted.stop().await;
}
