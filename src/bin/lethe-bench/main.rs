//! `lethe-bench`: Lethe's throughput, latency, catch-up speed, forget time and memory, against
//! its peers on the same PostgreSQL server, in one run.
//!
//! Every round runs on fresh databases (removed afterwards) and the table reports the median of
//! each figure over the rounds. What it measures (BENCHMARKS.md has the details and figures):
//!
//! - appends through the library (`EventStore::append`), with encryption on and off (the
//!   `insecure-noop-cipher` feature, which only this binary enables): single events with 1, 16
//!   and 64 writers, 100-event batches with 1 and 8, the seed's 2-stream atomic append;
//! - personal fields (issue 18): the same money transfers appended, and read back by a
//!   catch-up, with and without a schema that makes two of their fields personal data of two
//!   subjects (each field sealed with its subject's own key inside the stream-sealed payload);
//! - the same over HTTP against the real `lethe serve` binary run as a child process
//!   (`server.rs`), whose peak resident memory (`VmHWM`) is read at the end of every round;
//! - a catch-up read of the whole global log (1M events by default), decrypted, through the
//!   library and over HTTP;
//! - `forget` of a subject with 1 stream and with 1,000 streams of 10 events;
//! - a retention sweep (issue 20) that files an erasure request for each of 10,000 subjects
//!   past a policy's `keep_for`, with single-event appends from a concurrent writer meanwhile;
//! - baselines on the same PostgreSQL server (`baselines.rs`): raw INSERTs of the same rows into
//!   a bare events-shaped table (1 and 100 rows per transaction), and Message DB's
//!   `write_message` with the same number of connections, streams and payloads;
//! - the Python `eventsourcing` library with its AES cipher (`eventsourcing.rs`), single events
//!   and 100-event batches, the same writers, streams and payloads;
//! - the targets of issues 8 and 18 as ratios between figures of this run, and comparisons with
//!   the baselines that have no goal.
//!
//! This is a measuring tool, not a test: nothing here asserts on timings.
//!
//! ```text
//! cargo run --release --features insecure-noop-cipher --bin lethe-bench -- --json bench.json
//! cargo run --features insecure-noop-cipher --bin lethe-bench -- --quick   # CI: it runs, no thresholds
//! ```

/// The same allocator as the `lethe` binary (see src/main.rs), so that the library scenarios
/// measure Lethe as the server runs it; the clients of every scenario and baseline use it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod baselines;
mod db;
mod eventsourcing;
mod reads;
mod report;
mod retention;
mod server;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use lethe::limits::ERASURE_RESUME_INTERVAL;
use lethe::{EventStore, SchemaMode, StoreConfig};
use serde_json::json;
use sqlx::Connection;

use crate::baselines::MessageDb;
use crate::db::{FreshDatabases, redact};
use crate::eventsourcing::Eventsourcing;
use crate::report::{Figures, Goal, Row, Target, median_figures, table, targets_table};
use crate::retention::{CLOCK_ADVANCE, RETENTION_SWEEP, RETENTION_SWEEP_APPENDS};
use crate::server::ServerProcess;
use crate::workload::{
    Shape, TRANSFER_TYPE, http_client, http_writer, library_writer, order_event, timed, transfer_event,
    transfer_schema, warm_up_subjects,
};

#[derive(Debug, Parser)]
#[command(about = "Lethe against its peers: appends, catch-up, forget, memory; one run, one PostgreSQL")]
struct Args {
    /// Which event database engine(s) to measure (the baselines run on PostgreSQL only).
    #[arg(long, value_enum, default_value_t = EngineChoice::Both)]
    engine: EngineChoice,

    /// A PostgreSQL server to run on. The bench creates fresh `lethe_bench_*` databases on it
    /// for every round and drops them afterwards.
    #[arg(
        long,
        env = "LETHE_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,

    /// Each append picks its stream at random among this many (`bench-<n>`).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    streams: u64,

    /// Seconds each timed round runs (fractions allowed).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,

    /// Rounds per scenario; the table reports the median of each figure over the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Events in the log for the catch-up read (0: no catch-up scenarios).
    #[arg(long, default_value_t = 1_000_000)]
    catch_up_events: u64,

    /// Streams (of 10 events each) of the subject forgotten in `forget-many` (0: no forgets).
    #[arg(long, default_value_t = 1_000)]
    forget_streams: u64,

    /// Subjects (one bound stream of one event each) past the retention policy that
    /// `retention-sweep` sweeps (0: no retention sweep).
    #[arg(long, default_value_t = 10_000)]
    retention_subjects: u64,

    /// Smoke run for CI: 0.5 s rounds, 1 round each, 10,000 events to catch up, 100 streams to
    /// forget, 200 subjects to sweep (overrides those options). It checks that everything runs,
    /// not how fast.
    #[arg(long)]
    quick: bool,

    /// Also write the results (every round, the medians, the targets) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Library appends with per-stream encryption off, on, or both (side by side rows). HTTP,
    /// catch-up and forget always run with encryption on.
    #[arg(long, value_enum, default_value_t = EncryptionChoice::Both)]
    encryption: EncryptionChoice,

    /// Only these scenarios (comma-separated names as in the table's first column, e.g.
    /// `http-single,message-db`). Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,

    /// Only these writer (client, connection) counts of the append scenarios and baselines
    /// (comma-separated, e.g. `64`). Default: all.
    #[arg(long, value_delimiter = ',')]
    writers: Vec<usize>,

