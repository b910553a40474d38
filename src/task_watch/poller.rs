//! One task's poller: reads `GET /tasks/{id}` until the task ends or nobody watches it.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use rand::Rng;
use tokio::time::Instant;

use super::{
    budget::Lane,
    hub::{HubInner, Observation, ViewSender},
};
use crate::{
    proto::Task,
    service::{convert, errors},
    upstream::UpstreamError,
};

/// How much longer the poll interval grows after each unchanged poll.
const BACKOFF_FACTOR: f64 = 1.5;

/// Polls until the task is terminal, upstream fails for good, the last watcher leaves, or the
/// hub shuts down. Publishes only changes; a poll that changes nothing updates `polled_at`
/// without waking the watchers.
pub(super) async fn run(hub: Arc<HubInner>, task_id: String, sender: ViewSender) {
    let _counted = hub.budget.enlist();
    let settings = &hub.settings;
    let mut interval = settings.poll_interval_min;
    let mut failing_since: Option<Instant> = None;
    let mut failures: u32 = 0;
    // Until a poll answers, the watchers have no snapshot: that poll goes ahead of the queue.
    let mut lane = Lane::First;

    loop {
        tokio::select! {
            () = hub.budget.acquire(lane) => {}
            () = sender.closed() => {
                if hub.retire_if_unwatched(&task_id, &sender) { return; }
                continue;
            }
            () = hub.shutdown.cancelled() => return,
        }
        let polled_at = Utc::now();
        let delay = match hub.client.get_task(&task_id, None).await {
            Ok(answer) => {
                lane = Lane::Periodic;
                hub.budget.record(answer.rate_limit);
                failing_since = None;
                failures = 0;
                let task = convert::task(answer.body, polled_at);
                let terminal = task.state().is_terminal();
                let changed = publish(&sender, task, polled_at);
                if terminal {
                    keep_final_state(&hub, &task_id, &sender, settings.terminal_retention).await;
                    return;
                }
                interval = if changed {
                    settings.poll_interval_min
                } else {
                    interval.mul_f64(BACKOFF_FACTOR).min(settings.poll_interval_max)
                };
                interval.max(hub.budget.rate_limit_spacing())
            }
            Err(error) if is_transient(&error) => {
                if let UpstreamError::Api { rate_limit, .. } = &error {
                    hub.budget.record(*rate_limit);
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= settings.failure_budget {
                    tracing::warn!(%task_id, %error, "upstream kept failing past the failure budget");
                    end(&hub, &task_id, &sender, errors::watch_upstream_failing(&error, settings.failure_budget));
                    return;
                }
                failures = failures.saturating_add(1);
                tracing::debug!(%task_id, %error, failures, "transient upstream failure; backing off");
                retry_delay(&error, failures, settings.poll_interval_min, settings.poll_interval_max)
            }
            Err(error) => {
                tracing::info!(%task_id, %error, "watching ended by upstream");
                let status = errors::upstream_status(&error);
                if status.code() == tonic::Code::NotFound {
                    // Kept like a final state, so that watchers of an unknown id arriving
                    // meanwhile get NOT_FOUND at once instead of each costing a request. Every
                    // kept entry cost one budgeted request, so at most budget x TTL are kept.
                    sender.send_modify(|view| view.observation = Observation::Ended(status));
                    keep_final_state(&hub, &task_id, &sender, settings.not_found_retention).await;
                } else {
                    end(&hub, &task_id, &sender, status);
                }
                return;
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = sender.closed() => {
                if hub.retire_if_unwatched(&task_id, &sender) { return; }
            }
            () = hub.shutdown.cancelled() => return,
        }
    }
}

/// Publishes a poll's task; returns whether it changed what watchers see.
fn publish(sender: &ViewSender, task: Task, polled_at: chrono::DateTime<Utc>) -> bool {
    sender.send_if_modified(|view| {
        view.polled_at = Some(polled_at);
        let changed = match &view.observation {
            Observation::Task(previous) => !same_state(previous, &task),
            Observation::Pending | Observation::Ended(_) => true,
        };
        if changed {
            view.observation = Observation::Task(Box::new(task));
        }
        changed
    })
}

/// Whether two reads of a task show the same state. The result URL is left out: upstream
/// re-signs it on every read.
pub(super) fn same_state(a: &Task, b: &Task) -> bool {
    a.state == b.state
        && a.upstream_status == b.upstream_status
        && a.update_time == b.update_time
        && a.error == b.error
        && a.result.is_some() == b.result.is_some()
}

/// Keeps a task's final state (or NOT_FOUND) for `retention`, for late watchers, then forgets it.
async fn keep_final_state(hub: &HubInner, task_id: &str, sender: &ViewSender, retention: Duration) {
    tokio::select! {
        () = tokio::time::sleep(retention) => {}
        () = hub.shutdown.cancelled() => {}
    }
    hub.forget(task_id, sender);
}

/// Ends every watcher of the task with `status`.
fn end(hub: &HubInner, task_id: &str, sender: &ViewSender, status: tonic::Status) {
    sender.send_modify(|view| view.observation = Observation::Ended(status));
    hub.forget(task_id, sender);
}

/// Failures that waiting may cure: Stream's 5xx, 408 and 429, timeouts, broken connections,
/// garbled bodies. Anything else (404, 403, rejected credentials) will not change by itself.
fn is_transient(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Api { status, code, .. } => {
            *status == 408 || *status == 429 || *status >= 500 || *code == Some(9)
        }
        UpstreamError::Timeout { .. }
        | UpstreamError::DeadlineExceeded { .. }
        | UpstreamError::Connect { .. }
        | UpstreamError::Transport { .. }
        | UpstreamError::Decode { .. } => true,
        UpstreamError::TooLarge { .. } | UpstreamError::Refused { .. } => false,
    }
}

/// Exponential backoff with jitter; after a 429, at least until Stream's window resets.
fn retry_delay(error: &UpstreamError, failures: u32, min: Duration, max: Duration) -> Duration {
    let exponential = min.saturating_mul(2u32.saturating_pow(failures.min(16))).min(max);
    let jittered = exponential.mul_f64(rand::rng().random_range(0.5..=1.0));
    match error {
        UpstreamError::Api { status: 429, rate_limit: Some(limit), .. } => jittered.max(limit.until_reset()),
        _ => jittered,
    }
}
