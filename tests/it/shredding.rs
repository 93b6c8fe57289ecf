//! Crypto-shredding: encryption at rest (Guarantee 6), forgetting (7) and the key cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use lethe::model::ErasureFault;
use lethe::{
    Direction, ErasureReason, ErasureStatus, Error, EventStore, ExpectedVersion, LogFilter, NewEvent, StreamAppend,
    StreamStatus, SubjectId,
};
use lethe_keyvault::{Dek, KeyId, KeyLookup, KeyVault, NewKey, VaultError, VaultStats};
use serde_json::{Value, json};

use crate::appends::{append, events, stream};
use crate::backend_tests;
use crate::support::{Engine, TestDb, contains_bytes, sqlite_file_bytes};

const MARKER: &str = "Ada-Lovelace-7f3a9c-private-marker";

fn subject(id: &str) -> SubjectId {
    SubjectId::new(id).unwrap()
}

/// The seed's "register user": ids and flags in public, personal data in private, one call.
async fn register_user(store: &EventStore, id: &str) {
    store
        .append_multi(vec![
            append(
                &format!("user-public-{id}"),
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "UserRegistered",
                    json!({"user_id": id, "newsletter": true}),
                )],
            ),
            append(
                &format!("user-private-{id}"),
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "PersonalDataGiven",
                    json!({"name": MARKER, "address": "12 Analytical St"}),
                )],
            )
            .with_subject(subject(id)),
        ])
        .await
        .unwrap();
}

async fn read(store: &EventStore, name: &str) -> lethe::StreamSlice {
    let name = lethe::StreamName::parse_readable(name).unwrap();
    store.read_stream(&name, 0, Direction::Forward, 100).await.unwrap()
}

backend_tests!(
    forgetting_shreds_private_streams_and_keeps_public_ones,
    every_read_path_hides_forgotten_data,
    forget_is_idempotent,
    subject_binding_is_enforced,
    deleting_a_stream_shreds_only_that_stream,
    a_second_process_with_the_key_cached_cannot_decrypt_after_forget,
    moved_ciphertext_is_reported_as_corruption,
    forget_interrupted_at_any_step_resumes_to_completion,
    forget_with_vault_unreachable_resumes_when_it_is_back,
    reads_fetch_keys_once_per_page_then_from_cache,
    a_read_racing_a_forget_sees_the_stream_whole_or_erased,
);

