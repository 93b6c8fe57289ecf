//! The PostgreSQL engine: production, several Lethe processes on one database.
//!
//! Ordering (Guarantee 4): every write transaction first locks the single `log_head` row
//! (`SELECT … FOR UPDATE`), assigns positions after it, and holds that lock until COMMIT. So
//! write transactions commit one after the other in position order, and a reader that sees
//! position P can never later see a new event at a position ≤ P — whichever process wrote it.
//! A plain `bigserial` would hand out positions at INSERT time and let a later position commit
//! first, which a tailing reader would skip forever. Group commit (many appends per transaction)
//! is what keeps this serialisation from costing throughput; see ARCHITECTURE.md.
//!
//! With several group writers per process (`StoreConfig::postgres_group_writers` > 1) only
//! the position assignment is serialised: each group *reserves* its positions in a tiny
//! transaction of its own (`log_head` advanced, a `log_reservations` row inserted, committed
//! without waiting for the flush), then writes its rows in its own transaction, concurrently
//! with other groups, and deletes its reservation there. Readers read only below the oldest
//! reservation (`SELECT_HORIZON`), so what a reader has passed is never filled in later; a group is
//! acknowledged once that horizon has passed it. ARCHITECTURE.md, "Parallel group writers".

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use async_trait::async_trait;
use lethe_keyvault::{KeyId, VaultClock};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};
use tokio::sync::watch;
use uuid::Uuid;

use super::plan::{self, ExistingEvent, StreamState, SubjectErasure};
use super::rows::{DecodeRow, erasure_statuses, parse_status, select_erasures, to_i64, to_u64};
use super::sql::{Engine, Pools};
use super::{AppendReply, AtomicAppend, ChangeFeed, EngineStorage, StoredEvent, TokenChecks, advance_head};
use crate::error::StorageError;
use crate::limits::{
    LISTEN_RETRY, POSTGRES_ACQUIRE_TIMEOUT, POSTGRES_CONNECTIONS_MAX, POSTGRES_GROUP_WRITERS_MAX,
    POSTGRES_WRITE_CONNECTIONS_MAX, RESERVATION_ABANDONED_AFTER, RESERVATION_REAP_EVERY, RESERVATION_WAIT_POLL,
    RESERVED_GROUP_ATTEMPTS, REVOKED_KEYS_PER_NOTIFY,
};
use crate::model::{ErasureStatus, LogFilter, StreamStatus, SubjectId};

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
    /// Group writers of this process: 1 writes each group under the commit-order lock; more
    /// write concurrently on reserved positions (module comment).
    group_writers: usize,
    /// What parallel group writers reserve with; `None` with one writer.
    reserving: Option<Reserving>,
    /// Tells the LISTEN task to stop (it holds a pool connection that `close` waits for).
    stop_listening: watch::Sender<bool>,
    /// Groups left to write under the lock after an optimistic write lost (`append_group`).
    optimistic_lost: AtomicU32,
    /// Where appends read the time they record.
    clock: Arc<dyn VaultClock>,
    /// Subjects the group writers found without an erasure request ([`TokenChecks`]).
    erasure_checks: TokenChecks<String>,
}

/// Parallel group writers' connections for their reservations.
struct Reserving {
    /// Reservations commit on these without waiting for the WAL flush (`synchronous_commit =
    /// off`), so the commit-order lock is held for no flush. Nothing is lost by it: a
    /// reservation protects nothing durable, and the group's own commit, which waits for the
    /// flush, comes later in the WAL.
    pool: PgPool,
    /// The session whose life stands for this process's (see [`ReservationOwner`]).
    owner: Arc<ReservationOwner>,
}

