//! Subject access and portability exports (GDPR Art. 15/20): every event of a subject's
//! streams, decrypted where it still can be; then every event of other streams that carries
//! the subject's personal fields, with every other subject's personal fields left out. Streamed
//! page by page, so that a subject with many events never needs them all in memory.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;

use crate::core::Core;
use crate::error::Error;
use crate::limits::BUFFERED_PAGE_EVENTS;
use crate::model::{RecordedEvent, StreamInfo, StreamName, SubjectId};
use crate::storage::StoredEvent;

/// A stream to export: bound to the subject (every event), or holding its personal fields
/// (only the events that carry them, with only its fields of all the personal ones).
struct ExportStream {
    info: StreamInfo,
    fields_only: bool,
}

struct State {
    core: Arc<Core>,
    subject: SubjectId,
    streams: VecDeque<ExportStream>,
    next_version: u64,
    buffered: VecDeque<StoredEvent>,
    done: bool,
}

/// Every event of every stream bound to `subject`, stream by stream (by name), in version order;
/// then the events of the streams holding its personal fields. Shredded streams yield their
/// events with `data: None, erased: true`.
pub(crate) fn export_subject(
    core: Arc<Core>,
    subject: SubjectId,
) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static {
    let state = State {
        core,
        subject: subject.clone(),
        streams: VecDeque::new(),
        next_version: 0,
        buffered: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold((state, Some(subject)), |(mut state, mut subject)| async move {
        loop {
            if let Some(stored) = state.buffered.pop_front() {
                let fields_only = state.streams.front().is_some_and(|s| s.fields_only);
                let decoded = match state.core.decode_warmed(vec![stored]).await.map(|mut e| e.pop()) {
                    // Other subjects' personal fields are left out everywhere, and in streams
                    // not bound to the subject only events carrying its fields are exported.
                    Ok(Some(mut event)) => {
                        let bound = state.streams.front().and_then(|s| s.info.subject.clone());
                        state
                            .core
                            .keep_fields_of(&mut event, &state.subject, bound.as_ref())
                            .await
                            .map(|carries| (carries || !fields_only).then_some(event))
                    }
                    other => other,
                };
                match decoded {
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
                match export_streams(&state.core, &subject).await {
                    Ok(streams) => state.streams = streams,
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
                .read_stream_stored(&stream.info.stream, state.next_version, BUFFERED_PAGE_EVENTS)
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

/// The streams bound to the subject, then the other streams holding its personal fields.
async fn export_streams(core: &Core, subject: &SubjectId) -> Result<VecDeque<ExportStream>, Error> {
    let mut streams: VecDeque<ExportStream> = core
        .subject_streams(subject)
        .await?
        .into_iter()
        .map(|info| ExportStream {
            info,
            fields_only: false,
        })
        .collect();
    for name in core.storage.field_streams(subject).await? {
        if streams.iter().any(|s| s.info.stream.as_str() == name) {
            continue;
        }
        let info = core.stream_info(&StreamName::parse_readable(&name)?).await?;
        streams.push_back(ExportStream {
            info,
            fields_only: true,
        });
    }
    Ok(streams)
}
