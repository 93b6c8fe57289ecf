//! The HTTP API over real HTTP on a loopback port: every route of the contract's table does
//! what the contract says, on both engines.

use std::time::{Duration, Instant};

use lethe::http::HttpLimits;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend_tests;
use crate::http_support::{RawBody, Server, SseReader, events, raw_request, reply};
use crate::support::TestDb;

const SECOND: Duration = Duration::from_secs(1);

backend_tests!(
    http_append_to_one_stream,
    http_multi_stream_append_is_all_or_nothing,
    http_stream_reads_forward_backward_and_page,
    http_delete_stream_shreds_it,
    http_log_filters_and_pages,
    http_subscribe_catches_up_goes_live_and_resumes,
    http_consumers_long_poll_ack_and_lag,
    http_forget_and_the_admin_views_of_it,
    http_tokens_are_shown_once_and_revocable,
    http_operations_routes,
);

fn versions(body: &Value) -> Vec<u64> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect()
}

fn positions(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["position"].as_u64().unwrap()).collect()
}

async fn http_append_to_one_stream(db: TestDb) {
    let server = Server::start(&db).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let body = json!({
        "expected_version": "no_stream",
        "events": [
            {"id": a, "type": "OrderPlaced", "data": {"total": 12.5}, "metadata": {"correlation": "c-1"}},
            {"id": b, "type": "OrderPaid", "data": {"method": "card"}},
        ]
    });
    let created = server.post("/streams/order-1", &server.writer, &body).await;
    created.assert_status(201);
    assert_eq!(
        created.body,
        json!({"stream": "order-1", "first_version": 0, "last_version": 1, "first_position": 1, "last_position": 2})
    );
    assert_eq!(created.etag(), Some("\"1\""));
    assert!(created.content_type().starts_with("application/json"));

    // An idempotent retry (same ids, same versions): 200, the original result, nothing stored.
    let retry = server.post("/streams/order-1", &server.writer, &body).await;
    retry.assert_status(200);
    assert_eq!(retry.body, created.body);
    assert_eq!(retry.etag(), Some("\"1\""));
    assert_eq!(server.head().await, 2);

    // A stale expected version: 409 with the current version, nothing stored.
    let stale = json!({"expected_version": 0, "events": events(1, "OrderShipped")});
    let conflict = server.post("/streams/order-1", &server.writer, &stale).await;
    conflict.assert_problem(409, "wrong_expected_version");
    assert_eq!(conflict.body["current_version"], 1);
    let missing = json!({"expected_version": "exists", "events": events(1, "X")});
    let conflict = server.post("/streams/order-2", &server.writer, &missing).await;
    conflict.assert_problem(409, "wrong_expected_version");
    assert_eq!(conflict.body["current_version"], Value::Null);
    assert_eq!(server.head().await, 2);
    server
        .get("/streams/order-2", &server.reader)
        .await
        .assert_problem(404, "not_found");

    // The right expected version appends; "any" always does.
    let next = server
        .append("order-1", json!(1), None, events(1, "OrderShipped"))
        .await;
    assert_eq!(next["first_version"], 2);
    assert_eq!(next["first_position"], 3);
    let any = server.append("order-1", json!("any"), None, events(2, "Note")).await;
    assert_eq!(
        (any["first_version"].as_u64(), any["last_version"].as_u64()),
        (Some(3), Some(4))
    );
    // A Content-Type with parameters, or a +json one, is JSON too.
    for content_type in ["application/json; charset=utf-8", "application/vnd.lethe+json"] {
        let r = server
            .request(Method::POST, "/streams/order-9", Some(&server.writer))
            .header("content-type", content_type)
            .body(json!({"events": events(1, "X")}).to_string())
            .send()
            .await
            .unwrap();
        reply(r).await.assert_status(201);
    }
    // No expected_version at all means "any".
    let r = server
        .post(
            "/streams/order-1",
            &server.writer,
            &json!({"events": events(1, "Note")}),
        )
        .await;
    r.assert_status(201);
    assert_eq!(r.body["first_version"], 5);

    // Subject binding: a private stream takes only its own subject.
    server
        .append(
            "user-private-1",
            json!("no_stream"),
            Some("1"),
            events(1, "PersonalDataGiven"),
        )
        .await;
    let other = json!({"expected_version": "any", "subject": "2", "events": events(1, "X")});
    server
        .post("/streams/user-private-1", &server.writer, &other)
        .await
        .assert_problem(409, "subject_mismatch");
    let public = json!({"expected_version": "any", "subject": "1", "events": events(1, "X")});
    server
        .post("/streams/order-1", &server.writer, &public)
        .await
        .assert_problem(409, "subject_mismatch");
    let head = server.head().await;

    // Erased (its subject forgotten) and deleted streams take no more events: 410.
    let forget = json!({"reason": "Art. 17", "requested_by": "dpo@example.com"});
    server
        .post("/admin/subjects/1/forget", &server.admin, &forget)
        .await
        .assert_status(202);
    let more = json!({"expected_version": "any", "events": events(1, "X")});
    server
        .post("/streams/user-private-1", &server.writer, &more)
        .await
        .assert_problem(410, "stream_erased");
    server
        .delete("/streams/order-1", &server.writer)
        .await
        .assert_status(200);
    server
        .post("/streams/order-1", &server.writer, &more)
        .await
        .assert_problem(410, "stream_deleted");
    // Only the tombstones were added: two `$erased` events and two in `$erasures`.
    assert_eq!(server.head().await, head + 4);
    server.stop().await;
}