impl PostgresStorage {
    /// Opens the database with `group_writers` group writers (1 to
    /// [`POSTGRES_GROUP_WRITERS_MAX`]).
    pub async fn open(url: &str, clock: Arc<dyn VaultClock>, group_writers: usize) -> Result<Self, StorageError> {
        if !(1..=POSTGRES_GROUP_WRITERS_MAX).contains(&group_writers) {
            return Err(StorageError::InvalidConfig(format!(
                "postgres_group_writers must be 1 to {POSTGRES_GROUP_WRITERS_MAX}, not {group_writers}"
            )));
        }
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
        // One connection per group writer, and the stream-state readers and locked retries
        // beside them.
        let writers = u32::try_from(group_writers).unwrap_or(u32::MAX);
        let append_pool = PgPoolOptions::new()
            .max_connections(POSTGRES_WRITE_CONNECTIONS_MAX.max(writers.saturating_add(2)))
            .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
            .connect_with(options.clone().options(WRITE_PATH_PLANS))
            .await?;
        let reserving = if group_writers > 1 {
            Some(Reserving {
                owner: Arc::new(ReservationOwner::connect(options.clone()).await?),
                pool: PgPoolOptions::new()
                    .max_connections(writers)
                    .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
                    .connect_with(options.options([("synchronous_commit", "off")]))
                    .await?,
            })
        } else {
            None
        };
        // The migrator takes an advisory lock, so processes starting together migrate once.
        super::migrations::migrator(super::migrations::POSTGRES)
            .await?
            .run(&pool)
            .await?;
        // What a crashed process left is gone before this one serves.
        reap_reservations(&pool).await?;
        let stop_listening = watch::channel(false).0;
        // Every process reaps, whatever its own number of writers: a crashed process's
        // reservation holds back the readers of all of them.
        tokio::spawn(reap_reservations_every(
            pool.clone(),
            reserving.as_ref().map(|r| r.owner.clone()),
            stop_listening.subscribe(),
        ));
        Ok(Self {
            pool,
            append_pool,
            group_writers,
            reserving,
            stop_listening,
            optimistic_lost: AtomicU32::new(0),
            erasure_checks: TokenChecks::default(),
            clock,
        })
    }

    /// A group on positions of its own (`group_writers` > 1): plan it on what is stored,
    /// reserve exactly the positions its events take, write it concurrently with other groups
    /// (only if nothing it read changed meanwhile: [`WRITE_RESERVED_GROUP`]), and reply once
    /// readers can read every position up to the group's. A group with nothing to write (every
    /// append refused or a repeat) reserves nothing; one that loses a race to another group
    /// gives its positions up (a gap) and is planned again.
    async fn append_group_reserved(
        &self,
        reserving: &Reserving,
        group: &[AtomicAppend],
    ) -> Result<Vec<AppendReply>, StorageError> {
        let mut conn = self.append_pool.acquire().await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let read = read_for_plan(&mut conn, group, false, &self.erasure_checks).await?;
            let now_us = self.clock.now_micros();
            // Decided once to count the rows, then again on the reserved positions: the plan is
            // a pure function of what was read, so both decide alike.
            let counted = plan::plan_group(
                group,
                read.states.clone(),
                read.existing.clone(),
                &read.erasing,
                0,
                now_us,
            );
            if counted.rows.is_empty() {
                // Nothing to write. A repeat's events may lie behind an open reservation.
                if let Some(last) = last_position(&counted.replies) {
                    Self::wait_readable(&mut conn, last).await;
                }
                return Ok(counted.replies);
            }
            let count =
                i64::try_from(counted.rows.len()).map_err(|_| StorageError::Corrupt("group too large".into()))?;
            drop(counted);
            let first: i64 = sqlx::query_scalar(RESERVE_POSITIONS)
                .bind(count)
                .bind(reserving.owner.pid.load(Ordering::Relaxed))
                .fetch_one(&reserving.pool)
                .await?;
            // Until this group has written or released it (also if it panics or returns early).
            let _held = reserving.owner.hold(first);
            let first = to_u64(first, "reservation")?;
            let guard = WriteGuard::of(group, &read);
            let plan = plan::plan_group(group, read.states, read.existing, &read.erasing, first - 1, now_us);
            match write_reserved_group(&mut conn, &plan, first, &guard).await {
                Ok(older_open) => {
                    // Committed: from here on nothing may fail the group, or it would be
                    // written again.
                    if older_open {
                        Self::wait_readable(&mut conn, plan.head).await;
                        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                            .bind(COMMITS_CHANNEL)
                            .bind(plan.head.to_string())
                            .execute(&mut *conn)
                            .await
                        {
                            tracing::warn!(error = %e, "announcing a commit failed; listeners poll");
                        }
                    }
                    return Ok(plan.replies);
                }
                Err(Lost::Race(why)) => {
                    if why != LostRace::Reservation {
                        release_reservation(&self.pool, first).await;
                    }
                    if attempt >= RESERVED_GROUP_ATTEMPTS {
                        return Err(StorageError::Contended(format!(
                            "a parallel group lost {attempt} races in a row ({why})"
                        )));
                    }
                    tracing::debug!(reason = %why, attempt, "parallel group lost a race; planning it again");
                }
                Err(Lost::Failed(e)) => {
                    release_reservation(&self.pool, first).await;
                    return Err(e);
                }
            }
        }
    }

    /// A group under the commit-order lock, held from its first read to its commit (and after
    /// every parallel group writer that reserved before it has written).
    async fn append_group_locked(&self, group: &[AtomicAppend]) -> Result<Vec<AppendReply>, StorageError> {
        let mut tx = self.append_pool.begin().await?;
        let read = read_for_plan(&mut tx, group, true, &self.erasure_checks).await?;
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

    /// Waits until readers read up to `last`: every older reservation was written or released
    /// (the reaper removes one whose writer died). If the database cannot say, it stops
    /// waiting: the group is committed, and its reply must not turn into a failure.
    async fn wait_readable(conn: &mut PgConnection, last: u64) {
        loop {
            match sqlx::query_scalar::<_, i64>(SELECT_HORIZON).fetch_one(&mut *conn).await {
                Ok(horizon) if horizon >= to_i64(last) => return,
                Ok(_) => tokio::time::sleep(RESERVATION_WAIT_POLL).await,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for older groups failed; replying without");
                    return;
                }
            }
        }
    }
}

