//! The example's steps, apart from `main` so that the `lethe` crate's tests run them against a
//! real server (`tests/it/client.rs`).

use futures::StreamExt;
use lethe_client::wire::{ExpectedVersionWire, ForgetRequest, StreamAppendIn, StreamQuery};
use lethe_client::{Client, Error, LogFilter, event};
use serde_json::json;

/// What the run saw, for the caller to print or check.
#[derive(Debug)]
pub struct Outcome {
    /// The events a subscription delivered, as `position stream type`.
    pub followed: Vec<String>,
    /// The erasure request's status once filed.
    pub erasure_status: String,
    /// Whether the private stream reads as erased afterwards.
    pub private_erased: bool,
    /// The public stream's data, intact.
    pub public_data: serde_json::Value,
}

/// Registers user `id` (public ids and flags; personal data in a stream bound to the subject),
/// follows the log, forgets the subject, and reads both streams again.
pub async fn run(lethe: &Client, id: &str) -> Result<Outcome, Error> {
    let (public, private) = (format!("user-public-{id}"), format!("user-private-{id}"));

    // One atomic append over two streams; the private one is bound to subject `id`.
    lethe
        .append_multi(vec![
            StreamAppendIn {
                stream: public.clone(),
                expected_version: Some(ExpectedVersionWire::NoStream),
                subject: None,
                events: vec![event("UserRegistered", json!({"user_id": id, "newsletter": true}))],
            },
            StreamAppendIn {
                stream: private.clone(),
                expected_version: Some(ExpectedVersionWire::NoStream),
                subject: Some(id.to_owned()),
                events: vec![event("PersonalDataGiven", json!({"name": "Ada Lovelace"}))],
            },
        ])
        .await?;

    // Follow the log (catch-up, then live) until both registrations were seen.
    let filter = LogFilter {
        stream_prefix: Some("user-".to_owned()),
        types: Vec::new(),
    };
    let mut subscription = lethe.subscribe(1, filter);
    let mut followed = Vec::new();
    while let Some(event) = subscription.next().await {
        let event = event?;
        followed.push(format!("{} {} {}", event.position, event.stream, event.event_type));
        if followed.len() == 2 {
            break;
        }
    }

    // Art. 17: the subject's keys are destroyed; its stream becomes unreadable everywhere.
    let request = ForgetRequest {
        reason: "Art. 17 request".to_owned(),
        requested_by: "dpo@example.com".to_owned(),
        reference: None,
    };
    let erasure = lethe.forget(id, &request).await?;

    let private_page = lethe.read_stream(&private, &StreamQuery::default()).await?;
    let public_page = lethe.read_stream(&public, &StreamQuery::default()).await?;
    Ok(Outcome {
        followed,
        erasure_status: erasure.status,
        private_erased: private_page.status == "erased" && private_page.events[0].data.is_null(),
        public_data: public_page.events[0].data.clone(),
    })
}
