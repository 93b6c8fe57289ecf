//! Baselines on the same PostgreSQL server: raw INSERTs into a bare events-shaped table (the
//! engine's limit), and Message DB's `write_message`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection, raw_sql};

use crate::db::{create_pg_database, drop_pg_database, libpq_env, suffix, with_database};
use crate::report::Figures;
use crate::workload::{Outcome, Rng, order_data, timed};

/// The same columns, types, keys and indexes as Lethe's `events` table (PostgreSQL migration
/// 0001), with nothing else: no `streams` table, no commit-order lock, no `log_head`, and the
/// position from a plain sequence.
const RAW_TABLE: &str = "CREATE TABLE events (
    position    BIGSERIAL PRIMARY KEY,
    stream      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    event_id    UUID NOT NULL UNIQUE,
    event_type  TEXT NOT NULL,
    payload     BYTEA,
    metadata    TEXT NOT NULL,
    key_id      UUID,
    digest      BYTEA NOT NULL,
    recorded_at BIGINT NOT NULL,
    UNIQUE (stream, version)
)";

/// One row per statement, each its own transaction (autocommit), prepared once per connection.
const RAW_INSERT_ONE: &str = "INSERT INTO events \
     (stream, version, event_id, event_type, payload, metadata, key_id, digest, recorded_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
/// Many rows in one statement (one transaction), as Lethe inserts a group.
const RAW_INSERT_MANY: &str = "INSERT INTO events \
     (stream, version, event_id, event_type, payload, metadata, key_id, digest, recorded_at) \
     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::bytea[], $6::text[], \
                          $7::uuid[], $8::bytea[], $9::bigint[])";

/// `rows_per_txn` rows per transaction from `writers` connections, each with one transaction in
/// flight, until `duration` is up; on a fresh database.
pub async fn raw_inserts(
    server_url: &str,
    writers: usize,
    rows_per_txn: usize,
    streams: u64,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let name = format!("lethe_bench_raw_{}", suffix());
    create_pg_database(server_url, &name, None).await?;
    let result = async {
        let url = with_database(server_url, &name)?;
        let mut conn = PgConnection::connect(&url).await?;
        raw_sql(RAW_TABLE)
            .execute(&mut conn)
            .await
            .context("creating the raw table")?;
        conn.close().await?;
        // Versions only need to be unique per stream: one counter for all rows is simplest.
        let versions = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + duration;
        timed(writers, rows_per_txn, |_, rng| {
            raw_writer(url.clone(), rows_per_txn, streams, deadline, versions.clone(), rng)
        })
        .await
    }
    .await;
    let dropped = drop_pg_database(server_url, &name).await;
    let figures = result?;
    dropped?;
    Ok(figures)
}

async fn raw_writer(
    url: String,
    rows: usize,
    streams: u64,
    deadline: Instant,
    versions: Arc<AtomicU64>,
    mut rng: Rng,
) -> anyhow::Result<Outcome> {
    let mut conn = PgConnection::connect(&url).await?;
    let mut outcome = Outcome::default();
    let digest = vec![0u8; 32];
    let key_id = rng.uuid();
    while Instant::now() < deadline {
        // The same ~150-byte JSON as Lethe's payload, stored as bytes (no envelope).
        let payloads: Vec<Vec<u8>> = (0..rows)
            .map(|_| serde_json::to_vec(&order_data(&mut rng)))
            .collect::<Result<_, _>>()?;
        let streams: Vec<String> = (0..rows).map(|_| format!("bench-{}", rng.below(streams))).collect();
        let ids: Vec<uuid::Uuid> = (0..rows).map(|_| rng.uuid()).collect();
        let first = versions.fetch_add(rows as u64, Ordering::Relaxed) as i64;
        let now = chrono::Utc::now().timestamp_micros();
        let started = Instant::now();
        if rows == 1 {
            sqlx::query(RAW_INSERT_ONE)
                .bind(&streams[0])
                .bind(first)
                .bind(ids[0])
                .bind("OrderPlaced")
                .bind(&payloads[0])
                .bind("{}")
                .bind(key_id)
                .bind(&digest)
                .bind(now)
                .execute(&mut conn)
                .await?;
        } else {
            sqlx::query(RAW_INSERT_MANY)
                .bind(&streams)
                .bind((0..rows as i64).map(|i| first + i).collect::<Vec<_>>())
                .bind(&ids)
                .bind(vec!["OrderPlaced"; rows])
                .bind(&payloads)
                .bind(vec!["{}"; rows])
                .bind(vec![key_id; rows])
                .bind(vec![digest.as_slice(); rows])
                .bind(vec![now; rows])
                .execute(&mut conn)
                .await?;
        }
        outcome.latencies.push(started.elapsed());
    }
    conn.close().await?;
    Ok(outcome)
}

