//! The event database, behind one trait.
//!
//! [`Storage`] is everything Lethe asks of an event database: store a group of appends in one
//! transaction, read a stream, read the global log, the erasure steps, tokens, consumers, the
//! audit chain, and say when other processes committed. Two engines implement it, SQLite (the
//! embedded default) and PostgreSQL (production; several processes on one database), through
//! one mechanism:
//! - [`sql`] holds the implementation, written once: a blanket `impl Storage` for every
//!   [`sql::Engine`], generic over sqlx's `Database`. Statements that read the same on both
//!   engines are written there once (`$N` placeholders bind by number on SQLite too, and
//!   `CAST(… AS …)` replaces PostgreSQL's `::type`).
//! - An engine ([`sqlite`], [`postgres`]) supplies only what really differs: its pools, how a
//!   write transaction begins, statements that bind lists (JSON on SQLite, arrays on
//!   PostgreSQL), the append path and log reads (optimistic group writes and `LISTEN`/`NOTIFY`
//!   on PostgreSQL), and the announcements other processes need.
//!
//! What an append *means* (expected versions, idempotent retries, subject binding, positions)
//! is decided once, engine-independently, by [`plan`]; the engines only load the state the plan
//! needs and write what it decided.
//!
//! Architecture invariant: storage never sees key bytes or plaintext — payloads arrive sealed
//! and leave sealed, and the only key-related value it stores is a key *id*. It imports the
//! model and error layers only, never the layers above it.

pub(crate) mod plan;
pub(crate) mod postgres;
pub(crate) mod records;
pub(crate) mod rows;
pub(crate) mod sql;
pub(crate) mod sqlite;
pub(crate) mod token_checks;

mod migrations;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use lethe_keyvault::{KeyId, SystemClock, VaultClock};
use uuid::Uuid;

pub(crate) use records::{
    AppendReply, AtomicAppend, ChangeFeed, Delivery, EncodedEvent, FieldSubject, KeyedStream, RetentionBatch,
    StoredEvent, StreamWrite, SubjectKeyRow, advance_head,
};
pub(crate) use token_checks::TokenChecks;

use crate::error::StorageError;
use crate::model::{
    AuditEntry, AuditQuery, Consumer, Direction, Erasure, ErasureFilter, ErasureStatus, EventSchema, LegalHold,
    LogFilter, NewAuditEntry, RetentionPolicy, SchemaMode, StreamInfo, StreamName, SubjectId, TokenRecord,
};

/// The part of [`Storage`] each engine writes itself: its append path, its log reads, the
/// lookups that bind lists, and what it hears from other processes.
#[async_trait]
pub trait EngineStorage: Send + Sync + 'static {
    /// Stores a group of independent appends in one database transaction. Each append is
    /// checked on its own (a conflict rejects only that append); the `Vec` has one reply per
    /// append, in order. `Err` means the transaction itself failed and nothing was stored.
    async fn append_group(&self, group: &[AtomicAppend]) -> Result<Vec<AppendReply>, StorageError>;
    /// The stored state of these streams (absent: never written).
    async fn stream_states(&self, names: &[&str]) -> Result<HashMap<String, plan::StreamState>, StorageError>;
    /// Which of these subjects have an erasure, unfinished or completed (refused ones do not
    /// count).
    async fn subject_erasures(&self, subjects: &[&str]) -> Result<HashMap<String, plan::SubjectErasure>, StorageError>;
    /// Which of these subject field keys belong to a forgotten subject (the erasure's shred
    /// step marks them, in the transaction that shreds the subject's streams).
    async fn forgotten_field_keys(&self, keys: &[Uuid]) -> Result<HashSet<Uuid>, StorageError>;
    /// The status of each of these erasure requests that the database holds (absent: it does
    /// not, e.g. restored from a backup older than the request). One query.
    async fn erasure_statuses(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, ErasureStatus>, StorageError>;
    /// Up to `limit` events of the global log from position `from` (inclusive), never past the
    /// returned head: every position up to the head is committed, so a reader that continues
    /// from `head + 1` skips nothing.
    async fn read_log(
        &self,
        from: u64,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64), StorageError>;
    /// Starts forwarding what *other* processes do — new commits, revoked keys and tokens — into `feed`
    /// (PostgreSQL LISTEN/NOTIFY). Engines without other writers do nothing.
    async fn watch_foreign_changes(&self, feed: ChangeFeed) -> Result<(), StorageError>;
    /// Whether every write transaction waits for every other one (SQLite's one writer), so
    /// that long background writes hold up appends.
    fn single_writer(&self) -> bool;
    /// How many group writers may call [`EngineStorage::append_group`] at once (PostgreSQL's
    /// parallel group writers; 1 elsewhere).
    fn group_writers(&self) -> usize {
        1
    }
    /// Closes the connection pools.
    async fn close(&self);
}

