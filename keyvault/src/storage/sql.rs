//! What the two engines share, written once: the one implementation of [`Storage`] for every
//! [`Engine`], and the decoding of the rows it reads. An engine supplies only its pool, how a
//! write transaction begins, and the statements and steps that really differ between SQLite
//! and PostgreSQL.
//!
//! The shared statements use `$N` placeholders, which sqlx binds by number on both engines.

use std::collections::HashMap;
use std::future::Future;

use async_trait::async_trait;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Transaction, Type,
};
use uuid::Uuid;

use super::{
    BeginEpoch, CreateResult, Created, Finish, KekState, KekVersionRow, KeyCounts, MakeEpoch, MaterialRow, NewRow,
    Rewrap, Storage, Stored, WrappedKey, check_existing, count_from_db, version_from_db,
};
use crate::error::VaultError;
use crate::keys::{KeyId, SUBJECT_KEY_PREFIX};

/// Records a subject as forgotten, once: run by each engine's `destroy_subject` in the
/// transaction that destroys the subject's keys.
pub(crate) const FORGET_SUBJECT: &str =
    "INSERT INTO forgotten_subjects (subject) VALUES ($1) ON CONFLICT (subject) DO NOTHING";

/// The row type of an engine's database.
pub(crate) type DbRow<E> = <<E as Engine>::Db as Database>::Row;

/// What an engine supplies to the shared [`Storage`] implementation.
pub(crate) trait Engine: Send + Sync + 'static {
    type Db: Database;
    /// What a `kek_version` column decodes to and is bound as: INTEGER is 32 bits on
    /// PostgreSQL and 64 on SQLite.
    type Version: TryFrom<u32> + Into<i64> + Copy + Send + Sync + Unpin + 'static;

    /// SQL for the current time as `destroyed_at` stores it.
    const NOW: &'static str;
    /// Run first in the transactions that start a rotation or an epoch, where beginning it
    /// does not already keep two of them apart.
    const LOCK_KEK_VERSIONS: Option<&'static str>;
    /// Appended to `finish_rotation`'s read of the target version: a row lock where the
    /// transaction itself does not already serialise writers.
    const FOR_UPDATE: &'static str;
    /// `finish_rotation` switches the active KEK version before it counts the keys still
    /// wrapped with another version (rolling the switch back if there are any) instead of after.
    const SWITCH_BEFORE_COUNT: bool;

    fn pool(&self) -> &Pool<Self::Db>;
    fn begin_write(&self) -> impl Future<Output = Result<Transaction<'static, Self::Db>, VaultError>> + Send;
    /// [`Storage::create_keys`].
    fn create_keys(
        &self,
        rows: &[NewRow<'_>],
        kek_version: u32,
    ) -> impl Future<Output = Result<CreateResult, VaultError>> + Send;
    /// The existing keys among `ids`, as rows of `id`, `destroyed`, `kek_version`, `wrapped`.
    fn fetch_key_rows(
        &self,
        ids: &[KeyId],
    ) -> impl Future<Output = Result<Vec<<Self::Db as Database>::Row>, VaultError>> + Send;
    /// [`Storage::destroy_subject`].
    fn destroy_subject(&self, subject: &str) -> impl Future<Output = Result<Vec<KeyId>, VaultError>> + Send;
    /// [`Storage::purge`].
    fn purge(&self) -> impl Future<Output = Result<(), VaultError>> + Send;
}

/// The rows a statement changed: sqlx gives each engine's result the method, but no trait.
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::sqlite::SqliteQueryResult::rows_affected(self)
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::postgres::PgQueryResult::rows_affected(self)
    }
}

pub(crate) fn version_to_db<V: TryFrom<u32>>(v: u32) -> Result<V, VaultError> {
    V::try_from(v).map_err(|_| VaultError::Corrupt(format!("KEK version {v} out of range")))
}

