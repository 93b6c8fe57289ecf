//! `lethe-bench`: append throughput and latency of the Lethe event store.
//!
//! Runs a fixed set of append scenarios against SQLite and/or PostgreSQL, each on a fresh
//! database, and prints one table row per (scenario, engine): appends/s, events/s, p50/p99
//! latency of one append, and how many appends the group-commit writer put into one database
//! transaction (from [`EventStore::writer_stats`]). Each scenario runs with encryption on
//! (AES-256-GCM, the real thing) and off (the `insecure-noop-cipher` feature, which only this
//! binary enables) so the cost of encryption shows side by side. See BENCHMARKS.md for figures.
//!
//! The `http-*` scenarios make the same appends over real HTTP: an in-process server
//! ([`lethe::server::start`], on `127.0.0.1:<free port>`) on the round's fresh databases, and
//! `reqwest` clients sharing one connection-pooling HTTP/1.1 `Client`. They run with encryption
//! on only (the server always encrypts); their latency is the whole request as the client sees
//! it, and answers other than 2xx are counted and reported (there should be none).
//!
//! This is a measuring tool, not a test: nothing here asserts on timings.
//!
//! ```text
//! cargo run --release --features insecure-noop-cipher --bin lethe-bench -- --seconds 5 --rounds 3
//! cargo run --release --features insecure-noop-cipher --bin lethe-bench -- --quick   # CI: 1 s, 1 round
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use lethe::server::{RunningServer, ServeConfig};
use lethe::{EventStore, ExpectedVersion, NewEvent, StoreConfig, StreamAppend, StreamName};
use lethe::{SubjectId, WriterStats};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Serialize;
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, PgConnection, raw_sql};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "Append throughput and latency of the Lethe event store")]
struct Args {
    /// Which event database engine(s) to measure.
    #[arg(long, value_enum, default_value_t = EngineChoice::Both)]
    engine: EngineChoice,

    /// A PostgreSQL server to run on. The bench connects to it to create a fresh
    /// `lethe_bench_<random>` database per scenario round, and drops it afterwards.
    #[arg(
        long,
        env = "LETHE_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,

    /// Each append picks its stream(s) at random among this many (`bench-<n>`, or
    /// `user-public-<n>` + `user-private-<n>`). With many streams and short rounds most appends
    /// create a new stream (and its key in the vault); a small number measures appends to
    /// existing streams.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    streams: u64,

    /// Seconds each scenario round runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,

    /// Rounds per scenario; the table reports the median of each figure over the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Smoke run for CI: 1 second, 1 round (overrides --seconds and --rounds).
    #[arg(long)]
    quick: bool,

    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Run with per-stream encryption off, on, or both (side by side rows). The `http-*`
    /// scenarios always run with encryption on (and not at all with `--encryption off`).
    #[arg(long, value_enum, default_value_t = EncryptionChoice::Both)]
    encryption: EncryptionChoice,

