//! Export tasks. A task's state is derived from the emulator clock when it is read:
//! `waiting` → `pending` → `running` → `completed` | `failed`, each lasting the configured time.
//! A hold freezes the clock of one task; steering moves it to a chosen state.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::config::TaskTimings;
use super::files::ExportKind;

/// A task state as the API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Waiting,
    Pending,
    Running,
    Completed,
    Failed,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

/// How a task ends when it is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Completed,
    Failed,
}

/// The `error` object of a failed task.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct TaskError {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) description: String,
}

impl Default for TaskError {
    fn default() -> Self {
        Self { kind: "internal_error".to_owned(), description: "the export failed (emulated failure)".to_owned() }
    }
}

/// Settings copied into each new task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskDefaults {
    pub(crate) timings: TaskTimings,
    pub(crate) outcome: Outcome,
}

fn ms(duration: StdDuration) -> Duration {
    Duration::milliseconds(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2))
}

#[derive(Clone, Debug)]
pub(crate) struct Task {
    pub(crate) id: Uuid,
    pub(crate) kind: ExportKind,
    pub(crate) created_at: DateTime<Utc>,
    /// The moment the schedule counts from (moved by holds and steering).
    base: DateTime<Utc>,
    timings: TaskTimings,
    outcome: Outcome,
    error: Option<TaskError>,
    held_at: Option<DateTime<Utc>>,
}

impl Task {
    pub(crate) fn new(kind: ExportKind, now: DateTime<Utc>, defaults: TaskDefaults, error: Option<TaskError>) -> Self {
        let outcome = if error.is_some() { Outcome::Failed } else { defaults.outcome };
        Self {
            id: Uuid::new_v4(),
            kind,
            created_at: now,
            base: now,
            timings: defaults.timings,
            outcome,
            error,
            held_at: None,
        }
    }

    /// Offset from `base` at which a state begins.
    fn start_of(&self, status: Status) -> Duration {
        let t = &self.timings;
        match status {
            Status::Waiting => Duration::zero(),
            Status::Pending => ms(t.waiting),
            Status::Running => ms(t.waiting) + ms(t.pending),
            Status::Completed | Status::Failed => ms(t.waiting) + ms(t.pending) + ms(t.running),
        }
    }

    /// The state and the moment it began (`updated_at`).
    pub(crate) fn state(&self, now: DateTime<Utc>) -> (Status, DateTime<Utc>) {
        let at = self.held_at.unwrap_or(now);
        let elapsed = at - self.base;
        let end = match self.outcome {
            Outcome::Completed => Status::Completed,
            Outcome::Failed => Status::Failed,
        };
        let status = [end, Status::Running, Status::Pending]
            .into_iter()
            .find(|&s| elapsed >= self.start_of(s))
            .unwrap_or(Status::Waiting);
        let since = (self.base + self.start_of(status)).max(self.created_at);
        (status, since)
    }

    pub(crate) fn error(&self) -> TaskError {
        self.error.clone().unwrap_or_default()
    }

    pub(crate) fn held(&self) -> bool {
        self.held_at.is_some()
    }

    /// Freezes or releases the task.
    pub(crate) fn set_hold(&mut self, hold: bool, now: DateTime<Utc>) {
        match (hold, self.held_at) {
            (true, None) => self.held_at = Some(now),
            (false, Some(held_at)) => {
                self.base += now - held_at;
                self.held_at = None;
            }
            _ => {}
        }
    }

    /// Moves the task into `status` now; it stays there while held.
    pub(crate) fn steer(&mut self, status: Status, error: Option<TaskError>, now: DateTime<Utc>) {
        match status {
            Status::Failed => {
                self.outcome = Outcome::Failed;
                if error.is_some() {
                    self.error = error;
                }
            }
            Status::Completed => self.outcome = Outcome::Completed,
            _ => {}
        }
        self.base = now - self.start_of(status);
        if self.held_at.is_some() {
            self.held_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::files::ExportKind;

    fn task(now: DateTime<Utc>) -> Task {
        let defaults = TaskDefaults {
            timings: TaskTimings {
                waiting: StdDuration::from_millis(100),
                pending: StdDuration::from_millis(100),
                running: StdDuration::from_millis(100),
            },
            outcome: Outcome::Completed,
        };
        Task::new(ExportKind::Users(vec![]), now, defaults, None)
    }

    #[test]
    fn states_follow_the_clock_and_holds() {
        let now = Utc::now();
        let mut t = task(now);
        assert_eq!(t.state(now).0, Status::Waiting);
        assert_eq!(t.state(now + Duration::milliseconds(150)).0, Status::Pending);
        assert_eq!(t.state(now + Duration::milliseconds(250)).0, Status::Running);
        let (status, since) = t.state(now + Duration::milliseconds(999));
        assert_eq!((status, since), (Status::Completed, now + Duration::milliseconds(300)));
        t.set_hold(true, now + Duration::milliseconds(150));
        assert_eq!(t.state(now + Duration::seconds(60)).0, Status::Pending);
        t.set_hold(false, now + Duration::seconds(60));
        assert_eq!(t.state(now + Duration::seconds(60)).0, Status::Pending);
        assert_eq!(t.state(now + Duration::seconds(61)).0, Status::Completed);
        t.steer(Status::Failed, None, now + Duration::seconds(62));
        assert_eq!(t.state(now + Duration::seconds(62)).0, Status::Failed);
    }
}
