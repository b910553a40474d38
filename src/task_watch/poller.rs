//! One task's poller: reads `GET /tasks/{id}` until the task ends or nobody watches it.
//!
//! In fleet mode a poller either leads (it holds the task's lease, polls Stream and shares
//! each observation) or follows (it relays what the leading replica shares, and leads as soon
//! as the lease is free). While Redis is unreachable it leads on its own, under this
//! replica's share of the budget, and rejoins the fleet when Redis answers.

use std::{sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::Utc;
use tokio::time::Instant;

use super::{
    WatchSettings,
    budget::Lane,
    coordination::Urgency,
    shared::Shared,
    view::{Observation, TaskView, ViewSender},
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

/// Polls (or, in fleet mode, follows the replica that polls) until the task is terminal,
/// upstream fails for good, the last watcher leaves, or the hub shuts down.
/// Each poll is a span of its own trace, linked to the watchers' calls in `watchers`.
pub(super) async fn run(
    hub: Arc<Shared>,
    task_id: String,
    first_caller: Arc<str>,
    sender: ViewSender,
    watchers: Arc<WatcherLinks>,
) {
    let mut poller = Poller { hub, task_id, first_caller, sender, watchers, seq: 0 };
    let mut role = if poller.hub.polls.leads_at_once() { Role::Lead } else { Role::Follow };
    loop {
        role = match role {
            Role::Lead => poller.lead().await,
            Role::Follow => poller.follow().await,
            Role::Stop => return,
        };
    }
}

/// What a poller does next.
enum Role {
    /// Poll Stream.
    Lead,
    /// Relay what another replica polls.
    Follow,
    /// Nothing: the watch is over, or nobody watches.
    Stop,
}

/// How a wait of a leading poller ended.
enum Waited {
    /// What it waited for came.
    Done,
    /// Stop polling: nobody watches, or the hub shuts down.
    Stop,
    /// Another replica leads now.
    Follow,
}

struct Poller {
    hub: Arc<Shared>,
    task_id: String,
    /// The caller whose watch started this poller: its first polls take their turn among that
    /// caller's.
    first_caller: Arc<str>,
    sender: ViewSender,
    watchers: Arc<WatcherLinks>,
    /// The number of the last shared observation seen or written (fleet mode).
    seq: i64,
}

impl Poller {
    /// Follows the shared view until this replica leads, the task ends, or nobody watches.
    /// While Redis is unreachable, leads (on its own).
    async fn follow(&mut self) -> Role {
        let polls = Arc::clone(&self.hub.polls);
        // Taken before the first read, so that no change announced meanwhile is missed.
        let announcements = polls.announcements(&self.task_id);
        // A new follower has nothing to relay yet: its first read goes at once.
        let mut urgency = Urgency::Now;
        loop {
            let read = polls.follow(&self.task_id, self.seq, urgency);
            // A check waits for the replica's next batch of reads: a change announced meanwhile
            // is relayed at once instead (the check is given up; the announcement is newer).
            let followed = tokio::select! {
                followed = read => followed,
                () = announced(announcements.as_deref()), if urgency == Urgency::Soon => {
                    urgency = Urgency::Now;
                    continue;
                }
            };
            let followed = match followed {
                Ok(followed) => followed,
                Err(error) => {
                    tracing::debug!(task_id = %self.task_id, %error, "fleet store unavailable; polling on our own");
                    return Role::Lead;
                }
            };
            if let Some(update) = followed.update {
                self.seq = update.seq;
                if let Some(retention) = self.apply(update.view) {
                    self.keep_final_state(retention).await;
                    return Role::Stop;
                }
            }
            if followed.leading {
                return Role::Lead;
            }
            urgency = tokio::select! {
                () = tokio::time::sleep(followed.read_again_in) => Urgency::Soon,
                () = announced(announcements.as_deref()) => Urgency::Now,
                () = self.sender.closed() => {
                    if self.hub.retire_if_unwatched(&self.task_id, &self.sender) { return Role::Stop; }
                    Urgency::Soon
                }
                () = self.hub.shutdown.cancelled() => return Role::Stop,
            };
        }
    }

    /// Relays a view shared by the leading replica; returns how long to keep it when it is
    /// final (`Some(ZERO)`: forget it at once).
    fn apply(&self, shared: TaskView) -> Option<Duration> {
        let settings = &self.hub.settings;
        match shared.observation {
            Observation::Pending => None,
            Observation::Task(task) => {
                let terminal = task.state().is_terminal();
                if let Some(polled_at) = shared.polled_at {
                    publish(&self.sender, *task, polled_at);
                }
                terminal.then_some(settings.terminal_retention)
            }
            Observation::Ended(status) => {
                let retention =
                    if status.code() == tonic::Code::NotFound { settings.not_found_retention } else { Duration::ZERO };
                self.sender.send_modify(|view| view.observation = Observation::Ended(status));
                Some(retention)
            }
        }
    }

    /// Polls Stream until the task ends, nobody watches, or (fleet mode) another replica leads.
    /// Publishes only changes to the watchers; a poll that changes nothing updates `polled_at`
    /// without waking them.
    async fn lead(&mut self) -> Role {
        let hub = Arc::clone(&self.hub);
        let _counted = hub.budget.enlist();
        let settings = &hub.settings;
        let mut interval = settings.poll_interval_min;
        let mut failing_since: Option<Instant> = None;
        // The delays between polls while upstream fails; a fresh series after each success.
        let mut failure_delays: Option<ExponentialBackoff> = None;
        loop {
            // Until a poll answers, the watchers have no snapshot: that poll goes ahead of the queue.
            let lane = if self.sender.borrow().task().is_some() {
                Lane::Periodic
            } else {
                Lane::First(Arc::clone(&self.first_caller))
            };
            match self.wait_leading(hub.budget.acquire(lane)).await {
                Waited::Done => {}
                Waited::Stop => return Role::Stop,
                Waited::Follow => return Role::Follow,
            }
            let polled_at = Utc::now();
            let started = Instant::now();
            let poll = otel::poll_span(&self.task_id, &self.watchers);
            // When to poll next: an interval after this poll started (the time spent asking and
            // sharing is part of it), or a failure delay after it ended.
            let next_poll = match hub.client.get_task(&self.task_id, None).instrument(poll.clone()).await {
                Ok(answer) => {
                    hub.budget.record(answer.rate_limit);
                    failing_since = None;
                    failure_delays = None;
                    let task = convert::task(answer.body, polled_at);
                    let terminal = task.state().is_terminal();
                    if let Some(observer) = &hub.observer
                        && is_news(&self.sender, &task)
                    {
                        let noting = observer.observed(&task, polled_at);
                        if terminal {
                            // Noted before any watcher sees the end (see `ChangeObserver`).
                            let _ = tokio::time::timeout(super::FINAL_STATE_NOTE_WAIT, noting).await;
                        } else {
                            tokio::spawn(noting);
                        }
                    }
                    let changed = publish(&self.sender, task, polled_at);
                    // Sharing the observation is part of the poll's trace.
                    if terminal {
                        self.share(Some(settings.terminal_retention)).instrument(poll).await;
                        self.keep_final_state(settings.terminal_retention).await;
                        return Role::Stop;
                    }
                    if !self.share(None).instrument(poll).await {
                        return Role::Follow;
                    }
                    interval = if changed {
                        settings.poll_interval_min
                    } else {
                        interval.mul_f64(BACKOFF_FACTOR).min(settings.poll_interval_max)
                    };
                    started + interval.max(hub.budget.rate_limit_spacing())
                }
                Err(error) if error.kind().is_temporary() => {
                    if let UpstreamError::Api { rate_limit, .. } = &error {
                        hub.budget.record(*rate_limit);
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= settings.failure_budget {
                        tracing::warn!(task_id = %self.task_id, %error, "upstream kept failing past the failure budget");
                        let status = status::watch_upstream_failing(&error.to_status(), settings.failure_budget);
                        self.end(status, Duration::ZERO).await;
                        return Role::Stop;
                    }
                    let delays = failure_delays.get_or_insert_with(|| failure_backoff(settings));
                    let delay = delays.next().unwrap_or(settings.poll_interval_max);
                    tracing::debug!(task_id = %self.task_id, %error, ?delay, "transient upstream failure; backing off");
                    Instant::now()
                        + match error.kind() {
                            // Never before Stream's window resets; nor, in fleet mode, any replica.
                            ErrorKind::RateLimited { retry_after: Some(reset) } => {
                                hub.budget.rate_limited(reset);
                                delay.max(reset)
                            }
                            _ => delay,
                        }
                }
                Err(error) => {
                    tracing::info!(task_id = %self.task_id, %error, "watching ended by upstream");
                    let status = error.to_status();
                    // NOT_FOUND is kept like a final state, so that watchers of an unknown id
                    // arriving meanwhile get it at once instead of each costing a request.
                    // Every kept entry cost one budgeted request, so at most budget x TTL are kept.
                    let retention = if status.code() == tonic::Code::NotFound {
                        settings.not_found_retention
                    } else {
                        Duration::ZERO
                    };
                    self.end(status, retention).await;
                    return Role::Stop;
                }
            };
            match self.wait_leading(tokio::time::sleep_until(next_poll)).await {
                Waited::Done => {}
                Waited::Stop => return Role::Stop,
                Waited::Follow => return Role::Follow,
            }
        }
    }

    /// Waits for `until` while leading: renews the lease meanwhile (fleet mode), and gives up
    /// when nobody watches any more (releasing the lease), the hub shuts down, or the lease is
    /// lost to another replica.
    async fn wait_leading(&self, until: impl Future<Output = ()>) -> Waited {
        let polls = &self.hub.polls;
        let leased = polls.renew_interval().is_some();
        // The next renewal of the lease (fleet mode), awaited alongside: the fleet renews all of
        // this replica's leases together, and tells each poller whether it kept its own.
        let mut renewal = Box::pin(polls.renew(&self.task_id));
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => return Waited::Done,
                () = self.sender.closed() => {
                    if self.hub.retire_if_unwatched(&self.task_id, &self.sender) {
                        polls.release(&self.task_id);
                        return Waited::Stop;
                    }
                }
                () = self.hub.shutdown.cancelled() => {
                    // A draining replica hands its polls over at once, not after the lease.
                    polls.release(&self.task_id);
                    return Waited::Stop;
                }
                renewed = &mut renewal, if leased => {
                    // Unreachable shared state (`Err`) is no reason to stop: keep polling on our own.
                    if let Ok(false) = renewed {
                        return Waited::Follow;
                    }
                    renewal = Box::pin(polls.renew(&self.task_id));
                }
            }
        }
    }

    /// Shares this replica's latest observation with the fleet (kept for `last` when final).
    /// Returns `false` when another replica leads now; `true` otherwise, also when Redis is
    /// unreachable (this replica then keeps polling on its own).
    async fn share(&mut self, last: Option<Duration>) -> bool {
        let view = self.sender.borrow().clone();
        match self.hub.polls.publish(&self.task_id, &view, last, self.hub.settings.poll_interval_max).await {
            Ok(Some(seq)) => {
                self.seq = seq;
                true
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Ends every watcher of the task with `status` (on every replica in fleet mode), keeping
    /// it for `retention` for watchers who arrive meanwhile.
    async fn end(&mut self, status: tonic::Status, retention: Duration) {
        self.sender.send_modify(|view| view.observation = Observation::Ended(status));
        // Shared also when not kept, so that the other replicas' watchers end too.
        self.share(Some(retention.max(self.hub.settings.fleet_follow_interval * 4))).await;
        self.keep_final_state(retention).await;
    }

    /// Keeps a task's final state (or NOT_FOUND) for `retention`, for late watchers, then forgets it.
    async fn keep_final_state(&self, retention: Duration) {
        if !retention.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(retention) => {}
                () = self.hub.shutdown.cancelled() => {}
            }
        }
        self.hub.forget(&self.task_id, &self.sender);
    }
}

/// Resolves when another replica announces a change of the followed task (never when changes
/// are not announced).
async fn announced(announcements: Option<&tokio::sync::Notify>) {
    match announcements {
        Some(announcements) => announcements.notified().await,
        None => std::future::pending().await,
    }
}

/// Publishes a poll's task to the watchers; returns whether it changed what they see.
fn publish(sender: &ViewSender, task: Task, polled_at: chrono::DateTime<Utc>) -> bool {
    sender.send_if_modified(|view| {
        view.polled_at = Some(polled_at);
        let changed = differs(&view.observation, &task);
        if changed {
            view.observation = Observation::Task(Box::new(task));
        }
        changed
    })
}

/// Whether `task` says something the view does not (a first observation, or a new state).
fn differs(observation: &Observation, task: &Task) -> bool {
    match observation {
        Observation::Task(previous) => !previous.same_state(task),
        Observation::Pending | Observation::Ended(_) => true,
    }
}

/// Whether `task` would change the view [`publish`] puts it in.
fn is_news(sender: &ViewSender, task: &Task) -> bool {
    differs(&sender.borrow().observation, task)
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
