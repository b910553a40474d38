//! The one place where gRPC statuses are built.
//!
//! Every status carries an `ErrorInfo` (domain [`DOMAIN`]) whose reason a client can branch on,
//! and every one goes through [`build`], which keeps it within what gRPC clients accept.
//! Upstream failures are mapped to these reasons by `upstream::UpstreamError::to_status`.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// `ErrorInfo.domain` of every error this service returns.
pub const DOMAIN: &str = "stream-export";

/// How long to suggest waiting when upstream gives no better hint.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

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
    /// The caller already has as many `ListTasks` calls running as it may.
    pub const LIST_LIMIT_REACHED: &str = "LIST_LIMIT_REACHED";
    /// No valid bearer token (caller authentication is on).
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The fleet's idempotency store (Redis) does not answer; the submit was not sent upstream.
    pub const IDEMPOTENCY_STORE_UNAVAILABLE: &str = "IDEMPOTENCY_STORE_UNAVAILABLE";
    /// The authorization policies do not permit the call; `ErrorInfo.metadata` names the
    /// action and the refused resource.
    pub const NOT_AUTHORIZED: &str = "NOT_AUTHORIZED";
    /// The task registry (Redis in fleet mode) does not answer, and the call needs it: a task
    /// read under policies (to know its owner), or `ListTasks`.
    pub const TASK_REGISTRY_UNAVAILABLE: &str = "TASK_REGISTRY_UNAVAILABLE";
    /// A submit ended abnormally inside this service; retry with the same `request_id`.
    pub const SUBMIT_ABORTED: &str = "SUBMIT_ABORTED";
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
    /// ReadExport: `start_index` is past the file's last record (`record_count` says how many).
    pub const START_INDEX_PAST_END: &str = "START_INDEX_PAST_END";
    /// No export job has this id (or its record expired).
    pub const JOB_NOT_FOUND: &str = "JOB_NOT_FOUND";
    /// The caller, or the service, already runs as many export jobs as it allows.
    pub const JOB_LIMIT_REACHED: &str = "JOB_LIMIT_REACHED";
    /// The job store does not answer; nothing was created or changed.
    pub const JOB_STORE_UNAVAILABLE: &str = "JOB_STORE_UNAVAILABLE";
    /// A job's shard failed on every attempt (`ErrorInfo.metadata` names the shard and its
    /// last task); the job FAILED.
    pub const JOB_TASK_FAILED: &str = "JOB_TASK_FAILED";
    /// A job's channel query matched more channels than a job may hold.
    pub const JOB_TOO_LARGE: &str = "JOB_TOO_LARGE";
    /// No export schedule has this id (or it was deleted).
    pub const SCHEDULE_NOT_FOUND: &str = "SCHEDULE_NOT_FOUND";
    /// The caller, or the service, already has as many export schedules as it allows.
    pub const SCHEDULE_LIMIT_REACHED: &str = "SCHEDULE_LIMIT_REACHED";
    /// A schedule kept changing under an update (its windows firing, other updates): try again.
    pub const SCHEDULE_BUSY: &str = "SCHEDULE_BUSY";
    /// A job asked for an archive, and the service allows none (no `--archive-allow`).
    pub const ARCHIVE_NOT_CONFIGURED: &str = "ARCHIVE_NOT_CONFIGURED";
    /// A job's `archive_uri` is not under any `--archive-allow` prefix.
    pub const ARCHIVE_NOT_ALLOWED: &str = "ARCHIVE_NOT_ALLOWED";
    /// A job's file could not be archived (or its manifest written); the job FAILED.
    pub const ARCHIVE_FAILED: &str = "ARCHIVE_FAILED";
    /// `VerifyExportJob`: the job has no archive, or no manifest yet (it is written when the
    /// job ends).
    pub const NOT_ARCHIVED: &str = "NOT_ARCHIVED";
    /// The archive store could not be read.
    pub const ARCHIVE_UNAVAILABLE: &str = "ARCHIVE_UNAVAILABLE";
    /// ReadExport: Stream no longer has the task's file, and no archive holds it.
    pub const EXPORT_FILE_GONE: &str = "EXPORT_FILE_GONE";
}

/// FAILED_PRECONDITION: a job asks for an archive and the service allows none.
pub fn archive_not_configured() -> Status {
    let details = ErrorDetails::with_error_info(reason::ARCHIVE_NOT_CONFIGURED, DOMAIN, HashMap::new());
    build(
        Code::FailedPrecondition,
        "archiving is off in this service: its operator allows no destination (--archive-allow)",
        details,
    )
}

