//! The erasure journal (design: "Keys, backups and restores"): every key destruction is
//! appended, hash-chained and fsynced, before the vault destroys anything; the chain is verified
//! at open; and its replay at open makes a database restored from a backup taken before a
//! forget — the vault, the event database, or both — forget again before the store serves.

use futures::StreamExt;
use lethe::model::{AuditQuery, ErasureFault};
use lethe::{
    Direction, Erasure, ErasureReason, ErasureStatus, Error, EventStore, ExpectedVersion, JournalError, LogFilter,
    NewEvent, StoreConfig, StreamSlice, StreamStatus, SubjectId,
};
use lethe_keyvault::{KeyId, KeyLookup, NewKey, VaultError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::appends::{append, events};
use crate::backend_tests;
use crate::support::{Part, TestDb};

pub(crate) const MARKER: &str = "Grace-Hopper-journal-3b7e-private-marker";

pub(crate) fn subject(id: &str) -> SubjectId {
    SubjectId::new(id).unwrap()
}

pub(crate) fn reason() -> ErasureReason {
    ErasureReason {
        reason: Some("Art. 17".into()),
        requested_by: Some("dpo".into()),
        reference: None,
    }
}

/// The seed's "register user": ids in public, personal data in private (bound to the subject).
pub(crate) async fn register_user(store: &EventStore, id: &str) {
    store
        .append_multi(vec![
            append(
                &format!("user-public-{id}"),
                ExpectedVersion::NoStream,
                vec![NewEvent::new("UserRegistered", json!({"user_id": id}))],
            ),
            append(
                &format!("user-private-{id}"),
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "PersonalDataGiven",
                    json!({"name": format!("{MARKER}-{id}")}),
                )],
            )
            .with_subject(subject(id)),
        ])
        .await
        .unwrap();
}

pub(crate) async fn read(store: &EventStore, name: &str) -> StreamSlice {
    let name = lethe::StreamName::parse_readable(name).unwrap();
    store.read_stream(&name, 0, Direction::Forward, 100).await.unwrap()
}

/// A store's configuration on these databases, with the test's journal (or none) and
/// reconciliation at open (or not).
pub(crate) async fn config_on(db: &TestDb, events: &str, vault: &str, journal: bool, reconcile: bool) -> StoreConfig {
    let mut config = StoreConfig::new(events, db.vault_at(vault).await);
    config.erasure_journal = journal.then(|| db.journal_path());
    config.reconcile_at_open = reconcile;
    config
}

pub(crate) async fn open_on(db: &TestDb, events: &str, vault: &str, journal: bool, reconcile: bool) -> EventStore {
    EventStore::open(config_on(db, events, vault, journal, reconcile).await)
        .await
        .expect("open store")
}

/// Backups of both databases taken before subject 456 was forgotten.
pub(crate) struct Restore {
    pub(crate) events_backup: String,
    pub(crate) vault_backup: String,
    pub(crate) forget: Erasure,
    /// The key of `user-private-456`.
    pub(crate) key: KeyId,
}

/// Users 456 and 789 registered; both databases backed up; then 456 forgotten (with the
/// test's journal or without one).
pub(crate) async fn forget_after_backups(db: &mut TestDb, journal: bool) -> Restore {
    let (events, vault) = (db.url.clone(), db.vault_url.clone());
    let store = open_on(db, &events, &vault, journal, false).await;
    register_user(&store, "456").await;
    register_user(&store, "789").await;
    store.close().await;
    drop(store);
    let events_backup = db.backup(Part::Events).await;
    let vault_backup = db.backup(Part::Vault).await;
    let store = open_on(db, &events, &vault, journal, false).await;
    let forget = store.forget(&subject("456"), reason()).await.unwrap();
    assert_eq!(forget.status, ErasureStatus::Completed);
    let key = KeyId(forget.streams.as_ref().unwrap()[0].key_id.unwrap());
    store.close().await;
    Restore {
        events_backup,
        vault_backup,
        forget,
        key,
    }
}