async fn forgetting_shreds_private_streams_and_keeps_public_ones(db: TestDb) {
    let store = db.open().await;
    register_user(&store, "456").await;
    register_user(&store, "789").await;

    let erasure = store.forget(&subject("456"), ErasureReason::default()).await.unwrap();
    assert_eq!(erasure.status, ErasureStatus::Completed);
    assert_eq!(erasure.keys_destroyed, 1);
    assert!(!erasure.found_nothing());

    let public = read(&store, "user-public-456").await;
    assert_eq!(public.info.status, StreamStatus::Active);
    assert_eq!(
        public.events[0].data,
        Some(json!({"user_id": "456", "newsletter": true})),
        "public reads in full"
    );

    let private = read(&store, "user-private-456").await;
    assert_eq!(private.info.status, StreamStatus::Erased);
    let first = &private.events[0];
    assert_eq!((first.data.as_ref(), first.erased), (None, true));
    assert_eq!(
        first.event_type, "PersonalDataGiven",
        "everything but data stays intact"
    );
    let tombstone = private.events.last().unwrap();
    assert_eq!(tombstone.event_type, "$erased");
    assert_eq!(tombstone.data.as_ref().unwrap()["request_id"], json!(erasure.id));
    assert!(!tombstone.data.as_ref().unwrap().to_string().contains(MARKER));

    let erasures = read(&store, "$erasures").await;
    assert_eq!(erasures.events.len(), 1);
    let forgotten = &erasures.events[0];
    assert_eq!(forgotten.event_type, "SubjectForgotten");
    assert_eq!(
        forgotten.data,
        Some(
            json!({"subject": "456", "request_id": erasure.id, "streams": ["user-private-456"], "field_streams": [],
                    "keys_destroyed": 1})
        )
    );
    assert_eq!(Some(forgotten.position), erasure.tombstone_position);

    let other = read(&store, "user-private-789").await;
    assert_eq!(
        other.events[0].data.as_ref().unwrap()["name"],
        MARKER,
        "other subjects untouched"
    );

    let err = store
        .append(append("user-private-456", ExpectedVersion::Any, events(1, "e")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "stream_erased");
    // A new key for the erased stream can never be created, nor any key bound to the subject.
    let vault = db.vault().await;
    let err = vault
        .create_keys(&[NewKey {
            stream: "user-private-456".into(),
            subject: None,
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::KeyDestroyed { .. }));
    let err = vault
        .create_keys(&[NewKey {
            stream: "user-private-456".into(),
            subject: Some("456".into()),
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::SubjectForgotten { .. }));
    // The public stream still takes appends, and its references still resolve.
    store
        .append(append(
            "user-public-456",
            ExpectedVersion::Exact(0),
            events(1, "FlagSet"),
        ))
        .await
        .unwrap();
}

async fn every_read_path_hides_forgotten_data(db: TestDb) {
    let store = db.open().await;
    register_user(&store, "456").await;
    let mut live = Box::pin(store.subscribe(1, LogFilter::default()));
    let before = live.next().await.unwrap().unwrap();
    assert_eq!(before.stream, "user-public-456");
    store.forget(&subject("456"), ErasureReason::default()).await.unwrap();

    let contains_marker = |events: &[lethe::RecordedEvent]| {
        events
            .iter()
            .any(|e| e.data.as_ref().is_some_and(|d| d.to_string().contains(MARKER)))
    };
    let log = store.read_log(1, &LogFilter::default(), 100).await.unwrap();
    assert!(!contains_marker(&log.events), "global log");
    assert!(log.events.iter().any(|e| e.erased && e.stream == "user-private-456"));

    let caught_up: Vec<_> = store
        .subscribe(1, LogFilter::default())
        .take(log.events.len())
        .collect()
        .await;
    let caught_up: Vec<_> = caught_up.into_iter().map(Result::unwrap).collect();
    assert!(!contains_marker(&caught_up), "new subscription");
    // A subscription opened before the forget reads on after it: the private event arrives erased.
    let next = live.next().await.unwrap().unwrap();
    assert_eq!(
        (next.stream.as_str(), next.erased, next.data),
        ("user-private-456", true, None)
    );

    let backward = store
        .read_stream(&stream("user-private-456"), u64::MAX, Direction::Backward, 10)
        .await
        .unwrap();
    assert!(!contains_marker(&backward.events), "backward read");
}

async fn forget_is_idempotent(db: TestDb) {
    let store = db.open().await;
    register_user(&store, "456").await;
    let first = store.forget(&subject("456"), ErasureReason::default()).await.unwrap();
    let vault = db.vault().await;
    let destroyed = vault.stats().await.unwrap().destroyed_keys;
    let second = store.forget(&subject("456"), ErasureReason::default()).await.unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(second.status, ErasureStatus::Completed);
    assert!(second.found_nothing());
    assert_eq!(second.keys_destroyed, 0);
    assert_eq!(
        vault.stats().await.unwrap().destroyed_keys,
        destroyed,
        "nothing new destroyed"
    );
    let private = read(&store, "user-private-456").await;
    assert_eq!(
        private.events.iter().filter(|e| e.event_type == "$erased").count(),
        1,
        "one tombstone"
    );
    // Forgetting a subject that never had streams completes too.
    let nobody = store
        .forget(&subject("nobody"), ErasureReason::default())
        .await
        .unwrap();
    assert_eq!(nobody.status, ErasureStatus::Completed);
}

async fn subject_binding_is_enforced(db: TestDb) {
    let store = db.open().await;
    register_user(&store, "456").await;
    let cases = [
        ("user-private-456", Some("789"), "subject_mismatch"),
        ("user-public-456", Some("456"), "subject_mismatch"),
        ("user-private-456", Some("456"), "ok"),
        ("user-private-456", None, "ok"),
    ];
    for (name, bound_to, expected) in cases {
        let mut request = append(name, ExpectedVersion::Any, events(1, "e"));
        if let Some(s) = bound_to {
            request = request.with_subject(subject(s));
        }
        let got = match store.append(request).await {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        assert_eq!(got, expected, "append to {name} with subject {bound_to:?}");
    }
    let streams = store.subject_streams(&subject("456")).await.unwrap();
    assert_eq!(
        streams.iter().map(|s| s.stream.as_str()).collect::<Vec<_>>(),
        ["user-private-456"]
    );
}

async fn deleting_a_stream_shreds_only_that_stream(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("cart-1", ExpectedVersion::Any, events(3, "ItemAdded")))
        .await
        .unwrap();
    store
        .append(append("cart-2", ExpectedVersion::Any, events(1, "ItemAdded")))
        .await
        .unwrap();
    let erasure = store
        .delete_stream(&stream("cart-1"), ErasureReason::default())
        .await
        .unwrap();
    assert_eq!((erasure.status, erasure.keys_destroyed), (ErasureStatus::Completed, 1));
    let deleted = read(&store, "cart-1").await;
    assert_eq!(deleted.info.status, StreamStatus::Deleted);
    assert!(deleted.events[..3].iter().all(|e| e.erased && e.data.is_none()));
    assert_eq!(deleted.events[3].event_type, "$erased");
    assert!(read(&store, "cart-2").await.events[0].data.is_some());
    let err = store
        .append(append("cart-1", ExpectedVersion::Any, events(1, "e")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "stream_deleted");
    let again = store
        .delete_stream(&stream("cart-1"), ErasureReason::default())
        .await
        .unwrap_err();
    assert_eq!(again.code(), "stream_deleted");
    let missing = store
        .delete_stream(&stream("nope"), ErasureReason::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), "not_found");
    let erasures = read(&store, "$erasures").await;
    assert_eq!(erasures.events[0].event_type, "StreamDeleted");
}

async fn a_second_process_with_the_key_cached_cannot_decrypt_after_forget(db: TestDb) {
    let first = db.open().await;
    let second = db.open().await;
    register_user(&first, "456").await;
    // The second process reads, so it holds the private stream's key in its cache.
    assert!(read(&second, "user-private-456").await.events[0].data.is_some());
    let cached = second.cached_keys();
    assert!(cached >= 1);

    first.forget(&subject("456"), ErasureReason::default()).await.unwrap();
    let private = read(&second, "user-private-456").await;
    assert!(
        private.events[0].data.is_none() && private.events[0].erased,
        "status checked, key not used"
    );
    assert_eq!(
        second.cached_keys(),
        cached - 1,
        "the stale key is evicted (and zeroized)"
    );
}

async fn moved_ciphertext_is_reported_as_corruption(db: TestDb) {
    let store = db.open().await;
    store
        .append(append("a", ExpectedVersion::Any, events(2, "e")))
        .await
        .unwrap();
    store
        .append(append("b", ExpectedVersion::Any, events(1, "e")))
        .await
        .unwrap();
    // Same stream, other row; and another stream's row.
    db.execute("UPDATE events SET payload = (SELECT payload FROM events WHERE position = 1) WHERE position IN (2, 3)")
        .await;
    for (name, from) in [("a", 1), ("b", 0)] {
        match store.read_stream(&stream(name), from, Direction::Forward, 10).await {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("{name}: expected corruption, got {other:?}"),
        }
    }
    assert_eq!(
        store
            .read_stream(&stream("a"), 0, Direction::Forward, 1)
            .await
            .unwrap()
            .events
            .len(),
        1
    );
}

/// A vault whose destroy calls fail while `down` is set, and which counts fetch calls.
struct FlakyVault {
    inner: Arc<dyn KeyVault>,
    down: AtomicBool,
    fetches: AtomicUsize,
}

#[async_trait]
impl KeyVault for FlakyVault {
    async fn create_keys(&self, keys: &[NewKey]) -> Result<Vec<(KeyId, Dek)>, VaultError> {
        self.inner.create_keys(keys).await
    }
    async fn fetch_keys(&self, ids: &[KeyId]) -> Result<Vec<(KeyId, KeyLookup)>, VaultError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch_keys(ids).await
    }
    async fn destroy_subject_keys(&self, subject: &str) -> Result<Vec<KeyId>, VaultError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(VaultError::Unavailable("test: vault down".into()));
        }
        self.inner.destroy_subject_keys(subject).await
    }
    async fn destroy_stream_key(&self, stream: &str) -> Result<Option<KeyId>, VaultError> {
        self.inner.destroy_stream_key(stream).await
    }
    async fn stats(&self) -> Result<VaultStats, VaultError> {
        self.inner.stats().await
    }
    async fn health(&self) -> Result<(), VaultError> {
        self.inner.health().await
    }
    async fn kek_epochs(&self) -> Result<Vec<lethe_keyvault::EpochInfo>, VaultError> {
        self.inner.kek_epochs().await
    }
}

