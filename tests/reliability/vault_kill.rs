//! The remote key vault (`lethe keyvault serve`) killed with SIGKILL while Lethe serves reads,
//! appends to new streams and forgets. While it is down, a read whose key is not cached fails
//! with problem JSON `keyvault_unavailable` (503) — never ciphertext, never another stream's or
//! event's data — and a cached key still reads correctly; appends that need a new key fail the
//! same way and store nothing; forgets are accepted, their streams unreadable at once, and
//! finish once the vault is back (Lethe resumes them every 10 s).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{
    VaultServer, assert_shredded, call, client, pick, random_below, random_between, read_stream, report, serial,
    wait_erasures_completed,
};
use crate::http_support::ADMIN_TOKEN;
use crate::load_support::Lethe;
use crate::support::TestDb;

/// Streams written before the faults: `v-<i>` bound to subject `vs-<i>`, 3 events each.
const STREAMS: usize = 400;
const EVENTS_PER_STREAM: u64 = 3;

/// What the clients saw.
#[derive(Default)]
struct Seen {
    reads_ok: AtomicUsize,
    reads_refused: AtomicUsize,
    appends_refused: AtomicUsize,
    /// Anything that breaks the rules above.
    violations: Mutex<Vec<String>>,
    /// Subjects whose forget was sent, and `(subject, request id)` of answered ones.
    forgets_sent: Mutex<Vec<String>>,
    forgets_answered: Mutex<Vec<(String, String)>>,
    /// Forgets answered before they finished (the vault was down): resumed later.
    forgets_unfinished: AtomicUsize,
    /// New streams whose append was acknowledged.
    created: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Seen {
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }
}

/// The data event `version` of stream `v-<i>` was written with.
fn expected_data(stream: &str, version: u64) -> Value {
    json!({"stream": stream, "i": version})
}

/// Checks one stream read: correct data, or shredded, or a clean refusal.
fn check_read(seen: &Seen, stream: &str, status: u16, content_type: &str, body: &Value) {
    match status {
        200 => {
            let erased_stream = body["status"] != "active";
            for event in body["events"].as_array().into_iter().flatten() {
                if event["type"] == "$erased" {
                    continue;
                }
                let version = event["version"].as_u64().unwrap_or(u64::MAX);
                if event["data"].is_null() {
                    if !(erased_stream && event["erased"] == true) {
                        seen.violation(format!("{stream}: no data on an active stream: {body}"));
                    }
                } else if erased_stream || event["data"] != expected_data(stream, version) {
                    seen.violation(format!("{stream}: wrong data: {event} (stream {})", body["status"]));
                }
            }
            seen.reads_ok.fetch_add(1, Ordering::SeqCst);
        }
        503 if content_type == "application/problem+json" && body["code"] == "keyvault_unavailable" => {
            seen.reads_refused.fetch_add(1, Ordering::SeqCst);
        }
        _ => seen.violation(format!("{stream}: read answered {status} {content_type} {body}")),
    }
}

