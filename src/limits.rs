//! Every limit Lethe enforces, in one place, with its unit in its name (those a client sees are
//! defined with the wire types, in `lethe_wire::limits`, and re-exported here): input limits first,
//! then the HTTP server's (the `_DEFAULT`s are settings of `lethe serve`), the bounds of what
//! the store holds in memory, database connections, and the timeouts, intervals and retries of
//! the background work. The key vault's are in `lethe_keyvault::limits`.
//!
//! They are documented for users in README.md ("Limits"); change both together.

use std::time::Duration;

/// The limits a client sees — input sizes, page sizes, defaults — are defined with the wire types
/// (`lethe_wire::limits`), so that the server, its OpenAPI document and the client share them.
pub use lethe_wire::limits::{
    APPEND_BYTES_MAX, APPEND_EVENTS_MAX, APPEND_STREAMS_MAX, AUDIT_LIMIT_DEFAULT, AUDIT_PAGE_MAX,
    ERASURES_LIMIT_DEFAULT, ERASURES_LIST_MAX, EVENT_BYTES_MAX, EVENT_TYPE_LEN_MAX, FILTER_TYPES_MAX, LONG_POLL_MAX,
    NAME_LEN_MAX, READ_LIMIT_DEFAULT, READ_PAGE_EVENTS_MAX, REASON_LEN_MAX, RETENTION_KEEP_FOR_LEN_MAX,
    RETENTION_KEEP_FOR_YEARS_MAX, SCHEMA_BYTES_MAX, SCHEMA_PERSONAL_FIELDS_MAX, TOKEN_NAME_LEN_MAX,
    WEBHOOK_SECRET_LEN_MAX, WEBHOOK_SECRET_LEN_MIN, WEBHOOK_URL_LEN_MAX,
};

/// Appends the group committer puts into one database transaction.
pub const GROUP_APPENDS_MAX: usize = 512;
/// Events the group committer puts into one database transaction (a single append larger than
/// this still goes alone).
pub const GROUP_EVENTS_MAX: usize = 4_000;
/// Erasure requests one report covers at most.
pub const REPORT_ERASURES_MAX: usize = 100_000;
/// Event types that may have a schema.
pub const SCHEMA_TYPES_MAX: usize = 1_000;
/// Versions one event type's schema may have.
pub const SCHEMA_VERSIONS_MAX: usize = 100;
/// Bytes of a JSON pointer in a schema (a personal field's, or its subject's).
pub const SCHEMA_POINTER_LEN_MAX: usize = 512;
/// Retention policies a store may have (`PUT /admin/retention/{name}`).
pub const RETENTION_POLICIES_MAX: usize = 100;
/// Shortest admin token accepted from `LETHE_ADMIN_TOKEN`.
pub const ADMIN_TOKEN_LEN_MIN: usize = 16;

// The erasure journal (`crate::journal`) and reconciliation.

/// Bytes of one line of the erasure journal, its newline excluded. A line lists at most
/// [`JOURNAL_ENTRY_KEYS_MAX`] streams and keys (about 250 KiB with the longest stream names),
/// so this is never reached by a line Lethe wrote; a longer one stops the journal's opening.
pub const JOURNAL_LINE_BYTES_MAX: usize = 1024 * 1024;
/// Streams (and as many keys) one journal line lists; an erasure that shredded more is written
/// as several consecutive lines (`part` of `parts`), appended and fsynced together.
pub const JOURNAL_ENTRY_KEYS_MAX: usize = 1_000;
/// Journal entries the replay at open handles together: one vault lookup and one
/// event-database query for them all.
pub const JOURNAL_REPLAY_BATCH_ENTRIES: usize = 500;
/// Erasure requests a process remembers as journaled (its own appends, other processes' appends
/// it read, the replay's), so that a request driven twice is not journaled twice; a request
/// re-driven after a restart is looked up in the file instead.
pub const JOURNAL_RECENT_REQUESTS_MAX: usize = 10_000;
/// Streams (with their keys) one page of reconciliation compares: one event-database query and
/// one vault lookup each (at most the vault's `BATCH_KEYS_MAX` keys).
pub const RECONCILE_PAGE_STREAMS: usize = 500;
/// Ids a reconciliation report lists per list; the counts beside them are always whole.
pub const RECONCILE_REPORT_IDS_MAX: usize = 1_000;

// The HTTP server (`lethe serve`). The `_DEFAULT`s are settings (`crate::http::HttpLimits`,
// `ServeConfig`); the others are fixed.

/// Request bodies, counted on the raw bytes (chunked bodies too) (`LETHE_BODY_LIMIT_BYTES`).
pub const BODY_BYTES_DEFAULT: usize = 4 * 1024 * 1024;
/// Open SSE subscriptions at once; more get 503 `too_many_subscribers` (`LETHE_SUBSCRIBERS_MAX`).
pub const SUBSCRIBERS_DEFAULT: usize = 1_024;
/// Whole-request timeout for everything but SSE and consumer long polls
/// (`LETHE_REQUEST_TIMEOUT_SECS`).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// SSE keep-alive comment interval.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Open connections at most (each holds a task and a socket); more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 4_096;
/// How long shutdown waits for in-flight requests before closing anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head by default (`LETHE_HEADER_TIMEOUT_SECS`).
pub const HEADER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

// Internal bounds: what the store holds in memory or asks for at once. Not input limits, but
// limits all the same, so that nothing grows without one.

