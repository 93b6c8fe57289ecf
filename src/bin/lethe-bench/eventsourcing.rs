//! Baseline: the Python `eventsourcing` library (PyPI) with its AES cipher, on the same
//! PostgreSQL server. `bench/eventsourcing_baseline.py` measures a round in a Python process
//! (the library's own threads and connection pool) and prints its figures as one JSON line;
//! `bench/install-eventsourcing.sh` keeps the pinned library in a venv reused across runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::db::{create_pg_database, drop_pg_database, libpq_env, redact, suffix};
use crate::report::Figures;

/// The installed library: the venv's interpreter and the measuring script.
pub struct Eventsourcing {
    server_url: String,
    python: PathBuf,
    script: PathBuf,
}

/// What the script prints: [`Figures`]' fields, and the version conflicts it retried.
#[derive(Deserialize)]
struct ScriptFigures {
    ops: u64,
    failures: u64,
    seconds: f64,
    ops_per_sec: f64,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    conflicts_retried: u64,
}

impl Eventsourcing {
    /// Installs the library with `installer` (bench/install-eventsourcing.sh) and checks that
    /// the script next to it imports it. `Ok(None)` — with the reason printed — when Python,
    /// the venv or the packages are unavailable, so the baseline is skipped.
    pub async fn install(server_url: &str, installer: &Path) -> anyhow::Result<Option<Self>> {
        let script = installer.with_file_name("eventsourcing_baseline.py");
        for file in [installer, &script] {
            if !file.is_file() {
                eprintln!("eventsourcing baseline SKIPPED ({} not found)", file.display());
                return Ok(None);
            }
        }
        eprintln!("installing eventsourcing ({})", installer.display());
        let output = tokio::process::Command::new("bash")
            .arg(installer)
            .stdout(Stdio::piped())
            .spawn()
            .context("running the eventsourcing installer")?
            // Not `Command::output()`, which would capture stderr too: its messages are for the
            // reader.
            .wait_with_output()
            .await
            .context("running the eventsourcing installer")?;
        match output.status.code() {
            Some(0) => {}
            Some(3) => {
                eprintln!("eventsourcing baseline SKIPPED (Python or the packages unavailable, see above)");
                return Ok(None);
            }
            _ => bail!("installing eventsourcing failed ({})", output.status),
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let python = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        // The installer only says the packages are there; this says the script can use them.
        let check = tokio::process::Command::new(&python)
            .arg(&script)
            .arg("--check")
            .output()
            .await;
        match check {
            Ok(check) if check.status.success() => {
                eprint!("{}", String::from_utf8_lossy(&check.stderr));
            }
            Ok(check) => {
                let stderr = String::from_utf8_lossy(&check.stderr);
                let why = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no output");
                eprintln!("eventsourcing baseline SKIPPED ({} --check: {why})", script.display());
                return Ok(None);
            }
            Err(e) => {
                eprintln!("eventsourcing baseline SKIPPED ({}: {e})", python.display());
                return Ok(None);
            }
        }
        Ok(Some(Self {
            server_url: server_url.to_owned(),
            python,
            script,
        }))
    }

    /// One round on a fresh database: `writers` threads appending back to back for `duration`,
    /// each with one write in flight, `events_per_write` events to a random aggregate of
    /// `streams` per write (see the script for how one write goes through the library).
    pub async fn append(
        &self,
        writers: usize,
        events_per_write: usize,
        streams: u64,
        duration: Duration,
    ) -> anyhow::Result<Figures> {
        let name = format!("lethe_bench_es_{}", suffix());
        create_pg_database(&self.server_url, &name, None).await?;
        let result = self.run(&name, writers, events_per_write, streams, duration).await;
        let dropped = drop_pg_database(&self.server_url, &name).await;
        let figures = result?;
        dropped?;
        Ok(figures)
    }

    async fn run(
        &self,
        database: &str,
        writers: usize,
        events_per_write: usize,
        streams: u64,
        duration: Duration,
    ) -> anyhow::Result<Figures> {
        let mut command = tokio::process::Command::new(&self.python);
        command
            .arg(&self.script)
            .args(["--writers", &writers.to_string()])
            .args(["--seconds", &duration.as_secs_f64().to_string()])
            .args(["--streams", &streams.to_string()])
            .args(["--events-per-write", &events_per_write.to_string()])
            .stdout(Stdio::piped());
        // The library reads its settings from POSTGRES_* variables: none of the caller's (CI
        // services often set some) may change which server, database or options it uses.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("POSTGRES_") {
                command.env_remove(key);
            }
        }
        // It requires a host, a user and a password (empty: no password), where libpq has
        // defaults.
        let (mut host, mut user, mut password) = ("localhost".to_owned(), "postgres".to_owned(), String::new());
        for (key, value) in libpq_env(&self.server_url)? {
            match key {
                "PGHOST" => host = value,
                "PGUSER" => user = value,
                "PGPASSWORD" => password = value,
                "PGPORT" => {
                    command.env("POSTGRES_PORT", value);
                }
                _ => {}
            }
        }
        command
            .env("POSTGRES_DBNAME", database)
            .env("POSTGRES_HOST", host)
            .env("POSTGRES_USER", user)
            .env("POSTGRES_PASSWORD", password);
        // stderr stays the bench's, so that a traceback shows.
        let output = command
            .spawn()
            .with_context(|| format!("running {}", self.script.display()))?
            .wait_with_output()
            .await
            .with_context(|| format!("running {}", self.script.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}) on {} (its error is above)",
                self.script.display(),
                output.status,
                redact(&self.server_url)
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
        let f: ScriptFigures = serde_json::from_str(line)
            .with_context(|| format!("reading the figures {} printed: {line:?}", self.script.display()))?;
        if f.conflicts_retried > 0 {
            eprintln!("    {} version conflicts retried", f.conflicts_retried);
        }
        Ok(Figures {
            ops: f.ops,
            failures: f.failures,
            seconds: f.seconds,
            ops_per_sec: f.ops_per_sec,
            events_per_sec: f.events_per_sec,
            p50_ms: f.p50_ms,
            p99_ms: f.p99_ms,
            appends_per_txn: None,
            peak_rss_mb: None,
        })
    }
}

/// The installer next to the sources (`bench/install-eventsourcing.sh`).
pub fn default_installer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/install-eventsourcing.sh")
}
