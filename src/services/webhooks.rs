//! Optional push of tombstones to dependents' webhooks.
//!
//! A consumer registered with a webhook gets each erasure's `$erasures` event POSTed to its URL,
//! signed `X-Lethe-Signature: sha256=<hex HMAC-SHA256(secret, body)>`. A 2xx answer is the
//! acknowledgement; anything else is retried with exponential backoff. Every attempt is
//! recorded on the erasure request's dependent (visible in the admin API). Delivery is at least
//! once: receivers dedupe by `request_id`.

use std::sync::Weak;
use std::time::Duration;

use serde_json::json;

use crate::core::Core;
use crate::error::Error;
use crate::limits::{WEBHOOK_BACKOFF_MAX, WEBHOOK_CLAIM_LEASE, WEBHOOK_DELIVERY_TIMEOUT, WEBHOOK_ROUND_DELIVERIES_MAX};
use crate::model::{LogFilter, SIGNATURE_HEADER, signature};
use crate::storage::Delivery;

fn backoff(base: Duration, attempts: u64) -> Duration {
    let factor = 1u32
        .checked_shl(u32::try_from(attempts.min(20)).unwrap_or(20))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(WEBHOOK_BACKOFF_MAX)
}

/// Runs delivery rounds until the store shuts down (weak reference: never keeps it alive).
pub(crate) async fn deliver_periodically(core: Weak<Core>) {
    let Some((mut shutdown, poll, retry_base)) = core
        .upgrade()
        .map(|core| (core.shutdown_signal(), core.webhook_poll, core.webhook_retry_base))
    else {
        return;
    };
    let client = match reqwest::Client::builder().timeout(WEBHOOK_DELIVERY_TIMEOUT).build() {
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
        let Some(core) = core.upgrade() else {
            return;
        };
        if let Err(e) = deliver_due(&core, &client, retry_base).await {
            tracing::warn!(error = %e, "webhook delivery round failed");
        }
    }
}

async fn deliver_due(core: &Core, client: &reqwest::Client, retry_base: Duration) -> Result<(), Error> {
    let storage = &core.storage;
    let now = chrono::Utc::now().timestamp_micros();
    let lease = i64::try_from(WEBHOOK_CLAIM_LEASE.as_micros()).unwrap_or(i64::MAX);
    for delivery in storage
        .claim_due_deliveries(now, lease, WEBHOOK_ROUND_DELIVERIES_MAX)
        .await?
    {
        let outcome = deliver(core, client, &delivery).await;
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
async fn deliver(core: &Core, client: &reqwest::Client, delivery: &Delivery) -> Result<(), String> {
    let page = core
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
