//! Upstream failures as the gRPC statuses a caller sees, decided by [`ErrorKind`] and worded
//! with what the failure says (the operation, Stream's message and code).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::ErrorDetails;

use super::{ErrorKind, Operation, UpstreamError};
use crate::contract::status::{DEFAULT_RETRY_DELAY, DOMAIN, build, download_failed, reason};

impl UpstreamError {
    /// The status the caller sees. Its `ErrorInfo` names the Stream operation and, when Stream
    /// answered, its HTTP status and error code.
    pub fn to_status(&self) -> Status {
        let operation = self.operation();
        let mut metadata = HashMap::from([("operation".to_owned(), operation.name().to_owned())]);
        let mut details = ErrorDetails::new();
        match self {
            UpstreamError::Api { status, code, .. } => {
                metadata.insert("upstream_http_status".into(), status.to_string());
                if let Some(code) = code {
                    metadata.insert("stream_code".into(), code.to_string());
                }
            }
            UpstreamError::Decode { status, .. } => {
                metadata.insert("upstream_http_status".into(), status.to_string());
            }
            _ => {}
        }
        let (code, reason, message) = match (self.kind(), self) {
            (ErrorKind::CredentialsRejected, _) => (
                Code::Internal,
                reason::UPSTREAM_CREDENTIALS_REJECTED,
                "Stream rejected this service's credentials: check STREAM_API_KEY and STREAM_API_SECRET".to_owned(),
            ),
            (ErrorKind::RateLimited { retry_after }, _) => {
                let delay = retry_after.filter(|delay| !delay.is_zero()).unwrap_or(DEFAULT_RETRY_DELAY);
                details.set_retry_info(Some(delay));
                let limit = match self {
                    UpstreamError::Api { rate_limit: Some(limit), .. } => {
                        format!("{} requests per minute", limit.limit)
                    }
                    _ => "unknown".to_owned(),
                };
                details.add_quota_failure_violation(
                    format!("stream:{}", operation.name()),
                    format!("Stream's rate limit ({limit}) is exhausted"),
                );
                (
                    Code::ResourceExhausted,
                    reason::UPSTREAM_RATE_LIMITED,
                    format!("Stream rate limit reached: {}", self.message()),
                )
            }
            (ErrorKind::InvalidRequest, _)
                if operation == Operation::ExportUser && mentions_message_limit(self.message()) =>
            {
                (
                    Code::FailedPrecondition,
                    reason::USER_EXPORT_TOO_LARGE,
                    "the user has more than 10,000 messages, too many for a synchronous export; use ExportUsers"
                        .to_owned(),
                )
            }
            (ErrorKind::InvalidRequest, _) => {
                if let UpstreamError::Api { exception_fields, .. } = self {
                    for (field, description) in exception_fields {
                        details.add_bad_request_violation(field.clone(), description.clone());
                    }
                }
                (
                    Code::InvalidArgument,
                    reason::UPSTREAM_INVALID_ARGUMENT,
                    format!("Stream rejected the request: {}", self.message()),
                )
            }
            (ErrorKind::NotFound, _) => match operation {
                Operation::GetTask => (Code::NotFound, reason::TASK_NOT_FOUND, "task not found".to_owned()),
                Operation::ExportUser => (Code::NotFound, reason::USER_NOT_FOUND, "user not found".to_owned()),
                _ => (Code::NotFound, reason::UPSTREAM_NOT_FOUND, format!("Stream: {}", self.message())),
            },
            (ErrorKind::DeadlineExceeded, _) => (
                Code::DeadlineExceeded,
                reason::DEADLINE_EXCEEDED,
                "the call's deadline passed before Stream answered".to_owned(),
            ),
            (ErrorKind::BadResponse, error) => (
                Code::Internal,
                reason::UPSTREAM_BAD_RESPONSE,
                format!("Stream sent an unreadable response: {}", detail_of(error)),
            ),
            (ErrorKind::Transient, error) => transient(error, &mut details),
            (ErrorKind::Permanent, error) => permanent(error, &mut metadata),
        };
        details.set_error_info(reason, DOMAIN, metadata);
        build(code, message, details)
    }

    /// Stream's message, or the empty string when Stream did not answer.
    fn message(&self) -> &str {
        match self {
            UpstreamError::Api { message, .. } => message,
            _ => "",
        }
    }
}

/// What went wrong, for a failure that has a `detail`.
fn detail_of(error: &UpstreamError) -> &str {
    match error {
        UpstreamError::Decode { detail, .. }
        | UpstreamError::Connect { detail, .. }
        | UpstreamError::Transport { detail, .. }
        | UpstreamError::Refused { detail, .. } => detail,
        _ => "",
    }
}

/// A failure waiting may cure: UNAVAILABLE with a retry delay.
fn transient(error: &UpstreamError, details: &mut ErrorDetails) -> (Code, &'static str, String) {
    details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
    match error {
        UpstreamError::Api { status, message, .. } => {
            (Code::Unavailable, reason::UPSTREAM_UNAVAILABLE, format!("Stream failed (HTTP {status}): {message}"))
        }
        UpstreamError::Timeout { .. } => {
            (Code::Unavailable, reason::UPSTREAM_TIMEOUT, "Stream did not answer in time".to_owned())
        }
        UpstreamError::Connect { detail, .. } => {
            (Code::Unavailable, reason::UPSTREAM_UNREACHABLE, format!("cannot connect to Stream: {detail}"))
        }
        UpstreamError::Transport { detail, .. } => (
            Code::Unavailable,
            reason::UPSTREAM_CONNECTION_FAILED,
            format!("the connection to Stream failed: {detail}"),
        ),
        other => (Code::Unavailable, reason::UPSTREAM_UNAVAILABLE, other.to_string()),
    }
}

/// A failure that will not change by waiting.
fn permanent(error: &UpstreamError, metadata: &mut HashMap<String, String>) -> (Code, &'static str, String) {
    let operation = error.operation();
    match error {
        UpstreamError::Api { status: 403, message, .. } => (
            Code::PermissionDenied,
            reason::UPSTREAM_PERMISSION_DENIED,
            format!("Stream refused the operation: {message}"),
        ),
        UpstreamError::Api { status: status @ 300..=399, .. } => (
            Code::Internal,
            reason::UPSTREAM_REDIRECTED,
            format!(
                "Stream answered with a redirect (HTTP {status}), which is not followed: check the upstream base URL"
            ),
        ),
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
        UpstreamError::Api { status, message, .. } => {
            (Code::Internal, reason::UPSTREAM_UNEXPECTED_STATUS, format!("Stream answered HTTP {status}: {message}"))
        }
        other => (Code::Internal, reason::UPSTREAM_UNEXPECTED_STATUS, other.to_string()),
    }
}

/// The status of a ReadExport whose download could not start: FAILED_PRECONDITION
/// `DOWNLOAD_REFUSED` when the destination is refused (retrying will not help), otherwise
/// UNAVAILABLE `DOWNLOAD_FAILED` to resume at `next_index`.
pub fn download_not_started(error: &UpstreamError, next_index: u64) -> Status {
    match error {
        UpstreamError::Refused { .. } => error.to_status(),
        _ => download_failed(&error.to_string(), next_index),
    }
}

/// Whether a Stream error message is the one for a user over the synchronous export limit.
/// Stream does not document a dedicated code for it, so the message is the only signal.
fn mentions_message_limit(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["10000", "10,000", "10k"].iter().any(|limit| message.contains(limit))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use tonic_types::StatusExt;

    use crate::contract::status::{VIOLATIONS_DROPPED, size};

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
        let status = huge_upstream_400().to_status();
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
}
