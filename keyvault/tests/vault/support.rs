//! Test databases on both engines, a KEK provider in memory, and small helpers.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use futures::FutureExt as _;
use lethe_keyvault::{
    Dek, Epoch, EpochPolicy, Kek, KekError, KekProvider, KeyId, KeyLookup, KeyVault, LocalVault, ManualClock, NewKey,
    OpenOptions,
};
use sqlx::Connection as _;

pub const PG_ENV: &str = "LETHE_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A fresh, empty vault database. SQLite: a file in a temp dir (kept alive by the Arc).
/// PostgreSQL: `lethe_kv_<random>`, dropped by `run_on` when the test body returns.
#[derive(Clone)]
pub struct TestDb {
    pub engine: Engine,
    pub url: String,
    pub dir: Arc<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// Path of the SQLite file (SQLite only).
    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("keyvault.db")
    }

    pub async fn open(&self, kek: Kek) -> Arc<dyn KeyVault> {
        lethe_keyvault::open(
            &self.url,
            OpenOptions {
                kek: Some(kek),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("open {:?} vault: {e}", self.engine))
    }

    pub async fn open_local(&self, kek: Kek, others: Vec<Kek>) -> Result<LocalVault, lethe_keyvault::VaultError> {
        LocalVault::open(&self.url, kek, others).await
    }

    /// The vault with its KEK epochs in `keks`, on `clock`.
    pub async fn open_managed(
        &self,
        keks: &Arc<MemoryKeks>,
        policy: EpochPolicy,
        clock: &Arc<ManualClock>,
    ) -> Result<LocalVault, lethe_keyvault::VaultError> {
        LocalVault::open_with_provider(&self.url, keks.clone(), policy, clock.clone()).await
    }

    /// The KEK version of every live key as stored, by key id, read with a connection of our
    /// own.
    pub async fn stored_kek_versions(&self) -> HashMap<KeyId, u32> {
        let rows: Vec<(uuid::Uuid, i64)> = match self.engine {
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let rows = sqlx::query_as("SELECT id, kek_version FROM vault_key_material")
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let _ = c.close().await;
                rows
            }
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let rows: Vec<(uuid::Uuid, i32)> = sqlx::query_as("SELECT id, kek_version FROM vault_key_material")
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let _ = c.close().await;
                rows.into_iter().map(|(id, v)| (id, i64::from(v))).collect()
            }
        };
        rows.into_iter()
            .map(|(id, v)| (KeyId(id), u32::try_from(v).unwrap_or_else(|e| panic!("{e}"))))
            .collect()
    }

    /// A copy of the vault database as it is now, as a backup would hold it. Close every
    /// vault on it first (PostgreSQL copies only a database nobody is connected to).
    /// SQLite: `VACUUM INTO` a file beside it. PostgreSQL: `CREATE DATABASE … TEMPLATE`, named
    /// `<name>_copy` (dropped with the original by `run_on`).
    pub async fn copy(&self) -> TestDb {
        match self.engine {
            Engine::Sqlite => {
                let path = self.dir.path().join("keyvault-copy.db");
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                sqlx::query("VACUUM INTO ?")
                    .bind(path.display().to_string())
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("VACUUM INTO: {e}"));
                let _ = c.close().await;
                TestDb {
                    engine: self.engine,
                    url: format!("sqlite://{}", path.display()),
                    dir: self.dir.clone(),
                    pg: None,
                }
            }
            Engine::Postgres => {
                let Some((admin_url, name)) = &self.pg else {
                    panic!("not a database made by run_on");
                };
                let copy = format!("{name}_copy");
                let mut admin = sqlx::PgConnection::connect(admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let mut last = None;
                for _ in 0..50 {
                    // Pools of closed vaults may still hold sessions for a moment.
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = $1 AND pid <> pg_backend_pid()",
                    )
                    .bind(name)
                    .execute(&mut admin)
                    .await;
                    match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {copy} TEMPLATE {name}")))
                        .execute(&mut admin)
                        .await
                    {
                        Ok(_) => {
                            last = None;
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if let Some(e) = last {
                    panic!("CREATE DATABASE {copy}: {e}");
                }
                let _ = admin.close().await;
                let mut url = url::Url::parse(&self.url).unwrap_or_else(|e| panic!("{e}"));
                url.set_path(&format!("/{copy}"));
                TestDb {
                    engine: self.engine,
                    url: url.to_string(),
                    dir: self.dir.clone(),
                    pg: None,
                }
            }
        }
    }

    /// Wrapped bytes of a key as stored, read with a connection of our own.
    pub async fn wrapped_bytes(&self, id: KeyId) -> Option<Vec<u8>> {
        match self.engine {
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let v: Option<Vec<u8>> = sqlx::query_scalar("SELECT wrapped FROM vault_key_material WHERE id = ?")
                    .bind(id.0)
                    .fetch_optional(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let _ = c.close().await;
                v
            }
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let v: Option<Vec<u8>> = sqlx::query_scalar("SELECT wrapped FROM vault_key_material WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let _ = c.close().await;
                v
            }
        }
    }
}

static PG_SKIP_NOTICE: Once = Once::new();

/// Runs `body` on a fresh database of `engine`; PostgreSQL tests skip (with one notice) when
/// `LETHE_TEST_POSTGRES_URL` is unset, and fail if it is set but unusable.
pub async fn run_on<F, Fut>(engine: Engine, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = Arc::new(tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")));
    let db = match engine {
        Engine::Sqlite => TestDb {
            engine,
            url: format!("sqlite://{}", dir.path().join("keyvault.db").display()),
            dir,
            pg: None,
        },
        Engine::Postgres => {
            let Ok(admin_url) = std::env::var(PG_ENV) else {
                PG_SKIP_NOTICE.call_once(|| notice(&format!("PostgreSQL tests skipped: {PG_ENV} not set")));
                return;
            };
            let name = format!("lethe_kv_{}", uuid::Uuid::new_v4().simple());
            let mut admin = sqlx::PgConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("{PG_ENV} is set but connecting failed: {e}"));
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
            let _ = admin.close().await;
            let mut url = url::Url::parse(&admin_url).unwrap_or_else(|e| panic!("{PG_ENV}: {e}"));
            url.set_path(&format!("/{name}"));
            TestDb {
                engine,
                url: url.to_string(),
                dir,
                pg: Some((admin_url, name)),
            }
        }
    };
    // Catch a failing body so its database is still dropped, then fail the test with it.
    let outcome = std::panic::AssertUnwindSafe(body(db.clone())).catch_unwind().await;
    if let Some((admin_url, name)) = &db.pg
        && let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await
    {
        for db_name in [name.clone(), format!("{name}_copy")] {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
        let _ = admin.close().await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Prints a line that the test harness does not capture (skips must be visible).
pub fn notice(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `both_engines!(check_fn);` makes `check_fn::sqlite` and `check_fn::postgres` tests that run
/// `async fn check_fn(db: TestDb)` on a fresh database of each engine.
macro_rules! both_engines {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::support::run_on($crate::support::Engine::Sqlite, super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::support::run_on($crate::support::Engine::Postgres, super::$name).await
            }
        }
    )+};
}

/// A deterministic KEK per seed byte, so a test can reopen a vault with "the same" KEK.
pub fn kek(seed: u8) -> Kek {
    Kek::from_slice(&[seed; 32]).unwrap_or_else(|e| panic!("{e}"))
}

pub fn nk(stream: &str, subject: Option<&str>) -> NewKey {
    NewKey {
        stream: stream.to_string(),
        subject: subject.map(str::to_string),
    }
}

pub fn live(lookup: &KeyLookup) -> &Dek {
    match lookup {
        KeyLookup::Live(d) => d,
        other => panic!("expected a live key, got {other:?}"),
    }
}

pub async fn ok<T>(f: impl Future<Output = Result<T, lethe_keyvault::VaultError>>) -> T {
    f.await.unwrap_or_else(|e| panic!("vault call failed: {e}"))
}

/// Does `needle` occur in `haystack`?
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A KEK provider in memory that manages its epochs, for tests (the file and PKCS#11 providers
/// are tested on their own). Share one `Arc` between vaults to model one keys directory.
#[derive(Debug)]
pub struct MemoryKeks {
    epochs: Mutex<HashMap<Epoch, Kek>>,
    /// Wraps left before `wrap` fails, as a crash in the middle of a rotation would stop it;
    /// negative: never fails.
    wraps_left: AtomicI64,
}

impl MemoryKeks {
    pub fn new() -> Arc<MemoryKeks> {
        Arc::new(MemoryKeks {
            epochs: Mutex::new(HashMap::new()),
            wraps_left: AtomicI64::new(-1),
        })
    }

    /// A provider holding `kek` as `epoch` (for a vault whose KEK was handed in before).
    pub fn with(epoch: Epoch, kek: Kek) -> Arc<MemoryKeks> {
        let keks = MemoryKeks::new();
        keks.map().insert(epoch, kek);
        keks
    }

    /// `wrap` fails after `n` more calls (negative: never).
    pub fn fail_wraps_after(&self, n: i64) {
        self.wraps_left.store(n, Ordering::SeqCst);
    }

    pub fn holds(&self, epoch: Epoch) -> bool {
        self.map().contains_key(&epoch)
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Epoch, Kek>> {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KekProvider for MemoryKeks {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn manages_epochs(&self) -> bool {
        true
    }

    fn epochs(&self) -> Result<Vec<Epoch>, KekError> {
        let mut epochs: Vec<Epoch> = self.map().keys().copied().collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    fn create_epoch(&self, epoch: Epoch) -> Result<(), KekError> {
        // An existing epoch is kept, never replaced.
        if let std::collections::hash_map::Entry::Vacant(slot) = self.map().entry(epoch) {
            slot.insert(Kek::generate()?);
        }
        Ok(())
    }

    fn destroy_epoch(&self, epoch: Epoch) -> Result<(), KekError> {
        self.map().remove(&epoch);
        Ok(())
    }

    fn wrap(&self, epoch: Epoch, id: KeyId, dek: &Dek) -> Result<Vec<u8>, KekError> {
        if self.wraps_left.load(Ordering::SeqCst) == 0 {
            return Err(KekError::Random);
        }
        let _ = self
            .wraps_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n > 0).then(|| n - 1));
        let map = self.map();
        let kek = map.get(&epoch).ok_or(KekError::EpochMissing {
            provider: "memory",
            epoch,
        })?;
        kek.wrap_dek(id, dek).map_err(|_| KekError::Random)
    }

    fn unwrap(&self, epoch: Epoch, id: KeyId, wrapped: &[u8]) -> Result<Dek, KekError> {
        let map = self.map();
        let kek = map.get(&epoch).ok_or(KekError::EpochMissing {
            provider: "memory",
            epoch,
        })?;
        kek.unwrap_dek(id, wrapped).map_err(|_| KekError::Unwrap { epoch })
    }

    fn legacy_check_value(&self, epoch: Epoch) -> Result<Option<[u8; 32]>, KekError> {
        Ok(self.map().get(&epoch).map(Kek::check_value))
    }
}
