//! Event schemas and personal fields over HTTP (contract: "Personal data inside events"): the
//! registry (`PUT`/`GET /schemas`), enforce and warn at append, `schema_version` and
//! `erased_fields` on every read path, a personal field of each of two subjects in one public
//! stream forgotten one subject at a time, a forgotten subject staying forgotten, the subject
//! view, erasure answers and export listing the streams holding personal fields, the metric,
//! and `lethe admin schemas`.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::http_support::{ADMIN_TOKEN, Server, SseReader};
use crate::support::TestDb;

backend_tests!(
    http_schema_versions_are_registered_listed_and_audited,
    http_invalid_schemas_store_nothing,
    http_schema_enforce_refuses_and_warn_counts,
    http_schema_version_on_every_read_path,
    http_personal_fields_are_forgotten_per_subject,
    http_personal_field_subjects_must_be_valid,
    admin_cli_manages_schemas,
);

/// A schema for `MoneyTransferred`: the sender's and the receiver's names are personal data of
/// each, found at `/sender_id` and `/receiver_id`.
fn transfer_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "sender_id": {"type": "string"},
            "sender_name": {
                "type": "string",
                "x-lethe-personal": {"subject": "/sender_id"},
                "x-lethe-erased": "[erased]"
            },
            "receiver_id": {"type": "string"},
            "receiver_name": {"type": "string", "x-lethe-personal": {"subject": "/receiver_id"}},
            "amount": {"type": "number"}
        },
        "required": ["amount"]
    })
}

fn transfer(sender: &str, receiver: &str, amount: u64) -> Value {
    json!({
        "type": "MoneyTransferred",
        "data": {
            "sender_id": sender,
            "sender_name": format!("name of {sender}"),
            "receiver_id": receiver,
            "receiver_name": format!("name of {receiver}"),
            "amount": amount
        }
    })
}

async fn register(server: &Server, event_type: &str, body: &Value) -> Value {
    let r = server.put(&format!("/schemas/{event_type}"), &server.admin, body).await;
    assert!(matches!(r.status.as_u16(), 200 | 201), "{}: {}", r.status, r.body);
    r.body
}

/// Waits until an erasure request has completed; returns it.
async fn completed(server: &Server, id: &str) -> Value {
    for _ in 0..100 {
        let r = server.get(&format!("/admin/erasures/{id}"), &server.admin).await;
        r.assert_status(200);
        if r.body["status"] == "completed" {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("erasure {id} did not complete");
}

/// The value of a metric in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn http_schema_versions_are_registered_listed_and_audited(db: TestDb) {
    let server = Server::start(&db).await;
    let v1 = json!({"type": "object", "required": ["amount"]});

    // First registration: version 1, enforce by default.
    let r = server
        .put("/schemas/Deposited", &server.admin, &json!({"schema": v1}))
        .await;
    r.assert_status(201);
    assert_eq!(r.body["type"], "Deposited");
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["mode"], "enforce");
    assert_eq!(r.body["schema"], v1);
    assert!(r.body["registered_at"].as_str().is_some());
    let registered_at = r.body["registered_at"].clone();

    // The same schema and mode again: nothing new, the latest version answers.
    let again = server
        .put(
            "/schemas/Deposited",
            &server.admin,
            &json!({"schema": v1, "mode": "enforce"}),
        )
        .await;
    again.assert_status(200);
    assert_eq!(again.body["version"], 1);
    assert_eq!(again.body["registered_at"], registered_at);

    // Another mode is a change: version 2; so is another schema: version 3.
    let warn = server
        .put(
            "/schemas/Deposited",
            &server.admin,
            &json!({"schema": v1, "mode": "warn"}),
        )
        .await;
    warn.assert_status(201);
    assert_eq!(warn.body["version"], 2);
    assert_eq!(warn.body["mode"], "warn");
    let v3 = json!({"type": "object", "required": ["amount", "currency"]});
    let changed = server
        .put("/schemas/Deposited", &server.admin, &json!({"schema": v3}))
        .await;
    changed.assert_status(201);
    assert_eq!(changed.body["version"], 3);
    assert_eq!(changed.body["mode"], "enforce");
    register(&server, "Withdrawn", &json!({"schema": true})).await;

    // Readers see the latest version of each type, and every version of one.
    let list = server.get("/schemas", &server.reader).await;
    list.assert_status(200);
    let latest: Vec<(Value, Value)> = list.body["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["type"].clone(), s["version"].clone()))
        .collect();
    assert_eq!(latest, [(json!("Deposited"), json!(3)), (json!("Withdrawn"), json!(1))]);
    let one = server.get("/schemas/Deposited", &server.reader).await;
    one.assert_status(200);
    assert_eq!(one.body["type"], "Deposited");
    let versions: Vec<_> = one.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].clone(), v["mode"].clone(), v["schema"].clone()))
        .collect();
    assert_eq!(
        versions,
        [
            (json!(1), json!("enforce"), v1.clone()),
            (json!(2), json!("warn"), v1.clone()),
            (json!(3), json!("enforce"), v3.clone()),
        ]
    );
    server
        .get("/schemas/NeverRegistered", &server.reader)
        .await
        .assert_problem(404, "not_found");

    // Roles: reading needs `reader`, registering `admin`.
    for token in [&server.reader, &server.writer] {
        server
            .put("/schemas/Deposited", token, &json!({"schema": v1}))
            .await
            .assert_problem(403, "forbidden");
    }
    server
        .call(reqwest::Method::GET, "/schemas", None, None)
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(
        server.get("/schemas/Deposited", &server.admin).await.body["versions"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "refused registrations stored nothing"
    );

    // Every new version is audited, by the token that registered it; a repeat is not.
    let audit = server
        .get("/admin/audit?action=schema_registered&limit=100", &server.admin)
        .await;
    audit.assert_status(200);
    let entries = audit.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{entries:?}");
    assert!(entries.iter().all(|e| e["actor"] == "bootstrap admin"), "{entries:?}");
    let verify = server.get("/admin/audit/verify", &server.admin).await;
    assert_eq!(verify.body["intact"], true);
    server.stop().await;
}

