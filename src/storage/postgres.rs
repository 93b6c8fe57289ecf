//! The PostgreSQL engine: production, several Lethe processes on one database.
//!
//! Ordering (Guarantee 4): every write transaction first locks the single `log_head` row
//! (`SELECT … FOR UPDATE`), assigns positions after it, and holds that lock until COMMIT. So
//! write transactions commit one after the other in position order, and a reader that sees
//! position P can never later see a new event at a position ≤ P — whichever process wrote it.
//! A plain `bigserial` would hand out positions at INSERT time and let a later position commit
//! first, which a tailing reader would skip forever. Group commit (many appends per transaction)
//! is what keeps this serialisation from costing throughput; see ARCHITECTURE.md.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use lethe_keyvault::{KeyId, VaultClock};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};
use tokio::sync::watch;
use uuid::Uuid;

use super::plan::{self, ExistingEvent, StreamState, SubjectErasure};
use super::rows::{DecodeRow, erasure_statuses, parse_status, select_erasures, to_i64, to_u64};
use super::sql::{Engine, Pools};
use super::{AppendReply, AtomicAppend, ChangeFeed, EngineStorage, StoredEvent, advance_head};
use crate::error::StorageError;
use crate::limits::{
    LISTEN_RETRY, POSTGRES_ACQUIRE_TIMEOUT, POSTGRES_CONNECTIONS_MAX, POSTGRES_WRITE_CONNECTIONS_MAX,
    REVOKED_KEYS_PER_NOTIFY,
};
use crate::model::{ErasureStatus, LogFilter, StreamStatus};

/// The NOTIFY channel on which every commit announces the new head position.
const COMMITS_CHANNEL: &str = "lethe_commits";
/// The NOTIFY channel on which erasures announce destroyed keys (comma-separated ids).
const REVOKED_CHANNEL: &str = "lethe_revoked_keys";
/// The NOTIFY channel on which a token revocation is announced (no payload: every process
/// forgets all the tokens it verified, as the revoking process does).
const TOKENS_CHANNEL: &str = "lethe_revoked_tokens";
/// Announces a schema registration: other processes read the registry again.
const SCHEMAS_CHANNEL: &str = "lethe_schemas";
const SELECT_ERASING: &str = "SELECT DISTINCT subject, status FROM erasure_requests \
     WHERE kind = 'subject' AND status <> 'refused' AND subject = ANY($1)";
const SELECT_STATES: &str = "SELECT name, version, status, subject, key_id FROM streams WHERE name = ANY($1)";
/// Session settings of the append path's connections. Each of its statements is planned once
/// per connection, not at every execution: planning was a third of the time PostgreSQL spent
/// on appends (the group write alone took 0.4 ms to plan). A plan made once must stay good
/// while the tables grow from empty to millions of rows, and every lookup on this path is by
/// a unique or indexed key by design, so these connections do not consider whole-table scans
/// or hash and merge joins: every plan is index lookups and nested loops, which is what
/// a plan for a big table would be anyway. (The other pool plans each statement for its own
/// parameters instead: its queries, such as reports, may rightly scan.)
const WRITE_PATH_PLANS: [(&str, &str); 4] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

pub struct PostgresStorage {
    pool: PgPool,
    /// The append path's connections (group writes, stream-state reads): see [`WRITE_PATH_PLANS`].
    append_pool: PgPool,
    /// Tells the LISTEN task to stop (it holds a pool connection that `close` waits for).
    stop_listening: watch::Sender<bool>,
    /// Groups left to write under the lock after an optimistic write lost (`append_group`).
    optimistic_lost: AtomicU32,
    /// Where appends read the time they record.
    clock: Arc<dyn VaultClock>,
}

