//! Every limit the key vault enforces, in one place, with its unit in its name.
//!
//! README.md ("Limits") lists the ones a user meets; change both together.

use std::time::Duration;

/// Keys one call creates or fetches at most (and one rotation batch re-wraps at most).
pub const BATCH_KEYS_MAX: usize = 1_000;
/// Keys one rotation transaction re-wraps, by default (`rotate-kek --batch-size`).
pub const ROTATION_BATCH_DEFAULT: usize = 500;
/// A new KEK epoch starts this long after the active one did (`--kek-rotate-every`).
pub const EPOCH_ROTATE_EVERY_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// A superseded KEK epoch is destroyed this long after it was superseded (`--kek-retain`), so
/// any backup older than rotation plus retention is undecryptable.
pub const EPOCH_RETAIN_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the background epoch task looks whether a rotation or a destruction is due.
pub const EPOCH_CHECK_EVERY_DEFAULT: Duration = Duration::from_secs(60);
/// Shortest pause of the background epoch task between two looks.
pub const EPOCH_CHECK_EVERY_MIN: Duration = Duration::from_millis(10);
/// Tries to settle the KEK versions at open when another process changes them meanwhile.
pub const EPOCH_OPEN_ATTEMPTS: u32 = 5;
/// Stream names and subject ids, in bytes (the charset is Lethe's: `[A-Za-z0-9_.:@-]`).
pub const NAME_LEN_MAX: usize = 200;

// The vault server (`lethe keyvault serve`).

/// Largest request body accepted (a full batch of 1,000 keys is far below this).
pub const BODY_BYTES_MAX: usize = 256 * 1024;
/// Requests handled at once; more wait. Bounds memory and database connections.
pub const CONCURRENT_REQUESTS_MAX: usize = 64;
/// Shortest token accepted, so a forgotten or toy token cannot guard real keys.
pub const TOKEN_LEN_MIN: usize = 16;
/// Time a client has to send a request head, from connecting or since its last response.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 1_024;
/// How long a shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

// The vault client (`HttpVault`).

/// One request to a vault server, whole.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to a vault server.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

// The vault's database, per process.

/// SQLite: pooled connections.
pub const SQLITE_CONNECTIONS_MAX: u32 = 8;
/// SQLite: how long a connection waits for a lock held by another.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite: key ids (or subject ids) bound in one `IN (…)` lookup (SQLite's default limit on
/// bound parameters is 32,766; this stays far below it).
pub const SQLITE_FETCH_KEYS_MAX: usize = 500;
/// SQLite: tries of the TRUNCATE checkpoint after a destroy (a reader holding an old snapshot
/// blocks it), and the pause between two.
pub const SQLITE_CHECKPOINT_ATTEMPTS: u32 = 20;
pub const SQLITE_CHECKPOINT_RETRY: Duration = Duration::from_millis(50);
/// PostgreSQL: the main pool.
pub const POSTGRES_CONNECTIONS_MAX: u32 = 8;
/// PostgreSQL: key creation's own pool — one batch at a time per process (the caller
/// coalesces), plus a spare.
pub const POSTGRES_CREATE_CONNECTIONS_MAX: u32 = 2;
/// PostgreSQL: runs of key creation's one statement per call. A run writes nothing, and the
/// next one starts from a fresh snapshot, when a forget committed between the start of its
/// snapshot and its lock on the forget guard (a few microseconds); more runs than this in a row
/// answer "unavailable, retry".
pub const POSTGRES_CREATE_ATTEMPTS: u32 = 5;
/// PostgreSQL: how long a request waits for a free connection.
pub const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
