//! Subject access and portability exports (GDPR Art. 15/20): every event of a subject's
//! streams, decrypted where it still can be, streamed page by page so that a subject with many
//! events never needs them all in memory.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;

use crate::core::Core;
use crate::error::Error;
use crate::limits::BUFFERED_PAGE_EVENTS;
use crate::model::{RecordedEvent, StreamInfo, SubjectId};
use crate::storage::StoredEvent;

struct State {
    core: Arc<Core>,
    streams: VecDeque<StreamInfo>,
    next_version: u64,
    buffered: VecDeque<StoredEvent>,
    done: bool,
}

/// Every event of every stream bound to `subject`, stream by stream (by name), in version order.
/// Shredded streams yield their events with `data: None, erased: true`.
pub(crate) fn export_subject(
    core: Arc<Core>,
    subject: SubjectId,
) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static {
    let state = State {
        core,
        streams: VecDeque::new(),
        next_version: 0,
        buffered: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold((state, Some(subject)), |(mut state, mut subject)| async move {
        loop {
            if let Some(stored) = state.buffered.pop_front() {
                match state.core.decode(vec![stored]).await.map(|mut e| e.pop()) {
                    Ok(Some(event)) => return Some((Ok(event), (state, subject))),
                    Ok(None) => continue,
                    Err(e) => {
                        state.done = true;
                        return Some((Err(e), (state, None)));
                    }
                }
            }
            if state.done {
                return None;
            }
            if let Some(subject) = subject.take() {
                match state.core.subject_streams(&subject).await {
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
                .core
                .read_stream_stored(&stream.stream, state.next_version, BUFFERED_PAGE_EVENTS)
                .await;
            match page {
                Ok(events) if events.is_empty() => {
                    state.streams.pop_front();
                    state.next_version = 0;
                }
                Ok(events) => {
                    state.next_version = events.last().map_or(0, |e| e.version + 1);
                    if let Err(e) = state.core.warm_keys(&events).await {
                        state.done = true;
                        return Some((Err(e), (state, None)));
                    }
                    state.buffered.extend(events);
                }
                Err(e) => {
                    state.done = true;
                    return Some((Err(e), (state, None)));
                }
            }
        }
    })
}