async fn http_invalid_schemas_store_nothing(db: TestDb) {
    let server = Server::start(&db).await;
    let refused = [
        // Not a JSON Schema.
        (json!({"schema": {"type": 5}}), 400, "invalid_schema"),
        (json!({"schema": "object"}), 400, "invalid_schema"),
        (
            json!({"schema": {"$schema": "http://json-schema.org/draft-07/schema#"}}),
            400,
            "invalid_schema",
        ),
        // A malformed personal-field pointer, and a personal field at the root.
        (
            json!({"schema": {"properties": {"name": {"x-lethe-personal": {"subject": "sender_id"}}}}}),
            400,
            "invalid_schema",
        ),
        (
            json!({"schema": {"properties": {"name": {"x-lethe-personal": {"subject": "/x~2"}}}}}),
            400,
            "invalid_schema",
        ),
        (
            json!({"schema": {"x-lethe-personal": {"subject": "/id"}}}),
            400,
            "invalid_schema",
        ),
        // A subject id that is itself inside a personal field.
        (
            json!({"schema": {"properties": {"who": {"x-lethe-personal": {"subject": "/who/id"}}}}}),
            400,
            "invalid_schema",
        ),
        // Malformed bodies.
        (json!({"schema": {}, "mode": "sometimes"}), 400, "invalid_request"),
        (json!({"schema": {}, "extra": 1}), 400, "invalid_request"),
        (json!({"mode": "warn"}), 400, "invalid_request"),
    ];
    for (body, status, code) in refused {
        let r = server.put("/schemas/Transfer", &server.admin, &body).await;
        r.assert_problem(status, code);
        assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    }
    server
        .get("/schemas/Transfer", &server.reader)
        .await
        .assert_problem(404, "not_found");
    assert_eq!(server.get("/schemas", &server.reader).await.body["schemas"], json!([]));

    // A refused change leaves the versions as they were.
    register(&server, "Transfer", &json!({"schema": {"type": "object"}})).await;
    server
        .put(
            "/schemas/Transfer",
            &server.admin,
            &json!({"schema": {"properties": {"n": {"x-lethe-personal": {"subject": "n"}}}}}),
        )
        .await
        .assert_problem(400, "invalid_schema");
    let versions = server.get("/schemas/Transfer", &server.reader).await;
    assert_eq!(versions.body["versions"].as_array().unwrap().len(), 1);
    assert_eq!(versions.body["versions"][0]["schema"], json!({"type": "object"}));
    let audit = server.get("/admin/audit?action=schema_registered", &server.admin).await;
    assert_eq!(audit.body["entries"].as_array().unwrap().len(), 1);
    server.stop().await;
}

