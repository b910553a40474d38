//! One task's poller: reads `GET /tasks/{id}` until the task ends or nobody watches it.

use std::{sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::Utc;
use tokio::time::Instant;

use super::{
    WatchSettings,
    budget::Lane,
    hub::{HubInner, Observation, ViewSender},
};
use tracing::Instrument;

use crate::{
    contract::status,
    proto::Task,
    telemetry::otel::{self, WatcherLinks},
    upstream::{ErrorKind, UpstreamError, convert},
};

/// How much longer the poll interval grows after each unchanged poll.
const BACKOFF_FACTOR: f64 = 1.5;

/// Polls until the task is terminal, upstream fails for good, the last watcher leaves, or the
/// hub shuts down. Publishes only changes; a poll that changes nothing updates `polled_at`
/// without waking the watchers.
/// Each poll is a span of its own trace, linked to the watchers' calls in `watchers`.
pub(super) async fn run(hub: Arc<HubInner>, task_id: String, sender: ViewSender, watchers: Arc<WatcherLinks>) {
    let _counted = hub.budget.enlist();
    let settings = &hub.settings;
    let mut interval = settings.poll_interval_min;
    let mut failing_since: Option<Instant> = None;
    // The delays between polls while upstream fails; a fresh series after each success.
    let mut failure_delays: Option<ExponentialBackoff> = None;
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
        let poll = otel::poll_span(&task_id, &watchers);
        let delay = match hub.client.get_task(&task_id, None).instrument(poll).await {
            Ok(answer) => {
                lane = Lane::Periodic;
                hub.budget.record(answer.rate_limit);
                failing_since = None;
                failure_delays = None;
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
            Err(error) if error.kind().is_temporary() => {
                if let UpstreamError::Api { rate_limit, .. } = &error {
                    hub.budget.record(*rate_limit);
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= settings.failure_budget {
                    tracing::warn!(%task_id, %error, "upstream kept failing past the failure budget");
                    end(
                        &hub,
                        &task_id,
                        &sender,
                        status::watch_upstream_failing(&error.to_status(), settings.failure_budget),
                    );
                    return;
                }
                let delays = failure_delays.get_or_insert_with(|| failure_backoff(settings));
                let delay = delays.next().unwrap_or(settings.poll_interval_max);
                tracing::debug!(%task_id, %error, ?delay, "transient upstream failure; backing off");
                match error.kind() {
                    // Never before Stream's window resets.
                    ErrorKind::RateLimited { retry_after: Some(reset) } => delay.max(reset),
                    _ => delay,
                }
            }
            Err(error) => {
                tracing::info!(%task_id, %error, "watching ended by upstream");
                let status = error.to_status();
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
            Observation::Task(previous) => !previous.same_state(&task),
            Observation::Pending | Observation::Ended(_) => true,
        };
        if changed {
            view.observation = Observation::Task(Box::new(task));
        }
        changed
    })
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

/// The delays between polls of a failing upstream: doubling from the shortest poll interval,
/// with jitter (up to +100%, so that pollers that failed together do not retry together), never
/// past the longest poll interval.
fn failure_backoff(settings: &WatchSettings) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(settings.poll_interval_min)
        .with_max_delay(settings.poll_interval_max / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}