/// Called holding the commit-order lock: waits until every parallel group that reserved before
/// it has written (or given up), so that whatever the lock holder reads next is final until it
/// commits — no reservation can be made meanwhile. Each check is a statement of its own, so it
/// sees what committed since. (The reaper removes a dead writer's reservation.)
async fn wait_out_reservations(conn: &mut PgConnection) -> Result<(), StorageError> {
    while sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM log_reservations)")
        .fetch_one(&mut *conn)
        .await?
    {
        tokio::time::sleep(RESERVATION_WAIT_POLL).await;
    }
    Ok(())
}

/// Reserves `$1` positions: advances the head under the commit-order lock and records the
/// reservation, in one statement (its own transaction). Raising the generation makes an
/// optimistic group write of a one-writer process, planned before this, lose (`WRITE_GROUP`).
const RESERVE_POSITIONS: &str = "WITH h AS ( \
       UPDATE log_head SET position = position + $1, generation = generation + 1 WHERE id = 1 \
       RETURNING position) \
     INSERT INTO log_reservations (first, last, owner_pid) \
     SELECT position - $1 + 1, position, $2 FROM h RETURNING first";

/// What readers may read up to: the head, or just below the oldest reservation if one is open.
/// (LEAST ignores a NULL: no reservation.)
const SELECT_HORIZON: &str =
    "SELECT LEAST(h.position, (SELECT min(first) - 1 FROM log_reservations)) FROM log_head h WHERE h.id = 1";

/// Removes reservations whose owner's session ended (a crashed process) or that were
/// abandoned, unless a group is writing them right now (locked).
const REAP_RESERVATIONS: &str = "DELETE FROM log_reservations WHERE first IN ( \
       SELECT r.first FROM log_reservations r \
       WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.owner_pid) \
          OR r.reserved_at < now() - make_interval(secs => $1) \
       FOR UPDATE OF r SKIP LOCKED) \
     RETURNING first, last";

/// Removes reservations left behind, now; the positions they held stay a gap in the log.
async fn reap_reservations(pool: &PgPool) -> Result<(), StorageError> {
    let reaped: Vec<(i64, i64)> = sqlx::query_as(REAP_RESERVATIONS)
        .bind(RESERVATION_ABANDONED_AFTER.as_secs_f64())
        .fetch_all(pool)
        .await?;
    for (first, last) in &reaped {
        tracing::warn!(
            first,
            last,
            "reaped positions reserved by a group that never wrote them"
        );
    }
    Ok(())
}

