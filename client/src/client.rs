//! The connection to one server: configuration, and the one place requests are sent, retried
//! and their problem documents turned into [`Error`]s.

use std::sync::Arc;
use std::time::Duration;

use lethe_wire::Problem;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// A request without query parameters.
pub(crate) const NO_QUERY: &[(&str, &str)] = &[];

/// Attempts of a request that may be repeated, by default.
pub const ATTEMPTS_DEFAULT: u32 = 5;
/// The first pause between attempts, by default; doubled after each, with jitter.
pub const BACKOFF_DEFAULT: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a request may take, by default (a consumer's long poll gets its wait on top).
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// How long connecting may take.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// A client of one Lethe server. Cheap to clone; clones share their connections.
///
/// Requests that are safe to repeat — reads, appends (every event carries an id, so the server
/// recognises a repeated append and answers it as before), and the idempotent `PUT`s and
/// `DELETE`s — are tried again after a connection failure or a `503`, with exponential backoff.
/// Requests that are not (filing an erasure request, creating a token) are repeated only when
/// the connection failed before anything was sent.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Without a whole-request timeout: subscriptions stay open.
    streaming: reqwest::Client,
    base: String,
    token: Option<String>,
    attempts: u32,
    backoff: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    // The token stays out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`]: [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    attempts: u32,
    backoff: Duration,
    timeout: Duration,
    connect_timeout: Duration,
}

impl ClientBuilder {
    /// The bearer token (`reader`, `writer` or `admin`) sent with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Attempts of a request that may be repeated (at least 1; 1: never repeat).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The first pause between attempts.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long one request may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let url = reqwest::Url::parse(&self.base).map_err(|e| Error::InvalidArgument(format!("base URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(Error::InvalidArgument(
                "the base URL must be http:// or https://".to_owned(),
            ));
        }
        let build = |timeout: Option<Duration>| {
            let mut builder = reqwest::Client::builder().connect_timeout(self.connect_timeout);
            if let Some(timeout) = timeout {
                builder = builder.timeout(timeout);
            }
            builder
                .build()
                .map_err(|e| Error::InvalidArgument(format!("HTTP client: {e}")))
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http: build(Some(self.timeout))?,
                streaming: build(None)?,
                base: self.base.trim_end_matches('/').to_owned(),
                token: self.token,
                attempts: self.attempts,
                backoff: self.backoff,
                timeout: self.timeout,
            }),
        })
    }
}

/// Whether a request may be sent again when its answer did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Repeating it changes nothing the first one did not (reads, appends with ids, idempotent
    /// `PUT`/`DELETE`).
    Safe,
    /// Only when nothing was sent (the connection failed).
    OnlyUnsent,
}

impl Client {
    /// A client of the server at `base_url` (`http://127.0.0.1:2113`), without a token.
    pub fn new(base_url: impl Into<String>) -> Result<Client, Error> {
        Self::builder(base_url).build()
    }

    /// A client with settings of its own: token, retries, timeouts.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base_url.into(),
            token: None,
            attempts: ATTEMPTS_DEFAULT,
            backoff: BACKOFF_DEFAULT,
            timeout: TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base)
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.inner.http.request(method, self.url(path)))
    }

    pub(crate) fn streaming_request(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.inner.streaming.get(self.url(path)))
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.inner.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends what `build` makes (again for each attempt) and returns a successful answer.
    pub(crate) async fn execute(
        &self,
        repeat: Repeat,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let mut pause = self.inner.backoff;
        let mut attempt = 1;
        loop {
            let last = attempt >= self.inner.attempts;
            match build().send().await {
                Err(e) => {
                    let may_repeat = repeat == Repeat::Safe || e.is_connect();
                    if last || !may_repeat {
                        let url = e.url().map_or_else(|| self.inner.base.clone(), ToString::to_string);
                        return Err(Error::Unreachable { url, source: e });
                    }
                }
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    if response.status() != StatusCode::SERVICE_UNAVAILABLE || last || repeat != Repeat::Safe {
                        return Err(error_of(response).await);
                    }
                }
            }
            tokio::time::sleep(jitter(pause)).await;
            pause = (pause * 2).min(BACKOFF_MAX);
            attempt += 1;
        }
    }

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &(impl Serialize + ?Sized),
    ) -> Result<T, Error> {
        let response = self
            .execute(Repeat::Safe, || self.request(Method::GET, path).query(query))
            .await?;
        json(response).await
    }

    /// A request with a JSON body; the answer's status and body.
    pub(crate) async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
        repeat: Repeat,
    ) -> Result<(StatusCode, T), Error> {
        let body = serde_json::to_vec(body).map_err(|e| Error::InvalidArgument(format!("request body: {e}")))?;
        let response = self
            .execute(repeat, || {
                self.request(method.clone(), path)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        let status = response.status();
        Ok((status, json(response).await?))
    }

    /// A `DELETE` whose answer has no body worth reading.
    pub(crate) async fn delete(&self, path: &str) -> Result<(), Error> {
        self.execute(Repeat::Safe, || self.request(Method::DELETE, path))
            .await?;
        Ok(())
    }
}

/// The body of a successful answer as `T`.
pub(crate) async fn json<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, Error> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| Error::Unexpected {
        status,
        detail: format!("the answer was cut off: {e}"),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Unexpected {
        status,
        detail: format!("not the documented JSON: {e}"),
    })
}

/// The error an unsuccessful answer stands for: its problem document when it has one.
pub(crate) async fn error_of(response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Problem>(&bytes) {
        Ok(problem) => Error::Api(Box::new(problem)),
        Err(_) => Error::Unexpected {
            status,
            detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        },
    }
}

/// `pause` scaled by a random factor in [0.5, 1.5), so that clients that failed together do not
/// retry together.
pub(crate) fn jitter(pause: Duration) -> Duration {
    let random = (uuid::Uuid::new_v4().as_u128() % 1_000) as f64 / 1_000.0;
    pause.mul_f64(0.5 + random)
}

/// A path segment: names and ids, percent-encoded but for the unreserved characters.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
