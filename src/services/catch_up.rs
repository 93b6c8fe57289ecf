//! Catch-up reads of the global log with read-ahead: [`read_log_pages`].
//!
//! A reader that pages through the log with `Core::read_log` waits, for every page, for
//! the database round trip, then for the key lookup, then for decryption, one after the other.
//! Here a task of its own reads the following pages (rows, then keys) while the caller decrypts
//! and handles the current one: the next page's query is sent as soon as the previous page's
//! rows are in (its start is known then), and that page's keys are looked up meanwhile. The
//! database, the vault and the caller work at the same time, and a catch-up costs about its
//! slowest stage per page rather than the sum of them.
//!
//! Pages are read ahead still encrypted and decrypted only when the caller takes them, by the
//! same `Core::decode` as `read_log`: the stream status read with the rows decides, and
//! a key revoked meanwhile (a forget, here or in another process) is never used, so a stream
//! forgotten after a page was read ahead comes back erased, not decrypted.

use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::core::Core;
use crate::error::Error;
use crate::limits::READ_AHEAD_PAGES_WAITING_MAX;
use crate::model::{LogFilter, LogPage};
use crate::storage::StoredEvent;

/// The log from `from` to the head as a stream of pages, read ahead (see
/// `EventStore::read_log_pages`, which documents the contract).
pub(crate) fn read_log_pages(
    core: Arc<Core>,
    from: u64,
    filter: LogFilter,
    page_size: usize,
) -> impl Stream<Item = Result<LogPage, Error>> + Send + 'static {
    let reader = Reader {
        core,
        filter: Arc::new(filter),
        page_size,
    };
    futures::stream::unfold(State::Start(reader, from), |state| async move {
        let (core, mut read, task) = match state {
            State::Start(reader, from) => {
                // Started on the first poll, so that creating the stream needs no runtime.
                let (pages, read) = mpsc::channel(READ_AHEAD_PAGES_WAITING_MAX);
                let core = reader.core.clone();
                (core, read, AbortOnDrop(tokio::spawn(read_ahead(reader, from, pages))))
            }
            State::Reading { core, read, task } => (core, read, task),
            State::Done => return None,
        };
        // After an error or the last page the reader task has stopped: `recv` ends us.
        let page = match read.recv().await? {
            Ok(fetched) => core.decode(fetched.stored).await.map(|events| LogPage {
                events,
                next: fetched.next,
                head: fetched.head,
            }),
            Err(e) => Err(e),
        };
        let state = match page {
            Ok(_) => State::Reading { core, read, task },
            // Dropping the task stops the reader (if it was decryption that failed).
            Err(_) => State::Done,
        };
        Some((page, state))
    })
}

/// Where a [`read_log_pages`] stream stands.
enum State {
    /// Not polled yet.
    Start(Reader, u64),
    /// The reader task runs (or has finished) and sends its pages to `read`.
    Reading {
        core: Arc<Core>,
        read: mpsc::Receiver<Result<Fetched, Error>>,
        task: AbortOnDrop<()>,
    },
    /// An error was yielded: the stream has ended.
    Done,
}

/// What every page read of one [`read_log_pages`] shares.
#[derive(Clone)]
struct Reader {
    core: Arc<Core>,
    filter: Arc<LogFilter>,
    page_size: usize,
}

/// `Core::read_log_stored`'s answer: a page's rows, still encrypted, `next` and `head`.
type StoredPage = (Vec<StoredEvent>, u64, u64);

/// A page read, still encrypted, its keys in the cache.
struct Fetched {
    stored: Vec<StoredEvent>,
    next: u64,
    head: u64,
}

impl Reader {
    /// Starts reading the rows of the page at `from`, in a task of its own.
    fn query(&self, from: u64) -> AbortOnDrop<Result<StoredPage, Error>> {
        let reader = self.clone();
        AbortOnDrop(tokio::spawn(async move {
            reader
                .core
                .read_log_stored(from, &reader.filter, reader.page_size)
                .await
        }))
    }
}

/// The reader task: reads pages from `from` until one reaches the head, and sends each, keys
/// looked up, to `pages`. Stops after an error (sent too) or when the stream was dropped.
async fn read_ahead(reader: Reader, from: u64, pages: mpsc::Sender<Result<Fetched, Error>>) {
    let mut query = reader.query(from);
    loop {
        let fetched = match query.join().await {
            Ok((stored, next, head)) => Fetched { stored, next, head },
            Err(e) => {
                let _ = pages.send(Err(e)).await;
                return;
            }
        };
        // The same end as a paging loop over `read_log`: this page reached the head.
        let last = fetched.stored.is_empty() || fetched.next > fetched.head;
        // The next page's query goes out now, while this page's keys are looked up.
        let upcoming = (!last).then(|| reader.query(fetched.next));
        // Keys for the decryption to come (cache, then at most one vault call); those of
        // shredded streams are revoked.
        let page = reader
            .core
            .prefetch_stream_keys(&fetched.stored)
            .await
            .map(|()| fetched);
        let failed = page.is_err();
        if pages.send(page).await.is_err() || failed {
            return;
        }
        match upcoming {
            Some(upcoming) => query = upcoming,
            None => return,
        }
    }
}

/// A task that is cancelled when its handle is dropped (the stream, or the reader task, went
/// away), so no read outlives its reader.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<Result<T, Error>> {
    async fn join(mut self) -> Result<T, Error> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only by the runtime shutting down, since the handle is ours.
            Err(_) => Err(Error::ShuttingDown),
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
