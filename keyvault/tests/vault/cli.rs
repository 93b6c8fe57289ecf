//! The operator commands, through `cli::run` as the root binary calls it.

use lethe_keyvault::cli::{KeyvaultCommand, run};
use lethe_keyvault::{Kek, KeyId};

use crate::support::{Engine, live, nk, ok, run_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_kek_then_rotate_kek_from_the_command_line() {
    run_on(Engine::Sqlite, |db| async move {
        let old = db.dir.path().join("old.key");
        let new = db.dir.path().join("new.key");
        for path in [&old, &new] {
            run(KeyvaultCommand::GenerateKek { path: path.clone() })
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        // Never overwrites an existing KEK.
        assert!(run(KeyvaultCommand::GenerateKek { path: old.clone() }).await.is_err());

        let load = |p: &std::path::Path| Kek::from_file(p).unwrap_or_else(|e| panic!("{e}"));
        let (ids, bytes): (Vec<KeyId>, Vec<Vec<u8>>) = {
            let vault = db.open(load(&old)).await;
            ok(vault.create_keys(&[nk("a", Some("s")), nk("b", None)]))
                .await
                .into_iter()
                .map(|(id, dek)| (id, dek.expose_secret().to_vec()))
                .unzip()
        };
        run(KeyvaultCommand::RotateKek {
            database_url: db.url.clone(),
            kek_file: Some(old.clone()),
            new_kek_file: new.clone(),
            batch_size: 1,
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

        let vault = db.open(load(&new)).await;
        let found = ok(vault.fetch_keys(&ids)).await;
        for (want, (_, lookup)) in bytes.iter().zip(&found) {
            assert_eq!(&live(lookup).expose_secret()[..], &want[..]);
        }
        assert!(
            db.open_local(load(&old), vec![]).await.is_err(),
            "the old KEK alone is no longer accepted"
        );
    })
    .await;
}
