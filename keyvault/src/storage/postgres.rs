//! PostgreSQL storage, on the vault's own database. Destroying deletes the key material rows and
//! then VACUUMs that table so the dead tuples holding wrapped keys are reclaimed; what VACUUM
//! cannot reach (WAL, replicas, backups) is covered by KEK rotation — see SECURITY.md.
//!
//! Concurrency with several vault processes on one database: `create_keys` holds a share lock
//! on the KEK version row it wraps with, and `finish_rotation` updates that row first, so a
//! rotation can never retire a version while a key wrapped with it is being inserted. In the
//! same way `create_keys` share-locks the `forget_guard` row, which `destroy_subject` updates
//! first, so no key of a subject is created after its forget (see [`CREATE_KEYS`]).
//!
//! What both engines do alike is in `sql.rs`; this file keeps opening the database and what
//! only PostgreSQL does: its second pool and one-statement key creation, array parameters,
//! `LOCK TABLE`, and purging with VACUUM.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};
use uuid::Uuid;

use super::sql::{self, Engine};
use super::{CreateResult, Created, NewRow, check_forgotten};
use crate::error::VaultError;
use crate::keys::KeyId;
use crate::limits::{
    POSTGRES_ACQUIRE_TIMEOUT, POSTGRES_CONNECTIONS_MAX, POSTGRES_CREATE_ATTEMPTS, POSTGRES_CREATE_CONNECTIONS_MAX,
};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "vault", include_str!("../../migrations/postgres/0001_vault.sql")),
    (
        2,
        "write path",
        include_str!("../../migrations/postgres/0002_write_path.sql"),
    ),
    (
        3,
        "forgotten subjects",
        include_str!("../../migrations/postgres/0003_forgotten_subjects.sql"),
    ),
    (
        4,
        "kek epochs",
        include_str!("../../migrations/postgres/0004_kek_epochs.sql"),
    ),
];
/// A batch of new keys in one statement and one implicit transaction (one round trip: it used
/// to be four, and two per key before that). It writes only if
/// - the KEK version `$6` the keys were wrapped with is still usable (`kek`, share-locked
///   until commit, so a rotation cannot retire it meanwhile),
/// - no forget committed since the statement's snapshot was taken (`guard`, `stale`: see
///   below) and no subject of the batch is forgotten (`forgotten`), and
/// - no stream of the batch already has a key that clashes with the request (`clash`: destroyed,
///   or bound to another subject), so that a refused batch creates nothing (a stream asked
///   for twice with different subjects is refused before, in `LocalVault::create_keys`);
///
/// and then inserts every stream's key row in stream order (concurrent batches lock in the same
/// order), skipping streams that have a key already, and the key material of the rows that went
/// in. ON CONFLICT waits for a concurrent insert of the same stream to settle, so a follow-up
/// read sees the committed winner; a stream given twice in one batch gets the first row's key.
/// The clash check reads the statement's snapshot, so a clashing key created concurrently is
/// only found by that follow-up read: the batch then fails, but the keys it did insert stay.
/// They are valid keys of their own streams, and the retry returns them.
///
/// Forgets and creates must not interleave so that a key of a subject is created after its
/// forget (the forget's UPDATE, under READ COMMITTED, would not see it). A lock taken inside
/// this one statement cannot protect what the statement read before taking it (its snapshot
/// is older), so it is an optimistic check instead: `guard` share-locks the one `forget_guard`
/// row, whose `epoch` every forget raises first (holding the row until it commits). Locking
/// waits for a forget in progress and returns the row's latest committed version; if that
/// epoch differs from the one the snapshot saw (`stale`), a forget committed after the
/// snapshot, which may have missed it, so nothing is written and the statement is run again
/// with a fresh snapshot. Otherwise every forget either committed before the snapshot (its
/// `forgotten_subjects` row is seen) or waits for this statement's commit before it looks for
/// keys (and destroys these). One row for all subjects instead of a lock per subject: forgets
/// are rare and short, and this keeps creation at one round trip. Batches that bind no subject
/// lock nothing.
const CREATE_KEYS: &str = "WITH kek AS ( \
       SELECT version FROM kek_versions WHERE version = $6 AND state IN ('active', 'pending') FOR SHARE), \
     input AS ( \
       SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bytea[]) \
       WITH ORDINALITY AS t(id, stream, subject, kek_version, wrapped, n)), \
     guard AS ( \
       SELECT epoch FROM forget_guard \
       WHERE id = 1 AND EXISTS (SELECT 1 FROM input WHERE subject IS NOT NULL) FOR SHARE), \
     stale AS ( \
       SELECT 1 FROM guard g JOIN forget_guard f ON f.id = 1 AND f.epoch <> g.epoch), \
     forgotten AS ( \
       SELECT f.subject FROM forgotten_subjects f WHERE f.subject IN (SELECT subject FROM input)), \
     clash AS ( \
       SELECT 1 FROM input i CROSS JOIN LATERAL ( \
         SELECT 1 FROM vault_keys k WHERE k.stream = i.stream \
         AND (k.destroyed_at IS NOT NULL OR k.subject IS DISTINCT FROM i.subject) LIMIT 1) c), \
     keys AS ( \
       INSERT INTO vault_keys (id, stream, subject) \
       SELECT id, stream, subject FROM input \
       WHERE EXISTS (SELECT 1 FROM kek) AND NOT EXISTS (SELECT 1 FROM stale) \
       AND NOT EXISTS (SELECT 1 FROM forgotten) AND NOT EXISTS (SELECT 1 FROM clash) \
       ORDER BY stream, n \
       ON CONFLICT (stream) DO NOTHING RETURNING id), \
     material AS ( \
       INSERT INTO vault_key_material (id, kek_version, wrapped) \
       SELECT i.id, i.kek_version, i.wrapped FROM input i JOIN keys k ON k.id = i.id RETURNING id) \
     SELECT EXISTS (SELECT 1 FROM kek) AS kek_usable, EXISTS (SELECT 1 FROM stale) AS stale, \
       ARRAY(SELECT subject FROM forgotten) AS forgotten, ARRAY(SELECT id FROM material) AS inserted";

