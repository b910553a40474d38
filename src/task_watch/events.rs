//! One watcher's stream of `TaskEvent`s, built from the task's shared view.
//!
//! The stream is a small state machine driven by the watcher's own polls (no task or channel
//! of its own), so a departed watcher leaves nothing behind: dropping the stream drops its
//! view receiver, its timers and its stream permit.

use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::Status;

use super::{
    Watcher,
    view::{Observation, TaskView},
};
use crate::{
    contract::{status, task::timestamp},
    proto::{Task, TaskEvent, task_event::EventType},
    telemetry::otel,
};

/// The state of one watch stream.
struct EventStream {
    watcher: Watcher,
    sequence: u64,
    last_sent: Option<Task>,
    last_event_at: Instant,
    ends_at: Instant,
    deadline: Option<Instant>,
    finished: bool,
    /// How the stream ended, for the call's span (unset: the watcher left first).
    end: Option<&'static str>,
    /// The call's span, which records the events sent and the end.
    span: tracing::Span,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        otel::watch_ended(&self.span, self.sequence, self.end.unwrap_or("cancelled"));
    }
}

/// The `WatchTask` stream of `watcher`: a snapshot, then every change, heartbeats while
/// nothing changes (taskless ones while the snapshot is awaited), and an end (OK after a
/// terminal state; a status otherwise). `deadline` is the caller's gRPC deadline, if it sent one.
pub fn task_events(watcher: Watcher, deadline: Option<Instant>) -> impl Stream<Item = Result<TaskEvent, Status>> {
    let now = Instant::now();
    let state = EventStream {
        ends_at: now + watcher.settings.max_stream_lifetime,
        watcher,
        sequence: 0,
        last_sent: None,
        last_event_at: now,
        deadline,
        finished: false,
        end: None,
        span: tracing::Span::current(),
    };
    futures::stream::unfold(state, |mut state| async move { state.next_event().await.map(|event| (event, state)) })
}

impl EventStream {
    async fn next_event(&mut self) -> Option<Result<TaskEvent, Status>> {
        if self.finished {
            return None;
        }
        loop {
            let view = self.watcher.view.borrow_and_update().clone();
            match view.observation {
                Observation::Pending => {}
                Observation::Ended(status) => return self.finish(status, "upstream"),
                Observation::Task(ref task) => {
                    let kind = match &self.last_sent {
                        None => Some(EventType::Snapshot),
                        Some(previous) if !previous.same_state(task) => Some(EventType::Changed),
                        Some(_) => None,
                    };
                    if let Some(kind) = kind {
                        self.finished = task.state().is_terminal();
                        if self.finished {
                            self.end = Some("terminal");
                        }
                        return Some(Ok(self.event(kind, &view)));
                    }
                }
            }

            let heartbeat_at = self.last_event_at + self.watcher.settings.heartbeat_interval;
            let deadline = self.deadline;
            tokio::select! {
                biased;
                () = self.watcher.shutdown.cancelled() => {
                    return self.finish(status::watch_interrupted("the server is shutting down"), "shutdown");
                }
                () = sleep_until_some(deadline) => {
                    return self.finish(Status::deadline_exceeded("the caller's deadline passed while watching"), "deadline");
                }
                () = tokio::time::sleep_until(self.ends_at) => {
                    return self.finish(status::watch_interrupted("the watch reached its maximum lifetime"), "lifetime");
                }
                changed = self.watcher.view.changed() => {
                    if changed.is_err() {
                        return self.finish(status::watch_interrupted("the task's poller stopped"), "poller_stopped");
                    }
                }
                // Also before the snapshot, while the first poll waits for the budget or for
                // upstream: a quiet stream must not outlast a proxy's idle timeout. Such a
                // heartbeat has no task yet; the snapshot is still the first event with one.
                () = tokio::time::sleep_until(heartbeat_at) => {
                    let view = self.watcher.view.borrow().clone();
                    return Some(Ok(self.event(EventType::Heartbeat, &view)));
                }
            }
        }
    }

    /// Numbers and records an event about the view's task.
    fn event(&mut self, kind: EventType, view: &TaskView) -> TaskEvent {
        self.sequence += 1;
        self.last_event_at = Instant::now();
        let task = view.task().cloned();
        if kind != EventType::Heartbeat {
            self.last_sent = task.clone();
        }
        TaskEvent {
            sequence: self.sequence,
            r#type: kind as i32,
            task: task.or_else(|| self.last_sent.clone()),
            observe_time: view.polled_at.map(timestamp),
        }
    }

    fn finish(&mut self, status: Status, end: &'static str) -> Option<Result<TaskEvent, Status>> {
        self.finished = true;
        self.end = Some(end);
        Some(Err(status))
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