/// Whether any read path — stream read, the log, a subscription, the export — yields data of
/// 456; and that 789 and the public streams are untouched.
pub(crate) async fn assert_456_unreadable_789_intact(store: &EventStore) {
    let holds_456 = |events: &[lethe::RecordedEvent]| {
        events.iter().any(|e| {
            e.data
                .as_ref()
                .is_some_and(|d| d.to_string().contains(&format!("{MARKER}-456")))
        })
    };
    let private = read(store, "user-private-456").await;
    assert_eq!(private.info.status, StreamStatus::Erased);
    assert_eq!(
        (private.events[0].data.as_ref(), private.events[0].erased),
        (None, true)
    );
    let log = store.read_log(1, &LogFilter::default(), 1000).await.unwrap();
    assert!(!holds_456(&log.events), "the log");
    let subscribed: Vec<_> = store
        .subscribe(1, LogFilter::default())
        .take(log.events.len())
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(!holds_456(&subscribed), "a subscription");
    let exported: Vec<_> = store.export_subject(subject("456")).map(Result::unwrap).collect().await;
    assert!(!holds_456(&exported), "the export");
    let err = store
        .append(append("user-private-456", ExpectedVersion::Any, events(1, "e")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "stream_erased");

    let public = read(store, "user-public-456").await;
    assert_eq!(public.info.status, StreamStatus::Active);
    assert_eq!(public.events[0].data, Some(json!({"user_id": "456"})));
    let other = read(store, "user-private-789").await;
    assert_eq!(other.info.status, StreamStatus::Active);
    assert_eq!(other.events[0].data.as_ref().unwrap()["name"], format!("{MARKER}-789"));
}

/// Exactly one `$erased` in the stream and one `SubjectForgotten` for 456 in `$erasures`.
pub(crate) async fn assert_tombstoned_once(store: &EventStore) {
    let private = read(store, "user-private-456").await;
    assert_eq!(private.events.iter().filter(|e| e.event_type == "$erased").count(), 1);
    let erasures = read(store, "$erasures").await;
    let forgotten: Vec<_> = erasures
        .events
        .iter()
        .filter(|e| e.event_type == "SubjectForgotten" && e.data.as_ref().unwrap()["subject"] == "456")
        .collect();
    assert_eq!(forgotten.len(), 1, "{:?}", erasures.events);
}

/// The `erasure_reapplied` entries of the audit trail.
pub(crate) async fn reapplied(store: &EventStore) -> Vec<lethe::model::AuditEntry> {
    store
        .audit_entries(&AuditQuery {
            action: Some("erasure_reapplied".into()),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

/// The journal's lines, checked the way SECURITY.md states the chain, without the library:
/// each line is its members sorted by name, no whitespace; `hash` is hex SHA-256 over the
/// previous hash (32 zero bytes first) and the line without `prev` and `hash`.
fn journal_lines(db: &TestDb) -> Vec<Value> {
    let text = std::fs::read_to_string(db.journal_path()).unwrap_or_default();
    let mut prev = [0u8; 32];
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let value: Value = serde_json::from_str(line).unwrap();
        assert_eq!(value.to_string(), line, "line {} is canonical", n + 1);
        let mut content = value.as_object().unwrap().clone();
        assert_eq!(
            content.remove("prev").unwrap(),
            json!(hex::encode(prev)),
            "line {}",
            n + 1
        );
        let hash = content.remove("hash").unwrap();
        let mut hasher = Sha256::new();
        hasher.update(prev);
        hasher.update(Value::Object(content).to_string().as_bytes());
        prev = hasher.finalize().into();
        assert_eq!(hash, json!(hex::encode(prev)), "line {}", n + 1);
        assert_eq!(value["seq"], json!(n + 1));
        lines.push(value);
    }
    assert!(text.is_empty() || text.ends_with('\n'));
    lines
}

backend_tests!(
    every_destruction_is_journaled_once_and_chained,
    a_request_driven_again_is_not_journaled_again,
    a_changed_removed_or_reordered_line_stops_the_open,
    a_torn_last_line_is_cut_off,
    a_vault_restored_alone_forgets_again_at_open,
    an_event_database_restored_alone_forgets_again_at_open,
    both_databases_restored_forget_again_at_open,
    a_replay_interrupted_at_any_step_completes_without_duplicates,
);

async fn every_destruction_is_journaled_once_and_chained(db: TestDb) {
    let store = open_on(&db, &db.url, &db.vault_url, true, false).await;
    register_user(&store, "456").await;
    store
        .append(append("orders-1", ExpectedVersion::NoStream, events(1, "Placed")))
        .await
        .unwrap();
    assert!(journal_lines(&db).is_empty(), "appends journal nothing");

    let forget = store.forget(&subject("456"), reason()).await.unwrap();
    let key = forget.streams.as_ref().unwrap()[0].key_id.unwrap();
    let lines = journal_lines(&db);
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["request_id"], json!(forget.id));
    assert_eq!(
        (line["target"].as_str(), line["subject"].as_str()),
        (Some("subject"), Some("456"))
    );
    assert_eq!(line.get("stream"), None);
    assert_eq!(line["streams"], json!(["user-private-456"]));
    assert_eq!(line["keys"], json!([key]));
    assert_eq!((line["part"].as_u64(), line["parts"].as_u64()), (Some(1), Some(1)));
    let text = std::fs::read_to_string(db.journal_path()).unwrap();
    assert!(
        !text.contains(MARKER) && !text.contains("Art. 17") && !text.contains("dpo"),
        "ids only"
    );

    let deleted = store
        .delete_stream(&lethe::StreamName::new("orders-1").unwrap(), ErasureReason::default())
        .await
        .unwrap();
    let lines = journal_lines(&db);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["request_id"], json!(deleted.id));
    assert_eq!(
        (lines[1]["target"].as_str(), lines[1]["stream"].as_str()),
        (Some("stream"), Some("orders-1"))
    );
    assert_eq!(lines[1]["streams"], json!(["orders-1"]));

    // A repeated forget destroys nothing new, but asks the vault again: one line, empty lists.
    store.forget(&subject("456"), reason()).await.unwrap();
    let lines = journal_lines(&db);
    assert_eq!(lines.len(), 3);
    assert_eq!(
        (lines[2]["streams"].clone(), lines[2]["keys"].clone()),
        (json!([]), json!([]))
    );
    store.close().await;

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(db.journal_path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Reopening verifies the chain and re-applies nothing.
    let store = open_on(&db, &db.url, &db.vault_url, true, false).await;
    assert!(reapplied(&store).await.is_empty());
    assert_eq!(journal_lines(&db).len(), 3);
}

async fn a_request_driven_again_is_not_journaled_again(db: TestDb) {
    // A crash after the journal's fsync, before the vault was asked.
    let mut config = config_on(&db, &db.url, &db.vault_url, true, false).await;
    config.erasure_fault = Some(ErasureFault::AfterJournal);
    let crashing = EventStore::open(config).await.unwrap();
    register_user(&crashing, "456").await;
    let err = crashing.forget(&subject("456"), reason()).await.unwrap_err();
    assert_eq!(err.code(), "injected_fault");
    assert_eq!(journal_lines(&db).len(), 1);
    drop(crashing);

    // The next start drives it to completion (the replay finds it unfinished) without a
    // second line; so does any later resume.
    let store = open_on(&db, &db.url, &db.vault_url, true, false).await;
    let request = store.erasures(Some(&subject("456")), 10).await.unwrap();
    assert_eq!(request[0].status, ErasureStatus::Completed);
    store.resume_erasures().await.unwrap();
    assert_eq!(journal_lines(&db).len(), 1);
    // The keys the vault still held are destroyed first, then the request is driven on.
    let steps: Vec<_> = reapplied(&store)
        .await
        .iter()
        .map(|e| e.details["step"].clone())
        .collect();
    assert_eq!(steps, [json!("vault_keys_destroyed"), json!("request_resumed")]);
    assert_tombstoned_once(&store).await;
}

async fn a_changed_removed_or_reordered_line_stops_the_open(db: TestDb) {
    let store = open_on(&db, &db.url, &db.vault_url, true, false).await;
    for id in ["1", "2", "3"] {
        register_user(&store, id).await;
        store.forget(&subject(id), reason()).await.unwrap();
    }
    store.close().await;
    drop(store);
    let path = db.journal_path();
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 3);
    let joined = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let changed = lines[1].replace("user-private-2", "user-private-9");
    let cases = [
        ("a changed line", joined(&[lines[0], &changed, lines[2]]), 2),
        ("a removed line", joined(&[lines[0], lines[2]]), 2),
        ("reordered lines", joined(&[lines[0], lines[2], lines[1]]), 2),
        (
            "a changed first line",
            joined(&[&lines[0].replace("\"1\"", "\"7\""), lines[1], lines[2]]),
            1,
        ),
        ("a line that is not JSON", format!("{original}not json\n"), 4),
        (
            "an empty line",
            format!("{}\n{}", joined(&lines[..1]), joined(&lines[1..])),
            2,
        ),
    ];
    for (case, text, line) in cases {
        std::fs::write(&path, text).unwrap();
        let err = EventStore::open(config_on(&db, &db.url, &db.vault_url, true, false).await)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.code(), "journal_corrupt", "{case}");
        match &err {
            Error::Journal(JournalError::Corrupt {
                path: at,
                line: at_line,
                ..
            }) => {
                assert_eq!((at, *at_line), (&path, line), "{case}: {err}");
            }
            other => panic!("{case}: {other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains(&format!("line {line}")),
            "{case}: {message}"
        );
        assert!(
            !message.contains("user-private"),
            "{case}: the line is not quoted: {message}"
        );
    }
    std::fs::write(&path, &original).unwrap();
    open_on(&db, &db.url, &db.vault_url, true, false).await.close().await;
}

async fn a_torn_last_line_is_cut_off(db: TestDb) {
    let store = open_on(&db, &db.url, &db.vault_url, true, false).await;
    register_user(&store, "1").await;
    store.forget(&subject("1"), reason()).await.unwrap();
    store.close().await;
    drop(store);
    let path = db.journal_path();
    let whole = std::fs::read(&path).unwrap();
    // An append that never completed: part of a line, no newline.
    let mut torn = whole.clone();
    torn.extend_from_slice(&whole[..whole.len() / 2]);
    std::fs::write(&path, &torn).unwrap();

    let store = open_on(&db, &db.url, &db.vault_url, true, false).await;
    assert_eq!(std::fs::read(&path).unwrap(), whole, "cut back to the last whole line");
    // The chain goes on from there.
    register_user(&store, "2").await;
    store.forget(&subject("2"), reason()).await.unwrap();
    assert_eq!(journal_lines(&db).len(), 2);
}

async fn a_vault_restored_alone_forgets_again_at_open(mut db: TestDb) {
    let restore = forget_after_backups(&mut db, true).await;
    // The restored vault holds 456's key live again.
    let old = db.vault_at(&restore.vault_backup).await;
    let lookup = old.fetch_keys(&[restore.key]).await.unwrap();
    assert!(matches!(lookup[0].1, KeyLookup::Live(_)));
    drop(old);

    let store = open_on(&db, &db.url, &restore.vault_backup, true, false).await;
    let vault = db.vault_at(&restore.vault_backup).await;
    let lookup = vault.fetch_keys(&[restore.key]).await.unwrap();
    assert!(matches!(lookup[0].1, KeyLookup::Destroyed), "destroyed again at open");
    // And the vault forgot the subject again: no key can be bound to it.
    let err = vault
        .create_keys(&[NewKey {
            stream: "account-456".into(),
            subject: Some("456".into()),
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::SubjectForgotten { .. }));
    assert_456_unreadable_789_intact(&store).await;
    assert_tombstoned_once(&store).await;
    let entries = reapplied(&store).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].request_id, Some(restore.forget.id));
    assert_eq!(entries[0].subject.as_deref(), Some("456"));
    assert_eq!(entries[0].details["step"], "vault_keys_destroyed");
    assert_eq!(entries[0].details["source"], "journal");
    assert!(!entries[0].details.to_string().contains(MARKER));
    store.close().await;
    drop(store);
    // Once is enough: a second start finds nothing to do.
    let store = open_on(&db, &db.url, &restore.vault_backup, true, false).await;
    assert_eq!(reapplied(&store).await.len(), 1);
}

