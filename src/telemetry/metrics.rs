//! Prometheus metrics: names, the exporter on the admin port, and the few recording helpers
//! the rest of the service calls. Recording without an installed exporter costs next to
//! nothing, so the code records unconditionally.

use std::{net::SocketAddr, time::Duration};

use metrics_exporter_prometheus::PrometheusBuilder;

/// gRPC calls handled, by `method` (a served method or `unknown`) and the `code` the call
/// ended with (a stream's is in its trailers; a client that left counts as `Cancelled`).
pub const RPC_REQUESTS: &str = "stream_export_rpc_requests_total";
/// gRPC call latency until the response starts, by `method`.
pub const RPC_DURATION: &str = "stream_export_rpc_duration_seconds";
/// Upstream requests, by `operation` and `status` (HTTP status, or `timeout`, `connect`, `transport`).
pub const UPSTREAM_REQUESTS: &str = "stream_export_upstream_requests_total";
/// Upstream request latency, by `operation`.
pub const UPSTREAM_DURATION: &str = "stream_export_upstream_duration_seconds";
/// `x-ratelimit-remaining` of the last upstream answer, by `operation`.
pub const UPSTREAM_RATE_LIMIT_REMAINING: &str = "stream_export_upstream_ratelimit_remaining";
/// Open WatchTask streams.
pub const WATCH_STREAMS: &str = "stream_export_watch_streams";
/// Running task pollers.
pub const WATCH_POLLERS: &str = "stream_export_watch_pollers";

/// Spans not exported, by `reason`: `queue_full` (the batch processor's queue was full) or
/// `export_failed` (the collector did not take a batch).
pub const SPANS_DROPPED: &str = "stream_export_spans_dropped_total";

/// Archive copies of export files, by `outcome`: `archived`, or `failed` (a try that failed and
/// was aborted; it is tried again while tries remain).
pub const ARCHIVE_COPIES: &str = "stream_export_archive_copies_total";
/// Bytes written into archives (files copied whole).
pub const ARCHIVE_BYTES: &str = "stream_export_archive_bytes_total";

/// Windows of export schedules started, by `outcome`: `started` (a job created), or `refused`
/// (the policies refused the job to its owner: it was created FAILED).
pub const SCHEDULE_WINDOWS: &str = "stream_export_schedule_windows_total";
/// How long after it was due (its end plus the lag) each window's job was created.
pub const SCHEDULE_FIRE_DELAY: &str = "stream_export_schedule_fire_delay_seconds";

/// Latency buckets, in seconds: from sub-millisecond local calls to slow upstream exports.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Serves `GET /metrics` in the Prometheus text format on `addr` (the admin port, apart from
/// the gRPC port). Call once per process, inside the runtime.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)?
        .install()
        .map_err(|error| anyhow::anyhow!("starting the metrics listener on {addr}: {error}"))?;
    describe();
    Ok(())
}

fn describe() {
    metrics::describe_counter!(RPC_REQUESTS, "gRPC calls handled, by method and the code they ended with");
    metrics::describe_histogram!(RPC_DURATION, metrics::Unit::Seconds, "gRPC call latency until the response starts");
    metrics::describe_counter!(UPSTREAM_REQUESTS, "Stream API requests, by operation and status");
    metrics::describe_histogram!(UPSTREAM_DURATION, metrics::Unit::Seconds, "Stream API request latency");
    metrics::describe_gauge!(UPSTREAM_RATE_LIMIT_REMAINING, "x-ratelimit-remaining of the last Stream answer");
    metrics::describe_gauge!(WATCH_STREAMS, "open WatchTask streams");
    metrics::describe_gauge!(WATCH_POLLERS, "running task pollers");
    metrics::describe_counter!(SPANS_DROPPED, "spans not exported, by reason (queue_full, export_failed)");
    metrics::describe_counter!(ARCHIVE_COPIES, "archive copies of export files, by outcome (archived, failed)");
    metrics::describe_counter!(ARCHIVE_BYTES, metrics::Unit::Bytes, "bytes of export files written into archives");
    metrics::describe_counter!(SCHEDULE_WINDOWS, "windows of export schedules started, by outcome (started, refused)");
    metrics::describe_histogram!(
        SCHEDULE_FIRE_DELAY,
        metrics::Unit::Seconds,
        "how long after it was due each schedule window's job was created"
    );
}

/// Counts a schedule window whose job was created (`refused`: created FAILED by the policies),
/// `late` after the window was due.
pub fn schedule_window(refused: bool, late: Duration) {
    let outcome = if refused { "refused" } else { "started" };
    metrics::counter!(SCHEDULE_WINDOWS, "outcome" => outcome).increment(1);
    metrics::histogram!(SCHEDULE_FIRE_DELAY).record(late.as_secs_f64());
}

/// Counts one try of an archive copy: `bytes` written when it succeeded.
pub fn archive_copy(archived: Option<u64>) {
    let outcome = if archived.is_some() { "archived" } else { "failed" };
    metrics::counter!(ARCHIVE_COPIES, "outcome" => outcome).increment(1);
    if let Some(bytes) = archived {
        metrics::counter!(ARCHIVE_BYTES).increment(bytes);
    }
}

/// Records the start of a call's response: the latency until then, by method. `method` is
/// one of [`super::method::label`]'s values, never a raw path.
pub fn rpc_started(method: &'static str, elapsed: Duration) {
    metrics::histogram!(RPC_DURATION, "method" => method).record(elapsed.as_secs_f64());
}

/// Counts a finished call with the status it ended with.
pub fn rpc_finished(method: &'static str, code: tonic::Code) {
    metrics::counter!(RPC_REQUESTS, "method" => method, "code" => code_label(code)).increment(1);
}

/// The `code` label: the status code's name as tonic spells it (`NotFound`).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Records one upstream request.
pub fn upstream(operation: &'static str, status: &str, elapsed: Duration, rate_limit_remaining: Option<u64>) {
    metrics::counter!(UPSTREAM_REQUESTS, "operation" => operation, "status" => status.to_owned()).increment(1);
    metrics::histogram!(UPSTREAM_DURATION, "operation" => operation).record(elapsed.as_secs_f64());
    if let Some(remaining) = rate_limit_remaining {
        metrics::gauge!(UPSTREAM_RATE_LIMIT_REMAINING, "operation" => operation).set(remaining as f64);
    }
}

/// Counts spans that were not exported.
pub fn spans_dropped(reason: &'static str, spans: usize) {
    metrics::counter!(SPANS_DROPPED, "reason" => reason).increment(spans as u64);
}
