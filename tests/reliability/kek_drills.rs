//! Restore drills under SIGKILL (issue 19): the real `lethe serve` killed while its key vault
//! re-wraps every key under a new KEK epoch, and killed while it replays its erasure journal
//! against a vault restored from a backup.
//!
//! - `lethe_killed_during_kek_rotation_loses_no_key`: KEK epochs every second (retained 2 s, so
//!   epochs are destroyed along the way) over thousands of keys, new streams appended and old
//!   ones read meanwhile, SIGKILL at random moments — half of them aimed inside a rotation.
//!   After each restart every acknowledged event reads back with its data, `/readyz` reports no
//!   unreadable key, no request answered a 5xx while the server was up, and the keys directory
//!   holds a few epoch files, not one more per cycle.
//! - `lethe_killed_during_journal_replay_resumes_it`: every subject forgotten after a backup of
//!   the vault was taken, then Lethe started on that backup (the forgotten keys are live in it
//!   again) and SIGKILLed during its start, again and again, before it lets it finish. The
//!   replay resumes where it was cut: every forgotten key ends destroyed in the backup, every
//!   stream erased with one tombstone, one `SubjectForgotten` and one request per subject,
//!   the repair audited, the subjects that were not forgotten intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_keyvault::{FileKeks, KeyId, KeyLookup, OpenOptions};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

use crate::backend_tests;
use crate::harness::{
    assert_append_refused, assert_shredded, call, client, pick, random_below, random_between, report, serial,
};
use crate::http_support::ADMIN_TOKEN;
use crate::load_support::{Lethe, read_log};
use crate::support::{Engine, Part, TestDb};

backend_tests!(
    lethe_killed_during_kek_rotation_loses_no_key,
    lethe_killed_during_journal_replay_resumes_it
);

// ---------------------------------------------------------------------------------------------
// Shared

/// The keys directory `load_support` gives every process on this database.
fn keys_dir(db: &TestDb) -> PathBuf {
    db.dir.path().join("lethe-keys")
}

/// The server's log from byte `from` on, without terminal colours.
fn log_since(data_dir: &Path, from: usize) -> String {
    let bytes = std::fs::read(data_dir.join("lethe.log")).unwrap_or_default();
    strip_ansi(&String::from_utf8_lossy(&bytes[from.min(bytes.len())..]))
}

fn log_len(data_dir: &Path) -> usize {
    std::fs::metadata(data_dir.join("lethe.log")).map_or(0, |m| m.len() as usize)
}

/// The last `n` lines of a log (for failure messages).
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ … final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `/readyz`: `(status, body)`, `None` when the server does not answer.
async fn readyz(base: &str) -> Option<(u16, Value)> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

