//! The core: one open event store's machinery, which every service works through.
//!
//! [`Core`] holds the event database ([`crate::storage`]), the key ring in front of the vault
//! ([`crate::crypto`]), the group-commit writer ([`group_commit`]), and the caches and signals
//! they share. Its methods are the two paths every service needs: appending ([`append`]:
//! validate, key, encrypt, submit) and reading ([`read`]: rows still sealed, then keys, then
//! decryption), with [`payload`] as the one place an event becomes stored bytes and back. The
//! event schemas that appends are checked against, and whose personal fields are sealed with
//! their subjects' keys, are held compiled in [`schemas`].
//!
//! The erasure journal ([`crate::journal`]), when the store keeps one, is opened (and its chain
//! verified) first; the erasure service appends to it and the façade replays it at open.
//!
//! Architecture invariant: the core knows storage only through the `Storage` trait and keys
//! only as `Dek` handles it passes from `crypto` to `payload`; it holds no SQL and no key bytes,
//! and it imports nothing of the services, the façade or HTTP above it.

pub(crate) mod append;
pub(crate) mod field_index;
pub(crate) mod group_commit;
pub(crate) mod payload;
pub(crate) mod read;
pub(crate) mod schemas;
pub(crate) mod token_cache;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lethe_keyvault::{KeyVault, SystemClock, VaultClock};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coalesce::Coalescer;
use crate::crypto::{KeyCacheStats, Keyring};
use crate::error::Error;
use crate::journal::Journal;
use crate::limits::{
    KEY_CACHE_KEYS_DEFAULT, RETENTION_SWEEP_INTERVAL_DEFAULT, TOKEN_CACHE_TTL, WEBHOOK_POLL_DEFAULT,
    WEBHOOK_RETRY_BASE_DEFAULT,
};
use crate::model::{ErasureFault, NewAuditEntry};
use crate::storage::TokenChecks;
use crate::storage::{self, ChangeFeed, Storage};
use append::StateReads;
use field_index::FieldIndexCache;
use group_commit::{GroupCommitter, WriterStats};
use schemas::Schemas;
use token_cache::TokenCache;

/// How to open a store.
#[derive(Clone)]
pub struct StoreConfig {
    /// `sqlite://path/to/events.db` or `postgres://…`.
    pub database_url: String,
    /// Where the per-stream keys live (see `lethe_keyvault::open`).
    pub keyvault: Arc<dyn KeyVault>,
    /// DEKs kept in memory at most.
    pub key_cache_keys_max: usize,
    /// How long a verified API token is trusted without asking the database again
    /// ([`TOKEN_CACHE_TTL`] by default; zero: never cached). On PostgreSQL a revocation reaches
    /// every process at once anyway; this bounds how long a process that missed the
    /// notification (its listener reconnecting) may still accept it.
    pub token_cache_ttl: Duration,
    /// The erasure journal (`<keys-dir>/erasures.journal`; its directory must exist): every
    /// key destruction is appended to it, fsynced, before the vault is asked, and
    /// `EventStore::open` replays it before it returns, so that restoring either database from
    /// a backup cannot bring forgotten data back. `None` (the default): no journal — for an
    /// embedded store whose databases are never restored apart from each other.
    pub erasure_journal: Option<PathBuf>,
    /// Whether `EventStore::open` also reconciles the event database with the vault (after the
    /// journal's replay): `EventStore::reconcile`. Off by default; `lethe serve` turns it on.
    pub reconcile_at_open: bool,
    /// Makes erasures stop at a step as if the process had crashed (tests only).
    #[doc(hidden)]
    pub erasure_fault: Option<ErasureFault>,
    /// How often pending webhook deliveries are looked for.
    pub webhook_poll: Duration,
    /// The first retry delay of a failed webhook delivery (doubling up to 10 minutes).
    pub webhook_retry_base: Duration,
    /// Where the store reads the time: what appends record (`recorded_at`, a new stream's
    /// `created_at`), which subjects are due for retention, when every erasure request was
    /// filed and each of its steps happened (so its one-month deadline, the `overdue` filter
    /// and flags, and the report's "now"), legal holds (placed, refusing, lapsed), consumers'
    /// checkpoints and deliveries, token revocations. [`SystemClock`] by default; tests inject
    /// a `lethe_keyvault::ManualClock`. The audit trail's entry times, a token's creation time
    /// and webhook retry scheduling read the system clock.
    pub clock: Arc<dyn VaultClock>,
    /// How often the store sweeps its retention policies in the background (each process may;
    /// a request is filed once). `None`: never — `EventStore::sweep_retention` only.
    pub retention_sweep_every: Option<Duration>,
    /// PostgreSQL: group writers in this process (1 to
    /// [`crate::limits::POSTGRES_GROUP_WRITERS_MAX`]; ignored on SQLite, which has one writer).
    /// 1 (the default) writes each group under the commit-order lock; more write groups
    /// concurrently on positions each reserves first, so that only the position assignment is
    /// serialised — for machines with many cores (ARCHITECTURE.md, "Parallel group writers").
    pub postgres_group_writers: usize,
    /// Stores payloads unencrypted, so benchmarks can measure what encryption costs. Only in
    /// builds with the `insecure-noop-cipher` feature; never in a real deployment.
    #[cfg(feature = "insecure-noop-cipher")]
    pub insecure_noop_cipher: bool,
}

