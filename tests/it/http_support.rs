//! HTTP test harness: a real server on a loopback port (in this process), a client with one
//! token per role, helpers for problem JSON, and a small Server-Sent Events reader.

use std::time::Duration;

use futures::StreamExt;
use lethe::http::{AppState, HttpLimits, router};
use lethe::model::Role;
use lethe::server::{RunningServer, ServeConfig};
use lethe::{EventStore, StoreConfig};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::TestDb;

/// The admin token every test server starts with (`LETHE_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// A token that was never issued.
pub const BAD_TOKEN: &str = "lethe_this-token-was-never-issued-by-anyone";

/// How the test server was started.
enum Handle {
    /// `lethe::server::start`: the real wiring.
    Running(RunningServer),
    /// `lethe::http::router` behind `lethe::server::serve`, with limits of the test's choosing.
    Custom {
        store: EventStore,
        shutdown: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    },
}

/// A server on 127.0.0.1 with a token of each role (and a revoked one).
pub struct Server {
    handle: Handle,
    pub base: String,
    pub client: reqwest::Client,
    pub admin: String,
    pub writer: String,
    pub reader: String,
    /// A reader token that has been revoked.
    pub revoked: String,
}

/// A response, its body read (JSON when it parses, else a string).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn etag(&self) -> Option<&str> {
        self.headers.get("etag").and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem JSON answer with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "status; body: {}", self.body);
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "content type; body: {}",
            self.body
        );
        assert_eq!(self.body["code"], code, "code; body: {}", self.body);
        assert_eq!(self.body["status"], status, "status member; body: {}", self.body);
        assert!(
            self.body["type"].as_str().is_some_and(|t| !t.is_empty()),
            "type: {}",
            self.body
        );
        assert!(
            self.body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "title: {}",
            self.body
        );
        assert!(
            self.body["detail"].as_str().is_some_and(|t| !t.is_empty()),
            "detail: {}",
            self.body
        );
        self
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "status; body: {}", self.body);
        self
    }
}

pub fn config_for(db: &TestDb) -> ServeConfig {
    // The KEK file must exist (mode 0600) before the server opens the vault with it.
    let kek_path = db.dir.path().join("kek.key");
    lethe_keyvault::Kek::load_or_create(&kek_path).expect("KEK");
    // The data directory only holds `admin.token` here (both databases are named by URL); the
    // keys directory (the erasure journal) lies beside it, as it must.
    let mut config = ServeConfig::embedded(db.dir.path().join("lethe-data"));
    config.keys_dir = db.dir.path().join("lethe-keys");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(db.url.clone());
    config.keyvault_url = Some(db.vault_url.clone());
    config.kek_file = Some(kek_path);
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn role_tokens(store: &EventStore) -> (String, String, String) {
    let writer = store.create_token("test writer", Role::Writer).await.unwrap();
    let reader = store.create_token("test reader", Role::Reader).await.unwrap();
    let revoked = store.create_token("test revoked", Role::Reader).await.unwrap();
    assert!(store.revoke_token(revoked.record.id).await.unwrap());
    (
        writer.secret.to_string(),
        reader.secret.to_string(),
        revoked.secret.to_string(),
    )
}

impl Server {
    /// `lethe::server::start` on a free loopback port.
    pub async fn start(db: &TestDb) -> Server {
        Self::start_config(config_for(db)).await
    }

    pub async fn start_config(config: ServeConfig) -> Server {
        let running = lethe::server::start(config).await.expect("start server");
        let (writer, reader, revoked) = role_tokens(&running.store).await;
        Server {
            base: format!("http://{}", running.addr),
            handle: Handle::Running(running),
            client: client(),
            admin: ADMIN_TOKEN.to_owned(),
            writer,
            reader,
            revoked,
        }
    }

    /// The router with limits of the test's choosing, served by `lethe::server::serve`.
    pub async fn start_with_limits(db: &TestDb, limits: HttpLimits) -> Server {
        let store = EventStore::open(StoreConfig::new(&db.url, db.vault().await))
            .await
            .expect("open store");
        let admin = store.create_token("test admin", Role::Admin).await.unwrap();
        let (writer, reader, revoked) = role_tokens(&store).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let app = router(AppState::new(store.clone(), limits).with_shutdown(rx.clone()));
        let mut signal = rx;
        let task = tokio::spawn(lethe::server::serve(
            listener,
            app,
            Duration::from_secs(10),
            async move {
                let _ = signal.wait_for(|stop| *stop).await;
            },
        ));
        Server {
            handle: Handle::Custom { store, shutdown, task },
            base: format!("http://{addr}"),
            client: client(),
            admin: admin.secret.to_string(),
            writer,
            reader,
            revoked,
        }
    }

    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// Graceful shutdown.
    pub async fn stop(self) {
        match self.handle {
            Handle::Running(r) => r.stop().await.expect("stop"),
            Handle::Custom { store, shutdown, task } => {
                let _ = shutdown.send(true);
                task.await.unwrap().unwrap();
                store.close().await;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request builder with an optional bearer token.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, self.url(path));
        match token {
            Some(t) => builder.bearer_auth(t),
            None => builder,
        }
    }

    /// Sends a request (JSON body if given) and reads the answer.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let mut builder = self.request(method, path, token);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        reply(builder.send().await.expect("send")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Appends events `{type, data}` to a stream as the writer; asserts 201.
    pub async fn append(&self, stream: &str, expected: Value, subject: Option<&str>, events: Value) -> Value {
        let mut body = json!({"expected_version": expected, "events": events});
        if let Some(subject) = subject {
            body["subject"] = json!(subject);
        }
        let r = self.post(&format!("/streams/{stream}"), &self.writer, &body).await;
        r.assert_status(201);
        r.body
    }

    /// The head of the global log.
    pub async fn head(&self) -> u64 {
        let r = self.get("/log?limit=1", &self.admin).await;
        r.assert_status(200);
        r.body["head"].as_u64().expect("head")
    }

    /// Every event of the global log (as the admin sees it).
    pub async fn log(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let r = self.get(&format!("/log?from={from}&limit=1000"), &self.admin).await;
            r.assert_status(200);
            let events = r.body["events"].as_array().unwrap().clone();
            let done = events.is_empty();
            out.extend(events);
            from = r.body["next"].as_u64().unwrap();
            if done || from > r.body["head"].as_u64().unwrap() {
                return out;
            }
        }
    }
}

/// Reads a response: JSON body when it parses, else the text as a JSON string.
pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("read body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply { status, headers, body }
}

/// `n` events `{type: "<kind>", data: {"i": i}}`.
pub fn events(n: usize, kind: &str) -> Value {
    Value::Array((0..n).map(|i| json!({"type": kind, "data": {"i": i}})).collect())
}

/// One Server-Sent Events frame: a comment-only frame has `comment` set and no data.
#[derive(Debug, Clone, Default)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comment: bool,
}

