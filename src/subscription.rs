//! Catch-up-then-live subscriptions to the global log.
//!
//! A subscription is a loop over log pages: read from `next`; if the page has events, yield
//! them; if not, wait until something is committed, then read again. Because positions become
//! visible in increasing order (the storage's ordering guarantee) and every read continues
//! exactly after the last position seen, there is no separate "live" mode that could open a
//! gap or repeat an event at the switch: live is catch-up that has caught up.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;

use crate::error::Error;
use crate::model::{LogFilter, RecordedEvent};
use crate::store::EventStore;

/// Events fetched per read.
const PAGE_EVENTS: usize = 500;
/// Re-read at least this often while idle, in case a commit notification was lost (another
/// process's NOTIFY during a reconnect).
const IDLE_POLL: Duration = Duration::from_millis(500);

struct State {
    store: EventStore,
    filter: LogFilter,
    next: u64,
    buffered: VecDeque<RecordedEvent>,
    commits: watch::Receiver<u64>,
    failed: bool,
}

pub(crate) fn subscribe(
    store: EventStore,
    from: u64,
    filter: LogFilter,
) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static {
    let state = State {
        commits: store.commits(),
        store,
        filter,
        next: from.max(1),
        buffered: VecDeque::new(),
        failed: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.buffered.pop_front() {
                return Some((Ok(event), state));
            }
            if state.failed {
                return None;
            }
            // Mark the current head as seen *before* reading, so a commit that lands after
            // the read wakes the wait below instead of being missed.
            state.commits.borrow_and_update();
            match state
                .store
                .read_log(state.next, &state.filter, PAGE_EVENTS)
                .await
            {
                Ok(page) => {
                    state.next = page.next;
                    if page.events.is_empty() {
                        // A closed channel means the store is gone; the poll then ends us.
                        let _ = tokio::time::timeout(IDLE_POLL, state.commits.changed()).await;
                    } else {
                        state.buffered.extend(page.events);
                    }
                }
                Err(e) => {
                    state.failed = true;
                    return Some((Err(e), state));
                }
            }
        }
    })
}
