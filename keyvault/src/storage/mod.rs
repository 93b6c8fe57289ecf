//! Where wrapped keys live. The vault logic in `local.rs` sees one small trait, [`Storage`], and
//! never branches on the engine.
//!
//! `Storage` is implemented once, in `sql.rs`, for every [`sql::Engine`]: what SQLite and
//! PostgreSQL do alike (most statements, the transactions around them, decoding rows) is
//! written there a single time, so a fix or a new rule cannot reach one engine and miss the
//! other. `sqlite.rs` and `postgres.rs` implement `Engine`: opening the database, how a write
//! transaction begins, and only the statements and steps that really differ (key creation,
//! batched lookups, destroying a subject's keys, purging), as methods or SQL constants.
//!
//! Architecture invariant: storage sees wrapped keys only. It never holds a KEK or a DEK, so
//! nothing here can leak one.

use std::fmt;

use async_trait::async_trait;

use crate::error::VaultError;
use crate::keys::KeyId;

pub(crate) mod postgres;
pub(crate) mod sql;
pub(crate) mod sqlite;

/// Name of the migrations bookkeeping table: distinct from sqlx's default so that even a
/// misconfigured shared database cannot mix up the vault's and the event store's migrations.
pub(crate) const MIGRATIONS_TABLE: &str = "_lethe_keyvault_migrations";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KekState {
    Active,
    Pending,
    Retired,
}

impl KekState {
    pub(crate) fn parse(s: &str) -> Result<KekState, VaultError> {
        match s {
            "active" => Ok(KekState::Active),
            "pending" => Ok(KekState::Pending),
            "retired" => Ok(KekState::Retired),
            other => Err(VaultError::Corrupt(format!("unknown KEK state {other:?}"))),
        }
    }
}

/// One KEK version (the provider's epoch) as recorded. Times are unix microseconds of the
/// vault's clock; `destroyed_at` is set (state `retired`) once the provider destroyed its KEK.
#[derive(Debug, Clone)]
pub(crate) struct KekVersionRow {
    pub version: u32,
    /// A legacy 32-byte HMAC check value, or a block of zeros wrapped under the epoch's KEK.
    pub check_value: Vec<u8>,
    pub state: KekState,
    pub activated_at: Option<i64>,
    pub superseded_at: Option<i64>,
    pub destroyed_at: Option<i64>,
}

/// Makes the next epoch inside the KEK provider while storage holds its lock on the KEK
/// versions: given the highest version recorded, it returns the new version and its check
/// value. Storage only calls it; it never sees a KEK.
pub(crate) type MakeEpoch<'a> = &'a (dyn Fn(u32) -> Result<(u32, Vec<u8>), VaultError> + Send + Sync);

/// What [`Storage::begin_epoch`] found under its lock.
#[derive(Debug)]
pub(crate) enum BeginEpoch {
    /// A new epoch was made and recorded as pending.
    Started(KekVersionRow),
    /// A rotation was already pending (another process, or one interrupted): resume it.
    Pending(KekVersionRow),
    /// The active version is no longer the one the caller saw: another process rotated.
    ActiveChanged,
}

/// What [`Storage::finish_rotation`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// `target` is now active; `from` (the previous active version) retired.
    Switched { from: u32 },
    /// Another process finished this rotation first.
    AlreadyActive,
    /// Keys are still wrapped with a source version: nothing changed.
    KeysLeft,
}

/// A wrapped DEK as stored. Wrapped bytes are ciphertext, but Debug still omits them: they are
/// exactly what physical deletion must remove, so they should not end up in logs either.
#[derive(Clone)]
pub(crate) struct WrappedKey {
    pub kek_version: u32,
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WrappedKey {{ kek_version: {}, wrapped: <{} bytes> }}",
            self.kek_version,
            self.wrapped.len()
        )
    }
}

/// A new key, already wrapped, to insert if its stream has none.
#[derive(Debug)]
pub(crate) struct NewRow<'a> {
    pub id: KeyId,
    pub stream: &'a str,
    pub subject: Option<&'a str>,
    pub wrapped: WrappedKey,
}

