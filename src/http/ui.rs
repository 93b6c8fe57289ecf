//! `/admin/ui`: the admin web page. Three static files compiled into the binary (no CDN, no
//! build step); the page signs in with an admin token and calls the admin API like any other
//! client, so it needs no route of its own beyond these and holds no data itself.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Only this origin's scripts, styles and API; no framing (clickjacking), no inline script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // Revalidate each time: a new binary may ship a new page.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The admin web page
///
/// A static file of the admin page served at `/admin/ui`; it holds no data.
#[utoipa::path(
    get,
    path = "/admin/ui",
    tag = "ops",
    operation_id = "adminUi",
    responses((status = 200, description = "The file.", body = String, content_type = "text/html")),
)]
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The admin page's script
///
/// A static file of the admin page served at `/admin/ui`; it holds no data.
#[utoipa::path(
    get,
    path = "/admin/ui/app.js",
    tag = "ops",
    operation_id = "adminUiScript",
    responses((status = 200, description = "The file.", body = String, content_type = "text/javascript")),
)]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The admin page's stylesheet
///
/// A static file of the admin page served at `/admin/ui`; it holds no data.
#[utoipa::path(
    get,
    path = "/admin/ui/app.css",
    tag = "ops",
    operation_id = "adminUiStyles",
    responses((status = 200, description = "The file.", body = String, content_type = "text/css")),
)]
pub async fn stylesheet() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}
