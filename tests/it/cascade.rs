//! The three-service erasure cascade of `examples/cascade`, end to end over HTTP, on both
//! engines.

#[path = "../../examples/cascade/services.rs"]
mod services;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::http_support::{ADMIN_TOKEN, config_for};
use crate::support::TestDb;

backend_tests!(forgetting_a_user_cascades_to_the_ledger_and_completes);

async fn forgetting_a_user_cascades_to_the_ledger_and_completes(db: TestDb) {
    let server = lethe::server::start(config_for(&db)).await.unwrap();
    let lethe = services::Lethe::new(&format!("http://{}", server.addr), ADMIN_TOKEN);

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
    assert_eq!(report.private_user["events"][0]["data"], Value::Null);
    assert_eq!(report.account["status"], "erased");

    // The two-subject transfer in a public stream: before the forget both names read as written.
    let before = &report.transfer_before["events"][0];
    assert_eq!(before["data"]["sender_name"], "Ada Lovelace");
    assert_eq!(before["data"]["receiver_name"], "Charles Babbage");
    assert_eq!(before["schema_version"], 1);
    assert!(before.get("erased_fields").is_none(), "{before}");
    // After forgetting the sender only the sender's name is gone.
    let after = &report.transfer_after["events"][0];
    assert_eq!(report.transfer_after["status"], "active", "the public stream stays");
    assert_eq!(after["erased"], false);
    assert_eq!(after["schema_version"], 1);
    assert_eq!(after["erased_fields"], json!(["/sender_name"]));
    assert_eq!(
        after["data"],
        json!({
            "from_account": "account-1",
            "to_account": "account-2",
            "sender_id": "456",
            "sender_name": "[erased]",
            "receiver_id": "789",
            "receiver_name": "Charles Babbage",
            "cents": 25_000,
        }),
        "the receiver's name, the amount and every id stay readable"
    );
    assert_eq!(
        report.erasure["field_streams"],
        json!(["transfer-1"]),
        "{}",
        report.erasure
    );
    assert_eq!(
        report.receiver["field_streams"],
        json!(["transfer-1"]),
        "{}",
        report.receiver
    );
    server.stop().await.unwrap();
}
