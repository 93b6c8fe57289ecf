//! The JSON shapes of Lethe's HTTP API (contract: `../shared/design.md`, "HTTP API"), defined once
//! for the server (`lethe`, which re-exports them as `lethe::http::wire`) and its clients
//! (`lethe-client`, the `lethe admin` CLI).
//!
//! - The request and answer types, named as the server's OpenAPI document names them
//!   (`AppendRequest`, `EventOut` — `Event` in the document —, `ErasureResponse`, …). Request
//!   bodies refuse unknown fields.
//! - [`Problem`]: every error answer, an RFC 9457 problem document with a stable `code`;
//!   [`CODES`]: every code with its HTTP status.
//! - [`limits`]: the limits a client sees (sizes, page sizes, defaults).
//! - [`schemas`]: the JSON Schemas of constrained strings and numbers (names, types, texts) the
//!   types refer to with `value_type`, built from [`limits`].
//!
//! The types derive `utoipa::ToSchema`, so the server's OpenAPI document is generated from the
//! same definitions a client deserializes with. Nothing here knows the store's own types: the
//! server converts between the two (`lethe::http::wire`).

pub mod limits;
mod problem;
pub mod schemas;
mod types;

pub use problem::{CODES, Problem, ProblemExtra, StreamVersion};
pub use types::*;
