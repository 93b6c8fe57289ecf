//! Optional push of tombstones to dependents' webhooks.
//!
//! A consumer registered with a webhook gets each erasure's `$erasures` event POSTed to its URL,
//! signed `X-Lethe-Signature: sha256=<hex HMAC-SHA256(secret, body)>`. A 2xx answer is the
//! acknowledgement; anything else is retried with exponential backoff. Every attempt is
//! recorded on the erasure request's dependent (visible in the admin API). Delivery is at least
//! once: receivers dedupe by `request_id`.

use std::sync::Weak;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::watch;

use crate::error::{Error, ValidationError};
use crate::model::LogFilter;
use crate::storage::Delivery;
use crate::store::{EventStore, Inner};

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-lethe-signature";
/// Longest wait between two attempts of one delivery.
const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// How long one worker owns a claimed delivery before another may try it.
const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// One delivery request's timeout.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries one round tries at most.
const ROUND_DELIVERIES_MAX: usize = 100;
/// Webhook secrets: at least this long.
pub const WEBHOOK_SECRET_LEN_MIN: usize = 16;

/// `sha256=<hex>` of a body under a secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a webhook before it is stored: an http(s) URL and a long enough secret.
pub fn check_webhook(url: &str, secret: &str) -> Result<(), Error> {
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || url.len() > 2_000 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::InvalidName {
            what: "webhook url (http:// or https://)",
            max: 2_000,
        }
        .into());
    }
    let secret_len = secret.chars().count();
    if !(WEBHOOK_SECRET_LEN_MIN..=200).contains(&secret_len) || secret.chars().any(char::is_control) {
        return Err(ValidationError::InvalidName {
            what: "webhook secret (at least 16 characters)",
            max: 200,
        }
        .into());
    }
    Ok(())
}

fn backoff(base: Duration, attempts: u64) -> Duration {
    let factor = 1u32
        .checked_shl(u32::try_from(attempts.min(20)).unwrap_or(20))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(BACKOFF_MAX)
}

/// Runs delivery rounds until the store shuts down (weak reference: never keeps it alive).
pub(crate) async fn deliver_periodically(
    inner: Weak<Inner>,
    mut shutdown: watch::Receiver<bool>,
    poll: Duration,
    retry_base: Duration,
) {
    let client = match reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhook deliveries disabled: cannot build an HTTP client");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(poll) => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let store = EventStore { inner };
        if let Err(e) = deliver_due(&store, &client, retry_base).await {
            tracing::warn!(error = %e, "webhook delivery round failed");
        }
    }
}

async fn deliver_due(store: &EventStore, client: &reqwest::Client, retry_base: Duration) -> Result<(), Error> {
    let storage = &store.inner.storage;
    let now = chrono::Utc::now().timestamp_micros();
    let lease = i64::try_from(CLAIM_LEASE.as_micros()).unwrap_or(i64::MAX);
    for delivery in storage.claim_due_deliveries(now, lease, ROUND_DELIVERIES_MAX).await? {
        let outcome = deliver(store, client, &delivery).await;
        let wait = backoff(retry_base, delivery.attempts);
        let next = chrono::Utc::now().timestamp_micros() + i64::try_from(wait.as_micros()).unwrap_or(i64::MAX);
        match &outcome {
            Ok(()) => {
                tracing::info!(request_id = %delivery.erasure_id, consumer = %delivery.consumer, "tombstone delivered")
            }
            Err(e) => tracing::warn!(
                request_id = %delivery.erasure_id, consumer = %delivery.consumer, error = %e, "tombstone delivery failed"
            ),
        }
        storage.record_delivery(&delivery, outcome, next).await?;
    }
    Ok(())
}

/// One POST of the erasure's `$erasures` event.
async fn deliver(store: &EventStore, client: &reqwest::Client, delivery: &Delivery) -> Result<(), String> {
    let page = store
        .read_log(delivery.tombstone_position, &LogFilter::default(), 1)
        .await
        .map_err(|e| format!("reading the tombstone: {}", e.code()))?;
    let Some(event) = page.events.into_iter().next() else {
        return Err("the tombstone is missing".into());
    };
    let body = json!({
        "request_id": delivery.erasure_id,
        "consumer": delivery.consumer,
        "event": {
            "id": event.id,
            "stream": event.stream,
            "version": event.version,
            "position": event.position,
            "type": event.event_type,
            "data": event.data,
            "metadata": event.metadata,
            "recorded_at": event.recorded_at,
        },
    })
    .to_string();
    let response = client
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature(&delivery.secret, body.as_bytes()))
        .header("x-lethe-request-id", delivery.erasure_id.to_string())
        .body(body)
        .send()
        .await
        // The URL is the operator's; the error text may contain it but never event data.
        .map_err(|e| {
            if e.is_timeout() {
                "timed out".to_owned()
            } else {
                "could not connect".to_owned()
            }
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", response.status().as_u16()))
    }
}
