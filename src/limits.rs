//! Every limit Lethe enforces, in one place, with its unit in its name.
//!
//! They are documented for users in README.md ("Limits"); change both together.

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
/// Appends the group committer puts into one database transaction.
pub const GROUP_APPENDS_MAX: usize = 512;
/// Events the group committer puts into one database transaction (a single append larger than
/// this still goes alone).
pub const GROUP_EVENTS_MAX: usize = 4_000;
/// Free-text fields of erasure requests and legal holds (reason, requested_by, reference).
pub const REASON_LEN_MAX: usize = 1_000;