async fn flaky(db: &TestDb) -> Arc<FlakyVault> {
    Arc::new(FlakyVault {
        inner: db.vault().await,
        down: AtomicBool::new(false),
        fetches: AtomicUsize::new(0),
    })
}

/// After an erasure completed: data gone, key destroyed in the vault, tombstones exactly once.
async fn assert_forgotten(db: &TestDb, store: &EventStore, key_id: uuid::Uuid) {
    let private = read(store, "user-private-456").await;
    assert!(private.events[0].data.is_none());
    assert_eq!(private.events.iter().filter(|e| e.event_type == "$erased").count(), 1);
    let erasures = read(store, "$erasures").await;
    assert_eq!(erasures.events.len(), 1, "one SubjectForgotten");
    let vault = db.vault().await;
    let lookup = vault.fetch_keys(&[KeyId(key_id)]).await.unwrap();
    assert!(matches!(lookup[0].1, KeyLookup::Destroyed));
}

async fn forget_interrupted_at_any_step_resumes_to_completion(db: TestDb) {
    for fault in ErasureFault::ALL {
        let db = db.another().await;
        let mut config = db.config().await;
        config.erasure_fault = Some(fault);
        let crashing = db.open_with(config).await;
        register_user(&crashing, "456").await;
        let key_id = key_of(&db, "user-private-456").await;
        let err = crashing
            .forget(&subject("456"), ErasureReason::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), "injected_fault", "{fault:?}");
        // From the first step on, nothing decrypts any more.
        assert!(
            read(&crashing, "user-private-456").await.events[0].data.is_none(),
            "{fault:?}"
        );
        drop(crashing); // the "crash": no close, nothing more of this process runs

        let restarted = db.open().await;
        restarted.resume_erasures().await.unwrap();
        assert_forgotten(&db, &restarted, key_id).await;
        let again = restarted
            .forget(&subject("456"), ErasureReason::default())
            .await
            .unwrap();
        assert!(again.found_nothing(), "{fault:?}");
        assert_forgotten(&db, &restarted, key_id).await;
    }
}

