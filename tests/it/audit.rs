//! The tamper-evident audit trail: every admin action is chained; editing one row in SQL makes
//! verification name that row.

use std::process::Command;

use lethe::model::{AuditQuery, NewAuditEntry};
use lethe::{ErasureReason, ExpectedVersion, LogFilter, NewEvent, SubjectId};
use serde_json::json;

use crate::appends::append;
use crate::backend_tests;
use crate::http_support::{Server, events};
use crate::support::TestDb;

backend_tests!(
    the_audit_chain_detects_an_edited_row,
    audit_over_http_records_who_did_what,
    a_lapsed_hold_is_audited_once,
    a_kek_rotation_is_audited
);

async fn the_audit_chain_detects_an_edited_row(db: TestDb) {
    let store = db.open().await;
    assert!(
        store.verify_audit().await.unwrap().is_intact(),
        "an empty trail is intact"
    );
    store
        .append(
            append(
                "user-private-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("P", json!({}))],
            )
            .with_subject(SubjectId::new("1").unwrap()),
        )
        .await
        .unwrap();
    store.put_consumer("ledger", LogFilter::default(), true).await.unwrap();
    let request = store
        .forget(&SubjectId::new("1").unwrap(), ErasureReason::default())
        .await
        .unwrap();
    store
        .ack_consumer("ledger", request.tombstone_position.unwrap())
        .await
        .unwrap();
    store
        .audit(NewAuditEntry {
            actor: "dpo".into(),
            action: "note".into(),
            subject: None,
            request_id: None,
            details: json!({"n": 1}),
        })
        .await
        .unwrap();

    let entries = store
        .audit_entries(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "erasure_keys_destroyed",
            "erasure_tombstones_written",
            "erasure_completed",
            "note"
        ]
    );
    assert!(entries.iter().all(|e| e.hash_holds()));
    assert!(entries.windows(2).all(|w| w[1].prev_hash == w[0].hash), "chained");
    let verified = store.verify_audit().await.unwrap();
    assert!(verified.is_intact());
    assert_eq!((verified.entries, verified.head_seq), (4, 4));

    // Someone edits entry 2 directly in SQL.
    db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2").await;
    let broken = store.verify_audit().await.unwrap();
    assert_eq!(broken.first_broken, Some(2), "verification names the edited row");
    // The offline check agrees, with a failing exit code.
    let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["audit", "verify", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("BROKEN at entry 2"));
    // Deleting the last entry is caught too (the head points past the end).
    db.execute("UPDATE audit_log SET actor = 'lethe' WHERE seq = 2; DELETE FROM audit_log WHERE seq = 4")
        .await;
    assert_eq!(store.verify_audit().await.unwrap().first_broken, Some(4));
}