async fn http_multi_stream_append_is_all_or_nothing(db: TestDb) {
    let server = Server::start(&db).await;
    let register = json!({"appends": [
        {"stream": "user-public-456", "expected_version": "no_stream",
         "events": [{"id": Uuid::new_v4(), "type": "UserRegistered", "data": {"user_id": "456"}}]},
        {"stream": "user-private-456", "expected_version": "no_stream", "subject": "456",
         "events": [
            {"id": Uuid::new_v4(), "type": "PersonalDataGiven", "data": {"name": "Ada"}},
            {"id": Uuid::new_v4(), "type": "AddressGiven", "data": {"city": "London"}},
         ]},
    ]});
    let created = server.post("/streams", &server.writer, &register).await;
    created.assert_status(201);
    assert_eq!(
        created.body,
        json!({"appends": [
            {"stream": "user-public-456", "first_version": 0, "last_version": 0, "first_position": 1, "last_position": 1},
            {"stream": "user-private-456", "first_version": 0, "last_version": 1, "first_position": 2, "last_position": 3},
        ]})
    );
    let retry = server.post("/streams", &server.writer, &register).await;
    retry.assert_status(200);
    assert_eq!(retry.body, created.body);
    assert_eq!(server.head().await, 3);

    // One failed expectation fails the whole append and lists each conflicting stream.
    let failing = json!({"appends": [
        {"stream": "user-public-456", "expected_version": 0, "events": events(1, "NewsletterOff")},
        {"stream": "user-private-456", "expected_version": "no_stream", "subject": "456", "events": events(1, "X")},
        {"stream": "fresh-1", "expected_version": "any", "events": events(1, "X")},
    ]});
    let conflict = server.post("/streams", &server.writer, &failing).await;
    conflict.assert_problem(409, "wrong_expected_version");
    assert_eq!(
        conflict.body["streams"],
        json!([{"stream": "user-private-456", "current_version": 1}])
    );
    let both_wrong = json!({"appends": [
        {"stream": "user-public-456", "expected_version": 5, "events": events(1, "X")},
        {"stream": "user-private-456", "expected_version": 0, "events": events(1, "X")},
    ]});
    let conflict = server.post("/streams", &server.writer, &both_wrong).await;
    conflict.assert_problem(409, "wrong_expected_version");
    let mut streams = conflict.body["streams"].as_array().unwrap().clone();
    streams.sort_by_key(|s| s["stream"].as_str().unwrap().to_owned());
    assert_eq!(
        streams,
        [
            json!({"stream": "user-private-456", "current_version": 1}),
            json!({"stream": "user-public-456", "current_version": 0}),
        ]
    );
    // Nothing of either failed append was written.
    assert_eq!(server.head().await, 3);
    server
        .get("/streams/fresh-1", &server.reader)
        .await
        .assert_problem(404, "not_found");
    let public = server.get("/streams/user-public-456", &server.reader).await;
    assert_eq!(public.body["version"], 0);

    // The other errors are as for one stream: a subject mismatch fails the whole append.
    let mismatch = json!({"appends": [
        {"stream": "fresh-2", "expected_version": "any", "events": events(1, "X")},
        {"stream": "user-private-456", "expected_version": "any", "subject": "999", "events": events(1, "X")},
    ]});
    server
        .post("/streams", &server.writer, &mismatch)
        .await
        .assert_problem(409, "subject_mismatch");
    assert_eq!(server.head().await, 3);
    server
        .get("/streams/fresh-2", &server.reader)
        .await
        .assert_problem(404, "not_found");

    // A good multi-stream append takes contiguous positions in the order given.
    let ok = json!({"appends": [
        {"stream": "b-stream", "expected_version": "any", "events": events(2, "X")},
        {"stream": "a-stream", "expected_version": "any", "events": events(3, "Y")},
    ]});
    let r = server.post("/streams", &server.writer, &ok).await;
    r.assert_status(201);
    assert_eq!(r.body["appends"][0]["first_position"], 4);
    assert_eq!(r.body["appends"][0]["last_position"], 5);
    assert_eq!(r.body["appends"][1]["first_position"], 6);
    assert_eq!(r.body["appends"][1]["last_position"], 8);
    server.stop().await;
}

