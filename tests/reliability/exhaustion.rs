//! Resource exhaustion against the real `lethe serve` (SQLite; 64 subscriptions at most, 2 s to
//! send headers): many huge bodies at once (with a length, and chunked without one), 10k-event
//! batches, deeply nested JSON, the subscription limit filled with idle SSE connections,
//! slow-loris clients that never finish their headers and clients that connect and say nothing.
//! Each is answered with the error README's "Limits" documents (or cut off, for the
//! slow-loris), stores nothing, and meanwhile a canary client keeps being served. The server's
//! memory is read from `/proc/<pid>/status` (`VmRSS`, peak `VmHWM`) and must stay bounded.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{assert_problem_in, call, client, pick, report, serial};
use crate::http_support::{ADMIN_TOKEN, RawBody, Reply, raw_request};
use crate::load_support::{Lethe, read_log};
use crate::support::TestDb;

const MIB: usize = 1024 * 1024;
/// Allowed growth of the server's peak resident memory over its size before the attacks. The
/// body limit (4 MiB) bounds what one request can make the server hold; 24 huge bodies at
/// once are under 100 MiB even if each were buffered whole.
const PEAK_GROWTH_MAX_MIB: u64 = 384;

#[track_caller]
fn assert_reply(reply: &Reply, status: u16, codes: &[&str]) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
    assert_problem_in(status, reply.content_type(), &reply.body, codes);
}

/// Appends to `canary` and checks `/healthz` every 50 ms until stopped; counts what failed.
#[derive(Default)]
struct Canary {
    served: AtomicUsize,
    acked_events: AtomicUsize,
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
}