    /// Which scenarios to run: library calls (`EventStore::append`), HTTP requests to an
    /// in-process server (`http-*`), or both.
    #[arg(long, value_enum, default_value_t = TransportChoice::Both)]
    transport: TransportChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportChoice {
    Library,
    Http,
    Both,
}

/// How a scenario's appends reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Calls to [`EventStore::append`] / [`EventStore::append_multi`] in this process.
    Library,
    /// `POST /streams/{stream}` requests to an in-process server over loopback TCP.
    Http,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Engine {
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

/// What one append of a scenario looks like.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// One event to a random `bench-<n>` stream.
    Single,
    /// This many events in one append to a random `bench-<n>` stream.
    Batch(usize),
    /// One event each to `user-public-<n>` and `user-private-<n>` (bound to subject `<n>`),
    /// in one atomic multi-stream append: the contract's seed pattern.
    MultiStream,
}

impl Shape {
    fn events_per_append(self) -> usize {
        match self {
            Shape::Single => 1,
            Shape::Batch(n) => n,
            Shape::MultiStream => 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    /// Concurrent writers: tasks calling the store, or HTTP clients (one request at a time each).
    writers: usize,
    shape: Shape,
    transport: Transport,
}

/// The scenarios, in the order they run and are printed.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "single-event",
        writers: 1,
        shape: Shape::Single,
        transport: Transport::Library,
    },
    Scenario {
        name: "single-event",
        writers: 64,
        shape: Shape::Single,
        transport: Transport::Library,
    },
    Scenario {
        name: "batch-100",
        writers: 1,
        shape: Shape::Batch(100),
        transport: Transport::Library,
    },
    Scenario {
        name: "batch-100",
        writers: 8,
        shape: Shape::Batch(100),
        transport: Transport::Library,
    },
    Scenario {
        name: "multi-stream-2x1",
        writers: 64,
        shape: Shape::MultiStream,
        transport: Transport::Library,
    },
    Scenario {
        name: "http-single",
        writers: 1,
        shape: Shape::Single,
        transport: Transport::Http,
    },
    Scenario {
        name: "http-single",
        writers: 64,
        shape: Shape::Single,
        transport: Transport::Http,
    },
    Scenario {
        name: "http-batch-100",
        writers: 1,
        shape: Shape::Batch(100),
        transport: Transport::Http,
    },
    Scenario {
        name: "http-batch-100",
        writers: 8,
        shape: Shape::Batch(100),
        transport: Transport::Http,
    },
];

/// Figures of one round (or, in [`Row`], the medians over rounds).
#[derive(Debug, Clone, Copy, Serialize)]
struct Figures {
    /// Successful appends (for HTTP: requests answered 2xx).
    appends: u64,
    /// HTTP answers other than 2xx (not counted in `appends`; always 0 for library calls).
    non_2xx: u64,
    seconds: f64,
    appends_per_sec: f64,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Database transactions the group-commit writer ran, per append (< 1 means grouping).
    transactions_per_append: f64,
    /// Its inverse: appends sharing one transaction on average.
    appends_per_transaction: f64,
}

/// One line of the result table.
#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    engine: Engine,
    encrypted: bool,
    writers: usize,
    events_per_append: usize,
    /// Median of each figure over the rounds (figure by figure).
    median: Figures,
    rounds: Vec<Figures>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.seconds = 1;
        args.rounds = 1;
    }
    if args.seconds == 0 || args.rounds == 0 {
        bail!("--seconds and --rounds must be at least 1");
    }

    let engines: &[Engine] = match args.engine {
        EngineChoice::Sqlite => &[Engine::Sqlite],
        EngineChoice::Postgres => &[Engine::Postgres],
        EngineChoice::Both => &[Engine::Sqlite, Engine::Postgres],
    };
    let encryption: &[bool] = match args.encryption {
        EncryptionChoice::Off => &[false],
        EncryptionChoice::On => &[true],
        EncryptionChoice::Both => &[false, true],
    };

    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| match args.transport {
            TransportChoice::Library => s.transport == Transport::Library,
            TransportChoice::Http => s.transport == Transport::Http,
            TransportChoice::Both => true,
        })
        .collect();

    let mut rows = Vec::new();
    let mut total_non_2xx = 0u64;
    for &engine in engines {
        for &scenario in &scenarios {
            // The server always encrypts: HTTP scenarios run with encryption on only.
            let encryption: Vec<bool> = match scenario.transport {
                Transport::Library => encryption.to_vec(),
                Transport::Http => encryption.iter().copied().filter(|&on| on).collect(),
            };
            if encryption.is_empty() {
                continue;
            }
            // Rounds alternate encryption off/on (rather than all "off" rounds, then all "on"
            // rounds) so that a slow phase of the machine does not land on one side only.
            let mut rounds: Vec<Vec<Figures>> = vec![Vec::with_capacity(args.rounds); encryption.len()];
            for round in 1..=args.rounds {
                for (&encrypted, rounds) in encryption.iter().zip(&mut rounds) {
                    let figures = run_round(&args, engine, scenario, encrypted).await?;
                    let non_2xx = match scenario.transport {
                        Transport::Library => String::new(),
                        Transport::Http => format!(", non-2xx answers: {}", figures.non_2xx),
                    };
                    eprintln!(
                        "{:<8} {:<17} enc={:<3} writers={:<3} round {round}/{}: \
                         {:>9.0} appends/s, p99 {:.2} ms{non_2xx}",
                        engine.name(),
                        scenario.name,
                        on_off(encrypted),
                        scenario.writers,
                        args.rounds,
                        figures.appends_per_sec,
                        figures.p99_ms,
                    );
                    rounds.push(figures);
                }
            }
            for (&encrypted, rounds) in encryption.iter().zip(rounds) {
                if scenario.transport == Transport::Http {
                    total_non_2xx += rounds.iter().map(|f| f.non_2xx).sum::<u64>();
                }
                rows.push(Row {
                    scenario: scenario.name,
                    engine,
                    encrypted,
                    writers: scenario.writers,
                    events_per_append: scenario.shape.events_per_append(),
                    median: median_figures(&rounds),
                    rounds,
                });
            }
        }
    }

    println!("{}", table(&rows));
    if rows.iter().any(|row| row.scenario.starts_with("http-")) {
        // On stderr, so the table on stdout stays pasteable.
        eprintln!("HTTP answers other than 2xx, all rounds: {total_non_2xx}");
    }

    if let Some(path) = &args.json {
        let report = json!({
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "streams": args.streams,
            "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "results": rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// Opens the event store the bench measures: the one place that builds a [`StoreConfig`].
///
/// The key vault is in-process on its own database (`vault_url`), as in the embedded default
/// and the production layout, with a fresh random KEK. `encrypted == false` switches only the
/// cipher off (`insecure_noop_cipher`): every stream still gets its DEK created in the vault on
/// its first append, so the on/off difference is the cost of AES-256-GCM itself.
async fn open_store(db_url: &str, vault_url: &str, encrypted: bool) -> anyhow::Result<EventStore> {
    let vault = lethe_keyvault::open(
        vault_url,
        lethe_keyvault::OpenOptions {
            kek: Some(lethe_keyvault::Kek::generate()?),
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("opening the key vault at {}", redact(vault_url)))?;
    let mut config = StoreConfig::new(db_url, vault);
    config.insecure_noop_cipher = !encrypted;
    let store = EventStore::open(config)
        .await
        .with_context(|| format!("opening the event store at {}", redact(db_url)))?;
    Ok(store)
}

/// One round of one scenario: fresh databases, `writers` tasks appending for `--seconds`,
/// then the databases are removed again (also when the round failed).
async fn run_round(args: &Args, engine: Engine, scenario: &Scenario, encrypted: bool) -> anyhow::Result<Figures> {
    let db = FreshDatabases::create(engine, &args.postgres_url).await?;
    if scenario.transport == Transport::Http {
        let result = run_http_round(args, &db, scenario).await;
        let removed = db.remove().await;
        let figures = result?;
        removed?;
        return Ok(figures);
    }
    let result = async {
        let store = open_store(&db.url, &db.vault_url, encrypted).await?;
        let figures = drive(&store, scenario, Duration::from_secs(args.seconds), args.streams).await;
        store.close().await;
        // Dropping the store also drops its vault and their connection pools.
        drop(store);
        figures
    }
    .await;
    let removed = db.remove().await;
    let figures = result?;
    removed?;
    Ok(figures)
}

/// Runs the scenario's writers against `store` until `duration` is up and measures them.
async fn drive(store: &EventStore, scenario: &Scenario, duration: Duration, streams: u64) -> anyhow::Result<Figures> {
    let before = store.writer_stats();
    let start = Instant::now();
    let deadline = start + duration;

    let mut writers = JoinSet::new();
    for _ in 0..scenario.writers {
        // Each writer has its own random generator, seeded from the OS (via a v4 uuid).
        let rng = Rng::new(Uuid::new_v4().as_u64_pair().0);
        writers.spawn(writer(store.clone(), scenario.shape, streams, deadline, rng));
    }
    let mut latencies = Vec::new();
    while let Some(joined) = writers.join_next().await {
        latencies.extend(joined.context("writer task panicked")??);
    }
    // Appends still in flight at the deadline are counted, so the elapsed time includes them.
    let elapsed = start.elapsed().as_secs_f64();
    let after = store.writer_stats();

    latencies.sort_unstable();
    let appends = latencies.len() as u64;
    let WriterStats {
        transactions,
        appends: writer_appends,
    } = after;
    let transactions = transactions - before.transactions;
    let writer_appends = writer_appends - before.appends;
    Ok(Figures {
        appends,
        seconds: elapsed,
        appends_per_sec: appends as f64 / elapsed,
        events_per_sec: (appends * scenario.shape.events_per_append() as u64) as f64 / elapsed,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        non_2xx: 0,
        transactions_per_append: ratio(transactions, writer_appends),
        appends_per_transaction: ratio(writer_appends, transactions),
    })
}

/// One writer: appends back to back until the deadline, one at a time, and returns the
/// latency of each append (the store call only; building the events is not timed).
async fn writer(
    store: EventStore,
    shape: Shape,
    streams: u64,
    deadline: Instant,
    mut rng: Rng,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let n = rng.below(streams);
        match shape {
            Shape::Single | Shape::Batch(_) => {
                let events = (0..shape.events_per_append()).map(|_| order_event(&mut rng)).collect();
                let append = StreamAppend::new(StreamName::new(format!("bench-{n}"))?, ExpectedVersion::Any, events);
                let started = Instant::now();
                store.append(append).await?;
                latencies.push(started.elapsed());
            }
            Shape::MultiStream => {
                let public = StreamAppend::new(
                    StreamName::new(format!("user-public-{n}"))?,
                    ExpectedVersion::Any,
                    vec![public_user_event(n, &mut rng)],
                );
                let private = StreamAppend::new(
                    StreamName::new(format!("user-private-{n}"))?,
                    ExpectedVersion::Any,
                    vec![private_user_event(n, &mut rng)],
                )
                .with_subject(SubjectId::new(n.to_string())?);
                let started = Instant::now();
                store.append_multi(vec![public, private]).await?;
                latencies.push(started.elapsed());
            }
        }
    }
    Ok(latencies)
}

// --- Over HTTP: an in-process server and reqwest clients. ---

/// The admin token the bench's server is started with, and its clients send.
const HTTP_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// One HTTP round on fresh databases `db`: starts a server on them (its data directory, with
/// the KEK file, is a temporary directory of its own), drives it, and stops it again.
async fn run_http_round(args: &Args, db: &FreshDatabases, scenario: &Scenario) -> anyhow::Result<Figures> {
    let suffix = Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("lethe-bench-http-{}", &suffix[..12]));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = async {
        let kek_file = dir.join("kek.key");
        lethe_keyvault::Kek::load_or_create(&kek_file)
            .with_context(|| format!("creating the KEK file {}", kek_file.display()))?;
        let mut config = ServeConfig::embedded(&dir);
        config.listen = "127.0.0.1:0".parse()?;
        config.database_url = Some(db.url.clone());
        config.keyvault_url = Some(db.vault_url.clone());
        config.kek_file = Some(kek_file);
        config.admin_token = Some(HTTP_TOKEN.into());
        let server = lethe::server::start(config)
            .await
            .with_context(|| format!("starting the server on {}", redact(&db.url)))?;
        let figures = drive_http(&server, scenario, Duration::from_secs(args.seconds), args.streams).await;
        server.stop().await.context("stopping the server")?;
        figures
    }
    .await;
    let removed = std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()));
    let figures = result?;
    removed?;
    Ok(figures)
}

