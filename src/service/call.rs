//! The per-call context every handler starts with: the caller (named in the call's span), the
//! call's admission (drain, in-flight limit), and the deadline of its upstream work.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tonic::{Request, Status};

use super::{ExportApi, caller::Caller, deadline};
use crate::{contract::status, upstream::UpstreamError};

/// One admitted call: who called, by when its upstream work must be done, and its slot among
/// the calls in flight (given back when the call ends).
pub(super) struct Call {
    pub(super) caller: Caller,
    pub(super) deadline: Instant,
    _admitted: OwnedSemaphorePermit,
}

impl Call {
    /// The prologue of every handler: names the caller in the call's span, then admits the call
    /// (see [`admit`]) and sets the deadline of its upstream work.
    pub(super) fn begin<T>(api: &ExportApi, request: &Request<T>) -> Result<Self, Status> {
        let caller = Caller::of(request);
        tracing::Span::current().record("caller", caller.name.as_str());
        let admitted = admit(api)?;
        Ok(Self { deadline: upstream_deadline(api, request), caller, _admitted: admitted })
    }
}

/// Lets a call in (unary, or a stream being set up), or turns it away at once: while draining
/// (UNAVAILABLE, so that a mesh retries elsewhere) or at the concurrency limit
/// (RESOURCE_EXHAUSTED).
fn admit(api: &ExportApi) -> Result<OwnedSemaphorePermit, Status> {
    if api.hub.is_shutting_down() {
        return Err(status::shutting_down());
    }
    Arc::clone(&api.in_flight).try_acquire_owned().map_err(|_| status::overloaded(api.limits.max_in_flight))
}

/// When this call's upstream work must be done: the caller's deadline or the unary timeout.
fn upstream_deadline<T>(api: &ExportApi, request: &Request<T>) -> Instant {
    let limit = Instant::now() + api.limits.unary_timeout;
    deadline::for_upstream(request.metadata()).map_or(limit, |caller| caller.min(limit))
}

/// Adds the task id, once known in its canonical spelling (or once a submit returned it), to the
/// call's span (opened by the telemetry layer): one span per call, so that a log line of the
/// call carries the caller and the task. Each field is recorded once: a field recorded twice
/// is printed twice.
pub(super) fn annotate_task(task_id: &str) {
    tracing::Span::current().record("task_id", task_id);
}

/// Logs an upstream failure and maps it to the caller's status.
pub(super) fn upstream_failure(error: &UpstreamError) -> Status {
    tracing::warn!(%error, "upstream request failed");
    error.to_status()
}
