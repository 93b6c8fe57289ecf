//! API tokens through the library: a verified token is cached for `TOKEN_CACHE_TTL`, and a
//! revocation applies at once in its own process, within that time in every other, and on
//! PostgreSQL as soon as the notification arrives.

use lethe::{limits::TOKEN_CACHE_TTL, model::Role};

use crate::backend_tests;
use crate::support::TestDb;

backend_tests!(a_revoked_token_is_refused_at_once_here_and_soon_everywhere);

async fn a_revoked_token_is_refused_at_once_here_and_soon_everywhere(db: TestDb) {
    let here = db.open().await;
    // SQLite is one process; a second store on the same file plays the other process all the same.
    let elsewhere = db.open().await;
    let token = here.create_token("ci", Role::Writer).await.unwrap();
    let secret = token.secret.as_str();
    assert!(here.authenticate(secret).await.unwrap().is_some());
    assert!(
        elsewhere.authenticate(secret).await.unwrap().is_some(),
        "now cached there"
    );

    assert!(here.revoke_token(token.record.id).await.unwrap());
    assert!(
        here.authenticate(secret).await.unwrap().is_none(),
        "refused at once here"
    );
    tokio::time::sleep(TOKEN_CACHE_TTL + std::time::Duration::from_millis(100)).await;
    assert!(
        elsewhere.authenticate(secret).await.unwrap().is_none(),
        "refused by the other process once its cache entry is older than the TTL"
    );
}

/// On PostgreSQL the revocation reaches the other processes by notification, not by waiting
/// for the cache to expire: with an hour-long TTL there, only the notification can refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_revocation_reaches_other_processes_by_notification() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let here = db.open().await;
    let mut config = db.config().await;
    config.token_cache_ttl = std::time::Duration::from_secs(3600);
    let elsewhere = db.open_with(config).await;
    let token = here.create_token("ci", Role::Writer).await.unwrap();
    let secret = token.secret.as_str();
    assert!(elsewhere.authenticate(secret).await.unwrap().is_some(), "cached there");
    // A second token, verified there too: it stays valid after the revocation of the first.
    let other = here.create_token("other", Role::Reader).await.unwrap();
    assert!(elsewhere.authenticate(other.secret.as_str()).await.unwrap().is_some());

    assert!(here.revoke_token(token.record.id).await.unwrap());
    let mut refused = false;
    for _ in 0..200 {
        if elsewhere.authenticate(secret).await.unwrap().is_none() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(refused, "the other process still accepts the revoked token after 10 s");
    assert!(
        elsewhere.authenticate(other.secret.as_str()).await.unwrap().is_some(),
        "other tokens stay valid"
    );
}