/// The key id in column `id`.
pub(crate) fn key_id<R: Row>(row: &R) -> Result<KeyId, VaultError>
where
    for<'r> Uuid: Decode<'r, R::Database> + Type<R::Database>,
    for<'q> &'q str: ColumnIndex<R>,
{
    Ok(KeyId(row.try_get::<Uuid, _>("id")?))
}

/// The key material in columns `kek_version` and `wrapped`, if the row has any.
pub(crate) fn wrapped<E: Engine>(row: &DbRow<E>) -> Result<Option<WrappedKey>, VaultError>
where
    for<'r> E::Version: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> Vec<u8>: Decode<'r, E::Db> + Type<E::Db>,
    for<'q> &'q str: ColumnIndex<DbRow<E>>,
{
    let version: Option<E::Version> = row.try_get("kek_version")?;
    let bytes: Option<Vec<u8>> = row.try_get("wrapped")?;
    match (version, bytes) {
        (Some(v), Some(wrapped)) => Ok(Some(WrappedKey {
            kek_version: version_from_db(v.into())?,
            wrapped,
        })),
        _ => Ok(None),
    }
}

/// Applies [`check_existing`] to the stream's existing key row (columns `subject`, `destroyed`).
pub(crate) fn check_existing_row<E: Engine>(
    stream: &str,
    requested_subject: Option<&str>,
    existing: &DbRow<E>,
) -> Result<(), VaultError>
where
    for<'r> String: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> bool: Decode<'r, E::Db> + Type<E::Db>,
    for<'q> &'q str: ColumnIndex<DbRow<E>>,
{
    let subject: Option<String> = existing.try_get("subject")?;
    check_existing(
        stream,
        requested_subject,
        subject.as_deref(),
        existing.try_get("destroyed")?,
    )
}

/// The stream's existing live key, as `create_keys` answers it.
pub(crate) fn existing_key<E: Engine>(existing: &DbRow<E>) -> Result<Created, VaultError>
where
    for<'r> Uuid: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> E::Version: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> Vec<u8>: Decode<'r, E::Db> + Type<E::Db>,
    for<'q> &'q str: ColumnIndex<DbRow<E>>,
{
    let id = key_id(existing)?;
    let material =
        wrapped::<E>(existing)?.ok_or_else(|| VaultError::Corrupt(format!("live key {id} has no key material")))?;
    Ok(Created::Existing(id, material))
}

/// Retires the active KEK version (superseded at `now`) and activates `target` (activated at
/// `now`) if it is pending; returns the version retired.
async fn switch_active<DB, V>(tx: &mut Transaction<'static, DB>, target: V, now: i64) -> Result<Option<V>, VaultError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> V: Encode<'q, DB> + Decode<'q, DB> + Type<DB> + Send + Unpin,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let from: Option<V> = sqlx::query_scalar(
        "UPDATE kek_versions SET state = 'retired', superseded_at = $1 WHERE state = 'active' RETURNING version",
    )
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    sqlx::query("UPDATE kek_versions SET state = 'active', activated_at = $2 WHERE version = $1 AND state = 'pending'")
        .bind(target)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(from)
}

/// A row of columns `id`, `kek_version`, `wrapped` of a live key.
fn material_row<E: Engine>(r: &DbRow<E>) -> Result<MaterialRow, VaultError>
where
    for<'r> Uuid: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> E::Version: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> Vec<u8>: Decode<'r, E::Db> + Type<E::Db>,
    for<'q> &'q str: ColumnIndex<DbRow<E>>,
{
    let id = key_id(r)?;
    let key = wrapped::<E>(r)?.ok_or_else(|| VaultError::Corrupt(format!("key {id} has no material")))?;
    Ok(MaterialRow { id, key })
}

/// `$first, $first+1, …` for `n` bound values: an `IN` list both engines bind by number.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The version row's columns, as [`Storage::kek_versions`] selects them.
const VERSION_COLUMNS: &str = "version, check_value, state, activated_at, superseded_at, destroyed_at";

