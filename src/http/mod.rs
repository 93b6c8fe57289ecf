//! The HTTP API (contract: `../shared/design.md`, HTTP API).
//!
//! [`router`] builds the whole API once from an [`AppState`]; `crate::server` puts it behind a
//! listener with timeouts and graceful shutdown. Handlers translate between the wire types
//! ([`wire`]) and the library ([`crate::EventStore`]) and nothing else: this layer never
//! touches SQL, key bytes or plaintext beyond the JSON it serialises.

mod admin;
mod auth;
mod consumers;
mod metrics;
pub mod openapi;
mod ops;
pub mod problem;
mod registry;
mod retention;
mod schemas;
mod streams;
mod ui;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use tokio::sync::Semaphore;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::model::Role;
use crate::store::EventStore;

/// Limits of the HTTP layer. Each is documented in README.md ("Limits").
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Request bodies, counted on the raw bytes (chunked bodies too).
    pub body_bytes_max: usize,
    /// Open SSE subscriptions at once; more get 503 `too_many_subscribers`.
    pub subscribers_max: usize,
    /// Whole-request timeout for everything but SSE and consumer long polls.
    pub request_timeout: Duration,
    /// Longest consumer long poll (`wait_ms` is capped to it).
    pub long_poll_max: Duration,
    /// SSE keep-alive comment interval.
    pub keep_alive: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            body_bytes_max: crate::limits::BODY_BYTES_DEFAULT,
            subscribers_max: crate::limits::SUBSCRIBERS_DEFAULT,
            request_timeout: crate::limits::REQUEST_TIMEOUT_DEFAULT,
            long_poll_max: crate::limits::LONG_POLL_MAX,
            keep_alive: crate::limits::SSE_KEEP_ALIVE,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: EventStore,
    pub limits: Arc<HttpLimits>,
    pub subscriber_slots: Arc<Semaphore>,
    /// Becomes true when the server shuts down (ends SSE streams).
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

impl AppState {
    pub fn new(store: EventStore, limits: HttpLimits) -> Self {
        Self {
            subscriber_slots: Arc::new(Semaphore::new(limits.subscribers_max)),
            limits: Arc::new(limits),
            store,
            shutdown: None,
        }
    }

    pub fn with_shutdown(mut self, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Resolves when the server shuts down (never, without a shutdown signal).
    pub(crate) fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static + use<> {
        let shutdown = self.shutdown.clone();
        async move {
            match shutdown {
                Some(mut rx) => {
                    while !*rx.borrow_and_update() {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                }
                None => std::future::pending().await,
            }
        }
    }
}

/// The groups of routes, each behind its own middleware: the role a token needs (none for the
/// open routes) and the request timeout. The OpenAPI document reads both from here too, so an
/// operation's documented role is the one its route enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// Reads, schema reads, consumer reads and acks (long polls: the timeout allows for the
    /// longest one).
    Reader,
    /// `GET /subscribe`: Server-Sent Events, exempt from the request timeout.
    Subscribe,
    /// Appends and stream deletion.
    Writer,
    /// `/admin`, consumer registration, tokens, schema registration.
    Admin,
    /// Health, metrics, the OpenAPI document and the admin page: no token.
    Open,
}

impl Group {
    pub(crate) const ALL: [Group; 5] = [
        Group::Reader,
        Group::Subscribe,
        Group::Writer,
        Group::Admin,
        Group::Open,
    ];

    /// The role a token needs (`None`: no token).
    pub(crate) fn role(self) -> Option<Role> {
        match self {
            Group::Reader | Group::Subscribe => Some(Role::Reader),
            Group::Writer => Some(Role::Writer),
            Group::Admin => Some(Role::Admin),
            Group::Open => None,
        }
    }

    /// The whole-request timeout (`None`: long-lived answers, or the open routes).
    pub(crate) fn timeout(self, limits: &HttpLimits) -> Option<Duration> {
        match self {
            Group::Reader => Some(limits.request_timeout + limits.long_poll_max),
            Group::Writer | Group::Admin => Some(limits.request_timeout),
            Group::Subscribe | Group::Open => None,
        }
    }

