//! Every `KeyVault` operation, in-process, on both engines.

use lethe_keyvault::{KeyId, KeyLookup, VaultError, VaultStats};

use crate::support::{TestDb, kek, live, nk, ok};

both_engines!(
    create_is_idempotent_per_stream,
    create_rejects_subject_mismatch_atomically,
    fetch_answers_live_destroyed_and_not_found,
    destroy_subject_is_final_and_idempotent,
    destroy_stream_is_final_and_idempotent,
    bad_input_is_rejected_and_changes_nothing,
    reopen_keeps_keys_and_refuses_wrong_kek,
    concurrent_creates_agree_on_one_key,
);

async fn create_is_idempotent_per_stream(db: TestDb) {
    let vault = db.open(kek(1)).await;
    let first = ok(vault.create_keys(&[
        nk("user-private-1", Some("1")),
        nk("user-public-1", None),
        nk("user-private-1", Some("1")),
    ]))
    .await;
    assert_eq!(first.len(), 3);
    assert_ne!(first[0].0, first[1].0);
    // A stream named twice in one batch gets one key.
    assert_eq!(first[0].0, first[2].0);
    assert_eq!(first[0].1.expose_secret(), first[2].1.expose_secret());
    assert_ne!(first[0].1.expose_secret(), first[1].1.expose_secret());

    // Order follows the input, and a repeat returns the same ids and key bytes.
    let again = ok(vault.create_keys(&[nk("user-public-1", None), nk("user-private-1", Some("1"))])).await;
    assert_eq!(again[0].0, first[1].0);
    assert_eq!(again[1].0, first[0].0);
    assert_eq!(again[0].1.expose_secret(), first[1].1.expose_secret());
    assert_eq!(again[1].1.expose_secret(), first[0].1.expose_secret());
    assert!(ok(vault.create_keys(&[])).await.is_empty());

    let stats = ok(vault.stats()).await;
    assert_eq!(
        stats,
        VaultStats {
            live_keys: 2,
            destroyed_keys: 0,
            kek_version: 1,
            subject_keys_live: 0,
            subject_keys_destroyed: 0,
            keys_unreadable: 0,
            kek_provider: "static".into(),
        }
    );
    ok(vault.health()).await;
}

async fn create_rejects_subject_mismatch_atomically(db: TestDb) {
    let vault = db.open(kek(1)).await;
    ok(vault.create_keys(&[nk("bound", Some("s1")), nk("public", None)])).await;
    for (stream, subject) in [("bound", Some("s2")), ("bound", None), ("public", Some("s1"))] {
        // A new stream in the same batch must not be created either.
        let err = vault
            .create_keys(&[nk("fresh", Some("s1")), nk(stream, subject)])
            .await
            .err();
        match err {
            Some(VaultError::SubjectMismatch { stream: s }) => assert_eq!(s, stream),
            other => panic!("expected SubjectMismatch for {stream}, got {other:?}"),
        }
    }
    // A stream asked for twice in one batch with different subjects is refused the same way.
    let err = vault
        .create_keys(&[
            nk("fresh", Some("s1")),
            nk("twice", Some("s1")),
            nk("twice", Some("s2")),
        ])
        .await
        .err();
    assert!(
        matches!(&err, Some(VaultError::SubjectMismatch { stream }) if stream == "twice"),
        "expected SubjectMismatch for twice, got {err:?}"
    );
    assert_eq!(
        ok(vault.stats()).await.live_keys,
        2,
        "the failed batches created nothing"
    );
}

async fn fetch_answers_live_destroyed_and_not_found(db: TestDb) {
    let vault = db.open(kek(1)).await;
    let created = ok(vault.create_keys(&[nk("a", Some("s")), nk("b", None)])).await;
    let (a, b) = (created[0].0, created[1].0);
    ok(vault.destroy_stream_key("a")).await;
    let unknown = KeyId(uuid::Uuid::new_v4());
    let found = ok(vault.fetch_keys(&[b, a, unknown, b])).await;
    assert_eq!(
        found.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![b, a, unknown, b]
    );
    assert_eq!(live(&found[0].1).expose_secret(), created[1].1.expose_secret());
    assert!(matches!(found[1].1, KeyLookup::Destroyed));
    assert!(matches!(found[2].1, KeyLookup::NotFound));
    assert_eq!(live(&found[3].1).expose_secret(), created[1].1.expose_secret());
    assert!(ok(vault.fetch_keys(&[])).await.is_empty());
}