fn start_canary(base: &str, canary: Arc<Canary>) -> tokio::task::JoinHandle<()> {
    let base = base.to_owned();
    tokio::spawn(async move {
        let client = client();
        while !canary.stop.load(Ordering::SeqCst) {
            let body = json!({"expected_version": "any", "events": [{"type": "Canary", "data": {}}]});
            match call(
                &client,
                Method::POST,
                &format!("{base}/streams/canary"),
                ADMIN_TOKEN,
                Some(&body),
            )
            .await
            {
                Some((201, _, _)) => {
                    canary.acked_events.fetch_add(1, Ordering::SeqCst);
                    canary.served.fetch_add(1, Ordering::SeqCst);
                }
                other => canary.failures.lock().unwrap().push(format!("append: {other:?}")),
            }
            match client.get(format!("{base}/healthz")).send().await {
                Ok(r) if r.status().is_success() => {
                    canary.served.fetch_add(1, Ordering::SeqCst);
                }
                other => canary.failures.lock().unwrap().push(format!("healthz: {other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Waits until the canary has been served `more` more times (bounded; not a speed check).
async fn canary_served(canary: &Canary, more: usize) {
    let target = canary.served.load(Ordering::SeqCst) + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    while canary.served.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the canary is not being served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deep JSON: `depth` nested arrays.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Reads from a connection until the server closes it (EOF, a reset, or a 408 answer);
/// `false` if it is still open after `within`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => {
                if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") {
                    return true;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_survives_resource_exhaustion_with_documented_errors() {
    let _serial = serial().await;
    let db = TestDb::sqlite().await;
    let data_dir = db.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let subscribers_max = 64;
    let env = [
        ("LETHE_SUBSCRIBERS_MAX", subscribers_max.to_string()),
        ("LETHE_HEADER_TIMEOUT_SECS", "2".to_owned()),
    ];
    let lethe = Lethe::start_with(&db, &data_dir, &env).await;
    let base = lethe.base.clone();
    let addr = base.trim_start_matches("http://").to_owned();
    let http = client();
    let one = json!({"expected_version": "any", "events": [{"type": "X", "data": {"n": 1}}]});
    let r = call(
        &http,
        Method::POST,
        &format!("{base}/streams/s-1"),
        ADMIN_TOKEN,
        Some(&one),
    )
    .await;
    assert_eq!(r.map(|r| r.0), Some(201));
    let rss_before = lethe.memory_kib("VmRSS").expect("VmRSS");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];

    let canary = Arc::new(Canary::default());
    let canary_task = start_canary(&base, canary.clone());
    let rounds = pick(1, 5);

    for _ in 0..rounds {
        // 1. Huge bodies, many at once: 16 × 6 MiB with a length, 8 × 12 MiB chunked.
        let big = serde_json::to_vec(&json!({"events": [{"type": "X", "data": "a".repeat(6 * MIB)}]})).unwrap();
        let mut attacks = Vec::new();
        for i in 0..24 {
            let (addr, headers, big) = (
                addr.clone(),
                headers.map(|(k, v)| (k.to_owned(), v.to_owned())),
                big.clone(),
            );
            attacks.push(tokio::spawn(async move {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let body = if i < 16 {
                    RawBody::Sized(big)
                } else {
                    RawBody::Chunked(vec![vec![b'a'; MIB]; 12], Duration::ZERO)
                };
                raw_request(&addr, "POST", "/streams/s-1", &headers, body).await
            }));
        }
        for attack in attacks {
            assert_reply(&attack.await.unwrap(), 413, &["payload_too_large"]);
        }
        canary_served(&canary, 2).await;

        // 2. 10,000-event batches, one stream and spread over 100 streams: over the 1,000-event
        //    limit, under the body limit.
        let events: Vec<Value> = (0..10_000).map(|_| json!({"type": "X", "data": {}})).collect();
        let r = call(
            &http,
            Method::POST,
            &format!("{base}/streams/s-1"),
            ADMIN_TOKEN,
            Some(&json!({"expected_version": "any", "events": events})),
        )
        .await
        .expect("answer");
        assert_eq!(r.0, 400, "{}", r.2);
        assert_problem_in(r.0, &r.1, &r.2, &["invalid_request"]);
        let appends: Vec<Value> = (0..100)
            .map(|i| json!({"stream": format!("m-{i}"), "expected_version": "any", "events": events[..100]}))
            .collect();
        let r = call(
            &http,
            Method::POST,
            &format!("{base}/streams"),
            ADMIN_TOKEN,
            Some(&json!({"appends": appends})),
        )
        .await
        .expect("answer");
        assert_eq!(r.0, 400, "{}", r.2);
        assert_problem_in(r.0, &r.1, &r.2, &["invalid_request"]);

        // 3. Deep nesting: a whole body of 750k nested arrays, and 100k levels inside `data`.
        let deep = nested(750_000);
        let r = raw_request(
            &addr,
            "POST",
            "/streams/s-1",
            &headers,
            RawBody::Sized(deep.into_bytes()),
        )
        .await;
        assert_reply(&r, 400, &["invalid_request"]);
        let inside = format!(
            r#"{{"expected_version": "any", "events": [{{"type": "X", "data": {}}}]}}"#,
            nested(100_000)
        );
        let r = raw_request(
            &addr,
            "POST",
            "/streams/s-1",
            &headers,
            RawBody::Sized(inside.into_bytes()),
        )
        .await;
        assert_reply(&r, 400, &["invalid_request"]);
        let r = raw_request(
            &addr,
            "PUT",
            "/consumers/c-1",
            &headers,
            RawBody::Sized(nested(100_000).into_bytes()),
        )
        .await;
        assert_reply(&r, 400, &["invalid_request"]);
        canary_served(&canary, 2).await;

        // 4. The subscription limit filled with idle SSE connections: the next ones get 503
        //    `too_many_subscribers`; everything else is still served; closing them frees slots.
        let sse_client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let mut idle = Vec::new();
        for _ in 0..subscribers_max {
            let r = sse_client
                .get(format!("{base}/subscribe?from=1"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("subscribe");
            assert_eq!(r.status(), 200);
            idle.push(r);
        }
        for _ in 0..8 {
            let r = call(
                &http,
                Method::GET,
                &format!("{base}/subscribe?from=1"),
                ADMIN_TOKEN,
                None,
            )
            .await
            .expect("answer");
            assert_eq!(r.0, 503, "{}", r.2);
            assert_problem_in(r.0, &r.1, &r.2, &["too_many_subscribers"]);
        }
        canary_served(&canary, 2).await;
        drop(idle);
        drop(sse_client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = reqwest::Client::new()
                .get(format!("{base}/subscribe?from=1"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("subscribe");
            if r.status() == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "subscription slots not freed after their clients left"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // 5. Slow-loris: 200 clients trickling their headers, 100 that connect and say nothing.
        //    The server cuts each off after the 2 s header timeout and serves the canary meanwhile.
        let mut loris = Vec::new();
        for i in 0..300 {
            let addr = addr.clone();
            loris.push(tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
                if i < 200 {
                    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
                    let trickle = async {
                        loop {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            if stream.write_all(b"X").await.is_err() {
                                return;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(30), trickle).await;
                }
                closed_by_server(&mut stream, Duration::from_secs(30)).await
            }));
        }
        canary_served(&canary, 4).await;
        let mut still_open = 0;
        for l in loris {
            if !l.await.unwrap() {
                still_open += 1;
            }
        }
        assert_eq!(still_open, 0, "slow-loris connections the server never closed");
    }

    canary.stop.store(true, Ordering::SeqCst);
    canary_task.await.unwrap();
    let failures = canary.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "the canary was not served: {failures:?}");

    // Bounded memory.
    let peak = lethe.memory_kib("VmHWM").expect("VmHWM");
    let rss_after = lethe.memory_kib("VmRSS").expect("VmRSS");
    assert!(
        peak < rss_before + PEAK_GROWTH_MAX_MIB * 1024,
        "peak RSS {peak} KiB, {rss_before} KiB before the attacks"
    );

    // Nothing stored but the canary's and the first event.
    let log = read_log(&base, ADMIN_TOKEN).await;
    let canary_events = canary.acked_events.load(Ordering::SeqCst);
    assert_eq!(log.len(), 1 + canary_events, "events stored by refused requests");
    assert!(log.iter().all(|e| e["stream"] == "s-1" || e["stream"] == "canary"));
    report(&format!(
        "exhaustion: {rounds} round(s); all refused as documented; canary served {} times; server RSS {} MiB \
         before, peak {} MiB, {} MiB after",
        canary.served.load(Ordering::SeqCst),
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024
    ));
    drop(lethe);
}