async fn reap_reservations_every(pool: PgPool, owner: Option<Arc<ReservationOwner>>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(RESERVATION_REAP_EVERY) => {}
        }
        if let Some(owner) = &owner {
            owner.keep_alive().await;
            if let Err(e) = owner.reap_strays(&pool).await {
                tracing::debug!(error = %e, "reaping stray reservations failed; trying again later");
            }
        }
        if let Err(e) = reap_reservations(&pool).await {
            tracing::debug!(error = %e, "reaping reservations failed; trying again later");
        }
    }
}

/// The `application_name` of a reservation owner's connection (how an operator, or a test,
/// tells it in `pg_stat_activity`).
pub(crate) const RESERVATION_OWNER_APPLICATION: &str = "lethe-reservation-owner";

/// A connection a process with parallel group writers keeps open and idle for as long as it
/// lives; its reservations name its backend (`owner_pid`). An idle session ends as soon as its
/// process dies, which is what the reaper looks for. (The backend that made a reservation would
/// not do: one blocked on a lock outlives its dead client until the lock is granted, and the
/// lock may be the shred's, which waits for that very reservation.)
struct ReservationOwner {
    options: PgConnectOptions,
    connection: tokio::sync::Mutex<PgConnection>,
    pid: AtomicI32,
    /// The reservations this process's groups are working on (by first position). Any other
    /// reservation it owns was lost track of — its reply lost after it committed, its release
    /// failed — and is reaped here once older than [`RESERVATION_REAP_EVERY`], not after
    /// [`RESERVATION_ABANDONED_AFTER`].
    held: std::sync::Mutex<HashSet<i64>>,
}

/// A reservation a group is working on; dropping it lets the owner reap it if it is left.
struct Held<'a> {
    owner: &'a ReservationOwner,
    first: i64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.owner.held.lock() {
            held.remove(&self.first);
        }
    }
}

/// Reservations of this process that none of its groups holds, older than `$3` seconds.
const REAP_STRAY_RESERVATIONS: &str = "DELETE FROM log_reservations WHERE first IN ( \
       SELECT first FROM log_reservations \
       WHERE owner_pid = $1 AND first <> ALL($2) AND reserved_at < now() - make_interval(secs => $3) \
       FOR UPDATE SKIP LOCKED) \
     RETURNING first, last";

impl ReservationOwner {
    async fn connect(options: PgConnectOptions) -> Result<ReservationOwner, StorageError> {
        let (connection, pid) = Self::open(&options).await?;
        Ok(ReservationOwner {
            options,
            connection: tokio::sync::Mutex::new(connection),
            pid: AtomicI32::new(pid),
            held: std::sync::Mutex::new(HashSet::new()),
        })
    }

    fn hold(&self, first: i64) -> Held<'_> {
        if let Ok(mut held) = self.held.lock() {
            held.insert(first);
        }
        Held { owner: self, first }
    }

    /// Removes this process's reservations that no group of it holds any more.
    async fn reap_strays(&self, pool: &PgPool) -> Result<(), StorageError> {
        let held: Vec<i64> = match self.held.lock() {
            Ok(held) => held.iter().copied().collect(),
            Err(_) => return Ok(()),
        };
        let reaped: Vec<(i64, i64)> = sqlx::query_as(REAP_STRAY_RESERVATIONS)
            .bind(self.pid.load(Ordering::Relaxed))
            .bind(held)
            .bind(RESERVATION_REAP_EVERY.as_secs_f64())
            .fetch_all(pool)
            .await?;
        for (first, last) in &reaped {
            tracing::warn!(first, last, "reaped positions this process reserved and lost track of");
        }
        Ok(())
    }

    async fn open(options: &PgConnectOptions) -> Result<(PgConnection, i32), StorageError> {
        use sqlx::Connection;
        let options = options.clone().application_name(RESERVATION_OWNER_APPLICATION);
        let mut connection = PgConnection::connect_with(&options).await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut connection)
            .await?;
        Ok((connection, pid))
    }

    /// Checks the session, and opens a new one if it was lost (new reservations name it; the
    /// lost one's are reaped, and their groups, if still writing, reserve again).
    async fn keep_alive(&self) {
        use sqlx::Connection;
        let mut connection = self.connection.lock().await;
        if connection.ping().await.is_ok() {
            return;
        }
        match Self::open(&self.options).await {
            Ok((fresh, pid)) => {
                *connection = fresh;
                self.pid.store(pid, Ordering::Relaxed);
                tracing::warn!("the reservation owner's connection was lost; opened a new one");
            }
            Err(e) => tracing::warn!(error = %e, "the reservation owner's connection is lost; retrying"),
        }
    }
}