/// The key id of a stream, read from the event database.
async fn key_of(db: &TestDb, stream: &str) -> uuid::Uuid {
    use sqlx::Connection;
    match db.engine {
        Engine::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar("SELECT key_id FROM streams WHERE name = ?1")
                .bind(stream)
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
        Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar("SELECT key_id FROM streams WHERE name = $1")
                .bind(stream)
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    }
}

async fn forget_with_vault_unreachable_resumes_when_it_is_back(db: TestDb) {
    let vault = flaky(&db).await;
    let mut config = db.config().await;
    config.keyvault = vault.clone();
    let store = db.open_with(config).await;
    register_user(&store, "456").await;
    let key_id = key_of(&db, "user-private-456").await;

    vault.down.store(true, Ordering::SeqCst);
    let err = store
        .forget(&subject("456"), ErasureReason::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "keyvault_unavailable");
    assert!(
        read(&store, "user-private-456").await.events[0].data.is_none(),
        "already unreadable"
    );
    assert_eq!(
        store.resume_erasures().await.unwrap_err().code(),
        "keyvault_unavailable"
    );
    // While the erasure is unfinished, no new stream can be bound to the subject (it would
    // lose its key to the vault step without being listed, shredded or tombstoned).
    let late = append("account-9", ExpectedVersion::Any, events(1, "Opened")).with_subject(subject("456"));
    assert_eq!(
        store.append(late.clone()).await.unwrap_err().code(),
        "erasure_in_progress"
    );

    vault.down.store(false, Ordering::SeqCst);
    assert_eq!(store.resume_erasures().await.unwrap(), 1);
    assert_forgotten(&db, &store, key_id).await;
    // Once it completed, the subject stays forgotten: nothing is bound to it again.
    assert_eq!(store.append(late).await.unwrap_err().code(), "subject_forgotten");
}

