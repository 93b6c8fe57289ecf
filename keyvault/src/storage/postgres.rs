//! PostgreSQL storage, on the vault's own database. Destroying deletes the key material rows and
//! then VACUUMs that table so the dead tuples holding wrapped keys are reclaimed; what VACUUM
//! cannot reach (WAL, replicas, backups) is covered by KEK rotation — see SECURITY.md.
//!
//! Concurrency with several vault processes on one database: `create_keys` holds a share lock
//! on the KEK version row it wraps with, and `finish_rotation` updates that row first, so a
//! rotation can never retire a version while a key wrapped with it is being inserted.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use uuid::Uuid;

use super::{
    CreateResult, Created, KekState, KekVersionRow, MaterialRow, NewRow, Rewrap, Storage, Stored, WrappedKey,
    check_existing, count_from_db, version_from_db,
};
use crate::error::VaultError;
use crate::keys::KeyId;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "vault", include_str!("../../migrations/postgres/0001_vault.sql")),
    (
        2,
        "write path",
        include_str!("../../migrations/postgres/0002_write_path.sql"),
    ),
];
/// A batch of new keys in one statement and one implicit transaction (one round trip: it used
/// to be four, and two per key before that). It writes only if
/// - the KEK version `$6` the keys were wrapped with is still usable (`kek`, share-locked
///   until commit, so a rotation cannot retire it meanwhile), and
/// - no stream of the batch already has a key that clashes with the request (`clash`: destroyed,
///   or bound to another subject), so that a refused batch creates nothing (a stream asked
///   for twice with different subjects is refused before, in `create_keys`);
///
/// and then inserts every stream's key row in stream order (concurrent batches lock in the same
/// order), skipping streams that have a key already, and the key material of the rows that went
/// in. ON CONFLICT waits for a concurrent insert of the same stream to settle, so a follow-up
/// read sees the committed winner; a stream given twice in one batch gets the first row's key.
/// The clash check reads the statement's snapshot, so a clashing key created concurrently is
/// only found by that follow-up read: the batch then fails, but the keys it did insert stay.
/// They are valid keys of their own streams, and the retry returns them.
const CREATE_KEYS: &str = "WITH kek AS ( \
       SELECT version FROM kek_versions WHERE version = $6 AND state IN ('active', 'pending') FOR SHARE), \
     input AS ( \
       SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bytea[]) \
       WITH ORDINALITY AS t(id, stream, subject, kek_version, wrapped, n)), \
     clash AS ( \
       SELECT 1 FROM input i CROSS JOIN LATERAL ( \
         SELECT 1 FROM vault_keys k WHERE k.stream = i.stream \
         AND (k.destroyed_at IS NOT NULL OR k.subject IS DISTINCT FROM i.subject) LIMIT 1) c), \
     keys AS ( \
       INSERT INTO vault_keys (id, stream, subject) \
       SELECT id, stream, subject FROM input \
       WHERE EXISTS (SELECT 1 FROM kek) AND NOT EXISTS (SELECT 1 FROM clash) \
       ORDER BY stream, n \
       ON CONFLICT (stream) DO NOTHING RETURNING id), \
     material AS ( \
       INSERT INTO vault_key_material (id, kek_version, wrapped) \
       SELECT i.id, i.kek_version, i.wrapped FROM input i JOIN keys k ON k.id = i.id RETURNING id) \
     SELECT EXISTS (SELECT 1 FROM kek) AS kek_usable, ARRAY(SELECT id FROM material) AS inserted";
const POOL_CONNECTIONS_MAX: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

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
/// Key creation is one batch at a time per process (the caller coalesces), plus a spare.
const CREATE_CONNECTIONS_MAX: u32 = 2;

impl PgStorage {
    pub(crate) async fn open(url: &str) -> Result<PgStorage, VaultError> {
        // The main pool plans each statement for its own parameters, not from a generic plan
        // cached while the tables were empty (they grow faster than autovacuum's ANALYZE
        // follows). Key creation has its own pool: see CREATE_PLANS.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| VaultError::InvalidInput(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone().options([("plan_cache_mode", "force_custom_plan")]))
            .await?;
        super::migrator(MIGRATIONS).run(&pool).await?;
        let create_pool = PgPoolOptions::new()
            .max_connections(CREATE_CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.options(CREATE_PLANS))
            .await?;
        Ok(PgStorage { pool, create_pool })
    }
}

fn version_to_db(v: u32) -> Result<i32, VaultError> {
    i32::try_from(v).map_err(|_| VaultError::Corrupt(format!("KEK version {v} out of range")))
}

fn key_id(row: &sqlx::postgres::PgRow, col: &str) -> Result<KeyId, VaultError> {
    Ok(KeyId(row.try_get::<Uuid, _>(col)?))
}

