//! The retention sweep (issue 20): many subjects past a policy's `keep_for`, one
//! `EventStore::sweep_retention` timed, and single-event appends from a concurrent writer while
//! it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use lethe::{EventStore, ExpectedVersion, RetentionAnchor, RetentionSweep, StreamAppend, StreamName, SubjectId};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::report::{Figures, percentile_ms};
use crate::workload::{Rng, order_event, private_user_event};

/// The scenario's name, and that of its second row: the concurrent writer's appends.
pub const RETENTION_SWEEP: &str = "retention-sweep";
pub const RETENTION_SWEEP_APPENDS: &str = "retention-sweep-appends";
/// The policy the round puts: streams `customer-<i>`, kept 30 days after their last event.
const POLICY: &str = "customers";
const PREFIX: &str = "customer-";
const KEEP_FOR: &str = "P30D";
/// How far the round moves the store's clock before sweeping: one day past `keep_for`.
pub const CLOCK_ADVANCE: Duration = Duration::from_secs(31 * 24 * 60 * 60);
/// Streams per atomic append while filling (the most one `append_multi` takes), and the
/// appends in flight.
const FILL_STREAMS_PER_APPEND: u64 = 100;
const FILL_WRITERS: u64 = 4;

/// Now by the system clock, in microseconds since the epoch: where a round's `ManualClock`
/// starts (the store records its events' `recorded_at` by that clock too).
pub fn now_micros() -> anyhow::Result<i64> {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH)?;
    Ok(i64::try_from(since_epoch.as_micros())?)
}

/// Untimed setup: `subjects` subjects, subject `customer-<i>` with one bound stream
/// `customer-<i>` of one event, appended 100 streams per atomic append by a few writers; then
/// the policy `{stream_prefix: "customer-", keep_for: "P30D", after: last_event}`.
pub async fn fill_customers(store: &EventStore, subjects: u64) -> anyhow::Result<()> {
    let appends = subjects.div_ceil(FILL_STREAMS_PER_APPEND);
    let mut tasks = JoinSet::new();
    for writer in 0..FILL_WRITERS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut rng = Rng::new(writer + 1);
            let mut append = writer;
            while append < appends {
                let first = append * FILL_STREAMS_PER_APPEND;
                let streams = (first..(first + FILL_STREAMS_PER_APPEND).min(subjects))
                    .map(|i| {
                        let name = format!("{PREFIX}{i}");
                        Ok(StreamAppend::new(
                            StreamName::new(name.clone())?,
                            ExpectedVersion::NoStream,
                            vec![private_user_event(i, &mut rng)],
                        )
                        .with_subject(SubjectId::new(name)?))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                store.append_multi(streams).await?;
                append += FILL_WRITERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("fill task panicked")??;
    }
    store
        .put_retention_policy(POLICY, PREFIX, KEEP_FOR, RetentionAnchor::LastEvent, "lethe-bench")
        .await
        .context("putting the retention policy")?;
    Ok(())
}

/// What one round measured: the sweep, and the concurrent writer's appends during it.
pub struct SweepRound {
    pub sweep: Figures,
    pub appends: Figures,
    pub counts: RetentionSweep,
    /// The longest append that completed during the sweep, in milliseconds.
    pub appends_max_ms: f64,
    /// When the sweep returned.
    pub ended: Instant,
}

/// Times one `sweep_retention()` while a writer appends single events (orders, as
/// `single-event`) to random `bench-<n>` streams of `streams` (unbound, outside the policy's
/// prefix), one at a time; the writer has completed one append before the sweep starts and
/// stops when it returns. A sweep that does not file a request for every one of `subjects`
/// is an error (a broken run), not a figure.
pub async fn sweep_with_writer(store: &EventStore, subjects: u64, streams: u64) -> anyhow::Result<SweepRound> {
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = oneshot::channel();
    let writer = tokio::spawn(writer(store.clone(), streams, Arc::clone(&stop), started_tx));
    // The writer's first append is done (or it failed: its error comes from the join below).
    let _ = started_rx.await;
    let started = Instant::now();
    let sweep = store.sweep_retention().await;
    let ended = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let completions = writer.await.context("writer task panicked")??;
    let counts = sweep.context("sweeping retention")?;
    if counts.filed != subjects {
        bail!(
            "the sweep filed {} erasure requests for {subjects} subjects due (due {}, refused {}, batches {}): \
             a sweep must file them all in one pass",
            counts.filed,
            counts.due,
            counts.refused,
            counts.batches
        );
    }
    let elapsed = ended - started;
    let seconds = elapsed.as_secs_f64();
    let ms = seconds * 1000.0;
    let sweep = Figures {
        ops: counts.filed,
        failures: 0,
        seconds,
        ops_per_sec: counts.filed as f64 / seconds,
        // One event per subject.
        events_per_sec: counts.filed as f64 / seconds,
        p50_ms: ms,
        p99_ms: ms,
        appends_per_txn: None,
        peak_rss_mb: None,
    };
    let mut latencies: Vec<Duration> = completions
        .into_iter()
        .filter(|(done, _)| (started..=ended).contains(done))
        .map(|(_, latency)| latency)
        .collect();
    latencies.sort_unstable();
    let ops = latencies.len() as u64;
    let appends = Figures {
        ops,
        failures: 0,
        seconds,
        ops_per_sec: ops as f64 / seconds,
        events_per_sec: ops as f64 / seconds,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        appends_per_txn: None,
        peak_rss_mb: None,
    };
    Ok(SweepRound {
        sweep,
        appends,
        counts,
        appends_max_ms: percentile_ms(&latencies, 1.0),
        ended,
    })
}

/// The concurrent writer: one append at a time until `stop`; returns when each completed and
/// how long it took. Signals `started` after its first append.
async fn writer(
    store: EventStore,
    streams: u64,
    stop: Arc<AtomicBool>,
    started: oneshot::Sender<()>,
) -> anyhow::Result<Vec<(Instant, Duration)>> {
    let mut rng = Rng::new(now_micros()? as u64);
    let mut started = Some(started);
    let mut completions = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let stream = StreamName::new(format!("bench-{}", rng.below(streams)))?;
        let append = StreamAppend::new(stream, ExpectedVersion::Any, vec![order_event(&mut rng)]);
        let begun = Instant::now();
        store.append(append).await.context("appending during the sweep")?;
        let done = Instant::now();
        completions.push((done, done - begun));
        if let Some(started) = started.take() {
            let _ = started.send(());
        }
    }
    Ok(completions)
}
