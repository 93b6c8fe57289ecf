//! Durability over HTTP (Guarantee 5): the real `lethe` binary killed with SIGKILL under load
//! (then stopped with SIGTERM under load), and an in-process server stopped gracefully under
//! load. Either way, every append that was
//! acknowledged with a 2xx is stored exactly once after a restart, and no batch is partial.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend_tests;
use crate::http_support::{ADMIN_TOKEN, Server};
use crate::support::TestDb;

backend_tests!(
    http_acknowledged_appends_survive_kill_9,
    http_graceful_stop_keeps_every_acknowledged_append,
);

/// One acknowledged append: what was sent and what the server answered.
#[derive(Debug, Clone)]
struct Ack {
    /// `(stream, event ids in order)` for each stream of the append.
    sent: Vec<(String, Vec<Uuid>)>,
    /// The answer's `{stream, first_version, last_version, first_position, last_position}`s.
    results: Vec<Value>,
}

/// What the load generator saw.
#[derive(Default)]
struct Load {
    acks: Mutex<Vec<Ack>>,
    /// Answers that were neither 2xx nor a transport error (there should be none).
    refusals: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// Events of one batch carry `{"batch": <uuid>, "size": n}` as metadata, so that a partial batch
/// can be recognised in the log even if it was never acknowledged.
fn batch_events(ids: &[Uuid], batch: Uuid, size: usize) -> Value {
    Value::Array(
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                json!({"id": id, "type": "Load", "data": {"i": i, "pad": "x".repeat(64)},
                       "metadata": {"batch": batch, "size": size}})
            })
            .collect(),
    )
}

/// Appends as fast as it can from `workers` tasks until told to stop or a request fails at the
/// transport level (the server is gone). Worker kinds: single events, 25-event batches, and
/// two-stream appends of 5 + 5 events.
fn start_load(base: String, token: String, workers: usize, load: Arc<Load>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let base = base.clone();
            let token = token.clone();
            let load = load.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                while !load.stop.load(Ordering::SeqCst) {
                    let batch = Uuid::new_v4();
                    let (url, body, sent) = match w % 3 {
                        0 => {
                            let stream = format!("single-{w}");
                            let ids = vec![Uuid::new_v4()];
                            let body = json!({"expected_version": "any", "events": batch_events(&ids, batch, 1)});
                            (format!("{base}/streams/{stream}"), body, vec![(stream, ids)])
                        }
                        1 => {
                            let stream = format!("batch-{w}");
                            let ids: Vec<Uuid> = (0..25).map(|_| Uuid::new_v4()).collect();
                            let body = json!({"expected_version": "any", "events": batch_events(&ids, batch, 25)});
                            (format!("{base}/streams/{stream}"), body, vec![(stream, ids)])
                        }
                        _ => {
                            let (a, b) = (format!("multi-a-{w}"), format!("multi-b-{w}"));
                            let ids_a: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
                            let ids_b: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
                            let body = json!({"appends": [
                                {"stream": a, "expected_version": "any", "events": batch_events(&ids_a, batch, 10)},
                                {"stream": b, "expected_version": "any", "events": batch_events(&ids_b, batch, 10)},
                            ]});
                            (format!("{base}/streams"), body, vec![(a, ids_a), (b, ids_b)])
                        }
                    };
                    let response = match client.post(url).bearer_auth(&token).json(&body).send().await {
                        Ok(r) => r,
                        Err(_) => return, // the server is gone
                    };
                    let status = response.status();
                    let Ok(answer) = response.json::<Value>().await else {
                        return; // cut off mid-answer: not acknowledged
                    };
                    if status.is_success() {
                        let results = match answer.get("appends") {
                            Some(list) => list.as_array().unwrap().clone(),
                            None => vec![answer],
                        };
                        load.acks.lock().unwrap().push(Ack { sent, results });
                    } else {
                        load.refusals.lock().unwrap().push(format!("{status} {answer}"));
                        return;
                    }
                }
            })
        })
        .collect()
}