fn start_clients(base: &str, cycle: usize, seen: Arc<Seen>, forget_from: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (base, seen) = (base.to_owned(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            while !seen.stop.load(Ordering::SeqCst) {
                let stream = format!("v-{}", random_below(STREAMS as u64));
                let url = format!("{base}/streams/{stream}");
                match call(&client, Method::GET, &url, ADMIN_TOKEN, None).await {
                    Some((status, content_type, body)) => check_read(&seen, &stream, status, &content_type, &body),
                    None => seen.violation(format!("{stream}: no answer")),
                }
            }
        }));
    }
    // New streams need a new key from the vault.
    let (b, s) = (base.to_owned(), seen.clone());
    tasks.push(tokio::spawn(async move {
        let client = client();
        for k in 0.. {
            if s.stop.load(Ordering::SeqCst) {
                return;
            }
            let stream = format!("new-{cycle}-{k}");
            let body = json!({"expected_version": "no_stream", "subject": format!("ns-{cycle}-{k}"),
                              "events": [{"type": "New", "data": {"stream": stream, "i": 0}}]});
            match call(
                &client,
                Method::POST,
                &format!("{b}/streams/{stream}"),
                ADMIN_TOKEN,
                Some(&body),
            )
            .await
            {
                Some((201, _, _)) => s.created.lock().unwrap().push(stream),
                Some((503, ct, body)) if ct == "application/problem+json" && body["code"] == "keyvault_unavailable" => {
                    s.appends_refused.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => s.violation(format!("{stream}: append answered {other:?}")),
            }
        }
    }));
    // Forgets, a few per cycle.
    let (b, s) = (base.to_owned(), seen.clone());
    tasks.push(tokio::spawn(async move {
        let client = client();
        for i in forget_from..forget_from + 10 {
            if s.stop.load(Ordering::SeqCst) {
                return;
            }
            let subject = format!("vs-{i}");
            s.forgets_sent.lock().unwrap().push(subject.clone());
            let url = format!("{b}/admin/subjects/{subject}/forget");
            let body = json!({"reason": "vault test", "requested_by": "reliability"});
            match call(&client, Method::POST, &url, ADMIN_TOKEN, Some(&body)).await {
                Some((202, _, answer)) => {
                    if answer["status"] != "completed" {
                        s.forgets_unfinished.fetch_add(1, Ordering::SeqCst);
                    }
                    let id = answer["request_id"].as_str().unwrap_or("").to_owned();
                    s.forgets_answered.lock().unwrap().push((subject, id));
                }
                other => s.violation(format!("forget {subject} answered {other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vault_killed_during_reads_and_forgets() {
    let _serial = serial().await;
    let db = TestDb::sqlite().await;
    let vault_dir = db.dir.path().join("vault");
    std::fs::create_dir_all(&vault_dir).unwrap();
    let mut vault = VaultServer::start(&vault_dir).await;
    let data_dir = db.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let env = [
        ("LETHE_KEYVAULT_URL", vault.url()),
        ("LETHE_KEYVAULT_TOKEN", vault.token.clone()),
    ];
    let mut lethe = Lethe::start_with(&db, &data_dir, &env).await;

    // 400 private streams, 100 per multi-stream append.
    let http = client();
    for chunk in 0..STREAMS / 100 {
        let appends: Vec<Value> = (chunk * 100..(chunk + 1) * 100)
            .map(|i| {
                let stream = format!("v-{i}");
                let events: Vec<Value> = (0..EVENTS_PER_STREAM)
                    .map(|v| json!({"type": "Given", "data": expected_data(&stream, v)}))
                    .collect();
                json!({"stream": stream, "expected_version": "no_stream", "subject": format!("vs-{i}"), "events": events})
            })
            .collect();
        let url = format!("{}/streams", lethe.base);
        let answer = call(
            &http,
            Method::POST,
            &url,
            ADMIN_TOKEN,
            Some(&json!({"appends": appends})),
        )
        .await;
        assert_eq!(answer.as_ref().map(|a| a.0), Some(201), "{answer:?}");
    }

    let cycles = pick(2, 8);
    let seen = Arc::new(Seen::default());
    for cycle in 0..cycles {
        // A fresh Lethe process: no key cached, so reads need the vault.
        lethe.kill_9();
        lethe = Lethe::start_with(&db, &data_dir, &env).await;
        seen.stop.store(false, Ordering::SeqCst);
        let tasks = start_clients(&lethe.base, cycle, seen.clone(), cycle * 10);
        tokio::time::sleep(random_between(Duration::from_millis(100), Duration::from_millis(400))).await;
        vault.kill_9();
        tokio::time::sleep(random_between(Duration::from_millis(500), Duration::from_millis(1500))).await;
        vault.restart().await;
        tokio::time::sleep(random_between(Duration::from_millis(200), Duration::from_millis(600))).await;
        seen.stop.store(true, Ordering::SeqCst);
        for task in tasks {
            task.await.unwrap();
        }
    }

    let violations = seen.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} violations: {violations:#?}",
        violations.len()
    );

    // Every forget completes once the vault is back; its streams yield nothing and the others
    // read in full.
    let sent = seen.forgets_sent.lock().unwrap().clone();
    let erasures = wait_erasures_completed(&lethe.base, ADMIN_TOKEN, &sent).await;
    for (subject, id) in seen.forgets_answered.lock().unwrap().iter() {
        assert!(
            erasures.iter().any(|e| e["request_id"] == id.as_str()),
            "forget {id} of {subject} lost"
        );
    }
    let forgotten: HashSet<String> = sent.iter().map(|s| s.replacen("vs-", "v-", 1)).collect();
    for i in 0..STREAMS {
        let stream = format!("v-{i}");
        let (status, read) = read_stream(&lethe.base, ADMIN_TOKEN, &stream).await;
        assert_eq!(status, 200, "{read}");
        if forgotten.contains(&stream) {
            assert_shredded(&stream, &read);
        } else {
            let data: Vec<&Value> = read["events"].as_array().unwrap().iter().map(|e| &e["data"]).collect();
            let want: Vec<Value> = (0..EVENTS_PER_STREAM).map(|v| expected_data(&stream, v)).collect();
            assert_eq!(data, want.iter().collect::<Vec<_>>(), "{stream}");
        }
    }
    let created = seen.created.lock().unwrap().clone();
    for stream in &created {
        let (status, read) = read_stream(&lethe.base, ADMIN_TOKEN, stream).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["events"][0]["data"], json!({"stream": stream, "i": 0}), "{stream}");
    }
    report(&format!(
        "vault_kill: {cycles} vault SIGKILLs; {} reads correct, {} refused with keyvault_unavailable, {} appends \
         refused, {} new streams created, {} forgets completed ({} of them answered unfinished and resumed)",
        seen.reads_ok.load(Ordering::SeqCst),
        seen.reads_refused.load(Ordering::SeqCst),
        seen.appends_refused.load(Ordering::SeqCst),
        seen.created.lock().unwrap().len(),
        erasures.len(),
        seen.forgets_unfinished.load(Ordering::SeqCst)
    ));
    drop(vault);
}