/// Every event of a stream (paged), `(status of the first page, status field, events)`.
async fn read_whole_stream(base: &str, stream: &str) -> (u16, Value, Vec<Value>) {
    let client = client();
    let mut events = Vec::new();
    let mut from = 0u64;
    loop {
        let (status, _, page) = call(
            &client,
            Method::GET,
            &format!("{base}/streams/{stream}?from={from}&limit=1000"),
            ADMIN_TOKEN,
            None,
        )
        .await
        .expect("server reachable");
        if status != 200 {
            return (status, page, events);
        }
        let got = page["events"].as_array().cloned().unwrap_or_default();
        let done = got.len() < 1000;
        from += got.len() as u64;
        events.extend(got);
        if done {
            return (status, page["status"].clone(), events);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL during KEK rotation

/// One stream written and acknowledged: its single event's id and secret.
#[derive(Clone)]
struct Written {
    stream: String,
    id: Uuid,
    secret: String,
}

/// What the clients saw during one cycle.
#[derive(Default)]
struct Seen {
    written: Mutex<Vec<Written>>,
    reads_ok: AtomicUsize,
    appends_ok: AtomicUsize,
    /// Answers that were not what they must be (a 5xx, a refusal, missing data).
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// The append body creating `streams` (one event each), every other one bound to a subject of
/// its own; records what was sent.
fn new_streams(names: &[String]) -> (Value, Vec<Written>) {
    let mut sent = Vec::new();
    let appends: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, stream)| {
            let id = Uuid::new_v4();
            let secret = Uuid::new_v4().simple().to_string();
            sent.push(Written {
                stream: stream.clone(),
                id,
                secret: secret.clone(),
            });
            let mut append = json!({"stream": stream, "expected_version": "no_stream",
                "events": [{"id": id, "type": "Profiled", "data": {"stream": stream, "secret": secret}}]});
            if i % 2 == 0 {
                append["subject"] = json!(format!("s-{stream}"));
            }
            append
        })
        .collect();
    (json!({ "appends": appends }), sent)
}

/// Appends `streams` new streams in multi-stream appends of 100, as setup (every answer must
/// be 201).
async fn seed(base: &str, prefix: &str, streams: usize) -> Vec<Written> {
    let client = client();
    let mut all = Vec::new();
    for chunk in (0..streams).collect::<Vec<_>>().chunks(100) {
        let names: Vec<String> = chunk.iter().map(|i| format!("{prefix}-{i}")).collect();
        let (body, sent) = new_streams(&names);
        let answer = call(
            &client,
            Method::POST,
            &format!("{base}/streams"),
            ADMIN_TOKEN,
            Some(&body),
        )
        .await;
        assert!(matches!(answer, Some((201, _, _))), "seeding: {answer:?}");
        all.extend(sent);
    }
    all
}

/// Two writers creating new streams (5 per multi-stream append) and two readers reading random
/// acknowledged streams, until told to stop or the server is gone (a transport error).
fn start_clients(base: &str, cycle: usize, seen: Arc<Seen>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for w in 0..2 {
        let (base, seen) = (base.to_owned(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            for k in 0.. {
                if seen.stop.load(Ordering::SeqCst) {
                    return;
                }
                let names: Vec<String> = (0..5).map(|j| format!("c{cycle}-w{w}-{k}-{j}")).collect();
                let (body, sent) = new_streams(&names);
                let Some((status, _, answer)) = call(
                    &client,
                    Method::POST,
                    &format!("{base}/streams"),
                    ADMIN_TOKEN,
                    Some(&body),
                )
                .await
                else {
                    return; // the server is gone: not acknowledged
                };
                if status == 201 {
                    seen.appends_ok.fetch_add(1, Ordering::SeqCst);
                    seen.written.lock().unwrap().extend(sent);
                } else {
                    seen.failures
                        .lock()
                        .unwrap()
                        .push(format!("append answered {status}: {answer}"));
                    return;
                }
            }
        }));
    }
    for _ in 0..2 {
        let (base, seen) = (base.to_owned(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            while !seen.stop.load(Ordering::SeqCst) {
                let pick = {
                    let written = seen.written.lock().unwrap();
                    written[random_below(written.len() as u64) as usize].clone()
                };
                let url = format!("{base}/streams/{}?limit=10", pick.stream);
                let Some((status, _, page)) = call(&client, Method::GET, &url, ADMIN_TOKEN, None).await else {
                    return; // the server is gone
                };
                let event = &page["events"][0];
                if status == 200 && page["status"] == "active" && event["data"]["secret"] == pick.secret.as_str() {
                    seen.reads_ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    seen.failures
                        .lock()
                        .unwrap()
                        .push(format!("read of {} answered {status}: {page}", pick.stream));
                    return;
                }
            }
        }));
    }
    tasks
}

/// The epoch numbers of the `kek-XXXXXXXXXX.key` files in the keys directory.
fn epoch_files(keys: &Path) -> Vec<u32> {
    let mut epochs: Vec<u32> = std::fs::read_dir(keys)
        .expect("keys directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("kek-")?.strip_suffix(".key")?.parse().ok()
        })
        .collect();
    epochs.sort_unstable();
    epochs
}

