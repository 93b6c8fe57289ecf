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

use lethe_keyvault::{Kek, KeyVault, OpenOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::http::{AppState, HttpLimits, router};
use crate::store::{EventStore, StoreConfig};

/// Open connections at most (each holds a task and a socket).
const CONNECTIONS_MAX: usize = 4096;
/// How long shutdown waits for in-flight requests before closing anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest admin token accepted from `LETHE_ADMIN_TOKEN`.
const ADMIN_TOKEN_LEN_MIN: usize = 16;
/// Environment variable with a base64 KEK, when no KEK file is used.
pub const KEK_ENV: &str = "LETHE_KEK";

/// Every setting of `lethe serve`; each is a flag and an environment variable.
#[derive(Clone, clap::Args)]
pub struct ServeConfig {
    /// Where the embedded default keeps its files.
    #[arg(long, env = "LETHE_DATA_DIR", default_value = "./lethe-data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "LETHE_LISTEN", default_value = "127.0.0.1:2113")]
    pub listen: SocketAddr,
    /// The event database (default: sqlite://`<data-dir>`/events.db).
    #[arg(long, env = "LETHE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The key vault: sqlite://… or postgres://… (in-process, its own database) or
    /// http(s)://… (a `lethe keyvault serve`). Default: sqlite://`<data-dir>`/keyvault.db.
    #[arg(long, env = "LETHE_KEYVAULT_URL", hide_env_values = true)]
    pub keyvault_url: Option<String>,
    /// The KEK file of an in-process vault (default: `<data-dir>`/kek.key, created on first
    /// start). Without it and with LETHE_KEK set, the KEK comes from that variable (base64).
    #[arg(long, env = "LETHE_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// Bearer token for a remote vault (http(s)://).
    #[arg(long, env = "LETHE_KEYVAULT_TOKEN", hide_env_values = true)]
    pub keyvault_token: Option<String>,
    /// Sets the first admin token instead of generating one.
    #[arg(long, env = "LETHE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest request body, in bytes.
    #[arg(long, env = "LETHE_BODY_LIMIT_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub body_limit_bytes: usize,
    /// Most open SSE subscriptions.
    #[arg(long, env = "LETHE_SUBSCRIBERS_MAX", default_value_t = 1024)]
    pub subscribers_max: usize,
    /// Seconds a client may take to send its request headers.
    #[arg(long, env = "LETHE_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a request may take (SSE and long polls excepted).
    #[arg(long, env = "LETHE_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
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
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 2113)),
            database_url: None,
            keyvault_url: None,
            kek_file: None,
            keyvault_token: None,
            admin_token: None,
            body_limit_bytes: 4 * 1024 * 1024,
            subscribers_max: 1024,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
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

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("key-encryption key: {0}")]
    Kek(#[from] lethe_keyvault::KekError),
    #[error("key vault: {0}")]
    Vault(#[from] lethe_keyvault::VaultError),
    #[error("a remote key vault needs LETHE_KEYVAULT_TOKEN")]
    MissingVaultToken,
    #[error(transparent)]
    Store(#[from] crate::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("LETHE_ADMIN_TOKEN must be at least 16 characters")]
    WeakAdminToken,
    #[error("cannot write the admin token file {path}: {source}")]
    TokenFile { path: PathBuf, source: io::Error },
}

/// Opens the key vault the configuration names.
pub async fn open_vault(config: &ServeConfig) -> Result<Arc<dyn KeyVault>, ServerError> {
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
    let kek = match (&config.kek_file, std::env::var_os(KEK_ENV)) {
        (Some(path), _) => Kek::from_file(path)?,
        (None, Some(_)) => Kek::from_base64_env(KEK_ENV)?,
        (None, None) => Kek::load_or_create(config.data_dir.join("kek.key"))?,
    };
    Ok(lethe_keyvault::open(
        &url,
        OpenOptions {
            kek: Some(kek),
            ..OpenOptions::default()
        },
    )
    .await?)
}

/// Opens the store (and vault) the configuration names, creating the data directory.
pub async fn open_store(config: &ServeConfig) -> Result<EventStore, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let vault = open_vault(config).await?;
    Ok(EventStore::open(StoreConfig::new(config.database_url(), vault)).await?)
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
/// drains connections for at most `DRAIN_TIMEOUT`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = lethe_keyvault::server::ConnectionLimits {
        header_timeout,
        connections_max: CONNECTIONS_MAX,
        drain_timeout: DRAIN_TIMEOUT,
    };
    lethe_keyvault::server::serve_router(listener, app, limits, shutdown).await;
    Ok(())
}
