//! `lethe keyvault <command>`: run the vault server, rotate the KEK, generate a KEK file.
//! The root binary mounts [`KeyvaultCommand`] and calls [`run`]; `anyhow` is used only here,
//! at the edge where errors become messages for an operator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::kek::KEK_ENV;
use crate::{
    EpochPolicy, FileKeks, Kek, KekProvider, KeyVault as _, LocalVault, Pkcs11Config, Pkcs11Keks, RotateOptions,
    RotationReport,
};

#[derive(clap::Subcommand)]
pub enum KeyvaultCommand {
    /// Run the key vault as its own HTTP server.
    Serve {
        #[arg(long, env = "LETHE_KEYVAULT_LISTEN", default_value = "127.0.0.1:2114")]
        listen: SocketAddr,
        /// The vault's own database: sqlite://path or postgres://... (never the event database).
        #[arg(long, env = "LETHE_KEYVAULT_DATABASE_URL")]
        database_url: String,
        /// A KEK handed in from outside (32 bytes, mode 0600). With it, or with LETHE_KEK
        /// (base64) set, KEK epochs are rotated by hand (`rotate-kek`); without either, the
        /// KEK provider holds them and they rotate by themselves.
        #[arg(long, env = "LETHE_KEK_FILE")]
        kek_file: Option<PathBuf>,
        /// The other KEK of an interrupted rotation, so every key stays readable until
        /// `rotate-kek` is re-run.
        #[arg(long, env = "LETHE_KEK_FILE_OTHER")]
        other_kek_file: Option<PathBuf>,
        #[command(flatten)]
        keks: Box<ProviderArgs>,
        /// Bearer token clients must present (at least 16 characters).
        #[arg(long, env = "LETHE_KEYVAULT_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Re-wrap every key under a new KEK (resumable: re-run with the same files to finish).
    RotateKek {
        #[arg(long, env = "LETHE_KEYVAULT_DATABASE_URL")]
        database_url: String,
        /// The current (old) KEK file. Without it, LETHE_KEK (base64) is used.
        #[arg(long, env = "LETHE_KEK_FILE")]
        kek_file: Option<PathBuf>,
        /// The new KEK file (see `generate-kek`).
        #[arg(long)]
        new_kek_file: PathBuf,
        /// Keys re-wrapped per transaction.
        #[arg(long, default_value_t = crate::limits::ROTATION_BATCH_DEFAULT)]
        batch_size: usize,
    },
    /// Move a legacy `kek.key` out of the data directory into the keys directory, as the KEK
    /// file of its epoch (so backups of the data directory no longer hold it).
    MoveKeys {
        /// The data directory holding `kek.key` and (by default) `keyvault.db`.
        #[arg(long, env = "LETHE_DATA_DIR", default_value = "./lethe-data")]
        data_dir: PathBuf,
        /// The keys directory (created 0700 if missing; never inside the data directory).
        #[arg(long, env = "LETHE_KEYS_DIR", default_value = "./lethe-keys")]
        keys_dir: PathBuf,
        /// The vault database (default: sqlite://<data-dir>/keyvault.db).
        #[arg(long, env = "LETHE_KEYVAULT_URL", hide_env_values = true)]
        keyvault_url: Option<String>,
    },
    /// Write a new random KEK file with mode 0600 (refuses to overwrite).
    GenerateKek {
        /// Where to write it.
        path: PathBuf,
    },
}

/// Where the vault's KEK epochs live, and how often they turn over (`serve`).
#[derive(clap::Args, Debug)]
pub struct ProviderArgs {
    /// The keys directory (`file` provider): one KEK file per epoch. Never inside a directory
    /// that is backed up with the vault's database.
    #[arg(long, env = "LETHE_KEYS_DIR", default_value = "./lethe-keys")]
    pub keys_dir: PathBuf,
    /// `file` (the keys directory) or `pkcs11` (an HSM; the KEKs never leave it).
    #[arg(long, env = "LETHE_KEK_PROVIDER", default_value = "file")]
    pub kek_provider: String,
    /// The HSM's PKCS#11 module (`pkcs11`).
    #[arg(long, env = "LETHE_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,
    /// The HSM token by label (`pkcs11`).
    #[arg(long, env = "LETHE_PKCS11_TOKEN")]
    pub pkcs11_token: Option<String>,
    /// The HSM token by slot id (`pkcs11`).
    #[arg(long, env = "LETHE_PKCS11_SLOT")]
    pub pkcs11_slot: Option<u64>,
    /// A file (mode 0600) holding the token's user PIN (`pkcs11`).
    #[arg(long, env = "LETHE_PKCS11_PIN_FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,
    /// The KEK objects' label prefix on the token (`pkcs11`).
    #[arg(long, env = "LETHE_PKCS11_LABEL_PREFIX")]
    pub pkcs11_label_prefix: Option<String>,
    /// A new KEK epoch this often; every key is re-wrapped in the background.
    #[arg(long, env = "LETHE_KEK_ROTATE_EVERY", default_value = "7d", value_parser = parse_duration)]
    pub kek_rotate_every: Duration,
    /// A superseded epoch is destroyed this long after.
    #[arg(long, env = "LETHE_KEK_RETAIN", default_value = "30d", value_parser = parse_duration)]
    pub kek_retain: Duration,
    /// How often the vault looks whether an epoch is due.
    #[arg(long, env = "LETHE_KEK_CHECK_EVERY", default_value = "60s", value_parser = parse_duration, hide = true)]
    pub kek_check_every: Duration,
}

impl ProviderArgs {
    /// The provider these settings name.
    pub fn provider(&self) -> anyhow::Result<Arc<dyn KekProvider>> {
        match self.kek_provider.as_str() {
            "file" => Ok(Arc::new(
                FileKeks::create_dir(&self.keys_dir).context("the keys directory (LETHE_KEYS_DIR)")?,
            )),
            "pkcs11" => {
                let module = self
                    .pkcs11_module
                    .clone()
                    .context("LETHE_PKCS11_MODULE must be set with LETHE_KEK_PROVIDER=pkcs11")?;
                let pin_file = self
                    .pkcs11_pin_file
                    .as_deref()
                    .context("LETHE_PKCS11_PIN_FILE must be set with LETHE_KEK_PROVIDER=pkcs11")?;
                let mut config = Pkcs11Config::new(module, Pkcs11Config::pin_from_file(pin_file)?);
                config.token_label = self.pkcs11_token.clone();
                config.slot = self.pkcs11_slot;
                if let Some(prefix) = &self.pkcs11_label_prefix {
                    config.label_prefix = prefix.clone();
                }
                Ok(Arc::new(Pkcs11Keks::open(config)?))
            }
            other => anyhow::bail!("LETHE_KEK_PROVIDER={other:?}: use file or pkcs11"),
        }
    }

