//! KEK epochs seen from the event store, on an injected clock: the vault rotates and retires
//! its epochs by itself, every key stays readable across rotations, each rotation and each
//! destroyed epoch is audited once, and a backup older than rotation + retention opens with
//! its keys unreadable — reported, never a crash. Then the `pkcs11` provider through the real
//! `lethe serve` on SoftHSM2.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lethe::model::{AuditQuery, ExpectedVersion, NewEvent, StreamAppend};
use lethe::store::{EventStore, StoreConfig};
use lethe_keyvault::{EpochPolicy, EpochState, FileKeks, KeyVault, ManualClock, OpenOptions};
use serde_json::json;

use crate::backend_tests;
use crate::support::{Part, TestDb};

const HOUR: Duration = Duration::from_secs(3600);

backend_tests!(kek_epochs_rotate_retire_and_are_audited_once);

async fn open_vault(url: &str, keys: &std::path::Path, clock: &Arc<ManualClock>) -> Arc<dyn KeyVault> {
    lethe_keyvault::open(
        url,
        OpenOptions {
            provider: Some(Arc::new(FileKeks::create_dir(keys).expect("keys directory"))),
            epoch_policy: EpochPolicy {
                rotate_every: 2 * HOUR,
                retain: HOUR,
                check_every: Duration::from_millis(20),
                ..EpochPolicy::default()
            },
            clock: Some(clock.clone()),
            ..OpenOptions::default()
        },
    )
    .await
    .expect("open vault")
}

fn stream_name(name: &str) -> lethe::StreamName {
    lethe::StreamName::parse_readable(name).expect("name")
}

async fn name_of(store: &EventStore, stream: &str) -> serde_json::Value {
    let name = lethe::StreamName::parse_readable(stream).expect("name");
    let page = store
        .read_stream(&name, 0, lethe::model::Direction::Forward, 10)
        .await
        .expect("read");
    page.events[0]
        .data
        .clone()
        .map_or(serde_json::Value::Null, |d| d["name"].clone())
}