async fn destroy_subject_is_final_and_idempotent(db: TestDb) {
    let vault = db.open(kek(1)).await;
    let created = ok(vault.create_keys(&[
        nk("user-private-1", Some("1")),
        nk("orders-1", Some("1")),
        nk("user-private-2", Some("2")),
        nk("user-public-1", None),
    ]))
    .await;
    let mut destroyed = ok(vault.destroy_subject_keys("1")).await;
    destroyed.sort();
    let mut want = vec![created[0].0, created[1].0];
    want.sort();
    assert_eq!(destroyed, want);
    assert!(
        ok(vault.destroy_subject_keys("1")).await.is_empty(),
        "a repeat destroys nothing"
    );
    assert!(ok(vault.destroy_subject_keys("never-seen")).await.is_empty());

    let ids: Vec<KeyId> = created.iter().map(|(id, _)| *id).collect();
    let found = ok(vault.fetch_keys(&ids)).await;
    assert!(matches!(found[0].1, KeyLookup::Destroyed));
    assert!(matches!(found[1].1, KeyLookup::Destroyed));
    assert_eq!(live(&found[2].1).expose_secret(), created[2].1.expose_secret());
    assert_eq!(live(&found[3].1).expose_secret(), created[3].1.expose_secret());

    // A destroyed stream never gets a key again, whatever the subject; asked for with its
    // forgotten subject, the answer is that the subject is forgotten.
    for subject in [None, Some("3")] {
        match vault.create_keys(&[nk("orders-1", subject)]).await {
            Err(VaultError::KeyDestroyed { stream }) => assert_eq!(stream, "orders-1"),
            other => panic!("expected KeyDestroyed, got {:?}", other.map(|v| v.len())),
        }
    }
    match vault.create_keys(&[nk("orders-1", Some("1"))]).await {
        Err(VaultError::SubjectForgotten { subject }) => assert_eq!(subject, "1"),
        other => panic!("expected SubjectForgotten, got {:?}", other.map(|v| v.len())),
    }
    let stats = ok(vault.stats()).await;
    assert_eq!((stats.live_keys, stats.destroyed_keys), (2, 2));
}

async fn destroy_stream_is_final_and_idempotent(db: TestDb) {
    let vault = db.open(kek(1)).await;
    let created = ok(vault.create_keys(&[nk("s-1", Some("x")), nk("s-2", Some("x"))])).await;
    assert_eq!(ok(vault.destroy_stream_key("s-1")).await, Some(created[0].0));
    assert_eq!(ok(vault.destroy_stream_key("s-1")).await, None);
    assert_eq!(ok(vault.destroy_stream_key("no-such-stream")).await, None);
    assert!(matches!(
        vault.create_keys(&[nk("s-1", Some("x"))]).await,
        Err(VaultError::KeyDestroyed { .. })
    ));
    // The subject's other stream is untouched; destroying the subject then takes only it.
    assert_eq!(ok(vault.destroy_subject_keys("x")).await, vec![created[1].0]);
}

async fn bad_input_is_rejected_and_changes_nothing(db: TestDb) {
    let vault = db.open(kek(1)).await;
    let long = "a".repeat(201);
    for (stream, subject) in [
        ("", None),
        ("has space", None),
        (long.as_str(), None),
        ("ok", Some("")),
        ("ok", Some("$system")),
        ("ok", Some("a/b")),
        ("$", None),
    ] {
        assert!(
            matches!(
                vault.create_keys(&[nk(stream, subject)]).await,
                Err(VaultError::InvalidInput(_))
            ),
            "{stream:?} / {subject:?} must be refused"
        );
    }
    ok(vault.create_keys(&[nk("$erasures", None), nk("a.b:c@d-e_f", Some("sub-1"))])).await;
    let too_many: Vec<KeyId> = (0..1001).map(|_| KeyId(uuid::Uuid::new_v4())).collect();
    assert!(matches!(
        vault.fetch_keys(&too_many).await,
        Err(VaultError::InvalidInput(_))
    ));
    assert!(matches!(
        vault.destroy_subject_keys("bad subject").await,
        Err(VaultError::InvalidInput(_))
    ));
    assert!(matches!(
        vault.destroy_stream_key("").await,
        Err(VaultError::InvalidInput(_))
    ));
    assert_eq!(ok(vault.stats()).await.live_keys, 2);
}

async fn reopen_keeps_keys_and_refuses_wrong_kek(db: TestDb) {
    let created = {
        let vault = db.open(kek(1)).await;
        ok(vault.create_keys(&[nk("a", None), nk("b", Some("s"))])).await
    };
    let vault = db.open(kek(1)).await;
    let ids: Vec<KeyId> = created.iter().map(|(id, _)| *id).collect();
    let found = ok(vault.fetch_keys(&ids)).await;
    for ((_, dek), (_, lookup)) in created.iter().zip(&found) {
        assert_eq!(live(lookup).expose_secret(), dek.expose_secret());
    }
    match db.open_local(kek(2), vec![]).await {
        Err(VaultError::Kek(_)) => {}
        other => panic!("a wrong KEK must be refused at open, got {other:?}"),
    }
    // And the vault URL entry point refuses a local URL without a KEK.
    assert!(lethe_keyvault::open(&db.url, Default::default()).await.is_err());
}

async fn concurrent_creates_agree_on_one_key(db: TestDb) {
    let vault = db.open(kek(1)).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let v = vault.clone();
        tasks.push(tokio::spawn(async move {
            v.create_keys(&[nk("contended", Some("s"))]).await
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        let r = t.await.unwrap_or_else(|e| panic!("{e}"));
        let keys = r.unwrap_or_else(|e| panic!("{e}"));
        seen.push((keys[0].0, keys[0].1.expose_secret().to_vec()));
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "all callers must get the same key"
    );
    assert_eq!(ok(vault.stats()).await.live_keys, 1);
}
