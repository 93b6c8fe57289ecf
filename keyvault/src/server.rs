//! `lethe keyvault serve`: the vault over HTTP, for deployments where the keys live in their own
//! process (and database) apart from Lethe.
//!
//! Every `/v1` route requires `Authorization: Bearer <token>`, checked in constant time before
//! the request body is even read; a bad or missing token gets a 401 problem and nothing runs.
//! `/healthz` is open and says only up or down.
//!
//! Architecture invariant: handlers only translate JSON to [`KeyVault`] calls and back; every
//! error becomes problem JSON in one place ([`ApiError`]), and key bytes appear only in the
//! bodies of successful, authenticated responses (with `Cache-Control: no-store`).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::limits::{BODY_BYTES_MAX, CONCURRENT_REQUESTS_MAX, TOKEN_LEN_MIN};
use crate::wire::{
    CreateRequest, CreateResponse, DestroyStreamResponse, DestroySubjectResponse, EpochsResponse, FetchRequest,
    FetchResponse, Problem, StreamRequest, SubjectRequest, WireKey, WireLookup, WireStatus,
};
use crate::{KeyLookup, KeyVault, VaultError};

#[derive(Clone)]
struct AppState {
    vault: Arc<dyn KeyVault>,
    /// SHA-256 of the token: comparing fixed-size digests in constant time hides the token's
    /// length too.
    token_digest: Arc<[u8; 32]>,
}

/// The vault's router. Fails if the token is shorter than [`TOKEN_LEN_MIN`].
pub fn router(vault: Arc<dyn KeyVault>, token: &str) -> Result<Router, VaultError> {
    if token.len() < TOKEN_LEN_MIN {
        return Err(VaultError::InvalidInput(format!(
            "the key vault token must be at least {TOKEN_LEN_MIN} characters"
        )));
    }
    let state = AppState {
        vault,
        token_digest: Arc::new(Sha256::digest(token.as_bytes()).into()),
    };
    let v1 = Router::new()
        .route("/v1/keys/create", post(create_keys))
        .route("/v1/keys/fetch", post(fetch_keys))
        .route("/v1/subjects/destroy", post(destroy_subject))
        .route("/v1/streams/destroy", post(destroy_stream))
        .route("/v1/stats", get(stats))
        .route("/v1/kek/epochs", get(kek_epochs))
        .route("/v1/health", get(health))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Ok(Router::new()
        .merge(v1)
        .route("/healthz", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(tower::limit::ConcurrencyLimitLayer::new(CONCURRENT_REQUESTS_MAX))
        .with_state(state))
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if authorized(request.headers(), &state.token_digest) {
        next.run(request).await
    } else {
        ApiError(VaultError::Unauthorized).into_response()
    }
}

fn authorized(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
        return false;
    };
    let got: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    got.ct_eq(expected).into()
}

const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

fn encode_key(bytes: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes))
}

// ---- handlers ---------------------------------------------------------------------------

/// `Json` whose rejections (bad JSON, wrong content type, too large) become problem JSON.
struct ApiJson<T>(T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "invalid_request"
                };
                Err(problem(status, code, rejection.body_text(), None))
            }
        }
    }
}

fn secret_json<T: Serialize>(body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (StatusCode::OK, bytes).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => ApiError(VaultError::Internal(format!("encoding response: {e}"))).into_response(),
    }
}

async fn create_keys(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateRequest<'static>>,
) -> Result<Response, ApiError> {
    let created = state.vault.create_keys(&req.keys).await?;
    let keys = created
        .iter()
        .map(|(id, dek)| WireKey {
            id: *id,
            key: encode_key(dek.expose_secret()),
        })
        .collect();
    Ok(secret_json(&CreateResponse { keys }))
}