async fn http_stream_reads_forward_backward_and_page(db: TestDb) {
    let server = Server::start(&db).await;
    let id = Uuid::new_v4();
    let first = json!({"expected_version": "no_stream", "events": [
        {"id": id, "type": "Started", "data": {"name": "Ada", "nested": [1, 2.5, null, "ü ✓"]}, "metadata": {"corr": "c-1"}},
    ]});
    server
        .post("/streams/s-1", &server.writer, &first)
        .await
        .assert_status(201);
    server.append("s-1", json!(0), None, events(9, "Tick")).await;

    let all = server.get("/streams/s-1", &server.reader).await;
    all.assert_status(200);
    assert_eq!(all.etag(), Some("\"9\""));
    assert_eq!(all.body["stream"], "s-1");
    assert_eq!(all.body["subject"], Value::Null);
    assert_eq!(all.body["status"], "active");
    assert_eq!(all.body["version"], 9);
    assert_eq!(versions(&all.body), (0..10).collect::<Vec<_>>());
    let e0 = &all.body["events"][0];
    assert_eq!(e0["id"], json!(id));
    assert_eq!(e0["stream"], "s-1");
    assert_eq!(e0["position"], 1);
    assert_eq!(e0["type"], "Started");
    assert_eq!(e0["data"], json!({"name": "Ada", "nested": [1, 2.5, null, "ü ✓"]}));
    assert_eq!(e0["metadata"], json!({"corr": "c-1"}));
    assert_eq!(e0["erased"], false);
    assert!(e0["recorded_at"].as_str().is_some_and(|t| t.contains('T')));

    let slice = server.get("/streams/s-1?from=3&limit=4", &server.reader).await;
    assert_eq!(versions(&slice.body), [3, 4, 5, 6]);
    let back = server
        .get("/streams/s-1?direction=backward&limit=3", &server.reader)
        .await;
    assert_eq!(versions(&back.body), [9, 8, 7]);
    let back = server
        .get("/streams/s-1?direction=backward&from=2&limit=10", &server.reader)
        .await;
    assert_eq!(versions(&back.body), [2, 1, 0]);
    let fwd = server
        .get("/streams/s-1?direction=forward&from=8", &server.reader)
        .await;
    assert_eq!(versions(&fwd.body), [8, 9]);

    // Paging forward with limit 4 visits every version once.
    let mut seen = Vec::new();
    let mut from = 0;
    loop {
        let page = server
            .get(&format!("/streams/s-1?from={from}&limit=4"), &server.reader)
            .await;
        page.assert_status(200);
        let v = versions(&page.body);
        if v.is_empty() {
            break;
        }
        from = v.last().unwrap() + 1;
        seen.extend(v);
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    // Paging backward too.
    let mut seen = Vec::new();
    let mut path = "/streams/s-1?direction=backward&limit=3".to_owned();
    loop {
        let v = versions(&server.get(&path, &server.reader).await.body);
        let Some(&last) = v.last() else { break };
        seen.extend(v);
        if last == 0 {
            break;
        }
        path = format!("/streams/s-1?direction=backward&limit=3&from={}", last - 1);
    }
    assert_eq!(seen, (0..10).rev().collect::<Vec<_>>());

    let missing = server.get("/streams/no-such-stream", &server.reader).await;
    missing.assert_problem(404, "not_found");
    // System streams are readable.
    server
        .append("user-private-7", json!("any"), Some("7"), events(1, "X"))
        .await;
    server.delete("/streams/s-1", &server.writer).await.assert_status(200);
    let erasures = server.get("/streams/$erasures", &server.reader).await;
    erasures.assert_status(200);
    assert_eq!(erasures.body["events"][0]["type"], "StreamDeleted");
    server.stop().await;
}

async fn http_delete_stream_shreds_it(db: TestDb) {
    let server = Server::start(&db).await;
    server
        .append("doomed-1", json!("no_stream"), None, events(3, "X"))
        .await;
    server.append("kept-1", json!("no_stream"), None, events(2, "Y")).await;

    let deleted = server
        .call(
            Method::DELETE,
            "/streams/doomed-1",
            Some(&server.writer),
            Some(&json!({"reason": "cleanup", "requested_by": "ops", "reference": "T-1"})),
        )
        .await;
    deleted.assert_status(200);
    assert_eq!(deleted.body["kind"], "stream");
    assert_eq!(deleted.body["stream"], "doomed-1");
    assert_eq!(deleted.body["status"], "completed");
    assert_eq!(deleted.body["streams"], json!(["doomed-1"]));
    assert_eq!(deleted.body["keys_destroyed"], 1);
    assert_eq!(deleted.body["reason"], "cleanup");
    assert!(Uuid::parse_str(deleted.body["request_id"].as_str().unwrap()).is_ok());

    let read = server.get("/streams/doomed-1", &server.reader).await;
    read.assert_status(200);
    assert_eq!(read.body["status"], "deleted");
    let evs = read.body["events"].as_array().unwrap();
    assert_eq!(evs.len(), 4);
    for e in &evs[..3] {
        assert_eq!(e["data"], Value::Null);
        assert_eq!(e["erased"], true);
        assert_eq!(e["type"], "X");
    }
    assert_eq!(evs[3]["type"], "$erased");

    let kept = server.get("/streams/kept-1", &server.reader).await;
    assert_eq!(kept.body["status"], "active");
    assert_eq!(kept.body["events"][1]["data"], json!({"i": 1}));

    // The body is optional: none at all, or an empty one sent as JSON.
    server.append("doomed-2", json!("any"), None, events(1, "X")).await;
    server.append("doomed-3", json!("any"), None, events(1, "X")).await;
    server
        .delete("/streams/doomed-2", &server.writer)
        .await
        .assert_status(200);
    let r = server
        .request(Method::DELETE, "/streams/doomed-3", Some(&server.writer))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    reply(r).await.assert_status(200);

    // Deleting again, or a stream that does not exist.
    server
        .delete("/streams/doomed-1", &server.writer)
        .await
        .assert_problem(410, "stream_deleted");
    server
        .delete("/streams/never-was", &server.writer)
        .await
        .assert_problem(404, "not_found");
    // The erasure request is visible to the admin.
    let id = deleted.body["request_id"].as_str().unwrap();
    let erasure = server.get(&format!("/admin/erasures/{id}"), &server.admin).await;
    erasure.assert_status(200);
    assert_eq!(erasure.body["status"], "completed");
    server.stop().await;
}

async fn http_log_filters_and_pages(db: TestDb) {
    let server = Server::start(&db).await;
    server
        .append(
            "user-public-1",
            json!("any"),
            None,
            json!([{"type": "UserRegistered", "data": {}}]),
        )
        .await;
    server
        .append(
            "order-1",
            json!("any"),
            None,
            json!([{"type": "OrderPlaced", "data": {}}]),
        )
        .await;
    server
        .append(
            "user-private-1",
            json!("any"),
            Some("1"),
            json!([{"type": "PersonalDataGiven", "data": {"n": 1}}]),
        )
        .await;
    server
        .append(
            "order-1",
            json!("any"),
            None,
            json!([{"type": "OrderShipped", "data": {}}, {"type": "OrderPaid", "data": {}}]),
        )
        .await;
    server
        .append(
            "users-other",
            json!("any"),
            None,
            json!([{"type": "UserRegistered", "data": {}}]),
        )
        .await;

    let all = server.get("/log", &server.reader).await;
    all.assert_status(200);
    let evs = all.body["events"].as_array().unwrap();
    assert_eq!(positions(evs), [1, 2, 3, 4, 5, 6]);
    assert_eq!(all.body["head"], 6);
    assert_eq!(all.body["next"], 7);
    assert_eq!(evs[2]["data"], json!({"n": 1}));

    let users = server.get("/log?stream_prefix=user-", &server.reader).await;
    let streams: Vec<&str> = users.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["user-public-1", "user-private-1"]);

    let types = server.get("/log?types=OrderPlaced,OrderPaid", &server.reader).await;
    assert_eq!(positions(types.body["events"].as_array().unwrap()), [2, 5]);
    let both = server
        .get("/log?stream_prefix=user&types=UserRegistered", &server.reader)
        .await;
    assert_eq!(positions(both.body["events"].as_array().unwrap()), [1, 6]);
    let none = server.get("/log?types=Nothing", &server.reader).await;
    assert!(none.body["events"].as_array().unwrap().is_empty());
    assert_eq!(none.body["head"], 6);
    assert_eq!(none.body["next"], 7);

    // `from` is inclusive; `next` continues a full page.
    let page = server.get("/log?from=2&limit=2", &server.reader).await;
    assert_eq!(positions(page.body["events"].as_array().unwrap()), [2, 3]);
    assert_eq!(page.body["next"], 4);
    let page = server.get("/log?from=4&limit=2", &server.reader).await;
    assert_eq!(positions(page.body["events"].as_array().unwrap()), [4, 5]);
    let page = server.get("/log?from=6&limit=2", &server.reader).await;
    assert_eq!(positions(page.body["events"].as_array().unwrap()), [6]);
    assert_eq!(page.body["next"], 7);
    let past = server.get("/log?from=100", &server.reader).await;
    assert!(past.body["events"].as_array().unwrap().is_empty());
    assert_eq!(past.body["head"], 6);
    server.stop().await;
}

