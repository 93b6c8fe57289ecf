//! Coalescing: concurrent calls of one kind answered by one batched call.
//!
//! Under load many appends ask the same kind of question at once — "what state are these
//! streams in?", "create keys for these new streams". Asked one by one, each is a database
//! round trip (or a vault commit) of its own, and at 64 concurrent writers those round trips,
//! not the work, are what the database spends its CPU on. A [`Coalescer`] queues the requests
//! and one task answers all those waiting with one call, the same shape as group commit for
//! appends (`group_commit`). A lone request pays one channel hop more, nothing else.
//!
//! If a batched call fails, each of its requests is retried alone, so that one bad request
//! (a vault refusing one key) fails only its own caller.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::limits::COALESCE_QUEUE_MAX;

/// One kind of call that can answer many requests at once.
#[async_trait]
pub(crate) trait Batched: Send + Sync + 'static {
    type Request: Send + Sync + 'static;
    type Answer: Send + 'static;

    /// How much of the batch limit a request takes (e.g. its number of keys).
    fn weight(request: &Self::Request) -> usize;

    /// The most weight one call takes.
    const WEIGHT_MAX: usize;

    /// Answers every request, in order: exactly one answer per request.
    async fn call(&self, requests: &[&Self::Request]) -> Result<Vec<Self::Answer>, Error>;
}

struct Job<B: Batched> {
    request: B::Request,
    reply: oneshot::Sender<Result<B::Answer, Error>>,
}

/// The submitting side of a batching task.
pub(crate) struct Coalescer<B: Batched> {
    batched: Arc<B>,
    jobs: mpsc::Sender<Job<B>>,
}

impl<B: Batched> Coalescer<B> {
    /// Starts the batching task (it ends when the coalescer is dropped).
    pub(crate) fn start(batched: B) -> Self {
        let batched = Arc::new(batched);
        let (jobs, queue) = mpsc::channel(COALESCE_QUEUE_MAX);
        tokio::spawn(answer_in_batches(batched.clone(), queue));
        Self { batched, jobs }
    }

    /// The answer to one request, from a call shared with whichever requests wait with it.
    pub(crate) async fn call(&self, request: B::Request) -> Result<B::Answer, Error> {
        let (reply, answer) = oneshot::channel();
        match self.jobs.send(Job { request, reply }).await {
            Ok(()) => answer.await.map_err(|_| Error::ShuttingDown)?,
            // The batching task is gone (the runtime is shutting down): ask directly.
            Err(mpsc::error::SendError(job)) => answer_alone(self.batched.as_ref(), &job.request).await,
        }
    }
}

async fn answer_in_batches<B: Batched>(batched: Arc<B>, mut queue: mpsc::Receiver<Job<B>>) {
    // A request too heavy to join the batch being gathered starts the next one.
    let mut carried: Option<Job<B>> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut weight = B::weight(&first.request);
        let mut batch = vec![first];
        while weight < B::WEIGHT_MAX {
            match queue.try_recv() {
                Ok(job) if weight + B::weight(&job.request) <= B::WEIGHT_MAX => {
                    weight += B::weight(&job.request);
                    batch.push(job);
                }
                Ok(job) => {
                    carried = Some(job);
                    break;
                }
                Err(_) => break,
            }
        }
        let requests: Vec<&B::Request> = batch.iter().map(|job| &job.request).collect();
        let outcome = batched.call(&requests).await;
        match outcome {
            Ok(answers) if answers.len() == batch.len() => {
                for (job, answer) in batch.into_iter().zip(answers) {
                    // The caller may have gone away (a cancelled request): nothing to tell.
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(e));
                }
            }
            // A failed (or malformed) shared answer: each request on its own.
            _ => {
                for job in batch {
                    let answer = answer_alone(batched.as_ref(), &job.request).await;
                    let _ = job.reply.send(answer);
                }
            }
        }
    }
}

async fn answer_alone<B: Batched>(batched: &B, request: &B::Request) -> Result<B::Answer, Error> {
    let mut answers = batched.call(&[request]).await?;
    match (answers.pop(), answers.is_empty()) {
        (Some(answer), true) => Ok(answer),
        _ => Err(Error::Corrupt {
            detail: "a batched call gave the wrong number of answers".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Doubles numbers; refuses 13, and counts its calls.
    struct Doubler {
        calls: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Batched for Doubler {
        type Request = u32;
        type Answer = u32;
        const WEIGHT_MAX: usize = 4;
        fn weight(_: &u32) -> usize {
            1
        }
        async fn call(&self, requests: &[&u32]) -> Result<Vec<u32>, Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            if requests.iter().any(|r| **r == 13) {
                return Err(Error::ShuttingDown);
            }
            Ok(requests.iter().map(|r| **r * 2).collect())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiting_requests_share_calls_and_a_bad_one_fails_alone() {
        let calls = Arc::new(AtomicUsize::new(0));
        let coalescer = Arc::new(Coalescer::start(Doubler { calls: calls.clone() }));
        let tasks: Vec<_> = (0..10u32)
            .map(|n| {
                let coalescer = coalescer.clone();
                let n = if n == 5 { 13 } else { n };
                tokio::spawn(async move { (n, coalescer.call(n).await) })
            })
            .collect();
        for task in tasks {
            let (n, answer) = task.await.expect("task");
            match n {
                13 => assert!(answer.is_err(), "13 is refused"),
                n => assert_eq!(answer.expect("answered"), n * 2),
            }
        }
        // 10 requests in batches of at most 4, plus the failed batch's requests retried alone
        // (at most 4): far fewer calls than one per request plus retries would be.
        let made = calls.load(Ordering::SeqCst);
        assert!((3..=3 + 4).contains(&made), "{made} calls");
    }
}
