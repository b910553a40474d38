//! The one place where failures become gRPC statuses.
//!
//! Every status carries an `ErrorInfo` (domain [`DOMAIN`]) whose reason a client can branch on;
//! upstream failures add the Stream operation, HTTP status and Stream code as metadata.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::stream::{Operation, UpstreamError};

/// `ErrorInfo.domain` of every error this service returns.
pub const DOMAIN: &str = "stream-export";

/// How long to suggest waiting when upstream gives no better hint.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// `ErrorInfo` reasons: stable identifiers a client can branch on.
pub mod reason {
    /// The request failed validation; `BadRequest` lists every problem.
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// Stream rejected the request's content.
    pub const UPSTREAM_INVALID_ARGUMENT: &str = "UPSTREAM_INVALID_ARGUMENT";
    /// The task does not exist upstream.
    pub const TASK_NOT_FOUND: &str = "TASK_NOT_FOUND";
    /// The user does not exist upstream.
    pub const USER_NOT_FOUND: &str = "USER_NOT_FOUND";
    /// Stream answered 404 for something else.
    pub const UPSTREAM_NOT_FOUND: &str = "UPSTREAM_NOT_FOUND";
    /// Stream refused the operation for this app (403).
    pub const UPSTREAM_PERMISSION_DENIED: &str = "UPSTREAM_PERMISSION_DENIED";
    /// Stream's rate limit for the route is exhausted; `RetryInfo` says until when.
    pub const UPSTREAM_RATE_LIMITED: &str = "UPSTREAM_RATE_LIMITED";
    /// Stream failed (5xx or its own timeout); retrying later may work.
    pub const UPSTREAM_UNAVAILABLE: &str = "UPSTREAM_UNAVAILABLE";
    /// Stream rejected this service's API key or secret: a deployment problem, not the caller's.
    pub const UPSTREAM_CREDENTIALS_REJECTED: &str = "UPSTREAM_CREDENTIALS_REJECTED";
    /// The caller's deadline passed before Stream answered.
    pub const DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
    /// Stream did not answer within the upstream timeout.
    pub const UPSTREAM_TIMEOUT: &str = "UPSTREAM_TIMEOUT";
    /// No connection to Stream could be opened.
    pub const UPSTREAM_UNREACHABLE: &str = "UPSTREAM_UNREACHABLE";
    /// The connection to Stream broke mid-request.
    pub const UPSTREAM_CONNECTION_FAILED: &str = "UPSTREAM_CONNECTION_FAILED";
    /// Stream's answer could not be read.
    pub const UPSTREAM_BAD_RESPONSE: &str = "UPSTREAM_BAD_RESPONSE";
    /// Stream answered with a status this service does not expect.
    pub const UPSTREAM_UNEXPECTED_STATUS: &str = "UPSTREAM_UNEXPECTED_STATUS";
    /// The user has more than 10,000 messages: use `ExportUsers` instead.
    pub const USER_EXPORT_TOO_LARGE: &str = "USER_EXPORT_TOO_LARGE";
    /// The server ended a live watch (shutdown, maximum lifetime): call `WatchTask` again.
    pub const WATCH_INTERRUPTED: &str = "WATCH_INTERRUPTED";
    /// Upstream kept failing for longer than the watch failure budget.
    pub const UPSTREAM_FAILING: &str = "UPSTREAM_FAILING";
    /// The replica has as many watch streams open as it allows.
    pub const WATCH_LIMIT_REACHED: &str = "WATCH_LIMIT_REACHED";
    /// No valid bearer token (caller authentication is on).
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// A `request_id` was reused for a different request.
    pub const REQUEST_ID_REUSED: &str = "REQUEST_ID_REUSED";
    /// The replica is handling as many calls as it allows: try again (another replica).
    pub const OVERLOADED: &str = "OVERLOADED";
    /// The replica is shutting down: try another one.
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    /// ReadExport: the task has no file (it is not completed).
    pub const TASK_NOT_COMPLETED: &str = "TASK_NOT_COMPLETED";
    /// ReadExport: the download of the file failed; resume at `next_index`.
    pub const DOWNLOAD_FAILED: &str = "DOWNLOAD_FAILED";
    /// ReadExport: the file is not a readable export (or exceeds a limit); `next_index` says
    /// where it broke.
    pub const EXPORT_UNREADABLE: &str = "EXPORT_UNREADABLE";
    /// ReadExport: the server ended the stream (idle client, maximum lifetime); resume at
    /// `next_index`.
    pub const READ_INTERRUPTED: &str = "READ_INTERRUPTED";
    /// ReadExport: reading stopped abnormally (a server fault); `next_index` says where.
    pub const READ_ABORTED: &str = "READ_ABORTED";
    /// The replica has as many ReadExport streams open as it allows.
    pub const READ_LIMIT_REACHED: &str = "READ_LIMIT_REACHED";
}

