//! What can go wrong talking to Stream, in terms the service can map to gRPC statuses.

use std::{collections::BTreeMap, time::Duration};

use super::rate_limit::RateLimit;
use crate::error_chain::one_line;

/// The upstream endpoint a request was for; names follow Stream's operation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `POST /export_channels`.
    ExportChannels,
    /// `POST /export/users`.
    ExportUsers,
    /// `GET /users/{id}/export`.
    ExportUser,
    /// `GET /tasks/{id}`.
    GetTask,
    /// `GET <result url>`: the download of an export file.
    Download,
    /// `POST /channels`: a page of the channels a filter matches.
    QueryChannels,
}

impl Operation {
    /// Stream's name of the operation.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ExportChannels => "ExportChannels",
            Operation::ExportUsers => "ExportUsers",
            Operation::ExportUser => "ExportUser",
            Operation::GetTask => "GetTask",
            Operation::Download => "DownloadExport",
            Operation::QueryChannels => "QueryChannels",
        }
    }

    /// Whether sending the request twice is harmless (the GETs, and QueryChannels: a POST that
    /// only reads).
    pub fn is_idempotent(self) -> bool {
        matches!(self, Operation::ExportUser | Operation::GetTask | Operation::Download | Operation::QueryChannels)
    }
}

/// What a failed upstream request means, whoever sent it: the one classification behind the
/// client's retries ([`UpstreamError::is_retryable`]), the watch poller's patience
/// ([`ErrorKind::is_temporary`]) and the status a caller sees ([`UpstreamError::to_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Waiting may cure it: Stream's 5xx or 408, a timeout, a refused or broken connection.
    Transient,
    /// A success status whose body is not what the API documents. Asking again at once would
    /// most likely get the same answer (and a submit may have started a task), so it is not
    /// retried; a poller still rides it out within its failure budget.
    BadResponse,
    /// Stream's rate limit (HTTP 429 or Stream code 9): come back when its window resets.
    RateLimited {
        /// Until the window resets, when Stream said so.
        retry_after: Option<Duration>,
    },
    /// The caller's deadline passed before Stream answered.
    DeadlineExceeded,
    /// Stream rejected this service's API key or secret (HTTP 401, codes 2, 5, 40–43): a
    /// deployment problem, not the caller's.
    CredentialsRejected,
    /// Stream rejected the request's content (HTTP 400, code 4).
    InvalidRequest,
    /// What the request names does not exist (HTTP 404).
    NotFound,
    /// Nothing will change by waiting: 403, a redirect, an unexpected status, an answer over
    /// its size cap, a refused download destination.
    Permanent,
}

impl ErrorKind {
    /// Whether waiting (and asking again later) may cure the failure: what a poller rides out.
    pub fn is_temporary(self) -> bool {
        matches!(self, Self::Transient | Self::BadResponse | Self::RateLimited { .. } | Self::DeadlineExceeded)
    }
}

/// A failed upstream request. Messages never contain the secret, the JWT or signed URLs.
#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Stream answered with an error status. `code` is `None` when the body was not a Stream
    /// error document (an edge proxy's plain-text 429, say).
    #[error("{operation:?}: Stream answered HTTP {status}{}: {message}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    Api {
        /// The endpoint.
        operation: Operation,
        /// The HTTP status.
        status: u16,
        /// The Stream error code.
        code: Option<i64>,
        /// Stream's message, or the start of a non-JSON body.
        message: String,
        /// Per-field input errors.
        exception_fields: BTreeMap<String, String>,
        /// The rate-limit headers of the response.
        rate_limit: Option<RateLimit>,
    },
    /// No connection could be made.
    #[error("{operation:?}: cannot connect to Stream: {detail}")]
    Connect {
        /// The endpoint.
        operation: Operation,
        /// What the transport said (without the URL).
        detail: String,
    },
    /// The request or response did not finish in time.
    #[error("{operation:?}: Stream did not answer in time")]
    Timeout {
        /// The endpoint.
        operation: Operation,
    },
    /// The caller's deadline passed before Stream answered.
    #[error("{operation:?}: the caller's deadline passed before Stream answered")]
    DeadlineExceeded {
        /// The endpoint.
        operation: Operation,
    },
    /// The connection failed after the request may have been sent.
    #[error("{operation:?}: the connection to Stream failed: {detail}")]
    Transport {
        /// The endpoint.
        operation: Operation,
        /// What the transport said (without the URL).
        detail: String,
    },
    /// A success status with a body larger than the operation's cap (see `upstream::body`); the
    /// rest of it was not read.
    #[error("{operation:?}: Stream's answer exceeded the {limit}-byte limit")]
    TooLarge {
        /// The endpoint.
        operation: Operation,
        /// The cap, in bytes.
        limit: usize,
    },
    /// The request was not sent, or a redirect not followed, because of where it would go (a
    /// download to a private address or another origin, see `upstream::destination`).
    #[error("{operation:?}: refused: {detail}")]
    Refused {
        /// The endpoint.
        operation: Operation,
        /// Why, naming the host but never the URL.
        detail: String,
    },
    /// A success status with a body that is not what the API documents.
    #[error("{operation:?}: Stream sent an unreadable response (HTTP {status}): {detail}")]
    Decode {
        /// The endpoint.
        operation: Operation,
        /// The HTTP status.
        status: u16,
        /// The parse error.
        detail: String,
    },
}

