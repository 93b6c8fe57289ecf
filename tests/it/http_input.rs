//! Bad input over HTTP gets a clear 4xx problem JSON with a stable code and changes nothing;
//! optimistic concurrency through `ETag` / `If-Match`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::http_support::{RawBody, Reply, Server, events, raw_request, reply};
use crate::support::TestDb;

backend_tests!(
    http_bad_input_is_refused_and_changes_nothing,
    http_oversized_bodies_are_refused_and_change_nothing,
    http_etag_and_if_match,
);

const MIB: usize = 1024 * 1024;

/// A raw POST (any bytes, any content type) as the writer.
async fn post_raw(server: &Server, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
    let mut builder = server.request(Method::POST, path, Some(&server.writer)).body(body);
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    reply(builder.send().await.expect("send")).await
}

/// Everything a client can observe of the store.
async fn state(server: &Server) -> Value {
    let stream = server.get("/streams/s-1", &server.reader).await;
    json!({
        "log": server.log().await,
        "s-1": stream.body,
        "consumers": server.get("/consumers", &server.admin).await.body,
        "erasures": server.get("/admin/erasures", &server.admin).await.body,
        "tokens": server.get("/admin/tokens", &server.admin).await.body,
    })
}

async fn http_bad_input_is_refused_and_changes_nothing(db: TestDb) {
    let server = Server::start(&db).await;
    server
        .append("s-1", json!("no_stream"), Some("7"), events(2, "X"))
        .await;
    server
        .put("/consumers/c-1", &server.admin, &json!({"erasure_dependent": false}))
        .await
        .assert_status(200);
    let before = state(&server).await;
    let json_type = Some("application/json");

    // Malformed, wrongly typed, non-UTF-8 and unknown-field bodies.
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", br#"{"events": [{"type": "X", "data": 1}"#.to_vec()),
        ("not json", b"hello".to_vec()),
        ("empty", Vec::new()),
        ("array", b"[]".to_vec()),
        ("expected_version bool", br#"{"expected_version": true, "events": [{"type": "X", "data": 1}]}"#.to_vec()),
        ("expected_version word", br#"{"expected_version": "latest", "events": [{"type": "X", "data": 1}]}"#.to_vec()),
        ("expected_version negative", br#"{"expected_version": -1, "events": [{"type": "X", "data": 1}]}"#.to_vec()),
        ("expected_version float", br#"{"expected_version": 1.5, "events": [{"type": "X", "data": 1}]}"#.to_vec()),
        ("events string", br#"{"events": "X"}"#.to_vec()),
        ("events missing", br#"{"expected_version": "any"}"#.to_vec()),
        ("data missing", br#"{"events": [{"type": "X"}]}"#.to_vec()),
        ("type number", br#"{"events": [{"type": 7, "data": 1}]}"#.to_vec()),
        ("id not uuid", br#"{"events": [{"id": "nope", "type": "X", "data": 1}]}"#.to_vec()),
        ("subject number", br#"{"subject": 7, "events": [{"type": "X", "data": 1}]}"#.to_vec()),
        ("unknown top-level field", br#"{"events": [{"type": "X", "data": 1}], "stream": "s-1"}"#.to_vec()),
        ("unknown event field", br#"{"events": [{"type": "X", "data": 1, "datta": 2}]}"#.to_vec()),
        ("non-UTF-8 in a string", b"{\"events\": [{\"type\": \"X\xff\xfe\", \"data\": 1}]}".to_vec()),
        ("non-UTF-8 bytes", vec![0xff, 0xfe, 0x00, 0x7b]),
        ("lone surrogate escape", br#"{"events": [{"type": "X", "data": "\ud800"}]}"#.to_vec()),
        ("trailing garbage", br#"{"events": [{"type": "X", "data": 1}]} x"#.to_vec()),
        ("no events", br#"{"events": []}"#.to_vec()),
        ("empty type", br#"{"events": [{"type": "", "data": 1}]}"#.to_vec()),
        ("control char in type", br#"{"events": [{"type": "X\u0007", "data": 1}]}"#.to_vec()),
        ("bad subject", br#"{"subject": "not a subject", "events": [{"type": "X", "data": 1}]}"#.to_vec()),
        ("duplicate ids", br#"{"events": [{"id": "0190b3c4-0000-7000-8000-000000000001", "type": "X", "data": 1}, {"id": "0190b3c4-0000-7000-8000-000000000001", "type": "X", "data": 2}]}"#.to_vec()),
    ];
    for (what, body) in &bodies {
        for path in ["/streams/s-1", "/streams/fresh-1"] {
            let r = post_raw(&server, path, json_type, body.clone()).await;
            assert!(r.status.is_client_error(), "{what}: {} {}", r.status, r.body);
            r.assert_problem(r.status.as_u16(), "invalid_request");
            assert_eq!(r.status, 400, "{what}");
        }
    }

    // The same for multi-stream appends (unknown fields at each level).
    let multi_bodies = [
        json!({"appends": [{"stream": "s-1", "events": events(1, "X"), "extra": 1}]}),
        json!({"appends": [{"stream": "s-1", "events": events(1, "X")}], "atomic": true}),
        json!({"appends": [{"stream": "s-1", "events": [{"type": "X", "data": 1, "x": 0}]}]}),
        json!({"appends": []}),
        json!({"appends": [{"stream": "s-1", "expected_version": true, "events": events(1, "X")}]}),
        json!({"appends": [{"stream": "s-1", "events": events(1, "X")}, {"stream": "s-1", "events": events(1, "X")}]}),
        json!({"appends": "s-1"}),
    ];
    for body in &multi_bodies {
        let r = server.post("/streams", &server.writer, body).await;
        r.assert_problem(400, "invalid_request");
    }
    let r = server
        .post(
            "/streams",
            &server.writer,
            &json!({"appends": [{"stream": "fresh-2", "events": events(1, "X")}, {"stream": "$mine", "events": events(1, "X")}]}),
        )
        .await;
    r.assert_problem(400, "invalid_stream_name");

    // Every request body is a JSON object: serde's sequence form of a struct is refused.
    let admin = server.admin.clone();
    let reader = server.reader.clone();
    let writer = server.writer.clone();
    let routes = [
        (Method::POST, "/streams/s-1", &writer),
        (Method::POST, "/streams", &writer),
        (Method::DELETE, "/streams/s-1", &writer),
        (Method::PUT, "/consumers/c-1", &admin),
        (Method::POST, "/consumers/c-1/ack", &reader),
        (Method::POST, "/admin/subjects/7/forget", &admin),
        (Method::POST, "/admin/tokens", &admin),
    ];
    for (method, path, token) in &routes {
        for body in ["[null, null]", "[]", " [\"any\", null, []]", "\"x\"", "1", "null"] {
            let r = server
                .request(method.clone(), path, Some(token))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            reply(r).await.assert_problem(400, "invalid_request");
        }
    }

    // Missing or wrong Content-Type.
    let good = serde_json::to_vec(&json!({"events": events(1, "X")})).unwrap();
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let r = post_raw(&server, "/streams/s-1", content_type, good.clone()).await;
        r.assert_problem(415, "unsupported_media_type");
    }

    // Invalid stream names in the path, `$` streams, and names too long.
    let long = "x".repeat(201);
    let body = json!({"events": events(1, "X")});
    for path in [
        "/streams/bad%20name".to_owned(),
        "/streams/bad%2Fname".to_owned(),
        "/streams/%C3%A9t%C3%A9".to_owned(),
        format!("/streams/{long}"),
        "/streams/$mine".to_owned(),
        "/streams/%24erasures".to_owned(),
    ] {
        server
            .post(&path, &server.writer, &body)
            .await
            .assert_problem(400, "invalid_stream_name");
    }
    for path in ["/streams/bad%20name".to_owned(), format!("/streams/{long}")] {
        server
            .get(&path, &server.reader)
            .await
            .assert_problem(400, "invalid_stream_name");
        server
            .delete(&path, &server.writer)
            .await
            .assert_problem(400, "invalid_stream_name");
    }
    server
        .delete("/streams/$erasures", &server.writer)
        .await
        .assert_problem(400, "invalid_stream_name");
    // A path segment that is not UTF-8 once decoded.
    for (method, path) in [
        (Method::GET, "/streams/%FF"),
        (Method::POST, "/streams/%FF"),
        (Method::DELETE, "/streams/%FF"),
        (Method::GET, "/admin/subjects/%FF"),
        (Method::GET, "/consumers/%FF/events"),
    ] {
        let token = if path.starts_with("/admin") {
            &server.admin
        } else {
            &server.writer
        };
        let r = server.call(method.clone(), path, Some(token), Some(&body)).await;
        r.assert_problem(400, "invalid_request");
    }

    // Too many events (the limit is 1,000 per append).
    let r = server
        .post("/streams/s-1", &server.writer, &json!({"events": events(1001, "X")}))
        .await;
    r.assert_problem(400, "invalid_request");
    let r = server
        .post(
            "/streams",
            &server.writer,
            &json!({"appends": [
                {"stream": "fresh-3", "events": events(600, "X")},
                {"stream": "fresh-4", "events": events(401, "X")},
            ]}),
        )
        .await;
    r.assert_problem(400, "invalid_request");

    // Bad query parameters.
    for path in [
        "/streams/s-1?limit=0",
        "/streams/s-1?limit=abc",
        "/streams/s-1?limit=-1",
        "/streams/s-1?limit=1001",
        "/streams/s-1?direction=sideways",
        "/streams/s-1?from=x",
        "/streams/s-1?colour=blue",
        "/log?limit=0",
        "/log?limit=abc",
        "/log?from=-3",
        "/log?limit=100000",
        "/log?colour=blue",
        "/subscribe?limit=5",
        "/subscribe?from=abc",
        "/subscribe?colour=blue",
        "/consumers/c-1/events?limit=0",
        "/consumers/c-1/events?wait_ms=soon",
    ] {
        server
            .get(path, &server.reader)
            .await
            .assert_problem(400, "invalid_request");
    }
    for path in ["/log?stream_prefix=bad%07prefix", "/subscribe?stream_prefix=%00"] {
        server
            .get(path, &server.reader)
            .await
            .assert_problem(400, "invalid_stream_name");
    }
    for path in [
        "/admin/erasures?limit=0",
        "/admin/erasures?subject=bad%20subject",
        "/admin/erasures?x=1",
    ] {
        server
            .get(path, &server.admin)
            .await
            .assert_problem(400, "invalid_request");
    }
    let too_many_types = (0..101).map(|i| format!("T{i}")).collect::<Vec<_>>().join(",");
    server
        .get(&format!("/log?types={too_many_types}"), &server.reader)
        .await
        .assert_problem(400, "invalid_request");

    // Bad If-Match and Last-Event-ID headers.
    for if_match in ["abc", "\"1\", \"2\"", "\"-1\"", "\"\""] {
        let r = server
            .request(Method::POST, "/streams/s-1", Some(&server.writer))
            .header("if-match", if_match)
            .json(&body)
            .send()
            .await
            .unwrap();
        reply(r).await.assert_problem(400, "invalid_request");
    }
    for last in ["abc", "-1", "1.5"] {
        let r = server
            .request(Method::GET, "/subscribe", Some(&server.reader))
            .header("last-event-id", last)
            .send()
            .await
            .unwrap();
        reply(r).await.assert_problem(400, "invalid_request");
    }

    // Bad bodies on the other routes: delete, consumers, ack, forget, tokens.
    let r = server
        .request(Method::DELETE, "/streams/s-1", Some(&server.writer))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    reply(r).await.assert_problem(400, "invalid_request");
    server
        .call(
            Method::DELETE,
            "/streams/s-1",
            Some(&server.writer),
            Some(&json!({"why": "x"})),
        )
        .await
        .assert_problem(400, "invalid_request");
    // A deletion's body is optional, but one that is there is JSON.
    let r = server
        .request(Method::DELETE, "/streams/s-1", Some(&server.writer))
        .body(r#"{"reason": "x"}"#)
        .send()
        .await
        .unwrap();
    reply(r).await.assert_problem(415, "unsupported_media_type");
    for bad in [
        json!({"erasure_dependent": "yes"}),
        json!({"types": "A,B"}),
        json!({"checkpoint": 3}),
    ] {
        server
            .put("/consumers/c-1", &server.admin, &bad)
            .await
            .assert_problem(400, "invalid_request");
    }
    server
        .put(
            "/consumers/c-1",
            &server.admin,
            &json!({"stream_prefix": "bad\u{7}prefix"}),
        )
        .await
        .assert_problem(400, "invalid_stream_name");
    server
        .put("/consumers/bad%20name", &server.admin, &json!({}))
        .await
        .assert_problem(400, "invalid_request");
    for bad in [
        json!({"position": -1}),
        json!({"position": "2"}),
        json!({}),
        json!({"position": 1, "x": 1}),
    ] {
        server
            .post("/consumers/c-1/ack", &server.reader, &bad)
            .await
            .assert_problem(400, "invalid_request");
    }
    for bad in [
        json!({"requested_by": "dpo"}),
        json!({"reason": "r"}),
        json!({"reason": "r", "requested_by": "dpo", "urgent": true}),
        json!({"reason": "r".repeat(1001), "requested_by": "dpo"}),
    ] {
        server
            .post("/admin/subjects/7/forget", &server.admin, &bad)
            .await
            .assert_problem(400, "invalid_request");
    }
    server
        .post(
            "/admin/subjects/not%20valid/forget",
            &server.admin,
            &json!({"reason": "r", "requested_by": "dpo"}),
        )
        .await
        .assert_problem(400, "invalid_request");
    for bad in [
        json!({"name": "x", "role": "superuser"}),
        json!({"name": "x"}),
        json!({"name": "x", "role": "reader", "expires": 1}),
    ] {
        server
            .post("/admin/tokens", &server.admin, &bad)
            .await
            .assert_problem(400, "invalid_request");
    }

    // Extreme but well-formed values: a clear answer, never a server error.
    let max = u64::MAX;
    for path in [
        format!("/log?from={max}"),
        format!("/log?from={}", i64::MAX as u64 + 1),
        format!("/streams/s-1?from={max}"),
        format!("/streams/s-1?from={max}&direction=backward"),
        format!("/streams/s-1?from={}&direction=backward", i64::MAX as u64 + 1),
        format!("/consumers/c-1/events?wait_ms={max}&limit=1"),
        "/log?from=18446744073709551616".to_owned(),
        format!("/log?types={}", "T".repeat(201)),
        format!("/log?stream_prefix={}", "p".repeat(201)),
    ] {
        let r = server.get(&path, &server.reader).await;
        assert!(r.status.as_u16() < 500, "{path}: {} {}", r.status, r.body);
        if !r.status.is_success() {
            r.assert_problem(400, r.body["code"].as_str().unwrap());
        }
    }
    let r = server
        .request(Method::GET, "/subscribe", Some(&server.reader))
        .header("last-event-id", max.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    for (expected, code) in [
        (json!(max), "wrong_expected_version"),
        (json!(1e300), "invalid_request"),
    ] {
        let body = json!({"expected_version": expected, "events": events(1, "X")});
        let r = server.post("/streams/s-1", &server.writer, &body).await;
        assert!(r.status.is_client_error(), "{expected}: {}", r.status);
        assert_eq!(r.body["code"], code);
    }
    server
        .post("/consumers/c-1/ack", &server.reader, &json!({"position": max}))
        .await
        .assert_problem(400, "invalid_request");
    // Deeply nested JSON is refused, not a stack overflow.
    let deep = format!(
        r#"{{"events": [{{"type": "X", "data": {}1{}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = post_raw(&server, "/streams/s-1", json_type, deep.into_bytes()).await;
    r.assert_problem(400, "invalid_request");

    // If-Match where it has no meaning is refused rather than silently ignored: a multi-stream
    // append (which stream?) and a stream deletion.
    let multi = json!({"appends": [{"stream": "s-1", "events": events(1, "X")}]});
    let r = server
        .request(Method::POST, "/streams", Some(&server.writer))
        .header("if-match", "\"1\"")
        .json(&multi)
        .send()
        .await
        .unwrap();
    reply(r).await.assert_problem(400, "invalid_request");
    let r = server
        .request(Method::DELETE, "/streams/s-1", Some(&server.writer))
        .header("if-match", "\"1\"")
        .send()
        .await
        .unwrap();
    reply(r).await.assert_problem(400, "invalid_request");

    // Nothing of all this changed anything; the server still works.
    assert_eq!(state(&server).await, before);
    server.append("s-1", json!(1), None, events(1, "X")).await;
    server.stop().await;
}

async fn http_oversized_bodies_are_refused_and_change_nothing(db: TestDb) {
    let server = Server::start(&db).await;
    server.append("s-1", json!("no_stream"), None, events(1, "X")).await;
    let before = state(&server).await;

    // Over the 4 MiB body limit, with a Content-Length.
    let big = json!({"events": [{"type": "X", "data": "a".repeat(4 * MIB)}]});
    let bytes = serde_json::to_vec(&big).unwrap();
    assert!(bytes.len() > 4 * MIB);
    let addr = server.addr();
    let writer_auth = format!("Bearer {}", server.writer);
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", writer_auth.as_str()),
    ];
    for path in ["/streams/s-1", "/streams"] {
        let r = raw_request(&addr, "POST", path, &headers, RawBody::Sized(bytes.clone())).await;
        r.assert_problem(413, "payload_too_large");
    }

    // The same body sent chunked, without a Content-Length: the limit counts the raw bytes.
    let chunks: Vec<Vec<u8>> = bytes.chunks(256 * 1024).map(<[u8]>::to_vec).collect();
    let r = raw_request(
        &addr,
        "POST",
        "/streams/s-1",
        &headers,
        RawBody::Chunked(chunks, Duration::ZERO),
    )
    .await;
    r.assert_problem(413, "payload_too_large");
    // Slowly, going over the limit only with its last chunk: still nothing stored.
    let mut chunks = vec![b"{\"events\": [{\"type\": \"X\", \"data\": \"".to_vec()];
    chunks.extend((0..4).map(|_| vec![b'a'; MIB]));
    chunks.push(b"\"}]}".to_vec());
    let r = raw_request(
        &addr,
        "POST",
        "/streams/s-1",
        &headers,
        RawBody::Chunked(chunks, Duration::from_millis(20)),
    )
    .await;
    r.assert_problem(413, "payload_too_large");
    // Just under the limit, the body is read (and then refused by the per-append byte limit,
    // as its event is over 1 MiB).
    let mut under = b"{\"events\": [{\"type\": \"X\", \"data\": \"".to_vec();
    let tail = b"\"}]}";
    under.resize(4 * MIB - tail.len(), b'a');
    under.extend_from_slice(tail);
    assert_eq!(under.len(), 4 * MIB);
    let r = raw_request(&addr, "POST", "/streams/s-1", &headers, RawBody::Sized(under)).await;
    r.assert_problem(413, "payload_too_large");
    assert!(r.body["detail"].as_str().unwrap().contains("event"), "{}", r.body);

    // Other routes have the same limit.
    let admin_auth = format!("Bearer {}", server.admin);
    let admin_headers = [
        ("Content-Type", "application/json"),
        ("Authorization", admin_auth.as_str()),
    ];
    for path in ["/admin/tokens", "/consumers/c-1", "/admin/subjects/1/forget"] {
        let method = if path.starts_with("/consumers") { "PUT" } else { "POST" };
        let r = raw_request(&addr, method, path, &admin_headers, RawBody::Sized(bytes.clone())).await;
        r.assert_problem(413, "payload_too_large");
    }

    // Under the body limit but over the per-event limit (1 MiB of data).
    let r = server
        .post(
            "/streams/s-1",
            &server.writer,
            &json!({"events": [{"type": "X", "data": "a".repeat(MIB + 1)}]}),
        )
        .await;
    r.assert_problem(413, "payload_too_large");
    assert_eq!(state(&server).await, before);
    server.append("s-1", json!(0), None, events(1, "X")).await;
    server.stop().await;
}

async fn http_etag_and_if_match(db: TestDb) {
    let server = Server::start(&db).await;
    let body = json!({"events": events(1, "X")});
    let with_if_match = |if_match: &'static str, body: Value| {
        let request = server
            .request(Method::POST, "/streams/e-1", Some(&server.writer))
            .header("if-match", if_match)
            .json(&body);
        async move { reply(request.send().await.unwrap()).await }
    };

    // `If-Match` on a stream that does not exist yet fails like `expected_version: 0` would.
    let r = with_if_match("\"0\"", body.clone()).await;
    r.assert_problem(409, "wrong_expected_version");
    assert_eq!(r.body["current_version"], Value::Null);
    let r = with_if_match("*", body.clone()).await;
    r.assert_problem(409, "wrong_expected_version");

    let created = server.append("e-1", json!("no_stream"), None, events(1, "X")).await;
    assert_eq!(created["last_version"], 0);
    let read = server.get("/streams/e-1", &server.reader).await;
    assert_eq!(read.etag(), Some("\"0\""));

    // `If-Match: "<version>"` is `expected_version: <version>`, and the answer's ETag is the
    // new version.
    let r = with_if_match("\"0\"", body.clone()).await;
    r.assert_status(201);
    assert_eq!(r.etag(), Some("\"1\""));
    assert_eq!(server.get("/streams/e-1", &server.reader).await.etag(), Some("\"1\""));
    // A stale ETag: 409 wrong_expected_version with the current version (not 412).
    let r = with_if_match("\"0\"", body.clone()).await;
    r.assert_problem(409, "wrong_expected_version");
    assert_eq!(r.body["current_version"], 1);
    assert_eq!(server.get("/streams/e-1", &server.reader).await.body["version"], 1);
    // `*`: the stream exists.
    let r = with_if_match("*", body.clone()).await;
    r.assert_status(201);
    assert_eq!(r.etag(), Some("\"2\""));
    // A weak ETag compares the same.
    let r = with_if_match("W/\"2\"", body.clone()).await;
    r.assert_status(201);
    assert_eq!(r.etag(), Some("\"3\""));

    // Header and body agreeing is fine; disagreeing is a 400 that changes nothing.
    let r = with_if_match("\"3\"", json!({"expected_version": 3, "events": events(1, "X")})).await;
    r.assert_status(201);
    assert_eq!(r.etag(), Some("\"4\""));
    for disagreeing in [json!(3), json!(5), json!("any"), json!("exists"), json!("no_stream")] {
        let r = with_if_match(
            "\"4\"",
            json!({"expected_version": disagreeing, "events": events(1, "X")}),
        )
        .await;
        r.assert_problem(400, "invalid_request");
    }
    let read = server.get("/streams/e-1", &server.reader).await;
    assert_eq!(read.body["version"], 4);
    assert_eq!(read.etag(), Some("\"4\""));

    // An idempotent retry answers 200 with the ETag of what it appended.
    let id = uuid::Uuid::new_v4();
    let retried = json!({"expected_version": 4, "events": [{"id": id, "type": "X", "data": 1}]});
    let first = server.post("/streams/e-1", &server.writer, &retried).await;
    first.assert_status(201);
    assert_eq!(first.etag(), Some("\"5\""));
    server.append("e-1", json!("any"), None, events(1, "X")).await;
    let again = server.post("/streams/e-1", &server.writer, &retried).await;
    again.assert_status(200);
    assert_eq!(again.etag(), Some("\"5\""));

    // A read past the end still carries the stream's version; reads of other streams theirs.
    let past = server.get("/streams/e-1?from=100", &server.reader).await;
    assert_eq!(past.etag(), Some("\"6\""));
    server.stop().await;
}
