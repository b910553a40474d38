//! The one place where failures become gRPC statuses.
//!
//! Every status carries an `ErrorInfo` (domain [`DOMAIN`]) whose reason a client can branch on;
//! upstream failures add the Stream operation, HTTP status and Stream code as metadata.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::upstream::{Operation, UpstreamError};

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
    /// Stream answered with a redirect, which API calls never follow (it would carry the
    /// server token elsewhere): the base URL is wrong or something in front of Stream is.
    pub const UPSTREAM_REDIRECTED: &str = "UPSTREAM_REDIRECTED";
    /// Stream's answer was larger than this service reads for the operation.
    pub const UPSTREAM_RESPONSE_TOO_LARGE: &str = "UPSTREAM_RESPONSE_TOO_LARGE";
    /// ReadExport: the result URL (or a redirect of it) points where downloads may not go: a
    /// private or link-local address, another origin.
    pub const DOWNLOAD_REFUSED: &str = "DOWNLOAD_REFUSED";
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
    build(Code::FailedPrecondition, format!("the task is {state}, not completed"), details)
}

/// UNAVAILABLE when the download of an export breaks; the client resumes at `next_index`.
pub fn download_failed(detail: &str, next_index: u64) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY));
    details.set_error_info(reason::DOWNLOAD_FAILED, DOMAIN, next_index_metadata(next_index));
    let message = format!("the export download failed before record {next_index}: {detail}");
    build(Code::Unavailable, message, details)
}

/// The status of a ReadExport whose download could not start: FAILED_PRECONDITION
/// `DOWNLOAD_REFUSED` when the destination is refused (retrying will not help), otherwise
/// UNAVAILABLE `DOWNLOAD_FAILED` to resume at `next_index`.
pub fn download_not_started(error: &UpstreamError, next_index: u64) -> Status {
    match error {
        UpstreamError::Refused { .. } => upstream_status(error),
        _ => download_failed(&error.to_string(), next_index),
    }
}

/// DATA_LOSS when an export file cannot be parsed; `next_index` is where it broke.
pub fn export_unreadable(detail: &str, next_index: u64) -> Status {
    let details = ErrorDetails::with_error_info(reason::EXPORT_UNREADABLE, DOMAIN, next_index_metadata(next_index));
    let message = format!("the export file cannot be read at record {next_index}: {detail}");
    build(Code::DataLoss, message, details)
}

/// UNAVAILABLE when the server ends a ReadExport stream itself (the client stopped reading,
/// or the stream reached its maximum lifetime); the client resumes at `next_index`.
pub fn read_interrupted(why: &str, next_index: u64) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RESUME_DELAY));
    details.set_error_info(reason::READ_INTERRUPTED, DOMAIN, next_index_metadata(next_index));
    let message = format!("the export stream was ended before record {next_index}: {why}; resume there");
    build(Code::Unavailable, message, details)
}

/// UNAVAILABLE `SHUTTING_DOWN` for a ReadExport stream still open when the drain ends; the
/// client resumes at `next_index` on another replica.
pub fn read_shutting_down(next_index: u64) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RESUME_DELAY));
    details.set_error_info(reason::SHUTTING_DOWN, DOMAIN, next_index_metadata(next_index));
    let message = format!("the server is shutting down; resume the export at record {next_index}");
    build(Code::Unavailable, message, details)
}

/// INTERNAL when reading an export stopped abnormally: never OK, so that a truncated export
/// cannot look complete.
pub fn read_aborted(next_index: u64) -> Status {
    let details = ErrorDetails::with_error_info(reason::READ_ABORTED, DOMAIN, next_index_metadata(next_index));
    let message = format!("reading the export stopped abnormally before record {next_index}");
    build(Code::Internal, message, details)
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
    build(Code::ResourceExhausted, format!("too many ReadExport streams (limit {limit})"), details)
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
    build(Code::Unauthenticated, message, details)
}

/// INVALID_ARGUMENT when a `request_id` comes back with a different request.
pub fn request_id_reused() -> Status {
    let mut details = ErrorDetails::with_bad_request_violation(
        "request_id",
        "was already used for a different request; use a new request_id for a new export",
    );
    details.set_error_info(reason::REQUEST_ID_REUSED, DOMAIN, HashMap::new());
    build(Code::InvalidArgument, "request_id reused for a different request", details)
}

/// RESOURCE_EXHAUSTED, at once, when the replica is at its concurrency limit (load shedding
/// instead of an unbounded queue).
pub fn overloaded(limit: usize) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(200)));
    details.set_error_info(reason::OVERLOADED, DOMAIN, HashMap::from([("limit".to_owned(), limit.to_string())]));
    details.add_quota_failure_violation("stream-export:concurrent-calls", format!("at most {limit} calls at once"));
    build(Code::ResourceExhausted, format!("too many calls in flight (limit {limit})"), details)
}

/// UNAVAILABLE for calls that arrive while the replica drains; a mesh retries them elsewhere.
pub fn shutting_down() -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RESUME_DELAY));
    details.set_error_info(reason::SHUTTING_DOWN, DOMAIN, HashMap::new());
    build(Code::Unavailable, "the server is shutting down; try again", details)
}