/// DEKs the key cache holds by default (`StoreConfig::key_cache_keys_max`; a DEK is 32 bytes).
pub const KEY_CACHE_KEYS_DEFAULT: usize = 10_000;
/// Destroyed key ids remembered so that a vault fetch racing a forget cannot cache them again.
pub const REVOKED_KEYS_MAX: usize = 100_000;
/// Subjects whose field key (its id, and whether its key row is stored) a process remembers at
/// most (`core::field_index`); also the bound of each change token's set of items found clear
/// (`storage::token_checks`).
pub const FIELD_INDEX_CACHE_ENTRIES_MAX: usize = 100_000;
/// Verified API tokens remembered at most (a deployment has a handful; the bound is for safety).
pub const TOKEN_CACHE_ENTRIES_MAX: usize = 1_024;
/// Appends waiting for the writer before submitters wait for room.
pub const WRITER_QUEUE_APPENDS_MAX: usize = 4 * GROUP_APPENDS_MAX;
/// Requests waiting for a coalescing task before callers wait for room.
pub const COALESCE_QUEUE_MAX: usize = 1_024;
/// Events a subscription or an export reads per page (and holds, still encrypted).
pub const BUFFERED_PAGE_EVENTS: usize = 500;
/// Catch-up pages read ahead and waiting for the caller, besides the one being read and the
/// one the reader task holds: the read-ahead is at most three pages.
pub const READ_AHEAD_PAGES_WAITING_MAX: usize = 1;
/// Webhook deliveries one round tries at most.
pub const WEBHOOK_ROUND_DELIVERIES_MAX: usize = 100;

// Database connections, per process.

/// SQLite: concurrent readers beside the one writer connection.
pub const SQLITE_READ_CONNECTIONS_MAX: u32 = 8;
/// SQLite: how long a connection waits for a lock held by another connection (or process).
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// PostgreSQL: the main pool (reads, erasures, tokens, consumers, the audit chain).
pub const POSTGRES_CONNECTIONS_MAX: u32 = 16;
/// PostgreSQL: the append path's own pool — one writer task and one stream-state reader at a
/// time, plus the locked retry of a lost optimistic write.
pub const POSTGRES_WRITE_CONNECTIONS_MAX: u32 = 4;
/// PostgreSQL: parallel group writers per process at most (`StoreConfig::postgres_group_writers`).
pub const POSTGRES_GROUP_WRITERS_MAX: usize = 16;
/// PostgreSQL, parallel group writers: how often each process looks for reservations left by
/// a session that ended (a crashed process) and removes them, so readers move past their gap.
pub const RESERVATION_REAP_EVERY: Duration = Duration::from_secs(1);
/// PostgreSQL, parallel group writers: a reservation this old is reaped even though its session
/// is alive (a writer that hung between reserving and writing). Groups write in milliseconds.
pub const RESERVATION_ABANDONED_AFTER: Duration = Duration::from_secs(60);
/// PostgreSQL, parallel group writers: how often a committed group, or a shred, waiting for
/// older reservations to settle looks again when no commit woke it.
pub const RESERVATION_WAIT_POLL: Duration = Duration::from_millis(2);
/// PostgreSQL, parallel group writers: how often one group is planned and written again after
/// losing a race to another group before it fails.
pub const RESERVED_GROUP_ATTEMPTS: u32 = 8;
/// PostgreSQL: how long a request waits for a free connection.
pub const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// PostgreSQL: destroyed key ids per `NOTIFY` (200 uuids of 36 characters and commas stay under
/// its 8000-byte payload limit).
pub const REVOKED_KEYS_PER_NOTIFY: usize = 200;

// Timeouts, intervals and retries.

/// How long a verified API token is trusted without asking the database again, by default
/// (`StoreConfig::token_cache_ttl`). Revoking a token takes effect at once in the process that
/// revoked it and, on PostgreSQL, as soon as the notification arrives in every other process;
/// this bounds it for a process whose listener was reconnecting (which also forgets every
/// verified token).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);
/// How often a store retries unfinished erasures (e.g. after the vault was unreachable) and
/// audits lapsed legal holds.
pub const ERASURE_RESUME_INTERVAL: Duration = Duration::from_secs(10);

/// How often each store sweeps its retention policies by default
/// (`StoreConfig::retention_sweep_every`, `lethe serve --retention-sweep-every`).
pub const RETENTION_SWEEP_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Subjects one transaction of a retention sweep files: they are found without a lock, each
/// batch is its own short transaction (on SQLite followed by a pause as long), so the sweep
/// never holds the writer (SQLite) or the audit chain's lock (PostgreSQL) for long.
pub const RETENTION_SWEEP_BATCH_SUBJECTS: usize = 100;

/// How often each store asks the key vault for its KEK epochs, to record rotations and
/// destroyed epochs in the audit trail.
pub const KEK_AUDIT_INTERVAL: Duration = Duration::from_secs(60);
/// How often an idle subscription reads the log again, in case a commit notification was lost
/// (another process's `NOTIFY` during a reconnect).
pub const SUBSCRIPTION_IDLE_POLL: Duration = Duration::from_millis(500);
/// How often pending webhook deliveries are looked for, by default (`StoreConfig::webhook_poll`).
pub const WEBHOOK_POLL_DEFAULT: Duration = Duration::from_millis(500);
/// The first retry delay of a failed webhook delivery, by default
/// (`StoreConfig::webhook_retry_base`); it doubles up to [`WEBHOOK_BACKOFF_MAX`].
pub const WEBHOOK_RETRY_BASE_DEFAULT: Duration = Duration::from_secs(1);
/// Longest wait between two attempts of one webhook delivery.
pub const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// How long one worker owns a claimed webhook delivery before another may try it.
pub const WEBHOOK_CLAIM_LEASE: Duration = Duration::from_secs(60);
/// One webhook delivery request, whole.
pub const WEBHOOK_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/readyz` waits for each dependency (event database, key vault) to answer.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (say, out of file descriptors) before the next.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// PostgreSQL: pause before listening again after the notification connection broke.
pub const LISTEN_RETRY: Duration = Duration::from_secs(1);
