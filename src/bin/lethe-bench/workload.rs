//! The append workload: payloads, the random generator, library writers and HTTP clients,
//! and the measuring loop they share.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use lethe::{EventStore, ExpectedVersion, NewEvent, StreamAppend, StreamName, SubjectId};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::report::{Figures, percentile_ms};

/// What one append of a scenario looks like.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// One event to a random `bench-<n>` stream.
    Single,
    /// This many events in one append to a random `bench-<n>` stream.
    Batch(usize),
    /// One event each to `user-public-<n>` and `user-private-<n>` (bound to subject `<n>`),
    /// in one atomic multi-stream append: the contract's seed pattern.
    MultiStream,
}

impl Shape {
    pub fn events_per_append(self) -> usize {
        match self {
            Shape::Single => 1,
            Shape::Batch(n) => n,
            Shape::MultiStream => 2,
        }
    }
}

/// What one worker of a timed scenario did: the latency of each successful operation, and
/// how many failed (answers other than 2xx; the first one of each worker is printed).
#[derive(Default)]
pub struct Outcome {
    pub latencies: Vec<Duration>,
    pub failures: u64,
}

/// Runs `workers` copies of `work` (each one operation at a time, back to back, until the
/// deadline) and measures them. `work(worker index, rng)` performs one operation and returns
/// whether it succeeded; its latency is the time the future took to complete.
pub async fn timed<F, Fut>(workers: usize, events_per_op: usize, work: F) -> anyhow::Result<Figures>
where
    F: Fn(usize, Rng) -> Fut,
    Fut: Future<Output = anyhow::Result<Outcome>> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        // Each worker has its own random generator, seeded from the OS (via a v4 uuid).
        tasks.spawn(work(worker, Rng::new(Uuid::new_v4().as_u64_pair().0)));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.context("worker task panicked")??;
        latencies.extend(outcome.latencies);
        failures += outcome.failures;
    }
    // Operations still in flight at the deadline are counted, so the elapsed time includes them.
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ops = latencies.len() as u64;
    Ok(Figures {
        ops,
        failures,
        seconds: elapsed,
        ops_per_sec: ops as f64 / elapsed,
        events_per_sec: (ops * events_per_op as u64) as f64 / elapsed,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        appends_per_txn: None,
        peak_rss_mb: None,
    })
}

/// One library writer: appends back to back until the deadline, one at a time, and returns the
/// latency of each append (the store call only; building the events is not timed). `event`
/// makes the events of the single-stream shapes ([`order_event`] or [`transfer_event`]).
pub async fn library_writer(
    store: EventStore,
    shape: Shape,
    event: fn(&mut Rng) -> NewEvent,
    streams: u64,
    deadline: Instant,
    mut rng: Rng,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    while Instant::now() < deadline {
        let n = rng.below(streams);
        match shape {
            Shape::Single | Shape::Batch(_) => {
                let events = (0..shape.events_per_append()).map(|_| event(&mut rng)).collect();
                let append = StreamAppend::new(StreamName::new(format!("bench-{n}"))?, ExpectedVersion::Any, events);
                let started = Instant::now();
                store.append(append).await?;
                outcome.latencies.push(started.elapsed());
            }
            Shape::MultiStream => {
                let public = StreamAppend::new(
                    StreamName::new(format!("user-public-{n}"))?,
                    ExpectedVersion::Any,
                    vec![public_user_event(n, &mut rng)],
                );
                let private = StreamAppend::new(
                    StreamName::new(format!("user-private-{n}"))?,
                    ExpectedVersion::Any,
                    vec![private_user_event(n, &mut rng)],
                )
                .with_subject(SubjectId::new(n.to_string())?);
                let started = Instant::now();
                store.append_multi(vec![public, private]).await?;
                outcome.latencies.push(started.elapsed());
            }
        }
    }
    Ok(outcome)
}

/// The HTTP client every client task of a round shares: HTTP/1.1, pooled keep-alive
/// connections (one per client, each with one request in flight), the admin token.
pub fn http_client(clients: usize) -> anyhow::Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", crate::server::TOKEN))?,
    );
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(clients)
        .default_headers(headers)
        .build()
        .context("building the HTTP client")
}

