//! The PostgreSQL server restarted with `-m immediate` (every connection cut, no checkpoint)
//! under load, with the real `lethe serve` on a PostgreSQL event database and an in-process
//! vault on its own PostgreSQL database. While it is down requests wait for a connection (up to
//! the 30 s acquire and request timeouts) and fail past that with problem JSON
//! (`storage_unavailable` / `keyvault_unavailable` 503, `request_timeout` 408); Lethe
//! reconnects by itself; nothing acknowledged is lost or doubled, no batch is partial, every
//! forget completes.
//!
//! Stops the cluster with `pg_ctlcluster --skip-systemctl-redirect <version> main stop -m
//! immediate`, keeps it down for 1–3 s (in long mode also once for 40 s), and starts it again (or runs the shell command in
//! `LETHE_TEST_POSTGRES_RESTART`); skipped (with a notice)
//! when `LETHE_TEST_POSTGRES_URL` is unset or neither is available. Other test processes using
//! the same server see their connections cut while it runs.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Forgets, assert_problem_in, pick, random_between, report, serial, start_forgets, wait_erasures_completed,
};
use crate::http_support::ADMIN_TOKEN;
use crate::load_support::{Lethe, Load, read_log, start_load, verify, wait_for_acks};
use crate::support::TestDb;

/// A `pg_ctlcluster` command for the local cluster (`stop -m immediate`, `start`), if there is
/// one; or, for either, the shell command in `LETHE_TEST_POSTGRES_RESTART` (which then does the
/// whole restart at `stop`, and nothing at `start`).
fn pg_ctl(action: &str) -> Option<Command> {
    if let Ok(shell) = std::env::var("LETHE_TEST_POSTGRES_RESTART") {
        let mut command = Command::new("sh");
        command.args(["-c", if action == "stop" { shell.as_str() } else { "true" }]);
        return Some(command);
    }
    let version = std::fs::read_dir("/etc/postgresql").ok()?.flatten().next()?.file_name();
    let found = Command::new("sh")
        .args(["-c", "command -v pg_ctlcluster"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return None;
    }
    let mut command = Command::new("pg_ctlcluster");
    command
        .arg("--skip-systemctl-redirect")
        .arg(version)
        .args(["main", action]);
    if action == "stop" {
        command.args(["-m", "immediate"]);
    }
    Some(command)
}

/// Runs a `pg_ctl` action, asserting success.
async fn run_pg_ctl(action: &'static str) {
    let out = tokio::task::spawn_blocking(move || pg_ctl(action).unwrap().output())
        .await
        .unwrap()
        .expect("run pg_ctlcluster");
    assert!(
        out.status.success(),
        "pg_ctlcluster {action} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the cluster again when dropped, so that a failing test never leaves PostgreSQL down
/// for everyone else (`pg_ctlcluster start` on a running cluster changes nothing).
struct StartOnDrop;

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if let Some(mut start) = pg_ctl("start") {
            let _ = start.output();
        }
    }
}

/// Waits until the server accepts connections again.
async fn wait_postgres_up(url: &str) {
    use sqlx::Connection;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(c) = sqlx::PgConnection::connect(url).await {
            let _ = c.close().await;
            return;
        }
        assert!(Instant::now() < deadline, "PostgreSQL not back in 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Splits a recorded refusal `"<status> <content type> <body>"`.
fn parse_refusal(refusal: &str) -> (u16, String, Value) {
    let mut parts = refusal.splitn(3, ' ');
    let status = parts.next().unwrap_or("").parse().unwrap_or(0);
    let content_type = parts.next().unwrap_or("").to_owned();
    let body = serde_json::from_str(parts.next().unwrap_or("")).unwrap_or(Value::Null);
    (status, content_type, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load_loses_nothing_acknowledged() {
    restart_under_load(&[]).await;
}

/// The same with parallel group writers: the restart cuts groups between their reservations
/// and their commits, and the owner's connection (see `ReservationOwner`) is reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load_with_parallel_writers_loses_nothing_acknowledged() {
    restart_under_load(&[("LETHE_PG_GROUP_WRITERS", "4".to_owned())]).await;
}

async fn restart_under_load(env: &[(&str, String)]) {
    let _serial = serial().await;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    if pg_ctl("stop").is_none() {
        report("PostgreSQL restart skipped: no pg_ctlcluster and no LETHE_TEST_POSTGRES_RESTART");
        return;
    }
    let admin_url = std::env::var(crate::support::POSTGRES_URL_VAR).unwrap();
    let data_dir = db.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut lethe = Lethe::start_with(&db, &data_dir, env).await;

    let load = Arc::new(Load::tolerant());
    let forgets = Arc::new(Forgets {
        tolerant: true,
        ..Forgets::default()
    });
    let mut workers = start_load(lethe.base.clone(), ADMIN_TOKEN.to_owned(), 6, load.clone());
    workers.extend(start_forgets(&lethe.base, "pg", 2, load.clone(), forgets.clone()));

    // Short outages: requests wait for a connection and are then served. The long one outlasts
    // the 30 s connection-acquire and request timeouts: requests must then fail, clearly.
    let outages = pick(
        vec![random_between(Duration::from_secs(1), Duration::from_secs(3))],
        vec![
            random_between(Duration::from_secs(1), Duration::from_secs(3)),
            Duration::from_secs(40),
            random_between(Duration::from_secs(1), Duration::from_secs(3)),
        ],
    );
    let restarts = outages.len();
    let long_outage = outages.iter().any(|o| *o > Duration::from_secs(30));
    let mut not_ready = 0;
    let _start_on_drop = StartOnDrop;
    for outage in &outages {
        wait_for_acks(&load, load.acked_events() + 300).await;
        // /readyz is polled while the server restarts: it may say 503 while it is down.
        let base = lethe.base.clone();
        let stop_probe = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = {
            let stop_probe = stop_probe.clone();
            tokio::spawn(async move {
                let client = crate::harness::client();
                let mut seen = 0;
                while !stop_probe.load(Ordering::SeqCst) {
                    if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                        && r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    {
                        seen += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seen
            })
        };
        // Down for a while under load, then up again.
        run_pg_ctl("stop").await;
        tokio::time::sleep(*outage).await;
        run_pg_ctl("start").await;
        wait_postgres_up(&admin_url).await;
        // Lethe reconnects by itself: appends are acknowledged again.
        wait_for_acks(&load, load.acked_events() + 300).await;
        stop_probe.store(true, Ordering::SeqCst);
        not_ready += probe.await.unwrap();
    }
    load.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }

    // What clients saw while the database was down: problem JSON saying so, nothing else.
    let mut refusals = load.refusals.lock().unwrap().clone();
    refusals.extend(forgets.refusals.lock().unwrap().iter().cloned());
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for refusal in &refusals {
        let (status, content_type, body) = parse_refusal(refusal);
        *codes
            .entry(format!("{status} {}", body["code"].as_str().unwrap_or("?")))
            .or_default() += 1;
        assert!(status == 503 || status == 408, "{refusal}");
        assert_problem_in(
            status,
            &content_type,
            &body,
            &["storage_unavailable", "keyvault_unavailable", "request_timeout"],
        );
    }
    let transport_errors = load.transport_errors.load(Ordering::SeqCst);
    if long_outage {
        assert!(!refusals.is_empty(), "no error reported during a 40 s outage");
        // A readiness probe hears "not ready" within its 2 s budget, not after the pool's 30 s.
        assert!(not_ready > 0, "/readyz never said 503 during a 40 s outage");
    }

    // Nothing acknowledged lost, nothing doubled, no partial batch — on the same process and
    // after a restart of Lethe too; every forget sent completes.
    let acks = load.acks.lock().unwrap().clone();
    verify(&read_log(&lethe.base, ADMIN_TOKEN).await, &acks);
    lethe.kill_9();
    let lethe = Lethe::start_with(&db, &data_dir, env).await;
    verify(&read_log(&lethe.base, ADMIN_TOKEN).await, &acks);
    let sent = forgets.sent.lock().unwrap().clone();
    let erasures = wait_erasures_completed(&lethe.base, ADMIN_TOKEN, &sent).await;
    for (subject, _, id) in forgets.answered.lock().unwrap().iter() {
        assert!(
            erasures.iter().any(|e| e["request_id"] == id.as_str()),
            "answered forget {id} of {subject} lost"
        );
    }
    let acked: usize = acks.iter().flat_map(|a| a.sent.iter().map(|(_, ids)| ids.len())).sum();
    report(&format!(
        "pg_restart: {restarts} immediate stops (down {outages:?}) and starts, {acked} acknowledged events kept, {} refusals \
         (problem JSON: {codes:?}), {transport_errors} transport errors, /readyz 503 \
         seen {not_ready} times, {} forgets completed",
        refusals.len(),
        erasures.len()
    ));
}