/// How soon an interrupted watcher should come back: at once, to another replica if this
/// one is going away.
const RESUME_DELAY: Duration = Duration::from_millis(100);

/// UNAVAILABLE for a watch the server ended; the client resumes by calling `WatchTask` again
/// and gets a fresh snapshot.
pub fn watch_interrupted(why: &str) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RESUME_DELAY));
    details.set_error_info(reason::WATCH_INTERRUPTED, DOMAIN, HashMap::from([("cause".to_owned(), why.to_owned())]));
    build(Code::Unavailable, format!("watch interrupted: {why}; call WatchTask again"), details)
}

/// UNAVAILABLE for a watch whose upstream kept failing past the failure budget.
pub fn watch_upstream_failing(last_error: &UpstreamError, budget: Duration) -> Status {
    let last = upstream_status(last_error);
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY.max(budget / 10)));
    let mut metadata = last.get_error_details().error_info().map(|info| info.metadata.clone()).unwrap_or_default();
    metadata.insert("failing_for_seconds".into(), budget.as_secs().to_string());
    details.set_error_info(reason::UPSTREAM_FAILING, DOMAIN, metadata);
    let message = format!("Stream kept failing for {}s: {}", budget.as_secs(), last.message());
    build(Code::Unavailable, message, details)
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
    build(Code::ResourceExhausted, format!("too many watch streams (limit {limit})"), details)
}

/// INVALID_ARGUMENT with one `BadRequest` violation per problem.
pub fn invalid_request(violations: Vec<FieldViolation>) -> Status {
    let summary = match violations.as_slice() {
        [only] => format!("invalid request: {}: {}", only.field, only.description),
        many => format!("invalid request: {} problems, see the BadRequest details", many.len()),
    };
    let mut details = ErrorDetails::with_bad_request(violations);
    details.set_error_info(reason::INVALID_REQUEST, DOMAIN, HashMap::new());
    build(Code::InvalidArgument, summary, details)
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
                (300..=399, _) => (
                    Code::Internal,
                    reason::UPSTREAM_REDIRECTED,
                    format!(
                        "Stream answered with a redirect (HTTP {status}), which is not followed: check the upstream base URL"
                    ),
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
        UpstreamError::TooLarge { limit, .. } => {
            metadata.insert("limit_bytes".into(), limit.to_string());
            if operation == Operation::ExportUser {
                (
                    Code::FailedPrecondition,
                    reason::USER_EXPORT_TOO_LARGE,
                    format!(
                        "the user's export is larger than the {limit} bytes a synchronous export may be; use ExportUsers"
                    ),
                )
            } else {
                (
                    Code::Internal,
                    reason::UPSTREAM_RESPONSE_TOO_LARGE,
                    format!("Stream's answer was larger than the {limit} bytes read for {}", operation.name()),
                )
            }
        }
        UpstreamError::Refused { detail, .. } => {
            (Code::FailedPrecondition, reason::DOWNLOAD_REFUSED, format!("the export download was refused: {detail}"))
        }
        UpstreamError::Decode { status, detail, .. } => {
            metadata.insert("upstream_http_status".into(), status.to_string());
            (Code::Internal, reason::UPSTREAM_BAD_RESPONSE, format!("Stream sent an unreadable response: {detail}"))
        }
    };
    details.set_error_info(reason, DOMAIN, metadata);
    build(code, message, details)
}

/// Whether a Stream error message is the one for a user over the synchronous export limit.
/// Stream does not document a dedicated code for it, so the message is the only signal.
fn mentions_message_limit(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["10000", "10,000", "10k"].iter().any(|limit| message.contains(limit))
}

/// Limits that keep a whole status inside the 8 KiB of metadata that common gRPC clients
/// accept (grpc-core's Python, Ruby and C++ clients, grpc-java, grpc-go): the status goes out as
/// trailers, `grpc-message` percent-encoded (up to 3 bytes per byte) and `grpc-status-details-bin`
/// base64-encoded (4 bytes per 3). Past that limit a client sees RESOURCE_EXHAUSTED instead of
/// the real error, so upstream text (a message, thousands of field violations) is trimmed here.
pub mod size {
    /// Most bytes of a status message: at most 1.5 KiB once percent-encoded.
    pub const MAX_MESSAGE_BYTES: usize = 512;
    /// Most bytes of the encoded details (`google.rpc.Status`): at most 5.4 KiB in base64.
    pub const MAX_DETAILS_BYTES: usize = 4096;
    /// Most bytes of one violation's field or description.
    pub const MAX_VIOLATION_TEXT_BYTES: usize = 256;
    /// The metadata limit the two above keep a status under, header names included.
    pub const METADATA_LIMIT_BYTES: usize = 8 * 1024;
}

/// The `ErrorInfo` metadata key that says how many `BadRequest` violations were left out.
pub const VIOLATIONS_DROPPED: &str = "violations_dropped";

