//! Catch-up reads of the global log, and forgets.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use lethe::model::{ErasureReason, ErasureStatus};
use lethe::{EventStore, ExpectedVersion, LogFilter, NewEvent, RecordedEvent, StreamAppend, StreamName, SubjectId};
use serde::Deserialize;
use tokio::task::JoinSet;

use crate::report::{Figures, percentile_ms};
use crate::workload::{Rng, private_user_event, still_sealed};

/// Events per read: the largest page the store serves (`READ_PAGE_EVENTS_MAX`).
pub const PAGE: usize = 1_000;
/// Events per append when filling the log for a catch-up (the most one append may carry).
const FILL_BATCH: usize = 1_000;
/// Concurrent appends while filling.
const FILL_WRITERS: usize = 4;

/// Appends `events` events (`event`: ~150-byte JSON each) in 1,000-event batches, each to a
/// stream of its own (`catchup-<n>`), from a few concurrent writers.
pub async fn fill_log(store: &EventStore, events: u64, event: fn(&mut Rng) -> NewEvent) -> anyhow::Result<()> {
    let batches = events.div_ceil(FILL_BATCH as u64);
    let mut tasks = JoinSet::new();
    for writer in 0..FILL_WRITERS as u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut rng = Rng::new(writer + 1);
            let mut batch = writer;
            while batch < batches {
                let size = (events - batch * FILL_BATCH as u64).min(FILL_BATCH as u64);
                let batch_events = (0..size).map(|_| event(&mut rng)).collect();
                let stream = StreamName::new(format!("catchup-{batch}"))?;
                store
                    .append(StreamAppend::new(stream, ExpectedVersion::NoStream, batch_events))
                    .await?;
                batch += FILL_WRITERS as u64;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("fill task panicked")??;
    }
    Ok(())
}

/// One page of a catch-up, as the loop needs it.
struct PageSummary {
    events: u64,
    /// The position of an event that came back without data (not decrypted), or with a
    /// personal field still sealed, if any.
    undecrypted: Option<u64>,
    next: u64,
    head: u64,
}

/// Reads `pages` (from position 1) until the head, timing each page as the reader sees it (the
/// time since the previous page arrived), and checks that every event came back decrypted and
/// that `expected` events were read.
async fn catch_up<S>(what: &str, expected: u64, pages: S) -> anyhow::Result<Figures>
where
    S: Stream<Item = anyhow::Result<PageSummary>>,
{
    let mut pages = pin!(pages);
    let mut events = 0u64;
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut previous = start;
    while let Some(page) = pages.next().await {
        let page = page?;
        let now = Instant::now();
        latencies.push(now - previous);
        previous = now;
        if let Some(position) = page.undecrypted {
            bail!("{what}: event at position {position} was not decrypted");
        }
        events += page.events;
        if page.events == 0 || page.next > page.head {
            break;
        }
    }
    let figures = read_figures(start.elapsed(), events, latencies);
    if events != expected {
        bail!("{what} read {events} events, expected {expected}");
    }
    Ok(figures)
}

/// Pages from position 1, each read with `fetch(from)` once the previous one has arrived.
fn paged<F, Fut>(mut fetch: F) -> impl Stream<Item = anyhow::Result<PageSummary>>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<PageSummary>>,
{
    futures::stream::unfold(Some(1), move |from| {
        let page = from.map(&mut fetch);
        async move {
            let page = page?.await;
            let next = page.as_ref().ok().map(|p| p.next);
            Some((page, next))
        }
    })
}

/// Reads the whole log from position 1 through the library (`read_log_pages`: the next page is
/// read while the current one is checked), and checks that every event came back decrypted,
/// personal fields included. `ops` = events read; the latencies are per page.
pub async fn catch_up_library(store: &EventStore, what: &str, expected: u64) -> anyhow::Result<Figures> {
    let pages = store.read_log_pages(1, LogFilter::default(), PAGE).map(|page| {
        let page = page?;
        Ok(PageSummary {
            events: page.events.len() as u64,
            undecrypted: page.events.iter().find(|e| !opened(e)).map(|e| e.position),
            next: page.next,
            head: page.head,
        })
    });
    catch_up(what, expected, pages).await
}

/// Whether an event came back with its data, every personal field of it opened.
fn opened(event: &RecordedEvent) -> bool {
    event.erased_fields.is_empty() && event.data.as_ref().is_some_and(|data| !still_sealed(data))
}