pub(crate) struct PgStorage {
    pool: PgPool,
    /// Key creation's connections: see [`CREATE_PLANS`].
    create_pool: PgPool,
}

/// Key creation runs at the rate of new streams. Its statement ([`CREATE_KEYS`]) is planned
/// once per connection instead of at every execution (planning took as long as running it),
/// and that one plan must stay good while the tables grow from empty: these connections do not
/// consider whole-table scans, so every lookup is by index, as a plan for a big table would
/// be anyway. (The statement's only lookup of a growing table is a LATERAL one, which cannot
/// be turned into a join over a whole table either.)
const CREATE_PLANS: [(&str, &str); 2] = [("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off")];

impl PgStorage {
    pub(crate) async fn open(url: &str) -> Result<PgStorage, VaultError> {
        // The main pool plans each statement for its own parameters, not from a generic plan
        // cached while the tables were empty (they grow faster than autovacuum's ANALYZE
        // follows). Key creation has its own pool: see CREATE_PLANS.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| VaultError::InvalidInput(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_CONNECTIONS_MAX)
            .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
            .connect_with(options.clone().options([("plan_cache_mode", "force_custom_plan")]))
            .await?;
        super::migrator(MIGRATIONS).run(&pool).await?;
        let create_pool = PgPoolOptions::new()
            .max_connections(POSTGRES_CREATE_CONNECTIONS_MAX)
            .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
            .connect_with(options.options(CREATE_PLANS))
            .await?;
        Ok(PgStorage { pool, create_pool })
    }
}

impl Engine for PgStorage {
    type Db = Postgres;
    type Version = i32;

    const NOW: &'static str = "now()";
    /// Serialises concurrent rotation and epoch starts (key creation's `FOR SHARE` on a
    /// version row takes only ROW SHARE, which this lock lets through).
    const LOCK_KEK_VERSIONS: Option<&'static str> = Some("LOCK TABLE kek_versions IN SHARE ROW EXCLUSIVE MODE");
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    /// Updating the active row first waits for every create holding it FOR SHARE; the count
    /// after it (a fresh snapshot under READ COMMITTED) then sees their rows.
    const SWITCH_BEFORE_COUNT: bool = true;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, VaultError> {
        Ok(self.pool.begin().await?)
    }