/// Runs the scenario's clients against `server` until `duration` is up and measures them.
/// All clients share one `reqwest::Client`, so connections are pooled (HTTP/1.1: one request
/// at a time per connection, and each client keeps one request in flight).
async fn drive_http(
    server: &RunningServer,
    scenario: &Scenario,
    duration: Duration,
    streams: u64,
) -> anyhow::Result<Figures> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {HTTP_TOKEN}"))?);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let client = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(scenario.writers)
        .default_headers(headers)
        .build()
        .context("building the HTTP client")?;

    let before = server.store.writer_stats();
    let start = Instant::now();
    let deadline = start + duration;

    let mut clients = JoinSet::new();
    for _ in 0..scenario.writers {
        let rng = Rng::new(Uuid::new_v4().as_u64_pair().0);
        clients.spawn(http_client(
            client.clone(),
            server.addr,
            scenario.shape,
            streams,
            deadline,
            rng,
        ));
    }
    let mut latencies = Vec::new();
    let mut non_2xx = 0;
    while let Some(joined) = clients.join_next().await {
        let outcome = joined.context("HTTP client task panicked")??;
        latencies.extend(outcome.latencies);
        non_2xx += outcome.non_2xx;
    }
    // Requests still in flight at the deadline are counted, so the elapsed time includes them.
    let elapsed = start.elapsed().as_secs_f64();
    let after = server.store.writer_stats();

    latencies.sort_unstable();
    let appends = latencies.len() as u64;
    let transactions = after.transactions - before.transactions;
    let writer_appends = after.appends - before.appends;
    Ok(Figures {
        appends,
        non_2xx,
        seconds: elapsed,
        appends_per_sec: appends as f64 / elapsed,
        events_per_sec: (appends * scenario.shape.events_per_append() as u64) as f64 / elapsed,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        transactions_per_append: ratio(transactions, writer_appends),
        appends_per_transaction: ratio(writer_appends, transactions),
    })
}

