//! Subject keys (one DEK per data subject, for the personal fields inside events) and forgotten
//! subjects, in-process on both engines; on PostgreSQL also the two ways a key creation and a
//! forget can overlap, made deterministic by holding one side open in a transaction of our own.

use std::sync::Arc;
use std::time::Duration;

use lethe_keyvault::{Dek, KeyId, KeyLookup, NewKey, VaultError, VaultStats};
use sqlx::Connection as _;

use crate::support::{Engine, TestDb, kek, live, nk, ok, run_on};

both_engines!(
    subject_key_is_created_once_and_fetched_by_id,
    forgetting_destroys_the_subject_key_with_the_stream_keys,
    a_forgotten_subject_gets_no_key_again,
    a_subject_forgotten_before_it_had_a_key_gets_none,
    malformed_subject_key_requests_are_invalid_input,
    creates_racing_forgets_leave_no_live_key,
);

/// Asserts a create was refused because `subject` is forgotten.
fn assert_forgotten(result: Result<Vec<(KeyId, Dek)>, VaultError>, subject: &str) {
    match result {
        Err(VaultError::SubjectForgotten { subject: s }) => assert_eq!(s, subject),
        other => panic!(
            "expected SubjectForgotten for {subject:?}, got {:?}",
            other.map(|keys| keys.len())
        ),
    }
}

fn ids(keys: &[(KeyId, Dek)]) -> Vec<KeyId> {
    keys.iter().map(|(id, _)| *id).collect()
}

async fn subject_key_is_created_once_and_fetched_by_id(db: TestDb) {
    let vault = db.open(kek(1)).await;
    let subject_key = NewKey::subject_key("456");
    assert_eq!(subject_key.stream, "$subject:456");
    assert!(subject_key.is_subject_key());
    // The subject key of 456 beside one of its streams, a public stream, and system-named keys
    // that only look like subject keys.
    let first = ok(vault.create_keys(&[
        subject_key.clone(),
        nk("user-private-456", Some("456")),
        nk("bankaccount-123", None),
        nk("$subject", None),
        nk("$SUBJECT:456", None),
    ]))
    .await;
    assert_eq!(first.len(), 5);
    let all = ids(&first);
    assert!(
        all.iter().skip(1).all(|id| *id != all[0]),
        "the subject key is a key of its own"
    );

    // A repeat returns the same key, alone or in a batch with a new subject's key.
    let again = ok(vault.create_keys(std::slice::from_ref(&subject_key))).await;
    assert_eq!(again[0].0, first[0].0);
    assert_eq!(again[0].1.expose_secret(), first[0].1.expose_secret());
    let mixed = ok(vault.create_keys(&[NewKey::subject_key("789"), subject_key.clone()])).await;
    assert_eq!(mixed[1].0, first[0].0);
    assert_eq!(mixed[1].1.expose_secret(), first[0].1.expose_secret());
    assert_ne!(mixed[0].0, first[0].0);
    assert_ne!(mixed[0].1.expose_secret(), first[0].1.expose_secret());

    // Fetched by id like any key.
    let found = ok(vault.fetch_keys(&[mixed[0].0, first[0].0])).await;
    assert_eq!(live(&found[0].1).expose_secret(), mixed[0].1.expose_secret());
    assert_eq!(live(&found[1].1).expose_secret(), first[0].1.expose_secret());

    assert_eq!(
        ok(vault.stats()).await,
        VaultStats {
            live_keys: 6,
            destroyed_keys: 0,
            kek_version: 1,
            subject_keys_live: 2,
            subject_keys_destroyed: 0,
            keys_unreadable: 0,
            kek_provider: "static".into(),
        }
    );
}

async fn forgetting_destroys_the_subject_key_with_the_stream_keys(db: TestDb) {
    let vault = db.open(kek(1)).await;
    let created = ok(vault.create_keys(&[
        NewKey::subject_key("1"),
        nk("user-private-1", Some("1")),
        nk("orders-1", Some("1")),
        NewKey::subject_key("2"),
        nk("user-private-2", Some("2")),
        nk("user-public-1", None),
    ]))
    .await;
    let all = ids(&created);
    let mut destroyed = ok(vault.destroy_subject_keys("1")).await;
    destroyed.sort();
    let mut want = all[..3].to_vec();
    want.sort();
    assert_eq!(destroyed, want, "the subject key goes with the subject's stream keys");
    assert!(
        ok(vault.destroy_subject_keys("1")).await.is_empty(),
        "a repeat destroys nothing"
    );

    let found = ok(vault.fetch_keys(&all)).await;
    for (_, lookup) in &found[..3] {
        assert!(matches!(lookup, KeyLookup::Destroyed), "{lookup:?}");
    }
    for ((_, lookup), (_, dek)) in found[3..].iter().zip(&created[3..]) {
        assert_eq!(live(lookup).expose_secret(), dek.expose_secret());
    }
    assert_eq!(
        ok(vault.stats()).await,
        VaultStats {
            live_keys: 3,
            destroyed_keys: 3,
            kek_version: 1,
            subject_keys_live: 1,
            subject_keys_destroyed: 1,
            keys_unreadable: 0,
            kek_provider: "static".into(),
        }
    );
}

