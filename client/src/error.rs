//! The client's one error type.

use lethe_wire::Problem;

/// What can go wrong with a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the request: its problem document (RFC 9457) with the stable `code`
    /// (`wrong_expected_version`, `stream_erased`, `legal_hold`, …; `lethe_wire::CODES` lists
    /// them all with their statuses).
    #[error("{} ({}): {}", .0.code, .0.status, .0.detail)]
    Api(Box<Problem>),
    /// No answer: the server could not be reached, or the connection broke, after the retries
    /// the request allows.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer that is not what the API documents (a proxy's error page, say).
    #[error("an answer this client does not understand ({status}): {detail}")]
    Unexpected { status: u16, detail: String },
    /// The base URL or another argument cannot make a request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The stable error code of an [`Error::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api(problem) => Some(&problem.code),
            _ => None,
        }
    }

    /// The problem document of an [`Error::Api`].
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api(problem) => Some(problem),
            _ => None,
        }
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api(problem) => Some(problem.status),
            Error::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// An append's expectation failed (`wrong_expected_version`): read, decide again, retry.
    pub fn is_wrong_expected_version(&self) -> bool {
        self.code() == Some("wrong_expected_version")
    }

    /// The stream was shredded (`stream_erased`) or deleted (`stream_deleted`): it never takes
    /// events again.
    pub fn is_stream_gone(&self) -> bool {
        matches!(self.code(), Some("stream_erased" | "stream_deleted"))
    }
}