/// One HTTP client: `POST /streams/bench-<n>` back to back until the deadline, one request at
/// a time. The latency is from sending the request to having read the whole answer; building
/// and serialising the body is not timed. A transport error (no answer at all) ends the round.
pub async fn http_writer(
    client: reqwest::Client,
    addr: SocketAddr,
    shape: Shape,
    streams: u64,
    deadline: Instant,
    mut rng: Rng,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    while Instant::now() < deadline {
        let n = rng.below(streams);
        let events: Vec<serde_json::Value> = (0..shape.events_per_append())
            .map(|_| json!({"type": "BenchEvent", "data": order_event(&mut rng).data}))
            .collect();
        let body = serde_json::to_vec(&json!({"expected_version": "any", "events": events}))?;
        let url = format!("http://{addr}/streams/bench-{n}");
        let started = Instant::now();
        let response = client
            .post(&url)
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let answer = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer to POST {url}"))?;
        let latency = started.elapsed();
        if status.is_success() {
            outcome.latencies.push(latency);
        } else {
            if outcome.failures == 0 {
                // The first one of each client, so the cause shows without flooding the output.
                eprintln!(
                    "POST {url}: {status}: {}",
                    String::from_utf8_lossy(&answer[..answer.len().min(300)])
                );
            }
            outcome.failures += 1;
        }
    }
    Ok(outcome)
}

// --- Payloads: realistic-looking JSON of about 150 bytes each. ---

pub fn order_event(rng: &mut Rng) -> NewEvent {
    NewEvent::new("OrderPlaced", order_data(rng))
}

/// The `data` of the single-stream scenarios (and of the baselines' rows).
pub fn order_data(rng: &mut Rng) -> serde_json::Value {
    json!({
        "order_id": rng.uuid(),
        "customer_id": format!("c-{:07}", rng.below(10_000_000)),
        "amount_cents": rng.below(1_000_000),
        "currency": "EUR",
        "items": 1 + rng.below(9),
        "channel": "web",
    })
}

/// The event type of [`transfer_event`], and of the schema [`transfer_schema`] registers for it.
pub const TRANSFER_TYPE: &str = "MoneyTransferred";
/// The subjects whose names transfers carry: `p-0` … `p-999`. Bounded, as the people of a real
/// system are, so that each subject's field key is created once and then cached.
pub const TRANSFER_SUBJECTS: u64 = 1_000;
/// The data members of a transfer that [`transfer_schema`] makes personal.
pub const TRANSFER_PERSONAL: [&str; 2] = ["sender_name", "receiver_name"];

/// A money transfer between two different subjects, about 170 bytes of JSON (an order ~140):
/// with [`transfer_schema`] registered, `sender_name` is personal data of `sender_id` and
/// `receiver_name` of `receiver_id`; without it, the same event is ordinary data.
pub fn transfer_event(rng: &mut Rng) -> NewEvent {
    let sender = rng.below(TRANSFER_SUBJECTS);
    let receiver = (sender + 1 + rng.below(TRANSFER_SUBJECTS - 1)) % TRANSFER_SUBJECTS;
    transfer(rng, sender, receiver)
}

/// A transfer from subject `p-<sender>` to `p-<receiver>`.
pub fn transfer(rng: &mut Rng, sender: u64, receiver: u64) -> NewEvent {
    NewEvent::new(
        TRANSFER_TYPE,
        json!({
            "transfer_id": format!("t-{:09}", rng.below(1_000_000_000)),
            "sender_id": format!("p-{sender}"),
            "sender_name": format!("Person {sender:04}"),
            "receiver_id": format!("p-{receiver}"),
            "receiver_name": format!("Person {receiver:04}"),
            "amount_cents": rng.below(1_000_000),
            "currency": "EUR",
        }),
    )
}

/// The JSON Schema of [`TRANSFER_TYPE`]: every member typed and required, and the two names
/// personal data of the subjects whose ids stand beside them.
pub fn transfer_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "transfer_id": {"type": "string"},
            "sender_id": {"type": "string"},
            "sender_name": {"type": "string", "x-lethe-personal": {"subject": "/sender_id"}},
            "receiver_id": {"type": "string"},
            "receiver_name": {"type": "string", "x-lethe-personal": {"subject": "/receiver_id"}},
            "amount_cents": {"type": "integer", "minimum": 0},
            "currency": {"type": "string"},
        },
        "required": ["transfer_id", "sender_id", "sender_name", "receiver_id", "receiver_name", "amount_cents", "currency"],
    })
}