async fn http_subscribe_catches_up_goes_live_and_resumes(db: TestDb) {
    let server = Server::start(&db).await;
    server.append("sub-a", json!("any"), None, events(3, "A")).await;
    server.append("other-b", json!("any"), None, events(1, "B")).await;

    let response = server
        .request(Method::GET, "/subscribe", Some(&server.reader))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(response);
    for position in 1..=4u64 {
        let frame = sse.next_event(10 * SECOND).await;
        assert_eq!(frame.id.as_deref(), Some(position.to_string().as_str()));
        let event = frame.json();
        assert_eq!(event["position"], position);
        assert!(event["stream"].is_string() && event["type"].is_string());
    }
    // Live: new appends arrive on the open subscription, in order.
    server.append("sub-a", json!("any"), None, events(2, "A")).await;
    for position in 5..=6u64 {
        let frame = sse.next_event(10 * SECOND).await;
        assert_eq!(frame.id, Some(position.to_string()));
        assert_eq!(frame.json()["stream"], "sub-a");
    }
    drop(sse);

    // Resuming with Last-Event-ID skips what was seen (and takes precedence over `from`).
    let response = server
        .request(Method::GET, "/subscribe?from=1", Some(&server.reader))
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(response);
    assert_eq!(sse.next_event(10 * SECOND).await.id.as_deref(), Some("5"));
    assert_eq!(sse.next_event(10 * SECOND).await.id.as_deref(), Some("6"));
    drop(sse);

    // Filters: a prefix and a type list, catch-up and live alike; `from` is inclusive.
    let response = server
        .request(
            Method::GET,
            "/subscribe?from=2&stream_prefix=sub-&types=A",
            Some(&server.reader),
        )
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(response);
    for position in [2u64, 3, 5, 6] {
        assert_eq!(sse.next_event(10 * SECOND).await.id, Some(position.to_string()));
    }
    server.append("other-b", json!("any"), None, events(1, "A")).await; // filtered out
    server.append("sub-c", json!("any"), None, events(1, "C")).await; // filtered out
    server.append("sub-c", json!("any"), None, events(1, "A")).await; // 9
    let frame = sse.next_event(10 * SECOND).await;
    assert_eq!(frame.id.as_deref(), Some("9"));
    assert_eq!(frame.json()["stream"], "sub-c");
    drop(sse);
    server.stop().await;
}

