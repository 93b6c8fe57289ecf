//! [`EventStore`]: the library's front door.
//!
//! It validates input, turns events into stored rows ([`crate::payload`]), hands appends to the
//! group committer and reads back through the storage trait. It knows nothing of SQL (that is
//! [`crate::storage`]) nor of HTTP.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, ValidationError};
use crate::group_commit::{GroupCommitter, WriterStats};
use crate::limits::{
    APPEND_BYTES_MAX, APPEND_EVENTS_MAX, APPEND_STREAMS_MAX, FILTER_TYPES_MAX, READ_PAGE_EVENTS_MAX,
};
use crate::model::{
    AppendOutcome, AppendResult, Direction, LogFilter, LogPage, StreamAppend, StreamName,
    StreamSlice, check_event_type,
};
use crate::storage::{self, AtomicAppend, Storage, StreamWrite};
use crate::{payload, subscription};

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://path/to/events.db` or `postgres://…`.
    pub database_url: String,
}

impl StoreConfig {
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
        }
    }
}

/// An open event store. Cheap to clone; all clones share one writer and one pool.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<dyn Storage>,
    committer: GroupCommitter,
    /// The last position known committed (ours, or another process's on PostgreSQL).
    commits: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
}

impl EventStore {
    /// Opens (and migrates) the event database and starts the writer.
    pub async fn open(config: StoreConfig) -> Result<Self, Error> {
        let storage = storage::open(&config.database_url).await?;
        let head = storage.head().await?;
        let (commits_tx, commits) = watch::channel(head);
        storage.watch_foreign_commits(commits_tx.clone()).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (committer, writer_task) =
            GroupCommitter::start(storage.clone(), commits_tx, shutdown_rx);
        Ok(Self {
            inner: Arc::new(Inner {
                storage,
                committer,
                commits,
                shutdown,
                writer_task: Mutex::new(Some(writer_task)),
            }),
        })
    }

    /// Appends events to one stream. See [`EventStore::append_multi`] for several at once.
    pub async fn append(&self, append: StreamAppend) -> Result<AppendResult, Error> {
        let outcome = self.append_multi(vec![append]).await?;
        outcome
            .streams
            .into_iter()
            .next()
            .ok_or(Error::Invalid(ValidationError::NoStreams))
    }

    /// Appends to one stream and also says whether this was an idempotent retry.
    pub async fn append_with_outcome(&self, append: StreamAppend) -> Result<AppendOutcome, Error> {
        self.append_multi(vec![append]).await
    }

    /// Appends to several streams atomically: every stream is written or none is, each
    /// with its own expected version, and the events take contiguous positions in the order
    /// given.
    pub async fn append_multi(&self, appends: Vec<StreamAppend>) -> Result<AppendOutcome, Error> {
        let atomic = prepare_append(appends, false)?;
        self.inner.committer.submit(atomic).await
    }

    /// Reads up to `limit` events of a stream from version `from` (inclusive). Backward reads
    /// with `from = u64::MAX` start at the end.
    pub async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, Error> {
        check_limit(limit)?;
        let info = self
            .inner
            .storage
            .stream_info(stream)
            .await?
            .ok_or_else(|| Error::StreamNotFound {
                stream: stream.to_string(),
            })?;
        let stored = self
            .inner
            .storage
            .read_stream(stream, from, direction, limit)
            .await?;
        let events = stored
            .into_iter()
            .map(payload::decode)
            .collect::<Result<_, _>>()?;
        Ok(StreamSlice { info, events })
    }