/// Durations of the rotations a log shows whole ("KEK epoch started" … "KEK rotation
/// complete"), and how many it shows started (by a tick; a resumed one starts at open).
fn rotations(log: &str) -> (Vec<Duration>, usize) {
    let time = |line: &str| {
        line.split_whitespace()
            .next()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let mut started_at = None;
    let mut durations = Vec::new();
    let mut started = 0;
    for line in log.lines() {
        if line.contains("KEK epoch started") {
            started += 1;
            started_at = time(line);
        } else if line.contains("KEK rotation complete")
            && let (Some(start), Some(end)) = (started_at.take(), time(line))
        {
            durations.push((end - start).to_std().unwrap_or_default());
        }
    }
    (durations, started)
}

/// Whether the log shows a rotation under way: started by a tick or resumed at open, not yet
/// complete.
fn rotation_running(log: &str) -> bool {
    let mut running = false;
    for line in log.lines() {
        if line.contains("KEK epoch started") || line.contains("KEK rotation is pending; resuming it") {
            running = true;
        } else if line.contains("KEK rotation complete") {
            running = false;
        }
    }
    running
}

/// [`rotations`] of each run of the server, its log starting at each offset of `runs`.
fn rotations_of_runs(data_dir: &Path, runs: &[usize]) -> (Vec<Duration>, usize) {
    let bytes = std::fs::read(data_dir.join("lethe.log")).unwrap_or_default();
    let (mut durations, mut started) = (Vec::new(), 0);
    for (i, from) in runs.iter().enumerate() {
        let to = runs.get(i + 1).copied().unwrap_or(bytes.len()).min(bytes.len());
        let (d, s) = rotations(&strip_ansi(&String::from_utf8_lossy(&bytes[(*from).min(to)..to])));
        durations.extend(d);
        started += s;
    }
    (durations, started)
}

/// Waits until the log (from `from`) shows more than `started` rotations started; false after
/// `within`.
async fn wait_rotation_start(data_dir: &Path, from: usize, started: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if rotations(&log_since(data_dir, from)).1 > started {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Every acknowledged event is in the log with its data, and `/readyz` reports no unreadable
/// key; a sample of them also reads by stream.
async fn assert_all_readable(base: &str, written: &[Written], when: &str, server_log: &str) {
    let (status, ready) = readyz(base).await.expect("server reachable");
    assert_eq!(status, 200, "{when}: {ready}");
    assert_eq!(
        ready["keys_unreadable"],
        0,
        "{when}: keys lost: {ready}\n{}",
        tail(server_log, 40)
    );
    let log = read_log(base, ADMIN_TOKEN).await;
    let by_id: HashMap<&str, &Value> = log.iter().filter_map(|e| Some((e["id"].as_str()?, e))).collect();
    for w in written {
        let id = w.id.to_string();
        let event = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{when}: acknowledged event of {} is lost", w.stream));
        assert!(
            event["erased"] != true && event["data"]["secret"] == w.secret.as_str(),
            "{when}: {} does not read back: {event}\n{}",
            w.stream,
            tail(server_log, 40)
        );
    }
    let client = client();
    for _ in 0..50 {
        let w = &written[random_below(written.len() as u64) as usize];
        let url = format!("{base}/streams/{}", w.stream);
        let answer = call(&client, Method::GET, &url, ADMIN_TOKEN, None).await;
        assert!(
            matches!(&answer, Some((200, _, page)) if page["events"][0]["data"]["secret"] == w.secret.as_str()),
            "{when}: read of {}: {answer:?}",
            w.stream
        );
    }
}

/// At most this many epoch files at any check: the active epoch, a pending one, and those
/// superseded less than retention + a check or two ago — never one more per cycle.
const EPOCH_FILES_MAX: usize = 6;

async fn lethe_killed_during_kek_rotation_loses_no_key(db: TestDb) {
    let _serial = serial().await;
    let cycles = pick(4, 16);
    let seeded = pick(2_000, 6_000);
    let data_dir = db.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let keys = keys_dir(&db);
    let env = [
        ("LETHE_KEK_ROTATE_EVERY", "1s".to_owned()),
        ("LETHE_KEK_CHECK_EVERY", "1s".to_owned()),
        ("LETHE_KEK_RETAIN", "2s".to_owned()),
        // The vault's epoch steps, for the measurements (the rest at warn).
        ("LETHE_LOG", "warn,lethe_keyvault=info".to_owned()),
    ];
    let mut from = log_len(&data_dir);
    let mut runs = vec![from];
    let mut lethe = Lethe::start_with(&db, &data_dir, &env).await;
    let started = Instant::now();
    let mut written = seed(&lethe.base, "seed", seeded).await;
    let seeding = started.elapsed();

    let mut resumed = 0; // starts that found a rotation pending: killed mid-rotation
    let mut aimed = 0;
    let mut max_files = 0;
    // A start finishes a rotation it finds pending before it serves.
    let mut slowest_restart = Duration::ZERO;
    let (mut reads, mut appends) = (0, 0);
    for cycle in 0..cycles {
        let seen = Arc::new(Seen::default());
        seen.written.lock().unwrap().extend(written.iter().cloned());
        let workers = start_clients(&lethe.base, cycle, seen.clone());
        // Every other cycle the kill is aimed inside a rotation: a random moment within the
        // time a rotation has been taking, after one starts; otherwise any moment.
        let longest = rotations_of_runs(&data_dir, &runs)
            .0
            .into_iter()
            .max()
            .unwrap_or(Duration::from_millis(100));
        let run_log = log_since(&data_dir, from);
        let started = rotations(&run_log).1;
        if cycle % 2 == 0
            && (rotation_running(&run_log)
                || wait_rotation_start(&data_dir, from, started, Duration::from_secs(5)).await)
        {
            aimed += 1;
            tokio::time::sleep(random_between(Duration::ZERO, longest)).await;
        } else {
            tokio::time::sleep(random_between(Duration::from_millis(100), Duration::from_millis(2500))).await;
        }
        lethe.kill_9();
        seen.stop.store(true, Ordering::SeqCst);
        for worker in workers {
            worker.await.unwrap();
        }
        let failures = seen.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "cycle {cycle}: answers while the server was up: {failures:?}\n{}",
            tail(&log_since(&data_dir, from), 40)
        );
        written = seen.written.lock().unwrap().clone();
        reads += seen.reads_ok.load(Ordering::SeqCst);
        appends += seen.appends_ok.load(Ordering::SeqCst);

        from = log_len(&data_dir);
        runs.push(from);
        let restarting = Instant::now();
        lethe = Lethe::start_with(&db, &data_dir, &env).await;
        slowest_restart = slowest_restart.max(restarting.elapsed());
        let run_log = log_since(&data_dir, from);
        if run_log.contains("KEK rotation is pending; resuming it") {
            resumed += 1;
        }
        assert_all_readable(&lethe.base, &written, &format!("after kill {cycle}"), &run_log).await;
        let files = epoch_files(&keys);
        max_files = max_files.max(files.len());
        assert!(
            files.len() <= EPOCH_FILES_MAX,
            "after kill {cycle}: old epochs are not destroyed: {files:?}"
        );
    }

    // Running on: the epochs superseded before the last kill are destroyed within retention
    // and a check, and every key still reads.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let run_log = log_since(&data_dir, from);
    assert_all_readable(&lethe.base, &written, "at the end", &run_log).await;
    let files = epoch_files(&keys);
    max_files = max_files.max(files.len());
    let highest = files.last().copied().unwrap_or(0);
    assert!(files.len() <= EPOCH_FILES_MAX, "at the end: {files:?}");
    // Epochs rotated (at least one per cycle) and the superseded ones were destroyed: only
    // the newest few are left.
    assert!(
        highest as usize > cycles && files.len() < highest as usize && !files.contains(&1),
        "epochs rotate and are destroyed along the way: {files:?}"
    );
    let all_log = log_since(&data_dir, 0);
    assert!(!all_log.contains(" ERROR "), "errors logged:\n{}", tail(&all_log, 60));
    let (durations, started) = rotations_of_runs(&data_dir, &runs);
    let mut sorted = durations.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let longest = sorted.last().copied().unwrap_or_default();
    report(&format!(
        "kek rotation ({:?}): {cycles} SIGKILL cycles ({aimed} aimed inside a rotation, {resumed} restarts \
         resumed a pending rotation, the slowest ready after {} ms); {} streams seeded in {:.1} s, {} acknowledged \
         streams all readable after every restart; {reads} reads and {appends} appends of 5 new streams during the \
         load, no error answered; {started} rotations started, {} completed whole (median {} ms, longest {} ms); \
         epochs reached kek-{highest:010}.key, at most {max_files} epoch files at once, {} at the end",
        db.engine,
        slowest_restart.as_millis(),
        seeded,
        seeding.as_secs_f64(),
        written.len(),
        durations.len(),
        median.as_millis(),
        longest.as_millis(),
        files.len(),
    ));
    lethe.kill_9();
}

// ---------------------------------------------------------------------------------------------
// 2. SIGKILL during the erasure journal's replay

/// `(key id, live)` of every key of the subjects whose names start with `prefix`, read from a
/// vault database directly (no server may be writing it).
async fn vault_keys(engine: Engine, url: &str, prefix: &str) -> Vec<(Uuid, bool)> {
    let sql = format!("SELECT id, destroyed_at IS NULL FROM vault_keys WHERE subject LIKE '{prefix}%' ORDER BY stream");
    match engine {
        Engine::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url)
                .await
                .expect("connect to the vault");
            let rows = sqlx::query_as::<_, (Uuid, bool)>(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut c)
                .await
                .expect("vault keys");
            c.close().await.expect("close");
            rows
        }
        Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect to the vault");
            let rows = sqlx::query_as::<_, (Uuid, bool)>(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut c)
                .await
                .expect("vault keys");
            c.close().await.expect("close");
            rows
        }
    }
}