async fn http_schema_enforce_refuses_and_warn_counts(db: TestDb) {
    let server = Server::start(&db).await;
    let schema = json!({
        "type": "object",
        "properties": {"amount": {"type": "number"}},
        "required": ["amount"]
    });
    register(&server, "Paid", &json!({"schema": schema})).await;

    // Enforce: the violation is refused with where and which keyword, and nothing is stored.
    let bad = json!({"expected_version": "any", "events": [
        {"type": "Paid", "data": {"amount": 1}},
        {"type": "Paid", "data": {"amount": "a lot"}}
    ]});
    let r = server.post("/streams/payments-1", &server.writer, &bad).await;
    r.assert_problem(400, "schema_violation");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("/amount") && detail.contains("type"), "{detail}");
    assert!(!detail.contains("a lot"), "the value is not echoed: {detail}");
    assert_eq!(r.body["pointer"], "/amount");
    assert_eq!(r.body["keyword"], "type");
    assert_eq!(r.body["schema_version"], 1);
    assert_eq!(r.body["stream"], "payments-1");
    assert_eq!(r.body["index"], 1);
    server
        .get("/streams/payments-1", &server.reader)
        .await
        .assert_problem(404, "not_found");
    let missing = server
        .post(
            "/streams/payments-1",
            &server.writer,
            &json!({"events": [{"type": "Paid", "data": {}}]}),
        )
        .await;
    missing.assert_problem(400, "schema_violation");
    assert_eq!(missing.body["keyword"], "required");

    // A multi-stream append fails as a whole.
    let multi = json!({"appends": [
        {"stream": "payments-2", "events": [{"type": "Paid", "data": {"amount": 2}}]},
        {"stream": "payments-3", "events": [{"type": "Other", "data": {}}, {"type": "Paid", "data": {"amount": null}}]}
    ]});
    let r = server.post("/streams", &server.writer, &multi).await;
    r.assert_problem(400, "schema_violation");
    assert_eq!(r.body["stream"], "payments-3");
    assert_eq!(r.body["index"], 1);
    for stream in ["payments-2", "payments-3"] {
        server
            .get(&format!("/streams/{stream}"), &server.reader)
            .await
            .assert_problem(404, "not_found");
    }
    assert_eq!(server.head().await, 0, "nothing was stored");

    // Warn: stored, counted, and read with its schema version.
    register(&server, "Paid", &json!({"schema": schema, "mode": "warn"})).await;
    let stored = server.post("/streams/payments-1", &server.writer, &bad).await;
    stored.assert_status(201);
    let read = server.get("/streams/payments-1", &server.reader).await;
    read.assert_status(200);
    let events = read.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["data"], json!({"amount": "a lot"}));
    assert!(events.iter().all(|e| e["schema_version"] == 2), "{events:?}");
    assert!(events.iter().all(|e| e.get("erased_fields").is_none()), "{events:?}");
    let metrics = server
        .request(reqwest::Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "lethe_schema_violations_total"),
        Some(1.0),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE lethe_schema_violations counter"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "one exposition");

    // An event of a type without a schema has no schema version.
    server
        .append("misc", json!("any"), None, json!([{"type": "Untyped", "data": {}}]))
        .await;
    let untyped = server.get("/streams/misc", &server.reader).await;
    assert!(untyped.body["events"][0].get("schema_version").is_none());
    server.stop().await;
}