async fn reads_fetch_keys_once_per_page_then_from_cache(db: TestDb) {
    let vault = flaky(&db).await;
    let mut config = db.config().await;
    config.keyvault = vault.clone();
    let store = db.open_with(config).await;
    for i in 0..10 {
        store
            .append(append(&format!("s-{i}"), ExpectedVersion::Any, events(10, "e")))
            .await
            .unwrap();
    }
    // A fresh process: empty cache.
    drop(store);
    let mut config = db.config().await;
    config.keyvault = vault.clone();
    let store = db.open_with(config).await;
    vault.fetches.store(0, Ordering::SeqCst);
    let page = store.read_log(1, &LogFilter::default(), 100).await.unwrap();
    assert_eq!(page.events.len(), 100);
    assert!(page.events.iter().all(|e| e.data.is_some()));
    assert_eq!(
        vault.fetches.load(Ordering::SeqCst),
        1,
        "one vault call for the page's 10 keys"
    );
    store.read_log(1, &LogFilter::default(), 100).await.unwrap();
    assert_eq!(vault.fetches.load(Ordering::SeqCst), 1, "then the cache");
    assert!(store.key_cache_stats().hits >= 10);
}

/// Encrypted at rest: the marker never appears in the SQLite files, every payload is a version-1
/// envelope, and an independent program decrypts a stored event from what SECURITY.md says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_files_never_hold_plaintext_and_lose_the_key_on_forget() {
    let db = TestDb::sqlite().await;
    let store = db.open().await;
    register_user(&store, "456").await;
    for i in 0..50 {
        let event = NewEvent::new("Noted", json!({ "note": format!("{MARKER}-{i}") }));
        store
            .append(StreamAppend::new(
                stream("user-private-456"),
                ExpectedVersion::Any,
                vec![event],
            ))
            .await
            .unwrap();
    }
    let events_db = db.dir.path().join("events.db");
    let vault_db = db.dir.path().join("keyvault.db");
    let files = sqlite_file_bytes;
    let found = contains_bytes;
    assert!(
        !found(&files(&events_db), MARKER.as_bytes()),
        "no plaintext in the event database"
    );
    assert!(
        found(&files(&events_db), b"user-private-456"),
        "the scan is real: names are in clear"
    );

    let key_id = key_of(&db, "user-private-456").await;
    let wrapped: Vec<u8> = {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", vault_db.display()))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT wrapped FROM vault_key_material WHERE id = ?1")
            .bind(key_id)
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    assert!(
        found(&files(&vault_db), &wrapped),
        "the wrapped key is in the vault file before"
    );
    // Guarantee 8: the event database holds key ids, never key bytes (raw or wrapped).
    let vault = db.vault().await;
    let dek = match &vault.fetch_keys(&[KeyId(key_id)]).await.unwrap()[0].1 {
        KeyLookup::Live(dek) => dek.expose_secret().to_vec(),
        other => panic!("expected a live key, got {other:?}"),
    };
    let event_files = files(&events_db);
    assert!(!found(&event_files, &dek), "no DEK bytes in the event database");
    assert!(!found(&event_files, &wrapped), "no wrapped DEK in the event database");
    assert!(
        found(&event_files, key_id.as_bytes()),
        "the scan is real: the key id is there"
    );

    independent_decryption(&db, &vault_db, key_id).await;

    store.forget(&subject("456"), ErasureReason::default()).await.unwrap();
    assert!(
        !found(&files(&vault_db), &wrapped),
        "the wrapped key is gone from the vault file and WAL"
    );
    assert!(!found(&files(&events_db), MARKER.as_bytes()));
}

