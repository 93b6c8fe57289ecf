//! Physical deletion: destroyed key material — stream keys and subject keys — must be gone from
//! the storage files, not merely unreachable by SQL.

use lethe_keyvault::{KeyId, NewKey};
use sqlx::Connection as _;

use crate::support::{Engine, TestDb, contains, kek, nk, ok, run_on};

fn sqlite_files(db: &TestDb) -> Vec<u8> {
    let path = db.sqlite_path();
    let mut all = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let wal = path.with_file_name("keyvault.db-wal");
    if let Ok(bytes) = std::fs::read(&wal) {
        all.extend_from_slice(&bytes);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_destroyed_key_bytes_leave_db_and_wal_files() {
    run_on(Engine::Sqlite, |db| async move {
        let vault = db.open(kek(1)).await;
        // The subject's stream keys and its subject key (personal fields in other streams).
        let mut private: Vec<_> = (0..20).map(|i| nk(&format!("user-private-{i}"), Some("456"))).collect();
        private.push(NewKey::subject_key("456"));
        let public: Vec<_> = (0..5).map(|i| nk(&format!("user-public-{i}"), None)).collect();
        let private = ok(vault.create_keys(&private)).await;
        let public = ok(vault.create_keys(&public)).await;

        let mut wrapped = Vec::new();
        for (id, _) in &private {
            wrapped.push(
                db.wrapped_bytes(*id)
                    .await
                    .unwrap_or_else(|| panic!("no material for {id}")),
            );
        }
        let public_wrapped = db
            .wrapped_bytes(public[0].0)
            .await
            .unwrap_or_else(|| panic!("no material"));

        // Before: every wrapped key is in the files (so the scan below can see them), and no
        // DEK is ever stored unwrapped.
        let files = sqlite_files(&db);
        for w in &wrapped {
            assert_eq!(w.len(), 61);
            assert!(contains(&files, w), "wrapped key must be findable before destroy");
        }
        for (_, dek) in private.iter().chain(&public) {
            assert!(!contains(&files, dek.expose_secret()), "raw DEK bytes stored");
        }

        let destroyed = ok(vault.destroy_subject_keys("456")).await;
        assert_eq!(destroyed.len(), 21);
        assert!(destroyed.contains(&private[20].0), "the subject key is destroyed too");

        let files = sqlite_files(&db);
        for (w, (id, _)) in wrapped.iter().zip(&private) {
            assert!(
                !contains(&files, w),
                "wrapped key {id} still in the files after destroy"
            );
        }
        // A single stream destroy is physical too.
        let one = public[1].0;
        let one_wrapped = db.wrapped_bytes(one).await.unwrap_or_else(|| panic!("no material"));
        assert_eq!(ok(vault.destroy_stream_key("user-public-1")).await, Some(one));
        assert!(!contains(&sqlite_files(&db), &one_wrapped));
        // Live keys are untouched.
        assert!(contains(&sqlite_files(&db), &public_wrapped));
    })
    .await;
}

/// PostgreSQL: after destroy the material rows are gone and VACUUM has reclaimed their dead
/// tuples, checked on the heap pages' tuples with `pageinspect`. Plain VACUUM does not zero
/// the freed space inside a page, nor WAL, replicas or backups: SECURITY.md says so, and KEK
/// rotation is what makes those remnants useless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_destroyed_key_tuples_are_vacuumed() {
    run_on(Engine::Postgres, |db| async move {
        let vault = db.open(kek(1)).await;
        let mut keys: Vec<_> = (0..10).map(|i| nk(&format!("p-{i}"), Some("789"))).collect();
        keys.push(NewKey::subject_key("789"));
        let keys = ok(vault.create_keys(&keys)).await;
        let ids: Vec<KeyId> = keys.iter().map(|(id, _)| *id).collect();
        let mut wrapped = Vec::new();
        for id in &ids {
            wrapped.push(db.wrapped_bytes(*id).await.unwrap_or_else(|| panic!("no material")));
        }
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pageinspect")
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("pageinspect: {e}"));
        let tuples_sql = "SELECT t_data FROM generate_series(0, pg_relation_size('vault_key_material') / 8192 - 1) AS b, \
                          LATERAL heap_page_items(get_raw_page('vault_key_material', b::int)) WHERE t_data IS NOT NULL";
        let before: Vec<Vec<u8>> = sqlx::query_scalar(tuples_sql).fetch_all(&mut c).await.unwrap_or_else(|e| panic!("{e}"));
        let before = before.concat();
        assert!(wrapped.iter().all(|w| contains(&before, w)), "tuples visible before destroy");

        assert_eq!(ok(vault.destroy_subject_keys("789")).await.len(), 11);

        let after: Vec<Vec<u8>> = sqlx::query_scalar(tuples_sql).fetch_all(&mut c).await.unwrap_or_else(|e| panic!("{e}"));
        let after = after.concat();
        for w in &wrapped {
            assert!(!contains(&after, w), "a dead tuple still holds destroyed key material");
        }
        let _ = c.close().await;
    })
    .await;
}
