//! The `lethe` command: `serve`, `token create`, `keyvault …`.

mod cli;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lethe::model::Role;
use lethe::server::{self, ServeConfig};
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
    Serve(ServeConfig),
    /// Manage API tokens directly in the event database.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Admin client for a running server (LETHE_URL, LETHE_TOKEN): erasures, holds, exports, tokens.
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
        config: ServeConfig,
    },
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
        Command::Serve(config) => server::run(config, shutdown_signal()).await.context("lethe serve")?,
        Command::Token(TokenCommand::Create { role, name, config }) => {
            let role = Role::parse(&role).context("--role must be reader, writer or admin")?;
            let store = server::open_store(&config).await?;
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
        } => {
            if let lethe_keyvault::cli::Outcome::Rotated(report) = lethe_keyvault::cli::run(command).await? {
                audit_rotation(audit_database_url.as_deref(), &report).await?;
            }
        }
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
            "from_version": report.from_version,
            "to_version": report.to_version,
            "keys_rewrapped": report.rewrapped,
        }),
    };
    lethe::store::append_audit_to_database(url, &entry)
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
