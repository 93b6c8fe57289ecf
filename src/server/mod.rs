//! `lethe serve`: configuration, wiring (event database, key vault, first admin token), the
//! listener with timeouts, and graceful shutdown.
//!
//! Shutdown order: stop accepting, let in-flight requests finish (bounded), end SSE streams,
//! then close the store — which finishes every queued append before closing the database, so
//! nothing acknowledged is lost.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lethe_keyvault::kek::{KEK_ENV, PKCS11_MODULE_SETTING, PKCS11_PIN_FILE_SETTING};
use lethe_keyvault::{
    EpochPolicy, FileKeks, Kek, KekProvider, KeyVault, OpenOptions, Pkcs11Config, Pkcs11Keks, VaultClock,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::http::{AppState, HttpLimits, router};

mod dirs;
use crate::limits::{
    ACCEPT_RETRY, ADMIN_TOKEN_LEN_MIN, CONNECTIONS_MAX, DRAIN_TIMEOUT, HEADER_TIMEOUT_DEFAULT,
    RETENTION_SWEEP_INTERVAL_DEFAULT,
};
use crate::store::{EventStore, StoreConfig};
pub use dirs::{ERASURE_JOURNAL_FILE, KEYS_DIR_DEFAULT, LEGACY_KEK_FILE};

/// Where `lethe serve` listens by default.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 2113));

/// A new KEK epoch this often, by default (`--kek-rotate-every`).
pub const KEK_ROTATE_EVERY_DEFAULT: Duration = lethe_keyvault::limits::EPOCH_ROTATE_EVERY_DEFAULT;
/// A superseded KEK epoch is destroyed this long after, by default (`--kek-retain`).
pub const KEK_RETAIN_DEFAULT: Duration = lethe_keyvault::limits::EPOCH_RETAIN_DEFAULT;

/// Where an in-process vault's KEKs live (`LETHE_KEK_PROVIDER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KekProviderKind {
    /// One file per epoch in the keys directory.
    #[default]
    File,
    /// AES keys inside an HSM token, reached through its PKCS#11 module; they never leave it.
    Pkcs11,
}

impl std::str::FromStr for KekProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(KekProviderKind::File),
            "pkcs11" => Ok(KekProviderKind::Pkcs11),
            other => Err(format!("unknown KEK provider {other:?}: use file or pkcs11")),
        }
    }
}

/// The HSM settings of the `pkcs11` KEK provider.
#[derive(Debug, Clone, Default)]
pub struct Pkcs11Settings {
    /// The token's PKCS#11 module (`LETHE_PKCS11_MODULE`), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: Option<PathBuf>,
    /// The token, by label (`LETHE_PKCS11_TOKEN`) …
    pub token_label: Option<String>,
    /// … or by slot id (`LETHE_PKCS11_SLOT`).
    pub slot: Option<u64>,
    /// A file (mode 0600) holding the user PIN (`LETHE_PKCS11_PIN_FILE`); never the PIN itself.
    pub pin_file: Option<PathBuf>,
    /// The KEK objects' label prefix (`LETHE_PKCS11_LABEL_PREFIX`, default `lethe-kek-`), for
    /// several vaults on one token.
    pub label_prefix: Option<String>,
}