/// FAILED_PRECONDITION when ReadExport asks for a task that has no file.
pub fn task_not_completed(state: &str) -> Status {
    let mut details = ErrorDetails::with_error_info(
        reason::TASK_NOT_COMPLETED,
        DOMAIN,
        HashMap::from([("upstream_status".to_owned(), state.to_owned())]),
    );
    details.add_precondition_failure_violation(
        "TASK_STATE",
        "task",
        format!("the task is {state}; only a completed task has a file (watch it with WatchTask)"),
    );
    Status::with_error_details(Code::FailedPrecondition, format!("the task is {state}, not completed"), details)
}

/// UNAVAILABLE when the download of an export breaks; the client resumes at `next_index`.
pub fn download_failed(detail: &str, next_index: u64) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY));
    details.set_error_info(reason::DOWNLOAD_FAILED, DOMAIN, next_index_metadata(next_index));
    let message = format!("the export download failed before record {next_index}: {detail}");
    Status::with_error_details(Code::Unavailable, message, details)
}

/// DATA_LOSS when an export file cannot be parsed; `next_index` is where it broke.
pub fn export_unreadable(detail: &str, next_index: u64) -> Status {
    let details = ErrorDetails::with_error_info(reason::EXPORT_UNREADABLE, DOMAIN, next_index_metadata(next_index));
    let message = format!("the export file cannot be read at record {next_index}: {detail}");
    Status::with_error_details(Code::DataLoss, message, details)
}

/// UNAVAILABLE when the server ends a ReadExport stream itself (the client stopped reading,
/// or the stream reached its maximum lifetime); the client resumes at `next_index`.
pub fn read_interrupted(why: &str, next_index: u64) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RESUME_DELAY));
    details.set_error_info(reason::READ_INTERRUPTED, DOMAIN, next_index_metadata(next_index));
    let message = format!("the export stream was ended before record {next_index}: {why}; resume there");
    Status::with_error_details(Code::Unavailable, message, details)
}

/// UNAVAILABLE `SHUTTING_DOWN` for a ReadExport stream still open when the drain ends; the
/// client resumes at `next_index` on another replica.
pub fn read_shutting_down(next_index: u64) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RESUME_DELAY));
    details.set_error_info(reason::SHUTTING_DOWN, DOMAIN, next_index_metadata(next_index));
    let message = format!("the server is shutting down; resume the export at record {next_index}");
    Status::with_error_details(Code::Unavailable, message, details)
}

/// INTERNAL when reading an export stopped abnormally: never OK, so that a truncated export
/// cannot look complete.
pub fn read_aborted(next_index: u64) -> Status {
    let details = ErrorDetails::with_error_info(reason::READ_ABORTED, DOMAIN, next_index_metadata(next_index));
    let message = format!("reading the export stopped abnormally before record {next_index}");
    Status::with_error_details(Code::Internal, message, details)
}

/// RESOURCE_EXHAUSTED, at once, when the replica has as many ReadExport streams as it allows.
pub fn read_limit_reached(limit: usize) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY));
    details.set_error_info(
        reason::READ_LIMIT_REACHED,
        DOMAIN,
        HashMap::from([("limit".to_owned(), limit.to_string())]),
    );
    details.add_quota_failure_violation(
        "stream-export:read-streams",
        format!("at most {limit} concurrent ReadExport streams"),
    );
    Status::with_error_details(Code::ResourceExhausted, format!("too many ReadExport streams (limit {limit})"), details)
}

fn next_index_metadata(next_index: u64) -> HashMap<String, String> {
    HashMap::from([("next_index".to_owned(), next_index.to_string())])
}

/// UNAUTHENTICATED when caller authentication is on and the token is missing or unknown.
pub fn unauthenticated(had_header: bool) -> Status {
    let message = if had_header {
        "the bearer token is not valid"
    } else {
        "this service requires `authorization: Bearer <token>`"
    };
    let details = ErrorDetails::with_error_info(reason::UNAUTHENTICATED, DOMAIN, HashMap::new());
    Status::with_error_details(Code::Unauthenticated, message, details)
}

