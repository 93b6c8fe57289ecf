//! The three-service erasure cascade of `examples/cascade`, end to end over HTTP.

#[path = "../../examples/cascade/services.rs"]
mod services;

use lethe::server::{ServeConfig, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forgetting_a_user_cascades_to_the_ledger_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let token = "cascade-test-admin-token-0123456789";
    let mut config = ServeConfig::embedded(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_token = Some(token.to_owned());
    let server = start(config).await.unwrap();
    let lethe = services::Lethe::new(&format!("http://{}", server.addr), token);

    let report = services::run(&lethe).await.unwrap();
    assert_eq!(report.ledger_rows_before, 3);
    assert_eq!(
        report.ledger_rows_after, 1,
        "the forgotten user's transactions are gone from the ledger"
    );
    assert_eq!(report.erasure["status"], "completed", "{}", report.erasure);
    let streams: Vec<_> = report.erasure["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        streams,
        ["account-1", "user-private-456"],
        "the user's and the account's private streams"
    );
    assert_eq!(
        report.public_user["events"][0]["data"]["user_id"], "456",
        "public ids survive"
    );
    assert_eq!(report.private_user["events"][0]["data"], serde_json::Value::Null);
    assert_eq!(report.account["status"], "erased");
    server.stop().await.unwrap();
}
