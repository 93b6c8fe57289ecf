//! Test harness: fresh databases on both engines, and a macro that runs one test body on each.
//!
//! SQLite tests get a file in a temporary directory. PostgreSQL tests get a database of their
//! own (`CREATE DATABASE lethe_t_…`), created through `LETHE_TEST_POSTGRES_URL` and dropped
//! afterwards; when that variable is unset they are skipped with one notice, and when it is set
//! a failure to connect fails the test.

use std::sync::{Arc, Once};

use lethe::{EventStore, StoreConfig};
use lethe_keyvault::{Kek, KeyVault, OpenOptions};
use sqlx::Connection;

pub const POSTGRES_URL_VAR: &str = "LETHE_TEST_POSTGRES_URL";

/// Which engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// One of a test's two databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The event database.
    Events,
    /// The key vault's database.
    Vault,
}

/// A fresh, empty event database and key vault (its own database), removed when dropped.
pub struct TestDb {
    pub engine: Engine,
    pub url: String,
    pub vault_url: String,
    pub dir: tempfile::TempDir,
    /// `(admin url, [databases to drop])`.
    postgres: Option<(String, Vec<String>)>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        let vault_url = format!("sqlite://{}", dir.path().join("keyvault.db").display());
        TestDb {
            engine: Engine::Sqlite,
            url,
            vault_url,
            dir,
            postgres: None,
        }
    }

    /// `None` (after one notice) when PostgreSQL tests are not configured.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
            static NOTICE: Once = Once::new();
            // Written to the real stderr: the test harness captures eprintln!.
            NOTICE.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "PostgreSQL tests skipped: {POSTGRES_URL_VAR} not set"
                );
            });
            return None;
        };
        let name = format!("lethe_t_{}", uuid::Uuid::new_v4().simple());
        let vault_name = format!("{name}_vault");
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} is set but PostgreSQL is unreachable: {e}"));
        for db in [&name, &vault_name] {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&mut admin)
                .await
                .expect("create test database");
        }
        Some(TestDb {
            engine: Engine::Postgres,
            url: with_database(&admin_url, &name),
            vault_url: with_database(&admin_url, &vault_name),
            dir: tempfile::tempdir().expect("temp dir"),
            postgres: Some((admin_url, vec![name, vault_name])),
        })
    }

    /// Another fresh database on the same engine (for a test that needs several).
    pub async fn another(&self) -> TestDb {
        match self.engine {
            Engine::Sqlite => TestDb::sqlite().await,
            Engine::Postgres => TestDb::postgres().await.expect("PostgreSQL tests are configured"),
        }
    }

    /// The test's key vault (in-process, on its own database, KEK in the temp dir).
    pub async fn vault(&self) -> Arc<dyn KeyVault> {
        self.vault_at(&self.vault_url).await
    }

    /// The store's settings. `LETHE_TEST_PG_GROUP_WRITERS` runs every PostgreSQL store with
    /// that many parallel group writers (to run the whole suite on that design).
    pub async fn config(&self) -> StoreConfig {
        let mut config = StoreConfig::new(&self.url, self.vault().await);
        if let Some(writers) = std::env::var("LETHE_TEST_PG_GROUP_WRITERS")
            .ok()
            .and_then(|w| w.parse().ok())
        {
            config.postgres_group_writers = writers;
        }
        config
    }

    /// Whether the stores [`TestDb::open`] makes leave no gaps in the log's positions: not so
    /// with parallel group writers, where a failed group or one that lost a race leaves its
    /// reserved positions unused.
    pub fn gapless(&self) -> bool {
        self.engine == Engine::Sqlite
            || std::env::var("LETHE_TEST_PG_GROUP_WRITERS")
                .ok()
                .and_then(|w| w.parse::<usize>().ok())
                .is_none_or(|w| w <= 1)
    }

    /// A store with `writers` parallel group writers (PostgreSQL; SQLite ignores it).
    pub async fn open_parallel(&self, writers: usize) -> EventStore {
        let mut config = self.config().await;
        config.postgres_group_writers = writers;
        self.open_with(config).await
    }

    pub async fn open(&self) -> EventStore {
        self.open_with(self.config().await).await
    }

    pub async fn open_with(&self, config: StoreConfig) -> EventStore {
        EventStore::open(config).await.expect("open store")
    }

    /// A vault on `url` (the test's own, or a copy of it: `backup`) with the test's KEK.
    pub async fn vault_at(&self, url: &str) -> Arc<dyn KeyVault> {
        let kek = Kek::load_or_create(self.dir.path().join("kek.key")).expect("KEK");
        lethe_keyvault::open(
            url,
            OpenOptions {
                kek: Some(kek),
                ..OpenOptions::default()
            },
        )
        .await
        .expect("open vault")
    }

    /// The erasure journal's path, in a keys directory of the test's own (created `0700`).
    pub fn journal_path(&self) -> std::path::PathBuf {
        use std::os::unix::fs::DirBuilderExt;
        let keys = self.dir.path().join("keys");
        if !keys.exists() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&keys)
                .expect("keys directory");
        }
        keys.join("erasures.journal")
    }

    /// A backup of one of the test's databases as it is now, at a URL of its own (restoring it
    /// is opening a store or vault on that URL). No store may be writing to it: SQLite copies
    /// it with `VACUUM INTO` (a consistent copy, whatever connections are left); PostgreSQL
    /// creates a database from it as a template, after ending any connection left over (a
    /// dropped vault's pool). The copy is dropped with the test.
    pub async fn backup(&mut self, part: Part) -> String {
        let source = match part {
            Part::Events => self.url.clone(),
            Part::Vault => self.vault_url.clone(),
        };
        let copy = format!("lethe_b_{}", uuid::Uuid::new_v4().simple());
        match self.engine {
            Engine::Sqlite => {
                let path = self.dir.path().join(format!("{copy}.db"));
                let mut c = sqlx::SqliteConnection::connect(&source).await.expect("connect");
                sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM INTO '{}'", path.display())))
                    .execute(&mut c)
                    .await
                    .expect("VACUUM INTO");
                format!("sqlite://{}", path.display())
            }
            Engine::Postgres => {
                let (admin_url, names) = self.postgres.as_mut().expect("a PostgreSQL test database");
                let original = source.rsplit('/').next().unwrap_or_default();
                let original = original.split('?').next().unwrap_or_default().to_owned();
                let name = copy;
                let mut admin = sqlx::PgConnection::connect(admin_url).await.expect("connect");
                let mut attempts = 0;
                loop {
                    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                        .bind(&original)
                        .execute(&mut admin)
                        .await
                        .expect("end connections");
                    let created = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "CREATE DATABASE {name} TEMPLATE {original}"
                    )))
                    .execute(&mut admin)
                    .await;
                    match created {
                        Ok(_) => break,
                        // A connection came back between the two statements: end it again.
                        Err(_) if attempts < 20 => {
                            attempts += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("CREATE DATABASE … TEMPLATE: {e}"),
                    }
                }
                let url = with_database(admin_url, &name);
                names.push(name);
                url
            }
        }
    }

    /// Runs raw SQL against the database (for failure injection and inspection).
    pub async fn execute(&self, sql: &str) {
        match self.engine {
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.expect("connect");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut c)
                    .await
                    .expect("sql");
            }
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.expect("connect");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut c)
                    .await
                    .expect("sql");
            }
        }
    }

    /// Makes inserting an event of type `poison` fail inside the database.
    pub async fn poison_event_type(&self) {
        match self.engine {
            Engine::Sqlite => {
                self.execute(
                    "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.event_type = 'poison' \
                     BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
                )
                .await
            }
            Engine::Postgres => {
                self.execute(
                    "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
                       IF NEW.event_type = 'poison' THEN RAISE EXCEPTION 'injected failure'; END IF; \
                       RETURN NEW; END $$ LANGUAGE plpgsql; \
                     CREATE TRIGGER poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION poison();",
                )
                .await
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, names)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside async context: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    for name in names {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut admin)
                        .await;
                    }
                }
            });
        })
        .join();
    }
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..host_end], database);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The bytes of an SQLite database file and of its write-ahead log (for raw-file scans).
pub fn sqlite_file_bytes(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("database file");
    if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
        bytes.extend(wal);
    }
    bytes
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Declares tests that run one `async fn(TestDb)` on SQLite and on PostgreSQL:
/// `backend_tests!(name_a, name_b);` makes `name_a::sqlite`, `name_a::postgres`, …
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::support::TestDb::sqlite().await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    if let Some(db) = $crate::support::TestDb::postgres().await {
                        super::$name(db).await;
                    }
                }
            }
        )*
    };
}