/// Every setting of `lethe serve` (the `lethe` binary reads each from a flag or an environment
/// variable: see `lethe serve --help` and README.md). [`ServeConfig::embedded`] is the embedded
/// default with nothing set.
#[derive(Clone)]
pub struct ServeConfig {
    /// Where the embedded default keeps its files (`LETHE_DATA_DIR`, default `./lethe-data`).
    pub data_dir: PathBuf,
    /// `LETHE_LISTEN`, default `127.0.0.1:2113`.
    pub listen: SocketAddr,
    /// The event database (default: sqlite://`<data-dir>`/events.db).
    pub database_url: Option<String>,
    /// The key vault: sqlite://… or postgres://… (in-process, its own database) or
    /// http(s)://… (a `lethe keyvault serve`). Default: sqlite://`<data-dir>`/keyvault.db.
    pub keyvault_url: Option<String>,
    /// The keys directory (`LETHE_KEYS_DIR`, default `./lethe-keys`): the `file` provider's KEK
    /// epochs and the erasure journal. Never inside the data directory.
    pub keys_dir: PathBuf,
    /// Where an in-process vault's KEKs live (`LETHE_KEK_PROVIDER`): the keys directory or an
    /// HSM.
    pub kek_provider: KekProviderKind,
    /// The HSM, for `KekProviderKind::Pkcs11`.
    pub pkcs11: Pkcs11Settings,
    /// A new KEK epoch this often (`--kek-rotate-every`, default 7 days).
    pub kek_rotate_every: Duration,
    /// A superseded KEK epoch is destroyed this long after (`--kek-retain`, default 30 days).
    pub kek_retain: Duration,
    /// Reconcile the event database with the key vault at start (`--reconcile-at-start`,
    /// default true): a restored database alone never serves what was forgotten.
    pub reconcile_at_start: bool,
    /// How often the vault looks whether an epoch is due (tests: short, with `clock`).
    #[doc(hidden)]
    pub kek_check_every: Duration,
    /// The clock of KEK epochs, retention and legal holds (tests: a `ManualClock`); the system
    /// clock if None.
    #[doc(hidden)]
    pub clock: Option<Arc<dyn VaultClock>>,
    /// How often this process sweeps the retention policies (`--retention-sweep-every`,
    /// default 60 s; zero: never, other processes or `POST /admin/retention-sweep` do).
    pub retention_sweep_every: Duration,
    /// PostgreSQL: group writers in this process (`--pg-group-writers`, default 1).
    pub postgres_group_writers: usize,
    /// A KEK handed in from outside (`LETHE_KEK_FILE`); with it, or with `LETHE_KEK` set, KEK
    /// epochs are the operator's (`lethe keyvault rotate-kek`), not automatic.
    pub kek_file: Option<PathBuf>,
    /// Bearer token for a remote vault (http(s)://).
    pub keyvault_token: Option<String>,
    /// Sets the first admin token instead of generating one.
    pub admin_token: Option<String>,
    /// Largest request body, in bytes.
    pub body_limit_bytes: usize,
    /// Most open SSE subscriptions.
    pub subscribers_max: usize,
    /// Seconds a client may take to send its request headers.
    pub header_timeout_secs: u64,
    /// Seconds a request may take (SSE and long polls excepted).
    pub request_timeout_secs: u64,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may carry passwords and tokens are secrets: never print them.
        f.debug_struct("ServeConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl ServeConfig {
    /// The embedded default in `data_dir`.
    /// The keys directory is `lethe-keys` beside the data directory (`./lethe-keys` for the
    /// default `./lethe-data`).
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let http = HttpLimits::default();
        Self {
            keys_dir: keys_dir_beside(&data_dir),
            data_dir,
            listen: LISTEN_DEFAULT,
            database_url: None,
            keyvault_url: None,
            kek_provider: KekProviderKind::File,
            pkcs11: Pkcs11Settings::default(),
            kek_rotate_every: KEK_ROTATE_EVERY_DEFAULT,
            kek_retain: KEK_RETAIN_DEFAULT,
            reconcile_at_start: true,
            kek_check_every: EpochPolicy::default().check_every,
            clock: None,
            retention_sweep_every: RETENTION_SWEEP_INTERVAL_DEFAULT,
            postgres_group_writers: 1,
            kek_file: None,
            keyvault_token: None,
            admin_token: None,
            body_limit_bytes: http.body_bytes_max,
            subscribers_max: http.subscribers_max,
            header_timeout_secs: HEADER_TIMEOUT_DEFAULT.as_secs(),
            request_timeout_secs: http.request_timeout.as_secs(),
        }
    }

    fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("events.db").display()))
    }

    fn keyvault_url(&self) -> String {
        self.keyvault_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("keyvault.db").display()))
    }

    fn limits(&self) -> HttpLimits {
        HttpLimits {
            body_bytes_max: self.body_limit_bytes,
            subscribers_max: self.subscribers_max,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            ..HttpLimits::default()
        }
    }
}