    /// Skip the Message DB baseline (it needs npm, psql and createdb).
    #[arg(long)]
    no_message_db: bool,

    /// Skip the Python `eventsourcing` baseline (it needs python3 with venv, and PyPI the first
    /// time).
    #[arg(long)]
    no_eventsourcing: bool,

    /// PostgreSQL: group writers of the stores and servers measured (`StoreConfig::postgres_group_writers`,
    /// `lethe serve --pg-group-writers`). 1 writes each group under the commit-order lock.
    #[arg(long, env = "LETHE_PG_GROUP_WRITERS", default_value_t = 1)]
    pg_group_writers: usize,

    /// The `lethe` binary for the HTTP scenarios. Default: the one next to this executable,
    /// built with `cargo build --bin lethe` (same profile) if it is missing.
    #[arg(long)]
    server_bin: Option<PathBuf>,

    /// The script that installs Message DB into a database (default: bench/install-message-db.sh
    /// in the source tree).
    #[arg(long)]
    message_db_installer: Option<PathBuf>,

    /// The script that installs the Python `eventsourcing` library into a venv (default:
    /// bench/install-eventsourcing.sh in the source tree; the measuring script is next to it).
    #[arg(long)]
    eventsourcing_installer: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EngineChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EncryptionChoice {
    Off,
    On,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// Library append scenarios: name, writers, shape.
const LIBRARY: &[(&str, usize, Shape)] = &[
    ("single-event", 1, Shape::Single),
    ("single-event", 16, Shape::Single),
    ("single-event", 64, Shape::Single),
    ("batch-100", 1, Shape::Batch(100)),
    ("batch-100", 8, Shape::Batch(100)),
    ("multi-stream-2x1", 64, Shape::MultiStream),
];

/// Personal-field append scenarios (money transfers, each round with and without the schema):
/// name, writers, shape.
const FIELDS: &[(&str, usize, Shape)] = &[
    ("fields-single-event", 1, Shape::Single),
    ("fields-single-event", 64, Shape::Single),
    ("fields-batch-100", 8, Shape::Batch(100)),
];
/// The catch-up over transfers written with and without the schema.
const FIELDS_CATCH_UP: &str = "fields-catch-up";
/// The `enc` column of transfers appended without a schema (sealed with the stream key only)
/// and with it (their two personal fields also sealed with their subjects' keys).
const PLAIN: &str = "on";
const SEALED_FIELDS: &str = "fields";

/// What a library append round writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Events {
    /// Orders (`single-event`, `batch-100`, `multi-stream-2x1`).
    Orders,
    /// Money transfers; `schema`: with [`transfer_schema`] registered before the round.
    Transfers { schema: bool },
}

/// HTTP append scenarios (same payloads; `POST /streams/bench-<n>`): name, clients, shape.
const HTTP: &[(&str, usize, Shape)] = &[
    ("http-single", 1, Shape::Single),
    ("http-single", 16, Shape::Single),
    ("http-single", 64, Shape::Single),
    ("http-batch-100", 1, Shape::Batch(100)),
    ("http-batch-100", 8, Shape::Batch(100)),
];

/// Baselines: raw INSERT rows per transaction and connections; Message DB connections.
const RAW_INSERTS: &[(&str, usize, usize)] = &[
    ("raw-insert-1", 1, 1),
    ("raw-insert-1", 16, 1),
    ("raw-insert-1", 64, 1),
    ("raw-insert-100", 1, 100),
    ("raw-insert-100", 8, 100),
];
const MESSAGE_DB_WRITERS: &[usize] = &[1, 16, 64];
/// The Python `eventsourcing` library: name, writer threads, events per write.
const EVENTSOURCING: &[(&str, usize, usize)] = &[
    ("eventsourcing", 1, 1),
    ("eventsourcing", 16, 1),
    ("eventsourcing", 64, 1),
    ("eventsourcing-batch-100", 8, 100),
];

struct Bench {
    args: Args,
    duration: Duration,
    server_bin: Option<PathBuf>,
    rows: Vec<Row>,
}

/// `--pg-group-writers`, for every store and server the bench opens (set once, in `main`).
static PG_GROUP_WRITERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

pub(crate) fn pg_group_writers() -> usize {
    PG_GROUP_WRITERS.get().copied().unwrap_or(1)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.seconds = 0.5;
        args.rounds = 1;
        args.catch_up_events = args.catch_up_events.min(10_000);
        args.forget_streams = args.forget_streams.min(100);
        args.retention_subjects = args.retention_subjects.min(200);
    }
    if args.seconds.is_nan() || args.seconds <= 0.0 || args.rounds == 0 {
        bail!("--seconds must be positive and --rounds at least 1");
    }
    PG_GROUP_WRITERS
        .set(args.pg_group_writers)
        .map_err(|_| anyhow::anyhow!("group writers set twice"))?;
    let engines: &[Engine] = match args.engine {
        EngineChoice::Sqlite => &[Engine::Sqlite],
        EngineChoice::Postgres => &[Engine::Postgres],
        EngineChoice::Both => &[Engine::Sqlite, Engine::Postgres],
    };
    let started = Instant::now();
    let load_before = load_average();
    let mut bench = Bench {
        duration: Duration::from_secs_f64(args.seconds),
        server_bin: None,
        rows: Vec::new(),
        args,
    };
    for &engine in engines {
        bench.library_appends(engine).await?;
        bench.field_appends(engine).await?;
        bench.http_appends(engine).await?;
        bench.catch_up(engine).await?;
        bench.fields_catch_up(engine).await?;
        bench.forgets(engine).await?;
        bench.retention_sweep(engine).await?;
    }
    if engines.contains(&Engine::Postgres) {
        bench.baselines().await?;
    }
    let load_after = load_average();

