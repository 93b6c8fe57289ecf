//! KEK rotation: complete, interrupted-then-resumed, and its refusals.

use lethe_keyvault::{KeyId, KeyVault, RotateOptions, VaultError};

use crate::support::{TestDb, kek, live, nk, ok};

both_engines!(
    rotation_rewraps_every_key,
    interrupted_rotation_stays_readable_and_resumes
);

async fn make_keys(vault: &dyn KeyVault, range: std::ops::Range<usize>) -> Vec<(KeyId, Vec<u8>)> {
    let req: Vec<_> = range
        .map(|i| nk(&format!("stream-{i}"), Some(&format!("subject-{}", i % 5))))
        .collect();
    ok(vault.create_keys(&req))
        .await
        .into_iter()
        .map(|(id, dek)| (id, dek.expose_secret().to_vec()))
        .collect()
}

async fn assert_all_readable(vault: &dyn KeyVault, keys: &[(KeyId, Vec<u8>)]) {
    let ids: Vec<KeyId> = keys.iter().map(|(id, _)| *id).collect();
    let found = ok(vault.fetch_keys(&ids)).await;
    for ((_, want), (_, lookup)) in keys.iter().zip(&found) {
        assert_eq!(&live(lookup).expose_secret()[..], &want[..]);
    }
}

async fn rotation_rewraps_every_key(db: TestDb) {
    let vault = ok(db.open_local(kek(1), vec![])).await;
    let mut keys = make_keys(&vault, 0..23).await;
    // Destroyed keys have nothing to re-wrap.
    let gone = ok(vault.destroy_subject_keys("subject-0")).await;
    keys.retain(|(id, _)| !gone.contains(id));
    let before = db.wrapped_bytes(keys[0].0).await;

    let report = ok(vault.rotate_kek_with(
        kek(2),
        RotateOptions {
            batch_size: 4,
            max_batches: None,
        },
    ))
    .await;
    assert!(report.complete);
    assert_eq!((report.from_version, report.to_version), (1, 2));
    assert_eq!(report.rewrapped, keys.len() as u64);
    assert_ne!(db.wrapped_bytes(keys[0].0).await, before, "stored bytes re-wrapped");
    assert_eq!(ok(vault.stats()).await.kek_version, 2);
    assert_all_readable(&vault, &keys).await;
    // New keys after rotation work too.
    keys.extend(make_keys(&vault, 23..25).await);
    drop(vault);

    // Afterwards only the new KEK is needed, and the old one alone is refused.
    let vault = ok(db.open_local(kek(2), vec![])).await;
    assert_all_readable(&vault, &keys).await;
    assert!(matches!(db.open_local(kek(1), vec![]).await, Err(VaultError::Kek(_))));
    // Re-running with the same KEK is a no-op; going back to the retired KEK is refused.
    let again = ok(vault.rotate_kek(kek(2))).await;
    assert!(again.complete);
    assert_eq!(again.rewrapped, 0);
    assert!(matches!(vault.rotate_kek(kek(1)).await, Err(VaultError::Kek(_))));
}

async fn interrupted_rotation_stays_readable_and_resumes(db: TestDb) {
    let vault = ok(db.open_local(kek(1), vec![])).await;
    let mut keys = make_keys(&vault, 0..25).await;
    // Stop after one batch of 10: a crash between batches leaves exactly this state.
    let partial = ok(vault.rotate_kek_with(
        kek(2),
        RotateOptions {
            batch_size: 10,
            max_batches: Some(1),
        },
    ))
    .await;
    assert!(!partial.complete);
    assert_eq!(partial.rewrapped, 10);
    assert_all_readable(&vault, &keys).await;
    drop(vault);

    // Restart with only the old KEK: refused (some keys need the new one), never wrong data.
    match db.open_local(kek(1), vec![]).await {
        Err(VaultError::Kek(e)) => assert!(e.to_string().contains("rotation"), "{e}"),
        other => panic!("expected a KEK error, got {other:?}"),
    }
    // With both KEKs every key is readable, and new keys can be created meanwhile.
    let vault = ok(db.open_local(kek(1), vec![kek(2)])).await;
    assert_all_readable(&vault, &keys).await;
    keys.extend(make_keys(&vault, 25..27).await);
    // A different new KEK cannot hijack the rotation in progress.
    assert!(matches!(vault.rotate_kek(kek(3)).await, Err(VaultError::Kek(_))));

    let report = ok(vault.rotate_kek_with(
        kek(2),
        RotateOptions {
            batch_size: 10,
            max_batches: None,
        },
    ))
    .await;
    assert!(report.complete);
    assert_eq!(report.to_version, 2);
    assert_all_readable(&vault, &keys).await;
    drop(vault);

    let vault = ok(db.open_local(kek(2), vec![])).await;
    assert_all_readable(&vault, &keys).await;
    assert_eq!(ok(vault.stats()).await.kek_version, 2);
}
