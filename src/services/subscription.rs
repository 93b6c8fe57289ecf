//! Catch-up-then-live subscriptions to the global log.
//!
//! A subscription is a loop over log pages: read from `next`; if the page has events, yield
//! them; if not, wait until something is committed, then read again. Because positions become
//! visible in increasing order (the storage's ordering guarantee) and every read continues
//! exactly after the last position seen, there is no separate "live" mode that could open a
//! gap or repeat an event at the switch: live is catch-up that has caught up.
//!
//! Pages are buffered still encrypted and each event is decrypted only when it is handed out,
//! so an event buffered before a forget is never yielded with its data after the forget.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;

use crate::core::Core;
use crate::error::Error;
use crate::limits::{BUFFERED_PAGE_EVENTS, SUBSCRIPTION_IDLE_POLL};
use crate::model::{LogFilter, RecordedEvent};
use crate::storage::StoredEvent;

struct State {
    core: Arc<Core>,
    filter: LogFilter,
    next: u64,
    buffered: VecDeque<StoredEvent>,
    commits: watch::Receiver<u64>,
    failed: bool,
}

pub(crate) fn subscribe(
    core: Arc<Core>,
    from: u64,
    filter: LogFilter,
) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static {
    let state = State {
        commits: core.commits(),
        core,
        filter,
        next: from.max(1),
        buffered: VecDeque::new(),
        failed: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(stored) = state.buffered.pop_front() {
                // The keys are cached by the page's decode below; this is a cache hit, or a
                // revoked key (the stream was shredded meanwhile) that yields the event erased.
                let decoded = state.core.decode_warmed(vec![stored]).await.map(|mut e| e.pop());
                match decoded {
                    Ok(Some(event)) => return Some((Ok(event), state)),
                    Ok(None) => continue,
                    Err(e) => {
                        state.failed = true;
                        return Some((Err(e), state));
                    }
                }
            }
            if state.failed {
                return None;
            }
            // Mark the current head as seen *before* reading, so a commit that lands after
            // the read wakes the wait below instead of being missed.
            state.commits.borrow_and_update();
            match state
                .core
                .read_log_stored(state.next, &state.filter, BUFFERED_PAGE_EVENTS)
                .await
            {
                Ok((events, next, _head)) => {
                    state.next = next;
                    if events.is_empty() {
                        // A closed channel means the store is gone; the poll then ends us.
                        let _ = tokio::time::timeout(SUBSCRIPTION_IDLE_POLL, state.commits.changed()).await;
                    } else if let Err(e) = state.core.warm_keys(&events).await {
                        state.failed = true;
                        return Some((Err(e), state));
                    } else {
                        state.buffered.extend(events);
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