    let rows = bench.rows;
    let targets = targets(&rows, bench.args.forget_streams, engines);
    println!("{}", table(&rows));
    println!();
    println!("{}", targets_table(&targets));
    let failures: u64 = rows.iter().flat_map(|r| &r.rounds).map(|f| f.failures).sum();
    eprintln!(
        "{:.0} s; load average {} before, {} after; failed operations (HTTP non-2xx), all rounds: {failures}",
        started.elapsed().as_secs_f64(),
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
    );

    if let Some(path) = &bench.args.json {
        let report = json!({
            "seconds_per_round": bench.args.seconds,
            "rounds": bench.args.rounds,
            "streams": bench.args.streams,
            "catch_up_events": bench.args.catch_up_events,
            "forget_streams": bench.args.forget_streams,
            "retention_subjects": bench.args.retention_subjects,
            "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "results": rows,
            "targets": targets,
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    if failures > 0 {
        bail!("{failures} operations failed (see above)");
    }
    Ok(())
}

impl Bench {
    fn wants(&self, scenario: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|s| s == scenario)
    }

    /// Whether to run `scenario` with this many writers (`--only`, `--writers`).
    fn wants_writers(&self, scenario: &str, writers: usize) -> bool {
        self.wants(scenario) && (self.args.writers.is_empty() || self.args.writers.contains(&writers))
    }

    fn server_bin(&mut self) -> anyhow::Result<PathBuf> {
        if self.server_bin.is_none() {
            self.server_bin = Some(server::server_binary(self.args.server_bin.as_deref())?);
        }
        self.server_bin.clone().context("no server binary")
    }

    fn push(
        &mut self,
        scenario: &str,
        engine: &'static str,
        encrypted: &'static str,
        writers: usize,
        events_per_op: usize,
        rounds: Vec<Figures>,
    ) {
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            engine,
            encrypted,
            writers,
            events_per_op,
            median: median_figures(&rounds),
            rounds,
        });
    }

    async fn library_appends(&mut self, engine: Engine) -> anyhow::Result<()> {
        let encryption: &[bool] = match self.args.encryption {
            EncryptionChoice::Off => &[false],
            EncryptionChoice::On => &[true],
            EncryptionChoice::Both => &[false, true],
        };
        for &(name, writers, shape) in LIBRARY {
            if !self.wants_writers(name, writers) {
                continue;
            }
            // Rounds alternate encryption off/on (rather than all "off" rounds, then all "on"
            // rounds) so that a slow phase of the machine does not land on one side only.
            let mut rounds: Vec<Vec<Figures>> = vec![Vec::new(); encryption.len()];
            for round in 1..=self.args.rounds {
                for (&encrypted, rounds) in in_round_order(round, encryption.iter().zip(&mut rounds)) {
                    let figures = self
                        .library_round(engine, writers, shape, encrypted, Events::Orders)
                        .await?;
                    progress(
                        engine,
                        name,
                        on_off(encrypted),
                        writers,
                        round,
                        self.args.rounds,
                        &figures,
                    );
                    rounds.push(figures);
                }
            }
            for (&encrypted, rounds) in encryption.iter().zip(rounds) {
                self.push(
                    name,
                    engine.name(),
                    on_off(encrypted),
                    writers,
                    shape.events_per_append(),
                    rounds,
                );
            }
        }
        Ok(())
    }

    async fn library_round(
        &self,
        engine: Engine,
        writers: usize,
        shape: Shape,
        encrypted: bool,
        events: Events,
    ) -> anyhow::Result<Figures> {
        let db = FreshDatabases::create(engine, &self.args.postgres_url).await?;
        let result = async {
            let store = open_store(&db.url, &db.vault_url, encrypted, None).await?;
            let event = match events {
                Events::Orders => order_event,
                Events::Transfers { schema } => {
                    if schema {
                        register_transfer_schema(&store).await?;
                    }
                    warm_up_subjects(&store).await?;
                    transfer_event
                }
            };
            let before = store.writer_stats();
            let deadline = Instant::now() + self.duration;
            let streams = self.args.streams;
            let figures = timed(writers, shape.events_per_append(), |_, rng| {
                library_writer(store.clone(), shape, event, streams, deadline, rng)
            })
            .await;
            let after = store.writer_stats();
            store.close().await;
            let mut figures = figures?;
            let transactions = after.transactions - before.transactions;
            print_writer_busy((after.busy - before.busy).as_secs_f64(), self.duration);
            figures.appends_per_txn =
                (transactions > 0).then(|| (after.appends - before.appends) as f64 / transactions as f64);
            Ok(figures)
        }
        .await;
        finish(result, db.remove().await)
    }

