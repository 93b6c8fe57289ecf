//! Durable consumers: named readers of the global log whose checkpoints Lethe keeps. An
//! erasure-dependent consumer's acknowledgement of a tombstone (an ack at or past it, or a 2xx
//! from its webhook) is what completes an erasure.

use std::time::Duration;

use crate::core::Core;
use crate::error::Error;
use crate::model::validation::{check_consumer_name, check_filter};
use crate::model::{Consumer, ConsumerBatch, LogFilter, ValidationError, check_webhook};

/// Creates or updates a durable consumer (its checkpoint is kept on update).
pub(crate) async fn put(
    core: &Core,
    name: &str,
    filter: LogFilter,
    erasure_dependent: bool,
) -> Result<Consumer, Error> {
    check_consumer_name(name)?;
    check_filter(&filter)?;
    Ok(core.storage.upsert_consumer(name, &filter, erasure_dependent).await?)
}

pub(crate) async fn get(core: &Core, name: &str) -> Result<Option<Consumer>, Error> {
    check_consumer_name(name)?;
    Ok(core.storage.consumer(name).await?)
}

pub(crate) async fn list(core: &Core) -> Result<Vec<Consumer>, Error> {
    Ok(core.storage.consumers().await?)
}

/// Up to `limit` events after the consumer's checkpoint that match its filter; when there are
/// none, waits up to `wait` for new commits (long poll).
pub(crate) async fn events(core: &Core, name: &str, limit: usize, wait: Duration) -> Result<ConsumerBatch, Error> {
    check_consumer_name(name)?;
    let consumer = core
        .storage
        .consumer(name)
        .await?
        .ok_or_else(|| Error::NotFound { what: "consumer" })?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut commits = core.commits();
    let mut from = consumer.checkpoint + 1;
    loop {
        commits.borrow_and_update();
        let page = core.read_log(from, &consumer.filter, limit).await?;
        if !page.events.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(ConsumerBatch {
                events: page.events,
                checkpoint: consumer.checkpoint,
                head: page.head,
            });
        }
        // Nothing matching up to the head: later reads can start past it.
        from = page.next;
        let _ = tokio::time::timeout_at(deadline, commits.changed()).await;
    }
}

/// Gives a consumer a webhook (tombstones are pushed to it, signed with `secret`), or with
/// `None` takes it away.
pub(crate) async fn set_webhook(core: &Core, name: &str, webhook: Option<(&str, &str)>) -> Result<Consumer, Error> {
    if let Some((url, secret)) = webhook {
        check_webhook(url, secret)?;
    }
    if !core.storage.set_consumer_webhook(name, webhook).await? {
        return Err(Error::NotFound { what: "consumer" });
    }
    get(core, name).await?.ok_or(Error::NotFound { what: "consumer" })
}

/// Deletes a consumer. As a dependent of unfinished erasures it stops holding them up (they
/// may complete). False if there was no such consumer.
pub(crate) async fn delete(core: &Core, name: &str) -> Result<bool, Error> {
    check_consumer_name(name)?;
    let deleted = core.storage.delete_consumer(name).await?;
    if deleted {
        tracing::info!(consumer = name, "consumer deleted");
    }
    Ok(deleted)
}

/// Acknowledges everything up to `position`: the checkpoint moves there (never back).
pub(crate) async fn ack(core: &Core, name: &str, position: u64) -> Result<Consumer, Error> {
    check_consumer_name(name)?;
    let head = core.head().await?;
    if position > head {
        return Err(ValidationError::PositionPastHead { position, head }.into());
    }
    core.storage
        .ack_consumer(name, position)
        .await?
        .ok_or(Error::NotFound { what: "consumer" })
}