/// What one HTTP client saw: the latency of each 2xx answer, and how many others it got.
struct HttpOutcome {
    latencies: Vec<Duration>,
    non_2xx: u64,
}

/// One HTTP client: `POST /streams/bench-<n>` back to back until the deadline, one request at
/// a time. The latency is from sending the request to having read the whole answer; building
/// and serialising the body is not timed. A transport error (no answer at all) ends the round.
async fn http_client(
    client: reqwest::Client,
    addr: SocketAddr,
    shape: Shape,
    streams: u64,
    deadline: Instant,
    mut rng: Rng,
) -> anyhow::Result<HttpOutcome> {
    let mut outcome = HttpOutcome {
        latencies: Vec::new(),
        non_2xx: 0,
    };
    while Instant::now() < deadline {
        let n = rng.below(streams);
        let events: Vec<serde_json::Value> = (0..shape.events_per_append())
            .map(|_| json!({"type": "BenchEvent", "data": order_event(&mut rng).data}))
            .collect();
        let body = serde_json::to_vec(&json!({"expected_version": "any", "events": events}))?;
        let url = format!("http://{addr}/streams/bench-{n}");
        let started = Instant::now();
        let response = client
            .post(&url)
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let answer = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer to POST {url}"))?;
        let latency = started.elapsed();
        if status.is_success() {
            outcome.latencies.push(latency);
        } else {
            if outcome.non_2xx == 0 {
                // The first one of each client, so the cause shows without flooding the output.
                eprintln!(
                    "POST {url}: {status}: {}",
                    String::from_utf8_lossy(&answer[..answer.len().min(300)])
                );
            }
            outcome.non_2xx += 1;
        }
    }
    Ok(outcome)
}