/// INVALID_ARGUMENT when a `request_id` comes back with a different request.
pub fn request_id_reused() -> Status {
    let mut details = ErrorDetails::with_bad_request_violation(
        "request_id",
        "was already used for a different request; use a new request_id for a new export",
    );
    details.set_error_info(reason::REQUEST_ID_REUSED, DOMAIN, HashMap::new());
    Status::with_error_details(Code::InvalidArgument, "request_id reused for a different request", details)
}

/// RESOURCE_EXHAUSTED, at once, when the replica is at its concurrency limit (load shedding
/// instead of an unbounded queue).
pub fn overloaded(limit: usize) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(200)));
    details.set_error_info(reason::OVERLOADED, DOMAIN, HashMap::from([("limit".to_owned(), limit.to_string())]));
    details.add_quota_failure_violation("stream-export:concurrent-calls", format!("at most {limit} calls at once"));
    Status::with_error_details(Code::ResourceExhausted, format!("too many calls in flight (limit {limit})"), details)
}

/// UNAVAILABLE for calls that arrive while the replica drains; a mesh retries them elsewhere.
pub fn shutting_down() -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RESUME_DELAY));
    details.set_error_info(reason::SHUTTING_DOWN, DOMAIN, HashMap::new());
    Status::with_error_details(Code::Unavailable, "the server is shutting down; try again", details)
}

/// How soon an interrupted watcher should come back: at once, to another replica if this
/// one is going away.
const RESUME_DELAY: Duration = Duration::from_millis(100);

/// UNAVAILABLE for a watch the server ended; the client resumes by calling `WatchTask` again
/// and gets a fresh snapshot.
pub fn watch_interrupted(why: &str) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RESUME_DELAY));
    details.set_error_info(reason::WATCH_INTERRUPTED, DOMAIN, HashMap::from([("cause".to_owned(), why.to_owned())]));
    Status::with_error_details(Code::Unavailable, format!("watch interrupted: {why}; call WatchTask again"), details)
}

/// UNAVAILABLE for a watch whose upstream kept failing past the failure budget.
pub fn watch_upstream_failing(last_error: &UpstreamError, budget: Duration) -> Status {
    let last = upstream_status(last_error);
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY.max(budget / 10)));
    let mut metadata = last.get_error_details().error_info().map(|info| info.metadata.clone()).unwrap_or_default();
    metadata.insert("failing_for_seconds".into(), budget.as_secs().to_string());
    details.set_error_info(reason::UPSTREAM_FAILING, DOMAIN, metadata);
    let message = format!("Stream kept failing for {}s: {}", budget.as_secs(), last.message());
    Status::with_error_details(Code::Unavailable, message, details)
}

/// RESOURCE_EXHAUSTED when the replica has as many watch streams as it allows.
pub fn watch_limit_reached(limit: usize) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY));
    details.set_error_info(
        reason::WATCH_LIMIT_REACHED,
        DOMAIN,
        HashMap::from([("limit".to_owned(), limit.to_string())]),
    );
    details.add_quota_failure_violation(
        "stream-export:watch-streams",
        format!("at most {limit} concurrent watch streams"),
    );
    Status::with_error_details(Code::ResourceExhausted, format!("too many watch streams (limit {limit})"), details)
}

/// INVALID_ARGUMENT with one `BadRequest` violation per problem.
pub fn invalid_request(violations: Vec<FieldViolation>) -> Status {
    let summary = match violations.as_slice() {
        [only] => format!("invalid request: {}: {}", only.field, only.description),
        many => format!("invalid request: {} problems, see the BadRequest details", many.len()),
    };
    let mut details = ErrorDetails::with_bad_request(violations);
    details.set_error_info(reason::INVALID_REQUEST, DOMAIN, HashMap::new());
    Status::with_error_details(Code::InvalidArgument, summary, details)
}