async fn http_schema_version_on_every_read_path(db: TestDb) {
    let server = Server::start(&db).await;
    register(&server, "MoneyTransferred", &json!({"schema": transfer_schema()})).await;
    server
        .put("/consumers/books", &server.admin, &json!({}))
        .await
        .assert_status(200);
    server
        .append(
            "ledger-1",
            json!("no_stream"),
            None,
            json!([transfer("alice", "bob", 5)]),
        )
        .await;
    let read = server.get("/streams/ledger-1", &server.reader).await;
    let event = read.body["events"][0].clone();
    assert_eq!(event["schema_version"], 1);
    assert_eq!(event["data"]["sender_name"], "name of alice");
    assert_eq!(event["data"]["receiver_name"], "name of bob");

    let log = server.get("/log", &server.reader).await;
    assert_eq!(log.body["events"][0], event, "the log reads the same event");
    let batch = server.get("/consumers/books/events?limit=10", &server.reader).await;
    assert_eq!(batch.body["events"][0], event, "a consumer reads the same event");
    let response = server
        .request(reqwest::Method::GET, "/subscribe?from=1", Some(&server.reader))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(response);
    let frame = sse.next_event(Duration::from_secs(10)).await;
    assert_eq!(frame.json(), event, "a subscription reads the same event");
    drop(sse);
    server.stop().await;
}