    /// The rotation and retention these settings name.
    pub fn policy(&self) -> EpochPolicy {
        EpochPolicy {
            rotate_every: self.kek_rotate_every,
            retain: self.kek_retain,
            check_every: self.kek_check_every,
            ..EpochPolicy::default()
        }
    }
}

/// `90`, `90s`, `15m`, `12h`, `7d` or `2w`: a whole number of seconds, minutes, hours, days or
/// weeks, at least one second. (The duration settings of `lethe serve` and `keyvault serve`.)
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 12h, 7d or 2w"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h, d or w")),
    };
    match number.checked_mul(unit_secs) {
        Some(0) => Err("a duration must be at least one second".into()),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("{text:?} is too long")),
    }
}

// Hand-written so the token never reaches a log through `{:?}`.
impl std::fmt::Debug for KeyvaultCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyvaultCommand::Serve {
                listen,
                database_url: _,
                kek_file,
                other_kek_file,
                keks,
                token: _,
            } => f
                .debug_struct("Serve")
                .field("keks", keks)
                .field("listen", listen)
                .field("database_url", &"<redacted>")
                .field("kek_file", kek_file)
                .field("other_kek_file", other_kek_file)
                .field("token", &"<redacted>")
                .finish(),
            KeyvaultCommand::RotateKek {
                kek_file,
                new_kek_file,
                batch_size,
                ..
            } => f
                .debug_struct("RotateKek")
                .field("database_url", &"<redacted>")
                .field("kek_file", kek_file)
                .field("new_kek_file", new_kek_file)
                .field("batch_size", batch_size)
                .finish(),
            KeyvaultCommand::MoveKeys { data_dir, keys_dir, .. } => f
                .debug_struct("MoveKeys")
                .field("data_dir", data_dir)
                .field("keys_dir", keys_dir)
                .field("keyvault_url", &"<redacted>")
                .finish(),
            KeyvaultCommand::GenerateKek { path } => f.debug_struct("GenerateKek").field("path", path).finish(),
        }
    }
}