async fn audit_over_http_records_who_did_what(db: TestDb) {
    let server = Server::start(&db).await;
    server
        .append("user-private-9", json!("any"), Some("9"), events(1, "P"))
        .await;
    server
        .put(
            "/admin/subjects/9/hold",
            &server.admin,
            &json!({"reason": "court order"}),
        )
        .await
        .assert_status(200);
    let body = json!({"reason": "Art. 17", "requested_by": "dpo"});
    server
        .post("/admin/subjects/9/forget", &server.admin, &body)
        .await
        .assert_problem(409, "legal_hold");
    server
        .delete("/admin/subjects/9/hold", &server.admin)
        .await
        .assert_status(204);
    server
        .post("/admin/subjects/9/forget", &server.admin, &body)
        .await
        .assert_status(202);
    server
        .get("/admin/subjects/9/export", &server.admin)
        .await
        .assert_status(200);

    let trail = server.get("/admin/audit?limit=100", &server.admin).await;
    trail.assert_status(200);
    let entries = trail.body["entries"].as_array().unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for expected in [
        "hold_placed",
        "erasure_refused",
        "hold_lifted",
        "erasure_requested",
        "erasure_completed",
        "subject_exported",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let requested = entries.iter().find(|e| e["action"] == "erasure_requested").unwrap();
    assert_eq!(requested["subject"], "9");
    assert!(
        requested["actor"].as_str().unwrap().contains("admin"),
        "the token's name is the actor"
    );
    assert!(
        !trail.body.to_string().contains("\"data\""),
        "no event data in the trail"
    );
    let only = server.get("/admin/audit?action=hold_placed", &server.admin).await;
    assert_eq!(only.body["entries"].as_array().unwrap().len(), 1);

    let verify = server.get("/admin/audit/verify", &server.admin).await;
    assert_eq!(verify.body["intact"], true);
    db.execute("UPDATE audit_log SET details = '{\"reason\":\"nothing\"}' WHERE seq = 1")
        .await;
    let verify = server.get("/admin/audit/verify", &server.admin).await;
    assert_eq!(verify.body["intact"], false);
    assert_eq!(verify.body["first_broken_seq"], 1);
    server.stop().await;
}

/// A hold that lapses is recorded as `hold_expired` (by Lethe itself) exactly once; a hold
/// placed again on the subject is audited again when it lapses in turn.
async fn a_lapsed_hold_is_audited_once(db: TestDb) {
    let store = db.open().await;
    let (past, future) = (
        chrono::Utc::now() - chrono::Duration::hours(1),
        chrono::Utc::now() + chrono::Duration::days(30),
    );
    let subject = SubjectId::new("71").unwrap();
    store.place_hold(&subject, "litigation", Some(past)).await.unwrap();
    store
        .place_hold(&SubjectId::new("72").unwrap(), "audit", Some(future))
        .await
        .unwrap();
    store
        .place_hold(&SubjectId::new("73").unwrap(), "until lifted", None)
        .await
        .unwrap();
    let expired = || async {
        let entries = store
            .audit_entries(&AuditQuery {
                limit: 100,
                action: Some("hold_expired".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        entries
            .into_iter()
            .map(|e| (e.actor, e.subject.unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    // (The stores' background loops call it too; the entries, not the return values, count.)
    store.audit_lapsed_holds().await.unwrap();
    store.audit_lapsed_holds().await.unwrap();
    assert_eq!(expired().await, [("lethe".to_owned(), "71".to_owned())], "only once");
    // A second process sharing the database does not audit it again.
    let other = db.open().await;
    other.audit_lapsed_holds().await.unwrap();
    assert_eq!(expired().await.len(), 1);
    // Placed again and lapsed again: a second entry.
    store.place_hold(&subject, "again", Some(past)).await.unwrap();
    other.audit_lapsed_holds().await.unwrap();
    store.audit_lapsed_holds().await.unwrap();
    assert_eq!(expired().await.len(), 2);
    assert!(store.verify_audit().await.unwrap().is_intact());
}

/// `lethe keyvault rotate-kek` records `kek_rotated` in the event database's trail when it is
/// given one (here through `LETHE_DATABASE_URL`, as `lethe serve` reads it).
async fn a_kek_rotation_is_audited(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let lethe = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(args)
            .env("LETHE_DATABASE_URL", &db.url)
            .env_remove("LETHE_KEK")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    let vault = format!("sqlite://{}", dir.path().join("vault.db").display());
    lethe(&["keyvault", "generate-kek", old.to_str().unwrap()]);
    lethe(&["keyvault", "generate-kek", new.to_str().unwrap()]);
    lethe(&[
        "keyvault",
        "rotate-kek",
        "--database-url",
        &vault,
        "--kek-file",
        old.to_str().unwrap(),
        "--new-kek-file",
        new.to_str().unwrap(),
    ]);
    let store = db.open().await;
    let entries = store
        .audit_entries(&AuditQuery {
            limit: 10,
            action: Some("kek_rotated".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].actor, "cli");
    assert_eq!(
        entries[0].details["to_epoch"],
        entries[0].details["from_epoch"].as_u64().unwrap() + 1
    );
    assert!(store.verify_audit().await.unwrap().is_intact());
}