async fn a_forgotten_subject_gets_no_key_again(db: TestDb) {
    let vault = db.open(kek(1)).await;
    ok(vault.create_keys(&[NewKey::subject_key("1"), nk("user-private-1", Some("1"))])).await;
    ok(vault.destroy_subject_keys("1")).await;
    let before = ok(vault.stats()).await;
    let batches: Vec<Vec<NewKey>> = vec![
        // Its subject key, destroyed by the forget: forgotten, not merely destroyed.
        vec![NewKey::subject_key("1")],
        // Its destroyed stream, and a new stream bound to it.
        vec![nk("user-private-1", Some("1"))],
        vec![nk("orders-1", Some("1"))],
        // Beside new keys of a public stream and of another subject: none is created.
        vec![
            nk("fresh-public", None),
            NewKey::subject_key("2"),
            nk("fresh-2", Some("2")),
            nk("orders-1", Some("1")),
        ],
        vec![nk("fresh-public", None), NewKey::subject_key("1")],
    ];
    for batch in &batches {
        assert_forgotten(vault.create_keys(batch).await, "1");
    }
    assert_eq!(ok(vault.stats()).await, before, "the refused batches created nothing");
    assert!(ok(vault.destroy_subject_keys("1")).await.is_empty());

    // Everyone else is unaffected.
    let fresh = ok(vault.create_keys(&[nk("fresh-public", None), NewKey::subject_key("2")])).await;
    assert_eq!(fresh.len(), 2);
    assert_eq!(ok(vault.stats()).await.subject_keys_live, 1);
}

async fn a_subject_forgotten_before_it_had_a_key_gets_none(db: TestDb) {
    let vault = db.open(kek(1)).await;
    assert!(ok(vault.destroy_subject_keys("never-keyed")).await.is_empty());
    assert_forgotten(
        vault.create_keys(&[NewKey::subject_key("never-keyed")]).await,
        "never-keyed",
    );
    assert_forgotten(
        vault
            .create_keys(&[nk("public", None), nk("user-private-7", Some("never-keyed"))])
            .await,
        "never-keyed",
    );
    assert!(ok(vault.destroy_subject_keys("never-keyed")).await.is_empty());
    let stats = ok(vault.stats()).await;
    assert_eq!((stats.live_keys, stats.destroyed_keys), (0, 0), "nothing was created");
}

async fn malformed_subject_key_requests_are_invalid_input(db: TestDb) {
    let vault = db.open(kek(1)).await;
    let key = |stream: &str, subject: Option<&str>| NewKey {
        stream: stream.into(),
        subject: subject.map(str::to_owned),
    };
    let malformed = [
        // The subject must be exactly the part of the name after the prefix.
        key("$subject:456", None),
        key("$subject:456", Some("45")),
        key("$subject:456", Some("other")),
        // And a valid subject id.
        key("$subject:", Some("")),
        key("$subject:", None),
        NewKey::subject_key("$x"),
        NewKey::subject_key("a b"),
        NewKey::subject_key(&"s".repeat(201)),
    ];
    for bad in &malformed {
        for batch in [vec![bad.clone()], vec![nk("fine", Some("456")), bad.clone()]] {
            assert!(
                matches!(vault.create_keys(&batch).await, Err(VaultError::InvalidInput(_))),
                "{bad:?} must be refused"
            );
        }
    }
    assert_eq!(ok(vault.stats()).await.live_keys, 0, "nothing was created");

    // The longest subject id makes a name longer than a stream's longest: accepted.
    let longest = ok(vault.create_keys(&[NewKey::subject_key(&"s".repeat(200))])).await;
    assert_eq!(ok(vault.stats()).await.subject_keys_live, 1);
    // A subject key is destroyed with its subject only, never as a stream.
    let created = ok(vault.create_keys(&[NewKey::subject_key("456")])).await;
    assert!(matches!(
        vault.destroy_stream_key("$subject:456").await,
        Err(VaultError::InvalidInput(_))
    ));
    let found = ok(vault.fetch_keys(&[created[0].0, longest[0].0])).await;
    assert_eq!(live(&found[0].1).expose_secret(), created[0].1.expose_secret());
    assert_eq!(
        ok(vault.destroy_subject_keys(&"s".repeat(200))).await,
        vec![longest[0].0]
    );
}

