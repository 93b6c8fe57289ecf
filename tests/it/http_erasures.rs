//! The erasure workflow over HTTP and through `lethe admin`: dependents and acknowledgements,
//! legal holds (409 `legal_hold`, recorded as refused), filters, subject view, consumer removal.

use std::process::Command;

use serde_json::json;

use crate::backend_tests;
use crate::http_support::{ADMIN_TOKEN, Server, events};
use crate::support::TestDb;

backend_tests!(http_erasure_waits_for_dependents_and_holds_refuse);

async fn http_erasure_waits_for_dependents_and_holds_refuse(db: TestDb) {
    let server = Server::start(&db).await;
    server
        .append("user-private-456", json!("no_stream"), Some("456"), events(1, "Given"))
        .await;
    server
        .put("/consumers/ledger", &server.admin, &json!({"erasure_dependent": true}))
        .await
        .assert_status(200);
    server
        .put("/consumers/audit", &server.admin, &json!({"erasure_dependent": true}))
        .await
        .assert_status(200);

    // A hold refuses the forget, and the refusal is recorded.
    let hold = server
        .put(
            "/admin/subjects/456/hold",
            &server.admin,
            &json!({"reason": "litigation"}),
        )
        .await;
    hold.assert_status(200);
    assert_eq!(hold.body["reason"], "litigation");
    let view = server.get("/admin/subjects/456", &server.admin).await;
    assert_eq!(view.body["hold"]["reason"], "litigation");
    let forget_body = json!({"reason": "Art. 17", "requested_by": "dpo"});
    let refused = server
        .post("/admin/subjects/456/forget", &server.admin, &forget_body)
        .await;
    refused.assert_problem(409, "legal_hold");
    let refused_id = refused.body["request_id"].as_str().unwrap().to_owned();
    let record = server
        .get(&format!("/admin/erasures/{refused_id}"), &server.admin)
        .await;
    assert_eq!(record.body["status"], "refused");
    assert_eq!(record.body["refused_reason"], "litigation");
    let private = server.get("/streams/user-private-456", &server.reader).await;
    assert!(
        !private.body["events"][0]["data"].is_null(),
        "nothing erased while held"
    );
    server
        .delete("/admin/subjects/456/hold", &server.admin)
        .await
        .assert_status(204);
    server
        .delete("/admin/subjects/456/hold", &server.admin)
        .await
        .assert_problem(404, "not_found");
    server
        .put(
            "/admin/subjects/456/hold",
            &server.admin,
            &json!({"reason": "x", "extra": 1}),
        )
        .await
        .assert_problem(400, "invalid_request");

    // Now it goes through, and waits for both dependents.
    let filed = server
        .post("/admin/subjects/456/forget", &server.admin, &forget_body)
        .await;
    filed.assert_status(202);
    assert_eq!(filed.body["status"], "awaiting_acknowledgements");
    assert_eq!(filed.body["overdue"], false);
    assert!(filed.body["deadline"].as_str().is_some());
    let id = filed.body["request_id"].as_str().unwrap().to_owned();
    let tombstone = filed.body["tombstone_position"].as_u64().unwrap();
    let dependents: Vec<_> = filed.body["dependents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["consumer"].clone())
        .collect();
    assert_eq!(dependents, [json!("audit"), json!("ledger")]);

    // The ledger reads the tombstone and acknowledges; the audit consumer is removed.
    let batch = server.get("/consumers/ledger/events?limit=100", &server.reader).await;
    assert!(
        batch.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "SubjectForgotten")
    );
    server
        .post("/consumers/ledger/ack", &server.reader, &json!({"position": tombstone}))
        .await
        .assert_status(200);
    let waiting = server.get(&format!("/admin/erasures/{id}"), &server.admin).await;
    assert_eq!(waiting.body["status"], "awaiting_acknowledgements");
    let awaiting = server
        .get("/admin/erasures?status=awaiting_acknowledgements", &server.admin)
        .await;
    assert_eq!(awaiting.body["erasures"].as_array().unwrap().len(), 1);
    server
        .delete("/consumers/audit", &server.admin)
        .await
        .assert_status(204);
    server
        .delete("/consumers/audit", &server.admin)
        .await
        .assert_problem(404, "not_found");
    let done = server.get(&format!("/admin/erasures/{id}"), &server.admin).await;
    assert_eq!(done.body["status"], "completed");
    let deps = done.body["dependents"].as_array().unwrap();
    assert!(!deps[0]["removed_at"].is_null(), "audit was removed");
    assert!(!deps[1]["acknowledged_at"].is_null(), "ledger acknowledged");

    // Filters.
    let subject = server.get("/admin/erasures?subject=456", &server.admin).await;
    assert_eq!(subject.body["erasures"].as_array().unwrap().len(), 2);
    let refused = server.get("/admin/erasures?status=refused", &server.admin).await;
    assert_eq!(refused.body["erasures"].as_array().unwrap().len(), 1);
    let future = server
        .get("/admin/erasures?from=2999-01-01T00:00:00Z", &server.admin)
        .await;
    assert!(future.body["erasures"].as_array().unwrap().is_empty());
    let overdue = server.get("/admin/erasures?overdue=true", &server.admin).await;
    assert!(overdue.body["erasures"].as_array().unwrap().is_empty());
    server
        .get("/admin/erasures?status=lost", &server.admin)
        .await
        .assert_problem(400, "invalid_request");

    // A webhook must be valid before anything is stored.
    server
        .put(
            "/consumers/hooked",
            &server.admin,
            &json!({"webhook": {"url": "ftp://x", "secret": "0123456789abcdef"}}),
        )
        .await
        .assert_problem(400, "invalid_request");
    server
        .get("/consumers/hooked", &server.admin)
        .await
        .assert_problem(404, "not_found");
    let hooked = server
        .put(
            "/consumers/hooked",
            &server.admin,
            &json!({"erasure_dependent": true, "webhook": {"url": "http://127.0.0.1:9/hook", "secret": "0123456789abcdef"}}),
        )
        .await;
    hooked.assert_status(200);
    assert_eq!(hooked.body["webhook_url"], "http://127.0.0.1:9/hook");
    assert!(hooked.body.get("secret").is_none());
    server.stop().await;
}