fn version_row<E: Engine>(r: &DbRow<E>) -> Result<KekVersionRow, VaultError>
where
    for<'r> E::Version: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> Vec<u8>: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> &'r str: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> i64: Decode<'r, E::Db> + Type<E::Db>,
    for<'q> &'q str: ColumnIndex<DbRow<E>>,
{
    Ok(KekVersionRow {
        version: version_from_db(r.try_get::<E::Version, _>("version")?.into())?,
        check_value: r.try_get("check_value")?,
        state: KekState::parse(r.try_get("state")?)?,
        activated_at: r.try_get("activated_at")?,
        superseded_at: r.try_get("superseded_at")?,
        destroyed_at: r.try_get("destroyed_at")?,
    })
}

/// Begins a write transaction that starts a rotation or an epoch: the engine's lock on
/// `kek_versions` first, where beginning it does not already keep two of them apart.
async fn begin_versions_write<E: Engine>(engine: &E) -> Result<Transaction<'static, E::Db>, VaultError>
where
    for<'c> &'c mut <E::Db as Database>::Connection: Executor<'c, Database = E::Db>,
    <E::Db as Database>::Arguments: IntoArguments<E::Db>,
{
    let mut tx = engine.begin_write().await?;
    if let Some(lock) = E::LOCK_KEK_VERSIONS {
        sqlx::query(lock).execute(&mut *tx).await?;
    }
    Ok(tx)
}

/// The pending version's row, if there is one, read inside a locked transaction.
async fn pending_version<E: Engine>(tx: &mut Transaction<'static, E::Db>) -> Result<Option<KekVersionRow>, VaultError>
where
    for<'c> &'c mut <E::Db as Database>::Connection: Executor<'c, Database = E::Db>,
    <E::Db as Database>::Arguments: IntoArguments<E::Db>,
    for<'r> E::Version: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> Vec<u8>: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> &'r str: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> i64: Decode<'r, E::Db> + Type<E::Db>,
    for<'q> &'q str: ColumnIndex<DbRow<E>>,
{
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {VERSION_COLUMNS} FROM kek_versions WHERE state = 'pending'"
    )))
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(version_row::<E>).transpose()
}

/// The active and pending versions, read inside a locked transaction.
async fn active_and_pending<E: Engine>(
    tx: &mut Transaction<'static, E::Db>,
) -> Result<(Option<u32>, Option<u32>), VaultError>
where
    for<'c> &'c mut <E::Db as Database>::Connection: Executor<'c, Database = E::Db>,
    <E::Db as Database>::Arguments: IntoArguments<E::Db>,
    for<'r> E::Version: Decode<'r, E::Db> + Type<E::Db>,
    for<'r> String: Decode<'r, E::Db> + Type<E::Db>,
    for<'q> &'q str: ColumnIndex<DbRow<E>>,
{
    let rows = sqlx::query("SELECT version, state FROM kek_versions WHERE state IN ('active', 'pending')")
        .fetch_all(&mut **tx)
        .await?;
    let (mut active, mut pending) = (None, None);
    for r in &rows {
        let version = version_from_db(r.try_get::<E::Version, _>("version")?.into())?;
        match r.try_get::<String, _>("state")?.as_str() {
            "active" => active = Some(version),
            _ => pending = Some(version),
        }
    }
    Ok((active, pending))
}

