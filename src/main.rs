//! The `lethe` command: `serve`, `token create`, `keyvault …`.

mod cli;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lethe::limits::{BODY_BYTES_DEFAULT, HEADER_TIMEOUT_DEFAULT, REQUEST_TIMEOUT_DEFAULT, SUBSCRIBERS_DEFAULT};
use lethe::model::Role;
use lethe::server::{
    self, ConnectionLimits, KEYS_DIR_DEFAULT, KekProviderKind, LISTEN_DEFAULT, Pkcs11Settings, ServeConfig,
};
use lethe_keyvault::cli::Outcome;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: under load the server spent a fifth of its CPU in
/// glibc's `free` (many small buffers per request, freed on other threads than they were
/// allocated on). See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "lethe", version, about = "An event store that can forget.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the embedded default with nothing set).
    Serve(ServeArgs),
    /// Manage API tokens directly in the event database.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Admin client for a running server (LETHE_URL, LETHE_TOKEN): erasures, holds, exports, tokens,
    /// schemas.
    Admin {
        #[command(flatten)]
        connection: cli::Connection,
        #[command(subcommand)]
        command: cli::AdminCommand,
    },
    /// The audit trail, offline against the event database.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The key vault: run it as its own server, rotate its KEK, generate a KEK.
    Keyvault {
        /// The event database whose audit trail records a KEK rotation (`kek_rotated`).
        /// Without it, a rotation is not audited (a warning says so).
        #[arg(long, env = "LETHE_DATABASE_URL", hide_env_values = true, global = true)]
        audit_database_url: Option<String>,
        #[command(subcommand)]
        command: lethe_keyvault::cli::KeyvaultCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (once).
    Create {
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "cli")]
        name: String,
        #[command(flatten)]
        config: ServeArgs,
    },
}

