//! Subject access and portability exports (GDPR Art. 15/20): every event of a subject's
//! streams, decrypted where it still can be, streamed page by page so that a subject with many
//! events never needs them all in memory.

use std::collections::VecDeque;

use futures::Stream;

use crate::error::Error;
use crate::model::{Direction, RecordedEvent, StreamInfo, SubjectId};
use crate::store::EventStore;

/// Events read per page.
const PAGE_EVENTS: usize = 500;

struct State {
    store: EventStore,
    streams: VecDeque<StreamInfo>,
    next_version: u64,
    buffered: VecDeque<RecordedEvent>,
    done: bool,
}

/// Every event of every stream bound to `subject`, stream by stream (by name), in version order.
/// Shredded streams yield their events with `data: None, erased: true`.
pub(crate) fn export_subject(
    store: EventStore,
    subject: SubjectId,
) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static {
    let state = State {
        store,
        streams: VecDeque::new(),
        next_version: 0,
        buffered: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold((state, Some(subject)), |(mut state, mut subject)| async move {
        loop {
            if let Some(event) = state.buffered.pop_front() {
                return Some((Ok(event), (state, subject)));
            }
            if state.done {
                return None;
            }
            if let Some(subject) = subject.take() {
                match state.store.subject_streams(&subject).await {
                    Ok(streams) => state.streams = streams.into(),
                    Err(e) => {
                        state.done = true;
                        return Some((Err(e), (state, None)));
                    }
                }
            }
            let Some(stream) = state.streams.front() else {
                state.done = true;
                continue;
            };
            let page = state
                .store
                .read_stream(&stream.stream, state.next_version, Direction::Forward, PAGE_EVENTS)
                .await;
            match page {
                Ok(slice) if slice.events.is_empty() => {
                    state.streams.pop_front();
                    state.next_version = 0;
                }
                Ok(slice) => {
                    state.next_version = slice.events.last().map_or(0, |e| e.version + 1);
                    state.buffered.extend(slice.events);
                }
                Err(e) => {
                    state.done = true;
                    return Some((Err(e), (state, None)));
                }
            }
        }
    })
}