// --- Payloads: realistic-looking JSON of about 150 bytes each. ---

fn order_event(rng: &mut Rng) -> NewEvent {
    NewEvent::new(
        "OrderPlaced",
        json!({
            "order_id": rng.uuid(),
            "customer_id": format!("c-{:07}", rng.below(10_000_000)),
            "amount_cents": rng.below(1_000_000),
            "currency": "EUR",
            "items": 1 + rng.below(9),
            "channel": "web",
        }),
    )
}

fn public_user_event(n: u64, rng: &mut Rng) -> NewEvent {
    NewEvent::new(
        "UserRegistered",
        json!({
            "user_id": n,
            "account_id": rng.uuid(),
            "plan": "standard",
            "flags": {"newsletter": rng.below(2) == 1, "beta": false},
            "referrer": format!("r-{:06}", rng.below(1_000_000)),
        }),
    )
}

fn private_user_event(n: u64, rng: &mut Rng) -> NewEvent {
    NewEvent::new(
        "UserProfileSet",
        json!({
            "user_id": n,
            "name": format!("Person {:06}", rng.below(1_000_000)),
            "email": format!("person{:06}@example.com", rng.below(1_000_000)),
            "address": "221B Baker Street, London NW1 6XE",
        }),
    )
}

// --- Fresh databases. ---

