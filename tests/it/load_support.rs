//! Load and crash harness shared by `http_durability.rs` and the `reliability` test binary
//! (`tests/reliability/`, which includes this file with `#[path]`): the real `lethe` binary as a
//! child process, a load generator of single, batched and two-stream appends, and the checks
//! that every acknowledged append is stored exactly once and no batch is partial.

// Each binary uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::http_support::ADMIN_TOKEN;
use crate::support::TestDb;

/// One acknowledged append: what was sent and what the server answered.
#[derive(Debug, Clone)]
pub struct Ack {
    /// `(stream, event ids in order)` for each stream of the append.
    pub sent: Vec<(String, Vec<Uuid>)>,
    /// The answer's `{stream, first_version, last_version, first_position, last_position}`s.
    pub results: Vec<Value>,
}

/// What the load generator saw.
#[derive(Default)]
pub struct Load {
    pub acks: Mutex<Vec<Ack>>,
    /// Answers that were neither 2xx nor a transport error. A strict load stops its worker at
    /// the first; a tolerant one ([`Load::tolerant`]) records it and goes on.
    pub refusals: Mutex<Vec<String>>,
    /// Requests that failed at the transport level (tolerant load only).
    pub transport_errors: std::sync::atomic::AtomicUsize,
    pub stop: AtomicBool,
    tolerant: bool,
}

impl Load {
    /// A load that keeps going through refusals and transport errors (a database or vault
    /// restart), recording each, pausing briefly after each.
    pub fn tolerant() -> Load {
        Load {
            tolerant: true,
            ..Load::default()
        }
    }

    /// Events acknowledged so far.
    pub fn acked_events(&self) -> usize {
        self.acks
            .lock()
            .unwrap()
            .iter()
            .flat_map(|a| a.sent.iter().map(|(_, ids)| ids.len()))
            .sum()
    }
}