/// PERMISSION_DENIED: `archive_uri` (normalised) is not under an allowed prefix.
pub fn archive_not_allowed(archive_uri: &str) -> Status {
    let metadata = HashMap::from([("archive_uri".to_owned(), archive_uri.to_owned())]);
    let details = ErrorDetails::with_error_info(reason::ARCHIVE_NOT_ALLOWED, DOMAIN, metadata);
    build(
        Code::PermissionDenied,
        format!("archive_uri {archive_uri} is not under a prefix this service may write to (--archive-allow)"),
        details,
    )
}

/// The error of a job whose shard's file (`key`) could not be archived, or whose manifest
/// could not be written (`shard` none).
pub fn archive_failed(shard: Option<u32>, key: &str, why: &str) -> Status {
    let mut metadata = HashMap::from([("key".to_owned(), key.to_owned())]);
    if let Some(shard) = shard {
        metadata.insert("shard".to_owned(), shard.to_string());
    }
    let details = ErrorDetails::with_error_info(reason::ARCHIVE_FAILED, DOMAIN, metadata);
    let what = shard.map_or_else(|| "the manifest".to_owned(), |shard| format!("shard {shard}'s file"));
    build(Code::Aborted, format!("{what} could not be archived at {key}: {why}"), details)
}

/// FAILED_PRECONDITION: job `job_id` has nothing to verify (`why`).
pub fn not_archived(job_id: &str, why: &str) -> Status {
    let metadata = HashMap::from([("job_id".to_owned(), job_id.to_owned())]);
    let details = ErrorDetails::with_error_info(reason::NOT_ARCHIVED, DOMAIN, metadata);
    build(Code::FailedPrecondition, format!("job {job_id} {why}"), details)
}

/// UNAVAILABLE: the archive store failed (`why`, which never holds a credential).
pub fn archive_unavailable(why: &str) -> Status {
    let details = ErrorDetails::with_error_info(reason::ARCHIVE_UNAVAILABLE, DOMAIN, HashMap::new());
    build(Code::Unavailable, format!("the archive could not be read: {why}"), details)
}

/// NOT_FOUND: Stream no longer has task `task_id`'s file (`why`), and no archive holds it.
pub fn export_file_gone(task_id: &str, why: &str) -> Status {
    let metadata = HashMap::from([("task_id".to_owned(), task_id.to_owned())]);
    let details = ErrorDetails::with_error_info(reason::EXPORT_FILE_GONE, DOMAIN, metadata);
    build(
        Code::NotFound,
        format!(
            "the export file of task {task_id} is gone from Stream ({why}), and no archive holds it: \
             only jobs with an archive_uri keep their files"
        ),
        details,
    )
}

/// NOT_FOUND for a job id the service does not know.
pub fn job_not_found(job_id: &str) -> Status {
    let metadata = HashMap::from([("job_id".to_owned(), job_id.to_owned())]);
    let details = ErrorDetails::with_error_info(reason::JOB_NOT_FOUND, DOMAIN, metadata);
    build(Code::NotFound, format!("no export job {job_id}"), details)
}

/// RESOURCE_EXHAUSTED when `who` (the caller, or everyone) already runs `limit` export jobs.
pub fn job_limit_reached(quota: &str, who: &str, limit: usize) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(30)));
    details.set_error_info(reason::JOB_LIMIT_REACHED, DOMAIN, HashMap::from([("limit".to_owned(), limit.to_string())]));
    details
        .add_quota_failure_violation(format!("stream-export:{quota}"), format!("at most {limit} running jobs {who}"));
    build(Code::ResourceExhausted, format!("too many running export jobs {who} (limit {limit})"), details)
}

/// NOT_FOUND for a schedule id the service does not know.
pub fn schedule_not_found(schedule_id: &str) -> Status {
    let metadata = HashMap::from([("schedule_id".to_owned(), schedule_id.to_owned())]);
    let details = ErrorDetails::with_error_info(reason::SCHEDULE_NOT_FOUND, DOMAIN, metadata);
    build(Code::NotFound, format!("no export schedule {schedule_id}"), details)
}

/// RESOURCE_EXHAUSTED when `who` (the caller, or everyone) already has `limit` schedules.
pub fn schedule_limit_reached(quota: &str, who: &str, limit: usize) -> Status {
    let mut details = ErrorDetails::with_error_info(
        reason::SCHEDULE_LIMIT_REACHED,
        DOMAIN,
        HashMap::from([("limit".to_owned(), limit.to_string())]),
    );
    details.add_quota_failure_violation(format!("stream-export:{quota}"), format!("at most {limit} schedules {who}"));
    build(
        Code::ResourceExhausted,
        format!("too many export schedules {who} (limit {limit}); delete one first"),
        details,
    )
}

