//! The vault server over real HTTP on a loopback port, driven by `HttpVault` and by raw
//! requests.

use std::net::SocketAddr;
use std::sync::Arc;

use lethe_keyvault::{KeyId, KeyLookup, KeyVault, NewKey, OpenOptions, VaultError};
use serde_json::{Value, json};

use crate::support::{TestDb, kek, live, nk, ok};

const TOKEN: &str = "test-token-0123456789abcdef";

both_engines!(
    http_client_speaks_the_whole_trait,
    bad_or_missing_token_gets_401_and_changes_nothing,
    malformed_requests_get_4xx_problem_json,
    subject_keys_and_forgotten_subjects_over_http,
);

struct Server {
    addr: SocketAddr,
    local: Arc<dyn KeyVault>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(db: &TestDb) -> Server {
        let local = db.open(kek(1)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let vault = local.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            // A plain `axum::serve`: the accept loop of `lethe keyvault serve` (header timeout,
            // connection cap, drain) is Lethe's, tested with Lethe's server.
            let app = lethe_keyvault::server::router(vault, TOKEN).unwrap_or_else(|e| panic!("router: {e}"));
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                panic!("server: {e}");
            }
        });
        Server {
            addr,
            local,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self, token: &str) -> Arc<dyn KeyVault> {
        ok(lethe_keyvault::open(
            &self.url(),
            OpenOptions {
                token: Some(token.into()),
                ..Default::default()
            },
        ))
        .await
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

async fn http_client_speaks_the_whole_trait(db: TestDb) {
    let server = Server::start(&db).await;
    let remote = server.client(TOKEN).await;
    ok(remote.health()).await;

    let created = ok(remote.create_keys(&[nk("user-private-9", Some("9")), nk("user-public-9", None)])).await;
    // The same keys as the in-process vault behind the server holds.
    let ids: Vec<KeyId> = created.iter().map(|(id, _)| *id).collect();
    let local = ok(server.local.fetch_keys(&ids)).await;
    assert_eq!(live(&local[0].1).expose_secret(), created[0].1.expose_secret());
    let again = ok(remote.create_keys(&[nk("user-private-9", Some("9"))])).await;
    assert_eq!(again[0].0, created[0].0);

    match remote.create_keys(&[nk("user-private-9", Some("other"))]).await {
        Err(VaultError::SubjectMismatch { stream }) => assert_eq!(stream, "user-private-9"),
        other => panic!("expected SubjectMismatch, got {:?}", other.map(|v| v.len())),
    }
    assert!(matches!(
        remote.create_keys(&[nk("bad name", None)]).await,
        Err(VaultError::InvalidInput(_))
    ));

    assert_eq!(ok(remote.destroy_subject_keys("9")).await, vec![created[0].0]);
    assert!(ok(remote.destroy_subject_keys("9")).await.is_empty());
    match remote.create_keys(&[nk("user-private-9", None)]).await {
        Err(VaultError::KeyDestroyed { stream }) => assert_eq!(stream, "user-private-9"),
        other => panic!("expected KeyDestroyed, got {:?}", other.map(|v| v.len())),
    }
    let unknown = KeyId(uuid::Uuid::new_v4());
    let found = ok(remote.fetch_keys(&[created[1].0, created[0].0, unknown])).await;
    assert_eq!(live(&found[0].1).expose_secret(), created[1].1.expose_secret());
    assert!(matches!(found[1].1, KeyLookup::Destroyed));
    assert!(matches!(found[2].1, KeyLookup::NotFound));

    assert_eq!(ok(remote.destroy_stream_key("user-public-9")).await, Some(created[1].0));
    assert_eq!(ok(remote.destroy_stream_key("user-public-9")).await, None);
    let stats = ok(remote.stats()).await;
    assert_eq!((stats.live_keys, stats.destroyed_keys, stats.kek_version), (0, 2, 1));
    server.stop().await;
}

async fn bad_or_missing_token_gets_401_and_changes_nothing(db: TestDb) {
    let server = Server::start(&db).await;
    let created = ok(server.local.create_keys(&[nk("user-private-5", Some("5"))])).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/subjects/destroy", server.url());
    let attempts = [
        None,
        Some("Bearer wrong-token-0123456789abcdef".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer ".to_string()),
    ];
    for auth in attempts {
        let mut req = http.post(&url).json(&json!({ "subject": "5" }));
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert_eq!(
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let body: Value = resp.json().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["code"], "unauthorized");
        assert_eq!(body["status"], 401);
        assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    }
    // The wrong-token client maps 401 back to Unauthorized, for every operation.
    let bad = server.client("wrong-token-0123456789abcdef").await;
    assert!(matches!(
        bad.destroy_stream_key("user-private-5").await,
        Err(VaultError::Unauthorized)
    ));
    assert!(matches!(
        bad.fetch_keys(&[created[0].0]).await,
        Err(VaultError::Unauthorized)
    ));
    assert!(matches!(bad.health().await, Err(VaultError::Unauthorized)));

    // Nothing was destroyed.
    let found = ok(server.local.fetch_keys(&[created[0].0])).await;
    assert_eq!(live(&found[0].1).expose_secret(), created[0].1.expose_secret());
    // /healthz is open and reveals nothing else.
    let health = http
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health.status(), 200);
    server.stop().await;
}

async fn malformed_requests_get_4xx_problem_json(db: TestDb) {
    let server = Server::start(&db).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>, content_type: Option<&str>| {
        let mut req = http
            .post(format!("{}{path}", server.url()))
            .bearer_auth(TOKEN)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    let json_ct = Some("application/json");
    let too_many: Vec<String> = (0..1001).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    // (path, body, content type, expected status, expected code)
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/v1/keys/create",
            b"{not json".to_vec(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "/v1/keys/create",
            br#"{"keys":[{"stream":"a"}]}"#.to_vec(),
            None,
            415,
            "invalid_request",
        ),
        (
            "/v1/keys/create",
            br#"{"keys":"nope"}"#.to_vec(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/v1/keys/create",
            br#"{"keys":[],"extra":1}"#.to_vec(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/v1/keys/create",
            br#"{"keys":[{"stream":"bad name"}]}"#.to_vec(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "/v1/keys/fetch",
            br#"{"ids":["not-a-uuid"]}"#.to_vec(),
            json_ct,
            422,
            "invalid_request",
        ),
        (
            "/v1/keys/fetch",
            serde_json::to_vec(&json!({ "ids": too_many })).unwrap_or_default(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "/v1/subjects/destroy",
            br#"{"subject":""}"#.to_vec(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "/v1/keys/create",
            vec![b' '; 300 * 1024],
            json_ct,
            413,
            "payload_too_large",
        ),
        ("/v1/nope", b"{}".to_vec(), json_ct, 404, "not_found"),
    ];
    for (path, body, ct, status, code) in cases {
        let resp = post(path, body, ct).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), status, "{path} {code}");
        assert_eq!(
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{path} {code}"
        );
        let body: Value = resp.json().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["code"], code, "{path}: {body}");
        assert_eq!(body["status"], status);
    }
    // Nothing was created by any of them, and the server is still serving.
    assert_eq!(ok(server.local.stats()).await.live_keys, 0);
    ok(server.client(TOKEN).await.health()).await;
    // A too-short token is refused at startup.
    assert!(matches!(
        lethe_keyvault::server::router(server.local.clone(), "short"),
        Err(VaultError::InvalidInput(_))
    ));
    server.stop().await;
}