async fn independent_decryption(db: &TestDb, vault_db: &std::path::Path, key_id: uuid::Uuid) {
    use sqlx::{Connection, Row};
    let ready = std::process::Command::new("python3")
        .args(["-c", "from cryptography.hazmat.primitives.ciphers.aead import AESGCM"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        assert!(std::env::var_os("CI").is_none(), "CI needs python3 with `cryptography`");
        eprintln!("independent decryption skipped: python3 with `cryptography` not available");
        return;
    }
    let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let row =
        sqlx::query("SELECT stream, event_id, payload FROM events WHERE stream = 'user-private-456' AND version = 0")
            .fetch_one(&mut c)
            .await
            .unwrap();
    let (name, event_id, payload): (String, uuid::Uuid, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(payload[0], 1, "version byte");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/keyvault/tests/independent_unwrap.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg("--db")
        .arg(vault_db)
        .arg("--kek-file")
        .arg(db.dir.path().join("kek.key"))
        .args(["--key-id", &key_id.to_string()])
        .args(["--stream", &name])
        .args(["--event-id", &event_id.to_string()])
        .args(["--payload-hex", &hex::encode(&payload)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plaintext = hex::decode(answer["plaintext_hex"].as_str().unwrap()).unwrap();
    let data: Value = serde_json::from_slice(&plaintext).unwrap();
    assert_eq!(data["name"], MARKER);
}

/// A stream read is one picture: while a forget runs, a read answers either the live stream
/// with all its data or the erased stream with none — never `status: active` with erased
/// events, never `erased` with data. (Its status and its events come from separate queries,
/// and the forget's shred commits between them in some of these rounds.)
async fn a_read_racing_a_forget_sees_the_stream_whole_or_erased(db: TestDb) {
    const USERS: usize = 60;
    let store = db.open().await;
    for i in 0..USERS {
        register_user(&store, &format!("race-{i}")).await;
    }
    let (mut whole, mut erased) = (0, 0);
    for i in 0..USERS {
        let forget = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .forget(&subject(&format!("race-{i}")), ErasureReason::default())
                    .await
                    .unwrap()
            })
        };
        let mut readers = Vec::new();
        for _ in 0..4 {
            let store = store.clone();
            let name = format!("user-private-race-{i}");
            readers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..25 {
                    seen.push(read(&store, &name).await);
                }
                seen
            }));
        }
        forget.await.unwrap();
        for reader in readers {
            for slice in reader.await.unwrap() {
                let private: Vec<_> = slice.events.iter().filter(|e| e.event_type != "$erased").collect();
                if slice.info.status == StreamStatus::Active {
                    assert!(
                        private.iter().all(|e| !e.erased && e.data.is_some()),
                        "an active stream read with erased events: {:?}",
                        slice.events
                    );
                    whole += 1;
                } else {
                    assert!(
                        private.iter().all(|e| e.erased && e.data.is_none()),
                        "an erased stream read with data"
                    );
                    erased += 1;
                }
            }
        }
    }
    assert!(
        whole > 0 && erased > 0,
        "reads saw both sides ({whole} whole, {erased} erased)"
    );
}

backend_tests!(export_yields_every_event_of_the_subjects_streams);

async fn export_yields_every_event_of_the_subjects_streams(db: TestDb) {
    let store = db.open().await;
    register_user(&store, "456").await;
    register_user(&store, "789").await;
    for _ in 0..2 {
        store
            .append(append("account-1", ExpectedVersion::Any, events(600, "Posted")).with_subject(subject("456")))
            .await
            .unwrap();
    }
    let export: Vec<_> = store.export_subject(subject("456")).collect().await;
    let export: Vec<lethe::RecordedEvent> = export.into_iter().map(Result::unwrap).collect();
    assert_eq!(export.len(), 1201, "paged across several reads");
    assert_eq!(export[0].stream, "account-1");
    assert_eq!(export[1200].stream, "user-private-456");
    assert_eq!(export[1200].data.as_ref().unwrap()["name"], MARKER);
    assert!(
        export
            .iter()
            .all(|e| e.stream != "user-private-789" && e.stream != "user-public-456")
    );
}

/// On PostgreSQL another process evicts a forgotten subject's keys when the revocation
/// notification arrives, without having to read a shredded row first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_revocation_notifications_evict_keys_in_other_processes() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let first = db.open().await;
    let second = db.open().await;
    register_user(&first, "456").await;
    assert!(read(&second, "user-private-456").await.events[0].data.is_some());
    let cached = second.cached_keys();
    first.forget(&subject("456"), ErasureReason::default()).await.unwrap();
    let mut evicted = false;
    for _ in 0..100 {
        if second.cached_keys() < cached {
            evicted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        evicted,
        "the second process evicted the destroyed key on notification alone"
    );
}