/// Every setting of `lethe serve`, each a flag and an environment variable (`ServeConfig`).
#[derive(clap::Args)]
struct ServeArgs {
    /// Where the embedded default keeps its files.
    #[arg(long, env = "LETHE_DATA_DIR", default_value = "./lethe-data")]
    data_dir: PathBuf,
    #[arg(long, env = "LETHE_LISTEN", default_value_t = LISTEN_DEFAULT)]
    listen: SocketAddr,
    /// The event database (default: sqlite://`<data-dir>`/events.db).
    #[arg(long, env = "LETHE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The key vault: sqlite://… or postgres://… (in-process, its own database) or
    /// http(s)://… (a `lethe keyvault serve`). Default: sqlite://`<data-dir>`/keyvault.db.
    #[arg(long, env = "LETHE_KEYVAULT_URL", hide_env_values = true)]
    keyvault_url: Option<String>,
    /// The keys directory: KEK epochs (`file` provider) and the erasure journal. Never inside
    /// the data directory, never restored from an old backup.
    #[arg(long, env = "LETHE_KEYS_DIR", default_value = KEYS_DIR_DEFAULT)]
    keys_dir: PathBuf,
    /// Where an in-process vault's KEKs live: `file` (the keys directory) or `pkcs11` (an HSM).
    #[arg(long, env = "LETHE_KEK_PROVIDER", default_value = "file")]
    kek_provider: KekProviderKind,
    /// The HSM's PKCS#11 module (`pkcs11` provider), e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, env = "LETHE_PKCS11_MODULE")]
    pkcs11_module: Option<PathBuf>,
    /// The HSM token, by label (`pkcs11` provider).
    #[arg(long, env = "LETHE_PKCS11_TOKEN")]
    pkcs11_token: Option<String>,
    /// The HSM token, by slot id (`pkcs11` provider; instead of the label).
    #[arg(long, env = "LETHE_PKCS11_SLOT")]
    pkcs11_slot: Option<u64>,
    /// A file (mode 0600) holding the token's user PIN (`pkcs11` provider).
    #[arg(long, env = "LETHE_PKCS11_PIN_FILE")]
    pkcs11_pin_file: Option<PathBuf>,
    /// The label prefix of the KEK objects on the token (`pkcs11` provider; default
    /// `lethe-kek-`), for several vaults sharing one token.
    #[arg(long, env = "LETHE_PKCS11_LABEL_PREFIX")]
    pkcs11_label_prefix: Option<String>,
    /// A new KEK epoch this often (every key re-wrapped in the background): `30s`, `12h`, `7d`.
    #[arg(long, env = "LETHE_KEK_ROTATE_EVERY", default_value = "7d", value_parser = lethe_keyvault::cli::parse_duration)]
    kek_rotate_every: Duration,
    /// A superseded KEK epoch is destroyed this long after: backups older than rotation +
    /// retention become unreadable.
    #[arg(long, env = "LETHE_KEK_RETAIN", default_value = "30d", value_parser = lethe_keyvault::cli::parse_duration)]
    kek_retain: Duration,
    /// Compare the event database with the key vault at start and repair what a restored
    /// backup of either brought back (see `lethe admin reconcile`).
    #[arg(long, env = "LETHE_RECONCILE_AT_START", default_value_t = true, action = clap::ArgAction::Set)]
    reconcile_at_start: bool,
    /// How often this process sweeps the retention policies (filing erasure requests for
    /// subjects past them; each is filed once whichever process sweeps). `0s`: never.
    #[arg(long, env = "LETHE_RETENTION_SWEEP_EVERY", default_value = "60s", value_parser = parse_duration_or_zero)]
    retention_sweep_every: Duration,
    /// PostgreSQL: group writers in this process, 1 to 16. 1 writes each group under the
    /// commit-order lock; more write groups concurrently on reserved positions, for machines
    /// with many cores (ARCHITECTURE.md, "Parallel group writers"). Ignored on SQLite.
    #[arg(long, env = "LETHE_PG_GROUP_WRITERS", default_value_t = 1)]
    pg_group_writers: usize,
    /// How often the vault looks whether a KEK epoch is due (tests and drills).
    #[arg(long, env = "LETHE_KEK_CHECK_EVERY", default_value = "60s", value_parser = lethe_keyvault::cli::parse_duration, hide = true)]
    kek_check_every: Duration,
    /// A KEK handed in from outside (32 bytes, mode 0600). With it, or with LETHE_KEK (base64)
    /// set, KEK epochs are not automatic: rotate with `lethe keyvault rotate-kek`.
    #[arg(long, env = "LETHE_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// Bearer token for a remote vault (http(s)://).
    #[arg(long, env = "LETHE_KEYVAULT_TOKEN", hide_env_values = true)]
    keyvault_token: Option<String>,
    /// Sets the first admin token instead of generating one.
    #[arg(long, env = "LETHE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Largest request body, in bytes.
    #[arg(long, env = "LETHE_BODY_LIMIT_BYTES", default_value_t = BODY_BYTES_DEFAULT)]
    body_limit_bytes: usize,
    /// Most open SSE subscriptions.
    #[arg(long, env = "LETHE_SUBSCRIBERS_MAX", default_value_t = SUBSCRIBERS_DEFAULT)]
    subscribers_max: usize,
    /// Seconds a client may take to send its request headers.
    #[arg(long, env = "LETHE_HEADER_TIMEOUT_SECS", default_value_t = HEADER_TIMEOUT_DEFAULT.as_secs())]
    header_timeout_secs: u64,
    /// Seconds a request may take (SSE and long polls excepted).
    #[arg(long, env = "LETHE_REQUEST_TIMEOUT_SECS", default_value_t = REQUEST_TIMEOUT_DEFAULT.as_secs())]
    request_timeout_secs: u64,
}