/// `lethe admin` drives the same workflow from a terminal (LETHE_URL, LETHE_TOKEN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_files_holds_lists_and_exports() {
    let db = TestDb::sqlite().await;
    let server = Server::start(&db).await;
    server
        .append("user-private-7", json!("no_stream"), Some("7"), events(3, "Given"))
        .await;
    let base = server.base.clone();
    let admin = move |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
            .arg("admin")
            .args(args)
            .env("LETHE_URL", &base)
            .env("LETHE_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |args: Vec<String>| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || admin(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, out, err) = run(args(&["hold", "7", "--reason", "audit 2026"])).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("hold on 7 placed"));
    let (ok, _, err) = run(args(&["forget", "7", "--reason", "Art. 17", "--requested-by", "dpo"]))
        .await
        .unwrap();
    assert!(!ok && err.contains("Legal hold"), "{err}");
    let (ok, _, _) = run(args(&["hold", "7", "--lift"])).await.unwrap();
    assert!(ok);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    let (ok, _, err) = run(args(&["export", "7", "--output", file.to_str().unwrap()]))
        .await
        .unwrap();
    assert!(ok, "{err}");
    let export: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(export["events"].as_array().unwrap().len(), 3);

    let (ok, out, err) = run(args(&[
        "forget",
        "7",
        "--reason",
        "Art. 17",
        "--requested-by",
        "dpo",
        "--json",
    ]))
    .await
    .unwrap();
    assert!(ok, "{err}");
    let filed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(filed["status"], "completed");
    let (ok, out, _) = run(args(&["erasures"])).await.unwrap();
    assert!(
        ok && out.contains("completed") && out.contains("refused"),
        "a table of both requests:\n{out}"
    );
    let (ok, out, _) = run(args(&["erasures", filed["request_id"].as_str().unwrap()]))
        .await
        .unwrap();
    assert!(ok && out.contains("keys_destroyed"), "{out}");
    let (ok, out, _) = run(args(&["subject", "7", "--json"])).await.unwrap();
    assert!(ok);
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["streams"][0]["status"], "erased");
    let (ok, out, err) = run(args(&["audit", "--verify"])).await.unwrap();
    assert!(ok && out.contains("intact"), "{err}");
    let (ok, out, _) = run(args(&["audit", "--action", "hold_placed"])).await.unwrap();
    assert!(ok && out.contains("hold_placed"), "{out}");
    let (ok, out, _) = run(args(&["report"])).await.unwrap();
    assert!(ok && out.contains("keys destroyed"), "{out}");
    let csv = dir.path().join("report.csv");
    let (ok, _, _) = run(args(&["report", "--csv", csv.to_str().unwrap()])).await.unwrap();
    assert!(ok && std::fs::read_to_string(&csv).unwrap().starts_with("section,key,value"));
    server
        .put("/consumers/old", &server.admin, &json!({"erasure_dependent": true}))
        .await
        .assert_status(200);
    let (ok, out, _) = run(args(&["consumers"])).await.unwrap();
    assert!(ok && out.contains("old"), "{out}");
    let (ok, _, _) = run(args(&["consumers", "--remove", "old"])).await.unwrap();
    assert!(ok);
    server
        .get("/consumers/old", &server.admin)
        .await
        .assert_problem(404, "not_found");
    let (ok, out, _) = run(args(&["tokens", "create", "--name", "ci", "--role", "reader"]))
        .await
        .unwrap();
    assert!(ok && out.trim().starts_with("lethe_"));
    let (ok, out, _) = run(args(&["tokens", "list"])).await.unwrap();
    assert!(ok && out.contains("ci"));
    let (ok, _, err) = {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
                .args(["admin", "erasures"])
                .env("LETHE_URL", "http://127.0.0.1:9")
                .env("LETHE_TOKEN", ADMIN_TOKEN)
                .output()
                .unwrap();
            let _ = admin;
            (
                out.status.success(),
                (),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    };
    assert!(!ok && err.contains("cannot reach"), "{err}");
    server.stop().await;
}

