//! Streams and the log: appends, reads, catch-up paging and live subscriptions.

use futures::Stream;
use lethe_wire::{
    AppendRequest, AppendResponse, DeleteStreamRequest, DirectionWire, ErasureResponse, EventIn, EventOut,
    ExpectedVersionWire, LogQuery, LogResponse, MultiAppendRequest, MultiAppendResponse, StreamAppendIn, StreamQuery,
    StreamResponse, limits::READ_PAGE_EVENTS_MAX,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::client::{Repeat, segment};
use crate::{Client, Error, Subscription};

/// A new event with a fresh id, so that repeating its append after a lost answer is recognised
/// by the server instead of storing it twice.
///
/// ```
/// let event = lethe_client::event("UserRegistered", serde_json::json!({"user_id": "456"}));
/// assert!(event.id.is_some());
/// ```
pub fn event(event_type: impl Into<String>, data: Value) -> EventIn {
    EventIn {
        id: Some(Uuid::new_v4()),
        event_type: event_type.into(),
        data,
        metadata: None,
    }
}

/// Gives every event without an id one, before the first attempt.
fn with_ids(events: &mut [EventIn]) {
    for event in events {
        event.id.get_or_insert_with(Uuid::new_v4);
    }
}

/// Where an append landed, and whether the server had already stored it (a repeated append:
/// `200` instead of `201`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended<T> {
    pub result: T,
    pub already_stored: bool,
}

/// What a log read or subscription keeps (both members empty: everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only streams whose name starts with this.
    pub stream_prefix: Option<String>,
    /// Only these event types.
    pub types: Vec<String>,
}

impl LogFilter {
    /// `types` as the API takes it: comma-separated, absent for all.
    fn types_param(&self) -> Option<String> {
        (!self.types.is_empty()).then(|| self.types.join(","))
    }

    /// The filter as query parameters (`/subscribe`).
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let prefix = self.stream_prefix.clone().map(|p| ("stream_prefix", p));
        let types = self.types_param().map(|t| ("types", t));
        prefix.into_iter().chain(types).collect()
    }
}

