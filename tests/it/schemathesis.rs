//! The OpenAPI document against the live server: schemathesis (PyPI) generates requests from
//! `/openapi.json` — valid ones and invalid ones — sends them to a real server on a loopback port
//! and checks every answer against the document: no server errors; documented statuses, content
//! types and headers; response bodies that match their schemas; invalid input refused; valid input
//! accepted; auth enforced; undocumented methods answered with 405 and `Allow`.
//!
//! Bounded so that CI stays fast: a few examples per operation, a fixed seed, one worker, a
//! short long-poll cap, subscriptions read for a moment only. It runs on the embedded default
//! (SQLite) and, with `LETHE_TEST_POSTGRES_URL`, on PostgreSQL. `LETHE_RELIABILITY=long`
//! (`scripts/reliability-long`) raises the budget to 300 examples per operation and phase.
//!
//! Without the `schemathesis` Python package the test fails when `CI` is set and is skipped with
//! one notice otherwise (`python3 -m pip install schemathesis==4.32.5`).
//!
//! To look into a run: `LETHE_SCHEMATHESIS_REPORT_DIR=/tmp/st` keeps schemathesis' output and
//! reports (HAR and ndjson logs with every request and answer) there, and `LETHE_SCHEMATHESIS_ARGS`
//! adds arguments to `schemathesis run` (say, `--max-examples 50`).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use lethe::http::{AppState, HttpLimits, router};
use lethe::model::Role;
use lethe::server::ServeConfig;

/// Test cases per operation and phase (about 20 s on two cores), and in long mode.
const MAX_EXAMPLES: &str = "30";
const MAX_EXAMPLES_LONG: &str = "300";
/// The same generated requests every run.
const SEED: &str = "20240601";
/// Longest consumer long poll: `wait_ms` is fuzzed up to `u64::MAX`, so the server's 25 s cap
/// would make the run slow (and trip schemathesis' 10 s response-time check).
const LONG_POLL_MAX: Duration = Duration::from_millis(500);

/// schemathesis' configuration.
///
/// Valid input may get, besides schemathesis' defaults (2xx, 401, 403, 404, 409, 429, 5xx), what
/// depends on the server's state rather than on the request, and what depends on constraints
/// between members that a JSON schema cannot state:
/// - everywhere, 410 `stream_erased` / `stream_deleted`: an earlier request shredded the stream;
/// - `append`: 400 when `If-Match` and `expected_version` disagree or an event id is repeated;
///   `appendMulti`: 400 when a stream or an event id is repeated or the events of all streams
///   exceed 1,000; `ackConsumer`: 400 for a position past the head of the log; all three: 400
///   for an integer written as a float (`5.0` is an integer to JSON Schema, not to serde);
///   `putSchema`: 400 `invalid_schema` for a body whose `schema` is an object the JSON Schema
///   meta-schema refuses (`{"type": 5}`), which the document cannot rule out;
///   `putRetentionPolicy`: 400 `invalid_retention_policy` for a `keep_for` of the documented
///   characters that is not a duration, or is zero or longer than 100 years (`P00D`, `PT`,
///   `P101Y`), which a pattern cannot state.
///
/// Nothing may revoke the token the run uses (the rest of the run would see nothing but 401s;
/// `missing_auth` would then fail it): `revokeToken` draws no ids from earlier answers, and
/// the stateful phase follows only the document's own links (`createToken` → `revokeToken`
/// revokes the token just created), not links it infers (`listTokens` → `revokeToken`).
///
/// A subscription never ends: schemathesis reads at most 3 events or 0.3 s of it.
const CONFIG: &str = r#"
[warnings]
fail-on = ["missing_auth"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "410", "429", "5xx"]

[phases.stateful.inference]
algorithms = ["location-headers"]

[[operations]]
include-operation-id = ["append", "appendMulti", "ackConsumer", "putSchema", "putRetentionPolicy"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "410", "429", "5xx"]

[[operations]]
include-operation-id = ["revokeToken", "append", "deleteStream"]
phases.coverage.extra-data-sources.responses = false
phases.fuzzing.extra-data-sources.responses = false

