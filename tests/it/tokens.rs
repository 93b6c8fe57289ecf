//! API tokens through the library: a verified token is cached for `TOKEN_CACHE_TTL`, and a
//! revocation applies at once in its own process and within that time in every other.

use lethe::access::{Role, TOKEN_CACHE_TTL};

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