/// Everything Lethe needs from an event database: what each engine writes itself
/// ([`EngineStorage`]) and the rest, written once for every engine in [`sql`].
#[async_trait]
pub trait Storage: EngineStorage {
    // Appends and reads
    /// Up to `limit` events of a stream from version `from` (inclusive) in `direction`.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StorageError>;
    /// A stream's metadata, or `None` if it was never written.
    async fn stream_info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, StorageError>;
    /// The position readers may read up to (0 for an empty log): everything up to it is
    /// committed or a gap that stays empty (PostgreSQL's parallel group writers).
    async fn head(&self) -> Result<u64, StorageError>;
    /// Streams bound to a subject.
    async fn subject_streams(&self, subject: &SubjectId) -> Result<Vec<StreamInfo>, StorageError>;
    /// Streams holding personal fields of a subject, by name.
    async fn field_streams(&self, subject: &SubjectId) -> Result<Vec<String>, StorageError>;
    /// The change token that the erasure step marking a subject's field key forgotten sets
    /// anew ([`TokenChecks`]): while it is unchanged, no field key was marked forgotten.
    async fn field_key_forgotten_token(&self) -> Result<i64, StorageError>;

    // Event schemas
    /// Every version of every event type's schema, by type and version.
    async fn schemas(&self) -> Result<Vec<EventSchema>, StorageError>;
    /// Registers the next version of `event_type`'s schema, audited (`schema_registered`) in
    /// the same transaction; serialised with other registrations by the audit chain's lock.
    /// A schema and mode equal to the latest version's register nothing.
    async fn register_schema(
        &self,
        event_type: &str,
        mode: SchemaMode,
        schema: &serde_json::Value,
        actor: &str,
    ) -> Result<SchemaRegistration, StorageError>;

    // Erasure requests and legal holds
    /// Records a new erasure request.
    async fn insert_erasure(&self, erasure: &Erasure) -> Result<(), StorageError>;
    /// Records an erasure request under its own id unless one with that id exists (a request
    /// Lethe re-applies, which several processes may do at once); true if it did.
    async fn insert_erasure_if_absent(&self, erasure: &Erasure) -> Result<bool, StorageError>;
    /// Step 1 of an erasure, in one transaction serialised with appends: marks its target's
    /// active streams erased (subject) or deleted (stream), removes their ciphertext, marks a
    /// subject's field key forgotten, and records the lists (bound streams, field streams, the
    /// field key) on the request. Once: a repeat returns the recorded lists unchanged. A
    /// retention request whose subject has a legal hold active now (the store's clock) is
    /// refused instead (returned `refused`, nothing shredded).
    async fn shred_streams(&self, id: Uuid) -> Result<Erasure, StorageError>;
    /// Step 2 done: the vault destroyed `keys`. Other processes are told to evict them.
    async fn mark_keys_destroyed(&self, id: Uuid, count: u64, keys: &[KeyId]) -> Result<(), StorageError>;
    /// Tombstones written at `position`: now waiting for acknowledgements.
    async fn mark_tombstoned(&self, id: Uuid, position: u64) -> Result<(), StorageError>;
    /// Step 3 done: tombstones written (the `$erasures` event at `tombstone_position`).
    async fn mark_erasure_completed(&self, id: Uuid, tombstone_position: Option<u64>) -> Result<(), StorageError>;
    /// Counts dependents already past the tombstone as acknowledged, and completes the request
    /// if none is left waiting.
    async fn settle_acknowledgements(&self, id: Uuid) -> Result<(), StorageError>;
    async fn erasure(&self, id: Uuid) -> Result<Option<Erasure>, StorageError>;
    /// Erasure requests matching `filter`, newest first, with their dependents.
    async fn erasures(&self, filter: &ErasureFilter) -> Result<Vec<Erasure>, StorageError>;
    /// Requests not yet completed (to resume after a crash).
    async fn unfinished_erasures(&self) -> Result<Vec<Erasure>, StorageError>;
    /// Places (or replaces) the legal hold on a subject.
    async fn put_hold(&self, hold: &LegalHold) -> Result<(), StorageError>;
    /// Lifts a subject's hold; false if there was none.
    async fn lift_hold(&self, subject: &SubjectId) -> Result<bool, StorageError>;
    /// The subject's hold, active or lapsed.
    async fn hold(&self, subject: &SubjectId) -> Result<Option<LegalHold>, StorageError>;
    /// Holds active at `now_us` (no `until`, or `until` later).
    async fn active_holds(&self, now_us: i64) -> Result<u64, StorageError>;