/// Waits until at least `events` events were acknowledged.
async fn wait_for_acks(load: &Load, events: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let acked: usize = load
            .acks
            .lock()
            .unwrap()
            .iter()
            .flat_map(|a| a.sent.iter().map(|(_, ids)| ids.len()))
            .sum();
        if acked >= events {
            return;
        }
        assert!(Instant::now() < deadline, "only {acked} events acknowledged in 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every acknowledged event is in the log exactly once, where its answer said; no event is
/// stored twice; every batch in the log is whole and contiguous; streams have no gaps.
fn verify(log: &[Value], acks: &[Ack]) {
    let mut by_id: HashMap<Uuid, &Value> = HashMap::new();
    for event in log {
        let id: Uuid = serde_json::from_value(event["id"].clone()).unwrap();
        assert!(by_id.insert(id, event).is_none(), "event {id} stored twice");
    }
    let positions: Vec<u64> = log.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "log out of order");

    for ack in acks {
        for ((stream, ids), result) in ack.sent.iter().zip(&ack.results) {
            assert_eq!(result["stream"], stream.as_str());
            let first_version = result["first_version"].as_u64().unwrap();
            let first_position = result["first_position"].as_u64().unwrap();
            assert_eq!(
                result["last_position"].as_u64().unwrap(),
                first_position + ids.len() as u64 - 1
            );
            for (i, id) in ids.iter().enumerate() {
                let stored = by_id
                    .get(id)
                    .unwrap_or_else(|| panic!("acknowledged event {id} of {stream} is lost"));
                assert_eq!(stored["stream"], stream.as_str());
                assert_eq!(stored["version"], first_version + i as u64);
                assert_eq!(stored["position"], first_position + i as u64);
                assert_eq!(stored["data"]["i"], i);
            }
        }
    }

    // Batches, acknowledged or not: all or nothing, contiguous positions.
    let mut batches: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut sizes: HashMap<String, u64> = HashMap::new();
    for event in log.iter().filter(|e| e["type"] == "Load") {
        let batch = event["metadata"]["batch"].as_str().unwrap().to_owned();
        sizes.insert(batch.clone(), event["metadata"]["size"].as_u64().unwrap());
        batches
            .entry(batch)
            .or_default()
            .push(event["position"].as_u64().unwrap());
    }
    for (batch, positions) in &batches {
        assert_eq!(
            positions.len() as u64,
            sizes[batch],
            "batch {batch} is partial: {positions:?}"
        );
        assert!(
            positions.windows(2).all(|w| w[1] == w[0] + 1),
            "batch {batch} is not contiguous: {positions:?}"
        );
    }
    // Streams: versions 0..n without a gap.
    let mut versions: HashMap<&str, Vec<u64>> = HashMap::new();
    for event in log {
        versions
            .entry(event["stream"].as_str().unwrap())
            .or_default()
            .push(event["version"].as_u64().unwrap());
    }
    for (stream, v) in versions {
        assert_eq!(v, (0..v.len() as u64).collect::<Vec<_>>(), "versions of {stream}");
    }
}

/// Every event of the log, through HTTP.
async fn read_log(base: &str, token: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let mut from = 1u64;
    loop {
        let page: Value = client
            .get(format!("{base}/log?from={from}&limit=1000"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        let done = events.is_empty();
        out.extend(events.iter().cloned());
        from = page["next"].as_u64().unwrap();
        if done || from > page["head"].as_u64().unwrap() {
            return out;
        }
    }
}

/// The real binary, killed (SIGKILL) when dropped.
struct Lethe {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Lethe {
    async fn start(db: &TestDb, data_dir: &Path) -> Lethe {
        // A free port: bind to port 0, note the port, let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = data_dir.join("lethe.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lethe"))
            .arg("serve")
            .env("LETHE_DATA_DIR", data_dir)
            .env("LETHE_LISTEN", format!("127.0.0.1:{port}"))
            .env("LETHE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("LETHE_DATABASE_URL", &db.url)
            .env("LETHE_KEYVAULT_URL", &db.vault_url)
            .env("LETHE_LOG", "warn")
            .env_remove("LETHE_KEK")
            .env_remove("LETHE_KEK_FILE")
            .env_remove("LETHE_KEYVAULT_TOKEN")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn lethe");
        let mut lethe = Lethe {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        lethe.wait_ready().await;
        lethe
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("lethe exited with {status}: {}", self.output());
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "lethe not ready in 60 s: {}", self.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (graceful shutdown); waits for the exit and returns whether it was clean.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "lethe did not exit on SIGTERM: {}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and reap it.
    fn kill_9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for Lethe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_acknowledged_appends_survive_kill_9(db: TestDb) {
    let data_dir = db.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut lethe = Lethe::start(&db, &data_dir).await;

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

    let restarted = Lethe::start(&db, &data_dir).await;
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
    assert_eq!(answer["first_position"], head + 1, "{answer}");

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
    let again = Lethe::start(&db, &data_dir).await;
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
