//! The limits of Lethe's HTTP API a client sees: input sizes, page sizes, defaults. The server
//! enforces them (it re-exports them in `lethe::limits`, beside the limits only it knows), its
//! OpenAPI document states them, and a client can split its work by them.
//!
//! They are documented for users in README.md ("Limits"); change both together.

use std::time::Duration;

/// Stream names and subject ids: 1..=200 characters of `[A-Za-z0-9_.:@-]`.
pub const NAME_LEN_MAX: usize = 200;
/// Event types: 1..=200 characters, no control characters.
pub const EVENT_TYPE_LEN_MAX: usize = 200;
/// Events in one append (over all streams of a multi-stream append).
pub const APPEND_EVENTS_MAX: usize = 1_000;
/// Streams in one multi-stream append.
pub const APPEND_STREAMS_MAX: usize = 100;
/// Bytes of one event: its `data` and `metadata` serialized as JSON, added up.
pub const EVENT_BYTES_MAX: usize = 1024 * 1024;
/// Bytes of one append: every event's `data` and `metadata`, added up.
pub const APPEND_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Events one read (stream read, log page) returns at most.
pub const READ_PAGE_EVENTS_MAX: usize = 1_000;
/// Event types one log filter may name.
pub const FILTER_TYPES_MAX: usize = 100;
/// Free-text fields of erasure requests and legal holds (reason, requested_by, reference).
pub const REASON_LEN_MAX: usize = 1_000;
/// Token names: free text for humans.
pub const TOKEN_NAME_LEN_MAX: usize = 100;
/// Webhook URLs, in bytes.
pub const WEBHOOK_URL_LEN_MAX: usize = 2_000;
/// Webhook signing secrets, in characters.
pub const WEBHOOK_SECRET_LEN_MIN: usize = 16;
pub const WEBHOOK_SECRET_LEN_MAX: usize = 200;
/// Erasure requests one listing returns at most (`GET /admin/erasures?limit=`, and the
/// requests `GET /admin/subjects/{subject}` shows).
pub const ERASURES_LIST_MAX: usize = 1_000;
/// Audit entries one page returns at most.
pub const AUDIT_PAGE_MAX: usize = 1_000;
/// Bytes of one event schema (its JSON Schema document, serialized).
pub const SCHEMA_BYTES_MAX: usize = 64 * 1024;
/// Personal fields (`x-lethe-personal`) one schema may declare.
pub const SCHEMA_PERSONAL_FIELDS_MAX: usize = 32;
/// The longest `keep_for` of a retention policy, in years (a month counts as 1/12 of a year,
/// a day as 1/365.25).
pub const RETENTION_KEEP_FOR_YEARS_MAX: u32 = 100;
/// Characters of a retention policy's `keep_for` (an ISO 8601 duration).
pub const RETENTION_KEEP_FOR_LEN_MAX: usize = 64;
/// Longest consumer long poll (`wait_ms` is capped to it).
pub const LONG_POLL_MAX: Duration = Duration::from_secs(25);
/// Events a read returns when no `limit` is given (stream reads, the log, consumer reads).
pub const READ_LIMIT_DEFAULT: usize = 100;
/// Erasure requests a listing looks at when no `limit` is given.
pub const ERASURES_LIMIT_DEFAULT: usize = 100;
/// Audit entries a page holds when no `limit` is given.
pub const AUDIT_LIMIT_DEFAULT: usize = 100;