/// The last admin token cannot be revoked: the API would be locked for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_admin_token_cannot_be_revoked() {
    let db = TestDb::sqlite().await;
    let server = Server::start(&db).await;
    let tokens = server.get("/admin/tokens", &server.admin).await.body;
    let admins: Vec<String> = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "admin" && t["revoked_at"].is_null())
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(admins.len(), 1);
    server
        .delete(&format!("/admin/tokens/{}", admins[0]), &server.admin)
        .await
        .assert_problem(409, "last_admin_token");
    // With a second admin token, the first can go.
    let second = server
        .post(
            "/admin/tokens",
            &server.admin,
            &json!({"name": "second", "role": "admin"}),
        )
        .await;
    second.assert_status(201);
    let second_secret = second.body["token"].as_str().unwrap().to_owned();
    server
        .delete(&format!("/admin/tokens/{}", admins[0]), &second_secret)
        .await
        .assert_status(204);
    server
        .get("/admin/tokens", &server.admin)
        .await
        .assert_problem(401, "unauthorized");
    server.stop().await;
}

/// Control characters (a NUL above all: PostgreSQL cannot store one) in free text are a 400,
/// never a 500, and change nothing.
async fn free_text_with_control_characters_is_refused(db: TestDb) {
    let server = Server::start(&db).await;
    server.append("cart-1", json!("any"), None, events(1, "E")).await;
    let before = server.head().await;
    let nul = "a\u{0}b";
    let cases: Vec<(reqwest::Method, &str, serde_json::Value)> = vec![
        (
            reqwest::Method::POST,
            "/admin/subjects/5/forget",
            json!({"reason": nul, "requested_by": "dpo"}),
        ),
        (
            reqwest::Method::POST,
            "/admin/subjects/5/forget",
            json!({"reason": "r", "requested_by": nul}),
        ),
        (
            reqwest::Method::POST,
            "/admin/subjects/5/forget",
            json!({"reason": "r", "requested_by": "d", "reference": nul}),
        ),
        (reqwest::Method::PUT, "/admin/subjects/5/hold", json!({"reason": nul})),
        (
            reqwest::Method::PUT,
            "/consumers/c",
            json!({"webhook": {"url": format!("http://x/{nul}"), "secret": "0123456789abcdef"}}),
        ),
        (
            reqwest::Method::PUT,
            "/consumers/c",
            json!({"webhook": {"url": "http://x/", "secret": format!("0123456789abcdef{nul}")}}),
        ),
        (reqwest::Method::DELETE, "/streams/cart-1", json!({"reason": nul})),
        (
            reqwest::Method::POST,
            "/admin/tokens",
            json!({"name": nul, "role": "reader"}),
        ),
    ];
    for (method, path, body) in cases {
        let token = if path.starts_with("/streams") {
            server.writer.clone()
        } else {
            server.admin.clone()
        };
        server
            .call(method, path, Some(&token), Some(&body))
            .await
            .assert_problem(400, "invalid_request");
    }
    assert_eq!(server.head().await, before, "nothing was written");
    let erasures = server.get("/admin/erasures", &server.admin).await;
    assert!(erasures.body["erasures"].as_array().unwrap().is_empty());
    server
        .get("/consumers/c", &server.admin)
        .await
        .assert_problem(404, "not_found");
    server.stop().await;
}

backend_tests!(free_text_with_control_characters_is_refused);