    // Retention policies
    /// Stores a retention policy, creating or replacing it by name (a replaced one keeps its
    /// `created_at`), audited (`retention_policy_set`) in the same transaction. `None`: it is
    /// new and [`crate::limits::RETENTION_POLICIES_MAX`] policies exist; nothing stored.
    /// Otherwise the stored policy, and whether it was created.
    async fn put_retention_policy(
        &self,
        policy: &RetentionPolicy,
        actor: &str,
    ) -> Result<Option<(RetentionPolicy, bool)>, StorageError>;
    /// Removes a retention policy, audited (`retention_policy_removed`); false if there was none.
    async fn delete_retention_policy(&self, name: &str, actor: &str) -> Result<bool, StorageError>;
    /// Every retention policy, by name.
    async fn retention_policies(&self) -> Result<Vec<RetentionPolicy>, StorageError>;
    /// The oldest anchor time (microseconds) among the subjects `policy` covers that have no
    /// erasure request (a refused one aside): each subject's newest anchor over its matching
    /// active bound streams. The policy's next due time is this plus its period.
    async fn retention_oldest_anchor(&self, policy: &RetentionPolicy) -> Result<Option<i64>, StorageError>;
    /// Up to `limit` subjects after `after`, by id, that `policy` finds due: every matching
    /// active bound stream's anchor is before `cutoff_us`, and they have no erasure request but
    /// refused ones. Read without a lock (a sweep's scan never holds one); the candidates are
    /// confirmed by [`Storage::file_retention_batch`].
    async fn retention_candidates(
        &self,
        policy: &RetentionPolicy,
        cutoff_us: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError>;
    /// One batch of a retention sweep, in one transaction under the audit chain's lock (so of
    /// several processes one files each request): each of `subjects` still due (looked up
    /// again, a hundred per statement) is filed as an erasure request of the policy (refused at
    /// once while a legal hold is active at `now_us`; a subject whose hold refused a retention
    /// request already is left until the hold lapses), audited (`retention_erasure_filed`).
    /// Nothing if the policy was removed or changed meanwhile.
    async fn file_retention_batch(
        &self,
        policy: &RetentionPolicy,
        cutoff_us: i64,
        now_us: i64,
        subjects: &[String],
    ) -> Result<RetentionBatch, StorageError>;

    // Reconciliation with the key vault
    /// Up to `limit` streams that have a key, by name, after `after`.
    async fn keyed_streams(&self, after: Option<&str>, limit: usize) -> Result<Vec<KeyedStream>, StorageError>;
    /// Up to `limit` subjects' field keys, by subject, after `after`.
    async fn subject_key_rows(&self, after: Option<&str>, limit: usize) -> Result<Vec<SubjectKeyRow>, StorageError>;

    // API tokens
    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StorageError>;
    async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StorageError>;
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError>;
    /// Marks a token revoked; false if there is no such (unrevoked) token. On PostgreSQL the
    /// revocation is also announced to every other process (at COMMIT), which forget the
    /// tokens they had verified.
    async fn revoke_token(&self, id: Uuid) -> Result<bool, StorageError>;

    // Consumers and webhook deliveries
    /// Creates a consumer or updates its filter and flag (its checkpoint stays).
    async fn upsert_consumer(
        &self,
        name: &str,
        filter: &LogFilter,
        erasure_dependent: bool,
    ) -> Result<Consumer, StorageError>;
    async fn consumer(&self, name: &str) -> Result<Option<Consumer>, StorageError>;
    async fn consumers(&self) -> Result<Vec<Consumer>, StorageError>;
    /// Moves a consumer's checkpoint forward to `position` (never back); `None`: no such consumer.
    async fn ack_consumer(&self, name: &str, position: u64) -> Result<Option<Consumer>, StorageError>;
    /// Deletes a consumer; as a dependent of unfinished erasures it is marked removed (which
    /// may complete them). False if there was no such consumer.
    async fn delete_consumer(&self, name: &str) -> Result<bool, StorageError>;
    /// Sets (or, with `None`, removes) a consumer's webhook; false if there is no such consumer.
    async fn set_consumer_webhook(&self, name: &str, webhook: Option<(&str, &str)>) -> Result<bool, StorageError>;
    /// Webhook deliveries due now (dependents with a webhook, not acknowledged, whose next
    /// attempt time has come), each claimed for `lease` so that one worker tries it at a time.
    async fn claim_due_deliveries(
        &self,
        now_us: i64,
        lease_us: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StorageError>;
    /// Records a delivery attempt: success acknowledges the dependent (and may complete the
    /// erasure); failure records the error and when to try again.
    async fn record_delivery(
        &self,
        delivery: &Delivery,
        outcome: Result<(), String>,
        next_attempt_us: i64,
    ) -> Result<(), StorageError>;

    // The audit chain
    /// Appends an entry to the audit chain (serialised by the chain head's row lock).
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry, StorageError>;
    /// Appends `entry` unless an entry was already appended under `once_key` (by this or any
    /// other process); true if it was appended now. One transaction.
    async fn append_audit_once(&self, once_key: &str, entry: &NewAuditEntry) -> Result<bool, StorageError>;
    /// Audits each hold that lapsed by `now_us` and was not audited yet; returns how many.
    async fn audit_lapsed_holds(&self, now_us: i64) -> Result<u64, StorageError>;
    /// Audit entries after `query.after`, oldest first.
    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError>;
    /// The chain head: last `seq` and its hash.
    async fn audit_head(&self) -> Result<(u64, [u8; 32]), StorageError>;
}

/// What [`Storage::register_schema`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaRegistration {
    /// A new version was stored.
    Registered(EventSchema),
    /// The latest version already has this schema and mode: nothing stored.
    Unchanged(EventSchema),
    /// The type has [`crate::limits::SCHEMA_VERSIONS_MAX`] versions already.
    TooManyVersions,
    /// [`crate::limits::SCHEMA_TYPES_MAX`] types have schemas already.
    TooManyTypes,
}

/// Opens an event database by URL (`sqlite://path` or `postgres://…`), applying migrations;
/// appends record the time from `clock`.
pub async fn open_with_clock(url: &str, clock: Arc<dyn VaultClock>) -> Result<Arc<dyn Storage>, StorageError> {
    open_with(url, clock, 1).await
}

/// [`open_with_clock`], with `postgres_group_writers` group writers on PostgreSQL (ignored on
/// SQLite, which has one writer).
pub async fn open_with(
    url: &str,
    clock: Arc<dyn VaultClock>,
    postgres_group_writers: usize,
) -> Result<Arc<dyn Storage>, StorageError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStorage::open(url, clock).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(
            postgres::PostgresStorage::open(url, clock, postgres_group_writers).await?,
        ))
    } else {
        Err(StorageError::UnsupportedUrl)
    }
}