/// Events of one batch carry `{"batch": <uuid>, "size": n}` as metadata, so that a partial batch
/// can be recognised in the log even if it was never acknowledged.
pub fn batch_events(ids: &[Uuid], batch: Uuid, size: usize) -> Value {
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
/// two-stream appends of 5 + 5 events. Stream names carry `prefix`, so that loads against one
/// database from several runs or processes do not share streams.
pub fn start_load(base: String, token: String, workers: usize, load: Arc<Load>) -> Vec<tokio::task::JoinHandle<()>> {
    start_load_named(base, token, workers, load, "")
}

pub fn start_load_named(
    base: String,
    token: String,
    workers: usize,
    load: Arc<Load>,
    prefix: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let base = base.clone();
            let token = token.clone();
            let load = load.clone();
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                // A tolerant load waits longer than the server's 30 s request timeout, so that
                // it sees the server's answer rather than its own timeout.
                let timeout = Duration::from_secs(if load.tolerant { 90 } else { 30 });
                let client = reqwest::Client::builder().timeout(timeout).build().unwrap();
                while !load.stop.load(Ordering::SeqCst) {
                    let batch = Uuid::new_v4();
                    let (url, body, sent) = match w % 3 {
                        0 => {
                            let stream = format!("{prefix}single-{w}");
                            let ids = vec![Uuid::new_v4()];
                            let body = json!({"expected_version": "any", "events": batch_events(&ids, batch, 1)});
                            (format!("{base}/streams/{stream}"), body, vec![(stream, ids)])
                        }
                        1 => {
                            let stream = format!("{prefix}batch-{w}");
                            let ids: Vec<Uuid> = (0..25).map(|_| Uuid::new_v4()).collect();
                            let body = json!({"expected_version": "any", "events": batch_events(&ids, batch, 25)});
                            (format!("{base}/streams/{stream}"), body, vec![(stream, ids)])
                        }
                        _ => {
                            let (a, b) = (format!("{prefix}multi-a-{w}"), format!("{prefix}multi-b-{w}"));
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
                        Err(_) if load.tolerant => {
                            load.transport_errors.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Err(_) => return, // the server is gone
                    };
                    let status = response.status();
                    let content_type = response
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let Ok(answer) = response.json::<Value>().await else {
                        if load.tolerant {
                            load.transport_errors.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        return; // cut off mid-answer: not acknowledged
                    };
                    if status.is_success() {
                        let results = match answer.get("appends") {
                            Some(list) => list.as_array().unwrap().clone(),
                            None => vec![answer],
                        };
                        load.acks.lock().unwrap().push(Ack { sent, results });
                    } else {
                        load.refusals
                            .lock()
                            .unwrap()
                            .push(format!("{} {content_type} {answer}", status.as_u16()));
                        if !load.tolerant {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect()
}

/// Waits until at least `events` events were acknowledged.
pub async fn wait_for_acks(load: &Load, events: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let acked = load.acked_events();
        if acked >= events {
            return;
        }
        assert!(Instant::now() < deadline, "only {acked} events acknowledged in 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every acknowledged event is in the log exactly once, where its answer said; no event is
/// stored twice; every batch in the log is whole and contiguous; streams have no gaps. An event
/// of a shredded stream (`erased: true`) must have `data: null`; others carry what was sent.
pub fn verify(log: &[Value], acks: &[Ack]) {
    let mut by_id: HashMap<Uuid, &Value> = HashMap::new();
    for event in log {
        let id: Uuid = serde_json::from_value(event["id"].clone()).unwrap();
        assert!(by_id.insert(id, event).is_none(), "event {id} stored twice");
        if event["erased"] == true {
            assert!(event["data"].is_null(), "erased event with data: {event}");
        }
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
                if stored["erased"] != true {
                    assert_eq!(stored["data"]["i"], i, "{stored}");
                }
            }
        }
    }

    // Batches, acknowledged or not: all or nothing, contiguous positions.
    let mut batches: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut sizes: HashMap<String, u64> = HashMap::new();
    for event in log.iter().filter(|e| e["metadata"]["batch"].is_string()) {
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
pub async fn read_log(base: &str, token: &str) -> Vec<Value> {
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
        let events = page["events"].as_array().unwrap_or_else(|| panic!("log page: {page}"));
        let done = events.is_empty();
        out.extend(events.iter().cloned());
        from = page["next"].as_u64().unwrap();
        if done || from > page["head"].as_u64().unwrap() {
            return out;
        }
    }
}

/// A free loopback port: bind to port 0, note the port, let it go.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary (`lethe serve`), killed (SIGKILL) when dropped.
pub struct Lethe {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl Lethe {
    pub async fn start(db: &TestDb, data_dir: &Path) -> Lethe {
        Self::start_with(db, data_dir, &[]).await
    }

    /// With extra environment variables (they override the defaults set here).
    pub async fn start_with(db: &TestDb, data_dir: &Path, env: &[(&str, String)]) -> Lethe {
        let mut lethe = Self::spawn_with(db, data_dir, env);
        lethe.wait_ready().await;
        lethe
    }

    /// Started as [`Lethe::start_with`] starts it, but not waited for (a start that is to be
    /// killed before it is ready).
    pub fn spawn_with(db: &TestDb, data_dir: &Path, env: &[(&str, String)]) -> Lethe {
        let port = free_port();
        let log = data_dir.join("lethe.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_lethe"));
        command
            .arg("serve")
            .env("LETHE_DATA_DIR", data_dir)
            // One keys directory per database, shared by every process on it (their vault's
            // KEK epochs and the erasure journal), outside each process's data directory.
            .env("LETHE_KEYS_DIR", db.dir.path().join("lethe-keys"))
            .env("LETHE_LISTEN", format!("127.0.0.1:{port}"))
            .env("LETHE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("LETHE_DATABASE_URL", &db.url)
            .env("LETHE_KEYVAULT_URL", &db.vault_url)
            .env("LETHE_LOG", "warn")
            .env_remove("LETHE_KEK")
            .env_remove("LETHE_KEK_FILE")
            .env_remove("LETHE_KEYVAULT_TOKEN");
        // The suite's switch for parallel group writers reaches the real binary too.
        if let Ok(writers) = std::env::var("LETHE_TEST_PG_GROUP_WRITERS") {
            command.env("LETHE_PG_GROUP_WRITERS", writers);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn lethe");
        Lethe {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
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

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (graceful shutdown); waits for the exit and returns whether it was clean.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
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
    pub fn kill_9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// A line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`), if the process is alive.
    pub fn memory_kib(&self, field: &str) -> Option<u64> {
        proc_status_kib(self.child.id(), field)
    }
}

impl Drop for Lethe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` line of `/proc/<pid>/status` (Linux).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}
