//! Group commit: many concurrent appends, one database transaction.
//!
//! Every append goes through one writer task per store. While a transaction is in flight,
//! new appends queue up; the next transaction takes all of them (up to
//! [`GROUP_APPENDS_MAX`] appends / [`GROUP_EVENTS_MAX`] events). Each append is still decided
//! on its own by the storage plan, so one append's conflict never fails its neighbours. If the
//! transaction as a whole fails (a database error), each append of the group is retried alone,
//! so a poisoned append fails by itself too.
//!
//! Why: a commit costs an fsync (and, on PostgreSQL, the commit-order lock). Sharing it is what
//! lets throughput grow with the number of writers instead of being one commit per append.
//!
//! PostgreSQL's parallel group writers (`StoreConfig::postgres_group_writers` > 1) run that
//! many writer tasks on the one queue: each gathers a group while it holds the queue, then
//! writes it while the next task gathers the next group.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::limits::{GROUP_APPENDS_MAX, GROUP_EVENTS_MAX, WRITER_QUEUE_APPENDS_MAX};
use crate::storage::{AppendReply, AtomicAppend, Storage, advance_head};

struct Job {
    append: AtomicAppend,
    reply: oneshot::Sender<AppendReply>,
}

/// The submitting side of the writer task.
pub(crate) struct GroupCommitter {
    jobs: mpsc::Sender<Job>,
    stats: Arc<WriterCounters>,
}

/// Counters of the writer task (for metrics and for tests that check grouping happens).
#[derive(Debug, Default)]
pub(crate) struct WriterCounters {
    pub(crate) transactions: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) busy_micros: AtomicU64,
}

/// A snapshot of the writer's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    /// Database transactions the writer ran (one per group, more after a failed group).
    pub transactions: u64,
    /// Appends it handled.
    pub appends: u64,
    /// Time spent running transactions: over a time span, busy ÷ span is how much of it the
    /// writer was the bottleneck.
    pub busy: std::time::Duration,
}

impl GroupCommitter {
    /// Starts the writer task. `commits` receives the new head after every commit.
    pub(crate) fn start(
        storage: Arc<dyn Storage>,
        commits: watch::Sender<u64>,
        shutdown: watch::Receiver<bool>,
    ) -> (Self, JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(WRITER_QUEUE_APPENDS_MAX);
        let stats = Arc::new(WriterCounters::default());
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let writers: Vec<JoinHandle<()>> = (0..storage.group_writers().max(1))
            .map(|_| {
                tokio::spawn(run(
                    storage.clone(),
                    queue.clone(),
                    commits.clone(),
                    shutdown.clone(),
                    stats.clone(),
                ))
            })
            .collect();
        let task = tokio::spawn(async move {
            for writer in writers {
                let _ = writer.await;
            }
        });
        (Self { jobs, stats }, task)
    }

    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            appends: self.stats.appends.load(Ordering::Relaxed),
            busy: std::time::Duration::from_micros(self.stats.busy_micros.load(Ordering::Relaxed)),
        }
    }

    /// Queues an append and waits for its outcome.
    pub(crate) async fn submit(&self, append: AtomicAppend) -> AppendReply {
        let (reply, outcome) = oneshot::channel();
        self.jobs
            .send(Job { append, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        outcome.await.map_err(|_| Error::ShuttingDown)?
    }
}

/// One writer task: takes the next group off the queue and writes it, until the queue is
/// closed and empty.
async fn run(
    storage: Arc<dyn Storage>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    commits: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<WriterCounters>,
) {
    loop {
        let Some(jobs) = next_group(&queue, &mut shutdown).await else {
            return;
        };
        stats.appends.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let started = std::time::Instant::now();
        commit_group(storage.as_ref(), jobs, &commits, &stats).await;
        let busy = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        stats.busy_micros.fetch_add(busy, Ordering::Relaxed);
    }
}

/// The next group: the first queued append and whatever else is queued behind it, within the
/// group limits. `None`: the queue is closed and empty.
async fn next_group(
    queue: &tokio::sync::Mutex<mpsc::Receiver<Job>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Vec<Job>> {
    let mut queue = queue.lock().await;
    let first = loop {
        tokio::select! {
            biased;
            job = queue.recv() => break job?,
            _ = shutdown.changed() => {
                // Refuse new appends, but finish every one already queued.
                queue.close();
            }
        }
    };
    let mut events = first.append.event_count();
    let mut jobs = vec![first];
    while jobs.len() < GROUP_APPENDS_MAX && events < GROUP_EVENTS_MAX {
        match queue.try_recv() {
            Ok(job) => {
                events += job.append.event_count();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    Some(jobs)
}

async fn commit_group(storage: &dyn Storage, jobs: Vec<Job>, commits: &watch::Sender<u64>, stats: &WriterCounters) {
    let (appends, replies): (Vec<AtomicAppend>, Vec<oneshot::Sender<AppendReply>>) =
        jobs.into_iter().map(|j| (j.append, j.reply)).unzip();
    stats.transactions.fetch_add(1, Ordering::Relaxed);
    match storage.append_group(&appends).await {
        Ok(outcomes) => {
            announce(&outcomes, commits);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // The submitter may have gone away (cancelled request): nothing to tell.
                let _ = reply.send(outcome);
            }
        }
        Err(e) if appends.len() == 1 => {
            tracing::warn!(error = %e, "append failed");
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(Error::Storage(e)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, appends = appends.len(), "group commit failed; retrying each append alone");
            for (append, reply) in appends.into_iter().zip(replies) {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                let outcome = match storage.append_group(std::slice::from_ref(&append)).await {
                    Ok(mut outcomes) => {
                        announce(&outcomes, commits);
                        outcomes.pop().unwrap_or(Err(Error::ShuttingDown))
                    }
                    Err(e) => Err(Error::Storage(e)),
                };
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Wakes readers waiting for new events.
fn announce(outcomes: &[AppendReply], commits: &watch::Sender<u64>) {
    let head = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok())
        .flat_map(|o| o.streams.iter().map(|s| s.last_position))
        .max();
    if let Some(head) = head {
        advance_head(commits, head);
    }
}