impl StoreConfig {
    pub fn new(database_url: impl Into<String>, keyvault: Arc<dyn KeyVault>) -> Self {
        Self {
            database_url: database_url.into(),
            keyvault,
            key_cache_keys_max: KEY_CACHE_KEYS_DEFAULT,
            token_cache_ttl: TOKEN_CACHE_TTL,
            erasure_journal: None,
            reconcile_at_open: false,
            erasure_fault: None,
            webhook_poll: WEBHOOK_POLL_DEFAULT,
            webhook_retry_base: WEBHOOK_RETRY_BASE_DEFAULT,
            clock: Arc::new(SystemClock),
            retention_sweep_every: Some(RETENTION_SWEEP_INTERVAL_DEFAULT),
            postgres_group_writers: 1,
            #[cfg(feature = "insecure-noop-cipher")]
            insecure_noop_cipher: false,
        }
    }
}

/// One open store's machinery, shared by every clone of its façade and every service.
pub(crate) struct Core {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) committer: GroupCommitter,
    /// Stream states read before an append (to know which streams need a key), many
    /// appends' in one query.
    state_reads: Coalescer<StateReads>,
    /// API tokens verified lately (`services::access`).
    pub(crate) tokens: Arc<TokenCache>,
    /// The event schemas, compiled ([`schemas`]).
    pub(crate) schemas: Arc<Schemas>,
    /// Subjects' field key ids and field-index rows already known ([`field_index`]).
    field_index: FieldIndexCache,
    /// Field keys found not forgotten, and under which change token
    /// ([`crate::storage::TokenChecks`]).
    field_key_checks: TokenChecks<lethe_keyvault::KeyId>,
    /// The erasure journal, if the store keeps one.
    pub(crate) journal: Option<Journal>,
    /// Whether the façade reconciles at open.
    pub(crate) reconcile_at_open: bool,
    pub(crate) erasure_fault: Option<ErasureFault>,
    /// Payloads stored in clear (benchmark builds only; always false otherwise).
    noop_cipher: bool,
    /// The last position known committed (ours, or another process's on PostgreSQL).
    commits: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    /// A receiver made with `shutdown`: its clones see a shutdown sent before they first look.
    shutdown_rx: watch::Receiver<bool>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    /// The background loops' settings (`crate::store` starts them).
    pub(crate) webhook_poll: Duration,
    pub(crate) webhook_retry_base: Duration,
    pub(crate) retention_sweep_every: Option<Duration>,
    clock: Arc<dyn VaultClock>,
}