impl SseFrame {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("data is JSON")
    }
}

/// Reads SSE frames from a streaming response.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        Self {
            body: response.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed(),
            buffer: String::new(),
        }
    }

    /// The next frame, or `None` when the stream ended. Panics after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<SseFrame> {
        tokio::time::timeout(within, self.next_frame())
            .await
            .expect("no SSE frame in time")
    }

    async fn next_frame(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                return Some(parse_frame(&raw));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.push_str(std::str::from_utf8(&chunk).expect("SSE is UTF-8")),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next frame that carries data, skipping keep-alive comments.
    pub async fn next_event(&mut self, within: Duration) -> SseFrame {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next(left).await.expect("SSE stream ended");
            if frame.data.is_some() {
                return frame;
            }
        }
    }
}

fn parse_frame(raw: &str) -> SseFrame {
    let mut frame = SseFrame::default();
    for line in raw.lines() {
        if line.starts_with(':') {
            frame.comment = true;
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "id" => frame.id = Some(value),
            "event" => frame.event = Some(value),
            "data" => {
                frame.data = Some(match frame.data.take() {
                    Some(d) => format!("{d}\n{value}"),
                    None => value,
                })
            }
            _ => {}
        }
    }
    frame
}

/// How [`raw_request`] sends a body.
pub enum RawBody {
    /// With a `Content-Length`.
    Sized(Vec<u8>),
    /// `Transfer-Encoding: chunked`, in these chunks, with a pause before each.
    Chunked(Vec<Vec<u8>>, Duration),
}

/// Sends one request over a plain TCP connection and reads the answer while the body is still
/// being written. A server that refuses a body early answers and closes the connection; an
/// HTTP client library then often reports the broken pipe instead of the answer. This reads
/// the answer regardless, and ignores write errors.
pub async fn raw_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: RawBody) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let writer = tokio::spawn(async move {
        match body {
            RawBody::Sized(bytes) => {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
                write.write_all(head.as_bytes()).await?;
                write.write_all(&bytes).await?;
            }
            RawBody::Chunked(chunks, pause) => {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                write.write_all(head.as_bytes()).await?;
                for chunk in chunks {
                    tokio::time::sleep(pause).await;
                    write.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                    write.write_all(&chunk).await?;
                    write.write_all(b"\r\n").await?;
                }
                write.write_all(b"0\r\n\r\n").await?;
            }
        }
        write.flush().await?;
        Ok::<_, std::io::Error>(write)
    });
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
            if let Some(done) = complete_response(&received)
                && done
            {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("answer in time");
    writer.abort();
    parse_response(&received)
}

/// `Some(true)` once `raw` holds a whole response with a `Content-Length`.
fn complete_response(raw: &[u8]) -> Option<bool> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    })?;
    Some(raw.len() >= end + 4 + length)
}

fn parse_response(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).expect("head is text");
    let mut lines = head.lines();
    let status_line = lines.next().unwrap();
    let code: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    let bytes = &raw[end + 4..];
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    };
    Reply {
        status: StatusCode::from_u16(code).unwrap(),
        headers,
        body,
    }
}
