//! Auth over HTTP: the role matrix of every route. No, unknown or revoked token → 401; a role
//! too low → 403; neither answer depends on whether the target exists, and neither changes
//! anything.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend_tests;
use crate::http_support::{BAD_TOKEN, Reply, Server, events};
use crate::support::TestDb;

backend_tests!(http_role_matrix_covers_every_route);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Open,
    Reader,
    Writer,
    Admin,
}

/// One route: method, its template (as in `/openapi.json`), a path for a target that exists
/// and one for a target that does not, a body.
struct Route {
    method: Method,
    template: &'static str,
    existing: String,
    missing: String,
    body: Option<Value>,
    need: Need,
}

fn route(
    (method, template): (Method, &'static str),
    existing: &str,
    missing: &str,
    body: Option<Value>,
    need: Need,
) -> Route {
    Route {
        method,
        template,
        existing: existing.to_owned(),
        missing: missing.to_owned(),
        body,
        need,
    }
}

/// Every route of the contract's table that exists so far (and `GET /admin/tokens`).
fn routes(erasure_id: &str, token_id: &str) -> Vec<Route> {
    let append = json!({"expected_version": "any", "events": events(1, "X")});
    let multi = |s: &str| json!({"appends": [{"stream": s, "expected_version": "any", "events": events(1, "X")}]});
    let forget = json!({"reason": "r", "requested_by": "dpo"});
    let consumer = json!({"stream_prefix": "x-", "erasure_dependent": false});
    use Method as M;
    use Need::*;
    vec![
        route(
            (M::GET, "/streams/{stream}"),
            "/streams/exists-1",
            "/streams/missing-1",
            None,
            Reader,
        ),
        route((M::GET, "/log"), "/log", "/log?from=999", None, Reader),
        route(
            (M::GET, "/subscribe"),
            "/subscribe",
            "/subscribe?stream_prefix=missing-",
            None,
            Reader,
        ),
        route(
            (M::GET, "/consumers/{name}/events"),
            "/consumers/matrix/events",
            "/consumers/missing/events",
            None,
            Reader,
        ),
        route(
            (M::POST, "/consumers/{name}/ack"),
            "/consumers/matrix/ack",
            "/consumers/missing/ack",
            Some(json!({"position": 1})),
            Reader,
        ),
        route(
            (M::POST, "/streams/{stream}"),
            "/streams/exists-1",
            "/streams/missing-1",
            Some(append),
            Writer,
        ),
        route(
            (M::POST, "/streams"),
            "/streams",
            "/streams",
            Some(multi("exists-1")),
            Writer,
        ),
        route(
            (M::DELETE, "/streams/{stream}"),
            "/streams/exists-1",
            "/streams/missing-1",
            None,
            Writer,
        ),
        route((M::GET, "/consumers"), "/consumers", "/consumers", None, Admin),
        route(
            (M::PUT, "/consumers/{name}"),
            "/consumers/matrix",
            "/consumers/missing",
            Some(consumer),
            Admin,
        ),
        route(
            (M::GET, "/consumers/{name}"),
            "/consumers/matrix",
            "/consumers/missing",
            None,
            Admin,
        ),
        route(
            (M::POST, "/admin/subjects/{subject}/forget"),
            "/admin/subjects/42/forget",
            "/admin/subjects/missing/forget",
            Some(forget),
            Admin,
        ),
        route(
            (M::GET, "/admin/subjects/{subject}"),
            "/admin/subjects/42",
            "/admin/subjects/missing",
            None,
            Admin,
        ),
        route(
            (M::GET, "/admin/subjects/{subject}/export"),
            "/admin/subjects/42/export",
            "/admin/subjects/missing/export",
            None,
            Admin,
        ),
        route(
            (M::GET, "/admin/erasures"),
            "/admin/erasures",
            "/admin/erasures?subject=missing",
            None,
            Admin,
        ),
        route(
            (M::GET, "/admin/erasures/{id}"),
            &format!("/admin/erasures/{erasure_id}"),
            &format!("/admin/erasures/{}", Uuid::new_v4()),
            None,
            Admin,
        ),
        route(
            (M::PUT, "/admin/subjects/{subject}/hold"),
            "/admin/subjects/99/hold",
            "/admin/subjects/missing/hold",
            Some(json!({"reason": "matrix"})),
            Admin,
        ),
        route(
            (M::DELETE, "/admin/subjects/{subject}/hold"),
            "/admin/subjects/99/hold",
            "/admin/subjects/missing/hold",
            None,
            Admin,
        ),
        route(
            (M::DELETE, "/consumers/{name}"),
            "/consumers/doomed",
            "/consumers/missing",
            None,
            Admin,
        ),
        route(
            (M::GET, "/admin/audit"),
            "/admin/audit",
            "/admin/audit?after=99999",
            None,
            Admin,
        ),
        route(
            (M::GET, "/admin/reports/erasures"),
            "/admin/reports/erasures",
            "/admin/reports/erasures?from=2999-01-01T00:00:00Z",
            None,
            Admin,
        ),
        route(
            (M::GET, "/admin/audit/verify"),
            "/admin/audit/verify",
            "/admin/audit/verify",
            None,
            Admin,
        ),
        route(
            (M::POST, "/admin/reconcile"),
            "/admin/reconcile",
            "/admin/reconcile",
            None,
            Admin,
        ),
        route(
            (M::POST, "/admin/tokens"),
            "/admin/tokens",
            "/admin/tokens",
            Some(json!({"name": "n", "role": "reader"})),
            Admin,
        ),
        route((M::GET, "/admin/tokens"), "/admin/tokens", "/admin/tokens", None, Admin),
        route(
            (M::DELETE, "/admin/tokens/{id}"),
            &format!("/admin/tokens/{token_id}"),
            &format!("/admin/tokens/{}", Uuid::new_v4()),
            None,
            Admin,
        ),
        // PUT before GET and DELETE: the admin's allowed PUT stores the policy they then use.
        route(
            (M::PUT, "/admin/retention/{name}"),
            "/admin/retention/matrix",
            "/admin/retention/missing",
            Some(json!({"stream_prefix": "x-", "keep_for": "P30D"})),
            Admin,
        ),
        route(
            (M::GET, "/admin/retention"),
            "/admin/retention",
            "/admin/retention",
            None,
            Admin,
        ),
        route(
            (M::GET, "/admin/retention/{name}"),
            "/admin/retention/matrix",
            "/admin/retention/missing",
            None,
            Admin,
        ),
        route(
            (M::DELETE, "/admin/retention/{name}"),
            "/admin/retention/matrix",
            "/admin/retention/missing",
            None,
            Admin,
        ),
        route(
            (M::POST, "/admin/retention-sweep"),
            "/admin/retention-sweep",
            "/admin/retention-sweep",
            None,
            Admin,
        ),
        // PUT before GET: the admin's allowed PUT registers the schema the GETs then read.
        route(
            (M::PUT, "/schemas/{type}"),
            "/schemas/Matrix",
            "/schemas/Missing",
            Some(json!({"schema": {"type": "object"}})),
            Admin,
        ),
        route((M::GET, "/schemas"), "/schemas", "/schemas", None, Reader),
        route(
            (M::GET, "/schemas/{type}"),
            "/schemas/Matrix",
            "/schemas/Missing",
            None,
            Reader,
        ),
        route((M::GET, "/healthz"), "/healthz", "/healthz", None, Open),
        route((M::GET, "/readyz"), "/readyz", "/readyz", None, Open),
        route((M::GET, "/metrics"), "/metrics", "/metrics", None, Open),
        route((M::GET, "/openapi.json"), "/openapi.json", "/openapi.json", None, Open),
        route((M::GET, "/admin/ui"), "/admin/ui", "/admin/ui", None, Open),
        route(
            (M::GET, "/admin/ui/app.js"),
            "/admin/ui/app.js",
            "/admin/ui/app.js",
            None,
            Open,
        ),
        route(
            (M::GET, "/admin/ui/app.css"),
            "/admin/ui/app.css",
            "/admin/ui/app.css",
            None,
            Open,
        ),
    ]
}

/// Sends with a raw Authorization header (or none), without reading an SSE body forever.
async fn send(server: &Server, method: &Method, path: &str, auth: Option<&str>, body: Option<&Value>) -> Reply {
    let mut builder = server.client.request(method.clone(), server.url(path));
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    if let Some(body) = body {
        builder = builder.json(body);
    }
    let response = builder.send().await.expect("send");
    let is_sse = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    if is_sse {
        return Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: Value::Null,
        };
    }
    crate::http_support::reply(response).await
}

