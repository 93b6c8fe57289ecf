//! An async client of [Lethe](https://github.com/lethe-store/lethe)'s HTTP API — the event
//! store that can forget — typed on the server's own wire types ([`wire`], the crate
//! `lethe-wire`): what the server serializes is what this client deserializes.
//!
//! - **Appends** ([`Client::append`], [`Client::append_multi`]) give every event an id before
//!   the first attempt, so a retry after a timeout is recognised by the server and never
//!   stores an event twice.
//! - **Reads** ([`Client::read_stream`], [`Client::read_log`]) and, as async streams, a stream's
//!   events ([`Client::stream_events`]) and the log up to its head ([`Client::log`]).
//! - **Subscriptions** ([`Client::subscribe`]): Server-Sent Events, catch-up then live,
//!   reconnecting with `Last-Event-ID` so that no event is skipped or repeated.
//! - **Durable consumers** ([`Client::consumer_events`], [`Client::ack`], …) and every **admin**
//!   operation (erasure requests, holds, audit, reports, tokens, schemas, retention).
//! - **Errors** ([`Error`]): a refused request carries the server's problem document and its
//!   stable code (`wrong_expected_version`, `stream_erased`, …).
//! - **Retries**: connection failures and `503` are retried with exponential backoff for the
//!   requests that are safe to repeat ([`ClientBuilder::attempts`]); the others are not.
//!
//! ```no_run
//! use futures::StreamExt;
//! use lethe_client::{Client, LogFilter, event, wire::ExpectedVersionWire};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), lethe_client::Error> {
//! let lethe = Client::builder("http://127.0.0.1:2113").token("<writer token>").build()?;
//!
//! // A private stream bound to data subject 456: forgetting 456 shreds it.
//! let appended = lethe
//!     .append(
//!         "user-private-456",
//!         ExpectedVersionWire::NoStream,
//!         Some("456"),
//!         vec![event("PersonalDataGiven", json!({"name": "Ada Lovelace"}))],
//!     )
//!     .await?;
//! println!("at position {}", appended.result.first_position);
//!
//! // Follow the log live, from the beginning.
//! let mut events = lethe.subscribe(1, LogFilter::default());
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{} {} {}", event.position, event.stream, event.event_type);
//! }
//! # Ok(())
//! # }
//! ```

mod admin;
mod client;
mod consumers;
mod error;
mod streams;
mod subscription;

pub use lethe_wire as wire;

pub use admin::Put;
pub use client::{
    ATTEMPTS_DEFAULT, BACKOFF_DEFAULT, BACKOFF_MAX, CONNECT_TIMEOUT_DEFAULT, Client, ClientBuilder, TIMEOUT_DEFAULT,
};
pub use error::Error;
pub use streams::{Appended, LogFilter, event};
pub use subscription::Subscription;