/// Maps an upstream failure to the status the caller sees.
pub fn upstream_status(error: &UpstreamError) -> Status {
    let operation = error.operation();
    let mut metadata = HashMap::from([("operation".to_owned(), operation.name().to_owned())]);
    let mut details = ErrorDetails::new();

    let (code, reason, message) = match error {
        UpstreamError::Api { status, code: stream_code, message, exception_fields, rate_limit, .. } => {
            metadata.insert("upstream_http_status".into(), status.to_string());
            if let Some(stream_code) = stream_code {
                metadata.insert("stream_code".into(), stream_code.to_string());
            }
            match (*status, *stream_code) {
                (401, _) | (_, Some(2 | 5 | 40..=43)) => (
                    Code::Internal,
                    reason::UPSTREAM_CREDENTIALS_REJECTED,
                    "Stream rejected this service's credentials: check STREAM_API_KEY and STREAM_API_SECRET".to_owned(),
                ),
                (429, _) | (_, Some(9)) => {
                    let delay = rate_limit
                        .map(|limit| limit.until_reset())
                        .filter(|delay| !delay.is_zero())
                        .unwrap_or(DEFAULT_RETRY_DELAY);
                    details.set_retry_info(Some(delay));
                    let limit = rate_limit.map(|l| format!("{} requests per minute", l.limit));
                    details.add_quota_failure_violation(
                        format!("stream:{}", operation.name()),
                        format!("Stream's rate limit ({}) is exhausted", limit.as_deref().unwrap_or("unknown")),
                    );
                    (
                        Code::ResourceExhausted,
                        reason::UPSTREAM_RATE_LIMITED,
                        format!("Stream rate limit reached: {message}"),
                    )
                }
                (400, _) if operation == Operation::ExportUser && mentions_message_limit(message) => (
                    Code::FailedPrecondition,
                    reason::USER_EXPORT_TOO_LARGE,
                    "the user has more than 10,000 messages, too many for a synchronous export; use ExportUsers"
                        .to_owned(),
                ),
                (400, _) | (_, Some(4)) => {
                    for (field, description) in exception_fields {
                        details.add_bad_request_violation(field.clone(), description.clone());
                    }
                    (
                        Code::InvalidArgument,
                        reason::UPSTREAM_INVALID_ARGUMENT,
                        format!("Stream rejected the request: {message}"),
                    )
                }
                (404, _) => match operation {
                    Operation::GetTask => (Code::NotFound, reason::TASK_NOT_FOUND, "task not found".to_owned()),
                    Operation::ExportUser => (Code::NotFound, reason::USER_NOT_FOUND, "user not found".to_owned()),
                    _ => (Code::NotFound, reason::UPSTREAM_NOT_FOUND, format!("Stream: {message}")),
                },
                (403, _) => (
                    Code::PermissionDenied,
                    reason::UPSTREAM_PERMISSION_DENIED,
                    format!("Stream refused the operation: {message}"),
                ),
                (408 | 500.., _) => {
                    details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
                    (
                        Code::Unavailable,
                        reason::UPSTREAM_UNAVAILABLE,
                        format!("Stream failed (HTTP {status}): {message}"),
                    )
                }
                _ => (
                    Code::Internal,
                    reason::UPSTREAM_UNEXPECTED_STATUS,
                    format!("Stream answered HTTP {status}: {message}"),
                ),
            }
        }
        UpstreamError::DeadlineExceeded { .. } => (
            Code::DeadlineExceeded,
            reason::DEADLINE_EXCEEDED,
            "the call's deadline passed before Stream answered".to_owned(),
        ),
        UpstreamError::Timeout { .. } => {
            details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            (Code::Unavailable, reason::UPSTREAM_TIMEOUT, "Stream did not answer in time".to_owned())
        }
        UpstreamError::Connect { detail, .. } => {
            details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            (Code::Unavailable, reason::UPSTREAM_UNREACHABLE, format!("cannot connect to Stream: {detail}"))
        }
        UpstreamError::Transport { detail, .. } => {
            details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            (
                Code::Unavailable,
                reason::UPSTREAM_CONNECTION_FAILED,
                format!("the connection to Stream failed: {detail}"),
            )
        }
        UpstreamError::Decode { status, detail, .. } => {
            metadata.insert("upstream_http_status".into(), status.to_string());
            (Code::Internal, reason::UPSTREAM_BAD_RESPONSE, format!("Stream sent an unreadable response: {detail}"))
        }
    };
    details.set_error_info(reason, DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// Whether a Stream error message is the one for a user over the synchronous export limit.
/// Stream does not document a dedicated code for it, so the message is the only signal.
fn mentions_message_limit(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["10000", "10,000", "10k"].iter().any(|limit| message.contains(limit))
}
