//! Bearer-token authentication and role checks, before any handler runs.
//!
//! No token or an unknown/revoked one → 401; a token whose role is too low → 403. Both are
//! decided before the handler looks at its path, so neither reveals whether a stream exists.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::problem::ApiError;
use super::{AppState, Caller};
use crate::model::Role;

/// Lets the request through to its route when it carries a token of `role` or above.
pub async fn require(
    State(state): State<AppState>,
    role: Role,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or_else(unauthorized)?;
    let token = state.store.authenticate(presented).await?.ok_or_else(unauthorized)?;
    if token.role < role {
        return Err(ApiError::new(
            "forbidden",
            format!("this route needs the {role} role; the token has {}", token.role),
        ));
    }
    request.extensions_mut().insert(Caller {
        token_id: token.id,
        name: token.name,
        role: token.role,
    });
    Ok(next.run(request).await)
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive,
/// RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized() -> ApiError {
    ApiError::new(
        "unauthorized",
        "a valid bearer token is required (Authorization: Bearer <token>)",
    )
}