/// Every status of this module is built here, so that none outgrows what a client accepts:
/// the message and each violation are cut to their limits, and violations past the details
/// limit are dropped, saying how many (a last violation and `ErrorInfo` metadata).
fn build(code: Code, message: impl Into<String>, mut details: ErrorDetails) -> Status {
    let message = truncate(message.into(), size::MAX_MESSAGE_BYTES);
    if let Some(bad_request) = details.bad_request() {
        let violations: Vec<FieldViolation> = bad_request
            .field_violations
            .iter()
            .map(|v| FieldViolation {
                field: truncate(v.field.clone(), size::MAX_VIOLATION_TEXT_BYTES),
                description: truncate(v.description.clone(), size::MAX_VIOLATION_TEXT_BYTES),
                ..v.clone()
            })
            .collect();
        fit_violations(&mut details, violations);
    }
    Status::with_error_details(code, message, details)
}

/// Keeps as many violations as fit in [`size::MAX_DETAILS_BYTES`]; when some do not, a last
/// violation and the `ErrorInfo` metadata [`VIOLATIONS_DROPPED`] say how many were left out.
fn fit_violations(details: &mut ErrorDetails, violations: Vec<FieldViolation>) {
    let total = violations.len();
    details.set_bad_request(violations.clone());
    if encoded_details_len(details) <= size::MAX_DETAILS_BYTES {
        return;
    }
    let info = details.error_info().cloned();
    // Start from an estimate (each violation costs its text plus a few bytes of framing),
    // then drop one more until the encoded details fit.
    let room = size::MAX_DETAILS_BYTES.saturating_sub(1024);
    let mut used = 0;
    let mut keep = violations
        .iter()
        .take_while(|v| {
            used += v.field.len() + v.description.len() + 8;
            used <= room
        })
        .count();
    loop {
        let dropped = total - keep;
        let mut kept = violations[..keep].to_vec();
        kept.push(FieldViolation::new(
            "…",
            format!("… and {dropped} more violations, left out to keep the error small"),
        ));
        details.set_bad_request(kept);
        if let Some(info) = &info {
            let mut metadata = info.metadata.clone();
            metadata.insert(VIOLATIONS_DROPPED.into(), dropped.to_string());
            details.set_error_info(info.reason.clone(), info.domain.clone(), metadata);
        }
        if keep == 0 || encoded_details_len(details) <= size::MAX_DETAILS_BYTES {
            return;
        }
        keep -= 1;
    }
}

/// The size of the details as they go on the wire (before base64).
fn encoded_details_len(details: &ErrorDetails) -> usize {
    Status::with_error_details(Code::Unknown, "", details.clone()).details().len()
}

/// `text` cut to at most `max` bytes on a character boundary, marked with "…" when cut.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let ellipsis = "…";
    let mut end = max - ellipsis.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(ellipsis);
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Bytes of a status as trailers: every header name and value.
    fn trailer_bytes(status: &Status) -> usize {
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).expect("the status encodes");
        headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum()
    }

    fn huge_upstream_400() -> UpstreamError {
        let exception_fields: BTreeMap<String, String> = (0..5_000)
            .map(|n| (format!("channels[{n}].id"), format!("channel {n} is not valid: é{}", "x".repeat(40))))
            .collect();
        UpstreamError::Api {
            operation: Operation::ExportChannels,
            status: 400,
            code: Some(4),
            message: "ü".repeat(512 * 1024),
            exception_fields,
            rate_limit: None,
        }
    }

    #[test]
    fn a_huge_upstream_error_fits_the_metadata_limit_and_says_what_was_dropped() {
        let status = upstream_status(&huge_upstream_400());
        assert_eq!(status.code(), Code::InvalidArgument);
        let bytes = trailer_bytes(&status);
        assert!(bytes <= size::METADATA_LIMIT_BYTES, "{bytes} bytes of trailers");
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, reason::UPSTREAM_INVALID_ARGUMENT);
        let dropped: usize = info.metadata[VIOLATIONS_DROPPED].parse().expect("a count");
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert!(violations.len() > 10, "only {} violations kept", violations.len());
        assert_eq!(violations.len() - 1 + dropped, 5_000);
        assert!(violations.last().is_some_and(|v| v.description.contains(&format!("{dropped} more"))));
        assert!(status.message().len() <= size::MAX_MESSAGE_BYTES);
    }

    #[test]
    fn a_small_error_is_left_whole() {
        let violations = vec![FieldViolation::new("a", "b"), FieldViolation::new("c", "d")];
        let status = invalid_request(violations);
        let details = status.get_error_details();
        assert_eq!(details.bad_request().map(|b| b.field_violations.len()), Some(2));
        assert!(!details.error_info().is_some_and(|i| i.metadata.contains_key(VIOLATIONS_DROPPED)));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        let cut = truncate("é".repeat(10), 7);
        assert!(cut.len() <= 7 && cut.ends_with('…'), "{cut}");
        assert_eq!(truncate("short".into(), 7), "short");
    }
}
