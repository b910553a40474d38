//! What can go wrong talking to Stream, in terms the service can map to gRPC statuses.

use std::collections::BTreeMap;

use super::rate_limit::RateLimit;

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
        }
    }

    /// Whether sending the request twice is harmless (the GETs).
    pub fn is_idempotent(self) -> bool {
        matches!(self, Operation::ExportUser | Operation::GetTask | Operation::Download)
    }
}

/// A failed upstream request. Messages never contain the secret, the JWT or signed URLs.
#[derive(Debug, thiserror::Error)]
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

    /// Whether sending the request again is safe and may help: connection failures always
    /// (the request never left); for idempotent requests also 5xx, 408, timeouts and broken
    /// connections. Never 429 (the caller is told when to come back) nor the caller's deadline.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Connect { .. } => true,
            UpstreamError::Api { operation, status, .. } => {
                operation.is_idempotent() && (*status >= 500 || *status == 408)
            }
            UpstreamError::Timeout { operation } | UpstreamError::Transport { operation, .. } => {
                operation.is_idempotent()
            }
            UpstreamError::DeadlineExceeded { .. }
            | UpstreamError::Decode { .. }
            | UpstreamError::TooLarge { .. }
            | UpstreamError::Refused { .. } => false,
        }
    }

    /// Classifies a transport error. The URL is dropped from it: it carries the API key.
    pub(crate) fn from_reqwest(operation: Operation, error: reqwest::Error) -> Self {
        let error = error.without_url();
        if let Some(refused) = find_cause::<super::destination::Refused>(&error) {
            UpstreamError::Refused { operation, detail: refused.to_string() }
        } else if error.is_redirect() {
            UpstreamError::Refused { operation, detail: error_chain(&error) }
        } else if error.is_timeout() {
            UpstreamError::Timeout { operation }
        } else if error.is_connect() {
            UpstreamError::Connect { operation, detail: error_chain(&error) }
        } else {
            UpstreamError::Transport { operation, detail: error_chain(&error) }
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

/// An error and its sources in one line: reqwest's own message says little ("error sending
/// request"); the cause ("connection refused") is in the chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