/// ABORTED when a schedule changed under each attempt of an update: the caller may try again.
pub fn schedule_busy(schedule_id: &str) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
    details.set_error_info(
        reason::SCHEDULE_BUSY,
        DOMAIN,
        HashMap::from([("schedule_id".to_owned(), schedule_id.to_owned())]),
    );
    build(Code::Aborted, format!("the export schedule {schedule_id} kept changing; try again"), details)
}

/// UNAVAILABLE when the job store cannot be read or written; nothing was created or changed.
pub fn job_store_unavailable() -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY));
    details.set_error_info(reason::JOB_STORE_UNAVAILABLE, DOMAIN, HashMap::new());
    build(Code::Unavailable, "the job store is unavailable; try again", details)
}

/// The error of a job whose shard `shard` failed on each of its `attempts`; `last` is the last
/// task's failure as Stream reported it.
pub fn job_task_failed(shard: u32, task_id: &str, attempts: u32, last: &str) -> Status {
    let metadata = HashMap::from([
        ("shard".to_owned(), shard.to_string()),
        ("task_id".to_owned(), task_id.to_owned()),
        ("attempts".to_owned(), attempts.to_string()),
    ]);
    let details = ErrorDetails::with_error_info(reason::JOB_TASK_FAILED, DOMAIN, metadata);
    build(Code::Aborted, format!("shard {shard} failed on all {attempts} attempts; the last: {last}"), details)
}

/// RESOURCE_EXHAUSTED when a job's explicit list (`field`) holds more than `limit` entries.
pub fn job_list_too_large(field: &str, count: usize, limit: usize) -> Status {
    let mut details = ErrorDetails::with_error_info(
        reason::JOB_TOO_LARGE,
        DOMAIN,
        HashMap::from([("limit".to_owned(), limit.to_string()), ("count".to_owned(), count.to_string())]),
    );
    details.add_quota_failure_violation(
        "stream-export:channels-per-job",
        format!("at most {limit} channels or users in one job (--job-max-channels)"),
    );
    details.add_bad_request_violation(field, format!("lists {count} entries; a job holds at most {limit}"));
    build(Code::ResourceExhausted, format!("{field} lists {count} entries; a job holds at most {limit}"), details)
}

/// The error of a job whose query matched more than `limit` channels.
pub fn job_too_large(limit: usize) -> Status {
    let mut details =
        ErrorDetails::with_bad_request_violation("channel_query.filter", format!("matches more than {limit} channels"));
    details.set_error_info(reason::JOB_TOO_LARGE, DOMAIN, HashMap::from([("limit".to_owned(), limit.to_string())]));
    build(Code::FailedPrecondition, format!("the channel query matches more than {limit} channels"), details)
}

/// OUT_OF_RANGE when ReadExport's `start_index` is past the end of a file of `record_count`
/// records (a `start_index` equal to it reads nothing, OK: a resume after the last record).
pub fn start_index_past_end(start_index: u64, record_count: u64) -> Status {
    let mut details = ErrorDetails::with_error_info(
        reason::START_INDEX_PAST_END,
        DOMAIN,
        HashMap::from([("record_count".to_owned(), record_count.to_string())]),
    );
    details.add_bad_request_violation(
        "start_index",
        format!("must be at most {record_count}, the number of records in the export"),
    );
    let message = format!("start_index {start_index} is past the end of the export ({record_count} records)");
    build(Code::OutOfRange, message, details)
}

/// A status code as gRPC spells it (`NOT_FOUND`): in the gRPC specification, grpcurl, other
/// clients and this service's documentation; log lines, audit lines and the CLI use it. (Metric
/// labels keep their own spelling: see `telemetry::metrics::code_label`.)
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
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
    stream_limit_reached(reason::READ_LIMIT_REACHED, "read-streams", "ReadExport streams", limit)
}

/// RESOURCE_EXHAUSTED when the replica has as many watch streams as it allows.
pub fn watch_limit_reached(limit: usize) -> Status {
    stream_limit_reached(reason::WATCH_LIMIT_REACHED, "watch-streams", "watch streams", limit)
}