#[derive(Deserialize)]
struct LogPage {
    events: Vec<LogEvent>,
    next: u64,
    head: u64,
}

#[derive(Deserialize)]
struct LogEvent {
    position: u64,
    data: Option<serde::de::IgnoredAny>,
}

/// The same over HTTP: `GET /log?from=&limit=1000` until the head. The client parses every
/// answer (the JSON of each event), as a real consumer would.
pub async fn catch_up_http(client: &reqwest::Client, addr: SocketAddr, expected: u64) -> anyhow::Result<Figures> {
    let pages = paged(|from| async move {
        let url = format!("http://{addr}/log?from={from}&limit={PAGE}");
        let response = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!(
                "GET {url}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        let page: LogPage = serde_json::from_slice(&body).with_context(|| format!("parsing GET {url}"))?;
        Ok(PageSummary {
            events: page.events.len() as u64,
            undecrypted: page.events.iter().find(|e| e.data.is_none()).map(|e| e.position),
            next: page.next,
            head: page.head,
        })
    });
    catch_up("HTTP catch-up", expected, pages).await
}

fn read_figures(elapsed: Duration, events: u64, mut pages: Vec<Duration>) -> Figures {
    pages.sort_unstable();
    let seconds = elapsed.as_secs_f64();
    Figures {
        ops: events,
        failures: 0,
        seconds,
        ops_per_sec: events as f64 / seconds,
        events_per_sec: events as f64 / seconds,
        p50_ms: percentile_ms(&pages, 0.50),
        p99_ms: percentile_ms(&pages, 0.99),
        appends_per_txn: None,
        peak_rss_mb: None,
    }
}

/// Subject `one` with 1 stream, subject `many` with `streams` streams, each stream of 10
/// events (~150 bytes each), all bound to their subject.
pub async fn fill_subjects(store: &EventStore, streams: u64) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    const WRITERS: u64 = 16;
    for writer in 0..WRITERS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut rng = Rng::new(writer + 1);
            let mut k = writer;
            // Stream 0 of the writer 0 is subject `one`'s; the others are `many`'s.
            while k <= streams {
                let (name, subject) = if k == 0 {
                    ("profile-one".to_owned(), "one")
                } else {
                    (format!("profile-many-{k}"), "many")
                };
                let events = (0..10).map(|_| private_user_event(k, &mut rng)).collect();
                store
                    .append(
                        StreamAppend::new(StreamName::new(name)?, ExpectedVersion::NoStream, events)
                            .with_subject(SubjectId::new(subject)?),
                    )
                    .await?;
                k += WRITERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("fill task panicked")??;
    }
    Ok(())
}

/// Times `forget(subject)` through the library, to completion (no erasure-dependent consumer
/// is registered, so it completes at once), and checks it destroyed `streams` keys.
pub async fn forget(store: &EventStore, subject: &str, streams: u64) -> anyhow::Result<Figures> {
    let reason = ErasureReason {
        reason: Some("benchmark".to_owned()),
        requested_by: Some("lethe-bench".to_owned()),
        reference: None,
    };
    let started = Instant::now();
    let erasure = store.forget(&SubjectId::new(subject)?, reason).await?;
    let elapsed = started.elapsed();
    if erasure.status != ErasureStatus::Completed || erasure.keys_destroyed != streams {
        bail!(
            "forget({subject}) ended {:?} with {} keys destroyed, expected completed with {streams}",
            erasure.status,
            erasure.keys_destroyed
        );
    }
    let ms = elapsed.as_secs_f64() * 1000.0;
    Ok(Figures {
        ops: 1,
        failures: 0,
        seconds: elapsed.as_secs_f64(),
        ops_per_sec: 1.0 / elapsed.as_secs_f64(),
        events_per_sec: (streams * 10) as f64 / elapsed.as_secs_f64(),
        p50_ms: ms,
        p99_ms: ms,
        appends_per_txn: None,
        peak_rss_mb: None,
    })
}

/// Loads the KEK a round's store and server share (created on first use).
pub fn kek(path: &Path) -> anyhow::Result<lethe_keyvault::Kek> {
    lethe_keyvault::Kek::load_or_create(path).with_context(|| format!("creating the KEK file {}", path.display()))
}