/// Keep-alive comment lines appear while a subscription is idle (interval shortened here;
/// the default is 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_subscribe_sends_keep_alive_comments_when_idle() {
    let db = TestDb::sqlite().await;
    let limits = HttpLimits {
        keep_alive: Duration::from_millis(100),
        ..HttpLimits::default()
    };
    let server = Server::start_with_limits(&db, limits).await;
    let response = server
        .request(Method::GET, "/subscribe", Some(&server.reader))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(response);
    let frame = sse.next(10 * SECOND).await.expect("stream open");
    assert!(frame.comment && frame.data.is_none(), "{frame:?}");
    let frame = sse.next(10 * SECOND).await.expect("stream open");
    assert!(frame.comment && frame.data.is_none(), "{frame:?}");
    // Events still come through between keep-alives.
    server.append("k-1", json!("any"), None, events(1, "K")).await;
    assert_eq!(sse.next_event(10 * SECOND).await.id.as_deref(), Some("1"));
    // Shutting the server down ends the subscription instead of hanging the shutdown.
    let stopping = tokio::spawn(server.stop());
    let ended = async { while sse.next(30 * SECOND).await.is_some() {} };
    tokio::time::timeout(30 * SECOND, ended)
        .await
        .expect("SSE ended on shutdown");
    tokio::time::timeout(30 * SECOND, stopping).await.unwrap().unwrap();
}

