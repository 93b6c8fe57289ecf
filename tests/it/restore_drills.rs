//! Restore drills through `lethe serve` (in-process, as configured by `lethe serve`: keys
//! directory, KEK epochs, erasure journal, reconciliation at start), on both engines. A backup
//! of the databases — SQLite's files or PostgreSQL databases copied as templates — is taken
//! before a subject is forgotten and restored after it: both databases, only the vault, only
//! the event database. In every case the forgotten subject's data does not read back, and
//! everything else does.

use std::time::Duration;

use lethe::server::{RunningServer, ServeConfig};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Part, TestDb};

const ADMIN: &str = "an-admin-token-of-32-characters!";

backend_tests!(restoring_a_backup_from_before_a_forget_never_brings_the_subject_back);

fn config(db: &TestDb, events_url: &str, vault_url: &str) -> ServeConfig {
    let mut config = ServeConfig::embedded(db.dir.path().join("lethe-data"));
    config.keys_dir = db.dir.path().join("lethe-keys");
    config.database_url = Some(events_url.to_owned());
    config.keyvault_url = Some(vault_url.to_owned());
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin_token = Some(ADMIN.into());
    config
}

async fn call(server: &RunningServer, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{}{path}", server.addr))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn append(server: &RunningServer, stream: &str, subject: Option<&str>, data: Value) {
    let mut body = json!({ "events": [{ "type": "Noted", "data": data }] });
    if let Some(subject) = subject {
        body["subject"] = json!(subject);
    }
    let (status, answer) = call(server, reqwest::Method::POST, &format!("/streams/{stream}"), Some(body)).await;
    assert_eq!(status, 201, "{answer}");
}

/// Every `data` of a stream and of the whole log for that stream.
async fn data_of(server: &RunningServer, stream: &str) -> (Value, Vec<Value>) {
    let (_, page) = call(server, reqwest::Method::GET, &format!("/streams/{stream}"), None).await;
    let (_, log) = call(server, reqwest::Method::GET, "/log?from=1&limit=1000", None).await;
    let in_log = log["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["stream"] == stream && e["type"] != "$erased")
                .map(|e| e["data"].clone())
                .collect()
        })
        .unwrap_or_default();
    (page, in_log)
}

async fn assert_forgotten_and_the_rest_intact(server: &RunningServer, drill: &str) {
    let (page, in_log) = data_of(server, "user-private-1").await;
    assert_eq!(page["status"], "erased", "{drill}: {page}");
    assert!(
        page["events"]
            .as_array()
            .is_some_and(|e| e.iter().filter(|e| e["type"] != "$erased").all(|e| e["data"].is_null())),
        "{drill}: {page}"
    );
    assert!(
        in_log.iter().all(Value::is_null),
        "{drill}: the log yields no data: {in_log:?}"
    );
    let text = serde_json::to_string(&page).unwrap_or_default();
    assert!(!text.contains("Ada"), "{drill}");

    let (other, _) = data_of(server, "user-private-2").await;
    assert_eq!(
        other["events"][0]["data"]["name"], "Grace",
        "{drill}: another subject is untouched"
    );
    let (public, _) = data_of(server, "user-public-1").await;
    assert_eq!(
        public["events"][0]["data"]["user_id"], "1",
        "{drill}: the public stream is untouched"
    );

    let (status, _) = call(
        server,
        reqwest::Method::POST,
        "/streams/user-private-1",
        Some(json!({ "subject": "s-1", "events": [{ "type": "Noted", "data": { "name": "Ada" } }] })),
    )
    .await;
    assert_eq!(status, 410, "{drill}: the erased stream takes no new events");
}