    /// The group's routes, each registered with its OpenAPI operation (`routes!`), so that no
    /// route exists undocumented.
    pub(crate) fn routes(self) -> OpenApiRouter<AppState> {
        let routes = OpenApiRouter::default();
        match self {
            Group::Reader => routes
                .routes(routes!(streams::read))
                .routes(routes!(streams::log))
                .routes(routes!(consumers::events))
                .routes(routes!(consumers::ack))
                .routes(routes!(registry::list_schemas))
                .routes(routes!(registry::get_schema)),
            Group::Subscribe => routes.routes(routes!(streams::subscribe)),
            Group::Writer => routes
                .routes(routes!(streams::append, streams::delete))
                .routes(routes!(streams::append_multi)),
            Group::Admin => routes
                .routes(routes!(consumers::list))
                .routes(routes!(consumers::put, consumers::get, consumers::delete))
                .routes(routes!(admin::place_hold, admin::lift_hold))
                .routes(routes!(admin::forget))
                .routes(routes!(admin::subject))
                .routes(routes!(admin::export))
                .routes(routes!(admin::erasures))
                .routes(routes!(admin::erasure_report))
                .routes(routes!(admin::audit))
                .routes(routes!(admin::verify_audit))
                .routes(routes!(admin::reconcile))
                .routes(routes!(admin::erasure))
                .routes(routes!(admin::create_token, admin::tokens))
                .routes(routes!(admin::revoke_token))
                .routes(routes!(registry::put_schema))
                .routes(routes!(retention::list))
                .routes(routes!(retention::put, retention::get, retention::delete))
                .routes(routes!(retention::sweep)),
            Group::Open => routes
                .routes(routes!(ops::healthz))
                .routes(routes!(ops::readyz))
                .routes(routes!(ops::metrics_handler))
                .routes(routes!(ops::openapi))
                // The admin page itself is open: it holds no data and signs in with an admin token.
                .routes(routes!(ui::index))
                .routes(routes!(ui::script))
                .routes(routes!(ui::stylesheet)),
        }
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    for group in Group::ALL {
        let (mut routes, _) = group.routes().split_for_parts();
        if let Some(role) = group.role() {
            let require = move |state, request, next| auth::require(state, role, request, next);
            routes = routes.route_layer(middleware::from_fn_with_state(state.clone(), require));
        }
        if let Some(timeout) = group.timeout(&state.limits) {
            routes = routes.route_layer(TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                timeout,
            ));
        }
        api = api.merge(routes);
    }
    api.fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.body_bytes_max))
        .layer(RequestBodyLimitLayer::new(state.limits.body_bytes_max))
        .layer(middleware::map_response(ops::layer_problems))
        .layer(middleware::from_fn(ops::record_latency))
        .with_state(state)
}

/// Parses a comma-separated `types` query value.
pub(crate) fn split_types(types: Option<&str>) -> Vec<String> {
    types
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// One path parameter. Unlike a bare `Path<String>`, a segment that cannot be decoded (say,
/// percent-encoded bytes that are not UTF-8) is refused with problem JSON like every other
/// failure.
pub(crate) struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = problem::ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) = axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A JSON request body that must be a JSON *object*. `axum::Json` alone would also take an
/// array for a struct (serde's sequence form: `[null, null]` as `{stream_prefix, types}`),
/// which the contract's request shapes do not allow. Every rejection is problem JSON.
pub(crate) struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = problem::ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(missing_json_content_type());
        }
        let bytes = body_bytes(request, state).await?;
        parse_object(&bytes).map(Self)
    }
}

impl<T, S> axum::extract::OptionalFromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = problem::ApiError;

    /// No body (empty, whatever its `Content-Type`) is `None`; a body that is there must be a
    /// valid JSON object sent as JSON.
    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let json = is_json(request.headers());
        let bytes = body_bytes(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if !json {
            return Err(missing_json_content_type());
        }
        parse_object(&bytes).map(|value| Some(Self(value)))
    }
}

async fn body_bytes<S: Send + Sync>(
    request: axum::extract::Request,
    state: &S,
) -> Result<axum::body::Bytes, problem::ApiError> {
    use axum::extract::FromRequest;
    axum::body::Bytes::from_request(request, state)
        .await
        .map_err(|e| axum::extract::rejection::JsonRejection::from(e).into())
}

fn missing_json_content_type() -> problem::ApiError {
    use axum::extract::rejection::{JsonRejection, MissingJsonContentType};
    JsonRejection::from(MissingJsonContentType::default()).into()
}

fn parse_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, problem::ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(problem::ApiError::bad_request("the request body must be a JSON object"));
    }
    // serde_json alone first: axum's parser also tracks the path of every value it reads, for
    // its error messages, at a cost on every request. Only a body that fails is parsed again
    // by axum, for the message.
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => {
            let axum::Json(value) = axum::Json::<T>::from_bytes(bytes)?;
            Ok(value)
        }
    }
}

/// `Content-Type: application/json` or `application/<something>+json`.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// An audit entry for an action `caller` took.
pub(crate) fn audit_entry(
    caller: &Caller,
    action: &str,
    subject: Option<&crate::model::SubjectId>,
    request_id: Option<uuid::Uuid>,
    details: serde_json::Value,
) -> crate::model::NewAuditEntry {
    crate::model::NewAuditEntry {
        actor: caller.name.clone(),
        action: action.to_owned(),
        subject: subject.cloned(),
        request_id,
        details,
    }
}

/// Who is calling (put in request extensions by the auth middleware).
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: uuid::Uuid,
    pub name: String,
    pub role: Role,
}
