//! `lethe admin retention` against a running server (contract: "Retention"): a policy is set
//! (created, then replaced), listed and shown with when it next files a request, refused with
//! the server's reason when its period is malformed (and nothing stored), swept, and removed;
//! the erasure requests a sweep files show the policy as their origin, those a person filed
//! show `request`.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::http_support::{ADMIN_TOKEN, Server, config_for};
use crate::support::TestDb;

backend_tests!(admin_cli_manages_retention_policies);

/// Runs `lethe admin <args>` against `base`: (succeeded, stdout, stderr).
async fn admin(base: &str, args: &[&str]) -> (bool, String, String) {
    let base = base.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
            .arg("admin")
            .args(&args)
            .env("LETHE_URL", &base)
            .env("LETHE_TOKEN", ADMIN_TOKEN)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `lethe admin … --json`, parsed; fails the test if the command failed.
async fn admin_json(base: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let (ok, out, err) = admin(base, &args).await;
    assert!(ok, "lethe admin {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lethe admin {args:?}: not JSON ({e}):\n{out}"))
}

async fn admin_cli_manages_retention_policies(db: TestDb) {
    // No background sweep: the test sweeps itself, so it knows what each sweep files.
    let mut config = config_for(&db);
    config.retention_sweep_every = Duration::ZERO;
    let server = Server::start_config(config).await;
    let base = server.base.clone();
    server
        .append(
            "orders-ann",
            json!("no_stream"),
            Some("ann"),
            json!([{"type": "OrderPlaced", "data": {"total": 12}}]),
        )
        .await;

    // Created, then replaced; the table shows what was set.
    let (ok, out, err) = admin(
        &base,
        &[
            "retention",
            "put",
            "orders",
            "--prefix",
            "orders-",
            "--keep-for",
            "P30D",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("created retention policy orders"), "{out}");
    assert!(
        out.contains("orders-") && out.contains("P30D") && out.contains("last_event"),
        "{out}"
    );
    let (ok, out, err) = admin(
        &base,
        &[
            "retention",
            "put",
            "orders",
            "--prefix",
            "orders-",
            "--keep-for",
            "P30D",
            "--after",
            "first_event",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("replaced retention policy orders"), "{out}");
    assert!(out.contains("first_event"), "{out}");

    // Listed and shown, with when it next files a request (ann's stream, 30 days on).
    let policy = admin_json(&base, &["retention", "get", "orders"]).await;
    assert_eq!(policy["name"], "orders");
    assert_eq!(policy["stream_prefix"], "orders-");
    assert_eq!(policy["keep_for"], "P30D");
    assert_eq!(policy["after"], "first_event");
    let next_due = policy["next_due"].as_str().expect("next_due is set").to_owned();
    let (ok, out, err) = admin(&base, &["retention", "list"]).await;
    assert!(ok, "{err}");
    for shown in ["next_due", "orders", "orders-", "P30D", "first_event", &next_due[..10]] {
        assert!(out.contains(shown), "the list shows {shown}:\n{out}");
    }
    let (ok, out, err) = admin(&base, &["retention", "get", "orders"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("orders-") && out.contains(&next_due[..10]), "{out}");

    // A malformed period is refused with the server's reason, and nothing is stored.
    let (ok, out, err) = admin(
        &base,
        &[
            "retention",
            "put",
            "broken",
            "--prefix",
            "orders-",
            "--keep-for",
            "P-1D",
        ],
    )
    .await;
    assert!(!ok, "a negative period is refused:\n{out}");
    assert!(
        err.contains("Invalid retention policy (400)") && err.contains("keep_for"),
        "{err}"
    );
    let list = admin_json(&base, &["retention", "list"]).await;
    let names: Vec<&str> = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["orders"], "only the valid policy is stored");
    let (ok, _, err) = admin(&base, &["retention", "get", "broken"]).await;
    assert!(!ok && err.contains("(404)"), "{err}");

    // A policy with a short period is due at once; the sweep files the request, and the
    // erasure list tells it apart from one a person filed.
    server
        .append(
            "tmp-bob",
            json!("no_stream"),
            Some("bob"),
            json!([{"type": "Visited", "data": {}}]),
        )
        .await;
    let (ok, _, err) = admin(
        &base,
        &["retention", "put", "quick", "--prefix", "tmp-", "--keep-for", "PT1S"],
    )
    .await;
    assert!(ok, "{err}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sweep = admin_json(&base, &["retention", "sweep"]).await;
    assert_eq!(sweep["filed"], 1, "{sweep}");
    let (ok, out, err) = admin(&base, &["retention", "sweep"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("erasure requests filed"), "{out}");
    let (ok, _, err) = admin(
        &base,
        &["forget", "ann", "--reason", "Art. 17", "--requested-by", "dpo"],
    )
    .await;
    assert!(ok, "{err}");
    let row = |out: &str, subject: &str| {
        out.lines()
            .find(|line| line.contains(&format!(" {subject} ")))
            .unwrap_or_else(|| panic!("no row for {subject}:\n{out}"))
            .to_owned()
    };
    let (ok, out, err) = admin(&base, &["erasures", "--subject", "bob"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("origin"), "{out}");
    assert!(row(&out, "bob").contains(" quick "), "{out}");
    let (ok, out, err) = admin(&base, &["erasures", "--subject", "ann"]).await;
    assert!(ok, "{err}");
    assert!(row(&out, "ann").contains(" request "), "{out}");
    let erasures = admin_json(&base, &["erasures", "--subject", "bob"]).await;
    assert_eq!(erasures["erasures"][0]["retention_policy"], "quick", "{erasures}");
    let (ok, out, err) = admin(&base, &["report"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("of them filed by retention policies") && out.contains("quick"),
        "{out}"
    );

    // Removed: gone from the list; removing it again is a 404.
    let (ok, out, err) = admin(&base, &["retention", "delete", "orders"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("retention policy orders removed"), "{out}");
    let list = admin_json(&base, &["retention", "list"]).await;
    assert!(
        list["policies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "orders"),
        "{list}"
    );
    let (ok, _, err) = admin(&base, &["retention", "delete", "orders"]).await;
    assert!(!ok && err.contains("(404)"), "{err}");
    server.stop().await;
}