async fn restoring_a_backup_from_before_a_forget_never_brings_the_subject_back(mut db: TestDb) {
    let (live_events, live_vault) = (db.url.clone(), db.vault_url.clone());
    let server = lethe::server::start(config(&db, &live_events, &live_vault))
        .await
        .expect("start");
    append(&server, "user-private-1", Some("s-1"), json!({ "name": "Ada" })).await;
    append(&server, "user-private-2", Some("s-2"), json!({ "name": "Grace" })).await;
    append(&server, "user-public-1", None, json!({ "user_id": "1" })).await;
    server.stop().await.expect("stop");

    // The backups, taken before the forget (one copy per drill: a drill changes what it opens).
    let mut events_backups = Vec::new();
    let mut vault_backups = Vec::new();
    for _ in 0..2 {
        events_backups.push(db.backup(Part::Events).await);
        vault_backups.push(db.backup(Part::Vault).await);
    }

    let server = lethe::server::start(config(&db, &live_events, &live_vault))
        .await
        .expect("restart");
    let (status, erasure) = call(
        &server,
        reqwest::Method::POST,
        "/admin/subjects/s-1/forget",
        Some(json!({ "reason": "drill", "requested_by": "dpo" })),
    )
    .await;
    assert_eq!(status, 202, "{erasure}");
    let id = erasure["request_id"].as_str().expect("request id").to_owned();
    let mut status = Value::Null;
    for _ in 0..400 {
        let (_, now) = call(&server, reqwest::Method::GET, &format!("/admin/erasures/{id}"), None).await;
        status = now["status"].clone();
        if status == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, "completed");
    assert_forgotten_and_the_rest_intact(&server, "live").await;
    server.stop().await.expect("stop");

    let drills = [
        (
            "both databases restored",
            events_backups[0].clone(),
            vault_backups[0].clone(),
        ),
        ("only the vault restored", live_events.clone(), vault_backups[1].clone()),
        (
            "only the event database restored",
            events_backups[1].clone(),
            live_vault.clone(),
        ),
    ];
    for (drill, events, vault) in drills {
        let server = lethe::server::start(config(&db, &events, &vault))
            .await
            .unwrap_or_else(|e| panic!("{drill}: start: {e}"));
        assert_forgotten_and_the_rest_intact(&server, drill).await;
        let (_, audit) = call(
            &server,
            reqwest::Method::GET,
            "/admin/audit?action=erasure_reapplied",
            None,
        )
        .await;
        assert!(
            audit["entries"].as_array().is_some_and(|e| !e.is_empty()),
            "{drill}: the repair is audited: {audit}"
        );
        server.stop().await.expect("stop");
    }
}

/// The embedded default as a new user backs it up: a copy of `./lethe-data` taken while the
/// server is stopped, restored after a forget, with `./lethe-keys` as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_restored_from_a_copy_of_its_data_directory_forgets_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("lethe-data");
    let embedded = || {
        let mut config = ServeConfig::embedded(&data);
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.admin_token = Some(ADMIN.into());
        config
    };
    let server = lethe::server::start(embedded()).await.expect("start");
    append(&server, "user-private-1", Some("s-1"), json!({ "name": "Ada" })).await;
    append(&server, "user-private-2", Some("s-2"), json!({ "name": "Grace" })).await;
    append(&server, "user-public-1", None, json!({ "user_id": "1" })).await;
    server.stop().await.expect("stop");

    let backup = tmp.path().join("backup");
    copy_stopped_directory(&data, &backup);

    let server = lethe::server::start(embedded()).await.expect("restart");
    let (status, erasure) = call(
        &server,
        reqwest::Method::POST,
        "/admin/subjects/s-1/forget",
        Some(json!({ "reason": "drill", "requested_by": "dpo" })),
    )
    .await;
    assert_eq!(status, 202, "{erasure}");
    server.stop().await.expect("stop");

    std::fs::remove_dir_all(&data).expect("remove");
    std::fs::rename(&backup, &data).expect("restore");
    let server = lethe::server::start(embedded())
        .await
        .expect("start on the restored copy");
    assert_forgotten_and_the_rest_intact(&server, "data directory restored").await;
    server.stop().await.expect("stop");
}

/// Copies `from` (a stopped server's data directory) into a new directory `to`, as a user's
/// `cp -r` would. SQLite may still be removing its `-wal`/`-shm` files right after the server
/// stopped (the last connection's close checkpoints and deletes them): a copy that meets a file
/// vanishing starts over, so that it never pairs a database file from before that checkpoint
/// with a missing WAL.
fn copy_stopped_directory(from: &std::path::Path, to: &std::path::Path) {
    for _ in 0..50 {
        let _ = std::fs::remove_dir_all(to);
        std::fs::create_dir(to).expect("mkdir");
        let copied = std::fs::read_dir(from).expect("list").all(|entry| {
            let entry = entry.expect("entry");
            match std::fs::copy(entry.path(), to.join(entry.file_name())) {
                Ok(_) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => panic!("copy: {e}"),
            }
        });
        if copied {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} kept changing", from.display());
}