[[operations]]
include-operation-id = "subscribe"
max-stream-events = 3
request-timeout = 0.3
"#;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn schemathesis_installed() -> bool {
    Command::new(python())
        .args(["-c", "import schemathesis"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The document's routes are the server's: for every documented path, the methods the router
/// itself lists in a 405's `Allow` are the documented ones. (Each route is registered together
/// with its operation, so no path can be served undocumented; this checks each path's methods.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_routes_are_the_served_routes() {
    let db = crate::support::TestDb::sqlite().await;
    let server = crate::http_support::Server::start(&db).await;
    let spec = server
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await
        .body;
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{paths:?}");
    for (template, item) in paths {
        let documented: BTreeSet<String> = item
            .as_object()
            .expect("a path item")
            .keys()
            .map(|method| method.to_uppercase())
            .collect();
        let path = template
            .replace("{id}", &uuid::Uuid::nil().to_string())
            .replace("{stream}", "probe")
            .replace("{name}", "probe")
            .replace("{subject}", "probe");
        // No route of the API takes TRACE.
        let reply = server
            .call(reqwest::Method::TRACE, &path, Some(&server.admin), None)
            .await;
        reply.assert_problem(405, "method_not_allowed");
        let allow = reply
            .headers
            .get(reqwest::header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .expect("Allow");
        let served: BTreeSet<String> = allow
            .split(',')
            .map(|m| m.trim().to_owned())
            // The router answers HEAD wherever it answers GET.
            .filter(|m| m != "HEAD" || !documented.contains("GET"))
            .collect();
        assert_eq!(served, documented, "{template}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_server() {
    // The embedded default (SQLite events database and key vault, KEK epochs in the keys
    // directory beside the data directory), wired as
    // `lethe serve` does.
    let dir = tempfile::tempdir().expect("temp dir");
    run_schemathesis(ServeConfig::embedded(dir.path().join("lethe-data")), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_server_on_postgres() {
    let Some(db) = crate::support::TestDb::postgres().await else {
        return;
    };
    run_schemathesis(crate::http_support::config_for(&db), db.dir.path()).await;
}

/// Serves `config`'s store with a short long-poll cap and runs schemathesis against it.
async fn run_schemathesis(config: ServeConfig, dir: &std::path::Path) {
    if !schemathesis_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the Python package `schemathesis` is not importable \
             (python3 -m pip install schemathesis==4.32.5)"
        );
        // Written to the real stderr: the test harness captures eprintln!.
        let _ = std::io::stderr()
            .write_all(b"schemathesis test skipped: the Python package `schemathesis` is not installed\n");
        return;
    }

    let config_is_postgres = config
        .database_url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres"));
    let store = lethe::server::open_store(&config).await.expect("open store");
    let admin = store
        .create_token("schemathesis", Role::Admin)
        .await
        .expect("admin token");
    let token = admin.secret.to_string();
    let limits = HttpLimits {
        long_poll_max: LONG_POLL_MAX,
        ..HttpLimits::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let app = router(AppState::new(store.clone(), limits).with_shutdown(stopped.clone()));
    let mut signal = stopped;
    let server = tokio::spawn(lethe::server::serve(
        listener,
        app,
        Duration::from_secs(10),
        async move {
            let _ = signal.wait_for(|stop| *stop).await;
        },
    ));

    let work = dir.join("schemathesis");
    std::fs::create_dir_all(&work).expect("work dir");
    std::fs::write(work.join("schemathesis.toml"), CONFIG).expect("schemathesis config");
    let report_dir = std::env::var_os("LETHE_SCHEMATHESIS_REPORT_DIR").map(std::path::PathBuf::from);
    let extra_args: Vec<String> = std::env::var("LETHE_SCHEMATHESIS_ARGS")
        .map(|a| a.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();

    let long = std::env::var("LETHE_RELIABILITY").is_ok_and(|v| v == "long");
    let max_examples = if long { MAX_EXAMPLES_LONG } else { MAX_EXAMPLES };
    let mut command = Command::new(python());
    command
        // Its caches (`.schemathesis/`) go to the temporary directory, not the work tree.
        .current_dir(&work)
        .args([
            "-m",
            "schemathesis.cli",
            "--no-color",
            "--config-file",
            "schemathesis.toml",
        ])
        .args(["run", &format!("http://{addr}/openapi.json"), "--checks", "all"])
        // `use_after_free` expects a deleted resource to be gone; a deleted (shredded) stream
        // stays readable by design, as `status: deleted` with its events' data erased.
        .args(["--exclude-checks", "use_after_free"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", max_examples, "--seed", SEED])
        .args(["--workers", "1", "--request-timeout", "20"])
        .args(["--generation-database", "none"])
        .args(&extra_args)
        .env("SCHEMATHESIS_TELEMETRY", "false");
    if let Some(report_dir) = &report_dir {
        command.args(["--report", "ndjson,har", "--report-dir"]).arg(report_dir);
    }
    // A blocking thread: the server goes on serving on the runtime's workers meanwhile.
    let run = tokio::task::spawn_blocking(move || command.output().expect("run schemathesis"));
    let budget = Duration::from_secs(if long { 3600 } else { 600 });
    let out = tokio::time::timeout(budget, run)
        .await
        .expect("schemathesis finished within its time budget")
        .expect("schemathesis thread");

    // The token the run used still works: nothing it did locked it out.
    let still_valid = store.authenticate(&token).await.expect("authenticate").is_some();
    let _ = stop.send(true);
    server.await.expect("server task").expect("server");
    store.close().await;

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(report_dir) = &report_dir {
        std::fs::write(report_dir.join("output.txt"), stdout.as_bytes()).expect("write the output");
    }
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    assert!(still_valid, "the run revoked its own admin token:\n{stdout}");
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" in ") && l.starts_with('='))
        .unwrap_or("passed");
    let _ = writeln!(
        std::io::stderr(),
        "schemathesis ({}, {max_examples} examples): {}",
        if config_is_postgres { "PostgreSQL" } else { "SQLite" },
        summary.trim_matches(|c| c == '=' || c == ' ')
    );
}