fn load_kek(file: Option<&Path>) -> anyhow::Result<Kek> {
    match file {
        Some(path) => Kek::from_file(path).context("loading the KEK"),
        None => Kek::from_base64_env(KEK_ENV)
            .context("no KEK file given (--kek-file / LETHE_KEK_FILE), and LETHE_KEK is unusable"),
    }
}

/// What a command did that its caller may want to record (the root binary audits rotations),
/// or still has to do (serve the vault).
pub enum Outcome {
    Done,
    /// `rotate-kek` finished: every key is wrapped with the new KEK.
    Rotated(RotationReport),
    /// `serve`: the vault is open and the listener bound; the caller serves `app` on it until
    /// shut down (the accept loop is the binary's, with the vault's limits in
    /// [`crate::limits`]: header timeout, connections, drain).
    Serve {
        listener: tokio::net::TcpListener,
        app: axum::Router,
    },
}

// Hand-written: `Router` has no `Debug`.
impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Done => f.write_str("Done"),
            Outcome::Rotated(report) => f.debug_tuple("Rotated").field(report).finish(),
            Outcome::Serve { listener, .. } => f
                .debug_struct("Serve")
                .field("addr", &listener.local_addr().ok())
                .finish_non_exhaustive(),
        }
    }
}

pub async fn run(cmd: KeyvaultCommand) -> anyhow::Result<Outcome> {
    match cmd {
        KeyvaultCommand::Serve {
            listen,
            database_url,
            kek_file,
            other_kek_file,
            keks,
            token,
        } => {
            let given = kek_file.is_some() || std::env::var_os(KEK_ENV).is_some();
            let vault: Arc<LocalVault> = if given {
                let kek = load_kek(kek_file.as_deref())?;
                let others = match other_kek_file {
                    Some(p) => vec![Kek::from_file(&p).context("loading the other KEK")?],
                    None => Vec::new(),
                };
                Arc::new(
                    LocalVault::open(&database_url, kek, others)
                        .await
                        .context("opening the key vault database")?,
                )
            } else {
                let vault = Arc::new(
                    LocalVault::open_with_provider(
                        &database_url,
                        keks.provider()?,
                        keks.policy(),
                        Arc::new(crate::SystemClock),
                    )
                    .await
                    .context("opening the key vault database")?,
                );
                // Detached: it holds a weak reference and ends with the vault.
                drop(vault.spawn_epochs());
                vault
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let app = crate::server::router(vault, &token)?;
            tracing::info!(addr = %listener.local_addr()?, "key vault listening");
            Ok(Outcome::Serve { listener, app })
        }
        KeyvaultCommand::RotateKek {
            database_url,
            kek_file,
            new_kek_file,
            batch_size,
        } => {
            let old = load_kek(kek_file.as_deref())?;
            let new = Kek::from_file(&new_kek_file).context("loading the new KEK")?;
            // The new KEK is also offered at open, so a re-run after an interruption (when some
            // keys are already wrapped with it) can read every key.
            let new_again = Kek::from_file(&new_kek_file).context("loading the new KEK")?;
            let vault = LocalVault::open(&database_url, old, vec![new_again])
                .await
                .context("opening the key vault database")?;
            let report = vault
                .rotate_kek_with(
                    new,
                    RotateOptions {
                        batch_size,
                        max_batches: None,
                    },
                )
                .await
                .context("rotating the KEK")?;
            println!("{}", serde_json::to_string(&report)?);
            eprintln!(
                "KEK rotation complete: every key is wrapped with KEK version {}. Point \
                 LETHE_KEK_FILE at the new KEK, restart the vault's users, then destroy the old \
                 KEK and every copy of it.",
                report.to_version
            );
            Ok(Outcome::Rotated(report))
        }
        KeyvaultCommand::MoveKeys {
            data_dir,
            keys_dir,
            keyvault_url,
        } => {
            let url = keyvault_url.unwrap_or_else(|| format!("sqlite://{}", data_dir.join("keyvault.db").display()));
            let epoch = move_keys(&data_dir, &keys_dir, &url).await?;
            eprintln!(
                "moved the KEK of epoch {epoch} to {}. Earlier backups of the data directory still \
                 hold it; they become unreadable once epoch {epoch} is superseded and destroyed \
                 (after the next rotation plus the retention period).",
                keys_dir.display()
            );
            Ok(Outcome::Done)
        }
        KeyvaultCommand::GenerateKek { path } => {
            if path.exists() {
                anyhow::bail!("{} exists; refusing to overwrite a KEK", path.display());
            }
            Kek::load_or_create(&path).context("writing the KEK file")?;
            eprintln!("wrote a new KEK to {} (mode 0600)", path.display());
            Ok(Outcome::Done)
        }
    }
}

/// Moves `<data_dir>/kek.key` into the keys directory as the file of the epoch (KEK version)
/// the vault knows it as, checks the copy, then deletes the original. Returns the epoch.
async fn move_keys(data_dir: &Path, keys_dir: &Path, vault_url: &str) -> anyhow::Result<u32> {
    let legacy = data_dir.join("kek.key");
    if !legacy.exists() {
        anyhow::bail!("{} does not exist: there is no KEK to move", legacy.display());
    }
    let data = std::fs::canonicalize(data_dir).with_context(|| format!("resolving {}", data_dir.display()))?;
    let keys = FileKeks::create_dir(keys_dir).context("preparing the keys directory")?;
    let keys_path = std::fs::canonicalize(keys.dir()).with_context(|| format!("resolving {}", keys_dir.display()))?;
    if keys_path.starts_with(&data) {
        anyhow::bail!(
            "the keys directory {} lies inside the data directory {}; choose one outside it",
            keys_dir.display(),
            data_dir.display()
        );
    }
    let kek = Kek::from_file(&legacy).context("loading the KEK")?;
    let check = kek.check_value();
    let vault = LocalVault::open(vault_url, kek, Vec::new())
        .await
        .context("opening the key vault database with this KEK")?;
    let epoch = vault
        .stats()
        .await
        .context("reading the vault's KEK version")?
        .kek_version;
    drop(vault);
    let kek = Kek::from_file(&legacy).context("loading the KEK")?;
    keys.import(epoch, &kek)
        .context("writing the KEK into the keys directory")?;
    if keys.legacy_check_value(epoch).context("reading the moved KEK back")? != Some(check) {
        anyhow::bail!("the KEK written to the keys directory does not read back the same; kek.key was kept");
    }
    std::fs::remove_file(&legacy).with_context(|| format!("removing {}", legacy.display()))?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        dir.sync_all()
            .with_context(|| format!("syncing {}", data_dir.display()))?;
    }
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        for bad in ["", "d", "0s", "7x", "-1d", "99999999999999999999w", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