    /// The same money transfers appended without a schema and with the one that makes two of
    /// their fields personal, rounds alternating (as encryption off/on does), encryption on.
    async fn field_appends(&mut self, engine: Engine) -> anyhow::Result<()> {
        for &(name, writers, shape) in FIELDS {
            if !self.wants_writers(name, writers) {
                continue;
            }
            let (mut plain, mut sealed) = (Vec::new(), Vec::new());
            for round in 1..=self.args.rounds {
                for (schema, rounds) in in_round_order(round, [(false, &mut plain), (true, &mut sealed)]) {
                    let figures = self
                        .library_round(engine, writers, shape, true, Events::Transfers { schema })
                        .await?;
                    progress(
                        engine,
                        name,
                        fields_label(schema),
                        writers,
                        round,
                        self.args.rounds,
                        &figures,
                    );
                    rounds.push(figures);
                }
            }
            let events = shape.events_per_append();
            self.push(name, engine.name(), PLAIN, writers, events, plain);
            self.push(name, engine.name(), SEALED_FIELDS, writers, events, sealed);
        }
        Ok(())
    }

    async fn http_appends(&mut self, engine: Engine) -> anyhow::Result<()> {
        for &(name, clients, shape) in HTTP {
            if !self.wants_writers(name, clients) {
                continue;
            }
            let binary = self.server_bin()?;
            let mut rounds = Vec::new();
            for round in 1..=self.args.rounds {
                let figures = self.http_round(&binary, engine, clients, shape).await?;
                progress(engine, name, "on", clients, round, self.args.rounds, &figures);
                rounds.push(figures);
            }
            self.push(name, engine.name(), "on", clients, shape.events_per_append(), rounds);
        }
        Ok(())
    }

    async fn http_round(&self, binary: &Path, engine: Engine, clients: usize, shape: Shape) -> anyhow::Result<Figures> {
        let db = FreshDatabases::create(engine, &self.args.postgres_url).await?;
        let kek_dir = TempDir::new("kek")?;
        let result = async {
            let kek_file = kek_dir.0.join("kek.key");
            reads::kek(&kek_file)?;
            let server = ServerProcess::start(binary, &db.url, &db.vault_url, &kek_file).await?;
            let client = http_client(clients)?;
            let deadline = Instant::now() + self.duration;
            let streams = self.args.streams;
            let addr = server.addr;
            let busy_before = server.writer_busy_seconds().await;
            let figures = timed(clients, shape.events_per_append(), |_, rng| {
                http_writer(client.clone(), addr, shape, streams, deadline, rng)
            })
            .await;
            let busy_after = server.writer_busy_seconds().await;
            let rss = server.peak_rss_bytes();
            let stopped = server.stop().await;
            let mut figures = figures?;
            stopped?;
            print_writer_busy(busy_after? - busy_before?, self.duration);
            figures.peak_rss_mb = Some(rss? as f64 / (1024.0 * 1024.0));
            let transactions = event_transactions(engine, &db.url).await?;
            figures.appends_per_txn = (transactions > 0).then(|| figures.ops as f64 / transactions as f64);
            Ok(figures)
        }
        .await;
        drop(kek_dir);
        finish(result, db.remove().await)
    }

    async fn catch_up(&mut self, engine: Engine) -> anyhow::Result<()> {
        let events = self.args.catch_up_events;
        let (library, http) = (self.wants("catch-up"), self.wants("http-catch-up"));
        if events == 0 || !(library || http) {
            return Ok(());
        }
        let binary = if http { Some(self.server_bin()?) } else { None };
        let (mut library_rounds, mut http_rounds) = (Vec::new(), Vec::new());
        for round in 1..=self.args.rounds {
            let db = FreshDatabases::create(engine, &self.args.postgres_url).await?;
            let kek_dir = TempDir::new("kek")?;
            let result = async {
                let kek_file = kek_dir.0.join("kek.key");
                let filling = Instant::now();
                let store = open_store(&db.url, &db.vault_url, true, Some(&kek_file)).await?;
                reads::fill_log(&store, events, order_event).await?;
                store.close().await;
                drop(store);
                eprintln!(
                    "{:<8} catch-up: {events} events appended in {:.1} s",
                    engine.name(),
                    filling.elapsed().as_secs_f64()
                );
                if library {
                    // A fresh store: a new reader, its key cache cold.
                    let store = open_store(&db.url, &db.vault_url, true, Some(&kek_file)).await?;
                    let figures = reads::catch_up_library(&store, "catch-up", events).await;
                    store.close().await;
                    let figures = figures?;
                    progress(engine, "catch-up", "on", 1, round, self.args.rounds, &figures);
                    library_rounds.push(figures);
                }
                if let Some(binary) = &binary {
                    let server = ServerProcess::start(binary, &db.url, &db.vault_url, &kek_file).await?;
                    let figures = reads::catch_up_http(&http_client(1)?, server.addr, events).await;
                    let rss = server.peak_rss_bytes();
                    let stopped = server.stop().await;
                    let mut figures = figures?;
                    stopped?;
                    figures.peak_rss_mb = Some(rss? as f64 / (1024.0 * 1024.0));
                    progress(engine, "http-catch-up", "on", 1, round, self.args.rounds, &figures);
                    http_rounds.push(figures);
                }
                anyhow::Ok(())
            }
            .await;
            drop(kek_dir);
            finish(result, db.remove().await)?;
        }
        if library {
            self.push("catch-up", engine.name(), "on", 1, 1, library_rounds);
        }
        if http {
            self.push("http-catch-up", engine.name(), "on", 1, 1, http_rounds);
        }
        Ok(())
    }