async fn subject_keys_and_forgotten_subjects_over_http(db: TestDb) {
    let server = Server::start(&db).await;
    let remote = server.client(TOKEN).await;
    let created = ok(remote.create_keys(&[NewKey::subject_key("9"), nk("user-private-9", Some("9"))])).await;
    let subject_key = created[0].0;
    let again = ok(remote.create_keys(&[NewKey::subject_key("9")])).await;
    assert_eq!(again[0].0, subject_key);
    assert_eq!(again[0].1.expose_secret(), created[0].1.expose_secret());
    // Fetched by id, remotely and from the vault behind the server alike.
    for vault in [&remote, &server.local] {
        let found = ok(vault.fetch_keys(&[subject_key])).await;
        assert_eq!(live(&found[0].1).expose_secret(), created[0].1.expose_secret());
    }
    let stats = ok(remote.stats()).await;
    assert_eq!((stats.live_keys, stats.subject_keys_live), (2, 1));

    // Malformed subject keys, and destroying one as a stream, are bad requests.
    let unbound = NewKey {
        stream: "$subject:9".into(),
        subject: None,
    };
    assert!(matches!(
        remote.create_keys(&[unbound]).await,
        Err(VaultError::InvalidInput(_))
    ));
    assert!(matches!(
        remote.destroy_stream_key("$subject:9").await,
        Err(VaultError::InvalidInput(_))
    ));

    let mut destroyed = ok(remote.destroy_subject_keys("9")).await;
    destroyed.sort();
    let mut want = vec![created[0].0, created[1].0];
    want.sort();
    assert_eq!(destroyed, want);
    assert!(matches!(
        ok(remote.fetch_keys(&[subject_key])).await[0].1,
        KeyLookup::Destroyed
    ));

    // A forgotten subject comes back as the same typed error as in-process.
    for batch in [
        vec![NewKey::subject_key("9")],
        vec![nk("orders-9", Some("9"))],
        vec![nk("public-9", None), NewKey::subject_key("9")],
    ] {
        match remote.create_keys(&batch).await {
            Err(VaultError::SubjectForgotten { subject }) => assert_eq!(subject, "9"),
            other => panic!("expected SubjectForgotten, got {:?}", other.map(|v| v.len())),
        }
    }
    // On the wire: 409 problem JSON with the stable code and the subject id.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/keys/create", server.url()))
        .bearer_auth(TOKEN)
        .json(&json!({ "keys": [{ "stream": "$subject:9", "subject": "9" }] }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 409);
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = resp.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["code"], "subject_forgotten");
    assert_eq!(body["status"], 409);
    assert_eq!(body["subject"], "9");
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());

    let stats = ok(remote.stats()).await;
    assert_eq!(
        (
            stats.live_keys,
            stats.destroyed_keys,
            stats.subject_keys_live,
            stats.subject_keys_destroyed
        ),
        (0, 2, 0, 1)
    );
    server.stop().await;
}