/// Opens an event database by URL on the system clock (tools that work on a database
/// without opening a store).
pub async fn open(url: &str) -> Result<Arc<dyn Storage>, StorageError> {
    open_with_clock(url, Arc::new(SystemClock)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RetentionAnchor, RetentionPeriod};

    fn policy(keep_for: &str) -> RetentionPolicy {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        RetentionPolicy {
            name: "users-2y".to_owned(),
            stream_prefix: "user-".to_owned(),
            keep_for: RetentionPeriod::parse(keep_for).unwrap_or_else(|e| panic!("{e}")),
            after: RetentionAnchor::LastEvent,
            created_at: at,
            updated_at: at,
        }
    }

    /// A sweep reads its policy, then files in batches; a batch whose policy was changed (or
    /// removed) in between files nothing and says so, so that no request is filed under a
    /// period its policy no longer has.
    async fn a_batch_of_a_changed_policy_files_nothing(storage: Arc<dyn Storage>) {
        let read = policy("P2Y");
        storage.put_retention_policy(&read, "test").await.unwrap();
        let now = 1_900_000_000_000_000;
        let unchanged = storage
            .file_retention_batch(&read, now, now, &["456".to_owned()])
            .await
            .unwrap();
        assert!(!unchanged.policy_changed);

        storage.put_retention_policy(&policy("P3Y"), "test").await.unwrap();
        let changed = storage
            .file_retention_batch(&read, now, now, &["456".to_owned()])
            .await
            .unwrap();
        assert!(changed.policy_changed, "changed since the sweep read it");
        assert!(changed.filed.is_empty());

        storage.delete_retention_policy("users-2y", "test").await.unwrap();
        let removed = storage
            .file_retention_batch(&read, now, now, &["456".to_owned()])
            .await
            .unwrap();
        assert!(removed.policy_changed, "removed since the sweep read it");
        let erasures = storage
            .erasures(&crate::model::ErasureFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(erasures.is_empty(), "nothing was filed");
        storage.close().await;
    }

    #[tokio::test]
    async fn a_batch_of_a_changed_policy_files_nothing_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("events.db").display());
        a_batch_of_a_changed_policy_files_nothing(open(&url).await.unwrap()).await;
    }

    /// On PostgreSQL when `LETHE_TEST_POSTGRES_URL` is set (in its own database, dropped after).
    #[tokio::test]
    async fn a_batch_of_a_changed_policy_files_nothing_postgres() {
        let Some(db) = TestPostgres::create().await else {
            return;
        };
        a_batch_of_a_changed_policy_files_nothing(open(&db.url).await.unwrap()).await;
        db.drop_database().await;
    }

    /// A database of its own on the server `LETHE_TEST_POSTGRES_URL` names (none when unset).
    struct TestPostgres {
        admin: sqlx::PgPool,
        name: String,
        url: String,
    }

    impl TestPostgres {
        async fn create() -> Option<Self> {
            let server = std::env::var("LETHE_TEST_POSTGRES_URL").ok()?;
            let name = format!("lethe_u_{}", uuid::Uuid::new_v4().simple());
            let admin = sqlx::PgPool::connect(&server).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
            let base = server.split('?').next().unwrap_or(&server);
            let scheme_end = base.find("://").map_or(0, |i| i + 3);
            let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
            let url = format!("{}/{name}", &base[..host_end]);
            Some(Self { admin, name, url })
        }

        async fn drop_database(self) {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", self.name)))
                .execute(&self.admin)
                .await
                .unwrap();
        }
    }

    /// `explain` of `query` with its one parameter, `$1`, written in as a string literal (so
    /// that the statement is planned for a value, as it is when it runs with one bound).
    fn explained(explain: &str, query: &str, subject: &str) -> String {
        assert!(query.contains("$1") && !query.contains("$2"), "one parameter: {query}");
        format!("{explain} {}", query.replace("$1", &format!("'{subject}'")))
    }

    /// The streams holding a subject's personal fields (for its erasure request, the subject
    /// view and the export) are found through the field index, never by reading every event:
    /// SQLite searches the FTS5 table by its MATCH and the events by their positions.
    #[tokio::test]
    async fn field_streams_are_found_through_the_field_index_sqlite() {
        use sql::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("events.db").display());
        let storage = sqlite::SqliteStorage::open(&url, Arc::new(SystemClock)).await.unwrap();
        let query = explained("EXPLAIN QUERY PLAN", sqlite::SqliteStorage::SELECT_FIELD_STREAMS, "p-1");
        let details: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(query))
            .fetch_all(storage.pools().reader)
            .await
            .unwrap()
            .iter()
            .map(|row| sqlx::Row::get(row, "detail"))
            .collect();
        assert!(
            details
                .iter()
                .any(|d| d.contains("field_index VIRTUAL TABLE INDEX") && d.contains(":M")),
            "the FTS5 table is searched by its MATCH: {details:?}"
        );
        assert!(
            details
                .iter()
                .any(|d| d.starts_with("SEARCH events USING INTEGER PRIMARY KEY")),
            "events are looked up by position: {details:?}"
        );
        assert!(
            !details.iter().any(|d| d.starts_with("SCAN events")),
            "no scan of the events: {details:?}"
        );
        storage.close().await;
    }

    /// The same on PostgreSQL: the GIN index over the events' `field_subjects` answers the
    /// query (with sequential scans priced out, a plan that could not use the index would
    /// still scan the table; an empty table would otherwise make a scan the cheapest plan).
    #[tokio::test]
    async fn field_streams_are_found_through_the_field_index_postgres() {
        use sql::Engine as _;
        let Some(db) = TestPostgres::create().await else {
            return;
        };
        let storage = postgres::PostgresStorage::open(&db.url, Arc::new(SystemClock), 1)
            .await
            .unwrap();
        let mut conn = storage.pools().reader.acquire().await.unwrap();
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .unwrap();
        let query = explained(
            "EXPLAIN (COSTS OFF)",
            postgres::PostgresStorage::SELECT_FIELD_STREAMS,
            "p-1",
        );
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Scan on events_by_field_subject"),
            "the GIN index answers: {plan}"
        );
        assert!(!plan.contains("Seq Scan"), "no scan of the events: {plan}");
        drop(conn);
        storage.close().await;
        db.drop_database().await;
    }
}