    async fn create_keys(&self, rows: &[NewRow<'_>], kek_version: u32) -> Result<CreateResult, VaultError> {
        // (A stream asked for twice with two subjects was refused by the caller: the
        // statement's own clash check sees only keys that existed before it.)
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id.0).collect();
        let streams: Vec<&str> = rows.iter().map(|r| r.stream).collect();
        let subjects: Vec<Option<&str>> = rows.iter().map(|r| r.subject).collect();
        let versions = rows
            .iter()
            .map(|r| sql::version_to_db::<i32>(r.wrapped.kek_version))
            .collect::<Result<Vec<_>, _>>()?;
        let wrapped: Vec<&[u8]> = rows.iter().map(|r| r.wrapped.wrapped.as_slice()).collect();
        let kek_version = sql::version_to_db::<i32>(kek_version)?;
        let mut attempt = 0;
        let created = loop {
            let created = sqlx::query(CREATE_KEYS)
                .bind(&ids)
                .bind(&streams)
                .bind(&subjects)
                .bind(&versions)
                .bind(&wrapped)
                .bind(kek_version)
                .fetch_one(&self.create_pool)
                .await?;
            if !created.try_get::<bool, _>("kek_usable")? {
                return Ok(CreateResult::KekVersionRetired);
            }
            if !created.try_get::<bool, _>("stale")? {
                break created;
            }
            // A forget committed after the statement's snapshot; nothing was written.
            attempt += 1;
            if attempt >= POSTGRES_CREATE_ATTEMPTS {
                return Err(VaultError::Unavailable(
                    "key creation kept meeting concurrent forgets; retry".into(),
                ));
            }
        };
        check_forgotten(rows, &created.try_get::<Vec<String>, _>("forgotten")?)?;
        let inserted: HashSet<Uuid> = created.try_get::<Vec<Uuid>, _>("inserted")?.into_iter().collect();

        // The streams whose key already existed (or went in concurrently): their committed keys.
        let others: Vec<&str> = rows
            .iter()
            .filter(|r| !inserted.contains(&r.id.0))
            .map(|r| r.stream)
            .collect();
        let mut existing: HashMap<String, PgRow> = HashMap::new();
        if !others.is_empty() {
            for row in sqlx::query(
                "SELECT k.stream, k.id, k.subject, k.destroyed_at IS NOT NULL AS destroyed, m.kek_version, m.wrapped \
                 FROM vault_keys k LEFT JOIN vault_key_material m ON m.id = k.id WHERE k.stream = ANY($1)",
            )
            .bind(&others)
            .fetch_all(&self.pool)
            .await?
            {
                existing.insert(row.try_get("stream")?, row);
            }
        }
        // A forget that committed after the statement (it waited for the statement's commit)
        // destroyed its subject's keys, an existing one found here included: that subject is
        // forgotten now, which is the answer, rather than the key it destroyed.
        let mut met_destroyed = false;
        for row in existing.values() {
            met_destroyed |= row.try_get::<bool, _>("destroyed")?;
        }
        if met_destroyed {
            let subjects: Vec<&str> = rows.iter().filter_map(|r| r.subject).collect();
            let forgotten: Vec<String> =
                sqlx::query_scalar("SELECT subject FROM forgotten_subjects WHERE subject = ANY($1)")
                    .bind(&subjects)
                    .fetch_all(&self.pool)
                    .await?;
            check_forgotten(rows, &forgotten)?;
        }
        // A clash refuses the batch whichever row it is on (nothing went in then).
        for row in rows {
            if let Some(e) = existing.get(row.stream) {
                sql::check_existing_row::<Self>(row.stream, row.subject, e)?;
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if inserted.contains(&row.id.0) {
                out.push(Created::Inserted(row.id));
                continue;
            }
            let e = existing
                .get(row.stream)
                .ok_or_else(|| VaultError::Corrupt(format!("stream {:?} has no key after create", row.stream)))?;
            out.push(sql::existing_key::<Self>(e)?);
        }
        Ok(CreateResult::Done(out))
    }

    async fn fetch_key_rows(&self, ids: &[KeyId]) -> Result<Vec<PgRow>, VaultError> {
        let uuids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        Ok(sqlx::query(
            "SELECT k.id, k.destroyed_at IS NOT NULL AS destroyed, m.kek_version, m.wrapped \
             FROM vault_keys k LEFT JOIN vault_key_material m ON m.id = k.id \
             WHERE k.id = ANY($1)",
        )
        .bind(&uuids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn destroy_subject(&self, subject: &str) -> Result<Vec<KeyId>, VaultError> {
        let mut tx = self.begin_write().await?;
        // Raising the epoch first waits for every key creation holding the guard and keeps new
        // ones waiting until this commits, and tells those that read an older snapshot to run
        // again (see CREATE_KEYS). The statements after it take fresh snapshots (READ
        // COMMITTED), so the UPDATE below sees every key those creations committed.
        sqlx::query("UPDATE forget_guard SET epoch = epoch + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql::FORGET_SUBJECT).bind(subject).execute(&mut *tx).await?;
        let rows = sqlx::query(
            "UPDATE vault_keys SET destroyed_at = now() \
             WHERE subject = $1 AND destroyed_at IS NULL RETURNING id, stream",
        )
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = rows
            .iter()
            .map(|r| Ok((r.try_get::<String, _>("stream")?, sql::key_id(r)?)))
            .collect::<Result<Vec<_>, VaultError>>()?;
        ids.sort();
        let ids: Vec<KeyId> = ids.into_iter().map(|(_, id)| id).collect();
        let uuids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        sqlx::query("DELETE FROM vault_key_material WHERE id = ANY($1)")
            .bind(&uuids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn purge(&self) -> Result<(), VaultError> {
        // VACUUM cannot run inside a transaction block; raw_sql sends it as a simple query on a
        // pooled connection outside any transaction.
        sqlx::raw_sql("VACUUM vault_key_material").execute(&self.pool).await?;
        Ok(())
    }
}
