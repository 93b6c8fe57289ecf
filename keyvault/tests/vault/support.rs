//! Test databases on both engines, and small helpers.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Once};

use futures::FutureExt as _;
use lethe_keyvault::{Dek, Kek, KeyId, KeyLookup, KeyVault, LocalVault, NewKey, OpenOptions};
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
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
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