async fn an_event_database_restored_alone_forgets_again_at_open(mut db: TestDb) {
    let restore = forget_after_backups(&mut db, true).await;
    let before = open_on(&db, &restore.events_backup, &db.vault_url, false, false).await;
    assert_eq!(
        read(&before, "user-private-456").await.info.status,
        StreamStatus::Active
    );
    assert!(
        before.erasure(restore.forget.id).await.unwrap().is_none(),
        "the backup predates it"
    );
    before.close().await;
    drop(before);

    let store = open_on(&db, &restore.events_backup, &db.vault_url, true, false).await;
    let again = store.erasure(restore.forget.id).await.unwrap().expect("recorded again");
    assert_eq!(again.status, ErasureStatus::Completed);
    // Its time is the journal's: when its destruction began.
    assert!(again.requested_at >= restore.forget.requested_at);
    assert!(Some(again.requested_at) <= restore.forget.keys_destroyed_at);
    assert_eq!(again.reason.requested_by.as_deref(), Some("lethe:journal"));
    assert_eq!(again.streams, restore.forget.streams);
    assert_456_unreadable_789_intact(&store).await;
    assert_tombstoned_once(&store).await;
    let steps: Vec<_> = reapplied(&store)
        .await
        .iter()
        .map(|e| e.details["step"].clone())
        .collect();
    assert_eq!(steps, [json!("request_recorded")]);
    assert_eq!(journal_lines(&db).len(), 1, "not journaled twice");
    store.close().await;
    drop(store);
    let store = open_on(&db, &restore.events_backup, &db.vault_url, true, false).await;
    assert_eq!(reapplied(&store).await.len(), 1);
    assert_tombstoned_once(&store).await;
}