    /// Reads up to `limit` events of the global log from position `from` (inclusive).
    pub async fn read_log(
        &self,
        from: u64,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<LogPage, Error> {
        check_limit(limit)?;
        if filter.types.len() > FILTER_TYPES_MAX {
            return Err(ValidationError::TooManyTypes {
                count: filter.types.len(),
                max: FILTER_TYPES_MAX,
            }
            .into());
        }
        let from = from.max(1);
        let (stored, head) = self.inner.storage.read_log(from, filter, limit).await?;
        // A full page continues after its last event; a short one has seen everything up to
        // the head, filtered out or not.
        let next = if stored.len() == limit {
            stored.last().map_or(from, |e| e.position + 1)
        } else {
            head.max(from - 1) + 1
        };
        let events = stored
            .into_iter()
            .map(payload::decode)
            .collect::<Result<_, _>>()?;
        Ok(LogPage { events, next, head })
    }

    /// The last committed position (0: empty log).
    pub async fn head(&self) -> Result<u64, Error> {
        Ok(self.inner.storage.head().await?)
    }

    /// Every event from position `from` (inclusive) matching `filter`: first those already
    /// stored (catch-up), then new ones as they are committed (live), with no gap and no
    /// duplicate between the two. Ends after yielding an error; resume from the last position
    /// seen + 1.
    pub fn subscribe(
        &self,
        from: u64,
        filter: LogFilter,
    ) -> impl Stream<Item = Result<crate::model::RecordedEvent, Error>> + Send + 'static {
        subscription::subscribe(self.clone(), from, filter)
    }

    /// Counters of the group-commit writer.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.committer.stats()
    }

    /// A receiver that changes whenever new events are committed.
    pub(crate) fn commits(&self) -> watch::Receiver<u64> {
        self.inner.commits.clone()
    }

    /// Finishes every queued append, then closes the database connections.
    pub async fn close(&self) {
        let _ = self.inner.shutdown.send(true);
        let task = self
            .inner
            .writer_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.storage.close().await;
    }
}

fn check_limit(limit: usize) -> Result<(), Error> {
    if limit == 0 || limit > READ_PAGE_EVENTS_MAX {
        return Err(ValidationError::InvalidLimit {
            max: READ_PAGE_EVENTS_MAX,
        }
        .into());
    }
    Ok(())
}

/// Validates an append and encodes its events. Nothing is stored if this fails.
fn prepare_append(appends: Vec<StreamAppend>, allow_closed: bool) -> Result<AtomicAppend, Error> {
    if appends.is_empty() {
        return Err(ValidationError::NoStreams.into());
    }
    if appends.len() > APPEND_STREAMS_MAX {
        return Err(ValidationError::TooManyStreams {
            count: appends.len(),
            max: APPEND_STREAMS_MAX,
        }
        .into());
    }
    let total: usize = appends.iter().map(|a| a.events.len()).sum();
    if total > APPEND_EVENTS_MAX {
        return Err(ValidationError::TooManyEvents {
            count: total,
            max: APPEND_EVENTS_MAX,
        }
        .into());
    }
    let mut streams = HashSet::new();
    let mut ids = HashSet::new();
    let mut bytes = 0;
    let mut index = 0;
    let mut writes = Vec::with_capacity(appends.len());
    for append in appends {
        if append.events.is_empty() {
            return Err(ValidationError::NoEvents.into());
        }
        if !streams.insert(append.stream.clone()) {
            return Err(ValidationError::DuplicateStreamInAppend {
                stream: append.stream.to_string(),
            }
            .into());
        }
        let mut events = Vec::with_capacity(append.events.len());
        for event in append.events {
            check_event_type(&event.event_type)?;
            if let Some(id) = event.id
                && !ids.insert(id)
            {
                return Err(ValidationError::DuplicateEventIdInAppend { event_id: id }.into());
            }
            let encoded = payload::encode(event, index)?;
            bytes += encoded.payload.len() + encoded.metadata.len();
            if bytes > APPEND_BYTES_MAX {
                return Err(ValidationError::AppendTooLarge {
                    bytes,
                    max: APPEND_BYTES_MAX,
                }
                .into());
            }
            index += 1;
            events.push(encoded);
        }
        writes.push(StreamWrite {
            stream: append.stream,
            expected: append.expected_version,
            subject: append.subject,
            key_id: None,
            events,
            allow_closed,
        });
    }
    Ok(AtomicAppend { writes })
}