impl From<ServeArgs> for ServeConfig {
    fn from(args: ServeArgs) -> Self {
        ServeConfig {
            data_dir: args.data_dir,
            listen: args.listen,
            database_url: args.database_url,
            keyvault_url: args.keyvault_url,
            keys_dir: args.keys_dir,
            kek_provider: args.kek_provider,
            pkcs11: Pkcs11Settings {
                module: args.pkcs11_module,
                token_label: args.pkcs11_token,
                slot: args.pkcs11_slot,
                pin_file: args.pkcs11_pin_file,
                label_prefix: args.pkcs11_label_prefix,
            },
            reconcile_at_start: args.reconcile_at_start,
            kek_check_every: args.kek_check_every,
            clock: None,
            retention_sweep_every: args.retention_sweep_every,
            postgres_group_writers: args.pg_group_writers,
            kek_rotate_every: args.kek_rotate_every,
            kek_retain: args.kek_retain,
            kek_file: args.kek_file,
            keyvault_token: args.keyvault_token,
            admin_token: args.admin_token,
            body_limit_bytes: args.body_limit_bytes,
            subscribers_max: args.subscribers_max,
            header_timeout_secs: args.header_timeout_secs,
            request_timeout_secs: args.request_timeout_secs,
        }
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and report the first broken entry (exit code 1 if any).
    Verify {
        /// The event database (default: sqlite://<data-dir>/events.db).
        #[arg(long, env = "LETHE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[arg(long, env = "LETHE_DATA_DIR", default_value = "./lethe-data")]
        data_dir: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("LETHE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => server::run(args.into(), shutdown_signal())
            .await
            .context("lethe serve")?,
        Command::Token(TokenCommand::Create { role, name, config }) => {
            let role = Role::parse(&role).context("--role must be reader, writer or admin")?;
            let store = server::open_store(&config.into()).await?;
            let token = store.create_token(&name, role).await?;
            println!("{}", token.secret.as_str());
            store.close().await;
        }
        Command::Admin { connection, command } => cli::run(connection, command).await?,
        Command::Audit(AuditCommand::Verify { database_url, data_dir }) => {
            let url = database_url.unwrap_or_else(|| format!("sqlite://{}", data_dir.join("events.db").display()));
            let verification = lethe::store::verify_audit_database(&url).await?;
            match verification.first_broken {
                None => println!("audit trail intact: {} entries", verification.entries),
                Some(seq) => {
                    println!(
                        "audit trail BROKEN at entry {seq} ({} entries read)",
                        verification.entries
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Keyvault {
            audit_database_url,
            command,
        } => match lethe_keyvault::cli::run(command).await? {
            Outcome::Done => {}
            Outcome::Rotated(report) => audit_rotation(audit_database_url.as_deref(), &report).await?,
            Outcome::Serve { listener, app } => {
                server::serve_router(listener, app, ConnectionLimits::keyvault(), shutdown_signal()).await;
            }
        },
    }
    Ok(())
}

/// Records a finished KEK rotation in the event database's audit trail.
async fn audit_rotation(database_url: Option<&str>, report: &lethe_keyvault::RotationReport) -> anyhow::Result<()> {
    let Some(url) = database_url else {
        eprintln!(
            "warning: the rotation was not recorded in an audit trail; pass --audit-database-url \
             (or LETHE_DATABASE_URL) with the event database to record it"
        );
        return Ok(());
    };
    let entry = lethe::model::NewAuditEntry {
        actor: "cli".to_owned(),
        action: "kek_rotated".to_owned(),
        subject: None,
        request_id: None,
        details: serde_json::json!({
            "from_epoch": report.from_version,
            "to_epoch": report.to_version,
            "keys_rewrapped": report.rewrapped,
        }),
    };
    lethe::store::audit_kek_rotation_in_database(url, report.from_version, &entry)
        .await
        .context("the KEK was rotated, but recording it in the audit trail failed")?;
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// A duration setting where `0` (or `0s`) turns the thing off.
fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "0" | "0s" => Ok(Duration::ZERO),
        text => lethe_keyvault::cli::parse_duration(text),
    }
}