    /// A catch-up (as `catch-up`) over `--catch-up-events` money transfers written without a
    /// schema, and over as many written with it, whose reader opens two personal fields per
    /// event besides the payload; rounds alternate.
    async fn fields_catch_up(&mut self, engine: Engine) -> anyhow::Result<()> {
        let events = self.args.catch_up_events;
        if events == 0 || !self.wants(FIELDS_CATCH_UP) {
            return Ok(());
        }
        let (mut plain, mut sealed) = (Vec::new(), Vec::new());
        for round in 1..=self.args.rounds {
            for (schema, rounds) in in_round_order(round, [(false, &mut plain), (true, &mut sealed)]) {
                let db = FreshDatabases::create(engine, &self.args.postgres_url).await?;
                let kek_dir = TempDir::new("kek")?;
                let result = async {
                    let kek_file = kek_dir.0.join("kek.key");
                    let filling = Instant::now();
                    let store = open_store(&db.url, &db.vault_url, true, Some(&kek_file)).await?;
                    if schema {
                        register_transfer_schema(&store).await?;
                    }
                    reads::fill_log(&store, events, transfer_event).await?;
                    store.close().await;
                    drop(store);
                    eprintln!(
                        "{:<8} {FIELDS_CATCH_UP} enc={}: {events} events appended in {:.1} s",
                        engine.name(),
                        fields_label(schema),
                        filling.elapsed().as_secs_f64()
                    );
                    // A fresh store: a new reader, its key cache (stream and field keys) cold.
                    let store = open_store(&db.url, &db.vault_url, true, Some(&kek_file)).await?;
                    let figures = reads::catch_up_library(&store, FIELDS_CATCH_UP, events).await;
                    store.close().await;
                    figures
                }
                .await;
                drop(kek_dir);
                let figures = finish(result, db.remove().await)?;
                progress(
                    engine,
                    FIELDS_CATCH_UP,
                    fields_label(schema),
                    1,
                    round,
                    self.args.rounds,
                    &figures,
                );
                rounds.push(figures);
            }
        }
        self.push(FIELDS_CATCH_UP, engine.name(), PLAIN, 1, 1, plain);
        self.push(FIELDS_CATCH_UP, engine.name(), SEALED_FIELDS, 1, 1, sealed);
        Ok(())
    }

    async fn forgets(&mut self, engine: Engine) -> anyhow::Result<()> {
        let streams = self.args.forget_streams;
        let (one, many) = (self.wants("forget-1-stream"), self.wants(&forget_many(streams)));
        if streams == 0 || !(one || many) {
            return Ok(());
        }
        let (mut one_rounds, mut many_rounds) = (Vec::new(), Vec::new());
        for round in 1..=self.args.rounds {
            let db = FreshDatabases::create(engine, &self.args.postgres_url).await?;
            let result = async {
                let store = open_store(&db.url, &db.vault_url, true, None).await?;
                let result = async {
                    reads::fill_subjects(&store, streams).await?;
                    let one = reads::forget(&store, "one", 1).await?;
                    let many = reads::forget(&store, "many", streams).await?;
                    anyhow::Ok((one, many))
                }
                .await;
                store.close().await;
                result
            }
            .await;
            let (one, many) = finish(result, db.remove().await)?;
            progress(engine, "forget-1-stream", "on", 1, round, self.args.rounds, &one);
            progress(engine, &forget_many(streams), "on", 1, round, self.args.rounds, &many);
            one_rounds.push(one);
            many_rounds.push(many);
        }
        if one {
            self.push("forget-1-stream", engine.name(), "on", 1, 10, one_rounds);
        }
        if many {
            self.push(
                &forget_many(streams),
                engine.name(),
                "on",
                1,
                10 * streams as usize,
                many_rounds,
            );
        }
        Ok(())
    }

    /// `retention-sweep`: one `sweep_retention()` over `--retention-subjects` subjects due,
    /// timed, on a store opened for it; `retention-sweep-appends`: the single-event appends a
    /// concurrent writer completed while it ran.
    async fn retention_sweep(&mut self, engine: Engine) -> anyhow::Result<()> {
        let subjects = self.args.retention_subjects;
        if subjects == 0 || !(self.wants(RETENTION_SWEEP) || self.wants(RETENTION_SWEEP_APPENDS)) {
            return Ok(());
        }
        let (mut sweeps, mut appends) = (Vec::new(), Vec::new());
        for round in 1..=self.args.rounds {
            let db = FreshDatabases::create(engine, &self.args.postgres_url).await?;
            let kek_dir = TempDir::new("kek")?;
            let result = async {
                let kek_file = kek_dir.0.join("kek.key");
                let clock = Arc::new(lethe_keyvault::ManualClock::new(retention::now_micros()?));
                let filling = Instant::now();
                let store = open_store_at(&db.url, &db.vault_url, true, Some(&kek_file), clock.clone()).await?;
                let filled = retention::fill_customers(&store, subjects).await;
                store.close().await;
                drop(store);
                filled?;
                eprintln!(
                    "{:<8} {RETENTION_SWEEP}: {subjects} subjects appended in {:.1} s",
                    engine.name(),
                    filling.elapsed().as_secs_f64()
                );
                clock.advance(CLOCK_ADVANCE);
                // A store opened for the sweep: its erasure resume loop runs at once (nothing
                // to do yet) and next after ERASURE_RESUME_INTERVAL, so it does not start
                // carrying out the requests the sweep files while a shorter sweep runs.
                let opened = Instant::now();
                let store = open_store_at(&db.url, &db.vault_url, true, Some(&kek_file), clock).await?;
                let swept = retention::sweep_with_writer(&store, subjects, self.args.streams).await;
                store.close().await;
                anyhow::Ok((opened, swept?))
            }
            .await;
            drop(kek_dir);
            let (opened, swept) = finish(result, db.remove().await)?;
            progress(engine, RETENTION_SWEEP, "on", 1, round, self.args.rounds, &swept.sweep);
            progress(
                engine,
                RETENTION_SWEEP_APPENDS,
                "on",
                1,
                round,
                self.args.rounds,
                &swept.appends,
            );
            let c = &swept.counts;
            eprintln!(
                "    sweep: policies {}, due {}, filed {}, refused {}, batches {}, {:.2} s; {} appends completed meanwhile, the longest {:.1} ms",
                c.policies,
                c.due,
                c.filed,
                c.refused,
                c.batches,
                swept.sweep.seconds,
                swept.appends.ops,
                swept.appends_max_ms
            );
            if swept.ended.duration_since(opened) >= ERASURE_RESUME_INTERVAL {
                eprintln!(
                    "    note: the sweep ended {:.1} s after its store opened, so the erasure resume loop's second pass \
                     ({} s after opening) may have carried out requests during it",
                    swept.ended.duration_since(opened).as_secs_f64(),
                    ERASURE_RESUME_INTERVAL.as_secs()
                );
            }
            sweeps.push(swept.sweep);
            appends.push(swept.appends);
        }
        self.push(RETENTION_SWEEP, engine.name(), "on", 1, 1, sweeps);
        self.push(RETENTION_SWEEP_APPENDS, engine.name(), "on", 1, 1, appends);
        Ok(())
    }