async fn http_personal_fields_are_forgotten_per_subject(db: TestDb) {
    let server = Server::start(&db).await;
    register(&server, "MoneyTransferred", &json!({"schema": transfer_schema()})).await;
    // A public stream (bound to no subject), one event naming two subjects.
    server
        .append(
            "bankaccount-123",
            json!("no_stream"),
            None,
            json!([transfer("alice", "bob", 70)]),
        )
        .await;
    server
        .append(
            "user-private-alice",
            json!("no_stream"),
            Some("alice"),
            json!([{"type": "SignedUp", "data": {}}]),
        )
        .await;
    let read = server.get("/streams/bankaccount-123", &server.reader).await;
    let data = &read.body["events"][0]["data"];
    assert_eq!(data["sender_name"], "name of alice");
    assert_eq!(data["receiver_name"], "name of bob");

    // Both subjects list the stream holding their fields, apart from their bound streams.
    let alice = server.get("/admin/subjects/alice", &server.admin).await;
    alice.assert_status(200);
    assert_eq!(alice.body["field_streams"], json!(["bankaccount-123"]));
    assert_eq!(alice.body["streams"][0]["stream"], "user-private-alice");
    let bob = server.get("/admin/subjects/bob", &server.admin).await;
    assert_eq!(bob.body["field_streams"], json!(["bankaccount-123"]));
    assert_eq!(bob.body["streams"], json!([]));
    let nobody = server.get("/admin/subjects/nobody", &server.admin).await;
    assert_eq!(nobody.body["field_streams"], json!([]));

    // Bob's export holds his own field of the transfer, never Alice's.
    let export = server.get("/admin/subjects/bob/export", &server.admin).await;
    export.assert_status(200);
    let exported = export.body["events"].as_array().unwrap();
    assert_eq!(exported.len(), 1, "{exported:?}");
    assert_eq!(exported[0]["stream"], "bankaccount-123");
    assert_eq!(exported[0]["data"]["receiver_name"], "name of bob");
    assert!(exported[0]["data"].get("sender_name").is_none(), "{exported:?}");

    // Forget Alice: her name reads as the schema's replacement, everything else is intact.
    let filed = server
        .post(
            "/admin/subjects/alice/forget",
            &server.admin,
            &json!({"reason": "Art. 17", "requested_by": "dpo"}),
        )
        .await;
    filed.assert_status(202);
    let id = filed.body["request_id"].as_str().unwrap().to_owned();
    let done = completed(&server, &id).await;
    assert_eq!(done["field_streams"], json!(["bankaccount-123"]));
    assert_eq!(done["streams"], json!(["user-private-alice"]));
    assert_eq!(done["already_erased"], false);
    let listed = server.get("/admin/erasures?subject=alice", &server.admin).await;
    assert_eq!(listed.body["erasures"][0]["field_streams"], json!(["bankaccount-123"]));
    let view = server.get("/admin/subjects/alice", &server.admin).await;
    assert_eq!(view.body["erasures"][0]["field_streams"], json!(["bankaccount-123"]));

    let read = server.get("/streams/bankaccount-123", &server.reader).await;
    read.assert_status(200);
    assert_eq!(read.body["status"], "active", "the public stream is not shredded");
    let event = &read.body["events"][0];
    assert_eq!(event["erased"], false);
    assert_eq!(event["erased_fields"], json!(["/sender_name"]));
    assert_eq!(
        event["data"],
        json!({
            "sender_id": "alice",
            "sender_name": "[erased]",
            "receiver_id": "bob",
            "receiver_name": "name of bob",
            "amount": 70
        })
    );
    let log = server.get("/log?types=MoneyTransferred", &server.reader).await;
    assert_eq!(&log.body["events"][0], event, "the log reads the same");
    let private = server.get("/streams/user-private-alice", &server.reader).await;
    assert_eq!(private.body["status"], "erased");

    // Alice stays forgotten: no new field of hers, no stream bound to her; nothing stored.
    let head = server.head().await;
    let again = server
        .post(
            "/streams/bankaccount-123",
            &server.writer,
            &json!({"events": [transfer("alice", "bob", 1)]}),
        )
        .await;
    again.assert_problem(409, "subject_forgotten");
    assert!(
        !again.body["detail"].as_str().unwrap().contains("name of"),
        "{}",
        again.body
    );
    server
        .post(
            "/streams/user-other-alice",
            &server.writer,
            &json!({"subject": "alice", "events": [{"type": "SignedUp", "data": {}}]}),
        )
        .await
        .assert_problem(409, "subject_forgotten");
    server
        .post(
            "/streams",
            &server.writer,
            &json!({"appends": [
                {"stream": "ledger-2", "events": [transfer("carol", "dave", 1)]},
                {"stream": "ledger-3", "events": [transfer("dave", "alice", 2)]}
            ]}),
        )
        .await
        .assert_problem(409, "subject_forgotten");
    assert_eq!(server.head().await, head, "nothing was stored");
    server
        .get("/streams/user-other-alice", &server.reader)
        .await
        .assert_problem(404, "not_found");
    server
        .get("/streams/ledger-2", &server.reader)
        .await
        .assert_problem(404, "not_found");
    // An event without Alice's name is still fine, though it names her id.
    server
        .append(
            "bankaccount-123",
            json!(0),
            None,
            json!([{"type": "MoneyTransferred", "data": {"sender_id": "alice", "receiver_id": "bob", "receiver_name": "B", "amount": 3}}]),
        )
        .await;

    // Forget Bob too: the first event now has both names erased (his reads as null).
    let filed = server
        .post(
            "/admin/subjects/bob/forget",
            &server.admin,
            &json!({"reason": "Art. 17", "requested_by": "dpo"}),
        )
        .await;
    filed.assert_status(202);
    let done = completed(&server, filed.body["request_id"].as_str().unwrap()).await;
    assert_eq!(done["field_streams"], json!(["bankaccount-123"]));
    assert_eq!(done["streams"], json!([]));
    let read = server.get("/streams/bankaccount-123", &server.reader).await;
    let first = &read.body["events"][0];
    let mut erased: Vec<&str> = first["erased_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    erased.sort_unstable();
    assert_eq!(erased, ["/receiver_name", "/sender_name"]);
    assert_eq!(first["data"]["sender_name"], "[erased]");
    assert_eq!(first["data"]["receiver_name"], Value::Null);
    assert_eq!(first["data"]["amount"], 70);
    assert_eq!(read.body["events"][1]["erased_fields"], json!(["/receiver_name"]));
    server.stop().await;
}

async fn http_personal_field_subjects_must_be_valid(db: TestDb) {
    let server = Server::start(&db).await;
    // No constraint on the subject ids themselves: only the personal-field rules apply.
    let schema = json!({"properties": {"author_name": {"x-lethe-personal": {"subject": "/author"}}}});
    register(&server, "NoteTaken", &json!({"schema": schema})).await;
    let owner = json!({"properties": {"owner_name": {"x-lethe-personal": {"subject": "$stream"}}}});
    register(&server, "AccountOpened", &json!({"schema": owner})).await;
    let cases = [
        json!({"type": "NoteTaken", "data": {"author_name": "Ann"}}),
        json!({"type": "NoteTaken", "data": {"author_name": "Ann", "author": 5}}),
        json!({"type": "NoteTaken", "data": {"author_name": "Ann", "author": null}}),
        json!({"type": "NoteTaken", "data": {"author_name": "Ann", "author": "has space"}}),
        json!({"type": "NoteTaken", "data": {"author_name": "Ann", "author": ""}}),
        // `$stream` on a stream bound to no subject.
        json!({"type": "AccountOpened", "data": {"owner_name": "Ann"}}),
    ];
    for event in cases {
        let r = server
            .post("/streams/notes-1", &server.writer, &json!({"events": [event]}))
            .await;
        r.assert_problem(400, "invalid_subject");
        assert!(
            r.body["pointer"].as_str().is_some_and(|p| p.ends_with("_name")),
            "{}",
            r.body
        );
        assert!(!r.body["detail"].as_str().unwrap().contains("Ann"), "{}", r.body);
    }
    server
        .get("/streams/notes-1", &server.reader)
        .await
        .assert_problem(404, "not_found");
    assert_eq!(server.head().await, 0);

    // Without the personal field no subject is needed; with a valid one it is stored.
    server
        .append(
            "notes-1",
            json!("no_stream"),
            None,
            json!([{"type": "NoteTaken", "data": {}}]),
        )
        .await;
    server
        .append(
            "notes-1",
            json!(0),
            None,
            json!([{"type": "NoteTaken", "data": {"author_name": "Ann", "author": "ann"}}]),
        )
        .await;
    server
        .append(
            "account-ann",
            json!("no_stream"),
            Some("ann"),
            json!([{"type": "AccountOpened", "data": {"owner_name": "Ann"}}]),
        )
        .await;
    let ann = server.get("/admin/subjects/ann", &server.admin).await;
    assert_eq!(ann.body["field_streams"], json!(["account-ann", "notes-1"]));
    server.stop().await;
}

async fn admin_cli_manages_schemas(db: TestDb) {
    let server = Server::start(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("transfer.json");
    std::fs::write(&file, transfer_schema().to_string()).unwrap();
    let base = server.base.clone();
    let run = move |args: Vec<String>, stdin: Option<String>| {
        let base = base.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = Command::new(env!("CARGO_BIN_EXE_lethe"))
                .arg("admin")
                .args(&args)
                .env("LETHE_URL", &base)
                .env("LETHE_TOKEN", ADMIN_TOKEN)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut input = child.stdin.take().unwrap();
            if let Some(stdin) = stdin {
                input.write_all(stdin.as_bytes()).unwrap();
            }
            drop(input);
            let out = child.wait_with_output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let path = file.to_str().unwrap();

    let (ok, out, err) = run(args(&["schemas", "put", "MoneyTransferred", "--file", path]), None)
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("registered MoneyTransferred version 1 (enforce)"), "{out}");
    let (ok, out, err) = run(args(&["schemas", "put", "MoneyTransferred", "--file", path]), None)
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("unchanged"), "{out}");
    let (ok, out, err) = run(
        args(&[
            "schemas",
            "put",
            "MoneyTransferred",
            "--file",
            "-",
            "--mode",
            "warn",
            "--json",
        ]),
        Some(transfer_schema().to_string()),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    let registered: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(registered["version"], 2);
    assert_eq!(registered["mode"], "warn");

    let (ok, out, err) = run(args(&["schemas", "list"]), None).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("MoneyTransferred") && out.contains("warn"), "{out}");
    assert!(
        out.contains("/sender_name ← /sender_id"),
        "personal fields shown:\n{out}"
    );
    let (ok, out, err) = run(args(&["schemas", "get", "MoneyTransferred", "--json"]), None)
        .await
        .unwrap();
    assert!(ok, "{err}");
    let versions: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    let (ok, _, err) = run(args(&["schemas", "get", "Unknown"]), None).await.unwrap();
    assert!(!ok && err.contains("Not found"), "{err}");
    std::fs::write(&file, r#"{"type": 5}"#).unwrap();
    let (ok, _, err) = run(args(&["schemas", "put", "Broken", "--file", path]), None)
        .await
        .unwrap();
    assert!(!ok && err.contains("Invalid schema"), "{err}");

    // The subject view and the erasure show the streams holding personal fields.
    server
        .append(
            "ledger-9",
            json!("no_stream"),
            None,
            json!([transfer("erin", "frank", 9)]),
        )
        .await;
    let (ok, out, err) = run(args(&["subject", "erin"]), None).await.unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains("stream holding personal fields") && out.contains("ledger-9"),
        "{out}"
    );
    let (ok, out, err) = run(
        args(&["forget", "erin", "--reason", "Art. 17", "--requested-by", "dpo"]),
        None,
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("field_streams") && out.contains("ledger-9"), "{out}");
    server.stop().await;
}