/// The highest version recorded (0 if none), read inside a locked transaction.
async fn max_version<E: Engine>(tx: &mut Transaction<'static, E::Db>) -> Result<u32, VaultError>
where
    for<'c> &'c mut <E::Db as Database>::Connection: Executor<'c, Database = E::Db>,
    <E::Db as Database>::Arguments: IntoArguments<E::Db>,
    for<'r> E::Version: Decode<'r, E::Db> + Type<E::Db>,
    usize: ColumnIndex<DbRow<E>>,
{
    let max: Option<E::Version> = sqlx::query_scalar("SELECT MAX(version) FROM kek_versions")
        .fetch_one(&mut **tx)
        .await?;
    match max {
        Some(v) => version_from_db(v.into()),
        None => Ok(0),
    }
}

#[async_trait]
impl<E> Storage for E
where
    E: Engine,
    for<'c> &'c mut <E::Db as Database>::Connection: Executor<'c, Database = E::Db>,
    <E::Db as Database>::Arguments: IntoArguments<E::Db>,
    for<'q> &'q str: Encode<'q, E::Db> + Decode<'q, E::Db> + Type<E::Db> + ColumnIndex<DbRow<E>>,
    for<'q> &'q [u8]: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> Vec<u8>: Decode<'q, E::Db> + Type<E::Db>,
    for<'q> String: Decode<'q, E::Db> + Type<E::Db>,
    for<'q> bool: Decode<'q, E::Db> + Type<E::Db>,
    for<'q> i64: Encode<'q, E::Db> + Decode<'q, E::Db> + Type<E::Db>,
    for<'q> Uuid: Encode<'q, E::Db> + Decode<'q, E::Db> + Type<E::Db>,
    for<'q> E::Version: Encode<'q, E::Db> + Decode<'q, E::Db> + Type<E::Db>,
    usize: ColumnIndex<DbRow<E>>,
    <E::Db as Database>::QueryResult: RowsAffected,
{
    async fn kek_versions(&self) -> Result<Vec<KekVersionRow>, VaultError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM kek_versions ORDER BY version"
        )))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(version_row::<E>).collect()
    }

    async fn init_kek(&self, version: u32, check_value: &[u8], now: i64) -> Result<(), VaultError> {
        // The primary key makes two processes initialising at once safe on PostgreSQL: one
        // insert wins, the other process then compares its KEK against the winner's check
        // value. (On SQLite the statement runs under the database's write lock, so NOT EXISTS
        // alone decides.)
        // (Without a conflict target, ON CONFLICT also covers the one-active index, which two
        // processes inserting different versions would meet.)
        sqlx::query(
            "INSERT INTO kek_versions (version, check_value, state, activated_at) \
             SELECT $1, $2, 'active', $3 WHERE NOT EXISTS (SELECT 1 FROM kek_versions) \
             ON CONFLICT DO NOTHING",
        )
        .bind(version_to_db::<E::Version>(version)?)
        .bind(check_value)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn begin_rotation(&self, check_value: &[u8]) -> Result<KekVersionRow, VaultError> {
        let mut tx = begin_versions_write(self).await?;
        let row = match pending_version::<E>(&mut tx).await? {
            Some(row) => row,
            None => {
                let next: E::Version = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM kek_versions")
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO kek_versions (version, check_value, state) VALUES ($1, $2, 'pending')")
                    .bind(next)
                    .bind(check_value)
                    .execute(&mut *tx)
                    .await?;
                KekVersionRow {
                    version: version_from_db(next.into())?,
                    check_value: check_value.to_vec(),
                    state: KekState::Pending,
                    activated_at: None,
                    superseded_at: None,
                    destroyed_at: None,
                }
            }
        };
        tx.commit().await?;
        Ok(row)
    }

    async fn begin_epoch(&self, expected_active: u32, make: MakeEpoch<'_>) -> Result<BeginEpoch, VaultError> {
        let mut tx = begin_versions_write(self).await?;
        if let Some(row) = pending_version::<E>(&mut tx).await? {
            return Ok(BeginEpoch::Pending(row));
        }
        let (active, _) = active_and_pending::<E>(&mut tx).await?;
        if active != Some(expected_active) {
            return Ok(BeginEpoch::ActiveChanged);
        }
        let (version, check_value) = make(max_version::<E>(&mut tx).await?)?;
        sqlx::query("INSERT INTO kek_versions (version, check_value, state) VALUES ($1, $2, 'pending')")
            .bind(version_to_db::<E::Version>(version)?)
            .bind(check_value.as_slice())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(BeginEpoch::Started(KekVersionRow {
            version,
            check_value,
            state: KekState::Pending,
            activated_at: None,
            superseded_at: None,
            destroyed_at: None,
        }))
    }

    async fn replace_active(
        &self,
        expected_active: Option<u32>,
        expected_pending: Option<u32>,
        now: i64,
        make: MakeEpoch<'_>,
    ) -> Result<bool, VaultError> {
        let mut tx = begin_versions_write(self).await?;
        if active_and_pending::<E>(&mut tx).await? != (expected_active, expected_pending) {
            return Ok(false);
        }
        let (version, check_value) = make(max_version::<E>(&mut tx).await?)?;
        sqlx::query(
            "UPDATE kek_versions SET state = 'retired', superseded_at = $1 WHERE state IN ('active', 'pending')",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO kek_versions (version, check_value, state, activated_at) VALUES ($1, $2, 'active', $3)",
        )
        .bind(version_to_db::<E::Version>(version)?)
        .bind(check_value.as_slice())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn abandon_pending(&self, version: u32, now: i64) -> Result<(), VaultError> {
        sqlx::query(
            "UPDATE kek_versions SET state = 'retired', superseded_at = $2 WHERE version = $1 AND state = 'pending'",
        )
        .bind(version_to_db::<E::Version>(version)?)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn record_orphan(&self, version: u32, check_value: &[u8], now: i64) -> Result<(), VaultError> {
        sqlx::query(
            "INSERT INTO kek_versions (version, check_value, state, superseded_at) \
             VALUES ($1, $2, 'retired', $3) ON CONFLICT DO NOTHING",
        )
        .bind(version_to_db::<E::Version>(version)?)
        .bind(check_value)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn mark_destroyed(&self, version: u32, now: i64) -> Result<(), VaultError> {
        sqlx::query(
            "UPDATE kek_versions SET destroyed_at = $2 \
             WHERE version = $1 AND state = 'retired' AND destroyed_at IS NULL",
        )
        .bind(version_to_db::<E::Version>(version)?)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn create_keys(&self, rows: &[NewRow<'_>], kek_version: u32) -> Result<CreateResult, VaultError> {
        <E as Engine>::create_keys(self, rows, kek_version).await
    }

    async fn fetch_keys(&self, ids: &[KeyId]) -> Result<Vec<Stored>, VaultError> {
        let rows = self.fetch_key_rows(ids).await?;
        let mut found: HashMap<KeyId, Stored> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id = key_id(row)?;
            let destroyed: bool = row.try_get("destroyed")?;
            let stored = match (destroyed, wrapped::<E>(row)?) {
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
        <E as Engine>::destroy_subject(self, subject).await
    }

    async fn destroy_stream(&self, stream: &str) -> Result<Option<KeyId>, VaultError> {
        let mut tx = self.begin_write().await?;
        // Marking the key claims it: a concurrent destroy of the same stream (on PostgreSQL,
        // waiting on the row lock this takes) then finds no live key.
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE vault_keys SET destroyed_at = {} \
             WHERE stream = $1 AND destroyed_at IS NULL RETURNING id",
            E::NOW
        )))
        .bind(stream)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id = key_id(&row)?;
        sqlx::query("DELETE FROM vault_key_material WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    async fn purge(&self) -> Result<(), VaultError> {
        <E as Engine>::purge(self).await
    }

    async fn counts(&self) -> Result<KeyCounts, VaultError> {
        // Subject keys are the keys named in the reserved `$subject:` namespace (`$1`).
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM vault_key_material) AS live, \
                    (SELECT count(*) FROM vault_keys WHERE destroyed_at IS NOT NULL) AS destroyed, \
                    (SELECT count(*) FROM vault_keys WHERE destroyed_at IS NULL \
                       AND substr(stream, 1, length($1)) = $1) AS subject_live, \
                    (SELECT count(*) FROM vault_keys WHERE destroyed_at IS NOT NULL \
                       AND substr(stream, 1, length($1)) = $1) AS subject_destroyed",
        )
        .bind(SUBJECT_KEY_PREFIX)
        .fetch_one(self.pool())
        .await?;
        Ok(KeyCounts {
            live: count_from_db(row.try_get("live")?),
            destroyed: count_from_db(row.try_get("destroyed")?),
            subject_live: count_from_db(row.try_get("subject_live")?),
            subject_destroyed: count_from_db(row.try_get("subject_destroyed")?),
        })
    }

    async fn rotation_batch(&self, sources: &[u32], limit: usize) -> Result<Vec<MaterialRow>, VaultError> {
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        // Only placeholders are interpolated; every value is bound.
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, kek_version, wrapped FROM vault_key_material \
             WHERE kek_version IN ({}) ORDER BY id LIMIT $1",
            placeholders(2, sources.len())
        )))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        for v in sources {
            q = q.bind(version_to_db::<E::Version>(*v)?);
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter().map(material_row::<E>).collect()
    }

    async fn sample_key(&self, version: u32) -> Result<Option<MaterialRow>, VaultError> {
        let row = sqlx::query("SELECT id, kek_version, wrapped FROM vault_key_material WHERE kek_version = $1 LIMIT 1")
            .bind(version_to_db::<E::Version>(version)?)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(material_row::<E>).transpose()
    }

    async fn rewrap(&self, batch: &[Rewrap]) -> Result<u64, VaultError> {
        let mut tx = self.begin_write().await?;
        let mut updated = 0;
        for r in batch {
            let done = sqlx::query(
                "UPDATE vault_key_material SET kek_version = $1, wrapped = $2 \
                 WHERE id = $3 AND kek_version = $4",
            )
            .bind(version_to_db::<E::Version>(r.to.kek_version)?)
            .bind(r.to.wrapped.as_slice())
            .bind(r.id.0)
            .bind(version_to_db::<E::Version>(r.from_version)?)
            .execute(&mut *tx)
            .await?;
            updated += done.rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
    }

    async fn finish_rotation(&self, target: u32, sources: &[u32], now: i64) -> Result<Finish, VaultError> {
        let target_db = version_to_db::<E::Version>(target)?;
        let mut tx = self.begin_write().await?;
        // Locks the target's row (PostgreSQL), so of two processes finishing the same rotation
        // the second waits and then sees it active, instead of retiring it.
        let state: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT state FROM kek_versions WHERE version = $1{}",
            E::FOR_UPDATE
        )))
        .bind(target_db)
        .fetch_optional(&mut *tx)
        .await?;
        match state.as_deref() {
            Some("pending") => {}
            Some("active") => return Ok(Finish::AlreadyActive),
            _ => {
                return Err(VaultError::Unavailable(format!(
                    "the rotation to KEK version {target} was abandoned meanwhile; retry"
                )));
            }
        }
        // See SWITCH_BEFORE_COUNT of each engine for why the order differs.
        let mut from = None;
        if E::SWITCH_BEFORE_COUNT {
            from = switch_active(&mut tx, target_db, now).await?;
        }
        let remaining: i64 = if sources.is_empty() {
            0
        } else {
            let mut q = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM vault_key_material WHERE kek_version IN ({})",
                placeholders(1, sources.len())
            )));
            for v in sources {
                q = q.bind(version_to_db::<E::Version>(*v)?);
            }
            q.fetch_one(&mut *tx).await?
        };
        if remaining > 0 {
            tx.rollback().await?;
            return Ok(Finish::KeysLeft);
        }
        if !E::SWITCH_BEFORE_COUNT {
            from = switch_active(&mut tx, target_db, now).await?;
        }
        tx.commit().await?;
        let from = match from {
            Some(v) => version_from_db(v.into())?,
            None => return Err(VaultError::Corrupt("no active KEK version".into())),
        };
        Ok(Finish::Switched { from })
    }

    async fn keys_per_version(&self) -> Result<Vec<(u32, u64)>, VaultError> {
        let rows =
            sqlx::query("SELECT kek_version, count(*) AS n FROM vault_key_material GROUP BY kek_version ORDER BY 1")
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    version_from_db(r.try_get::<E::Version, _>("kek_version")?.into())?,
                    count_from_db(r.try_get("n")?),
                ))
            })
            .collect()
    }

    async fn health(&self) -> Result<(), VaultError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }
}