    async fn baselines(&mut self) -> anyhow::Result<()> {
        let url = self.args.postgres_url.clone();
        for &(name, writers, rows) in RAW_INSERTS {
            if !self.wants_writers(name, writers) {
                continue;
            }
            let (streams, duration) = (self.args.streams, self.duration);
            self.baseline_rounds(name, "-", writers, rows, || {
                baselines::raw_inserts(&url, writers, rows, streams, duration)
            })
            .await?;
        }
        self.message_db().await?;
        self.eventsourcing().await
    }

    async fn message_db(&mut self) -> anyhow::Result<()> {
        if !self.wants("message-db") {
            return Ok(());
        }
        if self.args.no_message_db {
            eprintln!("Message DB baseline SKIPPED (--no-message-db)");
            return Ok(());
        }
        let script = self
            .args
            .message_db_installer
            .clone()
            .unwrap_or_else(baselines::default_script);
        let Some(mdb) = MessageDb::install(&self.args.postgres_url, &script).await? else {
            return Ok(());
        };
        let result = async {
            for &writers in MESSAGE_DB_WRITERS {
                if !self.wants_writers("message-db", writers) {
                    continue;
                }
                let (streams, duration) = (self.args.streams, self.duration);
                self.baseline_rounds("message-db", "-", writers, 1, || {
                    mdb.write_messages(writers, streams, duration)
                })
                .await?;
            }
            anyhow::Ok(())
        }
        .await;
        finish(result, mdb.remove().await)
    }

    async fn eventsourcing(&mut self) -> anyhow::Result<()> {
        let wanted: Vec<_> = EVENTSOURCING
            .iter()
            .filter(|&&(name, writers, _)| self.wants_writers(name, writers))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        if self.args.no_eventsourcing {
            eprintln!("eventsourcing baseline SKIPPED (--no-eventsourcing)");
            return Ok(());
        }
        let installer = self
            .args
            .eventsourcing_installer
            .clone()
            .unwrap_or_else(eventsourcing::default_installer);
        let Some(es) = Eventsourcing::install(&self.args.postgres_url, &installer).await? else {
            return Ok(());
        };
        for &(name, writers, events) in wanted {
            let (streams, duration) = (self.args.streams, self.duration);
            // AES-GCM on every event, as Lethe's "on" rows.
            self.baseline_rounds(name, "on", writers, events, || {
                es.append(writers, events, streams, duration)
            })
            .await?;
        }
        Ok(())
    }

    /// Runs the rounds of one PostgreSQL baseline row, printing each, and records the row.
    async fn baseline_rounds<Round>(
        &mut self,
        name: &str,
        encrypted: &'static str,
        writers: usize,
        events_per_op: usize,
        mut round: impl FnMut() -> Round,
    ) -> anyhow::Result<()>
    where
        Round: std::future::Future<Output = anyhow::Result<Figures>>,
    {
        let mut rounds = Vec::new();
        for n in 1..=self.args.rounds {
            let figures = round().await?;
            progress(
                Engine::Postgres,
                name,
                encrypted,
                writers,
                n,
                self.args.rounds,
                &figures,
            );
            rounds.push(figures);
        }
        self.push(name, "postgres", encrypted, writers, events_per_op, rounds);
        Ok(())
    }
}

fn forget_many(streams: u64) -> String {
    format!("forget-{streams}-streams")
}

/// The round's result, unless cleaning up failed (a result error wins: it is the cause).
fn finish<T>(result: anyhow::Result<T>, cleanup: anyhow::Result<()>) -> anyhow::Result<T> {
    let value = result?;
    cleanup?;
    Ok(value)
}