/// RESOURCE_EXHAUSTED `WATCH_LIMIT_REACHED`: the caller has as many open watch streams as one
/// caller may.
pub fn caller_watch_limit_reached(limit: usize) -> Status {
    stream_limit_reached(reason::WATCH_LIMIT_REACHED, "watch-streams-per-caller", "watch streams of one caller", limit)
}

/// RESOURCE_EXHAUSTED, at once, when the caller already runs `limit` ListTasks calls: one
/// caller's listings cannot take the registry from everyone else's reads.
pub fn list_limit_reached(limit: usize) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY));
    let metadata = HashMap::from([("limit".to_owned(), limit.to_string())]);
    details.set_error_info(reason::LIST_LIMIT_REACHED, DOMAIN, metadata);
    details.add_quota_failure_violation(
        "stream-export:list-calls-per-caller",
        format!("at most {limit} concurrent ListTasks calls per caller"),
    );
    build(Code::ResourceExhausted, format!("too many ListTasks calls of this caller at once (limit {limit})"), details)
}

/// The one shape of the stream limits: `reason`, a quota violation on
/// `stream-export:<quota>`, and the limit in the metadata.
fn stream_limit_reached(reason: &str, quota: &str, streams: &str, limit: usize) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY));
    details.set_error_info(reason, DOMAIN, HashMap::from([("limit".to_owned(), limit.to_string())]));
    details
        .add_quota_failure_violation(format!("stream-export:{quota}"), format!("at most {limit} concurrent {streams}"));
    build(Code::ResourceExhausted, format!("too many {streams} (limit {limit})"), details)
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

/// INTERNAL when a submit's task ended without an outcome (a fault of this service): whether
/// Stream started the export is unknown, so the caller retries with the same `request_id`.
pub fn submit_aborted() -> Status {
    let details = ErrorDetails::with_error_info(reason::SUBMIT_ABORTED, DOMAIN, HashMap::new());
    build(Code::Internal, "the submit ended abnormally; retry with the same request_id", details)
}

/// UNAVAILABLE when a submit with a `request_id` cannot be deduplicated because the fleet's
/// store (Redis) does not answer: nothing was sent upstream, so a retry is safe.
pub fn idempotency_store_unavailable() -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY));
    details.set_error_info(reason::IDEMPOTENCY_STORE_UNAVAILABLE, DOMAIN, HashMap::new());
    build(
        Code::Unavailable,
        "the idempotency store is unavailable; nothing was sent upstream, retry with the same request_id",
        details,
    )
}

/// PERMISSION_DENIED when the policies do not let the caller do `action` on `resource` (as Cedar
/// names it, e.g. `Channel::"messaging:general"`). Nothing was sent upstream.
pub fn not_authorized(action: &str, resource: &str) -> Status {
    let metadata =
        HashMap::from([("action".to_owned(), action.to_owned()), ("resource".to_owned(), resource.to_owned())]);
    let details = ErrorDetails::with_error_info(reason::NOT_AUTHORIZED, DOMAIN, metadata);
    build(Code::PermissionDenied, format!("not authorized: {action} on {resource}"), details)
}

/// UNAVAILABLE when the task registry (the fleet's Redis) does not answer and the call needs it.
pub fn task_registry_unavailable() -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY));
    details.set_error_info(reason::TASK_REGISTRY_UNAVAILABLE, DOMAIN, HashMap::new());
    build(Code::Unavailable, "the task registry is unavailable; try again", details)
}

/// INVALID_ARGUMENT for a `ListTasks` request whose page size or token is not usable.
pub fn invalid_page(field: &str, why: &str) -> Status {
    let mut details = ErrorDetails::with_bad_request_violation(field, why);
    details.set_error_info(reason::INVALID_REQUEST, DOMAIN, HashMap::new());
    build(Code::InvalidArgument, format!("{field} {why}"), details)
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

/// UNAVAILABLE for a watch whose upstream kept failing past the failure budget; `last` is the
/// status of the last failure, whose metadata it keeps.
pub fn watch_upstream_failing(last: &Status, budget: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(DEFAULT_RETRY_DELAY.max(budget / 10)));
    let mut metadata = last.get_error_details().error_info().map(|info| info.metadata.clone()).unwrap_or_default();
    metadata.insert("failing_for_seconds".into(), budget.as_secs().to_string());
    details.set_error_info(reason::UPSTREAM_FAILING, DOMAIN, metadata);
    let message = format!("Stream kept failing for {}s: {}", budget.as_secs(), last.message());
    build(Code::Unavailable, message, details)
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
pub fn build(code: Code, message: impl Into<String>, mut details: ErrorDetails) -> Status {
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
    use super::*;

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