/// Creates of subject keys and stream keys race a forget of their subject: whichever way each
/// race goes, every key a create returned is destroyed once the forget has returned, and
/// every create that lost is refused as forgotten.
async fn creates_racing_forgets_leave_no_live_key(db: TestDb) {
    const SUBJECTS: usize = 4;
    const CREATES: usize = 6;
    let vault = db.open(kek(1)).await;
    let start = Arc::new(tokio::sync::Barrier::new(SUBJECTS * (CREATES + 1)));
    let mut creates = Vec::new();
    let mut forgets = Vec::new();
    for s in 0..SUBJECTS {
        let subject = format!("racer-{s}");
        for i in 0..CREATES {
            let (vault, start, subject) = (vault.clone(), start.clone(), subject.clone());
            creates.push(tokio::spawn(async move {
                let key = if i % 2 == 0 {
                    NewKey::subject_key(&subject)
                } else {
                    nk(&format!("stream-{subject}-{i}"), Some(&subject))
                };
                start.wait().await;
                (subject, vault.create_keys(&[key]).await)
            }));
        }
        let (vault, start) = (vault.clone(), start.clone());
        forgets.push(tokio::spawn(async move {
            start.wait().await;
            vault.destroy_subject_keys(&subject).await
        }));
    }
    for f in forgets {
        f.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("forget: {e}"));
    }
    let mut returned = Vec::new();
    for c in creates {
        let (subject, result) = c.await.unwrap_or_else(|e| panic!("{e}"));
        match result {
            Ok(keys) => returned.extend(ids(&keys)),
            Err(VaultError::SubjectForgotten { subject: s }) => assert_eq!(s, subject),
            Err(e) => panic!("a create racing a forget failed otherwise: {e}"),
        }
    }
    for (id, lookup) in ok(vault.fetch_keys(&returned)).await {
        assert!(
            matches!(lookup, KeyLookup::Destroyed),
            "key {id}, created while its subject was forgotten, outlived the forget"
        );
    }
    let stats = ok(vault.stats()).await;
    assert_eq!(stats.live_keys, 0);
    for s in 0..SUBJECTS {
        assert_forgotten(
            vault.create_keys(&[NewKey::subject_key(&format!("racer-{s}"))]).await,
            &format!("racer-{s}"),
        );
    }
}

/// Waits until some connection to the test database waits for a lock.
async fn wait_for_lock_waiter(db: &TestDb) {
    let mut c = sqlx::PgConnection::connect(&db.url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..200 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE NOT l.granted AND a.datname = current_database()",
        )
        .fetch_one(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        if waiting > 0 {
            let _ = c.close().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing ever waited for the transaction held open by the test");
}

/// A create that starts while a forget of its subject is in progress waits for it, and is then
/// refused — even though its statement's snapshot predates the forget's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_create_during_a_forget_waits_and_is_refused() {
    run_on(Engine::Postgres, |db| async move {
        let vault = db.open(kek(1)).await;
        ok(vault.create_keys(&[nk("public", None)])).await;
        // A forget in progress, as `destroy_subject` runs it: the guard first, then the row.
        let mut forget = sqlx::PgConnection::connect(&db.url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tx = forget.begin().await.unwrap_or_else(|e| panic!("{e}"));
        for statement in [
            "UPDATE forget_guard SET epoch = epoch + 1 WHERE id = 1",
            "INSERT INTO forgotten_subjects (subject) VALUES ('s')",
        ] {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let v = vault.clone();
        let create = tokio::spawn(async move {
            v.create_keys(&[NewKey::subject_key("s"), nk("orders-s", Some("s"))])
                .await
        });
        wait_for_lock_waiter(&db).await;
        assert!(!create.is_finished(), "the create must wait for the forget");
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        assert_forgotten(create.await.unwrap_or_else(|e| panic!("{e}")), "s");
        let stats = ok(vault.stats()).await;
        assert_eq!(
            (stats.live_keys, stats.subject_keys_live),
            (1, 0),
            "nothing was created"
        );
        let _ = forget.close().await;
    })
    .await;
}

/// A forget that starts while a create of its subject's key is in progress waits for it, and
/// then destroys that key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_forget_during_a_create_waits_and_destroys_its_key() {
    run_on(Engine::Postgres, |db| async move {
        let vault = db.open(kek(1)).await;
        let earlier = ok(vault.create_keys(&[nk("orders-s", Some("s"))])).await[0].0;
        // A create in progress, as `CREATE_KEYS` runs it: the guard share-locked, then the rows.
        let late = KeyId(uuid::Uuid::new_v4());
        let mut create = sqlx::PgConnection::connect(&db.url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tx = create.begin().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("SELECT epoch FROM forget_guard WHERE id = 1 FOR SHARE")
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("INSERT INTO vault_keys (id, stream, subject) VALUES ($1, '$subject:s', 's')")
            .bind(late.0)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("INSERT INTO vault_key_material (id, kek_version, wrapped) VALUES ($1, 1, $2)")
            .bind(late.0)
            .bind(vec![0x5a_u8; 61])
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let v = vault.clone();
        let forget = tokio::spawn(async move { v.destroy_subject_keys("s").await });
        wait_for_lock_waiter(&db).await;
        assert!(!forget.is_finished(), "the forget must wait for the create");
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        let mut destroyed = forget
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("forget: {e}"));
        destroyed.sort();
        let mut want = vec![earlier, late];
        want.sort();
        assert_eq!(destroyed, want, "the forget destroys the key created while it waited");
        assert!(db.wrapped_bytes(late).await.is_none());
        assert!(matches!(ok(vault.fetch_keys(&[late])).await[0].1, KeyLookup::Destroyed));
        let _ = create.close().await;
    })
    .await;
}