/// Per requested stream: our new row went in, or the stream's live key already existed.
#[derive(Debug)]
pub(crate) enum Created {
    Inserted(KeyId),
    Existing(KeyId, WrappedKey),
}

#[derive(Debug)]
pub(crate) enum CreateResult {
    Done(Vec<Created>),
    /// The KEK version the rows were wrapped with is no longer active or pending (another
    /// process finished a rotation); nothing was written.
    KekVersionRetired,
}

#[derive(Debug)]
pub(crate) enum Stored {
    Live(WrappedKey),
    Destroyed,
    NotFound,
}

/// One re-wrapped key of a rotation batch.
#[derive(Debug)]
pub(crate) struct Rewrap {
    pub id: KeyId,
    pub from_version: u32,
    pub to: WrappedKey,
}

#[derive(Debug)]
pub(crate) struct MaterialRow {
    pub id: KeyId,
    pub key: WrappedKey,
}

#[async_trait]
pub(crate) trait Storage: Send + Sync + 'static {
    async fn kek_versions(&self) -> Result<Vec<KekVersionRow>, VaultError>;
    /// Records `check_value` as KEK version `version` (active since `now`) if no version
    /// exists yet.
    async fn init_kek(&self, version: u32, check_value: &[u8], now: i64) -> Result<(), VaultError>;
    /// Records `check_value` as the pending rotation target (max version + 1) unless a pending
    /// version exists already; returns the pending version row either way. (KEKs handed in.)
    async fn begin_rotation(&self, check_value: &[u8]) -> Result<KekVersionRow, VaultError>;
    /// Under a lock on the KEK versions (so two processes never start two epochs): unless a
    /// rotation is pending or the active version is no longer `expected_active`, makes the next
    /// epoch with `make` and records it as pending.
    async fn begin_epoch(&self, expected_active: u32, make: MakeEpoch<'_>) -> Result<BeginEpoch, VaultError>;
    /// Under the same lock: if the active and pending versions are still the expected ones,
    /// retires both (superseded at `now`) and records a new epoch made by `make` as active at
    /// once. For a vault whose provider no longer holds its active epoch. False if another
    /// process changed the versions first (nothing written).
    async fn replace_active(
        &self,
        expected_active: Option<u32>,
        expected_pending: Option<u32>,
        now: i64,
        make: MakeEpoch<'_>,
    ) -> Result<bool, VaultError>;
    /// Gives up the pending rotation to `version` (retired, superseded at `now`), if still
    /// pending: its provider no longer holds the KEK.
    async fn abandon_pending(&self, version: u32, now: i64) -> Result<(), VaultError>;
    /// Records the retired `version` as destroyed at `now` (its provider destroyed the KEK).
    async fn mark_destroyed(&self, version: u32, now: i64) -> Result<(), VaultError>;
    /// Records an epoch the provider holds but this database never recorded (it wrapped keys
    /// of another timeline: a database restored from a backup, or a fresh database on an old
    /// keys directory) as retired, superseded at `now`, so that retention destroys it. Does
    /// nothing if the version is recorded meanwhile.
    async fn record_orphan(&self, version: u32, check_value: &[u8], now: i64) -> Result<(), VaultError>;
    /// One transaction: for each row, insert it unless its stream has a key. A row bound to a
    /// forgotten subject fails the whole batch with `SubjectForgotten` (checked first, in the
    /// same transaction, so no key of a subject is created after its forget commits); then
    /// rows whose stream has a live key bound to another subject, or a destroyed key, fail it.
    async fn create_keys(&self, rows: &[NewRow<'_>], kek_version: u32) -> Result<CreateResult, VaultError>;
    async fn fetch_keys(&self, ids: &[KeyId]) -> Result<Vec<Stored>, VaultError>;
    /// One transaction: records `subject` as forgotten (if it is not yet) and deletes the key
    /// material of every live key of `subject`, leaving tombstones.
    async fn destroy_subject(&self, subject: &str) -> Result<Vec<KeyId>, VaultError>;
    async fn destroy_stream(&self, stream: &str) -> Result<Option<KeyId>, VaultError>;
    /// Makes earlier deletions physical (WAL checkpoint / VACUUM). Runs outside any transaction.
    async fn purge(&self) -> Result<(), VaultError>;
    async fn counts(&self) -> Result<KeyCounts, VaultError>;
    /// Up to `limit` live keys wrapped with one of `sources` (the versions whose KEK the
    /// rotation can read). Keys of other versions stay as they are: unreadable.
    async fn rotation_batch(&self, sources: &[u32], limit: usize) -> Result<Vec<MaterialRow>, VaultError>;
    /// One transaction; a row is updated only if still live and still at `from_version`.
    async fn rewrap(&self, batch: &[Rewrap]) -> Result<u64, VaultError>;
    /// One transaction: if `target` is still pending and no live key is wrapped with one of
    /// `sources`, retires the active version (superseded at `now`) and activates `target`
    /// (activated at `now`).
    async fn finish_rotation(&self, target: u32, sources: &[u32], now: i64) -> Result<Finish, VaultError>;
    /// Live keys per KEK version, for the versions that have any, ascending.
    async fn keys_per_version(&self) -> Result<Vec<(u32, u64)>, VaultError>;
    /// One live key wrapped with `version`, if any: recognises a KEK whose provider cannot
    /// compute a legacy check value.
    async fn sample_key(&self, version: u32) -> Result<Option<MaterialRow>, VaultError>;
    async fn health(&self) -> Result<(), VaultError>;
}

/// Keys by state, for [`crate::VaultStats`]: every key, and the subject keys among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyCounts {
    pub live: u64,
    pub destroyed: u64,
    pub subject_live: u64,
    pub subject_destroyed: u64,
}

/// Shared rule for the forgotten subjects met by `create_keys`: the first row (in request
/// order) bound to one of `forgotten` fails the batch.
pub(crate) fn check_forgotten<S: AsRef<str>>(rows: &[NewRow<'_>], forgotten: &[S]) -> Result<(), VaultError> {
    if forgotten.is_empty() {
        return Ok(());
    }
    match rows
        .iter()
        .filter_map(|r| r.subject)
        .find(|s| forgotten.iter().any(|f| f.as_ref() == *s))
    {
        Some(subject) => Err(VaultError::SubjectForgotten {
            subject: subject.to_string(),
        }),
        None => Ok(()),
    }
}

/// Shared rule for an existing stream row met by `create_keys`.
pub(crate) fn check_existing(
    stream: &str,
    requested_subject: Option<&str>,
    existing_subject: Option<&str>,
    destroyed: bool,
) -> Result<(), VaultError> {
    if destroyed {
        return Err(VaultError::KeyDestroyed {
            stream: stream.to_string(),
        });
    }
    if requested_subject != existing_subject {
        return Err(VaultError::SubjectMismatch {
            stream: stream.to_string(),
        });
    }
    Ok(())
}

pub(crate) fn version_from_db(v: i64) -> Result<u32, VaultError> {
    u32::try_from(v).map_err(|_| VaultError::Corrupt(format!("KEK version {v} out of range")))
}

pub(crate) fn count_from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Builds a migrator from migration files embedded at compile time, so a deployed binary needs
/// no migrations directory (sqlx's `migrate!` macro would need the `macros` feature).
pub(crate) fn migrator(files: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr as _;
    let migrations = files
        .iter()
        .map(|(version, description, sql)| {
            sqlx::migrate::Migration::new(
                *version,
                (*description).into(),
                sqlx::migrate::MigrationType::Simple,
                sqlx::AssertSqlSafe(*sql).into_sql_str(),
                false,
            )
        })
        .collect();
    let mut m = sqlx::migrate::Migrator::with_migrations(migrations);
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_rows_do_not_print_their_bytes() {
        let key = WrappedKey {
            kek_version: 3,
            wrapped: vec![0xAB; 61],
        };
        let row = MaterialRow {
            id: KeyId(uuid::Uuid::nil()),
            key: key.clone(),
        };
        for text in [format!("{key:?}"), format!("{row:?}")] {
            assert!(!text.contains("ab, ab") && !text.contains("171") && !text.contains("abab"));
            assert!(text.contains("<61 bytes>"), "{text}");
        }
    }
}
