//! A live subscription to the log over Server-Sent Events, reconnecting where it left off.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use lethe_wire::EventOut;
use tokio::sync::mpsc;

use crate::client::{BACKOFF_MAX, error_of, jitter};
use crate::{Client, Error, LogFilter};

/// Events read ahead of the consumer.
const BUFFERED_EVENTS: usize = 256;
/// The first pause before reconnecting; doubled while reconnecting keeps failing.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);

/// The stream [`Client::subscribe`] returns: events in log order, each once. Dropping it closes
/// the connection.
pub struct Subscription {
    events: mpsc::Receiver<Result<EventOut, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    pub(crate) fn start(client: Client, from: u64, filter: LogFilter) -> Subscription {
        let (tx, events) = mpsc::channel(BUFFERED_EVENTS);
        let task = tokio::spawn(run(client, from, filter, tx));
        Subscription { events, task }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Subscription {
    type Item = Result<EventOut, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Why one connection ended.
enum Ended {
    /// Reconnect (after a pause) from the last position received.
    Reconnect,
    /// The consumer is gone, or the server refused the subscription itself.
    Stop,
}

async fn run(client: Client, from: u64, filter: LogFilter, tx: mpsc::Sender<Result<EventOut, Error>>) {
    // The last position received: a reconnect resumes after it (`from` until there is one).
    let mut last: Option<u64> = None;
    let mut pause = RECONNECT_FIRST;
    loop {
        match connect(&client, from, &filter, last, &tx).await {
            Ok((ended, received)) => {
                if received.is_some() {
                    last = received;
                    pause = RECONNECT_FIRST;
                }
                if let Ended::Stop = ended {
                    return;
                }
            }
            Err(e) => {
                // The server refused the request itself: nothing a reconnect would change.
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(jitter(pause)).await;
        pause = (pause * 2).min(BACKOFF_MAX);
    }
}

/// One connection: reads events until it ends. Returns how it ended and the last position it
/// received; `Err` only for an answer that refuses the subscription.
async fn connect(
    client: &Client,
    from: u64,
    filter: &LogFilter,
    last: Option<u64>,
    tx: &mpsc::Sender<Result<EventOut, Error>>,
) -> Result<(Ended, Option<u64>), Error> {
    let mut query = filter.query();
    query.push(("from", from.to_string()));
    let mut request = client
        .streaming_request("/subscribe")
        .query(&query)
        .header(reqwest::header::ACCEPT, "text/event-stream");
    if let Some(last) = last {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(_) => return Ok((Ended::Reconnect, None)),
    };
    let status = response.status();
    if !status.is_success() {
        let error = error_of(response).await;
        // Overloaded, unavailable or restarting: try again. Anything else is for the caller.
        return if status.is_server_error() || status == reqwest::StatusCode::REQUEST_TIMEOUT {
            Ok((Ended::Reconnect, None))
        } else {
            Err(error)
        };
    }
    let mut received = None;
    let mut body = response.bytes_stream();
    let mut parser = SseParser::default();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return Ok((Ended::Reconnect, received));
        };
        for message in parser.push(&chunk) {
            if message.event.as_deref() == Some("error") {
                // The server ends the stream after a failure of its own; resume after `received`.
                return Ok((Ended::Reconnect, received));
            }
            let event: EventOut = match serde_json::from_str(&message.data) {
                Ok(event) => event,
                Err(e) => {
                    let _ = tx
                        .send(Err(Error::Unexpected {
                            status: 200,
                            detail: format!("a subscription event that is not an Event: {e}"),
                        }))
                        .await;
                    return Ok((Ended::Stop, received));
                }
            };
            received = Some(
                message
                    .id
                    .and_then(|id| id.trim().parse().ok())
                    .unwrap_or(event.position),
            );
            if tx.send(Ok(event)).await.is_err() {
                return Ok((Ended::Stop, received));
            }
        }
    }
    Ok((Ended::Reconnect, received))
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Message {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

/// The SSE line format (WHATWG HTML, "Server-sent events"), fed chunk by chunk.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    current: Message,
    has_data: bool,
}

impl SseParser {
    /// The messages completed by `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Message> {
        let mut done = Vec::new();
        for &byte in chunk {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if self.has_data {
                    done.push(std::mem::take(&mut self.current));
                } else {
                    self.current = Message::default();
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment: keep-alive
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = Some(value.to_owned()),
                _ => {}
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_anywhere_are_put_together() {
        let text = b": keep-alive\n\nid: 7\ndata: {\"a\":\ndata: 1}\n\r\nevent: error\ndata: storage_unavailable\n\n";
        for split in 0..text.len() {
            let mut parser = SseParser::default();
            let mut messages = parser.push(&text[..split]);
            messages.extend(parser.push(&text[split..]));
            assert_eq!(
                messages,
                vec![
                    Message {
                        event: None,
                        id: Some("7".into()),
                        data: "{\"a\":\n1}".into()
                    },
                    Message {
                        event: Some("error".into()),
                        id: None,
                        data: "storage_unavailable".into()
                    },
                ],
                "split at {split}"
            );
        }
    }
}
