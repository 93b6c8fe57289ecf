//! The Python persistence module (`clients/python/`, package `lethe-eventsourcing`) against
//! live servers: the `eventsourcing` library's own recorder test cases (aggregate recorder,
//! application recorder, the insert-subscribe case), Lethe's specifics (conflicts between
//! processes, shredded aggregates, subject-bound snapshots, error codes) and the example
//! application `examples/shop.py`. The suite starts a fresh `lethe serve` (this build's binary)
//! per test, on SQLite and, with `LETHE_TEST_POSTGRES_URL`, on PostgreSQL with databases of its
//! own.
//!
//! `clients/python/install-test-venv.sh` prepares the venv (pinned packages, then the package
//! installed from its folder with pip). Without Python or the packages the tests fail when `CI`
//! is set and are skipped with one notice otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const POSTGRES_URL_VAR: &str = "LETHE_TEST_POSTGRES_URL";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's interpreter; installed once per test run (both engines' tests share it).
fn venv_python() -> Option<PathBuf> {
    static VENV: Mutex<Option<Option<PathBuf>>> = Mutex::new(None);
    let mut venv = VENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    venv.get_or_insert_with(|| {
        let out = Command::new("bash")
            .arg(root().join("clients/python/install-test-venv.sh"))
            .output()
            .expect("run install-test-venv.sh");
        if !out.status.success() {
            let _ = std::io::stderr().write_all(&out.stderr);
            return None;
        }
        let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Some(PathBuf::from(python))
    })
    .clone()
}

/// Runs the suite on `engine`; the output is printed when it fails.
fn run_suite(engine: &str, postgres_url: Option<&str>) {
    let Some(python) = venv_python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the Python client's venv could not be prepared \
             (clients/python/install-test-venv.sh: python3 with venv and PyPI needed)"
        );
        let _ = writeln!(std::io::stderr(), "Python client tests skipped: no venv");
        return;
    };
    let tests = root().join("clients/python/tests");
    let mut command = Command::new(python);
    command
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(&tests)
        .arg("-t")
        .arg(&tests)
        .current_dir(&tests)
        .env("LETHE_BIN", env!("CARGO_BIN_EXE_lethe"))
        .env("LETHE_TEST_ENGINE", engine)
        .env_remove("PYTHONPATH");
    if let Some(url) = postgres_url {
        command.env(POSTGRES_URL_VAR, url);
    }
    let out = command.output().expect("run python -m unittest");
    let report = String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("Ran ") || l.starts_with("OK") || l.starts_with("FAILED"))
        .collect();
    // The recorder suite's result, for the log of the run.
    let _ = writeln!(std::io::stderr(), "Python client on {engine}: {}", summary.join(" "));
    assert!(
        out.status.success(),
        "the Python client's tests failed on {engine}:\n{report}"
    );
}

#[test]
fn eventsourcing_recorder_cases_pass() {
    run_suite("sqlite", None);
}

#[test]
fn eventsourcing_recorder_cases_pass_on_postgres() {
    let Ok(url) = std::env::var(POSTGRES_URL_VAR) else {
        let _ = writeln!(
            std::io::stderr(),
            "PostgreSQL tests skipped: {POSTGRES_URL_VAR} not set"
        );
        return;
    };
    run_suite("postgres", Some(&url));
}
