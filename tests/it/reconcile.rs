//! Reconciliation of the event database with the key vault (design: "Keys, backups and
//! restores"): from the two databases alone — no journal — keys the vault holds for what the
//! event database shows erased are destroyed, and streams the event database shows active whose
//! keys the vault destroyed are shredded and tombstoned, at open or on demand.

use lethe::{ErasureStatus, ErasureTarget, ExpectedVersion, NewEvent, SchemaMode, StreamStatus};
use lethe_keyvault::{KeyId, KeyLookup};
use serde_json::json;

use crate::appends::{append, stream};
use crate::backend_tests;
use crate::http_support::Server;
use crate::journal::{
    MARKER, assert_456_unreadable_789_intact, assert_tombstoned_once, forget_after_backups, open_on, read, reapplied,
    reason, register_user, subject,
};
use crate::support::{Part, TestDb};

backend_tests!(
    reconciliation_at_open_repairs_a_restored_event_database_without_a_journal,
    reconciliation_on_demand_reports_what_it_reapplied,
    reconciliation_destroys_the_keys_a_restored_vault_holds,
    a_deleted_stream_is_deleted_again_without_forgetting_its_subject,
    a_subject_known_only_by_its_fields_is_forgotten_again,
    reconciliation_over_http,
);

async fn reconciliation_at_open_repairs_a_restored_event_database_without_a_journal(mut db: TestDb) {
    let restore = forget_after_backups(&mut db, false).await;
    assert!(!db.journal_path().exists());
    let store = open_on(&db, &restore.events_backup, &db.vault_url, false, true).await;
    assert_456_unreadable_789_intact(&store).await;
    assert_tombstoned_once(&store).await;
    let requests = store.erasures(Some(&subject("456")), 10).await.unwrap();
    assert_eq!(requests.len(), 1, "the backup had none; reconciliation filed one");
    assert_eq!(requests[0].status, ErasureStatus::Completed);
    assert_eq!(requests[0].reason.requested_by.as_deref(), Some("lethe:reconcile"));
    let entries = reapplied(&store).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].details["source"], "reconcile");
    assert_eq!(entries[0].details["step"], "request_recorded");
    // Nothing is left to re-apply.
    let again = store.reconcile().await.unwrap();
    assert!(!again.reapplied_anything(), "{again:?}");
    store.close().await;
    drop(store);
    let store = open_on(&db, &restore.events_backup, &db.vault_url, false, true).await;
    assert_eq!(reapplied(&store).await.len(), 1);
    assert_tombstoned_once(&store).await;
}

async fn reconciliation_on_demand_reports_what_it_reapplied(mut db: TestDb) {
    let restore = forget_after_backups(&mut db, false).await;
    let store = open_on(&db, &restore.events_backup, &db.vault_url, false, false).await;
    // Restored: the stream shows active, though its key is gone.
    let before = read(&store, "user-private-456").await;
    assert_eq!(before.info.status, StreamStatus::Active);
    assert_eq!(before.events[0].data, None);

    let report = store.reconcile().await.unwrap();
    assert_eq!(
        report.streams_checked, 4,
        "two users, a public and a private stream each"
    );
    assert_eq!(report.subject_keys_checked, 0);
    assert_eq!((report.keys_destroyed, report.destroyed.len()), (0, 0));
    assert_eq!(report.streams_shredded, 1);
    assert_eq!(report.requests.len(), 1);
    assert_eq!(report.requests[0].target, ErasureTarget::Subject(subject("456")));
    assert_eq!(report.requests[0].streams, 1);
    assert_eq!((report.keys_missing, report.truncated), (0, false));
    let filed = store.erasure(report.requests[0].request_id).await.unwrap().unwrap();
    assert_eq!(filed.status, ErasureStatus::Completed);
    assert_456_unreadable_789_intact(&store).await;
    assert_tombstoned_once(&store).await;

    let again = store.reconcile().await.unwrap();
    assert!(!again.reapplied_anything(), "{again:?}");
    assert_eq!(again.streams_checked, 4);
}

async fn reconciliation_destroys_the_keys_a_restored_vault_holds(mut db: TestDb) {
    let restore = forget_after_backups(&mut db, false).await;
    let store = open_on(&db, &db.url, &restore.vault_backup, false, false).await;
    let report = store.reconcile().await.unwrap();
    assert_eq!(report.keys_destroyed, 1);
    assert_eq!(report.destroyed, [ErasureTarget::Subject(subject("456"))]);
    assert!(report.requests.is_empty());
    let vault = db.vault_at(&restore.vault_backup).await;
    let lookup = vault.fetch_keys(&[restore.key]).await.unwrap();
    assert!(matches!(lookup[0].1, KeyLookup::Destroyed));
    let entries = reapplied(&store).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].subject.as_deref(), entries[0].request_id),
        (Some("456"), None)
    );
    assert_eq!(entries[0].details["step"], "vault_keys_destroyed");
    assert_456_unreadable_789_intact(&store).await;
    assert!(!store.reconcile().await.unwrap().reapplied_anything());
}