/// The event database and key vault database of one round, removed by
/// [`FreshDatabases::remove`]. SQLite: two files in a temporary directory. PostgreSQL: two
/// databases, `lethe_bench_<random>` and `lethe_bench_<random>_vault`.
struct FreshDatabases {
    url: String,
    vault_url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    /// A temporary directory holding the SQLite files.
    Dir(PathBuf),
    /// PostgreSQL databases, dropped through a connection to the server's `--postgres-url`.
    PgDatabases { server_url: String, names: Vec<String> },
}

impl FreshDatabases {
    async fn create(engine: Engine, postgres_url: &str) -> anyhow::Result<Self> {
        let suffix = Uuid::new_v4().simple().to_string();
        let suffix = &suffix[..12];
        match engine {
            Engine::Sqlite => {
                let dir = std::env::temp_dir().join(format!("lethe-bench-{suffix}"));
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                Ok(Self {
                    url: format!("sqlite://{}/events.db", dir.display()),
                    vault_url: format!("sqlite://{}/keyvault.db", dir.display()),
                    cleanup: Cleanup::Dir(dir),
                })
            }
            Engine::Postgres => {
                let name = format!("lethe_bench_{suffix}");
                let vault_name = format!("{name}_vault");
                let mut conn = PgConnection::connect(postgres_url)
                    .await
                    .with_context(|| format!("connecting to {}", redact(postgres_url)))?;
                for db in [&name, &vault_name] {
                    // The names are ours ([a-z0-9_] only), so formatting them into SQL is safe.
                    raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
                        .execute(&mut conn)
                        .await
                        .with_context(|| format!("creating database {db}"))?;
                }
                conn.close().await?;
                Ok(Self {
                    url: with_database(postgres_url, &name)?,
                    vault_url: with_database(postgres_url, &vault_name)?,
                    cleanup: Cleanup::PgDatabases {
                        server_url: postgres_url.to_owned(),
                        names: vec![name, vault_name],
                    },
                })
            }
        }
    }

    async fn remove(self) -> anyhow::Result<()> {
        match self.cleanup {
            Cleanup::Dir(dir) => std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display())),
            Cleanup::PgDatabases { server_url, names } => {
                let mut conn = PgConnection::connect(&server_url).await?;
                for name in names {
                    // FORCE: ends any connection a pool may still hold.
                    raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&mut conn)
                        .await
                        .with_context(|| format!("dropping database {name}"))?;
                }
                conn.close().await?;
                Ok(())
            }
        }
    }
}