fn progress(engine: Engine, scenario: &str, encrypted: &str, writers: usize, round: usize, rounds: usize, f: &Figures) {
    eprintln!(
        "{:<8} {:<23} enc={:<3} writers={:<3} round {round}/{rounds}: {:>9.0} ops/s {:>9.0} events/s, p50 {:.2} ms, p99 {:.2} ms{}{}",
        engine.name(),
        scenario,
        encrypted,
        writers,
        f.ops_per_sec,
        f.events_per_sec,
        f.p50_ms,
        f.p99_ms,
        f.peak_rss_mb
            .map_or(String::new(), |mb| format!(", peak RSS {mb:.0} MiB")),
        if f.failures > 0 {
            format!(", FAILED: {}", f.failures)
        } else {
            String::new()
        },
    );
}

/// The group writer's time in transactions over a round's length: near 100%, the serial group
/// write set the pace.
fn print_writer_busy(busy_seconds: f64, round: Duration) {
    eprintln!(
        "    writer busy {:.0}% of the round",
        100.0 * busy_seconds / round.as_secs_f64()
    );
}

fn on_off(flag: bool) -> &'static str {
    if flag { "on" } else { "off" }
}

/// The sides of a comparison in the order round `round` (from 1) runs them: as given in odd
/// rounds, reversed in even ones. A round leaves the machine busier for the round after it
/// (its databases dropped, its WAL recycled): with the same work on both sides, the second
/// side of a pair measured 4–7% slower than the first. Swapping the order every round puts
/// that on both sides alike.
fn in_round_order<T>(round: usize, sides: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut sides: Vec<T> = sides.into_iter().collect();
    if round.is_multiple_of(2) {
        sides.reverse();
    }
    sides
}

fn fields_label(schema: bool) -> &'static str {
    if schema { SEALED_FIELDS } else { PLAIN }
}

/// Registers [`transfer_schema`] for [`TRANSFER_TYPE`] (enforced), before a round's appends.
async fn register_transfer_schema(store: &EventStore) -> anyhow::Result<()> {
    store
        .register_schema(TRANSFER_TYPE, &transfer_schema(), SchemaMode::Enforce, "lethe-bench")
        .await
        .context("registering the transfer schema")?;
    Ok(())
}

/// Opens the event store the bench measures, on the system clock (see [`open_store_at`]).
async fn open_store(
    db_url: &str,
    vault_url: &str,
    encrypted: bool,
    kek_file: Option<&Path>,
) -> anyhow::Result<EventStore> {
    open_store_at(
        db_url,
        vault_url,
        encrypted,
        kek_file,
        Arc::new(lethe_keyvault::SystemClock),
    )
    .await
}

/// Opens the event store the bench measures: the one place that builds a [`StoreConfig`].
///
/// The key vault is in-process on its own database (`vault_url`), as in the embedded default
/// and the production layout. Its KEK is random, or the one in `kek_file` (created if missing)
/// when a server will open the same databases. `encrypted == false` switches only the cipher
/// off (`insecure_noop_cipher`): every stream still gets its DEK created in the vault on its
/// first append, so the on/off difference is the cost of AES-256-GCM itself. `clock` is what
/// retention reads the time from (`retention-sweep` moves a `ManualClock` forward); no store of
/// the bench sweeps retention in the background.
async fn open_store_at(
    db_url: &str,
    vault_url: &str,
    encrypted: bool,
    kek_file: Option<&Path>,
    clock: Arc<dyn lethe_keyvault::VaultClock>,
) -> anyhow::Result<EventStore> {
    let kek = match kek_file {
        Some(path) => reads::kek(path)?,
        None => lethe_keyvault::Kek::generate()?,
    };
    let vault = lethe_keyvault::open(
        vault_url,
        lethe_keyvault::OpenOptions {
            kek: Some(kek),
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("opening the key vault at {}", redact(vault_url)))?;
    let mut config = StoreConfig::new(db_url, vault);
    config.insecure_noop_cipher = !encrypted;
    config.clock = clock;
    config.retention_sweep_every = None;
    config.postgres_group_writers = pg_group_writers();
    EventStore::open(config)
        .await
        .with_context(|| format!("opening the event store at {}", redact(db_url)))
}

/// How many database transactions wrote the events of a round (after its server stopped):
/// PostgreSQL rows carry their transaction id (`xmin`); on SQLite every row of one group gets
/// the same `recorded_at`.
async fn event_transactions(engine: Engine, url: &str) -> anyhow::Result<u64> {
    let count: i64 = match engine {
        Engine::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let count = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM events")
                .fetch_one(&mut conn)
                .await?;
            conn.close().await?;
            count
        }
        Engine::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=ro")).await?;
            let count = sqlx::query_scalar("SELECT count(DISTINCT recorded_at) FROM events")
                .fetch_one(&mut conn)
                .await?;
            conn.close().await?;
            count
        }
    };
    Ok(u64::try_from(count).unwrap_or(0))
}