/// Gives up a reservation after a failed group: its positions stay a gap. If this fails too,
/// the reaper removes it once its connection is gone or it is abandoned.
async fn release_reservation(pool: &PgPool, first: u64) {
    if let Err(e) = sqlx::query("DELETE FROM log_reservations WHERE first = $1")
        .bind(to_i64(first))
        .execute(pool)
        .await
    {
        tracing::warn!(error = %e, first, "releasing a reservation failed; the reaper will");
    }
}

/// The log head (position and generation), whether a parallel group writer holds a
/// reservation, the `subject_erasure_filed` change token, and the stored states of the named
/// streams: one row per stream found, or one row of NULL stream columns if none is.
const SELECT_HEAD_AND_STATES: &str = "SELECT s.name, s.version, s.status, s.subject, s.key_id, h.position, h.generation, \
       EXISTS (SELECT 1 FROM log_reservations), \
       (SELECT subject_erasure_filed FROM change_tokens WHERE id = 1) \
     FROM log_head h LEFT JOIN streams s ON s.name = ANY($1) WHERE h.id = 1";

/// The group's event rows, `$1`–`$10`, `$25` (schema versions) and `$28` (each event's field
/// subjects, space-separated): the `INSERT` both group writes make (a macro, so that each
/// statement stays one `&'static str` built with `concat!`).
macro_rules! insert_group_events {
    () => {
        "INSERT INTO events \
         (position, stream, version, event_id, event_type, payload, metadata, key_id, digest, recorded_at, \
          schema_version, field_subjects) \
       SELECT u.p, u.s, u.v, u.id, u.t, u.pl, u.m, u.k, u.d, u.r, u.sv, string_to_array(u.fs, ' ') \
       FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::bytea[], $7::text[], \
                   $8::uuid[], $9::bytea[], $10::bigint[], $25::bigint[], $28::text[]) \
            AS u(p, s, v, id, t, pl, m, k, d, r, sv, fs)"
    };
}

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
const WRITE_GROUP: &str = concat!(
    "WITH head AS ( \
       UPDATE log_head SET position = $20, generation = generation + 1 \
       WHERE id = 1 AND position = $23 AND generation = $24 RETURNING position), \
     new_events AS ( ",
    insert_group_events!(),
    " WHERE EXISTS (SELECT 1 FROM head)), \
     new_subject_keys AS ( \
       INSERT INTO subject_keys (subject, key_id) \
       SELECT * FROM UNNEST($26::text[], $27::uuid[]) WHERE EXISTS (SELECT 1 FROM head) \
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
SELECT position, (SELECT count(*) FROM notified) FROM head"
);

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

    const SELECT_HEAD: &'static str = SELECT_HORIZON;
    // The field index is the events' `field_subjects` under a GIN index (migration 0012): an
    // append adds an entry to its pending list, far cheaper in the serialized group write
    // than a B-tree row per (subject, stream) pair.
    const SELECT_FIELD_STREAMS: &'static str = "SELECT DISTINCT stream FROM events \
         WHERE field_subjects @> ARRAY[$1::text] AND field_subjects IS NOT NULL ORDER BY stream";

    async fn lock_commit_order(conn: &mut PgConnection) -> Result<(), StorageError> {
        // The commit-order lock, held until COMMIT. Raising the generation makes an optimistic
        // group write planned before this commit lose (see `WRITE_GROUP`).
        sqlx::query("UPDATE log_head SET generation = generation + 1 WHERE id = 1")
            .execute(&mut *conn)
            .await?;
        wait_out_reservations(conn).await
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
        if let Some(reserving) = &self.reserving {
            return self.append_group_reserved(reserving, group).await;
        }
        let lost = self.optimistic_lost.load(Ordering::Relaxed);
        if lost == 0 {
            let mut conn = self.append_pool.acquire().await?;
            let read = read_for_plan(&mut conn, group, false, &self.erasure_checks).await?;
            // A parallel group writer (another process) may be writing what was read, without
            // the lock, so the head's check below would not see it: take the lock, which waits
            // for it. (None can reserve after this read without moving the head.)
            if read.reservations_open {
                drop(conn);
                return self.append_group_locked(group).await;
            }
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
        self.append_group_locked(group).await
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

    fn group_writers(&self) -> usize {
        self.group_writers
    }

    async fn close(&self) {
        let _ = self.stop_listening.send(true);
        self.append_pool.close().await;
        if let Some(reserving) = &self.reserving {
            reserving.pool.close().await;
        }
        self.pool.close().await;
    }
}

/// What a group's plan is decided on: the head as read first, then the group's streams, its
/// caller-chosen event ids already stored, and its subjects being erased.
struct PlanInputs {
    head: u64,
    generation: i64,
    /// A parallel group writer held a reservation: it may be writing what was read.
    reservations_open: bool,
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
    erasure_checks: &TokenChecks<String>,
) -> Result<PlanInputs, StorageError> {
    let lookups = plan::lookups(group);
    if locked {
        // The commit-order lock: held until COMMIT (module comment). Nothing can move the head
        // while it is held, so the read below sees the head as locked.
        sqlx::query("SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE")
            .execute(&mut *conn)
            .await?;
        wait_out_reservations(conn).await?;
    }
    let (mut head, mut generation, mut reservations_open, mut filed_token) = (None, 0, false, 0);
    let mut states: HashMap<String, StreamState> = HashMap::new();
    for row in sqlx::query(SELECT_HEAD_AND_STATES)
        .bind(&lookups.streams)
        .fetch_all(&mut *conn)
        .await?
    {
        head = Some(row.try_get::<i64, _>(5)?);
        generation = row.try_get(6)?;
        reservations_open = row.try_get(7)?;
        filed_token = row.try_get(8)?;
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

    // Only subjects not found without an erasure request since the last filing: the token
    // was read in the same snapshot as the head (`TokenChecks`).
    let mut erasing = HashMap::new();
    let subjects = erasure_checks.unchecked(filed_token, lookups.subjects.iter().copied());
    if !subjects.is_empty() {
        let rows: Vec<(String, String)> = sqlx::query_as(SELECT_ERASING)
            .bind(&subjects)
            .fetch_all(&mut *conn)
            .await?;
        erasing = plan::subject_erasures(rows);
        plan::record_clear_subjects(erasure_checks, filed_token, &subjects, &erasing);
    }
    Ok(PlanInputs {
        head: to_u64(head, "head")?,
        generation,
        reservations_open,
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
    let (new, old) = split_streams(plan);
    let query = bind_rows_and_streams(sqlx::query(WRITE_GROUP), plan, &new, &old)
        .bind(to_i64(plan.head))
        .bind(!plan.rows.is_empty())
        .bind(COMMITS_CHANNEL)
        .bind(to_i64(head))
        .bind(generation);
    let written = bind_schemas_and_fields(query, plan).fetch_optional(&mut *conn).await?;
    Ok(written.is_some())
}

/// A parallel writer's group, on the positions reserved from `first`, in one statement: its
/// events, new streams (absent when read), its streams' new versions, and its reservation
/// deleted. If anything its plan read changed meanwhile — a stream's version or status, a new
/// stream created by another group, an erasure request filed for one of its subjects — or the
/// reservation was reaped, the statement fails as a whole (`lethe_group_lost`) and writes
/// nothing; so do the unique indexes if another group stored the same stream version or event
/// id first. (Its snapshot is taken after the reservation, so after any shred that held the
/// commit-order lock before it: see `lock_commit_order`.) Answers whether an older reservation was still open when it
/// started: then readers may not reach this group yet, so the caller waits before replying, and
/// announces the commit to other processes only then (the `NOTIFY` payload is never past what
/// readers can read, or a listener would take it as seen and sleep through the commit that
/// makes it readable).
const WRITE_RESERVED_GROUP: &str = concat!(
    "WITH res AS ( \
       DELETE FROM log_reservations WHERE first = $20 RETURNING first), \
     new_events AS ( ",
    insert_group_events!(),
    "), \
     new_subject_keys AS ( \
       INSERT INTO subject_keys (subject, key_id) \
       SELECT * FROM UNNEST($26::text[], $27::uuid[]) ON CONFLICT DO NOTHING), \
     new_streams AS ( \
       INSERT INTO streams (name, subject, status, version, key_id, created_at) \
       SELECT u.name, u.subject, u.status, u.version, u.key_id, $16 \
       FROM UNNEST($11::text[], $12::text[], $13::text[], $14::bigint[], $15::uuid[]) \
            AS u(name, subject, status, version, key_id) \
       ON CONFLICT (name) DO NOTHING RETURNING 1), \
     old_streams AS ( \
       UPDATE streams s SET version = u.version, key_id = u.key_id \
       FROM UNNEST($17::text[], $18::bigint[], $19::uuid[], $23::bigint[], $30::text[]) \
            AS u(name, version, key_id, read_version, read_status) \
       WHERE s.name = u.name AND s.version IS NOT DISTINCT FROM u.read_version AND s.status = u.read_status \
       RETURNING 1), \
     erasing AS ( \
       SELECT 1 FROM erasure_requests \
       WHERE kind = 'subject' AND status <> 'refused' AND subject = ANY($29::text[]) LIMIT 1), \
     older AS (SELECT 1 FROM log_reservations WHERE first < $20 LIMIT 1), \
     notified AS (SELECT pg_notify($22, $24::text) WHERE $21 AND NOT EXISTS (SELECT 1 FROM older)) \
SELECT CASE \
         WHEN NOT EXISTS (SELECT 1 FROM res) THEN lethe_group_lost('reservation') \
         WHEN (SELECT count(*) FROM new_streams) <> cardinality($11::text[]) \
           OR (SELECT count(*) FROM old_streams) <> cardinality($17::text[]) THEN lethe_group_lost('streams') \
         WHEN EXISTS (SELECT 1 FROM erasing) THEN lethe_group_lost('erasure') \
         ELSE (SELECT count(*) FROM notified) END, \
       EXISTS (SELECT 1 FROM older)"
);

/// Why a parallel group's write did not apply.
enum Lost {
    /// Another group got in first; planning again may succeed.
    Race(LostRace),
    /// Anything else.
    Failed(StorageError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LostRace {
    /// The reservation was reaped before the group wrote.
    Reservation,
    /// A stream changed since the plan read it.
    Streams,
    /// An erasure request was filed for one of its subjects since the plan read them.
    Erasure,
    /// Another group stored the same stream version or event id first.
    Unique,
    /// PostgreSQL broke a lock cycle between two groups.
    Deadlock,
}

impl std::fmt::Display for LostRace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LostRace::Reservation => "its reservation was reaped",
            LostRace::Streams => "a stream changed since it was read",
            LostRace::Erasure => "one of its subjects is being erased since it was read",
            LostRace::Unique => "an event version or id was stored first by another group",
            LostRace::Deadlock => "a lock cycle with another group",
        })
    }
}

/// What a parallel group's plan read that must still hold when it writes: each stream's
/// version and status, and which of its subjects had no erasure request.
struct WriteGuard {
    streams: HashMap<String, (Option<u64>, StreamStatus)>,
    unerased_subjects: Vec<String>,
}

impl WriteGuard {
    fn of(group: &[AtomicAppend], read: &PlanInputs) -> WriteGuard {
        let mut unerased_subjects: Vec<String> = plan::lookups(group)
            .subjects
            .into_iter()
            .filter(|subject| !read.erasing.contains_key(*subject))
            .map(str::to_owned)
            .collect();
        unerased_subjects.sort_unstable();
        unerased_subjects.dedup();
        WriteGuard {
            streams: read
                .states
                .iter()
                .map(|(name, state)| (name.clone(), (state.version, state.status)))
                .collect(),
            unerased_subjects,
        }
    }
}

/// The last position of the appends that succeeded, if any did.
fn last_position(replies: &[AppendReply]) -> Option<u64> {
    replies
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flat_map(|o| o.streams.iter().map(|s| s.last_position))
        .max()
}

async fn write_reserved_group(
    conn: &mut sqlx::PgConnection,
    plan: &plan::GroupPlan<'_>,
    first: u64,
    guard: &WriteGuard,
) -> Result<bool, Lost> {
    let (new, old) = split_streams(plan);
    let read = |s: &&plan::StreamRow| guard.streams.get(&s.name).copied();
    let read_versions: Vec<Option<i64>> = old.iter().map(|s| read(s).and_then(|r| r.0).map(to_i64)).collect();
    let read_statuses: Vec<Option<&str>> = old.iter().map(|s| read(s).map(|r| r.1.as_str())).collect();
    let query = bind_rows_and_streams(sqlx::query(WRITE_RESERVED_GROUP), plan, &new, &old)
        .bind(to_i64(first))
        .bind(!plan.rows.is_empty())
        .bind(COMMITS_CHANNEL)
        .bind(read_versions)
        .bind(to_i64(plan.head));
    let query = bind_schemas_and_fields(query, plan)
        .bind(&guard.unerased_subjects)
        .bind(read_statuses);
    match query.fetch_one(&mut *conn).await {
        Ok(row) => row
            .try_get::<bool, _>(1)
            .map_err(|e| Lost::Failed(StorageError::from(e))),
        Err(sqlx::Error::Database(e)) => match e.code().as_deref() {
            Some("LT001") if e.message().ends_with("reservation") => Err(Lost::Race(LostRace::Reservation)),
            Some("LT001") if e.message().ends_with("erasure") => Err(Lost::Race(LostRace::Erasure)),
            Some("LT001") => Err(Lost::Race(LostRace::Streams)),
            Some("23505") => Err(Lost::Race(LostRace::Unique)),
            Some("40P01") => Err(Lost::Race(LostRace::Deadlock)),
            _ => Err(Lost::Failed(StorageError::from(sqlx::Error::Database(e)))),
        },
        Err(e) => Err(Lost::Failed(StorageError::from(e))),
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// A plan's streams: those it creates, and those it updates.
fn split_streams<'p>(plan: &'p plan::GroupPlan<'_>) -> (Vec<&'p plan::StreamRow>, Vec<&'p plan::StreamRow>) {
    plan.streams.iter().partition(|s| s.is_new)
}

/// Binds `$1`–`$19` of a group write: the event rows, the new streams, the time, the updated
/// streams.
fn bind_rows_and_streams<'q>(
    query: PgQuery<'q>,
    plan: &'q plan::GroupPlan<'_>,
    new: &[&'q plan::StreamRow],
    old: &[&'q plan::StreamRow],
) -> PgQuery<'q> {
    let rows = &plan.rows;
    query
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
}

/// An event's field subjects as one `$28` element: space-separated, or NULL for none.
fn field_subjects_text(subjects: &[SubjectId]) -> Option<String> {
    (!subjects.is_empty()).then(|| subjects.iter().map(SubjectId::as_str).collect::<Vec<_>>().join(" "))
}

/// Binds `$25`–`$28` of a group write: the events' schema versions, the subjects' new key
/// rows and each event's field subjects.
fn bind_schemas_and_fields<'q>(query: PgQuery<'q>, plan: &'q plan::GroupPlan<'_>) -> PgQuery<'q> {
    let index = &plan.field_index;
    query
        .bind(
            plan.rows
                .iter()
                .map(|r| r.event.schema_version.map(i64::from))
                .collect::<Vec<_>>(),
        )
        .bind(index.keys.iter().map(|(subject, _)| *subject).collect::<Vec<_>>())
        .bind(index.keys.iter().map(|(_, key_id)| *key_id).collect::<Vec<_>>())
        // The field index: each event row lists the subjects of its personal fields (joined
        // by spaces, which no subject id holds), indexed by GIN (see migration 0012).
        .bind(
            plan.rows
                .iter()
                .map(|r| field_subjects_text(&r.event.field_subjects))
                .collect::<Vec<_>>(),
        )
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
    WITH h AS (SELECT LEAST(position, (SELECT min(first) - 1 FROM log_reservations)) AS position \
               FROM log_head WHERE id = 1), \
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