impl UpstreamError {
    /// The endpoint the failed request was for.
    pub fn operation(&self) -> Operation {
        match self {
            UpstreamError::Api { operation, .. }
            | UpstreamError::Connect { operation, .. }
            | UpstreamError::Timeout { operation }
            | UpstreamError::DeadlineExceeded { operation }
            | UpstreamError::Transport { operation, .. }
            | UpstreamError::Decode { operation, .. }
            | UpstreamError::TooLarge { operation, .. }
            | UpstreamError::Refused { operation, .. } => *operation,
        }
    }

    /// What the failure means; see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            UpstreamError::Api { status, code, rate_limit, .. } => match (*status, *code) {
                (401, _) | (_, Some(2 | 5 | 40..=43)) => ErrorKind::CredentialsRejected,
                (429, _) | (_, Some(9)) => {
                    ErrorKind::RateLimited { retry_after: rate_limit.map(|limit| limit.until_reset()) }
                }
                (400, _) | (_, Some(4)) => ErrorKind::InvalidRequest,
                (404, _) => ErrorKind::NotFound,
                (408 | 500.., _) => ErrorKind::Transient,
                _ => ErrorKind::Permanent,
            },
            UpstreamError::Connect { .. } | UpstreamError::Timeout { .. } | UpstreamError::Transport { .. } => {
                ErrorKind::Transient
            }
            UpstreamError::Decode { .. } => ErrorKind::BadResponse,
            UpstreamError::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            UpstreamError::TooLarge { .. } | UpstreamError::Refused { .. } => ErrorKind::Permanent,
        }
    }

    /// Whether the client should send the same request again at once: a transient failure of
    /// a request that is harmless to repeat (a GET) or that never left (no connection). Never a
    /// rate limit (the caller is told when to come back) nor the caller's deadline.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Transient
            && (self.operation().is_idempotent() || matches!(self, UpstreamError::Connect { .. }))
    }

    /// Classifies a transport error. The URL is dropped from it: it carries the API key.
    pub(crate) fn from_reqwest(operation: Operation, error: reqwest::Error) -> Self {
        let error = error.without_url();
        if let Some(refused) = find_cause::<super::destination::Refused>(&error) {
            UpstreamError::Refused { operation, detail: refused.to_string() }
        } else if error.is_redirect() {
            UpstreamError::Refused { operation, detail: one_line(&error) }
        } else if error.is_timeout() {
            UpstreamError::Timeout { operation }
        } else if error.is_connect() {
            UpstreamError::Connect { operation, detail: one_line(&error) }
        } else {
            UpstreamError::Transport { operation, detail: one_line(&error) }
        }
    }
}

impl UpstreamError {
    /// Classifies an API call's transport error (hyper's, which never carries the URL): a
    /// timeout anywhere in the chain (connecting included, as reqwest counted it), a failure
    /// while `connecting`, or a failed exchange.
    pub(crate) fn from_transport(
        operation: Operation,
        error: &(dyn std::error::Error + 'static),
        connecting: bool,
    ) -> Self {
        if find_cause::<std::io::Error>(error).is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            UpstreamError::Timeout { operation }
        } else if connecting {
            UpstreamError::Connect { operation, detail: one_line(error) }
        } else {
            UpstreamError::Transport { operation, detail: one_line(error) }
        }
    }
}

/// The first error of type `E` in `error`'s chain.
fn find_cause<'a, E: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<E>() {
            return Some(found);
        }
        next = current.source();
    }
    None
}