fn wrapped(row: &sqlx::postgres::PgRow) -> Result<Option<WrappedKey>, VaultError> {
    let version: Option<i32> = row.try_get("kek_version")?;
    let bytes: Option<Vec<u8>> = row.try_get("wrapped")?;
    match (version, bytes) {
        (Some(v), Some(wrapped)) => Ok(Some(WrappedKey {
            kek_version: version_from_db(i64::from(v))?,
            wrapped,
        })),
        _ => Ok(None),
    }
}

#[async_trait]
impl Storage for PgStorage {
    async fn kek_versions(&self) -> Result<Vec<KekVersionRow>, VaultError> {
        let rows = sqlx::query("SELECT version, check_value, state FROM kek_versions ORDER BY version")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KekVersionRow {
                    version: version_from_db(i64::from(r.try_get::<i32, _>("version")?))?,
                    check_value: r.try_get("check_value")?,
                    state: KekState::parse(r.try_get("state")?)?,
                })
            })
            .collect()
    }

    async fn init_kek(&self, check_value: &[u8]) -> Result<(), VaultError> {
        // The primary key makes two processes initialising at once safe: one insert wins, the
        // other process then compares its KEK against the winner's check value.
        sqlx::query(
            "INSERT INTO kek_versions (version, check_value, state) \
             SELECT 1, $1, 'active' WHERE NOT EXISTS (SELECT 1 FROM kek_versions) \
             ON CONFLICT DO NOTHING",
        )
        .bind(check_value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn begin_rotation(&self, check_value: &[u8]) -> Result<KekVersionRow, VaultError> {
        let mut tx = self.pool.begin().await?;
        // Serialise concurrent rotation starts.
        sqlx::query("LOCK TABLE kek_versions IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let pending = sqlx::query("SELECT version, check_value FROM kek_versions WHERE state = 'pending'")
            .fetch_optional(&mut *tx)
            .await?;
        let row = match pending {
            Some(r) => KekVersionRow {
                version: version_from_db(i64::from(r.try_get::<i32, _>("version")?))?,
                check_value: r.try_get("check_value")?,
                state: KekState::Pending,
            },
            None => {
                let next: i32 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM kek_versions")
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO kek_versions (version, check_value, state) VALUES ($1, $2, 'pending')")
                    .bind(next)
                    .bind(check_value)
                    .execute(&mut *tx)
                    .await?;
                KekVersionRow {
                    version: version_from_db(i64::from(next))?,
                    check_value: check_value.to_vec(),
                    state: KekState::Pending,
                }
            }
        };
        tx.commit().await?;
        Ok(row)
    }

    async fn create_keys(&self, rows: &[NewRow<'_>], kek_version: u32) -> Result<CreateResult, VaultError> {
        // A stream asked for twice must be asked for with one subject (the statement's own
        // clash check sees only keys that existed before it).
        let mut subjects: HashMap<&str, Option<&str>> = HashMap::with_capacity(rows.len());
        for row in rows {
            let first = *subjects.entry(row.stream).or_insert(row.subject);
            check_existing(row.stream, row.subject, first, false)?;
        }
        let versions = rows
            .iter()
            .map(|r| version_to_db(r.wrapped.kek_version))
            .collect::<Result<Vec<_>, _>>()?;
        let created = sqlx::query(CREATE_KEYS)
            .bind(rows.iter().map(|r| r.id.0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.stream).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.subject).collect::<Vec<_>>())
            .bind(versions)
            .bind(rows.iter().map(|r| r.wrapped.wrapped.as_slice()).collect::<Vec<_>>())
            .bind(version_to_db(kek_version)?)
            .fetch_one(&self.create_pool)
            .await?;
        if !created.try_get::<bool, _>("kek_usable")? {
            return Ok(CreateResult::KekVersionRetired);
        }
        let inserted: HashSet<Uuid> = created.try_get::<Vec<Uuid>, _>("inserted")?.into_iter().collect();

        // The streams whose key already existed (or went in concurrently): their committed keys.
        let others: Vec<&str> = rows
            .iter()
            .filter(|r| !inserted.contains(&r.id.0))
            .map(|r| r.stream)
            .collect();
        let mut existing: HashMap<String, sqlx::postgres::PgRow> = HashMap::new();
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
        // A clash refuses the batch whichever row it is on (nothing went in then).
        for row in rows {
            if let Some(e) = existing.get(row.stream) {
                let subject: Option<String> = e.try_get("subject")?;
                check_existing(row.stream, row.subject, subject.as_deref(), e.try_get("destroyed")?)?;
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
            let id = key_id(e, "id")?;
            let material =
                wrapped(e)?.ok_or_else(|| VaultError::Corrupt(format!("live key {id} has no key material")))?;
            out.push(Created::Existing(id, material));
        }
        Ok(CreateResult::Done(out))
    }

    async fn fetch_keys(&self, ids: &[KeyId]) -> Result<Vec<Stored>, VaultError> {
        let uuids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let rows = sqlx::query(
            "SELECT k.id, k.destroyed_at IS NOT NULL AS destroyed, m.kek_version, m.wrapped \
             FROM vault_keys k LEFT JOIN vault_key_material m ON m.id = k.id \
             WHERE k.id = ANY($1)",
        )
        .bind(&uuids)
        .fetch_all(&self.pool)
        .await?;
        let mut found: HashMap<KeyId, Stored> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id = key_id(row, "id")?;
            let destroyed: bool = row.try_get("destroyed")?;
            let stored = match (destroyed, wrapped(row)?) {
                (true, _) => Stored::Destroyed,
                (false, Some(w)) => Stored::Live(w),
                (false, None) => {
                    return Err(VaultError::Corrupt(format!("live key {id} has no key material")));
                }
            };
            found.insert(id, stored);
        }
        Ok(ids
            .iter()
            .map(|id| match found.get(id) {
                Some(Stored::Live(w)) => Stored::Live(w.clone()),
                Some(Stored::Destroyed) => Stored::Destroyed,
                _ => Stored::NotFound,
            })
            .collect())
    }

    async fn destroy_subject(&self, subject: &str) -> Result<Vec<KeyId>, VaultError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE vault_keys SET destroyed_at = now() \
             WHERE subject = $1 AND destroyed_at IS NULL RETURNING id, stream",
        )
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = rows
            .iter()
            .map(|r| Ok((r.try_get::<String, _>("stream")?, key_id(r, "id")?)))
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

    async fn destroy_stream(&self, stream: &str) -> Result<Option<KeyId>, VaultError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE vault_keys SET destroyed_at = now() \
             WHERE stream = $1 AND destroyed_at IS NULL RETURNING id",
        )
        .bind(stream)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id = key_id(&row, "id")?;
        sqlx::query("DELETE FROM vault_key_material WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    async fn purge(&self) -> Result<(), VaultError> {
        // VACUUM cannot run inside a transaction block; raw_sql sends it as a simple query on a
        // pooled connection outside any transaction.
        sqlx::raw_sql("VACUUM vault_key_material").execute(&self.pool).await?;
        Ok(())
    }

    async fn counts(&self) -> Result<(u64, u64), VaultError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM vault_key_material) AS live, \
                    (SELECT count(*) FROM vault_keys WHERE destroyed_at IS NOT NULL) AS destroyed",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((
            count_from_db(row.try_get("live")?),
            count_from_db(row.try_get("destroyed")?),
        ))
    }

    async fn rotation_batch(&self, target: u32, limit: usize) -> Result<Vec<MaterialRow>, VaultError> {
        let rows = sqlx::query(
            "SELECT id, kek_version, wrapped FROM vault_key_material \
             WHERE kek_version <> $1 ORDER BY id LIMIT $2",
        )
        .bind(version_to_db(target)?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id = key_id(r, "id")?;
                let key = wrapped(r)?.ok_or_else(|| VaultError::Corrupt(format!("key {id} has no material")))?;
                Ok(MaterialRow { id, key })
            })
            .collect()
    }

    async fn rewrap(&self, batch: &[Rewrap]) -> Result<u64, VaultError> {
        let mut tx = self.pool.begin().await?;
        let mut updated = 0;
        for r in batch {
            updated += sqlx::query(
                "UPDATE vault_key_material SET kek_version = $1, wrapped = $2 \
                 WHERE id = $3 AND kek_version = $4",
            )
            .bind(version_to_db(r.to.kek_version)?)
            .bind(&r.to.wrapped)
            .bind(r.id.0)
            .bind(version_to_db(r.from_version)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
    }

    async fn finish_rotation(&self, target: u32) -> Result<bool, VaultError> {
        let mut tx = self.pool.begin().await?;
        // Updating the active row first waits for every create holding it FOR SHARE; the count
        // below (a fresh snapshot under READ COMMITTED) then sees their rows.
        sqlx::query("UPDATE kek_versions SET state = 'retired' WHERE state = 'active'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE kek_versions SET state = 'active' WHERE version = $1 AND state = 'pending'")
            .bind(version_to_db(target)?)
            .execute(&mut *tx)
            .await?;
        let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM vault_key_material WHERE kek_version <> $1")
            .bind(version_to_db(target)?)
            .fetch_one(&mut *tx)
            .await?;
        if remaining > 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn versions_in_use(&self) -> Result<Vec<u32>, VaultError> {
        let rows: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT kek_version FROM vault_key_material ORDER BY 1")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|v| version_from_db(i64::from(v))).collect()
    }

    async fn health(&self) -> Result<(), VaultError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