/// `lethe-keys` in the data directory's parent.
fn keys_dir_beside(data_dir: &Path) -> PathBuf {
    match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join("lethe-keys"),
        _ => PathBuf::from(KEYS_DIR_DEFAULT),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("the keys directory {path} (LETHE_KEYS_DIR) cannot be used: {problem}")]
    KeysDir { path: PathBuf, problem: String },
    #[error("key-encryption key: {0}")]
    Kek(#[from] lethe_keyvault::KekError),
    #[error("key vault: {0}")]
    Vault(#[from] lethe_keyvault::VaultError),
    #[error("a remote key vault needs LETHE_KEYVAULT_TOKEN")]
    MissingVaultToken,
    #[error("{setting} must be set with {because}")]
    Missing {
        setting: &'static str,
        because: &'static str,
    },
    #[error(transparent)]
    Store(#[from] crate::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("LETHE_ADMIN_TOKEN must be at least {ADMIN_TOKEN_LEN_MIN} characters")]
    WeakAdminToken,
    #[error("cannot write the admin token file {path}: {source}")]
    TokenFile { path: PathBuf, source: io::Error },
}

/// Opens the key vault the configuration names.
pub async fn open_vault(config: &ServeConfig, keys_dir: &Path) -> Result<Arc<dyn KeyVault>, ServerError> {
    let url = config.keyvault_url();
    if url.starts_with("http://") || url.starts_with("https://") {
        let token = config.keyvault_token.clone().ok_or(ServerError::MissingVaultToken)?;
        return Ok(lethe_keyvault::open(
            &url,
            OpenOptions {
                token: Some(token),
                ..OpenOptions::default()
            },
        )
        .await?);
    }
    let mut options = OpenOptions {
        epoch_policy: EpochPolicy {
            rotate_every: config.kek_rotate_every,
            retain: config.kek_retain,
            check_every: config.kek_check_every,
            ..EpochPolicy::default()
        },
        clock: config.clock.clone(),
        ..OpenOptions::default()
    };
    // A KEK handed in from outside is the operator's to rotate; otherwise the provider holds
    // the epochs and the vault rotates and retires them.
    match (&config.kek_file, std::env::var_os(KEK_ENV)) {
        (Some(path), _) => options.kek = Some(Kek::from_file(path)?),
        (None, Some(_)) => options.kek = Some(Kek::from_base64_env(KEK_ENV)?),
        (None, None) => {
            let legacy = config.data_dir.join(LEGACY_KEK_FILE);
            if legacy.exists() {
                tracing::warn!(
                    path = %legacy.display(),
                    "the KEK lies in the data directory, so every backup of it holds the key that unwraps \
                     its keys, and KEK epochs are not automatic; move it into the keys directory with \
                     `lethe keyvault move-keys`"
                );
                options.kek = Some(Kek::from_file(legacy)?);
            } else {
                options.provider = Some(kek_provider(config, keys_dir)?);
            }
        }
    }
    if options.kek.is_some() {
        tracing::info!(
            "the KEK is handed in from outside: KEK epochs are rotated by hand (`lethe keyvault rotate-kek`)"
        );
    }
    Ok(lethe_keyvault::open(&url, options).await?)
}

/// The KEK provider the configuration names.
fn kek_provider(config: &ServeConfig, keys_dir: &Path) -> Result<Arc<dyn KekProvider>, ServerError> {
    Ok(match config.kek_provider {
        KekProviderKind::File => Arc::new(FileKeks::open(keys_dir)?),
        KekProviderKind::Pkcs11 => {
            let settings = &config.pkcs11;
            let module = settings.module.clone().ok_or(ServerError::Missing {
                setting: PKCS11_MODULE_SETTING,
                because: "LETHE_KEK_PROVIDER=pkcs11",
            })?;
            let pin_file = settings.pin_file.as_deref().ok_or(ServerError::Missing {
                setting: PKCS11_PIN_FILE_SETTING,
                because: "LETHE_KEK_PROVIDER=pkcs11",
            })?;
            let mut pkcs11 = Pkcs11Config::new(module, Pkcs11Config::pin_from_file(pin_file)?);
            pkcs11.token_label = settings.token_label.clone();
            pkcs11.slot = settings.slot;
            if let Some(prefix) = &settings.label_prefix {
                pkcs11.label_prefix = prefix.clone();
            }
            Arc::new(Pkcs11Keks::open(pkcs11)?)
        }
    })
}

/// Opens the store (and vault) the configuration names: the data directory (`0700`) and the
/// keys directory (`0700`, never inside the data directory) are checked and created first,
/// the embedded default's database files `0600`.
pub async fn open_store(config: &ServeConfig) -> Result<EventStore, ServerError> {
    dirs::prepare_data_dir(&config.data_dir)?;
    let keys_dir = dirs::prepare_keys_dir(&config.keys_dir, &config.data_dir)?;
    for url in [config.database_url(), config.keyvault_url()] {
        if let Some(file) = dirs::sqlite_file_in(&url, &config.data_dir) {
            dirs::precreate_database_file(&file)?;
        }
    }
    let vault = open_vault(config, &keys_dir).await?;
    let mut store = StoreConfig::new(config.database_url(), vault);
    // Before serving: the journal's destructions re-applied, then the two databases
    // reconciled, so a restored backup never serves what was forgotten after it was taken.
    store.erasure_journal = Some(keys_dir.join(ERASURE_JOURNAL_FILE));
    store.reconcile_at_open = config.reconcile_at_start;
    store.retention_sweep_every = Some(config.retention_sweep_every).filter(|every| !every.is_zero());
    store.postgres_group_writers = config.postgres_group_writers;
    if let Some(clock) = &config.clock {
        store.clock = clock.clone();
    }
    Ok(EventStore::open(store).await?)
}

/// Makes sure an admin token exists. A generated one is printed once and written to
/// `<data-dir>/admin.token` (mode 0600).
async fn bootstrap_admin(store: &EventStore, config: &ServeConfig) -> Result<(), ServerError> {
    let from_env = config.admin_token.clone().map(Zeroizing::new);
    if from_env.as_ref().is_some_and(|t| t.trim().len() < ADMIN_TOKEN_LEN_MIN) {
        return Err(ServerError::WeakAdminToken);
    }
    let chosen = from_env.is_some();
    let Some(token) = store.bootstrap_admin_token(from_env).await? else {
        return Ok(());
    };
    if chosen {
        tracing::info!("admin token set from LETHE_ADMIN_TOKEN");
        return Ok(());
    }
    let path = config.data_dir.join("admin.token");
    write_secret_file(&path, token.secret.as_bytes()).map_err(|source| ServerError::TokenFile {
        path: path.clone(),
        source,
    })?;
    // Printed once, on purpose: this is how the operator learns the first token.
    println!(
        "Admin token (shown once, also in {}): {}",
        path.display(),
        token.secret.as_str()
    );
    Ok(())
}

fn write_secret_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// A server running in this process (for tests and embedding).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub store: EventStore,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl RunningServer {
    /// Graceful shutdown: drain requests, then close the store.
    pub async fn stop(self) -> io::Result<()> {
        let _ = self.shutdown.send(true);
        let served = self.task.await.unwrap_or_else(|e| Err(io::Error::other(e)));
        self.store.close().await;
        served
    }
}

/// Opens everything and starts serving on `config.listen` (port 0: any free port).
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServerError> {
    let store = open_store(&config).await?;
    bootstrap_admin(&store, &config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen {
        addr: config.listen,
        source,
    })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let state = AppState::new(store.clone(), config.limits()).with_shutdown(shutdown_rx.clone());
    let app = router(state);
    let header_timeout = Duration::from_secs(config.header_timeout_secs);
    let task = tokio::spawn(serve(listener, app, header_timeout, wait_for(shutdown_rx)));
    tracing::info!(%addr, "lethe listening");
    Ok(RunningServer {
        addr,
        store,
        shutdown,
        task,
    })
}

/// Runs until `signal` resolves, then shuts down gracefully.
pub async fn run(config: ServeConfig, signal: impl Future<Output = ()>) -> Result<(), ServerError> {
    let server = start(config).await?;
    println!("Lethe listening on http://{}", server.addr);
    signal.await;
    tracing::info!("shutting down");
    let addr = server.addr;
    server
        .stop()
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Serves `app` with a header-read timeout (which `axum::serve` lacks) until `shutdown`, then
/// drains connections for at most [`DRAIN_TIMEOUT`]; at most [`CONNECTIONS_MAX`] are open.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = ConnectionLimits {
        header_timeout,
        connections_max: CONNECTIONS_MAX,
        drain_timeout: DRAIN_TIMEOUT,
    };
    serve_router(listener, app, limits, shutdown).await;
    Ok(())
}