impl Client {
    /// Appends `events` to `stream` if it is at `expected` (`POST /streams/{stream}`), binding
    /// a new stream to `subject` when one is given. Events without an id get one first.
    ///
    /// A conflict is [`Error::is_wrong_expected_version`]; appending to a shredded stream is
    /// [`Error::is_stream_gone`].
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersionWire,
        subject: Option<&str>,
        mut events: Vec<EventIn>,
    ) -> Result<Appended<AppendResponse>, Error> {
        with_ids(&mut events);
        let body = AppendRequest {
            expected_version: Some(expected),
            subject: subject.map(str::to_owned),
            events,
        };
        let path = format!("/streams/{}", segment(stream));
        let (status, result) = self.send_json(Method::POST, &path, &body, Repeat::Safe).await?;
        Ok(Appended {
            result,
            already_stored: status == StatusCode::OK,
        })
    }

    /// Appends to several streams atomically (`POST /streams`): every stream is written or
    /// none is, and their events get contiguous positions.
    pub async fn append_multi(&self, mut appends: Vec<StreamAppendIn>) -> Result<Appended<MultiAppendResponse>, Error> {
        for append in &mut appends {
            with_ids(&mut append.events);
        }
        let body = MultiAppendRequest { appends };
        let (status, result) = self.send_json(Method::POST, "/streams", &body, Repeat::Safe).await?;
        Ok(Appended {
            result,
            already_stored: status == StatusCode::OK,
        })
    }

    /// One page of a stream (`GET /streams/{stream}`).
    pub async fn read_stream(&self, stream: &str, query: &StreamQuery) -> Result<StreamResponse, Error> {
        self.get(&format!("/streams/{}", segment(stream)), query).await
    }

    /// Every event of a stream from version `from` on, page by page, as it is now.
    pub fn stream_events(
        &self,
        stream: &str,
        from: u64,
    ) -> impl Stream<Item = Result<EventOut, Error>> + Send + 'static {
        let client = self.clone();
        let stream = stream.to_owned();
        pages(Some(from), move |from| {
            let client = client.clone();
            let stream = stream.clone();
            async move {
                let query = StreamQuery {
                    from,
                    limit: Some(READ_PAGE_EVENTS_MAX),
                    direction: Some(DirectionWire::Forward),
                };
                let page = client.read_stream(&stream, &query).await?;
                let next = (page.events.len() == READ_PAGE_EVENTS_MAX)
                    .then(|| page.events.last().map(|e| e.version + 1))
                    .flatten();
                Ok((page.events, next))
            }
        })
    }

    /// One page of the global log (`GET /log`).
    pub async fn read_log(&self, query: &LogQuery) -> Result<LogResponse, Error> {
        self.get("/log", query).await
    }

    /// The log from position `from` (1: the beginning) up to its head as it is when the reading
    /// reaches it, page by page: a catch-up. [`Client::subscribe`] goes on live.
    pub fn log(&self, from: u64, filter: LogFilter) -> impl Stream<Item = Result<EventOut, Error>> + Send + 'static {
        let client = self.clone();
        pages(Some(from), move |from| {
            let client = client.clone();
            let filter = filter.clone();
            async move {
                let query = LogQuery {
                    from,
                    limit: Some(READ_PAGE_EVENTS_MAX),
                    stream_prefix: filter.stream_prefix.clone(),
                    types: filter.types_param(),
                };
                let page = client.read_log(&query).await?;
                let next = (page.next <= page.head).then_some(page.next);
                Ok((page.events, next))
            }
        })
    }

    /// The log from position `from` on, live (`GET /subscribe`, Server-Sent Events): what is
    /// stored, then each event as it is committed. When the connection drops or the server
    /// restarts, it reconnects with `Last-Event-ID` (the last position it received, filtered
    /// out or not), so no event is skipped or repeated. It ends only with an error the server
    /// gives for the request itself (a bad filter, a revoked token), or when dropped.
    pub fn subscribe(&self, from: u64, filter: LogFilter) -> Subscription {
        Subscription::start(self.clone(), from, filter)
    }

    /// Shreds one stream (`DELETE /streams/{stream}`): its key is destroyed and a tombstone
    /// written. A stream already shredded answers [`Error::is_stream_gone`] — also when this
    /// call was repeated after its first answer was lost.
    pub async fn delete_stream(&self, stream: &str, request: &DeleteStreamRequest) -> Result<ErasureResponse, Error> {
        let path = format!("/streams/{}", segment(stream));
        let (_, erasure) = self.send_json(Method::DELETE, &path, request, Repeat::Safe).await?;
        Ok(erasure)
    }
}

/// A stream of items read page by page: `read(cursor)` returns a page and the next cursor
/// (`None`: that was the last page).
fn pages<C, F, Fut>(first: Option<C>, read: F) -> impl Stream<Item = Result<EventOut, Error>> + Send + 'static
where
    C: Send + 'static,
    F: Fn(Option<C>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(Vec<EventOut>, Option<C>), Error>> + Send,
{
    use futures::StreamExt;
    struct State<C, F> {
        cursor: Option<Option<C>>,
        read: F,
    }
    futures::stream::unfold(
        State {
            cursor: Some(first),
            read,
        },
        |mut state| async move {
            let cursor = state.cursor.take()?;
            match (state.read)(cursor).await {
                Ok((events, next)) => {
                    state.cursor = next.map(Some);
                    Some((futures::stream::iter(events.into_iter().map(Ok)).left_stream(), state))
                }
                // The error ends the stream: `cursor` stays `None`.
                Err(e) => Some((futures::stream::iter([Err(e)]).right_stream(), state)),
            }
        },
    )
    .flatten()
}
