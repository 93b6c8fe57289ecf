//! The OpenAPI 3.1 document served at `/openapi.json`.

/// The document.
pub fn document() -> serde_json::Value {
    serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "Lethe", "version": env!("CARGO_PKG_VERSION") },
        "paths": {}
    })
}
