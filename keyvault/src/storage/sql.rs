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
    CreateResult, Created, KekState, KekVersionRow, KeyCounts, MaterialRow, NewRow, Rewrap, Storage, Stored,
    WrappedKey, check_existing, count_from_db, version_from_db,
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
    /// Run first in `begin_rotation`'s transaction, where beginning it does not already keep
    /// concurrent rotation starts apart.
    const LOCK_KEK_VERSIONS: Option<&'static str>;
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

/// Retires the active KEK version and activates `target` if it is pending.
async fn switch_active<DB, V>(tx: &mut Transaction<'static, DB>, target: V) -> Result<(), VaultError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> V: Encode<'q, DB> + Type<DB> + Send,
{
    sqlx::query("UPDATE kek_versions SET state = 'retired' WHERE state = 'active'")
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE kek_versions SET state = 'active' WHERE version = $1 AND state = 'pending'")
        .bind(target)
        .execute(&mut **tx)
        .await?;
    Ok(())
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
        let rows = sqlx::query("SELECT version, check_value, state FROM kek_versions ORDER BY version")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KekVersionRow {
                    version: version_from_db(r.try_get::<E::Version, _>("version")?.into())?,
                    check_value: r.try_get("check_value")?,
                    state: KekState::parse(r.try_get("state")?)?,
                })
            })
            .collect()
    }

    async fn init_kek(&self, check_value: &[u8]) -> Result<(), VaultError> {
        // The primary key makes two processes initialising at once safe on PostgreSQL: one
        // insert wins, the other process then compares its KEK against the winner's check
        // value. (On SQLite the statement runs under the database's write lock, so NOT EXISTS
        // alone decides.)
        sqlx::query(
            "INSERT INTO kek_versions (version, check_value, state) \
             SELECT 1, $1, 'active' WHERE NOT EXISTS (SELECT 1 FROM kek_versions) \
             ON CONFLICT DO NOTHING",
        )
        .bind(check_value)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn begin_rotation(&self, check_value: &[u8]) -> Result<KekVersionRow, VaultError> {
        let mut tx = self.begin_write().await?;
        if let Some(lock) = E::LOCK_KEK_VERSIONS {
            sqlx::query(lock).execute(&mut *tx).await?;
        }
        let pending = sqlx::query("SELECT version, check_value FROM kek_versions WHERE state = 'pending'")
            .fetch_optional(&mut *tx)
            .await?;
        let row = match pending {
            Some(r) => KekVersionRow {
                version: version_from_db(r.try_get::<E::Version, _>("version")?.into())?,
                check_value: r.try_get("check_value")?,
                state: KekState::Pending,
            },
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
                }
            }
        };
        tx.commit().await?;
        Ok(row)
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

    async fn rotation_batch(&self, target: u32, limit: usize) -> Result<Vec<MaterialRow>, VaultError> {
        let rows = sqlx::query(
            "SELECT id, kek_version, wrapped FROM vault_key_material \
             WHERE kek_version <> $1 ORDER BY id LIMIT $2",
        )
        .bind(version_to_db::<E::Version>(target)?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let id = key_id(r)?;
                let key = wrapped::<E>(r)?.ok_or_else(|| VaultError::Corrupt(format!("key {id} has no material")))?;
                Ok(MaterialRow { id, key })
            })
            .collect()
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

    async fn finish_rotation(&self, target: u32) -> Result<bool, VaultError> {
        let target = version_to_db::<E::Version>(target)?;
        let mut tx = self.begin_write().await?;
        // See SWITCH_BEFORE_COUNT of each engine for why the order differs.
        if E::SWITCH_BEFORE_COUNT {
            switch_active(&mut tx, target).await?;
        }
        let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM vault_key_material WHERE kek_version <> $1")
            .bind(target)
            .fetch_one(&mut *tx)
            .await?;
        if remaining > 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if !E::SWITCH_BEFORE_COUNT {
            switch_active(&mut tx, target).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn versions_in_use(&self) -> Result<Vec<u32>, VaultError> {
        let rows: Vec<E::Version> =
            sqlx::query_scalar("SELECT DISTINCT kek_version FROM vault_key_material ORDER BY 1")
                .fetch_all(self.pool())
                .await?;
        rows.into_iter().map(|v| version_from_db(v.into())).collect()
    }

    async fn health(&self) -> Result<(), VaultError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }
}