/// The HTTP layer's own limits with small values: open subscriptions are bounded (and a slot
/// frees when its client goes away), and a request that takes too long gets a 408 problem and
/// stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_subscriber_bound_and_request_timeout() {
    let db = TestDb::sqlite().await;
    let limits = HttpLimits {
        subscribers_max: 2,
        keep_alive: Duration::from_millis(100),
        request_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let server = Server::start_with_limits(&db, limits).await;
    let subscribe = || server.request(Method::GET, "/subscribe", Some(&server.reader)).send();
    let first = SseReader::new(subscribe().await.unwrap());
    let _second = SseReader::new(subscribe().await.unwrap());
    let third = reply(subscribe().await.unwrap()).await;
    third.assert_problem(503, "too_many_subscribers");
    // Other requests are not affected.
    server.append("l-1", json!("any"), None, events(1, "X")).await;
    drop(first);
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let response = subscribe().await.unwrap();
        if response.status() == 200 {
            break;
        }
        reply(response).await.assert_problem(503, "too_many_subscribers");
        assert!(
            Instant::now() < deadline,
            "the slot of a closed subscription was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A body trickling in for 2 s against a 300 ms request timeout.
    let auth = format!("Bearer {}", server.writer);
    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
    let mut chunks = vec![br#"{"events": [{"type": "X", "data": ""#.to_vec()];
    chunks.extend((0..10).map(|_| b"aaaa".to_vec()));
    chunks.push(br#""}]}"#.to_vec());
    let r = raw_request(
        &server.addr(),
        "POST",
        "/streams/slow-1",
        &headers,
        RawBody::Chunked(chunks, Duration::from_millis(200)),
    )
    .await;
    r.assert_problem(408, "request_timeout");
    // Admin routes too (only subscriptions and long polls are exempt).
    let auth = format!("Bearer {}", server.admin);
    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
    let mut chunks = vec![br#"{"role": "admin", "name": ""#.to_vec()];
    chunks.extend((0..10).map(|_| b"aaaa".to_vec()));
    chunks.push(br#""}"#.to_vec());
    let r = raw_request(
        &server.addr(),
        "POST",
        "/admin/tokens",
        &headers,
        RawBody::Chunked(chunks, Duration::from_millis(200)),
    )
    .await;
    r.assert_problem(408, "request_timeout");
    let tokens = server.get("/admin/tokens", &server.admin).await;
    assert_eq!(tokens.body["tokens"].as_array().unwrap().len(), 4, "{}", tokens.body);
    server
        .get("/streams/slow-1", &server.reader)
        .await
        .assert_problem(404, "not_found");
    assert_eq!(server.head().await, 1);
    server.stop().await;
}

async fn http_consumers_long_poll_ack_and_lag(db: TestDb) {
    let server = Server::start(&db).await;
    server
        .append("order-1", json!("any"), None, events(2, "OrderPlaced"))
        .await; // 1, 2
    server
        .append("user-1", json!("any"), None, events(1, "UserRegistered"))
        .await; // 3
    server
        .append("order-2", json!("any"), None, events(1, "OrderPaid"))
        .await; // 4

    let registered = server
        .put(
            "/consumers/billing",
            &server.admin,
            &json!({"stream_prefix": "order-", "types": ["OrderPlaced", "OrderPaid"], "erasure_dependent": false}),
        )
        .await;
    registered.assert_status(200);
    assert_eq!(registered.body["name"], "billing");
    assert_eq!(registered.body["checkpoint"], 0);
    assert_eq!(registered.body["lag"], 4);
    assert_eq!(registered.body["types"], json!(["OrderPlaced", "OrderPaid"]));
    server
        .put(
            "/consumers/erasure-watch",
            &server.admin,
            &json!({"erasure_dependent": true}),
        )
        .await
        .assert_status(200);

    let list = server.get("/consumers", &server.admin).await;
    list.assert_status(200);
    let mut names: Vec<&str> = list.body["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["billing", "erasure-watch"]);
    let one = server.get("/consumers/erasure-watch", &server.admin).await;
    assert_eq!(one.body["erasure_dependent"], true);
    server
        .get("/consumers/nobody", &server.admin)
        .await
        .assert_problem(404, "not_found");

    // Reading needs only the reader role; it does not move the checkpoint.
    let batch = server.get("/consumers/billing/events?limit=2", &server.reader).await;
    batch.assert_status(200);
    assert_eq!(positions(batch.body["events"].as_array().unwrap()), [1, 2]);
    assert_eq!(batch.body["checkpoint"], 0);
    assert_eq!(batch.body["head"], 4);
    let again = server.get("/consumers/billing/events", &server.reader).await;
    assert_eq!(positions(again.body["events"].as_array().unwrap()), [1, 2, 4]);

    // Ack moves the checkpoint (and lag), never back, never past the head.
    let acked = server
        .post("/consumers/billing/ack", &server.reader, &json!({"position": 2}))
        .await;
    acked.assert_status(200);
    assert_eq!(acked.body["checkpoint"], 2);
    assert_eq!(acked.body["lag"], 2);
    let after = server.get("/consumers/billing/events", &server.reader).await;
    assert_eq!(positions(after.body["events"].as_array().unwrap()), [4]);
    assert_eq!(after.body["checkpoint"], 2);
    let back = server
        .post("/consumers/billing/ack", &server.reader, &json!({"position": 1}))
        .await;
    back.assert_status(200);
    assert_eq!(back.body["checkpoint"], 2);
    server
        .post("/consumers/billing/ack", &server.reader, &json!({"position": 99}))
        .await
        .assert_problem(400, "invalid_request");
    server
        .post("/consumers/billing/ack", &server.reader, &json!({"position": 4}))
        .await
        .assert_status(200);
    let listed = server.get("/consumers/billing", &server.admin).await;
    assert_eq!(listed.body["checkpoint"], 4);
    assert_eq!(listed.body["lag"], 0);

    // Nothing new: a short wait returns empty, after the wait.
    let started = Instant::now();
    let empty = server
        .get("/consumers/billing/events?wait_ms=300", &server.reader)
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(empty.body["events"].as_array().unwrap().is_empty());

    // Long poll: returns as soon as a matching event is appended during the wait, well before
    // its 20 s wait; an event that does not match does not end it.
    let poller = {
        let client = server.client.clone();
        let url = server.url("/consumers/billing/events?limit=10&wait_ms=20000");
        let token = server.reader.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = reply(client.get(url).bearer_auth(token).send().await.unwrap()).await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .append("user-2", json!("any"), None, events(1, "UserRegistered"))
        .await; // 5
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poller.is_finished(), "a non-matching event ended the long poll");
    server
        .append("order-3", json!("any"), None, events(1, "OrderPlaced"))
        .await; // 6
    let (r, waited) = poller.await.unwrap();
    r.assert_status(200);
    assert_eq!(positions(r.body["events"].as_array().unwrap()), [6]);
    assert!(waited < Duration::from_secs(15), "long poll took {waited:?}");

    server
        .get("/consumers/nobody/events", &server.reader)
        .await
        .assert_problem(404, "not_found");
    server
        .post("/consumers/nobody/ack", &server.reader, &json!({"position": 1}))
        .await
        .assert_problem(404, "not_found");
    // Changing a consumer keeps its checkpoint.
    let changed = server
        .put("/consumers/billing", &server.admin, &json!({"stream_prefix": "order-"}))
        .await;
    changed.assert_status(200);
    assert_eq!(changed.body["checkpoint"], 4);
    assert_eq!(changed.body["types"], json!([]));
    server.stop().await;
}

async fn http_forget_and_the_admin_views_of_it(db: TestDb) {
    let server = Server::start(&db).await;
    let register = json!({"appends": [
        {"stream": "user-public-456", "expected_version": "no_stream",
         "events": [{"type": "UserRegistered", "data": {"user_id": "456", "newsletter": true}}]},
        {"stream": "user-private-456", "expected_version": "no_stream", "subject": "456",
         "events": [{"type": "PersonalDataGiven", "data": {"name": "Ada Lovelace"}}]},
    ]});
    server
        .post("/streams", &server.writer, &register)
        .await
        .assert_status(201);
    server
        .append(
            "orders-private-456",
            json!("no_stream"),
            Some("456"),
            events(3, "OrderAddress"),
        )
        .await;
    server
        .append(
            "user-private-789",
            json!("no_stream"),
            Some("789"),
            events(1, "PersonalDataGiven"),
        )
        .await;

    // Access before forgetting: the bound streams, and an export of every event, decrypted.
    let subject = server.get("/admin/subjects/456", &server.admin).await;
    subject.assert_status(200);
    assert_eq!(subject.body["subject"], "456");
    let mut bound: Vec<(String, String)> = subject.body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stream"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    bound.sort();
    assert_eq!(
        bound,
        [
            ("orders-private-456".to_owned(), "active".to_owned()),
            ("user-private-456".to_owned(), "active".to_owned())
        ]
    );
    assert!(subject.body["erasures"].as_array().unwrap().is_empty());

    let export = server.get("/admin/subjects/456/export", &server.admin).await;
    export.assert_status(200);
    assert!(export.content_type().starts_with("application/json"));
    assert!(export.body.is_object(), "export is not JSON: {}", export.body);
    assert_eq!(export.body["subject"], "456");
    let exported = export.body["events"].as_array().unwrap();
    assert_eq!(exported.len(), 4);
    let mut exported_streams: Vec<&str> = exported.iter().map(|e| e["stream"].as_str().unwrap()).collect();
    exported_streams.sort_unstable();
    assert_eq!(
        exported_streams,
        [
            "orders-private-456",
            "orders-private-456",
            "orders-private-456",
            "user-private-456"
        ]
    );
    assert!(exported.iter().any(|e| e["data"] == json!({"name": "Ada Lovelace"})));
    let nobody = server.get("/admin/subjects/nobody/export", &server.admin).await;
    nobody.assert_status(200);
    assert_eq!(nobody.body["events"], json!([]));

    // Forget: 202 with the request.
    let forget = server
        .post(
            "/admin/subjects/456/forget",
            &server.admin,
            &json!({"reason": "Art. 17 request", "requested_by": "dpo@example.com", "reference": "REQ-1"}),
        )
        .await;
    forget.assert_status(202);
    let request_id = forget.body["request_id"].as_str().unwrap().to_owned();
    assert!(Uuid::parse_str(&request_id).is_ok());
    assert_eq!(forget.body["kind"], "subject");
    assert_eq!(forget.body["subject"], "456");
    assert_eq!(forget.body["status"], "completed");
    assert_eq!(forget.body["keys_destroyed"], 2);
    assert_eq!(forget.body["reference"], "REQ-1");

    // The private streams read as erased (everything but data intact); the public one is intact.
    let private = server.get("/streams/user-private-456", &server.reader).await;
    private.assert_status(200);
    assert_eq!(private.body["status"], "erased");
    assert_eq!(private.body["subject"], "456");
    let e0 = &private.body["events"][0];
    assert_eq!(e0["data"], Value::Null);
    assert_eq!(e0["erased"], true);
    assert_eq!(e0["type"], "PersonalDataGiven");
    assert_eq!(
        private.body["events"].as_array().unwrap().last().unwrap()["type"],
        "$erased"
    );
    let public = server.get("/streams/user-public-456", &server.reader).await;
    assert_eq!(public.body["status"], "active");
    assert_eq!(
        public.body["events"][0]["data"],
        json!({"user_id": "456", "newsletter": true})
    );
    let other = server.get("/streams/user-private-789", &server.reader).await;
    assert_eq!(other.body["events"][0]["data"], json!({"i": 0}));
    // No read path yields the forgotten data: the log and the export neither.
    let everything = server
        .log()
        .await
        .into_iter()
        .map(|e| e.to_string())
        .collect::<String>();
    assert!(!everything.contains("Ada Lovelace"));
    let export = server.get("/admin/subjects/456/export", &server.admin).await;
    export.assert_status(200);
    assert!(!export.body.to_string().contains("Ada Lovelace"));
    // A multi-stream append touching an erased stream fails whole.
    let multi = json!({"appends": [
        {"stream": "user-public-456", "expected_version": "any", "events": events(1, "X")},
        {"stream": "user-private-456", "expected_version": "any", "events": events(1, "X")},
    ]});
    let head = server.head().await;
    server
        .post("/streams", &server.writer, &multi)
        .await
        .assert_problem(410, "stream_erased");
    assert_eq!(server.head().await, head);

    // The erasure request, by id and in lists.
    let by_id = server
        .get(&format!("/admin/erasures/{request_id}"), &server.admin)
        .await;
    by_id.assert_status(200);
    assert_eq!(by_id.body["request_id"], request_id);
    assert_eq!(by_id.body["status"], "completed");
    let mut streams: Vec<&str> = by_id.body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    streams.sort_unstable();
    assert_eq!(streams, ["orders-private-456", "user-private-456"]);
    assert_eq!(by_id.body["requested_by"], "dpo@example.com");
    server
        .get(&format!("/admin/erasures/{}", Uuid::new_v4()), &server.admin)
        .await
        .assert_problem(404, "not_found");
    server
        .get("/admin/erasures/not-a-uuid", &server.admin)
        .await
        .assert_problem(400, "invalid_request");
    let list = server.get("/admin/erasures", &server.admin).await;
    list.assert_status(200);
    assert!(
        list.body["erasures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["request_id"] == request_id.as_str())
    );
    let filtered = server.get("/admin/erasures?subject=789", &server.admin).await;
    assert!(filtered.body["erasures"].as_array().unwrap().is_empty());
    let filtered = server
        .get("/admin/erasures?subject=456&status=completed", &server.admin)
        .await;
    assert_eq!(filtered.body["erasures"].as_array().unwrap().len(), 1);

    let subject = server.get("/admin/subjects/456", &server.admin).await;
    assert!(
        subject.body["streams"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "erased")
    );
    assert_eq!(subject.body["erasures"][0]["request_id"], request_id.as_str());

    // Forgetting again is idempotent: a new request that finds nothing left.
    let again = server
        .post(
            "/admin/subjects/456/forget",
            &server.admin,
            &json!({"reason": "again", "requested_by": "dpo@example.com"}),
        )
        .await;
    again.assert_status(202);
    assert_eq!(again.body["already_erased"], true);
    server.stop().await;
}

async fn http_tokens_are_shown_once_and_revocable(db: TestDb) {
    let server = Server::start(&db).await;
    let created = server
        .post(
            "/admin/tokens",
            &server.admin,
            &json!({"name": "ci deploy", "role": "writer"}),
        )
        .await;
    created.assert_status(201);
    let secret = created.body["token"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["role"], "writer");
    assert_eq!(created.body["name"], "ci deploy");
    assert!(secret.len() >= 32);

    // Usable at once, for what its role allows.
    let body = json!({"events": events(1, "X")});
    server.post("/streams/t-1", &secret, &body).await.assert_status(201);
    server
        .get("/admin/erasures", &secret)
        .await
        .assert_problem(403, "forbidden");

    // Listed without its secret.
    let list = server.get("/admin/tokens", &server.admin).await;
    list.assert_status(200);
    assert!(!list.body.to_string().contains(&secret));
    let listed = list.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert!(listed.get("token").is_none());
    assert_eq!(listed["revoked_at"], Value::Null);

    // Revoked: 204, then 401 everywhere; revoking twice is 404.
    server
        .delete(&format!("/admin/tokens/{id}"), &server.admin)
        .await
        .assert_status(204);
    server
        .post("/streams/t-1", &secret, &body)
        .await
        .assert_problem(401, "unauthorized");
    server
        .get("/streams/t-1", &secret)
        .await
        .assert_problem(401, "unauthorized");
    server
        .delete(&format!("/admin/tokens/{id}"), &server.admin)
        .await
        .assert_problem(404, "not_found");
    server
        .delete("/admin/tokens/not-a-uuid", &server.admin)
        .await
        .assert_problem(400, "invalid_request");
    let list = server.get("/admin/tokens", &server.admin).await;
    let listed = list.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(listed["revoked_at"].is_string());
    assert_eq!(server.head().await, 1);

    // A reader token made over HTTP reads but cannot append; a bad role is refused.
    let reader = server
        .post(
            "/admin/tokens",
            &server.admin,
            &json!({"name": "dashboard", "role": "reader"}),
        )
        .await;
    let reader = reader.body["token"].as_str().unwrap().to_owned();
    server.get("/streams/t-1", &reader).await.assert_status(200);
    server
        .post("/streams/t-1", &reader, &body)
        .await
        .assert_problem(403, "forbidden");
    server
        .post("/admin/tokens", &server.admin, &json!({"name": "x", "role": "root"}))
        .await
        .assert_problem(400, "invalid_request");
    server
        .post("/admin/tokens", &server.admin, &json!({"name": "", "role": "reader"}))
        .await
        .assert_problem(400, "invalid_request");
    server.stop().await;
}

async fn http_operations_routes(db: TestDb) {
    let server = Server::start(&db).await;
    let health = server.call(Method::GET, "/healthz", None, None).await;
    health.assert_status(200);
    assert_eq!(health.body["status"], "ok");
    let ready = server.call(Method::GET, "/readyz", None, None).await;
    ready.assert_status(200);
    assert_eq!(
        ready.body,
        json!({"status": "ready", "database": "ok", "keyvault": "ok", "keys_unreadable": 0})
    );

    server.append("m-1", json!("any"), None, events(2, "M")).await;
    let metrics = server.request(Method::GET, "/metrics", None).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let content_type = metrics.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.contains("text"), "{content_type}");
    let text = metrics.text().await.unwrap();
    assert!(text.contains("lethe_appends_total"), "{text}");
    // The group writer's figures: the one append above went through it in one transaction.
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(gauge("lethe_writer_appends") >= 1.0, "{text}");
    assert!(gauge("lethe_writer_transactions") >= 1.0, "{text}");
    assert!(gauge("lethe_writer_busy_seconds") > 0.0, "{text}");
    assert!(text.contains("lethe_request_seconds"), "{text}");
    assert!(text.contains(r#"route="POST /streams/{stream}""#), "{text}");
    // Metrics carry routes, never concrete paths (which hold stream names).
    assert!(!text.contains("m-1"));

    let openapi = server.call(Method::GET, "/openapi.json", None, None).await;
    openapi.assert_status(200);
    assert!(openapi.content_type().starts_with("application/json"));
    assert!(openapi.body["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert!(openapi.body["paths"].is_object());

    // Unknown routes and methods are problems too.
    server
        .call(Method::GET, "/no/such/route", None, None)
        .await
        .assert_problem(404, "not_found");
    server
        .call(Method::PUT, "/streams/m-1", Some(&server.admin), Some(&json!({})))
        .await
        .assert_problem(405, "method_not_allowed");
    server.stop().await;
}