impl Core {
    /// Opens (and migrates) the event database, starts the writer and listens for what other
    /// processes do.
    pub(crate) async fn open(config: StoreConfig) -> Result<Arc<Self>, Error> {
        // The journal first: a broken chain stops the store before it touches a database.
        let journal = match config.erasure_journal {
            Some(path) => Some(Journal::open(path).await?),
            None => None,
        };
        let storage = storage::open_with(
            &config.database_url,
            config.clock.clone(),
            config.postgres_group_writers,
        )
        .await?;
        let keyring = Arc::new(Keyring::new(config.keyvault, config.key_cache_keys_max));
        let head = storage.head().await?;
        let (commits_tx, commits) = watch::channel(head);
        let (revoker, forgetter) = (keyring.clone(), keyring.clone());
        let tokens = Arc::new(TokenCache::new(config.token_cache_ttl));
        let verified = tokens.clone();
        let schemas = Arc::new(Schemas::new(storage.clone()));
        let registry = schemas.clone();
        storage
            .watch_foreign_changes(ChangeFeed {
                commits: commits_tx.clone(),
                revoked_keys: Arc::new(move |keys| revoker.revoke(keys)),
                forget_cached_keys: Arc::new(move || forgetter.clear()),
                forget_verified_tokens: Arc::new(move || verified.clear()),
                schemas_changed: Arc::new(move || registry.invalidate()),
            })
            .await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (committer, writer_task) = GroupCommitter::start(storage.clone(), commits_tx, shutdown_rx.clone());
        Ok(Arc::new(Core {
            state_reads: Coalescer::start(StateReads {
                storage: storage.clone(),
            }),
            storage,
            keyring,
            committer,
            tokens,
            schemas,
            field_index: FieldIndexCache::new(),
            field_key_checks: TokenChecks::default(),
            journal,
            reconcile_at_open: config.reconcile_at_open,
            erasure_fault: config.erasure_fault,
            #[cfg(feature = "insecure-noop-cipher")]
            noop_cipher: config.insecure_noop_cipher,
            #[cfg(not(feature = "insecure-noop-cipher"))]
            noop_cipher: false,
            commits,
            shutdown,
            shutdown_rx,
            writer_task: Mutex::new(Some(writer_task)),
            webhook_poll: config.webhook_poll,
            webhook_retry_base: config.webhook_retry_base,
            retention_sweep_every: config.retention_sweep_every,
            clock: config.clock,
        }))
    }

    /// A receiver that changes whenever new events are committed.
    pub(crate) fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// A receiver that becomes true when the store closes (background loops end on it). A clone
    /// of the first receiver, not a new subscription: a new one would count a shutdown already
    /// sent as seen, and a loop that started after `close` would never end.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_rx.clone()
    }

    /// The time by the store's clock ([`StoreConfig::clock`]).
    pub(crate) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_micros(self.clock.now_micros()).unwrap_or_default()
    }

    /// The last readable position (0: empty log; see `Storage::head`).
    pub(crate) async fn head(&self) -> Result<u64, Error> {
        Ok(self.storage.head().await?)
    }

    /// Whether the key vault answers.
    pub(crate) async fn vault_health(&self) -> Result<(), Error> {
        self.keyring.vault().health().await.map_err(Error::KeyVault)
    }

    /// Keys the vault holds wrapped only by KEK epochs it no longer has.
    pub(crate) async fn keys_unreadable(&self) -> Result<u64, Error> {
        Ok(self
            .keyring
            .vault()
            .stats()
            .await
            .map_err(Error::KeyVault)?
            .keys_unreadable)
    }

    pub(crate) fn key_cache_stats(&self) -> KeyCacheStats {
        self.keyring.stats()
    }

    pub(crate) fn cached_keys(&self) -> usize {
        self.keyring.cached_keys()
    }

    pub(crate) fn writer_stats(&self) -> WriterStats {
        self.committer.stats()
    }

    /// Appends an entry to the audit trail, logging rather than failing if the trail cannot be
    /// written: the action it records has already happened (and a step of an erasure is not
    /// repeated for its entry).
    pub(crate) async fn audit_quietly(&self, entry: &NewAuditEntry) {
        if let Err(e) = self.storage.append_audit(entry).await {
            tracing::error!(action = %entry.action, request_id = ?entry.request_id, error = %e, "audit entry not written");
        }
    }

    /// Finishes every queued append, then closes the database connections.
    pub(crate) async fn close(&self) {
        let _ = self.shutdown.send(true);
        let task = self.writer_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        self.storage.close().await;
    }
}