/// The targets of issue 8, and the comparisons with its optional baselines that have no goal,
/// from the PostgreSQL rows of this run; then those of issue 18 (personal fields) for each
/// engine measured.
fn targets(rows: &[Row], forget_streams: u64, engines: &[Engine]) -> Vec<Target> {
    let find_in = |engine: &str, scenario: &str, encrypted: &str, writers: usize| {
        rows.iter()
            .find(|r| r.engine == engine && r.scenario == scenario && r.encrypted == encrypted && r.writers == writers)
            .map(|r| r.median)
    };
    let find = |scenario: &str, encrypted: &str, writers: usize| find_in("postgres", scenario, encrypted, writers);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let apart = |a: Option<f64>, b: Option<f64>| ratio(a, b).map(|r| (r - 1.0).abs() * 100.0);
    let ops = |f: Option<Figures>| f.map(|f| f.ops_per_sec);
    let events = |f: Option<Figures>| f.map(|f| f.events_per_sec);
    let peak_rss = rows
        .iter()
        .filter(|r| r.engine == "postgres" && (r.scenario == "http-single" || r.scenario == "http-batch-100"))
        .filter_map(|r| r.median.peak_rss_mb)
        .reduce(f64::max);
    let mut targets = vec![
        Target::new(
            "single-event HTTP appends vs Message DB",
            "http-single@64 / message-db@64 (ops/s)".into(),
            ratio(ops(find("http-single", "on", 64)), ops(find("message-db", "-", 64))),
            Goal::AtLeast(3.0),
            "x",
        ),
        Target::informational(
            "single-event HTTP appends vs Python eventsourcing",
            "http-single@64 / eventsourcing@64 (ops/s)".into(),
            ratio(ops(find("http-single", "on", 64)), ops(find("eventsourcing", "on", 64))),
            "x",
        ),
        Target::new(
            "100-event batches vs raw INSERT (HTTP)",
            "http-batch-100@8 / raw-insert-100@8 (events/s)".into(),
            ratio(
                events(find("http-batch-100", "on", 8)),
                events(find("raw-insert-100", "-", 8)),
            ),
            Goal::AtLeast(0.5),
            "x",
        ),
        Target::new(
            "100-event batches vs raw INSERT (library)",
            "batch-100@8 on / raw-insert-100@8 (events/s)".into(),
            ratio(
                events(find("batch-100", "on", 8)),
                events(find("raw-insert-100", "-", 8)),
            ),
            Goal::AtLeast(0.5),
            "x",
        ),
        Target::informational(
            "100-event batches over HTTP vs Python eventsourcing",
            "http-batch-100@8 / eventsourcing-batch-100@8 (events/s)".into(),
            ratio(
                events(find("http-batch-100", "on", 8)),
                events(find("eventsourcing-batch-100", "on", 8)),
            ),
            "x",
        ),
        Target::new(
            "encryption on vs off, single events",
            "abs(single-event@64 on / off - 1)".into(),
            apart(
                ops(find("single-event", "on", 64)),
                ops(find("single-event", "off", 64)),
            ),
            Goal::AtMost(10.0),
            "%",
        ),
        Target::new(
            "encryption on vs off, batches",
            "abs(batch-100@8 on / off - 1)".into(),
            apart(events(find("batch-100", "on", 8)), events(find("batch-100", "off", 8))),
            Goal::AtMost(10.0),
            "%",
        ),
        Target::new(
            "catch-up, decrypted, library",
            "catch-up events/s".into(),
            events(find("catch-up", "on", 1)),
            Goal::AtLeast(200_000.0),
            "events/s",
        ),
        Target::new(
            "forget of 1,000 streams",
            format!("{} (ms)", forget_many(forget_streams)),
            find(&forget_many(forget_streams), "on", 1).map(|f| f.p50_ms),
            Goal::AtMost(1000.0),
            "ms",
        ),
        Target::new(
            "server peak RSS during appends",
            "max VmHWM of http-single/http-batch-100 (MiB)".into(),
            peak_rss,
            Goal::AtMost(150.0),
            "MiB",
        ),
    ];
    // Issue 18: appends with personal fields within 15% of the same appends without a schema,
    // their catch-up within 20%.
    for engine in engines.iter().map(|e| e.name()) {
        let fields = |scenario: &str, writers: usize, figure: fn(Option<Figures>) -> Option<f64>| {
            ratio(
                figure(find_in(engine, scenario, SEALED_FIELDS, writers)),
                figure(find_in(engine, scenario, PLAIN, writers)),
            )
        };
        targets.extend([
            Target::new(
                &format!("personal fields vs none, single events ({engine})"),
                format!("fields-single-event@64 {SEALED_FIELDS} / {PLAIN} (ops/s)"),
                fields("fields-single-event", 64, ops),
                Goal::AtLeast(0.85),
                "x",
            ),
            Target::new(
                &format!("personal fields vs none, batches ({engine})"),
                format!("fields-batch-100@8 {SEALED_FIELDS} / {PLAIN} (events/s)"),
                fields("fields-batch-100", 8, events),
                Goal::AtLeast(0.85),
                "x",
            ),
            Target::new(
                &format!("personal fields vs none, catch-up ({engine})"),
                format!("{FIELDS_CATCH_UP} {SEALED_FIELDS} / {PLAIN} (events/s)"),
                fields(FIELDS_CATCH_UP, 1, events),
                Goal::AtLeast(0.80),
                "x",
            ),
        ]);
    }
    targets
}

/// `/proc/loadavg`'s first three figures (Linux), for the record of how busy the machine was.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("lethe-bench-{what}-{}", db::suffix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_of_a_comparison_runs_first_in_every_other_round() {
        assert_eq!(in_round_order(1, ["off", "on"]), ["off", "on"]);
        assert_eq!(in_round_order(2, ["off", "on"]), ["on", "off"]);
        let firsts: Vec<&str> = (1..=4).map(|round| in_round_order(round, ["off", "on"])[0]).collect();
        assert_eq!(firsts, ["off", "on", "off", "on"]);
        assert_eq!(in_round_order(2, ["on"]), ["on"]);
    }
}
