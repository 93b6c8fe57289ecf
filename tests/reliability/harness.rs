//! What the reliability scenarios share: quick or long mode, one-at-a-time execution, a
//! key-vault server process, random numbers, and erasure checks over HTTP.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::http_support::ADMIN_TOKEN;
use crate::load_support::{Ack, Load, batch_events, free_port};

/// `LETHE_RELIABILITY=long` selects the long versions.
pub fn long() -> bool {
    std::env::var("LETHE_RELIABILITY").is_ok_and(|v| v == "long")
}

/// `quick` normally, `long` in long mode.
pub fn pick<T>(quick: T, long: T) -> T {
    if self::long() { long } else { quick }
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of each test of this binary, so that scenarios never overlap (the
/// PostgreSQL restart would break the others; memory is measured per scenario).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A line on the real stderr (the test harness captures `eprintln!`), for results worth
/// seeing in CI's log.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "reliability: {line}");
}

/// A random number in `0..n` (test scheduling only, not cryptography).
pub fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n.max(1))) as u64
}

/// A random duration in `[min, max)`.
pub fn random_between(min: Duration, max: Duration) -> Duration {
    let span = max.saturating_sub(min).as_millis() as u64;
    min + Duration::from_millis(random_below(span))
}

/// A client with a timeout, so a hung server fails the test instead of hanging it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `(status, body)` of a JSON request; `None` when the server could not be reached.
pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Option<(u16, String, Value)> {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = response.bytes().await.ok()?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Some((status, content_type, body))
}

/// Asserts a problem JSON answer with one of `codes`.
#[track_caller]
pub fn assert_problem_in(status: u16, content_type: &str, body: &Value, codes: &[&str]) {
    assert_eq!(content_type, "application/problem+json", "{status} {body}");
    let code = body["code"].as_str().unwrap_or("");
    assert!(
        codes.contains(&code),
        "unexpected {status} {body}; expected one of {codes:?}"
    );
    assert_eq!(body["status"], status, "{body}");
}

/// Every erasure request of `subject` (newest first).
pub async fn erasures_of(base: &str, token: &str, subject: &str) -> Vec<Value> {
    let (status, _, body) = call(
        &client(),
        reqwest::Method::GET,
        &format!("{base}/admin/erasures?subject={subject}&limit=1000"),
        token,
        None,
    )
    .await
    .expect("server reachable");
    assert_eq!(status, 200, "{body}");
    body["erasures"].as_array().expect("erasures").clone()
}

/// Waits until every erasure request of each subject is `completed`, and returns them. A
/// request that is still moving is given time (the store resumes unfinished ones at start and
/// every 10 s); a bounded wait, not a speed check.
pub async fn wait_erasures_completed(base: &str, token: &str, subjects: &[String]) -> Vec<Value> {
    wait_erasures_in(base, token, subjects, "completed").await
}

