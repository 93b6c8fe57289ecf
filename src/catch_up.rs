//! Catch-up reads of the global log with read-ahead: [`EventStore::read_log_pages`].
//!
//! A reader that pages through the log with [`EventStore::read_log`] waits, for every page, for
//! the database round trip, then for the key lookup, then for decryption, one after the other.
//! Here a task of its own reads the following pages (rows, then keys) while the caller decrypts
//! and handles the current one: the next page's query is sent as soon as the previous page's
//! rows are in (its start is known then), and that page's keys are looked up meanwhile. The
//! database, the vault and the caller work at the same time, and a catch-up costs about its
//! slowest stage per page rather than the sum of them.
//!
//! Pages are read ahead still encrypted and decrypted only when the caller takes them, by the
//! same `EventStore::decode` as `read_log`: the stream status read with the rows decides, and
//! a key revoked meanwhile (a forget, here or in another process) is never used, so a stream
//! forgotten after a page was read ahead comes back erased, not decrypted.

use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::model::{LogFilter, LogPage};
use crate::storage::StoredEvent;
use crate::store::EventStore;

/// Pages read and waiting for the caller, besides the one the reader task holds and the one
/// being queried: the read-ahead is at most three pages.
const PAGES_WAITING_MAX: usize = 1;

impl EventStore {
    /// Reads the global log from position `from` (inclusive) to the head, as a stream of pages
    /// of up to `page_size` events (at most
    /// [`READ_PAGE_EVENTS_MAX`](crate::limits::READ_PAGE_EVENTS_MAX)), every event decrypted as
    /// by [`EventStore::read_log`]: a shredded stream's events come back with `data: None,
    /// erased: true`. The pages are those a loop over `read_log` with the same filter and
    /// `limit` would read: each event once, in log order.
    ///
    /// While the caller handles one page, the following ones are being read — the next page's
    /// query, the keys of the one after the current — so a catch-up costs about the slowest of
    /// database, vault and decryption time per page rather than their sum. Pages read ahead
    /// (at most three) are kept encrypted and decrypted only when the caller takes them, so a
    /// forget that completes in between is honoured.
    ///
    /// The stream ends after the first page that reaches the head seen by its read
    /// (`next > head`, which includes an empty page), or after the first error. It yields at
    /// least one page (possibly empty, to tell the head). Events committed later are not
    /// waited for: continue with `read_log_pages(last_page.next, …)`, or follow the log live
    /// with [`EventStore::subscribe`]. The reading starts when the stream is first polled
    /// (within a Tokio runtime, like every read); dropping the stream stops it.
    pub fn read_log_pages(
        &self,
        from: u64,
        filter: LogFilter,
        page_size: usize,
    ) -> impl Stream<Item = Result<LogPage, Error>> + Send + 'static {
        let reader = Reader {
            store: self.clone(),
            filter: Arc::new(filter),
            page_size,
        };
        futures::stream::unfold(State::Start(reader, from), |state| async move {
            let (store, mut read, task) = match state {
                State::Start(reader, from) => {
                    // Started on the first poll, so that creating the stream needs no runtime.
                    let (pages, read) = mpsc::channel(PAGES_WAITING_MAX);
                    let store = reader.store.clone();
                    (store, read, AbortOnDrop(tokio::spawn(read_ahead(reader, from, pages))))
                }
                State::Reading { store, read, task } => (store, read, task),
                State::Done => return None,
            };
            // After an error or the last page the reader task has stopped: `recv` ends us.
            let page = match read.recv().await? {
                Ok(fetched) => store.decode(fetched.stored).await.map(|events| LogPage {
                    events,
                    next: fetched.next,
                    head: fetched.head,
                }),
                Err(e) => Err(e),
            };
            let state = match page {
                Ok(_) => State::Reading { store, read, task },
                // Dropping the task stops the reader (if it was decryption that failed).
                Err(_) => State::Done,
            };
            Some((page, state))
        })
    }
}

/// Where a [`EventStore::read_log_pages`] stream stands.
enum State {
    /// Not polled yet.
    Start(Reader, u64),
    /// The reader task runs (or has finished) and sends its pages to `read`.
    Reading {
        store: EventStore,
        read: mpsc::Receiver<Result<Fetched, Error>>,
        task: AbortOnDrop<()>,
    },
    /// An error was yielded: the stream has ended.
    Done,
}

/// What every page read of one [`EventStore::read_log_pages`] shares.
#[derive(Clone)]
struct Reader {
    store: EventStore,
    filter: Arc<LogFilter>,
    page_size: usize,
}

/// `EventStore::read_log_stored`'s answer: a page's rows, still encrypted, `next` and `head`.
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
                .store
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
        let page = reader.store.warm_keys(&fetched.stored).await.map(|()| fetched);
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