/// `url` with its database (the path) replaced by `database`, query string kept.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("not a URL: {}", redact(url)))?;
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    Ok(match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    })
}

/// A URL for error messages: any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..].find(['/', '?']).map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{}{user}:***@{host}{}", &url[..scheme_end], &url[authority_end..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

// --- Statistics and output. ---

/// Nearest-rank percentile of sorted latencies, in milliseconds (0 when there are none).
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// The median of each figure over the rounds, taken figure by figure.
fn median_figures(rounds: &[Figures]) -> Figures {
    let median = |get: fn(&Figures) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(get).collect();
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        }
    };
    Figures {
        appends: median(|f| f.appends as f64).round() as u64,
        // Not a median: any round with failed requests shows.
        non_2xx: rounds.iter().map(|f| f.non_2xx).max().unwrap_or(0),
        seconds: median(|f| f.seconds),
        appends_per_sec: median(|f| f.appends_per_sec),
        events_per_sec: median(|f| f.events_per_sec),
        p50_ms: median(|f| f.p50_ms),
        p99_ms: median(|f| f.p99_ms),
        transactions_per_append: median(|f| f.transactions_per_append),
        appends_per_transaction: median(|f| f.appends_per_transaction),
    }
}

/// The results as a Markdown table (readable as is, and pasteable into BENCHMARKS.md).
fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "engine",
        "encrypted",
        "writers",
        "appends/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "appends/txn",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|row| {
            let m = &row.median;
            [
                row.scenario.to_owned(),
                row.engine.name().to_owned(),
                on_off(row.encrypted).to_owned(),
                row.writers.to_string(),
                format!("{:.0}", m.appends_per_sec),
                format!("{:.0}", m.events_per_sec),
                format!("{:.2}", m.p50_ms),
                format!("{:.2}", m.p99_ms),
                format!("{:.1}", m.appends_per_transaction),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.len());
        }
    }

    // Text columns left-aligned, numbers right-aligned.
    let numeric = |column: usize| column >= 3;
    let mut out = String::new();
    let mut line = |values: &[String]| {
        out.push('|');
        for (column, (value, width)) in values.iter().zip(widths).enumerate() {
            if numeric(column) {
                let _ = write!(out, " {value:>width$} |");
            } else {
                let _ = write!(out, " {value:<width$} |");
            }
        }
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    let rule = widths.map(|width| "-".repeat(width));
    let rule: Vec<String> = rule
        .iter()
        .enumerate()
        .map(|(column, dashes)| {
            if numeric(column) {
                format!("{}:", &dashes[1..])
            } else {
                dashes.clone()
            }
        })
        .collect();
    line(&rule);
    for cells in &cells {
        line(cells);
    }
    out.trim_end().to_owned()
}

fn on_off(flag: bool) -> &'static str {
    if flag { "on" } else { "off" }
}

/// SplitMix64: a tiny, fast generator for picking streams and filling payloads (the bench
/// needs spread, not cryptographic quality).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (the modulo bias is irrelevant here).
    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(
            ((u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())).to_be_bytes(),
        )
        .into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        let cases = [
            ("postgres://u@h:5432/postgres", "postgres://u@h:5432/db"),
            ("postgres://u@h:5432", "postgres://u@h:5432/db"),
            (
                "postgres://u:p@h/postgres?sslmode=disable",
                "postgres://u:p@h/db?sslmode=disable",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "db").unwrap(), expected);
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn payloads_are_about_150_bytes() {
        let mut rng = Rng::new(7);
        for event in [
            order_event(&mut rng),
            public_user_event(12_345, &mut rng),
            private_user_event(12_345, &mut rng),
        ] {
            let len = serde_json::to_vec(&event.data).unwrap().len();
            assert!((120..=180).contains(&len), "{} is {len} bytes", event.event_type);
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&sorted, 0.50), 50.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
    }
}