/// What the store looks like, to show that refusals change nothing.
async fn snapshot(server: &Server) -> Value {
    let consumers = server.get("/consumers", &server.admin).await.body;
    let tokens = server.get("/admin/tokens", &server.admin).await.body;
    let erasures = server.get("/admin/erasures", &server.admin).await.body;
    let retention = server.get("/admin/retention", &server.admin).await.body;
    json!({"log": server.log().await, "consumers": consumers, "tokens": tokens, "erasures": erasures,
        "retention": retention})
}

async fn http_role_matrix_covers_every_route(db: TestDb) {
    let server = Server::start(&db).await;
    server.append("exists-1", json!("any"), None, events(2, "X")).await;
    server
        .append("user-private-42", json!("any"), Some("42"), events(1, "P"))
        .await;
    server
        .append("user-private-43", json!("any"), Some("43"), events(1, "P"))
        .await;
    for name in ["matrix", "doomed"] {
        server
            .put(
                &format!("/consumers/{name}"),
                &server.admin,
                &json!({"erasure_dependent": false}),
            )
            .await
            .assert_status(200);
    }
    let erased = server
        .post(
            "/admin/subjects/43/forget",
            &server.admin,
            &json!({"reason": "r", "requested_by": "dpo"}),
        )
        .await;
    erased.assert_status(202);
    let erasure_id = erased.body["request_id"].as_str().unwrap().to_owned();
    let victim = server
        .post(
            "/admin/tokens",
            &server.admin,
            &json!({"name": "victim", "role": "reader"}),
        )
        .await;
    let token_id = victim.body["id"].as_str().unwrap().to_owned();

    let routes = routes(&erasure_id, &token_id);
    // The matrix covers every operation `/openapi.json` documents, with the role it documents.
    let spec = server.call(Method::GET, "/openapi.json", None, None).await.body;
    let mut documented = Vec::new();
    for (path, operations) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().unwrap() {
            if !["get", "put", "post", "delete", "patch", "head", "options"].contains(&method.as_str()) {
                continue; // path-level `parameters`, `summary`, …
            }
            let need = if operation.get("security") == Some(&json!([])) {
                "open".to_owned()
            } else {
                operation["x-lethe-role"].as_str().expect("x-lethe-role").to_owned()
            };
            documented.push((method.to_uppercase(), path.clone(), need));
        }
    }
    documented.sort();
    let mut tested: Vec<(String, String, String)> = routes
        .iter()
        .map(|r| {
            let need = format!("{:?}", r.need).to_lowercase();
            (r.method.to_string(), r.template.to_owned(), need)
        })
        .collect();
    tested.sort();
    assert_eq!(tested, documented, "the role matrix and /openapi.json disagree");
    let before = snapshot(&server).await;

    // Refusals: no token, malformed headers, unknown and revoked tokens → 401; too low a role
    // → 403. The same answer for a target that exists and one that does not.
    let bad_auth = [
        None,
        Some(format!("Bearer {BAD_TOKEN}")),
        Some(format!("Bearer {}", server.revoked)),
        Some("Bearer ".to_owned()),
        Some(format!("Basic {}", server.admin)),
        Some(format!("bearer{}", server.admin)),
        Some(server.admin.clone()),
    ];
    let roles = [
        (Need::Reader, server.reader.clone()),
        (Need::Writer, server.writer.clone()),
        (Need::Admin, server.admin.clone()),
    ];
    let mut refusals = 0;
    for r in &routes {
        if r.need == Need::Open {
            continue;
        }
        let mut answers = Vec::new();
        for auth in &bad_auth {
            for path in [&r.existing, &r.missing] {
                let reply = send(&server, &r.method, path, auth.as_deref(), r.body.as_ref()).await;
                reply.assert_problem(401, "unauthorized");
                let challenge = reply.headers.get("www-authenticate").and_then(|v| v.to_str().ok());
                assert!(
                    challenge.is_some_and(|c| c.starts_with("Bearer")),
                    "{:?}",
                    reply.headers
                );
                answers.push(reply.body);
                refusals += 1;
            }
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{} {}: 401 answers differ: {answers:?}",
            r.method,
            r.existing
        );
        let mut forbidden = Vec::new();
        for (role, token) in &roles {
            if *role >= r.need {
                continue;
            }
            for path in [&r.existing, &r.missing] {
                let auth = format!("Bearer {token}");
                let reply = send(&server, &r.method, path, Some(&auth), r.body.as_ref()).await;
                reply.assert_problem(403, "forbidden");
                forbidden.push((role, reply.body));
                refusals += 1;
            }
        }
        for pair in forbidden.chunks(2) {
            assert_eq!(pair[0], pair[1], "{} {}: 403 answers differ", r.method, r.existing);
        }
    }
    assert!(refusals > 300, "{refusals}");
    assert_eq!(snapshot(&server).await, before, "a refused request changed something");

    // Every role at or above the route's need gets through (to the handler's own answer).
    for r in &routes {
        for (role, token) in &roles {
            if *role < r.need {
                continue;
            }
            // Side-effecting routes get a target per role, so each call does real work.
            let path = per_role(&r.method, &r.existing, *role);
            let auth = format!("Bearer {token}");
            let reply = send(&server, &r.method, &path, Some(&auth), r.body.as_ref()).await;
            assert!(
                reply.status.is_success(),
                "{:?} on {} {path}: {} {}",
                role,
                r.method,
                reply.status,
                reply.body
            );
        }
        if r.need == Need::Open {
            let reply = send(&server, &r.method, &r.existing, None, None).await;
            assert!(
                reply.status.is_success(),
                "{} {}: {}",
                r.method,
                r.existing,
                reply.status
            );
            // A bad token on an open route is ignored, not refused.
            let reply = send(&server, &r.method, &r.existing, Some("Bearer nonsense"), None).await;
            assert!(
                reply.status.is_success(),
                "{} {}: {}",
                r.method,
                r.existing,
                reply.status
            );
        }
    }
    // The scheme is case-insensitive (RFC 9110).
    let lower = format!("bearer {}", server.reader);
    send(&server, &Method::GET, "/log", Some(&lower), None)
        .await
        .assert_status(200);
    server.stop().await;
}

/// Targets that an allowed call changes, one per role (so that e.g. the writer's delete does
/// not leave the admin's delete with nothing to delete): appends create `exists-1-<role>`,
/// deletes then delete it.
fn per_role(method: &Method, path: &str, role: Need) -> String {
    let suffix = match role {
        Need::Reader => "r",
        Need::Writer => "w",
        Need::Admin => "a",
        Need::Open => "o",
    };
    if path == "/streams/exists-1" && (method == Method::POST || method == Method::DELETE) {
        return format!("/streams/exists-1-{suffix}");
    }
    path.to_owned()
}