impl PostgresStorage {
    pub async fn open(url: &str, clock: Arc<dyn VaultClock>) -> Result<Self, StorageError> {
        // The main pool plans every statement for its own parameters, never from a cached
        // generic plan: the tables start empty and grow faster than autovacuum's ANALYZE
        // follows, and a plan cached while `streams` was empty kept scanning it in full for
        // every lookup by name (the bench's single appends spent most of PostgreSQL's CPU
        // comparing stream names). The append path has its own pool: see WRITE_PATH_PLANS.
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_CONNECTIONS_MAX)
            .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
            .connect_with(options.clone().options([("plan_cache_mode", "force_custom_plan")]))
            .await?;
        let append_pool = PgPoolOptions::new()
            .max_connections(POSTGRES_WRITE_CONNECTIONS_MAX)
            .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
            .connect_with(options.options(WRITE_PATH_PLANS))
            .await?;
        // The migrator takes an advisory lock, so processes starting together migrate once.
        super::migrations::migrator(super::migrations::POSTGRES)
            .await?
            .run(&pool)
            .await?;
        Ok(Self {
            pool,
            append_pool,
            stop_listening: watch::channel(false).0,
            optimistic_lost: AtomicU32::new(0),
            clock,
        })
    }
}

/// The log head (position and generation) and the stored states of the named streams: one
/// row per stream found, or one row of NULL stream columns if none is.
const SELECT_HEAD_AND_STATES: &str = "SELECT s.name, s.version, s.status, s.subject, s.key_id, h.position, h.generation \
     FROM log_head h LEFT JOIN streams s ON s.name = ANY($1) WHERE h.id = 1";

/// A group's writes — its events, its new streams, its streams' new versions, the new head
/// with its notification — in one statement, applied only if the head is still where the plan
/// was made ($23, $24); it answers one row if it was, none if not.
///
/// The `head` CTE is what decides and what locks: its UPDATE waits for the commit-order lock
/// (the `log_head` row) and, if another transaction committed meanwhile, re-checks its WHERE
/// against that transaction's row — whose `generation` every lock holder raises (appends here,
/// shredding in `shred_streams`). Every other sub-statement writes only `WHERE EXISTS (SELECT 1
/// FROM head)`. So the statement applies exactly when no lock holder committed since the plan
/// read the head, i.e. when everything the plan read is still current; it then holds the lock
/// until it commits, like a locked transaction. Data-modifying CTEs all run, each on its own rows.
const WRITE_GROUP: &str = "WITH head AS ( \
       UPDATE log_head SET position = $20, generation = generation + 1 \
       WHERE id = 1 AND position = $23 AND generation = $24 RETURNING position), \
     new_events AS ( \
       INSERT INTO events \
         (position, stream, version, event_id, event_type, payload, metadata, key_id, digest, recorded_at, \
          schema_version) \
       SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], \
                            $6::bytea[], $7::text[], $8::uuid[], $9::bytea[], $10::bigint[], $25::bigint[]) \
       WHERE EXISTS (SELECT 1 FROM head)), \
     new_subject_keys AS ( \
       INSERT INTO subject_keys (subject, key_id) \
       SELECT * FROM UNNEST($26::text[], $27::uuid[]) WHERE EXISTS (SELECT 1 FROM head) \
       ON CONFLICT DO NOTHING), \
     new_field_streams AS ( \
       INSERT INTO field_streams (subject, stream) \
       SELECT * FROM UNNEST($28::text[], $29::text[]) WHERE EXISTS (SELECT 1 FROM head) \
       ON CONFLICT DO NOTHING), \
     new_streams AS ( \
       INSERT INTO streams (name, subject, status, version, key_id, created_at) \
       SELECT u.name, u.subject, u.status, u.version, u.key_id, $16 \
       FROM UNNEST($11::text[], $12::text[], $13::text[], $14::bigint[], $15::uuid[]) \
            AS u(name, subject, status, version, key_id) \
       WHERE EXISTS (SELECT 1 FROM head)), \
     old_streams AS ( \
       UPDATE streams s SET version = u.version, key_id = u.key_id \
       FROM UNNEST($17::text[], $18::bigint[], $19::uuid[]) AS u(name, version, key_id) \
       WHERE s.name = u.name AND EXISTS (SELECT 1 FROM head)), \
     notified AS (SELECT pg_notify($22, position::text) FROM head WHERE $21) \
SELECT position, (SELECT count(*) FROM notified) FROM head";

/// After an optimistic group write loses (another lock holder committed between its read and
/// its write), this many groups take the lock instead.
const OPTIMISTIC_PAUSE_GROUPS: u32 = 16;

