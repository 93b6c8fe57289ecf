//! Durable consumers: a named checkpoint on the log the server keeps, read by long poll and
//! moved by acknowledgement.

use std::time::Duration;

use lethe_wire::{AckRequest, ConsumerEventsResponse, ConsumerListResponse, ConsumerRequest, ConsumerResponse};
use reqwest::Method;

use crate::client::{NO_QUERY, Repeat, json, segment};
use crate::{Client, Error};

impl Client {
    /// Creates or changes a durable consumer (`PUT /consumers/{name}`, admin). An
    /// `erasure_dependent` consumer must acknowledge every tombstone before an erasure request
    /// completes.
    pub async fn put_consumer(&self, name: &str, consumer: &ConsumerRequest) -> Result<ConsumerResponse, Error> {
        let path = format!("/consumers/{}", segment(name));
        let (_, answer) = self.send_json(Method::PUT, &path, consumer, Repeat::Safe).await?;
        Ok(answer)
    }

    /// One consumer, with its checkpoint and lag (`GET /consumers/{name}`, admin).
    pub async fn consumer(&self, name: &str) -> Result<ConsumerResponse, Error> {
        self.get(&format!("/consumers/{}", segment(name)), NO_QUERY).await
    }

    /// Every consumer (`GET /consumers`, admin).
    pub async fn consumers(&self) -> Result<ConsumerListResponse, Error> {
        self.get("/consumers", NO_QUERY).await
    }

    /// Removes a consumer (`DELETE /consumers/{name}`, admin).
    pub async fn delete_consumer(&self, name: &str) -> Result<(), Error> {
        self.delete(&format!("/consumers/{}", segment(name))).await
    }

    /// The events after the consumer's checkpoint (`GET /consumers/{name}/events`), waiting up
    /// to `wait` for one when there are none (the server caps the wait at 25 s).
    pub async fn consumer_events(
        &self,
        name: &str,
        limit: Option<usize>,
        wait: Duration,
    ) -> Result<ConsumerEventsResponse, Error> {
        let path = format!("/consumers/{}/events", segment(name));
        let mut query = vec![("wait_ms", wait.as_millis().to_string())];
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        // The long poll may take `wait` on top of the usual time.
        let timeout = self.timeout() + wait;
        let response = self
            .execute(Repeat::Safe, || {
                self.request(Method::GET, &path).query(&query).timeout(timeout)
            })
            .await?;
        json(response).await
    }

    /// Moves the consumer's checkpoint to `position` (`POST /consumers/{name}/ack`): everything
    /// up to it is handled. Repeating it is harmless.
    pub async fn ack(&self, name: &str, position: u64) -> Result<ConsumerResponse, Error> {
        let path = format!("/consumers/{}/ack", segment(name));
        let (_, answer) = self
            .send_json(Method::POST, &path, &AckRequest { position }, Repeat::Safe)
            .await?;
        Ok(answer)
    }
}