/// Whether a transfer read back still holds a sealed personal field (one its reader did not
/// open): sealed fields read as strings of the form `lethe:f1:<key id>:<envelope>`.
pub fn still_sealed(data: &serde_json::Value) -> bool {
    TRANSFER_PERSONAL.iter().any(|name| {
        data.get(name)
            .and_then(serde_json::Value::as_str)
            .is_some_and(|v| v.starts_with("lethe:f1:"))
    })
}

/// Appends one transfer from every subject (to the next one), untimed, in 100-event batches to
/// streams `warm-up-<k>`: with the schema registered, every subject's field key is created
/// here, so the timed appends find them cached, as a store that has run a while does. Without
/// it, the same appends, so that both sides of the comparison start alike.
pub async fn warm_up_subjects(store: &EventStore) -> anyhow::Result<()> {
    let mut rng = Rng::new(1);
    for first in (0..TRANSFER_SUBJECTS).step_by(100) {
        let events = (first..(first + 100).min(TRANSFER_SUBJECTS))
            .map(|sender| transfer(&mut rng, sender, (sender + 1) % TRANSFER_SUBJECTS))
            .collect();
        let stream = StreamName::new(format!("warm-up-{}", first / 100))?;
        store
            .append(StreamAppend::new(stream, ExpectedVersion::NoStream, events))
            .await?;
    }
    Ok(())
}

fn public_user_event(n: u64, rng: &mut Rng) -> NewEvent {
    NewEvent::new(
        "UserRegistered",
        json!({
            "user_id": n,
            "account_id": rng.uuid(),
            "plan": "standard",
            "flags": {"newsletter": rng.below(2) == 1, "beta": false},
            "referrer": format!("r-{:06}", rng.below(1_000_000)),
        }),
    )
}

pub fn private_user_event(n: u64, rng: &mut Rng) -> NewEvent {
    NewEvent::new(
        "UserProfileSet",
        json!({
            "user_id": n,
            "name": format!("Person {:06}", rng.below(1_000_000)),
            "email": format!("person{:06}@example.com", rng.below(1_000_000)),
            "address": "221B Baker Street, London NW1 6XE",
        }),
    )
}

/// SplitMix64: a tiny, fast generator for picking streams and filling payloads (the bench
/// needs spread, not cryptographic quality).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (the modulo bias is irrelevant here).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(
            ((u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())).to_be_bytes(),
        )
        .into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_about_150_bytes() {
        let mut rng = Rng::new(7);
        for event in [
            order_event(&mut rng),
            public_user_event(12_345, &mut rng),
            private_user_event(12_345, &mut rng),
            transfer_event(&mut rng),
        ] {
            let len = serde_json::to_vec(&event.data).unwrap().len();
            assert!((120..=180).contains(&len), "{} is {len} bytes", event.event_type);
        }
    }

    #[test]
    fn transfers_name_two_different_subjects_whose_names_the_schema_makes_personal() {
        use lethe::model::SubjectSource::Pointer;
        use lethe::model::schema::{JsonPointer, field_subjects, personal_fields};

        let fields = personal_fields(&transfer_schema()).unwrap();
        // By property name.
        let declared: Vec<_> = fields.iter().map(|f| (f.pointer.as_str(), &f.subject)).collect();
        let pointer = |text| Pointer(JsonPointer::parse(text).unwrap());
        let (sender, receiver) = (pointer("/sender_id"), pointer("/receiver_id"));
        assert_eq!(declared, vec![("/receiver_name", &receiver), ("/sender_name", &sender)]);
        let mut rng = Rng::new(3);
        for _ in 0..1_000 {
            let data = transfer_event(&mut rng).data;
            assert_ne!(data["sender_id"], data["receiver_id"]);
            assert_eq!(field_subjects(&fields, &data, None).unwrap().len(), 2);
            assert!(!still_sealed(&data));
        }
    }
}