/// Waits until every erasure request of each subject has the status `status`.
pub async fn wait_erasures_in(base: &str, token: &str, subjects: &[String], status: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done = Vec::new();
    for subject in subjects {
        loop {
            let list = erasures_of(base, token, subject).await;
            if list.iter().all(|e| e["status"] == status) {
                done.extend(list);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "erasures of {subject} not {status} in 120 s: {list:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    done
}

/// Reads a whole stream (up to 1000 events) over HTTP.
pub async fn read_stream(base: &str, token: &str, stream: &str) -> (u16, Value) {
    let (status, _, body) = call(
        &client(),
        reqwest::Method::GET,
        &format!("{base}/streams/{stream}?limit=1000"),
        token,
        None,
    )
    .await
    .expect("server reachable");
    (status, body)
}

/// Asserts that a stream is shredded: status `erased` or `deleted`, and no event carries data
/// (but Lethe's own `$erased` tombstone, which holds ids only).
#[track_caller]
pub fn assert_shredded(stream: &str, read: &Value) {
    let status = read["status"].as_str().unwrap_or("");
    assert!(
        status == "erased" || status == "deleted",
        "{stream} is {status}: {read}"
    );
    for event in read["events"].as_array().expect("events") {
        if event["type"] == "$erased" {
            continue;
        }
        assert!(
            event["data"].is_null() && event["erased"] == true,
            "{stream} still yields data: {event}"
        );
    }
}

/// Appending to a shredded stream is refused with 410.
pub async fn assert_append_refused(base: &str, token: &str, stream: &str) {
    let (status, content_type, body) = call(
        &client(),
        reqwest::Method::POST,
        &format!("{base}/streams/{stream}"),
        token,
        Some(&json!({"expected_version": "any", "events": [{"type": "X", "data": {}}]})),
    )
    .await
    .expect("server reachable");
    assert_eq!(status, 410, "{stream}: {body}");
    assert_problem_in(status, &content_type, &body, &["stream_erased", "stream_deleted"]);
}

/// What the forgetting clients did.
#[derive(Default)]
pub struct Forgets {
    /// Subjects whose forget request was sent (answered or not).
    pub sent: Mutex<Vec<String>>,
    /// `(subject, its private stream, request id)` of answered (202) forgets.
    pub answered: Mutex<Vec<(String, String, String)>>,
    pub refusals: Mutex<Vec<String>>,
    /// Go on after refusals and transport errors (recording refusals), pausing briefly.
    pub tolerant: bool,
}

/// Each worker binds a new private stream to a new subject (a 2-event batch, acknowledged like
/// the load's appends), then forgets the subject; until stopped or the server is gone.
pub fn start_forgets(
    base: &str,
    tag: &str,
    workers: usize,
    load: Arc<Load>,
    forgets: Arc<Forgets>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let base = base.to_owned();
            let load = load.clone();
            let forgets = forgets.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let client = client();
                for k in 0.. {
                    if load.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let subject = format!("subj-{tag}-{w}-{k}");
                    let stream = format!("private-{tag}-{w}-{k}");
                    let ids: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
                    let body = json!({"expected_version": "no_stream", "subject": subject,
                                      "events": batch_events(&ids, Uuid::new_v4(), 2)});
                    let url = format!("{base}/streams/{stream}");
                    let answer = match post_expecting(&client, &url, &body, 201, &forgets).await {
                        Next::Answer(answer) => answer,
                        Next::Retry => continue,
                        Next::Stop => return,
                    };
                    load.acks.lock().unwrap().push(Ack {
                        sent: vec![(stream.clone(), ids)],
                        results: vec![answer],
                    });
                    forgets.sent.lock().unwrap().push(subject.clone());
                    let url = format!("{base}/admin/subjects/{subject}/forget");
                    let body = json!({"reason": "crash test", "requested_by": "reliability"});
                    let answer = match post_expecting(&client, &url, &body, 202, &forgets).await {
                        Next::Answer(answer) => answer,
                        Next::Retry => continue,
                        Next::Stop => return,
                    };
                    let id = answer["request_id"].as_str().expect("request_id").to_owned();
                    forgets.answered.lock().unwrap().push((subject, stream, id));
                }
            })
        })
        .collect()
}

/// `lethe keyvault serve` as a child process on a fixed port (so it can be restarted where
/// Lethe expects it), killed when dropped.
pub struct VaultServer {
    child: Option<Child>,
    pub port: u16,
    pub token: String,
    dir: PathBuf,
}

impl VaultServer {
    /// Starts the vault on its own SQLite database and KEK file in `dir`.
    pub async fn start(dir: &Path) -> VaultServer {
        let kek = dir.join("vault-kek.key");
        lethe_keyvault::Kek::load_or_create(&kek).expect("vault KEK");
        let mut vault = VaultServer {
            child: None,
            port: free_port(),
            token: "reliability-vault-token-0123456789".to_owned(),
            dir: dir.to_owned(),
        };
        vault.restart().await;
        vault
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process again (after [`VaultServer::kill_9`]).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "vault already running");
        let log = self.dir.join("vault.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["keyvault", "serve"])
            .env("LETHE_KEYVAULT_LISTEN", format!("127.0.0.1:{}", self.port))
            .env(
                "LETHE_KEYVAULT_DATABASE_URL",
                format!("sqlite://{}", self.dir.join("vault.db").display()),
            )
            .env("LETHE_KEK_FILE", self.dir.join("vault-kek.key"))
            .env("LETHE_KEYVAULT_TOKEN", &self.token)
            .env("LETHE_LOG", "warn")
            .env_remove("LETHE_KEK")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn lethe keyvault serve");
        self.child = Some(child);
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "vault exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Ok(r) = client.get(format!("{}/healthz", self.url())).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "vault not up in 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 vault");
            child.wait().expect("reap vault");
        }
    }
}

impl Drop for VaultServer {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// What a forget client does after one request.
enum Next {
    /// The expected status: its answer.
    Answer(Value),
    /// Anything else, with a tolerant load: pause, then go on with the next subject.
    Retry,
    /// Anything else otherwise (the server is gone): stop.
    Stop,
}

/// POSTs `body` as admin; an answer other than `expected` is recorded as a refusal.
async fn post_expecting(client: &reqwest::Client, url: &str, body: &Value, expected: u16, forgets: &Forgets) -> Next {
    let answer = call(client, Method::POST, url, ADMIN_TOKEN, Some(body)).await;
    if let Some((status, content_type, answer)) = answer {
        if status == expected {
            return Next::Answer(answer);
        }
        forgets
            .refusals
            .lock()
            .unwrap()
            .push(format!("{status} {content_type} {answer}"));
    }
    if forgets.tolerant {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Next::Retry
    } else {
        Next::Stop
    }
}