/// Message DB installed once per bench run into a template database; every round's database
/// is a copy of it (`CREATE DATABASE … TEMPLATE`), which takes milliseconds instead of the
/// seconds its installer takes.
pub struct MessageDb {
    server_url: String,
    template: String,
}

impl MessageDb {
    /// Installs Message DB with `script` (bench/install-message-db.sh). `Ok(None)` — with the
    /// reason printed — when npm or the package is unavailable, so the baseline is skipped.
    pub async fn install(server_url: &str, script: &Path) -> anyhow::Result<Option<Self>> {
        let template = format!("lethe_bench_mdb_{}", suffix());
        if !script.is_file() {
            eprintln!("Message DB baseline SKIPPED: {} not found", script.display());
            return Ok(None);
        }
        eprintln!("installing Message DB into {template} ({})", script.display());
        let mut command = tokio::process::Command::new("bash");
        command.arg(script).arg(&template);
        for (key, value) in libpq_env(server_url)? {
            command.env(key, value);
        }
        let status = command.status().await.context("running the Message DB installer")?;
        match status.code() {
            Some(0) => Ok(Some(Self {
                server_url: server_url.to_owned(),
                template,
            })),
            Some(3) => {
                eprintln!("Message DB baseline SKIPPED: npm or @eventide/message-db unavailable (see above)");
                // The installer may have created the database before failing.
                drop_pg_database(server_url, &template).await?;
                Ok(None)
            }
            _ => {
                drop_pg_database(server_url, &template).await?;
                bail!("installing Message DB failed ({status})")
            }
        }
    }

    /// `writers` connections calling `write_message` back to back for `duration`, each with one
    /// call in flight, one message per call, to a random `bench-<n>` stream; fresh database.
    pub async fn write_messages(&self, writers: usize, streams: u64, duration: Duration) -> anyhow::Result<Figures> {
        let name = format!("lethe_bench_mdbr_{}", suffix());
        create_pg_database(&self.server_url, &name, Some(&self.template)).await?;
        let result = async {
            let url = with_database(&self.server_url, &name)?;
            let deadline = Instant::now() + duration;
            timed(writers, 1, |_, rng| mdb_writer(url.clone(), streams, deadline, rng)).await
        }
        .await;
        let dropped = drop_pg_database(&self.server_url, &name).await;
        let figures = result?;
        dropped?;
        Ok(figures)
    }

    pub async fn remove(self) -> anyhow::Result<()> {
        drop_pg_database(&self.server_url, &self.template).await
    }
}

async fn mdb_writer(url: String, streams: u64, deadline: Instant, mut rng: Rng) -> anyhow::Result<Outcome> {
    let mut conn = PgConnection::connect(&url).await?;
    // Message DB's functions call each other unqualified.
    raw_sql("SET search_path = message_store, public")
        .execute(&mut conn)
        .await?;
    let mut outcome = Outcome::default();
    while Instant::now() < deadline {
        let id = rng.uuid().to_string();
        let stream = format!("bench-{}", rng.below(streams));
        let data = sqlx::types::Json(order_data(&mut rng));
        let started = Instant::now();
        sqlx::query("SELECT write_message($1, $2, $3, $4)")
            .bind(id)
            .bind(stream)
            .bind("OrderPlaced")
            .bind(data)
            .execute(&mut conn)
            .await?;
        outcome.latencies.push(started.elapsed());
    }
    conn.close().await?;
    Ok(outcome)
}

/// The installer script next to the sources (`bench/install-message-db.sh`).
pub fn default_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/install-message-db.sh")
}