impl Engine for PostgresStorage {
    type Db = Postgres;

    fn now_us(&self) -> i64 {
        self.clock.now_micros()
    }

    fn pools(&self) -> Pools<'_, Postgres> {
        // One pool for both: the append path has its own (`append_pool`), used by the
        // engine's own methods.
        Pools {
            reader: &self.pool,
            writer: &self.pool,
        }
    }

    const SELECT_AUDIT_HEAD_LOCKED: &'static str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";
    const SELECT_ERASURE_LOCKED: &'static str = concat!(select_erasures!(), "WHERE id = $1 FOR UPDATE");

    async fn dependent_rows(&self, ids: &[Uuid]) -> Result<Vec<PgRow>, StorageError> {
        Ok(sqlx::query(
            "SELECT erasure_id, consumer, acknowledged_at, removed_at, delivery_attempts, last_attempt_at, \
             last_delivery_error FROM erasure_dependents WHERE erasure_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn lock_commit_order(conn: &mut PgConnection) -> Result<(), StorageError> {
        // The commit-order lock, held until COMMIT. Raising the generation makes an optimistic
        // group write planned before this commit lose (see `WRITE_GROUP`).
        sqlx::query("UPDATE log_head SET generation = generation + 1 WHERE id = 1")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn remove_payloads(conn: &mut PgConnection, streams: &[&str]) -> Result<(), StorageError> {
        sqlx::query("UPDATE events SET payload = NULL WHERE stream = ANY($1)")
            .bind(streams)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// NOTIFY payloads are limited to 8000 bytes, so the ids go in chunks.
    async fn announce_revoked_keys(conn: &mut PgConnection, keys: &[KeyId]) -> Result<(), StorageError> {
        for chunk in keys.chunks(REVOKED_KEYS_PER_NOTIFY) {
            let ids: Vec<String> = chunk.iter().map(|k| k.0.to_string()).collect();
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(REVOKED_CHANNEL)
                .bind(ids.join(","))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    async fn announce_schemas(conn: &mut PgConnection) -> Result<(), StorageError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(SCHEMAS_CHANNEL)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn announce_revoked_tokens(conn: &mut PgConnection) -> Result<(), StorageError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(TOKENS_CHANNEL)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl EngineStorage for PostgresStorage {
    async fn append_group(&self, group: &[AtomicAppend]) -> Result<Vec<AppendReply>, StorageError> {
        // The optimistic way first, unless it lost lately: then other lock holders are busy
        // (another process appending) and the lock is the cheaper way for a while.
        let lost = self.optimistic_lost.load(Ordering::Relaxed);
        if lost == 0 {
            let mut conn = self.append_pool.acquire().await?;
            let read = read_for_plan(&mut conn, group, false).await?;
            let (head, generation) = (read.head, read.generation);
            let plan = read.plan(group, self.clock.now_micros());
            let ok = write_group(&mut conn, &plan, head, generation).await?;
            if ok {
                return Ok(plan.replies);
            }
            self.optimistic_lost.store(OPTIMISTIC_PAUSE_GROUPS, Ordering::Relaxed);
        } else {
            self.optimistic_lost.store(lost - 1, Ordering::Relaxed);
        }

        let mut tx = self.append_pool.begin().await?;
        let read = read_for_plan(&mut tx, group, true).await?;
        let (head, generation) = (read.head, read.generation);
        let plan = read.plan(group, self.clock.now_micros());
        if !write_group(&mut tx, &plan, head, generation).await? {
            return Err(StorageError::Corrupt(
                "the log head changed while this transaction held its lock".into(),
            ));
        }
        tx.commit().await?;
        Ok(plan.replies)
    }

    async fn read_log(
        &self,
        from: u64,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64), StorageError> {
        let types: Option<&[String]> = (!filter.types.is_empty()).then_some(filter.types.as_slice());
        let read = |last: i64| {
            sqlx::query(READ_LOG_PAGE)
                .bind(to_i64(from))
                .bind(last)
                .bind(filter.stream_prefix.as_deref())
                .bind(types)
                .bind(to_i64(limit as u64))
                .fetch_all(&self.pool)
        };
        // Unfiltered, a page is normally exactly positions from..=from+limit-1 (positions have
        // no gaps: a failed transaction rolls its `log_head` update back too), so read that
        // range first. It keeps every page cheap whatever the planner estimates: without
        // statistics (a freshly loaded table, before autovacuum's ANALYZE) the open range up to
        // the head was bitmap-scanned, joined and sorted in full for every page, which made a
        // catch-up from position 1 quadratic (seconds per page at 200k events). Only a short
        // answer before the head (a gap after all) falls through to the open range, so the
        // result is the same as before in every case.
        let unfiltered = filter.stream_prefix.is_none() && filter.types.is_empty();
        let last = if unfiltered {
            to_i64(from.saturating_add((limit as u64).saturating_sub(1)))
        } else {
            i64::MAX
        };
        let (events, head) = decode_page(&read(last).await?)?;
        if events.len() >= limit || last >= head {
            return Ok((events, to_u64(head, "head")?));
        }
        // A short unfiltered page before the head: the open range up to that head. This
        // statement has a later snapshot, but every position up to that head was committed
        // already, so it reads the same rows; the page keeps the head it was read against.
        let (events, _) = decode_page(&read(head).await?)?;
        Ok((events, to_u64(head, "head")?))
    }

    async fn stream_states(&self, names: &[&str]) -> Result<HashMap<String, StreamState>, StorageError> {
        let rows = sqlx::query(SELECT_STATES)
            .bind(names)
            .fetch_all(&self.append_pool)
            .await?;
        rows.iter().map(DecodeRow::decode_stream_state).collect()
    }

    async fn subject_erasures(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectErasure>, StorageError> {
        let rows: Vec<(String, String)> = sqlx::query_as(SELECT_ERASING)
            .bind(subjects)
            .fetch_all(&self.pool)
            .await?;
        Ok(plan::subject_erasures(rows))
    }

    async fn forgotten_field_keys(&self, keys: &[Uuid]) -> Result<HashSet<Uuid>, StorageError> {
        let rows: Vec<Uuid> =
            sqlx::query_scalar("SELECT key_id FROM subject_keys WHERE forgotten_at IS NOT NULL AND key_id = ANY($1)")
                .bind(keys)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    async fn erasure_statuses(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, ErasureStatus>, StorageError> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, status FROM erasure_requests WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        erasure_statuses(rows)
    }

    async fn watch_foreign_changes(&self, feed: ChangeFeed) -> Result<(), StorageError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([COMMITS_CHANNEL, REVOKED_CHANNEL, TOKENS_CHANNEL, SCHEMAS_CHANNEL])
            .await?;
        let mut stop = self.stop_listening.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = feed.commits.closed() => return,
                    _ = stop.changed() => return,
                    received = listener.recv() => match received {
                        Ok(note) if note.channel() == COMMITS_CHANNEL => {
                            if let Ok(head) = note.payload().parse::<u64>() {
                                advance_head(&feed.commits, head);
                            }
                        }
                        Ok(note) if note.channel() == TOKENS_CHANNEL => (feed.forget_verified_tokens)(),
                        Ok(note) if note.channel() == SCHEMAS_CHANNEL => (feed.schemas_changed)(),
                        Ok(note) => {
                            let keys: Vec<KeyId> = note
                                .payload()
                                .split(',')
                                .filter_map(|id| id.parse().ok().map(KeyId))
                                .collect();
                            (feed.revoked_keys)(&keys);
                        }
                        Err(e) => {
                            // PgListener reconnects on the next recv; readers also poll, and
                            // reads check stream status. A revocation may have been missed, so
                            // drop every cached key and verified token.
                            tracing::warn!(error = %e, "change notifications interrupted");
                            (feed.forget_cached_keys)();
                            (feed.forget_verified_tokens)();
                            (feed.schemas_changed)();
                            tokio::time::sleep(LISTEN_RETRY).await;
                        }
                    },
                }
            }
        });
        Ok(())
    }

    fn single_writer(&self) -> bool {
        false
    }

    async fn close(&self) {
        let _ = self.stop_listening.send(true);
        self.append_pool.close().await;
        self.pool.close().await;
    }
}

/// What a group's plan is decided on: the head as read first, then the group's streams, its
/// caller-chosen event ids already stored, and its subjects being erased.
struct PlanInputs {
    head: u64,
    generation: i64,
    states: HashMap<String, StreamState>,
    existing: HashMap<Uuid, ExistingEvent>,
    erasing: HashMap<String, SubjectErasure>,
}

impl PlanInputs {
    /// The plan of `group` on what was read, recorded at `now_us`.
    fn plan(self, group: &[AtomicAppend], now_us: i64) -> plan::GroupPlan<'_> {
        plan::plan_group(group, self.states, self.existing, &self.erasing, self.head, now_us)
    }
}

/// Reads what a group's plan needs. `locked`: take the commit-order lock first (inside a
/// transaction), so nothing read can change before COMMIT. Unlocked, the head and its
/// `generation` are read in the same statement as the stream states and before anything else,
/// so [`write_group`]'s check that they are unchanged proves every later read still current.
async fn read_for_plan(
    conn: &mut sqlx::PgConnection,
    group: &[AtomicAppend],
    locked: bool,
) -> Result<PlanInputs, StorageError> {
    let lookups = plan::lookups(group);
    if locked {
        // The commit-order lock: held until COMMIT (module comment). Nothing can move the head
        // while it is held, so the read below sees the head as locked.
        sqlx::query("SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE")
            .execute(&mut *conn)
            .await?;
    }
    let (mut head, mut generation) = (None, 0);
    let mut states: HashMap<String, StreamState> = HashMap::new();
    for row in sqlx::query(SELECT_HEAD_AND_STATES)
        .bind(&lookups.streams)
        .fetch_all(&mut *conn)
        .await?
    {
        head = Some(row.try_get::<i64, _>(5)?);
        generation = row.try_get(6)?;
        if row.try_get::<Option<String>, _>(0)?.is_some() {
            let (name, state) = row.decode_stream_state()?;
            states.insert(name, state);
        }
    }
    let head = head.ok_or_else(|| StorageError::Corrupt("log_head has no row".into()))?;

    let mut existing: HashMap<Uuid, ExistingEvent> = HashMap::new();
    if !lookups.given_ids.is_empty() {
        for row in
            sqlx::query("SELECT event_id, stream, version, position, digest FROM events WHERE event_id = ANY($1)")
                .bind(&lookups.given_ids)
                .fetch_all(&mut *conn)
                .await?
        {
            let (id, event) = row.decode_existing()?;
            existing.insert(id, event);
        }
    }

    let mut erasing = HashMap::new();
    if !lookups.subjects.is_empty() {
        let rows: Vec<(String, String)> = sqlx::query_as(SELECT_ERASING)
            .bind(&lookups.subjects)
            .fetch_all(&mut *conn)
            .await?;
        erasing = plan::subject_erasures(rows);
    }
    Ok(PlanInputs {
        head: to_u64(head, "head")?,
        generation,
        states,
        existing,
        erasing,
    })
}

/// Writes a planned group in one statement, if the log head is still at `head` and
/// `generation` (see [`WRITE_GROUP`]); false: it was not, and nothing was written.
async fn write_group(
    conn: &mut sqlx::PgConnection,
    plan: &plan::GroupPlan<'_>,
    head: u64,
    generation: i64,
) -> Result<bool, StorageError> {
    let rows = &plan.rows;
    let (new, old): (Vec<_>, Vec<_>) = plan.streams.iter().partition(|s| s.is_new);
    let written = sqlx::query(WRITE_GROUP)
        .bind(rows.iter().map(|r| to_i64(r.position)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.stream).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| to_i64(r.version)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event.event_type.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event.payload.as_slice()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event.metadata.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.key_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event.digest.as_slice()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.recorded_at_us).collect::<Vec<_>>())
        .bind(new.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|s| s.state.subject.as_deref()).collect::<Vec<_>>())
        .bind(new.iter().map(|s| s.state.status.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|s| s.state.version.map(to_i64)).collect::<Vec<_>>())
        .bind(new.iter().map(|s| s.state.key_id).collect::<Vec<_>>())
        .bind(plan.now_us)
        .bind(old.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
        .bind(old.iter().map(|s| s.state.version.map(to_i64)).collect::<Vec<_>>())
        .bind(old.iter().map(|s| s.state.key_id).collect::<Vec<_>>())
        .bind(to_i64(plan.head))
        .bind(!rows.is_empty())
        .bind(COMMITS_CHANNEL)
        .bind(to_i64(head))
        .bind(generation)
        .bind(
            rows.iter()
                .map(|r| r.event.schema_version.map(i64::from))
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.field_index
                .keys
                .iter()
                .map(|(subject, _)| *subject)
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.field_index
                .keys
                .iter()
                .map(|(_, key_id)| *key_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.field_index
                .streams
                .iter()
                .map(|(subject, _)| *subject)
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.field_index
                .streams
                .iter()
                .map(|(_, stream)| *stream)
                .collect::<Vec<_>>(),
        )
        .fetch_optional(&mut *conn)
        .await?;
    Ok(written.is_some())
}

/// Up to `$5` events of the log from position `$1` to `$2` (never past the head), filtered by
/// stream prefix `$3` and event types `$4`, *and* the head, in one statement: one round trip,
/// and one snapshot. In READ COMMITTED a statement sees one snapshot, and positions commit in
/// order (every write holds the commit-order lock on `log_head` until COMMIT), so every
/// position up to the head this snapshot sees is committed and visible in it: the rows are
/// complete up to the head.
///
/// The statuses of the page's streams are read once per stream, not joined to every event
/// (1,000 index lookups of the same stream or two made a quarter of a catch-up page's cost in
/// the database). Three kinds of rows, told apart by their NULLs ([`decode_page`]): the events
/// in log order (`status` NULL), one row per stream of the page with its status (`position`
/// NULL), and one row with the head (all else NULL), always there, even for an empty page.
/// Both CTEs are referenced twice, so PostgreSQL evaluates each once.
const READ_LOG_PAGE: &str = "\
    WITH h AS (SELECT position FROM log_head WHERE id = 1), \
    page AS ( \
        SELECT e.position, e.stream, e.version, e.event_id, e.event_type, e.payload, e.metadata, e.key_id, \
               e.recorded_at, e.schema_version \
        FROM events e \
        WHERE e.position >= $1 AND e.position <= LEAST($2, (SELECT position FROM h)) \
          AND ($3::text IS NULL OR starts_with(e.stream, $3)) \
          AND ($4::text[] IS NULL OR e.event_type = ANY($4)) \
        ORDER BY e.position ASC LIMIT $5) \
    SELECT page.*, NULL::text AS status, NULL::bigint AS head FROM page \
    UNION ALL \
    SELECT NULL, s.name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, s.status, NULL \
    FROM streams s WHERE s.name = ANY(ARRAY(SELECT DISTINCT stream FROM page)) \
    UNION ALL \
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, position FROM h";

/// The rows of [`READ_LOG_PAGE`]: the page's events, each with its stream's status, and the
/// head.
fn decode_page(rows: &[sqlx::postgres::PgRow]) -> Result<(Vec<StoredEvent>, i64), StorageError> {
    let mut head = None;
    let mut statuses: HashMap<&str, StreamStatus> = HashMap::new();
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        if row.try_get::<Option<i64>, _>(0)?.is_some() {
            // The status is set below, from the stream's own row.
            events.push(row.decode_event_with_status(StreamStatus::Active)?);
        } else if let Some(stream) = row.try_get::<Option<&str>, _>(1)? {
            statuses.insert(stream, parse_status(row.try_get::<&str, _>(10)?)?);
        } else {
            head = Some(row.try_get::<i64, _>(11)?);
        }
    }
    let head = head.ok_or_else(|| StorageError::Corrupt("log_head has no row".into()))?;
    for event in &mut events {
        event.stream_status = *statuses
            .get(event.stream.as_str())
            .ok_or_else(|| StorageError::Corrupt(format!("event at position {} has no stream row", event.position)))?;
    }
    // The branches of a UNION ALL come out one after the other, and the page's in its order;
    // the check keeps the page's order independent of the plan all the same (one pass).
    if !events.is_sorted_by_key(|e| e.position) {
        events.sort_unstable_by_key(|e| e.position);
    }
    Ok((events, head))
}