async fn both_databases_restored_forget_again_at_open(mut db: TestDb) {
    let restore = forget_after_backups(&mut db, true).await;
    let store = open_on(&db, &restore.events_backup, &restore.vault_backup, true, false).await;
    let vault = db.vault_at(&restore.vault_backup).await;
    let lookup = vault.fetch_keys(&[restore.key]).await.unwrap();
    assert!(matches!(lookup[0].1, KeyLookup::Destroyed));
    let again = store.erasure(restore.forget.id).await.unwrap().expect("recorded again");
    assert_eq!(again.status, ErasureStatus::Completed);
    assert_456_unreadable_789_intact(&store).await;
    assert_tombstoned_once(&store).await;
    let mut steps: Vec<_> = reapplied(&store)
        .await
        .iter()
        .map(|e| e.details["step"].clone())
        .collect();
    steps.sort_by_key(|s| s.to_string());
    assert_eq!(steps, [json!("request_recorded"), json!("vault_keys_destroyed")]);
    assert_eq!(journal_lines(&db).len(), 1);
}

/// `kill -9` during the replay: whatever step the re-applied erasure stopped at, the next start
/// finishes it, and nothing is written twice (one tombstone per stream, one journal line).
async fn a_replay_interrupted_at_any_step_completes_without_duplicates(db: TestDb) {
    for fault in ErasureFault::ALL {
        let mut db = db.another().await;
        let restore = forget_after_backups(&mut db, true).await;
        let mut config = config_on(&db, &restore.events_backup, &db.vault_url, true, false).await;
        config.erasure_fault = Some(fault);
        let err = EventStore::open(config).await.map(|_| ()).unwrap_err();
        assert_eq!(err.code(), "injected_fault", "{fault:?}");

        let store = open_on(&db, &restore.events_backup, &db.vault_url, true, false).await;
        let again = store.erasure(restore.forget.id).await.unwrap().unwrap();
        assert_eq!(again.status, ErasureStatus::Completed, "{fault:?}");
        assert_456_unreadable_789_intact(&store).await;
        assert_tombstoned_once(&store).await;
        assert_eq!(journal_lines(&db).len(), 1, "{fault:?}");
        let audited = reapplied(&store).await.len();
        store.close().await;
        drop(store);
        let store = open_on(&db, &restore.events_backup, &db.vault_url, true, false).await;
        assert_eq!(reapplied(&store).await.len(), audited, "{fault:?}: nothing more to do");
        assert_tombstoned_once(&store).await;
        store.close().await;
    }
}