fn live(keys: &[(Uuid, bool)]) -> usize {
    keys.iter().filter(|(_, live)| *live).count()
}

async fn lethe_killed_during_journal_replay_resumes_it(mut db: TestDb) {
    let _serial = serial().await;
    let subjects = pick(200, 800);
    let kept = 20;
    let kills = pick(4, 10);
    let data_dir = db.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();

    // Subjects `gone-<i>` (to be forgotten) and `kept-<i>`, each with a bound stream of two
    // events.
    let mut lethe = Lethe::start(&db, &data_dir).await;
    let client = client();
    let bind = |prefix: &str, range: std::ops::Range<usize>| -> Value {
        let appends: Vec<Value> = range
            .map(|i| {
                json!({"stream": format!("{prefix}-profile-{i}"), "subject": format!("{prefix}-{i}"),
                       "expected_version": "no_stream",
                       "events": [{"type": "Named", "data": {"name": format!("{prefix} person {i}")}},
                                  {"type": "Moved", "data": {"city": format!("{prefix} town {i}")}}]})
            })
            .collect();
        json!({ "appends": appends })
    };
    for start in (0..subjects).step_by(100) {
        let body = bind("gone", start..(start + 100).min(subjects));
        let answer = call(
            &client,
            Method::POST,
            &format!("{}/streams", lethe.base),
            ADMIN_TOKEN,
            Some(&body),
        )
        .await;
        assert!(matches!(answer, Some((201, _, _))), "{answer:?}");
    }
    let answer = call(
        &client,
        Method::POST,
        &format!("{}/streams", lethe.base),
        ADMIN_TOKEN,
        Some(&bind("kept", 0..kept)),
    )
    .await;
    assert!(matches!(answer, Some((201, _, _))), "{answer:?}");
    assert!(lethe.terminate().await.success(), "{}", lethe.output());

    // The backup, taken before the forgets: every key live in it.
    let backup = db.backup(Part::Vault).await;
    assert_eq!(live(&vault_keys(db.engine, &backup, "gone-").await), subjects);

    // Every `gone-` subject forgotten, each request completed. (How long a start with nothing
    // to re-apply takes, for the report.)
    let spawned = Instant::now();
    let mut lethe = Lethe::start(&db, &data_dir).await;
    let plain_start = spawned.elapsed();
    let forgetting = Instant::now();
    let mut requests = Vec::new();
    let senders: Vec<_> = (0..4)
        .map(|w| {
            let base = lethe.base.clone();
            tokio::spawn(async move {
                let client = crate::harness::client();
                let mut ids = Vec::new();
                for i in (w..subjects).step_by(4) {
                    let url = format!("{base}/admin/subjects/gone-{i}/forget");
                    let body = json!({"reason": "restore drill", "requested_by": "reliability"});
                    let answer = call(&client, Method::POST, &url, ADMIN_TOKEN, Some(&body)).await;
                    let Some((202, _, answer)) = answer else {
                        panic!("forget gone-{i}: {answer:?}");
                    };
                    ids.push(answer["request_id"].as_str().expect("request_id").to_owned());
                }
                ids
            })
        })
        .collect();
    for sender in senders {
        requests.extend(sender.await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &requests {
        loop {
            let answer = call(
                &client,
                Method::GET,
                &format!("{}/admin/erasures/{id}", lethe.base),
                ADMIN_TOKEN,
                None,
            )
            .await;
            if matches!(&answer, Some((200, _, e)) if e["status"] == "completed") {
                break;
            }
            assert!(Instant::now() < deadline, "erasure {id} not completed: {answer:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let forgetting = forgetting.elapsed();
    assert!(lethe.terminate().await.success(), "{}", lethe.output());
    let journal = keys_dir(&db).join("erasures.journal");
    let journal_bytes = std::fs::metadata(&journal).expect("the erasure journal").len();
    assert_eq!(live(&vault_keys(db.engine, &db.vault_url, "gone-").await), 0);

    // Lethe on the restored vault, killed while it starts: it must not serve before the
    // replay has destroyed the keys again, and a replay cut anywhere is resumed. Each kill is
    // aimed at a random share (10-50 %) of the keys still live: the drill watches the restored
    // vault while Lethe starts and kills it once that share is destroyed again. (Aiming by the
    // clock missed on fast machines: a SQLite replay of a few hundred keys can end within a
    // few tens of milliseconds of the start.)
    let env = [("LETHE_KEYVAULT_URL", backup.clone())];
    let mut left = subjects;
    let (mut mid_replay, mut before_replay, mut ready_first) = (0, 0, 0);
    let mut progress = Vec::new();
    let mut killed = 0;
    // Until `kills` kills landed inside the replay, or it got to the end (a start got ready,
    // which ends the drill: nothing is left to re-apply), within a bound of tries.
    while mid_replay < kills && left > 0 && killed < 3 * kills {
        let kill = killed;
        killed += 1;
        let share = 0.1 + 0.4 * random_below(1000) as f64 / 1000.0;
        let target = left - ((share * left as f64).ceil() as usize).clamp(1, left);
        let mut starting = Lethe::spawn_with(&db, &data_dir, &env);
        let spawned = Instant::now();
        let mut ready = false;
        loop {
            if let Some((200, _)) = readyz(&starting.base).await {
                ready = true;
                break;
            }
            if live(&vault_keys(db.engine, &backup, "gone-").await) <= target {
                break;
            }
            assert!(
                starting.child.try_wait().unwrap().is_none(),
                "kill {kill}: lethe exited by itself: {}",
                tail(&log_since(&data_dir, 0), 40)
            );
            assert!(
                spawned.elapsed() < Duration::from_secs(120),
                "kill {kill}: the replay made no progress: {}",
                tail(&log_since(&data_dir, 0), 40)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let at = spawned.elapsed();
        starting.kill_9();
        let now_left = live(&vault_keys(db.engine, &backup, "gone-").await);
        assert!(
            now_left <= left,
            "kill {kill}: destroyed keys came back ({left} → {now_left})"
        );
        if ready {
            // Ready first: the replay had finished.
            assert_eq!(now_left, 0, "kill {kill}: ready with forgotten keys live in the vault");
            ready_first += 1;
        } else if now_left == left {
            before_replay += 1;
        } else {
            mid_replay += 1;
        }
        progress.push(format!("{}ms:{now_left}", at.as_millis()));
        left = now_left;
    }
    assert!(
        mid_replay >= 2 && mid_replay > before_replay + ready_first,
        "too few kills landed inside the replay (progress {progress:?})"
    );

    // Then a start to the end.
    let from = log_len(&data_dir);
    let started = Instant::now();
    let lethe = Lethe::start_with(&db, &data_dir, &env).await;
    let last_start = started.elapsed();
    let run_log = log_since(&data_dir, from);
    let base = lethe.base.clone();

    // Every forgotten subject's stream is erased, with one tombstone, and takes no events.
    for i in 0..subjects {
        let stream = format!("gone-profile-{i}");
        let (status, state, events) = read_whole_stream(&base, &stream).await;
        assert_eq!(status, 200, "{stream}: {state}");
        assert_eq!(state, "erased", "{stream} is resurrected\n{}", tail(&run_log, 40));
        assert_shredded(&stream, &json!({"status": state, "events": events}));
        let tombstones = events.iter().filter(|e| e["type"] == "$erased").count();
        assert_eq!(tombstones, 1, "{stream}: {tombstones} tombstones: {events:?}");
        assert_eq!(events.len(), 3, "{stream}: {events:?}");
        assert_append_refused(&base, ADMIN_TOKEN, &stream).await;
    }
    // The subjects not forgotten are whole.
    for i in 0..kept {
        let stream = format!("kept-profile-{i}");
        let (status, state, events) = read_whole_stream(&base, &stream).await;
        assert_eq!((status, state.as_str()), (200, Some("active")), "{stream}");
        assert_eq!(
            events[0]["data"]["name"],
            format!("kept person {i}"),
            "{stream}: {events:?}"
        );
    }
    // One `SubjectForgotten` per subject, one request per subject.
    let (status, _, erasures) = read_whole_stream(&base, "$erasures").await;
    assert_eq!(status, 200);
    let mut forgotten: HashMap<String, usize> = HashMap::new();
    for event in erasures.iter().filter(|e| e["type"] == "SubjectForgotten") {
        *forgotten
            .entry(event["data"]["subject"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    for i in 0..subjects {
        assert_eq!(
            forgotten.get(&format!("gone-{i}")),
            Some(&1),
            "SubjectForgotten of gone-{i}"
        );
    }
    assert_eq!(forgotten.len(), subjects, "{forgotten:?}");
    let (status, _, list) = call(
        &client,
        Method::GET,
        &format!("{base}/admin/erasures?limit=1000"),
        ADMIN_TOKEN,
        None,
    )
    .await
    .expect("server reachable");
    assert_eq!(status, 200, "{list}");
    let list = list["erasures"].as_array().expect("erasures").clone();
    assert_eq!(list.len(), subjects, "one request per subject, none recorded twice");
    assert!(list.iter().all(|e| e["status"] == "completed"), "{list:?}");
    // The repair is audited.
    let (status, _, audit) = call(
        &client,
        Method::GET,
        &format!("{base}/admin/audit?action=erasure_reapplied&limit=1000"),
        ADMIN_TOKEN,
        None,
    )
    .await
    .expect("server reachable");
    assert_eq!(status, 200, "{audit}");
    // Every subject's keys are audited as destroyed again: the entry is written before the
    // vault is asked, so a kill between the two leaves an entry whose destruction the next
    // start completes (and audits once more) — never a destruction without its entry. So each
    // subject has one entry, or two where a kill fell in between: at most one extra per kill.
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    let audited = entries.len();
    let mut steps: HashMap<String, usize> = HashMap::new();
    for entry in &entries {
        if entry["details"]["step"] == "vault_keys_destroyed" {
            *steps
                .entry(entry["subject"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
    }
    let reapplied = steps.len();
    let extra: usize = steps.values().map(|n| n - 1).sum();
    assert_eq!(
        reapplied, subjects,
        "every subject's re-destruction is audited: {steps:?}"
    );
    assert!(
        steps.values().all(|n| *n <= 2) && extra <= killed,
        "{extra} repeated entries for {killed} kills: {steps:?}"
    );
    let (status, ready) = readyz(&base).await.expect("server reachable");
    assert_eq!((status, ready["keys_unreadable"].as_u64()), (200, Some(0)), "{ready}");
    drop(lethe);

    // The restored vault holds none of the forgotten keys live: by its own account too.
    let keys = vault_keys(db.engine, &backup, "gone-").await;
    assert_eq!(keys.len(), subjects);
    assert_eq!(live(&keys), 0, "forgotten keys live in the restored vault");
    let vault = lethe_keyvault::open(
        &backup,
        OpenOptions {
            provider: Some(Arc::new(FileKeks::open(&keys_dir(&db)).expect("keys directory"))),
            ..OpenOptions::default()
        },
    )
    .await
    .expect("open the restored vault");
    let ids: Vec<KeyId> = keys.iter().map(|(id, _)| KeyId(*id)).collect();
    for (id, lookup) in vault.fetch_keys(&ids).await.expect("fetch keys") {
        assert!(matches!(lookup, KeyLookup::Destroyed), "{id:?}: {lookup:?}");
    }
    let stats = vault.stats().await.expect("stats");
    assert_eq!(stats.live_keys, kept as u64, "{stats:?}");
    drop(vault);

    report(&format!(
        "journal replay ({:?}): {subjects} subjects forgotten after the vault's backup (journal {} KiB), {killed} \
         SIGKILLs while Lethe started on the backup: {mid_replay} inside the replay, {before_replay} before it, \
         {ready_first} after it got ready (ms after spawn : forgotten keys still live = {}); a start with nothing to \
         re-apply took {:.1} s, the last one {:.1} s; then every key destroyed again, every stream erased with 1 \
         tombstone, 1 SubjectForgotten and 1 request per subject, {audited} erasure_reapplied entries ({reapplied} \
         subjects' keys destroyed again, each audited, once more where a kill fell between the entry and the destruction), {kept} other \
         subjects intact; forgetting took {:.1} s",
        db.engine,
        journal_bytes.div_ceil(1024),
        progress.join(", "),
        plain_start.as_secs_f64(),
        last_start.as_secs_f64(),
        forgetting.as_secs_f64(),
    ));
}