/// Waits until the vault reports `epoch` in `state` (its background task ticks every 20 ms).
async fn wait_for(vault: &Arc<dyn KeyVault>, epoch: u32, state: EpochState) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let epochs = vault.kek_epochs().await.expect("epochs");
        if epochs.iter().any(|e| e.epoch == epoch && e.state == state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "epoch {epoch} never became {state:?}: {epochs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn audited(store: &EventStore, action: &str) -> Vec<serde_json::Value> {
    store
        .audit_entries(&AuditQuery {
            action: Some(action.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_iter()
        .map(|e| e.details)
        .collect()
}

async fn kek_epochs_rotate_retire_and_are_audited_once(mut db: TestDb) {
    let keys = db.dir.path().join("epoch-keys");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000_000));
    {
        let vault = open_vault(&db.vault_url, &keys, &clock).await;
        let store = EventStore::open(StoreConfig::new(&db.url, vault.clone()))
            .await
            .expect("open");
        store
            .append(
                StreamAppend::new(
                    stream_name("profile-1"),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("Named", json!({ "name": "Ada" }))],
                )
                .with_subject(lethe::model::SubjectId::new("p-1").expect("subject")),
            )
            .await
            .expect("append");
        store.close().await;
    }
    // Both databases as they are in epoch 1: the backup of this drill.
    let old_events = db.backup(Part::Events).await;
    let old_vault = db.backup(Part::Vault).await;

    let vault = open_vault(&db.vault_url, &keys, &clock).await;
    let store = EventStore::open(StoreConfig::new(&db.url, vault.clone()))
        .await
        .expect("reopen");
    wait_for(&vault, 1, EpochState::Active).await;
    assert_eq!(
        store.audit_kek_epochs().await.expect("audit"),
        0,
        "nothing happened yet"
    );

    clock.advance(2 * HOUR + Duration::from_secs(1));
    wait_for(&vault, 2, EpochState::Active).await;
    wait_for(&vault, 1, EpochState::Retired).await;
    assert_eq!(name_of(&store, "profile-1").await, "Ada", "re-wrapped, still readable");
    assert_eq!(store.audit_kek_epochs().await.expect("audit"), 1);
    assert_eq!(store.audit_kek_epochs().await.expect("audit"), 0, "once, not again");
    let rotated = audited(&store, "kek_rotated").await;
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert_eq!(
        (rotated[0]["from_epoch"].as_u64(), rotated[0]["to_epoch"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(
        keys.join("kek-0000000001.key").exists(),
        "kept until its retention ends"
    );

    clock.advance(HOUR + Duration::from_secs(1));
    wait_for(&vault, 1, EpochState::Destroyed).await;
    assert!(
        !keys.join("kek-0000000001.key").exists(),
        "the superseded epoch's file is gone"
    );
    assert_eq!(store.audit_kek_epochs().await.expect("audit"), 1);
    let destroyed = audited(&store, "kek_epoch_destroyed").await;
    assert_eq!(destroyed.len(), 1, "{destroyed:?}");
    assert_eq!(destroyed[0]["epoch"].as_u64(), Some(1));
    assert_eq!(name_of(&store, "profile-1").await, "Ada");
    assert_eq!(store.keys_unreadable().await.expect("stats"), 0);
    assert!(store.verify_audit().await.expect("verify").is_intact());
    store.close().await;
    // The restored copy replaces this timeline (one vault database per keys directory).
    drop(store);
    drop(vault);

    // The backup taken in epoch 1, older than rotation + retention, restored beside the keys
    // directory as it is now: it opens (a new epoch for new keys), its key is reported
    // unreadable, and its event reads as gone — no panic, no error on the read path.
    let restored_vault = open_vault(&old_vault, &keys, &clock).await;
    let restored = EventStore::open(StoreConfig::new(&old_events, restored_vault.clone()))
        .await
        .expect("an old backup opens");
    assert_eq!(restored.keys_unreadable().await.expect("stats"), 1);
    assert_eq!(name_of(&restored, "profile-1").await, serde_json::Value::Null);
    let refused = restored
        .append(StreamAppend::new(
            stream_name("profile-1"),
            ExpectedVersion::Any,
            vec![NewEvent::new("Named", json!({ "name": "Ada" }))],
        ))
        .await
        .expect_err("no event is sealed under a key that cannot be read");
    assert_eq!(refused.code(), "key_unreadable", "{refused}");
    let epochs = restored_vault.kek_epochs().await.expect("epochs");
    assert!(
        epochs
            .iter()
            .any(|e| e.epoch == 1 && e.state == EpochState::Missing && e.live_keys == 1),
        "{epochs:?}"
    );
    restored
        .append(StreamAppend::new(
            stream_name("profile-2"),
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Named", json!({ "name": "Grace" }))],
        ))
        .await
        .expect("new keys still work");
    assert_eq!(name_of(&restored, "profile-2").await, "Grace");
    // Epoch 2 wrapped the discarded timeline's keys and the restored database never knew it:
    // it is retired from the restore on, and destroyed after the retention like any other, so
    // that timeline's backups become unreadable too.
    wait_for(&restored_vault, 2, EpochState::Retired).await;
    assert!(keys.join("kek-0000000002.key").exists());
    clock.advance(HOUR + Duration::from_secs(1));
    wait_for(&restored_vault, 2, EpochState::Destroyed).await;
    assert!(!keys.join("kek-0000000002.key").exists());
    assert_eq!(name_of(&restored, "profile-2").await, "Grace", "its own epoch stays");
    restored.close().await;
}

/// The `pkcs11` provider through `lethe serve` on a SoftHSM2 token: the KEK lives in the token,
/// data written before a restart reads after it, and a wrong PIN stops the start with an
/// error naming the PIN file's setting, never the PIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lethe_serve_keeps_its_keks_in_an_hsm() {
    if Command::new("softhsm2-util").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but SoftHSM2 is missing");
        eprintln!("PKCS#11 test skipped: softhsm2-util not installed");
        return;
    }
    let module = std::env::var("LETHE_TEST_PKCS11_MODULE").unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
    let tmp = tempfile::tempdir().expect("tempdir");
    let tokens = tmp.path().join("tokens");
    std::fs::create_dir(&tokens).expect("mkdir");
    let conf = tmp.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .expect("conf");
    let init = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "lethe-it",
            "--pin",
            "user-pin-1234",
            "--so-pin",
            "so-pin-5678",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let pin = tmp.path().join("pin");
    let wrong = tmp.path().join("wrong-pin");
    for (file, text) in [(&pin, "user-pin-1234\n"), (&wrong, "not-the-pin-9876\n")] {
        std::fs::write(file, text).expect("pin file");
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    }
    let data = tmp.path().join("lethe-data");
    let keys = tmp.path().join("lethe-keys");
    let serve = |pin_file: &std::path::Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lethe"));
        command
            .arg("serve")
            .env("LETHE_DATA_DIR", &data)
            .env("LETHE_KEYS_DIR", &keys)
            .env("LETHE_KEK_PROVIDER", "pkcs11")
            .env("LETHE_PKCS11_MODULE", &module)
            .env("LETHE_PKCS11_TOKEN", "lethe-it")
            .env("LETHE_PKCS11_PIN_FILE", pin_file)
            .env("SOFTHSM2_CONF", &conf)
            .env("LETHE_ADMIN_TOKEN", "an-admin-token-of-32-characters!")
            .env("LETHE_LOG", "warn")
            .env_remove("LETHE_DATABASE_URL")
            .env_remove("LETHE_KEYVAULT_URL")
            .env_remove("LETHE_KEK")
            .env_remove("LETHE_KEK_FILE");
        command
    };

    let refused = serve(&wrong)
        .env("LETHE_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run lethe serve");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a wrong PIN must stop the start");
    assert!(stderr.contains("LETHE_PKCS11_PIN_FILE"), "{stderr}");
    assert!(
        !stderr.contains("not-the-pin") && !stderr.contains("user-pin-1234"),
        "{stderr}"
    );

    for round in 0..2 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let mut child = serve(&pin)
            .env("LETHE_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn lethe serve");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(child.try_wait().expect("wait").is_none(), "lethe serve exited");
            assert!(Instant::now() < deadline, "not ready in 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let auth = "Bearer an-admin-token-of-32-characters!";
        if round == 0 {
            let appended = client
                .post(format!("{base}/streams/profile-1"))
                .header("authorization", auth)
                .json(&json!({ "subject": "p-1", "events": [{ "type": "Named", "data": { "name": "Ada" } }] }))
                .send()
                .await
                .expect("append");
            assert_eq!(appended.status(), 201);
        }
        let page: serde_json::Value = client
            .get(format!("{base}/streams/profile-1"))
            .header("authorization", auth)
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        assert_eq!(page["events"][0]["data"]["name"], "Ada", "round {round}");
        child.kill().expect("kill");
        child.wait().expect("reap");
    }
    let names: Vec<String> = std::fs::read_dir(&keys)
        .expect("keys directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("kek")),
        "no KEK file with the HSM provider: {names:?}"
    );
}