/// How [`serve_router`] treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A connection that has not sent a whole request head within this — from connecting, or
    /// since its last response — is closed.
    pub header_timeout: Duration,
    /// Open connections at most; more wait in the listen backlog.
    pub connections_max: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

impl ConnectionLimits {
    /// `lethe keyvault serve`'s: the vault's own limits (`lethe_keyvault::limits`).
    pub fn keyvault() -> Self {
        ConnectionLimits {
            header_timeout: lethe_keyvault::limits::HEADER_TIMEOUT,
            connections_max: lethe_keyvault::limits::CONNECTIONS_MAX,
            drain_timeout: lethe_keyvault::limits::DRAIN_TIMEOUT,
        }
    }
}

/// The accept loop of `lethe serve` and `lethe keyvault serve`: serves `app` over HTTP/1 until
/// `shutdown` resolves, then drains connections. `axum::serve` has no header timeout and no
/// connection cap, so a client that connected and said nothing was kept forever.
pub async fn serve_router(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let graceful = GracefulShutdown::new();
    // HTTP/1 only: the header-read timeout is an HTTP/1 setting, and no client needs h2c.
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                        continue;
                    }
                };
                let service = TowerToHyperService::new(app.clone());
                // `serve_connection`, not `serve_connection_with_upgrades`: the latter first
                // waits, without any timeout, for bytes to tell HTTP/1 from HTTP/2 (ignoring
                // `http1_only`), so a client that connected and sent nothing held its slot
                // forever. Neither server needs upgrades.
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    // Client resets and timeouts end connections; nothing to report.
                    let _ = connection.await;
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: some connections did not finish in time");
    }
}