async fn fetch_keys(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<FetchRequest<'static>>,
) -> Result<Response, ApiError> {
    let found = state.vault.fetch_keys(&req.ids).await?;
    let keys = found
        .iter()
        .map(|(id, lookup)| match lookup {
            KeyLookup::Live(dek) => WireLookup {
                id: *id,
                status: WireStatus::Live,
                key: Some(encode_key(dek.expose_secret())),
                epoch: None,
            },
            KeyLookup::Destroyed => WireLookup {
                id: *id,
                status: WireStatus::Destroyed,
                key: None,
                epoch: None,
            },
            KeyLookup::NotFound => WireLookup {
                id: *id,
                status: WireStatus::NotFound,
                key: None,
                epoch: None,
            },
            KeyLookup::Unreadable { epoch } => WireLookup {
                id: *id,
                status: WireStatus::Unreadable,
                key: None,
                epoch: Some(*epoch),
            },
        })
        .collect();
    Ok(secret_json(&FetchResponse { keys }))
}

async fn destroy_subject(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SubjectRequest<'static>>,
) -> Result<Json<DestroySubjectResponse>, ApiError> {
    let destroyed = state.vault.destroy_subject_keys(&req.subject).await?;
    Ok(Json(DestroySubjectResponse { destroyed }))
}

async fn destroy_stream(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<StreamRequest<'static>>,
) -> Result<Json<DestroyStreamResponse>, ApiError> {
    let destroyed = state.vault.destroy_stream_key(&req.stream).await?;
    Ok(Json(DestroyStreamResponse { destroyed }))
}

async fn stats(State(state): State<AppState>) -> Result<Json<crate::VaultStats>, ApiError> {
    Ok(Json(state.vault.stats().await?))
}

async fn kek_epochs(State(state): State<AppState>) -> Result<Json<EpochsResponse>, ApiError> {
    Ok(Json(EpochsResponse {
        epochs: state.vault.kek_epochs().await?,
    }))
}

async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.vault.health().await?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "not_found", "no such route".into(), None)
}

async fn method_not_allowed() -> Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route".into(),
        None,
    )
}

// ---- errors -----------------------------------------------------------------------------

/// The one place a [`VaultError`] becomes an HTTP response.
pub(crate) struct ApiError(pub VaultError);

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        ApiError(e)
    }
}

/// Status for each error; the stable `code` comes from [`VaultError::code`].
fn status_of(e: &VaultError) -> StatusCode {
    match e {
        VaultError::KeyDestroyed { .. } | VaultError::KeyUnreadable { .. } => StatusCode::GONE,
        VaultError::SubjectMismatch { .. } | VaultError::SubjectForgotten { .. } => StatusCode::CONFLICT,
        VaultError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        VaultError::Unauthorized => StatusCode::UNAUTHORIZED,
        VaultError::InvalidInput(_) => StatusCode::BAD_REQUEST,
        VaultError::Corrupt(_) | VaultError::Storage(_) | VaultError::Kek(_) | VaultError::Internal(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() {
            tracing::warn!(code = self.0.code(), error = %self.0, "key vault request failed");
        }
        let mut fields = ProblemFields::default();
        match &self.0 {
            VaultError::KeyDestroyed { stream } | VaultError::SubjectMismatch { stream } => {
                fields.stream = Some(stream.clone());
            }
            VaultError::KeyUnreadable { stream, epoch } => {
                fields.stream = Some(stream.clone());
                fields.epoch = Some(*epoch);
            }
            VaultError::SubjectForgotten { subject } => fields.subject = Some(subject.clone()),
            _ => {}
        }
        let mut response = problem_with(status, self.0.code(), self.0.to_string(), fields);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The problem's optional members, naming what the error is about.
#[derive(Default)]
struct ProblemFields {
    stream: Option<String>,
    subject: Option<String>,
    epoch: Option<u32>,
}

fn problem(status: StatusCode, code: &str, detail: String, stream: Option<String>) -> Response {
    problem_with(
        status,
        code,
        detail,
        ProblemFields {
            stream,
            ..ProblemFields::default()
        },
    )
}

fn problem_with(status: StatusCode, code: &str, detail: String, fields: ProblemFields) -> Response {
    let body = Problem {
        type_: format!("urn:lethe:keyvault:problem:{code}"),
        title: status.canonical_reason().unwrap_or("error").to_string(),
        status: status.as_u16(),
        detail,
        code: code.to_string(),
        stream: fields.stream,
        subject: fields.subject,
        epoch: fields.epoch,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    response
}