async fn a_deleted_stream_is_deleted_again_without_forgetting_its_subject(mut db: TestDb) {
    let store = db.open().await;
    register_user(&store, "456").await;
    store
        .append(
            append(
                "user-orders-456",
                ExpectedVersion::NoStream,
                vec![NewEvent::new("OrderPlaced", json!({"n": 1}))],
            )
            .with_subject(subject("456")),
        )
        .await
        .unwrap();
    store.close().await;
    drop(store);
    let events_backup = db.backup(Part::Events).await;
    let store = db.open().await;
    store.delete_stream(&stream("user-orders-456"), reason()).await.unwrap();
    store.close().await;
    drop(store);

    let store = open_on(&db, &events_backup, &db.vault_url, false, true).await;
    let orders = read(&store, "user-orders-456").await;
    assert_eq!(orders.info.status, StreamStatus::Deleted, "its deletion, again");
    assert_eq!(orders.events.iter().filter(|e| e.event_type == "$erased").count(), 1);
    // The subject was not forgotten: its other stream reads whole, and takes appends.
    let private = read(&store, "user-private-456").await;
    assert_eq!(private.info.status, StreamStatus::Active);
    assert_eq!(
        private.events[0].data.as_ref().unwrap()["name"],
        format!("{MARKER}-456")
    );
    store
        .append(append(
            "user-private-456",
            ExpectedVersion::Exact(0),
            vec![NewEvent::new("Moved", json!({}))],
        ))
        .await
        .unwrap();
    let requests = store
        .list_erasures(&lethe::ErasureFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].target, ErasureTarget::Stream(stream("user-orders-456")));
}

/// A subject whose only trace is personal fields in a public stream: its subject key is what
/// the two databases compare.
async fn a_subject_known_only_by_its_fields_is_forgotten_again(mut db: TestDb) {
    let schema = json!({
        "type": "object",
        "properties": {
            "sender_id": {"type": "string"},
            "sender_name": {"type": "string", "x-lethe-personal": {"subject": "/sender_id"}, "x-lethe-erased": "[erased]"}
        }
    });
    let pay = |sender: &str| {
        append(
            "ledger-1",
            ExpectedVersion::Any,
            vec![NewEvent::new(
                "Paid",
                json!({"sender_id": sender, "sender_name": format!("{MARKER}-{sender}")}),
            )],
        )
    };
    let store = db.open().await;
    store
        .register_schema("Paid", &schema, SchemaMode::Enforce, "test")
        .await
        .unwrap();
    store.append(pay("999")).await.unwrap();
    store.append(pay("998")).await.unwrap();
    store.close().await;
    drop(store);
    let events_backup = db.backup(Part::Events).await;
    let store = db.open().await;
    let forget = store.forget(&subject("999"), reason()).await.unwrap();
    assert_eq!(forget.field_streams.as_deref(), Some(&["ledger-1".to_owned()][..]));
    let key = KeyId(forget.subject_key.unwrap());
    store.close().await;
    drop(store);

    let store = open_on(&db, &events_backup, &db.vault_url, false, false).await;
    let report = store.reconcile().await.unwrap();
    assert_eq!(report.subject_keys_checked, 2);
    assert_eq!(report.requests.len(), 1);
    assert_eq!(report.requests[0].target, ErasureTarget::Subject(subject("999")));
    assert_eq!(report.streams_shredded, 0, "its fields are erased, the stream is not");
    let ledger = read(&store, "ledger-1").await;
    assert_eq!(ledger.info.status, StreamStatus::Active);
    assert_eq!(ledger.events[0].data.as_ref().unwrap()["sender_name"], "[erased]");
    assert_eq!(ledger.events[0].erased_fields, ["/sender_name"]);
    assert_eq!(
        ledger.events[1].data.as_ref().unwrap()["sender_name"],
        format!("{MARKER}-998")
    );
    let err = store.append(pay("999")).await.unwrap_err();
    assert_eq!(err.code(), "subject_forgotten");
    let vault = db.vault().await;
    assert!(matches!(
        vault.fetch_keys(&[key]).await.unwrap()[0].1,
        KeyLookup::Destroyed
    ));
    assert!(!store.reconcile().await.unwrap().reapplied_anything());
}

async fn reconciliation_over_http(db: TestDb) {
    let server = Server::start(&db).await;
    let reply = server.post("/admin/reconcile", &server.admin, &json!({})).await;
    reply.assert_status(200);
    for member in [
        "streams_checked",
        "subject_keys_checked",
        "keys_destroyed",
        "destroyed",
        "streams_shredded",
        "requests",
        "keys_missing",
        "keys_unreadable",
        "truncated",
    ] {
        assert!(reply.body.get(member).is_some(), "{member}: {}", reply.body);
    }
    assert_eq!(reply.body["requests"], json!([]));
    let audit = server.get("/admin/audit?action=reconciled", &server.admin).await;
    audit.assert_status(200);
    assert_eq!(audit.body["entries"].as_array().unwrap().len(), 1);
    server.stop().await;
}
