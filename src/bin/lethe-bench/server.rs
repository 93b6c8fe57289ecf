//! The HTTP scenarios' server: the real `lethe serve` binary, run as a child process.
//!
//! Why a child process and not an in-process server: its peak resident memory (`VmHWM` in
//! `/proc/<pid>/status`) is then the server's alone — not the bench's clients, buffers and
//! latency vectors — and the clients' CPU shows as a separate process, as it would in
//! production. The binary is the `lethe` next to `lethe-bench` (same cargo profile); when it is
//! missing, the bench builds it with `cargo build --bin lethe` first.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::db::redact;

/// The admin token the bench's servers are started with, and its clients send.
pub const TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// How long a server may take to answer `/readyz` after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Finds (or builds) the `lethe` binary: `explicit` if given, else the one next to this
/// executable.
pub fn server_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let me = std::env::current_exe().context("locating lethe-bench's own executable")?;
    let dir = me.parent().context("lethe-bench's executable has no directory")?;
    let binary = dir.join(format!("lethe{}", std::env::consts::EXE_SUFFIX));
    if binary.is_file() {
        return Ok(binary);
    }
    // `cargo run --bin lethe-bench` builds only this binary: build the server with the same
    // profile and into the same target directory.
    eprintln!("{} not found: building it (cargo build --bin lethe)", binary.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = std::process::Command::new(cargo);
    build.args([
        "build",
        "--bin",
        "lethe",
        "--manifest-path",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
    ]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    // The target directory is the one this executable lives in (…/<target>/<profile>/).
    if let Some(target) = dir.parent() {
        build.arg("--target-dir").arg(target);
    }
    let status = build.status().context("running cargo build --bin lethe")?;
    if !status.success() || !binary.is_file() {
        bail!("could not build {} ({status}); pass --server-bin", binary.display());
    }
    Ok(binary)
}

/// A running `lethe serve` child process, on its own data directory (KEK file, admin token).
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl ServerProcess {
    /// Starts `lethe serve` on the given databases, with the KEK in `kek_file`, and waits until
    /// it answers `/readyz`.
    pub async fn start(binary: &Path, db_url: &str, vault_url: &str, kek_file: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("lethe-bench-server-{}", crate::db::suffix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // A free port: bound by us and released at once (the race with other programs is
        // harmless here; the start fails loudly if the port was taken meanwhile).
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?;
        let child = Command::new(binary)
            .arg("serve")
            .env("LETHE_DATA_DIR", dir.join("data"))
            .env("LETHE_KEYS_DIR", dir.join("keys"))
            .env("LETHE_LISTEN", addr.to_string())
            .env("LETHE_DATABASE_URL", db_url)
            .env("LETHE_KEYVAULT_URL", vault_url)
            .env("LETHE_KEK_FILE", kek_file)
            .env("LETHE_ADMIN_TOKEN", TOKEN)
            .env("LETHE_LOG", "error")
            .env("LETHE_PG_GROUP_WRITERS", crate::pg_group_writers().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", binary.display()))?;
        let mut server = Self { child, addr, dir };
        if let Err(e) = server.wait_ready().await {
            let _ = server.stop().await;
            return Err(e.context(format!("starting the server on {}", redact(db_url))));
        }
        Ok(server)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let url = format!("http://{}/readyz", self.addr);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("lethe serve exited with {status}");
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("lethe serve did not become ready within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The group writer's busy time since the server started, in seconds, from `/metrics`
    /// (`lethe_writer_busy_seconds`): over a round, its growth ÷ the round's length says how
    /// much of the round the writer — one transaction at a time — was the bottleneck.
    pub async fn writer_busy_seconds(&self) -> anyhow::Result<f64> {
        let url = format!("http://{}/metrics", self.addr);
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        text.lines()
            .find_map(|line| line.strip_prefix("lethe_writer_busy_seconds "))
            .and_then(|value| value.trim().parse().ok())
            .context("no lethe_writer_busy_seconds in /metrics")
    }

    /// The process's peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the server has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/<pid>/status")?;
        vm_hwm_bytes(&status).context("no VmHWM in /proc/<pid>/status")
    }

    /// SIGTERM (graceful shutdown: finish queued appends), SIGKILL if it takes too long; then
    /// removes the data directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // No libc dependency for one signal: the `kill` utility sends it.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await.is_err() {
                self.child.start_kill()?;
                self.child.wait().await?;
            }
        }
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

/// `VmHWM:   12345 kB` → bytes.
fn vm_hwm_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_from_proc_status() {
        assert_eq!(
            vm_hwm_bytes("Name:\tlethe\nVmPeak:\t 9 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(vm_hwm_bytes("Name:\tlethe\n"), None);
    }
}
